//! TLS on the listener (rustls with the `ring` provider): the certificate chain and key come
//! from PEM files and are re-read on demand (SIGHUP) into a store every new handshake consults,
//! so a renewed certificate is served without restarting and without touching open connections.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use tokio_rustls::rustls::crypto::{ring, CryptoProvider};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

/// The PEM files named by `--tls-cert` and `--tls-key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Every error is permanent until the files are fixed; at start-up it stops the gateway, on
/// reload the certificate in use stays.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no PEM certificate in {0}")]
    NoCertificate(PathBuf),
    #[error("invalid PEM in {path}")]
    Pem {
        path: PathBuf,
        #[source]
        source: tokio_rustls::rustls::pki_types::pem::Error,
    },
    #[error("no usable private key in {path} for the certificate in {cert}")]
    Key {
        path: PathBuf,
        cert: PathBuf,
        #[source]
        source: tokio_rustls::rustls::Error,
    },
    #[error("cannot configure TLS")]
    Config(#[source] tokio_rustls::rustls::Error),
}

/// The certificate served to every new handshake; replaced whole by [`CertificateStore::reload`].
pub(crate) struct CertificateStore {
    files: TlsFiles,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
}

impl fmt::Debug for CertificateStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateStore")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl CertificateStore {
    pub fn open(files: TlsFiles) -> Result<Arc<CertificateStore>, TlsError> {
        // ring, deliberately: it builds with a C compiler alone (aws-lc-rs needs cmake and
        // more), and rustls deprecates it only for lacking post-quantum key exchange.
        #[allow(deprecated)]
        let provider = Arc::new(ring::default_provider());
        let current = load(&files, &provider)?;
        Ok(Arc::new(CertificateStore {
            files,
            provider,
            current: RwLock::new(current),
        }))
    }

    /// Re-reads both files. On error the previous certificate keeps being served.
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = load(&self.files, &self.provider)?;
        // Replacing an Arc cannot leave the value half-written, so a poisoned lock is usable.
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        Ok(())
    }

    /// The end-entity certificate now served (DER).
    #[cfg(test)]
    fn served(&self) -> CertificateDer<'static> {
        let current = self.current.read().unwrap_or_else(|p| p.into_inner());
        current.cert[0].clone()
    }

    /// An acceptor for HTTP/1.1 over TLS 1.2 and 1.3 that consults this store per handshake.
    pub fn acceptor(self: &Arc<Self>) -> Result<TlsAcceptor, TlsError> {
        let mut config = ServerConfig::builder_with_provider(Arc::clone(&self.provider))
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Config)?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(self) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsAcceptor::from(Arc::new(config)))
    }
}

impl ResolvesServerCert for CertificateStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(
            &self.current.read().unwrap_or_else(|p| p.into_inner()),
        ))
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

fn load(files: &TlsFiles, provider: &CryptoProvider) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = CertificateDer::pem_slice_iter(&read(&files.cert)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            path: files.cert.clone(),
            source,
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate(files.cert.clone()));
    }
    let key =
        PrivateKeyDer::from_pem_slice(&read(&files.key)?).map_err(|source| TlsError::Pem {
            path: files.key.clone(),
            source,
        })?;
    let certified =
        CertifiedKey::from_der(chain, key, provider).map_err(|source| TlsError::Key {
            path: files.key.clone(),
            cert: files.cert.clone(),
            source,
        })?;
    Ok(Arc::new(certified))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &Path, name: &str) -> (TlsFiles, Vec<u8>) {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let files = TlsFiles {
            cert: dir.join(format!("{name}.crt")),
            key: dir.join(format!("{name}.key")),
        };
        std::fs::write(&files.cert, cert.cert.pem()).unwrap();
        std::fs::write(&files.key, cert.signing_key.serialize_pem()).unwrap();
        (files, cert.cert.der().to_vec())
    }

    #[test]
    fn loads_and_reloads_pem_files() {
        let dir = tempfile::tempdir().unwrap();
        let (files, first) = write_pair(dir.path(), "a");
        let store = CertificateStore::open(files.clone()).unwrap();
        assert_eq!(store.served().as_ref(), &first[..]);
        assert!(store.acceptor().is_ok());

        let (renewed, second) = write_pair(dir.path(), "b");
        std::fs::copy(&renewed.cert, &files.cert).unwrap();
        std::fs::copy(&renewed.key, &files.key).unwrap();
        store.reload().unwrap();
        assert_eq!(store.served().as_ref(), &second[..]);

        // A broken file on reload keeps the certificate in use.
        std::fs::write(&files.key, "not a key").unwrap();
        assert!(matches!(store.reload(), Err(TlsError::Pem { .. })));
        assert_eq!(store.served().as_ref(), &second[..]);
    }

    #[test]
    fn clear_errors_for_bad_files() {
        let dir = tempfile::tempdir().unwrap();
        let (a, _) = write_pair(dir.path(), "a");
        let (b, _) = write_pair(dir.path(), "b");
        let missing = TlsFiles {
            cert: dir.path().join("missing.crt"),
            key: a.key.clone(),
        };
        assert!(matches!(
            CertificateStore::open(missing),
            Err(TlsError::Read { .. })
        ));
        let mismatched = TlsFiles {
            cert: a.cert.clone(),
            key: b.key.clone(),
        };
        assert!(matches!(
            CertificateStore::open(mismatched),
            Err(TlsError::Key { .. })
        ));
        let swapped = TlsFiles {
            cert: a.key.clone(),
            key: a.cert.clone(),
        };
        assert!(matches!(
            CertificateStore::open(swapped),
            Err(TlsError::NoCertificate(_))
        ));
    }
}
