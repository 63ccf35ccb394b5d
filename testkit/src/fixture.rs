//! The usual setting of a test: a server running `vod-upstream` as its instances, without a
//! sandbox, in a fresh temporary directory, with the file that counts instance starts, and
//! polling until something holds.

use crate::{bins, Server};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The command template that runs `vod-upstream` as an instance on its Unix socket, recording
/// each start in `starts` and delaying its readiness by `delay_ms`.
pub fn upstream_command(starts: &Path, delay_ms: u64) -> String {
    format!(
        "{} --socket {{socket}} --workspace {{workspace}} --starts-file {} --startup-delay-ms {delay_ms}",
        bins::upstream(),
        starts.display()
    )
}

/// Server arguments that run `vod-upstream` instances without a sandbox: the suites that use
/// them count starts in a file outside the data directory and follow instance processes by
/// their PIDs, neither of which a sandbox lets through; `tests/sandbox.rs` covers the sandbox.
pub fn unsandboxed(cmd: &str) -> Vec<&str> {
    vec![
        "--runtime",
        "command",
        "--command",
        cmd,
        "--sandbox",
        "none",
    ]
}

/// A Python instance script that accepts connections on the port given as its first argument
/// and calls `serve(c, n)`, which `serve` defines (with its imports of `socket`, `sys` and
/// `threading`, and `count = 0`), on a thread for each accepted connection `c`, the `n`th:
/// an instance that speaks raw HTTP/1.1 however a test needs it to.
pub fn python_socket_instance(serve: &str) -> String {
    format!(
        "{serve}s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('127.0.0.1', int(sys.argv[1])))
s.listen(64)
while True:
    c, _ = s.accept()
    count += 1
    threading.Thread(target=serve, args=(c, count), daemon=True).start()
"
    )
}

/// A server, in `dir`, whose instances run the Python `script` (given the port to listen on as
/// its argument) unsandboxed, with `args` added: an instance that misbehaves in a chosen way.
pub fn python_instances(dir: &Path, script: &str, args: &[&str]) -> Server {
    let path = dir.join("instance.py");
    std::fs::write(&path, script).unwrap();
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let cmd = format!("python3 {} {{port}}", path.display());
    let mut all = unsandboxed(&cmd);
    all.extend_from_slice(args);
    Server::start(&data, &all)
}

/// Lines in a starts file: how many times an instance process was started.
pub fn starts(path: &Path) -> Vec<i32> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

pub async fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A temporary directory that is removed when dropped.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("vod-test")
        .tempdir()
        .unwrap()
}

/// A server running `vod-upstream` instances, in a fresh data directory.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub starts: PathBuf,
    pub server: Server,
}

impl Fixture {
    pub fn new(delay_ms: u64, args: &[&str]) -> Fixture {
        let dir = tempdir();
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        let starts = dir.path().join("starts");
        let cmd = upstream_command(&starts, delay_ms);
        let mut all = unsandboxed(&cmd);
        all.extend_from_slice(args);
        let server = Server::start(&data, &all);
        Fixture {
            dir,
            starts,
            server,
        }
    }

    pub fn restart(&mut self, args: &[&str]) {
        self.server.terminate();
        let cmd = upstream_command(&self.starts, 0);
        let mut all = unsandboxed(&cmd);
        all.extend_from_slice(args);
        self.server = Server::start(&self.server.data_dir.clone(), &all);
    }
}
