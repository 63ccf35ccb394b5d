//! The Kubernetes backend against a real API server (etcd + kube-apiserver with RBAC +
//! kube-controller-manager, from `scripts/kube-testenv.sh`), with `vod-kubelet` running pods as
//! local processes. The proxy authenticates as the ServiceAccount bound to the manifests' Role,
//! so every call it makes is proven to be allowed by that Role.

use futures_util::{SinkExt, StreamExt};
use http::{Method, StatusCode};
use serde_json::json;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;
use vod_testkit::kube::{kube_mode, ControlPlane, Kubelet};
use vod_testkit::tokio_tungstenite::tungstenite::Message;
use vod_testkit::vscode_cli::{fake_cli_tarball, update_service};
use vod_testkit::*;

/// The proxy's namespace (its account, Role and Lease) and the instances'.
const NS: &str = "vod-e2e";
const INS: &str = "vod-e2e-instances";
const INSTALLER: &str = "vscode-on-demand:test";

fn proxy_args<'a>(kubeconfig: &'a std::path::Path, download: &'a str) -> Vec<&'a str> {
    let mut args = kube_mode(kubeconfig, NS, INS);
    args.extend([
        "--installer-image",
        INSTALLER,
        "--vscode-download-url",
        download,
        "--idle-timeout",
        "6s",
        "--reap-interval",
        "500ms",
        "--start-timeout",
        "60s",
    ]);
    args
}

/// The upstream secret of an instance, as the cluster admin reads it.
fn upstream_token(cp: &ControlPlane, secret: &str) -> String {
    cp.ok(&[
        "-n",
        INS,
        "get",
        "secret",
        secret,
        "-o",
        r#"go-template={{index .data "upstream-token" | base64decode}}"#,
    ])
}

/// The status of a request straight to a pod (`vod_testkit::kube::direct`).
fn direct(url: &str, headers: &[&str]) -> String {
    vod_testkit::kube::direct(url, headers).0
}

/// The running instance `c` answers only requests that carry its upstream secret, which only
/// the proxy adds: not the pod reached directly, with or without the user's own token, nor a
/// WebSocket; and the secret never comes back to the browser. Its pod is confined.
async fn pod_serves_only_the_proxy(cp: &ControlPlane, a: &Server, c: &Created, name: &str) {
    let secret = upstream_token(cp, &format!("{name}-token"));
    assert_eq!(secret.len(), 64, "256 bits, hex");
    assert_ne!(secret, c.token, "not the user's access token");
    let pods = cp.json(&[
        "-n",
        INS,
        "get",
        "pods",
        "-l",
        &format!("vscode-on-demand.io/instance={}", c.id),
    ]);
    let ip = pods["items"][0]["status"]["podIP"].as_str().unwrap();
    let url = format!("http://{ip}:8000/instances/{}/small", c.id);
    let ws = [
        "Connection: Upgrade",
        "Upgrade: websocket",
        "Sec-WebSocket-Version: 13",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
    ];
    let ws_url = format!("http://{ip}:8000/instances/{}/ws", c.id);
    let user_cookie = format!("Cookie: vod_tkn={}", c.token);
    assert_eq!(direct(&url, &[]), "403", "no secret");
    assert_eq!(direct(&url, &[&user_cookie]), "403", "the user's token");
    assert_eq!(
        direct(&format!("{url}?tkn={}", c.token), &[]),
        "403",
        "the user's token as tkn"
    );
    assert_eq!(
        direct(&url, &["Cookie: vscode-tkn=00000000000000000000"]),
        "403",
        "VS Code's placeholder token"
    );
    assert_eq!(
        direct(&ws_url, &ws),
        "403",
        "a WebSocket without the secret"
    );
    let with_secret = format!("Cookie: vscode-tkn={secret}");
    assert_eq!(
        direct(&url, &[&with_secret]),
        "200",
        "the secret is what opens it"
    );

    // Through the proxy: the instance sees the secret, never the client's choice of it.
    let req = a
        .request(Method::GET, &format!("/instances/{}/echo/secret", c.id))
        .header(
            "cookie",
            format!("vscode-tkn=guess; {}; theme=dark", a.cookie(&c.token)),
        )
        .body(Default::default())
        .unwrap();
    let v = body_json(a.send(req).await).await;
    assert_eq!(
        v["headers"]["cookie"],
        format!("vscode-tkn={secret}; theme=dark")
    );
    // An instance that hands out its cookie (VS Code does for a valid ?tkn=) does not reach
    // the browser with it.
    let r = a
        .fetch(c, Method::GET, &format!("/small?tkn={secret}"), "")
        .await;
    let set_cookies: Vec<_> = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    assert!(
        set_cookies.iter().all(|c| !c.contains(&secret)),
        "{set_cookies:?}"
    );
    assert_eq!(body_text(r).await, "hello");
    // VS Code's page repeats the token inside its WebSocket protocol, reading it from the
    // cookie: page loads get it, for the instance's own origin only, and never from the pod.
    let r = a.visit(c, "/").await;
    let page: Vec<_> = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        page,
        [format!(
            "vscode-tkn={secret}; Path=/; Secure; SameSite=Strict"
        )],
        "one host-only cookie for the instance's page"
    );

    // As applied: non-root, no capabilities, no escalation, RuntimeDefault seccomp.
    let d = cp.json(&["-n", INS, "get", "deployment", name]);
    let pod = &d["spec"]["template"]["spec"];
    let psc = &pod["securityContext"];
    assert_eq!(
        (
            &psc["runAsNonRoot"],
            &psc["runAsUser"],
            &psc["runAsGroup"],
            &psc["fsGroup"]
        ),
        (&json!(true), &json!(1000), &json!(1000), &json!(1000)),
        "{psc}"
    );
    assert_eq!(psc["seccompProfile"]["type"], "RuntimeDefault");
    for ctr in [&pod["initContainers"][0], &pod["containers"][0]] {
        let sc = &ctr["securityContext"];
        assert_eq!(sc["allowPrivilegeEscalation"], false, "{ctr}");
        assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]), "{ctr}");
        assert!(!sc.to_string().contains(&secret));
    }
    assert!(
        !d.to_string().contains(&secret),
        "the secret is not in the Deployment"
    );
    let log = std::fs::read_to_string(a.data_dir.with_extension("server.log")).unwrap();
    assert!(
        log.contains(&c.id),
        "the proxy's log is where it was expected"
    );
    assert!(!log.contains(&secret), "the secret is never logged");
}

/// What the proxy's account may do, asked of the API server as that account.
fn role_reach(
    cp: &ControlPlane,
    ns: &str,
    ins: &str,
    sa_kubeconfig: &std::path::Path,
    make_admin_secret: bool,
) {
    let me = format!("--as=system:serviceaccount:{ns}:vscode-on-demand");
    // `pods/exec` names a subresource, which can-i takes as a flag.
    let can = |verb: &str, what: &str, in_ns: &str| {
        let mut args = vec!["auth", "can-i", verb, "-n", in_ns, &me];
        match what.split_once('/') {
            Some((res, sub @ ("exec" | "log"))) => args.extend([res, "--subresource", sub]),
            _ => args.push(what),
        }
        let out = cp.kubectl(&args);
        String::from_utf8_lossy(&out.stdout).trim() == "yes"
    };
    for (verb, what) in [
        ("get", "secrets"),
        ("list", "secrets"),
        ("get", "secrets/vscode-on-demand-admin"),
        ("get", "secrets/vscode-on-demand-tls"),
        ("get", "pods"),
        ("list", "deployments"),
        ("get", "configmaps"),
        ("create", "pods/exec"),
    ] {
        assert!(!can(verb, what, ns), "{verb} {what} in its own namespace");
    }
    assert!(can("get", "leases/vscode-on-demand-reaper", ns));
    for (verb, what) in [
        ("create", "deployments"),
        ("watch", "deployments"),
        ("delete", "deployments"),
        ("get", "secrets"),
        ("create", "secrets"),
        ("watch", "secrets"),
        ("watch", "pods"),
    ] {
        assert!(can(verb, what, ins), "{verb} {what} among instances");
    }
    for (verb, what) in [
        ("create", "pods/exec"),
        ("get", "pods/log"),
        ("create", "pods"),
    ] {
        assert!(!can(verb, what, ins), "{verb} {what} among instances");
    }
    // As an attacker holding the account's token would try it.
    if make_admin_secret {
        cp.ok(&[
            "-n",
            ns,
            "create",
            "secret",
            "generic",
            "vscode-on-demand-admin",
            "--from-literal=token=not-for-instances",
        ]);
    }
    let out = cp.kubectl(&[
        "--kubeconfig",
        sa_kubeconfig.to_str().unwrap(),
        "-n",
        ns,
        "get",
        "secret",
        "vscode-on-demand-admin",
        "-o",
        "json",
    ]);
    assert!(!out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("forbidden"));
}

/// What deploy.sh set up around the instances: their namespace under Pod Security
/// `baseline`, the NetworkPolicy as applied, and the reach of the proxy's account.
fn deployed_isolation(cp: &ControlPlane, tmp: &std::path::Path) {
    let ins = cp.json(&["get", "namespace", "vod-deploy-instances"]);
    assert_eq!(
        ins["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "baseline"
    );
    let ns = cp.json(&["get", "namespace", "vod-deploy"]);
    assert_eq!(
        ns["metadata"]["labels"]["kubernetes.io/metadata.name"],
        "vod-deploy"
    );
    let proxy = cp.json(&["-n", "vod-deploy", "get", "deployment", "vscode-on-demand"]);
    let env = &proxy["spec"]["template"]["spec"]["containers"][0]["env"];
    assert!(
        env.as_array()
            .unwrap()
            .contains(&json!({"name": "VOD_INSTANCE_NAMESPACE", "value": "vod-deploy-instances"})),
        "{env}"
    );

    let np = cp.json(&[
        "-n",
        "vod-deploy-instances",
        "get",
        "networkpolicy",
        "vscode-on-demand-instances",
    ]);
    let spec = &np["spec"];
    assert_eq!(spec["policyTypes"], json!(["Ingress", "Egress"]));
    assert_eq!(
        spec["podSelector"]["matchLabels"]["app.kubernetes.io/component"],
        "instance"
    );
    let from = &spec["ingress"][0]["from"];
    assert_eq!(
        from.as_array().unwrap().len(),
        1,
        "one peer: both selectors at once"
    );
    assert_eq!(
        from[0]["namespaceSelector"]["matchLabels"],
        json!({"kubernetes.io/metadata.name": "vod-deploy"})
    );
    assert_eq!(
        from[0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"],
        "proxy"
    );
    assert_eq!(
        spec["ingress"][0]["ports"],
        json!([{"port": 8000, "protocol": "TCP"}])
    );
    let block = spec["egress"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|rule| rule["to"][0]["ipBlock"].as_object().cloned())
        .expect("an ipBlock egress rule");
    assert_eq!(block["cidr"], "0.0.0.0/0");
    let except: Vec<&str> = block["except"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    let api_ip = cp.ok(&[
        "-n",
        "default",
        "get",
        "service",
        "kubernetes",
        "-o",
        "jsonpath={.spec.clusterIP}",
    ]);
    // The test control plane publishes no endpoints for it; a real one does.
    let api_endpoint = cp.kubectl(&[
        "-n",
        "default",
        "get",
        "endpoints",
        "kubernetes",
        "-o",
        "jsonpath={.subsets[0].addresses[0].ip}",
    ]);
    let api_endpoint = String::from_utf8_lossy(&api_endpoint.stdout).into_owned();
    let mut denied = vec!["169.254.169.254/32".to_owned(), format!("{api_ip}/32")];
    if !api_endpoint.is_empty() {
        denied.push(format!("{api_endpoint}/32"));
    }
    for cidr in denied {
        assert!(except.contains(&cidr.as_str()), "{cidr} not in {except:?}");
    }
    let dns = &spec["egress"][0];
    assert_eq!(
        dns["to"][0]["podSelector"]["matchLabels"]["k8s-app"],
        "kube-dns"
    );

    let sa =
        cp.service_account_kubeconfig("vod-deploy", "vscode-on-demand", &tmp.join("deploy-sa"));
    role_reach(cp, "vod-deploy", "vod-deploy-instances", &sa, false);
}

/// What the cluster, the kubelet and the proxies said, for a failed assertion.
fn diagnose(cp: &ControlPlane, tmp: &std::path::Path) -> String {
    diagnose_ns(cp, INS, tmp)
}

fn diagnose_ns(cp: &ControlPlane, ns: &str, tmp: &std::path::Path) -> String {
    let tail = |p: std::path::PathBuf| {
        let text = std::fs::read_to_string(&p).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        format!(
            "--- {}\n{}",
            p.display(),
            lines[lines.len().saturating_sub(30)..].join("\n")
        )
    };
    let get = |what: &str| {
        String::from_utf8_lossy(&cp.kubectl(&["-n", ns, "get", what, "-o", "wide"]).stdout)
            .into_owned()
    };
    [
        get("pods"),
        get("events"),
        tail(tmp.join("kubelet.log")),
        tail(tmp.join("proxy-a.server.log")),
        tail(tmp.join("proxy-b.server.log")),
    ]
    .join("\n")
}

/// A control plane with the proxy's and the instances' namespaces and Roles applied from the
/// manifests; returns it, the rendered manifests and a kubeconfig of the proxy's account.
fn cluster(tmp: &std::path::Path) -> (ControlPlane, std::path::PathBuf, std::path::PathBuf) {
    vod_testkit::kube::cluster(tmp, NS, INS)
}

/// What runs instance pods: `vod-kubelet` with the installer and a base image, and the update
/// service the installer downloads the stand-in VS Code CLI from (its URL; downloads counted).
async fn pods_run_here(
    cp: &ControlPlane,
    tmp: &std::path::Path,
) -> (Kubelet, String, Arc<AtomicUsize>) {
    let downloads = Arc::new(AtomicUsize::new(0));
    let download = update_service(fake_cli_tarball(tmp), downloads.clone()).await;
    let kubelet = Kubelet::start(
        cp,
        &tmp.join("kubelet"),
        &[
            format!("{INSTALLER}={} {{args-only}}", product()),
            "ubuntu:24.04={args}".to_owned(),
        ],
    );
    (kubelet, download, downloads)
}

#[tokio::test(flavor = "multi_thread")]
async fn instances_are_deployments_scaled_between_zero_and_one() {
    let tmp = tempdir();
    let (cp, manifests, sa_kc) = cluster(tmp.path());
    role_reach(&cp, NS, INS, &sa_kc, true);
    let denied = cp.kubectl(&[
        "--kubeconfig",
        sa_kc.to_str().unwrap(),
        "-n",
        NS,
        "get",
        "nodes",
    ]);
    assert!(
        !denied.status.success(),
        "the proxy's account has no cluster-wide rights"
    );

    let (kubelet, download, downloads) = pods_run_here(&cp, tmp.path()).await;

    let data_a = tmp.path().join("proxy-a");
    std::fs::create_dir_all(&data_a).unwrap();
    let sa = sa_kc.as_path();
    let mut a = Server::start(&data_a, &proxy_args(sa, &download));

    // Create: the exact objects exist, labelled, the owned ones owned by the Deployment.
    let c = a
        .create(json!({"user_id": "kuser", "storage_size": "1Gi"}))
        .await;
    let name = format!("vsc-{}", c.id);
    let d = cp.json(&["-n", INS, "get", "deployment", &name]);
    assert_eq!(d["spec"]["replicas"], 0, "created stopped");
    assert_eq!(d["spec"]["strategy"]["type"], "Recreate");
    assert_eq!(
        d["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "vscode-on-demand"
    );
    assert_eq!(d["metadata"]["labels"]["vscode-on-demand.io/user"], "kuser");
    let uid = d["metadata"]["uid"].as_str().unwrap().to_owned();
    for (kind, obj) in [
        ("service", name.clone()),
        ("secret", format!("{name}-token")),
        ("pvc", format!("{name}-config")),
    ] {
        let o = cp.json(&["-n", INS, "get", kind, &obj]);
        assert_eq!(
            o["metadata"]["ownerReferences"][0]["uid"],
            uid.as_str(),
            "{kind} {obj} is owned"
        );
        assert_eq!(
            o["metadata"]["labels"]["vscode-on-demand.io/instance"],
            c.id.as_str()
        );
    }
    let token = cp.ok(&[
        "-n",
        INS,
        "get",
        "secret",
        &format!("{name}-token"),
        "-o",
        "go-template={{.data.token | base64decode}}",
    ]);
    assert_eq!(token, c.token, "the token lives in a Secret");
    let ws = cp.json(&["-n", INS, "get", "pvc", "vsc-ws-kuser"]);
    assert!(
        ws["metadata"]["ownerReferences"].is_null(),
        "nothing owns the workspace"
    );
    assert_eq!(ws["spec"]["resources"]["requests"]["storage"], "1Gi");
    let cms = cp.json(&[
        "-n",
        INS,
        "get",
        "configmaps",
        "-l",
        "app.kubernetes.io/managed-by=vscode-on-demand",
    ]);
    assert_eq!(cms["items"], json!([]), "no ConfigMaps");

    // First visit: the pod is scheduled, VS Code installed by the init container, then proxied.
    let before = a.scrape().await;
    let visit = std::time::Instant::now();
    let r = a.fetch(&c, Method::GET, "/echo/first", "").await;
    let visit = visit.elapsed().as_secs_f64();
    assert_eq!(r.status(), StatusCode::OK, "{}", diagnose(&cp, tmp.path()));
    // The cold start's phases, as an operator sees them: each counted once, the pod's scheduling
    // and init container (which downloads VS Code) in the cluster's own phases, and together no
    // longer than the visit that waited for them.
    let after = a.scrape().await;
    let seconds = |p: &str| after.phase_seconds(p) - before.phase_seconds(p);
    for p in PHASES {
        assert_eq!(
            after.phase_count(p) - before.phase_count(p),
            1.0,
            "kube cold start phase {p} counted once"
        );
    }
    let total: f64 = PHASES.iter().map(|p| seconds(p)).sum();
    assert!(
        seconds("spawned") + seconds("init") > 0.0 && total <= visit,
        "phases {:?} in a {visit} s visit",
        PHASES.map(|p| (p, seconds(p)))
    );
    let v = body_json(r).await;
    assert_eq!(
        v["path"],
        format!("/instances/{}/echo/first", c.id),
        "serve-web keeps the base path"
    );
    assert_eq!(
        cp.json(&["-n", INS, "get", "deployment", &name])["spec"]["replicas"],
        1
    );
    assert_eq!(downloads.load(std::sync::atomic::Ordering::SeqCst), 1);

    let origin = a.origin_of(&c.id);
    let mut ws_conn = a
        .websocket(
            &format!("/instances/{}/ws", c.id),
            Some(&a.cookie(&c.token)),
            Some(&origin),
        )
        .await
        .unwrap();
    ws_conn.send(Message::text("through kube")).await.unwrap();
    assert_eq!(
        ws_conn.next().await.unwrap().unwrap(),
        Message::text("through kube")
    );
    drop(ws_conn);
    let r = a
        .fetch(&c, Method::PUT, "/workspace-file?name=k.txt", "persisted")
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        std::fs::read_to_string(kubelet.claim_dir(INS, "vsc-ws-kuser").join("k.txt")).unwrap(),
        "persisted",
        "the file is on the workspace volume"
    );
    pod_serves_only_the_proxy(&cp, &a, &c, &name).await;

    // A second replica serves the same instance at once, from the cluster's state alone.
    let data_b = tmp.path().join("proxy-b");
    std::fs::create_dir_all(&data_b).unwrap();
    let mut b = Server::start(&data_b, &proxy_args(sa, &download));
    let r = b.fetch(&c, Method::GET, "/small", "").await;
    assert_eq!(
        body_text(r).await,
        "hello",
        "replica b knows the instance and its token"
    );

    // Idle: scaled to zero, the pod goes away.
    cp.wait(
        "the idle instance to scale to zero",
        Duration::from_secs(40),
        || cp.json(&["-n", INS, "get", "deployment", &name])["spec"]["replicas"] == 0,
    );
    cp.wait("the pod to go away", Duration::from_secs(30), || {
        cp.json(&[
            "-n",
            INS,
            "get",
            "pods",
            "-l",
            &format!("vscode-on-demand.io/instance={}", c.id),
        ])["items"]
            .as_array()
            .unwrap()
            .is_empty()
    });
    b.wait_state(&c.id, "Stopped", Duration::from_secs(10))
        .await;
    let (_, v) = b
        .api(Method::GET, &format!("/api/instances/{}", c.id), None)
        .await;
    assert_eq!(v["stop_reason"], "idle", "{v}");

    // Wake through the other replica; the workspace survived.
    let r = b
        .fetch(&c, Method::GET, "/workspace-file?name=k.txt", "")
        .await;
    assert_eq!(body_text(r).await, "persisted");
    assert_eq!(
        downloads.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "VS Code is cached on the config volume"
    );

    // A restarted proxy serves every route immediately.
    a.terminate();
    a = Server::start(&data_a, &proxy_args(sa, &download));
    let r = a.fetch(&c, Method::GET, "/small", "").await;
    assert_eq!(body_text(r).await, "hello");
    assert_eq!(
        cp.json(&["-n", INS, "get", "deployment", &name])["spec"]["replicas"],
        1,
        "a proxy restart does not stop instances"
    );

    // Every proxy goes and both come back: neither started the instance, which still runs,
    // and nobody uses it; whichever holds the reaper's lease scales it to zero all the same.
    b.terminate();
    a.terminate();
    a = Server::start(&data_a, &proxy_args(sa, &download));
    b = Server::start(&data_b, &proxy_args(sa, &download));
    cp.wait(
        "the instance nobody uses to scale to zero after a restart",
        Duration::from_secs(60),
        || cp.json(&["-n", INS, "get", "deployment", &name])["spec"]["replicas"] == 0,
    );
    for s in [&a, &b] {
        s.wait_state(&c.id, "Stopped", Duration::from_secs(10))
            .await;
        let (_, v) = s
            .api(Method::GET, &format!("/api/instances/{}", c.id), None)
            .await;
        assert_eq!(v["stop_reason"], "idle", "{v}");
    }
    // A replica that has just started, the instance deleted through the other at once: it
    // learns of the deletion from its watch's first listing if it came before the watch, else
    // from the watch.
    b.terminate();
    b = Server::start(&data_b, &proxy_args(sa, &download));

    // Delete: one call; everything but the workspace goes.
    let (st, _) = a
        .api(Method::DELETE, &format!("/api/instances/{}", c.id), None)
        .await;
    assert_eq!(st, StatusCode::OK);
    cp.wait(
        "owned objects to be collected",
        Duration::from_secs(60),
        || {
            !cp.exists(INS, "deployment", &name)
                && !cp.exists(INS, "service", &name)
                && !cp.exists(INS, "secret", &format!("{name}-token"))
                && !cp.exists(INS, "pvc", &format!("{name}-config"))
        },
    );
    assert!(cp.exists(INS, "pvc", "vsc-ws-kuser"), "the workspace stays");
    b.wait_state(&c.id, "?", Duration::from_secs(10)).await;

    // The API server goes away for a while: open sessions keep working, starts fail fast with
    // a clear error, and everything recovers when it is back.
    let up = a.create(json!({"user_id": "kuser"})).await;
    let down = a.create(json!({"user_id": "other"})).await;
    let r = a.fetch(&up, Method::GET, "/small", "").await;
    assert_eq!(body_text(r).await, "hello");
    let origin = a.origin_of(&up.id);
    let mut open = a
        .websocket(
            &format!("/instances/{}/ws", up.id),
            Some(&a.cookie(&up.token)),
            Some(&origin),
        )
        .await
        .unwrap();
    let stopped = cp.stop_apiserver();
    for i in 0..3 {
        let msg = format!("still here {i}");
        open.send(Message::text(msg.clone())).await.unwrap();
        assert_eq!(open.next().await.unwrap().unwrap(), Message::text(msg));
        let r = a.fetch(&up, Method::GET, "/small", "").await;
        assert_eq!(
            body_text(r).await,
            "hello",
            "a running instance stays reachable"
        );
    }
    let t0 = std::time::Instant::now();
    let (st, v) = a
        .api(
            Method::POST,
            &format!("/api/instances/{}/start", down.id),
            None,
        )
        .await;
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "a start fails fast: {:?}",
        t0.elapsed()
    );
    assert_eq!(st, StatusCode::BAD_GATEWAY, "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("Kubernetes API"),
        "{v}"
    );
    stopped.restart(&cp);
    let (st, v) = a
        .api(
            Method::POST,
            &format!("/api/instances/{}/start", down.id),
            None,
        )
        .await;
    assert_eq!(
        (st, v["status"].as_str()),
        (StatusCode::OK, Some("Running")),
        "{v}"
    );
    drop(open);

    // An instance from before upstream secrets (its Secret has none) gets one on its next start.
    let old = a.create(json!({"user_id": "legacy"})).await;
    let old_secret = format!("vsc-{}-token", old.id);
    cp.ok(&[
        "-n",
        INS,
        "patch",
        "secret",
        &old_secret,
        "--type=json",
        "-p",
        r#"[{"op": "remove", "path": "/data/upstream-token"}]"#,
    ]);
    let r = a.fetch(&old, Method::GET, "/small", "").await;
    assert_eq!(body_text(r).await, "hello", "{}", diagnose(&cp, tmp.path()));
    assert_eq!(upstream_token(&cp, &old_secret).len(), 64);

    // The proxy's manifests go to its namespace; the instance ones name theirs.
    let dry = |ns: &[&str], dir: &std::path::Path| {
        let mut args = ns.to_vec();
        args.extend(["apply", "--dry-run=server", "-f", dir.to_str().unwrap()]);
        String::from_utf8_lossy(&cp.kubectl(&args).stderr).into_owned()
    };
    let stderr = dry(&["-n", NS], &manifests) + &dry(&[], &manifests.join("instances"));
    // 1.20 predates policy/v1 (deploy.sh rewrites it there); everything else must pass as is.
    let other_errors: Vec<_> = stderr
        .lines()
        .filter(|l| !l.contains("PodDisruptionBudget") && !l.trim().is_empty())
        .collect();
    assert!(other_errors.is_empty(), "server-side dry run: {stderr}");
}

/// A GET of `rest` on instance `id` through `s`, with the cookie holding `token`.
async fn get_with(s: &Server, id: &str, rest: &str, token: &str) -> StatusCode {
    let req = s
        .request(Method::GET, &format!("/instances/{id}{rest}"))
        .header("cookie", s.cookie(token))
        .body(Default::default())
        .unwrap();
    s.send(req).await.status()
}

/// The access token in the instance's Secret and its generation, as the cluster admin reads
/// them.
fn secret_token(cp: &ControlPlane, id: &str) -> (String, String) {
    let name = format!("vsc-{id}-token");
    let token = cp.ok(&[
        "-n",
        INS,
        "get",
        "secret",
        &name,
        "-o",
        "go-template={{.data.token | base64decode}}",
    ]);
    let generation = cp.ok(&[
        "-n",
        INS,
        "get",
        "secret",
        &name,
        "-o",
        r#"go-template={{index .metadata.annotations "vscode-on-demand.io/token-generation"}}"#,
    ]);
    (token, generation)
}

/// A token replaced through one replica stops opening the instance there at once, and on the
/// other replica as soon as its watch of the instance Secrets sees it: cookies, `?tkn=` and
/// WebSocket upgrades with the old one are refused, its open tunnel there is closed, and the
/// new one works everywhere, also after a restart.
#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_token_is_refused_by_every_replica() {
    let tmp = tempdir();
    let (cp, _, sa_kc) = cluster(tmp.path());
    let (_kubelet, download, _) = pods_run_here(&cp, tmp.path()).await;
    let sa = sa_kc.as_path();
    let data_a = tmp.path().join("proxy-a");
    let data_b = tmp.path().join("proxy-b");
    for d in [&data_a, &data_b] {
        std::fs::create_dir_all(d).unwrap();
    }
    let a = Server::start(&data_a, &proxy_args(sa, &download));
    let mut b = Server::start(&data_b, &proxy_args(sa, &download));

    let c = a.create(json!({"user_id": "rot"})).await;
    let old = c.token.clone();
    assert_eq!(
        get_with(&a, &c.id, "/small", &old).await,
        StatusCode::OK,
        "{}",
        diagnose(&cp, tmp.path())
    );
    assert_eq!(get_with(&b, &c.id, "/small", &old).await, StatusCode::OK);
    let ws_path = format!("/instances/{}/ws", c.id);
    let mut open_on_b = b
        .websocket(&ws_path, Some(&b.cookie(&old)), Some(&b.origin_of(&c.id)))
        .await
        .unwrap();
    open_on_b.send(Message::text("before")).await.unwrap();
    assert_eq!(
        open_on_b.next().await.unwrap().unwrap(),
        Message::text("before")
    );

    let (st, v) = a
        .api(
            Method::POST,
            &format!("/api/instances/{}/token", c.id),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let new = v["access_token"].as_str().unwrap().to_owned();
    assert_ne!(new, old);
    assert_eq!(
        v["url"],
        format!("{}/instances/{}/?tkn={new}", a.origin_of(&c.id), c.id)
    );
    assert_eq!(secret_token(&cp, &c.id), (new.clone(), "1".to_owned()));

    // Here at once.
    assert_eq!(
        get_with(&a, &c.id, "/small", &old).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(get_with(&a, &c.id, "/small", &new).await, StatusCode::OK);

    // On the other replica as soon as it has seen the Secret change.
    let end = std::time::Instant::now() + Duration::from_secs(30);
    while get_with(&b, &c.id, "/small", &old).await != StatusCode::UNAUTHORIZED {
        assert!(
            std::time::Instant::now() < end,
            "replica b still takes the old cookie: {}",
            diagnose(&cp, tmp.path())
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let err = b
        .websocket(&ws_path, Some(&b.cookie(&old)), Some(&b.origin_of(&c.id)))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("401"), "{err}");
    let tkn = b
        .send(
            b.request(Method::GET, &format!("/instances/{}/?tkn={old}", c.id))
                .body(Default::default())
                .unwrap(),
        )
        .await;
    assert_eq!(tkn.status(), StatusCode::UNAUTHORIZED, "the old ?tkn=");
    // The tunnel b opened with the old cookie ends (the echo server sends nothing by itself).
    match tokio::time::timeout(Duration::from_secs(30), open_on_b.next()).await {
        Err(_) => panic!("the tunnel opened with the old cookie is still open"),
        Ok(None | Some(Err(_)) | Some(Ok(Message::Close(_)))) => {}
        Ok(Some(Ok(m))) => panic!("unexpected message {m:?}"),
    }
    assert_eq!(get_with(&b, &c.id, "/small", &new).await, StatusCode::OK);
    let mut ws = b
        .websocket(&ws_path, Some(&b.cookie(&new)), Some(&b.origin_of(&c.id)))
        .await
        .unwrap();
    ws.send(Message::text("after")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("after"));
    drop(ws);

    // A second rotation, through b this time, reaches a the same way; a restarted replica
    // reads the newest token back from the Secret.
    let (st, v) = b
        .api(
            Method::POST,
            &format!("/api/instances/{}/token", c.id),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let newest = v["access_token"].as_str().unwrap().to_owned();
    assert_eq!(secret_token(&cp, &c.id), (newest.clone(), "2".to_owned()));
    let end = std::time::Instant::now() + Duration::from_secs(30);
    while get_with(&a, &c.id, "/small", &new).await != StatusCode::UNAUTHORIZED {
        assert!(
            std::time::Instant::now() < end,
            "replica a still takes the replaced cookie"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(get_with(&a, &c.id, "/small", &newest).await, StatusCode::OK);
    b.terminate();
    b = Server::start(&data_b, &proxy_args(sa, &download));
    for (token, want) in [
        (&old, StatusCode::UNAUTHORIZED),
        (&new, StatusCode::UNAUTHORIZED),
        (&newest, StatusCode::OK),
    ] {
        assert_eq!(get_with(&b, &c.id, "/small", token).await, want);
    }

    let (st, _) = a
        .api(Method::POST, "/api/instances/rot-0000000a/token", None)
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    for data in [&data_a, &data_b] {
        let log = std::fs::read_to_string(data.with_extension("server.log")).unwrap();
        for t in [&old, &new, &newest] {
            assert!(!log.contains(t.as_str()), "a token in {}", data.display());
        }
    }
}

/// Runs `deploy.sh` against the test cluster, as an operator would with the current context.
fn deploy(cp: &ControlPlane, certs: &std::path::Path, args: &[&str]) -> std::process::Output {
    deploy_with(cp, certs, args, &[])
}

fn deploy_with(
    cp: &ControlPlane,
    certs: &std::path::Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> std::process::Output {
    let path = format!(
        "{}:{}",
        cp.bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    std::process::Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy.sh"))
        .args(args)
        .env("PATH", path)
        .env("KUBECONFIG", &cp.kubeconfig)
        .env("VOD_NAMESPACE", "vod-deploy")
        .env("VOD_INSTANCE_NAMESPACE", "vod-deploy-instances")
        .env("VOD_BIN", product())
        .env("VOD_CERT_DIR", certs)
        .env("VOD_SKIP_MINIKUBE", "1")
        .env("VOD_SKIP_IMAGE", "1")
        .env("VOD_SKIP_HOSTS", "1")
        .env("VOD_ROLLOUT_TIMEOUT", "120s")
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn deploy_sh_installs_the_proxy_and_removes_it_keeping_workspaces() {
    let tmp = tempdir();
    let cp = ControlPlane::start(&tmp.path().join("cp"));
    // The proxy pods run our binary; the stand-in kubelet cannot give them an in-cluster
    // service account, so they get the kubeconfig explicitly.
    let _kubelet = Kubelet::start(
        &cp,
        &tmp.path().join("kubelet"),
        &[format!(
            "vscode-on-demand:latest={} {{args-only}} --kubeconfig {}",
            product(),
            cp.kubeconfig.display()
        )],
    );
    let certs = tmp.path().join("certs");
    let first = deploy(&cp, &certs, &[]);
    let stdout = String::from_utf8_lossy(&first.stdout);
    assert!(
        first.status.success(),
        "deploy.sh failed:\n{}\n{}\n{}",
        String::from_utf8_lossy(&first.stderr),
        stdout,
        diagnose_ns(&cp, "vod-deploy", tmp.path())
    );
    assert!(stdout.contains("https://vscode.local"), "{stdout}");
    let token = cp.ok(&[
        "-n",
        "vod-deploy",
        "get",
        "secret",
        "vscode-on-demand-admin",
        "-o",
        "go-template={{.data.token | base64decode}}",
    ]);
    assert!(stdout.contains(&token), "prints the admin token");
    assert!(certs.join("ca.crt").exists());

    let d = cp.json(&["-n", "vod-deploy", "get", "deployment", "vscode-on-demand"]);
    assert_eq!(d["status"]["readyReplicas"], 2, "two ready proxies");
    for (kind, name) in [
        ("serviceaccount", "vscode-on-demand"),
        ("role", "vscode-on-demand"),
        ("rolebinding", "vscode-on-demand"),
        ("service", "vscode-on-demand"),
        ("poddisruptionbudget", "vscode-on-demand"),
        ("secret", "vscode-on-demand-tls"),
    ] {
        assert!(cp.exists("vod-deploy", kind, name), "{kind}/{name}");
    }
    deployed_isolation(&cp, tmp.path());
    // Each proxy pod answers over TLS with the deployed certificate.
    let pods = cp.json(&[
        "-n",
        "vod-deploy",
        "get",
        "pods",
        "-l",
        "app.kubernetes.io/component=proxy",
    ]);
    for p in pods["items"].as_array().unwrap() {
        let ip = p["status"]["podIP"].as_str().unwrap();
        let out = std::process::Command::new("curl")
            .args(["-s", "--cacert"])
            .arg(certs.join("ca.crt"))
            .args([
                "--resolve",
                &format!("vscode.local:8443:{ip}"),
                "https://vscode.local:8443/api/health",
            ])
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("healthy"),
            "{ip}: {out:?}"
        );
    }

    let again = deploy(&cp, &certs, &[]);
    assert!(
        again.status.success(),
        "a second run changes nothing and succeeds: {}",
        String::from_utf8_lossy(&again.stderr)
    );
    let token_again = cp.ok(&[
        "-n",
        "vod-deploy",
        "get",
        "secret",
        "vscode-on-demand-admin",
        "-o",
        "go-template={{.data.token | base64decode}}",
    ]);
    assert_eq!(token, token_again, "the admin token is kept");

    // Host routing: the proxies roll out with it and a wildcard certificate for the instances.
    let host = deploy_with(&cp, &certs, &[], &[("VOD_ROUTING", "host")]);
    assert!(
        host.status.success(),
        "deploy with host routing: {}",
        String::from_utf8_lossy(&host.stderr)
    );
    let args = cp.ok(&[
        "-n",
        "vod-deploy",
        "get",
        "deployment",
        "vscode-on-demand",
        "-o",
        "jsonpath={.spec.template.spec.containers[0].args}",
    ]);
    assert!(args.contains("--routing=host"), "{args}");
    let cert = cp.ok(&[
        "-n",
        "vod-deploy",
        "get",
        "secret",
        "vscode-on-demand-tls",
        "-o",
        "go-template={{index .data \"tls.crt\" | base64decode}}",
    ]);
    let pem = tmp.path().join("tls.crt");
    std::fs::write(&pem, cert).unwrap();
    let san = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
        .arg(&pem)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&san.stdout).contains("DNS:*.vscode.local"),
        "{san:?}"
    );

    let ws = serde_json::json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": { "name": "vsc-ws-someone", "labels": {
            "app.kubernetes.io/managed-by": "vscode-on-demand", "app.kubernetes.io/component": "workspace" } },
        "spec": { "accessModes": ["ReadWriteOnce"], "resources": { "requests": { "storage": "1Gi" } } },
    });
    let ws_file = tmp.path().join("ws.json");
    std::fs::write(&ws_file, ws.to_string()).unwrap();
    cp.ok(&[
        "-n",
        "vod-deploy-instances",
        "apply",
        "-f",
        ws_file.to_str().unwrap(),
    ]);

    let del = deploy(&cp, &certs, &["--delete"]);
    assert!(
        del.status.success(),
        "{}",
        String::from_utf8_lossy(&del.stderr)
    );
    for (kind, name) in [
        ("deployment", "vscode-on-demand"),
        ("secret", "vscode-on-demand-tls"),
        ("secret", "vscode-on-demand-admin"),
        ("role", "vscode-on-demand"),
    ] {
        assert!(
            !cp.exists("vod-deploy", kind, name),
            "{kind}/{name} removed"
        );
    }
    assert!(
        !cp.exists(
            "vod-deploy-instances",
            "networkpolicy",
            "vscode-on-demand-instances"
        ),
        "the instance namespace's policy and Role go too"
    );
    assert!(
        cp.exists("vod-deploy-instances", "pvc", "vsc-ws-someone"),
        "workspaces are kept"
    );
    let del = deploy(&cp, &certs, &["--delete", "--workspaces"]);
    assert!(del.status.success());
    assert!(
        !cp.exists("vod-deploy-instances", "pvc", "vsc-ws-someone"),
        "and removed when asked"
    );
}
