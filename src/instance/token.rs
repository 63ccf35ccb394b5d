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
    pub fn matches(&self, candidate: &[u8]) -> bool {
        use subtle::ConstantTimeEq;
        self.0.as_bytes().ct_eq(candidate).into()
    }
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AccessToken(<redacted>)")
    }
}
