//! Indexes follow the database: writes, deletes, conflicts, replicated revisions and
//! replicated index definitions; and a selective query reads only what it returns.

use outpost_core::Rev;
use outpost_store::{DocUpdate, Origin, Store, UpdateMode};
use serde_json::{Map, Value, json};

use crate::Db;

fn body(v: Value) -> Map<String, Value> {
    v.as_object().unwrap().clone()
}

async fn edit(db: &Db, id: &str, base: Option<Rev>, deleted: bool, v: Value) -> Rev {
    let update = DocUpdate {
        id: id.to_owned(),
        mode: UpdateMode::Edit { base },
        deleted,
        body: body(v),
        new_attachments: Vec::new(),
        origin: Origin::Client,
    };
    db.store
        .write_docs("db", vec![update])
        .await
        .unwrap()
        .pop()
        .unwrap()
        .unwrap()
}

async fn replicate(db: &Db, id: &str, path: Vec<Rev>, v: Value) {
    let update = DocUpdate {
        id: id.to_owned(),
        mode: UpdateMode::Replicate { path },
        deleted: false,
        body: body(v),
        new_attachments: Vec::new(),
        origin: Origin::Replication { peer: None },
    };
    db.store
        .write_docs("db", vec![update])
        .await
        .unwrap()
        .pop()
        .unwrap()
        .unwrap();
}

fn by_color(color: &str) -> Value {
    json!({"selector": {"color": color}, "use_index": ["colors", "color"], "execution_stats": true})
}

#[tokio::test]
async fn an_index_follows_writes_and_deletes() {
    let db = Db::new().await;
    db.create_index(json!({"index": {"fields": ["color"]}, "name": "color", "ddoc": "colors"}))
        .await;
    let a = edit(&db, "a", None, false, json!({"color": "red"})).await;
    let b = edit(&db, "b", None, false, json!({"color": "red"})).await;
    assert_eq!(db.ids(by_color("red")).await, ["a", "b"]);
    // An edit moves a document to another key; one that drops the field leaves the index.
    let a = edit(&db, "a", Some(a), false, json!({"color": "blue"})).await;
    edit(&db, "b", Some(b), false, json!({"shade": "red"})).await;
    assert!(db.ids(by_color("red")).await.is_empty());
    assert_eq!(db.ids(by_color("blue")).await, ["a"]);
    // A deleted document leaves it too, even when its tombstone keeps the field.
    edit(&db, "a", Some(a), true, json!({"color": "blue"})).await;
    assert!(db.ids(by_color("blue")).await.is_empty());
    let state = db
        .store
        .index_state("db", "mango/_design/colors/color")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(state.rows, 0);
    // `update: false` reads the index as it is, without catching up.
    edit(&db, "c", None, false, json!({"color": "green"})).await;
    let mut stale = by_color("green");
    stale["update"] = json!(false);
    assert!(db.ids(stale).await.is_empty());
    assert_eq!(db.ids(by_color("green")).await, ["c"]);
}

#[tokio::test]
async fn an_index_follows_the_winner_of_a_conflict_and_replicated_revisions() {
    let db = Db::new().await;
    db.create_index(json!({"index": {"fields": ["color"]}, "name": "color", "ddoc": "colors"}))
        .await;
    let one = Rev::new(1, "1".repeat(32));
    replicate(&db, "doc", vec![one.clone()], json!({"color": "red"})).await;
    assert_eq!(db.ids(by_color("red")).await, ["doc"]);
    // Two replicated children of the same parent: the higher revision id wins, the other is a
    // conflict, and the index holds the winner's value.
    let low = Rev::new(2, "a".repeat(32));
    let high = Rev::new(2, "b".repeat(32));
    replicate(
        &db,
        "doc",
        vec![low.clone(), one.clone()],
        json!({"color": "green"}),
    )
    .await;
    replicate(
        &db,
        "doc",
        vec![high.clone(), one],
        json!({"color": "blue"}),
    )
    .await;
    assert!(db.ids(by_color("red")).await.is_empty());
    assert!(db.ids(by_color("green")).await.is_empty());
    let mut q = by_color("blue");
    q["conflicts"] = json!(true);
    let answer = db.find(q).await;
    assert_eq!(answer["docs"][0]["_rev"], high.to_string());
    assert_eq!(answer["docs"][0]["_conflicts"], json!([low.to_string()]));
    // Resolving the conflict by deleting the winner makes the other revision win.
    edit(&db, "doc", Some(high), true, json!({})).await;
    assert_eq!(db.ids(by_color("green")).await, ["doc"]);
}

#[tokio::test]
async fn a_replicated_index_definition_is_used() {
    let db = Db::new().await;
    db.put_all(&[json!({"_id": "x", "color": "red"})]).await;
    // The design document as another server's `POST /_index` wrote it, arriving by replication.
    replicate(
        &db,
        "_design/colors",
        vec![Rev::new(1, "c".repeat(32))],
        json!({"language": "query", "views": {"color": {
            "map": {"fields": {"color": "asc"}, "partial_filter_selector": {}},
            "reduce": "_count", "options": {"def": {"fields": ["color"]}}}}}),
    )
    .await;
    let explain = db.explain(json!({"selector": {"color": "red"}})).await;
    assert_eq!(explain["index"]["name"], "color");
    assert_eq!(db.ids(by_color("red")).await, ["x"]);
    // Deleting the index removes it from its design document and drops its rows.
    outpost_query::delete_index(db.store.as_ref(), "db", "colors", "color")
        .await
        .unwrap();
    assert!(db.store.indexes("db").await.unwrap().is_empty());
    let explain = db.explain(json!({"selector": {"color": "red"}})).await;
    assert_eq!(explain["index"]["name"], "_all_docs");
}

#[tokio::test]
async fn rows_of_an_index_whose_design_document_went_are_dropped() {
    let db = Db::new().await;
    db.put_all(&[json!({"_id": "x", "color": "red"})]).await;
    db.create_index(json!({"index": {"fields": ["color"]}, "name": "color", "ddoc": "colors"}))
        .await;
    assert_eq!(db.ids(by_color("red")).await, ["x"]);
    assert_eq!(db.store.indexes("db").await.unwrap().len(), 1);
    // The design document is deleted as a document, not through `_index`.
    let record = db.store.doc("db", "_design/colors").await.unwrap().unwrap();
    let rev = record.tree.winner().unwrap().rev;
    edit(&db, "_design/colors", Some(rev), true, json!({})).await;
    db.ids(json!({"selector": {"color": "red"}})).await;
    assert!(db.store.indexes("db").await.unwrap().is_empty());
}

#[tokio::test]
async fn a_selective_query_reads_only_the_rows_it_returns() {
    let db = Db::new().await;
    let docs: Vec<Value> = (0..3000)
        .map(|i| json!({"_id": format!("d{i:05}"), "n": i, "color": if i % 1000 == 7 { "rare" } else { "common" }}))
        .collect();
    for chunk in docs.chunks(500) {
        db.put_all(chunk).await;
    }
    db.create_index(json!({"index": {"fields": ["color"]}, "name": "color", "ddoc": "colors"}))
        .await;
    let answer = db.find(by_color("rare")).await;
    assert_eq!(crate::ids(&answer), ["d00007", "d01007", "d02007"]);
    let stats = &answer["execution_stats"];
    assert_eq!(stats["total_keys_examined"], 3);
    assert_eq!(stats["total_docs_examined"], 3);
    // A range on a number reads the range.
    db.create_index(json!({"index": {"fields": ["n"]}, "name": "n", "ddoc": "numbers"}))
        .await;
    let answer = db
        .find(json!({"selector": {"n": {"$gte": 100, "$lt": 110}}, "execution_stats": true}))
        .await;
    assert_eq!(crate::ids(&answer).len(), 10);
    assert_eq!(answer["execution_stats"]["total_keys_examined"], 10);
    // A limit the index serves exactly reads that many rows, not a whole page; skipped rows
    // count. The next page (the bookmark) goes on where it stopped.
    let page = |bookmark: Option<&str>| {
        let mut body = json!({"selector": {"color": "common"}, "limit": 100, "skip": 5,
                              "execution_stats": true});
        if let Some(b) = bookmark {
            body["bookmark"] = json!(b);
            body["skip"] = json!(0);
        }
        body
    };
    let first = db.find(page(None)).await;
    assert_eq!(crate::ids(&first).len(), 100);
    assert_eq!(first["execution_stats"]["total_keys_examined"], 105);
    let second = db
        .find(page(Some(first["bookmark"].as_str().unwrap())))
        .await;
    assert_eq!(second["execution_stats"]["total_keys_examined"], 100);
    let mut both = crate::ids(&first);
    both.extend(crate::ids(&second));
    both.dedup();
    assert_eq!(both.len(), 200);
    // A selector the index does not serve exactly reads on in full pages until it has enough.
    let answer = db
        .find(json!({"selector": {"color": "common", "n": {"$gte": 2500}}, "use_index": ["colors", "color"],
                     "limit": 10, "execution_stats": true}))
        .await;
    assert_eq!(crate::ids(&answer).len(), 10);
}
