#!/usr/bin/env bash
# Prepares what tests/deploy.rs needs to build and run the Dockerfile on a
# machine with no Docker engine and no registry access: podman (rootless,
# with runc), a user to run it as, and a Debian 12 base image made by
# debootstrap from Debian's own packages (localhost/drctl-base:bookworm),
# which the test passes as the Dockerfile's DEBIAN_IMAGE.
#
# Prints the user's name; the test reads it from DRCTL_TEST_IMAGE_USER.
# Usage: scripts/image-base.sh   (as root; idempotent)
set -euo pipefail
user=${DRCTL_IMAGE_USER:-drctl-image}
base=localhost/drctl-base:bookworm
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

[[ $(id -u) -eq 0 ]] || { echo "image-base: run as root" >&2; exit 1; }
pkgs=()
for p in podman runc uidmap debootstrap binutils; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || pkgs+=("$p")
done
if ((${#pkgs[@]})); then
    echo "image-base: installing ${pkgs[*]}" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${pkgs[@]}" >/dev/null
fi
# useradd gives a new user its subordinate uid/gid range (/etc/subuid).
id "$user" >/dev/null 2>&1 || useradd --create-home --shell /bin/bash "$user"
home=$(getent passwd "$user" | cut -d: -f6)
# Host network (no /dev/net/tun for slirp4netns here), runc (crun cannot
# set rlimits in this sandbox), cgroupfs (no systemd user session).
install -d -o "$user" "$home/.config" "$home/.config/containers"
cat >"$home/.config/containers/containers.conf" <<'EOF'
[containers]
netns = "host"

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
# Native rootless overlay (kernel 5.11+): podman would pick vfs, which
# copies the whole image for every container started.
printf '[storage]\ndriver = "overlay"\n' >"$home/.config/containers/storage.conf"
chown "$user" "$home/.config/containers/containers.conf" "$home/.config/containers/storage.conf"
run=/tmp/drctl-image-run-$(id -u "$user")
install -d -m 0700 -o "$user" "$run"
as_user() { runuser -u "$user" -- env XDG_RUNTIME_DIR="$run" HOME="$home" "$@"; }

if ! as_user podman image exists "$base"; then
    echo "image-base: debootstrap bookworm from $mirror into $base" >&2
    root=$(mktemp -d)
    chmod 0755 "$root"   # the image's / : mktemp's 0700 would lock out its users
    debootstrap --variant=minbase bookworm "$root" "$mirror" >/dev/null
    tar -C "$root" -c . | as_user podman import --quiet - "$base" >/dev/null
    rm -rf "$root"
fi
echo "$user"
