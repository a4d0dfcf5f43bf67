#!/usr/bin/env bash
# Physical backup and point-in-time restore, drctl against pgBackRest, in
# one run on the same data and the same target time:
#   - full base backup: drctl backup vs pgbackrest backup --type=full
#     (both zstd level 3, 2 processes/threads, both encrypted)
#   - PITR restore to the same time, start, and wait for promotion:
#     drctl restore --to T --start vs pgbackrest restore --type=time + pg_ctl start
#   - wal-push latency per 16 MiB segment (p50, p99) of real pgbench WAL
# The server archives every segment to both (archive_command runs both).
#
# Besides pgbench's tables (which zstd shrinks about 20:1, far more than
# most data), a table of text that compresses about 3:1 (hex digests,
# numbers and some repetition: 2.8:1 with zstd -3, measured) is loaded:
# DOCS_ROWS rows, default SCALE x 40,000 (about 6.7 MB per 40,000).
#
# Usage: scripts/bench-physical.sh [SCALE]   (pgbench scale, default 100)
set -euo pipefail
cd "$(dirname "$0")/.."
scale=${1:-100}
root=$PWD
scripts/install-deps.sh --no-test-deps
if ! command -v pgbackrest >/dev/null; then
    echo "bench: installing pgbackrest" >&2
    apt-get install -y -qq --no-install-recommends pgbackrest >/dev/null
fi
cargo build --release --quiet
drctl="$root/target/release/drctl"
# drctl runs with a service's PATH (it finds PostgreSQL's programs itself);
# the script's own initdb and pg_ctl come by path.
export PATH=/usr/local/bin:/usr/bin:/bin
bin=/usr/lib/postgresql/15/bin

work=$(mktemp -d /tmp/drctl-benchphys.XXXXXX)
chmod 755 "$work"
as_pg=()
if [[ $(id -u) -eq 0 ]]; then chown postgres:postgres "$work"; as_pg=(/usr/sbin/runuser -u postgres --); fi
pg() { "${as_pg[@]}" "$@"; }
freeport() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
port=$(freeport); port1=$(freeport); port2=$(freeport)
cleanup() {
    for d in pgdata r-drctl r-pgbr; do pg "$bin/pg_ctl" -D "$work/$d" -m immediate -w stop >/dev/null 2>&1 || true; done
    rm -rf "$work"
}
trap cleanup EXIT
now() { date +%s.%N; }
calc() { awk "BEGIN { printf \"%.4f\", $1 }"; }

# drctl: policy + key, owned by postgres (archive_command runs as postgres).
mkdir -p "$work/policies"
recipient=$(age-keygen -o "$work/key.txt" 2>&1 | sed 's/Public key: //')
cat > "$work/policies/bench.toml" <<TOML
[source]
kind = "postgres"
url = "postgres://postgres@127.0.0.1:$port/postgres"
[backup]
method = "physical"
[repository]
url = "file://$work/drctl-repo"
[encryption]
recipients = ["$recipient"]
[compression]
level = 3
threads = 2
TOML
cp "$work/policies/bench.toml" "$work/policies/walbench.toml"

# pgBackRest: zstd 3, process-max 2, encrypted repository.
cat > "$work/pgbackrest.conf" <<CONF
[global]
repo1-path=$work/pgbr-repo
repo1-cipher-type=aes-256-cbc
repo1-cipher-pass=bench-only-passphrase-not-a-secret
compress-type=zst
compress-level=3
process-max=2
start-fast=y
log-level-console=warn
log-level-file=off
lock-path=$work/pgbr-lock
spool-path=$work/pgbr-spool

[bench]
pg1-path=$work/pgdata
pg1-port=$port
pg1-socket-path=$work
CONF
[[ $(id -u) -eq 0 ]] && chown -R postgres:postgres "$work"
pgbr() { pg pgbackrest --config="$work/pgbackrest.conf" --stanza=bench "$@"; }

echo "==> cluster on 127.0.0.1:$port, archiving to drctl and pgBackRest"
pg "$bin/initdb" -D "$work/pgdata" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >/dev/null
cat >> "$work/pgdata/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$work'
shared_buffers = 256MB
max_wal_size = 4GB
wal_keep_size = 2GB
archive_mode = on
archive_command = '$drctl --policies $work/policies wal-push bench %p && pgbackrest --config=$work/pgbackrest.conf --stanza=bench archive-push %p'
CONF
pg "$bin/pg_ctl" -D "$work/pgdata" -l "$work/server.log" -w start >/dev/null
url="postgres://postgres@127.0.0.1:$port/postgres"
q() { psql -X -At --dbname="$1" -c "$2"; }
pgbr stanza-create
echo "==> pgbench -i -s $scale"
pgbench -i -q -s "$scale" "$url" 2>&1 | tail -1
docs_rows=${DOCS_ROWS:-$((scale * 40000))}
echo "==> docs: $docs_rows rows of text that compresses about 3:1"
q "$url" "CREATE TABLE docs AS SELECT g AS id, now() - g * interval '1 second' AS at, md5(g::text) || ' ' || md5((g * 7)::text) || ' ' || repeat(chr(97 + g % 26), 40) || ' ' || (random() * 1e9)::bigint AS body FROM generate_series(1, $docs_rows) g" >/dev/null
echo "database size: $(q "$url" "select pg_size_pretty(sum(pg_database_size(datname))) from pg_database")"
pg "$drctl" --policies "$work/policies" --catalog "$work/drctl.db" policy check >/dev/null

echo "==> full backups (two rounds, alternating; the faster of each counts)"
min() { awk "BEGIN { a = $1; b = $2; printf \"%.4f\", (a < b ? a : b) }"; }
t_drctl_backup=999999; t_pgbr_backup=999999
for round in 1 2; do
    # Each starts from a clean checkpoint: otherwise the first one pays for
    # flushing what pgbench -i left dirty.
    q "$url" "checkpoint" >/dev/null
    t0=$(now); pg "$drctl" --policies "$work/policies" --catalog "$work/drctl.db" backup bench; t1=$(now)
    echo "round $round: drctl $(calc "$t1 - $t0") s"
    t_drctl_backup=$(min "$t_drctl_backup" "$(calc "$t1 - $t0")")
    q "$url" "checkpoint" >/dev/null
    t0=$(now); pgbr backup --type=full; t1=$(now)
    echo "round $round: pgBackRest $(calc "$t1 - $t0") s"
    t_pgbr_backup=$(min "$t_pgbr_backup" "$(calc "$t1 - $t0")")
done

echo "==> full backups with one [[copy]] and without (five pairs, in turn)"
# The copy is a second file repository: what is measured is drctl's fan-out
# (one BASE_BACKUP, every byte to two stores), not a remote store.
cp "$work/policies/bench.toml" "$work/nocopy.toml"
cp "$work/policies/bench.toml" "$work/withcopy.toml"
printf '\n[[copy]]\nname = "second"\nurl = "file://%s/drctl-copy"\n' "$work" >> "$work/withcopy.toml"
pg mkdir -p "$work/drctl-copy"
copy_ratios=(); copy_peak=0
for pair in 1 2 3 4 5; do
    for mode in nocopy withcopy; do
        pg cp "$work/$mode.toml" "$work/policies/bench.toml"
        # The copy first comes level (untimed): a copy that missed backups
        # (here the run without it) catches up in the next backup, which
        # is a one-time cost, not what a copy costs each backup.
        [[ $mode == withcopy ]] && pg "$drctl" --policies "$work/policies" --catalog "$work/drctl.db" copy bench >/dev/null
        q "$url" "checkpoint" >/dev/null
        t0=$(now)
        # Not through pg(): a backgrounded function is a subshell, and
        # drctl would be its grandchild.
        "${as_pg[@]}" "$drctl" --policies "$work/policies" --catalog "$work/drctl.db" backup bench >/dev/null &
        bpid=$!; peak=0
        while kill -0 "$bpid" 2>/dev/null; do
            # As root, drctl is runuser's child: its VmHWM, not runuser's.
            cpid=$bpid
            [[ ${#as_pg[@]} -gt 0 ]] && cpid=$(pgrep -P "$bpid" | head -1 || true)
            hwm=$(awk '/VmHWM/ {print $2}' "/proc/${cpid:-$bpid}/status" 2>/dev/null || true)
            [[ -n "$hwm" && "$hwm" -gt "$peak" ]] && peak=$hwm
            sleep 0.05
        done
        wait "$bpid"
        t1=$(now)
        if [[ $mode == nocopy ]]; then t_no=$(calc "$t1 - $t0"); else
            t_with=$(calc "$t1 - $t0")
            [[ $peak -gt $copy_peak ]] && copy_peak=$peak
        fi
    done
    echo "pair $pair: without a copy $t_no s, with one copy $t_with s"
    copy_ratios+=("$(calc "$t_with / $t_no")")
done
pg cp "$work/nocopy.toml" "$work/policies/bench.toml"
# The median: one pair swings by a third either way on a busy machine.
copy_ratio=$(printf '%s\n' "${copy_ratios[@]}" | sort -n | sed -n 3p)

echo "==> writes, a target time, more writes"
q "$url" "create table marker(batch int, at timestamptz default clock_timestamp())"
pgbench -n -T 10 -c 2 "$url" >/dev/null
q "$url" "insert into marker(batch) values (1)"
sleep 1
target=$(q "$url" "select to_char(clock_timestamp() at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')")
# The same instant in the form pgBackRest accepts.
pgbr_target="$(echo "$target" | sed 's/T/ /; s/Z$/+00/')"
sleep 1
q "$url" "insert into marker(batch) values (2)"
pgbench -n -T 5 -c 2 "$url" >/dev/null
last=$(q "$url" "select pg_walfile_name(pg_switch_wal())")
until [[ "$(q "$url" "select coalesce(last_archived_wal, '') from pg_stat_archiver")" > "$last" || \
         "$(q "$url" "select coalesce(last_archived_wal, '') from pg_stat_archiver")" == "$last" ]]; do sleep 0.2; done
echo "target time: $target"

wait_promoted() { # port
    until [[ "$(q "postgres://postgres@127.0.0.1:$1/postgres" "select pg_is_in_recovery()" 2>/dev/null)" == "f" ]]; do sleep 0.1; done
}
echo "==> PITR restores to $target (two rounds, alternating; the faster of each counts)"
t_drctl_restore=999999; t_pgbr_restore=999999
for round in 1 2; do
    for d in r-drctl r-pgbr; do
        pg "$bin/pg_ctl" -D "$work/$d" -m immediate -w stop >/dev/null 2>&1 || true
        rm -rf "${work:?}/$d"
    done
    t0=$(now)
    "$drctl" --policies "$work/policies" --catalog "$work/drctl.db" restore bench --to "$target" \
        --target-dir "$work/r-drctl" --identity "$work/key.txt" --start --port "$port1"
    t1=$(now)
    echo "round $round: drctl $(calc "$t1 - $t0") s"
    t_drctl_restore=$(min "$t_drctl_restore" "$(calc "$t1 - $t0")")
    t0=$(now)
    pg mkdir -p "$work/r-pgbr"
    pg chmod 700 "$work/r-pgbr"
    pgbr restore --type=time --target="$pgbr_target" --target-action=promote --pg1-path="$work/r-pgbr" \
        --recovery-option="restore_command=pgbackrest --config=$work/pgbackrest.conf --stanza=bench --pg1-path=$work/r-pgbr archive-get %f \"%p\""
    pg "$bin/pg_ctl" -D "$work/r-pgbr" -l "$work/r-pgbr.log" -w -t 3600 \
        -o "-p $port2 -c archive_mode=off -c unix_socket_directories=$work" start >/dev/null \
        || { tail -20 "$work/r-pgbr.log" >&2; exit 1; }
    wait_promoted "$port2"
    t1=$(now)
    echo "round $round: pgBackRest $(calc "$t1 - $t0") s"
    t_pgbr_restore=$(min "$t_pgbr_restore" "$(calc "$t1 - $t0")")
    m1=$(q "postgres://postgres@127.0.0.1:$port1/postgres" "select string_agg(batch::text, ',') from marker")
    m2=$(q "postgres://postgres@127.0.0.1:$port2/postgres" "select string_agg(batch::text, ',') from marker")
    a1=$(q "postgres://postgres@127.0.0.1:$port1/postgres" "select count(*) from pgbench_history")
    a2=$(q "postgres://postgres@127.0.0.1:$port2/postgres" "select count(*) from pgbench_history")
    echo "restored markers: drctl=[$m1] pgbackrest=[$m2]; pgbench_history rows: drctl=$a1 pgbackrest=$a2"
    if [[ "$m1" != "1" || "$m1" != "$m2" || "$a1" != "$a2" ]]; then
        echo "FAIL: the two restores disagree or missed the target" >&2; exit 1
    fi
done

echo "==> wal-push latency"
segs=$(cd "$work/pgdata/pg_wal" && ls | grep -E '^[0-9A-F]{24}$' | head -40)
mkdir -p "$work/walbench"
for s in $segs; do cp "$work/pgdata/pg_wal/$s" "$work/walbench/00000010${s:8}"; done
[[ $(id -u) -eq 0 ]] && chown -R postgres "$work/walbench"
# Timed as PostgreSQL runs it: as the postgres user, one process per file.
# The loop itself runs as postgres (runuser's PAM session costs ~8 ms and
# is not part of archive_command) and reads the clock without forking.
lat=($(pg bash -c '
    for f in "$2"/*; do
        t0=${EPOCHREALTIME/./}
        "$1" --policies "$3" wal-push walbench "$f" || exit 1
        t1=${EPOCHREALTIME/./}
        echo $(( t1 - t0 ))
    done' _ "$drctl" "$work/walbench" "$work/policies"))
# The peer on the same files: pgBackRest's archive-push (synchronous).
plat=($(pg bash -c '
    for f in "$1"/*; do
        t0=${EPOCHREALTIME/./}
        pgbackrest --config="$2" --stanza=bench archive-push "$f" >/dev/null || exit 1
        t1=${EPOCHREALTIME/./}
        echo $(( t1 - t0 ))
    done' _ "$work/walbench" "$work/pgbackrest.conf"))
pct() { # P values...: the P-th percentile
    local p=$1; shift
    local s=($(printf '%s\n' "$@" | sort -n))
    local n=${#s[@]}
    echo "${s[$(( (n * p + 99) / 100 - 1 ))]}"
}
n=${#lat[@]}
p50=$(pct 50 "${lat[@]}"); p99=$(pct 99 "${lat[@]}")
pp50=$(pct 50 "${plat[@]}"); pp99=$(pct 99 "${plat[@]}")

printf '\n%-44s %9s %9s %9s\n' "pgbench scale $scale" "drctl s" "pgbr s" "ratio"
printf '%-44s %9.2f %9.2f %9.2f  (target <= 1.00)\n' "full backup" "$t_drctl_backup" "$t_pgbr_backup" "$(calc "$t_drctl_backup / $t_pgbr_backup")"
printf '%-44s %9.2f %9.2f %9.2f  (target <= 1.00)\n' "PITR restore + start + promote" "$t_drctl_restore" "$t_pgbr_restore" "$(calc "$t_drctl_restore / $t_pgbr_restore")"
printf '\nper 16 MiB segment over %d segments       p50 ms    p99 ms\n' "$n"
printf '%-36s %9.1f %9.1f  (target p50 <= 30 ms)\n' "drctl wal-push" "$(calc "$p50 / 1000")" "$(calc "$p99 / 1000")"
printf '%-36s %9.1f %9.1f\n' "pgbackrest archive-push" "$(calc "$pp50 / 1000")" "$(calc "$pp99 / 1000")"
printf '%-36s %9.2f\n' "ratio p50" "$(calc "$p50 / $pp50")"
printf '\nfull backup with one copy / without: %.2f (median of 5 pairs; target <= 1.15)\n' "$copy_ratio"
printf 'drctl peak RSS with one copy:        %d MiB (target <= 64)\n' "$((copy_peak / 1024))"
