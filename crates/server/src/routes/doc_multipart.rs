//! Documents answered as MIME multipart, as CouchDB does when a client asks with `Accept`:
//! `open_revs` as `multipart/mixed` (one part per revision), and a document with its
//! attachments as `multipart/related` (the JSON first, each attachment's raw bytes after it).
//! CouchDB's replicator pulls documents with attachments this way.
//!
//! The answer is streamed: the JSON parts are small and rendered up front, and each
//! attachment's bytes are read from the store a range at a time when the body reaches them.
//! As in CouchDB, the JSON always carries `encoding` and `encoded_length` of attachments stored
//! gzip-encoded, and those travel encoded, as stored (`length` is still their identity length).

use axum::body::{Body, Bytes};
use axum::response::Response;
use futures::stream;
use http::{HeaderValue, header};
use outpost_core::Rev;
use serde_json::Value;

use crate::multipart::{PART_END, closing, content_type, new_boundary, part_head};
use crate::request::Req;
use crate::stream::AttachmentReader;
use crate::{ApiError, AppState};

/// Whether the client's `Accept` asks for this multipart type.
pub fn accepts(req: &Req, kind: &str) -> bool {
    let wanted = format!("multipart/{kind}");
    req.headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| crate::request::media_type(t) == wanted)
}

/// One revision of an `open_revs` answer: a rendered document (attachments as stubs), or a
/// revision that is not there.
pub enum Revision {
    Found(String),
    Missing(Rev),
}

/// A piece of a streamed body: bytes ready to send, or an attachment to read when reached.
enum Piece {
    Ready(Bytes),
    Attachment(String),
}

/// Which attachments travel as bytes: all of them, or (with `atts_since`) only those added
/// after the newest of the given revisions the client already has.
#[derive(Debug, Clone, Copy)]
pub struct Sending {
    /// Attachments with a `revpos` at or below this stay stubs.
    pub known_up_to: u64,
}

/// The `revpos` bound of `atts_since`: the highest generation among the listed revisions that
/// the document's tree holds (the client has those, and so every attachment they had).
pub fn sending(atts_since: &[Rev], tree: &outpost_core::RevTree) -> Sending {
    let known_up_to = atts_since
        .iter()
        .filter(|r| tree.contains(r))
        .map(|r| r.generation)
        .max()
        .unwrap_or(0);
    Sending { known_up_to }
}

/// Attachments that follow a document's JSON part: name, content type, digest.
type Follows = Vec<(String, String, String)>;

/// Turns a rendered document with stubs into the JSON part of a `multipart/related` body and the
/// attachments that follow it, or `None` when no attachment travels as bytes (the document then
/// goes as plain JSON).
fn related(doc: &str, sending: Sending) -> Result<Option<(String, Follows)>, ApiError> {
    let mut value: Value = serde_json::from_str(doc)
        .map_err(|e| ApiError::Internal(format!("rendered document: {e}")))?;
    let Some(atts) = value.get_mut("_attachments").and_then(Value::as_object_mut) else {
        return Ok(None);
    };
    let mut follows = Vec::new();
    for (name, att) in atts.iter_mut() {
        let Some(obj) = att.as_object_mut() else {
            continue;
        };
        let revpos = obj
            .get("revpos")
            .and_then(Value::as_u64)
            .unwrap_or(u64::MAX);
        if revpos <= sending.known_up_to {
            continue;
        }
        let Some(digest) = obj.get("digest").and_then(Value::as_str).map(str::to_owned) else {
            continue;
        };
        let ct = obj
            .get("content_type")
            .and_then(Value::as_str)
            .unwrap_or("application/octet-stream")
            .to_owned();
        obj.shift_remove("stub");
        obj.insert("follows".into(), Value::Bool(true));
        follows.push((name.clone(), ct, digest));
    }
    if follows.is_empty() {
        return Ok(None);
    }
    Ok(Some((value.to_string(), follows)))
}

/// The pieces of one document as a `multipart/related` body with `boundary` (without the
/// closing delimiter).
fn related_pieces(boundary: &str, json: String, follows: Follows, out: &mut Vec<Piece>) {
    out.push(Piece::Ready(part_head(
        boundary,
        &[("Content-Type", "application/json")],
    )));
    out.push(Piece::Ready(Bytes::from(json)));
    out.push(Piece::Ready(Bytes::from_static(PART_END)));
    for (name, ct, digest) in follows {
        let disposition = format!(
            "attachment; filename=\"{}\"",
            name.replace('\\', "\\\\").replace('"', "\\\"")
        );
        out.push(Piece::Ready(part_head(
            boundary,
            &[("Content-Disposition", &disposition), ("Content-Type", &ct)],
        )));
        out.push(Piece::Attachment(digest));
        out.push(Piece::Ready(Bytes::from_static(PART_END)));
    }
}

/// `GET /{db}/{doc}?open_revs=...` with `Accept: multipart/mixed`.
pub fn mixed(
    state: &AppState,
    revisions: Vec<Revision>,
    attachments: bool,
    sending: Sending,
) -> Result<Response, ApiError> {
    let boundary = new_boundary();
    let mut pieces = Vec::new();
    for revision in revisions {
        match revision {
            Revision::Missing(rev) => {
                pieces.push(Piece::Ready(part_head(
                    &boundary,
                    &[("Content-Type", "application/json; error=\"true\"")],
                )));
                pieces.push(Piece::Ready(Bytes::from(
                    serde_json::json!({ "missing": rev.to_string() }).to_string(),
                )));
                pieces.push(Piece::Ready(Bytes::from_static(PART_END)));
            }
            Revision::Found(doc) => match attachments
                .then(|| related(&doc, sending))
                .transpose()?
                .flatten()
            {
                Some((json, follows)) => {
                    let inner = new_boundary();
                    let ct = content_type("related", &inner);
                    pieces.push(Piece::Ready(part_head(&boundary, &[("Content-Type", &ct)])));
                    related_pieces(&inner, json, follows, &mut pieces);
                    pieces.push(Piece::Ready(closing(&inner)));
                    pieces.push(Piece::Ready(Bytes::from_static(PART_END)));
                }
                None => {
                    pieces.push(Piece::Ready(part_head(
                        &boundary,
                        &[("Content-Type", "application/json")],
                    )));
                    pieces.push(Piece::Ready(Bytes::from(doc)));
                    pieces.push(Piece::Ready(Bytes::from_static(PART_END)));
                }
            },
        }
    }
    pieces.push(Piece::Ready(closing(&boundary)));
    Ok(stream_response(
        state,
        pieces,
        &content_type("mixed", &boundary),
    ))
}

/// `GET /{db}/{doc}?attachments=true` with `Accept: multipart/related`: `None` when no attachment
/// travels as bytes, and the document is answered as JSON.
pub fn related_response(
    state: &AppState,
    doc: &str,
    sending: Sending,
) -> Result<Option<Response>, ApiError> {
    let Some((json, follows)) = related(doc, sending)? else {
        return Ok(None);
    };
    let boundary = new_boundary();
    let mut pieces = Vec::new();
    related_pieces(&boundary, json, follows, &mut pieces);
    pieces.push(Piece::Ready(closing(&boundary)));
    Ok(Some(stream_response(
        state,
        pieces,
        &content_type("related", &boundary),
    )))
}

fn stream_response(state: &AppState, pieces: Vec<Piece>, content_type: &str) -> Response {
    let state = state.clone();
    // The pieces left, the attachment being read (a range at a time), and whether the body
    // failed and ends.
    let start = (pieces.into_iter(), None::<AttachmentReader>, false);
    let body = stream::unfold(start, move |(mut pieces, mut reading, failed)| {
        let state = state.clone();
        async move {
            if failed {
                return None;
            }
            loop {
                if let Some(mut reader) = reading.take() {
                    match reader.next().await {
                        Ok(Some(bytes)) => {
                            return Some((Ok(bytes), (pieces, Some(reader), false)));
                        }
                        Ok(None) => {}
                        Err(e) => {
                            // The status is sent already; the cut body tells the client, the
                            // log tells why.
                            tracing::error!(error = %e, "multipart answer cut short");
                            let cut = Err(std::io::Error::other("attachment read failed"));
                            return Some((cut, (pieces, None, true)));
                        }
                    }
                }
                match pieces.next()? {
                    Piece::Ready(bytes) => return Some((Ok(bytes), (pieces, None, false))),
                    // Sent as stored: gzip-encoded bytes travel encoded, their JSON saying so.
                    Piece::Attachment(digest) => {
                        reading = Some(AttachmentReader::stored(&state, &digest, 0, u64::MAX));
                    }
                }
            }
        }
    });
    let mut response = Response::new(Body::from_stream(body));
    if let Ok(v) = HeaderValue::from_str(content_type) {
        response.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    response
}

/// `atts_since=[...]` of a request, as revisions (unparseable ones are refused).
pub fn atts_since(req: &Req) -> Result<Vec<Rev>, ApiError> {
    let Some(raw) = req.query.json("atts_since")? else {
        return Ok(Vec::new());
    };
    let list = raw
        .as_array()
        .ok_or_else(|| ApiError::bad_request("atts_since must be a JSON array of revisions"))?;
    list.iter()
        .map(|v| {
            v.as_str()
                .ok_or_else(|| {
                    ApiError::bad_request("atts_since must be a JSON array of revisions")
                })
                .and_then(crate::docjson::parse_rev)
        })
        .collect()
}
