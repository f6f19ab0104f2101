//! wss://: TLS in the worker, with rustls driven sans-IO.
//!
//! A TLS connection is a [`rustls::ServerConnection`] beside the WebSocket state, driven by the
//! worker core exactly like `proto::Connection`: the backend hands the core ciphertext (from
//! epoll's worker buffer or io_uring's provided buffers), the core feeds it to rustls
//! (`read_tls`, `process_new_packets`) and hands the plaintext to `proto`; what a turn queued
//! for the connection stays plaintext in its send queue until the backend asks for the bytes
//! (`Core::pending` / `Core::take_out`), when it is sealed into as few records as fit (up to
//! 16 KiB each) and replaces the plaintext in the queue. No extra thread, no async runtime.
//!
//! The crypto provider is *ring*, or aws-lc-rs with the crate's `aws-lc-rs` feature
//! ([`TlsConfig::PROVIDER`]); `benches/README.md` ("The crypto provider") has the measurements
//! that chose the default and say when the other is faster.

use std::fmt;
use std::io;
use std::path::Path;
use std::sync::{Arc, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

/// A server's certificate chain and private key, in PEM, and optionally the CA that client
/// certificates must chain to.
///
/// ```no_run
/// use sockeye::{Conn, Handler, Message, Server, TlsConfig};
/// struct Echo;
/// impl Handler for Echo {
///     type Data = ();
///     fn on_message(&mut self, conn: &mut Conn<'_, ()>, msg: Message<'_>) {
///         conn.send(msg);
///     }
/// }
/// let tls = TlsConfig::from_pem_files("cert.pem", "key.pem")?;
/// let server = Server::builder().listen("0.0.0.0:443").tls(tls).handler(|| Echo).build()?;
/// server.run()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct TlsConfig {
    cert_chain_pem: Vec<u8>,
    key_pem: Vec<u8>,
    client_ca_pem: Option<Vec<u8>>,
    client_cert_required: bool,
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key.
        f.debug_struct("TlsConfig")
            .field("cert_chain_pem", &format_args!("{} bytes", self.cert_chain_pem.len()))
            .field("client_ca", &self.client_ca_pem.is_some())
            .field("client_cert_required", &self.client_cert_required)
            .finish_non_exhaustive()
    }
}

impl TlsConfig {
    /// The crypto provider this build's TLS runs on: `"ring"` (the default) or `"aws-lc-rs"`
    /// (the crate's `aws-lc-rs` feature).
    pub const PROVIDER: &'static str =
        if cfg!(feature = "aws-lc-rs") { "aws-lc-rs" } else { "ring" };

    /// A certificate chain (the server's certificate first, then its intermediates) and its
    /// private key (PKCS#8, PKCS#1 or SEC1), both PEM. Checked when the server is built.
    pub fn from_pem(cert_chain: impl Into<Vec<u8>>, key: impl Into<Vec<u8>>) -> Self {
        Self {
            cert_chain_pem: cert_chain.into(),
            key_pem: key.into(),
            client_ca_pem: None,
            client_cert_required: false,
        }
    }

    /// Reads [`TlsConfig::from_pem`]'s two PEM files.
    ///
    /// # Errors
    ///
    /// Either file cannot be read; the error names it.
    pub fn from_pem_files(cert_chain: impl AsRef<Path>, key: impl AsRef<Path>) -> io::Result<Self> {
        let read = |p: &Path| {
            std::fs::read(p)
                .map_err(|e| io::Error::new(e.kind(), format!("reading {}: {e}", p.display())))
        };
        Ok(Self::from_pem(read(cert_chain.as_ref())?, read(key.as_ref())?))
    }

    /// Asks clients for a certificate chaining to one of the CAs in `ca_pem`. With `required`
    /// a client without one fails the handshake; without it, a client may present none, but
    /// one it presents must verify.
    pub fn client_certificates(mut self, ca_pem: impl Into<Vec<u8>>, required: bool) -> Self {
        self.client_ca_pem = Some(ca_pem.into());
        self.client_cert_required = required;
        self
    }

    /// Builds rustls' server configuration: parses the PEM, checks that the certificate is
    /// valid now (an expired or not-yet-valid certificate is refused here, not at the first
    /// handshake) and that the key matches it, and offers ALPN `http/1.1`.
    pub(crate) fn build(&self) -> Result<Arc<ServerConfig>, String> {
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(&self.cert_chain_pem)
                .collect::<Result<_, _>>()
                .map_err(|e| format!("TLS certificate chain: {e}"))?;
        let Some(leaf) = certs.first() else {
            return Err("TLS certificate chain: no CERTIFICATE in the PEM".into());
        };
        check_validity(leaf, UnixTime::now())?;
        let key = PrivateKeyDer::from_pem_slice(&self.key_pem).map_err(|e| match e {
            rustls::pki_types::pem::Error::NoItemsFound => {
                "TLS private key: no PRIVATE KEY in the PEM".to_string()
            }
            e => format!("TLS private key: {e}"),
        })?;
        let provider = Arc::new(provider());
        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?;
        let builder = match &self.client_ca_pem {
            None => builder.with_no_client_auth(),
            Some(pem) => {
                let mut roots = RootCertStore::empty();
                for c in CertificateDer::pem_slice_iter(pem) {
                    let c = c.map_err(|e| format!("TLS client CA: {e}"))?;
                    roots.add(c).map_err(|e| format!("TLS client CA: {e}"))?;
                }
                let v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
                let v = if self.client_cert_required { v } else { v.allow_unauthenticated() };
                builder.with_client_cert_verifier(
                    v.build().map_err(|e| format!("TLS client CA: {e}"))?,
                )
            }
        };
        let mut config =
            builder.with_single_cert(certs, key).map_err(|e| format!("TLS certificate: {e}"))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

/// The rustls crypto provider of this build (see [`TlsConfig::PROVIDER`]).
#[cfg(not(feature = "aws-lc-rs"))]
fn provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// The rustls crypto provider of this build (see [`TlsConfig::PROVIDER`]).
#[cfg(feature = "aws-lc-rs")]
fn provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::aws_lc_rs::default_provider()
}

/// Refuses a certificate that is not valid at `now`. rustls never checks the server's own
/// certificate: without this an expired one would only show as every client's handshake
/// failing.
fn check_validity(leaf: &CertificateDer<'_>, now: UnixTime) -> Result<(), String> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| format!("TLS certificate: not a valid X.509 certificate: {e}"))?;
    let v = cert.validity();
    let now = now.as_secs() as i64;
    if now > v.not_after.timestamp() {
        return Err(format!("TLS certificate expired on {}", v.not_after));
    }
    if now < v.not_before.timestamp() {
        return Err(format!("TLS certificate is not valid before {}", v.not_before));
    }
    Ok(())
}

/// The server's TLS configuration in force, swapped by `ServerHandle::reload_tls`: new
/// handshakes take the one current when they start.
#[derive(Debug, Default)]
pub(crate) struct TlsState {
    current: RwLock<Option<Arc<ServerConfig>>>,
}

impl TlsState {
    pub(crate) fn new(config: Option<Arc<ServerConfig>>) -> Self {
        Self { current: RwLock::new(config) }
    }

    pub(crate) fn current(&self) -> Option<Arc<ServerConfig>> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(crate) fn replace(&self, config: Arc<ServerConfig>) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some(config);
    }
}

/// One TLS connection's state in the worker.
#[derive(Debug)]
pub(crate) struct TlsConn {
    pub(crate) conn: rustls::ServerConnection,
    /// Bytes at the front of the connection's send queue that are already ciphertext; the
    /// rest is plaintext still to be sealed.
    pub(crate) sealed: usize,
    /// The handshake completed (counted once).
    pub(crate) established: bool,
    /// Our close_notify is queued: the write side may be shut once the queue drains.
    pub(crate) notified: bool,
}

impl TlsConn {
    pub(crate) fn new(config: Arc<ServerConfig>) -> Result<Self, rustls::Error> {
        let mut conn = rustls::ServerConnection::new(config)?;
        // What waits for the socket is bounded by the send queue (`max_backpressure`); rustls'
        // own buffers only hold a turn's records between sealing and the queue.
        conn.set_buffer_limit(None);
        Ok(Self { conn, sealed: 0, established: false, notified: false })
    }

    /// Moves every record rustls has ready to `out`.
    pub(crate) fn drain_records(&mut self, out: &mut Vec<u8>) {
        while self.conn.wants_write() {
            match self.conn.write_tls(out) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }
}

/// Whether `data`, bytes rustls refused as the start of a connection to a TLS port, are
/// plaintext HTTP (a client that meant `ws://`): it gets a plain 400 that says so.
pub(crate) fn looks_like_http(data: &[u8]) -> bool {
    const METHODS: [&[u8]; 8] =
        [b"GET ", b"POST ", b"HEAD ", b"PUT ", b"OPTIONS ", b"DELETE ", b"PATCH ", b"CONNECT "];
    METHODS.iter().any(|m| data.starts_with(m))
}

/// The answer to plaintext HTTP on a TLS port.
pub(crate) const HTTP_ON_TLS_PORT: &[u8] = b"HTTP/1.1 400 Bad Request\r\n\
Content-Type: text/plain\r\nContent-Length: 47\r\nConnection: close\r\n\r\n\
This port speaks TLS: connect with wss/https.\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plaintext_http_is_recognised() {
        assert!(looks_like_http(b"GET / HTTP/1.1\r\n"));
        assert!(looks_like_http(b"POST /x"));
        assert!(!looks_like_http(&[0x16, 0x03, 0x01, 0x02, 0x00]));
        assert!(!looks_like_http(b"GE"));
        assert!(!looks_like_http(b"GETX"));
    }

    /// The server's config runs on the provider `PROVIDER` names: its AES-256-GCM suite is
    /// that provider's own (the same static), not the other's.
    #[test]
    fn the_config_uses_the_provider_of_this_build() {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
        let cert = params.self_signed(&key).unwrap();
        let config = TlsConfig::from_pem(cert.pem(), key.serialize_pem()).build().unwrap();
        // The provider's AES-256-GCM suite, by address.
        let aes256 = |p: &rustls::crypto::CryptoProvider| {
            p.cipher_suites.iter().find_map(|s| match s {
                rustls::SupportedCipherSuite::Tls13(s)
                    if s.common.suite == rustls::CipherSuite::TLS13_AES_256_GCM_SHA384 =>
                {
                    Some(*s as *const rustls::Tls13CipherSuite)
                }
                _ => None,
            })
        };
        let of = |p: rustls::crypto::CryptoProvider| aes256(&p);
        let ours = aes256(config.crypto_provider());
        assert!(ours.is_some());
        // CI's `awslc` stage says which provider the build must have.
        if let Ok(want) = std::env::var("SOCKEYE_EXPECT_PROVIDER") {
            assert_eq!(TlsConfig::PROVIDER, want);
        }
        assert_eq!(ours, of(provider()));
        let ring = of(rustls::crypto::ring::default_provider());
        assert_eq!(ours == ring, TlsConfig::PROVIDER == "ring", "{}", TlsConfig::PROVIDER);
        #[cfg(feature = "aws-lc-rs")]
        assert_eq!(ours, of(rustls::crypto::aws_lc_rs::default_provider()));
    }

    #[test]
    fn the_400_body_length_is_right() {
        let s = std::str::from_utf8(HTTP_ON_TLS_PORT).unwrap();
        let (head, body) = s.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
    }
}
