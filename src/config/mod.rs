//! Command line and environment → typed configuration. Parsing binds nothing and reads no
//! files; tests build these structs from argument vectors.

mod serve;

pub use serve::{LogFormat, ServeConfig};

use clap::{Args, Parser, Subcommand, ValueEnum};
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
    Start(InstanceArgs),
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

pub(crate) fn duration(s: &str) -> Result<Duration, String> {
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
    #[command(flatten)]
    pub client: ClientConfig,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::origin::RoutingMode;
    use crate::orchestrator::sandbox::SandboxMode;

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
        assert_eq!(c.log_format, LogFormat::Text);
        assert_eq!(c.metrics_listen, None);
        let c =
            ServeConfig::from_args(["--log-format", "json", "--metrics-listen", "0.0.0.0:9090"])
                .unwrap();
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.metrics_listen, Some("0.0.0.0:9090".parse().unwrap()));
    }
}
