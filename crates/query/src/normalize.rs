//! Selectors in CouchDB's normalized form, as `_explain` shows them and partial filters are
//! stored: every condition an explicit operator on a full dotted field name, several conditions
//! joined by `$and`. `{"a": {"b": 1}, "c": {"$gt": 1, "$lt": 5}}` becomes
//! `{"$and": [{"a.b": {"$eq": 1}}, {"c": {"$gt": 1}}, {"c": {"$lt": 5}}]}`.
//!
//! Only for display and storage: matching always uses the parsed selector.

use serde_json::{Map, Value};

/// The normalized form of a selector (assumed valid: it was parsed before).
pub fn normalize(selector: &Value) -> Value {
    let mut conds = Vec::new();
    if let Value::Object(map) = selector {
        object(map, "", &mut conds);
    }
    join(conds)
}

fn join(mut conds: Vec<Value>) -> Value {
    if conds.is_empty() {
        Value::Object(Map::new())
    } else if conds.len() == 1 {
        conds.pop().expect("one condition")
    } else {
        single("$and", Value::Array(conds))
    }
}

fn single(key: &str, value: Value) -> Value {
    let mut m = Map::new();
    m.insert(key.to_owned(), value);
    Value::Object(m)
}

fn escape(segment: &str) -> String {
    segment.replace('.', "\\.")
}

/// Appends the conditions of an object whose keys are fields or operators under `prefix`.
fn object(map: &Map<String, Value>, prefix: &str, out: &mut Vec<Value>) {
    for (key, value) in map {
        match key.as_str() {
            "$and" | "$or" | "$nor" => {
                let items = value
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|s| match s {
                                Value::Object(m) => {
                                    let mut inner = Vec::new();
                                    object(m, prefix, &mut inner);
                                    join(inner)
                                }
                                other => other.clone(),
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                out.push(single(key, Value::Array(items)));
            }
            "$not" => {
                let mut inner = Vec::new();
                if let Value::Object(m) = value {
                    object(m, prefix, &mut inner);
                }
                out.push(single("$not", join(inner)));
            }
            op if op.starts_with('$') => {
                // An operator on the field named by the prefix.
                let cond = single(op, value.clone());
                out.push(if prefix.is_empty() {
                    cond
                } else {
                    single(prefix, cond)
                });
            }
            field => {
                let name = if prefix.is_empty() {
                    escape(field)
                } else {
                    format!("{prefix}.{}", escape(field))
                };
                match value {
                    Value::Object(m) if !m.is_empty() => object(m, &name, out),
                    other => out.push(single(&name, single("$eq", other.clone()))),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::normalize;

    #[test]
    fn selectors_normalize_as_couchdb_shows_them() {
        let cases = [
            (json!({"type": "x"}), json!({"type": {"$eq": "x"}})),
            (
                json!({"a": {"b": 1}, "c": {"$gt": 1, "$lt": 5}}),
                json!({"$and": [{"a.b": {"$eq": 1}}, {"c": {"$gt": 1}}, {"c": {"$lt": 5}}]}),
            ),
            (
                json!({"$or": [{"a": 1}, {"b": {"$exists": true}}]}),
                json!({"$or": [{"a": {"$eq": 1}}, {"b": {"$exists": true}}]}),
            ),
            (
                json!({"a": {"$not": {"$eq": 2}}}),
                json!({"$not": {"a": {"$eq": 2}}}),
            ),
            (json!({}), json!({})),
        ];
        for (input, expected) in cases {
            assert_eq!(normalize(&input), expected, "{input}");
        }
    }
}
