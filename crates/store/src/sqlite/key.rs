//! Encryption at rest: the SQLite file encrypted page by page by SQLCipher (AES-256 with an
//! HMAC per page), which this build of SQLite is. Nothing here encrypts anything itself.
//!
//! A [`StoreKey`] is either a raw 256-bit key, given as 64 hex digits, used as is; or any other
//! text, a passphrase that SQLCipher stretches with PBKDF2-HMAC-SHA512 (256,000 iterations, its
//! default) on *every* connection it opens. Every connection to an encrypted file, the writer
//! and each reader, is keyed before its first statement ([`open`]).
//!
//! A file without a key is plain SQLite, exactly as before encryption existed. Opening checks
//! the file's first 16 bytes, which a plain SQLite file starts with and an encrypted one (random
//! salt) does not, so that a missing key, a wrong key and a key given for a plain file each get
//! their own message instead of SQLite's "file is not a database".

use std::io::Read;
use std::path::Path;

use rusqlite::{Connection, OpenFlags};

use crate::StoreError;

/// The first 16 bytes of every plain SQLite file.
const PLAIN_HEADER: &[u8; 16] = b"SQLite format 3\0";

/// The secret an encrypted store is opened with. Its `Debug` shows nothing of it.
#[derive(Clone)]
pub struct StoreKey {
    /// The value of `PRAGMA key`: `x'<64 hex>'` for a raw key, the passphrase otherwise.
    pragma: String,
}

impl std::fmt::Debug for StoreKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreKey(********)")
    }
}

impl StoreKey {
    /// A key from the text of a key file or variable. Surrounding whitespace (a final newline)
    /// is not part of it; 64 hex digits are a raw key, anything else a passphrase.
    pub fn new(text: &str) -> Result<StoreKey, StoreError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(StoreError::Key("the store key is empty".into()));
        }
        let pragma = if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            format!("x'{text}'")
        } else {
            text.to_owned()
        };
        Ok(StoreKey { pragma })
    }

    /// Whether this is a raw key (no key derivation when a connection opens).
    pub fn is_raw(&self) -> bool {
        self.pragma.starts_with("x'")
    }

    fn apply(&self, conn: &Connection, pragma: &str) -> rusqlite::Result<()> {
        conn.pragma_update(None, pragma, &self.pragma)
    }
}

/// What the file at `path` looks like before any key is tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// No file, or an empty one: it will be created, encrypted if a key is given.
    New,
    /// A plain SQLite file.
    Plain,
    /// Anything else: an encrypted file (or not a SQLite file at all).
    Encrypted,
}

/// Looks at the first bytes of the file at `path`.
pub fn file_kind(path: &Path) -> Result<FileKind, StoreError> {
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(FileKind::New),
        Err(e) => {
            return Err(StoreError::Corrupt(format!(
                "cannot read {}: {e}",
                path.display()
            )));
        }
    };
    let mut header = [0u8; 16];
    let mut got = 0;
    while got < header.len() {
        match file.read(&mut header[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) => {
                return Err(StoreError::Corrupt(format!(
                    "cannot read {}: {e}",
                    path.display()
                )));
            }
        }
    }
    Ok(match got {
        0 => FileKind::New,
        _ if &header == PLAIN_HEADER => FileKind::Plain,
        _ => FileKind::Encrypted,
    })
}

/// Opens a connection to `path` with `flags`, keyed with `key`, and reads the schema once so
/// that a wrong or missing key fails here, with a message saying which.
pub fn open(
    path: &Path,
    flags: OpenFlags,
    key: Option<&StoreKey>,
) -> Result<Connection, StoreError> {
    let kind = file_kind(path)?;
    match (kind, key) {
        (FileKind::Plain, Some(_)) => {
            return Err(StoreError::Key(format!(
                "{} is not encrypted, but a store key was given; encrypt it first with \
                 `outpost db rekey --new-key-file FILE`, or start without a key",
                path.display()
            )));
        }
        (FileKind::Encrypted, None) => {
            return Err(StoreError::Key(format!(
                "{} is encrypted (or is not a SQLite file): give its key with --key-file or \
                 OUTPOST_STORE_KEY",
                path.display()
            )));
        }
        _ => {}
    }
    let conn = Connection::open_with_flags(path, flags)?;
    // SQLCipher writes its own failures (a failed page check under a wrong key) to stderr;
    // the error returned here says what happened instead.
    conn.execute_batch("PRAGMA cipher_log_level = NONE;")?;
    if let Some(key) = key {
        key.apply(&conn, "key")?;
    }
    match conn.query_row("SELECT count(*) FROM sqlite_master", [], |_| Ok(())) {
        Ok(()) => Ok(conn),
        Err(e) if is_not_a_database(&e) && key.is_some() => Err(StoreError::Key(format!(
            "the store key does not open {} (wrong key)",
            path.display()
        ))),
        Err(e) => Err(e.into()),
    }
}

fn is_not_a_database(e: &rusqlite::Error) -> bool {
    matches!(
        e,
        rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::NotADatabase
    )
}

/// Changes the key of the encrypted store file at `path` from `old` to `new`, in place. The
/// file must not be open anywhere else (the server stopped): the journal is switched out of WAL
/// for the rekey, which needs the only connection; the store goes back to WAL when it next
/// opens.
pub fn rekey(path: &Path, old: &StoreKey, new: &StoreKey) -> Result<(), StoreError> {
    if file_kind(path)? == FileKind::New {
        return Err(StoreError::Corrupt(format!(
            "no store at {}",
            path.display()
        )));
    }
    let conn = open(path, OpenFlags::SQLITE_OPEN_READ_WRITE, Some(old))?;
    exclusive(&conn, path)?;
    new.apply(&conn, "rekey")?;
    drop(conn);
    // Proves the new key opens the file before saying it is done.
    open(path, OpenFlags::SQLITE_OPEN_READ_ONLY, Some(new)).map(drop)
}

/// Writes a copy of the whole store `conn` has open into a new file at `target` (replaced if
/// there), keyed with `key` (plain without one), with SQLCipher's `sqlcipher_export`.
pub(super) fn export(
    conn: &Connection,
    target: &Path,
    key: Option<&StoreKey>,
) -> Result<(), StoreError> {
    let _ = std::fs::remove_file(target);
    let name = target
        .to_str()
        .ok_or_else(|| StoreError::Corrupt(format!("{} is not a UTF-8 path", target.display())))?;
    let attach_key = key.map_or(String::new(), |k| k.pragma.clone());
    conn.execute(
        "ATTACH DATABASE ?1 AS exported KEY ?2",
        rusqlite::params![name, attach_key],
    )?;
    // `auto_vacuum` is a property of the file and must be set before its first table.
    conn.execute_batch(
        "PRAGMA exported.auto_vacuum = INCREMENTAL;
         SELECT sqlcipher_export('exported');
         DETACH DATABASE exported;",
    )?;
    Ok(())
}

/// Takes the file for this connection alone (leaving WAL mode needs it), failing with a clear
/// message when a server still has it open.
pub(super) fn exclusive(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    conn.execute_batch("PRAGMA busy_timeout = 0;")?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode = DELETE", [], |r| r.get(0))
        .map_err(|e| in_use(e, path))?;
    if !mode.eq_ignore_ascii_case("delete") {
        return Err(StoreError::Key(format!(
            "{} is in use by another process (stop the server first)",
            path.display()
        )));
    }
    Ok(())
}

fn in_use(e: rusqlite::Error, path: &Path) -> StoreError {
    match &e {
        rusqlite::Error::SqliteFailure(f, _)
            if matches!(
                f.code,
                rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
            ) =>
        {
            StoreError::Key(format!(
                "{} is in use by another process (stop the server first)",
                path.display()
            ))
        }
        _ => e.into(),
    }
}

/// Writes an encrypted copy (`encrypt`) of the plain store file at `path` keyed with `key`, or
/// a plain copy of an encrypted one (`decrypt`), with SQLCipher's `sqlcipher_export`, then puts
/// it in the original's place. The file must not be open anywhere else; the store goes back to
/// WAL when it next opens.
pub fn convert(path: &Path, key: &StoreKey, encrypt: bool) -> Result<(), StoreError> {
    let (from_key, to_key) = if encrypt {
        (None, Some(key))
    } else {
        (Some(key), None)
    };
    if file_kind(path)? == FileKind::New {
        return Err(StoreError::Corrupt(format!(
            "no store at {}",
            path.display()
        )));
    }
    // Read-write with create: the attached copy inherits these flags and must be created.
    let conn = open(path, OpenFlags::default(), from_key)?;
    exclusive(&conn, path)?;
    let tmp = path.with_extension("sqlite.converting");
    export(&conn, &tmp, to_key)?;
    drop(conn);
    // Proves the copy opens with its new key (or none) before it replaces the original.
    open(&tmp, OpenFlags::SQLITE_OPEN_READ_ONLY, to_key)?;
    std::fs::rename(&tmp, path).map_err(|e| {
        StoreError::Corrupt(format!(
            "cannot replace {} by its converted copy {}: {e}",
            path.display(),
            tmp.display()
        ))
    })?;
    Ok(())
}
