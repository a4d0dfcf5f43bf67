#!/usr/bin/env bash
# scripts/chaos.sh MINUTES — the fault suite (tests/faults.rs) in a loop
# against a release build, each round with a new seed, for MINUTES minutes;
# then a table: faults injected, backups attempted/complete/failed, restores
# verified equal, and rounds that lost, missed or misreported something
# (goal: 0), with the seed that repeats each (DRCTL_FAULT_SEED=N).
#
# Faults per round: kill -9 at seeded points of dump and physical backups
# and of wal-push; 5xx, dropped connections and stalls on a quarter or more
# of S3 requests during backup, restore and wal-fetch; a flipped byte in
# each kind of stored file; a backup that disagrees with the server's own
# manifest; a full disk (as root); PostgreSQL restarted mid-backup.
# Not run in CI (scripts/test.sh runs each fault once).
set -euo pipefail
cd "$(dirname "$0")/.."
minutes="${1:-}"
if ! [[ "$minutes" =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: scripts/chaos.sh MINUTES (a whole number of minutes, at least 1)" >&2
    exit 2
fi
scripts/install-deps.sh
export PATH="/usr/lib/postgresql/15/bin:$PATH"
export DRCTL_TEST_MOTO="$PWD/.venv/bin/moto_server"
cargo test --release --test faults --no-run

logs="$(mktemp -d /tmp/drctl-chaos.XXXXXX)"
end=$((SECONDS + minutes * 60))
rounds=0
failed_rounds=()
while ((SECONDS < end)); do
    rounds=$((rounds + 1))
    seed="$(od -An -N8 -tu8 /dev/urandom | tr -d ' ')"
    log="$logs/round-$rounds-seed-$seed.log"
    if DRCTL_FAULT_SEED="$seed" cargo test --release --test faults -- --nocapture >"$log" 2>&1; then
        echo "round $rounds: ok (seed $seed)"
    else
        echo "round $rounds: FAILED (seed $seed): $log"
        failed_rounds+=("$seed")
    fi
done

# Add up the tests' "chaos: key=value ..." lines.
cat "$logs"/*.log | awk -v rounds="$rounds" -v failed="${#failed_rounds[@]}" '
/^chaos: / {
    for (i = 2; i <= NF; i++) {
        split($i, kv, "=")
        if (kv[1] != "test") sum[kv[1]] += kv[2]
    }
}
END {
    printf "%-40s %10s\n", "rounds", rounds
    printf "%-40s %10d\n", "faults injected", sum["faults"]
    printf "%-40s %10d\n", "backups attempted", sum["backups_attempted"]
    printf "%-40s %10d\n", "backups complete (each verified)", sum["backups_complete"]
    printf "%-40s %10d\n", "backups failed (none listed)", sum["backups_failed"]
    printf "%-40s %10d\n", "restores verified equal", sum["restores_equal"]
    printf "%-40s %10d\n", "rounds lost/missed/misreported", failed
}'
if ((${#failed_rounds[@]} > 0)); then
    echo "repeat a failed round: DRCTL_FAULT_SEED=<seed> cargo test --release --test faults -- --nocapture"
    printf '  seed %s\n' "${failed_rounds[@]}"
    echo "logs: $logs"
    exit 1
fi
rm -rf "$logs"
