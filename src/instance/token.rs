//! The secret that opens one instance: generated from the OS's randomness, compared in
//! constant time, never shown by `Debug`.

use rand::RngCore;
use serde::{Deserialize, Serialize};
use std::fmt;

/// A secret that grants access to one instance: 256 random bits, hex-encoded.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AccessToken(String);

impl AccessToken {
    pub fn generate() -> Self {
        let mut b = [0u8; 32];
        rand::rng().fill_bytes(&mut b);
        Self(b.iter().map(|x| format!("{x:02x}")).collect())
    }

    pub fn from_secret(s: String) -> Self {
        Self(s)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Constant-time comparison, so response timing does not leak how much of a guess matched.
    ///
    /// Eight bytes at a time: subtle's barrier is a call per element compared, and this runs
    /// on every proxied request (64 calls per token byte by byte, 8 by words).
    pub fn matches(&self, candidate: &[u8]) -> bool {
        use subtle::{Choice, ConstantTimeEq};
        let secret = self.0.as_bytes();
        // As subtle's own slice comparison does: the length is not the secret.
        if secret.len() != candidate.len() {
            return false;
        }
        let (ours, theirs) = (secret.chunks_exact(8), candidate.chunks_exact(8));
        let mut same: Choice = ours.remainder().ct_eq(theirs.remainder());
        for (a, b) in ours.zip(theirs) {
            same &= word(a).ct_eq(&word(b));
        }
        same.into()
    }
}

/// Eight bytes as one word; `chunks_exact(8)` hands out nothing else.
fn word(b: &[u8]) -> u64 {
    u64::from_le_bytes(b.try_into().unwrap_or([0; 8]))
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AccessToken(<redacted>)")
    }
}
