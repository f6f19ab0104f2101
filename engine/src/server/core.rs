//! The backend-neutral heart of a worker: its slab of connections, their protocol state,
//! send queues, timers, and the calls into the application's [`Handler`].
//!
//! A backend (epoll, io_uring) owns the sockets and moves bytes; it tells the core about socket
//! events (a connection arrived, bytes arrived, the peer hung up, bytes were taken) and asks it
//! what to write and what to close. The core never performs I/O itself, so both backends share
//! every line of protocol and application logic.
//!
//! Architecture invariant: an idle connection owns no buffer. Read buffers belong to the
//! backend; an assembly buffer is lent from the pool only while a message spans reads; a send
//! queue exists only while it holds bytes.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::Instant;

use slab::Slab;

use crate::proto::conn::{Event, HandshakeStatus, Role};
use crate::proto::frame;
use crate::proto::{CloseCode, Connection, Decision, Env, OpCode, State};

use super::api::{Conn, ConnId, Ctx, Handler, Message, Post, SendStatus, Upgrade};
use super::config::Config;
use super::timer::Wheel;
use super::ServerHandle;

const NO_TIMER: u32 = u32::MAX;

/// Largest payload one send accepts: send queues count bytes in u32.
const MAX_SEND: usize = 1 << 31;

/// The peer's address in 16 bytes instead of `SocketAddr`'s 32 (IPv6 peers are boxed).
#[derive(Debug)]
enum Peer {
    V4([u8; 4], u16),
    V6(Box<std::net::SocketAddrV6>),
}

impl From<SocketAddr> for Peer {
    fn from(a: SocketAddr) -> Self {
        match a {
            SocketAddr::V4(v4) => Peer::V4(v4.ip().octets(), v4.port()),
            SocketAddr::V6(v6) => Peer::V6(Box::new(v6)),
        }
    }
}

impl Peer {
    fn addr(&self) -> SocketAddr {
        match self {
            Peer::V4(ip, port) => SocketAddr::from((*ip, *port)),
            Peer::V6(v6) => SocketAddr::V6(**v6),
        }
    }
}

// Slot flags.
const DIRTY: u8 = 1; // in the dirty list
const BLOCKED: u8 = 2; // the socket refused bytes; waiting for writable
const OPENED: u8 = 4; // on_open was called
const NOTIFIED: u8 = 8; // on_close was called
const READ_PAUSED: u8 = 16; // too much queued: stop reading until drained
const PINGED: u8 = 32; // an auto-ping is outstanding
const LINGER: u8 = 64; // write side shut; discarding input until EOF
const DEAD: u8 = 128; // in the dead list; the backend drops the socket

/// One connection's state in the worker.
#[derive(Debug)]
pub(crate) struct Slot<D> {
    gen: u32,
    flags: u8,
    proto: Connection,
    /// Bytes waiting for the socket, from `out_pos` on; empty and unallocated when idle.
    out: Vec<u8>,
    out_pos: u32,
    /// Bytes handed to the kernel in a send that has not completed (completion backends).
    inflight: u32,
    /// Tick of the armed wheel entry, or `NO_TIMER`.
    timer_at: u32,
    /// The socket, for the direct write of large sends (owned by the backend, which drops
    /// the slot before or as it closes the socket).
    fd: RawFd,
    /// Last time bytes arrived (coarse: the loop turn's clock).
    last_rx: Instant,
    peer: Peer,
    data: D,
}

/// What the backend must do for a connection after the core handled an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum After {
    /// Keep reading.
    Continue,
    /// Stop reading for now (closed, lingering or paused by backpressure).
    StopReading,
}

/// The state a [`Conn`] or [`Ctx`] reaches into.
#[derive(Debug)]
pub(crate) struct CoreState<D> {
    pub(crate) worker: u32,
    pub(crate) handle: ServerHandle,
    cfg: Arc<Config>,
    env: Env,
    conns: Slab<Slot<D>>,
    next_gen: u32,
    pub(crate) now: Instant,
    out_pool: Vec<Vec<u8>>,
    dirty: Vec<u32>,
    /// Connections whose write side the backend must shut (flushed and closed).
    shut: Vec<u32>,
    dead: Vec<u32>,
    wheel: Wheel,
    shutting_down: bool,
}

/// A worker's core: its state plus the application's handler.
#[derive(Debug)]
pub(crate) struct Core<H: Handler> {
    pub(crate) state: CoreState<H::Data>,
    pub(crate) handler: H,
    expired: Vec<(u64, (u32, u32))>,
}

impl<D> CoreState<D> {
    pub(crate) fn id_of(&self, key: usize) -> ConnId {
        ConnId { worker: self.worker, key: key as u32, gen: self.conns[key].gen }
    }

    pub(crate) fn key_of(&self, id: ConnId) -> Option<usize> {
        if id.worker != self.worker {
            return None;
        }
        let key = id.key as usize;
        match self.conns.get(key) {
            Some(s) if s.gen == id.gen && s.flags & (OPENED | NOTIFIED | DEAD) == OPENED => {
                Some(key)
            }
            _ => None,
        }
    }

    pub(crate) fn open_count(&self) -> usize {
        self.conns.len()
    }

    pub(crate) fn data_mut(&mut self, key: usize) -> &mut D {
        &mut self.conns[key].data
    }

    pub(crate) fn peer_addr(&self, key: usize) -> SocketAddr {
        self.conns[key].peer.addr()
    }

    pub(crate) fn buffered_amount(&self, key: usize) -> usize {
        let s = &self.conns[key];
        s.out.len() - s.out_pos as usize + s.inflight as usize
    }

    fn mark_dirty(&mut self, key: usize) {
        let s = &mut self.conns[key];
        if s.flags & DIRTY == 0 && s.out.len() > s.out_pos as usize {
            s.flags |= DIRTY;
            self.dirty.push(key as u32);
        }
    }

    fn out_buf(out_pool: &mut Vec<Vec<u8>>, s: &mut Slot<D>) {
        if s.out.capacity() == 0 {
            if let Some(b) = out_pool.pop() {
                s.out = b;
            }
        }
    }

    pub(crate) fn send(&mut self, key: usize, op: OpCode, payload: &[u8]) -> SendStatus {
        let max = self.cfg.max_backpressure;
        let close_on_limit = self.cfg.close_on_backpressure_limit;
        let s = &mut self.conns[key];
        if !s.proto.can_send() || s.flags & DEAD != 0 {
            return SendStatus::Closed;
        }
        let pending = s.out.len() - s.out_pos as usize + s.inflight as usize;
        if !op.is_control() && (pending > max || payload.len() > MAX_SEND) {
            if close_on_limit {
                self.close(key, CloseCode::POLICY, "backpressure limit");
            }
            return SendStatus::Dropped;
        }
        if !op.is_control()
            && payload.len() >= self.cfg.direct_write_min
            && s.inflight == 0
            // Blocked: the bytes wait their turn. Read-paused: the drain that resumes reading
            // runs in the backend's flush (`on_written`), which must see the queue.
            && s.flags & (BLOCKED | READ_PAUSED) == 0
            && s.proto.role() == Role::Server
        {
            Self::send_direct(&mut self.out_pool, s, op, payload);
            self.mark_dirty(key);
            return SendStatus::Sent;
        }
        Self::out_buf(&mut self.out_pool, s);
        let payload = if op.is_control() { &payload[..payload.len().min(125)] } else { payload };
        if s.proto.send_frame(op, true, payload, &mut s.out).is_err() {
            return SendStatus::Closed;
        }
        let status =
            if s.flags & BLOCKED != 0 { SendStatus::Backpressure } else { SendStatus::Sent };
        self.mark_dirty(key);
        status
    }

    /// Writes what is queued, then the frame's header and `payload`, with one `sendmsg`
    /// straight from the caller's memory, and queues only what the socket did not take:
    /// a large echo then costs no copy into the send queue. Nothing of the connection may be
    /// in flight (a completion backend's send), so the bytes keep their order. Any failure
    /// (EAGAIN, a reset) writes nothing here and leaves it to the backend's flush, which
    /// meets the same condition and handles it as for any queued bytes.
    fn send_direct(out_pool: &mut Vec<Vec<u8>>, s: &mut Slot<D>, op: OpCode, payload: &[u8]) {
        let mut h = [0u8; frame::MAX_HEADER_LEN];
        let hn = frame::encode(true, 0, op, payload.len() as u64, None, &mut h);
        let queued = &s.out[s.out_pos as usize..];
        let mut n = send_vectored(s.fd, &[queued, &h[..hn], payload]);
        let q = n.min(queued.len());
        s.out_pos += q as u32;
        n -= q;
        if s.out_pos as usize == s.out.len() {
            s.out.clear();
            s.out_pos = 0;
        }
        if n < hn {
            Self::out_buf(out_pool, s);
            s.out.extend_from_slice(&h[n..hn]);
            s.out.extend_from_slice(payload);
        } else if n - hn < payload.len() {
            Self::out_buf(out_pool, s);
            s.out.extend_from_slice(&payload[n - hn..]);
        } else if s.out.is_empty() {
            recycle(out_pool, std::mem::take(&mut s.out));
        }
    }

    pub(crate) fn close(&mut self, key: usize, code: CloseCode, reason: &str) {
        let now = self.now;
        let s = &mut self.conns[key];
        Self::out_buf(&mut self.out_pool, s);
        s.proto.close(now, code, reason, &mut s.out, &self.env.limits);
        self.mark_dirty(key);
        self.arm(key);
    }

    /// The next instant something is due for this connection.
    fn deadline_of(&self, key: usize) -> Option<Instant> {
        let s = &self.conns[key];
        if s.flags & DEAD != 0 {
            return None;
        }
        if s.flags & LINGER != 0 {
            return Some(s.last_rx + self.env.limits.close_timeout);
        }
        let mut d = s.proto.deadline();
        if s.proto.state() == State::Open {
            let mut consider = |t: Instant| d = Some(d.map_or(t, |x| x.min(t)));
            if let Some(idle) = self.cfg.idle_timeout {
                consider(s.last_rx + idle);
            }
            if let Some(p) = self.cfg.auto_ping {
                let n = if s.flags & PINGED != 0 { 2 } else { 1 };
                consider(s.last_rx + p * n);
            }
        }
        d
    }

    /// Makes sure a wheel entry fires no later than the connection's next deadline.
    fn arm(&mut self, key: usize) {
        let Some(d) = self.deadline_of(key) else { return };
        let tick = self.wheel.tick_for(d);
        let s = &self.conns[key];
        if s.timer_at == NO_TIMER || tick < u64::from(s.timer_at) {
            let gen = s.gen;
            let at = self.wheel.insert(d, (key as u32, gen));
            self.conns[key].timer_at = at.min(u64::from(NO_TIMER - 1)) as u32;
        }
    }
}

fn cfg_conns(cfg: &Config) -> usize {
    cfg.max_connections.min(1 << 20)
}

impl<H: Handler> Core<H> {
    pub(crate) fn new(worker: usize, cfg: Arc<Config>, handle: ServerHandle, handler: H) -> Self {
        let now = Instant::now();
        let env = Env::new(cfg.limits);
        let wheel = Wheel::new(now, cfg.timer_tick);
        let capacity = cfg_conns(&cfg);
        Self {
            state: CoreState {
                worker: worker as u32,
                handle,
                cfg,
                env,
                // Reserved, not touched: pages become resident only as connections fill them,
                // so the slab never pays for doubling and copying.
                conns: Slab::with_capacity(capacity),
                next_gen: 0,
                now,
                out_pool: Vec::new(),
                dirty: Vec::new(),
                shut: Vec::new(),
                dead: Vec::new(),
                wheel,
                shutting_down: false,
            },
            handler,
            expired: Vec::new(),
        }
    }

    /// Whether another connection may be accepted.
    pub(crate) fn has_room(&self) -> bool {
        !self.state.shutting_down && self.state.conns.len() < self.state.cfg.max_connections
    }

    pub(crate) fn len(&self) -> usize {
        self.state.conns.len()
    }

    /// A connection arrived on socket `fd` (the backend keeps owning it); returns its key.
    pub(crate) fn accept(&mut self, peer: SocketAddr, fd: RawFd) -> usize {
        let st = &mut self.state;
        st.next_gen = st.next_gen.wrapping_add(1) & 0xff_ffff; // 24 bits: ConnId::to_u64 round-trips
        let slot = Slot {
            gen: st.next_gen,
            flags: 0,
            proto: Connection::new_server(st.now, &st.env.limits),
            out: Vec::new(),
            out_pos: 0,
            inflight: 0,
            last_rx: st.now,
            timer_at: NO_TIMER,
            fd,
            peer: Peer::from(peer),
            data: H::Data::default(),
        };
        let key = st.conns.insert(slot);
        st.arm(key);
        key
    }

    /// Whether the backend should read from this connection now.
    pub(crate) fn wants_read(&self, key: usize) -> bool {
        self.state.conns.get(key).is_some_and(|s| s.flags & (READ_PAUSED | DEAD) == 0)
    }

    /// Bytes arrived for `key`. They are parsed (and unmasked) in place.
    pub(crate) fn on_data(&mut self, key: usize, data: &mut [u8]) -> After {
        let Some(s) = self.state.conns.get_mut(key) else { return After::StopReading };
        if s.flags & DEAD != 0 {
            return After::StopReading;
        }
        if s.flags & LINGER != 0 {
            // Discard until EOF; the linger deadline does not move, however much arrives.
            return After::Continue;
        }
        s.last_rx = self.state.now;
        s.flags &= !PINGED;
        let mut pos = 0;
        if s.proto.state() == State::Handshake {
            match self.handshake(key, data) {
                Some(consumed) => pos = consumed,
                None => return self.after_input(key),
            }
        }
        while pos < data.len() {
            let st = &mut self.state;
            let s = &mut st.conns[key];
            if matches!(s.proto.state(), State::Closed) {
                break;
            }
            CoreState::<H::Data>::out_buf(&mut st.out_pool, s);
            let r = s.proto.read(&mut data[pos..], &mut s.out, &mut st.env);
            match r {
                Ok(r) => {
                    pos += r.consumed;
                    let Some(ev) = r.event else { break };
                    self.dispatch(key, ev);
                }
                Err(e) => {
                    log::debug!("worker {}: protocol error from {}: {e}", st.worker, s.peer.addr());
                    let code = e.close_code();
                    self.notify_close(key, code, "");
                    break;
                }
            }
        }
        self.after_input(key)
    }

    /// Runs the handshake on `data`; returns bytes consumed when the connection opened.
    fn handshake(&mut self, key: usize, data: &[u8]) -> Option<usize> {
        let st = &mut self.state;
        let s = &mut st.conns[key];
        let peer = s.peer.addr();
        let handler = &mut self.handler;
        let mut user: Option<H::Data> = None;
        CoreState::<H::Data>::out_buf(&mut st.out_pool, s);
        let res = s.proto.handshake(data, &mut s.out, &st.env, |req, upgrade| {
            if !upgrade {
                return match handler.on_http(req) {
                    Some(r) => Decision::Respond {
                        status: r.status,
                        content_type: r.content_type,
                        body: r.body,
                    },
                    None => Decision::Reject { status: 400 },
                };
            }
            match handler.on_upgrade(req, peer) {
                Upgrade::Accept { protocol, headers, data } => {
                    user = Some(data);
                    Decision::Accept { protocol, headers }
                }
                Upgrade::Reject(status) => Decision::Reject { status },
            }
        });
        st.mark_dirty(key);
        match res {
            Ok(HandshakeStatus::Accepted { consumed }) => {
                let s = &mut st.conns[key];
                if let Some(d) = user {
                    s.data = d;
                }
                s.flags |= OPENED;
                st.arm(key);
                self.handler.on_open(&mut Conn { core: &mut self.state, key });
                Some(consumed)
            }
            Ok(HandshakeStatus::Partial) => None,
            Ok(HandshakeStatus::Rejected { .. } | HandshakeStatus::Responded) => None,
            Err(e) => {
                log::debug!("worker {}: bad handshake from {peer}: {e}", st.worker);
                None
            }
        }
    }

    fn dispatch(&mut self, key: usize, ev: Event<'_>) {
        let mut conn = Conn { core: &mut self.state, key };
        match ev {
            Event::Text(t) => {
                self.handler.on_message(&mut conn, Message::Text(&t));
                if let Cow::Owned(s) = t {
                    self.state.env.pool.put(s.into_bytes());
                }
            }
            Event::Binary(b) => {
                self.handler.on_message(&mut conn, Message::Binary(&b));
                if let Cow::Owned(v) = b {
                    self.state.env.pool.put(v);
                }
            }
            Event::Ping(p) => self.handler.on_ping(&mut conn, p.as_bytes()),
            Event::Pong(p) => self.handler.on_pong(&mut conn, p.as_bytes()),
            Event::Close { code, reason } => {
                let reason = std::str::from_utf8(reason.as_bytes()).unwrap_or("");
                self.notify_close(key, code.unwrap_or(CloseCode::NO_STATUS), reason);
            }
        }
        self.state.mark_dirty(key);
    }

    /// Calls `on_close` once for an opened connection.
    fn notify_close(&mut self, key: usize, code: CloseCode, reason: &str) {
        let s = &mut self.state.conns[key];
        if s.flags & (OPENED | NOTIFIED) == OPENED {
            s.flags |= NOTIFIED;
            self.handler.on_close(&mut Conn { core: &mut self.state, key }, code, reason);
        }
    }

    /// After input: pause reading under backpressure, start the shutdown of closed ones.
    fn after_input(&mut self, key: usize) -> After {
        let st = &mut self.state;
        st.mark_dirty(key);
        let s = &mut st.conns[key];
        if s.proto.state() == State::Closed {
            if s.out.len() == s.out_pos as usize && s.inflight == 0 {
                self.begin_linger(key);
            }
            return After::StopReading;
        }
        if s.out.len() - s.out_pos as usize + s.inflight as usize > st.cfg.max_backpressure {
            s.flags |= READ_PAUSED;
            return After::StopReading;
        }
        After::Continue
    }

    fn begin_linger(&mut self, key: usize) {
        let st = &mut self.state;
        let s = &mut st.conns[key];
        if s.flags & (LINGER | DEAD) == 0 {
            s.flags |= LINGER;
            s.last_rx = st.now;
            st.shut.push(key as u32);
            st.arm(key);
        }
    }

    /// The peer hung up (EOF) or the socket failed.
    pub(crate) fn on_hangup(&mut self, key: usize) {
        if self.state.conns.get(key).is_none() {
            return;
        }
        self.notify_close(key, CloseCode::ABNORMAL, "");
        self.kill(key);
    }

    /// Marks a connection for removal; the backend drops its socket and calls `remove`.
    fn kill(&mut self, key: usize) {
        let s = &mut self.state.conns[key];
        if s.flags & DEAD == 0 {
            s.flags |= DEAD;
            self.state.dead.push(key as u32);
        }
    }

    /// Bytes waiting for this connection's socket.
    pub(crate) fn pending(&self, key: usize) -> &[u8] {
        match self.state.conns.get(key) {
            Some(s) if s.flags & DEAD == 0 => &s.out[s.out_pos as usize..],
            _ => &[],
        }
    }

    /// The socket took `n` bytes of [`Core::pending`]; `blocked` if it refused the rest.
    /// Returns whether the backend should resume reading (a paused connection drained).
    pub(crate) fn on_written(&mut self, key: usize, n: usize, blocked: bool) -> bool {
        let st = &mut self.state;
        let Some(s) = st.conns.get_mut(key) else { return false };
        s.out_pos += n as u32;
        if (s.out_pos as usize) < s.out.len() {
            if blocked {
                s.flags |= BLOCKED;
            }
            return false;
        }
        // Everything went out: give the buffer back.
        s.out_pos = 0;
        recycle(&mut st.out_pool, std::mem::take(&mut s.out));
        let was_blocked = s.flags & BLOCKED != 0;
        let was_paused = s.flags & READ_PAUSED != 0;
        s.flags &= !(BLOCKED | READ_PAUSED);
        if s.proto.state() == State::Closed {
            self.begin_linger(key);
            return false;
        }
        if was_blocked && s.flags & (OPENED | NOTIFIED) == OPENED {
            self.handler.on_drain(&mut Conn { core: &mut self.state, key });
            self.state.mark_dirty(key);
        }
        was_paused
    }

    /// Takes the queued bytes for a send the kernel owns until its completion (completion
    /// backends). Returns the buffer and the offset its unsent bytes start at.
    pub(crate) fn take_out(&mut self, key: usize) -> Option<(Vec<u8>, usize)> {
        let s = self.state.conns.get_mut(key)?;
        if s.flags & DEAD != 0 || s.out.len() == s.out_pos as usize || s.inflight != 0 {
            return None;
        }
        let pos = std::mem::replace(&mut s.out_pos, 0) as usize;
        let buf = std::mem::take(&mut s.out);
        s.inflight = (buf.len() - pos) as u32;
        Some((buf, pos))
    }

    /// A send from [`Core::take_out`] completed with `n` bytes written. Returns the buffer
    /// and offset to send again when bytes remain (they go before anything queued since), or
    /// `None` when it all went out; `resume` is set when a paused connection should read again.
    pub(crate) fn on_send_done(
        &mut self,
        key: usize,
        buf: Vec<u8>,
        pos: usize,
        n: usize,
        resume: &mut bool,
    ) -> Option<(Vec<u8>, usize)> {
        let st = &mut self.state;
        let s = st.conns.get_mut(key)?;
        let pos = pos + n;
        if pos < buf.len() && s.flags & DEAD == 0 {
            s.inflight = (buf.len() - pos) as u32;
            s.flags |= BLOCKED;
            return Some((buf, pos));
        }
        s.inflight = 0;
        recycle(&mut st.out_pool, buf);
        if s.out.len() > s.out_pos as usize {
            // More was queued while the send was in flight: it goes next.
            let k = key as u32;
            if s.flags & DIRTY == 0 {
                s.flags |= DIRTY;
                st.dirty.push(k);
            }
            return None;
        }
        *resume = self.on_written(key, 0, false);
        None
    }

    /// The socket failed on write.
    pub(crate) fn on_write_error(&mut self, key: usize) {
        self.on_hangup(key);
    }

    /// Takes the keys with bytes to write.
    pub(crate) fn take_dirty(&mut self, into: &mut Vec<u32>) {
        for &k in &self.state.dirty {
            if let Some(s) = self.state.conns.get_mut(k as usize) {
                s.flags &= !DIRTY;
            }
        }
        into.append(&mut self.state.dirty);
    }

    /// Takes the keys whose write side must be shut.
    pub(crate) fn take_shut(&mut self, into: &mut Vec<u32>) {
        into.append(&mut self.state.shut);
    }

    /// Takes the keys to drop.
    pub(crate) fn take_dead(&mut self, into: &mut Vec<u32>) {
        into.append(&mut self.state.dead);
    }

    /// Frees a dead connection's slot.
    pub(crate) fn remove(&mut self, key: usize) {
        if let Some(mut s) = self.state.conns.try_remove(key) {
            s.proto.release(&mut self.state.env);
        }
    }

    /// Sets the loop's clock for this turn.
    pub(crate) fn set_now(&mut self, now: Instant) {
        self.state.now = now;
    }

    /// When the next timer is due.
    pub(crate) fn next_timer(&self) -> Option<Instant> {
        self.state.wheel.next_expiry()
    }

    /// Runs due timers: handshake, close and linger deadlines, idle timeouts, auto-pings.
    pub(crate) fn expire_timers(&mut self) {
        let now = self.state.now;
        let mut expired = std::mem::take(&mut self.expired);
        self.state.wheel.expire(now, &mut expired);
        for (tick, (key, gen)) in expired.drain(..) {
            let key = key as usize;
            match self.state.conns.get_mut(key) {
                Some(s) if s.gen == gen && u64::from(s.timer_at) == tick => s.timer_at = NO_TIMER,
                _ => continue, // stale entry
            }
            self.on_timer(key, now);
            if self.state.conns.contains(key) {
                self.state.arm(key);
            }
        }
        self.expired = expired;
    }

    fn on_timer(&mut self, key: usize, now: Instant) {
        let cfg = Arc::clone(&self.state.cfg);
        let s = &mut self.state.conns[key];
        if s.flags & DEAD != 0 {
            return;
        }
        if s.flags & LINGER != 0 {
            if now >= s.last_rx + self.state.env.limits.close_timeout {
                self.kill(key);
            }
            return;
        }
        let was = s.proto.state();
        if s.proto.handle_timeout(now) {
            if was == State::Closing {
                self.notify_close(key, CloseCode::ABNORMAL, "close handshake timed out");
            }
            self.kill(key);
            return;
        }
        if was != State::Open {
            return;
        }
        if let Some(idle) = cfg.idle_timeout {
            if now >= s.last_rx + idle {
                self.state.close(key, CloseCode::GOING_AWAY, "idle timeout");
                return;
            }
        }
        if let Some(p) = cfg.auto_ping {
            if s.flags & PINGED != 0 && now >= s.last_rx + p * 2 {
                self.state.close(key, CloseCode::GOING_AWAY, "ping timeout");
            } else if s.flags & PINGED == 0 && now >= s.last_rx + p {
                s.flags |= PINGED;
                self.state.send(key, OpCode::Ping, b"");
            }
        }
    }

    /// Starts a graceful shutdown: handshakes are dropped, open connections get close 1001.
    pub(crate) fn begin_shutdown(&mut self) {
        self.state.shutting_down = true;
        let keys: Vec<usize> = self.state.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            let s = &self.state.conns[key];
            match s.proto.state() {
                State::Handshake => self.kill(key),
                State::Open => self.state.close(key, CloseCode::GOING_AWAY, "server shutdown"),
                _ => {}
            }
        }
    }

    /// Drops every remaining connection (end of a graceful shutdown).
    pub(crate) fn kill_all(&mut self) {
        let keys: Vec<usize> = self.state.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            self.notify_close(key, CloseCode::ABNORMAL, "server shutdown");
            self.kill(key);
        }
    }

    /// A value posted from another thread.
    pub(crate) fn on_post(&mut self, post: &Post) {
        self.handler.on_post(&mut Ctx { core: &mut self.state }, post);
    }

    /// A send requested from another thread.
    pub(crate) fn send_to(&mut self, id: ConnId, op: OpCode, payload: &[u8]) {
        if let Some(key) = self.state.key_of(id) {
            self.state.send(key, op, payload);
        }
    }

    /// A close requested from another thread.
    pub(crate) fn close_id(&mut self, id: ConnId, code: CloseCode, reason: &str) {
        if let Some(key) = self.state.key_of(id) {
            self.state.close(key, code, reason);
        }
    }
}

/// Gives an emptied send buffer back to the worker's pool: at most 256 buffers of at most
/// 256 KiB are kept, the rest freed.
fn recycle(out_pool: &mut Vec<Vec<u8>>, mut buf: Vec<u8>) {
    if buf.capacity() > 0 && buf.capacity() <= (256 << 10) && out_pool.len() < 256 {
        buf.clear();
        out_pool.push(buf);
    }
}

/// One non-blocking `sendmsg` of `parts` on `fd`; the bytes taken, 0 on any error.
fn send_vectored(fd: RawFd, parts: &[&[u8]; 3]) -> usize {
    let mut iov = [libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; 3];
    let mut cnt = 0;
    for p in parts.iter().filter(|p| !p.is_empty()) {
        iov[cnt] = libc::iovec { iov_base: p.as_ptr() as *mut libc::c_void, iov_len: p.len() };
        cnt += 1;
    }
    // SAFETY: a zeroed msghdr is valid (no name, no control data).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_mut_ptr();
    msg.msg_iovlen = cnt;
    // SAFETY: every iovec points into a slice borrowed for this call, which the kernel only
    // reads; `msg` and `iov` outlive the call. MSG_DONTWAIT: never block, whatever mode the
    // socket is in; MSG_NOSIGNAL: a closed peer is an error here, not SIGPIPE.
    let r = unsafe { libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
    if r < 0 {
        0
    } else {
        r as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An idle connection's user-space footprint: the slot (protocol state included) plus its
    /// slab tag. The budget is 256 bytes per idle connection; the slab's capacity is reserved
    /// up front (untouched pages cost nothing), so the slot size is what a connection costs.
    #[test]
    fn idle_slot_is_small() {
        let slot = std::mem::size_of::<Slot<()>>();
        let conn = std::mem::size_of::<Connection>();
        eprintln!("Slot<()> = {slot} bytes, Connection = {conn} bytes");
        assert!(slot <= 208, "Slot<()> is {slot} bytes");
    }
}
