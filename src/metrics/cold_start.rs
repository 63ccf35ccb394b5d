//! A cold start's phases: each timed from the end of the one before, reported in order by the
//! start's progress, the last one ([`Phase::FirstByte`]) by the proxy.

use super::Metrics;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The phases of a cold start, in order. Each is timed from the end of the one before (the
/// first from the start's beginning); a phase a backend does not go through is recorded as
/// taking no time, so every cold start counts once in each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Waiting for a turn among `--max-concurrent-starts`.
    Queued = 0,
    /// Until the process is spawned (local: after preparing VS Code) or the pod is scheduled.
    Spawned = 1,
    /// Volumes attached and init containers run (Kubernetes); none locally.
    Init = 2,
    /// Until VS Code listens (local: its socket accepts connections; Kubernetes: the pod is
    /// ready).
    Listening = 3,
    /// Until it answers its readiness check and is marked running.
    Ready = 4,
    /// Until the first response after the start is on its way to a browser.
    FirstByte = 5,
}

pub(super) const PHASES: [&str; 6] = [
    "queued",
    "spawned",
    "init",
    "listening",
    "ready",
    "first_byte",
];

/// A first response later than this after the start is not counted as its last phase: nobody
/// was waiting for it (say, an instance started through the API and visited much later).
const FIRST_BYTE_WINDOW: Duration = Duration::from_secs(120);

/// Times one cold start's phases. Phases are reported in order; one reported again, or after a
/// later one, is ignored, and the ones skipped are recorded as taking no time.
pub struct ColdStart {
    metrics: Arc<Metrics>,
    /// When the last phase ended, and the next phase to record.
    at: Mutex<(Instant, usize)>,
}

impl ColdStart {
    pub fn begin(metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            metrics,
            at: Mutex::new((Instant::now(), 0)),
        })
    }

    /// `phase` ended now.
    pub fn reached(&self, phase: Phase) {
        let p = phase as usize;
        // Guards two plain values: a poisoned lock is as good as any.
        let mut at = self.at.lock().unwrap_or_else(|e| e.into_inner());
        let (last, next) = *at;
        if p < next {
            return;
        }
        let now = Instant::now();
        if phase == Phase::FirstByte && now.duration_since(last) > FIRST_BYTE_WINDOW {
            at.1 = PHASES.len();
            return;
        }
        for skipped in next..p {
            self.metrics.phase(skipped, Duration::ZERO);
        }
        self.metrics.phase(p, now.duration_since(last));
        *at = (now, p + 1);
    }
}

/// On an instance: the cold start that waits for its first response to a browser. Checked on
/// every proxied response with one relaxed load.
#[derive(Default)]
pub struct FirstByte {
    armed: AtomicBool,
    start: Mutex<Option<Arc<ColdStart>>>,
}

impl std::fmt::Debug for FirstByte {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FirstByte")
            .field("armed", &self.armed.load(Ordering::Relaxed))
            .finish()
    }
}

impl FirstByte {
    /// The instance is ready: its next response ends `start`.
    pub fn arm(&self, start: Arc<ColdStart>) {
        *self.start.lock().unwrap_or_else(|e| e.into_inner()) = Some(start);
        self.armed.store(true, Ordering::Release);
    }

    /// A response is on its way to a browser.
    #[inline]
    pub fn responded(&self) {
        if self.armed.load(Ordering::Relaxed) {
            self.take_slow();
        }
    }

    #[cold]
    fn take_slow(&self) {
        let start = self.start.lock().unwrap_or_else(|e| e.into_inner()).take();
        self.armed.store(false, Ordering::Relaxed);
        if let Some(s) = start {
            s.reached(Phase::FirstByte);
        }
    }
}
