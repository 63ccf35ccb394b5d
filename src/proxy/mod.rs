//! The instance proxy, as phases: authenticate (token → cookie exchange, URL cleaned) → our
//! own endpoints → classify (navigation, background, program) for the idle policy → make sure
//! the instance runs (starting page, held request, or refused while stopped for idleness) →
//! rewrite → forward (HTTP streamed both ways, the activity script added to pages, WebSocket
//! spliced) → respond.

mod activity;
mod auth;
mod headers;
mod inject;
mod pages;
mod secret;
mod tunnel;

use crate::http::conns::Conn;
use crate::http::failure::Failure;
use crate::http::router::OwnPage;
use crate::http::{events, request_host, Body, BoxError};
use crate::instance::{State, Status, StopReason, Upstream, UpstreamAddr};
use crate::lifecycle::policy;
use crate::registry::{ActivityGuard, Instance};
use crate::shared::Shared;
use activity::Source;
use auth::Presented;
use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode, Uri, Version};
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

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
    peer: IpAddr,
    conn: &Arc<Conn>,
) -> Response<Body> {
    let websocket = headers::is_websocket(req.headers());
    let source = Source::of(req.method(), req.headers(), websocket);
    let inst = match authenticate(sh, id, &req, peer, source) {
        Ok(inst) => inst,
        Err(r) => return r,
    };
    let rest = match target {
        Target::Own(page) => return own_page(sh, inst, page, &req),
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
    let upstream = match admit(sh, &inst, source).await {
        Ok(u) => u,
        Err(r) => return r,
    };
    if websocket {
        forward_upgrade(sh, inst, upstream, rest, req, peer, conn.clone()).await
    } else {
        forward(sh, &inst, upstream, rest, req, peer, source).await
    }
}

/// The instance, if the request carries its token or cookie; a valid `?tkn=` is answered by
/// the exchange for a cookie, and a wrong credential counts against the client.
fn authenticate(
    sh: &Shared,
    id: &str,
    req: &Request<Incoming>,
    peer: IpAddr,
    source: Source,
) -> Result<Arc<Instance>, Response<Body>> {
    let navigation = source == Source::Navigation;
    let inst = sh.lifecycle.registry.get_str(id);
    let host_routing = sh.origins.host_routing();
    let cookie = auth::cookie_name(host_routing);
    let presented = auth::check(inst.as_deref(), req.headers(), req.uri().query(), cookie);
    match (inst, presented) {
        (Some(inst), Presented::Exchange) => Err(exchange(&inst, req.uri(), host_routing)),
        (Some(inst), Presented::Valid) => Ok(inst),
        (_, Presented::Nothing) => Err(deny(navigation, false)),
        // A wrong token or cookie counts against the client, so guessing is slowed down.
        _ if !sh.guesses.failed(peer) => Err(Failure::rate_limited().response()),
        _ => Err(deny(navigation, true)),
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
        sh.lifecycle.begin_start(inst);
        return Err(pages::starting(inst.id.as_str(), &inst.status().message));
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

/// The host the client addressed, as a header value for the instance.
fn host_value(req: &Request<Incoming>) -> Option<HeaderValue> {
    req.headers().get(header::HOST).cloned().or_else(|| {
        req.uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    })
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
fn exchange(inst: &Instance, uri: &Uri, host_routing: bool) -> Response<Body> {
    let (_, query) = auth::split_tkn(uri.query());
    // The router checked that the path names this instance and nothing ambiguous.
    let mut location = uri.path().to_owned();
    if !query.is_empty() {
        location.push('?');
        location.push_str(&query);
    }
    let mut r = Response::new(crate::http::response::empty());
    *r.status_mut() = StatusCode::SEE_OTHER;
    let h = r.headers_mut();
    h.insert(header::SET_COOKIE, auth::set_cookie(inst, host_routing));
    h.insert(
        header::LOCATION,
        HeaderValue::from_str(&location).unwrap_or(HeaderValue::from_static("/")),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    r
}

/// Builds the request the instance sees, in origin form (the connection names the instance).
fn upstream_request(
    upstream: &Upstream,
    id: &str,
    rest: &str,
    req: Request<Incoming>,
    peer: IpAddr,
    upgrade: bool,
) -> Result<Request<Incoming>, Response<Body>> {
    let host = host_value(&req);
    let (mut parts, body) = req.into_parts();
    let path = if upstream.strip_prefix {
        rest.to_owned()
    } else {
        format!("/instances/{id}{rest}")
    };
    let pq = match parts.uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    parts.uri = Uri::builder().path_and_query(pq).build().map_err(|_| {
        Failure::bad_request("bad_path", "the request path is not valid").response()
    })?;
    parts.version = Version::HTTP_11;
    headers::remove_hop_by_hop(&mut parts.headers, upgrade);
    auth::strip_cookie(&mut parts.headers);
    if let Some(secret) = &upstream.secret {
        secret::add(&mut parts.headers, secret);
    }
    headers::set_forwarded(&mut parts.headers, peer, host.as_ref());
    // The instance sees the host the browser used, so its own origin checks agree with ours;
    // a request without one (HTTP/1.0) names the instance's address, as a client of it would.
    let host = host.unwrap_or_else(|| match &upstream.addr {
        UpstreamAddr::Tcp(a) => {
            HeaderValue::try_from(a.to_string()).unwrap_or(HeaderValue::from_static("localhost"))
        }
        UpstreamAddr::Unix(_) => HeaderValue::from_static("localhost"),
    });
    parts.headers.insert(header::HOST, host);
    Ok(Request::from_parts(parts, body))
}

fn upstream_failed(e: impl std::fmt::Display) -> Response<Body> {
    Failure::instance(
        StatusCode::BAD_GATEWAY,
        "upstream_failed",
        format!("the instance did not answer: {e}"),
    )
    .response()
}

async fn forward(
    sh: &Arc<Shared>,
    inst: &Arc<Instance>,
    upstream: Upstream,
    rest: &str,
    req: Request<Incoming>,
    peer: IpAddr,
    source: Source,
) -> Response<Body> {
    // Work keeps the instance busy until its response is sent; a page's background traffic
    // does not.
    let guard = source.is_activity().then(|| inst.activity());
    let script_tag = (source == Source::Navigation).then(|| activity::script_tag(inst.id.as_str()));
    let mut req = match upstream_request(&upstream, inst.id.as_str(), rest, req, peer, false) {
        Ok(r) => r,
        Err(r) => return r,
    };
    if script_tag.is_some() {
        // A page that comes back uncompressed can get the activity script.
        req.headers_mut().remove(header::ACCEPT_ENCODING);
    }
    let resp = match sh.upstream.request(&upstream.addr, req).await {
        Ok(resp) => resp,
        Err(e) => return upstream_failed(e),
    };
    let (mut parts, body) = resp.into_parts();
    headers::remove_hop_by_hop(&mut parts.headers, false);
    auth::confine_set_cookie(
        &mut parts.headers,
        inst.id.as_str(),
        sh.origins.host_routing(),
    );
    if let Some(secret) = &upstream.secret {
        secret::strip_set_cookie(&mut parts.headers);
        // VS Code's page reads the connection token from this cookie and sends it again inside
        // its WebSocket protocol, so the page of the instance must have it.
        if source == Source::Navigation {
            parts.headers.append(
                header::SET_COOKIE,
                secret::page_cookie(secret, inst.id.as_str(), sh.origins.host_routing()),
            );
        }
    }
    let body = match script_tag {
        Some(tag) if inject::wanted(&parts) => match inject::page(&mut parts, body, &tag).await {
            Ok(b) => b,
            Err(e) => return upstream_failed(e),
        },
        _ => body.map_err(BoxError::from).boxed(),
    };
    let body = match guard {
        Some(guard) => GuardedBody {
            inner: body,
            _guard: guard,
        }
        .boxed(),
        None => body,
    };
    Response::from_parts(parts, body)
}

async fn forward_upgrade(
    sh: &Arc<Shared>,
    inst: Arc<Instance>,
    upstream: Upstream,
    rest: &str,
    mut req: Request<Incoming>,
    peer: IpAddr,
    conn: Arc<Conn>,
) -> Response<Body> {
    let client_upgrade = hyper::upgrade::on(&mut req);
    let req = match upstream_request(&upstream, inst.id.as_str(), rest, req, peer, true) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let mut resp = match sh.upstream.request(&upstream.addr, req).await {
        Ok(r) => r,
        Err(e) => return upstream_failed(e),
    };
    auth::confine_set_cookie(
        resp.headers_mut(),
        inst.id.as_str(),
        sh.origins.host_routing(),
    );
    if upstream.secret.is_some() {
        secret::strip_set_cookie(resp.headers_mut());
    }
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        let (mut parts, body) = resp.into_parts();
        headers::remove_hop_by_hop(&mut parts.headers, false);
        return Response::from_parts(parts, body.map_err(BoxError::from).boxed());
    }
    let upstream_upgrade = hyper::upgrade::on(&mut resp);
    let idle = sh.tunnel_idle_timeout;
    tokio::spawn(async move {
        // The tunnel keeps its connection's place in the table, busy, until it ends.
        let _busy = conn.info.busy();
        match tokio::try_join!(client_upgrade, upstream_upgrade) {
            Ok((c, u)) => tunnel::splice(c, u, inst, conn.info.close.clone(), idle).await,
            Err(e) => tracing::debug!(error = %e, "websocket upgrade did not complete"),
        }
    });
    let (parts, _) = resp.into_parts();
    Response::from_parts(parts, crate::http::response::empty())
}

/// A proxied response body that keeps its instance busy until it has been sent in full.
struct GuardedBody {
    inner: Body,
    _guard: ActivityGuard,
}

impl http_body::Body for GuardedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
