//! The JSON shapes of the API, kept compatible with the predecessor's fields. Handlers
//! serialize these types and [`super::openapi`] documents the same types, so the document
//! cannot drift from what is sent.

use crate::http::origin::Origins;
use crate::instance::{AccessToken, State};
use crate::lifecycle::policy;
use crate::registry::Instance;
use crate::shared::Shared;
use serde::{Deserialize, Serialize};
use std::time::{Duration, UNIX_EPOCH};
use utoipa::ToSchema;

pub use crate::http::response::ErrorBody;

pub fn rfc3339_secs(secs: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

fn rfc3339_ms(ms: u64) -> String {
    rfc3339_secs(ms / 1000)
}

/// Where a browser opens an instance: its own origin in host routing.
pub fn instance_url(origins: &Origins, inst: &Instance) -> String {
    format!(
        "{}/instances/{}/",
        origins.instance_base(inst.id.as_str()),
        inst.id
    )
}

/// One instance.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct InstanceView {
    pub instance_id: String,
    pub user_id: String,
    pub status: State,
    /// Start progress while starting; the reason while failed.
    pub message: String,
    /// Why it was last stopped: `idle`, `api`, `shutdown`, `deleted`, `scaled down`, or a
    /// reason recorded by another version.
    pub stop_reason: Option<String>,
    /// Where a browser opens it (without the access token).
    pub url: String,
    pub base_image: String,
    pub vscode_version: String,
    pub storage_size: String,
    pub memory_request: String,
    pub memory_limit: String,
    pub cpu_request: String,
    pub cpu_limit: String,
    /// Seconds without activity before it is stopped.
    pub idle_timeout: u64,
    /// Seconds before an idle stop that open pages say so.
    pub idle_notice: u64,
    /// RFC 3339, seconds.
    pub creation_time: String,
    /// RFC 3339, seconds.
    pub last_activity: String,
    /// RFC 3339: a keepalive said it is busy until then.
    pub busy_until: Option<String>,
    /// RFC 3339: when it will be stopped for idleness if nothing happens (running only).
    pub idle_stop_at: Option<String>,
}

/// One instance with the access token just given (create, token rotation).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct InstanceWithToken {
    #[serde(flatten)]
    pub instance: InstanceView,
    /// The token that opens the instance; shown only here. In these answers `url` carries it
    /// too (`?tkn=`), and the browser exchanges it for a cookie.
    pub access_token: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct InstanceList {
    pub instances: Vec<InstanceView>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct StatusView {
    pub instance_id: String,
    pub status: State,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Deleted {
    pub instance_id: String,
    /// Always `Deleted`.
    pub status: String,
}

/// A user's persistent workspace.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct WorkspaceView {
    pub user_id: String,
    pub workspace_exists: bool,
    pub storage_size: String,
    /// `Bound` when it exists, else `NotFound`.
    pub status: String,
    /// RFC 3339, seconds; absent when unknown.
    pub creation_time: Option<String>,
    /// How many of the user's instances run.
    pub active_instances: u64,
    pub instances: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Banner {
    pub message: String,
    pub service: String,
    pub version: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// Always `healthy`.
    pub status: String,
}

/// One instance as the API shows it to whom it has just given `token` (create, rotation):
/// the token, and the URL that opens the instance with it.
pub fn with_token(sh: &Shared, inst: &Instance, token: &AccessToken) -> InstanceWithToken {
    let mut instance = instance(sh, inst);
    instance.url = format!("{}?tkn={}", instance.url, token.expose());
    InstanceWithToken {
        instance,
        access_token: token.expose().to_owned(),
    }
}

/// One instance as the API shows it. The access token is only in the answers that give one
/// ([`with_token`]).
pub fn instance(sh: &Shared, inst: &Instance) -> InstanceView {
    let s = inst.status();
    let spec = &inst.spec;
    let now = inst.now_ms();
    let last = inst.last_activity_ms();
    let timeout = Duration::from_secs(spec.idle_timeout_secs);
    // Only a running instance has an idle deadline; while requests are in flight it has none.
    let idle_stop_at = (s.state == State::Running && inst.inflight() == 0).then(|| {
        let left = policy::remaining(now, last, timeout, 0);
        rfc3339_ms(now + left.as_millis() as u64)
    });
    InstanceView {
        instance_id: inst.id.as_str().to_owned(),
        user_id: inst.user.as_str().to_owned(),
        status: s.state,
        message: s.message,
        stop_reason: s.stop_reason.map(String::from),
        url: instance_url(&sh.origins, inst),
        base_image: spec.base_image.clone(),
        vscode_version: spec.vscode_version.clone(),
        storage_size: spec.storage_size.clone(),
        memory_request: spec.memory_request.clone(),
        memory_limit: spec.memory_limit.clone(),
        cpu_request: spec.cpu_request.clone(),
        cpu_limit: spec.cpu_limit.clone(),
        idle_timeout: spec.idle_timeout_secs,
        idle_notice: spec.idle_notice_secs(sh.defaults.idle_notice_secs),
        creation_time: rfc3339_secs(inst.created_at),
        last_activity: rfc3339_ms(last.min(now)),
        busy_until: (last > now).then(|| rfc3339_ms(last)),
        idle_stop_at,
    }
}
