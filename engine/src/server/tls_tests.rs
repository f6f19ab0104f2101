//! The worker core over TLS, driven by the test backend and fake clock of `core_harness.rs`
//! with a rustls client on the other end: its bytes reach the core cut anywhere (a record
//! across reads, a header in pieces, one byte at a time), keys are updated mid-stream, and
//! an idle connection holds no TLS buffer.

use std::io::{ErrorKind, Read, Write};
use std::sync::Arc;

use super::testing::{Pair, REQUEST};
use crate::{Config, TlsConfig};

struct Client {
    tls: rustls::ClientConnection,
    /// Plaintext the server sent, not yet looked at.
    plain: Vec<u8>,
    /// The server's close_notify came.
    closed: bool,
}

fn pair() -> (Pair, usize, Client) {
    pair_with(None)
}

/// [`pair`] with both ends' socket buffers set to `sock` bytes (small ones make the server's
/// socket take only part of a write).
fn pair_with(sock: Option<usize>) -> (Pair, usize, Client) {
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
    let cert = params.self_signed(&key).unwrap();
    let cfg = Config {
        tls: Some(TlsConfig::from_pem(cert.pem(), key.serialize_pem())),
        ..Config::default()
    };
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der().clone()).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let mut tls =
        rustls::ClientConnection::new(Arc::new(client), "localhost".try_into().unwrap()).unwrap();
    tls.set_buffer_limit(None);
    let mut p = Pair::new(cfg);
    p.set_socket_buffers(sock);
    let c = p.connect();
    (p, c, Client { tls, plain: Vec::new(), closed: false })
}

/// One round: what the client has to send goes to the core in pieces of `chunk` bytes, each
/// read on its own, and what the server sends back goes to the client. Whether anything
/// moved.
fn round(p: &mut Pair, c: usize, cl: &mut Client, chunk: usize) -> bool {
    let mut out = Vec::new();
    while cl.tls.wants_write() {
        cl.tls.write_tls(&mut out).unwrap();
    }
    for piece in out.chunks(chunk) {
        p.send_raw(c, piece);
        p.pump();
    }
    p.pump();
    let back = p.client_take_raw(c);
    let mut rd = &back[..];
    let mut buf = vec![0; 64 << 10];
    loop {
        if !rd.is_empty() {
            cl.tls.read_tls(&mut rd).unwrap();
            cl.tls.process_new_packets().expect("the server's records");
        }
        match cl.tls.reader().read(&mut buf) {
            Ok(0) => cl.closed = true,
            Ok(n) => {
                cl.plain.extend_from_slice(&buf[..n]);
                continue;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) => panic!("reading the server's plaintext: {e}"),
        }
        if rd.is_empty() {
            break;
        }
    }
    !out.is_empty() || !back.is_empty()
}

/// Rounds until nothing moves.
fn exchange(p: &mut Pair, c: usize, cl: &mut Client, chunk: usize) {
    for _ in 0..10_000 {
        if !round(p, c, cl, chunk) {
            return;
        }
    }
    panic!("the exchange never settled");
}

/// Handshakes (TLS, then the upgrade) with the client's bytes cut every `chunk` bytes. The
/// client sends its request with its Finished, so the server's tickets and its 101 leave in
/// one turn.
fn open(p: &mut Pair, c: usize, cl: &mut Client, chunk: usize) {
    cl.tls.writer().write_all(REQUEST).unwrap();
    exchange(p, c, cl, chunk);
    assert!(!cl.tls.is_handshaking(), "chunk {chunk}: the TLS handshake did not complete");
    let end = cl.plain.windows(4).position(|w| w == b"\r\n\r\n").expect("a whole head") + 4;
    let head: Vec<u8> = cl.plain.drain(..end).collect();
    assert!(head.starts_with(b"HTTP/1.1 101"), "chunk {chunk}: {}", String::from_utf8_lossy(&head));
}

/// A masked client frame; the zero key leaves the payload as it is.
fn client_frame(op: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x80 | op];
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n if n < 1 << 16 => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&[0; 4]);
    f.extend_from_slice(payload);
    f
}

/// The whole server frames at the front of `buf` (taken from it), as (opcode, payload).
fn server_frames(buf: &mut Vec<u8>) -> Vec<(u8, Vec<u8>)> {
    let mut frames = Vec::new();
    let mut pos = 0;
    loop {
        let b = &buf[pos..];
        if b.len() < 2 {
            break;
        }
        assert_eq!(b[0] & 0xf0, 0x80, "a final, unextended frame");
        assert_eq!(b[1] & 0x80, 0, "server frames are not masked");
        let (len, at) = match b[1] & 0x7f {
            126 if b.len() >= 4 => (usize::from(u16::from_be_bytes([b[2], b[3]])), 4),
            127 if b.len() >= 10 => (u64::from_be_bytes(b[2..10].try_into().unwrap()) as usize, 10),
            126 | 127 => break,
            n => (usize::from(n), 2),
        };
        if b.len() < at + len {
            break;
        }
        frames.push((b[0] & 0x0f, b[at..at + len].to_vec()));
        pos += at + len;
    }
    buf.drain(..pos);
    frames
}

fn payload(size: usize, seed: usize) -> Vec<u8> {
    (0..size).map(|i| (i * 7 + seed) as u8).collect()
}

/// The client's records reach the core cut at every size from one byte up (a header in
/// pieces, a record across reads, many records in one read): the handshake completes and
/// every message comes back whole and in order.
#[test]
fn records_cut_anywhere_are_carried_to_the_next_read() {
    for chunk in [1, 2, 3, 5, 6, 7, 64, 1000, 4096, 16 << 10, (16 << 10) + 5, 1 << 20] {
        let (mut p, c, mut cl) = pair();
        open(&mut p, c, &mut cl, chunk);
        // One byte at a time takes a pump per byte: keep the small cuts to small messages.
        let sizes: &[usize] = if chunk < 64 {
            &[0, 1, 125, 126, 3000]
        } else {
            &[0, 1, 125, 126, 16 << 10, (16 << 10) + 1, 70_000, 300_000]
        };
        let mut sent = Vec::new();
        for (i, &size) in sizes.iter().enumerate() {
            let m = payload(size, i);
            cl.tls.writer().write_all(&client_frame(2, &m)).unwrap();
            sent.push(m);
        }
        exchange(&mut p, c, &mut cl, chunk);
        let got = server_frames(&mut cl.plain);
        assert_eq!(got.len(), sent.len(), "chunk {chunk}");
        for ((op, data), want) in got.into_iter().zip(sent) {
            assert_eq!(op, 2, "chunk {chunk}");
            assert!(data == want, "chunk {chunk}: a {} B message came back changed", want.len());
        }
        assert!(cl.plain.is_empty(), "chunk {chunk}: {} stray bytes", cl.plain.len());
        assert_eq!(p.counts().tls_handshakes, 1);
        assert_eq!(p.counts().tls_errors, 0);
    }
}

/// The server's whole first flight (ServerHello to Finished) answers the ClientHello, and
/// its tickets and the 101 answer the client's Finished and request: one round trip each.
#[test]
fn the_handshake_and_the_upgrade_take_one_round_trip_each() {
    let (mut p, c, mut cl) = pair();
    cl.tls.writer().write_all(REQUEST).unwrap();
    assert!(round(&mut p, c, &mut cl, 1 << 20));
    assert!(!cl.tls.is_handshaking(), "the first flight came in pieces");
    assert!(round(&mut p, c, &mut cl, 1 << 20));
    assert!(cl.plain.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&cl.plain));
}

/// The client updates its keys and asks for ours to be updated: rustls' KeyUpdate goes out
/// before the records sealed under the new keys, with echoes queued on either side of it.
#[test]
fn a_key_update_mid_stream_keeps_the_records_in_order() {
    let (mut p, c, mut cl) = pair();
    open(&mut p, c, &mut cl, 1 << 20);
    for round in 0..3 {
        cl.tls.writer().write_all(&client_frame(1, b"before")).unwrap();
        cl.tls.refresh_traffic_keys().unwrap();
        cl.tls.writer().write_all(&client_frame(1, b"after")).unwrap();
        exchange(&mut p, c, &mut cl, 1 << 20);
        let got = server_frames(&mut cl.plain);
        let texts: Vec<&[u8]> = got.iter().map(|(_, d)| &d[..]).collect();
        assert_eq!(texts, [&b"before"[..], b"after"], "round {round}");
    }
    assert_eq!(p.counts().tls_errors, 0);
}

/// Between messages a TLS connection holds no buffer of its own (no carried record, no
/// records waiting), whatever sizes went through it.
#[test]
fn an_idle_tls_connection_holds_no_buffer() {
    let (mut p, c, mut cl) = pair();
    open(&mut p, c, &mut cl, 5);
    for size in [10, 20_000, 100_000] {
        cl.tls.writer().write_all(&client_frame(2, &payload(size, 1))).unwrap();
        exchange(&mut p, c, &mut cl, 1000);
        assert_eq!(server_frames(&mut cl.plain).len(), 1);
        let key = p.clients[c].key;
        let t = p.core.state.tls[key].as_ref().expect("a TLS connection");
        assert_eq!(t.held(), 0, "after {size} B: {t:?}");
    }
}

/// A close from the client: the server's close frame, then its close_notify, then the end.
#[test]
fn a_close_ends_with_our_close_notify() {
    let (mut p, c, mut cl) = pair();
    open(&mut p, c, &mut cl, 7);
    let mut close = 1000u16.to_be_bytes().to_vec();
    close.extend_from_slice(b"bye");
    cl.tls.writer().write_all(&client_frame(8, &close)).unwrap();
    exchange(&mut p, c, &mut cl, 7);
    let got = server_frames(&mut cl.plain);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, 8);
    assert_eq!(&got[0].1[..2], &1000u16.to_be_bytes());
    assert!(cl.closed, "no close_notify after the close frame");
}

/// The client's pending bytes, in one write the core reads at once.
fn client_send(p: &mut Pair, c: usize, cl: &mut Client) {
    let mut out = Vec::new();
    while cl.tls.wants_write() {
        cl.tls.write_tls(&mut out).unwrap();
    }
    p.send_raw(c, &out);
    p.pump();
}

/// The socket takes only part of a big echo, so sealed records wait in the queue; then the
/// handler queues more: it is sealed after them, and both arrive whole and in order.
#[test]
fn plaintext_queued_behind_waiting_records_is_sealed_after_them() {
    let (mut p, c, mut cl) = pair_with(Some(8192));
    open(&mut p, c, &mut cl, 1 << 20);
    let big = payload(200_000, 3);
    cl.tls.writer().write_all(&client_frame(2, &big)).unwrap();
    client_send(&mut p, c, &mut cl);
    let key = p.clients[c].key;
    assert!(p.core.state.tls[key].as_ref().unwrap().sealed > 0, "the socket took it all");
    cl.tls.writer().write_all(&client_frame(2, b"small")).unwrap();
    client_send(&mut p, c, &mut cl);
    exchange(&mut p, c, &mut cl, 1 << 20);
    let got = server_frames(&mut cl.plain);
    assert_eq!(got.len(), 2);
    assert!(got[0].1 == big, "the big echo came back changed");
    assert_eq!(got[1].1, b"small");
}

/// The ClientHello cut into `parts` handshake records.
fn client_hello_in_records(cl: &mut Client, parts: usize) -> Vec<u8> {
    let mut out = Vec::new();
    while cl.tls.wants_write() {
        cl.tls.write_tls(&mut out).unwrap();
    }
    assert_eq!(out[0], 0x16, "one handshake record");
    let body = &out[5..];
    let mut all = Vec::new();
    for piece in body.chunks(body.len().div_ceil(parts)) {
        all.extend_from_slice(&[0x16, 0x03, 0x01]);
        all.extend_from_slice(&(piece.len() as u16).to_be_bytes());
        all.extend_from_slice(piece);
    }
    all
}

/// The ClientHello cut into 2 to 40 handshake records, delivered a record per read, all in
/// one read, and cut anywhere (mid-header, mid-body) by reads of 1 to 97 bytes: rustls joins
/// the message, rewriting the records it keeps in place, and the server answers every time.
#[test]
fn a_client_hello_in_many_records_is_answered() {
    for parts in [2, 3, 4, 7, 40] {
        for cut in [0, 1, 2, 3, 5, 7, 97, usize::MAX] {
            let (mut p, c, mut cl) = pair();
            let all = client_hello_in_records(&mut cl, parts);
            if cut == 0 {
                // A record per read.
                let mut at = 0;
                while at < all.len() {
                    let len = usize::from(u16::from_be_bytes([all[at + 3], all[at + 4]]));
                    p.send_raw(c, &all[at..at + 5 + len]);
                    p.pump();
                    at += 5 + len;
                }
            } else {
                for piece in all.chunks(cut.min(all.len())) {
                    p.send_raw(c, piece);
                    p.pump();
                }
            }
            cl.tls.writer().write_all(REQUEST).unwrap();
            assert!(round(&mut p, c, &mut cl, 1 << 20), "{parts} records, cut {cut}: no answer");
            assert!(!cl.tls.is_handshaking(), "{parts} records, cut {cut}");
            assert_eq!(p.counts().tls_errors, 0);
        }
    }
}

/// A handshake message sent one payload byte per record (6 bytes of record each): the carry
/// never passes its bound, and the connection fails once it would.
#[test]
fn a_handshake_message_in_tiny_records_has_a_bounded_carry() {
    let (mut p, c, _cl) = pair();
    let key = p.clients[c].key;
    // A ClientHello header claiming 65,535 bytes, then one byte per record.
    let mut all = vec![0x16, 0x03, 0x01, 0x00, 0x04, 0x01, 0x00, 0xff, 0xff];
    for _ in 0..65_000 {
        all.extend_from_slice(&[0x16, 0x03, 0x01, 0x00, 0x01, 0x00]);
    }
    let mut most = 0;
    for piece in all.chunks(600) {
        p.send_raw(c, piece);
        p.pump();
        match p.core.state.tls.get(key) {
            Some(Some(t)) => most = most.max(t.carried()),
            _ => break,
        }
    }
    assert!(most > 60_000, "the test stopped early: {most}");
    assert!(most <= super::super::tls::CARRY_MAX, "carried up to {most} bytes");
    assert_eq!(p.counts().tls_errors, 1, "the connection failed");
    assert!(p.core.state.tls.get(key).is_none_or(|t| t.is_none()), "and is gone");
}
