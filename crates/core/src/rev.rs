//! Revision ids: `N-sig`, where `N` ≥ 1 is the generation and `sig` an opaque signature.
//!
//! Outpost writes 32 lowercase hex characters as the signature, but accepts any non-empty
//! signature without `-` from peers: PouchDB validates revs with `/^\d+-[^-]*$/` and CouchDB keeps
//! non-hex signatures as strings, and the replication protocol only compares revisions for
//! equality and order.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The longest signature accepted, in bytes. CouchDB's are 32 hex characters; anything far
/// longer is an attack on memory rather than a revision.
pub const MAX_SIG_LEN: usize = 256;

/// The highest generation accepted from a client or a peer: 2^53 - 1. A JavaScript client
/// (PouchDB) holds generations as doubles, which are exact only up to here, and no real history
/// comes near it. Every generation Outpost stores is at most this, so `generation + 1` never
/// overflows, every generation fits SQLite's signed 64-bit integers, and every revision it writes
/// parses back. An edit of a revision at this generation is refused.
pub const MAX_GENERATION: u64 = (1 << 53) - 1;

/// A revision id. Ordered as CouchDB orders revisions: by generation, then by signature compared
/// as a string (for lowercase hex this is the same as CouchDB's comparison of the binary form).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Rev {
    /// The generation: the number of edits from the document's first revision.
    pub generation: u64,
    /// The signature that tells revisions of the same generation apart.
    pub hash: String,
}

/// Why a string is not a revision id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RevError {
    /// The string does not have the form `N-sig`.
    #[error("invalid rev format")]
    Format,
    /// The generation is above [`MAX_GENERATION`].
    #[error("revision generation is above {MAX_GENERATION}")]
    Generation,
}

impl Rev {
    /// Makes a revision from its parts.
    pub fn new(generation: u64, hash: impl Into<String>) -> Rev {
        Rev {
            generation,
            hash: hash.into(),
        }
    }

    /// Parses a revision the store wrote itself: like [`FromStr`], but any `u64` generation is
    /// read, so a tree stored before [`MAX_GENERATION`] was enforced still reads back.
    pub fn parse_stored(s: &str) -> Result<Rev, RevError> {
        parse(s, u64::MAX)
    }
}

fn parse(s: &str, max_generation: u64) -> Result<Rev, RevError> {
    let (generation, hash) = s.split_once('-').ok_or(RevError::Format)?;
    if generation.is_empty()
        || generation.len() > 20
        || !generation.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(RevError::Format);
    }
    let generation: u64 = generation.parse().map_err(|_| RevError::Generation)?;
    if generation == 0 || !valid_sig(hash) {
        return Err(RevError::Format);
    }
    if generation > max_generation {
        return Err(RevError::Generation);
    }
    Ok(Rev::new(generation, hash))
}

/// Whether `s` may be a revision signature. An empty one is allowed: CouchDB and PouchDB accept
/// a bare `1-` from a replicating peer (PouchDB's suite writes one with `new_edits=false`).
pub fn valid_sig(s: &str) -> bool {
    s.len() <= MAX_SIG_LEN && s.bytes().all(|b| b.is_ascii_graphic() && b != b'-')
}

impl FromStr for Rev {
    type Err = RevError;

    /// Parses a revision from a client or a peer: the generation must be at most
    /// [`MAX_GENERATION`].
    fn from_str(s: &str) -> Result<Rev, RevError> {
        parse(s, MAX_GENERATION)
    }
}

impl fmt::Display for Rev {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.generation, self.hash)
    }
}

impl Serialize for Rev {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Rev {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Rev, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expect: Option<(u64, &str)>) {
        let got = input.parse::<Rev>().ok().map(|r| (r.generation, r.hash));
        assert_eq!(got, expect.map(|(g, h)| (g, h.to_string())), "{input}");
    }

    #[test]
    fn parses_revs() {
        check("1-abc", Some((1, "abc")));
        check(
            "12-0123456789abcdef0123456789abcdef",
            Some((12, "0123456789abcdef0123456789abcdef")),
        );
        check("0-abc", None);
        check("1-", Some((1, "")));
        check("-abc", None);
        check("1-a-b", None);
        check("x-abc", None);
        check("1", None);
        check("99999999999999999999-a", None);
        check("9007199254740991-a", Some((MAX_GENERATION, "a")));
        check("9007199254740992-a", None);
        check("18446744073709551615-a", None);
        let stored = Rev::parse_stored("18446744073709551615-a").unwrap();
        assert_eq!(stored.generation, u64::MAX);
        assert_eq!(stored.to_string(), "18446744073709551615-a");
        assert!(Rev::parse_stored("18446744073709551616-a").is_err());
        check("1-a b", None);
    }

    #[test]
    fn orders_by_generation_then_signature() {
        let a: Rev = "2-a".parse().unwrap();
        let b: Rev = "2-b".parse().unwrap();
        let c: Rev = "10-a".parse().unwrap();
        assert!(a < b && b < c);
        assert_eq!(c.to_string(), "10-a");
    }
}
