use super::sealed::{self, SealedKind};
use super::*;

fn key(byte: u8) -> EncryptionKey {
    EncryptionKey::from_bytes([byte; KEY_BYTES])
}

#[test]
fn hex_round_trips_and_refuses_malformed_keys() {
    let k = EncryptionKey::generate().unwrap();
    let again = EncryptionKey::from_hex(&format!("  {}\n", k.to_hex().as_str()), "t").unwrap();
    assert_eq!(k.id(), again.id());
    assert_eq!(k.bytes(), again.bytes());
    let upper = k.to_hex().to_uppercase();
    assert_eq!(EncryptionKey::from_hex(&upper, "t").unwrap().id(), k.id());
    for bad in ["", "00", &"g".repeat(64), &"0".repeat(63), &"0".repeat(65)] {
        assert!(matches!(
            EncryptionKey::from_hex(bad, "t"),
            Err(Error::Key(KeyError::Invalid { .. }))
        ));
    }
    // Debug never shows the key.
    let shown = format!("{k:?} {:?}", KeySource::Key(k.clone()));
    assert!(!shown.contains(&k.to_hex()[..16]), "{shown}");
}

#[test]
fn key_files_hold_hex_or_raw_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let k = key(7);
    let hex = dir.path().join("hex");
    std::fs::write(&hex, format!("{}\n", k.to_hex().as_str())).unwrap();
    assert_eq!(KeySource::File(hex).resolve().unwrap().id(), k.id());
    let raw = dir.path().join("raw");
    std::fs::write(&raw, [7u8; 32]).unwrap();
    assert_eq!(KeySource::File(raw).resolve().unwrap().id(), k.id());
    let long = dir.path().join("long");
    std::fs::write(&long, vec![b'0'; 5000]).unwrap();
    assert!(matches!(
        KeySource::File(long).resolve(),
        Err(Error::Key(KeyError::Invalid { .. }))
    ));
    assert!(matches!(
        KeySource::File(dir.path().join("absent")).resolve(),
        Err(Error::Key(KeyError::Invalid { .. }))
    ));
    assert!(matches!(
        KeySource::Env("MERGEKV_TEST_KEY_SURELY_UNSET".into()).resolve(),
        Err(Error::Key(KeyError::Invalid { .. }))
    ));
}

#[test]
fn ciphers_bind_key_salt_domain_and_nonce() {
    let salt = [3u8; SALT_BYTES];
    let a = FileCipher::new(&key(1), Domain::Wal, salt);
    let mut buf = b"secret payload".to_vec();
    a.seal(40, b"aad", &mut buf);
    assert_eq!(buf.len(), 14 + TAG_BYTES);
    assert!(!buf.windows(6).any(|w| w == b"secret"));
    let opened = |c: &FileCipher, nonce: u64, aad: &[u8]| {
        let mut b = buf.clone();
        c.open(nonce, aad, &mut b).map(|()| b)
    };
    assert_eq!(opened(&a, 40, b"aad").unwrap(), b"secret payload");
    assert_eq!(opened(&a, 41, b"aad"), Err(Unauthentic));
    assert_eq!(opened(&a, 40, b"aaD"), Err(Unauthentic));
    assert_eq!(
        opened(&FileCipher::new(&key(2), Domain::Wal, salt), 40, b"aad"),
        Err(Unauthentic)
    );
    assert_eq!(
        opened(&FileCipher::new(&key(1), Domain::Run, salt), 40, b"aad"),
        Err(Unauthentic)
    );
    assert_eq!(
        opened(
            &FileCipher::new(&key(1), Domain::Wal, [4u8; SALT_BYTES]),
            40,
            b"aad"
        ),
        Err(Unauthentic)
    );
    for i in 0..buf.len() {
        let mut b = buf.clone();
        b[i] ^= 1;
        assert_eq!(a.open(40, b"aad", &mut b), Err(Unauthentic));
    }
    assert_eq!(a.open(40, b"aad", &mut vec![0; 5]), Err(Unauthentic));
}

#[test]
fn key_blocks_round_trip_and_check_their_crc() {
    let block = KeyBlock {
        key_id: key(9).id(),
        salt: [5; SALT_BYTES],
    };
    let bytes = block.encode();
    assert_eq!(KeyBlock::decode(&bytes).unwrap(), block);
    for i in 0..bytes.len() {
        let mut b = bytes;
        b[i] ^= 0x10;
        assert!(KeyBlock::decode(&b).is_err());
    }
    assert!(KeyBlock::decode(&bytes[..KEY_BLOCK_BYTES - 1]).is_err());
}

#[test]
fn keyrings_rotate_and_name_missing_keys() {
    let mut ring = Keyring::new(Some(key(1)), vec![key(2), key(1), key(2)]);
    assert_eq!(ring.ids(), vec![key(1).id(), key(2).id()]);
    ring.rotate_to(key(2));
    assert_eq!(ring.ids(), vec![key(2).id(), key(1).id()]);
    ring.rotate_to(key(3));
    assert_eq!(ring.ids(), vec![key(3).id(), key(1).id(), key(2).id()]);
    let e = Keyring::default().missing(Path::new("f"), key(4).id());
    assert!(e.to_string().contains(&key(4).id().to_string()), "{e}");
    assert!(e.to_string().contains("no key was given"), "{e}");
}

#[test]
fn sealed_objects_round_trip_and_refuse_damage_truncation_and_other_keys() {
    let ring = Keyring::new(Some(key(1)), vec![]);
    for len in [0usize, 1, 65_535, 65_536, 65_537, 200_000] {
        let plain: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let sealed_bytes = sealed::seal(&ring, SealedKind::ChangeSet, b"", plain.clone()).unwrap();
        assert!(sealed::is_sealed(&sealed_bytes));
        assert_eq!(sealed::sealed_key_id(&sealed_bytes), Some(key(1).id()));
        assert_eq!(
            sealed::open(&ring, SealedKind::ChangeSet, b"", &sealed_bytes).unwrap(),
            plain
        );
        // Cut at every chunk boundary and a few other places.
        let stored = sealed::SEALED_CHUNK_BYTES as usize + TAG_BYTES;
        let mut cuts: Vec<usize> = (1..=3)
            .map(|k| sealed::SEALED_HEADER_BYTES + k * stored)
            .collect();
        cuts.extend([0, 8, sealed::SEALED_HEADER_BYTES, sealed_bytes.len() - 1]);
        for cut in cuts.into_iter().filter(|c| *c < sealed_bytes.len()) {
            assert!(
                matches!(
                    sealed::open(&ring, SealedKind::ChangeSet, b"", &sealed_bytes[..cut]),
                    Err(Error::Decode { .. })
                ),
                "cut at {cut} of {len}"
            );
        }
        let other = Keyring::new(Some(key(2)), vec![]);
        assert!(matches!(
            sealed::open(&other, SealedKind::ChangeSet, b"", &sealed_bytes),
            Err(Error::Key(KeyError::Missing { .. }))
        ));
    }
    let small = sealed::seal(&ring, SealedKind::ChangeSet, b"", b"hello world".to_vec()).unwrap();
    for i in 0..small.len() {
        let mut b = small.clone();
        b[i] ^= 0x01;
        assert!(
            sealed::open(&ring, SealedKind::ChangeSet, b"", &b).is_err(),
            "byte {i}"
        );
    }
    // Another context, or another kind, does not open.
    assert!(sealed::open(&ring, SealedKind::ChangeSet, b"x", &small).is_err());
    assert!(sealed::open(&ring, SealedKind::ReplicationBatch, b"", &small).is_err());
    // An unencrypted ring leaves the bytes as they are.
    let clear = sealed::seal(
        &Keyring::default(),
        SealedKind::ChangeSet,
        b"",
        b"x".to_vec(),
    )
    .unwrap();
    assert_eq!(clear, b"x");
}

#[test]
fn a_stream_sealed_piece_by_piece_opens_as_the_whole_and_is_the_same_layout() {
    let ring = Keyring::new(Some(key(1)), vec![]);
    for len in [0usize, 1, 65_535, 65_536, 65_537, 131_072, 200_000] {
        let plain: Vec<u8> = (0..len).map(|i| (i % 253) as u8).collect();
        for piece in [1usize, 7, 4096, 65_536, 100_000] {
            let (mut w, header) =
                sealed::SealWriter::new(&ring, SealedKind::StagedSnapshot, b"ctx")
                    .unwrap()
                    .unwrap();
            let mut out = header.to_vec();
            for part in plain.chunks(piece) {
                w.push(part, &mut out);
            }
            w.finish(&mut out);
            let whole =
                sealed::seal(&ring, SealedKind::StagedSnapshot, b"ctx", plain.clone()).unwrap();
            assert_eq!(out.len(), whole.len(), "len {len} piece {piece}");
            assert_eq!(
                sealed::open(&ring, SealedKind::StagedSnapshot, b"ctx", &out).unwrap(),
                plain,
                "len {len} piece {piece}"
            );
        }
    }
    assert!(
        sealed::SealWriter::new(&Keyring::default(), SealedKind::StagedSnapshot, b"")
            .unwrap()
            .is_none()
    );
}
