//! The SQLite statements behind [`DocTx`]: what the engine-neutral document writer
//! (`crate::docwrite`) reads and writes, on the writer's connection inside its transaction.

use std::collections::HashMap;

use outpost_core::Policy;
use rusqlite::{Connection, OptionalExtension, params};

use crate::StoreError;
use crate::docwrite::{DbState, DocTx, Writes};

impl DocTx for Connection {
    fn db_state(&self, name: &str) -> Result<Option<DbState>, StoreError> {
        // One writer thread owns the file, so the row needs no lock of its own.
        Ok(self
            .prepare_cached(
                "SELECT id, update_seq, revs_limit, doc_count, doc_del_count, active_size, policy,
                        lww_field, EXISTS (SELECT 1 FROM access_dbs a WHERE a.db = dbs.id),
                        purge_seq
                 FROM dbs WHERE name = ?1",
            )?
            .query_row([name], |r| {
                Ok(DbState {
                    id: r.get(0)?,
                    seq: r.get::<_, i64>(1)? as u64,
                    revs_limit: r.get::<_, i64>(2)? as usize,
                    doc_count: r.get(3)?,
                    doc_del_count: r.get(4)?,
                    active_size: r.get(5)?,
                    policy: Policy::from_parts(&r.get::<_, String>(6)?, r.get(7)?)
                        .unwrap_or_default(),
                    access: r.get(8)?,
                    purge_seq: r.get::<_, i64>(9)? as u64,
                })
            })
            .optional()?)
    }

    fn save_state(&self, state: &DbState) -> Result<(), StoreError> {
        self.prepare_cached(
            "UPDATE dbs SET update_seq = ?2, doc_count = ?3, doc_del_count = ?4, active_size = ?5,
                 purge_seq = ?6
             WHERE id = ?1",
        )?
        .execute(params![
            state.id,
            state.seq as i64,
            state.doc_count,
            state.doc_del_count,
            state.active_size,
            state.purge_seq as i64
        ])?;
        Ok(())
    }

    fn doc_rows(
        &self,
        db: i64,
        ids: &[&str],
    ) -> Result<HashMap<String, (bool, String)>, StoreError> {
        // In process, a statement per document costs no round trip.
        let mut stmt =
            self.prepare_cached("SELECT deleted, tree FROM docs WHERE db = ?1 AND id = ?2")?;
        let mut out = HashMap::with_capacity(ids.len());
        for id in ids {
            if let Some(row) = stmt
                .query_row(params![db, id], |r| Ok((r.get::<_, bool>(0)?, r.get(1)?)))
                .optional()?
            {
                out.insert((*id).to_owned(), row);
            }
        }
        Ok(out)
    }

    fn rev_body(&self, db: i64, doc: &str, rev: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .prepare_cached("SELECT body FROM revs WHERE db = ?1 AND doc = ?2 AND rev = ?3")?
            .query_row(params![db, doc, rev], |r| r.get(0))
            .optional()?)
    }

    fn write(&self, w: &Writes) -> Result<(), StoreError> {
        let mut stmt = self.prepare_cached(
            "INSERT INTO attachments (digest, length, data) VALUES (?1, ?2, ?3)
             ON CONFLICT (digest) DO NOTHING",
        )?;
        for att in &w.attachments {
            stmt.execute(params![att.digest, att.data.len() as i64, att.data])?;
        }
        let mut stmt = self.prepare_cached(
            "INSERT INTO revs (db, doc, rev, deleted, body) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (db, doc, rev) DO NOTHING",
        )?;
        for r in &w.revs {
            stmt.execute(params![r.db, r.doc, r.rev, r.deleted, r.body])?;
        }
        let mut stmt = self.prepare_cached(
            "INSERT INTO docs (db, id, seq, deleted, conflicted, winner, tree)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (db, id) DO UPDATE SET seq = excluded.seq, deleted = excluded.deleted,
                 conflicted = excluded.conflicted, winner = excluded.winner, tree = excluded.tree",
        )?;
        for d in &w.docs {
            stmt.execute(params![
                d.db,
                d.id,
                d.seq as i64,
                d.deleted,
                d.conflicted,
                d.winner,
                d.tree
            ])?;
        }
        let mut stmt = self.prepare_cached(
            "INSERT INTO events (db, seq, pos, kind, doc, rev, parent, origin, at, detail, deleted)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        )?;
        for e in &w.events {
            stmt.execute(params![
                e.db,
                e.seq as i64,
                e.pos,
                e.kind,
                e.doc,
                e.rev,
                e.parent,
                e.origin,
                e.at,
                e.detail,
                e.deleted,
            ])?;
        }
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
        super::access::index_doc(self, db, id, seq, winner, deleted)
    }

    fn drop_bodies(&self, db: i64, doc: &str, keep: &[String]) -> Result<(i64, bool), StoreError> {
        let keep = serde_json::to_string(keep).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.prepare_cached(
            "UPDATE events SET deleted = r.deleted FROM revs r
             WHERE events.db = ?1 AND events.doc = ?2 AND events.deleted IS NULL
               AND r.db = events.db AND r.doc = events.doc AND r.rev = events.rev",
        )?
        .execute(params![db, doc])?;
        let (freed, attachments): (i64, bool) = self
            .prepare_cached(
                "SELECT coalesce(sum(length(body)), 0),
                        coalesce(max(instr(body, '\"_attachments\"') > 0), 0)
                 FROM revs WHERE db = ?1 AND doc = ?2
                   AND rev NOT IN (SELECT value FROM json_each(?3))",
            )?
            .query_row(params![db, doc, keep], |r| Ok((r.get(0)?, r.get(1)?)))?;
        self.prepare_cached(
            "DELETE FROM revs WHERE db = ?1 AND doc = ?2
               AND rev NOT IN (SELECT value FROM json_each(?3))",
        )?
        .execute(params![db, doc, keep])?;
        Ok((freed, attachments))
    }

    fn forget_doc(&self, db: i64, doc: &str) -> Result<(), StoreError> {
        for table in ["docs", "event_baselines"] {
            let column = if table == "docs" { "id" } else { "doc" };
            self.prepare_cached(&format!(
                "DELETE FROM {table} WHERE db = ?1 AND {column} = ?2"
            ))?
            .execute(params![db, doc])?;
        }
        self.prepare_cached("DELETE FROM events WHERE db = ?1 AND doc = ?2")?
            .execute(params![db, doc])?;
        self.prepare_cached("DELETE FROM access_rows WHERE db = ?1 AND doc = ?2")?
            .execute(params![db, doc])?;
        // The one writer orders index steps and purges, and a step writes no rows for a
        // document that no longer exists (`index::apply_update`).
        super::index::forget_doc(self, db, doc)
    }
}
