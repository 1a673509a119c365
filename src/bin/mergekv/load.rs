//! `load`: KEY<TAB>VALUE lines written in large atomic batches.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::time::Instant;

use mergekv::command::validate_keyspace_name;
use mergekv::{Batch, Db, Options};
use serde::Serialize;

use crate::args::LoadArgs;
use crate::error::CliError;
use crate::keys::Target;
use crate::output::Out;
use crate::progress::{Progress, per_second};

/// A batch is written early once its keys and values reach this many bytes,
/// well under the default `batch_bytes_max`.
const BATCH_BYTES_MAX: usize = 32 * 1024 * 1024;

/// Collects puts into batches of up to `batch_ops` operations and writes each
/// batch atomically. A key seen twice in one batch starts a new batch, so
/// the later line wins, as it would line by line.
pub struct Loader<'a> {
    db: &'a Db,
    keyspace: &'a str,
    batch_ops: usize,
    batch: Batch,
    keys: HashSet<Vec<u8>>,
    batch_bytes: usize,
    /// Entries written so far.
    pub loaded: u64,
    /// Batches written so far.
    pub batches: u64,
}

impl<'a> Loader<'a> {
    /// A loader writing into `keyspace` of `db`.
    pub fn new(db: &'a Db, keyspace: &'a str, batch_ops: usize) -> Self {
        Loader {
            db,
            keyspace,
            batch_ops: batch_ops.max(1),
            batch: Batch::new(),
            keys: HashSet::new(),
            batch_bytes: 0,
            loaded: 0,
            batches: 0,
        }
    }

    /// Adds a put, writing the current batch first if it is full.
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> mergekv::Result<()> {
        let size = 1 + self.keyspace.len() + key.len() + value.len();
        let full = self.batch.len() >= self.batch_ops
            || self.batch_bytes + size > BATCH_BYTES_MAX
            || self.keys.contains(key);
        if full {
            self.flush()?;
        }
        self.batch.put_in(self.keyspace, key, value);
        self.keys.insert(key.to_vec());
        self.batch_bytes += size;
        Ok(())
    }

    /// Writes the current batch, if it holds anything.
    pub fn flush(&mut self) -> mergekv::Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.batch);
        let ops = batch.len() as u64;
        self.db.write(batch)?;
        self.loaded += ops;
        self.batches += 1;
        self.keys.clear();
        self.batch_bytes = 0;
        Ok(())
    }
}

/// The input: its reader, its name for messages, and its size if known.
struct Input {
    reader: Box<dyn BufRead>,
    name: String,
    size_bytes: Option<u64>,
}

fn open_input(file: &str) -> Result<Input, CliError> {
    if file == "-" {
        return Ok(Input {
            reader: Box::new(BufReader::new(std::io::stdin())),
            name: "<stdin>".into(),
            size_bytes: None,
        });
    }
    let f =
        File::open(file).map_err(|e| CliError::data(format_args!("cannot open {file}: {e}")))?;
    let size_bytes = f.metadata().ok().map(|m| m.len());
    Ok(Input {
        reader: Box::new(BufReader::with_capacity(1 << 20, f)),
        name: file.to_string(),
        size_bytes,
    })
}

/// A line's key and value.
type KeyValue<'l> = (&'l [u8], &'l [u8]);

/// Splits a line (its line ending, LF or CRLF, dropped) into key and value; `Ok(None)`
/// for a blank line.
fn parse_line(line: &[u8]) -> Result<Option<KeyValue<'_>>, &'static str> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.is_empty() {
        return Ok(None);
    }
    let tab = line
        .iter()
        .position(|&b| b == b'\t')
        .ok_or("no TAB between key and value")?;
    if tab == 0 {
        return Err("empty key");
    }
    Ok(Some((&line[..tab], &line[tab + 1..])))
}

/// Why a line stops the load.
enum BadLine {
    /// It is not KEY<TAB>VALUE.
    Malformed(&'static str),
    /// Its key or value is larger than a limit allows.
    TooLarge {
        /// `key` or `value`.
        what: &'static str,
        /// The limit's name in `Options`.
        limit: &'static str,
        size_bytes: usize,
        max_bytes: usize,
    },
}

impl std::fmt::Display for BadLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BadLine::Malformed(why) => {
                write!(f, "malformed line: {why} (expected KEY<TAB>VALUE)")
            }
            BadLine::TooLarge {
                what,
                limit,
                size_bytes,
                max_bytes,
            } => write!(
                f,
                "{what} too large: {size_bytes} bytes, more than {limit} ({max_bytes})"
            ),
        }
    }
}

/// Checks a line's key and value against the size limits, so that the
/// message can name the line.
fn check_sizes(key: &[u8], value: &[u8], options: &Options) -> Result<(), BadLine> {
    let too_large = |what, limit, size_bytes, max_bytes| BadLine::TooLarge {
        what,
        limit,
        size_bytes,
        max_bytes,
    };
    if key.len() > options.key_size_bytes_max {
        return Err(too_large(
            "key",
            "key_size_bytes_max",
            key.len(),
            options.key_size_bytes_max,
        ));
    }
    if value.len() > options.value_size_bytes_max {
        return Err(too_large(
            "value",
            "value_size_bytes_max",
            value.len(),
            options.value_size_bytes_max,
        ));
    }
    Ok(())
}

/// A line's key and value, checked; `Ok(None)` for a blank line.
fn entry<'l>(line: &'l [u8], options: &Options) -> Result<Option<KeyValue<'l>>, BadLine> {
    let Some((key, value)) = parse_line(line).map_err(BadLine::Malformed)? else {
        return Ok(None);
    };
    check_sizes(key, value, options)?;
    Ok(Some((key, value)))
}

/// Reads every line into `loader`. A bad line stops the load with exit 3,
/// after writing everything before it.
fn read_lines(
    input: &mut Input,
    options: &Options,
    loader: &mut Loader,
    progress: &mut Progress,
) -> Result<u64, CliError> {
    let mut line = Vec::new();
    let (mut number, mut bytes_read) = (0u64, 0u64);
    loop {
        line.clear();
        let n = input
            .reader
            .read_until(b'\n', &mut line)
            .map_err(|e| CliError::data(format_args!("cannot read {}: {e}", input.name)))?;
        if n == 0 {
            return Ok(bytes_read);
        }
        number += 1;
        bytes_read += n as u64;
        match entry(&line, options) {
            Ok(Some((key, value))) => loader.put(key, value)?,
            Ok(None) => {}
            Err(why) => return Err(bad_line(loader, &input.name, number, &why)),
        }
        progress.update(loader.loaded, bytes_read);
    }
}

/// The error for a bad line, after writing the lines before it.
fn bad_line(loader: &mut Loader, name: &str, number: u64, why: &BadLine) -> CliError {
    if let Err(e) = loader.flush() {
        return e.into();
    }
    CliError::data(format_args!(
        "{name}:{number}: {why}; {} entries from the lines before it were loaded",
        loader.loaded
    ))
}

/// Options for a load: `base`, with room for `--batch` operations.
fn load_options(base: Options, batch_ops: usize) -> Options {
    let batch_ops_max = base.batch_ops_max.max(batch_ops);
    base.with_batch_ops_max(batch_ops_max)
}

/// `load`'s object under `--json`.
#[derive(Serialize)]
struct LoadJson {
    loaded: u64,
    batches: u64,
    seconds: f64,
    entries_per_second: f64,
}

/// `mergekv load FILE`.
pub fn load(t: &Target, args: &LoadArgs, out: &mut Out) -> Result<(), CliError> {
    validate_keyspace_name(&args.ks.keyspace, false)?;
    let mut input = open_input(&args.file)?;
    let options = load_options(t.options(), args.batch);
    let db = t.open_with(options.clone())?;
    let started = Instant::now();
    let mut progress = Progress::new(input.size_bytes);
    let mut loader = Loader::new(&db, &args.ks.keyspace, args.batch);
    let bytes_read = read_lines(&mut input, &options, &mut loader, &mut progress)?;
    loader.flush()?;
    progress.finish(loader.loaded, bytes_read);
    let elapsed = started.elapsed();
    let (loaded, batches) = (loader.loaded, loader.batches);
    db.close()?;
    let rate = per_second(loaded, elapsed);
    let secs = elapsed.as_secs_f64();
    if out.json {
        return out.json(&LoadJson {
            loaded,
            batches,
            seconds: secs,
            entries_per_second: rate,
        });
    }
    out.line(format_args!(
        "loaded {loaded} entries in {secs:.2} s ({rate:.0} entries/s)"
    ))
}

#[cfg(test)]
mod tests {
    use super::parse_line;

    #[test]
    fn lines_split_at_the_first_tab() {
        assert_eq!(
            parse_line(b"k\tv\tw\r\n"),
            Ok(Some((&b"k"[..], &b"v\tw"[..])))
        );
        assert_eq!(parse_line(b"k\t\n"), Ok(Some((&b"k"[..], &b""[..]))));
        assert_eq!(parse_line(b"\n"), Ok(None));
        assert!(parse_line(b"novalue\n").is_err());
        assert!(parse_line(b"\tv\n").is_err());
    }
}
