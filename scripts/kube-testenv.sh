#!/usr/bin/env bash
# A throw-away Kubernetes control plane (etcd + kube-apiserver +
# kube-controller-manager, no kubelet) on 127.0.0.1 for integration tests.
#
#   scripts/kube-testenv.sh build       build the binaries once into the cache
#   scripts/kube-testenv.sh start DIR   run a control plane with state in DIR;
#                                       last stdout line: path of DIR/env
#   scripts/kube-testenv.sh stop DIR    stop what `start DIR` started
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
KUBE_BINS=(kube-apiserver kube-controller-manager kubectl)
BULLSEYE_MIRROR="${VOD_BULLSEYE_MIRROR:-http://deb.debian.org/debian}"
GO_ROOT=/usr/lib/go-1.15
START_TIMEOUT="${VOD_KUBE_START_TIMEOUT:-180}"
SERVICE_CIDR=10.96.0.0/16
# First address of SERVICE_CIDR: the in-cluster `kubernetes` Service IP,
# which the serving certificate has to cover.
SERVICE_IP=10.96.0.1
SA_ISSUER=https://kubernetes.default.svc

log() { printf '[kube-testenv] %s\n' "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

usage() {
  sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//' >&2
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

have_all_bins() {
  local b
  for b in "${KUBE_BINS[@]}"; do
    [[ -x "$BIN/$b" ]] || return 1
  done
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

  local dl="$CACHE/dl" work="$CACHE/build" tarball src t0
  mkdir -p "$dl"
  tarball=$(fetch_source "$dl")
  rm -rf "$work"
  src="$work/kubernetes"
  mkdir -p "$src"
  log "unpacking $(basename "$tarball")"
  tar -xzf "$tarball" -C "$src" --strip-components=1

  t0=$SECONDS
  log "compiling ${KUBE_BINS[*]} with $("$GO_ROOT/bin/go" version) (about 15 min on 2 cores)"
  # GO111MODULE=off is forced by hack/lib/init.sh (GOPATH build over
  # vendor/), where any -mod flag in GOFLAGS is a hard error, so GOFLAGS is
  # cleared; GOPROXY=off makes any attempt to reach the network fail loudly.
  # The version stamped into the binaries comes from the tarball itself
  # (it was made by `git archive`), no git checkout needed.
  (
    cd "$src"
    env -u GOROOT -u GOPATH -u GOBIN \
      PATH="$GO_ROOT/bin:$PATH" GOFLAGS= GOPROXY=off GOSUMDB=off GOTOOLCHAIN=local \
      make WHAT="cmd/kube-apiserver cmd/kube-controller-manager cmd/kubectl"
  ) >&2
  log "compiled in $((SECONDS - t0)) s"

  mkdir -p "$BIN"
  local b
  for b in "${KUBE_BINS[@]}"; do
    install -m 0755 "$src/_output/local/bin/linux/amd64/$b" "$BIN/.$b.tmp"
    mv -f "$BIN/.$b.tmp" "$BIN/$b"
  done
  if [[ "${VOD_KUBE_KEEP_BUILD:-0}" != 1 ]]; then
    rm -rf "$work"
  fi
  log "$("$BIN/kubectl" version --client --short 2>/dev/null || true)"
  printf '%s\n' "$BIN"
}

# ---------------------------------------------------------- start/stop ----

# Ports are picked below Linux's default ephemeral range (32768-60999) so
# that an outgoing connection cannot be holding them.
# Sets the variable named $1 (not printed: a $(...) subshell would lose
# TAKEN_PORTS and could hand out the same port twice).
declare -a TAKEN_PORTS=()
free_port() {
  local p i
  for ((i = 0; i < 200; i++)); do
    p=$((20000 + RANDOM % 12000))
    [[ " ${TAKEN_PORTS[*]} " == *" $p "* ]] && continue
    # A successful connect means something (on 127.0.0.1 or a wildcard
    # address) already listens there.
    if ! (: <>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      TAKEN_PORTS+=("$p")
      printf -v "$1" '%s' "$p"
      return 0
    fi
  done
  die "no free port found"
}

alive() {
  local pid=$1 state
  [[ -r "/proc/$pid/stat" ]] || return 1
  read -r _ _ state _ <"/proc/$pid/stat" || return 1
  # Without a reaping init (some containers) dead children linger as zombies.
  [[ "$state" != Z ]]
}

# Guards against PID reuse: every process started for DIR has DIR in its
# command line.
ours() {
  local pid=$1 dir=$2 cmdline
  alive "$pid" || return 1
  cmdline=$(tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
  [[ "$cmdline" == *"$dir/"* ]]
}

abs_dir() {
  mkdir -p "$1"
  (cd "$1" && pwd -P)
}

make_pki() {
  local pki=$1
  # Kept across restarts of the same DIR: the ServiceAccount token Secrets
  # stored in etcd are only valid for the key that signed them.
  [[ -f "$pki/tokens.csv" ]] && return 0
  log "creating certificates in $pki"
  mkdir -p "$pki"
  chmod 700 "$pki"
  (
    umask 077
    cd "$pki"
    cat >openssl.cnf <<EOF
[req]
distinguished_name = dn
prompt = no
[dn]
CN = vod-test
[ca_ext]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign,digitalSignature
subjectKeyIdentifier = hash
[server_ext]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
subjectAltName = IP:127.0.0.1,IP:$SERVICE_IP,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local
EOF
    {
      openssl req -x509 -new -config openssl.cnf -extensions ca_ext \
        -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 3650 \
        -subj /CN=vod-test-ca
      openssl req -new -config openssl.cnf -newkey rsa:2048 -nodes \
        -keyout apiserver.key -out apiserver.csr -subj /CN=kube-apiserver
      openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key \
        -set_serial "0x$(openssl rand -hex 16)" -days 3650 \
        -extfile openssl.cnf -extensions server_ext -out apiserver.crt
      openssl genrsa -out sa.key 2048
      openssl rsa -in sa.key -pubout -out sa.pub
    } 2>>openssl.log
    # Static tokens: the admin is in system:masters; the controller manager
    # gets its own user so the bootstrap RBAC role for it applies, as in a
    # real cluster.
    printf '%s,vod-admin,vod-admin,"system:masters"\n' "$(openssl rand -hex 32)" >tokens.csv.tmp
    printf '%s,system:kube-controller-manager,system:kube-controller-manager\n' \
      "$(openssl rand -hex 32)" >>tokens.csv.tmp
    mv tokens.csv.tmp tokens.csv
  )
}

write_kubeconfig() {
  local file=$1 server=$2 ca=$3 user=$4 token=$5
  (
    umask 077
    cat >"$file" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: vod-test
  cluster:
    server: $server
    certificate-authority-data: $(base64 -w0 <"$ca")
users:
- name: $user
  user:
    token: $token
contexts:
- name: vod-test
  context:
    cluster: vod-test
    user: $user
current-context: vod-test
EOF
  )
}

# Starts a process detached from the caller's session and stdio (a test
# harness reading our stdout must see EOF when `start` returns) and records
# its PID at once, so a failing `start` can still be cleaned up by `stop`.
spawn() {
  local dir=$1 name=$2
  shift 2
  setsid "$@" </dev/null >"$dir/$name.log" 2>&1 &
  printf '%s\n' "$!" >>"$dir/pids"
  log "$name started (pid $!), log $dir/$name.log"
}

check_running() {
  local dir=$1 pid
  while read -r pid; do
    [[ -n "$pid" ]] || continue
    if ! ours "$pid" "$dir"; then
      log "a process exited early; last lines of the logs:"
      tail -n 15 "$dir"/*.log >&2 || true
      return 1
    fi
  done <"$dir/pids"
}

wait_for() {
  local dir=$1 what=$2 deadline=$((SECONDS + START_TIMEOUT))
  shift 2
  until "$@" >/dev/null 2>&1; do
    check_running "$dir" || die "while waiting for $what"
    ((SECONDS < deadline)) || {
      tail -n 15 "$dir"/*.log >&2 || true
      die "timed out after ${START_TIMEOUT}s waiting for $what"
    }
    sleep 0.5
  done
}

# shellcheck disable=SC2317 # only called through wait_for
port_open() { (: <>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# shellcheck disable=SC2317 # only called through wait_for
readyz_ok() {
  [[ "$("$BIN/kubectl" --kubeconfig "$1" get --raw /readyz 2>/dev/null)" == ok ]]
}

# shellcheck disable=SC2317 # only called through wait_for
default_sa_ready() {
  [[ -n "$("$BIN/kubectl" --kubeconfig "$1" -n default get serviceaccount default \
    -o 'jsonpath={.secrets[0].name}' 2>/dev/null)" ]]
}

START_OK=0
START_DIR=
# A half-started environment would leak processes nobody knows about.
# shellcheck disable=SC2317 # only called by the EXIT trap
start_cleanup() {
  if ((START_OK == 0)) && [[ -n "$START_DIR" ]]; then
    cmd_stop "$START_DIR"
  fi
}

cmd_start() {
  [[ $# -eq 1 ]] || usage
  have_all_bins || die "no binaries in $BIN; run: $0 build"
  command -v etcd >/dev/null || die "etcd not found; run: $0 build"
  local dir pid
  dir=$(abs_dir "$1")
  if [[ -f "$dir/pids" ]]; then
    while read -r pid; do
      if [[ -n "$pid" ]] && ours "$pid" "$dir"; then
        die "$dir is already in use (pid $pid); run: $0 stop $dir"
      fi
    done <"$dir/pids"
  fi
  : >"$dir/pids"
  START_DIR=$dir
  trap start_cleanup EXIT

  local pki="$dir/pki"
  make_pki "$pki"
  local admin_token kcm_token
  admin_token=$(sed -n 's/^\([^,]*\),vod-admin,.*/\1/p' "$pki/tokens.csv")
  kcm_token=$(sed -n 's/^\([^,]*\),system:kube-controller-manager,.*/\1/p' "$pki/tokens.csv")

  local etcd_port peer_port api_port server
  free_port etcd_port
  free_port peer_port
  free_port api_port
  server="https://127.0.0.1:$api_port"

  mkdir -p "$dir/etcd"
  chmod 700 "$dir/etcd"
  spawn "$dir" etcd etcd \
    --name vod-test \
    --data-dir "$dir/etcd" \
    --listen-client-urls "http://127.0.0.1:$etcd_port" \
    --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$peer_port" \
    --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
    --initial-cluster "vod-test=http://127.0.0.1:$peer_port" \
    --logger zap --log-outputs stderr
  wait_for "$dir" "etcd on 127.0.0.1:$etcd_port" port_open "$etcd_port"

  # --endpoint-reconciler-type=none: 1.20 refuses loopback addresses in
  # core Endpoints, so reconciling the `kubernetes` Service's Endpoints to
  # 127.0.0.1 would only fail in a loop; the Service itself is still made.
  # --allow-privileged: no kubelet ever runs the pods, and tests may want
  # to create privileged pod specs.
  spawn "$dir" kube-apiserver "$BIN/kube-apiserver" \
    --bind-address=127.0.0.1 \
    --advertise-address=127.0.0.1 \
    --secure-port="$api_port" \
    --insecure-port=0 \
    --cert-dir="$pki" \
    --tls-cert-file="$pki/apiserver.crt" \
    --tls-private-key-file="$pki/apiserver.key" \
    --client-ca-file="$pki/ca.crt" \
    --token-auth-file="$pki/tokens.csv" \
    --authorization-mode=RBAC \
    --etcd-servers="http://127.0.0.1:$etcd_port" \
    --service-account-issuer="$SA_ISSUER" \
    --api-audiences="$SA_ISSUER" \
    --service-account-key-file="$pki/sa.pub" \
    --service-account-signing-key-file="$pki/sa.key" \
    --service-cluster-ip-range="$SERVICE_CIDR" \
    --endpoint-reconciler-type=none \
    --allow-privileged=true \
    --profiling=false

  write_kubeconfig "$dir/kubeconfig" "$server" "$pki/ca.crt" vod-admin "$admin_token"
  write_kubeconfig "$dir/kube-controller-manager.kubeconfig" "$server" "$pki/ca.crt" \
    system:kube-controller-manager "$kcm_token"
  wait_for "$dir" "kube-apiserver /readyz on $server" readyz_ok "$dir/kubeconfig"

  # --secure-port=0/--port=0: nothing scrapes its health or metrics, and
  # two test environments must not fight over its fixed default ports.
  # --leader-elect=false: a single instance, and acquiring the lease would
  # only delay start-up.
  spawn "$dir" kube-controller-manager "$BIN/kube-controller-manager" \
    --kubeconfig="$dir/kube-controller-manager.kubeconfig" \
    --bind-address=127.0.0.1 \
    --secure-port=0 \
    --port=0 \
    --leader-elect=false \
    --controllers='*' \
    --use-service-account-credentials=true \
    --service-account-private-key-file="$pki/sa.key" \
    --root-ca-file="$pki/ca.crt" \
    --cluster-signing-cert-file="$pki/ca.crt" \
    --cluster-signing-key-file="$pki/ca.key" \
    --service-cluster-ip-range="$SERVICE_CIDR" \
    --allocate-node-cidrs=false \
    --profiling=false
  # The ServiceAccount admission plugin of 1.20 rejects pods until the
  # namespace's `default` ServiceAccount has its token Secret, so wait for
  # that rather than for the ServiceAccount alone.
  wait_for "$dir" "ServiceAccount default/default and its token" \
    default_sa_ready "$dir/kubeconfig"

  {
    printf 'export KUBECONFIG=%q\n' "$dir/kubeconfig"
    printf 'export VOD_KUBE_BIN=%q\n' "$BIN"
    printf 'export VOD_KUBE_SERVER=%q\n' "$server"
    printf 'export VOD_KUBE_CA_FILE=%q\n' "$pki/ca.crt"
  } >"$dir/env"
  START_OK=1
  log "ready: $server"
  printf '%s\n' "$dir/env"
}

stop_one() {
  local pid=$1 dir=$2 deadline=$((SECONDS + 10))
  kill -TERM "$pid" 2>/dev/null || return 0
  while ours "$pid" "$dir"; do
    if ((SECONDS >= deadline)); then
      log "pid $pid ignored SIGTERM for 10s, killing it"
      kill -KILL "$pid" 2>/dev/null || true
      sleep 0.5
      return 0
    fi
    sleep 0.2
  done
}

cmd_stop() {
  [[ $# -eq 1 ]] || usage
  [[ -d "$1" ]] || return 0
  local dir pid i
  dir=$(cd "$1" && pwd -P)
  [[ -f "$dir/pids" ]] || return 0
  local pids=()
  while read -r pid; do
    if [[ -n "$pid" ]] && ours "$pid" "$dir"; then
      pids+=("$pid")
    fi
  done <"$dir/pids"
  # Reverse start order, one at a time: the controller manager and the
  # apiserver shut down cleanly only while what they talk to is still up.
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    stop_one "${pids[i]}" "$dir"
  done
  rm -f "$dir/pids"
  log "stopped $dir"
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
  start) cmd_start "$@" ;;
  stop) cmd_stop "$@" ;;
  *) usage ;;
  esac
}

# `exit` on the same line: bash reads a script as it runs it, so a file
# rewritten (git pull, an editor) during a long build would otherwise go on
# executing whatever now sits at the old offset.
main "$@"; exit
