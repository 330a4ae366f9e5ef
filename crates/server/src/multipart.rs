//! MIME multipart bodies as CouchDB's replication uses them (RFC 2046): `multipart/related` for
//! a document followed by its attachments' bytes, and `multipart/mixed` for several revisions
//! of a document, each part `application/json` or itself `multipart/related`.
//!
//! Parsing takes a body that was read whole under the request size limit; writing produces the
//! pieces of a response body in order, so a caller can stream them one attachment at a time.

use axum::body::Bytes;
use memchr::memmem;

/// Why a multipart body cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MultipartError {
    /// The `Content-Type` names no usable boundary.
    #[error("multipart body without a boundary parameter")]
    NoBoundary,
    /// The body does not open with the boundary, or a part is cut short.
    #[error("malformed multipart body: {0}")]
    Malformed(&'static str),
}

/// One part: its headers (names lowercase) and its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Part {
    /// The value of a header, by lowercase name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The `filename` of a `Content-Disposition: attachment; filename="..."`.
    pub fn filename(&self) -> Option<String> {
        let disposition = self.header("content-disposition")?;
        param(disposition, "filename")
    }
}

/// The value of a `;`-separated parameter of a header value, unquoted.
pub fn param(value: &str, name: &str) -> Option<String> {
    value.split(';').skip(1).find_map(|p| {
        let (k, v) = p.split_once('=')?;
        if !k.trim().eq_ignore_ascii_case(name) {
            return None;
        }
        let v = v.trim();
        let v = v
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .map_or_else(
                || v.to_owned(),
                |q| q.replace("\\\"", "\"").replace("\\\\", "\\"),
            );
        Some(v)
    })
}

/// The boundary of a multipart `Content-Type`.
pub fn boundary(content_type: &str) -> Result<String, MultipartError> {
    param(content_type, "boundary")
        .filter(|b| !b.is_empty() && b.len() <= 200)
        .ok_or(MultipartError::NoBoundary)
}

/// Splits a multipart body into its parts. Line ends may be CRLF or LF alone (CouchDB's own
/// documentation shows both); a preamble and an epilogue are ignored.
pub fn parse(body: &Bytes, boundary: &str) -> Result<Vec<Part>, MultipartError> {
    let delimiter = format!("--{boundary}");
    let delimiter = delimiter.as_bytes();
    let finder = memmem::Finder::new(delimiter);
    // The first delimiter opens the body or starts a line after the preamble.
    let mut at = finder
        .find_iter(body)
        .find(|&i| i == 0 || body[i - 1] == b'\n')
        .ok_or(MultipartError::Malformed("no opening boundary"))?;
    let mut parts = Vec::new();
    loop {
        let after = at + delimiter.len();
        if body[after..].starts_with(b"--") {
            return Ok(parts);
        }
        // The rest of the delimiter line (transport padding) and its line end.
        let line_end = memchr::memchr(b'\n', &body[after..]).ok_or(MultipartError::Malformed(
            "part cut short after its boundary",
        ))?;
        let mut pos = after + line_end + 1;
        let mut headers = Vec::new();
        loop {
            let end = memchr::memchr(b'\n', &body[pos..])
                .ok_or(MultipartError::Malformed("part headers cut short"))?;
            let line = &body[pos..pos + end];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            pos += end + 1;
            if line.is_empty() {
                break;
            }
            let line = std::str::from_utf8(line)
                .map_err(|_| MultipartError::Malformed("part header is not UTF-8"))?;
            let (name, value) = line
                .split_once(':')
                .ok_or(MultipartError::Malformed("part header without a colon"))?;
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
            if headers.len() > 64 {
                return Err(MultipartError::Malformed("too many part headers"));
            }
        }
        // The body runs to the line end before the next delimiter at the start of a line.
        let next = finder
            .find_iter(&body[pos..])
            .map(|i| pos + i)
            .find(|&i| i == pos || body[i - 1] == b'\n')
            .ok_or(MultipartError::Malformed("no closing boundary"))?;
        let mut end = next;
        if end > pos && body[end - 1] == b'\n' {
            end -= 1;
            if end > pos && body[end - 1] == b'\r' {
                end -= 1;
            }
        }
        parts.push(Part {
            headers,
            body: body.slice(pos..end),
        });
        at = next;
    }
}

/// A fresh random boundary, as CouchDB writes them (32 hex digits).
pub fn new_boundary() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// The `Content-Type` of a multipart body with this boundary.
pub fn content_type(kind: &str, boundary: &str) -> String {
    format!("multipart/{kind}; boundary=\"{boundary}\"")
}

/// The head of a part: its delimiter and headers, up to the blank line.
pub fn part_head(boundary: &str, headers: &[(&str, &str)]) -> Bytes {
    let mut out = format!("--{boundary}\r\n");
    for (k, v) in headers {
        out.push_str(k);
        out.push_str(": ");
        out.push_str(v);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    Bytes::from(out)
}

/// What ends a part's body before the next delimiter.
pub const PART_END: &[u8] = b"\r\n";

/// The closing delimiter of a multipart body.
pub fn closing(boundary: &str) -> Bytes {
    Bytes::from(format!("--{boundary}--"))
}

/// A part to write: its headers and its bytes.
#[cfg(test)]
type OutPart<'a> = (Vec<(&'a str, &'a str)>, &'a [u8]);

/// A whole multipart body from parts, for the tests; answers stream the same pieces.
#[cfg(test)]
pub fn write(boundary: &str, parts: &[OutPart<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    for (headers, body) in parts {
        out.extend_from_slice(&part_head(boundary, headers));
        out.extend_from_slice(body);
        out.extend_from_slice(PART_END);
    }
    out.extend_from_slice(&closing(boundary));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reads_couchdbs_documented_example() {
        // The shape of CouchDB's "Creating Multiple Attachments" example, LF line ends.
        let body = Bytes::from_static(
            b"--abc123\nContent-Type: application/json\n\n{\"body\":\"This is a body.\",\"_attachments\":{\"foo.txt\":{\"follows\":true,\"content_type\":\"text/plain\",\"length\":21},\"bar.txt\":{\"follows\":true,\"content_type\":\"text/plain\",\"length\":20}}}\n\n--abc123\n\nthis is 21 chars long\n--abc123\n\nthis is 20 chars lon\n--abc123--\n",
        );
        let parts = parse(&body, "abc123").unwrap();
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[0].header("content-type"), Some("application/json"));
        assert!(parts[0].body.starts_with(b"{\"body\""));
        assert_eq!(&parts[1].body[..], b"this is 21 chars long");
        assert_eq!(&parts[2].body[..], b"this is 20 chars lon");
    }

    #[test]
    fn reads_boundaries_and_filenames_from_headers() {
        assert_eq!(
            boundary("multipart/related; boundary=\"a b\"").unwrap(),
            "a b"
        );
        assert_eq!(boundary("multipart/related;boundary=xyz").unwrap(), "xyz");
        assert_eq!(
            boundary("multipart/related"),
            Err(MultipartError::NoBoundary)
        );
        let part = Part {
            headers: vec![(
                "content-disposition".into(),
                "attachment; filename=\"my \\\"file\\\".txt\"".into(),
            )],
            body: Bytes::new(),
        };
        assert_eq!(part.filename().as_deref(), Some("my \"file\".txt"));
    }

    #[test]
    fn refuses_broken_bodies() {
        for body in [
            &b"no boundary here"[..],
            b"--b\r\nContent-Type: x\r\n",
            b"--b\r\n\r\npart without an end",
            b"--b\r\nbad header line\r\n\r\nx\r\n--b--",
        ] {
            assert!(
                parse(&Bytes::copy_from_slice(body), "b").is_err(),
                "{body:?}"
            );
        }
    }

    proptest! {
        /// Whatever bytes the parts hold, writing then reading gives them back, headers too.
        #[test]
        fn round_trips(
            bodies in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 1..6),
            names in prop::collection::vec("[a-z][a-z0-9._-]{0,12}", 6),
        ) {
            let boundary = new_boundary();
            // A body that happens to contain the delimiter line would be ambiguous; a random
            // 32-hex boundary makes that vanishingly unlikely, and the generator cannot hit it.
            let dispositions: Vec<String> = names
                .iter()
                .map(|n| format!("attachment; filename=\"{n}\""))
                .collect();
            let parts: Vec<OutPart<'_>> = bodies
                .iter()
                .zip(&dispositions)
                .map(|(b, d)| {
                    (
                        vec![("Content-Type", "application/octet-stream"), ("Content-Disposition", d.as_str())],
                        b.as_slice(),
                    )
                })
                .collect();
            let written = Bytes::from(write(&boundary, &parts));
            let read = parse(&written, &boundary).unwrap();
            prop_assert_eq!(read.len(), bodies.len());
            for ((part, body), name) in read.iter().zip(&bodies).zip(&names) {
                prop_assert_eq!(&part.body[..], body.as_slice());
                let filename = part.filename();
                prop_assert_eq!(filename.as_deref(), Some(name.as_str()));
            }
        }
    }
}
