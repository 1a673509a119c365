//! The library API as a new user meets it (issue 16): errors that convert
//! into `Box<dyn Error>`, reads that say why they fail, readable `Debug`,
//! scan shorthands, the keyspace listing, and a closed database that stays
//! closed through every clone.

use std::error::Error as StdError;
use std::ops::Bound;
use std::sync::Arc;

use mergekv::{Batch, Db, Entry, Error, ScanOptions, Value};

type BoxResult<T = ()> = Result<T, Box<dyn StdError>>;

fn open() -> (tempfile::TempDir, Db) {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path()).unwrap();
    (dir, db)
}

fn keys(scan: impl Iterator<Item = mergekv::Result<Entry>>) -> Vec<String> {
    scan.map(|e| String::from_utf8(e.unwrap().key().to_vec()).unwrap())
        .collect()
}

// ---- 1. Every public error type works with `?` into Box<dyn Error>.

fn decode_error() -> BoxResult<u32> {
    Ok(mergekv::codec::Reader::new(&[1, 2]).u32()?)
}

fn key_error() -> BoxResult {
    Err(mergekv::KeyError::Invalid {
        source: "key.hex".into(),
        reason: "not 64 hex characters".into(),
    })?
}

fn drift_error() -> BoxResult {
    Err(mergekv::clock::DriftRejected {
        peer: mergekv::NodeId(7),
        ahead_ms: 90_000,
        max_drift_ms: 60_000,
    })?
}

fn protocol_error() -> BoxResult {
    Err(mergekv::replication::ProtocolError::Malformed {
        reason: "short frame".into(),
    })?
}

fn db_error(db: &Db) -> BoxResult {
    db.keyspace("_reserved")?;
    Ok(())
}

#[test]
fn every_public_error_converts_into_box_dyn_error() {
    let e = decode_error().unwrap_err();
    assert!(e.to_string().contains("truncated"), "{e}");
    assert!(e.downcast_ref::<mergekv::codec::DecodeError>().is_some());

    let e = key_error().unwrap_err();
    assert!(e.to_string().contains("key.hex"), "{e}");

    let e = drift_error().unwrap_err();
    assert!(e.to_string().contains("90000 ms ahead"), "{e}");

    let e = protocol_error().unwrap_err();
    assert!(e.to_string().contains("short frame"), "{e}");

    let (_dir, db) = open();
    let e = db_error(&db).unwrap_err();
    assert!(matches!(
        e.downcast_ref::<Error>(),
        Some(Error::InvalidKeyspace { .. })
    ));
}

#[cfg(feature = "object-store")]
#[test]
fn bucket_error_converts_into_box_dyn_error() {
    fn bucket() -> BoxResult {
        Err(mergekv::error::BucketError::NothingToRestore {
            reason: "empty bucket".into(),
        })?
    }
    assert!(bucket().unwrap_err().to_string().contains("empty bucket"));
}

#[test]
fn wrapping_errors_expose_their_source_and_transparent_ones_do_not_repeat_it() {
    // An I/O error keeps the OS error as its source.
    let file = tempfile::NamedTempFile::new().unwrap();
    let err = Db::open(file.path()).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");
    let source = err.source().expect("an I/O error has a source");
    assert!(source.downcast_ref::<std::io::Error>().is_some());

    // A key error is shown as itself, not once more as its own source.
    let err = Error::Key(mergekv::KeyError::NotEncrypted { dir: "d".into() });
    assert!(err.source().is_none());
    assert!(err.to_string().contains("not encrypted"), "{err}");
}

// ---- 2. A bytes read of a counter says so.

#[test]
fn get_on_a_counter_is_a_typed_error_naming_keyspace_and_key() {
    let (_dir, db) = open();
    db.increment("hits", 2).unwrap();
    db.put("title", "hello").unwrap();

    let err = db.get("hits").unwrap_err();
    match &err {
        Error::HoldsCounter { keyspace, key } => {
            assert_eq!(keyspace, mergekv::DEFAULT_KEYSPACE);
            assert_eq!(key, b"hits");
        }
        other => panic!("expected HoldsCounter, got {other:?}"),
    }
    let message = err.to_string();
    assert!(message.contains("\"hits\""), "{message}");
    assert!(message.contains("holds a counter"), "{message}");
    assert!(message.contains("get_value"), "{message}");

    // Bytes and absent keys read as before; the counter reads by counter().
    assert_eq!(db.get("title").unwrap().as_deref(), Some(&b"hello"[..]));
    assert_eq!(db.get("nothing").unwrap(), None);
    assert_eq!(db.counter("hits").unwrap(), 2);
    assert_eq!(db.get_value("hits").unwrap(), Some(Value::Counter(2)));

    // The same in a keyspace, a view, a view's keyspace, and get_typed.
    let metrics = db.keyspace("metrics").unwrap();
    metrics.increment("views", 1).unwrap();
    let holds = |r: mergekv::Result<Option<Arc<[u8]>>>, ks: &str| match r {
        Err(Error::HoldsCounter { keyspace, .. }) => assert_eq!(keyspace, ks),
        other => panic!("expected HoldsCounter in {ks}, got {other:?}"),
    };
    holds(metrics.get("views"), "metrics");
    let view = db.view();
    holds(view.get("hits"), mergekv::DEFAULT_KEYSPACE);
    holds(view.keyspace("metrics").unwrap().get("views"), "metrics");
    assert!(matches!(
        metrics.get_typed::<u64>("views"),
        Err(Error::HoldsCounter { .. })
    ));
    assert!(matches!(
        view.keyspace("metrics").unwrap().get_typed::<u64>("views"),
        Err(Error::HoldsCounter { .. })
    ));
}

#[test]
fn get_on_a_counter_in_a_read_only_open_is_the_same_error() {
    let (dir, db) = open();
    db.increment("hits", 3).unwrap();
    let reader = Db::open_read_only(dir.path()).unwrap();
    assert!(matches!(
        reader.get("hits"),
        Err(Error::HoldsCounter { .. })
    ));
    assert_eq!(reader.counter("hits").unwrap(), 3);
}

// ---- 3. Debug shows user bytes readably.

#[test]
fn debug_shows_bytes_as_text_or_escapes_and_cuts_long_values() {
    let text = Value::Bytes(Arc::from(&b"Ada"[..]));
    assert_eq!(format!("{text:?}"), r#"Bytes("Ada")"#);
    let binary = Value::Bytes(Arc::from(&[0xff, 0xfe, b'A'][..]));
    assert_eq!(format!("{binary:?}"), r#"Bytes(b"\xff\xfeA")"#);
    assert_eq!(format!("{:?}", Value::Counter(-4)), "Counter(-4)");

    let long = Value::Bytes(Arc::from(vec![b'x'; 100_000]));
    let shown = format!("{long:?}");
    assert!(shown.contains("(100000 bytes)"), "{shown}");
    assert!(shown.len() < 200, "{} chars", shown.len());

    let (_dir, db) = open();
    db.put("ada", "Ada").unwrap();
    let entry = db.scan(&ScanOptions::all()).next().unwrap().unwrap();
    assert_eq!(
        format!("{entry:?}"),
        r#"Entry { key: "ada", value: Bytes("Ada") }"#
    );

    let mut batch = Batch::new();
    batch
        .put_in("users", "ada", "Ada Lovelace")
        .idempotency_key("import-42");
    let shown = format!("{batch:?}");
    assert!(shown.contains(r#"key: "ada""#), "{shown}");
    assert!(shown.contains(r#"Put("Ada Lovelace")"#), "{shown}");
    assert!(shown.contains(r#"Some("import-42")"#), "{shown}");
    assert!(!shown.contains("65, 100, 97"), "{shown}");
}

// ---- 4. A wrong type in get_typed names key, type, length and cause.

#[test]
fn get_typed_with_the_wrong_type_names_key_type_and_length() {
    let (_dir, db) = open();
    let settings = db.keyspace("settings").unwrap();
    settings.put("name", "abcd").unwrap();
    settings.put_typed("retries", &3u64).unwrap();
    assert_eq!(settings.get_typed::<u64>("retries").unwrap(), Some(3));
    assert_eq!(settings.get_typed::<u64>("absent").unwrap(), None);

    let err = settings.get_typed::<u64>("name").unwrap_err();
    match &err {
        Error::TypedDecode {
            keyspace,
            key,
            type_name,
            value_bytes,
            ..
        } => {
            assert_eq!(keyspace, "settings");
            assert_eq!(key, b"name");
            assert_eq!(*type_name, "u64");
            assert_eq!(*value_bytes, 4);
        }
        other => panic!("expected TypedDecode, got {other:?}"),
    }
    let message = err.to_string();
    for part in [
        "\"name\"",
        "\"settings\"",
        "u64",
        "4 bytes",
        "put_typed::<u64>",
    ] {
        assert!(message.contains(part), "{part:?} missing from: {message}");
    }

    // Through a view, the same.
    let view = db.view();
    assert!(matches!(
        view.keyspace("settings").unwrap().get_typed::<u64>("name"),
        Err(Error::TypedDecode { .. })
    ));
}

// ---- 5. prefix() and range() shorthands.

#[test]
fn prefix_and_range_shorthands_scan_like_scan_options() {
    let (_dir, db) = open();
    let ks = db.keyspace("k").unwrap();
    for key in ["a", "a\0", "ab", "b", "c", "d"] {
        db.put(key, key).unwrap();
        ks.put(key, key).unwrap();
    }
    let all = ["a", "a\0", "ab", "b", "c", "d"];

    assert_eq!(keys(db.prefix("a")), ["a", "a\0", "ab"]);
    assert_eq!(keys(ks.prefix("a")), ["a", "a\0", "ab"]);
    assert_eq!(keys(db.range("ab".."c")), ["ab", "b"]);
    assert_eq!(keys(ks.range("ab"..="c")), ["ab", "b", "c"]);
    assert_eq!(keys(ks.range(.."ab")), ["a", "a\0"]);
    assert_eq!(keys(ks.range(..="ab")), ["a", "a\0", "ab"]);
    assert_eq!(keys(ks.range(b"c".to_vec()..)), ["c", "d"]);
    assert_eq!(keys(ks.range::<&str>(..)), all);
    // Excluded start and included end on adjacent keys ("a" < "a\0").
    assert_eq!(
        keys(ks.range::<&str>((Bound::Excluded("a"), Bound::Included("a\0")))),
        ["a\0"]
    );
    // An inverted range is empty, not a panic.
    assert_eq!(keys(ks.range("c".."a")), Vec::<String>::new());
    #[allow(clippy::reversed_empty_ranges)]
    let inverted = keys(ks.range("d"..="a"));
    assert!(inverted.is_empty());

    // The same on a view and a view's keyspace, and equal to scan().
    let view = db.view();
    assert_eq!(
        keys(view.prefix("a")),
        keys(db.scan(&ScanOptions::prefix("a")))
    );
    assert_eq!(
        keys(view.keyspace("k").unwrap().range("b"..)),
        ["b", "c", "d"]
    );
    assert_eq!(keys(view.range("b".."d")), ["b", "c"]);
}

// ---- 6. Db::keyspaces lists the keyspaces holding live keys.

#[test]
fn keyspaces_lists_names_with_live_keys_only() {
    let (_dir, db) = open();
    assert_eq!(db.keyspaces().unwrap(), Vec::<String>::new());

    db.keyspace("users").unwrap().put("ada", "Ada").unwrap();
    db.keyspace("orders").unwrap().increment("n", 1).unwrap();
    db.put("title", "t").unwrap();
    let gone = db.keyspace("gone").unwrap();
    gone.put("x", "1").unwrap();
    gone.delete("x").unwrap();
    // A keyspace whose first keys are deleted but a later one lives.
    let mixed = db.keyspace("mixed").unwrap();
    mixed.put("a", "1").unwrap();
    mixed.delete("a").unwrap();
    mixed.put("b", "2").unwrap();
    db.reserved_keyspace("_internal")
        .unwrap()
        .put("k", "v")
        .unwrap();

    let expected = ["default", "mixed", "orders", "users"];
    assert_eq!(db.keyspaces().unwrap(), expected);
    assert_eq!(db.view().keyspaces().unwrap(), expected);

    // From the runs after a compaction, the same.
    db.compact_now().unwrap();
    assert_eq!(db.keyspaces().unwrap(), expected);

    // A view keeps its moment; the database moves on.
    let before = db.view();
    db.delete("title").unwrap();
    assert_eq!(before.keyspaces().unwrap(), expected);
    assert_eq!(db.keyspaces().unwrap(), ["mixed", "orders", "users"]);
}

// ---- 7. A closed database is closed through every clone.

#[test]
fn every_clone_of_a_closed_db_refuses_every_operation() {
    let (dir, db) = open();
    db.put("a", "1").unwrap();
    db.put("b", "2").unwrap();
    db.increment("n", 5).unwrap();
    let clone = db.clone();
    let users = db.keyspace("users").unwrap();
    users.put("ada", "Ada").unwrap();
    let view_before = db.view();
    let mut scan_before = db.scan(&ScanOptions::all());
    assert_eq!(scan_before.next().unwrap().unwrap().key(), b"a");

    db.close().unwrap();

    let closed = |what: &str, r: mergekv::Result<()>| match r {
        Err(Error::Closed) => {}
        other => panic!("{what}: expected Closed, got {other:?}"),
    };
    closed("get", clone.get("a").map(drop));
    closed("get_value", clone.get_value("a").map(drop));
    closed("counter", clone.counter("n").map(drop));
    closed("put", clone.put("c", "3").map(drop));
    closed("increment", clone.increment("n", 1).map(drop));
    closed("delete", clone.delete("a").map(drop));
    closed("write", clone.write(Batch::new()).map(drop));
    closed("keyspace", clone.keyspace("users").map(drop));
    closed("keyspaces", clone.keyspaces().map(drop));
    closed("digest", clone.digest().map(drop));
    closed(
        "export_since",
        clone
            .export_since(&mergekv::SyncCursor::default())
            .map(drop),
    );
    closed("keyspace get", users.get("ada").map(drop));
    closed("keyspace put", users.put("alan", "Alan").map(drop));
    closed(
        "keyspace get_typed",
        users.get_typed::<u64>("ada").map(drop),
    );
    closed("new view get", clone.view().get("a").map(drop));
    closed("old view get", view_before.get("a").map(drop));
    closed("old view keyspace", view_before.keyspace("users").map(drop));
    closed(
        "old view keyspace get",
        view_before.default_keyspace().get("a").map(drop),
    );
    closed("old view keyspaces", view_before.keyspaces().map(drop));
    for (what, mut scan) in [
        ("scan", clone.scan(&ScanOptions::all())),
        ("prefix", clone.prefix("a")),
        ("range", clone.range("a".."z")),
        ("keyspace scan", users.scan(&ScanOptions::all())),
        ("view scan", view_before.scan(&ScanOptions::all())),
    ] {
        closed(what, scan.next().expect("an error item").map(drop));
        assert!(scan.next().is_none(), "{what}: nothing after the error");
    }
    closed(
        "scan started before",
        scan_before.next().expect("an error item").map(drop),
    );
    assert!(scan_before.next().is_none());
    closed("second close", clone.clone().close());

    // Everything acknowledged before the close is there on reopen.
    drop((clone, users, view_before, scan_before));
    let db = Db::open(dir.path()).unwrap();
    assert_eq!(db.get("b").unwrap().as_deref(), Some(&b"2"[..]));
    assert_eq!(db.counter("n").unwrap(), 5);
    assert_eq!(
        db.keyspace("users").unwrap().get("ada").unwrap().as_deref(),
        Some(&b"Ada"[..])
    );
}

// ---- Options and the other option structs are built with setters.

#[test]
fn options_setters_set_their_field_and_chain() {
    use mergekv::{Options, RecoveryMode, SyncMode};
    let defaults = Options::default();
    let o = Options::default()
        .with_sync_mode(SyncMode::Never)
        .with_recovery_mode(RecoveryMode::Repair)
        .with_memtable_bytes_max(1234);
    assert_eq!(o.sync_mode, SyncMode::Never);
    assert_eq!(o.recovery_mode, RecoveryMode::Repair);
    assert_eq!(o.memtable_bytes_max, 1234);
    // Fields not set keep their defaults.
    assert_eq!(o.cache_bytes_max, defaults.cache_bytes_max);
    assert_eq!(defaults.sync_mode, SyncMode::Always);

    // A database opens with options built this way and honours them.
    let dir = tempfile::tempdir().unwrap();
    Db::open(dir.path()).unwrap().close().unwrap();
    let reader = Db::open_with(dir.path(), Options::default().with_read_only(true)).unwrap();
    assert!(matches!(reader.put("k", "v"), Err(Error::ReadOnly { .. })));
}

#[test]
fn replication_options_debug_prints_no_secret() {
    use mergekv::replication::{ErrorCode, FollowerOptions, ReplicationAuth, ReplicationOptions};
    struct Anyone;
    impl ReplicationAuth for Anyone {
        fn authorize_replication(&self, _token: &str) -> Result<(), ErrorCode> {
            Ok(())
        }
    }
    let leader = ReplicationOptions::new(Arc::new(Anyone)).with_followers_max(3);
    let shown = format!("{leader:?}");
    assert!(shown.contains("followers_max: 3"), "{shown}");

    let token = "mk_0123456789abcdef_secretsecretsecret";
    let follower = FollowerOptions::new("127.0.0.1:7411", token).with_backoff_max_ms(99);
    assert_eq!(follower.backoff_max_ms, 99);
    let shown = format!("{follower:?}");
    assert!(shown.contains("127.0.0.1:7411"), "{shown}");
    assert!(!shown.contains("secret"), "the token leaked: {shown}");
}
