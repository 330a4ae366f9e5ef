//! Which index a query uses, as `_explain` reports it, and the errors and warnings of planning.

use outpost_query::{FindRequest, QueryError};
use serde_json::json;

use crate::{Db, smash};

async fn index_name(db: &Db, body: serde_json::Value) -> String {
    let explain = db.explain(body).await;
    explain["index"]["name"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn explain_chooses_the_index_that_bounds_the_most_fields() {
    let db = Db::new().await;
    db.put_all(&smash()).await;
    // Without a json index: `_all_docs`, with CouchDB's warning.
    assert_eq!(
        index_name(&db, json!({"selector": {"series": "mario"}})).await,
        "_all_docs"
    );
    let answer = db.find(json!({"selector": {"series": "mario"}})).await;
    assert_eq!(
        answer["warning"],
        "No matching index found, create an index to optimize query time."
    );

    for (name, fields) in [
        ("series", json!(["series"])),
        ("series-debut", json!(["series", "debut"])),
        ("rank", json!(["rank"])),
    ] {
        db.create_index(json!({"index": {"fields": fields}, "name": name, "ddoc": "idx"}))
            .await;
    }
    // Both series indexes bound one field; the one with fewer fields wins.
    assert_eq!(
        index_name(&db, json!({"selector": {"series": "mario"}})).await,
        "series"
    );
    // Bounding two fields beats bounding one.
    let both = json!({"selector": {"series": "mario", "debut": {"$gt": 1981}}});
    assert_eq!(index_name(&db, both.clone()).await, "series-debut");
    let explain = db.explain(both.clone()).await;
    assert_eq!(explain["index"]["ddoc"], "_design/idx");
    assert_eq!(explain["mrargs"]["start_key"], json!(["mario", 1981]));
    assert_eq!(
        explain["selector"],
        json!({"$and": [{"series": {"$eq": "mario"}}, {"debut": {"$gt": 1981}}]})
    );
    let answer = db.find(both).await;
    assert!(answer.get("warning").is_none());
    // An index on a field the selector does not require cannot be used.
    assert_eq!(
        index_name(
            &db,
            json!({"selector": {"$or": [{"rank": 1}, {"rank": 2}]}})
        )
        .await,
        "_all_docs"
    );
    // A sort on the second field of an index is served when the first is fixed by `$eq`.
    let sorted = json!({"selector": {"series": "mario"}, "sort": ["debut"]});
    assert_eq!(index_name(&db, sorted.clone()).await, "series-debut");
    // Equal keys come in document id order.
    assert_eq!(db.ids(sorted).await, ["dk", "mario", "luigi", "yoshi"]);
}

#[tokio::test]
async fn sorts_need_an_index_and_one_direction() {
    let db = Db::new().await;
    db.put_all(&smash()).await;
    let req =
        FindRequest::parse(&json!({"selector": {"rank": {"$gt": 0}}, "sort": ["rank"]})).unwrap();
    match outpost_query::find(db.store.clone(), "db", &req).await {
        Err(QueryError::NoUsableIndex(reason)) => assert_eq!(
            reason,
            "No index exists for this sort, try indexing by the sort fields."
        ),
        other => panic!("expected no_usable_index, got {other:?}"),
    }
    // Sorting by `_id` is what `_all_docs` gives.
    let by_id = db
        .ids(json!({"selector": {"series": "mario"}, "sort": [{"_id": "desc"}]}))
        .await;
    assert_eq!(by_id, ["yoshi", "mario", "luigi", "dk"]);
    assert!(matches!(
        FindRequest::parse(&json!({"selector": {}, "sort": [{"a": "asc"}, {"b": "desc"}]})),
        Err(QueryError::MixedSort)
    ));
    assert!(matches!(
        FindRequest::parse(&json!({"selector": {}, "sort": {"a": "asc"}})),
        Err(QueryError::BadRequest(_))
    ));
    assert!(matches!(
        FindRequest::parse(&json!({"sort": ["a"]})),
        Err(QueryError::MissingKey("selector"))
    ));
}

#[tokio::test]
async fn use_index_and_partial_indexes() {
    let db = Db::new().await;
    db.put_all(&smash()).await;
    db.create_index(json!({"index": {"fields": ["rank"]}, "name": "rank", "ddoc": "a"}))
        .await;
    db.create_index(json!({"index": {"fields": ["series"]}, "name": "series", "ddoc": "b"}))
        .await;
    db.create_index(json!({
        "index": {"fields": ["debut"], "partial_filter_selector": {"series": "mario"}},
        "name": "mario-debut", "ddoc": "c"
    }))
    .await;
    let q = json!({"selector": {"rank": {"$gt": 0}, "series": "mario"}});
    // Fewer fields tie; the first by design document and name wins.
    assert_eq!(index_name(&db, q.clone()).await, "rank");
    let mut named = q.clone();
    named["use_index"] = json!(["b", "series"]);
    assert_eq!(index_name(&db, named).await, "series");
    // Naming an index that cannot serve the query falls back, with a warning.
    let bad = json!({"selector": {"series": "mario"}, "use_index": "_design/a"});
    assert_eq!(index_name(&db, bad.clone()).await, "series");
    let answer = db.find(bad).await;
    assert_eq!(
        answer["warning"],
        "_design/a was not used because it does not contain a valid index for this query."
    );
    // A partial index is only used when named, and then holds only what its filter admits.
    let debut = json!({"selector": {"debut": {"$gt": 1900}}});
    assert_eq!(index_name(&db, debut.clone()).await, "_all_docs");
    let mut partial = debut.clone();
    partial["use_index"] = json!(["c", "mario-debut"]);
    assert_eq!(index_name(&db, partial.clone()).await, "mario-debut");
    let mut got = db.ids(partial).await;
    got.sort();
    assert_eq!(got, ["dk", "luigi", "mario", "yoshi"]);
    // The filter is stored normalized in the design document, as CouchDB stores it.
    let listed = outpost_query::list_indexes(db.store.as_ref(), "db", 0, None)
        .await
        .unwrap();
    assert_eq!(listed["total_rows"], 4);
    assert_eq!(listed["indexes"][0]["name"], "_all_docs");
    assert_eq!(
        listed["indexes"][3]["def"]["partial_filter_selector"],
        json!({"series": {"$eq": "mario"}})
    );
    let page = outpost_query::list_indexes(db.store.as_ref(), "db", 1, Some(2))
        .await
        .unwrap();
    assert_eq!(page["total_rows"], 4);
    let names: Vec<&str> = page["indexes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["rank", "series"]);
}
