//! A real VS Code in a pod: the proxy in kube mode with `--runtime code-server`, against a real
//! API server and controller-manager, opened in headless Chromium through the proxy
//! (`tests/e2e/vscode.js`): the workbench renders, a file typed into its terminal lands on the
//! user's workspace claim and is there again after a stop (scaled to zero, the pod gone) and a
//! wake by navigation. The pod, reached directly, lets nobody in without the secret only the
//! proxy sends; deleting the instance keeps the workspace claim.
//!
//! Twice: with `vod-kubelet` running the pod's `code-server` as a process (the base image's,
//! here the test machine's code-server), and on a real node (kube-scheduler, a kubelet and
//! containerd, [`vod_testkit::node`]) running a code-server base image built locally, where the
//! pod's files are also shown to belong to the configured non-root user (`tests/kube_node.rs`
//! shows the reaper scaling an instance to zero on that node).

use http::{Method, StatusCode};
use serde_json::json;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::Duration;
use vod_testkit::browser::{run_vscode_script, Deps};
use vod_testkit::image::code_server_image;
use vod_testkit::kube::{delete_keeping_workspace, direct, kube_mode, ControlPlane, Kubelet};
use vod_testkit::node::Node;
use vod_testkit::*;

const NS: &str = "vod-code";
const INS: &str = "vod-code-instances";
const USER: &str = "kcode";
/// Not the image's own user (1000): the pod's securityContext decides.
const UID: u32 = 2345;
/// Longer than the script's own budget, so the script normally reports its failure itself.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(270);

/// Both tests take a browser, a VS Code and a control plane; one at a time.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread")]
async fn code_server_in_a_pod_through_the_proxy_in_a_browser() {
    let _turn = TURN.lock().await;
    e2e(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn code_server_on_a_real_node_through_the_proxy_in_a_browser() {
    let _turn = TURN.lock().await;
    e2e(true).await;
}

/// What runs the pods, kept alive for the test.
enum Pods {
    StandIn(Kubelet),
    Node(Node),
}

impl Pods {
    /// The node's logs, for a failure message.
    fn logs(&self) -> String {
        match self {
            Pods::StandIn(k) => log_tail(&k.state_dir.with_extension("log"), 40),
            Pods::Node(n) => format!(
                "{}\n{}",
                log_tail(&n.dir.join("kubelet.log"), 40),
                n.container_logs(INS, "vsc-")
            ),
        }
    }
}

/// Pods on the stand-in (the machine's code-server as the image), or on a real node (the
/// code-server image, hostPath volumes, the workspace's bound in advance); where the
/// workspace claim's files are on this machine.
fn pods(cp: &ControlPlane, tmp: &std::path::Path, real: bool) -> (Pods, String, PathBuf) {
    let claim = format!("vsc-ws-{USER}");
    if !real {
        let deps = Deps::find();
        let image = "code-server:test".to_owned();
        let kubelet = Kubelet::start(
            cp,
            &tmp.join("kubelet"),
            &[format!(
                "{image}={} {{args-only}}",
                deps.code_server.display()
            )],
        );
        let workspace = kubelet.claim_dir(INS, &claim);
        return (Pods::StandIn(kubelet), image, workspace);
    }
    let image = code_server_image();
    cp.start_scheduler();
    let node = Node::start(cp, &tmp.join("node"), &[&image]);
    let workspace = node.host_path_volume(cp, "workspace", Some((INS, &claim)));
    // The instance's config claim takes whichever is free.
    node.host_path_volume(cp, "config", None);
    (Pods::Node(node), image, workspace)
}

async fn e2e(real: bool) {
    let deps = Deps::find();
    let tmp = tempdir();
    let (cp, _, sa_kc) = kube::cluster(tmp.path(), NS, INS);
    let (pods, image, workspace) = pods(&cp, tmp.path(), real);
    let data = tmp.path().join("proxy");
    std::fs::create_dir_all(&data).unwrap();
    let uid = UID.to_string();
    let mut args = kube_mode(&sa_kc, NS, INS);
    args.extend([
        "--runtime",
        "code-server",
        "--instance-uid",
        &uid,
        "--start-timeout",
        "120s",
    ]);
    let mut a = Server::start(&data, &args);
    let c = a
        .create(json!({ "user_id": USER, "base_image": image }))
        .await;
    let name = format!("vsc-{}", c.id);
    let shots = tmp.path().join("screenshots");

    let run = run_vscode_script(&deps, &a, &c, &workspace, &shots, SCRIPT_TIMEOUT).await;
    assert!(
        run.success && run.result.as_ref().is_some_and(|r| r["ok"] == true),
        "the browser script failed.\nits output: {}\nserver log:\n{}\nnode:\n{}",
        run.stdout,
        log_tail(&data.with_extension("server.log"), 40),
        pods.logs(),
    );
    let result = run.result.unwrap();
    let sockets = result["websockets"].as_array().unwrap();
    for phase in ["first", "wake"] {
        assert!(
            sockets
                .iter()
                .any(|w| w["phase"] == phase && w["received"].as_u64() > Some(0)),
            "no WebSocket through the proxy received frames ({phase}): {sockets:?}"
        );
    }
    let refused: Vec<_> = result["bad_responses"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["status"].as_u64() != Some(404))
        .collect();
    assert!(refused.is_empty(), "refused or failed: {refused:?}");
    assert_eq!(
        std::fs::read_to_string(workspace.join("persisted.txt"))
            .unwrap()
            .trim(),
        "e2e-persist",
        "the file typed in the terminal is on the workspace claim"
    );
    if real {
        // Written by the terminal's shell, a child of code-server: the pod's user, not the
        // image's, and never root.
        let meta = std::fs::metadata(workspace.join("persisted.txt")).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (UID, UID), "owner of the file");
    }
    assert_eq!(
        cp.json(&["-n", INS, "get", "deployment", &name])["spec"]["replicas"],
        1,
        "woken by the navigation"
    );

    // The pod itself, reached directly: code-server sends everyone to its login page, with or
    // without the user's own token, or a session cookie of their own making; what only the
    // proxy sends gets in.
    let pods = cp.json(&[
        "-n",
        INS,
        "get",
        "pods",
        "-l",
        &format!("vscode-on-demand.io/instance={}", c.id),
    ]);
    let ip = pods["items"][0]["status"]["podIP"].as_str().unwrap();
    let pod = format!("http://{ip}:8000/");
    let cookie_of = |v: &str| format!("cookie: code-server-session={v}");
    for headers in [
        vec![],
        vec![cookie_of(&c.token)],
        vec![cookie_of("guess")],
        vec![format!("cookie: {}", a.cookie(&c.token))],
    ] {
        let h: Vec<&str> = headers.iter().map(String::as_str).collect();
        let (status, to) = direct(&pod, &h);
        assert!(
            status == "302" && to.contains("login"),
            "{headers:?}: {status} {to}"
        );
    }
    let secret = cp.ok(&[
        "-n",
        INS,
        "get",
        "secret",
        &format!("{name}-token"),
        "-o",
        r#"go-template={{index .data "upstream-token" | base64decode}}"#,
    ]);
    let (status, to) = direct(&pod, &[&cookie_of(&secret)]);
    assert!(
        (status == "200" || status == "302") && !to.contains("login"),
        "with the secret: {status} {to}"
    );

    // Through the proxy a session cookie of the browser's own making changes nothing, and the
    // secret never comes back to the browser.
    let r = a
        .send(
            a.request(Method::GET, &format!("/instances/{}/", c.id))
                .header(
                    "cookie",
                    format!("{}; code-server-session=guess", a.cookie(&c.token)),
                )
                .body(Default::default())
                .unwrap(),
        )
        .await;
    let to = r
        .headers()
        .get("location")
        .map(|l| l.to_str().unwrap().to_owned())
        .unwrap_or_default();
    assert!(
        (r.status() == StatusCode::OK || r.status() == StatusCode::FOUND) && !to.contains("login"),
        "{} {to}",
        r.status()
    );
    let set_cookies: Vec<_> = r.headers().get_all("set-cookie").iter().collect();
    assert!(
        set_cookies
            .iter()
            .all(|v| !v.to_str().unwrap().contains(&secret)),
        "{set_cookies:?}"
    );

    // Delete: the instance's objects go, the user's workspace claim and its file stay.
    delete_keeping_workspace(&a, &cp, INS, &c.id, &format!("vsc-ws-{USER}")).await;
    assert!(workspace.join("persisted.txt").exists());
    a.terminate();
}
