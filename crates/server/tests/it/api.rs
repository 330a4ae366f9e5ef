//! The CouchDB API as a client observes it.

use serde_json::{Value, json};

use crate::support::{TestServer, assert_error, seq_n};

#[tokio::test]
async fn root_identifies_as_couchdb_with_a_stable_uuid() {
    let s = TestServer::new();
    let root = s.expect("GET", "/", None, 200).await;
    assert_eq!(root["couchdb"], "Welcome");
    assert_eq!(root["vendor"]["name"], "Outpost");
    assert!(root["version"].as_str().unwrap().starts_with('3'));
    let uuid = root["uuid"].as_str().unwrap().to_owned();
    assert_eq!(s.expect("GET", "/_up", None, 200).await["status"], "ok");

    // The same data directory keeps its uuid across restarts (replication checkpoints use it).
    let store = outpost_store::sqlite::SqliteStore::open(s.dir.path()).unwrap();
    assert_eq!(outpost_store::Store::server_uuid(&store), uuid);
    let other = TestServer::new();
    assert_ne!(
        other.expect("GET", "/", None, 200).await["uuid"],
        uuid.as_str()
    );
}

#[tokio::test]
async fn database_lifecycle() {
    let s = TestServer::new();
    assert_error(&s.expect("GET", "/db", None, 404).await, "not_found");
    s.expect("PUT", "/db", None, 201).await;
    assert_error(&s.expect("PUT", "/db/", None, 412).await, "file_exists");
    assert_error(
        &s.expect("PUT", "/Bad", None, 400).await,
        "illegal_database_name",
    );
    assert_error(
        &s.expect("PUT", "/1db", None, 400).await,
        "illegal_database_name",
    );
    s.expect("PUT", "/a%2Fb", None, 201).await;
    for path in ["/db", "/db/"] {
        let info = s.expect("GET", path, None, 200).await;
        assert_eq!(info["db_name"], "db");
        for field in [
            "doc_count",
            "doc_del_count",
            "update_seq",
            "sizes",
            "instance_start_time",
            "compact_running",
        ] {
            assert!(!info[field].is_null(), "{field} missing from {info}");
        }
    }
    assert_eq!(
        s.expect("GET", "/_all_dbs", None, 200).await,
        json!(["a/b", "db"])
    );
    s.expect("DELETE", "/db", None, 200).await;
    s.expect("GET", "/db", None, 404).await;
    s.expect("DELETE", "/db", None, 404).await;
    let uuids = s.expect("GET", "/_uuids?count=3", None, 200).await;
    assert_eq!(uuids["uuids"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn documents_are_written_read_and_deleted_with_revisions() {
    let s = TestServer::new();
    s.expect("PUT", "/db", None, 201).await;
    let put = s.expect("PUT", "/db/doc", Some(json!({"a": 1})), 201).await;
    let rev1 = put["rev"].as_str().unwrap().to_owned();
    assert!(rev1.starts_with("1-") && rev1.len() == 34, "{rev1}");
    assert_error(
        &s.expect("PUT", "/db/doc", Some(json!({"a": 2})), 409).await,
        "conflict",
    );
    let rev2 = s
        .expect("PUT", "/db/doc", Some(json!({"_rev": rev1, "a": 2})), 201)
        .await["rev"]
        .clone();
    let doc = s.expect("GET", "/db/doc", None, 200).await;
    assert_eq!(doc, json!({"_id": "doc", "_rev": rev2, "a": 2}));
    let old = s
        .expect("GET", &format!("/db/doc?rev={rev1}&revs=true"), None, 200)
        .await;
    assert_eq!(old["a"], 1);
    assert_eq!(old["_revisions"]["start"], 1);

    let (status, headers, _) = s.raw("HEAD", "/db/doc", &[], None).await;
    assert_eq!(status, 200);
    assert_eq!(
        headers["etag"],
        format!("\"{}\"", rev2.as_str().unwrap()).as_str()
    );

    let info = s.expect("GET", "/db/doc?revs_info=true", None, 200).await;
    assert_eq!(
        info["_revs_info"][1],
        json!({"rev": rev1, "status": "available"})
    );

    let del = s
        .expect(
            "DELETE",
            &format!("/db/doc?rev={}", rev2.as_str().unwrap()),
            None,
            200,
        )
        .await;
    assert!(del["rev"].as_str().unwrap().starts_with("3-"));
    let gone = s.expect("GET", "/db/doc", None, 404).await;
    assert_eq!(gone, json!({"error": "not_found", "reason": "deleted"}));
    assert_eq!(
        s.expect("GET", "/db/nope", None, 404).await["reason"],
        "missing"
    );
    // A deleted document can be created again without a revision.
    let again = s.expect("PUT", "/db/doc", Some(json!({"b": 1})), 201).await;
    assert!(again["rev"].as_str().unwrap().starts_with("4-"));

    let posted = s.expect("POST", "/db", Some(json!({"x": 1})), 201).await;
    assert_eq!(posted["id"].as_str().unwrap().len(), 32);
    let info = s.expect("GET", "/db", None, 200).await;
    assert_eq!(
        (info["doc_count"].as_u64(), info["doc_del_count"].as_u64()),
        (Some(2), Some(0))
    );
}

#[tokio::test]
async fn identical_edits_produce_identical_revisions() {
    let a = TestServer::new();
    let b = TestServer::new();
    for s in [&a, &b] {
        s.expect("PUT", "/db", None, 201).await;
    }
    let ra = a
        .expect("PUT", "/db/d", Some(json!({"x": 1, "y": [1, 2]})), 201)
        .await;
    let rb = b
        .expect("PUT", "/db/d", Some(json!({"y": [1, 2], "x": 1})), 201)
        .await;
    assert_eq!(ra["rev"], rb["rev"]);
}

#[tokio::test]
async fn odd_ids_keep_their_bytes() {
    let s = TestServer::new();
    s.expect("PUT", "/db", None, 201).await;
    for (encoded, id) in [
        ("a%2Fb", "a/b"),
        ("with%20space", "with space"),
        ("per%25cent", "per%cent"),
        ("caf%C3%A9", "café"),
        ("_design/app", "_design/app"),
        ("_design%2Fother", "_design/other"),
    ] {
        let put = s
            .expect(
                "PUT",
                &format!("/db/{encoded}"),
                Some(json!({"v": id})),
                201,
            )
            .await;
        assert_eq!(put["id"], id);
        assert_eq!(
            s.expect("GET", &format!("/db/{encoded}"), None, 200).await["_id"],
            id
        );
    }
    assert_error(
        &s.expect("PUT", "/db/_reserved", Some(json!({})), 400).await,
        "illegal_docid",
    );
    let all = s.expect("GET", "/db/_all_docs", None, 200).await;
    let ids: Vec<&str> = all["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            "_design/app",
            "_design/other",
            "a/b",
            "café",
            "per%cent",
            "with space"
        ]
    );
}

async fn conflicted(s: &TestServer) {
    s.expect("PUT", "/db", None, 201).await;
    let docs = json!({"new_edits": false, "docs": [
        {"_id": "c", "_rev": "2-bbb", "_revisions": {"start": 2, "ids": ["bbb", "aaa"]}, "v": "b"},
        {"_id": "c", "_rev": "2-ccc", "_revisions": {"start": 2, "ids": ["ccc", "aaa"]}, "v": "c"},
        {"_id": "c", "_rev": "3-ddd", "_deleted": true, "_revisions": {"start": 3, "ids": ["ddd", "bbb"]}},
    ]});
    assert_eq!(
        s.expect("POST", "/db/_bulk_docs", Some(docs), 201).await,
        json!([])
    );
}

#[tokio::test]
async fn conflicts_follow_couchdb_winner_rules() {
    let s = TestServer::new();
    conflicted(&s).await;
    // 3-ddd is deleted, so the live 2-ccc wins over it despite the lower generation.
    let doc = s
        .expect(
            "GET",
            "/db/c?conflicts=true&deleted_conflicts=true",
            None,
            200,
        )
        .await;
    assert_eq!(doc["_rev"], "2-ccc");
    assert_eq!(doc["_deleted_conflicts"], json!(["3-ddd"]));
    assert!(doc.get("_conflicts").is_none());
    let all = s.expect("GET", "/db/c?open_revs=all", None, 200).await;
    let revs: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["ok"]["_rev"].as_str().unwrap())
        .collect();
    assert_eq!(revs, ["2-ccc", "3-ddd"]);
    let some = s
        .expect(
            "GET",
            "/db/c?open_revs=%5B%222-bbb%22%2C%229-zzz%22%5D&latest=true",
            None,
            200,
        )
        .await;
    assert_eq!(
        some,
        json!([{"ok": {"_id": "c", "_rev": "3-ddd", "_deleted": true}}, {"missing": "9-zzz"}])
    );
    // Re-sending a revision the database has changes nothing.
    let seq = s.expect("GET", "/db", None, 200).await["update_seq"].clone();
    conflicted_again(&s).await;
    assert_eq!(s.expect("GET", "/db", None, 200).await["update_seq"], seq);
}

async fn conflicted_again(s: &TestServer) {
    let docs = json!({"new_edits": false, "docs": [
        {"_id": "c", "_rev": "2-ccc", "_revisions": {"start": 2, "ids": ["ccc", "aaa"]}, "v": "c"},
    ]});
    s.expect("POST", "/db/_bulk_docs", Some(docs), 201).await;
}

#[tokio::test]
async fn bulk_docs_answers_in_request_order_with_per_document_errors() {
    let s = TestServer::new();
    s.expect("PUT", "/db", None, 201).await;
    let first = s.expect("PUT", "/db/b", Some(json!({})), 201).await;
    let out = s
        .expect(
            "POST",
            "/db/_bulk_docs",
            Some(json!({"docs": [{"_id": "a"}, {"_id": "b"}, {"_id": "c", "_rev": "1-nope"}, {"_id": "b", "_rev": first["rev"], "n": 2}, {"n": 3}]})),
            201,
        )
        .await;
    let out = out.as_array().unwrap();
    assert_eq!(out.len(), 5);
    assert_eq!(out[0]["ok"], true);
    assert_eq!(
        (out[1]["id"].as_str(), out[1]["error"].as_str()),
        (Some("b"), Some("conflict"))
    );
    assert_eq!(out[2]["error"], "conflict");
    assert_eq!(out[3]["ok"], true);
    assert_eq!(out[4]["id"].as_str().unwrap().len(), 32);
}

#[tokio::test]
async fn revs_diff_and_bulk_get_serve_replication() {
    let s = TestServer::new();
    conflicted(&s).await;
    let diff = s
        .expect(
            "POST",
            "/db/_revs_diff",
            Some(json!({"c": ["2-ccc", "4-eee"], "x": ["1-a"]})),
            200,
        )
        .await;
    assert_eq!(diff["c"]["missing"], json!(["4-eee"]));
    assert_eq!(diff["c"]["possible_ancestors"], json!(["2-ccc", "3-ddd"]));
    assert_eq!(diff["x"], json!({"missing": ["1-a"]}));

    let got = s
        .expect(
            "POST",
            "/db/_bulk_get?revs=true",
            Some(json!({"docs": [{"id": "c", "rev": "2-bbb"}, {"id": "c"}, {"id": "nope", "rev": "1-a"}]})),
            200,
        )
        .await;
    let results = got["results"].as_array().unwrap();
    assert_eq!(
        results[0]["docs"][0]["ok"]["_revisions"],
        json!({"start": 2, "ids": ["bbb", "aaa"]})
    );
    assert_eq!(results[1]["docs"][0]["ok"]["_rev"], "2-ccc");
    assert_eq!(results[2]["docs"][0]["error"]["error"], "not_found");
}

#[tokio::test]
async fn all_docs_ranges_and_keys() {
    let s = TestServer::new();
    s.expect("PUT", "/db", None, 201).await;
    let docs: Vec<Value> = ["a", "b", "c", "d", "e"]
        .iter()
        .map(|id| json!({"_id": id, "v": id}))
        .collect();
    s.expect("POST", "/db/_bulk_docs", Some(json!({"docs": docs})), 201)
        .await;
    let rev_d = s.expect("GET", "/db/d", None, 200).await["_rev"].clone();
    s.expect(
        "DELETE",
        &format!("/db/d?rev={}", rev_d.as_str().unwrap()),
        None,
        200,
    )
    .await;

    let ids = |v: &Value| -> Vec<String> {
        v["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_str().unwrap_or("-").to_owned())
            .collect()
    };
    for (query, expected, offset) in [
        ("", vec!["a", "b", "c", "e"], 0),
        ("?startkey=%22b%22&endkey=%22c%22", vec!["b", "c"], 1),
        (
            "?startkey=%22b%22&endkey=%22c%22&inclusive_end=false",
            vec!["b"],
            1,
        ),
        ("?descending=true&limit=2", vec!["e", "c"], 0),
        ("?descending=true&startkey=%22c%22", vec!["c", "b", "a"], 1),
        ("?skip=1&limit=2", vec!["b", "c"], 1),
        ("?key=%22c%22", vec!["c"], 2),
        ("?startkey=1", vec!["a", "b", "c", "e"], 0),
        ("?startkey=%5B%5D", vec![], 0),
    ] {
        let out = s
            .expect("GET", &format!("/db/_all_docs{query}"), None, 200)
            .await;
        assert_eq!(ids(&out), expected, "{query}");
        assert_eq!(out["total_rows"], 4, "{query}");
        assert_eq!(out["offset"], offset, "{query}");
    }
    let out = s
        .expect(
            "GET",
            "/db/_all_docs?include_docs=true&limit=1&update_seq=true",
            None,
            200,
        )
        .await;
    assert_eq!(out["rows"][0]["doc"]["v"], "a");
    assert_eq!(seq_n(&out["update_seq"]), 6);

    let out = s
        .expect(
            "POST",
            "/db/_all_docs?include_docs=true",
            Some(json!({"keys": ["e", "zz", "d"]})),
            200,
        )
        .await;
    assert_eq!(out["rows"][0]["doc"]["v"], "e");
    assert_eq!(out["rows"][1], json!({"key": "zz", "error": "not_found"}));
    assert_eq!(out["rows"][2]["value"]["deleted"], true);
    assert_eq!(out["rows"][2]["doc"], Value::Null);
}

#[tokio::test]
async fn local_documents_have_their_own_revisions_and_stay_out_of_feeds() {
    let s = TestServer::new();
    s.expect("PUT", "/db", None, 201).await;
    let put = s
        .expect("PUT", "/db/_local/cp", Some(json!({"seq": 1})), 201)
        .await;
    assert_eq!(put, json!({"ok": true, "id": "_local/cp", "rev": "0-1"}));
    assert_error(
        &s.expect("PUT", "/db/_local/cp", Some(json!({"seq": 2})), 409)
            .await,
        "conflict",
    );
    let put = s
        .expect(
            "PUT",
            "/db/_local/cp",
            Some(json!({"_rev": "0-1", "seq": 2})),
            201,
        )
        .await;
    assert_eq!(put["rev"], "0-2");
    assert_eq!(
        s.expect("GET", "/db/_local/cp", None, 200).await,
        json!({"_id": "_local/cp", "_rev": "0-2", "seq": 2})
    );
    assert_eq!(
        s.expect("GET", "/db/_all_docs", None, 200).await["rows"],
        json!([])
    );
    assert_eq!(
        s.expect("GET", "/db/_changes", None, 200).await["results"],
        json!([])
    );
    assert_eq!(
        seq_n(&s.expect("GET", "/db", None, 200).await["update_seq"]),
        0
    );
    s.expect("PUT", "/db/_local/cp/att", Some(json!({})), 400)
        .await;
    assert_eq!(
        s.expect("DELETE", "/db/_local/cp?rev=0-2", None, 200).await["rev"],
        "0-0"
    );
    s.expect("GET", "/db/_local/cp", None, 404).await;
}

#[tokio::test]
async fn attachments_inline_and_standalone() {
    let s = TestServer::new();
    s.expect("PUT", "/db", None, 201).await;
    let put = s
        .expect(
            "PUT",
            "/db/d",
            Some(json!({"_attachments": {"hello.txt": {"content_type": "text/plain", "data": "aGVsbG8="}}})),
            201,
        )
        .await;
    let rev1 = put["rev"].as_str().unwrap().to_owned();
    let doc = s.expect("GET", "/db/d", None, 200).await;
    // As CouchDB, text is stored gzip-encoded and its digest is that of the stored bytes.
    let digest =
        outpost_core::hash::attachment_digest(&outpost_core::attachment::gzip(b"hello", 8));
    assert_eq!(
        doc["_attachments"]["hello.txt"],
        json!({"content_type": "text/plain", "digest": digest, "length": 5, "revpos": 1, "stub": true})
    );
    let inlined = s.expect("GET", "/db/d?attachments=true", None, 200).await;
    assert_eq!(inlined["_attachments"]["hello.txt"]["data"], "aGVsbG8=");

    let (status, headers, bytes) = s.raw("GET", "/db/d/hello.txt", &[], None).await;
    assert_eq!(
        (status.as_u16(), bytes.as_slice()),
        (200, b"hello".as_slice())
    );
    assert_eq!(headers["content-type"], "text/plain");

    let binary: Vec<u8> = (0..=255u8).collect();
    let (status, _, body) = s
        .raw(
            "PUT",
            &format!("/db/d/dir%2Fbin?rev={rev1}"),
            &[("content-type", "application/octet-stream")],
            Some(binary.clone()),
        )
        .await;
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
    let rev2: Value = serde_json::from_slice(&body).unwrap();
    let (_, _, got) = s.raw("GET", "/db/d/dir%2Fbin", &[], None).await;
    assert_eq!(got, binary);
    // The earlier attachment is carried over as a stub with its original revpos.
    let doc = s.expect("GET", "/db/d", None, 200).await;
    assert_eq!(doc["_attachments"]["hello.txt"]["revpos"], 1);
    assert_eq!(doc["_attachments"]["dir/bin"]["revpos"], 2);

    // An edit that keeps a stub keeps the attachment; a stub of an unknown one is refused.
    let rev = rev2["rev"].as_str().unwrap();
    let kept = s
        .expect(
            "PUT",
            "/db/d",
            Some(json!({"_rev": rev, "_attachments": {"hello.txt": {"stub": true}}})),
            201,
        )
        .await;
    let (status, body) = s
        .call(
            "PUT",
            "/db/d",
            Some(json!({"_rev": kept["rev"], "_attachments": {"nope": {"stub": true}}})),
        )
        .await;
    assert_eq!(status, 412, "{body}");
    let del = s
        .expect(
            "DELETE",
            &format!("/db/d/hello.txt?rev={}", kept["rev"].as_str().unwrap()),
            None,
            200,
        )
        .await;
    let doc = s.expect("GET", "/db/d", None, 200).await;
    assert_eq!(doc["_rev"], del["rev"]);
    assert!(doc.get("_attachments").is_none(), "{doc}");
    s.expect("GET", "/db/d/hello.txt", None, 404).await;
}

#[tokio::test]
async fn revs_limit_stems_history() {
    let s = TestServer::new();
    s.expect("PUT", "/db", None, 201).await;
    assert_eq!(s.expect("GET", "/db/_revs_limit", None, 200).await, 1000);
    s.expect("PUT", "/db/_revs_limit", Some(json!(3)), 200)
        .await;
    let mut rev = s.expect("PUT", "/db/d", Some(json!({"n": 0})), 201).await["rev"].clone();
    for n in 1..6 {
        rev = s
            .expect("PUT", "/db/d", Some(json!({"_rev": rev, "n": n})), 201)
            .await["rev"]
            .clone();
    }
    let doc = s.expect("GET", "/db/d?revs=true", None, 200).await;
    assert_eq!(doc["_revisions"]["start"], 6);
    assert_eq!(doc["_revisions"]["ids"].as_array().unwrap().len(), 3);
    s.expect("POST", "/db/_compact", Some(json!({})), 202).await;
    let commit = s
        .expect("POST", "/db/_ensure_full_commit", Some(json!({})), 201)
        .await;
    assert_eq!(commit, json!({"ok": true, "instance_start_time": "0"}));
}

#[tokio::test]
async fn events_record_every_accepted_revision() {
    let s = TestServer::new();
    conflicted(&s).await;
    let rev = s.expect("PUT", "/db/n", Some(json!({"a": 1})), 201).await["rev"].clone();
    s.expect(
        "DELETE",
        &format!("/db/n?rev={}", rev.as_str().unwrap()),
        None,
        200,
    )
    .await;
    let events = s.expect("GET", "/db/_events", None, 200).await;
    let kinds: Vec<(&str, &str)> = events["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["id"].as_str().unwrap(), e["type"].as_str().unwrap()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("c", "created"),
            ("c", "conflict"),
            ("c", "deleted"),
            ("n", "created"),
            ("n", "deleted")
        ]
    );
    let history = s
        .expect("GET", "/db/_events?doc_id=n&include_docs=true", None, 200)
        .await;
    assert_eq!(history["results"][0]["doc"], json!({"a": 1}));
    assert_eq!(history["results"][1]["parent"], rev);
}

#[tokio::test]
async fn concurrent_writes_share_commits_and_all_succeed() {
    let s = std::sync::Arc::new(TestServer::new());
    s.expect("PUT", "/db", None, 201).await;
    let mut tasks = Vec::new();
    for i in 0..200 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            s.call("PUT", &format!("/db/doc{i}"), Some(json!({"i": i})))
                .await
                .0
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 201);
    }
    let info = s.expect("GET", "/db", None, 200).await;
    assert_eq!(
        (info["doc_count"].as_u64(), seq_n(&info["update_seq"])),
        (Some(200), 200)
    );
}

#[tokio::test]
async fn cors_echoes_the_origin_with_credentials() {
    let s = TestServer::new();
    let (status, headers, _) = s
        .raw(
            "OPTIONS",
            "/db/_changes",
            &[
                ("origin", "http://app.example"),
                ("access-control-request-method", "POST"),
                ("access-control-request-headers", "content-type,x-custom"),
            ],
            None,
        )
        .await;
    assert!(status.is_success(), "{status}");
    assert_eq!(headers["access-control-allow-origin"], "http://app.example");
    assert_eq!(headers["access-control-allow-credentials"], "true");
    assert!(
        headers["access-control-allow-headers"]
            .to_str()
            .unwrap()
            .contains("x-custom")
    );
}
