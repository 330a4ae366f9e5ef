//! The writer's locks across nodes: writers of one database on different nodes read and write
//! their documents at the same time and wait for the database's row only to hand out sequences
//! and commit; writers of the same documents still take turns; a change to the database on
//! another node waits for the writes in flight; a row changed by something that takes none of
//! these locks fails the write for a retry instead of being overwritten.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use outpost_core::Rev;
use outpost_store::conformance::documents::replicated;
use outpost_store::conformance::edit;
use outpost_store::{ChangesQuery, DocError, Store, StoreError};
use outpost_store_pg::{PgStore, quote_ident};
use serde_json::json;

use crate::support::{Schema, postgres_url};

/// Long enough that only a defect runs into it.
const GUARD: Duration = Duration::from_secs(30);

type Command = Box<dyn FnOnce(&mut postgres::Client) + Send>;

/// A connection of its own on the test's schema, on a thread of its own (the blocking client
/// cannot run on the test's runtime), to hold locks and look at what waits for them.
struct Session {
    commands: Option<mpsc::Sender<Command>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Session {
    fn new(schema: &Schema) -> Session {
        let (url, name) = (schema.url.clone(), schema.name.clone());
        let (commands, received) = mpsc::channel::<Command>();
        let thread = std::thread::spawn(move || {
            let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
            c.batch_execute(&format!("SET search_path = {}", quote_ident(&name)))
                .unwrap();
            for command in received {
                command(&mut c);
            }
        });
        Session {
            commands: Some(commands),
            thread: Some(thread),
        }
    }

    fn run<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut postgres::Client) -> R + Send + 'static,
    ) -> R {
        let (tx, rx) = mpsc::channel();
        self.commands
            .as_ref()
            .unwrap()
            .send(Box::new(move |c| {
                let _ = tx.send(f(c));
            }))
            .unwrap();
        tokio::task::block_in_place(|| rx.recv().unwrap())
    }

    fn batch(&self, sql: &str) {
        let sql = sql.to_owned();
        self.run(move |c| c.batch_execute(&sql).unwrap());
    }

    /// Begins a transaction that locks database `db`'s row; answers the session's process id.
    fn lock_db_row(&self, db: &str) -> i32 {
        let db = db.to_owned();
        self.run(move |c| {
            c.batch_execute("BEGIN").unwrap();
            c.query("SELECT id FROM dbs WHERE name = $1 FOR UPDATE", &[&db])
                .unwrap();
            c.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0)
        })
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.commands.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The processes waiting, directly or behind another waiter, for a lock that `holder` holds, and
/// what each one runs.
const WAITING_BEHIND: &str = "WITH RECURSIVE blocked (pid) AS (
        SELECT pid FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))
        UNION
        SELECT a.pid FROM pg_stat_activity a, blocked b WHERE b.pid = ANY(pg_blocking_pids(a.pid))
    )
    SELECT a.pid, a.query FROM pg_stat_activity a JOIN blocked USING (pid)";

/// The statement with which a late-locking writer takes its database's row.
const HANDING_OUT: &str = "UPDATE dbs SET update_seq = update_seq +";

/// Waits until `n` processes wait behind `holder` in the statement that hands out sequences;
/// answers their process ids. Fails, with what they wait in instead, after [`GUARD`].
async fn writers_waiting_to_commit(watcher: &Session, holder: i32, n: usize) -> Vec<i32> {
    let start = Instant::now();
    loop {
        let waiting: Vec<(i32, String)> = watcher.run(move |c| {
            c.query(WAITING_BEHIND, &[&holder])
                .unwrap()
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect()
        });
        let committing: Vec<i32> = waiting
            .iter()
            .filter(|(_, q)| q.trim_start().starts_with(HANDING_OUT))
            .map(|(pid, _)| *pid)
            .collect();
        if committing.len() == n {
            return committing;
        }
        assert!(
            start.elapsed() < GUARD,
            "expected {n} writers waiting only to hand out sequences, found: {waiting:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until a process waits for an advisory lock that `holder` holds.
async fn waiting_for_advisory_lock_of(watcher: &Session, holder: i32) {
    let start = Instant::now();
    loop {
        let n: i64 = watcher.run(move |c| {
            c.query_one(
                "SELECT count(*) FROM pg_locks
                 WHERE locktype = 'advisory' AND NOT granted AND $1 = ANY(pg_blocking_pids(pid))",
                &[&holder],
            )
            .unwrap()
            .get(0)
        });
        if n > 0 {
            return;
        }
        assert!(
            start.elapsed() < GUARD,
            "nothing waits for the writer's database lock"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn nodes(schema: &Schema, n: usize) -> Vec<Arc<PgStore>> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(Arc::new(schema.open().await));
    }
    out
}

async fn winner(store: &PgStore, id: &str) -> Rev {
    store
        .doc("db", id)
        .await
        .unwrap()
        .unwrap()
        .tree
        .winner()
        .unwrap()
        .rev
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writers_of_one_database_on_two_nodes_wait_for_its_row_only_to_commit() {
    let Some(url) = postgres_url() else { return };
    let schema = Schema::new(&url);
    let n = nodes(&schema, 2).await;
    n[0].create_db("db").await.unwrap();
    let holder = Session::new(&schema);
    let watcher = Session::new(&schema);
    let pid = holder.lock_db_row("db");
    let writes: Vec<_> = n
        .iter()
        .enumerate()
        .map(|(i, node)| {
            let node = node.clone();
            tokio::spawn(async move {
                node.write_docs(
                    "db",
                    vec![edit(&format!("doc{i}"), None, json!({ "i": i }))],
                )
                .await
            })
        })
        .collect();
    // Both nodes' transactions have read and written their documents while the row is held by
    // someone else: they wait only in the statement that hands out their sequences.
    writers_waiting_to_commit(&watcher, pid, 2).await;
    assert!(writes.iter().all(|w| !w.is_finished()));
    holder.batch("COMMIT");
    for w in writes {
        assert!(w.await.unwrap().unwrap()[0].is_ok());
    }
    let changes = n[1]
        .changes(
            "db",
            &ChangesQuery {
                limit: 10,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let seqs: Vec<u64> = changes.iter().map(|c| c.seq).collect();
    assert_eq!(seqs, [1, 2]);
    let info = n[0].db_info("db").await.unwrap();
    assert_eq!((info.doc_count, info.update_seq), (2, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_database_changed_on_another_node_waits_for_the_writes_in_flight() {
    let Some(url) = postgres_url() else { return };
    let schema = Schema::new(&url);
    let n = nodes(&schema, 2).await;
    let (a, b) = (n[0].clone(), n[1].clone());
    a.create_db("db").await.unwrap();
    let holder = Session::new(&schema);
    let watcher = Session::new(&schema);

    // A revision limit set on node A while node B's write is between its documents and its
    // commit: it waits for the write, and applies from the sequence after it.
    let pid = holder.lock_db_row("db");
    let write = {
        let b = b.clone();
        tokio::spawn(async move { b.write_docs("db", vec![edit("x", None, json!({}))]).await })
    };
    let writer = writers_waiting_to_commit(&watcher, pid, 1).await[0];
    let limit = {
        let a = a.clone();
        tokio::spawn(async move { a.set_revs_limit("db", 3).await })
    };
    waiting_for_advisory_lock_of(&watcher, writer).await;
    holder.batch("COMMIT");
    assert!(write.await.unwrap().unwrap()[0].is_ok());
    limit.await.unwrap().unwrap();
    let recorded: Vec<i64> = watcher.run(|c| {
        c.query("SELECT seq FROM settings_events ORDER BY seq", &[])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    });
    assert_eq!(recorded, [1], "the setting applies from after the write");

    // The database deleted on node A meanwhile: the write in flight commits first.
    let pid = holder.lock_db_row("db");
    let write = {
        let b = b.clone();
        tokio::spawn(async move { b.write_docs("db", vec![edit("y", None, json!({}))]).await })
    };
    let writer = writers_waiting_to_commit(&watcher, pid, 1).await[0];
    let delete = {
        let a = a.clone();
        tokio::spawn(async move { a.delete_db("db").await })
    };
    waiting_for_advisory_lock_of(&watcher, writer).await;
    holder.batch("COMMIT");
    assert!(write.await.unwrap().unwrap()[0].is_ok());
    delete.await.unwrap().unwrap();
    assert!(matches!(b.db_info("db").await, Err(StoreError::NoDb)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_row_changed_without_the_writers_locks_fails_the_write_for_a_retry() {
    let Some(url) = postgres_url() else { return };
    let schema = Schema::new(&url);
    let n = nodes(&schema, 1).await;
    let node = n[0].clone();
    node.create_db("db").await.unwrap();
    let first = node
        .write_docs("db", vec![edit("x", None, json!({}))])
        .await
        .unwrap()[0]
        .clone()
        .unwrap();
    let holder = Session::new(&schema);
    let watcher = Session::new(&schema);
    // Each: a change made by hand (as a node that takes none of the writer's locks would) to
    // the row a write in flight read, and the write that read it.
    let cases = [
        (
            "UPDATE dbs SET revs_limit = 7 WHERE name = 'db'",
            edit("x", Some(&first), json!({"v": 1})),
        ),
        (
            "UPDATE docs SET seq = seq + 1000 WHERE id = 'x'",
            edit("x", Some(&first), json!({"v": 2})),
        ),
        (
            "INSERT INTO docs (db, id, seq, deleted, conflicted, winner, tree)
             SELECT db, 'fresh', seq + 2000, deleted, conflicted, winner, tree
             FROM docs WHERE id = 'x'",
            edit("fresh", None, json!({"v": 3})),
        ),
    ];
    for (change, update) in cases {
        let pid = holder.lock_db_row("db");
        let write = {
            let node = node.clone();
            tokio::spawn(async move { node.write_docs("db", vec![update]).await })
        };
        writers_waiting_to_commit(&watcher, pid, 1).await;
        holder.batch(change);
        holder.batch("COMMIT");
        match write.await.unwrap() {
            Err(StoreError::Unavailable(_)) => {}
            other => panic!("{change}: {other:?}"),
        }
        assert_eq!(winner(&node, "x").await, first, "{change}");
    }
    let info = node.db_info("db").await.unwrap();
    assert_eq!(
        info.update_seq, 1,
        "nothing of the failed writes was committed"
    );
    // Retried, it succeeds.
    let out = node
        .write_docs("db", vec![edit("x", Some(&first), json!({"v": 4}))])
        .await
        .unwrap();
    assert!(out[0].is_ok());
}

/// Three nodes editing the same documents, replicating branches into one of them and creating
/// the same new ids at once, while a fourth pages the feed: every accepted revision is in its
/// document's tree, edits never fork a document, each new id is created once, and the feed
/// hands out every sequence once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodes_writing_the_same_documents_lose_nothing() {
    let Some(url) = postgres_url() else { return };
    let schema = Schema::new(&url);
    let n = nodes(&schema, 4).await;
    n[0].create_db("db").await.unwrap();
    const SHARED: usize = 4;
    const WORKERS_PER_NODE: usize = 3;
    const ROUNDS: usize = 25;
    let mut seed = Vec::new();
    for d in 0..SHARED {
        seed.push(edit(&format!("d{d}"), None, json!({})));
    }
    seed.push(edit("r", None, json!({})));
    n[0].write_docs("db", seed).await.unwrap();
    let r1 = winner(&n[0], "r").await;

    let mut workers = Vec::new();
    for (ni, node) in n[..3].iter().enumerate() {
        for w in 0..WORKERS_PER_NODE {
            let node = node.clone();
            let r1 = r1.clone();
            workers.push(tokio::spawn(async move {
                let mut edits: Vec<(String, Rev)> = Vec::new();
                let mut branches: Vec<Rev> = Vec::new();
                let mut created: Vec<String> = Vec::new();
                for k in 0..ROUNDS {
                    let id = format!("d{}", (k + w + ni) % SHARED);
                    let base = winner(&node, &id).await;
                    let body = json!({ "node": ni, "worker": w, "round": k });
                    match node
                        .write_docs("db", vec![edit(&id, Some(&base), body)])
                        .await
                        .unwrap()
                        .remove(0)
                    {
                        Ok(rev) => edits.push((id, rev)),
                        Err(DocError::Conflict) => {}
                        Err(e) => panic!("{id}: {e:?}"),
                    }
                    let branch = Rev::new(2, format!("{ni}{w}{k:03}"));
                    let out = node
                        .write_docs(
                            "db",
                            vec![replicated("r", vec![branch.clone(), r1.clone()], json!({}))],
                        )
                        .await
                        .unwrap();
                    assert!(out[0].is_ok(), "{:?}", out[0]);
                    branches.push(branch);
                    let fresh = format!("new{k:03}");
                    match node
                        .write_docs("db", vec![edit(&fresh, None, json!({ "node": ni }))])
                        .await
                        .unwrap()
                        .remove(0)
                    {
                        Ok(_) => created.push(fresh),
                        Err(DocError::Conflict) => {}
                        Err(e) => panic!("{fresh}: {e:?}"),
                    }
                }
                (edits, branches, created)
            }));
        }
    }
    let reader = {
        let node = n[3].clone();
        tokio::spawn(async move {
            let mut since = 0;
            let mut seen: Vec<(u64, String)> = Vec::new();
            let start = Instant::now();
            loop {
                let page = node
                    .changes(
                        "db",
                        &ChangesQuery {
                            since,
                            limit: 5,
                            ..Default::default()
                        },
                    )
                    .await
                    .unwrap();
                for row in &page {
                    assert!(row.seq > since, "sequence {} after {since}", row.seq);
                    since = row.seq;
                    seen.push((row.seq, row.id.clone()));
                }
                if page.is_empty() {
                    let info = node.db_info("db").await.unwrap();
                    if info.update_seq == since && Arc::strong_count(&node) == 1 {
                        break;
                    }
                    assert!(start.elapsed() < GUARD * 4, "the reader never caught up");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            seen
        })
    };
    let mut edits: HashMap<String, Vec<Rev>> = HashMap::new();
    let mut branches: Vec<Rev> = Vec::new();
    let mut created: HashMap<String, usize> = HashMap::new();
    for w in workers {
        let (e, b, c) = w.await.unwrap();
        for (id, rev) in e {
            edits.entry(id).or_default().push(rev);
        }
        branches.extend(b);
        for id in c {
            *created.entry(id).or_default() += 1;
        }
    }
    // Stops the reader once it has read up to the last write.
    let final_seq = n[0].db_info("db").await.unwrap().update_seq;
    drop(n);
    let seen = tokio::time::timeout(GUARD * 4, reader)
        .await
        .expect("the reader did not finish")
        .unwrap();

    let node = schema.open().await;
    let mut accepted = 0;
    for d in 0..SHARED {
        let id = format!("d{d}");
        let tree = node.doc("db", &id).await.unwrap().unwrap().tree;
        let revs = edits.remove(&id).unwrap_or_default();
        for rev in &revs {
            assert!(tree.contains(rev), "{id}: accepted {rev} is missing");
        }
        assert_eq!(tree.leaves().len(), 1, "{id}: edits forked the document");
        assert_eq!(
            tree.winner().unwrap().rev.generation as usize,
            1 + revs.len(),
            "{id}: an accepted edit is not on the document's branch"
        );
        accepted += revs.len();
    }
    let tree = node.doc("db", "r").await.unwrap().unwrap().tree;
    for rev in &branches {
        assert!(tree.contains(rev), "r: replicated {rev} is missing");
    }
    assert_eq!(created.len(), ROUNDS);
    assert!(created.values().all(|&c| c == 1), "an id was created twice");
    let info = node.db_info("db").await.unwrap();
    assert_eq!(info.doc_count as usize, SHARED + 1 + ROUNDS);
    // Every accepted edit, branch and creation took one sequence.
    assert_eq!(
        info.update_seq as usize,
        SHARED + 1 + accepted + branches.len() + ROUNDS
    );
    assert_eq!(info.update_seq, final_seq);
    let seqs: HashSet<u64> = seen.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs.len(), seen.len(), "a sequence was seen twice");
    let all = node
        .changes(
            "db",
            &ChangesQuery {
                limit: 10_000,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let ids: HashSet<&String> = all.iter().map(|c| &c.id).collect();
    assert_eq!(ids.len(), all.len(), "a document is in the feed twice");
    assert_eq!(all.len(), SHARED + 1 + ROUNDS);
    // What the reader saw last of each document is where the feed has it.
    let mut last: HashMap<&String, u64> = HashMap::new();
    for (seq, id) in &seen {
        last.insert(id, *seq);
    }
    for row in &all {
        assert_eq!(last.get(&row.id), Some(&row.seq), "{}", row.id);
    }
}
