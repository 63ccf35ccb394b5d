//! What the sandbox tests do from inside an instance (served with `--exec` only): run a shell
//! command as the instance, and try to connect to a Unix socket.

use crate::{full, respond, text, Body};
use http_body_util::BodyExt;
use hyper::{body::Incoming, Request, Response, StatusCode};

/// Runs the body with `sh -c`; answers `{"status", "stdout", "stderr"}`.
pub async fn run_shell(req: Request<Incoming>) -> Response<Body> {
    let Ok(body) = req.into_body().collect().await else {
        return text(StatusCode::BAD_REQUEST, "body read failed");
    };
    let script = String::from_utf8_lossy(&body.to_bytes()).into_owned();
    let out = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(&script)
        .stdin(std::process::Stdio::null())
        .output()
        .await;
    match out {
        Ok(out) => {
            let json = serde_json::json!({
                "status": out.status.code(),
                "stdout": String::from_utf8_lossy(&out.stdout),
                "stderr": String::from_utf8_lossy(&out.stderr),
            });
            respond(StatusCode::OK, "application/json", full(json.to_string()))
        }
        Err(err) => text(StatusCode::INTERNAL_SERVER_ERROR, err.to_string()),
    }
}

/// Tries to connect to the Unix socket named by `path=` (percent-decoding is not needed for
/// the paths the tests use); answers `connected` or the error.
pub fn connect(query: &str) -> Response<Body> {
    let Some(path) = query.split('&').find_map(|kv| kv.strip_prefix("path=")) else {
        return text(StatusCode::BAD_REQUEST, "path= is missing");
    };
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => text(StatusCode::OK, "connected"),
        Err(err) => text(StatusCode::OK, format!("failed: {err}")),
    }
}
