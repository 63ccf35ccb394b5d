//! Who a request comes from, as far as idleness is concerned, and the endpoints of the activity
//! script that the proxy adds to the instance's pages.
//!
//! Browsers label every request with Fetch metadata (`Sec-Fetch-Mode`, `Sec-Fetch-Dest`), which
//! tells a page load from a page's own background requests. Page loads count as activity;
//! background requests and WebSocket traffic do not (an open VS Code tab is never silent).
//! Input in the page does, reported by the script to `_vod/activity`. Requests without that
//! metadata come from programs, which keep the request-based signal.

use crate::http::failure::Failure;
use crate::http::response::json;
use crate::http::Body;
use crate::instance::State;
use crate::lifecycle::{policy, Trigger};
use crate::registry::Instance;
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode};
use serde_json::json;
use std::time::Duration;

/// The script itself, served from the instance's path so that VS Code's CSP (`script-src
/// 'self'`, `connect-src 'self'`) allows it and its reports.
// Named once: looking a header up by a string parses the name on every request.
const SEC_FETCH_MODE: HeaderName = HeaderName::from_static("sec-fetch-mode");
const SEC_FETCH_DEST: HeaderName = HeaderName::from_static("sec-fetch-dest");
const SEC_FETCH_SITE: HeaderName = HeaderName::from_static("sec-fetch-site");

pub const SCRIPT: &str = include_str!("activity.js");

/// Where a request comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A browser loading a top-level page (load, reload, the resume button).
    Navigation,
    /// A page's own requests: scripts, assets, fetches, frames and all WebSockets.
    Background,
    /// A request without Fetch metadata: a program, or a browser too old to send it.
    Program,
}

impl Source {
    pub fn of(method: &Method, h: &HeaderMap, websocket: bool) -> Source {
        if websocket {
            return Source::Background;
        }
        let text = |name: &HeaderName| h.get(name).and_then(|v| v.to_str().ok());
        match text(&SEC_FETCH_MODE) {
            Some("navigate") if method == Method::GET => {
                match text(&SEC_FETCH_DEST) {
                    None | Some("document") => Source::Navigation,
                    // Frames load by themselves (VS Code's webviews).
                    Some(_) => Source::Background,
                }
            }
            Some(_) => Source::Background,
            None if method == Method::GET
                && text(&header::ACCEPT).is_some_and(|a| a.contains("text/html")) =>
            {
                Source::Navigation
            }
            None => Source::Program,
        }
    }

    /// Whether the request is activity (and keeps the instance busy while in flight).
    pub fn is_activity(self) -> bool {
        !matches!(self, Source::Background)
    }

    pub fn trigger(self) -> Trigger {
        match self {
            Source::Background => Trigger::Automatic,
            Source::Navigation | Source::Program => Trigger::Deliberate,
        }
    }
}

/// The `<script>` element added to the instance's HTML pages.
pub fn script_tag(id: &str) -> String {
    format!("<script src=\"/instances/{id}/_vod/activity.js\" defer></script>")
}

pub fn script() -> Response<Body> {
    let mut r = Response::new(crate::http::response::full(SCRIPT));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/javascript; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

/// How often the script reports input: often enough that a short timeout never runs out
/// between reports, rarely enough to cost nothing.
fn report_interval(idle_timeout: Duration) -> Duration {
    (idle_timeout / 4).clamp(Duration::from_secs(1), Duration::from_secs(10))
}

/// `GET _vod/idle`: what the script needs to show a notice before an idle stop, or what
/// happened after one. Neither activity nor a reason to start.
pub fn idle(inst: &Instance, default_notice_secs: u64) -> Response<Body> {
    let s = inst.status();
    let timeout = Duration::from_secs(inst.spec.idle_timeout_secs);
    let live = matches!(s.state, State::Running | State::Starting);
    let remaining = live.then(|| {
        policy::remaining(
            inst.now_ms(),
            inst.last_activity_ms(),
            timeout,
            inst.inflight(),
        )
        .as_millis() as u64
    });
    // Stopped for a reason that only a navigation undoes: the page offers to resume.
    let needs_resume = !live && !policy::may_start(s.stop_reason.as_ref(), Trigger::Automatic);
    json(
        StatusCode::OK,
        &json!({
            "state": s.state.as_str(),
            "stop_reason": s.stop_reason,
            "idle_timeout": inst.spec.idle_timeout_secs,
            "idle_notice": inst.spec.idle_notice_secs(default_notice_secs),
            "remaining_ms": remaining,
            "report_ms": report_interval(timeout).as_millis() as u64,
            "needs_resume": needs_resume,
        }),
    )
}

/// Longest delay between input and its report that is taken into account.
const MAX_AGO: Duration = Duration::from_secs(60);

/// `POST _vod/activity[?ago=<ms>]`: someone used a page of the instance, `ago` milliseconds
/// before the report (the script batches input). Records activity while it runs or starts
/// (never starts it) and answers like [`idle`].
pub fn report(
    inst: &Instance,
    method: &Method,
    h: &HeaderMap,
    query: Option<&str>,
    default_notice_secs: u64,
) -> Response<Body> {
    if method != Method::POST {
        return Failure::method_not_allowed("POST").response();
    }
    // Only the instance's own pages report; another site cannot keep it alive through a
    // signed-in browser.
    let site = h.get(&SEC_FETCH_SITE).and_then(|v| v.to_str().ok());
    if site.is_some_and(|s| s != "same-origin") {
        return Failure::client(
            StatusCode::FORBIDDEN,
            "cross_site",
            "activity is only reported by the instance's own pages",
        )
        .response();
    }
    if matches!(inst.state(), State::Running | State::Starting) {
        let ago = query
            .into_iter()
            .flat_map(|q| q.split('&'))
            .find_map(|kv| kv.strip_prefix("ago="))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            .min(MAX_AGO.as_millis() as u64);
        inst.observe_activity(inst.now_ms().saturating_sub(ago));
    }
    idle(inst, default_notice_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn sources() {
        let get = Method::GET;
        let nav = headers(&[
            ("sec-fetch-mode", "navigate"),
            ("sec-fetch-dest", "document"),
        ]);
        assert_eq!(Source::of(&get, &nav, false), Source::Navigation);
        assert_eq!(Source::of(&Method::POST, &nav, false), Source::Background);
        let frame = headers(&[("sec-fetch-mode", "navigate"), ("sec-fetch-dest", "iframe")]);
        assert_eq!(Source::of(&get, &frame, false), Source::Background);
        let fetch = headers(&[("sec-fetch-mode", "cors"), ("accept", "text/html")]);
        assert_eq!(Source::of(&get, &fetch, false), Source::Background);
        let old_browser = headers(&[("accept", "text/html,*/*")]);
        assert_eq!(Source::of(&get, &old_browser, false), Source::Navigation);
        assert_eq!(Source::of(&get, &HeaderMap::new(), false), Source::Program);
        assert_eq!(
            Source::of(&get, &HeaderMap::new(), true),
            Source::Background
        );
        assert!(!Source::Background.is_activity());
        assert_eq!(Source::Background.trigger(), Trigger::Automatic);
        assert_eq!(Source::Program.trigger(), Trigger::Deliberate);
    }

    #[test]
    fn reports_come_often_enough() {
        assert_eq!(
            report_interval(Duration::from_secs(20)),
            Duration::from_secs(5)
        );
        assert_eq!(
            report_interval(Duration::from_secs(1800)),
            Duration::from_secs(10)
        );
        assert_eq!(
            report_interval(Duration::from_secs(2)),
            Duration::from_secs(1)
        );
    }
}
