//! The engine conformance suite (`outpost_store::conformance`) on PostgreSQL.

use crate::support::engines;

outpost_store::conformance_suite!(engines);
