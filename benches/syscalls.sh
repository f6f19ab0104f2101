#!/usr/bin/env bash
# syscalls.sh NAME LOADGEN-ARGS...: system calls per message of every server under one echo load.
#
#   benches/syscalls.sh 100x20 --connections 100 --size 20
#
# For each server (the demo on both backends, uWebSockets and Bun when built/installed, the
# three Rust peers, rawecho; SERVERS="..." picks some): the server pinned to
# CPU 0, `loadgen echo|raw` on CPU 1 for a 6 s window; `perf stat -e raw_syscalls:sys_enter`
# counts the server's system calls over 3 s in the middle, divided by 3 s of the loadgen's
# msg/s (perf's overhead slows the server while attached, so this overstates every figure by
# ~20 %; compare servers, not absolutes), then `strace -c -f` for 1.5 s names the calls.
# Needs perf and strace; binaries from $CARGO_TARGET_DIR/release (or target/release), peers
# built into the same directory (benches/compare.sh builds everything).
cd "$(dirname "$0")/.."
T=${CARGO_TARGET_DIR:-target}/release
PORT=9466
name=$1; shift
# UWS=none / BUN=none leave them out, as in compare.sh; install.sh picks the Bun build the CPU
# takes (x64, x64-baseline, aarch64).
UWS_BIN=${UWS:-benches/peers/uws/build/peer-uws}
BUN_BIN=${BUN:-$(ls benches/peers/bun/.bun/node_modules/@oven/bun-linux-*/bin/bun 2>/dev/null | head -n 1)}
for srv in ${SERVERS:-sockeye-epoll sockeye-io_uring uws bun tungstenite fastwebsockets tokio-websockets raw}; do
  case $srv in
    uws) [ "$UWS_BIN" = none ] && continue
       [ -x "$UWS_BIN" ] || { echo "uws: no $UWS_BIN (benches/peers/uws/build.sh), skipped" >&2; continue; }
       cmd="$UWS_BIN --addr 127.0.0.1:$PORT"; url=ws://127.0.0.1:$PORT/echo; mode=echo ;;
    bun) [ "$BUN_BIN" = none ] && continue
       [ -x "$BUN_BIN" ] || { echo "bun: no $BUN_BIN (benches/peers/bun/install.sh), skipped" >&2; continue; }
       cmd="$BUN_BIN benches/peers/bun/server.js --addr 127.0.0.1:$PORT"; url=ws://127.0.0.1:$PORT/echo; mode=echo ;;
    sockeye-epoll) cmd="$T/examples/demo --addr 127.0.0.1:$PORT --workers 1 --backend epoll"; url=ws://127.0.0.1:$PORT/echo; mode=echo ;;
    sockeye-io_uring) cmd="$T/examples/demo --addr 127.0.0.1:$PORT --workers 1 --backend io_uring"; url=ws://127.0.0.1:$PORT/echo; mode=echo ;;
    raw) cmd="$T/rawecho --addr 127.0.0.1:$PORT"; url=tcp://127.0.0.1:$PORT; mode=raw ;;
    *) bin=$T/peer-$srv; [ -x "$bin" ] || bin=benches/peers/target/release/peer-$srv
       [ -x "$bin" ] || { echo "$srv: no binary, skipped" >&2; continue; }
       cmd="$bin --addr 127.0.0.1:$PORT"; url=ws://127.0.0.1:$PORT/echo; mode=echo ;;
  esac
  taskset -c 0 $cmd 2>/dev/null & SRV=$!
  for i in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.1; done
  taskset -c 1 $T/loadgen $mode --url $url "$@" --duration 6 --warmup 1 --quiet --json /tmp/sys-$srv.json & LG=$!
  sleep 2.5
  perf stat -x, -e raw_syscalls:sys_enter -p $SRV -o /tmp/sys-$srv.perf -- sleep 3 >/dev/null 2>&1
  timeout 5 strace -c -f -p $SRV -o /tmp/sys-$srv.strace >/dev/null 2>&1 &
  ST=$!; sleep 1.5; kill -INT $ST 2>/dev/null; wait $ST 2>/dev/null
  wait $LG; kill $SRV; wait $SRV 2>/dev/null
  n=$(grep sys_enter /tmp/sys-$srv.perf | cut -d, -f1)
  rate=$(python3 -c "import json;print(json.load(open('/tmp/sys-$srv.json'))['messages_per_s'])")
  top=$(grep -E '^ +[0-9]' /tmp/sys-$srv.strace | sort -k4 -n -r | head -4 | awk '{printf "%s %s; ", $NF, $4}')
  python3 -c "print('$name', '$srv', round($n/($rate*3),3), 'syscalls/msg;', 'strace calls:', '$top')"
done
