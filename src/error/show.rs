//! Readable renderings of user bytes (keys, values) for `Debug` output and
//! error messages.

use std::fmt;

/// How many bytes of a key or value `Debug` output and error messages show;
/// a longer one is cut there and its full length is given.
pub(crate) const DEBUG_BYTES_SHOWN_MAX: usize = 64;

/// Shows bytes as a person reads them: UTF-8 text as a quoted string
/// (`"Ada"`), anything else as an escaped byte string (`b"\xff\x00A"`);
/// past [`DEBUG_BYTES_SHOWN_MAX`] bytes, cut with the full length
/// (`"aaaa"… (1000 bytes)`). `Debug` and `Display` print the same.
#[derive(Clone, Copy)]
pub(crate) struct ShowBytes<'a>(pub(crate) &'a [u8]);

impl fmt::Debug for ShowBytes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes = self.0;
        let truncated = bytes.len() > DEBUG_BYTES_SHOWN_MAX;
        let shown = bytes.get(..DEBUG_BYTES_SHOWN_MAX).unwrap_or(bytes);
        match std::str::from_utf8(shown) {
            Ok(text) => write!(f, "{text:?}")?,
            // The cut fell inside a character: the text up to it.
            Err(e) if truncated && e.error_len().is_none() => {
                let text = shown
                    .get(..e.valid_up_to())
                    .and_then(|t| std::str::from_utf8(t).ok())
                    .unwrap_or_default();
                write!(f, "{text:?}")?;
            }
            Err(_) => {
                f.write_str("b\"")?;
                for &byte in shown {
                    write!(f, "{}", std::ascii::escape_default(byte))?;
                }
                f.write_str("\"")?;
            }
        }
        if truncated {
            write!(f, "… ({} bytes)", bytes.len())?;
        }
        Ok(())
    }
}

impl fmt::Display for ShowBytes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn show(bytes: &[u8]) -> String {
        format!("{:?}", ShowBytes(bytes))
    }

    #[test]
    fn text_is_quoted_and_other_bytes_escaped() {
        assert_eq!(show(b"Ada"), r#""Ada""#);
        assert_eq!(show(b"a\"b\n"), r#""a\"b\n""#);
        assert_eq!(show(&[0xff, 0x00, b'A']), r#"b"\xff\x00A""#);
        assert_eq!(show(b""), r#""""#);
    }

    #[test]
    fn long_values_are_cut_with_their_length() {
        let long = vec![b'a'; 1000];
        let shown = show(&long);
        assert!(shown.ends_with("… (1000 bytes)"), "{shown}");
        assert_eq!(shown.matches('a').count(), DEBUG_BYTES_SHOWN_MAX);
        // A cut inside a multi-byte character still shows text.
        let mut accented = vec![b'a'; DEBUG_BYTES_SHOWN_MAX - 1];
        accented.extend("é".repeat(10).as_bytes());
        assert!(show(&accented).starts_with("\"aaa"), "{}", show(&accented));
    }
}
