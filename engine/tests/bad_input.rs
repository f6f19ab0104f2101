//! Bad input over real sockets: broken handshakes get the right HTTP status, protocol
//! violations get the close code RFC 6455 names, garbage and half-open sockets are cleaned up,
//! and after each one a fresh client is still served.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use common::{assert_echo, backend_name, op, start, start_echo, End, RawClient, Rng};
use sockeye::{Conn, Handler, Message, Request, Upgrade};

/// Sends `request` on a fresh socket; returns the status and head of the answer, and checks
/// the server then closes the connection.
fn http_answer(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    let mut c = RawClient::connect(addr);
    c.send_raw(request);
    let (status, head) = c.read_http_head();
    assert_ne!(
        c.wait_end(Duration::from_secs(5)),
        End::TimedOut,
        "[{}] still open after {status}",
        backend_name()
    );
    (status, head)
}

fn has_header(head: &str, name: &str, value: &str) -> bool {
    head.lines().any(|l| {
        l.split_once(':')
            .is_some_and(|(n, v)| n.trim().eq_ignore_ascii_case(name) && v.trim() == value)
    })
}

#[test]
fn plain_get_gets_400() {
    let srv = start_echo(|b| b);
    let (status, head) = http_answer(srv.addr, b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n");
    assert_eq!(status, 400, "[{}] {head}", backend_name());
    assert_echo(srv.addr);
}

#[test]
fn wrong_version_gets_426_with_version_13() {
    let srv = start_echo(|b| b);
    let req = common::REQUEST.replace("Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 8");
    let (status, head) = http_answer(srv.addr, req.as_bytes());
    assert_eq!(status, 426, "[{}] {head}", backend_name());
    assert!(
        has_header(&head, "Sec-WebSocket-Version", "13"),
        "[{}] no version header in:\n{head}",
        backend_name()
    );
    assert_echo(srv.addr);
}

#[test]
fn oversized_head_gets_431() {
    let srv = start_echo(|b| b);
    let pad = "a".repeat(9000);
    let req = common::REQUEST
        .replace("Host: localhost\r\n", &format!("Host: localhost\r\nX-Pad: {pad}\r\n"));
    assert!(req.len() > 8192);
    let (status, head) = http_answer(srv.addr, req.as_bytes());
    assert_eq!(status, 431, "[{}] {head}", backend_name());
    assert_echo(srv.addr);
}

struct Gate;

impl Handler for Gate {
    type Data = ();
    fn on_upgrade(&mut self, req: &Request<'_>, _peer: SocketAddr) -> Upgrade<()> {
        if req.path() == "/forbidden" {
            Upgrade::reject(403)
        } else {
            Upgrade::accept(())
        }
    }
    fn on_message(&mut self, conn: &mut Conn<'_, ()>, msg: Message<'_>) {
        conn.send(msg);
    }
}

#[test]
fn rejected_upgrade_gets_403() {
    let srv = start(|b| b, || Gate);
    let req = common::REQUEST.replace("GET /echo", "GET /forbidden");
    let (status, head) = http_answer(srv.addr, req.as_bytes());
    assert_eq!(status, 403, "[{}] {head}", backend_name());
    assert_echo(srv.addr);
}

#[test]
fn ten_megabytes_of_garbage_after_handshake() {
    let srv = start_echo(|b| b);
    let mut c = RawClient::open(srv.addr);
    let mut writer = c.stream.try_clone().expect("clone");
    writer.set_write_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let w = thread::spawn(move || {
        let mut rng = Rng(0x5eed);
        let mut sent = 0usize;
        let mut chunk = vec![0u8; 64 << 10];
        while sent < 10 << 20 {
            rng.fill(&mut chunk);
            if sent == 0 {
                chunk[0] = 0xf3; // FIN + RSV1..3 + reserved opcode: a protocol error at byte 0
            }
            if writer.write_all(&chunk).is_err() {
                break; // the server closed: expected
            }
            sent += chunk.len();
        }
        sent
    });
    let t0 = Instant::now();
    match c.read_frame() {
        Ok(f) => {
            assert_eq!(f.close_code(), 1002, "[{}] close frame {f:?}", backend_name());
            let end = c.wait_end(Duration::from_secs(8));
            assert_ne!(
                end,
                End::TimedOut,
                "[{}] connection not closed after garbage",
                backend_name()
            );
        }
        // A reset may discard the close frame before we read it; the connection is gone anyway.
        Err(e) => eprintln!("[{}] no close frame before the end ({e}); acceptable", backend_name()),
    }
    assert!(t0.elapsed() < Duration::from_secs(8), "[{}] took {:?}", backend_name(), t0.elapsed());
    drop(c);
    let sent = w.join().expect("writer");
    eprintln!("[{}] garbage written before the server closed: {sent} bytes", backend_name());
    assert_echo(srv.addr);
    srv.wait_idle(Duration::from_secs(8));
}

#[test]
fn five_hundred_half_open_handshakes_time_out() {
    let srv = start_echo(|b| b.handshake_timeout(Duration::from_secs(1)));
    let t0 = Instant::now();
    let mut half: Vec<TcpStream> = (0..500)
        .map(|_| {
            let mut s = TcpStream::connect(srv.addr).expect("connect");
            s.write_all(b"GET / HTTP/1.1\r\n").expect("partial request");
            s
        })
        .collect();
    let connected = t0.elapsed();

    // A real client is served at once, half-open sockets notwithstanding.
    let t1 = Instant::now();
    assert_echo(srv.addr);
    let took = t1.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "[{}] echo took {took:?} behind 500 half-open sockets",
        backend_name()
    );

    // ~2 s after they connected, the server has closed every one of them.
    let deadline = t0 + connected + Duration::from_millis(2500);
    thread::sleep(deadline.saturating_duration_since(Instant::now()));
    let mut open = 0;
    let mut buf = [0u8; 1024];
    for s in &mut half {
        s.set_read_timeout(Some(Duration::from_millis(200))).expect("timeout");
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => continue, // an error response, maybe: the close follows
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    open += 1;
                    break;
                }
                Err(_) => break, // reset
            }
        }
    }
    assert_eq!(
        open,
        0,
        "[{}] {open} of 500 half-open sockets still open after ~2.5 s",
        backend_name()
    );
    srv.wait_idle(Duration::from_secs(3));
}

/// Opens a connection, sends `wire`, expects close `code`, then checks a fresh client echoes.
fn expect_close_for(addr: SocketAddr, wire: &[u8], code: u16, what: &str) {
    let mut c = RawClient::open(addr);
    let mut w = c.stream.try_clone().expect("clone");
    let wire = wire.to_vec();
    // Written from another thread: the server may close before it has read it all.
    let writer = thread::spawn(move || {
        let _ = w.write_all(&wire);
    });
    let (got, reason) = c.read_close();
    assert_eq!(got, code, "[{}] {what}: close code (reason {reason:?})", backend_name());
    assert_ne!(
        c.wait_end(Duration::from_secs(6)),
        End::TimedOut,
        "[{}] {what}: still open",
        backend_name()
    );
    writer.join().expect("writer");
    assert_echo(addr);
}

#[test]
fn unmasked_frame_gets_1002() {
    let srv = start_echo(|b| b);
    expect_close_for(srv.addr, &common::frame(op::TEXT, true, None, b"hi"), 1002, "unmasked frame");
}

#[test]
fn invalid_utf8_gets_1007() {
    let srv = start_echo(|b| b);
    expect_close_for(
        srv.addr,
        &common::masked(op::TEXT, true, &[b'o', b'k', 0xff, 0xfe]),
        1007,
        "invalid UTF-8",
    );
    // Split across fragments, truncated at the end of the message.
    let mut wire = common::masked(op::TEXT, false, b"ok\xc3");
    wire.extend(common::masked(op::CONT, true, b""));
    expect_close_for(srv.addr, &wire, 1007, "truncated UTF-8 sequence");
}

#[test]
fn message_over_max_message_size_gets_1009() {
    let srv = start_echo(|b| b.max_message_size(1 << 20));
    // Exactly the limit passes.
    let mut ws = common::ws_connect(srv.addr);
    ws.send(tungstenite::Message::binary(vec![7u8; 1 << 20])).expect("send");
    assert_eq!(common::ws_read_data(&mut ws).len(), 1 << 20, "[{}]", backend_name());
    common::ws_close(&mut ws);
    // One frame over it.
    expect_close_for(
        srv.addr,
        &common::masked(op::BINARY, true, &vec![1u8; (1 << 20) + 1]),
        1009,
        "one big frame",
    );
    // Fragments that add up to more.
    let mut wire = common::masked(op::BINARY, false, &vec![1u8; 600 << 10]);
    wire.extend(common::masked(op::CONT, true, &vec![1u8; 600 << 10]));
    expect_close_for(srv.addr, &wire, 1009, "fragments over the limit");
}

#[test]
fn reserved_opcodes_get_1002() {
    let srv = start_echo(|b| b);
    expect_close_for(srv.addr, &common::masked(0x3, true, b"x"), 1002, "reserved data opcode 0x3");
    expect_close_for(
        srv.addr,
        &common::masked(0xb, true, b""),
        1002,
        "reserved control opcode 0xB",
    );
}

#[test]
fn other_protocol_violations_get_1002() {
    let srv = start_echo(|b| b);
    let mut rsv = common::masked(op::TEXT, true, b"x");
    rsv[0] |= 0x40; // RSV1 without a negotiated extension
    expect_close_for(srv.addr, &rsv, 1002, "RSV1 set");
    expect_close_for(
        srv.addr,
        &common::masked(op::CONT, true, b"x"),
        1002,
        "continuation with nothing to continue",
    );
    let mut wire = common::masked(op::TEXT, false, b"a");
    wire.extend(common::masked(op::TEXT, true, b"b"));
    expect_close_for(srv.addr, &wire, 1002, "new message inside a fragmented one");
    expect_close_for(srv.addr, &common::masked(op::PING, false, b""), 1002, "fragmented ping");
    expect_close_for(
        srv.addr,
        &common::masked(op::PING, true, &[0u8; 126]),
        1002,
        "ping over 125 bytes",
    );
    expect_close_for(
        srv.addr,
        &common::masked(op::CLOSE, true, &[3]),
        1002,
        "one-byte close payload",
    );
    expect_close_for(
        srv.addr,
        &common::masked(op::CLOSE, true, &common::close_payload(999, "")),
        1002,
        "close code 999",
    );
}
