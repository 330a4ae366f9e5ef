//! CouchDB's collation of JSON values, as a comparator and as binary sort keys.
//!
//! The order is CouchDB's view collation: `null < false < true < numbers < strings < arrays <
//! objects`. Numbers compare by value (`1` equals `1.0`). Strings compare with the Unicode
//! Collation Algorithm on the root locale at tertiary strength (ICU4X's `icu_collator`, what
//! CouchDB's ICU-backed comparator uses), so `"a" < "A" < "aa" < "b" < "B"`; two strings the
//! collator calls equal (canonically equivalent spellings such as a precomposed `"é"` and `"e"`
//! followed by a combining accent) are ordered by code point, so that the order is total and
//! distinct strings never compare equal. Arrays compare element by element, then shorter first;
//! objects compare member by member (key, then value, in document order), then smaller first.
//!
//! [`collate`] compares two values in memory (the Mango matcher's `$gt`, `$lt`, sort). Indexes
//! store [`sort_key`]s instead: byte strings whose plain `memcmp` order is the same order, so an
//! index is an ordinary B-tree on a BLOB and a range scan needs no callback into this code. The
//! one place the two can differ is numbers: a sort key holds a number as an IEEE double, so two
//! integers beyond 2^53 that round to the same double get equal keys (and fall back to the doc id
//! order) where [`collate`] tells them apart. Readers of an index re-check what they return with
//! [`collate`] or the selector, so this only affects the order of such keys within one page.
//!
//! Sort keys depend on the collator's tables: [`SORT_KEY_VERSION`] names the encoding and the
//! Unicode data it was made with, and an index built under another version is rebuilt.

use std::cmp::Ordering;
use std::sync::LazyLock;

use icu_collator::options::CollatorOptions;
use icu_collator::{Collator, CollatorBorrowed};
use serde_json::{Number, Value};

/// Names the sort-key encoding together with the collation data it was made with. Change it
/// whenever the encoding or the `icu_collator` data changes, so stored indexes get rebuilt.
pub const SORT_KEY_VERSION: &str = "1/icu4x-2";

/// The root-locale collator at its default (tertiary) strength, built once from the tables
/// compiled into the binary.
static COLLATOR: LazyLock<CollatorBorrowed<'static>> = LazyLock::new(|| {
    Collator::try_new(Default::default(), CollatorOptions::default())
        .expect("the root collation is compiled in")
});

/// Compares two strings as CouchDB does: Unicode collation, ties broken by code point.
pub fn compare_strings(a: &str, b: &str) -> Ordering {
    if a == b {
        return Ordering::Equal;
    }
    COLLATOR.compare(a, b).then_with(|| a.cmp(b))
}

/// CouchDB's raw collation (Erlang's term order, as `_all_docs` orders ids): numbers <
/// `false` < `null` < `true` < objects < arrays < strings, strings byte by byte, arrays and
/// objects element by element, then shorter first. Mango compares `_id` in this order.
pub fn collate_raw(a: &Value, b: &Value) -> Ordering {
    fn rank(v: &Value) -> u8 {
        match v {
            Value::Number(_) => 0,
            Value::Bool(false) => 1,
            Value::Null => 2,
            Value::Bool(true) => 3,
            Value::Object(_) => 4,
            Value::Array(_) => 5,
            Value::String(_) => 6,
        }
    }
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => compare_numbers(x, y),
        (Value::String(x), Value::String(y)) => x.as_bytes().cmp(y.as_bytes()),
        (Value::Array(x), Value::Array(y)) => x
            .iter()
            .zip(y)
            .map(|(p, q)| collate_raw(p, q))
            .find(|o| o.is_ne())
            .unwrap_or_else(|| x.len().cmp(&y.len())),
        (Value::Object(x), Value::Object(y)) => x
            .iter()
            .zip(y)
            .map(|((kx, vx), (ky, vy))| {
                kx.as_bytes()
                    .cmp(ky.as_bytes())
                    .then_with(|| collate_raw(vx, vy))
            })
            .find(|o| o.is_ne())
            .unwrap_or_else(|| x.len().cmp(&y.len())),
        _ => rank(a).cmp(&rank(b)),
    }
}

/// CouchDB's collation of two JSON values (see the module documentation).
pub fn collate(a: &Value, b: &Value) -> Ordering {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => compare_numbers(x, y),
        (Value::String(x), Value::String(y)) => compare_strings(x, y),
        (Value::Array(x), Value::Array(y)) => x
            .iter()
            .zip(y)
            .map(|(p, q)| collate(p, q))
            .find(|o| o.is_ne())
            .unwrap_or_else(|| x.len().cmp(&y.len())),
        (Value::Object(x), Value::Object(y)) => x
            .iter()
            .zip(y)
            .map(|((kx, vx), (ky, vy))| compare_strings(kx, ky).then_with(|| collate(vx, vy)))
            .find(|o| o.is_ne())
            .unwrap_or_else(|| x.len().cmp(&y.len())),
        _ => rank(a).cmp(&rank(b)),
    }
}

fn rank(v: &Value) -> u8 {
    match v {
        Value::Null => TAG_NULL,
        Value::Bool(false) => TAG_FALSE,
        Value::Bool(true) => TAG_TRUE,
        Value::Number(_) => TAG_NUMBER,
        Value::String(_) => TAG_STRING,
        Value::Array(_) => TAG_ARRAY,
        Value::Object(_) => TAG_OBJECT,
    }
}

/// Compares exactly when both numbers are integers of up to 128 bits (so large ids do not
/// collide through `f64`), and as floating point otherwise; `1` and `1.0` are equal, as in
/// CouchDB. Numbers are kept as written (see [`crate::json`]), so one beyond `f64`'s range
/// (`1e400`) compares as an infinity of its sign.
fn compare_numbers(x: &Number, y: &Number) -> Ordering {
    if let (Some(a), Some(b)) = (x.as_i128(), y.as_i128()) {
        return a.cmp(&b);
    }
    if let (Some(a), Some(b)) = (x.as_u128(), y.as_u128()) {
        return a.cmp(&b);
    }
    number_as_f64(x)
        .partial_cmp(&number_as_f64(y))
        .unwrap_or(Ordering::Equal)
}

/// A number as the double it rounds to; one beyond `f64`'s range is an infinity of its sign.
pub fn number_as_f64(n: &Number) -> f64 {
    n.as_f64()
        .or_else(|| n.to_string().parse::<f64>().ok())
        .unwrap_or(0.0)
}

// Type tags of the sort-key encoding. They start at 1 so that the 0 ending an array or object
// sorts before any element, which makes a shorter array sort first. 0xFF is never a tag, so a
// prefix followed by [`KEY_MAX_BYTE`] is above every key that extends the prefix.
const TAG_NULL: u8 = 0x01;
const TAG_FALSE: u8 = 0x02;
const TAG_TRUE: u8 = 0x03;
const TAG_NUMBER: u8 = 0x04;
const TAG_STRING: u8 = 0x05;
const TAG_ARRAY: u8 = 0x06;
const TAG_OBJECT: u8 = 0x07;
const END: u8 = 0x00;

/// A byte greater than every tag: `prefix + [KEY_MAX_BYTE]` bounds all keys starting with
/// `prefix` from above.
pub const KEY_MAX_BYTE: u8 = 0xFF;

/// The binary sort key of a JSON value: comparing two keys bytewise orders them as [`collate`]
/// orders the values (see the module documentation for the one exception).
pub fn sort_key(value: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(16);
    write_sort_key(value, &mut out);
    out
}

/// The sort key of an array made of `items`, without the byte that closes it: every array whose
/// first elements are `items` has a key starting with this prefix, and the prefix sorts below
/// all of them. Used for range scans over compound keys.
pub fn array_prefix_key(items: &[Value]) -> Vec<u8> {
    let mut out = vec![TAG_ARRAY];
    for item in items {
        write_sort_key(item, &mut out);
    }
    out
}

/// Appends the sort key of `value` to `out`.
pub fn write_sort_key(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Null | Value::Bool(_) => out.push(rank(value)),
        Value::Number(n) => {
            out.push(TAG_NUMBER);
            out.extend_from_slice(&ordered_f64_bytes(number_as_f64(n)));
        }
        Value::String(s) => {
            out.push(TAG_STRING);
            write_string_key(s, out);
        }
        Value::Array(items) => {
            out.push(TAG_ARRAY);
            for item in items {
                write_sort_key(item, out);
            }
            out.push(END);
        }
        Value::Object(map) => {
            out.push(TAG_OBJECT);
            for (k, v) in map {
                out.push(TAG_STRING);
                write_string_key(k, out);
                write_sort_key(v, out);
            }
            out.push(END);
        }
    }
}

/// A string's key: its collation key, then its UTF-8 bytes for the code-point tie-break, each
/// escaped so that it contains no bare zero and ended by `00 01`, which sorts below any byte
/// that would continue it (a shorter string first, as in a plain byte comparison).
fn write_string_key(s: &str, out: &mut Vec<u8>) {
    let mut collation_key = Vec::with_capacity(s.len() * 2);
    let Ok(()) = COLLATOR.write_sort_key_to(s, &mut collation_key);
    write_escaped(&collation_key, out);
    write_escaped(s.as_bytes(), out);
}

fn write_escaped(bytes: &[u8], out: &mut Vec<u8>) {
    for &b in bytes {
        if b == 0 {
            out.extend_from_slice(&[0x00, 0xFF]);
        } else {
            out.push(b);
        }
    }
    out.extend_from_slice(&[0x00, 0x01]);
}

/// Eight bytes whose unsigned order is the numeric order of doubles (with `-0.0` equal to
/// `0.0`): a positive number gets its sign bit set, a negative one all its bits flipped.
fn ordered_f64_bytes(x: f64) -> [u8; 8] {
    let x = if x == 0.0 { 0.0 } else { x };
    let bits = x.to_bits();
    let ordered = if bits >> 63 == 0 {
        bits | (1 << 63)
    } else {
        !bits
    };
    ordered.to_be_bytes()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    /// Values in ascending order, modelled on CouchDB's own view collation test
    /// (`test/elixir/test/view_collation_test.exs`): each value sorts strictly after the one
    /// before it, both in memory and by sort key.
    fn fixture() -> Vec<Value> {
        vec![
            json!(null),
            json!(false),
            json!(true),
            json!(-1e300),
            json!(-1.5),
            json!(-1),
            json!(0),
            json!(1),
            json!(2),
            json!(3.0),
            json!(4),
            json!(1e300),
            json!(""),
            json!(" "),
            json!("_"),
            json!("-"),
            json!(","),
            json!("!"),
            json!("?"),
            json!("."),
            json!("'"),
            json!("\""),
            json!("("),
            json!(")"),
            json!("["),
            json!("]"),
            json!("{"),
            json!("}"),
            json!("@"),
            json!("*"),
            json!("/"),
            json!("\\"),
            json!("&"),
            json!("#"),
            json!("%"),
            json!("`"),
            json!("^"),
            json!("+"),
            json!("<"),
            json!("="),
            json!(">"),
            json!("|"),
            json!("~"),
            json!("$"),
            json!("0"),
            json!("1"),
            json!("10"),
            json!("2"),
            json!("9"),
            json!("a"),
            json!("A"),
            json!("aa"),
            json!("b"),
            json!("B"),
            json!("ba"),
            json!("bb"),
            json!("e"),
            json!("E"),
            // An accent weighs more than case. The precomposed and the decomposed "é" are
            // canonically equivalent: the collator calls them equal and the code-point tie-break
            // puts the decomposed one first.
            json!("e\u{0301}"),
            json!("\u{00e9}"),
            json!("\u{00c9}"),
            json!("z"),
            json!("Z"),
            json!("\u{03b1}"),
            json!("\u{0430}"),
            json!("\u{4e00}"),
            json!([]),
            json!([null]),
            json!([false]),
            json!([1]),
            json!([1, 2]),
            json!([1, 2, 3]),
            json!([1, "a"]),
            json!([2]),
            json!(["a"]),
            json!(["b"]),
            json!(["b", "c"]),
            json!(["b", "c", "a"]),
            json!(["b", "d"]),
            json!(["b", "d", "e"]),
            json!([[]]),
            json!([{}]),
            json!({}),
            json!({"a": 1}),
            json!({"a": 2}),
            json!({"b": 1}),
            json!({"b": 2}),
            json!({"b": 2, "a": 1}),
            json!({"b": 2, "c": 2}),
        ]
    }

    #[test]
    fn the_fixture_is_sorted_in_memory() {
        let values = fixture();
        for (i, a) in values.iter().enumerate() {
            for (j, b) in values.iter().enumerate() {
                assert_eq!(collate(a, b), i.cmp(&j), "collate({a}, {b})");
            }
        }
    }

    #[test]
    fn the_fixture_is_sorted_by_sort_key() {
        let values = fixture();
        let keys: Vec<Vec<u8>> = values.iter().map(sort_key).collect();
        for (i, a) in keys.iter().enumerate() {
            for (j, b) in keys.iter().enumerate() {
                assert_eq!(
                    a.cmp(b),
                    i.cmp(&j),
                    "sort_key({}) vs sort_key({})",
                    values[i],
                    values[j]
                );
            }
        }
    }

    #[test]
    fn raw_collation_puts_strings_last_and_compares_bytes() {
        let ordered = [
            json!(1),
            json!(false),
            json!(null),
            json!(true),
            json!({}),
            json!([]),
            json!("B"),
            json!("a"),
            json!("b"),
        ];
        for (i, a) in ordered.iter().enumerate() {
            for (j, b) in ordered.iter().enumerate() {
                assert_eq!(collate_raw(a, b), i.cmp(&j), "collate_raw({a}, {b})");
            }
        }
    }

    #[test]
    fn equal_numbers_are_equal() {
        for (a, b) in [
            (json!(1), json!(1.0)),
            (json!(0), json!(-0.0)),
            (json!(100), json!(1e2)),
        ] {
            assert_eq!(collate(&a, &b), Ordering::Equal, "{a} vs {b}");
            assert_eq!(sort_key(&a), sort_key(&b), "{a} vs {b}");
        }
    }

    #[test]
    fn array_prefixes_bound_their_extensions() {
        let prefix = array_prefix_key(&[json!("b")]);
        let mut upper = prefix.clone();
        upper.push(KEY_MAX_BYTE);
        for inside in [json!(["b"]), json!(["b", null]), json!(["b", {"z": []}])] {
            let key = sort_key(&inside);
            assert!(prefix < key && key < upper, "{inside}");
        }
        for outside in [json!(["a", 9]), json!(["ba"]), json!(["c"]), json!("b")] {
            let key = sort_key(&outside);
            assert!(key < prefix || key > upper, "{outside}");
        }
    }

    fn json_leaf() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            (-1000i64..1000).prop_map(|n| json!(n)),
            (-1e6f64..1e6).prop_map(|f| json!(f)),
            "[a-cA-C\u{e9}\u{301} _-]{0,4}".prop_map(Value::String),
        ]
    }

    fn json_value() -> impl Strategy<Value = Value> {
        json_leaf().prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::vec(("[a-cA-C]{0,2}", inner), 0..3)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn sort_keys_agree_with_collate(a in json_value(), b in json_value()) {
            prop_assert_eq!(sort_key(&a).cmp(&sort_key(&b)), collate(&a, &b));
        }

        #[test]
        fn collation_is_a_total_order(a in json_value(), b in json_value(), c in json_value()) {
            prop_assert_eq!(collate(&a, &b), collate(&b, &a).reverse());
            if collate(&a, &b).is_le() && collate(&b, &c).is_le() {
                prop_assert!(collate(&a, &c).is_le());
            }
        }
    }
}
