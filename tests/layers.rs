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
    ("crypto", 3),
    ("record", 4),
    ("options", 5),
    ("run", 5),
    ("state", 6),
    ("wal", 7),
    ("snapshot", 8),
    ("meta", 8),
    ("manifest", 8),
    ("command", 9),
    ("engine", 10),
    ("worker", 11),
    ("sync", 11),
    ("compactor", 12),
    ("db", 13),
    ("auth", 14),
    ("verify", 14),
    ("bucket", 14),
    ("replication", 15),
    ("fuzzing", 16),
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

/// The code of a file without comments and without its test modules.
fn code_of(path: &Path) -> String {
    strip_test_modules(&strip_comments(&std::fs::read_to_string(path).unwrap()))
}

fn strip_comments(text: &str) -> String {
    text.lines()
        .map(|line| match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Removes every `#[cfg(test)]` module (other attributes may follow the
/// `cfg`), wherever it sits in the file, by matching its braces.
fn strip_test_modules(code: &str) -> String {
    let mut out = String::new();
    let mut rest = code;
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let after = &rest[at + "#[cfg(test)]".len()..];
        match test_module_body(after) {
            Some(body) => rest = &after[body + skip_braced(&after[body..])..],
            None => {
                out.push_str("#[cfg(test)]");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Where the `{` of a module starts, if what follows `#[cfg(test)]` (after
/// any other attributes) is a module.
fn test_module_body(after: &str) -> Option<usize> {
    let mut pos = 0;
    loop {
        let trimmed = after[pos..].trim_start();
        pos = after.len() - trimmed.len();
        if trimmed.starts_with("#[") {
            pos += trimmed.find(']')? + 1;
        } else if trimmed.starts_with("mod ") {
            return Some(pos + trimmed.find('{')?);
        } else {
            return None;
        }
    }
}

/// The length of the brace group `code` starts with.
fn skip_braced(code: &str) -> usize {
    let mut depth = 0usize;
    for (i, c) in code.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
    }
    code.len()
}

/// The module path of a file: `src/wal/reader.rs` → `["wal", "reader"]`,
/// `src/wal/mod.rs` → `["wal"]`.
fn module_path(path: &Path) -> Vec<String> {
    let rel = path.strip_prefix(src_dir()).unwrap();
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| {
            let name = c.as_os_str().to_string_lossy();
            name.trim_end_matches(".rs").to_string()
        })
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts
}

/// The first segment of every `crate::` path in `code`, including each
/// member of a `crate::{a, b::c}` group.
fn crate_paths(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (at, _) in code.match_indices("crate::") {
        out.extend(path_heads(&code[at + "crate::".len()..]));
    }
    out
}

/// The top-level modules named by `super::` chains that climb to the
/// crate root from the file at `module` (`super::engine` in
/// `src/wal/mod.rs` names `engine`).
fn super_paths(code: &str, module: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for (at, _) in code.match_indices("super::") {
        let before = code[..at].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
            continue; // the tail of a longer chain or word, seen at its start
        }
        let mut rest = &code[at..];
        let mut depth = 0;
        while let Some(next) = rest.strip_prefix("super::") {
            depth += 1;
            rest = next;
        }
        if depth >= module.len() {
            out.extend(path_heads(rest));
        }
    }
    out
}

fn ident_at(s: &str) -> String {
    s.chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect()
}

fn path_heads(rest: &str) -> Vec<String> {
    match rest.strip_prefix('{') {
        Some(group) => group_members(group),
        None => vec![ident_at(rest)],
    }
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
        let path_in_crate = module_path(path);
        if module == "lib" {
            continue;
        }
        let Some(&own) = layers.get(module.as_str()) else {
            violations.push(format!("module `{module}` has no layer in LAYERS"));
            continue;
        };
        let code = code_of(path);
        let mut names = crate_paths(&code);
        names.extend(super_paths(&code, &path_in_crate));
        for name in names {
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
fn the_scanner_sees_super_chains_and_code_after_test_modules() {
    let key = ["record".to_string(), "key".to_string()];
    assert_eq!(super_paths("use super::super::db::Db;", &key), vec!["db"]);
    assert!(
        super_paths("use super::codec;", &key).is_empty(),
        "stays in record"
    );
    let wal = ["wal".to_string()];
    let grouped = super_paths("use super::{engine::Engine, io};", &wal);
    assert_eq!(grouped, vec!["engine", "io"]);
    let code = "fn a() {}\n#[cfg(test)]\n#[allow(x)]\nmod tests { fn t() { crate::db::x(); } }\n\
                use crate::engine::E;";
    assert_eq!(crate_paths(&strip_test_modules(code)), vec!["engine"]);
}

#[test]
fn the_scanner_sees_grouped_and_root_imports() {
    let code = "use crate::{clock::Stamp, record::{Record, StoreKey}};\nuse crate::Db;";
    assert_eq!(crate_paths(code), vec!["clock", "record", "Db"]);
    assert_eq!(root_reexports().get("Db").map(String::as_str), Some("db"));
    let commented = code_of(&src_dir().join("clock").join("mod.rs"));
    assert!(!commented.contains("//"), "comments are stripped");
}
