//! The token check for instance URLs, and the cookies around it: a `tkn` query parameter is
//! exchanged once for a cookie that only the instance's origin (host routing) or path (path
//! routing) gets; later requests carry it. The instance never sees our cookie and cannot set
//! it, nor cookies for other hosts or other instances' paths.
//!
//! The cookie holds the token itself, so every request is checked against the token current
//! when it arrives: once the token is replaced, cookies holding the old one are refused.

use crate::instance::AccessToken;
use crate::registry::{Credential, Instance};
use cookie::{Cookie, SameSite};
use http::{header, HeaderMap, HeaderValue};
use std::sync::Arc;

/// The cookie that carries an instance's access token on the instance's own origin: `__Host-`
/// makes browsers insist on Secure, `Path=/` and no `Domain`, so no other host can set or
/// receive it.
pub const HOST_COOKIE: &str = "__Host-vod_tkn";
/// The same under path routing, scoped to the instance's path (`__Host-` would need `Path=/`).
pub const PATH_COOKIE: &str = "__Secure-vod_tkn";

pub fn cookie_name(host_routing: bool) -> &'static str {
    if host_routing {
        HOST_COOKIE
    } else {
        PATH_COOKIE
    }
}

/// Our cookie under any prefix, and the unprefixed name used before prefixes.
fn is_ours(name: &str) -> bool {
    name.ends_with("vod_tkn")
}

/// What a request presents.
#[derive(Debug, PartialEq, Eq)]
pub enum Presented {
    /// Our token in `?tkn=`: to be exchanged for a cookie and removed from the URL.
    Exchange,
    /// A valid cookie.
    Valid,
    /// A wrong token or cookie: a failure that counts against the client.
    Wrong,
    /// No credential at all.
    Nothing,
}

/// A request that proved it holds an instance's access token, and the credential it matched:
/// what the request opens lasts only as long as that credential (see
/// [`Credential::replaced`]).
pub struct Authorized {
    pub inst: Arc<Instance>,
    pub credential: Arc<Credential>,
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

/// Checks the request's credentials against the instance's token (`None`: no such
/// instance), in constant time.
///
/// A `tkn` parameter is ours when it holds the token; VS Code puts an empty or unrelated `tkn`
/// of its own on some resource URLs, and with a valid cookie those pass through untouched.
pub fn check(
    credential: Option<&Credential>,
    headers: &HeaderMap,
    query: Option<&str>,
    cookie: &str,
) -> Presented {
    let tkn = split_tkn(query).0.filter(|t| !t.is_empty());
    let matches = |v: &[u8]| credential.is_some_and(|c| c.matches(v));
    let mut cookie_seen = false;
    let mut cookie_ok = false;
    for value in headers.get_all(header::COOKIE) {
        let Ok(s) = value.to_str() else { continue };
        for (name, value, _) in pairs(s) {
            if name == cookie {
                cookie_seen = true;
                cookie_ok |= matches(value.as_bytes());
            }
        }
    }
    match tkn {
        Some(t) if matches(t.as_bytes()) => Presented::Exchange,
        _ if cookie_ok => Presented::Valid,
        Some(_) => Presented::Wrong,
        None if cookie_seen => Presented::Wrong,
        None => Presented::Nothing,
    }
}

/// The `Set-Cookie` value for an instance's `token`: HttpOnly, Secure, host-only; only sent to
/// the instance's origin (host routing) or under its path (path routing).
pub fn set_cookie(id: &str, token: &AccessToken, host_routing: bool) -> HeaderValue {
    let path = if host_routing {
        "/".to_owned()
    } else {
        format!("/instances/{id}/")
    };
    let c = Cookie::build((cookie_name(host_routing), token.expose().to_owned()))
        .path(path)
        .http_only(true)
        .secure(true)
        .same_site(SameSite::Lax)
        .build();
    // Cookie values are hex and paths are instance ids: always valid header bytes.
    HeaderValue::from_str(&c.to_string()).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// The `name=value` pairs of a `Cookie` header, each with its text as sent, names and values
/// trimmed; a pair without `=` is a name with an empty value. The check and the stripping both
/// read cookies through this, so what one takes for our cookie the other removes. (A request
/// header is only pairs; `cookie::Cookie::split_parse` builds a full cookie per pair, which
/// cost more than the rest of the check on every proxied request.)
fn pairs(header: &str) -> impl Iterator<Item = (&str, &str, &str)> {
    header
        .split(';')
        .map(str::trim)
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (name, value) = kv.split_once('=').unwrap_or((kv, ""));
            (name.trim_end(), value.trim_start(), kv)
        })
}

/// Removes our cookie from the `Cookie` headers, so the instance never sees the token.
pub fn strip_cookie(headers: &mut HeaderMap) {
    // One pass, and no allocation when ours was the only cookie (as on most proxied requests).
    let mut kept = String::new();
    let mut any = false;
    for value in headers.get_all(header::COOKIE) {
        any = true;
        let Ok(s) = value.to_str() else { continue };
        for (name, _, kv) in pairs(s) {
            if is_ours(name) {
                continue;
            }
            if !kept.is_empty() {
                kept.push_str("; ");
            }
            kept.push_str(kv);
        }
    }
    if !any {
        return;
    }
    headers.remove(header::COOKIE);
    if !kept.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&kept) {
            headers.insert(header::COOKIE, v);
        }
    }
}

/// Keeps an instance's `Set-Cookie` headers to what it may set: never our cookie, nor
/// `reserved` (a cookie the proxy alone hands out for this instance, in any case), never one
/// with a `Domain` (it would reach other hosts), and under path routing only within its own
/// path. Anything else is dropped or rewritten.
pub fn confine_set_cookie(
    headers: &mut HeaderMap,
    id: &str,
    host_routing: bool,
    reserved: Option<&str>,
) {
    if !headers.contains_key(header::SET_COOKIE) {
        return;
    }
    let values: Vec<HeaderValue> = headers
        .get_all(header::SET_COOKIE)
        .iter()
        .cloned()
        .collect();
    headers.remove(header::SET_COOKIE);
    let own = format!("/instances/{id}/");
    for v in values {
        let Some(mut c) = v.to_str().ok().and_then(|s| Cookie::parse(s).ok()) else {
            continue;
        };
        let is_reserved = reserved.is_some_and(|r| c.name().trim().eq_ignore_ascii_case(r));
        if is_ours(c.name()) || is_reserved || c.domain().is_some() {
            tracing::debug!(
                instance = id,
                "dropped a Set-Cookie outside the instance's reach"
            );
            continue;
        }
        let within = c
            .path()
            .is_none_or(|p| p.starts_with(&own) || p == &own[..own.len() - 1]);
        if host_routing || within {
            headers.append(header::SET_COOKIE, v);
        } else {
            c.set_path(own.clone());
            if let Ok(v) = HeaderValue::from_str(&c.to_string()) {
                headers.append(header::SET_COOKIE, v);
            }
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
        let mut h = cookie_header("a=1; vod_tkn=secret; b=2");
        h.append(header::COOKIE, HeaderValue::from_static("vod_tkn=x"));
        strip_cookie(&mut h);
        assert_eq!(h.get(header::COOKIE).unwrap(), "a=1; b=2");
        let mut prefixed = cookie_header("__Host-vod_tkn=s; __Secure-vod_tkn=t; c=3");
        strip_cookie(&mut prefixed);
        assert_eq!(prefixed.get(header::COOKIE).unwrap(), "c=3");
        let mut only = cookie_header("vod_tkn=secret");
        strip_cookie(&mut only);
        assert!(only.get(header::COOKIE).is_none());
    }

    /// Headers with one `Cookie` header of `value`.
    fn cookie_header(value: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_static(value));
        h
    }

    #[test]
    fn the_cookie_checked_is_the_cookie_stripped() {
        let t = AccessToken::from_secret("0123456789abcdef".to_owned());
        let cred = crate::registry::Credential::new(t, 0);
        let check = |h: &HeaderMap| check(Some(&cred), h, None, PATH_COOKIE);
        // Spaces around `=` are not what browsers send, but a client may: the cookie is
        // accepted by the check only if the stripping removes it too.
        let mut h = cookie_header("a=1;  __Secure-vod_tkn = 0123456789abcdef ; b");
        assert_eq!(check(&h), Presented::Valid);
        strip_cookie(&mut h);
        assert_eq!(h.get(header::COOKIE).unwrap(), "a=1; b");
        assert_eq!(
            check(&cookie_header("__Secure-vod_tkn=0123")),
            Presented::Wrong
        );
        assert_eq!(
            check(&cookie_header("__Secure-vod_tknx=0123456789abcdef")),
            Presented::Nothing
        );
    }

    fn set_cookies(values: &[&'static str], host_routing: bool) -> Vec<String> {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(header::SET_COOKIE, HeaderValue::from_static(v));
        }
        confine_set_cookie(&mut h, "u-0000000a", host_routing, None);
        h.get_all(header::SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn instances_cannot_set_our_cookie_or_reach_others() {
        let attacks = [
            "__Host-vod_tkn=x; Path=/; Secure",
            "__Secure-vod_tkn=x; Path=/instances/v-0000000b/; Secure",
            "vod_tkn=x; Path=/instances/v-0000000b/",
            "a=1; Domain=localhost",
        ];
        for host_routing in [true, false] {
            assert!(set_cookies(&attacks, host_routing).is_empty());
        }
        let kept = ["theme=dark; Path=/instances/u-0000000a/", "s=1"];
        assert_eq!(set_cookies(&kept, false), kept);
        assert_eq!(set_cookies(&["p=1; Path=/"], true), ["p=1; Path=/"]);
        assert_eq!(
            set_cookies(&["p=1; Path=/instances/v-0000000b/"], false),
            ["p=1; Path=/instances/u-0000000a/"]
        );
    }
}

#[cfg(test)]
mod properties {
    //! Whatever cookies a client sends, none of ours reaches the instance.
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn our_cookie_never_passes(pairs in prop::collection::vec(
            (prop_oneof![Just("vod_tkn"), Just("__Host-vod_tkn"), Just("__Secure-vod_tkn"), Just("a"), Just("theme")],
             "[a-zA-Z0-9]{0,8}"), 0..6),
            sep in prop_oneof![Just("; "), Just(";"), Just(";  ")],
            eq in prop_oneof![Just("="), Just(" ="), Just("= "), Just(" = ")]) {
            let value = pairs.iter().map(|(k, v)| format!("{k}{eq}{v}")).collect::<Vec<_>>().join(sep);
            let mut h = HeaderMap::new();
            if let Ok(v) = HeaderValue::from_str(&value) {
                h.insert(header::COOKIE, v);
            }
            strip_cookie(&mut h);
            let left = h.get(header::COOKIE).map(|v| v.to_str().unwrap_or("").to_owned()).unwrap_or_default();
            prop_assert!(!left.split(';').any(|kv| kv.split('=').next().is_some_and(|n| is_ours(n.trim()))), "{}", left);
            let kept = pairs.iter().filter(|(k, _)| !is_ours(k)).count();
            prop_assert_eq!(left.split(';').filter(|kv| !kv.trim().is_empty()).count(), kept);
        }
    }
}
