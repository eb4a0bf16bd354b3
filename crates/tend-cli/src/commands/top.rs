//! `tend top` (and `tend status --watch`): a live table of the daemons,
//! redrawn when the supervisor pushes a state change over a `watch`
//! request (see `docs/PROTOCOL.md`), with CPU, memory and the last log
//! line refreshed every second. `q`, Esc or Ctrl-C quits; the arrow keys,
//! Page Up/Down, Home and End scroll.
//!
//! The terminal is put in raw mode on the alternate screen and restored
//! on every way out: a key, SIGINT/SIGTERM/SIGHUP, the supervisor going
//! away, an error, and a panic (ratatui's panic hook).

mod view;

use std::{
    io::IsTerminal,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use anyhow::anyhow;
use crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::{
    DefaultTerminal, Frame,
    layout::{Constraint, Layout},
    style::{Color, Modifier, Style},
    text::Line,
    widgets::{Cell, Row, Table, TableState},
};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};

use super::connect;
use crate::{
    SupervisorArgs,
    client::ControlClient,
    failure::{CommandResult, Failure},
    protocol::{Request, Response, State},
};
use view::{HEADERS, View};

/// Redraws at most this often: a thousand daemons starting at once send
/// two thousand events, which need not be two thousand frames.
const FRAME_INTERVAL: Duration = Duration::from_millis(40);
/// Uptimes count on even without events.
const CLOCK_TICK: Duration = Duration::from_secs(1);

/// What the user asked for with a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    Quit,
    Up,
    Down,
    PageUp,
    PageDown,
    Home,
    End,
    /// The terminal was resized, or something else worth a redraw.
    Redraw,
}

/// Runs the command: the live view of every daemon, or only of `only`.
pub async fn run(target: &SupervisorArgs, only: Option<String>) -> CommandResult {
    if !std::io::stdout().is_terminal() || !std::io::stdin().is_terminal() {
        return Err(Failure::usage(anyhow!(
            "the live view needs a terminal; for scripts use `tend status --json`"
        )));
    }
    let mut client = connect(target).await?;
    let first = client
        .call(&Request::Watch {
            usage_interval_ms: None,
        })
        .await?;
    if !first.ok {
        let reason = first.error.unwrap_or_else(|| "no reason given".into());
        return Err(anyhow!(reason).into());
    }
    let mut view = View::new(only.clone());
    view.apply(first, Instant::now());
    if let Some(name) = &only
        && !view.has(name)
    {
        return Err(anyhow!("no daemon named {name:?}").into());
    }
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut hangup = signal(SignalKind::hangup())?;
    let colour = std::env::var_os("NO_COLOR").is_none_or(|value| value.is_empty());

    // Read on a task of its own: a response line read halfway when
    // another branch of the loop below wins would be lost.
    let mut responses = forward_responses(client);
    let mut terminal = ratatui::try_init()?;
    let stop_keys = Arc::new(AtomicBool::new(false));
    let mut keys = read_keys(Arc::clone(&stop_keys));
    let mut scroll = Scroll::default();
    let mut dirty = true;
    let mut last_draw: Option<Instant> = None;
    let mut clock = tokio::time::interval(CLOCK_TICK);
    let ended = loop {
        if dirty && last_draw.is_none_or(|at| at.elapsed() >= FRAME_INTERVAL) {
            if let Err(e) = draw(&mut terminal, &view, &mut scroll, colour) {
                break Err(anyhow!(e).context("cannot draw on the terminal"));
            }
            dirty = false;
            last_draw = Some(Instant::now());
        }
        let next_frame = last_draw.map_or_else(Instant::now, |at| at + FRAME_INTERVAL);
        tokio::select! {
            response = responses.recv() => match response.unwrap_or(Ok(None)) {
                Ok(Some(response)) => {
                    if let Some(error) = response.error.clone() {
                        break Err(anyhow!(error));
                    }
                    view.apply(response, Instant::now());
                    dirty = true;
                }
                Ok(None) => break Ok(Some("the supervisor closed the connection (it stopped)")),
                Err(e) => break Err(e),
            },
            key = keys.recv() => match key {
                Some(Key::Quit) | None => break Ok(None),
                Some(key) => {
                    scroll.apply(key, view.len());
                    dirty = true;
                }
            },
            _ = clock.tick() => dirty = true,
            () = tokio::time::sleep_until(next_frame.into()), if dirty => {}
            _ = interrupt.recv() => break Ok(None),
            _ = terminate.recv() => break Ok(None),
            _ = hangup.recv() => break Ok(None),
        }
    };
    stop_keys.store(true, Ordering::Relaxed);
    ratatui::try_restore()?;
    match ended {
        Ok(Some(why)) => {
            say_err!("tend: {why}");
            Ok(())
        }
        Ok(None) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Hands the supervisor's responses over a channel; `Ok(None)` once it
/// closed the connection.
fn forward_responses(
    mut client: ControlClient,
) -> mpsc::UnboundedReceiver<anyhow::Result<Option<Response>>> {
    let (send, receive) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let response = client.receive().await;
            let last = !matches!(response, Ok(Some(_)));
            if send.send(response).is_err() || last {
                return;
            }
        }
    });
    receive
}

/// Reads keys on a thread of its own (crossterm's reads block), until
/// `stop` is set or the terminal is gone.
fn read_keys(stop: Arc<AtomicBool>) -> mpsc::UnboundedReceiver<Key> {
    let (send, receive) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            // Polled with a timeout, so the thread sees `stop` and does not
            // take a key typed after the view closed.
            match event::poll(Duration::from_millis(100)) {
                Ok(false) => continue,
                Ok(true) => {}
                Err(_) => break,
            }
            let key = match event::read() {
                Ok(Event::Key(key)) if key.kind != KeyEventKind::Release => match key.code {
                    KeyCode::Char('q' | 'Q') | KeyCode::Esc => Key::Quit,
                    KeyCode::Char('c') if key.modifiers.contains(KeyModifiers::CONTROL) => {
                        Key::Quit
                    }
                    KeyCode::Up | KeyCode::Char('k') => Key::Up,
                    KeyCode::Down | KeyCode::Char('j') => Key::Down,
                    KeyCode::PageUp => Key::PageUp,
                    KeyCode::PageDown | KeyCode::Char(' ') => Key::PageDown,
                    KeyCode::Home | KeyCode::Char('g') => Key::Home,
                    KeyCode::End | KeyCode::Char('G') => Key::End,
                    _ => continue,
                },
                Ok(Event::Resize(..)) => Key::Redraw,
                Ok(_) => continue,
                Err(_) => break,
            };
            if send.send(key).is_err() {
                break;
            }
        }
    });
    receive
}

/// Which row is selected and which is the first shown. Kept here rather
/// than in ratatui's `TableState` so that only the rows on the screen are
/// built for a frame, not all of a thousand daemons.
#[derive(Debug, Default, Clone, Copy)]
struct Scroll {
    selected: usize,
    offset: usize,
}

impl Scroll {
    /// Moves the selection among `rows` rows.
    fn apply(&mut self, key: Key, rows: usize) {
        const PAGE: usize = 20;
        let last = rows.saturating_sub(1);
        self.selected = match key {
            Key::Up => self.selected.saturating_sub(1),
            Key::Down => self.selected + 1,
            Key::PageUp => self.selected.saturating_sub(PAGE),
            Key::PageDown => self.selected + PAGE,
            Key::Home => 0,
            Key::End => last,
            Key::Quit | Key::Redraw => self.selected,
        }
        .min(last);
    }

    /// Keeps the selection within `rows` rows and on a screen of `height`
    /// rows.
    fn fit(&mut self, rows: usize, height: usize) {
        self.selected = self.selected.min(rows.saturating_sub(1));
        if self.selected < self.offset {
            self.offset = self.selected;
        } else if height > 0 && self.selected >= self.offset + height {
            self.offset = self.selected + 1 - height;
        }
        self.offset = self.offset.min(rows.saturating_sub(height));
    }
}

fn draw(
    terminal: &mut DefaultTerminal,
    view: &View,
    scroll: &mut Scroll,
    colour: bool,
) -> std::io::Result<()> {
    terminal
        .draw(|frame| render(frame, view, scroll, colour))
        .map(|_| ())
}

fn render(frame: &mut Frame, view: &View, scroll: &mut Scroll, colour: bool) {
    let [title, body, footer] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(1),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    frame.render_widget(
        Line::from(format!(
            "tend top · {} · q quits, arrows scroll",
            view.summary()
        ))
        .style(Style::new().add_modifier(Modifier::BOLD)),
        title,
    );
    // The header takes a row.
    let height = usize::from(body.height.saturating_sub(1));
    scroll.fit(view.len(), height);
    let rows = view.rows(SystemTime::now(), scroll.offset, height);
    // Every column but the last as wide as its widest cell; the last line
    // takes the rest.
    let mut widths = HEADERS.map(|header| header.len() as u16);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(&row.cells) {
            *width = (*width).max(cell.chars().count().min(u16::MAX as usize) as u16);
        }
    }
    let constraints = widths
        .iter()
        .enumerate()
        .map(|(i, &width)| {
            if i + 1 == HEADERS.len() {
                Constraint::Fill(1)
            } else {
                Constraint::Length(width)
            }
        })
        .collect::<Vec<_>>();
    let table_rows = rows.into_iter().map(|row| {
        let state_style = if colour {
            Style::new().fg(state_colour(row.state))
        } else {
            Style::new()
        };
        Row::new(row.cells.into_iter().enumerate().map(move |(i, text)| {
            if i == 1 {
                Cell::from(text).style(state_style)
            } else {
                Cell::from(text)
            }
        }))
    });
    let header = Row::new(HEADERS).style(Style::new().add_modifier(Modifier::BOLD));
    let selected = if colour {
        Style::new().add_modifier(Modifier::REVERSED)
    } else {
        Style::new()
    };
    let mut state = TableState::default().with_selected(Some(scroll.selected - scroll.offset));
    frame.render_stateful_widget(
        Table::new(table_rows, constraints)
            .header(header)
            .row_highlight_style(selected),
        body,
        &mut state,
    );
    frame.render_widget(
        Line::from(view.last_event.clone().unwrap_or_default()),
        footer,
    );
}

fn state_colour(state: State) -> Color {
    match state {
        State::Running => Color::Green,
        State::Starting | State::Stopping => Color::Yellow,
        State::Stopped => Color::DarkGray,
        State::Error => Color::Red,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_selection_stays_on_the_screen() {
        let mut scroll = Scroll::default();
        scroll.apply(Key::End, 100);
        scroll.fit(100, 10);
        assert_eq!((scroll.selected, scroll.offset), (99, 90));
        scroll.apply(Key::PageUp, 100);
        scroll.fit(100, 10);
        assert_eq!((scroll.selected, scroll.offset), (79, 79));
        scroll.apply(Key::Down, 100);
        scroll.fit(100, 10);
        assert_eq!((scroll.selected, scroll.offset), (80, 79));
        // Fewer rows after a snapshot: the selection follows.
        scroll.fit(5, 10);
        assert_eq!((scroll.selected, scroll.offset), (4, 0));
        scroll.apply(Key::Home, 5);
        scroll.apply(Key::Up, 5);
        assert_eq!(scroll.selected, 0);
    }
}
