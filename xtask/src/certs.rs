//! `cargo xtask certs`: a mesh CA and one certificate per workload, SPIFFE ID in the URI SAN,
//! written as the SDS files the sidecars watch (see `toolkit::certs`). Run again, it keeps the
//! CA and issues new workload certificates: a rotation, applied by running sidecars with no
//! restart.

use std::path::Path;
use std::time::Duration;

use crate::Result;

/// Makes (or rotates) the certificates of `services` under `out_dir` and says where they are.
pub fn main(
    out_dir: &Path,
    trust_domain: &str,
    namespace: &str,
    services: &[String],
    hours: u64,
) -> Result<()> {
    if services.is_empty() {
        return Err("name at least one service (--service orders --service inventory ...)".into());
    }
    if hours == 0 {
        return Err("--hours must be at least 1".into());
    }
    let names: Vec<&str> = services.iter().map(String::as_str).collect();
    let validity = Duration::from_secs(hours.saturating_mul(3600));
    let (_, certs) = toolkit::certs::make_mesh(out_dir, trust_domain, namespace, &names, validity)?;
    println!("mesh CA: {}", out_dir.join("ca").join("ca.pem").display());
    for cert in &certs {
        println!(
            "{:<50} serial {}  {}",
            cert.identity.spiffe_id(),
            cert.serial_hex,
            out_dir.join(&cert.identity.service).display()
        );
    }
    println!("point a sidecar's {{{{CERTS_DIR}}}} at its service's directory; run again to rotate");
    Ok(())
}
