//! The PostgreSQL engine against a real server (`OUTPOST_TEST_POSTGRES_URL`): the engine
//! conformance suite, several nodes on one database, the configuration they share, the writer's
//! chunks, the schema's upgrade from older versions, the copy between SQLite and PostgreSQL, and
//! replaying the event log.

mod config;
mod conformance;
mod migrate;
mod nodes;
mod replay;
mod schema;
mod support;
mod writer;
