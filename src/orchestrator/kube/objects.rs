//! The Kubernetes objects of an instance, as server-side-apply documents: a Deployment (0 or 1
//! replicas, `Recreate`), a Service, a Secret holding the access token and the upstream
//! secret, a config PVC, and the user's workspace PVC. Names, labels and annotations are
//! defined here once.

use super::containers::{code_server, serve_web, KubeRuntime};
use super::security;
use crate::instance::{InstanceRecord, UserId};
use serde_json::{json, Value};

pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const MANAGER: &str = "vscode-on-demand";
pub const INSTANCE_LABEL: &str = "vscode-on-demand.io/instance";
pub const USER_LABEL: &str = "vscode-on-demand.io/user";
pub const COMPONENT: &str = "app.kubernetes.io/component";
pub const SPEC_ANNOTATION: &str = "vscode-on-demand.io/spec";
pub const ACTIVITY_ANNOTATION: &str = "vscode-on-demand.io/last-activity";
pub const STOP_REASON_ANNOTATION: &str = "vscode-on-demand.io/stop-reason";
pub const CREATED_ANNOTATION: &str = "vscode-on-demand.io/created";
/// On the instance Secret: how many times its access token was replaced (absent: never).
pub const TOKEN_GENERATION_ANNOTATION: &str = "vscode-on-demand.io/token-generation";
/// The port VS Code's server listens on inside the pod.
pub const PORT: u16 = 8000;
/// Where the config volume is mounted: the VS Code CLI, its data, settings and extensions.
pub const CONFIG_MOUNT: &str = "/vscode";
/// Keys of the instance Secret: the user's access token, and the connection token serve-web
/// requires, which only the proxy sends.
pub const TOKEN_KEY: &str = "token";
pub const UPSTREAM_TOKEN_KEY: &str = "upstream-token";
/// Where instances are created and how.
#[derive(Debug, Clone)]
pub struct KubeSettings {
    /// This server's own namespace (the reaper Lease).
    pub namespace: String,
    /// Where instances live, apart from this server's Secrets.
    pub instance_namespace: String,
    /// User and group of the instance containers.
    pub instance_uid: u32,
    /// Our own image; its binary downloads the VS Code CLI in the init container.
    pub installer_image: String,
    pub storage_class: Option<String>,
    /// `ReadWriteOnce` keeps a user's pods on one node (pod affinity); `ReadWriteMany` does not.
    pub workspace_access_mode: String,
    pub config_storage: String,
    pub download_url: String,
    /// This server's name among replicas, for the reaper Lease.
    pub replica_name: Option<String>,
    pub runtime: KubeRuntime,
    /// Whether code-server's own proxy routes (`/proxy/<port>/`) stay on: only when each
    /// instance has an origin of its own.
    pub port_forwarding: bool,
}

pub fn deployment_name(id: &str) -> String {
    format!("vsc-{id}")
}

pub fn secret_name(id: &str) -> String {
    format!("vsc-{id}-token")
}

pub fn config_claim(id: &str) -> String {
    format!("vsc-{id}-config")
}

pub fn workspace_claim(user: &UserId) -> String {
    format!("vsc-ws-{user}")
}

pub fn selector() -> String {
    format!("{MANAGED_BY}={MANAGER}")
}

fn labels(rec: &InstanceRecord) -> Value {
    json!({
        MANAGED_BY: MANAGER,
        COMPONENT: "instance",
        INSTANCE_LABEL: rec.instance_id.as_str(),
        USER_LABEL: rec.user_id.as_str(),
    })
}

pub fn cli_path(version: &str) -> String {
    format!("{CONFIG_MOUNT}/vscode-cli/{version}/code")
}

fn owner(deployment: &str, uid: &str) -> Value {
    json!([{ "apiVersion": "apps/v1", "kind": "Deployment", "name": deployment, "uid": uid, "controller": true }])
}

pub fn deployment(rec: &InstanceRecord, s: &KubeSettings, replicas: u8) -> Value {
    let id = rec.instance_id.as_str();
    let spec = &rec.spec;
    let main = match s.runtime {
        KubeRuntime::ServeWeb => serve_web(rec, s),
        KubeRuntime::CodeServer => code_server(rec, s),
    };
    let mut container = json!({
        "name": "vscode",
        "image": spec.base_image,
        "workingDir": "/workspaces",
        "ports": [{ "name": "http", "containerPort": PORT, "protocol": "TCP" }],
        "resources": {
            "requests": { "cpu": spec.cpu_request, "memory": spec.memory_request },
            "limits": { "cpu": spec.cpu_limit, "memory": spec.memory_limit },
        },
        "securityContext": security::container(false),
        "volumeMounts": [
            { "name": "workspace", "mountPath": "/workspaces" },
            { "name": "config", "mountPath": CONFIG_MOUNT },
        ],
    });
    for (k, v) in main.container {
        container[k] = v;
    }
    let mut pod_spec = json!({
        "automountServiceAccountToken": false,
        "enableServiceLinks": false,
        "securityContext": security::pod(s.instance_uid),
        "initContainers": main.init,
        "containers": [container],
        "volumes": [
            { "name": "workspace", "persistentVolumeClaim": { "claimName": workspace_claim(&rec.user_id) } },
            { "name": "config", "persistentVolumeClaim": { "claimName": config_claim(id) } },
        ],
    });
    if s.workspace_access_mode == "ReadWriteOnce" {
        // A ReadWriteOnce volume attaches to one node: every pod of the user goes where the
        // others are (a pod matching its own term may start anywhere when it is the first).
        pod_spec["affinity"] = json!({ "podAffinity": { "requiredDuringSchedulingIgnoredDuringExecution": [{
            "labelSelector": { "matchLabels": { USER_LABEL: rec.user_id.as_str() } },
            "topologyKey": "kubernetes.io/hostname",
        }]}});
    }
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": deployment_name(id),
            "namespace": s.instance_namespace,
            "labels": labels(rec),
            "annotations": {
                SPEC_ANNOTATION: serde_json::to_string(spec).unwrap_or_default(),
                CREATED_ANNOTATION: rec.created_at.to_string(),
                ACTIVITY_ANNOTATION: rec.last_activity_ms.to_string(),
            },
        },
        "spec": {
            "replicas": replicas,
            "strategy": { "type": "Recreate" },
            "selector": { "matchLabels": { INSTANCE_LABEL: id } },
            "template": { "metadata": { "labels": labels(rec) }, "spec": pod_spec },
        },
    })
}

pub fn service(rec: &InstanceRecord, s: &KubeSettings, uid: &str) -> Value {
    let id = rec.instance_id.as_str();
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": { "name": deployment_name(id), "namespace": s.instance_namespace, "labels": labels(rec), "ownerReferences": owner(&deployment_name(id), uid) },
        "spec": {
            "selector": { INSTANCE_LABEL: id },
            "ports": [{ "name": "http", "port": PORT, "targetPort": PORT, "protocol": "TCP" }],
        },
    })
}

/// The instance's Secret: its access token and the upstream secret serve-web requires.
pub fn secret(rec: &InstanceRecord, s: &KubeSettings, uid: &str, upstream_token: &str) -> Value {
    let id = rec.instance_id.as_str();
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": { "name": secret_name(id), "namespace": s.instance_namespace, "labels": labels(rec), "ownerReferences": owner(&deployment_name(id), uid) },
        "type": "Opaque",
        "stringData": { TOKEN_KEY: rec.access_token.expose(), UPSTREAM_TOKEN_KEY: upstream_token },
    })
}

fn claim(
    name: &str,
    s: &KubeSettings,
    labels: Value,
    size: &str,
    mode: &str,
    owner_ref: Option<Value>,
) -> Value {
    let mut v = json!({
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": { "name": name, "namespace": s.instance_namespace, "labels": labels },
        "spec": { "accessModes": [mode], "resources": { "requests": { "storage": size } } },
    });
    if let Some(o) = owner_ref {
        v["metadata"]["ownerReferences"] = o;
    }
    if let Some(class) = &s.storage_class {
        v["spec"]["storageClassName"] = json!(class);
    }
    v
}

pub fn config_pvc(rec: &InstanceRecord, s: &KubeSettings, uid: &str) -> Value {
    let id = rec.instance_id.as_str();
    claim(
        &config_claim(id),
        s,
        labels(rec),
        &s.config_storage,
        "ReadWriteOnce",
        Some(owner(&deployment_name(id), uid)),
    )
}

/// The user's workspace: labelled with the user only, owned by nothing, so deleting an
/// instance never deletes it.
pub fn workspace_pvc(rec: &InstanceRecord, s: &KubeSettings) -> Value {
    let labels =
        json!({ MANAGED_BY: MANAGER, COMPONENT: "workspace", USER_LABEL: rec.user_id.as_str() });
    claim(
        &workspace_claim(&rec.user_id),
        s,
        labels,
        &rec.spec.storage_size,
        &s.workspace_access_mode,
        None,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> KubeSettings {
        KubeSettings {
            namespace: "proxy-ns".into(),
            instance_namespace: "inst-ns".into(),
            instance_uid: 4242,
            installer_image: "installer:1".into(),
            storage_class: None,
            workspace_access_mode: "ReadWriteOnce".into(),
            config_storage: "1Gi".into(),
            download_url: "https://update.example".into(),
            replica_name: None,
            runtime: KubeRuntime::ServeWeb,
            port_forwarding: false,
        }
    }

    /// A container's arguments.
    fn args_of(c: &Value) -> Vec<&str> {
        c["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect()
    }

    /// A container's variable `name`.
    fn env<'a>(c: &'a Value, name: &str) -> &'a Value {
        c["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .unwrap()
    }

    fn record() -> InstanceRecord {
        InstanceRecord {
            created_at: 1,
            last_activity_ms: 2,
            ..InstanceRecord::for_tests("alice")
        }
    }

    #[test]
    fn every_object_lives_in_the_instance_namespace() {
        let (rec, s) = (record(), settings());
        for doc in [
            deployment(&rec, &s, 0),
            service(&rec, &s, "uid"),
            secret(&rec, &s, "uid", "up"),
            config_pvc(&rec, &s, "uid"),
            workspace_pvc(&rec, &s),
        ] {
            assert_eq!(doc["metadata"]["namespace"], "inst-ns", "{doc}");
        }
    }

    #[test]
    fn serve_web_requires_the_upstream_secret_which_the_pod_spec_does_not_hold() {
        let rec = record();
        let d = deployment(&rec, &settings(), 1);
        let pod = &d["spec"]["template"]["spec"];
        let c = &pod["containers"][0];
        let args = args_of(c);
        assert!(!args.contains(&"--without-connection-token"), "{args:?}");
        let at = args
            .iter()
            .position(|a| *a == "--connection-token")
            .unwrap();
        assert_eq!(args[at + 1], "$(VOD_UPSTREAM_TOKEN)");
        let env = env(c, "VOD_UPSTREAM_TOKEN");
        assert_eq!(
            env["valueFrom"]["secretKeyRef"],
            json!({ "name": secret_name(rec.instance_id.as_str()), "key": UPSTREAM_TOKEN_KEY })
        );
        assert_eq!(
            c["readinessProbe"]["httpGet"]["path"],
            format!("/instances/{}/version", rec.instance_id)
        );
        let sec = secret(&rec, &settings(), "uid", "up-secret");
        assert_eq!(sec["stringData"][UPSTREAM_TOKEN_KEY], "up-secret");
        assert_eq!(sec["stringData"][TOKEN_KEY], rec.access_token.expose());
    }

    #[test]
    fn pod_and_both_containers_are_confined() {
        let d = deployment(&record(), &settings(), 1);
        let pod = &d["spec"]["template"]["spec"];
        assert_eq!(pod["securityContext"]["runAsUser"], 4242);
        assert_eq!(pod["securityContext"]["fsGroup"], 4242);
        assert_eq!(pod["automountServiceAccountToken"], false);
        for c in [&pod["initContainers"][0], &pod["containers"][0]] {
            let sc = &c["securityContext"];
            assert_eq!(sc["allowPrivilegeEscalation"], false, "{c}");
            assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]), "{c}");
            assert!(sc["runAsUser"].is_null(), "the pod's user applies: {c}");
        }
    }

    #[test]
    fn code_server_runs_from_the_base_image_and_requires_the_secret_as_its_session() {
        let rec = record();
        let s = KubeSettings {
            runtime: KubeRuntime::CodeServer,
            ..settings()
        };
        let d = deployment(&rec, &s, 1);
        let pod = &d["spec"]["template"]["spec"];
        assert_eq!(pod["initContainers"], json!([]), "nothing to download");
        let c = &pod["containers"][0];
        assert_eq!(c["command"], json!(["code-server"]));
        let args = args_of(c);
        let after = |flag: &str| args[args.iter().position(|a| *a == flag).unwrap() + 1];
        assert_eq!(after("--auth"), "password", "{args:?}");
        assert_eq!(after("--bind-addr"), format!("0.0.0.0:{PORT}"));
        assert!(args.contains(&"--disable-proxy"), "{args:?}");
        let env = env(c, "HASHED_PASSWORD");
        assert_eq!(
            env["valueFrom"]["secretKeyRef"],
            json!({ "name": secret_name(rec.instance_id.as_str()), "key": UPSTREAM_TOKEN_KEY })
        );
        assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/healthz");
        assert_eq!(c["securityContext"]["capabilities"]["drop"], json!(["ALL"]));

        let open = KubeSettings {
            port_forwarding: true,
            ..s
        };
        let d = deployment(&rec, &open, 1);
        assert!(
            !args_of(&d["spec"]["template"]["spec"]["containers"][0]).contains(&"--disable-proxy")
        );
    }
}
