//! The reaper: scales idle instances to zero. An instance is idle when nothing is in flight
//! and its last activity is older than its idle timeout; in-use handles (`ActivityGuard`) keep
//! it alive, as in an idle cache.

use super::Lifecycle;
use crate::instance::State;
use crate::registry::now_ms;
use std::sync::Arc;
use std::time::Duration;

/// The idle policy, as a pure function of the facts, so it can be tested without clocks.
pub fn is_idle(
    now_ms: u64,
    last_activity_ms: u64,
    idle_timeout: Duration,
    inflight: usize,
) -> bool {
    inflight == 0 && now_ms.saturating_sub(last_activity_ms) >= idle_timeout.as_millis() as u64
}

pub struct Reaper {
    lifecycle: Arc<Lifecycle>,
    interval: Duration,
}

impl Reaper {
    pub fn new(lifecycle: Arc<Lifecycle>, interval: Duration) -> Self {
        Self {
            lifecycle,
            interval,
        }
    }

    /// Runs until shutdown. Each tick also writes changed activity to the backend (at most once
    /// per instance per tick), so a restarted server, or another replica, knows it.
    pub async fn run(self, on_tick: impl Fn() + Send) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut persisted: std::collections::HashMap<String, u64> = Default::default();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = self.lifecycle.shutdown.cancelled() => return,
            }
            on_tick();
            for inst in self.lifecycle.registry.all() {
                let last = inst.last_activity_ms();
                if persisted.get(inst.id.as_str()) != Some(&last) {
                    persisted.insert(inst.id.to_string(), last);
                    if let Err(e) = self.lifecycle.orchestrator.save(&inst.record()).await {
                        tracing::debug!(instance = %inst.id, error = %e, "saving activity failed");
                    }
                }
            }
            persisted.retain(|id, _| self.lifecycle.registry.get_str(id).is_some());
            if self.lifecycle.orchestrator.may_reap().await {
                self.reap_once().await;
            }
        }
    }

    /// One pass: stops every running instance that is idle now.
    pub async fn reap_once(&self) {
        let now = now_ms();
        for inst in self.lifecycle.registry.all() {
            let timeout = Duration::from_secs(inst.spec.idle_timeout_secs);
            if inst.state() == State::Running
                && is_idle(now, inst.last_activity_ms(), timeout, inst.inflight())
            {
                let idle_for = now.saturating_sub(inst.last_activity_ms()) / 1000;
                tracing::info!(instance = %inst.id, idle_for_secs = idle_for, "idle; scaling to zero");
                self.lifecycle.stop(&inst, "idle").await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_policy() {
        let t = Duration::from_secs(60);
        assert!(!is_idle(100_000, 100_000, t, 0), "just active");
        assert!(!is_idle(159_999, 100_000, t, 0), "one ms short");
        assert!(is_idle(160_000, 100_000, t, 0), "exactly the timeout");
        assert!(
            !is_idle(1_000_000, 100_000, t, 1),
            "a request in flight keeps it alive"
        );
        assert!(
            !is_idle(50_000, 100_000, t, 0),
            "a clock step backwards is not idleness"
        );
    }
}
