//! io_uring provided-buffer ring under stress: a ring far too small for the load, messages
//! larger than one buffer, connections dropped mid-message. Every message must come back intact,
//! and when the dust settles every buffer must be back in the kernel's hands (none held, none
//! leaked), with no crash.
//!
//! Needs a kernel with io_uring (6.0+); set `SOCKEYE_SKIP_URING=1` to skip on one without.
//! Skipped when `SOCKEYE_BACKEND` forces another backend (it overrides the builder).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use sockeye::{Backend, Conn, Handler, Message, Server};
use tungstenite::Message as WsMessage;

struct Echo;

impl Handler for Echo {
    type Data = ();
    fn on_message(&mut self, conn: &mut Conn<'_, ()>, msg: Message<'_>) {
        conn.send(msg);
    }
}

fn skip() -> bool {
    if std::env::var_os("SOCKEYE_SKIP_URING").is_some() {
        eprintln!("skipped: SOCKEYE_SKIP_URING is set");
        return true;
    }
    match std::env::var("SOCKEYE_BACKEND") {
        Ok(b) if !b.is_empty() && b != "io_uring" && b != "auto" => {
            eprintln!("skipped: SOCKEYE_BACKEND={b} overrides the io_uring backend");
            true
        }
        _ => false,
    }
}

fn pattern(conn: usize, msg: usize, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i.wrapping_mul(31) ^ conn.wrapping_mul(7) ^ msg) as u8).collect()
}

#[test]
fn tiny_ring_big_messages_and_abrupt_closes() {
    if skip() {
        return;
    }
    let server = Server::builder()
        .listen("127.0.0.1:0")
        .workers(2)
        .backend(Backend::IoUring)
        .uring_buffers(4) // far too few for 40 busy connections
        .uring_buffer_size(4096) // every message spans many buffers
        .handler(|| Echo)
        .build()
        .expect("io_uring backend (set SOCKEYE_SKIP_URING=1 on kernels without it)");
    let addr = server.local_addr();
    let handle = server.handle();
    let run = thread::spawn(move || server.run());

    let clients: Vec<_> = (0..40)
        .map(|c| {
            thread::spawn(move || {
                let url = format!("ws://{addr}/echo");
                let (mut ws, _) = tungstenite::connect(url).expect("handshake");
                for m in 0..20 {
                    let len = 1000 + (c * 997 + m * 4099) % 60_000;
                    let data = pattern(c, m, len);
                    ws.send(WsMessage::Binary(data.clone().into())).expect("send");
                    match ws.read().expect("echo") {
                        WsMessage::Binary(b) => assert_eq!(&b[..], &data[..], "conn {c} msg {m}"),
                        other => panic!("conn {c} msg {m}: unexpected {other:?}"),
                    }
                }
                ws.close(None).ok();
                while ws.read().is_ok() {}
            })
        })
        .collect();
    // Meanwhile, connections that vanish in the middle of a big message.
    let droppers: Vec<_> = (0..20)
        .map(|_| {
            thread::spawn(move || {
                let mut s = TcpStream::connect(addr).expect("connect");
                s.write_all(
                    b"GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                      Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
                )
                .expect("request");
                let mut head = [0u8; 129];
                s.read_exact(&mut head).expect("101");
                // A 100 000-byte masked binary frame, of which 30 000 bytes are sent.
                let mut frame = vec![0x82, 0xff, 0, 0, 0, 0, 0, 1, 0x86, 0xa0, 1, 2, 3, 4];
                frame.extend(std::iter::repeat_n(0x55u8, 30_000));
                s.write_all(&frame).expect("partial frame");
                drop(s);
            })
        })
        .collect();
    for t in clients.into_iter().chain(droppers) {
        t.join().expect("client thread");
    }

    // Every connection gone and every buffer back in the ring.
    let deadline = Instant::now() + Duration::from_secs(10);
    let stats = loop {
        let stats = handle.stats();
        let settled =
            stats.iter().all(|s| s.connections == 0 && s.buffers_in_kernel == s.buffers_total);
        if settled || Instant::now() > deadline {
            break stats;
        }
        thread::sleep(Duration::from_millis(50));
    };
    for (i, s) in stats.iter().enumerate() {
        assert_eq!(s.connections, 0, "worker {i} still holds connections: {stats:?}");
        assert!(s.buffers_total >= 4, "worker {i}: {stats:?}");
        assert_eq!(s.buffers_in_kernel, s.buffers_total, "worker {i} holds buffers: {stats:?}");
    }
    let shortages: usize = stats.iter().map(|s| s.buffer_shortages).sum();
    assert!(shortages > 0, "the ring never ran dry, so ENOBUFS recovery went untested: {stats:?}");
    eprintln!("ENOBUFS recoveries: {shortages}");
    handle.shutdown();
    run.join().expect("server thread").expect("server run");
}

/// Zero-copy sends (SEND_ZC above a 4 KiB threshold): every echo intact, buffers released
/// only after the kernel's notification, nothing left behind at the end.
#[test]
fn zero_copy_sends_echo_intact() {
    if skip() {
        return;
    }
    let server = Server::builder()
        .listen("127.0.0.1:0")
        .workers(1)
        .backend(Backend::IoUring)
        .uring_send_zc_threshold(4096)
        .handler(|| Echo)
        .build()
        .expect("io_uring backend (set SOCKEYE_SKIP_URING=1 on kernels without it)");
    let addr = server.local_addr();
    let handle = server.handle();
    let run = thread::spawn(move || server.run());
    let clients: Vec<_> = (0..8)
        .map(|c| {
            thread::spawn(move || {
                let (mut ws, _) =
                    tungstenite::connect(format!("ws://{addr}/echo")).expect("handshake");
                for m in 0..30 {
                    let len = [10, 5000, 70_000, 1 << 20][m % 4];
                    let data = pattern(c, m, len);
                    ws.send(WsMessage::Binary(data.clone().into())).expect("send");
                    match ws.read().expect("echo") {
                        WsMessage::Binary(b) => assert_eq!(&b[..], &data[..], "conn {c} msg {m}"),
                        other => panic!("conn {c} msg {m}: unexpected {other:?}"),
                    }
                }
                ws.close(None).ok();
                while ws.read().is_ok() {}
            })
        })
        .collect();
    for t in clients {
        t.join().expect("client thread");
    }
    handle.shutdown();
    run.join().expect("server thread").expect("server run");
}

/// A submission queue of 2 entries under a burst of 48 connections echoing at once, half of
/// them large messages (partial sends, many submissions per loop turn): the queue fills over
/// and over while completions are being handled, so `push` submits (and reaps) in the middle
/// of the completion loop. No completion may be lost: every echo arrives intact, and at rest
/// every buffer is back in the kernel's ring.
#[test]
fn tiny_submission_queue_loses_no_completion() {
    if skip() {
        return;
    }
    let server = Server::builder()
        .listen("127.0.0.1:0")
        .workers(1)
        .backend(Backend::IoUring)
        .uring_entries(2)
        .uring_buffers(8)
        .uring_buffer_size(4096)
        .handler(|| Echo)
        .build()
        .expect("io_uring backend (set SOCKEYE_SKIP_URING=1 on kernels without it)");
    let addr = server.local_addr();
    let handle = server.handle();
    let run = thread::spawn(move || server.run());

    const CONNS: usize = 48;
    const ROUNDS: usize = 6;
    // Every client waits for the others (a bounded wait, so one failure cannot hang the rest),
    // then writes all its messages at once and reads the echoes afterwards: the server has
    // work for every connection in the same loop turns.
    let ready = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let clients: Vec<_> = (0..CONNS)
        .map(|c| {
            let ready = ready.clone();
            thread::spawn(move || {
                let s = TcpStream::connect(addr).expect("connect");
                // Generous: a lost completion shows as a timeout here, not as a hung test.
                s.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
                s.set_write_timeout(Some(Duration::from_secs(20))).expect("timeout");
                let (mut ws, _) =
                    tungstenite::client(format!("ws://{addr}/echo"), s).expect("handshake");
                ready.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let t0 = Instant::now();
                while ready.load(std::sync::atomic::Ordering::SeqCst) < CONNS
                    && t0.elapsed() < Duration::from_secs(20)
                {
                    thread::sleep(Duration::from_millis(1));
                }
                let sent: Vec<Vec<u8>> = (0..ROUNDS)
                    .map(|m| {
                        let len = if (c + m) % 2 == 0 { 100 + c } else { 200_000 + c * 1000 };
                        let data = pattern(c, m, len);
                        ws.write(WsMessage::Binary(data.clone().into())).expect("send");
                        data
                    })
                    .collect();
                ws.flush().expect("flush");
                for (m, data) in sent.iter().enumerate() {
                    match ws.read() {
                        Ok(WsMessage::Binary(b)) => {
                            assert_eq!(&b[..], &data[..], "conn {c} msg {m}")
                        }
                        other => panic!("conn {c} msg {m}: no echo: {other:?}"),
                    }
                }
                ws.close(None).ok();
                while ws.read().is_ok() {}
            })
        })
        .collect();
    let mut failed = 0;
    for t in clients {
        failed += usize::from(t.join().is_err());
    }

    let deadline = Instant::now() + Duration::from_secs(10);
    let stats = loop {
        let stats = handle.stats();
        let settled =
            stats.iter().all(|s| s.connections == 0 && s.buffers_in_kernel == s.buffers_total);
        if settled || Instant::now() > deadline {
            break stats;
        }
        thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(failed, 0, "{failed} of {CONNS} clients did not get every echo: {stats:?}");
    for (i, s) in stats.iter().enumerate() {
        assert_eq!(s.connections, 0, "worker {i} still holds connections: {stats:?}");
        assert_eq!(s.buffers_in_kernel, s.buffers_total, "worker {i} holds buffers: {stats:?}");
    }
    handle.shutdown();
    run.join().expect("server thread").expect("server run");
}
