//! Mango against a real SQLite store: operators over a document corpus with expected results,
//! index selection as `_explain` shows it, and index maintenance as the database changes.

mod corpus;
mod maintenance;
mod planning;

use std::sync::Arc;

use outpost_query::FindRequest;
use outpost_store::sqlite::SqliteStore;
use outpost_store::{DocUpdate, Origin, Store, UpdateMode};
use serde_json::{Value, json};

pub struct Db {
    pub store: Arc<SqliteStore>,
    _dir: tempfile::TempDir,
}

impl Db {
    pub async fn new() -> Db {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(dir.path()).unwrap());
        store.create_db("db").await.unwrap();
        Db { store, _dir: dir }
    }

    /// Writes documents (`_id` required) as new documents.
    pub async fn put_all(&self, docs: &[Value]) {
        let updates = docs
            .iter()
            .map(|d| {
                let mut body = d.as_object().unwrap().clone();
                let id = body
                    .shift_remove("_id")
                    .unwrap()
                    .as_str()
                    .unwrap()
                    .to_owned();
                DocUpdate {
                    id,
                    mode: UpdateMode::Edit { base: None },
                    deleted: false,
                    body,
                    new_attachments: Vec::new(),
                    origin: Origin::Client,
                }
            })
            .collect();
        for r in self.store.write_docs("db", updates).await.unwrap() {
            r.unwrap();
        }
    }

    pub async fn create_index(&self, def: Value) -> Value {
        outpost_query::create_index(self.store.as_ref(), "db", &def)
            .await
            .unwrap()
    }

    pub async fn find(&self, body: Value) -> Value {
        let req = FindRequest::parse(&body).unwrap();
        outpost_query::find(self.store.clone(), "db", &req)
            .await
            .unwrap()
    }

    pub async fn explain(&self, body: Value) -> Value {
        let req = FindRequest::parse(&body).unwrap();
        outpost_query::explain(self.store.as_ref(), "db", &req)
            .await
            .unwrap()
    }

    /// The ids `_find` returns, in order.
    pub async fn ids(&self, body: Value) -> Vec<String> {
        ids(&self.find(body).await)
    }
}

pub fn ids(answer: &Value) -> Vec<String> {
    answer["docs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["_id"].as_str().unwrap().to_owned())
        .collect()
}

pub fn smash() -> Vec<Value> {
    vec![
        json!({"_id": "mario", "name": "Mario", "rank": 5, "series": "mario", "debut": 1981, "tags": ["plumber", "hero"], "stats": {"speed": 3}}),
        json!({"_id": "puff", "name": "Jigglypuff", "rank": 8, "series": "pokemon", "debut": 1996, "tags": ["pink"]}),
        json!({"_id": "link", "name": "Link", "rank": 10, "series": "zelda", "debut": 1986, "tags": ["hero", "elf"], "stats": {"speed": 4}}),
        json!({"_id": "dk", "name": "Donkey Kong", "rank": 7, "series": "mario", "debut": 1981, "tags": []}),
        json!({"_id": "pikachu", "name": "Pikachu", "rank": 1, "series": "pokemon", "debut": 1996, "tags": ["electric"]}),
        json!({"_id": "falcon", "name": "Captain Falcon", "rank": 4, "series": "f-zero", "debut": 1990}),
        json!({"_id": "luigi", "name": "Luigi", "rank": 11, "series": "mario", "debut": 1983, "tags": ["plumber"]}),
        json!({"_id": "fox", "name": "Fox", "rank": 3, "series": "star fox", "debut": 1993, "stats": {"speed": 5}}),
        json!({"_id": "ness", "name": "Ness", "rank": 9, "series": "earthbound", "debut": 1994, "nick": null}),
        json!({"_id": "samus", "name": "samus", "rank": 12.5, "series": "metroid", "debut": 1986}),
        json!({"_id": "yoshi", "name": "Yoshi", "rank": 6, "series": "mario", "debut": 1990}),
        json!({"_id": "kirby", "name": "Kirby", "rank": 2, "series": "kirby", "debut": 1992, "stats": {"speed": 2, "power": 1}}),
    ]
}
