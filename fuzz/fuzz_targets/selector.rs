//! Mango selectors: whatever the JSON, a selector or an error, never a panic; matching any
//! document never panics and is deterministic, and collation orders every value equal to itself.
//!
//! The input is `[selector, document]`, or a selector alone matched against a few documents.
#![no_main]

use std::cmp::Ordering;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use outpost_core::Selector;
use outpost_core::selector::collate;
use serde_json::Value;

fn documents() -> &'static [Value] {
    static DOCS: OnceLock<Vec<Value>> = OnceLock::new();
    DOCS.get_or_init(|| {
        [
            r#"{"_id":"a","_rev":"1-x","type":"order","n":3,"tags":["x",1,null],"o":{"p":[{"q":1e400}]}}"#,
            r#"{"_id":"b","_rev":"2-y","_deleted":true}"#,
            r#"{"_id":"c","n":18446744073709551616,"s":"é😀","a":[[],{}],"f":false}"#,
        ]
        .iter()
        .map(|d| outpost_core::json::from_str(d).unwrap())
        .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(value) = outpost_core::json::from_slice(data) else {
        return;
    };
    let (selector, docs): (&Value, Vec<&Value>) = match value.as_array().map(Vec::as_slice) {
        Some([selector, doc]) => (selector, vec![doc]),
        _ => (&value, documents().iter().collect()),
    };
    for doc in &docs {
        assert_eq!(collate(doc, doc), Ordering::Equal);
    }
    let Ok(parsed) = Selector::parse(selector) else {
        return;
    };
    for doc in docs {
        assert_eq!(parsed.matches(doc), parsed.matches(doc));
    }
});
