//! The reaper: scales idle instances to zero. An instance is idle when nothing is in flight
//! and its last activity is older than its idle timeout ([`super::policy`]); in-use handles
//! (`ActivityGuard`) keep it alive, as in an idle cache.

use super::policy;
use super::Lifecycle;
use crate::instance::{State, StopReason};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

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
    pub async fn run(self) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut persisted: std::collections::HashMap<String, u64> = Default::default();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = self.lifecycle.shutdown.cancelled() => return,
            }
            let work = async {
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
            };
            // A stop can wait on the backend for a while; shutdown must not wait for it.
            tokio::select! {
                () = work => {}
                () = self.lifecycle.shutdown.cancelled() => return,
            }
        }
    }

    /// One pass: stops every running instance that is idle now.
    pub async fn reap_once(&self) {
        let now = self.lifecycle.registry.now_ms();
        for inst in self.lifecycle.registry.all() {
            let timeout = Duration::from_secs(inst.spec.idle_timeout_secs);
            let last = inst.last_activity_ms();
            // Also what the backend runs without this server having started it (another
            // replica's visitors, or a restart of this server): its activity arrives through
            // the backend's records, the same signal the other replicas write.
            let state = inst.state();
            let runs =
                state == State::Running || (state == State::Stopped && inst.backend_running());
            if runs && policy::is_idle(now, last, timeout, inst.inflight()) {
                let last_activity =
                    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(last));
                tracing::info!(
                    instance = %inst.id,
                    idle_for_secs = now.saturating_sub(last) / 1000,
                    idle_timeout_secs = timeout.as_secs(),
                    %last_activity,
                    "idle; scaling to zero"
                );
                self.lifecycle.stop(&inst, StopReason::Idle).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The reaper loop on tokio's paused clock, with the real local backend (in a temporary
    //! directory; nothing is started, instances are put in `Running` directly).

    use super::*;
    use crate::registry::{Clock, Instance, Registry};
    use tokio::time::{sleep, Instant};

    const TIMEOUT: Duration = Duration::from_secs(20);
    const INTERVAL: Duration = Duration::from_secs(1);

    struct Setup {
        _dir: tempfile::TempDir,
        lifecycle: Arc<Lifecycle>,
    }

    fn setup() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let lifecycle = Arc::new(super::super::test_lifecycle(
            dir.path(),
            Registry::with_clock(Clock::tokio()),
        ));
        let reaper = Reaper::new(lifecycle.clone(), INTERVAL);
        tokio::spawn(reaper.run());
        Setup {
            _dir: dir,
            lifecycle,
        }
    }

    async fn running(lc: &Lifecycle) -> Arc<Instance> {
        let mut rec = crate::instance::InstanceRecord {
            last_activity_ms: lc.registry.now_ms(),
            ..crate::instance::InstanceRecord::for_tests("alice")
        };
        rec.spec.idle_timeout_secs = TIMEOUT.as_secs();
        lc.orchestrator.create(&rec).await.unwrap();
        let inst = lc.registry.instance(rec);
        let upstream = crate::instance::Upstream {
            addr: crate::instance::UpstreamAddr::Tcp(([127, 0, 0, 1], 9).into()),
            strip_prefix: false,
            secret: None,
        };
        inst.update(|s| s.starting() && s.running(upstream));
        lc.registry.insert(inst.clone());
        inst
    }

    /// Waits (in paused time) until the instance is stopped; returns how long that took.
    async fn time_to_stop(inst: &Instance) -> Duration {
        let t0 = Instant::now();
        let mut rx = inst.subscribe();
        tokio::time::timeout(
            Duration::from_secs(3600),
            rx.wait_for(|s| s.state == State::Stopped),
        )
        .await
        .expect("stopped within the hour")
        .unwrap();
        t0.elapsed()
    }

    #[tokio::test(start_paused = true)]
    async fn an_untouched_instance_stops_within_the_timeout_plus_one_interval() {
        let s = setup();
        let inst = running(&s.lifecycle).await;
        let took = time_to_stop(&inst).await;
        assert!(
            took >= TIMEOUT && took <= TIMEOUT + INTERVAL,
            "stopped after {took:?}"
        );
        let st = inst.status();
        assert_eq!(st.stop_reason, Some(StopReason::Idle));
        let stored = s.lifecycle.orchestrator.load().await.unwrap();
        assert_eq!(stored[0].stop_reason, Some(StopReason::Idle));
    }

    #[tokio::test(start_paused = true)]
    async fn activity_every_few_seconds_keeps_it_running_for_many_timeouts() {
        let s = setup();
        let inst = running(&s.lifecycle).await;
        for _ in 0..(5 * TIMEOUT.as_secs() / 4) {
            sleep(Duration::from_secs(4)).await;
            assert_eq!(inst.state(), State::Running);
            inst.touch();
        }
        let took = time_to_stop(&inst).await;
        assert!(took >= TIMEOUT && took <= TIMEOUT + INTERVAL, "{took:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_notice_window_is_the_last_part_of_the_timeout() {
        let s = setup();
        let inst = running(&s.lifecycle).await;
        let notice = Duration::from_secs(8);
        let left = || {
            policy::remaining(
                inst.now_ms(),
                inst.last_activity_ms(),
                TIMEOUT,
                inst.inflight(),
            )
        };
        sleep(TIMEOUT - notice - Duration::from_millis(1)).await;
        assert!(left() > notice, "no notice yet: {:?}", left());
        sleep(Duration::from_millis(2)).await;
        assert!(left() < notice, "notice shown: {:?}", left());
        inst.touch();
        assert_eq!(left(), TIMEOUT, "activity dismisses it");
    }

    #[tokio::test(start_paused = true)]
    async fn busy_until_holds_it_and_the_timeout_runs_from_then() {
        let s = setup();
        let inst = running(&s.lifecycle).await;
        let busy = Duration::from_secs(300);
        inst.observe_activity(inst.now_ms() + busy.as_millis() as u64);
        inst.touch();
        let took = time_to_stop(&inst).await;
        assert!(
            took >= busy + TIMEOUT && took <= busy + TIMEOUT + INTERVAL,
            "{took:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn one_the_backend_runs_without_this_server_is_stopped_when_idle_too() {
        let s = setup();
        let inst = running(&s.lifecycle).await;
        // Stopped here, as after a restart or when another replica started it; the backend
        // reports it scaled up, with activity from elsewhere.
        inst.update(|st| st.stopped(None, ""));
        s.lifecycle.apply(crate::orchestrator::Observed::Present {
            record: Box::new(inst.record()),
            scaled_up: true,
        });
        assert!(inst.backend_running());
        sleep(TIMEOUT - INTERVAL * 2).await;
        assert!(inst.backend_running(), "not idle yet");
        inst.observe_activity(inst.now_ms());
        sleep(TIMEOUT - INTERVAL * 2).await;
        assert!(inst.backend_running(), "activity from elsewhere counts");
        sleep(INTERVAL * 3).await;
        assert!(!inst.backend_running(), "scaled down");
        assert_eq!(inst.status().stop_reason, Some(StopReason::Idle));
        let stored = s.lifecycle.orchestrator.load().await.unwrap();
        assert_eq!(stored[0].stop_reason, Some(StopReason::Idle));
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_in_flight_keeps_it_running() {
        let s = setup();
        let inst = running(&s.lifecycle).await;
        let guard = inst.activity();
        sleep(TIMEOUT * 3).await;
        assert_eq!(inst.state(), State::Running);
        drop(guard);
        let took = time_to_stop(&inst).await;
        assert!(took >= TIMEOUT && took <= TIMEOUT + INTERVAL, "{took:?}");
    }
}
