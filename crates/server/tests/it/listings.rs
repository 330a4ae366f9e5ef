//! `_design_docs` and `_local_docs`, listed as `_all_docs` lists documents.

use serde_json::{Value, json};

use crate::support::{TestServer, row_ids};

#[tokio::test]
async fn design_docs_lists_only_design_documents() {
    let s = TestServer::new();
    s.expect("PUT", "/db", None, 201).await;
    for id in ["a", "_design/b", "_design/c", "z", "_design/d"] {
        s.expect("PUT", &format!("/db/{id}"), Some(json!({"v": 1})), 201)
            .await;
    }
    s.expect("PUT", "/db/_local/x", Some(json!({"v": 1})), 201)
        .await;
    let all = s.expect("GET", "/db/_design_docs", None, 200).await;
    assert_eq!(row_ids(&all), ["_design/b", "_design/c", "_design/d"]);
    assert_eq!(all["total_rows"], 3);
    assert_eq!(all["offset"], 0);
    let page = s
        .expect(
            "GET",
            "/db/_design_docs?startkey=%22_design%2Fc%22&include_docs=true",
            None,
            200,
        )
        .await;
    assert_eq!(row_ids(&page), ["_design/c", "_design/d"]);
    assert_eq!(page["offset"], 1);
    assert_eq!(page["rows"][0]["doc"]["v"], 1);
    let page = s
        .expect("GET", "/db/_design_docs?descending=true&limit=2", None, 200)
        .await;
    assert_eq!(row_ids(&page), ["_design/d", "_design/c"]);
    let page = s
        .expect(
            "GET",
            "/db/_design_docs?endkey=%22_design%2Fc%22&inclusive_end=false",
            None,
            200,
        )
        .await;
    assert_eq!(row_ids(&page), ["_design/b"]);
    let keys = s
        .expect(
            "POST",
            "/db/_design_docs",
            Some(json!({"keys": ["_design/c", "_design/nope"]})),
            200,
        )
        .await;
    assert_eq!(keys["rows"][0]["id"], "_design/c");
    assert_eq!(keys["rows"][1]["error"], "not_found");
    s.expect("GET", "/nodb/_design_docs", None, 404).await;
}

#[tokio::test]
async fn local_docs_lists_local_documents() {
    let s = TestServer::new();
    s.expect("PUT", "/db", None, 201).await;
    s.expect("PUT", "/db/plain", Some(json!({})), 201).await;
    s.expect("PUT", "/db/_design/d", Some(json!({})), 201).await;
    for id in ["b", "a", "c"] {
        s.expect(
            "PUT",
            &format!("/db/_local/{id}"),
            Some(json!({"n": id})),
            201,
        )
        .await;
    }
    s.expect(
        "PUT",
        "/db/_local/b",
        Some(json!({"_rev": "0-1", "n": "b2"})),
        201,
    )
    .await;
    let all = s.expect("GET", "/db/_local_docs", None, 200).await;
    assert_eq!(row_ids(&all), ["_local/a", "_local/b", "_local/c"]);
    assert_eq!(all["total_rows"], Value::Null);
    assert_eq!(all["rows"][1]["value"]["rev"], "0-2");
    let docs = s
        .expect(
            "GET",
            "/db/_local_docs?include_docs=true&descending=true&limit=2",
            None,
            200,
        )
        .await;
    assert_eq!(row_ids(&docs), ["_local/c", "_local/b"]);
    assert_eq!(
        docs["rows"][1]["doc"],
        json!({"_id": "_local/b", "_rev": "0-2", "n": "b2"})
    );
    let ranged = s
        .expect(
            "GET",
            "/db/_local_docs?startkey=%22_local%2Fb%22&skip=1",
            None,
            200,
        )
        .await;
    assert_eq!(row_ids(&ranged), ["_local/c"]);
    let keys = s
        .expect(
            "POST",
            "/db/_local_docs",
            Some(json!({"keys": ["_local/c", "_local/zz"]})),
            200,
        )
        .await;
    assert_eq!(keys["rows"][0]["id"], "_local/c");
    assert_eq!(keys["rows"][1]["error"], "not_found");
    s.expect("GET", "/nodb/_local_docs", None, 404).await;
}

#[tokio::test]
async fn show_list_update_and_rewrite_are_not_implemented() {
    let s = TestServer::new();
    s.expect("PUT", "/db", None, 201).await;
    s.expect(
        "PUT",
        "/db/_design/app",
        Some(json!({"shows": {"s": "function () {}"}})),
        201,
    )
    .await;
    for path in ["_show/s", "_list/l/v", "_update/u/doc", "_rewrite/x/y"] {
        for method in ["GET", "POST", "PUT"] {
            let body = s
                .expect(method, &format!("/db/_design/app/{path}"), None, 501)
                .await;
            assert_eq!(body["error"], "not_implemented", "{body}");
            assert!(
                body["reason"].as_str().unwrap().contains("deprecated"),
                "{body}"
            );
        }
    }
}
