//! `sync`, `backup` and `restore`: copies through an object store.

use std::time::Duration;

use mergekv::bucket::{Bucket, BucketOptions, SyncReport, Transfer};
use mergekv::error::BucketError;

use crate::args::{BackupArgs, RestoreArgs, SyncArgs};
use crate::error::{CliError, EXIT_DATA, EXIT_USAGE, describe};
use crate::keys::Target;
use crate::output::Out;

/// The exit code and one line for a bucket error: 3 when the store cannot
/// be reached or refuses (or holds bad data), 2 for a bad URL.
fn bucket_error(error: mergekv::Error) -> CliError {
    match &error {
        mergekv::Error::Bucket(BucketError::Url { .. }) => {
            CliError::new(EXIT_USAGE, describe(&error))
        }
        mergekv::Error::Bucket(_) => CliError::new(EXIT_DATA, describe(&error)),
        _ => error.into(),
    }
}

fn open_bucket(url: &str, options: BucketOptions) -> Result<Bucket, CliError> {
    Ok(Bucket::open(url)
        .map_err(bucket_error)?
        .with_options(options))
}

fn transfer(t: &Transfer) -> String {
    format!(
        "{} objects, {} changes, {} bytes",
        t.objects, t.changes, t.bytes
    )
}

fn report_lines(r: &SyncReport) -> Vec<String> {
    let mut lines = vec![
        format!("pushed: {}", transfer(&r.pushed)),
        format!("pulled: {} ({} applied)", transfer(&r.pulled), r.applied),
        format!(
            "copies: {}; requests: {} list, {} get, {} put, {} delete ({} retried)",
            r.copies,
            r.requests.list,
            r.requests.get,
            r.requests.put,
            r.requests.delete,
            r.requests.retried
        ),
    ];
    if let Some(s) = &r.snapshot_published {
        lines.push(format!("snapshot published: {}", transfer(s)));
    }
    if r.snapshots_imported > 0 {
        lines.push(format!("started from {} snapshot(s)", r.snapshots_imported));
    }
    if r.deleted > 0 {
        lines.push(format!("collected: {} objects", r.deleted));
    }
    for node in &r.silent {
        lines.push(format!(
            "silent past the horizon, no longer waited for: {node}"
        ));
    }
    if r.delete_failed > 0 {
        lines.push(format!(
            "deletes refused by the store: {} (tried again next round)",
            r.delete_failed
        ));
    }
    for what in &r.unreadable {
        lines.push(format!("unreadable head, skipped: {what}"));
    }
    for node in &r.unclaimed {
        lines.push(format!(
            "ignored a head whose copy never claimed its id: {node}"
        ));
    }
    lines
}

fn status_line(round: u64, r: &SyncReport) -> String {
    format!(
        "round {round}: pushed {}/{}/{}B pulled {}/{}/{}B copies {}{}",
        r.pushed.objects,
        r.pushed.changes,
        r.pushed.bytes,
        r.pulled.objects,
        r.pulled.changes,
        r.pulled.bytes,
        r.copies,
        if r.silent.is_empty() {
            String::new()
        } else {
            format!(" silent {}", r.silent.len())
        }
    )
}

/// Whether `--every` goes on after this error (the store may come back)
/// or stops (a clone, a copy that must start afresh: no retry fixes them).
fn transient(error: &mergekv::Error) -> bool {
    matches!(
        error,
        mergekv::Error::Bucket(
            BucketError::Unreachable { .. }
                | BucketError::MissingObject { .. }
                | BucketError::Tampered { .. }
                | BucketError::Malformed { .. }
        )
    )
}

fn rounds(
    out: &mut Out,
    every: Option<Duration>,
    mut round: impl FnMut() -> mergekv::Result<SyncReport>,
) -> Result<(), CliError> {
    let Some(every) = every else {
        let report = round().map_err(bucket_error)?;
        if out.json {
            return out.json(&report);
        }
        for line in report_lines(&report) {
            out.line(line)?;
        }
        return Ok(());
    };
    for n in 1u64.. {
        match round() {
            Ok(report) if out.json => out.json(&report)?,
            Ok(report) => out.line(status_line(n, &report))?,
            Err(e) if transient(&e) => {
                eprintln!("mergekv: round {n} failed, retrying: {}", describe(&e))
            }
            Err(e) => return Err(bucket_error(e)),
        }
        out.flush()?;
        std::thread::sleep(every);
    }
    Ok(())
}

/// `mergekv sync URL [--every DURATION]`.
pub fn sync(t: &Target, a: &SyncArgs, out: &mut Out) -> Result<(), CliError> {
    let bucket = open_bucket(&a.url, BucketOptions::default())?;
    let db = t.open()?;
    rounds(out, a.every, || bucket.sync(&db))?;
    db.close()?;
    Ok(())
}

/// `mergekv backup URL [--every DURATION] [--retain DURATION]`.
pub fn backup(t: &Target, a: &BackupArgs, out: &mut Out) -> Result<(), CliError> {
    let mut options = BucketOptions::default();
    if let Some(retain) = a.retain {
        options.retain_ms = retain.as_millis().try_into().unwrap_or(u64::MAX);
    }
    let bucket = open_bucket(&a.url, options)?;
    let db = t.open_with(t.existing_only())?;
    rounds(out, a.every, || bucket.backup(&db))?;
    db.close()?;
    Ok(())
}

/// `mergekv restore URL DIR [--at TIME]`.
pub fn restore(t: &Target, a: &RestoreArgs, out: &mut Out) -> Result<(), CliError> {
    let at_ms =
        a.at.as_deref()
            .map(parse_time)
            .transpose()
            .map_err(|e| CliError::new(EXIT_USAGE, e))?;
    let bucket = open_bucket(&a.url, BucketOptions::default())?;
    let (db, report) = bucket
        .restore(&a.dir, t.options(), at_ms)
        .map_err(bucket_error)?;
    db.close()?;
    if out.json {
        return out.json(&report);
    }
    out.line(format_args!(
        "restored into {}: {}",
        a.dir.display(),
        transfer(&report.pulled)
    ))?;
    if let Some(s) = &report.snapshot {
        out.line(format_args!("from snapshot {s}"))?;
    }
    if let Some(at) = report.at_ms {
        out.line(format_args!(
            "as of {at} ms since the epoch (writes stamped later left out)"
        ))?;
    }
    Ok(())
}

/// A time for `restore --at`: milliseconds since the epoch, or UTC as
/// `YYYY-MM-DDTHH:MM:SS[.fff]Z`.
pub fn parse_time(text: &str) -> Result<u64, String> {
    if let Ok(ms) = text.parse::<u64>() {
        return Ok(ms);
    }
    let bad =
        || format!("{text:?}: expected ms since the epoch or YYYY-MM-DDTHH:MM:SS[.fff]Z (UTC)");
    let t = text.strip_suffix('Z').ok_or_else(bad)?;
    let (date, time) = t.split_once('T').ok_or_else(bad)?;
    let d: Vec<&str> = date.split('-').collect();
    let (time, frac) = time.split_once('.').unwrap_or((time, ""));
    let h: Vec<&str> = time.split(':').collect();
    if d.len() != 3 || h.len() != 3 || frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let num = |s: &str| s.parse::<i64>().map_err(|_| bad());
    let (y, m, day) = (num(d[0])?, num(d[1])?, num(d[2])?);
    let (hh, mm, ss) = (num(h[0])?, num(h[1])?, num(h[2])?);
    if !(1..=12).contains(&m)
        || !(1..=31).contains(&day)
        || hh > 23
        || mm > 59
        || ss > 60
        || y < 1970
    {
        return Err(bad());
    }
    let ms_frac = if frac.is_empty() {
        0
    } else {
        num(&format!("{frac:0<3}"))?
    };
    // Days from the civil date (proleptic Gregorian), 1970-01-01 = 0.
    let (y, m) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hh * 3600 + mm * 60 + ss;
    u64::try_from(secs * 1000 + ms_frac).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::parse_time;

    #[test]
    fn times_parse() {
        assert_eq!(parse_time("0"), Ok(0));
        assert_eq!(parse_time("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(parse_time("2000-03-01T00:00:00Z"), Ok(951_868_800_000));
        assert_eq!(parse_time("2026-12-03T12:30:05.25Z"), Ok(1_796_301_005_250));
        assert!(parse_time("2026-13-03T12:30:05Z").is_err());
        assert!(parse_time("yesterday").is_err());
        assert!(parse_time("2026-12-03 12:30:05").is_err());
    }
}
