//! The user context every authentication method produces, CouchDB's `userCtx`.

use serde::{Deserialize, Serialize};

/// The role that makes a user a server admin.
pub const ADMIN_ROLE: &str = "_admin";

/// Who a request comes from: a name (none when anonymous) and roles.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct UserCtx {
    pub name: Option<String>,
    pub roles: Vec<String>,
}

impl UserCtx {
    /// Nobody signed in.
    pub fn anonymous() -> UserCtx {
        UserCtx::default()
    }

    /// A server admin (the `_admin` role).
    pub fn admin(name: Option<String>) -> UserCtx {
        UserCtx {
            name,
            roles: vec![ADMIN_ROLE.to_owned()],
        }
    }

    pub fn is_anonymous(&self) -> bool {
        self.name.is_none() && self.roles.is_empty()
    }

    pub fn is_server_admin(&self) -> bool {
        self.roles.iter().any(|r| r == ADMIN_ROLE)
    }

    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }
}
