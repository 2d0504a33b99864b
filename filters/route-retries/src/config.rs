//! The filter's configuration: ordered rules (match + policy, first match wins), the default
//! policy and the retry budget, parsed with serde and validated into [`Rules`] once per
//! configuration, with errors that name the field path.

use meshwasm::config::{check, ConfigError};
use meshwasm::matching::{MatchSpec, Matcher};

use crate::budget::{BudgetParams, MAX_MIN_RETRIES_PER_SECOND, MAX_RATIO, MAX_WINDOW_SECONDS};
use crate::policy::{Policy, PolicyConfig};

/// The plugin configuration.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Ordered rules; the first whose `match` holds decides.
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
    /// The policy of requests no rule matches (default: no retries).
    #[serde(default)]
    pub default: PolicyConfig,
    /// The retry budget per destination cluster.
    #[serde(default)]
    pub budget: BudgetConfig,
    /// Whose retry-control headers (`trust_client_headers`) and deadline headers
    /// (`grpc-timeout`, `x-envoy-expected-rq-timeout-ms`) count: `anyone` (default) or
    /// `mesh_peers` (a caller with a verified mesh certificate; anyone else gets the rule's
    /// policy alone).
    #[serde(default)]
    pub trusted_clients: meshwasm::properties::TrustedCallers,
}

/// One rule.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// The rule's name, the `rule` label of its metrics (default `rule-<index>`).
    #[serde(default)]
    pub name: Option<String>,
    /// Which requests the rule applies to (default: all).
    #[serde(rename = "match", default)]
    pub matching: MatchSpec,
    /// What to do with them.
    pub policy: PolicyConfig,
    /// Keep the client's retry-control headers instead of removing them (default false).
    #[serde(default)]
    pub trust_client_headers: bool,
}

/// The budget as written in configuration.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetConfig {
    /// Retries may add this fraction of the requests in the window (default 0.2, at most
    /// [`MAX_RATIO`]).
    #[serde(default = "default_ratio")]
    pub ratio: f64,
    /// Plus this many retries per second, always (default 10, at most
    /// [`MAX_MIN_RETRIES_PER_SECOND`]).
    #[serde(default = "default_min_rps")]
    pub min_retries_per_second: u32,
    /// The sliding window, seconds (default 10).
    #[serde(default = "default_window")]
    pub window_seconds: u32,
    /// How often each worker syncs its counts with the other workers', milliseconds (default
    /// 250, [`MIN_SYNC_INTERVAL_MS`] to [`MAX_SYNC_INTERVAL_MS`]).
    #[serde(default = "default_sync_interval")]
    pub sync_interval_ms: u32,
}

fn default_ratio() -> f64 {
    0.2
}
fn default_min_rps() -> u32 {
    10
}
fn default_window() -> u32 {
    10
}
fn default_sync_interval() -> u32 {
    DEFAULT_SYNC_INTERVAL_MS
}

/// The default `budget.sync_interval_ms`.
pub const DEFAULT_SYNC_INTERVAL_MS: u32 = 250;
/// Shortest `budget.sync_interval_ms`: more often costs every worker a shared-data read (and a
/// write) per cluster that often, for a bound already small.
pub const MIN_SYNC_INTERVAL_MS: u32 = 10;
/// Longest `budget.sync_interval_ms`: the budget may be exceeded by what the other workers
/// admit in two intervals, so an interval stays well below the shortest window (1 s).
pub const MAX_SYNC_INTERVAL_MS: u32 = 1000;

impl Default for BudgetConfig {
    fn default() -> Self {
        BudgetConfig {
            ratio: default_ratio(),
            min_retries_per_second: default_min_rps(),
            window_seconds: default_window(),
            sync_interval_ms: default_sync_interval(),
        }
    }
}

/// The label of requests that no rule matched.
pub const DEFAULT_RULE: &str = "default";

/// A validated rule.
#[derive(Debug)]
pub struct Rule {
    /// Metric label.
    pub name: String,
    /// Compiled match.
    pub matcher: Matcher,
    /// Compiled policy.
    pub policy: Policy,
    /// Whether the client's retry headers are kept.
    pub trust_client_headers: bool,
}

/// The validated configuration.
#[derive(Debug)]
pub struct Rules {
    /// Ordered rules.
    pub rules: Vec<Rule>,
    /// The rule applied when none matches (named [`DEFAULT_RULE`], matches everything).
    pub default: Rule,
    /// Budget parameters.
    pub budget: BudgetParams,
    /// Whose retry and deadline headers count.
    pub trusted_clients: meshwasm::properties::TrustedCallers,
    /// How often each worker syncs its budget ledgers (the root's tick period).
    pub sync_interval: std::time::Duration,
}

impl Config {
    /// Validates everything serde could not.
    pub fn compile(self) -> Result<Rules, ConfigError> {
        let mut rules = Vec::with_capacity(self.rules.len());
        for (i, r) in self.rules.iter().enumerate() {
            let at = format!("rules[{i}]");
            let name = r.name.clone().unwrap_or_else(|| format!("rule-{i}"));
            check::non_empty(&name, format!("{at}.name"))?;
            let taken = name == DEFAULT_RULE || rules.iter().any(|x: &Rule| x.name == name);
            check::ensure(
                !taken,
                format!("{at}.name"),
                &format!("`{name}` is already used"),
            )?;
            rules.push(Rule {
                name,
                matcher: r.matching.compile(&format!("{at}.match"))?,
                policy: r.policy.compile(&format!("{at}.policy"))?,
                trust_client_headers: r.trust_client_headers,
            });
        }
        let default = Rule {
            name: DEFAULT_RULE.to_string(),
            matcher: Matcher::any(),
            policy: self.default.compile("default")?,
            trust_client_headers: false,
        };
        let b = &self.budget;
        // Bounds that keep the budget a budget (see MAX_RATIO, MAX_MIN_RETRIES_PER_SECOND).
        check::ensure(
            b.ratio.is_finite() && (0.0..=MAX_RATIO).contains(&b.ratio),
            "budget.ratio",
            &format!(
                "{} is out of range, expected 0 to {MAX_RATIO} (a fraction of the requests: 0.2 is 20%)",
                b.ratio
            ),
        )?;
        check::in_range(
            b.min_retries_per_second,
            0,
            MAX_MIN_RETRIES_PER_SECOND,
            "budget.min_retries_per_second",
        )?;
        check::in_range(
            b.window_seconds,
            1,
            MAX_WINDOW_SECONDS,
            "budget.window_seconds",
        )?;
        check::in_range(
            b.sync_interval_ms,
            MIN_SYNC_INTERVAL_MS,
            MAX_SYNC_INTERVAL_MS,
            "budget.sync_interval_ms",
        )?;
        Ok(Rules {
            rules,
            default,
            budget: BudgetParams {
                ratio: b.ratio,
                min_retries_per_second: b.min_retries_per_second,
                window_seconds: b.window_seconds,
            },
            trusted_clients: self.trusted_clients,
            sync_interval: std::time::Duration::from_millis(u64::from(b.sync_interval_ms)),
        })
    }
}
