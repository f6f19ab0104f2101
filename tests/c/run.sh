#!/usr/bin/env bash
# Tests of the C ABI through its examples, the way a C programmer uses it:
#
#   tests/c/run.sh
#
# 1. installs libsockeye into a temp prefix (ffi/install.sh) and builds, against the installed
#    library via pkg-config, with the link line docs/c-api.md gives (`-pthread` and
#    `pkg-config --cflags --libs sockeye`): examples/c/echo.c, examples/c/chat.c,
#    examples/c/rooms.c and examples/cpp/chat.cpp with -fsanitize=address,undefined, echo.c
#    plain (for valgrind) and echo.c linked statically, tests/c/config.c and tests/c/wrapper.cpp
#    with the sanitizers, tests/c/pubsub.c with the sanitizers and plain (for valgrind), and
#    tests/c/tls.c with the sanitizers;
# 2. runs config.c: a second server on a taken port gets SOCKEYE_ERR_ADDRESS_IN_USE (unless
#    both set share_port), out-of-range fields get SOCKEYE_ERR_INVALID_ARGUMENT;
# 3. runs pubsub.c (its own server and WebSocket clients): a publish from another pthread
#    reaches every subscriber, publishes with and without the sender, unsubscribe, counts and
#    stats, a too-long topic gets SOCKEYE_ERR_TOPIC_TOO_LONG; with ASan on every backend in
#    CABI_BACKENDS, and on epoll under valgrind;
# 3b. runs tls.c on every backend in CABI_BACKENDS, with a throwaway CA and two certificates
#    made by tests/tls/make-certs.sh (openssl) in this run's temp dir and drive.py's `wss` mode
#    as its client: a wss:// server from tls_cert_file/tls_key_file, sockeye_server_reload_tls
#    with a second certificate (a new client sees it) and with bad files (SOCKEYE_ERR_TLS,
#    sockeye_last_error() naming the problem), a missing key file at sockeye_server_new;
# 4. starts each server on a free port (port 0; the server prints the one it got), drives it
#    with Python `websockets` and a raw socket (tests/c/drive.py), stops it with SIGINT or
#    SIGTERM, and requires exit status 0 and no sanitizer report on stderr:
#    - ASan echo on every backend in CABI_BACKENDS (default "epoll io_uring"; io_uring is
#      skipped where the kernel lacks it), ASan chat in C and in C++ (pub/sub; 2 workers, 3
#      clients), ASan rooms (2 workers: 404/400/403, subprotocol choice, fan-out through posts
#      to every worker, 1003, GET /) on every backend, the static echo;
#    - echo under `valgrind --leak-check=full --error-exitcode=1` (epoll: valgrind does not
#      know io_uring), with no "definitely lost" bytes;
#    - examples/python/echo.py (ctypes) against the installed libsockeye.so.
#
# Installs what is missing (gcc, g++, valgrind, pkg-config, python3-venv via apt; a venv with
# `websockets` at tests/c/.venv). Honours CARGO_TARGET_DIR. Last line: `c-abi: N passed, N
# failed`; exits non-zero if anything failed.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
VENV="$HERE/.venv"
PY="$VENV/bin/python"
REQUIREMENTS="$ROOT/tests/e2e/requirements.txt" # one pin of `websockets` for every test
BACKENDS="${CABI_BACKENDS:-epoll io_uring}"

log() { printf '==> %s\n' "$*"; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# ---------------------------------------------------------------------------------- install --
pkgs=()
command -v gcc >/dev/null 2>&1 || pkgs+=(gcc)
command -v g++ >/dev/null 2>&1 || pkgs+=(g++)
command -v valgrind >/dev/null 2>&1 || pkgs+=(valgrind)
command -v pkg-config >/dev/null 2>&1 || pkgs+=(pkg-config)
command -v openssl >/dev/null 2>&1 || pkgs+=(openssl)
/usr/bin/python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || pkgs+=(python3-venv)
if [ ${#pkgs[@]} -gt 0 ]; then
    log "apt-get install ${pkgs[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}"
fi
if [ ! -x "$PY" ] || ! cmp -s "$REQUIREMENTS" "$VENV/.installed-requirements.txt"; then
    log "python venv at $VENV"
    /usr/bin/python3 -m venv "$VENV"
    "$PY" -m pip install -q --disable-pip-version-check -r "$REQUIREMENTS"
    cp "$REQUIREMENTS" "$VENV/.installed-requirements.txt"
fi

# ------------------------------------------------------------------------------ bookkeeping --
WORK="$(mktemp -d /tmp/sockeye-cabi.XXXXXX)"
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

passed=0
failed=0
failures=()
pass() { passed=$((passed + 1)); echo "--- ok: $1"; }
fail() { failed=$((failed + 1)); failures+=("$1"); echo "--- FAILED: $1"; }

# ---------------------------------------------------------------------------- install + build --
PREFIX="$WORK/prefix"
log "ffi/install.sh $PREFIX"
bash "$ROOT/ffi/install.sh" "$PREFIX"
export PKG_CONFIG_PATH="$PREFIX/lib/pkgconfig"
export LD_LIBRARY_PATH="$PREFIX/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export ASAN_OPTIONS="detect_leaks=1"
export UBSAN_OPTIONS="print_stacktrace=1"
SAN=(-fsanitize=address,undefined -fno-omit-frame-pointer)
read -r -a PC <<<"$(pkg-config --cflags --libs sockeye)"
read -r -a PC_STATIC_LIBS <<<"$(pkg-config --static --libs-only-l sockeye | sed 's/-lsockeye//')"

build() {
    local name=$1; shift
    log "build $name: $*"
    if "$@" >"$WORK/$name.build.log" 2>&1; then
        pass "build $name"
    else
        cat "$WORK/$name.build.log"
        fail "build $name"
    fi
}
build echo-asan cc -std=c11 -Wall -Wextra -Werror -g -pthread "${SAN[@]}" -o "$WORK/echo-asan" "$ROOT/examples/c/echo.c" "${PC[@]}"
build chat-c-asan cc -std=c11 -Wall -Wextra -Werror -g -pthread "${SAN[@]}" -o "$WORK/chat-c-asan" "$ROOT/examples/c/chat.c" "${PC[@]}"
build rooms-asan cc -std=c11 -Wall -Wextra -Werror -g -pthread "${SAN[@]}" -o "$WORK/rooms-asan" "$ROOT/examples/c/rooms.c" "${PC[@]}"
build chat-asan c++ -std=c++17 -Wall -Wextra -Werror -g -pthread "${SAN[@]}" -o "$WORK/chat-asan" "$ROOT/examples/cpp/chat.cpp" "${PC[@]}"
build config-asan cc -std=c11 -Wall -Wextra -Werror -g -pthread "${SAN[@]}" -o "$WORK/config-asan" "$HERE/config.c" "${PC[@]}"
build wrapper-asan c++ -std=c++17 -Wall -Wextra -Werror -g -pthread "${SAN[@]}" -o "$WORK/wrapper-asan" "$HERE/wrapper.cpp" "${PC[@]}"
build pubsub-asan cc -std=c11 -Wall -Wextra -Werror -g -pthread "${SAN[@]}" -o "$WORK/pubsub-asan" "$HERE/pubsub.c" "${PC[@]}"
build tls-asan cc -std=c11 -Wall -Wextra -Werror -g -pthread "${SAN[@]}" -o "$WORK/tls-asan" "$HERE/tls.c" "${PC[@]}"
build pubsub cc -std=c11 -Wall -Wextra -Werror -O1 -g -pthread -o "$WORK/pubsub" "$HERE/pubsub.c" "${PC[@]}"
build echo cc -std=c11 -Wall -Wextra -Werror -O1 -g -pthread -o "$WORK/echo" "$ROOT/examples/c/echo.c" "${PC[@]}"
build echo-static cc -std=c11 -Wall -Wextra -Werror -O1 -pthread -o "$WORK/echo-static" "$ROOT/examples/c/echo.c" \
    $(pkg-config --cflags sockeye) "$PREFIX/lib/libsockeye.a" "${PC_STATIC_LIBS[@]}"
if [ -x "$WORK/echo-static" ] && readelf -d "$WORK/echo-static" | grep -q 'NEEDED.*libsockeye'; then
    fail "echo-static is not static (it needs libsockeye.so)"
fi

# --------------------------------------------------------------------------------- servers --
SERVER_PID=""
SERVER_PORT=""
# start NAME CMD...: starts a server in the background, waits for its "listening on" line.
# Returns 0 when listening, 2 when it exited saying the backend is unavailable, 1 otherwise.
start() {
    local name=$1; shift
    : >"$WORK/$name.out"; : >"$WORK/$name.err"
    "$@" >"$WORK/$name.out" 2>"$WORK/$name.err" &
    SERVER_PID=$!
    PIDS+=("$SERVER_PID")
    local _
    for _ in $(seq 600); do
        SERVER_PORT="$(sed -n 's|^listening on ws://127\.0\.0\.1:\([0-9]*\)/.*|\1|p' "$WORK/$name.out")"
        [ -n "$SERVER_PORT" ] && return 0
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then
            wait "$SERVER_PID" 2>/dev/null || true
            grep -q "not available" "$WORK/$name.err" && return 2
            echo "$name exited before listening:"; cat "$WORK/$name.out" "$WORK/$name.err"
            return 1
        fi
        sleep 0.1
    done
    echo "$name did not start listening in 60 s"; cat "$WORK/$name.err"
    return 1
}

# stop NAME SIGNAL: signals the server, waits (30 s at most) for it to exit, checks status 0.
stop() {
    local name=$1 sig=$2 rc=0 _
    kill "-$sig" "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 300); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$SERVER_PID" 2>/dev/null; then
        echo "$name did not exit within 30 s of SIG$sig"
        kill -KILL "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
        return 1
    fi
    wait "$SERVER_PID" || rc=$?
    if [ "$rc" -ne 0 ]; then
        echo "$name exited with status $rc after SIG$sig"
        return 1
    fi
    grep -q '^stopped' "$WORK/$name.out" || { echo "$name did not print 'stopped'"; return 1; }
}

# clean_stderr NAME: no sanitizer report.
clean_stderr() {
    if grep -qE 'ERROR: AddressSanitizer|ERROR: LeakSanitizer|runtime error|SUMMARY: UndefinedBehaviorSanitizer' "$WORK/$1.err"; then
        echo "$1: sanitizer report:"; cat "$WORK/$1.err"
        return 1
    fi
}

# scenario NAME MODE PATH SIGNAL CMD...: start, drive, stop, check.
scenario() {
    local name=$1 mode=$2 path=$3 sig=$4; shift 4
    log "$name: $*"
    local st=0
    start "$name" "$@" || st=$?
    if [ "$st" -eq 2 ]; then
        echo "--- skipped: $name (backend not available on this kernel)"
        return 0
    fi
    if [ "$st" -ne 0 ]; then fail "$name"; return 0; fi
    local ok=1
    "$PY" "$HERE/drive.py" "$mode" "ws://127.0.0.1:$SERVER_PORT$path" || ok=0
    stop "$name" "$sig" || ok=0
    clean_stderr "$name" || ok=0
    if [ "$ok" -eq 1 ]; then pass "$name"; else
        echo "stderr of $name:"; tail -50 "$WORK/$name.err"; fail "$name"
    fi
}

if [ -x "$WORK/wrapper-asan" ]; then
    log "wrapper-asan: the C++ wrapper's posts, workers and stats"
    if "$WORK/wrapper-asan" >"$WORK/wrapper-asan.out" 2>"$WORK/wrapper-asan.err" && clean_stderr wrapper-asan; then
        cat "$WORK/wrapper-asan.out"
        pass "wrapper-asan"
    else
        cat "$WORK/wrapper-asan.out" "$WORK/wrapper-asan.err"
        fail "wrapper-asan"
    fi
fi
if [ -x "$WORK/config-asan" ]; then
    log "config-asan: a taken port, a shared one, out-of-range fields"
    if "$WORK/config-asan" >"$WORK/config-asan.out" 2>"$WORK/config-asan.err" && clean_stderr config-asan; then
        cat "$WORK/config-asan.out"
        pass "config-asan"
    else
        cat "$WORK/config-asan.out" "$WORK/config-asan.err"
        fail "config-asan"
    fi
fi

# selftest NAME CMD...: runs a test program that checks itself (exit 0: passed; 77: skipped,
# the backend is not available), within 300 s, with no sanitizer report on stderr.
selftest() {
    local name=$1; shift
    log "$name: $*"
    local rc=0
    timeout 300 "$@" >"$WORK/$name.out" 2>"$WORK/$name.err" || rc=$?
    if [ "$rc" -eq 77 ]; then
        echo "--- skipped: $name (backend not available on this kernel)"
        return 0
    fi
    if [ "$rc" -eq 0 ] && clean_stderr "$name"; then
        grep -v '^ok ' "$WORK/$name.out" || true
        pass "$name"
    else
        echo "$name exited with status $rc:"
        cat "$WORK/$name.out"; tail -50 "$WORK/$name.err"
        fail "$name"
    fi
}

if [ -x "$WORK/pubsub-asan" ]; then
    for b in $BACKENDS; do
        selftest "pubsub-asan-$b" env SOCKEYE_BACKEND="$b" "$WORK/pubsub-asan"
    done
fi
if [ -x "$WORK/tls-asan" ]; then
    mkdir -p "$WORK/tls"
    if bash "$ROOT/tests/tls/make-certs.sh" "$WORK/tls"; then
        for b in $BACKENDS; do
            selftest "tls-asan-$b" env SOCKEYE_BACKEND="$b" "$WORK/tls-asan" "$WORK/tls" \
                "$PY" "$HERE/drive.py" wss
        done
    else
        fail "tls: tests/tls/make-certs.sh"
    fi
fi
if [ -x "$WORK/pubsub" ]; then
    selftest pubsub-valgrind env SOCKEYE_BACKEND=epoll \
        valgrind --leak-check=full --error-exitcode=1 "$WORK/pubsub"
    if [ -f "$WORK/pubsub-valgrind.err" ]; then
        if grep -qE 'definitely lost: [1-9]' "$WORK/pubsub-valgrind.err"; then
            grep -A3 'definitely lost' "$WORK/pubsub-valgrind.err"
            fail "valgrind pubsub: memory definitely lost"
        elif grep -qE 'All heap blocks were freed|definitely lost: 0 bytes' "$WORK/pubsub-valgrind.err"; then
            pass "valgrind pubsub: nothing definitely lost"
        else
            tail -30 "$WORK/pubsub-valgrind.err"
            fail "valgrind pubsub: no heap summary"
        fi
    fi
fi

if [ -x "$WORK/echo-asan" ]; then
    for b in $BACKENDS; do
        scenario "echo-asan-$b" echo /echo INT env SOCKEYE_BACKEND="$b" "$WORK/echo-asan" 0 2
    done
fi
if [ -x "$WORK/rooms-asan" ]; then
    for b in $BACKENDS; do
        scenario "rooms-asan-$b" rooms / INT env SOCKEYE_BACKEND="$b" "$WORK/rooms-asan" 0 2
    done
fi
if [ -x "$WORK/chat-asan" ]; then
    for b in $BACKENDS; do
        scenario "chat-asan-$b" chat-http /chat TERM env SOCKEYE_BACKEND="$b" "$WORK/chat-asan" 0 2
    done
fi
if [ -x "$WORK/chat-c-asan" ]; then
    for b in $BACKENDS; do
        scenario "chat-c-asan-$b" chat /chat INT env SOCKEYE_BACKEND="$b" "$WORK/chat-c-asan" 0 2
    done
fi
if [ -x "$WORK/echo-static" ]; then
    scenario echo-static echo /echo TERM "$WORK/echo-static" 0 2
fi
if [ -x "$WORK/echo" ]; then
    scenario echo-valgrind echo /echo INT env SOCKEYE_BACKEND=epoll \
        valgrind --leak-check=full --error-exitcode=1 "$WORK/echo" 0 2
    if [ -f "$WORK/echo-valgrind.err" ]; then
        if grep -qE 'definitely lost: [1-9]' "$WORK/echo-valgrind.err"; then
            grep -A3 'definitely lost' "$WORK/echo-valgrind.err"
            fail "valgrind: memory definitely lost"
        elif grep -qE 'All heap blocks were freed|definitely lost: 0 bytes' "$WORK/echo-valgrind.err"; then
            pass "valgrind: nothing definitely lost"
        else
            tail -30 "$WORK/echo-valgrind.err"
            fail "valgrind: no heap summary"
        fi
    fi
fi
scenario python-echo echo /echo TERM env SOCKEYE_LIB="$PREFIX/lib/libsockeye.so" \
    "$PY" "$ROOT/examples/python/echo.py" 0 2

echo
[ "$failed" -eq 0 ] || echo "failed: ${failures[*]}"
echo "c-abi: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
