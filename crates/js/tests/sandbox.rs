//! The sandbox against real QuickJS engines: CouchDB's environment, limits, errors.

use std::time::Duration;

use outpost_js::{JsError, Limits, ReduceOutcome, Sandbox, Verdict};
use serde_json::{Value, json};

fn sandbox(timeout: Duration) -> Sandbox {
    Sandbox::new(Limits {
        timeout,
        memory_bytes: 32 * 1024 * 1024,
        workers: 2,
    })
}

fn docs(values: &[Value]) -> Vec<String> {
    values.iter().map(Value::to_string).collect()
}

#[tokio::test]
async fn map_emits_and_a_throwing_function_fails_only_its_document() {
    let sb = sandbox(Duration::from_secs(30));
    let sources = vec![
        "function (doc) { emit(doc.n, doc.n * 2); emit([doc._id], null) }".to_owned(),
        "function (doc) { if (doc.n === 2) throw new Error('no twos'); emit(doc.n); };".to_owned(),
    ];
    let out = sb
        .map(
            "s1",
            &sources,
            None,
            &docs(&[json!({"_id": "a", "n": 1}), json!({"_id": "b", "n": 2})]),
        )
        .await
        .unwrap();
    assert_eq!(out.len(), 2);
    assert_eq!(
        out[0][0].as_ref().unwrap(),
        &vec![(json!(1), json!(2)), (json!(["a"]), Value::Null)]
    );
    assert_eq!(out[0][1].as_ref().unwrap(), &vec![(json!(1), Value::Null)]);
    assert_eq!(out[1][0].as_ref().unwrap()[0], (json!(2), json!(4)));
    assert!(out[1][1].as_ref().unwrap_err().contains("no twos"));
}

#[tokio::test]
async fn a_function_that_does_not_compile_fails_every_document() {
    let sb = sandbox(Duration::from_secs(30));
    let out = sb
        .map(
            "s2",
            &["function (doc) { emit(".to_owned()],
            None,
            &docs(&[json!({})]),
        )
        .await
        .unwrap();
    assert!(
        out[0][0]
            .as_ref()
            .unwrap_err()
            .contains("compilation_error")
    );
}

#[tokio::test]
async fn a_runaway_function_is_stopped_and_the_engine_recovers() {
    let sb = sandbox(Duration::from_millis(300));
    let sources =
        vec!["function (doc) { if (doc.loop) { while (true) {} } emit(doc._id, 1) }".to_owned()];
    let out = sb
        .map(
            "s3",
            &sources,
            None,
            &docs(&[
                json!({"_id": "a"}),
                json!({"_id": "b", "loop": true}),
                json!({"_id": "c"}),
            ]),
        )
        .await
        .unwrap();
    assert_eq!(out[0][0].as_ref().unwrap(), &vec![(json!("a"), json!(1))]);
    assert!(out[1][0].as_ref().unwrap_err().contains("timeout"));
    assert_eq!(out[2][0].as_ref().unwrap(), &vec![(json!("c"), json!(1))]);
    // A validation that never returns is stopped too.
    let verdict = sb
        .validate(
            "v-loop",
            "function () { for (;;) {} }",
            &json!({}),
            &json!({}),
            None,
            &json!({}),
            &json!({}),
        )
        .await;
    assert!(matches!(verdict, Err(JsError::Timeout(_))), "{verdict:?}");
}

#[tokio::test]
async fn memory_is_limited() {
    let sb = sandbox(Duration::from_secs(60));
    let sources = vec![
        "function (doc) { var a = []; for (;;) { a.push(new Array(100000).fill(1)); } }".to_owned(),
    ];
    let out = sb.map("s4", &sources, None, &docs(&[json!({})])).await;
    match out {
        Ok(rows) => assert!(rows[0][0].is_err()),
        Err(e) => assert!(matches!(e, JsError::Engine(_)), "{e:?}"),
    }
    // The pool still answers.
    let ok = sb
        .map(
            "s5",
            &["function (doc) { emit(1, 2) }".to_owned()],
            None,
            &docs(&[json!({})]),
        )
        .await
        .unwrap();
    assert_eq!(ok[0][0].as_ref().unwrap(), &vec![(json!(1), json!(2))]);
}

#[tokio::test]
async fn no_file_network_or_process_access() {
    let sb = sandbox(Duration::from_secs(30));
    let source = "function (doc) { emit([typeof require, typeof fetch, typeof std, typeof os, \
                  typeof process, typeof XMLHttpRequest, typeof sum, typeof isArray, typeof toJSON, \
                  typeof log], null) }";
    let out = sb
        .map("s6", &[source.to_owned()], None, &docs(&[json!({})]))
        .await
        .unwrap();
    assert_eq!(
        out[0][0].as_ref().unwrap()[0].0,
        json!([
            "function",
            "undefined",
            "undefined",
            "undefined",
            "undefined",
            "undefined",
            "function",
            "function",
            "function",
            "function"
        ])
    );
}

#[tokio::test]
async fn require_loads_views_lib_modules() {
    let sb = sandbox(Duration::from_secs(30));
    let lib = json!({
        "util": "exports.double = function (x) { return require('./inner').times(x, 2); };",
        "inner": "exports.times = function (a, b) { return a * b; };",
        "sub": { "deep": "exports.nine = require('../inner').times(3, 3);" },
    });
    let source = "function (doc) { emit(require('views/lib/util').double(doc.n), null) }";
    let out = sb
        .map(
            "s7",
            &[source.to_owned()],
            Some(&lib),
            &docs(&[json!({"n": 21})]),
        )
        .await
        .unwrap();
    assert_eq!(out[0][0].as_ref().unwrap()[0].0, json!(42));
    let source = "function (doc) { emit(require('views/lib/sub/deep').nine, null) }";
    let out = sb
        .map("s8", &[source.to_owned()], Some(&lib), &docs(&[json!({})]))
        .await
        .unwrap();
    assert_eq!(out[0][0].as_ref().unwrap()[0].0, json!(9));
}

#[tokio::test]
async fn reduces_builtin_and_javascript() {
    let sb = sandbox(Duration::from_secs(30));
    let keys = vec![json!([1, "a"]), json!([2, "b"])];
    let check = |outcome: ReduceOutcome, expected: Value| {
        assert_eq!(outcome, ReduceOutcome::Value(expected));
    };
    check(
        sb.reduce("r", "_sum", None, &keys, &[json!(1), json!(2)], false)
            .await
            .unwrap(),
        json!(3),
    );
    check(
        sb.reduce(
            "r",
            "_sum",
            None,
            &keys,
            &[json!([1, 2]), json!([3])],
            false,
        )
        .await
        .unwrap(),
        json!([4, 2]),
    );
    check(
        sb.reduce("r", "_count", None, &keys, &[json!(1), json!(2)], false)
            .await
            .unwrap(),
        json!(2),
    );
    check(
        sb.reduce("r", "_count", None, &[], &[json!(3), json!(2)], true)
            .await
            .unwrap(),
        json!(5),
    );
    check(
        sb.reduce("r", "_stats", None, &keys, &[json!(1), json!(3)], false)
            .await
            .unwrap(),
        json!({"sum": 4, "count": 2, "min": 1, "max": 3, "sumsqr": 10}),
    );
    assert!(matches!(
        sb.reduce("r", "_sum", None, &keys, &[json!("x")], false)
            .await
            .unwrap(),
        ReduceOutcome::BuiltinError(_)
    ));
    let source = "function (keys, values, rereduce) { return rereduce ? 'r' + values.join() : keys.length + sum(values); }";
    check(
        sb.reduce("j", source, None, &keys, &[json!(1), json!(2)], false)
            .await
            .unwrap(),
        json!(5),
    );
    check(
        sb.reduce("j", source, None, &[], &[json!(1), json!(2)], true)
            .await
            .unwrap(),
        json!("r1,2"),
    );
}

#[tokio::test]
async fn filters_see_the_request_and_the_design_document() {
    let sb = sandbox(Duration::from_secs(30));
    let ddoc = json!({"_id": "_design/f", "wanted": "x"});
    let source =
        "function (doc, req) { return doc.type === this.wanted || doc.type === req.query.also; }";
    let out = sb
        .filter(
            "f1",
            source,
            &ddoc,
            &docs(&[
                json!({"type": "x"}),
                json!({"type": "y"}),
                json!({"type": "z"}),
            ]),
            &json!({"query": {"also": "z"}}),
        )
        .await
        .unwrap();
    assert_eq!(out, vec![Ok(true), Ok(false), Ok(true)]);
}

#[tokio::test]
async fn validation_verdicts() {
    let sb = sandbox(Duration::from_secs(30));
    let source = "function (newDoc, oldDoc, userCtx, secObj) {
        if (newDoc.forbid) throw({forbidden: 'no way'});
        if (newDoc.auth) throw({unauthorized: 'who are you, ' + userCtx.name});
        if (newDoc.boom) throw new Error('boom');
        if (oldDoc && oldDoc.locked) throw({forbidden: 'locked'});
    }";
    let ctx = json!({"name": "ann", "roles": []});
    let run = |doc: Value, old: Option<Value>| {
        let sb = sb.clone();
        let ctx = ctx.clone();
        async move {
            sb.validate(
                "v",
                source,
                &json!({}),
                &doc,
                old.as_ref(),
                &ctx,
                &json!({}),
            )
            .await
            .unwrap()
        }
    };
    assert_eq!(run(json!({}), None).await, Verdict::Allowed);
    assert_eq!(
        run(json!({"forbid": true}), None).await,
        Verdict::Forbidden(json!("no way"))
    );
    assert_eq!(
        run(json!({"auth": true}), None).await,
        Verdict::Unauthorized(json!("who are you, ann"))
    );
    assert!(
        matches!(run(json!({"boom": true}), None).await, Verdict::Failed(m) if m.contains("boom"))
    );
    assert_eq!(
        run(json!({}), Some(json!({"locked": true}))).await,
        Verdict::Forbidden(json!("locked"))
    );
}
