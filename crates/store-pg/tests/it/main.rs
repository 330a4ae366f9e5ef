//! The PostgreSQL engine against a real server (`OUTPOST_TEST_POSTGRES_URL`): the engine
//! conformance suite, several nodes on one database, the writer's chunks, and the copy between
//! SQLite and PostgreSQL.

mod conformance;
mod migrate;
mod nodes;
mod support;
mod writer;
