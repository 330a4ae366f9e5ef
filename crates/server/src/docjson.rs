//! Documents in and out: a client's JSON turned into a [`DocUpdate`], and a stored revision turned
//! back into the JSON a client expects.
//!
//! Bodies are stored as the JSON text they are served as (without `_id` and `_rev`), so a plain
//! read splices the two in front of the stored text instead of parsing and re-serialising it.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use outpost_core::{Rev, RevError, RevTree, Selector, hash};
use outpost_store::{DocUpdate, NewAttachment, Origin, StoredBody, UpdateMode};
use std::collections::HashMap;

use axum::body::Bytes;
use serde_json::{Map, Value, json};

use crate::stream::{BodyWriter, StreamEnd};
use crate::{ApiError, AppState};

/// Special fields a client may send that CouchDB accepts and ignores on write.
const IGNORED_SPECIALS: &[&str] = &[
    "_conflicts",
    "_deleted_conflicts",
    "_local_seq",
    "_revs_info",
    "_seq",
];

/// Special fields kept in the body as they are: attachments, and the fields CouchDB's replicator
/// writes into `_replicator` documents (`_replication_id`, `_replication_state`, ...).
fn kept_special(key: &str) -> bool {
    // `_access` is kept here and refused on write to a database without per-document access
    // (`access::check_writes`), where CouchDB refuses it as any other special member.
    key == "_attachments" || key == "_access" || key.starts_with("_replication_")
}

/// Parses a revision id from a client, with CouchDB's error.
pub fn parse_rev(s: &str) -> Result<Rev, ApiError> {
    s.parse().map_err(|e| match e {
        RevError::Format => ApiError::bad_request(format!("Invalid rev format: {s:?}")),
        RevError::Generation => ApiError::bad_request(format!("Invalid rev {s:?}: {e}")),
    })
}

/// A new random document id, as CouchDB's `_uuids` gives them (32 lowercase hex digits).
pub fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Turns a client's document into an update.
///
/// `url_id` is the id from the URL (a `PUT`), which wins over `_id`. `new_edits=false` takes the
/// revision path from `_revisions` (or `_rev` alone) and merges it as given.
pub fn parse_doc(
    value: Value,
    url_id: Option<&str>,
    new_edits: bool,
    origin: Origin,
) -> Result<DocUpdate, ApiError> {
    parse_doc_with_parts(value, url_id, new_edits, origin, &mut HashMap::new())
}

/// [`parse_doc`] for the document part of a `multipart/related` body: attachments marked
/// `"follows": true` take their bytes from `parts`, by name.
pub fn parse_doc_with_parts(
    value: Value,
    url_id: Option<&str>,
    new_edits: bool,
    origin: Origin,
    parts: &mut HashMap<String, Bytes>,
) -> Result<DocUpdate, ApiError> {
    let Value::Object(mut fields) = value else {
        return Err(ApiError::bad_request("Document must be a JSON object"));
    };
    let id = match (url_id, fields.shift_remove("_id")) {
        (Some(id), _) => id.to_owned(),
        (None, Some(Value::String(id))) => id,
        (None, Some(_)) => return Err(ApiError::bad_request("Document id must be a string")),
        (None, None) if new_edits => new_id(),
        (None, None) => return Err(ApiError::bad_request("Document id must be specified")),
    };
    if id.len() > crate::request::MAX_DOC_ID_BYTES {
        return Err(ApiError::TooLarge(format!(
            "document id is longer than {} bytes",
            crate::request::MAX_DOC_ID_BYTES
        )));
    }
    outpost_core::names::classify_doc_id(&id)?;
    let rev = match fields.shift_remove("_rev") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(parse_rev(&s)?),
        Some(_) => return Err(ApiError::bad_request("Invalid rev format")),
    };
    let deleted = match fields.shift_remove("_deleted") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => b,
        Some(_) => return Err(ApiError::bad_request("_deleted must be a boolean")),
    };
    let revisions = fields
        .shift_remove("_revisions")
        .map(parse_revisions)
        .transpose()?;
    for special in IGNORED_SPECIALS {
        fields.shift_remove(*special);
    }
    if let Some(bad) = fields
        .keys()
        .find(|k| k.starts_with('_') && !kept_special(k))
    {
        return Err(ApiError::DocValidation(format!(
            "Bad special document member: {bad}"
        )));
    }
    let new_attachments = prepare_attachments(&mut fields, parts)?;
    let mode = if new_edits {
        UpdateMode::Edit { base: rev }
    } else {
        // As in CouchDB, `_revisions` wins over `_rev` when both are given: PouchDB sends, for
        // instance, `"_rev": "2-a"` with `{"start": 1, "ids": ["a"]}` and expects `1-a`.
        let path = match (revisions, rev) {
            (Some(path), _) => path,
            (None, Some(rev)) => vec![rev],
            (None, None) => {
                return Err(ApiError::bad_request(
                    "new_edits=false needs a _rev for every document",
                ));
            }
        };
        UpdateMode::Replicate { path }
    };
    Ok(DocUpdate {
        id,
        mode,
        deleted,
        body: fields,
        new_attachments,
        origin,
    })
}

/// `_revisions: {start, ids}` (newest first) as a path of revision ids.
pub fn parse_revisions(value: Value) -> Result<Vec<Rev>, ApiError> {
    let bad = || {
        ApiError::bad_request(
            "_revisions must be {\"start\": N, \"ids\": [...]} with N >= the number of ids",
        )
    };
    let start = value.get("start").and_then(Value::as_u64).ok_or_else(bad)?;
    if start > outpost_core::rev::MAX_GENERATION {
        return Err(ApiError::bad_request(format!(
            "_revisions.start is above the highest generation, {}",
            outpost_core::rev::MAX_GENERATION
        )));
    }
    let ids = value.get("ids").and_then(Value::as_array).ok_or_else(bad)?;
    if ids.is_empty() || ids.len() as u64 > start || ids.len() > outpost_core::tree::MAX_PATH_LEN {
        return Err(bad());
    }
    ids.iter()
        .enumerate()
        .map(|(i, id)| {
            let sig = id
                .as_str()
                .filter(|s| outpost_core::rev::valid_sig(s))
                .ok_or_else(bad)?;
            Ok(Rev::new(start - i as u64, sig))
        })
        .collect()
}

/// Decodes inline (`data`) attachments into their stored form and collects their bytes.
fn prepare_attachments(
    fields: &mut Map<String, Value>,
    parts: &mut HashMap<String, Bytes>,
) -> Result<Vec<NewAttachment>, ApiError> {
    let Some(atts) = fields.get_mut("_attachments") else {
        return Ok(Vec::new());
    };
    let Some(atts) = atts.as_object_mut() else {
        return Err(ApiError::bad_request("_attachments must be an object"));
    };
    let mut new = Vec::new();
    for (name, att) in atts.iter_mut() {
        if name.starts_with('_') {
            return Err(ApiError::bad_request(
                "Attachment name can't start with '_'",
            ));
        }
        let Some(obj) = att.as_object_mut() else {
            return Err(ApiError::bad_request(format!(
                "attachment {name} must be an object"
            )));
        };
        if obj.get("stub").and_then(Value::as_bool) == Some(true) {
            continue;
        }
        let follows = obj.get("follows").and_then(Value::as_bool) == Some(true);
        let data = match obj.shift_remove("data") {
            _ if follows => {
                let bytes = parts.remove(name.as_str()).ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "attachment {name} follows, but no part of a multipart/related body holds it"
                    ))
                })?;
                match decode_part(name, obj, bytes)? {
                    Part::Identity(data) => data,
                    Part::Gzip { data, length } => {
                        new.push(encoded_entry(obj, data, length));
                        continue;
                    }
                }
            }
            Some(Value::String(s)) => BASE64.decode(s.as_bytes()).map_err(|_| {
                ApiError::bad_request(format!("attachment {name}: data is not valid base64"))
            })?,
            _ => {
                return Err(ApiError::bad_request(format!(
                    "attachment {name} has neither data nor stub"
                )));
            }
        };
        let digest = hash::attachment_digest(&data);
        *obj = stored_stub(obj, &digest, data.len() as u64, None);
        new.push(NewAttachment { digest, data });
    }
    Ok(new)
}

/// An attachment that followed in a multipart body, as it is to be stored.
enum Part {
    Identity(Vec<u8>),
    /// Gzip-encoded (checked), with the length of its identity bytes.
    Gzip {
        data: Vec<u8>,
        length: u64,
    },
}

/// Turns an entry that followed gzip-encoded into its stored form: the bytes as they came, the
/// digest of those bytes (as CouchDB's, so both sides of a replication agree on it), `length`
/// of the identity bytes, `encoding` and `encoded_length`.
fn encoded_entry(obj: &mut Map<String, Value>, data: Vec<u8>, length: u64) -> NewAttachment {
    let digest = hash::attachment_digest(&data);
    *obj = stored_stub(obj, &digest, length, Some(data.len() as u64));
    NewAttachment { digest, data }
}

/// The stub an attachment entry is stored as: its content type (`application/octet-stream` if
/// none), `digest`, identity `length`, with `gzip_length` the `encoding` and `encoded_length` of
/// bytes stored gzip-encoded, and `revpos` (when given); anything else the entry held (`data`,
/// `follows`, `stub`) is dropped.
fn stored_stub(
    entry: &Map<String, Value>,
    digest: &str,
    length: u64,
    gzip_length: Option<u64>,
) -> Map<String, Value> {
    use outpost_core::attachment::{ENCODED_LENGTH, ENCODING, GZIP};
    let content_type = match entry.get("content_type") {
        Some(Value::String(ct)) => ct.clone(),
        _ => "application/octet-stream".to_owned(),
    };
    let mut stored = Map::new();
    stored.insert("content_type".into(), Value::String(content_type));
    stored.insert("digest".into(), Value::String(digest.to_owned()));
    stored.insert("length".into(), Value::from(length));
    if let Some(encoded) = gzip_length {
        stored.insert(ENCODING.into(), Value::String(GZIP.into()));
        stored.insert(ENCODED_LENGTH.into(), Value::from(encoded));
    }
    if let Some(revpos) = entry.get("revpos") {
        stored.insert("revpos".into(), revpos.clone());
    }
    stored
}

/// The bytes of an attachment that followed in a multipart body. CouchDB sends the attachments
/// it keeps compressed as they are, marked `"encoding": "gzip"`: those are kept so, once checked
/// (and measured, never past [`MAX_DECODED_ATTACHMENT`]); any other coding is undone here.
fn decode_part(name: &str, entry: &Map<String, Value>, bytes: Bytes) -> Result<Part, ApiError> {
    use crate::encoding::{InflateError, inflate};
    use outpost_core::attachment::{GZIP, GzipError, identity_length};
    let coding = entry.get("encoding").and_then(Value::as_str);
    if coding.is_some_and(|c| c.eq_ignore_ascii_case(GZIP)) {
        return match identity_length(&bytes, MAX_DECODED_ATTACHMENT as u64) {
            Ok(length) => Ok(Part::Gzip {
                data: bytes.into(),
                length,
            }),
            Err(GzipError::Corrupt) => Err(ApiError::bad_request(format!(
                "attachment {name}: not valid gzip"
            ))),
            Err(GzipError::TooLarge(_)) => Err(ApiError::TooLarge(format!(
                "attachment {name} is larger than {MAX_DECODED_ATTACHMENT} bytes decompressed"
            ))),
        };
    }
    match inflate(coding, &bytes, MAX_DECODED_ATTACHMENT) {
        Ok(None) => Ok(Part::Identity(bytes.to_vec())),
        Ok(Some(decoded)) => Ok(Part::Identity(decoded)),
        Err(InflateError::Unsupported(other)) => Err(ApiError::BadContentType(format!(
            "attachment {name}: unsupported encoding {other:?}"
        ))),
        Err(InflateError::Corrupt) => Err(ApiError::bad_request(format!(
            "attachment {name}: not valid {}",
            coding.unwrap_or("identity")
        ))),
        Err(InflateError::TooLarge) => Err(ApiError::TooLarge(format!(
            "attachment {name} is larger than {MAX_DECODED_ATTACHMENT} bytes decompressed"
        ))),
    }
}

/// The most bytes an encoded attachment of a multipart body may expand to (the configured
/// `max_attachment_size` is checked afterwards, on the entry's `length`).
const MAX_DECODED_ATTACHMENT: usize = 256 * 1024 * 1024;

/// What to add to a rendered revision.
#[derive(Debug, Default, Clone)]
pub struct RenderOpts {
    pub revs: bool,
    pub revs_info: bool,
    pub conflicts: bool,
    pub deleted_conflicts: bool,
    pub attachments: bool,
    pub local_seq: bool,
    /// Show `encoding` and `encoded_length` of attachments stored encoded
    /// (`att_encoding_info=true`, and always in multipart answers).
    pub att_encoding_info: bool,
}

/// A rendered revision: JSON text, with the places where inlined attachments' bytes go as
/// base64. Kept in pieces so that a streamed response can read and encode each attachment range
/// by range instead of holding it whole.
#[derive(Debug)]
pub struct Rendered {
    pieces: Vec<Piece>,
}

#[derive(Debug)]
enum Piece {
    Text(String),
    /// The base64 of an attachment's identity bytes (without quotes).
    Attachment(Inline),
}

/// An attachment to inline: where its bytes are and how they are stored.
#[derive(Debug)]
struct Inline {
    digest: String,
    /// The length of the identity bytes when they are stored gzip-encoded.
    gzip: Option<u64>,
}

impl Rendered {
    /// A rendering that is only text.
    pub fn text(text: String) -> Rendered {
        Rendered {
            pieces: vec![Piece::Text(text)],
        }
    }

    /// Whether attachments are inlined, to be read when written.
    pub fn inlines(&self) -> bool {
        self.pieces
            .iter()
            .any(|p| matches!(p, Piece::Attachment(_)))
    }

    /// Appends text.
    pub fn push(&mut self, text: &str) {
        match self.pieces.last_mut() {
            Some(Piece::Text(last)) => last.push_str(text),
            _ => self.pieces.push(Piece::Text(text.to_owned())),
        }
    }

    /// Appends another rendering.
    pub fn append(&mut self, other: Rendered) {
        for piece in other.pieces {
            match piece {
                Piece::Text(t) => self.push(&t),
                att => self.pieces.push(att),
            }
        }
    }

    /// The whole text, attachments read and encoded in memory: for answers that are one
    /// document.
    pub async fn into_string(self, state: &AppState) -> Result<String, ApiError> {
        let mut out = String::new();
        for piece in self.pieces {
            match piece {
                Piece::Text(t) => out.push_str(&t),
                Piece::Attachment(Inline { digest, gzip }) => {
                    let data = state.store.attachment(&digest).await?.ok_or_else(|| {
                        ApiError::Internal(format!("attachment {digest} missing from the store"))
                    })?;
                    let data = match gzip {
                        Some(length) => {
                            outpost_core::attachment::gunzip(&data, length).map_err(|e| {
                                ApiError::Internal(format!("attachment {digest}: stored {e}"))
                            })?
                        }
                        None => data,
                    };
                    out.push_str(&BASE64.encode(data));
                }
            }
        }
        Ok(out)
    }

    /// Writes the rendering into a streamed response, each attachment range by range.
    pub async fn write(self, state: &AppState, out: &mut BodyWriter) -> Result<(), StreamEnd> {
        for piece in self.pieces {
            match piece {
                Piece::Text(t) => out.write(&t).await?,
                Piece::Attachment(inline) => {
                    out.attachment(state, &inline.digest, inline.gzip.is_some())
                        .await?
                }
            }
        }
        Ok(())
    }
}

/// A stored revision as the JSON document a client sees.
// Every argument is a different part of the one revision being rendered; a struct to carry them
// would only be built to be taken apart here.
#[allow(clippy::too_many_arguments)]
pub async fn render(
    state: &AppState,
    db: &str,
    id: &str,
    tree: &RevTree,
    seq: u64,
    rev: &Rev,
    body: &StoredBody,
    opts: &RenderOpts,
) -> Result<String, ApiError> {
    render_parts(state, db, id, tree, seq, rev, body, opts)
        .await?
        .into_string(state)
        .await
}

/// [`render`] in pieces, with inlined attachments left to be read by whoever writes it.
#[allow(clippy::too_many_arguments)]
pub async fn render_parts(
    state: &AppState,
    db: &str,
    id: &str,
    tree: &RevTree,
    seq: u64,
    rev: &Rev,
    body: &StoredBody,
    opts: &RenderOpts,
) -> Result<Rendered, ApiError> {
    let mut extras: Vec<(&str, Value)> = Vec::new();
    let winner = tree.winner().map(|w| w.rev);
    let is_winner = winner.as_ref() == Some(rev);
    if opts.conflicts && is_winner {
        let conflicts = tree.conflicts();
        if !conflicts.is_empty() {
            extras.push(("_conflicts", revs_json(&conflicts)));
        }
    }
    if opts.deleted_conflicts && is_winner {
        let deleted = tree.deleted_conflicts();
        if !deleted.is_empty() {
            extras.push(("_deleted_conflicts", revs_json(&deleted)));
        }
    }
    if opts.local_seq {
        extras.push(("_local_seq", Value::from(seq)));
    }
    let ancestry = tree.ancestry(rev);
    if opts.revs {
        let ids: Vec<Value> = ancestry
            .iter()
            .map(|r| Value::String(r.hash.clone()))
            .collect();
        extras.push(("_revisions", json!({ "start": rev.generation, "ids": ids })));
    }
    if opts.revs_info {
        let have = state.store.rev_bodies(db, id, &ancestry).await?;
        let info: Vec<Value> = ancestry
            .iter()
            .map(|r| {
                let status = match have.iter().find(|(h, _)| h == r) {
                    Some((_, b)) if b.deleted => "deleted",
                    Some(_) => "available",
                    None => "missing",
                };
                json!({ "rev": r.to_string(), "status": status })
            })
            .collect();
        extras.push(("_revs_info", Value::Array(info)));
    }
    if opts.attachments && body.json.contains("\"_attachments\"") {
        let inner = inline_attachments(&body.json, opts.att_encoding_info)?;
        return Ok(splice_parts(id, rev, body.deleted, inner, &extras));
    }
    let json = if opts.att_encoding_info {
        std::borrow::Cow::Borrowed(body.json.as_str())
    } else {
        outpost_core::attachment::without_encoding_info(&body.json)
    };
    Ok(Rendered::text(splice(
        id,
        rev,
        body.deleted,
        &json,
        &extras,
    )))
}

fn revs_json(revs: &[Rev]) -> Value {
    Value::Array(revs.iter().map(|r| Value::String(r.to_string())).collect())
}

/// `{"_id":…,"_rev":…,` + the stored body + extras, without parsing the body.
pub fn splice(
    id: &str,
    rev: &dyn std::fmt::Display,
    deleted: bool,
    body: &str,
    extras: &[(&str, Value)],
) -> String {
    let inner = body.trim();
    let inner = inner
        .strip_prefix('{')
        .and_then(|b| b.strip_suffix('}'))
        .unwrap_or("")
        .trim();
    let mut out = String::with_capacity(body.len() + id.len() + 64);
    out.push_str(&splice_head(id, rev, deleted));
    if !inner.is_empty() {
        out.push(',');
        out.push_str(inner);
    }
    out.push_str(&splice_tail(extras));
    out
}

/// [`splice`] around a body already in pieces (the members between its braces).
fn splice_parts(
    id: &str,
    rev: &dyn std::fmt::Display,
    deleted: bool,
    inner: Rendered,
    extras: &[(&str, Value)],
) -> Rendered {
    let mut out = Rendered::text(splice_head(id, rev, deleted));
    if !inner.pieces.is_empty() {
        out.push(",");
        out.append(inner);
    }
    out.push(&splice_tail(extras));
    out
}

fn splice_head(id: &str, rev: &dyn std::fmt::Display, deleted: bool) -> String {
    let mut out = String::from("{\"_id\":");
    out.push_str(&Value::String(id.to_owned()).to_string());
    out.push_str(",\"_rev\":\"");
    out.push_str(&rev.to_string());
    out.push('"');
    if deleted {
        out.push_str(",\"_deleted\":true");
    }
    out
}

fn splice_tail(extras: &[(&str, Value)]) -> String {
    let mut out = String::new();
    for (key, value) in extras {
        out.push_str(",\"");
        out.push_str(key);
        out.push_str("\":");
        out.push_str(&value.to_string());
    }
    out.push('}');
    out
}

/// Whether `selector` admits a revision, matched as CouchDB matches a `_selector` filter: against
/// the document a client would read, with `_id`, `_rev` and, for a tombstone, `"_deleted": true`
/// next to whatever fields the deleter kept. So `{"_deleted": true}` admits every deletion and a
/// tombstone that kept `type` passes `{"type": …}`.
pub fn selector_admits(
    selector: &Selector,
    id: &str,
    rev: &Rev,
    deleted: bool,
    body: &str,
) -> Result<bool, ApiError> {
    let body = outpost_core::attachment::without_encoding_info(body);
    let doc = splice(id, rev, deleted, &body, &[]);
    let value = outpost_core::json::from_str(&doc)
        .map_err(|e| ApiError::Internal(format!("stored body: {e}")))?;
    Ok(selector.matches(&value))
}

/// The members of a stored body (between its braces) with every attachment stub turned into an
/// inline attachment: `stub` and `length` left out, as CouchDB does, `encoding` and
/// `encoded_length` too unless `encoding_info` (the data is the identity bytes either way), and
/// `data` a place for the bytes. The body is parsed, but no attachment is read here.
fn inline_attachments(body: &str, encoding_info: bool) -> Result<Rendered, ApiError> {
    use outpost_core::attachment::{ENCODED_LENGTH, ENCODING};
    let fields: Map<String, Value> =
        serde_json::from_str(body).map_err(|e| ApiError::Internal(format!("stored body: {e}")))?;
    let mut out = Rendered { pieces: Vec::new() };
    for (i, (key, value)) in fields.iter().enumerate() {
        if i > 0 {
            out.push(",");
        }
        out.push(&Value::String(key.clone()).to_string());
        out.push(":");
        match value {
            Value::Object(atts) if key == "_attachments" => {
                out.push("{");
                for (j, (name, att)) in atts.iter().enumerate() {
                    if j > 0 {
                        out.push(",");
                    }
                    out.push(&Value::String(name.clone()).to_string());
                    out.push(":");
                    let digest = att.get("digest").and_then(Value::as_str);
                    match (att.as_object(), digest) {
                        (Some(meta), Some(digest)) => {
                            out.push("{");
                            for (name, v) in meta {
                                let hidden = match name.as_str() {
                                    "stub" | "length" | "data" => true,
                                    ENCODING | ENCODED_LENGTH => !encoding_info,
                                    _ => false,
                                };
                                if hidden {
                                    continue;
                                }
                                out.push(&Value::String(name.clone()).to_string());
                                out.push(":");
                                out.push(&v.to_string());
                                out.push(",");
                            }
                            out.push("\"data\":\"");
                            let gzip = outpost_core::attachment::encoded_length(att)
                                .map(|_| meta.get("length").and_then(Value::as_u64).unwrap_or(0));
                            out.pieces.push(Piece::Attachment(Inline {
                                digest: digest.to_owned(),
                                gzip,
                            }));
                            out.push("\"}");
                        }
                        _ => out.push(&att.to_string()),
                    }
                }
                out.push("}");
            }
            other => out.push(&other.to_string()),
        }
    }
    Ok(out)
}

/// The JSON of a successful write, serialised directly: a `json!` map (hashed keys, a copy of
/// each value) cost most of a `_bulk_docs` answer's time.
pub fn ok_json(id: &str, rev: &Rev) -> String {
    #[derive(serde::Serialize)]
    struct Written<'a> {
        ok: bool,
        id: &'a str,
        rev: &'a Rev,
    }
    serde_json::to_string(&Written { ok: true, id, rev }).expect("strings serialise")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ok_json_is_couchdb_s_answer() {
        let rev: Rev = "2-abc".parse().unwrap();
        assert_eq!(
            ok_json("a\"b", &rev),
            r#"{"ok":true,"id":"a\"b","rev":"2-abc"}"#
        );
    }

    #[test]
    fn splices_without_parsing() {
        let rev: Rev = "1-abc".parse().unwrap();
        assert_eq!(
            splice("a\"b", &rev, false, "{}", &[]),
            r#"{"_id":"a\"b","_rev":"1-abc"}"#
        );
        assert_eq!(
            splice(
                "x",
                &rev,
                true,
                r#"{"k":1}"#,
                &[("_conflicts", json!(["1-b"]))]
            ),
            r#"{"_id":"x","_rev":"1-abc","_deleted":true,"k":1,"_conflicts":["1-b"]}"#
        );
    }

    #[test]
    fn parses_a_replicated_document() {
        let doc = json!({"_id": "d", "_rev": "3-c", "_revisions": {"start": 3, "ids": ["c", "b", "a"]}, "v": 1});
        let update = parse_doc(doc, None, false, Origin::Client).unwrap();
        let UpdateMode::Replicate { path } = update.mode else {
            panic!("expected a replicated update")
        };
        assert_eq!(
            path.iter().map(Rev::to_string).collect::<Vec<_>>(),
            ["3-c", "2-b", "1-a"]
        );
        assert_eq!(Value::Object(update.body), json!({"v": 1}));
    }

    #[test]
    fn refuses_bad_documents() {
        for (doc, new_edits) in [
            (json!([1]), true),
            (json!({"_id": "_bad"}), true),
            (json!({"_foo": 1}), true),
            (json!({"_id": "x", "_rev": "nope"}), true),
            (json!({"_id": "x"}), false),
            (
                json!({"_id": "x", "_revisions": {"start": 1, "ids": ["a", "b"]}}),
                false,
            ),
            (json!({"_attachments": {"a": {"data": "!!!"}}}), true),
        ] {
            assert!(
                parse_doc(doc.clone(), None, new_edits, Origin::Client).is_err(),
                "{doc}"
            );
        }
    }

    #[test]
    fn decodes_inline_attachments() {
        let doc =
            json!({"_attachments": {"a.txt": {"content_type": "text/plain", "data": "aGVsbG8="}}});
        let update = parse_doc(doc, Some("d"), true, Origin::Client).unwrap();
        assert_eq!(update.new_attachments[0].data, b"hello");
        let att = &update.body["_attachments"]["a.txt"];
        assert_eq!(att["digest"], "md5-XUFAKrxLKna5cZ2REBfFkg==");
        assert_eq!(att["length"], 5);
    }
}
