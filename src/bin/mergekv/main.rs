//! `mergekv`: the command-line program.
//!
//! Exit codes: 0 ok, 1 not found, 2 usage (a key that cannot be read, or
//! one given for a database in clear, included), 3 data or I/O error, 4 a
//! password or token refused, or the database's encryption key not given
//! (or a wrong one), 5 a write to a read-only follower. Every failure
//! prints one line on stderr: `mergekv: error: <message>`; with `--json`,
//! also one object on stdout: `{"error": {"kind", "message",
//! "exit_code"}}`, unless the command's own object already says it.

mod args;
mod auth;
#[cfg(feature = "object-store")]
mod bucket;
mod bytes;
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

/// True if `--json` is among the arguments, for a command line clap
/// refused (and so could not say whether it was given).
fn json_asked() -> bool {
    std::env::args_os()
        .skip(1)
        .take_while(|a| a != "--")
        .any(|a| a == "--json")
}

/// Prints a failure: the line on stderr, and with `--json` the error
/// object on stdout.
fn report(error: &error::CliError, json: bool) {
    if error.message.is_empty() {
        return;
    }
    let _ = writeln!(std::io::stderr(), "mergekv: error: {}", error.message);
    if json && !error.in_output {
        let _ = writeln!(std::io::stdout(), "{}", error.to_json());
    }
}

fn main() -> ExitCode {
    one_line_panics();
    let cli = match args::Cli::try_parse() {
        Ok(cli) => cli,
        // --help and --version, and usage errors without --json, as clap
        // prints them (exit 2 for errors).
        Err(e) if !e.use_stderr() || !json_asked() => e.exit(),
        Err(e) => {
            let _ = e.print();
            let text = e.to_string();
            let first = text.lines().next().unwrap_or("bad usage");
            let usage =
                error::CliError::new(error::EXIT_USAGE, first.trim_start_matches("error: "));
            let _ = writeln!(std::io::stdout(), "{}", usage.to_json());
            return ExitCode::from(error::EXIT_USAGE);
        }
    };
    match commands::run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            report(&e, cli.json);
            ExitCode::from(e.code)
        }
    }
}
