//! The product under test: `vscode-on-demand serve` on port 0 with a data directory of the
//! test's, its address and admin token read back, how it routes instances (by host or by
//! path), and its end (SIGTERM with a clean exit, or SIGKILL).

use crate::process::{self, log_tail, stop_child};
use crate::{bins, tls::client_tls};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

/// A running server and how to reach it; stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    pub base: String,
    pub host: String,
    pub data_dir: PathBuf,
    pub token: String,
    pub tls: Arc<rustls::ClientConfig>,
    pub stdout: Vec<String>,
    /// Each instance on its own origin, `<id>.localhost:<port>` (the default on localhost).
    pub host_routing: bool,
}

impl Server {
    /// Starts `serve` with `args` (plus listen/data-dir), waiting until it prints its address.
    pub fn start(data_dir: &Path, args: &[&str]) -> Server {
        Self::start_with_env(data_dir, args, &[])
    }

    pub fn start_with_env(data_dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut cmd = Command::new(bins::product());
        cmd.arg("serve")
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .args(args)
            .env("VOD_LOG", "info,vscode_on_demand=debug")
            .envs(env.iter().copied());
        let cert_dir = args
            .iter()
            .position(|a| *a == "--cert-dir")
            .and_then(|i| args.get(i + 1))
            .map_or_else(|| data_dir.join("certs"), PathBuf::from);
        Self::spawn(cmd, data_dir, &cert_dir)
    }

    /// Runs `cmd`, a `serve` that listens on `127.0.0.1:0` with its data in `data_dir` as this
    /// process sees it (the product itself, or a container of its image), and waits for its
    /// banner. Its stderr goes to `<data_dir>.server.log`.
    pub fn spawn(mut cmd: Command, data_dir: &Path, cert_dir: &Path) -> Server {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(data_dir.with_extension("server.log"))
                    .unwrap(),
            ))
            .spawn()
            .unwrap_or_else(|e| panic!("run {:?}: {e}", cmd.get_program()));
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut stdout = Vec::new();
        let addr: SocketAddr = loop {
            let line = lines
                .next()
                .unwrap_or_else(|| {
                    panic!(
                        "server exited early; stdout: {stdout:?}; its log ends:\n{}",
                        log_tail(&data_dir.with_extension("server.log"), 30)
                    )
                })
                .unwrap();
            stdout.push(line.clone());
            if let Some(rest) = line.split("listening on ").nth(1) {
                break rest.trim_end_matches(')').parse().unwrap();
            }
        };
        // The banner ends with its "Try:" line.
        for l in lines.by_ref().map_while(Result::ok) {
            let last = l.trim_start().starts_with("Try:");
            stdout.push(l);
            if last {
                break;
            }
        }
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        let token = std::fs::read_to_string(data_dir.join("admin-token"))
            .map(|s| s.trim().to_owned())
            .unwrap_or_default();
        let tls = client_tls(&cert_dir.join("ca.crt"));
        let host_routing = stdout.iter().any(|l| l.contains("Routing:    host"));
        Server {
            child,
            addr,
            base: format!("https://localhost:{}", addr.port()),
            host: format!("localhost:{}", addr.port()),
            data_dir: data_dir.to_owned(),
            token,
            tls,
            stdout,
            host_routing,
        }
    }

    /// The host serving `path`: an instance's own host for its paths in host routing, else
    /// the public one.
    pub fn host_for(&self, path: &str) -> String {
        // An absolute URI (HTTP/2 requests) names its path after the authority.
        let path = path
            .strip_prefix("https://")
            .map_or(path, |r| r.find('/').map_or("", |i| &r[i..]));
        let id = path
            .strip_prefix("/instances/")
            .and_then(|r| r.split(['/', '?']).next())
            .filter(|id| !id.is_empty());
        match id {
            Some(id) if self.host_routing => format!("{id}.{}", self.host),
            _ => self.host.clone(),
        }
    }

    /// The origin an instance's pages have.
    pub fn origin_of(&self, id: &str) -> String {
        format!("https://{}", self.host_for(&format!("/instances/{id}/")))
    }

    /// The `Cookie` header value carrying an instance token, as the browser would send it.
    pub fn cookie(&self, token: &str) -> String {
        let name = if self.host_routing {
            "__Host-vod_tkn"
        } else {
            "__Secure-vod_tkn"
        };
        format!("{name}={token}")
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Runs a client subcommand of the product against this server (it finds the server and
    /// the API token through the data directory) and returns what it printed.
    pub fn client(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new(crate::product())
            .args(args)
            .args(["--data-dir", self.data_dir.to_str().unwrap()])
            .output()
            .unwrap()
    }

    /// Sends SIGTERM and returns at once (the server drains meanwhile).
    pub fn sigterm(&self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid()),
            nix::sys::signal::Signal::SIGTERM,
        );
    }

    /// SIGTERM, then waits for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        process::terminate(&mut self.child, Duration::from_secs(20)).unwrap_or_else(|| {
            panic!(
                "server did not exit after SIGTERM; its log ends:\n{}",
                log_tail(&self.data_dir.with_extension("server.log"), 30)
            )
        })
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        stop_child(&mut self.child, Duration::from_secs(15));
    }
}
