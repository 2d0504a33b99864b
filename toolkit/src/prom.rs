//! Reading Envoy's stats: the Prometheus text format of `/stats/prometheus` (samples with
//! labels, sums over label sets, histogram quantiles from cumulative buckets as Prometheus'
//! `histogram_quantile`), and the `name: value` lines of `/stats`. The one parser of each.

use std::collections::BTreeMap;

/// One sample line: `name{label="value",...} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The metric name.
    pub name: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its value.
    pub value: f64,
}

impl Sample {
    /// The value of label `name`, or "".
    pub fn label(&self, name: &str) -> &str {
        self.labels.get(name).map(String::as_str).unwrap_or("")
    }
}

/// Parses the Prometheus text format (comments and malformed lines are skipped).
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let (name, rest) = match line.find('{') {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => {
            let (name, value) = line.split_once(' ')?;
            return Some(Sample {
                name: name.to_string(),
                labels: BTreeMap::new(),
                value: parse_value(value)?,
            });
        }
    };
    let mut labels = BTreeMap::new();
    let mut chars = rest.char_indices().peekable();
    let mut end = None;
    loop {
        // label name
        let mut key = String::new();
        for (i, c) in chars.by_ref() {
            if c == '=' {
                break;
            }
            if c == '}' {
                end = Some(i);
                break;
            }
            if c != ',' && !c.is_whitespace() {
                key.push(c);
            }
        }
        if end.is_some() {
            break;
        }
        if chars.next().map(|(_, c)| c) != Some('"') {
            return None;
        }
        let mut value = String::new();
        let mut escaped = false;
        for (_, c) in chars.by_ref() {
            match (escaped, c) {
                (true, 'n') => {
                    value.push('\n');
                    escaped = false
                }
                (true, c) => {
                    value.push(c);
                    escaped = false
                }
                (false, '\\') => escaped = true,
                (false, '"') => break,
                (false, c) => value.push(c),
            }
        }
        labels.insert(key, value);
        if let Some(&(i, '}')) = chars.peek() {
            end = Some(i);
            break;
        }
    }
    let value = rest.get(end? + 1..)?.trim();
    Some(Sample {
        name: name.to_string(),
        labels,
        value: parse_value(value)?,
    })
}

fn parse_value(text: &str) -> Option<f64> {
    // A timestamp may follow the value.
    let v = text.split_whitespace().next()?;
    match v {
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        v => v.parse().ok(),
    }
}

/// The value of counter or gauge `name` in Envoy's `/stats` text (`name: value` lines).
pub fn envoy_stat(stats: &str, name: &str) -> Option<u64> {
    stats.lines().find_map(|line| {
        let (n, v) = line.split_once(": ")?;
        (n == name).then(|| v.trim().parse().ok()).flatten()
    })
}

/// The sum of `name` over the samples whose labels `keep` accepts.
pub fn sum(samples: &[Sample], name: &str, keep: impl Fn(&Sample) -> bool) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name && keep(s))
        .map(|s| s.value)
        .filter(|v| v.is_finite())
        // An empty f64 sum is -0.0, which prints as "-0": start from +0.0 instead.
        .fold(0.0, |a, v| a + v)
}

/// A histogram summed over label sets: cumulative counts per upper bound.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    /// (upper bound `le`, cumulative count), ascending, `+Inf` last.
    pub buckets: Vec<(f64, f64)>,
    /// Observations.
    pub count: f64,
    /// Sum of the observations.
    pub sum: f64,
}

impl Histogram {
    /// Sums the series `<name>_bucket`, `<name>_count`, `<name>_sum` whose labels `keep` accepts.
    pub fn collect(samples: &[Sample], name: &str, keep: impl Fn(&Sample) -> bool) -> Histogram {
        let bucket = format!("{name}_bucket");
        let mut by_le: BTreeMap<u64, (f64, f64)> = BTreeMap::new();
        for s in samples.iter().filter(|s| s.name == bucket && keep(s)) {
            let le = match s.label("le") {
                "+Inf" => f64::INFINITY,
                v => match v.parse::<f64>() {
                    Ok(v) => v,
                    Err(_) => continue,
                },
            };
            // f64 bits order like the values for non-negative numbers.
            let e = by_le.entry(le.to_bits()).or_insert((le, 0.0));
            e.1 += s.value;
        }
        Histogram {
            buckets: by_le.into_values().collect(),
            count: sum(samples, &format!("{name}_count"), &keep),
            sum: sum(samples, &format!("{name}_sum"), &keep),
        }
    }

    /// The `q` quantile (0..=1), interpolated linearly inside its bucket; `None` when empty.
    /// A quantile in the `+Inf` bucket is the highest finite bound.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.buckets.last().map(|b| b.1).filter(|t| *t > 0.0)?;
        let rank = q * total;
        let mut lower = (0.0, 0.0);
        for &(le, count) in &self.buckets {
            if count >= rank {
                if le.is_infinite() {
                    return Some(lower.0);
                }
                let in_bucket = count - lower.1;
                if in_bucket <= 0.0 {
                    return Some(le);
                }
                return Some(lower.0 + (le - lower.0) * (rank - lower.1) / in_bucket);
            }
            lower = (le, count);
        }
        Some(lower.0)
    }

    /// Observations per bucket (not cumulative): (lower, upper, count).
    pub fn bars(&self) -> Vec<(f64, f64, f64)> {
        let mut prev = (0.0, 0.0);
        self.buckets
            .iter()
            .map(|&(le, c)| {
                let bar = (prev.0, le, (c - prev.1).max(0.0));
                prev = (le, c);
                bar
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sum_of_nothing_prints_as_zero() {
        let total = sum(&[], "mesh_requests_total", |_| true);
        assert_eq!(format!("{total} {:.1}", 100.0 * total / 3.0), "0 0.0");
    }

    const TEXT: &str = r#"# TYPE mesh_requests_total counter
mesh_requests_total{reporter="source",source_service="frontend",destination_service="orders",response_code="200"} 15
mesh_requests_total{reporter="source",source_service="frontend",destination_service="orders",response_code="503"} 5
envoy_server_live{} 1
mesh_request_duration_milliseconds_bucket{reporter="source",le="1"} 2
mesh_request_duration_milliseconds_bucket{reporter="source",le="5"} 8
mesh_request_duration_milliseconds_bucket{reporter="source",le="+Inf"} 10
mesh_request_duration_milliseconds_bucket{reporter="destination",le="1"} 10
mesh_request_duration_milliseconds_bucket{reporter="destination",le="5"} 10
mesh_request_duration_milliseconds_bucket{reporter="destination",le="+Inf"} 10
mesh_request_duration_milliseconds_count{reporter="source"} 10
mesh_request_duration_milliseconds_sum{reporter="source"} 31.5
odd{a="x\"y,z}"} 3
"#;

    #[test]
    fn parses_labels_and_sums() {
        let samples = parse(TEXT);
        assert_eq!(sum(&samples, "mesh_requests_total", |_| true), 20.0);
        assert_eq!(
            sum(&samples, "mesh_requests_total", |s| s
                .label("response_code")
                == "503"),
            5.0
        );
        assert_eq!(sum(&samples, "envoy_server_live", |_| true), 1.0);
        let odd = samples.iter().find(|s| s.name == "odd");
        assert_eq!(odd.map(|s| s.label("a")), Some("x\"y,z}"));
    }

    #[test]
    fn interpolates_quantiles() {
        let samples = parse(TEXT);
        let h = Histogram::collect(&samples, "mesh_request_duration_milliseconds", |s| {
            s.label("reporter") == "source"
        });
        assert_eq!((h.count, h.sum), (10.0, 31.5));
        assert_eq!(h.quantile(0.5), Some(1.0 + 4.0 * 3.0 / 6.0));
        assert_eq!(h.quantile(0.1), Some(0.5));
        // In the +Inf bucket: the highest finite bound.
        assert_eq!(h.quantile(0.99), Some(5.0));
        assert_eq!(h.bars()[1], (1.0, 5.0, 6.0));
        assert_eq!(Histogram::default().quantile(0.5), None);
    }

    #[test]
    fn reads_envoy_stats_lines() {
        let stats = "cluster.a.upstream_rq: 3\nhttp.x.rq_total: 12\nbad: x\n";
        assert_eq!(envoy_stat(stats, "http.x.rq_total"), Some(12));
        assert_eq!(envoy_stat(stats, "bad"), None);
        assert_eq!(envoy_stat(stats, "http.x"), None);
    }
}
