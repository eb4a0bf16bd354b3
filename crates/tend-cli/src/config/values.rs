//! Reading typed values out of a parsed TOML document while collecting
//! every problem with the line and the dotted key it concerns.

use std::{ffi::OsString, ops::Range, time::Duration};

use toml_edit::{Item, TableLike, Value};

use super::{
    ConfigProblem,
    duration::{duration_from_millis, parse_duration},
    interpolate::interpolate,
    size::{parse_size, size_from_integer},
};

/// Byte range of something in the config text.
pub type Span = Option<Range<usize>>;

/// One key of a table: its full dotted name, its value, and where both sit.
pub struct Entry<'doc> {
    /// The dotted key, e.g. `process.echo.startup_timeout`.
    pub key: String,
    /// The value.
    pub item: &'doc Item,
    /// Where the key is written.
    pub key_span: Span,
    /// Where the value is written.
    pub value_span: Span,
}

impl Entry<'_> {
    /// Where a problem with the value should point: the value, else its key.
    pub fn span(&self) -> Span {
        self.value_span.clone().or_else(|| self.key_span.clone())
    }
}

/// The entries of `table`, named below `prefix`, in file order; `fallback`
/// is used as the place of entries whose position the parser did not keep.
pub fn entries<'doc>(
    table: &'doc dyn TableLike,
    prefix: &str,
    fallback: &Span,
) -> Vec<Entry<'doc>> {
    let mut entries: Vec<Entry<'doc>> = table
        .iter()
        .map(|(name, item)| {
            let key_span = table
                .key(name)
                .and_then(|key| key.span())
                .or_else(|| fallback.clone());
            Entry {
                key: if prefix.is_empty() {
                    name.to_owned()
                } else {
                    format!("{prefix}.{name}")
                },
                item,
                key_span,
                value_span: item.span(),
            }
        })
        .collect();
    entries.sort_by_key(|entry| entry.span().map_or(usize::MAX, |span| span.start));
    entries
}

/// Where `${VAR}` takes its values: the environment of `tend up`.
pub type Lookup = fn(&str) -> Option<OsString>;

/// The environment of this process, for `${VAR}`.
pub fn process_env(name: &str) -> Option<OsString> {
    std::env::var_os(name)
}

/// Collects problems found in one config text.
pub struct Problems<'text> {
    text: &'text str,
    list: Vec<ConfigProblem>,
    env: Lookup,
}

impl<'text> Problems<'text> {
    /// An empty collection for problems in `text`, whose `${VAR}` come
    /// from `env`.
    pub fn new(text: &'text str, env: Lookup) -> Self {
        Problems {
            text,
            list: Vec::new(),
            env,
        }
    }

    /// Records a problem with `key` at `span`.
    pub fn add(&mut self, span: Span, key: impl Into<String>, message: impl Into<String>) {
        self.list.push(ConfigProblem {
            line: span.map(|span| line_of(self.text, span.start)),
            key: key.into(),
            message: message.into(),
        });
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// How many problems were recorded.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// The problems, ordered by line (problems without a line last).
    pub fn into_sorted(mut self) -> Vec<ConfigProblem> {
        self.list.sort_by_key(|p| p.line.unwrap_or(usize::MAX));
        self.list
    }

    fn wrong_type(&mut self, entry: &Entry<'_>, expected: &str) {
        let found = entry.item.type_name();
        self.add(
            entry.span(),
            &entry.key,
            format!("must be {expected}, found {}", article(found)),
        );
    }

    /// A string value.
    pub fn string(&mut self, entry: &Entry<'_>) -> Option<String> {
        match entry.item.as_str() {
            Some(text) => Some(text.to_owned()),
            None => {
                self.wrong_type(entry, "a string");
                None
            }
        }
    }

    /// A boolean.
    pub fn boolean(&mut self, entry: &Entry<'_>) -> Option<bool> {
        let value = entry.item.as_bool();
        if value.is_none() {
            self.wrong_type(entry, "true or false");
        }
        value
    }

    /// `text`, found at `span` under `key`, with `${VAR}` replaced.
    fn expand(&mut self, text: &str, span: Span, key: &str) -> Option<String> {
        interpolate(text, &self.env)
            .map_err(|message| self.add(span, key, message))
            .ok()
    }

    /// A string, with `${VAR}` and `${VAR:-default}` replaced from the
    /// environment; must not be empty, before or after.
    pub fn expanded_string(&mut self, entry: &Entry<'_>) -> Option<String> {
        let text = self.non_empty_string(entry)?;
        let expanded = self.expand(&text, entry.span(), &entry.key)?;
        if expanded.is_empty() {
            self.add(
                entry.span(),
                &entry.key,
                format!("{text:?} is empty once its variables are replaced"),
            );
            return None;
        }
        Some(expanded)
    }

    /// An array of strings, each with `${VAR}` replaced.
    pub fn expanded_list(&mut self, entry: &Entry<'_>) -> Option<Vec<String>> {
        let strings = self.string_list(entry)?;
        let array = entry.item.as_array();
        let before = self.len();
        let expanded: Vec<String> = strings
            .iter()
            .enumerate()
            .filter_map(|(index, text)| {
                let span = array
                    .and_then(|a| a.get(index))
                    .and_then(|v| v.span())
                    .or_else(|| entry.span());
                self.expand(text, span, &format!("{}[{index}]", entry.key))
            })
            .collect();
        (self.len() == before).then_some(expanded)
    }

    /// A table of strings, each value with `${VAR}` replaced.
    pub fn expanded_map(&mut self, entry: &Entry<'_>) -> Option<Vec<(String, String)>> {
        let table = self.table(entry)?;
        let before = self.len();
        let mut pairs = Vec::new();
        for inner in entries(table, &entry.key, &entry.span()) {
            let Some(value) = inner.item.as_str() else {
                self.wrong_type(&inner, "a string");
                continue;
            };
            if let Some(value) = self.expand(value, inner.span(), &inner.key) {
                pairs.push((inner.key[entry.key.len() + 1..].to_owned(), value));
            }
        }
        (self.len() == before).then_some(pairs)
    }

    /// A string that must not be empty.
    pub fn non_empty_string(&mut self, entry: &Entry<'_>) -> Option<String> {
        let text = self.string(entry)?;
        if text.is_empty() {
            self.add(entry.span(), &entry.key, "must not be empty");
            return None;
        }
        Some(text)
    }

    /// An array of strings.
    pub fn string_list(&mut self, entry: &Entry<'_>) -> Option<Vec<String>> {
        let Some(array) = entry.item.as_array() else {
            self.wrong_type(entry, "an array of strings");
            return None;
        };
        let mut strings = Vec::with_capacity(array.len());
        let mut all_strings = true;
        for (index, value) in array.iter().enumerate() {
            match value.as_str() {
                Some(text) => strings.push(text.to_owned()),
                None => {
                    all_strings = false;
                    self.add(
                        value.span().or_else(|| entry.span()),
                        format!("{}[{index}]", entry.key),
                        format!("must be a string, found {}", article(value.type_name())),
                    );
                }
            }
        }
        all_strings.then_some(strings)
    }

    /// A table (standard `[a.b]` or inline `{ … }`).
    pub fn table<'doc>(&mut self, entry: &Entry<'doc>) -> Option<&'doc dyn TableLike> {
        let table = entry.item.as_table_like();
        if table.is_none() {
            self.wrong_type(entry, "a table");
        }
        table
    }

    /// A duration: a string with units or an integer of milliseconds.
    pub fn duration(&mut self, entry: &Entry<'_>) -> Option<Duration> {
        let parsed = match entry.item {
            Item::Value(Value::String(text)) => parse_duration(text.value()),
            Item::Value(Value::Integer(ms)) => duration_from_millis(*ms.value()),
            _ => {
                self.wrong_type(entry, "a duration string or an integer of milliseconds");
                return None;
            }
        };
        parsed
            .map_err(|message| self.add(entry.span(), &entry.key, message))
            .ok()
    }

    /// A memory size: a string with units or an integer of bytes.
    pub fn size(&mut self, entry: &Entry<'_>) -> Option<u64> {
        let parsed = match entry.item {
            Item::Value(Value::String(text)) => parse_size(text.value()),
            Item::Value(Value::Integer(bytes)) => size_from_integer(*bytes.value()),
            _ => {
                self.wrong_type(entry, "a size string or an integer of bytes");
                return None;
            }
        };
        parsed
            .map_err(|message| self.add(entry.span(), &entry.key, message))
            .ok()
    }

    /// A large count: an integer, not negative.
    pub fn large_count(&mut self, entry: &Entry<'_>) -> Option<u64> {
        let Some(value) = entry.item.as_integer() else {
            self.wrong_type(entry, "an integer");
            return None;
        };
        u64::try_from(value)
            .map_err(|_| {
                self.add(
                    entry.span(),
                    &entry.key,
                    format!("must not be negative, found {value}"),
                )
            })
            .ok()
    }

    /// A number: a float or an integer.
    pub fn number(&mut self, entry: &Entry<'_>) -> Option<f64> {
        match entry.item {
            Item::Value(Value::Float(value)) => Some(*value.value()),
            Item::Value(Value::Integer(value)) => Some(*value.value() as f64),
            _ => {
                self.wrong_type(entry, "a number");
                None
            }
        }
    }

    /// A count: an integer from 0 to 4294967295.
    pub fn count(&mut self, entry: &Entry<'_>) -> Option<u32> {
        let Some(value) = entry.item.as_integer() else {
            self.wrong_type(entry, "an integer");
            return None;
        };
        match u32::try_from(value) {
            Ok(count) => Some(count),
            Err(_) => {
                self.add(
                    entry.span(),
                    &entry.key,
                    format!("must be between 0 and {}, found {value}", u32::MAX),
                );
                None
            }
        }
    }

    /// A user or group: a name, or a numeric id as an integer or a string
    /// of digits.
    pub fn id_or_name(&mut self, entry: &Entry<'_>) -> Option<tend::IdOrName> {
        match entry.item {
            Item::Value(Value::String(text)) if text.value().is_empty() => {
                self.add(entry.span(), &entry.key, "must not be empty");
                None
            }
            Item::Value(Value::String(text)) => Some(tend::IdOrName::from(text.value().as_str())),
            Item::Value(Value::Integer(_)) => self.count(entry).map(tend::IdOrName::Id),
            _ => {
                self.wrong_type(entry, "a name or a numeric id");
                None
            }
        }
    }

    /// An array of users or groups (see [`Self::id_or_name`]).
    pub fn id_or_name_list(&mut self, entry: &Entry<'_>) -> Option<Vec<tend::IdOrName>> {
        let Some(array) = entry.item.as_array() else {
            self.wrong_type(entry, "an array of names or numeric ids");
            return None;
        };
        let mut ids = Vec::with_capacity(array.len());
        let before = self.len();
        for (index, value) in array.iter().enumerate() {
            let inner = Entry {
                key: format!("{}[{index}]", entry.key),
                item: &Item::Value(value.clone()),
                key_span: entry.key_span.clone(),
                value_span: value.span().or_else(|| entry.span()),
            };
            if let Some(id) = self.id_or_name(&inner) {
                ids.push(id);
            }
        }
        (self.len() == before).then_some(ids)
    }

    /// A file mode creation mask: a string of up to four octal digits
    /// (`"027"`), so it cannot be mistaken for a decimal number.
    pub fn umask(&mut self, entry: &Entry<'_>) -> Option<u32> {
        let Some(text) = entry.item.as_str() else {
            self.wrong_type(entry, "a string of octal digits, such as \"027\"");
            return None;
        };
        let octal =
            !text.is_empty() && text.len() <= 4 && text.bytes().all(|b| (b'0'..=b'7').contains(&b));
        match u32::from_str_radix(text, 8) {
            Ok(mask) if octal && mask <= 0o777 => Some(mask),
            _ => {
                self.add(
                    entry.span(),
                    &entry.key,
                    format!("must be octal digits from \"000\" to \"777\", such as \"027\", found {text:?}"),
                );
                None
            }
        }
    }

    /// One value of a resource limit: an integer, or `"unlimited"`
    /// (`None`).
    pub fn limit(&mut self, entry: &Entry<'_>) -> Option<Option<u64>> {
        match entry.item {
            Item::Value(Value::String(text)) if text.value() == "unlimited" => Some(None),
            Item::Value(Value::Integer(_)) => self.large_count(entry).map(Some),
            _ => {
                self.wrong_type(entry, "an integer or \"unlimited\"");
                None
            }
        }
    }

    /// Reports a key that is not part of the format.
    pub fn unknown_key(&mut self, entry: &Entry<'_>, known: &[&str]) {
        self.add(
            entry.key_span.clone().or_else(|| entry.span()),
            &entry.key,
            format!("unknown key; expected one of: {}", known.join(", ")),
        );
    }
}

/// "a string", "an integer", "an inline table".
fn article(type_name: &str) -> String {
    let vowel = type_name.starts_with(['a', 'e', 'i', 'o', 'u']);
    format!("{} {type_name}", if vowel { "an" } else { "a" })
}

/// The 1-based line holding byte `offset` of `text`.
pub fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_counted_from_one() {
        let text = "a\nbb\nccc";
        assert_eq!(line_of(text, 0), 1);
        assert_eq!(line_of(text, 2), 2);
        assert_eq!(line_of(text, 5), 3);
        assert_eq!(line_of(text, 100), 3);
    }

    #[test]
    fn articles() {
        assert_eq!(article("integer"), "an integer");
        assert_eq!(article("string"), "a string");
        assert_eq!(article("inline table"), "an inline table");
    }
}
