//! Document writes as the writer applies them: one sequence per document per request, conflict
//! policies resolving in the writer, resolution by hand, history retention, and the paging
//! helpers (`_all_docs` ranges, `offset`, `pending`, `_conflicts`).

use std::sync::Arc;

use outpost_core::{Policy, Rev};
use serde_json::json;

use super::edit;
use crate::{
    AllDocsQuery, ChangesQuery, DocError, DocUpdate, EventsQuery, NewAttachment, Origin, Retention,
    Store, UpdateMode,
};

/// A replicated revision (`new_edits=false`) with its `_revisions` path, newest first.
pub fn replicated(id: &str, path: Vec<Rev>, body: serde_json::Value) -> DocUpdate {
    DocUpdate {
        id: id.to_owned(),
        mode: UpdateMode::Replicate { path },
        deleted: false,
        body: body.as_object().cloned().unwrap_or_default(),
        new_attachments: Vec::new(),
        origin: Origin::Replication { peer: None },
    }
}

fn rev(s: &str) -> Rev {
    s.parse().unwrap()
}

pub async fn a_documents_revisions_of_one_request_take_one_sequence(store: Arc<dyn Store>) {
    store.create_db("db").await.unwrap();
    let mut updates: Vec<DocUpdate> = (0..50)
        .map(|i| replicated("x", vec![Rev::new(1, format!("{i:04}"))], json!({"i": i})))
        .collect();
    updates.push(replicated("y", vec![rev("1-a")], json!({})));
    // The same revision twice: accepted, and nothing more.
    updates.push(replicated(
        "x",
        vec![Rev::new(1, "0007".to_owned())],
        json!({"i": 7}),
    ));
    let results = store.write_docs("db", updates).await.unwrap();
    assert_eq!(results.len(), 52);
    assert!(results.iter().all(Result::is_ok));
    let info = store.db_info("db").await.unwrap();
    assert_eq!((info.update_seq, info.doc_count), (2, 2));
    let doc = store.doc("db", "x").await.unwrap().unwrap();
    assert_eq!(doc.seq, 1);
    assert_eq!(doc.tree.leaves().len(), 50);
    assert_eq!(doc.tree.winner().unwrap().rev.to_string(), "1-0049");
    let all = EventsQuery {
        limit: 1_000,
        ..Default::default()
    };
    let events = store.events("db", &all).await.unwrap();
    assert_eq!(events.len(), 51);
    assert!(events[..50].iter().all(|e| e.seq == 1 && e.id == "x"));
    assert_eq!(events[1].kind, "conflict");
    // A page never ends inside a sequence.
    let page = EventsQuery {
        limit: 10,
        ..Default::default()
    };
    assert_eq!(store.events("db", &page).await.unwrap().len(), 50);
    let conflicted = store.conflicts("db", None, 10).await.unwrap();
    assert_eq!(
        conflicted.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(),
        ["x"]
    );
}

/// An engine may hold a request's writes back and store a whole chunk of documents at once:
/// what a revision needs of an earlier one of the same request (a stub of an attachment that
/// arrived with it, the same new attachment again) is found all the same, and a request larger
/// than a chunk still gives one sequence per document, in request order, and one result per
/// update.
pub async fn a_requests_revisions_build_on_each_other_before_they_are_stored(
    store: Arc<dyn Store>,
) {
    store.create_db("db").await.unwrap();
    let old = store
        .write_docs("db", vec![edit("old", None, json!({"v": 0}))])
        .await
        .unwrap()
        .pop()
        .unwrap()
        .unwrap();
    let bytes = b"attached".to_vec();
    let att = NewAttachment {
        digest: "md5-shared".into(),
        data: bytes.clone(),
    };
    let meta = json!({"content_type": "text/plain", "digest": "md5-shared", "length": bytes.len()});
    let mut first = replicated("a", vec![rev("1-a")], json!({"_attachments": {"f": meta}}));
    first.new_attachments = vec![att.clone()];
    let mut twin = edit("b", None, json!({"_attachments": {"f": meta}}));
    twin.new_attachments = vec![att];
    let mut updates = vec![
        first,
        replicated(
            "a",
            vec![rev("2-b"), rev("1-a")],
            json!({"x": 2, "_attachments": {"f": {"stub": true, "digest": "md5-shared"}}}),
        ),
        twin,
        edit("old", Some(&old), json!({"v": 1})),
        // From a revision that the update before it in the same request replaced.
        edit("old", Some(&old), json!({"v": 2})),
    ];
    const MANY: usize = 2_100;
    updates.extend((0..MANY).map(|i| edit(&format!("n{i:04}"), None, json!({ "i": i }))));
    let results = store.write_docs("db", updates).await.unwrap();
    assert_eq!(results.len(), MANY + 5);
    assert!(
        matches!(results[4], Err(DocError::Conflict)),
        "{:?}",
        results[4]
    );
    for (i, result) in results.iter().enumerate().filter(|(i, _)| *i != 4) {
        assert!(result.is_ok(), "update {i}: {result:?}");
    }
    let body = store.rev_bodies("db", "a", &[rev("2-b")]).await.unwrap();
    let body: serde_json::Value = serde_json::from_str(&body[0].1.json).unwrap();
    assert_eq!(body["x"], 2);
    assert_eq!(body["_attachments"]["f"]["content_type"], "text/plain");
    assert_eq!(body["_attachments"]["f"]["digest"], "md5-shared");
    assert_eq!(store.attachment("md5-shared").await.unwrap(), Some(bytes));
    assert!(store.doc("db", "b").await.unwrap().is_some());
    let info = store.db_info("db").await.unwrap();
    assert_eq!(info.update_seq, 1 + 3 + MANY as u64);
    assert_eq!(info.doc_count, 3 + MANY as u64);
    let feed = store
        .changes(
            "db",
            &ChangesQuery {
                limit: 10_000,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let mut expected = vec!["a".to_owned(), "b".into(), "old".into()];
    expected.extend((0..MANY).map(|i| format!("n{i:04}")));
    let got: Vec<(u64, String)> = feed.into_iter().map(|r| (r.seq, r.id)).collect();
    let want: Vec<(u64, String)> = (2..).zip(expected).collect();
    assert_eq!(got, want);
}

pub async fn an_automatic_policy_resolves_in_the_writer(store: Arc<dyn Store>) {
    store.create_db("db").await.unwrap();
    store
        .set_policy(
            "db",
            Policy::Lww {
                field: Some("t".into()),
            },
        )
        .await
        .unwrap();
    let root = rev("1-aaaa");
    let out = store
        .write_docs(
            "db",
            vec![
                replicated("d", vec![root.clone()], json!({"t": 0})),
                replicated("d", vec![rev("2-bbbb"), root.clone()], json!({"t": 2})),
                replicated("d", vec![rev("2-cccc"), root], json!({"t": 1})),
            ],
        )
        .await
        .unwrap();
    assert!(out.iter().all(Result::is_ok), "{out:?}");
    let doc = store.doc("db", "d").await.unwrap().unwrap();
    let live: Vec<_> = doc
        .tree
        .leaves()
        .into_iter()
        .filter(|l| !l.deleted)
        .collect();
    assert_eq!(live.len(), 1, "{:?}", doc.tree);
    let winner = doc.tree.winner().unwrap().rev;
    let body = store.rev_bodies("db", "d", &[winner]).await.unwrap();
    let body: serde_json::Value = serde_json::from_str(&body[0].1.json).unwrap();
    assert_eq!(body["t"], 2);
    let events = store
        .events(
            "db",
            &EventsQuery {
                limit: 100,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(events.iter().any(|e| e.kind == "resolved"));
    assert_eq!(store.db_info("db").await.unwrap().policy.name(), "lww");
}

pub async fn a_conflict_is_resolved_by_hand_from_its_exact_leaves(store: Arc<dyn Store>) {
    store.create_db("db").await.unwrap();
    let root = rev("1-aaaa");
    let (b, c) = (rev("2-bbbb"), rev("2-cccc"));
    store
        .write_docs(
            "db",
            vec![
                replicated("d", vec![b.clone(), root.clone()], json!({"v": "b"})),
                replicated("d", vec![c.clone(), root], json!({"v": "c"})),
            ],
        )
        .await
        .unwrap();
    // A stale view of the leaves is refused.
    let stale = store
        .resolve(
            "db",
            "d",
            vec![b.clone()],
            edit("d", None, json!({"v": "both"})),
        )
        .await
        .unwrap();
    assert!(stale.is_err());
    let resolved = store
        .resolve("db", "d", vec![b, c], edit("d", None, json!({"v": "both"})))
        .await
        .unwrap()
        .unwrap();
    let doc = store.doc("db", "d").await.unwrap().unwrap();
    assert_eq!(doc.tree.winner().unwrap().rev, resolved);
    assert!(!doc.tree.is_conflicted());
    assert!(store.conflicts("db", None, 10).await.unwrap().is_empty());
}

pub async fn retention_trims_the_log_and_keeps_the_documents(store: Arc<dyn Store>) {
    store.create_db("db").await.unwrap();
    store
        .set_retention(
            "db",
            Retention {
                max_events_per_doc: Some(2),
                max_age_seconds: None,
            },
        )
        .await
        .unwrap();
    let mut base: Option<Rev> = None;
    for n in 0..5 {
        let out = store
            .write_docs("db", vec![edit("d", base.as_ref(), json!({"n": n}))])
            .await
            .unwrap();
        base = Some(out[0].clone().unwrap());
    }
    store.compact("db").await.unwrap();
    let events = store
        .events(
            "db",
            &EventsQuery {
                limit: 100,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), [4, 5]);
    let doc = store.doc("db", "d").await.unwrap().unwrap();
    assert_eq!(doc.tree.winner().unwrap().rev, base.unwrap());
    assert_eq!(doc.tree.revs().count(), 5);
    assert_eq!(
        store
            .db_info("db")
            .await
            .unwrap()
            .retention
            .max_events_per_doc,
        Some(2)
    );
}

pub async fn pages_count_and_ranges_follow_the_id_order(store: Arc<dyn Store>) {
    store.create_db("db").await.unwrap();
    // Byte order of UTF-8, whatever the server's locale: `B` < `a` < `b` < `é`.
    let ids = ["b", "a", "é", "B", "c", "d"];
    let updates = ids.iter().map(|id| edit(id, None, json!({}))).collect();
    store.write_docs("db", updates).await.unwrap();
    let mut del = edit("c", None, json!({}));
    let c = store.doc("db", "c").await.unwrap().unwrap();
    del.mode = UpdateMode::Edit {
        base: Some(c.tree.winner().unwrap().rev),
    };
    del.deleted = true;
    store.write_docs("db", vec![del]).await.unwrap();
    let page = |q: AllDocsQuery| {
        let store = store.clone();
        async move {
            store
                .all_docs("db", &q)
                .await
                .unwrap()
                .into_iter()
                .map(|r| r.id)
                .collect::<Vec<_>>()
        }
    };
    let all = AllDocsQuery {
        limit: 100,
        ..Default::default()
    };
    assert_eq!(page(all.clone()).await, ["B", "a", "b", "d", "é"]);
    let range = AllDocsQuery {
        start: Some("a".into()),
        start_inclusive: false,
        end: Some("d".into()),
        end_inclusive: true,
        limit: 100,
        ..Default::default()
    };
    assert_eq!(page(range).await, ["b", "d"]);
    let desc = AllDocsQuery {
        descending: true,
        skip: 1,
        limit: 2,
        ..Default::default()
    };
    assert_eq!(page(desc).await, ["d", "b"]);
    assert_eq!(
        store.count_before("db", "d", false, 100).await.unwrap(),
        Some(3)
    );
    assert_eq!(store.count_before("db", "d", false, 2).await.unwrap(), None);
    assert_eq!(
        store.count_before("db", "a", true, 100).await.unwrap(),
        Some(3)
    );
    assert_eq!(store.changes_pending("db", 0).await.unwrap(), 6);
    assert_eq!(store.changes_pending("db", 5).await.unwrap(), 2);
    let newest = store
        .changes(
            "db",
            &ChangesQuery {
                since: u64::MAX,
                limit: 2,
                descending: true,
                include_docs: true,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        newest
            .iter()
            .map(|r| (r.id.as_str(), r.seq))
            .collect::<Vec<_>>(),
        [("c", 7), ("d", 6)]
    );
    assert_eq!(newest[1].body.as_deref(), Some("{}"));
}

pub async fn compact_running_is_reported_while_a_compaction_is_marked(store: Arc<dyn Store>) {
    store.create_db("db").await.unwrap();
    store.create_db("other").await.unwrap();
    assert!(!store.db_info("db").await.unwrap().compact_running);
    let mark = store.mark_compacting("db").unwrap();
    assert!(store.db_info("db").await.unwrap().compact_running);
    assert!(!store.db_info("other").await.unwrap().compact_running);
    assert!(store.mark_compacting("db").is_none());
    store.compact("db").await.unwrap();
    assert!(store.db_info("db").await.unwrap().compact_running);
    drop(mark);
    assert!(!store.db_info("db").await.unwrap().compact_running);
}
