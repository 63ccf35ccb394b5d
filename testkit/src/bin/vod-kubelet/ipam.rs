//! Pod IP allocation from a range of loopback addresses (Linux routes all of 127.0.0.0/8 to
//! `lo`, so each pod can bind its own address without any network setup).

use std::{collections::HashMap, net::Ipv4Addr, str::FromStr};

#[derive(Clone, Copy, Debug)]
pub struct IpRange {
    first: u32,
    last: u32,
}

impl FromStr for IpRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (a, b) = s.split_once('-').unwrap_or((s, s));
        let parse = |x: &str| {
            x.trim()
                .parse::<Ipv4Addr>()
                .map(u32::from)
                .map_err(|e| format!("bad address {x:?} in range {s:?}: {e}"))
        };
        let (first, last) = (parse(a)?, parse(b)?);
        if first > last {
            return Err(format!("empty range {s:?}"));
        }
        Ok(IpRange { first, last })
    }
}

/// Addresses in use, keyed by pod UID. Allocation goes round-robin through the range rather than
/// reusing the lowest free address, so an address that just left is not handed out again at once
/// while something may still hold a connection to it.
pub struct Ipam {
    range: IpRange,
    by_uid: HashMap<String, u32>,
    used: HashMap<u32, String>,
    next: u32,
}

impl Ipam {
    pub fn new(range: IpRange) -> Self {
        Ipam {
            range,
            by_uid: HashMap::new(),
            used: HashMap::new(),
            next: range.first,
        }
    }

    /// Gives `uid` an address, `preferred` if it is in range and free (a pod restarted after
    /// vod-kubelet itself restarted keeps the address it reported), and the same one again if it
    /// already has one. `None` when the range is exhausted.
    pub fn allocate(&mut self, uid: &str, preferred: Option<Ipv4Addr>) -> Option<Ipv4Addr> {
        if let Some(ip) = self.by_uid.get(uid) {
            return Some(Ipv4Addr::from(*ip));
        }
        let pick = preferred
            .map(u32::from)
            .filter(|p| (self.range.first..=self.range.last).contains(p))
            .filter(|p| !self.used.contains_key(p))
            .or_else(|| {
                let size = u64::from(self.range.last - self.range.first) + 1;
                (0..size)
                    .map(|i| {
                        let off = (u64::from(self.next - self.range.first) + i) % size;
                        // off < size <= 2^32, and first + off <= last, so this fits in u32.
                        self.range.first + off as u32
                    })
                    .find(|c| !self.used.contains_key(c))
            })?;
        self.next = if pick >= self.range.last {
            self.range.first
        } else {
            pick + 1
        };
        self.by_uid.insert(uid.to_string(), pick);
        self.used.insert(pick, uid.to_string());
        Some(Ipv4Addr::from(pick))
    }

    pub fn release(&mut self, uid: &str) {
        if let Some(ip) = self.by_uid.remove(uid) {
            self.used.remove(&ip);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_uniquely_round_robin_and_honours_preference() {
        let mut ipam = Ipam::new("127.0.0.2-127.0.0.4".parse().expect("valid"));
        let a = ipam.allocate("a", None).expect("free");
        let b = ipam.allocate("b", None).expect("free");
        assert_eq!(a, Ipv4Addr::new(127, 0, 0, 2));
        assert_eq!(b, Ipv4Addr::new(127, 0, 0, 3));
        assert_eq!(ipam.allocate("a", None), Some(a));
        ipam.release("a");
        // Round robin: .4 before the just-released .2.
        assert_eq!(ipam.allocate("c", None), Some(Ipv4Addr::new(127, 0, 0, 4)));
        assert_eq!(ipam.allocate("d", Some(b)), Some(a));
        assert_eq!(ipam.allocate("e", None), None);
        ipam.release("b");
        assert_eq!(ipam.allocate("f", Some(b)), Some(b));
        assert!("127.0.0.5-127.0.0.4".parse::<IpRange>().is_err());
        assert!("127.0.0.5".parse::<IpRange>().is_ok());
    }
}
