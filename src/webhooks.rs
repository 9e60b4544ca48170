//! Signing webhooks as Standard Webhooks (standardwebhooks.com) has them,
//! so a receiver can check any delivery with a library it already has:
//! `webhook-id`, `webhook-timestamp` and `webhook-signature: v1,<base64
//! HMAC-SHA256 of "id.timestamp.body">`, the secret given as `whsec_`
//! and its base64.

use base64::Engine;
use ring::hmac;

/// The prefix of a serialised signing secret.
pub const SECRET_PREFIX: &str = "whsec_";
/// The spec's bounds on a secret's length, in bytes.
const SECRET_BYTES: std::ops::RangeInclusive<usize> = 24..=64;
/// The longest message id signed (ids are keygate's own).
const MAX_ID: usize = 128;

/// Why a secret or a message cannot be signed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigningError {
    #[error("a signing secret is `whsec_` and the base64 of 24 to 64 random bytes")]
    BadSecret,
    #[error("a message id is 1 to {MAX_ID} characters of [A-Za-z0-9_-]")]
    BadId,
}

/// A webhook endpoint's signing secret.
pub struct SigningSecret(hmac::Key);

impl std::fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningSecret(..)")
    }
}

impl SigningSecret {
    /// Reads `whsec_<base64>` (the prefix may be left out).
    pub fn parse(text: &str) -> Result<SigningSecret, SigningError> {
        let encoded = text.trim().strip_prefix(SECRET_PREFIX).unwrap_or(text.trim());
        let bytes = base64::engine::general_purpose::STANDARD.decode(encoded).map_err(|_| SigningError::BadSecret)?;
        if !SECRET_BYTES.contains(&bytes.len()) {
            return Err(SigningError::BadSecret);
        }
        Ok(SigningSecret(hmac::Key::new(hmac::HMAC_SHA256, &bytes)))
    }

    /// The `webhook-signature` value of one delivery. The id may hold no
    /// `.`: the signed text is `id.timestamp.body`, and a dot in the id
    /// could make two deliveries sign alike.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> Result<String, SigningError> {
        let valid =
            !id.is_empty() && id.len() <= MAX_ID && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !valid {
            return Err(SigningError::BadId);
        }
        let tag = hmac::sign(&self.0, &signed_text(id, timestamp, body));
        Ok(format!("v1,{}", base64::engine::general_purpose::STANDARD.encode(tag.as_ref())))
    }

    /// Whether a `webhook-signature` value (space-separated signatures,
    /// any of which may match) holds a valid `v1` signature of this
    /// delivery; compared in constant time.
    pub fn verify(&self, id: &str, timestamp: i64, body: &[u8], header: &str) -> bool {
        let text = signed_text(id, timestamp, body);
        header.split(' ').filter_map(|s| s.strip_prefix("v1,")).any(|sig| {
            base64::engine::general_purpose::STANDARD.decode(sig).is_ok_and(|tag| hmac::verify(&self.0, &text, &tag).is_ok())
        })
    }
}

fn signed_text(id: &str, timestamp: i64, body: &[u8]) -> Vec<u8> {
    [id.as_bytes(), b".", timestamp.to_string().as_bytes(), b".", body].concat()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference library's own example (standard-webhooks, Rust).
    const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    const ID: &str = "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk";
    const TIMESTAMP: i64 = 1649367553;
    const BODY: &[u8] = br#"{"email":"test@example.com","username":"test_user"}"#;
    const SIGNATURE: &str = "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=";

    #[test]
    fn signatures_match_the_reference_library_s() {
        let secret = SigningSecret::parse(SECRET).unwrap();
        assert_eq!(secret.sign(ID, TIMESTAMP, BODY).unwrap(), SIGNATURE);
        assert!(secret.verify(ID, TIMESTAMP, BODY, SIGNATURE));
        assert!(secret.verify(ID, TIMESTAMP, BODY, &format!("v1,b2xk {SIGNATURE}")), "any of the list may match");
        assert!(!secret.verify(ID, TIMESTAMP + 1, BODY, SIGNATURE));
        assert!(!secret.verify(ID, TIMESTAMP, br#"{"email":"test@example.com", "username":"test_user"}"#, SIGNATURE));
        assert!(!secret.verify("msg_other", TIMESTAMP, BODY, SIGNATURE));
        assert!(!secret.verify(ID, TIMESTAMP, BODY, &SIGNATURE.replace("v1,", "v1a,")));
        let same_without_prefix = SigningSecret::parse(SECRET.trim_start_matches(SECRET_PREFIX)).unwrap();
        assert_eq!(same_without_prefix.sign(ID, TIMESTAMP, BODY).unwrap(), SIGNATURE);
    }

    #[test]
    fn short_long_or_garbled_secrets_and_dotted_ids_are_refused() {
        let b64 = |n: usize| format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode(vec![7u8; n]));
        assert_eq!(SigningSecret::parse(&b64(23)).unwrap_err(), SigningError::BadSecret);
        assert!(SigningSecret::parse(&b64(24)).is_ok());
        assert!(SigningSecret::parse(&b64(64)).is_ok());
        assert_eq!(SigningSecret::parse(&b64(65)).unwrap_err(), SigningError::BadSecret);
        assert_eq!(SigningSecret::parse("whsec_not base64!").unwrap_err(), SigningError::BadSecret);
        let secret = SigningSecret::parse(SECRET).unwrap();
        for id in ["", "a.b", "with space", &"x".repeat(129)] {
            assert_eq!(secret.sign(id, TIMESTAMP, BODY), Err(SigningError::BadId), "{id:?}");
        }
        assert_eq!(format!("{secret:?}"), "SigningSecret(..)", "a secret is never printed");
    }
}
