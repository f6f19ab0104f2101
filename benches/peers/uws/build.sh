#!/usr/bin/env bash
# Builds the uWebSockets peer (peer-uws.cpp) against uWebSockets and uSockets source trees
# that you give by path; neither is part of this repository and CI does not need the result.
#
#   benches/peers/uws/build.sh UWEBSOCKETS_DIR [USOCKETS_DIR]
#
#   UWEBSOCKETS_DIR  a uWebSockets source tree (the folder holding src/App.h)
#   USOCKETS_DIR     a uSockets source tree (the folder holding src/libusockets.h); default
#                    UWEBSOCKETS_DIR/uSockets, the submodule, when it is checked out
#
# Writes benches/peers/uws/build/peer-uws (git-ignored), where compare.sh looks for it, and
# build/VERSION with what it was built from. uSockets' epoll loop, no SSL (LIBUS_NO_SSL), no
# zlib (UWS_NO_ZLIB), -O3 with LTO, as uWebSockets' own Makefile builds its examples.
# Environment: CC (default cc), CXX (default c++), EXTRA_FLAGS (added to both, e.g. -march=native).
set -euo pipefail

usage() { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
[[ $# -ge 1 && $# -le 2 ]] || usage
uws=$(cd "$1" && pwd)
us=${2:-$uws/uSockets}
[[ -f $uws/src/App.h ]] || { echo "build.sh: $uws/src/App.h not found: not a uWebSockets tree" >&2; exit 1; }
[[ -f $us/src/libusockets.h ]] || {
    echo "build.sh: $us/src/libusockets.h not found: give a uSockets tree as the second argument" >&2
    exit 1
}
us=$(cd "$us" && pwd)

here=$(cd "$(dirname "$0")" && pwd)
out=$here/build
obj=$out/obj
rm -rf "$obj"
mkdir -p "$obj"
CC=${CC:-cc}
CXX=${CXX:-c++}
flags=(-O3 -flto -DLIBUS_NO_SSL -DUWS_NO_ZLIB ${EXTRA_FLAGS:-})

# uSockets: the C sources of the default (epoll) loop. crypto/*.c compile to nothing without
# SSL; io_uring/*.c only with LIBUS_USE_IO_URING; the C++ sources are for SSL (SNI) and asio.
srcs=("$us"/src/*.c "$us"/src/eventing/*.c "$us"/src/crypto/*.c)
for src in "${srcs[@]}"; do
    name=${src#"$us"/src/}
    "$CC" "${flags[@]}" -std=c11 -I"$us/src" -c "$src" -o "$obj/${name//\//_}.o"
done

"$CXX" "${flags[@]}" -std=c++20 -I"$uws/src" -I"$us/src" \
    "$here/peer-uws.cpp" "$obj"/*.o -o "$out/peer-uws.tmp"
mv "$out/peer-uws.tmp" "$out/peer-uws"
rm -rf "$obj"

describe() {
    if git -C "$1" rev-parse --git-dir > /dev/null 2>&1; then
        git -C "$1" describe --always --dirty --tags 2> /dev/null || echo "$1 (git, no commit)"
    else
        echo "$1 (not a git checkout)"
    fi
}
{
    echo "uWebSockets: $(describe "$uws")"
    echo "uSockets:    $(describe "$us")"
    echo "compiler:    $("$CXX" --version | head -n 1)"
    echo "flags:       ${flags[*]}"
} > "$out/VERSION"
cat "$out/VERSION"
echo "built $out/peer-uws"
