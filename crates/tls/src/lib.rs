//! TLS for Outpost's listeners, on rustls with the *ring* provider.
//!
//! [`Tls::load`] reads a certificate chain and its private key from PEM files; the resulting
//! server configuration offers HTTP/2 (`h2`) and HTTP/1.1 through ALPN. [`Tls::reload`] reads
//! the same files again and swaps the certificate in place, so a renewed certificate is served
//! to every new connection without closing the listener; connections already open keep the
//! certificate they were set up with. A reload that fails (a half-written file, a key that does
//! not match) changes nothing and the previous certificate stays in use.
//!
//! The files are named by the operator and read whole; nothing here logs their contents.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
pub use tokio_rustls::TlsAcceptor;
pub use tokio_rustls::server::TlsStream;

/// The ALPN protocol id of HTTP/2.
pub const ALPN_H2: &[u8] = b"h2";
/// The ALPN protocol id of HTTP/1.1.
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

/// Why a certificate or key could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The certificate file holds no `CERTIFICATE` block, or one that is not valid PEM.
    #[error("{}: no PEM certificate found", path.display())]
    NoCertificate { path: PathBuf },
    /// The key file holds no private key (PKCS#8, PKCS#1 or SEC1 PEM block).
    #[error("{}: no PEM private key found", path.display())]
    NoKey { path: PathBuf },
    /// The key is of a kind rustls cannot sign with, or it does not belong to the certificate.
    #[error("{} does not fit {}: {reason}", key.display(), cert.display())]
    Unusable {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
}

/// A TLS server configuration whose certificate can be reloaded from its files.
#[derive(Debug, Clone)]
pub struct Tls {
    cert_path: PathBuf,
    key_path: PathBuf,
    /// The certificate every new handshake gets; swapped by [`Tls::reload`].
    current: Arc<Current>,
    /// Built once: the certificate is looked up through `current` on every handshake.
    config: Arc<ServerConfig>,
}

/// The certificate in use, behind a lock held only to clone or replace the `Arc`.
#[derive(Debug)]
struct Current(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for Current {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().unwrap_or_else(|e| e.into_inner()).clone())
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl Tls {
    /// Reads the certificate chain (leaf first) from `cert` and its private key from `key`, both
    /// PEM, and checks that they belong together.
    pub fn load(cert: &Path, key: &Path) -> Result<Tls, TlsError> {
        let provider = provider();
        let certified = read_pair(cert, key, &provider)?;
        let current = Arc::new(Current(RwLock::new(Arc::new(certified))));
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Unusable {
                cert: cert.to_owned(),
                key: key.to_owned(),
                reason: e.to_string(),
            })?
            .with_no_client_auth()
            .with_cert_resolver(current.clone());
        config.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP1.to_vec()];
        Ok(Tls {
            cert_path: cert.to_owned(),
            key_path: key.to_owned(),
            current,
            config: Arc::new(config),
        })
    }

    /// Reads the files again and serves the new certificate to every connection made from now
    /// on. On error the certificate in use is kept.
    pub fn reload(&self) -> Result<(), TlsError> {
        let certified = read_pair(&self.cert_path, &self.key_path, &provider())?;
        *self.current.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(certified);
        Ok(())
    }

    /// The acceptor that performs handshakes with the current certificate.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.config.clone())
    }

    /// The certificate file.
    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

fn read_pair(
    cert_path: &Path,
    key_path: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let pem = read(cert_path)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|_| TlsError::NoCertificate {
            path: cert_path.to_owned(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert_path.to_owned(),
        });
    }
    let pem = read(key_path)?;
    let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|_| TlsError::NoKey {
        path: key_path.to_owned(),
    })?;
    CertifiedKey::from_der(chain, key, provider).map_err(|e| TlsError::Unusable {
        cert: cert_path.to_owned(),
        key: key_path.to_owned(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn self_signed(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let rcgen::CertifiedKey { cert, signing_key } =
            rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let (c, k) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, signing_key.serialize_pem()).unwrap();
        (c, k)
    }

    fn served(tls: &Tls) -> Vec<u8> {
        tls.current.0.read().unwrap().cert[0].to_vec()
    }

    #[test]
    fn loads_a_pair_and_offers_h2_then_http1() {
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = self_signed(dir.path(), "a");
        let tls = Tls::load(&c, &k).unwrap();
        assert_eq!(
            tls.config.alpn_protocols,
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        );
    }

    #[test]
    fn a_key_of_another_certificate_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (c, _) = self_signed(dir.path(), "a");
        let (_, k) = self_signed(dir.path(), "b");
        let err = Tls::load(&c, &k).unwrap_err();
        assert!(matches!(err, TlsError::Unusable { .. }), "{err}");
    }

    #[test]
    fn files_without_pem_blocks_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = self_signed(dir.path(), "a");
        let junk = dir.path().join("junk");
        std::fs::write(&junk, "not pem").unwrap();
        assert!(matches!(
            Tls::load(&junk, &k),
            Err(TlsError::NoCertificate { .. })
        ));
        assert!(matches!(Tls::load(&c, &junk), Err(TlsError::NoKey { .. })));
        let missing = dir.path().join("missing");
        assert!(matches!(
            Tls::load(&missing, &k),
            Err(TlsError::Read { .. })
        ));
    }

    #[test]
    fn reload_swaps_the_certificate_and_a_failed_reload_keeps_it() {
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = self_signed(dir.path(), "a");
        let tls = Tls::load(&c, &k).unwrap();
        let first = served(&tls);
        let (c2, k2) = self_signed(dir.path(), "b");
        std::fs::copy(&c2, &c).unwrap();
        // The certificate alone changed: the old key does not fit it, so nothing changes.
        assert!(tls.reload().is_err());
        assert_eq!(served(&tls), first);
        std::fs::copy(&k2, &k).unwrap();
        tls.reload().unwrap();
        assert_ne!(served(&tls), first);
        assert_eq!(
            served(&tls),
            std::fs::read(&c2)
                .map(|pem| {
                    CertificateDer::pem_slice_iter(&pem)
                        .next()
                        .unwrap()
                        .unwrap()
                        .to_vec()
                })
                .unwrap()
        );
    }
}
