//! `GET /api/openapi.json`: the API's OpenAPI 3.1 document, built at first request from the
//! types the handlers serialize ([`super::view`]) and parse ([`CreateRequest`],
//! [`KeepaliveRequest`]). It needs no token: it describes the API, not its data. The paths
//! are declared here, one stub per route; `tests/openapi.rs` calls every documented
//! operation against a running server and checks each answer against the document.

// The route stubs at the end are read by `#[derive(OpenApi)]` only.
#![allow(dead_code)]

use super::keepalive::KeepaliveRequest;
use super::view::{
    Banner, Deleted, ErrorBody, Health, InstanceList, InstanceView, InstanceWithToken, StatusView,
    WorkspaceView,
};
use crate::http::events::{SseEvent, StatusEvent};
use crate::http::response::json_bytes;
use crate::http::Body;
use crate::instance::{CreateRequest, State};
use http::{Response, StatusCode};
use std::sync::OnceLock;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "vscode-on-demand",
        description = "VS Code in the browser on demand: create, start, stop and delete instances. \
            Every route except the banner, health and this document needs \
            `Authorization: Bearer <admin token>`. Every failure answers `{\"error\": <code>, \
            \"message\": <what to fix>}`; for a field that is wrong the code is \
            `invalid_<field>`."
    ),
    paths(
        banner, health, document, list, create, get, delete, start, stop, keepalive,
        rotate_token, events, status, workspace
    ),
    components(schemas(
        Banner, Health, ErrorBody, InstanceView, InstanceWithToken, InstanceList, StatusView,
        Deleted, WorkspaceView, CreateRequest, KeepaliveRequest, State, StatusEvent, SseEvent
    )),
    modifiers(&Bearer)
)]
pub struct ApiDoc;

struct Bearer;

impl Modify for Bearer {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        let c = api.components.get_or_insert_with(Default::default);
        c.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// The document as JSON, built once.
pub fn document_json() -> &'static [u8] {
    static DOC: OnceLock<Vec<u8>> = OnceLock::new();
    DOC.get_or_init(|| json_bytes(&ApiDoc::openapi()))
}

pub fn response() -> Response<Body> {
    crate::http::response::json_raw(StatusCode::OK, document_json())
}

// The stubs below only carry the route documentation (read by the derive above, never
// called); `api::handle` serves the routes.

/// The banner.
#[utoipa::path(get, path = "/api/", tag = "meta",
    responses((status = 200, description = "Who answers", body = Banner)))]
fn banner() {}

/// Health.
#[utoipa::path(get, path = "/api/health", tag = "meta",
    responses((status = 200, description = "The server is up", body = Health)))]
fn health() {}

/// This document.
#[utoipa::path(get, path = "/api/openapi.json", tag = "meta",
    responses((status = 200, description = "The OpenAPI document", content_type = "application/json")))]
fn document() {}

/// Instances, all or one user's.
#[utoipa::path(get, path = "/api/instances", tag = "instances", security(("bearer" = [])),
    params(("user_id" = Option<String>, Query, description = "Only this user's instances", pattern = "^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$")),
    responses(
        (status = 200, description = "The instances", body = InstanceList),
        (status = 400, description = "`invalid_user_id`", body = ErrorBody),
        (status = 401, description = "No token or a wrong one", body = ErrorBody),
        (status = 429, description = "Too many wrong tokens from this client", body = ErrorBody),
    ))]
fn list() {}

/// Creates an instance (stopped; opening it or `start` starts it).
#[utoipa::path(post, path = "/api/instances", tag = "instances", security(("bearer" = [])),
    request_body = CreateRequest,
    responses(
        (status = 201, description = "Created; the only answer with its access token besides rotation", body = InstanceWithToken),
        (status = 400, description = "`invalid_json` or `invalid_<field>`", body = ErrorBody),
        (status = 401, description = "No token or a wrong one", body = ErrorBody),
        (status = 409, description = "`too_many_instances`: the user or server is at its limit", body = ErrorBody),
        (status = 413, description = "The body is too large", body = ErrorBody),
        (status = 415, description = "The body is not JSON", body = ErrorBody),
        (status = 429, description = "Too many wrong tokens from this client", body = ErrorBody),
        (status = 500, description = "The backend failed (`create_failed`)", body = ErrorBody),
    ))]
fn create() {}

/// One instance.
#[utoipa::path(get, path = "/api/instances/{id}", tag = "instances", security(("bearer" = [])),
    params(("id" = String, Path, description = "Instance id: `<user_id>-<8 hex digits>`", pattern = "^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?-[0-9a-f]{8}$")),
    responses(
        (status = 200, description = "The instance", body = InstanceView),
        (status = 400, description = "`invalid_instance_id`", body = ErrorBody),
        (status = 401, description = "No token or a wrong one", body = ErrorBody),
        (status = 404, description = "No such instance", body = ErrorBody),
        (status = 429, description = "Too many wrong tokens from this client", body = ErrorBody),
    ))]
fn get() {}

/// Deletes an instance; the user's workspace stays.
#[utoipa::path(delete, path = "/api/instances/{id}", tag = "instances", security(("bearer" = [])),
    params(("id" = String, Path, description = "Instance id: `<user_id>-<8 hex digits>`", pattern = "^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?-[0-9a-f]{8}$")),
    responses(
        (status = 200, description = "Deleted", body = Deleted),
        (status = 400, description = "`invalid_instance_id`", body = ErrorBody),
        (status = 401, description = "No token or a wrong one", body = ErrorBody),
        (status = 404, description = "No such instance", body = ErrorBody),
        (status = 429, description = "Too many wrong tokens from this client", body = ErrorBody),
        (status = 500, description = "The backend failed (`delete_failed`)", body = ErrorBody),
    ))]
fn delete() {}

/// Starts an instance and answers once it runs.
#[utoipa::path(post, path = "/api/instances/{id}/start", tag = "instances", security(("bearer" = [])),
    params(("id" = String, Path, description = "Instance id: `<user_id>-<8 hex digits>`", pattern = "^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?-[0-9a-f]{8}$")),
    responses(
        (status = 200, description = "Running", body = InstanceView),
        (status = 400, description = "`invalid_instance_id`", body = ErrorBody),
        (status = 401, description = "No token or a wrong one", body = ErrorBody),
        (status = 404, description = "No such instance", body = ErrorBody),
        (status = 429, description = "`at_capacity` (see `Retry-After`) or too many wrong tokens", body = ErrorBody),
        (status = 502, description = "`start_failed`: the instance failed to start", body = ErrorBody),
        (status = 503, description = "`not_ready`: not ready in time", body = ErrorBody),
    ))]
fn start() {}

/// Stops an instance (scale to zero; files stay).
#[utoipa::path(post, path = "/api/instances/{id}/stop", tag = "instances", security(("bearer" = [])),
    params(("id" = String, Path, description = "Instance id: `<user_id>-<8 hex digits>`", pattern = "^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?-[0-9a-f]{8}$")),
    responses(
        (status = 200, description = "Stopped", body = InstanceView),
        (status = 400, description = "`invalid_instance_id`", body = ErrorBody),
        (status = 401, description = "No token or a wrong one", body = ErrorBody),
        (status = 404, description = "No such instance", body = ErrorBody),
        (status = 429, description = "Too many wrong tokens from this client", body = ErrorBody),
    ))]
fn stop() {}

/// Activity from a program; `busy_until` keeps it from idling until then.
#[utoipa::path(post, path = "/api/instances/{id}/keepalive", tag = "instances", security(("bearer" = [])),
    params(("id" = String, Path, description = "Instance id: `<user_id>-<8 hex digits>`", pattern = "^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?-[0-9a-f]{8}$")),
    request_body(content = Option<KeepaliveRequest>, description = "Optional; `{}` or nothing is plain activity"),
    responses(
        (status = 200, description = "Noted", body = InstanceView),
        (status = 400, description = "`invalid_instance_id`, `invalid_json` or `invalid_busy_until`", body = ErrorBody),
        (status = 401, description = "No token or a wrong one", body = ErrorBody),
        (status = 404, description = "No such instance", body = ErrorBody),
        (status = 409, description = "`not_running`", body = ErrorBody),
        (status = 413, description = "The body is too large", body = ErrorBody),
        (status = 415, description = "The body is not JSON", body = ErrorBody),
        (status = 429, description = "Too many wrong tokens from this client", body = ErrorBody),
        (status = 500, description = "The backend failed (`keepalive_failed`)", body = ErrorBody),
    ))]
fn keepalive() {}

/// Replaces the instance's access token; the old one stops working at once.
#[utoipa::path(post, path = "/api/instances/{id}/token", tag = "instances", security(("bearer" = [])),
    params(("id" = String, Path, description = "Instance id: `<user_id>-<8 hex digits>`", pattern = "^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?-[0-9a-f]{8}$")),
    responses(
        (status = 200, description = "The new token and URL", body = InstanceWithToken),
        (status = 400, description = "`invalid_instance_id`", body = ErrorBody),
        (status = 401, description = "No token or a wrong one", body = ErrorBody),
        (status = 404, description = "No such instance", body = ErrorBody),
        (status = 429, description = "Too many wrong tokens from this client", body = ErrorBody),
        (status = 500, description = "The backend failed (`rotate_failed`)", body = ErrorBody),
    ))]
fn rotate_token() {}

/// The instance's status as server-sent events: `status` (`{"state","message"}`) on every
/// change, then `ready` or `failed`, after which the stream ends.
#[utoipa::path(get, path = "/api/instances/{id}/events", tag = "instances", security(("bearer" = [])),
    params(("id" = String, Path, description = "Instance id: `<user_id>-<8 hex digits>`", pattern = "^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?-[0-9a-f]{8}$")),
    responses(
        (status = 200, description = "Server-sent events", content_type = "text/event-stream", body = SseEvent),
        (status = 400, description = "`invalid_instance_id`", body = ErrorBody),
        (status = 401, description = "No token or a wrong one", body = ErrorBody),
        (status = 404, description = "No such instance", body = ErrorBody),
        (status = 429, description = "Too many wrong tokens from this client", body = ErrorBody),
    ))]
fn events() {}

/// The predecessor's status call.
#[utoipa::path(get, path = "/api/status", tag = "instances", security(("bearer" = [])),
    params(("instance_id" = String, Query, description = "Instance id", pattern = "^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?-[0-9a-f]{8}$")),
    responses(
        (status = 200, description = "Its state", body = StatusView),
        (status = 400, description = "`missing_instance_id` or `invalid_instance_id`", body = ErrorBody),
        (status = 401, description = "No token or a wrong one", body = ErrorBody),
        (status = 404, description = "No such instance", body = ErrorBody),
        (status = 429, description = "Too many wrong tokens from this client", body = ErrorBody),
    ))]
fn status() {}

/// A user's persistent workspace.
#[utoipa::path(get, path = "/api/workspaces/{user}", tag = "workspaces", security(("bearer" = [])),
    params(("user" = String, Path, description = "User id", pattern = "^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$")),
    responses(
        (status = 200, description = "The workspace", body = WorkspaceView),
        (status = 400, description = "`invalid_user_id`", body = ErrorBody),
        (status = 401, description = "No token or a wrong one", body = ErrorBody),
        (status = 429, description = "Too many wrong tokens from this client", body = ErrorBody),
        (status = 500, description = "The backend failed (`workspace_failed`)", body = ErrorBody),
    ))]
fn workspace() {}
