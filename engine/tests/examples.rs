//! The examples in `engine/examples/`, run as the programs they are (each on a free port,
//! `--addr 127.0.0.1:0`) and driven by a real client (tungstenite): what their docs promise
//! is what they do. The backend is the one `SOCKEYE_BACKEND` names, inherited by each example.
//!
//! The example binaries are built by this test (`cargo build --examples`, same profile and
//! target directory as the test itself; a no-op when `cargo test` just built them), so
//! `cargo test -p sockeye --test examples` alone runs current examples.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tungstenite::client::IntoClientRequest;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message as WsMessage, WebSocket};

const IO_TIMEOUT: Duration = Duration::from_secs(20);

type Ws = WebSocket<TcpStream>;

mod build_examples;

/// The example binaries, built once per run of this test.
fn build_examples() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| build_examples::build_examples(&["--examples"]))
}

/// A running example; killed (if still running) when dropped.
struct Example {
    name: &'static str,
    child: Child,
    addr: SocketAddr,
}

impl Example {
    /// Starts `name` on a free port with `args`, and waits for its `listening on ws://ADDR`.
    fn start(name: &'static str, args: &[&str]) -> Self {
        let path = build_examples().join(name);
        let mut child = Command::new(&path)
            .args(["--addr", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", path.display()));
        let mut lines = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        lines.read_line(&mut line).expect("the example's first line");
        let addr = line
            .strip_prefix("listening on ws://")
            .and_then(|rest| rest.split('/').next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| {
                panic!("{name}: expected 'listening on ws://ADDR/...', got {line:?}")
            });
        // Keep reading stdout on a thread (an example that prints must never block on it).
        let echo_name = name;
        std::thread::spawn(move || {
            for l in lines.lines().map_while(Result::ok) {
                println!("[{echo_name}] {l}");
            }
        });
        Example { name, child, addr }
    }

    fn connect(&self, path: &str) -> Ws {
        self.connect_with(path, &[]).expect("handshake")
    }

    /// Connects to `path` with extra request headers; `Err` holds the HTTP status of a
    /// refusal (any other failure panics).
    fn connect_with(&self, path: &str, headers: &[(&'static str, &str)]) -> Result<Ws, u16> {
        let s = TcpStream::connect(self.addr).expect("connect");
        s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
        s.set_write_timeout(Some(IO_TIMEOUT)).expect("timeout");
        let mut req = format!("ws://{}{path}", self.addr).into_client_request().expect("request");
        for (k, v) in headers {
            req.headers_mut().insert(*k, v.parse().expect("header value"));
        }
        let cfg = tungstenite::protocol::WebSocketConfig::default()
            .max_message_size(Some(64 << 20))
            .max_frame_size(Some(64 << 20));
        match tungstenite::client::client_with_config(req, s, Some(cfg)) {
            Ok((ws, _)) => Ok(ws),
            Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(resp))) => {
                Err(resp.status().as_u16())
            }
            Err(tungstenite::HandshakeError::Failure(e)) => panic!("{path}: {e}"),
            Err(tungstenite::HandshakeError::Interrupted(_)) => panic!("blocking socket"),
        }
    }

    /// The subprotocol the server confirmed for a connection to `path` offering `offer`.
    fn protocol_for(&self, path: &str, offer: &str) -> (Ws, Option<String>) {
        let s = TcpStream::connect(self.addr).expect("connect");
        s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
        let mut req = format!("ws://{}{path}", self.addr).into_client_request().expect("request");
        if !offer.is_empty() {
            req.headers_mut().insert("Sec-WebSocket-Protocol", offer.parse().expect("value"));
        }
        let (ws, resp) = tungstenite::client::client(req, s).expect("handshake");
        let p = resp
            .headers()
            .get("Sec-WebSocket-Protocol")
            .map(|v| v.to_str().expect("ascii").to_string());
        (ws, p)
    }

    /// Waits up to `limit` for the process to exit.
    fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let t0 = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                return Some(st);
            }
            if t0.elapsed() > limit {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn signal(&self, sig: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid");
        // SAFETY: kill(2) on our own child's pid, which has not been reaped (it is only
        // reaped by `wait_exit`/`Drop`, after which no signal is sent).
        let rc = unsafe { libc::kill(pid, sig) };
        assert_eq!(rc, 0, "{}: kill: {}", self.name, std::io::Error::last_os_error());
    }
}

impl Drop for Example {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read_text(ws: &mut Ws) -> String {
    loop {
        match ws.read().expect("read") {
            WsMessage::Text(t) => return t.to_string(),
            WsMessage::Binary(b) => panic!("expected text, got {} bytes of binary", b.len()),
            WsMessage::Close(c) => panic!("expected text, got close {c:?}"),
            _ => {}
        }
    }
}

/// Reads until the close frame arrives; returns its code.
fn read_close(ws: &mut Ws) -> Option<CloseCode> {
    loop {
        match ws.read() {
            Ok(WsMessage::Close(c)) => return c.map(|c| c.code),
            Ok(_) => {}
            Err(e) => panic!("expected a close frame, got {e}"),
        }
    }
}

#[test]
fn echo_echoes() {
    let ex = Example::start("echo", &[]);
    let mut ws = ex.connect("/anything");
    ws.send(WsMessage::text("hello")).expect("send");
    assert_eq!(read_text(&mut ws), "hello");
    ws.send(WsMessage::binary(vec![0u8, 1, 2, 255])).expect("send");
    match ws.read().expect("read") {
        WsMessage::Binary(b) => assert_eq!(&b[..], [0, 1, 2, 255]),
        other => panic!("expected binary, got {other:?}"),
    }
    let bye = tungstenite::protocol::CloseFrame { code: CloseCode::Normal, reason: "".into() };
    ws.close(Some(bye)).expect("close");
    assert_eq!(read_close(&mut ws), Some(CloseCode::Normal), "the close code comes back");
}

#[test]
fn rooms_route_choose_reject_and_fan_out() {
    let ex = Example::start("rooms", &["--workers", "2"]);
    // Rejections, each with its status.
    assert_eq!(ex.connect_with("/nope", &[]).expect_err("404"), 404);
    assert_eq!(ex.connect_with("/rooms/lobby", &[]).expect_err("no nick"), 400);
    assert_eq!(ex.connect_with("/rooms/a.b?nick=x", &[]).expect_err("bad room"), 400);
    let evil = [("Origin", "http://evil.example")];
    assert_eq!(ex.connect_with("/rooms/lobby?nick=eve", &evil).expect_err("origin"), 403);
    let same = format!("http://{}", ex.addr);
    let mut ok = ex
        .connect_with("/rooms/solo?nick=sam", &[("Origin", same.as_str())])
        .expect("a page from this server is welcome");
    assert_eq!(read_text(&mut ok), "* sam joined");

    // Subprotocols: the server's preference among those offered.
    let (mut alice, p) = ex.protocol_for("/rooms/lobby?nick=alice", "rooms.v1, rooms.v2");
    assert_eq!(p.as_deref(), Some("rooms.v2"));
    assert_eq!(read_text(&mut alice), "[lobby] * alice joined");
    let (mut bob, p) = ex.protocol_for("/rooms/lobby?nick=bob", "rooms.v1");
    assert_eq!(p.as_deref(), Some("rooms.v1"));
    assert_eq!(read_text(&mut bob), "* bob joined");
    assert_eq!(read_text(&mut alice), "[lobby] * bob joined");
    let only_others = [("Sec-WebSocket-Protocol", "chat, superchat")];
    let refused = ex.connect_with("/rooms/other?nick=dave", &only_others).expect_err("others");
    assert_eq!(refused, 400, "only protocols we do not speak");
    let (mut carol, p) = ex.protocol_for("/rooms/other?nick=carol", "");
    assert_eq!(p, None, "nothing offered, nothing confirmed");
    assert_eq!(read_text(&mut carol), "* carol joined");

    // Fan-out within the room only, to every member whatever its worker.
    alice.send(WsMessage::text("hi")).expect("send");
    assert_eq!(read_text(&mut alice), "[lobby] alice: hi");
    assert_eq!(read_text(&mut bob), "alice: hi");
    carol.send(WsMessage::text("anyone?")).expect("send");
    assert_eq!(read_text(&mut carol), "carol: anyone?", "carol heard nothing from the lobby");

    // Leaving is announced; binary is refused with 1003.
    bob.send(WsMessage::binary(vec![1u8])).expect("send");
    assert_eq!(read_close(&mut bob), Some(CloseCode::Unsupported));
    assert_eq!(read_text(&mut alice), "[lobby] * bob left");

    // Plain HTTP on the same port, with the handler's header.
    let mut s = TcpStream::connect(ex.addr).expect("connect");
    s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").expect("request");
    let mut resp = String::new();
    s.read_to_string(&mut resp).expect("response");
    assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{resp}");
    assert!(resp.contains("\r\nCache-Control: no-store\r\n"), "{resp}");
}

#[test]
fn push_ticks_from_a_thread_outside_the_workers() {
    let ex = Example::start("push", &["--interval-ms", "20"]);
    let mut ws = ex.connect("/");
    let ticks: Vec<u64> = (0..3)
        .map(|_| {
            let t = read_text(&mut ws);
            t.strip_prefix("tick ").and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("{t:?}"))
        })
        .collect();
    assert!(ticks.windows(2).all(|w| w[0] < w[1]), "ticks in order: {ticks:?}");
    // A second subscriber gets them too.
    let mut other = ex.connect("/");
    assert!(read_text(&mut other).starts_with("tick "));
}

#[test]
fn pubsub_rooms_reach_every_member_and_ticks_come_from_outside() {
    let ex = Example::start("pubsub", &["--interval-ms", "20"]);
    let mut a = ex.connect("/room/lobby");
    assert!(read_text(&mut a).starts_with("joined lobby"));
    let mut b = ex.connect("/room/lobby");
    assert!(read_text(&mut b).starts_with("joined lobby"));
    let mut other = ex.connect("/room/elsewhere");
    assert!(read_text(&mut other).starts_with("joined elsewhere"));
    a.send(WsMessage::text("hello lobby")).expect("send");
    assert_eq!(read_text(&mut a), "hello lobby", "the sender is included");
    assert_eq!(read_text(&mut b), "hello lobby");
    other.send(WsMessage::text("only here")).expect("send");
    assert_eq!(read_text(&mut other), "only here", "rooms do not mix");
    let mut t = ex.connect("/ticks");
    assert!(read_text(&mut t).starts_with("joined ticks"));
    let n1 = read_text(&mut t);
    let n2 = read_text(&mut t);
    let num = |s: &str| s.strip_prefix("tick ").and_then(|n| n.parse::<u64>().ok()).unwrap();
    assert!(num(&n1) < num(&n2), "{n1} then {n2}");
}

#[test]
fn backpressure_waits_for_drain_and_loses_nothing() {
    let ex = Example::start("backpressure", &[]);
    let (count, size) = (512u64, 64usize << 10); // 32 MiB: more than any socket buffers
    let mut ws = ex.connect(&format!("/stream?count={count}&size={size}"));
    // Read nothing for a while: the socket fills, and the producer must wait.
    std::thread::sleep(Duration::from_millis(300));
    for seq in 0..count {
        match ws.read().expect("read") {
            WsMessage::Binary(b) => {
                assert_eq!(b.len(), size, "chunk {seq}");
                let got = u64::from_be_bytes(b[..8].try_into().expect("8 bytes"));
                assert_eq!(got, seq, "chunks in order, none lost");
            }
            other => panic!("chunk {seq}: got {other:?}"),
        }
    }
    let summary = read_text(&mut ws);
    let paused: u64 = summary
        .strip_prefix(&format!("done {count} paused "))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{summary:?}"));
    assert!(paused >= 1, "a reader that waited 300 ms must have made the producer wait");
    assert_eq!(read_close(&mut ws), Some(CloseCode::Normal));
}

#[test]
fn shutdown_first_ctrl_c_is_graceful() {
    let mut ex = Example::start("shutdown", &["--shutdown-timeout", "30"]);
    let mut ws = ex.connect("/");
    ws.send(WsMessage::text("before")).expect("send");
    assert_eq!(read_text(&mut ws), "before");
    ex.signal(libc::SIGINT);
    assert_eq!(read_close(&mut ws), Some(CloseCode::Away), "close 1001 on Ctrl-C");
    // tungstenite has answered the close; the server is done with its last connection.
    let _ = ws.flush();
    let st = ex.wait_exit(Duration::from_secs(20)).expect("exits once every close is answered");
    assert_eq!(st.code(), Some(0), "a graceful stop exits 0");
}

#[test]
fn shutdown_second_ctrl_c_forces_the_exit() {
    let mut ex = Example::start("shutdown", &["--shutdown-timeout", "60"]);
    // A peer that never answers its close: the graceful stop would wait 60 s for it.
    let mut raw = TcpStream::connect(ex.addr).expect("connect");
    raw.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    raw.write_all(
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .expect("handshake");
    let mut head = [0u8; 12];
    raw.read_exact(&mut head).expect("101");
    assert_eq!(&head, b"HTTP/1.1 101");
    ex.signal(libc::SIGINT);
    // The close frame arrives (0x88 ...); we never answer it.
    let mut buf = [0u8; 512];
    let t0 = Instant::now();
    loop {
        let n = raw.read(&mut buf).expect("read");
        assert!(n > 0, "the server closed before sending its close frame");
        if buf[..n].contains(&0x88) {
            break;
        }
        assert!(t0.elapsed() < IO_TIMEOUT, "no close frame after Ctrl-C");
    }
    assert!(ex.wait_exit(Duration::from_millis(500)).is_none(), "still waiting for the peer");
    ex.signal(libc::SIGINT);
    let st = ex.wait_exit(Duration::from_secs(10)).expect("the second Ctrl-C exits at once");
    assert_eq!(st.code(), Some(130), "forced exit status");
}
