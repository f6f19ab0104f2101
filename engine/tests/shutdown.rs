//! Graceful shutdown over real sockets: every open client gets close 1001 and `run()` returns;
//! a client that never answers is dropped at the shutdown timeout and `run()` still returns.

mod common;

use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::{backend_name, start_echo, start_probe, End, RawClient};
use tungstenite::Message as WsMessage;

#[test]
fn shutdown_sends_1001_to_every_client_and_run_returns() {
    let shutdown_timeout = Duration::from_secs(3);
    let mut srv = start_echo(|b| b.shutdown_timeout(shutdown_timeout));
    let (tx, rx) = mpsc::channel();
    let addr = srv.addr;
    let clients: Vec<_> = (0..10)
        .map(|i| {
            let tx = tx.clone();
            thread::spawn(move || {
                let mut ws = common::ws_connect(addr);
                ws.send(WsMessage::text(format!("hi {i}"))).expect("send");
                common::ws_read_data(&mut ws);
                tx.send(()).expect("ready");
                let code = loop {
                    match ws.read() {
                        Ok(WsMessage::Close(Some(f))) => break Some(u16::from(f.code)),
                        Ok(WsMessage::Close(None)) => break None,
                        Ok(_) => {}
                        Err(e) => {
                            panic!("[{}] client {i}: {e} before the close frame", backend_name())
                        }
                    }
                };
                // tungstenite has queued its answer; reading flushes it and sees the end.
                loop {
                    match ws.read() {
                        Ok(_) => {}
                        Err(tungstenite::Error::ConnectionClosed) => break,
                        Err(e) => panic!("[{}] client {i} after close: {e}", backend_name()),
                    }
                }
                code
            })
        })
        .collect();
    for _ in 0..10 {
        rx.recv_timeout(Duration::from_secs(10)).expect("all clients connected");
    }
    let t0 = Instant::now();
    srv.handle.shutdown();
    assert!(srv.handle.is_shutting_down());
    let res = srv.join_within(shutdown_timeout + Duration::from_secs(1));
    let took = t0.elapsed();
    let res = res.unwrap_or_else(|| {
        panic!("[{}] run() still running {took:?} after shutdown()", backend_name())
    });
    res.unwrap_or_else(|e| panic!("[{}] run() failed: {e}", backend_name()));
    for (i, c) in clients.into_iter().enumerate() {
        let code = c.join().expect("client thread");
        assert_eq!(code, Some(1001), "[{}] client {i} close code", backend_name());
    }
    // Every client answered, so nobody waited for the timeout.
    assert!(
        took < Duration::from_secs(2),
        "[{}] shutdown took {took:?} with answering clients",
        backend_name()
    );
    // The listener is gone.
    assert!(
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err(),
        "[{}] still accepting after shutdown",
        backend_name()
    );
}

#[test]
fn silent_client_is_dropped_at_the_shutdown_timeout() {
    let (mut srv, rec) = start_probe(1 << 20, |b| b.shutdown_timeout(Duration::from_secs(1)));
    let mut answering = RawClient::open(srv.addr);
    let mut silent = RawClient::open(srv.addr);
    // A third socket still in its handshake: dropped at once by the shutdown.
    let mut handshaking = RawClient::connect(srv.addr);
    handshaking.send_raw(b"GET / HTTP/1.1\r\n");
    assert!(
        common::wait_until(Duration::from_secs(5), || rec.opened().len() == 2),
        "[{}]",
        backend_name()
    );
    assert!(
        common::wait_until(Duration::from_secs(5), || srv.connections() == 3),
        "[{}]",
        backend_name()
    );

    let t0 = Instant::now();
    srv.handle.shutdown();
    // The answering client completes the handshake and is let go at once.
    assert_eq!(answering.read_close().0, 1001, "[{}]", backend_name());
    answering.send_close(1001, "");
    assert_ne!(answering.wait_end(Duration::from_secs(2)), End::TimedOut, "[{}]", backend_name());
    assert_ne!(handshaking.wait_end(Duration::from_secs(2)), End::TimedOut, "[{}]", backend_name());
    // The silent one gets its close frame and, not answering, is dropped at the timeout.
    let res = srv.join_within(Duration::from_secs(3));
    let took = t0.elapsed();
    let res = res.unwrap_or_else(|| {
        panic!("[{}] run() still running {took:?} after shutdown()", backend_name())
    });
    res.unwrap_or_else(|e| panic!("[{}] run() failed: {e}", backend_name()));
    assert!(
        took >= Duration::from_millis(900),
        "[{}] returned after {took:?}: did not wait for the silent client",
        backend_name()
    );
    assert!(
        took < Duration::from_secs(2),
        "[{}] run() returned after {took:?} (timeout 1 s)",
        backend_name()
    );
    assert_eq!(silent.read_close().0, 1001, "[{}]", backend_name());
    assert_ne!(
        silent.wait_end(Duration::from_secs(1)),
        End::TimedOut,
        "[{}] silent client not dropped",
        backend_name()
    );
    let mut closes = rec.close_codes();
    closes.sort();
    assert_eq!(
        closes,
        vec![1001, 1006],
        "[{}] on_close: the answer, then the drop",
        backend_name()
    );
}
