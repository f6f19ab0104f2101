#!/usr/bin/env bash
# Runs every check Sockeye has, on a fresh machine or a used one: installs what is missing, then
# formatting, lints, the docs (warnings denied) and the house's fences, the crate as it would be
# published (`cargo package`) and built with its declared MSRV, unit and integration
# tests on BOTH backends, the unsafe modules' tests under AddressSanitizer, a short fuzz run of
# every target, the Autobahn conformance suite against the demo on both backends, the end-to-end
# tests (Python, Node, nginx, headless Chromium), fault injection against the demo (both
# backends), the C ABI tests (ASan/UBSan, valgrind), the cluster bridge against a real
# redis-server (both backends) and wss:// on the ring crypto provider (both backends).
#
#   tests/run-all.sh            # everything (about 31 minutes on 2 cores, first run longer)
#   STAGES="unit autobahn" tests/run-all.sh   # a subset
#
# The last line reads `ci: N passed, N failed` (stages).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export CARGO_TERM_COLOR=never
STAGES=${STAGES:-"setup fmt clippy doc package msrv unit cluster ring asan header fuzz autobahn e2e faults cabi"}
passed=0; failed=0; failures=()
# Every stage's output is also kept here, so that the end of the run can repeat what a failed
# stage said (CI shows only the tail of a long run).
STAGE_LOGS=$(mktemp -d)

log() { printf '\n=== %s ===\n' "$*"; }

stage() {
  local name=$1; shift
  case " $STAGES " in *" $name "*) ;; *) return 0 ;; esac
  log "$name"
  local t0=$SECONDS
  if "$@" > >(tee "$STAGE_LOGS/$name.log") 2>&1; then
    passed=$((passed + 1)); echo "--- $name: ok ($((SECONDS - t0)) s)"
  else
    failed=$((failed + 1)); failures+=("$name"); echo "--- $name: FAILED ($((SECONDS - t0)) s)"
  fi
}

setup() {
  local need=()
  command -v pkg-config >/dev/null || need+=(pkg-config)
  command -v valgrind >/dev/null || need+=(valgrind)
  command -v nginx >/dev/null || need+=(nginx-light)
  command -v chromium >/dev/null || need+=(chromium)
  command -v curl >/dev/null || need+=(curl)
  command -v openssl >/dev/null || need+=(openssl) # the wss:// tests' throwaway certificates
  # The cluster stage starts its own redis-server instances (loopback, picked ports); the
  # package's own service is never started (no init system runs it here; policy-rc.d or not).
  command -v redis-server >/dev/null || need+=(redis-server)
  if [ ${#need[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  fi
  rustup component list --installed 2>/dev/null | grep -q rustfmt || rustup component add rustfmt clippy
  cargo build --release --example demo
}

fmt() { cargo fmt --all --check; }

# The docs build with every warning denied (broken intra-doc links, missing docs), and the
# house's fences hold: proto/ never reaches into io/ or server/ (it is tested as a codec).
doc() {
  if grep -rnE 'crate::(io|server)\b' engine/src/proto; then
    echo "proto/ imports io/ or server/" >&2
    return 1
  fi
  RUSTDOCFLAGS="-D warnings" cargo doc -p sockeye --no-deps --quiet &&
    RUSTDOCFLAGS="-D warnings" cargo doc -p sockeye-ffi --no-deps --quiet
}
clippy() { cargo clippy --workspace --all-targets -- -D warnings; }

# The crate as crates.io would get it: packaged (what `include` lists) and the package built on
# its own (no upload). --allow-dirty: a local run with uncommitted work checks that work too.
package() { cargo package -p sockeye --allow-dirty --quiet; }

# The MSRV is `rust-version` in Cargo.toml, and this is what makes it true: both crates, every
# target (lib, tests, examples), checked with exactly that toolchain (installed with rustup
# when missing) against the committed Cargo.lock. Its own target dir: no mixing toolchains.
msrv() {
  local v
  v=$(sed -n 's/^rust-version = "\(.*\)"/\1/p' Cargo.toml | head -1)
  [ -n "$v" ] || { echo "no rust-version in Cargo.toml" >&2; return 1; }
  rustup run "$v" rustc --version >/dev/null 2>&1 ||
    rustup toolchain install "$v" --profile minimal --no-self-update || return 1
  CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}/msrv" \
    cargo "+$v" check --locked --quiet -p sockeye -p sockeye-ffi --all-targets &&
    echo "msrv: sockeye and sockeye-ffi build with Rust $v"
}

unit() {
  # The same suite on both backends: unit tests once, integration tests per backend.
  # The default build's TLS is on aws-lc-rs: the provider tests check it (stage `ring` the other).
  SOCKEYE_EXPECT_PROVIDER=aws-lc-rs SOCKEYE_BACKEND=epoll cargo test --workspace --all-targets &&
    SOCKEYE_BACKEND=io_uring cargo test -p sockeye --tests &&
    cargo test --workspace --doc
}

# Pub/sub across processes (feature `cluster`): engine/tests/cluster.rs starts a real
# redis-server and demo processes with --cluster, on both backends; the bridge's unit tests too.
cluster() {
  command -v redis-server >/dev/null || { echo "cluster: redis-server is not installed" >&2; return 1; }
  SOCKEYE_BACKEND=epoll cargo test -p sockeye --features cluster --test cluster &&
    SOCKEYE_BACKEND=io_uring cargo test -p sockeye --features cluster --test cluster &&
    cargo test -p sockeye --features cluster --lib cluster::
}

# wss:// on the other crypto provider, ring (the engine and the C library without their
# default `aws-lc-rs` feature; the tests' clients are on ring either way): the TLS suite on
# both backends and TLS's unit tests with the servers on ring, and the C library's provider
# answer. SOCKEYE_EXPECT_PROVIDER makes the provider
# tests check the name, so a build that lost track of the feature fails.
# A subshell: the variable must not reach the later stages, whose builds are on aws-lc-rs.
ring() (
  export SOCKEYE_EXPECT_PROVIDER=ring
  SOCKEYE_BACKEND=epoll cargo test -p sockeye --no-default-features --test tls &&
    SOCKEYE_BACKEND=io_uring cargo test -p sockeye --no-default-features --test tls &&
    cargo test -p sockeye --no-default-features --lib tls &&
    cargo test -p sockeye-ffi --no-default-features --features cluster --lib tls_provider
)

header() { bash ffi/check-header.sh; }

asan() { bash tests/asan.sh; }

# Every target FUZZ_SECONDS, except inflate (10 s; fuzz/run.sh).
fuzz() { FUZZ_SECONDS=${FUZZ_SECONDS:-20} FUZZ_SECONDS_INFLATE=${FUZZ_SECONDS_INFLATE:-10} bash fuzz/run.sh; }

# Starts the demo on $1 with backend $2 and permessage-deflate on, runs Autobahn strict in one
# pass (1-7, 9.*, 10, and a subset of the compression cases 12.* and 13.* that fits CI's time;
# the full 12.*/13.* passed locally, see the README's Conformance), stops it.
DEMO=${CARGO_TARGET_DIR:-$ROOT/target}/release/examples/demo
AUTOBAHN_CASES='1.*,2.*,3.*,4.*,5.*,6.*,7.*,9.*,10.*,12.1.*,12.5.*,13.1.*,13.7.*'
autobahn_on() {
  local port=$1 backend=$2 pid rc=0
  SOCKEYE_BACKEND=$backend "$DEMO" --addr "127.0.0.1:$port" --workers 2 \
    --deflate >"/tmp/sockeye-demo-$backend.log" 2>&1 &
  pid=$!
  for _ in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.1; done
  echo "autobahn on $backend (port $port):"
  bash ../shared/conformance/autobahn.sh --strict --cases "$AUTOBAHN_CASES" "ws://127.0.0.1:$port/echo" || rc=1
  kill -INT "$pid"; wait "$pid" || rc=1
  return $rc
}
# Both backends at once (each suite run is one single-threaded Python client, so two share the
# machine well), each into its own log, printed whole afterwards. The first call installs the
# suite (a private Python 2.7, once per machine) before the two runs could race to do it.
autobahn() {
  local logs rc=0
  logs=$(mktemp -d)
  if [ ! -f "${AUTOBAHN_HOME:-$HOME/.cache/autobahn-py27}/ready" ]; then
    "$DEMO" --addr 127.0.0.1:9303 --workers 1 >/dev/null 2>&1 &
    local pid=$!
    for _ in $(seq 50); do curl -s -o /dev/null http://127.0.0.1:9303/ && break; sleep 0.1; done
    bash ../shared/conformance/autobahn.sh --cases 1.1.1 ws://127.0.0.1:9303/echo >/dev/null || rc=1
    kill -INT "$pid"; wait "$pid"
  fi
  autobahn_on 9301 epoll >"$logs/epoll" 2>&1 &
  local a=$!
  autobahn_on 9302 io_uring >"$logs/io_uring" 2>&1 &
  local b=$!
  wait "$a" || rc=1
  wait "$b" || rc=1
  cat "$logs/epoll" "$logs/io_uring"
  rm -rf "$logs"
  return $rc
}

e2e() { bash tests/e2e/run.sh; }

# Fault injection (tests/faults/faults.py, Python standard library only): big message + close
# never read, zero-window readers, slowloris, resets mid-message, EMFILE, handler panics, the
# /metrics format and bad TLS input (plaintext HTTP, a truncated ClientHello, openssl s_client
# with TLS 1.1 or an illegal SNI name), against a fresh demo per scenario on both backends; each
# must return to its baseline (fds, connections, memory, RSS) within the configured timeouts.
# About 80 s.
faults() {
  cargo build --release --example demo --quiet &&
    timeout -k 5 170 python3 tests/faults/faults.py \
      --demo "${CARGO_TARGET_DIR:-$ROOT/target}/release/examples/demo"
}

cabi() { bash tests/c/run.sh; }

stage setup setup
stage fmt fmt
stage clippy clippy
stage doc doc
stage package package
stage msrv msrv
stage unit unit
stage cluster cluster
stage ring ring
stage asan asan
stage header header
stage fuzz fuzz
stage autobahn autobahn
stage e2e e2e
stage faults faults
stage cabi cabi

sleep 0.2 # the last tee's output
echo
for f in "${failures[@]}"; do
  # Failing tests (cargo's `FAILED`, `panicked`), errors and failed checks, last 40 of them.
  echo "--- what $f said that matters (the whole output is above):"
  grep -aE "FAILED|panicked|^error|[Ee]rror:|failed|FAIL|not ok|assert" "$STAGE_LOGS/$f.log" |
    grep -avE " 0 failed|^test .* \.\.\. ok$" | tail -40
done
rm -rf "$STAGE_LOGS"
[ $failed -eq 0 ] || echo "failed stages: ${failures[*]}"
echo "ci: $passed passed, $failed failed"
[ $failed -eq 0 ]
