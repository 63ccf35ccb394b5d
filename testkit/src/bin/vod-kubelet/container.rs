//! One container of a pod as a local process: image → command, start, supervision with its
//! readiness and liveness probes (run by `probe`), restarts with back-off, and its end (its
//! process group, kept by `groups`, is terminated as a whole).

use std::{
    collections::HashMap,
    net::Ipv4Addr,
    os::unix::process::ExitStatusExt,
    path::PathBuf,
    process::{ExitStatus, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use k8s_openapi::{
    api::core::v1::{Container, Pod, Probe},
    jiff::Timestamp,
};
use nix::sys::signal::Signal;
use tokio::{
    process::{Child, Command},
    sync::{mpsc, watch},
    time::{sleep, Instant},
};
use tracing::{debug, info};

use crate::{
    events::{Kind as EventKind, PodRef},
    groups::{signal_group, terminate},
    probe::{poll_probe, ProbeState},
    template::{expand_refs, Expansion, Mounts, Template},
    volumes::{self, safe_rel},
    Ctx,
};

/// Upper bound on any grace period, so that tests never wait long for a stuck process.
pub const MAX_GRACE: Duration = Duration::from_secs(10);
/// A container that ran this long before exiting starts its back-off over, as with the kubelet
/// (which uses ten minutes; tests need a shorter memory).
const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(60);
/// Exponential back-off, 2 s doubling to 30 s, the pace the kubelet uses (scaled down).
pub struct Backoff(Duration);

impl Backoff {
    pub fn new() -> Self {
        Backoff(Duration::from_secs(2))
    }

    pub fn next_delay(&mut self) -> Duration {
        let d = self.0;
        self.0 = (d * 2).min(Duration::from_secs(30));
        d
    }
}

/// What every container of one pod shares for as long as the pod runs.
pub struct PodRun {
    pub ctx: Arc<Ctx>,
    pub pod: Arc<Pod>,
    pub pref: PodRef,
    pub ip: Ipv4Addr,
    pub dir: PathBuf,
    pub volumes: HashMap<String, PathBuf>,
    /// Container name → (process group, start time): the content of PGIDS_FILE.
    pub procs: Mutex<HashMap<String, (i32, u64)>>,
}

impl PodRun {
    pub fn restart_policy(&self) -> &str {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.as_deref())
            .unwrap_or("Always")
    }

    /// The pod's termination grace period, capped.
    pub fn grace(&self) -> Duration {
        let secs = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.termination_grace_period_seconds)
            .unwrap_or(30);
        Duration::from_secs(secs.max(0) as u64).min(MAX_GRACE)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Init,
    Main,
}

#[derive(Clone, Debug)]
pub struct Term {
    pub exit_code: i32,
    pub signal: Option<i32>,
    pub reason: String,
    pub message: Option<String>,
    pub started_at: Timestamp,
    pub finished_at: Timestamp,
    pub container_id: Option<String>,
}

#[derive(Clone, Debug)]
pub enum State {
    Waiting {
        reason: String,
        message: Option<String>,
    },
    Running {
        started_at: Timestamp,
    },
    Terminated(Term),
}

/// What the pod status reports for one container.
#[derive(Clone, Debug)]
pub struct Status {
    pub name: String,
    pub image: String,
    pub restart_count: i32,
    pub state: State,
    pub last: Option<Term>,
    pub ready: bool,
    pub started: bool,
    pub container_id: Option<String>,
}

impl Status {
    pub fn new(c: &Container, waiting_reason: &str) -> Self {
        Status {
            name: c.name.clone(),
            image: c.image.clone().unwrap_or_default(),
            restart_count: 0,
            state: State::Waiting {
                reason: waiting_reason.into(),
                message: None,
            },
            last: None,
            ready: false,
            started: false,
            container_id: None,
        }
    }
}

pub struct Update {
    pub kind: Kind,
    pub idx: usize,
    pub status: Status,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Exited 0 and is not restarted (init containers; `restartPolicy` other than Always).
    Succeeded,
    /// Exited non-zero and is not restarted.
    Failed,
    /// Stopped because the pod is going away or vod-kubelet is shutting down.
    Stopped,
}

/// The stop signal of a pod: `Some(grace)` once its containers must end.
pub type StopRx = watch::Receiver<Option<Duration>>;

async fn wait_stop(stop: &mut StopRx) -> Duration {
    match stop.wait_for(Option::is_some).await {
        Ok(g) => g.unwrap_or_default(),
        // The pod worker is gone, so nothing will ever report on this container: end it now.
        Err(_) => Duration::ZERO,
    }
}

/// Sleeps for `d`; true if the pod was stopped meanwhile.
async fn sleep_or_stop(d: Duration, stop: &mut StopRx) -> bool {
    tokio::select! {
        _ = sleep(d) => false,
        _ = wait_stop(stop) => true,
    }
}

/// Runs container `idx` of kind `kind` until it is done for good (see [`Outcome`]), reporting
/// every status change on `tx`.
pub async fn run(
    run: Arc<PodRun>,
    kind: Kind,
    idx: usize,
    tx: mpsc::Sender<Update>,
    mut stop: StopRx,
) -> Outcome {
    let spec = run.pod.spec.as_ref();
    let c = match kind {
        Kind::Init => spec.and_then(|s| s.init_containers.as_ref()?.get(idx)),
        Kind::Main => spec.and_then(|s| s.containers.get(idx)),
    };
    let Some(c) = c.cloned() else {
        return Outcome::Failed;
    };
    let field_path = match kind {
        Kind::Init => format!("spec.initContainers{{{}}}", c.name),
        Kind::Main => format!("spec.containers{{{}}}", c.name),
    };
    let status = Status::new(
        &c,
        match kind {
            Kind::Init => "PodInitializing",
            Kind::Main => "ContainerCreating",
        },
    );
    let mut r = Runner {
        run,
        kind,
        idx,
        c,
        field_path,
        tx,
        status,
    };
    r.main_loop(&mut stop).await
}

struct Runner {
    run: Arc<PodRun>,
    kind: Kind,
    idx: usize,
    c: Container,
    field_path: String,
    tx: mpsc::Sender<Update>,
    status: Status,
}

/// Everything needed to start the container once.
struct Prepared {
    argv: Vec<String>,
    env: Vec<(String, String)>,
    cwd: PathBuf,
}

enum Why {
    Exited,
    Stopped,
    Unhealthy,
}

impl Runner {
    async fn report(&self) {
        let u = Update {
            kind: self.kind,
            idx: self.idx,
            status: self.status.clone(),
        };
        // Fails only when the pod worker has stopped listening, i.e. the pod is being torn down.
        let _ = self.tx.send(u).await;
    }

    fn event(&self, kind: EventKind, reason: &'static str, message: String) {
        self.run.ctx.events.container(
            &self.run.pref,
            self.field_path.clone(),
            kind,
            reason,
            message,
        );
    }

    fn waiting(&mut self, reason: &str, message: Option<String>) {
        self.status.state = State::Waiting {
            reason: reason.into(),
            message,
        };
        self.status.ready = false;
        self.status.started = false;
    }

    async fn main_loop(&mut self, stop: &mut StopRx) -> Outcome {
        let mut backoff = Backoff::new();
        let mut pulled = false;
        let image = self.status.image.clone();
        loop {
            if stop.borrow().is_some() {
                return Outcome::Stopped;
            }
            let ctx = self.run.ctx.clone();
            let Some(template) = ctx.images.resolve(&image) else {
                let pulling = format!("Pulling image {image:?}");
                self.event(EventKind::Normal, "Pulling", pulling);
                let msg = format!("Failed to pull image {image:?}: not available on this node");
                self.waiting("ErrImagePull", Some(msg.clone()));
                self.report().await;
                self.event(EventKind::Warning, "Failed", msg);
                // Mappings are fixed for the life of vod-kubelet, so retrying cannot help.
                wait_stop(stop).await;
                return Outcome::Stopped;
            };
            if pulled {
                let msg = format!("Container image {image:?} already present on machine");
                self.event(EventKind::Normal, "Pulled", msg);
            } else {
                self.event(
                    EventKind::Normal,
                    "Pulling",
                    format!("Pulling image {image:?}"),
                );
                let msg = format!("Successfully pulled image {image:?} in 0s");
                self.event(EventKind::Normal, "Pulled", msg);
                pulled = true;
            }

            let prepared = match self.prepare(template).await {
                Ok(p) => p,
                Err(msg) => {
                    self.waiting("CreateContainerConfigError", Some(msg.clone()));
                    self.report().await;
                    self.event(EventKind::Warning, "Failed", format!("Error: {msg}"));
                    if sleep_or_stop(backoff.next_delay(), stop).await {
                        return Outcome::Stopped;
                    }
                    continue;
                }
            };
            let (mut child, pid) = match self.spawn(&prepared) {
                Ok(x) => x,
                Err(msg) => {
                    self.waiting("RunContainerError", Some(msg.clone()));
                    self.report().await;
                    self.event(EventKind::Warning, "Failed", format!("Error: {msg}"));
                    if sleep_or_stop(backoff.next_delay(), stop).await {
                        return Outcome::Stopped;
                    }
                    continue;
                }
            };
            let started_at = Timestamp::now();
            let started_instant = Instant::now();
            let name = self.c.name.clone();
            self.run.track(&name, pid);
            info!(pod = %self.run.pref, container = %name, pid, argv = ?prepared.argv, "started");
            self.event(
                EventKind::Normal,
                "Created",
                format!("Created container {name}"),
            );
            self.event(
                EventKind::Normal,
                "Started",
                format!("Started container {name}"),
            );
            let container_id = format!("vod://{pid}");
            self.status.state = State::Running { started_at };
            self.status.started = true;
            self.status.ready = self.kind == Kind::Main && self.c.readiness_probe.is_none();
            self.status.container_id = Some(container_id.clone());
            self.report().await;

            let (exit, why) = self.supervise(&mut child, pid, started_instant, stop).await;
            self.run.untrack(&name, pid);

            let (exit_code, signal) = match exit {
                Some(st) => match (st.code(), st.signal()) {
                    (Some(code), _) => (code, None),
                    (None, Some(sig)) => (128 + sig, Some(sig)),
                    (None, None) => (255, None),
                },
                None => (255, None),
            };
            info!(pod = %self.run.pref, container = %name, exit_code, "exited");
            let term = Term {
                exit_code,
                signal,
                reason: if exit_code == 0 { "Completed" } else { "Error" }.into(),
                message: None,
                started_at,
                finished_at: Timestamp::now(),
                container_id: Some(container_id),
            };
            self.status.ready = false;
            self.status.started = false;
            if matches!(why, Why::Stopped) {
                self.status.state = State::Terminated(term);
                self.report().await;
                return Outcome::Stopped;
            }

            let ok = exit_code == 0;
            let policy = self.run.restart_policy().to_string();
            let restart = match self.kind {
                Kind::Init => !ok && policy != "Never",
                Kind::Main => policy == "Always" || (policy == "OnFailure" && !ok),
            };
            if !restart {
                // A completed init container counts as ready, as with the kubelet.
                self.status.ready = self.kind == Kind::Init && ok;
                self.status.state = State::Terminated(term);
                self.report().await;
                return if ok {
                    Outcome::Succeeded
                } else {
                    Outcome::Failed
                };
            }

            if started_instant.elapsed() >= BACKOFF_RESET_AFTER {
                backoff = Backoff::new();
            }
            let delay = backoff.next_delay();
            let msg = "Back-off restarting failed container".to_string();
            match self.kind {
                // The init container keeps showing how it failed until it is retried (kubectl:
                // Init:Error), which is what a caller waiting on it needs to see.
                Kind::Init => self.status.state = State::Terminated(term.clone()),
                Kind::Main => {
                    let p = &self.run.pref;
                    let reason = format!(
                        "back-off {} restarting failed container={name} pod={}_{}({})",
                        humantime::format_duration(delay),
                        p.name,
                        p.namespace,
                        p.uid
                    );
                    self.waiting("CrashLoopBackOff", Some(reason));
                }
            }
            self.status.last = Some(term);
            self.report().await;
            self.event(EventKind::Warning, "BackOff", msg);
            if sleep_or_stop(delay, stop).await {
                return Outcome::Stopped;
            }
            self.status.restart_count += 1;
        }
    }

    async fn prepare(&self, template: &Template) -> Result<Prepared, String> {
        let run = &self.run;
        let env = volumes::container_env(&run.ctx.client, &run.pod, &self.c, run.ip).await?;
        let mut mounts = Mounts::default();
        for vm in self.c.volume_mounts.as_deref().unwrap_or_default() {
            let base = run
                .volumes
                .get(&vm.name)
                .ok_or_else(|| format!("volumeMount {:?}: no volume of that name", vm.name))?;
            let sub = match (&vm.sub_path, &vm.sub_path_expr) {
                (Some(s), _) if !s.is_empty() => Some(s.clone()),
                (_, Some(e)) if !e.is_empty() => Some(expand_refs(e, &env)),
                _ => None,
            };
            let host = match sub {
                Some(sub) => {
                    let rel = safe_rel(&sub)
                        .ok_or_else(|| format!("invalid subPath {sub:?} of {:?}", vm.name))?;
                    let p = base.join(rel);
                    // The kubelet creates a missing subPath as a directory; so do we.
                    if tokio::fs::metadata(&p).await.is_err() {
                        tokio::fs::create_dir_all(&p)
                            .await
                            .map_err(|e| format!("cannot create subPath {}: {e}", p.display()))?;
                    }
                    p
                }
                None => base.clone(),
            };
            mounts.add(&vm.mount_path, host);
        }
        let expand = |words: &Option<Vec<String>>| -> Vec<String> {
            words
                .iter()
                .flatten()
                .map(|a| expand_refs(a, &env))
                .collect()
        };
        let (command, args) = (expand(&self.c.command), expand(&self.c.args));
        let port = self
            .c
            .ports
            .as_ref()
            .and_then(|p| p.first())
            .map(|p| p.container_port);
        let x = Expansion {
            ip: run.ip,
            port,
            mounts: &mounts,
            env: &env,
            command: &command,
            args: &args,
        };
        let argv = template.expand(&x)?;
        // Values like HOME=/vscode/home or a listen address name container paths too.
        let env: Vec<(String, String)> =
            env.iter().map(|(k, v)| (k.clone(), x.rewrite(v))).collect();
        let cwd = self
            .c
            .working_dir
            .as_deref()
            .and_then(|w| mounts.host_path(w))
            .unwrap_or_else(|| run.dir.clone());
        Ok(Prepared { argv, env, cwd })
    }

    fn spawn(&self, p: &Prepared) -> Result<(Child, i32), String> {
        let log_path = self.run.dir.join(format!("{}.log", self.c.name));
        let open = || {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log_path)
                .map_err(|e| format!("cannot open {}: {e}", log_path.display()))
        };
        let (out, err) = (open()?, open()?);
        let Some((program, args)) = p.argv.split_first() else {
            return Err("empty command line".into());
        };
        let mut cmd = Command::new(program);
        cmd.args(args)
            .envs(p.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&p.cwd)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            // Its own group, so that stopping the container reaches everything it started.
            .process_group(0)
            // Backstop if this task is ever dropped without a clean stop.
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .map_err(|e| format!("failed to start {program:?}: {e}"))?;
        let pid = child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .ok_or_else(|| "the process ended before it could be tracked".to_string())?;
        Ok((child, pid))
    }

    /// Waits for the process to exit, the pod to stop, or the liveness probe to fail, probing
    /// readiness meanwhile. Returns the exit status (when known) and why it ended.
    async fn supervise(
        &mut self,
        child: &mut Child,
        pgid: i32,
        started: Instant,
        stop: &mut StopRx,
    ) -> (Option<ExitStatus>, Why) {
        let main = self.kind == Kind::Main;
        let ports = self.c.ports.clone().unwrap_or_default();
        let new_probe = |p: &Option<Probe>, ready_first: bool| {
            p.as_ref()
                .filter(|_| main)
                .map(|p| ProbeState::new(p, &ports, self.run.ip, started, ready_first))
        };
        let mut readiness = new_probe(&self.c.readiness_probe, false);
        let mut liveness = new_probe(&self.c.liveness_probe, true);
        loop {
            tokio::select! {
                st = child.wait() => {
                    // Leftovers of the container (daemonised children) go with it.
                    signal_group(pgid, Signal::SIGKILL);
                    return (st.ok(), Why::Exited);
                }
                grace = wait_stop(stop) => {
                    let st = terminate(child, pgid, grace).await;
                    return (st, Why::Stopped);
                }
                res = poll_probe(readiness.as_mut()) => {
                    let Some(p) = readiness.as_mut() else { continue };
                    let changed = p.record(&res);
                    if let Err(e) = &res {
                        if p.should_warn() {
                            self.event(
                                EventKind::Warning,
                                "Unhealthy",
                                format!("Readiness probe failed: {e}"),
                            );
                        }
                    }
                    if changed {
                        self.status.ready = p.ok;
                        debug!(pod = %self.run.pref, container = %self.c.name, ready = p.ok, "readiness");
                        self.report().await;
                    }
                }
                res = poll_probe(liveness.as_mut()) => {
                    let Some(p) = liveness.as_mut() else { continue };
                    p.record(&res);
                    if let Err(e) = &res {
                        if !p.ok {
                            let name = &self.c.name;
                            self.event(
                                EventKind::Warning,
                                "Unhealthy",
                                format!("Liveness probe failed: {e}"),
                            );
                            self.event(
                                EventKind::Normal,
                                "Killing",
                                format!("Container {name} failed liveness probe, will be restarted"),
                            );
                            let st = terminate(child, pgid, self.run.grace()).await;
                            return (st, Why::Unhealthy);
                        }
                    }
                }
            }
        }
    }
}
