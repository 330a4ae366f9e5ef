//! Content codings (RFC 9110 §8.4) undone under a size bound: request bodies sent with
//! `Content-Encoding`, and attachments CouchDB sends `"encoding": "gzip"` in a multipart body.
//! The bound holds on the decoded size, so a small compressed bomb cannot expand without limit.

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
