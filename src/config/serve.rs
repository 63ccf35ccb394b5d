//! `serve`'s configuration: listener, routing, backends, limits, logs and metrics.

use super::{default_data_dir, duration, Backend};
use crate::error::StartupError;
use crate::http::client_addr::TrustedProxies;
use crate::http::origin::RoutingMode;
use crate::orchestrator::runtime::{RuntimeConfig, RuntimeKind};
use crate::orchestrator::sandbox::SandboxMode;
use clap::{Args, Parser, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    /// Address to listen on (HTTPS).
    #[arg(long, env = "VOD_LISTEN", default_value = "127.0.0.1:8443")]
    pub listen: SocketAddr,
    /// Public base URL of this server, used in instance URLs and to check WebSocket origins
    /// [default: https://localhost:<listen port>].
    #[arg(long, env = "VOD_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// How browsers reach instances: `host` gives each instance its own origin,
    /// https://<id>.<public host> (isolated from each other); `path` serves all under the
    /// public host (one trust domain); `auto` is host on localhost, else path.
    #[arg(long, env = "VOD_ROUTING", value_enum, default_value = "auto")]
    pub routing: RoutingMode,
    /// Directory for instance metadata, workspaces, the admin token and caches
    /// [default: $XDG_DATA_HOME/vscode-on-demand or ~/.local/share/vscode-on-demand].
    #[arg(long, env = "VOD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Where instances run.
    #[arg(long, env = "VOD_BACKEND", value_enum, default_value = "local")]
    pub backend: Backend,
    /// Stop an instance after this long without activity (per-instance `idle_timeout`
    /// overrides it).
    #[arg(long, env = "VOD_IDLE_TIMEOUT", value_parser = duration, default_value = "30m")]
    pub idle_timeout: Duration,
    /// Largest per-instance idle timeout a client may ask for.
    #[arg(long, env = "VOD_MAX_IDLE_TIMEOUT", value_parser = duration, default_value = "24h")]
    pub max_idle_timeout: Duration,
    /// How long before an idle stop open pages show a notice (per-instance `idle_notice`
    /// overrides it; never longer than the instance's idle timeout; 0s for none).
    #[arg(long, env = "VOD_IDLE_NOTICE", value_parser = duration, default_value = "2m")]
    pub idle_notice: Duration,
    /// How long a start may take before it fails (held requests then get 503).
    #[arg(long, env = "VOD_START_TIMEOUT", value_parser = duration, default_value = "120s")]
    pub start_timeout: Duration,
    /// How often idle instances are looked for.
    #[arg(long, env = "VOD_REAP_INTERVAL", value_parser = duration, default_value = "30s")]
    pub reap_interval: Duration,
    /// Directory holding server.crt/server.key (and ca.crt/ca.key); generated when missing
    /// [default: <data-dir>/certs].
    #[arg(long, env = "VOD_CERT_DIR")]
    pub cert_dir: Option<PathBuf>,
    /// Admin API token [default: generated once into <data-dir>/admin-token].
    #[arg(long, env = "VOD_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// What runs as an instance. With `--backend kube`, `auto` and `serve-web` run the VS Code
    /// CLI (downloaded into the pod) and `code-server` runs it from the base image.
    #[arg(long, env = "VOD_RUNTIME", value_enum, default_value = "auto")]
    pub runtime: RuntimeKind,
    /// code-server executable [default: found on PATH].
    #[arg(long, env = "VOD_CODE_SERVER")]
    pub code_server: Option<PathBuf>,
    /// VS Code CLI (`code`) executable for `serve-web` [default: found on PATH, else
    /// downloaded per version into <data-dir>/cache].
    #[arg(long, env = "VOD_CODE_CLI")]
    pub code_cli: Option<PathBuf>,
    /// Command template for `--runtime command`, split on spaces; placeholders {socket} (the
    /// Unix socket to listen on), {port} (a loopback TCP port instead, used when {socket} is
    /// absent; reachable by any local process), {base_path}, {workspace}, {config_dir},
    /// {instance_id}, {user_id}. Without {base_path} the `/instances/<id>` prefix is removed
    /// from proxied paths.
    #[arg(long, env = "VOD_COMMAND")]
    pub command: Option<String>,
    /// How local instances are confined: `bwrap` (bubblewrap: own namespaces, only their
    /// workspace and config visible; refuse to start without it), `auto` (bwrap when it works
    /// here, else unsandboxed with a warning) or `none`.
    #[arg(long, env = "VOD_SANDBOX", value_enum, default_value = "auto")]
    pub sandbox: SandboxMode,
    /// Where the VS Code CLI is downloaded from.
    #[arg(
        long,
        env = "VOD_VSCODE_DOWNLOAD_URL",
        default_value = "https://update.code.visualstudio.com"
    )]
    pub vscode_download_url: String,
    /// Most simultaneous client connections.
    #[arg(long, env = "VOD_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,
    /// Most simultaneous connections from one client address (IPv6: one /64); at the limit its
    /// longest-idle connection is closed to make room, else the new one is refused. Connections
    /// from --trusted-proxies carry many clients and are exempt; with --proxy-protocol the
    /// client their header names is held to this.
    #[arg(long, env = "VOD_MAX_CONNECTIONS_PER_CLIENT", default_value_t = 512)]
    pub max_connections_per_client: usize,
    /// A client connection with no request in flight is closed after this long (before its
    /// first request, between keep-alive requests, idle HTTP/2).
    #[arg(long, env = "VOD_IDLE_CONNECTION_TIMEOUT", value_parser = duration, default_value = "60s")]
    pub idle_connection_timeout: Duration,
    /// A WebSocket tunnel with no bytes either way for this long is closed (VS Code sends
    /// keepalives every few seconds while a tab is open).
    #[arg(long, env = "VOD_TUNNEL_IDLE_TIMEOUT", value_parser = duration, default_value = "10m")]
    pub tunnel_idle_timeout: Duration,
    /// Most instances one user may have (creating more answers 409).
    #[arg(long, env = "VOD_MAX_INSTANCES_PER_USER", default_value_t = 10)]
    pub max_instances_per_user: usize,
    /// Most instances running or starting at once (starting more answers 429).
    #[arg(long, env = "VOD_MAX_RUNNING", default_value_t = 50)]
    pub max_running: usize,
    /// Most starts in progress at once; more wait their turn (the starting page says so).
    #[arg(long, env = "VOD_MAX_CONCURRENT_STARTS", default_value_t = 4)]
    pub max_concurrent_starts: usize,
    /// How long connecting to an instance may take (then 504).
    #[arg(long, env = "VOD_UPSTREAM_CONNECT_TIMEOUT", value_parser = duration, default_value = "5s")]
    pub upstream_connect_timeout: Duration,
    /// How long an instance may take to start answering a request (then 504), so a hung one
    /// does not hold its clients forever.
    #[arg(long, env = "VOD_UPSTREAM_RESPONSE_TIMEOUT", value_parser = duration, default_value = "60s")]
    pub upstream_response_timeout: Duration,
    /// Largest request head in bytes; larger ones are answered 431.
    #[arg(long, env = "VOD_MAX_HEADER_BYTES", default_value_t = 64 * 1024)]
    pub max_header_bytes: usize,
    /// Failed token checks allowed per client address per minute before 429.
    #[arg(long, env = "VOD_AUTH_FAILURES_PER_MINUTE", default_value_t = 30)]
    pub auth_failures_per_minute: u32,
    /// Load balancers trusted to say who the client is: networks or addresses, comma-separated
    /// (e.g. 10.0.0.0/8,2001:db8::/32). A request over a connection from one counts against
    /// the client that X-Forwarded-For names (the right-most address not itself trusted; a
    /// malformed entry: the balancer) for --auth-failures-per-minute, and such connections
    /// are exempt from --max-connections-per-client, as one balancer carries many clients.
    /// Everyone else's X-Forwarded-For is ignored [default: none].
    #[arg(long, env = "VOD_TRUSTED_PROXIES", value_name = "CIDR,...",
          value_parser = TrustedProxies::parse, default_value = "", hide_default_value = true)]
    pub trusted_proxies: TrustedProxies,
    /// Connections from --trusted-proxies start with a PROXY protocol header (version 1 or 2)
    /// naming the client, before TLS; one without a valid header within 10 s is closed. The
    /// named client is held to --max-connections-per-client and --auth-failures-per-minute.
    /// Needs --trusted-proxies; other peers connect without a header.
    #[arg(long, env = "VOD_PROXY_PROTOCOL", value_parser = clap::builder::BoolishValueParser::new())]
    pub proxy_protocol: bool,
    /// Kubernetes namespace of this server: the reaper Lease lives here (kube backend).
    #[arg(long, env = "VOD_NAMESPACE", default_value = "default")]
    pub namespace: String,
    /// Kubernetes namespace of the instances, apart from this server's own Secrets
    /// [default: --namespace].
    #[arg(long, env = "VOD_INSTANCE_NAMESPACE")]
    pub instance_namespace: Option<String>,
    /// User and group id the instance containers run as (never root); volumes are given to
    /// this group.
    #[arg(long, env = "VOD_INSTANCE_UID", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    pub instance_uid: u32,
    /// kubeconfig to use [default: in-cluster service account, else $KUBECONFIG or
    /// ~/.kube/config].
    #[arg(long, env = "VOD_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Image of this program, run as the instance pods' init container to fetch VS Code.
    #[arg(
        long,
        env = "VOD_INSTALLER_IMAGE",
        default_value = "vscode-on-demand:latest"
    )]
    pub installer_image: String,
    /// Storage class of the instance volumes [default: the cluster's default].
    #[arg(long, env = "VOD_STORAGE_CLASS")]
    pub storage_class: Option<String>,
    /// Access mode of workspace volumes. With ReadWriteOnce a user's pods are kept on the node
    /// that has the volume.
    #[arg(long, env = "VOD_WORKSPACE_ACCESS_MODE", default_value = "ReadWriteOnce", value_parser = ["ReadWriteOnce", "ReadWriteMany"])]
    pub workspace_access_mode: String,
    /// Size of each instance's config volume (VS Code CLI, settings, extensions).
    #[arg(long, env = "VOD_CONFIG_STORAGE", default_value = "2Gi")]
    pub config_storage: String,
    /// This server's name among replicas (the pod name), held in the reaper Lease
    /// [default: random].
    #[arg(long, env = "POD_NAME")]
    pub replica_name: Option<String>,
    /// How long shutdown waits for open connections to finish; WebSockets still open then are
    /// closed with status 1001 ("going away"), so VS Code reconnects.
    #[arg(long, env = "VOD_DRAIN_TIMEOUT", value_parser = duration, default_value = "10s")]
    pub drain_timeout: Duration,
    /// Also serve `/metrics` (Prometheus text format) over plain HTTP, without a token, on this
    /// address: for scrapers inside a cluster. Keep it off public networks. On the main
    /// listener `/metrics` always needs the admin token.
    #[arg(long, env = "VOD_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Log lines as text (for people) or JSON, one object per line (for collectors).
    #[arg(long, env = "VOD_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

impl ServeConfig {
    /// Builds a config from arguments (as after `serve`), the way tests do.
    pub fn from_args<I, S>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = S>,
        S: Into<std::ffi::OsString> + Clone,
    {
        #[derive(Parser)]
        struct Wrap {
            #[command(flatten)]
            serve: ServeConfig,
        }
        let argv = std::iter::once(std::ffi::OsString::from("serve"))
            .chain(args.into_iter().map(Into::into));
        Wrap::try_parse_from(argv).map(|w| w.serve)
    }

    /// The trusted proxies; `--proxy-protocol` needs some, as only they send the header.
    pub fn trusted_proxies(&self) -> Result<TrustedProxies, StartupError> {
        if self.proxy_protocol && self.trusted_proxies.is_empty() {
            return Err(StartupError::ProxyProtocolUntrusted);
        }
        Ok(self.trusted_proxies.clone())
    }

    pub fn data_dir(&self) -> PathBuf {
        self.data_dir.clone().unwrap_or_else(default_data_dir)
    }

    pub fn cert_dir(&self) -> PathBuf {
        self.cert_dir
            .clone()
            .unwrap_or_else(|| self.data_dir().join("certs"))
    }

    pub fn runtime(&self) -> RuntimeConfig {
        RuntimeConfig {
            kind: self.runtime,
            code_server: self.code_server.clone(),
            code_cli: self.code_cli.clone(),
            command: self.command.clone(),
            download_url: self.vscode_download_url.clone(),
            // On only where each instance has an origin of its own (set by the app).
            port_forwarding: false,
        }
    }
}
