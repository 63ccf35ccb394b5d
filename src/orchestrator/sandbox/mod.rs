//! How a local instance's process is confined: the bubblewrap (`bwrap`) command line, the probe
//! that decides at start-up whether bwrap works on this machine, and the environment an
//! instance starts with.
//!
//! Inside its sandbox an instance sees the system directories read-only, the directory of its
//! runtime program read-only, its own config directory at [`CONFIG`], its user's workspace at
//! [`WORKSPACE`] and its socket directory at [`SOCKET_DIR`] (the only writable places besides a
//! private `/tmp`); nothing of the data or certificate directory, no other workspace and no
//! home directory. It has its own PID namespace (a stop ends everything it started, `setsid`
//! included), no capabilities and a cleared environment. The network is shared: VS Code needs
//! it for extensions, and the instance's own listener is a Unix socket the others cannot see.

mod bwrap;

use super::{OrchestratorError, Result};
use std::path::{Path, PathBuf};

/// Where the user's workspace is inside the sandbox, as in instance pods.
pub const WORKSPACE: &str = "/workspaces";
/// Where the instance's config directory is inside the sandbox.
pub const CONFIG: &str = "/vscode";
/// Where the instance's socket directory is inside the sandbox.
pub const SOCKET_DIR: &str = "/run/vod";
/// The socket's name in its directory, inside and outside.
pub const SOCKET_NAME: &str = "vscode.sock";
/// The variable in the environment of the process this server starts (bwrap itself, or the
/// instance without a sandbox) that names the instance, so cleanup after a crash kills a
/// process group only if its leader is still ours.
pub const MARKER: &str = "VOD_INSTANCE_ID";

/// The `--sandbox` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SandboxMode {
    /// bwrap when it works here, else unsandboxed with a warning.
    Auto,
    /// bwrap, or refuse to start.
    Bwrap,
    /// No sandbox: instances run as this server's user and see what it sees (the environment
    /// is still cleared).
    None,
}

/// The sandbox this server runs instances in, decided once at start-up.
#[derive(Debug, Clone)]
pub struct Sandbox {
    bwrap: Option<PathBuf>,
    summary: String,
}

/// One instance's process: what to run and the host directories it gets.
pub struct Jail<'a> {
    pub instance_id: &'a str,
    pub program: &'a Path,
    pub args: &'a [String],
    pub workspace: &'a Path,
    pub config_dir: &'a Path,
    pub socket_dir: &'a Path,
    /// Host directories that must stay invisible even where a bound directory contains them
    /// (the data and certificate directories).
    pub hidden: &'a [PathBuf],
    /// The instance's whole environment.
    pub env: &'a [(String, String)],
}

impl Sandbox {
    /// Decides how instances run: probes bwrap once (with the namespaces and mounts instances
    /// get), so a machine where it cannot work is known now rather than at the first start.
    pub fn resolve(mode: SandboxMode) -> Result<Self> {
        if mode == SandboxMode::None {
            return Ok(Self::none(
                "none (--sandbox none): instances are not isolated".into(),
            ));
        }
        match probe() {
            Ok(bwrap) => Ok(Self {
                summary: format!(
                    "bubblewrap ({}): each instance in its own namespaces, seeing only its \
                     workspace and config",
                    bwrap.display()
                ),
                bwrap: Some(bwrap),
            }),
            Err(why) if mode == SandboxMode::Bwrap => Err(OrchestratorError::Sandbox(format!(
                "--sandbox bwrap: {why}; install the `bubblewrap` package (apt-get install \
                 bubblewrap) or choose --sandbox none"
            ))),
            Err(why) => {
                tracing::warn!(
                    reason = %why,
                    "instances run WITHOUT a sandbox: each can read this server's files and \
                     reach the others; install the `bubblewrap` package to isolate them"
                );
                Ok(Self::none(format!(
                    "NONE: {why}; instances are not isolated (install `bubblewrap`)"
                )))
            }
        }
    }

    fn none(summary: String) -> Self {
        Self {
            bwrap: None,
            summary,
        }
    }

    pub fn is_on(&self) -> bool {
        self.bwrap.is_some()
    }

    /// One line for the start-up banner.
    pub fn summary(&self) -> &str {
        &self.summary
    }

    /// A path as the instance sees it: the fixed sandbox path, or the host path without one.
    pub fn inside(&self, host: &Path, sandboxed: &str) -> PathBuf {
        if self.is_on() {
            PathBuf::from(sandboxed)
        } else {
            host.to_owned()
        }
    }

    /// The command that runs the instance, sandboxed or not, with only the environment given.
    pub fn command(&self, jail: &Jail<'_>) -> tokio::process::Command {
        let mut cmd;
        match &self.bwrap {
            Some(bwrap) => {
                cmd = tokio::process::Command::new(bwrap);
                cmd.args(bwrap::args(jail)).arg("--").arg(jail.program);
            }
            None => {
                cmd = tokio::process::Command::new(jail.program);
                cmd.current_dir(jail.workspace);
            }
        }
        // With bwrap, the instance's environment is set by bwrap (after --clearenv) and bwrap's
        // own holds only the marker; without, the marker sits beside the instance's variables.
        cmd.args(jail.args)
            .env_clear()
            .env(MARKER, jail.instance_id);
        if !self.is_on() {
            cmd.envs(jail.env.iter().map(|(k, v)| (k, v)));
        }
        cmd
    }

    /// The processes running the instance's program and everything it started: with bwrap,
    /// every descendant of the sandbox's init (the child of the process this server started);
    /// without, the descendants of that process and itself.
    pub fn program_processes(&self, leader: i32) -> Vec<i32> {
        if !self.is_on() {
            let mut all = vec![leader];
            all.extend(descendants(leader));
            return all;
        }
        children(leader)
            .first()
            .map_or_else(Vec::new, |init| descendants(*init))
    }
}

/// A process's children, from every one of its threads.
fn children(pid: i32) -> Vec<i32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|c| {
            c.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<i32>>()
        })
        .collect()
}

fn descendants(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let mut next = children(pid);
    while let Some(p) = next.pop() {
        next.extend(children(p));
        out.push(p);
    }
    out
}

/// Finds bwrap on PATH and runs it once the way instances use it.
fn probe() -> std::result::Result<PathBuf, String> {
    let bwrap = super::runtime::find_on_path("bwrap").ok_or("bwrap is not on PATH")?;
    let out = std::process::Command::new(&bwrap)
        .args([
            "--unshare-pid",
            "--unshare-ipc",
            "--die-with-parent",
            "--new-session",
        ])
        .args(["--cap-drop", "ALL", "--ro-bind", "/", "/"])
        .args([
            "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--", "true",
        ])
        .env_clear()
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", bwrap.display()))?;
    if out.status.success() {
        Ok(bwrap)
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        Err(format!(
            "{} does not work here ({}: {})",
            bwrap.display(),
            out.status,
            err.trim()
        ))
    }
}

/// The instance's whole environment: nothing of this server's but `PATH`, the locale, the time
/// zone and the shell; its home and XDG directories inside its config directory (`config`, as
/// the instance sees it); `PORT` when it listens on one.
pub fn instance_env(config: &Path, port: u16) -> Vec<(String, String)> {
    let dir = |sub: &str| config.join(sub).display().to_string();
    let mut env = vec![
        ("HOME".to_owned(), dir("home")),
        ("XDG_CONFIG_HOME".to_owned(), dir("xdg-config")),
        ("XDG_DATA_HOME".to_owned(), dir("xdg-data")),
        ("XDG_CACHE_HOME".to_owned(), dir("xdg-cache")),
        ("TMPDIR".to_owned(), "/tmp".to_owned()),
    ];
    let path = std::env::var("PATH")
        .unwrap_or_else(|_| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    env.push(("PATH".to_owned(), path));
    let lang = std::env::var("LANG").unwrap_or_else(|_| "C.UTF-8".into());
    env.push(("LANG".to_owned(), lang));
    for name in ["TZ", "SHELL"] {
        if let Ok(v) = std::env::var(name) {
            env.push((name.to_owned(), v));
        }
    }
    if port != 0 {
        env.push(("PORT".to_owned(), port.to_string()));
    }
    env
}
