//! The corpus of invalid filter configurations in `integration/bad-configs/<filter>/*.json`: each
//! is refused by Envoy at startup with the field path in its log (`<name>.expect` holds the log
//! line's expected text), and none takes down a running listener when pushed as a file-based LDS
//! update: traffic keeps flowing on the old configuration, Envoy counts the rejected update, and
//! a good update after them all is applied.
//!
//! `MESHWASM_BLESS=1` writes each `.expect` from what Envoy logged (review the diff).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod all_filters;

use std::fs;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

use all_filters::{start_lds, Configs, TEMPLATE};
use integration::upstream::Upstream;
use integration::{assert_eventually, http_get, workspace_root, Envoy};

/// One invalid configuration of the corpus.
struct BadConfig {
    filter: String,
    name: String,
    json: String,
    expect: Option<String>,
    expect_path: PathBuf,
}

fn corpus() -> Vec<BadConfig> {
    let root = workspace_root().join("integration").join("bad-configs");
    let mut out = Vec::new();
    for filter in ["trace_propagation", "service_metrics", "route_retries"] {
        let mut files: Vec<PathBuf> = fs::read_dir(root.join(filter))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        files.sort();
        assert!(files.len() >= 10, "{filter}: fewer than 10 bad configs");
        for path in files {
            let expect_path = path.with_extension("expect");
            out.push(BadConfig {
                filter: filter.to_string(),
                name: path.file_stem().unwrap().to_string_lossy().into_owned(),
                json: fs::read_to_string(&path).unwrap().trim_end().to_string(),
                expect: fs::read_to_string(&expect_path)
                    .ok()
                    .map(|s| s.trim_end().to_string()),
                expect_path,
            });
        }
    }
    out
}

/// The default configs with `bad` in its filter's outbound slot.
fn with_bad(bad: &BadConfig) -> Configs {
    let mut configs = Configs::default();
    match bad.filter.as_str() {
        "trace_propagation" => configs.trace_out = bad.json.clone(),
        "service_metrics" => configs.metrics_out = bad.json.clone(),
        _ => configs.retries_out = bad.json.clone(),
    }
    configs
}

/// The `<filter>: invalid configuration: ...` line of an Envoy log.
fn refusal_line(log: &str, filter: &str) -> Option<String> {
    let marker = format!("{filter}: invalid configuration: ");
    log.lines().find_map(|l| {
        let at = l.find(&marker)?;
        Some(l[at..].trim_end().to_string())
    })
}

fn bless() -> bool {
    std::env::var("MESHWASM_BLESS").is_ok_and(|v| v == "1")
}

/// Checks a refusal against the case's `.expect`, or writes it when blessing.
fn check_refusal(bad: &BadConfig, log: &str) {
    let line = refusal_line(log, &bad.filter).unwrap_or_else(|| {
        panic!(
            "{}/{}: no `{}: invalid configuration:` line in the log:\n{log}",
            bad.filter, bad.name, bad.filter
        )
    });
    if bless() {
        fs::write(&bad.expect_path, format!("{line}\n")).unwrap();
        return;
    }
    let expect = bad.expect.as_deref().unwrap_or_else(|| {
        panic!(
            "{} missing (MESHWASM_BLESS=1 writes it); Envoy logged: {line}",
            bad.expect_path.display()
        )
    });
    assert!(
        line.contains(expect),
        "{}/{}: expected `{expect}` in `{line}`",
        bad.filter,
        bad.name
    );
}

#[test]
fn every_bad_config_is_refused_at_startup_with_its_field_path() {
    let cases = corpus();
    let upstream = Upstream::start().unwrap();
    let port = upstream.port().to_string();
    let next = Arc::new(Mutex::new(0usize));
    let cases = Arc::new(cases);
    // Two at a time: each is one short-lived Envoy.
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let (cases, next, port) = (Arc::clone(&cases), Arc::clone(&next), port.clone());
            thread::spawn(move || loop {
                let i = {
                    let mut n = next.lock().unwrap();
                    *n += 1;
                    *n - 1
                };
                let Some(bad) = cases.get(i) else { return };
                let mut builder = Envoy::builder(TEMPLATE)
                    .concurrency(1)
                    .var("PORT_UPSTREAM", port.clone())
                    .var("PORT_APP", port.clone())
                    .var("PORT_COLLECTOR", port.clone());
                for (k, v) in with_bad(bad).vars() {
                    builder = builder.var(&k, v);
                }
                let log = builder.start_expecting_failure();
                check_refusal(bad, &log);
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    println!("{} bad configs refused at startup", cases.len());
}

#[test]
fn bad_updates_are_rejected_and_the_running_listener_keeps_serving() {
    let cases = corpus();
    let mut sidecar = start_lds(&Configs::default());
    let port = sidecar.outbound();
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let traffic = {
        let (stop, ok, failed, failures) = (
            Arc::clone(&stop),
            Arc::clone(&ok),
            Arc::clone(&failed),
            Arc::clone(&failures),
        );
        thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                match http_get(port, "/during-updates", &[]) {
                    Ok(r) if r.status == 200 => ok.fetch_add(1, Ordering::SeqCst),
                    other => {
                        failures.lock().unwrap().push(format!("{other:?}"));
                        failed.fetch_add(1, Ordering::SeqCst)
                    }
                };
            }
        })
    };
    let stat = |envoy: &Envoy, name: &str| envoy.stat(name).unwrap_or(0);
    let rejected_at_start = stat(&sidecar.envoy, "listener_manager.lds.update_rejected");
    let lds = sidecar.lds.as_mut().unwrap();
    for (i, bad) in cases.iter().enumerate() {
        lds.push(&with_bad(bad));
        let want = rejected_at_start + i as u64 + 1;
        assert_eventually!(
            stat(&sidecar.envoy, "listener_manager.lds.update_rejected") >= want,
            "{}/{}: update not rejected; log:\n{}",
            bad.filter,
            bad.name,
            sidecar.envoy.log()
        );
    }
    if !bless() {
        // Each rejected update logged its field path.
        let log = sidecar.envoy.log();
        for bad in &cases {
            if let Some(expect) = &bad.expect {
                assert!(log.contains(expect.as_str()), "not in the log: {expect}");
            }
        }
    }
    // A good update after them all is applied.
    let good = Configs {
        trace_out: r#"{"direction":"outbound","response_trace_header":"x-trace-id"}"#.into(),
        ..Configs::default()
    };
    let success_before = stat(&sidecar.envoy, "listener_manager.lds.update_success");
    sidecar.lds.as_mut().unwrap().push(&good);
    assert_eventually!(
        stat(&sidecar.envoy, "listener_manager.lds.update_success") > success_before
    );
    assert_eventually!(
        http_get(port, "/", &[]).is_ok_and(|r| r.status == 200 && r.header("x-trace-id").is_some())
    );
    stop.store(true, Ordering::SeqCst);
    traffic.join().unwrap();
    let (ok, failed) = (ok.load(Ordering::SeqCst), failed.load(Ordering::SeqCst));
    assert_eq!(
        failed,
        0,
        "requests failed during the updates: {:?}",
        failures.lock().unwrap()
    );
    assert!(ok > 0);
    println!(
        "{} bad updates rejected, 1 good update applied, {ok} requests served meanwhile, 0 failed",
        cases.len()
    );
}
