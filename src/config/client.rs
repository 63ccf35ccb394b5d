//! The client subcommands' arguments: how to reach the server, and what each command takes.

use super::duration;
use clap::Args;
use std::path::PathBuf;
use std::time::Duration;

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
