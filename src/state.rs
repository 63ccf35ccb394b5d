//! What every request handler shares: the lifecycle (and through it the registry and backend),
//! the admin token, the public URL, defaults, the upstream client and the auth rate limiter.

use crate::instance::{AccessToken, SpecDefaults};
use crate::lifecycle::Lifecycle;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use hyper::body::Incoming;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

pub type UpstreamClient = Client<HttpConnector, Incoming>;

pub struct Shared {
    pub lifecycle: Arc<Lifecycle>,
    pub admin_token: AccessToken,
    /// `https://host[:port]` without a trailing slash.
    pub public_url: String,
    pub defaults: SpecDefaults,
    pub upstream: UpstreamClient,
    /// Counts failed token checks per client address.
    pub auth_failures: DefaultKeyedRateLimiter<IpAddr>,
}

impl Shared {
    pub fn new(
        lifecycle: Arc<Lifecycle>,
        admin_token: AccessToken,
        public_url: String,
        defaults: SpecDefaults,
        auth_failures_per_minute: u32,
    ) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        let upstream = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(256)
            .build(connector);
        let per_minute =
            NonZeroU32::new(auth_failures_per_minute.max(1)).unwrap_or(NonZeroU32::MIN);
        Self {
            lifecycle,
            admin_token,
            public_url: public_url.trim_end_matches('/').to_owned(),
            defaults,
            upstream,
            auth_failures: RateLimiter::keyed(Quota::per_minute(per_minute)),
        }
    }

    /// Records a failed token check; false once the address has failed too often.
    pub fn auth_failure_allowed(&self, ip: IpAddr) -> bool {
        self.auth_failures.check_key(&ip).is_ok()
    }
}
