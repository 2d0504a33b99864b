//! The filter's configuration: which side of the request this sidecar reports, the local
//! identity, the peer header and where its signing keys come from, and which labels the metrics
//! carry.

use meshwasm::identity::{IdentityConfig, DEFAULT_PEER_HEADER};
use meshwasm::prelude::*;

use crate::labels::{Label, DEFAULT_LABELS};
use crate::trust::{KeySource, PeerTrust, HOW_TO_TRUST, INLINE_KEY_REFUSED};

/// Which side of a request this sidecar reports (the `reporter` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reporter {
    /// The caller's sidecar (outbound): sends its identity on the request, learns the
    /// destination from the response.
    Source,
    /// The callee's sidecar (inbound): learns the source from the request, answers with its
    /// identity on the response.
    Destination,
}

impl Reporter {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Reporter::Source => "source",
            Reporter::Destination => "destination",
        }
    }
}

/// Default allowed difference between a signed header's timestamp and this sidecar's clock.
pub const DEFAULT_MAX_SKEW_SECONDS: u64 = 60;

/// The plugin configuration as written in Envoy's `configuration` (JSON).
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Which side this sidecar reports. Required.
    pub reporter: Reporter,
    /// Identity fields that win over environment variables and the Envoy node.
    #[serde(default)]
    pub identity: IdentityConfig,
    /// What to believe about a peer without a verified certificate (`certificate`, the
    /// default: only a signed header, when a key is set; `signed_header`; `unsigned_header`).
    #[serde(default)]
    pub peer_trust: PeerTrust,
    /// The upstream clusters that are mesh services (their sidecars remove the header): the
    /// source side sends our identity header only to these. Absent: to every upstream.
    #[serde(default)]
    pub mesh_clusters: Option<Vec<String>>,
    /// Services whose certificate may carry a header naming another service: proxies that pass
    /// a caller's header on (a region's front proxy). Their header is believed as it is.
    #[serde(default)]
    pub relays: Vec<String>,
    /// Name of the peer identity header (request and response).
    #[serde(default = "default_peer_header")]
    pub peer_header: String,
    /// Refused whatever its value: a key inline in the configuration (where `/config_dump`
    /// shows it) was the old way; the error says to use `signing_keys`. Never read, so never
    /// echoed in a log.
    #[serde(default)]
    pub signing_key: Option<serde::de::IgnoredAny>,
    /// Mesh keys from the host's environment, each with an id: the first signs, both verify
    /// (at most two, for a rotation).
    #[serde(default)]
    pub signing_keys: Vec<KeySource>,
    /// Allowed clock difference for signed headers, in seconds.
    #[serde(default = "default_skew")]
    pub max_skew_seconds: u64,
    /// Default labels to leave out (e.g. `route`).
    #[serde(default)]
    pub drop_labels: Vec<String>,
    /// Optional labels to add (e.g. `source_instance`).
    #[serde(default)]
    pub add_labels: Vec<String>,
    /// Cap on distinct series per metric; the excess goes to the `overflow` series.
    #[serde(default = "default_max_series")]
    pub max_series: usize,
}

fn default_peer_header() -> String {
    DEFAULT_PEER_HEADER.to_string()
}
fn default_skew() -> u64 {
    DEFAULT_MAX_SKEW_SECONDS
}
fn default_max_series() -> usize {
    meshwasm::metrics::DEFAULT_MAX_SERIES
}

/// A configuration after the checks serde cannot express.
#[derive(Debug)]
pub struct Validated {
    /// Which side this sidecar reports.
    pub reporter: Reporter,
    /// The identity fields set in the configuration.
    pub identity: IdentityConfig,
    /// The peer header name.
    pub peer_header: String,
    /// What to believe about a peer without a certificate.
    pub trust: PeerTrust,
    /// Mesh keys from the environment (resolved when the filter is built).
    pub signing_keys: Vec<KeySource>,
    /// The clusters our identity header goes to (`None`: all).
    pub mesh_clusters: Option<Vec<String>>,
    /// Services that may relay another service's header.
    pub relays: Vec<String>,
    /// Allowed skew, seconds.
    pub max_skew_seconds: u64,
    /// The labels every metric carries, in order.
    pub labels: Vec<Label>,
    /// Cap on series per metric.
    pub max_series: usize,
}

impl Config {
    /// Checks the fields and resolves the label list.
    pub fn validate(self) -> Result<Validated, ConfigError> {
        self.identity.validate("identity")?;
        check::header_name(&self.peer_header, "peer_header")?;
        if self.signing_key.is_some() {
            return Err(ConfigError::new("signing_key", INLINE_KEY_REFUSED));
        }
        match (self.peer_trust, !self.signing_keys.is_empty()) {
            (PeerTrust::SignedHeader, false) => {
                return Err(ConfigError::new(
                    "peer_trust",
                    format!("signed_header needs signing_keys; {HOW_TO_TRUST}"),
                ))
            }
            (PeerTrust::UnsignedHeader, true) => {
                return Err(ConfigError::new(
                    "peer_trust",
                    format!(
                        "unsigned_header with signing_keys would also believe unsigned headers; \
                         {HOW_TO_TRUST}"
                    ),
                ))
            }
            _ => {}
        }
        if let Some(clusters) = &self.mesh_clusters {
            for (i, name) in clusters.iter().enumerate() {
                check::ensure(
                    !name.is_empty() && name.len() <= 255,
                    format!("mesh_clusters[{i}]"),
                    "a cluster name of 1 to 255 bytes",
                )?;
            }
        }
        for (i, name) in self.relays.iter().enumerate() {
            check::ensure(
                !name.is_empty() && name.len() <= 128,
                format!("relays[{i}]"),
                "a service name of 1 to 128 bytes",
            )?;
        }
        check::in_range(self.max_skew_seconds, 1, 86_400, "max_skew_seconds")?;
        check::in_range(self.max_series, 1, 100_000, "max_series")?;
        let mut labels: Vec<Label> = DEFAULT_LABELS.to_vec();
        for (i, name) in self.drop_labels.iter().enumerate() {
            let path = format!("drop_labels[{i}]");
            let label = Label::parse(name).map_err(|e| ConfigError::new(path.as_str(), e))?;
            let Some(pos) = labels.iter().position(|l| *l == label) else {
                return Err(ConfigError::new(
                    path,
                    format!("`{name}` is not a default label or is dropped twice"),
                ));
            };
            labels.remove(pos);
        }
        for (i, name) in self.add_labels.iter().enumerate() {
            let path = format!("add_labels[{i}]");
            let label = Label::parse(name).map_err(|e| ConfigError::new(path.as_str(), e))?;
            if labels.contains(&label) {
                return Err(ConfigError::new(
                    path,
                    format!("`{name}` is already a label"),
                ));
            }
            labels.push(label);
        }
        check::ensure(
            !labels.is_empty(),
            "drop_labels",
            "at least one label must remain",
        )?;
        Ok(Validated {
            reporter: self.reporter,
            identity: self.identity,
            peer_header: self.peer_header,
            trust: self.peer_trust,
            signing_keys: self.signing_keys,
            mesh_clusters: self.mesh_clusters,
            relays: self.relays,
            max_skew_seconds: self.max_skew_seconds,
            labels,
            max_series: self.max_series,
        })
    }
}
