#!/usr/bin/env bash
# install.sh: installs the Node ws peer's dependency (ws, pinned in package.json) into
# benches/peers/node/node_modules (git-ignored) with npm; prints the node binary to use.
# compare.sh runs `node benches/peers/node/server.js` once node_modules/ws is there.
#
#   benches/peers/node/install.sh
#
# Needs node and npm and a reachable npm registry. Remove benches/peers/node/node_modules to
# uninstall.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
die() {
    echo "install.sh: $*" >&2
    exit 1
}
[[ ${1:-} == -h || ${1:-} == --help ]] && { sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0; }
command -v node >/dev/null || die "node not found (install Node.js first)"
command -v npm >/dev/null || die "npm not found"
echo "== npm install in $HERE" >&2
(cd "$HERE" && npm install --no-audit --no-fund --omit=dev >&2)
[[ -f $HERE/node_modules/ws/package.json ]] || die "no node_modules/ws after the install"
echo "Node $(node --version), ws $(node -p "require('$HERE/node_modules/ws/package.json').version") installed" >&2
command -v node
