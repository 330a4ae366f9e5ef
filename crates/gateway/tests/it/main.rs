//! Integration tests of the gateway against a real upstream HTTP server on 127.0.0.1.

mod accounts;
mod bad_input;
mod encryption;
mod exactly_once;
mod health;
mod idempotency;
mod layer;
mod openapi;
mod passthrough;
mod pg;
mod queueing;
mod retry;
mod shared_queue;
mod support;
mod worker;
