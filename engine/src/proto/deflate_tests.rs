//! permessage-deflate through the connection, with byte vectors: RFC 7692 §7.2.3's examples,
//! the handshake answer, RSV1 rules, limits while inflating (a deflate bomb), corrupt streams,
//! fragmented messages, context lifetimes, and round trips between a client-role and a
//! server-role connection at every window size, with and without context takeover.

use super::*;
use flate2::{Compress, Compression};
use proptest::prelude::*;

use crate::proto::deflate::compress_into;
use crate::proto::extensions::DeflateMemory;

const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// An owned copy of an event.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ev {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<u16>),
}

fn own(e: Event<'_>) -> Ev {
    match e {
        Event::Text(t) => Ev::Text(t.into_owned()),
        Event::Binary(b) => Ev::Binary(b.into_owned()),
        Event::Ping(p) => Ev::Ping(p.as_bytes().to_vec()),
        Event::Pong(p) => Ev::Pong(p.as_bytes().to_vec()),
        Event::Close { code, .. } => Ev::Close(code.map(|c| c.0)),
    }
}

fn pmd(snct: bool, cnct: bool, sbits: u8, cbits: u8) -> PerMessageDeflate {
    PerMessageDeflate {
        server_no_context_takeover: snct,
        client_no_context_takeover: cnct,
        server_max_window_bits: sbits,
        client_max_window_bits: cbits,
    }
}

fn env_with(limits: Limits) -> Env {
    let mut env = Env::new(limits);
    env.deflate = DeflateConfig {
        enabled: true,
        min_size: 0,
        client_no_context_takeover: false,
        ..DeflateConfig::default()
    };
    env
}

fn server(p: PerMessageDeflate) -> Connection {
    let mut c = Connection::new_open(Role::Server, 0);
    c.set_deflate(Some(p));
    c
}

fn client(p: PerMessageDeflate) -> Connection {
    let mut c = Connection::new_open(Role::Client, 0x9e37_79b9);
    c.set_deflate(Some(p));
    c
}

/// A masked client frame with explicit FIN, RSV and opcode.
fn frame(fin: bool, rsv: u8, op: OpCode, payload: &[u8]) -> Vec<u8> {
    let mut h = [0u8; MAX_HEADER_LEN];
    let n = frame::encode(fin, rsv, op, payload.len() as u64, Some(KEY), &mut h);
    let mut v = h[..n].to_vec();
    let start = v.len();
    v.extend_from_slice(payload);
    unmask(&mut v[start..], KEY, 0);
    v
}

/// RFC 7692 writes its examples unmasked: the same frame, masked as a client must send it.
fn masked(unmasked: &[u8]) -> Vec<u8> {
    let (h, n) = frame::decode(unmasked).unwrap().unwrap();
    frame(h.fin, h.rsv, h.opcode, &unmasked[n..])
}

/// Feeds `chunks` one after another into `conn`; events, bytes written, and the error.
fn feed(
    conn: &mut Connection,
    env: &mut Env,
    chunks: &[&[u8]],
) -> (Vec<Ev>, Vec<u8>, Option<ProtocolError>) {
    let mut out = Vec::new();
    let mut evs = Vec::new();
    for chunk in chunks {
        let mut buf = chunk.to_vec();
        let mut pos = 0;
        while pos < buf.len() {
            match conn.read(&mut buf[pos..], &mut out, env) {
                Ok(r) => {
                    pos += r.consumed;
                    match r.event {
                        Some(e) => evs.push(own(e)),
                        None => break,
                    }
                }
                Err(e) => return (evs, out, Some(e)),
            }
        }
    }
    (evs, out, None)
}

fn close_frame(code: u16) -> Vec<u8> {
    let mut v = vec![0x88, 0x02];
    v.extend_from_slice(&code.to_be_bytes());
    v
}

/// Incompressible bytes (xorshift64).
fn noise(n: usize) -> Vec<u8> {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn deflated(data: &[u8]) -> Vec<u8> {
    let mut c = Compress::new(Compression::default(), false);
    let mut out = Vec::new();
    assert!(compress_into(&mut c, data, &mut out));
    out
}

// ---- RFC 7692 §7.2.3 ----------------------------------------------------------------------

#[test]
fn rfc_single_frame_hello() {
    // §7.2.3.1: "Hello" compressed in one frame.
    let mut env = env_with(Limits::default());
    let mut s = server(PerMessageDeflate::default());
    let msg = masked(&[0xc1, 0x07, 0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00]);
    let (evs, out, err) = feed(&mut s, &mut env, &[&msg]);
    assert_eq!((evs, out, err), (vec![Ev::Text("Hello".into())], vec![], None));
    // Byte by byte: the slow path inflates as bytes arrive.
    let mut s = server(PerMessageDeflate::default());
    let pieces: Vec<&[u8]> = msg.chunks(1).collect();
    let (evs, _, err) = feed(&mut s, &mut env, &pieces);
    assert_eq!((evs, err), (vec![Ev::Text("Hello".into())], None));
    assert_eq!(env.memory.assembly, 0);
}

#[test]
fn rfc_fragmented_hello() {
    // §7.2.3.1: the same data in two fragments; RSV1 only on the first.
    let mut env = env_with(Limits::default());
    let mut s = server(PerMessageDeflate::default());
    let a = masked(&[0x41, 0x03, 0xf2, 0x48, 0xcd]);
    let b = masked(&[0x80, 0x04, 0xc9, 0xc9, 0x07, 0x00]);
    let (evs, _, err) = feed(&mut s, &mut env, &[&a, &b]);
    assert_eq!((evs, err), (vec![Ev::Text("Hello".into())], None));
    assert_eq!(env.memory.assembly, 0);
}

#[test]
fn rfc_shared_window() {
    // §7.2.3.2: the second "Hello" refers back into the first message.
    let first = masked(&[0xc1, 0x07, 0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00]);
    let second = masked(&[0xc1, 0x05, 0xf2, 0x00, 0x11, 0x00, 0x00]);
    let mut env = env_with(Limits::default());
    let mut s = server(PerMessageDeflate::default());
    let (evs, _, err) = feed(&mut s, &mut env, &[&first, &second]);
    assert_eq!(err, None);
    assert_eq!(evs, vec![Ev::Text("Hello".into()), Ev::Text("Hello".into())]);
    // Split across reads the inflater keeps its window too.
    let mut s = server(PerMessageDeflate::default());
    let joined = [first.clone(), second.clone()].concat();
    let pieces: Vec<&[u8]> = joined.chunks(3).collect();
    let (evs, _, err) = feed(&mut s, &mut env, &pieces);
    assert_eq!((evs.len(), err), (2, None));
    // With client_no_context_takeover negotiated there is no window to refer to: the
    // reference points before the start of the stream.
    let mut s = server(pmd(false, true, 15, 15));
    let (evs, out, err) = feed(&mut s, &mut env, &[&first, &second]);
    assert_eq!(evs, vec![Ev::Text("Hello".into())]);
    assert_eq!(err, Some(ProtocolError::InvalidCompressedData));
    assert_eq!(out, close_frame(1002));
}

#[test]
fn rfc_stored_block_bfinal_two_blocks_and_empty_fragment() {
    let cases: Vec<Vec<Vec<u8>>> = vec![
        // §7.2.3.3: a block with no compression.
        vec![masked(&[
            0xc1, 0x0b, 0x00, 0x05, 0x00, 0xfa, 0xff, 0x48, 0x65, 0x6c, 0x6c, 0x6f, 0x00,
        ])],
        // §7.2.3.4: a block with BFINAL set; what follows the end of the stream is ignored.
        vec![masked(&[0xc1, 0x08, 0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00, 0x00])],
        // §7.2.3.5: two deflate blocks in one message.
        vec![masked(&[
            0xc1, 0x0d, 0xf2, 0x48, 0x05, 0x00, 0x00, 0x00, 0xff, 0xff, 0xca, 0xc9, 0xc9, 0x07,
            0x00,
        ])],
        // §7.2.3.6: a flushed first fragment, then an empty stored block as the last one.
        vec![
            masked(&[0x41, 0x0b, 0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00, 0x00, 0x00, 0xff, 0xff]),
            masked(&[0x80, 0x01, 0x00]),
        ],
    ];
    for frames in cases {
        let mut env = env_with(Limits::default());
        let mut s = server(PerMessageDeflate::default());
        let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
        let (evs, out, err) = feed(&mut s, &mut env, &refs);
        assert_eq!((evs, out, err), (vec![Ev::Text("Hello".into())], vec![], None), "{frames:x?}");
        // And the next message still inflates (after BFINAL the inflater starts afresh).
        let next = masked(&[0xc1, 0x07, 0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00]);
        let (evs, _, err) = feed(&mut s, &mut env, &[&next]);
        assert_eq!((evs, err), (vec![Ev::Text("Hello".into())], None));
    }
}

// ---- the handshake --------------------------------------------------------------------------

fn request(extensions: &[&str]) -> Vec<u8> {
    let mut r = String::from(
        "GET /chat HTTP/1.1\r\nHost: server.example.com\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n",
    );
    for e in extensions {
        r.push_str(&format!("Sec-WebSocket-Extensions: {e}\r\n"));
    }
    r.push_str("\r\n");
    r.into_bytes()
}

fn handshake(
    env: &Env,
    extensions: &[&str],
    decline: bool,
) -> (Connection, Result<HandshakeStatus, HandshakeError>, String, Option<PerMessageDeflate>) {
    let mut c = Connection::new_server(Instant::now(), &env.limits);
    let mut out = Vec::new();
    let mut seen = None;
    let r = c.handshake_negotiate(&request(extensions), &mut out, env, |_, n| {
        assert!(n.is_upgrade());
        seen = n.deflate();
        if decline {
            n.decline_deflate();
        }
        Decision::accept()
    });
    (c, r, String::from_utf8(out).unwrap(), seen)
}

#[test]
fn handshake_answers_the_offer() {
    let env = env_with(Limits::default());
    let (c, r, resp, seen) = handshake(
        &env,
        &["x-foo, permessage-deflate; client_max_window_bits; server_max_window_bits=10"],
        false,
    );
    assert!(matches!(r, Ok(HandshakeStatus::Accepted { .. })));
    let want = pmd(true, false, 10, 15);
    assert_eq!((seen, c.deflate()), (Some(want), Some(want)));
    assert!(
        resp.contains(
            "\r\nSec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; \
             server_max_window_bits=10\r\n"
        ),
        "{resp}"
    );
    // Offers spread over several headers count in order.
    let (c, _, _, _) = handshake(
        &env,
        &["permessage-deflate; bogus", "permessage-deflate; client_no_context_takeover"],
        false,
    );
    assert_eq!(c.deflate(), Some(pmd(true, true, 15, 15)));
}

#[test]
fn handshake_hook_may_refuse_compression() {
    let env = env_with(Limits::default());
    let (mut c, r, resp, seen) = handshake(&env, &["permessage-deflate"], true);
    assert!(matches!(r, Ok(HandshakeStatus::Accepted { .. })));
    assert!(seen.is_some());
    assert_eq!(c.deflate(), None);
    assert!(!resp.contains("Extensions"), "{resp}");
    // Then RSV1 is a protocol error.
    let mut env = env;
    let (_, out, err) =
        feed(&mut c, &mut env, &[&masked(&[0xc1, 0x07, 0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00])]);
    assert_eq!((err, out), (Some(ProtocolError::ReservedBitsSet), close_frame(1002)));
}

#[test]
fn handshake_without_compression_configured() {
    let env = Env::default();
    let (c, r, resp, seen) = handshake(&env, &["permessage-deflate"], false);
    assert!(matches!(r, Ok(HandshakeStatus::Accepted { .. })));
    assert_eq!((seen, c.deflate()), (None, None));
    assert!(!resp.contains("Extensions"));
    // Disabled, the header is not even parsed: a malformed one is no reason to refuse.
    let (_, r, _, _) = handshake(&env, &["permessage-deflate;;"], false);
    assert!(matches!(r, Ok(HandshakeStatus::Accepted { .. })));
    // The old entry point negotiates by the Env alone.
    let env = env_with(Limits::default());
    let mut c = Connection::new_server(Instant::now(), &env.limits);
    let mut out = Vec::new();
    let r =
        c.handshake(&request(&["permessage-deflate"]), &mut out, &env, |_, _| Decision::accept());
    assert!(matches!(r, Ok(HandshakeStatus::Accepted { .. })));
    assert!(c.deflate().is_some());
}

#[test]
fn handshake_malformed_extensions_is_400() {
    let env = env_with(Limits::default());
    for bad in ["permessage-deflate;", "permessage-deflate; a=\"1", "permessage-deflate; x=1 2"] {
        let (c, r, resp, seen) = handshake(&env, &[bad], false);
        let e = r.expect_err(bad);
        assert_eq!(e.status(), 400);
        assert!(resp.starts_with("HTTP/1.1 400 "), "{resp}");
        assert_eq!((c.state(), seen), (State::Closed, None));
    }
}

#[test]
fn handshake_extra_headers_cannot_claim_an_extension() {
    let env = Env::default();
    let mut c = Connection::new_server(Instant::now(), &env.limits);
    let mut out = Vec::new();
    c.handshake(&request(&["permessage-deflate"]), &mut out, &env, |_, _| Decision::Accept {
        protocol: None,
        headers: vec![("Sec-WebSocket-Extensions".into(), "permessage-deflate".into())],
    })
    .unwrap();
    assert!(!String::from_utf8(out).unwrap().contains("Extensions"));
}

// ---- RSV1 rules ------------------------------------------------------------------------------

#[test]
fn rsv1_only_on_first_data_frame() {
    let p = PerMessageDeflate::default();
    let hello = deflated(b"Hello");
    let cases: Vec<(Vec<u8>, &str)> = vec![
        // RSV1 on a continuation.
        (
            [
                frame(false, 4, OpCode::Text, &hello[..2]),
                frame(true, 4, OpCode::Continuation, &hello[2..]),
            ]
            .concat(),
            "continuation",
        ),
        // On an uncompressed message's continuation too.
        (
            [frame(false, 0, OpCode::Text, b"He"), frame(true, 4, OpCode::Continuation, b"llo")]
                .concat(),
            "continuation of plain",
        ),
        // On control frames.
        (frame(true, 4, OpCode::Ping, b"x"), "ping"),
        (frame(true, 4, OpCode::Pong, b""), "pong"),
        (frame(true, 4, OpCode::Close, &[0x03, 0xe8]), "close"),
        // RSV2 and RSV3 stay reserved.
        (frame(true, 2, OpCode::Text, b"x"), "rsv2"),
        (frame(true, 1, OpCode::Binary, b"x"), "rsv3"),
    ];
    for (bytes, what) in cases {
        let mut env = env_with(Limits::default());
        let mut s = server(p);
        let (_, out, err) = feed(&mut s, &mut env, &[&bytes]);
        assert_eq!(err, Some(ProtocolError::ReservedBitsSet), "{what}");
        assert_eq!(out, close_frame(1002), "{what}");
        assert_eq!(env.memory.assembly, 0, "{what}");
    }
    // Without negotiation RSV1 is reserved.
    let mut env = env_with(Limits::default());
    let mut s = Connection::new_open(Role::Server, 0);
    let (_, out, err) = feed(&mut s, &mut env, &[&frame(true, 4, OpCode::Text, &hello)]);
    assert_eq!((err, out), (Some(ProtocolError::ReservedBitsSet), close_frame(1002)));
}

#[test]
fn uncompressed_messages_still_flow() {
    // RSV1 clear on a deflate connection: a plain message, zero copy as ever.
    let mut env = env_with(Limits::default());
    let mut s = server(PerMessageDeflate::default());
    let mut buf = frame(true, 0, OpCode::Text, b"plain");
    let mut out = Vec::new();
    let r = s.read(&mut buf, &mut out, &mut env).unwrap();
    assert!(matches!(r.event, Some(Event::Text(Cow::Borrowed("plain")))));
    // Interleaved with compressed ones, and a ping inside a fragmented compressed message.
    let d = deflated(b"compressed!");
    let bytes = [
        frame(false, 4, OpCode::Binary, &d[..3]),
        frame(true, 0, OpCode::Ping, b"p"),
        frame(true, 0, OpCode::Continuation, &d[3..]),
        frame(true, 0, OpCode::Text, b"after"),
    ]
    .concat();
    let (evs, out, err) = feed(&mut s, &mut env, &[&bytes]);
    assert_eq!(err, None);
    assert_eq!(
        evs,
        vec![
            Ev::Ping(b"p".to_vec()),
            Ev::Binary(b"compressed!".to_vec()),
            Ev::Text("after".into())
        ]
    );
    assert_eq!(out, [0x8a, 0x01, b'p']);
}

// ---- limits: the deflate bomb ------------------------------------------------------------------

/// 16 MiB of zeros deflate to about 16 KiB.
fn bomb() -> Vec<u8> {
    deflated(&vec![0u8; 16 << 20])
}

fn small_limits() -> Limits {
    Limits { max_message_size: 64 << 10, ..Limits::default() }
}

fn assert_nothing_past(env: &Env, limit: usize) {
    for b in &env.pool.bufs {
        assert!(b.capacity() <= limit, "a buffer of {} bytes was allocated", b.capacity());
    }
    assert_eq!(env.memory.assembly, 0, "reservations given back");
}

#[test]
fn deflate_bomb_whole_frame() {
    let b = bomb();
    assert!(b.len() < 20 << 10, "{}", b.len());
    let mut env = env_with(small_limits());
    let mut s = server(PerMessageDeflate::default());
    let (evs, out, err) = feed(&mut s, &mut env, &[&frame(true, 4, OpCode::Binary, &b)]);
    assert!(evs.is_empty());
    assert_eq!((err, out), (Some(ProtocolError::MessageTooLarge), close_frame(1009)));
    assert_eq!(env.pool.len(), 1, "the output buffer went back to the pool");
    assert_nothing_past(&env, 64 << 10);
}

#[test]
fn deflate_bomb_stops_early() {
    // The inflater stops at the limit: it does not read the rest of the stream. A bomb with
    // garbage after the point where it passes the limit fails on the limit, not the garbage.
    let mut b = deflated(&vec![0u8; 1 << 20]);
    let n = b.len();
    b.truncate(n / 2);
    b.extend_from_slice(&[0xff; 64]);
    let mut env = env_with(small_limits());
    let mut s = server(PerMessageDeflate::default());
    let (_, _, err) = feed(&mut s, &mut env, &[&frame(true, 4, OpCode::Binary, &b)]);
    assert_eq!(err, Some(ProtocolError::MessageTooLarge));
}

#[test]
fn deflate_bomb_fragmented_and_trickled() {
    let b = bomb();
    // Many fragments, each fed in pieces: the incremental path.
    let mut bytes = Vec::new();
    let chunks: Vec<&[u8]> = b.chunks(1000).collect();
    for (i, c) in chunks.iter().enumerate() {
        let op = if i == 0 { OpCode::Binary } else { OpCode::Continuation };
        let rsv = if i == 0 { 4 } else { 0 };
        bytes.extend(frame(i + 1 == chunks.len(), rsv, op, c));
    }
    let mut env = env_with(small_limits());
    let mut s = server(PerMessageDeflate::default());
    let pieces: Vec<&[u8]> = bytes.chunks(777).collect();
    let (evs, out, err) = feed(&mut s, &mut env, &pieces);
    assert!(evs.is_empty());
    assert_eq!((err, out), (Some(ProtocolError::MessageTooLarge), close_frame(1009)));
    assert_nothing_past(&env, 64 << 10);
}

#[test]
fn inflated_size_limit_is_exact() {
    let limit = 10_000usize;
    let limits = Limits { max_message_size: limit as u64, ..Limits::default() };
    for (len, ok) in [(limit, true), (limit + 1, false)] {
        let d = deflated(&vec![b'x'; len]);
        for split in [false, true] {
            let mut env = env_with(limits);
            let mut s = server(PerMessageDeflate::default());
            let bytes = frame(true, 4, OpCode::Text, &d);
            let pieces: Vec<&[u8]> =
                if split { bytes.chunks(5).collect() } else { vec![bytes.as_slice()] };
            let (evs, _, err) = feed(&mut s, &mut env, &pieces);
            if ok {
                assert_eq!((evs.len(), err), (1, None), "{len} split {split}");
            } else {
                assert_eq!(err, Some(ProtocolError::MessageTooLarge), "{len} split {split}");
            }
            assert_nothing_past(&env, limit);
        }
    }
}

#[test]
fn compressed_wire_size_is_not_the_limit() {
    // Incompressible data deflates to a little more than itself: a message at the limit
    // still fits although its compressed form is larger.
    let limit = 4096usize;
    let data = noise(limit);
    let mut c = Compress::new(Compression::none(), false);
    let mut d = Vec::new();
    assert!(compress_into(&mut c, &data, &mut d));
    assert!(d.len() > limit);
    let mut env = env_with(Limits { max_message_size: limit as u64, ..Limits::default() });
    let mut s = server(PerMessageDeflate::default());
    let (evs, _, err) = feed(&mut s, &mut env, &[&frame(true, 4, OpCode::Binary, &d)]);
    assert_eq!((evs, err), (vec![Ev::Binary(data)], None));
}

#[test]
fn memory_budget_applies_to_inflated_bytes() {
    let d = deflated(&vec![b'a'; 200_000]);
    for split in [false, true] {
        let mut env = env_with(Limits::default());
        env.memory = Memory::new(50_000);
        let mut s = server(PerMessageDeflate::default());
        let bytes = frame(true, 4, OpCode::Binary, &d);
        let pieces: Vec<&[u8]> = if split { bytes.chunks(100).collect() } else { vec![&bytes] };
        let (_, out, err) = feed(&mut s, &mut env, &pieces);
        assert_eq!((err, out), (Some(ProtocolError::OverBudget), close_frame(1009)), "{split}");
        assert_nothing_past(&env, 50_000);
    }
}

// ---- corrupt streams and UTF-8 ---------------------------------------------------------------------

#[test]
fn corrupt_stream_is_a_protocol_error() {
    for (payload, split) in [(&[0xffu8, 0xff, 0xff][..], false), (&[0x07, 0x00, 0x00][..], true)] {
        let mut env = env_with(Limits::default());
        let mut s = server(PerMessageDeflate::default());
        let bytes = frame(true, 4, OpCode::Binary, payload);
        let pieces: Vec<&[u8]> = if split { bytes.chunks(1).collect() } else { vec![&bytes] };
        let (_, out, err) = feed(&mut s, &mut env, &pieces);
        assert_eq!((err, out), (Some(ProtocolError::InvalidCompressedData), close_frame(1002)));
        assert_eq!(s.state(), State::Closed);
        assert_nothing_past(&env, 1 << 20);
    }
}

#[test]
fn invalid_utf8_after_inflating_is_1007() {
    let bad = deflated(&[b'o', b'k', 0xc3, 0x28, b'!']);
    let mut env = env_with(Limits::default());
    let mut s = server(PerMessageDeflate::default());
    let (_, out, err) = feed(&mut s, &mut env, &[&frame(true, 4, OpCode::Text, &bad)]);
    assert_eq!((err, out), (Some(ProtocolError::InvalidUtf8), close_frame(1007)));
    // Fail fast on the incremental path: the bad byte is seen before the message ends.
    let mut data = vec![b'a'; 10_000];
    data[10] = 0xff;
    let d = deflated(&data);
    let mut env = env_with(Limits::default());
    let mut s = server(PerMessageDeflate::default());
    let first = frame(false, 4, OpCode::Text, &d);
    let (_, out, err) = feed(&mut s, &mut env, &[&first]);
    assert_eq!((err, out), (Some(ProtocolError::InvalidUtf8), close_frame(1007)));
    assert_eq!(env.memory.assembly, 0);
    // A character split between two fragments' inflated output is fine.
    let d = deflated("añb".as_bytes());
    let mut env = env_with(Limits::default());
    let mut s = server(PerMessageDeflate::default());
    let bytes: Vec<Vec<u8>> = d
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let (op, rsv) = if i == 0 { (OpCode::Text, 4) } else { (OpCode::Continuation, 0) };
            frame(i + 1 == d.len(), rsv, op, std::slice::from_ref(b))
        })
        .collect();
    let refs: Vec<&[u8]> = bytes.iter().map(Vec::as_slice).collect();
    let (evs, _, err) = feed(&mut s, &mut env, &refs);
    assert_eq!((evs, err), (vec![Ev::Text("añb".into())], None));
}

// ---- sending ---------------------------------------------------------------------------------------

fn sent_frames(bytes: &[u8]) -> Vec<(FrameHeader, Vec<u8>)> {
    let mut v = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let (h, n) = frame::decode(rest).unwrap().unwrap();
        let end = n + h.payload_len as usize;
        v.push((h, rest[n..end].to_vec()));
        rest = &rest[end..];
    }
    v
}

#[test]
fn send_compresses_data_not_control() {
    let mut env = env_with(Limits::default());
    env.deflate.min_size = 16;
    let mut s = server(PerMessageDeflate::default());
    let mut out = Vec::new();
    let text = "{\"type\":\"tick\",\"price\":101.25,\"price\":101.25,\"price\":101.25}";
    s.send_message(OpCode::Text, text.as_bytes(), &mut out, &mut env).unwrap();
    s.send_message(OpCode::Text, b"short", &mut out, &mut env).unwrap();
    s.send_message(OpCode::Ping, &[b'p'; 100], &mut out, &mut env).unwrap();
    s.send_message(OpCode::Binary, &[9u8; 100], &mut out, &mut env).unwrap();
    let frames = sent_frames(&out);
    let rsv: Vec<u8> = frames.iter().map(|(h, _)| h.rsv).collect();
    assert_eq!(rsv, [4, 0, 0, 4], "RSV1 on compressed data frames only");
    assert!(frames.iter().all(|(h, _)| h.fin && h.mask.is_none()));
    assert!(frames[0].1.len() < text.len());
    assert!(!frames[0].1.ends_with(&TAIL));
    // A client-role connection inflates them back.
    let mut c = client(PerMessageDeflate::default());
    let mut cenv = env_with(Limits::default());
    let (evs, _, err) = feed(&mut c, &mut cenv, &[&out]);
    assert_eq!(err, None);
    assert_eq!(
        evs,
        vec![
            Ev::Text(text.into()),
            Ev::Text("short".into()),
            Ev::Ping(vec![b'p'; 100]),
            Ev::Binary(vec![9u8; 100])
        ]
    );
}

#[test]
fn incompressible_goes_uncompressed_without_takeover() {
    let mut env = env_with(Limits::default());
    let data = noise(1000);
    // Without a kept window it goes uncompressed; with one it is compressed all the same (the
    // window holds it for the next messages).
    for (p, rsv) in [(pmd(true, false, 15, 15), 0), (PerMessageDeflate::default(), 4)] {
        let mut s = server(p);
        let mut out = Vec::new();
        s.send_message(OpCode::Binary, &data, &mut out, &mut env).unwrap();
        s.send_message(OpCode::Binary, &[1u8; 1000], &mut out, &mut env).unwrap();
        let frames = sent_frames(&out);
        assert_eq!((frames[0].0.rsv, frames[1].0.rsv), (rsv, 4), "{p:?}");
        if rsv == 0 {
            assert_eq!(frames[0].1, data);
        }
        let mut c = client(p);
        let (evs, _, err) = feed(&mut c, &mut env_with(Limits::default()), &[&out]);
        assert_eq!(err, None);
        assert_eq!(evs, vec![Ev::Binary(data.clone()), Ev::Binary(vec![1u8; 1000])]);
    }
}

#[test]
fn window_of_8_means_no_outgoing_compression() {
    let mut env = env_with(Limits::default());
    let mut s = server(pmd(false, false, 8, 15));
    let mut out = Vec::new();
    s.send_message(OpCode::Text, &[b'a'; 500], &mut out, &mut env).unwrap();
    assert_eq!(sent_frames(&out)[0].0.rsv, 0);
    assert_eq!(s.shared_send_bits(), None);
    // Incoming messages are still inflated (client window 8 inflates with 9 bits).
    let mut c = client(pmd(false, false, 15, 8));
    let mut out = Vec::new();
    c.send_message(OpCode::Text, &[b'b'; 500], &mut out, &mut env_with(Limits::default())).unwrap();
    assert_eq!(sent_frames(&out)[0].0.rsv, 0, "a client asked for 8 cannot compress either");
    let mut c2 = Connection::new_open(Role::Client, 1);
    c2.set_deflate(Some(pmd(false, false, 8, 15)));
    let mut out = Vec::new();
    c2.send_message(OpCode::Text, &[b'b'; 500], &mut out, &mut env_with(Limits::default()))
        .unwrap();
    assert_eq!(sent_frames_masked(&out), 4);
    let (evs, _, err) = feed(&mut s, &mut env, &[&out]);
    assert_eq!((evs, err), (vec![Ev::Text("b".repeat(500))], None));
}

fn sent_frames_masked(bytes: &[u8]) -> u8 {
    frame::decode(bytes).unwrap().unwrap().0.rsv
}

#[test]
fn shared_frames_for_fan_out() {
    let mut env = env_with(Limits::default());
    let a = server(pmd(true, false, 12, 15));
    let b = server(pmd(true, true, 12, 15));
    let kept = server(pmd(false, false, 12, 15));
    assert_eq!((a.shared_send_bits(), b.shared_send_bits()), (Some(12), Some(12)));
    assert_eq!(kept.shared_send_bits(), None);
    let msg = "a message for every subscriber, compressed once ".repeat(4);
    let mut frame_bytes = Vec::new();
    assert!(env.contexts.write_shared_frame(
        &env.deflate,
        12,
        OpCode::Text,
        msg.as_bytes(),
        &mut frame_bytes
    ));
    // Below min_size, or at a window no compressor has, nothing is written.
    env.deflate.min_size = 1000;
    let mut none = Vec::new();
    assert!(!env.contexts.write_shared_frame(&env.deflate, 12, OpCode::Text, b"x", &mut none));
    env.deflate.min_size = 0;
    assert!(!env.contexts.write_shared_frame(
        &env.deflate,
        8,
        OpCode::Text,
        msg.as_bytes(),
        &mut none
    ));
    assert!(none.is_empty());
    for p in [pmd(true, false, 12, 15), pmd(true, true, 12, 15)] {
        let mut c = client(p);
        let (evs, _, err) =
            feed(&mut c, &mut env_with(Limits::default()), &[&frame_bytes, &frame_bytes]);
        assert_eq!((evs.len(), err), (2, None));
    }
}

// ---- context lifetimes -------------------------------------------------------------------------------

#[test]
fn idle_connection_without_takeover_holds_nothing() {
    let mut env = env_with(Limits::default());
    let mut s = server(pmd(true, true, 15, 15));
    let mut c = client(pmd(true, true, 15, 15));
    let mut cenv = env_with(Limits::default());
    let msg = b"some text some text some text some text".repeat(10);
    for split in [false, true] {
        let mut wire = Vec::new();
        c.send_message(OpCode::Binary, &msg, &mut wire, &mut cenv).unwrap();
        assert_eq!(c.holds_deflate_contexts(), (false, false));
        let pieces: Vec<&[u8]> = if split { wire.chunks(7).collect() } else { vec![&wire] };
        let (evs, _, err) = feed(&mut s, &mut env, &pieces);
        assert_eq!((evs, err), (vec![Ev::Binary(msg.clone())], None));
        assert_eq!(s.holds_deflate_contexts(), (false, false), "split {split}");
        assert_eq!(env.contexts.pooled_inflaters(), 1, "the lent inflater came back");
        let mut out = Vec::new();
        s.send_message(OpCode::Binary, &msg, &mut out, &mut env).unwrap();
        assert_eq!(s.holds_deflate_contexts(), (false, false));
        assert_eq!(env.contexts.compressors(), 1, "the worker's compressor");
    }
    assert_eq!(s.buffered(), std::mem::size_of::<DeflateState>());
}

#[test]
fn takeover_keeps_contexts_and_release_frees_them() {
    let mut env = env_with(Limits::default());
    let mut s = server(PerMessageDeflate::default());
    let mut c = client(PerMessageDeflate::default());
    let mut cenv = env_with(Limits::default());
    let msg = b"hello hello hello hello hello hello".repeat(4);
    let mut wire = Vec::new();
    c.send_message(OpCode::Binary, &msg, &mut wire, &mut cenv).unwrap();
    let (evs, _, _) = feed(&mut s, &mut env, &[&wire]);
    assert_eq!(evs.len(), 1);
    let mut out = Vec::new();
    s.send_message(OpCode::Binary, &msg, &mut out, &mut env).unwrap();
    assert_eq!(s.holds_deflate_contexts(), (true, true));
    assert_eq!((env.contexts.pooled_inflaters(), env.contexts.compressors()), (0, 0));
    assert!(s.buffered() > 32 << 10);
    s.release(&mut env);
    assert_eq!(s.holds_deflate_contexts(), (false, false));
}

#[test]
fn dedicated_memory_mode_keeps_what_it_used() {
    let mut env = env_with(Limits::default());
    env.deflate.memory = DeflateMemory::Dedicated;
    let mut s = server(pmd(true, true, 15, 15));
    let mut c = client(pmd(true, true, 15, 15));
    let mut cenv = env_with(Limits::default());
    let msg = b"dedicated dedicated dedicated dedicated".repeat(3);
    for _ in 0..3 {
        let mut wire = Vec::new();
        c.send_message(OpCode::Binary, &msg, &mut wire, &mut cenv).unwrap();
        let (evs, _, err) = feed(&mut s, &mut env, &[&wire]);
        assert_eq!((evs, err), (vec![Ev::Binary(msg.clone())], None));
        let mut out = Vec::new();
        s.send_message(OpCode::Binary, &msg, &mut out, &mut env).unwrap();
        let (evs, _, err) = feed(&mut c, &mut cenv, &[&out]);
        assert_eq!((evs, err), (vec![Ev::Binary(msg.clone())], None));
        assert_eq!(s.holds_deflate_contexts(), (true, true));
        assert_eq!(env.contexts.pooled_inflaters(), 0);
    }
}

#[test]
fn release_mid_message_gives_everything_back() {
    let mut env = env_with(Limits::default());
    let mut s = server(pmd(false, true, 15, 15));
    let d = deflated(&[b'z'; 5000]);
    let (_, _, err) =
        feed(&mut s, &mut env, &[&frame(false, 4, OpCode::Binary, &d[..d.len() / 2])]);
    assert_eq!(err, None);
    assert!(env.memory.assembly > 0);
    assert_eq!(s.holds_deflate_contexts(), (false, true));
    s.release(&mut env);
    assert_eq!(env.memory.assembly, 0);
    assert_eq!(env.contexts.pooled_inflaters(), 1);
}

// ---- round trips ---------------------------------------------------------------------------------------

/// Sends `msgs` from `a` to `b` (both with `p`), each fed in pieces of `piece` bytes; returns
/// the total bytes on the wire.
fn round_trip(
    p: PerMessageDeflate,
    msgs: &[Vec<u8>],
    piece: usize,
    from_client: bool,
    level: u8,
) -> usize {
    let (mut a, mut b) = if from_client { (client(p), server(p)) } else { (server(p), client(p)) };
    let mut aenv = env_with(Limits::default());
    aenv.deflate.level = level;
    let mut benv = env_with(Limits::default());
    let mut wire_total = 0;
    for m in msgs {
        let mut wire = Vec::new();
        a.send_message(OpCode::Binary, m, &mut wire, &mut aenv).unwrap();
        wire_total += wire.len();
        let pieces: Vec<&[u8]> = wire.chunks(piece.max(1)).collect();
        let (evs, out, err) = feed(&mut b, &mut benv, &pieces);
        assert_eq!(err, None, "{p:?}");
        assert!(out.is_empty());
        assert_eq!(evs, vec![Ev::Binary(m.clone())], "{p:?}");
        assert_eq!(benv.memory.assembly, 0);
    }
    wire_total
}

#[test]
fn round_trips_at_every_window_size() {
    let msgs: Vec<Vec<u8>> = (0..6)
        .map(|i| {
            format!("{{\"seq\":{i},\"user\":\"alice\",\"text\":\"hello there, how are you?\"}}")
                .repeat(8)
                .into_bytes()
        })
        .collect();
    for bits in 9..=15u8 {
        for (snct, cnct) in [(false, false), (true, true), (true, false), (false, true)] {
            for from_client in [false, true] {
                for piece in [1usize, 13, 1 << 20] {
                    let p = pmd(snct, cnct, bits, bits);
                    round_trip(p, &msgs, piece, from_client, 1);
                }
            }
        }
    }
}

#[test]
fn takeover_compresses_repeated_messages_better() {
    let msgs: Vec<Vec<u8>> = (0..10)
        .map(|i| {
            format!("{{\"channel\":\"prices\",\"seq\":{i},\"bid\":101.25,\"ask\":101.5}}")
                .into_bytes()
        })
        .collect();
    let kept = round_trip(pmd(false, false, 15, 15), &msgs, 1 << 20, false, 6);
    let reset = round_trip(pmd(true, true, 15, 15), &msgs, 1 << 20, false, 6);
    assert!(kept < reset, "context takeover {kept} bytes, none {reset}");
}

proptest! {
    #[test]
    fn round_trip_anything(
        msgs in proptest::collection::vec(
            prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..2000),
                proptest::collection::vec(0u8..4, 0..6000),
                "[a-z ]{0,300}".prop_map(String::into_bytes),
            ],
            1..6,
        ),
        sbits in 8u8..=15,
        cbits in 8u8..=15,
        snct in any::<bool>(),
        cnct in any::<bool>(),
        piece in 1usize..4000,
        from_client in any::<bool>(),
        level in 0u8..=9,
    ) {
        round_trip(pmd(snct, cnct, sbits, cbits), &msgs, piece, from_client, level);
    }

    #[test]
    fn arbitrary_compressed_frames_never_panic(
        payload in proptest::collection::vec(any::<u8>(), 0..300),
        cuts in 1usize..50,
        fragmented in any::<bool>(),
        takeover in any::<bool>(),
    ) {
        let mut env = env_with(Limits { max_message_size: 4096, ..Limits::default() });
        let mut s = server(pmd(false, !takeover, 15, 15));
        let bytes = if fragmented {
            let h = payload.len() / 2;
            [frame(false, 4, OpCode::Text, &payload[..h]), frame(true, 0, OpCode::Continuation, &payload[h..])].concat()
        } else {
            frame(true, 4, OpCode::Binary, &payload)
        };
        let pieces: Vec<&[u8]> = bytes.chunks(cuts).collect();
        let (_, _, err) = feed(&mut s, &mut env, &pieces);
        if err.is_some() {
            prop_assert_eq!(s.state(), State::Closed);
        }
        s.release(&mut env);
        prop_assert_eq!(env.memory.assembly, 0);
        for b in &env.pool.bufs {
            prop_assert!(b.capacity() <= 4096);
        }
    }
}
