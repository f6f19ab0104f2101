//! Byte-vector tests for the connection state machine: a client-role `Connection` writes the
//! frames, a server-role one reads them, with no socket and a fake clock.

use super::*;
use proptest::prelude::*;

/// An owned copy of an event, for comparisons.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ev {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<u16>, String),
}

fn own(e: Event<'_>) -> Ev {
    match e {
        Event::Text(t) => Ev::Text(t.into_owned()),
        Event::Binary(b) => Ev::Binary(b.into_owned()),
        Event::Ping(p) => Ev::Ping(p.as_bytes().to_vec()),
        Event::Pong(p) => Ev::Pong(p.as_bytes().to_vec()),
        Event::Close { code, reason } => {
            Ev::Close(code.map(|c| c.0), String::from_utf8(reason.as_bytes().to_vec()).unwrap())
        }
    }
}

fn server() -> Connection {
    Connection::new_open(Role::Server, 0)
}

fn client() -> Connection {
    Connection::new_open(Role::Client, 0x1234_5678)
}

/// Masked client frame.
fn cframe(op: OpCode, fin: bool, payload: &[u8]) -> Vec<u8> {
    let mut c = client();
    let mut out = Vec::new();
    c.write_frame(op, fin, payload, &mut out);
    out
}

/// Raw frame with explicit first byte and mask key.
fn raw(b0: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut h = [0u8; MAX_HEADER_LEN];
    let op = OpCode::from_u8(b0 & 0xf).unwrap_or(OpCode::Binary);
    let n = frame::encode(b0 & 0x80 != 0, (b0 >> 4) & 7, op, payload.len() as u64, mask, &mut h);
    h[0] = b0;
    let mut v = h[..n].to_vec();
    let start = v.len();
    v.extend_from_slice(payload);
    if let Some(k) = mask {
        unmask(&mut v[start..], k, 0);
    }
    v
}

/// Feeds `chunks` one after another; returns events, what the server wrote, and the error.
fn feed(conn: &mut Connection, chunks: &[&[u8]]) -> (Vec<Ev>, Vec<u8>, Option<ProtocolError>) {
    feed_with(conn, &Limits::default(), chunks)
}

fn feed_with(
    conn: &mut Connection,
    limits: &Limits,
    chunks: &[&[u8]],
) -> (Vec<Ev>, Vec<u8>, Option<ProtocolError>) {
    let mut env = Env::new(*limits);
    let mut out = Vec::new();
    let mut evs = Vec::new();
    for chunk in chunks {
        let mut buf = chunk.to_vec();
        let mut pos = 0;
        let len = buf.len();
        loop {
            match conn.read(&mut buf[pos..], &mut out, &mut env) {
                Ok(r) => {
                    assert!(r.consumed <= len - pos);
                    pos += r.consumed;
                    match r.event {
                        Some(e) => {
                            if let Event::Text(Cow::Owned(s)) = e {
                                evs.push(Ev::Text(s.clone()));
                                env.pool.put(s.into_bytes());
                            } else {
                                evs.push(own(e));
                            }
                        }
                        None => {
                            assert_eq!(pos, len, "no event must mean all consumed");
                            break;
                        }
                    }
                    if pos == len {
                        break;
                    }
                }
                Err(e) => return (evs, out, Some(e)),
            }
        }
    }
    (evs, out, None)
}

fn feed_all(bytes: &[u8]) -> (Vec<Ev>, Vec<u8>, Option<ProtocolError>) {
    feed(&mut server(), &[bytes])
}

/// The close frame a server sends with `code`.
fn close_frame(code: u16) -> Vec<u8> {
    let mut v = vec![0x88, 0x02];
    v.extend_from_slice(&code.to_be_bytes());
    v
}

#[test]
fn rfc_masked_hello_is_zero_copy() {
    let mut buf = vec![0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58];
    let mut c = server();
    let mut out = Vec::new();
    let mut env = Env::default();
    let r = c.read(&mut buf, &mut out, &mut env).unwrap();
    assert_eq!(r.consumed, 11);
    match r.event {
        Some(Event::Text(Cow::Borrowed(s))) => assert_eq!(s, "Hello"),
        other => panic!("expected borrowed text, got {other:?}"),
    }
    assert!(out.is_empty());
    assert_eq!(c.buffered(), 0, "a whole message in one read allocates nothing");
}

#[test]
fn fragmented_message_is_assembled() {
    let mut bytes = cframe(OpCode::Text, false, b"Hel");
    bytes.extend(cframe(OpCode::Continuation, true, b"lo"));
    let (evs, out, err) = feed_all(&bytes);
    assert_eq!(err, None);
    assert_eq!(evs, vec![Ev::Text("Hello".into())]);
    assert!(out.is_empty());
}

#[test]
fn ping_gets_pong_even_inside_a_fragmented_message() {
    let mut bytes = cframe(OpCode::Binary, false, b"ab");
    bytes.extend(cframe(OpCode::Ping, true, b"hi"));
    bytes.extend(cframe(OpCode::Continuation, true, b"cd"));
    let (evs, out, err) = feed_all(&bytes);
    assert_eq!(err, None);
    assert_eq!(evs, vec![Ev::Ping(b"hi".to_vec()), Ev::Binary(b"abcd".to_vec())]);
    assert_eq!(out, vec![0x8a, 0x02, b'h', b'i']);
}

#[test]
fn pong_is_reported_and_not_answered() {
    let (evs, out, _) = feed_all(&cframe(OpCode::Pong, true, b"x"));
    assert_eq!(evs, vec![Ev::Pong(b"x".to_vec())]);
    assert!(out.is_empty());
}

#[test]
fn peer_close_is_echoed_with_its_code() {
    let mut c = server();
    let (evs, out, err) = feed(&mut c, &[&cframe(OpCode::Close, true, b"\x03\xe8bye")]);
    assert_eq!(err, None);
    assert_eq!(evs, vec![Ev::Close(Some(1000), "bye".into())]);
    assert_eq!(out, close_frame(1000));
    assert_eq!(c.state(), State::Closed);
    // Anything after the close is ignored.
    let (evs, out, _) = feed(&mut c, &[&cframe(OpCode::Text, true, b"late")]);
    assert!(evs.is_empty() && out.is_empty());
}

#[test]
fn empty_close_is_echoed_empty() {
    let (evs, out, _) = feed_all(&cframe(OpCode::Close, true, b""));
    assert_eq!(evs, vec![Ev::Close(None, String::new())]);
    assert_eq!(out, vec![0x88, 0x00]);
}

#[test]
fn server_initiated_close_waits_for_the_echo() {
    let t0 = Instant::now();
    let mut c = server();
    let mut out = Vec::new();
    c.close(t0, CloseCode::GOING_AWAY, "shutdown", &mut out, &Limits::default());
    assert_eq!(&out[..4], &[0x88, 10, 0x03, 0xe9]);
    assert_eq!(c.state(), State::Closing);
    assert!(!c.can_send());
    assert_eq!(c.send_text("x", &mut out), Err(SendAfterClose));
    // Data still arriving is parsed but not delivered; the echo closes.
    let mut bytes = cframe(OpCode::Text, true, b"in flight");
    bytes.extend(cframe(OpCode::Close, true, b"\x03\xe9"));
    let (evs, out2, err) = feed(&mut c, &[&bytes]);
    assert_eq!(err, None);
    assert_eq!(evs, vec![Ev::Close(Some(1001), String::new())]);
    assert!(out2.is_empty(), "no second close frame");
    assert_eq!(c.state(), State::Closed);
}

#[test]
fn close_timeout_fires() {
    let t0 = Instant::now();
    let mut c = server();
    let mut out = Vec::new();
    c.close(t0, CloseCode::NORMAL, "", &mut out, &Limits::default());
    let d = c.deadline().unwrap();
    assert!(!c.handle_timeout(d - Duration::from_millis(1)));
    assert!(c.handle_timeout(d));
    assert_eq!(c.state(), State::Closed);
}

#[test]
fn close_with_unsendable_code_sends_1000() {
    let mut c = server();
    let mut out = Vec::new();
    c.close(Instant::now(), CloseCode(1005), "", &mut out, &Limits::default());
    assert_eq!(out, close_frame(1000));
}

/// Each bad input, the error and the close code that goes out.
#[test]
fn rejections_send_the_rfc_close_code() {
    let key = Some([1, 2, 3, 4]);
    let mut frag_then_text = cframe(OpCode::Text, false, b"a");
    frag_then_text.extend(cframe(OpCode::Text, true, b"b"));
    let cases: Vec<(&str, Vec<u8>, ProtocolError, u16)> = vec![
        ("unmasked", raw(0x81, b"hi", None), ProtocolError::UnmaskedFrame, 1002),
        ("rsv1", raw(0xc1, b"hi", key), ProtocolError::ReservedBitsSet, 1002),
        ("rsv2", raw(0xa1, b"hi", key), ProtocolError::ReservedBitsSet, 1002),
        ("rsv3", raw(0x91, b"hi", key), ProtocolError::ReservedBitsSet, 1002),
        ("opcode 3", raw(0x83, b"", key), ProtocolError::ReservedOpcode(3), 1002),
        ("opcode 0xb", raw(0x8b, b"", key), ProtocolError::ReservedOpcode(0xb), 1002),
        ("fragmented ping", raw(0x09, b"", key), ProtocolError::FragmentedControl, 1002),
        ("lone continuation", raw(0x80, b"x", key), ProtocolError::UnexpectedContinuation, 1002),
        ("text inside fragments", frag_then_text, ProtocolError::ExpectedContinuation, 1002),
        ("bad utf8", cframe(OpCode::Text, true, b"\xff"), ProtocolError::InvalidUtf8, 1007),
        ("close 1 byte", cframe(OpCode::Close, true, b"\x03"), ProtocolError::CloseLength, 1002),
        (
            "close code 1005",
            cframe(OpCode::Close, true, b"\x03\xed"),
            ProtocolError::InvalidCloseCode(1005),
            1002,
        ),
        (
            "close code 999",
            cframe(OpCode::Close, true, b"\x03\xe7"),
            ProtocolError::InvalidCloseCode(999),
            1002,
        ),
        (
            "close reason bad utf8",
            cframe(OpCode::Close, true, b"\x03\xe8\xc0\xaf"),
            ProtocolError::InvalidUtf8,
            1007,
        ),
    ];
    for (name, bytes, want, code) in cases {
        let mut c = server();
        let (_, out, err) = feed(&mut c, &[&bytes]);
        assert_eq!(err, Some(want), "{name}");
        assert_eq!(out, close_frame(code), "{name}");
        assert_eq!(c.state(), State::Closed, "{name}");
    }
}

#[test]
fn control_frame_over_125_is_rejected() {
    // Header claims 126 bytes for a ping: decode rejects it before any payload.
    let (_, out, err) = feed_all(&[0x89, 0xfe, 0x00, 0x7e, 1, 2, 3, 4]);
    assert_eq!(err, Some(ProtocolError::ControlTooLong));
    assert_eq!(out, close_frame(1002));
}

#[test]
fn invalid_utf8_fails_fast_before_the_message_ends() {
    let mut c = server();
    // First fragment holds an invalid sequence; the message is not finished.
    let (_, out, err) = feed(&mut c, &[&cframe(OpCode::Text, false, b"ok\xed\xa0\x80")]);
    assert_eq!(err, Some(ProtocolError::InvalidUtf8));
    assert_eq!(out, close_frame(1007));
}

#[test]
fn invalid_utf8_fails_fast_inside_one_frame_split_across_reads() {
    let mut c = server();
    let bytes = cframe(OpCode::Text, true, b"abc\xffdefghijklmnop");
    // Deliver the header and the first 4 payload bytes only.
    let (_, out, err) = feed(&mut c, &[&bytes[..6 + 4]]);
    assert_eq!(err, Some(ProtocolError::InvalidUtf8));
    assert_eq!(out, close_frame(1007));
}

#[test]
fn size_limits_give_1009() {
    let limits =
        Limits { max_frame_size: 10, max_message_size: 15, max_fragments: 3, ..Limits::default() };
    let run = |bytes: Vec<u8>| {
        let mut c = Connection::new_open(Role::Server, 0);
        feed_with(&mut c, &limits, &[&bytes])
    };
    let (_, out, err) = run(cframe(OpCode::Binary, true, &[0; 11]));
    assert_eq!((err, out), (Some(ProtocolError::FrameTooLarge), close_frame(1009)));
    let mut b = cframe(OpCode::Binary, false, &[0; 10]);
    b.extend(cframe(OpCode::Continuation, true, &[0; 6]));
    let (_, out, err) = run(b);
    assert_eq!((err, out), (Some(ProtocolError::MessageTooLarge), close_frame(1009)));
    let mut b = Vec::new();
    b.extend(cframe(OpCode::Binary, false, b"a"));
    b.extend(cframe(OpCode::Continuation, false, b"b"));
    b.extend(cframe(OpCode::Continuation, false, b"c"));
    b.extend(cframe(OpCode::Continuation, true, b"d"));
    let (_, out, err) = run(b);
    assert_eq!((err, out), (Some(ProtocolError::TooManyFragments), close_frame(1009)));
    // Exactly at the limits is fine.
    let mut b = cframe(OpCode::Binary, false, &[7; 10]);
    b.extend(cframe(OpCode::Continuation, true, &[7; 5]));
    let (evs, _, err) = run(b);
    assert_eq!(err, None);
    assert_eq!(evs, vec![Ev::Binary(vec![7; 15])]);
}

#[test]
fn oversized_length_is_rejected_before_any_payload_arrives() {
    // A 64-bit length of 1 TiB: rejected from the header alone, nothing buffered.
    let mut c = server();
    let mut h = [0u8; MAX_HEADER_LEN];
    let n = frame::encode(true, 0, OpCode::Binary, 1 << 40, Some([0; 4]), &mut h);
    let (_, out, err) = feed(&mut c, &[&h[..n]]);
    assert_eq!(err, Some(ProtocolError::FrameTooLarge));
    assert_eq!(out, close_frame(1009));
    assert_eq!(c.buffered(), 0);
}

fn sample_stream() -> (Vec<u8>, Vec<Ev>) {
    let mut b = Vec::new();
    let mut want = Vec::new();
    b.extend(cframe(OpCode::Text, true, "héllo wörld €𝄞".as_bytes()));
    want.push(Ev::Text("héllo wörld €𝄞".into()));
    b.extend(cframe(OpCode::Binary, true, &[0u8; 300]));
    want.push(Ev::Binary(vec![0; 300]));
    b.extend(cframe(OpCode::Text, false, "κό".as_bytes()));
    b.extend(cframe(OpCode::Ping, true, b"p"));
    want.push(Ev::Ping(b"p".to_vec()));
    b.extend(cframe(OpCode::Continuation, false, "σμε".as_bytes()));
    b.extend(cframe(OpCode::Continuation, true, b""));
    want.push(Ev::Text("κόσμε".into()));
    let big: Vec<u8> = (0..70_000u32).map(|i| i as u8).collect();
    b.extend(cframe(OpCode::Binary, true, &big));
    want.push(Ev::Binary(big));
    b.extend(cframe(OpCode::Text, true, b""));
    want.push(Ev::Text(String::new()));
    b.extend(cframe(OpCode::Close, true, b"\x0f\xa0done"));
    want.push(Ev::Close(Some(4000), "done".into()));
    (b, want)
}

#[test]
fn every_two_way_split_gives_the_same_events() {
    let (bytes, want) = sample_stream();
    // Every split point through the small frames, then a stride through the big one.
    let splits = (0..600).chain((600..bytes.len()).step_by(997));
    for at in splits {
        let mut c = server();
        let (evs, out, err) = feed(&mut c, &[&bytes[..at], &bytes[at..]]);
        assert_eq!(err, None, "split at {at}");
        assert_eq!(evs, want, "split at {at}");
        let mut expect_out = vec![0x8a, 0x01, b'p'];
        expect_out.extend(close_frame(4000));
        assert_eq!(out, expect_out, "split at {at}");
    }
}

#[test]
fn byte_by_byte_gives_the_same_events() {
    let (bytes, want) = sample_stream();
    let chunks: Vec<&[u8]> = bytes.chunks(1).collect();
    let (evs, _, err) = feed(&mut server(), &chunks);
    assert_eq!(err, None);
    assert_eq!(evs, want);
}

#[test]
fn client_role_reads_unmasked_and_rejects_masked() {
    let mut c = client();
    let mut srv = server();
    let mut wire = Vec::new();
    srv.send_text("hi", &mut wire).unwrap();
    srv.send_binary(&[1, 2], &mut wire).unwrap();
    let (evs, _, err) = feed(&mut c, &[&wire]);
    assert_eq!(err, None);
    assert_eq!(evs, vec![Ev::Text("hi".into()), Ev::Binary(vec![1, 2])]);
    let (_, out, err) = feed(&mut client(), &[&cframe(OpCode::Text, true, b"x")]);
    assert_eq!(err, Some(ProtocolError::MaskedFrame));
    // The client's own close frame is masked: 2 header + 4 key + 2 payload.
    assert_eq!(out.len(), 8);
    assert_eq!(out[0], 0x88);
}

static ENV: std::sync::LazyLock<Env> = std::sync::LazyLock::new(Env::default);

const REQUEST: &[u8] = b"GET /chat HTTP/1.1\r\nHost: server.example.com\r\nUpgrade: websocket\r\n\
Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nOrigin: http://example.com\r\n\
Sec-WebSocket-Version: 13\r\n\r\n";

#[test]
fn handshake_at_every_split_then_frames() {
    let mut stream = REQUEST.to_vec();
    stream.extend(cframe(OpCode::Text, true, b"first"));
    for at in 1..stream.len() {
        let mut c = Connection::new_server(Instant::now(), &Limits::default());
        let mut out = Vec::new();
        let first = c.handshake(&stream[..at], &mut out, &ENV, |_, _| Decision::accept()).unwrap();
        let (rest, second) = if at >= REQUEST.len() {
            (&stream[REQUEST.len()..], first)
        } else {
            assert_eq!(first, HandshakeStatus::Partial, "split at {at}");
            let s = c.handshake(&stream[at..], &mut out, &ENV, |_, _| Decision::accept()).unwrap();
            (&stream[at + (REQUEST.len() - at)..], s)
        };
        match second {
            HandshakeStatus::Accepted { consumed } => {
                let expect = if at >= REQUEST.len() { REQUEST.len() } else { REQUEST.len() - at };
                assert_eq!(consumed, expect, "split at {at}");
            }
            other => panic!("split at {at}: {other:?}"),
        }
        assert_eq!(c.state(), State::Open);
        assert_eq!(c.buffered(), 0, "head buffer freed after the handshake");
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 101 "), "{text}");
        assert!(text.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{text}");
        let (evs, _, err) = feed(&mut c, &[rest]);
        assert_eq!(err, None);
        assert_eq!(evs, vec![Ev::Text("first".into())]);
    }
}

#[test]
fn handshake_reject_and_errors() {
    let mut c = Connection::new_server(Instant::now(), &Limits::default());
    let mut out = Vec::new();
    let s = c.handshake(REQUEST, &mut out, &ENV, |_, _| Decision::Reject { status: 403 }).unwrap();
    assert_eq!(s, HandshakeStatus::Rejected { status: 403 });
    assert!(out.starts_with(b"HTTP/1.1 403"));
    assert_eq!(c.state(), State::Closed);

    let mut c = Connection::new_server(Instant::now(), &Limits::default());
    let mut out = Vec::new();
    let e = c.handshake(b"GARBAGE\r\n\r\n", &mut out, &ENV, |_, _| Decision::accept()).unwrap_err();
    assert_eq!(e.status(), 400);
    assert!(out.starts_with(b"HTTP/1.1 400"));
    assert_eq!(c.state(), State::Closed);
}

#[test]
fn handshake_head_limit_holds_across_reads() {
    let limits = Limits { max_handshake_bytes: 256, ..Limits::default() };
    let mut c = Connection::new_server(Instant::now(), &limits);
    let env = Env::new(limits);
    let mut out = Vec::new();
    let filler = b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n";
    let mut result = c.handshake(b"GET / HTTP/1.1\r\n", &mut out, &env, |_, _| Decision::accept());
    for _ in 0..10 {
        if !matches!(result, Ok(HandshakeStatus::Partial)) {
            break;
        }
        assert!(c.buffered() <= 1024);
        result = c.handshake(filler, &mut out, &env, |_, _| Decision::accept());
    }
    assert_eq!(result.unwrap_err().status(), 431);
    assert!(out.starts_with(b"HTTP/1.1 431"));
    assert_eq!(c.buffered(), 0);
}

/// A head trickled in one byte per read is parsed once it can be complete, not from its start
/// on every read (which cost up to 8192 parses of up to 8 KiB each).
#[test]
fn a_trickled_head_is_not_reparsed_per_byte() {
    let mut c = Connection::new_server(Instant::now(), &Limits::default());
    let mut out = Vec::new();
    let before = handshake::PARSES.with(|p| p.get());
    let mut status = HandshakeStatus::Partial;
    for b in REQUEST.chunks(1) {
        status = c.handshake(b, &mut out, &ENV, |_, _| Decision::accept()).unwrap();
    }
    assert_eq!(status, HandshakeStatus::Accepted { consumed: 1 });
    let parses = handshake::PARSES.with(|p| p.get()) - before;
    assert!(parses <= 2, "{parses} parses for a {}-byte head", REQUEST.len());
    // Bare-LF heads end too (the parser accepts them).
    let lf = String::from_utf8(REQUEST.to_vec()).unwrap().replace("\r\n", "\n");
    let mut c = Connection::new_server(Instant::now(), &Limits::default());
    let mut status = HandshakeStatus::Partial;
    for b in lf.as_bytes().chunks(7) {
        status = c.handshake(b, &mut out, &ENV, |_, _| Decision::accept()).unwrap();
    }
    assert!(matches!(status, HandshakeStatus::Accepted { .. }), "{status:?}");
}

/// The head limit saturates: `usize::MAX` (from C's `size_t`) neither panics nor loses the head.
#[test]
fn an_unbounded_head_limit_does_not_overflow() {
    let limits = Limits { max_handshake_bytes: usize::MAX, ..Limits::default() };
    let env = Env::new(limits);
    let mut c = Connection::new_server(Instant::now(), &limits);
    let mut out = Vec::new();
    let (a, b) = REQUEST.split_at(40);
    assert_eq!(
        c.handshake(a, &mut out, &env, |_, _| Decision::accept()),
        Ok(HandshakeStatus::Partial)
    );
    let s = c.handshake(b, &mut out, &env, |_, _| Decision::accept()).unwrap();
    assert!(matches!(s, HandshakeStatus::Accepted { .. }), "{s:?}");
}

/// Confirming a subprotocol the client never offered is answered with 500, not with a 101
/// the client must fail.
#[test]
fn a_subprotocol_not_offered_gets_500() {
    let mut c = Connection::new_server(Instant::now(), &Limits::default());
    let mut out = Vec::new();
    let s = c
        .handshake(REQUEST, &mut out, &ENV, |_, _| Decision::Accept {
            protocol: Some("chat".into()),
            headers: Vec::new(),
        })
        .unwrap();
    assert_eq!(s, HandshakeStatus::Rejected { status: 500 });
    assert!(out.starts_with(b"HTTP/1.1 500"), "{}", String::from_utf8_lossy(&out));
    assert_eq!(c.state(), State::Closed);
}

/// The memory budget: a message that must be assembled reserves its announced length, is
/// refused when it does not fit, and gives the reservation back when it completes.
#[test]
fn assembly_reserves_against_the_budget_and_gives_it_back() {
    let mut env = Env::default();
    env.memory.limit = 1000;
    let mut s = server();
    let msg = cframe(OpCode::Binary, true, &[5u8; 600]);
    let mut out = Vec::new();
    let mut first = msg[..100].to_vec();
    let r = s.read(&mut first, &mut out, &mut env).unwrap();
    assert!(r.event.is_none());
    assert_eq!(env.memory.assembly, 600);
    let mut rest = msg[100..].to_vec();
    let r = s.read(&mut rest, &mut out, &mut env).unwrap();
    assert!(matches!(r.event, Some(Event::Binary(_))));
    assert_eq!(env.memory.assembly, 0);
    // Two messages in flight on two connections: the second does not fit.
    let mut a = server();
    let mut b = server();
    a.read(&mut msg[..100].to_vec(), &mut out, &mut env).unwrap();
    let e = b.read(&mut msg[..100].to_vec(), &mut out, &mut env).unwrap_err();
    assert_eq!(e, ProtocolError::OverBudget);
    assert_eq!(e.close_code(), CloseCode::TOO_BIG);
    a.release(&mut env);
    assert_eq!(env.memory.assembly, 0);
}

#[test]
fn handshake_timeout() {
    let t0 = Instant::now();
    let mut c = Connection::new_server(t0, &Limits::default());
    let mut out = Vec::new();
    assert_eq!(
        c.handshake(b"GET / HT", &mut out, &ENV, |_, _| Decision::accept()),
        Ok(HandshakeStatus::Partial)
    );
    assert!(!c.handle_timeout(t0 + Duration::from_secs(9)));
    assert!(c.handle_timeout(t0 + Duration::from_secs(10)));
    assert_eq!(c.state(), State::Closed);
    assert_eq!(c.buffered(), 0);
}

#[derive(Debug, Clone)]
enum Msg {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
}

fn msg_strategy() -> impl Strategy<Value = (Msg, usize)> {
    let m = prop_oneof![
        any::<String>().prop_map(Msg::Text),
        proptest::collection::vec(any::<u8>(), 0..2000).prop_map(Msg::Binary),
        proptest::collection::vec(any::<u8>(), 0..125).prop_map(Msg::Ping),
    ];
    (m, 1usize..5)
}

proptest! {
    /// Random messages, randomly fragmented, delivered in random chunks: the same messages come
    /// out, and a pong for every ping.
    #[test]
    fn random_streams_round_trip(
        msgs in proptest::collection::vec(msg_strategy(), 0..12),
        cuts in proptest::collection::vec(1usize..500, 0..40),
    ) {
        let mut wire = Vec::new();
        let mut want = Vec::new();
        let mut cl = client();
        let mut pongs = Vec::new();
        for (m, parts) in &msgs {
            let (op, data, ev) = match m {
                Msg::Text(s) => (OpCode::Text, s.as_bytes().to_vec(), Ev::Text(s.clone())),
                Msg::Binary(b) => (OpCode::Binary, b.clone(), Ev::Binary(b.clone())),
                Msg::Ping(p) => {
                    frame::write_frame(&mut pongs, OpCode::Pong, true, p);
                    cl.write_frame(OpCode::Ping, true, p, &mut wire);
                    want.push(Ev::Ping(p.clone()));
                    continue;
                }
            };
            // Split the payload into `parts` fragments (cutting UTF-8 anywhere is legal).
            let n = data.len();
            let bounds: Vec<usize> = (0..=*parts).map(|i| i * n / parts).collect();
            for i in 0..*parts {
                let o = if i == 0 { op } else { OpCode::Continuation };
                cl.write_frame(o, i + 1 == *parts, &data[bounds[i]..bounds[i + 1]], &mut wire);
            }
            want.push(ev);
        }
        let mut chunks: Vec<&[u8]> = Vec::new();
        let mut rest = &wire[..];
        for c in cuts {
            if rest.is_empty() { break; }
            let c = c.min(rest.len());
            chunks.push(&rest[..c]);
            rest = &rest[c..];
        }
        chunks.push(rest);
        let (evs, out, err) = feed(&mut server(), &chunks);
        prop_assert_eq!(err, None);
        prop_assert_eq!(evs, want);
        prop_assert_eq!(out, pongs);
    }

    /// Arbitrary bytes never panic, never grow buffers past the limits.
    #[test]
    fn arbitrary_bytes_are_safe(bytes in proptest::collection::vec(any::<u8>(), 0..4000), cut in 0usize..4000) {
        let limits = Limits { max_message_size: 1000, max_frame_size: 1000, ..Limits::default() };
        let mut c = Connection::new_open(Role::Server, 0);
        let cut = cut.min(bytes.len());
        let _ = feed_with(&mut c, &limits, &[&bytes[..cut], &bytes[cut..]]);
        prop_assert!(c.buffered() <= 64 << 10);
    }
}

/// An open connection's protocol state is what every idle connection pays; what only a busy
/// one needs lives behind its one cold pointer.
#[test]
fn connection_is_small() {
    let size = std::mem::size_of::<Connection>();
    assert!(size <= 56, "Connection is {size} bytes");
}

/// The cold state counts in `buffered` while it exists; the `conn` fuzz target bounds a
/// handshake's buffering by the head limit plus 128 bytes for it.
#[test]
fn cold_state_is_small() {
    let size = std::mem::size_of::<Cold>();
    assert!(size <= 128, "Cold is {size} bytes");
}

/// A whole frame in one read (data or control) never makes the cold state; one that spans
/// reads, a fragmented message and a split control frame do, and it is gone once the
/// connection is idle again.
#[test]
fn cold_state_is_freed_when_idle() {
    let mut env = Env::default();
    let mut out = Vec::new();
    let mut c = server();
    let mut read = |c: &mut Connection, bytes: &[u8]| {
        let mut buf = bytes.to_vec();
        let mut pos = 0;
        let mut evs = Vec::new();
        while pos < buf.len() {
            let r = c.read(&mut buf[pos..], &mut out, &mut env).unwrap();
            pos += r.consumed;
            evs.extend(r.event.map(own));
        }
        evs
    };
    assert!(!c.holds_cold());
    assert_eq!(read(&mut c, &cframe(OpCode::Text, true, b"whole")), [Ev::Text("whole".into())]);
    assert_eq!(read(&mut c, &cframe(OpCode::Ping, true, b"p")), [Ev::Ping(b"p".to_vec())]);
    assert!(!c.holds_cold(), "a whole frame in one read allocates nothing");

    // A text message in three fragments, the middle one split across two reads (inside a
    // multi-byte character), then a ping split across reads.
    let mut wire = cframe(OpCode::Text, false, "hé".as_bytes());
    wire.extend(cframe(OpCode::Continuation, false, "llo wö".as_bytes()));
    wire.extend(cframe(OpCode::Continuation, true, "rld".as_bytes()));
    let ping = cframe(OpCode::Ping, true, b"ping!");
    let cut = cframe(OpCode::Text, false, "hé".as_bytes()).len() + 12;
    assert_eq!(read(&mut c, &wire[..cut]), []);
    assert!(c.holds_cold());
    assert_eq!(read(&mut c, &wire[cut..]), [Ev::Text("héllo wörld".into())]);
    assert!(!c.holds_cold(), "freed once the message is complete");
    assert_eq!(read(&mut c, &ping[..8]), []);
    assert!(c.holds_cold());
    assert_eq!(read(&mut c, &ping[8..]), [Ev::Ping(b"ping!".to_vec())]);
    assert!(!c.holds_cold(), "freed once the control frame is complete");
    assert_eq!(c.buffered(), 0);
    assert_eq!(env.memory.assembly, 0);

    // A server past its handshake holds nothing either; the handshake itself does (deadline).
    let mut s = Connection::new_server(Instant::now(), &Limits::default());
    assert!(s.holds_cold());
    let r = s.handshake(REQUEST, &mut Vec::new(), &ENV, |_, _| Decision::accept()).unwrap();
    assert!(matches!(r, HandshakeStatus::Accepted { .. }));
    assert!(!s.holds_cold());
}

/// A payload length over `u32::MAX` is carried whole: the frame is refused by the size limit
/// alone, not misread as a short one.
#[test]
fn a_64_bit_length_is_carried_whole() {
    let limits = Limits {
        max_frame_size: u64::MAX >> 1,
        max_message_size: u64::MAX >> 1,
        ..Limits::default()
    };
    let mut env = Env::new(limits);
    let mut c = server();
    let mut h = [0u8; MAX_HEADER_LEN];
    let len = (1u64 << 32) + 3;
    let n = frame::encode(true, 0, OpCode::Binary, len, Some([1, 2, 3, 4]), &mut h);
    let mut out = Vec::new();
    let mut bytes = h[..n].to_vec();
    bytes.extend_from_slice(&[0; 100]);
    let r = c.read(&mut bytes, &mut out, &mut env).unwrap();
    assert_eq!((r.consumed, r.event.is_none()), (n + 100, true));
    assert_eq!(c.remaining(), len - 100);
    c.release(&mut env);
    assert_eq!(env.memory.assembly, 0);
}
