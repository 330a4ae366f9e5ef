//! The configuration the API changes (server admins added at run time), kept in `config` so
//! that every node sees it: on SQLite one process owns the data directory and keeps it there,
//! here any node may change it and every other node must follow.
//!
//! Changes go through the writer ([`crate::writer::WriteOp::SetConfig`]), which moves the
//! version in `counters` under its row lock in the same transaction, so versions follow commit
//! order. A node learns of another node's change as it learns of its writes: the transaction's
//! `NOTIFY` makes the listener read the version (see [`crate::feed`]), and the listener reads it
//! every 500 ms anyway.

use std::collections::BTreeMap;

use outpost_store::StoreError;

use crate::read::Reader;

/// The entries of `section` and the version they were read at, in one statement (one snapshot).
pub async fn section(
    reader: &Reader,
    section: &str,
) -> Result<(u64, BTreeMap<String, String>), StoreError> {
    let c = reader.client().await?;
    let rows = reader
        .query(
            &c,
            "SELECT v.value, c.key, c.value FROM counters v
             LEFT JOIN config c ON c.section = $1
             WHERE v.name = 'config'",
            &[&section],
        )
        .await?;
    let version = rows
        .first()
        .map(|r| r.get::<_, i64>(0).max(0) as u64)
        .ok_or_else(|| StoreError::Corrupt("the config version is missing".into()))?;
    let entries = rows
        .iter()
        .filter_map(|r| Some((r.get::<_, Option<String>>(1)?, r.get::<_, String>(2))))
        .collect();
    Ok((version, entries))
}
