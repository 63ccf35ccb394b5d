//! vscode-on-demand: VS Code in the browser on demand, from one binary that terminates TLS,
//! serves the management API and proxies `/instances/<id>/` to each instance, starting stopped
//! instances when a browser arrives and stopping idle ones.
//!
//! # Layout
//! Arrows point down: `app → server → api | proxy → lifecycle → registry, orchestrator →
//! instance`.
//! - [`config`]: command line and environment → typed configuration.
//! - [`app`]: the composition root; builds everything and owns the shutdown token.
//! - [`server`]: accept loop, TLS, HTTP/1.1 + HTTP/2, idle connections, dispatch, graceful
//!   shutdown.
//! - [`http`]: origins and the router (pure: host and path → route), the connection table
//!   (caps, idleness), response helpers, server-sent events.
//! - [`api`]: the `/api` handlers.
//! - [`proxy`]: token check, starting page, forwarding and WebSocket splicing, the activity
//!   signal (the script added to pages, what counts as work).
//! - [`state`]: what request handlers share.
//! - [`lifecycle`]: single-flight start, readiness wait, stop, the idle policy and reaper.
//! - [`registry`]: the instance table, live status and activity.
//! - [`orchestrator`]: the backend trait, the local backend (child processes, each in a
//!   bubblewrap sandbox serving on a Unix socket) and the Kubernetes backend.
//! - [`instance`]: domain types, validated at the edge.
//! - [`tls`]: rustls configuration and self-signed certificates.
//! - [`outbound`]: requests this program makes (client subcommands, downloads).
//! - [`cli`]: the client subcommands.
#![forbid(unsafe_code)]
// Handlers return a ready error response as their `Err`; it is built once per failed request,
// so boxing it would only add an allocation.
#![allow(clippy::result_large_err)]

pub mod api;
pub mod app;
pub mod cli;
pub mod config;
pub mod error;
pub mod http;
pub mod instance;
pub mod lifecycle;
pub mod orchestrator;
pub mod outbound;
pub mod proxy;
pub mod registry;
pub mod server;
pub mod state;
pub mod tls;
