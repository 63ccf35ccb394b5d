//! The instance pod's VS Code container for each runtime: `code serve-web` (the VS Code CLI,
//! downloaded by our init container) or `code-server` (from the base image), each requiring
//! the upstream secret that only the proxy sends.

use super::objects::{cli_path, secret_name, KubeSettings, CONFIG_MOUNT, PORT, UPSTREAM_TOKEN_KEY};
use super::security;
use crate::instance::{InstanceRecord, SecretCookie};
use serde_json::{json, Value};

/// The variable the connection token reaches serve-web through: `$(VAR)` in the arguments is
/// expanded by the kubelet, so the value is in neither the Deployment nor the pod spec.
const UPSTREAM_TOKEN_ENV: &str = "VOD_UPSTREAM_TOKEN";
/// The variable code-server reads its password hash from. A value without `$argon` is taken
/// as a legacy hash and compared with the session cookie as it is: the upstream secret itself
/// becomes the cookie only the proxy sends, and no password typed on code-server's login page
/// matches it (that would take a SHA-256 preimage of a random value).
const CODE_SERVER_SECRET_ENV: &str = "HASHED_PASSWORD";

/// What instance pods run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KubeRuntime {
    /// `code serve-web` of the VS Code CLI, which our init container downloads into the config
    /// volume: any base image will do.
    ServeWeb,
    /// `code-server` from the base image (the code-server images have it on PATH): nothing is
    /// downloaded, and no init container runs.
    CodeServer,
}

impl KubeRuntime {
    pub fn secret_cookie(self) -> SecretCookie {
        match self {
            Self::ServeWeb => SecretCookie::ConnectionToken,
            Self::CodeServer => SecretCookie::CodeServerSession,
        }
    }

    /// code-server serves at `/`; serve-web takes the instance's base path.
    pub fn strip_prefix(self) -> bool {
        self == Self::CodeServer
    }
}

/// What differs between runtimes: init containers, and the main container's command,
/// arguments, environment and readiness probe.
pub(super) struct MainContainer {
    pub init: Value,
    pub container: serde_json::Map<String, Value>,
}

fn fields(v: Value) -> serde_json::Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => serde_json::Map::new(),
    }
}

pub(super) fn serve_web(rec: &InstanceRecord, s: &KubeSettings) -> MainContainer {
    let id = rec.instance_id.as_str();
    let spec = &rec.spec;
    let base_path = format!("/instances/{id}");
    MainContainer {
        init: json!([{
            "name": "install-vscode",
            "image": s.installer_image,
            "command": ["/vscode-on-demand"],
            "args": ["install-cli", "--version", spec.vscode_version, "--dest", CONFIG_MOUNT, "--download-url", s.download_url],
            "volumeMounts": [{ "name": "config", "mountPath": CONFIG_MOUNT }],
            "resources": { "requests": { "cpu": "50m", "memory": "64Mi" }, "limits": { "cpu": "1", "memory": "256Mi" } },
            "securityContext": security::container(true),
        }]),
        container: fields(json!({
            "command": [cli_path(&spec.vscode_version)],
            "args": [
                "--cli-data-dir", format!("{CONFIG_MOUNT}/cli-data"),
                "serve-web", "--host", "0.0.0.0", "--port", PORT.to_string(),
                // Not --connection-token-file: serve-web before 1.92 ignores it and makes up a
                // token of its own (microsoft/vscode#215537), and users pick the version.
                "--connection-token", format!("$({UPSTREAM_TOKEN_ENV})"),
                "--accept-server-license-terms",
                "--server-base-path", base_path,
                "--server-data-dir", format!("{CONFIG_MOUNT}/server-data"),
                "--user-data-dir", format!("{CONFIG_MOUNT}/user-data"),
                "--extensions-dir", format!("{CONFIG_MOUNT}/extensions"),
            ],
            "env": [
                { "name": "VOD_INSTANCE_ID", "value": id },
                { "name": "HOME", "value": format!("{CONFIG_MOUNT}/home") },
                { "name": UPSTREAM_TOKEN_ENV, "valueFrom": { "secretKeyRef": {
                    "name": secret_name(id), "key": UPSTREAM_TOKEN_KEY } } },
            ],
            "readinessProbe": {
                // The one path VS Code's server answers without the connection token.
                "httpGet": { "path": format!("{base_path}/version"), "port": PORT },
                "periodSeconds": 2,
                "failureThreshold": 3,
            },
        })),
    }
}

pub(super) fn code_server(rec: &InstanceRecord, s: &KubeSettings) -> MainContainer {
    let id = rec.instance_id.as_str();
    let mut args = vec![
        "--bind-addr".to_owned(),
        format!("0.0.0.0:{PORT}"),
        "--auth".into(),
        "password".into(),
        "--disable-telemetry".into(),
        "--disable-update-check".into(),
        "--disable-workspace-trust".into(),
        "--user-data-dir".into(),
        format!("{CONFIG_MOUNT}/user-data"),
        "--extensions-dir".into(),
        format!("{CONFIG_MOUNT}/extensions"),
    ];
    if !s.port_forwarding {
        args.push("--disable-proxy".into());
    }
    args.push("/workspaces".into());
    MainContainer {
        init: json!([]),
        container: fields(json!({
            "command": ["code-server"],
            "args": args,
            "env": [
                { "name": "VOD_INSTANCE_ID", "value": id },
                // code-server keeps its config file and state under $HOME.
                { "name": "HOME", "value": format!("{CONFIG_MOUNT}/home") },
                { "name": CODE_SERVER_SECRET_ENV, "valueFrom": { "secretKeyRef": {
                    "name": secret_name(id), "key": UPSTREAM_TOKEN_KEY } } },
            ],
            "readinessProbe": {
                // Answered without the session cookie.
                "httpGet": { "path": "/healthz", "port": PORT },
                "periodSeconds": 2,
                "failureThreshold": 3,
            },
        })),
    }
}
