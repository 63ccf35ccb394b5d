//! Replacing an instance's access token. The backend stores the new token first (durably,
//! where every server reads it) and says which generation it is; then it takes the old one's
//! place here, so the old token, and cookies holding it, are refused from the next request
//! on, and WebSocket tunnels opened with it are closed. Other servers follow through
//! [`crate::orchestrator::Observed::Token`].

use super::{Lifecycle, LifecycleError};
use crate::instance::AccessToken;
use crate::orchestrator::OrchestratorError;
use crate::registry::Instance;
use std::sync::Arc;

impl Lifecycle {
    /// Gives the instance a new access token and returns it. On failure nothing changed, and
    /// the old token still opens the instance.
    pub async fn rotate_token(&self, inst: &Arc<Instance>) -> Result<AccessToken, LifecycleError> {
        let token = AccessToken::generate();
        let generation = match self.orchestrator.rotate_token(&inst.record(), &token).await {
            Ok(g) => g,
            // Deleted while the rotation was under way.
            Err(OrchestratorError::Gone(id)) => return Err(LifecycleError::Gone(id)),
            Err(e) => {
                tracing::warn!(instance = %inst.id, error = %e, "replacing the access token failed");
                return Err(e.into());
            }
        };
        // A rotation elsewhere that came after this one already holds a higher generation and
        // stays; this server then follows it.
        inst.replace_token(token.clone(), generation);
        tracing::info!(instance = %inst.id, generation, "access token replaced");
        Ok(token)
    }
}
