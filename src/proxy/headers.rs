//! Header rewriting between client and instance: hop-by-hop headers removed, `X-Forwarded-*`
//! set, our cookie stripped.

use crate::http::client_addr::ClientAddr;
use crate::upstream::Replace;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use std::net::IpAddr;

const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes hop-by-hop headers, including any the `Connection` header names. With `keep_upgrade`
/// the `Connection: upgrade` / `Upgrade` pair stays, for a WebSocket handshake.
pub fn remove_hop_by_hop(h: &mut HeaderMap, keep_upgrade: bool) {
    // Most messages carry none of them: one pass over the names is cheaper than nine removes,
    // each of which hashes its name.
    if !keep_upgrade && !h.keys().any(is_hop_by_hop) {
        return;
    }
    if let Some(conn) = h.get(header::CONNECTION).and_then(|v| v.to_str().ok()) {
        let named: Vec<HeaderName> = conn
            .split(',')
            .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
            .filter(|n| !(keep_upgrade && n == header::UPGRADE))
            .collect();
        for n in named {
            h.remove(n);
        }
    }
    for n in HOP_BY_HOP {
        if keep_upgrade && (n == header::CONNECTION || n == header::UPGRADE) {
            continue;
        }
        h.remove(n);
    }
    h.remove("keep-alive");
    h.remove("proxy-connection");
    if keep_upgrade {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

fn is_hop_by_hop(n: &HeaderName) -> bool {
    HOP_BY_HOP.contains(n) || n == "keep-alive" || n == "proxy-connection"
}

/// An address as a header value, without the formatting machinery (this runs per request).
pub fn ip_value(ip: IpAddr) -> HeaderValue {
    let mut buf = [0u8; 21];
    match ip {
        IpAddr::V4(v4) => {
            let n = write_ipv4(&mut buf, v4.octets());
            HeaderValue::from_bytes(&buf[..n])
                .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
        }
        IpAddr::V6(_) => HeaderValue::from_str(&ip.to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown")),
    }
}

/// Writes `a.b.c.d` into `buf` (at least 15 bytes) and returns its length.
pub fn write_ipv4(buf: &mut [u8], octets: [u8; 4]) -> usize {
    let mut n = 0;
    for (i, o) in octets.into_iter().enumerate() {
        if i > 0 {
            buf[n] = b'.';
            n += 1;
        }
        n += write_u16(&mut buf[n..], o.into());
    }
    n
}

/// Writes `v` in decimal into `buf` (at least 5 bytes) and returns its length.
pub fn write_u16(buf: &mut [u8], v: u16) -> usize {
    let mut digits = [0u8; 5];
    let (mut v, mut len) = (v, 0);
    loop {
        digits[len] = b'0' + (v % 10) as u8;
        len += 1;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    for i in 0..len {
        buf[i] = digits[len - 1 - i];
    }
    len
}

/// The `X-Forwarded-For/Proto/Host` the instance sees, replacing what the client sent (`None`:
/// removed). `X-Forwarded-For` is the client's address, or, for a request a trusted proxy
/// relayed, the part of its chain this server vouches for (the client, trusted hops, the
/// proxy; see [`ClientAddr`]): never what the client wrote itself.
pub fn forwarded(client: &ClientAddr, host: Option<&HeaderValue>) -> [Replace; 3] {
    let chain = match client.chain() {
        Some(chain) => chain.clone(),
        None => ip_value(client.ip),
    };
    [
        (X_FORWARDED_FOR, Some(chain)),
        (X_FORWARDED_PROTO, Some(HTTPS)),
        (X_FORWARDED_HOST, host.cloned()),
    ]
}

// Constants, so that the names and value are checked once, when compiled, not per request.
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const HTTPS: HeaderValue = HeaderValue::from_static("https");

/// Applies `set` to `h`, for a request that goes on as a header map (a WebSocket handshake).
pub fn replace(h: &mut HeaderMap, set: impl IntoIterator<Item = Replace>) {
    for (name, value) in set {
        match value {
            Some(v) => {
                h.insert(name, v);
            }
            None => {
                h.remove(name);
            }
        }
    }
}

/// Whether the request asks for a WebSocket.
pub fn is_websocket(h: &HeaderMap) -> bool {
    let upgrade = h
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    upgrade
        && h.get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        remove_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key(header::ACCEPT));
    }

    #[test]
    fn addresses_are_written_like_display() {
        for ip in ["0.0.0.0", "127.0.0.1", "10.20.255.9", "::1", "fe80::1"] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_value(ip), ip.to_string().as_str());
        }
        let mut buf = [0u8; 5];
        for v in [0u16, 9, 10, 443, 8443, 65535] {
            let n = write_u16(&mut buf, v);
            assert_eq!(&buf[..n], v.to_string().as_bytes());
        }
    }

    #[test]
    fn websocket_detected_and_kept() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(is_websocket(&h));
        remove_hop_by_hop(&mut h, true);
        assert_eq!(h.get(header::CONNECTION).unwrap(), "upgrade");
        assert_eq!(h.get(header::UPGRADE).unwrap(), "websocket");
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        const NAMES: [&str; 12] = [
            "connection",
            "keep-alive",
            "proxy-connection",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
            "proxy-authorization",
            "x-secret",
            "x-other",
            "accept",
            "cookie",
        ];

        fn headers() -> impl Strategy<Value = Vec<(usize, String)>> {
            proptest::collection::vec((0..NAMES.len(), "[ -~]{0,20}"), 0..12)
        }

        proptest! {
            /// Whatever a client or an instance sends, no hop-by-hop header crosses the proxy,
            /// nor one its `Connection` header names, and every other header passes unchanged.
            #[test]
            fn hop_by_hop_headers_never_cross(list in headers(), named in "[a-z, -]{0,30}") {
                let mut h = HeaderMap::new();
                for (i, v) in &list {
                    if let Ok(v) = HeaderValue::from_str(v) {
                        h.append(NAMES[*i], v);
                    }
                }
                if let Ok(v) = HeaderValue::from_str(&named) {
                    h.append(header::CONNECTION, v);
                }
                let before = h.clone();
                let listed: Vec<String> = before
                    .get_all(header::CONNECTION)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .flat_map(|v| v.split(','))
                    .map(|n| n.trim().to_ascii_lowercase())
                    .collect();
                remove_hop_by_hop(&mut h, false);
                for name in h.keys() {
                    prop_assert!(!is_hop_by_hop(name), "{name} crossed");
                    prop_assert!(!listed.iter().any(|l| l == name.as_str()), "{name} was named in Connection");
                }
                for name in before.keys() {
                    if !is_hop_by_hop(name) && !listed.iter().any(|l| l == name.as_str()) {
                        let a: Vec<_> = before.get_all(name).iter().collect();
                        let b: Vec<_> = h.get_all(name).iter().collect();
                        prop_assert_eq!(a, b);
                    }
                }
            }

            /// A WebSocket handshake keeps exactly `Connection: upgrade` and its `Upgrade`.
            #[test]
            fn upgrades_keep_only_their_pair(list in headers()) {
                let mut h = HeaderMap::new();
                for (i, v) in &list {
                    if let Ok(v) = HeaderValue::from_str(v) {
                        h.append(NAMES[*i], v);
                    }
                }
                h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
                remove_hop_by_hop(&mut h, true);
                let conn: Vec<_> = h.get_all(header::CONNECTION).iter().cloned().collect();
                prop_assert_eq!(conn, vec![HeaderValue::from_static("upgrade")]);
                prop_assert!(h.contains_key(header::UPGRADE));
                for name in h.keys() {
                    prop_assert!(!is_hop_by_hop(name) || name == header::CONNECTION || name == header::UPGRADE);
                }
            }
        }
    }
}
