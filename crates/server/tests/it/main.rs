//! Integration tests of the HTTP API: through the router without a socket, and against a real
//! server on `127.0.0.1:0` for the live feeds.

mod access;
mod api;
mod attachments;
mod auth;
mod bounds;
mod compaction;
mod compat;
mod conflicts;
mod console;
mod convergence;
mod deletions;
mod deviations;
mod feeds;
mod fidelity;
mod filters;
mod find;
mod input;
mod listings;
mod model;
mod mux;
mod ops;
mod paging;
mod purge;
mod roundtrip;
mod seqs;
mod support;
mod tls;
mod validation;
mod views;
