//! Drives a filter on the test host the way Envoy would: configuration, requests phase by phase,
//! ticks and callout answers.

use std::rc::Rc;
use std::time::Duration;

use super::host::TestHost;
use crate::config::ConfigError;
use crate::filter::{Action, CalloutResponse, HttpFilter, Phases, RootFilter};
use crate::host::{BufferKind, Host, MapKind};
use crate::properties;

/// Drives a filter on the test host the way Envoy would: configure, streams, ticks, callouts.
pub struct FilterHarness<F: RootFilter> {
    host: TestHost,
    root: Rc<F>,
}

impl<F: RootFilter> FilterHarness<F> {
    /// Configures the filter from JSON on a fresh test host.
    pub fn new(config: &str) -> Result<Self, ConfigError> {
        Self::with_host(TestHost::new(), config)
    }

    /// Configures the filter from JSON on the given (root) host, as `on_configure` does.
    pub fn with_host(host: TestHost, config: &str) -> Result<Self, ConfigError> {
        host.set_buffer_bytes(BufferKind::PluginConfiguration, config.as_bytes());
        let root = crate::filter::configure::<F>(config.as_bytes(), &host)?;
        if let Some(period) = root.tick_period() {
            let _ = host.set_tick_period(period);
        }
        Ok(FilterHarness {
            host,
            root: Rc::new(root),
        })
    }

    /// The root host (worker-level properties, metrics, callouts, clock).
    pub fn host(&self) -> &TestHost {
        &self.host
    }
    /// The configured root.
    pub fn root(&self) -> &F {
        &self.root
    }
    /// Runs the root's tick.
    pub fn tick(&self) {
        self.root.on_tick(&self.host);
    }
    /// Moves the clock and runs the tick.
    pub fn advance_and_tick(&self, by: Duration) {
        self.host.advance(by);
        self.tick();
    }
    /// Answers a callout: `status` `None` emulates a failed callout (reset, timeout).
    pub fn respond_to_callout(
        &self,
        token: u32,
        status: Option<u16>,
        headers: &[(&str, &str)],
        body: &[u8],
    ) {
        let mut all: Vec<(&str, String)> = Vec::new();
        if let Some(s) = status {
            all.push((":status", s.to_string()));
        }
        all.extend(headers.iter().map(|(k, v)| (*k, v.to_string())));
        let pairs: Vec<(&str, &str)> = all.iter().map(|(k, v)| (*k, v.as_str())).collect();
        self.host.set_map(MapKind::CalloutResponseHeaders, &pairs);
        self.host
            .set_buffer_bytes(BufferKind::CalloutResponseBody, body);
        let response = CalloutResponse {
            token,
            status,
            headers: self.host.headers(MapKind::CalloutResponseHeaders),
            body: body.to_vec(),
        };
        self.root.on_callout_response(&self.host, response);
    }
    /// Starts a new request.
    pub fn stream(&self) -> HttpStream<F> {
        let host = self.host.new_stream();
        let filter = self.root.new_http(&host);
        HttpStream {
            root: Rc::clone(&self.root),
            filter,
            host,
        }
    }
    /// Runs one whole request: request headers, response headers with `status`, log.
    /// Returns the stream for inspection.
    pub fn request(&self, headers: &[(&str, &str)], status: u16) -> HttpStream<F> {
        let mut s = self.stream();
        s.request_headers(headers, true);
        s.response_headers(&[(":status", &status.to_string())], true);
        s.host()
            .set_property_int("response.code", i64::from(status));
        s.log();
        s
    }
}

/// One request through a filter on the test host.
pub struct HttpStream<F: RootFilter> {
    root: Rc<F>,
    filter: F::Http,
    host: TestHost,
}

impl<F: RootFilter> HttpStream<F> {
    /// The stream's host (headers the filter left, properties to script).
    pub fn host(&self) -> &TestHost {
        &self.host
    }
    /// The per-request filter.
    pub fn filter(&self) -> &F::Http {
        &self.filter
    }
    /// Delivers request headers (`:method`, `:path`, `:authority` included as given). Also
    /// sets `request.path`, `request.method` and `request.host` when they are absent.
    pub fn request_headers(&mut self, headers: &[(&str, &str)], eos: bool) -> Action {
        self.host.set_map(MapKind::RequestHeaders, headers);
        for (pseudo, prop) in [
            (":path", "request.path"),
            (":method", "request.method"),
            (":authority", "request.host"),
        ] {
            if let Some(v) = self.host.request_header(pseudo) {
                if self.host.property(&properties::split(prop)).is_none() {
                    self.host.set_property_str(prop, &v);
                }
            }
        }
        self.phase(Phases::REQUEST_HEADERS, |f, r, h| {
            f.on_request_headers(r, h, eos)
        })
    }
    /// Delivers request headers with raw byte values (non-UTF-8 and other hostile input).
    pub fn request_headers_bytes(&mut self, headers: &[(&str, &[u8])], eos: bool) -> Action {
        self.host.set_map_bytes(MapKind::RequestHeaders, headers);
        self.phase(Phases::REQUEST_HEADERS, |f, r, h| {
            f.on_request_headers(r, h, eos)
        })
    }
    /// Delivers a request body chunk.
    pub fn request_body(&mut self, chunk: &[u8], eos: bool) -> Action {
        self.host.set_buffer_bytes(BufferKind::RequestBody, chunk);
        let size = chunk.len();
        self.phase(Phases::REQUEST_BODY, |f, r, h| {
            f.on_request_body(r, h, size, eos)
        })
    }
    /// Delivers request trailers.
    pub fn request_trailers(&mut self, trailers: &[(&str, &str)]) -> Action {
        self.host.set_map(MapKind::RequestTrailers, trailers);
        self.phase(Phases::REQUEST_TRAILERS, |f, r, h| {
            f.on_request_trailers(r, h)
        })
    }
    /// Delivers response headers (`:status` included as given).
    pub fn response_headers(&mut self, headers: &[(&str, &str)], eos: bool) -> Action {
        self.host.set_map(MapKind::ResponseHeaders, headers);
        self.phase(Phases::RESPONSE_HEADERS, |f, r, h| {
            f.on_response_headers(r, h, eos)
        })
    }
    /// Delivers a response body chunk.
    pub fn response_body(&mut self, chunk: &[u8], eos: bool) -> Action {
        self.host.set_buffer_bytes(BufferKind::ResponseBody, chunk);
        let size = chunk.len();
        self.phase(Phases::RESPONSE_BODY, |f, r, h| {
            f.on_response_body(r, h, size, eos)
        })
    }
    /// Delivers response trailers.
    pub fn response_trailers(&mut self, trailers: &[(&str, &str)]) -> Action {
        self.host.set_map(MapKind::ResponseTrailers, trailers);
        self.phase(Phases::RESPONSE_TRAILERS, |f, r, h| {
            f.on_response_trailers(r, h)
        })
    }
    /// Ends the stream (`on_log`).
    pub fn log(&mut self) {
        if <F::Http as HttpFilter>::PHASES.contains(Phases::LOG) {
            self.filter.on_log(&self.root, &self.host);
        }
    }

    /// Runs a phase callback when the filter declares the phase (as Envoy calls only the
    /// exported ones), else continues as Envoy does for a phase the module does not export.
    fn phase(
        &mut self,
        phase: Phases,
        call: impl FnOnce(&mut F::Http, &F, &TestHost) -> Action,
    ) -> Action {
        if <F::Http as HttpFilter>::PHASES.contains(phase) {
            call(&mut self.filter, &self.root, &self.host)
        } else {
            Action::Continue
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::config::ConfigError;

    /// Counts every callback it gets, but declares only the request headers and the log.
    struct Counting;
    struct CountingRequest {
        calls: Vec<&'static str>,
    }

    impl RootFilter for Counting {
        type Config = serde_json::Value;
        type Http = CountingRequest;
        const NAME: &'static str = "counting";
        fn configure(_: serde_json::Value, _: &dyn Host) -> Result<Self, ConfigError> {
            Ok(Counting)
        }
        fn new_http(&self, _: &dyn Host) -> CountingRequest {
            CountingRequest { calls: Vec::new() }
        }
    }

    impl HttpFilter for CountingRequest {
        type Root = Counting;
        const PHASES: Phases = Phases::REQUEST_HEADERS.with(Phases::LOG);
        fn on_request_headers(&mut self, _: &Counting, _: &dyn Host, _: bool) -> Action {
            self.calls.push("request_headers");
            Action::Pause
        }
        fn on_response_headers(&mut self, _: &Counting, _: &dyn Host, _: bool) -> Action {
            self.calls.push("response_headers");
            Action::Pause
        }
        fn on_response_body(&mut self, _: &Counting, _: &dyn Host, _: usize, _: bool) -> Action {
            self.calls.push("response_body");
            Action::Pause
        }
        fn on_log(&mut self, _: &Counting, _: &dyn Host) {
            self.calls.push("log");
        }
    }

    #[test]
    fn only_declared_phases_are_delivered_as_envoy_calls_only_exported_ones() {
        let h = FilterHarness::<Counting>::new("{}").unwrap();
        let mut s = h.stream();
        assert_eq!(s.request_headers(&[(":path", "/")], true), Action::Pause);
        // Implemented but not declared: Envoy would not call it; the harness continues.
        assert_eq!(
            s.response_headers(&[(":status", "200")], false),
            Action::Continue
        );
        assert_eq!(s.response_body(b"x", true), Action::Continue);
        s.log();
        assert_eq!(s.filter().calls, ["request_headers", "log"]);
    }

    #[test]
    fn phase_sets_combine() {
        let p = Phases::REQUEST_HEADERS.with(Phases::LOG);
        assert!(p.contains(Phases::LOG) && p.contains(Phases::REQUEST_HEADERS));
        assert!(!p.contains(Phases::RESPONSE_BODY));
        assert!(Phases::ALL.contains(p) && !p.contains(Phases::ALL));
        assert_eq!(Phases::NONE.with(Phases::ALL), Phases::ALL);
    }
}
