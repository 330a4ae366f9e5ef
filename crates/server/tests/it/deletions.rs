//! Deletions under a `_selector` filter: CouchDB matches the selector against the tombstone (its
//! body is whatever the deleter kept, with `"_deleted": true`), so a filtered replica learns that
//! a document it holds was deleted.

use serde_json::{Value, json};

use crate::support::{TestServer, feed_ids};

/// `a` deleted with `DELETE` (an empty tombstone), `b` deleted keeping its fields, `c` alive.
async fn with_tombstones() -> TestServer {
    let s = TestServer::new();
    s.expect("PUT", "/db", None, 201).await;
    let mut revs = Vec::new();
    for id in ["a", "b", "c"] {
        let r = s
            .expect("PUT", &format!("/db/{id}"), Some(json!({"type": "x"})), 201)
            .await;
        revs.push(r["rev"].as_str().unwrap().to_owned());
    }
    s.expect("DELETE", &format!("/db/a?rev={}", revs[0]), None, 200)
        .await;
    s.expect(
        "PUT",
        "/db/b",
        Some(json!({"_rev": revs[1], "_deleted": true, "type": "x"})),
        201,
    )
    .await;
    s
}

#[tokio::test]
async fn a_selector_feed_passes_tombstones_that_match() {
    let s = with_tombstones().await;
    let by_type = s
        .expect(
            "POST",
            "/db/_changes?filter=_selector",
            Some(json!({"selector": {"type": "x"}})),
            200,
        )
        .await;
    assert_eq!(feed_ids(&by_type), ["c", "b"], "{by_type}");
    assert_eq!(by_type["results"][1]["deleted"], true, "{by_type}");

    let deleted = s
        .expect(
            "POST",
            "/db/_changes?filter=_selector&include_docs=true",
            Some(json!({"selector": {"_deleted": true}})),
            200,
        )
        .await;
    assert_eq!(feed_ids(&deleted), ["a", "b"], "{deleted}");
    assert_eq!(deleted["results"][1]["doc"]["type"], "x", "{deleted}");

    let either = s
        .expect(
            "POST",
            "/db/_changes?filter=_selector",
            Some(json!({"selector": {"$or": [{"type": "y"}, {"_deleted": true}]}})),
            200,
        )
        .await;
    assert_eq!(feed_ids(&either), ["a", "b"], "{either}");
}

#[tokio::test]
async fn a_selector_replication_carries_deletions() {
    let s = TestServer::new();
    for db in ["/src", "/dst"] {
        s.expect("PUT", db, None, 201).await;
    }
    let mut revs = Vec::new();
    for id in ["kept", "emptied"] {
        let r = s
            .expect(
                "PUT",
                &format!("/src/{id}"),
                Some(json!({"type": "x"})),
                201,
            )
            .await;
        revs.push(r["rev"].as_str().unwrap().to_owned());
    }
    let replicate = |selector: Value| {
        let s = &s;
        async move {
            let result = s
                .expect(
                    "POST",
                    "/_replicate",
                    Some(json!({"source": "src", "target": "dst", "selector": selector})),
                    200,
                )
                .await;
            assert_eq!(result["ok"], true, "{result}");
        }
    };
    replicate(json!({"type": "x"})).await;
    s.expect("GET", "/dst/kept", None, 200).await;
    s.expect("GET", "/dst/emptied", None, 200).await;

    // One tombstone keeps the field the selector looks at, the other is empty.
    s.expect(
        "PUT",
        "/src/kept",
        Some(json!({"_rev": revs[0], "_deleted": true, "type": "x"})),
        201,
    )
    .await;
    s.expect(
        "DELETE",
        &format!("/src/emptied?rev={}", revs[1]),
        None,
        200,
    )
    .await;
    replicate(json!({"type": "x"})).await;
    let gone = s.expect("GET", "/dst/kept", None, 404).await;
    assert_eq!(gone["reason"], "deleted", "{gone}");
    // An empty tombstone does not match `type: x`, as in CouchDB ...
    s.expect("GET", "/dst/emptied", None, 200).await;
    // ... and a selector that admits deletions carries it.
    replicate(json!({"$or": [{"type": "x"}, {"_deleted": true}]})).await;
    let gone = s.expect("GET", "/dst/emptied", None, 404).await;
    assert_eq!(gone["reason"], "deleted", "{gone}");
}

/// Replicating new revisions of a document whose attachment did not change: the target holds an
/// ancestor with the attachment (`possible_ancestors`), so the replicator sends it as a stub,
/// and the target resolves the stub against that ancestor.
#[tokio::test]
async fn unchanged_attachments_replicate_as_stubs() {
    let s = TestServer::new();
    for db in ["/src", "/dst"] {
        s.expect("PUT", db, None, 201).await;
    }
    let photo: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let (status, _, _) = s
        .raw(
            "PUT",
            "/src/photo/a.bin",
            &[("content-type", "application/octet-stream")],
            Some(photo.clone()),
        )
        .await;
    assert_eq!(status, 201);
    let replicate = || async {
        let result = s
            .expect(
                "POST",
                "/_replicate",
                Some(json!({"source": "src", "target": "dst"})),
                200,
            )
            .await;
        assert_eq!(result["doc_write_failures"], 0, "{result}");
        assert_eq!(result["docs_written"], 1, "{result}");
    };
    replicate().await;
    for i in 0..3 {
        let mut doc = s.expect("GET", "/src/photo", None, 200).await;
        doc["edit"] = json!(i);
        s.expect("PUT", "/src/photo", Some(doc), 201).await;
        replicate().await;
    }
    let src = s.expect("GET", "/src/photo", None, 200).await;
    let dst = s.expect("GET", "/dst/photo", None, 200).await;
    assert_eq!(src, dst);
    assert_eq!(dst["_attachments"]["a.bin"]["revpos"], 1, "{dst}");
    let (status, _, bytes) = s.raw("GET", "/dst/photo/a.bin", &[], None).await;
    assert_eq!(status, 200);
    assert_eq!(bytes, photo);
}
