//! Where the binaries that the tests run are: the product, `vscode-on-demand`, and the kit's
//! `vod-upstream` and `vod-kubelet`, all in the build directory of the running test, the
//! parent of its `deps/` (`target/<profile>/`).
//!
//! Cargo builds a package's own binaries before its integration tests but not those of the
//! packages it depends on, so the kit's binaries are looked up rather than named at compile
//! time, and a missing one fails with the command that builds it.

use std::path::PathBuf;
use std::sync::OnceLock;

/// What builds every binary the tests need.
pub const BUILD_COMMAND: &str = "cargo build --workspace --all-targets";

/// The product's binary.
pub fn product() -> &'static str {
    static PATH: OnceLock<String> = OnceLock::new();
    PATH.get_or_init(|| locate("vscode-on-demand"))
}

/// `vod-upstream`, the HTTP/WebSocket server the tests run as an instance.
pub fn upstream() -> &'static str {
    static PATH: OnceLock<String> = OnceLock::new();
    PATH.get_or_init(|| locate("vod-upstream"))
}

/// `vod-kubelet`, which runs the pods of the test control plane as local processes.
pub fn kubelet() -> &'static str {
    static PATH: OnceLock<String> = OnceLock::new();
    PATH.get_or_init(|| locate("vod-kubelet"))
}

/// The build directory: a test runs from `target/<profile>/deps/`, a binary from
/// `target/<profile>/`.
pub fn build_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the running executable has a path");
    let dir = exe.parent().expect("an executable lives in a directory");
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().unwrap_or(dir).to_owned()
    } else {
        dir.to_owned()
    }
}

fn locate(name: &str) -> String {
    let path = build_dir().join(name);
    assert!(
        path.is_file(),
        "{name} is not built: {} does not exist; run `{BUILD_COMMAND}` (scripts/test.sh does) \
         with the same profile and target directory as the tests",
        path.display()
    );
    path.into_os_string()
        .into_string()
        .unwrap_or_else(|p| panic!("the build directory is not UTF-8: {p:?}"))
}

/// The cache that `scripts/install-test-deps.sh` and `scripts/kube-testenv.sh` fill (code-server,
/// playwright-core, the control plane's binaries): `$VOD_CACHE`, else
/// `~/.cache/vscode-on-demand`, as in those scripts.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("VOD_CACHE").map_or_else(
        || {
            PathBuf::from(std::env::var_os("HOME").expect("HOME is set"))
                .join(".cache/vscode-on-demand")
        },
        PathBuf::from,
    )
}
