//! The domain: who owns an instance, what it runs, what state it is in.
//!
//! Everything a client sends is parsed into these types at the edge, so the layers below never
//! see an unchecked id, quantity or image reference. No HTTP, no Kubernetes, no processes here.

mod checks;
#[cfg(test)]
mod fixture;
mod status;
mod token;
mod upstream;

pub use status::{State, Status, StopReason};
pub use token::AccessToken;
pub use upstream::{SecretCookie, Upstream, UpstreamAddr, UpstreamSecret};

use checks::{cpu, image_ref, memory, vscode_version};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Longest `user_id` accepted: leaves room for `-<8 hex>` and resource-name suffixes inside
/// Kubernetes' 63-character label limit.
pub const MAX_USER_ID_LEN: usize = 40;

/// Why a value from a client was refused; the message says what to send instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct Invalid {
    pub field: &'static str,
    pub message: String,
}

fn invalid(field: &'static str, message: impl Into<String>) -> Invalid {
    Invalid {
        field,
        message: message.into(),
    }
}

fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// A user's name: a DNS-1123 label of at most [`MAX_USER_ID_LEN`] characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct UserId(String);

impl UserId {
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        if s.len() > MAX_USER_ID_LEN || !is_dns_label(s) {
            return Err(invalid(
                "user_id",
                format!(
                    "{s:?} is not a valid user id: use 1-{MAX_USER_ID_LEN} lowercase letters, \
                     digits or '-', starting and ending with a letter or digit"
                ),
            ));
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for UserId {
    type Error = Invalid;
    fn try_from(s: String) -> Result<Self, Invalid> {
        Self::parse(&s)
    }
}

impl From<UserId> for String {
    fn from(u: UserId) -> String {
        u.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An instance's id: `<user_id>-<8 lowercase hex>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct InstanceId(String);

impl InstanceId {
    /// A fresh id for `user`, with 32 random bits to tell the user's instances apart.
    pub fn generate(user: &UserId) -> Self {
        let n = rand::rng().next_u32();
        Self(format!("{user}-{n:08x}"))
    }

    pub fn parse(s: &str) -> Result<Self, Invalid> {
        let bad = || {
            invalid(
                "instance_id",
                format!("{s:?} is not an instance id (expected <user_id>-<8 hex digits>)"),
            )
        };
        let (user, suffix) = s.rsplit_once('-').ok_or_else(bad)?;
        let hex_ok = suffix.len() == 8
            && suffix
                .bytes()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c));
        if !hex_ok || UserId::parse(user).is_err() {
            return Err(bad());
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn user(&self) -> UserId {
        // parse() proved that a valid user id precedes the last '-'.
        let (user, _) = self.0.rsplit_once('-').unwrap_or((&self.0, ""));
        UserId(user.to_owned())
    }
}

impl TryFrom<String> for InstanceId {
    type Error = Invalid;
    fn try_from(s: String) -> Result<Self, Invalid> {
        Self::parse(&s)
    }
}

impl From<InstanceId> for String {
    fn from(i: InstanceId) -> String {
        i.0
    }
}

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a client asks for when creating an instance. Fields left out take server defaults.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    #[schema(pattern = "^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$")]
    pub user_id: String,
    #[schema(pattern = "^[a-z0-9]{1,20}(/[a-z0-9]{1,20}){0,2}(:[a-z0-9]{1,10})?$")]
    pub base_image: Option<String>,
    #[schema(pattern = "^(latest|[0-9]{1,5}[.][0-9]{1,5}([.][0-9]{1,5})?)$")]
    pub vscode_version: Option<String>,
    #[schema(pattern = "^[1-9][0-9]{0,3}(Mi|Gi)$")]
    pub storage_size: Option<String>,
    #[schema(pattern = "^[1-9][0-9]{0,3}(Mi|Gi)$")]
    pub memory_request: Option<String>,
    #[schema(pattern = "^[1-9][0-9]{0,3}(Mi|Gi)$")]
    pub memory_limit: Option<String>,
    /// At most `cpu_limit` (and `memory_request` at most `memory_limit`).
    #[schema(pattern = "^([1-9][0-9]{0,3}m|[1-9][0-9]?)$")]
    pub cpu_request: Option<String>,
    #[schema(pattern = "^([1-9][0-9]{0,3}m|[1-9][0-9]?)$")]
    pub cpu_limit: Option<String>,
    /// Seconds without activity before the instance is stopped (at most 86400 by default).
    #[schema(minimum = 1, maximum = 86400)]
    pub idle_timeout: Option<u64>,
    /// Seconds before an idle stop that open pages show a notice (0: none); ≤ `idle_timeout`.
    #[schema(minimum = 0, maximum = 86400)]
    pub idle_notice: Option<u64>,
}

/// The validated, complete description of what an instance runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceSpec {
    pub base_image: String,
    pub vscode_version: String,
    pub storage_size: String,
    pub memory_request: String,
    pub memory_limit: String,
    pub cpu_request: String,
    pub cpu_limit: String,
    pub idle_timeout_secs: u64,
    /// How long before an idle stop open pages say so; absent in records stored before it
    /// existed, which then get the server's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_notice_secs: Option<u64>,
}

impl InstanceSpec {
    /// The notice lead time, never longer than the idle timeout.
    pub fn idle_notice_secs(&self, default_secs: u64) -> u64 {
        self.idle_notice_secs
            .unwrap_or(default_secs)
            .min(self.idle_timeout_secs)
    }
}

/// Server-side defaults and bounds applied to every [`CreateRequest`].
#[derive(Debug, Clone)]
pub struct SpecDefaults {
    pub base_image: String,
    pub vscode_version: String,
    pub storage_size: String,
    pub memory_request: String,
    pub memory_limit: String,
    pub cpu_request: String,
    pub cpu_limit: String,
    pub idle_timeout_secs: u64,
    pub max_idle_timeout_secs: u64,
    pub idle_notice_secs: u64,
}

impl Default for SpecDefaults {
    fn default() -> Self {
        Self {
            base_image: "ubuntu:24.04".into(),
            vscode_version: "latest".into(),
            storage_size: "5Gi".into(),
            memory_request: "512Mi".into(),
            memory_limit: "2Gi".into(),
            cpu_request: "250m".into(),
            cpu_limit: "1000m".into(),
            idle_timeout_secs: 30 * 60,
            max_idle_timeout_secs: 24 * 3600,
            idle_notice_secs: 2 * 60,
        }
    }
}

impl CreateRequest {
    /// Checks every field and fills in defaults; refuses before anything is created.
    pub fn validate(self, d: &SpecDefaults) -> Result<(UserId, InstanceSpec), Invalid> {
        let user = UserId::parse(&self.user_id)?;
        let pick = |v: Option<String>, def: &str| v.unwrap_or_else(|| def.to_owned());
        let mut spec = InstanceSpec {
            base_image: pick(self.base_image, &d.base_image),
            vscode_version: pick(self.vscode_version, &d.vscode_version),
            storage_size: pick(self.storage_size, &d.storage_size),
            memory_request: pick(self.memory_request, &d.memory_request),
            memory_limit: pick(self.memory_limit, &d.memory_limit),
            cpu_request: pick(self.cpu_request, &d.cpu_request),
            cpu_limit: pick(self.cpu_limit, &d.cpu_limit),
            idle_timeout_secs: self.idle_timeout.unwrap_or(d.idle_timeout_secs),
            idle_notice_secs: None,
        };
        image_ref(&spec.base_image)?;
        vscode_version(&spec.vscode_version)?;
        memory("storage_size", &spec.storage_size)?;
        let mem_req = memory("memory_request", &spec.memory_request)?;
        let mem_lim = memory("memory_limit", &spec.memory_limit)?;
        let cpu_req = cpu("cpu_request", &spec.cpu_request)?;
        let cpu_lim = cpu("cpu_limit", &spec.cpu_limit)?;
        if mem_req > mem_lim {
            return Err(invalid(
                "memory_request",
                format!(
                    "memory_request {} is more than memory_limit {}: lower the request or raise the limit",
                    spec.memory_request, spec.memory_limit
                ),
            ));
        }
        if cpu_req > cpu_lim {
            return Err(invalid(
                "cpu_request",
                format!(
                    "cpu_request {} is more than cpu_limit {}: lower the request or raise the limit",
                    spec.cpu_request, spec.cpu_limit
                ),
            ));
        }
        if spec.idle_timeout_secs == 0 || spec.idle_timeout_secs > d.max_idle_timeout_secs {
            return Err(invalid(
                "idle_timeout",
                format!(
                    "idle_timeout must be between 1 and {} seconds",
                    d.max_idle_timeout_secs
                ),
            ));
        }
        spec.idle_notice_secs = match self.idle_notice {
            Some(n) if n > spec.idle_timeout_secs => {
                return Err(invalid(
                    "idle_notice",
                    format!(
                        "idle_notice must be between 0 and the idle timeout ({} seconds)",
                        spec.idle_timeout_secs
                    ),
                ))
            }
            Some(n) => Some(n),
            // A default longer than a short timeout shrinks to it rather than refusing.
            None => Some(d.idle_notice_secs.min(spec.idle_timeout_secs)),
        };
        Ok((user, spec))
    }
}

/// The durable facts about an instance, as a backend stores them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InstanceRecord {
    pub instance_id: InstanceId,
    pub user_id: UserId,
    pub spec: InstanceSpec,
    pub access_token: AccessToken,
    /// How many times the access token was replaced: where two tokens of an instance meet
    /// (a save from before a rotation, a replica that lags), the higher generation wins.
    #[serde(default)]
    pub token_generation: u64,
    /// Seconds since the Unix epoch.
    pub created_at: u64,
    /// Milliseconds since the Unix epoch.
    pub last_activity_ms: u64,
    #[serde(default)]
    pub stop_reason: Option<StopReason>,
}

#[cfg(test)]
mod tests;
