//! Attachments stored gzip-encoded (see [`outpost_core::attachment`]): the store keeps the bytes
//! it is given under the digest of those bytes, and the stub keeps how they are coded through
//! every revision that takes the attachment over.

use std::sync::Arc;

use outpost_core::Rev;
use outpost_core::attachment::{gunzip, gzip};
use serde_json::{Value, json};

use super::compaction::write;
use super::edit;
use crate::{DocError, DocUpdate, NewAttachment, Origin, Store, UpdateMode};

/// Text that compresses well, different for each `seed`.
fn text(seed: u32, len: usize) -> Vec<u8> {
    format!("line {seed} of some compressible text; ")
        .into_bytes()
        .into_iter()
        .cycle()
        .take(len)
        .collect()
}

/// An edit of `id` whose attachment `name` is `identity` stored gzip-encoded, as the server
/// hands such an attachment over: the entry with the identity `length`, `encoding`,
/// `encoded_length` and the digest of the encoded bytes.
fn encoded(id: &str, base: Option<&Rev>, name: &str, identity: &[u8]) -> (DocUpdate, String) {
    let data = gzip(identity, 8);
    let digest = outpost_core::hash::attachment_digest(&data);
    let mut update = edit(
        id,
        base,
        json!({"_attachments": {name: {
            "content_type": "text/plain",
            "digest": digest,
            "length": identity.len(),
            "encoding": "gzip",
            "encoded_length": data.len(),
        }}}),
    );
    update.new_attachments = vec![NewAttachment {
        digest: digest.clone(),
        data,
    }];
    (update, digest)
}

/// The stored stub of attachment `name` of one revision.
async fn stub(store: &dyn Store, db: &str, id: &str, rev: &Rev, name: &str) -> Value {
    let body = store
        .bodies(db, &[(id.to_owned(), rev.clone())])
        .await
        .unwrap()
        .pop()
        .flatten()
        .unwrap();
    let body: Value = serde_json::from_str(&body.json).unwrap();
    body["_attachments"][name].clone()
}

/// Every stored byte of an attachment, read a range at a time as responses read it.
async fn read_in_ranges(store: &dyn Store, digest: &str, range: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let piece = store
            .attachment_range(digest, out.len() as u64, range)
            .await
            .unwrap()
            .unwrap();
        out.extend_from_slice(&piece);
        if (piece.len() as u64) < range {
            return out;
        }
    }
}

pub async fn encoded_attachments_keep_their_bytes_and_coding_through_every_revision(
    store: Arc<dyn Store>,
) {
    store.create_db("db").await.unwrap();
    let identity = text(1, 100_000);
    let (update, digest) = encoded("a", None, "t.txt", &identity);
    let data = update.new_attachments[0].data.clone();
    assert!(data.len() < identity.len() / 10);
    let first = write(&*store, "db", update).await;

    // The bytes as given, under their own digest; whole or by ranges, they decode back.
    assert_eq!(store.attachment(&digest).await.unwrap(), Some(data.clone()));
    assert_eq!(read_in_ranges(&*store, &digest, 1000).await, data);
    assert_eq!(
        gunzip(&read_in_ranges(&*store, &digest, 777).await, u64::MAX).unwrap(),
        identity
    );
    let expected = json!({
        "content_type": "text/plain",
        "digest": digest,
        "length": identity.len(),
        "encoding": "gzip",
        "encoded_length": data.len(),
        "revpos": 1,
        "stub": true,
    });
    assert_eq!(stub(&*store, "db", "a", &first, "t.txt").await, expected);

    // An edit that keeps the attachment as a bare stub takes its coding over.
    let kept = edit(
        "a",
        Some(&first),
        json!({"v": 2, "_attachments": {"t.txt": {"stub": true}}}),
    );
    let second = write(&*store, "db", kept).await;
    assert_eq!(stub(&*store, "db", "a", &second, "t.txt").await, expected);

    // So does a replicated revision whose stub names the digest.
    let replicated = DocUpdate {
        id: "a".into(),
        mode: UpdateMode::Replicate {
            path: vec![Rev::new(3, "c".repeat(32)), second.clone()],
        },
        deleted: false,
        body: json!({"v": 3, "_attachments": {"t.txt": {"stub": true, "digest": digest}}})
            .as_object()
            .unwrap()
            .clone(),
        new_attachments: Vec::new(),
        origin: Origin::Replication { peer: None },
    };
    let third = write(&*store, "db", replicated).await;
    assert_eq!(stub(&*store, "db", "a", &third, "t.txt").await, expected);

    // Compaction keeps bytes a leaf refers to.
    store.compact("db").await.unwrap();
    assert_eq!(store.attachment(&digest).await.unwrap(), Some(data));
}

pub async fn the_same_bytes_stored_encoded_and_as_they_are_keep_both_meanings(
    store: Arc<dyn Store>,
) {
    store.create_db("db").await.unwrap();
    // A gzip file uploaded as itself (a `.gz`, identity), and the same bytes uploaded as the
    // gzip encoding of a text: one stored copy, two meanings, each kept by its own stub.
    let identity = text(2, 5000);
    let (as_text, digest) = encoded("text", None, "t.txt", &identity);
    let bytes = as_text.new_attachments[0].data.clone();
    let mut as_file = edit(
        "file",
        None,
        json!({"_attachments": {"t.gz": {
            "content_type": "application/gzip",
            "digest": digest,
            "length": bytes.len(),
        }}}),
    );
    as_file.new_attachments = vec![NewAttachment {
        digest: digest.clone(),
        data: bytes.clone(),
    }];
    let file_rev = write(&*store, "db", as_file).await;
    let text_rev = write(&*store, "db", as_text).await;
    assert_eq!(
        store.attachment(&digest).await.unwrap(),
        Some(bytes.clone())
    );
    let file = stub(&*store, "db", "file", &file_rev, "t.gz").await;
    assert_eq!(file.get("encoding"), None);
    assert_eq!(file["length"], json!(bytes.len()));
    let text = stub(&*store, "db", "text", &text_rev, "t.txt").await;
    assert_eq!(text["encoding"], "gzip");
    assert_eq!(text["length"], json!(identity.len()));
    assert_eq!(text["encoded_length"], json!(bytes.len()));
}

pub async fn a_new_attachment_in_a_coding_that_cannot_be_served_is_refused(store: Arc<dyn Store>) {
    store.create_db("db").await.unwrap();
    let data = b"bytes".to_vec();
    let digest = outpost_core::hash::attachment_digest(&data);
    for entry in [
        json!({"content_type": "text/plain", "digest": digest, "length": 5, "encoding": "br", "encoded_length": 5}),
        json!({"content_type": "text/plain", "digest": digest, "length": 5, "encoding": "gzip"}),
        json!({"content_type": "text/plain", "digest": digest, "length": 5, "encoded_length": 5}),
    ] {
        let mut update = edit("a", None, json!({"_attachments": {"x": entry}}));
        update.new_attachments = vec![NewAttachment {
            digest: digest.clone(),
            data: data.clone(),
        }];
        let result = store.write_docs("db", vec![update]).await.unwrap();
        assert!(
            matches!(result[0], Err(DocError::Invalid(_))),
            "{entry}: {:?}",
            result[0]
        );
    }
    assert!(store.doc("db", "a").await.unwrap().is_none());
}
