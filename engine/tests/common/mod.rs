//! Shared helpers for the integration tests: a server on a background thread, a raw-socket
//! client that speaks the wire format by hand (masked or not, legal or not), a tungstenite
//! client, and probes of the process (fds, RSS, worker CPU time) for leak and busy-loop tests.
//!
//! The backend is whatever `SOCKEYE_BACKEND` (or `Backend::Auto`) picks: nothing here names
//! one, so every test runs on every backend. [`backend_name`] says which ran, for messages.
#![allow(dead_code)]

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use sockeye::{
    CloseCode, Conn, ConnId, Handler, Message, SendStatus, Server, ServerBuilder, ServerHandle,
};
use tungstenite::protocol::WebSocketConfig;
use tungstenite::{Message as WsMessage, WebSocket};

/// The longest frame header (the slack a hard send limit allows past `max_backpressure`).
pub(crate) const MAX_FRAME_HEADER: usize = 14;

/// Default limit for any single blocking socket operation in a test.
pub(crate) const IO_TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Backend name
// ---------------------------------------------------------------------------------------------

static BACKEND: OnceLock<String> = OnceLock::new();

/// The backend the tests run on, as resolved by the engine for the first server started (or
/// as asked for by `SOCKEYE_BACKEND` before any server exists). For failure messages.
pub(crate) fn backend_name() -> String {
    if let Some(b) = BACKEND.get() {
        return b.clone();
    }
    match std::env::var("SOCKEYE_BACKEND") {
        Ok(v) if !v.is_empty() => format!("{v} (SOCKEYE_BACKEND, no server started yet)"),
        _ => "auto (no server started yet)".to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// Serial section for tests that measure the whole process
// ---------------------------------------------------------------------------------------------

static SERIAL: Mutex<()> = Mutex::new(());

/// Tests that measure the process (fd count, RSS, CPU time of `sockeye-*` threads) take this
/// lock so that no other test of the same binary runs a server meanwhile. Declare the guard
/// before the server so the server is dropped (and joined) first.
pub(crate) fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------------------------
// Server on a background thread
// ---------------------------------------------------------------------------------------------

/// An echo handler.
#[derive(Debug, Default)]
pub(crate) struct Echo;

impl Handler for Echo {
    type Data = ();
    fn on_message(&mut self, conn: &mut Conn<'_, ()>, msg: Message<'_>) {
        conn.send(msg);
    }
}

/// What a [`Probe`] saw, shared by every worker's instance.
#[derive(Debug, Clone, Default)]
pub(crate) struct Record {
    /// Ids of opened connections, in order.
    pub(crate) opened: Arc<Mutex<Vec<ConnId>>>,
    /// `(code, reason)` of every `on_close`.
    pub(crate) closes: Arc<Mutex<Vec<(u16, String)>>>,
    /// Largest `buffered_amount` seen right after an echo.
    pub(crate) max_buffered: Arc<AtomicUsize>,
    /// Messages received.
    pub(crate) messages: Arc<AtomicUsize>,
    /// Echoes that returned `SendStatus::Dropped`.
    pub(crate) dropped: Arc<AtomicUsize>,
    /// Echoes whose status contradicted the backpressure rule (dropped while under the limit,
    /// or queued while over it).
    pub(crate) violations: Arc<AtomicUsize>,
    /// Pings received.
    pub(crate) pings: Arc<AtomicUsize>,
}

impl Record {
    pub(crate) fn opened(&self) -> Vec<ConnId> {
        self.opened.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
    pub(crate) fn closes(&self) -> Vec<(u16, String)> {
        self.closes.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
    pub(crate) fn close_codes(&self) -> Vec<u16> {
        self.closes().into_iter().map(|(c, _)| c).collect()
    }
}

/// An echo handler that records opens, closes, send statuses and buffered amounts.
#[derive(Debug)]
pub(crate) struct Probe {
    pub(crate) rec: Record,
    /// The server's `max_backpressure`, to check send statuses against.
    pub(crate) max_backpressure: usize,
}

impl Handler for Probe {
    type Data = ();
    fn on_open(&mut self, conn: &mut Conn<'_, ()>) {
        self.rec.opened.lock().unwrap_or_else(|e| e.into_inner()).push(conn.id());
    }
    fn on_message(&mut self, conn: &mut Conn<'_, ()>, msg: Message<'_>) {
        self.rec.messages.fetch_add(1, Ordering::Relaxed);
        let status = conn.send(msg);
        let after = conn.buffered_amount();
        self.rec.max_buffered.fetch_max(after, Ordering::Relaxed);
        // The limit is hard: a send is refused only when it would not fit behind what is left
        // waiting (after the corked bytes were offered to the socket), and nothing accepted
        // takes the queue past the limit by more than one frame header.
        let len = msg.as_bytes().len();
        match status {
            SendStatus::Dropped => {
                self.rec.dropped.fetch_add(1, Ordering::Relaxed);
                if after + len <= self.max_backpressure {
                    self.rec.violations.fetch_add(1, Ordering::Relaxed);
                }
            }
            SendStatus::Sent | SendStatus::Backpressure => {
                if after > self.max_backpressure + MAX_FRAME_HEADER {
                    self.rec.violations.fetch_add(1, Ordering::Relaxed);
                }
            }
            SendStatus::Closed => {}
            // A connection's own send never goes through another worker.
            SendStatus::Forwarded => {
                self.rec.violations.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    fn on_ping(&mut self, _conn: &mut Conn<'_, ()>, _payload: &[u8]) {
        self.rec.pings.fetch_add(1, Ordering::Relaxed);
    }
    fn on_close(&mut self, _conn: &mut Conn<'_, ()>, code: CloseCode, reason: &str) {
        self.rec.closes.lock().unwrap_or_else(|e| e.into_inner()).push((code.0, reason.to_owned()));
    }
}

/// A server running [`Server::run`] on a background thread. Dropping it shuts the server down
/// and joins the thread (giving up after 10 s, with a message, rather than hanging).
#[derive(Debug)]
pub(crate) struct TestServer {
    pub(crate) addr: SocketAddr,
    /// The wss:// address of a server with a TLS listener of its own (`listen_tls`).
    pub(crate) tls_addr: Option<SocketAddr>,
    pub(crate) handle: ServerHandle,
    thread: Option<JoinHandle<Result<(), sockeye::Error>>>,
}

/// Starts a server on `127.0.0.1:0` with 2 workers, `configure` applied to the builder, and
/// handlers made by `factory`.
pub(crate) fn start<G, H>(
    configure: impl FnOnce(ServerBuilder<()>) -> ServerBuilder<()>,
    factory: G,
) -> TestServer
where
    G: Fn() -> H + Send + Sync + 'static,
    H: Handler,
{
    let builder = configure(Server::builder().listen("127.0.0.1:0").workers(2));
    let server = builder.handler(factory).build().expect("build the server");
    let backend = format!("{:?}", server.config().backend);
    let _ = BACKEND.set(backend);
    let addr = server.local_addr();
    let tls_addr = server.config().tls_addr;
    let handle = server.handle();
    let thread = thread::Builder::new()
        .name("test-server-run".into())
        .spawn(move || server.run())
        .expect("spawn the server thread");
    TestServer { addr, tls_addr, handle, thread: Some(thread) }
}

/// Starts an echo server (2 workers) with `configure` applied.
pub(crate) fn start_echo(
    configure: impl FnOnce(ServerBuilder<()>) -> ServerBuilder<()>,
) -> TestServer {
    start(configure, || Echo)
}

/// Starts a [`Probe`] server; returns it with its shared record.
pub(crate) fn start_probe(
    max_backpressure: usize,
    configure: impl FnOnce(ServerBuilder<()>) -> ServerBuilder<()>,
) -> (TestServer, Record) {
    let rec = Record::default();
    let r = rec.clone();
    let srv = start(
        move |b| configure(b.max_backpressure(max_backpressure)),
        move || Probe { rec: r.clone(), max_backpressure },
    );
    (srv, rec)
}

impl TestServer {
    /// Waits up to `limit` for `run()` to return (without asking it to). `None` if it did not.
    pub(crate) fn join_within(&mut self, limit: Duration) -> Option<Result<(), sockeye::Error>> {
        let t0 = Instant::now();
        loop {
            match &self.thread {
                None => return Some(Ok(())),
                Some(t) if t.is_finished() => {
                    let t = self.thread.take().expect("thread");
                    return Some(t.join().unwrap_or(Err(sockeye::Error::WorkerPanicked)));
                }
                Some(_) if t0.elapsed() >= limit => return None,
                Some(_) => thread::sleep(Duration::from_millis(5)),
            }
        }
    }

    /// Total connections the workers hold (handshaking, open or closing).
    pub(crate) fn connections(&self) -> usize {
        self.handle.stats().iter().map(|s| s.connections).sum()
    }

    /// Waits until the workers hold no connection; panics after `limit`.
    pub(crate) fn wait_idle(&self, limit: Duration) {
        let ok = wait_until(limit, || self.connections() == 0);
        assert!(
            ok,
            "[{}] server still holds {} connections after {limit:?}",
            backend_name(),
            self.connections()
        );
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.handle.shutdown();
        if self.join_within(Duration::from_secs(10)).is_none() {
            eprintln!(
                "[{}] warning: server did not stop within 10 s of shutdown()",
                backend_name()
            );
        }
    }
}

/// Polls `cond` every 5 ms until it holds (true) or `limit` passes (false).
pub(crate) fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let t0 = Instant::now();
    loop {
        if cond() {
            return true;
        }
        if t0.elapsed() >= limit {
            return false;
        }
        thread::sleep(Duration::from_millis(5));
    }
}

// ---------------------------------------------------------------------------------------------
// tungstenite client
// ---------------------------------------------------------------------------------------------

pub(crate) type Ws = WebSocket<TcpStream>;

/// Connects a tungstenite client (64 MiB message / 32 MiB frame limits, socket timeouts
/// `IO_TIMEOUT`).
pub(crate) fn ws_connect(addr: SocketAddr) -> Ws {
    let s = TcpStream::connect(addr)
        .unwrap_or_else(|e| panic!("[{}] connect {addr}: {e}", backend_name()));
    s.set_read_timeout(Some(IO_TIMEOUT)).expect("read timeout");
    s.set_write_timeout(Some(IO_TIMEOUT)).expect("write timeout");
    let _ = s.set_nodelay(true);
    let cfg =
        WebSocketConfig::default().max_message_size(Some(64 << 20)).max_frame_size(Some(32 << 20));
    let (ws, resp) =
        tungstenite::client::client_with_config(format!("ws://{addr}/echo"), s, Some(cfg))
            .unwrap_or_else(|e| panic!("[{}] handshake with {addr}: {e}", backend_name()));
    assert_eq!(resp.status().as_u16(), 101, "[{}] handshake status", backend_name());
    ws
}

/// Reads the next data message, answering nothing else (tungstenite answers pings itself).
pub(crate) fn ws_read_data(ws: &mut Ws) -> WsMessage {
    loop {
        match ws.read() {
            Ok(m @ (WsMessage::Text(_) | WsMessage::Binary(_))) => return m,
            Ok(WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_)) => {}
            Ok(WsMessage::Close(c)) => panic!("[{}] unexpected close {c:?}", backend_name()),
            Err(e) => panic!("[{}] read: {e}", backend_name()),
        }
    }
}

/// A fresh tungstenite client handshakes, gets an echo of a text and a binary message, and
/// closes cleanly: the server is still serving.
pub(crate) fn assert_echo(addr: SocketAddr) {
    let mut ws = ws_connect(addr);
    ws.send(WsMessage::text("still alive")).expect("send");
    assert_eq!(
        ws_read_data(&mut ws),
        WsMessage::text("still alive"),
        "[{}] text echo",
        backend_name()
    );
    ws.send(WsMessage::binary(vec![1u8, 2, 3])).expect("send");
    assert_eq!(
        ws_read_data(&mut ws),
        WsMessage::binary(vec![1u8, 2, 3]),
        "[{}] binary echo",
        backend_name()
    );
    ws_close(&mut ws);
}

/// Closes with 1000 and reads until the server has answered and closed the stream.
pub(crate) fn ws_close(ws: &mut Ws) {
    let _ = ws.close(None);
    loop {
        match ws.read() {
            Ok(_) => {}
            Err(tungstenite::Error::ConnectionClosed) => return,
            Err(e) => panic!("[{}] closing: {e}", backend_name()),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Raw client
// ---------------------------------------------------------------------------------------------

/// A valid upgrade request for `/echo`.
pub(crate) const REQUEST: &str = "GET /echo HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

/// The accept key for [`REQUEST`]'s key (RFC 6455 section 1.3).
pub(crate) const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// Opcodes, as bytes on the wire.
pub(crate) mod op {
    pub(crate) const CONT: u8 = 0x0;
    pub(crate) const TEXT: u8 = 0x1;
    pub(crate) const BINARY: u8 = 0x2;
    pub(crate) const CLOSE: u8 = 0x8;
    pub(crate) const PING: u8 = 0x9;
    pub(crate) const PONG: u8 = 0xA;
}

/// Encodes one frame. `mask: None` makes an (illegal from a client) unmasked frame.
pub(crate) fn frame(opcode: u8, fin: bool, mask: Option<[u8; 4]>, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(if fin { 0x80 } else { 0 } | (opcode & 0x0f));
    let m = if mask.is_some() { 0x80 } else { 0 };
    let len = payload.len();
    if len < 126 {
        out.push(m | len as u8);
    } else if len <= 0xffff {
        out.push(m | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(m | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    match mask {
        Some(k) => {
            out.extend_from_slice(&k);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ k[i & 3]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

/// A masked frame with a fixed, non-zero key.
pub(crate) fn masked(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
    frame(opcode, fin, Some([0x37, 0xfa, 0x21, 0x3d]), payload)
}

/// A close payload: code and reason.
pub(crate) fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason.as_bytes());
    p
}

/// One frame as the server sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Frame {
    pub(crate) fin: bool,
    pub(crate) rsv: u8,
    pub(crate) opcode: u8,
    pub(crate) masked: bool,
    pub(crate) payload: Vec<u8>,
}

impl Frame {
    /// The close code of a close frame (1005 when it has none).
    pub(crate) fn close_code(&self) -> u16 {
        assert_eq!(self.opcode, op::CLOSE, "[{}] not a close frame: {self:?}", backend_name());
        if self.payload.len() >= 2 {
            u16::from_be_bytes([self.payload[0], self.payload[1]])
        } else {
            1005
        }
    }
}

/// How a read for "the connection is over" ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// Read returned 0.
    Eof,
    /// Reset, broken pipe, or another error that means the connection is gone.
    Reset,
    /// Nothing within the limit: the connection is still open.
    TimedOut,
}

/// A client on a plain socket, for input no real client would send.
#[derive(Debug)]
pub(crate) struct RawClient {
    pub(crate) stream: TcpStream,
}

impl RawClient {
    /// Connects (no handshake). Read and write timeouts are `IO_TIMEOUT`.
    pub(crate) fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr)
            .unwrap_or_else(|e| panic!("[{}] connect {addr}: {e}", backend_name()));
        stream.set_read_timeout(Some(IO_TIMEOUT)).expect("read timeout");
        stream.set_write_timeout(Some(IO_TIMEOUT)).expect("write timeout");
        let _ = stream.set_nodelay(true);
        Self { stream }
    }

    /// Connects and completes the handshake by hand, checking the 101 and the accept key.
    pub(crate) fn open(addr: SocketAddr) -> Self {
        let mut c = Self::connect(addr);
        c.send_raw(REQUEST.as_bytes());
        let (status, head) = c.read_http_head();
        assert_eq!(status, 101, "[{}] handshake answered:\n{head}", backend_name());
        let want = format!("sec-websocket-accept: {ACCEPT}");
        assert!(
            head.to_ascii_lowercase().lines().any(|l| l.trim_end() == want.to_ascii_lowercase()),
            "[{}] no or wrong accept key:\n{head}",
            backend_name()
        );
        c
    }

    /// Writes bytes as they are.
    pub(crate) fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap_or_else(|e| panic!("[{}] write: {e}", backend_name()));
    }

    /// Sends one masked frame.
    pub(crate) fn send_frame(&mut self, opcode: u8, fin: bool, payload: &[u8]) {
        self.send_raw(&masked(opcode, fin, payload));
    }

    /// Sends a masked close frame with this code and reason.
    pub(crate) fn send_close(&mut self, code: u16, reason: &str) {
        self.send_frame(op::CLOSE, true, &close_payload(code, reason));
    }

    /// Reads an HTTP response head (through the blank line); returns the status and the head.
    pub(crate) fn read_http_head(&mut self) -> (u16, String) {
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match self.stream.read(&mut b) {
                Ok(1) => head.push(b[0]),
                Ok(_) => panic!(
                    "[{}] EOF inside the HTTP response head: {:?}",
                    backend_name(),
                    String::from_utf8_lossy(&head)
                ),
                Err(e) => panic!(
                    "[{}] reading the HTTP response head: {e}; got {:?}",
                    backend_name(),
                    String::from_utf8_lossy(&head)
                ),
            }
            assert!(head.len() < 64 << 10, "[{}] endless response head", backend_name());
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("[{}] bad status line in {head:?}", backend_name()));
        (status, head)
    }

    /// Reads one server frame.
    pub(crate) fn read_frame(&mut self) -> io::Result<Frame> {
        let mut h = [0u8; 2];
        self.stream.read_exact(&mut h)?;
        let len = match h[1] & 0x7f {
            126 => {
                let mut l = [0u8; 2];
                self.stream.read_exact(&mut l)?;
                u64::from(u16::from_be_bytes(l))
            }
            127 => {
                let mut l = [0u8; 8];
                self.stream.read_exact(&mut l)?;
                u64::from_be_bytes(l)
            }
            n => u64::from(n),
        };
        assert!(len <= 64 << 20, "[{}] absurd frame length {len}", backend_name());
        let masked = h[1] & 0x80 != 0;
        let mut key = [0u8; 4];
        if masked {
            self.stream.read_exact(&mut key)?;
        }
        let mut payload = vec![0u8; len as usize];
        self.stream.read_exact(&mut payload)?;
        if masked {
            for (i, b) in payload.iter_mut().enumerate() {
                *b ^= key[i & 3];
            }
        }
        Ok(Frame {
            fin: h[0] & 0x80 != 0,
            rsv: (h[0] >> 4) & 7,
            opcode: h[0] & 0x0f,
            masked,
            payload,
        })
    }

    /// Reads one frame; panics on error.
    pub(crate) fn expect_frame(&mut self) -> Frame {
        self.read_frame().unwrap_or_else(|e| panic!("[{}] reading a frame: {e}", backend_name()))
    }

    /// Reads frames until a close frame; returns its code and reason. Panics if the stream
    /// ends first. Frames before it are skipped (echoes, pongs).
    pub(crate) fn read_close(&mut self) -> (u16, String) {
        loop {
            let f = self.read_frame().unwrap_or_else(|e| {
                panic!("[{}] stream ended before a close frame: {e}", backend_name())
            });
            assert!(!f.masked, "[{}] server frame is masked: {f:?}", backend_name());
            if f.opcode == op::CLOSE {
                let reason =
                    String::from_utf8_lossy(f.payload.get(2..).unwrap_or(&[])).into_owned();
                return (f.close_code(), reason);
            }
        }
    }

    /// Reads (and discards) until EOF, reset, or `limit`.
    pub(crate) fn wait_end(&mut self, limit: Duration) -> End {
        wait_end(&mut self.stream, limit)
    }

    /// Expects a close frame with `code`, then the end of the stream within `limit`.
    pub(crate) fn expect_close(&mut self, code: u16, limit: Duration) {
        let (got, reason) = self.read_close();
        assert_eq!(got, code, "[{}] close code (reason {reason:?})", backend_name());
        let end = self.wait_end(limit);
        assert_ne!(
            end,
            End::TimedOut,
            "[{}] connection still open {limit:?} after close {code}",
            backend_name()
        );
    }
}

/// Reads (and discards) from `s` until EOF, reset, or `limit`.
pub(crate) fn wait_end(s: &mut TcpStream, limit: Duration) -> End {
    let t0 = Instant::now();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let left = limit.saturating_sub(t0.elapsed());
        if left.is_zero() {
            return End::TimedOut;
        }
        s.set_read_timeout(Some(left.max(Duration::from_millis(1)))).expect("read timeout");
        match s.read(&mut buf) {
            Ok(0) => return End::Eof,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return End::Reset,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Process probes
// ---------------------------------------------------------------------------------------------

/// Open file descriptors of this process.
pub(crate) fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").map(|d| d.count()).expect("/proc/self/fd")
}

/// Resident set size of this process, in bytes.
pub(crate) fn rss_bytes() -> usize {
    let s = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = s.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS");
    let kib: usize =
        line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).expect("VmRSS value");
    kib * 1024
}

/// CPU time (user + system) of this process's `sockeye-*` worker threads.
pub(crate) fn worker_cpu() -> Duration {
    CpuProbe::workers().total()
}

/// The `stat` files of this process's `sockeye-*` threads, opened once and re-read on demand,
/// so that measuring needs no new file descriptor (for tests that run out of them on purpose).
#[derive(Debug)]
pub(crate) struct CpuProbe {
    files: Vec<std::fs::File>,
    buf: String,
}

impl CpuProbe {
    /// Opens the stat file of every `sockeye-*` thread alive now.
    pub(crate) fn workers() -> Self {
        let mut files = Vec::new();
        if let Ok(dir) = std::fs::read_dir("/proc/self/task") {
            for t in dir.flatten() {
                let named = std::fs::read_to_string(t.path().join("comm"))
                    .is_ok_and(|c| c.trim_end().starts_with("sockeye-"));
                if named {
                    if let Ok(f) = std::fs::File::open(t.path().join("stat")) {
                        files.push(f);
                    }
                }
            }
        }
        Self { files, buf: String::new() }
    }

    /// Threads watched.
    pub(crate) fn threads(&self) -> usize {
        self.files.len()
    }

    /// Their CPU time so far (user + system; clock-tick resolution).
    pub(crate) fn total(&mut self) -> Duration {
        use std::io::Seek;
        // SAFETY: sysconf has no preconditions; it only reads a system constant.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        let hz = if hz > 0 { hz as u64 } else { 100 };
        let mut ticks = 0u64;
        for f in &mut self.files {
            self.buf.clear();
            if f.rewind().is_err() || f.read_to_string(&mut self.buf).is_err() {
                continue; // the thread exited
            }
            let Some(close) = self.buf.rfind(')') else {
                continue;
            };
            // After "comm) ": state is field 3; utime and stime are fields 14 and 15.
            let rest: Vec<&str> = self.buf[close + 1..].split_whitespace().collect();
            let field = |i: usize| rest.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            ticks += field(11) + field(12);
        }
        Duration::from_millis(ticks * 1000 / hz)
    }
}

/// The open file descriptor numbers of this process (without the one used to list them).
pub(crate) fn open_fds() -> Vec<i32> {
    let dir = std::fs::read_dir("/proc/self/fd").expect("/proc/self/fd");
    let mut fds: Vec<i32> =
        dir.flatten().filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok())).collect();
    // The listing's own descriptor is in the list but closed by now.
    fds.retain(|&fd| {
        // SAFETY: F_GETFD on any integer is harmless; it only queries the descriptor table.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        flags != -1
    });
    fds.sort_unstable();
    fds
}

/// Number of `sockeye-*` threads in this process.
pub(crate) fn worker_threads() -> usize {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    dir.flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm"))
                .is_ok_and(|c| c.trim_end().starts_with("sockeye-"))
        })
        .count()
}

/// A small deterministic PRNG (xorshift64*), for garbage and payloads.
#[derive(Debug, Clone)]
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub(crate) fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
    pub(crate) fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        self.fill(&mut v);
        v
    }
}
