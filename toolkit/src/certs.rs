//! Certificates for mutual TLS between sidecars: a mesh CA and per-workload certificates whose
//! URI SAN is the workload's SPIFFE ID (`spiffe://<trust-domain>/ns/<namespace>/sa/<service>`),
//! written as PEM files and as the SDS resource files Envoy watches, so a new certificate
//! applies with no restart (`cargo xtask certs`, the demo and the tests all make them here).
//!
//! A workload's directory holds:
//!
//! | file | what |
//! |---|---|
//! | `workload-cert.yaml` | SDS resource: `Secret` `workload`, its certificate chain and key |
//! | `mesh-ca.yaml` | SDS resource: `Secret` `mesh_ca`, the trusted CA bundle (validation context) |
//! | `cert.pem`, `key.pem`, `ca.pem` | the same in PEM, for people and other tools |
//!
//! The sidecars' `sds_config` reads the two YAML files with `path_config_source` and a
//! `watched_directory` on the workload's directory. Each file is written to a temporary name in
//! that directory and renamed over the old one: Envoy sees one atomic move and reads a
//! certificate and its key together (they sit inline in the one file), never one without the
//! other.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber,
};
use ring::rand::SecureRandom as _;

/// The trust domain of the shipped configs, the demo and the tests (Istio's default too).
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

/// The name of the SDS secret holding a workload's certificate and key.
pub const WORKLOAD_SECRET: &str = "workload";
/// The name of the SDS secret holding the trusted CA bundle.
pub const CA_SECRET: &str = "mesh_ca";
/// The SDS file of [`WORKLOAD_SECRET`] in a workload's directory.
pub const WORKLOAD_SDS_FILE: &str = "workload-cert.yaml";
/// The SDS file of [`CA_SECRET`] in a workload's directory.
pub const CA_SDS_FILE: &str = "mesh-ca.yaml";

/// How long a workload certificate is valid by default: a day, like Istio's.
pub const DEFAULT_WORKLOAD_VALIDITY: Duration = Duration::from_secs(24 * 3600);
/// How long a mesh CA is valid: ten years.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How far back a certificate's validity starts, for clocks a little behind ours.
const BACKDATE: Duration = Duration::from_secs(300);

/// A workload's identity: its SPIFFE ID is `spiffe://<trust_domain>/ns/<namespace>/sa/<service>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The trust domain, e.g. `cluster.local`.
    pub trust_domain: String,
    /// The namespace, e.g. `shop`.
    pub namespace: String,
    /// The service (Kubernetes service account), e.g. `orders`.
    pub service: String,
}

impl Identity {
    /// An identity in [`DEFAULT_TRUST_DOMAIN`]; each part must be a non-empty run of letters,
    /// digits, `-`, `_` and `.` (the trust domain lowercase), or it is an error naming it.
    pub fn new(namespace: &str, service: &str) -> Result<Identity, String> {
        Identity::in_domain(DEFAULT_TRUST_DOMAIN, namespace, service)
    }

    /// An identity in another trust domain; the parts are checked as in [`Identity::new`].
    pub fn in_domain(
        trust_domain: &str,
        namespace: &str,
        service: &str,
    ) -> Result<Identity, String> {
        check_part("trust domain", trust_domain)?;
        if trust_domain.chars().any(|c| c.is_ascii_uppercase()) {
            return Err(format!("trust domain {trust_domain:?} must be lowercase"));
        }
        check_part("namespace", namespace)?;
        check_part("service", service)?;
        Ok(Identity {
            trust_domain: trust_domain.to_string(),
            namespace: namespace.to_string(),
            service: service.to_string(),
        })
    }

    /// `spiffe://<trust_domain>/ns/<namespace>/sa/<service>`.
    pub fn spiffe_id(&self) -> String {
        format!(
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service
        )
    }
}

fn check_part(what: &str, value: &str) -> Result<(), String> {
    let ok = !value.is_empty()
        && value.len() <= 63
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{what} {value:?} must be 1 to 63 letters, digits, '-', '_' or '.'"
        ))
    }
}

/// A mesh certificate authority: signs workload certificates.
pub struct MeshCa {
    name: String,
    key: KeyPair,
    cert_der: Vec<u8>,
}

impl std::fmt::Debug for MeshCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshCa").field("name", &self.name).finish()
    }
}

impl MeshCa {
    /// A new self-signed CA (ECDSA P-256) whose subject is `CN=<name>`.
    pub fn generate(name: &str) -> Result<MeshCa, String> {
        let key = KeyPair::generate().map_err(|e| format!("CA key: {e}"))?;
        let mut params = ca_params(name);
        set_validity(&mut params, CA_VALIDITY);
        params.serial_number = Some(random_serial()?);
        let cert = params
            .self_signed(&key)
            .map_err(|e| format!("CA certificate: {e}"))?;
        Ok(MeshCa {
            name: name.to_string(),
            key,
            cert_der: cert.der().to_vec(),
        })
    }

    /// The CA in `dir` (`ca.pem`, `ca-key.pem`, `ca-name.txt` as [`MeshCa::write`] left them),
    /// or a new one named `name` written there when `dir` holds none.
    pub fn load_or_create(dir: &Path, name: &str) -> Result<MeshCa, String> {
        let cert_path = dir.join("ca.pem");
        if !cert_path.exists() {
            let ca = MeshCa::generate(name)?;
            ca.write(dir)?;
            return Ok(ca);
        }
        let cert_der = pem_decode(&read(&cert_path)?, "CERTIFICATE")
            .map_err(|e| format!("{}: {e}", cert_path.display()))?;
        let key_path = dir.join("ca-key.pem");
        let key_der = pem_decode(&read(&key_path)?, "PRIVATE KEY")
            .map_err(|e| format!("{}: {e}", key_path.display()))?;
        let key = KeyPair::try_from(key_der.as_slice())
            .map_err(|e| format!("{}: {e}", key_path.display()))?;
        let name = read(&dir.join("ca-name.txt"))?.trim().to_string();
        Ok(MeshCa {
            name,
            key,
            cert_der,
        })
    }

    /// Writes `ca.pem`, `ca-key.pem` (mode 0600) and `ca-name.txt` into `dir`.
    pub fn write(&self, dir: &Path) -> Result<(), String> {
        fs::create_dir_all(dir).map_err(|e| format!("could not create {}: {e}", dir.display()))?;
        write_atomic(&dir.join("ca.pem"), &self.cert_pem(), false)?;
        write_atomic(
            &dir.join("ca-key.pem"),
            &pem_encode("PRIVATE KEY", self.key.serialized_der()),
            true,
        )?;
        write_atomic(&dir.join("ca-name.txt"), &format!("{}\n", self.name), false)
    }

    /// The CA's certificate in PEM.
    pub fn cert_pem(&self) -> String {
        pem_encode("CERTIFICATE", &self.cert_der)
    }

    /// Issues a certificate for `identity`, valid for `validity` (from five minutes ago): URI
    /// SAN the SPIFFE ID, subject `CN=<service>.<namespace>`, for TLS servers and clients, a
    /// fresh ECDSA P-256 key and a random serial.
    pub fn issue(&self, identity: &Identity, validity: Duration) -> Result<WorkloadCert, String> {
        let spiffe_id = identity.spiffe_id();
        let key = KeyPair::generate().map_err(|e| format!("key for {spiffe_id}: {e}"))?;
        let mut params = CertificateParams::default();
        params.distinguished_name.push(
            DnType::CommonName,
            format!("{}.{}", identity.service, identity.namespace),
        );
        let uri = spiffe_id
            .as_str()
            .try_into()
            .map_err(|e| format!("{spiffe_id}: {e}"))?;
        params.subject_alt_names = vec![SanType::URI(uri)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        set_validity(&mut params, validity);
        let serial = random_serial()?;
        let serial_hex = hex(&serial.to_bytes());
        params.serial_number = Some(serial);
        let issuer = Issuer::new(ca_params(&self.name), &self.key);
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(|e| format!("certificate for {spiffe_id}: {e}"))?;
        Ok(WorkloadCert {
            identity: identity.clone(),
            serial_hex,
            cert_der: cert.der().to_vec(),
            chain_pem: pem_encode("CERTIFICATE", cert.der()),
            key_pem: pem_encode("PRIVATE KEY", key.serialized_der()),
        })
    }
}

/// The parameters that identify a CA as an issuer (its subject and key usages).
fn ca_params(name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

fn set_validity(params: &mut CertificateParams, validity: Duration) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + validity;
}

/// 16 random bytes, positive and with a non-zero first nibble (so its hex has no leading zero,
/// the form Envoy's admin `/certs` prints).
fn random_serial() -> Result<SerialNumber, String> {
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| "no random bytes for a serial number".to_string())?;
    bytes[0] = (bytes[0] & 0x3f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

/// A workload's certificate and key, as issued by [`MeshCa::issue`].
#[derive(Clone)]
pub struct WorkloadCert {
    /// Whose certificate it is.
    pub identity: Identity,
    /// The serial number in lowercase hex, as Envoy's admin `/certs` shows it.
    pub serial_hex: String,
    cert_der: Vec<u8>,
    chain_pem: String,
    key_pem: String,
}

impl std::fmt::Debug for WorkloadCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkloadCert")
            .field("identity", &self.identity.spiffe_id())
            .field("serial_hex", &self.serial_hex)
            .finish()
    }
}

impl WorkloadCert {
    /// The certificate in DER (what Envoy's `Hash=` in `x-forwarded-client-cert` digests).
    pub fn der(&self) -> &[u8] {
        &self.cert_der
    }

    /// The certificate in PEM.
    pub fn cert_pem(&self) -> &str {
        &self.chain_pem
    }

    /// The private key in PEM (PKCS#8).
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }
}

/// Writes a workload's directory (see the module docs): its certificate and key, and the CA
/// bundle it trusts (`trusted`: the mesh CA; two during a CA rotation). Calling it again with a
/// new certificate is a rotation: Envoy picks the new files up while traffic flows.
pub fn write_workload(dir: &Path, cert: &WorkloadCert, trusted: &[&MeshCa]) -> Result<(), String> {
    if trusted.is_empty() {
        return Err("a workload must trust at least one CA".to_string());
    }
    fs::create_dir_all(dir).map_err(|e| format!("could not create {}: {e}", dir.display()))?;
    let bundle: String = trusted.iter().map(|ca| ca.cert_pem()).collect();
    write_atomic(&dir.join("cert.pem"), cert.cert_pem(), false)?;
    write_atomic(&dir.join("key.pem"), cert.key_pem(), true)?;
    write_atomic(&dir.join("ca.pem"), &bundle, false)?;
    write_atomic(&dir.join(CA_SDS_FILE), &ca_sds_yaml(&bundle), false)?;
    write_atomic(
        &dir.join(WORKLOAD_SDS_FILE),
        &workload_sds_yaml(cert.cert_pem(), cert.key_pem()),
        true,
    )
}

/// The SDS resource file of [`WORKLOAD_SECRET`].
pub fn workload_sds_yaml(chain_pem: &str, key_pem: &str) -> String {
    format!(
        "# SDS resource: this workload's certificate (written by meshwasm's certs tooling).\n\
         resources:\n\
         - \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret\n  \
         name: {WORKLOAD_SECRET}\n  \
         tls_certificate:\n    \
         certificate_chain:\n      \
         inline_string: |\n{}    \
         private_key:\n      \
         inline_string: |\n{}",
        indent(chain_pem, 8),
        indent(key_pem, 8)
    )
}

/// The SDS resource file of [`CA_SECRET`].
pub fn ca_sds_yaml(bundle_pem: &str) -> String {
    format!(
        "# SDS resource: the CAs this workload trusts (written by meshwasm's certs tooling).\n\
         resources:\n\
         - \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret\n  \
         name: {CA_SECRET}\n  \
         validation_context:\n    \
         trusted_ca:\n      \
         inline_string: |\n{}",
        indent(bundle_pem, 8)
    )
}

fn indent(text: &str, spaces: usize) -> String {
    let pad = " ".repeat(spaces);
    text.lines().fold(String::new(), |mut out, line| {
        let _ = writeln!(out, "{pad}{line}");
        out
    })
}

/// Writes `contents` to a temporary file next to `path` and renames it over `path`: readers
/// (Envoy's directory watch) see the old file or the new one, never half of one.
fn write_atomic(path: &Path, contents: &str, private: bool) -> Result<(), String> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp: PathBuf = dir.join(format!(".{file_name}.tmp"));
    fs::write(&tmp, contents).map_err(|e| format!("could not write {}: {e}", tmp.display()))?;
    if private {
        use std::os::unix::fs::PermissionsExt as _;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600))
            .map_err(|e| format!("could not restrict {}: {e}", tmp.display()))?;
    }
    fs::rename(&tmp, path).map_err(|e| {
        format!(
            "could not rename {} to {}: {e}",
            tmp.display(),
            path.display()
        )
    })
}

fn read(path: &Path) -> Result<String, String> {
    fs::read_to_string(path).map_err(|e| format!("could not read {}: {e}", path.display()))
}

/// PEM: a `-----BEGIN <label>-----` line, base64 in lines of 64, the `END` line.
pub fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    let _ = writeln!(out, "-----END {label}-----");
    out
}

/// The DER of the first `label` block of `pem`.
pub fn pem_decode(pem: &str, label: &str) -> Result<Vec<u8>, String> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = pem.find(&begin).ok_or_else(|| format!("no {begin} line"))? + begin.len();
    let stop = pem[start..]
        .find(&end)
        .ok_or_else(|| format!("no {end} line"))?
        + start;
    let b64: String = pem[start..stop]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| format!("bad base64 in the {label} block: {e}"))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

/// Makes a mesh for `services` under `dir`: the CA in `dir/ca` (kept when present, so
/// workloads made later still chain to it) and each service's workload directory
/// `dir/<service>` with a new certificate. Returns the CA and the certificates, in order.
pub fn make_mesh(
    dir: &Path,
    trust_domain: &str,
    namespace: &str,
    services: &[&str],
    validity: Duration,
) -> Result<(MeshCa, Vec<WorkloadCert>), String> {
    let ca = MeshCa::load_or_create(
        &dir.join("ca"),
        &format!("meshwasm mesh CA ({trust_domain})"),
    )?;
    let mut certs = Vec::new();
    for service in services {
        let identity = Identity::in_domain(trust_domain, namespace, service)?;
        let cert = ca.issue(&identity, validity)?;
        write_workload(&dir.join(service), &cert, &[&ca])?;
        certs.push(cert);
    }
    Ok((ca, certs))
}

/// A mesh of one workload, `service` in `namespace` of [`DEFAULT_TRUST_DOMAIN`], valid
/// [`DEFAULT_WORKLOAD_VALIDITY`], under `dir`: returns its workload directory (a `CERTS_DIR`).
pub fn one_workload(dir: &Path, namespace: &str, service: &str) -> Result<PathBuf, String> {
    make_mesh(
        dir,
        DEFAULT_TRUST_DOMAIN,
        namespace,
        &[service],
        DEFAULT_WORKLOAD_VALIDITY,
    )?;
    Ok(dir.join(service))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("meshwasm-certs-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn spiffe_ids_are_checked_and_formatted() {
        let id = Identity::new("shop", "orders").unwrap();
        assert_eq!(id.spiffe_id(), "spiffe://cluster.local/ns/shop/sa/orders");
        assert!(Identity::new("shop", "").unwrap_err().contains("service"));
        assert!(Identity::new("a/b", "x").unwrap_err().contains("namespace"));
        assert!(Identity::in_domain("Mesh", "a", "b")
            .unwrap_err()
            .contains("lowercase"));
    }

    #[test]
    fn pem_round_trips() {
        let der: Vec<u8> = (0..=255u8).cycle().take(700).collect();
        let pem = pem_encode("CERTIFICATE", &der);
        assert!(pem.lines().all(|l| l.len() <= 64));
        assert_eq!(pem_decode(&pem, "CERTIFICATE").unwrap(), der);
        assert!(pem_decode(&pem, "PRIVATE KEY").is_err());
    }

    #[test]
    fn issued_certificates_carry_the_spiffe_id_and_differ_per_issue() {
        let ca = MeshCa::generate("test CA").unwrap();
        let id = Identity::new("shop", "orders").unwrap();
        let a = ca.issue(&id, DEFAULT_WORKLOAD_VALIDITY).unwrap();
        let b = ca.issue(&id, DEFAULT_WORKLOAD_VALIDITY).unwrap();
        let needle = b"spiffe://cluster.local/ns/shop/sa/orders";
        assert!(a.der().windows(needle.len()).any(|w| w == needle));
        assert_ne!(a.serial_hex, b.serial_hex);
        assert_eq!(a.serial_hex.len(), 32);
        assert!(!a.serial_hex.starts_with('0'));
        assert_ne!(a.key_pem(), b.key_pem());
    }

    #[test]
    fn workload_directories_hold_sds_files_and_the_ca_survives_reloads() {
        let dir = temp_dir("mesh");
        let (ca, certs) = make_mesh(
            &dir,
            DEFAULT_TRUST_DOMAIN,
            "demo",
            &["orders", "inventory"],
            DEFAULT_WORKLOAD_VALIDITY,
        )
        .unwrap();
        assert_eq!(certs.len(), 2);
        let sds = fs::read_to_string(dir.join("orders").join(WORKLOAD_SDS_FILE)).unwrap();
        assert!(sds.contains("name: workload"), "{sds}");
        assert!(
            sds.contains(certs[0].cert_pem().lines().nth(1).unwrap()),
            "{sds}"
        );
        let ca_sds = fs::read_to_string(dir.join("inventory").join(CA_SDS_FILE)).unwrap();
        assert!(ca_sds.contains("name: mesh_ca"));
        assert!(ca_sds.contains(ca.cert_pem().lines().nth(1).unwrap()));
        // A second run keeps the CA and issues new certificates under it.
        let (again, later) = make_mesh(
            &dir,
            DEFAULT_TRUST_DOMAIN,
            "demo",
            &["orders"],
            DEFAULT_WORKLOAD_VALIDITY,
        )
        .unwrap();
        assert_eq!(again.cert_pem(), ca.cert_pem());
        assert_ne!(later[0].serial_hex, certs[0].serial_hex);
        use std::os::unix::fs::PermissionsExt as _;
        let mode = fs::metadata(dir.join("ca").join("ca-key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(write_workload(&dir.join("x"), &later[0], &[]).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }
}
