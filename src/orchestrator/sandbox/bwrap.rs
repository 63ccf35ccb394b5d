//! bwrap's command line for one instance: which host directories it sees where, in the order
//! that makes the hidden ones stay hidden.

use super::{Jail, CONFIG, SOCKET_DIR, WORKSPACE};
use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};

/// Read-only system directories every sandbox sees (those that exist; a symlink such as
/// `/bin -> usr/bin` is recreated as one).
const SYSTEM_DIRS: &[&str] = &[
    "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/opt",
];

/// bwrap's options for one instance; mounts apply in order, so later ones cover earlier ones.
pub(super) fn args(jail: &Jail<'_>) -> Vec<OsString> {
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
        crate::orchestrator::runtime::find_on_path(program.to_str()?)
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
        let args = text(&args(&jail(&program, &hidden)));
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
        let args = text(&args(&jail(&program, &hidden)));
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
