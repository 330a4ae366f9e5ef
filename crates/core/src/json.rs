//! JSON as CouchDB reads a document: every number kept exactly as written, keys in the order
//! written, and a key written twice keeping its last value in its last place.
//!
//! Numbers stay text because the workspace builds serde_json with `arbitrary_precision`:
//! `1.0`, `1.50`, `-0`, a full-precision double or an integer beyond 2^64 come back as sent,
//! where parsing them into `f64` would change about one double in nine in its last digit. Every
//! digit is kept; only an exponent is spelled one way (`1E2` comes back as `1e+2`, the same
//! number).
//! Key order comes from `preserve_order`; code that takes a field out of a `Map` must use
//! `shift_remove` (the workspace's `clippy.toml` forbids the reordering `remove`).
//!
//! Duplicate keys are decoded as CouchDB 3 decodes them (jiffy with `dedupe_keys`): the last
//! value wins and sits where the last occurrence was, so `{"a":1,"b":2,"a":3}` is `{"b":2,"a":3}`.
//! serde_json's own `Value` would keep the last value in the first place.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::map::Entry;
use serde_json::value::RawValue;
use serde_json::{Map, Number, Value};

/// Parses a whole JSON text (trailing whitespace only) with CouchDB's handling of duplicate keys.
pub fn from_slice(bytes: &[u8]) -> Result<Value, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = Decoded { room: MAX_NESTING }.deserialize(&mut de)?;
    de.end()?;
    Ok(value)
}

/// [`from_slice`] of a string.
pub fn from_str(text: &str) -> Result<Value, serde_json::Error> {
    from_slice(text.as_bytes())
}

/// The most containers (objects and arrays) a JSON text may nest, as serde_json's parser counts
/// them: a text with more is refused.
pub const MAX_NESTING: usize = 127;

/// A JSON object whose array under one key is left undecoded, each element as its own text, so
/// that the elements can be decoded separately (on several threads) with [`element`].
pub struct Split<'a> {
    /// The raw text of each element of the array, in order.
    pub items: Vec<&'a RawValue>,
    /// The object's other members, decoded as [`from_slice`] decodes them (a key written twice
    /// keeps its last value).
    pub members: Map<String, Value>,
}

/// Splits the JSON object `bytes` at its array member `key`, or answers `None` when `bytes` is
/// not such an object or anything about it is not plainly valid: the caller then decodes the
/// whole text with [`from_slice`], which accepts the same texts and reports the errors. Every
/// element is checked for syntax here; decoding an element with [`element`] at depth 2 accepts
/// exactly what decoding the whole text would (the nesting limit counts from the top).
pub fn split<'a>(bytes: &'a [u8], key: &str) -> Option<Split<'a>> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let split = SplitSeed { key }.deserialize(&mut de).ok()?;
    de.end().ok()?;
    Some(split)
}

/// Decodes one element of a [`Split`] array as [`from_slice`] would have decoded it inside its
/// document, where it sat `depth` containers deep (2 for an array member of the top object).
pub fn element(raw: &RawValue, depth: usize) -> Result<Value, serde_json::Error> {
    let room = MAX_NESTING.saturating_sub(depth);
    let mut de = serde_json::Deserializer::from_str(raw.get());
    let value = Decoded { room }.deserialize(&mut de)?;
    de.end()?;
    Ok(value)
}

struct SplitSeed<'k> {
    key: &'k str,
}

impl<'de> DeserializeSeed<'de> for SplitSeed<'_> {
    type Value = Split<'de>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Split<'de>, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for SplitSeed<'_> {
    type Value = Split<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Split<'de>, A::Error> {
        let mut items = None;
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            if key == self.key {
                items = Some(map.next_value::<Vec<&'de RawValue>>()?);
            } else {
                // A member of the top object sits one container deep.
                let value = map.next_value_seed(Decoded {
                    room: MAX_NESTING - 1,
                })?;
                entries.push((key, value));
            }
        }
        let items = items.ok_or_else(|| de::Error::missing_field("the split array"))?;
        Ok(Split {
            items,
            members: last_wins(entries),
        })
    }
}

/// How serde_json hands an `arbitrary_precision` number to a visitor: as a one-entry map under
/// this key, whose value is the number's text. It is an implementation detail of serde_json;
/// the round-trip tests below fail if it ever changes. (serde_json's own `Value` reads an object
/// with this single key as a number in the same way.)
const NUMBER_TOKEN: &str = "$serde_json::private::Number";

/// Seed that builds a [`Value`] with CouchDB's duplicate-key rule at every depth, refusing
/// more than `room` nested containers (serde_json's own limit counts from the top of the text
/// being parsed, which for an element of a [`Split`] is not the top of its document).
#[derive(Clone, Copy)]
struct Decoded {
    room: usize,
}

impl Decoded {
    /// The seed of a container's members, or the error of one container too many.
    fn inner<E: de::Error>(self) -> Result<Decoded, E> {
        match self.room {
            0 => Err(E::custom("recursion limit exceeded")),
            room => Ok(Decoded { room: room - 1 }),
        }
    }
}

impl<'de> DeserializeSeed<'de> for Decoded {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Decoded {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, b: bool) -> Result<Value, E> {
        Ok(Value::Bool(b))
    }

    fn visit_i64<E>(self, n: i64) -> Result<Value, E> {
        Ok(Value::Number(n.into()))
    }

    fn visit_u64<E>(self, n: u64) -> Result<Value, E> {
        Ok(Value::Number(n.into()))
    }

    fn visit_f64<E: de::Error>(self, n: f64) -> Result<Value, E> {
        Number::from_f64(n)
            .map(Value::Number)
            .ok_or_else(|| E::custom("number is not finite"))
    }

    fn visit_str<E>(self, s: &str) -> Result<Value, E> {
        Ok(Value::String(s.to_owned()))
    }

    fn visit_string<E>(self, s: String) -> Result<Value, E> {
        Ok(Value::String(s))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let inner = self.inner()?;
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(item) = seq.next_element_seed(inner)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let Some(first) = map.next_key::<String>()? else {
            return Ok(Value::Object(Map::new()));
        };
        if first == NUMBER_TOKEN {
            let text: String = map.next_value()?;
            return text
                .parse::<Number>()
                .map(Value::Number)
                .map_err(de::Error::custom);
        }
        let inner = self.inner()?;
        // Gathered first, so that the map is made at its final size instead of growing (and
        // rehashing every key) a few times per object.
        let mut entries = Vec::with_capacity(8);
        let mut key = first;
        loop {
            let value = map.next_value_seed(inner)?;
            entries.push((key, value));
            match map.next_key::<String>()? {
                Some(next) => key = next,
                None => break,
            }
        }
        Ok(Value::Object(last_wins(entries)))
    }
}

/// An object's members in order, a key written twice keeping its last value in its last place.
fn last_wins(entries: Vec<(String, Value)>) -> Map<String, Value> {
    let mut out = Map::with_capacity(entries.len());
    for (key, value) in entries {
        match out.entry(key) {
            Entry::Vacant(slot) => {
                slot.insert(value);
            }
            // The last occurrence of a key decides both its value and its place.
            Entry::Occupied(slot) => {
                let (key, _) = slot.shift_remove_entry();
                out.insert(key, value);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(input: &str, expected: &str) {
        let value = from_str(input).unwrap_or_else(|e| panic!("{input}: {e}"));
        assert_eq!(value.to_string(), expected, "{input}");
    }

    #[test]
    fn numbers_stay_as_written() {
        for n in [
            "0",
            "-0",
            "-0.0",
            "1.0",
            "1.50",
            "1e+2",
            "1e-7",
            "0.30000000000000004",
            "0.1000000000000000055511151231257827021181583404541015625",
            "18446744073709551616",
            "-9223372036854775809",
            "123456789012345678901234567890e-400",
            "1e+400",
        ] {
            check(n, n);
            check(&format!("[{n}]"), &format!("[{n}]"));
            check(&format!("{{\"n\":{n}}}"), &format!("{{\"n\":{n}}}"));
        }
    }

    #[test]
    fn an_exponent_is_spelled_one_way() {
        // Every digit stays; only the exponent's marker is written as serde_json scans it.
        check("1E2", "1e+2");
        check("1.5E-3", "1.5e-3");
        check("-2e400", "-2e+400");
    }

    #[test]
    fn duplicate_keys_keep_the_last_value_in_the_last_place() {
        check(r#"{"a":1,"a":2}"#, r#"{"a":2}"#);
        check(
            r#"{"bar":1,"foo":2,"baz":3,"foo":4}"#,
            r#"{"bar":1,"baz":3,"foo":4}"#,
        );
        check(r#"{"f":1,"f":2,"f":3}"#, r#"{"f":3}"#);
        check(
            r#"{"o":{"b":1,"b":{"c":1,"c":2}}}"#,
            r#"{"o":{"b":{"c":2}}}"#,
        );
        check(r#"[{"x":1,"y":0,"x":2}]"#, r#"[{"y":0,"x":2}]"#);
    }

    #[test]
    fn strings_keep_their_characters() {
        check(r#""\u00e9\/\ud83d\ude00""#, "\"é/😀\"");
        check(r#""a\"b\\c\n\u0001""#, r#""a\"b\\c\n\u0001""#);
    }

    /// The members and elements of `text` through [`split`], as one value, or `None`.
    fn through_split(text: &str) -> Option<Result<Value, serde_json::Error>> {
        let split = split(text.as_bytes(), "docs")?;
        let docs: Result<Vec<Value>, _> = split.items.iter().map(|r| element(r, 2)).collect();
        Some(docs.map(|docs| {
            let mut members = split.members;
            members.insert("docs".into(), Value::Array(docs));
            Value::Object(members)
        }))
    }

    #[test]
    fn split_elements_decode_as_the_whole_text_does() {
        for text in [
            r#"{"docs":[]}"#,
            r#"{"docs":[{"_id":"a","n":1.50,"x":{"k":1,"j":0,"k":2}},7,"s",null],"new_edits":false}"#,
            r#"{"new_edits":true,"docs":[{"a":18446744073709551616}],"new_edits":false}"#,
            r#"{"docs":[{"a":1}],"docs":[{"b":"\u00e9"}]}"#,
        ] {
            let whole = from_str(text).unwrap();
            let mut split = through_split(text).unwrap().unwrap();
            // `docs` comes last through the split; compare member by member.
            for (key, value) in whole.as_object().unwrap() {
                assert_eq!(split[key].to_string(), value.to_string(), "{text}");
            }
            split.as_object_mut().unwrap().shift_remove("docs");
            assert_eq!(
                split.as_object().unwrap().len() + 1,
                whole.as_object().unwrap().len()
            );
        }
    }

    #[test]
    fn split_leaves_what_it_cannot_take_to_the_whole_decoding() {
        for text in [
            "[1]",
            r#"{"docs":{}}"#,
            r#"{"other":1}"#,
            r#"{"docs":[1,]}"#,
            r#"{"docs":[1]} x"#,
            r#"{"docs":[{"a":1}],"docs":7}"#,
        ] {
            assert!(through_split(text).is_none(), "{text}");
        }
    }

    #[test]
    fn split_elements_meet_the_nesting_limit_where_the_whole_text_does() {
        // An element sits two containers deep: whatever the whole text refuses for nesting, the
        // element's own decoding refuses too, and nothing else.
        for depth in 120..=130 {
            let doc = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
            let text = format!(r#"{{"docs":[{doc}]}}"#);
            let whole = from_str(&text).is_ok();
            let split = through_split(&text).map(|r| r.is_ok());
            assert_eq!(split.unwrap_or(false), whole, "an element {depth} deep");
            let member = format!(r#"{{"docs":[],"x":{doc}}}"#);
            let whole = from_str(&member).is_ok();
            let split = through_split(&member).map(|r| r.is_ok());
            assert_eq!(split.unwrap_or(false), whole, "a member {depth} deep");
        }
    }

    #[test]
    fn refuses_what_json_refuses() {
        for bad in [
            "",
            "{",
            "[1,]",
            "01",
            "1.",
            "-",
            "NaN",
            "{\"a\":1} x",
            r#"{"a"}"#,
            "\"\\ud800\"",
        ] {
            assert!(from_str(bad).is_err(), "{bad}");
        }
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert!(
            from_str(&deep).is_err(),
            "nesting beyond serde_json's limit"
        );
    }
}
