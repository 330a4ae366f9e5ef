//! Reads, on pooled async connections. A read that needs several rows to agree (a batch of
//! documents, of bodies) is one statement, so it sees one snapshot.

use deadpool_postgres::{Object, Pool};
use outpost_core::{Policy, Rev, RevTree};
use outpost_store::{
    AllDocsQuery, ChangeRow, ChangesQuery, DbInfo, DbUpdate, DocRecord, DocRow, Event, EventsQuery,
    LocalDoc, LocalDocRow, StoreError, StoredBody,
};
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use crate::error::{corrupt, pg, pool};

/// Up to how many remaining rows the `pending` of a truncated changes feed is exact (as with
/// SQLite: `outpost_store::sqlite::PENDING_EXACT_UP_TO`).
const PENDING_EXACT_UP_TO: i64 = outpost_store::sqlite::PENDING_EXACT_UP_TO as i64;

type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

/// The pool of read connections.
#[derive(Clone)]
pub struct Reader {
    pool: Pool,
}

impl Reader {
    pub fn new(pool: Pool) -> Reader {
        Reader { pool }
    }

    pub async fn client(&self) -> Result<Object, StoreError> {
        self.pool.get().await.map_err(pool)
    }

    pub async fn query(
        &self,
        c: &Object,
        sql: &str,
        params: Params<'_>,
    ) -> Result<Vec<Row>, StoreError> {
        let stmt = c.prepare_cached(sql).await.map_err(pg)?;
        c.query(&stmt, params).await.map_err(pg)
    }

    pub async fn query_opt(
        &self,
        c: &Object,
        sql: &str,
        params: Params<'_>,
    ) -> Result<Option<Row>, StoreError> {
        let stmt = c.prepare_cached(sql).await.map_err(pg)?;
        c.query_opt(&stmt, params).await.map_err(pg)
    }

    /// The pool's connections, open and idle, and the reads waiting for one (for metrics).
    pub fn status(&self) -> deadpool_postgres::Status {
        self.pool.status()
    }
}

pub async fn db_id(c: &Object, name: &str) -> Result<i64, StoreError> {
    let stmt = c
        .prepare_cached("SELECT id FROM dbs WHERE name = $1")
        .await
        .map_err(pg)?;
    c.query_opt(&stmt, &[&name])
        .await
        .map_err(pg)?
        .map(|r| r.get(0))
        .ok_or(StoreError::NoDb)
}

fn parse_tree(id: &str, json: &str) -> Result<RevTree, StoreError> {
    serde_json::from_str(json).map_err(|e| corrupt(format!("revision tree of {id}: {e}")))
}

fn parse_rev(s: &str) -> Result<Rev, StoreError> {
    Rev::parse_stored(s).map_err(|e| corrupt(format!("stored revision {s}: {e}")))
}

fn clamp(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

pub async fn all_dbs(r: &Reader) -> Result<Vec<String>, StoreError> {
    let c = r.client().await?;
    Ok(r.query(&c, "SELECT name FROM dbs ORDER BY name", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

pub async fn security(r: &Reader, db: &str) -> Result<Option<String>, StoreError> {
    let c = r.client().await?;
    let db = db_id(&c, db).await?;
    Ok(
        r.query_opt(&c, "SELECT body FROM db_security WHERE db = $1", &[&db])
            .await?
            .map(|r| r.get(0)),
    )
}

/// A database's info; `file_size` is `database_bytes`, the whole PostgreSQL database's size as
/// last sampled (see [`crate::feed`]): asking PostgreSQL on every request would make
/// `GET /{db}`, which every replication starts with, cost a walk of the database's files.
pub async fn db_info(r: &Reader, name: &str, database_bytes: u64) -> Result<DbInfo, StoreError> {
    let c = r.client().await?;
    let row = r
        .query_opt(
            &c,
            "SELECT name, doc_count, doc_del_count, update_seq, revs_limit, active_size,
                    created_at, policy, lww_field, retention_count, retention_age,
                    EXISTS (SELECT 1 FROM access_dbs a WHERE a.db = dbs.id),
                    purge_seq, purged_infos_limit
             FROM dbs WHERE name = $1",
            &[&name],
        )
        .await?
        .ok_or(StoreError::NoDb)?;
    Ok(DbInfo {
        name: row.get(0),
        doc_count: row.get::<_, i64>(1).max(0) as u64,
        doc_del_count: row.get::<_, i64>(2).max(0) as u64,
        update_seq: row.get::<_, i64>(3) as u64,
        revs_limit: row.get::<_, i64>(4) as u64,
        active_size: row.get::<_, i64>(5).max(0) as u64,
        created_at: row.get(6),
        policy: Policy::from_parts(&row.get::<_, String>(7), row.get(8)).unwrap_or_default(),
        retention: outpost_store::Retention {
            max_events_per_doc: row.get::<_, Option<i64>>(9).map(|c| c as u64),
            max_age_seconds: row.get::<_, Option<i64>>(10).map(|a| a as u64),
        },
        file_size: database_bytes,
        compact_running: false,
        access: row.get(11),
        purge_seq: row.get::<_, i64>(12).max(0) as u64,
        purged_infos_limit: row.get::<_, i64>(13).max(0) as u64,
    })
}

pub async fn docs(
    r: &Reader,
    db: &str,
    ids: &[String],
) -> Result<Vec<Option<DocRecord>>, StoreError> {
    let c = r.client().await?;
    let db = db_id(&c, db).await?;
    let rows = r
        .query(
            &c,
            "SELECT w.id, d.seq, d.tree FROM unnest($2::text[]) WITH ORDINALITY AS w(id, ord)
             LEFT JOIN docs d ON d.db = $1 AND d.id = w.id ORDER BY w.ord",
            &[&db, &ids],
        )
        .await?;
    rows.iter()
        .map(|row| {
            let id: String = row.get(0);
            match (
                row.get::<_, Option<i64>>(1),
                row.get::<_, Option<String>>(2),
            ) {
                (Some(seq), Some(tree)) => Ok(Some(DocRecord {
                    tree: parse_tree(&id, &tree)?,
                    id,
                    seq: seq as u64,
                })),
                _ => Ok(None),
            }
        })
        .collect()
}

pub async fn bodies(
    r: &Reader,
    db: &str,
    wanted: &[(String, Rev)],
) -> Result<Vec<Option<StoredBody>>, StoreError> {
    let c = r.client().await?;
    let db = db_id(&c, db).await?;
    let ids: Vec<&str> = wanted.iter().map(|(id, _)| id.as_str()).collect();
    let revs: Vec<String> = wanted.iter().map(|(_, rev)| rev.to_string()).collect();
    let rows = r
        .query(
            &c,
            "SELECT b.deleted, b.body FROM unnest($2::text[], $3::text[]) WITH ORDINALITY AS w(doc, rev, ord)
             LEFT JOIN revs b ON b.db = $1 AND b.doc = w.doc AND b.rev = w.rev ORDER BY w.ord",
            &[&db, &ids, &revs],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| {
            row.get::<_, Option<String>>(1).map(|json| StoredBody {
                deleted: row.get(0),
                json,
            })
        })
        .collect())
}

/// Appends the bounds of an `_all_docs`-style id range on `column` and its order to `sql`,
/// pushing the bounds onto `params`.
pub(crate) fn push_id_range<'q>(
    sql: &mut String,
    params: &mut Vec<&'q (dyn ToSql + Sync)>,
    column: &str,
    q: &'q AllDocsQuery,
) {
    let (lower, upper, lower_incl, upper_incl) = if q.descending {
        (&q.end, &q.start, q.end_inclusive, q.start_inclusive)
    } else {
        (&q.start, &q.end, q.start_inclusive, q.end_inclusive)
    };
    if let Some(lower) = lower {
        params.push(lower);
        let op = if lower_incl { ">=" } else { ">" };
        sql.push_str(&format!(" AND {column} {op} ${}", params.len()));
    }
    if let Some(upper) = upper {
        params.push(upper);
        let op = if upper_incl { "<=" } else { "<" };
        sql.push_str(&format!(" AND {column} {op} ${}", params.len()));
    }
    let order = if q.descending { "DESC" } else { "ASC" };
    sql.push_str(&format!(" ORDER BY {column} {order}"));
}

pub async fn all_docs(r: &Reader, db: &str, q: &AllDocsQuery) -> Result<Vec<DocRow>, StoreError> {
    let c = r.client().await?;
    let db = db_id(&c, db).await?;
    let (limit, skip) = (clamp(q.limit), clamp(q.skip));
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![&db, &limit, &skip, &q.include_docs];
    let mut sql = String::from(
        "SELECT d.id, d.seq, d.tree, CASE WHEN $4 THEN r.body END FROM docs d
         LEFT JOIN revs r ON $4 AND r.db = d.db AND r.doc = d.id AND r.rev = d.winner
         WHERE d.db = $1 AND NOT d.deleted",
    );
    push_id_range(&mut sql, &mut params, "d.id", q);
    sql.push_str(" LIMIT $2 OFFSET $3");
    let rows = r.query(&c, &sql, &params).await?;
    rows.iter()
        .map(|row| {
            let id: String = row.get(0);
            Ok(DocRow {
                tree: parse_tree(&id, &row.get::<_, String>(2))?,
                id,
                seq: row.get::<_, i64>(1) as u64,
                body: row.get(3),
            })
        })
        .collect()
}

pub async fn count_before(
    r: &Reader,
    db: &str,
    id: &str,
    descending: bool,
    cap: u64,
) -> Result<Option<u64>, StoreError> {
    let c = r.client().await?;
    let db = db_id(&c, db).await?;
    let sql = if descending {
        "SELECT count(*) FROM (SELECT 1 FROM docs WHERE db = $1 AND NOT deleted AND id > $2 LIMIT $3) x"
    } else {
        "SELECT count(*) FROM (SELECT 1 FROM docs WHERE db = $1 AND NOT deleted AND id < $2 LIMIT $3) x"
    };
    let bound = clamp(cap.saturating_add(1));
    let n: i64 = r
        .query_opt(&c, sql, &[&db, &id, &bound])
        .await?
        .map_or(0, |r| r.get(0));
    let n = n.max(0) as u64;
    Ok((n <= cap).then_some(n))
}

pub async fn changes(r: &Reader, db: &str, q: &ChangesQuery) -> Result<Vec<ChangeRow>, StoreError> {
    let c = r.client().await?;
    let db = db_id(&c, db).await?;
    let sql = if q.descending {
        "SELECT d.id, d.seq, d.tree, CASE WHEN $4 THEN r.body END FROM docs d
         LEFT JOIN revs r ON $4 AND r.db = d.db AND r.doc = d.id AND r.rev = d.winner
         WHERE d.db = $1 AND d.seq < $2 ORDER BY d.seq DESC LIMIT $3"
    } else {
        "SELECT d.id, d.seq, d.tree, CASE WHEN $4 THEN r.body END FROM docs d
         LEFT JOIN revs r ON $4 AND r.db = d.db AND r.doc = d.id AND r.rev = d.winner
         WHERE d.db = $1 AND d.seq > $2 ORDER BY d.seq ASC LIMIT $3"
    };
    let (since, limit) = (clamp(q.since), clamp(q.limit));
    let rows = r
        .query(&c, sql, &[&db, &since, &limit, &q.include_docs])
        .await?;
    rows.iter()
        .map(|row| {
            let id: String = row.get(0);
            Ok(ChangeRow {
                tree: parse_tree(&id, &row.get::<_, String>(2))?,
                id,
                seq: row.get::<_, i64>(1) as u64,
                body: row.get(3),
            })
        })
        .collect()
}

/// The `pending` of a changes page ending at `since`, computed as the SQLite engine does: exact
/// up to [`PENDING_EXACT_UP_TO`], beyond it the smaller of two upper bounds from the counters.
pub async fn changes_pending(r: &Reader, db: &str, since: u64) -> Result<u64, StoreError> {
    let c = r.client().await?;
    let since = clamp(since);
    let row = r
        .query_opt(
            &c,
            "SELECT (SELECT count(*) FROM (SELECT 1 FROM docs WHERE db = d.id AND seq > $2 LIMIT $3) x),
                    d.update_seq, d.doc_count + d.doc_del_count
             FROM dbs d WHERE d.name = $1",
            &[&db, &since, &(PENDING_EXACT_UP_TO + 1)],
        )
        .await?
        .ok_or(StoreError::NoDb)?;
    let n = row.get::<_, i64>(0).max(0) as u64;
    if n <= PENDING_EXACT_UP_TO as u64 {
        return Ok(n);
    }
    let (update_seq, docs): (i64, i64) = (row.get(1), row.get(2));
    let after = update_seq.saturating_sub(since).max(0) as u64;
    Ok(after.min(docs.max(0) as u64).max(n))
}

pub async fn conflicts(
    r: &Reader,
    db: &str,
    start: Option<&str>,
    limit: u64,
) -> Result<Vec<DocRecord>, StoreError> {
    let c = r.client().await?;
    let db = db_id(&c, db).await?;
    let rows = r
        .query(
            &c,
            "SELECT id, seq, tree FROM docs WHERE db = $1 AND conflicted AND id >= $2
             ORDER BY id LIMIT $3",
            &[&db, &start.unwrap_or(""), &clamp(limit)],
        )
        .await?;
    rows.iter()
        .map(|row| {
            let id: String = row.get(0);
            Ok(DocRecord {
                tree: parse_tree(&id, &row.get::<_, String>(2))?,
                id,
                seq: row.get::<_, i64>(1) as u64,
            })
        })
        .collect()
}

pub async fn local_docs(
    r: &Reader,
    db: &str,
    q: &AllDocsQuery,
) -> Result<Vec<LocalDocRow>, StoreError> {
    let c = r.client().await?;
    let db = db_id(&c, db).await?;
    let (limit, skip) = (clamp(q.limit), clamp(q.skip));
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![&db, &limit, &skip, &q.include_docs];
    let mut sql =
        String::from("SELECT id, rev, CASE WHEN $4 THEN body END FROM local_docs WHERE db = $1");
    push_id_range(&mut sql, &mut params, "id", q);
    sql.push_str(" LIMIT $2 OFFSET $3");
    Ok(r.query(&c, &sql, &params)
        .await?
        .iter()
        .map(|row| LocalDocRow {
            id: row.get(0),
            rev: row.get::<_, i64>(1) as u64,
            body: row.get(2),
        })
        .collect())
}

pub async fn local_doc(r: &Reader, db: &str, id: &str) -> Result<Option<LocalDoc>, StoreError> {
    let c = r.client().await?;
    let db = db_id(&c, db).await?;
    Ok(r.query_opt(
        &c,
        "SELECT rev, body FROM local_docs WHERE db = $1 AND id = $2",
        &[&db, &id],
    )
    .await?
    .map(|row| LocalDoc {
        rev: row.get::<_, i64>(0) as u64,
        body: row.get(1),
    }))
}

pub async fn attachment(r: &Reader, digest: &str) -> Result<Option<Vec<u8>>, StoreError> {
    let c = r.client().await?;
    Ok(r.query_opt(
        &c,
        "SELECT data FROM attachments WHERE digest = $1",
        &[&digest],
    )
    .await?
    .map(|row| row.get(0)))
}

/// A byte range of an attachment. The column is stored `EXTERNAL` (uncompressed, out of line),
/// so PostgreSQL fetches only the TOAST chunks the range covers, not the whole value.
pub async fn attachment_range(
    r: &Reader,
    digest: &str,
    offset: u64,
    len: u64,
) -> Result<Option<Vec<u8>>, StoreError> {
    let c = r.client().await?;
    // substring counts from 1; both bounds are clamped into i32, PostgreSQL's argument type,
    // far beyond the 1 GB a bytea can hold.
    let start = i32::try_from(offset.saturating_add(1)).unwrap_or(i32::MAX);
    let len = i32::try_from(len).unwrap_or(i32::MAX);
    Ok(r.query_opt(
        &c,
        "SELECT substring(data FROM $2 FOR $3) FROM attachments WHERE digest = $1",
        &[&digest, &start, &len],
    )
    .await?
    .map(|row| row.get::<_, Option<Vec<u8>>>(0).unwrap_or_default()))
}

/// A page of the event log; as with SQLite, a page never ends inside a sequence.
pub async fn events(r: &Reader, db: &str, q: &EventsQuery) -> Result<Vec<Event>, StoreError> {
    let c = r.client().await?;
    let db = db_id(&c, db).await?;
    let (since, limit) = (clamp(q.since), clamp(q.limit));
    let select = "SELECT e.seq, e.kind, e.doc, e.rev, e.parent, e.origin, e.at,
                         CASE WHEN $4 THEN r.body END, e.detail, e.pos
         FROM events e LEFT JOIN revs r ON r.db = e.db AND r.doc = e.doc AND r.rev = e.rev";
    let doc_filter = if q.doc_id.is_some() {
        " AND e.doc = $5"
    } else {
        ""
    };
    let page_sql = format!(
        "{select} WHERE e.db = $1 AND e.seq > $2{doc_filter} ORDER BY e.seq, e.pos LIMIT $3"
    );
    let rest_sql = format!(
        "{select} WHERE e.db = $1 AND e.seq = $2 AND e.pos > $3{doc_filter} ORDER BY e.pos"
    );
    let doc = q.doc_id.clone().unwrap_or_default();
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![&db, &since, &limit, &q.include_docs];
    if q.doc_id.is_some() {
        params.push(&doc);
    }
    let mut rows = r.query(&c, &page_sql, &params).await?;
    if limit > 0 && rows.len() as i64 == limit {
        let (seq, pos): (i64, i64) = rows.last().map_or((0, 0), |r| (r.get(0), r.get(9)));
        params[1] = &seq;
        params[2] = &pos;
        rows.extend(r.query(&c, &rest_sql, &params).await?);
    }
    rows.iter()
        .map(|row| {
            Ok(Event {
                seq: row.get::<_, i64>(0) as u64,
                kind: row.get(1),
                id: row.get(2),
                rev: parse_rev(&row.get::<_, String>(3))?,
                parent: row
                    .get::<_, Option<String>>(4)
                    .as_deref()
                    .map(parse_rev)
                    .transpose()?,
                origin: row.get(5),
                at: row.get(6),
                body: row.get(7),
                detail: row.get(8),
            })
        })
        .collect()
}

pub async fn db_updates(r: &Reader, since: u64, limit: u64) -> Result<Vec<DbUpdate>, StoreError> {
    let c = r.client().await?;
    Ok(r.query(
        &c,
        "SELECT seq, name, type FROM db_updates WHERE seq > $1 ORDER BY seq LIMIT $2",
        &[&clamp(since), &clamp(limit)],
    )
    .await?
    .iter()
    .map(|row| DbUpdate {
        seq: row.get::<_, i64>(0) as u64,
        db_name: row.get(1),
        kind: row.get(2),
    })
    .collect())
}
