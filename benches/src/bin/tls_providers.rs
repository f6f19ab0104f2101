//! ring against aws-lc-rs, the two rustls providers, on this machine: full TLS 1.3 handshakes
//! (ECDSA P-256 certificate, no resumption; both sides in memory, and the server side's share
//! timed on its own) and one record sealed by the server and opened by the client, at 20 B and
//! 16 KiB. Which provider the engine uses is chosen from this (benches/README.md).
//!
//! `cargo run --release -p sockeye-benches --features providers --bin tls_providers`
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Instant;

fn pair(
    p: &Arc<CryptoProvider>,
    cert: &CertificateDer<'static>,
    key: &[u8],
) -> (Arc<ServerConfig>, Arc<ClientConfig>) {
    let s = ServerConfig::builder_with_provider(p.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.to_vec())),
        )
        .unwrap();
    let mut roots = RootCertStore::empty();
    roots.add(cert.clone()).unwrap();
    let mut c = ClientConfig::builder_with_provider(p.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    c.resumption = rustls::client::Resumption::disabled();
    (Arc::new(s), Arc::new(c))
}

fn handshake(
    s: &Arc<ServerConfig>,
    c: &Arc<ClientConfig>,
) -> (ServerConnection, ClientConnection, f64) {
    let mut sc = ServerConnection::new(s.clone()).unwrap();
    let mut cc =
        ClientConnection::new(c.clone(), ServerName::try_from("localhost").unwrap()).unwrap();
    let mut server_s = 0.0;
    while sc.is_handshaking() || cc.is_handshaking() || cc.wants_write() || sc.wants_write() {
        let mut v = Vec::new();
        while cc.wants_write() {
            cc.write_tls(&mut v).unwrap();
        }
        if !v.is_empty() {
            let t = Instant::now();
            let mut rd = &v[..];
            while !rd.is_empty() {
                sc.read_tls(&mut rd).unwrap();
                sc.process_new_packets().unwrap();
            }
            server_s += t.elapsed().as_secs_f64();
        }
        let mut v = Vec::new();
        let t = Instant::now();
        while sc.wants_write() {
            sc.write_tls(&mut v).unwrap();
        }
        server_s += t.elapsed().as_secs_f64();
        if !v.is_empty() {
            let mut rd = &v[..];
            while !rd.is_empty() {
                cc.read_tls(&mut rd).unwrap();
                cc.process_new_packets().unwrap();
            }
        }
        if !sc.is_handshaking() && !cc.is_handshaking() && !cc.wants_write() && !sc.wants_write() {
            break;
        }
    }
    (sc, cc, server_s)
}

fn main() {
    let kp = rcgen::KeyPair::generate().unwrap(); // ECDSA P-256
    let cert =
        rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap().self_signed(&kp).unwrap();
    let key = kp.serialize_der();
    for (name, p) in [
        ("ring", rustls::crypto::ring::default_provider()),
        ("aws-lc-rs", rustls::crypto::aws_lc_rs::default_provider()),
    ] {
        let p = Arc::new(p);
        let (s, c) = pair(&p, cert.der(), &key);
        let n = 2000;
        let t = Instant::now();
        let mut srv = 0.0;
        for _ in 0..n {
            let (_, _, ss) = handshake(&s, &c);
            srv += ss;
        }
        let all = t.elapsed().as_secs_f64();
        let (mut sc, mut cc, _) = handshake(&s, &c);
        let mut line = format!(
            "{name:10} handshakes (both sides) {:.0}/s  server side {:.1} µs each",
            n as f64 / all,
            srv / n as f64 * 1e6
        );
        for size in [20usize, 16384] {
            let msg = vec![7u8; size];
            let mut buf = vec![0u8; size];
            let iters = if size == 20 { 200_000 } else { 20_000 };
            let t = Instant::now();
            for _ in 0..iters {
                sc.writer().write_all(&msg).unwrap();
                let mut v = Vec::new();
                sc.write_tls(&mut v).unwrap();
                let mut rd = &v[..];
                while !rd.is_empty() {
                    cc.read_tls(&mut rd).unwrap();
                    cc.process_new_packets().unwrap();
                }
                cc.reader().read_exact(&mut buf).unwrap();
            }
            line += &format!(
                "  seal+open {size} B: {:.2} µs",
                t.elapsed().as_secs_f64() / iters as f64 * 1e6
            );
        }
        println!("{line}  suite {:?}", sc.negotiated_cipher_suite().unwrap().suite());
    }
}
