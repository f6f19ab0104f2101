#!/usr/bin/env bash
# Cross-process fan-out through the cluster bridge (engine feature `cluster`), beside the
# single-process figure, and the broker's own per-message cost:
#
#   benches/cluster.sh            # writes benches/results/cluster-DATE.md (and prints it)
#
# 1. single: one demo (1 worker), N subscribers and 1 publisher on it;
# 2. cross: two demos (1 worker each) on one redis-server, N/2 subscribers on each, the
#    publisher on the first (loadgen --peer, every second subscriber on the second demo):
#    half the deliveries are local, half cross Redis;
# 3. remote: as 2 with every subscriber on the second demo (--peer-every 1): every delivery
#    crosses Redis (the publisher's own echo comes back locally);
# each open loop at RATE messages/s (latency at a load the machine carries) and closed loop
# with K in flight (throughput; not for 3, whose publisher would be paced by its local echo);
# 4. redis-benchmark PUBLISH with 0 and 2 subscriber connections (its -P 16 pipelining, as
#    the bridge pipelines): Redis's cost per PUBLISH, the input of the paper estimate in
#    benches/README.md.
#
# Environment: N (subscribers, default 10000), RATE (default 20: 200k deliveries/s), K (default 8), DURATION
# (default 5), SIZE (payload bytes, default 64), BACKEND (default io_uring), PORT0 (first of
# the ports used, default 17400). Needs redis-server and redis-benchmark (apt-get install
# redis-server). Everything runs on this machine's loopback.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
N=${N:-10000}
RATE=${RATE:-20}
K=${K:-8}
DURATION=${DURATION:-5}
SIZE=${SIZE:-64}
BACKEND=${BACKEND:-io_uring}
PORT0=${PORT0:-17400}
T="${CARGO_TARGET_DIR:-$ROOT/target}/release"
RPORT=$PORT0
A=$((PORT0 + 1))
B=$((PORT0 + 2))
OUT="$ROOT/benches/results/cluster-$(date -u +%Y-%m-%d).md"
TMP=$(mktemp -d)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT

cargo build --release --quiet -p sockeye --example demo --features cluster
cargo build --release --quiet -p sockeye-benches --bin loadgen
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

redis-server --port "$RPORT" --bind 127.0.0.1 --save '' --appendonly no --daemonize no \
    >"$TMP/redis.log" 2>&1 &
REDIS=$!
PIDS+=("$REDIS")
for _ in $(seq 50); do redis-cli -p "$RPORT" ping >/dev/null 2>&1 && break; sleep 0.1; done

# CPU ticks (user + system) of a process.
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)

start_demo() { # PORT [--cluster URL]; sets DEMO to its pid
    local port=$1; shift
    SOCKEYE_BACKEND=$BACKEND "$T/examples/demo" --addr "127.0.0.1:$port" --workers 1 \
        --idle-timeout 0 "$@" >"$TMP/demo-$port.log" 2>&1 &
    DEMO=$!
    PIDS+=("$DEMO")
    for _ in $(seq 100); do
        curl -s -o /dev/null "http://127.0.0.1:$port/" && break
        sleep 0.05
    done
}
stop_demo() { # PID PORT
    if ! kill -INT "$1" 2>/dev/null; then
        echo "cluster.sh: the demo on port $2 had exited; its log ends:" >&2
        tail -20 "$TMP/demo-$2.log" >&2
    fi
    wait "$1" 2>/dev/null || true
}

# run NAME SRVPID LOADGEN-ARGS...: one loadgen run; prints a table row.
run() {
    local name=$1 srv=$2; shift 2
    RUNS=$((${RUNS:-0} + 1))
    local json="$TMP/run-$RUNS.json"
    "$T/loadgen" fanout --url "ws://127.0.0.1:$A/chat" --connections "$N" --size "$SIZE" \
        --duration "$DURATION" --warmup 1 --server-pid "$srv" --quiet --json "$json" "$@" \
        >/dev/null 2>"$TMP/run-$RUNS.err" || true
    python3 - "$json" "$name" <<'EOF'
import json, sys
j = json.load(open(sys.argv[1]))
lat = j.get("latency_us", {})
print(f"| {sys.argv[2]} | {j.get('published_per_s', 0):,.0f} | {j.get('delivered_per_s', 0):,.0f} | "
      f"{lat.get('p50', 0):,.0f} | {lat.get('p99', 0):,.0f} | {j.get('lost', 0)} |")
EOF
}

{
echo "# Cluster bridge: cross-process fan-out ($(date -u +%Y-%m-%d), commit $(git rev-parse --short HEAD))"
echo
echo "$(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), no pinning: demos,"
echo "redis-server and the loadgen share them. $N subscribers, 1 publisher, $SIZE-byte text"
echo "messages, backend $BACKEND, 1 worker per demo, ${DURATION} s windows."
echo
echo "| run | published/s | delivered/s | p50 µs | p99 µs | lost |"
echo "|---|--:|--:|--:|--:|--:|"
start_demo "$A"; S=$DEMO
run "single, open loop $RATE/s" "$S" --rate "$RATE"
run "single, closed loop K=$K" "$S" --inflight "$K"
stop_demo "$S" "$A"
URL="redis://127.0.0.1:$RPORT"
start_demo "$A" --cluster "$URL"; SA=$DEMO
start_demo "$B" --cluster "$URL"; SB=$DEMO
run "2 × $((N / 2)), open loop $RATE/s" "$SA" --rate "$RATE" --peer "127.0.0.1:$B"
run "2 × $((N / 2)), closed loop K=$K" "$SA" --inflight "$K" --peer "127.0.0.1:$B"
run "all $N remote, open loop $RATE/s" "$SA" --rate "$RATE" --peer "127.0.0.1:$B" --peer-every 1
# No closed loop with every subscriber remote: the publisher is paced by its own (local)
# echo, so it outruns the other process's fan-out, whose backlog then only grows.
echo
echo "Bridge counters after the runs (demo A, then B):"
echo
echo '```'
for p in $A $B; do
    curl -s "http://127.0.0.1:$p/metrics" | grep -E '^sockeye_cluster_[a-z_]+_total\{worker="0"\}' || true
done
echo '```'
stop_demo "$SA" "$A"
stop_demo "$SB" "$B"

echo
echo "redis-benchmark PUBLISH ($SIZE-byte payload, 50 clients, -P 16), requests/s:"
echo
PAYLOAD=$(head -c "$SIZE" /dev/zero | tr '\0' x)
for subs in 0 2 8; do
    SUBS=()
    for _ in $(seq "$subs"); do
        redis-cli -p "$RPORT" SUBSCRIBE bench >/dev/null &
        SUBS+=("$!")
    done
    sleep 0.3
    r0=$(ticks "$REDIS")
    rps=$(timeout 120 redis-benchmark -p "$RPORT" -n 500000 -c 50 -P 16 -q PUBLISH bench "$PAYLOAD" 2>/dev/null |
        tr '\r' '\n' | grep -o '[0-9.]* requests per second' | tail -1 | cut -d' ' -f1)
    r1=$(ticks "$REDIS")
    us=$(python3 -c "print(f'{($r1 - $r0) / $HZ * 1e6 / 500000:.2f}')")
    rps=${rps:-"(no answer)"}
    echo "- $subs subscriber connections: $rps PUBLISH/s; redis-server CPU $us µs per PUBLISH"
    # (No bare `wait`: with no subscribers it would wait for redis-server itself.)
    for p in "${SUBS[@]}"; do
        kill "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
done
} >"$OUT"
cat "$OUT"
echo "written to $OUT" >&2
