//! What a `POST /_replicate` body or a `_replicator` document asks for, validated, and how its
//! two sides become [`Endpoint`]s.
//!
//! The fields are CouchDB's (docs.couchdb.org, "api/server/common" `/_replicate` and
//! "replication/replicator"): `source` and `target` as URL strings or `{"url", "headers"}`
//! objects, `continuous`, `create_target`, `doc_ids`, `selector`, `since_seq`. A side that is a
//! bare database name (CouchDB 1.x's "local" form) or a URL that leads back to this server is
//! replicated through the store directly, without HTTP.

use std::fmt;
use std::sync::Arc;

use outpost_core::names::validate_db_name;
use outpost_replicator::{
    ChangesFilter, Endpoint, HttpEndpoint, ReplicationConfig, ReplicationError, Seq,
};
use serde_json::{Map, Value};

use super::local::LocalEndpoint;
use crate::AppState;

/// One side of a replication as given.
#[derive(Clone, PartialEq)]
pub struct Side {
    /// A URL (possibly with credentials) or a bare database name.
    pub url: String,
    /// Extra request headers (possibly `Authorization`).
    pub headers: Vec<(String, String)>,
}

impl Side {
    fn parse(field: &str, value: Option<&Value>) -> Result<Side, String> {
        match value {
            Some(Value::String(url)) => Ok(Side {
                url: url.clone(),
                headers: Vec::new(),
            }),
            Some(Value::Object(obj)) => {
                let url = obj
                    .get("url")
                    .and_then(Value::as_str)
                    .ok_or_else(|| format!("{field}.url must be a string"))?;
                let mut headers = Vec::new();
                if let Some(h) = obj.get("headers") {
                    let h = h
                        .as_object()
                        .ok_or_else(|| format!("{field}.headers must be an object"))?;
                    for (name, value) in h {
                        let value = value
                            .as_str()
                            .ok_or_else(|| format!("{field}.headers.{name} must be a string"))?;
                        headers.push((name.clone(), value.to_owned()));
                    }
                }
                Ok(Side {
                    url: url.to_owned(),
                    headers,
                })
            }
            Some(_) => Err(format!("{field} must be a url or an object with a url")),
            None => Err(format!("{field} is missing")),
        }
    }

    /// Whether this is a bare database name rather than a URL.
    fn is_db_name(&self) -> bool {
        !self.url.contains("://")
    }

    /// The side without credentials, for status output and logs.
    pub fn redacted(&self) -> String {
        if self.is_db_name() {
            return self.url.clone();
        }
        match reqwest::Url::parse(&self.url) {
            Ok(mut url) => {
                let _ = url.set_username("");
                let _ = url.set_password(None);
                url.set_query(None);
                url.as_str().trim_end_matches('/').to_owned()
            }
            Err(_) => "(invalid url)".to_owned(),
        }
    }

    /// Builds the endpoint, and names the database when it is one of this server's. `peer`
    /// names the other side in the event log of a local target.
    async fn endpoint(
        &self,
        state: &AppState,
        client: &reqwest::Client,
        peer: String,
    ) -> Result<(Arc<dyn Endpoint>, Option<String>), ReplicationError> {
        if self.is_db_name() {
            validate_db_name(&self.url)
                .map_err(|e| ReplicationError::InvalidConfig(format!("{}: {e}", self.url)))?;
            let endpoint = LocalEndpoint::new(state.clone(), self.url.clone(), Some(peer));
            return Ok((Arc::new(endpoint), Some(self.url.clone())));
        }
        let http = HttpEndpoint::new(client.clone(), &self.url, &self.headers)?;
        // A URL of this very server (same uuid) goes through the store. When the peer cannot be
        // asked now, HTTP is always correct, only slower.
        let ours = format!("{}{}", state.store.server_uuid(), http.db_name());
        if http.id().await.is_ok_and(|id| id == ours) {
            let db = http.db_name().to_owned();
            let endpoint = LocalEndpoint::new(state.clone(), db.clone(), Some(peer));
            return Ok((Arc::new(endpoint), Some(db)));
        }
        Ok((Arc::new(http), None))
    }
}

impl fmt::Debug for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// The two endpoints of a replication, built.
pub struct Endpoints {
    pub source: Arc<dyn Endpoint>,
    pub target: Arc<dyn Endpoint>,
    pub local: LocalDbs,
}

/// The sides of a replication that are databases of this server, replicated through the store;
/// database info lists a job under these names only.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LocalDbs {
    pub source: Option<String>,
    pub target: Option<String>,
}

/// A validated replication request.
#[derive(Clone, Debug, PartialEq)]
pub struct Spec {
    pub source: Side,
    pub target: Side,
    pub continuous: bool,
    pub create_target: bool,
    pub filter: ChangesFilter,
    pub since_seq: Option<Seq>,
}

impl Spec {
    /// Reads CouchDB's fields from a request body or a `_replicator` document; unknown fields
    /// (`_id`, `owner`, `user_ctx`, the `_replication_*` state) are ignored.
    pub fn parse(body: &Map<String, Value>) -> Result<Spec, String> {
        let source = Side::parse("source", body.get("source"))?;
        let target = Side::parse("target", body.get("target"))?;
        let flag = |name: &str| match body.get(name) {
            None | Some(Value::Null) => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(_) => Err(format!("{name} must be a boolean")),
        };
        let doc_ids = match body.get("doc_ids") {
            None | Some(Value::Null) => None,
            Some(Value::Array(ids)) => Some(
                ids.iter()
                    .map(|id| id.as_str().map(str::to_owned))
                    .collect::<Option<Vec<_>>>()
                    .ok_or("doc_ids must be an array of strings")?,
            ),
            Some(_) => return Err("doc_ids must be an array of strings".into()),
        };
        let selector = match body.get("selector") {
            None | Some(Value::Null) => None,
            Some(s @ Value::Object(_)) => Some(s.clone()),
            Some(_) => return Err("selector must be an object".into()),
        };
        let function = match body.get("filter") {
            None | Some(Value::Null) => None,
            Some(Value::String(name)) if name == "_view" || name.contains('/') => {
                let query_params = match body.get("query_params") {
                    None | Some(Value::Null) => None,
                    Some(Value::Object(params)) => Some(params.clone()),
                    Some(_) => return Err("query_params must be an object".into()),
                };
                let view = match (
                    body.get("view"),
                    query_params.as_ref().and_then(|p| p.get("view")),
                ) {
                    (Some(Value::String(v)), _) | (None, Some(Value::String(v))) => Some(v.clone()),
                    (None, None) => None,
                    _ => return Err("view must be a string".into()),
                };
                if name == "_view" && view.is_none() {
                    return Err("filter _view needs a view".into());
                }
                Some(ChangesFilter::Function {
                    name: name.clone(),
                    view,
                    query_params,
                })
            }
            Some(_) => {
                return Err(
                    "filter must name a design document function (ddoc/name) or _view".into(),
                );
            }
        };
        let filter = match (doc_ids, selector, function) {
            (Some(ids), None, None) => ChangesFilter::DocIds(ids),
            (None, Some(s), None) => ChangesFilter::Selector(s),
            (None, None, Some(f)) => f,
            (None, None, None) => ChangesFilter::All,
            _ => return Err("doc_ids, selector and filter cannot be combined".into()),
        };
        let since_seq = body
            .get("since_seq")
            .filter(|v| !v.is_null())
            .cloned()
            .map(Seq);
        let spec = Spec {
            source,
            target,
            continuous: flag("continuous")?,
            create_target: flag("create_target")?,
            filter,
            since_seq,
        };
        spec.config(None).validate().map_err(|e| e.to_string())?;
        Ok(spec)
    }

    /// The replicator's settings for this request. `max_attempts: None` retries transient
    /// failures for ever, as CouchDB's scheduler does for its jobs.
    pub fn config(&self, max_attempts: Option<u32>) -> ReplicationConfig {
        ReplicationConfig {
            continuous: self.continuous,
            create_target: self.create_target,
            filter: self.filter.clone(),
            since_seq: self.since_seq.clone(),
            max_attempts,
            ..ReplicationConfig::default()
        }
    }

    /// Both endpoints, and which of this server's databases they are.
    pub async fn endpoints(
        &self,
        state: &AppState,
        client: &reqwest::Client,
    ) -> Result<Endpoints, ReplicationError> {
        let (source, source_db) = self
            .source
            .endpoint(state, client, self.target.redacted())
            .await?;
        let (target, target_db) = self
            .target
            .endpoint(state, client, self.source.redacted())
            .await?;
        Ok(Endpoints {
            source,
            target,
            local: LocalDbs {
                source: source_db,
                target: target_db,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn parse(v: Value) -> Result<Spec, String> {
        Spec::parse(v.as_object().unwrap())
    }

    #[test]
    fn parses_couchdb_bodies() {
        let spec = parse(json!({
            "source": {"url": "http://u:p@h:1/a", "headers": {"authorization": "Bearer x"}},
            "target": "b", "continuous": true, "doc_ids": ["x"], "_id": "doc", "owner": "o"
        }))
        .unwrap();
        assert!(spec.continuous && !spec.create_target);
        assert_eq!(spec.filter, ChangesFilter::DocIds(vec!["x".into()]));
        assert_eq!(spec.source.headers.len(), 1);
        assert_eq!(spec.source.redacted(), "http://h:1/a");
        assert!(!format!("{spec:?}").contains("u:p"));
    }

    #[test]
    fn refuses_bad_bodies() {
        for bad in [
            json!({"target": "b"}),
            json!({"source": 1, "target": "b"}),
            json!({"source": "a", "target": "b", "continuous": "yes"}),
            json!({"source": "a", "target": "b", "doc_ids": "x"}),
            json!({"source": "a", "target": "b", "doc_ids": ["x"], "selector": {}}),
            json!({"source": "a", "target": "b", "selector": {"$bad": 1}}),
            json!({"source": "a", "target": "b", "filter": "nofunction"}),
            json!({"source": "a", "target": "b", "filter": "_view"}),
            json!({"source": "a", "target": "b", "filter": "d/f", "query_params": 1}),
            json!({"source": "a", "target": "b", "filter": "d/f", "doc_ids": ["x"]}),
        ] {
            assert!(parse(bad.clone()).is_err(), "{bad}");
        }
    }
}
