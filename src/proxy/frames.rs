//! Where WebSocket frames end in the bytes an instance sends to a browser, so that the proxy
//! can put a close frame of its own between two of them (at the drain deadline) without
//! cutting one in half. Only frame headers are read; payloads pass untouched.

/// Follows the frame structure of one direction of a WebSocket connection.
#[derive(Debug, Clone, Default)]
pub struct FrameCursor {
    /// The header read so far (at most 14 bytes: 2, 8 of extended length, 4 of mask).
    header: [u8; 14],
    have: usize,
    /// Payload bytes of the current frame not yet passed.
    payload_left: u64,
}

impl FrameCursor {
    /// Whether the bytes passed so far end exactly where a frame ends.
    pub fn at_boundary(&self) -> bool {
        self.have == 0 && self.payload_left == 0
    }

    /// Passes `data` and returns how much of it was taken: all of it, or with `stop_at_end` only
    /// up to the end of the frame under way (so none when already at a boundary).
    pub fn pass(&mut self, data: &[u8], stop_at_end: bool) -> usize {
        let mut i = 0;
        while i < data.len() {
            if stop_at_end && self.at_boundary() {
                return i;
            }
            if self.payload_left > 0 {
                let take = self.payload_left.min((data.len() - i) as u64);
                self.payload_left -= take;
                // `take` is at most `data.len() - i`, a usize.
                i += take as usize;
                continue;
            }
            self.header[self.have] = data[i];
            self.have += 1;
            i += 1;
            if let Some(len) = self.payload_len() {
                self.have = 0;
                self.payload_left = len;
            }
        }
        i
    }

    /// The payload length once the header is complete.
    fn payload_len(&self) -> Option<u64> {
        if self.have < 2 {
            return None;
        }
        let mask = if self.header[1] & 0x80 != 0 { 4 } else { 0 };
        let (ext, short) = match self.header[1] & 0x7f {
            126 => (2, None),
            127 => (8, None),
            n => (0, Some(u64::from(n))),
        };
        if self.have < 2 + ext + mask {
            return None;
        }
        Some(short.unwrap_or_else(|| {
            self.header[2..2 + ext]
                .iter()
                .fold(0u64, |acc, &b| (acc << 8) | u64::from(b))
        }))
    }
}

/// A close frame from the server (unmasked) with status 1001, "going away".
pub const GOING_AWAY: [u8; 4] = [0x88, 0x02, 0x03, 0xe9];

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// An unmasked server frame with `len` payload bytes.
    fn frame(len: usize) -> Vec<u8> {
        let mut f = vec![0x82];
        match len {
            0..=125 => f.push(len as u8),
            126..=65535 => {
                f.push(126);
                f.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                f.push(127);
                f.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        f.extend(std::iter::repeat_n(0xab, len));
        f
    }

    #[test]
    fn boundaries_of_short_extended_and_masked_frames() {
        let mut c = FrameCursor::default();
        assert!(c.at_boundary());
        let mut masked = vec![0x81, 0x80 | 3, 1, 2, 3, 4];
        masked.extend_from_slice(b"abc");
        for f in [frame(0), frame(5), frame(300), frame(70_000), masked] {
            assert_eq!(c.pass(&f[..f.len() - 1], false), f.len() - 1);
            assert!(!c.at_boundary());
            assert_eq!(c.pass(&f[f.len() - 1..], false), 1);
            assert!(c.at_boundary());
        }
    }

    #[test]
    fn stops_at_the_end_of_the_frame_under_way() {
        let mut c = FrameCursor::default();
        let mut two = frame(10);
        two.extend(frame(20));
        c.pass(&two[..4], false);
        assert_eq!(c.pass(&two[4..], true), 8);
        assert!(c.at_boundary());
        assert_eq!(c.pass(&two[12..], true), 0);
    }

    proptest! {
        /// However a stream of frames is cut into writes, the cursor is at a boundary exactly
        /// where a frame ends, and stopping at the end never passes one.
        #[test]
        fn any_cut_finds_every_boundary(
            lens in proptest::collection::vec(0usize..70_000, 1..6),
            cuts in proptest::collection::vec(1usize..100_000, 0..8),
        ) {
            let mut stream = Vec::new();
            let mut ends = std::collections::BTreeSet::new();
            for l in &lens {
                stream.extend(frame(*l));
                ends.insert(stream.len());
            }
            let mut c = FrameCursor::default();
            let mut pos = 0;
            let mut cuts = cuts.into_iter();
            while pos < stream.len() {
                let n = cuts.next().unwrap_or(stream.len()).min(stream.len() - pos);
                let mut probe = c.clone();
                let stop = probe.pass(&stream[pos..pos + n], true);
                if c.at_boundary() {
                    prop_assert_eq!(stop, 0);
                } else {
                    prop_assert!(stop == n || ends.contains(&(pos + stop)));
                }
                prop_assert_eq!(c.pass(&stream[pos..pos + n], false), n);
                pos += n;
                prop_assert_eq!(c.at_boundary(), ends.contains(&pos));
            }
        }
    }
}
