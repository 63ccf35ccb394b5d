//! The life of one pod bound to this node, from its first sight to its removal: IP and volumes,
//! init containers then the main ones, status reports, graceful deletion and final clean-up.

use std::{
    collections::HashMap,
    net::Ipv4Addr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use k8s_openapi::{api::core::v1::Pod, jiff::Timestamp};
use kube::{
    api::{DeleteParams, Patch, PatchParams, Preconditions},
    Api, ResourceExt,
};
use serde_json::{json, Value};
use tokio::{
    sync::{mpsc, watch},
    task::JoinSet,
    time::{sleep, sleep_until, Instant},
};
use tracing::{debug, info, warn};
use vod_testkit::process::lock;

use crate::{
    container::{self, Backoff, Kind, Outcome, PodRun, State, Status, Term, Update, MAX_GRACE},
    events::{Kind as EventKind, PodRef},
    groups::kill_stale,
    time_str, volumes, Ctx,
};

/// What the watch loop tells a pod worker.
#[derive(Clone, Debug)]
pub enum PodMsg {
    Present(Arc<Pod>),
    /// The pod no longer exists in the API.
    Gone,
}

/// Grace given to containers when vod-kubelet itself shuts down.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// Status changes arriving this close together go out as one patch.
const PATCH_DELAY: Duration = Duration::from_millis(50);
const PATCH_RETRY: Duration = Duration::from_secs(2);

/// Why a pod stops running.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    /// `deletionTimestamp` is set: stop with this grace, then remove the pod from the API.
    Deleted(Duration),
    /// Already gone from the API: stop at once, only local clean-up is left.
    Gone,
    /// vod-kubelet is exiting: stop the processes and leave the pod and its files alone.
    Shutdown,
}

fn is_terminal(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

fn deletion(pod: &Pod) -> Option<Duration> {
    pod.metadata.deletion_timestamp.as_ref()?;
    let secs = pod.metadata.deletion_grace_period_seconds.unwrap_or(30);
    Some(Duration::from_secs(secs.max(0) as u64).min(MAX_GRACE))
}

/// Runs the pod with UID `uid` until it is gone; returns the UID for the caller's bookkeeping.
pub async fn worker(ctx: Arc<Ctx>, uid: String, rx: watch::Receiver<PodMsg>) -> String {
    let dir = ctx.state_dir.join("pods").join(&uid);
    let mut w = Worker {
        ctx,
        uid: uid.clone(),
        dir,
        rx,
        pref: None,
    };
    w.run().await;
    uid
}

struct Worker {
    ctx: Arc<Ctx>,
    uid: String,
    dir: PathBuf,
    rx: watch::Receiver<PodMsg>,
    pref: Option<PodRef>,
}

impl Worker {
    fn current(&self) -> Option<Arc<Pod>> {
        match &*self.rx.borrow() {
            PodMsg::Present(p) => Some(p.clone()),
            PodMsg::Gone => None,
        }
    }

    fn check_end(&self) -> Option<End> {
        if *self.ctx.shutdown.borrow() {
            return Some(End::Shutdown);
        }
        match self.current() {
            None => Some(End::Gone),
            Some(p) => deletion(&p).map(End::Deleted),
        }
    }

    /// Waits until the pod must stop.
    async fn next_end(&mut self) -> End {
        let mut shutdown = self.ctx.shutdown.clone();
        loop {
            if let Some(e) = self.check_end() {
                return e;
            }
            tokio::select! {
                r = self.rx.changed() => if r.is_err() { return End::Shutdown },
                r = shutdown.changed() => if r.is_err() { return End::Shutdown },
            }
        }
    }

    async fn sleep_or_end(&mut self, d: Duration) -> Option<End> {
        tokio::select! {
            _ = sleep(d) => None,
            e = self.next_end() => Some(e),
        }
    }

    async fn run(&mut self) {
        // Whatever a previous vod-kubelet left running for this pod cannot be adopted (its
        // output and exit status are out of reach), so it goes, and the pod starts afresh.
        kill_stale(&self.dir);
        let Some(pod) = self.current() else {
            return self.finish(End::Gone, None).await;
        };
        let pref = PodRef {
            namespace: pod.namespace().unwrap_or_default(),
            name: pod.name_any(),
            uid: self.uid.clone(),
        };
        self.pref = Some(pref.clone());
        if let Some(end) = self.check_end() {
            return self.finish(end, None).await;
        }
        if is_terminal(&pod) {
            let end = self.next_end().await;
            return self.finish(end, None).await;
        }

        let preferred = pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.as_deref())
            .and_then(|ip| ip.parse::<Ipv4Addr>().ok());
        let mut backoff = Backoff::new();
        let ip = loop {
            if let Some(ip) = lock(&self.ctx.ipam).allocate(&self.uid, preferred) {
                break ip;
            }
            let msg = "no free pod IP left in --ip-range".to_string();
            let ev = &self.ctx.events;
            ev.pod(&pref, EventKind::Warning, "FailedCreatePodSandBox", msg);
            if let Some(end) = self.sleep_or_end(backoff.next_delay()).await {
                return self.finish(end, None).await;
            }
        };

        let mut report = Report::new(&pod, pref.clone(), ip);
        let mut backoff = Backoff::new();
        let volumes = loop {
            match volumes::setup(&self.ctx.client, &self.ctx.state_dir, &pod, &self.dir).await {
                Ok(v) => break v,
                Err(msg) => {
                    let ev = &self.ctx.events;
                    ev.pod(&pref, EventKind::Warning, "FailedMount", msg);
                    report.patch(&self.ctx).await;
                    if let Some(end) = self.sleep_or_end(backoff.next_delay()).await {
                        return self.finish(end, None).await;
                    }
                }
            }
        };
        report.patch(&self.ctx).await;

        let run = Arc::new(PodRun {
            ctx: self.ctx.clone(),
            pod: pod.clone(),
            pref: pref.clone(),
            ip,
            dir: self.dir.clone(),
            volumes,
            procs: Mutex::new(HashMap::new()),
        });
        let (stop_tx, stop_rx) = watch::channel(None);
        let (tx, mut updates) = mpsc::channel(64);
        // A JoinSet so that the containers' task is aborted (and their processes killed on drop)
        // should this worker ever be dropped.
        let mut routine = JoinSet::new();
        routine.spawn(containers(run.clone(), tx, stop_rx));

        let mut end: Option<End> = None;
        let mut patch_at: Option<Instant> = None;
        let far = || Instant::now() + Duration::from_secs(3600);
        let outcome = loop {
            tokio::select! {
                Some(u) = updates.recv() => {
                    report.apply(u);
                    patch_at.get_or_insert_with(|| Instant::now() + PATCH_DELAY);
                }
                e = self.next_end(), if end.is_none() => {
                    end = Some(e);
                    let grace = match e {
                        End::Deleted(g) => {
                            for name in report.running() {
                                let msg = format!("Stopping container {name}");
                                self.ctx.events.pod(&pref, EventKind::Normal, "Killing", msg);
                            }
                            g
                        }
                        End::Gone => Duration::ZERO,
                        End::Shutdown => SHUTDOWN_GRACE,
                    };
                    stop_tx.send_replace(Some(grace));
                }
                _ = sleep_until(patch_at.unwrap_or_else(far)), if patch_at.is_some() => {
                    patch_at = None;
                    // After the pod is gone or while shutting down, status reports are moot.
                    if end.is_none() && !report.patch(&self.ctx).await {
                        patch_at = Some(Instant::now() + PATCH_RETRY);
                    }
                }
                done = routine.join_next() => {
                    break match done {
                        Some(Ok(o)) => o,
                        Some(Err(e)) => {
                            warn!(pod = %pref, error = %e, "container task failed");
                            Outcome::Failed
                        }
                        None => Outcome::Failed,
                    };
                }
            }
        };
        // Updates sent just before the containers' task ended.
        while let Ok(u) = updates.try_recv() {
            report.apply(u);
        }
        debug!(pod = %pref, ?outcome, ?end, "containers finished");
        let end = match end {
            Some(e) => e,
            None => {
                // Every container is done for good: the pod has Succeeded or Failed, and stays
                // so until it is deleted.
                report.patch(&self.ctx).await;
                info!(pod = %pref, phase = report.phase(), "pod finished");
                self.next_end().await
            }
        };
        self.finish(end, Some(&mut report)).await;
    }

    /// Ends the pod's presence on this node.
    async fn finish(&mut self, end: End, report: Option<&mut Report>) {
        if end == End::Shutdown {
            return;
        }
        if let (End::Deleted(_), Some(pref)) = (end, &self.pref) {
            if let Some(r) = report {
                // Lets anyone watching see the containers terminated before the pod vanishes.
                r.patch(&self.ctx).await;
            }
            self.delete(pref).await;
        }
        lock(&self.ctx.ipam).release(&self.uid);
        if let Err(e) = tokio::fs::remove_dir_all(&self.dir).await {
            if e.kind() != std::io::ErrorKind::NotFound {
                warn!(dir = %self.dir.display(), error = %e, "cannot remove pod directory");
            }
        }
        if let Some(pref) = &self.pref {
            info!(pod = %pref, "pod removed from node");
        }
    }

    /// Removes the pod object once its containers are gone, as the kubelet does: graceful
    /// deletion only marks it, and nothing else would ever finish the job.
    async fn delete(&self, pref: &PodRef) {
        let api: Api<Pod> = Api::namespaced(self.ctx.client.clone(), &pref.namespace);
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(self.uid.clone()),
                resource_version: None,
            }),
            ..Default::default()
        };
        let mut backoff = Backoff::new();
        let mut shutdown = self.ctx.shutdown.clone();
        // Retried for as long as it takes: once this worker is gone, later events about the pod
        // are ignored, so nobody else would finish it.
        loop {
            match api.delete(&pref.name, &dp).await {
                Ok(_) => return,
                // Gone already, or a different pod of the same name (precondition failed).
                Err(kube::Error::Api(s)) if s.is_not_found() || s.is_conflict() => return,
                Err(e) => {
                    warn!(pod = %pref, error = %e, "cannot delete pod, retrying");
                    tokio::select! {
                        _ = sleep(backoff.next_delay()) => {}
                        _ = shutdown.wait_for(|s| *s) => return,
                    }
                }
            }
        }
    }
}

/// Init containers in order, then all main containers together.
async fn containers(
    run: Arc<PodRun>,
    tx: mpsc::Sender<Update>,
    stop: container::StopRx,
) -> Outcome {
    let spec = run.pod.spec.as_ref();
    let n_init = spec
        .and_then(|s| s.init_containers.as_ref())
        .map_or(0, Vec::len);
    let n_main = spec.map_or(0, |s| s.containers.len());
    for i in 0..n_init {
        let o = container::run(run.clone(), Kind::Init, i, tx.clone(), stop.clone()).await;
        if o != Outcome::Succeeded {
            return o;
        }
    }
    let mut set = JoinSet::new();
    for i in 0..n_main {
        set.spawn(container::run(
            run.clone(),
            Kind::Main,
            i,
            tx.clone(),
            stop.clone(),
        ));
    }
    let mut outcome = Outcome::Succeeded;
    while let Some(r) = set.join_next().await {
        match r {
            Ok(Outcome::Stopped) => outcome = Outcome::Stopped,
            Ok(Outcome::Failed) | Err(_) if outcome != Outcome::Stopped => {
                outcome = Outcome::Failed
            }
            _ => {}
        }
    }
    outcome
}

/// The pod status as vod-kubelet reports it.
struct Report {
    pref: PodRef,
    ip: Ipv4Addr,
    start_time: Timestamp,
    init: Vec<Status>,
    main: Vec<Status>,
    restart_policy: String,
    /// Condition type → (status, lastTransitionTime).
    conditions: HashMap<&'static str, (bool, Timestamp)>,
    /// Set once a patch found the pod gone: no point in trying again.
    gone: bool,
}

impl Report {
    fn new(pod: &Pod, pref: PodRef, ip: Ipv4Addr) -> Self {
        let spec = pod.spec.as_ref();
        let init = spec
            .and_then(|s| s.init_containers.as_ref())
            .map(|cs| {
                cs.iter()
                    .map(|c| Status::new(c, "PodInitializing"))
                    .collect()
            })
            .unwrap_or_default();
        let main_reason =
            if spec.is_some_and(|s| s.init_containers.as_ref().is_some_and(|v| !v.is_empty())) {
                "PodInitializing"
            } else {
                "ContainerCreating"
            };
        let main = spec
            .map(|s| {
                s.containers
                    .iter()
                    .map(|c| Status::new(c, main_reason))
                    .collect()
            })
            .unwrap_or_default();
        // A pod picked up again after vod-kubelet restarted keeps its original start time.
        let start_time = pod
            .status
            .as_ref()
            .and_then(|s| s.start_time.as_ref())
            .map_or_else(Timestamp::now, |t| t.0);
        Report {
            pref,
            ip,
            start_time,
            init,
            main,
            restart_policy: spec
                .and_then(|s| s.restart_policy.clone())
                .unwrap_or_else(|| "Always".into()),
            conditions: HashMap::new(),
            gone: false,
        }
    }

    fn apply(&mut self, u: Update) {
        let list = match u.kind {
            Kind::Init => &mut self.init,
            Kind::Main => &mut self.main,
        };
        if let Some(slot) = list.get_mut(u.idx) {
            *slot = u.status;
        }
    }

    fn running(&self) -> Vec<String> {
        self.init
            .iter()
            .chain(&self.main)
            .filter(|s| matches!(s.state, State::Running { .. }))
            .map(|s| s.name.clone())
            .collect()
    }

    fn initialized(&self) -> bool {
        self.init
            .iter()
            .all(|s| matches!(&s.state, State::Terminated(t) if t.exit_code == 0))
    }

    /// The kubelet's phase rules (`getPhase`).
    fn phase(&self) -> &'static str {
        let init_failed = self
            .init
            .iter()
            .any(|s| matches!(&s.state, State::Terminated(t) if t.exit_code != 0));
        if !self.initialized() {
            return if init_failed && self.restart_policy == "Never" {
                "Failed"
            } else {
                "Pending"
            };
        }
        let (mut running, mut waiting, mut stopped, mut succeeded) = (0, 0, 0, 0);
        for s in &self.main {
            match &s.state {
                State::Running { .. } => running += 1,
                State::Terminated(t) => {
                    stopped += 1;
                    if t.exit_code == 0 {
                        succeeded += 1;
                    }
                }
                State::Waiting { .. } if s.last.is_some() => stopped += 1,
                State::Waiting { .. } => waiting += 1,
            }
        }
        if waiting > 0 {
            "Pending"
        } else if running > 0 {
            "Running"
        } else if stopped == 0 {
            "Pending"
        } else if self.restart_policy == "Always" {
            "Running"
        } else if stopped == succeeded {
            "Succeeded"
        } else if self.restart_policy == "OnFailure" {
            "Running"
        } else {
            "Failed"
        }
    }

    fn condition(&mut self, kind: &'static str, ok: bool, reason: Option<(&str, String)>) -> Value {
        let now = Timestamp::now();
        let entry = self.conditions.entry(kind).or_insert((ok, now));
        if entry.0 != ok {
            *entry = (ok, now);
        }
        let mut c = json!({
            "type": kind,
            "status": if ok { "True" } else { "False" },
            "lastTransitionTime": time_str(entry.1),
        });
        if let (false, Some((reason, message))) = (ok, reason) {
            c["reason"] = reason.into();
            c["message"] = message.into();
        }
        c
    }

    fn status_json(&mut self) -> Value {
        let phase = self.phase();
        let initialized = self.initialized();
        let terminal = matches!(phase, "Succeeded" | "Failed");
        let unready: Vec<&str> = self
            .main
            .iter()
            .filter(|s| !s.ready)
            .map(|s| s.name.as_str())
            .collect();
        let containers_ready = unready.is_empty() && !terminal;
        let unready_msg = format!("containers with unready status: [{}]", unready.join(" "));
        let incomplete: Vec<&str> = self
            .init
            .iter()
            .filter(|s| !matches!(&s.state, State::Terminated(t) if t.exit_code == 0))
            .map(|s| s.name.as_str())
            .collect();
        let init_msg = format!(
            "containers with incomplete status: [{}]",
            incomplete.join(" ")
        );
        let not_ready = if terminal {
            "PodCompleted"
        } else {
            "ContainersNotReady"
        };
        let conditions = vec![
            self.condition(
                "Initialized",
                initialized,
                Some(("ContainersNotInitialized", init_msg)),
            ),
            self.condition(
                "Ready",
                containers_ready,
                Some((not_ready, unready_msg.clone())),
            ),
            self.condition(
                "ContainersReady",
                containers_ready,
                Some((not_ready, unready_msg)),
            ),
            self.condition("PodScheduled", true, None),
        ];
        let ip = self.ip.to_string();
        let mut status = json!({
            "phase": phase,
            "conditions": conditions,
            "hostIP": "127.0.0.1",
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "startTime": time_str(self.start_time),
            "containerStatuses": self.main.iter().map(container_json).collect::<Vec<_>>(),
        });
        if !self.init.is_empty() {
            status["initContainerStatuses"] = self
                .init
                .iter()
                .map(container_json)
                .collect::<Vec<_>>()
                .into();
        }
        status
    }

    /// Sends the whole status; false if it should be retried.
    async fn patch(&mut self, ctx: &Ctx) -> bool {
        if self.gone {
            return true;
        }
        let body = json!({
            // The UID makes the API server refuse the patch should the pod have been replaced
            // by a new one of the same name, as the kubelet's status manager does.
            "metadata": {"uid": self.pref.uid},
            "status": self.status_json(),
        });
        let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &self.pref.namespace);
        match api
            .patch_status(
                &self.pref.name,
                &PatchParams::default(),
                &Patch::Merge(&body),
            )
            .await
        {
            Ok(_) => true,
            Err(kube::Error::Api(s)) if s.is_not_found() || s.is_conflict() => {
                debug!(pod = %self.pref, "pod gone or replaced; no more status reports");
                self.gone = true;
                true
            }
            Err(e) => {
                warn!(pod = %self.pref, error = %e, "cannot report pod status, will retry");
                false
            }
        }
    }
}

fn term_json(t: &Term) -> Value {
    let mut v = json!({
        "exitCode": t.exit_code,
        "reason": t.reason,
        "startedAt": time_str(t.started_at),
        "finishedAt": time_str(t.finished_at),
    });
    if let Some(sig) = t.signal {
        v["signal"] = sig.into();
    }
    if let Some(m) = &t.message {
        v["message"] = m.clone().into();
    }
    if let Some(id) = &t.container_id {
        v["containerID"] = id.clone().into();
    }
    v
}

fn container_json(s: &Status) -> Value {
    let state = match &s.state {
        State::Waiting { reason, message } => {
            let mut w = json!({ "reason": reason });
            if let Some(m) = message {
                w["message"] = m.clone().into();
            }
            json!({ "waiting": w })
        }
        State::Running { started_at } => {
            json!({ "running": { "startedAt": time_str(*started_at) } })
        }
        State::Terminated(t) => json!({ "terminated": term_json(t) }),
    };
    let mut v = json!({
        "name": s.name,
        "image": s.image,
        // There is no registry digest; a stable made-up ID keeps clients that expect one happy.
        "imageID": format!("vod-kubelet://{}", s.image),
        "ready": s.ready,
        "started": s.started,
        "restartCount": s.restart_count,
        "state": state,
        "lastState": s.last.as_ref().map_or_else(|| json!({}), |t| json!({ "terminated": term_json(t) })),
    });
    if let Some(id) = &s.container_id {
        v["containerID"] = id.clone().into();
    }
    v
}
