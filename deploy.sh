#!/usr/bin/env bash
# Deploys vscode-on-demand into a Kubernetes cluster (minikube by default), idempotently:
#   ./deploy.sh                      build, deploy, print URL and admin token
#   ./deploy.sh --delete             remove everything except users' workspaces
#   ./deploy.sh --delete --workspaces   remove the workspaces too
# Environment: VOD_ROUTING (path; host gives each instance its own origin https://<id>.<host>
# and needs wildcard DNS for *.<host>: see README "Trust model"),
# VOD_NAMESPACE (vscode-on-demand: the proxy, its Secrets and Lease),
# VOD_INSTANCE_NAMESPACE (vscode-instances: the instances), VOD_HOST (vscode.local), VOD_IMAGE
# (vscode-on-demand:latest), VOD_CERT_DIR (certs), KUBECTL (kubectl), VOD_BIN (a built
# vscode-on-demand; default: cargo build --release), VOD_SKIP_MINIKUBE=1 (use the current
# context as is), VOD_SKIP_IMAGE=1 (the image is already in the cluster), VOD_SKIP_HOSTS=1
# (leave /etc/hosts alone).
set -euo pipefail
cd "$(dirname "$0")"

NS="${VOD_NAMESPACE:-vscode-on-demand}"
INS="${VOD_INSTANCE_NAMESPACE:-vscode-instances}"
[ "$NS" != "$INS" ] || { echo "deploy.sh: VOD_INSTANCE_NAMESPACE must differ from VOD_NAMESPACE" >&2; exit 1; }
HOST="${VOD_HOST:-vscode.local}"
IMAGE="${VOD_IMAGE:-vscode-on-demand:latest}"
KUBECTL="${KUBECTL:-kubectl}"
ROLLOUT_TIMEOUT="${VOD_ROLLOUT_TIMEOUT:-300s}"
CERTS="${VOD_CERT_DIR:-certs}"
ROUTING="${VOD_ROUTING:-path}"
case "$ROUTING" in
  host | path) ;;
  *) echo "deploy.sh: VOD_ROUTING must be host or path, not ${ROUTING}" >&2; exit 1 ;;
esac

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'deploy.sh: %s\n' "$*" >&2; exit 1; }
k() { "$KUBECTL" -n "$NS" "$@"; }
ki() { "$KUBECTL" -n "$INS" "$@"; }

using_minikube() { [ "${VOD_SKIP_MINIKUBE:-0}" != 1 ] && command -v minikube >/dev/null 2>&1; }

delete_all() {
  local workspaces=$1
  say "deleting instances (their Services, Secrets and config volumes go with them)"
  ki delete deployments -l app.kubernetes.io/managed-by=vscode-on-demand,app.kubernetes.io/component=instance --ignore-not-found --wait=true
  ki delete role,rolebinding,networkpolicy -l app.kubernetes.io/name=vscode-on-demand --ignore-not-found
  say "deleting the proxy"
  # By label rather than by file, so it works whichever PodDisruptionBudget version was applied.
  k delete deployment,service,serviceaccount,role,rolebinding,poddisruptionbudget,networkpolicy \
    -l app.kubernetes.io/name=vscode-on-demand --ignore-not-found
  k delete secret vscode-on-demand-tls vscode-on-demand-admin --ignore-not-found
  k delete lease vscode-on-demand-reaper --ignore-not-found
  if [ "$workspaces" = 1 ]; then
    say "deleting users' workspaces"
    ki delete pvc -l app.kubernetes.io/managed-by=vscode-on-demand,app.kubernetes.io/component=workspace --ignore-not-found
  else
    say "users' workspaces are kept (pass --workspaces to delete them)"
  fi
}

case "${1:-}" in
  --delete)
    delete_all "$([ "${2:-}" = --workspaces ] && echo 1 || echo 0)"
    exit 0
    ;;
  "") ;;
  *) die "unknown argument ${1}; use no argument, --delete or --delete --workspaces" ;;
esac

command -v "$KUBECTL" >/dev/null 2>&1 || die "kubectl is required"

if using_minikube && ! minikube status >/dev/null 2>&1; then
  say "starting minikube"
  minikube start
fi
"$KUBECTL" cluster-info >/dev/null 2>&1 || die "no Kubernetes cluster reachable with the current context"

say "building vscode-on-demand"
BIN="${VOD_BIN:-}"
if [ -z "$BIN" ]; then
  cargo build --release --bin vscode-on-demand >&2
  BIN=target/release/vscode-on-demand
fi

say "certificate for ${HOST} (kept if ${CERTS} already has one for the same names)"
cert_hosts=(--host "$HOST" --host localhost)
# Host routing serves every instance at <id>.<host>: the certificate is a wildcard for those.
[ "$ROUTING" = host ] && cert_hosts+=(--host "*.${HOST}")
"$BIN" cert --dir "$CERTS" "${cert_hosts[@]}" >&2

say "namespaces ${NS} (proxy) and ${INS} (instances)"
"$KUBECTL" create namespace "$NS" --dry-run=client -o yaml | "$KUBECTL" apply -f - >&2
# The instances' NetworkPolicy picks the proxy's namespace by this label, which clusters
# before 1.21 do not set by themselves (later ones set the same value).
"$KUBECTL" label namespace "$NS" "kubernetes.io/metadata.name=${NS}" --overwrite >&2

say "TLS and admin-token Secrets"
k create secret tls vscode-on-demand-tls --cert="$CERTS/server.crt" --key="$CERTS/server.key" \
  --dry-run=client -o yaml | k apply -f - >&2
if ! k get secret vscode-on-demand-admin >/dev/null 2>&1; then
  token=$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')
  k create secret generic vscode-on-demand-admin --from-literal=token="$token" >&2
fi

if [ "${VOD_SKIP_HOSTS:-0}" != 1 ] && using_minikube; then
  ip=$(minikube ip)
  if ! grep -qE "[[:space:]]${HOST}([[:space:]]|\$)" /etc/hosts; then
    say "adding ${ip} ${HOST} to /etc/hosts"
    line="${ip} ${HOST}"
    if [ -w /etc/hosts ]; then echo "$line" >>/etc/hosts; else echo "$line" | sudo tee -a /etc/hosts >/dev/null; fi
  fi
fi

if [ "${VOD_SKIP_IMAGE:-0}" != 1 ]; then
  if using_minikube; then
    say "building the image inside minikube"
    minikube image build -t "$IMAGE" . >&2
  else
    say "building the image with docker"
    docker build -t "$IMAGE" . >&2
  fi
fi

say "applying manifests"
manifests=$(mktemp -d)
trap 'rm -rf "$manifests"' EXIT
mkdir "$manifests/instances"
cp manifests/*.yaml "$manifests/"
cp manifests/instances/*.yaml "$manifests/instances/"
# Namespace names as chosen, in the fields that name them.
sed -i "s|vscode-instances|${INS}|g; s|namespace: vscode-on-demand\$|namespace: ${NS}|; s|kubernetes.io/metadata.name: vscode-on-demand\$|kubernetes.io/metadata.name: ${NS}|" \
  "$manifests"/instances/*.yaml "$manifests/deployment.yaml"
# Instances may not reach the API server: its Service address and the addresses behind it.
# Either can be missing (a control plane that does not publish its endpoints): whatever is found.
api_ips=$({ "$KUBECTL" -n default get service kubernetes -o jsonpath='{.spec.clusterIP}' 2>/dev/null; echo
  "$KUBECTL" -n default get endpoints kubernetes -o jsonpath='{range .subsets[*].addresses[*]}{.ip}{"\n"}{end}' 2>/dev/null
} | grep -E '^[0-9]+(\.[0-9]+){3}$' | sort -u || true)
[ -n "$api_ips" ] || say "warning: the API server's address was not found; instances are not kept from it"
for ip in $api_ips; do
  sed -i "s|^\( *\)# API server addresses.*|&\n\1- ${ip}/32|" "$manifests/instances/networkpolicy.yaml"
done
"$KUBECTL" apply -f "$manifests/instances/namespace.yaml" >&2
"$KUBECTL" apply -f "$manifests/instances/" >&2
if ! "$KUBECTL" api-versions | grep -qx 'policy/v1'; then
  # Clusters older than 1.21 serve PodDisruptionBudgets only as v1beta1.
  sed -i 's|^apiVersion: policy/v1$|apiVersion: policy/v1beta1|' "$manifests/pdb.yaml"
fi
sed -i "s|image: vscode-on-demand:latest|image: ${IMAGE}|; s|value: vscode-on-demand:latest|value: ${IMAGE}|; s|--public-url=https://vscode.local|--public-url=https://${HOST}|; s|--routing=path|--routing=${ROUTING}|" "$manifests/deployment.yaml"
k apply -f "$manifests/" >&2

say "waiting for the rollout"
k rollout status deployment/vscode-on-demand --timeout="$ROLLOUT_TIMEOUT" >&2

token=$(k get secret vscode-on-demand-admin -o jsonpath='{.data.token}' | base64 -d)
cat <<DONE
vscode-on-demand is deployed in namespace ${NS}; instances run in ${INS}.
  URL:        https://${HOST}
  API token:  ${token}
  CA cert:    $(cd "$CERTS" && pwd)/ca.crt
  Try:        VOD_API_URL=https://${HOST} VOD_API_TOKEN=${token} VOD_CA_CERT=${CERTS}/ca.crt \\
                ${BIN} create --user-id user1 --base-image mcr.microsoft.com/devcontainers/python:1-3.12
With minikube, run 'minikube tunnel' in another terminal so the LoadBalancer Service gets its address.
DONE
if [ "$ROUTING" = host ]; then
  echo "Host routing: point wildcard DNS for *.${HOST} at the same address as ${HOST}."
else
  echo "Path routing: all instances share one origin (users who trust each other); VOD_ROUTING=host isolates them."
fi
