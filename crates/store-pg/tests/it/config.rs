//! The configuration the API changes, shared by every node: an entry set or removed through one
//! node is read, and heard of, on another.

use std::collections::BTreeMap;
use std::time::Duration;

use outpost_store::Store;

use crate::support::{Schema, postgres_url};

/// Long enough that only a defect (a change never heard of) runs into it.
const GUARD: Duration = Duration::from_secs(30);

fn entries(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_change_on_one_node_is_heard_of_and_read_on_another() {
    let Some(url) = postgres_url() else { return };
    let schema = Schema::new(&url);
    let (a, b) = (schema.open().await, schema.open().await);
    let (on_a, on_b) = (a.shared_config().unwrap(), b.shared_config().unwrap());
    let (start, found) = on_b.config_section("admins").await.unwrap();
    assert!(found.is_empty());
    let mut heard = on_b.watch_config();
    heard.borrow_and_update();

    assert!(
        !on_a
            .set_config("admins", "ann", Some("hash-1".into()))
            .await
            .unwrap()
    );
    tokio::time::timeout(GUARD, heard.changed())
        .await
        .expect("the other node never heard of the change")
        .unwrap();
    let (version, found) = on_b.config_section("admins").await.unwrap();
    assert!(version > start);
    assert_eq!(found, entries(&[("ann", "hash-1")]));
    assert!(*heard.borrow_and_update() >= version);

    // Replaced, then another section's entry of the same key, which the first does not show.
    assert!(
        on_a.set_config("admins", "ann", Some("hash-2".into()))
            .await
            .unwrap()
    );
    assert!(
        !on_a
            .set_config("other", "ann", Some("x".into()))
            .await
            .unwrap()
    );
    assert_eq!(
        on_b.config_section("admins").await.unwrap().1,
        entries(&[("ann", "hash-2")])
    );

    // Removed through the other node: gone for both, and heard of by the first.
    let mut heard_a = on_a.watch_config();
    heard_a.borrow_and_update();
    assert!(on_b.set_config("admins", "ann", None).await.unwrap());
    assert!(!on_b.set_config("admins", "ann", None).await.unwrap());
    tokio::time::timeout(GUARD, heard_a.changed())
        .await
        .expect("the first node never heard of the removal")
        .unwrap();
    assert!(on_a.config_section("admins").await.unwrap().1.is_empty());

    // A node started later reads what is there, at the version reached.
    let c = schema.open().await;
    let on_c = c.shared_config().unwrap();
    let (version, found) = on_c.config_section("other").await.unwrap();
    assert_eq!(found, entries(&[("ann", "x")]));
    assert_eq!(*on_c.watch_config().borrow(), version);
}
