//! WAL shipping over TLS: a leader with a certificate for "localhost"
//! issued by a CA made in the test, and followers that trust that CA,
//! another CA, or nothing (plain TCP).
#![cfg(feature = "tls")]

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use mergekv::replication::client::{Follower, FollowerOptions};
use mergekv::replication::server::{ReplicationOptions, ReplicationServer};
use mergekv::{Batch, Db, Options, SyncMode};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// Long enough for a loaded 2-core machine; the waits end as soon as the
/// condition holds.
const CONVERGE: Duration = Duration::from_secs(60);

/// The name on the leader's certificate, and the one followers ask for.
const SERVER_NAME: &str = "localhost";

/// A certificate authority made for one test.
struct Ca {
    cert: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).unwrap().der().clone();
        Ca {
            cert,
            issuer: Issuer::new(params, key),
        }
    }

    /// A leaf certificate for `name` signed by this CA, with its key.
    fn issue(&self, name: &str) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![name.to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.signed_by(&key, &self.issuer).unwrap().der().clone();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        (cert, key)
    }

    /// A leader's TLS configuration: a certificate for [`SERVER_NAME`]
    /// issued by this CA, the chain ending at the CA.
    fn server_config(&self) -> Arc<ServerConfig> {
        let (cert, key) = self.issue(SERVER_NAME);
        let config = ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![cert, self.cert.clone()], key)
            .unwrap();
        Arc::new(config)
    }

    /// A follower's TLS configuration that trusts this CA and nothing else.
    fn client_config(&self) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.cert.clone()).unwrap();
        let config = ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        Arc::new(config)
    }
}

struct Leader {
    _dir: tempfile::TempDir,
    db: Db,
    _auth: Arc<common::ReplicationAuthority>,
    server: ReplicationServer,
    token: String,
}

/// A leader serving replication over TLS with `config`, and a token with
/// the Replicate scope.
fn tls_leader(config: Arc<ServerConfig>) -> Leader {
    tls_leader_with(config, |_| {})
}

fn tls_leader_with(
    config: Arc<ServerConfig>,
    tweak: impl FnOnce(&mut ReplicationOptions),
) -> Leader {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open_with(
        dir.path(),
        Options::default().with_sync_mode(SyncMode::Never),
    )
    .unwrap();
    let (auth, token) = common::replication_auth(&db);
    let mut options = ReplicationOptions::new(auth.clone());
    options.heartbeat_interval_ms = 50;
    // Small batches, so the catch-up is many TLS writes with ACKs coming
    // back (read without blocking) in between.
    options.batch_bytes_target = 16 * 1024;
    options.tls = Some(config);
    tweak(&mut options);
    let server = ReplicationServer::start(&db, "127.0.0.1:0", options).unwrap();
    Leader {
        _dir: dir,
        db,
        _auth: auth,
        server,
        token,
    }
}

impl Leader {
    fn addr(&self) -> String {
        self.server.local_addr().to_string()
    }

    fn last_seq(&self) -> u64 {
        self.db.stats().wal.last_seq
    }
}

/// A follower of `leader`, over TLS with `tls` (a client configuration
/// and the server name to check) or over plain TCP.
fn follow(dir: &Path, leader: &Leader, tls: Option<Arc<ClientConfig>>) -> Follower {
    let mut options = FollowerOptions::new(leader.addr(), leader.token.clone());
    options.db_options.sync_mode = SyncMode::Never;
    options.backoff_initial_ms = 10;
    options.backoff_max_ms = 200;
    options.idle_timeout_ms = 2_000;
    options.tls = tls.map(|config| (config, SERVER_NAME.to_string()));
    Follower::open(dir, options).unwrap()
}

/// Waits for the follower to hold everything the leader has written.
fn converge(follower: &Follower, leader: &Leader) {
    let target = leader.last_seq();
    assert!(
        follower.wait_for_seq(target, CONVERGE),
        "follower stuck at {:?}, leader at {target}",
        follower.status()
    );
    assert_eq!(follower.db().digest().unwrap(), leader.db.digest().unwrap());
}

fn put_many(db: &Db, prefix: &str, count: usize) {
    for chunk in (0..count).collect::<Vec<_>>().chunks(500) {
        let mut batch = Batch::new();
        for i in chunk {
            batch.put(format!("{prefix}{i:06}"), format!("value {i}"));
        }
        db.write(batch).unwrap();
    }
}

/// Waits for a connection attempt to fail, then checks that nothing got
/// through; returns the error the follower reported.
fn refused(follower: &Follower, leader: &Leader) -> String {
    assert!(
        follower.wait_until(CONVERGE, |s| s.last_error.is_some()),
        "no error reported: {:?}",
        follower.status()
    );
    let status = follower.status();
    assert_eq!(status.batches_applied, 0, "{status:?}");
    assert_eq!(status.snapshots_installed, 0, "{status:?}");
    assert!(!status.connected, "{status:?}");
    assert_eq!(follower.db().stats().keys, 0);
    assert_eq!(follower.db().get("k000000").unwrap(), None);
    assert!(leader.server.followers().is_empty());
    status.last_error.unwrap_or_default()
}

#[test]
fn a_follower_over_tls_catches_up_then_streams() {
    let ca = Ca::new("mergekv test CA");
    let leader = tls_leader(ca.server_config());
    put_many(&leader.db, "k", 3_000);
    let dir = tempfile::tempdir().unwrap();
    let follower = follow(dir.path(), &leader, Some(ca.client_config()));
    converge(&follower, &leader);
    let status = follower.status();
    assert!(status.batches_applied > 5, "{status:?}");
    assert_eq!(follower.db().stats().keys, leader.db.stats().keys);
    assert_eq!(
        follower.db().get("k002999").unwrap().as_deref(),
        Some(&b"value 2999"[..])
    );
    assert_eq!(leader.server.followers().len(), 1);

    // Streaming over the same session: puts, deletes and counters.
    for i in 0..100 {
        leader.db.increment("hits", i).unwrap();
        leader.db.delete(format!("k{i:06}")).unwrap();
        leader.db.put(format!("new{i}"), "x").unwrap();
    }
    put_many(&leader.db, "late", 1_000);
    converge(&follower, &leader);
    assert_eq!(
        follower.db().counter("hits").unwrap(),
        (0..100).sum::<i64>()
    );
    assert_eq!(follower.db().get("k000000").unwrap(), None);
    assert_eq!(
        follower.db().get("new99").unwrap().as_deref(),
        Some(&b"x"[..])
    );
    let status = follower.status();
    assert_eq!(status.lag_seqs, 0, "{status:?}");
    assert_eq!(status.connects, 1, "one TLS session throughout: {status:?}");
    assert_eq!(status.last_error, None, "{status:?}");
}

#[test]
fn a_follower_that_trusts_another_ca_is_refused() {
    let ca = Ca::new("mergekv test CA");
    let leader = tls_leader(ca.server_config());
    put_many(&leader.db, "k", 100);
    let other = Ca::new("some other CA");
    let dir = tempfile::tempdir().unwrap();
    let follower = follow(dir.path(), &leader, Some(other.client_config()));
    let error = refused(&follower, &leader);
    assert!(
        error.to_lowercase().contains("certificate"),
        "the error names the certificate: {error}"
    );
    // Refused during the handshake, before the HELLO went out.
    assert_eq!(follower.status().connects, 0);
}

#[test]
fn a_plaintext_follower_gets_nothing_from_a_tls_leader() {
    let ca = Ca::new("mergekv test CA");
    let leader = tls_leader(ca.server_config());
    put_many(&leader.db, "k", 100);
    let dir = tempfile::tempdir().unwrap();
    let follower = follow(dir.path(), &leader, None);
    refused(&follower, &leader);
}

#[test]
fn a_leader_that_never_answers_the_handshake_is_given_up_on() {
    // Accepts a connection and reads it until the follower closes it,
    // without a word back.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let silent = std::thread::spawn(move || {
        let (mut socket, _) = listener.accept().unwrap();
        std::io::copy(&mut socket, &mut std::io::sink()).unwrap_or(0)
    });
    let ca = Ca::new("mergekv test CA");
    let dir = tempfile::tempdir().unwrap();
    let mut options = FollowerOptions::new(addr, "some token");
    options.db_options.sync_mode = SyncMode::Never;
    options.connect_timeout_ms = 300;
    options.tls = Some((ca.client_config(), SERVER_NAME.to_string()));
    let follower = Follower::open(dir.path(), options).unwrap();
    assert!(
        follower.wait_until(CONVERGE, |s| s.last_error.is_some()),
        "still waiting for the handshake: {:?}",
        follower.status()
    );
    let status = follower.status();
    let error = status.last_error.clone().unwrap_or_default();
    assert!(error.contains("TLS handshake"), "{error}");
    assert_eq!(status.connects, 0, "{status:?}");
    follower.stop();
    let received = silent.join().unwrap();
    assert!(received > 0, "the ClientHello reached the silent peer");
}

/// A TLS handshake record header announcing `len` bytes, then that many
/// bytes: what a peer trickles to hold a handshake open.
fn trickled_tls_record(len: u16) -> Vec<u8> {
    let mut record = vec![0x16, 0x03, 0x03];
    record.extend_from_slice(&len.to_be_bytes());
    record.extend(std::iter::repeat_n(0u8, usize::from(len)));
    record
}

#[test]
fn a_client_hello_trickled_a_byte_at_a_time_is_cut_off_at_the_handshake_deadline() {
    let ca = Ca::new("mergekv test CA");
    let leader = tls_leader_with(ca.server_config(), |o| o.handshake_timeout_ms = 300);
    // rustls waits for the whole record, reading it in as many reads as
    // it takes; 16 KiB at 20 ms a byte would take minutes.
    let record = trickled_tls_record(16 * 1024);
    let mut socket = std::net::TcpStream::connect(leader.addr()).unwrap();
    let sent = common::trickle_until_closed(&mut socket, &record, Duration::from_millis(20));
    assert!(sent < record.len());
    assert!(common::wait_for(CONVERGE, || leader
        .server
        .stats()
        .handshakes_pending
        == 0));
    // A real follower still gets in.
    put_many(&leader.db, "k", 10);
    let dir = tempfile::tempdir().unwrap();
    let follower = follow(dir.path(), &leader, Some(ca.client_config()));
    converge(&follower, &leader);
}

#[test]
fn a_leader_that_trickles_its_handshake_is_given_up_on() {
    // Accepts a connection and answers the ClientHello a byte every 20 ms
    // (for minutes), until the follower closes it.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let trickler = std::thread::spawn(move || {
        use std::io::Write;
        let (mut socket, _) = listener.accept().unwrap();
        for byte in trickled_tls_record(16 * 1024) {
            if socket.write_all(&[byte]).is_err() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    });
    let ca = Ca::new("mergekv test CA");
    let dir = tempfile::tempdir().unwrap();
    let mut options = FollowerOptions::new(addr, "some token");
    options.db_options.sync_mode = SyncMode::Never;
    options.connect_timeout_ms = 300;
    options.backoff_initial_ms = 60_000;
    options.backoff_max_ms = 60_000;
    options.tls = Some((ca.client_config(), SERVER_NAME.to_string()));
    let follower = Follower::open(dir.path(), options).unwrap();
    assert!(
        follower.wait_until(CONVERGE, |s| s.last_error.is_some()),
        "still in the trickled handshake: {:?}",
        follower.status()
    );
    let error = follower.status().last_error.unwrap_or_default();
    assert!(error.contains("TLS handshake"), "{error}");
    assert_eq!(follower.status().connects, 0);
    follower.stop();
    assert!(
        trickler.join().unwrap(),
        "the follower closed the connection"
    );
}
