#![forbid(unsafe_code)]
//! Test kit of `vscode-on-demand`: what the integration tests in the root `tests/` drive the
//! product with. They run the real binary on port 0 with a temporary data directory, talk to
//! it over real TLS (trusting the CA it generated), and run `vod-upstream`, a binary of this
//! package, as the instance process.
//!
//! Modules, each owning one concern:
//! - [`bins`]: where the product's and the kit's binaries are.
//! - [`server`]: starting and stopping the server under test.
//! - [`client`]: requests to it (HTTP/1.1, HTTP/2, API, WebSocket) and reading answers.
//! - [`fixture`]: a server with `vod-upstream` instances in a fresh directory; polling.
//! - [`metrics`]: reading the Prometheus page (samples, cold start phases).
//! - [`process`]: stopping children, `/proc` reading, log tails, a poison-proof lock.
//! - [`tls`]: the clients' TLS configurations.
//! - [`control_plane`] and [`kube`]: a real Kubernetes control plane, `kubectl`, `vod-kubelet`.
//! - [`image`]: the project's container image and the proxy run from it with podman; the
//!   code-server base image for instance pods.
//! - [`node`]: a real node for it: containerd and a kubelet built from the same source, and
//!   hostPath PersistentVolumes on it.
//! - [`browser`]: code-server, Chromium and the browser scripts of the end-to-end tests.
//! - [`vscode_cli`]: a stand-in VS Code CLI and the update service that serves it.
//!
//! The binaries in `src/bin/` share [`process`], [`tls`] and [`client::send_http1`] with it.

pub mod bins;
pub mod browser;
pub mod client;
pub mod control_plane;
pub mod fixture;
pub mod image;
pub mod kube;
pub mod metrics;
pub mod node;
pub mod process;
pub mod server;
pub mod tls;
pub mod vscode_cli;

pub use bins::{kubelet, product, upstream};
pub use client::{body_json, body_text, Created};
pub use fixture::{
    python_instances, python_socket_instance, starts, tempdir, unsandboxed, upstream_command,
    wait_until, Fixture,
};
pub use metrics::{Scrape, PHASES};
pub use process::{log_tail, pid_alive, stop_child};
pub use server::Server;
pub use tls::client_tls;
/// The WebSocket client that [`Server::websocket`] returns streams of, for the tests to name
/// its types and messages with the same version.
pub use tokio_tungstenite;
