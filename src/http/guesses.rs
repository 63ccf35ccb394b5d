//! Failed token checks, limited per client: each address (IPv6: each /64, one host's share of
//! addresses) may fail so many times a minute, then gets 429. Only failures count (a request
//! with no credential at all is not one), and a right token or cookie always works. The table
//! is bounded: past its size the client that failed least recently is forgotten.

use crate::http::conns::ClientKey;
use governor::clock::DefaultClock;
use governor::nanos::Nanos;
use governor::state::StateStore;
use governor::{Quota, RateLimiter};
use lru::LruCache;
use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::sync::Mutex;

/// Clients remembered at most (about 100 bytes each).
pub const TABLE_SIZE: usize = 65_536;

/// governor's state, one cell per client, in a least-recently-used table.
pub struct BoundedStore(Mutex<LruCache<ClientKey, Nanos>>);

impl StateStore for BoundedStore {
    type Key = ClientKey;

    fn measure_and_replace<T, F, E>(&self, key: &ClientKey, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        // Each call leaves the table consistent, so a poisoned lock is still usable.
        let mut table = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let (value, state) = f(table.get(key).copied())?;
        table.put(*key, state);
        Ok(value)
    }
}

pub struct Guesses {
    limiter: RateLimiter<ClientKey, BoundedStore, DefaultClock>,
}

impl Guesses {
    pub fn new(per_minute: u32, table_size: usize) -> Self {
        let per_minute =
            std::num::NonZeroU32::new(per_minute.max(1)).unwrap_or(std::num::NonZeroU32::MIN);
        let size = NonZeroUsize::new(table_size.max(1)).unwrap_or(NonZeroUsize::MIN);
        Self {
            limiter: RateLimiter::new(
                Quota::per_minute(per_minute),
                BoundedStore(Mutex::new(LruCache::new(size))),
                DefaultClock::default(),
            ),
        }
    }

    /// Records a failed check from `ip`; false once its client has failed too often.
    pub fn failed(&self, ip: IpAddr) -> bool {
        self.limiter.check_key(&ClientKey::of(ip)).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_64_shares_one_budget_and_the_table_forgets_the_oldest() {
        let g = Guesses::new(2, 2);
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        let a2: IpAddr = "2001:db8::ffff:2".parse().unwrap();
        assert!(g.failed(a));
        assert!(g.failed(a2));
        assert!(!g.failed(a), "the /64 has used its two");
        // Two other clients fill the table; the /64 is forgotten and starts afresh.
        assert!(g.failed("192.0.2.1".parse().unwrap()));
        assert!(g.failed("192.0.2.2".parse().unwrap()));
        assert!(g.failed(a));
    }
}
