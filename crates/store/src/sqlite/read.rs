//! Queries on a read connection. Each function runs on the blocking pool.

use std::path::Path;

use outpost_core::{Policy, Rev, RevTree};
use rusqlite::{Connection, OptionalExtension, params};

use crate::{
    AllDocsQuery, ChangeRow, ChangesQuery, DbInfo, DocRecord, DocRow, Event, EventsQuery, LocalDoc,
    LocalDocRow, StoreError, StoredBody,
};

fn db_id(c: &Connection, name: &str) -> Result<i64, StoreError> {
    c.prepare_cached("SELECT id FROM dbs WHERE name = ?1")?
        .query_row([name], |r| r.get(0))
        .optional()?
        .ok_or(StoreError::NoDb)
}

fn parse_tree(id: &str, json: &str) -> Result<RevTree, StoreError> {
    serde_json::from_str(json)
        .map_err(|e| StoreError::Corrupt(format!("revision tree of {id}: {e}")))
}

fn parse_rev(s: &str) -> Result<Rev, StoreError> {
    Rev::parse_stored(s).map_err(|e| StoreError::Corrupt(format!("stored revision {s}: {e}")))
}

pub fn all_dbs(c: &Connection) -> Result<Vec<String>, StoreError> {
    let mut stmt = c.prepare_cached("SELECT name FROM dbs ORDER BY name")?;
    let names = stmt
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    Ok(names)
}

pub fn security(c: &Connection, name: &str) -> Result<Option<String>, StoreError> {
    let db = db_id(c, name)?;
    Ok(
        c.prepare_cached("SELECT body FROM db_security WHERE db = ?1")?
            .query_row([db], |r| r.get(0))
            .optional()?,
    )
}

pub fn db_info(c: &Connection, name: &str, file: &Path) -> Result<DbInfo, StoreError> {
    let info = c
        .prepare_cached(
            "SELECT name, doc_count, doc_del_count, update_seq, revs_limit, active_size, created_at,
                    policy, lww_field, retention_count, retention_age,
                    EXISTS (SELECT 1 FROM access_dbs a WHERE a.db = dbs.id),
                    purge_seq, purged_infos_limit
             FROM dbs WHERE name = ?1",
        )?
        .query_row([name], |r| {
            Ok(DbInfo {
                name: r.get(0)?,
                doc_count: r.get::<_, i64>(1)?.max(0) as u64,
                doc_del_count: r.get::<_, i64>(2)?.max(0) as u64,
                update_seq: r.get::<_, i64>(3)? as u64,
                revs_limit: r.get::<_, i64>(4)? as u64,
                active_size: r.get::<_, i64>(5)?.max(0) as u64,
                created_at: r.get(6)?,
                policy: Policy::from_parts(&r.get::<_, String>(7)?, r.get(8)?).unwrap_or_default(),
                retention: crate::Retention {
                    max_events_per_doc: r.get::<_, Option<i64>>(9)?.map(|c| c as u64),
                    max_age_seconds: r.get::<_, Option<i64>>(10)?.map(|a| a as u64),
                },
                file_size: 0,
                compact_running: false,
                access: r.get(11)?,
                purge_seq: r.get::<_, i64>(12)?.max(0) as u64,
                purged_infos_limit: r.get::<_, i64>(13)?.max(0) as u64,
            })
        })
        .optional()?
        .ok_or(StoreError::NoDb)?;
    let file_size = std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
    Ok(DbInfo { file_size, ..info })
}

pub fn doc(c: &Connection, db: &str, id: &str) -> Result<Option<DocRecord>, StoreError> {
    let db = db_id(c, db)?;
    let row: Option<(i64, String)> = c
        .prepare_cached("SELECT seq, tree FROM docs WHERE db = ?1 AND id = ?2")?
        .query_row(params![db, id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    row.map(|(seq, tree)| {
        Ok(DocRecord {
            id: id.to_owned(),
            seq: seq as u64,
            tree: parse_tree(id, &tree)?,
        })
    })
    .transpose()
}

/// Several documents in one read transaction, so the batch comes from one snapshot and SQLite
/// takes its read lock once rather than once per statement.
pub fn docs(
    c: &Connection,
    db: &str,
    ids: &[String],
) -> Result<Vec<Option<DocRecord>>, StoreError> {
    let tx = c.unchecked_transaction()?;
    let db = db_id(&tx, db)?;
    let mut stmt = tx.prepare_cached("SELECT seq, tree FROM docs WHERE db = ?1 AND id = ?2")?;
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        let row: Option<(i64, String)> = stmt
            .query_row(params![db, id], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        out.push(
            row.map(|(seq, tree)| {
                Ok::<_, StoreError>(DocRecord {
                    id: id.clone(),
                    seq: seq as u64,
                    tree: parse_tree(id, &tree)?,
                })
            })
            .transpose()?,
        );
    }
    drop(stmt);
    tx.finish()?;
    Ok(out)
}

/// Bodies of revisions of several documents in one read transaction (see [`docs`]).
pub fn bodies(
    c: &Connection,
    db: &str,
    wanted: &[(String, Rev)],
) -> Result<Vec<Option<StoredBody>>, StoreError> {
    let tx = c.unchecked_transaction()?;
    let db = db_id(&tx, db)?;
    let mut stmt = tx
        .prepare_cached("SELECT deleted, body FROM revs WHERE db = ?1 AND doc = ?2 AND rev = ?3")?;
    let mut out = Vec::with_capacity(wanted.len());
    for (id, rev) in wanted {
        let found = stmt
            .query_row(params![db, id, rev.to_string()], |r| {
                Ok(StoredBody {
                    deleted: r.get(0)?,
                    json: r.get(1)?,
                })
            })
            .optional()?;
        out.push(found);
    }
    drop(stmt);
    tx.finish()?;
    Ok(out)
}

pub fn rev_bodies(
    c: &Connection,
    db: &str,
    id: &str,
    revs: &[Rev],
) -> Result<Vec<(Rev, StoredBody)>, StoreError> {
    let db = db_id(c, db)?;
    let mut stmt =
        c.prepare_cached("SELECT deleted, body FROM revs WHERE db = ?1 AND doc = ?2 AND rev = ?3")?;
    let mut out = Vec::with_capacity(revs.len());
    for rev in revs {
        let found = stmt
            .query_row(params![db, id, rev.to_string()], |r| {
                Ok(StoredBody {
                    deleted: r.get(0)?,
                    json: r.get(1)?,
                })
            })
            .optional()?;
        if let Some(body) = found {
            out.push((rev.clone(), body));
        }
    }
    Ok(out)
}

/// Appends to `sql` the bounds of an `_all_docs`-style id range on `column` (the lower bound
/// bound as `?2`, the upper as `?3`) and its order; returns the two bounds to bind.
pub(super) fn push_id_range<'q>(
    sql: &mut String,
    column: &str,
    q: &'q AllDocsQuery,
) -> (&'q Option<String>, &'q Option<String>) {
    let (lower, upper, lower_incl, upper_incl) = if q.descending {
        (&q.end, &q.start, q.end_inclusive, q.start_inclusive)
    } else {
        (&q.start, &q.end, q.start_inclusive, q.end_inclusive)
    };
    if lower.is_some() {
        let op = if lower_incl { ">=" } else { ">" };
        sql.push_str(&format!(" AND {column} {op} ?2"));
    }
    if upper.is_some() {
        let op = if upper_incl { "<=" } else { "<" };
        sql.push_str(&format!(" AND {column} {op} ?3"));
    }
    let order = if q.descending { "DESC" } else { "ASC" };
    sql.push_str(&format!(" ORDER BY {column} {order}"));
    (lower, upper)
}

pub fn all_docs(c: &Connection, db: &str, q: &AllDocsQuery) -> Result<Vec<DocRow>, StoreError> {
    let db = db_id(c, db)?;
    // The winner's body is joined in the same query: one statement per page, not per row.
    let mut sql = String::from(
        "SELECT d.id, d.seq, d.tree, CASE WHEN ?6 THEN r.body END FROM docs d
         LEFT JOIN revs r ON ?6 AND r.db = d.db AND r.doc = d.id AND r.rev = d.winner
         WHERE d.db = ?1 AND d.deleted = 0",
    );
    let (lower, upper) = push_id_range(&mut sql, "d.id", q);
    sql.push_str(" LIMIT ?4 OFFSET ?5");
    let mut stmt = c.prepare_cached(&sql)?;
    let limit = i64::try_from(q.limit).unwrap_or(i64::MAX);
    let skip = i64::try_from(q.skip).unwrap_or(i64::MAX);
    let rows: Vec<(String, i64, String, Option<String>)> = stmt
        .query_map(
            params![db, lower, upper, limit, skip, q.include_docs],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )?
        .collect::<Result<_, _>>()?;
    rows.into_iter()
        .map(|(id, seq, tree, body)| {
            let tree = parse_tree(&id, &tree)?;
            Ok(DocRow {
                id,
                seq: seq as u64,
                tree,
                body,
            })
        })
        .collect()
}

const COUNT_BEFORE: &str =
    "SELECT count(*) FROM (SELECT 1 FROM docs WHERE db = ?1 AND deleted = 0 AND id < ?2 LIMIT ?3)";
const COUNT_AFTER: &str =
    "SELECT count(*) FROM (SELECT 1 FROM docs WHERE db = ?1 AND deleted = 0 AND id > ?2 LIMIT ?3)";
const COUNT_CHANGED_AFTER: &str =
    "SELECT count(*) FROM (SELECT 1 FROM docs WHERE db = ?1 AND seq > ?2 LIMIT ?3)";

/// Counts the live documents before `id` (after it when descending) up to `cap`, through the
/// `docs_live` index: at most `cap + 1` index entries are visited, whatever the database's size.
pub fn count_before(
    c: &Connection,
    db: &str,
    id: &str,
    descending: bool,
    cap: u64,
) -> Result<Option<u64>, StoreError> {
    let db = db_id(c, db)?;
    let sql = if descending {
        COUNT_AFTER
    } else {
        COUNT_BEFORE
    };
    let bound = i64::try_from(cap.saturating_add(1)).unwrap_or(i64::MAX);
    let n: i64 = c
        .prepare_cached(sql)?
        .query_row(params![db, id, bound], |r| r.get(0))?;
    let n = n.max(0) as u64;
    Ok((n <= cap).then_some(n))
}

pub fn changes(c: &Connection, db: &str, q: &ChangesQuery) -> Result<Vec<ChangeRow>, StoreError> {
    let db = db_id(c, db)?;
    let sql = if q.descending {
        "SELECT d.id, d.seq, d.tree, CASE WHEN ?4 THEN r.body END FROM docs d
         LEFT JOIN revs r ON ?4 AND r.db = d.db AND r.doc = d.id AND r.rev = d.winner
         WHERE d.db = ?1 AND d.seq < ?2 ORDER BY d.seq DESC LIMIT ?3"
    } else {
        "SELECT d.id, d.seq, d.tree, CASE WHEN ?4 THEN r.body END FROM docs d
         LEFT JOIN revs r ON ?4 AND r.db = d.db AND r.doc = d.id AND r.rev = d.winner
         WHERE d.db = ?1 AND d.seq > ?2 ORDER BY d.seq ASC LIMIT ?3"
    };
    let since = i64::try_from(q.since).unwrap_or(i64::MAX);
    let limit = i64::try_from(q.limit).unwrap_or(i64::MAX);
    let rows: Vec<(String, i64, String, Option<String>)> = c
        .prepare_cached(sql)?
        .query_map(params![db, since, limit, q.include_docs], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })?
        .collect::<Result<_, _>>()?;
    rows.into_iter()
        .map(|(id, seq, tree, body)| {
            let tree = parse_tree(&id, &tree)?;
            Ok(ChangeRow {
                id,
                seq: seq as u64,
                tree,
                body,
            })
        })
        .collect()
}

/// Up to how many remaining rows the `pending` of a truncated changes feed is exact.
pub const PENDING_EXACT_UP_TO: u64 = 1000;

/// The `pending` of a changes page ending at `since`. The rows after `since` are counted through
/// the `docs_by_seq` index up to [`PENDING_EXACT_UP_TO`]; when there are more, the answer is the
/// smaller of two upper bounds read from the database's counters: the sequences after `since`
/// (each row has its own) and the number of documents. The estimate is exact when no document
/// changed twice since `since`, and never below the true count.
pub fn changes_pending(c: &Connection, db: &str, since: u64) -> Result<u64, StoreError> {
    let tx = c.unchecked_transaction()?;
    let db = db_id(&tx, db)?;
    let since = i64::try_from(since).unwrap_or(i64::MAX);
    let n: i64 = tx
        .prepare_cached(COUNT_CHANGED_AFTER)?
        .query_row(params![db, since, PENDING_EXACT_UP_TO as i64 + 1], |r| {
            r.get(0)
        })?;
    let n = n.max(0) as u64;
    if n <= PENDING_EXACT_UP_TO {
        return Ok(n);
    }
    let (update_seq, docs): (i64, i64) = tx
        .prepare_cached("SELECT update_seq, doc_count + doc_del_count FROM dbs WHERE id = ?1")?
        .query_row([db], |r| Ok((r.get(0)?, r.get(1)?)))?;
    let after = (update_seq.saturating_sub(since)).max(0) as u64;
    Ok(after.min(docs.max(0) as u64).max(n))
}

pub fn conflicts(
    c: &Connection,
    db: &str,
    start: Option<&str>,
    limit: u64,
) -> Result<Vec<DocRecord>, StoreError> {
    let db = db_id(c, db)?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows: Vec<(String, i64, String)> = c
        .prepare_cached(
            "SELECT id, seq, tree FROM docs WHERE db = ?1 AND conflicted = 1 AND id >= ?2 ORDER BY id LIMIT ?3",
        )?
        .query_map(params![db, start.unwrap_or(""), limit], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    rows.into_iter()
        .map(|(id, seq, tree)| {
            let tree = parse_tree(&id, &tree)?;
            Ok(DocRecord {
                id,
                seq: seq as u64,
                tree,
            })
        })
        .collect()
}

pub fn local_docs(
    c: &Connection,
    db: &str,
    q: &AllDocsQuery,
) -> Result<Vec<LocalDocRow>, StoreError> {
    let db = db_id(c, db)?;
    let mut sql =
        String::from("SELECT id, rev, CASE WHEN ?6 THEN body END FROM local_docs WHERE db = ?1");
    let (lower, upper) = push_id_range(&mut sql, "id", q);
    sql.push_str(" LIMIT ?4 OFFSET ?5");
    let limit = i64::try_from(q.limit).unwrap_or(i64::MAX);
    let skip = i64::try_from(q.skip).unwrap_or(i64::MAX);
    let mut stmt = c.prepare_cached(&sql)?;
    let rows = stmt
        .query_map(
            params![db, lower, upper, limit, skip, q.include_docs],
            |r| {
                Ok(LocalDocRow {
                    id: r.get(0)?,
                    rev: r.get::<_, i64>(1)? as u64,
                    body: r.get(2)?,
                })
            },
        )?
        .collect::<Result<_, _>>()?;
    Ok(rows)
}

pub fn local_doc(c: &Connection, db: &str, id: &str) -> Result<Option<LocalDoc>, StoreError> {
    let db = db_id(c, db)?;
    Ok(
        c.prepare_cached("SELECT rev, body FROM local_docs WHERE db = ?1 AND id = ?2")?
            .query_row(params![db, id], |r| {
                Ok(LocalDoc {
                    rev: r.get::<_, i64>(0)? as u64,
                    body: r.get(1)?,
                })
            })
            .optional()?,
    )
}

pub fn attachment(c: &Connection, digest: &str) -> Result<Option<Vec<u8>>, StoreError> {
    Ok(
        c.prepare_cached("SELECT data FROM attachments WHERE digest = ?1")?
            .query_row([digest], |r| r.get(0))
            .optional()?,
    )
}

/// A byte range of an attachment. The table is `WITHOUT ROWID`, so SQLite's incremental blob
/// I/O is not available; `substr` on the BLOB returns only the range, though SQLite still reads
/// the whole value from its pages for each call, so callers take large ranges.
pub fn attachment_range(
    c: &Connection,
    digest: &str,
    offset: u64,
    len: u64,
) -> Result<Option<Vec<u8>>, StoreError> {
    // substr counts from 1; both bounds are clamped into i64, far beyond any BLOB.
    let start = i64::try_from(offset)
        .unwrap_or(i64::MAX - 1)
        .saturating_add(1);
    let len = i64::try_from(len).unwrap_or(i64::MAX);
    Ok(
        c.prepare_cached("SELECT substr(data, ?2, ?3) FROM attachments WHERE digest = ?1")?
            .query_row(params![digest, start, len], |r| {
                r.get::<_, Option<Vec<u8>>>(0)
            })
            .optional()?
            .map(Option::unwrap_or_default),
    )
}

/// A page of the event log. A page never ends inside a sequence: when `limit` falls among the
/// events of one sequence (a document's revisions of one request), the rest of that sequence's
/// events come too, so a reader resuming with `since=<last seq>` misses none.
pub fn events(c: &Connection, db: &str, q: &EventsQuery) -> Result<Vec<Event>, StoreError> {
    let db = db_id(c, db)?;
    let since = i64::try_from(q.since).unwrap_or(i64::MAX);
    let limit = i64::try_from(q.limit).unwrap_or(i64::MAX);
    let select = "SELECT e.seq, e.kind, e.doc, e.rev, e.parent, e.origin, e.at, CASE WHEN ?4 THEN r.body END, e.detail, e.pos
         FROM events e LEFT JOIN revs r ON r.db = e.db AND r.doc = e.doc AND r.rev = e.rev";
    // ?5 is always bound: it filters by document when asked and is otherwise a no-op.
    let doc_filter = if q.doc_id.is_some() {
        " AND e.doc = ?5"
    } else {
        " AND ?5 IS NULL"
    };
    let page_sql = format!(
        "{select} WHERE e.db = ?1 AND e.seq > ?2{doc_filter} ORDER BY e.seq, e.pos LIMIT ?3"
    );
    let rest_sql = format!(
        "{select} WHERE e.db = ?1 AND e.seq = ?2 AND e.pos > ?3{doc_filter} ORDER BY e.pos"
    );
    let map = |r: &rusqlite::Row<'_>| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, Option<String>>(4)?,
            r.get::<_, String>(5)?,
            r.get::<_, i64>(6)?,
            r.get::<_, Option<String>>(7)?,
            r.get::<_, Option<String>>(8)?,
            r.get::<_, i64>(9)?,
        ))
    };
    let doc = q.doc_id.as_deref();
    let mut rows: Vec<_> = c
        .prepare_cached(&page_sql)?
        .query_map(params![db, since, limit, q.include_docs, doc], map)?
        .collect::<Result<_, _>>()?;
    if limit > 0 && rows.len() as i64 == limit {
        let (seq, pos) = rows.last().map(|r| (r.0, r.9)).unwrap_or_default();
        let rest: Vec<_> = c
            .prepare_cached(&rest_sql)?
            .query_map(params![db, seq, pos, q.include_docs, doc], map)?
            .collect::<Result<_, _>>()?;
        rows.extend(rest);
    }
    rows.into_iter()
        .map(
            |(seq, kind, id, rev, parent, origin, at, body, detail, _)| {
                Ok(Event {
                    seq: seq as u64,
                    kind,
                    id,
                    rev: parse_rev(&rev)?,
                    parent: parent.as_deref().map(parse_rev).transpose()?,
                    origin,
                    at,
                    body,
                    detail,
                })
            },
        )
        .collect()
}

#[cfg(test)]
mod tests {
    use rusqlite::StatementStatus;
    use rusqlite::types::Value;

    use super::*;

    /// The capped counts behind `pending` and `offset` visit about as many rows as their cap,
    /// however many the database holds; the same count without a cap visits them all.
    #[test]
    fn capped_counts_visit_a_bounded_number_of_rows() {
        let (_dir, c) = crate::sqlite::schema::fresh_for_test();
        c.execute_batch(
            "INSERT INTO dbs (id, name, created_at) VALUES (1, 'db', 0);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20000)
             INSERT INTO docs (db, id, seq, deleted, tree)
                 SELECT 1, printf('d%06d', i), i, i % 3 = 0, '[]' FROM n;",
        )
        .unwrap();
        let cap = 11i64;
        for (sql, bound) in [
            (COUNT_BEFORE, Value::Text("d019999".into())),
            (COUNT_AFTER, Value::Text("d000001".into())),
            (COUNT_CHANGED_AFTER, Value::Integer(0)),
        ] {
            let plan: Vec<String> = c
                .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
                .unwrap()
                .query_map(params![1, bound, cap], |r| r.get(3))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            assert!(
                plan.iter().any(|p| p.contains("USING COVERING INDEX")),
                "{sql}: {plan:?}"
            );
            let mut stmt = c.prepare(sql).unwrap();
            let n: i64 = stmt
                .query_row(params![1, bound, cap], |r| r.get(0))
                .unwrap();
            assert_eq!(n, cap);
            let steps = stmt.get_status(StatementStatus::VmStep);
            assert!(steps < 40 * cap as i32, "{sql}: {steps} steps");
        }
        let mut full = c
            .prepare("SELECT count(*) FROM docs WHERE db = 1 AND seq > 0")
            .unwrap();
        let n: i64 = full.query_row([], |r| r.get(0)).unwrap();
        assert_eq!(n, 20000);
        assert!(full.get_status(StatementStatus::VmStep) > 20000);
    }
}
