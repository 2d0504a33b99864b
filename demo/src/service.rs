//! The demo's application: a small HTTP service (a [`toolkit::server::Server`]) that answers
//! `GET`s, optionally calls the next service through its sidecar's outbound listener (copying the
//! trace headers, as every app in a mesh must), and fails a configurable fraction of requests
//! with 503.

use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use toolkit::http;
use toolkit::server::{Reply, Request, Server};

/// The headers an app copies onto its calls (the toolkit's list).
pub use toolkit::TRACE_HEADERS;

/// How one service instance behaves.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// The service name, e.g. `orders`.
    pub name: String,
    /// The next service it calls for every request (`Host` header at its sidecar), if any.
    pub calls: Option<String>,
    /// Its sidecar's outbound listener port (where calls go), shared with whoever starts the
    /// sidecar: the app starts first and learns the port once its sidecar is up. While it is 0
    /// the app makes no call and answers 502.
    pub outbound_port: Arc<AtomicU16>,
    /// The fraction of requests answered 503 without doing anything, 0..=1.
    pub failure_rate: f64,
    /// Simulated work per request: a sleep between 0 and twice this long.
    pub work: Duration,
    /// Seeds the failure and work draws (distinct per instance).
    pub seed: u64,
}

impl ServiceConfig {
    /// Sets the sidecar's outbound listener port, where calls go from now on.
    pub fn set_outbound_port(&self, port: u16) {
        self.outbound_port.store(port, Ordering::SeqCst);
    }
}

/// Counters of one instance.
#[derive(Debug, Default)]
pub struct ServiceStats {
    /// Requests received.
    pub requests: AtomicU64,
    /// Requests failed on purpose (503).
    pub injected_failures: AtomicU64,
    /// Calls to the next service that did not succeed.
    pub failed_calls: AtomicU64,
}

/// A running service instance; stops when dropped.
pub struct Service {
    server: Server,
    stats: Arc<ServiceStats>,
    config: ServiceConfig,
}

impl Service {
    /// Starts the instance on a loopback port the kernel chose ([`Service::port`]).
    pub fn start(config: ServiceConfig) -> Result<Service, String> {
        let stats = Arc::new(ServiceStats::default());
        let (c, s) = (config.clone(), Arc::clone(&stats));
        let server = Server::start(&config.name, move |req| handle(&c, &s, req))?;
        Ok(Service {
            server,
            stats,
            config,
        })
    }

    /// The port the app listens on (its sidecar's `local_app`, `{{PORT_APP}}`).
    pub fn port(&self) -> u16 {
        self.server.port()
    }

    /// Its counters.
    pub fn stats(&self) -> &ServiceStats {
        &self.stats
    }

    /// Its configuration.
    pub fn config(&self) -> &ServiceConfig {
        &self.config
    }
}

/// A uniform draw in [0, 1) from a counter (splitmix64): no locks, reproducible per seed.
fn draw(seed: u64, n: u64) -> f64 {
    let mut z = seed.wrapping_add(n.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

fn handle(config: &ServiceConfig, stats: &ServiceStats, req: &Request) -> Reply {
    let n = stats.requests.fetch_add(1, Ordering::Relaxed);
    if draw(config.seed, 2 * n) < config.failure_rate {
        stats.injected_failures.fetch_add(1, Ordering::Relaxed);
        return Reply::new(503, format!("{}: injected failure\n", config.name));
    }
    let work = config.work.mul_f64(2.0 * draw(config.seed, 2 * n + 1));
    if !work.is_zero() {
        std::thread::sleep(work);
    }
    let query = req
        .path
        .split_once('?')
        .map(|(_, q)| format!("?{q}"))
        .unwrap_or_default();
    let Some(next) = &config.calls else {
        return Reply::new(200, format!("{}: ok\n", config.name));
    };
    let outbound = config.outbound_port.load(Ordering::SeqCst);
    if outbound == 0 {
        stats.failed_calls.fetch_add(1, Ordering::Relaxed);
        return Reply::new(
            502,
            format!("{}: calling {next}: no sidecar yet\n", config.name),
        );
    }
    let mut headers: Vec<(&str, &str)> = vec![("host", next.as_str())];
    for name in TRACE_HEADERS {
        if let Some(value) = req.header(name) {
            headers.push((name, value));
        }
    }
    let path = format!("/{next}{query}");
    match http::request(
        "GET",
        outbound,
        &path,
        &headers,
        b"",
        Duration::from_secs(10),
    ) {
        Ok(resp) if (200..300).contains(&resp.status) => {
            Reply::new(200, format!("{}: ok\n{}", config.name, resp.body))
        }
        // A dependency's failure is a 502 here: the caller's sidecar retries 503s from the
        // service that failed, not from every service above it.
        Ok(resp) => {
            stats.failed_calls.fetch_add(1, Ordering::Relaxed);
            Reply::new(
                502,
                format!("{}: {next} answered {}\n", config.name, resp.status),
            )
        }
        Err(e) => {
            stats.failed_calls.fetch_add(1, Ordering::Relaxed);
            Reply::new(502, format!("{}: calling {next}: {e}\n", config.name))
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn draws_are_uniform_enough() {
        let below: usize = (0..10_000).filter(|&n| draw(7, n) < 0.25).count();
        assert!((2_200..2_800).contains(&below), "{below}");
    }

    #[test]
    fn copies_trace_headers_to_the_next_service_and_maps_its_failure_to_502() {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let s = Arc::clone(&seen);
        let next = Server::start("next", move |req: &Request| {
            s.lock().unwrap().push(req.clone());
            Reply::new(if req.path.contains("fail") { 503 } else { 200 }, "n")
        })
        .unwrap();
        let svc = Service::start(ServiceConfig {
            name: "orders".into(),
            calls: Some("inventory".into()),
            outbound_port: Arc::default(),
            failure_rate: 0.0,
            work: Duration::ZERO,
            seed: 1,
        })
        .unwrap();
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let hdrs = [("host", "orders"), ("traceparent", tp), ("x-other", "no")];
        let get = |path: &str| http::http_get(svc.port(), path, &hdrs).unwrap();

        // No call before the app knows its sidecar's port.
        let early = get("/orders?id=0");
        assert_eq!(early.status, 502, "{}", early.body);
        assert!(seen.lock().unwrap().is_empty());

        svc.config().set_outbound_port(next.port());
        let ok = get("/orders?id=1");
        assert_eq!(ok.status, 200);
        assert_eq!(ok.body, "orders: ok\nn");
        let got = seen.lock().unwrap()[0].clone();
        assert_eq!(got.path, "/inventory?id=1");
        assert_eq!(got.header("host"), Some("inventory"));
        assert_eq!(got.header("traceparent"), Some(tp));
        assert_eq!(got.header("x-other"), None);
        assert_eq!(get("/x?fail").status, 502);
        assert_eq!(svc.stats().failed_calls.load(Ordering::Relaxed), 2);
        assert_eq!(svc.stats().requests.load(Ordering::Relaxed), 3);
    }
}
