//! A real Kubernetes control plane for tests (built by `scripts/kube-testenv.sh build`, started
//! by [`crate::control_plane`]), `kubectl` against it, a ServiceAccount kubeconfig, and the
//! `vod-kubelet` stand-in that runs pods as local processes. Everything started here is
//! stopped when dropped.

use crate::bins::{self, cache_dir};
use crate::control_plane::{kubeconfig, launch, scheduler, Proc, Procs};
use crate::process::{lock, stop_child};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct ControlPlane {
    /// This start's state: logs, kubeconfigs, etcd data.
    pub dir: PathBuf,
    pub kubeconfig: PathBuf,
    pub bin: PathBuf,
    pub server: String,
    pub ca_file: PathBuf,
    pki: PathBuf,
    procs: Procs,
}

impl ControlPlane {
    /// Starts etcd, kube-apiserver (RBAC) and kube-controller-manager with state under `dir`.
    pub fn start(dir: &Path) -> ControlPlane {
        let bin = cache_dir().join("kube/bin");
        assert!(
            bin.join("kube-apiserver").exists(),
            "the test control plane is not built: run `scripts/kube-testenv.sh build` (or scripts/test.sh)"
        );
        // Starts in one test process take turns, so two never choose ports at the same moment.
        static STARTING: Mutex<()> = Mutex::new(());
        let _turn = lock(&STARTING);
        let l = launch(dir, &bin);
        ControlPlane {
            dir: l.dir,
            kubeconfig: l.kubeconfig,
            bin,
            server: l.server,
            ca_file: l.ca_file,
            pki: l.pki,
            procs: l.procs,
        }
    }

    /// Starts kube-scheduler (built with the rest when the cache has it), supervised with the
    /// control plane. A real node's pods need it; the kubelet stand-in places its own.
    pub fn start_scheduler(&self) {
        assert!(
            self.bin.join("kube-scheduler").exists(),
            "kube-scheduler is not built: run `scripts/kube-testenv.sh build` (or scripts/test.sh)"
        );
        self.procs
            .push(scheduler(&self.dir, &self.pki, &self.bin, &self.server));
    }

    /// Runs kubectl as the cluster admin.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        Command::new(self.bin.join("kubectl"))
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .output()
            .unwrap()
    }

    /// Runs kubectl and returns stdout, panicking with stderr on failure.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        serde_json::from_str(&self.ok(&all)).unwrap()
    }

    pub fn exists(&self, ns: &str, kind: &str, name: &str) -> bool {
        self.kubectl(&["-n", ns, "get", kind, name])
            .status
            .success()
    }

    /// A kubeconfig that authenticates as `ns/sa` with its token, so the proxy runs with
    /// exactly the rights its Role grants.
    pub fn service_account_kubeconfig(&self, ns: &str, sa: &str, out: &Path) -> PathBuf {
        let end = Instant::now() + Duration::from_secs(60);
        let token = loop {
            let secrets = self.json(&[
                "-n",
                ns,
                "get",
                "secrets",
                "--field-selector",
                "type=kubernetes.io/service-account-token",
            ]);
            let name = secrets["items"].as_array().unwrap().iter().find_map(|s| {
                let owner =
                    s["metadata"]["annotations"]["kubernetes.io/service-account.name"].as_str()?;
                (owner == sa)
                    .then(|| s["metadata"]["name"].as_str().map(str::to_owned))
                    .flatten()
            });
            if let Some(name) = name {
                break self.ok(&[
                    "-n",
                    ns,
                    "get",
                    "secret",
                    &name,
                    "-o",
                    "go-template={{.data.token | base64decode}}",
                ]);
            }
            assert!(Instant::now() < end, "no token Secret for {ns}/{sa}");
            std::thread::sleep(Duration::from_millis(200));
        };
        let kc = kubeconfig(&self.server, &self.ca_file, sa, &token, Some(ns));
        std::fs::write(out, kc).unwrap();
        out.to_owned()
    }

    /// Kills kube-apiserver (etcd and the controller-manager keep running) and returns a handle
    /// that starts it again with the same command line.
    pub fn stop_apiserver(&self) -> StoppedApiserver {
        let mut procs = self.procs.lock();
        let i = procs
            .iter()
            .position(|p| p.name == "kube-apiserver")
            .expect("kube-apiserver is running");
        // Killed, not asked: it goes away the way a crashed or partitioned API server does.
        let mut p = procs.remove(i);
        p.kill();
        StoppedApiserver {
            argv: p.argv,
            log: p.log,
        }
    }

    /// Waits until `f` holds, polling.
    pub fn wait(&self, what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
        let end = Instant::now() + timeout;
        while !f() {
            assert!(Instant::now() < end, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// The kubelet stand-in, registered as one node.
pub struct Kubelet {
    child: Child,
    pub state_dir: PathBuf,
}

impl Kubelet {
    pub fn start(cp: &ControlPlane, state_dir: &Path, images: &[String]) -> Kubelet {
        std::fs::create_dir_all(state_dir).unwrap();
        let mut cmd = Command::new(bins::kubelet());
        cmd.arg("--kubeconfig")
            .arg(&cp.kubeconfig)
            .args(["--node-name", "node-1", "--state-dir"])
            .arg(state_dir);
        for i in images {
            cmd.arg("--image").arg(i);
        }
        cmd.arg("--ip-range").arg(pod_addresses());
        let log = std::fs::File::create(state_dir.with_extension("log")).unwrap();
        let child = cmd.stdout(Stdio::null()).stderr(log).spawn().unwrap();
        Kubelet {
            child,
            state_dir: state_dir.to_owned(),
        }
    }

    /// The host directory backing a PersistentVolumeClaim.
    pub fn claim_dir(&self, ns: &str, claim: &str) -> PathBuf {
        self.state_dir.join("pvc").join(ns).join(claim)
    }
}

/// Loopback addresses for one stand-in's pods that no other stand-in uses: the tests of a
/// suite run side by side, each cluster with its own stand-in, and every pod listens on the
/// same port; with shared addresses a pod of one cluster could answer for another's (seen as a
/// refused connection token). The second octet follows the process, the third counts the
/// stand-ins it started.
fn pod_addresses() -> String {
    static STARTED: AtomicU32 = AtomicU32::new(0);
    let process = 1 + std::process::id() % 250;
    let n = STARTED.fetch_add(1, Ordering::Relaxed) % 256;
    format!("127.{process}.{n}.2-127.{process}.{n}.254")
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        stop_child(&mut self.child, Duration::from_secs(15));
    }
}

pub struct StoppedApiserver {
    argv: Vec<std::ffi::OsString>,
    log: PathBuf,
}

impl StoppedApiserver {
    /// Starts kube-apiserver again, supervised with the rest of the control plane.
    pub fn restart(self, cp: &ControlPlane) {
        cp.procs
            .push(Proc::spawn("kube-apiserver", self.argv, self.log));
        cp.wait(
            "kube-apiserver to serve again",
            Duration::from_secs(60),
            || cp.kubectl(&["get", "--raw", "/readyz"]).status.success(),
        );
    }
}

/// A control plane with the project's manifests applied as deploy.sh applies them, the proxy's
/// namespace `ns` and the instances' `ins`: the control plane, the rendered manifests and a
/// kubeconfig of the proxy's ServiceAccount (so every call the proxy makes is proven to be
/// allowed by the manifests' Roles).
pub fn cluster(tmp: &Path, ns: &str, ins: &str) -> (ControlPlane, PathBuf, PathBuf) {
    let cp = ControlPlane::start(&tmp.join("cp"));
    let manifests = render_manifests(&tmp.join("manifests"), ns, ins);
    cp.ok(&["create", "namespace", ns]);
    cp.ok(&[
        "label",
        "namespace",
        ns,
        &format!("kubernetes.io/metadata.name={ns}"),
    ]);
    cp.ok(&[
        "apply",
        "-f",
        manifests.join("instances/namespace.yaml").to_str().unwrap(),
    ]);
    cp.ok(&["apply", "-f", manifests.join("instances").to_str().unwrap()]);
    cp.ok(&[
        "-n",
        ns,
        "apply",
        "-f",
        manifests.join("rbac.yaml").to_str().unwrap(),
    ]);
    let sa_kc = cp.service_account_kubeconfig(ns, "vscode-on-demand", &tmp.join("sa.kubeconfig"));
    (cp, manifests, sa_kc)
}

/// `manifests/` as deploy.sh applies them, with the namespaces renamed.
fn render_manifests(dst: &Path, proxy_ns: &str, instance_ns: &str) -> PathBuf {
    // The test kit lives one level below the project.
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests");
    for sub in ["", "instances"] {
        std::fs::create_dir_all(dst.join(sub)).unwrap();
        for entry in std::fs::read_dir(src.join(sub)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "yaml") {
                continue;
            }
            let text = std::fs::read_to_string(&path)
                .unwrap()
                .replace("vscode-instances", instance_ns)
                .replace(
                    "namespace: vscode-on-demand\n",
                    &format!("namespace: {proxy_ns}\n"),
                )
                .replace(
                    "kubernetes.io/metadata.name: vscode-on-demand\n",
                    &format!("kubernetes.io/metadata.name: {proxy_ns}\n"),
                );
            std::fs::write(dst.join(sub).join(path.file_name().unwrap()), text).unwrap();
        }
    }
    dst.to_owned()
}

/// The flags of a proxy in kube mode with its own namespace `ns`, instances in `ins`, and
/// the cluster reached through `kubeconfig`; a test adds its own after them.
pub fn kube_mode<'a>(kubeconfig: &'a Path, ns: &'a str, ins: &'a str) -> Vec<&'a str> {
    vec![
        "--backend",
        "kube",
        "--kubeconfig",
        kubeconfig.to_str().expect("a UTF-8 kubeconfig path"),
        "--namespace",
        ns,
        "--instance-namespace",
        ins,
    ]
}

/// Deletes instance `id` through `server`, waits for its Deployment to go, and checks that
/// the user's workspace claim `claim` in `ns` stays.
pub async fn delete_keeping_workspace(
    server: &crate::Server,
    cp: &ControlPlane,
    ns: &str,
    id: &str,
    claim: &str,
) {
    let (st, _) = server
        .api(http::Method::DELETE, &format!("/api/instances/{id}"), None)
        .await;
    assert_eq!(st, http::StatusCode::OK);
    let deployment = format!("vsc-{id}");
    cp.wait("the Deployment to go", Duration::from_secs(60), || {
        !cp.exists(ns, "deployment", &deployment)
    });
    assert!(cp.exists(ns, "pvc", claim), "the workspace claim stays");
}

/// `curl` straight to a pod, the way another pod on the cluster network would try it: the
/// status code and where it redirects to.
pub fn direct(url: &str, headers: &[&str]) -> (String, String) {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{redirect_url}",
        "--max-time",
        "10",
    ]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    let out = cmd.arg(url).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (status, to) = text.split_once(' ').unwrap_or((&text, ""));
    (status.to_owned(), to.to_owned())
}
