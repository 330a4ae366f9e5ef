//! Typed access to query parameters, with CouchDB's parsing rules and clear 400s.

use serde_json::Value;

use crate::ApiError;

/// The decoded query string of a request.
#[derive(Debug, Default, Clone)]
pub struct Query {
    pairs: Vec<(String, String)>,
}

impl Query {
    /// Decodes a raw query string (`a=1&b=%22x%22`).
    pub fn parse(raw: Option<&str>) -> Result<Query, ApiError> {
        let pairs = match raw {
            None | Some("") => Vec::new(),
            Some(raw) => serde_urlencoded::from_str::<Vec<(String, String)>>(raw)
                .map_err(|_| ApiError::bad_request("invalid query string"))?,
        };
        Ok(Query { pairs })
    }

    /// The parameters encoded again as a query string (`a=1&b=x`), empty without any.
    pub fn encode(&self) -> String {
        serde_urlencoded::to_string(&self.pairs).unwrap_or_default()
    }

    /// Every parameter as a map of strings (the last value of a repeated one).
    pub fn to_json_map(&self) -> serde_json::Map<String, Value> {
        match self.to_json() {
            Value::Object(map) => map,
            _ => serde_json::Map::new(),
        }
    }

    /// Every parameter as a JSON object of strings (the last value of a repeated one), as
    /// CouchDB gives `req.query` to design-document functions.
    pub fn to_json(&self) -> Value {
        let mut out = serde_json::Map::new();
        for (k, v) in &self.pairs {
            out.insert(k.clone(), Value::String(v.clone()));
        }
        Value::Object(out)
    }

    /// The last value given for `name` (CouchDB lets a later parameter win).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// A `true`/`false` parameter.
    pub fn bool(&self, name: &str) -> Result<Option<bool>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some("true") => Ok(Some(true)),
            Some("false") => Ok(Some(false)),
            Some(other) => Err(ApiError::bad_request(format!(
                "invalid boolean parameter {name}={other}: expected true or false"
            ))),
        }
    }

    /// A `true`/`false` parameter that defaults to `false`.
    pub fn flag(&self, name: &str) -> Result<bool, ApiError> {
        Ok(self.bool(name)?.unwrap_or(false))
    }

    /// A non-negative integer parameter. A value too large for 64 bits stands for the largest
    /// one (`skip=99999999999999999999` skips everything), so callers only ever see numbers
    /// they must already handle without overflowing.
    pub fn u64(&self, name: &str) -> Result<Option<u64>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => saturating_u64(v).map(Some).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "invalid value for {name}: {v:?} is not a non-negative integer"
                ))
            }),
        }
    }

    /// A JSON-encoded parameter (`key`, `startkey`, `open_revs`, ...).
    pub fn json(&self, name: &str) -> Result<Option<Value>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => serde_json::from_str(v).map(Some).map_err(|_| {
                ApiError::bad_request(format!("invalid JSON in query parameter {name}"))
            }),
        }
    }

    /// The first of several aliases present (`startkey` / `start_key`) as JSON.
    pub fn json_any(&self, names: &[&str]) -> Result<Option<Value>, ApiError> {
        for name in names {
            if let Some(v) = self.json(name)? {
                return Ok(Some(v));
            }
        }
        Ok(None)
    }
}

/// Parses decimal digits (surrounding spaces allowed), saturating at `u64::MAX`.
pub fn saturating_u64(raw: &str) -> Option<u64> {
    let digits = raw.trim();
    let digits = digits.strip_prefix('+').unwrap_or(digits);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(digits.parse::<u64>().unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_types_parameters() {
        let q = Query::parse(Some("limit=10&include_docs=true&key=%22a%2Fb%22&limit=20")).unwrap();
        assert_eq!(q.u64("limit").unwrap(), Some(20));
        assert_eq!(q.bool("include_docs").unwrap(), Some(true));
        assert_eq!(q.json("key").unwrap(), Some(Value::String("a/b".into())));
        assert!(q.bool("missing").unwrap().is_none());
    }

    #[test]
    fn numbers_beyond_64_bits_saturate() {
        let q = Query::parse(Some(
            "skip=18446744073709551615&limit=99999999999999999999999",
        ))
        .unwrap();
        assert_eq!(q.u64("skip").unwrap(), Some(u64::MAX));
        assert_eq!(q.u64("limit").unwrap(), Some(u64::MAX));
        assert_eq!(saturating_u64(" 7 "), Some(7));
        assert_eq!(saturating_u64(""), None);
        assert_eq!(saturating_u64("1e3"), None);
    }

    #[test]
    fn refuses_bad_values() {
        let q = Query::parse(Some("limit=-1&descending=yes&key=%7B")).unwrap();
        assert!(q.u64("limit").is_err());
        assert!(q.bool("descending").is_err());
        assert!(q.json("key").is_err());
    }
}
