//! `/{db}/{id}/{name}`: one attachment as raw bytes.

use axum::body::Body;
use axum::response::Response;
use http::{HeaderValue, Method, StatusCode, header};
use outpost_core::{Rev, hash};
use outpost_store::{DocUpdate, NewAttachment, Origin, UpdateMode};
use serde_json::{Map, Value};

use super::doc::stored_body;
use super::{json, load_doc, not_allowed, ok, with_etag, write_one};
use crate::dispatch::Req;
use crate::docjson::{ok_json, parse_rev};
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

fn requested_rev(req: &Req) -> Result<Option<Rev>, ApiError> {
    match req.query.get("rev") {
        Some(r) => parse_rev(r).map(Some),
        None => match req
            .headers
            .get(header::IF_MATCH)
            .and_then(|v| v.to_str().ok())
        {
            Some(v) => parse_rev(v.trim().trim_matches('"')).map(Some),
            None => Ok(None),
        },
    }
}

/// The body of a revision as a JSON object.
async fn body_of(
    state: &AppState,
    db: &str,
    id: &str,
    rev: &Rev,
) -> Result<Map<String, Value>, ApiError> {
    let stored = stored_body(state, db, id, rev)
        .await?
        .ok_or_else(ApiError::missing)?;
    match serde_json::from_str(&stored.json) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(ApiError::Internal(format!(
            "stored body of {id} {rev} is not an object"
        ))),
    }
}

async fn get(
    state: &AppState,
    db: &str,
    id: &str,
    name: &str,
    req: &Req,
) -> Result<Response, ApiError> {
    let record = load_doc(state, db, id).await?;
    let rev = match requested_rev(req)? {
        Some(rev) => rev,
        None => {
            let winner = record.tree.winner().ok_or_else(ApiError::missing)?;
            if winner.deleted {
                return Err(ApiError::NotFound("deleted".into()));
            }
            winner.rev
        }
    };
    let body = body_of(state, db, id, &rev).await?;
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
    let data =
        state.store.attachment(digest).await?.ok_or_else(|| {
            ApiError::Internal(format!("attachment {digest} missing from the store"))
        })?;
    let mut response = Response::new(Body::from(data));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(content_type)
            .unwrap_or(HeaderValue::from_static("application/octet-stream")),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("\"{digest}\"")) {
        headers.insert(header::ETAG, v);
    }
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("none"));
    Ok(response)
}

async fn put(
    state: &AppState,
    db: &str,
    id: &str,
    name: &str,
    req: &mut Req,
) -> Result<Response, ApiError> {
    let base = requested_rev(req)?;
    let content_type = req
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/octet-stream")
        .to_owned();
    let data = req.bytes().await?.to_vec();
    let mut body = match &base {
        Some(rev) => body_of(state, db, id, rev).await.map_err(|e| match e {
            ApiError::NotFound(_) => ApiError::Conflict,
            other => other,
        })?,
        None => Map::new(),
    };
    let digest = hash::attachment_digest(&data);
    let mut entry = Map::new();
    entry.insert("content_type".into(), Value::String(content_type));
    entry.insert("digest".into(), Value::String(digest.clone()));
    entry.insert("length".into(), Value::from(data.len()));
    let atts = body
        .entry("_attachments")
        .or_insert_with(|| Value::Object(Map::new()));
    let Some(atts) = atts.as_object_mut() else {
        return Err(ApiError::Internal(format!(
            "stored _attachments of {id} is not an object"
        )));
    };
    atts.insert(name.to_owned(), Value::Object(entry));
    let update = DocUpdate {
        id: id.to_owned(),
        mode: UpdateMode::Edit { base },
        deleted: false,
        body,
        new_attachments: vec![NewAttachment { digest, data }],
        origin: Origin::Client,
    };
    let rev = write_one(state, db, update).await?;
    Ok(with_etag(
        json(StatusCode::CREATED, ok_json(id, &rev)),
        &rev,
    ))
}

async fn delete(
    state: &AppState,
    db: &str,
    id: &str,
    name: &str,
    req: &mut Req,
) -> Result<Response, ApiError> {
    let Some(base) = requested_rev(req)? else {
        load_doc(state, db, id).await?;
        return Err(ApiError::Conflict);
    };
    let mut body = body_of(state, db, id, &base).await?;
    let removed = body
        .get_mut("_attachments")
        .and_then(Value::as_object_mut)
        .and_then(|atts| atts.remove(name));
    if removed.is_none() {
        return Err(ApiError::NotFound("Document is missing attachment".into()));
    }
    if body
        .get("_attachments")
        .and_then(Value::as_object)
        .is_some_and(Map::is_empty)
    {
        body.remove("_attachments");
    }
    let update = DocUpdate {
        id: id.to_owned(),
        mode: UpdateMode::Edit { base: Some(base) },
        deleted: false,
        body,
        new_attachments: Vec::new(),
        origin: Origin::Client,
    };
    let rev = write_one(state, db, update).await?;
    Ok(with_etag(ok(ok_json(id, &rev)), &rev))
}
