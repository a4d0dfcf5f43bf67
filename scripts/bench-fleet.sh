#!/usr/bin/env bash
# Fleet mode at scale: POLICIES dump policies on one S3 server (the loopback
# S3-compatible test server), WORKERS `drctl daemon`s sharing one PostgreSQL
# catalog, every policy due every EVERY seconds (staggered), for MINUTES.
# Halfway one daemon is killed -9 while it holds a lease. Prints:
#   - runs/minute (slots finished complete);
#   - lease takeover time: from the kill to another daemon taking over the
#     killed one's slot (or finding its backup committed);
#   - lost slots (due while the fleet ran, never finished) and doubled runs
#     (committed backups no slot names), goal 0 each;
#   - `drctl status --output json` latency over the fleet from the shared
#     catalog (median of 5), goal <= 200 ms. Peer: psql answering the newest
#     complete backup per policy from the same catalog.
#
# Usage: scripts/bench-fleet.sh [POLICIES] [WORKERS] [MINUTES] [EVERY]
#        (default 200 8 3 60). Needs scripts/install-deps.sh run once.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-200}
workers=${2:-8}
minutes=${3:-3}
every=${4:-60}
((every % 60 == 0 && every <= 3600)) || { echo "bench: EVERY must be whole minutes (60, 120, … 3600)" >&2; exit 2; }
cargo build --release --quiet
drctl="$PWD/target/release/drctl"
pgbin=/usr/lib/postgresql/15/bin
moto="$PWD/.venv/bin/moto_server"
py="$PWD/.venv/bin/python3"
[[ -x $moto ]] || { echo "bench: run scripts/install-deps.sh first (moto)" >&2; exit 1; }

work=$(mktemp -d /tmp/drctl-benchfleet.XXXXXX)
chmod 755 "$work"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -9 -- "-$p" 2>/dev/null || kill -9 "$p" 2>/dev/null || true; done
    [[ -d $work/pg ]] && runuser -u postgres -- "$pgbin/pg_ctl" -D "$work/pg" -m immediate stop >/dev/null 2>&1 || true
    [[ -n ${KEEP:-} ]] && echo "kept $work" >&2 || rm -rf "$work"
}
trap cleanup EXIT
free_port() { "$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# PostgreSQL: the catalog and the one small database every policy dumps.
pgport=$(free_port)
install -d -o postgres "$work/pg" "$work/pglog"
runuser -u postgres -- "$pgbin/initdb" -D "$work/pg" -A trust -U postgres >/dev/null
runuser -u postgres -- "$pgbin/pg_ctl" -D "$work/pg" -l "$work/pglog/pg.log" \
    -o "-p $pgport -k /tmp -c listen_addresses=127.0.0.1 -c max_connections=300" start >/dev/null
psql="$pgbin/psql -X -q -h 127.0.0.1 -p $pgport -U postgres"
$psql -c "CREATE DATABASE catalog" -c "CREATE DATABASE src" postgres
$psql -c "CREATE TABLE t AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 1000) g" src

# S3.
s3port=$(free_port)
"$moto" -H 127.0.0.1 -p "$s3port" >/dev/null 2>&1 &
pids+=($!)
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$s3port/moto-api/" >/dev/null && break; sleep 0.2; done
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true
curl -sf -X PUT "http://127.0.0.1:$s3port/fleet" >/dev/null

mkdir "$work/policies"
key=$(age-keygen 2>&1 >/dev/null | sed -n 's/^Public key: //p')
for i in $(seq 1 "$n"); do
    cat >"$work/policies/p$i.toml" <<EOF
[source]
kind = "postgres"
url = "postgres://postgres@127.0.0.1:$pgport/src"

[backup]
method = "dump"
schedule = "$((i % 60)) */$((every / 60)) * * * *"

[retention]
keep_last = 1000

[repository]
url = "s3://fleet/bench"
endpoint = "http://127.0.0.1:$s3port"
region = "us-east-1"
force_path_style = true
lease_ttl = "10s"

[encryption]
recipients = ["$key"]
EOF
done
chmod -R a+rX "$work/policies"
# drctl runs as a service does: the postgres OS user, a service's PATH,
# only the environment it is given.
as_pg() {
    runuser -u postgres -- env -i PATH=/usr/local/bin:/usr/bin:/bin HOME=/tmp \
        AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_REGION=us-east-1 \
        AWS_EC2_METADATA_DISABLED=true DRCTL_POLICIES="$work/policies" \
        DRCTL_CATALOG="postgres://postgres@127.0.0.1:$pgport/catalog" "$@"
}
as_pg "$drctl" init >/dev/null 2>&1 || true
rm -f "$work/policies/example.toml"

start=$(date +%s)
for w in $(seq 1 "$workers"); do
    install -d -o postgres "$work/state$w"
    # setpriv execs (runuser would stay as a parent that SIGKILLs its child
    # two seconds after a SIGTERM), so the pid is the daemon's own.
    setsid setpriv --reuid=postgres --regid=postgres --init-groups env -i \
        PATH=/usr/local/bin:/usr/bin:/bin HOME=/tmp AWS_ACCESS_KEY_ID=bench \
        AWS_SECRET_ACCESS_KEY=bench AWS_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true \
        DRCTL_POLICIES="$work/policies" DRCTL_STATE_DIR="$work/state$w" \
        DRCTL_CATALOG="postgres://postgres@127.0.0.1:$pgport/catalog" \
        "$drctl" --log-format json daemon --no-catch-up --grace 60s 2>"$work/daemon$w.log" &
    pids+=($!)
done
sleep $((minutes * 30))
# Kill -9 a daemon holding a backup's run lease right now, found in the
# catalog's lease table (every holder records itself there).
killed_at=
for _ in $(seq 200); do
    pid=$($psql -At -c "select pid from leases where lease = 'run' and what = 'backup' limit 1" catalog || true)
    if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
        kill -9 "$pid"; killed_at=$(date +%s.%N); break
    fi
    sleep 0.05
done
sleep $((minutes * 30))
sched_end=$(date +%s)
for p in "${pids[@]:1}"; do kill -TERM "$p" 2>/dev/null || true; done
for p in "${pids[@]:1}"; do wait "$p" 2>/dev/null || true; done
stop=$(date +%s)
pids=("${pids[0]}")

# --- analysis ---------------------------------------------------------------
"$py" - "$s3port" "$start" "$stop" "$every" "${killed_at:-0}" "$work" "$sched_end" <<'EOF'
import boto3, json, sys, glob, datetime
port, start, stop, every, killed, work = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]), sys.argv[6]
sched_end = int(sys.argv[7])
s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}")
keys = []
for page in s3.get_paginator("list_objects_v2").paginate(Bucket="fleet", Prefix="bench/"):
    keys += [o["Key"] for o in page.get("Contents", [])]
markers = [k for k in keys if "/slots/backup/" in k]
manifests = {k.split("/")[3] for k in keys if k.endswith("/manifest.json")}
complete, named, unfinished, outcomes = 0, set(), [], {}
for k in markers:
    m = json.loads(s3.get_object(Bucket="fleet", Key=k)["Body"].read())
    outcomes[m.get("outcome")] = outcomes.get(m.get("outcome"), 0) + 1
    if not m.get("finished_at"):
        unfinished.append(k)
    elif m.get("outcome") == "complete":
        complete += 1
        named.add(m["backup_id"])
minutes = (sched_end - start) / 60
# Every slot due while all daemons ran (from the first minute to the
# SIGTERM, 5 s short of it) must have a marker.
have = {(k.split("/")[1], k.rsplit("/", 1)[1][:-5]) for k in markers}
missing = []
for p in {k.split("/")[1] for k in keys if k.startswith("bench/p")}:
    i = int(p[1:])
    for t in range(start + 60, sched_end - 5):
        if t % every == i % 60:
            slot = datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
            if (p, slot) not in have:
                missing.append(f"{p}/{slot}")
lost = missing + unfinished
doubled = sorted(manifests - named)
takeover = None
for f in glob.glob(f"{work}/daemon*.log"):
    for line in open(f):
        # A slot taken over and run again, or found committed by the dead
        # runner and finished without a second run.
        if "taking over the backup slot" in line or "not run again" in line:
            ts = json.loads(line)["timestamp"]
            t = datetime.datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
            if killed and t > killed and (takeover is None or t - killed < takeover):
                takeover = t - killed
print(f"fleet: {len(markers)} slots ({outcomes}) in {minutes:.1f} min of schedule: {complete / minutes:.1f} complete runs/minute")
print(f"fleet: killed daemon's slot settled by another {takeover:.1f} s after kill -9 (lease_ttl 10 s)" if takeover else "fleet: no takeover seen (the killed daemon held no unfinished slot)")
print(f"fleet: lost slots {len(lost)} (goal 0), doubled runs {len(doubled)} (goal 0)")
for k in lost[:10]:
    print(f"fleet:   lost: {k}")
for k in doubled[:10]:
    print(f"fleet:   backup no finished slot names: {k}")
EOF

# status latency over the fleet, from the shared catalog; peer: psql.
ms() { local t0 t1; t0=$(date +%s%N); "$@" >/dev/null; t1=$(date +%s%N); echo $(((t1 - t0) / 1000000)); }
drctl_ms=(); psql_ms=()
for _ in 1 2 3 4 5; do
    drctl_ms+=("$(ms as_pg "$drctl" status --output json)")
    psql_ms+=("$(ms runuser -u postgres -- $psql -At -c "select policy, max(consistent_at) from backups where status = 'complete' group by policy" catalog)")
done
median() { printf '%s\n' "$@" | sort -n | sed -n 3p; }
d=$(median "${drctl_ms[@]}"); p=$(median "${psql_ms[@]}")
echo "fleet: drctl status over $n policies: ${d} ms (goal <= 200 ms); psql newest-per-policy: ${p} ms; ratio $(awk "BEGIN{printf \"%.1f\", $d/($p>0?$p:1)}")"
