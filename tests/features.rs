//! The store is the same with or without the optional features: the
//! engine has no code of its own for `_auth` (the auth service's
//! keyspace), so a database the auth service wrote opens, takes writes,
//! compacts, reopens and syncs in a build without the feature `auth`, and
//! its `_auth` records come out untouched.
//!
//! With `auth` the records are made by the service itself (and checked
//! by it afterwards); without it, by writing into the reserved keyspace
//! what the service would (a register and a counter), which is all the
//! engine ever sees of it.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use mergekv::{Db, Error, Options, ScanOptions, SyncMode, Value};

const AUTH_KEYSPACE: &str = "_auth";

fn options() -> Options {
    Options::default().with_sync_mode(SyncMode::Never)
}

/// Every record of `_auth`, key to value.
fn auth_records(db: &Db) -> BTreeMap<Vec<u8>, Value> {
    db.reserved_keyspace(AUTH_KEYSPACE)
        .unwrap()
        .scan(&ScanOptions::all())
        .map(|e| {
            let e = e.unwrap();
            (e.key().to_vec(), e.into_value())
        })
        .collect()
}

/// Fills `_auth` as the auth service does: a user, an API key, a secret.
#[cfg(feature = "auth")]
fn write_auth_records(db: &Db) {
    let auth = open_auth(db);
    auth.create_user("alice", "a long enough password").unwrap();
    auth.create_api_key(
        "alice",
        mergekv::auth::Scopes::of(&[mergekv::auth::Scope::Read]),
        None,
    )
    .unwrap();
    auth.put_secret("alice", "db", b"alice's db password")
        .unwrap();
}

/// Fills `_auth` with what the engine sees of the auth service's records:
/// registers of opaque bytes and a counter.
#[cfg(not(feature = "auth"))]
fn write_auth_records(db: &Db) {
    let raw = db.reserved_keyspace(AUTH_KEYSPACE).unwrap();
    raw.put("user/alice", [0xa1_u8, 0x00, 0xff, 0x7e]).unwrap();
    raw.put("secret/1/db", [0x5e_u8; 40]).unwrap();
    raw.increment("uses/0011223344556677", 3).unwrap();
}

#[cfg(feature = "auth")]
fn open_auth(db: &Db) -> mergekv::AuthService {
    use mergekv::auth::{AuthOptions, AuthService, MasterKey, PasswordParams};
    let options = AuthOptions {
        password_params: PasswordParams::INSECURE_FOR_TESTS,
        ..AuthOptions::default()
    };
    AuthService::open_with(db, MasterKey::from_bytes([7; 32]), options).unwrap()
}

/// With the service built, it still reads what it wrote.
#[cfg(feature = "auth")]
fn check_auth_service(db: &Db) {
    let auth = open_auth(db);
    auth.verify_password("alice", "a long enough password")
        .unwrap();
    assert_eq!(
        auth.get_secret("alice", "db").unwrap().expose(),
        b"alice's db password"
    );
}

#[cfg(not(feature = "auth"))]
fn check_auth_service(_db: &Db) {}

/// Opens `dir` as the engine alone (no auth service), writes, compacts
/// and closes it.
fn use_as_a_plain_store(dir: &Path) {
    let db = Db::open_with(dir, options()).unwrap();
    for i in 0..100 {
        db.put(format!("key-{i:03}"), "value").unwrap();
    }
    db.increment("hits", 2).unwrap();
    db.compact_now().unwrap();
    db.close().unwrap();
}

#[test]
fn a_database_with_auth_records_opens_compacts_and_keeps_them_in_any_build() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open_with(dir.path(), options()).unwrap();
    write_auth_records(&db);
    let before = auth_records(&db);
    assert!(before.len() >= 3, "the service wrote {before:?}");
    db.close().unwrap();

    use_as_a_plain_store(dir.path());

    let db = Db::open_with(dir.path(), options()).unwrap();
    assert_eq!(auth_records(&db), before, "_auth changed");
    assert_eq!(db.get("key-042").unwrap().as_deref(), Some(&b"value"[..]));
    assert_eq!(db.counter("hits").unwrap(), 2);
    check_auth_service(&db);
}

#[test]
fn the_auth_keyspace_stays_reserved_in_any_build() {
    let copy = common::copy(1_000);
    write_auth_records(&copy.db);
    let refused = copy.db.keyspace(AUTH_KEYSPACE).map(|_| ());
    assert!(
        matches!(&refused, Err(Error::InvalidKeyspace { name, .. }) if name == AUTH_KEYSPACE),
        "{refused:?}"
    );
}

#[test]
fn auth_records_sync_between_copies_in_any_build() {
    let from = common::copy(1_000);
    write_auth_records(&from.db);
    from.db.put("plain", "data").unwrap();
    let to = common::copy(2_000);
    common::sync(&from.db, &to.db);
    assert_eq!(auth_records(&to.db), auth_records(&from.db));
    assert_eq!(to.db.get("plain").unwrap().as_deref(), Some(&b"data"[..]));
    check_auth_service(&to.db);
}
