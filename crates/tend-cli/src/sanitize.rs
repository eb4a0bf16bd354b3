//! Escaping control characters in text that daemons control before it
//! reaches the operator's terminal.
//!
//! A daemon's output, its stderr tail in an error, and the messages of its
//! JSON-RPC errors are written by the daemon. Printed raw, an escape
//! sequence in them would act on the terminal: retitle it
//! (`ESC ] 0 ; … BEL`), clear it (`ESC [ 2 J`), move the cursor back over
//! tend's own text (`\r`, backspace) or hide what follows. Human-readable
//! output therefore shows every control character as visible text instead:
//! the operator still sees what the daemon sent, and the terminal does
//! nothing with it. `--json` output needs none of this (JSON strings escape
//! control characters themselves) and `tend logs --raw` asks for none.
//!
//! Escaped are the C0 controls (U+0000..U+001F), DEL (U+007F) and the C1
//! controls (U+0080..U+009F; some terminals take U+009B as a CSI just like
//! `ESC [`), exactly the characters for which [`char::is_control`] holds.
//! Invalid UTF-8 never gets this far: log lines are decoded lossily when
//! read, so a bad byte is already a printable U+FFFD.
//!
//! A backslash is not escaped, so a daemon that writes the four characters
//! `\x1b` looks the same as one that writes ESC; that keeps paths and
//! regular expressions in logs readable, and `--raw` or `--json` tell the
//! two apart.

use std::{borrow::Cow, fmt::Write as _};

/// Which layout characters of a text are printed as they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// One line, such as a line of a daemon's output or an event line:
    /// tabs are kept (they only move right, and log lines use them to
    /// align columns); a newline is escaped, so the daemon cannot start a
    /// line that looks like tend's own.
    Line,
    /// A message of several lines, such as an error with its causes or an
    /// installer's output tail: tabs and newlines are kept.
    Lines,
}

/// `text` with every control character that `layout` does not keep
/// replaced by a visible escape: `\r`, `\x1b`, `\x7f`, `\u{9b}`. Borrows
/// `text` when there is nothing to escape, which is nearly always.
pub fn escape_controls(text: &str, layout: Layout) -> Cow<'_, str> {
    let escaped = |c: char| c.is_control() && !kept(c, layout);
    if !text.chars().any(escaped) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if !escaped(c) {
            out.push(c);
            continue;
        }
        // Writing to a String cannot fail.
        let _ = match c {
            '\n' => write!(out, "\\n"),
            '\r' => write!(out, "\\r"),
            '\t' => write!(out, "\\t"),
            '\0'..='\x7f' => write!(out, "\\x{:02x}", u32::from(c)),
            _ => write!(out, "\\u{{{:x}}}", u32::from(c)),
        };
    }
    Cow::Owned(out)
}

fn kept(c: char, layout: Layout) -> bool {
    match layout {
        Layout::Line => c == '\t',
        Layout::Lines => c == '\t' || c == '\n',
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_become_visible_text() {
        let cases = [
            // Retitling the terminal, then clearing the screen.
            ("\x1b]0;pwned\x07", r"\x1b]0;pwned\x07"),
            ("\x1b[2J", r"\x1b[2J"),
            ("a\x1b[8mhidden\x1b[0m", r"a\x1b[8mhidden\x1b[0m"),
            // The 8-bit CSI, and the other ends of C1.
            ("\u{9b}2J", r"\u{9b}2J"),
            ("\u{80}\u{9f}", r"\u{80}\u{9f}"),
            // Going back over text already printed.
            ("tend: ok\rforged", r"tend: ok\rforged"),
            ("abc\x08\x08\x08xyz", r"abc\x08\x08\x08xyz"),
            ("nul\0 del\x7f", r"nul\x00 del\x7f"),
            ("two\nlines", r"two\nlines"),
            // Kept: tabs, and everything printable.
            ("col\tcol", "col\tcol"),
            ("Привет, мир: ошибка 42", "Привет, мир: ошибка 42"),
            ("π ≈ 3.14 — ok ✓ \u{fffd}", "π ≈ 3.14 — ok ✓ \u{fffd}"),
            (r"C:\path\x1b", r"C:\path\x1b"),
            ("", ""),
        ];
        for (input, expected) in cases {
            assert_eq!(escape_controls(input, Layout::Line), expected, "{input:?}");
        }
    }

    #[test]
    fn a_message_of_several_lines_keeps_its_newlines() {
        assert_eq!(
            escape_controls("failed:\n\tpip said \x1b[31mno\x1b[0m\r", Layout::Lines),
            "failed:\n\tpip said \\x1b[31mno\\x1b[0m\\r"
        );
    }

    #[test]
    fn clean_text_is_borrowed() {
        assert!(matches!(
            escape_controls("Привет\tworld", Layout::Line),
            Cow::Borrowed(_)
        ));
        assert!(matches!(
            escape_controls("a\nb", Layout::Lines),
            Cow::Borrowed(_)
        ));
    }
}
