#!/usr/bin/env bash
# Incremental physical backups, on PostgreSQL 15 (drctl's block deltas) and
# 17 (the server's own incrementals), in one run each on pgbench data:
#   - a full backup, then about 1% of pgbench_accounts' pages changed by
#     random updates, then an incremental: time and stored size of the
#     incremental against the full;
#   - five more rounds of changes and incrementals, then a restore of the
#     whole chain (full + 6 incrementals) into a directory;
#   - on 15, pgBackRest's full + 6 incrementals (--type=incr) of the same
#     changes and its restore of the same point, timed in the same run.
#     (Debian 12's pgBackRest 2.45 predates PostgreSQL 17: on 17 drctl's
#     chain restore is compared with its own restore of a full instead.)
#
# Usage: [PAIRS=3] scripts/bench-incremental.sh [SCALE] [MAJORS]   (default 50, "15 17")
set -euo pipefail
cd "$(dirname "$0")/.."
scale=${1:-50}
majors=${2:-15 17}
# Restores are timed this many times, alternating, and their medians shown:
# one pair swings by a third on a busy two-core host.
pairs=${PAIRS:-3}
root=$PWD
scripts/install-deps.sh
if ! command -v pgbackrest >/dev/null; then
    echo "bench: installing pgbackrest" >&2
    apt-get install -y -qq --no-install-recommends pgbackrest >/dev/null
fi
cargo build --release --quiet
drctl="$root/target/release/drctl"
# drctl runs with a service's PATH; the script's own tools come by path.
export PATH=/usr/local/bin:/usr/bin:/bin

as_pg=()
[[ $(id -u) -eq 0 ]] && as_pg=(/usr/sbin/runuser -u postgres --)
pg() { "${as_pg[@]}" "$@"; }
freeport() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
now() { date +%s.%N; }
calc() { awk "BEGIN { printf \"%.4f\", $1 }"; }

bench_major() {
    local major=$1 bin
    if [[ $major == 15 ]]; then bin=/usr/lib/postgresql/15/bin; else bin=$root/.cache/pg/$major/bin; fi
    local work port
    work=$(mktemp -d /tmp/drctl-benchinc.XXXXXX)
    chmod 755 "$work"
    port=$(freeport)
    [[ $(id -u) -eq 0 ]] && chown postgres:postgres "$work"
    trap "pg $bin/pg_ctl -D $work/pgdata -m immediate -w stop >/dev/null 2>&1 || true; rm -rf $work" RETURN
    local d=("${as_pg[@]}" "$drctl" --policies "$work/policies" --catalog "$work/drctl.db")
    local url="postgres://postgres@127.0.0.1:$port/postgres"
    q() { "$bin/psql" -X -At --dbname="$url" -c "$1"; }

    pg mkdir -p "$work/policies"
    local recipient
    recipient=$(pg age-keygen -o "$work/key.txt" 2>&1 | sed 's/Public key: //')
    pg tee "$work/policies/bench.toml" >/dev/null <<TOML
[source]
kind = "postgres"
url = "$url"
pg_bindir = "$bin"
[backup]
method = "physical"
incremental = true
max_chain = 6
[repository]
url = "file://$work/drctl-repo"
[encryption]
recipients = ["$recipient"]
[compression]
level = 3
threads = 2
TOML
    local pgbr_push=""
    if [[ $major == 15 ]]; then
        pg tee "$work/pgbackrest.conf" >/dev/null <<CONF
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
        pgbr_push=" && pgbackrest --config=$work/pgbackrest.conf --stanza=bench archive-push %p"
    fi
    pgbr() { pg pgbackrest --config="$work/pgbackrest.conf" --stanza=bench "$@"; }

    echo "==> PostgreSQL $major on 127.0.0.1:$port"
    pg "$bin/initdb" -D "$work/pgdata" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >/dev/null
    pg tee -a "$work/pgdata/postgresql.conf" >/dev/null <<CONF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$work'
shared_buffers = 256MB
max_wal_size = 4GB
archive_mode = on
archive_command = '$drctl --policies $work/policies --catalog $work/drctl.db wal-push bench %p$pgbr_push'
CONF
    [[ $major -ge 17 ]] && echo "summarize_wal = on" | pg tee -a "$work/pgdata/postgresql.conf" >/dev/null
    pg "$bin/pg_ctl" -D "$work/pgdata" -l "$work/server.log" -w start >/dev/null
    [[ $major == 15 ]] && pgbr stanza-create
    "$bin/pgbench" -i -q -s "$scale" "$url" 2>&1 | tail -1
    echo "database size: $(q "select pg_size_pretty(pg_database_size('postgres'))")"
    local pages rows
    pages=$(q "select relpages from pg_class where relname = 'pgbench_accounts'")
    rows=$(( pages / 100 ))

    stored() { "${d[@]}" list bench --output json | python3 -c "import json,sys; print(json.load(sys.stdin)[0]['stored_bytes'])"; }
    q "checkpoint" >/dev/null
    local t0 t1 t_full s_full t_inc s_inc t_pgbr_full t_pgbr_inc
    t0=$(now); "${d[@]}" backup bench --full >/dev/null; t1=$(now)
    t_full=$(calc "$t1 - $t0"); s_full=$(stored)
    if [[ $major == 15 ]]; then
        q "checkpoint" >/dev/null
        t0=$(now); pgbr backup --type=full; t1=$(now); t_pgbr_full=$(calc "$t1 - $t0")
    fi
    for round in 1 2 3 4 5 6; do
        # About 1% of the table's pages: random rows, one per page at most.
        q "update pgbench_accounts set abalance = abalance + 1 where aid in (select (random() * ($scale * 100000 - 1))::int + 1 from generate_series(1, $rows))" >/dev/null
        q "checkpoint" >/dev/null
        t0=$(now); "${d[@]}" backup bench --incremental >/dev/null; t1=$(now)
        if [[ $round == 1 ]]; then t_inc=$(calc "$t1 - $t0"); s_inc=$(stored); fi
        if [[ $major == 15 ]]; then
            t0=$(now); pgbr backup --type=incr; t1=$(now)
            [[ $round == 1 ]] && t_pgbr_inc=$(calc "$t1 - $t0")
        fi
    done
    local latest
    latest=$("${d[@]}" list bench --output json | python3 -c "import json,sys; print(json.load(sys.stdin)[0]['id'])")
    local full_id
    full_id=$("${d[@]}" list bench --output json | python3 -c "import json,sys; print(json.load(sys.stdin)[-1]['id'])")

    echo "==> restores: the chain of 7, and the full alone ($pairs rounds, alternating)"
    local t_chain t_fullr t_pgbr_restore chains=() fulls=() pgbrs=() ratios=()
    for round in $(seq "$pairs"); do
        pg rm -rf "$work/r"; pg mkdir -p "$work/r"
        t0=$(now); "${d[@]}" restore bench --backup "$latest" --target-dir "$work/r/chain" --identity "$work/key.txt" >/dev/null; t1=$(now)
        chains+=("$(calc "$t1 - $t0")")
        t0=$(now); "${d[@]}" restore bench --backup "$full_id" --target-dir "$work/r/full" --identity "$work/key.txt" >/dev/null; t1=$(now)
        fulls+=("$(calc "$t1 - $t0")")
        if [[ $major == 15 ]]; then
            pg mkdir -p "$work/r/pgbr"; pg chmod 700 "$work/r/pgbr"
            t0=$(now); pgbr restore --type=immediate --pg1-path="$work/r/pgbr"; t1=$(now)
            pgbrs+=("$(calc "$t1 - $t0")")
            ratios+=("$(calc "${chains[-1]} / ${pgbrs[-1]}")")
        fi
    done
    median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
    t_chain=$(median "${chains[@]}"); t_fullr=$(median "${fulls[@]}")
    [[ $major == 15 ]] && t_pgbr_restore=$(median "${pgbrs[@]}")

    echo
    echo "PostgreSQL $major, pgbench scale $scale, $rows rows of $pages pages changed per round"
    printf '  full backup          %8.2f s  %12s bytes stored\n' "$t_full" "$s_full"
    printf '  first incremental    %8.2f s  %12s bytes stored\n' "$t_inc" "$s_inc"
    echo "  incremental / full:  time $(calc "$t_inc / $t_full")  stored size $(calc "$s_inc / $s_full")   (targets: size <= 0.05; time <= 0.15 on 17+)"
    printf '  chain restore (7)    %8.2f s;  full alone %8.2f s;  chain / full %s  (medians)\n' "$t_chain" "$t_fullr" "$(calc "$t_chain / $t_fullr")"
    if [[ $major == 15 ]]; then
        printf '  pgBackRest: full %8.2f s, incr %8.2f s, restore of full + 6 incr %8.2f s\n' "$t_pgbr_full" "$t_pgbr_inc" "$t_pgbr_restore"
        echo "  drctl chain restore / pgBackRest restore, per round: ${ratios[*]}"
        echo "  drctl chain restore / pgBackRest restore: median $(median "${ratios[@]}")   (target: <= 1)"
    fi
    echo
}

for m in $majors; do bench_major "$m"; done
