//! Authentication and authorization against a real server: every route of docs/security.md
//! for an anonymous client, a signed-in non-member, a member, a database admin and a server
//! admin; sessions, tokens, lockout, `_users` rules and run-time admins.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use outpost_auth::Credentials;
use outpost_server::auth::AuthSettings;
use outpost_server::{AppState, Config};
use outpost_store::sqlite::SqliteStore;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const JWT_SECRET: &[u8] = b"jwt test secret";

pub(crate) struct Live {
    pub(crate) base: String,
    pub(crate) client: reqwest::Client,
    shutdown: CancellationToken,
    dir: tempfile::TempDir,
}

impl Drop for Live {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn settings(dir: &std::path::Path) -> AuthSettings {
    let mut jwt = outpost_auth::JwtConfig::default();
    jwt.set_hs256_secret(JWT_SECRET);
    AuthSettings {
        admins: vec![("admin".into(), Credentials::hash("secret", 10))],
        admins_file: Some(dir.join("admins.json")),
        password_iterations: 10,
        lockout_threshold: 3,
        jwt,
        ..AuthSettings::default()
    }
}

pub(crate) async fn live_with(edit: impl FnOnce(&mut AuthSettings)) -> Live {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(dir.path()).unwrap());
    let shutdown = CancellationToken::new();
    let mut auth = settings(dir.path());
    edit(&mut auth);
    let config = Config {
        auth,
        ..Config::default()
    };
    let state = AppState::new(store, config, shutdown.clone());
    let base = format!("http://{}", crate::support::serve_on_loopback(state).await);
    Live {
        base,
        client: reqwest::Client::new(),
        shutdown,
        dir,
    }
}

#[derive(Clone, Copy, Debug)]
pub(crate) enum Who {
    Anonymous,
    Outsider,
    Member,
    DbAdmin,
    Admin,
}

pub(crate) const EVERYONE: [Who; 5] = [
    Who::Anonymous,
    Who::Outsider,
    Who::Member,
    Who::DbAdmin,
    Who::Admin,
];

pub(crate) fn basic(name: &str, password: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{name}:{password}")))
}

impl Who {
    pub(crate) fn auth(self) -> Option<String> {
        match self {
            Who::Anonymous => None,
            Who::Outsider => Some(basic("outsider", "pw-outsider")),
            Who::Member => Some(basic("member", "pw-member")),
            Who::DbAdmin => Some(basic("dbadmin", "pw-dbadmin")),
            Who::Admin => Some(basic("admin", "secret")),
        }
    }
}

impl Live {
    pub(crate) async fn send(
        &self,
        who: Option<String>,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        let mut request = self
            .client
            .request(method.parse().unwrap(), format!("{}{path}", self.base));
        if let Some(auth) = who {
            request = request.header("authorization", auth);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap();
        let value = serde_json::from_str(&text).unwrap_or(Value::Null);
        (status, headers, value)
    }

    pub(crate) async fn admin(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let (status, _, value) = self.send(Who::Admin.auth(), method, path, body).await;
        (status, value)
    }

    pub(crate) async fn ok(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (status, value) = self.admin(method, path, body).await;
        assert!(
            (200..300).contains(&status),
            "{method} {path}: {status} {value}"
        );
        value
    }
}

pub(crate) fn user_doc(name: &str, roles: &[&str]) -> Value {
    json!({"name": name, "type": "user", "roles": roles, "password": format!("pw-{name}")})
}

/// `_users` with three users, `db` whose admins are `dbadmin` and members the `staff` role.
pub(crate) async fn populated() -> Live {
    let s = live_with(|_| {}).await;
    s.ok("PUT", "/_users", None).await;
    s.ok("PUT", "/_replicator", None).await;
    for (name, roles) in [
        ("outsider", vec![]),
        ("member", vec!["staff"]),
        ("dbadmin", vec![]),
    ] {
        s.ok(
            "PUT",
            &format!("/_users/org.couchdb.user:{name}"),
            Some(user_doc(name, &roles)),
        )
        .await;
    }
    let security = json!({
        "admins": {"names": ["dbadmin"], "roles": []},
        "members": {"names": [], "roles": ["staff"]},
    });
    for db in ["db", "db2"] {
        s.ok("PUT", &format!("/{db}"), None).await;
        s.ok("PUT", &format!("/{db}/_security"), Some(security.clone()))
            .await;
    }
    s.ok("PUT", "/db/d1", Some(json!({"v": 1}))).await;
    s.ok(
        "PUT",
        "/db/_design/app",
        Some(
            json!({"views": {"by_v": {"map": "function (doc) { if (doc.v) emit(doc.v, null); }"}}}),
        ),
    )
    .await;
    for i in 0..5 {
        s.ok("PUT", &format!("/gone{i}"), None).await;
    }
    s
}

/// 0 in an expectation means "allowed": anything but 401 and 403.
pub(crate) const OK: u16 = 0;

#[tokio::test]
async fn every_route_answers_each_principal_as_documented() {
    let s = populated().await;
    let security = json!({"admins": {"names": ["dbadmin"]}, "members": {"roles": ["staff"]}});
    // (method, path with {p} for the principal's index, body, [anonymous, outsider, member,
    // db admin, server admin])
    let rows: Vec<MatrixRow> = vec![
        ("GET", "/", None, [200; 5]),
        ("GET", "/_up", None, [200; 5]),
        ("GET", "/_uuids", None, [200; 5]),
        ("GET", "/_session", None, [200; 5]),
        ("GET", "/_outpost/v1/ready", None, [OK; 5]),
        ("GET", "/_outpost/v1/openapi.json", None, [200; 5]),
        ("GET", "/_all_dbs", None, [401, 403, 403, 403, 200]),
        (
            "POST",
            "/_dbs_info",
            Some(json!({"keys": ["db"]})),
            [401, 403, 403, 403, 200],
        ),
        ("GET", "/_membership", None, [401, 403, 403, 403, 200]),
        ("GET", "/_active_tasks", None, [401, 403, 403, 403, 200]),
        ("GET", "/_scheduler/jobs", None, [401, 403, 403, 403, 200]),
        ("GET", "/_scheduler/docs", None, [401, 403, 403, 403, 200]),
        ("GET", "/_node/_local", None, [401, 403, 403, 403, 200]),
        (
            "GET",
            "/_node/_local/_stats/couchdb/httpd/requests",
            None,
            [401, 403, 403, 403, 200],
        ),
        (
            "GET",
            "/_node/_local/_config",
            None,
            [401, 403, 403, 403, 200],
        ),
        (
            "GET",
            "/_node/_local/_system",
            None,
            [401, 403, 403, 403, 200],
        ),
        (
            "GET",
            "/_node/_local/_prometheus",
            None,
            [401, 403, 403, 403, 200],
        ),
        (
            "GET",
            "/_outpost/v1/metrics",
            None,
            [401, 403, 403, 403, 200],
        ),
        (
            "PUT",
            "/_node/_local/_config/admins/extra{p}",
            Some(json!("pw")),
            [401, 403, 403, 403, 200],
        ),
        ("PUT", "/new{p}", None, [401, 403, 403, 403, 201]),
        ("DELETE", "/gone{p}", None, [401, 403, 403, 403, 200]),
        ("GET", "/_replicator", None, [401, 403, 403, 403, 200]),
        ("GET", "/_users", None, [401, 403, 403, 403, 200]),
        ("GET", "/_users/_all_docs", None, [401, 403, 403, 403, 200]),
        (
            "GET",
            "/_users/org.couchdb.user:member",
            None,
            [401, 403, 200, 403, 200],
        ),
        ("GET", "/db", None, [401, 403, 200, 200, 200]),
        (
            "POST",
            "/db",
            Some(json!({"_id": "post{p}"})),
            [401, 403, 201, 201, 201],
        ),
        ("GET", "/db/_all_docs", None, [401, 403, 200, 200, 200]),
        (
            "POST",
            "/db/_all_docs",
            Some(json!({"keys": ["d1"]})),
            [401, 403, 200, 200, 200],
        ),
        ("GET", "/db/_changes", None, [401, 403, 200, 200, 200]),
        ("GET", "/_db_updates", None, [401, 403, 403, 403, 200]),
        ("GET", "/db/_design_docs", None, [401, 403, 200, 200, 200]),
        ("GET", "/db/_local_docs", None, [401, 403, 200, 200, 200]),
        (
            "POST",
            "/db/_find",
            Some(json!({"selector": {"v": 1}})),
            [401, 403, 200, 200, 200],
        ),
        (
            "POST",
            "/db/_explain",
            Some(json!({"selector": {"v": 1}})),
            [401, 403, 200, 200, 200],
        ),
        ("GET", "/db/_index", None, [401, 403, 200, 200, 200]),
        (
            "POST",
            "/db/_index",
            Some(json!({"index": {"fields": ["f{p}"]}})),
            [401, 403, 403, OK, OK],
        ),
        (
            "GET",
            "/db/_design/app/_view/by_v",
            None,
            [401, 403, 200, 200, 200],
        ),
        (
            "POST",
            "/db/_design/app/_view/by_v",
            Some(json!({"keys": [1]})),
            [401, 403, 200, 200, 200],
        ),
        (
            "GET",
            "/db/_design/app/_info",
            None,
            [401, 403, 200, 200, 200],
        ),
        ("POST", "/db/_view_cleanup", None, [401, 403, 403, OK, OK]),
        ("GET", "/db/_events", None, [401, 403, 200, 200, 200]),
        ("GET", "/db/_conflicts", None, [401, 403, 200, 200, 200]),
        (
            "POST",
            "/db/_bulk_get",
            Some(json!({"docs": [{"id": "d1"}]})),
            [401, 403, 200, 200, 200],
        ),
        (
            "POST",
            "/db/_revs_diff",
            Some(json!({"d1": ["1-x"]})),
            [401, 403, 200, 200, 200],
        ),
        (
            "POST",
            "/db/_bulk_docs",
            Some(json!({"docs": [{"_id": "bulk{p}"}]})),
            [401, 403, 201, 201, 201],
        ),
        (
            "POST",
            "/db/_bulk_docs",
            Some(json!({"docs": [{"_id": "_design/bulk{p}"}]})),
            [401, 403, 403, 201, 201],
        ),
        ("GET", "/db/d1", None, [401, 403, 200, 200, 200]),
        (
            "PUT",
            "/db/doc{p}",
            Some(json!({})),
            [401, 403, 201, 201, 201],
        ),
        ("GET", "/db/_local/none", None, [401, 403, 404, 404, 404]),
        (
            "PUT",
            "/db/_local/l{p}",
            Some(json!({})),
            [401, 403, 201, 201, 201],
        ),
        (
            "PUT",
            "/db/_design/x{p}",
            Some(json!({})),
            [401, 403, 403, 201, 201],
        ),
        ("GET", "/db/_security", None, [401, 403, 200, 200, 200]),
        (
            "PUT",
            "/db/_security",
            Some(security),
            [401, 403, 403, 200, 200],
        ),
        ("GET", "/db/_revs_limit", None, [401, 403, 200, 200, 200]),
        (
            "PUT",
            "/db/_revs_limit",
            Some(json!(1000)),
            [401, 403, 403, 200, 200],
        ),
        ("GET", "/db/_outpost", None, [401, 403, 200, 200, 200]),
        (
            "POST",
            "/db/_purge",
            Some(json!({"gone{p}": ["1-967a00dff5e02add41819138abb3284d"]})),
            [401, 403, 403, 201, 201],
        ),
        (
            "GET",
            "/db/_purged_infos_limit",
            None,
            [401, 403, 200, 200, 200],
        ),
        (
            "PUT",
            "/db/_purged_infos_limit",
            Some(json!(1000)),
            [401, 403, 403, 200, 200],
        ),
        ("POST", "/db/_compact", None, [401, 403, 403, 202, 202]),
        (
            "POST",
            "/db/_resolve",
            Some(json!({})),
            [401, 403, 403, OK, OK],
        ),
        (
            "POST",
            "/db/_ensure_full_commit",
            None,
            [401, 403, 201, 201, 201],
        ),
        (
            "POST",
            "/_replicate",
            Some(json!({"source": "db", "target": "db2"})),
            [401, 403, 403, 200, 200],
        ),
        (
            "POST",
            "/_replicate",
            Some(json!({"source": "db", "target": "db3", "create_target": true})),
            [401, 403, 403, 403, 200],
        ),
    ];
    check_matrix(&s, rows).await;
}

/// One row of an authorization matrix: method, path (`{p}` becomes the principal's index, so
/// that writes do not collide), body, and the status for anonymous, outsider, member, database
/// admin and server admin (`OK`: anything but 401 and 403).
pub(crate) type MatrixRow<'a> = (&'a str, &'a str, Option<Value>, [u16; 5]);

/// Sends every row as every principal and fails with the list of answers that differ.
pub(crate) async fn check_matrix(s: &Live, rows: Vec<MatrixRow<'_>>) {
    let mut failures = Vec::new();
    for (method, path, body, expected) in rows {
        for (i, who) in EVERYONE.into_iter().enumerate() {
            let path = path.replace("{p}", &i.to_string());
            let body = body.as_ref().map(|b| {
                serde_json::from_str(&b.to_string().replace("{p}", &i.to_string())).unwrap()
            });
            let (status, _, answer) = s.send(who.auth(), method, &path, body).await;
            let want = expected[i];
            let good = if want == OK {
                status != 401 && status != 403
            } else {
                status == want
            };
            if !good {
                failures.push(format!(
                    "{method} {path} as {who:?}: {status} (expected {want}) {answer}"
                ));
            }
            if status == 401 || status == 403 {
                let code = if status == 401 {
                    "unauthorized"
                } else {
                    "forbidden"
                };
                assert_eq!(answer["error"], code, "{method} {path} as {who:?}");
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn cookie_sessions_as_couchdb() {
    let s = populated().await;
    // JSON body.
    let (status, headers, body) = s
        .send(
            None,
            "POST",
            "/_session",
            Some(json!({"name": "member", "password": "pw-member"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"ok": true, "name": "member", "roles": ["staff"]})
    );
    let cookie = headers["set-cookie"].to_str().unwrap().to_owned();
    assert!(cookie.starts_with("AuthSession="), "{cookie}");
    assert!(cookie.contains("; Version=1; Path=/; HttpOnly"), "{cookie}");
    let value = cookie.split(';').next().unwrap().to_owned();
    let with_cookie = |method: &str, path: &str| {
        s.client
            .request(method.parse().unwrap(), format!("{}{path}", s.base))
            .header("cookie", value.clone())
    };
    let session: Value = with_cookie("GET", "/_session")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        session["userCtx"],
        json!({"name": "member", "roles": ["staff"]})
    );
    assert_eq!(session["info"]["authenticated"], "cookie");
    assert!(
        session["info"]["authentication_handlers"]
            .as_array()
            .unwrap()
            .contains(&json!("cookie"))
    );
    assert_eq!(
        with_cookie("GET", "/db/d1").send().await.unwrap().status(),
        200
    );
    // Form body.
    let response = s
        .client
        .post(format!("{}/_session", s.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("name=dbadmin&password=pw-dbadmin")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // Wrong password.
    let (status, headers, body) = s
        .send(
            None,
            "POST",
            "/_session",
            Some(json!({"name": "member", "password": "nope"})),
        )
        .await;
    assert_eq!(status, 401);
    assert_eq!(body["error"], "unauthorized");
    assert!(headers.get("set-cookie").is_none());
    // Logging out expires the cookie.
    let response = with_cookie("DELETE", "/_session").send().await.unwrap();
    assert_eq!(response.status(), 200);
    let expired = response.headers()["set-cookie"].to_str().unwrap();
    assert!(expired.starts_with("AuthSession=;"), "{expired}");
    // A forged cookie is no session: the request is anonymous.
    let forged = URL_SAFE_NO_PAD.encode(b"admin:5F5E100:0123456789abcdef0123456789abcdef");
    let response = s
        .client
        .get(format!("{}/_all_dbs", s.base))
        .header("cookie", format!("AuthSession={forged}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    // A changed password ends the sessions made with the old one.
    let mut doc = s.ok("GET", "/_users/org.couchdb.user:member", None).await;
    doc["password"] = json!("new password");
    s.ok("PUT", "/_users/org.couchdb.user:member", Some(doc))
        .await;
    assert_eq!(
        with_cookie("GET", "/db/d1").send().await.unwrap().status(),
        401
    );
}

fn jwt(claims: Value, secret: &[u8]) -> String {
    use hmac::Mac;
    let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).unwrap();
    mac.update(format!("{header}.{payload}").as_bytes());
    let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{header}.{payload}.{sig}")
}

#[tokio::test]
async fn jwt_bearer_tokens() {
    let s = populated().await;
    let good = jwt(
        json!({"sub": "someone", "_couchdb.roles": ["staff"]}),
        JWT_SECRET,
    );
    let (status, _, body) = s
        .send(Some(format!("Bearer {good}")), "GET", "/db/d1", None)
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, _, session) = s
        .send(Some(format!("Bearer {good}")), "GET", "/_session", None)
        .await;
    assert_eq!(session["userCtx"]["name"], "someone");
    assert_eq!(session["info"]["authenticated"], "jwt");
    // A token signed with another secret, an unsigned one and an expired one are refused.
    let forged = jwt(json!({"sub": "x", "_couchdb.roles": ["_admin"]}), b"other");
    let none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(r#"{"sub":"x","_couchdb.roles":["_admin"]}"#)
    );
    let expired = jwt(json!({"sub": "x", "exp": 1000}), JWT_SECRET);
    for token in [forged, none, expired] {
        let (status, _, body) = s
            .send(Some(format!("Bearer {token}")), "GET", "/_all_dbs", None)
            .await;
        assert_eq!(status, 401, "{body}");
        assert!(!body.to_string().contains(&token));
    }
}

#[tokio::test]
async fn repeated_failures_lock_the_account_out_and_are_counted() {
    let s = populated().await;
    for _ in 0..3 {
        let (status, _, _) = s
            .send(Some(basic("member", "wrong")), "GET", "/db", None)
            .await;
        assert_eq!(status, 401);
    }
    // Now even the right password is refused, with a clear reason.
    let (status, _, body) = s.send(Who::Member.auth(), "GET", "/db", None).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["reason"].as_str().unwrap().contains("locked"),
        "{body}"
    );
    // Another user is not affected.
    let (status, _, _) = s.send(Who::DbAdmin.auth(), "GET", "/db", None).await;
    assert_eq!(status, 200);
    let metrics = s
        .client
        .get(format!("{}/_outpost/v1/metrics", s.base))
        .header("authorization", Who::Admin.auth().unwrap())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("outpost_auth_failures_total{method=\"basic\"}")),
        "{metrics}"
    );
    assert!(!metrics.contains("pw-member") && !metrics.contains("wrong"));
}

#[tokio::test]
async fn users_database_rules() {
    let s = populated().await;
    // Stored hashed, never in clear.
    let doc = s.ok("GET", "/_users/org.couchdb.user:member", None).await;
    assert!(doc.get("password").is_none(), "{doc}");
    assert_eq!(doc["password_scheme"], "pbkdf2");
    assert_eq!(doc["pbkdf2_prf"], "sha256");
    assert_eq!(doc["iterations"], 10);
    assert!(doc["derived_key"].as_str().unwrap().len() == 64);
    // Anonymous sign-up is refused without public_signup.
    let (status, _, _) = s
        .send(
            None,
            "PUT",
            "/_users/org.couchdb.user:new",
            Some(user_doc("new", &[])),
        )
        .await;
    assert_eq!(status, 401);
    // A user changes their own password but not their roles, nor another's document.
    let (_, _, mut own) = s
        .send(
            Who::Member.auth(),
            "GET",
            "/_users/org.couchdb.user:member",
            None,
        )
        .await;
    own["roles"] = json!(["staff", "boss"]);
    let (status, _, body) = s
        .send(
            Who::Member.auth(),
            "PUT",
            "/_users/org.couchdb.user:member",
            Some(own.clone()),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    own["roles"] = json!(["staff"]);
    own["password"] = json!("changed");
    let (status, _, body) = s
        .send(
            Who::Member.auth(),
            "PUT",
            "/_users/org.couchdb.user:member",
            Some(own),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, _, _) = s
        .send(Some(basic("member", "changed")), "GET", "/db", None)
        .await;
    assert_eq!(status, 200);
    let (_, _, other) = s
        .send(
            Who::Admin.auth(),
            "GET",
            "/_users/org.couchdb.user:outsider",
            None,
        )
        .await;
    let (status, _, _) = s
        .send(
            Some(basic("member", "changed")),
            "PUT",
            "/_users/org.couchdb.user:outsider",
            Some(other),
        )
        .await;
    assert_eq!(status, 403);
    // Nobody, not even an admin, gives `_admin`.
    let (status, body) = s
        .admin(
            "PUT",
            "/_users/org.couchdb.user:root",
            Some(user_doc("root", &["_admin"])),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    // Through _bulk_docs too the password is hashed.
    s.ok("POST", "/_users/_bulk_docs", Some(json!({"docs": [
        {"_id": "org.couchdb.user:bulk", "name": "bulk", "type": "user", "roles": [], "password": "pw-bulk"}
    ]})))
    .await;
    let doc = s.ok("GET", "/_users/org.couchdb.user:bulk", None).await;
    assert!(
        doc.get("password").is_none() && doc.get("derived_key").is_some(),
        "{doc}"
    );
}

#[tokio::test]
async fn public_signup_and_peruser_databases() {
    let s = live_with(|a| {
        a.public_signup = true;
        a.couch_peruser = true;
    })
    .await;
    s.ok("PUT", "/_users", None).await;
    let (status, _, body) = s
        .send(
            None,
            "PUT",
            "/_users/org.couchdb.user:ann",
            Some(user_doc("ann", &[])),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    // Sign-up cannot give roles, nor take over an existing account.
    let (status, _, _) = s
        .send(
            None,
            "PUT",
            "/_users/org.couchdb.user:bo",
            Some(user_doc("bo", &["boss"])),
        )
        .await;
    assert_eq!(status, 403);
    let (status, _, _) = s
        .send(
            None,
            "PUT",
            "/_users/org.couchdb.user:ann",
            Some(user_doc("ann", &[])),
        )
        .await;
    assert_eq!(status, 403);
    // Users read only their own document.
    s.send(
        None,
        "PUT",
        "/_users/org.couchdb.user:cy",
        Some(user_doc("cy", &[])),
    )
    .await;
    let ann = Some(basic("ann", "pw-ann"));
    let (status, _, _) = s
        .send(ann.clone(), "GET", "/_users/org.couchdb.user:ann", None)
        .await;
    assert_eq!(status, 200);
    let (status, _, _) = s
        .send(ann.clone(), "GET", "/_users/org.couchdb.user:cy", None)
        .await;
    assert_eq!(status, 403);
    // The private database, for ann alone.
    let private = format!("/userdb-{}", hex::encode("ann"));
    let (status, _, _) = s
        .send(
            ann.clone(),
            "PUT",
            &format!("{private}/doc"),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 201);
    let (status, _, _) = s
        .send(
            Some(basic("cy", "pw-cy")),
            "GET",
            &format!("{private}/doc"),
            None,
        )
        .await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn admins_added_at_run_time_are_saved_hashed() {
    let s = populated().await;
    let (status, body) = s
        .admin(
            "PUT",
            "/_node/_local/_config/admins/second",
            Some(json!("second-pass")),
        )
        .await;
    assert_eq!((status, body), (200, json!("")));
    let (status, _, _) = s
        .send(
            Some(basic("second", "second-pass")),
            "GET",
            "/_all_dbs",
            None,
        )
        .await;
    assert_eq!(status, 200);
    let saved = std::fs::read_to_string(s.dir.path().join("admins.json")).unwrap();
    assert!(
        saved.contains("second") && saved.contains("-pbkdf2:sha256-"),
        "{saved}"
    );
    assert!(!saved.contains("second-pass"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(s.dir.path().join("admins.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let listed = s.ok("GET", "/_node/_local/_config/admins", None).await;
    assert!(!listed.to_string().contains("pbkdf2"), "{listed}");
    s.ok("DELETE", "/_node/_local/_config/admins/second", None)
        .await;
    let (status, _, _) = s
        .send(
            Some(basic("second", "second-pass")),
            "GET",
            "/_all_dbs",
            None,
        )
        .await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn cors_allows_no_origin_once_authentication_is_on() {
    let s = populated().await;
    let response = s
        .client
        .get(format!("{}/", s.base))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert!(
        response
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
}

#[tokio::test]
async fn without_admins_every_request_is_admin() {
    let s = live_with(|a| a.admins.clear()).await;
    let (status, _, _) = s.send(None, "PUT", "/free", None).await;
    assert_eq!(status, 201);
    let (_, _, session) = s.send(None, "GET", "/_session", None).await;
    assert_eq!(session["userCtx"]["roles"], json!(["_admin"]));
    // Adding an admin turns authentication on at once.
    let (status, _, _) = s
        .send(
            None,
            "PUT",
            "/_node/_local/_config/admins/boss",
            Some(json!("pw")),
        )
        .await;
    assert_eq!(status, 200);
    let (status, _, _) = s.send(None, "GET", "/_all_dbs", None).await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn cached_accounts_and_security_follow_every_change() {
    let s = populated().await;
    // Cached after one use each.
    let (status, _, _) = s.send(Who::Member.auth(), "GET", "/db/d1", None).await;
    assert_eq!(status, 200);
    // A password changed through _bulk_docs (not the single-document route) takes effect.
    let mut doc = s.ok("GET", "/_users/org.couchdb.user:member", None).await;
    doc["password"] = json!("via-bulk");
    s.ok("POST", "/_users/_bulk_docs", Some(json!({"docs": [doc]})))
        .await;
    let (status, _, _) = s.send(Who::Member.auth(), "GET", "/db/d1", None).await;
    assert_eq!(status, 401);
    let (status, _, _) = s
        .send(Some(basic("member", "via-bulk")), "GET", "/db/d1", None)
        .await;
    assert_eq!(status, 200);
    // A deleted user no longer signs in.
    let doc = s.ok("GET", "/_users/org.couchdb.user:member", None).await;
    let rev = doc["_rev"].as_str().unwrap();
    s.ok(
        "DELETE",
        &format!("/_users/org.couchdb.user:member?rev={rev}"),
        None,
    )
    .await;
    let (status, _, _) = s
        .send(Some(basic("member", "via-bulk")), "GET", "/db/d1", None)
        .await;
    assert_eq!(status, 401);
    // A member removed from _security loses access at once.
    let (status, _, _) = s.send(Who::DbAdmin.auth(), "GET", "/db2", None).await;
    assert_eq!(status, 200);
    s.ok(
        "PUT",
        "/db2/_security",
        Some(json!({"admins": {}, "members": {"names": ["someone"]}})),
    )
    .await;
    let (status, _, _) = s.send(Who::DbAdmin.auth(), "GET", "/db2", None).await;
    assert_eq!(status, 403);
    // A database deleted and created again has the default security, not the old one.
    s.ok("PUT", "/db2/_security", Some(json!({}))).await;
    let (status, _, _) = s.send(Who::Outsider.auth(), "GET", "/db2", None).await;
    assert_eq!(status, 200);
    s.ok("DELETE", "/db2", None).await;
    s.ok("PUT", "/db2", None).await;
    let (status, _, _) = s.send(Who::Outsider.auth(), "GET", "/db2", None).await;
    assert_eq!(status, 403);
}
