//! Timers on a real socket: handshake timeout, idle timeout, auto-ping with its pong deadline,
//! close-handshake timeout. Runs on whichever backend `SOCKEYE_BACKEND` picks.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use sockeye::{CloseCode, Conn, ConnId, Handler, Message, Server, ServerHandle};

struct Echo(mpsc::Sender<ConnId>);

impl Handler for Echo {
    type Data = ();
    fn on_open(&mut self, conn: &mut Conn<'_, ()>) {
        let _ = self.0.send(conn.id());
    }
    fn on_message(&mut self, conn: &mut Conn<'_, ()>, msg: Message<'_>) {
        conn.send(msg);
    }
}

struct Running {
    addr: SocketAddr,
    handle: ServerHandle,
    opened: mpsc::Receiver<ConnId>,
    thread: Option<thread::JoinHandle<Result<(), sockeye::Error>>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.handle.shutdown();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn start(f: impl FnOnce(sockeye::ServerBuilder<()>) -> sockeye::ServerBuilder<()>) -> Running {
    let (tx, rx) = mpsc::channel();
    let b =
        f(Server::builder().listen("127.0.0.1:0").workers(1).timer_tick(Duration::from_millis(20)));
    let server = b.handler(move || Echo(tx.clone())).build().expect("server");
    let addr = server.local_addr();
    let handle = server.handle();
    let thread = Some(thread::spawn(move || server.run()));
    Running { addr, handle, opened: rx, thread }
}

const REQUEST: &[u8] =
    b"GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

/// Connects and completes the handshake by hand; returns the socket past the 101.
fn raw_client(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    s.write_all(REQUEST).expect("request");
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut b).expect("101 response");
        head.push(b[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
    s
}

/// Reads one unmasked server frame: (opcode, payload).
fn read_frame(s: &mut TcpStream) -> std::io::Result<(u8, Vec<u8>)> {
    let mut h = [0u8; 2];
    s.read_exact(&mut h)?;
    let len = match h[1] & 0x7f {
        126 => {
            let mut l = [0u8; 2];
            s.read_exact(&mut l)?;
            u16::from_be_bytes(l) as usize
        }
        127 => {
            let mut l = [0u8; 8];
            s.read_exact(&mut l)?;
            u64::from_be_bytes(l) as usize
        }
        n => n as usize,
    };
    let mut p = vec![0u8; len];
    s.read_exact(&mut p)?;
    Ok((h[0] & 0x0f, p))
}

/// Reads until EOF (or reset); returns how long it took.
fn wait_eof(s: &mut TcpStream, limit: Duration) -> Duration {
    let t0 = Instant::now();
    s.set_read_timeout(Some(limit)).expect("timeout");
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return t0.elapsed(),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                panic!("no EOF within {limit:?}")
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return t0.elapsed(),
        }
    }
}

#[test]
fn handshake_timeout_closes_silent_sockets() {
    let srv = start(|b| b.handshake_timeout(Duration::from_millis(300)));
    let mut s = TcpStream::connect(srv.addr).expect("connect");
    s.write_all(b"GET /echo HTTP/1.1\r\n").expect("partial request");
    let took = wait_eof(&mut s, Duration::from_secs(3));
    assert!(took >= Duration::from_millis(250), "closed too early: {took:?}");
    assert!(took < Duration::from_millis(1500), "closed too late: {took:?}");
}

#[test]
fn idle_timeout_sends_1001_then_closes() {
    let srv = start(|b| b.idle_timeout(Some(Duration::from_millis(400))));
    let mut s = raw_client(srv.addr);
    let t0 = Instant::now();
    let (op, payload) = read_frame(&mut s).expect("close frame");
    let took = t0.elapsed();
    assert_eq!(op, 0x8);
    assert_eq!(&payload[..2], &1001u16.to_be_bytes());
    assert!(took >= Duration::from_millis(350) && took < Duration::from_millis(1500), "{took:?}");
    // Answer the close; the server then closes the TCP connection.
    s.write_all(&[0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe9]).expect("close reply");
    wait_eof(&mut s, Duration::from_secs(2));
}

#[test]
fn auto_ping_keeps_live_peers_and_drops_silent_ones() {
    let srv = start(|b| b.auto_ping(Some(Duration::from_millis(300))).idle_timeout(None));
    // A live peer: answers every ping, stays connected well past several intervals.
    let mut live = raw_client(srv.addr);
    let mut pings = 0;
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_millis(1500) {
        let (op, payload) = read_frame(&mut live).expect("frame");
        assert_eq!(op, 0x9, "expected a ping, got opcode {op}");
        pings += 1;
        let mut pong = vec![0x8a, 0x80 | payload.len() as u8, 0, 0, 0, 0];
        pong.extend_from_slice(&payload);
        live.write_all(&pong).expect("pong");
    }
    assert!(pings >= 3, "only {pings} pings in 1.5 s");
    // Still served: an echo works.
    live.write_all(&[0x81, 0x82, 0, 0, 0, 0, b'h', b'i']).expect("text");
    let (op, payload) = read_frame(&mut live).expect("echo");
    assert_eq!((op, &payload[..]), (0x1, &b"hi"[..]));

    // A silent peer: gets one ping, never answers, then close 1001.
    let mut silent = raw_client(srv.addr);
    let (op, _) = read_frame(&mut silent).expect("ping");
    assert_eq!(op, 0x9);
    let (op, payload) = read_frame(&mut silent).expect("close");
    assert_eq!(op, 0x8);
    assert_eq!(&payload[..2], &1001u16.to_be_bytes());
}

#[test]
fn close_handshake_timeout_drops_peers_that_never_answer() {
    let srv = start(|b| b.close_timeout(Duration::from_millis(300)));
    let mut s = raw_client(srv.addr);
    let id = srv.opened.recv_timeout(Duration::from_secs(2)).expect("opened");
    assert!(srv.handle.close(id, CloseCode(4000), "bye"));
    let (op, payload) = read_frame(&mut s).expect("close frame");
    assert_eq!(op, 0x8);
    assert_eq!(&payload[..2], &4000u16.to_be_bytes());
    assert_eq!(&payload[2..], b"bye");
    // We never answer: the server gives up after the close timeout.
    let took = wait_eof(&mut s, Duration::from_secs(3));
    assert!(took < Duration::from_millis(1500), "{took:?}");
}
