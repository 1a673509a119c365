//! API key tokens: `mk_<key_id>_<secret>`, scopes, and the stored hash.
//!
//! `key_id` is 8 random bytes as 16 lowercase hex characters: it is public
//! (listed, logged, used to revoke) and is how a token finds its record.
//! `secret` is 32 random bytes (256 bits) as 64 lowercase hex characters.
//! Only `blake3::derive_key`-style hash of `key_id || secret` is stored. A
//! fast hash is enough here, unlike for passwords: the secret is uniformly
//! random, so there is nothing for a dictionary attack to guess.

use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, Zeroizing};

use super::{AuthError, hex_decode, hex_encode};
use crate::error::Result;

/// Bytes in an API key id.
pub const API_KEY_ID_BYTES: usize = 8;
/// Bytes of random secret in an API token (256 bits).
pub const API_SECRET_BYTES: usize = 32;
/// The token prefix.
const TOKEN_PREFIX: &str = "mk_";
/// The exact length of a well-formed token, in bytes.
pub const TOKEN_BYTES: usize = TOKEN_PREFIX.len() + 2 * API_KEY_ID_BYTES + 1 + 2 * API_SECRET_BYTES;
/// Domain separation for the stored secret hash.
const SECRET_HASH_CONTEXT: &str = "mergekv 2026-11 api key secret hash v1";

/// One permission an API key can carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Read data.
    Read,
    /// Write data.
    Write,
    /// Follow the leader's WAL (replication).
    Replicate,
    /// Everything, including user and key management.
    Admin,
}

impl Scope {
    /// Every scope, in display order.
    pub const ALL: [Scope; 4] = [Scope::Read, Scope::Write, Scope::Replicate, Scope::Admin];

    /// The scope's name as written in tokens' listings and on the CLI.
    pub fn name(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::Replicate => "replicate",
            Scope::Admin => "admin",
        }
    }

    fn bit(self) -> u8 {
        match self {
            Scope::Read => 1,
            Scope::Write => 2,
            Scope::Replicate => 4,
            Scope::Admin => 8,
        }
    }
}

impl std::str::FromStr for Scope {
    type Err = crate::Error;

    fn from_str(s: &str) -> Result<Scope> {
        Scope::ALL
            .into_iter()
            .find(|scope| scope.name() == s)
            .ok_or_else(|| {
                AuthError::InvalidName {
                    what: "scope",
                    reason: "expected read, write, replicate or admin",
                }
                .into()
            })
    }
}

/// A set of scopes. `admin` grants every other scope too.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Scopes(u8);

impl Scopes {
    /// No scope at all.
    pub const NONE: Scopes = Scopes(0);

    /// The set holding exactly `scopes`.
    pub fn of(scopes: &[Scope]) -> Scopes {
        Scopes(scopes.iter().fold(0, |bits, s| bits | s.bit()))
    }

    /// True if this set grants `scope` (directly or through `admin`).
    pub fn grants(self, scope: Scope) -> bool {
        self.0 & (scope.bit() | Scope::Admin.bit()) != 0
    }

    /// The scopes in the set, in display order.
    pub fn iter(self) -> impl Iterator<Item = Scope> {
        Scope::ALL
            .into_iter()
            .filter(move |s| self.0 & s.bit() != 0)
    }

    /// True if the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The bits as stored (1 read, 2 write, 4 replicate, 8 admin).
    pub(crate) fn bits(self) -> u8 {
        self.0
    }

    /// The set with these stored bits (unknown ones are kept, and grant
    /// nothing: see [`Scopes::known`]).
    pub(crate) fn from_bits(bits: u8) -> Scopes {
        Scopes(bits)
    }

    /// Only the bits of known scopes (a record from a newer version may set
    /// others; they grant nothing here).
    pub(crate) fn known(self) -> Scopes {
        Scopes(self.0 & Scope::ALL.iter().fold(0, |bits, s| bits | s.bit()))
    }
}

impl std::fmt::Display for Scopes {
    /// Comma-separated names, `-` for the empty set.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_empty() {
            return f.write_str("-");
        }
        let names: Vec<&str> = self.iter().map(Scope::name).collect();
        f.write_str(&names.join(","))
    }
}

/// A token as handed to the key's owner, shown once. The text is zeroized on
/// drop and `Debug` prints only the key id.
pub struct ApiToken {
    text: Zeroizing<String>,
}

impl ApiToken {
    /// The token text, `mk_<key_id>_<secret>`. Hand it over and drop it.
    pub fn expose(&self) -> &str {
        &self.text
    }

    /// The public key id inside the token.
    pub fn key_id(&self) -> &str {
        &self.text[TOKEN_PREFIX.len()..TOKEN_PREFIX.len() + 2 * API_KEY_ID_BYTES]
    }
}

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiToken(mk_{}_<redacted>)", self.key_id())
    }
}

/// A token split into its parts; the secret is zeroized on drop.
pub(crate) struct ParsedToken {
    pub(crate) key_id: [u8; API_KEY_ID_BYTES],
    pub(crate) secret: Zeroizing<[u8; API_SECRET_BYTES]>,
}

/// Builds the token text for a key id and secret.
pub(crate) fn format_token(
    key_id: &[u8; API_KEY_ID_BYTES],
    secret: &[u8; API_SECRET_BYTES],
) -> ApiToken {
    let mut text = Zeroizing::new(String::with_capacity(TOKEN_BYTES));
    text.push_str(TOKEN_PREFIX);
    text.push_str(&hex_encode(key_id));
    text.push('_');
    let mut secret_hex = hex_encode(secret);
    text.push_str(&secret_hex);
    secret_hex.zeroize();
    ApiToken { text }
}

/// Parses a token, checking its length first so that a huge input costs
/// nothing. Only lowercase hex is accepted, so each key has one spelling.
pub(crate) fn parse_token(token: &str) -> Result<ParsedToken> {
    let malformed = |reason| AuthError::MalformedToken { reason };
    if token.is_empty() {
        return Err(malformed("empty").into());
    }
    if token.len() != TOKEN_BYTES {
        return Err(malformed("wrong length").into());
    }
    if !token.is_ascii() {
        return Err(malformed("not ASCII").into());
    }
    let rest = token
        .strip_prefix(TOKEN_PREFIX)
        .ok_or(malformed("does not start with mk_"))?;
    let (key_id_hex, secret_part) = rest.split_at(2 * API_KEY_ID_BYTES);
    let secret_hex = secret_part
        .strip_prefix('_')
        .ok_or(malformed("no separator after the key id"))?;
    let key_id = parse_key_id(key_id_hex).map_err(|_| malformed("key id is not lowercase hex"))?;
    let mut secret = Zeroizing::new([0u8; API_SECRET_BYTES]);
    if !hex_decode(secret_hex, &mut secret[..]) {
        return Err(malformed("secret is not lowercase hex").into());
    }
    Ok(ParsedToken { key_id, secret })
}

/// Parses a key id as printed (16 lowercase hex characters).
pub(crate) fn parse_key_id(text: &str) -> Result<[u8; API_KEY_ID_BYTES]> {
    let mut key_id = [0u8; API_KEY_ID_BYTES];
    if text.len() != 2 * API_KEY_ID_BYTES || !hex_decode(text, &mut key_id) {
        return Err(AuthError::InvalidName {
            what: "key id",
            reason: "expected 16 lowercase hex characters",
        }
        .into());
    }
    Ok(key_id)
}

/// The hash stored in place of the secret.
pub(crate) fn secret_hash(
    key_id: &[u8; API_KEY_ID_BYTES],
    secret: &[u8; API_SECRET_BYTES],
) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new_derive_key(SECRET_HASH_CONTEXT);
    hasher.update(key_id);
    hasher.update(secret);
    *hasher.finalize().as_bytes()
}

/// Compares two hashes in time independent of where they differ.
pub(crate) fn hashes_equal(a: &[u8; 32], b: &[u8; 32]) -> bool {
    bool::from(a.ct_eq(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_formatted_token_parses_back() {
        let token = format_token(&[0xab; 8], &[7; 32]);
        assert_eq!(token.expose().len(), TOKEN_BYTES);
        assert_eq!(token.key_id(), "abababababababab");
        let parsed = parse_token(token.expose()).unwrap();
        assert_eq!(parsed.key_id, [0xab; 8]);
        assert_eq!(*parsed.secret, [7; 32]);
        assert!(!format!("{token:?}").contains("0707"));
    }

    #[test]
    fn malformed_tokens_are_refused_with_a_reason() {
        let good = format_token(&[1; 8], &[2; 32]).expose().to_string();
        let cases = [
            String::new(),
            "mk".into(),
            "x".repeat(10 * 1024 * 1024),
            good.replace("mk_", "mx_"),
            good.to_uppercase(),
            format!("{}-{}", &good[..19], &good[20..]),
            format!("{}é", &good[..TOKEN_BYTES - 2]),
        ];
        for case in cases {
            let err = parse_token(&case).err().map(|e| e.to_string());
            assert!(
                err.is_some_and(|e| e.contains("malformed")),
                "{:?}",
                &case[..case.len().min(30)]
            );
        }
    }

    #[test]
    fn admin_grants_every_scope_and_others_only_themselves() {
        let admin = Scopes::of(&[Scope::Admin]);
        assert!(Scope::ALL.iter().all(|s| admin.grants(*s)));
        let read = Scopes::of(&[Scope::Read]);
        assert!(read.grants(Scope::Read));
        assert!(!read.grants(Scope::Replicate));
        assert_eq!(
            Scopes::of(&[Scope::Write, Scope::Read]).to_string(),
            "read,write"
        );
        assert_eq!("replicate".parse::<Scope>().unwrap(), Scope::Replicate);
        assert!("root".parse::<Scope>().is_err());
    }
}
