//! Encryption at rest of queued requests and stored answers: AES-256-GCM with a random 96-bit
//! nonce per record and the entry id as associated data, so a record cannot be moved to another
//! row without failing to open.
//!
//! The key comes from a file, from the environment (base64), or is created on first start in the
//! data directory with owner-only permissions.

use std::io::Write;
use std::path::{Path, PathBuf};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

use crate::error::{Error, Result};

/// Length of the random nonce stored in front of each ciphertext.
const NONCE_LEN: usize = 12;
/// Length of the magic and key id in front of the nonce.
const HEADER_LEN: usize = 6;

/// Name of the key file created in the data directory when no key is given.
pub const DEFAULT_KEY_FILE: &str = "gateway.key";

/// Where the encryption key comes from.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// A file holding the key as base64 text (created with mode 0600 if missing).
    File(PathBuf),
    /// The key itself as base64 text, typically from an environment variable.
    Base64(String),
    /// `gateway.key` in the data directory, created on first start.
    DataDir,
}

/// Seals and opens records with one AES-256-GCM key, and computes keyed hashes
/// (HMAC-SHA-256) for values the queue must compare without storing them in clear: ordering
/// keys, idempotency scopes, body fingerprints.
///
/// Every sealed record starts with [`RECORD_MAGIC`] and the 4-byte id of the key that sealed
/// it, so a record sealed with another key is reported as such instead of as damage, and keys
/// can be rotated (`outpost queue rekey`). The hashing key is not this key: it is a random key
/// kept in the queue, sealed with this one ([`Cipher::set_index_key`]), so hashes survive a
/// rotation.
#[derive(Clone)]
pub struct Cipher {
    aead: Aes256Gcm,
    /// A short public fingerprint of the key, written in front of every record.
    key_id: [u8; 4],
    /// Until the queue's own hashing key is loaded, one derived from this key (for tests and
    /// tools that hash nothing stored).
    index: ring::hmac::Key,
}

/// The first bytes of a record sealed with a key id (format 3 on).
pub const RECORD_MAGIC: &[u8; 2] = b"k1";

impl std::fmt::Debug for Cipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key never appears in logs or debug output; its id is public.
        write!(f, "Cipher(key id {})", self.key_id_hex())
    }
}

impl Cipher {
    /// A cipher for this 256-bit key.
    pub fn new(key: &[u8; 32]) -> Self {
        let master = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
        let derived = ring::hmac::sign(&master, b"outpost-gateway/index-key/v1");
        let id = ring::hmac::sign(&master, b"outpost-gateway/key-id/v1");
        let mut key_id = [0u8; 4];
        key_id.copy_from_slice(&id.as_ref()[..4]);
        Self {
            aead: Aes256Gcm::new(key.into()),
            key_id,
            index: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, derived.as_ref()),
        }
    }

    /// The key's public id, as hex.
    pub fn key_id_hex(&self) -> String {
        self.key_id.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Uses `key` for [`Cipher::mac`] from now on (the queue's stored hashing key).
    pub fn set_index_key(&mut self, key: &[u8]) {
        self.index = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    }

    /// A keyed hash of `parts` (each length-prefixed, so `("ab", "c")` and `("a", "bc")`
    /// differ), as lowercase hex: equal inputs give equal hashes, and without the key nothing
    /// about the input can be learned or guessed from it.
    pub fn mac(&self, parts: &[&[u8]]) -> String {
        let mut ctx = ring::hmac::Context::with_key(&self.index);
        for part in parts {
            ctx.update(&(part.len() as u64).to_be_bytes());
            ctx.update(part);
        }
        ctx.sign()
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// Loads (or creates) the key described by `source`.
    pub fn load(source: &KeySource, data_dir: &Path) -> Result<Self> {
        let key = match source {
            KeySource::Base64(text) => decode_key(text)?,
            KeySource::File(path) => load_or_create(path)?,
            KeySource::DataDir => load_or_create(&data_dir.join(DEFAULT_KEY_FILE))?,
        };
        Ok(Self::new(&key))
    }

    /// Encrypts `plaintext`, binding it to `aad`; the result is
    /// `RECORD_MAGIC || key id || nonce || ciphertext || tag`.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let nonce: [u8; NONCE_LEN] = rand::random();
        let sealed = self
            .aead
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .expect("aes-gcm encryption cannot fail for in-memory buffers");
        let mut out = Vec::with_capacity(HEADER_LEN + NONCE_LEN + sealed.len());
        out.extend_from_slice(RECORD_MAGIC);
        out.extend_from_slice(&self.key_id);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    /// Decrypts a record made by [`Cipher::seal`] with the same `aad`. Records of format 2 and
    /// earlier (no key id) are opened too.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>> {
        if sealed.len() >= HEADER_LEN + NONCE_LEN && sealed.starts_with(RECORD_MAGIC) {
            let id = &sealed[RECORD_MAGIC.len()..HEADER_LEN];
            if id == self.key_id {
                return self.open_raw(aad, &sealed[HEADER_LEN..]);
            }
            // A record of format 2 whose random nonce happens to start like a header opens
            // below; anything else was sealed with another key.
            return self
                .open_raw(aad, sealed)
                .map_err(|_| Error::OtherKey(id.iter().map(|b| format!("{b:02x}")).collect()));
        }
        self.open_raw(aad, sealed)
    }

    fn open_raw(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>> {
        if sealed.len() < NONCE_LEN {
            return Err(Error::Corrupt("encrypted record is too short".into()));
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        self.aead
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad,
                },
            )
            .map_err(|_| Error::WrongKey)
    }
}

/// Generates a new random key as base64 text.
pub fn generate_key_text() -> String {
    let key: [u8; 32] = rand::random();
    B64.encode(key)
}

fn decode_key(text: &str) -> Result<[u8; 32]> {
    let bytes = B64
        .decode(text.trim())
        .map_err(|_| Error::InvalidKey("not valid base64".into()))?;
    <[u8; 32]>::try_from(bytes.as_slice())
        .map_err(|_| Error::InvalidKey(format!("expected 32 bytes, got {}", bytes.len())))
}

fn load_or_create(path: &Path) -> Result<[u8; 32]> {
    let file_err = |source| Error::File {
        path: path.to_owned(),
        source,
    };
    match std::fs::read_to_string(path) {
        Ok(text) => {
            warn_if_shared(path);
            decode_key(&text)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(file_err)?;
            }
            let text = generate_key_text();
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                options.mode(0o600);
            }
            match options.open(path) {
                Ok(mut file) => {
                    file.write_all(text.as_bytes())
                        .and_then(|()| file.write_all(b"\n"))
                        .and_then(|()| file.sync_all())
                        .map_err(file_err)?;
                    tracing::info!(path = %path.display(), "created a new queue encryption key");
                    decode_key(&text)
                }
                // Another process created it between our read and our create: use theirs.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    decode_key(&std::fs::read_to_string(path).map_err(file_err)?)
                }
                Err(e) => Err(file_err(e)),
            }
        }
        Err(e) => Err(file_err(e)),
    }
}

fn warn_if_shared(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path)
            && meta.permissions().mode() & 0o077 != 0
        {
            tracing::warn!(path = %path.display(), "the key file is readable by other users");
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_and_binding() {
        let cipher = Cipher::new(&[7; 32]);
        let sealed = cipher.seal(b"id-1", b"secret body");
        assert_eq!(cipher.open(b"id-1", &sealed).unwrap(), b"secret body");
        assert!(matches!(
            cipher.open(b"id-2", &sealed),
            Err(Error::WrongKey)
        ));
        let other = Cipher::new(&[8; 32]);
        assert!(matches!(
            other.open(b"id-1", &sealed),
            Err(Error::OtherKey(_))
        ));
        assert!(!sealed.windows(6).any(|w| w == b"secret"));
    }

    #[test]
    fn records_name_their_key_and_older_records_still_open() {
        let a = Cipher::new(&[7; 32]);
        let b = Cipher::new(&[8; 32]);
        assert_ne!(a.key_id_hex(), b.key_id_hex());
        let sealed = a.seal(b"x", b"y");
        assert!(sealed.starts_with(RECORD_MAGIC));
        match b.open(b"x", &sealed) {
            Err(Error::OtherKey(id)) => assert_eq!(id, a.key_id_hex()),
            other => panic!("{other:?}"),
        }
        // A record of format 2: nonce and ciphertext only.
        let legacy = sealed[HEADER_LEN..].to_vec();
        assert_eq!(a.open(b"x", &legacy).unwrap(), b"y");
    }

    #[test]
    fn keyed_hashes_depend_on_key_and_framing() {
        let a = Cipher::new(&[7; 32]);
        let b = Cipher::new(&[8; 32]);
        assert_eq!(a.mac(&[b"x", b"y"]), a.mac(&[b"x", b"y"]));
        assert_ne!(a.mac(&[b"x", b"y"]), b.mac(&[b"x", b"y"]));
        assert_ne!(a.mac(&[b"ab", b"c"]), a.mac(&[b"a", b"bc"]));
        assert_eq!(a.mac(&[b"x"]).len(), 64);
    }

    #[test]
    fn key_file_is_created_owner_only_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let a = Cipher::load(&KeySource::DataDir, dir.path()).unwrap();
        let b = Cipher::load(&KeySource::DataDir, dir.path()).unwrap();
        let sealed = a.seal(b"x", b"y");
        assert_eq!(b.open(b"x", &sealed).unwrap(), b"y");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(DEFAULT_KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn bad_keys_are_rejected() {
        assert!(matches!(decode_key("!!"), Err(Error::InvalidKey(_))));
        assert!(matches!(decode_key("AAAA"), Err(Error::InvalidKey(_))));
        assert!(decode_key(&generate_key_text()).is_ok());
    }
}
