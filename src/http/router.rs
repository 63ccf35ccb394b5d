//! The router: site (from the host, see [`super::origin`]), method and raw path → [`Route`].
//! Pure, so every path rule is unit-tested.
//!
//! Instance paths are checked strictly: a path that could mean anything other than exactly one
//! instance (encoded slashes or dots, dot segments, backslashes, characters an id cannot have)
//! is refused before any lookup.

use super::origin::Site;
use http::Method;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route<'a> {
    /// The console: its page at `/` and its files under `/console/`.
    Console(crate::console::Asset),
    /// `/metrics`: Prometheus text format, behind the admin token.
    Metrics,
    Banner,
    Health,
    /// `/api/openapi.json`: the API's OpenAPI document.
    OpenApi,
    ListInstances,
    CreateInstance,
    GetInstance(&'a str),
    DeleteInstance(&'a str),
    StartInstance(&'a str),
    StopInstance(&'a str),
    KeepaliveInstance(&'a str),
    RotateToken(&'a str),
    InstanceEvents(&'a str),
    Status,
    Workspace(&'a str),
    /// `/instances/<id>` without the trailing slash: redirected.
    InstanceBare(&'a str),
    /// `/instances/<id>/<rest>`, for the instance; `rest` starts with '/'.
    Instance {
        id: &'a str,
        rest: &'a str,
    },
    /// `/instances/<id>/_vod/<page>`: ours, served beside the instance's pages (its starting
    /// page, the activity script and reports).
    Own {
        id: &'a str,
        page: OwnPage,
    },
    /// An instance path on the public host in host routing: sent to the instance's own origin.
    HandOff(&'a str),
    /// `/` on an instance's own host: sent to its path.
    InstanceHome,
    BadPath(&'static str),
    MethodNotAllowed(&'static str),
    NotFound,
}

/// Where our own pages sit under an instance's path.
pub const OWN_PREFIX: &str = "/_vod/";

/// Our pages under `/instances/<id>/_vod/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnPage {
    /// Start progress as server-sent events.
    Events,
    StartingJs,
    ActivityJs,
    /// Input reported by the activity script.
    Activity,
    /// How long until an idle stop.
    Idle,
    Unknown,
}

impl OwnPage {
    fn of(name: &str) -> Self {
        match name {
            "events" => OwnPage::Events,
            "starting.js" => OwnPage::StartingJs,
            "activity.js" => OwnPage::ActivityJs,
            "activity" => OwnPage::Activity,
            "idle" => OwnPage::Idle,
            _ => OwnPage::Unknown,
        }
    }
}

fn valid_id_chars(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
}

/// Rejects what could make the path mean something else upstream than it does here.
fn ambiguous(path: &str) -> Option<&'static str> {
    // One pass over the bytes, without a lowercased copy or a split per segment: this runs on
    // every proxied request.
    let b = path.as_bytes();
    let (mut slash, mut dot, mut dot_segment) = (false, false, false);
    for (i, &c) in b.iter().enumerate() {
        match c {
            b'\\' => slash = true,
            b'%' => {
                let hex = |j: usize| b.get(j).map(u8::to_ascii_lowercase);
                match (hex(i + 1), hex(i + 2)) {
                    (Some(b'2'), Some(b'f')) | (Some(b'5'), Some(b'c')) => slash = true,
                    (Some(b'2'), Some(b'e')) => dot = true,
                    _ => {}
                }
            }
            // A segment that is `.` or `..`: a dot right after a slash (or at the start), then
            // the segment's end, or one more dot and then its end.
            b'.' if i == 0 || b[i - 1] == b'/' => {
                let end = |j: usize| b.get(j).is_none_or(|&n| n == b'/');
                dot_segment |= end(i + 1) || (b.get(i + 1) == Some(&b'.') && end(i + 2));
            }
            _ => {}
        }
    }
    if slash {
        return Some("encoded slashes are not allowed in instance paths");
    }
    if dot {
        return Some("encoded dots are not allowed in instance paths");
    }
    if dot_segment {
        return Some("dot segments are not allowed in instance paths");
    }
    None
}

pub fn route<'a>(site: Site<'_>, method: &Method, path: &'a str) -> Route<'a> {
    if let Some(after) = path.strip_prefix("/instances/") {
        let (id, rest) = match after.bytes().position(|c| c == b'/') {
            Some(i) => (&after[..i], &after[i..]),
            None => (after, ""),
        };
        if !valid_id_chars(id) {
            return Route::BadPath(
                "the instance id in the path must be lowercase letters, digits and '-'",
            );
        }
        if let Some(why) = ambiguous(path) {
            return Route::BadPath(why);
        }
        return match site {
            Site::Instance(own) if own != id => {
                Route::BadPath("this host serves only the instance its name starts with")
            }
            Site::Front => Route::HandOff(id),
            _ if rest.is_empty() => Route::InstanceBare(id),
            _ => match rest.strip_prefix(OWN_PREFIX) {
                Some(page) => Route::Own {
                    id,
                    page: OwnPage::of(page),
                },
                None => Route::Instance { id, rest },
            },
        };
    }
    if let Site::Instance(_) = site {
        // An instance's origin serves that instance only: no API, no other pages.
        return if path == "/" {
            Route::InstanceHome
        } else {
            Route::NotFound
        };
    }
    if let Some(asset) = crate::console::Asset::at(path) {
        return if method == Method::GET || method == Method::HEAD {
            Route::Console(asset)
        } else {
            Route::MethodNotAllowed("GET, HEAD")
        };
    }
    if path == "/metrics" {
        return only(method == Method::GET, "GET", Route::Metrics);
    }
    let Some(api) = path.strip_prefix("/api") else {
        return Route::NotFound;
    };
    let segs: Vec<&str> = api.trim_start_matches('/').split('/').collect();
    let get = method == Method::GET;
    let post = method == Method::POST;
    match segs.as_slice() {
        [""] => only(get, "GET", Route::Banner),
        ["health"] => only(get, "GET", Route::Health),
        ["openapi.json"] => only(get, "GET", Route::OpenApi),
        ["instances"] | ["instances", ""] => {
            if get {
                Route::ListInstances
            } else if post {
                Route::CreateInstance
            } else {
                Route::MethodNotAllowed("GET, POST")
            }
        }
        ["instances", id] => {
            if get {
                Route::GetInstance(id)
            } else if method == Method::DELETE {
                Route::DeleteInstance(id)
            } else {
                Route::MethodNotAllowed("GET, DELETE")
            }
        }
        ["instances", id, "start"] => only(post, "POST", Route::StartInstance(id)),
        ["instances", id, "stop"] => only(post, "POST", Route::StopInstance(id)),
        ["instances", id, "keepalive"] => only(post, "POST", Route::KeepaliveInstance(id)),
        ["instances", id, "token"] => only(post, "POST", Route::RotateToken(id)),
        ["instances", id, "events"] => only(get, "GET", Route::InstanceEvents(id)),
        ["status"] => only(get, "GET", Route::Status),
        ["workspaces", user] => only(get, "GET", Route::Workspace(user)),
        _ => Route::NotFound,
    }
}

fn only<'a>(ok: bool, allowed: &'static str, r: Route<'a>) -> Route<'a> {
    if ok {
        r
    } else {
        Route::MethodNotAllowed(allowed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_routes() {
        let g = Method::GET;
        assert_eq!(route(Site::Shared, &g, "/api/"), Route::Banner);
        assert_eq!(route(Site::Shared, &g, "/api"), Route::Banner);
        assert_eq!(route(Site::Shared, &g, "/api/health"), Route::Health);
        assert_eq!(
            route(Site::Shared, &g, "/api/instances"),
            Route::ListInstances
        );
        assert_eq!(
            route(Site::Shared, &Method::POST, "/api/instances"),
            Route::CreateInstance
        );
        assert_eq!(
            route(Site::Shared, &g, "/api/instances/u-1"),
            Route::GetInstance("u-1")
        );
        assert_eq!(
            route(Site::Shared, &Method::DELETE, "/api/instances/u-1"),
            Route::DeleteInstance("u-1")
        );
        assert_eq!(
            route(Site::Shared, &Method::POST, "/api/instances/u-1/stop"),
            Route::StopInstance("u-1")
        );
        assert_eq!(
            route(Site::Shared, &g, "/api/instances/u-1/stop"),
            Route::MethodNotAllowed("POST")
        );
        assert_eq!(
            route(Site::Shared, &Method::POST, "/api/instances/u-1/keepalive"),
            Route::KeepaliveInstance("u-1")
        );
        assert_eq!(
            route(Site::Shared, &Method::POST, "/api/instances/u-1/token"),
            Route::RotateToken("u-1")
        );
        assert_eq!(
            route(Site::Shared, &g, "/api/instances/u-1/token"),
            Route::MethodNotAllowed("POST")
        );
        assert_eq!(
            route(Site::Shared, &g, "/api/workspaces/bob"),
            Route::Workspace("bob")
        );
        assert_eq!(route(Site::Shared, &g, "/api/nope"), Route::NotFound);
        assert_eq!(route(Site::Shared, &g, "/other"), Route::NotFound);
        assert_eq!(route(Site::Shared, &g, "/metrics"), Route::Metrics);
        assert_eq!(
            route(Site::Instance("u-1"), &g, "/metrics"),
            Route::NotFound
        );
    }

    #[test]
    fn instance_paths() {
        let g = Method::GET;
        assert_eq!(
            route(Site::Shared, &g, "/instances/u-0000000a"),
            Route::InstanceBare("u-0000000a")
        );
        assert_eq!(
            route(Site::Shared, &g, "/instances/u-0000000a/static/x.js"),
            Route::Instance {
                id: "u-0000000a",
                rest: "/static/x.js"
            }
        );
        for bad in [
            "/instances/U-0000000a/",
            "/instances/u%2D0000000a/",
            "/instances/u-0000000a/..",
            "/instances/u-0000000a/a/../../v-00000000/",
            "/instances/u-0000000a/%2e%2e/x",
            "/instances/u-0000000a/a%2Fb",
            "/instances/u-0000000a/a%5cb",
            "/instances/u-0000000a/./x",
            "/instances/u_1/",
            "/instances//",
        ] {
            assert!(
                matches!(route(Site::Shared, &g, bad), Route::BadPath(_)),
                "{bad}"
            );
        }
    }

    #[test]
    fn host_routing_keeps_each_host_to_its_instance() {
        let g = Method::GET;
        let own = Site::Instance("u-0000000a");
        assert_eq!(
            route(own, &g, "/instances/u-0000000a/x"),
            Route::Instance {
                id: "u-0000000a",
                rest: "/x"
            }
        );
        assert_eq!(
            route(own, &g, "/instances/u-0000000a/_vod/activity.js"),
            Route::Own {
                id: "u-0000000a",
                page: OwnPage::ActivityJs
            }
        );
        assert!(matches!(
            route(own, &g, "/instances/v-0000000b/x"),
            Route::BadPath(_)
        ));
        assert_eq!(route(own, &g, "/"), Route::InstanceHome);
        assert_eq!(route(own, &g, "/api/instances"), Route::NotFound);
        assert_eq!(route(own, &g, "/api/health"), Route::NotFound);
        assert_eq!(
            route(Site::Front, &g, "/instances/u-0000000a/x?tkn=1"),
            Route::HandOff("u-0000000a")
        );
        assert!(matches!(
            route(Site::Front, &g, "/instances/u-0000000a/%2e%2e/"),
            Route::BadPath(_)
        ));
        assert_eq!(route(Site::Front, &g, "/api/health"), Route::Health);
    }
}

#[cfg(test)]
mod properties;
