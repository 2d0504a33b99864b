//! The probe of the cost model (issue 13, `meshwasm-bench --cost-model`): a filter written
//! directly on the `proxy-wasm` crate, like `bench/bare-trace`, that performs one kind of host
//! interaction `n` times per request and nothing else, so that the slope of Envoy's CPU time
//! per request over `n` is the price of one call to the host, not to our SDK.
//!
//! Its plugin configuration is a JSON object:
//!
//! ```json
//! {"op": "get_header", "n": 64, "arg": "traceparent", "phase": "request_headers"}
//! ```
//!
//! - `op`: what to do, one of [`Op::NAMES`]; `noop` (or `n` 0) is the floor of a wasm filter;
//! - `n`: how many times per request (default 0, at most [`MAX_N`]);
//! - `arg`: the header name (`get_header`, `replace_header`), the dotted property path
//!   (`get_property`, e.g. `xds.route_name`), the shared-data key (`get_shared_data`,
//!   `set_shared_data`), the cluster (`http_call`) or a CEL expression (`expr_evaluate`, e.g.
//!   `[xds.route_name, response.flags]`: Envoy's `expr_create` and `expr_evaluate` foreign
//!   functions, one hostcall for several properties); the other ops take none;
//! - `phase`: `request_headers` (default) or `log`, where the filters read the properties of
//!   the finished request (`response.code`, `request.duration`, ...);
//! - `then`: another op done as well, in its own phase after this one's (an object of the same
//!   keys, without `then`, of an op that needs nothing set up at configure time): what a first
//!   call of one kind costs after a call of another (the cost model's `first_*` kinds).
//!
//! Metrics are defined once at configure time and the key of `get_shared_data` is written then
//! too, so that a request pays only for its `n` calls. `http_call` pauses the request until every
//! callout has been answered, as a filter that needs the answers would.
//!
//! The operations ([`perform`]) are plain Rust over the small [`Host`] trait, unit-tested
//! natively; the wasm32 entry points are a thin adapter over `proxy_wasm::hostcalls`.

use serde::Deserialize;

/// The largest `n` a configuration may ask for.
pub const MAX_N: u32 = 10_000;

/// One kind of host interaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Nothing: the floor of a wasm filter (a context per request, a call per phase).
    Noop,
    /// `proxy_get_header_map_value` of a request header.
    GetHeader(String),
    /// `proxy_get_header_map_pairs` of the request headers.
    GetHeaders,
    /// `proxy_replace_header_map_value` of a request header.
    ReplaceHeader(String),
    /// `proxy_get_property` of a path (its dotted form split into segments).
    GetProperty(Vec<String>),
    /// `proxy_increment_metric` of a counter.
    IncrementCounter,
    /// `proxy_record_metric` of a histogram.
    RecordHistogram,
    /// `proxy_get_shared_data` of a key written at configure time.
    GetSharedData(String),
    /// `proxy_set_shared_data` of a key (no compare-and-swap).
    SetSharedData(String),
    /// `proxy_get_current_time_nanoseconds`.
    CurrentTime,
    /// `proxy_http_call` to a cluster; the request waits for every answer.
    HttpCall(String),
    /// `proxy_call_foreign_function("expr_evaluate")` of a CEL expression, created once at
    /// configure time with `expr_create`: one hostcall that reads several properties at once.
    Evaluate(String),
}

impl Op {
    /// Every op's name, as the configuration spells it.
    pub const NAMES: [&'static str; 12] = [
        "noop",
        "get_header",
        "get_headers",
        "replace_header",
        "get_property",
        "increment_counter",
        "record_histogram",
        "get_shared_data",
        "set_shared_data",
        "current_time",
        "http_call",
        "expr_evaluate",
    ];

    fn from_parts(name: &str, arg: Option<String>) -> Result<Op, String> {
        let need = |arg: Option<String>| -> Result<String, String> {
            arg.filter(|a| !a.is_empty())
                .ok_or_else(|| format!("op `{name}` needs a non-empty `arg`"))
        };
        let op = match name {
            "get_header" => return Ok(Op::GetHeader(need(arg)?)),
            "replace_header" => return Ok(Op::ReplaceHeader(need(arg)?)),
            "get_property" => {
                let path = need(arg)?;
                let segments: Vec<String> = path.split('.').map(str::to_string).collect();
                if segments.iter().any(String::is_empty) {
                    return Err(format!("`arg`: `{path}` is not a dotted property path"));
                }
                return Ok(Op::GetProperty(segments));
            }
            "get_shared_data" => return Ok(Op::GetSharedData(need(arg)?)),
            "set_shared_data" => return Ok(Op::SetSharedData(need(arg)?)),
            "http_call" => return Ok(Op::HttpCall(need(arg)?)),
            "expr_evaluate" => return Ok(Op::Evaluate(need(arg)?)),
            "noop" => Op::Noop,
            "get_headers" => Op::GetHeaders,
            "increment_counter" => Op::IncrementCounter,
            "record_histogram" => Op::RecordHistogram,
            "current_time" => Op::CurrentTime,
            other => {
                return Err(format!(
                    "`op`: unknown op `{other}`; expected one of {}",
                    Op::NAMES.join(", ")
                ))
            }
        };
        match arg {
            Some(_) => Err(format!("op `{name}` takes no `arg`")),
            None => Ok(op),
        }
    }
}

/// Where in the request the op runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// `on_http_request_headers`.
    #[default]
    RequestHeaders,
    /// `on_log`, at the end of the stream.
    Log,
}

/// A parsed, checked configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// What to do.
    pub op: Op,
    /// How many times per request.
    pub n: u32,
    /// In which phase.
    pub phase: Phase,
    /// Another op done as well, after this one in the same phase.
    pub then: Option<Box<Config>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    op: String,
    #[serde(default)]
    n: u32,
    arg: Option<String>,
    #[serde(default)]
    phase: Phase,
    then: Option<Box<RawConfig>>,
}

impl Config {
    /// Parses and checks the plugin configuration; the error says what is wrong.
    pub fn parse(bytes: &[u8]) -> Result<Config, String> {
        let raw: RawConfig =
            serde_json::from_slice(bytes).map_err(|e| format!("cost-probe configuration: {e}"))?;
        let config = Config::checked(raw)?;
        if let Some(then) = &config.then {
            let set_up = matches!(
                then.op,
                Op::GetSharedData(_) | Op::HttpCall(_) | Op::Evaluate(_)
            );
            if set_up || then.then.is_some() {
                return Err(format!(
                    "`then`: op {:?} needs what only the first op is given (a shared key, a \
                     callout, an expression) or has a `then` of its own",
                    then.op
                ));
            }
        }
        Ok(config)
    }

    /// The ops of the configuration in order: the first, then its `then`.
    pub fn ops(&self) -> impl Iterator<Item = &Config> {
        std::iter::successors(Some(self), |c| c.then.as_deref())
    }

    fn checked(raw: RawConfig) -> Result<Config, String> {
        let then = raw
            .then
            .map(|t| Config::checked(*t).map(Box::new))
            .transpose()?;
        let op = Op::from_parts(&raw.op, raw.arg)?;
        if raw.n > MAX_N {
            return Err(format!("`n`: {} is more than {MAX_N}", raw.n));
        }
        if matches!(op, Op::HttpCall(_)) && raw.phase == Phase::Log {
            return Err("op `http_call` cannot run in phase `log`: the request is over".into());
        }
        Ok(Config {
            op,
            n: raw.n,
            phase: raw.phase,
            then,
        })
    }
}

/// The value `replace_header` writes (a span id's size).
pub const HEADER_VALUE: &str = "00f067aa0ba902b7";

/// The value `set_shared_data` writes and `get_shared_data` finds (24 bytes).
pub const SHARED_VALUE: &[u8] = b"budget:1764115200:000042";

/// The value `record_histogram` records.
pub const HISTOGRAM_VALUE: u64 = 3;

/// What the probe asks of the proxy; each method is one hostcall whose result is dropped.
pub trait Host {
    /// Reads one request header.
    fn get_header(&self, name: &str);
    /// Reads every request header.
    fn get_headers(&self);
    /// Replaces a request header's value.
    fn replace_header(&self, name: &str, value: &str);
    /// Reads a property.
    fn get_property(&self, path: &[&str]);
    /// Adds one to the probe's counter.
    fn increment_counter(&self);
    /// Records a value in the probe's histogram.
    fn record_histogram(&self, value: u64);
    /// Reads a shared-data key.
    fn get_shared_data(&self, key: &str);
    /// Writes a shared-data key.
    fn set_shared_data(&self, key: &str, value: &[u8]);
    /// Reads the clock.
    fn current_time(&self);
    /// Dispatches a callout to `cluster`; whether the proxy took it.
    fn http_call(&self, cluster: &str) -> bool;
    /// Evaluates the expression created at configure time; whether the proxy answered it.
    fn evaluate(&self) -> bool;
    /// Records how many evaluations of this request succeeded (once per request: a constant
    /// that the slope over `n` does not see), so the bench can tell they really worked.
    fn evaluated(&self, succeeded: u32);
}

/// Performs the configured op `n` times; returns the callouts dispatched (the request waits for
/// their answers).
pub fn perform(config: &Config, host: &impl Host) -> u32 {
    let n = config.n;
    let mut dispatched = 0;
    match &config.op {
        Op::Noop => {}
        Op::GetHeader(name) => (0..n).for_each(|_| host.get_header(name)),
        Op::GetHeaders => (0..n).for_each(|_| host.get_headers()),
        Op::ReplaceHeader(name) => (0..n).for_each(|_| host.replace_header(name, HEADER_VALUE)),
        Op::GetProperty(path) => {
            let path: Vec<&str> = path.iter().map(String::as_str).collect();
            (0..n).for_each(|_| host.get_property(&path));
        }
        Op::IncrementCounter => (0..n).for_each(|_| host.increment_counter()),
        Op::RecordHistogram => (0..n).for_each(|_| host.record_histogram(HISTOGRAM_VALUE)),
        Op::GetSharedData(key) => (0..n).for_each(|_| host.get_shared_data(key)),
        Op::SetSharedData(key) => (0..n).for_each(|_| host.set_shared_data(key, SHARED_VALUE)),
        Op::CurrentTime => (0..n).for_each(|_| host.current_time()),
        Op::Evaluate(_) => {
            let succeeded = (0..n).filter(|_| host.evaluate()).count();
            host.evaluated(u32::try_from(succeeded).unwrap_or(u32::MAX));
        }
        Op::HttpCall(cluster) => {
            for _ in 0..n {
                if host.http_call(cluster) {
                    dispatched += 1;
                }
            }
        }
    }
    dispatched
}

#[cfg(target_arch = "wasm32")]
mod wasm {
    //! The proxy-wasm contexts: a root that parses the configuration and defines the metrics,
    //! and a stream context that runs [`perform`](super::perform) in the configured phase.

    use std::rc::Rc;
    use std::time::Duration;

    use proxy_wasm::hostcalls;
    use proxy_wasm::traits::{Context, HttpContext, RootContext};
    use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, MetricType};

    use super::{perform, Config, Host, Op, Phase, SHARED_VALUE};

    /// How long a callout may take before Envoy answers it with a failure.
    const CALLOUT_TIMEOUT: Duration = Duration::from_secs(5);

    /// The configuration and the metric ids, shared by every stream of the worker.
    struct Probe {
        config: Config,
        counter: u32,
        histogram: u32,
        /// `expr_evaluate`'s argument: the token `expr_create` returned, little-endian.
        expr_token: [u8; 4],
        /// Counts evaluations that succeeded (the bench checks it reaches `n`).
        evaluated: u32,
    }

    impl Host for Probe {
        fn get_header(&self, name: &str) {
            let _ = hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, name);
        }
        fn get_headers(&self) {
            let _ = hostcalls::get_map_bytes(MapType::HttpRequestHeaders);
        }
        fn replace_header(&self, name: &str, value: &str) {
            let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, Some(value));
        }
        fn get_property(&self, path: &[&str]) {
            let _ = hostcalls::get_property(path.to_vec());
        }
        fn increment_counter(&self) {
            let _ = hostcalls::increment_metric(self.counter, 1);
        }
        fn record_histogram(&self, value: u64) {
            let _ = hostcalls::record_metric(self.histogram, value);
        }
        fn get_shared_data(&self, key: &str) {
            let _ = hostcalls::get_shared_data(key);
        }
        fn set_shared_data(&self, key: &str, value: &[u8]) {
            let _ = hostcalls::set_shared_data(key, Some(value), None);
        }
        fn current_time(&self) {
            let _ = hostcalls::get_current_time();
        }
        fn http_call(&self, cluster: &str) -> bool {
            let headers = vec![
                (":method", "GET"),
                (":path", "/cost-probe"),
                (":authority", "cost-probe"),
            ];
            hostcalls::dispatch_http_call(cluster, headers, None, Vec::new(), CALLOUT_TIMEOUT)
                .is_ok()
        }
        fn evaluate(&self) -> bool {
            matches!(
                hostcalls::call_foreign_function("expr_evaluate", Some(&self.expr_token)),
                Ok(Some(_))
            )
        }
        fn evaluated(&self, succeeded: u32) {
            let _ = hostcalls::increment_metric(self.evaluated, i64::from(succeeded));
        }
    }

    fn error(message: &str) {
        let _ = hostcalls::log(LogLevel::Error, message);
    }

    pub(super) struct Root {
        probe: Option<Rc<Probe>>,
    }

    impl Root {
        pub(super) fn new() -> Root {
            Root { probe: None }
        }
    }

    impl Context for Root {}

    impl RootContext for Root {
        fn on_configure(&mut self, size: usize) -> bool {
            let bytes = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, size)
                .ok()
                .flatten()
                .unwrap_or_default();
            let config = match Config::parse(&bytes) {
                Ok(config) => config,
                Err(e) => {
                    error(&e);
                    return false;
                }
            };
            let counter = hostcalls::define_metric(MetricType::Counter, "cost_probe_calls");
            let histogram = hostcalls::define_metric(MetricType::Histogram, "cost_probe_values");
            let evaluated = hostcalls::define_metric(MetricType::Counter, "cost_probe_evaluated");
            let (Ok(counter), Ok(histogram), Ok(evaluated)) = (counter, histogram, evaluated)
            else {
                error("cost-probe: cannot define its metrics");
                return false;
            };
            if let Op::GetSharedData(key) = &config.op {
                if hostcalls::set_shared_data(key, Some(SHARED_VALUE), None).is_err() {
                    error("cost-probe: cannot write the shared-data key it reads");
                    return false;
                }
            }
            let mut expr_token = [0; 4];
            if let Op::Evaluate(expr) = &config.op {
                match hostcalls::call_foreign_function("expr_create", Some(expr.as_bytes())) {
                    Ok(Some(token)) if token.len() == 4 => expr_token.copy_from_slice(&token),
                    other => {
                        error(&format!("cost-probe: expr_create of `{expr}`: {other:?}"));
                        return false;
                    }
                }
            }
            self.probe = Some(Rc::new(Probe {
                config,
                counter,
                histogram,
                expr_token,
                evaluated,
            }));
            true
        }
        fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
            Some(Box::new(Stream {
                probe: self.probe.clone(),
                pending: 0,
            }))
        }
        fn get_type(&self) -> Option<ContextType> {
            Some(ContextType::HttpContext)
        }
    }

    struct Stream {
        probe: Option<Rc<Probe>>,
        pending: u32,
    }

    impl Stream {
        fn run(&mut self, phase: Phase) -> u32 {
            let Some(p) = &self.probe else { return 0 };
            p.config
                .ops()
                .filter(|c| c.phase == phase)
                .map(|c| perform(c, p.as_ref()))
                .sum()
        }
    }

    impl Context for Stream {
        fn on_http_call_response(&mut self, _token: u32, _headers: usize, _body: usize, _t: usize) {
            self.pending = self.pending.saturating_sub(1);
            if self.pending == 0 {
                let _ = hostcalls::resume_http_request();
            }
        }
    }

    impl HttpContext for Stream {
        fn on_http_request_headers(&mut self, _headers: usize, _eos: bool) -> Action {
            self.pending = self.run(Phase::RequestHeaders);
            if self.pending > 0 {
                Action::Pause
            } else {
                Action::Continue
            }
        }
        fn on_log(&mut self) {
            self.run(Phase::Log);
        }
    }
}

#[cfg(target_arch = "wasm32")]
#[allow(unsafe_code)]
mod entry {
    //! The module's entry point: registers the root context.

    proxy_wasm::main! {{
        proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Warn);
        proxy_wasm::set_root_context(|_| -> Box<dyn proxy_wasm::traits::RootContext> {
            Box::new(super::wasm::Root::new())
        });
    }}
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;

    /// Records every call as `name arg`.
    #[derive(Default)]
    struct Recorder(RefCell<Vec<String>>, bool);

    impl Recorder {
        fn push(&self, call: String) {
            self.0.borrow_mut().push(call);
        }
        fn calls(&self) -> Vec<String> {
            self.0.borrow().clone()
        }
    }

    impl Host for Recorder {
        fn get_header(&self, name: &str) {
            self.push(format!("get_header {name}"));
        }
        fn get_headers(&self) {
            self.push("get_headers".into());
        }
        fn replace_header(&self, name: &str, value: &str) {
            self.push(format!("replace_header {name}={value}"));
        }
        fn get_property(&self, path: &[&str]) {
            self.push(format!("get_property {}", path.join("/")));
        }
        fn increment_counter(&self) {
            self.push("increment_counter".into());
        }
        fn record_histogram(&self, value: u64) {
            self.push(format!("record_histogram {value}"));
        }
        fn get_shared_data(&self, key: &str) {
            self.push(format!("get_shared_data {key}"));
        }
        fn set_shared_data(&self, key: &str, value: &[u8]) {
            self.push(format!("set_shared_data {key} {}", value.len()));
        }
        fn current_time(&self) {
            self.push("current_time".into());
        }
        fn http_call(&self, cluster: &str) -> bool {
            self.push(format!("http_call {cluster}"));
            self.1
        }
        fn evaluate(&self) -> bool {
            self.push("evaluate".into());
            true
        }
        fn evaluated(&self, succeeded: u32) {
            self.push(format!("evaluated {succeeded}"));
        }
    }

    fn config(json: &str) -> Config {
        match Config::parse(json.as_bytes()) {
            Ok(c) => c,
            Err(e) => panic!("{json}: {e}"),
        }
    }

    #[test]
    fn performs_the_op_n_times_and_nothing_else() {
        let cases = [
            (
                r#"{"op":"get_header","n":3,"arg":"traceparent"}"#,
                "get_header traceparent",
            ),
            (r#"{"op":"get_headers","n":3}"#, "get_headers"),
            (
                r#"{"op":"replace_header","n":3,"arg":"x-b3-spanid"}"#,
                "replace_header x-b3-spanid=00f067aa0ba902b7",
            ),
            (
                r#"{"op":"get_property","n":3,"arg":"xds.route_name","phase":"log"}"#,
                "get_property xds/route_name",
            ),
            (r#"{"op":"increment_counter","n":3}"#, "increment_counter"),
            (r#"{"op":"record_histogram","n":3}"#, "record_histogram 3"),
            (
                r#"{"op":"get_shared_data","n":3,"arg":"k"}"#,
                "get_shared_data k",
            ),
            (
                r#"{"op":"set_shared_data","n":3,"arg":"k"}"#,
                "set_shared_data k 24",
            ),
            (r#"{"op":"current_time","n":3}"#, "current_time"),
            (
                r#"{"op":"http_call","n":3,"arg":"collector"}"#,
                "http_call collector",
            ),
        ];
        for (json, call) in cases {
            let host = Recorder::default();
            perform(&config(json), &host);
            assert_eq!(host.calls(), vec![call.to_string(); 3], "{json}");
        }
        for json in [r#"{"op":"noop","n":64}"#, r#"{"op":"get_headers"}"#] {
            let host = Recorder::default();
            assert_eq!(perform(&config(json), &host), 0);
            assert!(host.calls().is_empty(), "{json}");
        }
    }

    #[test]
    fn counts_the_callouts_the_proxy_took() {
        let c = config(r#"{"op":"http_call","n":4,"arg":"collector"}"#);
        assert_eq!(perform(&c, &Recorder(RefCell::default(), true)), 4);
        assert_eq!(perform(&c, &Recorder(RefCell::default(), false)), 0);
    }

    #[test]
    fn reads_defaults_and_phases() {
        assert_eq!(
            config(r#"{"op":"current_time"}"#),
            Config {
                op: Op::CurrentTime,
                n: 0,
                phase: Phase::RequestHeaders,
                then: None,
            }
        );
        assert_eq!(
            config(r#"{"op":"get_property","n":2,"arg":"request.total_size","phase":"log"}"#),
            Config {
                op: Op::GetProperty(vec!["request".into(), "total_size".into()]),
                n: 2,
                phase: Phase::Log,
                then: None,
            }
        );
        for name in Op::NAMES {
            let arg = if matches!(name, "noop" | "get_headers" | "increment_counter")
                || matches!(name, "record_histogram" | "current_time")
            {
                String::new()
            } else {
                r#","arg":"a""#.to_string()
            };
            assert!(Config::parse(format!(r#"{{"op":"{name}"{arg}}}"#).as_bytes()).is_ok());
        }
    }

    #[test]
    fn a_second_op_runs_in_its_own_phase_after_the_first() {
        let c = config(
            r#"{"op":"get_header","n":1,"arg":"traceparent","phase":"request_headers",
                "then":{"op":"get_property","n":1,"arg":"xds.route_name","phase":"log"}}"#,
        );
        let phases: Vec<Phase> = c.ops().map(|o| o.phase).collect();
        assert_eq!(phases, [Phase::RequestHeaders, Phase::Log]);
        let host = Recorder::default();
        for op in c.ops() {
            perform(op, &host);
        }
        assert_eq!(
            host.calls(),
            ["get_header traceparent", "get_property xds/route_name"]
        );
    }

    #[test]
    fn refuses_bad_configurations_with_a_reason() {
        for (json, reason) in [
            ("", "cost-probe configuration"),
            (r#"{"n":1}"#, "missing field `op`"),
            (r#"{"op":"frobnicate"}"#, "unknown op `frobnicate`"),
            (r#"{"op":"get_header","n":1}"#, "needs a non-empty `arg`"),
            (r#"{"op":"get_header","arg":""}"#, "needs a non-empty `arg`"),
            (r#"{"op":"current_time","arg":"x"}"#, "takes no `arg`"),
            (r#"{"op":"get_property","arg":"xds..x"}"#, "dotted property"),
            (r#"{"op":"noop","n":10001}"#, "more than 10000"),
            (r#"{"op":"noop","n":-1}"#, "cost-probe configuration"),
            (r#"{"op":"noop","phase":"body"}"#, "unknown variant"),
            (r#"{"op":"noop","count":1}"#, "unknown field `count`"),
            (
                r#"{"op":"http_call","arg":"c","phase":"log"}"#,
                "cannot run in phase `log`",
            ),
            (
                r#"{"op":"noop","then":{"op":"get_shared_data","arg":"k"}}"#,
                "`then`",
            ),
            (
                r#"{"op":"noop","then":{"op":"noop","then":{"op":"noop"}}}"#,
                "`then`",
            ),
            (
                r#"{"op":"noop","then":{"op":"noop","n":20000}}"#,
                "more than",
            ),
        ] {
            match Config::parse(json.as_bytes()) {
                Ok(c) => panic!("{json} was accepted: {c:?}"),
                Err(e) => assert!(e.contains(reason), "{json}: {e}"),
            }
        }
    }
}
