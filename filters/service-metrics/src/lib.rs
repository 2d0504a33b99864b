//! Service-identity metrics: request counts, latency and size histograms labeled by who called
//! whom, with the peer's identity learned from a compact (optionally HMAC-signed) header that
//! each sidecar adds for the other side and removes before its app or client sees it.

pub mod config;
pub mod labels;
pub mod trust;

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{SystemTime, UNIX_EPOCH};

use meshwasm::identity::{self, Direction, Identity, KeyRing, NodeInfo, PeerError, Scope};
use meshwasm::metrics::SeriesCache;
use meshwasm::prelude::*;

use config::{Config, Reporter};
use labels::{Field, Label, Observed};

/// Requests, by every configured label.
pub const REQUESTS: &str = "mesh_requests_total";
/// Request duration histogram (milliseconds).
pub const DURATION: &str = "mesh_request_duration_milliseconds";
/// Request size histogram (bytes, headers included).
pub const REQUEST_BYTES: &str = "mesh_request_bytes";
/// Response size histogram (bytes, headers included).
pub const RESPONSE_BYTES: &str = "mesh_response_bytes";
/// Peer headers not believed, by `reporter` and `reason`.
pub const REJECTED: &str = "mesh_peer_identity_rejected_total";

/// How many verified peer headers a worker remembers (exact header bytes), so a busy peer's
/// header is checked once per second rather than once per request.
const PEER_CACHE: usize = 32;

/// The root: resolved identity, peer header settings and the metric families of one worker.
pub struct ServiceMetrics {
    reporter: Reporter,
    local: Identity,
    peer_header: String,
    /// The mesh keys (the first signs; every one verifies). Empty: headers are not signed.
    keys: KeyRing,
    /// What to believe about a peer without a verified certificate.
    trust: trust::PeerTrust,
    /// The clusters our identity header goes to on the source side (`None`: all).
    mesh_clusters: Option<Vec<String>>,
    /// Services that may relay another service's header (front proxies).
    relays: Vec<String>,
    max_skew: u64,
    labels: Vec<Label>,
    /// Which per-request values the labels use (the others are never read).
    uses: Uses,
    /// The properties [`ServiceMetrics::record`] reads at the end of the stream, in one
    /// hostcall.
    log_properties: PropertyBatch,
    requests: MetricFamily,
    duration: MetricFamily,
    request_bytes: MetricFamily,
    response_bytes: MetricFamily,
    /// The four families' ids per label tuple (requests, duration, request and response bytes).
    series: SeriesCache<4>,
    rejected: MetricFamily,
    /// Our headers for the current second, one per audience and direction.
    own_header: RefCell<Vec<OwnHeader>>,
    /// Recently believed peer headers.
    believed: RefCell<Vec<Believed>>,
}

/// Which per-request values the configured labels need: a value no label shows costs no
/// hostcall.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Uses {
    /// `route`: `xds.route_name`.
    route: bool,
    /// `request_protocol`: `request.protocol`.
    protocol: bool,
    /// `response_code`: `response.code`.
    code: bool,
    /// `grpc_status`: the request's `content-type` and `response.grpc_status`.
    grpc: bool,
    /// `response_flags`: `response.flags`.
    flags: bool,
    /// `destination_service`: on the source side without a peer header, `xds.cluster_name`
    /// (else the authority) names the destination.
    destination_service: bool,
}

impl Uses {
    /// The properties [`ServiceMetrics::record`] reads on a proxied request, for its batch:
    /// the sizes always, the others when a label shows them (the grpc status only for gRPC
    /// requests, and it is often absent: read singly). The response code, which
    /// [`properties::response_status`] then takes from the batch instead of a header read, is
    /// listed as present: an optional element costs about 2.5 times as much (`has()` and the
    /// list around it), and the stream that lacks it, reset before any response, reads singly
    /// instead.
    fn log_properties(self, reporter: Reporter) -> Vec<&'static str> {
        [
            (self.route, "xds.route_name"),
            (self.protocol, "request.protocol"),
            (self.code, properties::RESPONSE_CODE),
            (self.flags, "response.flags"),
            (
                self.destination_service && reporter == Reporter::Source,
                "xds.cluster_name",
            ),
            (true, "request.total_size"),
            (true, "response.total_size"),
        ]
        .into_iter()
        .filter_map(|(used, path)| used.then_some(path))
        .collect()
    }

    fn of(labels: &[Label]) -> Uses {
        let has = |l: Label| labels.contains(&l);
        Uses {
            route: has(Label::Route),
            protocol: has(Label::RequestProtocol),
            code: has(Label::ResponseCode),
            grpc: has(Label::GrpcStatus),
            flags: has(Label::ResponseFlags),
            destination_service: has(Label::Destination(Field::Service)),
        }
    }
}

/// One of our headers: (unix seconds, audience, direction, value).
type OwnHeader = (u64, String, Direction, String);

/// How many of our headers (audiences and directions) a worker keeps for the current second.
const OWN_HEADERS: usize = 8;

/// A peer header that passed the checks: its exact bytes, timestamp and identity.
type Believed = (Vec<u8>, u64, Rc<Identity>);

/// What one request learned about its peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peer {
    /// No peer header arrived.
    Missing,
    /// A header that passed the checks.
    Known(Rc<Identity>),
    /// A header that did not: reported as `unknown` (and counted by reason).
    Rejected(PeerError),
}

/// Per-request state.
pub struct MetricsRequest {
    peer: Peer,
    grpc: bool,
    /// When the request headers reached the filter (the start of the duration).
    start: Option<SystemTime>,
}

impl MetricsRequest {
    /// What this request learned about its peer so far.
    pub fn peer(&self) -> &Peer {
        &self.peer
    }
}

/// A header on request headers travels as a request; anything else as a response.
fn direction_of(map: MapKind) -> Direction {
    match map {
        MapKind::RequestHeaders | MapKind::RequestTrailers => Direction::Request,
        _ => Direction::Response,
    }
}

fn now_secs(host: &dyn Host) -> u64 {
    secs(host.now())
}

fn secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The metric families for a label list (also used to render the `stats_tags`).
pub fn families(labels: &[Label], max_series: usize) -> [MetricFamily; 4] {
    let names: Vec<&str> = labels.iter().map(|l| l.name()).collect();
    [
        MetricFamily::counter(REQUESTS, &names),
        MetricFamily::histogram(DURATION, &names),
        MetricFamily::histogram(REQUEST_BYTES, &names),
        MetricFamily::histogram(RESPONSE_BYTES, &names),
    ]
    .map(|f| f.with_max_series(max_series))
}

/// The rejected-peer counter family.
pub fn rejected_family() -> MetricFamily {
    MetricFamily::counter(REJECTED, &["reporter", "reason"])
}

impl ServiceMetrics {
    /// Builds the root with an explicit environment lookup (the VM's environment variables in
    /// Envoy; a fake in tests).
    pub fn build(
        config: Config,
        host: &dyn Host,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let cfg = config.validate()?;
        let (local, origins) = identity::resolve(&cfg.identity, env, &NodeInfo::from_host(host));
        let described: Vec<String> = origins
            .iter()
            .map(|(field, origin)| format!("{field}={} ({origin:?})", local.field(field)))
            .collect();
        log::info!(
            "service_metrics: reporter={} peer_trust={} identity {}",
            cfg.reporter.as_str(),
            cfg.trust.as_str(),
            described.join(" ")
        );
        let [requests, duration, request_bytes, response_bytes] =
            families(&cfg.labels, cfg.max_series);
        let rejected = rejected_family();
        // Every reason exists (at 0) from the start, so alerts can rely on the series.
        for reason in PeerError::ALL {
            let _ = rejected.id(host, &[cfg.reporter.as_str(), reason.reason()]);
        }
        Ok(ServiceMetrics {
            reporter: cfg.reporter,
            local,
            peer_header: cfg.peer_header,
            keys: trust::key_ring(&cfg.signing_keys, env)?,
            trust: cfg.trust,
            mesh_clusters: cfg.mesh_clusters,
            relays: cfg.relays,
            max_skew: cfg.max_skew_seconds,
            uses: Uses::of(&cfg.labels),
            log_properties: PropertyBatch::new(
                host,
                &Uses::of(&cfg.labels).log_properties(cfg.reporter),
                &[],
            ),
            labels: cfg.labels,
            requests,
            duration,
            request_bytes,
            response_bytes,
            series: SeriesCache::new(),
            rejected,
            own_header: RefCell::new(Vec::new()),
            believed: RefCell::new(Vec::new()),
        })
    }

    /// The batch of the properties a finished request's metrics read.
    pub fn log_properties(&self) -> &PropertyBatch {
        &self.log_properties
    }

    /// The resolved local identity.
    pub fn local(&self) -> &Identity {
        &self.local
    }

    /// The labels every metric carries, in order.
    pub fn labels(&self) -> &[Label] {
        &self.labels
    }

    /// Sets our identity header for `audience` on `map` (a request or a response: the
    /// direction), re-encoding (and re-signing) once per second per audience and direction.
    fn put_own_header(&self, host: &dyn Host, map: MapKind, audience: &str, now: u64) {
        let direction = direction_of(map);
        let mut cached = self.own_header.borrow_mut();
        cached.retain(|(t, ..)| *t == now);
        let pos = cached
            .iter()
            .position(|(_, a, d, _)| a == audience && *d == direction);
        let pos = match pos {
            Some(pos) => pos,
            None => {
                if cached.len() >= OWN_HEADERS {
                    cached.remove(0);
                }
                let scope = Scope {
                    audience,
                    direction,
                };
                let value = identity::encode_scoped(&self.local, now, &self.keys, &scope);
                cached.push((now, audience.to_string(), direction, value));
                cached.len() - 1
            }
        };
        if let Some((.., value)) = cached.get(pos) {
            host.set_header(map, &self.peer_header, Some(value.as_bytes()));
        }
    }

    /// Reads and removes the peer header from `map`, and decides whether to believe it.
    fn take_peer(&self, host: &dyn Host, map: MapKind) -> Peer {
        let value = host.header(map, &self.peer_header);
        self.take_peer_value(host, map, value.as_deref())
    }

    /// Removes the peer header, read as `value`, from `map`, and decides who the peer is from
    /// the connection's certificate and the header (see [`trust`]).
    fn take_peer_value(&self, host: &dyn Host, map: MapKind, value: Option<&[u8]>) -> Peer {
        if value.is_some() {
            host.set_header(map, &self.peer_header, None);
        }
        self.decide_peer(host, map, value)
    }

    /// Whether to believe the header `value` read from `map`: signed by a mesh key (when there
    /// are keys), recent, and made for us in that direction.
    fn check(&self, host: &dyn Host, map: MapKind, value: &[u8]) -> Peer {
        let now = now_secs(host);
        let hit = self
            .believed
            .borrow()
            .iter()
            .find(|(v, _, _)| v.as_slice() == value)
            .map(|(_, ts, id)| (*ts, Rc::clone(id)));
        if let Some((ts, id)) = hit {
            if !self.keys.is_empty() && now.abs_diff(ts) > self.max_skew {
                return Peer::Rejected(PeerError::Expired);
            }
            return Peer::Known(id);
        }
        let expect = Scope {
            audience: &self.local.service,
            direction: direction_of(map),
        };
        match identity::verify_scoped(value, &self.keys, now, self.max_skew, &expect) {
            Ok(header) => {
                let id = Rc::new(header.identity);
                let mut believed = self.believed.borrow_mut();
                if believed.len() >= PEER_CACHE {
                    believed.remove(0);
                }
                believed.push((value.to_vec(), header.timestamp, Rc::clone(&id)));
                Peer::Known(id)
            }
            Err(e) => Peer::Rejected(e),
        }
    }

    /// Records one finished request.
    fn record(&self, host: &dyn Host, request: &MetricsRequest) {
        let unknown = Identity::unknown();
        let fallback;
        let (source, destination): (&Identity, &Identity) = match (self.reporter, &request.peer) {
            (Reporter::Destination, Peer::Known(peer)) => (peer, &self.local),
            (Reporter::Destination, _) => (&unknown, &self.local),
            (Reporter::Source, Peer::Known(peer)) => (&self.local, peer),
            (Reporter::Source, Peer::Rejected(_)) => (&self.local, &unknown),
            (Reporter::Source, Peer::Missing) => {
                // No sidecar answered for the destination: name it after the upstream cluster,
                // else the authority (read only when the label shows it; the other fields are
                // `unknown` either way).
                let service = if self.uses.destination_service {
                    properties::xds_cluster_name(host)
                        .filter(|s| !s.is_empty())
                        .or_else(|| properties::request_host(host))
                        .unwrap_or_default()
                } else {
                    String::new()
                };
                fallback = Identity {
                    service,
                    ..Identity::default()
                };
                (&self.local, &fallback)
            }
        };
        // Only the values some label shows are read (a property read is a hostcall).
        let uses = self.uses;
        let route = uses
            .route
            .then(|| properties::xds_route_name(host))
            .flatten()
            .unwrap_or_default();
        let protocol = uses
            .protocol
            .then(|| properties::request_protocol(host))
            .flatten()
            .unwrap_or_default();
        // Numbers are written into stack buffers, and the usual `-` is borrowed: no allocation
        // for a value that is not a property's own text.
        let mut code_buf = [0u8; DECIMAL_LEN];
        let code = if uses.code {
            decimal(
                properties::response_status(host).unwrap_or(0),
                &mut code_buf,
            )
        } else {
            ""
        };
        let mut grpc_buf = [0u8; DECIMAL_LEN];
        let grpc = if uses.grpc && request.grpc {
            match properties::response_grpc_status(host) {
                Some(g) => decimal(g, &mut grpc_buf),
                None => "-",
            }
        } else {
            "-"
        };
        let flags_text;
        let flags = if uses.flags {
            match properties::response_flags(host) {
                Some(f) if f != 0 => {
                    flags_text = properties::response_flags_short(f);
                    flags_text.as_str()
                }
                _ => "-",
            }
        } else {
            ""
        };
        let observed = Observed {
            reporter: self.reporter.as_str(),
            source,
            destination,
            route: &route,
            protocol: &protocol,
            code,
            grpc,
            flags,
        };
        // On the stack for every label list a configuration can name (each label at most once).
        let mut on_stack = [""; labels::ALL_LABELS.len()];
        let spilled: Vec<&str>;
        let values: &[&str] = match on_stack.get_mut(..self.labels.len()) {
            Some(slots) => {
                for (slot, label) in slots.iter_mut().zip(&self.labels) {
                    *slot = label.value(&observed);
                }
                slots
            }
            None => {
                spilled = self.labels.iter().map(|l| l.value(&observed)).collect();
                &spilled
            }
        };
        // Hashed once for the four families, and their ids found with one lookup once each
        // family has the tuple as a series of its own.
        let values = Labels::new(values);
        let cached = self.series.get(&values);
        let id = |index: usize, family: &MetricFamily| match cached {
            Some(ids) => ids.get(index).copied(),
            None => family.id(host, &values),
        };
        if let Some(id) = id(0, &self.requests) {
            let _ = host.increment_metric(id, 1);
        }
        // The proxy's clock from the request headers to the end of the stream (one clock
        // reading, where the `request.duration` attribute cost a property read); the attribute
        // only for a stream whose request headers the filter never saw.
        let duration = match request.start {
            Some(start) => Some(host.now().duration_since(start).unwrap_or_default()),
            None => properties::request_duration(host),
        };
        if let Some(d) = duration {
            let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
            if let Some(id) = id(1, &self.duration) {
                let _ = host.record_metric(id, ms);
            }
        }
        // The total size (headers and body), else the body size: read only when the total is
        // absent.
        let size = |total: Option<i64>, body: &dyn Fn() -> Option<i64>| {
            total
                .or_else(body)
                .and_then(|n| u64::try_from(n).ok())
                .unwrap_or(0)
        };
        let req = size(properties::request_total_size(host), &|| {
            properties::request_size(host)
        });
        let resp = size(properties::response_total_size(host), &|| {
            properties::response_size(host)
        });
        if let Some(id) = id(2, &self.request_bytes) {
            let _ = host.record_metric(id, req);
        }
        if let Some(id) = id(3, &self.response_bytes) {
            let _ = host.record_metric(id, resp);
        }
        if cached.is_none() {
            let families = [
                &self.requests,
                &self.duration,
                &self.request_bytes,
                &self.response_bytes,
            ];
            self.series.remember(families, &values);
        }
    }
}

/// Room for any `i64` in decimal, sign included.
const DECIMAL_LEN: usize = 20;

/// `n` in decimal, written at the end of `buf`.
fn decimal(n: i64, buf: &mut [u8; DECIMAL_LEN]) -> &str {
    let mut rest = n.unsigned_abs();
    let mut at = DECIMAL_LEN;
    loop {
        at -= 1;
        buf[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    if n < 0 {
        at -= 1;
        buf[at] = b'-';
    }
    std::str::from_utf8(&buf[at..]).unwrap_or("0")
}

impl RootFilter for ServiceMetrics {
    type Config = Config;
    type Http = MetricsRequest;
    const NAME: &'static str = "service_metrics";

    fn configure(config: Config, host: &dyn Host) -> Result<Self, ConfigError> {
        ServiceMetrics::build(config, host, &|name| host.env_var(name))
    }

    fn new_http(&self, _host: &dyn Host) -> MetricsRequest {
        MetricsRequest {
            peer: Peer::Missing,
            grpc: false,
            start: None,
        }
    }
}

impl HttpFilter for MetricsRequest {
    type Root = ServiceMetrics;
    const PHASES: Phases = Phases::REQUEST_HEADERS
        .with(Phases::RESPONSE_HEADERS)
        .with(Phases::LOG);

    fn on_request_headers(&mut self, root: &ServiceMetrics, host: &dyn Host, _eos: bool) -> Action {
        let is_grpc = |ct: &[u8]| ct.starts_with(b"application/grpc");
        let map = MapKind::RequestHeaders;
        let start = host.now();
        self.start = Some(start);
        // The content type matters only to the `grpc_status` label.
        match (root.reporter, root.uses.grpc) {
            (Reporter::Source, grpc) => {
                self.grpc = grpc
                    && host
                        .header(map, "content-type")
                        .is_some_and(|ct| is_grpc(&ct));
                if let Some(audience) = root.mesh_upstream(host) {
                    root.put_own_header(host, map, &audience, secs(start));
                } else {
                    // Not a mesh service: whatever the app set is not ours to pass on either.
                    host.set_header(map, &root.peer_header, None);
                }
            }
            (Reporter::Destination, false) => self.peer = root.take_peer(host, map),
            (Reporter::Destination, true) => {
                // Two names to look up: one read of the whole map.
                let headers = host.snapshot(map);
                self.grpc = headers.get("content-type").is_some_and(is_grpc);
                self.peer = root.take_peer_value(host, map, headers.get(&root.peer_header));
            }
        }
        Action::Continue
    }

    fn on_response_headers(
        &mut self,
        root: &ServiceMetrics,
        host: &dyn Host,
        _eos: bool,
    ) -> Action {
        match root.reporter {
            Reporter::Source => self.peer = root.take_peer(host, MapKind::ResponseHeaders),
            // Answer with our identity only to a caller that proved it is in the mesh (a peer
            // header that passed the checks): a signed identity handed to any client could be
            // replayed by it as a request header within the allowed skew.
            Reporter::Destination => {
                if let Peer::Known(caller) = &self.peer {
                    root.put_own_header(
                        host,
                        MapKind::ResponseHeaders,
                        &caller.service,
                        now_secs(host),
                    );
                }
            }
        }
        Action::Continue
    }

    fn on_log(&mut self, root: &ServiceMetrics, host: &dyn Host) {
        root.log_properties
            .with(host, |host| root.record(host, self));
    }
}

#[cfg(feature = "entry")]
meshwasm::export_filter!(ServiceMetrics, phases: [request_headers, response_headers, log]);

#[cfg(test)]
mod tests;
