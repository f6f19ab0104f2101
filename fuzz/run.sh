#!/usr/bin/env bash
# Runs each cargo-fuzz target for a short while and fails on the first crash, leak or hang.
#
#   fuzz/run.sh                  every target, ${FUZZ_SECONDS:-20} seconds each (inflate:
#                                at most 10, FUZZ_SECONDS_INFLATE to change)
#   FUZZ_SECONDS=600 fuzz/run.sh handshake
#
# cargo-fuzz needs nightly-only rustc flags (-Zsanitizer, sanitizer coverage); RUSTC_BOOTSTRAP=1
# lets the stable toolchain accept them. New corpus entries go to fuzz/corpus/<target> and
# crashing inputs to fuzz/artifacts/<target> (both gitignored); fuzz/seeds/<target> holds the
# committed starting inputs. Reproduce a crash with `cargo fuzz run <target> <artifact>`.
set -euo pipefail
cd "$(dirname "$0")"

export RUSTC_BOOTSTRAP=1
# cargo-fuzz keeps its own instrumented build in fuzz/target.
unset CARGO_TARGET_DIR

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

secs="${FUZZ_SECONDS:-20}"
if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi

for t in "${targets[@]}"; do
    mkdir -p "corpus/$t"
    dirs=("corpus/$t")
    if [ -d "seeds/$t" ]; then
        dirs+=("seeds/$t")
    fi
    t_secs=$secs
    if [ "$t" = inflate ]; then
        # A narrow target (one message through the inflater): a short budget keeps CI's
        # fuzz stage within its time.
        t_secs=${FUZZ_SECONDS_INFLATE:-$((secs < 10 ? secs : 10))}
    fi
    echo "== fuzzing $t for ${t_secs}s"
    # -a: debug assertions and overflow checks on, so arithmetic bugs crash instead of wrapping.
    cargo fuzz run -a "$t" "${dirs[@]}" -- \
        -max_total_time="$t_secs" -rss_limit_mb=1024 -timeout=10 -print_final_stats=1
done
echo "== all fuzz targets ran ${secs}s without a crash: ${targets[*]}"
