//! The status table: name, state, pid, uptime, CPU time, memory,
//! restarts, health, last error; and the containment line under it.

use std::time::Duration;

use crate::{
    protocol::{ProcessStatus, State},
    sanitize::{Layout, escape_controls},
};

/// Longest last-error text shown in the table; `--json` has all of it.
const MAX_ERROR_CHARS: usize = 70;

const HEADERS: [&str; 9] = [
    "NAME",
    "STATE",
    "PID",
    "UPTIME",
    "CPU",
    "MEM",
    "RESTARTS",
    "HEALTH",
    "LAST ERROR",
];

/// The table for `processes`, one line each under a header line.
pub fn render(processes: &[ProcessStatus]) -> String {
    let rows: Vec<[String; 9]> = processes.iter().map(row).collect();
    let mut widths = HEADERS.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for cells in std::iter::once(HEADERS.map(String::from)).chain(rows) {
        let mut line = String::new();
        for (i, (cell, width)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                line.push_str(cell);
            } else {
                line.push_str(cell);
                line.extend(std::iter::repeat_n(' ', width - cell.chars().count() + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The state, and for a one-shot task that ran to its end, that it did:
/// `stopped (completed)`.
fn state(process: &ProcessStatus) -> String {
    match (process.state, process.completed) {
        (State::Stopped, true) => "stopped (completed)".into(),
        (state, _) => state.as_str().to_owned(),
    }
}

fn row(process: &ProcessStatus) -> [String; 9] {
    [
        escape_controls(&process.name, Layout::Line).into_owned(),
        state(process),
        process.pid.map_or("-".into(), |pid| pid.to_string()),
        process
            .uptime_ms
            .map_or("-".into(), |ms| format_uptime(Duration::from_millis(ms))),
        process.usage.map_or("-".into(), |usage| {
            format_cpu(Duration::from_micros(usage.cpu_us))
        }),
        process
            .usage
            .and_then(|usage| usage.memory_bytes)
            .map_or("-".into(), format_bytes),
        process.restart_attempts.to_string(),
        health(process),
        match (&process.last_error, &process.status_text) {
            (Some(error), _) => shorten(error, MAX_ERROR_CHARS),
            // The daemon's own word on how it is, from the notify socket.
            (None, Some(status)) => shorten(&format!("status: {status}"), MAX_ERROR_CHARS),
            (None, None) => "-".into(),
        },
    ]
}

/// `ok`, `2/3 failed`, `not checked` for a running daemon whose readiness
/// was not checked either, or `-` without a health check, while not
/// running, and until the first check of this incarnation ran (unknown is
/// not ok).
fn health(process: &ProcessStatus) -> String {
    match (process.health_check_retries, process.state) {
        (Some(retries), State::Running) if process.failed_health_checks > 0 => {
            format!("{}/{retries} failed", process.failed_health_checks)
        }
        (Some(_), State::Running) if process.health_checked => "ok".into(),
        (None, State::Running) if !process.readiness_checked => "not checked".into(),
        _ => "-".into(),
    }
}

/// The whole last error of `process`, for `status NAME`: the table cuts
/// it; here it is on its own lines, a stderr tail included, indented.
pub fn last_error_lines(process: &ProcessStatus) -> Option<String> {
    let error = process.last_error.as_deref()?;
    let mut text = String::from("last error:\n");
    for line in error.lines() {
        text.push_str("  ");
        text.push_str(&escape_controls(line, Layout::Line));
        text.push('\n');
    }
    Some(text)
}

/// The line under the table saying how the daemons are contained
/// (`containment: cgroup`), from the first daemon that says; `None`
/// before any was started.
pub fn containment_line(processes: &[ProcessStatus]) -> Option<String> {
    let containment = processes.iter().find_map(|p| p.containment)?;
    Some(format!("containment: {containment}"))
}

/// CPU time: `0.03s` and `1.2s` under a minute (two decimals under a
/// second), then like an uptime (`5m03s`).
pub fn format_cpu(cpu: Duration) -> String {
    let secs = cpu.as_secs_f64();
    if secs < 1.0 {
        format!("{secs:.2}s")
    } else if secs < 60.0 {
        format!("{secs:.1}s")
    } else {
        format_uptime(cpu)
    }
}

/// Bytes in binary units: `512 B`, `12.3 KiB`, `12.3 MiB`, `1.5 GiB`.
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// `42s`, `5m03s`, `2h07m`, `3d04h`.
pub fn format_uptime(uptime: Duration) -> String {
    let secs = uptime.as_secs();
    let (days, hours, minutes, seconds) =
        (secs / 86_400, secs / 3_600 % 24, secs / 60 % 60, secs % 60);
    if days > 0 {
        format!("{days}d{hours:02}h")
    } else if hours > 0 {
        format!("{hours}h{minutes:02}m")
    } else if minutes > 0 {
        format!("{minutes}m{seconds:02}s")
    } else {
        format!("{seconds}s")
    }
}

/// `text` on one line, cut to `max` characters with an ellipsis. Line
/// breaks and tabs become spaces (the table is one line per daemon, and
/// the library joins a stderr tail's lines with " | " anyway); any other
/// control character, written by the daemon, is shown escaped.
fn shorten(text: &str, max: usize) -> String {
    let spaced = text.replace(['\n', '\t'], " ");
    let one_line = escape_controls(&spaced, Layout::Line);
    if one_line.chars().count() <= max {
        return one_line.into_owned();
    }
    let mut cut: String = one_line.chars().take(max - 1).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(name: &str, state: State) -> ProcessStatus {
        ProcessStatus {
            name: name.into(),
            state,
            pid: None,
            restart_attempts: 0,
            failed_health_checks: 0,
            health_check_retries: None,
            health_checked: false,
            last_error: None,
            completed: false,
            passed_health_check: false,
            started_at: None,
            uptime_ms: None,
            last_exit: None,
            containment: None,
            usage: None,
            readiness_checked: true,
            status_text: None,
            main_pid: None,
        }
    }

    #[test]
    fn unchecked_readiness_and_notify_status_are_shown() {
        let mut worker = status("worker", State::Running);
        worker.readiness_checked = false;
        worker.status_text = Some("Processing \x1b[2J 5 jobs".into());
        let text = render(&[worker]);
        assert!(text.contains("not checked"), "{text}");
        assert!(text.contains("status: Processing"), "{text}");
        assert!(!text.contains('\x1b'), "{text}");
    }

    #[test]
    fn a_completed_task_says_so() {
        let mut done = status("migrate", State::Stopped);
        done.completed = true;
        assert_eq!(state(&done), "stopped (completed)");
        assert_eq!(state(&status("db", State::Stopped)), "stopped");
        assert_eq!(state(&status("db", State::Running)), "running");
    }

    #[test]
    fn uptimes() {
        assert_eq!(format_uptime(Duration::from_millis(999)), "0s");
        assert_eq!(format_uptime(Duration::from_secs(42)), "42s");
        assert_eq!(format_uptime(Duration::from_secs(303)), "5m03s");
        assert_eq!(format_uptime(Duration::from_secs(7_620)), "2h07m");
        assert_eq!(
            format_uptime(Duration::from_secs(3 * 86_400 + 4 * 3_600)),
            "3d04h"
        );
    }

    #[test]
    fn columns_line_up() {
        let mut echo = status("echo", State::Running);
        echo.pid = Some(1234);
        echo.uptime_ms = Some(65_000);
        echo.health_check_retries = Some(3);
        echo.health_checked = true;
        echo.usage = Some(crate::protocol::Usage {
            cpu_us: 1_234_567,
            memory_bytes: Some(12_900_000),
        });
        let mut broken = status("a-long-name", State::Error);
        broken.last_error = Some("exited with code 1\nbefore it was ready".into());
        broken.restart_attempts = 3;
        let table = render(&[echo, broken]);
        let expected = "\
NAME         STATE    PID   UPTIME  CPU   MEM       RESTARTS  HEALTH  LAST ERROR
echo         running  1234  1m05s   1.2s  12.3 MiB  0         ok      -
a-long-name  error    -     -       -     -         3         -       exited with code 1 before it was ready
";
        assert_eq!(table, expected);
    }

    #[test]
    fn usage_is_readable() {
        assert_eq!(format_cpu(Duration::from_millis(30)), "0.03s");
        assert_eq!(format_cpu(Duration::from_millis(1_240)), "1.2s");
        assert_eq!(format_cpu(Duration::from_secs(303)), "5m03s");
        assert_eq!(format_bytes(512), "512 B");
        assert_eq!(format_bytes(12_595), "12.3 KiB");
        assert_eq!(format_bytes(12_900_000), "12.3 MiB");
        assert_eq!(format_bytes(3 << 29), "1.5 GiB");
    }

    #[test]
    fn containment_is_said_once() {
        let mut echo = status("echo", State::Running);
        assert_eq!(containment_line(std::slice::from_ref(&echo)), None);
        echo.containment = Some(tend::Containment::ProcessGroup);
        let waiting = status("a", State::Starting);
        assert_eq!(
            containment_line(&[waiting, echo]).as_deref(),
            Some("containment: process-group")
        );
    }

    #[test]
    fn health_is_unknown_until_a_check_ran() {
        let mut echo = status("echo", State::Running);
        echo.health_check_retries = Some(3);
        assert_eq!(health(&echo), "-");
        echo.health_checked = true;
        assert_eq!(health(&echo), "ok");
    }

    #[test]
    fn the_whole_last_error_is_shown_on_its_own_lines() {
        let mut echo = status("echo", State::Error);
        assert_eq!(last_error_lines(&echo), None);
        echo.last_error = Some(format!("{}:\nline \x1b[2J", "x".repeat(100)));
        assert_eq!(
            last_error_lines(&echo).unwrap(),
            format!("last error:\n  {}:\n  line \\x1b[2J\n", "x".repeat(100))
        );
    }

    #[test]
    fn failing_health_checks_are_counted() {
        let mut echo = status("echo", State::Running);
        echo.health_check_retries = Some(3);
        echo.failed_health_checks = 2;
        assert_eq!(health(&echo), "2/3 failed");
    }

    #[test]
    fn errors_are_one_line_with_control_characters_escaped() {
        assert_eq!(
            shorten("exited: \x1b]0;pwned\x07\x1b[2J | a\tb\nc\r", 70),
            r"exited: \x1b]0;pwned\x07\x1b[2J | a b c\r"
        );
    }

    #[test]
    fn long_errors_are_cut() {
        let cut = shorten(&"x".repeat(100), 10);
        assert_eq!(cut.chars().count(), 10);
        assert!(cut.ends_with('…'));
    }
}
