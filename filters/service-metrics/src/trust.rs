//! Whom to believe about the peer: the verified certificate of the connection first (its SPIFFE
//! ID names the peer's namespace and service), the peer header only for what a certificate does
//! not carry (version, instance, region, zone), and only when it names the same service. Without
//! a certificate, a header is believed only as `peer_trust` allows.

use std::rc::Rc;

use meshwasm::identity::{Identity, KeyRing, PeerError, SigningKey};
use meshwasm::prelude::*;

use crate::{Peer, ServiceMetrics};

/// Attribute of the downstream connection's verified peer certificate (first URI SAN).
pub const DOWNSTREAM_PEER_URI: &str = "connection.uri_san_peer_certificate";
/// Attribute of the upstream connection's verified peer certificate (first URI SAN).
pub const UPSTREAM_PEER_URI: &str = "upstream.uri_san_peer_certificate";

/// What the filter believes about a peer that has no verified certificate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PeerTrust {
    /// Mutual TLS: the certificate says who the peer is. Without one, a header is believed only
    /// when signed with the configured key; else the peer is `unknown` (`no_certificate`).
    #[default]
    Certificate,
    /// Signed headers where there is no certificate (a key is required).
    SignedHeader,
    /// Unsigned headers where there is no certificate: anyone on the network can claim to be
    /// any service. Only where the network itself is trusted, and only when asked for.
    UnsignedHeader,
}

impl PeerTrust {
    /// The value as written in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            PeerTrust::Certificate => "certificate",
            PeerTrust::SignedHeader => "signed_header",
            PeerTrust::UnsignedHeader => "unsigned_header",
        }
    }
}

/// How to say to an operator what their choices are, in configuration errors.
pub const HOW_TO_TRUST: &str = "peers are trusted on their mutual-TLS certificate \
     (\"peer_trust\":\"certificate\", the default; see envoy-configs/README.md), on a header \
     signed with a shared key (\"peer_trust\":\"signed_header\" with \"signing_keys\"), or, only \
     on a network you trust, on an unsigned header (\"peer_trust\":\"unsigned_header\")";

/// Why an inline `signing_key` is refused, and what to write instead.
pub const INLINE_KEY_REFUSED: &str = "a key inline in the configuration is refused (any reader \
     of /config_dump would see it): put the key in an environment variable of the Envoy host and \
     name it, \"signing_keys\":[{\"id\":\"k1\",\"env\":\"MESH_SIGNING_KEY\"}], with the variable \
     in vm_config.environment_variables.host_env_keys (on Kubernetes, set it from a Secret with \
     secretKeyRef; in tests, environment_variables.key_values); see \
     filters/service-metrics/README.md";

/// Where a mesh key comes from: an environment variable of the Envoy host, passed to the VM with
/// `vm_config.environment_variables.host_env_keys` (a wasm VM reads no host files; on
/// Kubernetes, set the variable from a Secret).
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySource {
    /// The key's id, sent in signed headers (`k`): `[a-z0-9-_.]`, at most 32 bytes.
    pub id: String,
    /// The environment variable holding the key (`hex:...` or `base64:...`, 16 to 64 bytes).
    pub env: String,
}

/// The key ring of a configuration: `signing_keys` read from the environment (the first signs).
/// A missing variable, a bad key or id is an error naming the field.
pub fn key_ring(
    sources: &[KeySource],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<KeyRing, ConfigError> {
    if sources.len() > 2 {
        return Err(ConfigError::new(
            "signing_keys",
            "at most 2 keys: the one that signs and the one being rotated out",
        ));
    }
    let mut keys = Vec::new();
    for (i, source) in sources.iter().enumerate() {
        if source.id.is_empty() {
            return Err(ConfigError::new(
                format!("signing_keys[{i}].id"),
                "a key id is required (1 to 32 of a-z 0-9 - _ .)",
            ));
        }
        let path = format!("signing_keys[{i}].env");
        let text = env(&source.env)
            .filter(|v| !v.trim().is_empty())
            .ok_or_else(|| {
                ConfigError::new(
                    path.as_str(),
                    format!(
                        "{} is not set in the VM's environment: add it to \
                         vm_config.environment_variables.host_env_keys and set it on the Envoy \
                         host",
                        source.env
                    ),
                )
            })?;
        let key = SigningKey::parse(text.trim()).map_err(|e| ConfigError::new(path.as_str(), e))?;
        keys.push((source.id.clone(), key));
    }
    KeyRing::new(keys).map_err(|e| ConfigError::new("signing_keys", e))
}

/// A SPIFFE ID of the form `spiffe://<trust-domain>/ns/<namespace>/sa/<service>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpiffeId<'a> {
    /// The trust domain.
    pub trust_domain: &'a str,
    /// The namespace.
    pub namespace: &'a str,
    /// The service (service account).
    pub service: &'a str,
}

/// Parses a SPIFFE ID of the Kubernetes form; anything else (another path, an empty or
/// oversized part, characters outside `A-Z a-z 0-9 - _ .`) is `None`.
pub fn parse_spiffe(uri: &str) -> Option<SpiffeId<'_>> {
    let rest = uri.strip_prefix("spiffe://")?;
    let mut parts = rest.split('/');
    let (trust_domain, ns_tag, namespace, sa_tag, service) = (
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
    );
    let ok = |s: &str| {
        !s.is_empty()
            && s.len() <= meshwasm::identity::MAX_FIELD_LEN
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    };
    (parts.next().is_none()
        && ns_tag == "ns"
        && sa_tag == "sa"
        && ok(trust_domain)
        && ok(namespace)
        && ok(service))
    .then_some(SpiffeId {
        trust_domain,
        namespace,
        service,
    })
}

/// The certificate's word against the header's: the outcome and, when something was not
/// believed, the reason to count.
pub fn with_certificate(
    cert: &SpiffeId<'_>,
    header: Option<Result<Rc<Identity>, PeerError>>,
) -> (Peer, Option<PeerError>) {
    let from_cert = || Identity {
        service: cert.service.to_string(),
        namespace: cert.namespace.to_string(),
        ..Identity::default()
    };
    match header {
        None => (Peer::Known(Rc::new(from_cert())), None),
        // A header we cannot believe adds nothing; the certificate still names the peer.
        Some(Err(e)) => (Peer::Known(Rc::new(from_cert())), Some(e)),
        Some(Ok(claimed)) => {
            let same_namespace =
                claimed.namespace.is_empty() || claimed.namespace == cert.namespace;
            if claimed.service == cert.service && same_namespace {
                let mut id = (*claimed).clone();
                id.namespace = cert.namespace.to_string();
                (Peer::Known(Rc::new(id)), None)
            } else {
                // A workload claiming to be another: counted as forged, labeled as itself.
                (Peer::Known(Rc::new(from_cert())), Some(PeerError::Forged))
            }
        }
    }
}

impl ServiceMetrics {
    /// The peer's verified certificate URI on the side `map` came from (request headers: the
    /// downstream connection; response headers: the upstream one), when there is one.
    fn peer_certificate_uri(&self, host: &dyn Host, map: MapKind) -> Option<String> {
        let path = match map {
            MapKind::RequestHeaders | MapKind::RequestTrailers => DOWNSTREAM_PEER_URI,
            _ => UPSTREAM_PEER_URI,
        };
        properties::string(host, path).filter(|uri| !uri.is_empty())
    }

    /// The audience of our identity header on this request (the upstream cluster, named after
    /// its service), or `None` when the cluster is not one of `mesh_clusters` and gets no header.
    /// The cluster is read only when a list or a signature needs it.
    pub(crate) fn mesh_upstream(&self, host: &dyn Host) -> Option<String> {
        match &self.mesh_clusters {
            None if self.keys.is_empty() => Some(String::new()),
            None => Some(properties::xds_cluster_name(host).unwrap_or_default()),
            Some(list) => properties::xds_cluster_name(host).filter(|c| list.contains(c)),
        }
    }

    /// Decides who the peer is from the connection's certificate and the header `value` (already
    /// removed from the message by the caller), counting whatever was not believed.
    pub(crate) fn decide_peer(&self, host: &dyn Host, map: MapKind, value: Option<&[u8]>) -> Peer {
        let uri = self.peer_certificate_uri(host, map);
        let (peer, reason) = match uri.as_deref().map(parse_spiffe) {
            Some(Some(cert)) => {
                let header = value.map(|v| match self.check(host, map, v) {
                    Peer::Known(id) => Ok(id),
                    Peer::Rejected(e) => Err(e),
                    Peer::Missing => Err(PeerError::Malformed),
                });
                match header {
                    // A relay (a front proxy) passes its caller's header on: believed as it is.
                    Some(Ok(id)) if self.relays.iter().any(|r| r == cert.service) => {
                        (Peer::Known(id), None)
                    }
                    header => with_certificate(&cert, header),
                }
            }
            // A certificate the mesh CA signed but whose URI is not a workload's SPIFFE ID.
            Some(None) => (
                Peer::Rejected(PeerError::BadCertificate),
                Some(PeerError::BadCertificate),
            ),
            None => match value {
                None => (Peer::Missing, None),
                Some(_) if self.trust == PeerTrust::Certificate && self.keys.is_empty() => (
                    Peer::Rejected(PeerError::NoCertificate),
                    Some(PeerError::NoCertificate),
                ),
                Some(v) => match self.check(host, map, v) {
                    Peer::Rejected(e) => (Peer::Rejected(e), Some(e)),
                    known => (known, None),
                },
            },
        };
        if let Some(reason) = reason {
            log::debug!("service_metrics: peer not believed: {reason}");
            self.rejected
                .inc(host, &[self.reporter.as_str(), reason.reason()]);
        }
        peer
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn spiffe_ids_of_workloads_parse_and_others_do_not() {
        assert_eq!(
            parse_spiffe("spiffe://cluster.local/ns/shop/sa/orders"),
            Some(SpiffeId {
                trust_domain: "cluster.local",
                namespace: "shop",
                service: "orders"
            })
        );
        for bad in [
            "",
            "spiffe://cluster.local",
            "spiffe://cluster.local/ns/shop",
            "spiffe://cluster.local/ns/shop/sa/",
            "spiffe://cluster.local/ns/shop/sa/orders/extra",
            "spiffe://cluster.local/namespace/shop/sa/orders",
            "spiffe://cluster.local/ns/shop/sa/or;ders",
            "https://cluster.local/ns/shop/sa/orders",
        ] {
            assert_eq!(parse_spiffe(bad), None, "{bad}");
        }
        let long = format!("spiffe://td/ns/shop/sa/{}", "a".repeat(200));
        assert_eq!(parse_spiffe(&long), None);
    }

    #[test]
    fn the_certificate_names_the_peer_and_a_header_adds_only_what_matches() {
        let cert = parse_spiffe("spiffe://cluster.local/ns/shop/sa/orders").unwrap();
        let claim = |service: &str, ns: &str| {
            Rc::new(Identity {
                service: service.into(),
                namespace: ns.into(),
                version: "v2".into(),
                ..Identity::default()
            })
        };
        let known = |p: &Peer| match p {
            Peer::Known(id) => (id.service.clone(), id.namespace.clone(), id.version.clone()),
            other => panic!("{other:?}"),
        };
        let (p, r) = with_certificate(&cert, None);
        assert_eq!(
            (known(&p), r),
            (("orders".into(), "shop".into(), "".into()), None)
        );
        let (p, r) = with_certificate(&cert, Some(Ok(claim("orders", ""))));
        assert_eq!(
            (known(&p), r),
            (("orders".into(), "shop".into(), "v2".into()), None)
        );
        let (p, r) = with_certificate(&cert, Some(Ok(claim("admin", "shop"))));
        assert_eq!(
            (known(&p), r),
            (
                ("orders".into(), "shop".into(), "".into()),
                Some(PeerError::Forged)
            )
        );
        let (p, r) = with_certificate(&cert, Some(Ok(claim("orders", "other"))));
        assert_eq!(r, Some(PeerError::Forged));
        assert_eq!(known(&p).1, "shop");
        let (p, r) = with_certificate(&cert, Some(Err(PeerError::Expired)));
        assert_eq!(
            (known(&p).0, r),
            ("orders".into(), Some(PeerError::Expired))
        );
    }
}
