//! Conflict policies: settings, listing, manual resolution, and automatic `lww`/`merge`
//! resolutions that come out the same on every replica.

use serde_json::{Value, json};

use crate::support::{TestServer, assert_error, compact};

/// Two branches off `1-aaa`, as a replicator would deliver them.
fn branches(b: Value, c: Value) -> Value {
    let mut docs =
        vec![json!({"_id": "d", "_rev": "1-aaa", "title": "base", "n": 0, "tags": ["x"]})];
    for (hash, mut body) in [("bbb", b), ("ccc", c)] {
        body["_id"] = json!("d");
        body["_rev"] = json!(format!("2-{hash}"));
        body["_revisions"] = json!({"start": 2, "ids": [hash, "aaa"]});
        docs.push(body);
    }
    json!({"new_edits": false, "docs": docs})
}

async fn with_policy(policy: Value) -> TestServer {
    let s = TestServer::new();
    s.expect("PUT", "/db", None, 201).await;
    s.expect("PUT", "/db/_outpost", Some(policy), 200).await;
    s
}

fn live_leaves(open_revs: &Value) -> Vec<String> {
    open_revs
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["ok"]["_deleted"] != true)
        .map(|e| e["ok"]["_rev"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn settings_default_to_manual_and_are_validated() {
    let s = TestServer::new();
    s.expect("PUT", "/db", None, 201).await;
    assert_eq!(
        s.expect("GET", "/db/_outpost", None, 200).await,
        json!({"conflict_policy": "manual", "lww_field": null, "retention": null})
    );
    s.expect(
        "PUT",
        "/db/_outpost",
        Some(json!({"conflict_policy": "lww", "lww_field": "updated_at"})),
        200,
    )
    .await;
    assert_eq!(
        s.expect("GET", "/db", None, 200).await["outpost"]["conflict_policy"],
        "lww"
    );
    assert_error(
        &s.expect(
            "PUT",
            "/db/_outpost",
            Some(json!({"conflict_policy": "newest"})),
            400,
        )
        .await,
        "bad_request",
    );
    assert_error(
        &s.expect("PUT", "/db/_outpost", Some(json!({"colour": 1})), 400)
            .await,
        "bad_request",
    );
    s.expect("GET", "/nodb/_outpost", None, 404).await;
}

#[tokio::test]
async fn manual_conflicts_are_listed_and_resolved_in_one_step() {
    let s = with_policy(json!({"conflict_policy": "manual"})).await;
    s.expect(
        "POST",
        "/db/_bulk_docs",
        Some(branches(json!({"n": 1}), json!({"n": 2}))),
        201,
    )
    .await;
    let listed = s.expect("GET", "/db/_conflicts", None, 200).await;
    assert_eq!(
        listed["rows"],
        json!([{"id": "d", "rev": "2-ccc", "conflicts": ["2-bbb"], "reason": "manual"}])
    );

    // A resolution that does not name every live leaf was made from a stale read.
    let stale = json!({"id": "d", "doc": {"n": 3}, "revs": ["2-ccc"]});
    assert_error(
        &s.expect("POST", "/db/_resolve", Some(stale), 409).await,
        "conflict",
    );
    let done = s
        .expect(
            "POST",
            "/db/_resolve",
            Some(json!({"id": "d", "doc": {"n": 3}, "revs": ["2-ccc", "2-bbb"]})),
            201,
        )
        .await;
    let doc = s.expect("GET", "/db/d?conflicts=true", None, 200).await;
    assert_eq!(doc["_rev"], done["rev"]);
    assert_eq!(doc["n"], 3);
    assert!(doc.get("_conflicts").is_none(), "{doc}");
    assert_eq!(
        s.expect("GET", "/db/_conflicts", None, 200).await["rows"],
        json!([])
    );
    let events = s.expect("GET", "/db/_events?doc_id=d", None, 200).await;
    let resolved: Vec<&Value> = events["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "resolved")
        .collect();
    assert_eq!(resolved.len(), 2, "{events}");
    assert_eq!(resolved[0]["policy"], "manual");
    assert_eq!(resolved[0]["superseded"], json!(["2-bbb", "2-ccc"]));
}

#[tokio::test]
async fn lww_keeps_the_latest_timestamp_and_tombstones_the_rest() {
    let s = with_policy(json!({"conflict_policy": "lww", "lww_field": "updated_at"})).await;
    let docs = branches(
        json!({"n": 1, "updated_at": "2026-05-02T10:00:00Z"}),
        json!({"n": 2, "updated_at": "2026-05-01T10:00:00Z"}),
    );
    s.expect("POST", "/db/_bulk_docs", Some(docs), 201).await;
    let doc = s.expect("GET", "/db/d?conflicts=true", None, 200).await;
    // 2-ccc would win by CouchDB's rule; lww picks 2-bbb for its later timestamp.
    assert_eq!(
        (doc["_rev"].as_str(), doc["n"].as_i64()),
        (Some("2-bbb"), Some(1))
    );
    assert!(doc.get("_conflicts").is_none(), "{doc}");
    assert_eq!(
        live_leaves(&s.expect("GET", "/db/d?open_revs=all", None, 200).await),
        ["2-bbb"]
    );
    assert_eq!(
        s.expect("GET", "/db/_conflicts", None, 200).await["rows"],
        json!([])
    );
}

#[tokio::test]
async fn merge_combines_fields_edited_on_different_sides() {
    let s = with_policy(json!({"conflict_policy": "merge", "lww_field": "at"})).await;
    let docs = branches(
        json!({"title": "mine", "n": 0, "tags": ["x"], "at": 2}),
        json!({"title": "theirs", "n": 7, "tags": ["x", "y"], "at": 1}),
    );
    s.expect("POST", "/db/_bulk_docs", Some(docs), 201).await;
    let doc = s
        .expect("GET", "/db/d?conflicts=true&revs=true", None, 200)
        .await;
    assert_eq!(doc["title"], "mine", "{doc}");
    assert_eq!(doc["n"], 7);
    assert_eq!(doc["tags"], json!(["x", "y"]));
    assert_eq!(doc["_revisions"]["ids"][1], "bbb");
    assert!(doc.get("_conflicts").is_none(), "{doc}");
}

#[tokio::test]
async fn replicas_resolving_independently_converge() {
    for policy in [
        json!({"conflict_policy": "lww", "lww_field": "at"}),
        json!({"conflict_policy": "merge", "lww_field": "at"}),
    ] {
        let a = with_policy(policy.clone()).await;
        let b = with_policy(policy.clone()).await;
        let docs = branches(json!({"x": 1, "at": 1}), json!({"y": 2, "at": 1}));
        // A receives both branches at once; B one at a time, in the other order.
        a.expect("POST", "/db/_bulk_docs", Some(docs.clone()), 201)
            .await;
        for i in [0, 2, 1] {
            let one = json!({"new_edits": false, "docs": [docs["docs"][i].clone()]});
            b.expect("POST", "/db/_bulk_docs", Some(one), 201).await;
        }
        let tree_a = a
            .expect("GET", "/db/d?open_revs=all&revs=true", None, 200)
            .await;
        let tree_b = b
            .expect("GET", "/db/d?open_revs=all&revs=true", None, 200)
            .await;
        assert_eq!(live_leaves(&tree_a), live_leaves(&tree_b), "{policy}");
        assert_eq!(live_leaves(&tree_a).len(), 1, "{policy}");
        // Exchanging what each wrote adds nothing new to the other: the same revisions exist.
        let mut all = Vec::new();
        for entry in tree_a.as_array().unwrap() {
            let mut doc = entry["ok"].clone();
            doc["_id"] = json!("d");
            all.push(doc);
        }
        let seq = b.expect("GET", "/db", None, 200).await["update_seq"].clone();
        b.expect(
            "POST",
            "/db/_bulk_docs",
            Some(json!({"new_edits": false, "docs": all})),
            201,
        )
        .await;
        assert_eq!(
            b.expect("GET", "/db", None, 200).await["update_seq"],
            seq,
            "{policy}"
        );
    }
}

#[tokio::test]
async fn retention_trims_history_on_compact_and_keeps_the_document() {
    let s = TestServer::new();
    s.expect("PUT", "/db", None, 201).await;
    let retention = json!({"retention": {"max_events_per_doc": 2}});
    s.expect("PUT", "/db/_outpost", Some(retention), 200).await;
    assert_eq!(
        s.expect("GET", "/db/_outpost", None, 200).await["retention"]["max_events_per_doc"],
        2
    );
    assert_error(
        &s.expect(
            "PUT",
            "/db/_outpost",
            Some(json!({"retention": {"max_events_per_doc": 0}})),
            400,
        )
        .await,
        "bad_request",
    );
    let mut revs = vec![s.expect("PUT", "/db/d", Some(json!({"n": 0})), 201).await["rev"].clone()];
    for n in 1..5 {
        let rev = s
            .expect(
                "PUT",
                "/db/d",
                Some(json!({"_rev": revs.last().unwrap(), "n": n})),
                201,
            )
            .await["rev"]
            .clone();
        revs.push(rev);
    }
    assert_eq!(
        s.expect("GET", "/db/_events?doc_id=d", None, 200).await["results"]
            .as_array()
            .unwrap()
            .len(),
        5
    );
    compact(&s, "db").await;
    let history = s.expect("GET", "/db/_events?doc_id=d", None, 200).await;
    let kept: Vec<&Value> = history["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["rev"])
        .collect();
    assert_eq!(kept, [&revs[3], &revs[4]]);
    // Superseded bodies whose history went are gone, as after a CouchDB compaction; the
    // document itself is untouched.
    s.expect(
        "GET",
        &format!("/db/d?rev={}", revs[0].as_str().unwrap()),
        None,
        404,
    )
    .await;
    assert_eq!(s.expect("GET", "/db/d", None, 200).await["n"], 4);
    assert_eq!(
        s.expect("GET", "/db/d?revs=true", None, 200).await["_revisions"]["ids"]
            .as_array()
            .unwrap()
            .len(),
        5
    );
}

/// Every leaf of `d` on database `db` (bodies and `_revisions`), sorted, and the winner.
async fn doc_state(s: &TestServer, db: &str) -> Value {
    let leaves = s
        .expect(
            "GET",
            &format!("/{db}/d?open_revs=all&revs=true"),
            None,
            200,
        )
        .await;
    let mut leaves: Vec<Value> = leaves
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["ok"].clone())
        .collect();
    leaves.sort_by_key(|l| l["_rev"].as_str().unwrap_or_default().to_owned());
    let (status, winner) = s
        .call("GET", &format!("/{db}/d?conflicts=true"), None)
        .await;
    json!({"leaves": leaves, "winner": if status == 200 { winner } else { Value::Null }})
}

async fn replicate_local(s: &TestServer, from: &str, to: &str) {
    let result = s
        .expect(
            "POST",
            "/_replicate",
            Some(json!({"source": from, "target": to})),
            200,
        )
        .await;
    assert_eq!(result["doc_write_failures"], 0, "{result}");
}

/// The sum of the samples of `name` whose labels include `label`.
async fn counter(s: &TestServer, name: &str, label: &str) -> f64 {
    let (_, _, body) = s.raw("GET", "/_outpost/v1/metrics", &[], None).await;
    String::from_utf8(body)
        .unwrap()
        .lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// Replicas (databases of one server) with the given settings receive two branches of `d`,
/// which `lww` on `a` and `lww` on `b` judge the other way round: every replica both of them
/// (`concurrent`), or the first replica both and the others only the one their own settings
/// prefer. Then they replicate, first in the order given, then every link until nothing
/// moves. Answers the final state of each replica.
async fn exchange(
    s: &TestServer,
    settings: &[Value],
    concurrent: bool,
    order: &[(usize, usize)],
) -> Vec<Value> {
    let docs = branches(
        json!({"x": 1, "a": 2, "b": 1}),
        json!({"y": 2, "a": 1, "b": 2}),
    );
    let names: Vec<String> = (0..settings.len()).map(|i| format!("r{i}")).collect();
    for (i, (name, policy)) in names.iter().zip(settings).enumerate() {
        s.expect("PUT", &format!("/{name}"), None, 201).await;
        s.expect(
            "PUT",
            &format!("/{name}/_outpost"),
            Some(policy.clone()),
            200,
        )
        .await;
        let mine = if concurrent || i == 0 {
            docs.clone()
        } else {
            // One branch only, the one its settings prefer: no conflict of its own yet.
            let one = match policy["lww_field"].as_str() {
                Some("a") => docs["docs"][1].clone(),
                _ => docs["docs"][2].clone(),
            };
            json!({"new_edits": false, "docs": [docs["docs"][0].clone(), one]})
        };
        s.expect("POST", &format!("/{name}/_bulk_docs"), Some(mine), 201)
            .await;
    }
    for &(a, b) in order {
        replicate_local(s, &names[a], &names[b]).await;
    }
    let mut last = Vec::new();
    for round in 0.. {
        assert!(round < 6, "no quiescence under {settings:?}");
        for a in &names {
            for b in &names {
                if a != b {
                    replicate_local(s, a, b).await;
                }
            }
        }
        let mut states = Vec::new();
        for name in &names {
            states.push(doc_state(s, name).await);
        }
        if states == last {
            break;
        }
        last = states;
    }
    last
}

#[tokio::test]
async fn replicas_with_different_settings_never_delete_and_leave_the_conflict_visible() {
    // Issue 17, defect 10: replicas with different `lww_field`s (or `merge` beside `lww`) each
    // tombstoned the other's branch, and the document ended deleted on both.
    let lww = |f: &str| json!({"conflict_policy": "lww", "lww_field": f});
    let merge = |f: &str| json!({"conflict_policy": "merge", "lww_field": f});
    let cases = [
        vec![lww("a"), lww("b")],
        vec![merge("a"), lww("b")],
        vec![lww("b"), merge("a")],
        vec![lww("a"), lww("b"), lww("a")],
        vec![lww("a"), merge("b"), lww("b")],
    ];
    for settings in cases {
        for concurrent in [true, false] {
            for order in [vec![(0, 1), (1, 0)], vec![(1, 0), (0, 1)]] {
                let s = TestServer::new();
                let before = counter(
                    &s,
                    "outpost_conflicts_policy_mismatch_total",
                    "verdict=\"reinstated\"",
                )
                .await;
                let states = exchange(&s, &settings, concurrent, &order).await;
                let case = format!("{settings:?}, concurrent {concurrent}, order {order:?}");
                for state in &states[1..] {
                    assert_eq!(state, &states[0], "{case}: replicas differ");
                }
                let winner = &states[0]["winner"];
                assert!(
                    !winner.is_null(),
                    "{case}: the document ended deleted: {}",
                    states[0]
                );
                assert!(
                    winner["_conflicts"]
                        .as_array()
                        .is_some_and(|c| !c.is_empty()),
                    "{case}: the conflict is not visible: {winner}"
                );
                for i in 0..settings.len() {
                    let listed = s
                        .expect("GET", &format!("/r{i}/_conflicts"), None, 200)
                        .await;
                    assert_eq!(listed["rows"][0]["id"], "d", "{case}: {listed}");
                    assert_eq!(
                        listed["rows"][0]["reason"], "policy_mismatch",
                        "{case}: {listed}"
                    );
                }
                // The replica that brought a branch back says so in its log: which branch,
                // and the settings of the resolution it undid.
                let mut reinstated = Vec::new();
                for i in 0..settings.len() {
                    let events = s
                        .expect("GET", &format!("/r{i}/_events?doc_id=d"), None, 200)
                        .await;
                    reinstated.extend(
                        events["results"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .filter(|e| e["type"] == "reinstated")
                            .cloned(),
                    );
                }
                assert!(!reinstated.is_empty(), "{case}");
                for e in &reinstated {
                    assert!(e["reinstates"].is_string(), "{case}: {e}");
                    assert!(e["resolution"]["policy"].is_string(), "{case}: {e}");
                    assert_eq!(e["origin"], "resolver", "{case}: {e}");
                }
                let events = json!(reinstated);
                let after = counter(
                    &s,
                    "outpost_conflicts_policy_mismatch_total",
                    "verdict=\"reinstated\"",
                )
                .await;
                assert!(after > before, "{case}: no mismatch counted; {events}");
            }
        }
    }
}

#[tokio::test]
async fn replicas_with_equal_settings_still_converge_on_one_winner() {
    let lww = json!({"conflict_policy": "lww", "lww_field": "a"});
    let merge = json!({"conflict_policy": "merge", "lww_field": "b"});
    for settings in [
        vec![lww.clone(), lww.clone(), lww],
        vec![merge.clone(), merge],
    ] {
        for concurrent in [true, false] {
            let s = TestServer::new();
            let states = exchange(&s, &settings, concurrent, &[(1, 0), (0, 1)]).await;
            for state in &states[1..] {
                assert_eq!(state, &states[0], "{settings:?}");
            }
            let winner = &states[0]["winner"];
            assert!(!winner.is_null(), "{settings:?}");
            assert!(winner.get("_conflicts").is_none(), "{settings:?}: {winner}");
            let events = s.expect("GET", "/r0/_events?doc_id=d", None, 200).await;
            assert!(
                events["results"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|e| e["type"] != "reinstated"),
                "{settings:?}: {events}"
            );
        }
    }
}
