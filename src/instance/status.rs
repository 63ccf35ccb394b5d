//! An instance's lifecycle state and live status, and the named transitions between them.
//! Each transition resets what it must (the address, the message, the stop reason), so no
//! caller chooses fields by hand; each returns whether it applied, and `lifecycle` is the only
//! caller.

use super::Upstream;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Lifecycle states. `Stopped` (scaled to zero) is normal: the next visit starts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub enum State {
    Starting,
    Running,
    Stopping,
    Stopped,
    Failed,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Starting => "Starting",
            State::Running => "Running",
            State::Stopping => "Stopping",
            State::Stopped => "Stopped",
            State::Failed => "Failed",
        }
    }
}

/// Why an instance was last stopped. Stored with it (metadata file, Deployment annotation) by
/// these names; a name this version does not know is kept as it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum StopReason {
    /// Nobody worked in it for its idle timeout.
    Idle,
    /// Stopped through the management API.
    Api,
    /// The server shut down (local instances end with it).
    Shutdown,
    Deleted,
    /// Seen scaled down by another server before it said why.
    ScaledDown,
    Other(String),
}

impl StopReason {
    pub fn as_str(&self) -> &str {
        match self {
            StopReason::Idle => "idle",
            StopReason::Api => "api",
            StopReason::Shutdown => "shutdown",
            StopReason::Deleted => "deleted",
            StopReason::ScaledDown => "scaled down",
            StopReason::Other(s) => s,
        }
    }
}

impl From<String> for StopReason {
    fn from(s: String) -> Self {
        match s.as_str() {
            "idle" => StopReason::Idle,
            "api" => StopReason::Api,
            "shutdown" => StopReason::Shutdown,
            "deleted" => StopReason::Deleted,
            "scaled down" => StopReason::ScaledDown,
            _ => StopReason::Other(s),
        }
    }
}

impl From<StopReason> for String {
    fn from(r: StopReason) -> String {
        r.as_str().to_owned()
    }
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The live status of one instance.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    pub state: State,
    /// Start progress while starting; the failure reason when failed.
    pub message: String,
    pub upstream: Option<Upstream>,
    /// Why it was last stopped, shown in the API.
    pub stop_reason: Option<StopReason>,
}

impl Status {
    /// As found at start or created: stopped, for `reason` if one is known.
    pub fn new(reason: Option<StopReason>) -> Self {
        Self {
            state: State::Stopped,
            message: String::new(),
            upstream: None,
            stop_reason: reason,
        }
    }

    /// Stopped or failed → starting. Whatever stopped it no longer holds: it is wanted again.
    pub fn starting(&mut self) -> bool {
        if !matches!(self.state, State::Stopped | State::Failed) {
            return false;
        }
        self.state = State::Starting;
        self.message = "starting".into();
        self.upstream = None;
        self.stop_reason = None;
        true
    }

    /// A progress message while starting.
    pub fn progress(&mut self, message: &str) -> bool {
        if self.state != State::Starting || self.message == message {
            return false;
        }
        self.message = message.to_owned();
        true
    }

    /// Starting → running at `upstream`; false if it was stopped or deleted meanwhile.
    pub fn running(&mut self, upstream: Upstream) -> bool {
        if self.state != State::Starting {
            return false;
        }
        self.state = State::Running;
        self.message = "ready".into();
        self.upstream = Some(upstream);
        self.stop_reason = None;
        true
    }

    /// A start that did not finish (from starting), or a running process that went away
    /// (from running): failed, with why; the next visit starts it again.
    pub fn failed(&mut self, from: State, message: String) -> bool {
        if self.state != from {
            return false;
        }
        self.state = State::Failed;
        self.message = message;
        self.upstream = None;
        true
    }

    /// Running, starting or failed → stopping, for `reason`.
    pub fn stopping(&mut self, reason: &StopReason) -> bool {
        if !matches!(self.state, State::Running | State::Starting | State::Failed) {
            return false;
        }
        self.state = State::Stopping;
        self.message = format!("stopping ({reason})");
        self.stop_reason = Some(reason.clone());
        true
    }

    /// Stopped, for `reason` (`None`: nobody chose it, e.g. its pod went away), with why in
    /// `message` where there is more to say.
    pub fn stopped(&mut self, reason: Option<StopReason>, message: &str) -> bool {
        let changed = self.state != State::Stopped
            || self.stop_reason != reason
            || self.message != message
            || self.upstream.is_some();
        self.state = State::Stopped;
        self.message = message.to_owned();
        self.upstream = None;
        self.stop_reason = reason;
        changed
    }

    /// A stop reason learnt after the fact (another server said why it stopped it, or started
    /// it again: `None`), while it is stopped here.
    pub fn reason_learnt(&mut self, reason: Option<StopReason>) -> bool {
        if self.state != State::Stopped || self.stop_reason == reason {
            return false;
        }
        self.stop_reason = reason;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_keep_their_stored_names() {
        for name in [
            "idle",
            "api",
            "shutdown",
            "deleted",
            "scaled down",
            "custom",
        ] {
            let r = StopReason::from(name.to_owned());
            assert_eq!(serde_json::to_string(&r).unwrap(), format!("{name:?}"));
        }
        assert_eq!(StopReason::from("idle".to_owned()), StopReason::Idle);
    }

    #[test]
    fn transitions_reset_what_they_must() {
        let mut s = Status::new(Some(StopReason::Idle));
        assert!(s.starting());
        assert_eq!(s.stop_reason, None);
        assert!(!s.starting(), "one start at a time");
        assert!(s.failed(State::Starting, "exit 1".into()));
        assert!(s.stopping(&StopReason::Api));
        assert!(s.stopped(Some(StopReason::Api), ""));
        assert_eq!((s.state, s.message.as_str()), (State::Stopped, ""));
        assert!(!s.failed(State::Running, "late".into()), "not running");
    }
}
