//! What the operating system says: resident memory, disk use, file system.

use std::path::Path;

/// A field of /proc/self/status in bytes (`VmRSS`, `VmHWM`), or 0.
pub fn proc_status_bytes(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

pub fn rss() -> u64 {
    proc_status_bytes("VmRSS")
}

pub fn peak_rss() -> u64 {
    proc_status_bytes("VmHWM")
}

/// Bytes allocated on disk under `path`, as `du` counts them (st_blocks).
pub fn disk_usage(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    let mut total = meta.blocks() * 512;
    if meta.is_dir()
        && let Ok(entries) = std::fs::read_dir(path)
    {
        for entry in entries.flatten() {
            total += disk_usage(&entry.path());
        }
    }
    total
}

/// The mount holding `path` (which must be canonical): its file system
/// type and source device, from /proc/self/mountinfo (the longest mount
/// point that is a prefix of `path`).
pub fn mount_of(path: &Path) -> Option<(String, String)> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mut best: Option<(usize, String, String)> = None;
    for line in info.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(mount_point) = fields.get(4) else {
            continue;
        };
        // Spaces and the like are escaped as octal (`\040`) in mountinfo.
        let mount_point = mount_point.replace("\\040", " ");
        let Some(dash) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        let (Some(fs_type), Some(source)) = (fields.get(dash + 1), fields.get(dash + 2)) else {
            continue;
        };
        if path.starts_with(&mount_point)
            && best
                .as_ref()
                .is_none_or(|(len, _, _)| mount_point.len() >= *len)
        {
            best = Some((mount_point.len(), fs_type.to_string(), source.to_string()));
        }
    }
    best.map(|(_, fs_type, source)| (fs_type, source))
}

/// A field of /proc/meminfo in bytes (`MemTotal`), or 0.
pub fn meminfo_bytes(field: &str) -> u64 {
    let info = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    info.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}
