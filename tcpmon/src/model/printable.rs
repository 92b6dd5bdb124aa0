//! Text that came from someone else (a process name, a cgroup path) made safe to print on
//! a terminal: control characters would otherwise move the cursor, erase root's lines or
//! retitle the window. JSON output does not need this (serde escapes them exactly).
use std::{borrow::Cow, fmt::Write as _};

/// Whether a terminal may act on `c` rather than show it: C0 controls, DEL, C1 controls
/// (U+0080..U+009F, which some terminals read as escape sequences) and the bidirectional
/// overrides that reorder what is shown.
fn is_unsafe(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `text` with every unsafe character written as a visible escape (`\e`, `\n`, `\t`,
/// `\x07`, `\u{202e}`); borrowed when there is none, the common case.
pub fn printable(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_unsafe) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        push_char(&mut out, c);
    }
    Cow::Owned(out)
}

/// [`printable`], cut to `max` characters with an ellipsis: for text that may be
/// arbitrarily long (a cgroup path, an LXC container's name) in a table cell or a label.
/// JSON carries it whole.
pub fn printable_clipped(text: &str, max: usize) -> Cow<'_, str> {
    let shown = printable(text);
    if shown.chars().count() <= max {
        return shown;
    }
    let mut out: String = shown.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    Cow::Owned(out)
}

fn push_char(out: &mut String, c: char) {
    match c {
        '\x1b' => out.push_str("\\e"),
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        '\\' => out.push_str("\\\\"),
        c if (c as u32) < 0x100 && is_unsafe(c) => {
            let _ = write!(out, "\\x{:02x}", c as u32);
        }
        c if is_unsafe(c) => {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        }
        c => out.push(c),
    }
}

/// Bytes that should be text (a kernel task name): valid UTF-8 runs as by [`printable`],
/// every byte of an invalid sequence as `\xNN`.
pub fn printable_bytes(bytes: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(text) => printable(text),
        Err(_) => {
            let mut out = String::with_capacity(bytes.len() * 2);
            for chunk in bytes.utf8_chunks() {
                for c in chunk.valid().chars() {
                    push_char(&mut out, c);
                }
                for b in chunk.invalid() {
                    let _ = write!(out, "\\x{b:02x}");
                }
            }
            Cow::Owned(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn escapes_what_a_terminal_would_act_on() {
        assert_eq!(printable("nginx"), "nginx");
        assert!(matches!(printable("nginx"), Cow::Borrowed(_)));
        assert_eq!(printable("\x1b[1A\x1b[2K"), "\\e[1A\\e[2K");
        assert_eq!(printable("\x1b]0;pwned\x07"), "\\e]0;pwned\\x07");
        assert_eq!(printable("a\nb\tc\rd"), "a\\nb\\tc\\rd");
        assert_eq!(printable("\u{9b}31m"), "\\x9b31m");
        assert_eq!(printable("evil\u{202e}txt"), "evil\\u{202e}txt");
        // A name that already contains a backslash cannot pass for an escape.
        assert_eq!(printable("a\\e\x1b"), "a\\\\e\\e");
        assert_eq!(printable("café"), "café");
    }

    #[test]
    fn invalid_utf8_bytes_are_shown_as_hex() {
        assert_eq!(printable_bytes(b"java"), "java");
        assert_eq!(printable_bytes(b"ab\xff\xfecd\x1b"), "ab\\xff\\xfecd\\e");
    }

    proptest! {
        #[test]
        fn output_never_holds_a_control_character(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let text = printable_bytes(&bytes);
            prop_assert!(!text.chars().any(is_unsafe), "{text:?}");
            let lossy = String::from_utf8_lossy(&bytes);
            prop_assert!(!printable(&lossy).chars().any(is_unsafe));
        }
    }
}
