//! Pages the proxy serves itself: the "starting" page (with its script, served from the
//! instance's own path so a strict CSP allows it) and the sign-in-required page.

use crate::http::response::{escape, html, page};
use crate::http::Body;
use http::{header, HeaderValue, Response, StatusCode};

pub fn starting(id: &str, message: &str) -> Response<Body> {
    let body = format!(
        "<p>Your VS Code <code>{id}</code> is starting. This page moves on by itself when it is ready.</p>\
         <p id=vod-state>{msg}</p><ol id=vod-log></ol>\
         <p><button id=vod-retry hidden>Try again</button></p>\
         <noscript><p>Reload this page in a few seconds.</p></noscript>\
         <script src=\"_vod/starting.js\"></script>",
        id = escape(id),
        msg = escape(message),
    );
    // Relative script URL: the page is always served at `/instances/<id>/…`, possibly deeper;
    // a base element pins it to the instance root.
    let body = format!("<base href=\"/instances/{}/\">{body}", escape(id));
    html(StatusCode::OK, page("Starting VS Code…", &body))
}

pub const STARTING_JS: &str = r#"(function () {
  var state = document.getElementById('vod-state');
  var log = document.getElementById('vod-log');
  var retry = document.getElementById('vod-retry');
  var last = '';
  function note(text) {
    if (!text || text === last) return;
    last = text;
    var li = document.createElement('li');
    li.textContent = text;
    log.appendChild(li);
  }
  retry.onclick = function () { location.reload(); };
  var es = new EventSource('_vod/events');
  es.addEventListener('status', function (e) {
    var s = JSON.parse(e.data);
    state.textContent = s.state;
    note(s.message);
  });
  es.addEventListener('ready', function () {
    es.close();
    state.textContent = 'Ready — opening VS Code…';
    location.reload();
  });
  es.addEventListener('failed', function (e) {
    es.close();
    var s = JSON.parse(e.data);
    state.textContent = 'Start failed: ' + s.message;
    retry.hidden = false;
  });
  es.onerror = function () {
    if (es.readyState === EventSource.CLOSED) { retry.hidden = false; }
  };
})();
"#;

pub fn starting_js() -> Response<Body> {
    let mut r = Response::new(crate::http::response::full(STARTING_JS));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/javascript; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

pub fn unauthorized(wrong: bool) -> Response<Body> {
    let why = if wrong {
        "The access token for this instance is wrong or has changed."
    } else {
        "This VS Code instance needs its access token."
    };
    html(
        StatusCode::UNAUTHORIZED,
        page(
            "Access token required",
            &format!("<p>{why}</p><p>Open the URL with <code>?tkn=&lt;access token&gt;</code> that was printed when the instance was created.</p>"),
        ),
    )
}
