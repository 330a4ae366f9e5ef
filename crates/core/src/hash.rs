//! Deterministic revision signatures.
//!
//! CouchDB hashes its own binary encoding of (deleted, parent, body, attachment digests) and
//! PouchDB hashes `JSON.stringify(doc)`; the two differ and the protocol only compares revisions
//! for equality and order, so no particular hash is required. Ours is md5 over a canonical form
//! of the same inputs, so an identical retried edit produces the same rev on every replica,
//! whatever order the client wrote the fields in.
//!
//! What is hashed, exactly: the parent revision's text (`-` for none), `\0d\0` or `\0l\0` for
//! deleted or live, then the body as compact JSON with the keys of every object sorted by their
//! UTF-8 bytes, strings escaped as serde_json escapes them (only `"`, `\\` and control
//! characters), and numbers as their text: numbers are kept as written (see [`crate::json`]), so
//! `1.0` and `1` are different bodies with different revisions, and two bodies that differ only
//! beyond `f64`'s precision never share a revision. Replicas hold the same text for a revision
//! (replication carries it exactly), so they compute the same revisions from it.

use md5::{Digest, Md5};
use serde_json::{Map, Value};

use crate::Rev;

/// The revision an edit of `parent` with `body` produces. `body` is the document without `_id`,
/// `_rev` and `_revisions`; attachments are included as stubs (with their digests), so a change
/// of attachment content changes the revision.
pub fn next_rev(parent: Option<&Rev>, deleted: bool, body: &Value) -> Rev {
    let mut canonical = Vec::with_capacity(128);
    write_canonical(body, &mut canonical);
    rev_of(parent, deleted, &canonical)
}

/// [`next_rev`] of a body given as its fields, without building a `Value` around them.
pub fn next_rev_of_fields(parent: Option<&Rev>, deleted: bool, fields: &Map<String, Value>) -> Rev {
    let mut canonical = Vec::with_capacity(128);
    write_canonical_object(fields, &mut canonical);
    rev_of(parent, deleted, &canonical)
}

/// The revision that brings back a branch a conflict policy deleted: a live child of the
/// tombstone `parent`, holding `body` (the deleted branch's). Hashed like an edit, but with its
/// own marker (`\0r\0`) where an edit has `\0l\0`, so any replica holding the revision and its
/// parent's id can tell a reinstatement from an edit with the same body, without a field in the
/// body (see [`crate::policy`]).
pub fn reinstated_rev(parent: &Rev, body: &Value) -> Rev {
    let mut canonical = Vec::with_capacity(128);
    write_canonical(body, &mut canonical);
    rev_with_marker(Some(parent), b"\0r\0", &canonical)
}

fn rev_of(parent: Option<&Rev>, deleted: bool, canonical: &[u8]) -> Rev {
    rev_with_marker(parent, if deleted { b"\0d\0" } else { b"\0l\0" }, canonical)
}

fn rev_with_marker(parent: Option<&Rev>, marker: &[u8; 3], canonical: &[u8]) -> Rev {
    let mut hasher = Md5::new();
    match parent {
        Some(p) => hasher.update(p.to_string().as_bytes()),
        None => hasher.update(b"-"),
    }
    hasher.update(marker);
    hasher.update(canonical);
    let digest = hasher.finalize();
    // Saturating: callers refuse to edit a revision at `MAX_GENERATION`, so this never saturates
    // on a tree the store wrote.
    let generation = parent.map_or(1, |p| p.generation.saturating_add(1));
    Rev::new(generation, hex(&digest))
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 0xf) as usize] as char);
    }
    s
}

/// The `md5-<base64>` digest CouchDB and PouchDB give an attachment's bytes.
pub fn attachment_digest(data: &[u8]) -> String {
    use base64::Engine;
    let digest = Md5::digest(data);
    format!(
        "md5-{}",
        base64::engine::general_purpose::STANDARD.encode(digest)
    )
}

/// Writes an object as JSON with its keys in sorted order, recursively.
fn write_canonical_object(map: &Map<String, Value>, out: &mut Vec<u8>) {
    let mut entries: Vec<(&String, &Value)> = map.iter().collect();
    entries.sort_by(|a, b| a.0.cmp(b.0));
    out.push(b'{');
    for (i, (k, v)) in entries.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        // Serialising a string into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, k);
        out.push(b':');
        write_canonical(v, out);
    }
    out.push(b'}');
}

/// Writes `v` as JSON with object keys in sorted order, recursively.
pub fn write_canonical(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Object(map) => write_canonical_object(map, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        other => {
            let _ = serde_json::to_writer(&mut *out, other);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn same_edit_same_rev_regardless_of_key_order() {
        let a = next_rev(None, false, &json!({"a": 1, "b": [1, {"y": 2, "x": 1}]}));
        let b = next_rev(None, false, &json!({"b": [1, {"x": 1, "y": 2}], "a": 1}));
        assert_eq!(a, b);
        assert_eq!(a.generation, 1);
        assert_eq!(a.hash.len(), 32);
        assert!(
            a.hash
                .bytes()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
        );
    }

    #[test]
    fn parent_deletion_and_body_change_the_rev() {
        let body = json!({"a": 1});
        let r1 = next_rev(None, false, &body);
        let r2 = next_rev(Some(&r1), false, &body);
        assert_eq!(r2.generation, 2);
        assert_ne!(r1.hash, r2.hash);
        assert_ne!(next_rev(Some(&r1), true, &body), r2);
        assert_ne!(next_rev(Some(&r1), false, &json!({"a": 2})), r2);
    }

    #[test]
    fn a_reinstatement_is_told_apart_from_an_edit_with_the_same_body() {
        let tomb: Rev = "3-abc".parse().unwrap();
        let body = json!({"a": 1});
        let r = reinstated_rev(&tomb, &body);
        assert_eq!(r.generation, 4);
        assert_ne!(r, next_rev(Some(&tomb), false, &body));
        assert_ne!(r, next_rev(Some(&tomb), true, &body));
        assert_eq!(r, reinstated_rev(&tomb, &json!({"a": 1})));
        assert_ne!(r, reinstated_rev(&tomb, &json!({"a": 2})));
    }

    #[test]
    fn one_revision_names_one_content() {
        // These parse to the same f64; they are different documents and get different revs.
        let a = crate::json::from_str(r#"{"v":0.1}"#).unwrap();
        let b = crate::json::from_str(r#"{"v":0.1000000000000000000001}"#).unwrap();
        let c = crate::json::from_str(r#"{"v":[18446744073709551616]}"#).unwrap();
        let d = crate::json::from_str(r#"{"v":[18446744073709551617]}"#).unwrap();
        assert_ne!(next_rev(None, false, &a), next_rev(None, false, &b));
        assert_ne!(next_rev(None, false, &c), next_rev(None, false, &d));
    }

    #[test]
    fn the_rev_of_a_body_is_the_rev_of_its_stored_text() {
        // A replica computes from the text it stored; the writer from what the client sent.
        let sent = crate::json::from_str(
            r#"{"z":[1.50,-0,1e+400,"\u00e9\ud83d\ude00\n"],"a":{"y":2,"x":0.30000000000000004}}"#,
        )
        .unwrap();
        let stored = sent.to_string();
        let reread = crate::json::from_str(&stored).unwrap();
        assert_eq!(stored, reread.to_string());
        assert_eq!(next_rev(None, false, &sent), next_rev(None, false, &reread));
        let mut canonical = Vec::new();
        write_canonical(&reread, &mut canonical);
        assert_eq!(
            String::from_utf8(canonical).unwrap(),
            r#"{"a":{"x":0.30000000000000004,"y":2},"z":[1.50,-0,1e+400,"é😀\n"]}"#
        );
    }

    #[test]
    fn attachment_digest_matches_couchdb() {
        // md5("hello") = 5d41402abc4b2a76b9719d911017c592, as base64.
        assert_eq!(attachment_digest(b"hello"), "md5-XUFAKrxLKna5cZ2REBfFkg==");
    }
}
