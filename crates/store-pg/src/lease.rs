//! Named leases (see `outpost_store::lease`) in the `leases` table, so that every node sharing
//! the database sees the same holders.
//!
//! Expiries are on the database's clock (`clock_timestamp()`), never a node's, so nodes whose
//! clocks disagree still agree on when a lease ran out. Taking a lease is one atomic upsert: it
//! inserts a free name, and overwrites a held one only when the row is the caller's own or has
//! expired; two nodes racing for an expired lease are ordered by the row lock, and the second
//! finds it no longer expired. Leases go through the read pool, not the writer: they are one
//! autocommitted statement each and must not wait behind a batch of document writes.

use crate::read::Reader;
use outpost_store::StoreError;
use std::time::Duration;

/// Created with the rest of the schema (see [`crate::schema`]).
pub const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS leases (
    name    TEXT PRIMARY KEY,
    holder  TEXT NOT NULL,
    expires TIMESTAMPTZ NOT NULL
);
"#;

/// Takes or renews `name` for `holder` until `ttl` from now; false while another holder's
/// lease runs.
pub async fn try_lease(
    r: &Reader,
    name: &str,
    holder: &str,
    ttl: Duration,
) -> Result<bool, StoreError> {
    let c = r.client().await?;
    let ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
    let row = r
        .query_opt(
            &c,
            "INSERT INTO leases (name, holder, expires)
             VALUES ($1, $2, clock_timestamp() + $3::bigint * interval '1 millisecond')
             ON CONFLICT (name) DO UPDATE
                SET holder = EXCLUDED.holder, expires = EXCLUDED.expires
              WHERE leases.holder = EXCLUDED.holder OR leases.expires <= clock_timestamp()
             RETURNING holder",
            &[&name, &holder, &ms],
        )
        .await?;
    Ok(row.is_some())
}

/// Deletes `name` if `holder` holds it.
pub async fn release_lease(r: &Reader, name: &str, holder: &str) -> Result<(), StoreError> {
    let c = r.client().await?;
    r.query(
        &c,
        "DELETE FROM leases WHERE name = $1 AND holder = $2",
        &[&name, &holder],
    )
    .await?;
    Ok(())
}
