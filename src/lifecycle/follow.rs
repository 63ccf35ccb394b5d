//! What other servers did, as the backend observed it: instances created, started, scaled
//! down (with or without a reason yet) or deleted elsewhere, and addresses that went away.

use super::Lifecycle;
use crate::instance::{State, StopReason, UpstreamAddr};
use crate::orchestrator::Observed;
use std::sync::Arc;

impl Lifecycle {
    /// Follows changes the backend observes (other servers creating, scaling or deleting
    /// instances) until shutdown.
    pub async fn follow(self: Arc<Self>) {
        let (tx, mut rx) = tokio::sync::mpsc::channel(256);
        let orchestrator = self.orchestrator.clone();
        let shutdown = self.shutdown.clone();
        let observer = tokio::spawn(async move {
            tokio::select! {
                () = orchestrator.observe(tx) => {}
                () = shutdown.cancelled() => {}
            }
        });
        while let Some(seen) = tokio::select! {
            s = rx.recv() => s,
            () = self.shutdown.cancelled() => None,
        } {
            self.apply(seen);
        }
        observer.abort();
    }

    pub(super) fn apply(&self, seen: Observed) {
        match seen {
            Observed::Present { record, scaled_up } => match self.registry.get(&record.instance_id)
            {
                None => {
                    tracing::info!(instance = %record.instance_id, "instance found in the backend");
                    self.registry.insert(self.registry.instance(*record));
                }
                Some(inst) => {
                    inst.observe_activity(record.last_activity_ms);
                    if scaled_up {
                        // Started by another server: a stop reason seen earlier no longer
                        // keeps reconnects here from joining it.
                        inst.update(|s| s.reason_learnt(None));
                    } else {
                        let stored = record.stop_reason;
                        inst.update(|s| {
                            if s.state == State::Running {
                                let why = stored.unwrap_or(StopReason::ScaledDown);
                                s.stopped(Some(why), "")
                            } else if stored.is_some() {
                                // Already stopped here; the reason arrived after the scale-down.
                                s.reason_learnt(stored)
                            } else {
                                false
                            }
                        });
                    }
                }
            },
            Observed::Gone(id) => {
                if let Some(inst) = self.registry.remove(&id) {
                    tracing::info!(instance = %id, "instance deleted in the backend");
                    inst.update(|s| s.stopped(Some(StopReason::Deleted), ""));
                }
            }
            Observed::Lost { id, addr } => {
                if let Some(inst) = self.registry.get(&id) {
                    let lost = inst.update(|s| {
                        s.state == State::Running
                            && s.upstream
                                .as_ref()
                                .is_some_and(|u| u.addr == UpstreamAddr::Tcp(addr))
                            && s.stopped(None, "its pod went away")
                    });
                    if lost {
                        tracing::info!(instance = %id, %addr, "instance no longer serving there");
                    }
                }
            }
        }
    }
}
