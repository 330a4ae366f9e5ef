//! The replay worker against a target in this process.

use std::sync::Arc;
use std::time::Duration;

use outpost_gateway::queue::{NewEntry, QueueLimits};
use outpost_gateway::record::{StoredRequest, StoredResponse};
use outpost_gateway::stats::Stats;
use outpost_gateway::worker::{Deliver, Delivery, Worker};
use outpost_gateway::{Cipher, Queue, RetryPolicy, State};
use tokio_util::sync::CancellationToken;

/// A target whose handler panics on one request and accepts the others.
struct Panicky;

impl Deliver for Panicky {
    async fn deliver(&self, request: &StoredRequest) -> Delivery {
        if request.body == "boom" {
            panic!("handler bug");
        }
        Delivery::Answered(StoredResponse {
            status: 201,
            headers: vec![],
            body: bytes::Bytes::new(),
            truncated: false,
        })
    }
}

/// Issue 15, defect 12 (and "a panicking worker is restarted"): a delivery that panicked was
/// loaded and tried again forever, holding up every entry behind it. It is dead-lettered with
/// its error, counted, and the worker goes on.
#[tokio::test]
async fn a_panicking_delivery_is_dead_lettered_and_the_worker_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(
        dir.path(),
        Cipher::new(&[9; 32]),
        QueueLimits {
            max_entries: 100,
            max_bytes: 1 << 20,
        },
    )
    .unwrap();
    let mut ids = Vec::new();
    for body in ["boom", "fine"] {
        let entry = NewEntry {
            ordering_key: String::new(),
            idempotency_key: body.into(),
            principal: None,
            request: StoredRequest {
                method: "POST".into(),
                target: "/x".into(),
                headers: vec![],
                body: bytes::Bytes::from_static(body.as_bytes()),
            },
        };
        ids.push(queue.enqueue(entry).await.unwrap().id);
    }
    let stats = Arc::new(Stats::default());
    let shutdown = CancellationToken::new();
    let worker = Worker::new(
        queue.clone(),
        Panicky,
        None,
        RetryPolicy::default(),
        stats.clone(),
    );
    let task = tokio::spawn(worker.supervise(shutdown.clone()));
    let mut states = (State::Pending, State::Pending);
    for _ in 0..1500 {
        states = (
            queue.get(&ids[0]).await.unwrap().summary.state,
            queue.get(&ids[1]).await.unwrap().summary.state,
        );
        if states == (State::Dead, State::Done) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(states, (State::Dead, State::Done));
    let dead = queue.get(&ids[0]).await.unwrap().summary;
    assert!(dead.last_error.unwrap().contains("panicked"));
    assert_eq!(stats.snapshot().worker_panics, 1);
    shutdown.cancel();
    task.await.unwrap();
}
