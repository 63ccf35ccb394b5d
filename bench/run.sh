#!/usr/bin/env bash
# Measures vscode-on-demand's proxy path side by side with the limit (the load generator straight
# to the upstream) and with peers (nginx, haproxy, caddy, configurable-http-proxy, and Pingora
# outside the smoke mode), all in one run against the same upstream with the same certificate,
# and prints a table of absolute figures and ratios. See bench/README.md.
#
#   bash bench/run.sh           full run (about 15 minutes with the defaults)
#   bash bench/run.sh --smoke   a few seconds, correctness only; exits non-zero on failure
#   bash bench/run.sh --hold    starts everything, prints the URLs and PIDs, and waits (for
#                               profiling one target with perf while driving it by hand)
#
# Environment: BENCH_BIN_DIR (use the binaries there instead of building), BENCH_DURATION (seconds per measurement, 10), BENCH_RUNS (3; medians are
# reported), BENCH_PROXY_CPU (0) and BENCH_LOAD_CPU (1): the core every proxy is pinned to and
# the core shared by the load generator and the upstream. BENCH_IDLE_WS (WebSockets for case 6),
# BENCH_WAKES (wakes for case 7), BENCH_CASES (default "1 2 3 4 1mc 3h 8 5 6 7 ir"; "ir" counts
# instructions per request with callgrind; cases 1-4 always run together),
# BENCH_RESULTS (where the raw result lines go).
set -euo pipefail

MODE=full
case "${1:-}" in
  --smoke) MODE=smoke ;;
  --hold) MODE=hold ;;
  "") ;;
  *) echo "usage: $0 [--smoke | --hold]" >&2; exit 2 ;;
esac

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH="$ROOT/bench"
CACHE="${VOD_CACHE:-$HOME/.cache/vscode-on-demand}/bench"
CHP_VERSION=5.3.0
DURATION="${BENCH_DURATION:-10}"
RUNS="${BENCH_RUNS:-3}"
PROXY_CPU="${BENCH_PROXY_CPU:-0}"
LOAD_CPU="${BENCH_LOAD_CPU:-1}"
WAKES="${BENCH_WAKES:-7}"
CLK_TCK=$(getconf CLK_TCK)

log() { echo "[bench $(date +%H:%M:%S)] $*" >&2; }
die() {
  log "FAIL: $*"
  # The servers' own logs usually say why; they are deleted with the work directory.
  if [ -n "${WORK:-}" ]; then
    local f
    for f in "$WORK"/*/*.log; do
      [ -s "$f" ] && { echo "--- ${f#"$WORK"/} (last lines)" >&2; tail -n 5 "$f" >&2; }
    done
  fi
  exit 1
}

# ---- tools ------------------------------------------------------------------------------------

# Debian packages and one npm package, installed once; later runs only check they are there.
install_tools() {
  local pkgs=(nginx haproxy caddy wrk python3 curl)
  if [ "$MODE" != smoke ]; then pkgs+=(strace valgrind nghttp2-client cmake openssl); fi
  local missing=() p
  # A removed package keeps its configuration and `dpkg -s` still succeeds; ask for its state.
  for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q ' installed$' || missing+=("$p")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    log "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  CHP="$CACHE/chp-$CHP_VERSION/node_modules/.bin/configurable-http-proxy"
  if [ ! -x "$CHP" ]; then
    log "installing configurable-http-proxy $CHP_VERSION"
    mkdir -p "$CACHE/chp-$CHP_VERSION"
    npm install --prefix "$CACHE/chp-$CHP_VERSION" --no-audit --no-fund --loglevel=error \
      "configurable-http-proxy@$CHP_VERSION" >&2
    [ -x "$CHP" ] || die "configurable-http-proxy did not install"
  fi
  # Services the packages may have started would take the machine's cores during the run.
  local svc
  for svc in nginx haproxy caddy; do
    if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$svc" 2>/dev/null; then
      log "note: the system's $svc service is running; it does not take part"
    fi
  done
}

# The smoke mode reuses the debug build that the test suite just made (scripts/test.sh builds
# the same way, so nothing is built again after it); figures need release. vod-upstream is a
# binary of the test kit, the workspace member in testkit/. BENCH_BIN_DIR names a directory
# with both binaries instead, to compare two builds.
build() {
  if [ -n "${BENCH_BIN_DIR:-}" ]; then
    VOD="$BENCH_BIN_DIR/vscode-on-demand"
    UPSTREAM_BIN="$BENCH_BIN_DIR/vod-upstream"
    if [ ! -x "$VOD" ] || [ ! -x "$UPSTREAM_BIN" ]; then die "$BENCH_BIN_DIR lacks a binary"; fi
    return 0
  fi
  local target_dir
  target_dir=$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
  local dir=debug
  if [ "$MODE" = smoke ]; then
    (cd "$ROOT" && cargo build -q --workspace --all-targets)
  else
    dir=release
    (cd "$ROOT" && cargo build -q --release -p vscode-on-demand -p vod-testkit \
      --bin vscode-on-demand --bin vod-upstream)
  fi
  VOD="$target_dir/$dir/vscode-on-demand"
  UPSTREAM_BIN="$target_dir/$dir/vod-upstream"
}

# Pingora, the Rust proxy framework, as a peer: bench/pingora/ is a program of its own with its
# locked dependencies (about 4 minutes to build the first time, cached). Not in the smoke mode.
build_pingora() {
  PINGORA=""
  [ "$MODE" = smoke ] && return 0
  local target_dir="$CACHE/pingora-target"
  (cd "$BENCH/pingora" && CARGO_TARGET_DIR="$target_dir" cargo build -q --release --locked) ||
    die "bench/pingora did not build"
  PINGORA="$target_dir/release/vod-bench-pingora"
}

# ---- processes --------------------------------------------------------------------------------

PIDS=()
WORK=""

stop_pid() {
  local pid=$1 secs=${2:-10}
  kill "$pid" 2>/dev/null || return 0
  # vscode-on-demand stops its instances on SIGTERM; give it time, then insist.
  for _ in $(seq $((secs * 10))); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

cleanup() {
  local pid f
  for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
  # An instance outlives its server only if the server was killed; its group id is on disk.
  if [ -n "$WORK" ]; then
    for f in "$WORK"/*/instances/*/pgid; do
      [ -f "$f" ] && kill -9 -- "-$(cat "$f")" 2>/dev/null
    done
    rm -rf "$WORK"
  fi
  return 0
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Waits (bounded) until a URL answers at all.
wait_url() {
  local url=$1 secs=${2:-20} pid=${3:-}
  for _ in $(seq $((secs * 10))); do
    curl -sk -o /dev/null --max-time 1 "$url" && return 0
    if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then die "the server for $url exited"; fi
    sleep 0.1
  done
  die "$url did not answer within ${secs}s"
}

# User + system ticks of process $1, and of its child processes too when $2 is "tree" (nginx's
# workers; not for vscode-on-demand, whose children are the instances).
cpu_ticks() {
  local pids=("$1") p s f total=0
  if [ "${2:-}" = tree ]; then
    for p in $(pgrep -P "$1"); do pids+=("$p"); done
  fi
  for p in "${pids[@]}"; do
    s=$(<"/proc/$p/stat")
    s=${s##*) }
    read -r -a f <<<"$s"
    total=$((total + f[11] + f[12]))
  done
  echo "$total"
}

# The value of key=value in a line that bench/tool.py printed.
field() {
  local s=" $2 "
  s=${s#* "$1"=}
  echo "${s%% *}"
}

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

# Path routing in every run: the load tools reach one host name (host routing would need
# each instance's own host in every request); the data path per request is the same.
ROUTING=(--routing path)
VOD_COOKIE=__Secure-vod_tkn

# Starts a server on the proxy core with the bench's instance command; sets VOD_PID.
start_vod() {
  local dir=$1 port=$2 cmd=$3
  shift 3
  mkdir -p "$dir"
  # No sandbox: the measured path is the proxy's, and case 7's instance script and trace
  # live in the data directory, which a sandbox hides. Every load comes from 127.0.0.1, so the
  # per-client connection cap is raised to the total (case 6 holds 9 900 WebSockets).
  NO_COLOR=1 VOD_LOG=info taskset -c "$PROXY_CPU" "$VOD" serve --listen "127.0.0.1:$port" \
    --data-dir "$dir" --runtime command --command "$cmd" --sandbox none --max-connections 19500 \
    --max-connections-per-client 19500 "${ROUTING[@]}" "$@" \
    >"$dir/server.out" 2>"$dir/server.log" &
  VOD_PID=$!
  PIDS+=("$VOD_PID")
}

# The port in the newest instance address in a server's log.
logged_port() {
  sed 's/\x1b\[[0-9;]*m//g' "$1" | grep -o 'addr=127.0.0.1:[0-9]*' | tail -1 | cut -d: -f2
}

# Creates the bench instance and wakes it with a held request; sets INST_ID, INST_TOKEN and
# UP_PORT (the instance's port, which every peer proxies to as well).
create_and_wake() {
  local dir=$1 port=$2 json
  wait_url "https://127.0.0.1:$port/api/health" 180 "$VOD_PID"
  json=$("$VOD" create --user-id bench --data-dir "$dir" --json)
  INST_ID=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["instance_id"])' <<<"$json")
  INST_TOKEN=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])' <<<"$json")
  local body
  body=$(curl -sS --max-time 30 --cacert "$dir/certs/ca.crt" --resolve "localhost:$port:127.0.0.1" \
    -b "$VOD_COOKIE=$INST_TOKEN" "https://localhost:$port/instances/$INST_ID/small") ||
    die "the instance did not start"
  [ "$body" = hello ] || die "unexpected answer through vscode-on-demand: $body"
  UP_PORT=$(logged_port "$dir/server.log")
  [ -n "$UP_PORT" ] || die "no instance address in $dir/server.log"
}

# NGINX_WRAP, when set, runs nginx under another program (callgrind for the counts).
NGINX_WRAP=()
NGINX_WORKERS=1
# start_nginx PORT [DIR [NAME [UPSTREAM [LOCATION [CERT KEY]]]]]: the defaults are the main
# instance's; the other cases put nginx in front of their own instance, or with another
# certificate. Sets PEER_PID[NAME].
start_nginx() {
  local port=$1 dir=${2:-$WORK/nginx} name=${3:-nginx} upstream=${4:-127.0.0.1:$UP_PORT}
  local location=${5:-/instances/$INST_ID/} cert=${6:-$CERT} key=${7:-$KEY}
  mkdir -p "$dir/tmp"
  cat >"$dir/nginx.conf" <<EOF
# One worker on the proxy core, in the foreground, so its CPU time is one process's (case 1mc:
# a master and NGINX_WORKERS workers, counted together).
daemon off;
master_process $([ "$NGINX_WORKERS" -gt 1 ] && echo on || echo off);
worker_processes $NGINX_WORKERS;
worker_rlimit_nofile $NOFILE;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections $NOFILE; multi_accept on; }
http {
  access_log off;
  client_body_temp_path $dir/tmp/body;
  proxy_temp_path $dir/tmp/proxy;
  keepalive_requests 100000000;
  upstream instance {
    server $upstream;
    keepalive 256;
    keepalive_requests 100000000;
  }
  map \$http_upgrade \$connection_upgrade { default upgrade; '' ''; }
  server {
    listen 127.0.0.1:$port ssl http2;
    ssl_certificate $cert;
    ssl_certificate_key $key;
    ssl_protocols TLSv1.3;
    ssl_session_cache shared:SSL:10m;
    location $location {
      proxy_pass http://instance/;
      proxy_http_version 1.1;
      proxy_set_header Host \$host;
      proxy_set_header Upgrade \$http_upgrade;
      proxy_set_header Connection \$connection_upgrade;
      proxy_buffer_size 16k;
      proxy_buffers 8 16k;
      proxy_read_timeout 1h;
    }
  }
}
EOF
  taskset -c "$PROXY_CPU" "${NGINX_WRAP[@]}" nginx -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf" \
    2>"$dir/stderr.log" &
  PEER_PID[$name]=$!
  PIDS+=("$!")
}

start_haproxy() {
  local port=$1 dir="$WORK/haproxy"
  mkdir -p "$dir"
  cat "$CERT" "$KEY" >"$dir/server.pem"
  cat >"$dir/haproxy.cfg" <<EOF
global
  nbthread 1
  maxconn $(((NOFILE - 100) / 2))
  ssl-default-bind-options ssl-min-ver TLSv1.3
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  timeout tunnel 1h
frontend fe
  bind 127.0.0.1:$port ssl crt $dir/server.pem alpn h2,http/1.1
  default_backend instance
backend instance
  http-reuse always
  http-request replace-path /instances/[^/]+(/.*) \1
  server up 127.0.0.1:$UP_PORT
EOF
  taskset -c "$PROXY_CPU" haproxy -db -f "$dir/haproxy.cfg" >"$dir/haproxy.log" 2>&1 &
  PEER_PID[haproxy]=$!
  PIDS+=("$!")
}

start_caddy() {
  local port=$1 dir="$WORK/caddy"
  mkdir -p "$dir"
  cat >"$dir/Caddyfile" <<EOF
{
  admin off
  auto_https disable_redirects
  skip_install_trust
}
https://:$port {
  bind 127.0.0.1
  tls $CERT $KEY
  handle_path /instances/$INST_ID/* {
    reverse_proxy 127.0.0.1:$UP_PORT
  }
}
EOF
  # GOMAXPROCS follows the affinity mask only in newer Go releases; set it like tokio's.
  HOME="$dir" XDG_DATA_HOME="$dir" XDG_CONFIG_HOME="$dir" GOMAXPROCS=1 \
    taskset -c "$PROXY_CPU" caddy run --config "$dir/Caddyfile" --adapter caddyfile \
    >"$dir/caddy.log" 2>&1 &
  PEER_PID[caddy]=$!
  PIDS+=("$!")
}

start_pingora() {
  local port=$1 dir="$WORK/pingora"
  mkdir -p "$dir"
  taskset -c "$PROXY_CPU" "$PINGORA" "127.0.0.1:$port" "127.0.0.1:$UP_PORT" "$CERT" "$KEY" \
    "/instances/$INST_ID" >"$dir/pingora.log" 2>&1 &
  PEER_PID[pingora]=$!
  PIDS+=("$!")
}

start_chp() {
  local port=$1 dir="$WORK/chp"
  mkdir -p "$dir"
  CONFIGPROXY_AUTH_TOKEN=$(python3 -c 'import secrets; print(secrets.token_hex(16))') \
    taskset -c "$PROXY_CPU" "$CHP" --ip 127.0.0.1 --port "$port" --api-ip 127.0.0.1 \
    --api-port "$(free_port)" --default-target "http://127.0.0.1:$UP_PORT" \
    --ssl-key "$KEY" --ssl-cert "$CERT" --log-level warn >"$dir/chp.log" 2>&1 &
  PEER_PID[chp]=$!
  PIDS+=("$!")
}

# Starts the main server, its instance and every peer in front of the same upstream; sets
# URL_<target> (base URL up to the instance prefix) and PEER_PID.
# PEER_TREE[target]=tree: the target's CPU time includes its child processes'.
declare -A PEER_PID BASE PEER_TREE
start_all() {
  local port
  port=$(free_port)
  VOD_DIR="$WORK/vod"
  # taskset in the command puts the instance (the shared upstream) on the load core from exec.
  start_vod "$VOD_DIR" "$port" "taskset -c $LOAD_CPU $UPSTREAM_BIN --port {port}"
  PEER_PID[vod]=$VOD_PID
  create_and_wake "$VOD_DIR" "$port"
  CERT="$VOD_DIR/certs/server.crt"
  KEY="$VOD_DIR/certs/server.key"
  CA="$VOD_DIR/certs/ca.crt"
  COOKIE="$VOD_COOKIE=$INST_TOKEN"
  BASE[direct]="http://127.0.0.1:$UP_PORT/instances/$INST_ID"
  BASE[vod]="https://127.0.0.1:$port/instances/$INST_ID"
  PEER_PID[direct]=""
  local peers=(nginx haproxy caddy chp) t p
  [ -n "$PINGORA" ] && peers+=(pingora)
  TARGETS=(direct vod "${peers[@]}")
  for t in "${peers[@]}"; do
    p=$(free_port)
    "start_$t" "$p"
    BASE[$t]="https://127.0.0.1:$p/instances/$INST_ID"
  done
  for t in "${peers[@]}"; do
    wait_url "${BASE[$t]}/small" 20 "${PEER_PID[$t]}"
  done
  log "upstream 127.0.0.1:$UP_PORT; proxies on core $PROXY_CPU, load and upstream on core $LOAD_CPU"
}

ws_url() { local b=${BASE[$1]}; b=${b/#https:/wss:}; echo "${b/#http:/ws:}/ws"; }

tool() { taskset -c "$LOAD_CPU" python3 "$BENCH/tool.py" "$@"; }

# ---- measurements -----------------------------------------------------------------------------

RESULTS=""
put() { echo "$*" >>"$RESULTS"; }

# One wrk run against a target; prints "requests duration_us bytes p50 p99 errors cpu_ticks".
# WRK_WRAP, when set, runs wrk under another program (a mount namespace for case 3h).
WRK_WRAP=()
WRK_THREADS=1
wrk_once() {
  local target=$1 conns=$2 path=$3
  shift 3
  local pid=${PEER_PID[$target]} tree=${PEER_TREE[$target]:-} c0=0 c1=0 out line
  [ -n "$pid" ] && c0=$(cpu_ticks "$pid" "$tree")
  out=$(taskset -c "$LOAD_CPU" "${WRK_WRAP[@]}" wrk -t"$WRK_THREADS" -c"$conns" -d"${DURATION}s" --timeout 10s \
    -s "$BENCH/wrk-report.lua" -H "Cookie: $COOKIE" "$@" "${BASE[$target]}$path")
  [ -n "$pid" ] && c1=$(cpu_ticks "$pid" "$tree")
  line=$(grep '^WRK ' <<<"$out") || die "wrk printed no result for $target"
  local _ req dur bytes p50 p99 err serr
  read -r _ req dur bytes p50 p99 err serr <<<"$line"
  if [ "$serr" -gt 0 ] || [ "$req" -eq 0 ]; then
    die "$target answered $serr non-2xx responses out of $req on $path"
  fi
  [ "$err" -gt 0 ] && log "note: $target: $err socket errors on $path"
  echo "$req $dur $bytes $p50 $p99 $err $((c1 - c0))"
}

# Records the usual figures of one run under a case name, and the target's name or AS.
wrk_case() {
  local case=$1 target=$2 conns=$3 path=$4
  shift 4
  local r req dur bytes p50 p99 err ticks name=${AS:-$target}
  r=$(wrk_once "$target" "$conns" "$path" "$@")
  read -r req dur bytes p50 p99 err ticks <<<"$r"
  put "$case $name rps $(awk -v r="$req" -v d="$dur" 'BEGIN{printf "%.1f", r/d*1e6}')"
  put "$case $name mbps $(awk -v b="$bytes" -v d="$dur" 'BEGIN{printf "%.1f", b/d}')"
  put "$case $name p50_us $p50"
  put "$case $name p99_us $p99"
  if [ "$target" != direct ]; then
    put "$case $name cpu_us $(awk -v t="$ticks" -v r="$req" -v hz="$CLK_TCK" 'BEGIN{printf "%.1f", t/hz*1e6/r}')"
  fi
  LAST_P50=$p50 LAST_P99=$p99
}

TARGETS=()

case_http() {
  local round t d50 d99
  for round in $(seq "$RUNS"); do
    log "cases 1-4, round $round of $RUNS"
    for t in "${TARGETS[@]}"; do
      wrk_case c1 "$t" 64 /small
    done
    log "  case 1: one connection"
    for t in "${TARGETS[@]}"; do
      wrk_case c1lat "$t" 1 /small
      if [ "$t" = direct ]; then
        d50=$LAST_P50 d99=$LAST_P99
      else
        put "c1lat $t add50_us $((LAST_P50 - d50))"
        put "c1lat $t add99_us $((LAST_P99 - d99))"
      fi
    done
    log "  case 2: 64 KiB bodies"
    for t in "${TARGETS[@]}"; do
      wrk_case c2 "$t" 64 /big
    done
    log "  case 3: new connections"
    for t in "${TARGETS[@]}"; do
      # Connection: close makes wrk open a new connection, with a full handshake, per request.
      wrk_case c3 "$t" 64 /small -H "Connection: close"
    done
    log "  case 4: WebSockets"
    for t in "${TARGETS[@]}"; do
      local rtt tp pid=${PEER_PID[$t]} c0=0 c1=0
      rtt=$(tool ws-rtt "$(ws_url "$t")" --cafile "$CA" --cookie "$COOKIE" --duration "$DURATION")
      [ -n "$pid" ] && c0=$(cpu_ticks "$pid")
      tp=$(tool ws-throughput "$(ws_url "$t")" --cafile "$CA" --cookie "$COOKIE" --duration "$DURATION")
      [ -n "$pid" ] && c1=$(cpu_ticks "$pid")
      put "c4 $t rtt50_us $(field p50_us "$rtt")"
      put "c4 $t rtt99_us $(field p99_us "$rtt")"
      put "c4 $t mbps $(field mbps "$tp")"
      if [ -n "$pid" ]; then
        # Proxy CPU per MiB echoed (each MiB crosses the proxy once in each direction).
        put "c4 $t cpu_us $(awk -v t=$((c1 - c0)) -v n="$(field n "$tp")" -v hz="$CLK_TCK" 'BEGIN{printf "%.1f", t/hz*1e6/n}')"
      fi
    done
  done
}

# Case 3h: full handshakes when every instance has a host name of its own (host routing, each
# instance's certificate minted by the local CA the first time its name is asked for, then
# kept), against nginx serving one wildcard certificate from the same CA. Both proxy to this
# case's own instance. wrk runs in a mount namespace whose /etc/hosts names the instance's host.
case_host_handshakes() {
  local dir="$WORK/vod-host" port nport json id token host up round
  port=$(free_port)
  local ROUTING=(--routing host --public-url "https://vscode.local:$port")
  start_vod "$dir" "$port" "taskset -c $LOAD_CPU $UPSTREAM_BIN --port {port}"
  local vpid=$VOD_PID
  wait_url "https://127.0.0.1:$port/api/health" 180 "$vpid"
  # The server's own host name, for the CLI; the instance's, once known, for wrk.
  printf '127.0.0.1 localhost\n127.0.0.1 vscode.local\n' >"$WORK/hosts"
  local WRK_WRAP=(unshare -m sh -c 'mount --bind "$0" /etc/hosts && exec "$@"' "$WORK/hosts")
  json=$("${WRK_WRAP[@]}" "$VOD" create --user-id benchhost --data-dir "$dir" --json)
  id=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["instance_id"])' <<<"$json")
  token=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])' <<<"$json")
  host="$id.vscode.local"
  local body
  body=$(curl -sS --max-time 30 --cacert "$dir/certs/ca.crt" --resolve "$host:$port:127.0.0.1" \
    -b "__Host-vod_tkn=$token" "https://$host:$port/instances/$id/small") || die "the host-routed instance did not start"
  [ "$body" = hello ] || die "unexpected answer through host routing: $body"
  up=$(logged_port "$dir/server.log")
  [ -n "$up" ] || die "no instance address in $dir/server.log"
  # A wildcard certificate for nginx, signed by the same CA with the same key type.
  local wild="$WORK/wild"
  mkdir -p "$wild"
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=*.vscode.local" \
    -keyout "$wild/key.pem" -out "$wild/req.pem" 2>/dev/null
  printf 'subjectAltName=DNS:*.vscode.local\nextendedKeyUsage=serverAuth\n' >"$wild/ext"
  openssl x509 -req -in "$wild/req.pem" -CA "$dir/certs/ca.crt" -CAkey "$dir/certs/ca.key" \
    -CAcreateserial -days 2 -extfile "$wild/ext" -out "$wild/cert.pem" 2>/dev/null ||
    die "could not make the wildcard certificate"
  nport=$(free_port)
  start_nginx "$nport" "$WORK/nginx-wild" nginxh "127.0.0.1:$up" "/instances/$id/" "$wild/cert.pem" "$wild/key.pem"
  PEER_PID[vodh]=$vpid
  BASE[vodh]="https://$host:$port/instances/$id"
  BASE[nginxh]="https://$host:$nport/instances/$id"
  echo "127.0.0.1 $host" >>"$WORK/hosts"
  curl -s --max-time 10 --retry 20 --retry-connrefused --retry-max-time 20 \
    --cacert "$dir/certs/ca.crt" --resolve "$host:$nport:127.0.0.1" \
    -o /dev/null "https://$host:$nport/instances/$id/small" || die "nginx with the wildcard certificate did not answer"
  for round in $(seq "$RUNS"); do
    log "case 3h: new connections to an instance's own host, round $round of $RUNS"
    COOKIE="__Host-vod_tkn=$token" AS=vod wrk_case c3h vodh 64 /small -H "Connection: close"
    AS=nginx wrk_case c3h nginxh 64 /small -H "Connection: close"
  done
  stop_pid "${PEER_PID[nginxh]}"
  stop_pid "$vpid"
}

# Case 8: the instance listens on a Unix socket (what the local backend does with {socket}, so
# that no other local process can reach it over TCP); nginx proxies to the same socket.
case_unix() {
  local dir="$WORK/vod-unix" port nport sock round
  port=$(free_port)
  start_vod "$dir" "$port" "taskset -c $LOAD_CPU $UPSTREAM_BIN --socket {socket}"
  local vpid=$VOD_PID INST_ID INST_TOKEN UP_PORT
  wait_url "https://127.0.0.1:$port/api/health" 180 "$vpid"
  local json body
  json=$("$VOD" create --user-id benchunix --data-dir "$dir" --json)
  INST_ID=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["instance_id"])' <<<"$json")
  INST_TOKEN=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])' <<<"$json")
  body=$(curl -sS --max-time 30 --cacert "$dir/certs/ca.crt" -b "$VOD_COOKIE=$INST_TOKEN" \
    "https://127.0.0.1:$port/instances/$INST_ID/small") || die "the Unix-socket instance did not start"
  [ "$body" = hello ] || die "unexpected answer from the Unix-socket instance: $body"
  sock=$(find "$dir" -type s | head -1)
  [ -n "$sock" ] || die "no Unix socket under $dir"
  nport=$(free_port)
  start_nginx "$nport" "$WORK/nginx-unix" nginxu "unix:$sock"
  PEER_PID[vodu]=$vpid
  BASE[vodu]="https://127.0.0.1:$port/instances/$INST_ID"
  BASE[nginxu]="https://127.0.0.1:$nport/instances/$INST_ID"
  wait_url "${BASE[nginxu]}/small" 20 "${PEER_PID[nginxu]}"
  for round in $(seq "$RUNS"); do
    log "case 8: Unix-socket upstream, round $round of $RUNS"
    COOKIE="$VOD_COOKIE=$INST_TOKEN" AS=vod wrk_case c8 vodu 64 /small
    AS=nginx wrk_case c8 nginxu 64 /small
  done
  stop_pid "${PEER_PID[nginxu]}"
  stop_pid "$vpid"
}

# Case 1mc: case 1 with both cores for everyone, competing: vscode-on-demand's multi-threaded
# runtime (two workers, as it runs when its affinity holds two cores), nginx with two worker
# processes, wrk with two threads and the upstream, all on the same two cores. Both proxy to
# this case's own instance.
case_multicore() {
  local both="$PROXY_CPU,$LOAD_CPU"
  local PROXY_CPU=$both LOAD_CPU=$both WRK_THREADS=2 NGINX_WORKERS=2
  local dir="$WORK/vod-mc" port nport round INST_ID INST_TOKEN UP_PORT
  port=$(free_port)
  start_vod "$dir" "$port" "taskset -c $LOAD_CPU $UPSTREAM_BIN --port {port}"
  local vpid=$VOD_PID
  create_and_wake "$dir" "$port"
  nport=$(free_port)
  start_nginx "$nport" "$WORK/nginx-mc" nginxmc
  PEER_TREE[nginxmc]=tree
  PEER_PID[vodmc]=$vpid
  BASE[vodmc]="https://127.0.0.1:$port/instances/$INST_ID"
  BASE[nginxmc]="https://127.0.0.1:$nport/instances/$INST_ID"
  wait_url "${BASE[nginxmc]}/small" 20 "${PEER_PID[nginxmc]}"
  for round in $(seq "$RUNS"); do
    log "case 1mc: two cores for everyone, round $round of $RUNS"
    COOKIE="$VOD_COOKIE=$INST_TOKEN" AS=vod wrk_case c1mc vodmc 64 /small
    AS=nginx wrk_case c1mc nginxmc 64 /small
  done
  stop_pid "${PEER_PID[nginxmc]}"
  stop_pid "$vpid"
}

# Case 6 runs first, on fresh processes, so earlier load has not grown their heaps.
case_idle_ws() {
  local t out
  for t in vod nginx haproxy; do
    log "case 6: $IDLE_WS idle WebSockets through $t"
    out=$(tool ws-idle "$(ws_url "$t")" --cafile "$CA" --cookie "$COOKIE" --n "$IDLE_WS" \
      --pid "${PEER_PID[$t]}" --max-seconds 180)
    log "  $out"
    put "c6 $t bytes_per_conn $(field bytes_per_conn "$out")"
    put "c6 $t conns $(field n "$out")"
  done
}

# Copies into $1 a data directory holding $2 instances (one user each), made once per count by
# a server of its own through the API, so the stored form is the server's own.
seeded_dir() {
  local dir=$1 n=$2 seed="$WORK/seed$2" port
  if [ ! -d "$seed" ]; then
    port=$(free_port)
    start_vod "$seed" "$port" "true {port}"
    wait_url "https://127.0.0.1:$port/api/health" 180 "$VOD_PID"
    log "creating $n instances through the API"
    tool seed "https://127.0.0.1:$port" "$n" --cafile "$seed/certs/ca.crt" \
      --token-file "$seed/admin-token" --concurrency 32 >"$seed/seed.out" ||
      die "seeding $n instances failed: $(tail -1 "$seed/seed.out")"
    stop_pid "$VOD_PID" 60
  fi
  mkdir -p "$(dirname "$dir")"
  cp -a "$seed" "$dir"
}

# Case 5: three servers that differ only in how many instances they know.
case_scale() {
  local n dir port round
  # Its servers' instances are its own: the main instance stays the one later cases proxy to.
  local INST_ID INST_TOKEN UP_PORT
  declare -A SPID SURL SCOOKIE
  for n in 10 10000 100000; do
    dir="$WORK/scale$n"
    seeded_dir "$dir" $((n - 1))
    port=$(free_port)
    start_vod "$dir" "$port" "taskset -c $LOAD_CPU $UPSTREAM_BIN --port {port}"
    SPID[$n]=$VOD_PID
    create_and_wake "$dir" "$port"
    SURL[$n]="https://127.0.0.1:$port/instances/$INST_ID"
    SCOOKIE[$n]="$VOD_COOKIE=$INST_TOKEN"
  done
  local order=(10 10000 100000)
  for round in $(seq "$RUNS"); do
    log "case 5, round $round of $RUNS"
    # Each round starts with another server, so no size always runs first or last.
    for n in "${order[@]}"; do
      PEER_PID[vod$n]=${SPID[$n]}
      BASE[vod$n]=${SURL[$n]}
      COOKIE=${SCOOKIE[$n]} wrk_case c5 "vod$n" 64 /small
    done
    order=("${order[@]:1}" "${order[0]}")
  done
  for n in 10 10000 100000; do
    put "c5 vod$n rss_kib $(rss_kib "${SPID[$n]}")"
    stop_pid "${SPID[$n]}"
  done
}

# Instructions per proxied request, counted by callgrind: unlike time, the count does not
# move with the machine's load, so it shows what a change to the data path did, and whether
# routing depends on the number of instances, when the timed figures cannot.
ir_run() {
  local dir=$1 n=$2 reqs=$3 port INST_ID INST_TOKEN UP_PORT
  if [ "$n" -gt 1 ]; then seeded_dir "$dir" $((n - 1)); fi
  mkdir -p "$dir"
  port=$(free_port)
  NO_COLOR=1 taskset -c "$PROXY_CPU" valgrind --tool=callgrind --callgrind-out-file=/dev/null \
    --log-file="$dir/callgrind.log" "$VOD" serve --listen "127.0.0.1:$port" --data-dir "$dir" "${ROUTING[@]}" \
    --runtime command --command "taskset -c $LOAD_CPU $UPSTREAM_BIN --port {port}" --sandbox none \
    >"$dir/server.out" 2>"$dir/server.log" &
  VOD_PID=$!
  PIDS+=("$VOD_PID")
  create_and_wake "$dir" "$port"
  ir_load "$port" "$VOD_COOKIE=$INST_TOKEN" "$reqs"
  stop_pid "$VOD_PID" 120
  ir_total "$dir"
}

# h2load's case-1 requests through the proxy on $1 with cookie $2; fails unless all succeed.
ir_load() {
  local port=$1 cookie=$2 reqs=$3 out
  out=$(taskset -c "$LOAD_CPU" h2load --h1 -c 64 -n "$reqs" -H "cookie: $cookie" \
    "https://127.0.0.1:$port/instances/$INST_ID/small")
  grep -q "$reqs succeeded" <<<"$out" || die "h2load under callgrind: $(grep '^requests:' <<<"$out")"
}

# The instructions callgrind counted in the process that logged to $1/callgrind.log.
ir_total() { grep -o 'Collected : [0-9]*' "$1/callgrind.log" | awk '{print $3}'; }

# The same count for nginx, in front of the main instance, for a comparison per request.
ir_nginx() {
  local reqs=$1 port dir="$WORK/ir-nginx-$1"
  port=$(free_port)
  mkdir -p "$dir"
  NGINX_WRAP=(valgrind --tool=callgrind --callgrind-out-file=/dev/null --log-file="$dir/callgrind.log")
  start_nginx "$port" "$dir"
  NGINX_WRAP=()
  wait_url "https://127.0.0.1:$port/instances/$INST_ID/small" 60 "${PEER_PID[nginx]}"
  ir_load "$port" "$COOKIE" "$reqs"
  stop_pid "${PEER_PID[nginx]}" 60
  ir_total "$dir"
}

# The difference between a short and a long run is the cost of the extra requests alone,
# without startup, loading the instances and the handshakes.
case_instructions() {
  local n a b
  log "instructions per request through nginx (callgrind)"
  a=$(ir_nginx 1000)
  b=$(ir_nginx 11000)
  if [ -z "$a" ] || [ -z "$b" ]; then die "callgrind reported no totals for nginx"; fi
  put "ir nginx per_req $(((b - a) / 10000))"
  for n in 10 100000; do
    log "instructions per request with $n instances (callgrind)"
    a=$(ir_run "$WORK/ir$n-short" "$n" 1000)
    b=$(ir_run "$WORK/ir$n-long" "$n" 11000)
    if [ -z "$a" ] || [ -z "$b" ]; then die "callgrind reported no totals"; fi
    put "ir vod$n per_req $(((b - a) / 10000))"
  done
}

# Case 7: strace stamps the instance's listen() (the moment it can accept), the client stamps
# the first byte of the request the proxy held meanwhile; both read the same wall clock.
case_wake() {
  local dir="$WORK/wake" port out first listen trace
  port=$(free_port)
  trace="$dir/listen.trace"
  mkdir -p "$dir"
  # Starts of random length, so that readiness does not line up with the probe schedule.
  cat >"$dir/upstream.sh" <<EOF
#!/usr/bin/env bash
exec strace -qq -f -ttt -e trace=listen -A -o $trace $UPSTREAM_BIN --port "\$1" --startup-delay-ms \$((200 + RANDOM % 100))
EOF
  chmod +x "$dir/upstream.sh"
  start_vod "$dir" "$port" "$dir/upstream.sh {port}"
  create_and_wake "$dir" "$port"
  local ms=()
  for _ in $(seq "$WAKES"); do
    "$VOD" stop --instance-id "$INST_ID" --data-dir "$dir" >/dev/null
    out=$(tool held "https://127.0.0.1:$port/instances/$INST_ID/small" --cafile "$dir/certs/ca.crt" \
      --cookie "$VOD_COOKIE=$INST_TOKEN")
    first=$(field first_byte "$out")
    listen=$(grep 'listen(' "$trace" | tail -1 | grep -o '[0-9]\{9,\}\.[0-9]\{6\}' | head -1)
    [ -n "$listen" ] || die "no listen() in $trace"
    ms+=("$(awk -v a="$first" -v b="$listen" 'BEGIN{printf "%.3f", (a-b)*1000}')")
  done
  log "case 7 wake overheads (ms): ${ms[*]}"
  printf '%s\n' "${ms[@]}" | sort -n | awk '{v[NR]=$1} END{printf "c7 vod wake_ms %s\nc7 vod wake_max_ms %s\nc7 vod runs %d\n", (NR%2 ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2), v[NR], NR}' >>"$RESULTS"
  stop_pid "$VOD_PID"
}

# Whether BENCH_CASES (default: all) names case $1; cases 1-4 share their rounds.
wanted() { [[ " ${BENCH_CASES:-1 2 3 4 1mc 3h 8 5 6 7 ir} " == *" $1 "* ]]; }

machine_note() {
  local model
  model=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')
  echo "machine: $(nproc) cores ($model), $(free -g | awk '/^Mem:/ {print $2}') GiB; load average before the run: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "pinning: every proxy alone on core $PROXY_CPU (nginx 1 worker, haproxy 1 thread, caddy GOMAXPROCS=1, tokio single-threaded: affinity of 1 core); wrk / client and the upstream on core $LOAD_CPU"
  echo "TLS 1.3, one ECDSA P-256 certificate for all; wrk -t1, HTTP/1.1 keep-alive unless noted; ${RUNS} x ${DURATION}s per figure, medians; cases 4 and 6 use bench/tool.py as client"
}

# ---- smoke ------------------------------------------------------------------------------------

smoke() {
  local t body size
  for t in "${TARGETS[@]}"; do
    body=$(curl -sS --max-time 10 --cacert "$CA" -b "$COOKIE" "${BASE[$t]}/small" 2>&1) ||
      die "$t: /small failed: $body"
    [ "$body" = hello ] || die "$t: /small answered $body"
    size=$(curl -sS --max-time 10 --cacert "$CA" -b "$COOKIE" -o /dev/null -w '%{size_download}' \
      "${BASE[$t]}/big") || die "$t: /big failed"
    [ "$size" = 65536 ] || die "$t: /big gave $size bytes"
    tool ws-echo "$(ws_url "$t")" --cafile "$CA" --cookie "$COOKIE" >/dev/null ||
      die "$t: WebSocket echo failed"
    log "ok: $t (small, 64 KiB, WebSocket echo)"
  done
  # The load generator's path through the proxy, so the full mode's parsing cannot rot.
  DURATION=1 wrk_once vod 4 /small >/dev/null
  log "ok: wrk through vscode-on-demand"
  # Unauthenticated requests must not get through.
  [ "$(curl -sS --cacert "$CA" -o /dev/null -w '%{http_code}' "${BASE[vod]}/small")" = 401 ] ||
    die "vod: a request without the cookie was not refused"
  log "ok: vod refuses a request without the token"
  # The scale cases' seeding: instances made through the API, loaded by another server.
  local dir="$WORK/smoke-seeded" port listed
  seeded_dir "$dir" 3
  port=$(free_port)
  start_vod "$dir" "$port" "true {port}"
  wait_url "https://127.0.0.1:$port/api/health" 60 "$VOD_PID"
  listed=$(curl -sS --cacert "$dir/certs/ca.crt" -H "authorization: Bearer $(cat "$dir/admin-token")" \
    "https://127.0.0.1:$port/api/instances" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["instances"]))')
  [ "$listed" = 3 ] || die "a server on a seeded directory lists $listed instances, not 3"
  stop_pid "$VOD_PID"
  log "ok: instances seeded through the API load in another server"
}

# ---- main -------------------------------------------------------------------------------------

main() {
  local t0=$SECONDS
  install_tools
  build
  build_pingora
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/vod-bench.XXXXXX")
  # Case 6 needs two descriptors per WebSocket in the proxy; the hard limit decides how many.
  ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
  NOFILE=$(ulimit -n)
  [ "$NOFILE" = unlimited ] && NOFILE=65536
  IDLE_WS="${BENCH_IDLE_WS:-$(((NOFILE - 200) / 2 < 10000 ? (NOFILE - 200) / 2 : 10000))}"
  RESULTS="${BENCH_RESULTS:-$CACHE/last-results.txt}"
  mkdir -p "$(dirname "$RESULTS")"
  : >"$RESULTS"
  start_all
  if [ "$MODE" = hold ]; then
    local t
    for t in "${TARGETS[@]}"; do echo "$t ${BASE[$t]} pid=${PEER_PID[$t]}"; done
    echo "cookie: $COOKIE   CA: $CA"
    log "holding for ${BENCH_HOLD_SECONDS:-1800}s; Ctrl-C stops everything"
    # In the background, so that a signal interrupts the wait and the trap cleans up at once.
    sleep "${BENCH_HOLD_SECONDS:-1800}" &
    wait $!
    return 0
  fi
  if [ "$MODE" = smoke ]; then
    smoke
    log "smoke passed in $((SECONDS - t0))s"
    return 0
  fi
  local note
  note=$(machine_note)
  if wanted 6; then case_idle_ws; fi
  if wanted 1 || wanted 2 || wanted 3 || wanted 4; then case_http; fi
  if wanted 1mc; then case_multicore; fi
  if wanted 3h; then case_host_handshakes; fi
  if wanted 8; then case_unix; fi
  if wanted 5; then case_scale; fi
  if wanted ir; then case_instructions; fi
  if wanted 7; then case_wake; fi
  echo
  echo "$note"
  echo
  python3 "$BENCH/tool.py" report "$RESULTS"
  echo
  log "done in $((SECONDS - t0))s; raw results in $RESULTS"
}

main
