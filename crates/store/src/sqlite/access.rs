//! The access index of databases created with per-document access (`access=true`).
//!
//! Tables:
//! - `access_dbs`: one row per database created with per-document access (the flag is set at
//!   creation and never changes);
//! - `access_rows`: per database, principal (a user name or a role: `_access` lists do not tell
//!   them apart) and document, where that principal stands on the document. A row is
//!   *granted* while the document's winning revision lists the principal in `_access`; it then
//!   sits at the document's latest sequence, moved by every write of the document. When a write
//!   drops the principal from the list, the row becomes *revoked*, stays at the sequence of that
//!   write with the winner of then (`rev`), and is not moved by later writes: the principal's
//!   feed shows the document once more, as a deletion at that revision, and then never again
//!   until a write lists the principal again.
//!
//! The writer keeps the rows in the transaction of every document write ([`index_doc`]), so a
//! reader's feed is a range of `(db, principal, seq)` per principal, costing in proportion to
//! what the reader can see. A reader known by several principals (a name and roles) sees each
//! document at its *effective* row: the greatest by `(seq, granted)` among the reader's rows of
//! the document. Granted rows always sit at the document's latest sequence, so a document is
//! readable exactly when one of the reader's principals is granted, and effective rows have
//! distinct sequences, which makes `since` paging exact.

use outpost_core::{Rev, RevTree};
use rusqlite::{Connection, OptionalExtension, params};

use crate::{
    AccessCounts, AllDocsQuery, ChangeRow, ChangesQuery, DocAccess, DocRecord, DocRow, StoreError,
    access_list,
};

pub const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS access_dbs (
    db INTEGER PRIMARY KEY
);
CREATE TABLE IF NOT EXISTS access_rows (
    db        INTEGER NOT NULL,
    principal TEXT NOT NULL,
    doc       TEXT NOT NULL,
    seq       INTEGER NOT NULL,
    -- 1 while the winner's `_access` lists the principal, 0 since a write dropped it.
    granted   INTEGER NOT NULL,
    -- Whether the winner was a deletion at `seq`.
    deleted   INTEGER NOT NULL,
    -- The winner at `seq`: for a revoked row, the revision that took access away.
    rev       TEXT NOT NULL,
    PRIMARY KEY (db, principal, doc)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS access_rows_by_seq ON access_rows (db, principal, seq);
CREATE INDEX IF NOT EXISTS access_rows_by_doc ON access_rows (db, doc);
"#;

/// Marks a database just created as one with per-document access.
pub fn mark(tx: &Connection, db: &str) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO access_dbs (db) SELECT id FROM dbs WHERE name = ?1",
        [db],
    )?;
    Ok(())
}

/// Drops a deleted database's access rows and flag.
pub fn drop_db(tx: &Connection, db: i64) -> Result<(), StoreError> {
    tx.execute("DELETE FROM access_rows WHERE db = ?1", [db])?;
    tx.execute("DELETE FROM access_dbs WHERE db = ?1", [db])?;
    Ok(())
}

/// The principals a document is granted to now. Without `INDEXED BY`, SQLite reads these
/// through the primary key's `db` prefix, which visits every row of the database: each write
/// would cost time in proportion to the database, and filling one quadratic time.
const GRANTED_TO: &str = "SELECT principal FROM access_rows INDEXED BY access_rows_by_doc
    WHERE db = ?1 AND doc = ?2 AND granted = 1";

/// Brings a document's access rows up to its new state, in the writer's transaction: the
/// principals of the winner's `_access` are granted at `seq`, those granted before and no longer
/// listed are revoked at `seq`, and rows revoked earlier stay where they are.
pub fn index_doc(
    tx: &Connection,
    db: i64,
    doc: &str,
    seq: u64,
    winner: &str,
    deleted: bool,
) -> Result<(), StoreError> {
    let body: Option<String> = tx
        .prepare_cached("SELECT body FROM revs WHERE db = ?1 AND doc = ?2 AND rev = ?3")?
        .query_row(params![db, doc, winner], |r| r.get(0))
        .optional()?;
    let listed = body.as_deref().map(access_list).unwrap_or_default();
    let granted_before: Vec<String> = tx
        .prepare_cached(GRANTED_TO)?
        .query_map(params![db, doc], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let mut upsert = tx.prepare_cached(
        "INSERT INTO access_rows (db, principal, doc, seq, granted, deleted, rev)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (db, principal, doc) DO UPDATE SET seq = excluded.seq,
             granted = excluded.granted, deleted = excluded.deleted, rev = excluded.rev",
    )?;
    let seq = seq as i64;
    for principal in &listed {
        upsert.execute(params![db, principal, doc, seq, true, deleted, winner])?;
    }
    for principal in granted_before.iter().filter(|p| !listed.contains(p)) {
        upsert.execute(params![db, principal, doc, seq, false, deleted, winner])?;
    }
    Ok(())
}

fn db_id(c: &Connection, name: &str) -> Result<i64, StoreError> {
    c.prepare_cached("SELECT id FROM dbs WHERE name = ?1")?
        .query_row([name], |r| r.get(0))
        .optional()?
        .ok_or(StoreError::NoDb)
}

fn principals_json(principals: &[String]) -> String {
    serde_json::to_string(principals).unwrap_or_else(|_| "[]".into())
}

/// The reader's effective rows, for counting: `a` is a row of one of the reader's principals
/// (`?2`, a JSON array) that no other row of theirs for the same document outranks.
const EFFECTIVE: &str = "a.db = ?1 AND a.principal IN (SELECT value FROM json_each(?2))
    AND NOT EXISTS (SELECT 1 FROM access_rows b
        WHERE b.db = a.db AND b.doc = a.doc AND b.principal IN (SELECT value FROM json_each(?2))
          AND (b.seq > a.seq OR (b.seq = a.seq AND (b.granted > a.granted
               OR (b.granted = a.granted AND b.principal < a.principal)))))";

/// A revoked document as its former reader sees it: the path to the revision that took access
/// away, that revision a deletion, and nothing else of the tree.
fn revoked_tree(id: &str, tree: &RevTree, rev: &Rev) -> Result<RevTree, StoreError> {
    let mut path = tree.ancestry(rev);
    if path.is_empty() {
        path.push(rev.clone());
    }
    let mut out = RevTree::new();
    out.merge_path(&path, true)
        .map_err(|e| StoreError::Corrupt(format!("revision path of {id}: {e:?}")))?;
    Ok(out)
}

fn parse_tree(id: &str, json: &str) -> Result<RevTree, StoreError> {
    serde_json::from_str(json)
        .map_err(|e| StoreError::Corrupt(format!("revision tree of {id}: {e}")))
}

fn parse_rev(s: &str) -> Result<Rev, StoreError> {
    Rev::parse_stored(s).map_err(|e| StoreError::Corrupt(format!("stored revision {s}: {e}")))
}

/// One row of the index, as a page of a reader's feed reads it.
struct IndexRow {
    doc: String,
    seq: i64,
    granted: bool,
    rev: String,
}

/// One page of a reader's changes feed (see [`crate::Store::access_changes`]).
///
/// Each principal's rows are read in sequence order through `access_rows_by_seq`, a page at a
/// time, and merged here; a row is kept when no row of the reader's for the same document is
/// later (its effective row). So a page costs a few index ranges of the page's size per
/// principal, whatever the size of the database or of the reader's whole feed.
pub fn changes(
    c: &Connection,
    db: &str,
    principals: &[String],
    q: &ChangesQuery,
) -> Result<Vec<ChangeRow>, StoreError> {
    let tx = c.unchecked_transaction()?;
    let db = db_id(&tx, db)?;
    let json = principals_json(principals);
    let limit = usize::try_from(q.limit).unwrap_or(usize::MAX).max(1);
    let per_principal = i64::try_from(q.limit.clamp(1, 1000)).unwrap_or(1000);
    let mut range = tx.prepare_cached(if q.descending {
        "SELECT doc, seq, granted, rev FROM access_rows
         WHERE db = ?1 AND principal = ?2 AND seq < ?3 ORDER BY seq DESC LIMIT ?4"
    } else {
        "SELECT doc, seq, granted, rev FROM access_rows
         WHERE db = ?1 AND principal = ?2 AND seq > ?3 ORDER BY seq ASC LIMIT ?4"
    })?;
    let mut later = tx.prepare_cached(
        // `+seq`: looked up by (principal, doc), not by scanning the principal's later rows.
        "SELECT 1 FROM access_rows WHERE db = ?1 AND doc = ?2 AND +seq > ?3
             AND principal IN (SELECT value FROM json_each(?4)) LIMIT 1",
    )?;
    let mut page: Vec<IndexRow> = Vec::new();
    let mut since = i64::try_from(q.since).unwrap_or(i64::MAX);
    while page.len() < limit {
        let mut rows: Vec<IndexRow> = Vec::new();
        // Where the shortest full range ended: beyond it a principal may have rows not read yet.
        let mut horizon: Option<i64> = None;
        for principal in principals {
            let found: Vec<IndexRow> = range
                .query_map(params![db, principal, since, per_principal], |r| {
                    Ok(IndexRow {
                        doc: r.get(0)?,
                        seq: r.get(1)?,
                        granted: r.get(2)?,
                        rev: r.get(3)?,
                    })
                })?
                .collect::<Result<_, _>>()?;
            if found.len() as i64 == per_principal
                && let Some(last) = found.last()
            {
                horizon = Some(match horizon {
                    None => last.seq,
                    Some(h) if q.descending => h.max(last.seq),
                    Some(h) => h.min(last.seq),
                });
            }
            rows.extend(found);
        }
        if let Some(h) = horizon {
            rows.retain(|r| if q.descending { r.seq >= h } else { r.seq <= h });
        }
        // A sequence is one document's: of its rows, a granted one decides.
        rows.sort_by(|a, b| a.seq.cmp(&b.seq).then(b.granted.cmp(&a.granted)));
        rows.dedup_by_key(|r| r.seq);
        if q.descending {
            rows.reverse();
        }
        for row in rows {
            if page.len() >= limit {
                break;
            }
            let superseded = later
                .query_row(params![db, row.doc, row.seq, json], |_| Ok(()))
                .optional()?
                .is_some();
            if !superseded {
                page.push(row);
            }
        }
        match horizon {
            Some(h) => since = h,
            None => break,
        }
    }
    drop(range);
    drop(later);
    let mut tree_of =
        tx.prepare_cached("SELECT tree, winner FROM docs WHERE db = ?1 AND id = ?2")?;
    let mut body_of =
        tx.prepare_cached("SELECT body FROM revs WHERE db = ?1 AND doc = ?2 AND rev = ?3")?;
    let mut out = Vec::with_capacity(page.len());
    for row in page {
        let Some((tree, winner)): Option<(String, String)> = tree_of
            .query_row(params![db, row.doc], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?
        else {
            continue;
        };
        let tree = parse_tree(&row.doc, &tree)?;
        let seq = row.seq as u64;
        if row.granted {
            let body = if q.include_docs {
                body_of
                    .query_row(params![db, row.doc, winner], |r| r.get(0))
                    .optional()?
            } else {
                None
            };
            out.push(ChangeRow {
                id: row.doc,
                seq,
                tree,
                body,
            });
        } else {
            let tree = revoked_tree(&row.doc, &tree, &parse_rev(&row.rev)?)?;
            out.push(ChangeRow {
                id: row.doc,
                seq,
                tree,
                body: q.include_docs.then(|| "{}".to_owned()),
            });
        }
    }
    drop(tree_of);
    drop(body_of);
    tx.finish()?;
    Ok(out)
}

/// One page of a reader's `_all_docs` (see [`crate::Store::access_all_docs`]): each
/// principal's granted, live rows in id order through the primary key `(db, principal, doc)`,
/// merged here, a bounded range per principal at a time.
pub fn all_docs(
    c: &Connection,
    db: &str,
    principals: &[String],
    q: &AllDocsQuery,
) -> Result<Vec<DocRow>, StoreError> {
    let tx = c.unchecked_transaction()?;
    let db = db_id(&tx, db)?;
    let limit = usize::try_from(q.limit).unwrap_or(usize::MAX);
    let mut to_skip = usize::try_from(q.skip).unwrap_or(usize::MAX);
    let per_principal = q.limit.saturating_add(q.skip).clamp(1, 1000);
    let mut ids: Vec<String> = Vec::new();
    let mut cursor = q.clone();
    while ids.len() < limit {
        let mut sql = String::from(
            "SELECT doc FROM access_rows
             WHERE db = ?1 AND principal = ?4 AND granted = 1 AND deleted = 0",
        );
        let (lower, upper) = super::read::push_id_range(&mut sql, "doc", &cursor);
        sql.push_str(" LIMIT ?5");
        let mut range = tx.prepare_cached(&sql)?;
        let mut found: Vec<String> = Vec::new();
        // Where the shortest full range ended: beyond it a principal may have rows not read yet.
        let mut horizon: Option<String> = None;
        for principal in principals {
            let rows: Vec<String> = range
                .query_map(
                    params![db, lower, upper, principal, per_principal as i64],
                    |r| r.get(0),
                )?
                .collect::<Result<_, _>>()?;
            if rows.len() as u64 == per_principal
                && let Some(last) = rows.last()
            {
                let nearer = match &horizon {
                    None => true,
                    Some(h) if q.descending => last > h,
                    Some(h) => last < h,
                };
                if nearer {
                    horizon = Some(last.clone());
                }
            }
            found.extend(rows);
        }
        drop(range);
        if let Some(h) = &horizon {
            found.retain(|id| if q.descending { id >= h } else { id <= h });
        }
        found.sort();
        found.dedup();
        if q.descending {
            found.reverse();
        }
        for id in found {
            if ids.len() >= limit {
                break;
            }
            if to_skip > 0 {
                to_skip -= 1;
                continue;
            }
            ids.push(id);
        }
        match horizon {
            Some(h) => {
                cursor.start = Some(h);
                cursor.start_inclusive = false;
            }
            None => break,
        }
    }
    let mut doc = tx.prepare_cached(
        "SELECT d.seq, d.tree, CASE WHEN ?3 THEN r.body END FROM docs d
         LEFT JOIN revs r ON ?3 AND r.db = d.db AND r.doc = d.id AND r.rev = d.winner
         WHERE d.db = ?1 AND d.id = ?2",
    )?;
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        let row: Option<(i64, String, Option<String>)> = doc
            .query_row(params![db, id, q.include_docs], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .optional()?;
        if let Some((seq, tree, body)) = row {
            let tree = parse_tree(&id, &tree)?;
            out.push(DocRow {
                id,
                seq: seq as u64,
                tree,
                body,
            });
        }
    }
    drop(doc);
    tx.finish()?;
    Ok(out)
}

/// A reader's counts of documents (see [`crate::Store::access_counts`]).
pub fn counts(c: &Connection, db: &str, principals: &[String]) -> Result<AccessCounts, StoreError> {
    let db = db_id(c, db)?;
    let (all, live): (i64, i64) = c
        .prepare_cached(&format!(
            "SELECT count(*), COALESCE(sum(a.granted = 1 AND a.deleted = 0), 0)
             FROM access_rows a WHERE {EFFECTIVE}"
        ))?
        .query_row(params![db, principals_json(principals)], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
    Ok(AccessCounts {
        doc_count: live.max(0) as u64,
        doc_del_count: (all - live).max(0) as u64,
    })
}

/// The rows of a reader's feed after `since` (see [`crate::Store::access_pending`]): exact up
/// to [`super::PENDING_EXACT_UP_TO`], beyond that the reader's index rows after `since` (each
/// effective row is one of them, so never below the true count).
pub fn pending(
    c: &Connection,
    db: &str,
    principals: &[String],
    since: u64,
) -> Result<u64, StoreError> {
    let tx = c.unchecked_transaction()?;
    let db = db_id(&tx, db)?;
    let json = principals_json(principals);
    let since = i64::try_from(since).unwrap_or(i64::MAX);
    let cap = super::PENDING_EXACT_UP_TO as i64;
    let exact: i64 = tx
        .prepare_cached(&format!(
            "SELECT count(*) FROM (SELECT 1 FROM access_rows a
             WHERE {EFFECTIVE} AND a.seq > ?3 LIMIT ?4)"
        ))?
        .query_row(params![db, json, since, cap + 1], |r| r.get(0))?;
    let after = if exact <= cap {
        exact
    } else {
        tx.prepare_cached(
            "SELECT count(*) FROM access_rows
             WHERE db = ?1 AND principal IN (SELECT value FROM json_each(?2)) AND seq > ?3",
        )?
        .query_row(params![db, json, since], |r| r.get(0))?
    };
    tx.finish()?;
    Ok(after.max(0) as u64)
}

/// Where a reader stands on each of `ids` (see [`crate::Store::doc_access`]).
pub fn doc_access(
    c: &Connection,
    db: &str,
    principals: &[String],
    ids: &[String],
) -> Result<Vec<DocAccess>, StoreError> {
    let tx = c.unchecked_transaction()?;
    let db = db_id(&tx, db)?;
    let json = principals_json(principals);
    let mut best = tx.prepare_cached(
        "SELECT granted, seq, rev FROM access_rows
         WHERE db = ?1 AND doc = ?2 AND principal IN (SELECT value FROM json_each(?3))
         ORDER BY seq DESC, granted DESC LIMIT 1",
    )?;
    let mut doc = tx.prepare_cached("SELECT tree FROM docs WHERE db = ?1 AND id = ?2")?;
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        let row: Option<(bool, i64, String)> = best
            .query_row(params![db, id, json], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .optional()?;
        out.push(match row {
            None => DocAccess::Hidden,
            Some((true, _, _)) => DocAccess::Readable,
            Some((false, seq, rev)) => {
                let tree: Option<String> =
                    doc.query_row(params![db, id], |r| r.get(0)).optional()?;
                match tree {
                    None => DocAccess::Hidden,
                    Some(tree) => {
                        let tree = parse_tree(id, &tree)?;
                        DocAccess::Revoked(DocRecord {
                            id: id.clone(),
                            seq: seq as u64,
                            tree: revoked_tree(id, &tree, &parse_rev(&rev)?)?,
                        })
                    }
                }
            }
        });
    }
    drop(best);
    drop(doc);
    tx.finish()?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use rusqlite::StatementStatus;

    use super::*;

    /// Reading what a document is granted to visits that document's rows, not the database's:
    /// a write to a database of 20,000 access rows takes a few steps.
    #[test]
    fn a_documents_grants_are_read_from_its_own_rows() {
        let (_dir, c) = crate::sqlite::schema::fresh_for_test();
        c.execute_batch(
            "INSERT INTO dbs (id, name, created_at) VALUES (1, 'db', 0);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20000)
             INSERT INTO access_rows (db, principal, doc, seq, granted, deleted, rev)
                 SELECT 1, printf('user-%d', i % 50), printf('d%06d', i), i, 1, 0, '1-a' FROM n;",
        )
        .unwrap();
        let mut stmt = c.prepare(GRANTED_TO).unwrap();
        let got: Vec<String> = stmt
            .query_map(params![1, "d012345"], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(got, ["user-45"]);
        let steps = stmt.get_status(StatementStatus::VmStep);
        assert!(steps < 100, "{steps} steps");
    }
}
