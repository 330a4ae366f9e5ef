//! Store tests against a real SQLite file: the behaviour every engine must have, and the event
//! log replaying into exactly the live tables after randomized workloads.

mod batches;
mod compaction;
mod conformance;
mod encryption;
mod index;
mod replay;
