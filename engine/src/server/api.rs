//! The application-facing types: the [`Handler`] trait, the [`Conn`] view a handler acts
//! through, messages, send results and connection ids.

use std::any::Any;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::proto::handshake::Request;
use crate::proto::{CloseCode, OpCode};

use super::core::CoreState;
use super::handle::ServerHandle;

/// A message, borrowed for the duration of the callback. When the whole message arrived in one
/// read it points straight into the worker's read buffer (no copy was made).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message<'a> {
    /// A text message (valid UTF-8, checked).
    Text(&'a str),
    /// A binary message.
    Binary(&'a [u8]),
}

impl<'a> Message<'a> {
    /// The payload bytes.
    pub fn as_bytes(&self) -> &'a [u8] {
        match *self {
            Message::Text(t) => t.as_bytes(),
            Message::Binary(b) => b,
        }
    }

    pub(crate) fn opcode(&self) -> OpCode {
        match self {
            Message::Text(_) => OpCode::Text,
            Message::Binary(_) => OpCode::Binary,
        }
    }
}

impl<'a> From<&'a str> for Message<'a> {
    fn from(t: &'a str) -> Self {
        Message::Text(t)
    }
}

impl<'a> From<&'a String> for Message<'a> {
    fn from(t: &'a String) -> Self {
        Message::Text(t)
    }
}

impl<'a> From<&'a [u8]> for Message<'a> {
    fn from(b: &'a [u8]) -> Self {
        Message::Binary(b)
    }
}

impl<'a, const N: usize> From<&'a [u8; N]> for Message<'a> {
    fn from(b: &'a [u8; N]) -> Self {
        Message::Binary(b)
    }
}

impl<'a> From<&'a Vec<u8>> for Message<'a> {
    fn from(b: &'a Vec<u8>) -> Self {
        Message::Binary(b)
    }
}

/// Why a topic operation ([`Conn::subscribe`], a publish) was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TopicError {
    /// The topic name is longer than `Config::max_topic_len`.
    TooLong {
        /// The name's length in bytes.
        len: usize,
        /// The configured limit.
        max: usize,
    },
    /// The connection is closing or closed: it can no longer subscribe.
    Closed,
    /// The message is larger than one send takes (2 GiB).
    TooLarge,
}

impl fmt::Display for TopicError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TopicError::TooLong { len, max } => {
                write!(f, "topic name of {len} bytes is longer than max_topic_len ({max})")
            }
            TopicError::Closed => f.write_str("the connection is closing or closed"),
            TopicError::TooLarge => f.write_str("message larger than one send takes (2 GiB)"),
        }
    }
}

impl std::error::Error for TopicError {}

/// What became of a send, as uWebSockets' `send` reports it (SUCCESS / BACKPRESSURE /
/// DROPPED), plus the two cases a WebSocket library's `Result` would give as errors: the
/// connection is gone, or the message went to another thread.
///
/// Only `Sent` and `Backpressure` mean the message is queued; a producer that sends a lot
/// stops at `Backpressure` (or `Dropped`) and goes on in [`crate::Handler::on_drain`]:
///
/// ```
/// use sockeye::{Conn, Handler, Message, SendStatus};
///
/// /// Streams `left` chunks to every connection, never queueing more than the socket refuses.
/// struct Producer;
///
/// #[derive(Default)]
/// struct Left(u32);
///
/// fn pump(conn: &mut Conn<'_, Left>) {
///     let chunk = [0u8; 64 << 10];
///     while conn.data().0 > 0 {
///         match conn.send_binary(&chunk) {
///             SendStatus::Sent => conn.data_mut().0 -= 1,
///             // Queued, but the socket is full: on_drain calls pump again.
///             SendStatus::Backpressure => {
///                 conn.data_mut().0 -= 1;
///                 return;
///             }
///             // Not queued (the queue is over max_backpressure): retry it on drain.
///             SendStatus::Dropped => return,
///             SendStatus::Closed | SendStatus::Forwarded => return,
///         }
///     }
/// }
///
/// impl Handler for Producer {
///     type Data = Left;
///     fn on_open(&mut self, conn: &mut Conn<'_, Left>) {
///         conn.data_mut().0 = 1000;
///         pump(conn);
///     }
///     fn on_drain(&mut self, conn: &mut Conn<'_, Left>) {
///         pump(conn);
///     }
///     fn on_message(&mut self, _: &mut Conn<'_, Left>, _: Message<'_>) {}
/// }
/// ```
///
/// `examples/backpressure.rs` is the whole program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendStatus {
    /// Queued behind nothing the socket refused: it leaves with this loop turn's write (sends
    /// are corked: everything a callback sends goes out in one write per connection).
    Sent,
    /// Queued, behind bytes the socket has refused (backpressure): it goes once the peer
    /// reads. [`crate::Handler::on_drain`] follows when the queue is empty again.
    Backpressure,
    /// Not queued: it would take the connection's queue past `max_backpressure` (or the
    /// worker's memory budget). The connection stays open unless
    /// `close_on_backpressure_limit` is set.
    Dropped,
    /// Not queued: the connection is closing or closed (or the id names no connection).
    Closed,
    /// Handed to another worker: [`Ctx::send_text`] to a connection another worker holds
    /// copies the message into that worker's command channel (as [`ServerHandle::send_text`]
    /// does), and that worker sends it in its next loop turn. Whether it is sent, dropped or
    /// skipped there (the connection closed meanwhile) is not reported back. [`Conn`]'s sends
    /// never return it.
    Forwarded,
}

/// Identifies a connection across threads. Stale ids (the connection closed, its slot reused)
/// are detected by a generation number and ignored: each slot has its own 32-bit generation,
/// bumped whenever the slot is freed, and a slot whose generations are used up is never
/// reused, so an old id can never come to name another client.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnId {
    pub(crate) worker: u32,
    pub(crate) key: u32,
    pub(crate) gen: u32,
}

impl ConnId {
    /// The worker that holds the connection.
    pub fn worker(&self) -> usize {
        self.worker as usize
    }
    /// Packs the id into a u64, for hosts that want a number (the C ABI's `uint64_t` ids are
    /// these). Bits 63..52: the worker index (the builder keeps `workers` ≤ 4096); bits
    /// 51..32: the connection's slot in its worker (`max_connections` ≤ 2^20); bits 31..0: the
    /// slot's generation plus one, wrapping. The value 0 never names a connection (it would be
    /// the generation that retires a slot), so hosts may use it as "none".
    ///
    /// ```
    /// # use sockeye::ConnId;
    /// # let id = ConnId::from_u64(0x0010_0000_0000_0001);
    /// let n = id.to_u64();
    /// assert_eq!((n >> 52) as usize, id.worker());
    /// assert_eq!(ConnId::from_u64(n), id);
    /// ```
    pub fn to_u64(&self) -> u64 {
        (u64::from(self.worker & 0xfff) << 52)
            | (u64::from(self.key & 0xf_ffff) << 32)
            | u64::from(self.gen.wrapping_add(1))
    }
    /// Unpacks an id made by [`ConnId::to_u64`]; an id that names no open connection (0
    /// among them) is ignored wherever it is used.
    pub fn from_u64(v: u64) -> Self {
        ConnId {
            worker: (v >> 52) as u32,
            key: ((v >> 32) & 0xf_ffff) as u32,
            gen: (v as u32).wrapping_sub(1),
        }
    }
}

impl fmt::Debug for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConnId({}:{}:{})", self.worker, self.key, self.gen)
    }
}

/// A close code that may not be sent in a close frame (1005, 1006, 1015, below 1000, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidCloseCode(pub CloseCode);

impl fmt::Display for InvalidCloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "close code {} may not be sent (allowed: 1000-1003, 1007-1011, 3000-4999)",
            self.0
        )
    }
}

impl std::error::Error for InvalidCloseCode {}

/// The answer to an upgrade request, from [`Handler::on_upgrade`]: accept (with the
/// connection's user data, maybe a subprotocol and extra headers) or reject with an HTTP
/// status.
///
/// ```
/// use std::net::SocketAddr;
/// use sockeye::{Conn, Handler, Message, Request, Upgrade};
///
/// struct Api;
///
/// impl Handler for Api {
///     type Data = String; // the user, from the token
///
///     fn on_upgrade(&mut self, req: &Request<'_>, _peer: SocketAddr) -> Upgrade<String> {
///         if req.path() != "/api" {
///             return Upgrade::reject(404);
///         }
///         let Some(user) = req.query().and_then(|q| q.strip_prefix("token=")) else {
///             return Upgrade::reject(401);
///         };
///         // Confirm a subprotocol only if the client offered it (else the answer is 500).
///         if req.protocols().any(|p| p == "api.v1") {
///             Upgrade::accept(user.to_owned()).with_protocol("api.v1")
///         } else {
///             Upgrade::accept(user.to_owned())
///         }
///     }
///
///     fn on_message(&mut self, conn: &mut Conn<'_, String>, _msg: Message<'_>) {
///         let hello = format!("hello, {}", conn.data());
///         conn.send_text(&hello);
///     }
/// }
/// ```
///
/// `examples/rooms.rs` routes by path and query, picks among subprotocols and rejects with
/// 400, 403 and 404.
#[derive(Debug)]
pub enum Upgrade<D> {
    /// Accept the connection.
    Accept {
        /// A subprotocol the client offered, to confirm.
        protocol: Option<String>,
        /// Extra response headers.
        headers: Vec<(String, String)>,
        /// The connection's user data.
        data: D,
        /// Use permessage-deflate if it was negotiated (see `Request::permessage_deflate`);
        /// `false` accepts this connection uncompressed.
        compress: bool,
    },
    /// Refuse with this HTTP status.
    Reject(u16),
}

impl<D> Upgrade<D> {
    /// Accept with this user data, no subprotocol, no extra headers.
    pub fn accept(data: D) -> Self {
        Upgrade::Accept { protocol: None, headers: Vec::new(), data, compress: true }
    }
    /// Refuse with this HTTP status (403 Forbidden is the usual one).
    pub fn reject(status: u16) -> Self {
        Upgrade::Reject(status)
    }
    /// Accepts without permessage-deflate, whatever the client offered and the server
    /// enables: the 101 carries no `Sec-WebSocket-Extensions` (for a connection whose traffic
    /// does not compress, or to save the per-connection inflate window).
    pub fn without_compression(mut self) -> Self {
        if let Upgrade::Accept { compress, .. } = &mut self {
            *compress = false;
        }
        self
    }
    /// Confirms a subprotocol. It must be one the client offered: a subprotocol the client did
    /// not offer is a server bug, and the request is answered with 500 (and a warning logged)
    /// rather than with a response the client must fail.
    pub fn with_protocol(mut self, p: impl Into<String>) -> Self {
        if let Upgrade::Accept { protocol, .. } = &mut self {
            *protocol = Some(p.into());
        }
        self
    }
}

/// A plain HTTP response to a request that is not a WebSocket upgrade (see
/// [`Handler::on_http`]). The connection closes after it.
///
/// The engine writes the status line, `Connection: close`, `Content-Type` and
/// `Content-Length` itself; [`HttpResponse::with_header`] adds any other header.
///
/// ```
/// use sockeye::HttpResponse;
///
/// let page = HttpResponse::new(200, "text/html; charset=utf-8", "<h1>hi</h1>")
///     .with_header("Cache-Control", "no-store");
/// let moved = HttpResponse::new(301, "text/plain", "moved").with_header("Location", "/app/");
/// assert_eq!(moved.headers, [("Location".to_string(), "/app/".to_string())]);
/// # let _ = page;
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HttpResponse {
    /// The status code (anything outside 200..=599 is sent as 500).
    pub status: u16,
    /// The Content-Type header (left out when empty).
    pub content_type: String,
    /// Extra headers, sent after the engine's own. Skipped on the wire: a name that is not an
    /// HTTP token, a value holding CR, LF or NUL (no header injection), and the headers the
    /// engine owns: `Connection`, `Content-Type` (set [`HttpResponse::content_type`]),
    /// `Content-Length`, `Transfer-Encoding`, and `Allow` / `Upgrade` /
    /// `Sec-WebSocket-Version` on the 405 / 426 that carry them.
    pub headers: Vec<(String, String)>,
    /// The body (not sent for 204 and 304).
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// A response with this status, content type and body, and no extra headers.
    pub fn new(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Self {
        Self {
            status,
            content_type: content_type.to_owned(),
            headers: Vec::new(),
            body: body.into(),
        }
    }

    /// Adds a header (see [`HttpResponse::headers`] for those the engine leaves out).
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// A value posted to every worker with [`ServerHandle::post_all`].
pub type Post = Arc<dyn Any + Send + Sync>;

/// The application: one instance per worker thread, created on that thread by the factory given
/// to [`crate::ServerBuilder::handler`]. Callbacks run on the worker's thread and must not
/// block.
///
/// A connection's life, callback by callback: [`Handler::on_upgrade`] decides its handshake
/// (a plain HTTP GET goes to [`Handler::on_http`] instead); [`Handler::on_open`] once it is
/// open; then any number of [`Handler::on_message`], [`Handler::on_ping`],
/// [`Handler::on_pong`] and [`Handler::on_drain`]; and [`Handler::on_close`] exactly once.
/// [`Handler::on_post`] is the worker's, not a connection's: it receives what other threads
/// post through the [`ServerHandle`].
///
/// Only `on_message` must be written; every other callback has a default that does nothing
/// (and `on_upgrade` accepts every request with `Data::default()`). State shared by a
/// worker's connections lives in `self`, without locks; state of one connection lives in
/// its [`Handler::Data`], reached with [`Conn::data`] / [`Conn::data_mut`].
///
/// ```no_run
/// use std::collections::HashSet;
/// use std::net::SocketAddr;
/// use sockeye::{CloseCode, Conn, ConnId, Handler, Message, Request, Server, Upgrade};
///
/// /// One per worker: the connections it holds that want the news.
/// #[derive(Default)]
/// struct News {
///     readers: HashSet<ConnId>,
/// }
///
/// impl Handler for News {
///     type Data = (); // nothing per connection
///
///     fn on_upgrade(&mut self, req: &Request<'_>, _peer: SocketAddr) -> Upgrade<()> {
///         if req.path() == "/news" { Upgrade::accept(()) } else { Upgrade::reject(404) }
///     }
///
///     fn on_open(&mut self, conn: &mut Conn<'_, ()>) {
///         self.readers.insert(conn.id());
///         conn.send_text("welcome");
///     }
///
///     fn on_message(&mut self, conn: &mut Conn<'_, ()>, msg: Message<'_>) {
///         if let Message::Text("bye") = msg {
///             let _ = conn.close(CloseCode::NORMAL, "bye");
///         }
///     }
///
///     fn on_close(&mut self, conn: &mut Conn<'_, ()>, _code: CloseCode, _reason: &str) {
///         self.readers.remove(&conn.id());
///     }
/// }
///
/// fn main() -> Result<(), sockeye::Error> {
///     Server::builder().listen("127.0.0.1:9001").handler(News::default).build()?.run()
/// }
/// ```
///
/// The crate's front page lists the examples, from echo to rooms, pushes, backpressure and
/// shutdown.
pub trait Handler: 'static {
    /// Per-connection user data, set by [`Handler::on_upgrade`] ([`Upgrade::accept`]) and
    /// read in every later callback with [`Conn::data`] / [`Conn::data_mut`]; dropped when
    /// the connection is gone, after [`Handler::on_close`].
    ///
    /// Why `Default`: the worker holds a slot for a connection from the moment it is
    /// accepted, before `on_upgrade` has chosen its data, and keeps a retired slot as a
    /// tombstone; those slots hold `Data::default()`, which no callback ever sees. Data
    /// without a natural default can be wrapped in an `Option` (`None` never reaches a
    /// callback of an opened connection).
    type Data: Default + 'static;

    /// Decides about an upgrade request. The default accepts every request.
    fn on_upgrade(&mut self, req: &Request<'_>, peer: SocketAddr) -> Upgrade<Self::Data> {
        let _ = (req, peer);
        Upgrade::accept(Self::Data::default())
    }

    /// A well-formed HTTP GET that is not a WebSocket upgrade. Return a response to serve it
    /// (a status page, a client page), or `None` for the default 400 Bad Request.
    fn on_http(&mut self, req: &Request<'_>) -> Option<HttpResponse> {
        let _ = req;
        None
    }

    /// The connection is open (the 101 response is queued).
    fn on_open(&mut self, conn: &mut Conn<'_, Self::Data>) {
        let _ = conn;
    }

    /// A whole message arrived.
    fn on_message(&mut self, conn: &mut Conn<'_, Self::Data>, msg: Message<'_>);

    /// A ping arrived; the pong is already queued.
    fn on_ping(&mut self, conn: &mut Conn<'_, Self::Data>, payload: &[u8]) {
        let _ = (conn, payload);
    }

    /// A pong arrived.
    fn on_pong(&mut self, conn: &mut Conn<'_, Self::Data>, payload: &[u8]) {
        let _ = (conn, payload);
    }

    /// The connection's send queue, which had backpressure, is empty again.
    fn on_drain(&mut self, conn: &mut Conn<'_, Self::Data>) {
        let _ = conn;
    }

    /// The connection is closed: by a close frame (its code, or 1005 when it had none), a
    /// protocol error (the code we sent), or the socket dying, a close that timed out or a
    /// forced shutdown (1006). Sends fail (`SendStatus::Closed`) from here on. Called once per
    /// opened connection.
    ///
    /// A panic in any callback is caught: it is counted (`Stats::handler_panics`), the first
    /// one per worker is logged, and a connection whose callback panicked is closed with 1011;
    /// every other connection is served on.
    fn on_close(&mut self, conn: &mut Conn<'_, Self::Data>, code: CloseCode, reason: &str) {
        let _ = (conn, code, reason);
    }

    /// A value posted from any thread with [`ServerHandle::post_all`] or
    /// [`ServerHandle::post`].
    fn on_post(&mut self, ctx: &mut Ctx<'_, Self::Data>, post: &Post) {
        let _ = (ctx, post);
    }
}

/// A handler's view of one connection during a callback: send to it, close it, read and
/// change its user data, reach its worker ([`Conn::ctx`]) and the server ([`Conn::handle`]).
/// It lives as long as the callback; to reach the connection later or from another thread,
/// keep its [`Conn::id`].
///
/// ```
/// use sockeye::{CloseCode, Conn, Handler, Message, SendStatus};
///
/// struct Guarded;
///
/// impl Handler for Guarded {
///     type Data = u32; // messages so far
///
///     fn on_message(&mut self, conn: &mut Conn<'_, u32>, msg: Message<'_>) {
///         *conn.data_mut() += 1;
///         if *conn.data() > 1000 {
///             // Refused only for a code that may not go on the wire (1005, 1006, ...).
///             let _ = conn.close(CloseCode::POLICY, "too chatty");
///             return;
///         }
///         if conn.send(msg) == SendStatus::Dropped {
///             // Over max_backpressure: this peer does not read what it is sent.
///             let _ = conn.close(CloseCode::POLICY, "read your messages");
///         }
///         log_peer(conn);
///     }
/// }
///
/// fn log_peer(conn: &Conn<'_, u32>) {
///     let _ = (conn.id(), conn.peer_addr(), conn.buffered_amount());
/// }
/// ```
pub struct Conn<'a, D> {
    pub(crate) core: &'a mut CoreState<D>,
    pub(crate) key: usize,
}

impl<D> fmt::Debug for Conn<'_, D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Conn").field("id", &self.id()).finish()
    }
}

impl<D> Conn<'_, D> {
    /// This connection's id, valid from any thread through [`ServerHandle`].
    pub fn id(&self) -> ConnId {
        self.core.id_of(self.key)
    }
    /// Sends a text message (corked: it leaves with this loop turn's write).
    pub fn send_text(&mut self, text: &str) -> SendStatus {
        self.core.send(self.key, crate::proto::OpCode::Text, text.as_bytes())
    }
    /// Sends a binary message.
    pub fn send_binary(&mut self, data: &[u8]) -> SendStatus {
        self.core.send(self.key, crate::proto::OpCode::Binary, data)
    }
    /// Sends a message of the same kind.
    pub fn send(&mut self, msg: Message<'_>) -> SendStatus {
        match msg {
            Message::Text(t) => self.send_text(t),
            Message::Binary(b) => self.send_binary(b),
        }
    }
    /// Sends a ping (payload cut to 125 bytes). Control frames are never dropped.
    pub fn ping(&mut self, payload: &[u8]) -> SendStatus {
        self.core.send(self.key, crate::proto::OpCode::Ping, payload)
    }
    /// Starts the close handshake with this code and reason (cut to 123 bytes at a character
    /// boundary). `code` must be one that may go on the wire (1000-1003, 1007-1011,
    /// 3000-4999); 1005, 1006, 1015, codes below 1000 and the rest are refused with
    /// [`InvalidCloseCode`] and nothing is sent — the same rule as `sockeye_conn_close` in C.
    pub fn close(&mut self, code: CloseCode, reason: &str) -> Result<(), InvalidCloseCode> {
        if !code.is_valid_on_wire() {
            return Err(InvalidCloseCode(code));
        }
        self.core.close(self.key, code, reason);
        Ok(())
    }
    /// Bytes queued for this connection and not yet taken by the socket.
    pub fn buffered_amount(&self) -> usize {
        self.core.buffered_amount(self.key)
    }
    /// The peer's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.core.peer_addr(self.key)
    }
    /// The permessage-deflate parameters in force on this connection (`None`: uncompressed).
    pub fn permessage_deflate(&self) -> Option<crate::proto::PerMessageDeflate> {
        self.core.permessage_deflate(self.key)
    }
    /// The user data set at upgrade ([`Upgrade::accept`]), shared: other `&self` methods
    /// ([`Conn::handle`], [`Conn::id`], [`Conn::peer_addr`]) may be called while it is
    /// borrowed.
    ///
    /// ```
    /// use sockeye::{Conn, Handler, Message};
    ///
    /// #[derive(Default)]
    /// enum Role {
    ///     #[default]
    ///     Reader,
    ///     Writer,
    /// }
    ///
    /// struct App;
    /// impl Handler for App {
    ///     type Data = Role;
    ///     fn on_message(&mut self, conn: &mut Conn<'_, Role>, msg: Message<'_>) {
    ///         match conn.data() {
    ///             // `data()` borrows `conn` shared, so `handle()` is still at hand.
    ///             Role::Writer => {
    ///                 conn.handle().post_all(std::sync::Arc::new(msg.as_bytes().to_vec()));
    ///             }
    ///             Role::Reader => {}
    ///         }
    ///     }
    /// }
    /// ```
    pub fn data(&self) -> &D {
        self.core.data(self.key)
    }
    /// The user data set at upgrade, to change it.
    ///
    /// ```
    /// use sockeye::{Conn, Handler, Message};
    ///
    /// struct Counter;
    /// impl Handler for Counter {
    ///     type Data = u64; // messages seen on this connection
    ///     fn on_message(&mut self, conn: &mut Conn<'_, u64>, _msg: Message<'_>) {
    ///         *conn.data_mut() += 1;
    ///         let n = *conn.data();
    ///         conn.send_text(&format!("message {n}"));
    ///     }
    /// }
    /// ```
    pub fn data_mut(&mut self) -> &mut D {
        self.core.data_mut(self.key)
    }
    /// A handle to the server, for cross-thread work.
    pub fn handle(&self) -> &ServerHandle {
        &self.core.handle
    }
    /// Subscribes this connection to `topic` (any bytes up to `Config::max_topic_len`).
    /// Returns `Ok(false)` if it already was. Subscriptions end with the connection (right
    /// after `on_close`).
    pub fn subscribe(&mut self, topic: impl AsRef<[u8]>) -> Result<bool, TopicError> {
        self.core.subscribe(self.key, topic.as_ref())
    }
    /// Unsubscribes this connection from `topic`; returns false if it was not subscribed.
    pub fn unsubscribe(&mut self, topic: impl AsRef<[u8]>) -> bool {
        self.core.unsubscribe(self.key, topic.as_ref())
    }
    /// Whether this connection is subscribed to `topic`.
    pub fn is_subscribed(&self, topic: impl AsRef<[u8]>) -> bool {
        self.core.is_subscribed(self.key, topic.as_ref())
    }
    /// The topics this connection is subscribed to, in no particular order.
    pub fn topics(&self) -> impl Iterator<Item = &[u8]> {
        self.core.topics_of(self.key)
    }
    /// Publishes a message to every subscriber of `topic` on every worker, except this
    /// connection (as uWebSockets' and Bun's `ws.publish`); see
    /// [`Conn::publish_including_self`]. The frame is built once per worker and every
    /// subscriber's queue holds a reference to it (a frame of at most 128 bytes is copied
    /// into the queue instead, which costs less than the reference); what a subscriber is
    /// sent in one loop turn leaves in one write. A subscriber over `max_backpressure` loses
    /// the message (or is closed with 1008, see `Config::close_on_backpressure_limit`): it
    /// never slows the others. Messages from one connection to one topic reach every
    /// subscriber in order.
    pub fn publish<'m>(
        &mut self,
        topic: impl AsRef<[u8]>,
        msg: impl Into<Message<'m>>,
    ) -> Result<(), TopicError> {
        self.core.publish(topic.as_ref(), msg.into(), Some(self.key))
    }
    /// Publishes a message to every subscriber of `topic`, this connection included if it is
    /// one.
    pub fn publish_including_self<'m>(
        &mut self,
        topic: impl AsRef<[u8]>,
        msg: impl Into<Message<'m>>,
    ) -> Result<(), TopicError> {
        self.core.publish(topic.as_ref(), msg.into(), None)
    }
    /// Subscribers of `topic` on this worker (exact); [`ServerHandle::subscriber_count`]
    /// sums all workers.
    pub fn subscriber_count(&self, topic: impl AsRef<[u8]>) -> usize {
        self.core.topics.subscribers(topic.as_ref()).len()
    }
    /// The whole worker, to reach other connections it holds.
    pub fn ctx(&mut self) -> Ctx<'_, D> {
        Ctx { core: self.core }
    }
}

/// A handler's view of its worker: its connections by id, and the server handle. A
/// [`Handler::on_post`] gets one; any other callback gets one from [`Conn::ctx`].
///
/// Sends by id reach connections of any worker: one this worker holds is queued at once, one
/// another worker holds is forwarded to it ([`SendStatus::Forwarded`]).
///
/// ```
/// use std::collections::HashSet;
/// use sockeye::{Conn, ConnId, Ctx, Handler, Message, Post};
///
/// /// An alert posted to every worker with `ServerHandle::post_all`.
/// struct Alert(String);
///
/// #[derive(Default)]
/// struct Alerts {
///     watchers: HashSet<ConnId>, // this worker's
/// }
///
/// impl Handler for Alerts {
///     type Data = ();
///     fn on_open(&mut self, conn: &mut Conn<'_, ()>) {
///         self.watchers.insert(conn.id());
///     }
///     fn on_message(&mut self, _: &mut Conn<'_, ()>, _: Message<'_>) {}
///     fn on_post(&mut self, ctx: &mut Ctx<'_, ()>, post: &Post) {
///         let Some(Alert(text)) = post.downcast_ref::<Alert>() else { return };
///         // Each worker sends to the connections it holds: no copy crosses threads.
///         self.watchers.retain(|&id| ctx.conn(id).is_some()); // drop the closed ones
///         for &id in &self.watchers {
///             ctx.send_text(id, text);
///         }
///     }
/// }
/// ```
pub struct Ctx<'a, D> {
    pub(crate) core: &'a mut CoreState<D>,
}

impl<D> fmt::Debug for Ctx<'_, D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ctx").field("worker", &self.core.worker).finish()
    }
}

impl<D> Ctx<'_, D> {
    /// This worker's index.
    pub fn worker(&self) -> usize {
        self.core.worker as usize
    }
    /// A connection of this worker, if `id` is one and it is still open.
    pub fn conn(&mut self, id: ConnId) -> Option<Conn<'_, D>> {
        let key = self.core.key_of(id)?;
        Some(Conn { core: self.core, key })
    }
    /// Sends a text message to the connection `id`, wherever it is. On this worker it is
    /// queued at once, as [`Conn::send_text`] would (`Sent`, `Backpressure`, `Dropped`, or
    /// `Closed` when `id` names no open connection). On another worker it is copied and handed
    /// to that worker, as [`ServerHandle::send_text`] does, and sent in its next loop turn:
    /// the answer is then [`SendStatus::Forwarded`] (what becomes of it there is not reported
    /// back), or `Closed` if `id` names no worker of this server.
    pub fn send_text(&mut self, id: ConnId, text: &str) -> SendStatus {
        self.send(id, Message::Text(text))
    }
    /// Sends a binary message to the connection `id`, wherever it is (see
    /// [`Ctx::send_text`]).
    pub fn send_binary(&mut self, id: ConnId, data: &[u8]) -> SendStatus {
        self.send(id, Message::Binary(data))
    }
    /// Sends a message of the same kind to the connection `id`, wherever it is (see
    /// [`Ctx::send_text`]).
    pub fn send(&mut self, id: ConnId, msg: Message<'_>) -> SendStatus {
        if id.worker != self.core.worker {
            let handed = match msg {
                Message::Text(t) => self.core.handle.send_text(id, t),
                Message::Binary(b) => self.core.handle.send_binary(id, b),
            };
            return if handed { SendStatus::Forwarded } else { SendStatus::Closed };
        }
        self.conn(id).map_or(SendStatus::Closed, |mut c| c.send(msg))
    }
    /// A handle to the server.
    pub fn handle(&self) -> &ServerHandle {
        &self.core.handle
    }
    /// Connections this worker holds: handshaking, open and closing ones.
    pub fn connection_count(&self) -> usize {
        self.core.connection_count()
    }
    /// Publishes a message to every subscriber of `topic` on every worker (see
    /// [`Conn::publish`]).
    pub fn publish<'m>(
        &mut self,
        topic: impl AsRef<[u8]>,
        msg: impl Into<Message<'m>>,
    ) -> Result<(), TopicError> {
        self.core.publish(topic.as_ref(), msg.into(), None)
    }
    /// Subscribers of `topic` on this worker (exact); [`ServerHandle::subscriber_count`]
    /// sums all workers.
    pub fn subscriber_count(&self, topic: impl AsRef<[u8]>) -> usize {
        self.core.topics.subscribers(topic.as_ref()).len()
    }
}
