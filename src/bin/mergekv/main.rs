//! `mergekv`: the command-line program.
//!
//! Exit codes: 0 ok, 1 not found, 2 usage (a key that cannot be read, or
//! one given for a database in clear, included), 3 data or I/O error, 4 a
//! password or token refused, or the database's encryption key not given
//! (or a wrong one), 5 a write to a read-only follower. Every failure
//! prints one line on stderr: `mergekv: error: <message>`.

mod args;
mod auth;
#[cfg(feature = "object-store")]
mod bucket;
mod commands;
mod demo;
mod encryption;
mod error;
mod files;
mod keys;
mod load;
mod output;
mod progress;
mod replicate;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

/// Reports a panic (a bug) on one line instead of a trace.
fn one_line_panics() {
    std::panic::set_hook(Box::new(|info| {
        let what = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        let place = info
            .location()
            .map(|l| format!(" at {l}"))
            .unwrap_or_default();
        let line = format!("internal error (a bug): {what}{place}").replace('\n', " ");
        let _ = writeln!(std::io::stderr(), "mergekv: error: {line}");
    }));
}

fn main() -> ExitCode {
    one_line_panics();
    // Usage errors, --help and --version exit here (2 for errors).
    let cli = args::Cli::parse();
    match commands::run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if !e.message.is_empty() {
                let _ = writeln!(std::io::stderr(), "mergekv: error: {}", e.message);
            }
            ExitCode::from(e.code)
        }
    }
}
