//! The `_auth` record layouts: legacy bytes written by the old code, round
//! trips, and damage.

use proptest::prelude::*;

use super::layout::{self, LEGACY_FIRST_BYTE, PHC_BYTES_MAX};
use super::legacy;
use super::*;
use crate::auth::USER_NAME_BYTES_MAX;
use crate::auth::apikey::Scope;
use crate::codec::encode_typed;

fn hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

// Bytes the release of 2026-12-03 wrote (printed by that code with its
// `records::encode`, bincode 2), for the values in `legacy_records_...`.
const LEGACY_USER: &str = "001111111111111111111111111111111129246172676f6e32696424763d3139246d3d36342c743d312c703d3124633246736441246147467a614122222222222222222222222222222222fd0028f129a2010000fd7b28f129a2010000";
const LEGACY_DELETED: &str = "0003626f62fdc829f129a2010000";
const LEGACY_REHASH: &str = "00333333333333333333333333333333332a246172676f6e32696424763d3139246d3d3132382c743d322c703d3124633246736441246147467a6141";
const LEGACY_API_KEY: &str = "00036164614444444444444444444444444444444403fd152bf129a201000001fd1587172fa20100005555555555555555555555555555555555555555555555555555555555555555";
const LEGACY_API_KEY_NO_EXPIRY: &str = "00036164614444444444444444444444444444444408fd152bf129a2010000005555555555555555555555555555555555555555555555555555555555555555";
const LEGACY_REVOCATION: &str = "00fde82bf129a2010000";
const LEGACY_MASTER_KEY: &str = "00fdd02ff129a2010000";
const LEGACY_WRAPPED_KEY: &str = "0066666666666666666666666630777777777777777777777777777777777777777777777777777777777777777777777777777777777777777777777777";
const LEGACY_ROTATION: &str = "0088888888888888889999999999999999";

fn user() -> UserRecord {
    UserRecord {
        user_id: [0x11; 16],
        phc: "$argon2id$v=19$m=64,t=1,p=1$c2FsdA$aGFzaA".into(),
        password_id: [0x22; 16],
        created_ms: 1_796_000_000_000,
        password_changed_ms: 1_796_000_000_123,
    }
}

fn api_key(scopes: Scopes, expires_ms: Option<u64>) -> ApiKeyRecord {
    ApiKeyRecord {
        user: "ada".into(),
        user_id: [0x44; 16],
        scopes,
        created_ms: 1_796_000_000_789,
        expires_ms,
        secret_hash: [0x55; 32],
    }
}

/// Reads `legacy_hex` as a `T`, checks it is `expected`, and that writing
/// it again gives the current layout, which reads back the same.
fn check_legacy<T: AuthRecord + PartialEq + std::fmt::Debug>(legacy_hex: &str, expected: &T) {
    let bytes = hex(legacy_hex);
    assert_eq!(bytes[0], LEGACY_FIRST_BYTE);
    assert_eq!(&decode::<T>(&bytes).unwrap(), expected, "{}", T::WHAT);
    let rewritten = encode(expected);
    assert_eq!(rewritten[0], T::TAG);
    assert_eq!(&decode::<T>(&rewritten).unwrap(), expected);
}

#[test]
fn legacy_records_written_by_the_old_code_are_read_and_rewritten() {
    check_legacy(LEGACY_USER, &user());
    check_legacy(
        LEGACY_DELETED,
        &UserDeleted {
            name: "bob".into(),
            deleted_ms: 1_796_000_000_456,
        },
    );
    check_legacy(
        LEGACY_REHASH,
        &Rehash {
            password_id: [0x33; 16],
            phc: "$argon2id$v=19$m=128,t=2,p=1$c2FsdA$aGFzaA".into(),
        },
    );
    check_legacy(
        LEGACY_API_KEY,
        &api_key(
            Scopes::of(&[Scope::Read, Scope::Write]),
            Some(1_796_086_400_789),
        ),
    );
    check_legacy(
        LEGACY_API_KEY_NO_EXPIRY,
        &api_key(Scopes::of(&[Scope::Admin]), None),
    );
    check_legacy(
        LEGACY_REVOCATION,
        &Revocation {
            revoked_ms: 1_796_000_001_000,
        },
    );
    check_legacy(
        LEGACY_MASTER_KEY,
        &MasterKeyRecord {
            created_ms: 1_796_000_002_000,
        },
    );
    check_legacy(
        LEGACY_WRAPPED_KEY,
        &WrappedKey(Sealed {
            nonce: [0x66; 12],
            ciphertext: vec![0x77; 48],
        }),
    );
    check_legacy(
        LEGACY_ROTATION,
        &Rotation {
            from: MasterKeyId([0x88; 8]),
            to: MasterKeyId([0x99; 8]),
        },
    );
}

#[test]
fn user_and_api_key_layouts_are_as_documented() {
    let mut expected = vec![layout::USER_TAG];
    expected.extend_from_slice(&[0x11; 16]);
    expected.extend_from_slice(&(user().phc.len() as u32).to_le_bytes());
    expected.extend_from_slice(user().phc.as_bytes());
    expected.extend_from_slice(&[0x22; 16]);
    expected.extend_from_slice(&1_796_000_000_000u64.to_le_bytes());
    expected.extend_from_slice(&1_796_000_000_123u64.to_le_bytes());
    assert_eq!(encode(&user()), expected);

    let key = api_key(Scopes::of(&[Scope::Read, Scope::Write]), Some(7));
    let mut expected = vec![layout::API_KEY_TAG, 3, 0, 0, 0];
    expected.extend_from_slice(b"ada");
    expected.extend_from_slice(&[0x44; 16]);
    expected.push(3);
    expected.extend_from_slice(&1_796_000_000_789u64.to_le_bytes());
    expected.push(1);
    expected.extend_from_slice(&7u64.to_le_bytes());
    expected.extend_from_slice(&[0x55; 32]);
    assert_eq!(encode(&key), expected);
    let no_expiry = encode(&api_key(Scopes::of(&[Scope::Read]), None));
    assert_eq!(no_expiry.len(), expected.len() - 8);
    assert_eq!(no_expiry[1 + 4 + 3 + 16 + 1 + 8], 0);

    let rotation = Rotation {
        from: MasterKeyId([1; 8]),
        to: MasterKeyId([2; 8]),
    };
    assert_eq!(
        encode(&rotation),
        [&[layout::ROTATION_TAG][..], &[1; 8], &[2; 8]].concat()
    );
}

#[test]
fn a_record_of_another_kind_or_an_unknown_tag_is_refused() {
    let bytes = encode(&Revocation { revoked_ms: 5 });
    // Same body size as a master key registration: only the tag differs.
    assert!(decode::<MasterKeyRecord>(&bytes).is_err());
    let mut unknown = bytes.clone();
    unknown[0] = 0x7f;
    assert!(decode::<Revocation>(&unknown).is_err());
    assert!(decode::<Revocation>(&[]).is_err());
}

#[test]
fn lengths_over_their_limit_are_refused_before_anything_is_taken() {
    let mut bytes = vec![layout::USER_TAG];
    bytes.extend_from_slice(&[0; 16]);
    bytes.extend_from_slice(&u32::MAX.to_le_bytes());
    let err = layout::decode_bytes::<UserRecord>(&bytes).unwrap_err();
    assert!(
        matches!(&err, crate::codec::DecodeError::Invalid { offset: 17, reason } if reason.contains("limit")),
        "{err:?}"
    );
    let mut long = user();
    long.phc = "x".repeat(PHC_BYTES_MAX + 1);
    assert!(decode::<UserRecord>(&encode(&long)).is_err());
    let mut bytes = vec![layout::USER_DELETED_TAG];
    bytes.extend_from_slice(&((USER_NAME_BYTES_MAX + 1) as u32).to_le_bytes());
    bytes.extend_from_slice(&[b'a'; USER_NAME_BYTES_MAX + 1]);
    bytes.extend_from_slice(&0u64.to_le_bytes());
    assert!(decode::<UserDeleted>(&bytes).is_err());
    // A wrapped key shorter than a tag, and one longer than a key and tag.
    for len in [15usize, layout::WRAPPED_KEY_CIPHERTEXT_BYTES_MAX + 1] {
        let wrapped = WrappedKey(Sealed {
            nonce: [0; 12],
            ciphertext: vec![0; len],
        });
        assert!(decode::<WrappedKey>(&encode(&wrapped)).is_err(), "{len}");
    }
    // A presence byte other than 0 or 1.
    let mut bytes = encode(&api_key(Scopes::of(&[Scope::Read]), None));
    bytes[1 + 4 + 3 + 16 + 1 + 8] = 2;
    assert!(decode::<ApiKeyRecord>(&bytes).is_err());
}

/// Every cut of `bytes` and every one-byte extension is a typed error.
fn check_damage<T: AuthRecord>(bytes: &[u8]) -> Result<(), TestCaseError> {
    for len in 0..bytes.len() {
        prop_assert!(decode::<T>(&bytes[..len]).is_err(), "cut at {}", len);
    }
    for extra in [0u8, 1, 0xff] {
        let mut longer = bytes.to_vec();
        longer.push(extra);
        prop_assert!(decode::<T>(&longer).is_err(), "extended by {}", extra);
    }
    Ok(())
}

/// Round trip, damage, and the legacy bytes of the same record.
fn check<T: AuthRecord + PartialEq + std::fmt::Debug>(
    record: &T,
    legacy_bytes: Vec<u8>,
) -> Result<(), TestCaseError> {
    let bytes = encode(record);
    prop_assert_eq!(bytes[0], T::TAG);
    prop_assert_eq!(&decode::<T>(&bytes).unwrap(), record);
    check_damage::<T>(&bytes)?;
    prop_assert_eq!(legacy_bytes[0], LEGACY_FIRST_BYTE);
    prop_assert_eq!(&decode::<T>(&legacy_bytes).unwrap(), record);
    check_damage::<T>(&legacy_bytes)?;
    Ok(())
}

fn name() -> impl Strategy<Value = String> {
    "[a-z0-9_.-]{1,64}"
}

fn phc() -> impl Strategy<Value = String> {
    "\\PC{0,80}".prop_filter("at most PHC_BYTES_MAX", |s| s.len() <= PHC_BYTES_MAX)
}

proptest! {
    #[test]
    fn users_round_trip(
        user_id in any::<[u8; 16]>(),
        phc in phc(),
        password_id in any::<[u8; 16]>(),
        created_ms in any::<u64>(),
        password_changed_ms in any::<u64>(),
    ) {
        let record = UserRecord { user_id, phc: phc.clone(), password_id, created_ms, password_changed_ms };
        let old = legacy::StoredUser::V1(legacy::UserRecordV1 {
            user_id, phc, password_id, created_ms, password_changed_ms,
        });
        check(&record, encode_typed(&old).unwrap())?;
    }

    #[test]
    fn deletions_and_rehashes_round_trip(
        name in name(),
        deleted_ms in any::<u64>(),
        password_id in any::<[u8; 16]>(),
        phc in phc(),
    ) {
        let old = legacy::StoredUserDeleted::V1 { name: name.clone(), deleted_ms };
        check(&UserDeleted { name, deleted_ms }, encode_typed(&old).unwrap())?;
        let old = legacy::StoredRehash::V1 { password_id, phc: phc.clone() };
        check(&Rehash { password_id, phc }, encode_typed(&old).unwrap())?;
    }

    #[test]
    fn api_keys_round_trip(
        user in name(),
        user_id in any::<[u8; 16]>(),
        scopes in any::<u8>(),
        created_ms in any::<u64>(),
        expires_ms in any::<Option<u64>>(),
        secret_hash in any::<[u8; 32]>(),
    ) {
        let record = ApiKeyRecord {
            user: user.clone(), user_id, scopes: Scopes::from_bits(scopes), created_ms, expires_ms, secret_hash,
        };
        let old = legacy::StoredApiKey::V1(legacy::ApiKeyRecordV1 {
            user, user_id, scopes: legacy::ScopesV1(scopes), created_ms, expires_ms, secret_hash,
        });
        check(&record, encode_typed(&old).unwrap())?;
    }

    #[test]
    fn key_records_round_trip(
        ms in any::<u64>(),
        nonce in any::<[u8; 12]>(),
        ciphertext in proptest::collection::vec(any::<u8>(), 16..=layout::WRAPPED_KEY_CIPHERTEXT_BYTES_MAX),
        from in any::<[u8; 8]>(),
        to in any::<[u8; 8]>(),
    ) {
        let old = legacy::StoredRevocation::V1 { revoked_ms: ms };
        check(&Revocation { revoked_ms: ms }, encode_typed(&old).unwrap())?;
        let old = legacy::StoredMasterKey::V1 { created_ms: ms };
        check(&MasterKeyRecord { created_ms: ms }, encode_typed(&old).unwrap())?;
        let old = legacy::StoredWrappedKey::V1(legacy::SealedV1 { nonce, ciphertext: ciphertext.clone() });
        check(&WrappedKey(Sealed { nonce, ciphertext }), encode_typed(&old).unwrap())?;
        let old = legacy::StoredRotation::V1 { from: legacy::MasterKeyIdV1(from), to: legacy::MasterKeyIdV1(to) };
        check(&Rotation { from: MasterKeyId(from), to: MasterKeyId(to) }, encode_typed(&old).unwrap())?;
    }

    /// Arbitrary bytes, behind each tag and the legacy byte, never panic.
    #[test]
    fn arbitrary_bytes_never_panic(rest in proptest::collection::vec(any::<u8>(), 0..200)) {
        for first in LEGACY_FIRST_BYTE..=layout::ROTATION_TAG + 1 {
        let bytes = [&[first][..], &rest].concat();
        let _ = decode::<UserRecord>(&bytes);
        let _ = decode::<UserDeleted>(&bytes);
        let _ = decode::<Rehash>(&bytes);
        let _ = decode::<ApiKeyRecord>(&bytes);
        let _ = decode::<Revocation>(&bytes);
        let _ = decode::<MasterKeyRecord>(&bytes);
        let _ = decode::<WrappedKey>(&bytes);
        let _ = decode::<Rotation>(&bytes);
        }
    }
}
