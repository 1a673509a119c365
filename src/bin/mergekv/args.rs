//! The command line, as clap parses it.

use std::path::PathBuf;

use clap::builder::TypedValueParser;
use clap::{Args, Parser, Subcommand};
use mergekv::DEFAULT_KEYSPACE;

/// Operations in one load batch unless `--batch` says otherwise.
pub const LOAD_BATCH_OPS_DEFAULT: usize = 10_000;

/// What `--help` says after the options: the exit codes and where keys
/// come from.
const AFTER_HELP: &str = "\
Keys: an encrypted database opens only with its key, from --key-file FILE or
MERGEKV_KEY (the flag wins); without either, the database must not be encrypted,
and a new database is created encrypted with the key given. While a key rotation
has not finished rewriting the files, the old key too (an open that needs it says
so), from --old-key-file FILE (repeat it for several unfinished rotations) or
MERGEKV_OLD_KEY (one key). The auth master key (user, apikey, serve) comes from
--master-key-file FILE or MERGEKV_MASTER_KEY. All are 32-byte keys written as 64
hex digits (an encryption key file may also hold the 32 raw bytes); `mergekv
keygen` makes one. A key is never given on the command line itself.

Keys and values in text output are escaped so that every line means one thing:
a backslash is \\\\, a tab \\t, a newline \\n, a carriage return \\r, any other
control character or byte that is not valid UTF-8 \\xHH (`\\xff`). With --hex
(get, put, del, incr, scan) keys and values are given and printed as hex digits;
`get --raw` prints the value's exact bytes and nothing else. In JSON a key is
\"key\": \"TEXT\" when it is valid UTF-8, else \"key_hex\": \"HEX\" (always with
--hex); a value likewise \"value\" or \"value_hex\", so any bytes round-trip.
A counter prints as its decimal value (also with --hex), so in text a counter
and bytes spelling the same digits look alike: JSON tells them apart (\"kind\").

Errors: one line `mergekv: error: MESSAGE` on stderr; with --json, also one object
{\"error\": {\"kind\": KIND, \"message\": MESSAGE, \"exit_code\": N}} on stdout,
KIND being not_found, usage, data, denied or read_only.

Exit codes: 0 ok, 1 not found, 2 usage (also a key that cannot be read, or a key
given for a database that is not encrypted), 3 data or I/O error, 4 denied (a
wrong password or token; the database's encryption key not given, or the wrong
one), 5 a write to a follower's directory.";

/// mergekv: an embedded key-value database whose copies merge later.
#[derive(Debug, Parser)]
#[command(name = "mergekv", version, about, long_about = None, after_help = AFTER_HELP)]
pub struct Cli {
    /// The database directory.
    #[arg(
        long,
        global = true,
        value_name = "DIR",
        default_value = "./mergekv-data"
    )]
    pub data: PathBuf,

    /// Machine output: one JSON object per command on stdout (an error
    /// too: see `mergekv --help`).
    #[arg(long, global = true)]
    pub json: bool,

    /// File holding the auth master key (`user`, `apikey`, `serve`).
    #[arg(long, global = true, value_name = "FILE")]
    pub master_key_file: Option<PathBuf>,

    /// File holding the database's encryption key.
    #[arg(long, global = true, value_name = "FILE")]
    pub key_file: Option<PathBuf>,

    /// File holding an old encryption key (during a rotation; repeatable).
    #[arg(long, global = true, value_name = "FILE")]
    pub old_key_file: Vec<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Store VALUE at KEY.
    Put(PutArgs),
    /// Print the value (or counter) at KEY; exit 1 if absent.
    Get(GetArgs),
    /// Delete KEY.
    Del(KeyArgs),
    /// Add DELTA (default 1, may be negative) to the counter at KEY and print it.
    Incr(IncrArgs),
    /// Print entries as KEY<TAB>VALUE lines (escaped), in key order.
    Scan(ScanArgs),
    /// Print figures about the database: its state on disk (keys, WAL,
    /// runs, cursors, follower position). Counters of a running process
    /// (writes, syncs, cache hits since its open) are not shown: this
    /// command opens the database afresh, so they would all be 0.
    Stats(StatsArgs),
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
    /// Manage users (passwords are read from stdin or a prompt).
    #[command(subcommand)]
    User(UserCommand),
    /// Manage API keys.
    #[command(subcommand)]
    Apikey(ApikeyCommand),
    /// Serve this database's WAL to followers (needs the master key, to
    /// check followers' API keys); runs until interrupted.
    Serve(ServeArgs),
    /// Follow a leader into --data (read-only until promoted); runs until
    /// interrupted.
    Follow(FollowArgs),
    /// Make a follower's directory writable again (fail over to it).
    Promote,
    /// Give this copy a new node id (for a clone that an import refused
    /// with an identity conflict; a copied directory gets one by itself).
    Reidentify,
    /// Print a fresh 32-byte key as 64 hex digits (or write it to a new
    /// file): an encryption key, or with --auth an auth master key.
    Keygen(KeygenArgs),
    /// Sync with the other copies in an object store: one round (or one
    /// every DURATION); print what was pushed and pulled.
    Sync(SyncArgs),
    /// Back the database up to an object store, continuously with --every
    /// (its changes and snapshots; `restore` reads them back).
    Backup(BackupArgs),
    /// Make a new database in DIR from an object store, as of now or of
    /// --at TIME.
    Restore(RestoreArgs),
    /// Encrypt the database with the key in --new-key-file (from the key
    /// in --key-file or MERGEKV_KEY, or from none for a database in
    /// clear), rewriting every file now; print what it did.
    Rekey(RekeyArgs),
}

/// What `sync`, `backup` and `restore` say about URLs.
const BUCKET_HELP: &str = "\
URL is s3://BUCKET/PREFIX, gs://BUCKET/PREFIX, az://CONTAINER/PREFIX or
file:///ABSOLUTE/PATH. Credentials and endpoints come from each store's usual
environment variables: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION,
AWS_ENDPOINT_URL, AWS_ALLOW_HTTP=true (for an http:// endpoint);
GOOGLE_SERVICE_ACCOUNT; AZURE_STORAGE_ACCOUNT_NAME, AZURE_STORAGE_ACCOUNT_KEY.
Exit 3 with one line when the store cannot be reached or refuses.";

/// `sync`.
#[derive(Debug, Args)]
#[command(after_help = BUCKET_HELP)]
pub struct SyncArgs {
    /// The bucket.
    pub url: String,
    /// Keep syncing, one round every DURATION (`30s`, `5m`), printing a
    /// status line per round, until interrupted.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub every: Option<std::time::Duration>,
}

/// `backup`.
#[derive(Debug, Args)]
#[command(after_help = BUCKET_HELP)]
pub struct BackupArgs {
    /// The bucket.
    pub url: String,
    /// Keep backing up, one round every DURATION, until interrupted.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub every: Option<std::time::Duration>,
    /// Keep objects and snapshots this long after they are superseded,
    /// so `restore --at` reaches back that far (default 1h).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub retain: Option<std::time::Duration>,
}

/// `restore`.
#[derive(Debug, Args)]
#[command(after_help = BUCKET_HELP)]
pub struct RestoreArgs {
    /// The bucket.
    pub url: String,
    /// The new database's directory (must not hold one).
    pub dir: PathBuf,
    /// Only what was written at or before TIME: milliseconds since the
    /// epoch, or UTC as YYYY-MM-DDTHH:MM:SS[.fff]Z (HLC physical time).
    #[arg(long, value_name = "TIME")]
    pub at: Option<String>,
}

/// `keygen`.
#[derive(Debug, Args)]
#[command(after_help = "\
Both kinds are 32-byte keys written as 64 hex digits. An encryption key is given
with --key-file FILE or MERGEKV_KEY (the old one during a rotation with
--old-key-file FILE or MERGEKV_OLD_KEY, a new one to `rekey --new-key-file FILE`);
an auth master key with --master-key-file FILE or MERGEKV_MASTER_KEY. The key id
(which names a key without revealing it) goes to stderr.")]
pub struct KeygenArgs {
    /// Write the key to FILE (a new file, mode 0600; an existing one is
    /// never overwritten) instead of stdout.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Make an auth master key (for `user`, `apikey` and `serve`) rather
    /// than an encryption key.
    #[arg(long)]
    pub auth: bool,
}

/// `rekey`.
#[derive(Debug, Args)]
pub struct RekeyArgs {
    /// File holding the new key (64 hex digits or 32 raw bytes; `mergekv
    /// keygen --out FILE` makes one). After a crash, run rekey again, with
    /// the same options or with the new key as --key-file too and the old
    /// one as --old-key-file.
    #[arg(long, value_name = "FILE")]
    pub new_key_file: PathBuf,
}

/// What `serve` and `follow` say about TLS.
const TLS_HELP: &str = "\
TLS: with --tls-cert and --tls-key, `serve` speaks only TLS; a follower then
needs --tls-ca (the certificate of the authority that issued the leader's, or
the leader's own), and --tls-server-name when the name in the leader's
certificate is not the host part of --leader. Files are PEM. Without TLS the
API token crosses the network in clear: `follow` refuses to send it over plain
TCP to anything but a loopback address unless --insecure is given, and warns
on stderr whenever it does.";

/// `serve`.
#[derive(Debug, Args)]
#[command(after_help = TLS_HELP)]
pub struct ServeArgs {
    /// Address to listen on, such as 127.0.0.1:7411.
    #[arg(long, value_name = "ADDR", value_parser = parse_address)]
    pub listen: String,
    /// The leader's certificate chain (PEM, the leaf first): serve TLS.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

/// `follow`.
#[derive(Debug, Args)]
#[command(after_help = TLS_HELP)]
pub struct FollowArgs {
    /// The leader's address (HOST:PORT).
    #[arg(long, value_name = "ADDR", value_parser = parse_address)]
    pub leader: String,
    /// A file holding an API key with the replicate scope.
    #[arg(long, value_name = "FILE")]
    pub token_file: PathBuf,
    /// The id to claim at the leader (default: this copy's node id).
    #[arg(long, value_name = "N")]
    pub follower_id: Option<u64>,
    /// Connect with TLS, trusting the certificates in FILE (PEM).
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// The name the leader's certificate must carry (default: the host
    /// part of --leader).
    #[arg(long, value_name = "NAME", requires = "tls_ca")]
    pub tls_server_name: Option<String>,
    /// Send the token over plain TCP to a leader that is not on a loopback
    /// address.
    #[arg(long, conflicts_with = "tls_ca")]
    pub insecure: bool,
}

/// Checks a `HOST:PORT` address (an IPv6 host in brackets): a mistyped
/// one is a usage error, not a failure to bind or connect. The host is
/// resolved later, by the command.
pub fn parse_address(text: &str) -> Result<String, String> {
    if text.parse::<std::net::SocketAddr>().is_ok() {
        return Ok(text.to_string());
    }
    let (host, port) = text
        .rsplit_once(':')
        .ok_or_else(|| format!("{text:?} is not HOST:PORT"))?;
    port.parse::<u16>()
        .map_err(|_| format!("{text:?}: port {port:?} is not a number from 0 to 65535"))?;
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let ipv6 = host.starts_with('[') && host.ends_with(']');
    let valid = if ipv6 {
        bare.parse::<std::net::Ipv6Addr>().is_ok()
    } else {
        !bare.is_empty()
            && bare
                .bytes()
                // `_` too: container and service names often carry one.
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
    };
    if !valid {
        return Err(format!("{text:?}: {host:?} is not a host name or address"));
    }
    Ok(text.to_string())
}

/// `user ...`.
#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create user NAME; the password is read from stdin (one line) or a prompt.
    Add(UserNameArg),
    /// Check NAME's password, read from stdin; exit 0 if right, 4 if denied.
    Verify(UserNameArg),
    /// Delete user NAME, their secrets, and (in effect) their API keys.
    Del(UserNameArg),
    /// List users.
    List,
}

/// A user name.
#[derive(Debug, Args)]
pub struct UserNameArg {
    /// The user name.
    pub name: String,
}

/// `apikey ...`.
#[derive(Debug, Subcommand)]
pub enum ApikeyCommand {
    /// Create a key for USER and print its token (shown this once only).
    Create(ApikeyCreateArgs),
    /// Check a token read from stdin; print its user and scopes; exit 4 if denied.
    Auth,
    /// Revoke the key KEY_ID.
    Revoke(KeyIdArg),
    /// List USER's keys.
    List(UserNameArg),
}

/// `apikey create`.
#[derive(Debug, Args)]
pub struct ApikeyCreateArgs {
    /// The user the key acts for.
    pub user: String,
    /// A scope: read, write, replicate or admin (repeatable; default read).
    #[arg(long = "scope", value_name = "S")]
    pub scopes: Vec<String>,
    /// Expire after DURATION: a number with a unit s, m, h, d or w (`90d`).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub expires_in: Option<std::time::Duration>,
}

/// A key id.
#[derive(Debug, Args)]
pub struct KeyIdArg {
    /// The key id (16 hex characters, as `apikey create` and `apikey list` print it).
    pub key_id: String,
}

/// Parses `90s`, `15m`, `12h`, `30d`, `2w`.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{text:?} has no unit (use s, m, h, d or w)"))?;
    let (number, unit) = text.split_at(split);
    let count: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} does not start with a number"))?;
    let unit_secs: u64 = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(format!("unknown unit {unit:?} (use s, m, h, d or w)")),
    };
    count
        .checked_mul(unit_secs)
        .filter(|&secs| secs > 0)
        .map(std::time::Duration::from_secs)
        .ok_or_else(|| format!("{text:?} must be positive and at most u64 seconds"))
}

/// The keyspace option shared by the key commands.
#[derive(Debug, Args)]
pub struct KeyspaceArg {
    /// The keyspace.
    #[arg(long, short = 'k', value_name = "KS", default_value = DEFAULT_KEYSPACE)]
    pub keyspace: String,
}

/// `--hex`, for the commands that take or print keys and values.
#[derive(Debug, Args)]
pub struct HexArg {
    /// Keys and values (and --prefix, --start, --end) are given as hex
    /// digits, and printed as hex (`ff00` is the bytes 0xff 0x00).
    #[arg(long)]
    pub hex: bool,
}

/// `put`.
#[derive(Debug, Args)]
pub struct PutArgs {
    #[command(flatten)]
    pub ks: KeyspaceArg,
    #[command(flatten)]
    pub hex: HexArg,
    /// The key.
    pub key: String,
    /// The value (may start with '-'); or --value-file.
    #[arg(allow_hyphen_values = true, required_unless_present = "value_file")]
    pub value: Option<String>,
    /// Take the value's exact bytes from FILE ('-' for stdin) instead.
    #[arg(long, value_name = "FILE", conflicts_with = "value")]
    pub value_file: Option<PathBuf>,
}

/// `get`.
#[derive(Debug, Args)]
pub struct GetArgs {
    #[command(flatten)]
    pub ks: KeyspaceArg,
    #[command(flatten)]
    pub hex: HexArg,
    /// The key.
    pub key: String,
    /// Print the value's exact bytes and nothing else (no newline); a
    /// counter as its decimal number. With --hex, the key is still hex.
    #[arg(long)]
    pub raw: bool,
}

/// `stats`.
#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Print Prometheus text (exposition format 0.0.4) instead, e.g. for
    /// node_exporter's textfile collector. Not with --json.
    #[arg(long)]
    pub prometheus: bool,
}

/// `del`.
#[derive(Debug, Args)]
pub struct KeyArgs {
    #[command(flatten)]
    pub ks: KeyspaceArg,
    #[command(flatten)]
    pub hex: HexArg,
    /// The key.
    pub key: String,
}

/// `incr`.
#[derive(Debug, Args)]
pub struct IncrArgs {
    #[command(flatten)]
    pub ks: KeyspaceArg,
    #[command(flatten)]
    pub hex: HexArg,
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
    #[command(flatten)]
    pub hex: HexArg,
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
    /// at the end). DIR must be new, empty, or one an earlier demo left
    /// (its MERGEKV-DEMO file; its files are removed first).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}
