//! The naming rules for databases and document ids.

use std::sync::LazyLock;

use regex::Regex;

/// CouchDB's longest database name.
pub const MAX_DB_NAME_LEN: usize = 238;

/// Why a database name or document id is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The database name breaks CouchDB's rule.
    #[error(
        "Name: '{0}'. Only lowercase characters (a-z), digits (0-9), and any of the characters _, $, (, ), +, -, and / are allowed. Must begin with a letter."
    )]
    IllegalDbName(String),
    /// The document id is empty.
    #[error("Document id must not be empty")]
    EmptyId,
    /// The document id starts with `_` but is not a design or local document.
    #[error("Only reserved document ids may start with underscore.")]
    ReservedId,
}

/// Checks a database name against CouchDB's rule (`^[a-z][a-z0-9_$()+/-]*$`); the system
/// databases `_users`, `_replicator` and `_global_changes` are allowed too.
pub fn validate_db_name(name: &str) -> Result<(), NameError> {
    static RULE: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r"^[a-z][a-z0-9_$()+/-]*$").expect("static regex"));
    let system = matches!(name, "_users" | "_replicator" | "_global_changes");
    if system || (name.len() <= MAX_DB_NAME_LEN && RULE.is_match(name)) {
        Ok(())
    } else {
        Err(NameError::IllegalDbName(name.to_string()))
    }
}

/// What kind of document an id names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DocKind {
    /// An ordinary, replicated document.
    Normal,
    /// A `_design/` document: replicated like any other.
    Design,
    /// A `_local/` document: never replicated, never in `_changes` or `_all_docs`.
    Local,
}

/// Classifies a document id, refusing ids CouchDB refuses.
pub fn classify_doc_id(id: &str) -> Result<DocKind, NameError> {
    if id.is_empty() {
        return Err(NameError::EmptyId);
    }
    if let Some(rest) = id.strip_prefix("_design/") {
        return if rest.is_empty() {
            Err(NameError::EmptyId)
        } else {
            Ok(DocKind::Design)
        };
    }
    if let Some(rest) = id.strip_prefix("_local/") {
        return if rest.is_empty() {
            Err(NameError::EmptyId)
        } else {
            Ok(DocKind::Local)
        };
    }
    if id.starts_with('_') {
        return Err(NameError::ReservedId);
    }
    Ok(DocKind::Normal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_names() {
        for ok in ["a", "abc", "a1_$()+-/b", "_users", "_replicator"] {
            assert_eq!(validate_db_name(ok), Ok(()), "{ok}");
        }
        for bad in ["", "A", "1a", "_foo", "a b", "a.b", "aé", &"a".repeat(239)] {
            assert!(validate_db_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn document_ids() {
        assert_eq!(classify_doc_id("a/b c%é"), Ok(DocKind::Normal));
        assert_eq!(classify_doc_id("_design/x"), Ok(DocKind::Design));
        assert_eq!(classify_doc_id("_local/x"), Ok(DocKind::Local));
        assert_eq!(classify_doc_id("_foo"), Err(NameError::ReservedId));
        assert_eq!(classify_doc_id("_design/"), Err(NameError::EmptyId));
        assert_eq!(classify_doc_id(""), Err(NameError::EmptyId));
    }
}
