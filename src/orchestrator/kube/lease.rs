//! One reaper among replicas: a coordination Lease held by whoever renewed it last, taken over
//! when it expires. Holding it only decides who stops idle instances; losing it is harmless.

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use std::time::SystemTime;

const NAME: &str = "vscode-on-demand-reaper";
const DURATION_SECS: i64 = 30;

fn now_micro() -> String {
    humantime::format_rfc3339_micros(SystemTime::now()).to_string()
}

/// Renews or takes the lease; true when this server holds it afterwards.
pub async fn hold(client: &kube::Client, namespace: &str, me: &str) -> bool {
    let api: Api<Lease> = Api::namespaced(client.clone(), namespace);
    let current = match api.get_opt(NAME).await {
        Ok(l) => l,
        Err(e) => {
            tracing::debug!(error = %e, "reading the reaper lease");
            return false;
        }
    };
    let Some(lease) = current else {
        let fresh: Lease = match serde_json::from_value(json!({
            "metadata": { "name": NAME, "namespace": namespace },
            "spec": { "holderIdentity": me, "leaseDurationSeconds": DURATION_SECS, "renewTime": now_micro(), "acquireTime": now_micro() },
        })) {
            Ok(l) => l,
            Err(_) => return false,
        };
        return api.create(&PostParams::default(), &fresh).await.is_ok();
    };
    let spec = lease.spec.clone().unwrap_or_default();
    let mine = spec.holder_identity.as_deref() == Some(me);
    let expired = spec.renew_time.as_ref().is_none_or(|t| {
        let age = k8s_openapi::jiff::Timestamp::now().as_second() - t.0.as_second();
        age > spec.lease_duration_seconds.map_or(DURATION_SECS, i64::from)
    });
    if !mine && !expired {
        return false;
    }
    // The resourceVersion makes the takeover conditional: of two servers racing for an
    // expired lease, one update fails.
    let patch = json!({
        "metadata": { "resourceVersion": lease.metadata.resource_version },
        "spec": { "holderIdentity": me, "leaseDurationSeconds": DURATION_SECS, "renewTime": now_micro() },
    });
    api.patch(NAME, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .is_ok()
}
