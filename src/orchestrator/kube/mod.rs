//! The Kubernetes backend: instances are Deployments scaled between 0 and 1 replicas, with a
//! Service, a token Secret and a config PVC owned by the Deployment (so deleting it is one
//! call), and one workspace PVC per user that nothing owns, all in the instance namespace,
//! apart from this server's own Secrets. Kubernetes is the state: this module reads instances
//! back from labelled objects and reports changes made by other servers through
//! [`Orchestrator::observe`]. The only module that knows Kubernetes.

mod containers;
mod lease;
mod listing;
pub mod objects;
mod pods;
mod secrets;
mod security;
mod watch;

use super::{
    Observed, Orchestrator, OrchestratorError, Phase, Progress, Result, Started, WorkspaceInfo,
};
use crate::instance::{
    AccessToken, InstanceId, InstanceRecord, InstanceSpec, StopReason, Upstream, UpstreamAddr,
    UpstreamSecret, UserId,
};
use async_trait::async_trait;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Event, PersistentVolumeClaim, Pod, Secret};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::Client;
use objects::*;
use pods::{pod_phase, pod_progress, ready_addr};
use secrets::new_upstream_token;
use serde_json::json;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

pub use containers::KubeRuntime;
pub use objects::KubeSettings;

const POLL: Duration = Duration::from_millis(250);
const STOP_WAIT: Duration = Duration::from_secs(60);

fn kerr(context: &str) -> impl FnOnce(kube::Error) -> OrchestratorError + '_ {
    move |e| OrchestratorError::Kube(format!("{context}: {e}"))
}

pub struct Kube {
    client: Client,
    settings: KubeSettings,
    identity: String,
    /// Each instance's access token and its generation, as read from its Secret.
    tokens: Mutex<HashMap<String, (AccessToken, u64)>>,
}

impl Kube {
    /// Connects with the given kubeconfig, else the in-cluster service account (or
    /// `$KUBECONFIG`/`~/.kube/config` as kube's defaults find them).
    pub async fn connect(
        kubeconfig: Option<&std::path::Path>,
        settings: KubeSettings,
    ) -> Result<Self> {
        let config = match kubeconfig {
            Some(path) => {
                let kc = kube::config::Kubeconfig::read_from(path).map_err(|e| {
                    OrchestratorError::Kube(format!("reading {}: {e}", path.display()))
                })?;
                kube::Config::from_custom_kubeconfig(kc, &Default::default())
                    .await
                    .map_err(|e| {
                        OrchestratorError::Kube(format!("kubeconfig {}: {e}", path.display()))
                    })?
            }
            None => kube::Config::infer()
                .await
                .map_err(|e| OrchestratorError::Kube(format!("no cluster configuration: {e}")))?,
        };
        let client = Client::try_from(config).map_err(kerr("building the client"))?;
        let identity = settings
            .replica_name
            .clone()
            .unwrap_or_else(|| format!("vscode-on-demand-{:08x}", rand::random::<u32>()));
        Ok(Self {
            client,
            settings,
            identity,
            tokens: Mutex::new(HashMap::new()),
        })
    }

    /// Objects in the instance namespace.
    fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.settings.instance_namespace)
    }

    fn apply_params() -> PatchParams {
        PatchParams::apply(MANAGER).force()
    }

    /// Reads an instance back from its Deployment (and token Secret).
    async fn record_of(&self, d: &Deployment) -> Result<Option<(InstanceRecord, bool)>> {
        let meta = &d.metadata;
        let labels = meta.labels.clone().unwrap_or_default();
        let annotations = meta.annotations.clone().unwrap_or_default();
        let Some(id) = labels
            .get(INSTANCE_LABEL)
            .and_then(|i| InstanceId::parse(i).ok())
        else {
            return Ok(None);
        };
        let Some(spec) = annotations
            .get(SPEC_ANNOTATION)
            .and_then(|s| serde_json::from_str::<InstanceSpec>(s).ok())
        else {
            return Ok(None);
        };
        let Some((token, token_generation)) = self.token(id.as_str()).await? else {
            return Ok(None);
        };
        let created_at = annotations
            .get(CREATED_ANNOTATION)
            .and_then(|c| c.parse().ok())
            .or_else(|| {
                meta.creation_timestamp
                    .as_ref()
                    .map(|t| t.0.as_second().max(0) as u64)
            })
            .unwrap_or(0);
        let scaled_up = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0) > 0;
        let rec = InstanceRecord {
            user_id: id.user(),
            instance_id: id,
            spec,
            access_token: token,
            token_generation,
            created_at,
            last_activity_ms: annotations
                .get(ACTIVITY_ANNOTATION)
                .and_then(|a| a.parse().ok())
                .unwrap_or(0),
            stop_reason: annotations
                .get(STOP_REASON_ANNOTATION)
                .map(|r| StopReason::from(r.clone())),
        };
        Ok(Some((rec, scaled_up)))
    }

    async fn scale(&self, id: &InstanceId, replicas: u8) -> Result<()> {
        let patch = json!({ "spec": { "replicas": replicas } });
        self.api::<Deployment>()
            .patch(
                &deployment_name(id.as_str()),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
            .map_err(kerr("scaling the Deployment"))?;
        Ok(())
    }

    async fn pods(&self, id: &InstanceId) -> Result<Vec<Pod>> {
        let lp = ListParams::default().labels(&format!("{INSTANCE_LABEL}={id}"));
        Ok(self
            .api::<Pod>()
            .list(&lp)
            .await
            .map_err(kerr("listing pods"))?
            .items)
    }

    /// The newest event about `pod`, as a progress line.
    async fn latest_event(&self, pod: &str) -> Option<String> {
        let lp = ListParams::default().fields(&format!("involvedObject.name={pod}"));
        let events = self.api::<Event>().list(&lp).await.ok()?.items;
        events
            .into_iter()
            .max_by_key(|e| e.last_timestamp.as_ref().map(|t| t.0))
            .and_then(|e| Some(format!("{}: {}", e.reason?, e.message.unwrap_or_default())))
    }
}

#[async_trait]
impl Orchestrator for Kube {
    async fn load(&self) -> Result<Vec<InstanceRecord>> {
        let lp = ListParams::default().labels(&selector());
        let deployments = self
            .api::<Deployment>()
            .list(&lp)
            .await
            .map_err(kerr("listing instances"))?;
        let mut out = Vec::new();
        for d in &deployments.items {
            if let Some((rec, _)) = self.record_of(d).await? {
                out.push(rec);
            }
        }
        Ok(out)
    }

    async fn create(&self, rec: &InstanceRecord) -> Result<()> {
        let s = &self.settings;
        let pvcs = self.api::<PersistentVolumeClaim>();
        let ws = workspace_claim(&rec.user_id);
        // The workspace is created once and then left alone: its size is fixed by the user's
        // first instance and no later apply may change it.
        if pvcs
            .get_opt(&ws)
            .await
            .map_err(kerr("reading the workspace claim"))?
            .is_none()
        {
            pvcs.patch(
                &ws,
                &Self::apply_params(),
                &Patch::Apply(workspace_pvc(rec, s)),
            )
            .await
            .map_err(kerr("creating the workspace claim"))?;
        }
        let id = rec.instance_id.as_str();
        let d = self
            .api::<Deployment>()
            .patch(
                &deployment_name(id),
                &Self::apply_params(),
                &Patch::Apply(deployment(rec, s, 0)),
            )
            .await
            .map_err(kerr("creating the Deployment"))?;
        let uid = d.metadata.uid.unwrap_or_default();
        let upstream_token = new_upstream_token();
        let owned = async {
            self.api::<Secret>()
                .patch(
                    &secret_name(id),
                    &Self::apply_params(),
                    &Patch::Apply(secret(rec, s, &uid, &upstream_token)),
                )
                .await
                .map_err(kerr("creating the token Secret"))?;
            self.api::<k8s_openapi::api::core::v1::Service>()
                .patch(
                    &deployment_name(id),
                    &Self::apply_params(),
                    &Patch::Apply(service(rec, s, &uid)),
                )
                .await
                .map_err(kerr("creating the Service"))?;
            pvcs.patch(
                &config_claim(id),
                &Self::apply_params(),
                &Patch::Apply(config_pvc(rec, s, &uid)),
            )
            .await
            .map_err(kerr("creating the config claim"))?;
            Ok(())
        };
        if let Err(e) = owned.await {
            // Nothing half-created: the Deployment owns whatever else was made.
            let _ = self.delete(&rec.instance_id).await;
            return Err(e);
        }
        self.learn_token(id, &rec.access_token, rec.token_generation);
        Ok(())
    }

    async fn save(&self, rec: &InstanceRecord) -> Result<()> {
        let patch = json!({ "metadata": { "annotations": {
            ACTIVITY_ANNOTATION: rec.last_activity_ms.to_string(),
            STOP_REASON_ANNOTATION: rec.stop_reason,
        }}});
        self.api::<Deployment>()
            .patch(
                &deployment_name(rec.instance_id.as_str()),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
            .map_err(kerr("recording activity"))?;
        Ok(())
    }

    async fn rotate_token(&self, rec: &InstanceRecord, token: &AccessToken) -> Result<u64> {
        self.rotate(&rec.instance_id, token).await
    }

    async fn start(&self, rec: &InstanceRecord, progress: Progress) -> Result<Started> {
        let id = &rec.instance_id;
        let secret = self.upstream_secret(id).await?;
        progress.say("scaling up");
        // Applied whole rather than scaled, so an instance made by an older version of this
        // server gets today's pod (connection token, security context) on its next start; an
        // unchanged template rolls nothing.
        self.api::<Deployment>()
            .patch(
                &deployment_name(id.as_str()),
                &Self::apply_params(),
                &Patch::Apply(deployment(rec, &self.settings, 1)),
            )
            .await
            .map_err(kerr("scaling up the Deployment"))?;
        loop {
            let pods = self.pods(id).await?;
            if let Some(addr) = pods.iter().find_map(ready_addr) {
                progress.reached(Phase::Listening);
                return Ok(Started {
                    upstream: Upstream {
                        addr: UpstreamAddr::Tcp(addr),
                        strip_prefix: self.settings.runtime.strip_prefix(),
                        secret: Some(UpstreamSecret {
                            value: secret,
                            cookie: self.settings.runtime.secret_cookie(),
                        }),
                    },
                    exited: None,
                });
            }
            match pods
                .iter()
                .find(|p| p.metadata.deletion_timestamp.is_none())
            {
                None => progress.say("waiting for the pod to be created"),
                Some(pod) => match pod_progress(pod) {
                    Err(reason) => return Err(OrchestratorError::StartFailed(reason)),
                    Ok(stage) => {
                        if let Some(phase) = pod_phase(pod) {
                            progress.reached(phase);
                        }
                        let name = pod.metadata.name.clone().unwrap_or_default();
                        match self.latest_event(&name).await {
                            Some(ev) => progress.say(&format!("{stage} ({ev})")),
                            None => progress.say(&stage),
                        }
                    }
                },
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn stop(&self, id: &InstanceId) -> Result<()> {
        self.scale(id, 0).await?;
        let deadline = tokio::time::Instant::now() + STOP_WAIT;
        while tokio::time::Instant::now() < deadline {
            if self.pods(id).await?.is_empty() {
                return Ok(());
            }
            tokio::time::sleep(POLL).await;
        }
        tracing::warn!(instance = %id, "pods still terminating after the stop wait");
        Ok(())
    }

    async fn delete(&self, id: &InstanceId) -> Result<()> {
        match self
            .api::<Deployment>()
            .delete(&deployment_name(id.as_str()), &DeleteParams::background())
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(kerr("deleting the Deployment")(e)),
        }
        self.forget_token(id.as_str());
        Ok(())
    }

    async fn workspace(&self, user: &UserId) -> Result<WorkspaceInfo> {
        let pvc = self
            .api::<PersistentVolumeClaim>()
            .get_opt(&workspace_claim(user))
            .await
            .map_err(kerr("reading the workspace claim"))?;
        Ok(WorkspaceInfo {
            exists: pvc.is_some(),
            created_at: pvc
                .and_then(|p| p.metadata.creation_timestamp)
                .map(|t| t.0.as_second().max(0) as u64),
        })
    }

    async fn observe(&self, tx: tokio::sync::mpsc::Sender<Observed>, known: Vec<InstanceId>) {
        self.watch(tx, known).await;
    }

    async fn may_reap(&self) -> bool {
        lease::hold(&self.client, &self.settings.namespace, &self.identity).await
    }
}
