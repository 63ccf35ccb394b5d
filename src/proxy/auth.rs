//! The token check for instance URLs: a `tkn` query parameter is exchanged once for a cookie
//! scoped to the instance's path; later requests carry the cookie.

use crate::registry::Instance;
use cookie::{Cookie, SameSite};
use http::{header, HeaderMap, HeaderValue};

/// Name of the cookie that carries an instance's access token.
pub const COOKIE: &str = "vod_tkn";

/// What a request presents.
#[derive(Debug, PartialEq, Eq)]
pub enum Presented {
    /// Our token in `?tkn=`: to be exchanged for a cookie and removed from the URL.
    Exchange,
    /// A valid cookie.
    Valid,
    /// Wrong credentials; `any` is false when there were none at all.
    Invalid { any: bool },
    /// A wrong `tkn`, already counted against the client.
    WrongToken,
    /// A `tkn` guess from an address that has failed too often: refused unchecked.
    Limited,
}

/// Finds the `tkn` parameter, the remaining query string without it.
pub fn split_tkn(query: Option<&str>) -> (Option<&str>, String) {
    let Some(q) = query else {
        return (None, String::new());
    };
    let mut tkn = None;
    let mut rest: Vec<&str> = Vec::new();
    for kv in q.split('&') {
        match kv.strip_prefix("tkn=") {
            Some(v) => tkn = Some(v),
            None if !kv.is_empty() => rest.push(kv),
            None => {}
        }
    }
    (tkn, rest.join("&"))
}

/// Checks the request's credentials against the instance's token, in constant time.
///
/// A `tkn` parameter is ours when it holds the token; VS Code puts an empty or unrelated `tkn`
/// of its own on some resource URLs, and with a valid cookie those pass through untouched.
/// A `tkn` without a valid cookie is an exchange attempt: `allow_attempt` is asked first (it
/// counts attempts per client), so guesses are limited before they are checked.
pub fn check(
    inst: &Instance,
    headers: &HeaderMap,
    query: Option<&str>,
    allow_attempt: impl FnOnce() -> bool,
) -> Presented {
    let tkn = split_tkn(query).0.filter(|t| !t.is_empty());
    let mut cookie_seen = false;
    let mut cookie_ok = false;
    for value in headers.get_all(header::COOKIE) {
        let Ok(s) = value.to_str() else { continue };
        for c in Cookie::split_parse(s).flatten() {
            if c.name() == COOKIE {
                cookie_seen = true;
                cookie_ok |= inst.token.matches(c.value().as_bytes());
            }
        }
    }
    match tkn {
        Some(t) if cookie_ok => {
            if inst.token.matches(t.as_bytes()) {
                Presented::Exchange
            } else {
                Presented::Valid
            }
        }
        Some(_) if !allow_attempt() => Presented::Limited,
        Some(t) if inst.token.matches(t.as_bytes()) => Presented::Exchange,
        Some(_) => Presented::WrongToken,
        None if cookie_ok => Presented::Valid,
        None => Presented::Invalid { any: cookie_seen },
    }
}

/// The `Set-Cookie` value for an instance: HttpOnly, Secure, only sent under its path.
pub fn set_cookie(inst: &Instance) -> HeaderValue {
    let c = Cookie::build((COOKIE, inst.token.expose().to_owned()))
        .path(format!("/instances/{}/", inst.id))
        .http_only(true)
        .secure(true)
        .same_site(SameSite::Lax)
        .build();
    // Cookie values are hex and paths are instance ids: always valid header bytes.
    HeaderValue::from_str(&c.to_string()).unwrap_or(HeaderValue::from_static(""))
}

/// Removes our cookie from the `Cookie` headers, so the instance never sees the token.
pub fn strip_cookie(headers: &mut HeaderMap) {
    let values: Vec<HeaderValue> = headers.get_all(header::COOKIE).iter().cloned().collect();
    if values.is_empty() {
        return;
    }
    headers.remove(header::COOKIE);
    let kept: Vec<&str> = values
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(';'))
        .map(str::trim)
        .filter(|kv| !kv.is_empty() && kv.split('=').next() != Some(COOKIE))
        .collect();
    if !kept.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&kept.join("; ")) {
            headers.insert(header::COOKIE, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tkn_is_split_from_query() {
        assert_eq!(split_tkn(Some("tkn=abc")), (Some("abc"), String::new()));
        assert_eq!(
            split_tkn(Some("folder=/w&tkn=abc&x=1")),
            (Some("abc"), "folder=/w&x=1".to_owned())
        );
        assert_eq!(split_tkn(Some("a=1")), (None, "a=1".to_owned()));
    }

    #[test]
    fn our_cookie_is_stripped() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; vod_tkn=secret; b=2"),
        );
        h.append(header::COOKIE, HeaderValue::from_static("vod_tkn=x"));
        strip_cookie(&mut h);
        assert_eq!(h.get(header::COOKIE).unwrap(), "a=1; b=2");
        let mut only = HeaderMap::new();
        only.insert(header::COOKIE, HeaderValue::from_static("vod_tkn=secret"));
        strip_cookie(&mut only);
        assert!(only.get(header::COOKIE).is_none());
    }
}
