#!/usr/bin/env bash
# install.sh [VERSION]: installs Bun for the Bun peer into benches/peers/bun/.bun (git-ignored)
# with npm, not system-wide; prints the binary's path. compare.sh finds it there.
#
#   benches/peers/bun/install.sh            # the latest release
#   benches/peers/bun/install.sh 1.2.3      # a given one
#   BUN_PACKAGE=@oven/bun-linux-x64-baseline benches/peers/bun/install.sh
#
# The package is @oven/bun-linux-x64 where the CPU has AVX2 (the build Bun's installer picks),
# @oven/bun-linux-x64-baseline where it does not, @oven/bun-linux-aarch64 on arm64;
# BUN_PACKAGE overrides the choice. Needs npm and a reachable npm registry. Remove
# benches/peers/bun/.bun to uninstall.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
PREFIX=$HERE/.bun
die() {
    echo "install.sh: $*" >&2
    exit 1
}
[[ ${1:-} == -h || ${1:-} == --help ]] && { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0; }
command -v npm >/dev/null || die "npm not found (install Node.js / npm first)"

PKG=${BUN_PACKAGE:-}
if [[ -z $PKG ]]; then
    case $(uname -m) in
        x86_64)
            if grep -qw avx2 /proc/cpuinfo; then PKG=@oven/bun-linux-x64; else PKG=@oven/bun-linux-x64-baseline; fi
            ;;
        aarch64 | arm64) PKG=@oven/bun-linux-aarch64 ;;
        *) die "no Bun package for $(uname -m)" ;;
    esac
fi
SPEC=$PKG${1:+@$1}

echo "== checking the npm registry for $SPEC" >&2
VERSION=$(npm view "$SPEC" version 2>/dev/null | tail -1 | awk '{print $NF}' | tr -d "'") ||
    true
[[ -n $VERSION ]] || die "npm cannot find $SPEC (is the registry reachable? npm config get registry: $(npm config get registry))"

echo "== npm install --prefix $PREFIX $PKG@$VERSION" >&2
mkdir -p "$PREFIX"
npm install --prefix "$PREFIX" --no-audit --no-fund --save-exact "$PKG@$VERSION" >&2

BIN=$PREFIX/node_modules/$PKG/bin/bun
[[ -x $BIN ]] || die "no $BIN after the install"
"$BIN" --version >/dev/null || die "$BIN does not run on this machine (try BUN_PACKAGE=@oven/bun-linux-x64-baseline)"
echo "Bun $("$BIN" --version) installed: $BIN" >&2
echo "$BIN"
