//! Durations as the config file writes them: `"250ms"`, `"5s"`, `"1m"`,
//! `"1h"`, sums of those (`"1m30s"`), or a bare integer of milliseconds.

use std::time::Duration;

/// The units a duration string may use, longest spelling first so `ms` is
/// not read as `m`.
const UNITS: [(&str, u64); 4] = [("ms", 1), ("s", 1_000), ("m", 60_000), ("h", 3_600_000)];

/// What a duration value should look like, for error messages.
pub const DURATION_HINT: &str = "expected a duration such as \"250ms\", \"5s\", \"1m\" or \"1m30s\", or an integer of milliseconds";

/// Parses a duration string: one or more `<digits><unit>` parts with unit
/// `ms`, `s`, `m` or `h`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(format!("empty duration; {DURATION_HINT}"));
    }
    let mut total_ms: u64 = 0;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(format!("invalid duration {text:?}; {DURATION_HINT}"));
        }
        let number: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("duration {text:?} is too large"))?;
        rest = &rest[digits..];
        let Some(&(unit, factor)) = UNITS.iter().find(|(unit, _)| rest.starts_with(unit)) else {
            return Err(format!(
                "duration {text:?} needs a unit after {number}; {DURATION_HINT}"
            ));
        };
        rest = &rest[unit.len()..];
        total_ms = number
            .checked_mul(factor)
            .and_then(|ms| total_ms.checked_add(ms))
            .ok_or_else(|| format!("duration {text:?} is too large"))?;
    }
    Ok(Duration::from_millis(total_ms))
}

/// A duration given as a bare integer: milliseconds, not negative.
pub fn duration_from_millis(ms: i64) -> Result<Duration, String> {
    u64::try_from(ms)
        .map(Duration::from_millis)
        .map_err(|_| format!("duration must not be negative (got {ms})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(text: &str) -> u128 {
        parse_duration(text).unwrap().as_millis()
    }

    #[test]
    fn single_units() {
        assert_eq!(ms("250ms"), 250);
        assert_eq!(ms("5s"), 5_000);
        assert_eq!(ms("1m"), 60_000);
        assert_eq!(ms("2h"), 7_200_000);
        assert_eq!(ms("0s"), 0);
    }

    #[test]
    fn sums_of_units() {
        assert_eq!(ms("1m30s"), 90_000);
        assert_eq!(ms("1h1m1s1ms"), 3_661_001);
    }

    #[test]
    fn surrounding_blanks_are_ignored() {
        assert_eq!(ms(" 5s "), 5_000);
    }

    #[test]
    fn rejects_what_is_not_a_duration() {
        for bad in [
            "", "5", "s", "5x", "5 s", "-5s", "1.5s", "5sec", "ms5", "5s3",
        ] {
            let error = parse_duration(bad).expect_err(bad);
            assert!(error.contains("duration"), "{bad:?}: {error}");
        }
    }

    #[test]
    fn rejects_overflow() {
        assert!(parse_duration("99999999999999999999s").is_err());
        assert!(parse_duration("18446744073709551615h").is_err());
    }

    #[test]
    fn bare_integers_are_milliseconds() {
        assert_eq!(
            duration_from_millis(1500).unwrap(),
            Duration::from_millis(1500)
        );
        assert!(duration_from_millis(-1).is_err());
    }
}
