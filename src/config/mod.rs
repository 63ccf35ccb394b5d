//! Command line and environment → typed configuration. Parsing binds nothing and reads no
//! files; tests build these structs from argument vectors. The client subcommands' arguments
//! are in `client`.

use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::time::Duration;

mod client;
mod serve;
pub use client::{ClientConfig, CreateArgs, InstanceArgs, KeepaliveArgs, WaitArgs};
pub use serve::{LogFormat, ServeConfig};

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
    }

    #[test]
    fn trusted_proxies_and_the_proxy_protocol() {
        use std::net::IpAddr;
        let c = ServeConfig::from_args(["--listen", "127.0.0.1:0"]).unwrap();
        assert!(c.trusted_proxies().unwrap().is_empty() && !c.proxy_protocol);
        let c = ServeConfig::from_args(["--trusted-proxies", "10.0.0.0/8, 192.0.2.7,::1"]).unwrap();
        let t = c.trusted_proxies().unwrap();
        assert_eq!(t.to_string(), "10.0.0.0/8,192.0.2.7/32,::1/128");
        for (ip, trusted) in [
            ("10.9.8.7", true),
            ("192.0.2.7", true),
            ("192.0.2.8", false),
            ("::1", true),
        ] {
            assert_eq!(t.contains(ip.parse::<IpAddr>().unwrap()), trusted, "{ip}");
        }
        let err = ServeConfig::from_args(["--trusted-proxies", "10.0.0.0/8,lb"]).unwrap_err();
        assert!(err.to_string().contains("`lb` is not a network"), "{err}");
        assert!(ServeConfig::from_args(["--trusted-proxies", ""])
            .unwrap()
            .trusted_proxies()
            .unwrap()
            .is_empty());
        let c = ServeConfig::from_args(["--proxy-protocol"]).unwrap();
        let err = c.trusted_proxies().unwrap_err().to_string();
        assert!(
            err.contains("--proxy-protocol needs --trusted-proxies"),
            "{err}"
        );
        let c =
            ServeConfig::from_args(["--proxy-protocol", "--trusted-proxies", "10.0.0.1"]).unwrap();
        assert!(c.proxy_protocol && !c.trusted_proxies().unwrap().is_empty());
    }
}
