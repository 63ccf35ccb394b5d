//! Where a running instance is reached: its address (TCP or Unix socket), whether it wants the
//! instance prefix kept, and the secret it requires (kept out of every debug print).

use std::fmt;
use std::sync::Arc;

/// Where a running instance serves, whether it expects the `/instances/<id>` prefix removed
/// from request paths (code-server serves at `/`; `code serve-web` takes a base path), and the
/// secret the instance requires on every request, which only the proxy knows (kube pods are on
/// a network others share; local instances serve on sockets only this server can open).
#[derive(Clone, PartialEq, Eq)]
pub struct Upstream {
    pub addr: UpstreamAddr,
    pub strip_prefix: bool,
    pub secret: Option<Arc<str>>,
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upstream")
            .field("addr", &self.addr)
            .field("strip_prefix", &self.strip_prefix)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// An instance's listening address: a TCP address (pods, `{port}` command templates) or a
/// Unix socket in a directory only this server can open (local instances).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum UpstreamAddr {
    Tcp(std::net::SocketAddr),
    Unix(std::sync::Arc<std::path::Path>),
}

impl fmt::Display for UpstreamAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp(a) => a.fmt(f),
            Self::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}
