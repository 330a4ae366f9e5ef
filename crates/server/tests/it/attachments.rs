//! Attachments stored gzip-encoded, as CouchDB 3.5 stores them: which are compressed, what a
//! stub shows with and without `att_encoding_info`, what `GET /{db}/{doc}/{att}` sends for each
//! `Accept-Encoding` and `Range`, inline and multipart forms, and attachments sent encoded.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use outpost_core::attachment::{Compression, gunzip, gzip};
use outpost_core::hash::attachment_digest;
use outpost_server::Config;
use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, TestCaseError, TestRunner};
use serde_json::{Value, json};

use crate::support::{TestServer, assert_error};

/// Text that compresses well.
fn prose(len: usize) -> Vec<u8> {
    b"All work and no play makes Jack a dull boy. "
        .iter()
        .copied()
        .cycle()
        .take(len)
        .collect()
}

/// Letters that compress to about two thirds: big enough stored to take several of the ranges
/// an attachment is read in.
fn letters(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b'a' + (x % 26) as u8
        })
        .collect()
}

/// How CouchDB's default settings store these bytes: gzip at level 8.
fn stored(identity: &[u8]) -> Vec<u8> {
    gzip(identity, 8)
}

async fn server(config: Config) -> TestServer {
    let s = TestServer::with_config(config);
    s.expect("PUT", "/db", None, 201).await;
    s
}

/// `PUT` of an attachment alone; returns the new revision.
async fn put_attachment(
    s: &TestServer,
    path: &str,
    content_type: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> String {
    let mut all = vec![("content-type", content_type)];
    all.extend_from_slice(headers);
    let (status, _, answer) = s.raw("PUT", path, &all, Some(body.to_vec())).await;
    assert_eq!(status.as_u16(), 201, "{}", String::from_utf8_lossy(&answer));
    let answer: Value = serde_json::from_slice(&answer).unwrap();
    answer["rev"].as_str().unwrap().to_owned()
}

/// `GET` of an attachment with request headers: status, headers, body.
async fn get(
    s: &TestServer,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, http::HeaderMap, Vec<u8>) {
    let (status, headers, body) = s.raw("GET", path, headers, None).await;
    (status.as_u16(), headers, body)
}

fn header<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).map(|v| v.to_str().unwrap())
}

#[tokio::test]
async fn compressible_types_are_stored_gzip_encoded_and_shown_so_only_when_asked() {
    let s = server(Config::default()).await;
    let text = prose(10_000);
    let png = letters(3000, 7);
    let rev = put_attachment(&s, "/db/d/t.txt", "text/plain; charset=utf-8", &[], &text).await;
    put_attachment(
        &s,
        &format!("/db/d/i.png?rev={rev}"),
        "image/png",
        &[],
        &png,
    )
    .await;

    let doc = s.expect("GET", "/db/d", None, 200).await;
    let encoded = stored(&text);
    assert_eq!(
        doc["_attachments"]["t.txt"],
        json!({"content_type": "text/plain; charset=utf-8", "digest": attachment_digest(&encoded),
               "length": text.len(), "revpos": 1, "stub": true})
    );
    assert_eq!(
        doc["_attachments"]["i.png"],
        json!({"content_type": "image/png", "digest": attachment_digest(&png),
               "length": png.len(), "revpos": 2, "stub": true})
    );
    let doc = s
        .expect("GET", "/db/d?att_encoding_info=true", None, 200)
        .await;
    assert_eq!(doc["_attachments"]["t.txt"]["encoding"], "gzip");
    assert_eq!(
        doc["_attachments"]["t.txt"]["encoded_length"],
        json!(encoded.len())
    );
    assert_eq!(doc["_attachments"]["t.txt"]["length"], json!(text.len()));
    assert_eq!(doc["_attachments"]["i.png"].get("encoding"), None);
    assert_eq!(doc["_attachments"]["i.png"].get("encoded_length"), None);

    // Inline, the data is the identity bytes; `length` is left out as ever, the encoding shown
    // only when asked.
    let inline = s.expect("GET", "/db/d?attachments=true", None, 200).await;
    let att = &inline["_attachments"]["t.txt"];
    assert_eq!(att["data"], BASE64.encode(&text));
    assert!(
        att.get("encoding").is_none() && att.get("length").is_none(),
        "{att}"
    );
    let inline = s
        .expect(
            "GET",
            "/db/d?attachments=true&att_encoding_info=true",
            None,
            200,
        )
        .await;
    let att = &inline["_attachments"]["t.txt"];
    assert_eq!(att["data"], BASE64.encode(&text));
    assert_eq!(att["encoding"], "gzip");
    assert_eq!(att["encoded_length"], json!(encoded.len()));
    assert_eq!(inline["_attachments"]["i.png"]["data"], BASE64.encode(&png));
}

/// CouchDB's documentation ("Retrieving Attachments Encoding Info", api/document/common.rst)
/// shows an 85-byte `text/plain` attachment stored in 100 gzip bytes next to a `image/jpeg` one
/// stored as it came: a compressible type is compressed even when that makes it larger, as
/// `couch_db:with_stream/3` does.
#[tokio::test]
async fn text_is_stored_encoded_even_when_gzip_is_larger_as_couchdbs_documentation_shows() {
    let s = server(Config::default()).await;
    // Bytes gzip cannot shrink, sent as text.
    let recipe: Vec<u8> = letters(170, 4)
        .chunks(2)
        .map(|p| ((p[0] - b'a') % 16) * 16 + (p[1] - b'a') % 16)
        .collect();
    let photo = letters(2000, 8);
    let rev = put_attachment(&s, "/db/r/my_recipe.txt", "text/plain", &[], &recipe).await;
    put_attachment(
        &s,
        &format!("/db/r/photo.jpg?rev={rev}"),
        "image/jpeg",
        &[],
        &photo,
    )
    .await;
    let doc = s
        .expect("GET", "/db/r?att_encoding_info=true", None, 200)
        .await;
    let keys = |att: &Value| {
        let mut keys: Vec<String> = att.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        keys
    };
    let recipe_stub = &doc["_attachments"]["my_recipe.txt"];
    assert_eq!(
        keys(recipe_stub),
        [
            "content_type",
            "digest",
            "encoded_length",
            "encoding",
            "length",
            "revpos",
            "stub"
        ]
    );
    assert_eq!(recipe_stub["length"], 85);
    assert!(
        recipe_stub["encoded_length"].as_u64().unwrap() > 85,
        "{recipe_stub}"
    );
    assert_eq!(recipe_stub["encoding"], "gzip");
    let photo_stub = &doc["_attachments"]["photo.jpg"];
    assert_eq!(
        keys(photo_stub),
        ["content_type", "digest", "length", "revpos", "stub"]
    );
}

#[tokio::test]
async fn accept_encoding_decides_whether_the_stored_gzip_is_sent() {
    let s = server(Config::default()).await;
    let text = prose(50_000);
    let encoded = stored(&text);
    let rev = put_attachment(&s, "/db/d/t.txt", "text/plain", &[], &text).await;
    let png = letters(4000, 3);
    put_attachment(
        &s,
        &format!("/db/d/p.png?rev={rev}"),
        "image/png",
        &[],
        &png,
    )
    .await;
    let etag = format!(
        "\"{}\"",
        attachment_digest(&encoded).strip_prefix("md5-").unwrap()
    );

    for (accept, gzip_sent) in [
        (None, false),
        (Some("gzip"), true),
        (Some("gzip, deflate, br"), true),
        (Some("deflate"), false),
        (Some("gzip;q=0"), false),
        (Some("identity;q=0, gzip"), true),
        (Some("*"), true),
    ] {
        let headers: Vec<(&str, &str)> = accept.iter().map(|a| ("accept-encoding", *a)).collect();
        let (status, h, body) = get(&s, "/db/d/t.txt", &headers).await;
        assert_eq!(status, 200, "{accept:?}");
        let (want, coding) = if gzip_sent {
            (&encoded, Some("gzip"))
        } else {
            (&text, None)
        };
        assert_eq!(&body, want, "{accept:?}");
        assert_eq!(header(&h, "content-encoding"), coding, "{accept:?}");
        assert_eq!(
            header(&h, "content-length"),
            Some(want.len().to_string().as_str()),
            "{accept:?}"
        );
        assert_eq!(header(&h, "content-type"), Some("text/plain"));
        assert_eq!(header(&h, "accept-ranges"), Some("none"), "{accept:?}");
        // One ETag, the stored digest, whichever bytes are sent; so one 304 too.
        assert_eq!(header(&h, "etag"), Some(etag.as_str()));
        let mut conditional = headers.clone();
        conditional.push(("if-none-match", &etag));
        assert_eq!(get(&s, "/db/d/t.txt", &conditional).await.0, 304);
    }

    // An attachment stored as it came is sent so, whatever the client takes.
    let (status, h, body) = get(&s, "/db/d/p.png", &[("accept-encoding", "gzip")]).await;
    assert_eq!((status, body), (200, png.clone()));
    assert_eq!(header(&h, "content-encoding"), None);
    assert_eq!(header(&h, "accept-ranges"), Some("bytes"));

    // A client that refuses both codings: 406. A quality that is not one: 400.
    for path in ["/db/d/t.txt", "/db/d/p.png"] {
        let (status, _, body) = get(&s, path, &[("accept-encoding", "*;q=0")]).await;
        assert_eq!(status, 406);
        assert_error(&serde_json::from_slice(&body).unwrap(), "not_acceptable");
        let (status, _, body) = get(&s, path, &[("accept-encoding", "gzip;q=2")]).await;
        assert_eq!(status, 400);
        assert_error(&serde_json::from_slice(&body).unwrap(), "bad_request");
    }
    // Refusing identity only is no obstacle to an identity attachment, as in CouchDB.
    let (status, _, body) = get(
        &s,
        "/db/d/p.png",
        &[("accept-encoding", "gzip, identity;q=0")],
    )
    .await;
    assert_eq!((status, body), (200, png));
}

#[tokio::test]
async fn ranges_are_served_of_identity_attachments_only() {
    let s = server(Config::default()).await;
    let text = prose(20_000);
    let rev = put_attachment(&s, "/db/d/t.txt", "text/plain", &[], &text).await;
    let bin = letters(20_000, 9);
    put_attachment(
        &s,
        &format!("/db/d/b.bin?rev={rev}"),
        "application/octet-stream",
        &[],
        &bin,
    )
    .await;
    // Encoded: the whole attachment, as CouchDB answers (`Accept-Ranges: none`).
    for accept in ["identity", "gzip"] {
        let (status, h, body) = get(
            &s,
            "/db/d/t.txt",
            &[("range", "bytes=100-199"), ("accept-encoding", accept)],
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(header(&h, "content-range"), None);
        let whole = if accept == "gzip" {
            gunzip(&body, u64::MAX).unwrap()
        } else {
            body
        };
        assert_eq!(whole, text);
    }
    // Identity: the bytes asked for.
    let (status, h, body) = get(&s, "/db/d/b.bin", &[("range", "bytes=100-199")]).await;
    assert_eq!(status, 206);
    assert_eq!(body, &bin[100..200]);
    assert_eq!(header(&h, "content-range"), Some("bytes 100-199/20000"));
    assert_eq!(header(&h, "content-length"), Some("100"));
    let (status, _, body) = get(&s, "/db/d/b.bin", &[("range", "bytes=-5")]).await;
    assert_eq!((status, body.as_slice()), (206, &bin[19_995..]));
    let (status, h, _) = get(&s, "/db/d/b.bin", &[("range", "bytes=20000-")]).await;
    assert_eq!(status, 416);
    assert_eq!(header(&h, "content-range"), Some("bytes */20000"));
}

#[tokio::test]
async fn attachments_sent_gzip_encoded_are_stored_as_they_came() {
    let s = server(Config {
        max_attachment_size: 100_000,
        ..Config::default()
    })
    .await;
    let text = prose(60_000);
    // Another level than the server's: kept byte for byte, not compressed again.
    let sent = gzip(&text, 1);
    assert_ne!(sent, stored(&text));
    let rev = put_attachment(
        &s,
        "/db/d/t.txt",
        "text/plain",
        &[("content-encoding", "gzip")],
        &sent,
    )
    .await;
    // Any content type: the client said how the bytes are coded.
    put_attachment(
        &s,
        &format!("/db/d/b.bin?rev={rev}"),
        "application/octet-stream",
        &[("content-encoding", "gzip")],
        &sent,
    )
    .await;
    let doc = s
        .expect("GET", "/db/d?att_encoding_info=true", None, 200)
        .await;
    for name in ["t.txt", "b.bin"] {
        let att = &doc["_attachments"][name];
        assert_eq!(att["digest"], attachment_digest(&sent), "{name}");
        assert_eq!(att["length"], json!(text.len()), "{name}");
        assert_eq!(att["encoding"], "gzip", "{name}");
        assert_eq!(att["encoded_length"], json!(sent.len()), "{name}");
        let path = format!("/db/d/{name}");
        let (_, h, body) = get(&s, &path, &[("accept-encoding", "gzip")]).await;
        assert_eq!(body, sent);
        assert_eq!(header(&h, "content-encoding"), Some("gzip"));
        assert_eq!(get(&s, &path, &[]).await.2, text);
    }

    // Not gzip, cut short, or larger than an attachment may be once decoded: refused.
    let current = s.expect("GET", "/db/d", None, 200).await["_rev"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = format!("/db/d/x.txt?rev={current}");
    let bomb = gzip(&prose(100_001), 9);
    for (body, status, code) in [
        (&b"not gzip at all"[..], 400, "bad_request"),
        (&sent[..sent.len() - 4], 400, "bad_request"),
        (&bomb[..], 413, "attachment_too_large"),
    ] {
        let (got, _, answer) = s
            .raw(
                "PUT",
                &path,
                &[("content-type", "text/plain"), ("content-encoding", "gzip")],
                Some(body.to_vec()),
            )
            .await;
        assert_eq!(got.as_u16(), status);
        assert_error(&serde_json::from_slice(&answer).unwrap(), code);
    }
    // A body sent deflate-encoded is still undone before it is stored (and then compressed by
    // type like any other).
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut z, &text).unwrap();
    put_attachment(
        &s,
        &path,
        "text/plain",
        &[("content-encoding", "deflate")],
        &z.finish().unwrap(),
    )
    .await;
    let doc = s
        .expect("GET", "/db/d?att_encoding_info=true", None, 200)
        .await;
    assert_eq!(
        doc["_attachments"]["x.txt"]["digest"],
        attachment_digest(&stored(&text))
    );
}

#[tokio::test]
async fn compression_follows_the_configured_level_and_types() {
    let text = prose(5000);
    let svg = b"<svg xmlns='http://www.w3.org/2000/svg'></svg>".repeat(40);
    for (compression, text_encoded, svg_encoded) in [
        (Compression::new(0, "text/*").unwrap(), false, false),
        (Compression::new(1, "image/svg+xml").unwrap(), false, true),
        (Compression::new(9, "*").unwrap(), true, true),
    ] {
        let level = compression.level();
        let s = server(Config {
            attachments: compression,
            ..Config::default()
        })
        .await;
        let doc = json!({"_attachments": {
            "t.txt": {"content_type": "text/plain", "data": BASE64.encode(&text)},
            "s.svg": {"content_type": "image/svg+xml", "data": BASE64.encode(&svg)},
        }});
        s.expect("PUT", "/db/d", Some(doc), 201).await;
        let doc = s
            .expect("GET", "/db/d?att_encoding_info=true", None, 200)
            .await;
        for (name, data, encoded) in [("t.txt", &text, text_encoded), ("s.svg", &svg, svg_encoded)]
        {
            let att = &doc["_attachments"][name];
            let digest = if encoded {
                attachment_digest(&gzip(data, level))
            } else {
                attachment_digest(data)
            };
            assert_eq!(att["digest"], digest, "{name} at level {level}");
            assert_eq!(att.get("encoding").is_some(), encoded, "{name} at {level}");
            assert_eq!(get(&s, &format!("/db/d/{name}"), &[]).await.2, *data);
        }
        let config = s
            .expect("GET", "/_node/_local/_config/attachments", None, 200)
            .await;
        assert_eq!(config["compression_level"], level.to_string());
    }
    let config = TestServer::new()
        .expect("GET", "/_node/_local/_config/attachments", None, 200)
        .await;
    assert_eq!(
        config,
        json!({"compression_level": "8",
               "compressible_types": "text/*, application/javascript, application/json, application/xml"})
    );
}

#[tokio::test]
async fn encoding_information_shows_in_listings_only_when_asked() {
    let s = server(Config::default()).await;
    let text = prose(3000);
    let doc = json!({"kind": "note", "_attachments": {
        "t.txt": {"content_type": "text/plain", "data": BASE64.encode(&text)}
    }});
    let rev = s.expect("PUT", "/db/d", Some(doc), 201).await["rev"]
        .as_str()
        .unwrap()
        .to_owned();
    let encoded_length = json!(stored(&text).len());
    let design = json!({
        "views": {"atts": {"map": "function (doc) { if (doc._attachments) emit(doc._id, doc._attachments['t.txt']); }"}},
        "filters": {"unaware": "function (doc) { return !!doc._attachments && !doc._attachments['t.txt'].encoding; }"},
    });
    s.expect("PUT", "/db/_design/v", Some(design), 201).await;

    // (path, method, body, where the attachment is in the answer)
    let pointer = "/_attachments/t.txt";
    let cases: Vec<(String, &str, Option<Value>, String)> = vec![
        ("/db/d".into(), "GET", None, pointer.into()),
        (
            "/db/_all_docs?include_docs=true".into(),
            "GET",
            None,
            format!("/rows/1/doc{pointer}"),
        ),
        (
            "/db/_changes?include_docs=true".into(),
            "GET",
            None,
            format!("/results/0/doc{pointer}"),
        ),
        (
            format!("/db/d?open_revs=%5B%22{rev}%22%5D"),
            "GET",
            None,
            format!("/0/ok{pointer}"),
        ),
        (
            "/db/_bulk_get".into(),
            "POST",
            Some(json!({"docs": [{"id": "d"}]})),
            format!("/results/0/docs/0/ok{pointer}"),
        ),
        (
            "/db/_design/v/_view/atts?include_docs=true".into(),
            "GET",
            None,
            format!("/rows/0/doc{pointer}"),
        ),
    ];
    for (path, method, body, at) in cases {
        let plain = s.expect(method, &path, body.clone(), 200).await;
        let att = plain
            .pointer(&at)
            .unwrap_or_else(|| panic!("{path}: {plain}"));
        assert_eq!(att["length"], json!(text.len()), "{path}");
        assert!(att.get("encoding").is_none(), "{path}: {att}");
        assert!(att.get("encoded_length").is_none(), "{path}: {att}");
        let sep = if path.contains('?') { '&' } else { '?' };
        let shown = s
            .expect(
                method,
                &format!("{path}{sep}att_encoding_info=true"),
                body,
                200,
            )
            .await;
        let att = shown
            .pointer(&at)
            .unwrap_or_else(|| panic!("{path}: {shown}"));
        assert_eq!(att["encoding"], "gzip", "{path}");
        assert_eq!(att["encoded_length"], encoded_length, "{path}");
    }

    // What map and filter functions and `_find` see is the document as a client reads it, even
    // where the answer shows the encoding.
    let filtered = s
        .expect(
            "GET",
            "/db/_changes?filter=v/unaware&include_docs=true&att_encoding_info=true",
            None,
            200,
        )
        .await;
    assert_eq!(crate::support::feed_ids(&filtered), ["d"]);
    assert_eq!(
        filtered["results"][0]["doc"]["_attachments"]["t.txt"]["encoding"],
        "gzip"
    );
    let view = s.expect("GET", "/db/_design/v/_view/atts", None, 200).await;
    let emitted = &view["rows"][0]["value"];
    assert_eq!(emitted["length"], json!(text.len()));
    assert!(emitted.get("encoding").is_none(), "{emitted}");
    s.expect(
        "POST",
        "/db/_index",
        Some(json!({"index": {"fields": ["kind"]}})),
        200,
    )
    .await;
    let found = s
        .expect(
            "POST",
            "/db/_find",
            Some(json!({"selector": {"kind": "note"}})),
            200,
        )
        .await;
    let att = &found["docs"][0]["_attachments"]["t.txt"];
    assert_eq!(att["stub"], true);
    assert!(att.get("encoding").is_none(), "{att}");
}

#[tokio::test]
async fn inline_attachments_are_decoded_range_by_range_in_streamed_answers() {
    let s = server(Config::default()).await;
    // Stored encoded, this takes several of the ranges an attachment is read in.
    let big = letters(6 << 20, 11);
    let encoded = stored(&big);
    assert!(encoded.len() > 3 * 1024 * 1024, "{}", encoded.len());
    put_attachment(&s, "/db/big/l.txt", "text/plain", &[], &big).await;
    let want = BASE64.encode(&big);
    for path in [
        "/db/big?attachments=true",
        "/db/_all_docs?include_docs=true&attachments=true",
        "/db/_changes?include_docs=true&attachments=true",
    ] {
        let answer = s.expect("GET", path, None, 200).await;
        let data = [
            "/_attachments/l.txt/data",
            "/rows/0/doc/_attachments/l.txt/data",
            "/results/0/doc/_attachments/l.txt/data",
        ]
        .iter()
        .find_map(|p| answer.pointer(p))
        .unwrap_or_else(|| panic!("{path}"));
        assert!(data == &Value::String(want.clone()), "{path}");
    }
    let bulk = s
        .expect(
            "POST",
            "/db/_bulk_get?attachments=true",
            Some(json!({"docs": [{"id": "big"}]})),
            200,
        )
        .await;
    assert_eq!(
        bulk["results"][0]["docs"][0]["ok"]["_attachments"]["l.txt"]["data"],
        Value::String(want)
    );
    let (status, _, body) = get(&s, "/db/big/l.txt", &[]).await;
    assert_eq!(status, 200);
    assert!(body == big);
    let (_, _, body) = get(&s, "/db/big/l.txt", &[("accept-encoding", "gzip")]).await;
    assert!(body == encoded);
}

/// The parts of a `multipart/related` body: (headers, body) each.
fn parts(body: &[u8], content_type: &str) -> Vec<(String, Vec<u8>)> {
    let boundary = content_type
        .split("boundary=")
        .nth(1)
        .unwrap()
        .trim_matches('"')
        .to_owned();
    let delimiter = format!("--{boundary}");
    let text = body;
    let mut out = Vec::new();
    let mut rest = text;
    let find = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).position(|w| w == needle);
    while let Some(at) = find(rest, delimiter.as_bytes()) {
        rest = &rest[at + delimiter.len()..];
        if rest.starts_with(b"--") {
            break;
        }
        rest = &rest[2..];
        let head_end = find(rest, b"\r\n\r\n").unwrap();
        let head = String::from_utf8_lossy(&rest[..head_end]).into_owned();
        rest = &rest[head_end + 4..];
        let end = find(rest, format!("\r\n{delimiter}").as_bytes()).unwrap();
        out.push((head, rest[..end].to_vec()));
        rest = &rest[end + 2..];
    }
    out
}

#[tokio::test]
async fn multipart_answers_carry_encoded_bytes_that_replicate_as_they_are() {
    let s = server(Config::default()).await;
    s.expect("PUT", "/copy", None, 201).await;
    let text = prose(40_000);
    let bin = letters(5000, 5);
    let doc = json!({"v": 1, "_attachments": {
        "t.txt": {"content_type": "text/plain", "data": BASE64.encode(&text)},
        "b.bin": {"content_type": "application/octet-stream", "data": BASE64.encode(&bin)},
    }});
    let rev = s.expect("PUT", "/db/d", Some(doc), 201).await["rev"]
        .as_str()
        .unwrap()
        .to_owned();
    let encoded = stored(&text);

    // As CouchDB's replicator pulls it: the JSON says how each part is coded, and the encoded
    // part travels as stored.
    let (status, h, body) = get(
        &s,
        "/db/d?attachments=true&revs=true",
        &[("accept", "multipart/related")],
    )
    .await;
    assert_eq!(status, 200);
    let content_type = header(&h, "content-type").unwrap().to_owned();
    let parts = parts(&body, &content_type);
    let json_part: Value = serde_json::from_slice(&parts[0].1).unwrap();
    let t = &json_part["_attachments"]["t.txt"];
    assert_eq!(t["follows"], true);
    assert_eq!(t["encoding"], "gzip");
    assert_eq!(t["encoded_length"], json!(encoded.len()));
    assert_eq!(t["length"], json!(text.len()));
    assert!(json_part["_attachments"]["b.bin"].get("encoding").is_none());
    let part = |name: &str| {
        parts
            .iter()
            .find(|(head, _)| head.contains(&format!("filename=\"{name}\"")))
            .map(|(_, bytes)| bytes.clone())
            .unwrap()
    };
    assert!(part("t.txt") == encoded);
    assert!(part("b.bin") == bin);

    // The same with `open_revs`, as `multipart/mixed`.
    let (status, _, mixed) = get(
        &s,
        &format!("/db/d?open_revs=%5B%22{rev}%22%5D&revs=true"),
        &[("accept", "multipart/mixed")],
    )
    .await;
    assert_eq!(status, 200);
    let text_mixed = String::from_utf8_lossy(&mixed);
    assert!(text_mixed.contains("\"encoding\":\"gzip\""), "{text_mixed}");

    // Pushed back as CouchDB's replicator pushes it: stored as it came, the digest unchanged.
    let (status, _, answer) = s
        .raw(
            "PUT",
            "/copy/d?new_edits=false",
            &[("content-type", &content_type)],
            Some(body.clone()),
        )
        .await;
    assert_eq!(status.as_u16(), 201, "{}", String::from_utf8_lossy(&answer));
    let original = s
        .expect("GET", "/db/d?att_encoding_info=true", None, 200)
        .await;
    let copy = s
        .expect("GET", "/copy/d?att_encoding_info=true", None, 200)
        .await;
    assert_eq!(copy["_rev"], rev);
    assert_eq!(copy["_attachments"], original["_attachments"]);
    assert!(get(&s, "/copy/d/t.txt", &[]).await.2 == text);
}

#[tokio::test]
async fn a_document_copied_with_its_stubs_keeps_how_they_are_stored() {
    let s = server(Config::default()).await;
    let text = prose(8000);
    let rev = put_attachment(&s, "/db/d/t.txt", "text/plain", &[], &text).await;
    // An edit that sends the stub back as a client read it (without encoding information).
    let mut doc = s.expect("GET", "/db/d", None, 200).await;
    doc["v"] = json!(2);
    let rev2 = s.expect("PUT", "/db/d", Some(doc), 201).await["rev"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(rev, rev2);
    // Deleting another attachment, adding one: the encoded one stays encoded.
    let png = letters(100, 1);
    put_attachment(
        &s,
        &format!("/db/d/p.png?rev={rev2}"),
        "image/png",
        &[],
        &png,
    )
    .await;
    let doc = s
        .expect("GET", "/db/d?att_encoding_info=true", None, 200)
        .await;
    assert_eq!(doc["_attachments"]["t.txt"]["encoding"], "gzip");
    assert_eq!(
        doc["_attachments"]["t.txt"]["digest"],
        attachment_digest(&stored(&text))
    );
    assert!(get(&s, "/db/d/t.txt", &[]).await.2 == text);
}

#[tokio::test]
async fn attachments_come_back_byte_for_byte_over_a_socket() {
    use outpost_server::AppState;
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(outpost_store::sqlite::SqliteStore::open(dir.path()).unwrap());
    let shutdown = tokio_util::sync::CancellationToken::new();
    let state = AppState::new(store, Config::default(), shutdown.clone());
    let base = format!("http://{}", crate::support::serve_on_loopback(state).await);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::new();
    let big = letters(3 << 20, 13);
    let encoded = stored(&big);
    assert_eq!(
        client
            .put(format!("{base}/db"))
            .send()
            .await
            .unwrap()
            .status(),
        201
    );
    let put = client
        .put(format!("{base}/db/d/l.txt"))
        .header("content-type", "text/plain")
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 201);

    let plain = client
        .get(format!("{base}/db/d/l.txt"))
        .send()
        .await
        .unwrap();
    assert_eq!(plain.headers().get("content-encoding"), None);
    assert_eq!(plain.content_length(), Some(big.len() as u64));
    assert!(plain.bytes().await.unwrap() == big);
    let zipped = client
        .get(format!("{base}/db/d/l.txt"))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(zipped.headers()["content-encoding"], "gzip");
    assert_eq!(zipped.content_length(), Some(encoded.len() as u64));
    assert!(zipped.bytes().await.unwrap() == encoded);
    // HEAD tells the length of what GET would send, and sends nothing.
    for (accept, length) in [("identity", big.len()), ("gzip", encoded.len())] {
        let head = client
            .head(format!("{base}/db/d/l.txt"))
            .header("accept-encoding", accept)
            .send()
            .await
            .unwrap();
        assert_eq!(head.status(), 200);
        assert_eq!(
            head.headers()["content-length"],
            length.to_string().as_str(),
            "{accept}"
        );
        assert!(head.bytes().await.unwrap().is_empty());
    }
    // A range of an attachment stored as it came, and none of one stored encoded.
    let rev = put.headers()["etag"]
        .to_str()
        .unwrap()
        .trim_matches('"')
        .to_owned();
    let bin = letters(100_000, 17);
    let put = client
        .put(format!("{base}/db/d/b.bin?rev={rev}"))
        .header("content-type", "application/octet-stream")
        .body(bin.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 201);
    for (name, status, expected) in [("b.bin", 206, &bin[1000..3000]), ("l.txt", 200, &big[..])] {
        let answer = client
            .get(format!("{base}/db/d/{name}"))
            .header("range", "bytes=1000-2999")
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), status, "{name}");
        assert!(answer.bytes().await.unwrap() == expected, "{name}");
    }
    shutdown.cancel();
}

/// Property: any attachment, compressible or not, comes back byte for byte: alone (identity and
/// gzip, uploaded plain or gzip-encoded), inline as base64, and the stub's `length` is the
/// identity length.
#[test]
fn random_attachments_round_trip() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let s = runtime.block_on(server(Config::default()));
    let content_types = prop::sample::select(vec![
        "text/plain",
        "application/json",
        "text/html; charset=utf-8",
        "image/png",
        "application/octet-stream",
    ]);
    let bytes = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..3000),
        (0usize..20_000, any::<u64>()).prop_map(|(len, seed)| letters(len, seed)),
        (0usize..20_000).prop_map(prose),
    ];
    let strategy = (content_types, bytes, any::<bool>());
    let mut runner = TestRunner::new(RunnerConfig {
        cases: 48,
        ..RunnerConfig::default()
    });
    let n = std::sync::atomic::AtomicU32::new(0);
    runner
        .run(&strategy, |(content_type, data, sent_encoded)| {
            let id = format!(
                "doc{}",
                n.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            );
            runtime.block_on(async {
                let headers: &[(&str, &str)] = if sent_encoded {
                    &[("content-encoding", "gzip")]
                } else {
                    &[]
                };
                let body = if sent_encoded {
                    gzip(&data, 6)
                } else {
                    data.clone()
                };
                put_attachment(&s, &format!("/db/{id}/a"), content_type, headers, &body).await;
                let path = format!("/db/{id}/a");
                let (status, _, plain) = get(&s, &path, &[]).await;
                prop_assert_eq!(status, 200);
                prop_assert!(plain == data, "identity bytes differ");
                let (_, h, maybe) = get(&s, &path, &[("accept-encoding", "gzip")]).await;
                let decoded = if header(&h, "content-encoding") == Some("gzip") {
                    gunzip(&maybe, u64::MAX).map_err(|e| TestCaseError::fail(e.to_string()))?
                } else {
                    maybe
                };
                prop_assert!(decoded == data, "bytes sent for gzip differ");
                let doc = s
                    .expect("GET", &format!("/db/{id}?attachments=true"), None, 200)
                    .await;
                let inline = BASE64
                    .decode(doc["_attachments"]["a"]["data"].as_str().unwrap())
                    .unwrap();
                prop_assert!(inline == data, "inline bytes differ");
                let stub = s.expect("GET", &format!("/db/{id}"), None, 200).await;
                prop_assert_eq!(&stub["_attachments"]["a"]["length"], &json!(data.len()));
                Ok(())
            })
        })
        .unwrap();
}
