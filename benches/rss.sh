#!/usr/bin/env bash
# The memory a 1-worker demo holds after large and small echoes:
#   benches/rss.sh NAME [--bin=DEMO] DEMO-FLAGS...
# runs the demo on CPU 0, then 2 s each of 10 x 64 KiB, 500 x 16 KiB and 1,000 x 20 B echoes
# from the loadgen on CPU 1, and prints its VmRSS fresh and after, with the resident size of
# every mapping of 256 KiB or more (the io_uring buffer ring, malloc arenas, the io_uring
# rings as anon_inode:[io_uring]). Binaries from $T, else $CARGO_TARGET_DIR/release, else
# target/release (build the demo and loadgen with --release first). Port $PORT (9467).
set -euo pipefail
T=${T:-${CARGO_TARGET_DIR:-target}/release}
PORT=${PORT:-9467}
name=$1
shift
bin=$T/examples/demo
case ${1:-} in --bin=*) bin=${1#--bin=}; shift ;; esac
# An io_uring demo's listener can outlive its process for a moment.
while ss -ltn "sport = :$PORT" | grep -q LISTEN; do sleep 0.2; done
taskset -c 0 "$bin" --addr 127.0.0.1:$PORT --workers 1 "$@" 2>/dev/null &
pid=$!
sleep 0.5
kill -0 $pid 2>/dev/null || { echo "$name: the demo did not start" >&2; exit 1; }
rss0=$(awk '/VmRSS/{print $2}' /proc/$pid/status)
for l in "10 65536" "500 16384" "1000 20"; do
    set -- $l
    taskset -c 1 "$T/loadgen" echo --url ws://127.0.0.1:$PORT/echo --connections "$1" \
        --size "$2" --duration 2 --warmup 0 --quiet >/dev/null 2>&1 || true
done
sleep 1
rss1=$(awk '/VmRSS/{print $2}' /proc/$pid/status)
big=$(awk '/^[0-9a-f]+-[0-9a-f]+ /{m=$0} /^Size:/{sz=$2}
    /^Rss:/{ if (sz >= 256) printf "%s:%dK/%dK ", (split(m, f, " ") >= 6 ? f[6] : "anon"), $2, sz }' \
    /proc/$pid/smaps)
echo "$name fresh=${rss0}K after=${rss1}K mappings (resident/size): $big"
kill $pid
wait $pid 2>/dev/null || true
