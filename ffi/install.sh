#!/usr/bin/env bash
# Builds libsockeye (release) and installs it with its headers and pkg-config file:
#
#   ffi/install.sh PREFIX      e.g. ffi/install.sh /usr/local, or ffi/install.sh "$HOME/.local"
#
#   PREFIX/lib/libsockeye.so.X.Y.Z (+ libsockeye.so.SONAME and libsockeye.so links), libsockeye.a
#   PREFIX/include/sockeye.h, PREFIX/include/sockeye.hpp
#   PREFIX/lib/pkgconfig/sockeye.pc
#
# Then: PKG_CONFIG_PATH=PREFIX/lib/pkgconfig cc app.c $(pkg-config --cflags --libs sockeye)
# (and, unless PREFIX/lib is on the loader's path, LD_LIBRARY_PATH=PREFIX/lib or
# -Wl,-rpath,PREFIX/lib to run it). Honours CARGO_TARGET_DIR.
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: $0 PREFIX" >&2; exit 2; }
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
mkdir -p "$1"
PREFIX="$(cd "$1" && pwd)"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"

(cd "$ROOT" && cargo build --release -p sockeye-ffi --quiet)

VERSION="$(sed -n 's/^version = "\(.*\)"/\1/p' "$ROOT/Cargo.toml" | head -1)"
MAJOR="${VERSION%%.*}"; REST="${VERSION#*.}"; MINOR="${REST%%.*}"
# The SONAME ffi/build.rs gives the library.
if [ "$MAJOR" = 0 ]; then SONAME="libsockeye.so.0.$MINOR"; else SONAME="libsockeye.so.$MAJOR"; fi

install -d "$PREFIX/lib" "$PREFIX/include" "$PREFIX/lib/pkgconfig"
install -m 0755 "$TARGET_DIR/release/libsockeye.so" "$PREFIX/lib/libsockeye.so.$VERSION"
ln -sfn "libsockeye.so.$VERSION" "$PREFIX/lib/$SONAME"
ln -sfn "$SONAME" "$PREFIX/lib/libsockeye.so"
install -m 0644 "$TARGET_DIR/release/libsockeye.a" "$PREFIX/lib/libsockeye.a"
install -m 0644 "$ROOT/include/sockeye.h" "$ROOT/include/sockeye.hpp" "$PREFIX/include/"
sed -e "s|@PREFIX@|$PREFIX|g" -e "s|@VERSION@|$VERSION|g" "$HERE/sockeye.pc.in" > "$PREFIX/lib/pkgconfig/sockeye.pc"
echo "installed sockeye $VERSION into $PREFIX"
