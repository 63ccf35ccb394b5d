//! The idle policy, as pure functions of the facts, so it is tested without clocks or servers.
//!
//! Human activity is the signal: page navigations, input that the pages' activity script
//! reports, requests from programs that are not browsers, and API starts and keepalives. What
//! an open tab does by itself (WebSocket keepalives and protocol messages, background requests)
//! is not activity; after an idle or API stop it cannot start the instance again either, so a
//! forgotten tab does not undo the stop. A navigation, a program's request or an API start can.

use crate::instance::StopReason;
use std::time::Duration;

/// What caused a request, as far as starting a stopped instance is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// Someone asked for it: a page navigation (load, reload, the resume button), a program's
    /// request, an API start.
    Deliberate,
    /// An open page's own machinery: VS Code's reconnect attempts, background requests.
    Automatic,
}

/// Whether a request with this trigger may start an instance that was stopped for `stop_reason`.
/// Automatic requests may only undo stops nobody chose (a server restart, a crash, a lost pod),
/// so that VS Code reconnects by itself after those.
pub fn may_start(stop_reason: Option<&StopReason>, trigger: Trigger) -> bool {
    match trigger {
        Trigger::Deliberate => true,
        Trigger::Automatic => !matches!(stop_reason, Some(StopReason::Idle | StopReason::Api)),
    }
}

/// An instance is idle when nothing is in flight and its last activity is at least its idle
/// timeout old.
pub fn is_idle(
    now_ms: u64,
    last_activity_ms: u64,
    idle_timeout: Duration,
    inflight: usize,
) -> bool {
    inflight == 0 && now_ms.saturating_sub(last_activity_ms) >= idle_timeout.as_millis() as u64
}

/// How long until the instance counts as idle; the full timeout while requests are in flight.
pub fn remaining(
    now_ms: u64,
    last_activity_ms: u64,
    idle_timeout: Duration,
    inflight: usize,
) -> Duration {
    if inflight > 0 {
        return idle_timeout;
    }
    let deadline = last_activity_ms.saturating_add(idle_timeout.as_millis() as u64);
    Duration::from_millis(deadline.saturating_sub(now_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_after_the_timeout_unless_busy() {
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
            "a clock step backwards, or a declared busy time, is not idleness"
        );
    }

    #[test]
    fn remaining_time_counts_down_to_zero() {
        let t = Duration::from_secs(60);
        assert_eq!(remaining(100_000, 100_000, t, 0), t);
        assert_eq!(remaining(130_000, 100_000, t, 0), Duration::from_secs(30));
        assert_eq!(remaining(500_000, 100_000, t, 0), Duration::ZERO);
        assert_eq!(remaining(500_000, 100_000, t, 2), t, "busy: full timeout");
        assert_eq!(
            remaining(100_000, 200_000, t, 0),
            Duration::from_secs(160),
            "busy until later: the timeout runs from then"
        );
    }

    #[test]
    fn reconnects_do_not_undo_chosen_stops() {
        use Trigger::*;
        for reason in [Some(&StopReason::Idle), Some(&StopReason::Api)] {
            assert!(!may_start(reason, Automatic), "{reason:?}");
            assert!(may_start(reason, Deliberate), "{reason:?}");
        }
        for reason in [
            None,
            Some(&StopReason::Shutdown),
            Some(&StopReason::ScaledDown),
        ] {
            assert!(may_start(reason, Automatic), "{reason:?}");
        }
    }
}
