//! Reading the server's Prometheus page: sample lines (`name{labels} value`) by their full key.

use crate::client::body_text;
use crate::server::Server;
use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::Full;
use std::collections::HashMap;

/// The cold start phases, in the order a start passes them.
pub const PHASES: [&str; 6] = [
    "queued",
    "spawned",
    "init",
    "listening",
    "ready",
    "first_byte",
];

/// One scrape: every sample's value by its name with labels.
#[derive(Debug, Clone)]
pub struct Scrape(pub HashMap<String, f64>);

impl Scrape {
    pub fn parse(text: &str) -> Scrape {
        Scrape(
            text.lines()
                .filter(|l| !l.starts_with('#') && !l.is_empty())
                .filter_map(|l| {
                    let (k, v) = l.rsplit_once(' ')?;
                    Some((k.to_owned(), v.parse().ok()?))
                })
                .collect(),
        )
    }

    /// A sample's value; 0 when absent (a labelled series not yet created).
    pub fn val(&self, key: &str) -> f64 {
        self.0.get(key).copied().unwrap_or(0.0)
    }

    /// How many cold starts went through `phase`.
    pub fn phase_count(&self, phase: &str) -> f64 {
        self.val(&format!(
            "vod_cold_start_phase_seconds_count{{phase=\"{phase}\"}}"
        ))
    }

    /// The seconds cold starts spent in `phase`, all together.
    pub fn phase_seconds(&self, phase: &str) -> f64 {
        self.val(&format!(
            "vod_cold_start_phase_seconds_sum{{phase=\"{phase}\"}}"
        ))
    }
}

impl Server {
    /// `GET /metrics`, with `token` as the bearer if given: the status and the page.
    pub async fn metrics_page(&self, token: Option<&str>) -> (StatusCode, String) {
        let mut b = self.request(Method::GET, "/metrics");
        if let Some(t) = token {
            b = b.header("authorization", format!("Bearer {t}"));
        }
        let r = self.send(b.body(Full::<Bytes>::default()).unwrap()).await;
        (r.status(), body_text(r).await)
    }

    /// The metrics, read with the admin token.
    pub async fn scrape(&self) -> Scrape {
        let (status, text) = self.metrics_page(Some(&self.token)).await;
        assert_eq!(status, StatusCode::OK, "{text}");
        Scrape::parse(&text)
    }
}
