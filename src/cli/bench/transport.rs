//! How the load generator reaches the server: plain TCP or TLS (trusting exactly the server's
//! certificate), and whether it offers permessage-deflate, so that `walcast bench` can compare
//! the transports against one gateway build.

use super::BenchError;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

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
            None => Ok(BenchStream::Plain(tcp)),
            Some(connector) => {
                let name = ServerName::try_from("localhost")
                    .map_err(|_| BenchError::Protocol("server name"))?;
                let tls = connector
                    .connect(name, tcp)
                    .await
                    .map_err(BenchError::Connect)?;
                Ok(BenchStream::Tls(Box::new(tls)))
            }
        }
    }
}

/// A connection of the load generator, plain or TLS.
pub enum BenchStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for BenchStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            BenchStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            BenchStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for BenchStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            BenchStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            BenchStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            BenchStream::Plain(s) => Pin::new(s).poll_flush(cx),
            BenchStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            BenchStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            BenchStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
