//! Idle keep-alive connections to instances, by address, each with the instant after which it
//! is not handed out again (see [`super::reuse_window`]).

use super::h1::Conn;
use crate::instance::UpstreamAddr;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

struct Pooled {
    conn: Box<Conn>,
    reuse_until: Instant,
}

/// Only connections that have nothing in flight are here: a response read to its end puts
/// its connection back (through [`Home`]).
#[derive(Default)]
pub struct Pool {
    // foldhash: two lookups per request, keyed by addresses the orchestrators chose.
    idle: Mutex<HashMap<UpstreamAddr, Vec<Pooled>, foldhash::fast::RandomState>>,
    returns: AtomicUsize,
}

impl Pool {
    fn idle(
        &self,
    ) -> MutexGuard<'_, HashMap<UpstreamAddr, Vec<Pooled>, foldhash::fast::RandomState>> {
        // Each critical section leaves the map consistent, so a poisoned lock is still usable.
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The most recently returned connection to `addr` that may still be reused.
    pub fn take(&self, addr: &UpstreamAddr) -> Option<Box<Conn>> {
        let mut idle = self.idle();
        let conns = idle.get_mut(addr)?;
        let now = Instant::now();
        let mut found = None;
        while let Some(p) = conns.pop() {
            if p.reuse_until > now {
                found = Some(p.conn);
                break;
            }
        }
        if conns.is_empty() {
            idle.remove(addr);
        }
        found
    }

    fn put(&self, addr: &UpstreamAddr, conn: Box<Conn>, reuse_until: Instant) {
        let mut idle = self.idle();
        let pooled = Pooled { conn, reuse_until };
        // Looked up by reference: only a new entry pays for a key of its own.
        match idle.get_mut(addr) {
            Some(conns) => conns.push(pooled),
            None => {
                idle.insert(addr.clone(), vec![pooled]);
            }
        }
        // Now and then, forget connections past their reuse (instances stopped, moved).
        if self.returns.fetch_add(1, Ordering::Relaxed) % 4096 == 0 {
            let now = Instant::now();
            idle.retain(|_, conns| {
                conns.retain(|c| c.reuse_until > now);
                !conns.is_empty()
            });
        }
    }
}

/// Where a connection goes back to once its response has been read, and until when it may be
/// reused (`None`: not at all).
pub struct Home {
    pub pool: Arc<Pool>,
    pub addr: UpstreamAddr,
    pub reuse_until: Option<Instant>,
}

impl Home {
    /// Keeps an idle connection for reuse; past its deadline it is dropped when next looked at.
    pub fn put(self, conn: Box<Conn>) {
        if let Some(until) = self.reuse_until {
            self.pool.put(&self.addr, conn, until);
        }
    }
}
