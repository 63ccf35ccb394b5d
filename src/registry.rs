//! The instance table: every known instance, its live status and its activity.
//!
//! Lookups on the request path take one shard read lock (DashMap) and clone an `Arc`; status
//! changes go through a `watch` channel so that waiters (held requests, event streams, the
//! starting page) see every transition without polling.
//!
//! Activity is a wall-clock time in milliseconds, read from a [`Clock`]: the system clock in
//! the server, tokio's clock in tests that pause time.
//!
//! An instance's access token can be replaced (see `lifecycle`): requests check it against
//! the [`Credential`] current when they arrive, and what a credential opened for longer (a
//! WebSocket tunnel) ends when it is replaced.

use crate::instance::{
    AccessToken, InstanceId, InstanceRecord, InstanceSpec, State, Status, Upstream, UserId,
};
use dashmap::DashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Milliseconds since the Unix epoch: activity must survive restarts, so it is wall-clock time.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Where activity times come from.
#[derive(Debug, Clone, Copy)]
pub enum Clock {
    /// The system's wall clock.
    System,
    /// Wall-clock time as of `anchor_ms` at `anchor`, advanced by tokio's clock, so that a
    /// test with paused time controls it.
    Tokio {
        anchor_ms: u64,
        anchor: tokio::time::Instant,
    },
}

impl Clock {
    /// A clock that follows tokio's time from now on.
    pub fn tokio() -> Self {
        Clock::Tokio {
            anchor_ms: now_ms(),
            anchor: tokio::time::Instant::now(),
        }
    }

    pub fn now_ms(&self) -> u64 {
        match self {
            Clock::System => now_ms(),
            Clock::Tokio { anchor_ms, anchor } => anchor_ms + anchor.elapsed().as_millis() as u64,
        }
    }
}

/// An instance's access token as of one generation, and the signal that it was replaced.
#[derive(Debug)]
pub struct Credential {
    token: AccessToken,
    generation: u64,
    /// Made when first asked for (a tunnel opens) or when cancelled, so instances nobody holds
    /// a tunnel to carry none.
    replaced: OnceLock<CancellationToken>,
}

impl Credential {
    pub(crate) fn new(token: AccessToken, generation: u64) -> Self {
        Self {
            token,
            generation,
            replaced: OnceLock::new(),
        }
    }

    /// Whether `candidate` is this token, compared in constant time.
    pub fn matches(&self, candidate: &[u8]) -> bool {
        self.token.matches(candidate)
    }

    pub fn token(&self) -> &AccessToken {
        &self.token
    }

    /// Cancelled once another token takes this one's place (at once if it already has).
    pub fn replaced(&self) -> CancellationToken {
        self.replaced.get_or_init(CancellationToken::new).clone()
    }
}

/// One instance: its fixed facts plus its access token, status and activity.
#[derive(Debug)]
pub struct Instance {
    pub id: InstanceId,
    pub user: UserId,
    pub spec: InstanceSpec,
    pub created_at: u64,
    /// Replaced whole, so one request sees one token from its check to its cookie.
    credential: RwLock<Arc<Credential>>,
    status: watch::Sender<Status>,
    /// The latest human activity; in the future when a client said it is busy until then.
    last_activity_ms: AtomicU64,
    inflight: AtomicUsize,
    /// Whether the backend last reported it scaled up, whoever started it: another replica,
    /// or this server before a restart (the local backend reports nothing).
    backend_running: AtomicBool,
    clock: Clock,
    /// The cold start that waits for this instance's first response to a browser.
    pub first_byte: crate::metrics::FirstByte,
}

impl Instance {
    /// An instance as stored: stopped, for the reason recorded.
    pub fn from_record(rec: InstanceRecord, clock: Clock) -> Self {
        let status = Status::new(rec.stop_reason);
        Self {
            id: rec.instance_id,
            user: rec.user_id,
            spec: rec.spec,
            created_at: rec.created_at,
            credential: RwLock::new(Arc::new(Credential::new(
                rec.access_token,
                rec.token_generation,
            ))),
            status: watch::Sender::new(status),
            last_activity_ms: AtomicU64::new(rec.last_activity_ms),
            inflight: AtomicUsize::new(0),
            backend_running: AtomicBool::new(false),
            clock,
            first_byte: Default::default(),
        }
    }

    /// The durable facts as of now, for a backend to store.
    pub fn record(&self) -> InstanceRecord {
        let credential = self.credential();
        InstanceRecord {
            instance_id: self.id.clone(),
            user_id: self.user.clone(),
            spec: self.spec.clone(),
            access_token: credential.token.clone(),
            token_generation: credential.generation,
            created_at: self.created_at,
            last_activity_ms: self.last_activity_ms(),
            stop_reason: self.status.borrow().stop_reason.clone(),
        }
    }

    /// The access token now.
    pub fn credential(&self) -> Arc<Credential> {
        // Only ever replaced whole by one assignment, so a poisoned lock still holds a valid
        // credential.
        self.credential
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Puts `token` in place of the current one if its generation is newer, and signals the
    /// replaced one's end. Returns whether it took effect. Only `lifecycle` calls this.
    pub(crate) fn replace_token(&self, token: AccessToken, generation: u64) -> bool {
        let old = {
            let mut current = self.credential.write().unwrap_or_else(|p| p.into_inner());
            if generation <= current.generation {
                return false;
            }
            std::mem::replace(&mut *current, Arc::new(Credential::new(token, generation)))
        };
        old.replaced().cancel();
        true
    }

    pub fn status(&self) -> Status {
        self.status.borrow().clone()
    }

    pub fn state(&self) -> State {
        self.status.borrow().state
    }

    /// The upstream when running, without cloning the whole status.
    pub fn running_upstream(&self) -> Option<Upstream> {
        let s = self.status.borrow();
        match s.state {
            State::Running => s.upstream.clone(),
            _ => None,
        }
    }

    pub fn subscribe(&self) -> watch::Receiver<Status> {
        self.status.subscribe()
    }

    /// Applies a transition (see [`Status`]) atomically; only when it applied are watchers
    /// woken. Only `lifecycle` calls this.
    pub(crate) fn update(&self, f: impl FnOnce(&mut Status) -> bool) -> bool {
        self.status.send_if_modified(f)
    }

    /// Records activity now. Never moves the time back, so a declared "busy until" holds.
    pub fn touch(&self) {
        self.observe_activity(self.clock.now_ms());
    }

    /// Takes activity seen elsewhere (another server, a "busy until") into account.
    pub fn backend_running(&self) -> bool {
        self.backend_running.load(Ordering::Relaxed)
    }

    /// What the backend reported last; returns what it said before.
    pub fn set_backend_running(&self, up: bool) -> bool {
        self.backend_running.swap(up, Ordering::Relaxed)
    }

    pub fn observe_activity(&self, ms: u64) {
        self.last_activity_ms.fetch_max(ms, Ordering::Relaxed);
    }

    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    pub fn last_activity_ms(&self) -> u64 {
        self.last_activity_ms.load(Ordering::Relaxed)
    }

    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Relaxed)
    }

    /// Marks a request as in progress until the guard drops; an instance with requests in
    /// flight is never idle.
    pub fn activity(self: &Arc<Self>) -> ActivityGuard {
        self.touch();
        self.inflight.fetch_add(1, Ordering::Relaxed);
        ActivityGuard(self.clone())
    }
}

/// Keeps an instance busy while alive; records activity when dropped too, so a long response
/// counts as activity up to its end.
#[derive(Debug)]
pub struct ActivityGuard(Arc<Instance>);

impl ActivityGuard {
    pub fn instance(&self) -> &Arc<Instance> {
        &self.0
    }
}

impl Drop for ActivityGuard {
    fn drop(&mut self) {
        self.0.touch();
        self.0.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The table of instances.
#[derive(Debug)]
pub struct Registry {
    // foldhash rather than SipHash: a lookup per request, and only the server adds keys (ids it
    // generated), so there is no flood of chosen keys to resist. Seeded per process.
    map: DashMap<InstanceId, Arc<Instance>, foldhash::fast::RandomState>,
    /// Instances per user, kept beside the table so that a create's per-user limit does not
    /// walk every instance (a burst of creates would be quadratic in the table's size).
    per_user: DashMap<UserId, usize, foldhash::fast::RandomState>,
    clock: Clock,
}

impl Default for Registry {
    fn default() -> Self {
        Self::with_clock(Clock::System)
    }
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_clock(clock: Clock) -> Self {
        Self {
            map: DashMap::default(),
            per_user: DashMap::default(),
            clock,
        }
    }

    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// An instance from its stored facts, on this table's clock (not yet inserted).
    pub fn instance(&self, rec: InstanceRecord) -> Arc<Instance> {
        Arc::new(Instance::from_record(rec, self.clock))
    }

    pub fn get(&self, id: &InstanceId) -> Option<Arc<Instance>> {
        self.map.get(id).map(|e| e.value().clone())
    }

    /// Looks up by the raw path segment, without allocating an id on the request path.
    pub fn get_str(&self, id: &str) -> Option<Arc<Instance>> {
        self.map.get(id).map(|e| e.value().clone())
    }

    pub fn insert(&self, inst: Arc<Instance>) {
        let user = inst.user.clone();
        // An id names its user, so a replaced entry was the same user's.
        if self.map.insert(inst.id.clone(), inst).is_none() {
            *self.per_user.entry(user).or_insert(0) += 1;
        }
    }

    pub fn remove(&self, id: &InstanceId) -> Option<Arc<Instance>> {
        let (_, inst) = self.map.remove(id)?;
        if let dashmap::Entry::Occupied(mut e) = self.per_user.entry(inst.user.clone()) {
            *e.get_mut() = e.get().saturating_sub(1);
            if *e.get() == 0 {
                e.remove();
            }
        }
        Some(inst)
    }

    /// How many instances `user` has.
    pub fn count_of_user(&self, user: &UserId) -> usize {
        self.per_user.get(user).map_or(0, |c| *c)
    }

    /// A snapshot, sorted by id so listings are stable.
    pub fn all(&self) -> Vec<Arc<Instance>> {
        let mut v: Vec<_> = self.map.iter().map(|e| e.value().clone()).collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// One user's instances, sorted by id; only theirs are copied and sorted.
    pub fn of_user(&self, user: &UserId) -> Vec<Arc<Instance>> {
        let mut v: Vec<_> = self
            .map
            .iter()
            .filter(|e| &e.value().user == user)
            .map(|e| e.value().clone())
            .collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// How many instances `pred` holds for, without a snapshot: creates and starts ask this,
    /// and a sorted copy of a large table each time would make a burst of them quadratic.
    pub fn count(&self, pred: impl Fn(&Instance) -> bool) -> usize {
        self.map.iter().filter(|e| pred(e.value())).count()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

impl std::borrow::Borrow<str> for InstanceId {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instance::{CreateRequest, SpecDefaults};

    #[test]
    fn a_newer_token_replaces_the_current_one_and_ends_it() {
        let (user, spec) = CreateRequest {
            user_id: "alice".into(),
            ..Default::default()
        }
        .validate(&SpecDefaults::default())
        .unwrap();
        let first = AccessToken::generate();
        let inst = Registry::new().instance(InstanceRecord {
            instance_id: InstanceId::generate(&user),
            user_id: user,
            spec,
            access_token: first.clone(),
            token_generation: 3,
            created_at: 0,
            last_activity_ms: 0,
            stop_reason: None,
        });
        let old = inst.credential();
        let stale = AccessToken::generate();
        assert!(!inst.replace_token(stale.clone(), 3), "not newer");
        assert!(!inst.replace_token(stale, 2), "older");
        let opened = old.replaced();
        assert!(!opened.is_cancelled());
        assert!(inst.credential().matches(first.expose().as_bytes()));

        let second = AccessToken::generate();
        assert!(inst.replace_token(second.clone(), 4));
        assert!(opened.is_cancelled(), "what the old one opened ends");
        assert!(old.replaced().is_cancelled(), "and what it would open late");
        let now = inst.credential();
        assert!(!now.replaced().is_cancelled());
        assert!(now.matches(second.expose().as_bytes()));
        assert!(!now.matches(first.expose().as_bytes()));
        let rec = inst.record();
        assert_eq!((rec.access_token, rec.token_generation), (second, 4));
    }

    #[test]
    fn per_user_counts_follow_inserts_and_removes() {
        let reg = Registry::new();
        let make = |user: &str| reg.instance(InstanceRecord::for_tests(user));
        let alice: Vec<_> = (0..3).map(|_| make("alice")).collect();
        let bob = make("bob");
        for i in alice.iter().chain([&bob]) {
            reg.insert(i.clone());
        }
        reg.insert(alice[0].clone());
        let user = |u: &str| UserId::try_from(u.to_owned()).unwrap();
        assert_eq!(
            reg.count_of_user(&user("alice")),
            3,
            "a replaced entry counts once"
        );
        assert_eq!(reg.count_of_user(&user("bob")), 1);
        assert!(reg.remove(&alice[1].id).is_some());
        assert!(reg.remove(&alice[1].id).is_none());
        assert_eq!(reg.count_of_user(&user("alice")), 2);
        assert!(reg.remove(&bob.id).is_some());
        assert_eq!(reg.count_of_user(&user("bob")), 0);
        assert_eq!(reg.per_user.len(), 1, "no entry kept for a user with none");
    }
}
