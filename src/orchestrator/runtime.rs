//! What the local backend runs as an instance, and how: `code-server`, the VS Code CLI's
//! `code serve-web` (found on PATH or downloaded once per version into the data directory), or
//! a command template. Resolution happens at start time so an install made after the server
//! started is picked up, and a missing runtime is an error naming what to install. Instances
//! listen on a Unix socket; only a command template that asks for `{port}` gets a TCP port.

use super::{OrchestratorError, Result};
use crate::outbound::Outbound;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Which runtime to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RuntimeKind {
    /// An installed `code` CLI, else `code-server` on PATH, else download the VS Code CLI.
    Auto,
    CodeServer,
    ServeWeb,
    Command,
}

/// The local backend's runtime settings.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    pub kind: RuntimeKind,
    pub code_server: Option<PathBuf>,
    pub code_cli: Option<PathBuf>,
    pub command: Option<String>,
    /// Base of the VS Code update service; `<base>/<version>/cli-alpine-<arch>/stable` must
    /// answer with the CLI as a gzipped tar.
    pub download_url: String,
    /// Whether code-server's own proxy routes (`/proxy/<port>/`, `/absproxy/<port>/`) stay on;
    /// they forward to any port on the instance's machine, so they are off unless each
    /// instance has an origin of its own.
    pub port_forwarding: bool,
}

/// Everything about one instance that a launch needs; paths are as the instance sees them.
pub struct LaunchContext<'a> {
    pub instance_id: &'a str,
    pub user_id: &'a str,
    /// Only for a `{port}` template; 0 otherwise.
    pub port: u16,
    pub socket: &'a Path,
    pub base_path: &'a str,
    pub workspace: &'a Path,
    pub config_dir: &'a Path,
    pub vscode_version: &'a str,
    pub cache_dir: &'a Path,
}

/// A resolved command line.
#[derive(Debug, Clone)]
pub struct Launch {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub strip_prefix: bool,
    /// Path probed for readiness (any answer below 500 means ready).
    pub probe_path: String,
    pub description: &'static str,
}

pub(super) fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

impl RuntimeConfig {
    /// Whether instances listen on a TCP port rather than their Unix socket: only a command
    /// template without `{socket}` does (it gets `{port}` and `$PORT`). Any local process can
    /// reach such a port.
    pub fn listens_on_port(&self) -> bool {
        self.kind == RuntimeKind::Command
            && !self
                .command
                .as_deref()
                .is_some_and(|c| c.contains("{socket}"))
    }

    /// Picks and prepares the runtime for one start. May download the VS Code CLI.
    pub async fn launch(&self, ctx: &LaunchContext<'_>, outbound: &Outbound) -> Result<Launch> {
        match self.kind {
            RuntimeKind::CodeServer => Ok(self.code_server(self.code_server_path()?, ctx)),
            RuntimeKind::ServeWeb => Ok(serve_web(self.code_cli_path(ctx, outbound).await?, ctx)),
            RuntimeKind::Command => command(self.command.as_deref(), ctx),
            RuntimeKind::Auto => {
                if let Some(code) = self.code_cli.clone().or_else(|| find_on_path("code")) {
                    return Ok(serve_web(code, ctx));
                }
                if let Ok(cs) = self.code_server_path() {
                    return Ok(self.code_server(cs, ctx));
                }
                let code = self.code_cli_path(ctx, outbound).await.map_err(|e| {
                    OrchestratorError::NoRuntime(format!(
                        "no `code` CLI or `code-server` on PATH, and {e}; install code-server \
                         (npm install -g code-server) or the VS Code CLI, or pass \
                         --code-server / --code-cli"
                    ))
                })?;
                Ok(serve_web(code, ctx))
            }
        }
    }

    fn code_server_path(&self) -> Result<PathBuf> {
        match &self.code_server {
            Some(p) if is_executable(p) => Ok(p.clone()),
            Some(p) => Err(OrchestratorError::NoRuntime(format!(
                "--code-server {} is not an executable file",
                p.display()
            ))),
            None => find_on_path("code-server").ok_or_else(|| {
                OrchestratorError::NoRuntime(
                    "code-server is not on PATH: install it (npm install -g code-server) or pass \
                     --code-server PATH"
                        .into(),
                )
            }),
        }
    }

    async fn code_cli_path(&self, ctx: &LaunchContext<'_>, outbound: &Outbound) -> Result<PathBuf> {
        if let Some(p) = &self.code_cli {
            return if is_executable(p) {
                Ok(p.clone())
            } else {
                Err(OrchestratorError::NoRuntime(format!(
                    "--code-cli {} is not an executable file",
                    p.display()
                )))
            };
        }
        if let Some(p) = find_on_path("code") {
            return Ok(p);
        }
        download_cli(
            &self.download_url,
            ctx.vscode_version,
            ctx.cache_dir,
            outbound,
        )
        .await
    }

    fn code_server(&self, program: PathBuf, ctx: &LaunchContext<'_>) -> Launch {
        let cfg = |sub: &str| ctx.config_dir.join(sub).display().to_string();
        let mut args = vec![
            "--socket".into(),
            ctx.socket.display().to_string(),
            "--socket-mode".into(),
            "600".into(),
            "--auth".into(),
            "none".into(),
            "--disable-telemetry".into(),
            "--disable-update-check".into(),
            "--disable-workspace-trust".into(),
            "--user-data-dir".into(),
            cfg("user-data"),
            "--extensions-dir".into(),
            cfg("extensions"),
        ];
        if !self.port_forwarding {
            args.push("--disable-proxy".into());
        }
        args.push(ctx.workspace.display().to_string());
        Launch {
            program,
            args,
            strip_prefix: true,
            probe_path: "/healthz".into(),
            description: "code-server",
        }
    }
}

fn serve_web(program: PathBuf, ctx: &LaunchContext<'_>) -> Launch {
    let cfg = |sub: &str| ctx.config_dir.join(sub).display().to_string();
    Launch {
        program,
        args: vec![
            "--cli-data-dir".into(),
            cfg("cli-data"),
            "serve-web".into(),
            "--socket-path".into(),
            ctx.socket.display().to_string(),
            "--without-connection-token".into(),
            "--accept-server-license-terms".into(),
            "--server-base-path".into(),
            ctx.base_path.into(),
            "--server-data-dir".into(),
            cfg("server-data"),
            "--user-data-dir".into(),
            cfg("user-data"),
            "--extensions-dir".into(),
            cfg("extensions"),
        ],
        strip_prefix: false,
        probe_path: format!("{}/", ctx.base_path),
        description: "code serve-web",
    }
}

/// Expands a command template. It is split on whitespace, never given to a shell, so values
/// substituted into it cannot inject commands.
fn command(template: Option<&str>, ctx: &LaunchContext<'_>) -> Result<Launch> {
    let template = template.ok_or_else(|| {
        OrchestratorError::NoRuntime("--runtime command needs --command TEMPLATE".into())
    })?;
    let port = ctx.port.to_string();
    let ws = ctx.workspace.display().to_string();
    let cfg = ctx.config_dir.display().to_string();
    let socket = ctx.socket.display().to_string();
    let expand = |w: &str| {
        w.replace("{port}", &port)
            .replace("{socket}", &socket)
            .replace("{base_path}", ctx.base_path)
            .replace("{workspace}", &ws)
            .replace("{config_dir}", &cfg)
            .replace("{instance_id}", ctx.instance_id)
            .replace("{user_id}", ctx.user_id)
    };
    let mut words = template.split_whitespace().map(expand);
    let program = words
        .next()
        .ok_or_else(|| OrchestratorError::NoRuntime("--command is empty".into()))?;
    let serves_base_path = template.contains("{base_path}");
    Ok(Launch {
        program: PathBuf::from(program),
        args: words.collect(),
        strip_prefix: !serves_base_path,
        probe_path: if serves_base_path {
            format!("{}/", ctx.base_path)
        } else {
            "/".into()
        },
        description: "command",
    })
}

/// Downloads the VS Code CLI for `version` once into the cache, atomically (a half-finished
/// download never looks like a cached one).
pub async fn download_cli(
    base: &str,
    version: &str,
    cache: &Path,
    outbound: &Outbound,
) -> Result<PathBuf> {
    let dir = cache.join("vscode-cli").join(version);
    let bin = dir.join("code");
    if is_executable(&bin) {
        return Ok(bin);
    }
    let arch = match std::env::consts::ARCH {
        "x86_64" => "x64",
        "aarch64" => "arm64",
        other => {
            return Err(OrchestratorError::Download(format!(
                "no VS Code CLI build for {other}"
            )))
        }
    };
    let url = format!(
        "{}/{version}/cli-alpine-{arch}/stable",
        base.trim_end_matches('/')
    );
    let resp = outbound
        .send(http::Method::GET, &url, &[], None)
        .await
        .map_err(|e| OrchestratorError::Download(format!("{url}: {e}")))?;
    if !resp.status.is_success() {
        return Err(OrchestratorError::Download(format!(
            "{url} answered {}",
            resp.status
        )));
    }
    let tmp = cache.join("vscode-cli").join(format!(".{version}.partial"));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)
        .map_err(OrchestratorError::io(format!("creating {}", tmp.display())))?;
    let body = resp.body;
    let unpack_dir = tmp.clone();
    tokio::task::spawn_blocking(move || {
        tar::Archive::new(flate2::read::GzDecoder::new(&body[..])).unpack(&unpack_dir)
    })
    .await
    .map_err(|e| OrchestratorError::Download(e.to_string()))?
    .map_err(|e| OrchestratorError::Download(format!("unpacking {url}: {e}")))?;
    if !is_executable(&tmp.join("code")) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(OrchestratorError::Download(format!(
            "{url} did not contain an executable `code`"
        )));
    }
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&tmp, &dir).map_err(OrchestratorError::io(format!(
        "installing {}",
        dir.display()
    )))?;
    Ok(bin)
}

/// How long a downloaded CLI may take to arrive.
pub const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(300);
