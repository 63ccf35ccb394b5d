//! Command line and environment → typed configuration. Parsing binds nothing and reads no
//! files; tests build these structs from argument vectors.

use crate::http::origin::RoutingMode;
use crate::orchestrator::runtime::{RuntimeConfig, RuntimeKind};
use crate::orchestrator::sandbox::SandboxMode;
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(
    name = "vscode-on-demand",
    version,
    about = "VS Code in the browser, on demand"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server: TLS listener, management API and instance proxy.
    Serve(Box<ServeConfig>),
    /// Create an instance for a user.
    Create(CreateArgs),
    /// List instances, optionally of one user.
    List {
        #[arg(long)]
        user_id: Option<String>,
        #[command(flatten)]
        client: ClientConfig,
    },
    /// Show one instance.
    Get(InstanceArgs),
    /// Delete an instance (the user's workspace stays).
    Delete(InstanceArgs),
    /// Show an instance's status.
    Status(InstanceArgs),
    /// Start an instance and wait until it is running.
    Start {
        #[command(flatten)]
        instance: InstanceArgs,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Stop an instance (scale to zero); its files stay.
    Stop(InstanceArgs),
    /// Give an instance a new access token; the old one, and cookies holding it, stop working.
    RotateToken(InstanceArgs),
    /// Count as activity on a running instance, so it is not stopped as idle; with
    /// `--busy-for` or `--busy-until` it counts as active until then (long jobs).
    Keepalive(KeepaliveArgs),
    /// Show a user's workspace.
    Workspace {
        #[arg(long)]
        user_id: String,
        #[command(flatten)]
        client: ClientConfig,
    },
    /// Download the VS Code CLI for a version into a directory, once (the instance pods' init
    /// container runs this).
    InstallCli {
        #[arg(long, env = "VOD_VSCODE_VERSION")]
        version: String,
        /// Directory that receives `vscode-cli/<version>/code`.
        #[arg(long)]
        dest: PathBuf,
        #[arg(
            long,
            env = "VOD_VSCODE_DOWNLOAD_URL",
            default_value = "https://update.code.visualstudio.com"
        )]
        download_url: String,
    },
    /// Print shell completions for bash, zsh or fish.
    Completions { shell: clap_complete::Shell },
    /// Generate a CA and server certificate into a directory (kept if already there).
    Cert {
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        /// Host names and addresses the certificate is valid for.
        #[arg(long = "host", default_values_t = default_hosts())]
        hosts: Vec<String>,
    },
}

pub fn default_hosts() -> Vec<String> {
    ["localhost", "vscode.local", "127.0.0.1", "::1"]
        .map(String::from)
        .to_vec()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    /// Instances are child processes on this machine.
    Local,
    /// Instances are Kubernetes Deployments.
    Kube,
}

fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 30s, 5m, 1h)"))
}

/// The default data directory: `$XDG_DATA_HOME/vscode-on-demand`, else
/// `~/.local/share/vscode-on-demand`.
pub fn default_data_dir() -> PathBuf {
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("vscode-on-demand")
}

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
    /// What the local backend runs as an instance.
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
    /// longest-idle connection is closed to make room, else the new one is refused.
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

/// How a client subcommand reaches the server.
#[derive(Debug, Clone, Args)]
pub struct ClientConfig {
    /// Base URL of the server [default: the local server recorded in the data directory, else
    /// https://localhost:8443].
    #[arg(long, env = "VOD_API_URL", global = true)]
    pub api_url: Option<String>,
    /// API token [default: <data-dir>/admin-token].
    #[arg(long, env = "VOD_API_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// CA certificate to trust [default: the local server's CA, else the system's roots].
    #[arg(long, env = "VOD_CA_CERT", global = true)]
    pub ca_cert: Option<PathBuf>,
    /// Data directory of a local server, to find its URL, CA and token.
    #[arg(long, env = "VOD_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,
    /// Print the server's JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct InstanceArgs {
    #[arg(long)]
    pub instance_id: String,
    #[command(flatten)]
    pub client: ClientConfig,
}

#[derive(Debug, Args)]
pub struct KeepaliveArgs {
    #[arg(long)]
    pub instance_id: String,
    /// Busy for this long from now (e.g. 2h).
    #[arg(long, value_parser = duration, conflicts_with = "busy_until")]
    pub busy_for: Option<Duration>,
    /// Busy until this time: Unix seconds or RFC 3339 (e.g. 2030-01-01T12:00:00Z).
    #[arg(long)]
    pub busy_until: Option<String>,
    #[command(flatten)]
    pub client: ClientConfig,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    #[arg(long)]
    pub user_id: String,
    /// Base image (Kubernetes backend), e.g. mcr.microsoft.com/devcontainers/python:1-3.12.
    #[arg(long)]
    pub base_image: Option<String>,
    #[arg(long)]
    pub vscode_version: Option<String>,
    /// Workspace storage size, e.g. 5Gi.
    #[arg(long = "storage")]
    pub storage_size: Option<String>,
    #[arg(long)]
    pub memory_request: Option<String>,
    #[arg(long)]
    pub memory_limit: Option<String>,
    #[arg(long)]
    pub cpu_request: Option<String>,
    #[arg(long)]
    pub cpu_limit: Option<String>,
    /// Seconds without activity before the instance is stopped.
    #[arg(long)]
    pub idle_timeout: Option<u64>,
    /// Seconds before an idle stop that open pages show a notice (0: none).
    #[arg(long)]
    pub idle_notice: Option<u64>,
    /// Start it once created.
    #[arg(long)]
    pub start: bool,
    #[command(flatten)]
    pub wait: WaitArgs,
    #[command(flatten)]
    pub client: ClientConfig,
}

/// Following a start.
#[derive(Debug, Args)]
pub struct WaitArgs {
    /// Show the start's phases as they happen; exit non-zero with the reason if it fails.
    #[arg(long)]
    pub wait: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        let c =
            ServeConfig::from_args(["--listen", "127.0.0.1:0", "--idle-timeout", "20s"]).unwrap();
        assert_eq!(c.idle_timeout, Duration::from_secs(20));
        assert_eq!(c.idle_notice, Duration::from_secs(120));
        assert_eq!(c.start_timeout, Duration::from_secs(120));
        assert_eq!(c.backend, Backend::Local);
        assert_eq!(c.routing, RoutingMode::Auto);
        let p = ServeConfig::from_args(["--routing", "path"]).unwrap();
        assert_eq!(p.routing, RoutingMode::Path);
        assert!(ServeConfig::from_args(["--routing", "subdomain"]).is_err());
        assert_eq!(c.sandbox, SandboxMode::Auto);
        assert!(!c.runtime().port_forwarding);
        let c = ServeConfig::from_args(["--sandbox", "bwrap"]).unwrap();
        assert_eq!(c.sandbox, SandboxMode::Bwrap);
        assert!(ServeConfig::from_args(["--sandbox", "chroot"]).is_err());
        assert!(ServeConfig::from_args(["--idle-timeout", "soon"]).is_err());
    }
}
