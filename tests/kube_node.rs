//! A real kubelet and container runtime: containerd and the kubelet of the test control
//! plane's Kubernetes source ([`vod_testkit::node`]) run a pod of the project's image, built
//! from the Dockerfile by `scripts/image-testenv.sh`; the kubelet's own HTTPS readiness probe
//! reaches its `/api/health` on the pod network. And an instance's whole life on that node,
//! with the image as its init container.

use http::{Method, StatusCode};
use serde_json::json;
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use vod_testkit::image::image;
use vod_testkit::kube::{delete_keeping_workspace, kube_mode, ControlPlane};
use vod_testkit::node::Node;
use vod_testkit::vscode_cli::{container_cli_tarball, update_service_on};
use vod_testkit::*;

/// One node at a time: the kubelets of two would share `/var/log/pods`, whose stale
/// entries each collects.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[test]
fn a_real_kubelet_runs_the_project_image_as_a_pod() {
    let _turn = TURN.blocking_lock();
    let image = image();
    let dir = tempdir();
    let cp = ControlPlane::start(&dir.path().join("cp"));
    let node = Node::start(&cp, &dir.path().join("node"), &[&image]);
    let pod = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "proxy", "namespace": "default"},
        "spec": {
            "nodeName": node.name,
            "automountServiceAccountToken": false,
            "securityContext": {"runAsNonRoot": true, "fsGroup": 65532},
            "containers": [{
                "name": "proxy", "image": image, "imagePullPolicy": "Never",
                "args": ["serve", "--backend", "local", "--sandbox", "none",
                         "--listen", "0.0.0.0:8443", "--data-dir", "/data/vod"],
                "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                "securityContext": {"allowPrivilegeEscalation": false,
                                    "capabilities": {"drop": ["ALL"]}},
                "readinessProbe": {"httpGet": {"path": "/api/health", "port": 8443,
                                               "scheme": "HTTPS"},
                                   "periodSeconds": 1},
            }],
            "volumes": [{"name": "data", "emptyDir": {}}],
        },
    });
    let file = dir.path().join("pod.json");
    std::fs::write(&file, pod.to_string()).unwrap();
    cp.ok(&["apply", "-f", &file.to_string_lossy()]);
    node.wait("the pod to be Ready", || {
        let restarts = cp.ok(&[
            "-n",
            "default",
            "get",
            "pod",
            "proxy",
            "-o",
            "jsonpath={.status.containerStatuses[0].restartCount}",
        ]);
        if !matches!(restarts.trim(), "" | "0") {
            panic!(
                "the container exited; its output:\n{}",
                node.container_logs("default", "proxy")
            );
        }
        cp.kubectl(&[
            "-n",
            "default",
            "get",
            "pod",
            "proxy",
            "-o",
            r#"jsonpath={.status.conditions[?(@.type=="Ready")].status}"#,
        ])
        .stdout
            == b"True"
    });
    // The API server reaches the kubelet: logs through the API.
    let logs = cp.ok(&["-n", "default", "logs", "proxy"]);
    assert!(logs.contains("listening on"), "{logs}");
    let ip = cp.ok(&[
        "-n",
        "default",
        "get",
        "pod",
        "proxy",
        "-o",
        "jsonpath={.status.podIP}",
    ]);
    let prefix = node.subnet.trim_end_matches("0/24");
    assert!(ip.starts_with(prefix), "pod IP {ip} not on {}", node.subnet);
}

/// A `serve-web` instance on the real node, the way `tests/kube.rs` runs one on the stand-in:
/// the init container from the project's image downloads the VS Code CLI (the stand-in CLI,
/// which serves with `vod-upstream`) from an update service on the node's bridge into the
/// config volume; the main container runs it from a Debian base image as the configured
/// non-root uid; the first request through the proxy starts it, idleness scales it to zero, a
/// request wakes it with the CLI kept on the config volume, and delete keeps the workspace.
#[tokio::test(flavor = "multi_thread")]
async fn a_serve_web_instance_lives_on_the_real_node() {
    let _turn = TURN.lock().await;
    const NS: &str = "vod-node";
    const INS: &str = "vod-node-instances";
    const USER: &str = "nodeuser";
    const UID: u32 = 2345;
    // bookworm minbase, which scripts/image-testenv.sh makes for the Dockerfile's runtime stage.
    const BASE: &str = "gcr.io/distroless/cc-debian12:nonroot";
    let installer = image();
    let tmp = tempdir();
    let (cp, _, sa_kc) = kube::cluster(tmp.path(), NS, INS);
    cp.start_scheduler();
    let node = Node::start(&cp, &tmp.path().join("node"), &[&installer, BASE]);
    let claim = format!("vsc-ws-{USER}");
    let workspace = node.host_path_volume(&cp, "workspace", Some((INS, &claim)));
    node.host_path_volume(&cp, "config", None);
    let downloads = Arc::new(AtomicUsize::new(0));
    let url = update_service_on(
        &node.gateway(),
        container_cli_tarball(tmp.path()),
        downloads.clone(),
    )
    .await;
    let data = tmp.path().join("proxy");
    std::fs::create_dir_all(&data).unwrap();
    let uid = UID.to_string();
    let mut args = kube_mode(&sa_kc, NS, INS);
    args.extend([
        "--installer-image",
        &installer,
        "--vscode-download-url",
        &url,
        "--instance-uid",
        &uid,
        "--start-timeout",
        "120s",
        "--reap-interval",
        "1s",
    ]);
    let a = Server::start(&data, &args);
    let c = a
        .create(json!({ "user_id": USER, "base_image": BASE, "idle_timeout": 5 }))
        .await;
    let name = format!("vsc-{}", c.id);
    let failed = |what: &str| {
        format!(
            "{what}\nserver log:\n{}\nnode:\n{}\n{}",
            log_tail(&data.with_extension("server.log"), 30),
            log_tail(&node.dir.join("kubelet.log"), 30),
            node.container_logs(INS, "vsc-")
        )
    };

    let r = a.fetch(&c, Method::GET, "/small", "").await;
    assert_eq!(
        r.status(),
        StatusCode::OK,
        "{}",
        failed("the first request")
    );
    assert_eq!(body_text(r).await, "hello");
    let r = a
        .fetch(&c, Method::PUT, "/workspace-file?name=k.txt", "persisted")
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let meta = std::fs::metadata(workspace.join("k.txt")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (UID, UID), "owner of the file");
    assert_eq!(downloads.load(Ordering::SeqCst), 1);

    cp.wait(
        "the idle instance to scale to zero",
        Duration::from_secs(60),
        || cp.json(&["-n", INS, "get", "deployment", &name])["spec"]["replicas"] == 0,
    );
    let pods = format!("vscode-on-demand.io/instance={}", c.id);
    cp.wait("its pod to go", Duration::from_secs(60), || {
        cp.json(&["-n", INS, "get", "pods", "-l", &pods])["items"]
            .as_array()
            .is_some_and(Vec::is_empty)
    });

    let r = a
        .fetch(&c, Method::GET, "/workspace-file?name=k.txt", "")
        .await;
    assert_eq!(body_text(r).await, "persisted", "{}", failed("the wake"));
    assert_eq!(
        downloads.load(Ordering::SeqCst),
        1,
        "VS Code is kept on the config volume"
    );

    delete_keeping_workspace(&a, &cp, INS, &c.id, &claim).await;
    assert!(workspace.join("k.txt").exists());
}
