//! Echo over real sockets: every payload-length encoding boundary, fragmentation with an
//! interleaved ping, ping/pong, both close directions, many concurrent clients, and exactly one
//! `on_close` per connection with the right code. Runs on whichever backend `SOCKEYE_BACKEND`
//! (or auto-detection) picks.

mod common;

use std::thread;
use std::time::Duration;

use common::{
    backend_name, op, start_echo, start_probe, wait_until, ws_close, ws_connect, ws_read_data,
    RawClient,
};
use sockeye::CloseCode;
use tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tungstenite::protocol::CloseFrame;
use tungstenite::Message as WsMessage;

const SIZES: [usize; 7] = [0, 125, 126, 65535, 65536, 1 << 20, 16 << 20];

#[test]
fn echoes_text_and_binary_of_every_length_class() {
    let srv = start_echo(|b| b);
    let mut ws = ws_connect(srv.addr);
    for &n in &SIZES {
        // Text: printable ASCII plus a multi-byte character now and then, cut to exactly n bytes.
        let mut text = String::with_capacity(n);
        let mut i = 0usize;
        while text.len() < n {
            if i.is_multiple_of(97) && text.len() + 2 <= n {
                text.push('é');
            } else {
                text.push((b'a' + (i % 26) as u8) as char);
            }
            i += 1;
        }
        assert_eq!(text.len(), n);
        ws.send(WsMessage::text(text.clone())).expect("send text");
        match ws_read_data(&mut ws) {
            WsMessage::Text(t) => {
                assert_eq!(t.len(), n, "[{}] text echo of {n} bytes: wrong length", backend_name());
                assert!(t.as_str() == text, "[{}] text echo of {n} bytes differs", backend_name());
            }
            m => panic!("[{}] text of {n} bytes echoed as {:?}", backend_name(), m.len()),
        }

        let bin: Vec<u8> = (0..n).map(|i| (i.wrapping_mul(31) ^ (i >> 8)) as u8).collect();
        ws.send(WsMessage::binary(bin.clone())).expect("send binary");
        match ws_read_data(&mut ws) {
            WsMessage::Binary(b) => {
                assert_eq!(
                    b.len(),
                    n,
                    "[{}] binary echo of {n} bytes: wrong length",
                    backend_name()
                );
                assert!(b[..] == bin[..], "[{}] binary echo of {n} bytes differs", backend_name());
            }
            m => panic!("[{}] binary of {n} bytes echoed as {:?}", backend_name(), m.len()),
        }
    }
    ws_close(&mut ws);
}

#[test]
fn fragmented_text_with_ping_in_between() {
    let srv = start_echo(|b| b);
    let mut c = RawClient::open(srv.addr);
    // The "ö" (C3 B6) is split across the first two fragments: validation must carry over.
    let whole = "Hello, fragmented wörld é!".as_bytes();
    let cut = whole.iter().position(|&b| b == 0xc3).expect("ö") + 1;
    let (a, rest) = whole.split_at(cut);
    let (b, d) = rest.split_at(4);
    c.send_frame(op::TEXT, false, a);
    c.send_frame(op::PING, true, b"mid-message ping");
    thread::sleep(Duration::from_millis(20));
    c.send_frame(op::CONT, false, b);
    thread::sleep(Duration::from_millis(20));
    c.send_frame(op::CONT, true, d);

    let pong = c.expect_frame();
    assert_eq!(
        (pong.opcode, pong.fin, pong.masked, &pong.payload[..]),
        (op::PONG, true, false, &b"mid-message ping"[..]),
        "[{}] expected the pong first",
        backend_name()
    );
    let msg = c.expect_frame();
    assert_eq!(
        (msg.opcode, msg.fin, msg.rsv, &msg.payload[..]),
        (op::TEXT, true, 0, whole),
        "[{}] expected the reassembled text",
        backend_name()
    );
    c.send_close(1000, "");
    c.expect_close(1000, Duration::from_secs(5));
}

#[test]
fn fragmented_binary_in_one_write() {
    let srv = start_echo(|b| b);
    let mut c = RawClient::open(srv.addr);
    let mut wire = Vec::new();
    wire.extend(common::masked(op::BINARY, false, &[1, 2, 3]));
    wire.extend(common::masked(op::CONT, false, &[]));
    wire.extend(common::masked(op::PING, true, &[]));
    wire.extend(common::masked(op::CONT, true, &[4, 5]));
    c.send_raw(&wire);
    let pong = c.expect_frame();
    assert_eq!((pong.opcode, pong.payload.len()), (op::PONG, 0), "[{}]", backend_name());
    let msg = c.expect_frame();
    assert_eq!(
        (msg.opcode, msg.fin, &msg.payload[..]),
        (op::BINARY, true, &[1u8, 2, 3, 4, 5][..]),
        "[{}]",
        backend_name()
    );
}

#[test]
fn ping_gets_pong_with_same_payload() {
    let srv = start_echo(|b| b);
    let mut ws = ws_connect(srv.addr);
    for payload in [Vec::new(), b"hello".to_vec(), vec![0xab; 125]] {
        ws.send(WsMessage::Ping(payload.clone().into())).expect("ping");
        match ws.read().expect("read") {
            WsMessage::Pong(p) => {
                assert_eq!(&p[..], &payload[..], "[{}] pong payload", backend_name())
            }
            m => panic!("[{}] expected a pong, got {m:?}", backend_name()),
        }
    }
    ws_close(&mut ws);
}

#[test]
fn client_close_is_echoed() {
    let (srv, rec) = start_probe(1 << 20, |b| b);
    let mut ws = ws_connect(srv.addr);
    ws.close(Some(CloseFrame { code: WsCloseCode::Normal, reason: "bye".into() })).expect("close");
    match ws.read() {
        Ok(WsMessage::Close(Some(f))) => {
            assert_eq!(u16::from(f.code), 1000, "[{}] echoed close code", backend_name())
        }
        other => panic!("[{}] expected the close echo, got {other:?}", backend_name()),
    }
    match ws.read() {
        Err(tungstenite::Error::ConnectionClosed) => {}
        other => panic!("[{}] expected the end of the connection, got {other:?}", backend_name()),
    }
    assert!(wait_until(Duration::from_secs(5), || !rec.closes().is_empty()));
    assert_eq!(rec.closes(), vec![(1000, "bye".to_string())], "[{}] on_close", backend_name());
}

#[test]
fn server_close_through_handle_reaches_client() {
    let (srv, rec) = start_probe(1 << 20, |b| b);
    let mut ws = ws_connect(srv.addr);
    // Make sure the connection is open on the server before asking for its id.
    ws.send(WsMessage::text("x")).expect("send");
    ws_read_data(&mut ws);
    let ids = rec.opened();
    assert_eq!(ids.len(), 1, "[{}] opened ids", backend_name());
    assert!(
        srv.handle.close(ids[0], CloseCode(4000), "x"),
        "[{}] handle.close refused",
        backend_name()
    );
    match ws.read() {
        Ok(WsMessage::Close(Some(f))) => {
            assert_eq!(u16::from(f.code), 4000, "[{}] close code", backend_name());
            assert_eq!(f.reason.as_str(), "x", "[{}] close reason", backend_name());
        }
        other => panic!("[{}] expected close 4000, got {other:?}", backend_name()),
    }
    // tungstenite answered the close; the server then ends the connection.
    loop {
        match ws.read() {
            Ok(_) => {}
            Err(tungstenite::Error::ConnectionClosed) => break,
            Err(e) => panic!("[{}] after close: {e}", backend_name()),
        }
    }
    assert!(wait_until(Duration::from_secs(5), || !rec.closes().is_empty()));
    thread::sleep(Duration::from_millis(100));
    assert_eq!(
        rec.close_codes(),
        vec![4000],
        "[{}] on_close gets the peer's answer",
        backend_name()
    );
    // A second close for the same (now stale) id is ignored.
    srv.handle.close(ids[0], CloseCode(4001), "again");
    common::assert_echo(srv.addr);
}

#[test]
fn fifty_concurrent_clients_twenty_echoes_each() {
    let (srv, rec) = start_probe(1 << 20, |b| b.workers(2));
    let addr = srv.addr;
    let clients: Vec<_> = (0..50)
        .map(|c| {
            thread::spawn(move || {
                let mut ws = ws_connect(addr);
                for i in 0..20 {
                    let m = if i % 2 == 0 {
                        WsMessage::text(format!("client {c} message {i}"))
                    } else {
                        WsMessage::binary(vec![c as u8; 1000 + i])
                    };
                    ws.send(m.clone()).expect("send");
                    assert_eq!(
                        ws_read_data(&mut ws),
                        m,
                        "[{}] client {c} echo {i}",
                        backend_name()
                    );
                }
                ws_close(&mut ws);
            })
        })
        .collect();
    for c in clients {
        c.join().expect("client thread");
    }
    assert_eq!(
        rec.messages.load(std::sync::atomic::Ordering::Relaxed),
        1000,
        "[{}]",
        backend_name()
    );
    let ids = rec.opened();
    assert_eq!(ids.len(), 50, "[{}] opened", backend_name());
    let on0 = ids.iter().filter(|id| id.worker() == 0).count();
    assert!(
        on0 > 0 && on0 < 50,
        "[{}] SO_REUSEPORT spread: {on0} of 50 on worker 0",
        backend_name()
    );
    assert!(
        wait_until(Duration::from_secs(5), || rec.closes().len() == 50),
        "[{}] on_close count",
        backend_name()
    );
    // ws_close sends a close frame without a status code: on_close reports 1005.
    assert!(
        rec.close_codes().iter().all(|&c| c == 1005),
        "[{}] {:?}",
        backend_name(),
        rec.close_codes()
    );
}

#[test]
fn on_close_once_per_connection_with_the_right_code() {
    let (srv, rec) = start_probe(1 << 20, |b| b);
    // 1000 with a reason, through tungstenite.
    let mut a = ws_connect(srv.addr);
    a.close(Some(CloseFrame { code: WsCloseCode::Normal, reason: "done".into() })).expect("close");
    while a.read().is_ok() {}
    // An application code, raw.
    let mut b = RawClient::open(srv.addr);
    b.send_close(4001, "custom");
    b.expect_close(4001, Duration::from_secs(5));
    // A close frame without a status: 1005.
    let mut c = RawClient::open(srv.addr);
    c.send_frame(op::CLOSE, true, &[]);
    let f = c.expect_frame();
    assert_eq!(f.opcode, op::CLOSE, "[{}]", backend_name());
    // TCP gone without a close frame: 1006.
    let d = RawClient::open(srv.addr);
    d.stream.shutdown(std::net::Shutdown::Both).expect("shutdown");
    drop(d);
    // A reset without a close frame: 1006 too.
    let e = RawClient::open(srv.addr);
    socket2::SockRef::from(&e.stream).set_linger(Some(Duration::ZERO)).expect("linger");
    drop(e);

    assert!(
        wait_until(Duration::from_secs(5), || rec.closes().len() >= 5),
        "[{}] on_close calls: {:?}",
        backend_name(),
        rec.closes()
    );
    drop(c);
    thread::sleep(Duration::from_millis(300)); // room for a duplicate to show up
    let mut got = rec.closes();
    got.sort();
    assert_eq!(
        got,
        vec![
            (1000, "done".to_string()),
            (1005, String::new()),
            (1006, String::new()),
            (1006, String::new()),
            (4001, "custom".to_string()),
        ],
        "[{}] on_close calls",
        backend_name()
    );
    assert_eq!(rec.opened().len(), 5, "[{}]", backend_name());
    srv.wait_idle(Duration::from_secs(5));
}

/// Large echoes are written straight from the read buffer (`direct_write_min`) while small
/// ones are queued; a client that sends everything before reading anything fills the
/// server's socket, so direct writes come out partial and later sends queue behind them.
/// Every echo must still arrive whole and in order.
#[test]
fn direct_and_queued_sends_keep_their_order_when_the_socket_fills() {
    let srv = start_echo(|b| b.max_backpressure(64 << 20).direct_write_min(8 << 10));
    let mut ws = ws_connect(srv.addr);
    let sizes = [20usize, 9000, 65536, 7, 200_000, 8192, 8191, 70_000];
    let msgs: Vec<WsMessage> = (0..160)
        .map(|i| {
            let n = sizes[i % sizes.len()];
            let body: Vec<u8> = (0..n).map(|j| (i * 31 + j) as u8).collect();
            if i % 3 == 0 {
                WsMessage::text(
                    String::from_utf8(body.iter().map(|b| b'a' + b % 26).collect()).expect("ascii"),
                )
            } else {
                WsMessage::binary(body)
            }
        })
        .collect();
    for m in &msgs {
        ws.send(m.clone()).expect("send");
    }
    for (i, m) in msgs.iter().enumerate() {
        assert!(ws_read_data(&mut ws) == *m, "[{}] echo {i} differs", backend_name());
    }
    ws_close(&mut ws);
}
