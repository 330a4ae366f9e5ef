//! The admin console's static files at `/_outpost/ui/`: served from the binary with their media
//! types and a strict content security policy, every module the page imports is there, and
//! the files are public while the data they show is not.

use outpost_auth::Credentials;
use outpost_server::Config;
use outpost_server::auth::AuthSettings;

use crate::support::{TestServer, assert_error};

/// The paths a file loads: `src`/`href` of index.html, `import … from '…'` of a module,
/// resolved against the file's own path.
fn references(path: &str, text: &str) -> Vec<String> {
    let dir = path.rsplit_once('/').map_or("", |(d, _)| d);
    let mut out = Vec::new();
    for quote in ['\'', '"'] {
        for marker in ["from ", "src=", "href="] {
            let pattern = format!("{marker}{quote}");
            for (at, _) in text.match_indices(&pattern) {
                let rest = &text[at + pattern.len()..];
                let Some(end) = rest.find(quote) else {
                    continue;
                };
                let target = &rest[..end];
                if let Some(abs) = target.strip_prefix("/_outpost/ui/") {
                    out.push(abs.to_owned());
                } else if target.starts_with("./") || target.starts_with("../") {
                    let mut parts: Vec<&str> = dir.split('/').filter(|s| !s.is_empty()).collect();
                    for seg in target.split('/') {
                        match seg {
                            "." => {}
                            ".." => {
                                parts.pop();
                            }
                            s => parts.push(s),
                        }
                    }
                    out.push(parts.join("/"));
                }
            }
        }
    }
    out
}

#[tokio::test]
async fn every_file_the_console_loads_is_served() {
    let s = TestServer::new();
    let mut pending = vec!["".to_owned()];
    let mut seen = std::collections::BTreeSet::new();
    while let Some(path) = pending.pop() {
        if !seen.insert(path.clone()) {
            continue;
        }
        let (status, headers, body) = s
            .raw("GET", &format!("/_outpost/ui/{path}"), &[], None)
            .await;
        assert_eq!(status, 200, "/_outpost/ui/{path}");
        let media = headers["content-type"].to_str().unwrap();
        let expected = match path.rsplit_once('.').map(|(_, e)| e) {
            None | Some("html") => "text/html; charset=utf-8",
            Some("js") => "text/javascript; charset=utf-8",
            Some("css") => "text/css; charset=utf-8",
            Some(other) => panic!("unexpected console file type {other}"),
        };
        assert_eq!(media, expected, "{path}");
        assert_eq!(headers["x-content-type-options"], "nosniff");
        let csp = headers["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"));
        let text = String::from_utf8(body).unwrap();
        let path = if path.is_empty() {
            "index.html".to_owned()
        } else {
            path
        };
        pending.extend(references(&path, &text));
    }
    // The shell, its stylesheet, the app and every page module.
    assert!(seen.len() >= 10, "only found {seen:?}");
    assert!(seen.contains("pages/conflicts.js"), "{seen:?}");
}

#[tokio::test]
async fn unknown_files_and_other_methods_are_refused() {
    let s = TestServer::new();
    let (status, body) = s.call("GET", "/_outpost/ui/secret.txt", None).await;
    assert_eq!(status, 404);
    assert_error(&body, "not_found");
    let (status, body) = s.call("GET", "/_outpost/ui/../admins.json", None).await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = s.call("PUT", "/_outpost/ui/app.js", None).await;
    assert_eq!(status, 405);
    assert_error(&body, "method_not_allowed");
}

#[tokio::test]
async fn the_files_are_public_but_the_data_is_not() {
    let s = TestServer::with_config(Config {
        auth: AuthSettings {
            admins: vec![("admin".into(), Credentials::hash("secret", 10))],
            password_iterations: 10,
            ..AuthSettings::default()
        },
        ..Config::default()
    });
    let (status, _, body) = s.raw("GET", "/_outpost/ui/", &[], None).await;
    assert_eq!(status, 200);
    assert!(
        String::from_utf8(body)
            .unwrap()
            .contains("/_outpost/ui/app.js")
    );
    let (status, body) = s.call("GET", "/_dbs_info", None).await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = s.call("GET", "/_outpost/v1/metrics", None).await;
    assert_eq!(status, 401, "{body}");
}

/// `/_outpost/gateway/` is for server admins, and says so plainly when no gateway runs in the
/// process (the console then shows no gateway page).
#[tokio::test]
async fn the_gateway_route_is_for_admins_and_needs_a_gateway() {
    let s = TestServer::with_config(Config {
        auth: AuthSettings {
            admins: vec![("admin".into(), Credentials::hash("secret", 10))],
            password_iterations: 10,
            ..AuthSettings::default()
        },
        ..Config::default()
    });
    let (status, body) = s.call("GET", "/_outpost/gateway/v1/queue", None).await;
    assert_eq!(status, 401, "{body}");
    let basic = format!(
        "Basic {}",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "admin:secret")
    );
    let (status, _, body) = s
        .raw(
            "GET",
            "/_outpost/gateway/v1/queue",
            &[("authorization", &basic)],
            None,
        )
        .await;
    assert_eq!(status, 404);
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_error(&body, "not_found");
    assert_eq!(body["reason"], "no gateway runs in this process");
    let (status, _, body) = s
        .raw(
            "GET",
            "/_outpost/gateway",
            &[("authorization", &basic)],
            None,
        )
        .await;
    assert_eq!(status, 200);
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body, serde_json::json!({"running": false}));
}
