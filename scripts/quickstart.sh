#!/usr/bin/env bash
# The main job end to end on a fresh machine: installs what is missing,
# builds drctl, starts a throwaway PostgreSQL 15, loads sample data, backs it
# up (pg_dump | zstd | age) into a local repository with a SQLite catalog,
# changes the data, restores the backup into a new database and proves the
# restored data equals the backup (row counts and content checksums).
#
# Usage: scripts/quickstart.sh        (KEEP=1 keeps the work directory)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

scripts/install-deps.sh --no-test-deps
echo "==> building drctl (release)"
cargo build --release --quiet
drctl="$root/target/release/drctl"
# The server's own tools by path; drctl runs with a service's PATH and
# finds the ones it needs itself, as on a stock Debian host.
pgbin=/usr/lib/postgresql/15/bin
export PATH=/usr/local/bin:/usr/bin:/bin

work=$(mktemp -d /tmp/drctl-quickstart.XXXXXX)
as_pg=()
if [[ $(id -u) -eq 0 ]]; then
    chown postgres:postgres "$work"
    chmod 755 "$work"
    as_pg=(/usr/sbin/runuser -u postgres --)
fi
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cleanup() {
    "${as_pg[@]}" "$pgbin/pg_ctl" -D "$work/pgdata" -m fast -w stop >/dev/null 2>&1 || true
    if [[ "${KEEP:-0}" == 1 ]]; then echo "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

echo "==> starting a throwaway PostgreSQL 15 on 127.0.0.1:$port"
"${as_pg[@]}" "$pgbin/initdb" -D "$work/pgdata" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >/dev/null
"${as_pg[@]}" "$pgbin/pg_ctl" -D "$work/pgdata" -l "$work/pgdata/server.log" -w \
    -o "-p $port -k $work -c listen_addresses=127.0.0.1" start >/dev/null
src="postgres://postgres@127.0.0.1:$port"
psql_() { psql -X -q -v ON_ERROR_STOP=1 -At --dbname="$src/$1" "${@:2}"; }

echo "==> loading sample data into database 'shop'"
psql_ postgres -c "CREATE DATABASE shop"
psql_ shop <<'SQL'
CREATE SCHEMA sales;
CREATE TABLE sales.customers (id serial PRIMARY KEY, name text NOT NULL, email text);
CREATE TABLE sales.orders (id bigserial PRIMARY KEY, customer_id int REFERENCES sales.customers,
                           amount numeric(12,2), note text, payload jsonb, created timestamptz);
INSERT INTO sales.customers (name, email)
SELECT 'customer ' || g || CASE WHEN g % 3 = 0 THEN ' Zoë 日本語' ELSE '' END,
       CASE WHEN g % 5 = 0 THEN NULL ELSE 'c' || g || '@example.com' END
FROM generate_series(1, 1000) g;
INSERT INTO sales.orders (customer_id, amount, note, payload, created)
SELECT 1 + g % 1000, (g % 997) * 1.5, CASE WHEN g % 7 = 0 THEN NULL ELSE 'order ' || g END,
       jsonb_build_object('g', g, 'tags', jsonb_build_array('a', g % 4)),
       '2026-01-01'::timestamptz + g * interval '1 minute'
FROM generate_series(1, 200000) g;
CREATE VIEW sales.big_orders AS SELECT * FROM sales.orders WHERE amount > 1000;
SQL

fingerprint() {
    psql_ "$1" <<'SQL'
SELECT format('SELECT %L || '' rows='' || count(*) || '' md5='' || coalesce(md5(string_agg(t::text, E''\n'' ORDER BY t::text)), ''-'') FROM %I.%I t',
              n.nspname || '.' || c.relname, n.nspname, c.relname)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema')
ORDER BY 1
\gexec
SQL
}

cd "$work"
echo "==> drctl init (policy + age key pair), policy check, backup"
"$drctl" init --repo "file://$work/repo" --source "$src/shop" --name shop
"$drctl" policy check
"$drctl" backup shop
fingerprint shop > backed-up.txt
"$drctl" list shop
"$drctl" verify shop --deep --identity drctl-identity.txt

echo "==> changing the source after the backup"
psql_ shop -c "DELETE FROM sales.orders WHERE id % 3 = 0; UPDATE sales.customers SET name = 'changed'"
fingerprint shop > changed.txt

echo "==> drctl restore shop --latest into a new database 'shop_restored'"
"$drctl" restore shop --latest --target "$src/shop_restored" --identity drctl-identity.txt
fingerprint shop_restored > restored.txt

echo "==> comparing (table rows=N md5=content checksum)"
cat restored.txt
if ! diff -u backed-up.txt restored.txt; then
    echo "FAIL: the restored data differs from the backup" >&2
    exit 1
fi
if diff -q backed-up.txt changed.txt >/dev/null; then
    echo "FAIL: the change after the backup was not visible; the comparison proves nothing" >&2
    exit 1
fi
echo "OK: the restored database equals the backup ($(wc -l < restored.txt) tables; the source has changed since)"
