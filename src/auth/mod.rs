//! The auth service: users with argon2id passwords, scoped API keys, and
//! secrets encrypted with AES-256-GCM under a master key.
//!
//! Everything lives in the reserved keyspace `_auth` of the database the
//! service wraps, so it is as durable as any data, travels in change sets,
//! and merges like any data. The record layout is in `docs/FORMAT.md` ("Auth records"); what
//! merging means for each record is in `docs/ARCHITECTURE.md`
//! (`src/auth/`).
//!
//! ```
//! use mergekv::auth::{AuthOptions, AuthService, MasterKey, PasswordParams, Scope, Scopes};
//! # fn main() -> mergekv::Result<()> {
//! # let dir = tempfile::tempdir().unwrap();
//! let db = mergekv::Db::open(dir.path())?;
//! let options = AuthOptions {
//!     // Tiny argon2 costs keep the example fast; the default is OWASP's.
//!     password_params: PasswordParams::INSECURE_FOR_TESTS,
//!     ..AuthOptions::default()
//! };
//! let auth = AuthService::open_with(&db, MasterKey::generate()?, options)?;
//! auth.create_user("alice", "correct horse battery")?;
//! assert!(auth.verify_password("alice", "correct horse battery").is_ok());
//! assert!(auth.verify_password("alice", "wrong").is_err());
//!
//! let (info, token) = auth.create_api_key("alice", Scopes::of(&[Scope::Read]), None)?;
//! let checked = auth.authenticate_api_key(token.expose())?;
//! assert_eq!(checked.key_id, info.key_id);
//!
//! auth.put_secret("alice", "db-password", b"s3cret")?;
//! assert_eq!(auth.get_secret("alice", "db-password")?.expose(), b"s3cret");
//! # Ok(()) }
//! ```

mod apikey;
mod crypto;

mod keys;
mod password;
// Private: nothing in it is API; the `_auth` layout it describes is in
// docs/FORMAT.md, "Auth records".
mod records;
mod secrets;
mod users;

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

pub use crate::error::AuthError;
pub use apikey::{API_KEY_ID_BYTES, API_SECRET_BYTES, ApiToken, Scope, Scopes, TOKEN_BYTES};
pub use crypto::{MASTER_KEY_BYTES, MasterKey, MasterKeyId, SecretBytes};
pub use keys::ApiKeyInfo;
pub use password::PasswordParams;
pub use secrets::RotationReport;
pub use users::UserInfo;

// For `crate::fuzzing`, which parses tokens as authentication does.
pub(crate) use apikey::{format_token, parse_key_id, parse_token};

use crate::clock::{SystemClock, WallClock};
use crate::error::{Error, Result};
use crate::{Db, Keyspace};
use password::PasswordHasher;

/// The reserved keyspace the service stores everything in.
pub const AUTH_KEYSPACE: &str = "_auth";
/// Longest user name, in bytes.
pub const USER_NAME_BYTES_MAX: usize = 64;
/// Longest secret name, in bytes.
pub const SECRET_NAME_BYTES_MAX: usize = 128;

/// How the service hashes, what it accepts, and its limits.
#[derive(Clone, Debug)]
pub struct AuthOptions {
    /// argon2id costs for new hashes. Stored hashes below these are
    /// upgraded at the next successful verify. Default: OWASP's.
    pub password_params: PasswordParams,
    /// Shortest password accepted when one is set.
    pub password_bytes_min: usize,
    /// Longest password accepted; longer ones are refused (and never
    /// verify), so a huge input cannot cost a hash.
    pub password_bytes_max: usize,
    /// Largest secret, in bytes.
    pub secret_bytes_max: usize,
    /// Encryptions one master key may make before the service refuses more
    /// and asks for a rotation. Default 2^32, the NIST bound for random
    /// 96-bit GCM nonces.
    pub encryptions_per_key_max: u64,
    /// Secrets deleted per atomic batch when their user is deleted.
    pub secret_deletes_per_batch: usize,
    /// Time source for creation times and API key expiry.
    pub wall_clock: Arc<dyn WallClock>,
}

impl Default for AuthOptions {
    fn default() -> Self {
        AuthOptions {
            password_params: PasswordParams::OWASP,
            password_bytes_min: 8,
            password_bytes_max: 1024,
            secret_bytes_max: 64 * 1024,
            encryptions_per_key_max: 1 << 32,
            secret_deletes_per_batch: 256,
            wall_clock: Arc::new(SystemClock),
        }
    }
}

impl AuthOptions {
    fn validate(&self) -> Result<()> {
        let bad = |reason: &str| {
            Err(Error::InvalidCommand {
                reason: format!("auth options: {reason}"),
            })
        };
        if self.password_bytes_min == 0 || self.password_bytes_min > self.password_bytes_max {
            return bad("need 1 <= password_bytes_min <= password_bytes_max");
        }
        if self.secret_deletes_per_batch == 0 || self.encryptions_per_key_max == 0 {
            return bad("secret_deletes_per_batch and encryptions_per_key_max must be positive");
        }
        Ok(())
    }
}

/// Users, API keys and encrypted secrets, stored in a [`Db`].
///
/// Cheap operations (token checks, secret reads) take microseconds;
/// password operations take one argon2id hash. All methods take `&self`
/// and the service can be shared between threads.
pub struct AuthService {
    db: Db,
    store: Keyspace,
    options: AuthOptions,
    hasher: PasswordHasher,
    /// A hash of a random password, verified against when the user does not
    /// exist, so that an unknown user costs what a wrong password costs.
    dummy_phc: String,
    /// Compared against when an API key id does not exist, for the same
    /// reason.
    dummy_key_hash: [u8; 32],
    keys: RwLock<KeyRing>,
    /// Serialises writes that read before they write (create a user,
    /// re-encrypt a secret), so two threads cannot interleave them.
    write_lock: Mutex<()>,
}

/// The master key new encryptions use, and every older key reachable from
/// it through the wrapped-key chain.
struct KeyRing {
    active: MasterKey,
    reachable: HashMap<MasterKeyId, MasterKey>,
}

impl std::fmt::Debug for AuthService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthService")
            .field("dir", &self.db.dir())
            .field("master_key", &self.keys.read().active.id())
            .finish_non_exhaustive()
    }
}

impl AuthService {
    /// Opens the service over `db` with the default options.
    ///
    /// # Errors
    ///
    /// As [`AuthService::open_with`].
    pub fn open(db: &Db, master_key: MasterKey) -> Result<AuthService> {
        AuthService::open_with(db, master_key, AuthOptions::default())
    }

    /// Opens the service over `db`.
    ///
    /// The first open registers `master_key` with the database. Later opens
    /// must give that key or, after a rotation, its successor; a rotation
    /// cut short by a crash is finished here, with either of its two keys.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidCommand`] if `options` are inconsistent (password
    /// bounds, zero limits); [`AuthError::InvalidMasterKey`] or
    /// [`AuthError::UnknownMasterKey`] if `master_key` is not this database's
    /// key (nor its successor); [`AuthError::RandomnessUnavailable`] if the
    /// random source fails; [`Error::Closed`] after [`Db::close`];
    /// [`Error::Io`] or [`Error::Poisoned`] (and the other errors of
    /// [`Db::write`](crate::Db::write)) if the write to the database fails (the
    /// first open, or finishing a rotation).
    pub fn open_with(db: &Db, master_key: MasterKey, options: AuthOptions) -> Result<AuthService> {
        options.validate()?;
        let hasher = PasswordHasher::new(options.password_params)?;
        let dummy_password: [u8; 32] = random_bytes()?;
        let dummy_phc = hasher.hash(&dummy_password)?;
        let dummy_key_hash: [u8; 32] = random_bytes()?;
        let store = db.reserved_keyspace(AUTH_KEYSPACE)?;
        let active = secrets::resolve_master_key(&store, master_key, &*options.wall_clock)?;
        let reachable = secrets::reachable_keys(&store, &active)?;
        let service = AuthService {
            db: db.clone(),
            store,
            options,
            hasher,
            dummy_phc,
            dummy_key_hash,
            keys: RwLock::new(KeyRing { active, reachable }),
            write_lock: Mutex::new(()),
        };
        service.finish_pending_rotation()?;
        Ok(service)
    }

    /// The id of the master key new secrets are encrypted under.
    pub fn master_key_id(&self) -> MasterKeyId {
        self.keys.read().active.id()
    }

    /// The database the service stores into.
    pub fn db(&self) -> &Db {
        &self.db
    }

    fn now_ms(&self) -> u64 {
        self.options.wall_clock.now_ms()
    }
}

/// `N` bytes from the operating system's generator.
pub(crate) fn random_bytes<const N: usize>() -> Result<[u8; N]> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(password::randomness_error)?;
    Ok(bytes)
}

/// Lowercase hex.
pub(crate) fn hex_encode(bytes: &[u8]) -> String {
    fn digit(nibble: u8) -> char {
        debug_assert!(nibble < 16);
        char::from(match nibble {
            0..=9 => b'0' + nibble,
            _ => b'a' + (nibble - 10),
        })
    }
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        text.push(digit(byte >> 4));
        text.push(digit(byte & 0xf));
    }
    text
}

/// Decodes lowercase hex into `out`; false if `text` is not exactly
/// `2 * out.len()` lowercase hex digits.
pub(crate) fn hex_decode(text: &str, out: &mut [u8]) -> bool {
    fn digit(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    }
    let text = text.as_bytes();
    if text.len() != out.len() * 2 {
        return false;
    }
    for (slot, &[high, low]) in out.iter_mut().zip(text.as_chunks::<2>().0) {
        match (digit(high), digit(low)) {
            (Some(high), Some(low)) => *slot = high << 4 | low,
            _ => return false,
        }
    }
    true
}

/// Checks a user name: 1 to 64 bytes of ASCII letters, digits and `.-_@`,
/// starting with a letter or digit. (No `/`, which separates key parts.)
pub(crate) fn validate_user_name(name: &str) -> Result<()> {
    let invalid = |reason| {
        Err(AuthError::InvalidName {
            what: "user name",
            reason,
        }
        .into())
    };
    if name.is_empty() || name.len() > USER_NAME_BYTES_MAX {
        return invalid("must be 1 to 64 bytes");
    }
    if !name
        .as_bytes()
        .first()
        .is_some_and(u8::is_ascii_alphanumeric)
    {
        return invalid("must start with a letter or digit");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b".-_@".contains(&b))
    {
        return invalid("may hold only ASCII letters, digits and . - _ @");
    }
    Ok(())
}

/// Checks a secret name: 1 to 128 bytes, no control characters.
pub(crate) fn validate_secret_name(name: &str) -> Result<()> {
    let invalid = |reason| {
        Err(AuthError::InvalidName {
            what: "secret name",
            reason,
        }
        .into())
    };
    if name.is_empty() || name.len() > SECRET_NAME_BYTES_MAX {
        return invalid("must be 1 to 128 bytes");
    }
    if name.chars().any(char::is_control) {
        return invalid("may not hold control characters");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_refuses_bad_digits() {
        let text = hex_encode(&[0x00, 0xab, 0xff]);
        assert_eq!(text, "00abff");
        let mut out = [0u8; 3];
        assert!(hex_decode(&text, &mut out));
        assert_eq!(out, [0x00, 0xab, 0xff]);
        assert!(!hex_decode("00ABff", &mut out));
        assert!(!hex_decode("00ab", &mut out));
        assert!(!hex_decode("00abgg", &mut out));
    }

    #[test]
    fn user_names_are_validated() {
        for good in ["alice", "a", "bob.smith-2_x@example.org", &"x".repeat(64)] {
            assert!(validate_user_name(good).is_ok(), "{good}");
        }
        for bad in ["", "_alice", "al/ice", "al ice", "ålice", &"x".repeat(65)] {
            assert!(validate_user_name(bad).is_err(), "{bad}");
        }
    }
}
