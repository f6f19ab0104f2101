//! A test backend for the worker core, with a fake clock: no network, no threads, no sleeps.
//! Each client is a Unix socket pair (the server end's descriptor is what the core writes to
//! for a direct write, the backend's reads and writes go through it, so kernel buffers and a
//! peer that never reads are real) plus a client-role `proto::Connection` that speaks the wire
//! format. Time moves only when the caller says so ([`Pair::advance`]).
//!
//! Compiled for the unit tests (`core_tests.rs`) and, with the `testing` feature, for the fuzz
//! targets (as `sockeye::testing`). Test-only, no stability.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Core, Counts};
use crate::proto::conn::Event as PEvent;
use crate::proto::{CloseCode, Connection, Env, Limits, OpCode, Role, State};
use crate::server::{HandleInner, WorkerStats};
use crate::{Config, Conn, Handler, Message, SendStatus, ServerHandle, Stats};

/// The panic message of [`TestHandler`] on the text "boom" (the core catches it; a fuzz
/// target's panic hook may let it pass).
pub const HANDLER_PANIC: &str = "the handler met a bad message";

/// Largest binary message a "send N" text asks the [`TestHandler`] for.
pub const MAX_ASKED_SEND: usize = 1 << 20;

/// What the test handler saw.
#[derive(Debug, Default)]
#[cfg_attr(not(test), allow(dead_code))] // read by core_tests.rs
pub struct Seen {
    pub(crate) opened: Vec<usize>,
    pub(crate) closes: Vec<(usize, u16)>,
    pub(crate) messages: usize,
    /// Status of a send attempted from `on_close`.
    pub(crate) send_in_on_close: Vec<SendStatus>,
    pub(crate) statuses: Vec<SendStatus>,
    /// Results of `Conn::close` asked for by a "close N" message.
    pub(crate) close_results: Vec<Result<(), crate::InvalidCloseCode>>,
    /// Connections `on_drain` was called for, in order.
    pub(crate) drains: Vec<usize>,
    /// Results of "sub T" (subscribe) and "pub"/"puball" (publish) messages.
    pub(crate) subscribed: Vec<Result<bool, crate::TopicError>>,
    pub(crate) published: Vec<Result<(), crate::TopicError>>,
    /// The topics a connection held when `on_close` ran.
    pub(crate) topics_at_close: Vec<Vec<Vec<u8>>>,
}

/// Echoes; panics on the text "boom" ([`HANDLER_PANIC`]); closes with code N on "close N";
/// sends N bytes of binary on "send N"; tries a 64 KiB send from `on_close`. Pub/sub: "sub T"
/// subscribes to T, "unsub T" unsubscribes, "pub T REST" publishes REST to T (others only),
/// "puball T REST" publishes it to every subscriber, the sender included.
#[derive(Debug, Default)]
pub struct TestHandler {
    pub(crate) seen: Seen,
}

impl Handler for TestHandler {
    type Data = ();
    fn on_open(&mut self, conn: &mut Conn<'_, ()>) {
        self.seen.opened.push(conn.key);
    }
    fn on_message(&mut self, conn: &mut Conn<'_, ()>, msg: Message<'_>) {
        self.seen.messages += 1;
        if msg == Message::Text("boom") {
            panic!("{}", HANDLER_PANIC);
        }
        if let Message::Text(t) = msg {
            if let Some(code) = t.strip_prefix("close ").and_then(|c| c.parse().ok()) {
                let r = conn.close(CloseCode(code), "asked");
                self.seen.close_results.push(r);
                return;
            }
            if let Some(topic) = t.strip_prefix("sub ") {
                self.seen.subscribed.push(conn.subscribe(topic));
                return;
            }
            if let Some(topic) = t.strip_prefix("unsub ") {
                conn.unsubscribe(topic);
                return;
            }
            for (cmd, own) in [("pub ", false), ("puball ", true)] {
                if let Some((topic, rest)) = t.strip_prefix(cmd).and_then(|r| r.split_once(' ')) {
                    let r = if own {
                        conn.publish_including_self(topic, rest)
                    } else {
                        conn.publish(topic, rest)
                    };
                    self.seen.published.push(r);
                    return;
                }
            }
            if let Some(n) = t.strip_prefix("send ").and_then(|n| n.parse::<usize>().ok()) {
                let st = conn.send_binary(&vec![b's'; n.min(MAX_ASKED_SEND)]);
                self.seen.statuses.push(st);
                return;
            }
        }
        let st = conn.send(msg);
        self.seen.statuses.push(st);
    }
    fn on_drain(&mut self, conn: &mut Conn<'_, ()>) {
        self.seen.drains.push(conn.key);
    }
    fn on_close(&mut self, conn: &mut Conn<'_, ()>, code: CloseCode, _reason: &str) {
        self.seen.closes.push((conn.key, code.0));
        self.seen.topics_at_close.push(conn.topics().map(<[u8]>::to_vec).collect());
        let st = conn.send_binary(&[7u8; 64 << 10]);
        self.seen.send_in_on_close.push(st);
    }
}

/// A valid upgrade request.
pub const REQUEST: &[u8] =
    b"GET /chat HTTP/1.1\r\nHost: server.example.com\r\nUpgrade: websocket\r\n\
Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Sec-WebSocket-Version: 13\r\n\r\n";

/// One client: its end of the socket pair and its protocol state.
#[derive(Debug)]
pub struct Client {
    pub(crate) key: usize,
    /// The server's end (the core holds its raw fd; this owns it).
    pub(crate) server: Option<UnixStream>,
    /// The client's end.
    pub(crate) sock: UnixStream,
    pub(crate) proto: Connection,
    /// Bytes read from `sock` and not yet parsed.
    pub(crate) inbox: Vec<u8>,
    /// Bytes the client wrote that its socket has not taken yet (a client with an unbounded
    /// user-space buffer: it writes all, whatever the server reads).
    pub(crate) outbox: Vec<u8>,
    /// What the client's protocol answered by itself in `client_events` (pongs, the close
    /// echo), sent only when the test says so (`Pair::answer`): a client that never answers
    /// is a case too.
    pub(crate) replies: Vec<u8>,
    /// Whether the server end has seen EOF or an error already (hangup reported).
    pub(crate) hung: bool,
    /// Whether `pump` reads this client's socket (off: a peer that never reads).
    pub(crate) reading: bool,
    /// Whether the handshake completed through [`Pair::open`]: what the client reads is then
    /// frames, which `pump` parses and checks.
    pub(crate) framed: bool,
    /// Whether the client parsed the server's close frame (nothing may follow it).
    pub(crate) saw_close: bool,
    /// Whether the client hung up ([`Pair::hang_up`]).
    pub(crate) gone: bool,
}

/// The core plus its test backend: clients, a fake clock.
#[derive(Debug)]
pub struct Pair {
    pub(crate) core: Core<TestHandler>,
    pub(crate) now: Instant,
    pub(crate) clients: Vec<Client>,
    pub(crate) rbuf: Vec<u8>,
    pub(crate) env: Env,
    /// SO_SNDBUF for both ends of new connections (the kernel's default when `None`).
    pub(crate) sock_buf: Option<usize>,
}

fn handle(cfg: &Config) -> ServerHandle {
    ServerHandle {
        inner: Arc::new(HandleInner {
            workers: Vec::new(),
            local_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            stopping: AtomicBool::new(false),
            topics: Arc::new(crate::server::topics::Registry::new(1)),
            max_topic_len: cfg.max_topic_len,
            tls: crate::server::tls::TlsState::new(
                cfg.tls.as_ref().map(|t| t.build().expect("the test's TLS configuration")),
            ),
            #[cfg(feature = "cluster")]
            cluster: None,
        }),
    }
}

/// The address every test client comes from.
pub(crate) fn peer() -> SocketAddr {
    SocketAddr::from(([192, 0, 2, 1], 40000))
}

impl Pair {
    /// A core (worker 0) under `cfg`, its clock at now, no connection.
    pub fn new(cfg: Config) -> Self {
        let now = Instant::now();
        let handle = handle(&cfg);
        let core = Core::new(
            now,
            0,
            Arc::new(cfg),
            handle,
            TestHandler::default(),
            crate::io::sys::write_now,
        );
        Self {
            core,
            now,
            clients: Vec::new(),
            rbuf: vec![0; 64 << 10],
            env: Env::default(),
            sock_buf: None,
        }
    }

    #[cfg_attr(not(test), allow(dead_code))] // used by core_tests.rs
    pub(crate) fn seen(&self) -> &Seen {
        &self.core.handler.seen
    }

    #[cfg_attr(not(test), allow(dead_code))] // used by core_tests.rs
    pub(crate) fn counts(&self) -> Counts {
        self.core.state.counts
    }

    /// A new TCP-less connection, nothing sent yet; returns the client's index.
    pub fn connect(&mut self) -> usize {
        let (server, sock) = UnixStream::pair().expect("socketpair");
        server.set_nonblocking(true).expect("nonblocking");
        sock.set_nonblocking(true).expect("nonblocking");
        if let Some(n) = self.sock_buf {
            for s in [&server, &sock] {
                socket2::SockRef::from(s).set_send_buffer_size(n).expect("SO_SNDBUF");
            }
        }
        let secure = self.core.state.handle.inner.tls.current().is_some();
        let key = self.core.accept(peer(), server.as_raw_fd(), secure);
        let proto = Connection::new_open(Role::Client, 0x5eed);
        self.clients.push(Client {
            key,
            server: Some(server),
            sock,
            proto,
            inbox: Vec::new(),
            outbox: Vec::new(),
            replies: Vec::new(),
            hung: false,
            reading: false,
            framed: false,
            saw_close: false,
            gone: false,
        });
        self.clients.len() - 1
    }

    /// Connects and completes the handshake; returns the client's index.
    ///
    /// # Panics
    /// If the server does not answer 101.
    pub fn open(&mut self) -> usize {
        let c = self.connect();
        self.send_raw(c, REQUEST);
        self.pump();
        let head = self.read_head(c);
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        self.clients[c].framed = true;
        c
    }

    /// The send buffer (SO_SNDBUF) of both ends of connections made from now on; `None`:
    /// the kernel's default (a few hundred KiB). Small ones make a peer's window shut soon.
    pub fn set_socket_buffers(&mut self, bytes: Option<usize>) {
        self.sock_buf = bytes;
    }

    /// Clients connected so far (hung up or not).
    pub fn clients(&self) -> usize {
        self.clients.len()
    }

    /// The client writes `bytes` (what its socket does not take now waits in its outbox).
    /// Call [`Pair::pump`] to let the server read them.
    pub fn send_raw(&mut self, c: usize, bytes: &[u8]) {
        self.clients[c].outbox.extend_from_slice(bytes);
        self.client_write(c);
    }

    /// Whether client `c` reads what the server writes (off, the default: a peer that never
    /// reads). A reading client that completed [`Pair::open`] parses what it reads as frames
    /// and panics on a malformed one, or on anything after the server's close.
    pub fn set_reading(&mut self, c: usize, on: bool) {
        self.clients[c].reading = on;
    }

    /// Client `c` hangs up: its socket is shut both ways (it neither reads nor writes again).
    pub fn hang_up(&mut self, c: usize) {
        let cl = &mut self.clients[c];
        let _ = cl.sock.shutdown(Shutdown::Both);
        cl.gone = true;
        cl.reading = false;
        cl.outbox.clear();
    }

    /// A send to client `c`'s connection from outside a callback, as from another thread
    /// (`ServerHandle::send_*`): `len` bytes of `op` (a control frame takes 125 at most).
    /// Ignored unless the connection is open. Call [`Pair::pump`] to write it.
    pub fn server_send(&mut self, c: usize, op: OpCode, len: usize) {
        if let Some(key) = self.live_key(c) {
            let id = self.core.state.id_of(key);
            let payload = if op == OpCode::Text { vec![b't'; len] } else { vec![0xb5; len] };
            self.core.send_to(id, op, &payload);
        }
    }

    /// A close of client `c`'s connection from outside a callback, with `code` (as
    /// `ServerHandle::close`). Ignored unless the connection is open.
    pub fn server_close(&mut self, c: usize, code: u16) {
        if let Some(key) = self.live_key(c) {
            let id = self.core.state.id_of(key);
            self.core.close_id(id, CloseCode(code), "asked");
        }
    }

    /// The core's key for client `c`, while the core still holds its connection.
    fn live_key(&self, c: usize) -> Option<usize> {
        let cl = &self.clients[c];
        cl.server.as_ref().map(|_| cl.key)
    }

    /// Writes what the client's socket takes of its outbox; whether anything went.
    fn client_write(&mut self, c: usize) -> bool {
        let cl = &mut self.clients[c];
        let mut moved = false;
        while !cl.outbox.is_empty() {
            match cl.sock.write(&cl.outbox) {
                Ok(n) => {
                    cl.outbox.drain(..n);
                    moved = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    cl.outbox.clear();
                    break;
                }
            }
        }
        moved
    }

    /// The client sends one frame through its protocol state.
    #[cfg_attr(not(test), allow(dead_code))] // used by core_tests.rs
    pub(crate) fn send_frame(&mut self, c: usize, op: OpCode, payload: &[u8]) {
        let mut out = Vec::new();
        self.clients[c].proto.send_frame(op, true, payload, &mut out).expect("client send");
        self.send_raw(c, &out);
    }

    /// Sends what the client's protocol answered by itself (pongs, its close echo).
    #[cfg_attr(not(test), allow(dead_code))] // used by core_tests.rs
    pub(crate) fn answer(&mut self, c: usize) {
        let replies = std::mem::take(&mut self.clients[c].replies);
        self.send_raw(c, &replies);
    }

    #[cfg_attr(not(test), allow(dead_code))] // used by core_tests.rs
    pub(crate) fn send_close(&mut self, c: usize, code: u16) {
        let mut out = Vec::new();
        let limits = Limits::default();
        self.clients[c].proto.close(self.now, CloseCode(code), "", &mut out, &limits);
        self.send_raw(c, &out);
    }

    /// Everything the client can read now, appended to its inbox; whether EOF was seen.
    pub(crate) fn client_read(&mut self, c: usize) -> bool {
        let cl = &mut self.clients[c];
        loop {
            match cl.sock.read(&mut self.rbuf) {
                Ok(0) => return true,
                Ok(n) => cl.inbox.extend_from_slice(&self.rbuf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(_) => return true,
            }
        }
    }

    /// Everything client `c` has read so far (reading what is there first), taken.
    #[cfg_attr(not(test), allow(dead_code))] // used by tls_tests.rs
    pub(crate) fn client_take_raw(&mut self, c: usize) -> Vec<u8> {
        self.client_read(c);
        std::mem::take(&mut self.clients[c].inbox)
    }

    pub(crate) fn read_head(&mut self, c: usize) -> String {
        self.client_read(c);
        let cl = &mut self.clients[c];
        let end = cl.inbox.windows(4).position(|w| w == b"\r\n\r\n").expect("a whole head") + 4;
        let head: Vec<u8> = cl.inbox.drain(..end).collect();
        String::from_utf8(head).expect("ASCII head")
    }

    /// Frames the client received (reading what is there first), as (opcode, payload).
    #[cfg_attr(not(test), allow(dead_code))] // used by core_tests.rs
    pub(crate) fn client_events(&mut self, c: usize) -> Vec<(OpCode, Vec<u8>)> {
        self.client_read(c);
        let cl = &mut self.clients[c];
        let mut evs = Vec::new();
        let mut buf = std::mem::take(&mut cl.inbox);
        let mut pos = 0;
        let out = &mut cl.replies;
        while pos < buf.len() {
            let r = cl.proto.read(&mut buf[pos..], out, &mut self.env).expect("server frames");
            pos += r.consumed;
            match r.event {
                Some(PEvent::Text(t)) => evs.push((OpCode::Text, t.as_bytes().to_vec())),
                Some(PEvent::Binary(b)) => evs.push((OpCode::Binary, b.to_vec())),
                Some(PEvent::Ping(p)) => evs.push((OpCode::Ping, p.as_bytes().to_vec())),
                Some(PEvent::Pong(p)) => evs.push((OpCode::Pong, p.as_bytes().to_vec())),
                Some(PEvent::Close { code, .. }) => {
                    evs.push((OpCode::Close, code.map_or(vec![], |c| c.0.to_be_bytes().to_vec())))
                }
                None => break,
            }
        }
        // A frame cut by the socket: its start waits for the rest.
        cl.inbox = buf.split_off(pos);
        evs
    }

    /// A reading client takes what arrived: a framed one parses it and checks it (whole,
    /// well-formed frames; nothing after the server's close). Whether anything was read.
    fn client_take(&mut self, c: usize) -> bool {
        if !self.clients[c].reading {
            return false;
        }
        let before = self.clients[c].inbox.len();
        self.client_read(c);
        let cl = &mut self.clients[c];
        let moved = cl.inbox.len() != before;
        if !cl.framed {
            cl.inbox.clear();
            return moved;
        }
        let mut buf = std::mem::take(&mut cl.inbox);
        let mut pos = 0;
        let mut out = Vec::new();
        while pos < buf.len() {
            assert!(!cl.saw_close, "the server wrote {} bytes after its close", buf.len() - pos);
            if cl.proto.state() == State::Closed {
                break;
            }
            let r = match cl.proto.read(&mut buf[pos..], &mut out, &mut self.env) {
                Ok(r) => r,
                Err(e) => panic!("the server wrote a malformed frame: {e}"),
            };
            pos += r.consumed;
            match r.event {
                Some(PEvent::Close { .. }) => cl.saw_close = true,
                Some(_) => {}
                None => break,
            }
        }
        moved
    }

    fn client_index(&self, key: usize) -> Option<usize> {
        self.clients.iter().position(|c| c.key == key && c.server.is_some())
    }

    /// What a backend does: read what arrived, write what is queued, shut, drop the dead;
    /// until nothing moves.
    ///
    /// # Panics
    /// If the core never settles (1000 rounds), or a reading client meets a malformed frame.
    pub fn pump(&mut self) {
        for _ in 0..1000 {
            let mut moved = false;
            for c in 0..self.clients.len() {
                moved |= self.client_write(c);
                moved |= self.client_take(c);
                moved |= self.read_server(c);
                // Writable readiness: a blocked connection is flushed again.
                let key = self.clients[c].key;
                if self.clients[c].server.is_some() && self.core.pending_len(key) != 0 {
                    let before = self.core.pending_len(key);
                    self.flush(key);
                    moved |= self.core.pending_len(key) != before;
                }
            }
            let mut work = Vec::new();
            self.core.take_dirty(&mut work);
            for &k in &work {
                moved = true;
                self.flush(k as usize);
            }
            work.clear();
            self.core.take_shut(&mut work);
            for &k in &work {
                moved = true;
                if let Some(c) = self.client_index(k as usize) {
                    if let Some(s) = &self.clients[c].server {
                        let _ = s.shutdown(Shutdown::Write);
                    }
                }
            }
            work.clear();
            self.core.take_dead(&mut work);
            for &k in &work {
                moved = true;
                if let Some(c) = self.client_index(k as usize) {
                    self.clients[c].server = None; // closes the server end
                }
                self.core.remove(k as usize);
            }
            if !moved {
                return;
            }
        }
        panic!("the core never settled");
    }

    /// Reads the server end like epoll does; whether anything happened.
    fn read_server(&mut self, c: usize) -> bool {
        let key = self.clients[c].key;
        let mut moved = false;
        loop {
            if self.clients[c].hung || !self.core.wants_read(key) {
                return moved;
            }
            let Some(s) = self.clients[c].server.as_mut() else { return moved };
            match s.read(&mut self.rbuf) {
                Ok(n) if n > 0 => {
                    moved = true;
                    let mut data = self.rbuf[..n].to_vec();
                    self.core.on_data(key, &mut data);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return moved,
                _ => {
                    // EOF or an error: the peer is gone.
                    self.clients[c].hung = true;
                    self.core.on_hangup(key);
                    return true;
                }
            }
        }
    }

    fn flush(&mut self, key: usize) {
        let Some(c) = self.client_index(key) else { return };
        loop {
            let mut iov = [std::io::IoSlice::new(&[]); super::WRITE_SLICES];
            let n = self.core.pending(key, &mut iov);
            if n == 0 {
                return;
            }
            let Some(s) = self.clients[c].server.as_mut() else { return };
            match s.write_vectored(&iov[..n]) {
                Ok(n) => {
                    if self.core.on_written(key, n, false) {
                        self.read_server(c);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.core.on_written(key, 0, true);
                    return;
                }
                Err(_) => {
                    self.core.on_write_error(key);
                    return;
                }
            }
        }
    }

    /// Moves the fake clock on and runs what a loop turn runs: due timers, then a pump.
    pub fn advance(&mut self, d: Duration) {
        self.now += d;
        self.core.set_now(self.now);
        self.core.expire_timers();
        self.pump();
    }

    /// Connections the core holds (handshaking, open or closing).
    pub fn len(&self) -> usize {
        self.core.len()
    }

    /// Whether the core holds no connection.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of send queues and assembly reservations the core counts against its budget.
    pub fn memory_in_use(&self) -> usize {
        self.core.state.env.memory.used()
    }

    /// The core's count of bytes queued for sending (part of [`Pair::memory_in_use`]).
    pub fn queued_accounted(&self) -> usize {
        self.core.state.env.memory.queued
    }

    /// Whether the core would take another connection (a backend accepts only then).
    pub fn has_room(&self) -> bool {
        self.core.has_room()
    }

    /// Bytes queued for sending summed over every connection the core holds (what the
    /// accounting behind [`Pair::memory_in_use`] should agree with).
    pub fn queued_in_slots(&self) -> usize {
        self.core.state.conns.iter().map(|(_, s)| super::footprint_of(s)).sum()
    }

    /// What the core would publish as its worker's stats now.
    pub fn stats(&self) -> Stats {
        let ws = WorkerStats::default();
        self.core.publish_stats(&ws);
        ws.snapshot()
    }
}
