//! Instance lifecycle on top of the registry and a backend, and the only writer of instance
//! state: create, start (once, however many visitors arrive together), wait for readiness,
//! stop (with a reason), delete, keepalive, access token rotation, and what other servers
//! were seen doing; the idle policy and the reaper. Every state change is a named transition
//! of [`crate::instance::Status`].

mod capacity;
mod follow;
pub mod policy;
mod reaper;
mod token;

pub use capacity::Capacity;

pub use policy::Trigger;
pub use reaper::Reaper;

use crate::instance::{
    AccessToken, CreateRequest, InstanceId, InstanceRecord, Invalid, SpecDefaults, State, Status,
    StopReason, Upstream,
};
use crate::metrics::{ColdStart, Metrics, Phase};
use crate::orchestrator::{Orchestrator, OrchestratorError, Progress};
use crate::registry::{Instance, Registry};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("instance did not become ready within {0:?}")]
    Timeout(Duration),
    #[error("instance failed to start: {0}")]
    Failed(String),
    #[error("instance was deleted")]
    Gone,
    #[error("server is shutting down")]
    ShuttingDown,
    #[error("{0} instances are running or starting, the most this server runs at once (--max-running); try again when one stops")]
    AtCapacity(usize),
}

/// Why a create, delete, keepalive or token rotation did not happen; nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error("instance {id} is {state}: start it first (POST /api/instances/{id}/start)")]
    NotRunning { id: InstanceId, state: &'static str },
    #[error("user {user} has {count} instances, the most one user may have (--max-instances-per-user); delete one first")]
    TooManyInstances { user: String, count: usize },
    #[error("instance {0} was deleted")]
    Gone(InstanceId),
    #[error("{0}")]
    Backend(#[from] OrchestratorError),
}

/// Starts and stops instances; shared by the API, the proxy and the reaper.
pub struct Lifecycle {
    pub registry: Arc<Registry>,
    pub orchestrator: Arc<dyn Orchestrator>,
    pub start_timeout: Duration,
    pub shutdown: CancellationToken,
    pub capacity: Capacity,
    pub metrics: Arc<Metrics>,
}

impl Lifecycle {
    /// Moves a stopped or failed instance to `Starting` and runs the start in the background.
    /// Returns whether this call began a start: of concurrent callers exactly one does, since
    /// the check and the transition happen under the status lock. Refused while as many
    /// instances as `--max-running` allows run or start.
    pub fn begin_start(self: &Arc<Self>, inst: &Arc<Instance>) -> Result<bool, StartError> {
        if self.shutdown.is_cancelled() {
            return Ok(false);
        }
        let began = {
            let _gate = self.capacity.gate();
            if matches!(inst.state(), State::Stopped | State::Failed) {
                let active = self
                    .registry
                    .count(|i| matches!(i.state(), State::Starting | State::Running));
                if active >= self.capacity.max_running {
                    return Err(StartError::AtCapacity(active));
                }
            }
            inst.update(Status::starting)
        };
        if began {
            tracing::info!(instance = %inst.id, "starting");
            self.metrics.start_begun();
            inst.touch();
            let this = self.clone();
            let inst = inst.clone();
            // Spawned, so that a visitor who gives up does not cancel the start for others.
            tokio::spawn(async move { this.run_start(inst).await });
        }
        Ok(began)
    }

    async fn run_start(self: Arc<Self>, inst: Arc<Instance>) {
        let cold = ColdStart::begin(self.metrics.clone());
        // Starts beyond --max-concurrent-starts wait their turn, and say so.
        let turn = self
            .capacity
            .start_turn(|ahead| {
                inst.update(|s| s.progress(&format!("queued: {ahead} start(s) ahead")));
            })
            .await;
        cold.reached(Phase::Queued);
        let rec = inst.record();
        let progress_inst = inst.clone();
        let phases = cold.clone();
        // The one place a start's progress arrives: messages for people, phases for metrics.
        let progress = Progress::new(move |phase, message| {
            if let Some(p) = phase {
                phases.reached(p);
            }
            if let Some(m) = message {
                progress_inst.update(|s| s.progress(m));
            }
        });
        let started =
            tokio::time::timeout(self.start_timeout, self.orchestrator.start(&rec, progress)).await;
        let result = match started {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => {
                self.metrics.failed("start_error");
                Err(e.to_string())
            }
            Err(_) => {
                self.metrics.failed("start_timeout");
                let _ = self.orchestrator.stop(&inst.id).await;
                Err(format!(
                    "not ready within {}s (the start timeout)",
                    self.start_timeout.as_secs()
                ))
            }
        };
        // The start is done either way: the next one may go.
        drop(turn);
        match result {
            Ok(started) => {
                let upstream = started.upstream;
                let addr = upstream.addr.clone();
                let still_wanted = inst.update(|s| s.running(upstream));
                if !still_wanted {
                    // Stopped or deleted while starting: do not leave the process running.
                    let _ = self.orchestrator.stop(&inst.id).await;
                    return;
                }
                inst.touch();
                cold.reached(Phase::Ready);
                inst.first_byte.arm(cold);
                tracing::info!(instance = %inst.id, %addr, "running");
                if let Some(exited) = started.exited {
                    self.watch_exit(inst, exited);
                }
            }
            Err(reason) => {
                tracing::warn!(instance = %inst.id, %reason, "start failed");
                inst.update(|s| s.failed(State::Starting, reason));
            }
        }
    }

    /// Marks the instance failed if its process goes away while it should be running; the next
    /// visit starts it again.
    fn watch_exit(
        self: Arc<Self>,
        inst: Arc<Instance>,
        exited: tokio::sync::oneshot::Receiver<String>,
    ) {
        tokio::spawn(async move {
            let Ok(reason) = exited.await else { return };
            let changed = inst.update(|s| s.failed(State::Running, reason.clone()));
            if changed {
                self.metrics.failed("exited");
                tracing::warn!(instance = %inst.id, %reason, "instance exited unexpectedly");
                let _ = self.orchestrator.stop(&inst.id).await;
            }
        });
    }

    /// Waits until the instance is running, starting it if needed, bounded by the start timeout.
    pub async fn ensure_running(
        self: &Arc<Self>,
        inst: &Arc<Instance>,
    ) -> Result<Upstream, StartError> {
        if let Some(u) = inst.running_upstream() {
            return Ok(u);
        }
        let mut rx = inst.subscribe();
        self.begin_start(inst)?;
        let wait = async {
            loop {
                let status: Status = rx.borrow_and_update().clone();
                match status.state {
                    State::Running => {
                        if let Some(u) = status.upstream {
                            return Ok(u);
                        }
                    }
                    State::Failed => return Err(StartError::Failed(status.message)),
                    State::Stopped => {
                        self.begin_start(inst)?;
                    }
                    _ => {}
                }
                if rx.changed().await.is_err() {
                    return Err(StartError::Gone);
                }
            }
        };
        tokio::select! {
            r = tokio::time::timeout(self.start_timeout, wait) => r.unwrap_or(Err(StartError::Timeout(self.start_timeout))),
            () = self.shutdown.cancelled() => Err(StartError::ShuttingDown),
        }
    }

    /// Stops a running (or starting) instance, recording why. Returns whether it was running.
    /// One that is stopped here but that the backend runs (started through another replica,
    /// or before this server started) is scaled down all the same: whichever replica is asked,
    /// or holds the reaper's lease, stops it.
    pub async fn stop(&self, inst: &Arc<Instance>, reason: StopReason) -> bool {
        let here = inst.update(|s| s.stopping(&reason));
        if !here {
            let elsewhere = inst.state() == State::Stopped && inst.set_backend_running(false);
            if !elsewhere {
                return false;
            }
            // Stored with the scale-down below, for the other replicas' reconnect policy.
            inst.update(|s| s.reason_learnt(Some(reason.clone())));
        }
        tracing::info!(instance = %inst.id, %reason, elsewhere = !here, "stopping");
        self.metrics.stopped(match &reason {
            StopReason::Idle => "idle",
            StopReason::Api => "api",
            StopReason::Shutdown => "shutdown",
            StopReason::Deleted => "deleted",
            StopReason::ScaledDown => "scaled_down",
            StopReason::Other(_) => "other",
        });
        // The reason is stored before the backend scales down, so that other servers, which
        // see the scale-down, already know why (it decides whether reconnects may start it).
        if let Err(e) = self.orchestrator.save(&inst.record()).await {
            tracing::warn!(instance = %inst.id, error = %e, "saving instance state failed");
        }
        if let Err(e) = self.orchestrator.stop(&inst.id).await {
            tracing::warn!(instance = %inst.id, error = %e, "stop failed");
        }
        inst.set_backend_running(false);
        inst.update(|s| s.stopped(Some(reason), ""));
        true
    }

    /// Creates a stopped instance for a validated request: stored by the backend first, then
    /// in the table, so a failure leaves nothing behind. Returns it and its access token.
    pub async fn create(
        &self,
        req: CreateRequest,
        defaults: &SpecDefaults,
    ) -> Result<Arc<Instance>, LifecycleError> {
        let (user, spec) = req.validate(defaults)?;
        let count = self.registry.count_of_user(&user);
        if count >= self.capacity.max_per_user {
            return Err(LifecycleError::TooManyInstances {
                user: user.to_string(),
                count,
            });
        }
        let id = loop {
            let id = InstanceId::generate(&user);
            if self.registry.get(&id).is_none() {
                break id;
            }
        };
        let now = self.registry.now_ms();
        let rec = InstanceRecord {
            instance_id: id,
            user_id: user,
            spec,
            access_token: AccessToken::generate(),
            token_generation: 0,
            created_at: now / 1000,
            last_activity_ms: now,
            stop_reason: None,
        };
        if let Err(e) = self.orchestrator.create(&rec).await {
            tracing::error!(error = %e, "creating an instance failed");
            return Err(e.into());
        }
        let inst = self.registry.instance(rec);
        self.registry.insert(inst.clone());
        tracing::info!(instance = %inst.id, user = %inst.user, "created");
        Ok(inst)
    }

    /// Stops and deletes an instance and its own resources (never the user's workspace). It
    /// leaves the table first, so no visit can start it while its files go away, and comes
    /// back if the backend could not delete it.
    pub async fn delete(&self, inst: &Arc<Instance>) -> Result<(), LifecycleError> {
        self.registry.remove(&inst.id);
        self.stop(inst, StopReason::Deleted).await;
        if let Err(e) = self.orchestrator.delete(&inst.id).await {
            tracing::error!(instance = %inst.id, error = %e, "delete failed");
            self.registry.insert(inst.clone());
            return Err(e.into());
        }
        // Wakes anyone still waiting on this instance.
        inst.update(|s| s.stopped(Some(StopReason::Deleted), ""));
        tracing::info!(instance = %inst.id, "deleted");
        Ok(())
    }

    /// Activity from a program: counts now, and with `busy_until_ms` the instance is busy until
    /// then. Only while it runs (or starts); stored at once when a time is given, so another
    /// server does not cut a long job short.
    pub async fn keepalive(
        &self,
        inst: &Arc<Instance>,
        busy_until_ms: Option<u64>,
    ) -> Result<(), LifecycleError> {
        let state = inst.state();
        if !matches!(state, State::Running | State::Starting) {
            return Err(LifecycleError::NotRunning {
                id: inst.id.clone(),
                state: state.as_str(),
            });
        }
        inst.touch();
        if let Some(until) = busy_until_ms {
            inst.observe_activity(until);
            if let Err(e) = self.orchestrator.save(&inst.record()).await {
                tracing::warn!(instance = %inst.id, error = %e, "saving activity failed");
            }
        }
        Ok(())
    }

    /// Stops every instance: the local backend's processes must not outlive the server.
    pub async fn stop_all(&self, reason: StopReason) {
        let all = self.registry.all();
        let stops = all.iter().map(|i| self.stop(i, reason.clone()));
        futures_util::future::join_all(stops).await;
    }
}

/// A lifecycle over the local backend in `dir` that starts nothing real, for unit tests.
#[cfg(test)]
pub(crate) fn test_lifecycle(dir: &std::path::Path, registry: Registry) -> Lifecycle {
    use crate::orchestrator::local::Local;
    use crate::orchestrator::runtime::{RuntimeConfig, RuntimeKind};
    use crate::orchestrator::sandbox::{Sandbox, SandboxMode};
    let runtime = RuntimeConfig {
        kind: RuntimeKind::Command,
        code_server: None,
        code_cli: None,
        command: Some("true".into()),
        download_url: String::new(),
        port_forwarding: false,
    };
    let sandbox = Sandbox::resolve(SandboxMode::None).expect("no sandbox needs nothing");
    let local = Local::new(dir.to_owned(), &dir.join("certs"), runtime, sandbox)
        .expect("a local backend in a temporary directory");
    Lifecycle {
        registry: Arc::new(registry),
        orchestrator: Arc::new(local),
        start_timeout: Duration::from_secs(5),
        shutdown: CancellationToken::new(),
        capacity: Capacity::default(),
        metrics: Arc::default(),
    }
}
