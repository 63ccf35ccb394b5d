//! How an instance pod is confined: whatever the user's image says, its containers run as an
//! unprivileged user with no capabilities, no way to gain privileges, and the runtime's default
//! seccomp profile; the volumes are given to that user's group so VS Code can write its
//! config and the workspace. This is what the `baseline` Pod Security level of the instance
//! namespace admits, and more (`restricted` as far as a user's image allows).

use serde_json::{json, Value};

/// The pod's securityContext: `uid` is the user and group of every container and the group
/// that owns the volumes.
pub fn pod(uid: u32) -> Value {
    json!({
        "runAsNonRoot": true,
        "runAsUser": uid,
        "runAsGroup": uid,
        "fsGroup": uid,
        // Only when the volume's root is not already the group's: a large workspace is not
        // walked on every start.
        "fsGroupChangePolicy": "OnRootMismatch",
        "seccompProfile": { "type": "RuntimeDefault" },
    })
}

/// A container's securityContext. The installer writes only to the config volume, so its root
/// filesystem can be read-only; the user's container keeps whatever its image expects.
pub fn container(read_only_root: bool) -> Value {
    let mut c = json!({
        "allowPrivilegeEscalation": false,
        "privileged": false,
        "capabilities": { "drop": ["ALL"] },
        "seccompProfile": { "type": "RuntimeDefault" },
    });
    if read_only_root {
        c["readOnlyRootFilesystem"] = json!(true);
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_never_run_as_root_and_own_their_volumes_through_the_group() {
        let p = pod(1000);
        assert_eq!(p["runAsNonRoot"], true);
        assert_eq!(p["runAsUser"], 1000);
        assert_eq!(p["runAsGroup"], 1000);
        assert_eq!(p["fsGroup"], 1000);
        assert_eq!(p["seccompProfile"]["type"], "RuntimeDefault");
    }

    #[test]
    fn containers_drop_every_capability_and_cannot_escalate() {
        for ro in [true, false] {
            let c = container(ro);
            assert_eq!(c["allowPrivilegeEscalation"], false);
            assert_eq!(c["privileged"], false);
            assert_eq!(c["capabilities"]["drop"], json!(["ALL"]));
            assert!(c["capabilities"]["add"].is_null());
            assert_eq!(c["seccompProfile"]["type"], "RuntimeDefault");
        }
        assert_eq!(container(true)["readOnlyRootFilesystem"], true);
        assert!(container(false)["readOnlyRootFilesystem"].is_null());
    }
}
