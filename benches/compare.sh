#!/usr/bin/env bash
# compare.sh: Sockeye against other WebSocket servers, side by side, on the same loads.
#
# ROUNDS rounds; in every round each load is run by every server in turn (A B C, then the
# next load; the server order rotates by one each round), a fresh server process per run,
# pinned to CPU 0 (taskset -c 0), the loadgen pinned to CPU 1. Before each run the noise is
# taken: `chart calibrate` (a fixed CPU loop) timed on CPU 0 and on CPU 1, and the 1-minute
# load average; the loadgen adds the window's steal and other processes' CPU. Each run's
# loadgen JSON is appended, with server/load/round and those figures added, to a JSONL file;
# at the end `chart` turns it into a markdown table (printed: median, best round and spread
# per server and load, noise per round) and an SVG chart next to it. Many short interleaved
# rounds let a noisy stretch of a shared machine hit every server alike; read the paired table
# (Sockeye ÷ each peer within each round, median over rounds) and the medians to rank, the
# best rounds for what each server can do, and the noise table for how much to trust a round.
#
#   benches/compare.sh                 # full run: 7 rounds × 3 s (about 1 h with all servers)
#   benches/compare.sh --quick         # smoke test: 2 rounds, 2 s windows, results in /tmp
#   SERVERS="sockeye-epoll raw" LOADS="echo-100x20 idle-10k" ROUNDS=5 benches/compare.sh
#   chart --in benches/results/compare-X.jsonl --svg x.svg --md x.md   # redraw only
#
# Environment (defaults in brackets):
#   SERVERS    subset of: sockeye-epoll sockeye-io_uring tungstenite fastwebsockets
#              tokio-websockets bun node uws raw                             [all]
#              (node, the ws peer, runs the deflate loads only)
#   LOADS      subset of: echo-100x20 echo-100x1k echo-10x64k echo-500x16k echo-1000x20
#              echo-10kx20 idle-10k idle-100k fanout-10k fanout-10k-4x8 fanout-1k-16t
#              deflate-100x1k deflate-10x64k wss-100x20 wss-500x16k
#              wss-handshake                                                 [all]
#              echo-CxS: C connections × S bytes, closed loop, 1 in flight each;
#              deflate-CxS: the same with `loadgen --deflate` (S bytes of JSON-like text,
#              compressed both ways) against servers with permessage-deflate on: the demo
#              with --deflate (shared compressor, its default), Bun perMessageDeflate: true,
#              Node ws perMessageDeflate: true; the other servers skip them;
#              wss-CxS: echo-CxS over TLS (the demo --tls, Bun tls: {cert, key}; a
#              throwaway ECDSA P-256 certificate made with openssl; the others skip it);
#              wss-handshake: the TLS handshake rate, `loadgen echo --churn` with 16
#              connections (each reset once upgraded and replaced; full handshakes) and
#              `--no-verify` (the client checks no certificate or signature, as h2load
#              does: with them it costs more than the server and sets the rate);
#              fanout-N[-PxK][-Tt]: N subscribers on /chat, P publishers (default 1) with
#              K in flight each (default 1), closed loop; -Tt: T rooms (?room=t{i % T}),
#              publishers spread over them alike (P = T when only -Tt is given)
#   ROUNDS [7]  DURATION [3]  WARMUP [1] (seconds; idle loads hold for DURATION)
#   OUT        the JSONL file [benches/results/compare-DATE.jsonl; --quick: /tmp/...];
#              the .md and .svg go next to it. A full default run (no SERVERS/LOADS/OUT)
#              replaces the older compare-* files in benches/results/.
#   PORT [9440] first port; every run takes the next free one of 20 (9440-9459)
#   NO_BUILD=1  (or --no-build) use the binaries as they are
#   LOADGEN    the load generator to run [$CARGO_TARGET_DIR/release/loadgen]
#   CARGO_TARGET_DIR  honoured [target/]; peers are also looked for in
#              benches/peers/target/release (PEERS_DIR overrides)
#   BUN        the bun binary [benches/peers/bun/.bun/...: what benches/peers/bun/install.sh
#              installs]; BUN=none leaves Bun out
#   NODE       the node binary [node on PATH]; the ws peer needs benches/peers/node/install.sh
#              (node_modules/ws); NODE=none leaves it out
#   UWS        the peer-uws binary [benches/peers/uws/build/peer-uws, built by
#              benches/peers/uws/build.sh from uWebSockets + uSockets trees]; UWS=none leaves it out
#   FANOUT_ARGS extra loadgen flags for the fanout loads
#
# Servers whose binary is missing (Bun not installed, peer-uws not built) are skipped with a
# warning, and so are loads a server cannot run (raw has no idle or fan-out mode) or the
# loadgen lacks (fanout, --topics). The demo's /chat ignored ?room= before it became real
# pub/sub; a demo like that fails fanout-1k-16t with wrong_room errors (shown, not hidden).
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD

ALL_SERVERS="sockeye-epoll sockeye-io_uring tungstenite fastwebsockets tokio-websockets bun node uws raw"
ALL_LOADS="echo-100x20 echo-100x1k echo-10x64k echo-500x16k echo-1000x20 echo-10kx20 idle-10k idle-100k fanout-10k fanout-10k-4x8 fanout-1k-16t deflate-100x1k deflate-10x64k wss-100x20 wss-500x16k wss-handshake"

QUICK=0
NO_BUILD=${NO_BUILD:-0}
for arg in "$@"; do
    case $arg in
        --quick) QUICK=1 ;;
        --no-build) NO_BUILD=1 ;;
        -h | --help)
            sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
            exit 0
            ;;
        *)
            echo "compare.sh: unknown argument $arg (--quick, --no-build, --help)" >&2
            exit 2
            ;;
    esac
done

if ((QUICK)); then
    ROUNDS=${ROUNDS:-2}
    DURATION=${DURATION:-2}
    WARMUP=${WARMUP:-1}
    SETTLE=1
else
    ROUNDS=${ROUNDS:-7}
    DURATION=${DURATION:-3}
    WARMUP=${WARMUP:-1}
    SETTLE=2
fi
PORT_BASE=${PORT:-9440}
PORT=$((PORT_BASE - 1)) # next_port moves on before each run

TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
T=$TARGET/release
LOADGEN=${LOADGEN:-$T/loadgen}
CHART=$T/chart

warn() { echo "compare.sh: warning: $*" >&2; }
die() {
    echo "compare.sh: $*" >&2
    exit 1
}

# ---- build ------------------------------------------------------------------------------------
if ((!NO_BUILD)); then
    echo "== build (release) into $TARGET" >&2
    cargo build --release --example demo -p sockeye
    cargo build --release -p sockeye-benches --bin loadgen --bin rawecho --bin chart
    if [[ " ${SERVERS:-$ALL_SERVERS} " != *" tungstenite "* &&
        " ${SERVERS:-$ALL_SERVERS} " != *" fastwebsockets "* &&
        " ${SERVERS:-$ALL_SERVERS} " != *" tokio-websockets "* ]]; then
        : # no peer selected
    elif [[ -f benches/peers/Cargo.toml ]]; then
        cargo build --release --manifest-path benches/peers/Cargo.toml ||
            warn "peer servers did not build; those that have no binary will be skipped"
    else
        warn "benches/peers/Cargo.toml missing: no peer servers"
    fi
fi
[[ -x $LOADGEN && -x $CHART ]] || die "no $LOADGEN or $CHART (build first, or drop NO_BUILD)"

# ---- servers ----------------------------------------------------------------------------------
# The binary of a peer: CARGO_TARGET_DIR (where our build put it), else the peers' own target/.
peer_bin() {
    local d
    for d in ${PEERS_DIR:+"$PEERS_DIR"} "$T" "$ROOT/benches/peers/target/release"; do
        if [[ -x $d/$1 ]]; then
            echo "$d/$1"
            return
        fi
    done
    echo "$ROOT/benches/peers/target/release/$1" # missing: reported below
}

# Bun: $BUN, else what benches/peers/bun/install.sh put under benches/peers/bun/.bun.
bun_bin() {
    local b
    if [[ -n ${BUN:-} ]]; then
        echo "$BUN"
        return
    fi
    for b in "$ROOT"/benches/peers/bun/.bun/node_modules/@oven/bun-linux-*/bin/bun; do
        if [[ -x $b ]]; then
            echo "$b"
            return
        fi
    done
    echo "$ROOT/benches/peers/bun/.bun/node_modules/@oven/bun-linux-x64/bin/bun" # missing
}
UWS_BIN=${UWS:-$ROOT/benches/peers/uws/build/peer-uws}
# Node: $NODE, else node on PATH; the ws peer also needs its node_modules.
node_bin() {
    if [[ -n ${NODE:-} ]]; then
        echo "$NODE"
    elif [[ -f $ROOT/benches/peers/node/node_modules/ws/package.json ]] && command -v node >/dev/null; then
        command -v node
    else
        echo "$ROOT/benches/peers/node/node_modules/.missing-node-or-ws" # missing
    fi
}

# server_cmd NAME ADDR [LOAD]: the command line that starts NAME on ADDR (for LOAD: the
# deflate loads turn compression on).
server_cmd() {
    local z="" zb=""
    if [[ ${3:-} == deflate-* ]]; then
        z=" --deflate"
        zb=" --deflate"
    elif [[ ${3:-} == wss-* ]]; then
        z=" --tls $PKI/cert.pem $PKI/key.pem"
        zb=$z
    fi
    case $1 in
        sockeye-epoll) echo "$T/examples/demo --addr $2 --workers 1 --backend epoll$z" ;;
        sockeye-io_uring) echo "$T/examples/demo --addr $2 --workers 1 --backend io_uring$z" ;;
        tungstenite | fastwebsockets | tokio-websockets) echo "$(peer_bin "peer-$1") --addr $2" ;;
        bun) echo "$(bun_bin) $ROOT/benches/peers/bun/server.js --addr $2$zb" ;;
        node) echo "$(node_bin) $ROOT/benches/peers/node/server.js --addr $2" ;;
        uws) echo "$UWS_BIN --addr $2" ;;
        raw) echo "$T/rawecho --addr $2" ;;
        *) return 1 ;;
    esac
}

SERVER_LIST=()
for s in ${SERVERS:-$ALL_SERVERS}; do
    cmd=$(server_cmd "$s" 127.0.0.1:0) || {
        warn "unknown server $s (known: $ALL_SERVERS)"
        continue
    }
    bin=${cmd%% *}
    if [[ -x $bin ]]; then
        SERVER_LIST+=("$s")
    elif [[ $s == bun ]]; then
        [[ ${BUN:-} == none ]] ||
            warn "skipping bun: not installed (benches/peers/bun/install.sh installs it; or BUN=/path/to/bun)"
    elif [[ $s == node ]]; then
        [[ ${NODE:-} == none ]] ||
            warn "skipping node: no node on PATH or no benches/peers/node/node_modules/ws (run benches/peers/node/install.sh; or NODE=/path/to/node)"
    elif [[ $s == uws ]]; then
        [[ ${UWS:-} == none ]] ||
            warn "skipping uws: no $bin (build it: benches/peers/uws/build.sh UWEBSOCKETS_DIR USOCKETS_DIR; see benches/peers/README.md)"
    else
        warn "skipping $s: no $bin"
    fi
done
((${#SERVER_LIST[@]})) || die "no server to run"

# ---- loads ------------------------------------------------------------------------------------
HAVE_FANOUT=0
HAVE_TOPICS=0
HAVE_DEFLATE=0
LOADGEN_HELP=$("$LOADGEN" --help 2>&1 || true)
[[ $LOADGEN_HELP == *fanout* ]] && HAVE_FANOUT=1
[[ $LOADGEN_HELP == *--deflate* ]] && HAVE_DEFLATE=1
[[ $LOADGEN_HELP == *--topics* ]] && HAVE_TOPICS=1

# Open files: 100k idle connections need 100k descriptors in the server and in the loadgen.
ulimit -Hn 1048576 2>/dev/null || true
ulimit -n 1048576 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE=$(ulimit -n)
if [[ $NOFILE != unlimited ]] && ((NOFILE < 1048576)); then
    warn "RLIMIT_NOFILE is only $NOFILE (raising the hard limit needs CAP_SYS_RESOURCE)"
fi

# A count with an optional k: 10k -> 10000.
count() {
    local c=${1/k/*1000}
    echo $((c))
}

# Connections a load holds open: idle-100k -> 100000, echo-500x16k -> 500, echo-10kx20 ->
# 10000, fanout-10k-4x8 -> 10004 (the publishers too).
load_conns() {
    local c=${1#*-} extra=0
    c=${c%%-*}
    c=${c%%x*}
    if [[ $1 == fanout-* ]]; then
        read -r _ p _ _ <<<"$(fanout_shape "$1")"
        extra=$p
    fi
    echo $(($(count "$c") + extra))
}

# fanout_shape LOAD: "SUBSCRIBERS PUBLISHERS INFLIGHT TOPICS" of fanout-N[-PxK][-Tt]
# (PUBLISHERS 1, or T with topics; INFLIGHT 1; TOPICS 0 = one room); fails on other shapes.
fanout_shape() {
    local rest=${1#fanout-} part n p="" k=1 t=0
    n=${rest%%-*}
    [[ $n =~ ^[0-9]+k?$ ]] || return 1
    rest=${rest#"$n"}
    while [[ -n $rest ]]; do
        rest=${rest#-}
        part=${rest%%-*}
        rest=${rest#"$part"}
        if [[ $part =~ ^([0-9]+)x([0-9]+)$ ]]; then
            p=${BASH_REMATCH[1]} k=${BASH_REMATCH[2]}
        elif [[ $part =~ ^([0-9]+)t$ ]]; then
            t=${BASH_REMATCH[1]}
        else
            return 1
        fi
    done
    if [[ -z $p ]]; then
        p=1
        ((t > 0)) && p=$t
    fi
    echo "$(count "$n") $p $k $t"
}

# A throwaway CA and a certificate for 127.0.0.1 (ECDSA P-256), for the wss loads.
PKI=""
if [[ " ${LOADS:-$ALL_LOADS} " == *" wss-"* ]] && command -v openssl >/dev/null; then
    PKI=$(mktemp -d "${TMPDIR:-/tmp}/sockeye-compare-pki.XXXXXX")
    if ! (
        cd "$PKI" &&
            openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
                -keyout ca.key -out ca.pem -days 2 -subj "/CN=compare.sh CA" &&
            openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
                -keyout key.pem -out srv.csr -subj "/CN=127.0.0.1" &&
            printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >ext &&
            openssl x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
                -out cert.pem -days 2 -extfile ext
    ) >/dev/null 2>&1; then
        warn "openssl could not make a test certificate: no wss loads"
        rm -rf "$PKI"
        PKI=""
    fi
fi

LOAD_LIST=()
for l in ${LOADS:-$ALL_LOADS}; do
    case $l in
        echo-*)
            if [[ ! $l =~ ^echo-[0-9]+k?x[0-9]+k?$ ]]; then
                warn "unknown load $l (echo-CxS; known: $ALL_LOADS)"
                continue
            fi
            ;;
        deflate-*)
            if [[ ! $l =~ ^deflate-[0-9]+k?x[0-9]+k?$ ]]; then
                warn "unknown load $l (deflate-CxS; known: $ALL_LOADS)"
                continue
            fi
            if ((!HAVE_DEFLATE)); then
                warn "skipping $l: this loadgen has no --deflate"
                continue
            fi
            ;;
        wss-*)
            if [[ ! $l =~ ^wss-([0-9]+k?x[0-9]+k?|handshake)$ ]]; then
                warn "unknown load $l (wss-CxS or wss-handshake; known: $ALL_LOADS)"
                continue
            fi
            if [[ -z $PKI ]]; then
                warn "skipping $l: no openssl to make a test certificate"
                continue
            fi
            ;;
        idle-*)
            if [[ ! $l =~ ^idle-[0-9]+k?$ ]]; then
                warn "unknown load $l (idle-N; known: $ALL_LOADS)"
                continue
            fi
            ;;
        fanout-*)
            if ! shape=$(fanout_shape "$l"); then
                warn "unknown load $l (fanout-N[-PxK][-Tt]; known: $ALL_LOADS)"
                continue
            fi
            if ((!HAVE_FANOUT)); then
                warn "skipping $l: this loadgen has no fanout mode"
                continue
            fi
            read -r _ _ _ topics <<<"$shape"
            if ((topics > 0 && !HAVE_TOPICS)); then
                warn "skipping $l: this loadgen has no --topics"
                continue
            fi
            ;;
        *)
            warn "unknown load $l (known: $ALL_LOADS)"
            continue
            ;;
    esac
    if [[ $NOFILE != unlimited ]] && (($(load_conns "$l") + 200 > NOFILE)); then
        warn "skipping $l: needs $(load_conns "$l") descriptors per process, RLIMIT_NOFILE is $NOFILE"
        continue
    fi
    LOAD_LIST+=("$l")
done
((${#LOAD_LIST[@]})) || die "no load to run"

# load_args LOAD URL-HOST:PORT: the loadgen arguments for LOAD (empty: not for this server).
load_args() {
    local load=$1 server=$2 hp=$3 c s z=""
    # Node ws is here for compression only; the others have no permessage-deflate peer route.
    if [[ $load == deflate-* ]]; then
        case $server in sockeye-* | bun | node) ;; *) return 0 ;; esac
        z="--deflate"
    elif [[ $load == wss-* ]]; then
        case $server in sockeye-* | bun) ;; *) return 0 ;; esac
    elif [[ $server == node ]]; then
        return 0
    fi
    case $load in
        wss-handshake)
            echo "echo --churn --url wss://$hp/echo --no-verify --connections 16 --duration $DURATION --warmup $WARMUP"
            ;;
        wss-*)
            c=${load#*-}
            s=${c#*x}
            c=$(count "${c%x*}")
            s=${s/k/*1024}
            echo "echo --url wss://$hp/echo --ca $PKI/ca.pem --connections $c --size $((s)) --duration $DURATION --warmup $WARMUP"
            ;;
        echo-* | deflate-*)
            c=${load#*-}
            s=${c#*x}
            c=$(count "${c%x*}")
            s=${s/k/*1024}
            s=$((s))
            local src=""
            # 10,000+ connections: source addresses rotate, as in the idle and fan-out modes,
            # so that no run waits on another's TIME_WAIT ports.
            ((c >= 10000)) && src="--src-addrs 250"
            if [[ $server == raw ]]; then
                echo "raw --url tcp://$hp --connections $c --size $s --duration $DURATION --warmup $WARMUP $src"
            else
                echo "echo --url ws://$hp/echo --connections $c --size $s --duration $DURATION --warmup $WARMUP $src $z"
            fi
            ;;
        idle-*)
            [[ $server == raw ]] && return 0
            c=${load#idle-}
            c=${c/k/*1000}
            echo "idle --url ws://$hp/echo --connections $((c)) --hold $DURATION --settle $SETTLE"
            ;;
        fanout-*)
            [[ $server == raw ]] && return 0
            local n p k t topics=""
            read -r n p k t <<<"$(fanout_shape "$load")"
            ((t > 0)) && topics="--topics $t"
            echo "fanout --url ws://$hp/chat --connections $n --publishers $p --inflight $k $topics --duration $DURATION --warmup $WARMUP ${FANOUT_ARGS:-}"
            ;;
    esac
}

# ---- output -----------------------------------------------------------------------------------
STAMP=$(date +%Y-%m-%d-%H%M%S)
PRUNE=0
if [[ -z ${OUT:-} ]]; then
    if ((QUICK)); then
        mkdir -p "${TMPDIR:-/tmp}/sockeye-compare"
        OUT=${TMPDIR:-/tmp}/sockeye-compare/quick-$STAMP.jsonl
    else
        mkdir -p benches/results
        OUT=benches/results/compare-$STAMP.jsonl
        [[ -z ${SERVERS:-} && -z ${LOADS:-} ]] && PRUNE=1
    fi
fi
mkdir -p "$(dirname "$OUT")"
SVG=${OUT%.jsonl}.svg
MD=${OUT%.jsonl}.md

WORK=$(mktemp -d "${TMPDIR:-/tmp}/sockeye-compare.XXXXXX")
SRV_PID=""
LG_PID=""
stop_server() {
    [[ -n $SRV_PID ]] || return 0
    kill "$SRV_PID" 2>/dev/null || true
    for _ in $(seq 50); do
        kill -0 "$SRV_PID" 2>/dev/null || break
        sleep 0.1
    done
    kill -9 "$SRV_PID" 2>/dev/null || true
    wait "$SRV_PID" 2>/dev/null || true
    SRV_PID=""
}
cleanup() {
    if [[ -n $LG_PID ]]; then kill "$LG_PID" 2>/dev/null || true; fi
    stop_server
    rm -rf "$WORK"
    if [[ -n $PKI ]]; then rm -rf "$PKI"; fi
}
trap cleanup EXIT
trap 'echo "compare.sh: interrupted" >&2; exit 130' INT TERM

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# A port nobody listens on, so that "the port accepts" can only mean our server is up.
next_port() {
    local _
    for _ in $(seq 20); do
        PORT=$((PORT + 1))
        ((PORT < PORT_BASE + 20)) || PORT=$PORT_BASE
        port_open "$PORT" || return 0
    done
    die "no free port in $PORT_BASE-$((PORT_BASE + 19))"
}

# ---- run --------------------------------------------------------------------------------------
GIT_REV=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD 2>/dev/null || GIT_REV=$GIT_REV-dirty
echo "== ${ROUNDS} round(s) × ${#LOAD_LIST[@]} load(s) × ${#SERVER_LIST[@]} server(s): ${SERVER_LIST[*]}" >&2
echo "== loads: ${LOAD_LIST[*]}; window ${DURATION} s, warmup ${WARMUP} s; results: $OUT" >&2

# Noise figures taken just before a run: a fixed CPU loop timed on the server's core and on
# the loadgen's (ms; slower than usual = someone else is on that core, or the host steals it)
# and the 1-minute load average.
CALIB="" CALIB_LG="" LOADAVG=""
take_noise() {
    CALIB=$(taskset -c 0 "$CHART" calibrate 2>/dev/null || echo null)
    CALIB_LG=$(taskset -c 1 "$CHART" calibrate 2>/dev/null || echo null)
    read -r LOADAVG _ </proc/loadavg || LOADAVG=null
}

run_one() { # SERVER LOAD ROUND
    local server=$1 load=$2 round=$3 args cmd rc
    args=$(load_args "$load" "$server" "127.0.0.1:PORT")
    [[ -n $args ]] || return 0 # raw: no idle or fan-out mode
    next_port
    args=${args//PORT/$PORT}
    cmd=$(server_cmd "$server" "127.0.0.1:$PORT" "$load")
    take_noise
    # shellcheck disable=SC2086 # the command lines are word lists on purpose
    taskset -c 0 $cmd >"$WORK/server.log" 2>&1 &
    SRV_PID=$!
    local waited=0
    until port_open "$PORT"; do
        if ! kill -0 "$SRV_PID" 2>/dev/null || ((waited > 100)); then
            warn "$server did not start on port $PORT:"
            tail -5 "$WORK/server.log" >&2
            stop_server
            "$CHART" append --to "$OUT" --from /nonexistent server="$server" load="$load" \
                round="$round" port="$PORT" exit=-1 failed=true calib_ms="$CALIB" \
                calib_loadgen_ms="$CALIB_LG" loadavg="$LOADAVG"
            return 0
        fi
        sleep 0.1
        waited=$((waited + 1))
    done
    rm -f "$WORK/run.json"
    # Generous limit: setup of 100k connections plus the window plus closing.
    local limit=$((WARMUP + DURATION + 90))
    rc=0
    # shellcheck disable=SC2086
    timeout -k 5 "$limit" taskset -c 1 "$LOADGEN" $args --server-pid "$SRV_PID" \
        --server-cpu 0 --loadgen-cpu 1 --quiet --json "$WORK/run.json" &
    LG_PID=$!
    wait "$LG_PID" || rc=$?
    LG_PID=""
    stop_server
    "$CHART" append --to "$OUT" --from "$WORK/run.json" server="$server" load="$load" \
        round="$round" port="$PORT" exit="$rc" git="$GIT_REV" time="$(date +%s)" \
        calib_ms="$CALIB" calib_loadgen_ms="$CALIB_LG" loadavg="$LOADAVG"
}

NS=${#SERVER_LIST[@]}
for ((round = 1; round <= ROUNDS; round++)); do
    # Rotate the server order by one each round, so that no server always runs first (or
    # right after a given other one) on a load.
    order=()
    for ((i = 0; i < NS; i++)); do
        order+=("${SERVER_LIST[$(((i + round - 1) % NS))]}")
    done
    echo "== round $round/$ROUNDS: ${order[*]}" >&2
    for load in "${LOAD_LIST[@]}"; do
        for server in "${order[@]}"; do
            run_one "$server" "$load" "$round"
        done
    done
done

[[ -s $OUT ]] || die "no results"
"$CHART" --in "$OUT" --svg "$SVG" --md "$MD"
if ((PRUNE)); then
    shopt -s nullglob
    for f in benches/results/compare-*.{jsonl,svg,md}; do
        case $f in "$OUT" | "$SVG" | "$MD") ;; *) rm -v "$f" >&2 ;; esac
    done
fi
echo
cat "$MD"
echo "results: $OUT"
echo "table:   $MD"
echo "chart:   $SVG"
