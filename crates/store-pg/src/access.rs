//! The access index of databases created with per-document access (`access=true`): the same
//! tables and rules as the SQLite engine's (see `outpost_store::sqlite`'s `access` module),
//! with PostgreSQL's types, so that `outpost db migrate` copies them row for row.
//!
//! - `access_dbs`: one row per database created with per-document access;
//! - `access_rows`: per database, principal and document, where that principal stands on the
//!   document. A *granted* row sits at the document's latest sequence while the winner's
//!   `_access` lists the principal; a write that drops the principal turns it *revoked*, at that
//!   write's sequence with the winner of then, and later writes leave it there.
//!
//! The writer keeps the rows in the transaction of every document write ([`index_doc`]), at the
//! sequence the document takes, and sequences are handed out in commit order across nodes (see
//! `crate::writer`), so the index is ordered exactly like the database's own feed. A reader's
//! feed is a range of `(db, principal, seq)` per principal, read through `access_rows_by_seq`
//! and merged; a reader known by several principals sees each document at its *effective* row,
//! the greatest by `(seq, granted)` among their rows of it. Every read runs in one read-only
//! repeatable-read transaction, so its several statements see one snapshot.

use deadpool_postgres::Transaction;
use outpost_core::{Rev, RevTree};
use outpost_store::{
    AccessCounts, AllDocsQuery, ChangeRow, ChangesQuery, DocAccess, DocRecord, DocRow, StoreError,
    access_list,
};
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use crate::conn::WriterConn;
use crate::error::{corrupt, pg};
use crate::read::Reader;

type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

/// Up to how many remaining rows `pending` is exact (as for the database's own feed).
const PENDING_EXACT_UP_TO: i64 = outpost_store::sqlite::PENDING_EXACT_UP_TO as i64;

/// Brings a document's access rows up to its new state, in the writer's transaction: the
/// principals of the winner's `_access` are granted at `seq`, those granted before and no longer
/// listed are revoked at `seq`, and rows revoked earlier stay where they are.
pub fn index_doc(
    c: &WriterConn,
    db: i64,
    doc: &str,
    seq: u64,
    winner: &str,
    deleted: bool,
) -> Result<(), StoreError> {
    let body: Option<String> = c
        .query_opt(
            "SELECT body FROM revs WHERE db = $1 AND doc = $2 AND rev = $3",
            &[&db, &doc, &winner],
        )?
        .map(|r| r.get(0));
    let listed = body.as_deref().map(access_list).unwrap_or_default();
    let granted_before: Vec<String> = c
        .query(
            "SELECT principal FROM access_rows WHERE db = $1 AND doc = $2 AND granted",
            &[&db, &doc],
        )?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let revoked: Vec<String> = granted_before
        .into_iter()
        .filter(|p| !listed.contains(p))
        .collect();
    let seq = seq as i64;
    // One statement for the whole document: the listed principals granted, the dropped ones
    // revoked.
    c.execute(
        "INSERT INTO access_rows (db, principal, doc, seq, granted, deleted, rev)
         SELECT $1, p.principal, $2, $3, p.granted, $4, $5
         FROM (SELECT unnest($6::text[]) AS principal, TRUE AS granted
               UNION ALL SELECT unnest($7::text[]), FALSE) p
         ON CONFLICT (db, principal, doc) DO UPDATE SET seq = excluded.seq,
             granted = excluded.granted, deleted = excluded.deleted, rev = excluded.rev",
        &[&db, &doc, &seq, &deleted, &winner, &listed, &revoked],
    )?;
    Ok(())
}

async fn start(client: &mut deadpool_postgres::Client) -> Result<Transaction<'_>, StoreError> {
    client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(pg)
}

async fn query(
    tx: &Transaction<'_>,
    sql: &str,
    params: Params<'_>,
) -> Result<Vec<Row>, StoreError> {
    let stmt = tx.prepare_cached(sql).await.map_err(pg)?;
    tx.query(&stmt, params).await.map_err(pg)
}

async fn query_opt(
    tx: &Transaction<'_>,
    sql: &str,
    params: Params<'_>,
) -> Result<Option<Row>, StoreError> {
    let stmt = tx.prepare_cached(sql).await.map_err(pg)?;
    tx.query_opt(&stmt, params).await.map_err(pg)
}

async fn db_id(tx: &Transaction<'_>, name: &str) -> Result<i64, StoreError> {
    query_opt(tx, "SELECT id FROM dbs WHERE name = $1", &[&name])
        .await?
        .map(|r| r.get(0))
        .ok_or(StoreError::NoDb)
}

/// The reader's effective rows, for counting: `a` is a row of one of the reader's principals
/// (`$2`, an array) that no other row of theirs for the same document outranks.
const EFFECTIVE: &str = "a.db = $1 AND a.principal = ANY($2)
    AND NOT EXISTS (SELECT 1 FROM access_rows b
        WHERE b.db = a.db AND b.doc = a.doc AND b.principal = ANY($2)
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
        .map_err(|e| corrupt(format!("revision path of {id}: {e:?}")))?;
    Ok(out)
}

fn parse_tree(id: &str, json: &str) -> Result<RevTree, StoreError> {
    serde_json::from_str(json).map_err(|e| corrupt(format!("revision tree of {id}: {e}")))
}

fn parse_rev(s: &str) -> Result<Rev, StoreError> {
    Rev::parse_stored(s).map_err(|e| corrupt(format!("stored revision {s}: {e}")))
}

/// One row of the index, as a page of a reader's feed reads it.
struct IndexRow {
    doc: String,
    seq: i64,
    granted: bool,
    rev: String,
}

/// One page of a reader's changes feed (see `Store::access_changes`).
///
/// Each principal's rows are read in sequence order through `access_rows_by_seq`, a page at a
/// time, and merged here; a row is kept when no row of the reader's for the same document is
/// later (its effective row). So a page costs a few index ranges of the page's size per
/// principal, whatever the size of the database or of the reader's whole feed.
pub async fn changes(
    r: &Reader,
    db: &str,
    principals: &[String],
    q: &ChangesQuery,
) -> Result<Vec<ChangeRow>, StoreError> {
    let mut client = r.client().await?;
    let tx = start(&mut client).await?;
    let db = db_id(&tx, db).await?;
    let limit = usize::try_from(q.limit).unwrap_or(usize::MAX).max(1);
    let per_principal = i64::try_from(q.limit.clamp(1, 1000)).unwrap_or(1000);
    let range = if q.descending {
        "SELECT doc, seq, granted, rev FROM access_rows
         WHERE db = $1 AND principal = $2 AND seq < $3 ORDER BY seq DESC LIMIT $4"
    } else {
        "SELECT doc, seq, granted, rev FROM access_rows
         WHERE db = $1 AND principal = $2 AND seq > $3 ORDER BY seq ASC LIMIT $4"
    };
    let mut page: Vec<IndexRow> = Vec::new();
    let mut since = i64::try_from(q.since).unwrap_or(i64::MAX);
    while page.len() < limit {
        let mut rows: Vec<IndexRow> = Vec::new();
        // Where the shortest full range ended: beyond it a principal may have rows not read yet.
        let mut horizon: Option<i64> = None;
        for principal in principals {
            let found: Vec<IndexRow> = query(&tx, range, &[&db, principal, &since, &per_principal])
                .await?
                .iter()
                .map(|r| IndexRow {
                    doc: r.get(0),
                    seq: r.get(1),
                    granted: r.get(2),
                    rev: r.get(3),
                })
                .collect();
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
        // Rows superseded by a later row of the reader's for the same document, in one lookup
        // by `(db, doc)` for the whole batch.
        let docs: Vec<&str> = rows.iter().map(|r| r.doc.as_str()).collect();
        let seqs: Vec<i64> = rows.iter().map(|r| r.seq).collect();
        let superseded: std::collections::HashSet<i64> = query(
            &tx,
            "SELECT c.seq FROM unnest($2::text[], $3::bigint[]) AS c(doc, seq)
             WHERE EXISTS (SELECT 1 FROM access_rows a WHERE a.db = $1 AND a.doc = c.doc
                 AND a.seq > c.seq AND a.principal = ANY($4))",
            &[&db, &docs, &seqs, &principals],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
        for row in rows {
            if page.len() >= limit {
                break;
            }
            if !superseded.contains(&row.seq) {
                page.push(row);
            }
        }
        match horizon {
            Some(h) => since = h,
            None => break,
        }
    }
    let docs: Vec<&str> = page.iter().map(|r| r.doc.as_str()).collect();
    let found = query(
        &tx,
        "SELECT d.id, d.tree, CASE WHEN $3 THEN r.body END
         FROM docs d LEFT JOIN revs r ON $3 AND r.db = d.db AND r.doc = d.id AND r.rev = d.winner
         WHERE d.db = $1 AND d.id = ANY($2)",
        &[&db, &docs, &q.include_docs],
    )
    .await?;
    let mut by_id: std::collections::HashMap<String, (String, Option<String>)> = found
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect();
    tx.commit().await.map_err(pg)?;
    let mut out = Vec::with_capacity(page.len());
    for row in page {
        let Some((tree, body)) = by_id.remove(&row.doc) else {
            continue;
        };
        let tree = parse_tree(&row.doc, &tree)?;
        let seq = row.seq as u64;
        if row.granted {
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
    Ok(out)
}

/// One page of a reader's `_all_docs` (see `Store::access_all_docs`): each principal's
/// granted, live rows in id order through the primary key `(db, principal, doc)`, merged here,
/// a bounded range per principal at a time.
pub async fn all_docs(
    r: &Reader,
    db: &str,
    principals: &[String],
    q: &AllDocsQuery,
) -> Result<Vec<DocRow>, StoreError> {
    let mut client = r.client().await?;
    let tx = start(&mut client).await?;
    let db = db_id(&tx, db).await?;
    let limit = usize::try_from(q.limit).unwrap_or(usize::MAX);
    let mut to_skip = usize::try_from(q.skip).unwrap_or(usize::MAX);
    let per_principal = q.limit.saturating_add(q.skip).clamp(1, 1000);
    let per_principal_sql = per_principal as i64;
    let mut ids: Vec<String> = Vec::new();
    let mut cursor = q.clone();
    while ids.len() < limit {
        let mut sql = String::from(
            "SELECT doc FROM access_rows
             WHERE db = $1 AND principal = $2 AND granted AND NOT deleted",
        );
        let mut bounds: Vec<&(dyn ToSql + Sync)> = vec![&db, &"", &per_principal_sql];
        // Only the bounds given, so that the range is an index condition on `(db, principal,
        // doc)` in every plan.
        crate::read::push_id_range(&mut sql, &mut bounds, "doc", &cursor);
        sql.push_str(" LIMIT $3");
        let mut found: Vec<String> = Vec::new();
        // Where the shortest full range ended: beyond it a principal may have rows not read yet.
        let mut horizon: Option<String> = None;
        for principal in principals {
            let mut params = bounds.clone();
            params[1] = principal;
            let rows: Vec<String> = query(&tx, &sql, &params)
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect();
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
            // `start` is where the order begins, whichever the direction.
            Some(h) => {
                cursor.start = Some(h);
                cursor.start_inclusive = false;
            }
            None => break,
        }
    }
    let found = query(
        &tx,
        "SELECT d.id, d.seq, d.tree, CASE WHEN $3 THEN r.body END FROM docs d
         LEFT JOIN revs r ON $3 AND r.db = d.db AND r.doc = d.id AND r.rev = d.winner
         WHERE d.db = $1 AND d.id = ANY($2)",
        &[&db, &ids, &q.include_docs],
    )
    .await?;
    tx.commit().await.map_err(pg)?;
    let mut by_id: std::collections::HashMap<String, (i64, String, Option<String>)> = found
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3))))
        .collect();
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        if let Some((seq, tree, body)) = by_id.remove(&id) {
            let tree = parse_tree(&id, &tree)?;
            out.push(DocRow {
                id,
                seq: seq as u64,
                tree,
                body,
            });
        }
    }
    Ok(out)
}

/// A reader's counts of documents (see `Store::access_counts`).
pub async fn counts(
    r: &Reader,
    db: &str,
    principals: &[String],
) -> Result<AccessCounts, StoreError> {
    let mut client = r.client().await?;
    let tx = start(&mut client).await?;
    let db = db_id(&tx, db).await?;
    let row = query_opt(
        &tx,
        &format!(
            "SELECT count(*), count(*) FILTER (WHERE a.granted AND NOT a.deleted)
             FROM access_rows a WHERE {EFFECTIVE}"
        ),
        &[&db, &principals],
    )
    .await?
    .ok_or_else(|| corrupt("count returned no row".to_owned()))?;
    tx.commit().await.map_err(pg)?;
    let (all, live): (i64, i64) = (row.get(0), row.get(1));
    Ok(AccessCounts {
        doc_count: live.max(0) as u64,
        doc_del_count: (all - live).max(0) as u64,
    })
}

/// The rows of a reader's feed after `since` (see `Store::access_pending`): exact up to
/// [`PENDING_EXACT_UP_TO`], beyond that the reader's index rows after `since` (each effective
/// row is one of them, so never below the true count).
pub async fn pending(
    r: &Reader,
    db: &str,
    principals: &[String],
    since: u64,
) -> Result<u64, StoreError> {
    let mut client = r.client().await?;
    let tx = start(&mut client).await?;
    let db = db_id(&tx, db).await?;
    let since = i64::try_from(since).unwrap_or(i64::MAX);
    let cap = PENDING_EXACT_UP_TO + 1;
    let exact: i64 = query_opt(
        &tx,
        &format!(
            "SELECT count(*) FROM (SELECT 1 FROM access_rows a
             WHERE {EFFECTIVE} AND a.seq > $3 LIMIT $4) x"
        ),
        &[&db, &principals, &since, &cap],
    )
    .await?
    .map(|r| r.get(0))
    .unwrap_or(0);
    let after = if exact <= PENDING_EXACT_UP_TO {
        exact
    } else {
        query_opt(
            &tx,
            "SELECT count(*) FROM access_rows WHERE db = $1 AND principal = ANY($2) AND seq > $3",
            &[&db, &principals, &since],
        )
        .await?
        .map(|r| r.get(0))
        .unwrap_or(0)
    };
    tx.commit().await.map_err(pg)?;
    Ok(after.max(0) as u64)
}

/// Where a reader stands on each of `ids` (see `Store::doc_access`): each id's effective row
/// and, for a revoked one, the document's tree, in one statement.
pub async fn doc_access(
    r: &Reader,
    db: &str,
    principals: &[String],
    ids: &[String],
) -> Result<Vec<DocAccess>, StoreError> {
    let mut client = r.client().await?;
    let tx = start(&mut client).await?;
    let db = db_id(&tx, db).await?;
    let rows = query(
        &tx,
        "SELECT i.id, e.granted, e.seq, e.rev, CASE WHEN NOT e.granted THEN d.tree END
         FROM unnest($2::text[]) AS i(id)
         CROSS JOIN LATERAL (SELECT granted, seq, rev FROM access_rows
             WHERE db = $1 AND doc = i.id AND principal = ANY($3)
             ORDER BY seq DESC, granted DESC LIMIT 1) e
         LEFT JOIN docs d ON d.db = $1 AND d.id = i.id",
        &[&db, &ids, &principals],
    )
    .await?;
    tx.commit().await.map_err(pg)?;
    type Found = (bool, i64, String, Option<String>);
    let by_id: std::collections::HashMap<String, Found> = rows
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3), r.get(4))))
        .collect();
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        out.push(match by_id.get(id) {
            None => DocAccess::Hidden,
            Some((true, _, _, _)) => DocAccess::Readable,
            Some((false, _, _, None)) => DocAccess::Hidden,
            Some((false, seq, rev, Some(tree))) => {
                let tree = parse_tree(id, tree)?;
                DocAccess::Revoked(DocRecord {
                    id: id.clone(),
                    seq: *seq as u64,
                    tree: revoked_tree(id, &tree, &parse_rev(rev)?)?,
                })
            }
        });
    }
    Ok(out)
}
