#!/usr/bin/env bash
# Regenerates include/sockeye.h from ffi/src with cbindgen (the pinned version below; installed
# with `cargo install cbindgen --version $CBINDGEN_VERSION --locked` when missing or different).
#
#   ffi/gen-header.sh            writes include/sockeye.h
#   ffi/gen-header.sh OUT.h      writes OUT.h instead (check-header.sh uses this)
set -euo pipefail
CBINDGEN_VERSION=0.29.4
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
OUT="${1:-$ROOT/include/sockeye.h}"

cbindgen_bin="$(command -v cbindgen || true)"
if [ -z "$cbindgen_bin" ] || [ "$("$cbindgen_bin" --version)" != "cbindgen $CBINDGEN_VERSION" ]; then
    echo "gen-header.sh: installing cbindgen $CBINDGEN_VERSION" >&2
    cargo install cbindgen --version "$CBINDGEN_VERSION" --locked --quiet
    cbindgen_bin="${CARGO_HOME:-$HOME/.cargo}/bin/cbindgen"
fi
mkdir -p "$(dirname "$OUT")"
"$cbindgen_bin" --quiet --config "$HERE/cbindgen.toml" --crate sockeye-ffi --output "$OUT" "$HERE"
