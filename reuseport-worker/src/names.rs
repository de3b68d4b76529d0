//! Worker names: what a registration may call itself, and how any name is shown.
//!
//! A name travels from an untrusted worker to the operator's terminal (`status`, `top`), the
//! daemon's log and Prometheus labels. The daemon refuses names that are too long or hold
//! control characters; output paths escape them anyway, so a name from an older daemon cannot
//! rewrite a terminal or forge a table line either.

use std::borrow::Cow;

/// Longest name accepted, in bytes.
pub const MAX_NAME_BYTES: usize = 64;

/// Why a name is refused, said to the worker with the fix.
pub fn check(name: &str) -> Result<(), String> {
    if name.len() > MAX_NAME_BYTES {
        return Err(format!(
            "the name is {} bytes long: names are limited to {MAX_NAME_BYTES} bytes",
            name.len()
        ));
    }
    if let Some(c) = name.chars().find(|&c| needs_escape(c)) {
        return Err(format!(
            "the name holds the control character {}: use printable characters only",
            c.escape_unicode()
        ));
    }
    Ok(())
}

/// The name as it may be printed: control characters (C0, DEL, C1) and the invisible
/// direction overrides that could reorder a line are shown escaped (`\u{1b}`).
pub fn printable(name: &str) -> Cow<'_, str> {
    if !name.chars().any(needs_escape) {
        return Cow::Borrowed(name);
    }
    let mut out = String::with_capacity(name.len() + 8);
    for c in name.chars() {
        if needs_escape(c) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_sequences_and_newlines_are_shown_not_obeyed() {
        let forged = "w1\x1b[2J\n  7  666  root-worker  active";
        let shown = printable(forged);
        assert!(!shown.chars().any(char::is_control), "{shown}");
        assert!(shown.starts_with("w1\\u{1b}[2J\\u{a}"), "{shown}");
        assert_eq!(printable("plain-name_1"), "plain-name_1");
        assert_eq!(printable("r\u{202e}evil"), "r\\u{202e}evil");
    }

    #[test]
    fn registration_names_are_short_and_printable() {
        assert!(check("gunicorn-3 (blue)").is_ok());
        assert!(check(&"x".repeat(MAX_NAME_BYTES)).is_ok());
        let long = check(&"x".repeat(MAX_NAME_BYTES + 1))
            .err()
            .unwrap_or_default();
        assert!(long.contains("64 bytes"), "{long}");
        let control = check("a\nb").err().unwrap_or_default();
        assert!(control.contains("\\u{a}"), "{control}");
    }
}
