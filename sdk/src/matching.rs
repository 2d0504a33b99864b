//! Request matching, a mesh building block: a serde-friendly [`MatchSpec`] (path exact, prefix,
//! suffix or regex; methods; authority; header presence or value; Envoy route name and upstream
//! cluster) compiled once per configuration into a [`Matcher`] that is evaluated per request
//! against [`Attributes`]. Pure: no host calls (the [`HostAttributes`] adapter does the reads,
//! lazily and at most once per attribute), no panics.
//!
//! ```
//! use meshwasm::matching::{MatchSpec, RequestParts};
//!
//! let spec: MatchSpec = serde_json::from_str(r#"{
//!     "path": {"prefix": "/api/"},
//!     "methods": ["GET", "HEAD"],
//!     "headers": [{"name": "x-canary", "present": false}],
//!     "cluster": "orders"
//! }"#).unwrap();
//! let matcher = spec.compile("rules[0].match").unwrap();
//! let req = RequestParts::new("GET", "/api/orders?id=1").cluster("orders");
//! assert!(matcher.matches(&req));
//! assert!(!matcher.matches(&req.clone().header("x-canary", "1")));
//! ```
//!
//! Semantics: every condition given must hold (an empty spec matches everything). The path is
//! matched without its query string and fragment. Regexes must match the whole value (they are
//! anchored, as Envoy's `safe_regex` is) and use `regex-lite`: Rust regex syntax with ASCII-only
//! classes, linear-time matching, and far smaller in wasm than `regex`. Methods are compared
//! exactly (uppercase). The authority is compared case-insensitively, port included as sent. A
//! header condition with a `value` requires the header to be present with a matching first
//! value.

use std::borrow::Cow;
use std::cell::OnceCell;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use crate::config::{check, ConfigError};
use crate::host::Host;
use crate::properties;

/// Compiled regexes may not grow past this many bytes (keeps wasm memory bounded).
pub const REGEX_SIZE_LIMIT: usize = 256 * 1024;

/// Longest regex source accepted.
pub const MAX_REGEX_LEN: usize = 1024;

/// A string condition as written in configuration: a bare string (exact match) or an object
/// with exactly one of `exact`, `prefix`, `suffix`, `regex`, and optionally `ignore_case`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StringMatchSpec {
    /// The whole value equals this.
    pub exact: Option<String>,
    /// The value starts with this.
    pub prefix: Option<String>,
    /// The value ends with this.
    pub suffix: Option<String>,
    /// The whole value matches this regex (anchored; `regex-lite` syntax: Rust's regex syntax
    /// with ASCII-only classes such as `\\d`, `\\w`; matching time is linear in the input).
    pub regex: Option<String>,
    /// Compare ASCII case-insensitively (for regexes: the `(?i)` flag).
    pub ignore_case: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StringMatchObject {
    exact: Option<String>,
    prefix: Option<String>,
    suffix: Option<String>,
    regex: Option<String>,
    #[serde(default)]
    ignore_case: bool,
}

impl<'de> Deserialize<'de> for StringMatchSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = StringMatchSpec;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a string (exact match) or an object with one of exact, prefix, suffix, regex",
                )
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<StringMatchSpec, E> {
                Ok(StringMatchSpec {
                    exact: Some(v.to_string()),
                    ..StringMatchSpec::default()
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<StringMatchSpec, A::Error> {
                let o = StringMatchObject::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(StringMatchSpec {
                    exact: o.exact,
                    prefix: o.prefix,
                    suffix: o.suffix,
                    regex: o.regex,
                    ignore_case: o.ignore_case,
                })
            }
        }
        deserializer.deserialize_any(V)
    }
}

impl StringMatchSpec {
    /// Compiles the condition; `path` names the field in errors.
    pub fn compile(&self, path: &str) -> Result<StringMatcher, ConfigError> {
        let given = [
            self.exact.is_some(),
            self.prefix.is_some(),
            self.suffix.is_some(),
            self.regex.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if given != 1 {
            return Err(ConfigError::new(
                path,
                "exactly one of exact, prefix, suffix, regex is required",
            ));
        }
        let fold = |s: &str| {
            if self.ignore_case {
                s.to_ascii_lowercase()
            } else {
                s.to_string()
            }
        };
        let kind = if let Some(s) = &self.exact {
            Kind::Exact(fold(s))
        } else if let Some(s) = &self.prefix {
            Kind::Prefix(fold(s))
        } else if let Some(s) = &self.suffix {
            Kind::Suffix(fold(s))
        } else if let Some(s) = &self.regex {
            Kind::Regex(compile_regex(
                s,
                self.ignore_case,
                &format!("{path}.regex"),
            )?)
        } else {
            return Err(ConfigError::new(path, "no condition"));
        };
        Ok(StringMatcher {
            kind,
            ignore_case: self.ignore_case,
        })
    }
}

/// Compiles `source` as an anchored regex with the SDK's size limits.
pub fn compile_regex(
    source: &str,
    ignore_case: bool,
    path: &str,
) -> Result<regex_lite::Regex, ConfigError> {
    if source.len() > MAX_REGEX_LEN {
        return Err(ConfigError::new(
            path,
            format!("regex is longer than {MAX_REGEX_LEN} bytes"),
        ));
    }
    regex_lite::RegexBuilder::new(&format!("^(?:{source})$"))
        .case_insensitive(ignore_case)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| {
            let msg = e.to_string();
            let first = msg.lines().last().unwrap_or("invalid").trim();
            ConfigError::new(path, format!("invalid regex: {first}"))
        })
}

#[derive(Clone, Debug)]
enum Kind {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Regex(regex_lite::Regex),
}

/// A compiled string condition.
#[derive(Clone, Debug)]
pub struct StringMatcher {
    kind: Kind,
    ignore_case: bool,
}

impl StringMatcher {
    /// Whether `value` satisfies the condition.
    pub fn matches(&self, value: &str) -> bool {
        let starts = |v: &str, p: &str| {
            v.len() >= p.len()
                && v.as_bytes()
                    .get(..p.len())
                    .is_some_and(|h| self.eq_bytes(h, p.as_bytes()))
        };
        let ends = |v: &str, s: &str| {
            v.len() >= s.len()
                && v.as_bytes()
                    .get(v.len() - s.len()..)
                    .is_some_and(|t| self.eq_bytes(t, s.as_bytes()))
        };
        match &self.kind {
            Kind::Exact(s) => {
                value.len() == s.len() && self.eq_bytes(value.as_bytes(), s.as_bytes())
            }
            Kind::Prefix(p) => starts(value, p),
            Kind::Suffix(s) => ends(value, s),
            Kind::Regex(r) => r.is_match(value),
        }
    }

    fn eq_bytes(&self, a: &[u8], b: &[u8]) -> bool {
        if self.ignore_case {
            a.eq_ignore_ascii_case(b)
        } else {
            a == b
        }
    }
}

/// A header condition: `{"name": "x-canary"}` (present), `{"name": "x-canary", "present":
/// false}` (absent), or `{"name": "x-env", "value": "prod"}` (present with a matching value;
/// `value` takes any [`StringMatchSpec`] form).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderMatchSpec {
    /// Lowercase header name.
    pub name: String,
    /// Whether the header must be present (default `true`); `false` cannot have a `value`.
    #[serde(default)]
    pub present: Option<bool>,
    /// A condition on the header's (first) value.
    #[serde(default)]
    pub value: Option<StringMatchSpec>,
}

/// The match part of a rule as written in configuration. Every field is optional; all given
/// conditions must hold.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchSpec {
    /// The request path, without query string.
    #[serde(default)]
    pub path: Option<StringMatchSpec>,
    /// Any of these methods (uppercase, e.g. `["GET", "HEAD"]`).
    #[serde(default)]
    pub methods: Vec<String>,
    /// The `:authority` (Host), case-insensitive.
    #[serde(default)]
    pub authority: Option<StringMatchSpec>,
    /// Header conditions, all of which must hold.
    #[serde(default)]
    pub headers: Vec<HeaderMatchSpec>,
    /// Envoy's route name (`xds.route_name`).
    #[serde(default)]
    pub route_name: Option<StringMatchSpec>,
    /// Envoy's upstream cluster of the route (`xds.cluster_name`).
    #[serde(default)]
    pub cluster: Option<StringMatchSpec>,
}

#[derive(Clone, Debug)]
struct HeaderMatcher {
    name: String,
    present: bool,
    value: Option<StringMatcher>,
}

/// A compiled [`MatchSpec`]: evaluate it with [`Matcher::matches`].
#[derive(Clone, Debug, Default)]
pub struct Matcher {
    path: Option<StringMatcher>,
    methods: Vec<String>,
    authority: Option<StringMatcher>,
    headers: Vec<HeaderMatcher>,
    route_name: Option<StringMatcher>,
    cluster: Option<StringMatcher>,
}

impl MatchSpec {
    /// Validates and compiles the spec once; `path` (e.g. `rules[2].match`) prefixes the field
    /// path of any error.
    pub fn compile(&self, path: &str) -> Result<Matcher, ConfigError> {
        let field = |f: &str| format!("{path}.{f}");
        let opt = |spec: &Option<StringMatchSpec>, f: &str| -> Result<_, ConfigError> {
            spec.as_ref().map(|s| s.compile(&field(f))).transpose()
        };
        for (i, m) in self.methods.iter().enumerate() {
            let ok = !m.is_empty() && m.bytes().all(|b| b.is_ascii_uppercase() || b == b'-');
            check::ensure(
                ok,
                format!("{path}.methods[{i}]"),
                &format!("`{m}` is not an uppercase method name"),
            )?;
        }
        let authority = match &self.authority {
            // The authority is compared case-insensitively.
            Some(spec) => Some(
                StringMatchSpec {
                    ignore_case: true,
                    ..spec.clone()
                }
                .compile(&field("authority"))?,
            ),
            None => None,
        };
        let mut headers = Vec::with_capacity(self.headers.len());
        for (i, h) in self.headers.iter().enumerate() {
            let at = format!("{path}.headers[{i}]");
            check::header_name(&h.name, format!("{at}.name"))?;
            let present = h.present.unwrap_or(true);
            if !present && h.value.is_some() {
                return Err(ConfigError::new(
                    format!("{at}.value"),
                    "a header that must be absent cannot have a value condition",
                ));
            }
            let value = h
                .value
                .as_ref()
                .map(|v| v.compile(&format!("{at}.value")))
                .transpose()?;
            headers.push(HeaderMatcher {
                name: h.name.clone(),
                present,
                value,
            });
        }
        Ok(Matcher {
            path: opt(&self.path, "path")?,
            methods: self.methods.clone(),
            authority,
            headers,
            route_name: opt(&self.route_name, "route_name")?,
            cluster: opt(&self.cluster, "cluster")?,
        })
    }
}

/// The request attributes a [`Matcher`] looks at. Each is read only when a condition needs it,
/// and may be lent from where the implementation keeps it (a header map, a value read once)
/// rather than copied for the matcher.
pub trait Attributes {
    /// `:path` as sent (query included; the matcher strips it).
    fn path(&self) -> Option<Cow<'_, str>>;
    /// `:method`.
    fn method(&self) -> Option<Cow<'_, str>>;
    /// `:authority`.
    fn authority(&self) -> Option<Cow<'_, str>>;
    /// The first value of a (lowercase) request header.
    fn header(&self, name: &str) -> Option<Cow<'_, str>>;
    /// Envoy's route name (`xds.route_name`).
    fn route_name(&self) -> Option<Cow<'_, str>>;
    /// Envoy's upstream cluster (`xds.cluster_name`).
    fn cluster_name(&self) -> Option<Cow<'_, str>>;
}

/// The path without query string or fragment.
pub fn path_only(path: &str) -> &str {
    let end = path.find(['?', '#']).unwrap_or(path.len());
    path.get(..end).unwrap_or(path)
}

impl Matcher {
    /// A matcher that matches every request.
    pub fn any() -> Matcher {
        Matcher::default()
    }

    /// Whether the request satisfies every condition. Reads only the attributes it needs, in a
    /// fixed cheap-first order (pseudo-headers, headers, then Envoy properties).
    pub fn matches(&self, req: &dyn Attributes) -> bool {
        if !self.methods.is_empty() {
            let Some(method) = req.method() else {
                return false;
            };
            if !self.methods.iter().any(|m| *m == method) {
                return false;
            }
        }
        if let Some(p) = &self.path {
            match req.path() {
                Some(path) if p.matches(path_only(&path)) => {}
                _ => return false,
            }
        }
        if let Some(a) = &self.authority {
            match req.authority() {
                Some(auth) if a.matches(&auth) => {}
                _ => return false,
            }
        }
        for h in &self.headers {
            let value = req.header(&h.name);
            let ok = match (&value, h.present, &h.value) {
                (None, present, _) => !present,
                (Some(_), false, _) => false,
                (Some(_), true, None) => true,
                (Some(v), true, Some(m)) => m.matches(v),
            };
            if !ok {
                return false;
            }
        }
        if let Some(r) = &self.route_name {
            match req.route_name() {
                Some(name) if r.matches(&name) => {}
                _ => return false,
            }
        }
        if let Some(c) = &self.cluster {
            match req.cluster_name() {
                Some(name) if c.matches(&name) => {}
                _ => return false,
            }
        }
        true
    }

    /// Whether evaluating needs `xds.route_name` or `xds.cluster_name` (property reads).
    pub fn needs_properties(&self) -> bool {
        self.route_name.is_some() || self.cluster.is_some()
    }
}

/// [`Attributes`] read from a [`Host`] during request headers, each at most once per request.
pub struct HostAttributes<'a> {
    host: &'a dyn Host,
    path: OnceCell<Option<String>>,
    method: OnceCell<Option<String>>,
    authority: OnceCell<Option<String>>,
    route_name: OnceCell<Option<String>>,
    cluster_name: OnceCell<Option<String>>,
}

impl<'a> HostAttributes<'a> {
    /// An adapter over the current request of `host`.
    pub fn new(host: &'a dyn Host) -> HostAttributes<'a> {
        HostAttributes {
            host,
            path: OnceCell::new(),
            method: OnceCell::new(),
            authority: OnceCell::new(),
            route_name: OnceCell::new(),
            cluster_name: OnceCell::new(),
        }
    }
}

impl Attributes for HostAttributes<'_> {
    fn path(&self) -> Option<Cow<'_, str>> {
        self.path
            .get_or_init(|| self.host.request_header(":path"))
            .as_deref()
            .map(Cow::Borrowed)
    }
    fn method(&self) -> Option<Cow<'_, str>> {
        self.method
            .get_or_init(|| self.host.request_header(":method"))
            .as_deref()
            .map(Cow::Borrowed)
    }
    fn authority(&self) -> Option<Cow<'_, str>> {
        self.authority
            .get_or_init(|| self.host.request_header(":authority"))
            .as_deref()
            .map(Cow::Borrowed)
    }
    fn header(&self, name: &str) -> Option<Cow<'_, str>> {
        self.host.request_header(name).map(Cow::Owned)
    }
    fn route_name(&self) -> Option<Cow<'_, str>> {
        self.route_name
            .get_or_init(|| properties::xds_route_name(self.host))
            .as_deref()
            .map(Cow::Borrowed)
    }
    fn cluster_name(&self) -> Option<Cow<'_, str>> {
        self.cluster_name
            .get_or_init(|| properties::xds_cluster_name(self.host))
            .as_deref()
            .map(Cow::Borrowed)
    }
}

/// Plain [`Attributes`] for tests and for code that already holds the values.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestParts {
    /// `:method`.
    pub method: Option<String>,
    /// `:path`.
    pub path: Option<String>,
    /// `:authority`.
    pub authority: Option<String>,
    /// Request headers, lowercase names.
    pub headers: Vec<(String, String)>,
    /// `xds.route_name`.
    pub route_name: Option<String>,
    /// `xds.cluster_name`.
    pub cluster_name: Option<String>,
}

impl RequestParts {
    /// A request with a method and a path.
    pub fn new(method: &str, path: &str) -> RequestParts {
        RequestParts {
            method: Some(method.to_string()),
            path: Some(path.to_string()),
            ..RequestParts::default()
        }
    }
    /// With `:authority`.
    pub fn authority(mut self, authority: &str) -> RequestParts {
        self.authority = Some(authority.to_string());
        self
    }
    /// With a header.
    pub fn header(mut self, name: &str, value: &str) -> RequestParts {
        self.headers
            .push((name.to_ascii_lowercase(), value.to_string()));
        self
    }
    /// With a route name.
    pub fn route(mut self, name: &str) -> RequestParts {
        self.route_name = Some(name.to_string());
        self
    }
    /// With an upstream cluster.
    pub fn cluster(mut self, name: &str) -> RequestParts {
        self.cluster_name = Some(name.to_string());
        self
    }
}

impl Attributes for RequestParts {
    fn path(&self) -> Option<Cow<'_, str>> {
        self.path.as_deref().map(Cow::Borrowed)
    }
    fn method(&self) -> Option<Cow<'_, str>> {
        self.method.as_deref().map(Cow::Borrowed)
    }
    fn authority(&self) -> Option<Cow<'_, str>> {
        self.authority.as_deref().map(Cow::Borrowed)
    }
    fn header(&self, name: &str) -> Option<Cow<'_, str>> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| Cow::Borrowed(v.as_str()))
    }
    fn route_name(&self) -> Option<Cow<'_, str>> {
        self.route_name.as_deref().map(Cow::Borrowed)
    }
    fn cluster_name(&self) -> Option<Cow<'_, str>> {
        self.cluster_name.as_deref().map(Cow::Borrowed)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::testing::TestHost;
    use std::cell::Cell;

    fn compile(json: &str) -> Result<Matcher, ConfigError> {
        let spec: MatchSpec = crate::config::parse(json.as_bytes())?;
        spec.compile("m")
    }

    #[test]
    fn empty_spec_matches_everything() {
        let m = compile("{}").unwrap();
        assert!(m.matches(&RequestParts::default()));
        assert!(m.matches(&RequestParts::new("POST", "/x")));
        assert!(!m.needs_properties());
    }

    #[test]
    fn path_kinds_ignore_the_query() {
        let exact = compile(r#"{"path": "/a"}"#).unwrap();
        assert!(exact.matches(&RequestParts::new("GET", "/a?x=1")));
        assert!(exact.matches(&RequestParts::new("GET", "/a#frag")));
        assert!(!exact.matches(&RequestParts::new("GET", "/ab")));
        let prefix = compile(r#"{"path": {"prefix": "/api/"}}"#).unwrap();
        assert!(prefix.matches(&RequestParts::new("GET", "/api/orders")));
        assert!(!prefix.matches(&RequestParts::new("GET", "/api")));
        assert!(!prefix.matches(&RequestParts::new("GET", "/?/api/")));
        let suffix = compile(r#"{"path": {"suffix": ".JSON", "ignore_case": true}}"#).unwrap();
        assert!(suffix.matches(&RequestParts::new("GET", "/a.json?q")));
        let re = compile(r#"{"path": {"regex": "/v[0-9]+/orders"}}"#).unwrap();
        assert!(re.matches(&RequestParts::new("GET", "/v12/orders")));
        // Anchored: a partial match is no match.
        assert!(!re.matches(&RequestParts::new("GET", "/x/v1/orders/y")));
        // No :path at all: no match, no panic.
        assert!(!re.matches(&RequestParts::default()));
    }

    #[test]
    fn methods_authority_headers() {
        let m = compile(
            r#"{"methods": ["GET", "HEAD"], "authority": {"suffix": ".example.com"},
                "headers": [{"name": "x-env", "value": {"prefix": "prod"}},
                            {"name": "x-canary", "present": false},
                            {"name": "x-user"}]}"#,
        )
        .unwrap();
        let ok = RequestParts::new("HEAD", "/")
            .authority("API.Example.COM")
            .header("x-env", "prod-eu")
            .header("x-user", "");
        assert!(m.matches(&ok));
        assert!(!m.matches(&RequestParts {
            method: Some("POST".into()),
            ..ok.clone()
        }));
        assert!(!m.matches(&ok.clone().header("x-canary", "1")));
        let mut no_user = ok.clone();
        no_user.headers.retain(|(k, _)| k != "x-user");
        assert!(!m.matches(&no_user));
        let mut wrong_env = ok.clone();
        wrong_env.headers[0].1 = "dev".into();
        assert!(!m.matches(&wrong_env));
        assert!(!m.matches(&RequestParts {
            authority: None,
            ..ok
        }));
    }

    #[test]
    fn route_name_and_cluster() {
        let m =
            compile(r#"{"route_name": "orders-get", "cluster": {"prefix": "orders"}}"#).unwrap();
        assert!(m.needs_properties());
        let req = RequestParts::new("GET", "/").route("orders-get");
        assert!(!m.matches(&req));
        assert!(m.matches(&req.clone().cluster("orders-v2")));
        assert!(!m.matches(&req.route("other").cluster("orders")));
    }

    #[test]
    fn bad_specs_name_the_field() {
        let cases = [
            (r#"{"path": {}}"#, "m.path: exactly one of"),
            (
                r#"{"path": {"exact": "/a", "prefix": "/"}}"#,
                "m.path: exactly one of",
            ),
            (r#"{"path": {"regex": "("}}"#, "m.path.regex: invalid regex"),
            (r#"{"methods": ["get"]}"#, "m.methods[0]: `get` is not"),
            (r#"{"headers": [{"name": "X-A"}]}"#, "m.headers[0].name:"),
            (
                r#"{"headers": [{"name": "x-a", "present": false, "value": "1"}]}"#,
                "m.headers[0].value: a header that must be absent",
            ),
            (
                r#"{"cluster": {"regex": "a{1000}{1000}"}}"#,
                "m.cluster.regex: invalid regex",
            ),
        ];
        for (json, want) in cases {
            let err = compile(json).unwrap_err().to_string();
            assert!(err.starts_with(want), "{json}: {err}");
        }
        let long = format!(r#"{{"path": {{"regex": "{}"}}}}"#, "a".repeat(2000));
        assert!(compile(&long)
            .unwrap_err()
            .to_string()
            .contains("longer than"));
        // Serde errors keep their path too.
        let err = crate::config::parse::<MatchSpec>(br#"{"path": {"exakt": "/"}}"#).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("path.exakt: unknown field `exakt`"),
            "{err}"
        );
        let err = crate::config::parse::<MatchSpec>(br#"{"path": 3}"#).unwrap_err();
        assert!(
            err.to_string().starts_with("path: invalid type: integer"),
            "{err}"
        );
    }

    /// Counts property reads to show they happen at most once and only when needed.
    struct Counting<'a> {
        inner: &'a RequestParts,
        reads: Cell<u32>,
    }
    impl Attributes for Counting<'_> {
        fn path(&self) -> Option<Cow<'_, str>> {
            self.inner.path()
        }
        fn method(&self) -> Option<Cow<'_, str>> {
            self.inner.method()
        }
        fn authority(&self) -> Option<Cow<'_, str>> {
            self.inner.authority()
        }
        fn header(&self, name: &str) -> Option<Cow<'_, str>> {
            self.inner.header(name)
        }
        fn route_name(&self) -> Option<Cow<'_, str>> {
            self.reads.set(self.reads.get() + 1);
            self.inner.route_name()
        }
        fn cluster_name(&self) -> Option<Cow<'_, str>> {
            self.reads.set(self.reads.get() + 1);
            self.inner.cluster_name()
        }
    }

    #[test]
    fn cheap_conditions_short_circuit_property_reads() {
        let m = compile(r#"{"methods": ["GET"], "route_name": "r"}"#).unwrap();
        let req = RequestParts::new("POST", "/").route("r");
        let c = Counting {
            inner: &req,
            reads: Cell::new(0),
        };
        assert!(!m.matches(&c));
        assert_eq!(c.reads.get(), 0);
    }

    #[test]
    fn host_attributes_read_headers_and_properties() {
        let host = TestHost::new();
        host.set_map(
            crate::host::MapKind::RequestHeaders,
            &[
                (":method", "GET"),
                (":path", "/p?q"),
                (":authority", "svc"),
                ("x-a", "1"),
            ],
        );
        host.set_property_str("xds.route_name", "r1");
        host.set_property_str("xds.cluster_name", "c1");
        let m = compile(
            r#"{"path": "/p", "methods": ["GET"], "authority": "SVC",
                "headers": [{"name": "x-a", "value": "1"}], "route_name": "r1", "cluster": "c1"}"#,
        )
        .unwrap();
        let attrs = HostAttributes::new(&host);
        assert!(m.matches(&attrs));
        assert!(m.matches(&attrs), "cached values give the same answer");
        assert_eq!(attrs.cluster_name().as_deref(), Some("c1"));
    }
}
