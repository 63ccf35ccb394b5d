//! A real Kubernetes control plane for tests (`scripts/kube-testenv.sh`), `kubectl` against
//! it, a ServiceAccount kubeconfig, and the `vod-kubelet` stand-in that runs pods as local
//! processes. Everything started here is stopped when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const KUBELET: &str = env!("CARGO_BIN_EXE_vod-kubelet");

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub struct ControlPlane {
    pub dir: PathBuf,
    pub kubeconfig: PathBuf,
    pub bin: PathBuf,
    pub server: String,
    pub ca_file: PathBuf,
}

impl ControlPlane {
    /// Starts etcd, kube-apiserver (RBAC) and kube-controller-manager with state in `dir`.
    pub fn start(dir: &Path) -> ControlPlane {
        let cache = std::env::var("VOD_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|_| {
                PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/vscode-on-demand")
            });
        assert!(
            cache.join("kube/bin/kube-apiserver").exists(),
            "the test control plane is not built: run `scripts/kube-testenv.sh build` (or scripts/test.sh)"
        );
        // Two control planes picking free ports at the same moment can pick the same one, so
        // starts in one test process take turns, and a start that lost such a race is retried.
        static STARTING: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _turn = STARTING.lock().unwrap_or_else(|p| p.into_inner());
        let mut attempts = 0;
        let out = loop {
            attempts += 1;
            let out = Command::new("bash")
                .arg(repo().join("scripts/kube-testenv.sh"))
                .arg("start")
                .arg(dir)
                .stderr(Stdio::inherit())
                .output()
                .unwrap();
            if out.status.success() || attempts == 3 {
                break out;
            }
        };
        assert!(out.status.success(), "control plane failed to start");
        let env_file = String::from_utf8(out.stdout).unwrap();
        let env = std::fs::read_to_string(env_file.trim().lines().last().unwrap()).unwrap();
        let get = |k: &str| {
            env.lines()
                .find_map(|l| l.strip_prefix(&format!("export {k}=")))
                .unwrap_or_else(|| panic!("{k} missing from {env}"))
                .trim_matches('\'')
                .to_owned()
        };
        ControlPlane {
            dir: dir.to_owned(),
            kubeconfig: get("KUBECONFIG").into(),
            bin: get("VOD_KUBE_BIN").into(),
            server: get("VOD_KUBE_SERVER"),
            ca_file: get("VOD_KUBE_CA_FILE").into(),
        }
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
        let kc = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {}\n    certificate-authority: {}\n\
             users:\n- name: {sa}\n  user:\n    token: {token}\ncontexts:\n- name: sa\n  context:\n    cluster: test\n    user: {sa}\n    namespace: {ns}\n\
             current-context: sa\n",
            self.server,
            self.ca_file.display()
        );
        std::fs::write(out, kc).unwrap();
        out.to_owned()
    }

    /// Kills kube-apiserver (etcd and the controller-manager keep running) and returns a handle
    /// that starts it again with the same command line.
    pub fn stop_apiserver(&self) -> StoppedApiserver {
        let pids = std::fs::read_to_string(self.dir.join("pids")).unwrap();
        let (pid, argv) = pids
            .lines()
            .filter_map(|l| l.trim().parse::<i32>().ok())
            .find_map(|pid| {
                let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
                let argv: Vec<String> = raw
                    .split(|b| *b == 0)
                    .filter(|a| !a.is_empty())
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect();
                argv.first()?
                    .ends_with("kube-apiserver")
                    .then_some((pid, argv))
            })
            .expect("kube-apiserver is running");
        // Killed, not asked: it goes away the way a crashed or partitioned API server does.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
        self.wait("kube-apiserver to exit", Duration::from_secs(20), || {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| {
                s.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            })
        });
        StoppedApiserver {
            argv,
            dir: self.dir.clone(),
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

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(repo().join("scripts/kube-testenv.sh"))
            .arg("stop")
            .arg(&self.dir)
            .status();
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
        let mut cmd = Command::new(KUBELET);
        cmd.arg("--kubeconfig")
            .arg(&cp.kubeconfig)
            .args(["--node-name", "node-1", "--state-dir"])
            .arg(state_dir);
        for i in images {
            cmd.arg("--image").arg(i);
        }
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

impl Drop for Kubelet {
    fn drop(&mut self) {
        super::stop_child(&mut self.child);
    }
}

pub struct StoppedApiserver {
    argv: Vec<String>,
    dir: PathBuf,
}

impl StoppedApiserver {
    /// Starts kube-apiserver again; `scripts/kube-testenv.sh stop` stops it with the rest.
    // Its PID goes into the test environment's pid file, which is how it is stopped.
    #[allow(clippy::zombie_processes)]
    pub fn restart(self, cp: &ControlPlane) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("kube-apiserver.restarted.log"))
            .unwrap();
        let child = Command::new(&self.argv[0])
            .args(&self.argv[1..])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut pids = std::fs::OpenOptions::new()
            .append(true)
            .open(self.dir.join("pids"))
            .unwrap();
        use std::io::Write;
        writeln!(pids, "{}", child.id()).unwrap();
        cp.wait(
            "kube-apiserver to serve again",
            Duration::from_secs(60),
            || cp.kubectl(&["get", "--raw", "/readyz"]).status.success(),
        );
    }
}
