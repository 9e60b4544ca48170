//! Reports of leaked tokens. GitHub's secret scanning posts what it finds
//! in public code, signed with one of the ECDSA P-256 keys it publishes
//! (`https://api.github.com/meta/public_keys/secret_scanning`); a report is
//! believed only when `Github-Public-Key-Signature` verifies over the raw
//! body bytes, as received, under the key `Github-Public-Key-Identifier`
//! names.

use base64::Engine;
use ring::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_ASN1};

/// The DER prefix of every P-256 public key in SubjectPublicKeyInfo form
/// (id-ecPublicKey, prime256v1, a 66-byte bit string); the 65-byte
/// uncompressed point follows it.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03,
    0x01, 0x07, 0x03, 0x42, 0x00,
];

/// The most keys a key list may hold, and the longest identifier: GitHub
/// publishes a handful of 64-hex-digit ids.
const MAX_KEYS: usize = 64;
const MAX_KEY_ID: usize = 128;

/// Why a report is not believed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("no key with identifier `{0}` is known")]
    UnknownKey(String),
    #[error("the signature is not base64")]
    NotBase64,
    #[error("the signature does not verify over the body")]
    Invalid,
}

/// GitHub's published signing keys: identifier and P-256 point.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SigningKeys {
    keys: Vec<(String, Vec<u8>)>,
}

#[derive(serde::Deserialize)]
struct RawKeys {
    public_keys: Vec<RawKey>,
}

#[derive(serde::Deserialize)]
struct RawKey {
    key_identifier: String,
    key: String,
}

impl SigningKeys {
    /// Reads GitHub's key list (`{"public_keys": [{"key_identifier",
    /// "key", "is_current"}]}`, each key a PEM `PUBLIC KEY`). Retired keys
    /// are kept: a report signed before a rotation still verifies.
    pub fn parse(json: &[u8]) -> Result<SigningKeys, String> {
        let raw: RawKeys = serde_json::from_slice(json).map_err(|e| format!("not a key list: {e}"))?;
        if raw.public_keys.len() > MAX_KEYS {
            return Err(format!("more than {MAX_KEYS} keys"));
        }
        let mut keys = Vec::with_capacity(raw.public_keys.len());
        for k in raw.public_keys {
            if k.key_identifier.is_empty() || k.key_identifier.len() > MAX_KEY_ID {
                return Err("a key identifier is empty or too long".into());
            }
            let point = p256_point(&k.key).map_err(|e| format!("key `{}`: {e}", k.key_identifier))?;
            keys.push((k.key_identifier, point));
        }
        Ok(SigningKeys { keys })
    }

    /// Reads a copy of the key list from a file; an error names the file.
    pub fn read(path: &std::path::Path) -> Result<SigningKeys, String> {
        let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        SigningKeys::parse(&bytes).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Whether the list holds no key at all.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Whether a key by this identifier is known (an unknown one is worth
    /// one fetch of the list: GitHub may have rotated).
    pub fn knows(&self, key_id: &str) -> bool {
        self.keys.iter().any(|(id, _)| id == key_id)
    }

    /// Checks `signature` (base64 of a DER ECDSA signature) over `body`,
    /// the bytes as received, under the key named `key_id`.
    pub fn verify(&self, key_id: &str, signature: &str, body: &[u8]) -> Result<(), SignatureError> {
        let (_, point) = self
            .keys
            .iter()
            .find(|(id, _)| id == key_id)
            .ok_or_else(|| SignatureError::UnknownKey(key_id.chars().take(MAX_KEY_ID).collect()))?;
        let der = base64::engine::general_purpose::STANDARD.decode(signature.trim()).map_err(|_| SignatureError::NotBase64)?;
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, point).verify(body, &der).map_err(|_| SignatureError::Invalid)
    }
}

/// The uncompressed point of a PEM P-256 public key; anything else (RSA,
/// another curve, a compressed point, trailing bytes) is refused.
fn p256_point(pem: &str) -> Result<Vec<u8>, String> {
    let body: String = pem
        .lines()
        .map(str::trim)
        .skip_while(|l| *l != "-----BEGIN PUBLIC KEY-----")
        .skip(1)
        .take_while(|l| *l != "-----END PUBLIC KEY-----")
        .collect();
    let der = base64::engine::general_purpose::STANDARD.decode(body).map_err(|_| "the PEM body is not base64".to_string())?;
    match der.strip_prefix(&P256_SPKI_PREFIX[..]) {
        Some(point) if point.len() == 65 && point[0] == 0x04 => Ok(point.to_vec()),
        _ => Err("not an uncompressed ECDSA P-256 public key".into()),
    }
}

/// What secret scanners are given to find keygate's tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RulesFormat {
    /// The text to send GitHub when enrolling in its partner program.
    Github,
    /// A gitleaks rule (TOML).
    Gitleaks,
    /// A TruffleHog custom detector (YAML).
    Trufflehog,
}

impl RulesFormat {
    /// `github`, `gitleaks` or `trufflehog`.
    pub fn parse(name: &str) -> Option<RulesFormat> {
        match name {
            "github" => Some(RulesFormat::Github),
            "gitleaks" => Some(RulesFormat::Gitleaks),
            "trufflehog" => Some(RulesFormat::Trufflehog),
            _ => None,
        }
    }
}

/// The pattern of a generated token of `brand` (1 to 16 ASCII letters or
/// digits, as config validation has it): `{brand}_live_` or
/// `{brand}_test_` and 40 base62 characters, not inside a longer word. A
/// pattern cannot check the CRC32 in the last six characters; keygate does
/// when a report arrives, and labels a match with a bad checksum a false
/// positive.
pub fn token_pattern(brand: &str) -> String {
    format!(r"\b{brand}_(?:live|test)_[0-9A-Za-z]{{{}}}\b", crate::keys::token::RANDOM_LEN)
}

/// The rules for `format`, for tokens of `brand`.
pub fn scanner_rules(brand: &str, format: RulesFormat) -> String {
    let pattern = token_pattern(brand);
    let (live, test) = (format!("{brand}_live_"), format!("{brand}_test_"));
    let name = format!("{brand} API key (keygate)");
    match format {
        RulesFormat::Github => format!(
            "Secret type: {brand}_api_key\nName: {name}\nPattern: {pattern}\n\
             Structure: the prefix {live} or {test}, 34 random base62 characters, \
             then a CRC32 of them as 6 base62 characters\n"
        ),
        RulesFormat::Gitleaks => format!(
            "[[rules]]\nid = \"{brand}-api-key\"\ndescription = \"{name}\"\nregex = '''{pattern}'''\n\
             keywords = [\"{live}\", \"{test}\"]\n"
        ),
        RulesFormat::Trufflehog => format!(
            "detectors:\n  - name: {name}\n    keywords:\n      - {live}\n      - {test}\n    regex:\n      token: '{pattern}'\n"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};

    /// The example GitHub's partner documentation gives: its key, body and
    /// signature.
    const DOC_KEY_ID: &str = "90a421169f0a406205f1563a953312f0be898d3c7b6c06b681aa86a874555f4a";
    const DOC_KEY: &str = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE9MJJHnMfn2+H4xL4YaPDA4RpJqUq\nkCmRCBnYERxZanmcpzQSXs1X/AljlKkbJ8qpVIW4clayyef9gWhFbNHWAA==\n-----END PUBLIC KEY-----\n";
    const DOC_BODY: &[u8] = br#"[{"token":"some_token","type":"some_type","url":"some_url"}]"#;
    const DOC_SIGNATURE: &str =
        "MEUCIQDKZokqnCjrRtw0tni+2Ltvl/uiMJ1EGumEsp1BsNr32AIgQY1YXD2nlj+XNfGK4rBfkMJ1JDOQcYXxa2sY8FNkrKc=";

    fn list(keys: &[(&str, &str)]) -> Vec<u8> {
        let keys: Vec<_> =
            keys.iter().map(|(id, pem)| serde_json::json!({ "key_identifier": id, "key": pem, "is_current": true })).collect();
        serde_json::json!({ "public_keys": keys }).to_string().into_bytes()
    }

    fn pem_of(point: &[u8]) -> String {
        let der = [&P256_SPKI_PREFIX[..], point].concat();
        format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            base64::engine::general_purpose::STANDARD.encode(der)
        )
    }

    #[test]
    fn github_s_documented_example_verifies_and_any_change_does_not() {
        let keys = SigningKeys::parse(&list(&[(DOC_KEY_ID, DOC_KEY)])).unwrap();
        assert!(keys.knows(DOC_KEY_ID));
        assert_eq!(keys.verify(DOC_KEY_ID, DOC_SIGNATURE, DOC_BODY), Ok(()));
        let changed = br#"[{"token":"some_token","type":"some_type","url":"some_url2"}]"#;
        assert_eq!(keys.verify(DOC_KEY_ID, DOC_SIGNATURE, changed), Err(SignatureError::Invalid));
        // Re-serialised (a space after a colon) is another body.
        let reserialised = br#"[{"token": "some_token","type":"some_type","url":"some_url"}]"#;
        assert_eq!(keys.verify(DOC_KEY_ID, DOC_SIGNATURE, reserialised), Err(SignatureError::Invalid));
        assert_eq!(keys.verify("other", DOC_SIGNATURE, DOC_BODY), Err(SignatureError::UnknownKey("other".into())));
        assert_eq!(keys.verify(DOC_KEY_ID, "not base64!", DOC_BODY), Err(SignatureError::NotBase64));
        assert_eq!(keys.verify(DOC_KEY_ID, "", DOC_BODY), Err(SignatureError::Invalid));
    }

    #[test]
    fn a_report_verifies_only_under_the_key_that_signed_it() {
        let rng = SystemRandom::new();
        let pair = |_| {
            let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng).unwrap()
        };
        let (a, b) = (pair(0), pair(1));
        let (pem_a, pem_b) = (pem_of(a.public_key().as_ref()), pem_of(b.public_key().as_ref()));
        let keys = SigningKeys::parse(&list(&[("a", &pem_a), ("b", &pem_b)])).unwrap();
        let body = br#"[{"token":"kg_live_x","type":"keygate_api_key","url":"https://example.com","source":"content"}]"#;
        let signature = base64::engine::general_purpose::STANDARD.encode(a.sign(&rng, body).unwrap());
        assert_eq!(keys.verify("a", &signature, body), Ok(()));
        assert_eq!(keys.verify("b", &signature, body), Err(SignatureError::Invalid));
    }

    #[test]
    fn key_lists_that_are_not_p256_points_are_refused() {
        let rsa = "-----BEGIN PUBLIC KEY-----\nMFwwDQYJKoZIhvcNAQEBBQADSwAwSAJBAKj34GkxFhD90vcNLYLInFEX6Ppy1tPf\n9Cnzj4p4WGeKLs1Pt8QuKUpRKfFLfRYC9AIKjbJTWit+CqvjWYzvQwECAwEAAQ==\n-----END PUBLIC KEY-----\n";
        assert!(SigningKeys::parse(&list(&[("rsa", rsa)])).is_err());
        assert!(SigningKeys::parse(&list(&[("", DOC_KEY)])).is_err());
        assert!(SigningKeys::parse(b"[]").is_err());
        let compressed = pem_of(&[0x02; 33]);
        assert!(SigningKeys::parse(&list(&[("c", &compressed)])).is_err());
        let many: Vec<(String, &str)> = (0..65).map(|i| (format!("k{i}"), DOC_KEY)).collect();
        let many: Vec<(&str, &str)> = many.iter().map(|(id, k)| (id.as_str(), *k)).collect();
        assert!(SigningKeys::parse(&list(&many)).is_err());
    }

    #[test]
    fn scanner_patterns_find_generated_tokens_and_miss_look_alikes() {
        use crate::keys::model::Env;
        use crate::keys::token::generate;
        let pattern = regex::Regex::new(&token_pattern("kg")).unwrap();
        for env in [Env::Live, Env::Test] {
            let token = generate("kg", env);
            let line = format!("export KEYGATE_KEY=\"{token}\" # leaked");
            assert_eq!(pattern.find(&line).map(|m| m.as_str()), Some(token.as_str()));
            let other_brand = generate("zz", env);
            assert!(!pattern.is_match(&other_brand), "{other_brand}");
            assert!(!pattern.is_match(&token[..token.len() - 1]), "one character short");
            assert!(!pattern.is_match(&format!("{token}x")), "inside a longer word");
            assert!(!pattern.is_match(&format!("x{token}")), "inside a longer word");
        }
        assert!(!pattern.is_match(&format!("kg_prod_{}", "a".repeat(40))), "another environment");
        for format in [RulesFormat::Github, RulesFormat::Gitleaks, RulesFormat::Trufflehog] {
            let rules = scanner_rules("kg", format);
            assert!(rules.contains(&token_pattern("kg")), "{format:?} carries the pattern: {rules}");
        }
        let gitleaks: toml::Value = toml::from_str(&scanner_rules("kg", RulesFormat::Gitleaks)).unwrap();
        assert_eq!(gitleaks["rules"][0]["regex"].as_str(), Some(token_pattern("kg").as_str()));
        assert_eq!(RulesFormat::parse("gitleaks"), Some(RulesFormat::Gitleaks));
        assert_eq!(RulesFormat::parse("semgrep"), None);
    }
}
