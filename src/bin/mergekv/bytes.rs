//! Keys and values as the program shows and takes them: escaped text, hex,
//! or JSON fields that round-trip any bytes.
//!
//! Text output escapes whatever could make a line ambiguous: a backslash
//! is `\\`, a tab (scan's separator) `\t`, a newline `\n`, a carriage
//! return `\r`, and any other control character, or byte that is not part
//! of valid UTF-8, `\xHH` (two lower-case hex digits). Everything else is
//! printed as is, so UTF-8 text reads as itself and the escaped form maps
//! back to exactly one byte string.

use std::fmt::Write as _;

use serde::Serialize;

use crate::error::{CliError, EXIT_USAGE};

/// The text form of `bytes`, escaped as the module docs describe.
pub fn escape(bytes: &[u8]) -> String {
    let mut text = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            escape_char(c, &mut text);
        }
        for b in chunk.invalid() {
            let _ = write!(text, "\\x{b:02x}");
        }
    }
    text
}

fn escape_char(c: char, text: &mut String) {
    match c {
        '\\' => text.push_str("\\\\"),
        '\t' => text.push_str("\\t"),
        '\n' => text.push_str("\\n"),
        '\r' => text.push_str("\\r"),
        c if c.is_control() => {
            let mut utf8 = [0u8; 4];
            for b in c.encode_utf8(&mut utf8).bytes() {
                let _ = write!(text, "\\x{b:02x}");
            }
        }
        c => text.push(c),
    }
}

/// `bytes` as lower-case hex digits, two per byte.
pub fn hex(bytes: &[u8]) -> String {
    let mut text = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(text, "{b:02x}");
    }
    text
}

/// The bytes written as hex digits in `text` (either case, an even number
/// of them); `what` names the argument in the error, a usage error.
pub fn from_hex(text: &str, what: &str) -> Result<Vec<u8>, CliError> {
    let bad = |why: &str| CliError::new(EXIT_USAGE, format_args!("{what} {text:?} {why}"));
    if !text.len().is_multiple_of(2) {
        return Err(bad("is not hex: an odd number of digits"));
    }
    text.as_bytes()
        .chunks_exact(2)
        .map(|pair| {
            std::str::from_utf8(pair)
                .ok()
                .and_then(|p| u8::from_str_radix(p, 16).ok())
                .ok_or_else(|| bad("is not hex: only 0-9, a-f and A-F"))
        })
        .collect()
}

/// A key or value argument: its bytes, from hex digits with `--hex`, else
/// the argument's own UTF-8 bytes.
pub fn arg_bytes(text: &str, hex_input: bool, what: &str) -> Result<Vec<u8>, CliError> {
    if hex_input {
        from_hex(text, what)
    } else {
        Ok(text.as_bytes().to_vec())
    }
}

/// Bytes in a line of text output: hex with `--hex`, else escaped.
pub fn shown(bytes: &[u8], hex_output: bool) -> String {
    if hex_output {
        hex(bytes)
    } else {
        escape(bytes)
    }
}

/// A key in a JSON object: `"key": "<UTF-8>"` when the bytes are valid
/// UTF-8 (and `--hex` was not given), else `"key_hex": "<hex>"`. Exactly
/// one of the two is present, so any bytes round-trip.
#[derive(Serialize)]
pub struct KeyJson {
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key_hex: Option<String>,
}

impl KeyJson {
    /// `bytes` as `"key"` or `"key_hex"`.
    pub fn new(bytes: &[u8], hex_output: bool) -> KeyJson {
        let (key, key_hex) = text_or_hex(bytes, hex_output);
        KeyJson { key, key_hex }
    }
}

/// A value in a JSON object: `"kind": "bytes"` with `"value": "<UTF-8>"`
/// or `"value_hex": "<hex>"` (as for keys), or `"kind": "counter"` with
/// `"value": <number>`.
#[derive(Serialize)]
pub struct ValueJson {
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value_hex: Option<String>,
}

impl ValueJson {
    /// `value` in the form the type docs describe.
    pub fn new(value: &mergekv::Value, hex_output: bool) -> ValueJson {
        match value {
            mergekv::Value::Bytes(b) => {
                let (text, value_hex) = text_or_hex(b, hex_output);
                ValueJson {
                    kind: "bytes",
                    value: text.map(serde_json::Value::String),
                    value_hex,
                }
            }
            mergekv::Value::Counter(c) => ValueJson {
                kind: "counter",
                value: Some((*c).into()),
                value_hex: None,
            },
        }
    }
}

/// `(Some(text), None)` for valid UTF-8 unless `hex_output`, else
/// `(None, Some(hex))`.
fn text_or_hex(bytes: &[u8], hex_output: bool) -> (Option<String>, Option<String>) {
    match std::str::from_utf8(bytes) {
        Ok(text) if !hex_output => (Some(text.to_string()), None),
        _ => (None, Some(hex(bytes))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_what_would_make_a_line_ambiguous() {
        assert_eq!(escape(b"plain text"), "plain text");
        assert_eq!(escape("caf\u{e9}".as_bytes()), "caf\u{e9}");
        assert_eq!(escape(b"a\tb\nc\rd\\e"), "a\\tb\\nc\\rd\\\\e");
        assert_eq!(escape(b"\xff\xfe\x00\x7f"), "\\xff\\xfe\\x00\\x7f");
        assert_eq!(escape("\u{85}".as_bytes()), "\\xc2\\x85");
    }

    #[test]
    fn hex_round_trips_and_refuses_what_is_not_hex() {
        assert_eq!(hex(b"\xff\x00a"), "ff0061");
        assert_eq!(from_hex("FF0061", "KEY").unwrap(), b"\xff\x00a");
        assert_eq!(from_hex("", "KEY").unwrap(), b"");
        assert_eq!(from_hex("abc", "KEY").unwrap_err().code, EXIT_USAGE);
        assert_eq!(from_hex("zz", "KEY").unwrap_err().code, EXIT_USAGE);
        assert_eq!(from_hex("\u{e9}", "KEY").unwrap_err().code, EXIT_USAGE);
    }
}
