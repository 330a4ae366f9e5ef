//! Tests of the queue's semantics, each run on both engines (PostgreSQL in a schema of its own
//! when `OUTPOST_TEST_POSTGRES_URL` is set), of the PostgreSQL leases between processes, and of
//! the SQLite format upgrades.

use std::time::Duration;

use super::*;

#[path = "../../tests/it/pg.rs"]
mod pg;

/// Where a test's queue lives; opened as often as the test likes (a reopened queue sees what
/// was committed before).
enum Engine {
    Sqlite(tempfile::TempDir),
    Postgres(pg::TestSchema),
}

const KEY: [u8; 32] = [3; 32];

impl Engine {
    fn sqlite() -> Self {
        Engine::Sqlite(tempfile::tempdir().unwrap())
    }

    async fn postgres(test: &str) -> Option<Self> {
        pg::TestSchema::create(test).await.map(Engine::Postgres)
    }

    async fn open(&self, max_entries: u64) -> Queue {
        self.open_with(max_entries, PostgresStore::DEFAULT_LEASE_TTL)
            .await
    }

    async fn open_with(&self, max_entries: u64, lease_ttl: Duration) -> Queue {
        let limits = QueueLimits {
            max_entries,
            max_bytes: 1 << 30,
        };
        match self {
            Engine::Sqlite(dir) => Queue::open(dir.path(), Cipher::new(&KEY), limits).unwrap(),
            Engine::Postgres(schema) => {
                let mut store = PostgresStore::new(schema.url.clone());
                store.pool_size = 4;
                store.lease_ttl = lease_ttl;
                Queue::open_postgres(&store, Cipher::new(&KEY), limits)
                    .await
                    .unwrap()
            }
        }
    }
}

/// Runs each named `async fn(&Engine)` as two tests, `NAME::sqlite` and `NAME::postgres`.
macro_rules! on_both_engines {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test]
            async fn sqlite() {
                super::$name(&super::Engine::sqlite()).await;
            }

            #[tokio::test]
            async fn postgres() {
                if let Some(engine) = super::Engine::postgres(stringify!($name)).await {
                    super::$name(&engine).await;
                }
            }
        }
    )*};
}

on_both_engines!(
    finish_is_compare_and_set_on_the_version,
    backing_off_keys_are_skipped_and_order_is_kept,
    dedup_limits_and_drop,
    concurrent_enqueues_all_commit,
    pending_writes_are_seen_by_key,
);

fn entry(key: &str, body: &'static str) -> NewEntry {
    NewEntry {
        ordering_key: String::new(),
        idempotency_key: key.into(),
        principal: Some(Vec::new()),
        request: StoredRequest {
            method: "POST".into(),
            target: "/t".into(),
            headers: vec![],
            body: bytes::Bytes::from_static(body.as_bytes()),
        },
    }
}

fn keyed(ordering_key: &str, idempotency_key: &str) -> NewEntry {
    NewEntry {
        ordering_key: ordering_key.into(),
        ..entry(idempotency_key, "x")
    }
}

fn done(q: &Queue, id: &str) -> Finish {
    let response = StoredResponse {
        status: 200,
        headers: vec![],
        body: bytes::Bytes::from_static(b"ok"),
        truncated: false,
    };
    Finish::Done {
        attempts: 1,
        response: q.seal_response(id, &response),
        status: 200,
    }
}

/// What a worker with no lane running would load.
async fn load(q: &Queue) -> Result<(Vec<Deliverable>, Option<i64>)> {
    q.load_deliverable(now_ms(), 10, 1 << 20, &[], 64).await
}

fn ids(loaded: &[Deliverable]) -> Vec<String> {
    loaded.iter().map(|d| d.id.clone()).collect()
}

async fn pending_writes_are_seen_by_key(engine: &Engine) {
    let q = engine.open(100).await;
    assert!(!q.has_pending("/a").await.unwrap());
    let a = q.enqueue(keyed("/a", "1")).await.unwrap();
    assert!(q.has_pending("/a").await.unwrap());
    assert!(!q.has_pending("/b").await.unwrap());
    assert_eq!(q.pending_count().await.unwrap(), 1);
    let (loaded, _) = load(&q).await.unwrap();
    q.finish(a.id.clone(), loaded[0].version, done(&q, &a.id))
        .await
        .unwrap()
        .await
        .unwrap()
        .unwrap();
    assert!(!q.has_pending("/a").await.unwrap());
    let stats = q.stats().await.unwrap();
    assert_eq!((stats.pending, stats.done, stats.stored_bytes), (0, 1, 0));
}

async fn finish_is_compare_and_set_on_the_version(engine: &Engine) {
    let q = engine.open(100).await;
    let a = q.enqueue(entry("a", "1")).await.unwrap();
    let (loaded, _) = load(&q).await.unwrap();
    assert_eq!(loaded.len(), 1);
    let version = loaded[0].version;

    // An operator retries it while it is being delivered: the delivery's outcome is dropped.
    q.retry(&a.id).await.unwrap();
    let stale = q
        .finish(a.id.clone(), version, done(&q, &a.id))
        .await
        .unwrap();
    assert!(!stale.await.unwrap().unwrap());
    assert_eq!(q.get(&a.id).await.unwrap().summary.state, State::Pending);

    let (loaded, _) = load(&q).await.unwrap();
    let fresh = q
        .finish(a.id.clone(), loaded[0].version, done(&q, &a.id))
        .await
        .unwrap();
    assert!(fresh.await.unwrap().unwrap());
    let detail = q.get(&a.id).await.unwrap();
    assert_eq!(detail.summary.state, State::Done);
    assert_eq!(detail.response.unwrap().body, "ok");
    assert!(
        detail.request.is_none(),
        "a delivered entry keeps no request"
    );
    assert_eq!(q.pending_count().await.unwrap(), 0);
}

async fn backing_off_keys_are_skipped_and_order_is_kept(engine: &Engine) {
    let q = engine.open(100).await;
    let mut ids = Vec::new();
    for (i, key) in ["a", "b", "c"].iter().enumerate() {
        let mut e = entry(key, "x");
        e.ordering_key = if i == 1 {
            "other".into()
        } else {
            String::new()
        };
        ids.push(q.enqueue(e).await.unwrap().id);
    }
    let (loaded, _) = load(&q).await.unwrap();
    let order: Vec<_> = loaded.iter().map(|d| d.id.clone()).collect();
    assert_eq!(order, ids);

    let head = &loaded[0];
    let later = Finish::Later {
        attempts: 1,
        next_attempt_ms: now_ms() + 60_000,
        error: "503".into(),
    };
    q.finish(head.id.clone(), head.version, later)
        .await
        .unwrap()
        .await
        .unwrap()
        .unwrap();
    let (loaded, wake) = load(&q).await.unwrap();
    // Only the other ordering key may proceed; the third entry waits behind its head.
    assert_eq!(loaded.len(), 1);
    assert_eq!(loaded[0].id, ids[1]);
    assert!(wake.unwrap() > now_ms());
}

async fn dedup_limits_and_drop(engine: &Engine) {
    let q = engine.open(2).await;
    let first = q.enqueue(entry("k", "1")).await.unwrap();
    let again = q.enqueue(entry("k", "1")).await.unwrap();
    assert_eq!(
        again,
        Enqueued {
            id: first.id.clone(),
            duplicate: true
        }
    );
    assert!(matches!(
        q.enqueue(entry("k", "2")).await,
        Err(Error::KeyReused)
    ));
    q.enqueue(entry("k2", "3")).await.unwrap();
    assert!(matches!(
        q.enqueue(entry("k3", "4")).await,
        Err(Error::QueueFull(_))
    ));
    q.drop_entry(&first.id).await.unwrap();
    assert!(matches!(q.get(&first.id).await, Err(Error::NotFound(_))));
    assert!(matches!(
        q.drop_entry(&first.id).await,
        Err(Error::NotFound(_))
    ));
    q.enqueue(entry("k3", "4")).await.unwrap();
    assert_eq!(q.pending_count().await.unwrap(), 2);
}

async fn concurrent_enqueues_all_commit(engine: &Engine) {
    let q = engine.open(10_000).await;
    let mut set = tokio::task::JoinSet::new();
    for i in 0..200 {
        let q = q.clone();
        set.spawn(async move { q.enqueue(entry(&format!("k{i}"), "x")).await.unwrap() });
    }
    while let Some(r) = set.join_next().await {
        assert!(!r.unwrap().duplicate);
    }
    drop(q);
    // Reopened from disk: everything acknowledged is there.
    let q = engine.open(10_000).await;
    assert_eq!(q.pending_count().await.unwrap(), 200);
    assert_eq!(
        q.list(Some(State::Pending), 0, 1000).await.unwrap().len(),
        200
    );
}

/// Two processes sharing one PostgreSQL queue, or `None` when the test is skipped.
async fn two_instances(test: &str, lease_ttl: Duration) -> Option<(Engine, Queue, Queue)> {
    let engine = Engine::postgres(test).await?;
    let a = engine.open_with(100, lease_ttl).await;
    let b = engine.open_with(100, lease_ttl).await;
    Some((engine, a, b))
}

async fn deliver(q: &Queue, d: &Deliverable) -> bool {
    q.finish(d.id.clone(), d.version, done(q, &d.id))
        .await
        .unwrap()
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn instances_never_replay_one_key_at_once() {
    let Some((_engine, a, b)) = two_instances(
        "instances_never_replay_one_key_at_once",
        Duration::from_secs(30),
    )
    .await
    else {
        return;
    };
    let first = a.enqueue(keyed("/x", "1")).await.unwrap();
    let second = b.enqueue(keyed("/x", "2")).await.unwrap();
    let other = b.enqueue(keyed("/y", "3")).await.unwrap();

    // `a` takes one key, the oldest head's, with all its entries in order.
    let (loaded_a, _) = a
        .load_deliverable(now_ms(), 10, 1 << 20, &[], 1)
        .await
        .unwrap();
    assert_eq!(ids(&loaded_a), [first.id.clone(), second.id.clone()]);
    let x = loaded_a[0].ordering_key.clone();
    assert!(a.holds_lane(&x));
    // `b` gets only the other key while `a` holds `/x`.
    let (loaded_b, _) = load(&b).await.unwrap();
    assert_eq!(ids(&loaded_b), [other.id]);
    assert!(!b.holds_lane(&x));

    // `a` delivers `/x` and hands it back; a new write to `/x` is then `b`'s to take.
    for d in &loaded_a {
        assert!(deliver(&a, d).await);
    }
    a.release_lane(&x).await;
    assert!(!a.holds_lane(&x));
    let third = a.enqueue(keyed("/x", "4")).await.unwrap();
    let y = loaded_b[0].ordering_key.clone();
    let (loaded_b, _) = b
        .load_deliverable(now_ms(), 10, 1 << 20, std::slice::from_ref(&y), 64)
        .await
        .unwrap();
    assert_eq!(ids(&loaded_b), [third.id]);
    let (loaded_a, _) = load(&a).await.unwrap();
    assert!(loaded_a.is_empty(), "both keys are b's");
}

#[tokio::test]
async fn an_expired_lease_is_taken_over_and_the_old_holder_stops() {
    let test = "an_expired_lease_is_taken_over_and_the_old_holder_stops";
    let Some((_engine, a, b)) = two_instances(test, Duration::from_millis(400)).await else {
        return;
    };
    let e = a.enqueue(keyed("/x", "1")).await.unwrap();
    // `a` takes the key, then stops renewing it, as a process that died would.
    let (loaded_a, _) = load(&a).await.unwrap();
    assert_eq!(ids(&loaded_a), std::slice::from_ref(&e.id));
    let mut taken = None;
    for _ in 0..200 {
        let (loaded_b, _) = load(&b).await.unwrap();
        if !loaded_b.is_empty() {
            taken = Some(loaded_b);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let loaded_b = taken.expect("the expired lease was never taken over");
    // The entry whose delivery `a` never recorded is delivered again, by `b`.
    assert_eq!(ids(&loaded_b), std::slice::from_ref(&e.id));
    let key = &loaded_b[0].ordering_key;
    assert!(!a.holds_lane(key), "a's deadline passed");
    a.renew_lanes().await;
    assert!(!a.holds_lane(key));
    assert!(b.holds_lane(key));
    assert!(deliver(&b, &loaded_b[0]).await);
    // `a` coming back with its stale outcome changes nothing.
    assert!(!deliver(&a, &loaded_a[0]).await);
    assert_eq!(a.get(&e.id).await.unwrap().summary.state, State::Done);
}

#[tokio::test]
async fn limits_and_idempotency_keys_hold_across_instances() {
    let test = "limits_and_idempotency_keys_hold_across_instances";
    let Some(engine) = Engine::postgres(test).await else {
        return;
    };
    let a = engine.open(2).await;
    let b = engine.open(2).await;
    let first = a.enqueue(entry("k", "1")).await.unwrap();
    // The same request through the other instance is the same entry.
    let again = b.enqueue(entry("k", "1")).await.unwrap();
    assert_eq!(
        again,
        Enqueued {
            id: first.id.clone(),
            duplicate: true
        }
    );
    assert!(matches!(
        b.enqueue(entry("k", "2")).await,
        Err(Error::KeyReused)
    ));
    b.enqueue(entry("k2", "3")).await.unwrap();
    assert!(matches!(
        a.enqueue(entry("k3", "4")).await,
        Err(Error::QueueFull(_))
    ));
    b.drop_entry(&first.id).await.unwrap();
    a.enqueue(entry("k3", "4")).await.unwrap();
    assert_eq!(a.pending_count().await.unwrap(), 2);
    assert_eq!(b.stats().await.unwrap().pending, 2);
}

mod upgrade {
    use super::*;
    use rusqlite::{Connection, params};

    /// The schema of format 1, as the gateway created it before keys were scoped and sealed.
    const FORMAT_1: &str = "
        CREATE TABLE meta (name TEXT PRIMARY KEY, value BLOB NOT NULL);
        CREATE TABLE entries (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL UNIQUE,
            state TEXT NOT NULL CHECK (state IN ('pending', 'done', 'dead')),
            ordering_key TEXT NOT NULL,
            idempotency_key TEXT NOT NULL,
            version INTEGER NOT NULL DEFAULT 0,
            attempts INTEGER NOT NULL DEFAULT 0,
            created_ms INTEGER NOT NULL,
            updated_ms INTEGER NOT NULL,
            next_attempt_ms INTEGER NOT NULL DEFAULT 0,
            last_error TEXT,
            request BLOB,
            request_bytes INTEGER NOT NULL,
            response BLOB,
            response_status INTEGER
        );
        CREATE INDEX entries_pending_idempotency
            ON entries (idempotency_key) WHERE state = 'pending';
        PRAGMA user_version = 1;";

    /// A record as format 1 sealed it: nonce and ciphertext, no key id.
    fn legacy_seal(cipher: &Cipher, aad: &[u8], plain: &[u8]) -> Vec<u8> {
        cipher.seal(aad, plain)[2 + 4..].to_vec()
    }

    /// A queue written by format 1 opens: its records still decrypt, its ordering keys become
    /// keyed hashes (and still order), its idempotency keys are sealed, nothing stays in clear.
    #[tokio::test]
    async fn a_format_1_queue_is_upgraded_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let key = [5u8; 32];
        let cipher = Cipher::new(&key);
        let request = StoredRequest {
            method: "POST".into(),
            target: "/users/SECRET-PATH/x".into(),
            headers: vec![],
            body: bytes::Bytes::from_static(b"body"),
        };
        {
            let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
            conn.execute_batch(FORMAT_1).unwrap();
            conn.execute(
                "INSERT INTO meta (name, value) VALUES ('key_check', ?1)",
                params![legacy_seal(
                    &cipher,
                    b"outpost-gateway/key-check",
                    b"outpost"
                )],
            )
            .unwrap();
            conn.execute(
                "INSERT INTO entries (id, state, ordering_key, idempotency_key, created_ms,
                    updated_ms, request, request_bytes)
                 VALUES ('e1', 'pending', '/users/SECRET-PATH', 'CLIENT-KEY-1', 1, 1, ?1, 10)",
                params![legacy_seal(&cipher, &request_aad("e1"), &request.encode())],
            )
            .unwrap();
        }
        let q = Queue::open(
            dir.path(),
            Cipher::new(&key),
            QueueLimits {
                max_entries: 100,
                max_bytes: 1 << 20,
            },
        )
        .unwrap();
        assert!(q.has_pending("/users/SECRET-PATH").await.unwrap());
        let entry = q.get("e1").await.unwrap();
        assert_eq!(entry.summary.idempotency_key, "CLIENT-KEY-1");
        assert_eq!(entry.request.unwrap(), request);
        let (loaded, _) = q
            .load_deliverable(now_ms(), 10, 1 << 20, &[], 64)
            .await
            .unwrap();
        assert_eq!(loaded.len(), 1);
        assert!(loaded[0].request.is_ok());
        drop(q);
        let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
        let (ordering, key): (String, String) = conn
            .query_row(
                "SELECT ordering_key, idempotency_key FROM entries WHERE id = 'e1'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert!(
            !ordering.contains("SECRET") && ordering.len() == 64,
            "{ordering}"
        );
        assert_eq!(key, "");
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, 3);
    }
}

/// The writer's commits no longer checkpoint the WAL themselves (`outpost_sqlite_wal`); the
/// checkpoint thread must still copy it into the database file, or the WAL would grow forever.
#[tokio::test]
async fn the_wal_is_checkpointed_off_the_writer() {
    let engine = Engine::sqlite();
    let Engine::Sqlite(dir) = &engine else {
        unreachable!()
    };
    let q = engine.open(u64::MAX).await;
    let db_file = dir.path().join(DB_FILE);
    let initial = std::fs::metadata(&db_file).unwrap().len();
    static BODY: [u8; 4096] = [b'x'; 4096];
    // About two pages per entry: several checkpoints' worth of WAL.
    for n in 0..1500 {
        let mut e = entry(&format!("k{n}"), "");
        e.request.body = bytes::Bytes::from_static(&BODY);
        q.enqueue(e).await.unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let size = std::fs::metadata(&db_file).unwrap().len();
        if size > initial + 4 * 1024 * 1024 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the database file stayed at {size} bytes: nothing was checkpointed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(q);
    // Everything committed is there after a reopen, checkpointed or not.
    let q = engine.open(u64::MAX).await;
    assert_eq!(q.pending_count().await.unwrap(), 1500);
}

/// Entry ids start with the enqueue time, so the id index grows at its end instead of taking a
/// random leaf per insert, and still carry a random part that makes them unguessable.
#[tokio::test]
async fn entry_ids_grow_with_time_and_stay_unguessable() {
    let engine = Engine::sqlite();
    let q = engine.open(u64::MAX).await;
    let a = q.enqueue(entry("a", "x")).await.unwrap().id;
    tokio::time::sleep(Duration::from_millis(3)).await;
    let b = q.enqueue(entry("b", "x")).await.unwrap().id;
    assert!(a < b, "{a} then {b}");
    let (time, random) = b.split_once('-').unwrap();
    assert_eq!(time.len(), 12);
    assert_eq!(random.len(), 32);
    assert!(random.chars().all(|c| c.is_ascii_hexdigit()));
    assert_ne!(a.split_once('-').unwrap().1, random);
}
