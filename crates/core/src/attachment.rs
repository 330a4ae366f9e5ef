//! Attachments kept gzip-encoded, as CouchDB keeps them.
//!
//! CouchDB stores an attachment whose content type is compressible
//! (`[attachments] compressible_types`) gzip-encoded at `[attachments] compression_level`, and
//! one a client sent already gzip-encoded as it came. Its stub then carries `"encoding":
//! "gzip"` and `"encoded_length"` (the size stored) next to `length` (the size of the identity
//! bytes), and its `digest` is the md5 of the bytes stored, not of the identity bytes. Clients
//! see the two fields only when they ask for them (`att_encoding_info=true`), so every other
//! rendering of a document takes them out ([`strip_encoding_info`]).
//!
//! Decoding is incremental ([`Gunzip`]) so that an encoded attachment can be served decoded a
//! piece at a time, whatever it expands to.

use std::borrow::Cow;
use std::io::Write;

use serde_json::{Map, Value};

/// The stub member naming the content coding of the bytes stored.
pub const ENCODING: &str = "encoding";
/// The stub member holding the size of the bytes stored, when they are encoded.
pub const ENCODED_LENGTH: &str = "encoded_length";
/// The one coding attachments are stored in besides identity.
pub const GZIP: &str = "gzip";

/// CouchDB's default `[attachments] compressible_types`.
pub const DEFAULT_COMPRESSIBLE_TYPES: &str =
    "text/*, application/javascript, application/json, application/xml";
/// CouchDB's default `[attachments] compression_level`.
pub const DEFAULT_COMPRESSION_LEVEL: u32 = 8;

/// The most patterns a compressible-types list may hold.
const MAX_PATTERNS: usize = 100;
/// The longest pattern of a compressible-types list, in bytes.
const MAX_PATTERN_LEN: usize = 255;

/// Why a compression setting is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompressionError {
    /// The level is not 0 (off) to 9.
    #[error("compression level {0} is not between 0 (off) and 9")]
    Level(u32),
    /// The list of types is too long, or one of them is.
    #[error(
        "compressible types: at most {MAX_PATTERNS} patterns of at most {MAX_PATTERN_LEN} bytes each"
    )]
    TooLong,
}

/// Which attachments are stored compressed, and how hard they are compressed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compression {
    level: u32,
    /// Lowercase media-type patterns, `*` standing for any run of characters.
    types: Vec<String>,
}

impl Default for Compression {
    fn default() -> Compression {
        Compression {
            level: DEFAULT_COMPRESSION_LEVEL,
            types: parse_types(DEFAULT_COMPRESSIBLE_TYPES),
        }
    }
}

fn parse_types(list: &str) -> Vec<String> {
    list.split(',')
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

impl Compression {
    /// A level from 0 (never compress) to 9, and CouchDB's comma-separated list of media-type
    /// patterns (`text/*, application/json`), where `*` stands for any run of characters.
    pub fn new(level: u32, types: &str) -> Result<Compression, CompressionError> {
        if level > 9 {
            return Err(CompressionError::Level(level));
        }
        let types = parse_types(types);
        if types.len() > MAX_PATTERNS || types.iter().any(|t| t.len() > MAX_PATTERN_LEN) {
            return Err(CompressionError::TooLong);
        }
        Ok(Compression { level, types })
    }

    /// The gzip level; 0 when attachments are never compressed.
    pub fn level(&self) -> u32 {
        self.level
    }

    /// The patterns, as CouchDB lists them in its configuration.
    pub fn types(&self) -> String {
        self.types.join(", ")
    }

    /// Whether an attachment of this content type is stored compressed: when the level is not
    /// 0 and the media type (parameters such as `charset` aside, case aside) matches a pattern,
    /// as CouchDB's `couch_db:compressible_att_type/1` decides.
    pub fn compresses(&self, content_type: &str) -> bool {
        if self.level == 0 {
            return false;
        }
        let media = content_type.split(';').next().unwrap_or("").trim();
        let media = media.to_ascii_lowercase();
        self.types
            .iter()
            .any(|p| glob(p.as_bytes(), media.as_bytes()))
    }
}

/// Whether `text` matches `pattern`, where `*` matches any run of bytes (none included).
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    // The classic two-pointer match: on a mismatch, let the last `*` swallow one more byte.
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&b| b == b'*')
}

/// Compresses `data` as gzip at `level` (1 to 9), as CouchDB does: zlib's own gzip stream
/// (window 15, memory level 8, zlib's header with no time or name), so the same text stored
/// by CouchDB and by Outpost has the same bytes and the same digest, and the same bytes at the
/// same level always give the same output (an identical retried write gets the same digest,
/// and so the same revision).
pub fn gzip(data: &[u8], level: u32) -> Vec<u8> {
    use flate2::{Compress, FlushCompress, Status};
    let mut zlib = Compress::new_gzip(flate2::Compression::new(level.min(9)), 15);
    let mut out = Vec::with_capacity(data.len() / 2 + 64);
    loop {
        let read = usize::try_from(zlib.total_in()).map_or(data.len(), |n| n.min(data.len()));
        match zlib.compress_vec(&data[read..], &mut out, FlushCompress::Finish) {
            Ok(Status::StreamEnd) => return out,
            Ok(Status::Ok | Status::BufError) => out.reserve(out.capacity().max(64)),
            // zlib fails only on a bad stream state, which this function never makes.
            Err(_) => return out,
        }
    }
}

/// Why gzip bytes cannot be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GzipError {
    /// Not gzip, cut short, or failing its checksum.
    #[error("not valid gzip")]
    Corrupt,
    /// The decoded bytes would pass the bound given.
    #[error("larger than {0} bytes decoded")]
    TooLarge(u64),
}

/// Input fed to the decoder at a time: with at most 32 KiB of output per step of the inflater,
/// what a step leaves undrained stays small.
const STEP: usize = 16 * 1024;

/// A gzip decoder fed a piece at a time, whose output is taken as it comes, so that decoding
/// holds only what the caller has not taken yet. Concatenated gzip members decode as one
/// stream, as RFC 1952 allows.
pub struct Gunzip {
    inner: flate2::write::MultiGzDecoder<Vec<u8>>,
    /// Decoded bytes so far, taken or not.
    decoded: u64,
}

impl std::fmt::Debug for Gunzip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gunzip")
            .field("decoded", &self.decoded)
            .finish_non_exhaustive()
    }
}

impl Default for Gunzip {
    fn default() -> Gunzip {
        Gunzip::new()
    }
}

impl Gunzip {
    pub fn new() -> Gunzip {
        Gunzip {
            inner: flate2::write::MultiGzDecoder::new(Vec::new()),
            decoded: 0,
        }
    }

    /// Decodes some of `input` and answers how many of its bytes were used (at least one when
    /// it is not empty); what was decoded waits in [`Gunzip::pending`].
    pub fn feed(&mut self, input: &[u8]) -> Result<usize, GzipError> {
        if input.is_empty() {
            return Ok(0);
        }
        let step = &input[..input.len().min(STEP)];
        let before = self.inner.get_ref().len();
        let used = self.inner.write(step).map_err(|_| GzipError::Corrupt)?;
        self.decoded += (self.inner.get_ref().len() - before) as u64;
        // A decoder that takes nothing and gives nothing would make its caller spin.
        if used == 0 {
            return Err(GzipError::Corrupt);
        }
        Ok(used)
    }

    /// How many decoded bytes wait to be taken.
    pub fn pending(&self) -> usize {
        self.inner.get_ref().len()
    }

    /// How many bytes have been decoded so far, taken or not.
    pub fn decoded(&self) -> u64 {
        self.decoded
    }

    /// The decoded bytes waiting, leaving none.
    pub fn take(&mut self) -> Vec<u8> {
        std::mem::take(self.inner.get_mut())
    }

    /// Ends the stream: checks that it is complete (its trailer, length and checksum) and
    /// answers the last decoded bytes.
    pub fn finish(mut self) -> Result<Vec<u8>, GzipError> {
        self.inner.try_finish().map_err(|_| GzipError::Corrupt)?;
        self.inner.finish().map_err(|_| GzipError::Corrupt)
    }
}

/// Decodes gzip bytes whole, refusing to produce more than `limit` bytes.
pub fn gunzip(data: &[u8], limit: u64) -> Result<Vec<u8>, GzipError> {
    let mut out = Vec::new();
    decode_into(data, limit, |chunk| out.extend_from_slice(&chunk))?;
    Ok(out)
}

/// Checks that `data` is complete gzip and answers the length of what it decodes to (at most
/// `limit`), holding none of it: how an attachment received encoded gets its identity length.
pub fn identity_length(data: &[u8], limit: u64) -> Result<u64, GzipError> {
    decode_into(data, limit, drop)
}

/// Decodes complete gzip `data`, handing each decoded chunk to `sink` as it comes and never
/// more than `limit` bytes in all; answers the decoded length.
fn decode_into(data: &[u8], limit: u64, mut sink: impl FnMut(Vec<u8>)) -> Result<u64, GzipError> {
    let mut decoder = Gunzip::new();
    let mut rest = data;
    while !rest.is_empty() {
        let used = decoder.feed(rest)?;
        rest = &rest[used..];
        if decoder.decoded() > limit {
            return Err(GzipError::TooLarge(limit));
        }
        sink(decoder.take());
    }
    let decoded = decoder.decoded();
    let tail = decoder.finish()?;
    let total = decoded + tail.len() as u64;
    if total > limit {
        return Err(GzipError::TooLarge(limit));
    }
    sink(tail);
    Ok(total)
}

/// The stored coding of an attachment stub: `Some(encoded_length)` when its bytes are stored
/// gzip-encoded, `None` for identity (every stub without `encoding`).
pub fn encoded_length(stub: &Value) -> Option<u64> {
    if stub.get(ENCODING).and_then(Value::as_str) != Some(GZIP) {
        return None;
    }
    stub.get(ENCODED_LENGTH).and_then(Value::as_u64)
}

/// Takes `encoding` and `encoded_length` out of every attachment of a document's members, as
/// CouchDB shows attachments without `att_encoding_info`; answers whether anything was taken.
pub fn strip_encoding_info(doc: &mut Map<String, Value>) -> bool {
    let Some(Value::Object(atts)) = doc.get_mut("_attachments") else {
        return false;
    };
    let mut changed = false;
    for att in atts.values_mut() {
        if let Value::Object(meta) = att {
            changed |= meta.shift_remove(ENCODING).is_some();
            changed |= meta.shift_remove(ENCODED_LENGTH).is_some();
        }
    }
    changed
}

/// [`strip_encoding_info`] on a document's JSON text (an object), which is parsed only when it
/// may hold encoding information, so that documents without encoded attachments pass through
/// as they are.
pub fn without_encoding_info(json: &str) -> Cow<'_, str> {
    if !json.contains("\"encoded_length\"") {
        return Cow::Borrowed(json);
    }
    let Ok(mut doc) = serde_json::from_str::<Map<String, Value>>(json) else {
        return Cow::Borrowed(json);
    };
    if strip_encoding_info(&mut doc) {
        Cow::Owned(Value::Object(doc).to_string())
    } else {
        Cow::Borrowed(json)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    /// CouchDB 3.5 stores `text/plain` "This is a base64 encoded text" (PouchDB's test fixture)
    /// as 47 bytes of gzip with digest `md5-qUUYqS41RhwF0TrCsTAxFg==`, read off a running
    /// CouchDB 3.5.0 with `att_encoding_info=true`; the same text stored by Outpost must give the
    /// same bytes, or a client comparing digests across the two sees a different attachment.
    #[test]
    fn text_is_compressed_to_the_bytes_couchdb_stores() {
        let stored = gzip(b"This is a base64 encoded text", 8);
        assert_eq!(stored.len(), 47);
        assert_eq!(
            crate::hash::attachment_digest(&stored),
            "md5-qUUYqS41RhwF0TrCsTAxFg=="
        );
        let large = b"a line of text that repeats\n".repeat(10_000);
        let stored = gzip(&large, 8);
        assert!(stored.len() < large.len() / 50);
        let mut decoded = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&stored[..]), &mut decoded)
            .unwrap();
        assert_eq!(decoded, large);
    }

    #[test]
    fn couchdbs_default_types_are_compressed() {
        let c = Compression::default();
        for ct in [
            "text/plain",
            "text/html; charset=utf-8",
            " TEXT/CSV ",
            "application/json",
            "Application/JSON;charset=UTF-8",
            "application/javascript",
            "application/xml",
        ] {
            assert!(c.compresses(ct), "{ct}");
        }
        for ct in [
            "image/png",
            "application/octet-stream",
            "application/jsonx",
            "application/json-patch+json",
            "texts/plain",
            "",
        ] {
            assert!(!c.compresses(ct), "{ct}");
        }
        assert_eq!(c.types(), DEFAULT_COMPRESSIBLE_TYPES);
    }

    #[test]
    fn patterns_are_globs_and_level_zero_turns_compression_off() {
        let c = Compression::new(1, " image/svg+xml ,, *+json, application/*script ").unwrap();
        assert_eq!(c.types(), "image/svg+xml, *+json, application/*script");
        for ct in [
            "image/svg+xml",
            "application/ld+json",
            "application/ecmascript",
            "application/script",
        ] {
            assert!(c.compresses(ct), "{ct}");
        }
        assert!(!c.compresses("text/plain"));
        assert!(!c.compresses("image/svgxml"));
        assert!(!Compression::new(0, "*").unwrap().compresses("text/plain"));
        assert!(
            Compression::new(9, "*")
                .unwrap()
                .compresses("anything/at-all")
        );
        assert_eq!(
            Compression::new(10, "text/*"),
            Err(CompressionError::Level(10))
        );
        assert_eq!(
            Compression::new(1, &"x,".repeat(101)),
            Err(CompressionError::TooLong)
        );
    }

    #[test]
    fn gzip_is_deterministic_and_decodes_back() {
        let data = b"hello hello hello hello hello".repeat(100);
        let a = gzip(&data, 8);
        assert_eq!(a, gzip(&data, 8));
        assert!(a.len() < data.len());
        assert_eq!(&a[..2], &[0x1f, 0x8b]);
        assert_eq!(gunzip(&a, 1 << 20).unwrap(), data);
        assert_eq!(identity_length(&a, 1 << 20).unwrap(), data.len() as u64);
        // Even nothing is compressed into a whole gzip member, as CouchDB's zlib does.
        let empty = gzip(b"", 8);
        assert!(!empty.is_empty());
        assert_eq!(identity_length(&empty, 0).unwrap(), 0);
    }

    #[test]
    fn broken_or_oversized_gzip_is_refused() {
        let data = vec![b'a'; 100_000];
        let z = gzip(&data, 6);
        assert_eq!(
            identity_length(&z, 99_999),
            Err(GzipError::TooLarge(99_999))
        );
        assert_eq!(gunzip(&z, 10), Err(GzipError::TooLarge(10)));
        assert_eq!(
            identity_length(&z[..z.len() - 1], 1 << 20),
            Err(GzipError::Corrupt)
        );
        assert_eq!(identity_length(b"", 10), Err(GzipError::Corrupt));
        assert_eq!(identity_length(b"plain text", 100), Err(GzipError::Corrupt));
        let mut flipped = z.clone();
        let at = flipped.len() - 6;
        flipped[at] ^= 1;
        assert_eq!(identity_length(&flipped, 1 << 20), Err(GzipError::Corrupt));
        let mut trailing = z.clone();
        trailing.extend_from_slice(b"garbage");
        assert_eq!(identity_length(&trailing, 1 << 20), Err(GzipError::Corrupt));
        // Two members are one stream.
        let mut two = gzip(b"abc", 1);
        two.extend_from_slice(&gzip(b"def", 9));
        assert_eq!(gunzip(&two, 100).unwrap(), b"abcdef");
    }

    #[test]
    fn decoding_in_pieces_holds_little_at_a_time() {
        // A bomb: 64 MiB of zeros in a few dozen KiB.
        let data = vec![0u8; 64 << 20];
        let z = gzip(&data, 9);
        let mut decoder = Gunzip::new();
        let mut rest = &z[..];
        let mut most = 0;
        while !rest.is_empty() {
            let used = decoder.feed(rest).unwrap();
            rest = &rest[used..];
            most = most.max(decoder.pending());
            decoder.take();
        }
        assert!(most <= 64 * 1024, "held {most} bytes at once");
        let decoded = decoder.decoded();
        let tail = decoder.finish().unwrap();
        assert_eq!(decoded + tail.len() as u64, data.len() as u64);
    }

    #[test]
    fn encoding_info_is_taken_out_only_where_it_is() {
        let doc = json!({"a": 1, "_attachments": {
            "t.txt": {"content_type": "text/plain", "digest": "md5-x", "length": 10, "stub": true, "encoding": "gzip", "encoded_length": 30},
            "p.png": {"content_type": "image/png", "digest": "md5-y", "length": 3, "stub": true}
        }, "z": {"encoded_length": 1}});
        let text = doc.to_string();
        let stripped = without_encoding_info(&text);
        assert_eq!(
            serde_json::from_str::<Value>(&stripped).unwrap(),
            json!({"a": 1, "_attachments": {
                "t.txt": {"content_type": "text/plain", "digest": "md5-x", "length": 10, "stub": true},
                "p.png": {"content_type": "image/png", "digest": "md5-y", "length": 3, "stub": true}
            }, "z": {"encoded_length": 1}})
        );
        let plain = r#"{"_attachments":{"p":{"length":3,"stub":true}},"n":1.50}"#;
        assert!(matches!(without_encoding_info(plain), Cow::Borrowed(_)));
        let user_field = r#"{"encoded_length":1.50}"#;
        assert_eq!(without_encoding_info(user_field), user_field);
        assert_eq!(encoded_length(&doc["_attachments"]["t.txt"]), Some(30));
        assert_eq!(encoded_length(&doc["_attachments"]["p.png"]), None);
    }

    proptest! {
        /// Whatever the bytes and level, and however the compressed bytes are cut into pieces,
        /// decoding gives the bytes back.
        #[test]
        fn round_trips_in_any_pieces(
            data in prop::collection::vec(any::<u8>(), 0..5000),
            level in 1u32..=9,
            cuts in prop::collection::vec(1usize..700, 1..20),
        ) {
            let z = gzip(&data, level);
            prop_assert_eq!(identity_length(&z, u64::MAX).unwrap(), data.len() as u64);
            let mut decoder = Gunzip::new();
            let mut out = Vec::new();
            let mut rest = &z[..];
            for cut in cuts.iter().cycle() {
                if rest.is_empty() {
                    break;
                }
                let mut piece = &rest[..(*cut).min(rest.len())];
                rest = &rest[piece.len()..];
                while !piece.is_empty() {
                    let used = decoder.feed(piece).unwrap();
                    piece = &piece[used..];
                    out.extend_from_slice(&decoder.take());
                }
            }
            out.extend_from_slice(&decoder.finish().unwrap());
            prop_assert_eq!(out, data);
        }
    }
}
