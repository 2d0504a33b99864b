//! `mesh-service`: one demo service instance on its own, for running the mesh by hand:
//! `mesh-service --name orders --calls inventory --outbound 8000 [--failure-rate 0.2]
//! [--work-ms 1]` prints the loopback port it listens on and calls `--calls` through the
//! sidecar's outbound listener (`127.0.0.1:<outbound>`, `Host: <service>`), copying the trace
//! headers.

use std::process::ExitCode;
use std::sync::atomic::AtomicU16;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use meshwasm_demo::service::{Service, ServiceConfig};

/// One demo service instance on a loopback port the kernel chooses (printed at start).
#[derive(Debug, Parser)]
#[command(name = "mesh-service")]
struct Args {
    /// The service name, e.g. `orders`
    #[arg(long)]
    name: String,
    /// The next service it calls for every request (`Host` header at its sidecar)
    #[arg(long, value_name = "SERVICE")]
    calls: Option<String>,
    /// Its sidecar's outbound listener port, where calls go
    #[arg(long, value_name = "PORT", default_value_t = 8000)]
    outbound: u16,
    /// The fraction of requests answered 503, 0 to 1
    #[arg(long, value_name = "F", default_value_t = 0.0)]
    failure_rate: f64,
    /// Simulated work per request: a sleep between 0 and twice this many ms
    #[arg(long, value_name = "MS", default_value_t = 0)]
    work_ms: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let config = ServiceConfig {
        name: args.name,
        calls: args.calls,
        outbound_port: Arc::new(AtomicU16::new(args.outbound)),
        failure_rate: args.failure_rate,
        work: Duration::from_millis(args.work_ms),
        seed: u64::from(std::process::id()),
    };
    match Service::start(config.clone()) {
        Ok(service) => {
            println!(
                "{} listening on 127.0.0.1:{}{}",
                config.name,
                service.port(),
                config
                    .calls
                    .map(|c| format!(", calling {c} via 127.0.0.1:{}", args.outbound))
                    .unwrap_or_default()
            );
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
