//! The CLI's error: an exit code and a one-line message.

use std::fmt::Display;
use std::io;
use std::path::Path;

/// Exit code: the key is absent.
pub const EXIT_NOT_FOUND: u8 = 1;
/// Exit code: bad usage (clap's own usage errors exit 2 as well).
pub const EXIT_USAGE: u8 = 2;
/// Exit code: damaged data, or an I/O failure.
pub const EXIT_DATA: u8 = 3;
/// Exit code: a password or token was refused, or the database's
/// encryption key was not given (or a wrong one was).
pub const EXIT_DENIED: u8 = 4;
/// Exit code: a write to a follower's directory (read-only until promoted).
pub const EXIT_READ_ONLY: u8 = 5;

/// Why a command did not succeed.
#[derive(Debug)]
pub struct CliError {
    /// The process exit code.
    pub code: u8,
    /// One line, printed as `mergekv: error: <message>`; empty for a silent
    /// exit (stdout closed by the reader).
    pub message: String,
    /// True when the command's own JSON object on stdout already says
    /// what failed (`get`'s `"found": false`, `verify`'s `"ok": false`),
    /// so `--json` adds no error object after it.
    pub in_output: bool,
}

impl CliError {
    /// An error with exit code `code`; newlines in `message` become spaces.
    pub fn new(code: u8, message: impl Display) -> Self {
        let message = message.to_string().replace(['\r', '\n'], " ");
        CliError {
            code,
            message,
            in_output: false,
        }
    }

    /// This error, marked as already told by the command's JSON object.
    pub fn told_in_output(self) -> Self {
        CliError {
            in_output: true,
            ..self
        }
    }

    /// The name of the exit code's kind, for `--json` errors.
    pub fn kind(&self) -> &'static str {
        match self.code {
            EXIT_NOT_FOUND => "not_found",
            EXIT_USAGE => "usage",
            EXIT_DENIED => "denied",
            EXIT_READ_ONLY => "read_only",
            _ => "data",
        }
    }

    /// `{"error": {"kind", "message", "exit_code"}}`, the object `--json`
    /// prints on stdout for a failure.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "error": {
                "kind": self.kind(),
                "message": self.message,
                "exit_code": self.code,
            }
        })
    }

    /// Exit 1: the key is absent.
    pub fn not_found(message: impl Display) -> Self {
        Self::new(EXIT_NOT_FOUND, message)
    }

    /// Exit 3: the data or the disk is at fault.
    pub fn data(message: impl Display) -> Self {
        Self::new(EXIT_DATA, message)
    }

    /// Exit 3: `path` holds no database, and the command only reads, so it
    /// must not create one there (a mistyped `--data` would otherwise be
    /// answered from a new, empty database).
    pub fn no_database(path: &Path) -> Self {
        Self::data(format_args!("no mergekv database at {}", path.display()))
    }

    /// A failed write to stdout. A closed pipe (`mergekv scan | head`) ends
    /// the program quietly and successfully.
    pub fn stdout(error: io::Error) -> Self {
        if error.kind() == io::ErrorKind::BrokenPipe {
            return CliError {
                code: 0,
                message: String::new(),
                in_output: false,
            };
        }
        Self::data(format_args!("cannot write to stdout: {error}"))
    }
}

impl From<mergekv::Error> for CliError {
    fn from(error: mergekv::Error) -> Self {
        use mergekv::Error as E;
        if let E::NotADatabase { dir } = &error {
            return Self::no_database(dir);
        }
        let code = match &error {
            E::Auth(auth) => auth_exit_code(auth),
            E::Key(key) => key_exit_code(key),
            E::ReadOnly { .. } => EXIT_READ_ONLY,
            E::InvalidKeyspace { .. }
            | E::InvalidCommand { .. }
            | E::LimitExceeded { .. }
            | E::CounterOverflow { .. } => EXIT_USAGE,
            // `is_data_or_io()` (Io, Corruption, Poisoned), Locked, Closed,
            // ClockDrift, Decode, and anything added later.
            _ => EXIT_DATA,
        };
        Self::new(code, describe(&error))
    }
}

/// The one-line message for a library error.
pub fn describe(error: &mergekv::Error) -> String {
    match error {
        // Each command opens the database afresh, so a poison it meets is
        // its own first failure: name that failure (operation, file, OS
        // error) first, not as "an earlier failure".
        mergekv::Error::Poisoned { cause } => format!(
            "{cause}; writes stopped there (fail-stop), and everything acknowledged \
             before it is kept"
        ),
        _ => error.to_string(),
    }
}

/// A key that was needed and not given (or not the right one) is refused
/// like a wrong password: the data is fine, the caller lacks the secret. A
/// key that cannot be read, or one given for a database in clear, is a
/// mistake in the command line.
fn key_exit_code(error: &mergekv::KeyError) -> u8 {
    match error {
        mergekv::KeyError::Missing { .. } => EXIT_DENIED,
        _ => EXIT_USAGE,
    }
}

fn auth_exit_code(error: &mergekv::auth::AuthError) -> u8 {
    use mergekv::auth::AuthError as A;
    match error {
        e if e.is_denial() => EXIT_DENIED,
        A::UnknownUser { .. } | A::UnknownApiKey { .. } | A::SecretNotFound { .. } => {
            EXIT_NOT_FOUND
        }
        A::DecryptFailed { .. } | A::RandomnessUnavailable { .. } => EXIT_DATA,
        // Names, policies, master key mistakes: the caller can fix them.
        _ => EXIT_USAGE,
    }
}
