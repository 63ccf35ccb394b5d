//! The Node object: registration and heartbeats (Ready condition and node Lease), which keep the
//! node-lifecycle controller from tainting the node and evicting its pods.

use std::time::Duration;

use k8s_openapi::{
    api::{
        coordination::v1::{Lease, LeaseSpec},
        core::v1::Node,
    },
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::Timestamp,
};
use kube::{
    api::{Patch, PatchParams, PostParams},
    Api, Client,
};
use serde_json::{json, Value};
use tokio::{sync::watch, time::sleep};
use tracing::{debug, info, warn};

use crate::{container::Backoff, time_str};

const HEARTBEAT: Duration = Duration::from_secs(10);
const LEASE_NAMESPACE: &str = "kube-node-lease";
const LEASE_SECONDS: i32 = 40;

pub async fn run(client: Client, name: String, mut shutdown: watch::Receiver<bool>) {
    // Constant for the life of this process: the node became Ready when it started.
    let since = Timestamp::now();
    let version = match client.apiserver_version().await {
        Ok(v) => v.git_version,
        Err(_) => "v1.20.0".into(),
    };
    let mut backoff = Backoff::new();
    let mut registered = false;
    loop {
        if !registered {
            match register(&client, &name, since, &version).await {
                Ok(()) => {
                    info!(node = %name, "node registered");
                    registered = true;
                }
                Err(e) => warn!(node = %name, error = %e, "cannot register node, retrying"),
            }
        }
        if registered {
            match heartbeat(&client, &name, since).await {
                Ok(()) => backoff = Backoff::new(),
                Err(kube::Error::Api(s)) if s.is_not_found() => {
                    warn!(node = %name, "node object deleted; registering again");
                    registered = false;
                }
                Err(e) => warn!(node = %name, error = %e, "node heartbeat failed"),
            }
            if let Err(e) = renew_lease(&client, &name).await {
                debug!(node = %name, error = %e, "node lease renewal failed");
            }
        }
        let wait = if registered {
            HEARTBEAT
        } else {
            backoff.next_delay()
        };
        tokio::select! {
            _ = sleep(wait) => {}
            _ = shutdown.changed() => return,
        }
    }
}

fn status(name: &str, since: Timestamp, version: Option<&str>) -> Value {
    let now = time_str(Timestamp::now());
    let since = time_str(since);
    let cond = |kind: &str, ok: bool, reason: &str, message: &str| {
        json!({
            "type": kind,
            "status": if ok { "True" } else { "False" },
            "reason": reason,
            "message": message,
            "lastHeartbeatTime": now,
            "lastTransitionTime": since,
        })
    };
    let resources = json!({
        "cpu": "64",
        "memory": "256Gi",
        "pods": "500",
        "ephemeral-storage": "1Ti",
    });
    let mut s = json!({
        "conditions": [
            cond("MemoryPressure", false, "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
            cond("DiskPressure", false, "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
            cond("PIDPressure", false, "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
            cond("Ready", true, "KubeletReady", "vod-kubelet is posting ready status"),
        ],
    });
    if let Some(version) = version {
        s["addresses"] = json!([
            {"type": "InternalIP", "address": "127.0.0.1"},
            {"type": "Hostname", "address": name},
        ]);
        s["capacity"] = resources.clone();
        s["allocatable"] = resources;
        s["daemonEndpoints"] = json!({"kubeletEndpoint": {"Port": 0}});
        s["nodeInfo"] = json!({
            "machineID": "vod-kubelet",
            "systemUUID": "vod-kubelet",
            "bootID": "vod-kubelet",
            "kernelVersion": "",
            "osImage": "vod-kubelet (processes on the host)",
            "containerRuntimeVersion": "vod://0.1",
            "kubeletVersion": version,
            "kubeProxyVersion": version,
            "operatingSystem": "linux",
            "architecture": std::env::consts::ARCH,
        });
    }
    s
}

/// Creates the Node, or brings an existing one (from an earlier run) up to date.
async fn register(
    client: &Client,
    name: &str,
    since: Timestamp,
    version: &str,
) -> kube::Result<()> {
    let api: Api<Node> = Api::all(client.clone());
    let labels = json!({
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": std::env::consts::ARCH,
        "node.kubernetes.io/instance-type": "vod-kubelet",
    });
    let node = json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels},
        "status": status(name, since, Some(version)),
    });
    let node: Node = serde_json::from_value(node).map_err(kube::Error::SerdeError)?;
    match api.create(&PostParams::default(), &node).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.is_already_exists() || s.code == 409 => {
            let meta = json!({"metadata": {"labels": labels}});
            api.patch(name, &PatchParams::default(), &Patch::Merge(&meta))
                .await?;
        }
        Err(e) => return Err(e),
    }
    // Status sent on create may be dropped by an API server that resets it; this always sticks.
    let body = json!({"status": status(name, since, Some(version))});
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&body))
        .await?;
    Ok(())
}

async fn heartbeat(client: &Client, name: &str, since: Timestamp) -> kube::Result<()> {
    let api: Api<Node> = Api::all(client.clone());
    let body = json!({"status": status(name, since, None)});
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&body))
        .await?;
    Ok(())
}

/// The node Lease is the heartbeat the node-lifecycle controller prefers since 1.17; the
/// status heartbeat alone also works, so failures here are only logged at debug level.
async fn renew_lease(client: &Client, name: &str) -> kube::Result<()> {
    let api: Api<Lease> = Api::namespaced(client.clone(), LEASE_NAMESPACE);
    let now = MicroTime(Timestamp::now());
    match api.get_opt(name).await? {
        Some(mut lease) => {
            let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
            spec.renew_time = Some(now);
            spec.holder_identity = Some(name.to_string());
            spec.lease_duration_seconds = Some(LEASE_SECONDS);
            api.replace(name, &PostParams::default(), &lease).await?;
        }
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name.to_string()),
                    namespace: Some(LEASE_NAMESPACE.to_string()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(name.to_string()),
                    lease_duration_seconds: Some(LEASE_SECONDS),
                    renew_time: Some(now),
                    ..Default::default()
                }),
            };
            api.create(&PostParams::default(), &lease).await?;
        }
    }
    Ok(())
}
