//! The route-retries filter: picks a retry policy per request (ordered rules, first match wins,
//! then the default), removes the client's `x-envoy-*` headers unless the policy allows them
//! (or, for the retry-control ones, the rule trusts the client), asks the cluster's retry budget
//! how many retries the request may make, and writes the policy as the request headers Envoy's
//! router carries out. The attempt count Envoy reports (on the response, or at the end of a
//! stream that had none) counts real retries and settles the budget.

pub mod budget;
pub mod config;
pub mod headers;
pub mod policy;

use std::borrow::Cow;
use std::cell::{OnceCell, RefCell};

use meshwasm::host::HeaderSnapshot;
use meshwasm::matching::Attributes;
use meshwasm::prelude::*;

use crate::budget::{BudgetParams, Ledgers};
use crate::config::{Config, Rule, Rules};
use crate::policy::{CONTROL_HEADERS, MAX_RETRIES_HEADER};

/// The response header with the number of attempts Envoy made (needs
/// `include_attempt_count_in_response: true` on the route's virtual host).
pub const ATTEMPT_COUNT: &str = "x-envoy-attempt-count";

/// Envoy's count of a stream's upstream attempts (0 when none was made), read at the end of a
/// stream whose response did not carry [`ATTEMPT_COUNT`].
pub const ATTEMPT_COUNT_PROPERTY: &str = "upstream.request_attempt_count";

/// The request header with the time a client (or the Envoy before it) still allows the request.
const EXPECTED_TIMEOUT_HEADER: &str = "x-envoy-expected-rq-timeout-ms";

/// Budget key of requests whose upstream cluster Envoy does not report.
pub const UNKNOWN_CLUSTER: &str = "unknown";

/// Metric names.
pub mod names {
    /// Requests seen, by rule.
    pub const REQUESTS: &str = "meshwasm_retry_requests_total";
    /// Requests that were retried at least once, by rule.
    pub const REQUESTS_RETRIED: &str = "meshwasm_retry_requests_retried_total";
    /// Retries performed (attempts - 1), by rule.
    pub const RETRIES: &str = "meshwasm_retry_retries_total";
    /// Requests that wanted retries and got none from the budget, by rule.
    pub const BUDGET_DENIED: &str = "meshwasm_retry_budget_denied_total";
    /// Requests granted fewer retries than they wanted (but some), by rule.
    pub const BUDGET_CLAMPED: &str = "meshwasm_retry_budget_clamped_total";
    /// Client `x-envoy-*` headers removed, by rule.
    pub const CLIENT_HEADERS_STRIPPED: &str = "meshwasm_retry_client_headers_stripped_total";
    /// Requests whose caller is not trusted with retry and deadline headers
    /// (`trusted_clients: mesh_peers` and no verified mesh certificate), by rule.
    pub const UNTRUSTED_CLIENTS: &str = "meshwasm_retry_untrusted_clients_total";
    /// Client `x-envoy-*` request headers removed, by header name (capped).
    pub const STRIPPED_HEADERS: &str = "meshwasm_retry_stripped_headers_total";
    /// Budget syncs with shared data that failed (a read error, or every compare-and-swap round
    /// lost): the worker's ledger fails closed until its next sync succeeds.
    pub const BUDGET_CONTENDED: &str = "meshwasm_retry_budget_contended_total";
    /// Requests to a cluster past the ones a worker keeps a budget ledger for
    /// ([`crate::budget::MAX_CLUSTERS`]): decided in shared data, one read and one write each.
    pub const BUDGET_UNTRACKED: &str = "meshwasm_retry_budget_untracked_total";
    /// Streams whose attempt count was not reported: a response without a usable
    /// `x-envoy-attempt-count` (the route config lacks it), or a stream that ended without one
    /// and without Envoy's `upstream.request_attempt_count`.
    pub const ATTEMPT_COUNT_MISSING: &str = "meshwasm_retry_attempt_count_missing_total";
}

/// Where each family labeled by rule is in [`RouteRetries::rule_families`].
mod family {
    pub const REQUESTS: usize = 0;
    pub const RETRIED: usize = 1;
    pub const RETRIES: usize = 2;
    pub const DENIED: usize = 3;
    pub const CLAMPED: usize = 4;
    pub const STRIPPED: usize = 5;
}

/// The root: validated rules, budget parameters and metric families.
pub struct RouteRetries {
    rules: Rules,
    requests: MetricFamily,
    retried: MetricFamily,
    retries: MetricFamily,
    denied: MetricFamily,
    clamped: MetricFamily,
    stripped: MetricFamily,
    stripped_headers: MetricFamily,
    /// Requests from callers not trusted with retry and deadline headers, by rule.
    untrusted: MetricFamily,
    contended: Metric,
    untracked: Metric,
    attempt_count_missing: Metric,
    /// Each rule's series in each of [`RouteRetries::rule_families`] (by rule index, the
    /// default last), as defined at configure time; `None` where that did not define one (the
    /// family then decides on each use, as for any other label).
    rule_ids: Vec<[Option<u32>; 6]>,
    /// This worker's budget ledgers, one per cluster, synced with the other workers' on the
    /// tick.
    ledgers: RefCell<Ledgers>,
}

/// What one request decided, kept for its response.
#[derive(Debug, Default)]
pub struct RouteRetriesRequest {
    /// Index of the matched rule; `None` for the default.
    rule: Option<usize>,
    /// Retries granted by the budget.
    granted: u32,
    /// The budget the request was counted in, and the second it was recorded at.
    budget: Option<(String, u64)>,
    /// The attempts were accounted (retries counted, reservation settled).
    settled: bool,
    /// `meshwasm_retry_attempt_count_missing_total` already counted this stream.
    missing_counted: bool,
}

impl RouteRetries {
    /// The rule at `index`, the default for `None` (or an index that does not exist).
    fn rule(&self, index: Option<usize>) -> &Rule {
        index
            .and_then(|i| self.rules.rules.get(i))
            .unwrap_or(&self.rules.default)
    }

    /// Adds `by` to the series of rule `rule` (`None`: the default) in the family at `family`
    /// of [`RouteRetries::rule_families`]: by the id defined at configure time, with no lookup.
    fn rule_add(&self, host: &dyn Host, family: usize, rule: Option<usize>, by: i64) {
        let at = rule
            .filter(|i| *i < self.rules.rules.len())
            .unwrap_or(self.rules.rules.len());
        match self.rule_ids.get(at).and_then(|ids| ids.get(family)) {
            Some(Some(id)) => {
                let _ = host.increment_metric(*id, by);
            }
            _ => {
                if let Some(fam) = self.rule_families().get(family) {
                    fam.add(host, &[self.rule(rule).name.as_str()], by);
                }
            }
        }
    }

    /// The first rule matching the request.
    pub fn select(&self, attrs: &dyn Attributes) -> Option<usize> {
        self.rules
            .rules
            .iter()
            .position(|r| r.matcher.matches(attrs))
    }

    /// The budget parameters.
    pub fn budget(&self) -> &BudgetParams {
        &self.rules.budget
    }

    /// The families labeled by rule (each rule's series is defined at configure time).
    pub fn rule_families(&self) -> [&MetricFamily; 6] {
        [
            &self.requests,
            &self.retried,
            &self.retries,
            &self.denied,
            &self.clamped,
            &self.stripped,
        ]
    }

    /// Every labeled family, for rendering `stats_tags`.
    pub fn families(&self) -> [&MetricFamily; 7] {
        let [a, b, c, d, e, f] = self.rule_families();
        [a, b, c, d, e, f, &self.stripped_headers]
    }
}

impl RootFilter for RouteRetries {
    type Config = Config;
    type Http = RouteRetriesRequest;
    const NAME: &'static str = "route_retries";

    fn configure(config: Config, host: &dyn Host) -> Result<Self, ConfigError> {
        let rules = config.compile()?;
        let fam = |name: &str| MetricFamily::counter(name, &["rule"]);
        let mut root = RouteRetries {
            rules,
            requests: fam(names::REQUESTS),
            retried: fam(names::REQUESTS_RETRIED),
            retries: fam(names::RETRIES),
            denied: fam(names::BUDGET_DENIED),
            clamped: fam(names::BUDGET_CLAMPED),
            stripped: fam(names::CLIENT_HEADERS_STRIPPED),
            // One series per name Envoy acts on, one for every other name: bounded whatever
            // names clients send. Defined on first use.
            stripped_headers: MetricFamily::counter(names::STRIPPED_HEADERS, &["header"])
                .with_max_series(headers::ENVOY_REQUEST_HEADERS.len() + 1),
            untrusted: fam(names::UNTRUSTED_CLIENTS),
            contended: Metric::counter(host, names::BUDGET_CONTENDED),
            untracked: Metric::counter(host, names::BUDGET_UNTRACKED),
            attempt_count_missing: Metric::counter(host, names::ATTEMPT_COUNT_MISSING),
            rule_ids: Vec::new(),
            ledgers: RefCell::new(Ledgers::new()),
        };
        // Define every rule's series now, so they exist (at 0) before the first request.
        let labels: Vec<String> = root
            .rules
            .rules
            .iter()
            .map(|r| r.name.clone())
            .chain([root.rules.default.name.clone()])
            .collect();
        let mut rule_ids = vec![[None; 6]; labels.len()];
        for (f, fam) in root.rule_families().into_iter().enumerate() {
            for (ids, label) in rule_ids.iter_mut().zip(&labels) {
                let before = fam.series_count();
                let id = fam.id(host, &[label.as_str()]);
                // Kept only when it is the rule's own series (not the family's overflow).
                if fam.series_count() > before {
                    if let Some(slot) = ids.get_mut(f) {
                        *slot = id;
                    }
                }
            }
        }
        root.rule_ids = rule_ids;
        Ok(root)
    }

    fn tick_period(&self) -> Option<std::time::Duration> {
        Some(self.rules.sync_interval)
    }

    /// Syncs the budget ledgers with the other workers' through shared data.
    fn on_tick(&self, host: &dyn Host) {
        // Host calls never re-enter the filter, so the borrow is safe across them.
        let failed = self.ledgers.borrow_mut().sync(host, self.budget());
        if failed > 0 {
            self.contended.add(host, i64::from(failed));
        }
    }

    fn new_http(&self, _host: &dyn Host) -> RouteRetriesRequest {
        RouteRetriesRequest::default()
    }
}

/// How often a worker syncs its budget ledgers by default (`budget.sync_interval_ms`).
pub const DEFAULT_SYNC_INTERVAL: std::time::Duration =
    std::time::Duration::from_millis(config::DEFAULT_SYNC_INTERVAL_MS as u64);

/// The request as the filter sees it in `on_request_headers`: every request header from one
/// snapshot (one hostcall for the whole map, instead of one per name looked up, present or
/// not), and Envoy's route and cluster names read only when asked for, at most once each.
struct RequestView<'a> {
    host: &'a dyn Host,
    headers: HeaderSnapshot,
    route_name: OnceCell<Option<String>>,
    cluster_name: OnceCell<Option<String>>,
}

impl<'a> RequestView<'a> {
    fn new(host: &'a dyn Host) -> RequestView<'a> {
        RequestView {
            host,
            headers: host.snapshot(MapKind::RequestHeaders),
            route_name: OnceCell::new(),
            cluster_name: OnceCell::new(),
        }
    }

    /// A request header as text (lossy UTF-8, as [`Host::request_header`]).
    fn get(&self, name: &str) -> Option<Cow<'_, str>> {
        self.headers.get_str(name)
    }

    /// `xds.cluster_name`, read once.
    fn cluster(&self) -> Option<&str> {
        self.cluster_name
            .get_or_init(|| properties::xds_cluster_name(self.host))
            .as_deref()
    }
}

/// Every attribute lent from the snapshot or the value read once: matching copies nothing.
impl Attributes for RequestView<'_> {
    fn path(&self) -> Option<Cow<'_, str>> {
        self.get(":path")
    }
    fn method(&self) -> Option<Cow<'_, str>> {
        self.get(":method")
    }
    fn authority(&self) -> Option<Cow<'_, str>> {
        self.get(":authority")
    }
    fn header(&self, name: &str) -> Option<Cow<'_, str>> {
        self.get(name)
    }
    fn route_name(&self) -> Option<Cow<'_, str>> {
        self.route_name
            .get_or_init(|| properties::xds_route_name(self.host))
            .as_deref()
            .map(Cow::Borrowed)
    }
    fn cluster_name(&self) -> Option<Cow<'_, str>> {
        self.cluster().map(Cow::Borrowed)
    }
}

impl HttpFilter for RouteRetriesRequest {
    type Root = RouteRetries;
    const PHASES: Phases = Phases::REQUEST_HEADERS
        .with(Phases::RESPONSE_HEADERS)
        .with(Phases::LOG);

    fn on_request_headers(&mut self, root: &RouteRetries, host: &dyn Host, _eos: bool) -> Action {
        let mut view = RequestView::new(host);
        self.rule = root.select(&view);
        let rule = root.rule(self.rule);
        let label = [rule.name.as_str()];
        root.rule_add(host, family::REQUESTS, self.rule, 1);

        // The client's `x-envoy-*` headers: an allow-list. Each is removed (a hostcall only for
        // those the request carries) unless the policy allows it, or it is a retry-control
        // header and the rule trusts the client: a trusted client's retry values stay, except
        // that the budget still caps its retry count. Envoy's own `x-envoy-internal` stays.
        let policy = &rule.policy;
        // A caller that is not trusted (`trusted_clients`) gets the rule's policy alone: its
        // retry-control headers are removed like any other, its deadline headers ignored.
        let believed = root.rules.trusted_clients.believes(host);
        if !believed {
            root.untrusted.inc(host, &label);
        }
        let trust_client_headers = rule.trust_client_headers && believed;
        let mut client_max: Option<u32> = None;
        let mut client_sent = [false; CONTROL_HEADERS.len()];
        let mut removed: Vec<String> = Vec::new();
        // The client's deadline header, kept from this walk rather than looked up again.
        let mut expected_timeout: Option<&[u8]> = None;
        // Only `x-envoy-*` names can be removed: the others are passed over on their first bytes.
        for (name, value) in view.headers.iter_prefixed(headers::ENVOY_PREFIX) {
            let name: &str = &name;
            if expected_timeout.is_none() && name == EXPECTED_TIMEOUT_HEADER {
                // The first value, as a lookup of the name gives it.
                expected_timeout = Some(value);
            }
            if !headers::is_client_envoy_header(name) || removed.iter().any(|r| r == name) {
                continue;
            }
            if trust_client_headers {
                if let Some(i) = CONTROL_HEADERS.iter().position(|c| *c == name) {
                    // The first value counts, as Envoy's router reads it.
                    if let Some(sent) = client_sent.get_mut(i).filter(|sent| !**sent) {
                        *sent = true;
                        if name == MAX_RETRIES_HEADER {
                            client_max = std::str::from_utf8(value)
                                .ok()
                                .and_then(|v| v.trim().parse().ok());
                        }
                    }
                    continue;
                }
            }
            if policy.allows_client_header(name) {
                continue;
            }
            host.remove_request_header(name);
            root.stripped_headers.inc(host, &[headers::label(name)]);
            removed.push(name.to_string());
        }
        if !removed.is_empty() {
            root.rule_add(host, family::STRIPPED, self.rule, removed.len() as i64);
        }

        let method = view.get(":method");
        let wanted = if policy.retries_method(method.as_deref()) {
            client_max
                .map(|n| n.min(policy::MAX_RETRIES))
                .unwrap_or(policy.num_retries)
        } else {
            0
        };

        // Every request counts toward its cluster's budget; retries are reserved up front.
        let cluster = view.cluster().unwrap_or(UNKNOWN_CLUSTER);
        let admission = root
            .ledgers
            .borrow_mut()
            .admit(host, root.budget(), cluster, wanted);
        if admission.contended {
            root.contended.inc(host);
        }
        if !admission.tracked {
            root.untracked.inc(host);
        }
        if admission.recorded {
            // The name as read from the proxy, kept rather than copied.
            let cluster = match view.cluster_name.take().flatten() {
                Some(name) => name,
                None => UNKNOWN_CLUSTER.to_string(),
            };
            self.budget = Some((cluster, admission.second));
        }
        self.granted = admission.granted;
        if wanted > 0 && admission.granted == 0 {
            root.rule_add(host, family::DENIED, self.rule, 1);
        } else if admission.granted < wanted {
            root.rule_add(host, family::CLAMPED, self.rule, 1);
        }

        // The snapshot still holds the deadline headers, also a client's
        // `x-envoy-expected-rq-timeout-ms` removed above: a deadline only shortens its tries.
        let deadline = if believed {
            policy::deadline_ms(
                view.get("grpc-timeout").as_deref(),
                expected_timeout.map(String::from_utf8_lossy).as_deref(),
            )
        } else {
            None
        };
        policy.each_header(admission.granted, deadline, |name, value| {
            let trusted_value = CONTROL_HEADERS
                .iter()
                .zip(client_sent)
                .any(|(n, sent)| sent && *n == name);
            if !trusted_value || name == MAX_RETRIES_HEADER {
                host.set_request_header(name, value);
            }
        });
        Action::Continue
    }

    fn on_response_headers(&mut self, root: &RouteRetries, host: &dyn Host, _eos: bool) -> Action {
        if self.settled || self.missing_counted {
            return Action::Continue;
        }
        let attempts = host
            .header(MapKind::ResponseHeaders, ATTEMPT_COUNT)
            .and_then(|v| std::str::from_utf8(&v).ok()?.trim().parse::<u32>().ok())
            .filter(|n| *n >= 1);
        match attempts {
            Some(attempts) => self.account(root, host, attempts),
            None => {
                // Without the count (a local reply from a filter between this one and the
                // router, or a route config without include_attempt_count_in_response) the end
                // of the stream settles it.
                self.missing_counted = true;
                root.attempt_count_missing.inc(host);
            }
        }
        Action::Continue
    }

    /// The end of every stream, however it ended: one that was not accounted on its response
    /// (the client reset it, or it timed out, before any response headers; or the response
    /// carried no attempt count) is accounted from Envoy's own count of its attempts, so no
    /// reservation outlives its stream. One property read, only on such streams.
    fn on_log(&mut self, root: &RouteRetries, host: &dyn Host) {
        if self.settled || self.budget.is_none() {
            return;
        }
        let attempts = properties::uint(host, ATTEMPT_COUNT_PROPERTY)
            .map(|n| u32::try_from(n).unwrap_or(u32::MAX));
        match attempts {
            Some(attempts) => self.account(root, host, attempts),
            None => {
                // A host that does not report it: the reservation stands (the budget errs on
                // the safe side) until its second leaves the window.
                if !self.missing_counted {
                    root.attempt_count_missing.inc(host);
                }
            }
        }
    }
}

impl RouteRetriesRequest {
    /// Counts the retries of a stream that made `attempts` upstream attempts (0: none) and
    /// replaces its reservation by them. Once per stream.
    fn account(&mut self, root: &RouteRetries, host: &dyn Host, attempts: u32) {
        self.settled = true;
        let retries = attempts.saturating_sub(1);
        if retries > 0 {
            root.rule_add(host, family::RETRIED, self.rule, 1);
            root.rule_add(host, family::RETRIES, self.rule, i64::from(retries));
        }
        if let Some((cluster, second)) = &self.budget {
            // In the worker's ledger (shared with the next sync), or straight in shared data
            // for a cluster past the ones it keeps a ledger for.
            let settled = root.ledgers.borrow_mut().settle(
                host,
                root.budget(),
                cluster,
                *second,
                self.granted,
                retries,
            );
            if !settled {
                root.contended.inc(host);
            }
        }
    }
}

#[cfg(feature = "entry")]
meshwasm::export_filter!(RouteRetries, phases: [request_headers, response_headers, log]);

#[cfg(test)]
mod tests;
