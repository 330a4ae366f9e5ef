//! Size limits of what a write may store: a document's body (`max_document_size`) and each
//! attachment (`max_attachment_size`), checked on every path that writes a document before it
//! reaches the store, with CouchDB's errors (413 `document_too_large` naming the document,
//! 413 `attachment_too_large` naming the attachment).

use outpost_store::DocUpdate;
use serde_json::Value;

use crate::{ApiError, Config};

/// Refuses an update whose body or a new attachment is above the configured limits.
pub fn check(update: &DocUpdate, config: &Config) -> Result<(), ApiError> {
    // As CouchDB's, the limit is on the document's JSON without its attachments.
    let size = body_size(update);
    if size > config.max_document_size as u64 {
        return Err(ApiError::DocumentTooLarge(update.id.clone()));
    }
    if update.new_attachments.is_empty() {
        return Ok(());
    }
    // The limit is on an attachment's identity bytes (its `length`), however it is stored: a
    // new entry is one that is not a stub.
    let entries = update.body.get("_attachments").and_then(Value::as_object);
    for (name, entry) in entries.into_iter().flatten() {
        if entry.get("stub").and_then(Value::as_bool) == Some(true) {
            continue;
        }
        let length = entry.get("length").and_then(Value::as_u64).unwrap_or(0);
        if length > config.max_attachment_size as u64 {
            return Err(ApiError::AttachmentTooLarge(name.clone()));
        }
    }
    Ok(())
}

/// The length of the body's JSON text without `_attachments`, counted without building it.
fn body_size(update: &DocUpdate) -> u64 {
    let mut counter = Counter(0);
    let mut members = 0u64;
    for (key, value) in &update.body {
        if key == "_attachments" {
            continue;
        }
        // `"key":value`, a comma before every member but the first.
        let _ = serde_json::to_writer(&mut counter, key);
        let _ = serde_json::to_writer(&mut counter, value);
        counter.0 += 1;
        members += 1;
    }
    counter.0 + 2 + members.saturating_sub(1)
}

/// An `io::Write` that only counts.
struct Counter(u64);

impl std::io::Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use outpost_store::{Origin, UpdateMode};
    use serde_json::json;

    fn update(body: Value) -> DocUpdate {
        DocUpdate {
            id: "d".into(),
            mode: UpdateMode::Edit { base: None },
            deleted: false,
            body: body.as_object().unwrap().clone(),
            new_attachments: Vec::new(),
            origin: Origin::Client,
        }
    }

    #[test]
    fn counts_the_json_text_without_attachments() {
        for body in [
            json!({}),
            json!({"a": 1}),
            json!({"a": "x\"y", "b": [1, 2, {"c": null}], "é": "ü"}),
        ] {
            assert_eq!(
                body_size(&update(body.clone())),
                body.to_string().len() as u64
            );
        }
        let with_atts = json!({"a": 1, "_attachments": {"x": {"stub": true}}});
        assert_eq!(body_size(&update(with_atts)), r#"{"a":1}"#.len() as u64);
    }
}
