//! The `mergekv` command-line program, through the built binary: output
//! formats, exit codes (0 ok, 1 not found, 2 usage, 3 data or I/O, 4
//! denied), load, verify and repair, locking, encryption keys, and the
//! demo.

#![cfg(feature = "cli")]

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value as Json;

/// The outcome of one run of the binary.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn from(output: Output) -> Run {
        Run {
            code: output.status.code().expect("killed by a signal"),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Asserts the exit code, showing both streams otherwise.
    fn expect(self, code: i32) -> Run {
        assert_eq!(
            self.code, code,
            "exit code\n--- stdout:\n{}\n--- stderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }

    fn json(&self) -> Json {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("not one JSON object ({e}): {:?}", self.stdout))
    }

    fn lines(&self) -> Vec<&str> {
        self.stdout.lines().collect()
    }

    /// The error message is one `mergekv: error:` line, with no panic.
    fn assert_one_line_error(&self) {
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "stderr: {:?}", self.stderr);
        assert!(lines[0].starts_with("mergekv: error: "), "{}", lines[0]);
        assert!(!self.stderr.contains("panicked"), "{}", self.stderr);
    }
}

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mergekv"))
}

/// Runs `mergekv --data DIR ARGS...`.
fn mkv(dir: &Path, args: &[&str]) -> Run {
    Run::from(bin().arg("--data").arg(dir).args(args).output().unwrap())
}

/// Runs `mergekv --data DIR ARGS...` with `input` on stdin.
fn mkv_stdin(dir: &Path, args: &[&str], input: &[u8]) -> Run {
    let mut child = bin()
        .arg("--data")
        .arg(dir)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    Run::from(child.wait_with_output().unwrap())
}

fn db_dir() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("db");
    (tmp, dir)
}

/// The highest-numbered WAL segment of a database.
fn last_segment(dir: &Path) -> PathBuf {
    let mut segments: Vec<PathBuf> = std::fs::read_dir(dir.join("wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name.starts_with("wal-") && name.ends_with(".seg")
        })
        .collect();
    segments.sort();
    segments.pop().expect("no segment")
}

#[test]
fn put_get_round_trip() {
    let (_tmp, dir) = db_dir();
    let put = mkv(&dir, &["put", "greeting", "hello world"]).expect(0);
    assert_eq!(put.stdout, "", "put is silent in text mode");
    assert_eq!(
        mkv(&dir, &["get", "greeting"]).expect(0).stdout,
        "hello world\n"
    );
    // Values may start with '-'; the latest put wins.
    mkv(&dir, &["put", "greeting", "-1"]).expect(0);
    assert_eq!(mkv(&dir, &["get", "greeting"]).expect(0).stdout, "-1\n");
}

#[test]
fn default_data_dir_is_under_the_working_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| Run::from(bin().current_dir(tmp.path()).args(args).output().unwrap());
    run(&["put", "k", "v"]).expect(0);
    assert!(tmp.path().join("mergekv-data").join("wal").is_dir());
    assert_eq!(run(&["get", "k"]).expect(0).stdout, "v\n");
}

#[test]
fn get_of_a_missing_key_exits_1() {
    let (_tmp, dir) = db_dir();
    mkv(&dir, &["put", "something", "else"]).expect(0);
    let run = mkv(&dir, &["get", "nothing"]).expect(1);
    assert_eq!(run.stdout, "");
    assert!(run.stderr.contains("not found"), "{}", run.stderr);
}

#[test]
fn del_then_get_exits_1() {
    let (_tmp, dir) = db_dir();
    mkv(&dir, &["put", "k", "v"]).expect(0);
    assert_eq!(mkv(&dir, &["del", "k"]).expect(0).stdout, "");
    mkv(&dir, &["get", "k"]).expect(1);
}

#[test]
fn incr_prints_the_new_value() {
    let (_tmp, dir) = db_dir();
    assert_eq!(mkv(&dir, &["incr", "hits"]).expect(0).stdout, "1\n");
    assert_eq!(mkv(&dir, &["incr", "hits", "10"]).expect(0).stdout, "11\n");
    assert_eq!(mkv(&dir, &["incr", "hits", "-15"]).expect(0).stdout, "-4\n");
    // `get` on a counter prints the counter.
    assert_eq!(mkv(&dir, &["get", "hits"]).expect(0).stdout, "-4\n");
}

#[test]
fn keyspaces_are_isolated() {
    let (_tmp, dir) = db_dir();
    mkv(&dir, &["put", "--keyspace", "users", "ada", "Ada"]).expect(0);
    mkv(&dir, &["put", "-k", "orders", "ada", "3 engines"]).expect(0);
    mkv(&dir, &["get", "ada"]).expect(1);
    let users = mkv(&dir, &["get", "--keyspace", "users", "ada"]).expect(0);
    assert_eq!(users.stdout, "Ada\n");
    let orders = mkv(&dir, &["get", "--keyspace", "orders", "ada"]).expect(0);
    assert_eq!(orders.stdout, "3 engines\n");
    mkv(&dir, &["del", "-k", "users", "ada"]).expect(0);
    mkv(&dir, &["get", "-k", "users", "ada"]).expect(1);
    mkv(&dir, &["get", "-k", "orders", "ada"]).expect(0);
}

#[test]
fn scan_bounds_order_and_limit() {
    let (_tmp, dir) = db_dir();
    let input = b"apple\t1\napricot\t2\navocado\t3\nbanana\t4\nblueberry\t5\ncherry\t6\n";
    mkv_stdin(&dir, &["load", "-"], input).expect(0);
    mkv(&dir, &["del", "avocado"]).expect(0);
    mkv(&dir, &["incr", "counter", "7"]).expect(0);
    mkv(&dir, &["put", "-k", "other", "apple", "x"]).expect(0);
    let scan = |args: &[&str]| {
        let mut all = vec!["scan"];
        all.extend_from_slice(args);
        mkv(&dir, &all).expect(0).stdout
    };
    assert_eq!(
        scan(&[]),
        "apple\t1\napricot\t2\nbanana\t4\nblueberry\t5\ncherry\t6\ncounter\t7\n"
    );
    assert_eq!(scan(&["--prefix", "a"]), "apple\t1\napricot\t2\n");
    assert_eq!(
        scan(&["--start", "b", "--end", "c"]),
        "banana\t4\nblueberry\t5\n"
    );
    assert_eq!(
        scan(&["--start", "banana"]).lines().next(),
        Some("banana\t4")
    );
    assert_eq!(scan(&["--end", "apricot"]), "apple\t1\n");
    assert_eq!(
        scan(&["--reverse", "--limit", "3"]),
        "counter\t7\ncherry\t6\nblueberry\t5\n"
    );
    assert_eq!(
        scan(&["--prefix", "b", "--reverse"]),
        "blueberry\t5\nbanana\t4\n"
    );
    assert_eq!(scan(&["--limit", "0"]), "");
    assert_eq!(scan(&["-k", "other"]), "apple\tx\n");
}

#[test]
fn stats_prints_keys_and_node_id() {
    let (_tmp, dir) = db_dir();
    mkv(&dir, &["put", "a", "1"]).expect(0);
    mkv(&dir, &["put", "b", "2"]).expect(0);
    mkv(&dir, &["incr", "c"]).expect(0);
    mkv(&dir, &["del", "b"]).expect(0);
    let stats = mkv(&dir, &["stats"]).expect(0);
    let field = |name: &str| {
        let prefix = format!("{name}: ");
        stats
            .lines()
            .iter()
            .find_map(|l| l.strip_prefix(&prefix).map(str::to_string))
            .unwrap_or_else(|| panic!("no {name} in {}", stats.stdout))
    };
    assert_eq!(field("keys"), "2");
    assert_eq!(field("counters"), "1");
    assert_eq!(field("tombstones"), "1");
    assert_eq!(field("last_seq"), "4");
    assert_eq!(field("node_id").len(), 16);
    assert_eq!(field("keyspaces"), "1");
    assert_eq!(field("keys[default]"), "2");
    for name in [
        "segments",
        "wal_bytes",
        "synced_seq",
        "hlc",
        "dedup_entries",
        "runs",
        "cursors",
        "poisoned",
    ] {
        field(name);
    }
    // Counters since open and this process's options would say only 0
    // and the CLI's defaults: `stats` opens the database afresh.
    for name in ["frames_written", "groups_written", "syncs", "sync_mode"] {
        assert!(
            !stats
                .lines()
                .iter()
                .any(|l| l.starts_with(&format!("{name}: "))),
            "{name} is this process's, not the database's:\n{}",
            stats.stdout
        );
    }
    let json = mkv(&dir, &["--json", "stats"]).expect(0).json();
    assert_eq!(json["keys"], 2);
    assert_eq!(json["keys_by_keyspace"]["default"], 2);
    assert_eq!(json["node_id"].as_str(), Some(field("node_id").as_str()));
    assert_eq!(json["wal"]["last_seq"], 4);
    assert_eq!(
        json["wal"]["segments"],
        field("segments").parse::<u64>().unwrap()
    );
    for (section, name) in [
        (None, "sync_mode"),
        (None, "drift"),
        (Some("wal"), "frames_written"),
        (Some("wal"), "syncs"),
        (Some("compactor"), "cache_hits"),
        (Some("compactor"), "compactions"),
    ] {
        let object = section.map_or(&json, |s| &json[s]);
        assert!(object.get(name).is_none(), "{name} in {json}");
    }
}

#[test]
fn stats_prometheus_prints_the_state_as_exposition_text() {
    let (_tmp, dir) = db_dir();
    mkv(&dir, &["put", "a", "1"]).expect(0);
    mkv(&dir, &["put", "-k", "users", "ada", "x"]).expect(0);
    let value = |run: &Run, sample: &str| -> f64 {
        run.lines()
            .iter()
            .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {sample} in {}", run.stdout))
    };
    let first = mkv(&dir, &["stats", "--prometheus"]).expect(0);
    assert_eq!(value(&first, "mergekv_keys"), 2.0);
    assert_eq!(
        value(&first, r#"mergekv_keyspace_keys{keyspace="users"}"#),
        1.0
    );
    assert_eq!(value(&first, "mergekv_wal_last_seq"), 2.0);
    let mut typed = std::collections::BTreeSet::new();
    for line in first.lines() {
        if let Some(t) = line.strip_prefix("# TYPE ") {
            let (name, kind) = t.split_once(' ').unwrap();
            assert_eq!(kind, "gauge", "no counters from a fresh open: {line}");
            typed.insert(name.to_string());
        } else if !line.starts_with("# HELP ") {
            let name = line.split(['{', ' ']).next().unwrap();
            assert!(typed.contains(name), "{name} before its TYPE");
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }
    mkv(&dir, &["put", "b", "2"]).expect(0);
    let second = mkv(&dir, &["stats", "--prometheus"]).expect(0);
    assert_eq!(value(&second, "mergekv_keys"), 3.0);
    assert_eq!(value(&second, "mergekv_wal_last_seq"), 3.0);
    // A usage error (how errors are printed under --json is not this
    // test's business), and no half output.
    let both = mkv(&dir, &["--json", "stats", "--prometheus"]).expect(2);
    assert!(!both.stdout.contains("mergekv_"), "{}", both.stdout);
}

#[test]
fn json_output_is_one_object_per_command() {
    let (_tmp, dir) = db_dir();
    let put = mkv(&dir, &["--json", "put", "k", "v"]).expect(0).json();
    assert_eq!(put["outcome"], "applied");
    assert_eq!(put["seq"], 1);
    assert!(
        put["stamp"].as_str().is_some_and(|s| s.contains('@')),
        "{put}"
    );
    // --json is global: it may come after the subcommand too.
    let incr = mkv(&dir, &["incr", "n", "-3", "--json"]).expect(0).json();
    assert_eq!(
        (incr["outcome"].as_str(), incr["counter"].as_i64()),
        (Some("applied"), Some(-3))
    );
    let get = mkv(&dir, &["--json", "get", "k"]).expect(0).json();
    assert_eq!(
        (
            get["found"].as_bool(),
            get["kind"].as_str(),
            get["value"].as_str()
        ),
        (Some(true), Some("bytes"), Some("v"))
    );
    let counter = mkv(&dir, &["--json", "get", "n"]).expect(0).json();
    assert_eq!(
        (counter["kind"].as_str(), counter["value"].as_i64()),
        (Some("counter"), Some(-3))
    );
    let missing = mkv(&dir, &["--json", "get", "zz"]).expect(1).json();
    assert_eq!(missing["found"], false);
    let scan = mkv(&dir, &["--json", "scan"]).expect(0).json();
    assert_eq!(scan["count"], 2);
    assert_eq!(scan["entries"][0]["key"], "k");
    assert_eq!(scan["entries"][1]["value"], -3);
    let del = mkv(&dir, &["--json", "del", "k"]).expect(0).json();
    assert_eq!(del["outcome"], "removed");
    let verify = mkv(&dir, &["--json", "verify"]).expect(0).json();
    assert_eq!(
        (verify["ok"].as_bool(), verify["frames"].as_u64()),
        (Some(true), Some(3))
    );
    let load = mkv_stdin(&dir, &["--json", "load", "-"], b"x\t1\n")
        .expect(0)
        .json();
    assert_eq!(load["loaded"], 1);
}

#[test]
fn load_from_a_file_and_from_stdin() {
    let (tmp, dir) = db_dir();
    let file = tmp.path().join("data.tsv");
    let mut text = String::new();
    for i in 0..2500 {
        text.push_str(&format!("key-{i:05}\tvalue {i}\n"));
    }
    std::fs::write(&file, text).unwrap();
    let load = mkv(&dir, &["load", file.to_str().unwrap(), "--batch", "1000"]).expect(0);
    assert!(
        load.stdout.starts_with("loaded 2500 entries in "),
        "{}",
        load.stdout
    );
    assert!(
        load.stdout.trim_end().ends_with("entries/s)"),
        "{}",
        load.stdout
    );
    assert_eq!(
        load.stderr, "",
        "no progress bar when stderr is not a terminal"
    );
    assert_eq!(mkv(&dir, &["scan"]).expect(0).lines().len(), 2500);
    assert_eq!(
        mkv(&dir, &["get", "key-01234"]).expect(0).stdout,
        "value 1234\n"
    );
    // Stdin: CRLF endings, blank lines, tabs inside values, a key repeated
    // within one batch (the later line wins).
    let input = b"s1\tone\r\n\ns2\ttwo\tparts\ns1\tuno\n";
    let json = mkv_stdin(&dir, &["--json", "load", "-"], input)
        .expect(0)
        .json();
    assert_eq!(json["loaded"], 3);
    assert_eq!(
        mkv(&dir, &["scan", "--prefix", "s"]).expect(0).stdout,
        // A tab inside a value is escaped, so each line splits at one tab.
        "s1\tuno\ns2\ttwo\\tparts\n"
    );
    assert_eq!(mkv(&dir, &["scan"]).expect(0).lines().len(), 2502);
}

#[test]
fn a_malformed_load_line_exits_3_naming_file_and_line() {
    let (tmp, dir) = db_dir();
    let file = tmp.path().join("bad.tsv");
    std::fs::write(&file, "a\t1\nb\t2\nno tab here\nc\t3\n").unwrap();
    let run = mkv(&dir, &["load", file.to_str().unwrap()]).expect(3);
    run.assert_one_line_error();
    assert!(run.stderr.contains("bad.tsv:3"), "{}", run.stderr);
    // The lines before the bad one were loaded; the ones after were not.
    mkv(&dir, &["get", "b"]).expect(0);
    mkv(&dir, &["get", "c"]).expect(1);
    let stdin = mkv_stdin(&dir, &["load", "-"], b"d\t4\n\tempty key\n").expect(3);
    assert!(stdin.stderr.contains("<stdin>:2"), "{}", stdin.stderr);
    let missing = mkv(
        &dir,
        &["load", tmp.path().join("nope.tsv").to_str().unwrap()],
    )
    .expect(3);
    assert!(missing.stderr.contains("nope.tsv"), "{}", missing.stderr);
}

#[test]
fn a_too_large_load_line_names_the_limit_not_a_malformed_line() {
    let (tmp, dir) = db_dir();
    let limits = mergekv::Options::default();
    let value_bytes = limits.value_size_bytes_max + 1;
    let file = tmp.path().join("big.tsv");
    let mut text = b"a\t1\nbig\t".to_vec();
    text.resize(text.len() + value_bytes, b'x');
    text.extend_from_slice(b"\nc\t3\n");
    std::fs::write(&file, text).unwrap();
    let run = mkv(&dir, &["load", file.to_str().unwrap()]).expect(3);
    run.assert_one_line_error();
    let expected = format!(
        "big.tsv:2: value too large: {value_bytes} bytes, more than value_size_bytes_max ({})",
        limits.value_size_bytes_max
    );
    assert!(run.stderr.contains(&expected), "{}", run.stderr);
    assert!(!run.stderr.contains("malformed"), "{}", run.stderr);
    mkv(&dir, &["get", "a"]).expect(0);
    mkv(&dir, &["get", "c"]).expect(1);

    let key_bytes = limits.key_size_bytes_max + 1;
    let mut line = vec![b'k'; key_bytes];
    line.extend_from_slice(b"\tv\n");
    let run = mkv_stdin(&dir, &["load", "-"], &line).expect(3);
    let expected = format!(
        "<stdin>:1: key too large: {key_bytes} bytes, more than key_size_bytes_max ({})",
        limits.key_size_bytes_max
    );
    assert!(run.stderr.contains(&expected), "{}", run.stderr);
    assert!(!run.stderr.contains("malformed"), "{}", run.stderr);
}

/// Runs `mergekv --data DIR ARGS...` unable to grow any file past 64
/// blocks (32 or 64 KiB, by the shell's block size), as a full disk would:
/// a write past that fails with EFBIG ("File too large", os error 27). The
/// signal such a write raises is ignored, so the write returns the error.
#[cfg(target_os = "linux")]
fn mkv_small_files(dir: &Path, args: &[&str]) -> Run {
    let output = Command::new("sh")
        .arg("-c")
        .arg("trap '' XFSZ; ulimit -f 64 && exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_mergekv"))
        .arg("--data")
        .arg(dir)
        .args(args)
        .output()
        .unwrap();
    Run::from(output)
}

/// Two megabytes of KEY<TAB>VALUE lines, far past what `mkv_small_files`
/// lets a file grow to.
#[cfg(target_os = "linux")]
fn two_megabytes_of_lines(path: &Path) {
    let text: String = (0..16_000)
        .map(|i| format!("key-{i:05}\t{}\n", "v".repeat(120)))
        .collect();
    std::fs::write(path, text).unwrap();
}

/// Asserts that the error line starts with the original failed write to
/// the WAL, and does not call it "an earlier failure".
#[cfg(target_os = "linux")]
fn assert_names_the_failed_wal_write(run: &Run, dir: &Path) {
    run.assert_one_line_error();
    let first = format!(
        "mergekv: error: write failed on {}",
        dir.join("wal").display()
    );
    assert!(run.stderr.starts_with(&first), "{}", run.stderr);
    assert!(run.stderr.contains("(os error 27)"), "{}", run.stderr);
    assert!(!run.stderr.contains("earlier failure"), "{}", run.stderr);
}

#[cfg(target_os = "linux")]
#[test]
fn the_first_io_failure_of_a_command_is_reported_as_itself() {
    let tmp = tempfile::tempdir().unwrap();
    let (source, target) = (tmp.path().join("source"), tmp.path().join("target"));
    let lines = tmp.path().join("lines.tsv");
    two_megabytes_of_lines(&lines);
    let lines = lines.to_str().unwrap();
    mkv(&target, &["put", "before", "1"]).expect(0);
    let load = mkv_small_files(&target, &["load", "--batch", "1000", lines]).expect(3);
    assert_names_the_failed_wal_write(&load, &target);

    mkv(&source, &["load", lines]).expect(0);
    let changes = tmp.path().join("changes.mkvc");
    mkv(&source, &["export", changes.to_str().unwrap()]).expect(0);
    let import = mkv_small_files(&target, &["import", changes.to_str().unwrap()]).expect(3);
    assert_names_the_failed_wal_write(&import, &target);
    // Nothing acknowledged was lost.
    assert_eq!(mkv(&target, &["get", "before"]).expect(0).stdout, "1\n");
}

/// The names in a directory, sorted.
#[cfg(target_os = "linux")]
fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[cfg(target_os = "linux")]
#[test]
fn a_failed_export_leaves_no_partial_file() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, copy, out) = (
        tmp.path().join("db"),
        tmp.path().join("copy"),
        tmp.path().join("out"),
    );
    let lines = tmp.path().join("lines.tsv");
    two_megabytes_of_lines(&lines);
    mkv(&dir, &["load", lines.to_str().unwrap()]).expect(0);
    std::fs::create_dir(&out).unwrap();
    let (old, new) = (out.join("old.mkvc"), out.join("new.mkvc"));
    std::fs::write(&old, "an earlier export").unwrap();
    for file in [&old, &new] {
        let run = mkv_small_files(&dir, &["export", file.to_str().unwrap()]).expect(3);
        run.assert_one_line_error();
        let expected = format!("cannot write {}: ", file.display());
        assert!(run.stderr.contains(&expected), "{}", run.stderr);
    }
    let kept = std::fs::read(&old).unwrap();
    assert!(
        kept == b"an earlier export",
        "the earlier export was overwritten: {} bytes now",
        kept.len()
    );
    assert_eq!(names_in(&out), ["old.mkvc"], "no partial or temporary file");
    // A failed rename (onto a directory) removes the temporary file too.
    mkv(&dir, &["export", out.to_str().unwrap()]).expect(3);
    assert_eq!(names_in(&out), ["old.mkvc"]);
    assert_eq!(names_in(tmp.path()), ["db", "lines.tsv", "out"]);
    // Without the limit it is written whole, over the old file.
    mkv(&dir, &["export", old.to_str().unwrap()]).expect(0);
    assert_eq!(names_in(&out), ["old.mkvc"]);
    mkv(&copy, &["import", old.to_str().unwrap()]).expect(0);
    assert_eq!(
        mkv(&copy, &["digest"]).expect(0).stdout,
        mkv(&dir, &["digest"]).expect(0).stdout
    );
}

#[test]
fn bad_usage_exits_2() {
    let (_tmp, dir) = db_dir();
    mkv(&dir, &["frobnicate"]).expect(2);
    mkv(&dir, &["put", "only-a-key"]).expect(2);
    mkv(&dir, &["get"]).expect(2);
    mkv(&dir, &[]).expect(2);
    mkv(&dir, &["incr", "k", "not-a-number"]).expect(2);
    mkv(&dir, &["scan", "--limit", "many"]).expect(2);
    mkv(&dir, &["load", "x", "--batch", "0"]).expect(2);
    assert!(!dir.exists(), "a usage error must not create the database");
}

#[test]
fn invalid_keyspace_name_exits_2() {
    let (_tmp, dir) = db_dir();
    for name in ["has space", "_reserved", ""] {
        let run = mkv(&dir, &["put", "--keyspace", name, "k", "v"]).expect(2);
        run.assert_one_line_error();
        assert!(run.stderr.contains("keyspace"), "{}", run.stderr);
    }
    mkv(&dir, &["get", "-k", "a/b", "k"]).expect(2);
    mkv(&dir, &["scan", "-k", "a/b"]).expect(2);
}

#[test]
fn verify_a_healthy_directory_exits_0() {
    let (_tmp, dir) = db_dir();
    for i in 0..3 {
        mkv(&dir, &["put", &format!("k{i}"), "v"]).expect(0);
    }
    let run = mkv(&dir, &["verify"]).expect(0);
    assert!(run.stdout.contains("3 frames, 3 ops"), "{}", run.stdout);
    assert!(run.stdout.contains("result: ok"), "{}", run.stdout);
    // Verify never creates anything: an empty directory is not a database.
    let (_tmp2, empty) = db_dir();
    mkv(&empty, &["verify"]).expect(3).assert_one_line_error();
}

/// Every command that only reads, and so must never create a database:
/// arguments after `--data DIR`. `EXPORT_TO` stands for the export file.
const READ_COMMANDS: &[&[&str]] = &[
    &["get", "k"],
    &["--json", "get", "k"],
    &["scan"],
    &["stats"],
    &["--json", "stats"],
    &["digest"],
    &["verify"],
    &["verify", "--repair"],
    &["export", "EXPORT_TO"],
    &["compact"],
    &["promote"],
    &["user", "list"],
    &["user", "verify", "alice"],
    &["apikey", "auth"],
    &["apikey", "list", "alice"],
    // An address no local interface has (TEST-NET-1), so that a serve
    // which wrongly opens (and creates) the database fails to bind right
    // after instead of running forever.
    &["serve", "--listen", "192.0.2.1:1"],
];

/// Runs each read command on `dir` and checks it exits 3 naming `dir`, and
/// writes no export file.
fn assert_reads_refuse(dir: &Path, export_to: &Path, what: &str) {
    for command in READ_COMMANDS {
        let args: Vec<&str> = command
            .iter()
            .map(|&a| match a {
                "EXPORT_TO" => export_to.to_str().unwrap(),
                a => a,
            })
            .collect();
        // Nothing on stdin: a command must refuse before it reads a secret.
        let run = mkv_auth(dir, &args, "", Some(MASTER_KEY_HEX));
        assert_eq!(run.code, 3, "{args:?} on {what}: {}", run.stderr);
        run.assert_one_line_error();
        let expected = format!("no mergekv database at {}", dir.display());
        assert!(
            run.stderr.contains(&expected),
            "{args:?} on {what}: {}",
            run.stderr
        );
        assert!(!export_to.exists(), "{args:?} on {what} wrote the export");
    }
}

#[test]
fn read_commands_on_a_missing_or_empty_directory_exit_3_and_create_nothing() {
    let (tmp, missing) = db_dir();
    let export_to = tmp.path().join("changes.mkvc");
    assert_reads_refuse(&missing, &export_to, "a missing directory");
    assert!(!missing.exists(), "a read created {}", missing.display());

    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    assert_reads_refuse(&empty, &export_to, "an empty directory");
    let created: Vec<_> = std::fs::read_dir(&empty).unwrap().collect();
    assert!(created.is_empty(), "a read created {created:?}");

    // Writes still create the database.
    mkv(&missing, &["put", "k", "v"]).expect(0);
    assert_eq!(mkv(&missing, &["get", "k"]).expect(0).stdout, "v\n");
}

#[test]
fn a_file_given_as_data_is_named_as_not_a_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("notes.txt");
    std::fs::write(&file, "not a database").unwrap();
    let expected = format!("--data {} is not a directory", file.display());
    for args in [
        &["put", "k", "v"][..],
        &["get", "k"],
        &["verify"],
        &["stats"],
    ] {
        let run = mkv(&file, args).expect(3);
        run.assert_one_line_error();
        assert!(run.stderr.contains(&expected), "{args:?}: {}", run.stderr);
    }
    let under = file.join("db");
    let run = mkv(&under, &["put", "k", "v"]).expect(3);
    let expected = format!(
        "--data {}: {} is not a directory",
        under.display(),
        file.display()
    );
    assert!(run.stderr.contains(&expected), "{}", run.stderr);
    let demo = Run::from(bin().args(["demo", "--dir"]).arg(&file).output().unwrap()).expect(3);
    let expected = format!("--dir {} is not a directory", file.display());
    assert!(demo.stderr.contains(&expected), "{}", demo.stderr);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "not a database");
}

#[test]
fn a_damaged_segment_is_reported_refused_and_repaired() {
    let (_tmp, dir) = db_dir();
    for i in 0..5 {
        mkv(&dir, &["put", &format!("k{i}"), &format!("v{i}")]).expect(0);
    }
    // Flip a byte inside the first frame's header (the segment header is
    // 32 bytes): valid frames follow, so this is damage, not a torn tail.
    let segment = last_segment(&dir);
    let name = segment.file_name().unwrap().to_string_lossy().into_owned();
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes[40] ^= 0xFF;
    std::fs::write(&segment, bytes).unwrap();

    let verify = mkv(&dir, &["verify"]).expect(3);
    assert!(verify.stdout.contains(&name), "{}", verify.stdout);
    verify.assert_one_line_error();
    assert!(verify.stderr.contains(&name), "{}", verify.stderr);

    let get = mkv(&dir, &["get", "k4"]).expect(3);
    get.assert_one_line_error();
    assert!(
        get.stderr.contains(&name) && get.stderr.contains("damaged at byte 32"),
        "{}",
        get.stderr
    );

    let repair = mkv(&dir, &["verify", "--repair"]).expect(0);
    assert!(repair.stdout.contains(&name), "{}", repair.stdout);
    assert!(repair.stdout.contains("dropped"), "{}", repair.stdout);
    assert!(dir.join("quarantine").is_dir());
    mkv(&dir, &["verify"]).expect(0);
    mkv(&dir, &["put", "after", "repair"]).expect(0);
    mkv(&dir, &["get", "after"]).expect(0);
}

#[test]
fn a_locked_directory_exits_3_naming_it() {
    let (_tmp, dir) = db_dir();
    let db = mergekv::Db::open(&dir).unwrap();
    let run = mkv(&dir, &["put", "k", "v"]).expect(3);
    run.assert_one_line_error();
    assert!(
        run.stderr.contains(&dir.display().to_string()),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("already open"), "{}", run.stderr);
    drop(db);
    mkv(&dir, &["put", "k", "v"]).expect(0);
}

#[test]
fn demo_runs_to_completion_in_a_given_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    let run = Run::from(bin().args(["demo", "--dir"]).arg(&dir).output().unwrap()).expect(0);
    for step in 1..=15 {
        assert!(
            run.stdout.contains(&format!("[{step}/15]")),
            "step {step}: {}",
            run.stdout
        );
    }
    for needle in [
        "summary",
        "Duplicate",
        "torn tail",
        "2000",
        "100000 keys",
        "runs cover seq",
        "equal digests",
        "equal digests on 3 copies; likes = 6; draft deleted everywhere",
        "an idle round: 1 request(s) (1 list, 0 get)",
        "token authenticated then revoked",
        "streamed 200 writes, digests equal, read-only",
        "no plaintext on disk; opens with key id",
        ": ok",
    ] {
        assert!(run.stdout.contains(needle), "{needle}: {}", run.stdout);
    }
    assert!(dir.join("wal").is_dir(), "--dir is kept");
    mkv(&dir, &["verify"]).expect(0);
    assert_eq!(
        mkv(&dir, &["get", "-k", "metrics", "hits"])
            .expect(0)
            .stdout,
        "2000\n"
    );
    // Again in the same directory: it clears its own previous run.
    let again = Run::from(bin().args(["demo", "--dir"]).arg(&dir).output().unwrap()).expect(0);
    assert!(again.stdout.contains(": ok"), "{}", again.stdout);
    assert!(
        again.stdout.contains("(0 frames already there)"),
        "{}",
        again.stdout
    );
    assert_eq!(
        mkv(&dir, &["get", "-k", "metrics", "hits"])
            .expect(0)
            .stdout,
        "2000\n"
    );
}

#[test]
fn demo_without_dir_cleans_up_its_temp_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let run = Run::from(
        bin()
            .arg("--json")
            .arg("demo")
            .env("TMPDIR", tmp.path())
            .output()
            .unwrap(),
    )
    .expect(0);
    let json = run.json();
    assert_eq!(
        (json["ok"].as_bool(), json["kept"].as_bool()),
        (Some(true), Some(false))
    );
    assert_eq!(json["steps"].as_array().map(Vec::len), Some(14));
    assert!(
        json["dir"]
            .as_str()
            .is_some_and(|d| d.contains("mergekv-demo-"))
    );
    assert_eq!(
        std::fs::read_dir(tmp.path()).unwrap().count(),
        0,
        "temp dir removed"
    );
}

#[test]
fn compact_prints_what_it_did_and_stats_show_the_snapshot() {
    let (_tmp, dir) = db_dir();
    for i in 0..20 {
        mkv(&dir, &["put", &format!("k{i:02}"), "some value"]).expect(0);
    }
    mkv(&dir, &["del", "k03"]).expect(0);
    let compact = mkv(&dir, &["compact"]).expect(0);
    let field = |run: &Run, name: &str| {
        let prefix = format!("{name}: ");
        run.lines()
            .iter()
            .find_map(|l| l.strip_prefix(&prefix).map(str::to_string))
            .unwrap_or_else(|| panic!("no {name} in {}", run.stdout))
    };
    assert_eq!(field(&compact, "snapshot_seq"), "21");
    assert_eq!(field(&compact, "tombstones_dropped"), "0");
    let before: u64 = field(&compact, "bytes_before").parse().unwrap();
    let after: u64 = field(&compact, "bytes_after").parse().unwrap();
    assert!(before > 0 && after > 0);
    field(&compact, "segments_removed").parse::<u64>().unwrap();
    let stats = mkv(&dir, &["stats"]).expect(0);
    assert_eq!(field(&stats, "snapshot_seq"), "21");
    assert!(field(&stats, "snapshot_bytes").parse::<u64>().unwrap() > 0);
    let json = mkv(&dir, &["--json", "compact"]).expect(0).json();
    assert_eq!(json["snapshot_seq"], 21);
    assert_eq!(mkv(&dir, &["get", "k07"]).expect(0).stdout, "some value\n");
    mkv(&dir, &["get", "k03"]).expect(1);
    mkv(&dir, &["verify"]).expect(0);
    // The compaction wrote the state as one run; verify read it back.
    let verify = mkv(&dir, &["--json", "verify"]).expect(0).json();
    assert_eq!(verify["runs_ok"], 1, "{verify}");
    assert_eq!(verify["snapshots_ok"], 0, "{verify}");
}

#[test]
fn export_import_and_digest_make_two_copies_converge() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let (to_b, to_a) = (
        tmp.path().join("a-to-b.mkvc"),
        tmp.path().join("b-to-a.mkvc"),
    );
    mkv(&a, &["put", "k", "from a"]).expect(0);
    mkv(&a, &["incr", "n", "5"]).expect(0);
    mkv(&b, &["put", "other", "from b"]).expect(0);
    mkv(&b, &["incr", "n", "2"]).expect(0);
    let cursor = mkv(&a, &["export", to_b.to_str().unwrap()]).expect(0);
    assert!(
        cursor.stdout.trim().contains('@'),
        "prints the new cursor: {}",
        cursor.stdout
    );
    let imported = mkv(&b, &["import", to_b.to_str().unwrap()]).expect(0);
    assert!(
        imported.stdout.contains("applied: 2"),
        "{}",
        imported.stdout
    );
    mkv(&b, &["export", to_a.to_str().unwrap()]).expect(0);
    mkv(&a, &["import", to_a.to_str().unwrap()]).expect(0);
    let (da, db) = (
        mkv(&a, &["digest"]).expect(0),
        mkv(&b, &["digest"]).expect(0),
    );
    assert_eq!(da.stdout, db.stdout);
    assert_eq!(da.stdout.trim().len(), 64);
    assert_eq!(mkv(&a, &["get", "n"]).expect(0).stdout, "7\n");
    let again = mkv(&b, &["import", to_b.to_str().unwrap()]).expect(0);
    assert!(
        again.stdout.contains("applied: 0") && again.stdout.contains("duplicates: 2"),
        "{}",
        again.stdout
    );
    // Nothing new since the printed cursor.
    let empty = tmp.path().join("empty.mkvc");
    mkv(
        &a,
        &[
            "export",
            "--since",
            cursor.stdout.trim(),
            empty.to_str().unwrap(),
        ],
    )
    .expect(0);
    let json = mkv(&b, &["--json", "import", empty.to_str().unwrap()])
        .expect(0)
        .json();
    assert_eq!(json["applied"], 0);
    // A damaged change set is refused, naming the file; a bad cursor is usage.
    let mut bytes = std::fs::read(&to_b).unwrap();
    bytes[20] ^= 1;
    std::fs::write(&to_b, bytes).unwrap();
    let refused = mkv(&b, &["import", to_b.to_str().unwrap()]).expect(3);
    refused.assert_one_line_error();
    assert!(refused.stderr.contains("a-to-b.mkvc"));
    mkv(&a, &["export", "--since", "bogus", empty.to_str().unwrap()]).expect(2);
}

const MASTER_KEY_HEX: &str = "3c1e9f0a7b2d4c6e8f1a3b5c7d9e0f2a4b6c8d0e1f3a5b7c9d2e4f6a8b0c1d3e";

/// Runs an auth command with `input` on stdin and the master key in the
/// environment (or no key at all when `key` is `None`).
fn mkv_auth(dir: &Path, args: &[&str], input: &str, key: Option<&str>) -> Run {
    let mut command = bin();
    command.arg("--data").arg(dir).args(args);
    match key {
        Some(hex) => command.env("MERGEKV_MASTER_KEY", hex),
        None => command.env_remove("MERGEKV_MASTER_KEY"),
    };
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    Run::from(child.wait_with_output().unwrap())
}

#[test]
fn users_are_added_verified_and_deleted_with_passwords_from_stdin() {
    let (_tmp, dir) = db_dir();
    let key = Some(MASTER_KEY_HEX);
    mkv_auth(&dir, &["user", "add", "alice"], "s3cret-password\n", key).expect(0);
    mkv_auth(&dir, &["user", "add", "alice"], "other-password\n", key)
        .expect(2)
        .assert_one_line_error();
    mkv_auth(&dir, &["user", "verify", "alice"], "s3cret-password\n", key).expect(0);
    let wrong = mkv_auth(&dir, &["user", "verify", "alice"], "wrong-password\n", key).expect(4);
    wrong.assert_one_line_error();
    let unknown = mkv_auth(&dir, &["user", "verify", "bob"], "wrong-password\n", key).expect(4);
    assert_eq!(wrong.stderr, unknown.stderr, "the same error for both");
    let listed = mkv_auth(&dir, &["user", "list"], "", key).expect(0);
    assert_eq!(listed.lines(), ["alice"]);
    mkv_auth(&dir, &["user", "del", "alice"], "", key).expect(0);
    mkv_auth(&dir, &["user", "del", "alice"], "", key).expect(1);
    mkv_auth(&dir, &["user", "verify", "alice"], "s3cret-password\n", key).expect(4);
    // A password too short for the policy, and an empty stdin.
    mkv_auth(&dir, &["user", "add", "carol"], "short\n", key).expect(2);
    mkv_auth(&dir, &["user", "add", "carol"], "", key).expect(2);
}

#[test]
fn the_master_key_must_be_given_and_must_match() {
    let (_tmp, dir) = db_dir();
    let missing = mkv_auth(&dir, &["user", "list"], "", None).expect(2);
    missing.assert_one_line_error();
    assert!(missing.stderr.contains("MERGEKV_MASTER_KEY"));
    assert!(!dir.exists(), "a missing key creates nothing");
    mkv_auth(&dir, &["user", "list"], "", Some("abc")).expect(2);
    mkv_auth(
        &dir,
        &["user", "add", "alice"],
        "s3cret-password\n",
        Some(MASTER_KEY_HEX),
    )
    .expect(0);
    let other = "00".repeat(32);
    mkv_auth(&dir, &["user", "list"], "", Some(&other))
        .expect(2)
        .assert_one_line_error();
    // The key from a file (with a trailing newline) instead of the env.
    let key_file = dir.parent().unwrap().join("master.key");
    std::fs::write(&key_file, format!("{MASTER_KEY_HEX}\n")).unwrap();
    let key_arg = key_file.to_str().unwrap();
    let listed = mkv_auth(
        &dir,
        &["--master-key-file", key_arg, "user", "list"],
        "",
        None,
    );
    assert_eq!(listed.expect(0).lines(), ["alice"]);
}

#[test]
fn api_keys_are_created_authenticated_and_revoked() {
    let (_tmp, dir) = db_dir();
    let key = Some(MASTER_KEY_HEX);
    mkv_auth(&dir, &["user", "add", "alice"], "s3cret-password\n", key).expect(0);
    let created = mkv_auth(
        &dir,
        &[
            "apikey",
            "create",
            "alice",
            "--scope",
            "read",
            "--scope",
            "replicate",
            "--expires-in",
            "30d",
        ],
        "",
        key,
    )
    .expect(0);
    let token = created.stdout.trim().to_string();
    assert!(token.starts_with("mk_") && token.len() == 84, "{token}");
    let key_id = &token[3..19];
    let auth = mkv_auth(&dir, &["apikey", "auth"], &format!("{token}\n"), key).expect(0);
    assert_eq!(auth.stdout.trim(), "alice read,replicate");
    let json = mkv_auth(&dir, &["--json", "apikey", "auth"], &token, key)
        .expect(0)
        .json();
    assert_eq!(json["user"], "alice");
    assert_eq!(json["key_id"], key_id);
    assert!(json.get("token").is_none());

    let mut altered = token.clone().into_bytes();
    altered[40] = if altered[40] == b'a' { b'b' } else { b'a' };
    let altered = String::from_utf8(altered).unwrap();
    mkv_auth(&dir, &["apikey", "auth"], &altered, key)
        .expect(4)
        .assert_one_line_error();
    mkv_auth(&dir, &["apikey", "auth"], "not a token", key).expect(4);
    mkv_auth(&dir, &["apikey", "revoke", key_id], "", key).expect(0);
    let revoked = mkv_auth(&dir, &["apikey", "auth"], &token, key).expect(4);
    assert!(revoked.stderr.contains("revoked"), "{}", revoked.stderr);
    let listed = mkv_auth(&dir, &["apikey", "list", "alice"], "", key).expect(0);
    assert!(listed.stdout.contains(key_id) && listed.stdout.contains("revoked"));

    mkv_auth(&dir, &["apikey", "revoke", "0123456789abcdef"], "", key).expect(1);
    mkv_auth(
        &dir,
        &["apikey", "create", "alice", "--scope", "root"],
        "",
        key,
    )
    .expect(2);
    mkv_auth(
        &dir,
        &["apikey", "create", "alice", "--expires-in", "3 days"],
        "",
        key,
    )
    .expect(2);
    mkv_auth(&dir, &["apikey", "create", "nobody"], "", key).expect(1);
}

/// A long-running `mergekv` (serve or follow) whose stdout is read line by
/// line as it is printed.
struct Running {
    child: std::process::Child,
    lines: std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
}

impl Running {
    fn start(dir: &Path, args: &[&str]) -> Running {
        let mut child = bin()
            .arg("--data")
            .arg(dir)
            .args(args)
            .env("MERGEKV_MASTER_KEY", MASTER_KEY_HEX)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        Running {
            child,
            lines: std::io::BufRead::lines(std::io::BufReader::new(stdout)),
        }
    }

    /// Reads printed lines until one satisfies `done`; returns it.
    fn line_where(&mut self, done: impl Fn(&str) -> bool) -> String {
        for line in self.lines.by_ref() {
            let line = line.unwrap();
            if done(&line) {
                return line;
            }
        }
        panic!("the process ended without printing the expected line");
    }

    /// SIGKILL: no chance to flush or clean up.
    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

/// The leader address in `serve`'s first line.
fn served_addr(line: &str) -> String {
    line.split_whitespace()
        .nth(3)
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_string()
}

/// A follow status line saying the follower holds everything the leader
/// had announced, at or past `seq`.
fn caught_up_to(line: &str, seq: u64) -> bool {
    let numbers: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.trim_end_matches(',').parse().ok())
        .collect();
    line.starts_with("connected:") && numbers.len() >= 4 && numbers[0] >= seq && numbers[2] == 0
}

fn load_keys(dir: &Path, prefix: &str, count: usize) {
    let text: String = (0..count)
        .map(|i| format!("{prefix}{i:05}\tvalue {i}\n"))
        .collect();
    mkv_stdin(dir, &["load", "-"], text.as_bytes()).expect(0);
}

fn last_seq(dir: &Path) -> u64 {
    mkv(dir, &["--json", "stats"]).expect(0).json()["wal"]["last_seq"]
        .as_u64()
        .unwrap()
}

#[test]
fn a_follower_killed_with_sigkill_resumes_from_its_cursor() {
    let tmp = tempfile::tempdir().unwrap();
    let (leader, follower) = (tmp.path().join("leader"), tmp.path().join("follower"));
    let key = Some(MASTER_KEY_HEX);
    mkv_auth(&leader, &["user", "add", "repl"], "s3cret-password\n", key).expect(0);
    let token = mkv_auth(
        &leader,
        &["apikey", "create", "repl", "--scope", "replicate"],
        "",
        key,
    )
    .expect(0)
    .stdout;
    let token_file = tmp.path().join("token");
    std::fs::write(&token_file, token).unwrap();
    let token_arg = token_file.to_str().unwrap();
    load_keys(&leader, "first-", 3000);
    let first_seq = last_seq(&leader);

    let mut serve = Running::start(&leader, &["serve", "--listen", "127.0.0.1:0"]);
    let addr = served_addr(&serve.line_where(|l| l.starts_with("serving replication on")));
    let mut follow = Running::start(
        &follower,
        &["follow", "--leader", &addr, "--token-file", token_arg],
    );
    follow.line_where(|l| caught_up_to(l, first_seq));
    // While it runs, stats reads the follower's status file.
    let running = mkv(&follower, &["stats"]).expect(0);
    assert!(
        running.stdout.contains("follower_cursor_seq: "),
        "{}",
        running.stdout
    );
    follow.kill();
    serve.kill();
    // The follower's directory refuses writes, and remembers its cursor.
    let put = mkv(&follower, &["put", "x", "1"]).expect(5);
    put.assert_one_line_error();
    assert!(put.stderr.contains("mergekv promote"), "{}", put.stderr);
    let stats = mkv(&follower, &["--json", "stats"]).expect(0).json();
    let cursor_seq = stats["follower_position"]["seq"].as_u64().unwrap();
    assert!(cursor_seq >= first_seq, "{stats}");

    load_keys(&leader, "second-", 2000);
    let final_seq = last_seq(&leader);
    let mut serve = Running::start(&leader, &["serve", "--listen", "127.0.0.1:0"]);
    let addr = served_addr(&serve.line_where(|l| l.starts_with("serving replication on")));
    let mut follow = Running::start(
        &follower,
        &["follow", "--leader", &addr, "--token-file", token_arg],
    );
    // It starts from the stored cursor, not from scratch.
    let first = follow.line_where(|l| l.contains("cursor seq"));
    assert!(
        first.contains(&format!("cursor seq {cursor_seq} ")),
        "{first} (stored cursor {cursor_seq})"
    );
    follow.line_where(|l| caught_up_to(l, final_seq));
    follow.kill();
    serve.kill();
    assert_eq!(
        mkv(&follower, &["digest"]).expect(0).stdout,
        mkv(&leader, &["digest"]).expect(0).stdout
    );
    assert_eq!(
        mkv(&follower, &["get", "second-01999"]).expect(0).stdout,
        "value 1999\n"
    );
    // Fail over: promote, then it takes writes.
    let promoted = mkv(&follower, &["promote"]).expect(0);
    assert!(
        promoted.stdout.starts_with("promoted "),
        "{}",
        promoted.stdout
    );
    mkv(&follower, &["put", "x", "1"]).expect(0);
}

/// A directory of the format before runs with two snapshots (`a`, then
/// `a` and `b`) and the WAL after the older one, the newer one damaged;
/// returns the damaged snapshot.
fn legacy_dir_with_a_damaged_newest_snapshot(dir: &Path) -> PathBuf {
    let snaps = {
        let db = mergekv::Db::open(dir).unwrap();
        db.put("a", "1").unwrap();
        let older = common::shipped_snapshot(&db);
        db.put("b", "2").unwrap();
        let newer = common::shipped_snapshot(&db);
        [older, newer]
    };
    let wal_after = snaps[0].0;
    common::make_legacy(dir, &snaps, wal_after);
    let newest = common::snapshots(dir).pop().unwrap();
    let mut bytes = std::fs::read(&newest).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&newest, bytes).unwrap();
    newest
}

/// Falling back from a damaged snapshot is said, on stderr. (Writes open
/// the database writable, and a writable open sets the damaged snapshot
/// aside; `get` reads beside a writer and moves nothing.)
#[test]
fn a_fallback_from_a_damaged_snapshot_is_said() {
    let (_tmp, dir) = db_dir();
    let newest = legacy_dir_with_a_damaged_newest_snapshot(&dir);
    let put = mkv(&dir, &["put", "c", "3"]).expect(0);
    assert!(
        put.stderr
            .contains("mergekv: note: a damaged snapshot was moved to"),
        "{}",
        put.stderr
    );
    assert!(
        dir.join("quarantine")
            .join(newest.file_name().unwrap())
            .exists()
    );
    let got = mkv(&dir, &["get", "b"]).expect(0);
    assert_eq!(got.stdout.trim(), "2", "nothing was lost");
}

/// A read-only `get` falls back from a damaged snapshot too (and moves
/// nothing).
#[test]
fn a_read_only_get_falls_back_from_a_damaged_snapshot() {
    let (_tmp, dir) = db_dir();
    let newest = legacy_dir_with_a_damaged_newest_snapshot(&dir);
    let got = mkv(&dir, &["get", "b"]).expect(0);
    assert_eq!(got.stdout.trim(), "2", "nothing was lost");
    assert!(newest.exists(), "a read moves nothing");
}

/// A copied directory is told it got its own identity; `reidentify`
/// gives a new one on demand.
#[test]
fn a_copy_is_told_of_its_new_identity_and_reidentify_gives_one() {
    let (tmp, dir) = db_dir();
    mkv(&dir, &["put", "k", "v"]).expect(0);
    let copy = tmp.path().join("copy");
    std::fs::create_dir(&copy).unwrap();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() && entry.file_name() != "LOCK" {
            std::fs::copy(entry.path(), copy.join(entry.file_name())).unwrap();
        }
    }
    std::fs::create_dir(copy.join("wal")).unwrap();
    for entry in std::fs::read_dir(dir.join("wal")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), copy.join("wal").join(entry.file_name())).unwrap();
    }
    let node = |d: &Path| mkv(d, &["--json", "stats"]).expect(0).json()["node_id"].clone();
    let original = node(&dir);
    let got = mkv(&copy, &["get", "k"]).expect(0);
    assert_eq!(got.stdout.trim(), "v");
    // Reads open read-only and change nothing: the first write (a writable
    // open) is told.
    let put = mkv(&copy, &["put", "k2", "w"]).expect(0);
    assert!(
        put.stderr
            .contains("mergekv: note: this copy now writes as node"),
        "{}",
        put.stderr
    );
    assert_eq!(mkv(&copy, &["get", "k"]).expect(0).stdout.trim(), "v");
    assert_ne!(node(&copy), original);
    assert_eq!(node(&dir), original);
    let before = node(&dir);
    let renewed = mkv(&dir, &["--json", "reidentify"]).expect(0).json();
    assert_eq!(renewed["former_node_id"], before);
    assert_eq!(node(&dir), renewed["node_id"]);
    assert_eq!(mkv(&dir, &["get", "k"]).expect(0).stdout.trim(), "v");
}

/// One snapshot (a directory of the format before runs, its WAL gone), one
/// flipped byte in it: the database is refused, and `verify --repair`
/// salvages the chunks that check out and says what it lost.
#[test]
fn verify_repair_salvages_a_damaged_only_snapshot() {
    let (_tmp, dir) = db_dir();
    let lines: String = (0..3000)
        .map(|i| format!("key-{i:05}\t{i:0>60}\n"))
        .collect();
    mkv_stdin(&dir, &["load", "-"], lines.as_bytes()).expect(0);
    let shipped = common::shipped_snapshot(&mergekv::Db::open(&dir).unwrap());
    let covered = shipped.0;
    common::make_legacy(&dir, &[shipped], covered);
    let snapshot = common::snapshots(&dir).pop().unwrap();
    let mut bytes = std::fs::read(&snapshot).unwrap();
    bytes[200] ^= 0x20; // inside the first entries chunk
    std::fs::write(&snapshot, bytes).unwrap();
    let refused = mkv(&dir, &["get", "key-02999"]).expect(3);
    assert!(refused.stderr.contains("snap"), "{}", refused.stderr);
    let repaired = mkv(&dir, &["verify", "--repair"]).expect(0);
    assert!(
        repaired.stdout.contains("repair: salvaged") && repaired.stdout.contains("lost bytes"),
        "{}",
        repaired.stdout
    );
    mkv(&dir, &["get", "key-02999"]).expect(0);
    mkv(&dir, &["get", "key-00000"]).expect(1);
}

// Encryption at rest: keygen, --key-file / MERGEKV_KEY, rekey.

/// Runs `mergekv --data DIR ARGS...` with `MERGEKV_KEY` and
/// `MERGEKV_OLD_KEY` set to `key` and `old` (unset when `None`).
fn mkv_keys(dir: &Path, args: &[&str], key: Option<&str>, old: Option<&str>) -> Run {
    let mut command = bin();
    command.arg("--data").arg(dir).args(args);
    for (var, value) in [("MERGEKV_KEY", key), ("MERGEKV_OLD_KEY", old)] {
        match value {
            Some(v) => command.env(var, v),
            None => command.env_remove(var),
        };
    }
    Run::from(command.output().unwrap())
}

/// A key made by `keygen --out` in a new file under `dir`: its path, its
/// hex and its key id.
fn new_key_file(dir: &Path, name: &str) -> (PathBuf, String, String) {
    let path = dir.join(name);
    let json = Run::from(
        bin()
            .args(["--json", "keygen", "--out"])
            .arg(&path)
            .output()
            .unwrap(),
    )
    .expect(0)
    .json();
    let hex = std::fs::read_to_string(&path).unwrap().trim().to_string();
    (path, hex, json["key_id"].as_str().unwrap().to_string())
}

/// Every file under `dir` with its bytes, but the lock files (an open's
/// own, even a refused one's).
fn contents(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(next) = pending.pop() {
        for entry in std::fs::read_dir(&next).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if path.is_dir() {
                pending.push(path);
            } else if name != "LOCK" && name != "READERS" {
                out.push((path.clone(), std::fs::read(&path).unwrap()));
            }
        }
    }
    out.sort();
    out
}

fn field(run: &Run, name: &str) -> String {
    let prefix = format!("{name}: ");
    run.lines()
        .iter()
        .find_map(|l| l.strip_prefix(&prefix).map(str::to_string))
        .unwrap_or_else(|| panic!("no {name} in {}", run.stdout))
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn keygen_prints_a_fresh_key_or_writes_it_to_a_new_file_of_mode_0600() {
    let tmp = tempfile::tempdir().unwrap();
    let keygen = |args: &[&str]| Run::from(bin().arg("keygen").args(args).output().unwrap());
    let is_key = |s: &str| {
        s.len() == 65
            && s.ends_with('\n')
            && s[..64]
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let (first, second) = (keygen(&[]).expect(0), keygen(&[]).expect(0));
    assert!(is_key(&first.stdout), "{:?}", first.stdout);
    assert_ne!(first.stdout, second.stdout, "a fresh key each time");
    assert!(first.stderr.contains("MERGEKV_KEY"), "{}", first.stderr);
    let auth = keygen(&["--auth"]).expect(0);
    assert!(is_key(&auth.stdout), "{:?}", auth.stdout);
    assert!(
        auth.stderr.contains("MERGEKV_MASTER_KEY"),
        "{}",
        auth.stderr
    );

    let file = tmp.path().join("db.key");
    let wrote = keygen(&["--out", file.to_str().unwrap()]).expect(0);
    let written = std::fs::read_to_string(&file).unwrap();
    assert!(is_key(&written), "{written:?}");
    assert!(
        !wrote.stdout.contains(written.trim()),
        "the key is not shown"
    );
    assert!(
        !wrote.stderr.contains(written.trim()),
        "the key is not shown"
    );
    #[cfg(unix)]
    assert_eq!(mode(&file), 0o600);
    // Never over an existing file (it may hold a key still needed).
    let refused = keygen(&["--out", file.to_str().unwrap()]).expect(2);
    refused.assert_one_line_error();
    assert!(refused.stderr.contains("exists"), "{}", refused.stderr);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), written);

    // The master key it makes is one `user` commands take.
    let master = tmp.path().join("master.key");
    keygen(&["--auth", "--out", master.to_str().unwrap()]).expect(0);
    let dir = tmp.path().join("db");
    let master_arg = ["--master-key-file", master.to_str().unwrap()];
    let add = [&master_arg[..], &["user", "add", "alice"]].concat();
    mkv_stdin(&dir, &add, b"s3cret-password\n").expect(0);
    // keygen and demo read no key: one given to them is refused.
    for command in ["keygen", "demo"] {
        let given = Run::from(
            bin()
                .args(["--key-file", file.to_str().unwrap(), command])
                .output()
                .unwrap(),
        );
        given.expect(2).assert_one_line_error();
    }
}

#[test]
fn an_encrypted_database_works_with_its_key_from_a_file_or_mergekv_key() {
    let (tmp, dir) = db_dir();
    let (file, hex, id) = new_key_file(tmp.path(), "a.key");
    let with_file = |args: &[&str]| {
        let all = [&["--key-file", file.to_str().unwrap()][..], args].concat();
        mkv_keys(&dir, &all, None, None)
    };
    with_file(&["put", "secret-name", "PLAINTEXT-VALUE"]).expect(0);
    with_file(&["incr", "hits", "5"]).expect(0);
    mkv_stdin(
        &dir,
        &["--key-file", file.to_str().unwrap(), "load", "-"],
        b"loaded-name\tLOADED-VALUE\n",
    )
    .expect(0);
    assert_eq!(
        with_file(&["get", "secret-name"]).expect(0).stdout,
        "PLAINTEXT-VALUE\n"
    );
    let env = mkv_keys(&dir, &["get", "loaded-name"], Some(&hex), None).expect(0);
    assert_eq!(env.stdout, "LOADED-VALUE\n");
    // The flag wins over the variable.
    let bad_env = ["--key-file", file.to_str().unwrap(), "get", "hits"];
    assert_eq!(
        mkv_keys(&dir, &bad_env, Some("not a key"), None)
            .expect(0)
            .stdout,
        "5\n"
    );
    // The WAL holds neither keys nor values in clear.
    for entry in std::fs::read_dir(dir.join("wal")).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        for needle in [&b"secret-name"[..], b"PLAINTEXT-VALUE", b"LOADED-VALUE"] {
            assert!(!bytes.windows(needle.len()).any(|w| w == needle));
        }
    }
    let stats = with_file(&["stats"]).expect(0);
    assert_eq!(field(&stats, "encryption"), format!("key id {id}"));
    assert_eq!(field(&stats, "files_under_other_keys"), "0");
    let json = with_file(&["--json", "stats"]).expect(0).json();
    assert_eq!(json["encryption"]["key_id"], id.as_str());
    assert_eq!(json["keys"], 3);
    with_file(&["verify"]).expect(0);
    with_file(&["scan"]).expect(0);
    with_file(&["digest"]).expect(0);
    // Auth commands take both keys.
    let add = [
        &["--key-file", file.to_str().unwrap()][..],
        &["user", "add", "alice"],
    ]
    .concat();
    mkv_auth(&dir, &add, "s3cret-password\n", Some(MASTER_KEY_HEX)).expect(0);
    mkv_auth(&dir, &["user", "list"], "", Some(MASTER_KEY_HEX)).expect(4);
    // A change set of an encrypted database is sealed: a copy without the
    // key refuses it, naming the file and the key.
    let changes = tmp.path().join("changes.mkvc");
    with_file(&["export", changes.to_str().unwrap()]).expect(0);
    let clear = tmp.path().join("clear");
    let refused = mkv_keys(&clear, &["import", changes.to_str().unwrap()], None, None).expect(4);
    refused.assert_one_line_error();
    assert!(
        refused.stderr.contains("changes.mkvc") && refused.stderr.contains(&id),
        "{}",
        refused.stderr
    );
}

#[test]
fn no_key_or_a_wrong_key_is_refused_naming_the_key_id_and_changes_nothing() {
    let (tmp, dir) = db_dir();
    let (file, _, id) = new_key_file(tmp.path(), "a.key");
    let (_, wrong, wrong_id) = new_key_file(tmp.path(), "b.key");
    let key_arg = ["--key-file", file.to_str().unwrap()];
    mkv_keys(
        &dir,
        &[&key_arg[..], &["put", "k", "v"]].concat(),
        None,
        None,
    )
    .expect(0);
    let export_to = tmp.path().join("out.mkvc");
    let before = contents(&dir);
    let commands: [&[&str]; 11] = [
        &["get", "k"],
        &["put", "k", "w"],
        &["del", "k"],
        &["incr", "n"],
        &["scan"],
        &["stats"],
        &["digest"],
        &["verify"],
        &["compact"],
        &["reidentify"],
        &["export", export_to.to_str().unwrap()],
    ];
    for args in commands {
        let none = mkv_keys(&dir, args, None, None).expect(4);
        none.assert_one_line_error();
        for needle in [id.as_str(), "no key was given", "--key-file", "MERGEKV_KEY"] {
            assert!(none.stderr.contains(needle), "{args:?}: {}", none.stderr);
        }
        let other = mkv_keys(&dir, args, Some(&wrong), None).expect(4);
        other.assert_one_line_error();
        assert!(
            other.stderr.contains(&id) && other.stderr.contains(&wrong_id),
            "{args:?}: {}",
            other.stderr
        );
        assert_eq!(contents(&dir), before, "{args:?} changed the files");
        assert!(!export_to.exists());
    }
    // A key that cannot be read creates nothing.
    let missing = tmp.path().join("new-db");
    let nowhere = tmp.path().join("no-such.key");
    let unreadable = ["--key-file", nowhere.to_str().unwrap(), "put", "k", "v"];
    let run = mkv_keys(&missing, &unreadable, None, None).expect(2);
    run.assert_one_line_error();
    assert!(run.stderr.contains("no-such.key"), "{}", run.stderr);
    let malformed = mkv_keys(&missing, &["put", "k", "v"], Some("abc"), None).expect(2);
    assert!(
        malformed.stderr.contains("MERGEKV_KEY"),
        "{}",
        malformed.stderr
    );
    assert!(!missing.exists(), "a bad key created the database");
}

#[test]
fn a_key_given_for_a_database_in_clear_is_refused() {
    let (tmp, dir) = db_dir();
    let (file, hex, _) = new_key_file(tmp.path(), "a.key");
    mkv_keys(&dir, &["put", "k", "v"], None, None).expect(0);
    let before = contents(&dir);
    let put = ["--key-file", file.to_str().unwrap(), "put", "k", "w"];
    let refused = mkv_keys(&dir, &put, None, None).expect(2);
    refused.assert_one_line_error();
    assert!(
        refused.stderr.contains("not encrypted") && refused.stderr.contains("rekey"),
        "{}",
        refused.stderr
    );
    mkv_keys(&dir, &["get", "k"], Some(&hex), None).expect(2);
    assert_eq!(contents(&dir), before);
    let stats = mkv_keys(&dir, &["stats"], None, None).expect(0);
    assert_eq!(field(&stats, "encryption"), "not encrypted");
}

#[test]
fn rekey_encrypts_a_database_in_clear_then_moves_it_to_another_key() {
    let (tmp, dir) = db_dir();
    let (a, a_hex, a_id) = new_key_file(tmp.path(), "a.key");
    let (b, b_hex, b_id) = new_key_file(tmp.path(), "b.key");
    for i in 0..20 {
        mkv_keys(&dir, &["put", &format!("k{i}"), "CLEAR-VALUE"], None, None).expect(0);
    }
    // Some of it in a run, some only in the WAL.
    mkv_keys(&dir, &["compact"], None, None).expect(0);
    mkv_keys(&dir, &["put", "late", "CLEAR-VALUE"], None, None).expect(0);
    let to_a = mkv_keys(
        &dir,
        &["rekey", "--new-key-file", a.to_str().unwrap()],
        None,
        None,
    )
    .expect(0);
    assert_eq!(field(&to_a, "key_id"), a_id);
    assert!(field(&to_a, "previous_key_id").starts_with("none"));
    assert_eq!(field(&to_a, "files_left"), "0");
    assert_eq!(field(&to_a, "old_key_needed"), "no");
    for (path, bytes) in contents(&dir) {
        let clear = bytes.windows(11).any(|w| w == b"CLEAR-VALUE");
        assert!(!clear, "{} holds a value in clear", path.display());
    }
    mkv_keys(&dir, &["get", "k7"], None, None).expect(4);
    let got = mkv_keys(&dir, &["get", "k7"], Some(&a_hex), None).expect(0);
    assert_eq!(got.stdout, "CLEAR-VALUE\n");

    let args = ["--json", "rekey", "--new-key-file", b.to_str().unwrap()];
    let to_b = mkv_keys(&dir, &args, Some(&a_hex), None).expect(0).json();
    assert_eq!(to_b["key_id"], b_id.as_str());
    assert_eq!(to_b["previous_key_id"], a_id.as_str());
    assert_eq!(
        (
            to_b["files_left"].as_u64(),
            to_b["old_key_needed"].as_bool()
        ),
        (Some(0), Some(false)),
        "{to_b}"
    );
    // Only B opens it now.
    mkv_keys(&dir, &["get", "k7"], Some(&a_hex), None).expect(4);
    mkv_keys(&dir, &["get", "k7"], None, None).expect(4);
    let got = mkv_keys(&dir, &["get", "k7"], Some(&b_hex), None).expect(0);
    assert_eq!(got.stdout, "CLEAR-VALUE\n");
    let stats = mkv_keys(&dir, &["stats"], Some(&b_hex), None).expect(0);
    assert_eq!(field(&stats, "encryption"), format!("key id {b_id}"));
    mkv_keys(&dir, &["verify"], Some(&b_hex), None).expect(0);
    // A rekey of no database creates none.
    let missing = tmp.path().join("missing");
    let run = mkv_keys(
        &missing,
        &["rekey", "--new-key-file", a.to_str().unwrap()],
        None,
        None,
    );
    run.expect(3).assert_one_line_error();
    assert!(!missing.exists());
}

/// A rotation cut short (the process died after the new key took over,
/// before the old key's files were rewritten) needs both keys until
/// `rekey` is run again, with either the original options or the new key
/// as --key-file and the old one as --old-key-file.
#[test]
fn rekey_run_again_finishes_a_rotation_cut_short() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, a_hex, a_id) = new_key_file(tmp.path(), "a.key");
    let (b, b_hex, b_id) = new_key_file(tmp.path(), "b.key");
    let key = |hex: &str| mergekv::EncryptionKey::from_hex(hex, "test").unwrap();
    let again_forms: [(&str, Option<&str>, Option<&str>); 2] = [
        ("original options", Some(&a_hex), None),
        ("new key as --key-file", Some(&b_hex), Some(&a_hex)),
    ];
    for (i, (form, current, old)) in again_forms.into_iter().enumerate() {
        let dir = tmp.path().join(format!("db{i}"));
        {
            let options = mergekv::Options::default().with_encryption_key(Some(key(&a_hex).into()));
            let db = mergekv::Db::open_with(&dir, options).unwrap();
            for i in 0..50 {
                db.put(format!("k{i}"), "before").unwrap();
            }
            db.set_cursor("reader", 1).unwrap(); // keeps the WAL for the rewrite
            db.rotate_encryption_key(key(&b_hex)).unwrap();
            db.put("after", "rotation").unwrap();
            // A crash: no close, no rewrite.
        }
        let refused = mkv_keys(&dir, &["get", "k1"], Some(&b_hex), None).expect(4);
        refused.assert_one_line_error();
        for needle in [
            a_id.as_str(),
            b_id.as_str(),
            "--old-key-file",
            "MERGEKV_OLD_KEY",
        ] {
            assert!(
                refused.stderr.contains(needle),
                "{form}: {}",
                refused.stderr
            );
        }
        let stats = mkv_keys(&dir, &["--json", "stats"], Some(&b_hex), Some(&a_hex)).expect(0);
        let encryption = &stats.json()["encryption"];
        assert_eq!(encryption["key_id"], b_id.as_str(), "{form}");
        assert!(
            encryption["files_under_other_keys"].as_u64() > Some(0),
            "{form}"
        );
        assert_eq!(encryption["other_key_ids"][0], a_id.as_str(), "{form}");

        let args = ["--json", "rekey", "--new-key-file", b.to_str().unwrap()];
        let done = mkv_keys(&dir, &args, current, old).expect(0).json();
        assert_eq!(done["resumed"], true, "{form}: {done}");
        assert_eq!(done["key_id"], b_id.as_str(), "{form}");
        assert_eq!(done["files_left"], 0, "{form}: {done}");
        let got = mkv_keys(&dir, &["get", "after"], Some(&b_hex), None).expect(0);
        assert_eq!(got.stdout, "rotation\n", "{form}");
        let got = mkv_keys(&dir, &["get", "k49"], Some(&b_hex), None).expect(0);
        assert_eq!(got.stdout, "before\n", "{form}");
        mkv_keys(&dir, &["get", "k1"], Some(&a_hex), None).expect(4);
    }
}

/// `promote` of an encrypted follower takes its key: without it, it is
/// refused naming the key id and changes nothing.
#[test]
fn promote_of_an_encrypted_follower_takes_its_key() {
    let (tmp, dir) = db_dir();
    let (_, hex, id) = new_key_file(tmp.path(), "a.key");
    mkv_keys(&dir, &["put", "k", "v"], Some(&hex), None).expect(0);
    // What `follow` leaves to mark the directory (docs/FORMAT.md).
    std::fs::write(dir.join("FOLLOWER"), "127.0.0.1:1").unwrap();
    let before = contents(&dir);
    let none = mkv_keys(&dir, &["promote"], None, None).expect(4);
    none.assert_one_line_error();
    assert!(none.stderr.contains(&id), "{}", none.stderr);
    assert_eq!(contents(&dir), before);
    mkv_keys(&dir, &["put", "k", "w"], Some(&hex), None).expect(5);
    let promoted = mkv_keys(&dir, &["--json", "promote"], Some(&hex), None).expect(0);
    assert_eq!(promoted.json()["promoted"], true);
    assert!(!dir.join("FOLLOWER").exists());
    mkv_keys(&dir, &["put", "k", "w"], Some(&hex), None).expect(0);
}

#[test]
fn old_key_file_repeats_for_two_unfinished_rotations() {
    use mergekv::{Db, EncryptionKey, KeySource, Options};
    let (tmp, dir) = db_dir();
    let (k1, h1, _) = new_key_file(tmp.path(), "k1");
    let (k2, h2, _) = new_key_file(tmp.path(), "k2");
    let (k3, h3, _) = new_key_file(tmp.path(), "k3");
    let key = |hex: &str| EncryptionKey::from_hex(hex, "test").unwrap();
    {
        let db = Db::open_with(
            &dir,
            Options::default().with_encryption_key(Some(KeySource::Key(key(&h1)))),
        )
        .unwrap();
        db.set_cursor("hold", 1).unwrap();
        db.put("a", "1").unwrap();
        db.compact_now().unwrap();
        db.put("b", "2").unwrap();
        db.rotate_encryption_key(key(&h2)).unwrap();
        db.put("c", "3").unwrap();
        db.rotate_encryption_key(key(&h3)).unwrap();
        drop(db); // both rewrites unfinished
    }
    let with = |old: &[&PathBuf]| {
        let mut args = vec!["--key-file", k3.to_str().unwrap()];
        for f in old {
            args.extend(["--old-key-file", f.to_str().unwrap()]);
        }
        args.extend(["get", "b"]);
        mkv_keys(&dir, &args, None, None)
    };
    with(&[&k2]).expect(4);
    let run = with(&[&k1, &k2]).expect(0);
    assert_eq!(run.stdout.trim(), "2");
}

#[cfg(feature = "object-store")]
#[test]
fn sync_prints_what_moved_and_an_idle_round_in_a_new_process_is_one_listing() {
    let tmp = tempfile::tempdir().unwrap();
    let url = format!("file://{}", tmp.path().join("bucket").display());
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    mkv(&a, &["put", "k", "from a"]).expect(0);
    mkv(&b, &["incr", "hits", "3"]).expect(0);
    let first = mkv(&a, &["sync", &url]).expect(0);
    assert!(
        first.stdout.contains("pushed: 1 objects, 1 changes,"),
        "{}",
        first.stdout
    );
    mkv(&b, &["sync", &url]).expect(0);
    for _ in 0..2 {
        mkv(&a, &["sync", &url]).expect(0);
        mkv(&b, &["sync", &url]).expect(0);
    }
    assert_eq!(mkv(&b, &["get", "k"]).expect(0).stdout, "from a\n");
    assert_eq!(mkv(&a, &["get", "hits"]).expect(0).stdout, "3\n");
    let idle = mkv(&a, &["--json", "sync", &url]).expect(0).json();
    assert_eq!(idle["requests"]["list"], 1, "{idle}");
    assert_eq!(idle["requests"]["get"], 0, "{idle}");
    assert_eq!(idle["requests"]["put"], 0, "{idle}");
    // Backup, then a restore into a new directory.
    let backups = format!("file://{}", tmp.path().join("backups").display());
    mkv(&a, &["backup", &backups]).expect(0);
    let restored = tmp.path().join("restored");
    let run = Run::from(
        bin()
            .args(["restore", &backups])
            .arg(&restored)
            .output()
            .unwrap(),
    )
    .expect(0);
    assert!(run.stdout.contains("restored into"), "{}", run.stdout);
    assert_eq!(mkv(&restored, &["get", "k"]).expect(0).stdout, "from a\n");
    assert_eq!(mkv(&restored, &["get", "hits"]).expect(0).stdout, "3\n");
}

#[cfg(feature = "object-store")]
#[test]
fn sync_to_a_store_that_cannot_be_reached_exits_3_with_one_line() {
    let (_tmp, dir) = db_dir();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let run = Run::from(
        bin()
            .arg("--data")
            .arg(&dir)
            .args(["sync", "s3://nowhere/prefix"])
            .env("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}"))
            .env("AWS_ALLOW_HTTP", "true")
            .env("AWS_ACCESS_KEY_ID", "k")
            .env("AWS_SECRET_ACCESS_KEY", "s")
            .env("AWS_REGION", "us-east-1")
            .output()
            .unwrap(),
    )
    .expect(3);
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
    assert!(run.stderr.contains("cannot be reached"), "{}", run.stderr);
    mkv(&dir, &["sync", "ftp://x/y"]).expect(2);
    mkv(
        &dir,
        &[
            "restore",
            "file:///nonexistent-bucket-dir",
            "--at",
            "yesterday",
        ],
    )
    .expect(2);
}

// Issue 16: binary-safe output, JSON errors, TLS flags, addresses,
// keygen for the master key, the demo's directory, help text.

/// Runs `mergekv --data DIR ARGS...` and returns stdout's exact bytes.
fn mkv_bytes(dir: &Path, args: &[&str]) -> (i32, Vec<u8>) {
    let output = bin().arg("--data").arg(dir).args(args).output().unwrap();
    (output.status.code().unwrap(), output.stdout)
}

/// The bytes a JSON object holds under `name` or `name_hex`, checking
/// that exactly one of the two is present.
fn json_bytes(object: &Json, name: &str) -> Vec<u8> {
    let text = object.get(name).and_then(Json::as_str);
    let hex = object.get(format!("{name}_hex")).and_then(Json::as_str);
    match (text, hex) {
        (Some(text), None) => text.as_bytes().to_vec(),
        (None, Some(hex)) => (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect(),
        _ => panic!("not exactly one of {name} and {name}_hex in {object}"),
    }
}

#[test]
fn keys_and_values_of_any_bytes_are_printed_unambiguously_and_round_trip() {
    let (tmp, dir) = db_dir();
    // "a\nb" -> 0xff 0xfe, in hex on the command line.
    mkv(&dir, &["put", "--hex", "610a62", "fffe"]).expect(0);
    mkv(&dir, &["put", "a\\b", "x\ty"]).expect(0);
    let value_file = tmp.path().join("value");
    let binary: Vec<u8> = (0..=255u8).collect();
    std::fs::write(&value_file, &binary).unwrap();
    mkv(
        &dir,
        &["put", "bin", "--value-file", value_file.to_str().unwrap()],
    )
    .expect(0);
    let stdin_put = mkv_stdin(&dir, &["put", "stdin", "--value-file", "-"], b"\x00\r\n");
    stdin_put.expect(0);
    let expected: Vec<(Vec<u8>, Vec<u8>)> = vec![
        (b"a\nb".to_vec(), b"\xff\xfe".to_vec()),
        (b"a\\b".to_vec(), b"x\ty".to_vec()),
        (b"bin".to_vec(), binary.clone()),
        (b"stdin".to_vec(), b"\x00\r\n".to_vec()),
    ];

    // Text: one line per entry, every special byte escaped.
    let scan = mkv(&dir, &["scan", "--limit", "2"]).expect(0);
    assert_eq!(scan.lines(), ["a\\nb\t\\xff\\xfe", "a\\\\b\tx\\ty"]);
    let get = mkv(&dir, &["get", "stdin"]).expect(0);
    assert_eq!(get.stdout, "\\x00\\r\\n\n");
    let (_, get_bin) = mkv_bytes(&dir, &["get", "bin"]);
    assert!(get_bin.is_ascii(), "escaped text is ASCII here");
    assert!(
        String::from_utf8(get_bin)
            .unwrap()
            .starts_with("\\x00\\x01\\x02")
    );

    // --hex: keys and values as hex, in and out.
    let hex = mkv(&dir, &["scan", "--hex", "--prefix", "61"]).expect(0);
    assert_eq!(hex.lines(), ["610a62\tfffe", "615c62\t780979"]);
    let get = mkv(&dir, &["get", "--hex", "610a62"]).expect(0);
    assert_eq!(get.stdout, "fffe\n");
    mkv(&dir, &["get", "--hex", "6"])
        .expect(2)
        .assert_one_line_error();

    // --raw: the exact bytes, nothing added.
    assert_eq!(
        mkv_bytes(&dir, &["get", "--raw", "bin"]),
        (0, binary.clone())
    );
    assert_eq!(
        mkv_bytes(&dir, &["get", "--raw", "--hex", "610a62"]),
        (0, b"\xff\xfe".to_vec())
    );

    // JSON: "key"/"value" for UTF-8, "key_hex"/"value_hex" otherwise.
    let json = mkv(&dir, &["--json", "scan"]).expect(0).json();
    let entries = json["entries"].as_array().unwrap();
    let got: Vec<(Vec<u8>, Vec<u8>)> = entries
        .iter()
        .map(|e| (json_bytes(e, "key"), json_bytes(e, "value")))
        .collect();
    assert_eq!(got, expected);
    assert_eq!(entries[0]["key"], "a\nb");
    assert_eq!(entries[0]["value_hex"], "fffe");
    assert_eq!(entries[1]["value"], "x\ty");
    let get = mkv(&dir, &["--json", "get", "--hex", "610a62"])
        .expect(0)
        .json();
    assert_eq!(
        (&get["key_hex"], &get["value_hex"]),
        (&Json::from("610a62"), &Json::from("fffe"))
    );
    assert!(
        get.get("key").is_none() && get.get("value").is_none(),
        "{get}"
    );

    // Counters and deletes through hex keys.
    assert_eq!(
        mkv(&dir, &["incr", "--hex", "00ff", "5"]).expect(0).stdout,
        "5\n"
    );
    assert_eq!(
        mkv(&dir, &["get", "--hex", "00ff", "--raw"])
            .expect(0)
            .stdout,
        "5"
    );
    mkv(&dir, &["del", "--hex", "610a62"]).expect(0);
    mkv(&dir, &["get", "a\nb"]).expect(1);

    // The escapes are documented.
    let help = Run::from(bin().arg("--help").output().unwrap()).expect(0);
    for needle in ["\\xHH", "\\n", "\\\\", "key_hex", "value_hex", "--raw"] {
        assert!(help.stdout.contains(needle), "{needle}: {}", help.stdout);
    }
}

#[test]
fn errors_under_json_are_one_object_on_stdout_with_the_same_exit_codes() {
    let (_tmp, dir) = db_dir();
    let error_of = |run: &Run, code: i32, kind: &str| {
        let json = run.json();
        assert_eq!(json["error"]["exit_code"], code, "{json}");
        assert_eq!(json["error"]["kind"], kind, "{json}");
        let message = json["error"]["message"].as_str().unwrap();
        assert!(!message.is_empty(), "{json}");
        // The human line stays on stderr.
        assert!(run.stderr.contains(message), "{}", run.stderr);
    };
    // Data: no database there (and nothing created).
    let run = mkv(&dir, &["--json", "scan"]).expect(3);
    error_of(&run, 3, "data");
    assert!(!dir.exists());
    // Usage, from the program and from the parser.
    error_of(
        &mkv(&dir, &["--json", "put", "--hex", "xyz", "v"]).expect(2),
        2,
        "usage",
    );
    error_of(
        &mkv(&dir, &["put", "--json", "--bogus", "k", "v"]).expect(2),
        2,
        "usage",
    );
    error_of(
        &mkv(&dir, &["--json", "put", "-k", "_bad", "k", "v"]).expect(2),
        2,
        "usage",
    );
    // Denied: a wrong master key.
    mkv_auth(
        &dir,
        &["user", "add", "alice"],
        "s3cret-password\n",
        Some(MASTER_KEY_HEX),
    )
    .expect(0);
    let wrong = mkv_auth(
        &dir,
        &["--json", "user", "verify", "alice"],
        "wrong-password\n",
        Some(MASTER_KEY_HEX),
    );
    error_of(&wrong.expect(4), 4, "denied");
    // Not found: `get`'s own object already says so; no second object.
    let missing = mkv(&dir, &["--json", "get", "nope"]).expect(1);
    assert_eq!(missing.json()["found"], false);
    // Without --json, stdout stays empty.
    let plain = mkv(&dir, &["put", "--hex", "xyz", "v"]).expect(2);
    assert_eq!(plain.stdout, "");
    plain.assert_one_line_error();
}

#[test]
fn an_unparsable_address_is_a_usage_error_and_an_unbindable_one_a_data_error() {
    let (_tmp, dir) = db_dir();
    let key = Some(MASTER_KEY_HEX);
    mkv_auth(&dir, &["user", "add", "repl"], "s3cret-password\n", key).expect(0);
    for bad in [
        "127.0.0.1:99999",
        "127.0.0.1",
        "no port:1",
        ":7411",
        "[::1:7411",
    ] {
        mkv_auth(&dir, &["serve", "--listen", bad], "", key).expect(2);
        mkv(&dir, &["follow", "--leader", bad, "--token-file", "t"]).expect(2);
    }
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let run = mkv_auth(&dir, &["serve", "--listen", &addr], "", key).expect(3);
    run.assert_one_line_error();
    assert!(run.stderr.contains(&addr), "{}", run.stderr);
    // Durations and sizes are checked by the parser too.
    mkv(&dir, &["load", "--batch", "0", "-"]).expect(2);
    mkv(&dir, &["scan", "--limit", "-1"]).expect(2);
    mkv_auth(
        &dir,
        &["apikey", "create", "repl", "--expires-in", "10y"],
        "",
        key,
    )
    .expect(2);
}

#[test]
fn keygen_auth_writes_a_master_key_file_and_prints_only_its_id() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("master.key");
    let run = Run::from(
        bin()
            .args(["--json", "keygen", "--auth", "--out"])
            .arg(&file)
            .output()
            .unwrap(),
    )
    .expect(0);
    let json = run.json();
    let written = std::fs::read_to_string(&file).unwrap();
    assert_eq!(written.trim().len(), 64, "{written:?}");
    assert!(!run.stdout.contains(written.trim()), "no key material");
    assert!(!run.stderr.contains(written.trim()), "no key material");
    let id = json["key_id"].as_str().unwrap();
    assert!(!id.is_empty() && !written.contains(id), "{json}");
    assert_eq!(json["kind"], "auth master key");
    #[cfg(unix)]
    assert_eq!(mode(&file), 0o600);
    let text = Run::from(
        bin()
            .args(["keygen", "--auth", "--out"])
            .arg(tmp.path().join("m2"))
            .output()
            .unwrap(),
    )
    .expect(0);
    assert!(text.stdout.contains("key id "), "{}", text.stdout);
    // Refuses an existing file, which keeps its key.
    Run::from(
        bin()
            .args(["keygen", "--auth", "--out"])
            .arg(&file)
            .output()
            .unwrap(),
    )
    .expect(2);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), written);
    // The file is what --master-key-file takes.
    let dir = tmp.path().join("db");
    let add = [
        "--master-key-file",
        file.to_str().unwrap(),
        "user",
        "add",
        "bob",
    ];
    mkv_stdin(&dir, &add, b"s3cret-password\n").expect(0);
}

#[test]
fn each_subcommand_help_is_short_about_keys_and_the_top_level_help_explains_them() {
    let top = Run::from(bin().arg("--help").output().unwrap()).expect(0);
    for needle in [
        "MERGEKV_MASTER_KEY",
        "MERGEKV_KEY",
        "MERGEKV_OLD_KEY",
        "64",
        "hex digits",
    ] {
        assert!(top.stdout.contains(needle), "{needle}: {}", top.stdout);
    }
    for command in [
        "get", "put", "scan", "serve", "follow", "user add", "stats", "demo",
    ] {
        let args: Vec<&str> = command.split(' ').chain(["--help"]).collect();
        let help = Run::from(bin().args(&args).output().unwrap()).expect(0);
        let lines = help.lines();
        for flag in ["--master-key-file", "--key-file", "--old-key-file"] {
            let at = lines
                .iter()
                .position(|l| l.trim_start().starts_with(flag))
                .unwrap_or_else(|| panic!("{command}: no {flag}"));
            // One line: the next one is the next option.
            let next = lines.get(at + 1).map(|l| l.trim_start()).unwrap_or("-");
            assert!(next.starts_with('-'), "{command} {flag}: {}", help.stdout);
            assert!(lines[at].len() < 120, "{command}: {}", lines[at]);
        }
    }
}

#[test]
fn demo_refuses_a_directory_that_is_not_empty_nor_its_own() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("used");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("notes.txt"), "mine").unwrap();
    let run = Run::from(bin().args(["demo", "--dir"]).arg(&dir).output().unwrap()).expect(2);
    run.assert_one_line_error();
    assert!(run.stderr.contains("not empty"), "{}", run.stderr);
    assert_eq!(names_in(&dir), ["notes.txt"]);
    assert_eq!(
        std::fs::read_to_string(dir.join("notes.txt")).unwrap(),
        "mine"
    );
}

/// PEM text of one DER object (RFC 7468: base64 in 64-character lines).
#[cfg(feature = "tls")]
fn pem(label: &str, der: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut base64 = String::new();
    for chunk in der.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                base64.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                base64.push('=');
            }
        }
    }
    let lines: Vec<&str> = base64
        .as_bytes()
        .chunks(64)
        .map(|l| std::str::from_utf8(l).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

/// A CA made for one test, written as `<name>-ca.pem` in `dir`, and a
/// leader certificate for "localhost" it issued (`<name>-leader.pem`, the
/// chain, and `<name>-leader.key`). Returns the three paths.
#[cfg(feature = "tls")]
fn tls_files(dir: &Path, name: &str) -> (PathBuf, PathBuf, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.distinguished_name.push(DnType::CommonName, name);
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf_params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
    let paths = (
        dir.join(format!("{name}-ca.pem")),
        dir.join(format!("{name}-leader.pem")),
        dir.join(format!("{name}-leader.key")),
    );
    std::fs::write(&paths.0, pem("CERTIFICATE", ca_cert.der())).unwrap();
    let chain = pem("CERTIFICATE", leaf.der()) + &pem("CERTIFICATE", ca_cert.der());
    std::fs::write(&paths.1, chain).unwrap();
    let key = pem("PRIVATE KEY", &leaf_key.serialize_der());
    std::fs::write(&paths.2, key).unwrap();
    paths
}

/// A leader with a replicate token in `<tmp>/token`; returns the token
/// file's path.
#[cfg(feature = "tls")]
fn leader_with_token(tmp: &Path, leader: &Path) -> PathBuf {
    let key = Some(MASTER_KEY_HEX);
    mkv_auth(leader, &["user", "add", "repl"], "s3cret-password\n", key).expect(0);
    let token = mkv_auth(
        leader,
        &["apikey", "create", "repl", "--scope", "replicate"],
        "",
        key,
    )
    .expect(0)
    .stdout;
    let token_file = tmp.join("token");
    std::fs::write(&token_file, token).unwrap();
    token_file
}

#[cfg(feature = "tls")]
#[test]
fn serve_and_follow_over_tls_with_pem_files() {
    let tmp = tempfile::tempdir().unwrap();
    let (leader, follower) = (tmp.path().join("leader"), tmp.path().join("follower"));
    let token_file = leader_with_token(tmp.path(), &leader);
    let token = token_file.to_str().unwrap();
    load_keys(&leader, "k-", 500);
    let seq = last_seq(&leader);
    let (ca, cert, key) = tls_files(tmp.path(), "good");
    let (other_ca, _, _) = tls_files(tmp.path(), "other");

    let mut serve = Running::start(
        &leader,
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    let line = serve.line_where(|l| l.starts_with("serving replication on"));
    assert!(line.contains("over TLS"), "{line}");
    let port = served_addr(&line).rsplit_once(':').unwrap().1.to_string();
    // The certificate names "localhost": the server name comes from the
    // leader's host, or from --tls-server-name for an address.
    let by_name = format!("localhost:{port}");
    let by_ip = format!("127.0.0.1:{port}");

    // A follower trusting another CA never connects.
    let mut distrust = Running::start(
        &tmp.path().join("distrust"),
        &[
            "follow",
            "--leader",
            &by_name,
            "--token-file",
            token,
            "--tls-ca",
            other_ca.to_str().unwrap(),
        ],
    );
    let refused = distrust.line_where(|l| l.starts_with("reconnecting ("));
    let why = refused.to_lowercase();
    assert!(
        why.contains("certificate") || why.contains("issuer"),
        "{refused}"
    );
    distrust.kill();

    let mut follow = Running::start(
        &follower,
        &[
            "follow",
            "--leader",
            &by_ip,
            "--token-file",
            token,
            "--tls-ca",
            ca.to_str().unwrap(),
            "--tls-server-name",
            "localhost",
        ],
    );
    follow.line_where(|l| caught_up_to(l, seq));
    follow.kill();
    serve.kill();
    assert_eq!(
        mkv(&follower, &["digest"]).expect(0).stdout,
        mkv(&leader, &["digest"]).expect(0).stdout
    );
    // Unreadable PEM is a usage error, before anything is served.
    let garbage = tmp.path().join("garbage.pem");
    std::fs::write(&garbage, "not pem").unwrap();
    let bad = mkv_auth(
        &leader,
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
            garbage.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
        "",
        Some(MASTER_KEY_HEX),
    )
    .expect(2);
    bad.assert_one_line_error();
    assert!(bad.stderr.contains("--tls-cert"), "{}", bad.stderr);
    // --tls-cert needs --tls-key.
    mkv_auth(
        &leader,
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
            cert.to_str().unwrap(),
        ],
        "",
        Some(MASTER_KEY_HEX),
    )
    .expect(2);
}

#[test]
fn a_token_over_plain_tcp_is_refused_off_loopback_and_warned_about_on_it() {
    let tmp = tempfile::tempdir().unwrap();
    let token_file = tmp.path().join("token");
    std::fs::write(&token_file, "mkv_not_a_real_token").unwrap();
    let token = token_file.to_str().unwrap();
    // 192.0.2.1 is TEST-NET-1: refused before any connection is tried.
    let refused = mkv(
        &tmp.path().join("f1"),
        &[
            "follow",
            "--leader",
            "192.0.2.1:7411",
            "--token-file",
            token,
        ],
    )
    .expect(2);
    refused.assert_one_line_error();
    assert!(refused.stderr.contains("--insecure"), "{}", refused.stderr);
    assert!(!tmp.path().join("f1").exists(), "nothing created");

    // On loopback it runs, with a warning on stderr first.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let mut child = bin()
        .arg("--data")
        .arg(tmp.path().join("f2"))
        .args(["follow", "--leader", &addr, "--token-file", token])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut warning = String::new();
    std::io::BufRead::read_line(&mut stderr, &mut warning).unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        warning.contains("WARNING") && warning.contains("in clear"),
        "{warning}"
    );
}
