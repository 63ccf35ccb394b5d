//! The project's container image, as `scripts/image-testenv.sh` builds it from the Dockerfile
//! with podman: its name, and the proxy run from it as a container that the harness talks to
//! like any [`Server`].

use crate::Server;
use std::os::unix::fs::chown;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

/// What builds the image and prints its name.
pub const BUILD_COMMAND: &str = "scripts/image-testenv.sh build";

/// The user the Dockerfile runs the binary as (distroless's `nonroot`).
pub const IMAGE_UID: u32 = 65532;

/// The image under test: `$VOD_TEST_IMAGE` (set by the build script's output), else the name
/// that script gives it; checked to exist so a missing build fails with what makes it.
pub fn image() -> String {
    built("VOD_TEST_IMAGE", "localhost/vscode-on-demand:test")
}

/// The code-server base image the build script makes for instance pods (code-server on PATH,
/// as in the widely used code-server images): `$VOD_TEST_CODE_SERVER_IMAGE`, else its name.
pub fn code_server_image() -> String {
    built(
        "VOD_TEST_CODE_SERVER_IMAGE",
        "localhost/vod-code-server:test",
    )
}

/// The image named by `$var`, else `default`, once podman is known to have it.
fn built(var: &str, default: &str) -> String {
    let name = std::env::var(var).unwrap_or_else(|_| default.to_owned());
    let out = Command::new("podman")
        .args(["image", "exists", &name])
        .status()
        .unwrap_or_else(|e| panic!("podman is not installed ({e}); run `{BUILD_COMMAND}`"));
    assert!(
        out.success(),
        "image {name} is not built; run `eval \"$({BUILD_COMMAND})\"` (scripts/test.sh does)"
    );
    name
}

/// `podman` with `args`, its stdout on success; a failure panics with its stderr.
pub fn podman(args: &[&str]) -> String {
    let out = Command::new("podman")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run podman");
    assert!(
        out.status.success(),
        "podman {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// `serve` in a container of the image, on the host's network (listening on a loopback port
/// it picks), its data directory `data_dir` mounted at `/data`; removed when dropped.
pub struct Container {
    pub name: String,
    pub server: Server,
}

impl Container {
    pub fn serve(image: &str, data_dir: &Path, args: &[&str]) -> Container {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "vod-test-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        // The image's user must be able to write its data directory.
        chown(data_dir, Some(IMAGE_UID), Some(IMAGE_UID)).expect("chown the data directory");
        let mut cmd = Command::new("podman");
        cmd.args(["run", "--rm", "--name", &name, "--network", "host"])
            .arg("--volume")
            .arg(format!("{}:/data", data_dir.display()))
            .args(["--env", "VOD_LOG=info,vscode_on_demand=debug", image])
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir", "/data"])
            .args(args)
            .stdin(Stdio::null());
        let server = Server::spawn(cmd, data_dir, &data_dir.join("certs"));
        Container { name, server }
    }

    /// The host PID of the container's first process (the binary).
    pub fn pid(&self) -> i32 {
        podman(&["inspect", "--format", "{{.State.Pid}}", &self.name])
            .parse()
            .expect("a PID")
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        // Then the server's own drop reaps `podman run`, which exits with the container.
        let _ = Command::new("podman")
            .args(["rm", "--force", "--time", "10", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
