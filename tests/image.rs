//! The project's container image, built from the Dockerfile by `scripts/image-testenv.sh`: the
//! proxy run from it serves TLS with the certificate it generated, as the user the Dockerfile
//! names, without capabilities.

use http::{Method, StatusCode};
use vod_testkit::image::{image, podman, Container, IMAGE_UID};
use vod_testkit::*;

/// `Uid:`/`Gid:`/`CapEff:` of a process as the host sees it.
fn status_field(pid: i32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

#[tokio::test]
async fn the_image_serves_the_api_over_tls_as_a_non_root_user() {
    let image = image();
    assert_eq!(
        podman(&["image", "inspect", "--format", "{{.Config.User}}", &image]),
        format!("{IMAGE_UID}:{IMAGE_UID}")
    );
    let dir = tempdir();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let c = Container::serve(&image, &data, &["--backend", "local", "--sandbox", "none"]);

    // Health over TLS, trusting only the CA the server generated in its data directory.
    let (status, body) = c.server.api(Method::GET, "/api/health", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // An API call with the token it wrote there works; one without is refused.
    let (status, body) = c.server.api(Method::GET, "/api/instances", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let req = c
        .server
        .request(Method::GET, "/api/instances")
        .body(Default::default())
        .unwrap();
    assert_eq!(c.server.send(req).await.status(), StatusCode::UNAUTHORIZED);

    let pid = c.pid();
    let ids = format!("{IMAGE_UID} {IMAGE_UID} {IMAGE_UID} {IMAGE_UID}");
    assert_eq!(
        status_field(pid, "Uid:"),
        ids,
        "real, effective, saved, fs uid"
    );
    assert_eq!(status_field(pid, "Gid:"), ids);
    assert_eq!(status_field(pid, "CapEff:"), "0000000000000000");
    // What it wrote in its data directory is the image user's.
    let meta = std::fs::metadata(data.join("admin-token")).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), IMAGE_UID);
}
