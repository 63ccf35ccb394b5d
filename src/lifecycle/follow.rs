//! What other servers did, as the backend observed it: instances created, started, scaled
//! down (with or without a reason yet) or deleted elsewhere, access tokens replaced
//! elsewhere, and addresses that went away.

use super::Lifecycle;
use crate::instance::{AccessToken, State, StopReason, UpstreamAddr};
use crate::orchestrator::Observed;
use crate::registry::Instance;
use std::sync::Arc;

impl Lifecycle {
    /// Follows changes the backend observes (other servers creating, scaling or deleting
    /// instances) until shutdown.
    pub async fn follow(self: Arc<Self>) {
        let (tx, mut rx) = tokio::sync::mpsc::channel(256);
        let orchestrator = self.orchestrator.clone();
        let shutdown = self.shutdown.clone();
        let known = self.registry.all().iter().map(|i| i.id.clone()).collect();
        let observer = tokio::spawn(async move {
            tokio::select! {
                () = orchestrator.observe(tx, known) => {}
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
                    inst.set_backend_running(scaled_up);
                    self.token_seen(&inst, record.access_token, record.token_generation);
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
            Observed::Token {
                id,
                token,
                generation,
            } => {
                if let Some(inst) = self.registry.get(&id) {
                    self.token_seen(&inst, token, generation);
                }
            }
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

    /// A token a newer generation than this server's replaces it (ending what the old one
    /// opened); an older one, seen late, changes nothing.
    fn token_seen(&self, inst: &Instance, token: AccessToken, generation: u64) {
        if inst.replace_token(token, generation) {
            tracing::info!(instance = %inst.id, generation, "access token replaced elsewhere");
        }
    }
}

#[cfg(test)]
mod tests {
    //! How a follower takes in what other servers did to an instance's stop reason and its
    //! access token.

    use super::*;
    use crate::instance::{AccessToken, InstanceId, InstanceRecord, Upstream};
    use crate::lifecycle::test_lifecycle;
    use crate::registry::Registry;

    fn record(stop_reason: Option<StopReason>) -> InstanceRecord {
        InstanceRecord {
            instance_id: InstanceId::parse("alice-0000000a").unwrap(),
            stop_reason,
            ..InstanceRecord::for_tests("alice")
        }
    }

    fn seen(stop_reason: Option<StopReason>, scaled_up: bool) -> Observed {
        Observed::Present {
            record: Box::new(record(stop_reason)),
            scaled_up,
        }
    }

    #[test]
    fn stop_reasons_follow_the_backend() {
        let dir = tempfile::tempdir().unwrap();
        let lc = test_lifecycle(dir.path(), Registry::new());
        lc.apply(seen(None, false));
        let inst = lc.registry.all().pop().unwrap();
        let reason = || inst.status().stop_reason;
        assert_eq!(reason(), None, "found stopped: nobody stopped it");

        // Another server stops it for idleness: the reason arrives after the scale-down.
        let upstream = Upstream {
            addr: UpstreamAddr::Tcp(([127, 0, 0, 1], 9).into()),
            strip_prefix: false,
            secret: None,
        };
        inst.update(|s| s.starting() && s.running(upstream));
        lc.apply(seen(None, false));
        assert_eq!(inst.state(), State::Stopped);
        assert_eq!(reason(), Some(StopReason::ScaledDown));
        lc.apply(seen(Some(StopReason::Idle), false));
        assert_eq!(reason(), Some(StopReason::Idle));

        // Another server starts it again: reconnects here may join it.
        lc.apply(seen(Some(StopReason::Idle), true));
        assert_eq!(reason(), None);
        lc.apply(seen(None, true));
        assert_eq!((inst.state(), reason()), (State::Stopped, None));
    }

    #[test]
    fn tokens_follow_the_backend_by_generation() {
        let dir = tempfile::tempdir().unwrap();
        let lc = test_lifecycle(dir.path(), Registry::new());
        lc.apply(seen(None, false));
        let inst = lc.registry.all().pop().unwrap();
        let opened = inst.credential();
        let token = |token: &AccessToken, generation| Observed::Token {
            id: inst.id.clone(),
            token: token.clone(),
            generation,
        };
        let t2 = AccessToken::generate();
        lc.apply(token(&t2, 2));
        assert!(inst.credential().matches(t2.expose().as_bytes()));
        assert!(
            opened.replaced().is_cancelled(),
            "tunnels of the old one end"
        );
        // A late event of an older generation, or the record as it was, changes nothing.
        lc.apply(token(&AccessToken::generate(), 1));
        lc.apply(seen(None, false));
        assert!(inst.credential().matches(t2.expose().as_bytes()));
        assert_eq!(inst.record().token_generation, 2);
    }
}
