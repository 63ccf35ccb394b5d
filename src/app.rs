//! The composition root: builds every part from the config, owns the shutdown token, and
//! stops every instance on the way out.

use crate::config::{Backend, ServeConfig};
use crate::error::StartupError;
use crate::http::conns::ConnLimits;
use crate::http::origin::Origins;
use crate::instance::{AccessToken, SpecDefaults, State};
use crate::lifecycle::{Lifecycle, Reaper};
use crate::orchestrator::kube::{Kube, KubeSettings};
use crate::orchestrator::local::Local;
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
    /// Each instance on its own origin (else all under the public URL).
    pub host_routing: bool,
    pub ca_cert: PathBuf,
    pub admin_token: String,
    pub token_file: Option<PathBuf>,
    pub data_dir: PathBuf,
    pub instances: usize,
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

/// With host routing, how instance hosts get certificates: the server's own when it is a
/// wildcard for them, else minted from the local CA for current instances only.
fn instance_certs(
    origins: &Origins,
    certs: &tls::certs::CertPaths,
    cert_dir: &Path,
    registry: &Arc<Registry>,
) -> Result<Option<tls::InstanceCerts>, StartupError> {
    if !origins.host_routing() {
        return Ok(None);
    }
    let probe = format!("instance.{}", origins.public_host());
    let wildcard = tls::load_certs(&certs.server_cert)?
        .first()
        .is_some_and(|c| tls::covers(c, &probe));
    if wildcard {
        return Ok(None);
    }
    let Some(minter) = tls::certs::Minter::from_dir(cert_dir, tls::provider())? else {
        return Err(StartupError::NoInstanceCerts(
            origins.public_host().to_owned(),
        ));
    };
    let registry = registry.clone();
    let origins = origins.clone();
    Ok(Some(tls::InstanceCerts {
        minter,
        is_instance: Box::new(move |name| {
            origins
                .instance_of_name(name)
                .is_some_and(|id| registry.get_str(id).is_some())
        }),
    }))
}

fn kube_settings(cfg: &ServeConfig) -> KubeSettings {
    KubeSettings {
        namespace: cfg.namespace.clone(),
        instance_namespace: cfg
            .instance_namespace
            .clone()
            .unwrap_or_else(|| cfg.namespace.clone()),
        instance_uid: cfg.instance_uid,
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
        let public_url = cfg
            .public_url
            .clone()
            .unwrap_or_else(|| format!("https://localhost:{}", addr.port()));
        let origins = Origins::new(&public_url, cfg.routing)?;
        let public_url = origins.public_url().to_owned();

        let mut hosts = crate::config::default_hosts();
        if !hosts.iter().any(|h| h == origins.public_host()) {
            hosts.push(origins.public_host().to_owned());
        }
        let cert_dir = cfg.cert_dir();
        let (certs, generated) = tls::certs::ensure(&cert_dir, &hosts)?;
        if generated {
            tracing::info!(dir = %cert_dir.display(), "generated a local CA and server certificate");
        }
        let registry = Arc::new(Registry::new());
        let instance_certs = instance_certs(&origins, &certs, &cert_dir, &registry)?;
        let tls = tls::server_config(&certs.server_cert, &certs.server_key, instance_certs)?;
        if !origins.host_routing() {
            tracing::warn!(
                "path routing: every instance is served from {public_url}, one origin, so a page \
                 of one instance can act in any other the same browser has open; only for users \
                 who trust each other (wildcard DNS and --routing host give each its own origin)"
            );
        }
        let ca_cert = certs
            .ca_cert
            .canonicalize()
            .unwrap_or(certs.ca_cert.clone());

        let (token, token_file) = admin_token(&cfg, &data_dir)?;
        let orchestrator: Arc<dyn Orchestrator> = match cfg.backend {
            Backend::Local => Arc::new(Local::new(data_dir.clone(), cfg.runtime())?),
            Backend::Kube => {
                Arc::new(Kube::connect(cfg.kubeconfig.as_deref(), kube_settings(&cfg)).await?)
            }
        };
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
        let mut shared = Shared::new(
            lifecycle.clone(),
            token.clone(),
            origins.clone(),
            defaults,
            cfg.auth_failures_per_minute,
        );
        shared.tunnel_idle_timeout = cfg.tunnel_idle_timeout;
        let shared = Arc::new(shared);
        // Lets the client subcommands find this server without flags.
        let discovery = serde_json::json!({ "api_url": public_url, "ca_cert": ca_cert });
        let _ = std::fs::write(data_dir.join("server.json"), discovery.to_string());
        let info = ServerInfo {
            addr,
            public_url,
            host_routing: origins.host_routing(),
            ca_cert,
            admin_token: token.expose().to_owned(),
            token_file,
            data_dir,
            instances: registry.len(),
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
        // The guess table bounds itself; nothing else to tidy on the reaper's ticks.
        let reaper = tokio::spawn(reaper.run(|| {}));
        let follower = tokio::spawn(self.lifecycle.clone().follow());
        server::run(
            self.listener,
            self.tls,
            self.shared,
            self.shutdown.clone(),
            ServerLimits {
                conns: ConnLimits {
                    max_total: self.cfg.max_connections,
                    max_per_client: self.cfg.max_connections_per_client,
                    idle: self.cfg.idle_connection_timeout,
                },
                max_header_bytes: self.cfg.max_header_bytes,
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
