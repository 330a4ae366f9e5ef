//! Secondary index tables (see [`crate::index`]): reads on a read connection and the writer's
//! index steps.
//!
//! `indexes` holds one row per index with its signature, the sequence it reflects and the
//! sort-key encoding its rows were written in; `index_rows` holds the rows, keyed by
//! `(index, sort key of key and doc id, emit number)` so that a range scan is one B-tree walk,
//! with `index_rows_by_doc` to find a document's old rows when it changes.

use outpost_core::collate::SORT_KEY_VERSION;
use rusqlite::types::Null;
use rusqlite::{Connection, OptionalExtension, params};

use crate::index::row_key;
use crate::{IndexQuery, IndexRow, IndexState, IndexUpdate, IndexedDoc, StoreError};

/// The tables, created by the schema of version 4 on.
pub(super) const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS indexes (
    id          INTEGER PRIMARY KEY,
    db          INTEGER NOT NULL,
    name        TEXT NOT NULL,
    signature   TEXT NOT NULL,
    -- The sort-key encoding of the rows (`collate::SORT_KEY_VERSION`); rows written under
    -- another one are rebuilt.
    key_version TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    rows        INTEGER NOT NULL DEFAULT 0,
    UNIQUE (db, name)
);
CREATE TABLE IF NOT EXISTS index_rows (
    ix    INTEGER NOT NULL,
    -- Sort key of the row's key followed by its doc id's: byte order is CouchDB's collation.
    k     BLOB NOT NULL,
    -- Tells apart the rows one document emits with the same key.
    n     INTEGER NOT NULL,
    doc   TEXT NOT NULL,
    key   TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (ix, k, n)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS index_rows_by_doc ON index_rows (ix, doc);
"#;

/// Deletes one document's rows. Without `INDEXED BY`, SQLite 3.54 plans this as a scan of the
/// index's primary-key range (`ix = ?`), which made each changed document cost time in
/// proportion to the whole index.
const DELETE_DOC_ROWS: &str =
    "DELETE FROM index_rows INDEXED BY index_rows_by_doc WHERE ix = ?1 AND doc = ?2";

/// Whether a document was purged after a sequence, the `upto` of a step (see [`crate::index`]).
/// Without `INDEXED BY`, SQLite plans this as a scan of the primary key's range `(db, seq >
/// ?3)`: every event after the step, read once per document of the step, which made building an
/// index from scratch quadratic in the database's size (20,000 documents: 26 s).
const PURGED_SINCE: &str = "SELECT 1 FROM events INDEXED BY events_by_doc
     WHERE db = ?1 AND doc = ?2 AND seq > ?3 AND kind = 'purged'";

/// Deletes a purged document's rows from every index of its database.
pub(super) fn forget_doc(tx: &Connection, db: i64, doc: &str) -> Result<(), StoreError> {
    let indexes: Vec<i64> = tx
        .prepare_cached("SELECT id FROM indexes WHERE db = ?1")?
        .query_map([db], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let mut delete = tx.prepare_cached(DELETE_DOC_ROWS)?;
    let mut count =
        tx.prepare_cached("UPDATE indexes SET rows = max(0, rows - ?2) WHERE id = ?1")?;
    for ix in indexes {
        let removed = delete.execute(params![ix, doc])?;
        if removed > 0 {
            count.execute(params![ix, removed as i64])?;
        }
    }
    Ok(())
}

fn db_id(c: &Connection, name: &str) -> Result<i64, StoreError> {
    c.prepare_cached("SELECT id FROM dbs WHERE name = ?1")?
        .query_row([name], |r| r.get(0))
        .optional()?
        .ok_or(StoreError::NoDb)
}

/// An index's id and state; `None` when it does not exist or its rows are in an old encoding.
fn find(c: &Connection, db: i64, name: &str) -> Result<Option<(i64, IndexState)>, StoreError> {
    let row: Option<(i64, String, String, i64, i64)> = c
        .prepare_cached(
            "SELECT id, signature, key_version, seq, rows FROM indexes WHERE db = ?1 AND name = ?2",
        )?
        .query_row(params![db, name], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .optional()?;
    Ok(row.and_then(|(id, signature, key_version, seq, rows)| {
        (key_version == SORT_KEY_VERSION).then(|| {
            (
                id,
                IndexState {
                    signature,
                    seq: seq.max(0) as u64,
                    rows: rows.max(0) as u64,
                },
            )
        })
    }))
}

pub fn index_state(c: &Connection, db: &str, name: &str) -> Result<Option<IndexState>, StoreError> {
    let db = db_id(c, db)?;
    Ok(find(c, db, name)?.map(|(_, state)| state))
}

pub fn indexes(c: &Connection, db: &str) -> Result<Vec<(String, IndexState)>, StoreError> {
    let db = db_id(c, db)?;
    let mut stmt = c.prepare_cached(
        "SELECT name, signature, seq, rows FROM indexes WHERE db = ?1 ORDER BY name",
    )?;
    let rows = stmt
        .query_map([db], |r| {
            Ok((
                r.get::<_, String>(0)?,
                IndexState {
                    signature: r.get(1)?,
                    seq: r.get::<_, i64>(2)?.max(0) as u64,
                    rows: r.get::<_, i64>(3)?.max(0) as u64,
                },
            ))
        })?
        .collect::<Result<_, _>>()?;
    Ok(rows)
}

/// Appends `q`'s key bounds to `sql` as conditions on `r.k`, bound as `?3` (lower) and `?4`
/// (upper).
fn key_range(sql: &mut String, q: &IndexQuery) {
    if let Some(lower) = &q.lower {
        sql.push_str(if lower.inclusive() {
            " AND r.k >= ?3"
        } else {
            " AND r.k > ?3"
        });
    }
    if let Some(upper) = &q.upper {
        sql.push_str(if upper.inclusive() {
            " AND r.k <= ?4"
        } else {
            " AND r.k < ?4"
        });
    }
}

pub fn scan(
    c: &Connection,
    db: &str,
    name: &str,
    q: &IndexQuery,
) -> Result<Vec<IndexRow>, StoreError> {
    let db = db_id(c, db)?;
    let (ix, _) = find(c, db, name)?.ok_or(StoreError::NotFound)?;
    // The document and its winner's body are joined in the same query: one statement per page.
    let mut sql = String::from(
        "SELECT r.key, r.doc, r.value, d.seq, d.tree, d.deleted, b.body FROM index_rows r
         LEFT JOIN docs d ON ?7 AND d.db = ?2 AND d.id = r.doc
         LEFT JOIN revs b ON ?7 AND b.db = d.db AND b.doc = d.id AND b.rev = d.winner
         WHERE r.ix = ?1",
    );
    key_range(&mut sql, q);
    sql.push_str(if q.descending {
        " ORDER BY r.k DESC, r.n DESC"
    } else {
        " ORDER BY r.k ASC, r.n ASC"
    });
    sql.push_str(" LIMIT ?5 OFFSET ?6");
    let limit = i64::try_from(q.limit).unwrap_or(i64::MAX);
    let skip = i64::try_from(q.skip).unwrap_or(i64::MAX);
    let lower = q.lower.as_ref().map(|b| b.bytes());
    let upper = q.upper.as_ref().map(|b| b.bytes());
    let mut stmt = c.prepare_cached(&sql)?;
    let mut rows = stmt.query(params![ix, db, lower, upper, limit, skip, q.include_docs])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        let doc_id: String = r.get(1)?;
        let doc = match (r.get::<_, Option<i64>>(3)?, r.get::<_, Option<String>>(6)?) {
            (Some(seq), Some(body)) => {
                let tree: String = r.get(4)?;
                let tree = serde_json::from_str(&tree)
                    .map_err(|e| StoreError::Corrupt(format!("revision tree of {doc_id}: {e}")))?;
                Some(IndexedDoc {
                    seq: seq.max(0) as u64,
                    tree,
                    deleted: r.get(5)?,
                    body,
                })
            }
            _ => None,
        };
        out.push(IndexRow {
            key: r.get(0)?,
            doc_id,
            value: r.get(2)?,
            doc,
        });
    }
    Ok(out)
}

/// Counts the rows within `q`'s bounds up to `cap`, from the `(ix, k)` index alone.
pub fn count(
    c: &Connection,
    db: &str,
    name: &str,
    q: &IndexQuery,
    cap: u64,
) -> Result<Option<u64>, StoreError> {
    let db = db_id(c, db)?;
    let (ix, _) = find(c, db, name)?.ok_or(StoreError::NotFound)?;
    let mut sql = String::from("SELECT count(*) FROM (SELECT 1 FROM index_rows r WHERE r.ix = ?1");
    key_range(&mut sql, q);
    // The bounds keep `scan`'s numbering (?3, ?4); ?2 is bound to nothing and unused.
    sql.push_str(" LIMIT ?5)");
    let lower = q.lower.as_ref().map(|b| b.bytes());
    let upper = q.upper.as_ref().map(|b| b.bytes());
    let limit = i64::try_from(cap.saturating_add(1)).unwrap_or(i64::MAX);
    let n: i64 = c
        .prepare_cached(&sql)?
        .query_row(params![ix, Null, lower, upper, limit], |r| r.get(0))?;
    let n = n.max(0) as u64;
    Ok((n <= cap).then_some(n))
}

/// Applies one step of an index update in the writer. Answers whether it was applied: `false`
/// when the index is no longer at `update.since` (another indexer moved it, or it was dropped),
/// and the indexer should read its state again.
pub(super) fn apply_update(
    tx: &Connection,
    db: &str,
    update: &IndexUpdate,
) -> Result<bool, StoreError> {
    let db = {
        let mut stmt = tx.prepare_cached("SELECT id FROM dbs WHERE name = ?1")?;
        stmt.query_row([db], |r| r.get::<_, i64>(0))
            .optional()?
            .ok_or(StoreError::NoDb)?
    };
    let found = find(tx, db, &update.name)?;
    let current = found
        .as_ref()
        .filter(|(_, s)| s.signature == update.signature);
    let ix = match current {
        Some((ix, state)) if state.seq == update.since => *ix,
        // Another indexer moved the index on (or is building it): this step is stale.
        Some(_) => return Ok(false),
        // Building from scratch: whatever the index held (another signature, an old encoding)
        // goes.
        None if update.since == 0 => {
            let stale: Option<i64> = tx
                .prepare_cached("SELECT id FROM indexes WHERE db = ?1 AND name = ?2")?
                .query_row(params![db, update.name], |r| r.get(0))
                .optional()?;
            if let Some(stale) = stale {
                tx.execute("DELETE FROM index_rows WHERE ix = ?1", [stale])?;
                tx.execute("DELETE FROM indexes WHERE id = ?1", [stale])?;
            }
            tx.execute(
                "INSERT INTO indexes (db, name, signature, key_version, seq, rows)
                 VALUES (?1, ?2, ?3, ?4, 0, 0)",
                params![db, update.name, update.signature, SORT_KEY_VERSION],
            )?;
            tx.last_insert_rowid()
        }
        None => return Ok(false),
    };
    let mut removed: i64 = 0;
    let mut added: i64 = 0;
    {
        let mut delete = tx.prepare_cached(DELETE_DOC_ROWS)?;
        let mut insert = tx.prepare_cached(
            "INSERT INTO index_rows (ix, k, n, doc, key, value) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        let mut purged = tx.prepare_cached(PURGED_SINCE)?;
        for doc in &update.docs {
            removed += delete.execute(params![ix, doc.doc_id])? as i64;
            // Rows computed before a purge of the document must not come back: a later step
            // indexes what is left of it (it moved to a new sequence), if anything. The step's
            // changes were read up to `upto`, so a purge after that read is above it.
            let upto = i64::try_from(update.upto).unwrap_or(i64::MAX);
            if purged.exists(params![db, doc.doc_id, upto])? {
                continue;
            }
            for (n, entry) in doc.rows.iter().enumerate() {
                let key_json = serde_json::to_string(&entry.key)
                    .map_err(|e| StoreError::Corrupt(format!("index key: {e}")))?;
                insert.execute(params![
                    ix,
                    row_key(&entry.key, &doc.doc_id),
                    n as i64,
                    doc.doc_id,
                    key_json,
                    entry.value,
                ])?;
                added += 1;
            }
        }
    }
    tx.prepare_cached("UPDATE indexes SET seq = ?2, rows = rows + ?3 - ?4 WHERE id = ?1")?
        .execute(params![
            ix,
            i64::try_from(update.upto).unwrap_or(i64::MAX),
            added,
            removed
        ])?;
    Ok(true)
}

/// Drops an index and its rows; answers whether there was one.
pub(super) fn drop_index(tx: &Connection, db: &str, name: &str) -> Result<bool, StoreError> {
    let db = db_id(tx, db)?;
    let ix: Option<i64> = tx
        .prepare_cached("SELECT id FROM indexes WHERE db = ?1 AND name = ?2")?
        .query_row(params![db, name], |r| r.get(0))
        .optional()?;
    let Some(ix) = ix else {
        return Ok(false);
    };
    tx.execute("DELETE FROM index_rows WHERE ix = ?1", [ix])?;
    tx.execute("DELETE FROM indexes WHERE id = ?1", [ix])?;
    Ok(true)
}

/// Drops every index of a database being deleted.
pub(super) fn drop_all(tx: &Connection, db: i64) -> Result<(), StoreError> {
    tx.execute(
        "DELETE FROM index_rows WHERE ix IN (SELECT id FROM indexes WHERE db = ?1)",
        [db],
    )?;
    tx.execute("DELETE FROM indexes WHERE db = ?1", [db])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use rusqlite::{Connection, StatementStatus, params};

    /// Asking whether a document was purged after a step visits that document's events, not
    /// every event after the step: a question about one of 20,000 documents takes a few steps.
    #[test]
    fn a_purge_is_looked_up_among_the_documents_own_events() {
        let (_dir, c) = crate::sqlite::schema::fresh_for_test();
        c.execute_batch(
            "INSERT INTO dbs (id, name, created_at) VALUES (1, 'db', 0);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20000)
             INSERT INTO events (db, seq, kind, doc, rev, origin, at)
                 SELECT 1, i, 'write', printf('d%06d', i), '1-a', 'local', 0 FROM n;
             INSERT INTO events (db, seq, kind, doc, rev, origin, at)
                 VALUES (1, 20001, 'purged', 'd000100', '1-a', 'local', 0);",
        )
        .unwrap();
        let mut stmt = c.prepare(super::PURGED_SINCE).unwrap();
        assert!(stmt.exists(params![1, "d000100", 10]).unwrap());
        assert!(!stmt.exists(params![1, "d000200", 10]).unwrap());
        let steps = stmt.get_status(StatementStatus::VmStep);
        assert!(steps < 100, "{steps} steps");
    }

    #[test]
    fn a_documents_rows_are_found_through_the_by_doc_index() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(super::SCHEMA).unwrap();
        let plan: Vec<String> = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {}", super::DELETE_DOC_ROWS))
            .unwrap()
            .query_map([1, 2], |r| r.get::<_, String>(3))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(plan.len(), 1, "{plan:?}");
        assert!(plan[0].contains("index_rows_by_doc"), "{plan:?}");
    }
}
