//! The PROXY protocol (`--proxy-protocol`): before TLS, a load balancer in front of this server
//! says which client a connection relays, in HAProxy's version 1 (text) or version 2 (binary)
//! header. The `ppp` crate parses it; this module reads it off the socket without taking a byte
//! past its end, so the TLS handshake starts exactly where the header stops. The caller bounds
//! the read in time; its size is bounded by the protocol (107 bytes, or 16 + 65535).

use ppp::{v1, v2, PartialResult};
use std::net::IpAddr;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The longest version 1 header, its line end included.
const V1_MAX: usize = 107;

#[derive(Debug, thiserror::Error)]
pub enum ProxyHeaderError {
    #[error("reading the PROXY protocol header: {0}")]
    Io(#[from] std::io::Error),
    #[error("the connection closed before its PROXY protocol header was complete")]
    Closed,
    #[error("not a PROXY protocol header: {0}")]
    Invalid(String),
}

/// What the bytes so far say.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A whole header of `len` bytes, naming `source` (`None`: the balancer's own connection,
    /// a health check, or a source that is no IP address).
    Complete {
        len: usize,
        source: Option<IpAddr>,
    },
    /// A valid beginning; more bytes are needed.
    Partial,
    Invalid(String),
}

/// Parses the start of a connection's bytes.
pub fn parse(buf: &[u8]) -> Parsed {
    let v1_prefix = b"PROXY";
    if buf[..buf.len().min(v1_prefix.len())] == v1_prefix[..buf.len().min(v1_prefix.len())] {
        // Version 1 is a line: wait for all of it, as its parser would take a line cut after
        // a space for a wrong one.
        let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
            return if buf.len() < V1_MAX {
                Parsed::Partial
            } else {
                Parsed::Invalid(format!("no line end within {V1_MAX} bytes"))
            };
        };
        return match v1::Header::try_from(&buf[..end + 2]) {
            Ok(h) => Parsed::Complete {
                len: h.header.len(),
                source: match h.addresses {
                    v1::Addresses::Tcp4(a) => Some(a.source_address.into()),
                    v1::Addresses::Tcp6(a) => Some(a.source_address.into()),
                    v1::Addresses::Unknown => None,
                },
            },
            Err(e) => Parsed::Invalid(e.to_string()),
        };
    }
    let header = v2::Header::try_from(buf);
    if header.is_incomplete() {
        // At most 16 + 65535 bytes: the length field is 16 bits.
        return Parsed::Partial;
    }
    match header {
        Ok(h) => Parsed::Complete {
            len: h.header.len(),
            source: match (h.command, h.addresses) {
                (v2::Command::Local, _) => None,
                (_, v2::Addresses::IPv4(a)) => Some(a.source_address.into()),
                (_, v2::Addresses::IPv6(a)) => Some(a.source_address.into()),
                (_, v2::Addresses::Unspecified | v2::Addresses::Unix(_)) => None,
            },
        },
        Err(e) => Parsed::Invalid(e.to_string()),
    }
}

/// Reads the header at the start of `tcp` and returns the client address it names (`None`:
/// use the peer's). Bytes are peeked, and taken off the socket only once they are known to
/// belong to the header.
pub async fn read(tcp: &mut TcpStream) -> Result<Option<IpAddr>, ProxyHeaderError> {
    let mut taken = Vec::new();
    let mut chunk = [0u8; 512];
    loop {
        let n = tcp.peek(&mut chunk).await?;
        if n == 0 {
            return Err(ProxyHeaderError::Closed);
        }
        let before = taken.len();
        taken.extend_from_slice(&chunk[..n]);
        match parse(&taken) {
            Parsed::Complete { len, source } => {
                // The header ends within what was peeked: take exactly its rest.
                let mut rest = vec![0u8; len.saturating_sub(before)];
                tcp.read_exact(&mut rest).await?;
                return Ok(source);
            }
            // Every byte peeked belongs to the header: take them, so the next peek waits for
            // new ones.
            Parsed::Partial => {
                tcp.read_exact(&mut chunk[..n]).await?;
            }
            Parsed::Invalid(why) => return Err(ProxyHeaderError::Invalid(why)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use tokio::io::AsyncWriteExt;

    fn v2(command: u8, family: u8, addrs: &[u8], tlvs: &[u8]) -> Vec<u8> {
        let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
        h.push(0x20 | command);
        h.push(family);
        h.extend(((addrs.len() + tlvs.len()) as u16).to_be_bytes());
        h.extend(addrs);
        h.extend(tlvs);
        h
    }

    fn v4_addrs() -> Vec<u8> {
        [[203, 0, 113, 7], [10, 0, 0, 1]]
            .concat()
            .into_iter()
            .chain(4711u16.to_be_bytes())
            .chain(443u16.to_be_bytes())
            .collect()
    }

    #[test]
    fn versions_one_and_two() {
        let v1 = b"PROXY TCP4 203.0.113.7 10.0.0.1 4711 443\r\n";
        let mut with_tls = v1.to_vec();
        with_tls.extend([0x16, 0x03, 0x01, 0x02, 0x00]);
        let want = Parsed::Complete {
            len: v1.len(),
            source: Some("203.0.113.7".parse().unwrap()),
        };
        assert_eq!(parse(&with_tls), want);
        let six = b"PROXY TCP6 2001:db8::7 2001:db8::1 4711 443\r\n";
        assert!(matches!(
            parse(six),
            Parsed::Complete {
                source: Some(IpAddr::V6(_)),
                ..
            }
        ));
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\n"),
            Parsed::Complete {
                len: 15,
                source: None
            }
        );
        let h = v2(1, 0x11, &v4_addrs(), &[0x04, 0, 1, b'x']);
        assert_eq!(
            parse(&h),
            Parsed::Complete {
                len: h.len(),
                source: Some("203.0.113.7".parse().unwrap())
            }
        );
        let local = v2(0, 0x11, &v4_addrs(), &[]);
        assert!(matches!(
            parse(&local),
            Parsed::Complete { source: None, .. }
        ));
        // Every beginning is partial; TLS or HTTP instead of a header is not.
        for cut in 1..h.len() {
            assert_eq!(parse(&h[..cut]), Parsed::Partial, "v2 cut at {cut}");
        }
        for cut in 1..v1.len() {
            assert_eq!(parse(&v1[..cut]), Parsed::Partial, "v1 cut at {cut}");
        }
        for bad in [
            &[0x16u8, 0x03, 0x01][..],
            b"GET / HTTP/1.1\r\n",
            b"PROXY TCP4 x\r\n",
        ] {
            assert!(matches!(parse(bad), Parsed::Invalid(_)), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn read_takes_the_header_and_nothing_after_it() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let header = v2(1, 0x11, &v4_addrs(), &[]);
        let client = tokio::spawn(async move {
            let mut c = TcpStream::connect(addr).await.unwrap();
            // In pieces, as a slow balancer might send it.
            for part in header.chunks(5) {
                c.write_all(part).await.unwrap();
                c.flush().await.unwrap();
                tokio::task::yield_now().await;
            }
            c.write_all(b"after").await.unwrap();
            c
        });
        let (mut s, _) = listener.accept().await.unwrap();
        assert_eq!(
            read(&mut s).await.unwrap(),
            Some("203.0.113.7".parse().unwrap())
        );
        let mut rest = [0u8; 5];
        s.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"after");
        drop(client.await.unwrap());
    }

    proptest! {
        #[test]
        fn any_bytes_parse_without_panic_and_complete_headers_fit(
            bytes in prop::collection::vec(any::<u8>(), 0..300),
            prefix in prop_oneof![Just(&b""[..]), Just(&b"PROXY "[..]), Just(&b"\r\n\r\n\0\r\nQUIT\n"[..])],
        ) {
            let mut buf = prefix.to_vec();
            buf.extend(bytes);
            if let Parsed::Complete { len, .. } = parse(&buf) {
                prop_assert!(len > 0 && len <= buf.len());
            }
        }
    }
}
