//! The embedded default backend: each instance is a child process on this machine, in its own
//! process group and (see [`super::sandbox`]) its own sandbox, serving on a Unix socket in a
//! directory only this server can open.
//!
//! Layout under the data directory:
//! `instances/<id>.json` (metadata), `instances/<id>/config/` (settings, extensions, the
//! instance's home), `instances/<id>/instance.log`, `instances/<id>/pgid` (for cleanup after a
//! crash), `sockets/<id>/vscode.sock`, `workspaces/<user>/` (shared by all of a user's
//! instances, never deleted by us) and `cache/` (downloaded VS Code CLIs).

use super::readiness::wait_ready;
use super::runtime::{LaunchContext, RuntimeConfig, DOWNLOAD_TIMEOUT};
use super::sandbox::{self, Jail, Sandbox};
use super::store::{write_private, Store};
use super::{Orchestrator, OrchestratorError, Phase, Progress, Result, Started, WorkspaceInfo};
use crate::instance::{AccessToken, InstanceId, InstanceRecord, Upstream, UpstreamAddr, UserId};
use crate::outbound::{system_roots, Outbound};
use async_trait::async_trait;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{oneshot, watch};

/// How long a stopped instance gets between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// The longest path a Unix socket address holds (`sun_path` less its terminating NUL).
const MAX_SOCKET_PATH: usize = 107;

struct Proc {
    pgid: i32,
    exited: watch::Receiver<bool>,
}

pub struct Local {
    data_dir: PathBuf,
    store: Arc<Store>,
    runtime: RuntimeConfig,
    sandbox: Sandbox,
    /// What no instance may see: the data and certificate directories.
    hidden: Vec<PathBuf>,
    download: Outbound,
    procs: Mutex<HashMap<InstanceId, Proc>>,
}

impl Local {
    /// `cert_dir` is hidden from instances too when it lies outside the data directory.
    pub fn new(
        data_dir: PathBuf,
        cert_dir: &Path,
        runtime: RuntimeConfig,
        sandbox: Sandbox,
    ) -> Result<Self> {
        let store = Arc::new(Store::new(data_dir.join("instances"))?);
        std::fs::create_dir_all(data_dir.join("workspaces"))
            .map_err(OrchestratorError::io("creating the workspaces directory"))?;
        let sockets = data_dir.join("sockets");
        std::fs::create_dir_all(&sockets)
            .and_then(|()| {
                std::fs::set_permissions(&sockets, std::fs::Permissions::from_mode(0o700))
            })
            .map_err(OrchestratorError::io(format!(
                "creating {}",
                sockets.display()
            )))?;
        let cert_dir = cert_dir.canonicalize().unwrap_or(cert_dir.to_owned());
        Ok(Self {
            store,
            runtime,
            sandbox,
            hidden: vec![data_dir.clone(), cert_dir],
            download: Outbound::new(system_roots(), DOWNLOAD_TIMEOUT, 512 << 20),
            procs: Mutex::new(HashMap::new()),
            data_dir,
        })
    }

    /// How instances are confined, for the start-up banner.
    pub fn sandbox(&self) -> &Sandbox {
        &self.sandbox
    }

    fn instance_dir(&self, id: &InstanceId) -> PathBuf {
        self.data_dir.join("instances").join(id.as_str())
    }

    fn workspace_dir(&self, user: &UserId) -> PathBuf {
        self.data_dir.join("workspaces").join(user.as_str())
    }

    fn socket_dir(&self, id: &InstanceId) -> PathBuf {
        self.data_dir.join("sockets").join(id.as_str())
    }

    /// An empty socket directory for a start, readable by this server only.
    fn fresh_socket_dir(&self, id: &InstanceId) -> Result<PathBuf> {
        let dir = self.socket_dir(id);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir)
            .and_then(|()| std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)))
            .map_err(OrchestratorError::io(format!("creating {}", dir.display())))?;
        let socket = dir.join(sandbox::SOCKET_NAME);
        if socket.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(OrchestratorError::StartFailed(format!(
                "the socket path {} is longer than the {MAX_SOCKET_PATH} bytes a Unix socket \
                 address holds; choose a shorter --data-dir",
                socket.display()
            )));
        }
        Ok(dir)
    }

    /// Runs a metadata write (which waits for the disk) off the runtime's threads.
    async fn on_disk<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| {
                OrchestratorError::io("writing instance metadata")(std::io::Error::other(e))
            })?
    }

    fn procs(&self) -> std::sync::MutexGuard<'_, HashMap<InstanceId, Proc>> {
        // A panic while holding this lock leaves the map itself consistent (single inserts and
        // removes), so a poisoned lock is safe to keep using.
        self.procs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Kills a process group left behind by a previous run of this server that died without
    /// stopping its instances. The group is only killed if its leader still carries this
    /// instance's marker in its environment (the environment this server gave bwrap, or the
    /// unsandboxed instance), so a recycled PID is never hit.
    fn reap_stale(&self, id: &InstanceId) {
        let pgid_file = self.instance_dir(id).join("pgid");
        let Some(pgid) = std::fs::read_to_string(&pgid_file)
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
        else {
            return;
        };
        let marker = format!("{}={id}", sandbox::MARKER);
        let ours = std::fs::read(format!("/proc/{pgid}/environ"))
            .is_ok_and(|env| env.split(|b| *b == 0).any(|var| var == marker.as_bytes()));
        if ours {
            tracing::warn!(instance = %id, pgid, "killing an instance process left by a previous run");
            let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
        }
        let _ = std::fs::remove_file(pgid_file);
    }
}

/// A free loopback port. Another process could take it before the instance binds it; the
/// instance then fails its start with a clear log line and the next visit retries.
fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(OrchestratorError::io("choosing a port"))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(OrchestratorError::io("choosing a port"))
}

#[async_trait]
impl Orchestrator for Local {
    async fn load(&self) -> Result<Vec<InstanceRecord>> {
        let recs = self.on_disk(|s| s.load_all()).await?;
        for r in &recs {
            self.reap_stale(&r.instance_id);
        }
        Ok(recs)
    }

    async fn create(&self, rec: &InstanceRecord) -> Result<()> {
        let ws = self.workspace_dir(&rec.user_id);
        let cfg = self.instance_dir(&rec.instance_id).join("config");
        for d in [&ws, &cfg] {
            std::fs::create_dir_all(d)
                .map_err(OrchestratorError::io(format!("creating {}", d.display())))?;
        }
        let stored = rec.clone();
        if let Err(e) = self.on_disk(move |s| s.create(&stored)).await {
            let _ = std::fs::remove_dir_all(self.instance_dir(&rec.instance_id));
            return Err(e);
        }
        Ok(())
    }

    async fn save(&self, rec: &InstanceRecord) -> Result<()> {
        let rec = rec.clone();
        self.on_disk(move |s| s.update(&rec)).await
    }

    async fn rotate_token(&self, rec: &InstanceRecord, token: &AccessToken) -> Result<u64> {
        let (rec, token) = (rec.clone(), token.clone());
        self.on_disk(move |s| s.rotate(&rec, &token)).await
    }

    async fn start(&self, rec: &InstanceRecord, progress: Progress) -> Result<Started> {
        let id = &rec.instance_id;
        let dir = self.instance_dir(id);
        let config_dir = dir.join("config");
        let workspace = self.workspace_dir(&rec.user_id);
        for d in [&config_dir.join("home"), &workspace] {
            std::fs::create_dir_all(d)
                .map_err(OrchestratorError::io(format!("creating {}", d.display())))?;
        }
        progress.say("preparing VS Code");
        let socket_dir = self.fresh_socket_dir(id)?;
        let port = if self.runtime.listens_on_port() {
            free_port()?
        } else {
            0
        };
        let sb = &self.sandbox;
        let inner_config = sb.inside(&config_dir, sandbox::CONFIG);
        let inner_workspace = sb.inside(&workspace, sandbox::WORKSPACE);
        let inner_socket = sb
            .inside(&socket_dir, sandbox::SOCKET_DIR)
            .join(sandbox::SOCKET_NAME);
        let base_path = format!("/instances/{id}");
        let cache_dir = self.data_dir.join("cache");
        let ctx = LaunchContext {
            instance_id: id.as_str(),
            user_id: rec.user_id.as_str(),
            port,
            socket: &inner_socket,
            base_path: &base_path,
            workspace: &inner_workspace,
            config_dir: &inner_config,
            vscode_version: &rec.spec.vscode_version,
            cache_dir: &cache_dir,
        };
        let launch = self.runtime.launch(&ctx, &self.download).await?;
        let log_path = dir.join("instance.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(OrchestratorError::io(format!(
                "opening {}",
                log_path.display()
            )))?;
        let log_err = log
            .try_clone()
            .map_err(OrchestratorError::io("duplicating the log handle"))?;
        progress.say(&format!("starting {}", launch.description));
        let env = sandbox::instance_env(&inner_config, port);
        let jail = Jail {
            instance_id: id.as_str(),
            program: &launch.program,
            args: &launch.args,
            workspace: &workspace,
            config_dir: &config_dir,
            socket_dir: &socket_dir,
            hidden: &self.hidden,
            env: &env,
        };
        let mut child = sb
            .command(&jail)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .process_group(0)
            .spawn()
            .map_err(|e| {
                OrchestratorError::StartFailed(format!(
                    "cannot run {}: {e}",
                    launch.program.display()
                ))
            })?;
        let pgid = child.id().map_or(0, |p| p as i32);
        let _ = write_private(&dir.join("pgid"), pgid.to_string().as_bytes());
        let (exit_tx, mut exit_rx) = oneshot::channel();
        let (exited_tx, exited) = watch::channel(false);
        self.procs().insert(id.clone(), Proc { pgid, exited });
        tokio::spawn(async move {
            let reason = match child.wait().await {
                Ok(s) => format!("process exited ({s})"),
                Err(e) => format!("process lost: {e}"),
            };
            // Children the instance left behind go with it.
            let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
            let _ = exited_tx.send(true);
            let _ = exit_tx.send(reason);
        });
        progress.reached(Phase::Spawned);
        progress.say(&format!("waiting for {} to answer", launch.description));
        let addr = if port == 0 {
            UpstreamAddr::Unix(socket_dir.join(sandbox::SOCKET_NAME).into())
        } else {
            UpstreamAddr::Tcp(([127, 0, 0, 1], port).into())
        };
        if let Err(e) = wait_ready(
            &addr,
            &launch.probe_path,
            &mut exit_rx,
            &log_path,
            &progress,
        )
        .await
        {
            let _ = self.stop(id).await;
            return Err(e);
        }
        Ok(Started {
            upstream: Upstream {
                addr,
                strip_prefix: launch.strip_prefix,
                secret: None,
            },
            exited: Some(exit_rx),
        })
    }

    async fn stop(&self, id: &InstanceId) -> Result<()> {
        let Some(mut proc) = self.procs().remove(id) else {
            return Ok(());
        };
        let group = Pid::from_raw(proc.pgid);
        if !*proc.exited.borrow() {
            // The program and everything it started get SIGTERM to save their state and go
            // together (a program waiting for children it alone told to stop would use up the
            // grace); with bwrap they run below the sandbox's init, in sessions of their own.
            for pid in self.sandbox.program_processes(proc.pgid) {
                let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGTERM);
            }
            let exited = tokio::time::timeout(STOP_GRACE, proc.exited.wait_for(|e| *e)).await;
            if exited.is_err() {
                tracing::warn!(instance = %id, "instance ignored SIGTERM; killing it");
            }
        }
        // With bwrap, its death takes the sandbox's PID namespace and everything in it along.
        let _ = killpg(group, Signal::SIGKILL);
        let _ = std::fs::remove_file(self.instance_dir(id).join("pgid"));
        let _ = std::fs::remove_dir_all(self.socket_dir(id));
        Ok(())
    }

    async fn delete(&self, id: &InstanceId) -> Result<()> {
        self.stop(id).await?;
        let gone = id.clone();
        self.on_disk(move |s| s.remove(&gone)).await?;
        let dir = self.instance_dir(id);
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(OrchestratorError::io(format!("removing {}", dir.display()))(e))
            }
            _ => Ok(()),
        }
    }

    fn instances_end_with_server(&self) -> bool {
        true
    }

    async fn workspace(&self, user: &UserId) -> Result<WorkspaceInfo> {
        let meta = std::fs::metadata(self.workspace_dir(user)).ok();
        Ok(WorkspaceInfo {
            exists: meta.as_ref().is_some_and(|m| m.is_dir()),
            created_at: meta
                .and_then(|m| m.created().or_else(|_| m.modified()).ok())
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_secs()),
        })
    }
}
