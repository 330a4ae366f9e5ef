//! Integration tests: the replicator against real servers on real ports.

mod errors;
mod pouchdb;
mod support;
