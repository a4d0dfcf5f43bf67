#!/usr/bin/env bash
# The scheduler at scale: 1,000 policies.
#   - scheduling drift: `drctl daemon --dry-run` (schedules and logs every
#     due run, runs nothing) with every policy due every 10 s, staggered over
#     the 10 seconds; drift = when the run was logged as started - when it
#     was due. Peer: a minimal Python loop scheduling the same 1,000 entries
#     on the same machine (the floor a sleeping scheduler gets here).
#   - `drctl status --output json` latency over 1,000 policies with 30
#     catalog rows each (30,000 rows). Peer: sqlite3 answering the newest
#     complete backup per policy straight from the same catalog.
#   - the status page (`daemon --listen`, `/` and `/policy/p1`) over the
#     same catalog: cold (the daemon gathers afresh; its cache lives 10 s)
#     and warm. Same peer.
# Targets (issues 4, 26): drift <= 1 s, status <= 200 ms, page <= 200 ms.
#
# Usage: scripts/bench-daemon.sh [POLICIES] [SECONDS]   (default 1000, 35)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-1000}
secs=${2:-35}
cargo build --release --quiet
drctl="$PWD/target/release/drctl"
command -v sqlite3 >/dev/null || { echo "bench: needs sqlite3 (apt install sqlite3)" >&2; exit 1; }

work=$(mktemp -d /tmp/drctl-benchdaemon.XXXXXX)
daemon_pid=
cleanup() {
    [[ -n $daemon_pid ]] && kill "$daemon_pid" 2>/dev/null || true
    [[ -n ${KEEP:-} ]] || rm -rf "$work"; [[ -n ${KEEP:-} ]] && echo "kept $work" >&2 || true
}
trap cleanup EXIT
mkdir "$work/policies"
key=$(age-keygen 2>&1 >/dev/null | sed -n 's/^Public key: //p')
for i in $(seq 1 "$n"); do
    cat >"$work/policies/p$i.toml" <<EOF
[source]
kind = "postgres"
url = "postgres://backup@127.0.0.1:5432/db$i"

[backup]
method = "dump"
schedule = "$((i % 10))/10 * * * * *"

[retention]
keep_last = 30

[repository]
url = "file://$work/repo"

[encryption]
recipients = ["$key"]
EOF
done
export DRCTL_POLICIES="$work/policies" DRCTL_CATALOG="$work/catalog.db"
"$drctl" policy check >/dev/null

# --- scheduling drift -------------------------------------------------------
"$drctl" --log-format json daemon --dry-run --no-catch-up 2>"$work/daemon.log" &
daemon_pid=$!
sleep "$secs"
kill -TERM "$daemon_pid"
wait "$daemon_pid" || true
daemon_pid=

python3 - "$work/daemon.log" "$n" "$secs" <<'EOF' >"$work/drift.txt"
import json, sys
from datetime import datetime
def ts(s): return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()
drift = []
for line in open(sys.argv[1]):
    try: e = json.loads(line)
    except ValueError: continue
    f = e.get("fields", {})
    if f.get("message") == "starting scheduled backup":
        drift.append(ts(e["timestamp"]) - ts(f["due"]))
drift.sort()
n, secs = int(sys.argv[2]), int(sys.argv[3])
q = lambda p: drift[min(len(drift) - 1, int(p * len(drift)))]
print(len(drift), q(0.5), q(0.99), drift[-1])
EOF
read -r runs d50 d99 dmax <"$work/drift.txt"

# Peer: the same 1,000 staggered entries in a plain Python sleep loop.
read -r p50 p99 pmax < <(python3 - "$n" "$secs" <<'EOF'
import math, sys, time
n, secs = int(sys.argv[1]), int(sys.argv[2])
def next_due(i, after):
    # second i % 10 of every 10 s, strictly after `after`
    base = math.floor(after / 10) * 10 + (i % 10)
    return base if base > after else base + 10
now = time.time()
due = {i: next_due(i, math.floor(now)) for i in range(1, n + 1)}
end, drift = now + secs, []
while time.time() < end:
    t = min(due.values())
    time.sleep(max(0, t - time.time()))
    now = time.time()
    for i, d in due.items():
        if d <= now:
            drift.append(now - d)
            due[i] = next_due(i, math.floor(now))
drift.sort()
q = lambda p: drift[min(len(drift) - 1, int(p * len(drift)))]
print(q(0.5), q(0.99), drift[-1])
EOF
)

# --- status latency -------------------------------------------------------------
python3 - "$n" <<'EOF' | sqlite3 "$DRCTL_CATALOG"
import sys
from datetime import datetime, timedelta, timezone
n = int(sys.argv[1])
t0 = datetime.now(timezone.utc) - timedelta(days=30)
print("BEGIN;")
for i in range(1, n + 1):
    for k in range(30):
        t = (t0 + timedelta(days=k, seconds=i)).strftime("%Y-%m-%dT%H:%M:%S.000000Z")
        st = "failed" if k % 10 == 9 else "complete"
        c = "NULL" if st == "failed" else f"'{t}'"
        print(f"INSERT INTO backups (id, policy, method, status, started_at, finished_at, consistent_at, stored_bytes, source_bytes, repository) "
              f"VALUES ('b{i}-{k}', 'p{i}', 'dump', '{st}', '{t}', '{t}', {c}, 1000, 5000, 'file:///r');")
print("COMMIT;")
EOF
median() { sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
time_ms() {
    local s e
    s=$(date +%s%N)
    "$@" >/dev/null
    e=$(date +%s%N)
    echo $(((e - s) / 1000000))
}
"$drctl" status --output json >/dev/null # warm the page cache
status_ms=$(for _ in 1 2 3 4 5 6 7; do time_ms "$drctl" status --output json; done | median)
peer_ms=$(for _ in 1 2 3 4 5 6 7; do time_ms sqlite3 "$DRCTL_CATALOG" \
    "select policy, max(consistent_at) from backups where status = 'complete' group by policy"; done | median)

# --- the status page ----------------------------------------------------------
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$drctl" daemon --dry-run --no-catch-up --listen "127.0.0.1:$port" 2>"$work/page-daemon.log" &
daemon_pid=$!
for _ in $(seq 1 100); do curl -fs "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
get_ms() { curl -fs -o /dev/null -w '%{time_total}\n' "http://127.0.0.1:$port$1" | awk '{ printf "%.0f\n", $1 * 1000 }'; }
curl -fs "http://127.0.0.1:$port/" | grep -c 'data-state=' >"$work/page-rows.txt"
# Cold: each after the daemon's 10 s cache has expired.
page_cold_ms=$(for _ in 1 2 3; do sleep 11; get_ms /; done | median)
page_warm_ms=$(for _ in 1 2 3 4 5 6 7; do get_ms /; done | median)
policy_ms=$(for _ in 1 2 3 4 5 6 7; do get_ms /policy/p1; done | median)
kill -TERM "$daemon_pid"
wait "$daemon_pid" || true
daemon_pid=

ms() { awk "BEGIN { printf \"%.0f\", $1 * 1000 }"; }
ratio() { awk "BEGIN { if ($2 > 0) printf \"%.1f\", $1 / $2; else print \"-\" }"; }
verdict() { awk "BEGIN { print ($1 <= $2) ? \"ok\" : \"OVER\" }"; }
echo
echo "policies: $n, daemon --dry-run for ${secs}s: $runs runs started (expected about $((n * secs / 10)))"
printf "%-34s %10s %10s %10s\n" "" "drctl" "peer" "ratio"
printf "%-34s %8s ms %8s ms %10s\n" "scheduling drift p50" "$(ms "$d50")" "$(ms "$p50")" "$(ratio "$d50" "$p50")"
printf "%-34s %8s ms %8s ms %10s   target <= 1000 ms: %s\n" "scheduling drift p99" "$(ms "$d99")" "$(ms "$p99")" "$(ratio "$d99" "$p99")" "$(verdict "$d99" 1)"
printf "%-34s %8s ms %8s ms %10s\n" "scheduling drift max" "$(ms "$dmax")" "$(ms "$pmax")" "$(ratio "$dmax" "$pmax")"
printf "%-34s %8s ms %8s ms %10s   target <= 200 ms: %s\n" "status --output json (median of 7)" "$status_ms" "$peer_ms" "$(ratio "$status_ms" "$peer_ms")" "$(verdict "$status_ms" 200)"
printf "%-34s %8s ms %8s ms %10s   target <= 200 ms: %s\n" "page / cold (median of 3)" "$page_cold_ms" "$peer_ms" "$(ratio "$page_cold_ms" "$peer_ms")" "$(verdict "$page_cold_ms" 200)"
printf "%-34s %8s ms %8s ms %10s\n" "page / warm (median of 7)" "$page_warm_ms" "$peer_ms" "$(ratio "$page_warm_ms" "$peer_ms")"
printf "%-34s %8s ms %8s ms %10s   target <= 200 ms: %s\n" "page /policy/p1 (median of 7)" "$policy_ms" "$peer_ms" "$(ratio "$policy_ms" "$peer_ms")" "$(verdict "$policy_ms" 200)"
echo "(page rows: $(cat "$work/page-rows.txt") of $n policies)"
echo "(peers: a plain Python sleep loop over the same schedules; sqlite3 answering the newest backup per policy)"
