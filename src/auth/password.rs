//! Password hashing: argon2id, stored as PHC strings.
//!
//! A PHC string (`$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>`) carries
//! its own parameters, so a hash made under older, weaker settings still
//! verifies, and [`PasswordHasher::needs_upgrade`] can tell that it should
//! be replaced.

use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};

use super::{AuthError, random_bytes};
use crate::error::{Error, Result};

/// Bytes of random salt per hash (the PHC recommendation is at least 16).
const SALT_BYTES: usize = 16;

/// The highest costs a stored hash may name: 1 GiB, 64 passes, 64 lanes.
const STORED_COST_CEILING: PasswordParams = PasswordParams {
    memory_kib: 1 << 20,
    passes: 64,
    lanes: 64,
};

/// argon2id cost parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PasswordParams {
    /// Memory per hash, in KiB.
    pub memory_kib: u32,
    /// Passes over the memory (argon2's `t`).
    pub passes: u32,
    /// Parallel lanes (argon2's `p`); the work still runs on one thread.
    pub lanes: u32,
}

impl PasswordParams {
    /// OWASP's first recommended argon2id setting: 19 MiB, 2 passes, 1 lane.
    pub const OWASP: PasswordParams = PasswordParams {
        memory_kib: 19 * 1024,
        passes: 2,
        lanes: 1,
    };

    /// Small parameters for tests only: fast, and far too weak for real use.
    pub const INSECURE_FOR_TESTS: PasswordParams = PasswordParams {
        memory_kib: 64,
        passes: 1,
        lanes: 1,
    };

    fn to_argon2(self) -> Result<Params> {
        Params::new(self.memory_kib, self.passes, self.lanes, None).map_err(|e| {
            Error::InvalidCommand {
                reason: format!("argon2 parameters {self:?}: {e}"),
            }
        })
    }

    /// True if every parameter is at least `other`'s.
    fn at_least(self, other: PasswordParams) -> bool {
        self.memory_kib >= other.memory_kib
            && self.passes >= other.passes
            && self.lanes >= other.lanes
    }
}

impl Default for PasswordParams {
    fn default() -> Self {
        PasswordParams::OWASP
    }
}

/// Hashes and verifies passwords at one configured cost.
pub(crate) struct PasswordHasher {
    params: PasswordParams,
    argon: Argon2<'static>,
}

impl PasswordHasher {
    /// A hasher at `params`; refuses parameters argon2 does not accept.
    pub(crate) fn new(params: PasswordParams) -> Result<Self> {
        let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.to_argon2()?);
        Ok(PasswordHasher { params, argon })
    }

    /// A fresh PHC string for `password`, with a random salt.
    pub(crate) fn hash(&self, password: &[u8]) -> Result<String> {
        let salt_bytes: [u8; SALT_BYTES] = random_bytes()?;
        let salt = SaltString::encode_b64(&salt_bytes).map_err(|e| Error::InvalidCommand {
            reason: format!("salt: {e}"),
        })?;
        let phc = self
            .argon
            .hash_password(password, &salt)
            .map_err(|e| Error::InvalidCommand {
                reason: format!("argon2 hash: {e}"),
            })?;
        Ok(phc.to_string())
    }

    /// True if `password` matches `phc`, under the parameters `phc` names.
    /// A stored hash that does not parse is a decode error, not a denial.
    pub(crate) fn verify(&self, password: &[u8], phc: &str) -> Result<bool> {
        let parsed = parse_phc(phc)?;
        // A damaged record (or another copy's) could name any cost; refuse
        // costs that would exhaust memory or never finish.
        if let Some((_, _, params)) = stored_params(phc)
            && !STORED_COST_CEILING.at_least(params)
        {
            return Err(Error::Decode {
                what: "password hash",
                reason: format!("costs {params:?} exceed the ceiling {STORED_COST_CEILING:?}"),
            });
        }
        // `Argon2::default()` would do as well: verification takes the
        // algorithm and costs from the PHC string, not from the hasher.
        match self.argon.verify_password(password, &parsed) {
            Ok(()) => Ok(true),
            Err(argon2::password_hash::Error::Password) => Ok(false),
            Err(e) => Err(Error::Decode {
                what: "password hash",
                reason: e.to_string(),
            }),
        }
    }

    /// True if `phc` is weaker than this hasher's configuration (another
    /// algorithm or version, or any cost below the configured one).
    pub(crate) fn needs_upgrade(&self, phc: &str) -> bool {
        match stored_params(phc) {
            Some((algorithm, version, params)) => {
                algorithm != Algorithm::Argon2id
                    || version != Version::V0x13
                    || !params.at_least(self.params)
            }
            None => true,
        }
    }
}

/// The parameters a PHC string was made with, if it is an argon2 hash.
pub(crate) fn phc_params(phc: &str) -> Option<PasswordParams> {
    stored_params(phc).map(|(_, _, params)| params)
}

fn stored_params(phc: &str) -> Option<(Algorithm, Version, PasswordParams)> {
    let parsed = PasswordHash::new(phc).ok()?;
    let algorithm = Algorithm::try_from(parsed.algorithm).ok()?;
    let version = Version::try_from(parsed.version.unwrap_or(0x10)).ok()?;
    let params = Params::try_from(&parsed).ok()?;
    Some((
        algorithm,
        version,
        PasswordParams {
            memory_kib: params.m_cost(),
            passes: params.t_cost(),
            lanes: params.p_cost(),
        },
    ))
}

fn parse_phc(phc: &str) -> Result<PasswordHash<'_>> {
    PasswordHash::new(phc).map_err(|e| Error::Decode {
        what: "password hash",
        reason: e.to_string(),
    })
}

/// Maps a random-generator failure into the auth error.
pub(crate) fn randomness_error(e: getrandom::Error) -> Error {
    Error::Auth(AuthError::RandomnessUnavailable {
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifies_its_own_hash_and_refuses_another_password() {
        let hasher = PasswordHasher::new(PasswordParams::INSECURE_FOR_TESTS).unwrap();
        let phc = hasher.hash(b"correct horse").unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=64,t=1,p=1$"));
        assert!(hasher.verify(b"correct horse", &phc).unwrap());
        assert!(!hasher.verify(b"correct horsf", &phc).unwrap());
    }

    #[test]
    fn weaker_hashes_need_an_upgrade_and_equal_ones_do_not() {
        let weak = PasswordHasher::new(PasswordParams::INSECURE_FOR_TESTS).unwrap();
        let strong = PasswordHasher::new(PasswordParams {
            memory_kib: 128,
            passes: 2,
            lanes: 1,
        })
        .unwrap();
        let weak_phc = weak.hash(b"pw").unwrap();
        let strong_phc = strong.hash(b"pw").unwrap();
        assert!(strong.needs_upgrade(&weak_phc));
        assert!(!strong.needs_upgrade(&strong_phc));
        assert!(!weak.needs_upgrade(&strong_phc));
        assert!(strong.needs_upgrade("not a phc string"));
        // The weak hash still verifies under the strong hasher.
        assert!(strong.verify(b"pw", &weak_phc).unwrap());
    }

    #[test]
    fn a_stored_hash_with_absurd_costs_is_refused_before_hashing() {
        let hasher = PasswordHasher::new(PasswordParams::INSECURE_FOR_TESTS).unwrap();
        let phc = hasher
            .hash(b"pw")
            .unwrap()
            .replace("m=64,", "m=4294967295,");
        assert!(matches!(
            hasher.verify(b"pw", &phc),
            Err(Error::Decode { .. })
        ));
    }

    #[test]
    fn a_garbled_stored_hash_is_a_decode_error() {
        let hasher = PasswordHasher::new(PasswordParams::INSECURE_FOR_TESTS).unwrap();
        assert!(matches!(
            hasher.verify(b"pw", "not a phc string"),
            Err(Error::Decode { .. })
        ));
    }
}
