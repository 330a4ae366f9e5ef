//! Authentication at the HTTP layer: who a request comes from, by Basic credentials, an
//! `AuthSession` cookie or a JWT bearer token, all producing one [`UserCtx`]. The decisions
//! (hashes, cookie signatures, token checks, lockout) are `outpost_auth`'s; this module finds
//! the stored credentials (server admins in memory, users in the `_users` database) and turns
//! the outcome into answers and headers.
//!
//! With no server admin configured the server is in CouchDB's "admin party": every request is a
//! server admin, as Outpost always was on loopback.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use http::{HeaderMap, HeaderValue, header};
use outpost_auth::cookie::{Fresh, SessionCookie};
use outpost_auth::{CookieSigner, Credentials, JwtConfig, Lockout, PasswordCache, UserCtx};
use serde_json::Value;

use crate::{ApiError, AppState};

/// The database of user accounts.
pub const USERS_DB: &str = "_users";
/// The prefix of a user document's id.
pub const USER_PREFIX: &str = "org.couchdb.user:";

/// A secret that never shows in `Debug` output.
#[derive(Clone, Default)]
pub struct Secret(pub Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// What a new database's `_security` is until one is set (CouchDB's `default_security`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DefaultSecurity {
    /// Only server admins (CouchDB 3's default).
    #[default]
    AdminOnly,
    /// Public: every user, anonymous included, is a member.
    Everyone,
}

/// Authentication settings of the server.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    /// Server admins with their hashed passwords (from the environment and configuration file).
    pub admins: Vec<(String, Credentials)>,
    /// Where admins added at run time (`PUT /_node/_local/_config/admins/NAME`) are kept,
    /// hashed; `None` keeps them in memory only. A store shared by several processes keeps
    /// them itself (see [`Auth::refresh`]); this file is then only read once, to move the
    /// admins an earlier version saved in it into the store.
    pub admins_file: Option<PathBuf>,
    /// The key session cookies are signed with.
    pub cookie_secret: Secret,
    /// How long a session cookie is valid, in seconds (refreshed as it is used).
    pub session_timeout: u64,
    /// `Secure` on session cookies (set when serving TLS).
    pub secure_cookies: bool,
    /// `SameSite` of session cookies (`Strict`, `Lax` or `None`), none by default.
    pub same_site: Option<String>,
    /// Which bearer tokens are accepted.
    pub jwt: JwtConfig,
    pub default_security: DefaultSecurity,
    /// Anyone may create a user document without roles, and users read and update their own.
    pub public_signup: bool,
    /// A private database `userdb-<hex of name>` is created for each new user.
    pub couch_peruser: bool,
    /// PBKDF2 iterations for new password hashes.
    pub password_iterations: u32,
    /// Failed logins of one user from one source before further attempts are refused; 0 never.
    pub lockout_threshold: u32,
    /// How long failures are remembered and a lockout lasts.
    pub lockout_window: Duration,
}

impl Default for AuthSettings {
    fn default() -> AuthSettings {
        AuthSettings {
            admins: Vec::new(),
            admins_file: None,
            cookie_secret: Secret(rand::random::<[u8; 32]>().to_vec()),
            session_timeout: 600,
            secure_cookies: false,
            same_site: None,
            jwt: JwtConfig::default(),
            default_security: DefaultSecurity::AdminOnly,
            public_signup: false,
            couch_peruser: false,
            password_iterations: outpost_auth::password::DEFAULT_ITERATIONS,
            lockout_threshold: 5,
            lockout_window: Duration::from_secs(300),
        }
    }
}

/// `_users` accounts as last read, so that a request with credentials does not read the
/// database each time. Exact, not time-bound: any committed write to `_users` (through any
/// route or a replication) moves its watch channel, which empties the cache before the next
/// lookup; a fill that started before such a write is not kept.
#[derive(Default)]
struct AccountCache {
    /// The `_users` watch channel seen at the last flush; `None` before the first lookup.
    watch: Option<tokio::sync::watch::Receiver<u64>>,
    /// Moves at every flush, so a lookup that read before a flush does not store what it read.
    generation: u64,
    /// By name: the account, or `None` for "no such user".
    entries: std::collections::HashMap<String, Option<Account>>,
}

/// The section of a shared store's configuration that holds the server admins added at run
/// time: name → CouchDB's hashed admin string (`-pbkdf2-…`).
pub const ADMINS_SECTION: &str = "admins";

/// Most accounts (and security objects) kept; beyond, the cache starts over.
const CACHE_CAPACITY: usize = 10_000;

/// The authentication state of a running server.
pub struct Auth {
    pub settings: AuthSettings,
    accounts: std::sync::Mutex<AccountCache>,
    /// Databases' security objects by name, dropped whenever one is set or a database is
    /// created or deleted (all of which go through this server), with a generation that moves
    /// at each so that a read from before it is not stored. Beside them, whether each database
    /// has per-document access (fixed at creation, so only creation and deletion drop it).
    #[allow(clippy::type_complexity)]
    securities: std::sync::Mutex<(
        u64,
        std::collections::HashMap<String, outpost_auth::Security>,
        std::collections::HashMap<String, bool>,
    )>,
    /// Server admins by name: the configured ones and those added at run time.
    admins: RwLock<BTreeMap<String, Credentials>>,
    /// With a store shared by several processes: its configuration's watch as of the admins
    /// last read from it, so a request finds out cheaply whether any process changed them
    /// since; `None` before the first read (or after a failed one).
    shared_seen: std::sync::Mutex<Option<tokio::sync::watch::Receiver<u64>>>,
    /// Held while the admins are read from a shared store, so that the requests that find them
    /// stale together read them once; whether the admins file was moved into the store yet.
    shared_load: tokio::sync::Mutex<bool>,
    cache: PasswordCache,
    cookies: CookieSigner,
    lockout: Lockout,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth").finish_non_exhaustive()
    }
}

/// How a request was authenticated, as `GET /_session` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Default,
    Cookie,
    Jwt,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::Default => "default",
            Method::Cookie => "cookie",
            Method::Jwt => "jwt",
        }
    }
}

/// Who a request comes from, and what the answer must carry for it.
#[derive(Debug, Clone)]
pub struct Identity {
    pub user: UserCtx,
    pub method: Option<Method>,
    /// A refreshed session cookie to send back.
    pub set_cookie: Option<HeaderValue>,
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn unauthorized(reason: &str) -> ApiError {
    ApiError::Unauthorized(reason.to_owned())
}

fn bad_login() -> ApiError {
    unauthorized("Name or password is incorrect.")
}

fn count_failure(method: &'static str) {
    metrics::counter!("outpost_auth_failures_total", "method" => method).increment(1);
}

impl Auth {
    pub fn new(settings: AuthSettings) -> Auth {
        let mut admins: BTreeMap<String, Credentials> = BTreeMap::new();
        if let Some(path) = &settings.admins_file {
            match read_admins_file(path) {
                Ok(saved) => admins.extend(saved),
                Err(e) => {
                    tracing::error!(error = %e, file = %path.display(), "cannot read the saved server admins")
                }
            }
        }
        // The configured admins win over saved ones of the same name.
        admins.extend(settings.admins.iter().cloned());
        Auth {
            cookies: CookieSigner::new(settings.cookie_secret.0.clone(), settings.session_timeout),
            lockout: Lockout::new(
                settings.lockout_threshold,
                settings.lockout_window.as_secs(),
                10_000,
            ),
            cache: PasswordCache::new(10_000),
            accounts: std::sync::Mutex::new(AccountCache::default()),
            securities: std::sync::Mutex::new((
                0,
                std::collections::HashMap::new(),
                std::collections::HashMap::new(),
            )),
            admins: RwLock::new(admins),
            shared_seen: std::sync::Mutex::new(None),
            shared_load: tokio::sync::Mutex::new(false),
            settings,
        }
    }

    /// Whether `name` is a server admin given by this process's configuration (flags,
    /// environment, configuration file), which the API does not change on a shared store.
    fn configured(&self, name: &str) -> bool {
        self.settings.admins.iter().any(|(n, _)| n == name)
    }

    /// With a store that several processes share (PostgreSQL), brings the server admins up to
    /// date with the ones kept in it: the configured admins, then those of the store (a
    /// configured name keeps its configured password). Costs a look at a watch channel unless
    /// some process changed them; called before each request is authenticated, and before the
    /// server starts serving, so that a node never serves as an admin party while admins exist
    /// in the store. Does nothing with a store that keeps no shared configuration.
    pub async fn refresh(&self, store: &dyn outpost_store::Store) -> Result<(), ApiError> {
        let Some(shared) = store.shared_config() else {
            return Ok(());
        };
        if !self.shared_stale() {
            return Ok(());
        }
        let mut moved = self.shared_load.lock().await;
        if !self.shared_stale() {
            return Ok(());
        }
        if !*moved {
            self.move_admins_file(shared).await?;
            *moved = true;
        }
        // Marked as seen before reading, so a change committed during the read moves it again
        // and the next request reads once more.
        let mut seen = shared.watch_config();
        seen.borrow_and_update();
        let (_, saved) = shared.config_section(ADMINS_SECTION).await?;
        let mut admins: BTreeMap<String, Credentials> = BTreeMap::new();
        for (name, hashed) in saved {
            match Credentials::parse_admin_string(&hashed) {
                Some(Ok(creds)) => {
                    admins.insert(name, creds);
                }
                _ => {
                    tracing::error!(admin = %name, "a shared server admin has no usable hashed password; skipped")
                }
            }
        }
        admins.extend(self.settings.admins.iter().cloned());
        *self.admins.write().unwrap_or_else(|e| e.into_inner()) = admins;
        *self.shared_seen.lock().unwrap_or_else(|e| e.into_inner()) = Some(seen);
        Ok(())
    }

    /// Whether the admins must be read from the shared store again.
    fn shared_stale(&self) -> bool {
        match &*self.shared_seen.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(seen) => seen.has_changed().unwrap_or(true),
            None => true,
        }
    }

    /// Moves the admins an earlier version saved in the admins file (it kept them per process
    /// even on a shared store) into the shared store, unless the store has one of that name or
    /// the configuration gives it, then renames the file so that it is not read again (an admin
    /// deleted later must not come back from it).
    async fn move_admins_file(
        &self,
        shared: &dyn outpost_store::SharedConfig,
    ) -> Result<(), ApiError> {
        let Some(path) = &self.settings.admins_file else {
            return Ok(());
        };
        let saved = match read_admins_file(path) {
            Ok(saved) if saved.is_empty() => return Ok(()),
            Ok(saved) => saved,
            Err(e) => {
                tracing::error!(error = %e, file = %path.display(), "cannot read the saved server admins");
                return Ok(());
            }
        };
        let (_, present) = shared.config_section(ADMINS_SECTION).await?;
        for (name, creds) in saved {
            if self.configured(&name) || present.contains_key(&name) {
                continue;
            }
            shared
                .set_config(ADMINS_SECTION, &name, Some(creds.to_admin_string()))
                .await?;
            tracing::warn!(admin = %name, "server admin moved from the admins file into the shared store");
        }
        let mut done = path.clone().into_os_string();
        done.push(".moved");
        if let Err(e) = std::fs::rename(path, &done) {
            tracing::error!(error = %e, file = %path.display(), "cannot rename the admins file moved into the store");
        }
        Ok(())
    }

    /// Whether authentication is enforced: at least one server admin exists.
    pub fn enforced(&self) -> bool {
        !self
            .admins
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
    }

    /// The names of the server admins.
    pub fn admin_names(&self) -> Vec<String> {
        self.admins
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect()
    }

    fn admin(&self, name: &str) -> Option<Credentials> {
        self.admins
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    /// Adds or replaces a server admin and saves the run-time admins; gives whether it existed.
    /// On a shared store it is saved there, for every process; a configured admin cannot be
    /// changed there.
    pub async fn set_admin(
        &self,
        store: &dyn outpost_store::Store,
        name: &str,
        creds: Credentials,
    ) -> Result<bool, ApiError> {
        if let Some(shared) = store.shared_config() {
            self.refuse_configured(name)?;
            let hashed = creds.to_admin_string();
            let existed = shared
                .set_config(ADMINS_SECTION, name, Some(hashed))
                .await?;
            self.admins
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .insert(name.to_owned(), creds);
            return Ok(existed);
        }
        let mut admins = self.admins.write().unwrap_or_else(|e| e.into_inner());
        let existed = admins.insert(name.to_owned(), creds).is_some();
        self.save(&admins)?;
        Ok(existed)
    }

    /// Removes a server admin; gives whether it existed. On a shared store it is removed there,
    /// for every process; a configured admin cannot be removed there.
    pub async fn remove_admin(
        &self,
        store: &dyn outpost_store::Store,
        name: &str,
    ) -> Result<bool, ApiError> {
        if let Some(shared) = store.shared_config() {
            self.refuse_configured(name)?;
            let existed = shared.set_config(ADMINS_SECTION, name, None).await?;
            self.admins
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .remove(name);
            return Ok(existed);
        }
        let mut admins = self.admins.write().unwrap_or_else(|e| e.into_inner());
        let existed = admins.remove(name).is_some();
        self.save(&admins)?;
        Ok(existed)
    }

    /// On a shared store every process must agree on each admin, and a configured admin comes
    /// from each process's own configuration, which the API cannot change.
    fn refuse_configured(&self, name: &str) -> Result<(), ApiError> {
        if self.configured(name) {
            return Err(ApiError::Forbidden(format!(
                "server admin {name} is set by this node's configuration and can only be changed there"
            )));
        }
        Ok(())
    }

    fn save(&self, admins: &BTreeMap<String, Credentials>) -> Result<(), ApiError> {
        let Some(path) = &self.settings.admins_file else {
            return Ok(());
        };
        write_admins_file(path, admins)
            .map_err(|e| ApiError::Internal(format!("cannot save the server admins: {e}")))
    }

    /// A `Set-Cookie` value starting a session for `name`.
    pub fn session_cookie(&self, name: &str, salt: &str) -> HeaderValue {
        let value = self.cookies.issue(name, salt, now());
        self.cookie_header(&value, None)
    }

    /// A `Set-Cookie` value ending the session.
    pub fn expired_cookie(&self) -> HeaderValue {
        self.cookie_header("", Some("Thu, 01 Jan 1970 00:00:00 GMT"))
    }

    fn cookie_header(&self, value: &str, expires: Option<&str>) -> HeaderValue {
        let mut cookie = format!("AuthSession={value}; Version=1");
        if let Some(expires) = expires {
            cookie.push_str(&format!("; Expires={expires}; Max-Age=0"));
        }
        cookie.push_str("; Path=/; HttpOnly");
        if self.settings.secure_cookies {
            cookie.push_str("; Secure");
        }
        if let Some(same_site) = &self.settings.same_site {
            cookie.push_str(&format!("; SameSite={same_site}"));
        }
        HeaderValue::from_str(&cookie).unwrap_or_else(|_| HeaderValue::from_static("AuthSession="))
    }

    /// The cache's generation and the cached security object of `db`.
    pub fn cached_security(&self, db: &str) -> (u64, Option<outpost_auth::Security>) {
        let cache = self.securities.lock().unwrap_or_else(|e| e.into_inner());
        (cache.0, cache.1.get(db).cloned())
    }

    /// Remembers the security object of `db`, read when the cache was at `generation`; not if a
    /// security object was set or a database deleted since.
    pub fn cache_security(&self, generation: u64, db: &str, security: outpost_auth::Security) {
        let mut cache = self.securities.lock().unwrap_or_else(|e| e.into_inner());
        if cache.0 != generation {
            return;
        }
        if cache.1.len() >= CACHE_CAPACITY {
            cache.1.clear();
        }
        cache.1.insert(db.to_owned(), security);
    }

    /// Forgets the security object of `db` (and whether it has per-document access), after it
    /// was set or the database created or deleted.
    pub fn forget_security(&self, db: &str) {
        let mut cache = self.securities.lock().unwrap_or_else(|e| e.into_inner());
        cache.0 += 1;
        cache.1.remove(db);
        cache.2.remove(db);
    }

    /// The cache's generation and whether `db` has per-document access, when known.
    pub fn cached_access(&self, db: &str) -> (u64, Option<bool>) {
        let cache = self.securities.lock().unwrap_or_else(|e| e.into_inner());
        (cache.0, cache.2.get(db).copied())
    }

    /// Remembers whether `db` has per-document access, read when the cache was at
    /// `generation`; not if a database was created or deleted since.
    pub fn cache_access(&self, generation: u64, db: &str, access: bool) {
        let mut cache = self.securities.lock().unwrap_or_else(|e| e.into_inner());
        if cache.0 != generation {
            return;
        }
        if cache.2.len() >= CACHE_CAPACITY {
            cache.2.clear();
        }
        cache.2.insert(db.to_owned(), access);
    }

    /// The cache's generation after emptying it if `_users` changed, and the cached account.
    fn cached_account(
        &self,
        store: &dyn outpost_store::Store,
        name: &str,
    ) -> (u64, Option<Option<Account>>) {
        let mut cache = self.accounts.lock().unwrap_or_else(|e| e.into_inner());
        let changed = match &mut cache.watch {
            None => true,
            Some(rx) => rx.has_changed().unwrap_or(true),
        };
        if changed {
            cache.entries.clear();
            cache.generation += 1;
            let mut rx = store.watch(USERS_DB);
            rx.borrow_and_update();
            cache.watch = Some(rx);
        }
        (cache.generation, cache.entries.get(name).cloned())
    }

    fn cache_account(&self, generation: u64, name: &str, account: Option<Account>) {
        let mut cache = self.accounts.lock().unwrap_or_else(|e| e.into_inner());
        if cache.generation != generation {
            return;
        }
        if cache.entries.len() >= CACHE_CAPACITY {
            cache.entries.clear();
        }
        cache.entries.insert(name.to_owned(), account);
    }

    /// The authentication handlers `GET /_session` lists.
    pub fn handlers(&self) -> Vec<&'static str> {
        let mut handlers = vec!["cookie", "default"];
        if self.settings.jwt.is_enabled() {
            handlers.insert(0, "jwt");
        }
        handlers
    }
}

/// A stored account: credentials and roles.
#[derive(Debug, Clone)]
pub struct Account {
    pub creds: Credentials,
    pub roles: Vec<String>,
}

/// The account called `name`: a server admin, else a `_users` document.
pub async fn account(state: &AppState, name: &str) -> Result<Option<Account>, ApiError> {
    if let Some(creds) = state.auth.admin(name) {
        return Ok(Some(Account {
            creds,
            roles: vec![outpost_auth::user::ADMIN_ROLE.to_owned()],
        }));
    }
    let (generation, cached) = state.auth.cached_account(state.store.as_ref(), name);
    if let Some(account) = cached {
        return Ok(account);
    }
    let account = user_doc(state, name).await?.and_then(|doc| {
        let creds = Credentials::from_user_doc(&doc).ok().flatten()?;
        let roles = doc
            .get("roles")
            .and_then(Value::as_array)
            .map(|r| {
                r.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        Some(Account { creds, roles })
    });
    state.auth.cache_account(generation, name, account.clone());
    Ok(account)
}

/// The current body of `_users`' document for `name`, if there is a live one.
pub async fn user_doc(
    state: &AppState,
    name: &str,
) -> Result<Option<serde_json::Map<String, Value>>, ApiError> {
    let id = format!("{USER_PREFIX}{name}");
    let record = match state.store.doc(USERS_DB, &id).await {
        Ok(Some(r)) => r,
        Ok(None) | Err(outpost_store::StoreError::NoDb) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let Some(winner) = record.tree.winner().filter(|w| !w.deleted) else {
        return Ok(None);
    };
    crate::routes::doc::body_object(state, USERS_DB, &id, &winner.rev)
        .await
        .map(Some)
}

/// Checks a name and password (with lockout, the cache and the failure metric) and gives the
/// user and their salt.
pub async fn login(
    state: &AppState,
    name: &str,
    password: &str,
    source: &str,
    method: &'static str,
) -> Result<(UserCtx, String), ApiError> {
    let auth = &state.auth;
    if auth.lockout.is_locked(name, source, now()) {
        count_failure(method);
        return Err(ApiError::Forbidden(
            "Account is temporarily locked due to multiple authentication failures".into(),
        ));
    }
    let account = account(state, name).await?;
    let ok = match &account {
        Some(account) => {
            let (state2, creds, password) =
                (state.clone(), account.creds.clone(), password.to_owned());
            // The hash takes a noticeable time; it must not hold up the runtime.
            tokio::task::spawn_blocking(move || state2.auth.cache.verify(&creds, &password))
                .await
                .map_err(|e| ApiError::Internal(format!("password check failed: {e}")))?
        }
        None => false,
    };
    match account {
        Some(account) if ok => {
            auth.lockout.succeeded(name, source);
            Ok((
                UserCtx {
                    name: Some(name.to_owned()),
                    roles: account.roles,
                },
                account.creds.salt,
            ))
        }
        _ => {
            auth.lockout.failed(name, source, now());
            count_failure(method);
            Err(bad_login())
        }
    }
}

/// Who `headers` say the request comes from. Bad Basic credentials and bad tokens are refused
/// (401); a bad or expired session cookie counts as no cookie, as in CouchDB.
pub async fn identify(
    state: &AppState,
    headers: &HeaderMap,
    source: &str,
) -> Result<Identity, ApiError> {
    let auth = &state.auth;
    auth.refresh(state.store.as_ref()).await?;
    if !auth.enforced() {
        return Ok(Identity {
            user: UserCtx::admin(None),
            method: None,
            set_cookie: None,
        });
    }
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let value = value
            .to_str()
            .map_err(|_| unauthorized("malformed Authorization header"))?;
        let (scheme, rest) = value.trim().split_once(' ').unwrap_or((value, ""));
        if scheme.eq_ignore_ascii_case("basic") {
            let decoded = STANDARD
                .decode(rest.trim())
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| unauthorized("malformed Basic credentials"))?;
            let (name, password) = decoded
                .split_once(':')
                .ok_or_else(|| unauthorized("malformed Basic credentials"))?;
            let (user, _) = login(state, name, password, source, "basic").await?;
            return Ok(Identity {
                user,
                method: Some(Method::Default),
                set_cookie: None,
            });
        }
        if scheme.eq_ignore_ascii_case("bearer") {
            if !auth.settings.jwt.is_enabled() {
                count_failure("jwt");
                return Err(unauthorized(
                    "bearer tokens are not accepted by this server",
                ));
            }
            return match auth.settings.jwt.verify(rest.trim(), now()) {
                Ok(user) => Ok(Identity {
                    user,
                    method: Some(Method::Jwt),
                    set_cookie: None,
                }),
                Err(e) => {
                    count_failure("jwt");
                    Err(unauthorized(&e.to_string()))
                }
            };
        }
    }
    if let Some(value) = session_cookie(headers)
        && let Ok(cookie) = SessionCookie::parse(value)
        && let Some(account) = account(state, &cookie.name).await?
    {
        match auth.cookies.check(&cookie, &account.creds.salt, now()) {
            Ok(fresh) => {
                let set_cookie = (fresh == Fresh::Refresh)
                    .then(|| auth.session_cookie(&cookie.name, &account.creds.salt));
                return Ok(Identity {
                    user: UserCtx {
                        name: Some(cookie.name),
                        roles: account.roles,
                    },
                    method: Some(Method::Cookie),
                    set_cookie,
                });
            }
            Err(_) => count_failure("cookie"),
        }
    }
    Ok(Identity {
        user: UserCtx::anonymous(),
        method: None,
        set_cookie: None,
    })
}

/// The `AuthSession` cookie's value, if the request has one.
fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix("AuthSession="))
        .filter(|v| !v.is_empty())
}

fn read_admins_file(path: &std::path::Path) -> std::io::Result<BTreeMap<String, Credentials>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(e),
    };
    let map: BTreeMap<String, String> = serde_json::from_str(&text)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    let mut out = BTreeMap::new();
    for (name, hashed) in map {
        match Credentials::parse_admin_string(&hashed) {
            Some(Ok(creds)) => {
                out.insert(name, creds);
            }
            _ => {
                tracing::error!(admin = %name, "a saved server admin has no usable hashed password; skipped")
            }
        }
    }
    Ok(out)
}

/// Writes the admins, hashed, readable by the owner only, replacing the file atomically.
fn write_admins_file(
    path: &std::path::Path,
    admins: &BTreeMap<String, Credentials>,
) -> std::io::Result<()> {
    let map: BTreeMap<&String, String> = admins
        .iter()
        .map(|(n, c)| (n, c.to_admin_string()))
        .collect();
    let text = serde_json::to_string_pretty(&map)?;
    let tmp = path.with_extension("tmp");
    write_private(&tmp, text.as_bytes())?;
    std::fs::rename(&tmp, path)
}

/// Writes a file only its owner can read (0600 on Unix).
pub fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// The shared state handed to [`AppState`].
pub fn shared(settings: AuthSettings) -> Arc<Auth> {
    Arc::new(Auth::new(settings))
}
