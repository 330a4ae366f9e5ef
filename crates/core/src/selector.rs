//! Mango selectors, as used by `_changes?filter=_selector` and selector replication.
//!
//! A selector is parsed once into a small tree ([`Selector::parse`]), which validates every
//! operator and operand up front so that a bad selector is refused with a clear reason before any
//! document is looked at, and then evaluated against each document ([`Selector::matches`]).
//!
//! The semantics follow CouchDB's documentation (docs.couchdb.org, "api/database/find", section
//! "Selector Syntax") and the behaviour of its matcher where the documentation is silent:
//!
//! - An object whose keys are not operators is an implicit `$and` over its fields, and a nested
//!   object names sub-fields: `{"a": {"b": 1}}` is `{"a.b": 1}`. A plain value is an implicit
//!   `$eq`. Dots in a field name are escaped as `\.`.
//! - A condition on a field the document lacks is false, whatever the operator, except
//!   `$exists: false`. So `$ne` and `$nin` do *not* match documents without the field (unlike
//!   MongoDB); `$not` wraps the whole condition, so `{"a": {"$not": {"$eq": 1}}}` does match them.
//! - There is no implicit matching into arrays: `{"tags": "x"}` compares the whole array with
//!   `"x"`; `$elemMatch`, `$allMatch`, `$all`, `$in` and `$nin` are the ways into arrays.
//! - Comparisons use CouchDB's collation ([`crate::collate`]): null < false < true < numbers <
//!   strings (Unicode collation) < arrays < objects; except on `_id`, which CouchDB compares in
//!   the raw order of `_all_docs` ([`crate::collate::collate_raw`]), where strings sort above
//!   everything else and byte by byte, so `{"_id": {"$gt": {}}}` matches every document.

use std::cmp::Ordering;

use regex::Regex;
use serde_json::{Map, Value};

use crate::collate;
pub use crate::collate::collate;

/// Why a selector is refused. The messages are sent to clients as the `reason` of a 400
/// `bad_request`, so they name the offending operator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    /// The selector (or a sub-selector) is not a JSON object.
    #[error("selector must be a json object")]
    NotAnObject,
    /// A `$`-prefixed key that is not a known operator.
    #[error("invalid operator: {0}")]
    UnknownOperator(String),
    /// A known operator with an operand of the wrong type or shape.
    #[error("invalid operand for {op}: {expected}")]
    BadOperand {
        /// The operator, such as `$in`.
        op: &'static str,
        /// What the operator wanted, such as "an array".
        expected: &'static str,
    },
    /// The operand of `$regex` does not compile.
    #[error("invalid regular expression for $regex: {0}")]
    BadRegex(String),
    /// An empty field name, which CouchDB cannot query either.
    #[error("one or more conditions is missing a field name")]
    EmptyField,
}

/// A parsed, validated Mango selector.
#[derive(Debug, Clone)]
pub struct Selector {
    root: Node,
    source: Value,
}

impl Selector {
    /// Parses and validates a selector.
    pub fn parse(selector: &Value) -> Result<Selector, SelectorError> {
        let obj = selector.as_object().ok_or(SelectorError::NotAnObject)?;
        let root = parse_object(obj, &[])?;
        Ok(Selector {
            root,
            source: selector.clone(),
        })
    }

    /// Whether `doc` satisfies the selector.
    pub fn matches(&self, doc: &Value) -> bool {
        self.root.eval(doc)
    }

    /// The selector as it was given, for echoing back and for hashing into replication ids.
    pub fn as_json(&self) -> &Value {
        &self.source
    }

    /// The conditions every matching document must meet on its own: those at the top level
    /// and under `$and`, not those under `$or`, `$nor` or `$not`. What query planning reads to
    /// tell which fields a match must have and which key ranges it can be found in.
    pub fn conjuncts(&self) -> Vec<Conjunct<'_>> {
        fn walk<'a>(node: &'a Node, out: &mut Vec<Conjunct<'a>>) {
            match node {
                Node::And(nodes) => nodes.iter().for_each(|n| walk(n, out)),
                Node::Field { path, cond } => out.push(Conjunct {
                    path,
                    constraint: match cond {
                        Cond::Eq(v) => Constraint::Eq(v),
                        Cond::Gt(v) => Constraint::Gt(v),
                        Cond::Gte(v) => Constraint::Gte(v),
                        Cond::Lt(v) => Constraint::Lt(v),
                        Cond::Lte(v) => Constraint::Lte(v),
                        Cond::Exists(b) => Constraint::Exists(*b),
                        _ => Constraint::Other,
                    },
                }),
                Node::Or(_) | Node::Nor(_) | Node::Not(_) => {}
            }
        }
        let mut out = Vec::new();
        walk(&self.root, &mut out);
        out
    }
}

/// A condition on one field that every match must meet (see [`Selector::conjuncts`]).
#[derive(Debug, Clone, Copy)]
pub struct Conjunct<'a> {
    /// The field's path (`a.b` is `["a", "b"]`); empty for the value itself.
    pub path: &'a [String],
    pub constraint: Constraint<'a>,
}

/// What a [`Conjunct`] asks of its field. Every constraint except `Exists(false)` requires the
/// field to be present.
#[derive(Debug, Clone, Copy)]
pub enum Constraint<'a> {
    Eq(&'a Value),
    Gt(&'a Value),
    Gte(&'a Value),
    Lt(&'a Value),
    Lte(&'a Value),
    Exists(bool),
    /// Any other operator: the field must be present, its range is not bounded.
    Other,
}

/// Parses a field name as selectors and index definitions write it: `a.b\.c` is
/// `["a", "b.c"]`.
pub fn parse_field(name: &str) -> Result<Vec<String>, SelectorError> {
    split_path(name)
}

/// The value at `path` in `doc`, as the matcher sees it.
pub fn field<'a>(doc: &'a Value, path: &[String]) -> Option<&'a Value> {
    lookup(doc, path)
}

/// One node of a parsed selector.
#[derive(Debug, Clone)]
enum Node {
    And(Vec<Node>),
    Or(Vec<Node>),
    Nor(Vec<Node>),
    Not(Box<Node>),
    /// A condition on the value at `path`; an empty path is the value itself (inside
    /// `$elemMatch`, or an operator at the top level of a sub-selector).
    Field {
        path: Vec<String>,
        cond: Cond,
    },
}

/// A condition on one value.
#[derive(Debug, Clone)]
enum Cond {
    Eq(Value),
    Ne(Value),
    Gt(Value),
    Gte(Value),
    Lt(Value),
    Lte(Value),
    In(Vec<Value>),
    Nin(Vec<Value>),
    Exists(bool),
    Type(JsonType),
    Size(usize),
    Regex(Regex),
    Mod { divisor: i64, remainder: i64 },
    All(Vec<Value>),
    ElemMatch(Box<Node>),
    AllMatch(Box<Node>),
    KeyMapMatch(Box<Node>),
    BeginsWith(String),
}

/// The type names `$type` accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JsonType {
    Null,
    Boolean,
    Number,
    String,
    Array,
    Object,
}

impl JsonType {
    fn of(value: &Value) -> JsonType {
        match value {
            Value::Null => JsonType::Null,
            Value::Bool(_) => JsonType::Boolean,
            Value::Number(_) => JsonType::Number,
            Value::String(_) => JsonType::String,
            Value::Array(_) => JsonType::Array,
            Value::Object(_) => JsonType::Object,
        }
    }
}

/// Parses an object whose keys are fields or operators, relative to `prefix`.
fn parse_object(obj: &Map<String, Value>, prefix: &[String]) -> Result<Node, SelectorError> {
    let mut nodes = Vec::with_capacity(obj.len());
    for (key, value) in obj {
        nodes.push(parse_entry(key, value, prefix)?);
    }
    Ok(if nodes.len() == 1 {
        nodes.pop().expect("one node")
    } else {
        Node::And(nodes)
    })
}

fn parse_entry(key: &str, value: &Value, prefix: &[String]) -> Result<Node, SelectorError> {
    if let Some(op) = key.strip_prefix('$') {
        return parse_operator(op, key, value, prefix);
    }
    let mut path = prefix.to_vec();
    path.extend(split_path(key)?);
    match value {
        // An empty object has no conditions to and together; reading it as a literal is what
        // someone writing `{"meta": {}}` most plausibly means.
        Value::Object(sub) if !sub.is_empty() => parse_object(sub, &path),
        other => Ok(Node::Field {
            path,
            cond: Cond::Eq(other.clone()),
        }),
    }
}

fn parse_operator(
    op: &str,
    key: &str,
    value: &Value,
    prefix: &[String],
) -> Result<Node, SelectorError> {
    let field = |cond| {
        Ok(Node::Field {
            path: prefix.to_vec(),
            cond,
        })
    };
    match op {
        "and" | "or" | "nor" => {
            let name = match op {
                "and" => "$and",
                "or" => "$or",
                _ => "$nor",
            };
            let bad = SelectorError::BadOperand {
                op: name,
                expected: "an array of selectors",
            };
            let items = value.as_array().ok_or_else(|| bad.clone())?;
            let mut nodes = Vec::with_capacity(items.len());
            for item in items {
                let obj = item.as_object().ok_or_else(|| bad.clone())?;
                nodes.push(parse_object(obj, prefix)?);
            }
            Ok(match op {
                "and" => Node::And(nodes),
                "or" => Node::Or(nodes),
                _ => Node::Nor(nodes),
            })
        }
        "not" => {
            let obj = value.as_object().ok_or(SelectorError::BadOperand {
                op: "$not",
                expected: "a selector",
            })?;
            Ok(Node::Not(Box::new(parse_object(obj, prefix)?)))
        }
        "eq" => field(Cond::Eq(value.clone())),
        "ne" => field(Cond::Ne(value.clone())),
        "gt" => field(Cond::Gt(value.clone())),
        "gte" => field(Cond::Gte(value.clone())),
        "lt" => field(Cond::Lt(value.clone())),
        "lte" => field(Cond::Lte(value.clone())),
        "in" => field(Cond::In(array_operand("$in", value)?)),
        "nin" => field(Cond::Nin(array_operand("$nin", value)?)),
        "all" => field(Cond::All(array_operand("$all", value)?)),
        "exists" => match value {
            Value::Bool(b) => field(Cond::Exists(*b)),
            _ => Err(SelectorError::BadOperand {
                op: "$exists",
                expected: "a boolean",
            }),
        },
        "type" => {
            let ty = match value.as_str() {
                Some("null") => JsonType::Null,
                Some("boolean") => JsonType::Boolean,
                Some("number") => JsonType::Number,
                Some("string") => JsonType::String,
                Some("array") => JsonType::Array,
                Some("object") => JsonType::Object,
                _ => {
                    return Err(SelectorError::BadOperand {
                        op: "$type",
                        expected: "one of null, boolean, number, string, array, object",
                    });
                }
            };
            field(Cond::Type(ty))
        }
        "size" => match value.as_u64() {
            Some(n) => field(Cond::Size(usize::try_from(n).unwrap_or(usize::MAX))),
            None => Err(SelectorError::BadOperand {
                op: "$size",
                expected: "a non-negative integer",
            }),
        },
        "regex" => {
            let pattern = value.as_str().ok_or(SelectorError::BadOperand {
                op: "$regex",
                expected: "a string",
            })?;
            let re = Regex::new(pattern).map_err(|e| SelectorError::BadRegex(first_line(&e)))?;
            field(Cond::Regex(re))
        }
        "mod" => {
            let bad = SelectorError::BadOperand {
                op: "$mod",
                expected: "[divisor, remainder] with integers and a non-zero divisor",
            };
            let pair = value
                .as_array()
                .filter(|a| a.len() == 2)
                .ok_or_else(|| bad.clone())?;
            let (Some(divisor), Some(remainder)) = (pair[0].as_i64(), pair[1].as_i64()) else {
                return Err(bad);
            };
            if divisor == 0 {
                return Err(bad);
            }
            field(Cond::Mod { divisor, remainder })
        }
        "beginsWith" => match value {
            Value::String(prefix) => field(Cond::BeginsWith(prefix.clone())),
            _ => Err(SelectorError::BadOperand {
                op: "$beginsWith",
                expected: "a string",
            }),
        },
        "keyMapMatch" => {
            let obj = value.as_object().ok_or(SelectorError::BadOperand {
                op: "$keyMapMatch",
                expected: "a selector",
            })?;
            field(Cond::KeyMapMatch(Box::new(parse_object(obj, &[])?)))
        }
        "elemMatch" | "allMatch" => {
            let name = if op == "elemMatch" {
                "$elemMatch"
            } else {
                "$allMatch"
            };
            let obj = value.as_object().ok_or(SelectorError::BadOperand {
                op: name,
                expected: "a selector",
            })?;
            // Paths inside are relative to each array element.
            let sub = Box::new(parse_object(obj, &[])?);
            field(if op == "elemMatch" {
                Cond::ElemMatch(sub)
            } else {
                Cond::AllMatch(sub)
            })
        }
        _ => Err(SelectorError::UnknownOperator(key.to_string())),
    }
}

fn array_operand(op: &'static str, value: &Value) -> Result<Vec<Value>, SelectorError> {
    value.as_array().cloned().ok_or(SelectorError::BadOperand {
        op,
        expected: "an array",
    })
}

/// The regex crate's messages span several lines with a caret diagram; a `reason` wants one.
fn first_line(e: &regex::Error) -> String {
    let text = e.to_string();
    text.lines()
        .rev()
        .find(|l| l.starts_with("error:"))
        .unwrap_or("invalid pattern")
        .to_string()
}

/// Splits `a.b\.c` into `["a", "b.c"]`.
fn split_path(key: &str) -> Result<Vec<String>, SelectorError> {
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut chars = key.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(escaped) => current.push(escaped),
                None => current.push('\\'),
            },
            '.' => parts.push(std::mem::take(&mut current)),
            other => current.push(other),
        }
    }
    parts.push(current);
    if parts.iter().any(String::is_empty) {
        return Err(SelectorError::EmptyField);
    }
    Ok(parts)
}

/// Follows a path into a document. A numeric segment indexes into an array, as in CouchDB.
fn lookup<'a>(doc: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(doc, |value, segment| match value {
        Value::Object(map) => map.get(segment),
        Value::Array(items) => segment.parse::<usize>().ok().and_then(|i| items.get(i)),
        _ => None,
    })
}

impl Node {
    fn eval(&self, doc: &Value) -> bool {
        match self {
            Node::And(nodes) => nodes.iter().all(|n| n.eval(doc)),
            Node::Or(nodes) => nodes.is_empty() || nodes.iter().any(|n| n.eval(doc)),
            Node::Nor(nodes) => !nodes.iter().any(|n| n.eval(doc)),
            Node::Not(node) => !node.eval(doc),
            Node::Field { path, cond } => match lookup(doc, path) {
                // CouchDB compares `_id` in the raw order of `_all_docs`, not by collation.
                Some(value) if path.len() == 1 && path[0] == "_id" => {
                    cond.eval(value, collate::collate_raw)
                }
                Some(value) => cond.eval(value, collate::collate),
                None => matches!(cond, Cond::Exists(false)),
            },
        }
    }
}

impl Cond {
    fn eval(&self, value: &Value, cmp: fn(&Value, &Value) -> Ordering) -> bool {
        match self {
            Cond::Eq(arg) => cmp(value, arg) == Ordering::Equal,
            Cond::Ne(arg) => cmp(value, arg) != Ordering::Equal,
            Cond::Gt(arg) => cmp(value, arg) == Ordering::Greater,
            Cond::Gte(arg) => cmp(value, arg) != Ordering::Less,
            Cond::Lt(arg) => cmp(value, arg) == Ordering::Less,
            Cond::Lte(arg) => cmp(value, arg) != Ordering::Greater,
            // On an array field, `$in` asks whether any element is among the arguments.
            Cond::In(args) => match value {
                Value::Array(items) => items.iter().any(|v| contains(args, v, cmp)),
                v => contains(args, v, cmp),
            },
            Cond::Nin(args) => match value {
                Value::Array(items) => !items.iter().any(|v| contains(args, v, cmp)),
                v => !contains(args, v, cmp),
            },
            Cond::Exists(expected) => *expected,
            Cond::Type(ty) => JsonType::of(value) == *ty,
            Cond::Size(n) => value.as_array().is_some_and(|a| a.len() == *n),
            Cond::Regex(re) => value.as_str().is_some_and(|s| re.is_match(s)),
            // Only integer fields can match, and the remainder takes the dividend's sign, as
            // Erlang's `rem` (and Rust's `%`) do.
            Cond::Mod { divisor, remainder } => value
                .as_i64()
                .is_some_and(|v| v.wrapping_rem(*divisor) == *remainder),
            Cond::All(args) => value.as_array().is_some_and(|items| {
                !args.is_empty() && args.iter().all(|a| contains(items, a, cmp))
            }),
            Cond::ElemMatch(sub) => value
                .as_array()
                .is_some_and(|items| items.iter().any(|v| sub.eval(v))),
            // The keys of an object field, each matched as a value.
            Cond::KeyMapMatch(sub) => value
                .as_object()
                .is_some_and(|map| map.keys().any(|k| sub.eval(&Value::String(k.clone())))),
            Cond::BeginsWith(prefix) => value.as_str().is_some_and(|v| v.starts_with(prefix)),
            // CouchDB requires a non-empty array for `$allMatch`.
            Cond::AllMatch(sub) => value
                .as_array()
                .is_some_and(|items| !items.is_empty() && items.iter().all(|v| sub.eval(v))),
        }
    }
}

fn contains(haystack: &[Value], needle: &Value, cmp: fn(&Value, &Value) -> Ordering) -> bool {
    haystack.iter().any(|v| cmp(v, needle) == Ordering::Equal)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    #[track_caller]
    fn check(selector: Value, doc: Value, expected: bool) {
        let parsed = Selector::parse(&selector).unwrap_or_else(|e| panic!("{selector}: {e}"));
        assert_eq!(
            parsed.matches(&doc),
            expected,
            "selector {selector} on {doc}"
        );
    }

    #[track_caller]
    fn check_err(selector: Value, expected: &str) {
        match Selector::parse(&selector) {
            Ok(_) => panic!("{selector} was accepted"),
            Err(e) => assert_eq!(e.to_string(), expected, "{selector}"),
        }
    }

    #[test]
    fn numbers_compare_by_value_at_any_size() {
        let v = |text: &str| crate::json::from_str(text).unwrap();
        for (selector, doc, expected) in [
            (r#"{"n": 1}"#, r#"{"n": 1.0}"#, true),
            (r#"{"n": 100}"#, r#"{"n": 1e2}"#, true),
            (
                r#"{"n": {"$gt": 18446744073709551616}}"#,
                r#"{"n": 18446744073709551617}"#,
                true,
            ),
            (
                r#"{"n": 18446744073709551616}"#,
                r#"{"n": 18446744073709551617}"#,
                false,
            ),
            (
                r#"{"n": {"$lt": -9223372036854775809}}"#,
                r#"{"n": -9223372036854775810}"#,
                true,
            ),
            (r#"{"n": {"$gt": 1e300}}"#, r#"{"n": 1e400}"#, true),
            (r#"{"n": {"$lt": -5}}"#, r#"{"n": -1e400}"#, true),
            (r#"{"n": 0}"#, r#"{"n": -0}"#, true),
        ] {
            check(v(selector), v(doc), expected);
        }
    }

    #[test]
    fn implicit_eq_and_and() {
        check(json!({"name": "tom"}), json!({"name": "tom"}), true);
        check(json!({"name": "tom"}), json!({"name": "ann"}), false);
        check(
            json!({"name": "tom", "city": "Omaha"}),
            json!({"name": "tom", "city": "Omaha"}),
            true,
        );
        check(
            json!({"name": "tom", "city": "Omaha"}),
            json!({"name": "tom", "city": "Lyon"}),
            false,
        );
        check(json!({}), json!({"anything": 1}), true);
        check(json!({"n": null}), json!({"n": null}), true);
        check(json!({"n": null}), json!({}), false);
        // No implicit matching into arrays.
        check(json!({"tags": "x"}), json!({"tags": ["x"]}), false);
        check(json!({"tags": ["x"]}), json!({"tags": ["x"]}), true);
        check(json!({"meta": {}}), json!({"meta": {}}), true);
        check(json!({"meta": {}}), json!({"meta": {"a": 1}}), false);
    }

    #[test]
    fn paths() {
        let doc = json!({"location": {"city": "Omaha", "zip": {"code": 68102}}, "a.b": 7,
                         "list": [{"x": 1}, {"x": 2}]});
        check(json!({"location.city": "Omaha"}), doc.clone(), true);
        check(json!({"location": {"city": "Omaha"}}), doc.clone(), true);
        check(
            json!({"location": {"zip.code": {"$gt": 68000}}}),
            doc.clone(),
            true,
        );
        check(json!({"location.zip.code": 1}), doc.clone(), false);
        check(json!({"a\\.b": 7}), doc.clone(), true);
        check(json!({"a.b": 7}), doc.clone(), false);
        check(json!({"list.1.x": 2}), doc.clone(), true);
        check(json!({"list.5.x": 2}), doc.clone(), false);
        check(
            json!({"location.city.deeper": {"$exists": false}}),
            doc.clone(),
            true,
        );
    }

    #[test]
    fn comparisons_and_collation() {
        let doc = json!({"n": 5, "s": "m", "b": true, "z": null, "a": [1, 2], "o": {"k": 1}});
        check(json!({"n": {"$gt": 4}}), doc.clone(), true);
        check(json!({"n": {"$gt": 5}}), doc.clone(), false);
        check(json!({"n": {"$gte": 5}}), doc.clone(), true);
        check(json!({"n": {"$lt": 5.5}}), doc.clone(), true);
        check(json!({"n": {"$lte": 4.99}}), doc.clone(), false);
        check(json!({"n": {"$eq": 5.0}}), doc.clone(), true);
        check(json!({"n": {"$gt": 4, "$lt": 6}}), doc.clone(), true);
        check(json!({"n": {"$gt": 4, "$lt": 5}}), doc.clone(), false);
        // Across types: numbers < strings < arrays < objects; null < false < true < numbers.
        check(json!({"n": {"$lt": "a"}}), doc.clone(), true);
        check(json!({"s": {"$gt": 1000}}), doc.clone(), true);
        check(json!({"s": {"$lt": [0]}}), doc.clone(), true);
        check(json!({"a": {"$lt": {}}}), doc.clone(), true);
        check(json!({"b": {"$gt": false}}), doc.clone(), true);
        check(json!({"b": {"$lt": 0}}), doc.clone(), true);
        check(json!({"z": {"$lt": false}}), doc.clone(), true);
        check(json!({"a": {"$gt": [1]}}), doc.clone(), true);
        check(json!({"a": {"$lt": [1, 3]}}), doc.clone(), true);
        check(json!({"o": {"$eq": {"k": 1}}}), doc.clone(), true);
        check(json!({"o": {"$gt": {"k": 0}}}), doc.clone(), true);
        // Unicode collation, not code points: "a" sorts before "B" (U+0042 < U+0061), and
        // lowercase before uppercase.
        check(json!({"s": {"$lt": "B"}}), json!({"s": "a"}), true);
        check(json!({"s": {"$gt": "a"}}), json!({"s": "A"}), true);
        // Large integers are compared exactly.
        check(
            json!({"n": {"$gt": 9007199254740992_i64}}),
            json!({"n": 9007199254740993_i64}),
            true,
        );
    }

    #[test]
    fn missing_fields() {
        // CouchDB: a condition on a missing field fails, except `$exists: false`.
        check(json!({"a": {"$ne": 1}}), json!({}), false);
        check(json!({"a": {"$ne": 1}}), json!({"a": 2}), true);
        check(json!({"a": {"$nin": [1]}}), json!({}), false);
        check(json!({"a": {"$nin": [1]}}), json!({"a": 2}), true);
        check(json!({"a": {"$exists": false}}), json!({}), true);
        check(json!({"a": {"$exists": false}}), json!({"a": null}), false);
        check(json!({"a": {"$exists": true}}), json!({"a": null}), true);
        check(json!({"a": {"$exists": true}}), json!({}), false);
        check(json!({"a": {"$not": {"$eq": 1}}}), json!({}), true);
        check(json!({"a": {"$not": {"$eq": 1}}}), json!({"a": 1}), false);
        check(json!({"$not": {"a": 1}}), json!({"a": 2}), true);
    }

    #[test]
    fn combinators() {
        let doc = json!({"a": 1, "b": 2});
        check(json!({"$and": [{"a": 1}, {"b": 2}]}), doc.clone(), true);
        check(json!({"$and": [{"a": 1}, {"b": 3}]}), doc.clone(), false);
        check(json!({"$or": [{"a": 9}, {"b": 2}]}), doc.clone(), true);
        check(json!({"$or": [{"a": 9}, {"b": 9}]}), doc.clone(), false);
        check(json!({"$nor": [{"a": 9}, {"b": 9}]}), doc.clone(), true);
        check(json!({"$nor": [{"a": 1}, {"b": 9}]}), doc.clone(), false);
        check(json!({"$and": []}), doc.clone(), true);
        check(json!({"$or": []}), doc.clone(), true);
        check(
            json!({"a": {"$or": [{"$eq": 0}, {"$eq": 1}]}}),
            doc.clone(),
            true,
        );
        check(
            json!({"a": 1, "$or": [{"b": 0}, {"b": 2}]}),
            doc.clone(),
            true,
        );
    }

    #[test]
    fn array_operators() {
        let doc = json!({"tags": ["red", "blue"], "n": 3, "scores": [4, 8, 9],
                         "people": [{"age": 30}, {"age": 40}]});
        check(json!({"n": {"$in": [1, 3]}}), doc.clone(), true);
        check(json!({"n": {"$in": []}}), doc.clone(), false);
        check(
            json!({"tags": {"$in": ["blue", "green"]}}),
            doc.clone(),
            true,
        );
        check(json!({"tags": {"$in": ["green"]}}), doc.clone(), false);
        check(json!({"tags": {"$nin": ["green"]}}), doc.clone(), true);
        check(json!({"tags": {"$nin": ["red"]}}), doc.clone(), false);
        check(json!({"n": {"$nin": [3]}}), doc.clone(), false);
        check(
            json!({"tags": {"$all": ["blue", "red"]}}),
            doc.clone(),
            true,
        );
        check(
            json!({"tags": {"$all": ["blue", "green"]}}),
            doc.clone(),
            false,
        );
        check(json!({"tags": {"$all": []}}), doc.clone(), false);
        check(json!({"n": {"$all": [3]}}), doc.clone(), false);
        check(
            json!({"scores": {"$elemMatch": {"$gt": 8}}}),
            doc.clone(),
            true,
        );
        check(
            json!({"scores": {"$elemMatch": {"$gt": 9}}}),
            doc.clone(),
            false,
        );
        check(
            json!({"people": {"$elemMatch": {"age": {"$gt": 35}}}}),
            doc.clone(),
            true,
        );
        check(
            json!({"scores": {"$allMatch": {"$gt": 3}}}),
            doc.clone(),
            true,
        );
        check(
            json!({"scores": {"$allMatch": {"$gt": 4}}}),
            doc.clone(),
            false,
        );
        check(
            json!({"e": {"$allMatch": {"$gt": 4}}}),
            json!({"e": []}),
            false,
        );
        check(json!({"n": {"$elemMatch": {"$gt": 1}}}), doc.clone(), false);
        check(json!({"tags": {"$size": 2}}), doc.clone(), true);
        check(json!({"tags": {"$size": 3}}), doc.clone(), false);
        check(json!({"n": {"$size": 1}}), doc.clone(), false);
    }

    #[test]
    fn misc_operators() {
        check(json!({"v": {"$type": "string"}}), json!({"v": "x"}), true);
        check(json!({"v": {"$type": "number"}}), json!({"v": "x"}), false);
        check(json!({"v": {"$type": "null"}}), json!({"v": null}), true);
        check(json!({"v": {"$type": "object"}}), json!({"v": {}}), true);
        check(json!({"v": {"$type": "array"}}), json!({"v": []}), true);
        check(
            json!({"v": {"$type": "boolean"}}),
            json!({"v": false}),
            true,
        );
        check(
            json!({"v": {"$regex": "^ab+c"}}),
            json!({"v": "abbbcd"}),
            true,
        );
        check(
            json!({"v": {"$regex": "b+c"}}),
            json!({"v": "xabbbcd"}),
            true,
        );
        check(json!({"v": {"$regex": "^b"}}), json!({"v": "abc"}), false);
        check(json!({"v": {"$regex": "1"}}), json!({"v": 1}), false);
        check(
            json!({"v": {"$regex": "(?i)^A"}}),
            json!({"v": "abc"}),
            true,
        );
        check(json!({"v": {"$mod": [3, 1]}}), json!({"v": 7}), true);
        check(json!({"v": {"$mod": [3, 1]}}), json!({"v": 8}), false);
        check(json!({"v": {"$mod": [3, -1]}}), json!({"v": -7}), true);
        check(json!({"v": {"$mod": [3, 1]}}), json!({"v": 7.5}), false);
        check(json!({"v": {"$mod": [3, 1]}}), json!({"v": "7"}), false);
        check(
            json!({"v": {"$beginsWith": "ab"}}),
            json!({"v": "abc"}),
            true,
        );
        check(
            json!({"v": {"$beginsWith": "b"}}),
            json!({"v": "abc"}),
            false,
        );
        check(
            json!({"v": {"$beginsWith": "a"}}),
            json!({"v": ["a"]}),
            false,
        );
        check_err(
            json!({"v": {"$beginsWith": 1}}),
            "invalid operand for $beginsWith: a string",
        );
        check(
            json!({"m": {"$keyMapMatch": {"$eq": "k2"}}}),
            json!({"m": {"k1": 1, "k2": 2}}),
            true,
        );
        check(
            json!({"m": {"$keyMapMatch": {"$gt": "k5"}}}),
            json!({"m": {"k1": 1, "k2": 2}}),
            false,
        );
        check(
            json!({"m": {"$keyMapMatch": {"$eq": "0"}}}),
            json!({"m": ["x"]}),
            false,
        );
    }

    #[test]
    fn ids_compare_in_raw_order() {
        // Strings sort above objects in `_all_docs`' raw order, below them in collation.
        check(json!({"_id": {"$gt": {}}}), json!({"_id": "a"}), true);
        check(json!({"_id": {"$lt": {}}}), json!({"_id": "a"}), false);
        check(json!({"x": {"$gt": {}}}), json!({"x": "a"}), false);
        // Byte order: "B" before "a".
        check(json!({"_id": {"$lt": "a"}}), json!({"_id": "B"}), true);
        check(json!({"x": {"$lt": "a"}}), json!({"x": "B"}), false);
    }

    #[test]
    fn conjuncts_are_the_conditions_every_match_meets() {
        let s = Selector::parse(&json!({
            "a": 1,
            "$and": [{"b": {"$gt": 2, "$lt": 5}}, {"c": {"$exists": false}}],
            "$or": [{"d": 1}, {"e": 1}],
            "f": {"$regex": "x"},
        }))
        .unwrap();
        let got: Vec<String> = s
            .conjuncts()
            .iter()
            .map(|c| format!("{}:{:?}", c.path.join("."), c.constraint))
            .collect();
        assert_eq!(
            got,
            [
                "a:Eq(Number(1))",
                "b:Gt(Number(2))",
                "b:Lt(Number(5))",
                "c:Exists(false)",
                "f:Other"
            ]
        );
    }

    #[test]
    fn invalid_selectors() {
        check_err(json!([1]), "selector must be a json object");
        check_err(json!({"a": {"$foo": 1}}), "invalid operator: $foo");
        check_err(json!({"$foo": 1}), "invalid operator: $foo");
        check_err(
            json!({"a": {"$in": 1}}),
            "invalid operand for $in: an array",
        );
        check_err(
            json!({"a": {"$nin": "x"}}),
            "invalid operand for $nin: an array",
        );
        check_err(
            json!({"a": {"$all": {}}}),
            "invalid operand for $all: an array",
        );
        check_err(
            json!({"a": {"$exists": 1}}),
            "invalid operand for $exists: a boolean",
        );
        check_err(
            json!({"a": {"$type": "int"}}),
            "invalid operand for $type: one of null, boolean, number, string, array, object",
        );
        check_err(
            json!({"a": {"$size": -1}}),
            "invalid operand for $size: a non-negative integer",
        );
        check_err(
            json!({"a": {"$size": 1.5}}),
            "invalid operand for $size: a non-negative integer",
        );
        check_err(
            json!({"a": {"$regex": 1}}),
            "invalid operand for $regex: a string",
        );
        check_err(
            json!({"a": {"$mod": [0, 1]}}),
            "invalid operand for $mod: [divisor, remainder] with integers and a non-zero divisor",
        );
        check_err(
            json!({"a": {"$mod": [2]}}),
            "invalid operand for $mod: [divisor, remainder] with integers and a non-zero divisor",
        );
        check_err(
            json!({"$and": {}}),
            "invalid operand for $and: an array of selectors",
        );
        check_err(
            json!({"$or": [1]}),
            "invalid operand for $or: an array of selectors",
        );
        check_err(
            json!({"$nor": "x"}),
            "invalid operand for $nor: an array of selectors",
        );
        check_err(json!({"$not": []}), "invalid operand for $not: a selector");
        check_err(
            json!({"a": {"$elemMatch": 1}}),
            "invalid operand for $elemMatch: a selector",
        );
        check_err(
            json!({"a": {"$allMatch": []}}),
            "invalid operand for $allMatch: a selector",
        );
        check_err(
            json!({"": 1}),
            "one or more conditions is missing a field name",
        );
        check_err(
            json!({"a..b": 1}),
            "one or more conditions is missing a field name",
        );
        check_err(
            json!({"$and": [{"a": {"$bad": 1}}]}),
            "invalid operator: $bad",
        );
        let err = Selector::parse(&json!({"a": {"$regex": "(unclosed"}})).unwrap_err();
        assert!(matches!(err, SelectorError::BadRegex(_)), "{err}");
        let reason = err.to_string();
        assert!(
            reason.starts_with("invalid regular expression for $regex: "),
            "{reason}"
        );
        assert!(!reason.contains('\n'), "{reason}");
    }

    fn json_leaf() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i32>().prop_map(|n| json!(n)),
            (-1000.0f64..1000.0).prop_map(|f| json!(f)),
            "[a-zA-Zé0-9]{0,4}".prop_map(Value::String),
        ]
    }

    fn json_value() -> impl Strategy<Value = Value> {
        json_leaf().prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::vec(("[a-c]", inner), 0..3)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn collation_is_a_total_order(a in json_value(), b in json_value(), c in json_value()) {
            prop_assert_eq!(collate(&a, &a), Ordering::Equal);
            prop_assert_eq!(collate(&a, &b), collate(&b, &a).reverse());
            if collate(&a, &b).is_le() && collate(&b, &c).is_le() {
                prop_assert!(collate(&a, &c).is_le());
            }
        }

        #[test]
        fn eq_and_ne_partition_present_fields(doc in json_value(), arg in json_value()) {
            let doc = json!({"f": doc});
            let eq = Selector::parse(&json!({"f": {"$eq": arg.clone()}})).unwrap();
            let ne = Selector::parse(&json!({"f": {"$ne": arg.clone()}})).unwrap();
            prop_assert_ne!(eq.matches(&doc), ne.matches(&doc));
            let lt = Selector::parse(&json!({"f": {"$lt": arg.clone()}})).unwrap();
            let gt = Selector::parse(&json!({"f": {"$gt": arg}})).unwrap();
            let hits = [&eq, &lt, &gt].iter().filter(|s| s.matches(&doc)).count();
            prop_assert_eq!(hits, 1);
        }

        #[test]
        fn not_negates_and_nor_is_not_or(a in json_value(), b in json_value(), v in json_value()) {
            let doc = json!({"x": v});
            let sa = json!({"x": {"$lte": a}});
            let sb = json!({"x": {"$in": [b]}});
            let or = Selector::parse(&json!({"$or": [sa.clone(), sb.clone()]})).unwrap();
            let nor = Selector::parse(&json!({"$nor": [sa.clone(), sb]})).unwrap();
            let not = Selector::parse(&json!({"$not": sa.clone()})).unwrap();
            let plain = Selector::parse(&sa).unwrap();
            prop_assert_ne!(or.matches(&doc), nor.matches(&doc));
            prop_assert_ne!(plain.matches(&doc), not.matches(&doc));
        }

        #[test]
        fn a_document_matches_itself_as_eq(v in json_value()) {
            let sel = Selector::parse(&json!({"f": {"$eq": v.clone()}})).unwrap();
            let doc = json!({"f": v});
            prop_assert!(sel.matches(&doc));
        }
    }
}
