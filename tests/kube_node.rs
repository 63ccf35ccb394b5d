//! A real kubelet and container runtime: containerd and the kubelet of the test control
//! plane's Kubernetes source ([`vod_testkit::node`]) run a pod of the project's image, built
//! from the Dockerfile by `scripts/image-testenv.sh`; the kubelet's own HTTPS readiness probe
//! reaches its `/api/health` on the pod network.

use vod_testkit::image::image;
use vod_testkit::kube::ControlPlane;
use vod_testkit::node::Node;
use vod_testkit::*;

#[test]
fn a_real_kubelet_runs_the_project_image_as_a_pod() {
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
