//! The writer's connection: a blocking client on the writer thread, with its prepared
//! statements, and the [`DocTx`] statements the engine-neutral document writer runs on it.

use std::cell::RefCell;
use std::collections::HashMap;

use outpost_core::Policy;
use outpost_store::docwrite::{DbState, DocRowWrite, DocTx, EventWrite, RevWrite, Writes};
use outpost_store::{NewAttachment, StoreError};
use postgres::types::ToSql;
use postgres::{Client, Row, Statement};

use crate::error::pg;

/// The writer's connection. Statements borrow the client one at a time, so the document
/// writer's `&self` calls can run on it; every statement is prepared once per connection.
pub struct WriterConn {
    client: RefCell<Client>,
    statements: RefCell<HashMap<String, Statement>>,
}

type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

impl WriterConn {
    pub fn new(client: Client) -> WriterConn {
        WriterConn {
            client: RefCell::new(client),
            statements: RefCell::default(),
        }
    }

    /// Whether the connection was lost (the writer then opens a new one).
    pub fn is_closed(&self) -> bool {
        self.client.borrow().is_closed()
    }

    fn statement(&self, sql: &str) -> Result<Statement, StoreError> {
        if let Some(s) = self.statements.borrow().get(sql) {
            return Ok(s.clone());
        }
        let s = self.client.borrow_mut().prepare(sql).map_err(pg)?;
        self.statements
            .borrow_mut()
            .insert(sql.to_owned(), s.clone());
        Ok(s)
    }

    /// Runs commands without parameters (transaction control, savepoints).
    pub fn batch(&self, sql: &str) -> Result<(), StoreError> {
        self.client.borrow_mut().batch_execute(sql).map_err(pg)
    }

    pub fn execute(&self, sql: &str, params: Params<'_>) -> Result<u64, StoreError> {
        let s = self.statement(sql)?;
        self.client.borrow_mut().execute(&s, params).map_err(pg)
    }

    pub fn query(&self, sql: &str, params: Params<'_>) -> Result<Vec<Row>, StoreError> {
        let s = self.statement(sql)?;
        self.client.borrow_mut().query(&s, params).map_err(pg)
    }

    pub fn query_opt(&self, sql: &str, params: Params<'_>) -> Result<Option<Row>, StoreError> {
        let s = self.statement(sql)?;
        self.client.borrow_mut().query_opt(&s, params).map_err(pg)
    }
}

impl DocTx for WriterConn {
    fn db_state(&self, name: &str) -> Result<Option<DbState>, StoreError> {
        // The row lock, held until the transaction ends, orders the sequences of every node's
        // writes to this database by commit: a writer reads `update_seq` only once the writer
        // before it committed (see `writer`).
        let row = self.query_opt(
            "SELECT id, update_seq, revs_limit, doc_count, doc_del_count, active_size, policy,
                    lww_field, EXISTS (SELECT 1 FROM access_dbs a WHERE a.db = dbs.id), purge_seq
             FROM dbs WHERE name = $1 FOR UPDATE OF dbs",
            &[&name],
        )?;
        Ok(row.map(|r| DbState {
            id: r.get(0),
            seq: r.get::<_, i64>(1) as u64,
            revs_limit: r.get::<_, i64>(2).max(1) as usize,
            doc_count: r.get(3),
            doc_del_count: r.get(4),
            active_size: r.get(5),
            policy: Policy::from_parts(&r.get::<_, String>(6), r.get(7)).unwrap_or_default(),
            access: r.get(8),
            purge_seq: r.get::<_, i64>(9).max(0) as u64,
        }))
    }

    fn save_state(&self, state: &DbState) -> Result<(), StoreError> {
        self.execute(
            "UPDATE dbs SET update_seq = $2, doc_count = $3, doc_del_count = $4, active_size = $5,
                 purge_seq = $6
             WHERE id = $1",
            &[
                &state.id,
                &(state.seq as i64),
                &state.doc_count,
                &state.doc_del_count,
                &state.active_size,
                &(state.purge_seq as i64),
            ],
        )?;
        Ok(())
    }

    fn doc_rows(
        &self,
        db: i64,
        ids: &[&str],
    ) -> Result<HashMap<String, (bool, String)>, StoreError> {
        let rows = match ids {
            [id] => self.query(
                "SELECT id, deleted, tree FROM docs WHERE db = $1 AND id = $2",
                &[&db, id],
            )?,
            _ => self.query(
                "SELECT id, deleted, tree FROM docs WHERE db = $1 AND id = ANY($2)",
                &[&db, &ids],
            )?,
        };
        Ok(rows
            .into_iter()
            .map(|r| (r.get(0), (r.get(1), r.get(2))))
            .collect())
    }

    fn rev_body(&self, db: i64, doc: &str, rev: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .query_opt(
                "SELECT body FROM revs WHERE db = $1 AND doc = $2 AND rev = $3",
                &[&db, &doc, &rev],
            )?
            .map(|r| r.get(0)))
    }

    /// One statement per table: a single row as plain parameters, several with each column
    /// passed as an array and turned back into rows by `unnest`, so a chunk of a thousand
    /// documents costs a few round trips instead of thousands. (`unnest` measured faster than a
    /// binary `COPY` into a temporary table and an `INSERT … SELECT` from it, which takes two
    /// statements; for one row, plain parameters cost the server less than `unnest`.)
    fn write(&self, w: &Writes) -> Result<(), StoreError> {
        self.put_attachments(&w.attachments)?;
        self.put_revs(&w.revs)?;
        // New documents are inserted and known ones updated, each with a plain statement: the
        // rows were read under the database's row lock, which every writer of its documents
        // holds, so which ones exist cannot change before the commit, and an upsert's
        // speculative insertion would only cost more.
        let (new, known): (Vec<&DocRowWrite>, Vec<&DocRowWrite>) =
            w.docs.iter().partition(|d| d.new);
        self.put_docs(&new, true)?;
        self.put_docs(&known, false)?;
        self.put_events(&w.events)
    }

    fn index_access(
        &self,
        db: i64,
        id: &str,
        seq: u64,
        winner: &str,
        deleted: bool,
    ) -> Result<(), StoreError> {
        crate::access::index_doc(self, db, id, seq, winner, deleted)
    }

    fn drop_bodies(&self, db: i64, doc: &str, keep: &[String]) -> Result<(i64, bool), StoreError> {
        self.execute(
            "UPDATE events SET deleted = r.deleted FROM revs r
             WHERE events.db = $1 AND events.doc = $2 AND events.deleted IS NULL
               AND r.db = events.db AND r.doc = events.doc AND r.rev = events.rev",
            &[&db, &doc],
        )?;
        let row = self.query_opt(
            "WITH gone AS (
                 DELETE FROM revs WHERE db = $1 AND doc = $2 AND NOT (rev = ANY($3))
                 RETURNING body
             )
             SELECT coalesce(sum(octet_length(body)), 0)::bigint,
                    coalesce(bool_or(strpos(body, '\"_attachments\"') > 0), false)
             FROM gone",
            &[&db, &doc, &keep],
        )?;
        Ok(row.map_or((0, false), |r| (r.get(0), r.get(1))))
    }

    fn forget_doc(&self, db: i64, doc: &str) -> Result<(), StoreError> {
        self.execute("DELETE FROM docs WHERE db = $1 AND id = $2", &[&db, &doc])?;
        for table in ["events", "event_baselines", "access_rows"] {
            self.execute(
                &format!("DELETE FROM {table} WHERE db = $1 AND doc = $2"),
                &[&db, &doc],
            )?;
        }
        crate::index::forget_doc(self, db, doc)
    }
}

/// The multi-row statements behind [`DocTx::write`].
impl WriterConn {
    fn put_attachments(&self, atts: &[NewAttachment]) -> Result<(), StoreError> {
        if atts.is_empty() {
            return Ok(());
        }
        // In digest order, so that two nodes storing the same new attachments lock their rows
        // in the same order and cannot deadlock.
        let mut atts: Vec<&NewAttachment> = atts.iter().collect();
        atts.sort_unstable_by(|a, b| a.digest.cmp(&b.digest));
        let digests: Vec<&str> = atts.iter().map(|a| a.digest.as_str()).collect();
        let lengths: Vec<i64> = atts.iter().map(|a| a.data.len() as i64).collect();
        let data: Vec<&[u8]> = atts.iter().map(|a| a.data.as_slice()).collect();
        self.execute(
            "INSERT INTO attachments (digest, length, data)
             SELECT * FROM unnest($1::text[], $2::int8[], $3::bytea[])
             ON CONFLICT (digest) DO NOTHING",
            &[&digests, &lengths, &data],
        )?;
        Ok(())
    }

    fn put_revs(&self, revs: &[RevWrite]) -> Result<(), StoreError> {
        match revs {
            [] => {}
            [r] => {
                self.execute(
                    "INSERT INTO revs (db, doc, rev, deleted, body) VALUES ($1, $2, $3, $4, $5)
                     ON CONFLICT (db, doc, rev) DO NOTHING",
                    &[&r.db, &r.doc, &r.rev, &r.deleted, &r.body],
                )?;
            }
            _ => {
                let dbs: Vec<i64> = revs.iter().map(|r| r.db).collect();
                let docs: Vec<&str> = revs.iter().map(|r| r.doc.as_str()).collect();
                let ids: Vec<&str> = revs.iter().map(|r| r.rev.as_str()).collect();
                let deleted: Vec<bool> = revs.iter().map(|r| r.deleted).collect();
                let bodies: Vec<&str> = revs.iter().map(|r| r.body.as_str()).collect();
                self.execute(
                    "INSERT INTO revs (db, doc, rev, deleted, body)
                     SELECT * FROM unnest($1::int8[], $2::text[], $3::text[], $4::bool[],
                                          $5::text[])
                     ON CONFLICT (db, doc, rev) DO NOTHING",
                    &[&dbs, &docs, &ids, &deleted, &bodies],
                )?;
            }
        }
        Ok(())
    }

    /// Inserts (`insert`) or updates document rows.
    fn put_docs(&self, rows: &[&DocRowWrite], insert: bool) -> Result<(), StoreError> {
        if let [d] = rows {
            let sql = if insert {
                "INSERT INTO docs (db, id, seq, deleted, conflicted, winner, tree)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)"
            } else {
                "UPDATE docs SET seq = $3, deleted = $4, conflicted = $5, winner = $6, tree = $7
                 WHERE db = $1 AND id = $2"
            };
            let seq = d.seq as i64;
            self.execute(
                sql,
                &[
                    &d.db,
                    &d.id,
                    &seq,
                    &d.deleted,
                    &d.conflicted,
                    &d.winner,
                    &d.tree,
                ],
            )?;
            return Ok(());
        }
        if rows.is_empty() {
            return Ok(());
        }
        let sql = if insert {
            "INSERT INTO docs (db, id, seq, deleted, conflicted, winner, tree)
             SELECT * FROM unnest($1::int8[], $2::text[], $3::int8[], $4::bool[], $5::bool[],
                                  $6::text[], $7::text[])"
        } else {
            "UPDATE docs SET seq = n.seq, deleted = n.deleted, conflicted = n.conflicted,
                 winner = n.winner, tree = n.tree
             FROM unnest($1::int8[], $2::text[], $3::int8[], $4::bool[], $5::bool[], $6::text[],
                         $7::text[]) AS n (db, id, seq, deleted, conflicted, winner, tree)
             WHERE docs.db = n.db AND docs.id = n.id"
        };
        let dbs: Vec<i64> = rows.iter().map(|d| d.db).collect();
        let ids: Vec<&str> = rows.iter().map(|d| d.id.as_str()).collect();
        let seqs: Vec<i64> = rows.iter().map(|d| d.seq as i64).collect();
        let deleted: Vec<bool> = rows.iter().map(|d| d.deleted).collect();
        let conflicted: Vec<bool> = rows.iter().map(|d| d.conflicted).collect();
        let winners: Vec<&str> = rows.iter().map(|d| d.winner.as_str()).collect();
        let trees: Vec<&str> = rows.iter().map(|d| d.tree.as_str()).collect();
        self.execute(
            sql,
            &[&dbs, &ids, &seqs, &deleted, &conflicted, &winners, &trees],
        )?;
        Ok(())
    }

    fn put_events(&self, events: &[EventWrite]) -> Result<(), StoreError> {
        match events {
            [] => {}
            [e] => {
                let seq = e.seq as i64;
                self.execute(
                    "INSERT INTO events (db, seq, pos, kind, doc, rev, parent, origin, at, detail,
                                         deleted)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                    &[
                        &e.db, &seq, &e.pos, &e.kind, &e.doc, &e.rev, &e.parent, &e.origin, &e.at,
                        &e.detail, &e.deleted,
                    ],
                )?;
            }
            e => {
                let dbs: Vec<i64> = e.iter().map(|e| e.db).collect();
                let seqs: Vec<i64> = e.iter().map(|e| e.seq as i64).collect();
                let pos: Vec<i64> = e.iter().map(|e| e.pos).collect();
                let kinds: Vec<&str> = e.iter().map(|e| e.kind).collect();
                let docs: Vec<&str> = e.iter().map(|e| e.doc.as_str()).collect();
                let revs: Vec<&str> = e.iter().map(|e| e.rev.as_str()).collect();
                let parents: Vec<Option<&str>> = e.iter().map(|e| e.parent.as_deref()).collect();
                let origins: Vec<&str> = e.iter().map(|e| e.origin.as_str()).collect();
                let at: Vec<i64> = e.iter().map(|e| e.at).collect();
                let details: Vec<Option<&str>> = e.iter().map(|e| e.detail.as_deref()).collect();
                let deleted: Vec<bool> = e.iter().map(|e| e.deleted).collect();
                self.execute(
                    "INSERT INTO events (db, seq, pos, kind, doc, rev, parent, origin, at, detail,
                                         deleted)
                     SELECT * FROM unnest($1::int8[], $2::int8[], $3::int8[], $4::text[],
                                          $5::text[], $6::text[], $7::text[], $8::text[],
                                          $9::int8[], $10::text[], $11::bool[])",
                    &[
                        &dbs, &seqs, &pos, &kinds, &docs, &revs, &parents, &origins, &at, &details,
                        &deleted,
                    ],
                )?;
            }
        }
        Ok(())
    }
}
