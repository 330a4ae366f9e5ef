//! `_compact`: answered at once, run in the background, and leaving only what a fresh store
//! holding the same live data would hold (give or take the event log and revision trees).

use serde_json::{Value, json};

use crate::support::{TestServer, assert_error, compact, store_bytes};

/// A body field of about 4 KB, different for every document and version.
fn filler(doc: usize, version: usize) -> String {
    format!("{doc}-{version}-").repeat(4096 / 6)
}

fn bytes(seed: u8) -> Vec<u8> {
    (0..16 * 1024)
        .map(|i| (i as u8).wrapping_mul(seed))
        .collect()
}

async fn put_attachment(s: &TestServer, path: &str, rev: &Value, data: Vec<u8>) -> Value {
    let (status, _, body) = s
        .raw(
            "PUT",
            &format!("{path}/f?rev={}", rev.as_str().unwrap()),
            &[("content-type", "application/octet-stream")],
            Some(data),
        )
        .await;
    assert_eq!(status, 201);
    serde_json::from_slice::<Value>(&body).unwrap()["rev"].clone()
}

/// Copies every live document of `db` (attachments inlined) into `to`, as a fresh store
/// holding only the live data.
async fn copy_live(from: &TestServer, to: &TestServer, db: &str) {
    to.expect("PUT", &format!("/{db}"), None, 201).await;
    let all = from
        .expect(
            "GET",
            &format!("/{db}/_all_docs?include_docs=true&attachments=true"),
            None,
            200,
        )
        .await;
    let docs: Vec<Value> = all["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            let mut doc = row["doc"].clone();
            doc.as_object_mut().unwrap().shift_remove("_rev");
            doc
        })
        .collect();
    to.expect(
        "POST",
        &format!("/{db}/_bulk_docs"),
        Some(json!({ "docs": docs })),
        201,
    )
    .await;
}

#[tokio::test]
async fn compaction_returns_a_churned_store_to_near_its_live_size() {
    let s = TestServer::new();
    for db in ["churn", "shared", "gone"] {
        s.expect("PUT", &format!("/{db}"), None, 201).await;
    }
    // Many updates of the same documents, some then deleted.
    let mut first_revs = Vec::new();
    let mut revs = Vec::new();
    for d in 0..20 {
        let mut rev = s
            .expect(
                "PUT",
                &format!("/churn/d{d}"),
                Some(json!({"text": filler(d, 0)})),
                201,
            )
            .await["rev"]
            .clone();
        first_revs.push(rev.clone());
        for v in 1..=10 {
            let body = json!({"_rev": rev, "text": filler(d, v)});
            rev = s
                .expect("PUT", &format!("/churn/d{d}"), Some(body), 201)
                .await["rev"]
                .clone();
        }
        revs.push(rev);
    }
    for (d, rev) in revs.iter().enumerate().skip(15) {
        let path = format!("/churn/d{d}?rev={}", rev.as_str().unwrap());
        s.expect("DELETE", &path, None, 200).await;
    }
    // Attachments replaced several times; two of the documents deleted.
    let mut seed = 1u8;
    for a in 0..5 {
        let path = format!("/churn/a{a}");
        let mut rev = s.expect("PUT", &path, Some(json!({})), 201).await["rev"].clone();
        for _ in 0..5 {
            seed += 2;
            rev = put_attachment(&s, &path, &rev, bytes(seed)).await;
        }
        if a >= 3 {
            let path = format!("{path}?rev={}", rev.as_str().unwrap());
            s.expect("DELETE", &path, None, 200).await;
        }
    }
    // Another database keeps the last bytes of deleted `a4`: the same digest, still referenced.
    let rev = s.expect("PUT", "/shared/s", Some(json!({})), 201).await["rev"].clone();
    put_attachment(&s, "/shared/s", &rev, bytes(seed)).await;
    // A deleted database with attachments of its own.
    for g in 0..5u8 {
        let path = format!("/gone/g{g}");
        let rev = s.expect("PUT", &path, Some(json!({})), 201).await["rev"].clone();
        put_attachment(&s, &path, &rev, bytes(200 + g)).await;
    }
    s.expect("DELETE", "/gone", None, 200).await;

    let fresh = TestServer::new();
    copy_live(&s, &fresh, "churn").await;
    copy_live(&s, &fresh, "shared").await;
    compact(&fresh, "churn").await;
    let live = store_bytes(fresh.dir.path());
    let churned = store_bytes(s.dir.path());
    assert!(churned > 5 * live, "churned {churned}, live {live}");

    compact(&s, "churn").await;

    let compacted = store_bytes(s.dir.path());
    assert!(
        compacted * 2 <= live * 3,
        "compacted {compacted}, live {live} (churned {churned})"
    );
    // Superseded revisions are gone, as after a CouchDB compaction; leaves are intact.
    let old = format!("/churn/d0?rev={}", first_revs[0].as_str().unwrap());
    assert_error(&s.expect("GET", &old, None, 404).await, "not_found");
    let doc = s.expect("GET", "/churn/d0?revs_info=true", None, 200).await;
    assert_eq!(doc["text"], filler(0, 10));
    let info = doc["_revs_info"].as_array().unwrap();
    assert_eq!(info.len(), 11);
    assert_eq!(info[0]["status"], "available");
    assert!(info[1..].iter().all(|i| i["status"] == "missing"), "{doc}");
    let (status, _, kept) = s.raw("GET", "/shared/s/f", &[], None).await;
    assert_eq!(status, 200);
    assert_eq!(kept, bytes(seed));
    let (status, _, current) = s.raw("GET", "/churn/a0/f", &[], None).await;
    assert_eq!(status, 200);
    assert_eq!(current, bytes(11));
}

#[tokio::test]
async fn compact_answers_at_once_and_reports_when_done() {
    let s = TestServer::new();
    s.expect("PUT", "/db", None, 201).await;
    let first = s.expect("PUT", "/db/d", Some(json!({"n": 1})), 201).await["rev"].clone();
    s.expect("PUT", "/db/d", Some(json!({"_rev": first, "n": 2})), 201)
        .await;
    assert_eq!(
        s.expect("GET", "/db", None, 200).await["compact_running"],
        false
    );
    let answer = s.expect("POST", "/db/_compact", Some(json!({})), 202).await;
    assert_eq!(answer, json!({"ok": true}));
    // Polled as PouchDB does: the old revision is gone once `compact_running` turns false.
    while s.expect("GET", "/db", None, 200).await["compact_running"] == true {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let old = format!("/db/d?rev={}", first.as_str().unwrap());
    assert_error(&s.expect("GET", &old, None, 404).await, "not_found");
    assert_error(
        &s.expect("POST", "/missing/_compact", Some(json!({})), 404)
            .await,
        "not_found",
    );
}

#[tokio::test]
async fn stemmed_revision_is_not_served() {
    let s = TestServer::new();
    s.expect("PUT", "/db", None, 201).await;
    s.expect("PUT", "/db/_revs_limit", Some(json!(2)), 200)
        .await;
    let first = s.expect("PUT", "/db/d", Some(json!({"n": 0})), 201).await["rev"].clone();
    let mut rev = first.clone();
    for n in 1..4 {
        rev = s
            .expect("PUT", "/db/d", Some(json!({"_rev": rev, "n": n})), 201)
            .await["rev"]
            .clone();
    }
    // Not compacted yet: the body is still stored, but the revision left the tree.
    let path = format!("/db/d?rev={}&revs=true", first.as_str().unwrap());
    let body = s.expect("GET", &path, None, 404).await;
    assert_eq!(body, json!({"error": "not_found", "reason": "missing"}));
    let path = format!("/db/d?rev={}", rev.as_str().unwrap());
    assert_eq!(s.expect("GET", &path, None, 200).await["n"], 3);
}
