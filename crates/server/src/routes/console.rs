//! `/_outpost/ui/`: the admin console, a handful of static files compiled into the binary
//! (`crates/server/console/`, plain ES modules and CSS with no build step), so the console
//! needs no other process and no network at run time. The files are public: every piece of
//! data the console shows comes from the API, under the signed-in user's own rights.

use axum::body::Body;
use axum::response::Response;
use http::{HeaderValue, Method, header};

use super::not_allowed;
use crate::ApiError;
use crate::request::Req;

/// One embedded file: its path under `/_outpost/ui/`, its media type and its bytes.
struct Asset {
    path: &'static str,
    media_type: &'static str,
    body: &'static str,
}

macro_rules! assets {
    ($($path:literal => $media:literal),* $(,)?) => {
        &[$(Asset {
            path: $path,
            media_type: $media,
            body: include_str!(concat!("../../console/", $path)),
        }),*]
    };
}

/// Every file of the console; a file missing here is a 404, which the test that loads each
/// module's imports finds.
const ASSETS: &[Asset] = assets![
    "index.html" => "text/html; charset=utf-8",
    "style.css" => "text/css; charset=utf-8",
    "app.js" => "text/javascript; charset=utf-8",
    "api.js" => "text/javascript; charset=utf-8",
    "ui.js" => "text/javascript; charset=utf-8",
    "diff.js" => "text/javascript; charset=utf-8",
    "pages/login.js" => "text/javascript; charset=utf-8",
    "pages/databases.js" => "text/javascript; charset=utf-8",
    "pages/documents.js" => "text/javascript; charset=utf-8",
    "pages/document.js" => "text/javascript; charset=utf-8",
    "pages/settings.js" => "text/javascript; charset=utf-8",
    "pages/conflicts.js" => "text/javascript; charset=utf-8",
    "pages/replication.js" => "text/javascript; charset=utf-8",
    "pages/metrics.js" => "text/javascript; charset=utf-8",
    "pages/gateway.js" => "text/javascript; charset=utf-8",
];

/// The page may load only its own files and talk only to this server; nothing may frame it.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; \
                   frame-ancestors 'none'";

/// `GET /_outpost/ui/{path}`; the console itself at `/_outpost/ui/`.
pub fn serve(rest: &[&str], req: &Req) -> Result<Response, ApiError> {
    if req.method != Method::GET {
        return Err(not_allowed("Only GET, HEAD allowed"));
    }
    let path = if rest.is_empty() {
        "index.html".to_owned()
    } else {
        rest.join("/")
    };
    let asset = ASSETS
        .iter()
        .find(|a| a.path == path)
        .ok_or_else(|| ApiError::NotFound(format!("no such console file {path}")))?;
    let mut response = Response::new(Body::from(asset.body));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.media_type),
    );
    // The files change only with the binary; revalidating each time keeps an upgraded
    // server from running with an old module next to a new one.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    Ok(response)
}
