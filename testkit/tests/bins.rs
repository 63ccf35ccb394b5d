//! The kit's binaries run, and the library finds them where Cargo put them. Being an
//! integration test of this package, it also has Cargo build both binaries whenever the
//! workspace's tests are built.

use std::process::Command;

fn help(bin: &str) -> String {
    let out = Command::new(bin)
        .arg("--help")
        .output()
        .expect("run the binary");
    assert!(out.status.success(), "{bin} --help: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_library_finds_the_binaries_cargo_built() {
    assert_eq!(vod_testkit::upstream(), env!("CARGO_BIN_EXE_vod-upstream"));
    assert_eq!(vod_testkit::kubelet(), env!("CARGO_BIN_EXE_vod-kubelet"));
}

#[test]
fn the_binaries_run() {
    assert!(help(env!("CARGO_BIN_EXE_vod-upstream")).contains("WebSocket"));
    assert!(help(env!("CARGO_BIN_EXE_vod-kubelet")).contains("kubelet"));
}
