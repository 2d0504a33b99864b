//! The shared case table (`cases.json`, also run by the Python and Node hosts against the built
//! component) on the native build of the same code.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{json, Value};

use crate::propagate::{default_config, propagate, Config, Format, Outgoing, READ};

fn format_name(f: Format) -> &'static str {
    match f {
        Format::W3c => "w3c",
        Format::B3 => "b3",
        Format::B3Single => "b3-single",
    }
}

fn parse_format(name: &Value) -> Format {
    match name.as_str() {
        Some("w3c") => Format::W3c,
        Some("b3") => Format::B3,
        Some("b3-single") => Format::B3Single,
        other => panic!("unknown format {other:?}"),
    }
}

fn pairs(list: &[(String, String)]) -> Value {
    list.iter().map(|(k, v)| json!([k, v])).collect()
}

/// The case file's view of an outcome; each host builds the same object from its own values.
fn normalized(out: &Outgoing) -> Value {
    let context = out.context.as_ref().map(|c| {
        json!({
            "trace_id": c.trace_id,
            "short_trace_id": c.short_trace_id,
            "span_id": c.span_id,
            "parent_span_id": c.parent_span_id,
            "sampled": c.sampled,
            "debug": c.debug,
            "random": c.random,
            "tracestate": pairs(&c.tracestate),
            "format": format_name(c.format),
        })
    });
    json!({
        "headers": pairs(&out.headers),
        "context": context,
        "sampled": out.sampled,
        "baggage": pairs(&out.baggage),
        "request_id": out.request_id,
        "invalid": out.invalid,
    })
}

/// The default configuration with a case's overrides (snake_case field names).
fn config_of(case: &Value) -> Config {
    let mut config = default_config();
    let Some(overrides) = case.get("config").and_then(Value::as_object) else {
        return config;
    };
    for (key, value) in overrides {
        let formats = || value.as_array().unwrap().iter().map(parse_format).collect();
        let number = || u32::try_from(value.as_u64().unwrap()).unwrap();
        match key.as_str() {
            "extract" => config.extract = formats(),
            "inject" => config.inject = formats(),
            "baggage" => config.baggage = value.as_bool().unwrap(),
            "baggage_max_bytes" => config.baggage_max_bytes = number(),
            "baggage_max_members" => config.baggage_max_members = number(),
            "request_id" => config.request_id = value.as_bool().unwrap(),
            other => panic!("unknown config field {other}"),
        }
    }
    config
}

/// Builds the headers of a case: `[name, value]` pairs, where a value may be
/// `{"repeat": s, "times": n, "join": sep}` (long values without writing them out).
fn headers_of(case: &Value) -> Vec<(String, String)> {
    case["headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|pair| {
            let name = pair[0].as_str().unwrap().to_string();
            let value = match &pair[1] {
                Value::String(s) => s.clone(),
                spec => {
                    let n = spec["times"].as_u64().unwrap() as usize;
                    let item = spec["repeat"].as_str().unwrap();
                    let items: Vec<String> = (0..n)
                        .map(|i| item.replace("{i}", &i.to_string()))
                        .collect();
                    items.join(spec["join"].as_str().unwrap_or(""))
                }
            };
            (name, value)
        })
        .collect()
}

#[test]
fn the_shared_cases_pass() {
    let text = include_str!("../cases.json");
    let file: Value = serde_json::from_str(text).unwrap();
    let cases = file["cases"].as_array().unwrap();
    assert!(cases.len() >= 20, "{} cases", cases.len());
    let mut failures = Vec::new();
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let result = propagate(&config_of(case), &headers_of(case));
        match (result, case.get("error")) {
            (Err(e), Some(want)) if e.contains(want.as_str().unwrap()) => {}
            (Err(e), _) => failures.push(format!("{name}: error {e}")),
            (Ok(out), Some(want)) => {
                failures.push(format!("{name}: wanted error {want}, got {out:?}"))
            }
            (Ok(out), None) => {
                let got = normalized(&out);
                for (key, want) in case["expect"].as_object().unwrap() {
                    if &got[key] != want {
                        failures.push(format!("{name}: {key}: got {}, want {want}", got[key]));
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Generated values of every header the component reads, in every configuration of formats: an
/// outcome every time (never a panic, which would trap the component), and whatever it sends on
/// is read back as valid.
#[test]
fn generated_input_never_panics_and_what_is_sent_reads_back() {
    use meshwasm::trace::IdGenerator;
    const PIECES: [&str; 16] = [
        "00-",
        "4bf92f3577b34da6",
        "a3ce929d0e0e4736",
        "00f067aa0ba902b7",
        "-01",
        "-",
        "1",
        "d",
        "k=v",
        ",",
        ";p",
        "=",
        " ",
        "é",
        "\r\n",
        "ff",
    ];
    let all = [Format::W3c, Format::B3, Format::B3Single];
    let mut g = IdGenerator::new(16);
    let mut pick = |n: usize| (g.next_u64() % n as u64) as usize;
    for round in 0..5_000 {
        let headers: Vec<(String, String)> = (0..pick(6))
            .map(|_| {
                let value: String = (0..pick(8)).map(|_| PIECES[pick(PIECES.len())]).collect();
                let name = READ[pick(READ.len())];
                let name = match pick(2) {
                    0 => name.to_string(),
                    _ => name.to_ascii_uppercase(),
                };
                (name, value)
            })
            .collect();
        let mut config = default_config();
        config.extract = (0..pick(4)).map(|_| all[pick(3)]).collect();
        config.inject = (0..pick(4)).map(|_| all[pick(3)]).collect();
        let out = propagate(&config, &headers).unwrap();
        let again = propagate(&default_config(), &out.headers).unwrap();
        assert!(
            again.invalid.is_empty(),
            "round {round}: {headers:?} -> {out:?} -> {again:?}"
        );
    }
}
