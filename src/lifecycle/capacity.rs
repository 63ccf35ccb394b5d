//! How much this server takes on: instances per user, instances running at once, and starts in
//! progress at once (the rest wait their turn in order, so a burst of first visits on a small
//! machine does not start everything together).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use tokio::sync::{Semaphore, SemaphorePermit};

pub struct Capacity {
    pub max_per_user: usize,
    pub max_running: usize,
    starts: Semaphore,
    waiting: AtomicUsize,
    /// Held while a start is checked against `max_running` and begun, so two cannot both
    /// take the last place.
    gate: Mutex<()>,
}

impl Capacity {
    pub fn new(max_per_user: usize, max_running: usize, max_concurrent_starts: usize) -> Self {
        Self {
            max_per_user: max_per_user.max(1),
            max_running: max_running.max(1),
            starts: Semaphore::new(max_concurrent_starts.clamp(1, Semaphore::MAX_PERMITS)),
            waiting: AtomicUsize::new(0),
            gate: Mutex::new(()),
        }
    }

    pub(super) fn gate(&self) -> MutexGuard<'_, ()> {
        // Guards no data of its own: a poisoned lock is as good as any.
        self.gate.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A turn to run a start, held until the start is done. When none is free, `queued` is
    /// told how many starts are ahead before this waits.
    pub(super) async fn start_turn(
        &self,
        queued: impl FnOnce(usize),
    ) -> Option<SemaphorePermit<'_>> {
        if let Ok(p) = self.starts.try_acquire() {
            return Some(p);
        }
        let ahead = self.waiting.fetch_add(1, Ordering::Relaxed) + 1;
        queued(ahead);
        let turn = self.starts.acquire().await.ok();
        self.waiting.fetch_sub(1, Ordering::Relaxed);
        turn
    }
}

/// No limits: for tests of other things.
impl Default for Capacity {
    fn default() -> Self {
        Self::new(usize::MAX, usize::MAX, Semaphore::MAX_PERMITS)
    }
}
