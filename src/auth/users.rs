//! Users and passwords.

use super::password::phc_params;
use super::records::{self, Rehash, UserDeleted, UserRecord};
use super::{AuthError, AuthService, PasswordParams, hex_encode, random_bytes, validate_user_name};
use crate::error::Result;
use crate::{Batch, ScanOptions};

/// What the service tells about a user (never the password hash).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserInfo {
    /// The name.
    pub name: String,
    /// This incarnation's id (hex); a re-created name gets a new one.
    pub user_id: String,
    /// When the user was created, in ms since the Unix epoch.
    pub created_ms: u64,
    /// When the password was last set, in ms since the Unix epoch.
    pub password_changed_ms: u64,
    /// The argon2 costs of the stored hash (after any upgrade).
    pub password_params: Option<PasswordParams>,
}

impl UserInfo {
    fn new(name: &str, record: &UserRecord, phc: &str) -> UserInfo {
        UserInfo {
            name: name.to_string(),
            user_id: hex_encode(&record.user_id),
            created_ms: record.created_ms,
            password_changed_ms: record.password_changed_ms,
            password_params: phc_params(phc),
        }
    }
}

impl AuthService {
    /// Creates a user. Fails with [`AuthError::UserExists`] if the name has
    /// a live user, and [`AuthError::PasswordRejected`] if the password is
    /// outside the length bounds.
    ///
    /// # Errors
    ///
    /// [`AuthError::InvalidName`] for an invalid name;
    /// [`AuthError::PasswordRejected`] and [`AuthError::UserExists`] as above;
    /// [`AuthError::RandomnessUnavailable`] if the random source fails;
    /// [`Error::Io`](crate::Error::Io) or [`Error::Poisoned`](crate::Error::Poisoned) (and the other errors of
    /// [`Db::write`](crate::Db::write)) if the write to the database fails.
    pub fn create_user(&self, name: &str, password: impl AsRef<[u8]>) -> Result<UserInfo> {
        validate_user_name(name)?;
        self.check_new_password(password.as_ref())?;
        // Hash before taking the lock: it is the slow part.
        let phc = self.hasher.hash(password.as_ref())?;
        let _guard = self.write_lock.lock();
        if self.live_user(name)?.is_some() {
            return Err(AuthError::UserExists { name: name.into() }.into());
        }
        let now_ms = self.now_ms();
        let record = UserRecord {
            user_id: random_bytes()?,
            phc,
            password_id: random_bytes()?,
            created_ms: now_ms,
            password_changed_ms: now_ms,
        };
        self.write_user(name, &record)?;
        Ok(UserInfo::new(name, &record, &record.phc))
    }

    /// Checks a password. A wrong password, an unknown user and an invalid
    /// name all return [`AuthError::Denied`] after the same amount of work:
    /// one argon2id verification (against a dummy hash when there is no
    /// user). A success with a hash weaker than the configured costs stores
    /// a stronger one.
    ///
    /// # Errors
    ///
    /// [`AuthError::Denied`] as above; an I/O or corruption error if the
    /// database cannot be read; when a weak hash is upgraded, [`Error::Io`](crate::Error::Io) or
    /// [`Error::Poisoned`](crate::Error::Poisoned) (and the other errors of
    /// [`Db::write`](crate::Db::write)) if the write to the database fails.
    pub fn verify_password(&self, name: &str, password: impl AsRef<[u8]>) -> Result<UserInfo> {
        let password = password.as_ref();
        if password.len() > self.options.password_bytes_max {
            // Refused on length alone, whether or not the user exists.
            return Err(AuthError::Denied.into());
        }
        let user = match validate_user_name(name) {
            Ok(()) => self.live_user(name)?,
            Err(_) => None,
        };
        let phc = match &user {
            Some(record) => self.effective_phc(name, record)?,
            None => self.dummy_phc.clone(),
        };
        let matches = self.hasher.verify(password, &phc)?;
        let weak = user.is_some() && self.hasher.needs_upgrade(&phc);
        if weak && !matches {
            // A weaker stored hash verifies faster than the dummy an unknown
            // user is checked against: do that verification too, so the
            // failure costs at least what an unknown user costs. (Padding
            // with a sleep instead was measured to overshoot by several ms
            // on a busy machine, where a sleeper wakes late.)
            self.hasher.verify(password, &self.dummy_phc)?;
        }
        let Some(record) = user.filter(|_| matches) else {
            return Err(AuthError::Denied.into());
        };
        if !weak {
            return Ok(UserInfo::new(name, &record, &phc));
        }
        let upgraded = self.hasher.hash(password)?;
        let rehash = Rehash {
            password_id: record.password_id,
            phc: upgraded.clone(),
        };
        self.store
            .put(records::rehash_key(name), records::encode(&rehash))?;
        Ok(UserInfo::new(name, &record, &upgraded))
    }

    /// Changes a password, given the current one (checked as
    /// [`AuthService::verify_password`] does).
    ///
    /// # Errors
    ///
    /// [`AuthError::PasswordRejected`] if `new` is outside the length bounds;
    /// [`AuthError::Denied`] if `current` does not verify; [`Error::Io`](crate::Error::Io) or
    /// [`Error::Poisoned`](crate::Error::Poisoned) (and the other errors of
    /// [`Db::write`](crate::Db::write)) if the write to the database fails.
    pub fn change_password(
        &self,
        name: &str,
        current: impl AsRef<[u8]>,
        new: impl AsRef<[u8]>,
    ) -> Result<()> {
        self.check_new_password(new.as_ref())?;
        let verified = self.verify_password(name, current)?;
        self.set_password(name, &verified.user_id, new.as_ref())
    }

    /// Sets a password without the current one (an administrator's reset).
    ///
    /// # Errors
    ///
    /// [`AuthError::InvalidName`] for an invalid name;
    /// [`AuthError::PasswordRejected`] if `new` is outside the length bounds;
    /// [`AuthError::UnknownUser`] if `name` has no live user; [`Error::Io`](crate::Error::Io) or
    /// [`Error::Poisoned`](crate::Error::Poisoned) (and the other errors of
    /// [`Db::write`](crate::Db::write)) if the write to the database fails.
    pub fn reset_password(&self, name: &str, new: impl AsRef<[u8]>) -> Result<()> {
        validate_user_name(name)?;
        self.check_new_password(new.as_ref())?;
        let record = self.require_user(name)?;
        self.set_password(name, &hex_encode(&record.user_id), new.as_ref())
    }

    /// Deletes a user, their secrets, and (implicitly) their API keys, which
    /// then fail with [`AuthError::ApiKeyRevoked`]. The deletion is a
    /// permanent marker on this incarnation, so a concurrent password
    /// change on another copy cannot bring the user back.
    ///
    /// # Errors
    ///
    /// [`AuthError::InvalidName`] for an invalid name;
    /// [`AuthError::UnknownUser`] if `name` has no live user; [`Error::Io`](crate::Error::Io) or
    /// [`Error::Poisoned`](crate::Error::Poisoned) (and the other errors of
    /// [`Db::write`](crate::Db::write)) if the write to the database fails.
    pub fn delete_user(&self, name: &str) -> Result<()> {
        validate_user_name(name)?;
        let _guard = self.write_lock.lock();
        let record = self.require_user(name)?;
        let marker = UserDeleted {
            name: name.into(),
            deleted_ms: self.now_ms(),
        };
        let mut batch = Batch::new();
        batch.put_in(
            super::AUTH_KEYSPACE,
            records::user_deleted_key(&record.user_id),
            records::encode(&marker),
        );
        batch.delete_in(
            super::AUTH_KEYSPACE,
            records::user_key(name, &record.user_id),
        );
        if self.store.get(records::rehash_key(name))?.is_some() {
            batch.delete_in(super::AUTH_KEYSPACE, records::rehash_key(name));
        }
        self.db.write(batch)?;
        // The secrets no longer decrypt for anyone (their associated data
        // names the deleted incarnation); removing them is housekeeping, in
        // batches, after the deletion itself is durable.
        self.delete_all_secrets_of(&record.user_id)
    }

    /// The user named `name`, if there is a live one.
    ///
    /// # Errors
    ///
    /// [`AuthError::InvalidName`] for an invalid name; an I/O or corruption
    /// error if the database cannot be read.
    pub fn get_user(&self, name: &str) -> Result<Option<UserInfo>> {
        validate_user_name(name)?;
        let Some(record) = self.live_user(name)? else {
            return Ok(None);
        };
        let phc = self.effective_phc(name, &record)?;
        Ok(Some(UserInfo::new(name, &record, &phc)))
    }

    /// Every live user, by name. A record that does not decode is skipped
    /// (it cannot be a live user), so one damaged record does not hide the
    /// rest.
    ///
    /// # Errors
    ///
    /// an I/O or corruption error if the database cannot be read.
    pub fn list_users(&self) -> Result<Vec<UserInfo>> {
        let mut names: Vec<String> = Vec::new();
        for entry in self.store.scan(&ScanOptions::prefix(records::USER_PREFIX)) {
            names.extend(records::user_name_of(entry?.key()).map(str::to_string));
        }
        names.dedup();
        let mut users = Vec::new();
        for name in names {
            if validate_user_name(&name).is_err() {
                continue;
            }
            if let Ok(Some(info)) = self.get_user(&name) {
                users.push(info);
            }
        }
        Ok(users)
    }

    /// The live user `name`: of its incarnations not marked deleted, the
    /// one created last (then the greater id), the same on every copy.
    /// Records that do not decode are skipped.
    pub(crate) fn live_user(&self, name: &str) -> Result<Option<UserRecord>> {
        let mut live: Option<UserRecord> = None;
        for entry in self
            .store
            .scan(&ScanOptions::prefix(records::user_prefix(name)))
        {
            let entry = entry?;
            let Some(Ok(record)) = entry.value().as_bytes().map(records::decode::<UserRecord>)
            else {
                continue;
            };
            if self
                .store
                .get(records::user_deleted_key(&record.user_id))?
                .is_some()
            {
                continue;
            }
            let newer = live.as_ref().is_none_or(|best| {
                (record.created_ms, record.user_id) > (best.created_ms, best.user_id)
            });
            if newer {
                live = Some(record);
            }
        }
        Ok(live)
    }

    /// Like [`AuthService::live_user`], but absence is an error.
    pub(crate) fn require_user(&self, name: &str) -> Result<UserRecord> {
        self.live_user(name)?
            .ok_or_else(|| AuthError::UnknownUser { name: name.into() }.into())
    }

    /// The hash to verify against: a rehash of the current password if one
    /// was stored, else the user record's own.
    fn effective_phc(&self, name: &str, record: &UserRecord) -> Result<String> {
        match records::read(&self.store, &records::rehash_key(name))? {
            Some(Rehash { password_id, phc }) if password_id == record.password_id => Ok(phc),
            _ => Ok(record.phc.clone()),
        }
    }

    fn check_new_password(&self, password: &[u8]) -> Result<()> {
        let (min, max) = (
            self.options.password_bytes_min,
            self.options.password_bytes_max,
        );
        if password.len() < min || password.len() > max {
            return Err(AuthError::PasswordRejected {
                reason: format!("must be {min} to {max} bytes, got {}", password.len()),
            }
            .into());
        }
        Ok(())
    }

    /// Stores a new hash for the user whose incarnation is `user_id_hex`.
    fn set_password(&self, name: &str, user_id_hex: &str, password: &[u8]) -> Result<()> {
        let phc = self.hasher.hash(password)?;
        let _guard = self.write_lock.lock();
        // Re-read under the lock: the user may have been deleted (or
        // deleted and re-created) while we hashed.
        let mut record = self
            .live_user(name)?
            .filter(|r| hex_encode(&r.user_id) == user_id_hex)
            .ok_or_else(|| AuthError::UnknownUser { name: name.into() })?;
        record.phc = phc;
        record.password_id = random_bytes()?;
        record.password_changed_ms = self.now_ms();
        self.write_user(name, &record)
    }

    fn write_user(&self, name: &str, record: &UserRecord) -> Result<()> {
        self.store.put(
            records::user_key(name, &record.user_id),
            records::encode(record),
        )?;
        Ok(())
    }
}
