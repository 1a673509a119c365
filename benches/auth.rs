//! The auth service benchmark: password hash time at the default (OWASP)
//! argon2id costs, API-key authentications per second, and secret
//! encrypt/decrypt throughput.
//!
//! Run: `cargo bench --bench auth`. Knobs (environment):
//! - `MERGEKV_BENCH_RUNS`  runs per figure; the median is reported (default 5)
//! - `MERGEKV_BENCH_SECS`  seconds per timed throughput run (default 1)
//!
//! Secrets are written with `SyncMode::Never`, so the figures are the
//! service's own cost (AES-256-GCM, encoding, the in-memory apply), not the
//! disk's; a durable write costs one fdatasync more (see W1 in
//! `docs/BENCHMARKS.md`).

use std::time::{Duration, Instant};

use mergekv::auth::{AuthOptions, AuthService, MasterKey, PasswordParams, Scope, Scopes};
use mergekv::{Db, Options, SyncMode};

const PASSWORD: &str = "correct horse battery staple";
const HASH_SAMPLES: usize = 15;
const API_KEYS: usize = 1_000;
const SECRET_SIZES_BYTES: [usize; 3] = [64, 1024, 64 * 1024];

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// Calls `op` repeatedly for `secs`; returns calls per second.
fn rate(secs: f64, mut op: impl FnMut(usize)) -> f64 {
    let started = Instant::now();
    let deadline = Duration::from_secs_f64(secs);
    let mut calls = 0;
    while started.elapsed() < deadline {
        for _ in 0..64 {
            op(calls);
            calls += 1;
        }
    }
    calls as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    let runs: usize = env_or("MERGEKV_BENCH_RUNS", 5);
    let secs: f64 = env_or("MERGEKV_BENCH_SECS", 1.0);
    let dir = tempfile::tempdir().expect("temp dir");
    let db = Db::open_with(
        dir.path(),
        Options::default().with_sync_mode(SyncMode::Never),
    )
    .expect("open");
    let master = MasterKey::generate().expect("key");
    let auth = AuthService::open_with(&db, master, AuthOptions::default()).expect("auth");
    println!("# auth benchmark: {runs} runs, median reported");
    hash_time(&auth);
    api_key_rate(&auth, runs, secs);
    secret_throughput(&auth, runs, secs);
    raw_cipher(runs, secs);
}

/// The cipher alone (the aes-gcm crate, in place), for scale.
fn raw_cipher(runs: usize, secs: f64) {
    use aes_gcm::aead::{AeadInPlace, KeyInit};
    use aes_gcm::{Aes256Gcm, Key, Nonce};
    let cipher = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&[7; 32]));
    let nonce = Nonce::from_slice(&[1; 12]);
    let size = 64 * 1024;
    let mut buf = vec![0x5a_u8; size];
    let rates: Vec<f64> = (0..runs)
        .map(|_| {
            rate(secs, |_| {
                let tag = cipher
                    .encrypt_in_place_detached(nonce, b"aad", &mut buf)
                    .expect("encrypt");
                std::hint::black_box(tag);
            })
        })
        .collect();
    let mib = median(rates) * size as f64 / (1024.0 * 1024.0);
    println!("raw AES-256-GCM encrypt, 64 KiB in place: {mib:.0} MiB/s");
}

fn hash_time(auth: &AuthService) {
    let p = PasswordParams::OWASP;
    let started = Instant::now();
    auth.create_user("bench", PASSWORD).expect("create");
    let create_ms = started.elapsed().as_secs_f64() * 1e3;
    let mut verify_ms = Vec::new();
    let mut unknown_ms = Vec::new();
    for _ in 0..HASH_SAMPLES {
        let started = Instant::now();
        auth.verify_password("bench", PASSWORD).expect("verify");
        verify_ms.push(started.elapsed().as_secs_f64() * 1e3);
        let started = Instant::now();
        let _ = auth.verify_password("nobody", PASSWORD);
        unknown_ms.push(started.elapsed().as_secs_f64() * 1e3);
    }
    println!(
        "password hash (argon2id m={} KiB t={} p={}): create {create_ms:.1} ms, verify median {:.1} ms, unknown user median {:.1} ms",
        p.memory_kib,
        p.passes,
        p.lanes,
        median(verify_ms),
        median(unknown_ms)
    );
}

fn api_key_rate(auth: &AuthService, runs: usize, secs: f64) {
    let scopes = Scopes::of(&[Scope::Read]);
    let tokens: Vec<String> = (0..API_KEYS)
        .map(|_| {
            let (_, token) = auth.create_api_key("bench", scopes, None).expect("key");
            token.expose().to_string()
        })
        .collect();
    let good: Vec<f64> = (0..runs)
        .map(|_| {
            rate(secs, |i| {
                auth.authenticate_api_key(&tokens[i % API_KEYS])
                    .expect("auth");
            })
        })
        .collect();
    let wrong: Vec<String> = tokens
        .iter()
        .map(|t| format!("{}0", &t[..t.len() - 1]))
        .collect();
    let bad: Vec<f64> = (0..runs)
        .map(|_| {
            rate(secs, |i| {
                let _ = auth.authenticate_api_key(&wrong[i % API_KEYS]);
            })
        })
        .collect();
    println!(
        "API key authentication ({API_KEYS} keys, 1 thread): {:.0}/s valid, {:.0}/s wrong secret",
        median(good),
        median(bad)
    );
}

fn secret_throughput(auth: &AuthService, runs: usize, secs: f64) {
    for size in SECRET_SIZES_BYTES {
        let value = vec![0x5a_u8; size];
        let puts: Vec<f64> = (0..runs)
            .map(|_| {
                rate(secs, |i| {
                    auth.put_secret("bench", &format!("s{}", i % 1000), &value)
                        .expect("put");
                })
            })
            .collect();
        let gets: Vec<f64> = (0..runs)
            .map(|_| {
                rate(secs, |i| {
                    auth.get_secret("bench", &format!("s{}", i % 1000))
                        .expect("get");
                })
            })
            .collect();
        let (put, get) = (median(puts), median(gets));
        let mib = |ops: f64| ops * size as f64 / (1024.0 * 1024.0);
        println!(
            "secret {size:>6} B: encrypt+store {put:>8.0}/s ({:>6.1} MiB/s), read+decrypt {get:>8.0}/s ({:>6.1} MiB/s)",
            mib(put),
            mib(get)
        );
    }
}
