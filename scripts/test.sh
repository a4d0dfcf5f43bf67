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
cargo test --all-targets "$@"
