#!/usr/bin/env bash
# Fails (with a diff) if include/sockeye.h is not what ffi/gen-header.sh generates from the
# current ffi/src. Fix: run ffi/gen-header.sh and commit the header.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
bash "$HERE/gen-header.sh" "$tmp/sockeye.h"
if ! diff -u "$ROOT/include/sockeye.h" "$tmp/sockeye.h"; then
    echo "check-header.sh: include/sockeye.h is stale; run ffi/gen-header.sh" >&2
    exit 1
fi
echo "check-header.sh: include/sockeye.h is current"
