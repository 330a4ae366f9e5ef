//! The on-disk form of a queued request and of the upstream's answer to it.
//!
//! A small length-prefixed binary format with a leading version byte, chosen over JSON so that
//! bodies are stored as they are (no base64 growth) and decoding cannot be confused by content.
//! Records are encrypted by [`crate::crypto`] before they reach the database.

use bytes::Bytes;

use crate::error::{Error, Result};

/// Format version of [`StoredRequest`] records.
const REQUEST_V1: u8 = 1;
/// Format version of [`StoredResponse`] records.
const RESPONSE_V1: u8 = 1;

/// A write request as it will be replayed: method, request target as received, the headers to
/// send (hop-by-hop removed, forwarding headers and `Idempotency-Key` added) and the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRequest {
    /// The HTTP method.
    pub method: String,
    /// Path and query exactly as the client sent them.
    pub target: String,
    /// Header names and raw values, in the order received.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The complete body.
    pub body: Bytes,
}

/// The upstream's answer to a delivered request, with the body capped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResponse {
    /// The status code.
    pub status: u16,
    /// Header names and raw values.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body, at most the configured capture size.
    pub body: Bytes,
    /// Whether the body was longer than what is kept.
    pub truncated: bool,
}

impl StoredRequest {
    /// Serialises the record.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.target.len() + self.body.len());
        out.push(REQUEST_V1);
        put(&mut out, self.method.as_bytes());
        put(&mut out, self.target.as_bytes());
        put_headers(&mut out, &self.headers);
        put(&mut out, &self.body);
        out
    }

    /// Parses a record made by [`StoredRequest::encode`].
    pub fn decode(data: &[u8]) -> Result<Self> {
        let mut r = Reader { data };
        if r.byte()? != REQUEST_V1 {
            return Err(Error::Corrupt("unknown request record version".into()));
        }
        let method = r.string()?;
        let target = r.string()?;
        let headers = r.headers()?;
        let body = Bytes::copy_from_slice(r.chunk()?);
        r.end()?;
        Ok(Self {
            method,
            target,
            headers,
            body,
        })
    }

    /// The value of a header, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }
}

impl StoredResponse {
    /// Serialises the record.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.body.len());
        out.push(RESPONSE_V1);
        out.extend_from_slice(&self.status.to_be_bytes());
        out.push(u8::from(self.truncated));
        put_headers(&mut out, &self.headers);
        put(&mut out, &self.body);
        out
    }

    /// Parses a record made by [`StoredResponse::encode`].
    pub fn decode(data: &[u8]) -> Result<Self> {
        let mut r = Reader { data };
        if r.byte()? != RESPONSE_V1 {
            return Err(Error::Corrupt("unknown response record version".into()));
        }
        let status = u16::from_be_bytes([r.byte()?, r.byte()?]);
        let truncated = r.byte()? != 0;
        let headers = r.headers()?;
        let body = Bytes::copy_from_slice(r.chunk()?);
        r.end()?;
        Ok(Self {
            status,
            headers,
            body,
            truncated,
        })
    }
}

fn put(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = u32::try_from(bytes.len()).expect("records are limited far below 4 GiB");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
}

fn put_headers(out: &mut Vec<u8>, headers: &[(String, Vec<u8>)]) {
    let count = u32::try_from(headers.len()).expect("header count is limited");
    out.extend_from_slice(&count.to_be_bytes());
    for (name, value) in headers {
        put(out, name.as_bytes());
        put(out, value);
    }
}

struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.data.len() < n {
            return Err(Error::Corrupt("record is truncated".into()));
        }
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        Ok(head)
    }

    fn byte(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<usize> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }

    fn chunk(&mut self) -> Result<&'a [u8]> {
        let n = self.u32()?;
        self.take(n)
    }

    fn string(&mut self) -> Result<String> {
        String::from_utf8(self.chunk()?.to_vec())
            .map_err(|_| Error::Corrupt("record holds invalid text".into()))
    }

    fn headers(&mut self) -> Result<Vec<(String, Vec<u8>)>> {
        let count = self.u32()?;
        // Each header needs at least 8 bytes, so a corrupt count cannot make us allocate much.
        if count > self.data.len() / 8 {
            return Err(Error::Corrupt("record header count is impossible".into()));
        }
        let mut headers = Vec::with_capacity(count);
        for _ in 0..count {
            let name = self.string()?;
            let value = self.chunk()?.to_vec();
            headers.push((name, value));
        }
        Ok(headers)
    }

    fn end(&self) -> Result<()> {
        if self.data.is_empty() {
            Ok(())
        } else {
            Err(Error::Corrupt("record has trailing bytes".into()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trip() {
        let req = StoredRequest {
            method: "POST".into(),
            target: "/api/../x?a=%2e%2e".into(),
            headers: vec![
                ("content-type".into(), b"application/json".to_vec()),
                ("x-bin".into(), vec![0xff, 0x00]),
            ],
            body: Bytes::from_static(b"{\"a\":1}\0"),
        };
        let decoded = StoredRequest::decode(&req.encode()).unwrap();
        assert_eq!(decoded, req);
        assert_eq!(
            decoded.header("Content-Type"),
            Some(&b"application/json"[..])
        );
    }

    #[test]
    fn response_round_trip() {
        let resp = StoredResponse {
            status: 201,
            headers: vec![("location".into(), b"/a/1".to_vec())],
            body: Bytes::from_static(b"created"),
            truncated: true,
        };
        assert_eq!(StoredResponse::decode(&resp.encode()).unwrap(), resp);
    }

    #[test]
    fn corrupt_records_are_errors() {
        let req = StoredRequest {
            method: "PUT".into(),
            target: "/".into(),
            headers: vec![],
            body: Bytes::new(),
        };
        let bytes = req.encode();
        for cut in 0..bytes.len() {
            assert!(
                StoredRequest::decode(&bytes[..cut]).is_err(),
                "cut at {cut}"
            );
        }
        let mut extra = bytes.clone();
        extra.push(0);
        assert!(StoredRequest::decode(&extra).is_err());
        assert!(StoredResponse::decode(&bytes).is_err());
    }
}
