//! What the server counts, in the Prometheus text format: requests by class and status class
//! with their latency, proxied bytes, open connections and WebSocket tunnels, instances by
//! state, starts, stops by reason, failures by kind, refused credentials, and how long each
//! phase of a cold start took ([`Phase`], timed by [`ColdStart`], in [`cold_start`]).
//!
//! The data path only touches handles resolved when the server starts (an atomic add, or a
//! histogram's short lock): no label is looked up per request. Names follow the Prometheus
//! conventions: `vod_` prefix, base units, `_total` for counters.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::time::Duration;

mod cold_start;

use cold_start::PHASES;
pub use cold_start::{ColdStart, FirstByte, Phase};

type Labels = Vec<(&'static str, &'static str)>;

/// Who answered a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// The management API and `/metrics`.
    Api = 0,
    /// An instance's requests: forwarded, or held or answered by the starting page.
    Proxy = 1,
    /// Our own pages: those under `/_vod/`, `/`, redirects and not-found answers.
    Own = 2,
}

const CLASSES: [&str; 3] = ["api", "proxy", "own"];

impl Class {
    pub fn as_str(self) -> &'static str {
        CLASSES[self as usize]
    }
}
const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Every metric, registered once.
pub struct Metrics {
    registry: Registry,
    requests: [[Counter; 5]; 3],
    durations: [Histogram; 3],
    bytes_to_client: Counter,
    bytes_to_instance: Counter,
    connections: Gauge,
    tunnels: Gauge,
    instances: Family<Labels, Gauge>,
    starts: Counter,
    stops: Family<Labels, Counter>,
    failures: Family<Labels, Counter>,
    auth_failures: [Counter; 2],
    rate_limited: Counter,
    cold_start: [Histogram; 6],
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn latency_buckets() -> Histogram {
    // 1 ms to ~33 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

impl Metrics {
    pub fn new() -> Self {
        let mut r = Registry::with_prefix("vod");
        let requests_f = Family::<Labels, Counter>::default();
        let requests = std::array::from_fn(|c| {
            std::array::from_fn(|s| {
                requests_f.get_or_create_owned(&vec![
                    ("class", CLASSES[c]),
                    ("status", STATUS_CLASSES[s]),
                ])
            })
        });
        r.register(
            "http_requests",
            "Requests answered, by class (api, proxy, own) and status class",
            requests_f,
        );
        let durations_f = Family::<Labels, Histogram>::new_with_constructor(latency_buckets as _);
        let durations =
            std::array::from_fn(|c| durations_f.get_or_create_owned(&vec![("class", CLASSES[c])]));
        r.register(
            "http_request_duration_seconds",
            "Time until a response's head was ready, by class",
            durations_f,
        );
        let bytes_f = Family::<Labels, Counter>::default();
        let bytes_to_client = bytes_f.get_or_create_owned(&vec![("direction", "to_client")]);
        let bytes_to_instance = bytes_f.get_or_create_owned(&vec![("direction", "to_instance")]);
        r.register(
            "proxied_bytes",
            "Body and WebSocket bytes passed between clients and instances",
            bytes_f,
        );
        let connections = Gauge::default();
        r.register(
            "open_connections",
            "Client connections open",
            connections.clone(),
        );
        let tunnels = Gauge::default();
        r.register(
            "websocket_tunnels",
            "WebSocket tunnels open",
            tunnels.clone(),
        );
        let instances = Family::<Labels, Gauge>::default();
        r.register("instances", "Instances by state", instances.clone());
        let starts = Counter::default();
        r.register("instance_starts", "Starts begun", starts.clone());
        let stops = Family::<Labels, Counter>::default();
        r.register("instance_stops", "Stops, by reason", stops.clone());
        let failures = Family::<Labels, Counter>::default();
        r.register(
            "instance_failures",
            "Failed starts (start_timeout, start_error) and instances that exited on their own \
             (exited)",
            failures.clone(),
        );
        let auth_f = Family::<Labels, Counter>::default();
        let auth_failures = [
            auth_f.get_or_create_owned(&vec![("endpoint", "api")]),
            auth_f.get_or_create_owned(&vec![("endpoint", "instance")]),
        ];
        r.register(
            "auth_failures",
            "Wrong admin or instance tokens presented",
            auth_f,
        );
        let rate_limited = Counter::default();
        r.register(
            "rate_limited_requests",
            "Requests refused (429) because their client presented too many wrong tokens",
            rate_limited.clone(),
        );
        let cold_f = Family::<Labels, Histogram>::new_with_constructor(|| {
            // 10 ms to ~5 min.
            Histogram::new(exponential_buckets(0.01, 2.0, 15))
        });
        let cold_start =
            std::array::from_fn(|p| cold_f.get_or_create_owned(&vec![("phase", PHASES[p])]));
        r.register(
            "cold_start_phase_seconds",
            "Time each phase of a cold start took (queued, spawned, init, listening, ready, \
             first_byte)",
            cold_f,
        );
        Self {
            registry: r,
            requests,
            durations,
            bytes_to_client,
            bytes_to_instance,
            connections,
            tunnels,
            instances,
            starts,
            stops,
            failures,
            auth_failures,
            rate_limited,
            cold_start,
        }
    }

    /// One answered request.
    #[inline]
    pub fn request(&self, class: Class, status: u16, took: Duration) {
        let s = usize::from(status / 100).clamp(1, 5) - 1;
        let c = class as usize;
        self.requests[c][s].inc();
        self.durations[c].observe(took.as_secs_f64());
    }

    #[inline]
    pub fn bytes_to_client(&self, n: u64) {
        self.bytes_to_client.inc_by(n);
    }

    #[inline]
    pub fn bytes_to_instance(&self, n: u64) {
        self.bytes_to_instance.inc_by(n);
    }

    /// Counts an open client connection until the guard drops.
    pub fn connection(self: &Arc<Self>) -> OpenGuard {
        self.connections.inc();
        OpenGuard(self.connections.clone())
    }

    /// Counts an open WebSocket tunnel until the guard drops.
    pub fn tunnel(self: &Arc<Self>) -> OpenGuard {
        self.tunnels.inc();
        OpenGuard(self.tunnels.clone())
    }

    pub fn start_begun(&self) {
        self.starts.inc();
    }

    /// A stop; `reason` is one of a few fixed words.
    pub fn stopped(&self, reason: &'static str) {
        self.stops.get_or_create(&vec![("reason", reason)]).inc();
    }

    /// A failure: `start_timeout`, `start_error` or `exited`.
    pub fn failed(&self, kind: &'static str) {
        self.failures.get_or_create(&vec![("kind", kind)]).inc();
    }

    /// A wrong admin token (`api`) or instance credential (`api == false`).
    pub fn auth_failed(&self, api: bool) {
        self.auth_failures[usize::from(!api)].inc();
    }

    pub fn rate_limited(&self) {
        self.rate_limited.inc();
    }

    pub(super) fn phase(&self, phase: usize, took: Duration) {
        self.cold_start[phase].observe(took.as_secs_f64());
    }

    /// The text format, with the instance counts given as of now (`(state, count)`).
    pub fn render(&self, instances: &[(&'static str, usize)]) -> String {
        for (state, n) in instances {
            let n = i64::try_from(*n).unwrap_or(i64::MAX);
            self.instances
                .get_or_create(&vec![("state", *state)])
                .set(n);
        }
        let mut out = String::with_capacity(8192);
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// Lowers a gauge again when dropped.
pub struct OpenGuard(Gauge);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_count_once_each_and_skipped_ones_take_no_time() {
        let m = Arc::new(Metrics::new());
        let cs = ColdStart::begin(m.clone());
        cs.reached(Phase::Queued);
        cs.reached(Phase::Listening);
        cs.reached(Phase::Spawned);
        cs.reached(Phase::Ready);
        let fb = FirstByte::default();
        fb.arm(cs);
        fb.responded();
        fb.responded();
        let text = m.render(&[("Running", 1)]);
        for p in PHASES {
            let line = format!("vod_cold_start_phase_seconds_count{{phase=\"{p}\"}} 1");
            assert!(text.contains(&line), "{line} in\n{text}");
        }
        assert!(text.contains("vod_cold_start_phase_seconds_sum{phase=\"init\"} 0.0"));
        assert!(text.contains("vod_instances{state=\"Running\"} 1"));
    }

    #[test]
    fn requests_by_class_and_status() {
        let m = Metrics::new();
        m.request(Class::Proxy, 200, Duration::from_millis(3));
        m.request(Class::Proxy, 101, Duration::from_millis(3));
        m.request(Class::Api, 401, Duration::from_millis(3));
        m.request(Class::Own, 999, Duration::from_millis(3));
        let text = m.render(&[]);
        assert!(text.contains("vod_http_requests_total{class=\"proxy\",status=\"2xx\"} 1"));
        assert!(text.contains("vod_http_requests_total{class=\"proxy\",status=\"1xx\"} 1"));
        assert!(text.contains("vod_http_requests_total{class=\"api\",status=\"4xx\"} 1"));
        assert!(text.contains("vod_http_requests_total{class=\"own\",status=\"5xx\"} 1"));
        assert!(text.contains("vod_http_request_duration_seconds_count{class=\"proxy\"} 2"));
    }
}
