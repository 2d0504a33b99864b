//! Load and faults through a sidecar with all three filters (two workers):
//! - a soak of `MESHWASM_SOAK_REQUESTS` requests (default 20 000; `cargo xtask soak` runs a few
//!   hundred thousand) on two keep-alive connections, one per listener: every request served,
//!   no VM failure, and Envoy's memory flat after warm-up (process RSS, which includes the V8
//!   wasm heaps; Envoy has no per-VM memory stat);
//! - the span collector answering 500, down, or hanging: requests unaffected, spans dropped and
//!   counted, the span buffer bounded;
//! - the upstream resetting connections: idempotent requests retried to success, retries counted;
//! - listener (LDS) reloads with new filter configurations while traffic flows: no request lost.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod all_filters;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use all_filters::{start_lds, start_with, stat_sum, vm_stats, Configs};
use integration::upstream::{Reply, Server};
use integration::{assert_eventually, http_get, http_request, Envoy};

// ---------------------------------------------------------------------------------------------
// Clients and servers.

/// Sends `n` GETs on one keep-alive connection (reconnecting if the server closes it); returns
/// (served with 200, other outcomes as text).
fn keepalive_client(port: u16, n: u64, path: &str, done: &AtomicU64) -> (u64, Vec<String>) {
    // Raw socket: requests share one keep-alive connection; the toolkit's client opens one each.
    let mut ok = 0;
    let mut errors = Vec::new();
    let mut conn: Option<(TcpStream, BufReader<TcpStream>)> = None;
    let request = format!("GET {path} HTTP/1.1\r\nhost: orders\r\n\r\n");
    for _ in 0..n {
        if conn.is_none() {
            let s = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s.set_nodelay(true).unwrap();
            conn = Some((s.try_clone().unwrap(), BufReader::new(s)));
        }
        let (w, r) = conn.as_mut().unwrap();
        let result = w
            .write_all(request.as_bytes())
            .map_err(|e| e.to_string())
            .and_then(|()| read_response(r));
        match result {
            Ok((200, keep)) => {
                ok += 1;
                if !keep {
                    conn = None;
                }
            }
            Ok((status, _)) => {
                errors.push(format!("status {status}"));
                conn = None;
            }
            Err(e) => {
                errors.push(e);
                conn = None;
            }
        }
        done.fetch_add(1, Ordering::Relaxed);
    }
    (ok, errors)
}

/// Reads one response with a content-length body: (status, connection stays open).
fn read_response(r: &mut BufReader<TcpStream>) -> Result<(u16, bool), String> {
    let mut line = String::new();
    if r.read_line(&mut line).map_err(|e| e.to_string())? == 0 {
        return Err("connection closed".into());
    }
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {line:?}"))?;
    let (mut len, mut keep) = (0usize, true);
    loop {
        let mut h = String::new();
        r.read_line(&mut h).map_err(|e| e.to_string())?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let lower = h.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            len = v.trim().parse().unwrap_or(0);
        }
        if lower == "connection: close" {
            keep = false;
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).map_err(|e| e.to_string())?;
    Ok((status, keep))
}

/// A collector that answers every request with `status` and keeps nothing; returns it (it stops
/// when dropped) and the number of requests it answered.
fn collector(status: u16) -> (Server, Arc<AtomicU64>) {
    let count = Arc::new(AtomicU64::new(0));
    let c = Arc::clone(&count);
    let server = Server::start_nonblocking("collector", 1, move |_| {
        c.fetch_add(1, Ordering::SeqCst);
        Reply::new(status, Vec::new())
    })
    .unwrap();
    (server, count)
}

/// A collector that accepts connections and never answers; returns its port (it listens until
/// the test process ends).
fn hanging_collector() -> u16 {
    // Raw socket: it accepts and never answers; a server library always answers.
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming().flatten() {
            held.push(conn);
        }
    });
    port
}

/// The Envoy process's resident set size in KiB, found by its config path in /proc.
fn envoy_rss_kib(envoy: &Envoy) -> Option<u64> {
    let config = envoy.dir().join("envoy.yaml").display().to_string();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        if args.contains(&config.as_bytes()) {
            let status = std::fs::read_to_string(entry.path().join("status")).ok()?;
            return status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok());
        }
    }
    None
}

fn soak_requests() -> u64 {
    std::env::var("MESHWASM_SOAK_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000)
}

// ---------------------------------------------------------------------------------------------
// Soak.

#[test]
fn soak_serves_every_request_with_flat_memory() {
    let total = soak_requests();
    let (sink, exports) = collector(202);
    let sidecar = start_with(&Configs::default(), Some(sink.port()), 2);
    let done = Arc::new(AtomicU64::new(0));
    // Warm-up: a tenth of the requests (at least 2000), then measure.
    let warm = (total / 10).max(2000);
    let run = |n: u64| {
        let clients: Vec<_> = [
            (sidecar.outbound(), "/soak/out"),
            (sidecar.inbound(), "/soak/in"),
        ]
        .into_iter()
        .map(|(port, path)| {
            let done = Arc::clone(&done);
            thread::spawn(move || keepalive_client(port, n / 2, path, &done))
        })
        .collect();
        clients.into_iter().map(|c| c.join().unwrap()).fold(
            (0, Vec::new()),
            |(ok, mut errs), (o, e)| {
                errs.extend(e);
                (ok + o, errs)
            },
        )
    };
    let (warm_ok, warm_errors) = run(warm);
    let rss_warm = envoy_rss_kib(&sidecar.envoy).expect("envoy's RSS");
    let heap_warm = sidecar.envoy.stat("server.memory_allocated").unwrap_or(0);
    let vm_before = vm_stats(&sidecar.envoy.stats());
    let started = Instant::now();
    // The measured part in 4 slices, sampling the RSS after each.
    let mut samples = vec![rss_warm];
    let (mut ok, mut errors) = (warm_ok, warm_errors);
    for _ in 0..4 {
        let (o, e) = run((total - warm) / 4);
        ok += o;
        errors.extend(e);
        samples.push(envoy_rss_kib(&sidecar.envoy).unwrap_or(0));
    }
    let elapsed = started.elapsed();
    let sent = done.load(Ordering::SeqCst);
    let rss_end = *samples.last().unwrap();
    let heap_end = sidecar.envoy.stat("server.memory_allocated").unwrap_or(0);
    let stats = sidecar.envoy.stats();
    println!(
        "soak: {sent} requests ({ok} served 200, {} errors) in {elapsed:?} after {warm} warm-up; \
         RSS KiB after warm-up and each quarter: {samples:?}; Envoy heap (server.memory_allocated) \
         {heap_warm} -> {heap_end} B; collector got {} export requests; spans: exported {}, \
         dropped {}",
        errors.len(),
        exports.load(Ordering::SeqCst),
        stat_sum(&stats, &["meshwasm_trace_spans_total;.outcome=exported"]),
        stat_sum(&stats, &["meshwasm_trace_spans_total;.outcome=dropped"]),
    );
    assert!(
        errors.is_empty(),
        "{} errors, first: {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
    assert_eq!(ok, sent);
    assert_eq!(
        vm_before,
        vm_stats(&stats),
        "wasm VM stats changed during the soak"
    );
    // Flat: at most 8 MiB over the post-warm-up RSS in total (allocator noise), and not growing
    // quarter over quarter by more than 4 MiB.
    assert!(
        rss_end <= rss_warm + 8 * 1024,
        "RSS grew from {rss_warm} to {rss_end} KiB: {samples:?}"
    );
    for w in samples.windows(2).skip(1) {
        assert!(w[1] <= w[0] + 4 * 1024, "RSS step {w:?} in {samples:?}");
    }
    // Every request was seen by each filter of its listener.
    assert_eq!(
        stat_sum(&stats, &["meshwasm_trace_requests_total"]),
        sent,
        "trace requests"
    );
    assert_eq!(stat_sum(&stats, &["meshwasm_retry_requests_total"]), sent);
}

// ---------------------------------------------------------------------------------------------
// Faults.

/// `n` requests on the outbound listener, each on its own connection: all must be 200.
fn all_served(port: u16, n: usize) {
    for i in 0..n {
        let t = Instant::now();
        let resp = http_get(port, &format!("/fault/{i}"), &[]).unwrap();
        assert_eq!(resp.status, 200, "request {i}: {resp:?}");
        assert!(
            t.elapsed() < Duration::from_millis(250),
            "request {i} waited on the exporter: {:?}",
            t.elapsed()
        );
    }
}

#[test]
fn collector_answering_500_costs_spans_not_requests() {
    let (sink, answered) = collector(500);
    let sidecar = start_with(&Configs::default(), Some(sink.port()), 2);
    all_served(sidecar.outbound(), 200);
    assert_eventually!(answered.load(Ordering::SeqCst) >= 1);
    assert_eventually!(
        stat_sum(
            &sidecar.envoy.stats(),
            &["meshwasm_trace_spans_total;.outcome=dropped_collector_error"]
        ) >= 50,
        "{}",
        sidecar.envoy.stats()
    );
    assert_eq!(stat_sum(&sidecar.envoy.stats(), &["outcome=exported"]), 0);
}

#[test]
fn collector_down_or_hanging_costs_spans_not_requests_and_the_buffer_stays_bounded() {
    // Port 1 (tcpmux): nothing listens there on a test machine, so connections are refused.
    let down = 1;
    let hanging = hanging_collector();
    for (what, port) in [("down", down), ("hanging", hanging)] {
        let sidecar = start_with(&Configs::default(), Some(port), 2);
        // More spans than the buffers hold (1000 per worker): 3000 requests on keep-alive.
        let done = AtomicU64::new(0);
        let (ok, errors) = keepalive_client(sidecar.outbound(), 3000, "/fault", &done);
        assert!(errors.is_empty(), "{what}: {errors:?}");
        assert_eq!(ok, 3000);
        let stats = sidecar.envoy.stats();
        let buffered = stat_sum(&stats, &["meshwasm_trace_buffered_spans"]);
        assert!(
            buffered <= 2 * 1000,
            "{what}: {buffered} spans buffered, more than 2 workers x 1000"
        );
        assert_eventually!(
            stat_sum(
                &sidecar.envoy.stats(),
                &["meshwasm_trace_spans_total;.outcome=dropped"]
            ) >= 1000,
            "{what}: {}",
            sidecar.envoy.stats()
        );
        all_served(sidecar.outbound(), 20);
    }
}

/// An upstream that closes every other connection's first request without answering.
fn resetting_upstream() -> (u16, Arc<AtomicU64>, Arc<AtomicBool>) {
    // Raw socket: it closes connections without an answer; a server library always answers.
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let resets = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (r, st) = (Arc::clone(&resets), Arc::clone(&stop));
    thread::spawn(move || {
        let n = AtomicU64::new(0);
        for conn in listener.incoming().flatten() {
            if st.load(Ordering::SeqCst) {
                return;
            }
            let reset_first = n.fetch_add(1, Ordering::SeqCst) % 2 == 0;
            let r = Arc::clone(&r);
            thread::spawn(move || {
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut first = true;
                loop {
                    let mut line = String::new();
                    loop {
                        line.clear();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if line.trim().is_empty() {
                            break;
                        }
                    }
                    if first && reset_first {
                        r.fetch_add(1, Ordering::SeqCst);
                        let _ = conn.shutdown(Shutdown::Both);
                        return;
                    }
                    first = false;
                    let mut w = &conn;
                    if w.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    (port, resets, stop)
}

#[test]
fn upstream_resets_are_retried_for_idempotent_requests() {
    let (port, resets, stop) = resetting_upstream();
    let mut builder = all_filters::TEMPLATE.to_string();
    builder = builder.replace("{{PORT_UPSTREAM}}", &port.to_string());
    let mut b = Envoy::builder(&builder)
        .var("PORT_APP", port.to_string())
        .var("PORT_COLLECTOR", port.to_string());
    for (k, v) in Configs::default().vars() {
        b = b.var(&k, v);
    }
    let envoy = b.start().unwrap();
    let listener = envoy.listener_port();
    let mut gets_ok = 0;
    for i in 0..100 {
        // Connection: close on our side; Envoy's upstream pool opens new connections as the
        // upstream resets them.
        let resp = http_get(listener, &format!("/reset/{i}"), &[]).unwrap();
        if resp.status == 200 {
            gets_ok += 1;
        }
    }
    stop.store(true, Ordering::SeqCst);
    assert_eq!(gets_ok, 100, "GETs lost to upstream resets");
    assert!(
        resets.load(Ordering::SeqCst) > 0,
        "the upstream never reset"
    );
    // Every GET got through, so each reset was retried; the filter counted retries (from the
    // attempt count of the responses; not one per reset, as a reset may hit a pooled
    // connection's first request while another request is in flight).
    assert_eventually!(
        stat_sum(
            &envoy.stats(),
            &["meshwasm_retry_retries_total;.rule=reads"]
        ) >= 1,
        "{}",
        envoy.stats()
    );
    // A POST is not retried (not idempotent): a reset costs it, as it would without the filter.
    let post = http_request("POST", listener, "/reset/post", &[], b"x").unwrap();
    assert!(post.status == 200 || post.status == 503, "{post:?}");
}

#[test]
fn listener_reloads_with_new_filter_configs_lose_no_request() {
    let mut sidecar = start_lds(&Configs::default());
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(Mutex::new(Vec::new()));
    let clients: Vec<_> = [sidecar.outbound(), sidecar.inbound()]
        .into_iter()
        .map(|port| {
            let (stop, done, errors) = (Arc::clone(&stop), Arc::clone(&done), Arc::clone(&errors));
            thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    // Batches of 50 on one keep-alive connection: connections of the old
                    // listener are drained by Envoy while new ones reach the new one.
                    let (_, e) = keepalive_client(port, 50, "/reload", &done);
                    errors.lock().unwrap().extend(e);
                }
            })
        })
        .collect();
    let success = |s: &all_filters::Sidecar| {
        s.envoy
            .stat("listener_manager.lds.update_success")
            .unwrap_or(0)
    };
    let base = success(&sidecar);
    let reloads = 6;
    for i in 0..reloads {
        let configs = Configs {
            trace_out: format!(
                r#"{{"direction":"outbound","response_trace_header":"x-trace-{i}","sampling_rate":0.5}}"#
            ),
            retries_out: format!(
                r#"{{"rules":[{{"name":"gen-{i}","policy":{{"retry_on":["5xx"],"num_retries":1}}}}]}}"#
            ),
            metrics_in: format!(
                r#"{{"reporter":"destination","identity":{{"version":"gen-{i}"}}}}"#
            ),
            ..Configs::default()
        };
        let before = done.load(Ordering::SeqCst);
        sidecar.lds.as_mut().unwrap().push(&configs);
        assert_eventually!(success(&sidecar) > base + i);
        // Traffic went on through the reload.
        assert_eventually!(done.load(Ordering::SeqCst) > before + 100);
        let port = sidecar.outbound();
        let header = format!("x-trace-{i}");
        assert_eventually!(
            http_get(port, "/", &[]).is_ok_and(|r| r.header(&header).is_some()),
            "generation {i} not applied"
        );
    }
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.join().unwrap();
    }
    let errors = errors.lock().unwrap();
    let served = done.load(Ordering::SeqCst);
    println!(
        "LDS reloads: {reloads} filter-config generations applied under traffic; {served} requests, {} failed",
        errors.len()
    );
    assert!(
        errors.is_empty(),
        "requests lost during reloads: {errors:?}"
    );
}
