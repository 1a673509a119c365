//! The command line, as clap parses it.

use std::path::PathBuf;

use clap::builder::TypedValueParser;
use clap::{Args, Parser, Subcommand};
use mergekv::DEFAULT_KEYSPACE;

/// Operations in one load batch unless `--batch` says otherwise.
pub const LOAD_BATCH_OPS_DEFAULT: usize = 10_000;

/// mergekv: an embedded key-value database whose copies merge later.
#[derive(Debug, Parser)]
#[command(name = "mergekv", version, about, long_about = None)]
pub struct Cli {
    /// The database directory.
    #[arg(
        long,
        global = true,
        value_name = "DIR",
        default_value = "./mergekv-data"
    )]
    pub data: PathBuf,

    /// Machine output: one JSON object per command on stdout.
    #[arg(long, global = true)]
    pub json: bool,

    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Store VALUE at KEY.
    Put(PutArgs),
    /// Print the value (or counter) at KEY; exit 1 if absent.
    Get(KeyArgs),
    /// Delete KEY.
    Del(KeyArgs),
    /// Add DELTA (default 1, may be negative) to the counter at KEY and print it.
    Incr(IncrArgs),
    /// Print entries as KEY<TAB>VALUE lines, in key order.
    Scan(ScanArgs),
    /// Print figures about the database.
    Stats,
    /// Write a snapshot now and drop the WAL it covers; print what it did.
    Compact,
    /// Write a change set of everything after CURSOR to FILE; print the new cursor.
    Export(ExportArgs),
    /// Import a change set from FILE; print applied / stale / duplicate counts.
    Import(ImportArgs),
    /// Print the state digest (equal on two copies exactly when their states are).
    Digest,
    /// Check every file of the database; exit 3 if any is damaged.
    Verify(VerifyArgs),
    /// Load KEY<TAB>VALUE lines from FILE ('-' for stdin) in large batches.
    Load(LoadArgs),
    /// Walk through what mergekv does, step by step.
    Demo(DemoArgs),
}

/// The keyspace option shared by the key commands.
#[derive(Debug, Args)]
pub struct KeyspaceArg {
    /// The keyspace.
    #[arg(long, short = 'k', value_name = "KS", default_value = DEFAULT_KEYSPACE)]
    pub keyspace: String,
}

/// `put`.
#[derive(Debug, Args)]
pub struct PutArgs {
    #[command(flatten)]
    pub ks: KeyspaceArg,
    /// The key.
    pub key: String,
    /// The value (may start with '-').
    #[arg(allow_hyphen_values = true)]
    pub value: String,
}

/// `get` and `del`.
#[derive(Debug, Args)]
pub struct KeyArgs {
    #[command(flatten)]
    pub ks: KeyspaceArg,
    /// The key.
    pub key: String,
}

/// `incr`.
#[derive(Debug, Args)]
pub struct IncrArgs {
    #[command(flatten)]
    pub ks: KeyspaceArg,
    /// The counter's key.
    pub key: String,
    /// What to add (negative to subtract).
    #[arg(allow_negative_numbers = true, default_value_t = 1)]
    pub delta: i64,
}

/// `scan`.
#[derive(Debug, Args)]
pub struct ScanArgs {
    #[command(flatten)]
    pub ks: KeyspaceArg,
    /// Only keys starting with P.
    #[arg(long, value_name = "P")]
    pub prefix: Option<String>,
    /// Only keys at or after A.
    #[arg(long, value_name = "A")]
    pub start: Option<String>,
    /// Only keys before B.
    #[arg(long, value_name = "B")]
    pub end: Option<String>,
    /// Descending key order.
    #[arg(long)]
    pub reverse: bool,
    /// At most N entries.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
}

/// `verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Cut the WAL at the damage (saving what is dropped in quarantine/),
    /// report what was dropped, and verify again.
    #[arg(long)]
    pub repair: bool,
}

/// `export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// What the receiver already has, as printed by a previous export
    /// (`physical.logical@node,...`); everything if absent.
    #[arg(long, value_name = "CURSOR")]
    pub since: Option<String>,
    /// Where to write the change set.
    pub file: std::path::PathBuf,
}

/// `import`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The change set file.
    pub file: std::path::PathBuf,
}

/// `load`.
#[derive(Debug, Args)]
pub struct LoadArgs {
    #[command(flatten)]
    pub ks: KeyspaceArg,
    /// The file of KEY<TAB>VALUE lines; '-' reads stdin.
    #[arg(allow_hyphen_values = true)]
    pub file: String,
    /// Operations per atomic batch.
    #[arg(long, value_name = "N", default_value_t = LOAD_BATCH_OPS_DEFAULT,
          value_parser = clap::value_parser!(u32).range(1..).map(|n| n as usize))]
    pub batch: usize,
}

/// `demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Run in DIR and keep it (default: a fresh temporary directory, removed
    /// at the end).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}
