//! Helpers of the operational-surface tests (`ops_*.rs`) that `tests/common` lacks: a strict
//! parser of the Prometheus text exposition format (0.0.4), metric polling on top of it, a
//! raw WebSocket upgrade that reports the HTTP status (to see a 503 refusal), and readiness
//! probes that return the status with the parsed JSON body.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use serde_json::Value;

use crate::common::http_get;

/// How long a metric may take to reflect an event (sessions update counters as they end).
pub const METRIC_TIMEOUT: Duration = Duration::from_secs(15);

/// One sample line: `name{labels} value`.
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A metric family: its `# HELP`, `# TYPE` and samples.
#[derive(Debug, Clone)]
pub struct Family {
    pub name: String,
    pub help: Option<String>,
    /// `counter`, `gauge`, `histogram`, `summary` or `untyped`.
    pub kind: String,
    pub samples: Vec<Sample>,
}

/// A parsed exposition, families in the order they appeared.
#[derive(Debug, Clone)]
pub struct Exposition {
    pub families: Vec<Family>,
}

fn is_metric_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A sample value: a float in Go/Prometheus syntax, `+Inf`, `-Inf` or `NaN`.
fn parse_value(s: &str) -> Result<f64, String> {
    match s {
        "+Inf" => return Ok(f64::INFINITY),
        "-Inf" => return Ok(f64::NEG_INFINITY),
        "NaN" => return Ok(f64::NAN),
        _ => {}
    }
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-'))
        && s.chars().any(|c| c.is_ascii_digit());
    if !plain {
        return Err(format!("bad sample value {s:?}"));
    }
    s.parse::<f64>()
        .map_err(|e| format!("bad sample value {s:?}: {e}"))
}

/// Checks the escapes of a HELP docstring: only `\\` and `\n`.
fn check_help_escapes(help: &str) -> Result<(), String> {
    let mut chars = help.chars();
    while let Some(c) = chars.next() {
        if c == '\\' && !matches!(chars.next(), Some('\\') | Some('n')) {
            return Err(format!("bad escape in HELP text {help:?}"));
        }
    }
    Ok(())
}

/// Parses `{a="x",b="y"}` at the start of `s`; returns the labels and the rest after `}`.
fn parse_labels(s: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    let mut rest = s
        .strip_prefix('{')
        .ok_or_else(|| "labels must start with {".to_string())?;
    if let Some(after) = rest.strip_prefix('}') {
        return Ok((labels, after));
    }
    loop {
        let eq = rest
            .find('=')
            .ok_or_else(|| format!("label without = in {s:?}"))?;
        let name = &rest[..eq];
        if !is_label_name(name) {
            return Err(format!("bad label name {name:?} in {s:?}"));
        }
        rest = rest[eq + 1..]
            .strip_prefix('"')
            .ok_or_else(|| format!("label value of {name} not quoted in {s:?}"))?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err(format!("unterminated label value in {s:?}")),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => return Err(format!("bad escape {other:?} in label value of {s:?}")),
                },
                Some((_, '\n')) => return Err(format!("raw newline in label value of {s:?}")),
                Some((_, c)) => value.push(c),
            }
        };
        if labels.insert(name.to_string(), value).is_some() {
            return Err(format!("label {name} given twice in {s:?}"));
        }
        rest = &rest[end + 1..];
        if let Some(after) = rest.strip_prefix('}') {
            return Ok((labels, after));
        }
        rest = rest
            .strip_prefix(',')
            .ok_or_else(|| format!("expected , or }} after label {name} in {s:?}"))?;
        if rest.starts_with('}') {
            return Err(format!("trailing comma in labels of {s:?}"));
        }
    }
}

/// The family a sample named `sample` belongs to, given the family declared by `# TYPE`.
fn family_of(sample: &str, declared: Option<(&str, &str)>) -> Option<String> {
    let (family, kind) = declared?;
    let ok = match kind {
        "histogram" => [
            format!("{family}_bucket"),
            format!("{family}_sum"),
            format!("{family}_count"),
        ]
        .contains(&sample.to_string()),
        "summary" => {
            sample == family
                || sample == format!("{family}_sum")
                || sample == format!("{family}_count")
        }
        _ => sample == family,
    };
    ok.then(|| family.to_string())
}

impl Exposition {
    /// Parses a text exposition strictly: every non-comment line is `name{labels} value
    /// [timestamp]`, HELP/TYPE lines are well formed and come before their samples, a
    /// family's samples are contiguous, no series repeats, histograms are consistent.
    pub fn parse(text: &str) -> Result<Exposition, String> {
        if text.is_empty() {
            return Err("empty exposition".into());
        }
        if !text.ends_with('\n') {
            return Err("the exposition does not end with a newline".into());
        }
        let mut families: Vec<Family> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        let mut closed: HashSet<String> = HashSet::new();
        let mut seen_series: HashSet<(String, BTreeMap<String, String>)> = HashSet::new();
        // The family named by the latest TYPE line, if its samples may still follow.
        let mut current: Option<usize> = None;

        for (n, line) in text[..text.len() - 1].split('\n').enumerate() {
            let at = |e: String| format!("line {}: {e}: {line:?}", n + 1);
            if line.is_empty() {
                continue;
            }
            if let Some(comment) = line.strip_prefix('#') {
                let mut parts = comment.trim_start_matches(' ').splitn(3, ' ');
                let keyword = parts.next().unwrap_or_default();
                if keyword != "HELP" && keyword != "TYPE" {
                    continue; // A plain comment.
                }
                if !comment.starts_with(' ') {
                    return Err(at(format!("`#{keyword}` without a space")));
                }
                let name = parts.next().unwrap_or_default();
                if !is_metric_name(name) {
                    return Err(at(format!("bad metric name {name:?} in {keyword}")));
                }
                if closed.contains(name) {
                    return Err(at(format!("{keyword} for {name} after its samples ended")));
                }
                let idx = match index.get(name) {
                    Some(&i) => i,
                    None => {
                        families.push(Family {
                            name: name.to_string(),
                            help: None,
                            kind: "untyped".into(),
                            samples: Vec::new(),
                        });
                        index.insert(name.to_string(), families.len() - 1);
                        families.len() - 1
                    }
                };
                if let Some(prev) = current.filter(|&p| p != idx) {
                    closed.insert(families[prev].name.clone());
                }
                current = Some(idx);
                let family = &mut families[idx];
                if keyword == "HELP" {
                    let help = parts.next().unwrap_or_default();
                    check_help_escapes(help).map_err(at)?;
                    if family.help.replace(help.to_string()).is_some() {
                        return Err(at(format!("second HELP for {name}")));
                    }
                } else {
                    let kind = parts.next().unwrap_or_default();
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                        return Err(at(format!("bad TYPE {kind:?}")));
                    }
                    if !family.samples.is_empty() {
                        return Err(at(format!("TYPE for {name} after its samples")));
                    }
                    if family.kind != "untyped" {
                        return Err(at(format!("second TYPE for {name}")));
                    }
                    family.kind = kind.to_string();
                }
                continue;
            }

            // A sample line.
            let name_end = line
                .find(['{', ' '])
                .ok_or_else(|| at("a sample without a value".into()))?;
            let name = &line[..name_end];
            if !is_metric_name(name) {
                return Err(at(format!("bad metric name {name:?}")));
            }
            let (labels, rest) = if line[name_end..].starts_with('{') {
                parse_labels(&line[name_end..]).map_err(at)?
            } else {
                (BTreeMap::new(), &line[name_end..])
            };
            let rest = rest
                .strip_prefix(' ')
                .ok_or_else(|| at("no space before the value".into()))?;
            let tokens: Vec<&str> = rest.split(' ').collect();
            if tokens.is_empty() || tokens.len() > 2 || tokens.iter().any(|t| t.is_empty()) {
                return Err(at("expected `value [timestamp]` after the series".into()));
            }
            let value = parse_value(tokens[0]).map_err(at)?;
            if let Some(ts) = tokens.get(1) {
                ts.parse::<i64>()
                    .map_err(|_| at(format!("bad timestamp {ts:?}")))?;
            }
            if !seen_series.insert((name.to_string(), labels.clone())) {
                return Err(at("the same series twice".into()));
            }
            let declared = current.map(|i| (families[i].name.as_str(), families[i].kind.as_str()));
            let idx = match family_of(name, declared) {
                Some(_) => current.expect("a current family"),
                None => {
                    // A sample of an undeclared (untyped) family.
                    if let Some(prev) = current {
                        closed.insert(families[prev].name.clone());
                    }
                    if closed.contains(name) || index.contains_key(name) {
                        return Err(at(format!(
                            "sample {name} does not belong to the family being written"
                        )));
                    }
                    families.push(Family {
                        name: name.to_string(),
                        help: None,
                        kind: "untyped".into(),
                        samples: Vec::new(),
                    });
                    index.insert(name.to_string(), families.len() - 1);
                    current = Some(families.len() - 1);
                    families.len() - 1
                }
            };
            let family = &mut families[idx];
            if family.kind == "counter" && (value.is_nan() || value < 0.0) {
                return Err(at("a counter below 0".into()));
            }
            if family.kind == "histogram" && name.ends_with("_bucket") && !labels.contains_key("le")
            {
                return Err(at("a histogram bucket without `le`".into()));
            }
            family.samples.push(Sample {
                name: name.to_string(),
                labels,
                value,
            });
        }

        for family in families.iter().filter(|f| f.kind == "histogram") {
            check_histogram(family)?;
        }
        Ok(Exposition { families })
    }

    pub fn family(&self, name: &str) -> Option<&Family> {
        self.families.iter().find(|f| f.name == name)
    }

    /// Every sample named `name` (e.g. `roomcast_room_messages_total`).
    pub fn samples(&self, name: &str) -> Vec<&Sample> {
        self.families
            .iter()
            .flat_map(|f| f.samples.iter())
            .filter(|s| s.name == name)
            .collect()
    }

    /// The value of the one sample named `name` carrying every label in `labels`; `None`
    /// when there is none. Panics when several match (the labels are ambiguous).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let matching: Vec<&Sample> = self
            .samples(name)
            .into_iter()
            .filter(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect();
        assert!(
            matching.len() <= 1,
            "{name} {labels:?} matches several series: {matching:?}"
        );
        matching.first().map(|s| s.value)
    }
}

/// Buckets cumulative per label set, `+Inf` present and equal to `_count`.
fn check_histogram(family: &Family) -> Result<(), String> {
    let mut groups: BTreeMap<BTreeMap<String, String>, Vec<(f64, f64)>> = BTreeMap::new();
    let mut counts: BTreeMap<BTreeMap<String, String>, f64> = BTreeMap::new();
    for s in &family.samples {
        let mut key = s.labels.clone();
        if s.name.ends_with("_bucket") {
            let le = key.remove("le").expect("checked while parsing");
            let le = parse_value(&le).map_err(|e| format!("{}: le: {e}", family.name))?;
            groups.entry(key).or_default().push((le, s.value));
        } else if s.name.ends_with("_count") {
            counts.insert(key, s.value);
        }
    }
    for (key, mut buckets) in groups {
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        if buckets.windows(2).any(|w| w[1].1 < w[0].1) {
            return Err(format!("{} {key:?}: buckets not cumulative", family.name));
        }
        let inf = buckets.last().filter(|b| b.0 == f64::INFINITY);
        let Some(inf) = inf else {
            return Err(format!("{} {key:?}: no +Inf bucket", family.name));
        };
        if counts.get(&key) != Some(&inf.1) {
            return Err(format!(
                "{} {key:?}: +Inf bucket {} differs from _count {:?}",
                family.name,
                inf.1,
                counts.get(&key)
            ));
        }
    }
    Ok(())
}

/// `GET {admin_url}/metrics`, which must answer 200 with a valid exposition.
pub async fn scrape(admin_url: &str) -> Exposition {
    let body = crate::common::metrics_text(admin_url).await;
    Exposition::parse(&body)
        .unwrap_or_else(|e| panic!("/metrics is not valid Prometheus text: {e}\n{body}"))
}

/// One sample's value from a fresh scrape; an absent series reads as 0.
pub async fn metric(admin_url: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape(admin_url).await.value(name, labels).unwrap_or(0.0)
}

/// Polls the metric until `pred` holds; returns the value (panics after [`METRIC_TIMEOUT`]
/// with the last value and `what`).
pub async fn wait_metric(
    admin_url: &str,
    name: &str,
    labels: &[(&str, &str)],
    what: &str,
    pred: impl Fn(f64) -> bool,
) -> f64 {
    crate::common::eventually(METRIC_TIMEOUT, || async {
        let v = metric(admin_url, name, labels).await;
        if pred(v) {
            Ok(v)
        } else {
            Err(format!(
                "{name}{labels:?} is {v} after {METRIC_TIMEOUT:?}; expected {what}"
            ))
        }
    })
    .await
}

/// `GET {base_url}/readyz`: the status and the JSON body.
pub async fn readyz(base_url: &str) -> (u16, Value) {
    let (status, body) = http_get(&format!("{base_url}/readyz"))
        .await
        .unwrap_or_else(|e| panic!("GET {base_url}/readyz: {e}"));
    let json: Value = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("/readyz body is not JSON ({e}): {body:?}"));
    (status, json)
}

/// Asserts `/readyz` answers 200 `{"ready":true}`.
pub fn assert_ready(answer: &(u16, Value), base_url: &str) {
    assert_eq!(
        (answer.0, &answer.1["ready"]),
        (200, &Value::Bool(true)),
        "{base_url}/readyz: {answer:?}"
    );
}

/// The reason of a 503 `/readyz` answer (panics on any other shape).
pub fn unready_reason(answer: &(u16, Value)) -> String {
    assert_eq!(answer.0, 503, "expected 503 from /readyz, got {answer:?}");
    assert_eq!(
        answer.1["ready"], false,
        "503 but not ready:false: {answer:?}"
    );
    answer.1["reason"]
        .as_str()
        .unwrap_or_else(|| panic!("503 without a reason: {answer:?}"))
        .to_string()
}

/// Polls `/readyz` until `accept` holds for its answer; returns it (panics after `timeout`).
pub async fn wait_readyz(
    base_url: &str,
    timeout: Duration,
    what: &str,
    accept: impl Fn(&(u16, Value)) -> bool,
) -> (u16, Value) {
    crate::common::eventually(timeout, || async {
        let answer = readyz(base_url).await;
        if accept(&answer) {
            Ok(answer)
        } else {
            Err(format!(
                "{base_url}/readyz never became {what} within {timeout:?}; last: {answer:?}"
            ))
        }
    })
    .await
}

/// `GET {base_url}/healthz` must answer 200 `ok`.
pub async fn assert_healthy(base_url: &str) {
    let answer = http_get(&format!("{base_url}/healthz")).await;
    assert!(
        matches!(&answer, Ok((200, body)) if body.trim() == "ok"),
        "{base_url}/healthz: {answer:?}"
    );
}

/// Tries a WebSocket upgrade by hand on `ws_url` and returns the HTTP status line's code and
/// the response head (101 on success; the connection is then dropped).
pub async fn upgrade_status(ws_url: &str) -> (u16, String) {
    let (_stream, head, _rest) = crate::common::upgrade_by_hand(ws_url).await;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line: {head:?}"));
    (status, head.trim_end().to_string())
}

#[cfg(test)]
mod parser_self_test {
    use super::Exposition;

    #[test]
    fn accepts_valid_and_rejects_malformed_text() {
        let good = "# HELP a_total Things.\n# TYPE a_total counter\na_total{x=\"1\"} 3\n\
                    # TYPE h histogram\nh_bucket{le=\"0.5\"} 1\nh_bucket{le=\"+Inf\"} 2\n\
                    h_sum 0.7\nh_count 2\n";
        let e = Exposition::parse(good).expect("valid");
        assert_eq!(e.value("a_total", &[("x", "1")]), Some(3.0));
        for bad in [
            "a 1",                                                   // no final newline
            "a{x=\"1\"}\n",                                          // no value
            "a{x=1} 2\n",                                            // unquoted label
            "a{x=\"1\",} 2\n",                                       // trailing comma
            "a 1 2 3\n",                                             // extra token
            "a one\n",                                               // bad value
            "# TYPE a countr\na 1\n",                                // bad type
            "# TYPE a counter\nb 1\na 2\n",                          // family split
            "a 1\na 2\n",                                            // repeated series
            "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_count 2\n", // no +Inf
            "9a 1\n",                                                // bad name
        ] {
            assert!(Exposition::parse(bad).is_err(), "accepted {bad:?}");
        }
    }
}
