//! Secondary indexes: the values that cross the [`Store`](crate::Store) interface for them.
//!
//! An index is a sorted set of rows `(key, doc id, value)` derived from a database's documents,
//! named by its owner (Mango json indexes and map/reduce views use the same tables). The store
//! does not know how rows are derived: an indexer reads the changes after the index's sequence
//! ([`Store::changes`](crate::Store::changes) with `include_docs`), computes each changed
//! document's rows, and hands them over with [`IndexUpdate`]; the store replaces that document's
//! rows and moves the index's sequence in one transaction, and only if the index is still where
//! the indexer found it (so two indexers racing on one index cannot interleave).
//!
//! A purge ([`Store::purge`](crate::Store::purge)) deletes a document purged whole from every
//! index at once, since it leaves no change for an indexer to find; and a step that carries rows
//! of a document purged after the step's `upto` (after the indexer read its changes) writes none
//! for it (those rows were computed from revisions that are gone), so a step racing a purge
//! cannot bring them back.
//!
//! Rows are ordered by CouchDB's collation of their key, then of their doc id, then by the
//! order a document emitted them. The order is kept as a binary sort key
//! ([`outpost_core::collate::sort_key`]) so scans are plain B-tree ranges; [`KeyBound`] builds
//! range bounds in the same encoding.

use outpost_core::RevTree;
use outpost_core::collate::{self, KEY_MAX_BYTE};
use serde_json::Value;

/// Where an index stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexState {
    /// What the index was built from (its definition's hash); an update under another signature
    /// starts the index over.
    pub signature: String,
    /// The database sequence the index reflects: every change up to it is indexed.
    pub seq: u64,
    /// How many rows the index holds.
    pub rows: u64,
}

/// One row a document contributes to an index.
#[derive(Debug, Clone)]
pub struct IndexEntry {
    /// The row's key; rows sort by it in CouchDB's collation.
    pub key: Value,
    /// The row's value as JSON text (`null` when there is none).
    pub value: String,
}

/// All the rows one document now contributes (none when it was deleted or no longer matches).
#[derive(Debug, Clone)]
pub struct IndexDocRows {
    pub doc_id: String,
    pub rows: Vec<IndexEntry>,
}

/// A step of an index's incremental update.
#[derive(Debug, Clone)]
pub struct IndexUpdate {
    /// The index's name, unique within the database.
    pub name: String,
    pub signature: String,
    /// The sequence the indexer started from: the index's current sequence, or 0 to build an
    /// index that does not exist under this signature (its rows under another go first).
    pub since: u64,
    /// The sequence the index reaches with this step.
    pub upto: u64,
    /// The documents that changed in `(since, upto]`, each with its new rows.
    pub docs: Vec<IndexDocRows>,
}

/// One end of an index range, in the binary sort-key encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyBound {
    bytes: Vec<u8>,
    inclusive: bool,
}

impl KeyBound {
    /// Rows whose key is at least (above, when not `inclusive`) `key`.
    pub fn lower(key: &Value, inclusive: bool) -> KeyBound {
        KeyBound::lower_prefix(collate::sort_key(key), inclusive)
    }

    /// Rows whose key is at most (below, when not `inclusive`) `key`.
    pub fn upper(key: &Value, inclusive: bool) -> KeyBound {
        KeyBound::upper_prefix(collate::sort_key(key), inclusive)
    }

    /// Rows from `(key, doc_id)` on (after it when not `inclusive`): CouchDB's `startkey` with
    /// `startkey_docid`.
    pub fn lower_with_doc(key: &Value, doc_id: &str, inclusive: bool) -> KeyBound {
        KeyBound {
            bytes: row_key(key, doc_id),
            inclusive,
        }
    }

    /// Rows up to `(key, doc_id)` (before it when not `inclusive`): CouchDB's `endkey` with
    /// `endkey_docid`.
    pub fn upper_with_doc(key: &Value, doc_id: &str, inclusive: bool) -> KeyBound {
        KeyBound {
            bytes: row_key(key, doc_id),
            inclusive,
        }
    }

    /// Rows whose key starts with the sort key `prefix` or sorts above it (only above the keys
    /// starting with it when not `inclusive`). With [`collate::array_prefix_key`] this bounds
    /// compound keys by their first elements.
    pub fn lower_prefix(mut prefix: Vec<u8>, inclusive: bool) -> KeyBound {
        if !inclusive {
            prefix.push(KEY_MAX_BYTE);
        }
        KeyBound {
            bytes: prefix,
            inclusive: true,
        }
    }

    /// Rows whose key starts with the sort key `prefix` or sorts below it (only below the keys
    /// starting with it when not `inclusive`).
    pub fn upper_prefix(mut prefix: Vec<u8>, inclusive: bool) -> KeyBound {
        if inclusive {
            prefix.push(KEY_MAX_BYTE);
        }
        KeyBound {
            bytes: prefix,
            inclusive: true,
        }
    }

    /// The bound in the binary sort-key encoding, what an engine compares stored keys with.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Whether rows equal to the bound are in the range.
    pub fn inclusive(&self) -> bool {
        self.inclusive
    }
}

/// The stored sort key of a row: its key's, then its doc id's.
pub fn row_key(key: &Value, doc_id: &str) -> Vec<u8> {
    let mut out = collate::sort_key(key);
    collate::write_sort_key(&Value::String(doc_id.to_owned()), &mut out);
    out
}

/// A range and page of an index. `lower` and `upper` bound the keys whatever the direction;
/// `descending` only reverses the order rows come in.
#[derive(Debug, Clone, Default)]
pub struct IndexQuery {
    pub lower: Option<KeyBound>,
    pub upper: Option<KeyBound>,
    pub descending: bool,
    pub skip: u64,
    pub limit: u64,
    /// Whether to join each row's document (its tree and its winner's body).
    pub include_docs: bool,
}

/// One row of an index scan.
#[derive(Debug, Clone)]
pub struct IndexRow {
    /// The key as JSON text.
    pub key: String,
    pub doc_id: String,
    /// The value as JSON text.
    pub value: String,
    /// The document as it is now, when asked for and it still exists.
    pub doc: Option<IndexedDoc>,
}

/// A document joined to an index row.
#[derive(Debug, Clone)]
pub struct IndexedDoc {
    pub seq: u64,
    pub tree: RevTree,
    pub deleted: bool,
    /// The winner's body (without `_id` and `_rev`).
    pub body: String,
}
