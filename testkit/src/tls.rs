//! TLS clients of the kit: one that trusts the CA a server under test generated, for the
//! harness, and one that accepts any certificate, for `vod-kubelet`'s HTTPS probes (like a
//! kubelet's, they ask whether a container answers, not who it is).

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WantsClientCert;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ConfigBuilder, DigitallySignedStruct, SignatureScheme};
use std::path::Path;
use std::sync::{Arc, OnceLock};

/// A client configuration trusting only the certificates in the PEM file `ca`.
pub fn client_tls(ca: &Path) -> Arc<ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca)
        .unwrap_or_else(|e| panic!("reading the server's CA {}: {e}", ca.display()));
    for cert in certs {
        let cert = cert.unwrap_or_else(|e| panic!("parsing {}: {e}", ca.display()));
        roots
            .add(cert)
            .expect("the server's CA is a valid certificate");
    }
    Arc::new(
        builder(provider())
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// A connector that completes a handshake with any server certificate, shared by all callers.
pub fn accept_any() -> tokio_rustls::TlsConnector {
    static CONFIG: OnceLock<Arc<ClientConfig>> = OnceLock::new();
    let cfg = CONFIG.get_or_init(|| {
        let provider = provider();
        let verifier = Arc::new(AcceptAny(provider.clone()));
        let cfg: ConfigBuilder<ClientConfig, WantsClientCert> = builder(provider)
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        Arc::new(cfg.with_no_client_auth())
    });
    tokio_rustls::TlsConnector::from(cfg.clone())
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn builder(provider: Arc<CryptoProvider>) -> ConfigBuilder<ClientConfig, rustls::WantsVerifier> {
    ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        // ring supports both default protocol versions, so this cannot fail.
        .expect("ring supports TLS 1.2 and 1.3")
}

/// Checks the handshake's signatures (a broken handshake still fails) but not who signed.
#[derive(Debug)]
struct AcceptAny(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algs = &self.0.signature_verification_algorithms;
        verify_tls12_signature(message, cert, dss, algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algs = &self.0.signature_verification_algorithms;
        verify_tls13_signature(message, cert, dss, algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
