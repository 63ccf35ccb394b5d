//! Errors that stop the server from starting, each saying what to fix.

use crate::orchestrator::OrchestratorError;
use crate::tls::TlsError;

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("cannot listen on {addr}: {source} (is another server using the port? pick one with --listen)")]
    Listen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("data directory {path}: {source}")]
    DataDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("--public-url {0:?} must look like https://host[:port]")]
    PublicUrl(String),
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    #[error("backend: {0}")]
    Backend(#[from] OrchestratorError),
    #[error("the admin token must be at least 16 characters of printable ASCII")]
    WeakToken,
}
