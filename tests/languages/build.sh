#!/usr/bin/env bash
# Builds the example plugins in other languages into target/language-plugins/:
#   - examples/plugins/python-opensearch (componentize-py, pinned in its requirements.txt)
#     -> python-opensearch.wasm
#   - examples/plugins/js-opensearch (componentize-js, pinned with every dependency in its
#     package-lock.json) -> js-opensearch.wasm
# The toolchains are installed under target/languages/ (a Python venv; node_modules from
# `npm ci`; pip's and npm's download caches too), nothing outside the repo's target/. Needs
# python3 with venv, and Node.js 20 or later with npm.
# Idempotent: a toolchain is installed again only when its pins change, and a component is built
# again only when its inputs (sources, WIT, pins) change; when all is up to date this takes
# well under a second. Sources are copied to a staging directory first, so a build writes
# nothing (__pycache__, ...) into examples/.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
CACHE=${DX_LANGUAGES_CACHE:-$ROOT/target/languages}
OUT=$ROOT/target/language-plugins
PY_SRC=$ROOT/examples/plugins/python-opensearch
JS_SRC=$ROOT/examples/plugins/js-opensearch
mkdir -p "$CACHE" "$OUT"
# One build at a time (tests may run this in parallel): the others wait, then find it up to date.
exec 9>"$CACHE/.lock"
flock 9

# The sha256 of files (their names and contents), following symbolic links.
digest() { for f in "$@"; do printf '%s\n' "${f#"$ROOT"/}"; cat "$f"; done | sha256sum | cut -d' ' -f1; }
# A component's inputs: every file of its example directory but the package manager's.
inputs() { find -L "$1" -type f ! -path '*/node_modules/*' ! -path '*/__pycache__/*' | LC_ALL=C sort; }
# Stage an example's sources (links followed) in a fresh directory of the cache.
stage() {
  local dir=$CACHE/build/$(basename "$1")
  rm -rf "$dir"; mkdir -p "$dir"
  cp -rL "$1"/. "$dir"/
  rm -rf "$dir/node_modules" "$dir/__pycache__"
  printf '%s' "$dir"
}
# Time a step, printed to stderr.
timed() { local t0=$SECONDS; "$@"; echo "  ($(( SECONDS - t0 )) s)" >&2; }

# --- Python: componentize-py in a venv ------------------------------------------------------------
py_pins=$(digest "$PY_SRC/requirements.txt")
if [ "$(cat "$CACHE/venv/.pins" 2>/dev/null)" != "$py_pins" ] || [ ! -x "$CACHE/venv/bin/componentize-py" ]; then
  command -v python3 >/dev/null || { echo "python3 is required (with venv: Debian's python3-venv)" >&2; exit 1; }
  echo "installing componentize-py ($(tr '\n' ' ' < "$PY_SRC/requirements.txt")) into $CACHE/venv" >&2
  install_py() {
    rm -rf "$CACHE/venv"
    python3 -m venv "$CACHE/venv"
    PIP_CACHE_DIR=$CACHE/pip-cache "$CACHE/venv/bin/pip" install -q --disable-pip-version-check \
      -r "$PY_SRC/requirements.txt"
  }
  timed install_py
  printf '%s' "$py_pins" > "$CACHE/venv/.pins"
fi

# --- JavaScript: componentize-js from the lock file -------------------------------------------------
js_pins=$(digest "$JS_SRC/package.json" "$JS_SRC/package-lock.json")
if [ "$(cat "$CACHE/js/.pins" 2>/dev/null)" != "$js_pins" ] || [ ! -x "$CACHE/js/node_modules/.bin/componentize-js" ]; then
  command -v npm >/dev/null || { echo "Node.js 20 or later with npm is required" >&2; exit 1; }
  node_major=$(node -p 'process.versions.node.split(".")[0]')
  [ "$node_major" -ge 20 ] || echo "warning: componentize-js's dependencies ask for Node.js 20 or later (found $(node --version)); if what follows fails, install it" >&2
  echo "installing componentize-js from $JS_SRC/package-lock.json into $CACHE/js" >&2
  install_js() {
    rm -rf "$CACHE/js"; mkdir -p "$CACHE/js"
    cp "$JS_SRC/package.json" "$JS_SRC/package-lock.json" "$CACHE/js/"
    (cd "$CACHE/js" && npm_config_cache=$CACHE/npm-cache npm ci --no-audit --no-fund --loglevel=error >/dev/null)
  }
  timed install_js
  printf '%s' "$js_pins" > "$CACHE/js/.pins"
fi

# --- the components -------------------------------------------------------------------------------
# Rebuild $1 (an output path) when the digest of its inputs differs from the one recorded beside it.
build() {
  local out=$1 want=$2; shift 2
  if [ -f "$out" ] && [ "$(cat "$out.inputs" 2>/dev/null)" = "$want" ]; then
    echo "$(basename "$out") is up to date" >&2
    return
  fi
  echo "building $(basename "$out")" >&2
  rm -f "$out.inputs"
  timed "$@"
  printf '%s' "$want" > "$out.inputs"
  echo "  $(basename "$out"): $(stat -c %s "$out") bytes" >&2
}

build_py() {
  local dir; dir=$(stage "$PY_SRC")
  # The module `app` holds the plugin; an empty VIRTUAL_ENV keeps the venv's own packages (pip,
  # componentize-py) out of the component: the plugin needs the standard library only.
  mkdir -p "$CACHE/no-packages/lib/python/site-packages"
  (cd "$dir" && PYTHONDONTWRITEBYTECODE=1 VIRTUAL_ENV=$CACHE/no-packages nice "$CACHE/venv/bin/componentize-py" \
    --wit-path wit --world plugin componentize app --python-path . --output "$OUT/python-opensearch.wasm.tmp" \
    >/dev/null)
  mv "$OUT/python-opensearch.wasm.tmp" "$OUT/python-opensearch.wasm"
}

build_js() {
  local dir; dir=$(stage "$JS_SRC")
  # componentize-js links its own wasi:http client unless told not to; the host grants no
  # wasi:http (a plugin's HTTP goes through narrows:exporter/http), so it is disabled.
  (cd "$dir" && nice "$CACHE/js/node_modules/.bin/componentize-js" plugin.js --wit wit --world-name plugin \
    --disable http fetch-event --out "$OUT/js-opensearch.wasm.tmp" >/dev/null)
  mv "$OUT/js-opensearch.wasm.tmp" "$OUT/js-opensearch.wasm"
}

mapfile -t py_inputs < <(inputs "$PY_SRC")
mapfile -t js_inputs < <(inputs "$JS_SRC")
build "$OUT/python-opensearch.wasm" "$(digest "${py_inputs[@]}" "$ROOT/tests/languages/build.sh")" build_py
build "$OUT/js-opensearch.wasm" "$(digest "${js_inputs[@]}" "$ROOT/tests/languages/build.sh")" build_js
