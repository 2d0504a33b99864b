//! The filter API: a root type built from a typed configuration once per plugin configuration,
//! and a per-request type with one callback per HTTP phase. Every callback has a default.

use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::config::ConfigError;
use crate::host::{Bytes, Host};

/// What the proxy should do after a phase callback.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Go on to the next filter.
    Continue,
    /// Stop iteration: the filter resumes later or answers locally.
    Pause,
}

/// The answer to an HTTP callout, as delivered to [`RootFilter::on_callout_response`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CalloutResponse {
    /// The token [`Host::http_call`] returned.
    pub token: u32,
    /// The `:status` of the answer; `None` when the callout failed (reset, timeout, no cluster).
    pub status: Option<u16>,
    /// Response headers.
    pub headers: Vec<(String, Bytes)>,
    /// Response body.
    pub body: Bytes,
}

/// The root of a filter: one per plugin configuration per worker. It holds the validated
/// configuration and anything shared by the worker's requests (use `Cell`/`RefCell` for state).
pub trait RootFilter: Sized + 'static {
    /// The typed configuration (`serde::Deserialize`; use `#[serde(deny_unknown_fields)]`).
    type Config: DeserializeOwned;
    /// The per-request filter.
    type Http: HttpFilter<Root = Self>;
    /// The filter's name, used in its logs.
    const NAME: &'static str;

    /// Builds the root from a parsed configuration, validating what serde cannot
    /// (ranges, empty values). Runs once per configuration, never per request.
    fn configure(config: Self::Config, host: &dyn Host) -> Result<Self, ConfigError>;

    /// How often `on_tick` should run; `None` for never.
    fn tick_period(&self) -> Option<Duration> {
        None
    }

    /// Periodic work on the root (flushing buffers, refreshing state).
    fn on_tick(&self, _host: &dyn Host) {}

    /// The answer to an HTTP callout started with [`Host::http_call`].
    fn on_callout_response(&self, _host: &dyn Host, _response: CalloutResponse) {}

    /// Creates the per-request filter for a new HTTP stream.
    fn new_http(&self, host: &dyn Host) -> Self::Http;
}

/// The HTTP phases a filter is called for: a set of `on_*` callbacks of [`HttpFilter`].
///
/// Envoy calls a module for a phase only when the module exports that phase's callback, and
/// each call costs CPU on every request (see [`crate::cost_model`]). A filter that declares
/// [`HttpFilter::PHASES`] and lists the same phases in [`crate::export_filter!`] is called only
/// for those; the test harness ([`crate::testing`]) delivers only those too, so a callback
/// implemented but not declared fails the filter's own unit tests instead of going silent in
/// Envoy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Phases(u8);

impl Phases {
    /// No phase.
    pub const NONE: Phases = Phases(0);
    /// `on_request_headers`.
    pub const REQUEST_HEADERS: Phases = Phases(1);
    /// `on_request_body`.
    pub const REQUEST_BODY: Phases = Phases(1 << 1);
    /// `on_request_trailers`.
    pub const REQUEST_TRAILERS: Phases = Phases(1 << 2);
    /// `on_response_headers`.
    pub const RESPONSE_HEADERS: Phases = Phases(1 << 3);
    /// `on_response_body`.
    pub const RESPONSE_BODY: Phases = Phases(1 << 4);
    /// `on_response_trailers`.
    pub const RESPONSE_TRAILERS: Phases = Phases(1 << 5);
    /// `on_log`.
    pub const LOG: Phases = Phases(1 << 6);
    /// Every phase (the default).
    pub const ALL: Phases = Phases(0x7f);

    /// These phases and `other`'s.
    pub const fn with(self, other: Phases) -> Phases {
        Phases(self.0 | other.0)
    }
    /// Whether every phase of `other` is in this set.
    pub const fn contains(self, other: Phases) -> bool {
        self.0 & other.0 == other.0
    }
    /// The set as bits (for the compile-time check of [`crate::export_filter!`]).
    pub const fn bits(self) -> u8 {
        self.0
    }
}

/// A per-request filter. Each method runs in the phase its name says and gets the root and
/// the host. Return [`Action::Continue`] unless the filter must hold the stream.
pub trait HttpFilter: 'static {
    /// The root type this request filter belongs to.
    type Root;

    /// The phases this filter is called for (default: all). Declare exactly the callbacks you
    /// implement, and list the same phases in [`crate::export_filter!`]; the test harness
    /// delivers only these, as Envoy then does.
    const PHASES: Phases = Phases::ALL;

    /// Request headers arrived (`end_of_stream` when there is no body).
    fn on_request_headers(&mut self, _root: &Self::Root, _host: &dyn Host, _eos: bool) -> Action {
        Action::Continue
    }
    /// A request body chunk of `size` bytes arrived.
    fn on_request_body(
        &mut self,
        _root: &Self::Root,
        _host: &dyn Host,
        _size: usize,
        _eos: bool,
    ) -> Action {
        Action::Continue
    }
    /// Request trailers arrived.
    fn on_request_trailers(&mut self, _root: &Self::Root, _host: &dyn Host) -> Action {
        Action::Continue
    }
    /// Response headers arrived from upstream (or from a local reply).
    fn on_response_headers(&mut self, _root: &Self::Root, _host: &dyn Host, _eos: bool) -> Action {
        Action::Continue
    }
    /// A response body chunk of `size` bytes arrived.
    fn on_response_body(
        &mut self,
        _root: &Self::Root,
        _host: &dyn Host,
        _size: usize,
        _eos: bool,
    ) -> Action {
        Action::Continue
    }
    /// Response trailers arrived.
    fn on_response_trailers(&mut self, _root: &Self::Root, _host: &dyn Host) -> Action {
        Action::Continue
    }
    /// The stream is complete (also after resets): record metrics and spans here.
    fn on_log(&mut self, _root: &Self::Root, _host: &dyn Host) {}
}

/// Parses and validates a configuration for `F` and builds its root: the one path shared by the
/// real host and the test host, so both reject exactly the same configurations.
pub fn configure<F: RootFilter>(bytes: &[u8], host: &dyn Host) -> Result<F, ConfigError> {
    let config = crate::config::parse::<F::Config>(bytes)?;
    F::configure(config, host)
}
