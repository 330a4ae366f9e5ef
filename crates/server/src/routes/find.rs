//! Mango: `POST /{db}/_find`, `POST /{db}/_explain`, `GET|POST /{db}/_index` and
//! `DELETE /{db}/_index/{ddoc}/json/{name}`. Planning and execution live in `outpost-query`;
//! this file only reads requests and writes answers.

use axum::response::Response;
use http::Method;
use http::StatusCode;
use outpost_query::{FindCursor, FindRequest, QueryError};

use super::{not_allowed, ok};
use crate::request::Req;
use crate::stream;
use crate::{ApiError, AppState};

impl From<QueryError> for ApiError {
    fn from(e: QueryError) -> ApiError {
        match e {
            QueryError::BadRequest(reason) => ApiError::BadRequest(reason),
            QueryError::MissingKey(_) => ApiError::MissingRequiredKey(e.to_string()),
            QueryError::NoUsableIndex(reason) => ApiError::NoUsableIndex(reason),
            QueryError::MixedSort => ApiError::UnsupportedMixedSort(e.to_string()),
            QueryError::InvalidBookmark(_) => ApiError::InvalidBookmark(e.to_string()),
            QueryError::IndexNotFound => ApiError::NotFound(e.to_string()),
            QueryError::Conflict => ApiError::Conflict,
            QueryError::Store(e) => e.into(),
        }
    }
}

async fn request(req: &mut Req) -> Result<FindRequest, ApiError> {
    let body = req.json().await?;
    Ok(FindRequest::parse(&body)?)
}

/// `POST /{db}/_find`.
pub async fn find(state: &AppState, db: &str, req: &mut Req) -> Result<Response, ApiError> {
    if req.method != Method::POST {
        return Err(not_allowed("POST"));
    }
    let query = request(req).await?;
    // Everything that decides the status happens here; the documents are then streamed.
    let mut cursor = FindCursor::open(state.store.clone(), db, query).await?;
    if let Some(reader) = crate::access::reader(state, req, db).await? {
        cursor = cursor.for_reader(reader.principals);
    }
    Ok(stream::respond(
        state,
        StatusCode::OK,
        move |mut out| async move {
            out.write("{\"docs\":[\n").await?;
            let mut first = true;
            while let Some(batch) = cursor.next_batch().await.map_err(ApiError::from)? {
                for doc in batch {
                    if !first {
                        out.write(",\n").await?;
                    }
                    first = false;
                    out.write(&doc.to_string()).await?;
                }
            }
            out.write("\n]").await?;
            out.write(&cursor.trailer()).await?;
            out.write("}\n").await?;
            Ok(out)
        },
    ))
}

/// `POST /{db}/_explain`.
pub async fn explain(state: &AppState, db: &str, req: &mut Req) -> Result<Response, ApiError> {
    if req.method != Method::POST {
        return Err(not_allowed("POST"));
    }
    let query = request(req).await?;
    let answer = outpost_query::explain(state.store.as_ref(), db, &query).await?;
    Ok(ok(answer.to_string()))
}

/// `GET|POST /{db}/_index`.
pub async fn index(state: &AppState, db: &str, req: &mut Req) -> Result<Response, ApiError> {
    match req.method {
        Method::GET => {
            let skip = req.query.u64("skip")?.unwrap_or(0);
            let limit = req.query.u64("limit")?;
            let answer = outpost_query::list_indexes(state.store.as_ref(), db, skip, limit).await?;
            Ok(ok(answer.to_string()))
        }
        Method::POST => {
            let body = req.json().await?;
            let answer = outpost_query::create_index(state.store.as_ref(), db, &body).await?;
            Ok(ok(answer.to_string()))
        }
        _ => Err(not_allowed("GET,POST")),
    }
}

/// `DELETE /{db}/_index/{ddoc}/json/{name}` (the design document with or without its
/// `_design/` prefix).
pub async fn delete_index(
    state: &AppState,
    db: &str,
    rest: &[&str],
    req: &Req,
) -> Result<Response, ApiError> {
    if req.method != Method::DELETE {
        return Err(not_allowed("DELETE"));
    }
    let (ddoc, name) = match rest {
        ["_design", ddoc, "json", name] | [ddoc, "json", name] => (*ddoc, *name),
        _ => {
            return Err(ApiError::bad_request(
                "expected /{db}/_index/{ddoc}/json/{name}",
            ));
        }
    };
    outpost_query::delete_index(state.store.as_ref(), db, ddoc, name).await?;
    Ok(ok(r#"{"ok":true}"#.to_owned()))
}
