//! `mesh-service`: one demo service instance on its own, for running the mesh by hand or in a
//! container: `mesh-service --name orders --port 9001 --calls inventory --outbound 8000
//! [--failure-rate 0.2] [--work-ms 1]`. It calls `--calls` through the sidecar's outbound
//! listener (`127.0.0.1:<outbound>`, `Host: <service>`), copying the trace headers.

use std::process::ExitCode;
use std::time::Duration;

use meshwasm_demo::service::{Service, ServiceConfig};

fn parse(args: &[String]) -> Result<(ServiceConfig, u16), String> {
    let mut config = ServiceConfig {
        name: String::new(),
        calls: None,
        outbound_port: 8000,
        failure_rate: 0.0,
        work: Duration::ZERO,
        seed: u64::from(std::process::id()),
    };
    let mut port = 0;
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value"))?
            .clone();
        let bad = |e: String| format!("{flag} {value}: {e}");
        match flag.as_str() {
            "--name" => config.name = value,
            "--port" => port = value.parse().map_err(|e| bad(format!("{e}")))?,
            "--calls" => config.calls = Some(value),
            "--outbound" => {
                config.outbound_port = value.parse().map_err(|e| bad(format!("{e}")))?
            }
            "--failure-rate" => {
                config.failure_rate = value.parse().map_err(|e| bad(format!("{e}")))?
            }
            "--work-ms" => {
                config.work = Duration::from_millis(value.parse().map_err(|e| bad(format!("{e}")))?)
            }
            other => return Err(format!("unknown option {other}")),
        }
    }
    if config.name.is_empty() {
        return Err("--name is required".into());
    }
    Ok((config, port))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (config, port) = match parse(&args) {
        Ok(parsed) => parsed,
        Err(e) => {
            eprintln!(
                "error: {e}\nusage: mesh-service --name <service> [--port <port>] [--calls <service>] \
                 [--outbound <port>] [--failure-rate <0..1>] [--work-ms <ms>]"
            );
            return ExitCode::from(2);
        }
    };
    match Service::start(config.clone(), port) {
        Ok(service) => {
            println!(
                "{} listening on 127.0.0.1:{}{}",
                config.name,
                service.port(),
                config
                    .calls
                    .map(|c| format!(", calling {c} via 127.0.0.1:{}", config.outbound_port))
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
