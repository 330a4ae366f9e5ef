//! Accounts the admin API accepts besides its token: the sync server's admins by Basic
//! credentials, and JWT bearer tokens whose roles include `_admin`, checked by `outpost_auth`
//! as the sync server checks them.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use outpost_auth::{Credentials, JwtConfig, PasswordCache};

/// Server admins and token settings.
pub struct AdminAccounts {
    admins: Vec<(String, Credentials)>,
    jwt: JwtConfig,
    /// Successful password checks, so a client sending Basic credentials on every call pays
    /// the hash once.
    cache: PasswordCache,
}

impl std::fmt::Debug for AdminAccounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminAccounts")
            .field(
                "admins",
                &self.admins.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .field("jwt", &self.jwt)
            .finish_non_exhaustive()
    }
}

impl AdminAccounts {
    pub fn new(admins: Vec<(String, Credentials)>, jwt: JwtConfig) -> AdminAccounts {
        AdminAccounts {
            admins,
            jwt,
            cache: PasswordCache::new(1024),
        }
    }

    /// Whether any account or token key is configured.
    pub fn is_empty(&self) -> bool {
        self.admins.is_empty() && !self.jwt.is_enabled()
    }

    /// Whether an `Authorization` header value names a server admin.
    pub async fn admits(self: &Arc<Self>, authorization: &str) -> bool {
        let (scheme, rest) = authorization.trim().split_once(' ').unwrap_or(("", ""));
        if scheme.eq_ignore_ascii_case("bearer") {
            if !self.jwt.is_enabled() {
                return false;
            }
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            return self
                .jwt
                .verify(rest.trim(), now)
                .is_ok_and(|user| user.is_server_admin());
        }
        if !scheme.eq_ignore_ascii_case("basic") {
            return false;
        }
        let Some(decoded) = STANDARD
            .decode(rest.trim())
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
        else {
            return false;
        };
        let Some((name, password)) = decoded.split_once(':') else {
            return false;
        };
        let Some(creds) = self
            .admins
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, c)| c.clone())
        else {
            return false;
        };
        let (me, password) = (self.clone(), password.to_owned());
        // The hash takes a noticeable time; it must not hold up the runtime.
        tokio::task::spawn_blocking(move || me.cache.verify(&creds, &password))
            .await
            .unwrap_or(false)
    }
}
