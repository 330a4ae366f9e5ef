//! Secondary index tables on PostgreSQL (see `outpost_store::index`): the writer's
//! compare-and-set steps and the scans, in the binary sort-key order (`bytea` compares byte by
//! byte, so a range of CouchDB's collation is a plain B-tree range).
//!
//! The compare-and-set holds across nodes: the writer locks the index's row (`FOR UPDATE`)
//! before it compares the sequence, so two nodes' indexers racing on one index cannot both
//! apply a step from the same place.

use outpost_core::collate::SORT_KEY_VERSION;
use outpost_store::index::row_key;
use outpost_store::{IndexQuery, IndexRow, IndexState, IndexUpdate, IndexedDoc, StoreError};
use tokio_postgres::types::ToSql;

use crate::conn::WriterConn;
use crate::error::corrupt;
use crate::read::{Reader, db_id};
use deadpool_postgres::Object;

/// Applies one step of an index update in the writer; `false` when the index is no longer at
/// `update.since` under `update.signature`.
/// Deletes a purged document's rows from every index of its database. The indexes' rows are
/// locked first, in id order, until the purge commits: an index step on another node that
/// computed rows before the purge either committed before (and its rows are deleted here) or
/// waits, and then finds the purge (see [`apply_update`]).
pub fn forget_doc(c: &WriterConn, db: i64, doc: &str) -> Result<(), StoreError> {
    let indexes: Vec<i64> = c
        .query(
            "SELECT id FROM indexes WHERE db = $1 ORDER BY id FOR UPDATE",
            &[&db],
        )?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for ix in indexes {
        let removed = c.execute(
            "DELETE FROM index_rows WHERE ix = $1 AND doc = $2",
            &[&ix, &doc],
        )? as i64;
        if removed > 0 {
            c.execute(
                "UPDATE indexes SET rows = greatest(0, rows - $2) WHERE id = $1",
                &[&ix, &removed],
            )?;
        }
    }
    Ok(())
}

pub fn apply_update(c: &WriterConn, db: &str, update: &IndexUpdate) -> Result<bool, StoreError> {
    let db = crate::writer::db_id(c, db)?;
    let found = c.query_opt(
        "SELECT id, signature, key_version, seq FROM indexes WHERE db = $1 AND name = $2
         FOR UPDATE",
        &[&db, &update.name],
    )?;
    let current = found.as_ref().filter(|r| {
        r.get::<_, String>(1) == update.signature && r.get::<_, String>(2) == SORT_KEY_VERSION
    });
    let ix: i64 = match current {
        Some(r) if r.get::<_, i64>(3) as u64 == update.since => r.get(0),
        Some(_) => return Ok(false),
        None if update.since == 0 => {
            if let Some(stale) = &found {
                let stale: i64 = stale.get(0);
                c.execute("DELETE FROM index_rows WHERE ix = $1", &[&stale])?;
                c.execute("DELETE FROM indexes WHERE id = $1", &[&stale])?;
            }
            // Another node building the same index at the same moment: one of them wins.
            match c.query_opt(
                "INSERT INTO indexes (db, name, signature, key_version, seq, rows)
                 VALUES ($1, $2, $3, $4, 0, 0) ON CONFLICT (db, name) DO NOTHING RETURNING id",
                &[&db, &update.name, &update.signature, &SORT_KEY_VERSION],
            )? {
                Some(r) => r.get(0),
                None => return Ok(false),
            }
        }
        None => return Ok(false),
    };
    let mut removed: i64 = 0;
    let mut added: i64 = 0;
    for doc in &update.docs {
        removed += c.execute(
            "DELETE FROM index_rows WHERE ix = $1 AND doc = $2",
            &[&ix, &doc.doc_id],
        )? as i64;
        // Rows computed before a purge of the document must not come back: the step's changes
        // were read up to `upto`, so a purge after that read is above it. A purge holds this
        // index's row lock, taken above, until it commits, so a committed one is seen here.
        let upto = i64::try_from(update.upto).unwrap_or(i64::MAX);
        if c.query_opt(
            "SELECT 1 FROM events WHERE db = $1 AND doc = $2 AND seq > $3 AND kind = 'purged'
                 LIMIT 1",
            &[&db, &doc.doc_id, &upto],
        )?
        .is_some()
        {
            continue;
        }
        for (n, entry) in doc.rows.iter().enumerate() {
            let key_json = serde_json::to_string(&entry.key)
                .map_err(|e| corrupt(format!("index key: {e}")))?;
            c.execute(
                "INSERT INTO index_rows (ix, k, n, doc, key, value) VALUES ($1, $2, $3, $4, $5, $6)",
                &[
                    &ix,
                    &row_key(&entry.key, &doc.doc_id),
                    &(n as i64),
                    &doc.doc_id,
                    &key_json,
                    &entry.value,
                ],
            )?;
            added += 1;
        }
    }
    c.execute(
        "UPDATE indexes SET seq = $2, rows = rows + $3 - $4 WHERE id = $1",
        &[
            &ix,
            &i64::try_from(update.upto).unwrap_or(i64::MAX),
            &added,
            &removed,
        ],
    )?;
    Ok(true)
}

/// Drops an index and its rows; whether there was one.
pub fn drop_index(c: &WriterConn, db: &str, name: &str) -> Result<bool, StoreError> {
    let db = crate::writer::db_id(c, db)?;
    let Some(row) = c.query_opt(
        "DELETE FROM indexes WHERE db = $1 AND name = $2 RETURNING id",
        &[&db, &name],
    )?
    else {
        return Ok(false);
    };
    let ix: i64 = row.get(0);
    c.execute("DELETE FROM index_rows WHERE ix = $1", &[&ix])?;
    Ok(true)
}

/// Drops every index of a database being deleted.
pub fn drop_all(c: &WriterConn, db: i64) -> Result<(), StoreError> {
    c.execute(
        "DELETE FROM index_rows WHERE ix IN (SELECT id FROM indexes WHERE db = $1)",
        &[&db],
    )?;
    c.execute("DELETE FROM indexes WHERE db = $1", &[&db])?;
    Ok(())
}

fn state(seq: i64, rows: i64, signature: String) -> IndexState {
    IndexState {
        signature,
        seq: seq.max(0) as u64,
        rows: rows.max(0) as u64,
    }
}

/// Where an index stands; `None` when it does not exist or its rows are in an old encoding.
pub async fn index_state(
    r: &Reader,
    db: &str,
    name: &str,
) -> Result<Option<IndexState>, StoreError> {
    let c = r.client().await?;
    let db = db_id(&c, db).await?;
    let row = r
        .query_opt(
            &c,
            "SELECT signature, key_version, seq, rows FROM indexes WHERE db = $1 AND name = $2",
            &[&db, &name],
        )
        .await?;
    Ok(row
        .filter(|r| r.get::<_, String>(1) == SORT_KEY_VERSION)
        .map(|r| state(r.get(2), r.get(3), r.get(0))))
}

pub async fn indexes(r: &Reader, db: &str) -> Result<Vec<(String, IndexState)>, StoreError> {
    let c = r.client().await?;
    let db = db_id(&c, db).await?;
    let rows = r
        .query(
            &c,
            "SELECT name, signature, seq, rows FROM indexes WHERE db = $1 ORDER BY name",
            &[&db],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), state(r.get(2), r.get(3), r.get(1))))
        .collect())
}

/// The id of a database's index built under the current sort-key encoding.
async fn index_id(r: &Reader, c: &Object, db: i64, name: &str) -> Result<i64, StoreError> {
    r.query_opt(
        c,
        "SELECT id FROM indexes WHERE db = $1 AND name = $2 AND key_version = $3",
        &[&db, &name, &SORT_KEY_VERSION],
    )
    .await?
    .map(|r| r.get(0))
    .ok_or(StoreError::NotFound)
}

/// Appends `q`'s key bounds to `sql` as conditions on `r.k`, their bytes (`lower`, `upper`:
/// the bounds' bytes, owned by the caller) as the next parameters.
fn key_range<'a>(
    sql: &mut String,
    params: &mut Vec<&'a (dyn ToSql + Sync)>,
    q: &IndexQuery,
    lower: &'a Option<Vec<u8>>,
    upper: &'a Option<Vec<u8>>,
) {
    let bounds = [
        (q.lower.as_ref().map(|b| b.inclusive()), lower, ">=", ">"),
        (q.upper.as_ref().map(|b| b.inclusive()), upper, "<=", "<"),
    ];
    for (inclusive, bytes, closed, open) in bounds {
        if let (Some(inclusive), Some(bytes)) = (inclusive, bytes) {
            params.push(bytes);
            let op = if inclusive { closed } else { open };
            sql.push_str(&format!(" AND r.k {op} ${}", params.len()));
        }
    }
}

/// Counts the rows within `q`'s bounds up to `cap`, from the `(ix, k)` index alone.
pub async fn count(
    r: &Reader,
    db: &str,
    name: &str,
    q: &IndexQuery,
    cap: u64,
) -> Result<Option<u64>, StoreError> {
    let c = r.client().await?;
    let db = db_id(&c, db).await?;
    let ix = index_id(r, &c, db, name).await?;
    let lower = q.lower.as_ref().map(|b| b.bytes().to_vec());
    let upper = q.upper.as_ref().map(|b| b.bytes().to_vec());
    let limit = i64::try_from(cap.saturating_add(1)).unwrap_or(i64::MAX);
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![&ix, &limit];
    let mut sql = String::from("SELECT count(*) FROM (SELECT 1 FROM index_rows r WHERE r.ix = $1");
    key_range(&mut sql, &mut params, q, &lower, &upper);
    sql.push_str(" LIMIT $2) AS counted");
    let n: i64 = r
        .query_opt(&c, &sql, &params)
        .await?
        .map_or(0, |row| row.get(0));
    let n = n.max(0) as u64;
    Ok((n <= cap).then_some(n))
}

pub async fn scan(
    r: &Reader,
    db: &str,
    name: &str,
    q: &IndexQuery,
) -> Result<Vec<IndexRow>, StoreError> {
    let c = r.client().await?;
    let db = db_id(&c, db).await?;
    let ix = index_id(r, &c, db, name).await?;
    let mut sql = String::from(
        "SELECT r.key, r.doc, r.value, d.seq, d.tree, d.deleted, b.body FROM index_rows r
         LEFT JOIN docs d ON $3 AND d.db = $2 AND d.id = r.doc
         LEFT JOIN revs b ON $3 AND b.db = d.db AND b.doc = d.id AND b.rev = d.winner
         WHERE r.ix = $1",
    );
    let lower = q.lower.as_ref().map(|b| b.bytes().to_vec());
    let upper = q.upper.as_ref().map(|b| b.bytes().to_vec());
    let limit = i64::try_from(q.limit).unwrap_or(i64::MAX);
    let skip = i64::try_from(q.skip).unwrap_or(i64::MAX);
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![&ix, &db, &q.include_docs, &limit, &skip];
    key_range(&mut sql, &mut params, q, &lower, &upper);
    sql.push_str(if q.descending {
        " ORDER BY r.k DESC, r.n DESC"
    } else {
        " ORDER BY r.k ASC, r.n ASC"
    });
    sql.push_str(" LIMIT $4 OFFSET $5");
    let rows = r.query(&c, &sql, &params).await?;
    rows.iter()
        .map(|row| {
            let doc_id: String = row.get(1);
            let doc = match (
                row.get::<_, Option<i64>>(3),
                row.get::<_, Option<String>>(6),
            ) {
                (Some(seq), Some(body)) => {
                    let tree: String = row.get(4);
                    let tree = serde_json::from_str(&tree)
                        .map_err(|e| corrupt(format!("revision tree of {doc_id}: {e}")))?;
                    Some(IndexedDoc {
                        seq: seq.max(0) as u64,
                        tree,
                        deleted: row.get(5),
                        body,
                    })
                }
                _ => None,
            };
            Ok(IndexRow {
                key: row.get(0),
                doc_id,
                value: row.get(2),
                doc,
            })
        })
        .collect()
}
