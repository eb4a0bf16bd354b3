//! Numbers for people, as tend's messages write them: `250 ms`, `5.0 s`,
//! `2 min 05 s`; lists of PIDs as `1, 2, 3`.

use std::{fmt::Display, time::Duration};

/// A duration as a person reads it: `250 ms` under a second, `5.0 s`
/// under a minute, then `2 min 05 s`, `3 h 07 min`.
pub fn duration(duration: Duration) -> String {
    let secs = duration.as_secs();
    if duration < Duration::from_secs(1) {
        format!("{} ms", duration.as_millis())
    } else if secs < 60 {
        format!("{:.1} s", duration.as_secs_f64())
    } else if secs < 3_600 {
        format!("{} min {:02} s", secs / 60, secs % 60)
    } else {
        format!("{} h {:02} min", secs / 3_600, secs / 60 % 60)
    }
}

/// Items separated by commas: `1, 2, 3`.
pub fn list<T: Display>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// `1 daemon`, `2 daemons`, `3 processes`: `count` and the noun in its
/// number (plus `s`, or `es` after an `s`).
pub fn count(count: usize, noun: &str) -> String {
    match count {
        1 => format!("1 {noun}"),
        _ if noun.ends_with('s') => format!("{count} {noun}es"),
        _ => format!("{count} {noun}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_a_person_writes_them() {
        let ms = Duration::from_millis;
        assert_eq!(duration(ms(0)), "0 ms");
        assert_eq!(duration(ms(250)), "250 ms");
        assert_eq!(duration(Duration::from_nanos(5_003_881_309)), "5.0 s");
        assert_eq!(duration(ms(59_940)), "59.9 s");
        assert_eq!(duration(ms(125_000)), "2 min 05 s");
        assert_eq!(duration(ms(11_220_000)), "3 h 07 min");
    }

    #[test]
    fn counts_and_lists() {
        assert_eq!(count(1, "daemon"), "1 daemon");
        assert_eq!(count(0, "daemon"), "0 daemons");
        assert_eq!(count(2, "process"), "2 processes");
        assert_eq!(list(&[1, 2, 3]), "1, 2, 3");
    }
}
