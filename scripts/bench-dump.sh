#!/usr/bin/env bash
# Backup throughput and memory against peers, in one run on one machine:
#   1. pg_dump -Fc > /dev/null                              (the floor)
#   2. pg_dump -Fc | zstd -3 -T0 | age -r KEY > file         (the shell pipeline)
#   3. pg_dump -Fc -Z0 | zstd -3 -T0 | age -r KEY > file     (the same, no gzip inside)
#   4. drctl backup into a file repository
# prints wall times, ratios and drctl's peak RSS (VmHWM of the drctl process
# alone, not pg_dump's). Targets: drctl <= 1.10x (1), <= 1.00x (2),
# peak RSS <= 64 MiB.
#
# Usage: scripts/bench-dump.sh [SCALE]   (pgbench scale, default 100 = ~1.5 GB)
set -euo pipefail
cd "$(dirname "$0")/.."
scale=${1:-100}
root=$PWD
scripts/install-deps.sh --no-test-deps
cargo build --release --quiet
drctl="$root/target/release/drctl"
# drctl runs with a service's PATH (it finds PostgreSQL's programs itself);
# the script's own initdb and pg_ctl come by path.
export PATH=/usr/local/bin:/usr/bin:/bin
bin=/usr/lib/postgresql/15/bin

work=$(mktemp -d /tmp/drctl-bench.XXXXXX)
as_pg=()
if [[ $(id -u) -eq 0 ]]; then chown postgres:postgres "$work"; chmod 755 "$work"; as_pg=(/usr/sbin/runuser -u postgres --); fi
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cleanup() {
    "${as_pg[@]}" "$bin/pg_ctl" -D "$work/pgdata" -m fast -w stop >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
"${as_pg[@]}" "$bin/initdb" -D "$work/pgdata" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >/dev/null
"${as_pg[@]}" "$bin/pg_ctl" -D "$work/pgdata" -l "$work/pgdata/server.log" -w \
    -o "-p $port -k $work -c listen_addresses=127.0.0.1 -c shared_buffers=256MB" start >/dev/null
url="postgres://postgres@127.0.0.1:$port/bench"
psql -X -q --dbname="postgres://postgres@127.0.0.1:$port/postgres" -c "CREATE DATABASE bench"
echo "==> pgbench -i -s $scale"
pgbench -i -q -s "$scale" "$url" 2>&1 | tail -1
size=$(psql -X -At --dbname="$url" -c "select pg_size_pretty(pg_database_size('bench'))")
echo "database size: $size"

mkdir -p "$work/out"
cd "$work/out"
keyfile=$work/out/key.txt
recipient=$(age-keygen -o "$keyfile" 2>&1 | sed 's/Public key: //')

now() { date +%s.%N; }
timeit() { # name, command...
    local t0 t1
    t0=$(now); bash -o pipefail -c "$2"; t1=$(now)
    calc "$t1 - $t0"
}
calc() { awk "BEGIN { printf \"%.4f\", $1 }"; }

# Warm the cache once so the first timed run is not penalised.
pg_dump -Fc -Z0 "$url" > /dev/null

t_dump=$(timeit dump "pg_dump -Fc '$url' > /dev/null")
t_pipe=$(timeit pipe "pg_dump -Fc '$url' | zstd -q -3 -T0 | age -r $recipient > pipe.zst.age")
t_pipe0=$(timeit pipe0 "pg_dump -Fc -Z0 '$url' | zstd -q -3 -T0 | age -r $recipient > pipe0.zst.age")

mkdir -p policies
cat > policies/bench.toml <<TOML
[source]
kind = "postgres"
url = "$url"
[backup]
method = "dump"
row_counts = "exact"
[repository]
url = "file://$work/out/repo"
[encryption]
recipients = ["$recipient"]
[compression]
level = 3
TOML
# One drctl backup of policy $1: sets t_run (seconds) and peak (KiB, VmHWM
# of the drctl process alone).
run_drctl() {
    local t0 t1 pid hwm
    t0=$(now)
    "$drctl" --catalog "$work/out/drctl.db" backup "$1" > drctl.out &
    pid=$!
    peak=0
    while kill -0 "$pid" 2>/dev/null; do
        hwm=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)
        [[ -n "$hwm" && "$hwm" -gt "$peak" ]] && peak=$hwm
        sleep 0.05
    done
    wait "$pid"
    t1=$(now)
    t_run=$(calc "$t1 - $t0")
}
run_drctl bench
t_drctl=$t_run
cat drctl.out

stored_pipe=$(stat -c %s pipe.zst.age)
stored_pipe0=$(stat -c %s pipe0.zst.age)
stored_drctl=$(find repo -name data.zst.age -exec stat -c %s {} \;)
printf '\n%-46s %8s %8s %12s\n' "run (pgbench scale $scale, $size)" "seconds" "ratio" "stored bytes"
printf '%-46s %8.2f %8s %12s\n' "pg_dump -Fc > /dev/null" "$t_dump" "1.00" "-"
printf '%-46s %8.2f %8.2f %12s\n' "pg_dump -Fc | zstd -3 -T0 | age" "$t_pipe" "$(calc "$t_pipe / $t_dump")" "$stored_pipe"
printf '%-46s %8.2f %8.2f %12s\n' "pg_dump -Fc -Z0 | zstd -3 -T0 | age" "$t_pipe0" "$(calc "$t_pipe0 / $t_dump")" "$stored_pipe0"
printf '%-46s %8.2f %8.2f %12s\n' "drctl backup (file repository)" "$t_drctl" "$(calc "$t_drctl / $t_dump")" "$stored_drctl"
printf '\ndrctl / pg_dump:                %.2fx (target <= 1.10)\n' "$(calc "$t_drctl / $t_dump")"
printf 'drctl / shell pipeline:         %.2fx (target <= 1.00)\n' "$(calc "$t_drctl / $t_pipe")"
printf 'drctl / pipeline without gzip:  %.2fx\n' "$(calc "$t_drctl / $t_pipe0")"
drctl_peak=$peak
printf 'drctl peak RSS:                 %d MiB (target <= 64)\n' "$((drctl_peak / 1024))"

# The same backup into a primary and one [[copy]] (both file repositories:
# what is measured is drctl's fan-out, not a remote store). Without and
# with a copy in turn, three pairs; the median of the per-pair ratios.
for p in nocopy withcopy; do
    sed "s#file://$work/out/repo#file://$work/out/repo-$p#" policies/bench.toml > "policies/$p.toml"
done
printf '\n[[copy]]\nname = "second"\nurl = "file://%s/out/repo-second"\n' "$work" >> policies/withcopy.toml
ratios=()
copy_peak=0
for i in 1 2 3; do
    run_drctl nocopy
    t_no=$t_run
    run_drctl withcopy
    [[ $peak -gt $copy_peak ]] && copy_peak=$peak
    ratios+=("$(calc "$t_run / $t_no")")
    printf 'pair %d: without a copy %.2f s, with one copy %.2f s\n' "$i" "$t_no" "$t_run"
done
median=$(printf '%s\n' "${ratios[@]}" | sort -n | sed -n 2p)
printf 'with one copy / without:        %.2fx (median of 3 pairs; target <= 1.15)\n' "$median"
printf 'drctl peak RSS with one copy:   %d MiB (target <= 64)\n' "$((copy_peak / 1024))"
