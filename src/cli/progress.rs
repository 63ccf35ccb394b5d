//! `start --wait` (and `create --start --wait`): the start's phases, live, from the instance's
//! server-sent events (`GET /api/instances/{id}/events`) while `POST …/start` runs beside
//! them. On a terminal one line is redrawn with a spinner and the time so far; otherwise each
//! new phase is a plain line. Progress goes to stdout, or to stderr with `--json` (stdout
//! then carries only the answer). A failed start is an error carrying its reason.

use super::{Api, CliError};
use http::Method;
use http_body_util::BodyExt;
use serde_json::Value;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

const SPINNER: [char; 10] = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];

/// Where progress is shown, and how.
struct Display {
    out: Box<dyn Write + Send>,
    tty: bool,
    since: Instant,
    text: String,
    frame: usize,
}

impl Display {
    fn new(to_stderr: bool) -> Self {
        let (out, tty): (Box<dyn Write + Send>, bool) = if to_stderr {
            (Box::new(std::io::stderr()), std::io::stderr().is_terminal())
        } else {
            (Box::new(std::io::stdout()), std::io::stdout().is_terminal())
        };
        Self {
            out,
            tty,
            since: Instant::now(),
            text: String::new(),
            frame: 0,
        }
    }

    fn secs(&self) -> f64 {
        self.since.elapsed().as_secs_f64()
    }

    /// A phase: redrawn in place on a terminal, a line otherwise when it changed.
    fn phase(&mut self, text: String) {
        if self.tty {
            self.text = text;
            self.redraw();
        } else if text != self.text {
            let _ = writeln!(self.out, "[{:5.1}s] {text}", self.secs());
            self.text = text;
        }
    }

    fn redraw(&mut self) {
        if self.tty {
            self.frame = (self.frame + 1) % SPINNER.len();
            let _ = write!(
                self.out,
                "\r\x1b[2K{} {} ({:.0}s)",
                SPINNER[self.frame],
                self.text,
                self.secs()
            );
            let _ = self.out.flush();
        }
    }

    /// The last line: `mark` then `text`.
    fn end(&mut self, mark: char, text: &str) {
        if self.tty {
            let _ = writeln!(self.out, "\r\x1b[2K{mark} {text} ({:.1}s)", self.secs());
        } else {
            let _ = writeln!(self.out, "[{:5.1}s] {text}", self.secs());
        }
    }
}

/// One parsed event.
struct Event {
    name: String,
    state: String,
    message: String,
}

/// Takes the complete events (ending in a blank line) off the front of `buf`.
fn parse(buf: &mut String) -> Vec<Event> {
    let mut events = Vec::new();
    while let Some(end) = buf.find("\n\n") {
        let block: String = buf.drain(..end + 2).collect();
        let (mut name, mut data) = (String::from("message"), String::new());
        for line in block.lines() {
            if let Some(v) = line.strip_prefix("event:") {
                name = v.trim().to_owned();
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push_str(v.trim());
            }
        }
        if data.is_empty() {
            continue; // a comment (keepalive)
        }
        let v: Value = serde_json::from_str(&data).unwrap_or(Value::Null);
        events.push(Event {
            name,
            state: v["state"].as_str().unwrap_or("?").to_owned(),
            message: v["message"].as_str().unwrap_or("").to_owned(),
        });
    }
    events
}

/// Starts `id`, showing its phases; the start's answer once it runs.
pub(super) async fn start(api: &Api, id: &str, json: bool) -> Result<Value, CliError> {
    let url = format!("{}/api/instances/{id}/events", api.base);
    let auth = api.token.as_ref().map(|t| format!("Bearer {t}"));
    let mut headers = vec![("accept", "text/event-stream")];
    if let Some(a) = &auth {
        headers.push(("authorization", a.as_str()));
    }
    let unreachable = |source| CliError::Unreachable {
        url: api.base.clone(),
        source,
    };
    let resp = api
        .http
        .open(Method::GET, &url, &headers, None)
        .await
        .map_err(unreachable)?;
    if !resp.status().is_success() {
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.map(|b| b.to_bytes());
        let v: Value = body
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null);
        return Err(CliError::Api {
            status,
            message: v["message"]
                .as_str()
                .unwrap_or("the events stream failed")
                .to_owned(),
        });
    }
    // The stream is open, so no phase is missed: now ask for the start.
    let post = {
        let api = api.clone();
        let path = format!("/instances/{id}/start");
        tokio::spawn(async move { api.call(Method::POST, &path, None).await })
    };
    let mut display = Display::new(json);
    let mut body = resp.into_body();
    let mut buf = String::new();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        let frame = tokio::select! {
            f = body.frame() => f,
            _ = tick.tick() => {
                display.redraw();
                continue;
            }
        };
        let Some(Ok(frame)) = frame else { break };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        buf.push_str(&String::from_utf8_lossy(&data));
        for e in parse(&mut buf) {
            match e.name.as_str() {
                "ready" => {
                    display.end('✓', "Running");
                    return post
                        .await
                        .unwrap_or_else(|e| Err(CliError::Setup(e.to_string())));
                }
                "failed" => {
                    display.end('✗', &format!("Failed: {}", e.message));
                    post.abort();
                    return Err(CliError::StartFailed(e.message));
                }
                // Running is shown once, by the ready event that ends the start.
                _ if e.state == "Running" => {}
                _ if e.message.is_empty() || e.message.eq_ignore_ascii_case(&e.state) => {
                    display.phase(e.state)
                }
                _ => display.phase(format!("{}: {}", e.state, e.message)),
            }
        }
    }
    // The stream ended before the start did (its own deadline): the start's answer decides.
    let r = post
        .await
        .unwrap_or_else(|e| Err(CliError::Setup(e.to_string())));
    if display.tty {
        display.end(if r.is_ok() { '✓' } else { '✗' }, "");
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_taken_whole() {
        let mut buf = String::from(
            "event: status\ndata: {\"state\":\"Starting\",\"message\":\"launching\"}\n\n: keepalive\n\nevent: ready\ndata: {\"state\":\"Running\",\"message\":\"\"}\n\nevent: sta",
        );
        let e = parse(&mut buf);
        assert_eq!(e.len(), 2);
        assert_eq!(
            (
                e[0].name.as_str(),
                e[0].state.as_str(),
                e[0].message.as_str()
            ),
            ("status", "Starting", "launching")
        );
        assert_eq!(e[1].name, "ready");
        assert_eq!(buf, "event: sta");
    }
}
