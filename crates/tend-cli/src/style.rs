//! Colour for people, none for programs: styles apply only when the
//! stream is a terminal and `NO_COLOR` is unset or empty
//! (<https://no-color.org>). `anstyle` renders the escape codes.

use std::io::IsTerminal;

use anstyle::{AnsiColor, Style};

use crate::protocol::State;

/// Whether output to a stream that `is_terminal` says is one gets colour.
pub fn wanted(is_terminal: bool) -> bool {
    is_terminal && std::env::var_os("NO_COLOR").is_none_or(|value| value.is_empty())
}

/// Colour for standard output?
pub fn stdout() -> Painter {
    Painter {
        enabled: wanted(std::io::stdout().is_terminal()),
    }
}

/// Paints text with a style, or leaves it plain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Painter {
    enabled: bool,
}

impl Painter {
    /// A painter that paints (`true`) or not.
    #[cfg(test)]
    pub fn new(enabled: bool) -> Self {
        Painter { enabled }
    }

    /// `text` in `style`.
    pub fn paint(self, text: &str, style: Style) -> String {
        if self.enabled {
            format!("{}{text}{}", style.render(), style.render_reset())
        } else {
            text.to_owned()
        }
    }

    /// `text` in the colour of `state`.
    pub fn state(self, text: &str, state: State) -> String {
        self.paint(text, state_style(state))
    }

    /// `text` in red: the `[stderr]` mark of a log line.
    pub fn stderr(self, text: &str) -> String {
        self.paint(text, Style::new().fg_color(Some(AnsiColor::Red.into())))
    }

    /// `text` dimmed (times, tend's own marker lines).
    pub fn dim(self, text: &str) -> String {
        self.paint(text, Style::new().dimmed())
    }

    /// `text` in the colour of daemon number `index` (log prefixes).
    pub fn name(self, text: &str, index: usize) -> String {
        const COLOURS: [AnsiColor; 6] = [
            AnsiColor::Cyan,
            AnsiColor::Yellow,
            AnsiColor::Green,
            AnsiColor::Magenta,
            AnsiColor::Blue,
            AnsiColor::BrightCyan,
        ];
        let colour = COLOURS[index % COLOURS.len()];
        self.paint(text, Style::new().fg_color(Some(colour.into())))
    }
}

/// Red for `error`, green for `running`, yellow on the way, plain when
/// stopped.
fn state_style(state: State) -> Style {
    let colour = match state {
        State::Error => AnsiColor::Red,
        State::Running => AnsiColor::Green,
        State::Starting | State::Stopping => AnsiColor::Yellow,
        State::Stopped => return Style::new(),
    };
    Style::new().fg_color(Some(colour.into())).bold()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_unless_enabled() {
        assert_eq!(Painter::new(false).state("error", State::Error), "error");
        let red = Painter::new(true).state("error", State::Error);
        assert!(red.starts_with("\x1b[") && red.contains("error"), "{red:?}");
    }
}
