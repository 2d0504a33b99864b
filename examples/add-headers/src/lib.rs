//! Example filter: adds configured headers to every request (before it goes upstream) and to
//! every response (before it goes downstream). The smallest complete filter on the SDK.

use std::collections::BTreeMap;

use meshwasm::prelude::*;

/// Plugin configuration: header name to value, for each direction.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Headers set on the request.
    #[serde(default)]
    pub request_headers: BTreeMap<String, String>,
    /// Headers set on the response.
    #[serde(default)]
    pub response_headers: BTreeMap<String, String>,
}

/// The root: the validated header lists.
pub struct AddHeaders {
    request: Vec<(String, String)>,
    response: Vec<(String, String)>,
    added: Metric,
}

/// Per-request state (none needed).
pub struct AddHeadersRequest;

fn validated(
    map: BTreeMap<String, String>,
    field: &str,
) -> Result<Vec<(String, String)>, ConfigError> {
    map.into_iter()
        .map(|(name, value)| {
            let path = format!("{field}.{name}");
            check::header_name(&name, path.as_str())?;
            check::header_value(&value, path)?;
            Ok((name, value))
        })
        .collect()
}

impl RootFilter for AddHeaders {
    type Config = Config;
    type Http = AddHeadersRequest;
    const NAME: &'static str = "add_headers";

    fn configure(config: Config, host: &dyn Host) -> Result<Self, ConfigError> {
        Ok(AddHeaders {
            request: validated(config.request_headers, "request_headers")?,
            response: validated(config.response_headers, "response_headers")?,
            added: Metric::counter(host, "add_headers_headers_added_total"),
        })
    }

    fn new_http(&self, _host: &dyn Host) -> AddHeadersRequest {
        AddHeadersRequest
    }
}

impl HttpFilter for AddHeadersRequest {
    type Root = AddHeaders;
    const PHASES: Phases = Phases::REQUEST_HEADERS.with(Phases::RESPONSE_HEADERS);

    fn on_request_headers(&mut self, root: &AddHeaders, host: &dyn Host, _eos: bool) -> Action {
        for (name, value) in &root.request {
            host.set_request_header(name, value);
        }
        root.added.add(host, root.request.len() as i64);
        Action::Continue
    }

    fn on_response_headers(&mut self, root: &AddHeaders, host: &dyn Host, _eos: bool) -> Action {
        for (name, value) in &root.response {
            host.set_response_header(name, value);
        }
        root.added.add(host, root.response.len() as i64);
        Action::Continue
    }
}

meshwasm::export_filter!(AddHeaders, phases: [request_headers, response_headers]);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use meshwasm::testing::FilterHarness;

    const CONFIG: &str = r#"{"request_headers":{"x-mesh-example":"hello"},
                             "response_headers":{"x-mesh-example-response":"world"}}"#;

    #[test]
    fn adds_request_and_response_headers() {
        let h = FilterHarness::<AddHeaders>::new(CONFIG).unwrap();
        let mut s = h.stream();
        let a = s.request_headers(&[(":path", "/"), ("x-mesh-example", "client")], true);
        assert_eq!(a, Action::Continue);
        // Replaces, never duplicates, a value the client sent.
        assert_eq!(
            s.host()
                .map_values(MapKind::RequestHeaders, "x-mesh-example"),
            vec!["hello"]
        );
        s.response_headers(&[(":status", "200")], true);
        assert_eq!(
            s.host()
                .response_header("x-mesh-example-response")
                .as_deref(),
            Some("world")
        );
        assert_eq!(h.host().counter("add_headers_headers_added_total"), Some(2));
    }

    #[test]
    fn empty_config_is_a_no_op() {
        let h = FilterHarness::<AddHeaders>::new("").unwrap();
        let mut s = h.stream();
        s.request_headers(&[(":path", "/")], true);
        assert_eq!(s.host().map(MapKind::RequestHeaders).len(), 1);
    }

    #[test]
    fn bad_configs_name_the_field() {
        let cases = [
            (
                r#"{"request_headers":{"x-a":5}}"#,
                "request_headers.x-a: invalid type: integer `5`, expected a string",
            ),
            (r#"{"bogus":1}"#, "unknown field `bogus`"),
            (
                r#"{"request_headers":{"X-Upper":"v"}}"#,
                "request_headers.X-Upper: `X-Upper` is not a valid lowercase header name",
            ),
            (
                r#"{"response_headers":{":status":"500"}}"#,
                "response_headers.:status: `:status` is a pseudo-header",
            ),
            (
                r#"{"response_headers":{"x-a":"bad\r\nvalue"}}"#,
                "response_headers.x-a: not a valid header value",
            ),
            (
                r#"{"request_headers":[1]}"#,
                "request_headers: invalid type: sequence",
            ),
            ("{", "EOF while parsing"),
        ];
        for (config, want) in cases {
            let err = FilterHarness::<AddHeaders>::new(config).err().unwrap();
            assert!(err.to_string().contains(want), "{config}: got `{err}`");
        }
    }
}
