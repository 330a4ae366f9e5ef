//! The sync store's encryption key, from a file (`--key-file`) or the `OUTPOST_STORE_KEY`
//! variable, never from a flag's value (which any user can read in the process list).

use std::path::Path;

use anyhow::{Context, bail};
use outpost_store::sqlite::StoreKey;

/// The variable holding the key itself.
pub const KEY_VAR: &str = "OUTPOST_STORE_KEY";

/// The key given by `file` or, failing that, by `var`; `None` when neither is set. Both set is
/// an error, as it is ambiguous which one the operator meant.
pub fn load(file: Option<&Path>, var: &str) -> anyhow::Result<Option<StoreKey>> {
    let from_env = std::env::var(var).ok().filter(|v| !v.is_empty());
    match (file, from_env) {
        (Some(_), Some(_)) => {
            bail!("both a key file and {var} are set; give the store key one way only")
        }
        (Some(path), None) => {
            warn_if_readable_by_others(path);
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the key file {}", path.display()))?;
            StoreKey::new(&text)
                .map(Some)
                .with_context(|| format!("the key file {}", path.display()))
        }
        (None, Some(text)) => StoreKey::new(&text).map(Some).context(var.to_owned()),
        (None, None) => Ok(None),
    }
}

#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(
            file = %path.display(),
            "the store key file can be read by other users; make it 0600"
        );
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_path: &Path) {}
