//! Why an auth operation failed.
//!
//! The variants a caller sees on a failed login are chosen so that they say
//! nothing an attacker could use: a wrong password and an unknown user are
//! the same [`AuthError::Denied`]; an unknown API key and a wrong API secret
//! are the same [`AuthError::ApiKeyInvalid`]. Revocation and expiry are only
//! reported to a caller who presented the right secret.

/// An auth failure, carried in [`crate::Error::Auth`]. Defined in every
/// build (like the variant that carries it); returned only by the auth
/// service, which needs the feature `auth`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthError {
    /// The user name or the password is wrong (deliberately not saying which).
    Denied,
    /// `create_user` for a name that already has a live user.
    UserExists {
        /// The name.
        name: String,
    },
    /// An administrative operation named a user that does not exist.
    UnknownUser {
        /// The name.
        name: String,
    },
    /// A user, secret or key name is not valid.
    InvalidName {
        /// What kind of name (`user name`, `secret name`, `key id`).
        what: &'static str,
        /// Why it was refused.
        reason: &'static str,
    },
    /// A new password breaks the password policy (length bounds).
    PasswordRejected {
        /// Why.
        reason: String,
    },
    /// A token is not of the form `mk_<key_id>_<secret>`.
    MalformedToken {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// No API key has this id, or the secret is wrong (not saying which).
    ApiKeyInvalid,
    /// The key was revoked, or its user was deleted.
    ApiKeyRevoked {
        /// The key's id.
        key_id: String,
    },
    /// The key's expiry has passed.
    ApiKeyExpired {
        /// The key's id.
        key_id: String,
        /// When it expired, in milliseconds since the Unix epoch.
        expired_at_ms: u64,
    },
    /// An administrative operation named an API key that does not exist.
    UnknownApiKey {
        /// The id given.
        key_id: String,
    },
    /// The key is valid but lacks the scope the operation needs.
    ScopeMissing {
        /// The key's id.
        key_id: String,
        /// The scope that was needed.
        scope: &'static str,
    },
    /// The user has no secret of this name.
    SecretNotFound {
        /// The user.
        user: String,
        /// The secret's name.
        name: String,
    },
    /// A secret's ciphertext failed authentication: it was altered, or moved
    /// from another user or name.
    DecryptFailed {
        /// The user.
        user: String,
        /// The secret's name.
        name: String,
    },
    /// Master key material is malformed (not 64 hex characters, say).
    InvalidMasterKey {
        /// Why.
        reason: String,
    },
    /// The master key given is not one this database knows, or data is
    /// encrypted under a key this service cannot reach.
    UnknownMasterKey {
        /// The key id (16 hex characters).
        key_id: String,
    },
    /// The master key given was rotated away from; use its successor.
    MasterKeyRetired {
        /// The retired key's id.
        key_id: String,
        /// The key that replaced it.
        successor: String,
    },
    /// `rotate_master_key` was given a key this database has used before.
    MasterKeyReused {
        /// The key's id.
        key_id: String,
    },
    /// The operating system's random number generator failed.
    RandomnessUnavailable {
        /// The generator's error.
        reason: String,
    },
    /// The master key has encrypted as many messages as its random-nonce
    /// budget allows; rotate it.
    NonceLimitReached {
        /// The key's id.
        key_id: String,
        /// The configured limit (`AuthOptions::encryptions_per_key_max`).
        limit: u64,
    },
}

impl AuthError {
    /// True for the refusals of a login or token check (the CLI's exit 4).
    pub fn is_denial(&self) -> bool {
        matches!(
            self,
            AuthError::Denied
                | AuthError::MalformedToken { .. }
                | AuthError::ApiKeyInvalid
                | AuthError::ApiKeyRevoked { .. }
                | AuthError::ApiKeyExpired { .. }
                | AuthError::ScopeMissing { .. }
        )
    }
}

impl std::fmt::Display for AuthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuthError::Denied => write!(f, "access denied: wrong user name or password"),
            AuthError::UserExists { name } => write!(f, "user {name:?} already exists"),
            AuthError::UnknownUser { name } => write!(f, "no user named {name:?}"),
            AuthError::InvalidName { what, reason } => write!(f, "invalid {what}: {reason}"),
            AuthError::PasswordRejected { reason } => write!(f, "password rejected: {reason}"),
            AuthError::MalformedToken { reason } => {
                write!(f, "access denied: malformed API token ({reason})")
            }
            AuthError::ApiKeyInvalid => write!(f, "access denied: invalid API key"),
            AuthError::ApiKeyRevoked { key_id } => {
                write!(f, "access denied: API key {key_id} is revoked")
            }
            AuthError::ApiKeyExpired {
                key_id,
                expired_at_ms,
            } => write!(
                f,
                "access denied: API key {key_id} expired at {expired_at_ms} ms since the epoch"
            ),
            AuthError::UnknownApiKey { key_id } => write!(f, "no API key with id {key_id:?}"),
            AuthError::ScopeMissing { key_id, scope } => {
                write!(f, "access denied: API key {key_id} lacks the {scope} scope")
            }
            AuthError::SecretNotFound { user, name } => {
                write!(f, "user {user:?} has no secret named {name:?}")
            }
            AuthError::DecryptFailed { user, name } => write!(
                f,
                "secret {name:?} of user {user:?} failed authentication (altered or moved)"
            ),
            AuthError::InvalidMasterKey { reason } => write!(f, "invalid master key: {reason}"),
            AuthError::UnknownMasterKey { key_id } => write!(
                f,
                "master key {key_id} is not known to this database or not reachable from the key in use"
            ),
            AuthError::MasterKeyRetired { key_id, successor } => write!(
                f,
                "master key {key_id} was rotated away from; use its successor {successor}"
            ),
            AuthError::MasterKeyReused { key_id } => {
                write!(
                    f,
                    "master key {key_id} has been used before; rotate to a fresh key"
                )
            }
            AuthError::RandomnessUnavailable { reason } => {
                write!(f, "the OS random number generator failed: {reason}")
            }
            AuthError::NonceLimitReached { key_id, limit } => write!(
                f,
                "master key {key_id} has made {limit} encryptions, its limit; rotate it"
            ),
        }
    }
}

impl std::error::Error for AuthError {}

#[cfg(test)]
mod tests {
    use super::*;

    fn refuse() -> Result<(), Box<dyn std::error::Error>> {
        Err(AuthError::UnknownUser { name: "ada".into() })?
    }

    #[test]
    fn converts_into_box_dyn_error_with_its_message() {
        let err = refuse().unwrap_err();
        assert_eq!(err.to_string(), "no user named \"ada\"");
        assert!(err.downcast_ref::<AuthError>().is_some());
        // Through the crate's error, the message is the same, once.
        let wrapped = crate::Error::from(AuthError::Denied);
        assert_eq!(wrapped.to_string(), AuthError::Denied.to_string());
        assert!(std::error::Error::source(&wrapped).is_none());
    }
}
