//! The labels the metrics can carry: their names, which are on by default, and the per-request
//! values they take (borrowed lookups, no string building beyond the properties read).

use meshwasm::identity::Identity;

/// An identity field, as a label takes it from the source or the destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    /// Service.
    Service,
    /// Version.
    Version,
    /// Instance.
    Instance,
    /// Namespace.
    Namespace,
    /// Region.
    Region,
    /// Zone.
    Zone,
}

impl Field {
    /// The field of `id`, `unknown` when empty.
    pub fn of(self, id: &Identity) -> &str {
        let v = match self {
            Field::Service => &id.service,
            Field::Version => &id.version,
            Field::Instance => &id.instance,
            Field::Namespace => &id.namespace,
            Field::Region => &id.region,
            Field::Zone => &id.zone,
        };
        if v.is_empty() {
            meshwasm::identity::UNKNOWN
        } else {
            v
        }
    }
}

/// A metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Label {
    /// `reporter`: `source` or `destination`.
    Reporter,
    /// `source_<field>`.
    Source(Field),
    /// `destination_<field>`.
    Destination(Field),
    /// `route`: `xds.route_name`.
    Route,
    /// `request_protocol`: `request.protocol` (`HTTP/1.1`, `HTTP/2`...).
    RequestProtocol,
    /// `response_code`: `response.code`, `0` when there was no response.
    ResponseCode,
    /// `grpc_status`: `response.grpc_status`, `-` when the response is not gRPC.
    GrpcStatus,
    /// `response_flags`: Envoy's response flags as the access log shows them, `-` for none.
    ResponseFlags,
}

/// The labels on by default, in the order they appear in stat names and Prometheus output.
pub const DEFAULT_LABELS: [Label; 12] = [
    Label::Reporter,
    Label::Source(Field::Service),
    Label::Source(Field::Version),
    Label::Source(Field::Region),
    Label::Destination(Field::Service),
    Label::Destination(Field::Version),
    Label::Destination(Field::Region),
    Label::Route,
    Label::RequestProtocol,
    Label::ResponseCode,
    Label::GrpcStatus,
    Label::ResponseFlags,
];

/// Every label a configuration may name.
pub const ALL_LABELS: [Label; 18] = [
    Label::Reporter,
    Label::Source(Field::Service),
    Label::Source(Field::Version),
    Label::Source(Field::Instance),
    Label::Source(Field::Namespace),
    Label::Source(Field::Region),
    Label::Source(Field::Zone),
    Label::Destination(Field::Service),
    Label::Destination(Field::Version),
    Label::Destination(Field::Instance),
    Label::Destination(Field::Namespace),
    Label::Destination(Field::Region),
    Label::Destination(Field::Zone),
    Label::Route,
    Label::RequestProtocol,
    Label::ResponseCode,
    Label::GrpcStatus,
    Label::ResponseFlags,
];

impl Label {
    /// The label name.
    pub fn name(self) -> &'static str {
        match self {
            Label::Reporter => "reporter",
            Label::Source(f) => match f {
                Field::Service => "source_service",
                Field::Version => "source_version",
                Field::Instance => "source_instance",
                Field::Namespace => "source_namespace",
                Field::Region => "source_region",
                Field::Zone => "source_zone",
            },
            Label::Destination(f) => match f {
                Field::Service => "destination_service",
                Field::Version => "destination_version",
                Field::Instance => "destination_instance",
                Field::Namespace => "destination_namespace",
                Field::Region => "destination_region",
                Field::Zone => "destination_zone",
            },
            Label::Route => "route",
            Label::RequestProtocol => "request_protocol",
            Label::ResponseCode => "response_code",
            Label::GrpcStatus => "grpc_status",
            Label::ResponseFlags => "response_flags",
        }
    }

    /// Parses a label name; the error lists the valid ones.
    pub fn parse(name: &str) -> Result<Label, String> {
        if let Some(l) = ALL_LABELS.iter().find(|l| l.name() == name) {
            return Ok(*l);
        }
        let valid: Vec<&str> = ALL_LABELS.iter().map(|l| l.name()).collect();
        Err(format!(
            "unknown label `{name}`, expected one of {}",
            valid.join(", ")
        ))
    }
}

/// What one finished request looked like: everything a label value is read from.
#[derive(Debug)]
pub struct Observed<'a> {
    /// `source` or `destination`.
    pub reporter: &'a str,
    /// The source workload.
    pub source: &'a Identity,
    /// The destination workload.
    pub destination: &'a Identity,
    /// Route name.
    pub route: &'a str,
    /// Request protocol.
    pub protocol: &'a str,
    /// Response code as text.
    pub code: &'a str,
    /// gRPC status as text, `-` for none.
    pub grpc: &'a str,
    /// Response flags, `-` for none.
    pub flags: &'a str,
}

impl Label {
    /// This label's value for a request.
    pub fn value<'a>(self, o: &Observed<'a>) -> &'a str {
        match self {
            Label::Reporter => o.reporter,
            Label::Source(f) => f.of(o.source),
            Label::Destination(f) => f.of(o.destination),
            Label::Route => o.route,
            Label::RequestProtocol => o.protocol,
            Label::ResponseCode => o.code,
            Label::GrpcStatus => o.grpc,
            Label::ResponseFlags => o.flags,
        }
    }
}
