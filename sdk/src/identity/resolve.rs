//! Resolving this sidecar's own identity, field by field: the filter configuration first, then
//! the VM's environment variables, then Envoy's node.

use super::{cut, Identity, FIELDS, MAX_FIELD_LEN};
use crate::host::Host;
use crate::properties;

/// Identity fields set in a filter's configuration (each optional), the first source consulted.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    /// Service name.
    #[serde(default)]
    pub service: Option<String>,
    /// Version.
    #[serde(default)]
    pub version: Option<String>,
    /// Instance.
    #[serde(default)]
    pub instance: Option<String>,
    /// Namespace.
    #[serde(default)]
    pub namespace: Option<String>,
    /// Region.
    #[serde(default)]
    pub region: Option<String>,
    /// Zone.
    #[serde(default)]
    pub zone: Option<String>,
}

impl IdentityConfig {
    fn get(&self, field: &str) -> Option<&str> {
        let v = match field {
            "service" => &self.service,
            "version" => &self.version,
            "instance" => &self.instance,
            "namespace" => &self.namespace,
            "region" => &self.region,
            "zone" => &self.zone,
            _ => &None,
        };
        v.as_deref()
    }

    /// Checks every set field: not empty, at most [`MAX_FIELD_LEN`] bytes, no control characters.
    /// Errors name the field under `path` (`identity.service`).
    pub fn validate(&self, path: &str) -> Result<(), crate::config::ConfigError> {
        for field in FIELDS {
            if let Some(v) = self.get(field) {
                let p = format!("{path}.{field}");
                crate::config::check::non_empty(v, p.as_str())?;
                crate::config::check::ensure(
                    v.len() <= MAX_FIELD_LEN && !v.chars().any(char::is_control),
                    p,
                    &format!("at most {MAX_FIELD_LEN} bytes without control characters"),
                )?;
            }
        }
        Ok(())
    }
}

/// The environment variable read for each identity field (second source).
pub const ENV_VARS: [(&str, &str); 6] = [
    ("service", "MESH_SERVICE"),
    ("version", "MESH_VERSION"),
    ("instance", "MESH_INSTANCE"),
    ("namespace", "MESH_NAMESPACE"),
    ("region", "MESH_REGION"),
    ("zone", "MESH_ZONE"),
];

/// What Envoy's node says (third source): `xds.node.id`, `xds.node.cluster`,
/// `xds.node.locality.region|zone` and the node metadata keys in [`NODE_METADATA_KEYS`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeInfo {
    /// `xds.node.id`.
    pub id: Option<String>,
    /// `xds.node.cluster`.
    pub cluster: Option<String>,
    /// `xds.node.locality.region`.
    pub region: Option<String>,
    /// `xds.node.locality.zone`.
    pub zone: Option<String>,
    /// Node metadata string values, by key.
    pub metadata: Vec<(String, String)>,
}

/// The node metadata key read for each identity field, before the node's own fields.
pub const NODE_METADATA_KEYS: [(&str, &str); 4] = [
    ("service", "SERVICE"),
    ("version", "VERSION"),
    ("instance", "INSTANCE"),
    ("namespace", "NAMESPACE"),
];

impl NodeInfo {
    /// Reads the node's attributes from the host (once per configuration, not per request).
    pub fn from_host(host: &dyn Host) -> NodeInfo {
        NodeInfo {
            id: properties::xds_node_id(host),
            cluster: properties::xds_node_cluster(host),
            region: properties::xds_node_region(host),
            zone: properties::xds_node_zone(host),
            metadata: NODE_METADATA_KEYS
                .iter()
                .filter_map(|(_, key)| {
                    properties::xds_node_metadata(host, key).map(|v| (key.to_string(), v))
                })
                .collect(),
        }
    }

    fn meta(&self, key: &str) -> Option<&str> {
        self.metadata
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The node's value for an identity field: the metadata key first, then the node field.
    pub fn get(&self, field: &str) -> Option<&str> {
        let from_meta = NODE_METADATA_KEYS
            .iter()
            .find(|(f, _)| *f == field)
            .and_then(|(_, key)| self.meta(key));
        from_meta.or(match field {
            "service" => self.cluster.as_deref(),
            "instance" => self.id.as_deref(),
            "region" => self.region.as_deref(),
            "zone" => self.zone.as_deref(),
            _ => None,
        })
    }
}

/// Where a resolved identity field came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The filter configuration.
    Config,
    /// A VM environment variable ([`ENV_VARS`]).
    Env,
    /// Envoy's node.
    Node,
    /// Nowhere: the field is unknown.
    Unknown,
}

/// Resolves the local identity field by field: `config`, then `env` (a lookup of the VM's
/// environment variables, [`ENV_VARS`]), then `node`. Empty values count as absent, values are
/// trimmed and cut to [`MAX_FIELD_LEN`] bytes. Returns the identity and each field's origin.
pub fn resolve(
    config: &IdentityConfig,
    env: &dyn Fn(&str) -> Option<String>,
    node: &NodeInfo,
) -> (Identity, [(&'static str, Origin); 6]) {
    let mut id = Identity::default();
    let mut origins = [("", Origin::Unknown); 6];
    for (i, field) in FIELDS.iter().enumerate() {
        let env_name = ENV_VARS
            .iter()
            .find(|(f, _)| f == field)
            .map(|(_, n)| *n)
            .unwrap_or_default();
        let clean = |v: &str| {
            let v = v.trim();
            (!v.is_empty()).then(|| cut(v, MAX_FIELD_LEN).to_string())
        };
        let (value, origin) = if let Some(v) = config.get(field).and_then(clean) {
            (v, Origin::Config)
        } else if let Some(v) = env(env_name).as_deref().and_then(clean) {
            (v, Origin::Env)
        } else if let Some(v) = node.get(field).and_then(clean) {
            (v, Origin::Node)
        } else {
            (String::new(), Origin::Unknown)
        };
        match *field {
            "service" => id.service = value,
            "version" => id.version = value,
            "instance" => id.instance = value,
            "namespace" => id.namespace = value,
            "region" => id.region = value,
            _ => id.zone = value,
        }
        if let Some(slot) = origins.get_mut(i) {
            *slot = (field, origin);
        }
    }
    (id, origins)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::identity::UNKNOWN;

    #[test]
    fn resolution_order_is_config_env_node() {
        let config = IdentityConfig {
            service: Some("from-config".into()),
            version: Some("  ".into()), // blank counts as absent
            ..IdentityConfig::default()
        };
        let env = |name: &str| match name {
            "MESH_VERSION" => Some("v-env".to_string()),
            "MESH_SERVICE" => Some("from-env".to_string()),
            "MESH_REGION" => Some(String::new()),
            _ => None,
        };
        let node = NodeInfo {
            id: Some("node-1".into()),
            cluster: Some("node-cluster".into()),
            region: Some("eu-west-1".into()),
            zone: None,
            metadata: vec![("NAMESPACE".into(), "shop".into())],
        };
        let (id, origins) = resolve(&config, &env, &node);
        assert_eq!(id.service, "from-config");
        assert_eq!(id.version, "v-env");
        assert_eq!(id.instance, "node-1");
        assert_eq!(id.namespace, "shop");
        assert_eq!(id.region, "eu-west-1");
        assert_eq!(id.zone, "");
        assert_eq!(id.field("zone"), UNKNOWN);
        assert_eq!(
            origins,
            [
                ("service", Origin::Config),
                ("version", Origin::Env),
                ("instance", Origin::Node),
                ("namespace", Origin::Node),
                ("region", Origin::Node),
                ("zone", Origin::Unknown),
            ]
        );
        // Node metadata beats the node's own fields; the node cluster is the last resort.
        let node = NodeInfo {
            metadata: vec![("SERVICE".into(), "meta-svc".into())],
            ..node
        };
        let (id, _) = resolve(&IdentityConfig::default(), &|_| None, &node);
        assert_eq!(id.service, "meta-svc");
        let (id, _) = resolve(&IdentityConfig::default(), &|_| None, &NodeInfo::default());
        assert_eq!(id, Identity::unknown());
    }

    #[test]
    fn node_info_from_the_test_host() {
        let h = crate::testing::TestHost::new();
        h.set_vm_property("xds.node.id", "sidecar-a");
        h.set_vm_property("xds.node.cluster", "frontend");
        h.set_vm_property("xds.node.locality.region", "eu-west-1");
        h.set_vm_property("xds.node.metadata.VERSION", "v3");
        let node = NodeInfo::from_host(&h);
        assert_eq!(node.get("service"), Some("frontend"));
        assert_eq!(node.get("version"), Some("v3"));
        assert_eq!(node.get("instance"), Some("sidecar-a"));
        assert_eq!(node.get("zone"), None);
    }

    #[test]
    fn config_validation_names_the_field() {
        let c = IdentityConfig {
            zone: Some(String::new()),
            ..IdentityConfig::default()
        };
        assert_eq!(
            c.validate("identity").unwrap_err().to_string(),
            "identity.zone: must not be empty"
        );
        let c = IdentityConfig {
            service: Some("x".repeat(200)),
            ..IdentityConfig::default()
        };
        assert!(c.validate("identity").is_err());
    }
}
