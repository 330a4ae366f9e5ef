//! Map/reduce views: queries with CouchDB's parameters, reduce functions, and indexes kept up
//! to date incrementally after writes, deletions, conflicts and replication.

use serde_json::{Value, json};

use crate::support::{TestServer, assert_error, row_ids, seq_n, seq_suffix};

fn keys(result: &Value) -> Vec<Value> {
    result["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["key"].clone())
        .collect()
}

async fn with_views() -> TestServer {
    let s = TestServer::new();
    s.expect("PUT", "/db", None, 201).await;
    s.expect(
        "PUT",
        "/db/_design/app",
        Some(json!({
            "views": {
                "by_n": { "map": "function (doc) { if (doc.n !== undefined) emit(doc.n, doc.tag); }" },
                "sum": { "map": "function (doc) { if (doc.n !== undefined) emit([doc.tag, doc.n], doc.n); }", "reduce": "_sum" },
                "count": { "map": "function (doc) { if (doc.n !== undefined) emit(doc.tag, 1); }", "reduce": "_count" },
                "stats": { "map": "function (doc) { if (doc.n !== undefined) emit(null, doc.n); }", "reduce": "_stats" },
                "distinct": { "map": "function (doc) { if (doc.tag) emit(doc.tag); }", "reduce": "_approx_count_distinct" },
                "js": {
                    "map": "function (doc) { if (doc.n !== undefined) emit(doc.tag, doc.n); }",
                    "reduce": "function (keys, values, rereduce) { return sum(values) * (rereduce ? 1 : 1); }",
                },
                "lib": { "twice": "exports.twice = function (x) { return 2 * x; };" },
                "required": { "map": "function (doc) { if (doc.n) emit(require('views/lib/twice').twice(doc.n)); }" },
                "throws": { "map": "function (doc) { if (doc.n === 2) throw new Error('no two'); if (doc.n) emit(doc.n); }" },
            },
        })),
        201,
    )
    .await;
    let docs: Vec<Value> = (1..=5)
        .map(|n| json!({"_id": format!("d{n}"), "n": n, "tag": if n % 2 == 0 { "even" } else { "odd" }}))
        .collect();
    s.expect("POST", "/db/_bulk_docs", Some(json!({"docs": docs})), 201)
        .await;
    s
}

#[tokio::test]
async fn map_queries_take_couchdb_parameters() {
    let s = with_views().await;
    let all = s
        .expect("GET", "/db/_design/app/_view/by_n", None, 200)
        .await;
    assert_eq!(all["total_rows"], 5);
    assert_eq!(all["offset"], 0);
    assert_eq!(
        keys(&all),
        [json!(1), json!(2), json!(3), json!(4), json!(5)]
    );
    assert_eq!(
        all["rows"][0],
        json!({"id": "d1", "key": 1, "value": "odd"})
    );
    let r = s
        .expect("GET", "/db/_design/app/_view/by_n?key=3", None, 200)
        .await;
    assert_eq!(row_ids(&r), ["d3"]);
    let r = s
        .expect(
            "GET",
            "/db/_design/app/_view/by_n?startkey=2&endkey=4&inclusive_end=false",
            None,
            200,
        )
        .await;
    assert_eq!(row_ids(&r), ["d2", "d3"]);
    assert_eq!(r["offset"], 1);
    let r = s
        .expect(
            "GET",
            "/db/_design/app/_view/by_n?descending=true&startkey=4&limit=2&skip=1",
            None,
            200,
        )
        .await;
    assert_eq!(row_ids(&r), ["d3", "d2"]);
    let r = s
        .expect(
            "POST",
            "/db/_design/app/_view/by_n",
            Some(json!({"keys": [5, 1, 9]})),
            200,
        )
        .await;
    assert_eq!(row_ids(&r), ["d5", "d1"]);
    let r = s
        .expect(
            "GET",
            "/db/_design/app/_view/by_n?limit=1&include_docs=true&update_seq=true",
            None,
            200,
        )
        .await;
    assert_eq!(r["rows"][0]["doc"]["_id"], "d1");
    assert_eq!(r["rows"][0]["doc"]["n"], 1);
    // Shown as the database's sequences are.
    let info = s.expect("GET", "/db", None, 200).await;
    assert!(seq_n(&r["update_seq"]) > 0, "{r}");
    assert_eq!(
        seq_suffix(&r["update_seq"]),
        seq_suffix(&info["update_seq"])
    );
    let r = s
        .expect(
            "GET",
            "/db/_design/app/_view/required?startkey=4&endkey=6",
            None,
            200,
        )
        .await;
    assert_eq!(keys(&r), [json!(4), json!(6)]);
    let queries = s
        .expect(
            "POST",
            "/db/_design/app/_view/by_n/queries",
            Some(json!({"queries": [{"keys": [2]}, {"limit": 1, "descending": true}]})),
            200,
        )
        .await;
    assert_eq!(row_ids(&queries["results"][0]), ["d2"]);
    assert_eq!(row_ids(&queries["results"][1]), ["d5"]);
    // Errors as CouchDB's.
    assert_error(
        &s.expect("GET", "/db/_design/app/_view/nope", None, 404)
            .await,
        "not_found",
    );
    assert_error(
        &s.expect("GET", "/db/_design/none/_view/by_n", None, 404)
            .await,
        "not_found",
    );
    assert_error(
        &s.expect("GET", "/db/_design/app/_view/by_n?group=true", None, 400)
            .await,
        "query_parse_error",
    );
    assert_error(
        &s.expect("GET", "/db/_design/app/_view/by_n?key=nojson", None, 400)
            .await,
        "query_parse_error",
    );
}

#[tokio::test]
async fn reduce_views_group_and_rereduce() {
    let s = with_views().await;
    let r = s
        .expect("GET", "/db/_design/app/_view/sum", None, 200)
        .await;
    assert_eq!(r["rows"], json!([{"key": null, "value": 15}]));
    let r = s
        .expect("GET", "/db/_design/app/_view/sum?group_level=1", None, 200)
        .await;
    assert_eq!(
        r["rows"],
        json!([{"key": ["even"], "value": 6}, {"key": ["odd"], "value": 9}])
    );
    let r = s
        .expect(
            "GET",
            "/db/_design/app/_view/sum?reduce=false&limit=1",
            None,
            200,
        )
        .await;
    assert_eq!(r["rows"][0]["key"], json!(["even", 2]));
    let r = s
        .expect("GET", "/db/_design/app/_view/count?group=true", None, 200)
        .await;
    assert_eq!(
        r["rows"],
        json!([{"key": "even", "value": 2}, {"key": "odd", "value": 3}])
    );
    let r = s
        .expect(
            "POST",
            "/db/_design/app/_view/count?group=true",
            Some(json!({"keys": ["odd"]})),
            200,
        )
        .await;
    assert_eq!(r["rows"], json!([{"key": "odd", "value": 3}]));
    let r = s
        .expect("GET", "/db/_design/app/_view/stats", None, 200)
        .await;
    assert_eq!(
        r["rows"][0]["value"],
        json!({"sum": 15, "count": 5, "min": 1, "max": 5, "sumsqr": 55})
    );
    let r = s
        .expect("GET", "/db/_design/app/_view/distinct", None, 200)
        .await;
    assert_eq!(r["rows"][0]["value"], 2);
    let r = s
        .expect("GET", "/db/_design/app/_view/js?group=true", None, 200)
        .await;
    assert_eq!(
        r["rows"],
        json!([{"key": "even", "value": 6}, {"key": "odd", "value": 9}])
    );
    assert_error(
        &s.expect(
            "POST",
            "/db/_design/app/_view/count",
            Some(json!({"keys": ["odd"]})),
            400,
        )
        .await,
        "query_parse_error",
    );
}

#[tokio::test]
async fn a_throwing_map_function_skips_only_that_document() {
    let s = with_views().await;
    let r = s
        .expect("GET", "/db/_design/app/_view/throws", None, 200)
        .await;
    assert_eq!(row_ids(&r), ["d1", "d3", "d4", "d5"]);
}

#[tokio::test]
async fn views_follow_writes_deletions_and_conflicts() {
    let s = with_views().await;
    s.expect("GET", "/db/_design/app/_view/by_n", None, 200)
        .await;
    // An update moves the row, a deletion removes it, a new document adds one.
    let d1 = s.expect("GET", "/db/d1", None, 200).await;
    s.expect(
        "PUT",
        "/db/d1",
        Some(json!({"_rev": d1["_rev"], "n": 10, "tag": "odd"})),
        201,
    )
    .await;
    let d2 = s.expect("GET", "/db/d2", None, 200).await;
    s.expect(
        "DELETE",
        &format!("/db/d2?rev={}", d2["_rev"].as_str().unwrap()),
        None,
        200,
    )
    .await;
    s.expect("PUT", "/db/d6", Some(json!({"n": 6, "tag": "even"})), 201)
        .await;
    let r = s
        .expect("GET", "/db/_design/app/_view/by_n", None, 200)
        .await;
    assert_eq!(row_ids(&r), ["d3", "d4", "d5", "d6", "d1"]);
    assert_eq!(r["total_rows"], 5);
    // A conflict: the view shows the winning revision's row only.
    s.expect(
        "POST",
        "/db/_bulk_docs",
        Some(json!({"new_edits": false, "docs": [{"_id": "d3", "_rev": "9-zzzz", "n": 30, "tag": "odd"}]})),
        201,
    )
    .await;
    let r = s
        .expect("GET", "/db/_design/app/_view/by_n", None, 200)
        .await;
    assert_eq!(
        keys(&r),
        [json!(4), json!(5), json!(6), json!(10), json!(30)]
    );
    // `update=false` answers from the index as it is; the next query catches up.
    s.expect("PUT", "/db/d7", Some(json!({"n": 0, "tag": "even"})), 201)
        .await;
    let stale = s
        .expect("GET", "/db/_design/app/_view/by_n?update=false", None, 200)
        .await;
    assert_eq!(stale["total_rows"], 5);
    let fresh = s
        .expect(
            "GET",
            "/db/_design/app/_view/by_n?stale=update_after",
            None,
            200,
        )
        .await;
    assert!(
        fresh["total_rows"] == 5 || fresh["total_rows"] == 6,
        "{fresh}"
    );
    let r = s
        .expect("GET", "/db/_design/app/_view/by_n", None, 200)
        .await;
    assert_eq!(r["total_rows"], 6);
    // Replicated documents are indexed like any other.
    s.expect("PUT", "/src", None, 201).await;
    s.expect(
        "PUT",
        "/src/r1",
        Some(json!({"n": 100, "tag": "even"})),
        201,
    )
    .await;
    s.expect(
        "POST",
        "/_replicate",
        Some(json!({"source": "src", "target": "db"})),
        200,
    )
    .await;
    let r = s
        .expect("GET", "/db/_design/app/_view/by_n?key=100", None, 200)
        .await;
    assert_eq!(row_ids(&r), ["r1"]);
}

#[tokio::test]
async fn a_changed_map_function_builds_a_new_index_and_cleanup_drops_the_old() {
    let s = with_views().await;
    let info = s.expect("GET", "/db/_design/app/_info", None, 200).await;
    let old_sig = info["view_index"]["signature"].as_str().unwrap().to_owned();
    s.expect("GET", "/db/_design/app/_view/by_n", None, 200)
        .await;
    let info = s.expect("GET", "/db/_design/app/_info", None, 200).await;
    assert!(
        info["view_index"]["update_seq"].as_u64().unwrap() > 0,
        "{info}"
    );
    let mut ddoc = s.expect("GET", "/db/_design/app", None, 200).await;
    ddoc["views"]["by_n"]["map"] = json!("function (doc) { if (doc.n) emit(-doc.n); }");
    s.expect("PUT", "/db/_design/app", Some(ddoc), 201).await;
    let info = s.expect("GET", "/db/_design/app/_info", None, 200).await;
    assert_ne!(info["view_index"]["signature"], old_sig.as_str());
    let r = s
        .expect("GET", "/db/_design/app/_view/by_n?limit=1", None, 200)
        .await;
    assert_eq!(r["rows"][0]["key"], -5);
    s.expect("POST", "/db/_view_cleanup", Some(json!({})), 202)
        .await;
    let r = s
        .expect("GET", "/db/_design/app/_view/by_n?limit=1", None, 200)
        .await;
    assert_eq!(r["rows"][0]["key"], -5);
}

/// One database, one view, some documents: the answer of a query.
async fn one_view(view: Value, docs: Value, query: &str) -> (u16, Value) {
    let s = TestServer::new();
    s.expect("PUT", "/db", None, 201).await;
    s.expect(
        "PUT",
        "/db/_design/t",
        Some(json!({"views": {"v": view}})),
        201,
    )
    .await;
    s.expect("POST", "/db/_bulk_docs", Some(json!({"docs": docs})), 201)
        .await;
    let (status, body) = s
        .call("GET", &format!("/db/_design/t/_view/v{query}"), None)
        .await;
    (status.as_u16(), body)
}

#[tokio::test]
async fn sum_adds_numbers_to_the_first_element_of_arrays() {
    let (status, r) = one_view(
        json!({"map": "function (doc) { emit(null, doc.val); }", "reduce": "_sum"}),
        json!([{"val": 2}, {"val": [1, 2, 3, 4]}, {"val": [3, 4]}, {"val": 1}]),
        "",
    )
    .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["rows"], json!([{"key": null, "value": [7, 6, 3, 4]}]));
}

#[tokio::test]
async fn built_in_reduces_are_recognised_by_their_prefix() {
    let (status, r) = one_view(
        json!({"map": "function (doc) { emit(doc.val, 1); }", "reduce": "_sum\n \r\nandothergarbage"}),
        json!([{"val": "bar"}, {"val": "bar"}, {"val": "baz"}]),
        "?group_level=999",
    )
    .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(
        r["rows"],
        json!([{"key": "bar", "value": 2}, {"key": "baz", "value": 1}])
    );
    let (status, r) = one_view(
        json!({"map": "function (doc) { emit(null, doc.val); }", "reduce": "_product"}),
        json!([{"val": 1}]),
        "",
    )
    .await;
    assert_eq!(status, 500, "{r}");
    assert_error(&r, "builtin_reduce_error");
}

#[tokio::test]
async fn rows_of_one_document_with_one_key_sort_by_value() {
    let (_, r) = one_view(
        json!({"map": "function (doc) { emit(doc.k); emit(doc.k, 'm'); emit(doc.k, 'c'); }"}),
        json!([{"_id": "d1", "k": "x"}]),
        "",
    )
    .await;
    let values: Vec<Value> = r["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["value"].clone())
        .collect();
    assert_eq!(values, [Value::Null, json!("c"), json!("m")]);
}

#[tokio::test]
async fn a_throwing_reduce_gives_null_and_a_reversed_range_is_refused() {
    let (status, r) = one_view(
        json!({"map": "function (doc) { emit(doc.name); }", "reduce": "function (keys) { return keys[0].foo.bar; }"}),
        json!([{"_id": "1", "name": "bar"}]),
        "?group=true",
    )
    .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["rows"], json!([{"key": "bar", "value": null}]));
    let (status, r) = one_view(
        json!({"map": "function (doc) { emit(doc._id); }"}),
        json!([{"_id": "1"}]),
        "?startkey=%225%22&endkey=%224%22",
    )
    .await;
    assert_eq!(status, 400, "{r}");
    assert_error(&r, "query_parse_error");
}

#[tokio::test]
async fn map_functions_see_conflicts() {
    let s = TestServer::new();
    s.expect("PUT", "/db", None, 201).await;
    s.expect(
        "PUT",
        "/db/_design/t",
        Some(json!({"views": {"v": {"map": "function (doc) { if (doc._conflicts) emit(doc._conflicts); }"}}})),
        201,
    )
    .await;
    s.expect(
        "POST",
        "/db/_bulk_docs",
        Some(json!({"new_edits": false, "docs": [
            {"_id": "c", "_rev": "1-aaaa", "v": 1},
            {"_id": "c", "_rev": "1-bbbb", "v": 2},
        ]})),
        201,
    )
    .await;
    let r = s
        .expect(
            "GET",
            "/db/_design/t/_view/v?include_docs=true&conflicts=true",
            None,
            200,
        )
        .await;
    assert_eq!(r["rows"][0]["key"], json!(["1-aaaa"]));
    assert_eq!(r["rows"][0]["doc"]["_conflicts"], json!(["1-aaaa"]));
}

#[tokio::test]
async fn stats_of_arrays_are_element_by_element() {
    let (status, r) = one_view(
        json!({"map": "function (doc) { emit(null, doc.val); }", "reduce": "_stats"}),
        json!([{"val": [1, 2, 3]}, {"val": [4, 5, 6]}, {"val": [7, 8, 9]}]),
        "",
    )
    .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(
        r["rows"][0]["value"],
        json!([
            {"sum": 12, "count": 3, "min": 1, "max": 7, "sumsqr": 66},
            {"sum": 15, "count": 3, "min": 2, "max": 8, "sumsqr": 93},
            {"sum": 18, "count": 3, "min": 3, "max": 9, "sumsqr": 126},
        ])
    );
    for bad in [
        json!([{"val": [1, 2, 3]}, {"val": 4}]),
        json!([{"val": [1, 2, 3]}, {"val": [1, 2]}]),
    ] {
        let (status, r) = one_view(
            json!({"map": "function (doc) { emit(null, doc.val); }", "reduce": "_stats"}),
            bad,
            "",
        )
        .await;
        assert_eq!(status, 500, "{r}");
        assert_error(&r, "builtin_reduce_error");
    }
}

#[tokio::test]
async fn indexes_go_with_their_design_document_and_with_cleanup() {
    let s = with_views().await;
    let built = s
        .expect("GET", "/db/_design/app/_view/by_n", None, 200)
        .await;
    assert_eq!(built["total_rows"], 5);
    let ddoc = s.expect("GET", "/db/_design/app", None, 200).await;
    let views = ddoc["views"].clone();
    s.expect(
        "DELETE",
        &format!("/db/_design/app?rev={}", ddoc["_rev"].as_str().unwrap()),
        None,
        200,
    )
    .await;
    // The same views again: an index kept from before would answer without being built.
    s.expect(
        "PUT",
        "/db/_design/again",
        Some(json!({"views": views.clone()})),
        201,
    )
    .await;
    let stale = s
        .expect(
            "GET",
            "/db/_design/again/_view/by_n?update=false",
            None,
            200,
        )
        .await;
    assert_eq!(stale["total_rows"], 0, "{stale}");
    let built = s
        .expect("GET", "/db/_design/again/_view/by_n", None, 200)
        .await;
    assert_eq!(built["total_rows"], 5);
    // A changed map function leaves the old index until `_view_cleanup`.
    let mut ddoc = s.expect("GET", "/db/_design/again", None, 200).await;
    ddoc["views"]["by_n"]["map"] = json!("function (doc) { emit(doc._id); }");
    let changed = s
        .expect("PUT", "/db/_design/again", Some(ddoc.clone()), 201)
        .await;
    s.expect("POST", "/db/_view_cleanup", Some(json!({})), 202)
        .await;
    ddoc["_rev"] = changed["rev"].clone();
    ddoc["views"] = views;
    s.expect("PUT", "/db/_design/again", Some(ddoc), 201).await;
    let stale = s
        .expect(
            "GET",
            "/db/_design/again/_view/by_n?update=false",
            None,
            200,
        )
        .await;
    assert_eq!(stale["total_rows"], 0, "{stale}");
}

#[tokio::test]
async fn long_answers_are_written_page_by_page_without_losing_a_row() {
    let s = TestServer::new();
    s.expect("PUT", "/db", None, 201).await;
    s.expect(
        "PUT",
        "/db/_design/t",
        Some(json!({"views": {"v": {"map": "function (doc) { emit(doc.n, null); emit(doc.n, 1); }"}}})),
        201,
    )
    .await;
    let docs: Vec<Value> = (0..700)
        .map(|n| json!({"_id": format!("d{n:04}"), "n": n}))
        .collect();
    s.expect("POST", "/db/_bulk_docs", Some(json!({"docs": docs})), 201)
        .await;
    let all = s.expect("GET", "/db/_design/t/_view/v", None, 200).await;
    let rows = all["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 1400);
    assert_eq!(all["total_rows"], 1400);
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row["key"], (i / 2) as u64, "row {i}");
        assert_eq!(
            row["value"],
            if i % 2 == 0 { Value::Null } else { json!(1) },
            "row {i}"
        );
    }
    let page = s
        .expect(
            "GET",
            "/db/_design/t/_view/v?skip=499&limit=600&descending=true",
            None,
            200,
        )
        .await;
    let rows = page["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 600);
    assert_eq!(page["offset"], 499);
    assert_eq!(rows[0]["key"], (1400 - 1 - 499) / 2);
    assert_eq!(rows[599]["key"], (1400 - 1 - 499 - 599) / 2);
    let keys: Vec<u64> = (0..700).rev().collect();
    let by_keys = s
        .expect(
            "POST",
            "/db/_design/t/_view/v?skip=3&limit=1000",
            Some(json!({"keys": keys})),
            200,
        )
        .await;
    let rows = by_keys["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 1000);
    assert_eq!(rows[0]["key"], 698);
    assert_eq!(rows[999]["key"], 699 - (1003 / 2) as u64);
}

#[tokio::test]
async fn views_in_another_language_are_not_implemented() {
    let s = TestServer::new();
    s.expect("PUT", "/db", None, 201).await;
    s.expect(
        "PUT",
        "/db/_design/erl",
        Some(
            json!({"language": "erlang", "views": {"v": {"map": "fun({Doc}) -> Emit(1, 1) end."}}}),
        ),
        201,
    )
    .await;
    let body = s.expect("GET", "/db/_design/erl/_view/v", None, 501).await;
    assert_error(&body, "not_implemented");
    // Other design documents' views still work, and cleanup leaves them be.
    s.expect("POST", "/db/_view_cleanup", Some(json!({})), 202)
        .await;
}

/// Views larger than one page of the store (1,000 rows), with one document emitting the same key
/// 2,500 times across page boundaries: every row read once, in order, in both directions, with
/// `skip`, and reduced groups whole.
#[tokio::test]
async fn views_longer_than_a_page_read_every_row_once() {
    let s = TestServer::new();
    s.expect("PUT", "/db", None, 201).await;
    let map = "function (doc) { if (doc.many) { for (var i = 0; i < doc.many; i++) emit(1, i); } \
               else emit(doc.k, 1); }";
    s.expect(
        "PUT",
        "/db/_design/big",
        Some(json!({"views": {"v": {"map": map, "reduce": "_sum"}}})),
        201,
    )
    .await;
    let mut docs: Vec<Value> = (0..1500)
        .map(|i| json!({"_id": format!("d{i:04}"), "k": i % 3}))
        .collect();
    docs.push(json!({"_id": "many", "many": 2500}));
    s.expect("POST", "/db/_bulk_docs", Some(json!({"docs": docs})), 201)
        .await;

    // Expected order: by key, then doc id, then emission order.
    let mut expected: Vec<(i64, String, i64)> =
        (0..1500).map(|i| (i % 3, format!("d{i:04}"), 1)).collect();
    expected.extend((0..2500).map(|i| (1, "many".to_owned(), i)));
    expected.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    let got = |v: &Value| -> Vec<(i64, String, i64)> {
        v["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let id = r["id"].as_str().unwrap().to_owned();
                (r["key"].as_i64().unwrap(), id, r["value"].as_i64().unwrap())
            })
            .collect()
    };
    let all = s
        .expect("GET", "/db/_design/big/_view/v?reduce=false", None, 200)
        .await;
    assert_eq!(all["total_rows"], 4000);
    assert_eq!(got(&all), expected);
    let page = s
        .expect(
            "GET",
            "/db/_design/big/_view/v?reduce=false&skip=700&limit=2600",
            None,
            200,
        )
        .await;
    assert_eq!(got(&page), expected[700..3300]);
    let mut reversed = expected.clone();
    reversed.reverse();
    let desc = s
        .expect(
            "GET",
            "/db/_design/big/_view/v?reduce=false&descending=true",
            None,
            200,
        )
        .await;
    assert_eq!(got(&desc), reversed);

    let grouped = s
        .expect("GET", "/db/_design/big/_view/v?group=true", None, 200)
        .await;
    let many: i64 = (0..2500).sum();
    assert_eq!(
        grouped["rows"],
        json!([{"key": 0, "value": 500}, {"key": 1, "value": 500 + many}, {"key": 2, "value": 500}])
    );
    let total = s.expect("GET", "/db/_design/big/_view/v", None, 200).await;
    assert_eq!(total["rows"], json!([{"key": null, "value": 1500 + many}]));
}
