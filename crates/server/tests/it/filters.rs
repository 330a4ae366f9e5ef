//! Design-document filters on `_changes`: `filter=ddoc/name` and `filter=_view`, in every feed
//! format, with the request object and failures as CouchDB has them.

use serde_json::{Value, json};

use crate::support::{TestServer, feed_ids, row_ids};

async fn with_docs() -> TestServer {
    let s = TestServer::new();
    s.expect("PUT", "/db", None, 201).await;
    s.expect(
        "PUT",
        "/db/_design/app",
        Some(json!({
            "filters": {
                "even": "function (doc, req) { return doc.n % 2 === 0; }",
                "above": "function (doc, req) { return doc.n > Number(req.query.min); }",
                "mine": "function (doc) { return doc.owner === this.owner_wanted; }",
                "throws": "function (doc) { if (doc.n === 2) { throw new Error('two'); } return doc.n !== undefined; }",
            },
            "owner_wanted": "ann",
            "views": {
                "by_n": { "map": "function (doc) { if (doc.n >= 3) { emit(doc.n); } }" },
            },
        })),
        201,
    )
    .await;
    for n in 1..=4 {
        let owner = if n == 1 { "ann" } else { "bob" };
        s.expect(
            "PUT",
            &format!("/db/d{n}"),
            Some(json!({"n": n, "owner": owner})),
            201,
        )
        .await;
    }
    s
}

#[tokio::test]
async fn filter_functions_select_documents() {
    let s = with_docs().await;
    let feed = s
        .expect("GET", "/db/_changes?filter=app/even", None, 200)
        .await;
    assert_eq!(feed_ids(&feed), ["d2", "d4"]);
    let feed = s
        .expect("GET", "/db/_changes?filter=app/above&min=2", None, 200)
        .await;
    assert_eq!(feed_ids(&feed), ["d3", "d4"]);
    let feed = s
        .expect("GET", "/db/_changes?filter=app/mine", None, 200)
        .await;
    assert_eq!(feed_ids(&feed), ["d1"]);
    // A function that throws on a document fails the feed, as CouchDB's does: the body breaks
    // off instead of silently leaving the document out.
    let request = http::Request::builder()
        .uri("/db/_changes?filter=app/throws")
        .body(axum::body::Body::empty())
        .unwrap();
    let response = tower::ServiceExt::oneshot(s.router.clone(), request)
        .await
        .unwrap();
    let body = http_body_util::BodyExt::collect(response.into_body()).await;
    assert!(body.is_err(), "the feed went through a throwing filter");
    // POST works the same, and `limit` counts rows that passed.
    let feed = s
        .expect(
            "POST",
            "/db/_changes?filter=app/even&limit=1",
            Some(json!({})),
            200,
        )
        .await;
    assert_eq!(feed_ids(&feed), ["d2"]);
}

#[tokio::test]
async fn view_filters_pass_what_the_map_function_emits_for() {
    let s = with_docs().await;
    let feed = s
        .expect("GET", "/db/_changes?filter=_view&view=app/by_n", None, 200)
        .await;
    assert_eq!(feed_ids(&feed), ["d3", "d4"]);
    let missing = s
        .expect("GET", "/db/_changes?filter=_view&view=app/nope", None, 404)
        .await;
    assert_eq!(missing["reason"], "missing json key: nope");
}

#[tokio::test]
async fn filters_apply_to_longpoll_continuous_and_eventsource() {
    let s = with_docs().await;
    let feed = s
        .expect(
            "GET",
            "/db/_changes?filter=app/even&feed=longpoll",
            None,
            200,
        )
        .await;
    assert_eq!(feed_ids(&feed), ["d2", "d4"]);
    for (kind, prefix) in [("continuous", ""), ("eventsource", "data: ")] {
        let (status, _, bytes) = s
            .raw(
                "GET",
                &format!("/db/_changes?filter=app/even&feed={kind}&timeout=0"),
                &[],
                None,
            )
            .await;
        assert_eq!(status.as_u16(), 200);
        let text = String::from_utf8(bytes).unwrap();
        let seen: Vec<String> = text
            .lines()
            .filter_map(|l| l.strip_prefix(prefix))
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter_map(|v| v["id"].as_str().map(str::to_owned))
            .collect();
        assert_eq!(seen, ["d2", "d4"], "{kind}: {text}");
    }
}

#[tokio::test]
async fn a_changed_filter_function_is_used_at_once() {
    let s = with_docs().await;
    s.expect("GET", "/db/_changes?filter=app/even", None, 200)
        .await;
    let ddoc = s.expect("GET", "/db/_design/app", None, 200).await;
    let mut ddoc = ddoc.as_object().unwrap().clone();
    ddoc.insert(
        "filters".into(),
        json!({"even": "function (doc) { return doc.n === 1; }"}),
    );
    s.expect("PUT", "/db/_design/app", Some(Value::Object(ddoc)), 201)
        .await;
    let feed = s
        .expect("GET", "/db/_changes?filter=app/even", None, 200)
        .await;
    assert_eq!(feed_ids(&feed), ["d1"]);
}

#[tokio::test]
async fn replications_run_filter_functions_and_view_filters() {
    let s = with_docs().await;
    let replicate = |body: Value| {
        let s = &s;
        async move {
            let result = s.expect("POST", "/_replicate", Some(body), 200).await;
            assert_eq!(result["ok"], true, "{result}");
        }
    };
    replicate(
        json!({"source": "db", "target": "even", "create_target": true, "filter": "app/even"}),
    )
    .await;
    let got = s.expect("GET", "/even/_all_docs", None, 200).await;
    assert_eq!(row_ids(&got), ["d2", "d4"]);
    replicate(json!({
        "source": "db", "target": "above", "create_target": true,
        "filter": "app/above", "query_params": {"min": 3},
    }))
    .await;
    let got = s.expect("GET", "/above/_all_docs", None, 200).await;
    assert_eq!(row_ids(&got), ["d4"]);
    replicate(json!({
        "source": "db", "target": "viewed", "create_target": true,
        "filter": "_view", "query_params": {"view": "app/by_n"},
    }))
    .await;
    let got = s.expect("GET", "/viewed/_all_docs", None, 200).await;
    assert_eq!(row_ids(&got), ["d3", "d4"]);
    // A filter that does not exist fails the replication.
    let (status, body) = s
        .call(
            "POST",
            "/_replicate",
            Some(json!({"source": "db", "target": "none", "create_target": true, "filter": "app/nope"})),
        )
        .await;
    assert!(
        status.is_client_error() || status.is_server_error(),
        "{status} {body}"
    );
}
