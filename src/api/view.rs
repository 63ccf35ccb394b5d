//! The JSON shapes of the API, kept compatible with the predecessor's fields.

use crate::http::origin::Origins;
use crate::instance::{AccessToken, State};
use crate::lifecycle::policy;
use crate::registry::Instance;
use crate::shared::Shared;
use serde_json::{json, Value};
use std::time::{Duration, UNIX_EPOCH};

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

/// One instance as the API shows it to whom it has just given `token` (create, rotation):
/// the token, and the URL that opens the instance with it.
pub fn with_token(sh: &Shared, inst: &Instance, token: &AccessToken) -> Value {
    let mut body = instance(sh, inst);
    body["access_token"] = json!(token.expose());
    body["url"] = json!(format!(
        "{}?tkn={}",
        instance_url(&sh.origins, inst),
        token.expose()
    ));
    body
}

/// One instance as the API shows it. The access token is only in the answers that give one
/// ([`with_token`]).
pub fn instance(sh: &Shared, inst: &Instance) -> Value {
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
    json!({
        "instance_id": inst.id.as_str(),
        "user_id": inst.user.as_str(),
        "status": s.state.as_str(),
        "message": s.message,
        "stop_reason": s.stop_reason,
        "url": instance_url(&sh.origins, inst),
        "base_image": spec.base_image,
        "vscode_version": spec.vscode_version,
        "storage_size": spec.storage_size,
        "memory_request": spec.memory_request,
        "memory_limit": spec.memory_limit,
        "cpu_request": spec.cpu_request,
        "cpu_limit": spec.cpu_limit,
        "idle_timeout": spec.idle_timeout_secs,
        "idle_notice": spec.idle_notice_secs(sh.defaults.idle_notice_secs),
        "creation_time": rfc3339_secs(inst.created_at),
        "last_activity": rfc3339_ms(last.min(now)),
        "busy_until": (last > now).then(|| rfc3339_ms(last)),
        "idle_stop_at": idle_stop_at,
    })
}
