//! Processes, as the harness and the kit's programs see them: stopping a child (SIGTERM, a
//! grace period, then SIGKILL), what `/proc` says of a PID, the tail of a log for failure
//! messages, and a lock that outlives a panic.

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::path::Path;
use std::process::{Child, ExitStatus};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How often a wait for a child's exit looks again.
const POLL: Duration = Duration::from_millis(50);

/// Sends SIGTERM (unless the child has exited already) and waits up to `within` for it to
/// exit; `None` if it is still running then.
pub fn terminate(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    if let Ok(Some(status)) = child.try_wait() {
        return Some(status);
    }
    // A PID fits in an i32: the kernel's pid_max is at most 2^22.
    let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
    let end = Instant::now() + within;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() >= end {
            return None;
        }
        std::thread::sleep(POLL);
    }
}

/// SIGTERM, `grace` to exit, then SIGKILL, and the child reaped either way: what every process
/// a test starts gets at the end.
pub fn stop_child(child: &mut Child, grace: Duration) {
    if terminate(child, grace).is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// The fields of `/proc/PID/stat` after the command name, from the state (field 3) on; `None`
/// once the process is gone.
pub fn proc_stat(pid: i32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses; it ends at the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// Whether a process runs. A zombie still answers signal 0, so its state is what tells.
pub fn pid_alive(pid: i32) -> bool {
    proc_stat(pid).is_some_and(|f| f.first().is_some_and(|state| state != "Z"))
}

/// The last `n` lines of a log file, for failure messages.
pub fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Locks `m` even when a thread panicked while holding it: what it guards is plain bookkeeping
/// (processes to stop, addresses handed out), and carrying on with it beats failing everything
/// that runs after.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn a_stopped_child_is_reaped_and_no_longer_alive() {
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id() as i32;
        assert!(pid_alive(pid));
        stop_child(&mut child, Duration::from_secs(5));
        assert!(!pid_alive(pid));
    }

    #[test]
    fn a_child_that_ignores_sigterm_is_killed_after_the_grace_period() {
        let mut child = Command::new("sh")
            .args(["-c", "trap '' TERM; echo ready; exec sleep 30"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Once it has printed, the trap is set.
        let mut line = String::new();
        let out = child.stdout.take().unwrap();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut line).unwrap();
        assert_eq!(terminate(&mut child, Duration::from_millis(300)), None);
        stop_child(&mut child, Duration::from_millis(100));
        assert!(child.try_wait().unwrap().is_some());
    }
}
