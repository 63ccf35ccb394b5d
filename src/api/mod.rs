//! The management API under `/api`: JSON in and out, bearer token required except for the
//! banner and health. Every input is validated before anything is created.

mod keepalive;
pub mod openapi;
pub mod view;

use crate::http::failure::Failure;
use crate::http::response::json;
use crate::http::router::Route;
use crate::http::{events, Body};
use crate::instance::{CreateRequest, InstanceId, State, StopReason, UserId};
use crate::lifecycle::LifecycleError;
use crate::registry::Instance;
use crate::shared::Shared;
use http::{header, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use std::net::IpAddr;
use std::sync::Arc;

/// Largest request body the API reads.
const MAX_BODY: usize = 64 * 1024;

pub async fn handle(
    sh: &Arc<Shared>,
    route: Route<'_>,
    req: Request<Incoming>,
    peer: IpAddr,
) -> Response<Body> {
    match route {
        Route::Banner => {
            return json(
                StatusCode::OK,
                &view::Banner {
                    message: "VS Code Server On-Demand API".into(),
                    service: "vscode-on-demand".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                },
            )
        }
        Route::Health => {
            return json(
                StatusCode::OK,
                &view::Health {
                    status: "healthy".into(),
                },
            )
        }
        Route::OpenApi => return openapi::response(),
        _ => {}
    }
    authorized(sh, route, req, peer)
        .await
        .unwrap_or_else(|f| f.response())
}

async fn authorized(
    sh: &Arc<Shared>,
    route: Route<'_>,
    req: Request<Incoming>,
    peer: IpAddr,
) -> Result<Response<Body>, Failure> {
    authorize(sh, &req, peer)?;
    match route {
        Route::ListInstances => list(sh, &req),
        Route::CreateInstance => create(sh, req).await,
        Route::GetInstance(id) => {
            let inst = lookup(sh, id)?;
            Ok(json(StatusCode::OK, &view::instance(sh, &inst)))
        }
        Route::DeleteInstance(id) => delete(sh, id).await,
        Route::StartInstance(id) => start(sh, id).await,
        Route::StopInstance(id) => stop(sh, id).await,
        Route::KeepaliveInstance(id) => keepalive(sh, id, req).await,
        Route::RotateToken(id) => rotate_token(sh, id).await,
        Route::InstanceEvents(id) => Ok(events::stream(
            lookup(sh, id)?,
            sh.lifecycle.start_timeout * 2,
        )),
        Route::Status => status(sh, &req),
        Route::Workspace(user) => workspace(sh, user).await,
        _ => Err(Failure::not_found("no such API route")),
    }
}

/// `/metrics` on the main listener: behind the admin token, checked as for the API.
pub fn metrics(sh: &Shared, req: &Request<Incoming>, peer: IpAddr) -> Response<Body> {
    match authorize(sh, req, peer) {
        Ok(()) => crate::http::metrics::page(sh),
        Err(f) => f.response(),
    }
}

/// Checks `Authorization: Bearer <admin token>` in constant time; repeated wrong tokens from
/// one client are answered 429.
fn authorize(sh: &Shared, req: &Request<Incoming>, peer: IpAddr) -> Result<(), Failure> {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    if presented.is_some_and(|t| sh.admin_token.matches(t.as_bytes())) {
        return Ok(());
    }
    // Only a wrong token is a failure; asking without one is not a guess.
    if presented.is_some() {
        sh.metrics.auth_failed(true);
        if !sh.guesses.failed(peer) {
            sh.metrics.rate_limited();
            return Err(Failure::rate_limited());
        }
    }
    Err(Failure::unauthorized(
        if presented.is_some() {
            "the API token is wrong"
        } else {
            "send the API token as `Authorization: Bearer <token>` (the server printed it when \
             it generated it; it is in <data-dir>/admin-token)"
        },
        Some("Bearer"),
    ))
}

fn query_param<'a>(req: &'a Request<Incoming>, name: &str) -> Option<&'a str> {
    req.uri()
        .query()?
        .split('&')
        .find_map(|kv| kv.strip_prefix(name).and_then(|r| r.strip_prefix('=')))
}

fn lookup(sh: &Shared, id: &str) -> Result<Arc<Instance>, Failure> {
    let id = InstanceId::parse(id)
        .map_err(|e| Failure::bad_request("invalid_instance_id", e.message))?;
    sh.lifecycle
        .registry
        .get(&id)
        .ok_or_else(|| Failure::not_found(format!("instance {id} not found")))
}

/// A lifecycle refusal as the API answers it; `code` names what failed on the backend.
fn failure(e: LifecycleError, code: &str) -> Failure {
    match e {
        LifecycleError::Invalid(e) => {
            Failure::bad_request(format!("invalid_{}", e.field), e.message)
        }
        e @ LifecycleError::NotRunning { .. } => {
            Failure::client(StatusCode::CONFLICT, "not_running", e)
        }
        e @ LifecycleError::TooManyInstances { .. } => {
            Failure::client(StatusCode::CONFLICT, "too_many_instances", e)
        }
        e @ LifecycleError::Gone(_) => Failure::not_found(e),
        LifecycleError::Backend(e) => Failure::ours(code, e),
    }
}

fn user(s: &str) -> Result<UserId, Failure> {
    UserId::parse(s).map_err(|e| Failure::bad_request("invalid_user_id", e.message))
}

fn list(sh: &Shared, req: &Request<Incoming>) -> Result<Response<Body>, Failure> {
    let all = match query_param(req, "user_id") {
        Some(u) => sh.lifecycle.registry.of_user(&user(u)?),
        None => sh.lifecycle.registry.all(),
    };
    let instances = all.iter().map(|i| view::instance(sh, i)).collect();
    Ok(json(StatusCode::OK, &view::InstanceList { instances }))
}

fn status(sh: &Shared, req: &Request<Incoming>) -> Result<Response<Body>, Failure> {
    let id = query_param(req, "instance_id")
        .ok_or_else(|| Failure::bad_request("missing_instance_id", "pass ?instance_id=<id>"))?;
    let i = lookup(sh, id)?;
    Ok(json(
        StatusCode::OK,
        &view::StatusView {
            instance_id: i.id.as_str().to_owned(),
            status: i.state(),
        },
    ))
}

/// Reads a JSON request body (any size under [`MAX_BODY`]; possibly empty).
async fn json_body(req: Request<Incoming>) -> Result<bytes::Bytes, Failure> {
    let is_json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|ct| ct.starts_with("application/json"));
    if !is_json {
        return Err(Failure::client(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the body as application/json",
        ));
    }
    match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(_) => Err(Failure::client(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the request body must be under {MAX_BODY} bytes"),
        )),
    }
}

async fn create(sh: &Arc<Shared>, req: Request<Incoming>) -> Result<Response<Body>, Failure> {
    let body = json_body(req).await?;
    let create: CreateRequest = serde_json::from_slice(&body).map_err(|e| {
        Failure::bad_request(
            "invalid_json",
            format!("the body is not a valid create request: {e}"),
        )
    })?;
    let inst = sh
        .lifecycle
        .create(create, &sh.defaults)
        .await
        .map_err(|e| failure(e, "create_failed"))?;
    let token = inst.credential().token().clone();
    Ok(json(
        StatusCode::CREATED,
        &view::with_token(sh, &inst, &token),
    ))
}

/// `POST /api/instances/{id}/token`: a new access token in place of the old one, which
/// stops opening the instance at once (cookies holding it too).
async fn rotate_token(sh: &Arc<Shared>, id: &str) -> Result<Response<Body>, Failure> {
    let inst = lookup(sh, id)?;
    let token = sh
        .lifecycle
        .rotate_token(&inst)
        .await
        .map_err(|e| failure(e, "rotate_failed"))?;
    Ok(json(StatusCode::OK, &view::with_token(sh, &inst, &token)))
}

async fn delete(sh: &Arc<Shared>, id: &str) -> Result<Response<Body>, Failure> {
    let inst = lookup(sh, id)?;
    sh.lifecycle
        .delete(&inst)
        .await
        .map_err(|e| failure(e, "delete_failed"))?;
    Ok(json(
        StatusCode::OK,
        &view::Deleted {
            instance_id: inst.id.as_str().to_owned(),
            status: "Deleted".into(),
        },
    ))
}

async fn start(sh: &Arc<Shared>, id: &str) -> Result<Response<Body>, Failure> {
    let inst = lookup(sh, id)?;
    // Asking for it is activity, also when it already runs.
    inst.touch();
    sh.lifecycle.ensure_running(&inst).await?;
    Ok(json(StatusCode::OK, &view::instance(sh, &inst)))
}

async fn stop(sh: &Arc<Shared>, id: &str) -> Result<Response<Body>, Failure> {
    let inst = lookup(sh, id)?;
    sh.lifecycle.stop(&inst, StopReason::Api).await;
    Ok(json(StatusCode::OK, &view::instance(sh, &inst)))
}

/// `POST /api/instances/{id}/keepalive`: the request-based activity signal for programs, with
/// an optional `busy_until` (Unix seconds or RFC 3339) for long jobs.
async fn keepalive(
    sh: &Arc<Shared>,
    id: &str,
    req: Request<Incoming>,
) -> Result<Response<Body>, Failure> {
    let inst = lookup(sh, id)?;
    let body = json_body(req).await?;
    let now = inst.now_ms();
    let max = sh.defaults.max_idle_timeout_secs;
    let until = keepalive::busy_until_ms(&body, now, max)
        .map_err(|e| Failure::bad_request(e.code(), &e))?;
    sh.lifecycle
        .keepalive(&inst, until)
        .await
        .map_err(|e| failure(e, "keepalive_failed"))?;
    if let Some(u) = until {
        tracing::info!(instance = %inst.id, busy_until = %view::rfc3339_secs(u / 1000), "busy until");
    }
    Ok(json(StatusCode::OK, &view::instance(sh, &inst)))
}

async fn workspace(sh: &Arc<Shared>, user_id: &str) -> Result<Response<Body>, Failure> {
    let user = user(user_id)?;
    let info = sh
        .lifecycle
        .orchestrator
        .workspace(&user)
        .await
        .map_err(|e| Failure::ours("workspace_failed", e))?;
    let instances = sh.lifecycle.registry.of_user(&user);
    let active = instances
        .iter()
        .filter(|i| i.state() == State::Running)
        .count();
    let storage = instances
        .first()
        .map(|i| i.spec.storage_size.clone())
        .unwrap_or_else(|| sh.defaults.storage_size.clone());
    Ok(json(
        StatusCode::OK,
        &view::WorkspaceView {
            user_id: user.as_str().to_owned(),
            workspace_exists: info.exists,
            storage_size: storage,
            status: if info.exists { "Bound" } else { "NotFound" }.into(),
            creation_time: info.created_at.map(view::rfc3339_secs),
            active_instances: active as u64,
            instances: instances.iter().map(|i| i.id.as_str().to_owned()).collect(),
        },
    ))
}
