//! Mango over HTTP: `_index`, `_find`, `_explain` and their errors in CouchDB's shape.

use serde_json::json;

use crate::support::{TestServer, assert_error};

#[tokio::test]
async fn indexes_are_created_listed_used_and_deleted() {
    let s = TestServer::new();
    s.expect("PUT", "/db", None, 201).await;
    for (id, rank) in [("a", 3), ("b", 1), ("c", 2)] {
        s.expect(
            "PUT",
            &format!("/db/{id}"),
            Some(json!({"rank": rank})),
            201,
        )
        .await;
    }
    let created = s
        .expect(
            "POST",
            "/db/_index",
            Some(json!({"index": {"fields": ["rank"]}, "name": "by-rank", "ddoc": "ranks"})),
            200,
        )
        .await;
    assert_eq!(
        created,
        json!({"result": "created", "id": "_design/ranks", "name": "by-rank"})
    );
    let again = s
        .expect(
            "POST",
            "/db/_index",
            Some(json!({"index": {"fields": ["rank"]}, "name": "by-rank", "ddoc": "ranks"})),
            200,
        )
        .await;
    assert_eq!(again["result"], "exists");
    // The index is a query design document.
    let ddoc = s.expect("GET", "/db/_design/ranks", None, 200).await;
    assert_eq!(ddoc["language"], "query");
    assert_eq!(
        ddoc["views"]["by-rank"]["map"]["fields"],
        json!({"rank": "asc"})
    );

    let listed = s.expect("GET", "/db/_index", None, 200).await;
    assert_eq!(listed["total_rows"], 2);
    assert_eq!(
        listed["indexes"][1]["def"],
        json!({"fields": [{"rank": "asc"}]})
    );

    let found = s
        .expect(
            "POST",
            "/db/_find",
            Some(json!({"selector": {"rank": {"$gte": 2}}, "sort": ["rank"], "fields": ["_id"]})),
            200,
        )
        .await;
    assert_eq!(found["docs"], json!([{"_id": "c"}, {"_id": "a"}]));
    assert!(found["bookmark"].is_string());
    assert!(found.get("warning").is_none());
    let explained = s
        .expect(
            "POST",
            "/db/_explain",
            Some(json!({"selector": {"rank": {"$gte": 2}}})),
            200,
        )
        .await;
    assert_eq!(explained["index"]["name"], "by-rank");
    assert_eq!(explained["dbname"], "db");

    s.expect("DELETE", "/db/_index/ranks/json/by-rank", None, 200)
        .await;
    let gone = s
        .expect("DELETE", "/db/_index/_design/ranks/json/by-rank", None, 404)
        .await;
    assert_error(&gone, "not_found");
    s.expect("GET", "/db/_design/ranks", None, 404).await;
}

#[tokio::test]
async fn bad_queries_get_couchdbs_errors() {
    let s = TestServer::new();
    s.expect("PUT", "/db", None, 201).await;
    let cases = [
        (json!({"fields": ["_id"]}), "missing_required_key"),
        (json!({"selector": {"a": {"$nope": 1}}}), "bad_request"),
        (json!({"selector": {}, "sort": ["a"]}), "no_usable_index"),
        (
            json!({"selector": {}, "sort": [{"a": "asc"}, {"b": "desc"}]}),
            "unsupported_mixed_sort",
        ),
        (json!({"selector": {}, "limit": -1}), "bad_request"),
        (
            json!({"selector": {}, "bookmark": "not a bookmark"}),
            "invalid_bookmark",
        ),
    ];
    for (body, code) in cases {
        let answer = s.expect("POST", "/db/_find", Some(body.clone()), 400).await;
        assert_error(&answer, code);
    }
    let answer = s.expect("POST", "/db/_index", Some(json!({})), 400).await;
    assert_error(&answer, "missing_required_key");
    let answer = s
        .expect("POST", "/nope/_find", Some(json!({"selector": {}})), 404)
        .await;
    assert_error(&answer, "not_found");
    let answer = s.expect("GET", "/db/_find", None, 405).await;
    assert_error(&answer, "method_not_allowed");
}
