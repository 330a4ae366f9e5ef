//! CouchDB's `AuthSession` cookie: `base64url(NAME ":" HEX_TIME ":" MAC)`, where MAC is
//! HMAC-SHA256 keyed by the server's cookie secret followed by the user's password salt, over
//! `NAME ":" HEX_TIME`. Keying by the salt means a changed password ends every session of that
//! user. A cookie is valid for `timeout` seconds from its time, and a request made after a
//! tenth of that has passed gets a fresh cookie (CouchDB's sliding expiry).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Why a cookie is not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CookieError {
    /// Not a cookie this server could have made.
    #[error("malformed AuthSession cookie")]
    Malformed,
    /// Made with another secret, for another user, or changed.
    #[error("invalid AuthSession cookie")]
    BadSignature,
    /// Older than the session timeout.
    #[error("session expired")]
    Expired,
}

/// A cookie taken apart, before its signature is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionCookie {
    pub name: String,
    /// Seconds since the Unix epoch when it was made.
    pub issued: u64,
    /// The time as written in the cookie: the MAC covers these bytes, so another spelling of
    /// the same number (`3e8` for `3E8`) is a different, unsigned cookie.
    time: String,
    mac: Vec<u8>,
}

/// Makes and checks session cookies with one secret.
#[derive(Clone)]
pub struct CookieSigner {
    secret: Vec<u8>,
    /// How long a cookie stays valid, in seconds.
    pub timeout: u64,
}

impl std::fmt::Debug for CookieSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CookieSigner")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// What a valid cookie means for the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fresh {
    /// Still young: no new cookie.
    Keep,
    /// More than a tenth of its life is gone: send a new one.
    Refresh,
}

impl SessionCookie {
    /// Reads a cookie value (what follows `AuthSession=`).
    pub fn parse(value: &str) -> Result<SessionCookie, CookieError> {
        let raw = URL_SAFE_NO_PAD
            .decode(value.trim_end_matches('='))
            .map_err(|_| CookieError::Malformed)?;
        // The name has no `:` (the `_users` rules forbid it) and the time is hex, so the first
        // two colons split it; the MAC is raw bytes and may contain any.
        let mut parts = raw.splitn(3, |b| *b == b':');
        let (Some(name), Some(time), Some(mac)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(CookieError::Malformed);
        };
        let name = std::str::from_utf8(name).map_err(|_| CookieError::Malformed)?;
        let time = std::str::from_utf8(time).map_err(|_| CookieError::Malformed)?;
        if name.is_empty() || time.is_empty() || time.len() > 16 {
            return Err(CookieError::Malformed);
        }
        let issued = u64::from_str_radix(time, 16).map_err(|_| CookieError::Malformed)?;
        Ok(SessionCookie {
            name: name.to_owned(),
            issued,
            time: time.to_owned(),
            mac: mac.to_vec(),
        })
    }
}

impl CookieSigner {
    pub fn new(secret: Vec<u8>, timeout: u64) -> CookieSigner {
        CookieSigner { secret, timeout }
    }

    fn mac(&self, user_salt: &str) -> Hmac<Sha256> {
        let mut key = self.secret.clone();
        key.extend_from_slice(user_salt.as_bytes());
        Hmac::<Sha256>::new_from_slice(&key).expect("HMAC takes any key")
    }

    /// A cookie value for `name`, made at `now` (seconds since the epoch).
    pub fn issue(&self, name: &str, user_salt: &str, now: u64) -> String {
        let data = format!("{name}:{now:X}");
        let mut mac = self.mac(user_salt);
        mac.update(data.as_bytes());
        let mut raw = data.into_bytes();
        raw.push(b':');
        raw.extend_from_slice(&mac.finalize().into_bytes());
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// Checks a parsed cookie against the user's current salt at `now`.
    pub fn check(
        &self,
        cookie: &SessionCookie,
        user_salt: &str,
        now: u64,
    ) -> Result<Fresh, CookieError> {
        let mut mac = self.mac(user_salt);
        mac.update(format!("{}:{}", cookie.name, cookie.time).as_bytes());
        mac.verify_slice(&cookie.mac)
            .map_err(|_| CookieError::BadSignature)?;
        let expires = cookie.issued.saturating_add(self.timeout);
        if now >= expires {
            return Err(CookieError::Expired);
        }
        // CouchDB refreshes once less than 90% of the lifetime is left.
        let left = expires - now;
        if left.saturating_mul(10) < self.timeout.saturating_mul(9) {
            Ok(Fresh::Refresh)
        } else {
            Ok(Fresh::Keep)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn signer() -> CookieSigner {
        CookieSigner::new(b"server secret".to_vec(), 600)
    }

    #[test]
    fn couchdb_shape() {
        let value = signer().issue("bob", "salt", 0x5F5E100);
        let raw = URL_SAFE_NO_PAD.decode(&value).unwrap();
        assert!(raw.starts_with(b"bob:5F5E100:"));
        assert_eq!(raw.len(), "bob:5F5E100:".len() + 32);
    }

    #[test]
    fn another_spelling_of_the_time_is_not_signed() {
        let s = signer();
        let value = s.issue("bob", "salt", 1000);
        let raw = URL_SAFE_NO_PAD.decode(&value).unwrap();
        for spelled in [&b"bob:3e8:"[..], &b"bob:03E8:"[..]] {
            let mut forged = spelled.to_vec();
            forged.extend_from_slice(&raw[b"bob:3E8:".len()..]);
            let c = SessionCookie::parse(&URL_SAFE_NO_PAD.encode(forged)).unwrap();
            assert_eq!(c.issued, 1000);
            assert_eq!(s.check(&c, "salt", 1000), Err(CookieError::BadSignature));
        }
    }

    #[test]
    fn garbage_is_malformed() {
        for bad in ["", "!!!", "Ym9i", "Ym9iOg", "OnpaOmFh"] {
            assert_eq!(
                SessionCookie::parse(bad),
                Err(CookieError::Malformed),
                "{bad}"
            );
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn valid_until_timeout_then_expired(name in "[a-z0-9_.@-]{1,16}", issued in 0u64..1u64 << 40, age in 0u64..2000) {
            let s = signer();
            let c = SessionCookie::parse(&s.issue(&name, "salt", issued)).unwrap();
            prop_assert_eq!(&c.name, &name);
            prop_assert_eq!(c.issued, issued);
            let got = s.check(&c, "salt", issued + age);
            if age >= 600 {
                prop_assert_eq!(got, Err(CookieError::Expired));
            } else if age > 60 {
                prop_assert_eq!(got, Ok(Fresh::Refresh));
            } else {
                prop_assert_eq!(got, Ok(Fresh::Keep));
            }
        }

        #[test]
        fn other_salt_secret_or_name_is_refused(name in "[a-z]{1,8}", other in "[a-z]{1,8}", now in 0u64..1u64 << 40) {
            let s = signer();
            let value = s.issue(&name, "salt", now);
            let c = SessionCookie::parse(&value).unwrap();
            prop_assert_eq!(s.check(&c, "salt2", now), Err(CookieError::BadSignature));
            let other_server = CookieSigner::new(b"another".to_vec(), 600);
            prop_assert_eq!(other_server.check(&c, "salt", now), Err(CookieError::BadSignature));
            if other != name {
                let forged = SessionCookie { name: other, ..c.clone() };
                prop_assert_eq!(s.check(&forged, "salt", now), Err(CookieError::BadSignature));
            }
            // Moving the time forward (to extend a session) breaks the signature.
            let later = SessionCookie { issued: c.issued + 1, time: format!("{:X}", c.issued + 1), ..c };
            prop_assert_eq!(s.check(&later, "salt", now), Err(CookieError::BadSignature));
        }

        #[test]
        fn flipped_bytes_never_pass(byte in 0usize..64, bit in 0u8..8) {
            let s = signer();
            let value = s.issue("bob", "salt", 1000);
            let mut raw = URL_SAFE_NO_PAD.decode(&value).unwrap();
            let i = byte % raw.len();
            raw[i] ^= 1 << bit;
            let tampered = URL_SAFE_NO_PAD.encode(raw);
            if let Ok(c) = SessionCookie::parse(&tampered) {
                prop_assert!(s.check(&c, "salt", 1000).is_err());
            }
        }
    }
}
