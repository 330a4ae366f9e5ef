//! CouchDB 3's authorization model: a database's `_security` object names its admins and
//! members (`{names, roles}` each); a server admin is everything, a database admin may change the
//! database's security and design documents, a member may read and write documents, and anyone
//! else gets nothing. A database whose members are empty is public. Plus Outpost's per-document
//! `_access` lists for databases created with `access=true`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::UserCtx;
use crate::user::ADMIN_ROLE;

/// Names and roles, as in `_security`'s `admins` and `members`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    #[serde(default)]
    pub names: Vec<String>,
    #[serde(default)]
    pub roles: Vec<String>,
}

impl Group {
    pub fn is_empty(&self) -> bool {
        self.names.is_empty() && self.roles.is_empty()
    }

    /// Whether `user` is in the group by name or by one of their roles.
    pub fn contains(&self, user: &UserCtx) -> bool {
        user.name.as_ref().is_some_and(|n| self.names.contains(n))
            || user.roles.iter().any(|r| self.roles.contains(r))
    }
}

/// A database's `_security` object (the parts that decide access).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Security {
    #[serde(default)]
    pub admins: Group,
    #[serde(default)]
    pub members: Group,
}

/// Why a security object is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SecurityError(pub String);

impl Security {
    /// CouchDB 3's `default_security = admin_only`: only server admins get in.
    pub fn admin_only() -> Security {
        let admins = Group {
            names: vec![],
            roles: vec![ADMIN_ROLE.to_owned()],
        };
        Security {
            admins: admins.clone(),
            members: admins,
        }
    }

    /// Reads a `_security` body, checking what CouchDB checks: an object whose `admins` and
    /// `members`, when present, are objects of string lists `names` and `roles`.
    pub fn from_json(value: &Value) -> Result<Security, SecurityError> {
        let Some(object) = value.as_object() else {
            return Err(SecurityError(
                "the security object must be a JSON object".into(),
            ));
        };
        for part in ["admins", "members"] {
            let Some(group) = object.get(part) else {
                continue;
            };
            let Some(group) = group.as_object() else {
                return Err(SecurityError(format!("{part} must be a JSON object")));
            };
            for list in ["names", "roles"] {
                match group.get(list) {
                    None => {}
                    Some(Value::Array(items)) if items.iter().all(Value::is_string) => {}
                    Some(_) => {
                        return Err(SecurityError(format!(
                            "{list} must be a JSON list of strings"
                        )));
                    }
                }
            }
        }
        serde_json::from_value(value.clone()).map_err(|e| SecurityError(e.to_string()))
    }

    /// What `user` is to a database with this security object.
    pub fn level(&self, user: &UserCtx) -> Level {
        if user.is_server_admin() {
            Level::ServerAdmin
        } else if self.admins.contains(user) {
            Level::DbAdmin
        } else if self.members.is_empty() || self.members.contains(user) {
            Level::Member
        } else {
            Level::None
        }
    }
}

/// What a user is to one database, in increasing power.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Neither a member nor an admin: no access.
    None,
    /// Reads and writes documents (not design documents, not `_security`).
    Member,
    /// Also changes `_security` and design documents.
    DbAdmin,
    /// Everything, on every database.
    ServerAdmin,
}

/// How a refusal is answered: 401 asks the client to sign in, 403 says signing in as this user
/// will not help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Unauthorized,
    Forbidden,
}

/// The refusal for `user`: anonymous requests are asked to authenticate.
pub fn refusal(user: &UserCtx) -> Refusal {
    if user.name.is_none() {
        Refusal::Unauthorized
    } else {
        Refusal::Forbidden
    }
}

/// Whether a document with this `_access` list is visible to `user` at `level`: admins see
/// everything, a member sees it when the list names them or one of their roles.
pub fn can_read_doc(user: &UserCtx, level: Level, access: &[String]) -> bool {
    if level >= Level::DbAdmin {
        return true;
    }
    level == Level::Member && names_user(user, access)
}

/// Whether `user` may write a document whose current `_access` is `current` (`None` for a new
/// document) so that it becomes `new`: admins may, a member only if the current list names them
/// and the new one still does (nobody creates a document they could not read or gives away one
/// they would lose).
pub fn can_write_doc(
    user: &UserCtx,
    level: Level,
    current: Option<&[String]>,
    new: &[String],
) -> bool {
    if level >= Level::DbAdmin {
        return true;
    }
    level == Level::Member && current.is_none_or(|c| names_user(user, c)) && names_user(user, new)
}

/// The principals `user` is known by in `_access` lists: their name, then their roles (a list
/// does not tell names and roles apart, as in CouchDB's design).
pub fn principals(user: &UserCtx) -> Vec<String> {
    let mut out: Vec<String> = user.name.iter().cloned().collect();
    for role in &user.roles {
        if !out.contains(role) {
            out.push(role.clone());
        }
    }
    out
}

fn names_user(user: &UserCtx, access: &[String]) -> bool {
    user.name.as_ref().is_some_and(|n| access.contains(n))
        || user.roles.iter().any(|r| access.contains(r))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn user(name: &str, roles: &[&str]) -> UserCtx {
        UserCtx {
            name: Some(name.into()),
            roles: roles.iter().map(|r| r.to_string()).collect(),
        }
    }

    #[test]
    fn couchdb_cases() {
        let anon = UserCtx::anonymous();
        let admin_only = Security::admin_only();
        assert_eq!(admin_only.level(&anon), Level::None);
        assert_eq!(admin_only.level(&user("bob", &[])), Level::None);
        assert_eq!(
            admin_only.level(&UserCtx::admin(Some("root".into()))),
            Level::ServerAdmin
        );
        let public = Security::default();
        assert_eq!(public.level(&anon), Level::Member);
        let sec = Security::from_json(&json!({
            "admins": {"names": ["ann"], "roles": ["boss"]},
            "members": {"names": ["bob"], "roles": ["staff"]},
        }))
        .unwrap();
        assert_eq!(sec.level(&user("ann", &[])), Level::DbAdmin);
        assert_eq!(sec.level(&user("zed", &["boss"])), Level::DbAdmin);
        assert_eq!(sec.level(&user("bob", &[])), Level::Member);
        assert_eq!(sec.level(&user("zed", &["staff"])), Level::Member);
        assert_eq!(sec.level(&user("zed", &["other"])), Level::None);
        assert_eq!(sec.level(&anon), Level::None);
        assert_eq!(refusal(&anon), Refusal::Unauthorized);
        assert_eq!(refusal(&user("zed", &[])), Refusal::Forbidden);
    }

    #[test]
    fn document_access_cases() {
        let bob = user("bob", &["staff"]);
        let list = |items: &[&str]| items.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        // Named, or through a role.
        assert!(can_read_doc(&bob, Level::Member, &list(&["bob"])));
        assert!(can_read_doc(&bob, Level::Member, &list(&["staff"])));
        assert!(!can_read_doc(&bob, Level::Member, &list(&["ann"])));
        assert!(!can_read_doc(&bob, Level::Member, &[]));
        // Admins of the database read and write everything; non-members nothing.
        assert!(can_read_doc(&bob, Level::DbAdmin, &[]));
        assert!(!can_read_doc(&bob, Level::None, &list(&["bob"])));
        // A new document must name its creator; an update must keep them named.
        assert!(can_write_doc(
            &bob,
            Level::Member,
            None,
            &list(&["bob", "ann"])
        ));
        assert!(!can_write_doc(&bob, Level::Member, None, &list(&["ann"])));
        assert!(can_write_doc(
            &bob,
            Level::Member,
            Some(&list(&["staff"])),
            &list(&["bob"])
        ));
        assert!(!can_write_doc(
            &bob,
            Level::Member,
            Some(&list(&["ann"])),
            &list(&["bob"])
        ));
        assert!(!can_write_doc(
            &bob,
            Level::Member,
            Some(&list(&["bob"])),
            &list(&["ann"])
        ));
        assert_eq!(principals(&bob), list(&["bob", "staff"]));
        assert_eq!(principals(&UserCtx::anonymous()), Vec::<String>::new());
    }

    #[test]
    fn malformed_security_is_refused() {
        for bad in [
            json!([]),
            json!({"admins": []}),
            json!({"members": {"names": "bob"}}),
            json!({"members": {"roles": [1]}}),
        ] {
            assert!(Security::from_json(&bad).is_err(), "{bad}");
        }
        assert!(Security::from_json(&json!({"other": 1})).is_ok());
    }

    fn arb_user() -> impl Strategy<Value = UserCtx> {
        (
            proptest::option::of("[a-d]"),
            proptest::collection::vec(prop_oneof!["[a-d]", Just("_admin".to_string())], 0..3),
        )
            .prop_map(|(name, roles)| UserCtx { name, roles })
    }

    fn arb_group() -> impl Strategy<Value = Group> {
        (
            proptest::collection::vec("[a-d]", 0..3),
            proptest::collection::vec("[a-d]", 0..3),
        )
            .prop_map(|(names, roles)| Group { names, roles })
    }

    proptest! {
        #[test]
        fn levels_follow_the_security_object(u in arb_user(), admins in arb_group(), members in arb_group()) {
            let sec = Security { admins: admins.clone(), members: members.clone() };
            let level = sec.level(&u);
            // Server admins are everything; nothing else is.
            prop_assert_eq!(level == Level::ServerAdmin, u.is_server_admin());
            if !u.is_server_admin() {
                prop_assert_eq!(level == Level::DbAdmin, admins.contains(&u));
                if !admins.contains(&u) {
                    prop_assert_eq!(level == Level::Member, members.is_empty() || members.contains(&u));
                }
            }
            // Anonymous users are never admins of a database and only members of public ones.
            if u.is_anonymous() {
                prop_assert_eq!(level, if members.is_empty() { Level::Member } else { Level::None });
            }
            // Adding the user to the members never lowers their level.
            let mut wider = sec.clone();
            if let Some(n) = &u.name { wider.members.names.push(n.clone()); }
            prop_assert!(wider.level(&u) >= level);
        }

        #[test]
        fn document_access(u in arb_user(), level in prop_oneof![Just(Level::None), Just(Level::Member), Just(Level::DbAdmin), Just(Level::ServerAdmin)],
                           current in proptest::collection::vec("[a-d]", 0..3), new in proptest::collection::vec("[a-d]", 0..3)) {
            let read = can_read_doc(&u, level, &current);
            if level >= Level::DbAdmin {
                prop_assert!(read && can_write_doc(&u, level, Some(&current), &new));
            }
            if level == Level::None {
                prop_assert!(!read && !can_write_doc(&u, level, None, &new));
            }
            // A member can write only what they can read, before and after.
            if can_write_doc(&u, level, Some(&current), &new) && level == Level::Member {
                prop_assert!(read && can_read_doc(&u, level, &new));
            }
            if level == Level::Member {
                prop_assert_eq!(read, names_user(&u, &current));
                // Creating: only with a list that names the member.
                prop_assert_eq!(can_write_doc(&u, level, None, &new), names_user(&u, &new));
                // Updating: only when named now and afterwards.
                prop_assert_eq!(
                    can_write_doc(&u, level, Some(&current), &new),
                    names_user(&u, &current) && names_user(&u, &new)
                );
            }
        }

        #[test]
        fn a_list_names_a_user_exactly_through_their_principals(u in arb_user(), list in proptest::collection::vec(prop_oneof!["[a-f]", Just("_admin".to_string())], 0..4)) {
            let principals = principals(&u);
            // Each principal once, the name first.
            let mut unique = principals.clone();
            unique.sort();
            unique.dedup();
            prop_assert_eq!(unique.len(), principals.len());
            if let Some(name) = &u.name {
                prop_assert_eq!(principals.first(), Some(name));
            }
            // The store's index answers by principals; the decision by name and roles: they agree.
            prop_assert_eq!(
                principals.iter().any(|p| list.contains(p)),
                names_user(&u, &list)
            );
            // Anonymous users are named by no list.
            if u.is_anonymous() {
                prop_assert!(!can_read_doc(&u, Level::Member, &list));
            }
        }
    }
}
