//! The three mesh policies in one module: trace propagation, service metrics and route retries,
//! called in that order (the order of the shipped sidecar's three filters) from one root and one
//! request type. A sidecar that runs all three pays for one VM per worker, one context per
//! request and one call into the VM per phase instead of three, and the three share what they
//! read in a phase through [`meshwasm::compose::PhaseHost`] (the request headers, the route and
//! cluster names, the response code...).
//!
//! Configuration: `{"trace": {...}, "metrics": {...}, "retries": {...}}`, each object exactly
//! what the filter of that name takes; a policy whose key is absent is off. Metrics, logs and
//! behaviour are those of the three filters loaded one by one.

use std::time::Duration;

use meshwasm::compose::{merge, PhaseHost};
use meshwasm::prelude::*;
use serde::Deserialize;

use route_retries::{RouteRetries, RouteRetriesRequest};
use service_metrics::{MetricsRequest, ServiceMetrics};
use trace_propagation::{TracePropagation, TraceRequest};

/// The configuration: one optional section per policy.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// trace-propagation's configuration (see its README); absent: no tracing.
    #[serde(default)]
    pub trace: Option<trace_propagation::config::Config>,
    /// service-metrics' configuration; absent: no metrics.
    #[serde(default)]
    pub metrics: Option<service_metrics::config::Config>,
    /// route-retries' configuration; absent: no retry policies.
    #[serde(default)]
    pub retries: Option<route_retries::config::Config>,
}

/// The root: the policies that are configured.
pub struct MeshSidecar {
    trace: Option<TracePropagation>,
    metrics: Option<ServiceMetrics>,
    retries: Option<RouteRetries>,
    /// The properties trace and metrics read at the end of a sampled request, in one
    /// hostcall for both.
    log_properties: PropertyBatch,
}

/// Per request: each configured policy's request state.
pub struct MeshRequest {
    trace: Option<TraceRequest>,
    metrics: Option<MetricsRequest>,
    retries: Option<RouteRetriesRequest>,
}

/// `section` + a child's error path: `trace.export.batch_size`, `retries.rules[0]`.
fn within(section: &str, e: ConfigError) -> ConfigError {
    let path = match e.path.as_str() {
        "." | "" => section.to_string(),
        p if p.starts_with('[') => format!("{section}{p}"),
        p => format!("{section}.{p}"),
    };
    ConfigError::new(path, e.reason)
}

fn configure_child<F: RootFilter>(
    section: &str,
    config: Option<F::Config>,
    host: &dyn Host,
) -> Result<Option<F>, ConfigError> {
    config
        .map(|c| F::configure(c, host).map_err(|e| within(section, e)))
        .transpose()
}

impl RootFilter for MeshSidecar {
    type Config = Config;
    type Http = MeshRequest;
    const NAME: &'static str = "mesh_sidecar";

    fn configure(config: Config, host: &dyn Host) -> Result<Self, ConfigError> {
        if config.trace.is_none() && config.metrics.is_none() && config.retries.is_none() {
            return Err(ConfigError::new(
                ".",
                "configure at least one of `trace`, `metrics`, `retries`",
            ));
        }
        let trace = configure_child::<TracePropagation>("trace", config.trace, host)?;
        let metrics = configure_child::<ServiceMetrics>("metrics", config.metrics, host)?;
        let log_properties = match (&trace, &metrics) {
            (Some(t), Some(m)) => {
                PropertyBatch::union(host, &[t.span_properties(), m.log_properties()])
            }
            _ => PropertyBatch::new(host, &[], &[]),
        };
        Ok(MeshSidecar {
            trace,
            metrics,
            retries: configure_child::<RouteRetries>("retries", config.retries, host)?,
            log_properties,
        })
    }

    /// The shortest period any policy asks for; every policy's tick then runs at it (the
    /// ticks are idempotent flushes: running them more often only makes them timelier).
    fn tick_period(&self) -> Option<Duration> {
        [
            self.trace.as_ref().and_then(RootFilter::tick_period),
            self.metrics.as_ref().and_then(RootFilter::tick_period),
            self.retries.as_ref().and_then(RootFilter::tick_period),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn on_tick(&self, host: &dyn Host) {
        if let Some(r) = &self.trace {
            r.on_tick(host);
        }
        if let Some(r) = &self.metrics {
            r.on_tick(host);
        }
        if let Some(r) = &self.retries {
            r.on_tick(host);
        }
    }

    /// Only the trace policy makes callouts (span export); the others would ignore the token.
    fn on_callout_response(&self, host: &dyn Host, response: CalloutResponse) {
        if let Some(r) = &self.trace {
            r.on_callout_response(host, response);
        }
    }

    fn new_http(&self, host: &dyn Host) -> MeshRequest {
        MeshRequest {
            trace: self.trace.as_ref().map(|r| r.new_http(host)),
            metrics: self.metrics.as_ref().map(|r| r.new_http(host)),
            retries: self.retries.as_ref().map(|r| r.new_http(host)),
        }
    }
}

/// Runs one phase on every configured policy, in order, over one [`PhaseHost`]; the phase
/// pauses if any policy pauses (none of the three does today).
macro_rules! each_policy {
    ($req:ident, $root:ident, $host:ident, $method:ident $(, $arg:expr)*) => {{
        let host = PhaseHost::new($host);
        let mut action = Action::Continue;
        if let (Some(f), Some(r)) = ($req.trace.as_mut(), $root.trace.as_ref()) {
            action = merge(action, f.$method(r, &host $(, $arg)*));
        }
        if let (Some(f), Some(r)) = ($req.metrics.as_mut(), $root.metrics.as_ref()) {
            action = merge(action, f.$method(r, &host $(, $arg)*));
        }
        if let (Some(f), Some(r)) = ($req.retries.as_mut(), $root.retries.as_ref()) {
            action = merge(action, f.$method(r, &host $(, $arg)*));
        }
        action
    }};
}

impl HttpFilter for MeshRequest {
    type Root = MeshSidecar;
    // The phases of the three policies together (checked against the export list below).
    const PHASES: Phases = <TraceRequest as HttpFilter>::PHASES
        .with(<MetricsRequest as HttpFilter>::PHASES)
        .with(<RouteRetriesRequest as HttpFilter>::PHASES);

    fn on_request_headers(&mut self, root: &MeshSidecar, host: &dyn Host, eos: bool) -> Action {
        each_policy!(self, root, host, on_request_headers, eos)
    }

    fn on_response_headers(&mut self, root: &MeshSidecar, host: &dyn Host, eos: bool) -> Action {
        each_policy!(self, root, host, on_response_headers, eos)
    }

    fn on_log(&mut self, root: &MeshSidecar, host: &dyn Host) {
        let host = PhaseHost::new(host);
        let sampled = match (self.trace.as_ref(), root.trace.as_ref()) {
            (Some(f), Some(r)) => f.exports_span(r),
            _ => false,
        };
        let mut each = |host: &dyn Host| {
            if let (Some(f), Some(r)) = (self.trace.as_mut(), root.trace.as_ref()) {
                f.on_log(r, host);
            }
            if let (Some(f), Some(r)) = (self.metrics.as_mut(), root.metrics.as_ref()) {
                f.on_log(r, host);
            }
            if let (Some(f), Some(r)) = (self.retries.as_mut(), root.retries.as_ref()) {
                f.on_log(r, host);
            }
        };
        // A sampled span and the metrics read their properties in one evaluation, which their
        // own batches then find held; otherwise the metrics' batch alone runs.
        if sampled {
            root.log_properties.with(&host, each);
        } else {
            each(&host);
        }
    }
}

meshwasm::export_filter!(MeshSidecar, phases: [request_headers, response_headers, log]);

#[cfg(test)]
mod tests;
