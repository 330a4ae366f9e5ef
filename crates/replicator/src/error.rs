//! What can go wrong while replicating, and whether trying again can help.
//!
//! The split follows PouchDB's replicator (pouchdb-replication, `backOff`) and CouchDB's
//! scheduler (docs.couchdb.org, "replication/replicator", states `crashing` and `failed`): network
//! errors, timeouts and 5xx answers are transient; 401 and 403 are fatal, because retrying with
//! the same credentials cannot succeed and hammering a server with bad credentials gets clients
//! locked out.

/// A replication failure. Every variant names the endpoint (with credentials redacted) and the
/// operation that failed, so that a message in a log or in `_scheduler/jobs` says where to look.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReplicationError {
    /// The peer could not be reached, or the connection broke mid-answer.
    #[error("{endpoint}: {op}: cannot reach the peer: {reason}")]
    Unreachable {
        endpoint: String,
        op: &'static str,
        reason: String,
    },
    /// The peer did not answer in time.
    #[error("{endpoint}: {op}: timed out")]
    Timeout { endpoint: String, op: &'static str },
    /// 401: the credentials were refused.
    #[error("{endpoint}: {op}: unauthorized: {reason}")]
    Unauthorized {
        endpoint: String,
        op: &'static str,
        reason: String,
    },
    /// 403: the credentials are valid but not allowed to do this.
    #[error("{endpoint}: {op}: forbidden: {reason}")]
    Forbidden {
        endpoint: String,
        op: &'static str,
        reason: String,
    },
    /// 404: the database (or a document the protocol needed) does not exist.
    #[error("{endpoint}: {op}: not found: {reason}")]
    NotFound {
        endpoint: String,
        op: &'static str,
        reason: String,
    },
    /// 409: a checkpoint document changed under us.
    #[error("{endpoint}: {op}: conflict")]
    Conflict { endpoint: String, op: &'static str },
    /// Any other non-2xx answer.
    #[error("{endpoint}: {op}: http {status} {error}: {reason}")]
    Http {
        endpoint: String,
        op: &'static str,
        status: u16,
        error: String,
        reason: String,
    },
    /// A 2xx answer whose body does not follow the protocol.
    #[error("{endpoint}: {op}: unexpected response: {reason}")]
    InvalidResponse {
        endpoint: String,
        op: &'static str,
        reason: String,
    },
    /// The source could not produce a revision the changes feed listed.
    #[error("{endpoint}: {op}: fetching {id} failed: {error}: {reason}")]
    FetchFailed {
        endpoint: String,
        op: &'static str,
        id: String,
        error: String,
        reason: String,
    },
    /// The replication's own settings are unusable (bad URL, bad selector, ...).
    #[error("invalid replication: {0}")]
    InvalidConfig(String),
}

impl ReplicationError {
    /// Whether the same request can succeed later without anyone changing anything: network
    /// errors, timeouts, 5xx, 408 and 429, and incomplete writes. Authorisation failures, missing
    /// databases and protocol violations are permanent.
    pub fn is_retryable(&self) -> bool {
        match self {
            ReplicationError::Unreachable { .. }
            | ReplicationError::Timeout { .. }
            | ReplicationError::Conflict { .. }
            | ReplicationError::FetchFailed { .. } => true,
            ReplicationError::Http { status, .. } => *status >= 500 || matches!(status, 408 | 429),
            ReplicationError::Unauthorized { .. }
            | ReplicationError::Forbidden { .. }
            | ReplicationError::NotFound { .. }
            | ReplicationError::InvalidResponse { .. }
            | ReplicationError::InvalidConfig(_) => false,
        }
    }

    /// Whether the peer found the request too large (413): the replicator then sends less.
    pub fn is_too_large(&self) -> bool {
        matches!(self, ReplicationError::Http { status: 413, .. })
    }

    /// Whether the target could not resolve an attachment stub (412 `missing_stub`): the
    /// replicator then sends the attachment's data.
    pub fn is_missing_stub(&self) -> bool {
        matches!(self, ReplicationError::Http { status: 412, error, .. } if error == "missing_stub")
    }

    /// Whether the failure is an authorisation refusal (401 or 403), which CouchDB's scheduler
    /// reports as a failed job rather than a crashing one.
    pub fn is_auth(&self) -> bool {
        matches!(
            self,
            ReplicationError::Unauthorized { .. } | ReplicationError::Forbidden { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http(status: u16) -> ReplicationError {
        ReplicationError::Http {
            endpoint: "http://h/db".into(),
            op: "changes",
            status,
            error: "x".into(),
            reason: "y".into(),
        }
    }

    #[test]
    fn classification() {
        let e = || "http://h/db".to_string();
        let cases = [
            (
                ReplicationError::Unreachable {
                    endpoint: e(),
                    op: "info",
                    reason: "r".into(),
                },
                true,
            ),
            (
                ReplicationError::Timeout {
                    endpoint: e(),
                    op: "info",
                },
                true,
            ),
            (
                ReplicationError::Unauthorized {
                    endpoint: e(),
                    op: "info",
                    reason: "r".into(),
                },
                false,
            ),
            (
                ReplicationError::Forbidden {
                    endpoint: e(),
                    op: "info",
                    reason: "r".into(),
                },
                false,
            ),
            (
                ReplicationError::NotFound {
                    endpoint: e(),
                    op: "info",
                    reason: "r".into(),
                },
                false,
            ),
            (http(500), true),
            (http(503), true),
            (http(429), true),
            (http(408), true),
            (http(400), false),
            (http(413), false),
            (ReplicationError::InvalidConfig("x".into()), false),
        ];
        for (err, retryable) in cases {
            assert_eq!(err.is_retryable(), retryable, "{err}");
        }
    }
}
