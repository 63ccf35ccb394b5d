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

use super::{OrchestratorError, Result};
use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};

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

/// Read-only system directories every sandbox sees (those that exist; a symlink such as
/// `/bin -> usr/bin` is recreated as one).
const SYSTEM_DIRS: &[&str] = &[
    "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/opt",
];

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
                cmd.args(bwrap_args(jail)).arg("--").arg(jail.program);
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

    /// The process running the instance's program: with bwrap, the grandchild of the process
    /// this server started (bwrap, then the sandbox's init); without, that process itself.
    pub fn main_process(&self, leader: i32) -> Option<i32> {
        if !self.is_on() {
            return Some(leader);
        }
        let init = first_child(leader)?;
        first_child(init)
    }
}

fn first_child(pid: i32) -> Option<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
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

/// bwrap's options for one instance; mounts apply in order, so later ones cover earlier ones.
fn bwrap_args(jail: &Jail<'_>) -> Vec<OsString> {
    let mut a = Args::default();
    a.flags(&[
        "--unshare-pid",
        "--unshare-ipc",
        "--die-with-parent",
        "--new-session",
        "--cap-drop",
        "ALL",
        "--clearenv",
    ]);
    for (k, v) in jail.env {
        a.flags(&["--setenv", k, v]);
    }
    a.flags(&["--tmpfs", "/tmp", "--proc", "/proc", "--dev", "/dev"]);
    let mut visible: Vec<PathBuf> = Vec::new();
    for dir in SYSTEM_DIRS {
        let dir = Path::new(dir);
        match std::fs::symlink_metadata(dir) {
            Ok(m) if m.file_type().is_symlink() => {
                if let Ok(target) = std::fs::read_link(dir) {
                    a.paths("--symlink", &target, dir);
                }
            }
            Ok(_) => {
                a.paths("--ro-bind", dir, dir);
                visible.push(dir.to_owned());
            }
            Err(_) => {}
        }
    }
    // A resolv.conf linked to somewhere else (systemd-resolved) needs its target.
    if let Ok(target) = Path::new("/etc/resolv.conf").canonicalize() {
        if !visible.iter().any(|v| target.starts_with(v)) {
            a.paths("--ro-bind", &target, &target);
            visible.push(target);
        }
    }
    let roots = runtime_roots(jail.program);
    for root in &roots {
        a.paths("--ro-bind", root, root);
        visible.push(root.clone());
    }
    let mut hidden = Vec::new();
    for h in jail.hidden {
        if visible.iter().any(|v| h.starts_with(v)) {
            a.flags(&["--tmpfs"]);
            a.0.push(h.into());
            hidden.push(h);
        }
    }
    // A runtime kept inside a hidden directory (a VS Code CLI downloaded into the data
    // directory's cache) comes back on its own.
    for root in &roots {
        if hidden.iter().any(|h| root.starts_with(h)) {
            a.paths("--ro-bind", root, root);
        }
    }
    a.paths("--bind", jail.config_dir, Path::new(CONFIG));
    a.paths("--bind", jail.workspace, Path::new(WORKSPACE));
    a.paths("--bind", jail.socket_dir, Path::new(SOCKET_DIR));
    a.flags(&["--chdir", WORKSPACE]);
    a.0
}

#[derive(Default)]
struct Args(Vec<OsString>);

impl Args {
    fn flags(&mut self, f: &[&str]) {
        self.0.extend(f.iter().map(OsString::from));
    }

    fn paths(&mut self, op: &str, src: &Path, dest: &Path) {
        self.0.push(op.into());
        self.0.push(src.into());
        self.0.push(dest.into());
    }
}

/// The directories the program needs to be visible: the one holding both the path it is run
/// by and the file that path leads to (an npm `.bin` link and its package, an install tree
/// and the link to it), or each separately when they only share `/`.
fn runtime_roots(program: &Path) -> Vec<PathBuf> {
    let Some(program) = absolute_program(program) else {
        return Vec::new();
    };
    let real = program.canonicalize().unwrap_or_else(|_| program.clone());
    let (Some(a), Some(b)) = (program.parent(), real.parent()) else {
        return Vec::new();
    };
    let common: PathBuf = a
        .components()
        .zip(b.components())
        .take_while(|(x, y)| x == y)
        .map(|(x, _)| x)
        .collect();
    let candidates = if common
        .components()
        .any(|c| matches!(c, Component::Normal(_)))
    {
        vec![common]
    } else {
        vec![a.to_owned(), b.to_owned()]
    };
    candidates
        .into_iter()
        .filter(|c| c.components().any(|c| matches!(c, Component::Normal(_))))
        .collect()
}

fn absolute_program(program: &Path) -> Option<PathBuf> {
    if program.is_absolute() {
        Some(program.to_owned())
    } else if program.components().count() == 1 {
        super::runtime::find_on_path(program.to_str()?)
    } else {
        std::env::current_dir().ok().map(|d| d.join(program))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jail<'a>(program: &'a Path, hidden: &'a [PathBuf]) -> Jail<'a> {
        Jail {
            instance_id: "alice-0000000a",
            program,
            args: &[],
            workspace: Path::new("/data/workspaces/alice"),
            config_dir: Path::new("/data/instances/alice-0000000a/config"),
            socket_dir: Path::new("/data/sockets/alice-0000000a"),
            hidden,
            env: &[],
        }
    }

    fn text(args: &[OsString]) -> String {
        args.iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn a_runtime_inside_a_hidden_directory_is_bound_after_hiding_it() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let cli = data.join("cache/vscode-cli/1.0.0");
        std::fs::create_dir_all(&cli).unwrap();
        std::fs::write(cli.join("code"), "").unwrap();
        // The program's directory is inside the data directory, inside the bound root.
        let program = cli.join("code");
        let hidden = [data.clone()];
        let args = text(&bwrap_args(&jail(&program, &hidden)));
        let cli = cli.display().to_string();
        let bind = format!("--ro-bind {cli} {cli}");
        assert!(args.contains(&bind), "{args}");
        // The data dir is not under a visible root here (only the CLI's own directory is),
        // so there is nothing to hide.
        assert!(
            !args.contains(&format!("--tmpfs {}", data.display())),
            "{args}"
        );
    }

    #[test]
    fn a_data_directory_inside_the_runtime_root_is_hidden() {
        let dir = tempfile::tempdir().unwrap();
        let program = dir.path().join("tool");
        std::fs::write(&program, "").unwrap();
        let data = dir.path().join("data");
        let hidden = [data.clone()];
        let args = text(&bwrap_args(&jail(&program, &hidden)));
        let root = dir.path().display().to_string();
        let bind = args.find(&format!("--ro-bind {root} {root}")).unwrap();
        let hide = args.find(&format!("--tmpfs {}", data.display())).unwrap();
        assert!(
            bind < hide,
            "hidden after the bind that contains it: {args}"
        );
        let ws = args.find("/workspaces").unwrap();
        assert!(hide < ws, "own directories come last: {args}");
    }

    #[test]
    fn an_npm_link_binds_the_whole_package_tree() {
        let dir = tempfile::tempdir().unwrap();
        let nm = dir.path().join("node_modules");
        std::fs::create_dir_all(nm.join(".bin")).unwrap();
        std::fs::create_dir_all(nm.join("code-server/out/node")).unwrap();
        std::fs::write(nm.join("code-server/out/node/entry.js"), "").unwrap();
        std::os::unix::fs::symlink(
            "../code-server/out/node/entry.js",
            nm.join(".bin/code-server"),
        )
        .unwrap();
        let nm = nm.canonicalize().unwrap();
        assert_eq!(runtime_roots(&nm.join(".bin/code-server")), vec![nm]);
    }
}
