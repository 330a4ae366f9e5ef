//! The writer's connection: a blocking client on the writer thread, with its prepared
//! statements, and the [`DocTx`] statements the engine-neutral document writer runs on it.

use std::cell::RefCell;
use std::collections::HashMap;

use outpost_core::Policy;
use outpost_store::docwrite::{DbState, DocRowWrite, DocTx, EventWrite};
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

    fn doc_row(&self, db: i64, id: &str) -> Result<Option<(bool, String)>, StoreError> {
        Ok(self
            .query_opt(
                "SELECT deleted, tree FROM docs WHERE db = $1 AND id = $2",
                &[&db, &id],
            )?
            .map(|r| (r.get(0), r.get(1))))
    }

    fn rev_body(&self, db: i64, doc: &str, rev: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .query_opt(
                "SELECT body FROM revs WHERE db = $1 AND doc = $2 AND rev = $3",
                &[&db, &doc, &rev],
            )?
            .map(|r| r.get(0)))
    }

    fn put_rev(
        &self,
        db: i64,
        doc: &str,
        rev: &str,
        deleted: bool,
        body: &str,
    ) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO revs (db, doc, rev, deleted, body) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (db, doc, rev) DO NOTHING",
            &[&db, &doc, &rev, &deleted, &body],
        )?;
        Ok(())
    }

    fn put_attachment(&self, att: &NewAttachment) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO attachments (digest, length, data) VALUES ($1, $2, $3)
             ON CONFLICT (digest) DO NOTHING",
            &[&att.digest, &(att.data.len() as i64), &att.data],
        )?;
        Ok(())
    }

    fn put_doc(&self, row: &DocRowWrite<'_>) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO docs (db, id, seq, deleted, conflicted, winner, tree)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (db, id) DO UPDATE SET seq = excluded.seq, deleted = excluded.deleted,
                 conflicted = excluded.conflicted, winner = excluded.winner, tree = excluded.tree",
            &[
                &row.db,
                &row.id,
                &(row.seq as i64),
                &row.deleted,
                &row.conflicted,
                &row.winner,
                &row.tree,
            ],
        )?;
        Ok(())
    }

    fn put_event(&self, e: &EventWrite<'_>) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO events (db, seq, pos, kind, doc, rev, parent, origin, at, detail, deleted)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            &[
                &e.db,
                &(e.seq as i64),
                &e.pos,
                &e.kind,
                &e.doc,
                &e.rev,
                &e.parent,
                &e.origin,
                &e.at,
                &e.detail,
                &e.deleted,
            ],
        )?;
        Ok(())
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
