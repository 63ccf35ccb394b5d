//! `core/v1` Events about pods, written by one background task so that a slow API server never
//! holds up a pod, and aggregated like the kubelet's recorder: a repeat of the same reason and
//! message for the same object bumps `count` and `lastTimestamp` instead of adding an Event.

use std::collections::HashMap;

use k8s_openapi::{
    api::core::v1::{Event, EventSource, ObjectReference},
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time},
    jiff::Timestamp,
};
use kube::{
    api::{Patch, PatchParams, PostParams},
    Api, Client,
};
use serde_json::json;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

/// Pending events beyond this are dropped (and logged): events are informational, and a stalled
/// API server must not make pods wait or memory grow.
const QUEUE: usize = 512;
/// Aggregation entries kept; past this the cache starts over, which only means one more Event
/// object instead of a bumped count.
const CACHE: usize = 4096;
pub const COMPONENT: &str = "vod-kubelet";

/// Identifies a pod in events, status patches and logs.
#[derive(Clone, Debug)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

impl std::fmt::Display for PodRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Normal,
    Warning,
}

struct Req {
    pod: PodRef,
    /// `spec.containers{name}` style, as the kubelet sets for container events.
    field_path: Option<String>,
    kind: Kind,
    reason: &'static str,
    message: String,
}

#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::Sender<Req>,
}

impl Recorder {
    pub fn start(client: Client, node: String) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(writer(client, node, rx));
        Recorder { tx }
    }

    pub fn pod(&self, pod: &PodRef, kind: Kind, reason: &'static str, message: String) {
        self.send(pod, None, kind, reason, message);
    }

    pub fn container(
        &self,
        pod: &PodRef,
        field_path: String,
        kind: Kind,
        reason: &'static str,
        message: String,
    ) {
        self.send(pod, Some(field_path), kind, reason, message);
    }

    fn send(
        &self,
        pod: &PodRef,
        field_path: Option<String>,
        kind: Kind,
        reason: &'static str,
        message: String,
    ) {
        match kind {
            Kind::Normal => info!(pod = %pod, reason, "{message}"),
            Kind::Warning => warn!(pod = %pod, reason, "{message}"),
        }
        let req = Req {
            pod: pod.clone(),
            field_path,
            kind,
            reason,
            message,
        };
        if self.tx.try_send(req).is_err() {
            warn!(pod = %pod, reason, "event queue full or closed; event dropped");
        }
    }
}

type Key = (String, Option<String>, &'static str, String);

struct Seen {
    name: String,
    count: i32,
}

async fn writer(client: Client, node: String, mut rx: mpsc::Receiver<Req>) {
    let mut seen: HashMap<Key, Seen> = HashMap::new();
    while let Some(req) = rx.recv().await {
        let api: Api<Event> = Api::namespaced(client.clone(), &req.pod.namespace);
        let key: Key = (
            req.pod.uid.clone(),
            req.field_path.clone(),
            req.reason,
            req.message.clone(),
        );
        let now = Timestamp::now();
        if let Some(s) = seen.get_mut(&key) {
            let patch = json!({
                "count": s.count + 1,
                "lastTimestamp": crate::time_str(now),
            });
            match api
                .patch(&s.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    s.count += 1;
                    continue;
                }
                // Most likely the Event expired (TTL) or was deleted: write a new one.
                Err(e) => debug!(error = %e, "bumping event failed, creating a new one"),
            }
        }
        // Event names only need to be unique; pod name + time is what the kubelet uses too.
        let prefix: String = req.pod.name.chars().take(200).collect();
        let name = format!("{prefix}.{:x}", now.as_nanosecond());
        let ev = Event {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(req.pod.namespace.clone()),
                ..Default::default()
            },
            involved_object: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(req.pod.name.clone()),
                namespace: Some(req.pod.namespace.clone()),
                uid: Some(req.pod.uid.clone()),
                field_path: req.field_path.clone(),
                ..Default::default()
            },
            reason: Some(req.reason.into()),
            message: Some(req.message.clone()),
            type_: Some(
                match req.kind {
                    Kind::Normal => "Normal",
                    Kind::Warning => "Warning",
                }
                .into(),
            ),
            source: Some(EventSource {
                component: Some(COMPONENT.into()),
                host: Some(node.clone()),
            }),
            reporting_component: Some(COMPONENT.into()),
            reporting_instance: Some(node.clone()),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            count: Some(1),
            ..Default::default()
        };
        match api.create(&PostParams::default(), &ev).await {
            Ok(_) => {
                if seen.len() >= CACHE {
                    seen.clear();
                }
                seen.insert(key, Seen { name, count: 1 });
            }
            Err(e) => warn!(pod = %req.pod, reason = req.reason, error = %e, "cannot write event"),
        }
    }
}
