//! wss://: the rustls client configuration every connection's session is made from (the same
//! rustls and crypto provider as the server, so a wss load measures the server, not a slower
//! client stack).

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// Trusts `ca` (a PEM file) or, without it, any certificate (loopback benchmarks only; with
/// `verify` false not even the handshake signature is checked). Offers
/// ALPN `http/1.1`, and the TLS 1.3 suites in browsers' order (Chrome's and Firefox's:
/// AES-128-GCM first; rustls' own default puts AES-256-GCM-SHA384 first), so a server that
/// follows the client's order, as Sockeye and Bun do, negotiates what browsers get. Exits with
/// a message on a CA that cannot be read.
pub(crate) fn client_config(ca: Option<&str>, verify: bool) -> Arc<ClientConfig> {
    #[cfg(not(feature = "aws-lc-rs"))]
    let mut provider = rustls::crypto::ring::default_provider();
    #[cfg(feature = "aws-lc-rs")]
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.cipher_suites.sort_by_key(|s| browser_rank(s.suite()));
    let provider = Arc::new(provider);
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
            .with_custom_certificate_verifier(Arc::new(AnyCertificate { provider, verify }))
            .with_no_client_auth(),
    };
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    // Every connection's handshake is a full one (what `--churn` measures).
    c.resumption = rustls::client::Resumption::disabled();
    Arc::new(c)
}

/// Where a suite comes in browsers' offers (TLS 1.3 first, AES-128-GCM, AES-256-GCM,
/// ChaCha20); the sort is stable, so TLS 1.2 suites keep rustls' order after them.
fn browser_rank(suite: rustls::CipherSuite) -> u8 {
    use rustls::CipherSuite as C;
    match suite {
        C::TLS13_AES_128_GCM_SHA256 => 0,
        C::TLS13_AES_256_GCM_SHA384 => 1,
        C::TLS13_CHACHA20_POLY1305_SHA256 => 2,
        _ => 3,
    }
}

/// The name a session is for: the URL's host (an IP address or a DNS name).
pub(crate) fn server_name(host: &str) -> ServerName<'static> {
    let h = host.rsplit_once(':').map_or(host, |(h, _)| h).trim_matches(['[', ']']);
    ServerName::try_from(h.to_string()).unwrap_or_else(|_| {
        eprintln!("loadgen: {host:?} is no TLS server name");
        std::process::exit(2)
    })
}

/// Accepts any certificate: no `--ca` given. The handshake signature is still checked unless
/// `verify` is false (`--no-verify`).
#[derive(Debug)]
struct AnyCertificate {
    provider: Arc<rustls::crypto::CryptoProvider>,
    verify: bool,
}

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
        if !self.verify {
            return Ok(HandshakeSignatureValid::assertion());
        }
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        if !self.verify {
            return Ok(HandshakeSignatureValid::assertion());
        }
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suites_are_offered_in_browsers_order() {
        let c = client_config(None, true);
        let suites: Vec<_> = c.crypto_provider().cipher_suites.iter().map(|s| s.suite()).collect();
        use rustls::CipherSuite as C;
        assert_eq!(
            suites[..3],
            [
                C::TLS13_AES_128_GCM_SHA256,
                C::TLS13_AES_256_GCM_SHA384,
                C::TLS13_CHACHA20_POLY1305_SHA256
            ]
        );
        assert!(suites[3..].iter().all(|s| browser_rank(*s) == 3), "TLS 1.2 after: {suites:?}");
    }

    /// A server that signs its handshake with a key its certificate does not name: the
    /// loadgen without `--ca` refuses it (the signature is still checked), with `--no-verify`
    /// it completes the handshake.
    #[test]
    fn no_verify_skips_the_signature_check() {
        #[derive(Debug)]
        struct Wrong(Arc<rustls::sign::CertifiedKey>);
        impl rustls::server::ResolvesServerCert for Wrong {
            fn resolve(
                &self,
                _: rustls::server::ClientHello<'_>,
            ) -> Option<Arc<rustls::sign::CertifiedKey>> {
                Some(Arc::clone(&self.0))
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let named = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
            .unwrap()
            .self_signed(&named)
            .unwrap();
        let other = rcgen::KeyPair::generate().unwrap();
        let der = rustls::pki_types::PrivateKeyDer::Pkcs8(other.serialize_der().into());
        let signing = provider.key_provider.load_private_key(der).unwrap();
        let key = rustls::sign::CertifiedKey::new(vec![cert.der().clone()], signing);
        let server = Arc::new(
            rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_cert_resolver(Arc::new(Wrong(Arc::new(key)))),
        );
        let handshake = |verify| -> Result<(), rustls::Error> {
            let mut c = rustls::ClientConnection::new(
                client_config(None, verify),
                server_name("localhost"),
            )?;
            let mut s = rustls::ServerConnection::new(Arc::clone(&server))?;
            for _ in 0..10 {
                let mut buf = Vec::new();
                c.write_tls(&mut buf).unwrap();
                s.read_tls(&mut &buf[..]).unwrap();
                s.process_new_packets()?;
                buf.clear();
                s.write_tls(&mut buf).unwrap();
                c.read_tls(&mut &buf[..]).unwrap();
                c.process_new_packets()?;
                if !c.is_handshaking() {
                    return Ok(());
                }
            }
            panic!("the handshake never finished")
        };
        assert!(handshake(true).is_err(), "a signature that does not verify was accepted");
        handshake(false).expect("--no-verify completes the handshake");
    }
}
