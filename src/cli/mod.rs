//! The client subcommands (`create`, `list`, `get`, `delete`, `status`, `start`, `stop`,
//! `rotate-token`, `keepalive`, `workspace`): call the API and print results for people, or
//! the JSON with `--json`.
//! Without flags they find the local server through its data directory; `list` prints an
//! aligned table ([`table`]).

mod progress;
mod table;

use crate::config::{default_data_dir, ClientConfig, Command, CreateArgs, KeepaliveArgs};
use crate::outbound::{system_roots, Outbound};
use bytes::Bytes;
use http::Method;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Setup(String),
    #[error("cannot reach the server at {url}: {source}")]
    Unreachable {
        url: String,
        #[source]
        source: crate::outbound::OutboundError,
    },
    #[error("{message} (HTTP {status})")]
    Api { status: u16, message: String },
    #[error("the start failed: {0}")]
    StartFailed(String),
}

/// A resolved connection to the API.
#[derive(Clone)]
struct Api {
    base: String,
    token: Option<String>,
    http: Outbound,
}

impl Api {
    fn resolve(c: &ClientConfig) -> Result<Self, CliError> {
        let data_dir = c.data_dir.clone().unwrap_or_else(default_data_dir);
        let discovered: Option<Value> = std::fs::read(data_dir.join("server.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let base = c
            .api_url
            .clone()
            .or_else(|| discovered.as_ref()?["api_url"].as_str().map(String::from))
            .unwrap_or_else(|| "https://localhost:8443".into());
        let base = base
            .trim_end_matches('/')
            .trim_end_matches("/api")
            .to_owned();
        let token = c.token.clone().or_else(|| {
            std::fs::read_to_string(data_dir.join("admin-token"))
                .ok()
                .map(|s| s.trim().to_owned())
        });
        let ca: Option<PathBuf> = c
            .ca_cert
            .clone()
            .or_else(|| discovered.as_ref()?["ca_cert"].as_str().map(PathBuf::from));
        let mut roots = system_roots();
        if let Some(ca) = &ca {
            let certs = crate::tls::load_certs(ca)
                .map_err(|e| CliError::Setup(format!("CA certificate: {e}")))?;
            for cert in certs {
                roots.add(cert).map_err(|e| {
                    CliError::Setup(format!("CA certificate {}: {e}", ca.display()))
                })?;
            }
        }
        Ok(Self {
            base,
            token,
            http: Outbound::new(roots, Duration::from_secs(300), 16 << 20),
        })
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, CliError> {
        let url = format!("{}/api{path}", self.base);
        let auth = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let mut headers = vec![("accept", "application/json")];
        if let Some(a) = &auth {
            headers.push(("authorization", a.as_str()));
        }
        if body.is_some() {
            headers.push(("content-type", "application/json"));
        }
        let body = body.map(|b| Bytes::from(b.to_string()));
        let resp = self
            .http
            .send(method, &url, &headers, body)
            .await
            .map_err(|source| CliError::Unreachable {
                url: self.base.clone(),
                source,
            })?;
        let value: Value = serde_json::from_slice(&resp.body).unwrap_or(Value::Null);
        if !resp.status.is_success() {
            let message = value["message"]
                .as_str()
                .map(String::from)
                .unwrap_or_else(|| String::from_utf8_lossy(&resp.body).trim().to_owned());
            return Err(CliError::Api {
                status: resp.status.as_u16(),
                message,
            });
        }
        Ok(value)
    }
}

fn field<'a>(v: &'a Value, k: &str) -> &'a str {
    v[k].as_str().unwrap_or("-")
}

fn print_instance(v: &Value) {
    for (label, key) in [
        ("Instance ID", "instance_id"),
        ("User ID", "user_id"),
        ("Status", "status"),
        ("URL", "url"),
        ("Base image", "base_image"),
        ("VS Code version", "vscode_version"),
        ("Created", "creation_time"),
        ("Last activity", "last_activity"),
    ] {
        println!("{label:<16} {}", field(v, key));
    }
    println!(
        "{:<16} {}s (notice {}s before)",
        "Idle timeout", v["idle_timeout"], v["idle_notice"]
    );
    if let Some(t) = v["busy_until"].as_str() {
        println!("{:<16} {t}", "Busy until");
    }
    if let Some(t) = v["idle_stop_at"].as_str() {
        println!("{:<16} {t} unless there is activity", "Idle stop at");
    }
    if let Some(r) = v["stop_reason"].as_str() {
        println!("{:<16} {r}", "Stop reason");
    }
    if let Some(m) = v["message"].as_str().filter(|m| !m.is_empty()) {
        println!("{:<16} {m}", "Message");
    }
}

/// What opens an instance, from an answer that gives its access token (create, rotation).
fn print_access(v: &Value) {
    println!("{:<16} {}", "Instance ID", field(v, "instance_id"));
    println!("{:<16} {}", "URL", field(v, "url"));
    println!("{:<16} {}", "Access token", field(v, "access_token"));
}

/// Runs a client subcommand; the error is printed by `main` with a non-zero exit.
pub async fn run(cmd: Command) -> Result<(), CliError> {
    let (client, out) = match cmd {
        Command::Create(a) => {
            let api = Api::resolve(&a.client)?;
            let v = api
                .call(Method::POST, "/instances", Some(create_body(&a)))
                .await?;
            if !a.client.json {
                println!("Instance created.");
                print_access(&v);
            }
            if !(a.start || a.wait.wait) {
                if !a.client.json {
                    println!(
                        "{:<16} {} (starts when the URL is first opened)",
                        "Status",
                        field(&v, "status")
                    );
                }
                return finish(&a.client, &v);
            }
            let id = field(&v, "instance_id").to_owned();
            let started = if a.wait.wait {
                progress::start(&api, &id, a.client.json).await?
            } else {
                api.call(Method::POST, &format!("/instances/{id}/start"), None)
                    .await?
            };
            if !a.client.json {
                println!("{:<16} {}", "Status", field(&started, "status"));
            }
            (a.client, v)
        }
        Command::List { user_id, client } => {
            let api = Api::resolve(&client)?;
            let path = match &user_id {
                Some(u) => format!("/instances?user_id={u}"),
                None => "/instances".into(),
            };
            let v = api.call(Method::GET, &path, None).await?;
            if !client.json {
                let items = v["instances"].as_array().cloned().unwrap_or_default();
                if items.is_empty() {
                    println!("No instances.");
                } else {
                    print!("{}", table::instances(&items));
                }
            }
            (client, v)
        }
        Command::Get(a) => {
            let v = Api::resolve(&a.client)?
                .call(Method::GET, &format!("/instances/{}", a.instance_id), None)
                .await?;
            if !a.client.json {
                print_instance(&v);
            }
            (a.client, v)
        }
        Command::Delete(a) => {
            let v = Api::resolve(&a.client)?
                .call(
                    Method::DELETE,
                    &format!("/instances/{}", a.instance_id),
                    None,
                )
                .await?;
            if !a.client.json {
                println!(
                    "Instance {} deleted (the user's workspace is kept).",
                    field(&v, "instance_id")
                );
            }
            (a.client, v)
        }
        Command::Status(a) => {
            let v = Api::resolve(&a.client)?
                .call(
                    Method::GET,
                    &format!("/status?instance_id={}", a.instance_id),
                    None,
                )
                .await?;
            if !a.client.json {
                println!("{}: {}", field(&v, "instance_id"), field(&v, "status"));
            }
            (a.client, v)
        }
        Command::Start { instance: a, wait } => {
            let api = Api::resolve(&a.client)?;
            let v = if wait.wait {
                progress::start(&api, &a.instance_id, a.client.json).await?
            } else {
                api.call(
                    Method::POST,
                    &format!("/instances/{}/start", a.instance_id),
                    None,
                )
                .await?
            };
            if !a.client.json {
                println!("{}: {}", field(&v, "instance_id"), field(&v, "status"));
            }
            (a.client, v)
        }
        Command::Stop(a) => {
            let v = Api::resolve(&a.client)?
                .call(
                    Method::POST,
                    &format!("/instances/{}/stop", a.instance_id),
                    None,
                )
                .await?;
            if !a.client.json {
                println!("{}: {}", field(&v, "instance_id"), field(&v, "status"));
            }
            (a.client, v)
        }
        Command::RotateToken(a) => {
            let v = Api::resolve(&a.client)?
                .call(
                    Method::POST,
                    &format!("/instances/{}/token", a.instance_id),
                    None,
                )
                .await?;
            if !a.client.json {
                println!("New access token; the old one no longer opens the instance.");
                print_access(&v);
            }
            (a.client, v)
        }
        Command::Keepalive(a) => {
            let v = Api::resolve(&a.client)?
                .call(
                    Method::POST,
                    &format!("/instances/{}/keepalive", a.instance_id),
                    keepalive_body(&a),
                )
                .await?;
            if !a.client.json {
                print_instance(&v);
            }
            (a.client, v)
        }
        Command::Workspace { user_id, client } => {
            let v = Api::resolve(&client)?
                .call(Method::GET, &format!("/workspaces/{user_id}"), None)
                .await?;
            if !client.json {
                println!("{:<18} {}", "User ID", field(&v, "user_id"));
                println!("{:<18} {}", "Workspace exists", v["workspace_exists"]);
                println!("{:<18} {}", "Active instances", v["active_instances"]);
                println!("{:<18} {}", "Instances", v["instances"]);
            }
            (client, v)
        }
        Command::Serve(_)
        | Command::Cert { .. }
        | Command::InstallCli { .. }
        | Command::Completions { .. } => return Ok(()),
    };
    finish(&client, &out)
}

/// With `--json`, the answer as it came.
fn finish(client: &crate::config::ClientConfig, out: &Value) -> Result<(), CliError> {
    if client.json {
        println!("{}", serde_json::to_string_pretty(out).unwrap_or_default());
    }
    Ok(())
}

fn create_body(a: &CreateArgs) -> Value {
    let mut v = json!({ "user_id": a.user_id });
    let opts = [
        ("base_image", &a.base_image),
        ("vscode_version", &a.vscode_version),
        ("storage_size", &a.storage_size),
        ("memory_request", &a.memory_request),
        ("memory_limit", &a.memory_limit),
        ("cpu_request", &a.cpu_request),
        ("cpu_limit", &a.cpu_limit),
    ];
    for (k, val) in opts {
        if let Some(x) = val {
            v[k] = json!(x);
        }
    }
    if let Some(t) = a.idle_timeout {
        v["idle_timeout"] = json!(t);
    }
    if let Some(n) = a.idle_notice {
        v["idle_notice"] = json!(n);
    }
    v
}

fn keepalive_body(a: &KeepaliveArgs) -> Option<Value> {
    if let Some(d) = a.busy_for {
        let until = std::time::SystemTime::now() + d;
        let secs = until
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |t| t.as_secs());
        return Some(json!({ "busy_until": secs }));
    }
    let until = a.busy_until.as_ref()?;
    // Unix seconds go as a number, anything else as the text the server parses.
    Some(match until.parse::<u64>() {
        Ok(secs) => json!({ "busy_until": secs }),
        Err(_) => json!({ "busy_until": until }),
    })
}

/// Downloads the VS Code CLI for `version` into `dest` unless it is already there.
pub async fn install_cli(
    download_url: &str,
    version: &str,
    dest: &std::path::Path,
) -> Result<PathBuf, CliError> {
    let http = Outbound::new(
        system_roots(),
        crate::orchestrator::runtime::DOWNLOAD_TIMEOUT,
        512 << 20,
    );
    crate::orchestrator::runtime::download_cli(download_url, version, dest, &http)
        .await
        .map_err(|e| CliError::Setup(e.to_string()))
}
