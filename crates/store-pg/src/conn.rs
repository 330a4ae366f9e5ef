//! The writer's connection: a blocking client on the writer thread, with its prepared
//! statements, and the [`DocTx`] statements the engine-neutral document writer runs on it.
//!
//! A transaction runs in one of two modes (see `crate::writer` for when and why):
//!
//! - *locked up front*: the databases' `dbs` rows are locked before anything is read
//!   ([`DocTx::db_state`] reads the row `FOR UPDATE`) and every write is executed at once;
//! - *late-locking* ([`WriterConn::begin_late`]), for transactions that only write documents:
//!   every document written is already locked (an advisory lock), and the rows of all of them
//!   and of their databases are read in one statement ([`WriterConn::read_locked_docs`]; the
//!   `dbs` rows without a lock). Everything written waits in the connection: revisions and
//!   attachments (a later request of the transaction finds a revision an earlier one wrote
//!   there), and what depends on the database's sequence (document rows, events, the access
//!   index) under tentative sequences counted from the value read. [`WriterConn::finish_late`]
//!   then stores the revisions and attachments, one statement each, advances each database's
//!   row by what its writes took (which locks it until the commit), numbers the waiting rows
//!   from the sequence it finds there, and writes them.
//!
//! [`WriterCounts`] counts the transactions and round trips, for tests and diagnostics.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use outpost_core::Policy;
use outpost_store::docwrite::{DbState, DocRowWrite, DocTx, EventWrite, RevWrite, Writes};
use outpost_store::{NewAttachment, StoreError};
use postgres::error::SqlState;
use postgres::types::ToSql;
use postgres::{Client, Row, Statement};

use crate::error::pg;

/// The writer's connection. Statements borrow the client one at a time, so the document
/// writer's `&self` calls can run on it; every statement is prepared once per connection.
pub struct WriterConn {
    client: RefCell<Client>,
    statements: RefCell<HashMap<String, Statement>>,
    /// The schema the tables live in, which keys the advisory locks (read on first use).
    schema: RefCell<Option<String>>,
    /// The late-locking transaction's state; `None` when the transaction locks up front.
    late: RefCell<Option<Late>>,
    /// What the connection has done so far, shared with whoever watches the writer.
    counts: Arc<WriterCounts>,
    /// Whether a statement failed since the transaction began.
    failed: Cell<bool>,
}

/// How many transactions the writer began and how many round trips to PostgreSQL it made
/// (statements, preparations and command strings), for tests and diagnostics.
#[derive(Debug, Default)]
pub struct WriterCounts {
    pub transactions: AtomicU64,
    pub round_trips: AtomicU64,
}

type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

/// What a late-locking transaction has read and not written yet.
#[derive(Default)]
struct Late {
    /// Each database the transaction writes to, by name (so that [`WriterConn::finish_late`]
    /// locks their rows in name order).
    dbs: BTreeMap<String, LateDb>,
    /// Document rows under tentative sequences, in the order written (a document written twice
    /// has two entries; the last is its row).
    docs: Vec<DocRowWrite>,
    /// Where the last entry of each (database id, document) is in `docs`.
    latest: HashMap<(i64, String), usize>,
    /// The sequence of each document row read from the table, by (database id, document): the
    /// row must still carry it when it is replaced.
    read_seqs: HashMap<(i64, String), i64>,
    /// Events under tentative sequences.
    events: Vec<EventWrite>,
    /// Access-index updates under tentative sequences, in order: (database id, document,
    /// sequence, winner, deleted).
    access: Vec<(i64, String, u64, String, bool)>,
    /// The rows of the documents the transaction locked, read in one statement right after the
    /// locks ([`WriterConn::read_locked_docs`]), by (database id, document): `None` when the
    /// document has no row. Locked, they cannot change before the commit.
    rows: HashMap<(i64, String), Option<(bool, String)>>,
    /// Revisions to store, in the order written, each (database id, document, revision) once:
    /// they are inserted in one statement by [`WriterConn::finish_late`].
    revs: Vec<RevWrite>,
    /// Where each buffered revision is in `revs`.
    rev_at: HashMap<(i64, String, String), usize>,
    /// Attachments to store, inserted with the revisions (in digest order).
    attachments: Vec<NewAttachment>,
}

/// A database of a late-locking transaction: its row as read, and as the writes so far left it.
struct LateDb {
    read: DbState,
    current: DbState,
}

/// How far a late-locking transaction had got when a savepoint was taken.
pub struct LateMark {
    docs: usize,
    events: usize,
    access: usize,
    revs: usize,
    attachments: usize,
    states: Vec<(String, DbState)>,
}

/// Advisory lock keys in the order they are taken: ascending, each once, a key wanted both
/// ways exclusive; as (keys, shared flags).
fn lock_list(mut keys: Vec<(i64, bool)>) -> (Vec<i64>, Vec<bool>) {
    // Exclusive (false) before shared for equal keys, so that the first of each is kept.
    keys.sort_unstable();
    keys.dedup_by_key(|k| k.0);
    keys.into_iter().unzip()
}

/// The command that takes advisory locks (see [`WriterConn::advisory_locks`]). The keys are
/// integers, written into it as literals (nothing in them needs quoting), so that it can go in
/// one command string with the transaction's `BEGIN`. The sorted subquery is not flattened
/// (`OFFSET 0`), so the locks are taken row by row in its order.
fn lock_statement(keys: Vec<(i64, bool)>) -> String {
    let (ids, shared) = lock_list(keys);
    let ids: Vec<String> = ids.iter().map(i64::to_string).collect();
    let shared: Vec<&str> = shared.iter().map(|&s| if s { "t" } else { "f" }).collect();
    format!(
        "SELECT CASE WHEN s.shared THEN pg_advisory_xact_lock_shared(s.k)
                     ELSE pg_advisory_xact_lock(s.k) END
         FROM (SELECT k, shared FROM unnest('{{{}}}'::int8[], '{{{}}}'::bool[]) AS t (k, shared)
               ORDER BY k OFFSET 0) s",
        ids.join(","),
        shared.join(",")
    )
}

/// Stable across builds and platforms (every node must compute the same keys): FNV-1a over the
/// parts, each followed by a byte that UTF-8 text never contains.
fn lock_key(parts: &[&[u8]]) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in part.iter().chain(&[0xff]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h as i64
}

impl WriterConn {
    pub fn new(client: Client, counts: Arc<WriterCounts>) -> WriterConn {
        WriterConn {
            client: RefCell::new(client),
            statements: RefCell::default(),
            schema: RefCell::default(),
            late: RefCell::default(),
            counts,
            failed: Cell::new(false),
        }
    }

    /// A statement's result; a failure is remembered for [`WriterConn::statement_failed`].
    fn checked<T>(&self, result: Result<T, postgres::Error>) -> Result<T, StoreError> {
        result.map_err(|e| {
            self.failed.set(true);
            pg(e)
        })
    }

    /// Whether a statement failed since the transaction began (which PostgreSQL then refuses
    /// to go on with, but for a rollback to a savepoint).
    pub fn statement_failed(&self) -> bool {
        self.failed.get()
    }

    /// Counts a round trip about to be made.
    fn trip(&self) {
        self.counts.round_trips.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether the connection was lost (the writer then opens a new one).
    pub fn is_closed(&self) -> bool {
        self.client.borrow().is_closed()
    }

    fn statement(&self, sql: &str) -> Result<Statement, StoreError> {
        if let Some(s) = self.statements.borrow().get(sql) {
            return Ok(s.clone());
        }
        self.trip();
        let s = self.checked(self.client.borrow_mut().prepare(sql))?;
        self.statements
            .borrow_mut()
            .insert(sql.to_owned(), s.clone());
        Ok(s)
    }

    /// Runs commands without parameters (transaction control, savepoints).
    pub fn batch(&self, sql: &str) -> Result<(), StoreError> {
        self.trip();
        self.checked(self.client.borrow_mut().batch_execute(sql))
    }

    pub fn execute(&self, sql: &str, params: Params<'_>) -> Result<u64, StoreError> {
        let s = self.statement(sql)?;
        self.trip();
        self.checked(self.client.borrow_mut().execute(&s, params))
    }

    pub fn query(&self, sql: &str, params: Params<'_>) -> Result<Vec<Row>, StoreError> {
        let s = self.statement(sql)?;
        self.trip();
        self.checked(self.client.borrow_mut().query(&s, params))
    }

    pub fn query_opt(&self, sql: &str, params: Params<'_>) -> Result<Option<Row>, StoreError> {
        let s = self.statement(sql)?;
        self.trip();
        self.checked(self.client.borrow_mut().query_opt(&s, params))
    }

    /// The schema the tables live in: two deployments in two schemas of one database do not
    /// share lock keys.
    fn schema(&self) -> Result<String, StoreError> {
        if let Some(s) = self.schema.borrow().as_ref() {
            return Ok(s.clone());
        }
        let s: String = self
            .query_opt("SELECT coalesce(current_schema(), '')", &[])?
            .map(|r| r.get(0))
            .unwrap_or_default();
        *self.schema.borrow_mut() = Some(s.clone());
        Ok(s)
    }

    /// The advisory lock key of database `name` (held shared by late-locking writers of it,
    /// exclusively by any other transaction that touches it).
    pub fn db_key(&self, name: &str) -> Result<i64, StoreError> {
        Ok(lock_key(&[
            b"db",
            self.schema()?.as_bytes(),
            name.as_bytes(),
        ]))
    }

    /// The advisory lock key of document `doc` of database `db` (by name).
    pub fn doc_key(&self, db: &str, doc: &str) -> Result<i64, StoreError> {
        Ok(lock_key(&[
            b"doc",
            self.schema()?.as_bytes(),
            db.as_bytes(),
            doc.as_bytes(),
        ]))
    }

    /// The advisory lock key that keeps attachment sweeps and late-locking writers apart.
    pub fn sweep_key(&self) -> Result<i64, StoreError> {
        Ok(lock_key(&[b"sweep", self.schema()?.as_bytes()]))
    }

    /// Takes advisory locks, transaction-scoped, in one statement and in ascending key order:
    /// `(key, shared)`; a key wanted both ways is taken exclusively.
    pub fn advisory_locks(&self, keys: Vec<(i64, bool)>) -> Result<(), StoreError> {
        if keys.is_empty() {
            return Ok(());
        }
        self.batch(&lock_statement(keys))
    }

    /// Begins a transaction and takes its advisory locks as [`WriterConn::advisory_locks`]
    /// does, in one round trip.
    pub fn begin_locked(&self, keys: Vec<(i64, bool)>) -> Result<(), StoreError> {
        self.counts.transactions.fetch_add(1, Ordering::Relaxed);
        self.failed.set(false);
        if keys.is_empty() {
            return self.batch("BEGIN");
        }
        self.batch(&format!("BEGIN; {}", lock_statement(keys)))
    }

    /// Reads, in one statement, the rows of the documents a late-locking transaction is about
    /// to write (`(database name, document)`, all of them locked) and of their databases (as
    /// [`DocTx::db_state`] reads them, without a lock): [`DocTx::db_state`] and
    /// [`DocTx::doc_rows`] answer from them.
    pub fn read_locked_docs(&self, docs: &[(&str, &str)]) -> Result<(), StoreError> {
        if docs.is_empty() || self.late.borrow().is_none() {
            return Ok(());
        }
        let mut names: Vec<&str> = docs.iter().map(|(db, _)| *db).collect();
        names.sort_unstable();
        names.dedup();
        let ids: Vec<&str> = docs.iter().map(|(_, id)| *id).collect();
        // One row per database with each of its documents among `ids` that has a row (a
        // document of one database asked for in another is dropped below), or with none. Each
        // database's documents are looked up in its primary key, or filtered by a hashed
        // `ANY` while the planner believes the table nearly empty: never a scan per document.
        let rows = self.query(
            "SELECT s.*, d.id, d.deleted, d.tree, d.seq
             FROM (SELECT id, update_seq, revs_limit, doc_count, doc_del_count, active_size,
                          policy, lww_field,
                          EXISTS (SELECT 1 FROM access_dbs a WHERE a.db = dbs.id) AS access,
                          purge_seq, name
                   FROM dbs WHERE name = ANY($1)) s
             LEFT JOIN docs d ON d.db = s.id AND d.id = ANY($2)",
            &[&names, &ids],
        )?;
        let wanted: std::collections::HashSet<(&str, &str)> = docs.iter().copied().collect();
        let mut late = self.late.borrow_mut();
        let Some(late) = late.as_mut() else {
            return Ok(());
        };
        let mut db_ids: HashMap<String, i64> = HashMap::new();
        for r in rows {
            let name: String = r.get(10);
            let db: i64 = r.get(0);
            if !db_ids.contains_key(&name) {
                db_ids.insert(name.clone(), db);
                late.dbs.entry(name.clone()).or_insert_with(|| {
                    let state = db_state_of(&r);
                    LateDb {
                        read: state.clone(),
                        current: state,
                    }
                });
            }
            let Some(id) = r.get::<_, Option<String>>(11) else {
                continue;
            };
            if wanted.contains(&(name.as_str(), id.as_str())) {
                late.read_seqs.insert((db, id.clone()), r.get(14));
                late.rows.insert((db, id), Some((r.get(12), r.get(13))));
            }
        }
        // The documents of a database read that have no row.
        for (name, id) in docs {
            if let Some(&db) = db_ids.get(*name) {
                late.rows.entry((db, (*id).to_owned())).or_insert(None);
            }
        }
        Ok(())
    }

    /// Starts the transaction's document writes late-locking (`true`) or locked up front.
    pub fn begin_late(&self, late: bool) {
        *self.late.borrow_mut() = late.then(Late::default);
    }

    /// Where a late-locking transaction is, for [`WriterConn::rewind_late`] if the job about to
    /// run is refused.
    pub fn mark_late(&self) -> Option<LateMark> {
        self.late.borrow().as_ref().map(|l| LateMark {
            docs: l.docs.len(),
            events: l.events.len(),
            access: l.access.len(),
            revs: l.revs.len(),
            attachments: l.attachments.len(),
            states: l
                .dbs
                .iter()
                .map(|(name, d)| (name.clone(), d.current.clone()))
                .collect(),
        })
    }

    /// Forgets what the transaction buffered since `mark` (the job that followed it was
    /// refused).
    pub fn rewind_late(&self, mark: Option<LateMark>) {
        let mut late = self.late.borrow_mut();
        let (Some(mark), Some(late)) = (mark, late.as_mut()) else {
            return;
        };
        late.docs.truncate(mark.docs);
        late.events.truncate(mark.events);
        late.access.truncate(mark.access);
        late.revs.truncate(mark.revs);
        late.attachments.truncate(mark.attachments);
        late.rev_at = late
            .revs
            .iter()
            .enumerate()
            .map(|(i, r)| ((r.db, r.doc.clone(), r.rev.clone()), i))
            .collect();
        late.latest = late
            .docs
            .iter()
            .enumerate()
            .map(|(i, d)| ((d.db, d.id.clone()), i))
            .collect();
        // A database first read after the mark goes back to its row as read.
        for (name, d) in late.dbs.iter_mut() {
            d.current = mark
                .states
                .iter()
                .find(|(n, _)| n == name)
                .map_or_else(|| d.read.clone(), |(_, state)| state.clone());
        }
    }

    /// Ends a late-locking transaction's writes (nothing when it locks up front): stores the
    /// attachments and revisions its jobs wrote (one statement each); advances each of its
    /// databases' rows, in name order, by the sequences and counts its writes took (which locks
    /// the row until the commit); numbers its document rows, events and access rows from the
    /// sequence found there; writes them. Answers each database's new sequence.
    ///
    /// A database deleted, or its revision limit or conflict policy changed, since its row was
    /// read cannot happen between writers that take their locks as `crate::writer` says; if it
    /// did anyway (something else changed the row), or a document row changed while locked,
    /// the transaction fails as unavailable (503, retried by the client) rather than write
    /// what was computed from an outdated row.
    pub fn finish_late(&self) -> Result<BTreeMap<String, u64>, StoreError> {
        let Some(mut late) = self.late.borrow_mut().take() else {
            return Ok(BTreeMap::new());
        };
        // Revisions and attachments first, before the database's row is locked (the access
        // index, written below, reads the revisions).
        self.put_attachments(&late.attachments)?;
        self.put_revs(&late.revs)?;
        let mut bases: HashMap<i64, (u64, u64)> = HashMap::new();
        let mut seqs = BTreeMap::new();
        for (name, d) in &late.dbs {
            let (read, now) = (&d.read, &d.current);
            let taken = now.seq - read.seq;
            let row = self.query_opt(
                "UPDATE dbs SET update_seq = update_seq + $2, doc_count = doc_count + $3,
                     doc_del_count = doc_del_count + $4, active_size = active_size + $5
                 WHERE id = $1
                 RETURNING update_seq, revs_limit, policy, lww_field",
                &[
                    &read.id,
                    &(taken as i64),
                    &(now.doc_count - read.doc_count),
                    &(now.doc_del_count - read.doc_del_count),
                    &(now.active_size - read.active_size),
                ],
            )?;
            let Some(row) = row else {
                return Err(changed(name, "was deleted"));
            };
            let end = row.get::<_, i64>(0) as u64;
            let revs_limit = row.get::<_, i64>(1).max(1) as usize;
            let policy =
                Policy::from_parts(&row.get::<_, String>(2), row.get(3)).unwrap_or_default();
            if revs_limit != read.revs_limit || policy != read.policy {
                return Err(changed(name, "had its settings changed"));
            }
            bases.insert(read.id, (read.seq, end - taken));
            seqs.insert(name.clone(), end);
        }
        let renumber = |db: i64, seq: u64| -> Result<u64, StoreError> {
            let (read, base) = bases.get(&db).ok_or_else(|| {
                StoreError::Corrupt(format!(
                    "a late-locking write to database {db} it did not read"
                ))
            })?;
            Ok(base + (seq - read))
        };
        // One row per document: the last written, inserted if the first found none.
        let mut rows: Vec<DocRowWrite> = Vec::with_capacity(late.latest.len());
        let mut at: HashMap<(i64, String), usize> = HashMap::with_capacity(late.latest.len());
        for mut d in late.docs.drain(..) {
            d.seq = renumber(d.db, d.seq)?;
            match at.get(&(d.db, d.id.clone())) {
                Some(&i) => {
                    d.new = rows[i].new;
                    rows[i] = d;
                }
                None => {
                    at.insert((d.db, d.id.clone()), rows.len());
                    rows.push(d);
                }
            }
        }
        let (new, known): (Vec<&DocRowWrite>, Vec<&DocRowWrite>) = rows.iter().partition(|d| d.new);
        for e in &mut late.events {
            e.seq = renumber(e.db, e.seq)?;
        }
        // A document that had no row when read (under its lock) and has one now was created by
        // a writer that does not take the lock: see `execute_docs`.
        self.insert_docs_and_events(&new, &late.events)?;
        let expected: Vec<i64> = known
            .iter()
            .map(|d| {
                late.read_seqs
                    .get(&(d.db, d.id.clone()))
                    .copied()
                    .unwrap_or(-1)
            })
            .collect();
        self.replace_read_docs(&known, &expected)?;
        for (db, id, seq, winner, deleted) in &late.access {
            crate::access::index_doc(self, *db, id, renumber(*db, *seq)?, winner, *deleted)?;
        }
        Ok(seqs)
    }

    /// Inserts new documents' rows and appends events in one statement: the round trips made
    /// while the database's row is locked are what every other node's writer of it waits for.
    fn insert_docs_and_events(
        &self,
        docs: &[&DocRowWrite],
        events: &[EventWrite],
    ) -> Result<(), StoreError> {
        if docs.is_empty() || events.is_empty() {
            self.put_docs(docs, true)?;
            return self.put_events(events);
        }
        let d = DocColumns::of(docs);
        let e = EventColumns::of(events);
        self.execute_docs(
            "WITH new_docs AS (
                 INSERT INTO docs (db, id, seq, deleted, conflicted, winner, tree)
                 SELECT * FROM unnest($1::int8[], $2::text[], $3::int8[], $4::bool[], $5::bool[],
                                      $6::text[], $7::text[])
             )
             INSERT INTO events (db, seq, pos, kind, doc, rev, parent, origin, at, detail, deleted)
             SELECT * FROM unnest($8::int8[], $9::int8[], $10::int8[], $11::text[], $12::text[],
                                  $13::text[], $14::text[], $15::text[], $16::int8[], $17::text[],
                                  $18::bool[])",
            &[
                &d.dbs,
                &d.ids,
                &d.seqs,
                &d.deleted,
                &d.conflicted,
                &d.winners,
                &d.trees,
                &e.dbs,
                &e.seqs,
                &e.pos,
                &e.kinds,
                &e.docs,
                &e.revs,
                &e.parents,
                &e.origins,
                &e.at,
                &e.details,
                &e.deleted,
            ],
        )?;
        Ok(())
    }

    /// Replaces document rows, each only if it still carries the sequence it was read with.
    fn replace_read_docs(&self, rows: &[&DocRowWrite], expected: &[i64]) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        let n = if let [d] = rows {
            self.execute(
                "UPDATE docs SET seq = $3, deleted = $4, conflicted = $5, winner = $6, tree = $7
                 WHERE db = $1 AND id = $2 AND seq = $8",
                &[
                    &d.db,
                    &d.id,
                    &(d.seq as i64),
                    &d.deleted,
                    &d.conflicted,
                    &d.winner,
                    &d.tree,
                    &expected[0],
                ],
            )?
        } else {
            let d = DocColumns::of(rows);
            self.execute(
                "UPDATE docs SET seq = n.seq, deleted = n.deleted, conflicted = n.conflicted,
                     winner = n.winner, tree = n.tree
                 FROM unnest($1::int8[], $2::text[], $3::int8[], $4::bool[], $5::bool[],
                             $6::text[], $7::text[], $8::int8[])
                      AS n (db, id, seq, deleted, conflicted, winner, tree, read_seq)
                 WHERE docs.db = n.db AND docs.id = n.id AND docs.seq = n.read_seq",
                &[
                    &d.dbs,
                    &d.ids,
                    &d.seqs,
                    &d.deleted,
                    &d.conflicted,
                    &d.winners,
                    &d.trees,
                    &expected,
                ],
            )?
        };
        if n != rows.len() as u64 {
            return Err(StoreError::Unavailable(
                "a document changed while a write to it was applied".into(),
            ));
        }
        Ok(())
    }
}

/// A late-locking transaction found its database's row changed (see
/// [`WriterConn::finish_late`]).
fn changed(db: &str, what: &str) -> StoreError {
    StoreError::Unavailable(format!(
        "database {db} {what} while a write to it was applied"
    ))
}

/// [`DocTx::db_state`]'s statement, with `$lock` after it; [`db_state_of`] reads its row.
macro_rules! db_state_sql {
    ($lock:literal) => {
        concat!(
            "SELECT id, update_seq, revs_limit, doc_count, doc_del_count, active_size, policy,
                    lww_field, EXISTS (SELECT 1 FROM access_dbs a WHERE a.db = dbs.id), purge_seq
             FROM dbs WHERE name = $1",
            $lock
        )
    };
}

/// A database's state from a row whose first columns are those [`DocTx::db_state`] reads.
fn db_state_of(r: &Row) -> DbState {
    DbState {
        id: r.get(0),
        seq: r.get::<_, i64>(1) as u64,
        revs_limit: r.get::<_, i64>(2).max(1) as usize,
        doc_count: r.get(3),
        doc_del_count: r.get(4),
        active_size: r.get(5),
        policy: Policy::from_parts(&r.get::<_, String>(6), r.get(7)).unwrap_or_default(),
        access: r.get(8),
        purge_seq: r.get::<_, i64>(9).max(0) as u64,
    }
}

impl DocTx for WriterConn {
    fn db_state(&self, name: &str) -> Result<Option<DbState>, StoreError> {
        if let Some(late) = self.late.borrow().as_ref()
            && let Some(d) = late.dbs.get(name)
        {
            // A later request of the transaction continues from the earlier ones' sequence.
            return Ok(Some(d.current.clone()));
        }
        let late = self.late.borrow().is_some();
        // Locked up front, the row lock, held until the transaction ends, orders the sequences
        // of every node's writes to this database by commit: a writer reads `update_seq` only
        // once the writer before it committed. Late-locking, the row is only read here: its
        // lock is taken when the sequences are handed out (see `finish_late` and `writer`).
        let row = self.query_opt(
            if late {
                db_state_sql!("")
            } else {
                db_state_sql!(" FOR UPDATE OF dbs")
            },
            &[&name],
        )?;
        let state = row.as_ref().map(db_state_of);
        if let (Some(late), Some(state)) = (self.late.borrow_mut().as_mut(), &state) {
            late.dbs.insert(
                name.to_owned(),
                LateDb {
                    read: state.clone(),
                    current: state.clone(),
                },
            );
        }
        Ok(state)
    }

    fn save_state(&self, state: &DbState) -> Result<(), StoreError> {
        if let Some(late) = self.late.borrow_mut().as_mut() {
            return match late.dbs.values_mut().find(|d| d.read.id == state.id) {
                Some(d) if state.purge_seq == d.read.purge_seq => {
                    d.current = state.clone();
                    Ok(())
                }
                _ => Err(StoreError::Corrupt(
                    "a late-locking write saved a state it did not read".into(),
                )),
            };
        }
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
        let mut found = HashMap::with_capacity(ids.len());
        let mut unread: Vec<&str> = Vec::new();
        let late = self.late.borrow().is_some();
        if let Some(late) = self.late.borrow().as_ref() {
            for id in ids {
                let key = (db, (*id).to_owned());
                if let Some(&i) = late.latest.get(&key) {
                    // A document an earlier request of the transaction wrote: its row is still
                    // here.
                    let d = &late.docs[i];
                    found.insert(d.id.clone(), (d.deleted, d.tree.clone()));
                } else if let Some(row) = late.rows.get(&key) {
                    // Read with the others right after the locks.
                    if let Some(row) = row {
                        found.insert(key.1, row.clone());
                    }
                } else {
                    // Not among the documents read then (its database did not exist yet).
                    unread.push(id);
                }
            }
        } else {
            unread.extend_from_slice(ids);
        }
        let rows = match unread.as_slice() {
            [] => Vec::new(),
            [id] => self.query(
                "SELECT id, deleted, tree, seq FROM docs WHERE db = $1 AND id = $2",
                &[&db, id],
            )?,
            _ => self.query(
                "SELECT id, deleted, tree, seq FROM docs WHERE db = $1 AND id = ANY($2)",
                &[&db, &unread],
            )?,
        };
        let mut late_state = self.late.borrow_mut();
        for r in rows {
            let id: String = r.get(0);
            if late && let Some(l) = late_state.as_mut() {
                l.read_seqs.insert((db, id.clone()), r.get(3));
            }
            found.insert(id, (r.get(1), r.get(2)));
        }
        Ok(found)
    }

    fn rev_body(&self, db: i64, doc: &str, rev: &str) -> Result<Option<String>, StoreError> {
        let stored = self
            .query_opt(
                "SELECT body FROM revs WHERE db = $1 AND doc = $2 AND rev = $3",
                &[&db, &doc, &rev],
            )?
            .map(|r| r.get(0));
        if stored.is_some() {
            return Ok(stored);
        }
        // Late-locking, one an earlier request of the transaction wrote waits in the connection
        // (a stored one wins: it is what the insert keeps).
        let late = self.late.borrow();
        Ok(late.as_ref().and_then(|l| {
            l.rev_at
                .get(&(db, doc.to_owned(), rev.to_owned()))
                .map(|&i| l.revs[i].body.clone())
        }))
    }

    /// One statement per table: a single row as plain parameters, several with each column
    /// passed as an array and turned back into rows by `unnest`, so a chunk of a thousand
    /// documents costs a few round trips instead of thousands. (`unnest` measured faster than a
    /// binary `COPY` into a temporary table and an `INSERT … SELECT` from it, which takes two
    /// statements; for one row, plain parameters cost the server less than `unnest`.)
    ///
    /// Late-locking, everything waits in the connection: the document rows and events for
    /// their sequences, the revisions and attachments to be written with those of the other
    /// requests of the transaction ([`WriterConn::finish_late`]).
    fn write(&self, w: &Writes) -> Result<(), StoreError> {
        if let Some(late) = self.late.borrow_mut().as_mut() {
            late.attachments.extend(w.attachments.iter().cloned());
            for r in &w.revs {
                let key = (r.db, r.doc.clone(), r.rev.clone());
                if !late.rev_at.contains_key(&key) {
                    late.rev_at.insert(key, late.revs.len());
                    late.revs.push(RevWrite {
                        db: r.db,
                        doc: r.doc.clone(),
                        rev: r.rev.clone(),
                        deleted: r.deleted,
                        body: r.body.clone(),
                    });
                }
            }
            for d in &w.docs {
                late.latest.insert((d.db, d.id.clone()), late.docs.len());
                late.docs.push(d.clone());
            }
            late.events.extend(w.events.iter().cloned());
            return Ok(());
        }
        self.put_attachments(&w.attachments)?;
        self.put_revs(&w.revs)?;
        // New documents are inserted and known ones updated, each with a plain statement: the
        // rows were read under a lock that every writer of the document holds (the database's
        // row, or the document's advisory lock), so which ones exist cannot change before the
        // commit, and an upsert's speculative insertion would only cost more.
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
        if let Some(late) = self.late.borrow_mut().as_mut() {
            late.access
                .push((db, id.to_owned(), seq, winner.to_owned(), deleted));
            return Ok(());
        }
        crate::access::index_doc(self, db, id, seq, winner, deleted)
    }

    fn drop_bodies(&self, db: i64, doc: &str, keep: &[String]) -> Result<(i64, bool), StoreError> {
        self.not_late("dropping bodies")?;
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
        self.not_late("forgetting a document")?;
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
    /// Purges run in transactions that lock up front: their removals cannot wait for a
    /// sequence.
    fn not_late(&self, what: &str) -> Result<(), StoreError> {
        if self.late.borrow().is_some() {
            return Err(StoreError::Corrupt(format!(
                "{what} in a late-locking transaction"
            )));
        }
        Ok(())
    }

    fn put_attachments(&self, atts: &[NewAttachment]) -> Result<(), StoreError> {
        if atts.is_empty() {
            return Ok(());
        }
        // In digest order, so that two nodes storing the same new attachments lock their rows
        // in the same order and cannot deadlock.
        let mut atts: Vec<&NewAttachment> = atts.iter().collect();
        atts.sort_by(|a, b| a.digest.cmp(&b.digest));
        atts.dedup_by(|a, b| a.digest == b.digest);
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
            self.execute_docs(
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
        let d = DocColumns::of(rows);
        self.execute_docs(
            sql,
            &[
                &d.dbs,
                &d.ids,
                &d.seqs,
                &d.deleted,
                &d.conflicted,
                &d.winners,
                &d.trees,
            ],
        )?;
        Ok(())
    }

    /// Runs a statement on `docs`: a document inserted when it already has a row means that a
    /// writer that does not take the document's lock (a node of an older version, or a
    /// statement by hand) created it meanwhile; the transaction then fails as unavailable, to
    /// be retried, rather than as a defect.
    fn execute_docs(&self, sql: &str, params: Params<'_>) -> Result<u64, StoreError> {
        let s = self.statement(sql)?;
        self.trip();
        let result = self.client.borrow_mut().execute(&s, params);
        result.map_err(|e| {
            self.failed.set(true);
            if e.code() == Some(&SqlState::UNIQUE_VIOLATION) {
                StoreError::Unavailable(format!(
                    "a document was created while a write to it was applied: {e}"
                ))
            } else {
                pg(e)
            }
        })
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
            events => {
                let e = EventColumns::of(events);
                self.execute(
                    "INSERT INTO events (db, seq, pos, kind, doc, rev, parent, origin, at, detail,
                                         deleted)
                     SELECT * FROM unnest($1::int8[], $2::int8[], $3::int8[], $4::text[],
                                          $5::text[], $6::text[], $7::text[], $8::text[],
                                          $9::int8[], $10::text[], $11::bool[])",
                    &[
                        &e.dbs, &e.seqs, &e.pos, &e.kinds, &e.docs, &e.revs, &e.parents,
                        &e.origins, &e.at, &e.details, &e.deleted,
                    ],
                )?;
            }
        }
        Ok(())
    }
}

/// Document rows as one array per column, for the multi-row statements (`unnest`).
struct DocColumns<'a> {
    dbs: Vec<i64>,
    ids: Vec<&'a str>,
    seqs: Vec<i64>,
    deleted: Vec<bool>,
    conflicted: Vec<bool>,
    winners: Vec<&'a str>,
    trees: Vec<&'a str>,
}

impl<'a> DocColumns<'a> {
    fn of(rows: &[&'a DocRowWrite]) -> Self {
        DocColumns {
            dbs: rows.iter().map(|d| d.db).collect(),
            ids: rows.iter().map(|d| d.id.as_str()).collect(),
            seqs: rows.iter().map(|d| d.seq as i64).collect(),
            deleted: rows.iter().map(|d| d.deleted).collect(),
            conflicted: rows.iter().map(|d| d.conflicted).collect(),
            winners: rows.iter().map(|d| d.winner.as_str()).collect(),
            trees: rows.iter().map(|d| d.tree.as_str()).collect(),
        }
    }
}

/// Events as one array per column, for the multi-row statements (`unnest`).
struct EventColumns<'a> {
    dbs: Vec<i64>,
    seqs: Vec<i64>,
    pos: Vec<i64>,
    kinds: Vec<&'a str>,
    docs: Vec<&'a str>,
    revs: Vec<&'a str>,
    parents: Vec<Option<&'a str>>,
    origins: Vec<&'a str>,
    at: Vec<i64>,
    details: Vec<Option<&'a str>>,
    deleted: Vec<bool>,
}

impl<'a> EventColumns<'a> {
    fn of(events: &'a [EventWrite]) -> Self {
        EventColumns {
            dbs: events.iter().map(|e| e.db).collect(),
            seqs: events.iter().map(|e| e.seq as i64).collect(),
            pos: events.iter().map(|e| e.pos).collect(),
            kinds: events.iter().map(|e| e.kind).collect(),
            docs: events.iter().map(|e| e.doc.as_str()).collect(),
            revs: events.iter().map(|e| e.rev.as_str()).collect(),
            parents: events.iter().map(|e| e.parent.as_deref()).collect(),
            origins: events.iter().map(|e| e.origin.as_str()).collect(),
            at: events.iter().map(|e| e.at).collect(),
            details: events.iter().map(|e| e.detail.as_deref()).collect(),
            deleted: events.iter().map(|e| e.deleted).collect(),
        }
    }
}
