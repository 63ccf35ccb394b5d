#!/usr/bin/env bash
# Builds the project's container image from the Dockerfile with podman, for the tests that run
# it (tests/image.rs), on a machine that reaches no container registry.
#
#   scripts/image-testenv.sh build    install podman & co, make the base images, build the image
#
# Prints `export` lines for the tests on stdout; everything else goes to stderr. Idempotent: a
# second run costs seconds (the image build itself is cached by podman's layers and a cargo
# target directory of its own).
#
# Cache: ${VOD_CACHE:-$HOME/.cache/vscode-on-demand}/image
#   rootfs-run/, rootfs-build/,  Debian bookworm trees made by debootstrap (minbase)
#   rootfs-code/
#   target/                      the cargo target directory of the image's build stage
#
# Why this way:
# - The only registries reachable here are Debian's mirrors and the language registries, so
#   the Dockerfile's base images are made locally from Debian with debootstrap and tagged with
#   the names the Dockerfile uses, so `podman build` finds them without pulling:
#     gcr.io/distroless/cc-debian12:nonroot  bookworm minbase + ca-certificates, user
#                                            nonroot (65532) like distroless's
#     rust:1-bookworm                        bookworm minbase + gcc, libc6-dev; the Rust
#                                            toolchain is this machine's, mounted at build time
# - A code-server base image for instance pods (localhost/vod-code-server:test), as the widely
#   used code-server images are: bookworm minbase with the runtime libraries of the -dev
#   packages code-server's native modules are built against, a user `coder` (1000), this machine's Node.js and the code-server
#   that scripts/install-test-deps.sh installed, `code-server` on PATH.
# - The build stage runs with no network (`--network none`): the crates come from this
#   machine's cargo registry (filled by `cargo fetch --locked`, which may use the network),
#   mounted into the build with CARGO_NET_OFFLINE=true. The Dockerfile's defaults (network,
#   the official images) are what users get; only build arguments differ here.
# - runc, not crun (crun fails on this machine's cgroup layout), and default ulimits no higher
#   than this machine's hard limits (podman's own defaults exceed them, and every container
#   then fails to start), in /etc/containers/containers.conf unless that file is someone
#   else's.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE="${VOD_CACHE:-$HOME/.cache/vscode-on-demand}/image"
MIRROR="${VOD_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
IMAGE="${VOD_TEST_IMAGE_NAME:-localhost/vscode-on-demand:test}"
CODE_IMAGE=localhost/vod-code-server:test
CODE_SERVER_DIR="${VOD_CACHE:-$HOME/.cache/vscode-on-demand}/code-server"
BASE_RUN=gcr.io/distroless/cc-debian12:nonroot
BASE_BUILD=rust:1-bookworm
# Raised when what the base images hold changes, so that cached ones are made again.
BASE_VERSION=1
export DEBIAN_FRONTEND=noninteractive
# Limits for containers: the hard ones of this shell, but no more than 32768 processes: on the
# sandboxed kernels of our CI machines setting RLIMIT_NPROC above that is refused (EPERM) even
# under a higher hard limit, and runc then fails every container.
NOFILE=$(ulimit -Hn)
NPROC=$(ulimit -Hu)
if [[ "$NPROC" == unlimited ]] || ((NPROC > 32768)); then NPROC=32768; fi
ULIMITS=(--ulimit "nofile=$NOFILE:$NOFILE" --ulimit "nproc=$NPROC:$NPROC")

log() { printf '[image-testenv] %s\n' "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

install_tools() {
  # containerd and the CNI plugins are for the kubelet tests (scripts/kube-testenv.sh).
  local want=(podman buildah runc uidmap iptables slirp4netns debootstrap containerd
    containernetworking-plugins)
  local missing=() p
  for p in "${want[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
  done
  ((${#missing[@]} == 0)) && return 0
  log "apt-get install ${missing[*]}"
  apt-get update -qq >&2 || log "warning: apt-get update reported errors"
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
}

configure_podman() {
  local conf=/etc/containers/containers.conf marker="# written by vscode-on-demand's scripts/image-testenv.sh"
  if [[ -f "$conf" ]] && ! grep -qxF "$marker" "$conf"; then
    log "keeping $conf (not ours): it must select runc and ulimits within $NOFILE files, $NPROC processes"
    return 0
  fi
  local want
  want="$marker
[containers]
default_ulimits = [\"nofile=$NOFILE:$NOFILE\", \"nproc=$NPROC:$NPROC\"]

[engine]
runtime = \"runc\""
  [[ -f "$conf" && "$(cat "$conf")" == "$want" ]] && return 0
  mkdir -p /etc/containers
  printf '%s\n' "$want" >"$conf"
}

# debootstrap into DIR with the extra packages INCLUDE, once (DIR/.done marks a finished tree).
make_rootfs() {
  local dir=$1 include=$2
  [[ -f "$dir/.vod-done" ]] && return 0
  rm -rf "$dir"
  log "debootstrap bookworm into $dir (+ $include)"
  local t0=$SECONDS
  debootstrap --variant=minbase --include="$include" bookworm "$dir" "$MIRROR" >"$dir.log" 2>&1 ||
    {
      tail -n 20 "$dir.log" >&2
      die "debootstrap failed (log: $dir.log)"
    }
  rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/*
  # distroless's user, in both trees.
  echo 'nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin' >>"$dir/etc/passwd"
  echo 'nonroot:x:65532:' >>"$dir/etc/group"
  install -d -o 65532 -g 65532 -m 0700 "$dir/home/nonroot"
  touch "$dir/.vod-done"
  log "made $dir in $((SECONDS - t0)) s"
}

image_version() {
  podman image inspect --format '{{index .Labels "io.vscode-on-demand.base"}}' "$1" 2>/dev/null || true
}

# Imports the tree DIR as image NAME with Dockerfile-style CHANGES, unless it is there already.
import_image() {
  local name=$1 dir=$2
  shift 2
  [[ "$(image_version "$name")" == "$BASE_VERSION" ]] && return 0
  log "importing $dir as $name"
  local args=(--change "LABEL io.vscode-on-demand.base=$BASE_VERSION") c
  for c in "$@"; do args+=(--change "$c"); done
  tar -C "$dir" --exclude=./.vod-done -c . | podman import "${args[@]}" - "$name" >/dev/null
}

base_images() {
  mkdir -p "$CACHE"
  if [[ "$(image_version "$BASE_RUN")" != "$BASE_VERSION" ]]; then
    make_rootfs "$CACHE/rootfs-run" ca-certificates
    import_image "$BASE_RUN" "$CACHE/rootfs-run" "USER 65532:65532" "WORKDIR /home/nonroot" \
      "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
  fi
  if [[ "$(image_version "$BASE_BUILD")" != "$BASE_VERSION" ]]; then
    make_rootfs "$CACHE/rootfs-build" ca-certificates,gcc,libc6-dev
    import_image "$BASE_BUILD" "$CACHE/rootfs-build" \
      "ENV PATH=/usr/local/rust/bin:/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
      "ENV CARGO_HOME=/usr/local/cargo"
  fi
}

# The code-server base image: rebuilt when the base or code-server's version changes.
code_server_image() {
  local cs_version want tmp
  cs_version=$(node -p "require('$CODE_SERVER_DIR/node_modules/code-server/package.json').version" 2>/dev/null) || {
    log "no code-server under $CODE_SERVER_DIR (scripts/install-test-deps.sh): no $CODE_IMAGE"
    return 0
  }
  want="$BASE_VERSION-$cs_version-$(node --version)"
  [[ "$(image_version "$CODE_IMAGE")" == "$want" ]] && return 0
  make_rootfs "$CACHE/rootfs-code" ca-certificates,libsecret-1-0,libkrb5-3,libx11-6,libxkbfile1
  grep -q '^coder:' "$CACHE/rootfs-code/etc/passwd" || {
    echo 'coder:x:1000:1000:coder:/home/coder:/bin/bash' >>"$CACHE/rootfs-code/etc/passwd"
    echo 'coder:x:1000:' >>"$CACHE/rootfs-code/etc/group"
    install -d -o 1000 -g 1000 -m 0755 "$CACHE/rootfs-code/home/coder"
  }
  import_image localhost/vod-code-base:test "$CACHE/rootfs-code"
  log "building $CODE_IMAGE (code-server $cs_version, node $(node --version))"
  local t0=$SECONDS
  tmp=$(mktemp -d)
  cp "$(command -v node)" "$tmp/node"
  cp -a "$CODE_SERVER_DIR" "$tmp/code-server"
  printf '#!/bin/sh\nexec /usr/local/bin/node /usr/lib/code-server/node_modules/code-server/out/node/entry.js "$@"\n' \
    >"$tmp/code-server.sh"
  chmod 0755 "$tmp/code-server.sh"
  printf '%s\n' "FROM localhost/vod-code-base:test" \
    "COPY node /usr/local/bin/node" \
    "COPY code-server /usr/lib/code-server" \
    "COPY code-server.sh /usr/local/bin/code-server" \
    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    "USER 1000:1000" \
    "WORKDIR /home/coder" \
    "EXPOSE 8080" \
    'ENTRYPOINT ["code-server", "--bind-addr", "0.0.0.0:8080", "."]' \
    "LABEL io.vscode-on-demand.base=$want" >"$tmp/Containerfile"
  podman build --quiet --layers=false --network none -t "$CODE_IMAGE" "$tmp" >/dev/null
  rm -rf "$tmp"
  podman rmi localhost/vod-code-base:test >/dev/null 2>&1 || true
  log "built $CODE_IMAGE in $((SECONDS - t0)) s"
}

build_image() {
  local sysroot cargo_home
  sysroot=$(rustc --print sysroot) || die "rustc is not on PATH"
  cargo_home=${CARGO_HOME:-$HOME/.cargo}
  log "cargo fetch --locked (the build stage has no network)"
  cargo fetch --locked >&2
  mkdir -p "$CACHE/target"
  log "podman build -t $IMAGE (toolchain $("$sysroot/bin/rustc" --version))"
  local t0=$SECONDS old new
  old=$(podman image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)
  # Limits on the command line too: a --ulimit replaces all of containers.conf's, and buildah
  # has defaults of its own above them.
  # --layers=false: no intermediate image per build (the build stage holds ~350 MB) piling up
  # with every change; the mounted target directory is what makes a rebuild fast.
  podman build --layers=false --network none -t "$IMAGE" "${ULIMITS[@]}" \
    --build-arg CARGO_NET_OFFLINE=true \
    --build-arg CARGO_TARGET_DIR=/cargo-target \
    --volume "$sysroot:/usr/local/rust:ro" \
    --volume "$cargo_home/registry:/usr/local/cargo/registry" \
    --volume "$CACHE/target:/cargo-target" \
    . >&2
  new=$(podman image inspect --format '{{.Id}}' "$IMAGE")
  # The previous build, now untagged (a container still using it keeps it).
  if [[ -n "$old" && "$old" != "$new" ]]; then podman rmi "$old" >/dev/null 2>&1 || true; fi
  log "built $IMAGE in $((SECONDS - t0)) s"
}

# The pause image the kubelet of 1.20 asks for, from pause.c of the Kubernetes source that
# scripts/kube-testenv.sh downloaded (static, so the image holds nothing else).
PAUSE_IMAGE=k8s.gcr.io/pause:3.2
pause_image() {
  [[ "$(image_version "$PAUSE_IMAGE")" == "$BASE_VERSION" ]] && return 0
  local tarball
  tarball=$(ls "${VOD_CACHE:-$HOME/.cache/vscode-on-demand}"/kube/dl/kubernetes_*.orig.tar.gz 2>/dev/null | tail -n 1)
  if [[ -z "$tarball" ]]; then
    log "no Kubernetes source in the cache (scripts/kube-testenv.sh build): no pause image"
    return 0
  fi
  log "building $PAUSE_IMAGE from $(basename "$tarball")"
  local tmp
  tmp=$(mktemp -d)
  tar -xzf "$tarball" -C "$tmp" --wildcards --strip-components=4 '*/build/pause/linux/pause.c'
  gcc -Os -Wall -Werror -static -DVERSION=3.2-vod -o "$tmp/pause" "$tmp/pause.c"
  printf 'FROM scratch\nCOPY pause /pause\nUSER 65535:65535\nENTRYPOINT ["/pause"]\nLABEL io.vscode-on-demand.base=%s\n' \
    "$BASE_VERSION" >"$tmp/Containerfile"
  podman build --quiet --network none -t "$PAUSE_IMAGE" "$tmp" >/dev/null
  rm -rf "$tmp"
}

cmd_build() {
  mkdir -p "$CACHE"
  exec 9>"$CACHE/.build.lock"
  flock 9
  install_tools
  configure_podman
  base_images
  pause_image
  code_server_image
  build_image
  echo "export VOD_TEST_IMAGE=$IMAGE"
  echo "export VOD_TEST_CODE_SERVER_IMAGE=$CODE_IMAGE"
}

main() {
  case "${1:-}" in
  build) cmd_build ;;
  *)
    sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
    ;;
  esac
}

main "$@"; exit
