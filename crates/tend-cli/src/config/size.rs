//! Memory sizes as the config file writes them: `"512M"`, `"1.5G"`,
//! `"64KiB"`, `"1048576"`, or a bare integer of bytes. Units are powers of
//! 1024, as the kernel's `memory.max` reads them: `K`, `M`, `G`, `T`, each
//! also spelled `KB`/`KiB` and so on, in any case; `B` or no unit is
//! bytes.

/// What a size value should look like, for error messages.
pub const SIZE_HINT: &str = "expected a size such as \"512M\", \"1.5G\" or \"64KiB\" (powers of 1024), or an integer of bytes";

/// The units a size may use, with their factor.
const UNITS: [(&str, u64); 5] = [
    ("", 1),
    ("k", 1 << 10),
    ("m", 1 << 20),
    ("g", 1 << 30),
    ("t", 1 << 40),
];

/// Parses a size string: a number (with an optional fraction) and an
/// optional unit.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let number_len = trimmed
        .bytes()
        .take_while(|b| b.is_ascii_digit() || *b == b'.')
        .count();
    let (number, unit) = trimmed.split_at(number_len);
    if number.is_empty() || number.starts_with('.') || number.ends_with('.') {
        return Err(format!("invalid size {text:?}; {SIZE_HINT}"));
    }
    let unit = unit.trim().to_ascii_lowercase();
    let prefix = unit
        .strip_suffix("ib")
        .or_else(|| unit.strip_suffix('b'))
        .unwrap_or(&unit);
    let Some(&(_, factor)) = UNITS.iter().find(|(u, _)| *u == prefix) else {
        return Err(format!(
            "size {text:?} has an unknown unit {unit:?}; {SIZE_HINT}"
        ));
    };
    let too_large = || format!("size {text:?} is too large");
    match number.split_once('.') {
        None => number
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(factor))
            .ok_or_else(too_large),
        Some((whole, fraction)) => {
            if fraction.contains('.') {
                return Err(format!("invalid size {text:?}; {SIZE_HINT}"));
            }
            let value = format!("{whole}.{fraction}")
                .parse::<f64>()
                .map_err(|_| format!("invalid size {text:?}; {SIZE_HINT}"))?
                * factor as f64;
            if value >= u64::MAX as f64 {
                return Err(too_large());
            }
            Ok(value.round() as u64)
        }
    }
}

/// A size given as a bare integer: bytes, not negative.
pub fn size_from_integer(bytes: i64) -> Result<u64, String> {
    u64::try_from(bytes).map_err(|_| format!("size must not be negative (got {bytes})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_are_powers_of_1024() {
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size("64KiB"), Ok(64 << 10));
        assert_eq!(parse_size("64 kb"), Ok(64 << 10));
        assert_eq!(parse_size("1.5G"), Ok(3 << 29));
        assert_eq!(parse_size("1000"), Ok(1000));
        assert_eq!(parse_size("1000B"), Ok(1000));
        assert_eq!(parse_size("2T"), Ok(2 << 40));
    }

    #[test]
    fn nonsense_is_refused_with_a_hint() {
        for bad in ["", "M", "1X", "1.2.3G", ".5G", "5.G", "-1G", "1 G B"] {
            let error = parse_size(bad).unwrap_err();
            assert!(
                error.contains("expected a size") || error.contains("unknown unit"),
                "{bad}: {error}"
            );
        }
        assert!(
            parse_size("99999999999T")
                .unwrap_err()
                .contains("too large")
        );
        assert!(size_from_integer(-1).is_err());
        assert_eq!(size_from_integer(4096), Ok(4096));
    }
}
