//! Host directories for a pod's volumes, and the environment of its containers.

use std::{
    collections::{BTreeMap, HashMap},
    net::Ipv4Addr,
    os::unix::fs::PermissionsExt,
    path::{Component, Path, PathBuf},
};

use k8s_openapi::api::core::v1::{ConfigMap, Container, KeyToPath, Pod, Secret};
use kube::{Api, Client, ResourceExt};
use tracing::warn;

use crate::template::expand_refs;

type Data = BTreeMap<String, Vec<u8>>;

/// Default file mode of secret and configMap volume files, as in Kubernetes.
const DEFAULT_MODE: i32 = 0o644;

/// Creates the host directory of every volume of `pod` and fills the ones whose content comes
/// from the API (secrets, configMaps, downward API). Returns them by volume name; the error is
/// the message for a `FailedMount` event.
pub async fn setup(
    client: &Client,
    state_dir: &Path,
    pod: &Pod,
    pod_dir: &Path,
) -> Result<HashMap<String, PathBuf>, String> {
    let ns = pod.namespace().unwrap_or_default();
    // Also the working directory and log location of the containers, volumes or not.
    create_dir(pod_dir).await?;
    let mut out = HashMap::new();
    let volumes = pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.as_deref())
        .unwrap_or_default();
    for v in volumes {
        let fail = |e: String| format!("MountVolume.SetUp failed for volume {:?} : {e}", v.name);
        let own_dir = pod_dir.join(&v.name);
        let host = if let Some(pvc) = &v.persistent_volume_claim {
            // Keyed by claim, not by pod: this is what keeps a workspace across scale to zero.
            state_dir.join("pvc").join(&ns).join(&pvc.claim_name)
        } else if let Some(hp) = &v.host_path {
            let p = PathBuf::from(&hp.path);
            if hp.type_.as_deref() != Some("DirectoryOrCreate") {
                // Other types name something that must already exist; nothing to create.
                out.insert(v.name.clone(), p);
                continue;
            }
            p
        } else {
            own_dir.clone()
        };
        create_dir(&host).await.map_err(fail)?;

        let mut files = Vec::new();
        if let Some(s) = &v.secret {
            let name = s.secret_name.clone().unwrap_or_default();
            let data = secret_data(client, &ns, &name).await.map_err(fail)?;
            let mode = s.default_mode.unwrap_or(DEFAULT_MODE);
            let opt = s.optional.unwrap_or(false);
            files = key_files("Secret", &ns, &name, data, s.items.as_deref(), mode, opt)
                .map_err(fail)?;
        } else if let Some(c) = &v.config_map {
            let data = config_map_data(client, &ns, &c.name).await.map_err(fail)?;
            let mode = c.default_mode.unwrap_or(DEFAULT_MODE);
            let opt = c.optional.unwrap_or(false);
            files = key_files(
                "ConfigMap",
                &ns,
                &c.name,
                data,
                c.items.as_deref(),
                mode,
                opt,
            )
            .map_err(fail)?;
        } else if let Some(d) = &v.downward_api {
            let mode = d.default_mode.unwrap_or(DEFAULT_MODE);
            for item in d.items.as_deref().unwrap_or_default() {
                if let Some(f) = &item.field_ref {
                    let value = field_value(pod, &f.field_path, None).map_err(fail)?;
                    files.push((
                        item.path.clone(),
                        value.into_bytes(),
                        item.mode.unwrap_or(mode),
                    ));
                }
            }
        } else if let Some(p) = &v.projected {
            let mode = p.default_mode.unwrap_or(DEFAULT_MODE);
            for src in p.sources.as_deref().unwrap_or_default() {
                if let Some(s) = &src.secret {
                    let data = secret_data(client, &ns, &s.name).await.map_err(fail)?;
                    let opt = s.optional.unwrap_or(false);
                    let items = s.items.as_deref();
                    files.extend(
                        key_files("Secret", &ns, &s.name, data, items, mode, opt).map_err(fail)?,
                    );
                } else if let Some(c) = &src.config_map {
                    let data = config_map_data(client, &ns, &c.name).await.map_err(fail)?;
                    let opt = c.optional.unwrap_or(false);
                    let items = c.items.as_deref();
                    files.extend(
                        key_files("ConfigMap", &ns, &c.name, data, items, mode, opt)
                            .map_err(fail)?,
                    );
                } else if let Some(d) = &src.downward_api {
                    for item in d.items.as_deref().unwrap_or_default() {
                        if let Some(f) = &item.field_ref {
                            let value = field_value(pod, &f.field_path, None).map_err(fail)?;
                            files.push((
                                item.path.clone(),
                                value.into_bytes(),
                                item.mode.unwrap_or(mode),
                            ));
                        }
                    }
                }
                // Service account tokens and trust bundles would need a token issuer; a pod
                // that reads them finds the file missing, which is all a test can expect here.
            }
        } else if v.persistent_volume_claim.is_none()
            && v.host_path.is_none()
            && v.empty_dir.is_none()
        {
            warn!(volume = %v.name, "unsupported volume type; giving the pod an empty directory");
        }
        for (rel, content, mode) in files {
            write_file(&host, &rel, &content, mode)
                .await
                .map_err(|e| fail(format!("writing {rel}: {e}")))?;
        }
        out.insert(v.name.clone(), host);
    }
    Ok(out)
}

async fn create_dir(p: &Path) -> Result<(), String> {
    tokio::fs::create_dir_all(p)
        .await
        .map_err(|e| format!("cannot create {}: {e}", p.display()))
}

/// A relative path that stays inside the directory it is joined to.
pub fn safe_rel(rel: &str) -> Option<&Path> {
    let p = Path::new(rel);
    let ok = !rel.is_empty() && p.components().all(|c| matches!(c, Component::Normal(_)));
    ok.then_some(p)
}

async fn write_file(dir: &Path, rel: &str, content: &[u8], mode: i32) -> Result<(), String> {
    let rel_path = safe_rel(rel).ok_or_else(|| format!("invalid path {rel:?}"))?;
    let path = dir.join(rel_path);
    if let Some(parent) = path.parent() {
        create_dir(parent).await?;
    }
    tokio::fs::write(&path, content)
        .await
        .map_err(|e| e.to_string())?;
    // Only the permission bits: anything else in `mode` is not meaningful for a file here.
    let perms = std::fs::Permissions::from_mode((mode as u32) & 0o777);
    tokio::fs::set_permissions(&path, perms)
        .await
        .map_err(|e| e.to_string())
}

/// The files of a secret or configMap volume (or projection). `data` is `None` when the object
/// does not exist.
fn key_files(
    kind: &str,
    ns: &str,
    name: &str,
    data: Option<Data>,
    items: Option<&[KeyToPath]>,
    mode: i32,
    optional: bool,
) -> Result<Vec<(String, Vec<u8>, i32)>, String> {
    let Some(data) = data else {
        if optional {
            return Ok(Vec::new());
        }
        return Err(format!("{} {name:?} not found", kind.to_lowercase()));
    };
    match items {
        None => Ok(data.into_iter().map(|(k, v)| (k, v, mode)).collect()),
        Some(items) => {
            let mut out = Vec::new();
            for it in items {
                match data.get(&it.key) {
                    Some(v) => out.push((it.path.clone(), v.clone(), it.mode.unwrap_or(mode))),
                    None if optional => {}
                    None => {
                        return Err(format!(
                            "couldn't find key {} in {kind} {ns}/{name}",
                            it.key
                        ))
                    }
                }
            }
            Ok(out)
        }
    }
}

pub async fn secret_data(client: &Client, ns: &str, name: &str) -> Result<Option<Data>, String> {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let s = api
        .get_opt(name)
        .await
        .map_err(|e| format!("cannot read secret {name:?}: {e}"))?;
    Ok(s.map(|s| {
        s.data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect()
    }))
}

pub async fn config_map_data(
    client: &Client,
    ns: &str,
    name: &str,
) -> Result<Option<Data>, String> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let c = api
        .get_opt(name)
        .await
        .map_err(|e| format!("cannot read configmap {name:?}: {e}"))?;
    Ok(c.map(|c| {
        let mut d: Data = c
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.into_bytes()))
            .collect();
        d.extend(
            c.binary_data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0)),
        );
        d
    }))
}

/// A downward-API field of the pod (`fieldRef.fieldPath`). `ip` is the address vod-kubelet
/// gave the pod, which its status may not show yet.
pub fn field_value(pod: &Pod, path: &str, ip: Option<Ipv4Addr>) -> Result<String, String> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref();
    let pod_ip = || {
        ip.map(|i| i.to_string())
            .or_else(|| status.and_then(|s| s.pod_ip.clone()))
            .unwrap_or_default()
    };
    let map_text = |m: &Option<BTreeMap<String, String>>| {
        m.iter()
            .flatten()
            .map(|(k, v)| format!("{k}={v:?}\n"))
            .collect::<String>()
    };
    let keyed = |prefix: &str| {
        path.strip_prefix(prefix)
            .and_then(|r| r.strip_prefix("['"))
            .and_then(|r| r.strip_suffix("']"))
    };
    Ok(match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "metadata.labels" => map_text(&meta.labels),
        "metadata.annotations" => map_text(&meta.annotations),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.podIP" | "status.podIPs" => pod_ip(),
        "status.hostIP" => "127.0.0.1".into(),
        _ => {
            if let Some(k) = keyed("metadata.labels") {
                meta.labels
                    .as_ref()
                    .and_then(|l| l.get(k))
                    .cloned()
                    .unwrap_or_default()
            } else if let Some(k) = keyed("metadata.annotations") {
                meta.annotations
                    .as_ref()
                    .and_then(|a| a.get(k))
                    .cloned()
                    .unwrap_or_default()
            } else {
                return Err(format!("unsupported fieldRef {path:?}"));
            }
        }
    })
}

/// The environment of one container start, in definition order (later entries win), with
/// `HOSTNAME` and `POD_IP` first so the container's own `env` can refer to or override them.
/// The error is the message of a `CreateContainerConfigError`.
pub async fn container_env(
    client: &Client,
    pod: &Pod,
    c: &Container,
    ip: Ipv4Addr,
) -> Result<Vec<(String, String)>, String> {
    let ns = pod.namespace().unwrap_or_default();
    let mut env = vec![
        ("HOSTNAME".to_string(), pod.name_any()),
        ("POD_IP".to_string(), ip.to_string()),
    ];
    // Objects are read once per start, not cached across starts: a Secret created after the pod
    // must be picked up on the next attempt.
    let mut secrets: HashMap<String, Option<Data>> = HashMap::new();
    let mut maps: HashMap<String, Option<Data>> = HashMap::new();

    for from in c.env_from.as_deref().unwrap_or_default() {
        let prefix = from.prefix.clone().unwrap_or_default();
        let (data, kind, name, optional) = if let Some(s) = &from.secret_ref {
            let d = cached(&mut secrets, &s.name, secret_data(client, &ns, &s.name)).await?;
            (d, "secret", &s.name, s.optional.unwrap_or(false))
        } else if let Some(m) = &from.config_map_ref {
            let d = cached(&mut maps, &m.name, config_map_data(client, &ns, &m.name)).await?;
            (d, "configmap", &m.name, m.optional.unwrap_or(false))
        } else {
            continue;
        };
        match data {
            Some(d) => env.extend(
                d.into_iter()
                    .map(|(k, v)| (format!("{prefix}{k}"), lossy(v))),
            ),
            None if optional => {}
            None => return Err(format!("{kind} {name:?} not found")),
        }
    }

    for var in c.env.as_deref().unwrap_or_default() {
        let value = if let Some(v) = &var.value {
            Some(expand_refs(v, &env))
        } else if let Some(from) = &var.value_from {
            if let Some(s) = &from.secret_key_ref {
                let d = cached(&mut secrets, &s.name, secret_data(client, &ns, &s.name)).await?;
                key_value(d, "secret", &s.name, &s.key, s.optional.unwrap_or(false))?
            } else if let Some(m) = &from.config_map_key_ref {
                let d = cached(&mut maps, &m.name, config_map_data(client, &ns, &m.name)).await?;
                key_value(d, "configmap", &m.name, &m.key, m.optional.unwrap_or(false))?
            } else if let Some(f) = &from.field_ref {
                Some(field_value(pod, &f.field_path, Some(ip))?)
            } else {
                return Err(format!(
                    "env {}: only value, secretKeyRef, configMapKeyRef and fieldRef are \
                     supported by vod-kubelet",
                    var.name
                ));
            }
        } else {
            Some(String::new())
        };
        if let Some(value) = value {
            env.push((var.name.clone(), value));
        }
    }
    Ok(env)
}

async fn cached(
    cache: &mut HashMap<String, Option<Data>>,
    name: &str,
    fetch: impl std::future::Future<Output = Result<Option<Data>, String>>,
) -> Result<Option<Data>, String> {
    if let Some(d) = cache.get(name) {
        return Ok(d.clone());
    }
    let d = fetch.await?;
    cache.insert(name.to_string(), d.clone());
    Ok(d)
}

fn key_value(
    data: Option<Data>,
    kind: &str,
    name: &str,
    key: &str,
    optional: bool,
) -> Result<Option<String>, String> {
    match data.map(|mut d| d.remove(key)) {
        Some(Some(v)) => Ok(Some(lossy(v))),
        _ if optional => Ok(None),
        None => Err(format!("{kind} {name:?} not found")),
        Some(None) => Err(format!("couldn't find key {key} in {kind} {name:?}")),
    }
}

fn lossy(v: Vec<u8>) -> String {
    String::from_utf8(v).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}
