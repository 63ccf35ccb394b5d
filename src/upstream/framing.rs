//! Where a response body from an instance ends (RFC 9112, section 6.3): after a length, at
//! the last chunk of chunked coding, or when the instance closes the connection; and the
//! reading of it out of the connection's buffer. Data comes out as slices of that buffer,
//! never copied.

use bytes::{Buf, Bytes, BytesMut};

/// The longest chunk-size or trailer line accepted (chunk extensions are read and ignored).
const MAX_LINE: usize = 4096;
/// The most trailer bytes read after the last chunk; they are dropped.
const MAX_TRAILERS: usize = 16 * 1024;

/// How the body in progress ends, and how far it has come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// This many bytes are still to come; `Length(0)` is the end (or no body at all).
    Length(u64),
    Chunked(Chunk),
    /// Everything until the instance closes the connection.
    UntilClose,
}

/// Where chunked coding stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunk {
    /// Before a chunk-size line.
    Size,
    /// Inside a chunk's data, with this many bytes to come.
    Data(u64),
    /// After a chunk's data, before its CRLF.
    DataEnd,
    /// After the last chunk, in the trailer section, with this many trailer bytes read.
    Trailers(usize),
}

/// What the buffer yielded.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    Data(Bytes),
    End,
    /// The buffer holds no more of the body; read on.
    More,
}

#[derive(Debug, thiserror::Error)]
#[error("malformed chunked body: {0}")]
pub struct FramingError(&'static str);

impl Framing {
    pub fn chunked() -> Self {
        Framing::Chunked(Chunk::Size)
    }

    pub fn is_end(&self) -> bool {
        *self == Framing::Length(0)
    }

    /// The body's exact remaining length, when it is known.
    pub fn remaining(&self) -> Option<u64> {
        match self {
            Framing::Length(n) => Some(*n),
            _ => None,
        }
    }

    /// Takes what `buf` holds of the body off its front: data, the end, or the need to read
    /// more. Bytes after the end stay in `buf`.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, FramingError> {
        loop {
            match self {
                Framing::Length(0) => return Ok(Decoded::End),
                Framing::Length(rest) => return Ok(take(buf, rest)),
                Framing::UntilClose if buf.is_empty() => return Ok(Decoded::More),
                Framing::UntilClose => return Ok(Decoded::Data(buf.split().freeze())),
                Framing::Chunked(chunk) => match chunk {
                    Chunk::Size => {
                        let Some(line) = line(buf)? else {
                            return Ok(Decoded::More);
                        };
                        *chunk = match chunk_size(&line)? {
                            0 => Chunk::Trailers(0),
                            n => Chunk::Data(n),
                        };
                    }
                    Chunk::Data(rest) => {
                        let d = take(buf, rest);
                        if *rest == 0 {
                            *chunk = Chunk::DataEnd;
                        }
                        return Ok(d);
                    }
                    Chunk::DataEnd => {
                        if buf.len() < 2 {
                            return Ok(Decoded::More);
                        }
                        if &buf[..2] != b"\r\n" {
                            return Err(FramingError("no CRLF after a chunk's data"));
                        }
                        buf.advance(2);
                        *chunk = Chunk::Size;
                    }
                    Chunk::Trailers(seen) => {
                        let Some(line) = line(buf)? else {
                            return Ok(Decoded::More);
                        };
                        if line.is_empty() {
                            *self = Framing::Length(0);
                            return Ok(Decoded::End);
                        }
                        *seen += line.len();
                        if *seen > MAX_TRAILERS {
                            return Err(FramingError("trailers too large"));
                        }
                    }
                },
            }
        }
    }
}

/// Up to `rest` bytes off the front of `buf`, counted off `rest`.
fn take(buf: &mut BytesMut, rest: &mut u64) -> Decoded {
    if buf.is_empty() {
        return Decoded::More;
    }
    // Bounded by the buffer's length, so it fits in usize.
    let n = (*rest).min(buf.len() as u64) as usize;
    *rest -= n as u64;
    Decoded::Data(buf.split_to(n).freeze())
}

/// One CRLF-terminated line off the front of `buf`, without its CRLF; `None` until it has
/// come whole.
fn line(buf: &mut BytesMut) -> Result<Option<BytesMut>, FramingError> {
    let window = &buf[..buf.len().min(MAX_LINE)];
    match window.iter().position(|&b| b == b'\n') {
        Some(lf) if lf > 0 && buf[lf - 1] == b'\r' => {
            let mut line = buf.split_to(lf + 1);
            line.truncate(lf - 1);
            Ok(Some(line))
        }
        Some(_) => Err(FramingError("a line ends without CR")),
        None if buf.len() >= MAX_LINE => Err(FramingError("line too long")),
        None => Ok(None),
    }
}

/// A chunk-size line: hexadecimal digits, then optionally whitespace and extensions.
fn chunk_size(line: &[u8]) -> Result<u64, FramingError> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return Err(FramingError("no chunk size"));
    }
    if digits > 15 {
        return Err(FramingError("chunk size too large"));
    }
    match line[digits..].first() {
        None | Some(b';' | b' ' | b'\t') => {}
        Some(_) => return Err(FramingError("bad chunk size")),
    }
    // Checked as ASCII hex digits above, so both conversions hold.
    let hex = std::str::from_utf8(&line[..digits]).map_err(|_| FramingError("bad chunk size"))?;
    u64::from_str_radix(hex, 16).map_err(|_| FramingError("bad chunk size"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Feeds `wire` in pieces at the given cut points and collects the body.
    fn read(mut f: Framing, wire: &[u8], cuts: &[usize]) -> Result<(Vec<u8>, Vec<u8>), String> {
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        let mut fed = 0;
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (wire.len() + 1)).collect();
        points.sort_unstable();
        points.push(wire.len());
        for p in points {
            buf.extend_from_slice(&wire[fed..p.max(fed)]);
            fed = p.max(fed);
            loop {
                match f.decode(&mut buf).map_err(|e| e.to_string())? {
                    Decoded::Data(d) => body.extend_from_slice(&d),
                    Decoded::End => {
                        buf.extend_from_slice(&wire[fed..]);
                        return Ok((body, buf.to_vec()));
                    }
                    Decoded::More => break,
                }
            }
        }
        Err(format!("no end; body so far {} bytes", body.len()))
    }

    fn chunked(body: &[u8], sizes: &[usize], trailer: &str) -> Vec<u8> {
        let mut wire = Vec::new();
        let mut at = 0;
        for s in sizes.iter().map(|s| s % 300 + 1) {
            if at >= body.len() {
                break;
            }
            let end = (at + s).min(body.len());
            wire.extend_from_slice(format!("{:x};ext=1\r\n", end - at).as_bytes());
            wire.extend_from_slice(&body[at..end]);
            wire.extend_from_slice(b"\r\n");
            at = end;
        }
        if at < body.len() {
            wire.extend_from_slice(format!("{:X}\r\n", body.len() - at).as_bytes());
            wire.extend_from_slice(&body[at..]);
            wire.extend_from_slice(b"\r\n");
        }
        wire.extend_from_slice(format!("0\r\n{trailer}\r\n").as_bytes());
        wire
    }

    proptest! {
        #[test]
        fn chunked_bodies_come_out_whole_however_they_arrive(
            body in proptest::collection::vec(any::<u8>(), 0..2000),
            sizes in proptest::collection::vec(0usize..1000, 0..20),
            cuts in proptest::collection::vec(0usize..5000, 0..12),
            trailer in prop_oneof![Just(""), Just("x-checksum: 1\r\n")],
        ) {
            let mut wire = chunked(&body, &sizes, trailer);
            wire.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
            let (got, after) = read(Framing::chunked(), &wire, &cuts).unwrap();
            prop_assert_eq!(got, body);
            prop_assert_eq!(after, b"HTTP/1.1 200 OK\r\n".to_vec(), "the next response stays");
        }

        #[test]
        fn a_length_is_read_exactly(
            body in proptest::collection::vec(any::<u8>(), 0..2000),
            cuts in proptest::collection::vec(0usize..3000, 0..12),
        ) {
            let mut wire = body.clone();
            wire.extend_from_slice(b"next");
            let (got, after) = read(Framing::Length(body.len() as u64), &wire, &cuts).unwrap();
            prop_assert_eq!(got, body);
            prop_assert_eq!(after, b"next".to_vec());
        }

        #[test]
        fn any_bytes_as_chunked_coding_end_or_fail_without_panic(
            wire in proptest::collection::vec(any::<u8>(), 0..600),
            cuts in proptest::collection::vec(0usize..700, 0..6),
        ) {
            let _ = read(Framing::chunked(), &wire, &cuts);
        }
    }

    #[test]
    fn malformed_chunked_coding_is_refused() {
        for (wire, why) in [
            (&b"zz\r\n"[..], "no chunk size"),
            (b"5x\r\nhello\r\n0\r\n\r\n", "bad chunk size"),
            (b"5\r\nhelloXY0\r\n\r\n", "no CRLF after a chunk's data"),
            (b"5\nhello\r\n0\r\n\r\n", "a line ends without CR"),
            (b"1000000000000000\r\n", "chunk size too large"),
        ] {
            let e = read(Framing::chunked(), wire, &[]).unwrap_err();
            assert!(e.contains(why), "{e} for {wire:?}");
        }
        let long = vec![b'1'; MAX_LINE + 10];
        assert!(read(Framing::chunked(), &long, &[])
            .unwrap_err()
            .contains("line too long"));
    }

    #[test]
    fn a_body_until_close_is_everything_that_comes() {
        let mut f = Framing::UntilClose;
        let mut buf = BytesMut::from(&b"abc"[..]);
        assert_eq!(
            f.decode(&mut buf).unwrap(),
            Decoded::Data(Bytes::from("abc"))
        );
        assert_eq!(f.decode(&mut buf).unwrap(), Decoded::More);
    }
}
