//! A client's document, as `PUT`, `POST` and `_bulk_docs` parse it: whatever the bytes, the
//! answer is a document update or a 4xx, never a panic; and a body it accepts is stored as text
//! that reads back as the same body and hashes to the same revision (what a replica computes).
#![no_main]

use libfuzzer_sys::fuzz_target;
use outpost_core::hash;
use outpost_server::fuzzing::parse_doc;
use outpost_store::Origin;

fuzz_target!(|data: &[u8]| {
    // The first byte chooses `new_edits` and whether the id comes from the URL.
    let Some((&mode, json)) = data.split_first() else {
        return;
    };
    let Ok(value) = outpost_core::json::from_slice(json) else {
        return;
    };
    let url_id = (mode & 2 != 0).then_some("from-url");
    match parse_doc(value, url_id, mode & 1 == 0, Origin::Client) {
        Ok(update) => {
            assert!(
                update
                    .body
                    .keys()
                    .all(|k| !k.starts_with('_')
                        || k == "_attachments"
                        || k == "_access"
                        || k.starts_with("_replication_")),
                "a special field reached the body"
            );
            let stored = serde_json::to_string(&update.body).unwrap();
            let reread = outpost_core::json::from_str(&stored).expect("a stored body reads back");
            assert_eq!(
                reread.to_string(),
                stored,
                "a stored body changed on reading"
            );
            assert_eq!(
                hash::next_rev_of_fields(None, update.deleted, &update.body),
                hash::next_rev(None, update.deleted, &reread),
                "the stored text hashes to another revision"
            );
        }
        Err(e) => {
            let (status, _) = e.status_and_code();
            assert!(status.is_client_error(), "{status}: {}", e.reason());
        }
    }
});
