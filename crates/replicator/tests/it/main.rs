//! Integration tests: the replicator against real servers on real ports.

mod errors;
mod faults;
mod pouchdb;
mod pouchdb_server;
mod proxy;
mod support;
