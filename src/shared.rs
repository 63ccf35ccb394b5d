//! What every request handler shares: the lifecycle (and through it the registry and backend),
//! the admin token, the origins, defaults, the upstream pool, the guess limiter, the trusted
//! proxies and the metrics.

use crate::http::client_addr::TrustedProxies;
use crate::http::guesses::{self, Guesses};
use crate::http::origin::Origins;
use crate::instance::{AccessToken, SpecDefaults};
use crate::lifecycle::Lifecycle;
use crate::metrics::Metrics;
use crate::upstream::UpstreamClient;
use std::sync::Arc;
use std::time::Duration;

pub struct Shared {
    pub lifecycle: Arc<Lifecycle>,
    pub admin_token: AccessToken,
    /// The public URL, and the origin of each instance.
    pub origins: Origins,
    pub defaults: SpecDefaults,
    pub upstream: UpstreamClient,
    /// Failed token checks per client.
    pub guesses: Guesses,
    /// A WebSocket tunnel with no bytes either way for this long is closed.
    pub tunnel_idle_timeout: Duration,
    pub metrics: Arc<Metrics>,
    /// Load balancers whose word on who the client is counts.
    pub trusted: TrustedProxies,
}

impl Shared {
    pub fn new(
        lifecycle: Arc<Lifecycle>,
        admin_token: AccessToken,
        origins: Origins,
        defaults: SpecDefaults,
        auth_failures_per_minute: u32,
    ) -> Self {
        let upstream = UpstreamClient::new(Duration::from_secs(5), Duration::from_secs(60));
        Self {
            metrics: lifecycle.metrics.clone(),
            lifecycle,
            admin_token,
            origins,
            defaults,
            upstream,
            guesses: Guesses::new(auth_failures_per_minute, guesses::TABLE_SIZE),
            tunnel_idle_timeout: Duration::from_secs(600),
            trusted: TrustedProxies::default(),
        }
    }
}
