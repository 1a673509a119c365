//! Puts the versions of the peers that Cargo.lock resolved into the binary,
//! so the table's header says what was measured.

fn main() {
    println!("cargo:rerun-if-changed=Cargo.lock");
    let lock = std::fs::read_to_string("Cargo.lock").unwrap_or_default();
    for name in ["redb", "fjall", "sled", "mergekv"] {
        let version = locked_version(&lock, name).unwrap_or_else(|| "?".into());
        println!(
            "cargo:rustc-env=PEERS_VERSION_{}={version}",
            name.to_uppercase()
        );
    }
}

/// The version of the first `[[package]]` named `name` in a Cargo.lock.
fn locked_version(lock: &str, name: &str) -> Option<String> {
    let wanted = format!("name = \"{name}\"");
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line.trim() == wanted {
            let next = lines.next()?;
            return Some(
                next.trim()
                    .strip_prefix("version = ")?
                    .trim_matches('"')
                    .to_string(),
            );
        }
    }
    None
}
