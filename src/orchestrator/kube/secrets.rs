//! An instance's Secret: the access token users present (cached once read) and the
//! connection token its pod requires, which an instance made before there was one gets at its
//! next start.

use super::objects::{secret_name, TOKEN_KEY, UPSTREAM_TOKEN_KEY};
use super::{kerr, Kube};
use crate::instance::{AccessToken, InstanceId};
use crate::orchestrator::{OrchestratorError, Result};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams};
use rand::RngCore;
use serde_json::json;
use std::sync::Arc;

impl Kube {
    pub(super) async fn token(&self, id: &str) -> Result<Option<AccessToken>> {
        if let Some(t) = self
            .tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
        {
            return Ok(Some(t.clone()));
        }
        let secret = self
            .api::<Secret>()
            .get_opt(&secret_name(id))
            .await
            .map_err(kerr("reading a token Secret"))?;
        let token = secret
            .and_then(|s| s.data)
            .and_then(|d| d.get(TOKEN_KEY).cloned())
            .and_then(|b| String::from_utf8(b.0).ok())
            .map(AccessToken::from_secret);
        if let Some(t) = &token {
            self.tokens
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(id.to_owned(), t.clone());
        }
        Ok(token)
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
