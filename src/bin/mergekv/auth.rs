//! `user` and `apikey`: the auth service on the command line.
//!
//! Passwords and tokens are read from stdin (one line) or, on a terminal,
//! from a prompt that does not echo; never from the arguments, which other
//! users can see in the process list. The master key comes from
//! `--master-key-file` or the `MERGEKV_MASTER_KEY` environment variable.

use std::io::{BufRead, IsTerminal, Read};
use std::path::Path;

use mergekv::Db;
use mergekv::auth::{ApiKeyInfo, AuthService, MasterKey, Scope, Scopes, UserInfo};
use serde::Serialize;
use zeroize::Zeroizing;

use crate::args::{ApikeyCommand, ApikeyCreateArgs, Cli, UserCommand};
use crate::error::{CliError, EXIT_USAGE};
use crate::keys::Target;
use crate::output::Out;

/// The environment variable holding the master key as 64 hex characters.
pub const MASTER_KEY_ENV: &str = "MERGEKV_MASTER_KEY";
/// Longest line read from stdin for a password or token; anything longer is
/// refused (the service's own limits are far below this).
const SECRET_LINE_BYTES_MAX: u64 = 64 * 1024;

#[derive(Serialize)]
struct UserJson<'a> {
    user: &'a str,
    user_id: &'a str,
    created_ms: u64,
    password_changed_ms: u64,
}

impl<'a> From<&'a UserInfo> for UserJson<'a> {
    fn from(u: &'a UserInfo) -> Self {
        UserJson {
            user: &u.name,
            user_id: &u.user_id,
            created_ms: u.created_ms,
            password_changed_ms: u.password_changed_ms,
        }
    }
}

#[derive(Serialize)]
struct KeyJson<'a> {
    key_id: &'a str,
    user: &'a str,
    scopes: Vec<&'static str>,
    created_ms: u64,
    expires_ms: Option<u64>,
    revoked: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<&'a str>,
}

impl<'a> KeyJson<'a> {
    fn new(k: &'a ApiKeyInfo, token: Option<&'a str>) -> Self {
        KeyJson {
            key_id: &k.key_id,
            user: &k.user,
            scopes: k.scopes.iter().map(Scope::name).collect(),
            created_ms: k.created_ms,
            expires_ms: k.expires_ms,
            revoked: k.revoked,
            token,
        }
    }
}

#[derive(Serialize)]
struct DoneJson<'a> {
    ok: bool,
    action: &'static str,
    target: &'a str,
}

/// `mergekv user ...`.
pub fn user(cli: &Cli, t: &Target, command: &UserCommand, out: &mut Out) -> Result<(), CliError> {
    let writes = matches!(command, UserCommand::Add(_) | UserCommand::Del(_));
    let (db, auth) = open_service(cli, t, writes)?;
    match command {
        UserCommand::Add(a) => {
            let password = read_secret_line("Password for the new user: ", true)?;
            let info = auth.create_user(&a.name, password.as_bytes())?;
            close(db, auth)?;
            print_user(out, "created user", &info)
        }
        UserCommand::Verify(a) => {
            let password = read_secret_line("Password: ", false)?;
            let info = auth.verify_password(&a.name, password.as_bytes())?;
            close(db, auth)?;
            print_user(out, "ok: user", &info)
        }
        UserCommand::Del(a) => {
            auth.delete_user(&a.name)?;
            close(db, auth)?;
            print_done(out, "deleted user", &a.name)
        }
        UserCommand::List => {
            let users = auth.list_users()?;
            for info in &users {
                if out.json {
                    out.json(&UserJson::from(info))?;
                } else {
                    out.line(&info.name)?;
                }
            }
            Ok(())
        }
    }
}

/// `mergekv apikey ...`.
pub fn apikey(
    cli: &Cli,
    t: &Target,
    command: &ApikeyCommand,
    out: &mut Out,
) -> Result<(), CliError> {
    let writes = matches!(command, ApikeyCommand::Create(_) | ApikeyCommand::Revoke(_));
    let (db, auth) = open_service(cli, t, writes)?;
    match command {
        ApikeyCommand::Create(a) => create_key(db, auth, a, out),
        ApikeyCommand::Auth => {
            let token = read_secret_line("API token: ", false)?;
            let info = auth.authenticate_api_key(token.trim())?;
            if out.json {
                return out.json(&KeyJson::new(&info, None));
            }
            out.line(format_args!("{} {}", info.user, info.scopes))
        }
        ApikeyCommand::Revoke(a) => {
            auth.revoke_api_key(&a.key_id)?;
            close(db, auth)?;
            print_done(out, "revoked key", &a.key_id)
        }
        ApikeyCommand::List(a) => {
            for info in auth.list_api_keys(&a.name)? {
                if out.json {
                    out.json(&KeyJson::new(&info, None))?;
                } else {
                    out.line(key_line(&info))?;
                }
            }
            Ok(())
        }
    }
}

fn create_key(
    db: Db,
    auth: AuthService,
    a: &ApikeyCreateArgs,
    out: &mut Out,
) -> Result<(), CliError> {
    let mut scopes = Vec::new();
    for name in &a.scopes {
        scopes.push(name.parse::<Scope>()?);
    }
    if scopes.is_empty() {
        scopes.push(Scope::Read);
    }
    let (info, token) = auth.create_api_key(&a.user, Scopes::of(&scopes), a.expires_in)?;
    close(db, auth)?;
    if out.json {
        return out.json(&KeyJson::new(&info, Some(token.expose())));
    }
    // The token alone on stdout, so `TOKEN=$(mergekv apikey create ...)`
    // works; what it is goes to stderr.
    eprintln!("{}", key_line(&info));
    out.line(token.expose())
}

fn key_line(k: &ApiKeyInfo) -> String {
    let expires = k
        .expires_ms
        .map_or_else(|| "never".to_string(), |ms| format!("{ms}"));
    let status = if k.revoked { " revoked" } else { "" };
    format!(
        "key {} user {} scopes {} expires_ms {expires}{status}",
        k.key_id, k.user, k.scopes
    )
}

fn print_user(out: &mut Out, what: &str, info: &UserInfo) -> Result<(), CliError> {
    if out.json {
        return out.json(&UserJson::from(info));
    }
    out.line(format_args!("{what} {}", info.name))
}

fn print_done(out: &mut Out, action: &'static str, target: &str) -> Result<(), CliError> {
    if out.json {
        return out.json(&DoneJson {
            ok: true,
            action,
            target,
        });
    }
    out.line(format_args!("{action} {target}"))
}

/// Reads the master key first (the encryption keys in `t` are read
/// already), so that a missing key creates nothing. Only a command that
/// `writes` creates the database if there is none: a read must not leave a
/// new database behind (with this master key registered).
fn open_service(cli: &Cli, t: &Target, writes: bool) -> Result<(Db, AuthService), CliError> {
    let key = master_key(cli.master_key_file.as_deref())?;
    let options = t.options().with_create_if_missing(writes);
    let db = t.open_with(options)?;
    let auth = AuthService::open(&db, key)?;
    Ok((db, auth))
}

fn close(db: Db, auth: AuthService) -> Result<(), CliError> {
    drop(auth);
    Ok(db.close()?)
}

/// The master key from `file`, else from the environment.
pub fn master_key(file: Option<&Path>) -> Result<MasterKey, CliError> {
    let text = match file {
        Some(path) => Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
            CliError::new(
                EXIT_USAGE,
                format_args!("cannot read master key file {}: {e}", path.display()),
            )
        })?),
        None => Zeroizing::new(std::env::var(MASTER_KEY_ENV).map_err(|_| {
            CliError::new(
                EXIT_USAGE,
                format_args!(
                    "no master key: set {MASTER_KEY_ENV} to 64 hex characters or pass --master-key-file FILE"
                ),
            )
        })?),
    };
    Ok(MasterKey::from_hex(&text)?)
}

/// One line from stdin, or from a no-echo prompt when stdin is a terminal
/// (asked twice when `confirm`). The line ending is removed.
fn read_secret_line(prompt: &str, confirm: bool) -> Result<Zeroizing<String>, CliError> {
    if std::io::stdin().is_terminal() {
        let first = prompt_no_echo(prompt)?;
        if confirm && *prompt_no_echo("Repeat it: ")? != *first {
            return Err(CliError::new(EXIT_USAGE, "the two entries differ"));
        }
        return Ok(first);
    }
    let mut line = Zeroizing::new(String::new());
    let read = std::io::stdin()
        .lock()
        .take(SECRET_LINE_BYTES_MAX)
        .read_line(&mut line)
        .map_err(|e| CliError::new(EXIT_USAGE, format_args!("cannot read stdin: {e}")))?;
    if read == 0 {
        return Err(CliError::new(
            EXIT_USAGE,
            "nothing on stdin (expected one line)",
        ));
    }
    if line.len() as u64 >= SECRET_LINE_BYTES_MAX && !line.ends_with('\n') {
        return Err(CliError::new(
            EXIT_USAGE,
            format_args!("the line on stdin is longer than {SECRET_LINE_BYTES_MAX} bytes"),
        ));
    }
    let trimmed_len = line.trim_end_matches(['\n', '\r']).len();
    line.truncate(trimmed_len);
    Ok(line)
}

fn prompt_no_echo(prompt: &str) -> Result<Zeroizing<String>, CliError> {
    rpassword::prompt_password(prompt)
        .map(Zeroizing::new)
        .map_err(|e| CliError::new(EXIT_USAGE, format_args!("cannot read the prompt: {e}")))
}
