//! An instance's Secret: the access token users present (cached once read, replaced by a
//! rotation, followed in the Secrets every server watches) and the connection token its pod
//! requires, which an instance made before there was one gets at its next start.
//!
//! The access token's generation is an annotation of the Secret, raised by each rotation in a
//! write conditional on the Secret's resourceVersion: concurrent rotations on any replicas get
//! one generation each, and the cache only ever moves to a higher one, so a watch event that
//! arrives late cannot bring a replaced token back.

use super::objects::{
    secret_name, INSTANCE_LABEL, TOKEN_GENERATION_ANNOTATION, TOKEN_KEY, UPSTREAM_TOKEN_KEY,
};
use super::{kerr, Kube};
use crate::instance::{AccessToken, InstanceId};
use crate::orchestrator::{OrchestratorError, Result};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams};
use rand::RngCore;
use serde_json::json;
use std::sync::Arc;

/// How often a write conditional on a Secret's resourceVersion is tried before giving up.
const CONFLICT_RETRIES: usize = 5;

/// The access token a Secret holds, with its generation.
pub(super) fn access_token(secret: &Secret) -> Option<(AccessToken, u64)> {
    let token = secret
        .data
        .as_ref()?
        .get(TOKEN_KEY)
        .and_then(|b| String::from_utf8(b.0.clone()).ok())
        .filter(|t| !t.is_empty())?;
    Some((AccessToken::from_secret(token), generation(secret)))
}

fn generation(secret: &Secret) -> u64 {
    secret
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(TOKEN_GENERATION_ANNOTATION))
        .and_then(|g| g.parse().ok())
        .unwrap_or(0)
}

/// The instance a Secret belongs to, from its label.
pub(super) fn instance_of(secret: &Secret) -> Option<InstanceId> {
    let labels = secret.metadata.labels.as_ref()?;
    InstanceId::parse(labels.get(INSTANCE_LABEL)?).ok()
}

impl Kube {
    /// The instance's access token and its generation: cached, else read from its Secret.
    pub(super) async fn token(&self, id: &str) -> Result<Option<(AccessToken, u64)>> {
        if let Some(t) = self.cached_tokens().get(id) {
            return Ok(Some(t.clone()));
        }
        let secret = self
            .api::<Secret>()
            .get_opt(&secret_name(id))
            .await
            .map_err(kerr("reading a token Secret"))?;
        let Some((token, generation)) = secret.as_ref().and_then(access_token) else {
            return Ok(None);
        };
        self.learn_token(id, &token, generation);
        Ok(self.cached_tokens().get(id).cloned())
    }

    /// Caches `token` unless a newer generation is cached already; returns whether it was
    /// newer.
    pub(super) fn learn_token(&self, id: &str, token: &AccessToken, generation: u64) -> bool {
        let mut tokens = self.cached_tokens();
        match tokens.get(id) {
            Some((_, cached)) if *cached >= generation => false,
            _ => {
                tokens.insert(id.to_owned(), (token.clone(), generation));
                true
            }
        }
    }

    pub(super) fn forget_token(&self, id: &str) {
        self.cached_tokens().remove(id);
    }

    fn cached_tokens(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, (AccessToken, u64)>> {
        // Entries are inserted and removed whole, so a poisoned map is still consistent.
        self.tokens.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes `token` into the instance's Secret one generation above the one it holds, the
    /// write conditional on the Secret being unchanged since it was read; returns the
    /// generation.
    pub(super) async fn rotate(&self, id: &InstanceId, token: &AccessToken) -> Result<u64> {
        let api = self.api::<Secret>();
        let name = secret_name(id.as_str());
        for _ in 0..CONFLICT_RETRIES {
            let Some(secret) = api
                .get_opt(&name)
                .await
                .map_err(kerr("reading the instance Secret"))?
            else {
                return Err(OrchestratorError::Gone(id.clone()));
            };
            let next = generation(&secret) + 1;
            let patch = json!({
                "metadata": {
                    "resourceVersion": secret.metadata.resource_version,
                    "annotations": { TOKEN_GENERATION_ANNOTATION: next.to_string() },
                },
                "stringData": { TOKEN_KEY: token.expose() },
            });
            match api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    self.learn_token(id.as_str(), token, next);
                    return Ok(next);
                }
                Err(kube::Error::Api(e)) if e.code == 409 => continue,
                Err(kube::Error::Api(e)) if e.code == 404 => {
                    return Err(OrchestratorError::Gone(id.clone()))
                }
                Err(e) => return Err(kerr("replacing the access token")(e)),
            }
        }
        Err(OrchestratorError::Kube(format!(
            "the Secret {name} kept changing while its access token was replaced"
        )))
    }

    /// The connection token the instance's serve-web requires, from its Secret. An instance
    /// created before there was one gets one now; the write is conditional on the Secret's
    /// resourceVersion, so of two servers starting it at once both end with the same value.
    pub(super) async fn upstream_secret(&self, id: &InstanceId) -> Result<Arc<str>> {
        let api = self.api::<Secret>();
        let name = secret_name(id.as_str());
        for _ in 0..3 {
            let secret = api
                .get(&name)
                .await
                .map_err(kerr("reading the instance Secret"))?;
            let existing = secret
                .data
                .as_ref()
                .and_then(|d| d.get(UPSTREAM_TOKEN_KEY))
                .and_then(|b| std::str::from_utf8(&b.0).ok())
                .filter(|t| !t.is_empty())
                .map(Arc::from);
            if let Some(t) = existing {
                return Ok(t);
            }
            let fresh = new_upstream_token();
            let patch = json!({
                "metadata": { "resourceVersion": secret.metadata.resource_version },
                "stringData": { UPSTREAM_TOKEN_KEY: fresh },
            });
            match api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    tracing::info!(instance = %id, "gave the instance an upstream secret");
                    return Ok(Arc::from(fresh));
                }
                Err(kube::Error::Api(e)) if e.code == 409 => continue,
                Err(e) => return Err(kerr("adding the upstream secret")(e)),
            }
        }
        Err(OrchestratorError::Kube(format!(
            "the Secret {name} kept changing while its upstream secret was added"
        )))
    }
}

/// 256 random bits, hex: the characters VS Code accepts in a connection token.
pub(super) fn new_upstream_token() -> String {
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}
