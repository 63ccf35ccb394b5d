//! Requests this program makes itself: the client subcommands calling the API, and the local
//! backend downloading the VS Code CLI. One HTTP/1.1 request per connection over TCP or TLS,
//! with redirects followed and bodies bounded: neither use needs a pool.

use bytes::Bytes;
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    #[error("bad URL {0:?}: use http://host[:port]/path or https://…")]
    BadUrl(String),
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS with {addr} failed: {source}")]
    Tls {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP exchange with {addr} failed: {message}")]
    Http { addr: String, message: String },
    #[error("{0} timed out")]
    Timeout(String),
    #[error("too many redirects, last to {0}")]
    Redirects(String),
    #[error("response from {0} is larger than allowed")]
    TooLarge(String),
}

/// A response read in full.
#[derive(Debug)]
pub struct Response {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

/// Where outbound requests go and whom they trust.
#[derive(Clone)]
pub struct Outbound {
    tls: Arc<rustls::ClientConfig>,
    timeout: Duration,
    max_body: usize,
}

impl Outbound {
    pub fn new(roots: rustls::RootCertStore, timeout: Duration, max_body: usize) -> Self {
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        // ring's provider supports the default protocol versions; this cannot fail.
        .expect("ring supports TLS 1.2 and 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
        Self {
            tls: Arc::new(tls),
            timeout,
            max_body,
        }
    }

    /// Sends one request, following up to 5 redirects for GET.
    pub async fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<Bytes>,
    ) -> Result<Response, OutboundError> {
        let mut url = url.to_owned();
        for _ in 0..6 {
            let resp = tokio::time::timeout(
                self.timeout,
                self.once(method.clone(), &url, headers, body.clone()),
            )
            .await
            .map_err(|_| OutboundError::Timeout(format!("{method} {url}")))??;
            let location = resp
                .headers
                .get(http::header::LOCATION)
                .and_then(|l| l.to_str().ok());
            match (
                resp.status.is_redirection(),
                location,
                method == Method::GET,
            ) {
                (true, Some(loc), true) => url = resolve(&url, loc)?,
                _ => return Ok(resp),
            }
        }
        Err(OutboundError::Redirects(url))
    }

    async fn once(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<Bytes>,
    ) -> Result<Response, OutboundError> {
        let addr = url.to_owned();
        let resp = self.open(method, url, headers, body).await?;
        let (parts, body) = resp.into_parts();
        let body = Limited::new(body, self.max_body)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    OutboundError::TooLarge(addr.clone())
                } else {
                    OutboundError::Http {
                        addr: addr.clone(),
                        message: e.to_string(),
                    }
                }
            })?
            .to_bytes();
        Ok(Response {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    /// Sends one request (no redirects) and answers once the response head arrives; the
    /// body streams, unbounded in size and time (server-sent events).
    pub async fn open(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<Bytes>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, OutboundError> {
        let uri: Uri = url.parse().map_err(|_| OutboundError::BadUrl(url.into()))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(OutboundError::BadUrl(url.into())),
        };
        let host = uri
            .host()
            .ok_or_else(|| OutboundError::BadUrl(url.into()))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let addr = format!("{host}:{port}");
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|source| OutboundError::Connect {
                addr: addr.clone(),
                source,
            })?;
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(
                http::header::HOST,
                uri.authority().map_or("", |a| a.as_str()),
            )
            .header(
                http::header::USER_AGENT,
                concat!("vscode-on-demand/", env!("CARGO_PKG_VERSION")),
            );
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req =
            req.body(Full::new(body.unwrap_or_default()))
                .map_err(|e| OutboundError::Http {
                    addr: addr.clone(),
                    message: e.to_string(),
                })?;
        if https {
            let name = ServerName::try_from(host.clone())
                .map_err(|_| OutboundError::BadUrl(url.into()))?;
            let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
                .connect(name, tcp)
                .await
                .map_err(|source| OutboundError::Tls {
                    addr: addr.clone(),
                    source,
                })?;
            head(TokioIo::new(tls), req, &addr).await
        } else {
            head(TokioIo::new(tcp), req, &addr).await
        }
    }
}

/// Sends `req` on `io` and answers with the response head; its body streams.
async fn head<I>(
    io: I,
    req: Request<Full<Bytes>>,
    addr: &str,
) -> Result<hyper::Response<hyper::body::Incoming>, OutboundError>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let http_err = |e: &dyn std::fmt::Display| OutboundError::Http {
        addr: addr.to_owned(),
        message: e.to_string(),
    };
    let (mut send, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| http_err(&e))?;
    tokio::spawn(conn);
    send.send_request(req).await.map_err(|e| http_err(&e))
}

/// Resolves a redirect target against the URL that answered with it.
fn resolve(base: &str, location: &str) -> Result<String, OutboundError> {
    if location.starts_with("http://") || location.starts_with("https://") {
        return Ok(location.to_owned());
    }
    let uri: Uri = base
        .parse()
        .map_err(|_| OutboundError::BadUrl(base.into()))?;
    let origin = format!(
        "{}://{}",
        uri.scheme_str().unwrap_or("https"),
        uri.authority().map_or("", |a| a.as_str())
    );
    if location.starts_with('/') {
        Ok(format!("{origin}{location}"))
    } else {
        let dir = uri.path().rsplit_once('/').map_or("", |(d, _)| d);
        Ok(format!("{origin}{dir}/{location}"))
    }
}

/// The system's trusted roots, as installed by the OS.
pub fn system_roots() -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    roots
}
