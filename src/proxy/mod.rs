//! The instance proxy, as phases in order: authenticate (token → cookie exchange, URL
//! cleaned; wrong credentials limited) → our own pages → admit (the instance runs; else the
//! starting page, a held request, or a refusal while stopped for a reason a page's own
//! requests must not undo) → forward ([`forward`]: rewrite, stream both ways, the activity
//! script added to pages, WebSocket spliced) → respond.

mod activity;
mod auth;
mod forward;
mod frames;
mod headers;
mod inject;
mod pages;
mod secret;
mod tunnel;

use crate::http::client_addr::ClientAddr;
use crate::http::conns::Conn;
use crate::http::failure::Failure;
use crate::http::response::redirect;
use crate::http::router::OwnPage;
use crate::http::{events, request_host, Body};
use crate::instance::{State, Status, StopReason, Upstream};
use crate::lifecycle::policy;
use crate::registry::Instance;
use crate::shared::Shared;
use activity::Source;
use auth::{Authorized, Presented};
use http::{header, Request, Response, StatusCode, Uri};
use hyper::body::Incoming;
use std::net::IpAddr;
use std::sync::Arc;

/// What a request to an instance asks for: our own page, or the instance.
pub enum Target<'a> {
    Own(OwnPage),
    /// The path after `/instances/<id>`, starting with '/'.
    Forward(&'a str),
}

/// Serves a request under `/instances/<id>/`, in phases: authenticate → our own pages →
/// admit (the instance runs, is started, or the request is held or refused) → forward (and
/// respond as the instance does). `id` has passed the router's character check.
pub async fn handle(
    sh: &Arc<Shared>,
    id: &str,
    target: Target<'_>,
    req: Request<Incoming>,
    client: &ClientAddr,
    conn: &Arc<Conn>,
) -> Response<Body> {
    let websocket = headers::is_websocket(req.headers());
    let source = Source::of(req.method(), req.headers(), websocket);
    let authorized = match authenticate(sh, id, &req, client.ip, source) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let inst = &authorized.inst;
    let rest = match target {
        Target::Own(page) => return own_page(sh, inst.clone(), page, &req),
        Target::Forward(rest) => rest,
    };
    if websocket && !origin_matches(&req) {
        return Failure::client(
            StatusCode::FORBIDDEN,
            "bad_origin",
            "WebSocket connections must come from pages of this host",
        )
        .response();
    }
    // What is rare is boxed (a start, a WebSocket): the future of every request is as large as
    // its largest branch, and is moved as a whole.
    let upstream = match inst.running_upstream() {
        Some(u) => u,
        None => match Box::pin(admit(sh, inst, source)).await {
            Ok(u) => u,
            Err(r) => return r,
        },
    };
    if websocket {
        let inst = inst.clone();
        let r = Box::pin(forward::forward_upgrade(
            sh,
            authorized,
            upstream,
            rest,
            req,
            client,
            conn.clone(),
        ))
        .await;
        inst.first_byte.responded();
        r
    } else {
        let r = forward::forward(sh, inst, upstream, rest, req, client, source).await;
        inst.first_byte.responded();
        r
    }
}

/// The instance and the credential the request carries (its token or cookie); a valid
/// `?tkn=` is answered by the exchange for a cookie, and a wrong credential counts against
/// the client. One credential is read for the whole check, so a request that proved a token
/// being replaced meanwhile is never handed the new one in its cookie.
fn authenticate(
    sh: &Shared,
    id: &str,
    req: &Request<Incoming>,
    peer: IpAddr,
    source: Source,
) -> Result<Authorized, Response<Body>> {
    let navigation = source == Source::Navigation;
    let found = sh.lifecycle.registry.get_str(id).map(|inst| {
        let credential = inst.credential();
        Authorized { inst, credential }
    });
    let host_routing = sh.origins.host_routing();
    let cookie = auth::cookie_name(host_routing);
    let presented = auth::check(
        found.as_ref().map(|a| &*a.credential),
        req.headers(),
        req.uri().query(),
        cookie,
    );
    match (found, presented) {
        (Some(a), Presented::Exchange) => Err(exchange(&a, req.uri(), host_routing)),
        (Some(a), Presented::Valid) => Ok(a),
        (_, Presented::Nothing) => Err(deny(navigation, false)),
        // A wrong token or cookie counts against the client, so guessing is slowed down.
        _ => {
            sh.metrics.auth_failed(false);
            if sh.guesses.failed(peer) {
                Err(deny(navigation, true))
            } else {
                sh.metrics.rate_limited();
                Err(Failure::rate_limited().response())
            }
        }
    }
}

/// Our own pages beside the instance's: start progress, the scripts, activity reports.
fn own_page(
    sh: &Shared,
    inst: Arc<Instance>,
    page: OwnPage,
    req: &Request<Incoming>,
) -> Response<Body> {
    let notice = sh.defaults.idle_notice_secs;
    match page {
        OwnPage::Events => events::stream(inst, sh.lifecycle.start_timeout * 2),
        OwnPage::StartingJs => pages::starting_js(),
        OwnPage::ActivityJs => activity::script(),
        OwnPage::Activity => activity::report(
            &inst,
            req.method(),
            req.headers(),
            req.uri().query(),
            notice,
        ),
        OwnPage::Idle => activity::idle(&inst, notice),
        OwnPage::Unknown => Failure::not_found("no such page").response(),
    }
}

/// The running instance's address: at once when it runs; otherwise a navigation gets the
/// starting page while it starts, other requests wait for it (bounded by the start timeout),
/// and an open page's own requests are refused after a stop they must not undo.
async fn admit(
    sh: &Arc<Shared>,
    inst: &Arc<Instance>,
    source: Source,
) -> Result<Upstream, Response<Body>> {
    if let Some(u) = inst.running_upstream() {
        return Ok(u);
    }
    let status = inst.status();
    if status.state != State::Starting
        && !policy::may_start(status.stop_reason.as_ref(), source.trigger())
    {
        return Err(stopped(inst, &status).response());
    }
    if source == Source::Navigation {
        return Err(match sh.lifecycle.begin_start(inst) {
            Ok(_) => pages::starting(inst.id.as_str(), &inst.status().message),
            Err(e) => Failure::from(e).page(),
        });
    }
    sh.lifecycle
        .ensure_running(inst)
        .await
        .map_err(|e| Failure::from(e).response())
}

fn deny(navigation: bool, wrong: bool) -> Response<Body> {
    if navigation {
        pages::unauthorized(wrong)
    } else {
        Failure::unauthorized("missing or wrong instance access token", None).response()
    }
}

/// The answer to a page's own requests (VS Code reconnecting) while the instance is stopped
/// for a reason they must not undo; the page's activity script explains and offers to resume.
fn stopped(inst: &Instance, status: &Status) -> Failure {
    let why = match &status.stop_reason {
        Some(StopReason::Idle) => format!(
            "stopped after {} without activity",
            humantime::format_duration(std::time::Duration::from_secs(inst.spec.idle_timeout_secs))
        ),
        Some(StopReason::Api) => "stopped through the API".to_owned(),
        Some(other) => format!("stopped ({other})"),
        None => "stopped (unknown reason)".to_owned(),
    };
    Failure::instance(
        StatusCode::SERVICE_UNAVAILABLE,
        "stopped",
        format!("the instance was {why}; reload the page to start it again"),
    )
    .retry_after("60")
}

/// A WebSocket must be opened by a page of this host: its `Origin` is `https://<host>`. With
/// host routing that host is the instance's own, so no other instance's page passes.
fn origin_matches(req: &Request<Incoming>) -> bool {
    let (Some(origin), Some(host)) = (req.headers().get(header::ORIGIN), request_host(req)) else {
        return false;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    origin
        .strip_prefix("https://")
        .is_some_and(|o| o.eq_ignore_ascii_case(host))
}

/// Trades a valid `?tkn=` for a cookie and sends the browser to the same URL without it, so
/// the token stays out of history, logs and `Referer`.
fn exchange(a: &Authorized, uri: &Uri, host_routing: bool) -> Response<Body> {
    let (_, query) = auth::split_tkn(uri.query());
    // The router checked that the path names this instance and nothing ambiguous.
    let mut location = uri.path().to_owned();
    if !query.is_empty() {
        location.push('?');
        location.push_str(&query);
    }
    let mut r = redirect(StatusCode::SEE_OTHER, &location);
    let cookie = auth::set_cookie(a.inst.id.as_str(), a.credential.token(), host_routing);
    r.headers_mut().insert(header::SET_COOKIE, cookie);
    r
}
