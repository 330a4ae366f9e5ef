//! Brings a design document's view indexes up to date from the changes feed.
//!
//! Each step reads a bounded page of changes after the index's sequence (each document once,
//! at its winning revision), maps every changed document with every map function of the set in
//! the sandbox, and hands each view's rows to the store, which replaces those documents' rows
//! and moves the index's sequence in one transaction, only if no other update moved it
//! meanwhile (a racing update re-reads the state and carries on). A deleted document, or one a
//! map function throws on, contributes no rows to that view; the failure is logged, as CouchDB
//! logs it.

use outpost_core::collate::collate;
use outpost_js::Sandbox;
use outpost_store::{ChangesQuery, IndexDocRows, IndexEntry, IndexUpdate, Store};
use serde_json::{Map, Value};

use crate::{ViewError, ViewSet};

/// How many changes one step reads, maps and writes.
const STEP: u64 = 500;
/// How many documents cross into the sandbox in one call.
const MAP_BATCH: usize = 100;

/// Makes every view of the set reflect every change up to the database's current sequence.
pub async fn update(
    store: &dyn Store,
    sandbox: &Sandbox,
    db: &str,
    set: &ViewSet,
) -> Result<(), ViewError> {
    let sources: Vec<String> = set.views.iter().map(|v| v.map.clone()).collect();
    let names: Vec<String> = set.views.iter().map(|v| set.index_name(&v.name)).collect();
    loop {
        let mut seqs = Vec::with_capacity(names.len());
        for name in &names {
            let seq = store
                .index_state(db, name)
                .await?
                .filter(|s| s.signature == set.signature)
                .map(|s| s.seq);
            seqs.push(seq);
        }
        let since = seqs.iter().map(|s| s.unwrap_or(0)).min().unwrap_or(0);
        let query = ChangesQuery {
            since,
            limit: STEP,
            descending: false,
            include_docs: true,
        };
        let changes = store.changes(db, &query).await?;
        let all_built = seqs.iter().all(Option::is_some);
        if changes.is_empty() && all_built {
            return Ok(());
        }
        let upto = changes.last().map_or(since, |c| c.seq);
        // The documents each function sees, and which changes are mapped at all.
        let mut mapped: Vec<Option<usize>> = Vec::with_capacity(changes.len());
        let mut docs: Vec<String> = Vec::new();
        for change in &changes {
            let skip = change.tree.is_deleted()
                || (!set.include_design && change.id.starts_with("_design/"));
            if skip {
                mapped.push(None);
                continue;
            }
            let mut doc = Map::new();
            doc.insert("_id".into(), Value::String(change.id.clone()));
            if let Some(winner) = change.tree.winner() {
                doc.insert("_rev".into(), Value::String(winner.rev.to_string()));
            }
            if let Some(Ok(Value::Object(mut fields))) =
                change.body.as_deref().map(outpost_core::json::from_str)
            {
                // As CouchDB gives it to map functions: attachments without how they are stored.
                outpost_core::attachment::strip_encoding_info(&mut fields);
                doc.extend(fields);
            }
            // Map functions see a document's conflicts, as CouchDB gives them.
            let conflicts = change.tree.conflicts();
            if !conflicts.is_empty() {
                doc.insert(
                    "_conflicts".into(),
                    Value::Array(
                        conflicts
                            .iter()
                            .map(|r| Value::String(r.to_string()))
                            .collect(),
                    ),
                );
            }
            if set.local_seq {
                doc.insert("_local_seq".into(), Value::from(change.seq));
            }
            mapped.push(Some(docs.len()));
            docs.push(Value::Object(doc).to_string());
        }
        let mut outcomes = Vec::with_capacity(docs.len());
        for batch in docs.chunks(MAP_BATCH) {
            outcomes.extend(
                sandbox
                    .map(&set.map_sig(), &sources, set.lib.as_ref(), batch)
                    .await?,
            );
        }
        for (v, name) in names.iter().enumerate() {
            // A view ahead of the others (a step of it applied, the others' not) waits until
            // they catch up; it is at `since` again only then.
            if seqs[v].unwrap_or(0) != since {
                continue;
            }
            let rows: Vec<IndexDocRows> = changes
                .iter()
                .zip(&mapped)
                .map(|(change, slot)| {
                    let rows = match slot.map(|i| &outcomes[i][v]) {
                        None => Vec::new(),
                        Some(Ok(emitted)) => {
                            // Rows of one document with the same key sort by value, as in
                            // CouchDB; the store keeps them in the order given.
                            let mut emitted: Vec<&(Value, Value)> = emitted.iter().collect();
                            emitted.sort_by(|a, b| {
                                collate(&a.0, &b.0).then_with(|| collate(&a.1, &b.1))
                            });
                            emitted
                                .into_iter()
                                .map(|(key, value)| IndexEntry {
                                    key: key.clone(),
                                    value: value.to_string(),
                                })
                                .collect()
                        }
                        Some(Err(error)) => {
                            tracing::info!(db, ddoc = %set.ddoc_id, view = %set.views[v].name,
                                doc = %change.id, error = %error,
                                "map function failed on a document; it is left out of the view");
                            Vec::new()
                        }
                    };
                    IndexDocRows {
                        doc_id: change.id.clone(),
                        rows,
                    }
                })
                .collect();
            store
                .update_index(
                    db,
                    IndexUpdate {
                        name: name.clone(),
                        signature: set.signature.clone(),
                        since,
                        upto,
                        docs: rows,
                    },
                )
                .await?;
        }
    }
}
