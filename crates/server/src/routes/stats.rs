//! `GET /_node/{node}/_stats[/group/...]`: CouchDB's statistics, drawn from the metrics Outpost
//! keeps for Prometheus (`outpost_telemetry`).
//!
//! The `couchdb` group holds the statistics CouchDB has an equivalent for, under CouchDB's names
//! and descriptions: requests, their methods and status codes, document reads and writes,
//! purges, the databases (all always open, one store) and `request_time`. The `outpost` group
//! holds every `outpost_…` metric, named without the prefix, nested by its label values in
//! order. Each statistic is `{"value", "type", "desc"}`; a histogram's value is a summary
//! computed from its buckets (see [`histogram`]). A path below `_stats` selects a part of the
//! answer, `null` when there is none, as CouchDB does.

use std::collections::BTreeMap;

use axum::response::Response;
use http::{Method, StatusCode};
use outpost_telemetry::{Family, Kind, Series};
use serde_json::{Map, Value, json};

use super::{not_allowed, ok};
use crate::request::Req;
use crate::{ApiError, AppState};

/// The methods CouchDB counts, always listed.
const METHODS: &[&str] = &["COPY", "DELETE", "GET", "HEAD", "OPTIONS", "POST", "PUT"];
/// The status codes CouchDB counts, always listed; others are added when seen.
const STATUSES: &[u16] = &[
    200, 201, 202, 204, 206, 301, 304, 400, 401, 403, 404, 405, 406, 409, 412, 413, 414, 415, 416,
    417, 500, 501, 503,
];
/// The percentiles of a histogram's summary, as CouchDB lists them (999 is the 99.9th).
const PERCENTILES: &[(u64, f64)] = &[
    (50, 0.5),
    (75, 0.75),
    (90, 0.9),
    (95, 0.95),
    (99, 0.99),
    (999, 0.999),
];

/// `GET /_node/{node}/_stats/...`.
pub async fn handle(state: &AppState, path: &[&str], req: &Req) -> Result<Response, ApiError> {
    if req.method != Method::GET {
        return Err(not_allowed("Only GET, HEAD allowed"));
    }
    let databases = state.store.all_dbs().await?.len() as u64;
    let families = outpost_telemetry::snapshot();
    let mut all = json!({
        "couchdb": couchdb(&families, databases),
        "outpost": outpost(&families),
    });
    for key in path {
        all = match all {
            Value::Object(mut map) => map.shift_remove(*key).unwrap_or(Value::Null),
            _ => Value::Null,
        };
    }
    Ok(ok(all.to_string()))
}

fn stat(value: Value, kind: &str, desc: impl Into<String>) -> Value {
    json!({ "value": value, "type": kind, "desc": desc.into() })
}

fn counter(value: f64, desc: impl Into<String>) -> Value {
    stat(json!(value.max(0.0) as u64), "counter", desc)
}

fn family<'a>(families: &'a [Family], name: &str) -> Option<&'a Family> {
    families.iter().find(|f| f.name == name)
}

/// A family's values summed over its series, per value of `label` (all together for `None`).
fn sums(families: &[Family], name: &str, label: Option<&str>) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for series in family(families, name).into_iter().flat_map(|f| &f.series) {
        let key = match label {
            None => String::new(),
            Some(label) => match series.labels.iter().find(|(k, _)| k == label) {
                Some((_, v)) => v.clone(),
                None => continue,
            },
        };
        *out.entry(key).or_insert(0.0) += series.value;
    }
    out
}

fn total(families: &[Family], name: &str) -> f64 {
    sums(families, name, None).values().sum()
}

fn couchdb(families: &[Family], databases: u64) -> Value {
    const REQUESTS: &str = "outpost_http_requests_total";
    let methods = sums(families, REQUESTS, Some("method"));
    let mut request_methods = Map::new();
    for method in METHODS {
        let n = methods.get(*method).copied().unwrap_or(0.0);
        request_methods.insert(
            (*method).into(),
            counter(n, format!("number of HTTP {method} requests")),
        );
    }
    let statuses = sums(families, REQUESTS, Some("status"));
    let mut codes: BTreeMap<u16, f64> = STATUSES.iter().map(|s| (*s, 0.0)).collect();
    for (status, n) in &statuses {
        if let Ok(code) = status.parse::<u16>() {
            *codes.entry(code).or_insert(0.0) += n;
        }
    }
    let status_codes: Map<String, Value> = codes
        .into_iter()
        .map(|(code, n)| {
            let reason = StatusCode::from_u16(code)
                .ok()
                .and_then(|s| s.canonical_reason())
                .unwrap_or("");
            let desc = format!("number of HTTP {code} {reason} responses");
            (code.to_string(), counter(n, desc.replace("  ", " ")))
        })
        .collect();
    let purged = total(families, "outpost_purge_documents_total");
    let request_time = family(families, "outpost_http_request_duration_seconds")
        .map(|f| histogram(&f.series, 1000.0))
        .unwrap_or_else(|| histogram(&[], 1000.0));
    json!({
        "httpd": {
            "requests": counter(total(families, REQUESTS), "number of HTTP requests"),
            "purge_requests": counter(
                total(families, "outpost_purge_requests_total"),
                "number of purge requests",
            ),
        },
        "httpd_request_methods": request_methods,
        "httpd_status_codes": status_codes,
        "database_reads": counter(
            total(families, "outpost_documents_read_total"),
            "number of times a document was read from a database",
        ),
        "database_writes": counter(
            total(families, "outpost_documents_written_total"),
            "number of times a database was changed",
        ),
        "document_purges": {
            "total": counter(purged, "number of total document purge operations"),
            "success": counter(purged, "number of successful document purge operations"),
            "failure": counter(0.0, "number of failed document purge operations"),
        },
        "open_databases": counter(
            databases as f64,
            "number of open databases (every database of the store is open)",
        ),
        "request_time": stat(
            request_time,
            "histogram",
            "length of a request, from its arrival to its response head, in milliseconds",
        ),
    })
}

/// Every `outpost_…` family: unlabelled ones as one statistic, labelled ones nested by their
/// label values in order.
fn outpost(families: &[Family]) -> Value {
    let mut group = Map::new();
    for f in families {
        let Some(name) = f.name.strip_prefix("outpost_") else {
            continue;
        };
        let kind = match f.kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        };
        let value_of = |series: &Series| match f.kind {
            Kind::Counter => json!(series.value.max(0.0) as u64),
            Kind::Gauge => {
                serde_json::Number::from_f64(series.value).map_or(Value::Null, Value::Number)
            }
            Kind::Histogram => histogram(std::slice::from_ref(series), 1.0),
        };
        let mut entry = Value::Null;
        for series in &f.series {
            let leaf = stat(value_of(series), kind, f.help.clone());
            if series.labels.is_empty() {
                entry = leaf;
                continue;
            }
            if !entry.is_object() || entry.get("type").is_some() {
                entry = Value::Object(Map::new());
            }
            let mut at = &mut entry;
            let last = series.labels.len() - 1;
            for (i, (_, value)) in series.labels.iter().enumerate() {
                let map = at.as_object_mut().expect("only objects are descended into");
                if i == last {
                    map.insert(value.clone(), leaf.clone());
                    break;
                }
                at = map
                    .entry(value.clone())
                    .or_insert_with(|| Value::Object(Map::new()));
            }
        }
        if !entry.is_null() {
            group.insert(name.to_owned(), entry);
        }
    }
    Value::Object(group)
}

/// A histogram's summary in CouchDB's shape, from the buckets of `series` added together
/// (they share their bounds) and every value multiplied by `scale`: `n`, `arithmetic_mean`,
/// `median` and `percentile` (estimated within their bucket, as the buckets allow), and
/// `histogram` (`[upper bound, count]` per finite bucket). The minimum, maximum and the other
/// moments CouchDB reports are not kept by a bucketed histogram and are left out.
fn histogram(series: &[Series], scale: f64) -> Value {
    let mut buckets: Vec<(f64, u64)> = Vec::new();
    let (mut sum, mut n) = (0.0, 0u64);
    for s in series {
        sum += s.value;
        n += s.count;
        for (i, (bound, count)) in s.buckets.iter().enumerate() {
            match buckets.get_mut(i) {
                Some(b) => b.1 += count,
                None => buckets.push((*bound, *count)),
            }
        }
    }
    let round = |v: f64| (v * 1000.0).round() / 1000.0;
    let percentile = |q: f64| -> f64 {
        if n == 0 {
            return 0.0;
        }
        let rank = q * n as f64;
        let mut lower = 0.0;
        let mut below = 0u64;
        let last_finite = buckets
            .iter()
            .rev()
            .map(|(b, _)| *b)
            .find(|b| b.is_finite())
            .unwrap_or(0.0);
        for (bound, cumulative) in &buckets {
            if *cumulative as f64 >= rank {
                if !bound.is_finite() {
                    return last_finite * scale;
                }
                let inside = (*cumulative - below).max(1) as f64;
                let at = lower + (bound - lower) * ((rank - below as f64) / inside).clamp(0.0, 1.0);
                return at * scale;
            }
            lower = *bound;
            below = *cumulative;
        }
        last_finite * scale
    };
    let mut previous = 0u64;
    let bins: Vec<Value> = buckets
        .iter()
        .filter(|(bound, _)| bound.is_finite())
        .map(|(bound, cumulative)| {
            let count = cumulative.saturating_sub(previous);
            previous = *cumulative;
            json!([round(bound * scale), count])
        })
        .collect();
    let mean = if n == 0 { 0.0 } else { sum / n as f64 * scale };
    json!({
        "n": n,
        "arithmetic_mean": round(mean),
        "median": round(percentile(0.5)),
        "percentile": PERCENTILES
            .iter()
            .map(|(name, q)| json!([name, round(percentile(*q))]))
            .collect::<Vec<_>>(),
        "histogram": bins,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(buckets: &[(f64, u64)], sum: f64) -> Series {
        Series {
            labels: Vec::new(),
            value: sum,
            buckets: buckets.to_vec(),
            count: buckets.last().map_or(0, |b| b.1),
        }
    }

    #[test]
    fn histograms_are_summed_and_summarised_from_their_buckets() {
        let a = series(&[(0.01, 2), (0.1, 4), (f64::INFINITY, 4)], 0.2);
        let b = series(&[(0.01, 0), (0.1, 2), (f64::INFINITY, 4)], 2.2);
        let summary = histogram(&[a, b], 1000.0);
        assert_eq!(summary["n"], 8);
        assert_eq!(summary["arithmetic_mean"], 300.0);
        assert_eq!(summary["histogram"], json!([[10.0, 2], [100.0, 4]]));
        // The 4th of 8 observations is the 2nd of the four in (10, 100] ms.
        assert_eq!(summary["median"], 55.0);
        // Beyond the last finite bound: that bound.
        assert_eq!(summary["percentile"][4], json!([99, 100.0]));
        assert_eq!(histogram(&[], 1.0)["n"], 0);
    }
}
