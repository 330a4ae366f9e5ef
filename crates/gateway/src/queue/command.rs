//! The changes to the queue and their answers, the same for both engines: each engine's writer
//! applies a batch of commands in one transaction and answers each caller after the commit.

use tokio::sync::oneshot;

use super::{Enqueued, Finish};
use crate::error::{Error, Result};

/// A change to the queue, with the channel its outcome is sent on after the commit.
pub(crate) enum Command {
    Enqueue {
        id: String,
        ordering_key: String,
        sealed_key: Vec<u8>,
        scope: Option<String>,
        fingerprint: String,
        created_ms: i64,
        sealed: Vec<u8>,
        bytes: i64,
        reply: oneshot::Sender<Result<Enqueued>>,
    },
    Finish {
        id: String,
        version: i64,
        now_ms: i64,
        finish: Finish,
        reply: oneshot::Sender<Result<bool>>,
    },
    Retry {
        id: String,
        now_ms: i64,
        reply: oneshot::Sender<Result<()>>,
    },
    Drop {
        id: String,
        reply: oneshot::Sender<Result<()>>,
    },
    Sweep {
        now_ms: i64,
        expire_before_ms: i64,
        purge_before_ms: i64,
        reply: oneshot::Sender<Result<(u64, u64)>>,
    },
}

/// The answer to one command, held until the transaction commits.
pub(crate) enum Reply {
    Enqueued(oneshot::Sender<Result<Enqueued>>, Result<Enqueued>),
    Finished(oneshot::Sender<Result<bool>>, Result<bool>),
    Unit(oneshot::Sender<Result<()>>, Result<()>),
    Swept(oneshot::Sender<Result<(u64, u64)>>, Result<(u64, u64)>),
}

impl Reply {
    pub(crate) fn is_ok(&self) -> bool {
        match self {
            Reply::Enqueued(_, r) => r.is_ok(),
            Reply::Finished(_, r) => r.is_ok(),
            Reply::Unit(_, r) => r.is_ok(),
            Reply::Swept(_, r) => r.is_ok(),
        }
    }

    pub(crate) fn send(self) {
        // A caller that gave up waiting is not an error: the change is committed either way.
        match self {
            Reply::Enqueued(tx, r) => drop(tx.send(r)),
            Reply::Finished(tx, r) => drop(tx.send(r)),
            Reply::Unit(tx, r) => drop(tx.send(r)),
            Reply::Swept(tx, r) => drop(tx.send(r)),
        }
    }

    /// Answers with the error `cause` makes instead: the transaction holding the command did
    /// not commit.
    pub(crate) fn fail(self, cause: impl Fn() -> Error) {
        match self {
            Reply::Enqueued(tx, _) => drop(tx.send(Err(cause()))),
            Reply::Finished(tx, _) => drop(tx.send(Err(cause()))),
            Reply::Unit(tx, _) => drop(tx.send(Err(cause()))),
            Reply::Swept(tx, _) => drop(tx.send(Err(cause()))),
        }
    }
}

pub(crate) fn reply_error(cmd: Command, e: Error) -> Reply {
    match cmd {
        Command::Enqueue { reply, .. } => Reply::Enqueued(reply, Err(e)),
        Command::Finish { reply, .. } => Reply::Finished(reply, Err(e)),
        Command::Retry { reply, .. } | Command::Drop { reply, .. } => Reply::Unit(reply, Err(e)),
        Command::Sweep { reply, .. } => Reply::Swept(reply, Err(e)),
    }
}

pub(crate) fn reply_with_error(reply: Reply, e: Error) -> Reply {
    match reply {
        Reply::Enqueued(tx, _) => Reply::Enqueued(tx, Err(e)),
        Reply::Finished(tx, _) => Reply::Finished(tx, Err(e)),
        Reply::Unit(tx, _) => Reply::Unit(tx, Err(e)),
        Reply::Swept(tx, _) => Reply::Swept(tx, Err(e)),
    }
}
