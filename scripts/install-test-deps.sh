#!/usr/bin/env bash
# Installs what the test suite needs on a Debian machine, idempotently, into caches outside the
# clone so that a second run costs seconds:
#   - Debian chromium (headless browser for the end-to-end tests) and bubblewrap (the local
#     backend's sandbox)
#   - code-server (a real VS Code server) under $VOD_CACHE/code-server
#   - playwright-core (drives chromium) under $VOD_CACHE/node
#   - sslyze (the TLS scan) in a Python virtual environment under $VOD_CACHE/sslyze
#   - schemathesis (property-based runs against the API document) in one under
#     $VOD_CACHE/schemathesis
# Prints `export` lines for the tests on stdout; everything else goes to stderr.
set -euo pipefail

CACHE="${VOD_CACHE:-$HOME/.cache/vscode-on-demand}"
CODE_SERVER_VERSION="${CODE_SERVER_VERSION:-4.100.3}"
PLAYWRIGHT_VERSION="${PLAYWRIGHT_VERSION:-1.64.1}"
SSLYZE_VERSION="${SSLYZE_VERSION:-6.3.1}"
SCHEMATHESIS_VERSION="${SCHEMATHESIS_VERSION:-4.32.5}"
export DEBIAN_FRONTEND=noninteractive

apt_pkgs=(chromium bubblewrap python3-venv ripgrep pkg-config libkrb5-dev libx11-dev libxkbfile-dev libsecret-1-dev)
missing=()
for p in "${apt_pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing Debian packages: ${missing[*]}" >&2
  apt-get update -qq >&2
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi

cs_bin="$CACHE/code-server/node_modules/.bin/code-server"
if [ ! -x "$cs_bin" ]; then
  echo "installing code-server $CODE_SERVER_VERSION (native modules compile; several minutes)" >&2
  command -v node-gyp >/dev/null 2>&1 || npm install -g --silent node-gyp@12 >&2
  # @vscode/ripgrep fetches a prebuilt rg from outside the package registries unless its
  # download cache already holds one; Debian's rg packed under the expected names fills it.
  tmp="${TMPDIR:-/tmp}"
  pack=$(mktemp -d)
  cp "$(command -v rg)" "$pack/rg"
  tar -czf "$pack/rg.tgz" -C "$pack" rg
  for v in 1.15.9 1.15.10 1.15.11 1.15.12 1.15.13 1.15.14; do
    mkdir -p "$tmp/vscode-ripgrep-cache-$v"
    for arch in x86_64 aarch64; do
      cp "$pack/rg.tgz" "$tmp/vscode-ripgrep-cache-$v/ripgrep-v13.0.0-10-$arch-unknown-linux-musl.tar.gz"
    done
  done
  rm -rf "$pack"
  mkdir -p "$CACHE/code-server"
  npm_config_yes=true npm_config_unsafe_perm=true \
    npm install --prefix "$CACHE/code-server" --no-audit --no-fund --loglevel=error \
    "code-server@$CODE_SERVER_VERSION" >&2
  [ -x "$cs_bin" ] || { echo "code-server install failed: $cs_bin is missing" >&2; exit 1; }
fi

if [ ! -d "$CACHE/node/node_modules/playwright-core" ]; then
  echo "installing playwright-core $PLAYWRIGHT_VERSION" >&2
  mkdir -p "$CACHE/node"
  npm install --prefix "$CACHE/node" --no-audit --no-fund --loglevel=error \
    "playwright-core@$PLAYWRIGHT_VERSION" >&2
fi

sslyze_bin="$CACHE/sslyze/bin/sslyze"
if [ ! -x "$sslyze_bin" ] || ! "$CACHE/sslyze/bin/pip" show sslyze 2>/dev/null | grep -qx "Version: $SSLYZE_VERSION"; then
  echo "installing sslyze $SSLYZE_VERSION" >&2
  python3 -m venv "$CACHE/sslyze" >&2
  "$CACHE/sslyze/bin/pip" install -q "sslyze==$SSLYZE_VERSION" >&2
fi

st_bin="$CACHE/schemathesis/bin/schemathesis"
if [ ! -x "$st_bin" ] || ! "$CACHE/schemathesis/bin/pip" show schemathesis 2>/dev/null | grep -qx "Version: $SCHEMATHESIS_VERSION"; then
  echo "installing schemathesis $SCHEMATHESIS_VERSION" >&2
  python3 -m venv "$CACHE/schemathesis" >&2
  "$CACHE/schemathesis/bin/pip" install -q "schemathesis==$SCHEMATHESIS_VERSION" >&2
fi

echo "export VOD_TEST_CODE_SERVER=$cs_bin"
echo "export VOD_TEST_CHROMIUM=$(command -v chromium)"
echo "export VOD_TEST_NODE_PATH=$CACHE/node/node_modules"
echo "export VOD_TEST_SSLYZE=$sslyze_bin"
echo "export VOD_TEST_SCHEMATHESIS=$st_bin"
