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
    #[error("{0}")]
    Origins(#[from] crate::http::origin::OriginError),
    #[error(
        "host routing needs a certificate for *.{0}: put a wildcard certificate in the \
         certificate directory, or remove server.crt and server.key there so the local CA makes \
         them (it then signs each instance host), or use --routing path"
    )]
    NoInstanceCerts(String),
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    #[error("backend: {0}")]
    Backend(#[from] OrchestratorError),
    #[error("the admin token must be at least 16 characters of printable ASCII")]
    WeakToken,
    #[error(
        "--proxy-protocol needs --trusted-proxies: name the networks of the load balancers that \
         send the PROXY header (only their connections are expected to start with one)"
    )]
    ProxyProtocolUntrusted,
    #[error(
        "--runtime command runs local processes: with --backend kube choose serve-web (the VS \
         Code CLI, downloaded into the pod) or code-server (from the base image)"
    )]
    CommandOnKube,
}
