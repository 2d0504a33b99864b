//! Plugin configuration: parsed once per configuration from JSON into a typed struct, and
//! validated, with errors that name the field path and the reason.

use std::fmt;

use serde::de::DeserializeOwned;

/// A configuration error: where (`rules[2].num_retries`) and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// Field path in the JSON document, `.` for the document itself.
    pub path: String,
    /// What is wrong with it.
    pub reason: String,
}

impl ConfigError {
    /// An error at `path` for `reason`.
    pub fn new(path: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError {
            path: path.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.reason)
    }
}

impl std::error::Error for ConfigError {}

/// Parses a plugin configuration. Empty input (no `configuration` in Envoy) is read as `{}`, so a
/// config type whose fields all have defaults accepts it and one with required fields names them.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ConfigError> {
    let text: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        bytes
    };
    let mut de = serde_json::Deserializer::from_slice(text);
    let value = T::deserialize(&mut de).map_err(|e| located(text, &e))?;
    de.end().map_err(|e| located(text, &e))?;
    Ok(value)
}

/// An error from serde_json, at the field path of the byte where parsing stopped.
fn located(text: &[u8], e: &serde_json::Error) -> ConfigError {
    let offset = byte_offset(text, e.line(), e.column());
    let reason = strip_position(&e.to_string());
    let mut path = path_at(&text[..offset]);
    // A duplicate key is the object's fault, not the (second) value's.
    if reason.starts_with("duplicate field") {
        path.pop();
    }
    ConfigError::new(render_path(&path), reason)
}

/// serde_json's position (1-based line, bytes read on that line) as a byte offset into `text`.
fn byte_offset(text: &[u8], line: usize, column: usize) -> usize {
    let mut line_start = 0;
    for _ in 1..line {
        match text[line_start..].iter().position(|&b| b == b'\n') {
            Some(i) => line_start += i + 1,
            None => return text.len(),
        }
    }
    (line_start + column).min(text.len())
}

/// One step of a field path.
#[derive(Debug, PartialEq)]
enum Segment {
    Key(String),
    Index(usize),
}

/// The path of the value being read at the end of `read`, a prefix of a JSON document: walks the
/// structure (strings, objects, arrays) and keeps, per open container, the current key or index.
/// This replaces a tracking deserializer wrapper, which costs tens of KiB of wasm per config type.
fn path_at(read: &[u8]) -> Vec<Segment> {
    // Per open container: its segment so far, and for objects whether a key comes next.
    let mut stack: Vec<(Option<Segment>, bool)> = Vec::new();
    let mut i = 0;
    while i < read.len() {
        match read[i] {
            b'{' => stack.push((None, true)),
            b'[' => stack.push((Some(Segment::Index(0)), false)),
            b'}' | b']' => {
                stack.pop();
            }
            b',' => {
                if let Some(top) = stack.last_mut() {
                    match &mut top.0 {
                        Some(Segment::Index(n)) => *n += 1,
                        _ => *top = (None, true),
                    }
                }
            }
            b'"' => {
                let start = i;
                i += 1;
                while i < read.len() && read[i] != b'"' {
                    i += if read[i] == b'\\' { 2 } else { 1 };
                }
                if let Some(top) = stack.last_mut() {
                    if top.1 {
                        let raw = &read[start..(i + 1).min(read.len())];
                        let key = serde_json::from_slice::<String>(raw)
                            .unwrap_or_else(|_| String::from_utf8_lossy(raw).into_owned());
                        *top = (Some(Segment::Key(key)), false);
                    }
                }
            }
            _ => {}
        }
        i += 1;
    }
    stack
        .into_iter()
        .filter_map(|(segment, _)| segment)
        .collect()
}

/// `rules[2].num_retries`, or `.` for the document itself.
fn render_path(path: &[Segment]) -> String {
    if path.is_empty() {
        return ".".to_string();
    }
    let mut out = String::new();
    for segment in path {
        match segment {
            Segment::Key(key) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Index(n) => {
                out.push('[');
                out.push_str(&n.to_string());
                out.push(']');
            }
        }
    }
    out
}

/// serde_json appends " at line L column C"; the field path already says where.
fn strip_position(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) if msg[i..].contains(" column ") => msg[..i].to_string(),
        _ => msg.to_string(),
    }
}

/// Helpers for the checks serde cannot express (ranges, non-empty values).
pub mod check {
    use super::ConfigError;

    /// Fails with `reason` at `path` unless `ok`.
    pub fn ensure(ok: bool, path: impl Into<String>, reason: &str) -> Result<(), ConfigError> {
        if ok {
            Ok(())
        } else {
            Err(ConfigError::new(path, reason))
        }
    }

    /// A string that must not be empty (after trimming).
    pub fn non_empty(value: &str, path: impl Into<String>) -> Result<(), ConfigError> {
        ensure(!value.trim().is_empty(), path, "must not be empty")
    }

    /// A number within `min..=max`.
    pub fn in_range<N: PartialOrd + std::fmt::Display>(
        value: N,
        min: N,
        max: N,
        path: impl Into<String>,
    ) -> Result<(), ConfigError> {
        if value < min || value > max {
            Err(ConfigError::new(
                path,
                format!("{value} is out of range, expected {min} to {max}"),
            ))
        } else {
            Ok(())
        }
    }

    /// An HTTP header name as a filter may set it: lowercase RFC 9110 token, not a pseudo-header.
    pub fn header_name(name: &str, path: impl Into<String>) -> Result<(), ConfigError> {
        let path = path.into();
        if name.is_empty() {
            return Err(ConfigError::new(path, "header name must not be empty"));
        }
        if name.starts_with(':') {
            return Err(ConfigError::new(
                path,
                format!("`{name}` is a pseudo-header and cannot be set"),
            ));
        }
        let valid = name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b"!#$%&'*+-.^_`|~".contains(&b)
        });
        ensure(
            valid,
            path,
            &format!("`{name}` is not a valid lowercase header name"),
        )
    }

    /// An HTTP header value: visible ASCII, spaces and tabs, no leading or trailing whitespace.
    pub fn header_value(value: &str, path: impl Into<String>) -> Result<(), ConfigError> {
        let ok = value
            .bytes()
            .all(|b| b == b'\t' || (b' '..=b'~').contains(&b))
            && value.trim() == value;
        ensure(
            ok,
            path,
            "not a valid header value (visible ASCII, no surrounding spaces)",
        )
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Rule {
        #[allow(dead_code)]
        num_retries: u32,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Conf {
        #[allow(dead_code)]
        rules: Vec<Rule>,
    }

    #[test]
    fn error_names_field_path_and_reason() {
        let err = parse::<Conf>(
            br#"{"rules":[{"num_retries":1},{"num_retries":2},{"num_retries":"3"}]}"#,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"rules[2].num_retries: invalid type: string "3", expected u32"#
        );
    }

    /// Paths of serde_json errors at every depth: map keys, list indexes, unknown and missing
    /// fields, escapes in strings, several lines.
    #[test]
    fn paths_of_parse_errors() {
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Item {
            #[allow(dead_code)]
            n: u32,
            #[allow(dead_code)]
            #[serde(default)]
            name: String,
            #[allow(dead_code)]
            #[serde(default)]
            tags: Vec<u8>,
        }
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Doc {
            #[allow(dead_code)]
            items: Vec<Item>,
            #[allow(dead_code)]
            #[serde(default)]
            by_name: std::collections::BTreeMap<String, Item>,
        }
        let cases: [(&str, &str, &str); 12] = [
            (
                r#"{"items":[{"n":1},{"name":"x"}]}"#,
                "items[1]",
                "missing field `n`",
            ),
            (
                r#"{"items":[{"n":1, "bogus": 3}]}"#,
                "items[0].bogus",
                "unknown field `bogus`",
            ),
            (
                r#"{"items":[],"bogus":1}"#,
                "bogus",
                "unknown field `bogus`",
            ),
            (r#"{"items":"x"}"#, "items", "invalid type: string"),
            (r#"{"items":[1]}"#, "items[0]", "invalid type: integer"),
            (
                r#"{"items":[{"n":1,"tags":[1,2,300]}]}"#,
                "items[0].tags[2]",
                "invalid value",
            ),
            (
                r#"{"items":[], "by_name": {"a.b": {"n": -1}}}"#,
                "by_name.a.b.n",
                "invalid value",
            ),
            (
                r#"{"items":[], "by_name": {"k\"}": {}}}"#,
                "by_name.k\"}",
                "missing field `n`",
            ),
            (
                r#"{"items":[{"n":1,"name":"x\"}y","tags":[1, true]}]}"#,
                "items[0].tags[1]",
                "invalid type: boolean",
            ),
            (
                "{\"items\":\n [ {\"n\":\n 1e400}]}",
                "items[0].n",
                "number out of range",
            ),
            (
                r#"{"items":[{"n":1, "n": 2}]}"#,
                "items[0]",
                "duplicate field `n`",
            ),
            (
                r#"{"items": [ {"n": 1 , "tags" : { } } ] }"#,
                "items[0].tags",
                "invalid type: map",
            ),
        ];
        for (input, path, reason) in cases {
            let err = parse::<Doc>(input.as_bytes()).unwrap_err();
            assert_eq!(err.path, path, "{input}: {err}");
            assert!(err.reason.starts_with(reason), "{input}: {err}");
            assert!(!err.reason.contains(" at line "), "{input}: {err}");
        }
    }

    #[test]
    fn unknown_field_and_missing_field() {
        let err = parse::<Conf>(br#"{"rules":[],"bogus":1}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `bogus`"), "{err}");
        let err = parse::<Conf>(b"").unwrap_err();
        assert!(err.to_string().contains("missing field `rules`"), "{err}");
    }

    #[test]
    fn invalid_json_and_trailing_garbage() {
        assert!(parse::<Conf>(b"{\"rules\": [").is_err());
        let err = parse::<Conf>(br#"{"rules":[]} x"#).unwrap_err();
        assert!(err.reason.contains("trailing"), "{err}");
    }

    #[test]
    fn checks() {
        assert!(check::header_name("x-ok", "a").is_ok());
        assert!(check::header_name("X-Upper", "a").is_err());
        assert!(check::header_name(":path", "a").is_err());
        assert!(check::header_name("", "a").is_err());
        assert!(check::header_value("v 1", "a").is_ok());
        assert!(check::header_value("bad\r\n", "a").is_err());
        assert_eq!(
            check::in_range(11, 0, 10, "n").unwrap_err().to_string(),
            "n: 11 is out of range, expected 0 to 10"
        );
        assert!(check::non_empty(" ", "s").is_err());
    }
}
