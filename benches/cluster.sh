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
# 4. many rooms: 2 demos, TOPICS rooms with one publisher each (on the first demo) and N
#    subscribers spread over the rooms and the two demos, closed loop: the broker carries
#    many channels, which is what sharding spreads;
# 5. redis-benchmark PUBLISH / SPUBLISH with 0, 2 and 8 subscriber connections (its -P 16
#    pipelining, as the bridge pipelines): Redis's cost per message, the input of the paper
#    estimate in benches/README.md; and 3 redis-benchmark SPUBLISH at once on 3 channels
#    (on 3 masters with REDIS_CLUSTER=1).
#
#   REDIS_CLUSTER=1 benches/cluster.sh    # the same against a 3-master Redis Cluster
#
# With REDIS_CLUSTER=1 the broker is a Redis Cluster of 3 masters (no replicas) on this
# machine, made with CLUSTER ADDSLOTSRANGE / MEET; the demos are told of its first node and
# route each room's channel to its slot's master; results go to cluster-DATE-3masters.md.
#
# Environment: N (subscribers, default 10000), RATE (default 20: 200k deliveries/s), K (default 8), DURATION
# (default 5), SIZE (payload bytes, default 64), TOPICS (rooms of run 4, default 25: odd, so
# that every room has subscribers on both demos), BACKEND (default io_uring), PORT0 (first of
# the ports used, default 17400), REDIS_CLUSTER (default 0). Needs redis-server and redis-benchmark (apt-get install redis-server).
# Everything runs on this machine's loopback.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
N=${N:-10000}
RATE=${RATE:-20}
K=${K:-8}
DURATION=${DURATION:-5}
SIZE=${SIZE:-64}
TOPICS=${TOPICS:-25}
REDIS_CLUSTER=${REDIS_CLUSTER:-0}
BACKEND=${BACKEND:-io_uring}
PORT0=${PORT0:-17400}
T="${CARGO_TARGET_DIR:-$ROOT/target}/release"
RPORT=$PORT0
A=$((PORT0 + 1))
B=$((PORT0 + 2))
# Cluster nodes (REDIS_CLUSTER=1): RPORT and these two.
CPORTS=("$RPORT" $((PORT0 + 3)) $((PORT0 + 4)))
SUFFIX=""
[ "$REDIS_CLUSTER" = 1 ] && SUFFIX="-3masters"
OUT="$ROOT/benches/results/cluster-$(date -u +%Y-%m-%d)$SUFFIX.md"
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

REDISES=()
if [ "$REDIS_CLUSTER" = 1 ]; then
    for p in "${CPORTS[@]}"; do
        redis-server --port "$p" --bind 127.0.0.1 --save '' --appendonly no --daemonize no \
            --cluster-enabled yes --cluster-config-file "$TMP/nodes-$p.conf" --dir "$TMP" \
            >"$TMP/redis-$p.log" 2>&1 &
        PIDS+=("$!")
        REDISES+=("$!")
    done
    for p in "${CPORTS[@]}"; do
        for _ in $(seq 50); do redis-cli -p "$p" ping >/dev/null 2>&1 && break; sleep 0.1; done
    done
    # The split `redis-cli --cluster create` makes, without its waits.
    RANGES=("0 5460" "5461 10922" "10923 16383")
    for i in 0 1 2; do
        # shellcheck disable=SC2086
        redis-cli -p "${CPORTS[$i]}" CLUSTER ADDSLOTSRANGE ${RANGES[$i]} >/dev/null
        redis-cli -p "${CPORTS[$i]}" CLUSTER SET-CONFIG-EPOCH $((i + 1)) >/dev/null
    done
    for i in 1 2; do redis-cli -p "${CPORTS[$i]}" CLUSTER MEET 127.0.0.1 "$RPORT" >/dev/null; done
    for _ in $(seq 200); do
        ok=0
        for p in "${CPORTS[@]}"; do
            redis-cli -p "$p" CLUSTER INFO | grep -q 'cluster_state:ok' && ok=$((ok + 1))
        done
        [ "$ok" = 3 ] && break
        sleep 0.1
    done
else
    redis-server --port "$RPORT" --bind 127.0.0.1 --save '' --appendonly no --daemonize no \
        >"$TMP/redis.log" 2>&1 &
    PIDS+=("$!")
    REDISES+=("$!")
    for _ in $(seq 50); do redis-cli -p "$RPORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
fi
# The node serving a channel (its port), and a channel served by the node on port $1.
owner() { # CHANNEL
    if [ "$REDIS_CLUSTER" != 1 ]; then echo "$RPORT"; return; fi
    local slot
    slot=$(redis-cli -p "$RPORT" CLUSTER KEYSLOT "$1")
    redis-cli -p "$RPORT" CLUSTER SLOTS | python3 -c '
import sys
lines = sys.stdin.read().split()
slot = int(sys.argv[1])
# CLUSTER SLOTS as redis-cli prints it: start, end, ip, port, id, [replicas]...; take the
# triples (start, end, ip, port) where start <= slot <= end.
for i in range(len(lines) - 3):
    if lines[i].isdigit() and lines[i + 1].isdigit() and lines[i + 2] == "127.0.0.1":
        a, b, port = int(lines[i]), int(lines[i + 1]), lines[i + 3]
        if a <= slot <= b:
            print(port); break
' "$slot"
}
channel_on() { # PORT
    local i=0
    while [ "$(owner "bench$i")" != "$1" ]; do i=$((i + 1)); done
    echo "bench$i"
}

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
if [ "$REDIS_CLUSTER" = 1 ]; then
    echo
    echo "Broker: a Redis Cluster of 3 masters (ports ${CPORTS[*]}, no replicas), the demos told"
    echo "of the first; the one room of runs 1-3 (\`sockeye:chat\`'s slot) is on port"
    echo "$(owner sockeye:chat); the $TOPICS rooms of run 4 spread over the 3 masters."
else
    echo
    echo "Broker: one redis-server."
fi
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
run "2 × $((N / 2)), $TOPICS rooms × 1 publisher, closed loop K=$K" "$SA" --inflight "$K" \
    --peer "127.0.0.1:$B" --topics "$TOPICS" --publishers "$TOPICS"
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
# bench CMD PORT SUBSCRIBE-CMD SUBS: redis-benchmark CMD on PORT's channel with SUBS
# subscriber connections; prints requests/s and the node's CPU µs per request.
bench() {
    local cmd=$1 port=$2 subcmd=$3 subs=$4 ch pid
    ch=$(channel_on "$port")
    pid=$(redis-cli -p "$port" INFO server | tr -d '\r' | awk -F: '$1 == "process_id" {print $2}')
    SUBS=()
    for _ in $(seq "$subs"); do
        redis-cli -p "$port" "$subcmd" "$ch" >/dev/null &
        SUBS+=("$!")
    done
    sleep 0.3
    r0=$(ticks "$pid")
    rps=$(timeout 120 redis-benchmark -p "$port" -n 500000 -c 50 -P 16 -q "$cmd" "$ch" "$PAYLOAD" 2>/dev/null |
        tr '\r' '\n' | grep -o '[0-9.]* requests per second' | tail -1 | cut -d' ' -f1)
    r1=$(ticks "$pid")
    us=$(python3 -c "print(f'{($r1 - $r0) / $HZ * 1e6 / 500000:.2f}')")
    echo "${rps:-"(no answer)"} $us"
    # (No bare `wait`: with no subscribers it would wait for redis-server itself.)
    for p in "${SUBS[@]}"; do
        kill "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
}
echo "redis-benchmark ($SIZE-byte payload, 50 clients, -P 16, 500,000 requests), on a channel"
echo "served by the node benchmarked; requests/s and that redis-server's CPU per request:"
echo
PAYLOAD=$(head -c "$SIZE" /dev/zero | tr '\0' x)
CMDS="SPUBLISH"
# Plain PUBLISH on a cluster is broadcast to every node over the cluster bus: not what the
# bridge sends there.
[ "$REDIS_CLUSTER" = 1 ] || CMDS="PUBLISH SPUBLISH"
for cmd in $CMDS; do
    subcmd=SUBSCRIBE
    [ "$cmd" = SPUBLISH ] && subcmd=SSUBSCRIBE
    for subs in 0 2 8; do
        read -r rps us < <(bench "$cmd" "$RPORT" "$subcmd" "$subs")
        echo "- $cmd, $subs subscriber connections: $rps/s; redis-server CPU $us µs per $cmd"
    done
done
echo
# Three at once, each on its own channel: on one server, or one per master of the cluster.
PORTS=("$RPORT" "$RPORT" "$RPORT")
[ "$REDIS_CLUSTER" = 1 ] && PORTS=("${CPORTS[@]}")
for k in 0 1 2; do
    bench SPUBLISH "${PORTS[$k]}" SSUBSCRIBE 2 >"$TMP/par-$k" &
done
wait_par() { for k in 0 1 2; do while [ ! -s "$TMP/par-$k" ]; do sleep 0.2; done; done; }
wait_par
total=$(cat "$TMP"/par-? | awk '{s += $1} END {printf "%.0f", s}')
echo "- 3 × SPUBLISH at once (2 subscribers each, ports ${PORTS[*]}): $total/s in all" \
    "($(cut -d' ' -f1 "$TMP"/par-? | xargs | tr ' ' '+'))"
} >"$OUT"
cat "$OUT"
echo "written to $OUT" >&2
