//! Content codings (RFC 9110 §8.4): request bodies sent with `Content-Encoding`, undone under
//! a size bound (on the decoded size, so a small compressed bomb cannot expand without limit);
//! which codings a client takes an attachment in (`Accept-Encoding`); and new attachments put
//! in the form they are stored in, gzip-encoded when their content type is compressible, as
//! CouchDB stores them (see [`outpost_core::attachment`]).

use std::io::Read;

/// Why a coded body cannot be decoded.
#[derive(Debug)]
pub enum InflateError {
    /// A coding other than identity, gzip or deflate.
    Unsupported(String),
    /// The bytes are not valid for their coding.
    Corrupt,
    /// The decoded bytes would pass the bound.
    TooLarge,
}

/// Decodes `bytes` of content coding `coding` (lowercase; `None`, empty or `identity` for none)
/// into at most `limit` bytes. `None` when there was nothing to decode.
pub fn inflate(
    coding: Option<&str>,
    bytes: &[u8],
    limit: usize,
) -> Result<Option<Vec<u8>>, InflateError> {
    let mut decoded = Vec::new();
    let bound = limit as u64 + 1;
    let read = match coding {
        None | Some("") | Some("identity") => return Ok(None),
        Some("gzip") | Some("x-gzip") => flate2::read::GzDecoder::new(bytes)
            .take(bound)
            .read_to_end(&mut decoded),
        Some("deflate") => flate2::read::ZlibDecoder::new(bytes)
            .take(bound)
            .read_to_end(&mut decoded),
        Some(other) => return Err(InflateError::Unsupported(other.to_owned())),
    };
    read.map_err(|_| InflateError::Corrupt)?;
    if decoded.len() > limit {
        return Err(InflateError::TooLarge);
    }
    Ok(Some(decoded))
}

/// The codings a client's `Accept-Encoding` lets an attachment be sent in, read as CouchDB's
/// HTTP server (mochiweb) reads it, of the two an attachment is stored in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    pub gzip: bool,
    pub identity: bool,
}

/// Reads `Accept-Encoding` (every instance, in order): codings with a quality above 0 are
/// accepted, with 0 refused; `*` stands for every coding not named; identity is acceptable
/// unless refused, by name or by `*;q=0`. No header means identity only. `None` when a quality
/// is not a number from 0 to 1 with at most three decimals.
pub fn accepted(headers: &http::HeaderMap) -> Option<Accepted> {
    let mut named: Vec<(String, bool)> = Vec::new();
    for value in headers.get_all(http::header::ACCEPT_ENCODING) {
        let value = value.to_str().ok()?.to_ascii_lowercase();
        for item in value.split(',') {
            let mut params = item.split(';');
            let coding = params.next().unwrap_or("").trim();
            if coding.is_empty() {
                continue;
            }
            let mut positive = true;
            for param in params {
                let param: String = param.chars().filter(|c| !c.is_whitespace()).collect();
                if let Some(q) = param.strip_prefix("q=") {
                    positive = quality(q)? > 0.0;
                }
            }
            named.push((coding.to_owned(), positive));
        }
    }
    let is =
        |coding: &str, positive: bool| named.iter().any(|(c, p)| c == coding && *p == positive);
    let star_accepts = is("*", true);
    let star_refuses = is("*", false);
    let verdict = |coding: &str| {
        let accepted = is(coding, true);
        let refused = is(coding, false);
        // `*;q=0` refuses what is not accepted by name; `*` accepts what is not named at all.
        let refused = refused || (star_refuses && !accepted);
        let accepted = accepted || (star_accepts && !is(coding, false));
        (accepted, refused)
    };
    let (gzip, gzip_refused) = verdict("gzip");
    let (_, identity_refused) = verdict("identity");
    Some(Accepted {
        gzip: gzip && !gzip_refused,
        identity: !identity_refused,
    })
}

/// A quality value as mochiweb takes it: `0` or `1`, with up to three decimals.
fn quality(q: &str) -> Option<f64> {
    let (whole, decimals) = q.split_once('.').unwrap_or((q, ""));
    let valid = matches!(whole, "0" | "1")
        && decimals.len() <= 3
        && decimals.bytes().all(|b| b.is_ascii_digit())
        && !(q.contains('.') && decimals.is_empty());
    if !valid {
        return None;
    }
    q.parse().ok()
}

/// Gives the new attachments of `update` the form CouchDB stores them in: each one that
/// arrived in identity and whose content type `compression` compresses is gzip-encoded, and its
/// entry takes the digest of the encoded bytes, `"encoding": "gzip"` and `encoded_length` (its
/// `length` stays that of the identity bytes). Entries that arrived encoded are kept as they
/// are. CPU work: callers run it off the async runtime.
pub fn compress_new_attachments(
    update: &mut outpost_store::DocUpdate,
    compression: &outpost_core::attachment::Compression,
) {
    use outpost_core::attachment::{ENCODED_LENGTH, ENCODING, GZIP, gzip};
    use serde_json::Value;
    use std::collections::HashMap;

    if compression.level() == 0 || update.new_attachments.is_empty() {
        return;
    }
    let Some(Value::Object(atts)) = update.body.get_mut("_attachments") else {
        return;
    };
    // Identity digest to encoded digest and length, computed once however many entries share
    // the bytes.
    let mut encoded: HashMap<String, (String, usize)> = HashMap::new();
    let mut added = Vec::new();
    for att in atts.values_mut() {
        let Value::Object(entry) = att else {
            continue;
        };
        let new = entry.get("stub").and_then(Value::as_bool) != Some(true);
        let content_type = entry.get("content_type").and_then(Value::as_str);
        if !new
            || entry.contains_key(ENCODING)
            || !content_type.is_some_and(|ct| compression.compresses(ct))
        {
            continue;
        }
        let Some(digest) = entry.get("digest").and_then(Value::as_str) else {
            continue;
        };
        let (new_digest, len) = match encoded.get(digest) {
            Some(done) => done.clone(),
            None => {
                let Some(source) = update.new_attachments.iter().find(|a| a.digest == digest)
                else {
                    continue;
                };
                let data = gzip(&source.data, compression.level());
                let done = (outpost_core::hash::attachment_digest(&data), data.len());
                added.push(outpost_store::NewAttachment {
                    digest: done.0.clone(),
                    data,
                });
                encoded.insert(digest.to_owned(), done.clone());
                done
            }
        };
        entry.insert("digest".into(), Value::String(new_digest));
        entry.insert(ENCODING.into(), Value::String(GZIP.into()));
        entry.insert(ENCODED_LENGTH.into(), Value::from(len));
    }
    // Bytes no entry names any more (identity bytes now stored encoded) are not stored.
    let named: std::collections::HashSet<String> = atts
        .values()
        .filter_map(|a| a.get("digest").and_then(Value::as_str))
        .map(str::to_owned)
        .collect();
    update.new_attachments.retain(|a| named.contains(&a.digest));
    for att in added {
        if !update
            .new_attachments
            .iter()
            .any(|a| a.digest == att.digest)
        {
            update.new_attachments.push(att);
        }
    }
}

/// [`compress_new_attachments`] on every update, with the server's settings, off the async
/// runtime (only when there is something to compress).
pub async fn store_form(
    state: &crate::AppState,
    mut updates: Vec<outpost_store::DocUpdate>,
) -> Result<Vec<outpost_store::DocUpdate>, crate::ApiError> {
    let compression = state.config.attachments.clone();
    if compression.level() == 0 || updates.iter().all(|u| u.new_attachments.is_empty()) {
        return Ok(updates);
    }
    tokio::task::spawn_blocking(move || {
        for update in &mut updates {
            compress_new_attachments(update, &compression);
        }
        updates
    })
    .await
    .map_err(|e| crate::ApiError::Internal(format!("compressing attachments failed: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(values: &[&str]) -> Option<Accepted> {
        let mut headers = http::HeaderMap::new();
        for v in values {
            headers.append(
                http::header::ACCEPT_ENCODING,
                http::HeaderValue::from_str(v).unwrap(),
            );
        }
        accepted(&headers)
    }

    #[test]
    fn accept_encoding_as_mochiweb_reads_it() {
        let both = Accepted {
            gzip: true,
            identity: true,
        };
        let identity = Accepted {
            gzip: false,
            identity: true,
        };
        for (values, expect) in [
            (&[][..], Some(identity)),
            (&[""], Some(identity)),
            (&["gzip"], Some(both)),
            (&["GZIP, deflate, br"], Some(both)),
            (&["deflate, br"], Some(identity)),
            (&["gzip;q=0"], Some(identity)),
            (&["gzip; q=0.000, identity"], Some(identity)),
            (&["identity, gzip;q=0.5"], Some(both)),
            (&["*"], Some(both)),
            (
                &["*;q=0"],
                Some(Accepted {
                    gzip: false,
                    identity: false,
                }),
            ),
            (
                &["gzip, *;q=0"],
                Some(Accepted {
                    gzip: true,
                    identity: false,
                }),
            ),
            (
                &["identity;q=0"],
                Some(Accepted {
                    gzip: false,
                    identity: false,
                }),
            ),
            (&["*, gzip;q=0"], Some(identity)),
            (&["deflate", "gzip"], Some(both)),
            (&["gzip;q=2"], None),
            (&["gzip;q=0.5555"], None),
            (&["gzip;q=high"], None),
        ] {
            assert_eq!(read(values), expect, "{values:?}");
        }
    }
}
