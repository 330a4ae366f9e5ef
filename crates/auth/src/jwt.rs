//! JWT bearer tokens, as CouchDB's `jwt_authentication_handler` takes them: HS256 with a shared
//! secret, RS256 and ES256 with public keys chosen by the token's `kid`; `sub` is the user name,
//! the roles come from a configurable claim, `exp` and `nbf` are checked when present (against
//! the clock passed in), and further claims may be required. A token whose header names `none`
//! or any other algorithm is refused.

use std::collections::HashMap;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

use crate::UserCtx;

/// The claim CouchDB reads roles from by default: a top-level key with a dot in its name.
pub const DEFAULT_ROLES_CLAIM: &str = "_couchdb.roles";

/// Why a token is refused. The messages say which check failed and nothing of the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// Not three base64url parts with a JSON header and claims.
    #[error("malformed token")]
    Malformed,
    /// An algorithm this server does not accept (`none` included) or has no key for.
    #[error("token algorithm {0} is not accepted")]
    Algorithm(String),
    /// No configured key has the token's `kid`.
    #[error("no key for the token's kid")]
    UnknownKey,
    /// The signature does not match.
    #[error("invalid token signature")]
    BadSignature,
    /// `exp` has passed.
    #[error("token has expired")]
    Expired,
    /// `nbf` is still in the future.
    #[error("token is not valid yet")]
    NotYetValid,
    /// A required claim (or `sub`) is missing, or a claim has the wrong type.
    #[error("token claim {0} is missing or invalid")]
    Claim(String),
}

#[derive(Clone)]
enum PublicKey {
    Rsa(DecodingKey),
    Ec(DecodingKey),
}

/// What tokens this server accepts.
#[derive(Clone, Default)]
pub struct JwtConfig {
    hs256: Option<DecodingKey>,
    keys: HashMap<String, PublicKey>,
    /// The claim holding the roles: a top-level key of that name, else a `.`-separated path.
    pub roles_claim: Option<String>,
    /// Claims every token must carry besides `sub`.
    pub required_claims: Vec<String>,
}

impl std::fmt::Debug for JwtConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtConfig")
            .field("hs256", &self.hs256.is_some())
            .field("kids", &self.keys.keys().collect::<Vec<_>>())
            .field("roles_claim", &self.roles_claim)
            .field("required_claims", &self.required_claims)
            .finish()
    }
}

impl JwtConfig {
    /// Whether any key is configured, so that bearer tokens are worth looking at.
    pub fn is_enabled(&self) -> bool {
        self.hs256.is_some() || !self.keys.is_empty()
    }

    /// Accepts HS256 tokens signed with `secret` (the raw bytes).
    pub fn set_hs256_secret(&mut self, secret: &[u8]) {
        self.hs256 = Some(DecodingKey::from_secret(secret));
    }

    /// Accepts RS256 tokens whose `kid` is `kid`, checked with this PEM public key.
    pub fn add_rsa_pem(&mut self, kid: &str, pem: &[u8]) -> Result<(), JwtError> {
        let key = DecodingKey::from_rsa_pem(pem).map_err(|_| JwtError::Malformed)?;
        self.keys.insert(kid.to_owned(), PublicKey::Rsa(key));
        Ok(())
    }

    /// Accepts ES256 tokens whose `kid` is `kid`, checked with this PEM public key.
    pub fn add_ec_pem(&mut self, kid: &str, pem: &[u8]) -> Result<(), JwtError> {
        let key = DecodingKey::from_ec_pem(pem).map_err(|_| JwtError::Malformed)?;
        self.keys.insert(kid.to_owned(), PublicKey::Ec(key));
        Ok(())
    }

    /// Checks `token` at `now` (seconds since the epoch) and gives the user it names.
    pub fn verify(&self, token: &str, now: u64) -> Result<UserCtx, JwtError> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::Json(_) => {
                // An unknown `alg` (such as `none`) fails as a JSON error of the header.
                JwtError::Algorithm("in the header".into())
            }
            _ => JwtError::Malformed,
        })?;
        let key = match header.alg {
            Algorithm::HS256 => self
                .hs256
                .as_ref()
                .ok_or_else(|| JwtError::Algorithm("HS256".into()))?,
            Algorithm::RS256 | Algorithm::ES256 => {
                let kid = header.kid.as_deref().ok_or(JwtError::UnknownKey)?;
                match (self.keys.get(kid), header.alg) {
                    (Some(PublicKey::Rsa(k)), Algorithm::RS256) => k,
                    (Some(PublicKey::Ec(k)), Algorithm::ES256) => k,
                    (Some(_), alg) => {
                        return Err(JwtError::Algorithm(format!("{alg:?} for this kid")));
                    }
                    (None, _) => return Err(JwtError::UnknownKey),
                }
            }
            other => return Err(JwtError::Algorithm(format!("{other:?}"))),
        };
        // The signature alone is checked by the library; the time claims are checked below
        // against the clock given, so they are testable and have no leeway.
        let mut validation = Validation::new(header.alg);
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        let data =
            jsonwebtoken::decode::<Value>(token, key, &validation).map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::InvalidSignature => JwtError::BadSignature,
                jsonwebtoken::errors::ErrorKind::InvalidAlgorithm => {
                    JwtError::Algorithm(format!("{:?}", header.alg))
                }
                _ => JwtError::Malformed,
            })?;
        self.user(&data.claims, now)
    }

    fn user(&self, claims: &Value, now: u64) -> Result<UserCtx, JwtError> {
        let claims = claims.as_object().ok_or(JwtError::Malformed)?;
        let time = |name: &str| -> Result<Option<f64>, JwtError> {
            match claims.get(name) {
                None => Ok(None),
                Some(v) => v
                    .as_f64()
                    .map(Some)
                    .ok_or_else(|| JwtError::Claim(name.into())),
            }
        };
        if let Some(exp) = time("exp")?
            && (now as f64) >= exp
        {
            return Err(JwtError::Expired);
        }
        if let Some(nbf) = time("nbf")?
            && (now as f64) < nbf
        {
            return Err(JwtError::NotYetValid);
        }
        for claim in &self.required_claims {
            if !claims.contains_key(claim) {
                return Err(JwtError::Claim(claim.clone()));
            }
        }
        let name = claims
            .get("sub")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| JwtError::Claim("sub".into()))?;
        let claim = self.roles_claim.as_deref().unwrap_or(DEFAULT_ROLES_CLAIM);
        let roles = claims.get(claim).or_else(|| {
            let mut at = claims.get(claim.split('.').next()?)?;
            for part in claim.split('.').skip(1) {
                at = at.get(part)?;
            }
            Some(at)
        });
        let roles = match roles {
            None => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .map(|r| r.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| JwtError::Claim(claim.into()))?,
            Some(_) => return Err(JwtError::Claim(claim.into())),
        };
        Ok(UserCtx {
            name: Some(name.to_owned()),
            roles,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    use jsonwebtoken::{EncodingKey, Header, encode};
    use proptest::prelude::*;
    use serde_json::json;

    const NOW: u64 = 1_800_000_000;

    fn hs() -> JwtConfig {
        let mut c = JwtConfig::default();
        c.set_hs256_secret(b"top secret");
        c
    }

    fn sign(claims: &Value, secret: &[u8]) -> String {
        encode(
            &Header::default(),
            claims,
            &EncodingKey::from_secret(secret),
        )
        .unwrap()
    }

    #[test]
    fn hs256_gives_name_and_roles() {
        let t = sign(
            &json!({"sub": "bob", "_couchdb.roles": ["a", "b"], "exp": NOW + 10}),
            b"top secret",
        );
        let u = hs().verify(&t, NOW).unwrap();
        assert_eq!(u.name.as_deref(), Some("bob"));
        assert_eq!(u.roles, ["a", "b"]);
    }

    #[test]
    fn nested_roles_claim() {
        let mut c = hs();
        c.roles_claim = Some("app.roles".into());
        let t = sign(
            &json!({"sub": "bob", "app": {"roles": ["x"]}}),
            b"top secret",
        );
        assert_eq!(c.verify(&t, NOW).unwrap().roles, ["x"]);
    }

    #[test]
    fn alg_none_and_unknown_algorithms_are_refused() {
        let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#);
        let claims = URL_SAFE_NO_PAD.encode(r#"{"sub":"admin","_couchdb.roles":["_admin"]}"#);
        for token in [format!("{header}.{claims}."), format!("{header}.{claims}")] {
            assert!(hs().verify(&token, NOW).is_err());
        }
        // HS384 is not configured.
        let t = encode(
            &Header::new(Algorithm::HS384),
            &json!({"sub": "bob"}),
            &EncodingKey::from_secret(b"top secret"),
        )
        .unwrap();
        assert!(matches!(hs().verify(&t, NOW), Err(JwtError::Algorithm(_))));
        // RS256 without keys.
        let mut h = Header::new(Algorithm::RS256);
        h.kid = Some("k".into());
        let forged = format!(
            "{}.{claims}.AAAA",
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&h).unwrap())
        );
        assert_eq!(hs().verify(&forged, NOW), Err(JwtError::UnknownKey));
        assert_eq!(hs().verify("not a token", NOW), Err(JwtError::Malformed));
    }

    #[test]
    fn required_claims_and_sub() {
        let mut c = hs();
        c.required_claims = vec!["iss".into()];
        let t = sign(&json!({"sub": "bob"}), b"top secret");
        assert_eq!(c.verify(&t, NOW), Err(JwtError::Claim("iss".into())));
        let t = sign(&json!({"iss": "x"}), b"top secret");
        assert_eq!(c.verify(&t, NOW), Err(JwtError::Claim("sub".into())));
        let t = sign(
            &json!({"sub": "bob", "_couchdb.roles": "admin"}),
            b"top secret",
        );
        assert!(matches!(hs().verify(&t, NOW), Err(JwtError::Claim(_))));
    }

    /// The SubjectPublicKeyInfo PEM of an uncompressed P-256 point.
    fn p256_pem(point: &[u8]) -> String {
        let mut der = hex::decode("3059301306072a8648ce3d020106082a8648ce3d030107034200").unwrap();
        der.extend_from_slice(point);
        format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            STANDARD.encode(der)
        )
    }

    #[test]
    fn es256_by_kid() {
        use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        let mut c = JwtConfig::default();
        c.add_ec_pem("k1", p256_pem(pair.public_key().as_ref()).as_bytes())
            .unwrap();
        let key = EncodingKey::from_ec_der(pkcs8.as_ref());
        let mut h = Header::new(Algorithm::ES256);
        h.kid = Some("k1".into());
        let t = encode(&h, &json!({"sub": "carol"}), &key).unwrap();
        assert_eq!(c.verify(&t, NOW).unwrap().name.as_deref(), Some("carol"));
        h.kid = Some("k2".into());
        let t = encode(&h, &json!({"sub": "carol"}), &key).unwrap();
        assert_eq!(c.verify(&t, NOW), Err(JwtError::UnknownKey));
        // An HS256 token made with the public key as its secret (the classic confusion) fails.
        let t = sign(
            &json!({"sub": "carol"}),
            p256_pem(pair.public_key().as_ref()).as_bytes(),
        );
        assert!(matches!(c.verify(&t, NOW), Err(JwtError::Algorithm(_))));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn time_claims(exp in proptest::option::of(NOW - 100..NOW + 100), nbf in proptest::option::of(NOW - 100..NOW + 100)) {
            let mut claims = json!({"sub": "bob"});
            if let Some(e) = exp { claims["exp"] = e.into(); }
            if let Some(n) = nbf { claims["nbf"] = n.into(); }
            let got = hs().verify(&sign(&claims, b"top secret"), NOW);
            let expired = exp.is_some_and(|e| NOW >= e);
            let early = nbf.is_some_and(|n| NOW < n);
            if expired {
                prop_assert_eq!(got, Err(JwtError::Expired));
            } else if early {
                prop_assert_eq!(got, Err(JwtError::NotYetValid));
            } else {
                prop_assert!(got.is_ok());
            }
        }

        #[test]
        fn other_secret_or_changed_claims_fail(secret in "[a-z]{1,12}", name in "[a-z]{1,8}") {
            let t = sign(&json!({"sub": name}), secret.as_bytes());
            if secret != "top secret" {
                prop_assert_eq!(hs().verify(&t, NOW), Err(JwtError::BadSignature));
            }
            let good = sign(&json!({"sub": name}), b"top secret");
            let parts: Vec<&str> = good.split('.').collect();
            let admin = URL_SAFE_NO_PAD.encode(json!({"sub": name, "_couchdb.roles": ["_admin"]}).to_string());
            let tampered = format!("{}.{}.{}", parts[0], admin, parts[2]);
            prop_assert_eq!(hs().verify(&tampered, NOW), Err(JwtError::BadSignature));
        }
    }
}
