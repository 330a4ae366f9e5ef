//! Checks of named leases: taken once, renewed by their holder, taken over after expiry,
//! released.

use std::sync::Arc;
use std::time::Duration;

use crate::Store;

/// Long enough that a lease taken in a check never expires during it.
const LONG: Duration = Duration::from_secs(600);

pub async fn a_lease_has_one_holder_until_it_expires_or_is_released(store: Arc<dyn Store>) {
    // Acquire: the first holder takes a free lease; another cannot while it runs.
    assert!(store.try_lease("job/a", "node-1", LONG).await.unwrap());
    assert!(!store.try_lease("job/a", "node-2", LONG).await.unwrap());
    // Leases are per name.
    assert!(store.try_lease("job/b", "node-2", LONG).await.unwrap());
    // Renew: the holder takes it again; the other still cannot.
    assert!(store.try_lease("job/a", "node-1", LONG).await.unwrap());
    assert!(!store.try_lease("job/a", "node-2", LONG).await.unwrap());
    // Releasing someone else's lease does nothing; releasing one's own frees it.
    store.release_lease("job/a", "node-2").await.unwrap();
    assert!(!store.try_lease("job/a", "node-2", LONG).await.unwrap());
    store.release_lease("job/a", "node-1").await.unwrap();
    assert!(store.try_lease("job/a", "node-2", LONG).await.unwrap());
    assert!(!store.try_lease("job/a", "node-1", LONG).await.unwrap());
    // Releasing a lease nobody holds is not an error.
    store.release_lease("job/none", "node-1").await.unwrap();
}

pub async fn an_expired_lease_is_taken_over(store: Arc<dyn Store>) {
    let short = Duration::from_millis(300);
    assert!(store.try_lease("job/c", "node-1", short).await.unwrap());
    assert!(!store.try_lease("job/c", "node-2", LONG).await.unwrap());
    // The holder stops renewing (it died): once the expiry has passed, another node takes it,
    // and the old holder no longer holds it.
    tokio::time::sleep(short * 3).await;
    assert!(store.try_lease("job/c", "node-2", LONG).await.unwrap());
    assert!(!store.try_lease("job/c", "node-1", short).await.unwrap());
    // A renewal moves the expiry forward: renewed with a long TTL, the lease outlives the
    // short one it was first taken with.
    assert!(store.try_lease("job/d", "node-1", short).await.unwrap());
    assert!(store.try_lease("job/d", "node-1", LONG).await.unwrap());
    tokio::time::sleep(short * 3).await;
    assert!(!store.try_lease("job/d", "node-2", LONG).await.unwrap());
}
