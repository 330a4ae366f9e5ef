//! `POST /{db}/{id}` with a `multipart/form-data` body: attachments uploaded from an HTML form,
//! as Futon and Fauxton do and as CouchDB accepts (`couch_httpd_db`, `db_doc_req` for POST).
//!
//! The form carries `_rev` (the revision to add the attachments to; without it the document is
//! created) and one `_attachments` file field per attachment, named by its file name, typed by
//! its part's content type. Other fields are ignored, as CouchDB ignores them. A form can be
//! posted across sites without a CORS preflight, so, like CouchDB, the request must carry a
//! `Referer` naming this host.

use axum::response::Response;
use futures::stream;
use http::{StatusCode, header};
use outpost_store::{DocUpdate, Origin, UpdateMode};
use serde_json::Map;

use super::attachment::{Received, attach};
use super::doc::body_object;
use super::{json, with_etag, write_one};
use crate::docjson::{ok_json, parse_rev};
use crate::request::Req;
use crate::{ApiError, AppState};

pub async fn post(
    state: &AppState,
    db: &str,
    id: &str,
    req: &mut Req,
) -> Result<Response, ApiError> {
    check_referer(req)?;
    let content_type = req
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let boundary = multer::parse_boundary(content_type)
        .map_err(|_| ApiError::bad_request("multipart/form-data without a boundary"))?;
    let body = req.bytes().await?;
    let mut form = multer::Multipart::new(
        stream::once(async move { Ok::<_, std::io::Error>(body) }),
        boundary,
    );
    let malformed = |e: multer::Error| ApiError::bad_request(format!("invalid form: {e}"));
    let mut rev = None;
    let mut files = Vec::new();
    while let Some(field) = form.next_field().await.map_err(malformed)? {
        match field.name() {
            Some("_rev") => rev = Some(parse_rev(field.text().await.map_err(malformed)?.trim())?),
            Some("_doc") => {
                return Err(ApiError::bad_request(
                    "a _doc field is not supported; send the document with PUT",
                ));
            }
            Some("_attachments") => {
                let Some(name) = field.file_name().map(str::to_owned) else {
                    continue;
                };
                if name.is_empty() {
                    // An HTML form's file input left empty.
                    continue;
                }
                if name.starts_with('_') {
                    return Err(ApiError::bad_request(
                        "Attachment name can't start with '_'",
                    ));
                }
                let content_type = field
                    .content_type()
                    .map(|m| m.essence_str().to_owned())
                    .unwrap_or_else(|| "application/octet-stream".into());
                let data = field.bytes().await.map_err(malformed)?.to_vec();
                if data.len() > state.config.max_attachment_size {
                    return Err(ApiError::AttachmentTooLarge(name));
                }
                files.push((name, content_type, data));
            }
            _ => {}
        }
    }
    let mut body = match &rev {
        Some(rev) => body_object(state, db, id, rev).await.map_err(|e| match e {
            ApiError::NotFound(_) => ApiError::Conflict,
            other => other,
        })?,
        None => Map::new(),
    };
    let mut new_attachments = Vec::new();
    for (name, content_type, data) in files {
        new_attachments.push(attach(
            &mut body,
            id,
            &name,
            content_type,
            Received::Identity(data),
        )?);
    }
    let update = DocUpdate {
        id: id.to_owned(),
        mode: UpdateMode::Edit { base: rev },
        deleted: false,
        body,
        new_attachments,
        origin: Origin::Client,
    };
    let rev = write_one(state, db, update, req).await?;
    Ok(with_etag(
        json(StatusCode::CREATED, ok_json(id, &rev)),
        &rev,
    ))
}

/// CouchDB's `validate_referer`: a form post must come from a page of this server.
fn check_referer(req: &Req) -> Result<(), ApiError> {
    let header_str = |name| req.headers.get(name).and_then(|v| v.to_str().ok());
    let Some(referer) = header_str(header::REFERER) else {
        return Err(ApiError::bad_request("Referer header required."));
    };
    let host = header_str(header::HOST).unwrap_or_default();
    let referer_host = referer.split_once("://").map_or("", |(_, rest)| {
        rest.split(['/', '?', '#']).next().unwrap_or("")
    });
    if referer_host.is_empty() || !referer_host.eq_ignore_ascii_case(host) {
        return Err(ApiError::bad_request("Referer header must match host."));
    }
    Ok(())
}
