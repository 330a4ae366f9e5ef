//! Header rules for forwarding: hop-by-hop headers dropped, `X-Forwarded-*` added, and the
//! `Idempotency-Key` every forwarded write carries.

use std::net::IpAddr;

use http::header::{CONNECTION, FORWARDED, HOST};
use http::{HeaderMap, HeaderName, HeaderValue, Method};

/// The header that lets the backend apply a retried write only once.
pub static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// The forwarding headers a client may send, believed only from a trusted proxy.
static CLIENT_FORWARDING: [&HeaderName; 5] = [
    &X_FORWARDED_FOR,
    &X_FORWARDED_PROTO,
    &X_FORWARDED_HOST,
    &FORWARDED,
    &X_REAL_IP,
];

/// Headers that describe one connection, not the message (RFC 9110 section 7.6.1).
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Whether requests with this method are queued while the upstream is down.
pub fn is_write(method: &Method) -> bool {
    matches!(
        *method,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    )
}

/// Removes hop-by-hop headers, including any the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none of them: one pass over the names present finds that out, where a
    // removal per hop-by-hop name would hash each of the nine.
    if !headers
        .keys()
        .any(|name| HOP_BY_HOP.contains(&name.as_str()))
    {
        return;
    }
    let listed: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::try_from(name.trim()).ok())
        .collect();
    for name in listed {
        // The key is end to end by design: a client (or anything on the way) naming it in
        // `Connection` must not make the upstream see a write without it.
        if name != IDEMPOTENCY_KEY {
            headers.remove(name);
        }
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// Prepares a client's request headers for the upstream: hop-by-hop removed, `Host` replaced
/// by the upstream's (set by the client library), and the forwarding headers written by the
/// gateway: `X-Forwarded-For`, `X-Forwarded-Proto`, `X-Forwarded-Host` and `Forwarded`
/// (RFC 7239). What a client says in these headers is dropped, since anyone can write them,
/// unless the client is a `trusted` proxy in front of the gateway: then its values are kept
/// and the gateway appends its own hop.
pub fn prepare_request_headers(headers: &mut HeaderMap, client: IpAddr, trusted: bool) {
    strip_hop_by_hop(headers);
    let host = headers.remove(HOST);
    if !trusted && headers.keys().any(|name| CLIENT_FORWARDING.contains(&name)) {
        for name in CLIENT_FORWARDING {
            headers.remove(name);
        }
    }
    let client_text = client.to_string();
    // RFC 7239: an IPv6 address is quoted and bracketed; the host is always sent quoted.
    let host_text = host.as_ref().and_then(|h| h.to_str().ok());
    let mut hop =
        String::with_capacity(client_text.len() + host_text.map_or(0, |h| 2 * h.len() + 8) + 24);
    match client {
        IpAddr::V4(_) => {
            hop.push_str("for=");
            hop.push_str(&client_text);
        }
        IpAddr::V6(_) => {
            hop.push_str("for=\"[");
            hop.push_str(&client_text);
            hop.push_str("]\"");
        }
    }
    if let Some(host) = host_text {
        hop.push_str(";host=\"");
        for c in host.chars() {
            if matches!(c, '"' | '\\') {
                hop.push('\\');
            }
            hop.push(c);
        }
        hop.push('"');
    }
    hop.push_str(";proto=http");
    let xff = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prior) => format!("{prior}, {client_text}"),
        None => client_text,
    };
    if let Ok(value) = HeaderValue::try_from(xff) {
        headers.insert(X_FORWARDED_FOR.clone(), value);
    }
    // From an untrusted client these were all just removed: no lookup needed.
    if !trusted || !headers.contains_key(&X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
    }
    if let Some(host) = host
        && (!trusted || !headers.contains_key(&X_FORWARDED_HOST))
    {
        headers.insert(X_FORWARDED_HOST.clone(), host);
    }
    let forwarded = match headers.get(&FORWARDED).and_then(|v| v.to_str().ok()) {
        Some(prior) => format!("{prior}, {hop}"),
        None => hop,
    };
    if let Ok(value) = HeaderValue::try_from(forwarded) {
        headers.insert(FORWARDED.clone(), value);
    }
}

/// Headers that say who is asking. Idempotency keys are scoped by them (two users choosing the
/// same key never meet), and so is the stale-read cache.
pub const CREDENTIAL_HEADERS: [&str; 5] = [
    "authorization",
    "cookie",
    "x-api-key",
    "x-auth-token",
    "x-amz-security-token",
];

/// The request's credentials in one canonical byte string (each header name and value
/// length-prefixed), to be hashed, never stored or shown.
pub fn credentials(headers: &HeaderMap) -> Vec<u8> {
    let mut out = Vec::new();
    for name in CREDENTIAL_HEADERS {
        for value in headers.get_all(name) {
            for part in [name.as_bytes(), value.as_bytes()] {
                out.extend_from_slice(&(part.len() as u64).to_be_bytes());
                out.extend_from_slice(part);
            }
        }
    }
    out
}

/// Returns the request's `Idempotency-Key`, adding a new one when the client sent none, and
/// whether the client chose it (only then can a repeat of the same request carry it).
pub fn ensure_idempotency_key(headers: &mut HeaderMap) -> (String, bool) {
    if let Some(key) = headers
        .get(&IDEMPOTENCY_KEY)
        .and_then(|v| v.to_str().ok())
        .filter(|k| !k.is_empty())
    {
        return (key.to_owned(), true);
    }
    let key = uuid::Uuid::new_v4().to_string();
    headers.insert(
        IDEMPOTENCY_KEY.clone(),
        HeaderValue::try_from(key.as_str()).expect("a uuid is a valid header value"),
    );
    (key, false)
}

/// Headers as stored in a queue record.
pub fn to_pairs(headers: &HeaderMap) -> Vec<(String, Vec<u8>)> {
    headers
        .iter()
        .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
        .collect()
}

/// Headers from a queue record; pairs that are no longer valid are skipped.
pub fn from_pairs(pairs: &[(String, Vec<u8>)]) -> HeaderMap {
    let mut headers = HeaderMap::with_capacity(pairs.len());
    for (name, value) in pairs {
        if let (Ok(n), Ok(v)) = (
            HeaderName::try_from(name.as_str()),
            HeaderValue::from_bytes(value),
        ) {
            headers.append(n, v);
        }
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_forwarded_headers() {
        let mut h = HeaderMap::new();
        h.insert("connection", "keep-alive, x-secret-hop".parse().unwrap());
        h.insert("x-secret-hop", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("transfer-encoding", "chunked".parse().unwrap());
        h.insert("host", "public.example".parse().unwrap());
        h.insert("x-forwarded-for", "10.0.0.1".parse().unwrap());
        h.insert("x-custom", "kept".parse().unwrap());
        let mut trusted = h.clone();
        prepare_request_headers(&mut h, "127.0.0.1".parse().unwrap(), false);
        assert!(h.get("connection").is_none());
        assert!(h.get("x-secret-hop").is_none());
        assert!(h.get("keep-alive").is_none());
        assert!(h.get("transfer-encoding").is_none());
        assert!(h.get("host").is_none());
        // From an untrusted client, its own forwarding headers are dropped.
        assert_eq!(h["x-forwarded-for"], "127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "public.example");
        assert_eq!(
            h["forwarded"],
            "for=127.0.0.1;host=\"public.example\";proto=http"
        );
        assert_eq!(h["x-custom"], "kept");
        // From a trusted proxy, they are kept and the gateway's hop appended.
        trusted.insert("forwarded", "for=10.0.0.1".parse().unwrap());
        prepare_request_headers(&mut trusted, "::1".parse().unwrap(), true);
        assert_eq!(trusted["x-forwarded-for"], "10.0.0.1, ::1");
        assert_eq!(
            trusted["forwarded"],
            "for=10.0.0.1, for=\"[::1]\";host=\"public.example\";proto=http"
        );
    }

    #[test]
    fn untouched_without_hop_by_hop_headers_and_quoted_host() {
        let mut h = HeaderMap::new();
        h.insert("x-custom", "kept".parse().unwrap());
        h.insert("accept", "*/*".parse().unwrap());
        let before = h.clone();
        strip_hop_by_hop(&mut h);
        assert_eq!(h, before);
        h.insert("host", "we\\ird\"host".parse().unwrap());
        prepare_request_headers(&mut h, "::1".parse().unwrap(), false);
        assert_eq!(
            h["forwarded"],
            "for=\"[::1]\";host=\"we\\\\ird\\\"host\";proto=http"
        );
        assert_eq!(h["x-forwarded-host"], "we\\ird\"host");
        assert_eq!(h["x-custom"], "kept");
    }

    /// Issue 15, defect 12: `Connection: idempotency-key` stripped the client's key, so a
    /// new one was generated and retries of the client's own request were not recognised.
    #[test]
    fn connection_cannot_strip_the_idempotency_key() {
        let mut h = HeaderMap::new();
        h.insert("connection", "idempotency-key".parse().unwrap());
        h.insert("idempotency-key", "client-key".parse().unwrap());
        prepare_request_headers(&mut h, "127.0.0.1".parse().unwrap(), false);
        assert_eq!(
            ensure_idempotency_key(&mut h),
            ("client-key".to_owned(), true)
        );
    }

    #[test]
    fn idempotency_key_is_kept_or_made() {
        let mut h = HeaderMap::new();
        h.insert("idempotency-key", "abc".parse().unwrap());
        assert_eq!(ensure_idempotency_key(&mut h), ("abc".to_owned(), true));
        let mut h = HeaderMap::new();
        let (made, chosen) = ensure_idempotency_key(&mut h);
        assert!(!chosen);
        assert_eq!(h["idempotency-key"], made.as_str());
        assert_eq!(made.len(), 36);
    }
}
