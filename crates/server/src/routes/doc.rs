//! `/{db}/{id}`: read, write and delete one document.

use axum::response::Response;
use http::{Method, StatusCode, header};
use std::collections::HashMap;

use axum::body::Bytes;
use outpost_core::Rev;
use outpost_store::{DocRecord, Origin, StoredBody, UpdateMode};
use serde_json::{Map, Value};

use super::{
    doc_form, doc_multipart, json, live_winner, load_doc, not_allowed, ok, with_etag, write_one,
};
use crate::docjson::{
    RenderOpts, Rendered, ok_json, parse_doc_with_parts, parse_rev, render, render_parts,
};
use crate::multipart;
use crate::request::{Req, media_type};
use crate::{ApiError, AppState};

pub async fn handle(
    state: &AppState,
    db: &str,
    id: &str,
    req: &mut Req,
) -> Result<Response, ApiError> {
    match req.method {
        Method::GET => get(state, db, id, req).await,
        Method::PUT => put(state, db, id, req).await,
        Method::DELETE => delete(state, db, id, req).await,
        Method::POST => {
            let content_type = req
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(media_type);
            if content_type.as_deref() != Some("multipart/form-data") {
                return Err(ApiError::BadContentType(
                    "Content-Type must be multipart/form-data".into(),
                ));
            }
            doc_form::post(state, db, id, req).await
        }
        ref m if m.as_str() == "COPY" => copy(state, db, id, req).await,
        _ => Err(not_allowed("Only DELETE,GET,HEAD,POST,PUT,COPY allowed")),
    }
}

/// The read options shared by `GET /{db}/{id}` and `_bulk_get`.
pub fn render_opts(req: &Req) -> Result<RenderOpts, ApiError> {
    let q = &req.query;
    let meta = q.flag("meta")?;
    Ok(RenderOpts {
        revs: q.flag("revs")?,
        revs_info: q.flag("revs_info")? || meta,
        conflicts: q.flag("conflicts")? || meta,
        deleted_conflicts: q.flag("deleted_conflicts")? || meta,
        attachments: q.flag("attachments")?,
        local_seq: q.flag("local_seq")?,
        att_encoding_info: q.flag("att_encoding_info")?,
    })
}

/// The `If-Match` revision, as CouchDB accepts it in place of `?rev=`.
fn if_match(req: &Req) -> Result<Option<Rev>, ApiError> {
    match req
        .headers
        .get(header::IF_MATCH)
        .and_then(|v| v.to_str().ok())
    {
        None => Ok(None),
        Some(v) => parse_rev(v.trim().trim_matches('"')).map(Some),
    }
}

/// The revision a write names in `?rev=` or `If-Match`; both given must agree, as in CouchDB.
pub fn requested_rev(req: &Req) -> Result<Option<Rev>, ApiError> {
    let query = req.query.get("rev").map(parse_rev).transpose()?;
    match (query, if_match(req)?) {
        (Some(q), Some(h)) if q != h => Err(ApiError::bad_request(
            "Document rev and etag have different values",
        )),
        (Some(rev), _) | (None, Some(rev)) => Ok(Some(rev)),
        (None, None) => Ok(None),
    }
}

async fn get(state: &AppState, db: &str, id: &str, req: &Req) -> Result<Response, ApiError> {
    let opts = render_opts(req)?;
    let latest = req.query.flag("latest")?;
    let reader = crate::access::reader(state, req, db).await?;
    if let Some(open_revs) = req.query.get("open_revs") {
        let listed: Option<Vec<Rev>> = if open_revs == "all" {
            None
        } else {
            let parsed: Value = serde_json::from_str(open_revs).map_err(|_| {
                ApiError::bad_request("open_revs must be \"all\" or a JSON array of revisions")
            })?;
            let list = parsed.as_array().ok_or_else(|| {
                ApiError::bad_request("open_revs must be \"all\" or a JSON array of revisions")
            })?;
            list.iter()
                .map(|v| {
                    v.as_str()
                        .ok_or_else(|| ApiError::bad_request("Invalid rev format"))
                        .and_then(parse_rev)
                })
                .collect::<Result<_, _>>()
                .map(Some)?
        };
        let found = state.store.doc(db, id).await?;
        let seen = crate::access::see_one(state, reader.as_ref(), db, found).await?;
        let revoked = matches!(seen, crate::access::Seen::Revoked(_));
        let record = match (seen.record(), &listed) {
            (Some(record), _) => record,
            // Revisions asked for by name are each answered, even of a missing document, as
            // CouchDB does; `all` of a missing document is a 404.
            (None, Some(listed)) => {
                let entries: Vec<String> = listed
                    .iter()
                    .map(|rev| serde_json::json!({ "missing": rev.to_string() }).to_string())
                    .collect();
                return Ok(ok(format!("[{}]", entries.join(","))));
            }
            (None, None) => return Err(ApiError::missing()),
        };
        crate::observe::documents_read(1);
        let wanted =
            listed.unwrap_or_else(|| record.tree.leaves().into_iter().map(|l| l.rev).collect());
        if doc_multipart::accepts(req, "mixed") {
            // Attachments follow as raw bytes instead of base64 inside the JSON, as stored.
            let stubs = RenderOpts {
                attachments: false,
                att_encoding_info: true,
                ..opts.clone()
            };
            let entries = if revoked {
                crate::access::revoked_entries(state, db, &record, &wanted, latest, &stubs).await?
            } else {
                open_revs_entries(state, db, &record, &wanted, latest, &stubs).await?
            };
            let mut revisions = Vec::with_capacity(entries.len());
            for entry in entries {
                revisions.push(match entry {
                    // Without inlined attachments this reads nothing more.
                    OpenRev::Found(doc) => {
                        doc_multipart::Revision::Found(doc.into_string(state).await?)
                    }
                    OpenRev::Missing(rev) => doc_multipart::Revision::Missing(rev),
                });
            }
            let since = doc_multipart::atts_since(req)?;
            let sending = doc_multipart::sending(&since, &record.tree);
            // As CouchDB does, a multipart answer always carries the attachments (CouchDB's
            // replicator does not ask with `attachments=true`); `atts_since` leaves out what the
            // client has.
            return doc_multipart::mixed(state, revisions, true, sending);
        }
        let entries = if revoked {
            crate::access::revoked_entries(state, db, &record, &wanted, latest, &opts).await?
        } else {
            open_revs_entries(state, db, &record, &wanted, latest, &opts).await?
        };
        // Streamed: every leaf with its attachments inlined can be large.
        let state2 = state.clone();
        return Ok(crate::stream::respond(
            state,
            StatusCode::OK,
            move |mut out| async move {
                out.write("[").await?;
                for (i, entry) in entries.into_iter().enumerate() {
                    if i > 0 {
                        out.write(",").await?;
                    }
                    match entry {
                        OpenRev::Found(doc) => {
                            out.write("{\"ok\":").await?;
                            doc.write(&state2, &mut out).await?;
                            out.write("}").await?;
                        }
                        OpenRev::Missing(rev) => {
                            let missing = serde_json::json!({ "missing": rev.to_string() });
                            out.write(&missing.to_string()).await?;
                        }
                    }
                }
                out.write("]").await?;
                Ok(out)
            },
        ));
    }
    let rev = match req.query.get("rev") {
        Some(r) => Some(parse_rev(r)?),
        None => if_match(req)?,
    };
    let record = load_doc(state, db, id).await?;
    let (record, revoked) =
        match crate::access::see_one(state, reader.as_ref(), db, Some(record)).await? {
            crate::access::Seen::Hidden => return Err(ApiError::missing()),
            crate::access::Seen::Full(record) => (record, false),
            crate::access::Seen::Revoked(record) => (record, true),
        };
    let rev = match rev {
        Some(rev) if latest => record
            .tree
            .latest(&rev)
            .into_iter()
            .next()
            .ok_or_else(ApiError::missing)?,
        // A revision stemmed out of the tree by `_revs_limit` is gone, as in CouchDB, even
        // while its body waits for compaction.
        Some(rev) if !record.tree.contains(&rev) => return Err(ApiError::missing()),
        Some(rev) => rev,
        None => live_winner(&record)?,
    };
    let body = if revoked {
        // Only the revision that took the document away is there for a former reader.
        if record.tree.winner().map(|w| w.rev).as_ref() != Some(&rev) {
            return Err(ApiError::missing());
        }
        crate::access::revoked_body()
    } else {
        stored_body(state, db, id, &rev)
            .await?
            .ok_or_else(ApiError::missing)?
    };
    // A client that holds this revision already is told so without the body, when nothing
    // else was asked for that could change the answer.
    if !opts.revs
        && !opts.revs_info
        && !opts.conflicts
        && !opts.deleted_conflicts
        && !opts.local_seq
        && if_none_match(req, &rev)
    {
        return Ok(with_etag(not_modified(), &rev));
    }
    if opts.attachments && doc_multipart::accepts(req, "related") {
        let stubs = RenderOpts {
            attachments: false,
            att_encoding_info: true,
            ..opts.clone()
        };
        let text = render(state, db, id, &record.tree, record.seq, &rev, &body, &stubs).await?;
        let since = doc_multipart::atts_since(req)?;
        let sending = doc_multipart::sending(&since, &record.tree);
        if let Some(response) = doc_multipart::related_response(state, &text, sending)? {
            return Ok(with_etag(response, &rev));
        }
    }
    let doc = render_parts(state, db, id, &record.tree, record.seq, &rev, &body, &opts).await?;
    if !doc.inlines() {
        return Ok(with_etag(ok(doc.into_string(state).await?), &rev));
    }
    // Inlined attachments are streamed, read and encoded a range at a time.
    let state2 = state.clone();
    let response = crate::stream::respond(state, StatusCode::OK, move |mut out| async move {
        doc.write(&state2, &mut out).await?;
        Ok(out)
    });
    Ok(with_etag(response, &rev))
}

/// Whether `If-None-Match` names `rev` (as the `ETag` of a document gives it, quoted).
pub fn if_none_match(req: &Req, rev: &impl std::fmt::Display) -> bool {
    let wanted = rev.to_string();
    req.headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|tag| {
            let tag = tag.trim();
            tag == "*" || tag.trim_start_matches("W/").trim_matches('"') == wanted
        })
}

/// `304 Not Modified`, without a body.
pub fn not_modified() -> Response {
    let mut response = Response::new(axum::body::Body::empty());
    *response.status_mut() = StatusCode::NOT_MODIFIED;
    response
}

/// A `multipart/related` document body, as CouchDB's replicator sends documents with
/// attachments: the JSON document first, then one part per attachment marked `"follows": true`,
/// matched by its `Content-Disposition` filename or else by order.
async fn related_body(
    req: &mut Req,
    content_type: &str,
) -> Result<(Value, HashMap<String, Bytes>), ApiError> {
    let boundary =
        multipart::boundary(content_type).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let bytes = req.bytes().await?;
    let mut parts = multipart::parse(&bytes, &boundary)
        .map_err(|e| ApiError::bad_request(e.to_string()))?
        .into_iter();
    let doc = parts
        .next()
        .ok_or_else(|| ApiError::bad_request("multipart/related body without a document"))?;
    let doc: Value = serde_json::from_slice(&doc.body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON in the document part: {e}")))?;
    let mut waiting: Vec<String> = doc
        .get("_attachments")
        .and_then(Value::as_object)
        .map(|atts| {
            atts.iter()
                .filter(|(_, a)| a.get("follows").and_then(Value::as_bool) == Some(true))
                .map(|(name, _)| name.clone())
                .collect()
        })
        .unwrap_or_default();
    let mut by_name = HashMap::new();
    for part in parts {
        let named = part
            .filename()
            .and_then(|f| waiting.iter().position(|w| *w == f));
        let index = match named {
            Some(i) => i,
            None if !waiting.is_empty() => 0,
            None => {
                return Err(ApiError::bad_request(
                    "multipart/related body has more parts than attachments that follow",
                ));
            }
        };
        by_name.insert(waiting.remove(index), part.body);
    }
    Ok((doc, by_name))
}

/// Where a written document can be read, for the `Location` of a 201, as CouchDB gives it: an
/// absolute URL when the request named its host.
pub fn location(req: &Req, db: &str, id: &str) -> Option<http::HeaderValue> {
    use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
    let encode = |s: &str| utf8_percent_encode(s, NON_ALPHANUMERIC).to_string();
    // `_design/x` keeps its slash, as CouchDB writes it.
    let id = match id.split_once('/') {
        Some((prefix @ ("_design" | "_local"), rest)) => format!("{prefix}/{}", encode(rest)),
        _ => encode(id),
    };
    let path = format!("/{}/{id}", encode(db));
    let url = match req.headers.get(header::HOST).and_then(|h| h.to_str().ok()) {
        Some(host) if !host.contains(['/', ' ']) => format!("http://{host}{path}"),
        _ => path,
    };
    http::HeaderValue::from_str(&url).ok()
}

/// `COPY /{db}/{id}` with a `Destination: newid` (or `newid?rev=R` to overwrite revision `R`):
/// the source's current (or `?rev=`) revision written as a new revision of the destination,
/// attachments included.
async fn copy(state: &AppState, db: &str, id: &str, req: &mut Req) -> Result<Response, ApiError> {
    let destination = req
        .headers
        .get("destination")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| ApiError::bad_request("Destination header is mandatory for COPY."))?;
    let (dest_id, dest_rev) = match destination.split_once('?') {
        None => (destination, None),
        Some((dest, query)) => {
            let rev = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("rev="))
                .map(parse_rev)
                .transpose()?;
            (dest, rev)
        }
    };
    let dest_id = percent_encoding::percent_decode_str(dest_id)
        .decode_utf8()
        .map_err(|_| ApiError::bad_request("Destination is not valid percent-encoded UTF-8"))?
        .into_owned();
    if dest_id.is_empty() {
        return Err(ApiError::bad_request(
            "Destination header is mandatory for COPY.",
        ));
    }
    let record = crate::access::readable_doc(state, req, db, id).await?;
    let rev = match req.query.get("rev") {
        Some(r) => parse_rev(r)?,
        None => live_winner(&record)?,
    };
    if record.tree.is_deleted_rev(&rev) == Some(true) {
        return Err(ApiError::missing());
    }
    let mut fields = body_object(state, db, id, &rev).await?;
    // The copy's attachments are the source's: each stub is made whole again so that it is
    // stored against the destination as a new revision's attachment.
    let mut new_attachments = Vec::new();
    if let Some(Value::Object(atts)) = fields.get_mut("_attachments") {
        for att in atts.values_mut() {
            let Some(obj) = att.as_object_mut() else {
                continue;
            };
            let Some(digest) = obj.get("digest").and_then(Value::as_str).map(str::to_owned) else {
                continue;
            };
            let data = state.store.attachment(&digest).await?.ok_or_else(|| {
                ApiError::Internal(format!("attachment {digest} missing from the store"))
            })?;
            obj.shift_remove("stub");
            obj.shift_remove("revpos");
            new_attachments.push(outpost_store::NewAttachment { digest, data });
        }
    }
    let mut update = outpost_store::DocUpdate {
        id: dest_id.clone(),
        mode: UpdateMode::Edit { base: dest_rev },
        deleted: false,
        body: fields,
        new_attachments,
        origin: Origin::Client,
    };
    crate::users::before_write(state, db, req, &mut update).await?;
    let new_rev = write_one(state, db, update, req).await?;
    let mut response = with_etag(
        json(StatusCode::CREATED, ok_json(&dest_id, &new_rev)),
        &new_rev,
    );
    if let Some(v) = location(req, db, &dest_id) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    Ok(response)
}

/// The body of a revision as a JSON object; 404 when it is not stored.
pub async fn body_object(
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

/// One revision's stored body, if the store has it.
pub async fn stored_body(
    state: &AppState,
    db: &str,
    id: &str,
    rev: &Rev,
) -> Result<Option<StoredBody>, ApiError> {
    let mut found = state
        .store
        .rev_bodies(db, id, std::slice::from_ref(rev))
        .await?;
    Ok(found.pop().map(|(_, body)| body))
}

/// One answer of `open_revs` or `_bulk_get`: a rendered revision, or the revision asked for that
/// is not there.
pub enum OpenRev {
    Found(Rendered),
    Missing(Rev),
}

/// The revisions asked for (each replaced by its leaves when `latest`), rendered.
pub async fn open_revs_entries(
    state: &AppState,
    db: &str,
    record: &DocRecord,
    wanted: &[Rev],
    latest: bool,
    opts: &RenderOpts,
) -> Result<Vec<OpenRev>, ApiError> {
    let mut batch = open_revs_batch(state, db, &[(record, wanted)], latest, opts).await?;
    Ok(batch.pop().unwrap_or_default())
}

/// [`open_revs_entries`] for several documents, with every body read in one store call: a
/// `_bulk_get` of a replication batch would otherwise pay one blocking-pool round trip per
/// revision.
pub async fn open_revs_batch(
    state: &AppState,
    db: &str,
    docs: &[(&DocRecord, &[Rev])],
    latest: bool,
    opts: &RenderOpts,
) -> Result<Vec<Vec<OpenRev>>, ApiError> {
    // Per document: each revision asked for, with what it resolves to (`None`: not there).
    let mut resolved_docs: Vec<Vec<(Rev, Option<Rev>)>> = Vec::with_capacity(docs.len());
    let mut to_read: Vec<(String, Rev)> = Vec::new();
    for (record, wanted) in docs {
        let mut revs: Vec<(Rev, Option<Rev>)> = Vec::new();
        for rev in *wanted {
            let resolved = if latest {
                record.tree.latest(rev)
            } else {
                vec![rev.clone()]
            };
            if resolved.is_empty() {
                revs.push((rev.clone(), None));
            }
            for r in resolved {
                if !revs.iter().any(|(_, seen)| seen.as_ref() == Some(&r)) {
                    revs.push((rev.clone(), Some(r)));
                }
            }
        }
        for (_, r) in &mut revs {
            match r {
                Some(rev) if record.tree.contains(rev) => {
                    to_read.push((record.id.clone(), rev.clone()));
                }
                _ => *r = None,
            }
        }
        resolved_docs.push(revs);
    }
    let mut bodies = if to_read.is_empty() {
        Vec::new()
    } else {
        state.store.bodies(db, &to_read).await?
    }
    .into_iter();
    let mut out = Vec::with_capacity(docs.len());
    for ((record, _), revs) in docs.iter().zip(resolved_docs) {
        let mut entries = Vec::with_capacity(revs.len());
        for (asked, resolved) in revs {
            // Bodies come back in the order of `to_read`, which holds exactly the resolved
            // revisions, in this order.
            let body = match &resolved {
                Some(_) => bodies.next().flatten(),
                None => None,
            };
            match (resolved, body) {
                (Some(r), Some(body)) => {
                    let text = render_parts(
                        state,
                        db,
                        &record.id,
                        &record.tree,
                        record.seq,
                        &r,
                        &body,
                        opts,
                    )
                    .await?;
                    entries.push(OpenRev::Found(text));
                }
                _ => entries.push(OpenRev::Missing(asked)),
            }
        }
        out.push(entries);
    }
    Ok(out)
}

async fn put(state: &AppState, db: &str, id: &str, req: &mut Req) -> Result<Response, ApiError> {
    let content_type = req
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let new_edits = req.query.bool("new_edits")?.unwrap_or(true);
    let query_rev = requested_rev(req)?;
    let (mut body, mut parts) = match content_type.as_deref() {
        Some(ct) if media_type(ct) == "multipart/related" => related_body(req, ct).await?,
        Some(ct) if media_type(ct).starts_with("multipart/") => {
            return Err(ApiError::BadContentType(format!(
                "a document body may be JSON or multipart/related, not {}",
                media_type(ct)
            )));
        }
        _ => (req.json().await?, HashMap::new()),
    };
    if let (Some(rev), Some(obj)) = (query_rev, body.as_object_mut()) {
        match obj.get("_rev") {
            None | Some(Value::Null) => {
                obj.insert("_rev".into(), Value::String(rev.to_string()));
            }
            // CouchDB refuses a body naming another revision than the URL or `If-Match`.
            Some(Value::String(body_rev)) if parse_rev(body_rev)? != rev => {
                return Err(ApiError::bad_request(
                    "Document rev from request body and query string have different values",
                ));
            }
            Some(_) => {}
        }
    }
    let mut update = parse_doc_with_parts(body, Some(id), new_edits, Origin::Client, &mut parts)?;
    crate::users::before_write(state, db, req, &mut update).await?;
    crate::limits::check(&update, &state.config)?;
    let rev = write_one(state, db, update, req).await?;
    crate::users::after_write(state, db, id).await?;
    let batch = req.query.get("batch") == Some("ok");
    let status = if batch {
        StatusCode::ACCEPTED
    } else {
        StatusCode::CREATED
    };
    // CouchDB's batch answer names no revision.
    let answer = if batch {
        serde_json::json!({ "ok": true, "id": id }).to_string()
    } else {
        ok_json(id, &rev)
    };
    let mut response = with_etag(json(status, answer), &rev);
    if let Some(v) = location(req, db, id) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    Ok(response)
}

async fn delete(state: &AppState, db: &str, id: &str, req: &mut Req) -> Result<Response, ApiError> {
    let rev = requested_rev(req)?;
    let Some(rev) = rev else {
        // Without a revision CouchDB refuses a delete of an existing document as a conflict.
        crate::access::readable_doc(state, req, db, id).await?;
        return Err(ApiError::Conflict);
    };
    let mut update = outpost_store::DocUpdate {
        id: id.to_owned(),
        mode: UpdateMode::Edit { base: Some(rev) },
        deleted: true,
        body: Map::new(),
        new_attachments: Vec::new(),
        origin: Origin::Client,
    };
    crate::users::before_write(state, db, req, &mut update).await?;
    let rev = write_one(state, db, update, req).await?;
    Ok(with_etag(ok(ok_json(id, &rev)), &rev))
}
