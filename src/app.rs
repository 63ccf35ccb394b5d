//! The composition root: builds every part from the config, owns the shutdown token, and
//! stops every instance on the way out.

use crate::config::{Backend, ServeConfig};
use crate::error::StartupError;
use crate::instance::{AccessToken, SpecDefaults, State};
use crate::lifecycle::{Lifecycle, Reaper};
use crate::orchestrator::kube::{Kube, KubeSettings};
use crate::orchestrator::local::Local;
use crate::orchestrator::sandbox::Sandbox;
use crate::orchestrator::Orchestrator;
use crate::registry::Registry;
use crate::server::{self, ServerLimits};
use crate::state::Shared;
use crate::tls;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A built, bound server, ready to run.
pub struct App {
    cfg: ServeConfig,
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    shared: Arc<Shared>,
    lifecycle: Arc<Lifecycle>,
    shutdown: CancellationToken,
    /// What a person needs to use the server, printed by `main`.
    pub info: ServerInfo,
}

#[derive(Debug, Clone)]
pub struct ServerInfo {
    pub addr: SocketAddr,
    pub public_url: String,
    pub ca_cert: PathBuf,
    pub admin_token: String,
    pub token_file: Option<PathBuf>,
    pub data_dir: PathBuf,
    pub instances: usize,
    /// How local instances are confined (none for the kube backend, whose pods are).
    pub sandbox: Option<String>,
}

fn data_err(path: &Path) -> impl FnOnce(std::io::Error) -> StartupError + '_ {
    move |source| StartupError::DataDir {
        path: path.display().to_string(),
        source,
    }
}

/// The admin token: from the config, else read from (or generated once into) the data dir.
fn admin_token(
    cfg: &ServeConfig,
    data_dir: &Path,
) -> Result<(AccessToken, Option<PathBuf>), StartupError> {
    if let Some(t) = &cfg.admin_token {
        let t = t.trim();
        if t.len() < 16 || !t.bytes().all(|c| c.is_ascii_graphic()) {
            return Err(StartupError::WeakToken);
        }
        return Ok((AccessToken::from_secret(t.to_owned()), None));
    }
    let path = data_dir.join("admin-token");
    match std::fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => {
            Ok((AccessToken::from_secret(s.trim().to_owned()), Some(path)))
        }
        _ => {
            let t = AccessToken::generate();
            crate::orchestrator::write_private(&path, format!("{}\n", t.expose()).as_bytes())
                .map_err(data_err(&path))?;
            Ok((t, Some(path)))
        }
    }
}

fn public_url(cfg: &ServeConfig, addr: SocketAddr) -> Result<(String, String), StartupError> {
    let url = cfg
        .public_url
        .clone()
        .unwrap_or_else(|| format!("https://localhost:{}", addr.port()));
    let url = url.trim_end_matches('/').to_owned();
    let host = url
        .strip_prefix("https://")
        .filter(|h| !h.is_empty() && !h.contains('/'))
        .ok_or_else(|| StartupError::PublicUrl(url.clone()))?;
    let host = match host.rsplit_once(':') {
        Some((h, p)) if p.parse::<u16>().is_ok() => h,
        _ => host,
    };
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    Ok((url, host))
}

fn kube_settings(cfg: &ServeConfig) -> KubeSettings {
    KubeSettings {
        namespace: cfg.namespace.clone(),
        installer_image: cfg.installer_image.clone(),
        storage_class: cfg.storage_class.clone(),
        workspace_access_mode: cfg.workspace_access_mode.clone(),
        config_storage: cfg.config_storage.clone(),
        download_url: cfg.vscode_download_url.clone(),
        replica_name: cfg.replica_name.clone(),
    }
}

impl App {
    pub async fn build(cfg: ServeConfig) -> Result<Self, StartupError> {
        let data_dir = cfg.data_dir();
        std::fs::create_dir_all(&data_dir).map_err(data_err(&data_dir))?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&data_dir, std::fs::Permissions::from_mode(0o700))
                .map_err(data_err(&data_dir))?;
        }
        let data_dir = data_dir.canonicalize().map_err(data_err(&data_dir))?;
        let listener =
            TcpListener::bind(cfg.listen)
                .await
                .map_err(|source| StartupError::Listen {
                    addr: cfg.listen,
                    source,
                })?;
        let addr = listener
            .local_addr()
            .map_err(|source| StartupError::Listen {
                addr: cfg.listen,
                source,
            })?;
        let (public_url, public_host) = public_url(&cfg, addr)?;

        let mut hosts = crate::config::default_hosts();
        if !hosts.contains(&public_host) {
            hosts.push(public_host);
        }
        let cert_dir = cfg.cert_dir();
        let (certs, generated) = tls::certs::ensure(&cert_dir, &hosts)?;
        if generated {
            tracing::info!(dir = %cert_dir.display(), "generated a local CA and server certificate");
        }
        let tls = tls::server_config(&certs.server_cert, &certs.server_key)?;
        let ca_cert = certs
            .ca_cert
            .canonicalize()
            .unwrap_or(certs.ca_cert.clone());

        let (token, token_file) = admin_token(&cfg, &data_dir)?;
        let mut sandbox = None;
        let orchestrator: Arc<dyn Orchestrator> = match cfg.backend {
            Backend::Local => {
                let confine = Sandbox::resolve(cfg.sandbox)?;
                let local = Local::new(data_dir.clone(), &cert_dir, cfg.runtime(), confine)?;
                sandbox = Some(local.sandbox().summary().to_owned());
                Arc::new(local)
            }
            Backend::Kube => {
                Arc::new(Kube::connect(cfg.kubeconfig.as_deref(), kube_settings(&cfg)).await?)
            }
        };
        let registry = Arc::new(Registry::new());
        for rec in orchestrator.load().await? {
            registry.insert(registry.instance(rec, State::Stopped));
        }
        let shutdown = CancellationToken::new();
        let lifecycle = Arc::new(Lifecycle {
            registry: registry.clone(),
            orchestrator,
            start_timeout: cfg.start_timeout,
            shutdown: shutdown.clone(),
        });
        let defaults = SpecDefaults {
            idle_timeout_secs: cfg.idle_timeout.as_secs().max(1),
            max_idle_timeout_secs: cfg
                .max_idle_timeout
                .as_secs()
                .max(cfg.idle_timeout.as_secs()),
            idle_notice_secs: cfg.idle_notice.as_secs(),
            ..SpecDefaults::default()
        };
        let shared = Arc::new(Shared::new(
            lifecycle.clone(),
            token.clone(),
            public_url.clone(),
            defaults,
            cfg.auth_failures_per_minute,
        ));
        // Lets the client subcommands find this server without flags.
        let discovery = serde_json::json!({ "api_url": public_url, "ca_cert": ca_cert });
        let _ = std::fs::write(data_dir.join("server.json"), discovery.to_string());
        let info = ServerInfo {
            addr,
            public_url,
            ca_cert,
            admin_token: token.expose().to_owned(),
            token_file,
            data_dir,
            instances: registry.len(),
            sandbox,
        };
        Ok(Self {
            cfg,
            listener,
            tls,
            shared,
            lifecycle,
            shutdown,
            info,
        })
    }

    /// Cancel this to stop the server.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Serves until shutdown, then drains connections and stops every instance.
    pub async fn run(self) {
        let reaper = Reaper::new(self.lifecycle.clone(), self.cfg.reap_interval);
        let shared = self.shared.clone();
        let reaper = tokio::spawn(reaper.run(move || shared.auth_failures.retain_recent()));
        let follower = tokio::spawn(self.lifecycle.clone().follow());
        server::run(
            self.listener,
            self.tls,
            self.shared,
            self.shutdown.clone(),
            ServerLimits {
                max_connections: self.cfg.max_connections,
                drain_timeout: self.cfg.drain_timeout,
            },
        )
        .await;
        let _ = reaper.await;
        let _ = follower.await;
        if self.lifecycle.orchestrator.instances_end_with_server() {
            self.lifecycle
                .stop_all(crate::lifecycle::reason::SHUTDOWN)
                .await;
        }
        for inst in self.lifecycle.registry.all() {
            let _ = self.lifecycle.orchestrator.save(&inst.record()).await;
        }
    }
}
