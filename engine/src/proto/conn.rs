//! The per-connection protocol state machine: Handshake → Open → Closing → Closed.
//!
//! A [`Connection`] is fed the bytes that arrived and answers with events (a message, a ping, a
//! close) and with bytes to send, which it appends to a buffer the caller owns (the handshake
//! response, auto-pongs, the close echo, frames the application sends). It never performs I/O and
//! never reads a clock: time enters as an argument. The caller (the engine, a test, a fuzz
//! target) decides when bytes move.
//!
//! Zero copy: [`Connection::read`] unmasks payload in place in the caller's buffer. A message
//! that lies whole in that buffer comes back borrowed from it; only a message spread over several
//! reads or fragments is copied, into an assembly buffer taken from a [`BufPool`] and handed over
//! as an owned value the caller may give back to the pool.
//!
//! permessage-deflate (RFC 7692), when the handshake negotiated it ([`Connection::deflate`]):
//! a message with RSV1 on its first frame is inflated as its bytes arrive, into an owned buffer
//! that never grows past `max_message_size` (the limit applies to the inflated size), and
//! handed over like an assembled message; [`Connection::send_message`] compresses what the
//! application sends. The per-connection state sits behind one pointer, so a connection
//! without compression pays 8 bytes for it; the contexts are [`super::deflate`]'s.
//!
//! What this module never does: allocate per message on the fast path, grow a buffer past the
//! configured limits, or decide on its own which close code an error gets (see [`super::error`]).

use std::borrow::Cow;
use std::time::{Duration, Instant};

use super::close::{self, CloseCode};
use super::deflate::{self, Contexts, DeflateState, TAIL};
use super::error::ProtocolError;
use super::extensions::{self, DeflateConfig, PerMessageDeflate};
use super::frame::{self, FrameHeader, OpCode, MAX_HEADER_LEN};
use super::handshake::{self, HandshakeError, Parsed, Request};
use super::mask::unmask;
use super::utf8::{self, Utf8Validator};

/// Which end of the connection this state machine plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Accepts handshakes, expects masked frames, sends unmasked ones.
    Server,
    /// Expects unmasked frames, masks what it sends. The handshake is the caller's business.
    Client,
}

/// Limits a connection enforces. Every one is configurable (the server builder's setter of the
/// same name, or the server `Config`'s `limits` whole); the defaults, which each field states,
/// are sane for a server on the open internet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest single frame payload accepted (close 1009 above it). Default 16 MiB.
    pub max_frame_size: u64,
    /// Largest message accepted, summed over its fragments (close 1009 above it). Default
    /// 16 MiB.
    pub max_message_size: u64,
    /// Most fragments one message may have (close 1009 above it). Default 131072 (2^17).
    pub max_fragments: u32,
    /// Largest handshake request head, in bytes (HTTP 431 above it). Default 8192
    /// ([`handshake::DEFAULT_MAX_HEAD`]).
    pub max_handshake_bytes: usize,
    /// Time a client has to complete its handshake request. Default 10 s.
    pub handshake_timeout: Duration,
    /// Time the peer has to answer our close frame before the connection is dropped. Default
    /// 5 s.
    pub close_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_frame_size: 16 << 20,
            max_message_size: 16 << 20,
            max_fragments: 1 << 17,
            max_handshake_bytes: handshake::DEFAULT_MAX_HEAD,
            handshake_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(5),
        }
    }
}

/// Where the connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Waiting for (the rest of) the HTTP Upgrade request.
    Handshake,
    /// Messages flow both ways.
    Open,
    /// We sent a close frame and wait for the peer's.
    Closing,
    /// Done: the caller flushes what was written and closes the socket.
    Closed,
}

/// What the application decided about an upgrade request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Accept, optionally naming one of the offered subprotocols and adding response headers.
    Accept {
        /// The chosen subprotocol; it must be one the client offered.
        protocol: Option<String>,
        /// Extra response headers (names and values must not contain CR or LF).
        headers: Vec<(String, String)>,
    },
    /// Refuse with this HTTP status (403 unless there is a better one).
    Reject {
        /// The HTTP status code.
        status: u16,
    },
    /// Answer a plain HTTP request (not an upgrade) with this response, then close.
    Respond {
        /// The HTTP status code.
        status: u16,
        /// The Content-Type header.
        content_type: String,
        /// Extra response headers, after the engine's own (filtered as by
        /// [`handshake::write_response_with`]).
        headers: Vec<(String, String)>,
        /// The body.
        body: Vec<u8>,
    },
}

impl Decision {
    /// Accept with no subprotocol and no extra headers.
    pub fn accept() -> Self {
        Decision::Accept { protocol: None, headers: Vec::new() }
    }
}

/// What the decision hook of [`Connection::handshake_negotiate`] is told besides the request,
/// and the one thing it may change: it may refuse compression, never pick other parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiation {
    upgrade: bool,
    deflate: Option<PerMessageDeflate>,
}

impl Negotiation {
    /// Whether the request is a valid WebSocket upgrade (`false`: a well-formed plain HTTP
    /// GET, which the hook may answer with [`Decision::Respond`]).
    pub fn is_upgrade(&self) -> bool {
        self.upgrade
    }

    /// The permessage-deflate parameters the 101 will carry, if the client offered
    /// something acceptable and [`Env::deflate`] enables it.
    pub fn deflate(&self) -> Option<PerMessageDeflate> {
        self.deflate
    }

    /// Accept without compression: the 101 carries no `Sec-WebSocket-Extensions`.
    pub fn decline_deflate(&mut self) {
        self.deflate = None;
    }
}

/// Progress of the handshake after [`Connection::handshake`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeStatus {
    /// The request is not complete: every input byte was kept, call again with more.
    Partial,
    /// The request was accepted and the 101 response written; the connection is Open.
    /// `consumed` input bytes were the request; what follows them is frame data.
    Accepted {
        /// Bytes of the input that belonged to the request.
        consumed: usize,
    },
    /// The decision hook refused; the response was written and the connection is Closed.
    Rejected {
        /// The HTTP status sent.
        status: u16,
    },
    /// A plain HTTP request was answered; the connection is Closed.
    Responded,
}

/// A control frame's payload, at most 125 bytes, held by value.
#[derive(Clone, Copy)]
pub struct ControlPayload {
    len: u8,
    bytes: [u8; 125],
}

impl ControlPayload {
    fn new(data: &[u8]) -> Self {
        let mut bytes = [0u8; 125];
        let len = data.len().min(125);
        bytes[..len].copy_from_slice(&data[..len]);
        Self { len: len as u8, bytes }
    }
    /// The payload bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }
}

impl std::fmt::Debug for ControlPayload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ControlPayload({:?})", self.as_bytes())
    }
}

/// Something the peer did.
#[derive(Debug)]
pub enum Event<'b> {
    /// A whole text message, valid UTF-8.
    Text(Cow<'b, str>),
    /// A whole binary message.
    Binary(Cow<'b, [u8]>),
    /// A ping; the pong is already written (unless we are closing).
    Ping(ControlPayload),
    /// A pong.
    Pong(ControlPayload),
    /// The peer's close frame. `code` is `None` when the frame had no status (1005). If the peer
    /// started the close, the echo is already written. The connection is now Closed.
    Close {
        /// The status code the peer sent, if any.
        code: Option<CloseCode>,
        /// The reason text (at most 123 bytes).
        reason: ControlPayload,
    },
}

/// Result of one [`Connection::read`] call.
#[derive(Debug)]
pub struct Read<'b> {
    /// Input bytes used up. When `event` is `None` this is the whole input.
    pub consumed: usize,
    /// The event the consumed bytes completed, if any.
    pub event: Option<Event<'b>>,
}

/// A send was refused because the connection no longer sends data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendAfterClose;

/// A small pool of assembly buffers, owned by whoever drives many connections (a worker), so a
/// connection with no message in flight owns no buffer.
#[derive(Debug)]
pub struct BufPool {
    bufs: Vec<Vec<u8>>,
    max_bufs: usize,
    max_keep: usize,
}

impl BufPool {
    /// A pool keeping at most `max_bufs` buffers of at most `max_keep` bytes capacity each.
    pub fn new(max_bufs: usize, max_keep: usize) -> Self {
        Self { bufs: Vec::new(), max_bufs, max_keep }
    }
    /// An empty buffer, reused when one is pooled.
    pub fn get(&mut self) -> Vec<u8> {
        self.bufs.pop().unwrap_or_default()
    }
    /// Gives a buffer back; oversized ones and those over the count are freed.
    pub fn put(&mut self, mut buf: Vec<u8>) {
        if buf.capacity() == 0 || buf.capacity() > self.max_keep || self.bufs.len() >= self.max_bufs
        {
            return;
        }
        buf.clear();
        self.bufs.push(buf);
    }
    /// Buffers currently pooled.
    pub fn len(&self) -> usize {
        self.bufs.len()
    }
    /// Whether the pool holds no buffer.
    pub fn is_empty(&self) -> bool {
        self.bufs.is_empty()
    }
}

impl Default for BufPool {
    fn default() -> Self {
        Self::new(64, 1 << 20)
    }
}

/// Memory that many connections driven by one owner hold together, against one budget.
///
/// A connection reserves a message's announced length when the message has to be assembled
/// (it did not arrive whole in one read, or it is fragmented) and gives the reservation back
/// when the message completes, fails or the connection is released; a message that would take
/// `assembly + queued` past `limit` is refused with [`ProtocolError::OverBudget`] before a
/// byte of it is stored. `queued` is the owner's to keep (send queues, which this module
/// never sees); it counts against the same limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Memory {
    /// The budget, in bytes.
    pub limit: usize,
    /// Bytes reserved for messages being assembled.
    pub assembly: usize,
    /// Bytes the owner has queued for sending.
    pub queued: usize,
}

impl Memory {
    /// A budget of `limit` bytes, none used.
    pub fn new(limit: usize) -> Self {
        Self { limit, assembly: 0, queued: 0 }
    }
    /// Bytes held now.
    pub fn used(&self) -> usize {
        self.assembly.saturating_add(self.queued)
    }
    /// Whether `n` more bytes fit.
    pub fn fits(&self, n: u64) -> bool {
        (self.used() as u64).saturating_add(n) <= self.limit as u64
    }
}

impl Default for Memory {
    fn default() -> Self {
        Self::new(usize::MAX)
    }
}

/// What many connections driven by one owner share: the limits, the buffer pool, the
/// memory budget and the permessage-deflate preferences and shared contexts. Keeping them out
/// of [`Connection`] keeps an idle connection small.
#[derive(Debug, Default)]
pub struct Env {
    /// The limits every connection enforces.
    pub limits: Limits,
    /// Assembly buffers lent to connections with a message in flight.
    pub pool: BufPool,
    /// Memory held by all the connections together, and its budget (unlimited by default).
    pub memory: Memory,
    /// permessage-deflate preferences (disabled by default): what
    /// [`Connection::handshake`] negotiates, the compression level and the smallest message
    /// compressed.
    pub deflate: DeflateConfig,
    /// Compression contexts shared by this owner's connections (made when first needed).
    pub contexts: Contexts,
}

impl Env {
    /// An environment with these limits, a default pool, no memory budget and no compression.
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            pool: BufPool::default(),
            memory: Memory::default(),
            deflate: DeflateConfig::default(),
            contexts: Contexts::default(),
        }
    }
}

/// The frame whose payload is being read, unpacked from [`Connection`]'s compact fields.
#[derive(Debug, Clone, Copy)]
struct Current {
    op: OpCode,
    fin: bool,
    /// The payload is masked with [`Connection::key`].
    masked: bool,
    remaining: u64,
}

/// The data message being assembled.
#[derive(Debug, Clone, Copy)]
struct Message {
    text: bool,
    /// RSV1 on its first frame: its payload is deflate data, inflated into the assembly
    /// buffer as it arrives.
    compressed: bool,
    /// Bytes on the wire so far.
    len: u64,
    fragments: u32,
}

/// The state only a connection that is doing something slow needs: the handshake, a message
/// spread over reads or fragments, a control frame split across reads, the close handshake.
/// It sits behind one pointer that is `None` on an idle connection, so the connections that
/// are merely open (most of them) pay 8 bytes for all of it. It is made when first needed and
/// freed by [`Connection::trim`] once nothing in it is live.
#[derive(Debug, Default)]
struct Cold {
    msg: Option<Message>,
    /// Only live while `msg` is: reset when a message starts.
    utf8: Utf8Validator,
    /// Message bytes carried between reads or fragments, or, during the handshake, the
    /// request head carried between reads; empty (no allocation) otherwise.
    assembly: Vec<u8>,
    /// A control frame's payload carried between reads; empty when nothing is carried.
    ctrl: Vec<u8>,
    /// Handshake deadline, close-handshake deadline.
    deadline: Option<Instant>,
}

impl Cold {
    /// Whether nothing here is live, so dropping it loses nothing (`utf8` is reset at the start
    /// of every message).
    fn is_idle(&self) -> bool {
        self.msg.is_none()
            && self.assembly.capacity() == 0
            && self.ctrl.capacity() == 0
            && self.deadline.is_none()
    }

    /// Gives a finished (or abandoned) message's reservation back to the budget, and its
    /// inflater back to the worker where it was lent.
    fn end_message(
        &mut self,
        msg: Option<Message>,
        deflate: Option<&mut DeflateState>,
        env: &mut Env,
    ) {
        match msg {
            Some(m) if m.compressed => {
                if let Some(d) = deflate {
                    d.end_message(env.deflate.memory, &mut env.contexts, &mut env.memory);
                }
            }
            Some(m) => {
                env.memory.assembly = env.memory.assembly.saturating_sub(m.len as usize);
            }
            None => {}
        }
    }

    /// Inflates the next piece of a compressed message into the assembly buffer, checking
    /// what it inflates to as UTF-8 when it is text.
    fn inflate_chunk(
        &mut self,
        input: &[u8],
        text: bool,
        deflate: Option<&mut DeflateState>,
        env: &mut Env,
    ) -> Result<(), ProtocolError> {
        let Some(d) = deflate else {
            return Err(ProtocolError::ReservedBitsSet);
        };
        let before = self.assembly.len();
        d.inflate(input, &mut self.assembly, env.limits.max_message_size, &mut env.memory)?;
        if text {
            self.utf8.feed(&self.assembly[before..]).map_err(|_| ProtocolError::InvalidUtf8)?;
        }
        Ok(())
    }
}

/// [`Connection::flags`]: the client role (else server).
const CLIENT: u8 = 1;
/// [`Connection::flags`]: we sent a close frame.
const SENT_CLOSE: u8 = 2;

/// [`Connection::frame`]: a frame's payload is being read (the byte is 0 otherwise).
const FRAME_ACTIVE: u8 = 0x80;
/// [`Connection::frame`]: the frame has FIN set.
const FRAME_FIN: u8 = 0x40;
/// [`Connection::frame`]: the frame is masked with [`Connection::key`].
const FRAME_MASKED: u8 = 0x20;

/// One WebSocket connection's protocol state. See the module docs.
///
/// What every read of an open connection touches is packed here, in 40 bytes: this struct is
/// most of what an idle connection costs. The rest (a message spread over reads or fragments,
/// the handshake, the close handshake) is allocated only while needed, and a whole frame
/// arriving in one read never needs it.
#[derive(Debug)]
pub struct Connection {
    cold: Option<Box<Cold>>,
    /// permessage-deflate, when negotiated. Kept out of [`Cold`]: it lives as long as the
    /// connection, and an idle compressed connection then holds it alone (a browser offers
    /// compression by default, so a server that enables it has many such connections).
    deflate: Option<Box<DeflateState>>,
    /// Two uses that are never live together. Between frames: a partial frame header carried
    /// between reads, `hdr_len` bytes of it. While a frame's payload is read (`frame` != 0):
    /// the payload bytes still to come, a little-endian `u64` in the first 8 bytes (a 64-bit
    /// length is legal); see [`Connection::cur`].
    hdr: [u8; MAX_HEADER_LEN],
    /// Server: the masking key of the current frame. Client: the state of the masking-key
    /// generator, free to keep here because a client never reads a masked frame.
    key: [u8; 4],
    hdr_len: u8,
    /// Mask phase of the current frame: payload bytes already unmasked, mod 4.
    phase: u8,
    state: State,
    /// [`CLIENT`], [`SENT_CLOSE`].
    flags: u8,
    /// The current frame: 0 when none, else [`FRAME_ACTIVE`] | [`FRAME_FIN`] |
    /// [`FRAME_MASKED`] | the opcode in the low nibble (with `remaining`: a [`Current`]).
    frame: u8,
}

impl Connection {
    /// A server connection waiting for its handshake, which must complete before
    /// `now + limits.handshake_timeout`.
    pub fn new_server(now: Instant, limits: &Limits) -> Self {
        let mut c = Self::new(Role::Server, State::Handshake, 0);
        c.cold_mut().deadline = Some(now + limits.handshake_timeout);
        c
    }

    /// A connection already past its handshake (for a client, or a server whose handshake was
    /// done elsewhere). `seed` feeds the client's masking keys; a server ignores it.
    pub fn new_open(role: Role, seed: u64) -> Self {
        Self::new(role, State::Open, seed)
    }

    fn new(role: Role, state: State, seed: u64) -> Self {
        let (flags, key) = match role {
            Role::Server => (0, [0; 4]),
            // xorshift32 must not start at 0.
            Role::Client => (CLIENT, ((seed as u32) | 1).to_le_bytes()),
        };
        Self {
            cold: None,
            deflate: None,
            hdr: [0; MAX_HEADER_LEN],
            key,
            hdr_len: 0,
            phase: 0,
            state,
            flags,
            frame: 0,
        }
    }

    /// The cold state, made when first needed.
    fn cold_mut(&mut self) -> &mut Cold {
        self.cold.get_or_insert_with(Box::default)
    }

    /// Frees the cold state once nothing in it is live, so an idle connection holds no
    /// allocation.
    fn trim(&mut self) {
        if self.cold.as_deref().is_some_and(Cold::is_idle) {
            self.cold = None;
        }
    }

    fn msg(&self) -> Option<Message> {
        self.cold.as_ref().and_then(|c| c.msg)
    }

    fn clear_deadline(&mut self) {
        if let Some(c) = self.cold.as_deref_mut() {
            c.deadline = None;
        }
    }

    fn sent_close(&self) -> bool {
        self.flags & SENT_CLOSE != 0
    }

    fn cur(&self) -> Option<Current> {
        let f = self.frame;
        if f & FRAME_ACTIVE == 0 {
            return None;
        }
        let op = match f & 0xf {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            _ => OpCode::Pong,
        };
        Some(Current {
            op,
            fin: f & FRAME_FIN != 0,
            masked: f & FRAME_MASKED != 0,
            remaining: self.remaining(),
        })
    }

    /// The current frame's payload bytes still to come (meaningless without one).
    fn remaining(&self) -> u64 {
        let [a, b, c, d, e, f, g, h, ..] = self.hdr;
        u64::from_le_bytes([a, b, c, d, e, f, g, h])
    }

    /// Only while a frame is current: `hdr` carries no header then.
    fn set_remaining(&mut self, n: u64) {
        self.hdr[..8].copy_from_slice(&n.to_le_bytes());
    }

    fn set_cur(&mut self, c: Current) {
        let fin = if c.fin { FRAME_FIN } else { 0 };
        let masked = if c.masked { FRAME_MASKED } else { 0 };
        self.frame = FRAME_ACTIVE | fin | masked | c.op as u8;
        self.set_remaining(c.remaining);
    }

    /// Whether the connection holds its cold state now (an idle one does not).
    #[cfg(test)]
    pub(crate) fn holds_cold(&self) -> bool {
        self.cold.is_some()
    }

    /// Where the connection is in its life.
    pub fn state(&self) -> State {
        self.state
    }

    /// This side's role.
    pub fn role(&self) -> Role {
        if self.flags & CLIENT != 0 {
            Role::Client
        } else {
            Role::Server
        }
    }

    /// Whether data may still be sent (Open; not after our close frame).
    pub fn can_send(&self) -> bool {
        self.state == State::Open && !self.sent_close()
    }

    /// The permessage-deflate parameters in force, if compression was negotiated.
    pub fn deflate(&self) -> Option<PerMessageDeflate> {
        self.deflate.as_ref().map(|d| d.params())
    }

    /// Turns permessage-deflate on (or off, with `None`) for a connection whose handshake was
    /// done elsewhere: a client, a test, a server that negotiated by itself. Call it before
    /// the first frame is read or sent: contexts already held are dropped, not given back.
    pub fn set_deflate(&mut self, params: Option<PerMessageDeflate>) {
        self.deflate = params.map(|p| Box::new(DeflateState::new(p, self.role())));
    }

    /// `Some(bits)` when this connection takes, as they are, frames compressed by the shared
    /// compressor for `bits` ([`Contexts::write_shared_frame`]): it negotiated compression
    /// without server context takeover. A fan-out compresses a message once per distinct
    /// value among its subscribers. `None`: send it through [`Connection::send_message`].
    pub fn shared_send_bits(&self) -> Option<u8> {
        self.deflate.as_ref().and_then(|d| d.shared_send_bits())
    }

    /// Whether the connection holds a compressor and an inflater right now (an idle
    /// connection without context takeover holds neither).
    pub fn holds_deflate_contexts(&self) -> (bool, bool) {
        self.deflate.as_ref().map_or((false, false), |d| d.holds_contexts())
    }

    /// The next instant [`Connection::handle_timeout`] wants to be called at, if any.
    pub fn deadline(&self) -> Option<Instant> {
        self.cold.as_ref().and_then(|c| c.deadline)
    }

    /// Checks the handshake and close-handshake deadlines. Returns `true` when one has passed:
    /// the connection is then Closed and the caller drops the socket.
    pub fn handle_timeout(&mut self, now: Instant) -> bool {
        match self.deadline() {
            Some(d) if now >= d && self.state != State::Closed => {
                self.state = State::Closed;
                let c = self.cold_mut();
                c.deadline = None;
                c.assembly = Vec::new();
                self.trim();
                true
            }
            _ => false,
        }
    }

    /// Feeds handshake bytes. While `Partial`, every byte is kept inside the connection (up to
    /// the head limit). On a complete request, `decide` is called once with it and whether it is
    /// a valid WebSocket upgrade (`false`: a well-formed plain HTTP GET, which `decide` may answer
    /// with [`Decision::Respond`]); the response is appended to `out`. On a bad request, the HTTP
    /// error response is appended to `out`, the connection becomes Closed and the error is
    /// returned.
    ///
    /// With [`Env::deflate`] enabled, permessage-deflate is negotiated as in
    /// [`Connection::handshake_negotiate`], without asking `decide`.
    pub fn handshake(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
        env: &Env,
        decide: impl FnOnce(&Request<'_>, bool) -> Decision,
    ) -> Result<HandshakeStatus, HandshakeError> {
        self.handshake_negotiate(input, out, env, |req, n| decide(req, n.is_upgrade()))
    }

    /// [`Connection::handshake`], with the extension negotiation shown to `decide`.
    ///
    /// With [`Env::deflate`] enabled, the client's `Sec-WebSocket-Extensions` offers are
    /// checked (a header that breaks the grammar is answered 400 before `decide` is called)
    /// and the permessage-deflate answer is chosen ([`extensions::negotiate`]). `decide` sees
    /// it in [`Negotiation::deflate`] and may refuse it with
    /// [`Negotiation::decline_deflate`]; on [`Decision::Accept`] the 101 carries what is left
    /// and [`Connection::deflate`] returns it from then on. `Sec-WebSocket-Extensions` is
    /// the engine's: the hook's extra headers cannot add one. Disabled, the header is not
    /// looked at.
    ///
    /// The server layer calls this from its upgrade path, showing
    /// [`Negotiation::deflate`] to the application's `on_upgrade` and calling
    /// `decline_deflate` when it refuses compression.
    pub fn handshake_negotiate(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
        env: &Env,
        decide: impl FnOnce(&Request<'_>, &mut Negotiation) -> Decision,
    ) -> Result<HandshakeStatus, HandshakeError> {
        if self.state != State::Handshake {
            return Ok(HandshakeStatus::Accepted { consumed: 0 });
        }
        let max = env.limits.max_handshake_bytes;
        // At most what the limit allows is kept, plus one byte to detect overflow.
        let keep = max.saturating_add(1);
        // Fast path: nothing carried, the whole head sits in `input`.
        let head = std::mem::take(&mut self.cold_mut().assembly);
        let carried = head.len();
        let (source, from_head): (&[u8], bool) =
            if carried == 0 { (input, false) } else { (&[][..], true) };
        let mut joined = head;
        let source: &[u8] = if from_head {
            let room = keep.saturating_sub(joined.len());
            joined.extend_from_slice(&input[..input.len().min(room)]);
            &joined
        } else {
            source
        };
        // After the first read, parse again only once the head can have ended: a head that
        // trickles in one byte per read is scanned once in all, not re-parsed from its start on
        // every read. (The first read is always parsed, so garbage is refused at once.)
        if from_head && source.len() <= max && !head_may_end(source, carried.saturating_sub(3)) {
            // `joined` already holds this read's bytes (from_head).
            self.cold_mut().assembly = joined;
            return Ok(HandshakeStatus::Partial);
        }
        let result = match handshake::parse_request(source, max) {
            Ok(Parsed::Partial) => {
                if !from_head {
                    joined.extend_from_slice(&input[..input.len().min(keep)]);
                }
                self.cold_mut().assembly = joined;
                return Ok(HandshakeStatus::Partial);
            }
            Ok(Parsed::Complete(mut req, consumed)) => 'complete: {
                let accept = handshake::accept_key(req.key().as_bytes());
                let deflate = if env.deflate.enabled {
                    match extensions::negotiate(&env.deflate, req.extensions()) {
                        Ok(d) => d,
                        Err(e) => {
                            handshake::write_error(&e, out);
                            self.state = State::Closed;
                            self.clear_deadline();
                            break 'complete Err(e);
                        }
                    }
                } else {
                    None
                };
                req.set_permessage_deflate(deflate);
                let mut negotiation = Negotiation { upgrade: true, deflate };
                match decide(&req, &mut negotiation) {
                    Decision::Accept { protocol: Some(p), .. }
                        if !req.protocols().any(|o| o == p) =>
                    {
                        // The application confirmed a subprotocol the client never offered:
                        // a server bug, answered as one (RFC 6455 §4.2.2 forbids the header).
                        handshake::write_reject(500, &[], out);
                        self.state = State::Closed;
                        self.clear_deadline();
                        Ok(HandshakeStatus::Rejected { status: 500 })
                    }
                    Decision::Accept { protocol, headers } => {
                        let extra: Vec<(&str, &str)> =
                            headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                        let answer = negotiation.deflate.map(|p| p.to_string());
                        handshake::write_accept_with_extensions(
                            &accept,
                            protocol.as_deref(),
                            answer.as_deref(),
                            &extra,
                            out,
                        );
                        self.set_deflate(negotiation.deflate);
                        self.state = State::Open;
                        self.clear_deadline();
                        Ok(HandshakeStatus::Accepted { consumed: consumed - carried })
                    }
                    Decision::Reject { status } | Decision::Respond { status, .. } => {
                        handshake::write_reject(status, &[], out);
                        self.state = State::Closed;
                        self.clear_deadline();
                        Ok(HandshakeStatus::Rejected { status })
                    }
                }
            }
            Err(e) => {
                // A well-formed GET that is not an upgrade may be answered as plain HTTP.
                let plain = if e.is_plain_http() {
                    match handshake::parse_http(source, max) {
                        Ok(Parsed::Complete(req, _)) => {
                            match decide(&req, &mut Negotiation { upgrade: false, deflate: None }) {
                                Decision::Respond { status, content_type, headers, body } => {
                                    let extra: Vec<(&str, &str)> = headers
                                        .iter()
                                        .map(|(k, v)| (k.as_str(), v.as_str()))
                                        .collect();
                                    handshake::write_response_with(
                                        status,
                                        &content_type,
                                        &extra,
                                        &body,
                                        out,
                                    );
                                    Some(())
                                }
                                _ => None,
                            }
                        }
                        _ => None,
                    }
                } else {
                    None
                };
                self.state = State::Closed;
                self.clear_deadline();
                match plain {
                    Some(()) => Ok(HandshakeStatus::Responded),
                    None => {
                        handshake::write_error(&e, out);
                        Err(e)
                    }
                }
            }
        };
        // `joined` is dropped here: a connection past its handshake holds no head buffer, and
        // no cold state.
        self.trim();
        result
    }

    /// Feeds frame bytes, unmasking them in place.
    ///
    /// Returns after the first event, or when all input is used up (`event: None`). Call again
    /// with `&mut input[consumed..]` until the input is used up. Anything the protocol answers by
    /// itself (pong, close echo) is appended to `out`. On a protocol error the close frame with
    /// the RFC's code is appended to `out`, the connection becomes Closed and the error is
    /// returned; the caller flushes `out` and closes the socket.
    pub fn read<'b>(
        &mut self,
        input: &'b mut [u8],
        out: &mut Vec<u8>,
        env: &mut Env,
    ) -> Result<Read<'b>, ProtocolError> {
        if matches!(self.state, State::Handshake | State::Closed) {
            return Ok(Read { consumed: input.len(), event: None });
        }
        let len = input.len();
        let r = self.read_inner(input, out, env);
        if let Err(e) = &r {
            self.fail(e, out, env);
        }
        // The cold state goes once the message (or control frame) that needed it is done and
        // the input is used up with no frame begun, not between two messages of one input nor
        // when the input ends inside the next header: a stream of messages that each span reads
        // keeps one allocation instead of making and freeing one per message (~15% of such a
        // small message's read time). On an idle connection: one test.
        let ended = r.as_ref().map_or(true, |r| r.consumed == len && self.hdr_len == 0);
        if self.cold.is_some() && ended {
            self.trim();
        }
        r
    }

    fn fail(&mut self, e: &ProtocolError, out: &mut Vec<u8>, env: &mut Env) {
        if !self.sent_close() {
            let mut payload = Vec::with_capacity(2);
            close::encode_close_payload(e.close_code(), "", &mut payload);
            self.write_frame(OpCode::Close, true, &payload, out);
            self.flags |= SENT_CLOSE;
        }
        self.state = State::Closed;
        self.frame = 0;
        if let Some(c) = self.cold.as_deref_mut() {
            c.deadline = None;
            env.pool.put(std::mem::take(&mut c.assembly));
            c.ctrl = Vec::new();
            let msg = c.msg.take();
            c.end_message(msg, self.deflate.as_deref_mut(), env);
        }
    }

    fn read_inner<'b>(
        &mut self,
        input: &'b mut [u8],
        out: &mut Vec<u8>,
        env: &mut Env,
    ) -> Result<Read<'b>, ProtocolError> {
        let total = input.len();
        // `rest` is the unread part of the input; consumed bytes = total - rest.len().
        let mut rest: &'b mut [u8] = input;
        loop {
            if self.state == State::Closed {
                return Ok(Read { consumed: total, event: None });
            }
            let cur = match self.cur() {
                Some(c) => c,
                None => {
                    // Decode the next header, from the carried bytes or straight from input.
                    let (header, used) = if self.hdr_len == 0 {
                        match frame::decode(rest)? {
                            Some((h, n)) => (h, n),
                            None => {
                                self.hdr[..rest.len()].copy_from_slice(rest);
                                self.hdr_len = rest.len() as u8;
                                return Ok(Read { consumed: total, event: None });
                            }
                        }
                    } else {
                        let old = self.hdr_len as usize;
                        let take = (MAX_HEADER_LEN - old).min(rest.len());
                        self.hdr[old..old + take].copy_from_slice(&rest[..take]);
                        match frame::decode(&self.hdr[..old + take])? {
                            Some((h, n)) => {
                                self.hdr_len = 0;
                                (h, n - old)
                            }
                            None => {
                                self.hdr_len = (old + take) as u8;
                                return Ok(Read { consumed: total, event: None });
                            }
                        }
                    };
                    rest = &mut std::mem::take(&mut rest)[used..];
                    self.check_header(&header, &env.limits)?;
                    // Zero-copy fast path: a whole single-frame message in this input.
                    if header.fin
                        && !header.opcode.is_control()
                        && header.opcode != OpCode::Continuation
                        && rest.len() as u64 >= header.payload_len
                    {
                        let (payload, tail) =
                            std::mem::take(&mut rest).split_at_mut(header.payload_len as usize);
                        rest = tail;
                        if let Some(key) = header.mask {
                            unmask(payload, key, 0);
                        }
                        let payload: &'b [u8] = payload;
                        if self.sent_close() {
                            continue;
                        }
                        if header.rsv & RSV1 != 0 {
                            let text = header.opcode == OpCode::Text;
                            let event = self.inflate_whole(payload, text, env)?;
                            return Ok(Read { consumed: total - rest.len(), event: Some(event) });
                        }
                        let event = if header.opcode == OpCode::Text {
                            let s =
                                utf8::validate(payload).map_err(|_| ProtocolError::InvalidUtf8)?;
                            Event::Text(Cow::Borrowed(s))
                        } else {
                            Event::Binary(Cow::Borrowed(payload))
                        };
                        return Ok(Read { consumed: total - rest.len(), event: Some(event) });
                    }
                    if !header.opcode.is_control() {
                        self.start_fragment(&header, env)?;
                    }
                    if let Some(key) = header.mask {
                        // A server's only: `check_header` refused a masked frame to a client,
                        // whose `key` is its generator's state.
                        self.key = key;
                    }
                    let c = Current {
                        op: header.opcode,
                        fin: header.fin,
                        masked: header.mask.is_some(),
                        remaining: header.payload_len,
                    };
                    self.set_cur(c);
                    self.phase = 0;
                    c
                }
            };
            // Payload bytes of the current frame available now.
            let avail = (rest.len() as u64).min(cur.remaining) as usize;
            let (chunk, tail) = std::mem::take(&mut rest).split_at_mut(avail);
            rest = tail;
            if cur.masked {
                unmask(chunk, self.key, self.phase as usize);
            }
            let remaining = cur.remaining - avail as u64;
            let phase = ((self.phase as usize + avail) & 3) as u8;
            let sent_close = self.sent_close();
            if cur.op.is_control() {
                // Carried only when the frame spans reads: a whole one is read from `chunk`.
                let carrying = self.cold.as_ref().is_some_and(|c| !c.ctrl.is_empty());
                if !chunk.is_empty() && (remaining > 0 || carrying) {
                    self.cold_mut().ctrl.extend_from_slice(chunk);
                }
            } else {
                // `start_fragment` made the cold state for this message.
                let c = self.cold.get_or_insert_with(Box::default);
                match c.msg {
                    Some(m) if m.compressed => {
                        if !sent_close {
                            c.inflate_chunk(chunk, m.text, self.deflate.as_deref_mut(), env)?;
                        }
                    }
                    m => {
                        if m.is_some_and(|m| m.text) {
                            c.utf8.feed(chunk).map_err(|_| ProtocolError::InvalidUtf8)?;
                        }
                        if !sent_close {
                            c.assembly.extend_from_slice(chunk);
                        }
                    }
                }
            }
            if remaining > 0 {
                self.set_remaining(remaining);
                self.phase = phase;
                return Ok(Read { consumed: total, event: None });
            }
            // The frame is complete.
            self.frame = 0;
            if cur.op.is_control() {
                // Whole in this input: straight from it; else from the carried bytes.
                let carried = match self.cold.as_deref_mut() {
                    Some(c) if !c.ctrl.is_empty() => Some(std::mem::take(&mut c.ctrl)),
                    _ => None,
                };
                let payload = match carried {
                    None => ControlPayload::new(chunk),
                    Some(carried) => ControlPayload::new(&carried),
                };
                if let Some(ev) = self.control(cur.op, payload, out)? {
                    return Ok(Read { consumed: total - rest.len(), event: Some(ev) });
                }
                continue;
            }
            if !cur.fin {
                continue;
            }
            // The message is complete.
            let c = self.cold.get_or_insert_with(Box::default);
            if let Some(m) = c.msg.filter(|m| m.compressed && !sent_close) {
                c.inflate_chunk(&TAIL, m.text, self.deflate.as_deref_mut(), env)?;
            }
            let msg = c.msg.take();
            c.end_message(msg, self.deflate.as_deref_mut(), env);
            let data = std::mem::take(&mut c.assembly);
            if sent_close {
                env.pool.put(data);
                continue;
            }
            let event = if msg.is_some_and(|m| m.text) {
                c.utf8.finish().map_err(|_| ProtocolError::InvalidUtf8)?;
                match String::from_utf8(data) {
                    Ok(s) => Event::Text(Cow::Owned(s)),
                    Err(_) => return Err(ProtocolError::InvalidUtf8),
                }
            } else {
                Event::Binary(Cow::Owned(data))
            };
            return Ok(Read { consumed: total - rest.len(), event: Some(event) });
        }
    }

    /// Checks what depends on role, negotiation and message state, and the size limits.
    fn check_header(&self, h: &FrameHeader, limits: &Limits) -> Result<(), ProtocolError> {
        match (self.role(), h.mask.is_some()) {
            (Role::Server, false) => return Err(ProtocolError::UnmaskedFrame),
            (Role::Client, true) => return Err(ProtocolError::MaskedFrame),
            _ => {}
        }
        // RSV1 is allowed with permessage-deflate, no RSV bit without.
        let allowed_rsv = if self.deflate.is_some() { RSV1 } else { 0 };
        if h.rsv & !allowed_rsv != 0 {
            return Err(ProtocolError::ReservedBitsSet);
        }
        // RSV1 marks the first frame of a compressed message, and nothing else (RFC 7692 §6.1).
        let rsv1 = h.rsv & RSV1 != 0;
        if h.opcode.is_control() {
            return if rsv1 { Err(ProtocolError::ReservedBitsSet) } else { Ok(()) };
        }
        let msg = self.msg();
        match (h.opcode, msg) {
            (OpCode::Continuation, None) => return Err(ProtocolError::UnexpectedContinuation),
            (OpCode::Text | OpCode::Binary, Some(_)) => {
                return Err(ProtocolError::ExpectedContinuation)
            }
            (OpCode::Continuation, Some(_)) if rsv1 => return Err(ProtocolError::ReservedBitsSet),
            _ => {}
        }
        if h.payload_len > limits.max_frame_size {
            return Err(ProtocolError::FrameTooLarge);
        }
        let (len, frags, compressed) =
            msg.map_or((0, 0, rsv1), |m| (m.len, m.fragments, m.compressed));
        // A compressed message's limit is on its inflated size, checked while inflating; its
        // wire size is bounded only loosely, by what deflate's framing can add.
        let max = if compressed {
            deflate::max_wire_len(limits.max_message_size)
        } else {
            limits.max_message_size
        };
        if len.saturating_add(h.payload_len) > max {
            return Err(ProtocolError::MessageTooLarge);
        }
        if frags >= limits.max_fragments {
            return Err(ProtocolError::TooManyFragments);
        }
        Ok(())
    }

    /// Book-keeping for a data frame that goes through the assembly buffer: its announced
    /// length is reserved against the memory budget first (refused when it does not fit).
    fn start_fragment(&mut self, h: &FrameHeader, env: &mut Env) -> Result<(), ProtocolError> {
        let compressed = self.msg().map_or(h.rsv & RSV1 != 0, |m| m.compressed);
        // A compressed message reserves what it inflates to, as it inflates
        // (`DeflateState::inflate`); an uncompressed one what its frames announce.
        if !compressed {
            if !env.memory.fits(h.payload_len) {
                return Err(ProtocolError::OverBudget);
            }
            // Fits in usize: at most `limit`, itself a usize.
            env.memory.assembly += h.payload_len as usize;
        }
        let sent_close = self.sent_close();
        let c = self.cold.get_or_insert_with(Box::default);
        match &mut c.msg {
            Some(m) => {
                m.len += h.payload_len;
                m.fragments += 1;
            }
            None => {
                c.msg = Some(Message {
                    text: h.opcode == OpCode::Text,
                    compressed,
                    len: h.payload_len,
                    fragments: 1,
                });
                c.utf8.reset();
                if c.assembly.capacity() == 0 && !sent_close {
                    c.assembly = env.pool.get();
                }
                if compressed && !sent_close {
                    if let Some(d) = self.deflate.as_deref_mut() {
                        d.begin_message(&mut env.contexts);
                    }
                }
            }
        }
        if !sent_close && !compressed {
            // Reserve what the header announces, but never more than 64 KiB ahead of the data:
            // a peer's claimed length is not a reason to allocate.
            c.assembly.reserve(h.payload_len.min(64 << 10) as usize);
        }
        Ok(())
    }

    fn control(
        &mut self,
        op: OpCode,
        payload: ControlPayload,
        out: &mut Vec<u8>,
    ) -> Result<Option<Event<'static>>, ProtocolError> {
        match op {
            OpCode::Ping => {
                if !self.sent_close() {
                    self.write_frame(OpCode::Pong, true, payload.as_bytes(), out);
                }
                Ok(Some(Event::Ping(payload)))
            }
            OpCode::Pong => Ok(Some(Event::Pong(payload))),
            OpCode::Close => {
                let parsed = close::parse_close_payload(payload.as_bytes())?;
                let (code, reason) = match parsed {
                    Some((c, r)) => (Some(c), ControlPayload::new(r.as_bytes())),
                    None => (None, ControlPayload::new(&[])),
                };
                if !self.sent_close() {
                    // Echo the peer's code (RFC 6455 §5.5.1), without the reason.
                    let mut p = Vec::with_capacity(2);
                    if let Some(c) = code {
                        close::encode_close_payload(c, "", &mut p);
                    }
                    self.write_frame(OpCode::Close, true, &p, out);
                    self.flags |= SENT_CLOSE;
                }
                self.state = State::Closed;
                self.clear_deadline();
                Ok(Some(Event::Close { code, reason }))
            }
            _ => Ok(None),
        }
    }

    fn next_mask(&mut self) -> [u8; 4] {
        // xorshift32: masking keys for the client role (tests, load generator).
        let mut x = u32::from_le_bytes(self.key);
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.key = x.to_le_bytes();
        self.key
    }

    fn write_frame(&mut self, op: OpCode, fin: bool, payload: &[u8], out: &mut Vec<u8>) {
        match self.role() {
            Role::Server => frame::write_frame(out, op, fin, payload),
            Role::Client => {
                let key = self.next_mask();
                let mut h = [0u8; MAX_HEADER_LEN];
                let n = frame::encode(fin, 0, op, payload.len() as u64, Some(key), &mut h);
                out.extend_from_slice(&h[..n]);
                let start = out.len();
                out.extend_from_slice(payload);
                unmask(&mut out[start..], key, 0);
            }
        }
    }

    /// Appends one data or control frame. `fin: false` starts or continues a fragmented message
    /// (the caller keeps the opcode sequence legal: Text/Binary first, then Continuation).
    pub fn send_frame(
        &mut self,
        op: OpCode,
        fin: bool,
        payload: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), SendAfterClose> {
        if !self.can_send() {
            return Err(SendAfterClose);
        }
        self.write_frame(op, fin, payload, out);
        Ok(())
    }

    /// Appends a whole message, compressed when permessage-deflate was negotiated and the
    /// payload is at least [`DeflateConfig::min_size`] bytes (and shrinks, where no window is
    /// kept): one frame, RSV1 set. Control opcodes (and anything without compression) go
    /// out as [`Connection::send_frame`] with `fin` set would send them; they are never
    /// compressed.
    ///
    /// This is the send the server layer uses for application messages once it negotiates
    /// compression: `conn.send_message(op, payload, &mut slot.out, &mut worker.env)`. The
    /// bytes it appends are the frame, ready for the socket; nothing is kept. A fan-out to many
    /// connections builds the frame once per distinct [`Connection::shared_send_bits`] with
    /// [`Contexts::write_shared_frame`] instead.
    pub fn send_message(
        &mut self,
        op: OpCode,
        payload: &[u8],
        out: &mut Vec<u8>,
        env: &mut Env,
    ) -> Result<(), SendAfterClose> {
        if !self.can_send() {
            return Err(SendAfterClose);
        }
        if matches!(op, OpCode::Text | OpCode::Binary) && self.deflate.is_some() {
            let mask = (self.role() == Role::Client).then(|| self.next_mask());
            if let Some(d) = self.deflate.as_deref_mut() {
                if d.write_message(op, payload, mask, &env.deflate, &mut env.contexts, out) {
                    return Ok(());
                }
            }
        }
        self.write_frame(op, true, payload, out);
        Ok(())
    }

    /// Appends a whole text message, never compressed (see [`Connection::send_message`]).
    pub fn send_text(&mut self, text: &str, out: &mut Vec<u8>) -> Result<(), SendAfterClose> {
        self.send_frame(OpCode::Text, true, text.as_bytes(), out)
    }

    /// Appends a whole binary message, never compressed (see [`Connection::send_message`]).
    pub fn send_binary(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<(), SendAfterClose> {
        self.send_frame(OpCode::Binary, true, data, out)
    }

    /// Appends a ping (payload cut to 125 bytes).
    pub fn send_ping(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<(), SendAfterClose> {
        self.send_frame(OpCode::Ping, true, &data[..data.len().min(125)], out)
    }

    /// Starts the close handshake: appends a close frame and waits up to the close timeout for
    /// the peer's. A code that may not go on the wire (1005, 1006, 1015, ...) is sent as 1000.
    /// Does nothing if we already sent a close.
    pub fn close(
        &mut self,
        now: Instant,
        code: CloseCode,
        reason: &str,
        out: &mut Vec<u8>,
        limits: &Limits,
    ) {
        if self.sent_close() || matches!(self.state, State::Closed) {
            return;
        }
        if self.state == State::Handshake {
            self.state = State::Closed;
            return;
        }
        let code = if code.is_valid_on_wire() { code } else { CloseCode::NORMAL };
        let mut p = Vec::with_capacity(2 + reason.len().min(close::MAX_REASON_LEN));
        close::encode_close_payload(code, reason, &mut p);
        self.write_frame(OpCode::Close, true, &p, out);
        self.flags |= SENT_CLOSE;
        self.state = State::Closing;
        self.cold_mut().deadline = Some(now + limits.close_timeout);
    }

    /// Gives any held buffers back to `pool` (call when dropping the connection).
    pub fn release(&mut self, env: &mut Env) {
        let handshake = self.state == State::Handshake;
        if let Some(c) = self.cold.as_deref_mut() {
            let msg = c.msg.take();
            c.end_message(msg, self.deflate.as_deref_mut(), env);
            if handshake {
                c.assembly = Vec::new();
            } else {
                env.pool.put(std::mem::take(&mut c.assembly));
            }
            c.ctrl = Vec::new();
        }
        if let Some(d) = self.deflate.as_deref_mut() {
            d.release(&mut env.contexts, &mut env.memory);
        }
        self.trim();
    }

    /// Bytes this connection holds besides itself (the cold state while it exists, with the
    /// assembly buffer or handshake head and a carried control payload; the permessage-deflate
    /// state with an estimate of its contexts), for accounting and leak tests.
    pub fn buffered(&self) -> usize {
        let cold = self
            .cold
            .as_deref()
            .map_or(0, |c| std::mem::size_of::<Cold>() + c.assembly.capacity() + c.ctrl.capacity());
        cold + self.deflate.as_ref().map_or(0, |d| d.held())
    }

    /// Inflates a whole compressed message that arrived in one frame in one read.
    fn inflate_whole(
        &mut self,
        payload: &[u8],
        text: bool,
        env: &mut Env,
    ) -> Result<Event<'static>, ProtocolError> {
        // RSV1 passes `check_header` only with a deflate state.
        let Some(d) = self.deflate.as_deref_mut() else {
            return Err(ProtocolError::ReservedBitsSet);
        };
        let limit = env.limits.max_message_size;
        let mut data = env.pool.get();
        d.begin_message(&mut env.contexts);
        let mut r = d.inflate(payload, &mut data, limit, &mut env.memory);
        if r.is_ok() {
            r = d.inflate(&TAIL, &mut data, limit, &mut env.memory);
        }
        d.end_message(env.deflate.memory, &mut env.contexts, &mut env.memory);
        if let Err(e) = r {
            env.pool.put(data);
            return Err(e);
        }
        if !text {
            return Ok(Event::Binary(Cow::Owned(data)));
        }
        match String::from_utf8(data) {
            Ok(s) => Ok(Event::Text(Cow::Owned(s))),
            Err(e) => {
                env.pool.put(e.into_bytes());
                Err(ProtocolError::InvalidUtf8)
            }
        }
    }
}

/// RSV1 in [`FrameHeader::rsv`]'s layout: permessage-deflate's "Per-Message Compressed" bit.
const RSV1: u8 = 0b100;

/// Whether `buf` holds an empty line (the end of an HTTP head: CRLF CRLF, or bare LFs, which
/// the parser also accepts) starting at or after `from`.
fn head_may_end(buf: &[u8], from: usize) -> bool {
    let from = from.min(buf.len());
    buf[from..].iter().enumerate().any(|(i, &b)| {
        let j = from + i;
        b == b'\n'
            && match buf.get(j + 1) {
                Some(b'\n') => true,
                Some(b'\r') => buf.get(j + 2) == Some(&b'\n'),
                _ => false,
            }
    })
}

#[cfg(test)]
#[path = "conn_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "deflate_tests.rs"]
mod deflate_tests;
