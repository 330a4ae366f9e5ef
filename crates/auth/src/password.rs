//! Passwords as CouchDB 3 stores them: PBKDF2 with HMAC-SHA256 over a random salt, kept as
//! `password_scheme: "pbkdf2"`, `pbkdf2_prf: "sha256"`, `salt`, `iterations` and `derived_key`
//! in a `_users` document, or as `-pbkdf2:sha256-KEY,SALT,ITERATIONS` for a server admin.
//!
//! Checking a password costs the full hash on purpose; [`PasswordCache`] remembers the checks
//! that succeeded so that Basic authentication on every request does not pay it each time.

use std::collections::HashMap;
use std::sync::Mutex;

use hmac::{Hmac, Mac};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// CouchDB 3.5's default iteration count for PBKDF2-SHA256.
pub const DEFAULT_ITERATIONS: u32 = 600_000;

/// The most iterations a stored credential may ask for: more would let one stored document make
/// every login attempt against it burn seconds of CPU.
pub const MAX_ITERATIONS: u32 = 10_000_000;

/// Length of a derived key, in bytes (SHA-256's output, as CouchDB).
const KEY_LEN: usize = 32;

/// Why stored credentials cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PasswordError {
    /// A hashing scheme or PRF other than PBKDF2-SHA256 (CouchDB's older SHA-1 forms).
    #[error("unsupported password scheme {0:?}; only pbkdf2 with sha256 is supported")]
    Unsupported(String),
    /// A field is missing or has the wrong type.
    #[error("malformed credentials: {0}")]
    Malformed(&'static str),
}

/// Stored credentials: everything needed to check a password, nothing that reveals it.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub salt: String,
    pub iterations: u32,
    /// Lowercase hex of the derived key.
    pub derived_key: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The derived key is a secret too: it is what an offline attack starts from.
        f.debug_struct("Credentials")
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

/// PBKDF2-HMAC-SHA256 of `password` over `salt` (taken as its UTF-8 bytes, as CouchDB does).
fn derive(password: &str, salt: &str, iterations: u32) -> [u8; KEY_LEN] {
    let mut out = [0u8; KEY_LEN];
    pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), salt.as_bytes(), iterations, &mut out);
    out
}

impl Credentials {
    /// Hashes `password` with a new random salt.
    pub fn hash(password: &str, iterations: u32) -> Credentials {
        let salt = hex::encode(rand::random::<[u8; 16]>());
        Credentials::with_salt(password, salt, iterations)
    }

    /// Hashes `password` with the given salt.
    pub fn with_salt(password: &str, salt: String, iterations: u32) -> Credentials {
        let derived_key = hex::encode(derive(password, &salt, iterations));
        Credentials {
            salt,
            iterations,
            derived_key,
        }
    }

    /// Whether `password` is the one these credentials were made from. The comparison takes the
    /// same time wherever the keys differ.
    pub fn verify(&self, password: &str) -> bool {
        if self.iterations == 0 || self.iterations > MAX_ITERATIONS {
            return false;
        }
        let Ok(expected) = hex::decode(&self.derived_key) else {
            return false;
        };
        let got = derive(password, &self.salt, self.iterations);
        expected.ct_eq(&got).into()
    }

    /// The credentials of a `_users` document, `None` when it has none (no `derived_key`).
    pub fn from_user_doc(doc: &Map<String, Value>) -> Result<Option<Credentials>, PasswordError> {
        let Some(key) = doc.get("derived_key") else {
            return Ok(None);
        };
        let scheme = doc.get("password_scheme").and_then(Value::as_str);
        if scheme != Some("pbkdf2") {
            return Err(PasswordError::Unsupported(
                scheme.unwrap_or("simple").to_owned(),
            ));
        }
        // CouchDB before 3.4 wrote no `pbkdf2_prf`, meaning SHA-1.
        let prf = doc
            .get("pbkdf2_prf")
            .and_then(Value::as_str)
            .unwrap_or("sha");
        if prf != "sha256" {
            return Err(PasswordError::Unsupported(format!("pbkdf2 with {prf}")));
        }
        let derived_key = key
            .as_str()
            .ok_or(PasswordError::Malformed("derived_key is not a string"))?
            .to_owned();
        let salt = doc
            .get("salt")
            .and_then(Value::as_str)
            .ok_or(PasswordError::Malformed("salt is missing"))?
            .to_owned();
        let iterations = doc
            .get("iterations")
            .and_then(Value::as_u64)
            .and_then(|n| u32::try_from(n).ok())
            .ok_or(PasswordError::Malformed("iterations is not a number"))?;
        Ok(Some(Credentials {
            salt,
            iterations,
            derived_key,
        }))
    }

    /// Writes these credentials into a `_users` document, as CouchDB does after taking out the
    /// clear `password`.
    pub fn write_user_doc(&self, doc: &mut Map<String, Value>) {
        doc.insert("password_scheme".into(), "pbkdf2".into());
        doc.insert("pbkdf2_prf".into(), "sha256".into());
        doc.insert("salt".into(), self.salt.clone().into());
        doc.insert("iterations".into(), self.iterations.into());
        doc.insert("derived_key".into(), self.derived_key.clone().into());
    }

    /// The form CouchDB keeps a server admin's password in: `-pbkdf2:sha256-KEY,SALT,ITERATIONS`.
    pub fn to_admin_string(&self) -> String {
        format!(
            "-pbkdf2:sha256-{},{},{}",
            self.derived_key, self.salt, self.iterations
        )
    }

    /// Reads [`Credentials::to_admin_string`]'s form; `None` when `s` is not a hashed password
    /// at all (a clear one, to be hashed).
    pub fn parse_admin_string(s: &str) -> Option<Result<Credentials, PasswordError>> {
        if let Some(rest) = s.strip_prefix("-pbkdf2:sha256-") {
            let mut parts = rest.split(',');
            let (Some(key), Some(salt), Some(iter), None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return Some(Err(PasswordError::Malformed(
                    "expected -pbkdf2:sha256-KEY,SALT,ITERATIONS",
                )));
            };
            let Ok(iterations) = iter.parse::<u32>() else {
                return Some(Err(PasswordError::Malformed("iterations is not a number")));
            };
            return Some(Ok(Credentials {
                salt: salt.to_owned(),
                iterations,
                derived_key: key.to_owned(),
            }));
        }
        if s.starts_with("-pbkdf2") || s.starts_with("-hashed-") {
            return Some(Err(PasswordError::Unsupported(
                s.split('-').nth(1).unwrap_or("").to_owned(),
            )));
        }
        None
    }
}

/// Remembers successful password checks, so that a client sending Basic credentials on every
/// request pays the PBKDF2 cost once. An entry is keyed by the stored credentials (so a changed
/// password, which changes the salt and key, never matches an old entry) and holds a keyed hash
/// of the password, never the password itself.
pub struct PasswordCache {
    /// Random per process: the cached hashes are useless outside it.
    key: [u8; 32],
    /// Credentials fingerprint → keyed hash of the password that matched them.
    entries: Mutex<HashMap<[u8; 32], [u8; 32]>>,
    capacity: usize,
}

impl std::fmt::Debug for PasswordCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordCache")
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

impl PasswordCache {
    /// A cache of at most `capacity` successful checks; when full it starts over, which costs
    /// one full hash per user and bounds memory.
    pub fn new(capacity: usize) -> PasswordCache {
        PasswordCache {
            key: rand::random(),
            entries: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
        }
    }

    fn fingerprint(creds: &Credentials) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(creds.salt.as_bytes());
        h.update([0]);
        h.update(creds.derived_key.as_bytes());
        h.update([0]);
        h.update(creds.iterations.to_be_bytes());
        h.finalize().into()
    }

    fn keyed(&self, password: &str) -> [u8; 32] {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key");
        mac.update(password.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// [`Credentials::verify`], answered from the cache when this password already matched
    /// these credentials.
    pub fn verify(&self, creds: &Credentials, password: &str) -> bool {
        let fp = Self::fingerprint(creds);
        let keyed = self.keyed(password);
        let cached = self
            .entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&fp)
            .copied();
        if let Some(hit) = cached
            && bool::from(hit.ct_eq(&keyed))
        {
            return true;
        }
        if !creds.verify(password) {
            return false;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= self.capacity {
            entries.clear();
        }
        entries.insert(fp, keyed);
        true
    }

    /// How many checks are remembered.
    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn matches_couchdb_pbkdf2_sha256() {
        // RFC 7914 section 11's PBKDF2-HMAC-SHA256 vector ("passwd", "salt", 1 iteration).
        let c = Credentials::with_salt("passwd", "salt".into(), 1);
        assert_eq!(
            c.derived_key,
            "55ac046e56e3089fec1691c22544b605f94185216dde0465e68b9d57c20dacbc"
        );
        assert!(c.verify("passwd"));
        assert!(!c.verify("passwe"));
    }

    #[test]
    fn user_doc_round_trip() {
        let c = Credentials::hash("secret", 10);
        let mut doc = Map::new();
        c.write_user_doc(&mut doc);
        let back = Credentials::from_user_doc(&doc).unwrap().unwrap();
        assert_eq!(back, c);
        assert!(back.verify("secret"));
        doc.insert("pbkdf2_prf".into(), "sha".into());
        assert!(matches!(
            Credentials::from_user_doc(&doc),
            Err(PasswordError::Unsupported(_))
        ));
        assert_eq!(Credentials::from_user_doc(&Map::new()), Ok(None));
    }

    #[test]
    fn admin_string_round_trip() {
        let c = Credentials::hash("secret", 10);
        let s = c.to_admin_string();
        assert!(!s.contains("secret"));
        let back = Credentials::parse_admin_string(&s).unwrap().unwrap();
        assert!(back.verify("secret"));
        assert!(Credentials::parse_admin_string("plain").is_none());
        assert!(matches!(
            Credentials::parse_admin_string("-pbkdf2-abc,def,10"),
            Some(Err(PasswordError::Unsupported(_)))
        ));
        assert!(
            Credentials::parse_admin_string("-pbkdf2:sha256-abc")
                .unwrap()
                .is_err()
        );
    }

    #[test]
    fn absurd_iterations_are_refused_without_hashing() {
        let mut c = Credentials::hash("x", 1);
        c.iterations = MAX_ITERATIONS + 1;
        assert!(!c.verify("x"));
    }

    #[test]
    fn debug_hides_the_key() {
        let c = Credentials::hash("x", 1);
        assert!(!format!("{c:?}").contains(&c.derived_key));
        assert!(!format!("{c:?}").contains(&c.salt));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn verify_accepts_exactly_the_password(p in ".{0,20}", q in ".{0,20}") {
            let c = Credentials::hash(&p, 2);
            prop_assert!(c.verify(&p));
            prop_assert_eq!(c.verify(&q), p == q);
        }

        #[test]
        fn cache_agrees_with_the_hash(p in "[a-c]{0,3}", tries in proptest::collection::vec("[a-c]{0,3}", 1..8)) {
            let cache = PasswordCache::new(4);
            let c = Credentials::hash(&p, 2);
            for q in tries {
                prop_assert_eq!(cache.verify(&c, &q), p == q);
            }
            // A new password (new salt and key) never matches through the old entry.
            let changed = Credentials::hash(&format!("{p}!"), 2);
            prop_assert!(!cache.verify(&changed, &p));
        }
    }
}
