#!/usr/bin/env bash
# End-to-end tests of the sockeye demo server (engine/examples/demo.rs) against real clients:
# Python `websockets`, Node `ws`, nginx as a reverse proxy, and headless Chromium.
#
#   tests/e2e/run.sh                 install what is missing, build the demo, run every test
#   tests/e2e/run.sh python browser  run only the named tests (python node nginx browser)
#
# Idempotent: apt packages (nginx-light, chromium, python3-venv, nodejs/npm, openssl) are installed only
# if missing; the Python venv (tests/e2e/.venv) and node_modules are (re)made only when absent or
# out of date with requirements.txt / package-lock.json. Set E2E_NO_INSTALL=1 to skip installing.
# The demo is built once (`cargo build --release --example demo`, honouring CARGO_TARGET_DIR),
# started on a free loopback port with 2 workers, and always killed on exit, like nginx.
# Every test runs once per I/O backend in E2E_BACKENDS (default "epoll io_uring"; io_uring is
# skipped, not failed, where the kernel lacks it, i.e. where `--backend auto` picks epoll), and
# per scheme in E2E_SCHEMES (default "ws wss"): for wss a throwaway CA and a certificate for
# localhost/127.0.0.1 are made with openssl (tests/tls/make-certs.sh, in this run's temp dir),
# the demo runs with `--tls`, and the Python, Node and browser tests run again over TLS, the
# clients trusting that CA alone (chromium: --ignore-certificate-errors); nginx and the close
# suite stay ws:// only.
# Ends with `e2e: N passed, N failed`; exits non-zero if anything failed.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
DEMO="$TARGET_DIR/release/examples/demo"
VENV="$HERE/.venv"
PY="$VENV/bin/python"
SCREENSHOT="${E2E_SCREENSHOT:-/tmp/chat.png}"
ALL_TESTS=(python node nginx browser)
if [ $# -gt 0 ]; then TESTS=("$@"); else TESTS=("${ALL_TESTS[@]}"); fi
for t in "${TESTS[@]}"; do
    case " ${ALL_TESTS[*]} " in *" $t "*) ;; *) echo "unknown test '$t' (have: ${ALL_TESTS[*]})" >&2; exit 2 ;; esac
done
wants() { case " ${TESTS[*]} " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

log() { printf '==> %s\n' "$*"; }

# ---------------------------------------------------------------------------------- install --
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

install_deps() {
    local pkgs=()
    command -v nginx >/dev/null 2>&1 || pkgs+=(nginx-light)
    command -v chromium >/dev/null 2>&1 || pkgs+=(chromium)
    /usr/bin/python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || pkgs+=(python3-venv)
    command -v node >/dev/null 2>&1 || pkgs+=(nodejs)
    command -v npm >/dev/null 2>&1 || pkgs+=(npm)
    command -v openssl >/dev/null 2>&1 || pkgs+=(openssl)
    if [ ${#pkgs[@]} -gt 0 ]; then
        log "apt-get install ${pkgs[*]}"
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}"
    fi

    # Python venv with `websockets`, remade when requirements.txt changes.
    if [ ! -x "$PY" ] || ! cmp -s "$HERE/requirements.txt" "$VENV/.installed-requirements.txt"; then
        log "python venv at $VENV"
        /usr/bin/python3 -m venv "$VENV"
        "$PY" -m pip install -q --disable-pip-version-check -r "$HERE/requirements.txt"
        cp "$HERE/requirements.txt" "$VENV/.installed-requirements.txt"
    fi

    # Node `ws`, exactly as package-lock.json pins it.
    if [ ! -f "$HERE/node_modules/ws/package.json" ] ||
        ! cmp -s "$HERE/package-lock.json" "$HERE/node_modules/.installed-package-lock.json"; then
        log "npm ci in $HERE"
        (cd "$HERE" && npm ci --no-audit --no-fund --loglevel=error)
        cp "$HERE/package-lock.json" "$HERE/node_modules/.installed-package-lock.json"
    fi
}

if [ "${E2E_NO_INSTALL:-0}" != 1 ]; then install_deps; fi

# ------------------------------------------------------------------------------------ build --
log "cargo build --release --example demo (target dir $TARGET_DIR)"
(cd "$ROOT" && cargo build --release --example demo --quiet)
[ -x "$DEMO" ] || { echo "demo binary not found at $DEMO" >&2; exit 1; }

# --------------------------------------------------------------------------------- servers --
WORK="$(mktemp -d /tmp/sockeye-e2e.XXXXXX)"
DEMO_PID=""
NGINX_PID=""
TEST_PID=""
cleanup() {
    local pid
    # `timeout` passes the TERM on to the test (the browser test then kills its chromium).
    if [ -n "$TEST_PID" ]; then kill "$TEST_PID" 2>/dev/null || true; wait "$TEST_PID" 2>/dev/null || true; fi
    for pid in $NGINX_PID $DEMO_PID; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in $NGINX_PID $DEMO_PID; do
        # Give it 3 s to stop, then SIGKILL.
        for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() {
    "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() { # port pid what
    for _ in $(seq 100); do
        port_open "$1" && return 0
        kill -0 "$2" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}

start_demo() { # backend [demo flags...]
    local backend=$1 try
    shift
    for try in 1 2 3; do
        DEMO_PORT="$(free_port)"
        # SOCKEYE_BACKEND overrides --backend in the demo: set both, so an exported one
        # from the caller cannot silently swap the backend under test.
        # --deflate: browsers, Python websockets and Node ws all offer permessage-deflate, so
        # every end-to-end test runs compressed.
        SOCKEYE_BACKEND="$backend" "$DEMO" --addr "127.0.0.1:$DEMO_PORT" --workers 2 \
            --backend "$backend" --deflate "$@" >"$WORK/demo.log" 2>&1 &
        DEMO_PID=$!
        if wait_port "$DEMO_PORT" "$DEMO_PID"; then
            # The port accepts a moment before the "listening" line (with the backend) is logged.
            for _ in $(seq 20); do grep -q 'workers, ' "$WORK/demo.log" && break; sleep 0.1; done
            log "demo (pid $DEMO_PID) on $(grep -o 'wss\?://127[^ ]*' "$WORK/demo.log" | head -1): $(grep -o '([0-9]* workers, [A-Za-z]*)' "$WORK/demo.log" || true)"
            return 0
        fi
        kill "$DEMO_PID" 2>/dev/null || true
        wait "$DEMO_PID" 2>/dev/null || true
        DEMO_PID=""
        echo "demo did not start (try $try):" >&2
        cat "$WORK/demo.log" >&2
    done
    return 1
}

start_nginx() {
    local dir="$WORK/nginx"
    mkdir -p "$dir/logs" "$dir/tmp"
    chmod 755 "$WORK" "$dir" # nginx workers drop to an unprivileged user
    NGINX_PORT="$(free_port)"
    sed -e "s/@DEMO_PORT@/$DEMO_PORT/g" -e "s/@LISTEN_PORT@/$NGINX_PORT/g" \
        "$HERE/nginx.conf" >"$dir/nginx.conf"
    nginx -p "$dir" -c nginx.conf -e logs/error.log -g 'daemon off;' >"$WORK/nginx.out" 2>&1 &
    NGINX_PID=$!
    if wait_port "$NGINX_PORT" "$NGINX_PID"; then
        log "nginx (pid $NGINX_PID) on 127.0.0.1:$NGINX_PORT -> demo :$DEMO_PORT"
        return 0
    fi
    echo "nginx did not start:" >&2
    cat "$WORK/nginx.out" "$dir/logs/error.log" >&2 2>/dev/null || true
    return 1
}

# Which backend `--backend auto` picks here (from the demo's "listening" log line).
auto_backend() {
    local port pid out="$WORK/auto.log"
    port="$(free_port)"
    env -u SOCKEYE_BACKEND "$DEMO" --addr "127.0.0.1:$port" --workers 1 >"$out" 2>&1 &
    pid=$!
    wait_port "$port" "$pid" || true
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    grep -o 'workers, [A-Za-z]*)' "$out" | sed 's/workers, //; s/)//' || true
}

stop_nginx() {
    [ -n "$NGINX_PID" ] || return 0
    kill "$NGINX_PID" 2>/dev/null || true
    wait "$NGINX_PID" 2>/dev/null || true
    NGINX_PID=""
}

# ------------------------------------------------------------------------------------ tests --
PASSED=0
FAILED=0
FAILED_NAMES=()

# run_test NAME SECONDS CMD...: runs CMD bounded in time; its output is shown indented.
run_test() {
    local name="$1" limit="$2" rc=0 t0 t1
    shift 2
    log "test: $name"
    t0=$(date +%s.%N)
    # In the background + wait, so that a signal to this script runs its trap at once.
    timeout -k 5 "$limit" "$@" >"$WORK/test.log" 2>&1 &
    TEST_PID=$!
    wait "$TEST_PID" || rc=$?
    TEST_PID=""
    t1=$(date +%s.%N)
    sed 's/^/    /' "$WORK/test.log"
    if [ "$rc" -eq 0 ]; then
        PASSED=$((PASSED + 1))
        awk -v n="$name" -v a="$t0" -v b="$t1" 'BEGIN { printf "PASS %s (%.1fs)\n", n, b - a }'
    else
        FAILED=$((FAILED + 1))
        FAILED_NAMES+=("$name")
        [ "$rc" -eq 124 ] && echo "    (timed out after ${limit}s)"
        printf 'FAIL %s (exit %d)\n' "$name" "$rc"
    fi
}

# A named check that is not a command (start-up, liveness).
record() { # ok|fail NAME
    if [ "$1" = ok ]; then PASSED=$((PASSED + 1)); echo "PASS $2"; else
        FAILED=$((FAILED + 1)); FAILED_NAMES+=("$2"); echo "FAIL $2"; fi
}

SCHEMES="${E2E_SCHEMES:-ws wss}"
if [[ " $SCHEMES " == *" wss "* ]]; then
    mkdir -p "$WORK/tls"
    bash "$ROOT/tests/tls/make-certs.sh" "$WORK/tls"
    CA="$WORK/tls/ca.pem"
fi

START=$(date +%s)
for BACKEND in ${E2E_BACKENDS:-epoll io_uring}; do
for SCHEME in $SCHEMES; do
    B="[$BACKEND]"
    TLS_FLAGS=()
    CA_ARGS=()
    NODE_CA=()
    HTTP=http
    if [ "$SCHEME" = wss ]; then
        B="[$BACKEND wss]"
        TLS_FLAGS=(--tls "$WORK/tls/cert.pem" "$WORK/tls/key.pem")
        CA_ARGS=(--ca "$CA")
        NODE_CA=("$CA")
        HTTP=https
    fi
    if ! start_demo "$BACKEND" "${TLS_FLAGS[@]}"; then
        if [ "$BACKEND" = io_uring ] && [ "$(auto_backend)" = Epoll ]; then
            echo "SKIP $B: this kernel offers no io_uring (--backend auto picks epoll)"
        else
            record fail "$B demo: start"
        fi
        continue
    fi
    case "$BACKEND" in epoll) want=Epoll ;; io_uring) want=IoUring ;; *) want="" ;; esac
    if [ -n "$want" ] && ! grep -q "workers, $want)" "$WORK/demo.log"; then
        record fail "$B demo runs the $want backend (log: $(grep -o 'workers, [A-Za-z]*)' "$WORK/demo.log" || echo none))"
    fi
    if ! grep -q "listening on $SCHEME://127.0.0.1:$DEMO_PORT " "$WORK/demo.log"; then
        record fail "$B demo says it listens on $SCHEME:// (log: $(grep -o 'listening on [^ ]*' "$WORK/demo.log" || echo none))"
    fi
    WS="$SCHEME://127.0.0.1:$DEMO_PORT"
    if wants python; then
        run_test "$B python: echo" 60 "$PY" "$HERE/test_python.py" --base "$WS" "${CA_ARGS[@]}" --suite echo
        run_test "$B python: chat (4 and 16 clients)" 60 "$PY" "$HERE/test_python.py" --base "$WS" "${CA_ARGS[@]}" --suite chat
        if [ "$SCHEME" = ws ]; then
            run_test "$B python: close codes" 60 "$PY" "$HERE/test_python.py" --base "$WS" --suite close
        fi
    fi
    if wants node; then
        run_test "$B node ws: echo, chat, ping/pong" 60 node "$HERE/test_node.mjs" "$WS" "${NODE_CA[@]}"
    fi
    if wants nginx && [ "$SCHEME" = ws ]; then
        if start_nginx; then
            run_test "$B nginx: python echo, chat, close through the proxy" 60 \
                "$PY" "$HERE/test_python.py" --base "ws://127.0.0.1:$NGINX_PORT" --label nginx
        else
            record fail "$B nginx: start"
        fi
        stop_nginx
    fi
    if wants browser; then
        run_test "$B browser: chromium two-tab chat, live stats" 90 \
            "$PY" "$HERE/test_browser.py" --page "$HTTP://127.0.0.1:$DEMO_PORT/" "${CA_ARGS[@]}" \
            --screenshot "$SCREENSHOT" --backend "$BACKEND"
    fi

    # The demo survived everything above, and stops cleanly on SIGINT (its Ctrl-C handler).
    if kill -0 "$DEMO_PID" 2>/dev/null; then
        record ok "$B demo still running after the tests"
        kill -INT "$DEMO_PID"
        rc=0
        for _ in $(seq 50); do kill -0 "$DEMO_PID" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$DEMO_PID" 2>/dev/null; then
            record fail "$B demo stops within 5s of SIGINT"
            kill -9 "$DEMO_PID" 2>/dev/null || true
            wait "$DEMO_PID" 2>/dev/null || true
        else
            wait "$DEMO_PID" || rc=$?
            if [ "$rc" -eq 0 ]; then record ok "$B demo stops within 5s of SIGINT (exit 0)"; else
                record fail "$B demo stops within 5s of SIGINT (exit $rc)"; fi
        fi
    else
        wait "$DEMO_PID" 2>/dev/null || true
        record fail "$B demo still running after the tests"
    fi
    DEMO_PID=""
    if [ "$FAILED" -gt 0 ]; then
        echo "---- $B demo log (tail) ----"
        tail -n 40 "$WORK/demo.log" || true
    fi
done
done

echo "elapsed: $(($(date +%s) - START))s"
if [ "$FAILED" -gt 0 ]; then printf 'failed: %s\n' "${FAILED_NAMES[@]}"; fi
echo "e2e: $PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
