//! API keys: create, authenticate, revoke, list.

use std::time::Duration;

use super::apikey::{self, ApiToken, ParsedToken, Scope, Scopes};
use super::records::{self, ApiKeyRecord, Revocation};
use super::{AuthError, AuthService, hex_encode, random_bytes};
use crate::ScanOptions;
use crate::error::Result;

/// Attempts at drawing an unused key id before giving up (with 64-bit
/// random ids a second attempt is already a one-in-2^64 event).
const KEY_ID_ATTEMPTS_MAX: usize = 4;

/// What the service tells about an API key (never its secret).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiKeyInfo {
    /// The public key id (16 hex characters), as in the token.
    pub key_id: String,
    /// The user the key acts for.
    pub user: String,
    /// What the key may do.
    pub scopes: Scopes,
    /// When it was created, in ms since the Unix epoch.
    pub created_ms: u64,
    /// When it expires, in ms since the Unix epoch; `None` for never.
    pub expires_ms: Option<u64>,
    /// True once revoked.
    pub revoked: bool,
}

impl ApiKeyInfo {
    fn new(key_id: &str, record: &ApiKeyRecord, revoked: bool) -> ApiKeyInfo {
        ApiKeyInfo {
            key_id: key_id.to_string(),
            user: record.user.clone(),
            scopes: record.scopes.known(),
            created_ms: record.created_ms,
            expires_ms: record.expires_ms,
            revoked,
        }
    }
}

impl AuthService {
    /// Creates an API key for `user` with `scopes`, expiring `expiry` from
    /// now (never if `None`). Returns the key's record and its token; the
    /// token is not stored anywhere and cannot be shown again.
    ///
    /// # Errors
    ///
    /// [`AuthError::InvalidName`] for an invalid user name or empty `scopes`;
    /// [`AuthError::UnknownUser`] if `user` has no live user;
    /// [`AuthError::RandomnessUnavailable`] if the random source fails;
    /// [`Error::Io`](crate::Error::Io) or [`Error::Poisoned`](crate::Error::Poisoned) (and the other errors of
    /// [`Db::write`](crate::Db::write)) if the write to the database fails.
    pub fn create_api_key(
        &self,
        user: &str,
        scopes: Scopes,
        expiry: Option<Duration>,
    ) -> Result<(ApiKeyInfo, ApiToken)> {
        super::validate_user_name(user)?;
        if scopes.is_empty() {
            return Err(AuthError::InvalidName {
                what: "scopes",
                reason: "an API key needs at least one scope",
            }
            .into());
        }
        let _guard = self.write_lock.lock();
        let owner = self.require_user(user)?;
        let key_id = self.unused_key_id()?;
        let secret = zeroize::Zeroizing::new(random_bytes::<{ apikey::API_SECRET_BYTES }>()?);
        let now_ms = self.now_ms();
        let expires_ms = expiry.map(|ttl| {
            let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
            now_ms.saturating_add(ttl_ms)
        });
        let record = ApiKeyRecord {
            user: user.to_string(),
            user_id: owner.user_id,
            scopes,
            created_ms: now_ms,
            expires_ms,
            secret_hash: apikey::secret_hash(&key_id, &secret),
        };
        let key_id_hex = hex_encode(&key_id);
        self.store
            .put(records::apikey_key(&key_id_hex), records::encode(&record))?;
        let token = apikey::format_token(&key_id, &secret);
        Ok((ApiKeyInfo::new(&key_id_hex, &record, false), token))
    }

    /// Checks a token. An unknown key id and a wrong secret both return
    /// [`AuthError::ApiKeyInvalid`] after the same work (one hash and one
    /// constant-time comparison). Only a caller holding the right secret
    /// learns that the key is revoked ([`AuthError::ApiKeyRevoked`], also
    /// when its user was deleted) or expired ([`AuthError::ApiKeyExpired`]).
    ///
    /// # Errors
    ///
    /// [`AuthError::MalformedToken`] if `token` is not in the token format;
    /// [`AuthError::ApiKeyInvalid`], [`AuthError::ApiKeyRevoked`] or
    /// [`AuthError::ApiKeyExpired`] as above; an I/O or corruption error if the
    /// database cannot be read.
    pub fn authenticate_api_key(&self, token: &str) -> Result<ApiKeyInfo> {
        let parsed = apikey::parse_token(token)?;
        let key_id_hex = hex_encode(&parsed.key_id);
        let record = self.read_api_key(&key_id_hex)?;
        self.check_secret(&parsed, record.as_ref())?;
        let Some(record) = record else {
            return Err(AuthError::ApiKeyInvalid.into());
        };
        let revoked = || AuthError::ApiKeyRevoked {
            key_id: key_id_hex.clone(),
        };
        if self.is_revoked(&key_id_hex)? {
            return Err(revoked().into());
        }
        let owner_is_live = self
            .live_user(&record.user)?
            .is_some_and(|owner| owner.user_id == record.user_id);
        if !owner_is_live {
            return Err(revoked().into());
        }
        if let Some(expires_ms) = record.expires_ms
            && self.now_ms() >= expires_ms
        {
            return Err(AuthError::ApiKeyExpired {
                key_id: key_id_hex,
                expired_at_ms: expires_ms,
            }
            .into());
        }
        Ok(ApiKeyInfo::new(&key_id_hex, &record, false))
    }

    /// Checks a token as [`AuthService::authenticate_api_key`] does, then
    /// that it grants `scope` ([`AuthError::ScopeMissing`] if not).
    ///
    /// # Errors
    ///
    /// [`AuthError::ScopeMissing`] if the key does not grant `scope`; otherwise
    /// as [`AuthService::authenticate_api_key`].
    pub fn authorize(&self, token: &str, scope: Scope) -> Result<ApiKeyInfo> {
        let info = self.authenticate_api_key(token)?;
        if !info.scopes.grants(scope) {
            return Err(AuthError::ScopeMissing {
                key_id: info.key_id,
                scope: scope.name(),
            }
            .into());
        }
        Ok(info)
    }

    /// Revokes the key `key_id` (16 hex characters). Revoking a revoked key
    /// succeeds and writes nothing; an unknown id is
    /// [`AuthError::UnknownApiKey`]. A revocation is permanent and wins
    /// over anything another copy does to the key.
    ///
    /// # Errors
    ///
    /// [`AuthError::MalformedToken`] if `key_id` is not 16 hex characters;
    /// [`AuthError::UnknownApiKey`] if no key has that id; [`Error::Io`](crate::Error::Io) or
    /// [`Error::Poisoned`](crate::Error::Poisoned) (and the other errors of
    /// [`Db::write`](crate::Db::write)) if the write to the database fails.
    pub fn revoke_api_key(&self, key_id: &str) -> Result<()> {
        apikey::parse_key_id(key_id)?;
        if self.read_api_key(key_id)?.is_none() {
            return Err(AuthError::UnknownApiKey {
                key_id: key_id.into(),
            }
            .into());
        }
        if self.is_revoked(key_id)? {
            return Ok(());
        }
        let revocation = Revocation {
            revoked_ms: self.now_ms(),
        };
        self.store
            .put(records::revoked_key(key_id), records::encode(&revocation))?;
        Ok(())
    }

    /// The API keys of the live user `user` (revoked and expired ones
    /// included, marked), oldest first.
    ///
    /// # Errors
    ///
    /// [`AuthError::InvalidName`] for an invalid user name;
    /// [`AuthError::UnknownUser`] if `user` has no live user; an I/O or
    /// corruption error if the database cannot be read.
    pub fn list_api_keys(&self, user: &str) -> Result<Vec<ApiKeyInfo>> {
        super::validate_user_name(user)?;
        let owner = self.require_user(user)?;
        let mut keys = Vec::new();
        for entry in self
            .store
            .scan(&ScanOptions::prefix(records::APIKEY_PREFIX))
        {
            let entry = entry?;
            let Some(key_id) = std::str::from_utf8(entry.key())
                .ok()
                .and_then(|k| k.strip_prefix(records::APIKEY_PREFIX))
            else {
                continue;
            };
            let Some(record) = self.read_api_key(key_id)? else {
                continue;
            };
            if record.user_id == owner.user_id {
                keys.push(ApiKeyInfo::new(key_id, &record, self.is_revoked(key_id)?));
            }
        }
        keys.sort_by(|a, b| (a.created_ms, &a.key_id).cmp(&(b.created_ms, &b.key_id)));
        Ok(keys)
    }

    fn read_api_key(&self, key_id_hex: &str) -> Result<Option<ApiKeyRecord>> {
        records::read(&self.store, &records::apikey_key(key_id_hex))
    }

    fn is_revoked(&self, key_id_hex: &str) -> Result<bool> {
        Ok(self.store.get(records::revoked_key(key_id_hex))?.is_some())
    }

    /// Compares the token's secret with the record's hash, or with a dummy
    /// hash when there is no record, so both paths do the same work.
    fn check_secret(&self, parsed: &ParsedToken, record: Option<&ApiKeyRecord>) -> Result<()> {
        let expected = record.map_or(&self.dummy_key_hash, |r| &r.secret_hash);
        let actual = apikey::secret_hash(&parsed.key_id, &parsed.secret);
        if apikey::hashes_equal(&actual, expected) && record.is_some() {
            Ok(())
        } else {
            Err(AuthError::ApiKeyInvalid.into())
        }
    }

    fn unused_key_id(&self) -> Result<[u8; apikey::API_KEY_ID_BYTES]> {
        for _ in 0..KEY_ID_ATTEMPTS_MAX {
            let key_id = random_bytes()?;
            if self.read_api_key(&hex_encode(&key_id))?.is_none() {
                return Ok(key_id);
            }
        }
        Err(AuthError::RandomnessUnavailable {
            reason: format!("{KEY_ID_ATTEMPTS_MAX} random key ids were all taken"),
        }
        .into())
    }
}
