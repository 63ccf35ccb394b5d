//! Where instances actually run. The [`Orchestrator`] trait is all the layers above know;
//! `local` runs instances as child processes of this server.

pub mod local;
mod store;

pub use store::write_private;
pub mod runtime;

use crate::instance::{InstanceId, InstanceRecord, Upstream, UserId};
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
}

impl OrchestratorError {
    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |source| Self::Io { context, source }
    }
}

pub type Result<T, E = OrchestratorError> = std::result::Result<T, E>;

/// Receives start progress messages, shown on the starting page and in the events stream.
pub type Progress = Arc<dyn Fn(&str) + Send + Sync>;

/// A started instance: where it serves, and a signal that resolves (with a reason) if it exits
/// on its own.
pub struct Started {
    pub upstream: Upstream,
    pub exited: oneshot::Receiver<String>,
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
    /// Stores changed facts (last activity, stop reason).
    async fn save(&self, rec: &InstanceRecord) -> Result<()>;
    /// Starts the instance and returns once it answers its readiness probe.
    async fn start(&self, rec: &InstanceRecord, progress: Progress) -> Result<Started>;
    /// Stops the instance; its volumes stay. Stopping a stopped instance is a no-op.
    async fn stop(&self, id: &InstanceId) -> Result<()>;
    /// Removes the instance's own resources; never the user's workspace.
    async fn delete(&self, id: &InstanceId) -> Result<()>;
    async fn workspace(&self, user: &UserId) -> Result<WorkspaceInfo>;
}
