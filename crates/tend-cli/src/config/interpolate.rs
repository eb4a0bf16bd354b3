//! `${VAR}` and `${VAR:-default}` in config values, from the environment
//! of `tend up`.
//!
//! Hand-written rather than taken from a crate: the syntax is three rules
//! (`${NAME}`, `${NAME:-default}`, `$$`), and the errors must say which
//! variable is missing so the config reports it with its file and line.
//! A `$` followed by anything else stays as written, so a value like
//! `price: 5$` or a regular expression ending in `$` needs no escaping;
//! `$$` is a literal `$` for a value that must contain `${`.

use std::ffi::OsString;

/// `text` with every `${NAME}` and `${NAME:-default}` replaced by the value
/// `lookup` gives for `NAME` (the default when it gives none, or an empty
/// one with `:-`, as in the shell), and `$$` by `$`. The default is taken as written,
/// up to the first `}`. Errors name the variable and say how to fix it.
pub fn interpolate(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<OsString>,
) -> Result<String, String> {
    if !text.contains('$') {
        return Ok(text.to_owned());
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('{') {
            let Some(end) = inner.find('}') else {
                return Err(format!(
                    "unterminated `${{` in {text:?}: write `${{NAME}}`, or `$$` for a literal `$`"
                ));
            };
            let (name, default) = match inner[..end].split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (&inner[..end], None),
            };
            if !is_variable_name(name) {
                return Err(format!(
                    "`${{{}}}` does not name a variable (letters, digits and `_`, not starting with a digit; `$$` is a literal `$`)",
                    &inner[..end]
                ));
            }
            let value = lookup(name);
            match (value, default) {
                (Some(value), Some(default)) if value.is_empty() => out.push_str(default),
                (Some(value), _) => match value.into_string() {
                    Ok(value) => out.push_str(&value),
                    Err(_) => {
                        return Err(format!(
                            "the value of environment variable {name} is not valid UTF-8"
                        ));
                    }
                },
                (None, Some(default)) => out.push_str(default),
                (None, None) => {
                    return Err(format!(
                        "environment variable {name} is not set; set it, or give a default with `${{{name}:-default}}`"
                    ));
                }
            }
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn is_variable_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<OsString> {
        use std::os::unix::ffi::OsStringExt;
        match name {
            "HOME" => Some("/home/me".into()),
            "EMPTY" => Some("".into()),
            "BYTES" => Some(OsString::from_vec(vec![0xff, 0xfe])),
            _ => None,
        }
    }

    #[test]
    fn values_defaults_and_escapes() {
        let rows = [
            ("plain", "plain"),
            ("${HOME}/x", "/home/me/x"),
            ("a${HOME}b${HOME}", "a/home/meb/home/me"),
            ("${MISSING:-fallback}", "fallback"),
            ("${MISSING:-}", ""),
            ("${EMPTY:-used}", "used"),
            ("[${EMPTY}]", "[]"),
            ("${HOME:-unused}", "/home/me"),
            ("${MISSING:-a:-b}", "a:-b"),
            ("$$", "$"),
            ("$${HOME}", "${HOME}"),
            ("cost 5$", "cost 5$"),
            ("$HOME", "$HOME"),
            ("^a$|^b$", "^a$|^b$"),
            ("é${HOME}é", "é/home/meé"),
        ];
        for (text, expected) in rows {
            assert_eq!(interpolate(text, &env).as_deref(), Ok(expected), "{text}");
        }
    }

    #[test]
    fn errors_name_the_variable_and_the_fix() {
        let missing = interpolate("${MISSING}", &env).unwrap_err();
        assert!(missing.contains("MISSING is not set"), "{missing}");
        assert!(missing.contains("${MISSING:-default}"), "{missing}");
        for bad in ["${}", "${1X}", "${A-B}", "${A B}"] {
            let error = interpolate(bad, &env).unwrap_err();
            assert!(error.contains("does not name a variable"), "{bad}: {error}");
        }
        assert!(
            interpolate("${HOME", &env)
                .unwrap_err()
                .contains("unterminated")
        );
        assert!(interpolate("${BYTES}", &env).unwrap_err().contains("UTF-8"));
    }
}
