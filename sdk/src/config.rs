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
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        ConfigError::new(path, strip_position(&inner.to_string()))
    })?;
    de.end()
        .map_err(|e| ConfigError::new(".", strip_position(&e.to_string())))?;
    Ok(value)
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
