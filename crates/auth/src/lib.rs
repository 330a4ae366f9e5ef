//! Who is asking and what they may do: principals, password hashing in CouchDB's `_users`
//! format, the AuthSession cookie, JWT bearer tokens, lockout accounting after failed logins,
//! and the access decisions of CouchDB 3's `_security` model (plus per-document `_access`).
//!
//! Nothing here does I/O or knows HTTP: the server finds the stored credentials and the
//! database's security object, and this crate decides. Clocks come in as arguments, so every
//! decision is a pure function that the tests can drive through time.

pub mod access;
pub mod cookie;
pub mod jwt;
pub mod lockout;
pub mod password;
pub mod user;

pub use access::{Group, Level, Security};
pub use cookie::{CookieError, CookieSigner};
pub use jwt::{JwtConfig, JwtError};
pub use lockout::Lockout;
pub use password::{Credentials, PasswordCache, PasswordError};
pub use user::UserCtx;
