#!/usr/bin/env bash
# Runs every test: unit, property and integration tests. The integration
# tests start their own PostgreSQL 15 clusters and S3-compatible server
# (moto) on loopback; scripts/install-deps.sh installs what they need.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
# No PostgreSQL bin folder on PATH: drctl runs with a service's PATH in the
# tests and finds the server's tools itself; the harness names them by path.
export DRCTL_TEST_MOTO="$PWD/.venv/bin/moto_server"
export DRCTL_TEST_PROMTOOL="$PWD/.venv/bin/promtool"
# The container image test (tests/deploy.rs) builds the Dockerfile with
# rootless podman on a debootstrap base; setting it up needs root.
if [[ $(id -u) -eq 0 ]]; then
    DRCTL_TEST_IMAGE_USER=$(scripts/image-base.sh)
    export DRCTL_TEST_IMAGE_USER
else
    echo "test: not root, so the container image test is skipped (scripts/image-base.sh needs root)" >&2
fi
cargo test --all-targets "$@"
