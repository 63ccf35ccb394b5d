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
    pub secret: Option<UpstreamSecret>,
}

/// The secret an instance requires on every request, and the cookie its server reads it from.
#[derive(Clone, PartialEq, Eq)]
pub struct UpstreamSecret {
    pub value: Arc<str>,
    pub cookie: SecretCookie,
}

/// Which cookie carries an instance's secret; the two VS Code servers check different ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretCookie {
    /// `code serve-web`'s connection token, `vscode-tkn`. Its page reads the token from the
    /// cookie and repeats it inside its WebSocket protocol, so page loads get it too.
    ConnectionToken,
    /// code-server's session cookie, `code-server-session`, which it compares with
    /// `$HASHED_PASSWORD`. The page never needs it: only the proxy sends it.
    CodeServerSession,
}

impl SecretCookie {
    pub fn name(self) -> &'static str {
        match self {
            Self::ConnectionToken => "vscode-tkn",
            Self::CodeServerSession => "code-server-session",
        }
    }

    /// Whether the instance's own page needs the secret as a cookie of its origin.
    pub fn page_needs_it(self) -> bool {
        self == Self::ConnectionToken
    }
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upstream")
            .field("addr", &self.addr)
            .field("strip_prefix", &self.strip_prefix)
            .field(
                "secret",
                &self.secret.as_ref().map(|s| (s.cookie, "<redacted>")),
            )
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
