//! Behaviour that PouchDB's own test suite and CouchDB clients rely on, one test per defect.

use serde_json::json;

use crate::support::{TestServer, assert_error};

#[tokio::test]
async fn descending_changes_ignore_since_and_start_from_the_newest() {
    let s = TestServer::new();
    s.expect("PUT", "/db", None, 201).await;
    for id in ["a", "b", "c"] {
        s.expect("PUT", &format!("/db/{id}"), Some(json!({})), 201)
            .await;
    }
    for query in [
        "descending=true",
        "descending=true&since=0",
        "descending=true&since=1",
    ] {
        let feed = s
            .expect("GET", &format!("/db/_changes?{query}"), None, 200)
            .await;
        let ids: Vec<&str> = feed["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["c", "b", "a"], "{query}");
    }
}

#[tokio::test]
async fn a_filter_function_that_does_not_exist_is_not_found() {
    let s = TestServer::new();
    s.expect("PUT", "/db", None, 201).await;
    let missing = s
        .expect("GET", "/db/_changes?filter=nodoc/odd", None, 404)
        .await;
    assert_error(&missing, "not_found");
    s.expect(
        "PUT",
        "/db/_design/app",
        Some(json!({"filters": {"odd": "function (doc) { return true; }"}})),
        201,
    )
    .await;
    let no_function = s
        .expect("GET", "/db/_changes?filter=app/even", None, 404)
        .await;
    assert_eq!(no_function["reason"], "missing json key: even");
    assert_error(
        &s.expect("GET", "/db/_changes?filter=_view", None, 400)
            .await,
        "bad_request",
    );
    s.expect("GET", "/db/_changes?filter=_view&view=app/v", None, 404)
        .await;
}

#[tokio::test]
async fn replicated_revisions_take_their_path_from_revisions_over_rev() {
    let s = TestServer::new();
    s.expect("PUT", "/db", None, 201).await;
    let doc = json!({"_id": "d", "_rev": "2-a", "_revisions": {"start": 1, "ids": ["a"]}, "v": 1});
    s.expect(
        "POST",
        "/db/_bulk_docs",
        Some(json!({"docs": [doc], "new_edits": false})),
        201,
    )
    .await;
    assert_eq!(s.expect("GET", "/db/d", None, 200).await["_rev"], "1-a");
}

#[tokio::test]
async fn a_bare_generation_is_a_revision_a_peer_may_send() {
    let s = TestServer::new();
    s.expect("PUT", "/db", None, 201).await;
    let out = s
        .expect(
            "POST",
            "/db/_bulk_docs",
            Some(json!({"docs": [{"_id": "foo", "_rev": "1-", "integer": 1}], "new_edits": false})),
            201,
        )
        .await;
    assert_eq!(out, json!([]));
    assert_eq!(s.expect("GET", "/db/foo", None, 200).await["_rev"], "1-");
}

#[tokio::test]
async fn bulk_docs_with_an_unparseable_document_fails_as_a_whole() {
    let s = TestServer::new();
    s.expect("PUT", "/db", None, 201).await;
    for (docs, new_edits) in [
        (
            json!([{"_id": "ok"}, {"_id": "_invalid", "foo": "bar"}]),
            true,
        ),
        (json!([{"_id": "_invalid"}, {"_id": 123}]), true),
        (json!([{"_id": "ok"}, {"_id": "x", "_zing": 1}]), true),
        (json!([{"_id": "foo", "integer": 1}]), false),
    ] {
        let body = json!({"docs": docs, "new_edits": new_edits});
        let (status, answer) = s.call("POST", "/db/_bulk_docs", Some(body)).await;
        assert_eq!(status.as_u16(), 400, "{docs}: {answer}");
        assert!(answer["error"].is_string(), "{answer}");
    }
    // Nothing of a refused request was written.
    assert_eq!(s.expect("GET", "/db", None, 200).await["doc_count"], 0);
}

#[tokio::test]
async fn local_documents_in_bulk_docs_are_written_and_deleted() {
    let s = TestServer::new();
    s.expect("PUT", "/db", None, 201).await;
    let put = s
        .expect("PUT", "/db/_local/godzilla", Some(json!({})), 201)
        .await;
    let mothra = s.expect("PUT", "/db/mothra", Some(json!({})), 201).await;
    let out = s
        .expect(
            "POST",
            "/db/_bulk_docs",
            Some(json!({"docs": [
                {"_id": "mothra", "_rev": mothra["rev"], "_deleted": true},
                {"_id": "_local/godzilla", "_rev": put["rev"], "_deleted": true},
                {"_id": "_local/rodan", "v": 1},
                {"_id": "_local/ghidorah", "_rev": "1-fake", "_deleted": true},
            ]})),
            201,
        )
        .await;
    assert_eq!(out[0]["ok"], true);
    assert_eq!(
        out[1],
        json!({"ok": true, "id": "_local/godzilla", "rev": "0-0"})
    );
    assert_eq!(
        out[2],
        json!({"ok": true, "id": "_local/rodan", "rev": "0-1"})
    );
    // Deleting one that is not there is done already, as CouchDB answers it.
    assert_eq!(
        out[3],
        json!({"ok": true, "id": "_local/ghidorah", "rev": "0-0"})
    );
    s.expect("GET", "/db/_local/godzilla", None, 404).await;
    assert_eq!(s.expect("GET", "/db/_local/rodan", None, 200).await["v"], 1);
}

#[tokio::test]
async fn a_local_document_deleted_by_put_is_gone() {
    let s = TestServer::new();
    s.expect("PUT", "/db", None, 201).await;
    s.expect("PUT", "/db/_local/x", Some(json!({"a": 1})), 201)
        .await;
    let out = s
        .expect(
            "PUT",
            "/db/_local/x",
            Some(json!({"_rev": "0-1", "_deleted": true})),
            201,
        )
        .await;
    assert_eq!(out["rev"], "0-0");
    s.expect("GET", "/db/_local/x", None, 404).await;
}

#[tokio::test]
async fn local_documents_accept_attachments_and_keep_none() {
    let s = TestServer::new();
    s.expect("PUT", "/db", None, 201).await;
    let atts = json!({"foo.txt": {"content_type": "text/plain", "data": "VGhpcyBpcyBhIGJhc2U2NCBlbmNvZGVkIHRleHQ="}});
    s.expect(
        "PUT",
        "/db/_local/bin_doc",
        Some(json!({"_attachments": atts})),
        201,
    )
    .await;
    let got = s
        .expect("GET", "/db/_local/bin_doc?attachments=true", None, 200)
        .await;
    assert!(got.get("_attachments").is_none(), "{got}");
    let refused = s
        .expect("GET", "/db/_local/bin_doc/foo.txt", None, 400)
        .await;
    assert_eq!(
        refused["reason"],
        "_local documents do not accept attachments."
    );
}

#[tokio::test]
async fn replicator_fields_are_kept_in_the_body() {
    let s = TestServer::new();
    s.expect("PUT", "/db", None, 201).await;
    let doc = json!({
        "_replication_id": "r1",
        "_replication_state": "triggered",
        "_replication_state_time": 1,
        "_replication_stats": {"docs_read": 0},
    });
    s.expect("PUT", "/db/job", Some(doc.clone()), 201).await;
    let got = s.expect("GET", "/db/job", None, 200).await;
    for key in doc.as_object().unwrap().keys() {
        assert_eq!(got[key], doc[key], "{key}");
    }
}

#[tokio::test]
async fn temporary_views_are_gone() {
    let s = TestServer::new();
    s.expect("PUT", "/db", None, 201).await;
    assert_error(
        &s.expect(
            "POST",
            "/db/_temp_view",
            Some(json!({"map": "function(){}"})),
            410,
        )
        .await,
        "gone",
    );
}

#[tokio::test]
async fn post_with_a_method_override_acts_as_that_method() {
    let s = TestServer::new();
    s.expect("PUT", "/db", None, 201).await;
    let (status, _, _) = s
        .raw(
            "POST",
            "/db/d",
            &[
                ("content-type", "application/json"),
                ("x-http-method-override", "PUT"),
            ],
            Some(br#"{"v":1}"#.to_vec()),
        )
        .await;
    assert_eq!(status.as_u16(), 201);
    assert_eq!(s.expect("GET", "/db/d", None, 200).await["v"], 1);
}

#[tokio::test]
async fn gzip_encoded_bodies_are_read() {
    use std::io::Write;
    let s = TestServer::new();
    s.expect("PUT", "/db", None, 201).await;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(br#"{"docs":[{"_id":"a","n":1},{"_id":"b","n":2}]}"#)
        .unwrap();
    let (status, _, body) = s
        .raw(
            "POST",
            "/db/_bulk_docs",
            &[
                ("content-type", "application/json"),
                ("content-encoding", "gzip"),
            ],
            Some(gz.finish().unwrap()),
        )
        .await;
    assert_eq!(status.as_u16(), 201, "{}", String::from_utf8_lossy(&body));
    assert_eq!(s.expect("GET", "/db", None, 200).await["doc_count"], 2);
    let (status, _, _) = s
        .raw(
            "POST",
            "/db/_bulk_docs",
            &[
                ("content-type", "application/json"),
                ("content-encoding", "br"),
            ],
            Some(b"xx".to_vec()),
        )
        .await;
    assert_eq!(status.as_u16(), 415);
}

#[tokio::test]
async fn gzip_bombs_are_held_to_the_body_limit() {
    use std::io::Write;
    let s = TestServer::with_config(outpost_server::Config {
        max_body_bytes: 64 * 1024,
        ..outpost_server::Config::default()
    });
    s.expect("PUT", "/db", None, 201).await;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&vec![b' '; 8 * 1024 * 1024]).unwrap();
    let compressed = gz.finish().unwrap();
    assert!(compressed.len() < 64 * 1024);
    let (status, _, _) = s
        .raw(
            "POST",
            "/db/_bulk_docs",
            &[
                ("content-type", "application/json"),
                ("content-encoding", "gzip"),
            ],
            Some(compressed),
        )
        .await;
    assert_eq!(status.as_u16(), 413);
}

#[tokio::test]
async fn documents_answer_304_to_a_matching_if_none_match() {
    let s = TestServer::new();
    s.expect("PUT", "/db", None, 201).await;
    let put = s.expect("PUT", "/db/d", Some(json!({"v": 1})), 201).await;
    let etag = format!("\"{}\"", put["rev"].as_str().unwrap());
    let (status, headers, body) = s
        .raw("GET", "/db/d", &[("if-none-match", &etag)], None)
        .await;
    assert_eq!(status.as_u16(), 304);
    assert!(body.is_empty());
    assert_eq!(headers["etag"], etag.as_str());
    let (status, _, _) = s
        .raw("GET", "/db/d", &[("if-none-match", "\"1-other\"")], None)
        .await;
    assert_eq!(status.as_u16(), 200);
}

#[tokio::test]
async fn created_documents_carry_their_location_and_couchdb_request_id() {
    let s = TestServer::new();
    s.expect("PUT", "/db", None, 201).await;
    let (status, headers, _) = s
        .raw(
            "PUT",
            "/db/a%2Fb",
            &[
                ("content-type", "application/json"),
                ("host", "example.test:5984"),
            ],
            Some(b"{}".to_vec()),
        )
        .await;
    assert_eq!(status.as_u16(), 201);
    assert_eq!(headers["location"], "http://example.test:5984/db/a%2Fb");
    assert!(headers.contains_key("x-couch-request-id"));
}

#[tokio::test]
async fn copy_writes_the_source_under_the_destination_id() {
    let s = TestServer::new();
    s.expect("PUT", "/db", None, 201).await;
    let src = json!({"v": 1, "_attachments": {"a.txt": {"content_type": "text/plain", "data": "aGVsbG8="}}});
    s.expect("PUT", "/db/src", Some(src), 201).await;
    let (status, headers, body) = s
        .raw("COPY", "/db/src", &[("destination", "dst")], None)
        .await;
    assert_eq!(status.as_u16(), 201, "{}", String::from_utf8_lossy(&body));
    assert!(headers.contains_key("location"));
    let copy = s.expect("GET", "/db/dst", None, 200).await;
    assert_eq!(copy["v"], 1);
    let (status, _, att) = s.raw("GET", "/db/dst/a.txt", &[], None).await;
    assert_eq!((status.as_u16(), att.as_slice()), (200, &b"hello"[..]));
    // Overwriting needs the destination's revision.
    let (status, _, _) = s
        .raw("COPY", "/db/src", &[("destination", "dst")], None)
        .await;
    assert_eq!(status.as_u16(), 409);
    let dst_rev = copy["_rev"].as_str().unwrap();
    let (status, _, _) = s
        .raw(
            "COPY",
            "/db/src",
            &[("destination", &format!("dst?rev={dst_rev}"))],
            None,
        )
        .await;
    assert_eq!(status.as_u16(), 201);
    let (status, _, _) = s.raw("COPY", "/db/src", &[], None).await;
    assert_eq!(status.as_u16(), 400);
}

#[tokio::test]
async fn dbs_info_describes_the_databases_named() {
    let s = TestServer::new();
    s.expect("PUT", "/db", None, 201).await;
    s.expect("PUT", "/db/d", Some(json!({})), 201).await;
    let out = s
        .expect(
            "POST",
            "/_dbs_info",
            Some(json!({"keys": ["db", "nope"]})),
            200,
        )
        .await;
    assert_eq!(out[0]["key"], "db");
    assert_eq!(out[0]["info"]["doc_count"], 1);
    assert_eq!(out[1], json!({"key": "nope", "error": "not_found"}));
    assert_eq!(
        s.expect("GET", "/_dbs_info", None, 200).await[0]["key"],
        "db"
    );
    s.expect("POST", "/_dbs_info", Some(json!({})), 400).await;
}

#[tokio::test]
async fn the_node_endpoints_describe_one_node() {
    let s = TestServer::new();
    let members = s.expect("GET", "/_membership", None, 200).await;
    let node = members["all_nodes"][0].as_str().unwrap().to_owned();
    assert_eq!(members["cluster_nodes"][0], node.as_str());
    for name in ["_local", node.as_str()] {
        let config = s
            .expect("GET", &format!("/_node/{name}/_config"), None, 200)
            .await;
        assert!(config["couchdb"]["uuid"].is_string(), "{config}");
        assert_eq!(
            s.expect(
                "GET",
                &format!("/_node/{name}/_config/couchdb/uuid"),
                None,
                200
            )
            .await,
            config["couchdb"]["uuid"]
        );
    }
    assert_error(
        &s.expect("GET", "/_node/_local/_config/couchdb/nonsense", None, 404)
            .await,
        "not_found",
    );
    s.expect("GET", "/_node/other@host/_config", None, 404)
        .await;
    s.expect(
        "PUT",
        "/_node/_local/_config/couchdb/uuid",
        Some(json!("x")),
        405,
    )
    .await;
    assert!(s.expect("GET", "/_node/_local/_system", None, 200).await["uptime"].is_u64());
}

#[tokio::test]
async fn attachments_answer_ranges_and_conditional_gets_as_couchdb() {
    let s = TestServer::new();
    s.expect("PUT", "/db", None, 201).await;
    // A type CouchDB stores as it comes: one it compresses is not served by ranges (see
    // `attachments::ranges_are_served_of_identity_attachments_only`).
    let (status, _, _) = s
        .raw(
            "PUT",
            "/db/d/a.txt",
            &[("content-type", "application/octet-stream")],
            Some(b"0123456789".to_vec()),
        )
        .await;
    assert_eq!(status.as_u16(), 201);
    let (status, headers, body) = s.raw("GET", "/db/d/a.txt", &[], None).await;
    assert_eq!(
        (status.as_u16(), body.as_slice()),
        (200, &b"0123456789"[..])
    );
    let etag = headers["etag"].to_str().unwrap().to_owned();
    // The base64 MD5 of the bytes, quoted, without `md5-`.
    assert_eq!(etag, "\"eB5eJF1ptWaXm4bijSPyxw==\"");
    let (status, _, body) = s
        .raw("GET", "/db/d/a.txt", &[("if-none-match", &etag)], None)
        .await;
    assert_eq!((status.as_u16(), body.len()), (304, 0));
    let (status, headers, body) = s
        .raw("GET", "/db/d/a.txt", &[("range", "bytes=2-4")], None)
        .await;
    assert_eq!((status.as_u16(), body.as_slice()), (206, &b"234"[..]));
    assert_eq!(headers["content-range"], "bytes 2-4/10");
    let (status, _, _) = s
        .raw("GET", "/db/d/a.txt", &[("range", "bytes=20-")], None)
        .await;
    assert_eq!(status.as_u16(), 416);
}

#[tokio::test]
async fn deleting_an_attachment_the_document_lacks_writes_a_revision() {
    let s = TestServer::new();
    s.expect("PUT", "/db", None, 201).await;
    let put = s.expect("PUT", "/db/d", Some(json!({"v": 1})), 201).await;
    let rev = put["rev"].as_str().unwrap();
    let out = s
        .expect("DELETE", &format!("/db/d/nope.txt?rev={rev}"), None, 200)
        .await;
    assert!(out["rev"].as_str().unwrap().starts_with("2-"), "{out}");
    assert_eq!(s.expect("GET", "/db/d", None, 200).await["v"], 1);
}

#[tokio::test]
async fn reserved_document_ids_are_illegal_docids() {
    let s = TestServer::new();
    s.expect("PUT", "/db", None, 201).await;
    let refused = s.expect("PUT", "/db/_nonsense", Some(json!({})), 400).await;
    assert_eq!(refused["error"], "illegal_docid");
    let refused = s
        .expect(
            "POST",
            "/db/_bulk_docs",
            Some(json!({"docs": [{"_id": "_x"}]})),
            400,
        )
        .await;
    assert_eq!(refused["error"], "illegal_docid");
}

#[tokio::test]
async fn all_or_nothing_is_refused_as_couchdb_3_refuses_it() {
    let s = TestServer::new();
    s.expect("PUT", "/db", None, 201).await;
    let out = s
        .expect(
            "POST",
            "/db/_bulk_docs",
            Some(json!({"all_or_nothing": true, "docs": [{"_id": "q1"}]})),
            417,
        )
        .await;
    assert_eq!(out[0]["error"], "not_implemented");
    s.expect("GET", "/db/q1", None, 404).await;
}

#[tokio::test]
async fn batch_writes_answer_202_without_a_revision() {
    let s = TestServer::new();
    s.expect("PUT", "/db", None, 201).await;
    let out = s
        .expect("PUT", "/db/bt?batch=ok", Some(json!({})), 202)
        .await;
    assert_eq!(out, json!({"ok": true, "id": "bt"}));
}

#[tokio::test]
async fn a_stub_for_a_missing_attachment_is_a_missing_stub() {
    let s = TestServer::new();
    s.expect("PUT", "/db", None, 201).await;
    let out = s
        .expect(
            "PUT",
            "/db/st",
            Some(json!({"_attachments": {"a": {"stub": true}}})),
            412,
        )
        .await;
    assert_eq!(out["error"], "missing_stub");
    assert_eq!(out["reason"], "Invalid attachment stub in st for a");
}

/// A `multipart/related` body of a document and its attachments, as CouchDB's replicator sends it.
fn related_body(boundary: &str, doc: &serde_json::Value, atts: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out =
        format!("--{boundary}\r\nContent-Type: application/json\r\n\r\n{doc}\r\n").into_bytes();
    for (name, bytes) in atts {
        out.extend_from_slice(
            format!("--{boundary}\r\nContent-Disposition: attachment; filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n").as_bytes(),
        );
        out.extend_from_slice(bytes);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("--{boundary}--").as_bytes());
    out
}

#[tokio::test]
async fn documents_with_attachments_arrive_as_multipart_related() {
    use std::io::Write;
    let s = TestServer::new();
    s.expect("PUT", "/db", None, 201).await;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(b"compressed text").unwrap();
    let gzipped = gz.finish().unwrap();
    let doc = json!({
        "_id": "m", "_rev": "2-b", "_revisions": {"start": 2, "ids": ["b", "a"]}, "v": 1,
        "_attachments": {
            "one.bin": {"follows": true, "content_type": "application/octet-stream", "length": 4, "revpos": 1},
            "two.txt": {"follows": true, "content_type": "text/plain", "encoding": "gzip", "length": 15, "encoded_length": gzipped.len(), "revpos": 2},
        }
    });
    // Parts named out of order are matched by filename.
    let body = related_body(
        "xyz",
        &doc,
        &[("two.txt", &gzipped), ("one.bin", b"\x00\x01\r\n")],
    );
    let (status, _, answer) = s
        .raw(
            "PUT",
            "/db/m?new_edits=false",
            &[("content-type", "multipart/related; boundary=\"xyz\"")],
            Some(body),
        )
        .await;
    assert_eq!(status.as_u16(), 201, "{}", String::from_utf8_lossy(&answer));
    let answer: serde_json::Value = serde_json::from_slice(&answer).unwrap();
    assert_eq!(answer["rev"], "2-b");
    let (_, _, one) = s.raw("GET", "/db/m/one.bin", &[], None).await;
    assert_eq!(one, b"\x00\x01\r\n");
    let (_, _, two) = s.raw("GET", "/db/m/two.txt", &[], None).await;
    assert_eq!(two, b"compressed text");
    // Kept as it came, as CouchDB keeps it: the digest of the encoded bytes, which a client
    // that takes gzip gets back as they were sent.
    let stored = s
        .expect("GET", "/db/m?att_encoding_info=true", None, 200)
        .await;
    let two = &stored["_attachments"]["two.txt"];
    assert_eq!(
        two["digest"],
        outpost_core::hash::attachment_digest(&gzipped)
    );
    assert_eq!(
        (two["length"].as_u64(), two["encoding"].as_str()),
        (Some(15), Some("gzip"))
    );
    let (_, _, sent) = s
        .raw("GET", "/db/m/two.txt", &[("accept-encoding", "gzip")], None)
        .await;
    assert_eq!(sent, gzipped);
    // A part for an attachment that does not follow is refused.
    let doc = json!({"_attachments": {"a": {"follows": true}}});
    let (status, _, _) = s
        .raw(
            "PUT",
            "/db/n",
            &[("content-type", "multipart/related; boundary=b")],
            Some(related_body("b", &doc, &[("a", b"1"), ("b", b"2")])),
        )
        .await;
    assert_eq!(status.as_u16(), 400);
}

#[tokio::test]
async fn open_revs_answer_multipart_mixed_when_asked() {
    let s = TestServer::new();
    s.expect("PUT", "/db", None, 201).await;
    let put = s
        .expect(
            "PUT",
            "/db/d",
            Some(json!({"v": 1, "_attachments": {"a.bin": {"content_type": "application/x-raw", "data": "AAECAw=="}}})),
            201,
        )
        .await;
    let rev = put["rev"].as_str().unwrap().to_owned();
    s.expect("PUT", "/db/plain", Some(json!({"w": 2})), 201)
        .await;
    // CouchDB's replicator does not say `attachments=true`: a multipart answer carries them.
    let path = format!("/db/d?open_revs=%5B%22{rev}%22%2C%229-x%22%5D&revs=true");
    let (status, headers, body) = s
        .raw("GET", &path, &[("accept", "multipart/mixed")], None)
        .await;
    assert_eq!(status.as_u16(), 200);
    let ct = headers["content-type"].to_str().unwrap().to_owned();
    assert!(ct.starts_with("multipart/mixed; boundary="), "{ct}");
    let text = String::from_utf8_lossy(&body).into_owned();
    assert!(
        text.contains("Content-Type: multipart/related; boundary="),
        "{text}"
    );
    assert!(text.contains("\"follows\":true"), "{text}");
    assert!(
        text.contains("Content-Disposition: attachment; filename=\"a.bin\""),
        "{text}"
    );
    // The bytes travel raw, not as base64.
    assert!(body.windows(4).any(|w| w == b"\x00\x01\x02\x03"), "{text}");
    assert!(
        text.contains(
            "Content-Type: application/json; error=\"true\"\r\n\r\n{\"missing\":\"9-x\"}"
        ),
        "{text}"
    );
    // With atts_since naming the revision, the attachment stays a stub and the document is JSON.
    let since = format!("{path}&atts_since=%5B%22{rev}%22%5D");
    let (_, _, body) = s
        .raw("GET", &since, &[("accept", "multipart/mixed")], None)
        .await;
    let text = String::from_utf8_lossy(&body).into_owned();
    assert!(!text.contains("multipart/related"), "{text}");
    assert!(text.contains("\"stub\":true"), "{text}");
    // A document read whole with Accept: multipart/related.
    let (status, headers, body) = s
        .raw(
            "GET",
            "/db/d?attachments=true",
            &[("accept", "multipart/related")],
            None,
        )
        .await;
    assert_eq!(status.as_u16(), 200);
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("multipart/related")
    );
    assert!(body.windows(4).any(|w| w == b"\x00\x01\x02\x03"));
    // Without attachments to send, JSON as usual.
    let (_, headers, _) = s
        .raw(
            "GET",
            "/db/plain?attachments=true",
            &[("accept", "multipart/related")],
            None,
        )
        .await;
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
}

#[tokio::test]
async fn changes_with_inline_attachments_carry_every_document() {
    // Such a feed reads one document per page (its attachments are held while it is written);
    // every change must still come, in order, with its bytes.
    let s = TestServer::new();
    s.expect("PUT", "/db", None, 201).await;
    for i in 0..5 {
        let doc = json!({"i": i, "_attachments": {"a.txt": {"content_type": "text/plain", "data": "aGVsbG8="}}});
        s.expect("PUT", &format!("/db/d{i}"), Some(doc), 201).await;
    }
    for query in ["", "&limit=3", "&feed=longpoll"] {
        let feed = s
            .expect(
                "GET",
                &format!("/db/_changes?include_docs=true&attachments=true{query}"),
                None,
                200,
            )
            .await;
        let rows = feed["results"].as_array().unwrap();
        let expected = if query == "&limit=3" { 3 } else { 5 };
        assert_eq!(rows.len(), expected, "{query}: {feed}");
        for (i, row) in rows.iter().enumerate() {
            assert_eq!(row["doc"]["i"], i, "{query}");
            assert_eq!(
                row["doc"]["_attachments"]["a.txt"]["data"], "aGVsbG8=",
                "{query}"
            );
        }
    }
}

/// One form field: its name, for a file its file name and content type, and its value.
type FormField<'a> = (&'a str, Option<(&'a str, &'a str)>, &'a [u8]);

/// A `multipart/form-data` body as an HTML form with file inputs sends it.
fn form(fields: &[FormField<'_>]) -> (String, Vec<u8>) {
    let boundary = "----outpostformboundary7MA4YWxk";
    let mut body = Vec::new();
    for (name, file, data) in fields {
        body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        match file {
            Some((filename, content_type)) => body.extend_from_slice(
                format!(
                    "Content-Disposition: form-data; name=\"{name}\"; filename=\"{filename}\"\r\nContent-Type: {content_type}\r\n\r\n"
                )
                .as_bytes(),
            ),
            None => body.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes(),
            ),
        }
        body.extend_from_slice(data);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// Futon's and Fauxton's attachment upload: `POST /{db}/{id}` with a form holding `_rev` and
/// `_attachments` files, which CouchDB accepts only from a page of its own host.
#[tokio::test]
async fn attachments_upload_from_an_html_form() {
    let s = TestServer::new();
    s.expect("PUT", "/db", None, 201).await;
    let rev = s.expect("PUT", "/db/doc", Some(json!({"n": 1})), 201).await["rev"]
        .as_str()
        .unwrap()
        .to_owned();
    let png: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0binary";
    let (ct, body) = form(&[
        ("_rev", None, rev.as_bytes()),
        ("_attachments", Some(("logo.png", "image/png")), png),
        ("ignored", None, b"x"),
    ]);
    let same_host = [
        ("content-type", ct.as_str()),
        ("host", "couch.example:5984"),
        ("referer", "http://couch.example:5984/_utils/"),
    ];
    let (status, _, answer) = s
        .raw("POST", "/db/doc", &same_host, Some(body.clone()))
        .await;
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&answer));
    let answer: serde_json::Value = serde_json::from_slice(&answer).unwrap();
    assert_eq!(answer["ok"], true);
    let doc = s.expect("GET", "/db/doc", None, 200).await;
    assert_eq!(doc["n"], 1, "the body is kept: {doc}");
    assert_eq!(doc["_rev"], answer["rev"]);
    assert_eq!(doc["_attachments"]["logo.png"]["content_type"], "image/png");
    let (_, headers, bytes) = s.raw("GET", "/db/doc/logo.png", &[], None).await;
    assert_eq!(bytes, png);
    assert_eq!(headers["content-type"], "image/png");

    // The same form again names a revision that is no longer current.
    let (status, _, _) = s
        .raw("POST", "/db/doc", &same_host, Some(body.clone()))
        .await;
    assert_eq!(status, 409);
    // Without `_rev` the document is created.
    let (ct2, fresh) = form(&[("_attachments", Some(("a.txt", "text/plain")), b"hello")]);
    let headers = [
        ("content-type", ct2.as_str()),
        ("host", "couch.example:5984"),
        ("referer", "http://couch.example:5984/_utils/"),
    ];
    let (status, _, _) = s.raw("POST", "/db/fresh", &headers, Some(fresh)).await;
    assert_eq!(status, 201);
    let (_, _, bytes) = s.raw("GET", "/db/fresh/a.txt", &[], None).await;
    assert_eq!(bytes, b"hello");

    // Forms from other sites, or without a Referer, are refused (a form needs no CORS
    // preflight), and so is a POST that is not a form.
    for referer in [Some("http://evil.example/page"), None] {
        let mut headers = vec![
            ("content-type", ct.as_str()),
            ("host", "couch.example:5984"),
        ];
        if let Some(r) = referer {
            headers.push(("referer", r));
        }
        let (status, _, answer) = s.raw("POST", "/db/doc", &headers, Some(body.clone())).await;
        assert_eq!(status, 400, "{}", String::from_utf8_lossy(&answer));
    }
    let (status, _, _) = s
        .raw(
            "POST",
            "/db/doc",
            &[("content-type", "application/json")],
            Some(b"{}".to_vec()),
        )
        .await;
    assert_eq!(status, 415);
}

/// A server on a real socket, for requests no HTTP client library will send.
async fn socket_server() -> (
    std::net::SocketAddr,
    tokio_util::sync::DropGuard,
    tempfile::TempDir,
) {
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(outpost_store::sqlite::SqliteStore::open(dir.path()).unwrap());
    let shutdown = tokio_util::sync::CancellationToken::new();
    let state = outpost_server::AppState::new(store, Default::default(), shutdown.clone());
    let addr = crate::support::serve_on_loopback(state).await;
    (addr, shutdown.drop_guard(), dir)
}

/// Writes `requests` on one connection (the last one closing it) and returns every answer's
/// status and body, in order.
async fn exchange(addr: std::net::SocketAddr, requests: &str) -> Vec<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(requests.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(30),
        conn.read_to_end(&mut answer),
    )
    .await
    .expect("the server kept the connection open")
    .unwrap();
    let mut out = Vec::new();
    let mut rest = &answer[..];
    while !rest.is_empty() {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut response = httparse::Response::new(&mut headers);
        let Ok(httparse::Status::Complete(len)) = response.parse(rest) else {
            panic!("not an HTTP answer: {}", String::from_utf8_lossy(rest));
        };
        let header = |name: &str| {
            response
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| String::from_utf8_lossy(h.value).into_owned())
        };
        let (length, chunked) = (header("content-length"), header("transfer-encoding"));
        let status = response.code.unwrap();
        rest = &rest[len..];
        let mut body = Vec::new();
        if let Some(length) = length {
            let n: usize = length.parse().unwrap();
            body.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
        } else if chunked.as_deref() == Some("chunked") {
            loop {
                let line_end = rest.windows(2).position(|w| w == b"\r\n").unwrap();
                let size = std::str::from_utf8(&rest[..line_end]).unwrap();
                let size = usize::from_str_radix(size.split(';').next().unwrap(), 16).unwrap();
                rest = &rest[line_end + 2..];
                if size == 0 {
                    rest = &rest[2..];
                    break;
                }
                body.extend_from_slice(&rest[..size]);
                rest = &rest[size + 2..];
            }
        } else {
            body.extend_from_slice(rest);
            rest = &[];
        }
        out.push((status, String::from_utf8(body).unwrap()));
    }
    out
}

/// CouchDB takes `"` (and `<`, `>`) unencoded in a query string, as people type them into curl;
/// `http::Uri` refuses them, so they are percent-encoded before hyper builds one. Requests on a
/// keep-alive connection, their bodies full of the same characters, left as they are.
#[tokio::test]
async fn unencoded_quotes_in_a_query_string_are_accepted() {
    let (addr, _server, _dir) = socket_server().await;
    let docs = r#"{"docs":[{"_id":"a","q":"?k=\"<x>\" HTTP/1.1"},{"_id":"b"},{"_id":"c"}]}"#;
    let answers = exchange(
        addr,
        &format!(
            "PUT /db HTTP/1.1\r\nHost: x\r\n\r\n\
             POST /db/_bulk_docs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{docs}\
             GET /db/_all_docs?startkey=\"a\"&endkey=\"b\"&include_docs=true HTTP/1.1\r\nHost: x\r\n\r\n\
             GET /db/_all_docs?keys=[\"c\",\"<d>\"] HTTP/1.1\r\nHost: x\r\n\r\n\
             GET /db/_changes?since=\"2\" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            docs.len()
        ),
    )
    .await;
    let statuses: Vec<u16> = answers.iter().map(|(s, _)| *s).collect();
    assert_eq!(statuses, [201, 201, 200, 200, 200], "{answers:?}");
    let json = |i: usize| serde_json::from_str::<serde_json::Value>(&answers[i].1).unwrap();
    let range = json(2);
    assert_eq!(range["rows"].as_array().unwrap().len(), 2, "{range}");
    assert_eq!(
        range["rows"][0]["doc"]["q"], "?k=\"<x>\" HTTP/1.1",
        "{range}"
    );
    let keys = json(3);
    assert_eq!(keys["rows"][0]["id"], "c", "{keys}");
    assert_eq!(keys["rows"][1], json!({"key": "<d>", "error": "not_found"}));
    let changes = json(4);
    assert_eq!(crate::support::feed_ids(&changes), ["c"], "{changes}");

    // The opaque sequence the server showed, in CouchDB's quotes, unencoded.
    let since = changes["results"][0]["seq"].as_str().unwrap().to_owned();
    let answers = exchange(
        addr,
        &format!(
            "GET /db/_changes?since=\"{since}\" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        ),
    )
    .await;
    assert_eq!(answers[0].0, 200, "{answers:?}");
    assert!(answers[0].1.contains("\"results\":[\n\n]"), "{answers:?}");

    // A chunked body is not followed: the connection goes on untouched, as it would without
    // the encoding.
    let answers = exchange(
        addr,
        "POST /db/_bulk_docs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\n\r\n\
         13\r\n{\"docs\":[{\"_id\":\"e\"\r\n3\r\n}]}\r\n0\r\n\r\n\
         GET /db/e HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    let statuses: Vec<u16> = answers.iter().map(|(s, _)| *s).collect();
    assert_eq!(statuses, [201, 200], "{answers:?}");
}
