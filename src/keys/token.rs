//! Token format, hashing and masking.
//!
//! Generated tokens are `{brand}_{env}_{random}`: `random` is 40 base62
//! characters whose last 6 are a CRC32 of the first 34, so a typo is refused
//! without a store lookup and secret scanners can recognise leaked tokens.
//! The store keeps only SHA-256 of the whole token, which is also what lets
//! operators import existing tokens of any format.

use rand::Rng;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::model::Env;

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
/// Characters of the random part of a generated token.
pub const RANDOM_LEN: usize = 40;
/// Of those, the trailing checksum characters.
pub const CHECKSUM_LEN: usize = 6;
/// Shortest token `keys import` accepts: anything shorter is guessable.
pub const MIN_IMPORT_LEN: usize = 16;
/// Longest credential looked at; longer ones are refused unread.
pub const MAX_TOKEN_LEN: usize = 512;

/// SHA-256 of a whole token: the only form in which a secret is kept.
/// Equality is constant-time, so lookups by it leak nothing by timing.
#[derive(Clone, Copy)]
pub struct TokenHash(pub [u8; 32]);

impl std::hash::Hash for TokenHash {
    /// A digest is already uniform: its first eight bytes are hash enough.
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.words()[0]);
    }
}

impl PartialEq for TokenHash {
    fn eq(&self, other: &TokenHash) -> bool {
        self.ct_eq(other)
    }
}

impl Eq for TokenHash {}

impl TokenHash {
    /// Hashes a token.
    pub fn of(token: &str) -> TokenHash {
        TokenHash(Sha256::digest(token.as_bytes()).into())
    }

    /// Constant-time equality, for comparing against a stored hash: the
    /// four 64-bit words' differences are gathered with no early exit, and
    /// only the gathered word is tested (by `subtle`, without a branch).
    pub fn ct_eq(&self, other: &TokenHash) -> bool {
        let differing = self.words().iter().zip(other.words()).fold(0u64, |acc, (a, b)| acc | (a ^ b));
        differing.ct_eq(&0).into()
    }

    /// The digest as four 64-bit words.
    fn words(&self) -> [u64; 4] {
        std::array::from_fn(|i| {
            let mut word = [0u8; 8];
            word.copy_from_slice(&self.0[i * 8..i * 8 + 8]);
            u64::from_ne_bytes(word)
        })
    }

    /// Lowercase hex, for stores that key by string.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Reads 64 hex digits (an export's `tokenSha256`).
    pub fn from_hex(text: &str) -> Option<TokenHash> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(text, &mut out).ok()?;
        Some(TokenHash(out))
    }
}

impl std::fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenHash({}..)", &self.to_hex()[..8])
    }
}

/// What a quick look at a token, before any lookup, concludes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// Our own format with a valid checksum.
    Generated,
    /// Our format but the checksum is wrong: a typo or a forgery.
    BadChecksum,
    /// Some other format (perhaps imported): only the store can tell.
    Foreign,
    /// Empty, too long or with characters no token has.
    Malformed,
}

impl Shape {
    /// Whether the store may know a token of this shape (ours with a good
    /// checksum, or another format); the others are refused unasked.
    pub fn may_be_known(self) -> bool {
        matches!(self, Shape::Generated | Shape::Foreign)
    }
}

fn random_chars(n: usize) -> String {
    let mut rng = rand::rngs::OsRng;
    (0..n).map(|_| BASE62[rng.gen_range(0..62)] as char).collect()
}

/// The base62 checksum characters of a token's random body (no allocation:
/// every presented token of ours is checked).
fn checksum(body: &str) -> [u8; CHECKSUM_LEN] {
    let mut n = crc32fast::hash(body.as_bytes()) as u64;
    let mut out = [b'0'; CHECKSUM_LEN];
    for slot in out.iter_mut().rev() {
        *slot = BASE62[(n % 62) as usize];
        n /= 62;
    }
    out
}

/// A new secret token for `brand` and `env`.
pub fn generate(brand: &str, env: Env) -> String {
    let body = random_chars(RANDOM_LEN - CHECKSUM_LEN);
    let sum: String = checksum(&body).iter().map(|b| *b as char).collect();
    format!("{brand}_{}_{body}{sum}", env.as_str())
}

/// A new admin API token: `kgadm_` plus 40 base62 characters (238 bits).
pub fn new_admin_token() -> String {
    format!("kgadm_{}", random_chars(RANDOM_LEN))
}

/// A new public key id, `key_` plus 16 base62 characters.
pub fn new_key_id() -> String {
    format!("key_{}", random_chars(16))
}

/// Classifies a presented token without touching the store.
///
/// ```
/// use keygate::keys::{model::Env, token};
/// let t = token::generate("kg", Env::Live);
/// assert_eq!(token::shape(&t, "kg"), token::Shape::Generated);
/// assert_eq!(token::shape("abc123.legacy-format-token", "kg"), token::Shape::Foreign);
/// ```
pub fn shape(token: &str, brand: &str) -> Shape {
    if token.is_empty() || token.len() > MAX_TOKEN_LEN {
        return Shape::Malformed;
    }
    // A token of our layout is letters, digits and `_` throughout (a brand
    // is letters and digits): only another layout needs the full check.
    let Some(random) = generated_random_part(token, brand).filter(|_| brand.bytes().all(|b| b.is_ascii_alphanumeric())) else {
        return if token.bytes().all(|b| b.is_ascii_graphic()) { Shape::Foreign } else { Shape::Malformed };
    };
    let (body, sum) = random.split_at(RANDOM_LEN - CHECKSUM_LEN);
    if checksum(body)[..].ct_eq(sum.as_bytes()).into() {
        Shape::Generated
    } else {
        Shape::BadChecksum
    }
}

/// The 40-character random part when `token` has our layout.
fn generated_random_part<'t>(token: &'t str, brand: &str) -> Option<&'t str> {
    let rest = token.strip_prefix(brand)?.strip_prefix('_')?;
    let random = rest.strip_prefix("live_").or_else(|| rest.strip_prefix("test_"))?;
    (random.len() == RANDOM_LEN && random.bytes().all(|b| b.is_ascii_alphanumeric())).then_some(random)
}

/// The masked form shown in listings: `{brand}_{env}_` plus four characters
/// and `****` for our tokens; for `{PREFIX}.{SECRET}` tokens the public
/// prefix; a short head of anything else.
pub fn mask(token: &str, brand: &str) -> String {
    if let Some(random) = generated_random_part(token, brand) {
        let head = &token[..token.len() - random.len()];
        return format!("{head}{}****", &random[..4]);
    }
    let shown = match token.find('.') {
        Some(dot) if dot > 0 && dot <= 16 && token.len() - dot > MIN_IMPORT_LEN => dot + 1,
        _ => (token.len() / 4).min(8),
    };
    format!("{}****", token.get(..shown).unwrap_or(""))
}

/// Checks a token given to `keys import`. One in keygate's own layout must
/// carry a valid checksum: the gateway refuses a bad one before any lookup,
/// so such a key could never be used (refused here rather than exempting
/// imported keys from that check, which is what keeps typos and forgeries
/// off the store).
pub fn validate_import(token: &str, brand: &str) -> Result<(), String> {
    if shape(token, brand) == Shape::BadChecksum {
        return Err(format!(
            "this token has keygate's `{brand}_<env>_` layout but a wrong checksum, so the gateway would refuse it \
             before looking it up; a token of that layout must be one keygate generated"
        ));
    }
    if token.len() < MIN_IMPORT_LEN {
        return Err(format!("an imported token must be at least {MIN_IMPORT_LEN} characters"));
    }
    if token.len() > MAX_TOKEN_LEN || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!("an imported token must be at most {MAX_TOKEN_LEN} printable ASCII characters without spaces"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_verify() {
        for _ in 0..100 {
            let t = generate("kg", Env::Live);
            assert!(t.starts_with("kg_live_"));
            assert_eq!(t.len(), "kg_live_".len() + RANDOM_LEN);
            assert_eq!(shape(&t, "kg"), Shape::Generated);
        }
        assert!(generate("acme", Env::Test).starts_with("acme_test_"));
    }

    #[test]
    fn typo_breaks_checksum() {
        let t = generate("kg", Env::Live);
        let mut chars: Vec<char> = t.chars().collect();
        let i = 12;
        chars[i] = if chars[i] == 'a' { 'b' } else { 'a' };
        let typo: String = chars.into_iter().collect();
        assert_eq!(shape(&typo, "kg"), Shape::BadChecksum);
    }

    #[test]
    fn other_shapes() {
        assert_eq!(shape("abc123.1a2b3c4d5e6f7a8b", "kg"), Shape::Foreign);
        assert_eq!(shape("", "kg"), Shape::Malformed);
        assert_eq!(shape("has space", "kg"), Shape::Malformed);
        assert_eq!(shape(&"x".repeat(MAX_TOKEN_LEN + 1), "kg"), Shape::Malformed);
        // Our brand but another brand's token is foreign, not a bad checksum.
        assert_eq!(shape(&generate("kg", Env::Live), "acme"), Shape::Foreign);
    }

    #[test]
    fn masks() {
        let t = generate("kg", Env::Live);
        let m = mask(&t, "kg");
        assert_eq!(m, format!("{}****", &t[..12]));
        assert!(!m.contains(&t[12..]));
        assert_eq!(mask("abc123.1a2b3c4d5e6f7a8b9c", "kg"), "abc123.****");
        assert_eq!(mask("0123456789abcdefghij", "kg"), "01234****");
    }

    #[test]
    fn hashes_compare() {
        let a = TokenHash::of("one");
        assert!(a.ct_eq(&TokenHash::of("one")));
        assert!(!a.ct_eq(&TokenHash::of("two")));
        for byte in 0..32 {
            let mut b = a;
            b.0[byte] ^= 1;
            assert!(!a.ct_eq(&b) && a != b, "a difference in byte {byte} went unseen");
        }
        assert_eq!(a.to_hex().len(), 64);
    }

    #[test]
    fn import_rules() {
        assert!(validate_import("abc123.1a2b3c4d5e6f", "kg").is_ok());
        assert!(validate_import("short", "kg").is_err());
        assert!(validate_import("with a space in it!!", "kg").is_err());
        let good = generate("kg", Env::Live);
        assert!(validate_import(&good, "kg").is_ok());
        let mut bad = good.clone();
        bad.replace_range(good.len() - 1.., if good.ends_with('A') { "B" } else { "A" });
        assert!(validate_import(&bad, "kg").unwrap_err().contains("checksum"));
        // Another brand's layout is foreign here: only the store can tell.
        assert!(validate_import(&bad, "acme").is_ok());
    }
}
