//! `outpost db migrate`'s copy: a SQLite store copied into PostgreSQL and back reads the same
//! through the `Store` interface (uuid, databases and settings, documents and trees, bodies,
//! events, `_local` documents, attachments, `_security`, `_db_updates`, each reader's view of an
//! `access=true` database), and the copy goes on taking writes where the original left off.

use outpost_core::Rev;
use outpost_store::conformance::edit;
use outpost_store::sqlite::SqliteStore;
use outpost_store::{
    AllDocsQuery, ChangesQuery, DbOptions, DocUpdate, EventsQuery, NewAttachment, Origin, Store,
    StoreError, UpdateMode,
};
use outpost_store_pg::migrate;
use serde_json::{Value, json};

use crate::support::{Schema, postgres_url};

/// Everything a client can read from a store, as one JSON value.
async fn snapshot(store: &dyn Store) -> Value {
    let mut dbs = serde_json::Map::new();
    for name in store.all_dbs().await.unwrap() {
        let info = store.db_info(&name).await.unwrap();
        let changes = store
            .changes(
                &name,
                &ChangesQuery {
                    limit: u64::MAX,
                    include_docs: true,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        let mut docs = Vec::new();
        let mut digests = Vec::new();
        for row in &changes {
            let revs: Vec<Rev> = row.tree.revs().cloned().collect();
            let bodies = store.rev_bodies(&name, &row.id, &revs).await.unwrap();
            for (_, body) in &bodies {
                let body: Value = serde_json::from_str(&body.json).unwrap();
                if let Some(atts) = body.get("_attachments").and_then(Value::as_object) {
                    digests.extend(
                        atts.values()
                            .filter_map(|a| a["digest"].as_str().map(str::to_owned)),
                    );
                }
            }
            docs.push(json!({
                "id": row.id,
                "seq": row.seq,
                "tree": serde_json::to_value(&row.tree).unwrap(),
                "body": row.body,
                "bodies": bodies.iter().map(|(r, b)| json!([r.to_string(), b.deleted, b.json])).collect::<Vec<_>>(),
            }));
        }
        digests.sort();
        digests.dedup();
        let mut attachments = Vec::new();
        for d in digests {
            attachments.push(json!([d, store.attachment(&d).await.unwrap()]));
        }
        let events: Vec<Value> = store
            .events(
                &name,
                &EventsQuery {
                    limit: u64::MAX,
                    include_docs: true,
                    ..Default::default()
                },
            )
            .await
            .unwrap()
            .into_iter()
            .map(|e| {
                json!([
                    e.seq,
                    e.kind,
                    e.id,
                    e.rev.to_string(),
                    e.parent.map(|p| p.to_string()),
                    e.origin,
                    e.at,
                    e.body,
                    e.detail
                ])
            })
            .collect();
        let locals: Vec<Value> = store
            .local_docs(
                &name,
                &AllDocsQuery {
                    limit: u64::MAX,
                    include_docs: true,
                    ..Default::default()
                },
            )
            .await
            .unwrap()
            .into_iter()
            .map(|l| json!([l.id, l.rev, l.body]))
            .collect();
        // Per-document access: each reader's feed (with revocations) and counts.
        let mut access = Vec::new();
        for reader in [
            vec!["alice".to_owned()],
            vec!["bob".to_owned(), "staff".to_owned()],
        ] {
            let feed: Vec<Value> = store
                .access_changes(
                    &name,
                    &reader,
                    &ChangesQuery {
                        limit: u64::MAX,
                        ..Default::default()
                    },
                )
                .await
                .unwrap()
                .iter()
                .map(|r| json!([r.id, r.seq, serde_json::to_value(&r.tree).unwrap()]))
                .collect();
            let counts = store.access_counts(&name, &reader).await.unwrap();
            access.push(json!([feed, counts.doc_count, counts.doc_del_count]));
        }
        dbs.insert(
            name.clone(),
            json!({
                "access": [info.access, access],
                "info": [info.doc_count, info.doc_del_count, info.update_seq, info.revs_limit,
                         info.policy.name(), info.active_size, info.created_at,
                         info.retention.max_events_per_doc],
                "docs": docs,
                "attachments": attachments,
                "events": events,
                "locals": locals,
                "security": store.security(&name).await.unwrap(),
            }),
        );
    }
    let updates: Vec<Value> = store
        .db_updates(0, u64::MAX)
        .await
        .unwrap()
        .into_iter()
        .map(|u| json!([u.seq, u.db_name, u.kind]))
        .collect();
    json!({"uuid": store.server_uuid(), "dbs": dbs, "db_updates": updates})
}

async fn write_one(store: &dyn Store, db: &str, update: DocUpdate) -> Rev {
    store
        .write_docs(db, vec![update])
        .await
        .unwrap()
        .pop()
        .unwrap()
        .unwrap()
}

/// A store with a bit of everything in it.
async fn fill(store: &dyn Store) {
    for db in ["a", "b", "gone"] {
        store.create_db(db).await.unwrap();
    }
    store.delete_db("gone").await.unwrap();
    store.set_revs_limit("a", 5).await.unwrap();
    store
        .set_retention(
            "a",
            outpost_store::Retention {
                max_events_per_doc: Some(100),
                max_age_seconds: None,
            },
        )
        .await
        .unwrap();
    store
        .set_security("a", r#"{"members":{"names":["x"]}}"#.into())
        .await
        .unwrap();
    let data = b"attachment bytes".to_vec();
    let digest = outpost_core::hash::attachment_digest(&data);
    let mut with_att = edit(
        "att",
        None,
        json!({"_attachments": {"f.txt": {"content_type": "text/plain", "digest": digest, "length": data.len()}}}),
    );
    with_att.new_attachments = vec![NewAttachment { digest, data }];
    write_one(store, "a", with_att).await;
    let r1 = write_one(
        store,
        "a",
        edit("doc", None, json!({"n": 1, "big": 12345678901234567890u64})),
    )
    .await;
    let r2 = write_one(store, "a", edit("doc", Some(&r1), json!({"n": 2}))).await;
    let mut del = edit("doc", Some(&r2), json!({}));
    del.deleted = true;
    write_one(store, "a", del).await;
    // A conflict, replicated in.
    let other: Rev = "2-0123456789abcdef0123456789abcdef".parse().unwrap();
    let out = store
        .write_docs(
            "a",
            vec![DocUpdate {
                id: "doc".into(),
                mode: UpdateMode::Replicate {
                    path: vec![other, r1],
                },
                deleted: false,
                body: json!({"n": "theirs"}).as_object().unwrap().clone(),
                new_attachments: Vec::new(),
                origin: Origin::Replication {
                    peer: Some("peer".into()),
                },
            }],
        )
        .await
        .unwrap();
    assert!(out[0].is_ok());
    store
        .put_local("a", "_local/cp", 0, r#"{"seq":3}"#.into())
        .await
        .unwrap();
    store
        .create_db_with("shared", &DbOptions { access: true })
        .await
        .unwrap();
    write_one(
        store,
        "shared",
        edit("s1", None, json!({"_access": ["alice"]})),
    )
    .await;
    let s2 = write_one(
        store,
        "shared",
        edit("s2", None, json!({"_access": ["alice", "staff"]})),
    )
    .await;
    // Taken away from alice: her feed shows it as a deletion.
    write_one(
        store,
        "shared",
        edit("s2", Some(&s2), json!({"_access": ["staff"]})),
    )
    .await;
    for i in 0..30 {
        write_one(
            store,
            "b",
            edit(&format!("d{i:02}"), None, json!({"i": i, "é": "ü"})),
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_copied_to_postgres_and_back_reads_the_same() {
    let Some(url) = postgres_url() else { return };
    let schema = Schema::new(&url);
    let dir = tempfile::tempdir().unwrap();
    let sqlite = SqliteStore::open(dir.path()).unwrap();
    fill(&sqlite).await;
    let before = snapshot(&sqlite).await;
    sqlite.close();
    drop(sqlite);

    let (src, u, s) = (dir.path().to_owned(), url.clone(), schema.name.clone());
    let mut seen = Vec::new();
    let report = tokio::task::spawn_blocking(move || {
        let report = migrate::sqlite_to_postgres(&src, None, &u, Some(&s), &mut |p| {
            seen.push((p.table, p.done, p.total))
        });
        (report, seen)
    })
    .await
    .unwrap();
    let (report, seen) = report;
    let report = report.unwrap();
    assert!(report.tables.iter().any(|(t, n)| *t == "docs" && *n == 34));
    // alice and staff on s2 (alice revoked), alice on s1.
    assert!(
        report
            .tables
            .iter()
            .any(|(t, n)| *t == "access_rows" && *n == 3)
    );
    let last = seen.last().unwrap();
    assert_eq!(last.1, last.2, "the progress ends at its total");

    let pg = schema.open().await;
    assert_eq!(snapshot(&pg).await, before);
    assert!(pg.db_info("shared").await.unwrap().access);
    // The copy goes on where the original left off: sequences, database ids, the uuid.
    let seq = pg.db_info("b").await.unwrap().update_seq;
    write_one(&pg, "b", edit("new", None, json!({}))).await;
    assert_eq!(pg.db_info("b").await.unwrap().update_seq, seq + 1);
    pg.create_db("c").await.unwrap();
    write_one(&pg, "c", edit("x", None, json!({}))).await;
    let after = snapshot(&pg).await;

    // A target that already holds databases is refused.
    let (src, u, s) = (dir.path().to_owned(), url.clone(), schema.name.clone());
    let again = tokio::task::spawn_blocking(move || {
        migrate::sqlite_to_postgres(&src, None, &u, Some(&s), &mut |_| {})
    })
    .await
    .unwrap();
    assert!(matches!(again, Err(StoreError::DbExists)), "{again:?}");

    let back = tempfile::tempdir().unwrap();
    let (dst, u, s) = (back.path().to_owned(), url.clone(), schema.name.clone());
    tokio::task::spawn_blocking(move || {
        migrate::postgres_to_sqlite(&u, Some(&s), &dst, None, &mut |_| {})
    })
    .await
    .unwrap()
    .unwrap();
    let copy = SqliteStore::open(back.path()).unwrap();
    assert_eq!(snapshot(&copy).await, after);
    write_one(&copy, "c", edit("y", None, json!({}))).await;
}
