//! How the load generator reaches the server: plain TCP or TLS (trusting exactly the server's
//! certificate), and whether it offers permessage-deflate, so that `walcast bench` can compare
//! the transports against one gateway build.

use super::BenchError;
use std::path::Path;
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;
use tokio_util::either::Either;

#[derive(Clone, Default)]
pub struct Transport {
    /// TLS towards a server presenting the certificate this trusts.
    pub tls: Option<TlsConnector>,
    /// Offer permessage-deflate in the handshake.
    pub deflate: bool,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("tls", &self.tls.is_some())
            .field("deflate", &self.deflate)
            .finish()
    }
}

impl Transport {
    /// A TLS client trusting the certificate(s) in `cert_pem` (the server's own, self-signed
    /// for a benchmark); names are checked against `localhost`.
    pub fn trusting(cert_pem: &Path, deflate: bool) -> Result<Transport, BenchError> {
        let pem = std::fs::read(cert_pem).map_err(BenchError::Io)?;
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|_| BenchError::Protocol("invalid PEM certificate"))?;
            roots
                .add(cert)
                .map_err(|_| BenchError::Protocol("unusable certificate"))?;
        }
        // The gateway's provider (see crate::tls): one crypto implementation in the binary.
        #[allow(deprecated)]
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|_| BenchError::Protocol("TLS configuration"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Transport {
            tls: Some(TlsConnector::from(Arc::new(config))),
            deflate,
        })
    }

    pub async fn wrap(&self, tcp: TcpStream) -> Result<BenchStream, BenchError> {
        match &self.tls {
            None => Ok(Either::Left(tcp)),
            Some(connector) => {
                let name = ServerName::try_from("localhost")
                    .map_err(|_| BenchError::Protocol("server name"))?;
                let tls = connector
                    .connect(name, tcp)
                    .await
                    .map_err(BenchError::Connect)?;
                Ok(Either::Right(Box::new(tls)))
            }
        }
    }
}

/// A connection of the load generator, plain or TLS.
pub type BenchStream = Either<TcpStream, Box<TlsStream<TcpStream>>>;
