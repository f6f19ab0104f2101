//! wss:// over real sockets, on whichever backend `SOCKEYE_BACKEND` picks: a throwaway CA and
//! certificates from rcgen, a tungstenite client over a rustls client stream, and raw sockets
//! for what a broken or stalled TLS peer sends.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use sockeye::{Conn, Handler, Message, TlsConfig};
use tungstenite::{Message as WsMessage, WebSocket};

/// A throwaway CA and what it signs.
struct Pki {
    ca_pem: String,
    ca_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    fn new() -> Self {
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, "Sockeye test CA");
        let key = KeyPair::generate().expect("CA key");
        let cert = p.self_signed(&key).expect("CA certificate");
        Pki { ca_pem: cert.pem(), ca_der: cert.der().clone(), issuer: Issuer::new(p, key) }
    }

    /// A certificate for localhost and 127.0.0.1: (certificate PEM, key PEM, certificate DER).
    fn leaf(
        &self,
        cn: &str,
        shape: impl FnOnce(&mut CertificateParams),
    ) -> (String, String, Vec<u8>) {
        let mut p = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .expect("leaf params");
        p.distinguished_name.push(DnType::CommonName, cn);
        shape(&mut p);
        let key = KeyPair::generate().expect("leaf key");
        let cert = p.signed_by(&key, &self.issuer).expect("leaf certificate");
        (cert.pem(), key.serialize_pem(), cert.der().to_vec())
    }

    fn server_config(&self) -> (TlsConfig, Vec<u8>) {
        let (cert, key, der) = self.leaf("sockeye test server", |_| {});
        (TlsConfig::from_pem(cert, key), der)
    }

    fn client(&self, identity: Option<(&str, &str)>) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca_der.clone()).expect("trust the CA");
        let b =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .expect("protocol versions")
                .with_root_certificates(roots);
        let mut c = match identity {
            None => b.with_no_client_auth(),
            Some((cert, key)) => {
                use rustls::pki_types::pem::PemObject;
                let chain = CertificateDer::pem_slice_iter(cert.as_bytes())
                    .collect::<Result<Vec<_>, _>>()
                    .expect("client chain");
                let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("client key");
                b.with_client_auth_cert(chain, key).expect("client identity")
            }
        };
        c.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(c)
    }
}

type Tls = StreamOwned<ClientConnection, TcpStream>;

/// A TLS connection to `addr`, its handshake done.
fn tls_connect(addr: SocketAddr, client: &Arc<ClientConfig>) -> Result<Tls, std::io::Error> {
    let s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    let _ = s.set_nodelay(true);
    let name = ServerName::try_from("localhost").expect("name");
    let conn = ClientConnection::new(Arc::clone(client), name).map_err(std::io::Error::other)?;
    let mut t = StreamOwned::new(conn, s);
    while t.conn.is_handshaking() {
        t.conn.complete_io(&mut t.sock)?;
    }
    Ok(t)
}

fn wss_connect(addr: SocketAddr, client: &Arc<ClientConfig>) -> WebSocket<Tls> {
    let t = tls_connect(addr, client)
        .unwrap_or_else(|e| panic!("[{}] TLS handshake with {addr}: {e}", backend_name()));
    let (ws, resp) =
        tungstenite::client::client(format!("wss://localhost:{}/echo", addr.port()), t)
            .unwrap_or_else(|e| panic!("[{}] WebSocket handshake over TLS: {e}", backend_name()));
    assert_eq!(resp.status().as_u16(), 101);
    ws
}

fn read_data(ws: &mut WebSocket<Tls>) -> WsMessage {
    loop {
        match ws.read() {
            Ok(m @ (WsMessage::Text(_) | WsMessage::Binary(_))) => return m,
            Ok(WsMessage::Close(c)) => panic!("[{}] unexpected close {c:?}", backend_name()),
            Ok(_) => {}
            Err(e) => panic!("[{}] read over TLS: {e}", backend_name()),
        }
    }
}

/// Closes with 1000 and reads until the server's close and the end of the TLS stream: a
/// clean end (its close_notify, then EOF) is `ConnectionClosed`, anything else fails.
fn close_cleanly(ws: &mut WebSocket<Tls>) {
    ws.close(None).expect("send close");
    loop {
        match ws.read() {
            Ok(_) => {}
            Err(tungstenite::Error::ConnectionClosed) => break,
            Err(e) => panic!("[{}] closing over TLS: {e}", backend_name()),
        }
    }
    // The server ended the TLS stream properly: a read now sees a clean EOF.
    let t = ws.get_mut();
    let mut b = [0u8; 16];
    match t.read(&mut b) {
        Ok(0) => {}
        other => panic!("[{}] after the close: {other:?} (no close_notify?)", backend_name()),
    }
}

#[test]
fn wss_echoes_small_large_and_pipelined_messages_and_closes_cleanly() {
    let pki = Pki::new();
    let (tls, _) = pki.server_config();
    let srv = start_echo(|b| b.tls(tls));
    let client = pki.client(None);
    let mut ws = wss_connect(srv.addr, &client);
    assert_eq!(
        ws.get_ref().conn.alpn_protocol(),
        Some(&b"http/1.1"[..]),
        "[{}] ALPN",
        backend_name()
    );
    ws.send(WsMessage::text("hello over tls")).expect("send");
    assert_eq!(read_data(&mut ws), WsMessage::text("hello over tls"));
    // Larger than a record (16 KiB) and than a read: spans records and reads both ways.
    for len in [16 << 10, (16 << 10) + 1, 1 << 20] {
        let big: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
        ws.send(WsMessage::binary(big.clone())).expect("send big");
        assert_eq!(read_data(&mut ws), WsMessage::binary(big), "[{}] {len} B echo", backend_name());
    }
    // Pipelined: many small messages in one write, their echoes sealed together.
    for i in 0..200 {
        ws.write(WsMessage::text(format!("m{i}"))).expect("queue");
    }
    ws.flush().expect("flush");
    for i in 0..200 {
        assert_eq!(read_data(&mut ws), WsMessage::text(format!("m{i}")));
    }
    close_cleanly(&mut ws);
    drop(ws);
    srv.wait_idle(Duration::from_secs(5));
    let st: Vec<_> = srv.handle.stats();
    assert_eq!(st.iter().map(|s| s.tls_handshakes).sum::<usize>(), 1);
    assert_eq!(st.iter().map(|s| s.tls_errors).sum::<usize>(), 0);
}

/// Every connection joins one topic; every message is published to it, sender included.
struct Room;
impl Handler for Room {
    type Data = ();
    fn on_open(&mut self, conn: &mut Conn<'_, ()>) {
        conn.subscribe("room").expect("subscribe");
    }
    fn on_message(&mut self, conn: &mut Conn<'_, ()>, msg: Message<'_>) {
        let _ = conn.publish_including_self("room", msg);
    }
}

#[test]
fn published_frames_reach_tls_subscribers_on_every_worker() {
    let pki = Pki::new();
    let (tls, _) = pki.server_config();
    let srv = start(|b| b.tls(tls).workers(2), || Room);
    let client = pki.client(None);
    let mut subs: Vec<_> = (0..6).map(|_| wss_connect(srv.addr, &client)).collect();
    assert!(wait_until(Duration::from_secs(5), || srv.handle.subscriber_count("room") == 6));
    for i in 0..50 {
        subs[0].send(WsMessage::text(format!("line {i}"))).expect("publish");
    }
    for ws in &mut subs {
        for i in 0..50 {
            assert_eq!(read_data(ws), WsMessage::text(format!("line {i}")), "[{}]", backend_name());
        }
    }
    for ws in &mut subs {
        close_cleanly(ws);
    }
}

#[test]
fn plaintext_http_on_the_tls_port_gets_a_400_that_says_so() {
    let pki = Pki::new();
    let (tls, _) = pki.server_config();
    let srv = start_echo(|b| b.tls(tls));
    let mut s = TcpStream::connect(srv.addr).expect("connect");
    s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    s.write_all(b"GET /echo HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\r\n")
        .expect("write");
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("HTTP/1.1 400"), "[{}] got {got:?}", backend_name());
    assert!(got.contains("TLS"), "[{}] got {got:?}", backend_name());
    let client = pki.client(None);
    let mut ws = wss_connect(srv.addr, &client);
    ws.send(WsMessage::text("fine")).expect("send");
    assert_eq!(read_data(&mut ws), WsMessage::text("fine"));
    assert!(srv.handle.stats().iter().map(|s| s.tls_errors).sum::<usize>() >= 1);
}

#[test]
fn a_garbage_client_hello_costs_that_connection_alone() {
    let pki = Pki::new();
    let (tls, _) = pki.server_config();
    let srv = start_echo(|b| b.tls(tls));
    let client = pki.client(None);
    let mut ws = wss_connect(srv.addr, &client);
    // A handshake record whose body is nonsense, and bytes that are no TLS at all.
    for junk in [&b"\x16\x03\x01\x00\x05\x01\x00\x00\x01\xff"[..], &[0xffu8; 64][..]] {
        let mut s = TcpStream::connect(srv.addr).expect("connect");
        s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
        s.write_all(junk).expect("write");
        let mut got = Vec::new();
        let end = s.read_to_end(&mut got);
        // An alert record (content type 21) or nothing, then the end of the stream.
        assert!(end.is_ok() || got.is_empty(), "[{}] {end:?}", backend_name());
        assert!(got.is_empty() || got[0] == 21, "[{}] answered {got:?}", backend_name());
    }
    ws.send(WsMessage::text("others are served")).expect("send");
    assert_eq!(read_data(&mut ws), WsMessage::text("others are served"));
    assert!(wait_until(Duration::from_secs(5), || {
        srv.handle.stats().iter().map(|s| s.tls_errors).sum::<usize>() >= 2
    }));
    close_cleanly(&mut ws);
}

#[test]
fn stalled_and_truncated_handshakes_end_at_the_handshake_timeout_and_others_are_served() {
    let pki = Pki::new();
    let (tls, _) = pki.server_config();
    let timeout = Duration::from_millis(600);
    let srv =
        start_echo(|b| b.tls(tls).handshake_timeout(timeout).timer_tick(Duration::from_millis(20)));
    // 500 connections that never finish a TLS handshake: half say nothing, half send the
    // start of a ClientHello and stop.
    let mut stalled = Vec::new();
    for i in 0..500 {
        let mut s = TcpStream::connect(srv.addr).expect("connect");
        if i % 2 == 1 {
            s.write_all(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03").expect("write");
        }
        stalled.push(s);
    }
    // A fresh client is served meanwhile, well within the timeout.
    let client = pki.client(None);
    let t0 = Instant::now();
    let mut ws = wss_connect(srv.addr, &client);
    ws.send(WsMessage::text("served")).expect("send");
    assert_eq!(read_data(&mut ws), WsMessage::text("served"));
    assert!(t0.elapsed() < timeout, "[{}] took {:?}", backend_name(), t0.elapsed());
    // Every stalled one is gone soon after its deadline.
    let ok = wait_until(timeout * 10, || srv.connections() == 1);
    assert!(ok, "[{}] {} connections still held", backend_name(), srv.connections());
    for mut s in stalled {
        s.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
        let mut b = [0u8; 64];
        let r = s.read(&mut b);
        assert!(matches!(r, Ok(0) | Err(_)), "[{}] stalled peer read {r:?}", backend_name());
    }
    close_cleanly(&mut ws);
}

#[test]
fn an_expired_or_mismatched_certificate_is_a_clear_build_error() {
    let pki = Pki::new();
    let (cert, key, _) = pki.leaf("expired", |p| {
        p.not_before = rcgen::date_time_ymd(2019, 1, 1);
        p.not_after = rcgen::date_time_ymd(2020, 1, 1);
    });
    let err = sockeye::Server::builder()
        .listen("127.0.0.1:0")
        .tls(TlsConfig::from_pem(cert, key))
        .handler(|| Echo)
        .build()
        .expect_err("an expired certificate must be refused");
    assert!(matches!(err, sockeye::Error::Tls(_)), "{err:?}");
    assert!(err.to_string().contains("expired"), "{err}");

    let (cert, _, _) = pki.leaf("one", |_| {});
    let (_, other_key, _) = pki.leaf("two", |_| {});
    let err = sockeye::Server::builder()
        .listen("127.0.0.1:0")
        .tls(TlsConfig::from_pem(cert, other_key))
        .handler(|| Echo)
        .build()
        .expect_err("a key that does not match must be refused");
    assert!(matches!(err, sockeye::Error::Tls(_)), "{err:?}");

    let err = sockeye::Server::builder()
        .listen("127.0.0.1:0")
        .tls(TlsConfig::from_pem("not pem", "not pem"))
        .handler(|| Echo)
        .build()
        .expect_err("no PEM");
    assert!(err.to_string().contains("certificate"), "{err}");
}

#[test]
fn a_reloaded_certificate_serves_new_handshakes_and_open_connections_keep_theirs() {
    let pki = Pki::new();
    let (tls, first) = pki.server_config();
    let srv = start_echo(|b| b.tls(tls));
    let client = pki.client(None);
    let mut old = wss_connect(srv.addr, &client);
    let seen =
        |ws: &WebSocket<Tls>| ws.get_ref().conn.peer_certificates().expect("certs")[0].to_vec();
    assert_eq!(seen(&old), first);

    let (cert, key, second) = pki.leaf("sockeye reloaded", |_| {});
    srv.handle.reload_tls(&TlsConfig::from_pem(cert, key)).expect("reload");
    let mut new = wss_connect(srv.addr, &client);
    assert_eq!(
        seen(&new),
        second,
        "[{}] the new handshake got the old certificate",
        backend_name()
    );
    for ws in [&mut old, &mut new] {
        ws.send(WsMessage::text("both work")).expect("send");
        assert_eq!(read_data(ws), WsMessage::text("both work"));
    }
    // A bad reload is refused whole; the certificate in force stays.
    let err = srv.handle.reload_tls(&TlsConfig::from_pem("junk", "junk")).expect_err("junk");
    assert!(matches!(err, sockeye::Error::Tls(_)));
    let mut third = wss_connect(srv.addr, &client);
    assert_eq!(seen(&third), second);
    for ws in [&mut old, &mut new, &mut third] {
        close_cleanly(ws);
    }
}

#[test]
fn required_client_certificates_are_checked() {
    let pki = Pki::new();
    let (cert, key, _) = pki.leaf("server", |_| {});
    let tls = TlsConfig::from_pem(cert, key).client_certificates(pki.ca_pem.clone(), true);
    let srv = start_echo(|b| b.tls(tls));
    let (ccert, ckey, _) = pki.leaf("a client", |_| {});
    let with = pki.client(Some((&ccert, &ckey)));
    let mut ws = wss_connect(srv.addr, &with);
    ws.send(WsMessage::text("authenticated")).expect("send");
    assert_eq!(read_data(&mut ws), WsMessage::text("authenticated"));
    close_cleanly(&mut ws);

    // Without one, the handshake fails (TLS 1.3: the client learns it at its first read).
    let without = pki.client(None);
    let refused = match tls_connect(srv.addr, &without) {
        Err(_) => true,
        Ok(t) => {
            tungstenite::client::client(format!("wss://localhost:{}/", srv.addr.port()), t).is_err()
        }
    };
    assert!(refused, "[{}] a client without a certificate got in", backend_name());
    assert!(wait_until(Duration::from_secs(5), || {
        srv.handle.stats().iter().map(|s| s.tls_errors).sum::<usize>() >= 1
    }));
}

#[test]
fn building_a_plain_server_refuses_a_tls_reload() {
    let srv = start_echo(|b| b);
    let pki = Pki::new();
    let (tls, _) = pki.server_config();
    assert!(matches!(srv.handle.reload_tls(&tls), Err(sockeye::Error::Tls(_))));
    assert_echo(srv.addr);
}

#[test]
fn plain_and_tls_listeners_serve_side_by_side() {
    let pki = Pki::new();
    let (tls, _) = pki.server_config();
    let srv = start_echo(|b| b.tls(tls).listen_tls("127.0.0.1:0"));
    let tls_addr = srv.tls_addr.expect("a TLS address");
    assert_ne!(tls_addr, srv.addr);
    // ws:// on the main address, wss:// on the other, at once.
    let client = pki.client(None);
    let mut secure = wss_connect(tls_addr, &client);
    let mut plain = ws_connect(srv.addr);
    for i in 0..20 {
        secure.send(WsMessage::text(format!("s{i}"))).expect("send");
        plain.send(WsMessage::text(format!("p{i}"))).expect("send");
    }
    for i in 0..20 {
        assert_eq!(read_data(&mut secure), WsMessage::text(format!("s{i}")));
        assert_eq!(ws_read_data(&mut plain), WsMessage::text(format!("p{i}")));
    }
    // Each listener speaks its own protocol only.
    assert!(tls_connect(srv.addr, &client).is_err(), "[{}] TLS on the plain port", backend_name());
    let mut s = TcpStream::connect(tls_addr).expect("connect");
    s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    s.write_all(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n").expect("write");
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    assert!(
        got.starts_with(b"HTTP/1.1 400"),
        "[{}] {:?}",
        backend_name(),
        String::from_utf8_lossy(&got)
    );
    close_cleanly(&mut secure);
    ws_close(&mut plain);
}

#[test]
fn a_tls_address_without_a_certificate_is_refused() {
    let err = sockeye::Server::builder()
        .listen("127.0.0.1:0")
        .listen_tls("127.0.0.1:0")
        .handler(|| Echo)
        .build()
        .expect_err("no certificate");
    assert!(matches!(&err, sockeye::Error::Config(c) if c.field() == "tls_addr"), "{err:?}");
}

#[test]
fn a_tls_subscriber_that_reads_late_gets_every_message_in_order() {
    // The socket refuses most of the burst: sealed records wait in the queue while new
    // plaintext lands behind them, and both must leave in order, each byte sealed once.
    let pki = Pki::new();
    let (tls, _) = pki.server_config();
    let srv = start(|b| b.tls(tls).workers(1), || Room);
    let client = pki.client(None);
    let mut late = wss_connect(srv.addr, &client);
    let mut publisher = wss_connect(srv.addr, &client);
    assert!(wait_until(Duration::from_secs(5), || srv.handle.subscriber_count("room") == 2));
    let body = "x".repeat(2000);
    for i in 0..3000 {
        srv.handle.publish("room", format!("{i:05} {body}").as_str()).expect("publish");
        if i % 500 == 0 {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    for ws in [&mut late, &mut publisher] {
        for i in 0..3000 {
            match read_data(ws) {
                WsMessage::Text(t) => {
                    assert_eq!(&t[..5], format!("{i:05}"), "[{}] out of order", backend_name())
                }
                other => panic!("[{}] {other:?}", backend_name()),
            }
        }
    }
    close_cleanly(&mut late);
    close_cleanly(&mut publisher);
}
