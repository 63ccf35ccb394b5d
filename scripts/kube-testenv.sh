#!/usr/bin/env bash
# Builds the binaries of a throw-away Kubernetes control plane (etcd +
# kube-apiserver + kube-controller-manager + kube-scheduler, plus kubectl) and a
# kubelet for the integration tests, which start and supervise them (testkit/src/control_plane/).
#
#   scripts/kube-testenv.sh build       build the binaries once into the cache
#
# Cache: ${VOD_CACHE:-$HOME/.cache/vscode-on-demand}/kube (bin/ stays; the
# ~4 GB build tree is removed after a successful build unless
# VOD_KUBE_KEEP_BUILD=1).
#
# Why these sources:
# - The only registries reachable from dev machines and CI are Debian's
#   mirrors (plus language registries), so Kubernetes comes from Debian's
#   `kubernetes` source package, which last shipped in bullseye (1.20.x).
#   Only its upstream tarball is used: it carries vendor/ and is all that
#   `make WHAT=...` needs, and some mirrors no longer serve the .dsc and
#   .debian.tar.xz of that upload. apt verifies the tarball against the
#   signed bullseye Sources index, so this is as trustworthy as
#   `apt-get source`.
# - Go 1.15 from bullseye (golang-1.15-go, the package's own Build-Depends)
#   instead of bookworm's Go 1.19: 1.20 vendors github.com/modern-go/reflect2
#   v1.0.1, which links against reflect.mapiterinit with its pre-1.18
#   signature. Built with Go >= 1.18 the binaries compile but crash or
#   corrupt memory when json-iterator encodes a map. Bookworm has no other
#   Go older than 1.18, so the bullseye binary package is the only way to
#   get a toolchain the code was written for. An apt pin keeps every other
#   bullseye package uninstallable, so the host stays pure bookworm.
# - etcd-server and openssl come straight from bookworm.
#
# When bullseye leaves deb.debian.org, set
# VOD_BULLSEYE_MIRROR=http://archive.debian.org/debian.
set -euo pipefail

CACHE="${VOD_CACHE:-$HOME/.cache/vscode-on-demand}/kube"
BIN="$CACHE/bin"
KUBE_BINS=(kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet)
BULLSEYE_MIRROR="${VOD_BULLSEYE_MIRROR:-http://deb.debian.org/debian}"
GO_ROOT=/usr/lib/go-1.15

log() { printf '[kube-testenv] %s\n' "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

usage() {
  sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

# ---------------------------------------------------------------- build ----

as_root() {
  if [[ $EUID -eq 0 ]]; then
    "$@"
  elif command -v sudo >/dev/null; then
    sudo "$@"
  else
    die "need root (or sudo) to run: $*"
  fi
}

# The binaries not yet in the cache: only those are built (a cache made before
# the kubelet was added builds just the kubelet).
missing_bins() {
  local b
  for b in "${KUBE_BINS[@]}"; do
    [[ -x "$BIN/$b" ]] || printf '%s\n' "$b"
  done
}

have_all_bins() {
  [[ -z "$(missing_bins)" ]]
}

pkg_installed() {
  [[ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" == installed ]]
}

# Writes FILE only when its content differs, so repeated builds do not
# touch apt's configuration (and do not force another `apt-get update`).
put_file() {
  local file=$1 content=$2
  if [[ -f "$file" ]] && [[ "$(cat "$file")" == "$content" ]]; then
    return 1
  fi
  printf '%s\n' "$content" | as_root tee "$file" >/dev/null ||
    die "cannot write $file"
}

# Read in full (no `grep -q`): with pipefail, a reader that stops early can
# fail the whole pipeline through SIGPIPE.
kube_src_versions() {
  apt-cache showsrc kubernetes 2>/dev/null | sed -n 's/^Version: //p'
}

setup_apt() {
  local changed=0
  put_file /etc/apt/sources.list.d/vod-bullseye.sources "Types: deb deb-src
URIs: $BULLSEYE_MIRROR
Suites: bullseye
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg" && changed=1
  # Negative priority: nothing from bullseye can be installed or pulled in
  # as a dependency, except the Go 1.15 toolchain itself (which exists only
  # there, so priority 100 makes it the candidate without ever competing
  # with a bookworm package).
  put_file /etc/apt/preferences.d/vod-bullseye.pref "Package: *
Pin: release n=bullseye
Pin-Priority: -10

Package: golang-1.15-go golang-1.15-src
Pin: release n=bullseye
Pin-Priority: 100" && changed=1
  if ((changed)) || [[ "$(kube_src_versions)" != *1.20.* ]]; then
    log "apt-get update"
    as_root apt-get update >&2 || log "warning: apt-get update reported errors"
  fi
  if [[ "$(kube_src_versions)" != *1.20.* ]]; then
    die "no kubernetes 1.20 source package from bullseye at $BULLSEYE_MIRROR;" \
      "if bullseye has moved to the archive, retry with" \
      "VOD_BULLSEYE_MIRROR=http://archive.debian.org/debian"
  fi
}

install_deps() {
  # rsync: kube's hack/ scripts copy generated code with it.
  # gcc/libc6-dev: only the three targets are built static (CGO_ENABLED=0);
  # the code generators `make` builds and runs first use cgo.
  local want=(golang-1.15-go etcd-server openssl make rsync gcc libc6-dev)
  local missing=() p
  for p in "${want[@]}"; do
    pkg_installed "$p" || missing+=("$p")
  done
  ((${#missing[@]} == 0)) && return 0
  log "apt-get install ${missing[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y --no-install-recommends "${missing[@]}" >&2
}

fetch_source() {
  local dl=$1 version tmp line url file _size hash
  version=$(kube_src_versions | grep '^1\.20\.' | sort -V | tail -n 1)
  log "kubernetes source package $version"
  # --print-uris lists only what is not already in the current directory,
  # hence a directory of its own for the query.
  tmp=$(mktemp -d)
  line=$(cd "$tmp" && apt-get source --print-uris "kubernetes=$version" |
    grep "\.orig\.tar\.")
  rmdir "$tmp"
  read -r url file _size hash <<<"$line"
  url=${url#\'}
  url=${url%\'}
  if [[ -f "$dl/$file" ]] && sha256sum --quiet -c <<<"${hash#SHA256:}  $dl/$file" 2>/dev/null; then
    log "using cached $file"
  else
    log "downloading $file"
    # apt-helper fetches with apt's own proxy settings and checks the hash
    # that the signed Sources index gives. As root it would hand the
    # download to the `_apt` user, who may not be able to write the cache.
    /usr/lib/apt/apt-helper -o APT::Sandbox::User=root \
      download-file "$url" "$dl/$file" "$hash" >&2
  fi
  printf '%s\n' "$dl/$file"
}

cmd_build() {
  mkdir -p "$CACHE"
  if have_all_bins; then
    printf '%s\n' "$BIN"
    return 0
  fi
  # Parallel test jobs may all call `build`; only one may compile.
  exec 9>"$CACHE/.build.lock"
  flock 9
  if have_all_bins; then
    printf '%s\n' "$BIN"
    return 0
  fi

  setup_apt
  install_deps
  [[ -x "$GO_ROOT/bin/go" ]] || die "$GO_ROOT/bin/go missing after installing golang-1.15-go"

  local dl="$CACHE/dl" work="$CACHE/build" tarball src t0 build=() what=() b
  mapfile -t build < <(missing_bins)
  for b in "${build[@]}"; do what+=("cmd/$b"); done
  mkdir -p "$dl"
  tarball=$(fetch_source "$dl")
  rm -rf "$work"
  src="$work/kubernetes"
  mkdir -p "$src"
  log "unpacking $(basename "$tarball")"
  tar -xzf "$tarball" -C "$src" --strip-components=1

  t0=$SECONDS
  log "compiling ${build[*]} with $("$GO_ROOT/bin/go" version) (about 15 min on 2 cores)"
  # GO111MODULE=off is forced by hack/lib/init.sh (GOPATH build over
  # vendor/), where any -mod flag in GOFLAGS is a hard error, so GOFLAGS is
  # cleared; GOPROXY=off makes any attempt to reach the network fail loudly.
  # The version stamped into the binaries comes from the tarball itself
  # (it was made by `git archive`), no git checkout needed.
  (
    cd "$src"
    env -u GOROOT -u GOPATH -u GOBIN \
      PATH="$GO_ROOT/bin:$PATH" GOFLAGS= GOPROXY=off GOSUMDB=off GOTOOLCHAIN=local \
      make WHAT="${what[*]}"
  ) >&2
  log "compiled in $((SECONDS - t0)) s"

  mkdir -p "$BIN"
  for b in "${build[@]}"; do
    install -m 0755 "$src/_output/local/bin/linux/amd64/$b" "$BIN/.$b.tmp"
    mv -f "$BIN/.$b.tmp" "$BIN/$b"
  done
  if [[ "${VOD_KUBE_KEEP_BUILD:-0}" != 1 ]]; then
    rm -rf "$work"
  fi
  log "$("$BIN/kubectl" version --client --short 2>/dev/null || true)"
  printf '%s\n' "$BIN"
}

main() {
  [[ $# -ge 1 ]] || usage
  local cmd=$1
  shift
  case "$cmd" in
  build)
    [[ $# -eq 0 ]] || usage
    cmd_build
    ;;
  *) usage ;;
  esac
}

# `exit` on the same line: bash reads a script as it runs it, so a file
# rewritten (git pull, an editor) during a long build would otherwise go on
# executing whatever now sits at the old offset.
main "$@"; exit
