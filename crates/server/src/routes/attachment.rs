//! `/{db}/{id}/{name}`: one attachment as raw bytes.
//!
//! An attachment stored gzip-encoded is sent as stored, with `Content-Encoding: gzip`, to a
//! client whose `Accept-Encoding` takes gzip, and decoded as it is sent to any other, as
//! CouchDB does; either way it is read from the store a range at a time.

use axum::response::Response;
use http::{HeaderValue, Method, StatusCode, header};
use outpost_core::attachment::GzipError;
use outpost_core::hash;
use outpost_store::{DocUpdate, NewAttachment, Origin, UpdateMode};
use serde_json::{Map, Value};

use super::doc::{body_object, requested_rev};
use super::{json, live_winner, not_allowed, ok, with_etag, write_one};
use crate::docjson::ok_json;
use crate::request::Req;
use crate::stream::AttachmentReader;
use crate::{ApiError, AppState};

pub async fn handle(
    state: &AppState,
    db: &str,
    id: &str,
    name: &str,
    req: &mut Req,
) -> Result<Response, ApiError> {
    match req.method {
        Method::GET => get(state, db, id, name, req).await,
        Method::PUT => put(state, db, id, name, req).await,
        Method::DELETE => delete(state, db, id, name, req).await,
        _ => Err(not_allowed("Only DELETE,GET,HEAD,PUT allowed")),
    }
}

async fn get(
    state: &AppState,
    db: &str,
    id: &str,
    name: &str,
    req: &Req,
) -> Result<Response, ApiError> {
    let record = crate::access::readable_doc(state, req, db, id).await?;
    let rev = match requested_rev(req)? {
        Some(rev) => rev,
        None => live_winner(&record)?,
    };
    let body = body_object(state, db, id, &rev).await?;
    let att = body
        .get("_attachments")
        .and_then(|a| a.get(name))
        .ok_or_else(|| ApiError::NotFound("Document is missing attachment".into()))?;
    let digest = att
        .get("digest")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let content_type = att
        .get("content_type")
        .and_then(Value::as_str)
        .unwrap_or("application/octet-stream");
    let length = att.get("length").and_then(Value::as_u64).unwrap_or(0);
    let encoded_length = outpost_core::attachment::encoded_length(att);
    // As CouchDB, the codings the client takes are read before anything else is answered.
    let accepted = crate::encoding::accepted(&req.headers)
        .ok_or_else(|| ApiError::bad_request("invalid Accept-Encoding header"))?;
    if !accepted.gzip && !accepted.identity {
        return Err(ApiError::NotAcceptable("unsupported encoding".into()));
    }
    // CouchDB's attachment ETag: the base64 MD5, without the `md5-` prefix of the digest. It is
    // the digest of the bytes stored, so the same whichever coding they are sent in.
    let etag = format!("\"{}\"", digest.strip_prefix("md5-").unwrap_or(digest));
    if super::doc::if_none_match(req, &etag.trim_matches('"')) {
        let mut response = super::doc::not_modified();
        if let Ok(v) = HeaderValue::from_str(&etag) {
            response.headers_mut().insert(header::ETAG, v);
        }
        return Ok(response);
    }
    let (status, reader, sent_length, content_range, coding) = match encoded_length {
        // Stored encoded, and the client takes gzip: the stored bytes as they are. As in CouchDB
        // an encoded attachment is not served by ranges (`Accept-Ranges: none`).
        Some(stored) if accepted.gzip => (
            StatusCode::OK,
            AttachmentReader::stored(state, digest, 0, u64::MAX),
            stored,
            None,
            Some("gzip"),
        ),
        // Stored encoded, and the client wants identity: decoded as it is sent.
        Some(_) => (
            StatusCode::OK,
            AttachmentReader::decoded(state, digest),
            length,
            None,
            None,
        ),
        None => match requested_range(req, length) {
            RangeAsked::Whole => (
                StatusCode::OK,
                AttachmentReader::stored(state, digest, 0, u64::MAX),
                length,
                None,
                None,
            ),
            RangeAsked::Part(start, end) => (
                StatusCode::PARTIAL_CONTENT,
                AttachmentReader::stored(state, digest, start, end + 1),
                end + 1 - start,
                Some(format!("bytes {start}-{end}/{length}")),
                None,
            ),
            RangeAsked::Unsatisfiable => (
                StatusCode::RANGE_NOT_SATISFIABLE,
                AttachmentReader::stored(state, digest, 0, 0),
                0,
                Some(format!("bytes */{length}")),
                None,
            ),
        },
    };
    let mut response = Response::new(reader.into_body());
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(content_type)
            .unwrap_or(HeaderValue::from_static("application/octet-stream")),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(sent_length));
    if let Ok(v) = HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, v);
    }
    if let Some(coding) = coding {
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static(coding));
    }
    if let Some(range) = content_range.and_then(|r| HeaderValue::from_str(&r).ok()) {
        headers.insert(header::CONTENT_RANGE, range);
    }
    let ranges = if encoded_length.is_some() {
        "none"
    } else {
        "bytes"
    };
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static(ranges));
    Ok(response)
}

/// What a `Range` header asks of an attachment of `total` bytes.
#[derive(Debug, PartialEq, Eq)]
enum RangeAsked {
    /// No range, one that is not `bytes`, or several ranges (answered whole, as RFC 9110
    /// allows).
    Whole,
    /// One range, inclusive byte positions within the attachment.
    Part(u64, u64),
    /// One range that starts past the end.
    Unsatisfiable,
}

fn requested_range(req: &Req, total: u64) -> RangeAsked {
    let Some(spec) = req
        .headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().strip_prefix("bytes="))
    else {
        return RangeAsked::Whole;
    };
    parse_range(spec, total)
}

fn parse_range(spec: &str, total: u64) -> RangeAsked {
    if spec.contains(',') {
        return RangeAsked::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeAsked::Whole;
    };
    let parse = |s: &str| s.trim().parse::<u64>().ok();
    let (start, end) = match (first.trim().is_empty(), parse(first), parse(last)) {
        // `bytes=-N`: the last N bytes.
        (true, _, Some(n)) if n > 0 => (total.saturating_sub(n), total.saturating_sub(1)),
        (false, Some(start), None) if last.trim().is_empty() => (start, total.saturating_sub(1)),
        (false, Some(start), Some(end)) if start <= end => {
            (start, end.min(total.saturating_sub(1)))
        }
        _ => return RangeAsked::Whole,
    };
    if start >= total {
        return RangeAsked::Unsatisfiable;
    }
    RangeAsked::Part(start, end)
}

async fn put(
    state: &AppState,
    db: &str,
    id: &str,
    name: &str,
    req: &mut Req,
) -> Result<Response, ApiError> {
    if name.starts_with('_') {
        return Err(ApiError::bad_request(
            "Attachment name can't start with '_'",
        ));
    }
    let base = requested_rev(req)?;
    let content_type = req
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/octet-stream")
        .to_owned();
    let (data, gzip) = req.attachment_bytes().await?;
    let received = if gzip {
        // Kept encoded, as CouchDB keeps it; checked whole here (a stream cut short or failing
        // its checksum is refused now, not served broken later) and measured, since the stub's
        // `length` is the size of the identity bytes.
        let limit = state.config.max_attachment_size as u64;
        let checked = data.clone();
        let length = tokio::task::spawn_blocking(move || {
            outpost_core::attachment::identity_length(&checked, limit)
        })
        .await
        .map_err(|e| ApiError::Internal(format!("gzip check failed: {e}")))?;
        let length = length.map_err(|e| match e {
            GzipError::TooLarge(_) => ApiError::AttachmentTooLarge(name.to_owned()),
            GzipError::Corrupt => ApiError::bad_request(format!(
                "attachment {name} is sent with Content-Encoding: gzip but is not valid gzip"
            )),
        })?;
        Received::Gzip {
            data: data.into(),
            length,
        }
    } else {
        if data.len() > state.config.max_attachment_size {
            return Err(ApiError::AttachmentTooLarge(name.to_owned()));
        }
        Received::Identity(data.into())
    };
    let mut body = match &base {
        Some(rev) => body_object(state, db, id, rev).await.map_err(|e| match e {
            ApiError::NotFound(_) => ApiError::Conflict,
            other => other,
        })?,
        None => Map::new(),
    };
    let attachment = attach(&mut body, id, name, content_type, received)?;
    let update = DocUpdate {
        id: id.to_owned(),
        mode: UpdateMode::Edit { base },
        deleted: false,
        body,
        new_attachments: vec![attachment],
        origin: Origin::Client,
    };
    let rev = write_one(state, db, update, req).await?;
    Ok(with_etag(
        json(StatusCode::CREATED, ok_json(id, &rev)),
        &rev,
    ))
}

/// An attachment's bytes as a client sent them.
pub enum Received {
    /// The attachment itself.
    Identity(Vec<u8>),
    /// Gzip-encoded (checked), with the length of the identity bytes.
    Gzip { data: Vec<u8>, length: u64 },
}

/// Adds (or replaces) attachment `name` of document `id`'s body with the bytes received, and
/// returns them for the store to keep. Bytes received encoded are stored as they came, the
/// entry saying so; identity bytes may be compressed on their way to the store
/// ([`crate::encoding::compress_new_attachments`]).
pub fn attach(
    body: &mut Map<String, Value>,
    id: &str,
    name: &str,
    content_type: String,
    received: Received,
) -> Result<NewAttachment, ApiError> {
    use outpost_core::attachment::{ENCODED_LENGTH, ENCODING, GZIP};
    let (data, length, encoded) = match received {
        Received::Identity(data) => {
            let length = data.len() as u64;
            (data, length, false)
        }
        Received::Gzip { data, length } => (data, length, true),
    };
    let digest = hash::attachment_digest(&data);
    let mut entry = Map::new();
    entry.insert("content_type".into(), Value::String(content_type));
    entry.insert("digest".into(), Value::String(digest.clone()));
    entry.insert("length".into(), Value::from(length));
    if encoded {
        entry.insert(ENCODING.into(), Value::String(GZIP.into()));
        entry.insert(ENCODED_LENGTH.into(), Value::from(data.len()));
    }
    let atts = body
        .entry("_attachments")
        .or_insert_with(|| Value::Object(Map::new()));
    let Some(atts) = atts.as_object_mut() else {
        return Err(ApiError::Internal(format!(
            "stored _attachments of {id} is not an object"
        )));
    };
    atts.insert(name.to_owned(), Value::Object(entry));
    Ok(NewAttachment { digest, data })
}

async fn delete(
    state: &AppState,
    db: &str,
    id: &str,
    name: &str,
    req: &mut Req,
) -> Result<Response, ApiError> {
    let Some(base) = requested_rev(req)? else {
        crate::access::readable_doc(state, req, db, id).await?;
        return Err(ApiError::Conflict);
    };
    let mut body = body_object(state, db, id, &base).await?;
    // As in CouchDB, deleting an attachment the revision does not have still writes a new
    // revision without it.
    if let Some(atts) = body.get_mut("_attachments").and_then(Value::as_object_mut) {
        atts.shift_remove(name);
    }
    if body
        .get("_attachments")
        .and_then(Value::as_object)
        .is_some_and(Map::is_empty)
    {
        body.shift_remove("_attachments");
    }
    let update = DocUpdate {
        id: id.to_owned(),
        mode: UpdateMode::Edit { base: Some(base) },
        deleted: false,
        body,
        new_attachments: Vec::new(),
        origin: Origin::Client,
    };
    let rev = write_one(state, db, update, req).await?;
    Ok(with_etag(ok(ok_json(id, &rev)), &rev))
}

#[cfg(test)]
mod tests {
    use super::{RangeAsked, parse_range};

    #[test]
    fn ranges_as_rfc_9110_reads_them() {
        for (spec, expect) in [
            ("0-4", RangeAsked::Part(0, 4)),
            ("5-", RangeAsked::Part(5, 9)),
            ("-3", RangeAsked::Part(7, 9)),
            ("-30", RangeAsked::Part(0, 9)),
            ("2-100", RangeAsked::Part(2, 9)),
            ("10-12", RangeAsked::Unsatisfiable),
            ("4-2", RangeAsked::Whole),
            ("0-1,3-4", RangeAsked::Whole),
            ("x-y", RangeAsked::Whole),
            ("-0", RangeAsked::Whole),
        ] {
            assert_eq!(parse_range(spec, 10), expect, "{spec}");
        }
    }
}
