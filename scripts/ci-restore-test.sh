#!/usr/bin/env bash
# Restore test for CI (nightly): drill every policy with a [drill] section,
# or the one named, and write a JUnit report for the CI system to publish.
# Exits 1 when a backup does not restore or a check or budget fails, 2 on a
# usage or policy problem, 0 when every drill passed.
#
# Environment:
#   DRCTL_AGE_IDENTITY  the age private key itself (a CI secret); written to
#                       a 0600 temp file for the run and removed after it
#   DRCTL_IDENTITY      or: a path to the key file
#   DRCTL_POLICIES      policies directory (default ./policies)
#   DRCTL_CATALOG       catalog (drctl's default otherwise)
#   DRCTL_BIN           drctl to run (default: drctl on PATH, else built here)
#   JUNIT               report path (default drill-report.xml)
#   REPORT_HTML         the status page as one file, written beside the JUnit
#                       (default drill-report.html; empty: none)
#
# Usage: scripts/ci-restore-test.sh [POLICY]
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
junit=${JUNIT:-drill-report.xml}
drctl=${DRCTL_BIN:-}
if [[ -z $drctl ]]; then
    if command -v drctl >/dev/null; then
        drctl=drctl
    else
        "$here/scripts/install-deps.sh" --no-test-deps
        (cd "$here" && cargo build --release --quiet)
        drctl="$here/target/release/drctl"
    fi
fi

keyfile=
cleanup() { [[ -z $keyfile ]] || rm -f "$keyfile"; }
trap cleanup EXIT
if [[ -n ${DRCTL_AGE_IDENTITY:-} ]]; then
    keyfile=$(mktemp)
    chmod 600 "$keyfile"
    printf '%s\n' "$DRCTL_AGE_IDENTITY" >"$keyfile"
    unset DRCTL_AGE_IDENTITY
    # PITR drills replay WAL through restore_command, run by the server's
    # user: as root, that is postgres, which must read the key.
    if [[ $(id -u) -eq 0 ]] && id postgres >/dev/null 2>&1; then
        chown postgres "$keyfile"
    fi
    export DRCTL_IDENTITY=$keyfile
fi
if [[ -z ${DRCTL_IDENTITY:-} ]]; then
    echo "ci-restore-test: set DRCTL_AGE_IDENTITY (the key, from a CI secret) or DRCTL_IDENTITY (a path to it)" >&2
    exit 2
fi

which=(--all)
(($#)) && which=("$1")
rc=0
"$drctl" drill "${which[@]}" --junit "$junit" || rc=$?
if [[ -f $junit ]]; then
    echo "ci-restore-test: JUnit report in $junit" >&2
fi
html=${REPORT_HTML-drill-report.html}
if [[ -n $html ]]; then
    # The drills' verdict is the exit code; the page is for people, so a
    # report that cannot be written is said, not fatal (report also exits
    # 1 when a policy's state is unknown, having written the page).
    rm -f "$html"
    "$drctl" report "$@" --html "$html" || true
    if [[ -f $html ]]; then
        echo "ci-restore-test: HTML report in $html" >&2
    else
        echo "ci-restore-test: could not write the HTML report $html" >&2
    fi
fi
exit "$rc"
