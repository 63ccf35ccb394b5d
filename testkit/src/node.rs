//! A real node for the test control plane: containerd (its CRI plugin, runc, the bridge CNI
//! plugin) and a kubelet built from the same Kubernetes source (`scripts/kube-testenv.sh`),
//! supervised like the control plane ([`Procs`]: children of the test, their logs shown when
//! one exits, stopped when dropped).
//!
//! Pods get addresses on a bridge of their own in 198.18.0.0/15 (the benchmarking range, never
//! routed anywhere), with no masquerading, so no pod traffic leaves the machine. Images come
//! from podman's store (`podman save`, `ctr images import`); nothing is pulled. What the
//! pods left behind (containerd's tasks and shims, mounts, the bridge) is removed when the
//! node is dropped.

use crate::control_plane::{Proc, Procs};
use crate::kube::ControlPlane;
use std::ffi::OsString;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The pause image the kubelet of 1.20 asks for by default (`scripts/image-testenv.sh`
/// builds it from the Kubernetes source's `build/pause`).
pub const PAUSE_IMAGE: &str = "k8s.gcr.io/pause:3.2";
const CNI_BIN: &str = "/usr/lib/cni";
const READY_TIMEOUT: Duration = Duration::from_secs(180);

pub struct Node {
    pub name: String,
    pub dir: PathBuf,
    /// The bridge the pods are on, and its subnet.
    pub bridge: String,
    pub subnet: String,
    socket: PathBuf,
    procs: Procs,
}

/// Runs `cmd`, panicking with its output when it fails.
fn run(cmd: &mut Command) -> String {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A bridge name and /24 of 198.18.0.0/15 that no interface of this machine uses yet.
fn free_bridge() -> (String, String) {
    let links = run(Command::new("ip").args(["-o", "link"]));
    let addrs = run(Command::new("ip").args(["-o", "addr"]));
    let start = std::process::id() as usize;
    (0..512)
        .map(|i| (start + i) % 512)
        .map(|n| {
            (
                format!("vodbr{n}"),
                format!("198.{}.{}.0/24", 18 + n / 256, n % 256),
            )
        })
        .find(|(b, s)| {
            !links.contains(&format!(" {b}:")) && !addrs.contains(s.trim_end_matches(".0/24"))
        })
        .expect("a free bridge in 198.18.0.0/15")
}

impl Node {
    /// Starts containerd and a kubelet registered as node `node-1` of `cp`, with `images`
    /// (names in podman's store) loaded into containerd besides the pause image.
    pub fn start(cp: &ControlPlane, dir: &Path, images: &[&str]) -> Node {
        let kubelet = cp.bin.join("kubelet");
        assert!(
            kubelet.exists(),
            "the kubelet is not built: run `scripts/kube-testenv.sh build` (or scripts/test.sh)"
        );
        std::fs::create_dir_all(dir.join("cni")).unwrap();
        let (bridge, subnet) = free_bridge();
        let socket = dir.join("containerd.sock");
        let config = dir.join("containerd.toml");
        let d = dir.display();
        std::fs::write(
            &config,
            format!(
                r#"version = 2
root = "{d}/containerd"
state = "{d}/containerd-state"
[grpc]
  address = "{d}/containerd.sock"
[ttrpc]
  address = "{d}/containerd-ttrpc.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN}"
    conf_dir = "{d}/cni"
"#
            ),
        )
        .unwrap();
        std::fs::write(
            dir.join("cni/10-vod.conflist"),
            serde_json::json!({
                "cniVersion": "0.4.0",
                "name": "vod",
                "plugins": [{
                    "type": "bridge", "bridge": bridge, "isGateway": true,
                    "ipMasq": false, "hairpinMode": true,
                    "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]],
                             "dataDir": format!("{d}/cni-ipam")},
                }],
            })
            .to_string(),
        )
        .unwrap();
        let procs = Procs::default();
        let node = Node {
            name: "node-1".to_owned(),
            dir: dir.to_owned(),
            bridge,
            subnet,
            socket: socket.clone(),
            procs,
        };
        // The bridge exists before the first pod (the CNI plugin takes it as it is), so the
        // kubelet can listen on its address and register it as the node's.
        let gateway = format!("{}/24", node.gateway());
        run(Command::new("ip").args(["link", "add", &node.bridge, "type", "bridge"]));
        run(Command::new("ip").args(["addr", "add", &gateway, "dev", &node.bridge]));
        run(Command::new("ip").args(["link", "set", &node.bridge, "up"]));
        node.procs.push(Proc::spawn(
            "containerd",
            vec![
                OsString::from("containerd"),
                OsString::from("--config"),
                config.into_os_string(),
            ],
            dir.join("containerd.log"),
        ));
        node.wait("containerd's socket", || {
            node.ctr(&["version"]).status.success()
        });
        for image in std::iter::once(PAUSE_IMAGE).chain(images.iter().copied()) {
            node.load(image);
        }
        let port = TcpListener::bind((node.gateway().as_str(), 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let s = |v: String| OsString::from(v);
        node.procs.push(Proc::spawn(
            "kubelet",
            vec![
                kubelet.into_os_string(),
                s(format!("--kubeconfig={}", cp.kubeconfig.display())),
                s(format!("--hostname-override={}", node.name)),
                s(format!("--root-dir={d}/kubelet")),
                s(format!("--cert-dir={d}/kubelet-pki")),
                s("--container-runtime=remote".into()),
                s(format!(
                    "--container-runtime-endpoint=unix://{}",
                    socket.display()
                )),
                s("--cgroup-driver=cgroupfs".into()),
                s("--cgroups-per-qos=false".into()),
                s("--enforce-node-allocatable=".into()),
                s("--fail-swap-on=false".into()),
                s(format!("--pod-infra-container-image={PAUSE_IMAGE}")),
                s(format!("--address={}", node.gateway())),
                s(format!("--port={port}")),
                s("--read-only-port=0".into()),
                s("--healthz-port=0".into()),
                s("--image-gc-high-threshold=100".into()),
                s("--eviction-hard=".into()),
                s("--register-node=true".into()),
                // The API server reaches the kubelet (logs, exec) where it listens.
                s(format!("--node-ip={}", node.gateway())),
                s("--v=2".into()),
            ],
            dir.join("kubelet.log"),
        ));
        node.wait("the node to be Ready", || {
            cp.kubectl(&[
                "get",
                "node",
                &node.name,
                "-o",
                r#"jsonpath={.status.conditions[?(@.type=="Ready")].status}"#,
            ])
            .stdout
                == b"True"
        });
        node
    }

    /// A hostPath PersistentVolume `name` of this node, as a local-path provisioner makes them:
    /// a directory anyone may write (hostPath volumes are not given to the pod's fsGroup), no
    /// storage class. With `claim` (namespace, name) it is bound in advance to that claim, so
    /// a test knows where the claim's files land; without, any claim may take it.
    pub fn host_path_volume(
        &self,
        cp: &ControlPlane,
        name: &str,
        claim: Option<(&str, &str)>,
    ) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let dir = self.dir.join("volumes").join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let mut pv = serde_json::json!({
            "apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": name},
            "spec": {
                "capacity": {"storage": "100Gi"},
                "accessModes": ["ReadWriteOnce", "ReadWriteMany"],
                "persistentVolumeReclaimPolicy": "Retain",
                "hostPath": {"path": dir, "type": "Directory"},
            },
        });
        if let Some((ns, claim)) = claim {
            pv["spec"]["claimRef"] = serde_json::json!({"namespace": ns, "name": claim});
        }
        let file = self.dir.join(format!("pv-{name}.json"));
        std::fs::write(&file, pv.to_string()).unwrap();
        cp.ok(&["apply", "-f", &file.to_string_lossy()]);
        dir
    }

    /// The bridge's own address, the pods' gateway.
    pub fn gateway(&self) -> String {
        self.subnet.replace(".0/24", ".1")
    }

    /// `ctr` against this node's containerd, in the CRI's namespace.
    pub fn ctr(&self, args: &[&str]) -> std::process::Output {
        Command::new("ctr")
            .arg("--address")
            .arg(&self.socket)
            .args(["--namespace", "k8s.io"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run ctr")
    }

    /// What the containers of the pods in `ns` whose names start with `pod` printed, every run
    /// of them, from the files the kubelet keeps in `/var/log/pods` (`kubectl logs` shows one
    /// run).
    pub fn container_logs(&self, ns: &str, pod: &str) -> String {
        let prefix = format!("{ns}_{pod}");
        let mut out = String::new();
        for dir in std::fs::read_dir("/var/log/pods")
            .into_iter()
            .flatten()
            .flatten()
        {
            if !dir.file_name().to_string_lossy().starts_with(&prefix) {
                continue;
            }
            for c in std::fs::read_dir(dir.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                for f in std::fs::read_dir(c.path()).into_iter().flatten().flatten() {
                    out += &format!("--- {}\n", f.path().display());
                    out += &crate::process::log_tail(&f.path(), 30);
                    out.push('\n');
                }
            }
        }
        out
    }

    /// Copies `image` from podman's store into containerd's.
    fn load(&self, image: &str) {
        let archive = self.dir.join("image.tar");
        let _ = std::fs::remove_file(&archive);
        run(Command::new("podman")
            .args(["save", "--quiet", "--format", "oci-archive", "-o"])
            .arg(&archive)
            .arg(image));
        let out = self.ctr(&[
            "images",
            "import",
            "--base-name",
            image,
            &archive.to_string_lossy(),
        ]);
        assert!(
            out.status.success(),
            "importing {image} into containerd: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let _ = std::fs::remove_file(&archive);
    }

    /// Polls `ready` for up to three minutes; fails with the node's logs if containerd or the
    /// kubelet exits meanwhile, or on the deadline.
    pub fn wait(&self, what: &str, mut ready: impl FnMut() -> bool) {
        let end = Instant::now() + READY_TIMEOUT;
        while !ready() {
            let logs: Vec<String> = self.procs.lock().iter().map(Proc::log_tail).collect();
            let mut procs = self.procs.lock();
            if let Some((name, status)) = procs
                .iter_mut()
                .find_map(|p| p.exited().map(|s| (p.name.clone(), s)))
            {
                panic!(
                    "{name} exited ({status}) while waiting for {what}\n{}",
                    logs.join("\n")
                );
            }
            drop(procs);
            assert!(
                Instant::now() < end,
                "timed out after {READY_TIMEOUT:?} waiting for {what}\n{}",
                logs.join("\n")
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // The kubelet first, so it starts nothing more; then every container containerd runs
        // (their shims outlive containerd), then containerd, its mounts and the bridge.
        if let Some(mut k) = {
            let mut procs = self.procs.lock();
            procs
                .iter()
                .position(|p| p.name == "kubelet")
                .map(|i| procs.remove(i))
        } {
            k.stop();
        }
        // The pods' network namespaces, which outlive their containers.
        let containers = self.ctr(&["containers", "ls", "--quiet"]);
        let netns: Vec<String> = String::from_utf8_lossy(&containers.stdout)
            .lines()
            .filter_map(|id| {
                let info = self.ctr(&["containers", "info", id]).stdout;
                let info: serde_json::Value = serde_json::from_slice(&info).ok()?;
                info["Spec"]["linux"]["namespaces"]
                    .as_array()?
                    .iter()
                    .find(|n| n["type"] == "network")?["path"]
                    .as_str()
                    .filter(|p| !p.is_empty())
                    .map(str::to_owned)
            })
            .collect();
        // The kubelet keeps containers' logs in /var/log/pods/<ns>_<pod>_<uid>.
        let pod_uids: Vec<String> = String::from_utf8_lossy(&containers.stdout)
            .lines()
            .filter_map(|id| {
                let info = self.ctr(&["containers", "info", id]).stdout;
                let info: serde_json::Value = serde_json::from_slice(&info).ok()?;
                info["Labels"]["io.kubernetes.pod.uid"]
                    .as_str()
                    .map(str::to_owned)
            })
            .collect();
        for dir in std::fs::read_dir("/var/log/pods")
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = dir.file_name().to_string_lossy().into_owned();
            if pod_uids.iter().any(|u| name.ends_with(&format!("_{u}"))) {
                let _ = std::fs::remove_dir_all(dir.path());
            }
        }
        let tasks = self.ctr(&["tasks", "ls", "--quiet"]);
        for id in String::from_utf8_lossy(&tasks.stdout).lines() {
            let _ = self.ctr(&["tasks", "kill", "--signal", "SIGKILL", id]);
        }
        let end = Instant::now() + Duration::from_secs(15);
        while Instant::now() < end
            && !String::from_utf8_lossy(&self.ctr(&["tasks", "ls", "--quiet"]).stdout)
                .trim()
                .is_empty()
        {
            std::thread::sleep(Duration::from_millis(200));
        }
        for id in String::from_utf8_lossy(&tasks.stdout).lines() {
            let _ = self.ctr(&["tasks", "delete", "--force", id]);
        }
        self.procs.lock().drain(..).rev().for_each(|mut p| p.stop());
        // Mounts under the node's directory (overlays, shm, the kubelet's volumes), deepest
        // first.
        let dir = self.dir.to_string_lossy().into_owned();
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let mut ours: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split(' ').nth(1))
            .filter(|m| m.starts_with(&dir))
            .collect();
        ours.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in ours {
            let _ = Command::new("umount").args(["-l", m]).status();
        }
        for path in netns {
            let _ = Command::new("umount")
                .arg(&path)
                .stderr(Stdio::null())
                .status();
            let _ = std::fs::remove_file(&path);
        }
        let _ = Command::new("ip")
            .args(["link", "delete", &self.bridge])
            .stderr(Stdio::null())
            .status();
    }
}
