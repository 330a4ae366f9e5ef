//! JSON passes through exactly: numbers as written, keys in the order written, duplicate keys as
//! CouchDB decodes them. Compared as text, byte for byte, never as parsed values (parsing would
//! hide exactly the changes these tests look for).

use serde_json::Value;

use crate::support::TestServer;

/// Sends `text` as the body and returns the answer's text, asserting the status.
async fn send(s: &TestServer, method: &str, path: &str, text: &str, status: u16) -> String {
    let (got, _, bytes) = s
        .raw(
            method,
            path,
            &[("content-type", "application/json")],
            Some(text.as_bytes().to_vec()),
        )
        .await;
    let answer = String::from_utf8(bytes).unwrap();
    assert_eq!(got.as_u16(), status, "{method} {path} answered {answer}");
    answer
}

async fn get_text(s: &TestServer, path: &str) -> String {
    let (status, _, bytes) = s.raw("GET", path, &[], None).await;
    let text = String::from_utf8(bytes).unwrap();
    assert_eq!(status.as_u16(), 200, "GET {path} answered {text}");
    text
}

fn rev_of(answer: &str) -> String {
    let v: Value = serde_json::from_str(answer).unwrap();
    v["rev"].as_str().unwrap().to_owned()
}

/// Doubles as `Math.random()` makes them, in both of Rust's shortest round-trip spellings.
fn full_precision_doubles() -> Vec<String> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut out = Vec::new();
    for i in 0..300 {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let x = (state >> 11) as f64 / (1u64 << 53) as f64;
        let scaled = if i % 2 == 0 { x } else { (x - 0.5) * 360.0 };
        out.push(if i % 3 == 0 {
            // As JavaScript spells an exponent (`1.5e+21`, `1e-7`).
            let e = format!("{scaled:e}");
            if e.contains("e-") {
                e
            } else {
                e.replace('e', "e+")
            }
        } else {
            format!("{scaled}")
        });
    }
    out
}

#[tokio::test]
async fn numbers_come_back_exactly_as_written() {
    let s = TestServer::new();
    s.expect("PUT", "/db", None, 201).await;
    let mut numbers = full_precision_doubles();
    numbers.extend(
        [
            "9007199254740993",
            "18446744073709551615",
            "18446744073709551616",
            "-9223372036854775809",
            "123456789012345678901234567890123456789",
            "-0",
            "-0.0",
            "1.0",
            "1.50",
            "1e+2",
            "1e-7",
            "0.1e+1",
            "1e+400",
            "0.1000000000000000055511151231257827021181583404541015625",
            "37.42345678901234567",
        ]
        .map(str::to_owned),
    );
    let values = numbers.join(",");
    let answer = send(
        &s,
        "POST",
        "/db",
        &format!(
            r#"{{"_id":"n","values":[{values}],"pos":{{"lat":-33.868820039, "lng":151.20929}}}}"#
        ),
        201,
    )
    .await;
    let rev = rev_of(&answer);
    let expected = format!(
        r#"{{"_id":"n","_rev":"{rev}","values":[{values}],"pos":{{"lat":-33.868820039,"lng":151.20929}}}}"#
    );
    assert_eq!(get_text(&s, "/db/n").await, expected);

    // Every other way out serves the same text.
    let all = get_text(&s, "/db/_all_docs?include_docs=true").await;
    assert!(all.contains(&expected), "{all}");
    let changes = get_text(&s, "/db/_changes?include_docs=true").await;
    assert!(changes.contains(&expected), "{changes}");

    // Every digit stays; an exponent is spelled one way (the same number).
    let answer = send(&s, "PUT", "/db/e", r#"{"v":[1E2,1.50E-3,2e400]}"#, 201).await;
    let rev = rev_of(&answer);
    assert_eq!(
        get_text(&s, "/db/e").await,
        format!(r#"{{"_id":"e","_rev":"{rev}","v":[1e+2,1.50e-3,2e+400]}}"#)
    );
}

#[tokio::test]
async fn field_order_is_kept_on_write() {
    let s = TestServer::new();
    s.expect("PUT", "/db", None, 201).await;
    let answer = send(
        &s,
        "POST",
        "/db",
        r#"{"_id":"ord","a":1,"b":2,"c":3,"d":4}"#,
        201,
    )
    .await;
    let rev = rev_of(&answer);
    assert_eq!(
        get_text(&s, "/db/ord").await,
        format!(r#"{{"_id":"ord","_rev":"{rev}","a":1,"b":2,"c":3,"d":4}}"#)
    );

    // Special fields anywhere in the object leave the others where they were.
    let body = format!(r#"{{"a":1,"_rev":"{rev}","b":2,"_id":"ord","c":3,"_seq":9,"d":4,"e":5}}"#);
    let answer = send(&s, "PUT", "/db/ord", &body, 201).await;
    let rev = rev_of(&answer);
    assert_eq!(
        get_text(&s, "/db/ord").await,
        format!(r#"{{"_id":"ord","_rev":"{rev}","a":1,"b":2,"c":3,"d":4,"e":5}}"#)
    );

    // And so do replicated documents, whose `_revisions` comes out first.
    let doc = r#"{"_revisions":{"start":1,"ids":["aaaa"]},"z":1,"_id":"rep","y":2,"_rev":"1-aaaa","x":3,"w":4}"#;
    send(
        &s,
        "POST",
        "/db/_bulk_docs",
        &format!(r#"{{"new_edits":false,"docs":[{doc}]}}"#),
        201,
    )
    .await;
    assert_eq!(
        get_text(&s, "/db/rep").await,
        r#"{"_id":"rep","_rev":"1-aaaa","z":1,"y":2,"x":3,"w":4}"#
    );

    // Attachments are rewritten into stubs in place, keeping their neighbours in order.
    let body = r#"{"p":1,"_attachments":{"a.txt":{"content_type":"text/plain","data":"aGk="}},"q":2,"r":3}"#;
    let answer = send(&s, "PUT", "/db/att", body, 201).await;
    let rev = rev_of(&answer);
    let text = get_text(&s, "/db/att").await;
    let expected_start =
        format!(r#"{{"_id":"att","_rev":"{rev}","p":1,"_attachments":{{"a.txt":{{"#);
    assert!(text.starts_with(&expected_start), "{text}");
    assert!(text.ends_with(r#"}},"q":2,"r":3}"#), "{text}");
}

#[tokio::test]
async fn duplicate_keys_keep_the_last_value_in_the_last_place_as_couchdb_does() {
    let s = TestServer::new();
    s.expect("PUT", "/db", None, 201).await;
    let answer = send(
        &s,
        "POST",
        "/db",
        r#"{"_id":"dup","bar":1,"foo":2,"baz":3,"foo":4,"o":{"k":1,"j":0,"k":2},"l":[{"x":1,"x":[3]}]}"#,
        201,
    )
    .await;
    let rev = rev_of(&answer);
    assert_eq!(
        get_text(&s, "/db/dup").await,
        format!(
            r#"{{"_id":"dup","_rev":"{rev}","bar":1,"baz":3,"foo":4,"o":{{"j":0,"k":2}},"l":[{{"x":[3]}}]}}"#
        )
    );
}

/// A `_bulk_docs` body large enough to be decoded on two threads (over 64 KiB): `n` documents
/// whose text has exact numbers, duplicate keys and a `_local` document in the second half.
fn large_bulk(n: usize) -> (String, Vec<String>) {
    let mut docs = Vec::new();
    let mut expected = Vec::new();
    for i in 0..n {
        if i == n - 3 {
            docs.push(format!(r#"{{"_id":"_local/l{i}","v":0.1000000000000000055511151231257827021181583404541015625}}"#));
            expected.push(String::new());
            continue;
        }
        docs.push(format!(
            r#"{{"_id":"d{i:05}","n":{i}.50,"big":18446744073709551617,"k":1,"pad":"{}","k":{{"z":1,"a":2,"z":3}}}}"#,
            "x".repeat(40)
        ));
        expected.push(format!(
            r#""n":{i}.50,"big":18446744073709551617,"pad":"{}","k":{{"a":2,"z":3}}}}"#,
            "x".repeat(40)
        ));
    }
    (format!(r#"{{"docs":[{}]}}"#, docs.join(",")), expected)
}

#[tokio::test]
async fn a_large_bulk_docs_is_decoded_on_two_threads_exactly_and_in_order() {
    let s = TestServer::new();
    s.expect("PUT", "/db", None, 201).await;
    let (body, expected) = large_bulk(1_000);
    assert!(
        body.len() > 64 * 1024,
        "the body must take the two-thread path"
    );
    let answer = send(&s, "POST", "/db/_bulk_docs", &body, 201).await;
    let answer: Vec<Value> = serde_json::from_str(&answer).unwrap();
    assert_eq!(answer.len(), expected.len());
    for (i, (entry, tail)) in answer.iter().zip(&expected).enumerate() {
        if tail.is_empty() {
            assert_eq!(entry["id"], format!("_local/l{i}"));
            assert_eq!(entry["ok"], true);
            continue;
        }
        let id = format!("d{i:05}");
        assert_eq!(entry["id"], id.as_str(), "answers keep the request's order");
        let rev = entry["rev"].as_str().unwrap();
        assert_eq!(
            get_text(&s, &format!("/db/{id}")).await,
            format!(r#"{{"_id":"{id}","_rev":"{rev}",{tail}"#)
        );
    }
    let local = get_text(&s, &format!("/db/_local/l{}", 1_000 - 3)).await;
    assert!(
        local.contains(r#""v":0.1000000000000000055511151231257827021181583404541015625"#),
        "{local}"
    );
}

#[tokio::test]
async fn a_large_bulk_docs_refuses_as_a_small_one_does() {
    let s = TestServer::new();
    s.expect("PUT", "/db", None, 201).await;
    let (body, _) = large_bulk(1_000);
    // The first refusal in request order decides, whichever thread found it; nothing is written.
    let bad = body
        .replacen(
            r#""_id":"d00900""#,
            r#""_id":"d00900","_rev":"nonsense""#,
            1,
        )
        .replacen(r#""_id":"d00010""#, r#""_id":"_bad""#, 1);
    let answer = send(&s, "POST", "/db/_bulk_docs", &bad, 400).await;
    assert!(answer.contains(r#""error":"illegal_docid""#), "{answer}");
    let only_second_half = body.replacen(
        r#""_id":"d00900""#,
        r#""_id":"d00900","_rev":"nonsense""#,
        1,
    );
    let answer = send(&s, "POST", "/db/_bulk_docs", &only_second_half, 400).await;
    assert!(answer.contains("Invalid rev format"), "{answer}");
    // Nested deeper than a whole body may be: the error of decoding the whole body.
    let deep = format!("{}{}", "[".repeat(126), "]".repeat(126));
    let too_deep = body.replacen(r#""k":1,"#, &format!(r#""k":{deep},"#), 1);
    let small = format!(r#"{{"docs":[{{"_id":"x","k":{deep}}}]}}"#);
    let large_answer = send(&s, "POST", "/db/_bulk_docs", &too_deep, 400).await;
    let small_answer = send(&s, "POST", "/db/_bulk_docs", &small, 400).await;
    assert!(large_answer.contains("recursion limit"), "{large_answer}");
    assert!(small_answer.contains("recursion limit"), "{small_answer}");
    let info: Value = serde_json::from_str(&get_text(&s, "/db").await).unwrap();
    assert_eq!(info["doc_count"], 0, "a refused request writes nothing");
}
