//! Span names that stay low-cardinality and tag values of bounded length: a span is named by
//! its method and Envoy's route name, else by a configured template over low-cardinality
//! values only; the path goes into a tag, and every tag value is cut to a configured length.
//!
//! Zipkin's API asks that span names be low cardinality (they are lookup labels), and
//! OpenTelemetry's HTTP conventions name a span `{method} {target}` with a low-cardinality
//! target such as a route, else `{method}`, never the URI path, with `HTTP` for a method
//! outside the known set. `GET /orders/7` would be one "operation" per order id.

/// Longest span name, in bytes.
pub const MAX_NAME: usize = 128;

/// Methods a span name shows as they are (RFC 9110 section 9, and PATCH of RFC 5789). Any
/// other is named `HTTP`, so a client cannot mint span names with made-up methods; the
/// `http.method` tag keeps what the client sent.
const KNOWN_METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

/// The method as a span name shows it: a known method, else `HTTP`.
pub fn method_for_name(method: &str) -> &'static str {
    KNOWN_METHODS
        .iter()
        .find(|m| **m == method)
        .copied()
        .unwrap_or("HTTP")
}

/// What a placeholder of the fallback template stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Var {
    /// `{method}`: the method as [`method_for_name`] shows it.
    Method,
    /// `{service}`: this service's name.
    Service,
    /// `{upstream_cluster}`: Envoy's upstream cluster (`xds.cluster_name`), `-` when none.
    UpstreamCluster,
}

const PLACEHOLDERS: [(&str, Var); 3] = [
    ("{method}", Var::Method),
    ("{service}", Var::Service),
    ("{upstream_cluster}", Var::UpstreamCluster),
];

#[derive(Clone, Debug, PartialEq, Eq)]
enum Piece {
    Text(String),
    Var(Var),
}

/// `export.fallback_span_name`: the span name when Envoy reports no route name, parsed once
/// per configuration. Placeholders: `{method}`, `{service}`, `{upstream_cluster}`; nothing a
/// client controls (no path, authority or header) can appear in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NameTemplate {
    pieces: Vec<Piece>,
}

impl Default for NameTemplate {
    /// `{method}`.
    fn default() -> Self {
        NameTemplate {
            pieces: vec![Piece::Var(Var::Method)],
        }
    }
}

impl NameTemplate {
    /// Parses a template; the error is the reason, for the configuration error.
    pub fn parse(template: &str) -> Result<NameTemplate, String> {
        if template.is_empty() {
            return Err("must not be empty".to_string());
        }
        if template.len() > MAX_NAME {
            return Err(format!("must be at most {MAX_NAME} bytes"));
        }
        let mut pieces = Vec::new();
        let mut rest = template;
        while let Some(at) = rest.find(['{', '}']) {
            let (text, tail) = rest.split_at(at);
            if !text.is_empty() {
                pieces.push(Piece::Text(text.to_string()));
            }
            if tail.starts_with('}') {
                return Err("`}` without `{`".to_string());
            }
            let end = tail.find('}').ok_or_else(|| "unclosed `{`".to_string())?;
            let (placeholder, after) = tail.split_at(end + 1);
            let var = PLACEHOLDERS
                .iter()
                .find(|(name, _)| *name == placeholder)
                .map(|(_, var)| *var)
                .ok_or_else(|| {
                    format!(
                        "unknown placeholder `{placeholder}` (known: `{{method}}`, \
                         `{{service}}`, `{{upstream_cluster}}`)"
                    )
                })?;
            pieces.push(Piece::Var(var));
            rest = after;
        }
        if !rest.is_empty() {
            pieces.push(Piece::Text(rest.to_string()));
        }
        Ok(NameTemplate { pieces })
    }

    /// The name for a span with `method` (as received), this `service`, and Envoy's upstream
    /// `cluster`.
    pub fn render(&self, method: &str, service: &str, cluster: Option<&str>) -> String {
        let mut out = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Text(t) => out.push_str(t),
                Piece::Var(Var::Method) => out.push_str(method_for_name(method)),
                Piece::Var(Var::Service) => out.push_str(service),
                Piece::Var(Var::UpstreamCluster) => {
                    out.push_str(cluster.filter(|c| !c.is_empty()).unwrap_or("-"))
                }
            }
        }
        out
    }
}

/// The span name: `METHOD route` when Envoy reports a route name, else the fallback template;
/// at most [`MAX_NAME`] bytes.
pub fn span_name(
    fallback: &NameTemplate,
    method: &str,
    route: Option<&str>,
    service: &str,
    cluster: Option<&str>,
) -> String {
    let mut name = match route.filter(|r| !r.is_empty()) {
        Some(route) => {
            let method = method_for_name(method);
            let mut name = String::with_capacity(method.len() + 1 + route.len());
            name.push_str(method);
            name.push(' ');
            name.push_str(route);
            name
        }
        None => fallback.render(method, service, cluster),
    };
    cut(&mut name, MAX_NAME);
    name
}

/// Cuts `value` to at most `max` bytes on a character boundary; true when it cut anything.
pub fn cut(value: &mut String, max: usize) -> bool {
    if value.len() <= max {
        return false;
    }
    let mut at = max;
    while !value.is_char_boundary(at) {
        at -= 1;
    }
    value.truncate(at);
    true
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn methods_outside_the_known_set_are_http() {
        assert_eq!(method_for_name("GET"), "GET");
        assert_eq!(method_for_name("PATCH"), "PATCH");
        assert_eq!(method_for_name("get"), "HTTP");
        assert_eq!(method_for_name("BREW"), "HTTP");
        assert_eq!(method_for_name(""), "HTTP");
    }

    #[test]
    fn templates_parse_and_render() {
        let t = NameTemplate::parse("{method} {upstream_cluster} ({service})").unwrap();
        assert_eq!(
            t.render("GET", "frontend", Some("orders")),
            "GET orders (frontend)"
        );
        assert_eq!(t.render("BREW", "frontend", None), "HTTP - (frontend)");
        assert_eq!(
            NameTemplate::parse("static")
                .unwrap()
                .render("GET", "s", None),
            "static"
        );
        assert_eq!(NameTemplate::default().render("PUT", "s", None), "PUT");
        for (bad, why) in [
            ("", "must not be empty"),
            ("{path}", "unknown placeholder `{path}`"),
            ("{method", "unclosed `{`"),
            ("a}", "`}` without `{`"),
            ("{{method}}", "unknown placeholder `{{method}`"),
        ] {
            let err = NameTemplate::parse(bad).unwrap_err();
            assert!(err.starts_with(why), "{bad}: {err}");
        }
        assert!(NameTemplate::parse(&"x".repeat(MAX_NAME + 1)).is_err());
    }

    #[test]
    fn names_prefer_the_route_and_stay_short() {
        let t = NameTemplate::default();
        assert_eq!(
            span_name(&t, "GET", Some("orders"), "s", None),
            "GET orders"
        );
        assert_eq!(span_name(&t, "GET", Some(""), "s", None), "GET");
        assert_eq!(span_name(&t, "GET", None, "s", None), "GET");
        let long = "r".repeat(300);
        assert_eq!(span_name(&t, "GET", Some(&long), "s", None).len(), MAX_NAME);
    }

    #[test]
    fn cut_respects_character_boundaries() {
        let mut s = "abcé".to_string();
        assert!(cut(&mut s, 4));
        assert_eq!(s, "abc");
        let mut s = "abc".to_string();
        assert!(!cut(&mut s, 3));
        assert_eq!(s, "abc");
        let mut s = "ééé".to_string();
        assert!(cut(&mut s, 1));
        assert_eq!(s, "");
    }
}
