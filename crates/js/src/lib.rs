//! The JavaScript sandbox that runs design-document functions: view `map` and `reduce`
//! functions, `filter` functions and `validate_doc_update`.
//!
//! Functions run on QuickJS (through `rquickjs`), the engine CouchDB itself moved to in 3.4, in
//! a [`Sandbox`]: a pool of worker threads, one engine each, sized to the cores, so a function
//! never runs on the async runtime. Each engine has a memory limit and every call (each
//! document of a batch) a time limit, enforced by QuickJS's interrupt handler: a runaway function
//! is stopped, its engine thrown away and built again. The environment is CouchDB's query
//! server's (`emit`, `log`, `sum`, `toJSON`, `isArray`, `require` for modules stored in the
//! design document) and nothing more: no file, network or process access.
//!
//! Calls cross into the engine as JSON text and come back as JSON text (see `prelude.js`), so
//! the boundary is one narrow, well-tested function. A function that throws on a document
//! answers an error for that document; callers decide what that means (a view skips the
//! document, a filter leaves it out, a validation refuses the write).

mod engine;
mod pool;

use std::time::Duration;

use serde_json::Value;

pub use pool::Sandbox;

/// The limits every function call runs under.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// How long one function may run on one document before it is stopped.
    pub timeout: Duration,
    /// How much memory one engine may hold.
    pub memory_bytes: usize,
    /// Engines (and threads) in the pool.
    pub workers: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            // CouchDB's `os_process_timeout`.
            timeout: Duration::from_secs(5),
            memory_bytes: 64 * 1024 * 1024,
            workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
        }
    }
}

/// Why a call into the sandbox failed as a whole (a function's own errors are per document).
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum JsError {
    /// The function ran past the time limit and was stopped.
    #[error("function exceeded the time limit of {0:?}")]
    Timeout(Duration),
    /// The engine failed: out of memory, or a value that could not cross the boundary.
    #[error("javascript engine failed: {0}")]
    Engine(String),
    /// The pool is gone (the server is shutting down).
    #[error("javascript sandbox is shut down")]
    Closed,
}

/// What a map function emitted for one document, or why it failed on it.
pub type MapOutcome = Result<Vec<(Value, Value)>, String>;

/// What `validate_doc_update` decided about a write.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// The function returned: the write may go ahead.
    Allowed,
    /// It threw `{forbidden: message}`.
    Forbidden(Value),
    /// It threw `{unauthorized: message}`.
    Unauthorized(Value),
    /// It threw anything else, or did not compile.
    Failed(String),
}

/// The result of a reduce function.
#[derive(Debug, Clone, PartialEq)]
pub enum ReduceOutcome {
    /// The reduced value.
    Value(Value),
    /// A built-in reduce refused its input (CouchDB's `builtin_reduce_error`).
    BuiltinError(String),
    /// The function threw or did not compile.
    Failed(String),
}
