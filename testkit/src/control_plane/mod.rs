//! Starts and supervises a throw-away control plane (etcd, kube-apiserver with RBAC,
//! kube-controller-manager; kube-scheduler on demand) whose binaries
//! `scripts/kube-testenv.sh build` put in the cache.
//!
//! Every process is a `Child` of the test, so whether it still runs is known exactly (no PID
//! file, no command-line matching); each writes its own log, shown when it exits early. Ports
//! are chosen by binding port 0 here. A start that fails stops everything it started; a start
//! lost to another program taking a chosen port is tried again with new ports and a fresh
//! directory.

use crate::process::{self, stop_child};
pub use pki::kubeconfig;
use pki::{make_pki, set_mode, write_kubeconfig};
use std::ffi::OsString;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

mod pki;

const SERVICE_CIDR: &str = "10.96.0.0/16";
/// First address of `SERVICE_CIDR`: the in-cluster `kubernetes` Service, which the serving
/// certificate has to cover.
const SERVICE_IP: &str = "10.96.0.1";
const SA_ISSUER: &str = "https://kubernetes.default.svc";
const START_TIMEOUT: Duration = Duration::from_secs(180);

/// One supervised process of the control plane.
pub struct Proc {
    pub name: String,
    pub argv: Vec<OsString>,
    pub log: PathBuf,
    child: Child,
}

impl Proc {
    /// Runs `argv` with stdout and stderr appended to `log`. `setpriv --pdeathsig KILL` ends it
    /// with the test process, even when that is killed without running any destructor.
    pub fn spawn(name: &str, argv: Vec<OsString>, log: PathBuf) -> Proc {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap_or_else(|e| panic!("opening {}: {e}", log.display()));
        let child = Command::new("setpriv")
            .args(["--pdeathsig", "KILL", "--"])
            .args(&argv)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Proc {
            name: name.to_owned(),
            argv,
            log,
            child,
        }
    }

    /// Its exit status, if it has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last lines of its log, headed by its name.
    pub fn log_tail(&self) -> String {
        format!(
            "--- {} ({})\n{}",
            self.name,
            self.log.display(),
            process::log_tail(&self.log, 30)
        )
    }

    /// SIGKILL, as a crashed or partitioned process goes away, and reap it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then SIGKILL if it has not exited within 10 s.
    pub fn stop(&mut self) {
        stop_child(&mut self.child, Duration::from_secs(10));
    }
}

/// The processes of one control plane, stopped in reverse start order when dropped: the
/// controller manager and the API server shut down cleanly only while what they talk to is
/// still up.
#[derive(Default)]
pub struct Procs(pub Mutex<Vec<Proc>>);

impl Procs {
    pub fn push(&self, p: Proc) {
        self.lock().push(p);
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Proc>> {
        process::lock(&self.0)
    }

    /// Panics with the logs of every process if one has exited.
    fn check_running(&self, waiting_for: &str) -> Result<(), StartFailure> {
        let mut procs = self.lock();
        if let Some(p) = procs
            .iter_mut()
            .find_map(|p| p.exited().map(|s| (p.name.clone(), s)))
        {
            let logs: Vec<String> = procs.iter().map(Proc::log_tail).collect();
            let logs = logs.join("\n");
            return Err(StartFailure {
                port_taken: logs.contains("address already in use"),
                message: format!(
                    "{} exited ({}) while waiting for {waiting_for}\n{logs}",
                    p.0, p.1
                ),
            });
        }
        Ok(())
    }

    fn wait_for(&self, what: &str, mut ready: impl FnMut() -> bool) -> Result<(), StartFailure> {
        let end = Instant::now() + START_TIMEOUT;
        while !ready() {
            self.check_running(what)?;
            if Instant::now() > end {
                let logs: Vec<String> = self.lock().iter().map(Proc::log_tail).collect();
                return Err(StartFailure {
                    port_taken: false,
                    message: format!(
                        "timed out after {START_TIMEOUT:?} waiting for {what}\n{}",
                        logs.join("\n")
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(())
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        let mut procs = self.lock();
        while let Some(mut p) = procs.pop() {
            p.stop();
        }
    }
}

struct StartFailure {
    port_taken: bool,
    message: String,
}

/// A running control plane's processes and how to reach it.
pub struct Launched {
    pub dir: PathBuf,
    pub pki: PathBuf,
    pub kubeconfig: PathBuf,
    pub server: String,
    pub ca_file: PathBuf,
    pub procs: Procs,
}

/// Starts a control plane with its state under `dir` (one fresh subdirectory per attempt).
pub fn launch(dir: &Path, bin: &Path) -> Launched {
    std::fs::create_dir_all(dir).unwrap();
    let pki = dir.join("pki");
    make_pki(&pki);
    let mut failures = Vec::new();
    for attempt in 1..=3 {
        let state = dir.join(format!("attempt-{attempt}"));
        match try_launch(&state, &pki, bin) {
            Ok(l) => return l,
            Err(f) if f.port_taken => failures.push(f.message),
            Err(f) => panic!("the test control plane failed to start: {}", f.message),
        }
    }
    panic!(
        "the test control plane lost its ports to other programs three times:\n{}",
        failures.join("\n\n")
    );
}

/// The static bearer token of `user` in the control plane's `pki`.
fn token_of(pki: &Path, user: &str) -> String {
    let tokens = std::fs::read_to_string(pki.join("tokens.csv")).unwrap();
    tokens
        .lines()
        .find(|l| l.split(',').nth(1) == Some(user))
        .and_then(|l| l.split(',').next())
        .unwrap_or_else(|| panic!("no token for {user} in tokens.csv"))
        .to_owned()
}

/// kube-scheduler for the control plane at `server`, as its own user. Not part of every start:
/// only a real node needs it (the kubelet stand-in places pods itself).
/// `--port=0`/`--secure-port=0`: nothing scrapes its health, and two control planes must not
/// fight over fixed ports.
pub fn scheduler(state: &Path, pki: &Path, bin: &Path, server: &str) -> Proc {
    let kc = state.join("kube-scheduler.kubeconfig");
    let user = "system:kube-scheduler";
    write_kubeconfig(&kc, server, &pki.join("ca.crt"), user, &token_of(pki, user));
    let mut flag = OsString::from("--kubeconfig=");
    flag.push(&kc);
    Proc::spawn(
        "kube-scheduler",
        vec![
            bin.join("kube-scheduler").into_os_string(),
            flag,
            OsString::from("--leader-elect=false"),
            OsString::from("--port=0"),
            OsString::from("--secure-port=0"),
            OsString::from("--profiling=false"),
        ],
        state.join("kube-scheduler.log"),
    )
}

/// Free loopback ports, chosen by the kernel. They are released for the processes to bind,
/// so another program could take one in between; that start then fails and is retried.
fn free_ports<const N: usize>() -> [u16; N] {
    let listeners: Vec<TcpListener> = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    std::array::from_fn(|i| listeners[i].local_addr().unwrap().port())
}

fn try_launch(state: &Path, pki: &Path, bin: &Path) -> Result<Launched, StartFailure> {
    std::fs::create_dir_all(state.join("etcd")).unwrap();
    set_mode(&state.join("etcd"), 0o700);
    let token_of = |user: &str| token_of(pki, user);
    let [etcd_port, peer_port, api_port] = free_ports::<3>();
    let server = format!("https://127.0.0.1:{api_port}");
    let procs = Procs::default();
    let s = |v: &str| OsString::from(v);
    let p = |path: &Path| path.as_os_str().to_owned();
    let flag = |name: &str, path: &Path| {
        let mut f = OsString::from(name);
        f.push("=");
        f.push(path);
        f
    };

    let etcd_url = format!("http://127.0.0.1:{etcd_port}");
    let peer_url = format!("http://127.0.0.1:{peer_port}");
    procs.push(Proc::spawn(
        "etcd",
        vec![
            s("etcd"),
            s("--name=vod-test"),
            flag("--data-dir", &state.join("etcd")),
            s(&format!("--listen-client-urls={etcd_url}")),
            s(&format!("--advertise-client-urls={etcd_url}")),
            s(&format!("--listen-peer-urls={peer_url}")),
            s(&format!("--initial-advertise-peer-urls={peer_url}")),
            s(&format!("--initial-cluster=vod-test={peer_url}")),
            s("--logger=zap"),
            s("--log-outputs=stderr"),
        ],
        state.join("etcd.log"),
    ));
    procs.wait_for(&format!("etcd on {etcd_url}"), || {
        std::net::TcpStream::connect(("127.0.0.1", etcd_port)).is_ok()
    })?;

    // --endpoint-reconciler-type=none: 1.20 refuses loopback addresses in core Endpoints, so
    // reconciling the `kubernetes` Service's Endpoints to 127.0.0.1 would only fail in a loop.
    // --allow-privileged: tests may create privileged pod specs.
    procs.push(Proc::spawn(
        "kube-apiserver",
        vec![
            p(&bin.join("kube-apiserver")),
            s("--bind-address=127.0.0.1"),
            s("--advertise-address=127.0.0.1"),
            s(&format!("--secure-port={api_port}")),
            s("--insecure-port=0"),
            flag("--cert-dir", pki),
            flag("--tls-cert-file", &pki.join("apiserver.crt")),
            flag("--tls-private-key-file", &pki.join("apiserver.key")),
            flag("--client-ca-file", &pki.join("ca.crt")),
            flag("--token-auth-file", &pki.join("tokens.csv")),
            s("--authorization-mode=RBAC"),
            s(&format!("--etcd-servers={etcd_url}")),
            s(&format!("--service-account-issuer={SA_ISSUER}")),
            s(&format!("--api-audiences={SA_ISSUER}")),
            flag("--service-account-key-file", &pki.join("sa.pub")),
            flag("--service-account-signing-key-file", &pki.join("sa.key")),
            s(&format!("--service-cluster-ip-range={SERVICE_CIDR}")),
            s("--endpoint-reconciler-type=none"),
            s("--allow-privileged=true"),
            // A test node's name resolves nowhere: logs and exec go to its address.
            s("--kubelet-preferred-address-types=InternalIP"),
            s("--profiling=false"),
        ],
        state.join("kube-apiserver.log"),
    ));
    let kubeconfig = state.join("kubeconfig");
    let kcm_kubeconfig = state.join("kube-controller-manager.kubeconfig");
    let ca = pki.join("ca.crt");
    write_kubeconfig(
        &kubeconfig,
        &server,
        &ca,
        "vod-admin",
        &token_of("vod-admin"),
    );
    write_kubeconfig(
        &kcm_kubeconfig,
        &server,
        &ca,
        "system:kube-controller-manager",
        &token_of("system:kube-controller-manager"),
    );
    let kubectl = |args: &[&str]| {
        Command::new(bin.join("kubectl"))
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(args)
            .stderr(Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
    };
    procs.wait_for(&format!("kube-apiserver /readyz on {server}"), || {
        kubectl(&["get", "--raw", "/readyz"]).as_deref() == Some("ok")
    })?;

    // --secure-port=0/--port=0: nothing scrapes its health, and two control planes must not
    // fight over its fixed default ports. --leader-elect=false: there is only one.
    procs.push(Proc::spawn(
        "kube-controller-manager",
        vec![
            p(&bin.join("kube-controller-manager")),
            flag("--kubeconfig", &kcm_kubeconfig),
            s("--bind-address=127.0.0.1"),
            s("--secure-port=0"),
            s("--port=0"),
            s("--leader-elect=false"),
            s("--controllers=*"),
            s("--use-service-account-credentials=true"),
            flag("--service-account-private-key-file", &pki.join("sa.key")),
            flag("--root-ca-file", &ca),
            flag("--cluster-signing-cert-file", &ca),
            flag("--cluster-signing-key-file", &pki.join("ca.key")),
            s(&format!("--service-cluster-ip-range={SERVICE_CIDR}")),
            s("--allocate-node-cidrs=false"),
            s("--profiling=false"),
        ],
        state.join("kube-controller-manager.log"),
    ));
    // The ServiceAccount admission plugin of 1.20 rejects pods until the namespace's `default`
    // ServiceAccount has its token Secret.
    procs.wait_for("ServiceAccount default/default and its token", || {
        kubectl(&[
            "-n",
            "default",
            "get",
            "serviceaccount",
            "default",
            "-o",
            "jsonpath={.secrets[0].name}",
        ])
        .is_some_and(|s| !s.trim().is_empty())
    })?;
    Ok(Launched {
        dir: state.to_owned(),
        pki: pki.to_owned(),
        kubeconfig,
        server,
        ca_file: ca,
        procs,
    })
}
