//! The JSON shapes of the API, kept compatible with the predecessor's fields.

use crate::registry::Instance;
use serde_json::{json, Value};
use std::time::{Duration, UNIX_EPOCH};

pub fn rfc3339_secs(secs: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

pub fn instance_url(public_url: &str, inst: &Instance) -> String {
    format!("{public_url}/instances/{}/", inst.id)
}

/// One instance as the API shows it. The access token is only in the create response.
pub fn instance(public_url: &str, inst: &Instance) -> Value {
    let s = inst.status();
    let spec = &inst.spec;
    json!({
        "instance_id": inst.id.as_str(),
        "user_id": inst.user.as_str(),
        "status": s.state.as_str(),
        "message": s.message,
        "stop_reason": s.stop_reason,
        "url": instance_url(public_url, inst),
        "base_image": spec.base_image,
        "vscode_version": spec.vscode_version,
        "storage_size": spec.storage_size,
        "memory_request": spec.memory_request,
        "memory_limit": spec.memory_limit,
        "cpu_request": spec.cpu_request,
        "cpu_limit": spec.cpu_limit,
        "idle_timeout": spec.idle_timeout_secs,
        "creation_time": rfc3339_secs(inst.created_at),
        "last_activity": rfc3339_secs(inst.last_activity_ms() / 1000),
    })
}
