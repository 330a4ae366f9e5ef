//! Property: any JSON document comes back byte for byte as it was written (numbers of any size
//! and precision, unicode, escapes, nesting, long keys, key order, duplicate keys decoded as
//! CouchDB does), through the HTTP API of a real server and through replication both ways
//! between that server's databases over HTTP.

use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, TestCaseError, TestRunner};
use serde_json::{Value, json};

/// Nesting added around a generated value, at most. A request body may nest 128 levels
/// (serde_json's limit); a replicated document travels inside `_bulk_get`'s answer, five levels
/// deeper, and the generated value has a few levels of its own.
const MAX_EXTRA_DEPTH: usize = 100;

/// A JSON value as generated: what is sent and what must come back are rendered from it.
#[derive(Debug, Clone)]
enum J {
    Null,
    Bool(bool),
    /// The number's text as sent.
    Num(String),
    /// The string, and whether to send every character as a `\u` escape.
    Str(String, bool),
    Arr(Vec<J>),
    /// Entries in the order sent; a key may repeat.
    Obj(Vec<(String, J)>),
}

impl J {
    fn sent(&self, out: &mut String) {
        match self {
            J::Null => out.push_str("null"),
            J::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            J::Num(n) => out.push_str(n),
            J::Str(s, false) => out.push_str(&serde_json::to_string(s).unwrap()),
            J::Str(s, true) => {
                out.push('"');
                for unit in s.encode_utf16() {
                    out.push_str(&format!("\\u{unit:04X}"));
                }
                out.push('"');
            }
            J::Arr(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    item.sent(out);
                }
                out.push(']');
            }
            J::Obj(entries) => {
                out.push('{');
                for (i, (k, v)) in entries.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&serde_json::to_string(k).unwrap());
                    out.push_str(" : ");
                    v.sent(out);
                }
                out.push('}');
            }
        }
    }

    /// What the server must answer: compact, strings escaped one way, every digit of a number
    /// as sent with its exponent spelled `e+N`/`e-N`, and a repeated key keeping its last value
    /// in its last place (CouchDB's rule).
    fn expected(&self, out: &mut String) {
        match self {
            J::Num(n) => out.push_str(&spell_exponent(n)),
            J::Str(s, _) => out.push_str(&serde_json::to_string(s).unwrap()),
            J::Arr(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    item.expected(out);
                }
                out.push(']');
            }
            J::Obj(entries) => {
                out.push('{');
                let kept = entries
                    .iter()
                    .enumerate()
                    .filter(|(i, (k, _))| !entries[i + 1..].iter().any(|(later, _)| later == k));
                for (n, (_, (k, v))) in kept.enumerate() {
                    if n > 0 {
                        out.push(',');
                    }
                    out.push_str(&serde_json::to_string(k).unwrap());
                    out.push(':');
                    v.expected(out);
                }
                out.push('}');
            }
            other => other.sent(out),
        }
    }
}

fn spell_exponent(n: &str) -> String {
    match n.find(['e', 'E']) {
        None => n.to_owned(),
        Some(at) => {
            let (mantissa, exponent) = (&n[..at], &n[at + 1..]);
            if exponent.starts_with(['+', '-']) {
                format!("{mantissa}e{exponent}")
            } else {
                format!("{mantissa}e+{exponent}")
            }
        }
    }
}

fn number() -> impl Strategy<Value = String> {
    prop_oneof![
        // Full-precision doubles as programs print them.
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_flat_map(|f| prop_oneof![
                Just(format!("{f}")),
                Just(format!("{f:e}")),
                Just(format!("{f:E}")),
                Just(serde_json::Number::from_f64(f).unwrap().to_string()),
            ]),
        (0.0f64..1.0).prop_map(|f| f.to_string()),
        // Integers and decimals of any size, exponents of any spelling.
        "-?(0|[1-9][0-9]{0,60})(\\.[0-9]{1,40})?([eE][+-]?[0-9]{1,3})?",
        Just("-0".to_owned()),
        Just("-0.0".to_owned()),
        Just("18446744073709551616".to_owned()),
    ]
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[\"\\\\/\\u{0}-\\u{1f}a-zé\\u{2028}\\u{FFFF}\\u{10000}\\u{1F600}-\\u{1F64F}\\u{10FFFF}]{0,24}",
    ]
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec!["a", "b", "c", "_x", ""]).prop_map(str::to_owned),
        4 => text(),
        1 => "[a-z]{200,1000}",
    ]
}

fn value() -> impl Strategy<Value = J> {
    let leaf = prop_oneof![
        1 => Just(J::Null),
        1 => any::<bool>().prop_map(J::Bool),
        3 => number().prop_map(J::Num),
        3 => (text(), any::<bool>()).prop_map(|(s, escaped)| J::Str(s, escaped)),
    ];
    leaf.prop_recursive(6, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(J::Arr),
            prop::collection::vec((key(), inner), 0..8).prop_map(J::Obj),
        ]
    })
}

/// A document body: fields whose names do not start with `_`, one of them possibly nested deep.
fn document() -> impl Strategy<Value = J> {
    let field = key().prop_map(|k| {
        if k.starts_with('_') {
            format!("k{k}")
        } else {
            k
        }
    });
    (
        prop::collection::vec((field, value()), 0..10),
        value(),
        0..=MAX_EXTRA_DEPTH,
    )
        .prop_map(|(mut fields, deep, depth)| {
            let mut wrapped = deep;
            for level in 0..depth {
                wrapped = if level % 2 == 0 {
                    J::Arr(vec![wrapped])
                } else {
                    J::Obj(vec![("d".to_owned(), wrapped)])
                };
            }
            fields.push(("deep".to_owned(), wrapped));
            J::Obj(fields)
        })
}

struct Live {
    server: crate::support::LiveServer,
    client: reqwest::Client,
}

async fn live() -> Live {
    let server = crate::support::LiveServer::start().await;
    let client = reqwest::Client::new();
    for db in ["written", "pushed", "pulled"] {
        let status = client
            .put(format!("{}/{db}", server.base))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 201);
    }
    Live { server, client }
}

impl Live {
    async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<String>,
    ) -> (u16, String) {
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.server.base))
            .header("content-type", "application/json");
        if let Some(body) = body {
            request = request.body(body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.text().await.unwrap())
    }

    async fn replicate(&self, source: String, target: String) -> Result<(), TestCaseError> {
        let body = json!({"source": source, "target": target}).to_string();
        let (status, answer) = self
            .request(reqwest::Method::POST, "/_replicate", Some(body))
            .await;
        prop_assert_eq!(status, 200, "{}", answer);
        let result: Value = serde_json::from_str(&answer).unwrap();
        prop_assert_eq!(&result["doc_write_failures"], &json!(0), "{}", answer);
        Ok(())
    }
}

async fn round_trip(server: &Live, id: &str, doc: &J) -> Result<(), TestCaseError> {
    let mut sent = String::new();
    doc.sent(&mut sent);
    let mut body = String::new();
    doc.expected(&mut body);
    let (status, answer) = server
        .request(
            reqwest::Method::PUT,
            &format!("/written/{id}"),
            Some(sent.clone()),
        )
        .await;
    prop_assert_eq!(status, 201, "PUT {} answered {}", sent, answer);
    let answer: Value = serde_json::from_str(&answer).unwrap();
    let rev = answer["rev"].as_str().unwrap();
    let inner = &body[1..body.len() - 1];
    let expected = if inner.is_empty() {
        format!(r#"{{"_id":"{id}","_rev":"{rev}"}}"#)
    } else {
        format!(r#"{{"_id":"{id}","_rev":"{rev}",{inner}}}"#)
    };

    // Written and read back.
    let (status, got) = server
        .request(reqwest::Method::GET, &format!("/written/{id}"), None)
        .await;
    prop_assert_eq!(status, 200);
    prop_assert_eq!(&got, &expected, "sent {}", sent);

    // Pushed from this server's store to a database over HTTP (`_bulk_docs`), and pulled over
    // HTTP (`_changes`, `_bulk_get`) into a database of this server.
    server
        .replicate("written".into(), format!("{}/pushed", server.server.base))
        .await?;
    server
        .replicate(format!("{}/pushed", server.server.base), "pulled".into())
        .await?;
    for db in ["pushed", "pulled"] {
        let (status, got) = server
            .request(reqwest::Method::GET, &format!("/{db}/{id}"), None)
            .await;
        prop_assert_eq!(status, 200, "{} in {}", id, db);
        prop_assert_eq!(&got, &expected, "replicated to {}; sent {}", db, sent);
    }
    Ok(())
}

#[test]
fn any_json_comes_back_byte_for_byte_through_http_and_replication() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let server = runtime.block_on(live());
    let mut runner = TestRunner::new(RunnerConfig {
        cases: 40,
        failure_persistence: None,
        ..RunnerConfig::default()
    });
    // Every case (shrinking included) writes a new document.
    let n = std::sync::atomic::AtomicU32::new(0);
    let outcome = runner.run(&document(), |doc| {
        let id = format!(
            "doc{}",
            n.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        runtime.block_on(round_trip(&server, &id, &doc))
    });
    if let Err(e) = outcome {
        panic!("{e}");
    }
}
