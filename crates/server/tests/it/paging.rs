//! Paging parameters: `pending` and `offset` as defined for large databases, and `skip`/`limit`
//! values too large for any arithmetic on them.

use serde_json::{Value, json};

use crate::support::{TestServer, seq_n};

async fn bulk(s: &TestServer, ids: impl Iterator<Item = String>) {
    let docs: Vec<Value> = ids.map(|id| json!({"_id": id})).collect();
    for chunk in docs.chunks(2000) {
        s.expect("POST", "/db/_bulk_docs", Some(json!({"docs": chunk})), 201)
            .await;
    }
}

#[tokio::test]
async fn changes_pending_is_exact_for_short_tails_and_an_upper_bound_beyond() {
    let s = TestServer::new();
    s.expect("PUT", "/db", None, 201).await;
    bulk(&s, (0..1200).map(|i| format!("d{i:04}"))).await;
    // Documents changed twice leave gaps in the sequence: their first sequences are gone.
    let all = s
        .expect("GET", "/db/_all_docs?skip=500&limit=100", None, 200)
        .await;
    let again: Vec<Value> = all["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| json!({"_id": r["id"], "_rev": r["value"]["rev"], "again": true}))
        .collect();
    s.expect("POST", "/db/_bulk_docs", Some(json!({"docs": again})), 201)
        .await;

    // 1,190 rows remain after the page; past 1,000 the answer is the smaller of the sequences
    // after it (1,290) and the documents (1,200).
    let page = s.expect("GET", "/db/_changes?limit=10", None, 200).await;
    assert_eq!(seq_n(&page["last_seq"]), 10);
    assert_eq!(page["pending"], 1200);
    // A short tail is counted exactly.
    let page = s
        .expect("GET", "/db/_changes?since=1250&limit=10", None, 200)
        .await;
    assert_eq!(seq_n(&page["last_seq"]), 1260);
    assert_eq!(page["pending"], 40);
}

#[tokio::test]
async fn all_docs_offset_is_exact_near_the_start_and_null_deep_in() {
    let s = TestServer::new();
    s.expect("PUT", "/db", None, 201).await;
    bulk(&s, (0..10_050).map(|i| format!("d{i:05}"))).await;
    let offset = |q: &'static str| {
        let s = &s;
        async move {
            s.expect("GET", &format!("/db/_all_docs?limit=1&{q}"), None, 200)
                .await["offset"]
                .clone()
        }
    };
    // Without a start key the rows before the page are the skipped ones.
    assert_eq!(offset("skip=10040").await, 10040);
    assert_eq!(offset("skip=20000").await, 10050);
    assert_eq!(offset("descending=true&skip=3").await, 3);
    // With one they are counted, up to 10,000.
    assert_eq!(offset("startkey=%22d09000%22&skip=2").await, 9002);
    assert_eq!(offset("startkey=%22d01000%22&descending=true").await, 9049);
    assert_eq!(offset("startkey=%22d10020%22").await, Value::Null);
}

#[tokio::test]
async fn huge_skip_and_limit_neither_panic_nor_wrap() {
    let s = TestServer::new();
    s.expect("PUT", "/db", None, 201).await;
    bulk(&s, ["a", "b", "c"].into_iter().map(str::to_owned)).await;
    let max = u64::MAX;
    for q in [
        format!("startkey=%22b%22&skip={max}"),
        format!("skip={max}&limit={max}"),
        "startkey=%22b%22&skip=99999999999999999999999".to_owned(),
    ] {
        let page = s
            .expect("GET", &format!("/db/_all_docs?{q}"), None, 200)
            .await;
        assert_eq!(page["rows"], json!([]), "{q}");
        assert_eq!(page["offset"], 3, "{q}");
        assert_eq!(page["total_rows"], 3, "{q}");
    }
    let page = s
        .expect(
            "GET",
            &format!("/db/_all_docs?startkey=%22b%22&limit={max}"),
            None,
            200,
        )
        .await;
    assert_eq!(page["offset"], 1);
    assert_eq!(page["rows"].as_array().unwrap().len(), 2);
    for path in [
        format!("/db/_changes?limit={max}"),
        format!("/db/_changes?feed=longpoll&timeout={max}&limit={max}"),
        format!("/db/_changes?since=99999999999999999999999&limit={max}"),
        format!("/db/_events?limit={max}"),
        format!("/db/_conflicts?limit={max}"),
        format!("/_all_dbs?skip={max}&limit={max}"),
    ] {
        s.expect("GET", &path, None, 200).await;
    }
    let feed = s
        .expect("GET", &format!("/db/_changes?limit={max}"), None, 200)
        .await;
    assert_eq!(feed["results"].as_array().unwrap().len(), 3);
    assert_eq!(feed["pending"], 0);
}
