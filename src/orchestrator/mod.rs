//! Where instances actually run. The [`Orchestrator`] trait is all the layers above know;
//! `local` runs instances as child processes of this server (confined by `sandbox`, ready when
//! `readiness` says so), `kube` as Kubernetes Deployments.

pub mod kube;
pub mod local;
mod readiness;
pub mod runtime;
pub mod sandbox;
mod store;

pub use store::write_private;

use crate::instance::{AccessToken, InstanceId, InstanceRecord, Upstream, UserId};
pub use crate::metrics::Phase;
use async_trait::async_trait;
use std::sync::Arc;
use tokio::sync::oneshot;

/// Errors from a backend, with the instance or path they concern.
#[derive(Debug, thiserror::Error)]
pub enum OrchestratorError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("instance metadata {path}: {message}")]
    Corrupt { path: String, message: String },
    #[error("no VS Code runtime available: {0}")]
    NoRuntime(String),
    #[error("instance failed to start: {0}")]
    StartFailed(String),
    #[error("downloading VS Code: {0}")]
    Download(String),
    #[error("Kubernetes API: {0}")]
    Kube(String),
    #[error("sandbox: {0}")]
    Sandbox(String),
    #[error("instance {0} no longer exists")]
    Gone(InstanceId),
}

impl OrchestratorError {
    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |source| Self::Io { context, source }
    }
}

pub type Result<T, E = OrchestratorError> = std::result::Result<T, E>;

/// Receives a start's progress: messages, shown on the starting page and in the events
/// stream, and the phases it passed, timed for the metrics ([`Phase`]).
#[derive(Clone)]
pub struct Progress(Arc<Report>);

/// What a [`Progress`] calls: a phase reached, a message, or both.
type Report = dyn Fn(Option<Phase>, Option<&str>) + Send + Sync;

impl Progress {
    pub fn new(f: impl Fn(Option<Phase>, Option<&str>) + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }

    /// Reports nothing: for starts nobody watches.
    pub fn none() -> Self {
        Self::new(|_, _| {})
    }

    /// A message for people.
    pub fn say(&self, message: &str) {
        (self.0)(None, Some(message));
    }

    /// `phase` is over (reporting one again does nothing).
    pub fn reached(&self, phase: Phase) {
        (self.0)(Some(phase), None);
    }
}

/// A started instance: where it serves, and (for backends that notice it directly) a signal
/// that resolves with a reason if it exits on its own.
pub struct Started {
    pub upstream: Upstream,
    pub exited: Option<oneshot::Receiver<String>>,
}

/// What a backend that is shared with other servers sees change, for the registry to follow.
#[derive(Debug)]
pub enum Observed {
    /// An instance exists (possibly created by another server); `scaled_up` says whether it
    /// is meant to run.
    Present {
        record: Box<InstanceRecord>,
        scaled_up: bool,
    },
    /// The instance's access token, as of `generation` (another server may have replaced it).
    Token {
        id: InstanceId,
        token: AccessToken,
        generation: u64,
    },
    /// The instance was deleted.
    Gone(InstanceId),
    /// The instance no longer serves at `addr` (its pod went away or is not ready).
    Lost {
        id: InstanceId,
        addr: std::net::SocketAddr,
    },
}

/// Facts about a user's persistent workspace.
#[derive(Debug, Clone)]
pub struct WorkspaceInfo {
    pub exists: bool,
    /// Seconds since the Unix epoch.
    pub created_at: Option<u64>,
}

#[async_trait]
pub trait Orchestrator: Send + Sync + 'static {
    /// Every instance the backend knows, as stored (for a restarted server).
    async fn load(&self) -> Result<Vec<InstanceRecord>>;
    /// Stores a new instance's facts and prepares its resources; nothing runs yet.
    async fn create(&self, rec: &InstanceRecord) -> Result<()>;
    /// Stores changed facts (last activity, stop reason). The access token is
    /// [`Orchestrator::rotate_token`]'s: a record saved from before a rotation does not bring
    /// the old token back.
    async fn save(&self, rec: &InstanceRecord) -> Result<()>;
    /// Stores `token` as the instance's access token, durably and where every server reads
    /// it, and returns its generation: higher than any token the instance had before, so
    /// that a server which meets two of them keeps the newer. Concurrent rotations (here or
    /// on another server) each get a generation of their own.
    async fn rotate_token(&self, rec: &InstanceRecord, token: &AccessToken) -> Result<u64>;
    /// Starts the instance and returns once it answers its readiness probe.
    async fn start(&self, rec: &InstanceRecord, progress: Progress) -> Result<Started>;
    /// Stops the instance; its volumes stay. Stopping a stopped instance is a no-op.
    async fn stop(&self, id: &InstanceId) -> Result<()>;
    /// Removes the instance's own resources; never the user's workspace.
    async fn delete(&self, id: &InstanceId) -> Result<()>;
    async fn workspace(&self, user: &UserId) -> Result<WorkspaceInfo>;
    /// Reports changes made outside this server until the sender is dropped, `known` being the
    /// instances this server has (so one deleted before the watch began is reported gone);
    /// backends whose state only this server changes have nothing to report.
    async fn observe(&self, _tx: tokio::sync::mpsc::Sender<Observed>, _known: Vec<InstanceId>) {}
    /// Whether instances end with this server (child processes) rather than outliving it.
    fn instances_end_with_server(&self) -> bool {
        false
    }
    /// Whether this server may stop idle instances now; with several servers only one does.
    async fn may_reap(&self) -> bool {
        true
    }
}
