//! The process groups of containers: each container runs as a group of its own, tracked in
//! memory for the last-resort kill when vod-kubelet exits and on disk (PGIDS_FILE) so that a
//! restarted vod-kubelet can kill what a crashed one left behind; and their termination.

use std::{
    collections::{HashMap, HashSet},
    path::Path,
    process::ExitStatus,
    sync::Mutex,
    time::Duration,
};

use nix::{sys::signal::Signal, unistd::Pid};
use tokio::{process::Child, time::timeout};
use tracing::{info, warn};
use vod_testkit::process::{lock, proc_stat};

use crate::container::PodRun;

/// Name of the file, in the pod directory, that lists the pod's live process groups, so that a
/// restarted vod-kubelet can kill what a crashed one left behind.
pub const PGIDS_FILE: &str = ".pgids";

/// Every process group vod-kubelet started and has not seen end, for the last-resort kill when
/// it exits.
#[derive(Default)]
pub struct ProcGroups(Mutex<HashSet<i32>>);

impl ProcGroups {
    fn add(&self, pgid: i32) {
        lock(&self.0).insert(pgid);
    }

    fn remove(&self, pgid: i32) {
        lock(&self.0).remove(&pgid);
    }

    pub fn kill_all(&self) {
        for pgid in lock(&self.0).drain() {
            signal_group(pgid, Signal::SIGKILL);
        }
    }
}

pub fn signal_group(pgid: i32, sig: Signal) {
    // ESRCH (group already gone) is the normal case after a clean exit.
    if let Err(e) = nix::sys::signal::killpg(Pid::from_raw(pgid), sig) {
        if e != nix::errno::Errno::ESRCH {
            warn!(pgid, signal = %sig, error = %e, "cannot signal process group");
        }
    }
}

/// Start time of a process in clock ticks since boot (field 22 of `/proc/PID/stat`): together
/// with the PID it identifies a process even after the PID is reused.
fn proc_start_time(pid: i32) -> Option<u64> {
    // proc_stat starts at field 3.
    proc_stat(pid)?.get(19)?.parse().ok()
}

/// Kills the process groups listed in `dir`'s PGIDS_FILE that still run (same PID, same start
/// time), i.e. containers left over by a previous vod-kubelet that did not shut down cleanly.
pub fn kill_stale(dir: &Path) {
    let file = dir.join(PGIDS_FILE);
    let Ok(text) = std::fs::read_to_string(&file) else {
        return;
    };
    for line in text.lines() {
        let mut it = line.split_whitespace();
        let (Some(Ok(pgid)), Some(Ok(start))) = (
            it.next().map(str::parse::<i32>),
            it.next().map(str::parse::<u64>),
        ) else {
            continue;
        };
        if pgid > 1 && proc_start_time(pgid) == Some(start) {
            info!(pgid, dir = %dir.display(), "killing a container left over from an earlier run");
            signal_group(pgid, Signal::SIGKILL);
        }
    }
    let _ = std::fs::remove_file(file);
}

impl PodRun {
    pub fn track(&self, name: &str, pgid: i32) {
        self.ctx.groups.add(pgid);
        let start = proc_start_time(pgid).unwrap_or(0);
        let mut procs = lock(&self.procs);
        procs.insert(name.to_string(), (pgid, start));
        self.write_pgids(&procs);
    }

    pub fn untrack(&self, name: &str, pgid: i32) {
        self.ctx.groups.remove(pgid);
        let mut procs = lock(&self.procs);
        procs.remove(name);
        self.write_pgids(&procs);
    }

    fn write_pgids(&self, procs: &HashMap<String, (i32, u64)>) {
        // Written while holding the lock so concurrent containers cannot interleave stale
        // contents; the file is a few lines, so blocking here is negligible.
        let text: String = procs
            .values()
            .map(|(pgid, start)| format!("{pgid} {start}\n"))
            .collect();
        if let Err(e) = std::fs::write(self.dir.join(PGIDS_FILE), text) {
            warn!(pod = %self.pref, error = %e, "cannot record process groups");
        }
    }
}

/// SIGTERM to the group, SIGKILL once `grace` is over, and SIGKILL again for anything of the
/// group that outlived its leader.
pub async fn terminate(child: &mut Child, pgid: i32, grace: Duration) -> Option<ExitStatus> {
    signal_group(pgid, Signal::SIGTERM);
    let st = match timeout(grace, child.wait()).await {
        Ok(st) => st.ok(),
        Err(_) => {
            signal_group(pgid, Signal::SIGKILL);
            child.wait().await.ok()
        }
    };
    signal_group(pgid, Signal::SIGKILL);
    st
}
