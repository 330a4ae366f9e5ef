//! The PostgreSQL engine against a real server (`OUTPOST_TEST_POSTGRES_URL`): the engine
//! conformance suite, and several nodes on one database.

mod conformance;
mod migrate;
mod nodes;
mod support;
mod writer;
