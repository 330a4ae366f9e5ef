//! Per-document access (`PUT /{db}?access=true`) against a real server: who reads and writes
//! what, losing and regaining access as a deletion and a return in `_changes`, and leak tests:
//! for a user without access, no endpoint answers another user's document, revision id,
//! attachment or event.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

use super::auth::{Live, MatrixRow, Who, basic, check_matrix, live_with, user_doc};
use crate::support::seq_param;

fn alice() -> Option<String> {
    Some(basic("alice", "pw-alice"))
}

fn bob() -> Option<String> {
    Some(basic("bob", "pw-bob"))
}

/// The secret of alice's document: its content, and its attachment's bytes.
const SECRET: &str = "alice-only-content";
const SECRET_BYTES: &[u8] = b"alice-only-attachment";

/// A server with users `outsider`, `member` (role `staff`), `dbadmin`, `alice` and `bob` (both
/// `staff`), and `acc`, an access database whose admins are `dbadmin` and members `staff`.
async fn setup() -> Live {
    let s = live_with(|_| {}).await;
    s.ok("PUT", "/_users", None).await;
    for (name, roles) in [
        ("outsider", vec![]),
        ("member", vec!["staff"]),
        ("dbadmin", vec![]),
        ("alice", vec!["staff"]),
        ("bob", vec!["staff", "team"]),
    ] {
        s.ok(
            "PUT",
            &format!("/_users/org.couchdb.user:{name}"),
            Some(user_doc(name, &roles)),
        )
        .await;
    }
    s.ok("PUT", "/acc?access=true", None).await;
    let security = json!({
        "admins": {"names": ["dbadmin"], "roles": []},
        "members": {"names": [], "roles": ["staff"]},
    });
    s.ok("PUT", "/acc/_security", Some(security)).await;
    s
}

/// Sends a request with a raw text answer.
async fn text(
    s: &Live,
    who: Option<String>,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, String) {
    let mut request = s
        .client
        .request(method.parse().unwrap(), format!("{}{path}", s.base));
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
    (status, response.text().await.unwrap())
}

async fn as_user(
    s: &Live,
    who: Option<String>,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let (status, _, value) = s.send(who, method, path, body).await;
    (status, value)
}

#[tokio::test]
async fn the_flag_is_kept_reported_and_fixed() {
    let s = setup().await;
    let info = s.ok("GET", "/acc", None).await;
    assert_eq!(info["props"]["access"], true);
    // Set at creation only: the database exists, and other databases have no such property.
    let (status, _) = s.admin("PUT", "/acc?access=false", None).await;
    assert_eq!(status, 412);
    s.ok("PUT", "/plain", None).await;
    assert_eq!(s.ok("GET", "/plain", None).await["props"], json!({}));
    let (status, _) = s.admin("PUT", "/other?access=maybe", None).await;
    assert_eq!(status, 400);
    // Elsewhere `_access` is an unknown special member, refused as CouchDB refuses one.
    let (status, body) = s
        .admin("PUT", "/plain/d", Some(json!({"_access": ["x"]})))
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("doc_validation"))
    );
    let bulk = json!({"docs": [{"_id": "e", "_access": ["x"]}, {"_id": "f"}]});
    let (_, body) = s.admin("POST", "/plain/_bulk_docs", Some(bulk)).await;
    assert_eq!(body[0]["error"], "doc_validation", "{body}");
    assert_eq!(body[1]["ok"], true, "{body}");
}

#[tokio::test]
async fn members_write_only_what_names_them() {
    let s = setup().await;
    // Creating: only with an `_access` that names the writer (by name or role).
    let (status, _) = as_user(
        &s,
        bob(),
        "PUT",
        "/acc/b1",
        Some(json!({"_access": ["bob"]})),
    )
    .await;
    assert_eq!(status, 201);
    let (status, _) = as_user(
        &s,
        bob(),
        "PUT",
        "/acc/b2",
        Some(json!({"_access": ["team"]})),
    )
    .await;
    assert_eq!(status, 201);
    let (status, body) = as_user(
        &s,
        bob(),
        "PUT",
        "/acc/b3",
        Some(json!({"_access": ["alice"]})),
    )
    .await;
    assert_eq!((status, body["error"].as_str()), (403, Some("forbidden")));
    let (status, _) = as_user(&s, bob(), "PUT", "/acc/b4", Some(json!({"x": 1}))).await;
    assert_eq!(status, 403);
    // Updating and deleting: only what names the writer now.
    let a = s
        .ok("PUT", "/acc/a", Some(json!({"_access": ["alice"], "v": 1})))
        .await;
    let rev = a["rev"].as_str().unwrap();
    let (status, _) = as_user(
        &s,
        bob(),
        "PUT",
        "/acc/a",
        Some(json!({"_rev": rev, "_access": ["bob"]})),
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) = as_user(&s, bob(), "DELETE", &format!("/acc/a?rev={rev}"), None).await;
    assert_eq!(status, 403);
    let bulk = json!({"new_edits": false, "docs": [{"_id": "a", "_rev": "2-0123456789abcdef0123456789abcdef", "_revisions": {"start": 2, "ids": ["0123456789abcdef0123456789abcdef", rev.split('-').nth(1).unwrap()]}, "_access": ["bob"]}]});
    let (status, body) = as_user(&s, bob(), "POST", "/acc/_bulk_docs", Some(bulk)).await;
    assert_eq!(status, 201);
    assert_eq!(body[0]["error"], "forbidden", "{body}");
    // Alice may update hers, but not so that she loses it; she may delete it.
    let (status, _) = as_user(
        &s,
        alice(),
        "PUT",
        "/acc/a",
        Some(json!({"_rev": rev, "_access": ["bob"]})),
    )
    .await;
    assert_eq!(status, 403);
    let (status, body) = as_user(
        &s,
        alice(),
        "PUT",
        "/acc/a",
        Some(json!({"_rev": rev, "_access": ["alice", "bob"]})),
    )
    .await;
    assert_eq!(status, 201);
    let rev2 = body["rev"].as_str().unwrap().to_owned();
    let (status, _) = as_user(&s, bob(), "DELETE", &format!("/acc/a?rev={rev2}"), None).await;
    assert_eq!(status, 200, "bob is listed now");
    // Database admins write anything.
    let (status, _) = as_user(
        &s,
        Some(basic("dbadmin", "pw-dbadmin")),
        "PUT",
        "/acc/free",
        Some(json!({})),
    )
    .await;
    assert_eq!(status, 201);
}

/// Every way of reading `acc` that can show a document, as `who`: the raw answers.
async fn every_read(
    s: &Live,
    who: Option<String>,
    id: &str,
    rev: &str,
) -> Vec<(String, u16, String)> {
    let mut out = Vec::new();
    let revs = json!([rev]).to_string();
    let mut gets: Vec<String> = vec![
        format!("/acc/{id}"),
        format!("/acc/{id}?rev={rev}"),
        format!("/acc/{id}?open_revs=all"),
        format!("/acc/{id}?open_revs={revs}"),
        format!("/acc/{id}?open_revs={revs}&latest=true&revs=true"),
        format!("/acc/{id}?revs_info=true&conflicts=true&meta=true"),
        format!("/acc/{id}/file.txt"),
        format!("/acc/{id}/file.txt?rev={rev}"),
        "/acc".into(),
        "/acc/_all_docs".into(),
        "/acc/_all_docs?include_docs=true&conflicts=true&update_seq=true".into(),
        format!("/acc/_all_docs?key=\"{id}\""),
        format!("/acc/_all_docs?startkey=\"{id}\"&skip=0"),
        format!("/acc/_all_docs?keys=[\"{id}\"]&include_docs=true"),
        "/acc/_design_docs".into(),
        "/acc/_conflicts".into(),
        "/acc/_events?include_docs=true".into(),
        format!("/acc/_events?doc_id={id}"),
        "/acc/_events?feed=continuous&timeout=100".into(),
        "/acc/_local_docs".into(),
    ];
    for feed in ["normal", "longpoll", "continuous", "eventsource"] {
        for filter in [
            "",
            "&include_docs=true&attachments=true&conflicts=true",
            "&style=all_docs",
            "&filter=_doc_ids&doc_ids=[\"ID\"]",
            "&filter=_selector&selector={\"v\":{\"$gt\":0}}",
            "&filter=_design",
            "&filter=app/all",
            "&filter=_view&view=app/all",
        ] {
            gets.push(format!(
                "/acc/_changes?feed={feed}&timeout=100&since=0{}",
                filter.replace("ID", id)
            ));
        }
    }
    gets.push("/acc/_changes?descending=true&include_docs=true".into());
    gets.push("/acc/_changes?since=now&feed=longpoll&timeout=100".into());
    gets.push("/acc/_changes?limit=1".into());
    for path in gets {
        let (status, body) = text(s, who.clone(), "GET", &path, None).await;
        out.push((format!("GET {path}"), status, body));
    }
    let posts: Vec<(&str, Value)> = vec![
        ("/acc/_all_docs", json!({"keys": [id, "nothing"]})),
        (
            "/acc/_bulk_get",
            json!({"docs": [{"id": id}, {"id": id, "rev": rev}]}),
        ),
        (
            "/acc/_bulk_get?revs=true&latest=true&attachments=true",
            json!({"docs": [{"id": id, "rev": rev}]}),
        ),
        (
            "/acc/_revs_diff",
            json!({id: [rev, "9-0123456789abcdef0123456789abcdef"]}),
        ),
        ("/acc/_changes?filter=_doc_ids", json!({"doc_ids": [id]})),
        (
            "/acc/_changes?filter=_selector",
            json!({"selector": {"_id": id}}),
        ),
        ("/acc/_find", json!({"selector": {"_id": {"$gt": null}}})),
        (
            "/acc/_find",
            json!({"selector": {"v": {"$gt": 0}}, "use_index": "by-v"}),
        ),
    ];
    for (path, body) in posts {
        let (status, answer) = text(s, who.clone(), "POST", path, Some(body.clone())).await;
        out.push((format!("POST {path} {body}"), status, answer));
    }
    out
}

/// Alice's secret document with an attachment, bob's own, a filter and a view, an index.
async fn two_users_docs(s: &Live) -> String {
    let data = STANDARD.encode(SECRET_BYTES);
    let a = s
        .ok(
            "PUT",
            "/acc/alice-secret",
            Some(json!({"_access": ["alice"], "v": 1, "text": SECRET,
                "_attachments": {"file.txt": {"content_type": "text/plain", "data": data}}})),
        )
        .await;
    s.ok(
        "PUT",
        "/acc/bob-own",
        Some(json!({"_access": ["bob"], "v": 2})),
    )
    .await;
    s.ok(
        "PUT",
        "/acc/_design/app",
        Some(json!({
            "filters": {"all": "function (doc) { return true; }"},
            "views": {"all": {"map": "function (doc) { emit(doc._id, doc.text); }", "reduce": "_count"}},
        })),
    )
    .await;
    s.ok(
        "POST",
        "/acc/_index",
        Some(json!({"index": {"fields": ["v"]}, "name": "by-v", "ddoc": "by-v"})),
    )
    .await;
    a["rev"].as_str().unwrap().to_owned()
}

/// No answer carries the content or the attachment of alice's document.
fn assert_no_content(answers: &[(String, u16, String)]) {
    let attachment = STANDARD.encode(SECRET_BYTES);
    let mut leaks = Vec::new();
    for (what, status, body) in answers {
        for secret in [SECRET, attachment.as_str(), "alice-only-attachment"] {
            if body.contains(secret) {
                leaks.push(format!("{what} ({status}) shows {secret:?}: {body}"));
            }
        }
    }
    assert!(leaks.is_empty(), "{}", leaks.join("\n"));
}

#[tokio::test]
async fn nothing_of_a_document_reaches_a_member_it_does_not_name() {
    let s = setup().await;
    let rev = two_users_docs(&s).await;
    // Every answer about alice's document is the answer about one that never existed (with
    // the names swapped): not its body, its revisions, its attachment, or that it exists.
    let hidden = every_read(&s, bob(), "alice-secret", &rev).await;
    let absent_rev = "1-0123456789abcdef0123456789abcdef";
    let absent = every_read(&s, bob(), "alice-secrex", absent_rev).await;
    assert_no_content(&hidden);
    let mut differ = Vec::new();
    for ((what, status, body), (_, absent_status, absent_body)) in hidden.iter().zip(&absent) {
        let seen = body.replace("alice-secret", "ID").replace(&rev, "REV");
        let nothing = absent_body
            .replace("alice-secrex", "ID")
            .replace(absent_rev, "REV");
        if (status, &seen) != (absent_status, &nothing) {
            differ.push(format!(
                "{what}: {status} {seen}\n  vs absent: {absent_status} {nothing}"
            ));
        }
        if seen.contains(rev.split('-').nth(1).unwrap()) {
            differ.push(format!("{what} shows the revision: {seen}"));
        }
    }
    assert!(differ.is_empty(), "{}", differ.join("\n"));
    let by_path = |p: &str| hidden.iter().find(|(w, _, _)| w == p).unwrap().clone();
    // Not silence either: bob's reads work and show his own document only.
    let (_, status, body) = by_path("GET /acc/alice-secret");
    assert_eq!((status, body.contains("not_found")), (404, true));
    let (_, _, body) = by_path("GET /acc");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["doc_count"],
        1
    );
    let (_, status, body) = by_path("GET /acc/_all_docs");
    assert_eq!(status, 200);
    let listing: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(listing["total_rows"], 1);
    assert_eq!(listing["rows"][0]["id"], "bob-own");
    let (_, _, body) = by_path("GET /acc/_changes?feed=normal&timeout=100&since=0");
    let ids: Vec<Value> = feed_rows(&body).iter().map(|r| r["id"].clone()).collect();
    assert_eq!(ids, ["bob-own"]);
    let (_, _, body) = by_path(r#"POST /acc/_find {"selector":{"_id":{"$gt":null}}}"#);
    let found: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(found["docs"].as_array().unwrap().len(), 1, "{body}");
    // Its statistics count what bob may read, through the index and without one.
    for selector in [json!({"v": {"$gt": 0}}), json!({"_id": {"$gt": null}})] {
        let query = json!({"selector": selector, "execution_stats": true});
        let (_, found) = as_user(&s, bob(), "POST", "/acc/_find", Some(query)).await;
        let stats = &found["execution_stats"];
        assert_eq!(stats["total_docs_examined"], 1, "{found}");
        assert_eq!(stats["total_keys_examined"], 1, "{found}");
    }
    // Views are for the database's admins.
    let (status, _) = as_user(&s, bob(), "GET", "/acc/_design/app/_view/all", None).await;
    assert_eq!(status, 403);
    // The one who is named reads it all, and so do the database's admins.
    let (status, body) = as_user(&s, alice(), "GET", "/acc/alice-secret", None).await;
    assert_eq!((status, body["text"].as_str()), (200, Some(SECRET)));
    let dbadmin = Some(basic("dbadmin", "pw-dbadmin"));
    let (status, _) = as_user(&s, dbadmin, "GET", "/acc/bob-own", None).await;
    assert_eq!(status, 200);
    // An anonymous client or a non-member is refused before anything is read.
    for who in [None, Some(basic("outsider", "pw-outsider"))] {
        let answers = every_read(&s, who, "alice-secret", &rev).await;
        assert_no_leak_statuses(&answers);
    }
}

fn assert_no_leak_statuses(answers: &[(String, u16, String)]) {
    for (what, status, _) in answers {
        assert!(*status == 401 || *status == 403, "{what}: {status}");
    }
}

fn feed_rows(body: &str) -> Vec<Value> {
    let feed: Value = serde_json::from_str(body).unwrap();
    feed["results"].as_array().unwrap().clone()
}

#[tokio::test]
async fn losing_access_is_a_deletion_and_regaining_it_a_return() {
    let s = setup().await;
    let r1 = s
        .ok(
            "PUT",
            "/acc/shared",
            Some(json!({"_access": ["alice", "bob"], "v": 1})),
        )
        .await;
    let r1 = r1["rev"].as_str().unwrap().to_owned();
    s.ok("PUT", "/acc/other", Some(json!({"_access": ["alice"]})))
        .await;
    let (_, body) = text(&s, bob(), "GET", "/acc/_changes", None).await;
    let rows = feed_rows(&body);
    assert_eq!(rows.len(), 1);
    let since = seq_param(&rows[0]["seq"]);
    // Alice takes bob off.
    let (status, r2) = as_user(
        &s,
        alice(),
        "PUT",
        "/acc/shared",
        Some(json!({"_rev": r1, "_access": ["alice"], "v": 2, "text": SECRET})),
    )
    .await;
    assert_eq!(status, 201);
    let r2 = r2["rev"].as_str().unwrap().to_owned();
    let (_, body) = text(
        &s,
        bob(),
        "GET",
        &format!("/acc/_changes?since={since}&include_docs=true"),
        None,
    )
    .await;
    let rows = feed_rows(&body);
    assert_eq!(rows.len(), 1, "{body}");
    assert_eq!(rows[0]["id"], "shared");
    assert_eq!(rows[0]["deleted"], true);
    assert_eq!(rows[0]["changes"][0]["rev"], r2.as_str());
    assert_eq!(
        rows[0]["doc"],
        json!({"_id": "shared", "_rev": r2, "_deleted": true})
    );
    // A replicator fetches that revision: a bare tombstone whose path joins what bob holds.
    let (status, body) = as_user(
        &s,
        bob(),
        "POST",
        "/acc/_bulk_get?revs=true",
        Some(json!({"docs": [{"id": "shared", "rev": r2}]})),
    )
    .await;
    assert_eq!(status, 200);
    let doc = &body["results"][0]["docs"][0]["ok"];
    assert_eq!(doc["_deleted"], true, "{body}");
    assert_eq!(doc["_revisions"]["ids"].as_array().unwrap().len(), 2);
    assert!(
        doc.get("v").is_none() && doc.get("_access").is_none(),
        "{doc}"
    );
    let path = format!("/acc/shared?open_revs=[\"{r2}\"]&revs=true");
    let (status, body) = as_user(&s, bob(), "GET", &path, None).await;
    assert_eq!(status, 200);
    assert_eq!(body[0]["ok"]["_deleted"], true);
    let (status, _) = as_user(&s, bob(), "GET", "/acc/shared", None).await;
    assert_eq!(status, 404);
    let (status, _) = as_user(&s, bob(), "GET", &format!("/acc/shared?rev={r1}"), None).await;
    assert_eq!(status, 404);
    let (_, diff) = as_user(
        &s,
        bob(),
        "POST",
        "/acc/_revs_diff",
        Some(json!({"shared": [r2]})),
    )
    .await;
    assert_eq!(diff, json!({}), "the tombstone is what bob has");
    // Later writes do not reach bob; the document's content never did.
    let (_, r3) = as_user(
        &s,
        alice(),
        "PUT",
        "/acc/shared",
        Some(json!({"_rev": r2, "_access": ["alice"], "v": 3})),
    )
    .await;
    let r3 = r3["rev"].as_str().unwrap().to_owned();
    let seq_now = feed_rows(&text(&s, bob(), "GET", "/acc/_changes", None).await.1)
        .last()
        .unwrap()["seq"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_, body) = text(&s, bob(), "GET", "/acc/_changes?include_docs=true", None).await;
    assert!(!body.contains(SECRET) && !body.contains(&r3), "{body}");
    // Given back: live again, at the new write, with everything.
    let (status, _) = as_user(
        &s,
        alice(),
        "PUT",
        "/acc/shared",
        Some(json!({"_rev": r3, "_access": ["alice", "team"], "v": 4})),
    )
    .await;
    assert_eq!(status, 201);
    let (_, body) = text(
        &s,
        bob(),
        "GET",
        &format!("/acc/_changes?since={seq_now}&include_docs=true"),
        None,
    )
    .await;
    let rows = feed_rows(&body);
    assert_eq!(rows.len(), 1);
    assert!(rows[0].get("deleted").is_none());
    assert_eq!(rows[0]["doc"]["v"], 4);
    let (status, body) = as_user(&s, bob(), "GET", "/acc/shared", None).await;
    assert_eq!((status, body["v"].as_i64()), (200, Some(4)));
}

#[tokio::test]
async fn a_members_feed_pages_exactly() {
    let s = setup().await;
    for i in 0..12 {
        let who = if i % 3 == 0 { "bob" } else { "alice" };
        s.ok(
            "PUT",
            &format!("/acc/d{i:02}"),
            Some(json!({"_access": [who]})),
        )
        .await;
    }
    let (_, body) = text(&s, bob(), "GET", "/acc/_changes", None).await;
    let all: Vec<Value> = feed_rows(&body).iter().map(|r| r["id"].clone()).collect();
    assert_eq!(all, ["d00", "d03", "d06", "d09"]);
    let mut paged = Vec::new();
    let mut since = json!(0);
    loop {
        let (_, page) = as_user(
            &s,
            bob(),
            "GET",
            &format!("/acc/_changes?limit=1&since={}", seq_param(&since)),
            None,
        )
        .await;
        let rows = page["results"].as_array().unwrap();
        if rows.is_empty() {
            break;
        }
        paged.push(rows[0]["id"].clone());
        // `pending` counts only bob's rows.
        assert_eq!(page["pending"], 4 - paged.len(), "{page}");
        since = page["last_seq"].clone();
    }
    assert_eq!(paged, all);
    // `_all_docs` pages over bob's documents only, `skip` counting only those.
    let (_, listing) = as_user(&s, bob(), "GET", "/acc/_all_docs?skip=1&limit=2", None).await;
    let ids: Vec<Value> = listing["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].clone())
        .collect();
    assert_eq!(ids, ["d03", "d06"]);
    assert_eq!(listing["total_rows"], 4);
    let (_, listing) = as_user(
        &s,
        bob(),
        "GET",
        "/acc/_all_docs?descending=true&startkey=\"d06\"",
        None,
    )
    .await;
    let ids: Vec<Value> = listing["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].clone())
        .collect();
    assert_eq!(ids, ["d06", "d03", "d00"]);
    // `update_seq` is the sequence of bob's own latest row.
    let info = as_user(&s, bob(), "GET", "/acc", None).await.1;
    let last = feed_rows(&body).last().unwrap()["seq"].clone();
    assert_eq!(info["update_seq"], last);
}

#[tokio::test]
async fn access_databases_answer_each_principal_as_documented() {
    let s = setup().await;
    s.ok("PUT", "/acc/mine", Some(json!({"_access": ["member"]})))
        .await;
    s.ok("PUT", "/acc/theirs", Some(json!({"_access": ["someone"]})))
        .await;
    s.ok(
        "PUT",
        "/acc/_design/app",
        Some(json!({"views": {"all": {"map": "function (doc) { emit(doc._id, null); }"}}})),
    )
    .await;
    let rows: Vec<MatrixRow> = vec![
        (
            "PUT",
            "/made{p}?access=true",
            None,
            [401, 403, 403, 403, 201],
        ),
        ("GET", "/acc", None, [401, 403, 200, 200, 200]),
        ("GET", "/acc/mine", None, [401, 403, 200, 200, 200]),
        ("GET", "/acc/theirs", None, [401, 403, 404, 200, 200]),
        (
            "PUT",
            "/acc/new{p}",
            Some(json!({"_access": ["member"]})),
            [401, 403, 201, 201, 201],
        ),
        (
            "PUT",
            "/acc/foreign{p}",
            Some(json!({"_access": ["someone"]})),
            [401, 403, 403, 201, 201],
        ),
        ("GET", "/acc/_all_docs", None, [401, 403, 200, 200, 200]),
        ("GET", "/acc/_changes", None, [401, 403, 200, 200, 200]),
        (
            "POST",
            "/acc/_find",
            Some(json!({"selector": {}})),
            [401, 403, 200, 200, 200],
        ),
        (
            "GET",
            "/acc/_design/app/_view/all",
            None,
            [401, 403, 403, 200, 200],
        ),
        (
            "GET",
            "/acc/_design/app/_info",
            None,
            [401, 403, 403, 200, 200],
        ),
    ];
    check_matrix(&s, rows).await;
    // A replication reads a local source whole, so a member replicates over HTTP instead.
    let spec = json!({"source": "acc", "target": format!("{}/elsewhere", s.base)});
    let (status, _, body) = s
        .send(Who::Member.auth(), "POST", "/_replicate", Some(spec))
        .await;
    assert_eq!(status, 403, "{body}");
}
