//! A container's readiness and liveness probes, run as a kubelet runs them (HTTP GET, TCP
//! connect; exec probes pass), on a shorter period so that tests do not wait, with results
//! counted against the probe's thresholds.

use std::{future::Future, net::Ipv4Addr, pin::Pin, time::Duration};

use bytes::Bytes;
use http_body_util::Empty;
use hyper::{header, Request};
use hyper_util::rt::TokioIo;
use k8s_openapi::{api::core::v1::Probe, apimachinery::pkg::util::intstr::IntOrString};
use tokio::{
    net::TcpStream,
    time::{sleep_until, timeout, Instant},
};
use vod_testkit::client::send_http1;

/// Probe period cap: a real kubelet's default of 10 s would make every test wait.
const MAX_PROBE_PERIOD: Duration = Duration::from_secs(1);
/// Readiness is polled faster until the first success, so a fresh pod turns Ready promptly.
const STARTUP_PROBE_PERIOD: Duration = Duration::from_millis(250);
const MAX_PROBE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Debug)]
enum Action {
    Http {
        https: bool,
        host: String,
        port: u16,
        path: String,
        headers: Vec<(String, String)>,
    },
    Tcp {
        host: String,
        port: u16,
    },
    /// Exec probes would run inside the container; here they always pass.
    Pass,
    /// A probe that cannot work (unknown port name); fails with this message.
    Broken(String),
}

type ProbeFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// One probe of a container and its results so far.
pub struct ProbeState {
    action: Action,
    next: Instant,
    period: Duration,
    timeout: Duration,
    success_threshold: u32,
    failure_threshold: u32,
    successes: u32,
    failures: u32,
    /// Kept across `select!` iterations so that another branch firing does not restart it.
    inflight: Option<ProbeFuture>,
    /// Whether the probe counts as passing (thresholds applied).
    pub ok: bool,
    ever_ok: bool,
    /// When a kubelet with the nominal period would have given up on a container that never
    /// became ready; earlier failures are part of a normal start and not worth a Warning.
    quiet_until: Instant,
    warned: bool,
}

impl ProbeState {
    pub fn new(
        p: &Probe,
        ports: &[k8s_openapi::api::core::v1::ContainerPort],
        ip: Ipv4Addr,
        started: Instant,
        ok: bool,
    ) -> Self {
        let secs =
            |v: Option<i32>, default: i32| Duration::from_secs(v.unwrap_or(default).max(0) as u64);
        let nominal = secs(p.period_seconds, 10).max(Duration::from_secs(1));
        let initial = secs(p.initial_delay_seconds, 0);
        let failure_threshold = p.failure_threshold.unwrap_or(3).max(1) as u32;
        let resolve = |port: &IntOrString| -> Result<u16, String> {
            match port {
                IntOrString::Int(n) => u16::try_from(*n).map_err(|_| format!("invalid port {n}")),
                IntOrString::String(name) => ports
                    .iter()
                    .find(|p| p.name.as_deref() == Some(name.as_str()))
                    .and_then(|p| u16::try_from(p.container_port).ok())
                    .or_else(|| name.parse().ok())
                    .ok_or_else(|| format!("port name {name:?} not found in the container")),
            }
        };
        let action = if let Some(h) = &p.http_get {
            match resolve(&h.port) {
                Ok(port) => {
                    let path = h.path.clone().unwrap_or_default();
                    Action::Http {
                        https: h.scheme.as_deref() == Some("HTTPS"),
                        host: h.host.clone().unwrap_or_else(|| ip.to_string()),
                        port,
                        path: if path.starts_with('/') {
                            path
                        } else {
                            format!("/{path}")
                        },
                        headers: h
                            .http_headers
                            .iter()
                            .flatten()
                            .map(|h| (h.name.clone(), h.value.clone()))
                            .collect(),
                    }
                }
                Err(e) => Action::Broken(e),
            }
        } else if let Some(t) = &p.tcp_socket {
            match resolve(&t.port) {
                Ok(port) => Action::Tcp {
                    host: t.host.clone().unwrap_or_else(|| ip.to_string()),
                    port,
                },
                Err(e) => Action::Broken(e),
            }
        } else {
            Action::Pass
        };
        ProbeState {
            action,
            next: started + initial,
            period: nominal.min(MAX_PROBE_PERIOD),
            timeout: secs(p.timeout_seconds, 1)
                .max(Duration::from_secs(1))
                .min(MAX_PROBE_TIMEOUT),
            success_threshold: p.success_threshold.unwrap_or(1).max(1) as u32,
            failure_threshold,
            successes: 0,
            failures: 0,
            inflight: None,
            ok,
            ever_ok: false,
            quiet_until: started + initial + nominal * failure_threshold,
            warned: false,
        }
    }

    /// Records one result; true if `ok` flipped.
    pub fn record(&mut self, res: &Result<(), String>) -> bool {
        let before = self.ok;
        match res {
            Ok(()) => {
                self.failures = 0;
                self.successes += 1;
                self.warned = false;
                if self.successes >= self.success_threshold {
                    self.ok = true;
                    self.ever_ok = true;
                }
            }
            Err(_) => {
                self.successes = 0;
                self.failures += 1;
                if self.failures >= self.failure_threshold {
                    self.ok = false;
                }
            }
        }
        before != self.ok
    }

    /// Once per failure streak that counts: past the threshold, and not during a normal start.
    pub fn should_warn(&mut self) -> bool {
        let counts = self.failures >= self.failure_threshold
            && (self.ever_ok || Instant::now() >= self.quiet_until);
        let warn = counts && !self.warned;
        self.warned |= counts;
        warn
    }
}

/// The next probe result; never resolves without a probe. Cancel-safe: an interrupted probe
/// stays in `inflight` and is resumed by the next call.
pub async fn poll_probe(p: Option<&mut ProbeState>) -> Result<(), String> {
    let Some(p) = p else {
        return std::future::pending().await;
    };
    loop {
        if let Some(f) = p.inflight.as_mut() {
            let res = f.await;
            p.inflight = None;
            let period = if p.ever_ok || p.ok {
                p.period
            } else {
                STARTUP_PROBE_PERIOD.min(p.period)
            };
            p.next = Instant::now() + period;
            return res;
        }
        sleep_until(p.next).await;
        p.inflight = Some(Box::pin(probe(p.action.clone(), p.timeout)));
    }
}

async fn probe(action: Action, limit: Duration) -> Result<(), String> {
    match action {
        Action::Pass => Ok(()),
        Action::Broken(e) => Err(e),
        Action::Tcp { host, port } => {
            match timeout(limit, TcpStream::connect((host.as_str(), port))).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(format!("dial tcp {host}:{port}: {e}")),
                Err(_) => Err(format!("dial tcp {host}:{port}: i/o timeout")),
            }
        }
        Action::Http {
            https,
            host,
            port,
            path,
            headers,
        } => {
            let scheme = if https { "https" } else { "http" };
            let url = format!("{scheme}://{host}:{port}{path}");
            match timeout(limit, http_get(https, &host, port, &path, &headers)).await {
                Ok(Ok(code)) if (200..400).contains(&code) => Ok(()),
                Ok(Ok(code)) => Err(format!("HTTP probe failed with statuscode: {code}")),
                Ok(Err(e)) => Err(format!("Get {url:?}: {e}")),
                Err(_) => Err(format!(
                    "Get {url:?}: context deadline exceeded (Client.Timeout exceeded while awaiting headers)"
                )),
            }
        }
    }
}

async fn http_get(
    https: bool,
    host: &str,
    port: u16,
    path: &str,
    headers: &[(String, String)],
) -> Result<u16, String> {
    let stream = TcpStream::connect((host, port))
        .await
        .map_err(|e| format!("dial tcp {host}:{port}: {e}"))?;
    if !https {
        return http_exchange(TokioIo::new(stream), host, port, path, headers).await;
    }
    let name =
        rustls::pki_types::ServerName::try_from(host.to_owned()).map_err(|e| e.to_string())?;
    let tls = vod_testkit::tls::accept_any()
        .connect(name, stream)
        .await
        .map_err(|e| format!("TLS handshake with {host}:{port}: {e}"))?;
    http_exchange(TokioIo::new(tls), host, port, path, headers).await
}

async fn http_exchange<I>(
    io: I,
    host: &str,
    port: u16,
    path: &str,
    headers: &[(String, String)],
) -> Result<u16, String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let mut req = Request::get(path)
        .header(header::HOST, format!("{host}:{port}"))
        .header(header::USER_AGENT, "kube-probe/1.20");
    for (k, v) in headers {
        req = req.header(k.as_str(), v.as_str());
    }
    let req = req.body(Empty::<Bytes>::new()).map_err(|e| e.to_string())?;
    let (resp, driver) = send_http1(io, req).await.map_err(|e| e.to_string())?;
    // Only the status line matters; drop the connection instead of reading the body.
    driver.abort();
    Ok(resp.status().as_u16())
}
