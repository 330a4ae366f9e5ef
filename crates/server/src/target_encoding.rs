//! Request targets with characters the `http` crate refuses, percent-encoded before hyper reads
//! them, so that `?key="a"` is answered as CouchDB answers it.
//!
//! hyper reads an HTTP/1.1 request head with `httparse`, which takes any visible ASCII in the
//! target, and then builds an `http::Uri`, which refuses `"`, `<` and `>` in the query and `<`,
//! `>` and `` ` `` in the path (the bytes WHATWG's URL parser would percent-encode). hyper has no
//! hook between the two: such a request gets 400 with an empty body and a closed connection.
//! CouchDB (mochiweb) takes them, and people type `?startkey="a"` into curl. So on HTTP/1.x
//! connections [`EncodeTargets`] sits between the socket and hyper and rewrites exactly those
//! bytes of each request target to `%22`, `%3C`, `%3E` and `%60`, which every route decodes
//! back to the same characters.
//!
//! To find each request's head on a keep-alive connection it follows the messages' framing, and
//! only where that framing is certain: a head parsed by `httparse` (hyper's parser), then a body
//! of exactly `Content-Length` bytes or none. hyper reads the same bytes as that body, or closes
//! the connection. Anything else (a chunked body, `Expect`, `Upgrade` or `CONNECT`, a head it
//! cannot parse or larger than hyper would take, HTTP/2's preface) turns the rewriting off for
//! the rest of the connection, which then passes through untouched, as without this layer. A
//! body is never touched.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Headers read per head; a head with more passes through (hyper's own limit is 100).
const MAX_HEADERS: usize = 128;

/// Bytes read from the socket at a time while a head is being collected.
const READ_CHUNK: usize = 8 * 1024;

/// Where the connection is in its stream of messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// The next bytes start a request head.
    Head,
    /// This many bytes (at least one) of a request body follow.
    Body(u64),
    /// Framing is no longer followed: everything passes through as it is.
    Off,
}

/// An HTTP/1.x connection whose request targets are made acceptable to `http::Uri`; see the
/// module documentation. Writes go straight through.
pub struct EncodeTargets<IO> {
    io: IO,
    framing: Framing,
    /// Bytes read but not yet framed: the start of a head, and what came after it in the same
    /// read.
    pending: BytesMut,
    /// Bytes framed and ready for the reader.
    ready: BytesMut,
    /// A head longer than this passes through unparsed: hyper refuses it anyway.
    max_head: usize,
    /// The socket reported its end.
    eof: bool,
}

impl<IO> EncodeTargets<IO> {
    /// A connection whose first bytes start a request head, which may be `max_head` long.
    pub fn new(io: IO, max_head: usize) -> EncodeTargets<IO> {
        EncodeTargets {
            io,
            framing: Framing::Head,
            pending: BytesMut::new(),
            ready: BytesMut::new(),
            max_head,
            eof: false,
        }
    }

    /// A connection passed through untouched (HTTP/2, whose targets never come this way).
    pub fn untouched(io: IO) -> EncodeTargets<IO> {
        EncodeTargets {
            framing: Framing::Off,
            ..EncodeTargets::new(io, 0)
        }
    }

    /// Runs newly read bytes through the framing, moving what is ready to `self.ready`.
    fn take_in(&mut self, input: &[u8]) {
        self.pending.extend_from_slice(input);
        while !self.pending.is_empty() {
            match self.framing {
                Framing::Off => {
                    let all = self.pending.split();
                    self.ready.unsplit(all);
                }
                Framing::Body(left) => {
                    let n = usize::try_from(left)
                        .unwrap_or(usize::MAX)
                        .min(self.pending.len());
                    let body = self.pending.split_to(n);
                    self.ready.unsplit(body);
                    self.framing = after_body(left, n);
                }
                Framing::Head => match parse(&self.pending) {
                    Parsed::Partial if self.pending.len() <= self.max_head => return,
                    Parsed::Partial | Parsed::Refused => self.framing = Framing::Off,
                    Parsed::Head { len, target, next } => {
                        encode_head(&self.pending[..len], target, &mut self.ready);
                        self.pending.advance(len);
                        self.framing = next;
                    }
                },
            }
        }
    }
}

/// The framing after `n` more bytes of a body that had `left` to go.
fn after_body(left: u64, n: usize) -> Framing {
    match left.saturating_sub(n as u64) {
        0 => Framing::Head,
        left => Framing::Body(left),
    }
}

/// What collected bytes turned out to start with.
enum Parsed {
    /// A head, not complete yet.
    Partial,
    /// Not a request head `httparse` takes.
    Refused,
    /// A complete head of `len` bytes, its request target at `target`, and what follows it.
    Head {
        len: usize,
        target: std::ops::Range<usize>,
        next: Framing,
    },
}

fn parse(buf: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Refused,
    };
    let (Some(method), Some(path)) = (req.method, req.path) else {
        return Parsed::Refused;
    };
    // `path` borrows from `buf`: its offset there is where the target starts.
    let start = path.as_ptr() as usize - buf.as_ptr() as usize;
    let target = start..start + path.len();
    let head = |next| Parsed::Head {
        len,
        target: target.clone(),
        next,
    };
    // After a tunnel, an upgrade or an interim answer, bytes are not a request's; and a
    // chunked body is not followed. This head is still a head, so it is encoded.
    if method.eq_ignore_ascii_case("CONNECT") {
        return head(Framing::Off);
    }
    let mut length: Option<u64> = None;
    for header in req.headers.iter() {
        let name = header.name;
        if ["transfer-encoding", "expect", "upgrade"]
            .iter()
            .any(|n| name.eq_ignore_ascii_case(n))
        {
            return head(Framing::Off);
        }
        if name.eq_ignore_ascii_case("content-length") {
            // One plain decimal, or hyper decides (and most likely refuses) on its own terms.
            match (length, decimal(header.value)) {
                (None, Some(n)) => length = Some(n),
                _ => return head(Framing::Off),
            }
        }
    }
    head(match length {
        Some(n) if n > 0 => Framing::Body(n),
        _ => Framing::Head,
    })
}

/// A `Content-Length` value: ASCII digits only, within `u64`.
fn decimal(value: &[u8]) -> Option<u64> {
    if value.is_empty() {
        return None;
    }
    value.iter().try_fold(0u64, |n, &b| {
        b.is_ascii_digit()
            .then(|| n.checked_mul(10)?.checked_add(u64::from(b - b'0')))
            .flatten()
    })
}

/// Copies a head to `out`, its request target percent-encoded where `http::Uri` would refuse it.
fn encode_head(head: &[u8], target: std::ops::Range<usize>, out: &mut BytesMut) {
    out.extend_from_slice(&head[..target.start]);
    let mut in_query = false;
    let mut rest = &head[target.clone()];
    // Only origin-form targets (`/path?query`); `*` and absolute forms pass as they are.
    if !rest.starts_with(b"/") {
        out.extend_from_slice(rest);
        rest = &[];
    }
    while let Some((&b, tail)) = rest.split_first() {
        match (b, in_query) {
            // What follows is a fragment, which `http` drops without looking at it.
            (b'#', _) => {
                out.extend_from_slice(rest);
                break;
            }
            (b'?', _) => in_query = true,
            (b'<' | b'>', _) | (b'`', false) | (b'"', true) => {
                out.extend_from_slice(format!("%{b:02X}").as_bytes());
                rest = tail;
                continue;
            }
            _ => {}
        }
        out.extend_from_slice(&[b]);
        rest = tail;
    }
    out.extend_from_slice(&head[target.end..]);
}

impl<IO: AsyncRead + Unpin> AsyncRead for EncodeTargets<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.ready.is_empty() {
                let n = this.ready.len().min(buf.remaining());
                buf.put_slice(&this.ready[..n]);
                this.ready.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                // A head cut short goes to hyper as it is; then the end.
                if this.pending.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                let rest = this.pending.split();
                this.ready.unsplit(rest);
                continue;
            }
            match this.framing {
                // Everything after framing was given up is read straight into the caller's
                // buffer.
                Framing::Off if this.pending.is_empty() => {
                    return Pin::new(&mut this.io).poll_read(cx, buf);
                }
                // So is a body; what arrives beyond its end is taken back and framed.
                Framing::Body(left) if this.pending.is_empty() => {
                    let before = buf.filled().len();
                    ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
                    let got = buf.filled().len() - before;
                    if got == 0 {
                        this.eof = true;
                        return Poll::Ready(Ok(()));
                    }
                    let body = usize::try_from(left).unwrap_or(usize::MAX).min(got);
                    this.framing = after_body(left, body);
                    if got > body {
                        let beyond = buf.filled()[before + body..].to_vec();
                        buf.set_filled(before + body);
                        this.take_in(&beyond);
                    }
                    return Poll::Ready(Ok(()));
                }
                _ => {
                    let mut chunk = [0u8; READ_CHUNK];
                    let n = {
                        let mut read = ReadBuf::new(&mut chunk);
                        ready!(Pin::new(&mut this.io).poll_read(cx, &mut read))?;
                        read.filled().len()
                    };
                    if n == 0 {
                        this.eof = true;
                        continue;
                    }
                    this.take_in(&chunk[..n]);
                }
            }
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for EncodeTargets<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in pieces of `step` bytes and returns what a reader gets.
    fn through(input: &[u8], step: usize) -> Vec<u8> {
        let mut layer = EncodeTargets::new((), 64 * 1024);
        let mut out = Vec::new();
        for piece in input.chunks(step) {
            layer.take_in(piece);
            out.extend_from_slice(&layer.ready.split());
        }
        out.extend_from_slice(&layer.pending);
        out
    }

    fn check(input: &str, expect: &str) {
        for step in [1, 2, 7, input.len()] {
            assert_eq!(
                String::from_utf8(through(input.as_bytes(), step)).unwrap(),
                expect,
                "in pieces of {step}"
            );
        }
    }

    #[test]
    fn targets_are_encoded_where_http_refuses_them() {
        check(
            "GET /db/_all_docs?startkey=\"a\"&x=<b> HTTP/1.1\r\nHost: h\r\n\r\n",
            "GET /db/_all_docs?startkey=%22a%22&x=%3Cb%3E HTTP/1.1\r\nHost: h\r\n\r\n",
        );
        // `"` is fine in a path; `<`, `>` and `` ` `` are not.
        check(
            "GET /db/\"a\"<`> HTTP/1.1\r\n\r\n",
            "GET /db/\"a\"%3C%60%3E HTTP/1.1\r\n\r\n",
        );
        // A fragment is left alone, and so are targets that are not a path.
        check(
            "GET /db?a=`#\"x\" HTTP/1.1\r\n\r\n",
            "GET /db?a=`#\"x\" HTTP/1.1\r\n\r\n",
        );
        check("OPTIONS * HTTP/1.1\r\n\r\n", "OPTIONS * HTTP/1.1\r\n\r\n");
        check(
            "GET http://h/db?k=\"a\" HTTP/1.1\r\n\r\n",
            "GET http://h/db?k=\"a\" HTTP/1.1\r\n\r\n",
        );
    }

    #[test]
    fn bodies_are_never_touched_and_the_next_head_is_found() {
        let body = "{\"a\":\"GET /x?\\\"<>\"}";
        let input = format!(
            "PUT /db/d?x=\"1\" HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}\
             GET /db?k=\"2\" HTTP/1.1\r\nContent-Length: 0\r\n\r\n\
             GET /db?k=\"3\" HTTP/1.1\r\n\r\n",
            body.len()
        );
        let expect = format!(
            "PUT /db/d?x=%221%22 HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}\
             GET /db?k=%222%22 HTTP/1.1\r\nContent-Length: 0\r\n\r\n\
             GET /db?k=%223%22 HTTP/1.1\r\n\r\n",
            body.len()
        );
        check(&input, &expect);
    }

    #[test]
    fn after_framing_it_does_not_follow_everything_passes_through() {
        let next = "GET /x?k=\"2\" HTTP/1.1\r\n\r\n";
        for head in [
            "POST /db?k=\"1\" HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "PUT /db?k=\"1\" HTTP/1.1\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n",
            "GET /_outpost/v1/feed?k=\"1\" HTTP/1.1\r\nUpgrade: websocket\r\n\r\n",
            "CONNECT /h?k=\"1\" HTTP/1.1\r\n\r\n",
            "PUT /db?k=\"1\" HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n",
            "PUT /db?k=\"1\" HTTP/1.1\r\nContent-Length: +3\r\n\r\n",
            "PUT /db?k=\"1\" HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
        ] {
            // The head itself is a head and is encoded; nothing after it is touched.
            let input = format!("{head}{next}");
            let expect = format!("{}{next}", head.replace("k=\"1\"", "k=%221%22"));
            check(&input, &expect);
        }
        // Not HTTP/1 at all.
        let preface = format!("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n{next}");
        check(&preface, &preface);
    }

    #[test]
    fn a_head_that_grows_beyond_the_limit_passes_through() {
        let mut layer = EncodeTargets::new((), 64);
        let start = format!("GET /x?k=\"1\" HTTP/1.1\r\nX: {}\r\n", "y".repeat(20));
        layer.take_in(start.as_bytes());
        assert!(layer.ready.is_empty());
        let more = format!("Y: {}\r\n", "z".repeat(40));
        layer.take_in(more.as_bytes());
        assert_eq!(layer.framing, Framing::Off);
        let end = "\r\nGET /x?k=\"2\" HTTP/1.1\r\n\r\n";
        layer.take_in(end.as_bytes());
        assert_eq!(layer.ready, format!("{start}{more}{end}").as_bytes());
    }

    #[test]
    fn content_length_values() {
        assert_eq!(decimal(b"0"), Some(0));
        assert_eq!(decimal(b"18446744073709551615"), Some(u64::MAX));
        for bad in [
            &b""[..],
            b"18446744073709551616",
            b"+1",
            b"1 ",
            b"1,1",
            b"-1",
        ] {
            assert_eq!(decimal(bad), None, "{bad:?}");
        }
    }
}
