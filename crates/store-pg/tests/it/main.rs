//! The PostgreSQL engine against a real server (`OUTPOST_TEST_POSTGRES_URL`): the engine
//! conformance suite, several nodes on one database and the writer's locks between them, the
//! configuration they share, the writer's chunks, the schema's upgrade from older versions, the
//! copy between SQLite and PostgreSQL, and replaying the event log.

mod config;
mod conformance;
mod locks;
mod migrate;
mod nodes;
mod replay;
mod schema;
mod support;
mod writer;
