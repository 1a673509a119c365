//! The dependency rule between layers (docs/ARCHITECTURE.md, "Layers"):
//! a library module imports only modules of lower layers. This test reads
//! `src/` and fails on an import that goes up a layer or sideways, and on
//! a top-level module the table below does not place.
//!
//! Test modules (`#[cfg(test)] mod tests` at the end of a file), comments
//! and the command-line program (`src/bin`) are exempt: tests may build a
//! whole database to exercise a low layer, and the program sits on top.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Every top-level module of the library and its layer, bottom first. A
/// module may import only modules of strictly lower layers.
const LAYERS: &[(&str, u32)] = &[
    ("clock", 0),
    ("error", 1),
    ("io", 2),
    ("codec", 2),
    ("crdt", 3),
    ("record", 4),
    ("options", 5),
    ("state", 6),
    ("wal", 7),
    ("snapshot", 8),
    ("meta", 8),
    ("command", 9),
    ("engine", 10),
    ("worker", 11),
    ("sync", 11),
    ("compactor", 12),
    ("db", 13),
    ("auth", 14),
    ("verify", 14),
    ("replication", 15),
];

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file belongs to (`src/wal/reader.rs` → `wal`).
fn module_of(path: &Path) -> String {
    let rel = path.strip_prefix(src_dir()).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_string()
}

/// The code of a file without comments and without its trailing test module.
fn code_of(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let body = match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => &text[..at],
        None => &text[..],
    };
    body.lines()
        .map(|line| match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn ident_at(s: &str) -> String {
    s.chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect()
}

/// The first segment of every `crate::` path in `code`, including each
/// member of a `crate::{a, b::c}` group.
fn crate_paths(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            out.extend(group_members(group));
        } else {
            out.push(ident_at(rest));
        }
    }
    out
}

/// The first segment of each top-level member of a brace group.
fn group_members(group: &str) -> Vec<String> {
    let (mut depth, mut members, mut start) = (0, Vec::new(), true);
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => start = true,
            c if start && !c.is_whitespace() => {
                members.push(ident_at(&group[i..]));
                start = false;
            }
            _ => {}
        }
    }
    members
}

/// Names the crate root re-exports, by the module they come from.
fn root_reexports() -> BTreeMap<String, String> {
    let lib = std::fs::read_to_string(src_dir().join("lib.rs")).unwrap();
    let mut names = BTreeMap::new();
    for line in lib.lines().filter(|l| l.starts_with("pub use ")) {
        let path = line.trim_start_matches("pub use ").trim_end_matches(';');
        let module = ident_at(path);
        let members = match path.find('{') {
            Some(at) => group_members(&path[at + 1..]),
            None => vec![path.rsplit("::").next().unwrap_or_default().to_string()],
        };
        for name in members {
            names.insert(name, module.clone());
        }
    }
    names
}

#[test]
fn no_module_imports_a_module_above_or_beside_it() {
    let layers: BTreeMap<&str, u32> = LAYERS.iter().copied().collect();
    let reexports = root_reexports();
    let mut files = Vec::new();
    rust_files(&src_dir(), &mut files);
    let mut violations = Vec::new();
    for path in files
        .iter()
        .filter(|p| !p.starts_with(src_dir().join("bin")))
    {
        let module = module_of(path);
        if module == "lib" {
            continue;
        }
        let Some(&own) = layers.get(module.as_str()) else {
            violations.push(format!("module `{module}` has no layer in LAYERS"));
            continue;
        };
        for name in crate_paths(&code_of(path)) {
            let target = reexports.get(&name).cloned().unwrap_or(name);
            if target == module || target == "self" {
                continue;
            }
            match layers.get(target.as_str()) {
                Some(&layer) if layer < own => {}
                Some(&layer) => violations.push(format!(
                    "{}: `{module}` (layer {own}) imports `{target}` (layer {layer})",
                    path.display()
                )),
                None => violations.push(format!(
                    "{}: imports `crate::{target}`, which is no known module",
                    path.display()
                )),
            }
        }
    }
    violations.sort();
    violations.dedup();
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}

#[test]
fn the_scanner_sees_grouped_and_root_imports() {
    let code = "use crate::{clock::Stamp, record::{Record, StoreKey}};\nuse crate::Db;";
    assert_eq!(crate_paths(code), vec!["clock", "record", "Db"]);
    assert_eq!(root_reexports().get("Db").map(String::as_str), Some("db"));
    let commented = code_of(&src_dir().join("clock").join("mod.rs"));
    assert!(!commented.contains("//"), "comments are stripped");
}
