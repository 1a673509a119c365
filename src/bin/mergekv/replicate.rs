//! `serve`, `follow` and `promote`: WAL shipping from the command line.
//!
//! Both long-running commands print one status line when something
//! changes (at most once per [`STATUS_INTERVAL`]) and run until
//! interrupted. `follow` also keeps `<dir>/follower-status.json` current,
//! so `mergekv stats` can show a running follower's cursor and lag even
//! though the follower holds the directory lock.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use mergekv::auth::AuthService;
use mergekv::replication::client::{FollowerOptions, FollowerStatus};
use mergekv::replication::server::ReplicationOptions;
use mergekv::replication::{Follower, ReplicationServer};
use mergekv::{Db, Error};
use zeroize::Zeroizing;

use crate::args::{Cli, FollowArgs, ServeArgs};
use crate::auth::master_key;
use crate::error::{CliError, EXIT_DATA, EXIT_USAGE, describe};
use crate::keys::{Target, open_error};
use crate::output::Out;

/// How often the status is looked at.
const STATUS_INTERVAL: Duration = Duration::from_secs(1);
/// The running follower's status file, in its directory.
pub const FOLLOWER_STATUS_FILE: &str = "follower-status.json";
/// Longest token file read.
const TOKEN_FILE_BYTES_MAX: u64 = 4096;

/// `mergekv serve --listen ADDR`.
pub fn serve(cli: &Cli, t: &Target, a: &ServeArgs, out: &mut Out) -> Result<(), CliError> {
    let key = master_key(cli.master_key_file.as_deref())?;
    // Serving only reads: a new, empty database could never have a user
    // with a replicate key, so a missing one is a mistyped --data.
    let db = t.open_with(t.existing_only())?;
    let auth = Arc::new(AuthService::open(&db, key)?);
    #[cfg_attr(not(feature = "tls"), expect(unused_mut, reason = "set only with TLS"))]
    let mut options = ReplicationOptions::new(auth);
    #[cfg(feature = "tls")]
    {
        options.tls = serve_tls(a)?;
    }
    #[cfg(not(feature = "tls"))]
    serve_tls(a)?;
    let server = ReplicationServer::start(&db, a.listen.as_str(), options).map_err(|e| {
        CliError::new(
            EXIT_DATA,
            format_args!("cannot serve on {}: {}", a.listen, describe(&e)),
        )
    })?;
    let over = if a.tls_cert.is_some() {
        "TLS"
    } else {
        "plain TCP"
    };
    out.line(format_args!(
        "serving replication on {} over {over} (stream {}, epoch {:016x}); interrupt to stop",
        server.local_addr(),
        db.node_id(),
        server.epoch()
    ))?;
    out.flush()?;
    let mut shown = String::new();
    loop {
        std::thread::sleep(STATUS_INTERVAL);
        let followers: Vec<String> = server
            .followers()
            .iter()
            .map(|f| format!("{:016x}@{} acked {}", f.follower_id, f.peer, f.acked_seq))
            .collect();
        let line = format!(
            "last_seq {} followers [{}]",
            db.stats().wal.last_seq,
            followers.join(", ")
        );
        if line != shown {
            out.line(&line)?;
            out.flush()?;
            shown = line;
        }
    }
}

/// `mergekv follow --leader ADDR --token-file FILE`.
pub fn follow(t: &Target, a: &FollowArgs, out: &mut Out) -> Result<(), CliError> {
    let token = read_token(&a.token_file)?;
    let mut options = FollowerOptions::new(&a.leader, token.as_str());
    #[cfg(feature = "tls")]
    {
        options.tls = follow_tls(a)?;
    }
    #[cfg(not(feature = "tls"))]
    follow_tls(a)?;
    options.follower_id = a.follower_id;
    // The follower's own files are encrypted with the key given, and it
    // needs the leader's key to open what the leader seals.
    options.db_options = t.options();
    let follower = Follower::open(&t.dir, options).map_err(open_error)?;
    out.line(format_args!(
        "following {} into {} as {:016x}; interrupt to stop",
        a.leader,
        t.dir.display(),
        follower.follower_id()
    ))?;
    out.flush()?;
    let status_path = t.dir.join(FOLLOWER_STATUS_FILE);
    let mut shown = String::new();
    loop {
        let status = follower.status();
        write_status_file(&status_path, &status);
        let line = status_line(&status);
        if line != shown {
            out.line(&line)?;
            out.flush()?;
            shown = line;
        }
        follower.wait_until(STATUS_INTERVAL, |s| {
            s.position.seq != status.position.seq || s.connected != status.connected
        });
    }
}

/// `mergekv promote`.
pub fn promote(t: &Target, out: &mut Out) -> Result<(), CliError> {
    let data = t.dir.as_path();
    // With the keys: the open that forgets the follower's position needs
    // them, and they are checked before the mark is removed.
    let was_follower = Db::promote_with(data, t.options()).map_err(open_error)?;
    let _ = std::fs::remove_file(data.join(FOLLOWER_STATUS_FILE));
    if out.json {
        return out.json(&serde_json::json!({ "promoted": was_follower }));
    }
    if was_follower {
        out.line(format_args!(
            "promoted {}: it is writable and no longer follows",
            data.display()
        ))
    } else {
        out.line(format_args!("{} was not a follower", data.display()))
    }
}

/// The status a running follower last wrote, for `stats`: `None` if there
/// is none, or if the process that wrote it is gone (on a system with
/// `/proc`; elsewhere the file is believed).
pub fn running_follower_status(data: &Path) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(data.join(FOLLOWER_STATUS_FILE)).ok()?;
    let status: serde_json::Value = serde_json::from_str(&text).ok()?;
    let pid = status.get("pid").and_then(serde_json::Value::as_u64);
    let proc_fs = Path::new("/proc/self").exists();
    if let Some(pid) = pid
        && proc_fs
        && !Path::new(&format!("/proc/{pid}")).exists()
    {
        return None;
    }
    Some(status)
}

fn status_line(s: &FollowerStatus) -> String {
    let state = if s.connected {
        "connected"
    } else {
        "reconnecting"
    };
    let error = s
        .last_error
        .as_ref()
        .filter(|_| !s.connected)
        .map(|e| format!(" ({e})"))
        .unwrap_or_default();
    format!(
        "{state}{error}: cursor seq {} of leader seq {}, lag {} seqs {} ms",
        s.position.seq, s.leader_seq, s.lag_seqs, s.lag_ms
    )
}

/// Best effort: the file is a convenience for `stats`, written whole
/// (temp file, rename) so a reader never sees half of it.
fn write_status_file(path: &PathBuf, status: &FollowerStatus) {
    let Ok(mut value) = serde_json::to_value(status) else {
        return;
    };
    // Who wrote it: `stats` believes the file only while that process lives
    // (a follower killed with SIGKILL leaves it behind).
    if let Some(object) = value.as_object_mut() {
        object.insert("pid".into(), std::process::id().into());
    }
    let Ok(json) = serde_json::to_vec_pretty(&value) else {
        return;
    };
    let tmp = path.with_extension("json.tmp");
    if std::fs::write(&tmp, json).is_ok() {
        let _ = std::fs::rename(&tmp, path);
    }
}

fn read_token(path: &Path) -> Result<Zeroizing<String>, CliError> {
    let usage = |what: String| CliError::new(EXIT_USAGE, what);
    let len = std::fs::metadata(path)
        .map_err(|e| usage(format!("cannot read token file {}: {e}", path.display())))?
        .len();
    if len > TOKEN_FILE_BYTES_MAX {
        return Err(usage(format!(
            "token file {} is {len} bytes; a token is far shorter",
            path.display()
        )));
    }
    let text = Zeroizing::new(
        std::fs::read_to_string(path)
            .map_err(|e| usage(format!("cannot read token file {}: {e}", path.display())))?,
    );
    Ok(Zeroizing::new(text.trim().to_string()))
}

/// Opens an existing database for reading: a follower's directory
/// read-only, any other normally.
pub fn open_for_read(t: &Target) -> Result<Db, CliError> {
    match Db::open_with(&t.dir, t.existing_only()) {
        Err(Error::ReadOnly {
            follower_of: Some(_),
            ..
        }) => t.open_with(t.existing_only().with_read_only(true)),
        other => other.map(crate::commands::opened).map_err(open_error),
    }
}

/// Refuses a TLS flag in a build without the `tls` feature.
#[cfg(not(feature = "tls"))]
fn no_tls(given: bool) -> Result<(), CliError> {
    if given {
        return Err(CliError::new(
            EXIT_USAGE,
            "this mergekv was built without the tls feature; the --tls-* flags need it",
        ));
    }
    Ok(())
}

/// The leader's TLS configuration, from `--tls-cert` and `--tls-key`.
#[cfg(feature = "tls")]
fn serve_tls(a: &ServeArgs) -> Result<Option<Arc<rustls::ServerConfig>>, CliError> {
    match (&a.tls_cert, &a.tls_key) {
        (Some(cert), Some(key)) => tls::server_config(cert, key).map(Some),
        _ => Ok(None),
    }
}

#[cfg(not(feature = "tls"))]
fn serve_tls(a: &ServeArgs) -> Result<(), CliError> {
    no_tls(a.tls_cert.is_some() || a.tls_key.is_some())
}

/// The follower's TLS configuration and the name the leader's certificate
/// must carry, from `--tls-ca` and `--tls-server-name`; without TLS, the
/// check that the token may go in clear.
#[cfg(feature = "tls")]
fn follow_tls(a: &FollowArgs) -> Result<Option<(Arc<rustls::ClientConfig>, String)>, CliError> {
    let Some(ca) = &a.tls_ca else {
        allow_plain_tcp(a)?;
        return Ok(None);
    };
    let name = match &a.tls_server_name {
        Some(name) => name.clone(),
        None => host_of(&a.leader).to_string(),
    };
    Ok(Some((tls::client_config(ca)?, name)))
}

#[cfg(not(feature = "tls"))]
fn follow_tls(a: &FollowArgs) -> Result<(), CliError> {
    no_tls(a.tls_ca.is_some() || a.tls_server_name.is_some())?;
    allow_plain_tcp(a)
}

/// The host part of `HOST:PORT` (without an IPv6 address's brackets).
#[cfg_attr(not(feature = "tls"), expect(dead_code, reason = "used with TLS"))]
fn host_of(address: &str) -> &str {
    let host = address.rsplit_once(':').map_or(address, |(host, _)| host);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// A token sent over plain TCP can be read by anyone on the path: allowed
/// to a loopback address (nothing crosses a network), or with
/// `--insecure`; warned about on stderr either way.
///
/// Only a literal loopback address or `localhost` counts: a name resolved
/// now may resolve elsewhere at a reconnect (the follower resolves it
/// again each time), and the token would then leave the machine in clear.
fn allow_plain_tcp(a: &FollowArgs) -> Result<(), CliError> {
    let host = a
        .leader
        .rsplit_once(':')
        .map_or(a.leader.as_str(), |(host, _)| host);
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = bare.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if !loopback && !a.insecure {
        return Err(CliError::new(
            EXIT_USAGE,
            format_args!(
                "refusing to send the API token to {} over plain TCP, where anyone on \
                 the path can read it: give --tls-ca FILE (with a leader serving \
                 --tls-cert/--tls-key), or --insecure to send it in clear anyway",
                a.leader
            ),
        ));
    }
    eprintln!(
        "mergekv: WARNING: no TLS: the API token and all replicated data cross the \
         connection to {} in clear (use --tls-ca FILE)",
        a.leader
    );
    Ok(())
}

/// TLS configurations from PEM files.
#[cfg(feature = "tls")]
mod tls {
    use std::path::Path;
    use std::sync::Arc;

    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use rustls::{ClientConfig, RootCertStore, ServerConfig};

    use crate::error::{CliError, EXIT_USAGE};

    /// A flag's file that cannot be used: a mistake in the command line.
    fn bad_file(flag: &str, path: &Path, why: impl std::fmt::Display) -> CliError {
        CliError::new(EXIT_USAGE, format_args!("{flag} {}: {why}", path.display()))
    }

    /// Ring, like the rest of the crate, chosen explicitly so that no other
    /// provider a dependency enables makes the choice ambiguous.
    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    /// Every certificate in the PEM file `path`; at least one.
    fn certificates(flag: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, CliError> {
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| bad_file(flag, path, e))?;
        if certs.is_empty() {
            return Err(bad_file(flag, path, "no CERTIFICATE in it"));
        }
        Ok(certs)
    }

    /// The leader's configuration: the chain in `cert`, the key in `key`.
    pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, CliError> {
        let chain = certificates("--tls-cert", cert)?;
        let private =
            PrivateKeyDer::from_pem_file(key).map_err(|e| bad_file("--tls-key", key, e))?;
        let config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| bad_file("--tls-cert", cert, e))?
            .with_no_client_auth()
            .with_single_cert(chain, private)
            .map_err(|e| bad_file("--tls-key", key, e))?;
        Ok(Arc::new(config))
    }

    /// The follower's configuration: trust the certificates in `ca` only.
    pub fn client_config(ca: &Path) -> Result<Arc<ClientConfig>, CliError> {
        let mut roots = RootCertStore::empty();
        for cert in certificates("--tls-ca", ca)? {
            roots.add(cert).map_err(|e| bad_file("--tls-ca", ca, e))?;
        }
        let config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| bad_file("--tls-ca", ca, e))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Arc::new(config))
    }
}
