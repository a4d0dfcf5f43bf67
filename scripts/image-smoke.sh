#!/bin/sh
# Proves a drctl image can do the whole job on its own, as its own user,
# with nothing from the host: a PostgreSQL MAJOR cluster archiving through
# drctl, a physical backup, rows written after it, a restore --start that
# replays them (and pg_verifybackup proving the files), and a drill.
#
#   docker run --rm --entrypoint /bin/sh drctl /usr/local/share/drctl/image-smoke.sh 17
#
# tests/deploy.rs runs it in the image it builds. PGBIN overrides where the
# server binaries are (to try the script outside an image).
set -eu
MAJOR=${1:-17}
OWN_PGBIN=${PGBIN:-}
PGBIN=${PGBIN:-/usr/lib/postgresql/$MAJOR/bin}
PORT=${PORT:-5499}
W=$(mktemp -d)
cd "$W"
stop() {
    for d in "$W/src" "$W/restored"; do
        [ -f "$d/postmaster.pid" ] && "$PGBIN/pg_ctl" -D "$d" -m immediate stop >/dev/null 2>&1
    done
    rm -rf "$W"
}
trap stop EXIT
sql() { "$PGBIN/psql" -X -A -t -w -h 127.0.0.1 -p "$1" -U postgres -d postgres -c "$2"; }

"$PGBIN/initdb" -D src -U postgres --auth=trust -E UTF8 >/dev/null
drctl init --name shop --policies "$W/policies" --repo "file://$W/repo" \
    --source "postgres://postgres@127.0.0.1:$PORT/postgres" >/dev/null
sed -i 's/^method = "dump"/method = "physical"/' policies/shop.toml
# In the image drctl finds the tools itself; elsewhere it is told.
[ -z "$OWN_PGBIN" ] || sed -i "s|^kind = \"postgres\"|kind = \"postgres\"\npg_bindir = \"$OWN_PGBIN\"|" policies/shop.toml
cat >>src/postgresql.conf <<EOF
port = $PORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$W'
archive_mode = on
archive_command = 'drctl --policies $W/policies wal-push shop %p'
EOF
"$PGBIN/pg_ctl" -D src -l src.log -w start >/dev/null

sql "$PORT" "CREATE TABLE t AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 20000) g" >/dev/null
drctl --policies policies check shop >/dev/null
drctl --policies policies backup shop >/dev/null
sql "$PORT" "INSERT INTO t SELECT g, md5(g::text) FROM generate_series(20001, 25000) g" >/dev/null
seg=$(sql "$PORT" "SELECT pg_walfile_name(pg_switch_wal())")
want=$(sql "$PORT" "SELECT count(*) || ' ' || md5(string_agg(v, ',' ORDER BY id)) FROM t")

# The segment holding those rows archived before the restore reads it.
i=0
until [ "$(sql "$PORT" "SELECT coalesce(last_archived_wal >= '$seg', false) FROM pg_stat_archiver")" = t ]; do
    i=$((i + 1))
    [ $i -lt 300 ] || { echo "image-smoke: $seg was not archived within 30 s" >&2; exit 1; }
    sleep 0.1
done

drctl --policies policies restore shop --latest --target-dir "$W/restored" \
    --identity drctl-identity.txt --start --port $((PORT + 1)) >/dev/null
got=$(sql $((PORT + 1)) "SELECT count(*) || ' ' || md5(string_agg(v, ',' ORDER BY id)) FROM t")
if [ "$got" != "$want" ]; then
    echo "image-smoke: restored $got, wanted $want" >&2
    exit 1
fi
drctl --policies policies drill shop --identity drctl-identity.txt >/dev/null
echo "image-smoke: PostgreSQL $("$PGBIN/postgres" --version | awk '{print $3}'): backup, restore --start ($got), drill ok"
