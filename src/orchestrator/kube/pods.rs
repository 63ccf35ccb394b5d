//! What a pod's status means to the proxy: where it serves once ready, how far its start has
//! come (for the starting page), why it cannot start, and when a route to it is lost.

use super::objects::{INSTANCE_LABEL, PORT};
use crate::instance::InstanceId;
use crate::orchestrator::Observed;
use k8s_openapi::api::core::v1::Pod;
use std::net::SocketAddr;

/// Container states that will not fix themselves: a start fails at once with the reason.
const FATAL_WAITING: [&str; 7] = [
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
    "CrashLoopBackOff",
];

/// Where a pod serves once it is ready and not going away.
pub fn ready_addr(pod: &Pod) -> Option<SocketAddr> {
    if pod.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let status = pod.status.as_ref()?;
    let ready = status
        .conditions
        .as_ref()?
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    let ip: std::net::IpAddr = status.pod_ip.as_ref()?.parse().ok()?;
    ready.then_some(SocketAddr::new(ip, PORT))
}

/// The last cold start phase a pod has finished: scheduled on a node, then its volumes mounted
/// and init containers done (the `Initialized` condition; the main container's own start and
/// readiness come after, in the phases that follow).
pub fn pod_phase(pod: &Pod) -> Option<super::Phase> {
    let initialized = pod
        .status
        .as_ref()?
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Initialized" && c.status == "True");
    let scheduled = pod.spec.as_ref()?.node_name.is_some();
    match (scheduled, initialized) {
        (_, true) => Some(super::Phase::Init),
        (true, false) => Some(super::Phase::Spawned),
        _ => None,
    }
}

/// A stage of a pod's start, for people; or the reason it cannot start.
pub fn pod_progress(pod: &Pod) -> std::result::Result<String, String> {
    let Some(status) = &pod.status else {
        return Ok("waiting for a node".into());
    };
    let waiting = |list: &Option<Vec<k8s_openapi::api::core::v1::ContainerStatus>>| {
        list.iter().flatten().find_map(|c| {
            let w = c.state.as_ref()?.waiting.as_ref()?;
            Some((
                c.name.clone(),
                w.reason.clone().unwrap_or_default(),
                w.message.clone().unwrap_or_default(),
            ))
        })
    };
    for (name, reason, message) in waiting(&status.init_container_statuses)
        .into_iter()
        .chain(waiting(&status.container_statuses))
    {
        if FATAL_WAITING.contains(&reason.as_str()) {
            return Err(format!("container {name}: {reason} {message}")
                .trim()
                .to_owned());
        }
    }
    let initializing = status
        .init_container_statuses
        .iter()
        .flatten()
        .any(|c| c.state.as_ref().is_some_and(|s| s.running.is_some()));
    if initializing {
        return Ok("installing VS Code".into());
    }
    let scheduled = pod.spec.as_ref().and_then(|s| s.node_name.as_ref());
    Ok(match (scheduled, status.phase.as_deref()) {
        (None, _) => "waiting for a node".into(),
        (Some(node), Some("Pending")) => {
            format!("scheduled on {node}; preparing volumes and images")
        }
        (Some(_), Some("Running")) => "VS Code is starting".into(),
        (Some(_), phase) => format!("pod is {}", phase.unwrap_or("unknown")),
    })
}

/// A pod that is going away or not ready no longer serves its address.
pub fn lost(p: &Pod) -> Option<Observed> {
    if ready_addr(p).is_some() {
        return None;
    }
    let id = p
        .metadata
        .labels
        .as_ref()?
        .get(INSTANCE_LABEL)
        .and_then(|i| InstanceId::parse(i).ok())?;
    let ip = p.status.as_ref()?.pod_ip.as_ref()?.parse().ok()?;
    Some(Observed::Lost {
        id,
        addr: SocketAddr::new(ip, PORT),
    })
}
