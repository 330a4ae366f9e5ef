//! Brings a json index up to date from the changes feed.
//!
//! The index's rows reflect the database up to the sequence kept in its state. An update reads
//! the changes after it a bounded page at a time (each document once, at its latest revision),
//! derives each changed document's row, and hands the page to the store, which replaces those
//! documents' rows and moves the sequence in one transaction, only if no other update moved it
//! meanwhile. Two queries updating one index at once therefore never interleave: the loser
//! reads the state again and carries on from where the winner got.

use outpost_core::json;
use outpost_store::{ChangesQuery, IndexDocRows, IndexEntry, IndexUpdate, Store};
use serde_json::{Map, Value};

use crate::{MangoIndex, QueryError};

/// How many changes one update step reads and writes.
const STEP: u64 = 1000;

/// Makes the index reflect every change up to the database's current sequence.
pub async fn update(store: &dyn Store, db: &str, index: &MangoIndex) -> Result<(), QueryError> {
    let name = index.store_name();
    let signature = index.signature();
    loop {
        let current = store
            .index_state(db, &name)
            .await?
            .filter(|state| state.signature == signature);
        let since = current.as_ref().map_or(0, |state| state.seq);
        let query = ChangesQuery {
            since,
            limit: STEP,
            descending: false,
            include_docs: true,
        };
        let changes = store.changes(db, &query).await?;
        let upto = changes.last().map_or(since, |c| c.seq);
        let docs = changes
            .iter()
            .map(|change| {
                let rows = if change.tree.is_deleted() || change.id.starts_with("_design/") {
                    Vec::new()
                } else {
                    let winner = change.tree.winner().map(|w| w.rev.to_string());
                    let doc = document(&change.id, winner.as_deref(), change.body.as_deref());
                    index
                        .key_of(&doc)
                        .map(|key| {
                            vec![IndexEntry {
                                key,
                                value: "null".to_owned(),
                            }]
                        })
                        .unwrap_or_default()
                };
                IndexDocRows {
                    doc_id: change.id.clone(),
                    rows,
                }
            })
            .collect::<Vec<_>>();
        // Nothing changed; an index never built still gets its (empty) state written.
        if docs.is_empty() && current.is_some() {
            return Ok(());
        }
        let full = changes.len() as u64 == STEP;
        let applied = store
            .update_index(
                db,
                IndexUpdate {
                    name: name.clone(),
                    signature: signature.clone(),
                    since,
                    upto,
                    docs,
                },
            )
            .await?;
        if applied && !full {
            return Ok(());
        }
    }
}

/// Drops the stored rows of json indexes whose definition is gone (its design document was
/// deleted or edited by other means than `DELETE /{db}/_index`, or replaced by replication).
pub async fn drop_orphans(
    store: &dyn Store,
    db: &str,
    indexes: &[MangoIndex],
) -> Result<(), QueryError> {
    for (name, _) in store.indexes(db).await? {
        if name.starts_with("mango/") && !indexes.iter().any(|i| i.store_name() == name) {
            store.drop_index(db, &name).await?;
        }
    }
    Ok(())
}

/// A stored document as queries see it: `_id` and `_rev` in front of its body's fields.
pub fn document(id: &str, rev: Option<&str>, body: Option<&str>) -> Value {
    let mut map = Map::new();
    map.insert("_id".into(), Value::from(id));
    if let Some(rev) = rev {
        map.insert("_rev".into(), Value::from(rev));
    }
    if let Some(Ok(Value::Object(mut fields))) = body.map(json::from_str) {
        // The document as a client reads it, without how its attachments are stored.
        outpost_core::attachment::strip_encoding_info(&mut fields);
        for (k, v) in fields {
            map.insert(k, v);
        }
    }
    Value::Object(map)
}
