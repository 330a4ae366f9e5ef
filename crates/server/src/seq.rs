//! Sequences as the HTTP API shows them, and `since` as it reads them.
//!
//! The stores number each database's changes with plain integers. CouchDB 3 shows every
//! sequence as an opaque string `"N-<opaque>"` whose numeric prefix grows and whose rest names
//! the shard files the position belongs to; clients (PouchDB, CouchDB's replicator, nano) only
//! ever hand them back. Outpost shows `"N-<incarnation>"`: `N` is the store's sequence and the
//! suffix names the sequence space it belongs to, a database's incarnation (its name and
//! creation time) or, for `_db_updates`, the server (its uuid). So a `since` taken from a
//! database that has since been deleted and created again is recognised as foreign and the
//! feed starts from the beginning, as CouchDB rewinds to 0 when the shards a `since` names
//! are not the database's (`couch_db:calculate_start_seq` on a uuid mismatch, and
//! `fabric_view_changes` for ranges it cannot find).
//!
//! `since` accepts what Outpost and CouchDB ever showed: a plain integer or integer string (the
//! form earlier Outpost versions showed, and pouchdb-server's) taken as a sequence of the
//! database as it is now, `now`, and `N-<suffix>`, optionally in the double quotes CouchDB
//! writes in an event source's `id:` (and so in its `Last-Event-ID`). Anything else is 400
//! with CouchDB's reason.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Serialize, Serializer};
use sha2::{Digest, Sha256};

use crate::ApiError;

/// CouchDB's reason for a `since` it cannot decode (`fabric_view_changes:validate_start_seq`).
pub const MALFORMED: &str = "Malformed sequence supplied in 'since' parameter.";

/// Bytes of the hash kept in a suffix: 72 bits, twelve URL-safe base64 characters.
const TAG_BYTES: usize = 9;

/// The sequence space a sequence belongs to, as the suffix it is shown with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Incarnation {
    tag: String,
}

impl Incarnation {
    /// A database's: its name and creation time (microseconds), which a database deleted and
    /// created again does not share. A hash, so that it says nothing and has a fixed length.
    pub fn of_db(name: &str, created_at: i64) -> Incarnation {
        Incarnation::hashed(&[b"db", name.as_bytes(), &created_at.to_be_bytes()])
    }

    /// The server's, for the server-wide sequence of `_db_updates`: its uuid, shared by every
    /// node of a PostgreSQL store.
    pub fn of_server(uuid: &str) -> Incarnation {
        Incarnation::hashed(&[b"server", uuid.as_bytes()])
    }

    fn hashed(parts: &[&[u8]]) -> Incarnation {
        let mut hash = Sha256::new();
        for part in parts {
            // Length-prefixed, so no two lists of parts hash the same input.
            hash.update((part.len() as u64).to_be_bytes());
            hash.update(part);
        }
        Incarnation {
            tag: URL_SAFE_NO_PAD.encode(&hash.finalize()[..TAG_BYTES]),
        }
    }

    /// Sequence `n` of this space, as shown.
    pub fn seq(&self, n: u64) -> Seq<'_> {
        Seq { n, of: self }
    }

    /// The store sequence a `since` names in this space, where `now` is `current`. A sequence
    /// of another space starts the feed from the beginning.
    pub fn since(&self, raw: &str, current: u64) -> Result<u64, ApiError> {
        Ok(match Since::parse(raw)? {
            Since::Now => current,
            Since::Plain(n) => n,
            Since::Tagged { n, tag } if tag == self.tag => n,
            Since::Tagged { .. } => 0,
        })
    }

    /// [`Incarnation::since`] for a `since` given as JSON (a replication's `since_seq`, a
    /// subscription of the multiplexed feed): a non-negative integer, or a string.
    pub fn since_json(&self, value: &serde_json::Value, current: u64) -> Result<u64, ApiError> {
        match value {
            serde_json::Value::Null => Ok(0),
            serde_json::Value::Number(n) => {
                n.as_u64().ok_or_else(|| ApiError::bad_request(MALFORMED))
            }
            serde_json::Value::String(s) => self.since(s, current),
            _ => Err(ApiError::bad_request(MALFORMED)),
        }
    }
}

/// A sequence as shown, `N-<incarnation>`; it serialises as that string.
#[derive(Clone, Copy, Debug)]
pub struct Seq<'a> {
    n: u64,
    of: &'a Incarnation,
}

impl Seq<'_> {
    /// As a JSON string, ready to splice into JSON text (the suffix needs no escaping).
    pub fn json(&self) -> String {
        format!("\"{self}\"")
    }

    /// As a JSON value.
    pub fn value(&self) -> serde_json::Value {
        serde_json::Value::String(self.to_string())
    }
}

impl fmt::Display for Seq<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.n, self.of.tag)
    }
}

impl Serialize for Seq<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// What a `since` says, before it is matched with a sequence space.
#[derive(Debug, PartialEq, Eq)]
enum Since<'a> {
    Now,
    /// An integer: a sequence of whatever space it is used with.
    Plain(u64),
    /// `N-<suffix>`.
    Tagged {
        n: u64,
        tag: &'a str,
    },
}

impl<'a> Since<'a> {
    fn parse(raw: &'a str) -> Result<Since<'a>, ApiError> {
        let malformed = || ApiError::bad_request(MALFORMED);
        // CouchDB strips one double quote at either end (`^"?…"?$`).
        let raw = raw.trim();
        let raw = raw.strip_prefix('"').unwrap_or(raw);
        let raw = raw.strip_suffix('"').unwrap_or(raw);
        if raw == "now" {
            return Ok(Since::Now);
        }
        let (digits, tag) = match raw.split_once('-') {
            Some((digits, tag)) => (digits, Some(tag)),
            None => (raw, None),
        };
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(malformed());
        }
        // A number beyond every sequence is past the end of the feed, wherever that is.
        let n = digits.parse::<u64>().unwrap_or(u64::MAX);
        match tag {
            None => Ok(Since::Plain(n)),
            Some(tag)
                if !tag.is_empty()
                    && tag
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
            {
                Ok(Since::Tagged { n, tag })
            }
            Some(_) => Err(malformed()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(raw: &str, expect: Result<Since<'_>, ()>) {
        assert_eq!(Since::parse(raw).map_err(|_| ()), expect, "since {raw:?}");
    }

    #[test]
    fn since_forms() {
        check("0", Ok(Since::Plain(0)));
        check("42", Ok(Since::Plain(42)));
        check("\"42\"", Ok(Since::Plain(42)));
        check("now", Ok(Since::Now));
        check("\"now\"", Ok(Since::Now));
        check(
            "7-abc_DEF-9",
            Ok(Since::Tagged {
                n: 7,
                tag: "abc_DEF-9",
            }),
        );
        check("\"7-abc\"", Ok(Since::Tagged { n: 7, tag: "abc" }));
        check("\"7-abc", Ok(Since::Tagged { n: 7, tag: "abc" }));
        check(
            "99999999999999999999999-x",
            Ok(Since::Tagged {
                n: u64::MAX,
                tag: "x",
            }),
        );
        // CouchDB's own sequences are well formed: they name another space.
        check(
            "23423-g1AAAAE7eJzLYWBg4MhgTmHgS0ktM3QwNDLXMwBCwxygOFMiQ5L8____sxIZcKlIUgCSSfZgRUw4",
            Ok(Since::Tagged {
                n: 23423,
                tag: "g1AAAAE7eJzLYWBg4MhgTmHgS0ktM3QwNDLXMwBCwxygOFMiQ5L8____sxIZcKlIUgCSSfZgRUw4",
            }),
        );
        for bad in [
            "",
            "\"\"",
            "-",
            "-1",
            "1.5",
            "+3",
            "7-",
            "abc",
            "randomjunk",
            "7-a b",
            "7-a/b",
            "7-a=",
            "[1,\"x\"]",
            "now-abc",
            "0x10",
        ] {
            check(bad, Err(()));
        }
    }

    #[test]
    fn a_sequence_reads_back_in_its_own_space_only() {
        let db = Incarnation::of_db("notes", 1_700_000_000_000_000);
        let again = Incarnation::of_db("notes", 1_700_000_000_000_001);
        let other = Incarnation::of_db("notes2", 1_700_000_000_000_000);
        let shown = db.seq(12).to_string();
        assert!(shown.starts_with("12-"), "{shown}");
        assert_eq!(db.since(&shown, 40).unwrap(), 12);
        assert_eq!(db.since(&db.seq(12).json(), 40).unwrap(), 12);
        assert_eq!(again.since(&shown, 40).unwrap(), 0);
        assert_eq!(other.since(&shown, 40).unwrap(), 0);
        assert_eq!(db.since("now", 40).unwrap(), 40);
        assert_eq!(again.since("12", 40).unwrap(), 12);
        // Every suffix reads back as a well-formed `since`.
        for n in [0, 1, u64::MAX] {
            let seq = again.seq(n);
            assert_eq!(again.since(&seq.to_string(), 0).unwrap(), n);
            assert_eq!(serde_json::to_value(seq).unwrap(), seq.value());
        }
        assert_ne!(
            Incarnation::of_server("u")
                .since(&db.seq(3).to_string(), 9)
                .unwrap(),
            3
        );
    }

    #[test]
    fn json_since() {
        let db = Incarnation::of_db("a", 1);
        assert_eq!(db.since_json(&serde_json::json!(5), 9).unwrap(), 5);
        assert_eq!(db.since_json(&serde_json::json!("now"), 9).unwrap(), 9);
        assert_eq!(db.since_json(&db.seq(4).value(), 9).unwrap(), 4);
        assert_eq!(db.since_json(&serde_json::Value::Null, 9).unwrap(), 0);
        for bad in [
            serde_json::json!(-1),
            serde_json::json!(1.5),
            serde_json::json!([1]),
        ] {
            assert!(db.since_json(&bad, 9).is_err(), "{bad}");
        }
    }
}
