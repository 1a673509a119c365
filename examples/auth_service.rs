//! An auth-protected service: users with passwords, scoped API keys, and
//! secrets encrypted under a master key, all stored in the database.
//!
//! The flow a small web service would follow: an administrator creates a
//! user; the user logs in with a password and gets an API key; every
//! request presents the key and is checked for the scope it needs; the
//! user stores a secret (say, an SMTP password) and reads it back, also
//! after a restart.
//!
//! Run it with `cargo run --example auth_service`.

use mergekv::auth::{
    AuthError, AuthOptions, AuthService, MasterKey, PasswordParams, Scope, Scopes,
};
use mergekv::{Db, Error};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A fresh folder under the system's temporary directory, removed when
    // `scratch` is dropped. A real service would use its own data directory.
    let scratch = tempfile::Builder::new()
        .prefix("mergekv-auth-service-")
        .tempdir()?;
    let data = scratch.path().join("data");

    // The master key encrypts the secrets. Generate it once and keep it
    // outside the database (a key file with mode 0600, a secrets manager):
    // without it the secrets cannot be read.
    let master_key = MasterKey::generate()?;
    let saved_key = master_key.to_hex(); // what you would store; zeroed on drop

    // argon2id at OWASP's costs (the default) takes tens of milliseconds
    // per password in an optimised build. The tiny costs here keep the
    // example fast: production code should keep `AuthOptions::default()`.
    let options = AuthOptions {
        password_params: PasswordParams::INSECURE_FOR_TESTS,
        ..AuthOptions::default()
    };

    {
        let db = Db::open(&data)?;
        let auth = AuthService::open_with(&db, master_key, options.clone())?;

        // An administrator creates a user. Only an argon2id hash is stored.
        auth.create_user("ada", "correct horse battery staple")?;

        // Logging in: a wrong password and an unknown user fail alike.
        let user = auth.verify_password("ada", "correct horse battery staple")?;
        println!("logged in as {} (user id {})", user.name, user.user_id);
        match auth.verify_password("ada", "wrong password") {
            Err(Error::Auth(AuthError::Denied)) => println!("wrong password: denied"),
            other => return Err(format!("a wrong password was not denied: {other:?}").into()),
        }

        // After the login, the user gets an API key that can read and
        // write, valid for 30 days. The token is shown only this once:
        // the database keeps a hash of its secret part.
        let expiry = std::time::Duration::from_secs(30 * 24 * 3600);
        let (key, token) = auth.create_api_key(
            "ada",
            Scopes::of(&[Scope::Read, Scope::Write]),
            Some(expiry),
        )?;
        println!("issued API key {} with scopes {}", key.key_id, key.scopes);

        // Each request presents the token; the service checks it has the
        // scope the request needs.
        let caller = auth.authorize(token.expose(), Scope::Write)?;
        println!("a write request by {} is allowed", caller.user);
        match auth.authorize(token.expose(), Scope::Admin) {
            Err(Error::Auth(AuthError::ScopeMissing { scope, .. })) => {
                println!("an admin request is refused: the key lacks `{scope}`")
            }
            other => return Err(format!("an admin request was allowed: {other:?}").into()),
        }

        // Secrets are encrypted (AES-256-GCM) and bound to their user and
        // name, so a ciphertext cannot be moved to another user or name.
        auth.put_secret(&caller.user, "smtp-password", b"hunter2")?;
        let secret = auth.get_secret(&caller.user, "smtp-password")?;
        assert_eq!(secret.expose(), b"hunter2");
        println!("stored and read back the secret `smtp-password`");

        // Revoking a key refuses it from then on.
        auth.revoke_api_key(&key.key_id)?;
        match auth.authorize(token.expose(), Scope::Read) {
            Err(Error::Auth(AuthError::ApiKeyRevoked { .. })) => println!("revoked key refused"),
            other => return Err(format!("a revoked key was accepted: {other:?}").into()),
        }
        db.close()?;
    }

    // After a restart: the same master key (read back from where it was
    // kept) opens the service again, and the secret is still there.
    let db = Db::open(&data)?;
    let auth = AuthService::open_with(&db, MasterKey::from_hex(&saved_key)?, options)?;
    assert_eq!(
        auth.get_secret("ada", "smtp-password")?.expose(),
        b"hunter2"
    );
    assert!(
        auth.verify_password("ada", "correct horse battery staple")
            .is_ok()
    );
    println!(
        "after a restart: {} user(s), the secret still reads back",
        auth.list_users()?.len()
    );
    Ok(())
}
