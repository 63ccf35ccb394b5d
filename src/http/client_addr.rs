//! Who the client is behind load balancers: the trusted proxies (`--trusted-proxies`), and the
//! client address of a request that one of them relays, from `X-Forwarded-For`.
//!
//! A request's *connection address* is its TCP peer, or the source a PROXY protocol header
//! named ([`crate::http::proxy_header`]). When that address is not a trusted proxy it is the
//! client, and `X-Forwarded-For` is ignored: a client cannot choose its own address. When it
//! is, the header is walked from the right (the entry the nearest proxy added), skipping
//! addresses that are themselves trusted proxies; the first untrusted one is the client (the
//! right-most-untrusted rule). Entries left of it were written by the client and are never
//! read, so what a client writes there changes nothing. Every entry walked must be an address
//! (`[v6]` and a `:port` are accepted); a malformed one means the chain cannot be followed and
//! the connection address is used. If every entry is trusted, the leftmost is the client (a
//! client inside a trusted network); with no entry at all, the connection address.
//!
//! The instance is sent the part of the chain this server vouches for, as proxies append:
//! `X-Forwarded-For: <client>, <trusted hops>, <connection address>`, without what the client
//! wrote itself; from an untrusted connection just its address.

use http::header::{HeaderMap, HeaderValue};
use ipnet::IpNet;
use std::net::{IpAddr, SocketAddr};

/// The networks whose connections may say who the client is (empty: none, the default).
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<IpNet>);

impl std::fmt::Display for TrustedProxies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, net) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{net}")?;
        }
        Ok(())
    }
}

/// The client of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAddr {
    /// What per-client limits count against.
    pub ip: IpAddr,
    /// The vouched-for `X-Forwarded-For` chain, when a trusted proxy relayed the request.
    chain: Option<HeaderValue>,
}

impl ClientAddr {
    /// A client that connected itself (or that a trusted proxy did not name).
    pub fn direct(ip: IpAddr) -> Self {
        Self { ip, chain: None }
    }

    /// The `X-Forwarded-For` chain for the instance; `None` means just [`ClientAddr::ip`].
    pub fn chain(&self) -> Option<&HeaderValue> {
        self.chain.as_ref()
    }
}

impl TrustedProxies {
    pub fn new(nets: Vec<IpNet>) -> Self {
        Self(nets.into_iter().map(|n| n.trunc()).collect())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Parses `--trusted-proxies`: networks or addresses, comma-separated (empty: none).
    pub fn parse(s: &str) -> Result<Self, String> {
        let nets = s
            .split(',')
            .filter(|item| !item.trim().is_empty())
            .map(parse_net)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self::new(nets))
    }

    /// Whether `ip` is in a trusted network (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        if self.0.is_empty() {
            return false;
        }
        let ip = ip.to_canonical();
        self.0.iter().any(|n| n.contains(&ip))
    }

    /// The client of a request that came over a connection from `addr` (see the module docs).
    pub fn resolve(&self, addr: IpAddr, headers: &HeaderMap) -> ClientAddr {
        if !self.contains(addr) {
            return ClientAddr::direct(addr);
        }
        // Walked entries, right to left; the last one pushed is the client.
        let mut walked: Vec<IpAddr> = Vec::new();
        'lines: for line in headers.get_all("x-forwarded-for").iter().rev() {
            for piece in line.as_bytes().rsplit(|b| *b == b',') {
                let piece = piece.trim_ascii();
                // Empty list elements are allowed (and ignored) in HTTP lists.
                if piece.is_empty() {
                    continue;
                }
                let Some(ip) = parse_entry(piece) else {
                    return ClientAddr::direct(addr);
                };
                walked.push(ip);
                if !self.contains(ip) {
                    break 'lines;
                }
            }
        }
        let Some(&client) = walked.last() else {
            return ClientAddr::direct(addr);
        };
        let mut chain = String::new();
        for ip in walked.iter().rev() {
            chain.push_str(&ip.to_string());
            chain.push_str(", ");
        }
        chain.push_str(&addr.to_string());
        ClientAddr {
            ip: client,
            // Addresses and ", " only: always a valid header value.
            chain: HeaderValue::from_str(&chain).ok(),
        }
    }
}

/// One `X-Forwarded-For` entry: an address, `[v6]`, or either with a `:port` (some proxies
/// add one); an IPv4-mapped IPv6 address is taken as IPv4.
pub fn parse_entry(entry: &[u8]) -> Option<IpAddr> {
    let s = std::str::from_utf8(entry).ok()?;
    let ip = match s.parse::<IpAddr>() {
        Ok(ip) => ip,
        Err(_) => match s.parse::<SocketAddr>() {
            Ok(sa) => sa.ip(),
            Err(_) => IpAddr::V6(s.strip_prefix('[')?.strip_suffix(']')?.parse().ok()?),
        },
    };
    Some(ip.to_canonical())
}

/// Parses one `--trusted-proxies` item: a CIDR network, or one address.
fn parse_net(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| {
            format!("`{s}` is not a network (e.g. 10.0.0.0/8, 2001:db8::/32) or an address")
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn trusted() -> TrustedProxies {
        TrustedProxies::new(
            ["10.0.0.0/8", "192.0.2.0/24", "2001:db8::/32"]
                .iter()
                .map(|n| parse_net(n).unwrap())
                .collect(),
        )
    }

    fn headers(lines: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for l in lines {
            h.append("x-forwarded-for", HeaderValue::from_str(l).unwrap());
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn resolve(peer: &str, lines: &[&str]) -> (String, Option<String>) {
        let c = trusted().resolve(ip(peer), &headers(lines));
        let chain = c.chain().map(|v| v.to_str().unwrap().to_owned());
        (c.ip.to_string(), chain)
    }

    #[test]
    fn right_most_untrusted_from_trusted_peers_only() {
        fn got(peer: &str, lines: &[&str]) -> String {
            resolve(peer, lines).0
        }
        // Untrusted peer: the header is ignored.
        assert_eq!(got("198.51.100.1", &["203.0.113.9"]), "198.51.100.1");
        // Trusted peer: the nearest untrusted entry; what the client wrote left of it is unread.
        assert_eq!(got("10.0.0.1", &["6.6.6.6, 203.0.113.9"]), "203.0.113.9");
        assert_eq!(got("10.0.0.1", &["garbage!, 203.0.113.9"]), "203.0.113.9");
        // Trusted hops are skipped, across header lines too.
        assert_eq!(
            got("10.0.0.1", &["6.6.6.6, 203.0.113.9", "192.0.2.5,10.1.1.1"]),
            "203.0.113.9"
        );
        // Ports, brackets and mapped addresses.
        assert_eq!(got("10.0.0.1", &["203.0.113.9:4711"]), "203.0.113.9");
        assert_eq!(got("10.0.0.1", &["[2001:db9::1]:443"]), "2001:db9::1");
        assert_eq!(got("10.0.0.1", &["[2001:db9::1]"]), "2001:db9::1");
        assert_eq!(
            got("::ffff:10.0.0.1", &["::ffff:203.0.113.9"]),
            "203.0.113.9"
        );
        // Every entry trusted: the leftmost. None at all: the peer.
        assert_eq!(got("10.0.0.1", &["10.9.9.9, 192.0.2.1"]), "10.9.9.9");
        assert_eq!(got("10.0.0.1", &[]), "10.0.0.1");
        assert_eq!(got("10.0.0.1", &[" , "]), "10.0.0.1");
        // A malformed entry on the walk: the peer.
        for bad in [
            "unknown",
            "203.0.113.9, _hidden",
            "1.2.3.4.5",
            "[1.2.3.4]",
            "::1]",
        ] {
            assert_eq!(got("10.0.0.1", &[bad]), "10.0.0.1", "{bad}");
        }
    }

    #[test]
    fn the_instance_gets_the_vouched_for_chain() {
        assert_eq!(
            resolve("10.0.0.1", &["6.6.6.6, 203.0.113.9:80, 192.0.2.5"])
                .1
                .as_deref(),
            Some("203.0.113.9, 192.0.2.5, 10.0.0.1")
        );
        assert_eq!(resolve("198.51.100.1", &["6.6.6.6"]).1, None);
        assert_eq!(resolve("10.0.0.1", &["nonsense"]).1, None);
    }

    #[test]
    fn trusted_items_parse_as_networks_or_addresses() {
        assert!(parse_net("10.0.0.0/8").is_ok());
        assert!(parse_net(" 2001:db8::/32 ").is_ok());
        assert_eq!(parse_net("127.0.0.1").unwrap().prefix_len(), 32);
        assert!(parse_net("10.0.0.0/33").is_err());
        assert!(parse_net("lb.example").is_err());
        let t = TrustedProxies::new(vec![parse_net("10.1.2.3/8").unwrap()]);
        assert!(t.contains(ip("10.200.0.1")) && t.contains(ip("::ffff:10.0.0.1")));
        assert!(!TrustedProxies::default().contains(ip("10.0.0.1")));
    }

    fn any_ip() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            any::<std::net::Ipv4Addr>().prop_map(IpAddr::V4),
            any::<std::net::Ipv6Addr>().prop_map(IpAddr::V6),
            (0u32..1 << 24).prop_map(|n| IpAddr::V4((0x0a00_0000 | n).into())),
            (0u8..=255).prop_map(|n| IpAddr::V4([192, 0, 2, n].into())),
        ]
    }

    /// An entry as proxies (and clients) write them: addresses in every form, and junk.
    fn entry() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => any_ip().prop_map(|ip| ip.to_string()),
            1 => (any_ip(), any::<u16>()).prop_map(|(ip, p)| SocketAddr::new(ip, p).to_string()),
            1 => any_ip().prop_map(|ip| format!("[{ip}]")),
            1 => Just(String::new()),
            1 => "[ -~]{0,12}",
        ]
    }

    fn lines() -> impl Strategy<Value = Vec<String>> {
        prop::collection::vec(
            prop::collection::vec((entry(), "[ \t]{0,2}"), 0..6).prop_map(|es| {
                es.iter()
                    .map(|(e, ws)| format!("{ws}{e}{ws}"))
                    .collect::<Vec<_>>()
                    .join(",")
            }),
            0..3,
        )
    }

    fn header_map(lines: &[String]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for l in lines {
            if let Ok(v) = HeaderValue::from_str(l) {
                h.append("x-forwarded-for", v);
            }
        }
        h
    }

    /// Every address the header holds, in order.
    fn entries(h: &HeaderMap) -> Vec<Option<IpAddr>> {
        h.get_all("x-forwarded-for")
            .iter()
            .flat_map(|l| l.as_bytes().split(|b| *b == b','))
            .map(<[u8]>::trim_ascii)
            .filter(|e| !e.is_empty())
            .map(parse_entry)
            .collect()
    }

    proptest! {
        #[test]
        fn the_client_is_the_peer_or_from_the_header(
            peer in any_ip(),
            lines in lines(),
            raw in prop::collection::vec(any::<u8>(), 0..40),
        ) {
            let t = trusted();
            let mut h = header_map(&lines);
            if let Ok(v) = HeaderValue::from_bytes(&raw) {
                h.append("x-forwarded-for", v);
            }
            let c = t.resolve(peer, &h);
            if !t.contains(peer) {
                prop_assert_eq!(c, ClientAddr::direct(peer));
                return Ok(());
            }
            let all = entries(&h);
            prop_assert!(c.ip == peer || all.contains(&Some(c.ip)), "{:?} from {:?}", c.ip, all);
            // A reference walk: from the right, the first untrusted entry, else the leftmost;
            // a malformed entry on the way gives the peer.
            let mut expected = None;
            for e in all.iter().rev() {
                match e {
                    None => { expected = Some(peer); break; }
                    Some(ip) => { expected = Some(*ip); if !t.contains(*ip) { break; } }
                }
            }
            prop_assert_eq!(c.ip, expected.unwrap_or(peer));
        }

        #[test]
        fn what_the_client_writes_left_of_its_address_changes_nothing(
            peer in (0u32..1 << 24).prop_map(|n| IpAddr::V4((0x0a00_0000 | n).into())),
            client in any::<std::net::Ipv4Addr>().prop_filter("untrusted", |a| a.octets()[0] != 10
                && a.octets()[..3] != [192, 0, 2]),
            spoof in "[ -~]{0,30}",
        ) {
            let t = trusted();
            let honest = t.resolve(peer, &header_map(&[client.to_string()]));
            let spoofed = t.resolve(peer, &header_map(&[format!("{spoof},{client}")]));
            prop_assert_eq!(honest.ip, IpAddr::V4(client));
            prop_assert_eq!(spoofed, honest);
        }
    }
}
