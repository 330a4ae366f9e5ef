//! The replication id: the name of the checkpoint documents both sides keep.
//!
//! Computed as PouchDB does (pouchdb-generate-replication-id): md5 over the source id, the
//! target id and the filter parameters (sorted `doc_ids` joined with commas, then the selector
//! as compact JSON), base64, with `/` turned into `.` and `+` into `_` so the id is safe in a
//! URL path. Using PouchDB's recipe means a replication between the same two databases with the
//! same filter finds the same checkpoint whether PouchDB or Outpost ran it last.
//!
//! PouchDB hashes the string's Latin-1 bytes; we hash UTF-8. The two agree on the ASCII ids
//! (server uuids and database names) that occur in practice.

use base64::Engine;
use md5::{Digest, Md5};

use serde_json::Value;

use crate::ChangesFilter;

/// The replication id, without the `_local/` prefix.
pub fn replication_id(source_id: &str, target_id: &str, filter: &ChangesFilter) -> String {
    let mut data = String::new();
    data.push_str(source_id);
    data.push_str(target_id);
    match filter {
        ChangesFilter::All => {}
        ChangesFilter::DocIds(ids) => {
            let mut ids = ids.clone();
            ids.sort();
            data.push_str(&ids.join(","));
        }
        ChangesFilter::Selector(selector) => data.push_str(&selector.to_string()),
        // PouchDB hashes the filter's name, the view's name, then the query parameters with
        // their keys sorted.
        ChangesFilter::Function {
            name,
            view,
            query_params,
        } => {
            data.push_str(name);
            if let Some(view) = view.as_deref().filter(|_| name == "_view") {
                data.push_str(view);
            }
            if let Some(params) = query_params {
                data.push_str(&sorted(&Value::Object(params.clone())).to_string());
            }
        }
    }
    let digest = Md5::digest(data.as_bytes());
    base64::engine::general_purpose::STANDARD
        .encode(digest)
        .replace('/', ".")
        .replace('+', "_")
}

/// A value with the keys of every object in sorted order.
fn sorted(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            Value::Object(
                keys.into_iter()
                    .map(|k| (k.clone(), sorted(&map[k])))
                    .collect(),
            )
        }
        Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn known_values() {
        // md5("ab") in base64 is "GH70Q2Ei0cwvQNwrkvDroA==".
        assert_eq!(
            replication_id("a", "b", &ChangesFilter::All),
            "GH70Q2Ei0cwvQNwrkvDroA=="
        );
        // md5("abc") is "kAFQmDzST7DWlj99KOF/cg==": the `/` becomes `.`.
        assert_eq!(
            replication_id("a", "bc", &ChangesFilter::All),
            "kAFQmDzST7DWlj99KOF.cg=="
        );
        // Doc ids are sorted before joining, so their order does not change the id.
        let ids = |v: &[&str]| ChangesFilter::DocIds(v.iter().map(|s| s.to_string()).collect());
        assert_eq!(
            replication_id("a", "b", &ids(&["y", "x"])),
            replication_id("a", "b", &ids(&["x", "y"]))
        );
        // md5("abx,y")
        assert_eq!(
            replication_id("a", "b", &ids(&["y", "x"])),
            replication_id("abx,", "y", &ChangesFilter::All)
        );
        let sel = ChangesFilter::Selector(json!({"type": "order"}));
        assert_eq!(
            replication_id("a", "b", &sel),
            replication_id("ab{\"type\":\"order\"}", "", &ChangesFilter::All)
        );
        assert_ne!(
            replication_id("a", "b", &ChangesFilter::All),
            replication_id("b", "a", &ChangesFilter::All)
        );
        let params = json!({"z": 1, "a": {"y": 2, "b": 3}});
        let function = ChangesFilter::Function {
            name: "app/f".into(),
            view: None,
            query_params: params.as_object().cloned(),
        };
        assert_eq!(
            replication_id("a", "b", &function),
            replication_id(
                "abapp/f{\"a\":{\"b\":3,\"y\":2},\"z\":1}",
                "",
                &ChangesFilter::All
            )
        );
        let view = ChangesFilter::Function {
            name: "_view".into(),
            view: Some("app/v".into()),
            query_params: None,
        };
        assert_eq!(
            replication_id("a", "b", &view),
            replication_id("ab_viewapp/v", "", &ChangesFilter::All)
        );
    }
}
