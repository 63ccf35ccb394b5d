#![forbid(unsafe_code)]
//! `vod-kubelet`: a test-only stand-in for both the scheduler and the kubelet of a Kubernetes
//! control plane on a machine without any container engine.
//!
//! It registers a Node, binds every unscheduled pod to it, and runs the containers of the pods
//! bound to it as local processes: an image is mapped to a command line by `--image
//! IMAGE=TEMPLATE`, each pod gets its own loopback address from `--ip-range`, volumes become
//! directories under `--state-dir` (a PersistentVolumeClaim keeps its directory across pods, so a
//! workspace survives scale to zero), and pod status, conditions and Events are reported the way
//! a kubelet reports them, closely enough for a client that only watches the API.
//!
//! Not emulated: resource limits, security contexts, affinity and taints (every pod lands on
//! this node), exec probes (they pass), startup probes, and service account token projection.
//!
//! Layout of `--state-dir`:
//! - `pvc/<namespace>/<claim>/`: PersistentVolumeClaim volumes, never removed.
//! - `pods/<uid>/`: one per pod: emptyDir, secret and configMap volumes (`<volume>/`), container
//!   output (`<container>.log`) and the working directory of containers without a `workingDir`
//!   under a mount. Removed with the pod.

mod container;
mod events;
mod groups;
mod ipam;
mod node;
mod pod;
mod probe;
mod template;
mod volumes;

use std::{
    collections::{HashMap, HashSet, VecDeque},
    io::IsTerminal,
    path::{Path, PathBuf},
    pin::pin,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context as _;
use clap::Parser;
use futures_util::StreamExt;
use k8s_openapi::{
    api::core::v1::{Binding, ObjectReference, Pod},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
    jiff::Timestamp,
};
use kube::{
    api::PostParams,
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{watcher, WatchStreamExt},
    Api, Client, ResourceExt,
};
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::watch,
    task::{Id, JoinSet},
    time::{sleep, timeout},
};
use tracing::{debug, error, info, warn};
use vod_testkit::process::lock;

use crate::{
    container::Backoff,
    events::{Kind as EventKind, PodRef, Recorder},
    groups::{kill_stale, ProcGroups},
    ipam::{IpRange, Ipam},
    pod::PodMsg,
    template::{ImageMap, ImageMapping},
};

#[derive(Parser, Debug)]
#[command(
    about = "Test-only scheduler + kubelet that runs pods as local processes",
    after_help = "TEMPLATE is split on whitespace (no shell) and expanded for each container:\n  \
        {ip}            the pod IP\n  \
        {port}          the container's first containerPort\n  \
        {mount:/path}   the host directory behind /path (a volumeMount, or below one)\n  \
        {args}          the container's command + args, one word each\n  \
        {command}       only its command\n  \
        {args-only}     only its args\n  \
        {env:NAME}      a variable of the container (else of vod-kubelet)\n\
        In the container's words and env values, paths under a mountPath become host paths \
        (at the start of a word, after '=' or ':', or inside an sh -c script), and the \
        any-address (0.0.0.0, ::) becomes the pod IP. IMAGE matches exactly, or as a prefix \
        when it ends in '*'; an exact match wins over a prefix, a longer prefix over a shorter \
        one.\n\n\
        Example: --image 'busybox=python3 -m http.server {port} --bind {ip}'"
)]
struct Args {
    /// Kubeconfig of the control plane to serve.
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: PathBuf,
    /// Name of the Node to register and bind pods to.
    #[arg(long, default_value = "vod-node")]
    node_name: String,
    /// Directory for pod and volume data (created if missing).
    #[arg(long)]
    state_dir: PathBuf,
    /// Only schedule and run pods of this namespace (default: all namespaces).
    #[arg(long)]
    namespace: Option<String>,
    /// Pod IPs: FIRST-LAST (inclusive) or a single address.
    #[arg(long, default_value = "127.0.0.2-127.0.0.254")]
    ip_range: IpRange,
    /// IMAGE=TEMPLATE: the command line that stands for IMAGE (repeatable).
    #[arg(long = "image", value_name = "IMAGE=TEMPLATE")]
    images: Vec<ImageMapping>,
}

/// What every task shares.
pub struct Ctx {
    pub client: Client,
    pub node: String,
    pub state_dir: PathBuf,
    pub images: ImageMap,
    pub ipam: Mutex<Ipam>,
    pub events: Recorder,
    /// Turns true once when vod-kubelet is asked to exit.
    pub shutdown: watch::Receiver<bool>,
    pub groups: ProcGroups,
}

/// `metav1.Time` as text: RFC 3339 in UTC, whole seconds (the API's own precision).
pub fn time_str(t: Timestamp) -> String {
    Timestamp::from_second(t.as_second())
        .unwrap_or(t)
        .to_string()
}

/// How many finished pod UIDs are remembered (see `Scheduler::finished`); UIDs are never
/// reused, so this only has to outlast the few events that trail a pod's removal.
const FINISHED_MEMORY: usize = 256;
/// How long vod-kubelet waits on exit for pods to stop before killing what is left.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(8);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colour codes only clutter the log files that tests redirect stderr to.
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();

    let images = ImageMap::new(args.images);
    if images.is_empty() {
        warn!("no --image mappings: every container will fail with ErrImagePull");
    }
    std::fs::create_dir_all(args.state_dir.join("pods"))
        .with_context(|| format!("creating {}", args.state_dir.display()))?;
    // Absolute, because host paths are handed to processes that run in other directories.
    let state_dir = std::fs::canonicalize(&args.state_dir)
        .with_context(|| format!("resolving {}", args.state_dir.display()))?;

    let kubeconfig = Kubeconfig::read_from(&args.kubeconfig)
        .with_context(|| format!("reading {}", args.kubeconfig.display()))?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .context("loading the kubeconfig")?;
    let client = Client::try_from(config).context("creating the API client")?;

    let (shutdown_tx, shutdown) = watch::channel(false);
    let ctx = Arc::new(Ctx {
        events: Recorder::start(client.clone(), args.node_name.clone()),
        client: client.clone(),
        node: args.node_name.clone(),
        state_dir,
        images,
        ipam: Mutex::new(Ipam::new(args.ip_range)),
        shutdown,
        groups: ProcGroups::default(),
    });
    info!(node = %ctx.node, state_dir = %ctx.state_dir.display(), "vod-kubelet starting");

    let node_task = tokio::spawn(node::run(
        client.clone(),
        ctx.node.clone(),
        ctx.shutdown.clone(),
    ));

    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;

    let pods: Api<Pod> = match &args.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let mut sched = Scheduler::new(ctx.clone());
    let mut stream = pin!(watcher(pods, watcher::Config::default()).default_backoff());
    loop {
        tokio::select! {
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            Some(done) = sched.workers.join_next_with_id() => sched.worker_done(done),
            Some(done) = sched.bindings.join_next() => {
                if let Ok(uid) = done {
                    sched.binding.remove(&uid);
                }
            }
            ev = stream.next() => match ev {
                Some(Ok(ev)) => sched.on_event(ev),
                Some(Err(e)) => warn!(error = %e, "pod watch failed; retrying"),
                None => {
                    error!("pod watch ended");
                    break;
                }
            },
        }
    }

    info!("shutting down: stopping all containers");
    shutdown_tx.send_replace(true);
    let workers = &mut sched.workers;
    let drain = async { while workers.join_next().await.is_some() {} };
    if timeout(SHUTDOWN_WAIT, drain).await.is_err() {
        warn!("pods did not stop in time");
    }
    // Anything still alive (a stuck stop, a task that never got to run) is killed outright.
    ctx.groups.kill_all();
    node_task.abort();
    info!("stopped");
    Ok(())
}

/// The watch loop's state: pod workers by UID, bindings in flight, and re-list bookkeeping.
struct Scheduler {
    ctx: Arc<Ctx>,
    workers: JoinSet<String>,
    senders: HashMap<String, watch::Sender<PodMsg>>,
    task_uids: HashMap<Id, String>,
    bindings: JoinSet<String>,
    binding: HashSet<String>,
    /// Recently finished pods, oldest first: watch events still in flight for a pod that was
    /// just removed must not start a new worker for it.
    finished: VecDeque<String>,
    /// UIDs seen since the watcher started a (re-)list; `None` outside of one.
    relist: Option<HashSet<String>>,
    first_sync_done: bool,
}

impl Scheduler {
    fn new(ctx: Arc<Ctx>) -> Self {
        Scheduler {
            ctx,
            workers: JoinSet::new(),
            senders: HashMap::new(),
            task_uids: HashMap::new(),
            bindings: JoinSet::new(),
            binding: HashSet::new(),
            finished: VecDeque::new(),
            relist: None,
            first_sync_done: false,
        }
    }

    fn on_event(&mut self, ev: watcher::Event<Pod>) {
        match ev {
            watcher::Event::Init => self.relist = Some(HashSet::new()),
            watcher::Event::InitApply(pod) | watcher::Event::Apply(pod) => self.on_pod(pod),
            watcher::Event::Delete(pod) => {
                if let Some(tx) = pod.uid().and_then(|uid| self.senders.get(&uid)) {
                    tx.send_replace(PodMsg::Gone);
                }
            }
            watcher::Event::InitDone => {
                // Pods that vanished while the watch was down never got a Delete event.
                let seen = self.relist.take().unwrap_or_default();
                for (uid, tx) in &self.senders {
                    if !seen.contains(uid) {
                        tx.send_replace(PodMsg::Gone);
                    }
                }
                if !self.first_sync_done {
                    self.first_sync_done = true;
                    let known: HashSet<String> = self.senders.keys().cloned().collect();
                    let dir = self.ctx.state_dir.join("pods");
                    tokio::task::spawn_blocking(move || remove_stale_pod_dirs(&dir, &known));
                }
            }
        }
    }

    fn on_pod(&mut self, pod: Pod) {
        let Some(uid) = pod.uid() else { return };
        if let Some(seen) = self.relist.as_mut() {
            seen.insert(uid.clone());
        }
        let node_name = pod.spec.as_ref().and_then(|s| s.node_name.clone());
        match node_name {
            None => {
                let terminal = matches!(
                    pod.status.as_ref().and_then(|s| s.phase.as_deref()),
                    Some("Succeeded" | "Failed")
                );
                if pod.metadata.deletion_timestamp.is_none()
                    && !terminal
                    && self.binding.insert(uid.clone())
                {
                    let pref = PodRef {
                        namespace: pod.namespace().unwrap_or_default(),
                        name: pod.name_any(),
                        uid,
                    };
                    self.bindings.spawn(bind(self.ctx.clone(), pref));
                }
            }
            Some(n) if n == self.ctx.node => {
                if self.finished.contains(&uid) {
                    return;
                }
                let pod = Arc::new(pod);
                match self.senders.get(&uid) {
                    Some(tx) => {
                        tx.send_replace(PodMsg::Present(pod));
                    }
                    None => {
                        debug!(pod = %pod.name_any(), %uid, "new pod on this node");
                        let (tx, rx) = watch::channel(PodMsg::Present(pod));
                        let h = self
                            .workers
                            .spawn(pod::worker(self.ctx.clone(), uid.clone(), rx));
                        self.task_uids.insert(h.id(), uid.clone());
                        self.senders.insert(uid, tx);
                    }
                }
            }
            Some(_) => {}
        }
    }

    fn worker_done(&mut self, done: Result<(Id, String), tokio::task::JoinError>) {
        let id = match &done {
            Ok((id, _)) => *id,
            Err(e) => {
                error!(error = %e, "pod worker failed");
                e.id()
            }
        };
        if let Some(uid) = self.task_uids.remove(&id) {
            self.senders.remove(&uid);
            if self.finished.len() >= FINISHED_MEMORY {
                self.finished.pop_front();
            }
            self.finished.push_back(uid.clone());
            if done.is_err() {
                // The worker cannot clean up after a panic; at least free the address.
                lock(&self.ctx.ipam).release(&uid);
            }
        }
    }
}

/// Binds the pod to this node through the `pods/binding` subresource, as a scheduler does.
async fn bind(ctx: Arc<Ctx>, pref: PodRef) -> String {
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &pref.namespace);
    let binding = Binding {
        metadata: ObjectMeta {
            name: Some(pref.name.clone()),
            namespace: Some(pref.namespace.clone()),
            uid: Some(pref.uid.clone()),
            ..Default::default()
        },
        target: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Node".into()),
            name: Some(ctx.node.clone()),
            ..Default::default()
        },
    };
    let mut backoff = Backoff::new();
    for _ in 0..5 {
        let res: kube::Result<serde_json::Value> = api
            .create_subresource("binding", &pref.name, &PostParams::default(), &binding)
            .await;
        match res {
            Ok(_) => {
                let msg = format!(
                    "Successfully assigned {}/{} to {}",
                    pref.namespace, pref.name, ctx.node
                );
                ctx.events.pod(&pref, EventKind::Normal, "Scheduled", msg);
                break;
            }
            // Bound meanwhile, or deleted: either way there is nothing left to do.
            Err(kube::Error::Api(s)) if s.is_conflict() || s.is_not_found() => break,
            Err(e) => {
                warn!(pod = %pref, error = %e, "binding failed, retrying");
                sleep(backoff.next_delay()).await;
            }
        }
    }
    pref.uid
}

/// Removes pod directories (and kills leftover processes) of pods that no longer exist, i.e.
/// that were deleted while vod-kubelet was not running.
fn remove_stale_pod_dirs(dir: &Path, known: &HashSet<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if known.contains(&name) {
            continue;
        }
        let path = entry.path();
        kill_stale(&path);
        match std::fs::remove_dir_all(&path) {
            Ok(()) => info!(dir = %path.display(), "removed directory of a pod that is gone"),
            Err(e) => warn!(dir = %path.display(), error = %e, "cannot remove stale pod directory"),
        }
    }
}
