//! Forwarding to the instance: the request it sees (its path, our cookie out, its secret in,
//! hop-by-hop headers out, `X-Forwarded-*` set), the response streamed back (the activity
//! script added to pages, cookies confined), and WebSocket upgrades spliced into a tunnel.

use super::auth::Authorized;
use super::{activity, auth, headers, inject, secret, tunnel};
use crate::http::client_addr::ClientAddr;
use crate::http::conns::Conn;
use crate::http::failure::Failure;
use crate::http::{Body, BoxError};
use crate::instance::{Upstream, UpstreamAddr};
use crate::metrics::Metrics;
use crate::registry::{ActivityGuard, Instance};
use crate::shared::Shared;
use crate::upstream::{Outgoing, Replace, UpstreamError};
use activity::Source;
use bytes::Bytes;
use http::{header, request, HeaderValue, Request, Response, StatusCode, Uri, Version};
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

/// The host the client addressed, as a header value for the instance.
fn host_value(parts: &request::Parts) -> Option<HeaderValue> {
    parts.headers.get(header::HOST).cloned().or_else(|| {
        parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    })
}

/// The path the instance sees, in pieces: `rest` alone when the instance serves at its root,
/// else under `/instances/<id>` as the client asked.
fn upstream_path<'a>(upstream: &Upstream, id: &'a str, rest: &'a str) -> [&'a str; 3] {
    if upstream.strip_prefix {
        [rest, "", ""]
    } else {
        ["/instances/", id, rest]
    }
}

/// Rewrites the client's request head for the instance: hop-by-hop headers and our cookie
/// out, the instance's secret in. Returns what replaces the client's own headers of those
/// names: `X-Forwarded-*`, and `Host` as the browser used it, so the instance's own origin
/// checks agree with ours (a request without one, HTTP/1.0, names the instance's address, as
/// a client of it would).
fn rewrite(
    upstream: &Upstream,
    parts: &mut request::Parts,
    client: &ClientAddr,
    upgrade: bool,
) -> [Replace; 4] {
    let host = host_value(parts);
    parts.version = Version::HTTP_11;
    headers::remove_hop_by_hop(&mut parts.headers, upgrade);
    auth::strip_cookie(&mut parts.headers);
    if let Some(secret) = &upstream.secret {
        secret::add(&mut parts.headers, secret);
    }
    let [xff, proto, xfh] = headers::forwarded(client, host.as_ref());
    let host = host.unwrap_or_else(|| match &upstream.addr {
        UpstreamAddr::Tcp(a) => HeaderValue::try_from(a.to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("localhost")),
        UpstreamAddr::Unix(_) => HeaderValue::from_static("localhost"),
    });
    [xff, proto, xfh, (header::HOST, Some(host))]
}

/// The WebSocket handshake the instance sees, as a request for hyper's client: the rewritten
/// head with its replacements applied and the URI in origin form.
fn upgrade_request(
    upstream: &Upstream,
    id: &str,
    rest: &str,
    req: Request<Incoming>,
    client: &ClientAddr,
) -> Result<Request<Incoming>, Response<Body>> {
    let (mut parts, body) = req.into_parts();
    let set = rewrite(upstream, &mut parts, client, true);
    headers::replace(&mut parts.headers, set);
    let mut pq = upstream_path(upstream, id, rest).concat();
    if let Some(q) = parts.uri.query() {
        pq.push('?');
        pq.push_str(q);
    }
    parts.uri = Uri::builder().path_and_query(pq).build().map_err(|_| {
        Failure::bad_request("bad_path", "the request path is not valid").response()
    })?;
    Ok(Request::from_parts(parts, body))
}

/// The instance refused, broke or did not answer the exchange: 502, or 504 when it took too
/// long; a browser loading a page gets a page that says so. Logged, since the instance's side
/// of it is in the instance's own log.
fn upstream_failed(id: &str, e: UpstreamError, navigation: bool) -> Response<Body> {
    tracing::warn!(instance = id, error = %e, "the instance did not answer");
    let f = if e.is_timeout() {
        Failure::instance(
            StatusCode::GATEWAY_TIMEOUT,
            "upstream_timeout",
            format!("the instance did not answer in time: {e}"),
        )
        .retry_after("5")
    } else {
        Failure::instance(
            StatusCode::BAD_GATEWAY,
            "upstream_failed",
            format!("the instance did not answer: {e}"),
        )
    };
    if navigation {
        f.page()
    } else {
        f.response()
    }
}

pub async fn forward(
    sh: &Arc<Shared>,
    inst: &Arc<Instance>,
    upstream: Upstream,
    rest: &str,
    req: Request<Incoming>,
    client: &ClientAddr,
    source: Source,
) -> Response<Body> {
    // Work keeps the instance busy until its response is sent; a page's background traffic
    // does not.
    let guard = source.is_activity().then(|| inst.activity());
    let script_tag = (source == Source::Navigation).then(|| activity::script_tag(inst.id.as_str()));
    let (mut parts, body) = req.into_parts();
    let set = rewrite(&upstream, &mut parts, client, false);
    if script_tag.is_some() {
        // A page that comes back uncompressed can get the activity script.
        parts.headers.remove(header::ACCEPT_ENCODING);
    }
    if let Some(n) = http_body::Body::size_hint(&body).exact() {
        sh.metrics.bytes_to_instance(n);
    }
    let outgoing = Outgoing {
        path: upstream_path(&upstream, inst.id.as_str(), rest),
        set: &set,
    };
    let req = Request::from_parts(parts, body);
    let resp = match sh.upstream.request(&upstream.addr, req, outgoing).await {
        Ok(resp) => resp,
        Err(e) => return upstream_failed(inst.id.as_str(), e, source == Source::Navigation),
    };
    let (mut parts, body) = resp.into_parts();
    headers::remove_hop_by_hop(&mut parts.headers, false);
    // The instance cannot hand out its secret: only the proxy does, below.
    let reserved = upstream.secret.as_ref().map(|s| s.cookie.name());
    auth::confine_set_cookie(
        &mut parts.headers,
        inst.id.as_str(),
        sh.origins.host_routing(),
        reserved,
    );
    if let Some(secret) = &upstream.secret {
        // VS Code's page reads the connection token from this cookie and sends it again inside
        // its WebSocket protocol, so the page of the instance must have it.
        if source == Source::Navigation {
            if let Some(c) =
                secret::page_cookie(secret, inst.id.as_str(), sh.origins.host_routing())
            {
                parts.headers.append(header::SET_COOKIE, c);
            }
        }
    }
    let body = match script_tag {
        Some(tag) if inject::wanted(&parts) => match inject::page(&mut parts, body, &tag).await {
            Ok(b) => b,
            Err(e) => {
                return Failure::instance(
                    StatusCode::BAD_GATEWAY,
                    "upstream_failed",
                    format!("the instance broke off its page: {e}"),
                )
                .response()
            }
        },
        _ => body.map_err(BoxError::from).boxed(),
    };
    // A body of known length is counted at once; others as they pass.
    let counted = http_body::Body::size_hint(&body).exact();
    if let Some(n) = counted {
        sh.metrics.bytes_to_client(n);
    }
    let body = match (guard, counted) {
        (None, Some(_)) => body,
        (guard, _) => GuardedBody {
            inner: body,
            _guard: guard,
            metrics: counted.is_none().then(|| sh.metrics.clone()),
        }
        .boxed(),
    };
    Response::from_parts(parts, body)
}

/// Forwards a WebSocket upgrade; the tunnel lasts as long as the credential that opened it.
pub async fn forward_upgrade(
    sh: &Arc<Shared>,
    authorized: Authorized,
    upstream: Upstream,
    rest: &str,
    mut req: Request<Incoming>,
    client: &ClientAddr,
    conn: Arc<Conn>,
) -> Response<Body> {
    let Authorized { inst, credential } = authorized;
    let client_upgrade = hyper::upgrade::on(&mut req);
    let req = match upgrade_request(&upstream, inst.id.as_str(), rest, req, client) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let mut resp = match sh.upstream.upgrade(&upstream.addr, req).await {
        Ok(r) => r,
        Err(e) => return upstream_failed(inst.id.as_str(), e, false),
    };
    auth::confine_set_cookie(
        resp.headers_mut(),
        inst.id.as_str(),
        sh.origins.host_routing(),
        upstream.secret.as_ref().map(|s| s.cookie.name()),
    );
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        let (mut parts, body) = resp.into_parts();
        headers::remove_hop_by_hop(&mut parts.headers, false);
        return Response::from_parts(parts, body.map_err(BoxError::from).boxed());
    }
    let upstream_upgrade = hyper::upgrade::on(&mut resp);
    let ends = tunnel::Ends {
        going_away: conn.info.going_away.clone(),
        revoked: credential.replaced(),
        idle: sh.tunnel_idle_timeout,
    };
    let metrics = sh.metrics.clone();
    tokio::spawn(async move {
        // The tunnel keeps its connection's place in the table, busy, until it ends.
        let _busy = conn.info.busy();
        match tokio::try_join!(client_upgrade, upstream_upgrade) {
            Ok((c, u)) => tunnel::splice(c, u, inst, ends, metrics).await,
            Err(e) => tracing::debug!(error = %e, "websocket upgrade did not complete"),
        }
    });
    let (parts, _) = resp.into_parts();
    Response::from_parts(parts, crate::http::response::empty())
}

/// A proxied response body that keeps its instance busy until it has been sent in full, and
/// counts its bytes when their number was not known in advance.
struct GuardedBody {
    inner: Body,
    _guard: Option<ActivityGuard>,
    metrics: Option<Arc<Metrics>>,
}

impl http_body::Body for GuardedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        if let (Some(m), Poll::Ready(Some(Ok(f)))) = (&self.metrics, &r) {
            if let Some(d) = f.data_ref() {
                m.bytes_to_client(d.len() as u64);
            }
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
