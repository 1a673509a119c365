//! Internal records written by an earlier release are still read, and the
//! next update of each rewrites it in the current layout.
//!
//! `tests/fixtures/records-2026-12/` is a database directory written by the
//! code of 2026-12-03, when `_auth` records and `_local` cursors were
//! bincode-encoded serde values (now hand-written layouts, see
//! `docs/FORMAT.md`, "Auth records" and "Local records"). It holds users (one
//! with a rehash, one deleted, one whose password was changed), API keys
//! (one revoked), a secret under a rotated master key, and the cursors an
//! import from a peer stores; `expected.tsv` holds what must read back (the
//! API token, the peer's cursor). Some records are in the snapshot, some in
//! the WAL after it. Regenerate only for a new fixture, never to make a
//! failing test pass: `cargo test --test records_fixture -- --ignored
//! write_fixture` (with the code of the release the fixture stands for).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use mergekv::{Db, SyncCursor};

const FIXTURE: &str = "tests/fixtures/records-2026-12";
fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(FIXTURE)
}

fn copy_tree(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for entry in std::fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        let target = dst.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else if entry.file_name() != "expected.tsv" {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn expected() -> BTreeMap<String, String> {
    std::fs::read_to_string(fixture_dir().join("expected.tsv"))
        .unwrap()
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (k, v) = l.split_once('\t').expect("KEY<TAB>VALUE");
            (k.to_string(), v.to_string())
        })
        .collect()
}

/// The raw stored value of `key` in the reserved keyspace `keyspace`.
fn raw(db: &Db, keyspace: &str, key: &str) -> Option<Vec<u8>> {
    db.reserved_keyspace(keyspace)
        .unwrap()
        .get(key)
        .unwrap()
        .map(|v| v.to_vec())
}

#[test]
fn cursors_of_the_release_of_2026_12_are_read_and_rewritten() {
    let expected = expected();
    let dir = tempfile::tempdir().unwrap();
    copy_tree(&fixture_dir(), dir.path());
    let db = Db::open(dir.path()).unwrap();
    let legacy = raw(&db, "_local", "peer/b").unwrap();
    let peer_b = SyncCursor::parse(&expected["peer_b"]).unwrap();
    assert!(!peer_b.seen.is_empty());
    assert_eq!(db.peer_cursor("b").unwrap(), peer_b);
    let complete = db.complete_cursor().unwrap();
    for stamp in peer_b.seen.values() {
        assert!(complete.has_seen(*stamp), "{complete:?} lacks {stamp:?}");
    }
    // An export to b sends only what b lacks: not b's own write.
    let (bytes, _) = db.export_for("b").unwrap();
    let peer = tempfile::tempdir().unwrap();
    let other = Db::open(peer.path()).unwrap();
    other.import(&bytes).unwrap();
    assert!(
        other.get("from-b").unwrap().is_none(),
        "b's write not resent"
    );
    assert!(other.get("in-a").unwrap().is_some());

    // The next import from b rewrites its cursor in the current layout.
    other.put("later", "1").unwrap();
    let (bytes, _) = other.export_since(&SyncCursor::new()).unwrap();
    db.import_from("b", &bytes).unwrap();
    let rewritten = raw(&db, "_local", "peer/b").unwrap();
    assert_ne!(rewritten, legacy);
    assert_eq!(rewritten[0], 0xff, "the layout marker: {rewritten:02x?}");
    let merged = db.peer_cursor("b").unwrap();
    for stamp in peer_b.seen.values() {
        assert!(merged.has_seen(*stamp));
    }
    db.close().unwrap();
    let db = Db::open(dir.path()).unwrap();
    assert_eq!(db.peer_cursor("b").unwrap(), merged);
}

/// The auth half (and the fixture writer, which needs auth).
#[cfg(feature = "auth")]
mod auth {
    use super::*;
    use mergekv::Options;
    use mergekv::auth::{AuthOptions, AuthService, MasterKey, PasswordParams, Scope, Scopes};

    const PASSWORD: &str = "correct horse battery staple";
    const NEW_PASSWORD: &str = "a much better password";

    fn weak() -> AuthOptions {
        AuthOptions {
            password_params: PasswordParams::INSECURE_FOR_TESTS,
            ..AuthOptions::default()
        }
    }

    /// Stronger than [`weak`] (so a weak hash gets a rehash), still fast.
    fn stronger() -> AuthOptions {
        AuthOptions {
            password_params: PasswordParams {
                memory_kib: 128,
                passes: 2,
                ..PasswordParams::INSECURE_FOR_TESTS
            },
            ..AuthOptions::default()
        }
    }

    fn key(byte: u8) -> MasterKey {
        MasterKey::from_bytes([byte; 32])
    }

    /// Keys of the reserved keyspace `keyspace` starting with `prefix`.
    fn raw_keys(db: &Db, keyspace: &str, prefix: &str) -> Vec<String> {
        db.reserved_keyspace(keyspace)
            .unwrap()
            .scan(&mergekv::ScanOptions::prefix(prefix))
            .map(|e| String::from_utf8(e.unwrap().key().to_vec()).unwrap())
            .collect()
    }

    /// bincode 2 writes a serde enum's variant index first, as a varint: every
    /// legacy auth record (variant `V1`, index 0) begins with 0x00.
    const LEGACY_AUTH_FIRST_BYTE: u8 = 0x00;

    #[test]
    fn auth_records_of_the_release_of_2026_12_still_log_in_and_are_rewritten() {
        let expected = expected();
        let dir = tempfile::tempdir().unwrap();
        copy_tree(&fixture_dir(), dir.path());
        let db = Db::open(dir.path()).unwrap();
        // The fixture really holds legacy records (else this test proves nothing).
        let cyd_keys = raw_keys(&db, "_auth", "user/cyd/");
        assert_eq!(cyd_keys.len(), 1, "{cyd_keys:?}");
        assert_eq!(
            raw(&db, "_auth", &cyd_keys[0]).unwrap()[0],
            LEGACY_AUTH_FIRST_BYTE
        );

        // Opened with the rotated key, under stronger costs than ada's rehash.
        let auth = AuthService::open_with(&db, key(2), stronger()).unwrap();
        let ada = auth.verify_password("ada", PASSWORD).unwrap();
        assert_eq!(ada.name, "ada");
        assert!(auth.verify_password("ada", "wrong password!!").is_err());
        assert!(auth.get_user("bob").unwrap().is_none(), "bob was deleted");
        assert!(auth.verify_password("bob", PASSWORD).is_err());
        assert!(auth.verify_password("cyd", PASSWORD).is_err());
        auth.verify_password("cyd", NEW_PASSWORD).unwrap();
        let token = &expected["token"];
        let info = auth.authorize(token, Scope::Write).unwrap();
        assert_eq!(info.user, "ada");
        assert!(auth.authorize(token, Scope::Admin).is_err(), "not granted");
        assert!(
            auth.authorize(&expected["revoked_token"], Scope::Read)
                .is_err()
        );
        assert_eq!(auth.list_api_keys("ada").unwrap().len(), 2);
        assert_eq!(
            auth.get_secret("ada", "note").unwrap().expose(),
            b"written by the release of 2026-12"
        );
        // The key before the rotation still opens it, through the wrapped key.
        drop(auth);
        let old = AuthService::open_with(&db, key(1), stronger());
        assert!(old.is_err(), "the retired key is refused after a rotation");

        // The next update of a record writes it in the current layout.
        let auth = AuthService::open_with(&db, key(2), stronger()).unwrap();
        auth.change_password("cyd", NEW_PASSWORD, PASSWORD).unwrap();
        let rewritten = raw(&db, "_auth", &cyd_keys[0]).unwrap();
        assert_ne!(rewritten[0], LEGACY_AUTH_FIRST_BYTE, "{rewritten:02x?}");
        auth.verify_password("cyd", PASSWORD).unwrap();
        // And what was written survives a reopen, with the legacy records.
        drop(auth);
        db.close().unwrap();
        let db = Db::open(dir.path()).unwrap();
        let auth = AuthService::open_with(&db, key(2), stronger()).unwrap();
        auth.verify_password("cyd", PASSWORD).unwrap();
        auth.verify_password("ada", PASSWORD).unwrap();
        auth.authorize(token, Scope::Read).unwrap();
    }

    /// Writes the fixture (see the module docs).
    #[test]
    #[ignore = "writes a fixture; run by hand with the release's code"]
    fn write_fixture() {
        let dir = fixture_dir();
        assert!(
            !dir.exists(),
            "{} exists: fixtures are never rewritten",
            dir.display()
        );
        let options = || {
            Options::default()
                .with_segment_size_bytes_max(4096)
                .with_compaction_wal_bytes_min(u64::MAX)
                .with_compaction_interval_ms(0)
        };
        let mut expected = String::new();
        {
            let db = Db::open_with(&dir, options()).unwrap();
            db.put("in-a", "1").unwrap();
            let auth = AuthService::open_with(&db, key(1), weak()).unwrap();
            auth.create_user("ada", PASSWORD).unwrap();
            auth.create_user("bob", PASSWORD).unwrap();
            auth.create_user("cyd", PASSWORD).unwrap();
            auth.delete_user("bob").unwrap();
            auth.change_password("cyd", PASSWORD, NEW_PASSWORD).unwrap();
            let (_, token) = auth
                .create_api_key("ada", Scopes::of(&[Scope::Read, Scope::Write]), None)
                .unwrap();
            let (revoked_info, revoked) = auth
                .create_api_key("ada", Scopes::of(&[Scope::Read]), None)
                .unwrap();
            auth.revoke_api_key(&revoked_info.key_id).unwrap();
            auth.put_secret("ada", "note", b"written by the release of 2026-12")
                .unwrap();
            auth.rotate_master_key(key(2)).unwrap();
            drop(auth);
            // A rehash: ada's weak hash, verified under stronger costs.
            let auth = AuthService::open_with(&db, key(2), stronger()).unwrap();
            auth.verify_password("ada", PASSWORD).unwrap();
            drop(auth);
            db.compact_now().unwrap();
            // After the snapshot, in the WAL: a user, and an import's cursors.
            let auth = AuthService::open_with(&db, key(2), stronger()).unwrap();
            auth.create_user("dee", PASSWORD).unwrap();
            drop(auth);
            let b_dir = tempfile::tempdir().unwrap();
            let b = Db::open(b_dir.path()).unwrap();
            b.put("from-b", "1").unwrap();
            let (bytes, b_cursor) = b.export_for("a").unwrap();
            db.import_from("b", &bytes).unwrap();
            expected.push_str(&format!("token\t{}\n", token.expose()));
            expected.push_str(&format!("revoked_token\t{}\n", revoked.expose()));
            expected.push_str(&format!("peer_b\t{}\n", b_cursor.to_text()));
            db.close().unwrap();
        }
        std::fs::write(dir.join("expected.tsv"), expected).unwrap();
        let _ = std::fs::remove_file(dir.join("LOCK"));
    }
}
