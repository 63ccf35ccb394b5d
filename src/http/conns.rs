//! The table of open client connections: the total and per-client caps, which connections are
//! idle (no request in flight), and closing them: the idle ones first when a cap is reached,
//! any that stays idle past the idle timeout, all of them at shutdown.
//!
//! A connection's entry lives as long as its [`Conn`] handle; an upgraded (WebSocket) tunnel
//! keeps a clone, so tunnels count against the caps and are never taken for idle.
//!
//! A connection counts against its client's share once its client is known: at accept (the
//! peer), after a PROXY protocol header ([`Conn::assign`]), or never, for a connection from a
//! trusted proxy that relays many clients (it counts against the total only).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    pub max_total: usize,
    pub max_per_client: usize,
    /// How long a connection with no request in flight stays open.
    pub idle: Duration,
}

/// Who a connection counts against: its IPv4 address, or its IPv6 /64 (one host's share of
/// addresses).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientKey(u128);

impl ClientKey {
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Self(u32::from(v4) as u128),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self(u32::from(v4) as u128),
                None => Self((u128::from(v6) & !((1u128 << 64) - 1)) | 1),
            },
        }
    }
}

/// A connection that has not finished a request yet may be taken for idle only after this
/// long: it gets its chance to send one (a TLS handshake alone may take up to 10 s).
const FRESH_GRACE: Duration = Duration::from_secs(10);

/// What the table knows of one connection.
pub struct ConnInfo {
    inflight: AtomicUsize,
    /// Whether a request has finished on it (it is then a keep-alive connection).
    served: AtomicBool,
    opened_ms: u64,
    /// Milliseconds since the table's epoch when the last request ended (or it opened).
    last_ms: AtomicU64,
    /// Cancelled to ask the connection to close (idle eviction, shutdown).
    pub close: CancellationToken,
    /// Cancelled at the drain deadline: what outlived the drain (WebSocket tunnels) ends.
    pub going_away: CancellationToken,
    epoch: Instant,
}

impl ConnInfo {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Marks a request in flight until the guard drops.
    pub fn busy(self: &Arc<Self>) -> Busy {
        self.inflight.fetch_add(1, Ordering::Relaxed);
        Busy(self.clone())
    }

    /// How long it has had nothing in flight; `None` while something is.
    pub fn idle_for(&self) -> Option<Duration> {
        if self.inflight.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let last = self.last_ms.load(Ordering::Relaxed);
        Some(Duration::from_millis(self.now_ms().saturating_sub(last)))
    }
}

/// A request (or a tunnel) in flight on a connection.
pub struct Busy(Arc<ConnInfo>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.served.store(true, Ordering::Relaxed);
        self.0.last_ms.store(self.0.now_ms(), Ordering::Relaxed);
        self.0.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One open connection in the table: who it counts against (none: the total only).
struct Entry {
    info: Arc<ConnInfo>,
    client: Option<ClientKey>,
}

#[derive(Default)]
struct Table {
    next: u64,
    open: HashMap<u64, Entry>,
    per_client: HashMap<ClientKey, usize>,
}

impl Table {
    fn remove(&mut self, id: u64) -> bool {
        let Some(entry) = self.open.remove(&id) else {
            return false;
        };
        if let Some(client) = entry.client {
            self.uncount(client);
        }
        true
    }

    fn uncount(&mut self, client: ClientKey) {
        if let Some(n) = self.per_client.get_mut(&client) {
            *n -= 1;
            if *n == 0 {
                self.per_client.remove(&client);
            }
        }
    }

    /// Whether `client` may have one more connection: below its share, or one of its own idle
    /// connections was asked to close to make room.
    fn room_for(&mut self, client: ClientKey, max: usize) -> bool {
        let mine = self.per_client.get(&client).copied().unwrap_or(0);
        mine < max || self.evict_idle(Some(client))
    }

    /// Asks the longest-idle connection (of `client`, if given) to close and takes it out of
    /// the counts at once, so its place is free while it finishes closing. A new connection
    /// counts as idle only once it has served a request or had its grace.
    fn evict_idle(&mut self, client: Option<ClientKey>) -> bool {
        let victim = self
            .open
            .iter()
            .filter(|(_, e)| client.is_none_or(|k| e.client == Some(k)))
            .map(|(id, e)| (id, &e.info))
            .filter(|(_, c)| {
                c.served.load(Ordering::Relaxed)
                    || c.now_ms().saturating_sub(c.opened_ms) >= FRESH_GRACE.as_millis() as u64
            })
            .filter_map(|(id, c)| c.idle_for().map(|idle| (*id, idle)))
            .max_by_key(|(_, idle)| *idle);
        let Some((id, _)) = victim else {
            return false;
        };
        if let Some(e) = self.open.get(&id) {
            e.info.close.cancel();
        }
        self.remove(id)
    }
}

pub struct Conns {
    limits: ConnLimits,
    table: Mutex<Table>,
    freed: Notify,
    shutdown: CancellationToken,
    going_away: CancellationToken,
    epoch: Instant,
}

/// An open connection's place in the table, given back when the last clone drops.
pub struct Conn {
    conns: Arc<Conns>,
    id: u64,
    pub info: Arc<ConnInfo>,
}

impl Conn {
    /// Counts this connection against `ip`'s share from now on (its client became known after
    /// accept). At the share, the client's own idle connection makes room; else false, and the
    /// connection should be closed.
    pub fn assign(&self, ip: IpAddr) -> bool {
        let client = ClientKey::of(ip);
        let mut t = self.conns.table();
        let Some(previous) = t.open.get(&self.id).map(|e| e.client) else {
            return false;
        };
        if previous == Some(client) {
            return true;
        }
        if let Some(p) = previous {
            t.uncount(p);
        }
        if let Some(e) = t.open.get_mut(&self.id) {
            e.client = None;
        }
        if !t.room_for(client, self.conns.limits.max_per_client) {
            return false;
        }
        if let Some(e) = t.open.get_mut(&self.id) {
            e.client = Some(client);
            *t.per_client.entry(client).or_default() += 1;
        }
        true
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if self.conns.table().remove(self.id) {
            self.conns.freed.notify_waiters();
        }
    }
}

impl Conns {
    pub fn new(limits: ConnLimits, shutdown: CancellationToken) -> Arc<Self> {
        Arc::new(Self {
            limits: ConnLimits {
                max_total: limits.max_total.max(1),
                max_per_client: limits.max_per_client.max(1),
                ..limits
            },
            table: Mutex::new(Table::default()),
            freed: Notify::new(),
            shutdown,
            going_away: CancellationToken::new(),
            epoch: Instant::now(),
        })
    }

    pub fn limits(&self) -> ConnLimits {
        self.limits
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        // Every critical section leaves the table consistent, so a poisoned lock is usable.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Open connections.
    pub fn len(&self) -> usize {
        self.table().open.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A place for a new connection from `ip` (`None`: a client not known yet, counted
    /// against the total only). At the per-client cap the client's own idle connection makes
    /// room, else the new one is refused (`None`); at the total cap the longest-idle
    /// connection makes room, else this waits until one closes.
    pub async fn admit(self: &Arc<Self>, ip: Option<IpAddr>) -> Option<Arc<Conn>> {
        let client = ip.map(ClientKey::of);
        loop {
            let freed = self.freed.notified();
            {
                let mut t = self.table();
                if let Some(client) = client {
                    if !t.room_for(client, self.limits.max_per_client) {
                        return None;
                    }
                }
                if t.open.len() < self.limits.max_total || t.evict_idle(None) {
                    let id = t.next;
                    t.next += 1;
                    let now = self.epoch.elapsed().as_millis() as u64;
                    let info = Arc::new(ConnInfo {
                        inflight: AtomicUsize::new(0),
                        served: AtomicBool::new(false),
                        opened_ms: now,
                        last_ms: AtomicU64::new(now),
                        close: self.shutdown.child_token(),
                        going_away: self.going_away.clone(),
                        epoch: self.epoch,
                    });
                    t.open.insert(
                        id,
                        Entry {
                            info: info.clone(),
                            client,
                        },
                    );
                    if let Some(client) = client {
                        *t.per_client.entry(client).or_default() += 1;
                    }
                    return Some(Arc::new(Conn {
                        conns: self.clone(),
                        id,
                        info,
                    }));
                }
            }
            tokio::select! {
                () = freed => {}
                () = self.shutdown.cancelled() => return None,
            }
        }
    }

    /// Ends what is still open at the drain deadline (tunnels close with "going away").
    pub fn go_away(&self) {
        self.going_away.cancel();
    }

    /// Waits until every connection has closed.
    pub async fn drained(&self) {
        loop {
            let freed = self.freed.notified();
            if self.is_empty() {
                return;
            }
            freed.await;
        }
    }
}

#[cfg(test)]
mod tests;
