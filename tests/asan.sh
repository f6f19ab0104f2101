#!/usr/bin/env bash
# The tests of the modules that hold `unsafe` under AddressSanitizer: the SIMD unmask kernels
# and UTF-8 checks against their scalar twins (proto/mask.rs, proto/utf8.rs), the io_uring
# provided-buffer ring, in-flight sends and teardown (io/uring.rs unit tests and
# tests/uring_buffers.rs), and the direct write and forced resets (server/core_tests.rs).
# Miri has no component on this toolchain; ASan catches the out-of-bounds reads and
# use-after-free these blocks could commit. RUSTC_BOOTSTRAP=1 lets stable take -Zsanitizer,
# as the fuzz stage does. Its own target dir: instrumented builds never mix with plain ones.
set -euo pipefail
cd "$(dirname "$0")/.."
export RUSTC_BOOTSTRAP=1
export RUSTFLAGS="-Zsanitizer=address"
export RUSTDOCFLAGS="-Zsanitizer=address"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}/asan"
target=$(rustc -vV | sed -n 's/^host: //p')
run() { cargo test -q -p sockeye --target "$target" "$@"; }
run --lib -- proto::mask proto::utf8 io::uring server::core::harness
for b in epoll io_uring; do
    SOCKEYE_BACKEND=$b run --test uring_buffers --test echo
done
echo "asan: the unsafe modules' tests passed under AddressSanitizer"
