//! wss://: the rustls client configuration every connection's session is made from (the same
//! rustls and crypto provider as the server, so a wss load measures the server, not a slower
//! client stack).

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// Trusts `ca` (a PEM file) or, without it, any certificate (loopback benchmarks only). Offers
/// ALPN `http/1.1`. Exits with a message on a CA that cannot be read.
pub(crate) fn client_config(ca: Option<&str>) -> Arc<ClientConfig> {
    #[cfg(not(feature = "aws-lc-rs"))]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    #[cfg(feature = "aws-lc-rs")]
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let b = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .expect("rustls protocol versions");
    let mut c = match ca {
        Some(path) => {
            let mut roots = RootCertStore::empty();
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|i| i.collect::<Result<Vec<_>, _>>())
                .unwrap_or_else(|e| {
                    eprintln!("loadgen: --ca {path}: {e}");
                    std::process::exit(2)
                });
            for cert in certs {
                roots.add(cert).unwrap_or_else(|e| {
                    eprintln!("loadgen: --ca {path}: {e}");
                    std::process::exit(2)
                });
            }
            b.with_root_certificates(roots).with_no_client_auth()
        }
        None => b
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth(),
    };
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    // Every connection's handshake is a full one (what `--churn` measures).
    c.resumption = rustls::client::Resumption::disabled();
    Arc::new(c)
}

/// The name a session is for: the URL's host (an IP address or a DNS name).
pub(crate) fn server_name(host: &str) -> ServerName<'static> {
    let h = host.rsplit_once(':').map_or(host, |(h, _)| h).trim_matches(['[', ']']);
    ServerName::try_from(h.to_string()).unwrap_or_else(|_| {
        eprintln!("loadgen: {host:?} is no TLS server name");
        std::process::exit(2)
    })
}

/// Accepts any certificate (signatures still checked): no `--ca` given.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
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
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
