//! The secret format of API keys, and how a secret is stored.
//!
//! A secret is `sk_` + 43 URL-safe base64 characters of 32 bytes from the OS
//! random source (256 bits). The store keeps only its SHA-256 (the key's
//! lookup key) and a display prefix; the secret itself is shown once, when
//! a key is created or rotated.

use base64::Engine;
use sha2::{Digest, Sha256};

use super::StoreError;

/// SHA-256 of a secret: how keys are stored and found.
pub type KeyHash = [u8; 32];

/// Random characters after `sk_`.
pub const SECRET_CHARS: usize = 43;

/// A fresh secret from the OS random source.
pub fn new_secret() -> Result<String, StoreError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| StoreError::Io(format!("the OS random source failed: {e}")))?;
    Ok(format!("sk_{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)))
}

/// Whether `s` has the shape of a secret (used for bootstrap keys given by the operator).
pub fn is_valid_secret(s: &str) -> bool {
    s.strip_prefix("sk_").is_some_and(|r| {
        r.len() >= SECRET_CHARS && r.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    })
}

pub fn hash_secret(secret: &str) -> KeyHash {
    Sha256::digest(secret.as_bytes()).into()
}

/// What lists show instead of the secret: `sk_ab12…wxyz`.
pub fn display_prefix(secret: &str) -> String {
    let body = secret.strip_prefix("sk_").unwrap_or(secret);
    let head: String = body.chars().take(4).collect();
    let tail: String = body.chars().rev().take(4).collect::<Vec<_>>().into_iter().rev().collect();
    format!("sk_{head}…{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_long_random_and_url_safe() {
        let a = new_secret().unwrap();
        let b = new_secret().unwrap();
        assert_ne!(a, b);
        assert!(is_valid_secret(&a), "{a}");
        assert_eq!(a.len(), 3 + SECRET_CHARS);
        assert!(!is_valid_secret("sk_short"));
        assert!(!is_valid_secret(&format!("pk_{}", &a[3..])));
        assert!(!is_valid_secret(&format!("{a}!")));
    }

    #[test]
    fn display_prefix_hides_the_middle() {
        assert_eq!(display_prefix("sk_ab12cdefghijklmnopqrstuvwxyz0123456789ABCDwxyz"), "sk_ab12…wxyz");
    }

    #[test]
    fn hash_is_sha256() {
        let h = hash_secret("abc");
        assert_eq!(h[..4], [0xba, 0x78, 0x16, 0xbf]);
    }
}
