//! Every operator over the corpus, with and without an index that serves the query.

use serde_json::{Value, json};

use crate::{Db, smash};

fn sorted(mut ids: Vec<String>) -> Vec<String> {
    ids.sort();
    ids
}

fn expect(ids: &[&str]) -> Vec<String> {
    sorted(ids.iter().map(|s| s.to_string()).collect())
}

/// Selectors and the ids they match in the corpus.
fn cases() -> Vec<(Value, Vec<String>)> {
    vec![
        (
            json!({"series": "mario"}),
            expect(&["dk", "luigi", "mario", "yoshi"]),
        ),
        (json!({"series": {"$eq": "kirby"}}), expect(&["kirby"])),
        (
            json!({"rank": {"$gt": 9}}),
            expect(&["link", "luigi", "samus"]),
        ),
        (json!({"rank": {"$gte": 11}}), expect(&["luigi", "samus"])),
        (json!({"rank": {"$lt": 3}}), expect(&["kirby", "pikachu"])),
        (json!({"rank": {"$lte": 2, "$gt": 1}}), expect(&["kirby"])),
        (
            json!({"rank": {"$ne": 1}, "series": "pokemon"}),
            expect(&["puff"]),
        ),
        (
            json!({"series": {"$in": ["kirby", "zelda"]}}),
            expect(&["kirby", "link"]),
        ),
        (
            json!({"series": {"$nin": ["mario", "pokemon", "zelda"]}}),
            expect(&["falcon", "fox", "kirby", "ness", "samus"]),
        ),
        (json!({"nick": {"$exists": true}}), expect(&["ness"])),
        (json!({"nick": {"$type": "null"}}), expect(&["ness"])),
        (
            json!({"rank": {"$type": "number"}, "debut": {"$gt": 1993}}),
            expect(&["ness", "pikachu", "puff"]),
        ),
        (json!({"tags": {"$size": 2}}), expect(&["link", "mario"])),
        (json!({"name": {"$regex": "^[A-C]"}}), expect(&["falcon"])),
        (json!({"name": {"$regex": "(?i)^s"}}), expect(&["samus"])),
        (
            json!({"rank": {"$mod": [5, 0]}}),
            expect(&["link", "mario"]),
        ),
        (
            json!({"tags": {"$all": ["hero", "plumber"]}}),
            expect(&["mario"]),
        ),
        (
            json!({"tags": {"$elemMatch": {"$eq": "pink"}}}),
            expect(&["puff"]),
        ),
        (
            json!({"tags": {"$allMatch": {"$eq": "plumber"}}}),
            expect(&["luigi"]),
        ),
        (
            json!({"stats": {"$keyMapMatch": {"$eq": "power"}}}),
            expect(&["kirby"]),
        ),
        (json!({"series": {"$beginsWith": "star"}}), expect(&["fox"])),
        (
            json!({"stats.speed": {"$gte": 4}}),
            expect(&["fox", "link"]),
        ),
        (json!({"stats": {"speed": 3}}), expect(&["mario"])),
        (
            json!({"$or": [{"series": "zelda"}, {"rank": 1}]}),
            expect(&["link", "pikachu"]),
        ),
        (
            json!({"$and": [{"series": "mario"}, {"debut": {"$gt": 1981}}]}),
            expect(&["luigi", "yoshi"]),
        ),
        (
            json!({"series": "mario", "$nor": [{"rank": 5}, {"rank": 6}]}),
            expect(&["dk", "luigi"]),
        ),
        (
            json!({"series": "pokemon", "rank": {"$not": {"$gt": 1}}}),
            expect(&["pikachu"]),
        ),
        // Strings collate as CouchDB does: lowercase before uppercase, letters in order.
        (
            json!({"name": {"$gt": "S", "$lt": "Z"}}),
            expect(&["samus", "yoshi"]),
        ),
        (
            json!({"name": {"$gte": "samus", "$lt": "Samus"}}),
            expect(&["samus"]),
        ),
        // Across types: every string is above every number.
        (
            json!({"series": {"$gt": 1000000}}),
            sorted(
                smash()
                    .iter()
                    .map(|d| d["_id"].as_str().unwrap().to_owned())
                    .collect(),
            ),
        ),
        (
            json!({"_id": {"$gt": "p"}}),
            expect(&["pikachu", "puff", "samus", "yoshi"]),
        ),
    ]
}

#[tokio::test]
async fn operators_match_the_expected_documents_without_an_index() {
    let db = Db::new().await;
    db.put_all(&smash()).await;
    for (selector, expected) in cases() {
        let got = sorted(db.ids(json!({"selector": selector, "limit": 100})).await);
        assert_eq!(got, expected, "{selector}");
    }
}

#[tokio::test]
async fn operators_match_the_same_documents_through_indexes() {
    let db = Db::new().await;
    db.put_all(&smash()).await;
    for fields in [
        json!(["rank"]),
        json!(["series", "debut"]),
        json!(["name"]),
        json!(["stats.speed"]),
    ] {
        db.create_index(json!({"index": {"fields": fields}})).await;
    }
    for (selector, expected) in cases() {
        let answer = db.find(json!({"selector": selector, "limit": 100})).await;
        let got = sorted(crate::ids(&answer));
        assert_eq!(got, expected, "{selector}");
    }
}

#[tokio::test]
async fn sort_limit_skip_fields_and_bookmarks() {
    let db = Db::new().await;
    db.put_all(&smash()).await;
    db.create_index(json!({"index": {"fields": ["rank"]}}))
        .await;
    let first = db
        .find(json!({"selector": {"rank": {"$gt": 2}}, "sort": ["rank"], "limit": 3, "skip": 1, "fields": ["_id", "rank"]}))
        .await;
    assert_eq!(
        first["docs"],
        json!([{"_id": "falcon", "rank": 4}, {"_id": "mario", "rank": 5}, {"_id": "yoshi", "rank": 6}])
    );
    let next = db
        .find(json!({"selector": {"rank": {"$gt": 2}}, "sort": ["rank"], "limit": 3, "fields": ["_id"], "bookmark": first["bookmark"]}))
        .await;
    assert_eq!(crate::ids(&next), ["dk", "puff", "ness"]);
    let desc = db
        .ids(json!({"selector": {"rank": {"$gt": 0}}, "sort": [{"rank": "desc"}], "limit": 2}))
        .await;
    assert_eq!(desc, ["samus", "luigi"]);
    // Nested fields are returned nested, and missing ones left out.
    let nested = db
        .find(json!({"selector": {"_id": "kirby"}, "fields": ["stats.power", "nope"]}))
        .await;
    assert_eq!(nested["docs"], json!([{"stats": {"power": 1}}]));
    // The default limit is 25.
    let many: Vec<Value> = (0..30)
        .map(|i| json!({"_id": format!("x{i:02}"), "rank": 100 + i}))
        .collect();
    db.put_all(&many).await;
    assert_eq!(
        db.ids(json!({"selector": {"rank": {"$gte": 100}}}))
            .await
            .len(),
        25
    );
    // A page past the end is empty, and keeps the bookmark it was given.
    let end = db
        .find(json!({"selector": {"rank": {"$gt": 200}}, "sort": ["rank"]}))
        .await;
    assert_eq!(end["docs"], json!([]));
    assert_eq!(end["bookmark"], "nil");
}

#[tokio::test]
async fn answers_longer_than_a_page_come_whole_and_in_order() {
    let db = Db::new().await;
    let docs: Vec<Value> = (0..650)
        .map(|i| json!({"_id": format!("p{i:04}"), "n": 1000 - i}))
        .collect();
    db.put_all(&docs).await;
    let all = db
        .ids(json!({"selector": {"n": {"$gt": 0}}, "limit": 10000}))
        .await;
    assert_eq!(all.len(), 650);
    assert_eq!(all[0], "p0000");
    assert_eq!(all[649], "p0649");
    db.create_index(json!({"index": {"fields": ["n"]}})).await;
    let sorted = db
        .ids(json!({"selector": {"n": {"$gt": 0}}, "sort": ["n"], "limit": 10000, "skip": 399}))
        .await;
    assert_eq!(sorted.len(), 251);
    assert_eq!(sorted[0], "p0250");
    assert_eq!(sorted[250], "p0000");
}
