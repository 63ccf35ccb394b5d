//! vscode-on-demand: VS Code in the browser on demand, from one binary that terminates TLS,
//! serves the management API and proxies `/instances/<id>/` to each instance, starting stopped
//! instances when a browser arrives and stopping idle ones.
//!
//! # Layout
//! Arrows point down: `main → app → server → http → api | proxy → shared → lifecycle →
//! registry, orchestrator → upstream, instance, metrics`.
//! - [`config`]: command line and environment → typed configuration; parsing binds nothing.
//! - [`app`]: the composition root; builds everything and owns the shutdown token.
//! - [`server`]: accept loop, the PROXY header from trusted balancers, TLS, HTTP/1.1 +
//!   HTTP/2, idle connections closed, the client of each request, dispatch by route, graceful
//!   shutdown; each request timed, counted and given a request id.
//! - [`http`]: origins and the router (pure: host and path → route), the one failure type and
//!   its responses, the connection table (caps, idleness), the guess limiter, server-sent
//!   events, the client's address behind trusted proxies (`client_addr`: `X-Forwarded-For`;
//!   `proxy_header`: the PROXY protocol), request ids, `/metrics` and its plain listener.
//! - [`api`]: the `/api` handlers: parse, call one lifecycle method, format.
//! - [`console`]: the browser console at `/` (page, script, style compiled in; strict CSP).
//! - [`proxy`]: an instance's requests: token check and cookies, our own endpoints, the
//!   starting page, forwarding and WebSocket splicing, the activity signal.
//! - [`shared`]: what request handlers share.
//! - [`lifecycle`]: the only writer of instance state: create, single-flight start, stop with a
//!   reason, delete, keepalive, access token rotation, what other servers did; the idle policy
//!   and the reaper.
//! - [`registry`]: the instance table, live status, activity and the current access token.
//! - [`orchestrator`]: the backend trait, the local backend (child processes, each in a
//!   bubblewrap sandbox serving on a Unix socket) and the Kubernetes backend.
//! - [`upstream`]: reaching instances: HTTP/1.1 connections by address (a small client of
//!   our own on httparse for proxied requests, driven by the task whose request they carry;
//!   hyper's for probes and WebSocket handshakes), and the keep-alive pool.
//! - [`instance`]: domain types validated at the edge, and the state and its transitions.
//! - [`metrics`]: what the server counts, with handles resolved once for the data path, and
//!   the cold start phases, which a start's progress reports in one place (the lifecycle's).
//! - [`tls`]: rustls configuration, the local CA and certificates minted per instance host.
//! - [`outbound`]: requests this program makes (client subcommands, downloads).
//! - [`cli`]: the client subcommands.
//! - [`error`]: what stops the server from starting.
#![forbid(unsafe_code)]
// The proxy's request rewriting returns a ready error response as its `Err`; it is built once
// per failed request, so boxing it would only add an allocation.
#![allow(clippy::result_large_err)]

pub mod api;
pub mod app;
pub mod cli;
pub mod config;
pub mod console;
pub mod error;
pub mod http;
pub mod instance;
pub mod lifecycle;
pub mod metrics;
pub mod orchestrator;
pub mod outbound;
pub mod proxy;
pub mod registry;
pub mod server;
pub mod shared;
pub mod tls;
pub mod upstream;
