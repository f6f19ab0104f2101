//! The backend-neutral heart of a worker: its slab of connections, their protocol state,
//! send queues, timers, and the calls into the application's [`Handler`].
//!
//! A backend (epoll, io_uring) owns the sockets and moves bytes; it tells the core about socket
//! events (a connection arrived, bytes arrived, the peer hung up, bytes were taken) and asks it
//! what to write and what to close, so both backends share every line of protocol and
//! application logic. The core performs no I/O and reads no clock: time comes in with
//! `set_now` at the top of every loop turn, and the one write it may want at once (the direct
//! write of a large send, see [`CoreState::send`]) it asks of the backend through the
//! `WriteNow` hook it was built with, by the socket handle the backend lent at accept.
//!
//! Architecture invariant: every connection, in every state, has a deadline (the handshake
//! timeout; idle timeout and auto-ping while open, when configured; `close_timeout` from the
//! moment a close is sent or received, whatever is still queued), after which it is gone.
//!
//! Architecture invariant: an idle connection owns no buffer. Read buffers belong to the
//! backend; an assembly buffer is lent from the pool only while a message spans reads; a send
//! queue exists only while it holds bytes.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use slab::Slab;

use crate::proto::conn::{Event, HandshakeStatus};
use crate::proto::frame;
use crate::proto::{CloseCode, Connection, Decision, Env, OpCode, ProtocolError, Role, State};

use super::api::{Conn, ConnId, Ctx, Handler, Message, Post, SendStatus, Upgrade};
use super::config::Config;
use super::handle::{ServerHandle, WorkerStats};
use super::timer::Wheel;

/// The backend's hook for a write at once: one non-blocking write of `parts`, in order, to the
/// socket the backend lent as `fd`; returns the bytes taken (0 on any error, which the
/// backend's next flush meets and handles). Both backends use `io::sys::write_now`.
pub(crate) type WriteNow = fn(RawFd, &[&[u8]; 3]) -> usize;

const NO_TIMER: u64 = u64::MAX;

/// A key's generation after its last use: the key is retired, never handed out again, so an
/// old [`ConnId`] can never come to name a new connection (after 2^32 - 1 uses of one slot).
const RETIRED_GEN: u32 = u32::MAX;

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
const DIRTY: u16 = 1; // in the dirty list
const BLOCKED: u16 = 2; // the socket refused bytes; waiting for writable
const OPENED: u16 = 4; // on_open was called
const NOTIFIED: u16 = 8; // on_close was called
const READ_PAUSED: u16 = 16; // too much queued: stop reading until drained
const PINGED: u16 = 32; // an auto-ping is outstanding
const LINGER: u16 = 64; // write side shut; discarding input until EOF
const DEAD: u16 = 128; // in the dead list; the backend drops the socket
const CLOSING: u16 = 256; // a close was sent or received (or the handshake refused): `since` is when
const OVER: u16 = 512; // a data send was dropped at the limit: reading pauses until the queue drains
const RETIRED: u16 = 1024; // a tombstone holding a retired key (see `RETIRED_GEN`)
const RESET: u16 = 2048; // dead by force: the backend closes the socket with a reset

/// Counters a worker keeps in plain integers and publishes once per loop turn.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Counts {
    pub(crate) handshake_timeouts: usize,
    pub(crate) idle_timeouts: usize,
    pub(crate) close_timeouts: usize,
    pub(crate) handler_panics: usize,
    pub(crate) sends_dropped: usize,
    pub(crate) budget_refusals: usize,
    pub(crate) protocol_errors: usize,
    pub(crate) bad_handshakes: usize,
}

/// One connection's state in the worker. Its generation lives in `CoreState::gens`, which
/// outlives the slot.
#[derive(Debug)]
pub(crate) struct Slot<D> {
    flags: u16,
    proto: Connection,
    /// Bytes waiting for the socket, from `out_pos` on; empty and unallocated when idle.
    out: Vec<u8>,
    out_pos: u32,
    /// Bytes handed to the kernel in a send that has not completed (completion backends).
    inflight: u32,
    /// Tick of the armed wheel entry, or `NO_TIMER`.
    timer_at: u64,
    /// The socket, for the direct write of large sends (owned by the backend, which drops
    /// the slot before or as it closes the socket).
    fd: RawFd,
    /// Until a close: the last time bytes arrived (coarse: the loop turn's clock). From the
    /// close on (`CLOSING`): when the close was sent or received; it never moves again.
    since: Instant,
    peer: Peer,
    data: D,
}

/// What the backend must do for a connection after the core handled an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum After {
    /// Keep reading.
    Continue,
    /// Stop reading for now (closed, dead, or paused by backpressure). A lingering connection
    /// gets `Continue`: it reads, and discards, until EOF.
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
    /// Generation of each key ever used, bumped when its slot is freed.
    gens: Vec<u32>,
    /// Keys retired for good (tombstones in `conns`).
    retired: usize,
    pub(crate) now: Instant,
    out_pool: SendPool,
    dirty: Vec<u32>,
    /// Connections whose write side the backend must shut (flushed and closed).
    shut: Vec<u32>,
    dead: Vec<u32>,
    wheel: Wheel,
    shutting_down: bool,
    pub(crate) counts: Counts,
    /// Whether a handler panic was logged on this worker (the first is; the rest are counted).
    panic_logged: bool,
    /// The backend's hook for a write at once (the direct write of a large send).
    write: WriteNow,
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
        ConnId { worker: self.worker, key: key as u32, gen: self.gens[key] }
    }

    pub(crate) fn key_of(&self, id: ConnId) -> Option<usize> {
        if id.worker != self.worker {
            return None;
        }
        let key = id.key as usize;
        match self.conns.get(key) {
            Some(s)
                if self.gens[key] == id.gen && s.flags & (OPENED | NOTIFIED | DEAD) == OPENED =>
            {
                Some(key)
            }
            _ => None,
        }
    }

    /// Connections held: handshaking, open or closing (retired keys are not connections).
    pub(crate) fn connection_count(&self) -> usize {
        self.conns.len() - self.retired
    }

    pub(crate) fn data(&self, key: usize) -> &D {
        &self.conns[key].data
    }

    pub(crate) fn data_mut(&mut self, key: usize) -> &mut D {
        &mut self.conns[key].data
    }

    pub(crate) fn peer_addr(&self, key: usize) -> SocketAddr {
        self.conns[key].peer.addr()
    }

    pub(crate) fn buffered_amount(&self, key: usize) -> usize {
        pending_of(&self.conns[key])
    }

    fn mark_dirty(&mut self, key: usize) {
        let s = &mut self.conns[key];
        if s.flags & DIRTY == 0 && s.out.len() > s.out_pos as usize {
            s.flags |= DIRTY;
            self.dirty.push(key as u32);
        }
    }

    fn out_buf(out_pool: &mut SendPool, s: &mut Slot<D>) {
        if s.out.capacity() == 0 {
            if let Some(b) = out_pool.take() {
                s.out = b;
            }
        }
    }

    /// Brings the worker's count of queued bytes up to date after `key`'s queue changed from
    /// `before` bytes.
    fn requeued(&mut self, key: usize, before: usize) {
        let after = pending_of(&self.conns[key]);
        let q = &mut self.env.memory.queued;
        *q = (*q + after).saturating_sub(before);
    }

    /// Queues a message, or writes it at once (see `direct_write_min`).
    ///
    /// Data sends obey `max_backpressure` as a hard bound: a message that would take the
    /// bytes waiting for the socket past it is refused whole (`Dropped`), and nothing of it is
    /// queued. Bytes corked during this loop turn, which the socket has not been offered yet,
    /// are offered first (one `sendmsg`) so that a burst of small sends is not dropped by a
    /// socket that would have taken it. Control frames are never dropped.
    pub(crate) fn send(&mut self, key: usize, op: OpCode, payload: &[u8]) -> SendStatus {
        let max = self.cfg.max_backpressure;
        let s = &mut self.conns[key];
        if !s.proto.can_send() || s.flags & DEAD != 0 {
            return SendStatus::Closed;
        }
        let before = pending_of(s);
        if op.is_control() {
            Self::out_buf(&mut self.out_pool, s);
            let payload = &payload[..payload.len().min(125)];
            if s.proto.send_frame(op, true, payload, &mut s.out).is_err() {
                return SendStatus::Closed;
            }
            let status = status_of(s);
            self.requeued(key, before);
            self.mark_dirty(key);
            return status;
        }
        let mut pending = before;
        if pending.saturating_add(payload.len()) > max
            && pending > 0
            && s.inflight == 0
            && s.flags & (BLOCKED | READ_PAUSED) == 0
        {
            // Everything queued is corked (never refused): let the socket have it first.
            Self::write_now(self.write, &mut self.out_pool, s, None);
            pending = pending_of(s);
        }
        if payload.len() > MAX_SEND || pending.saturating_add(payload.len()) > max {
            self.counts.sends_dropped += 1;
            self.requeued(key, before);
            if self.cfg.close_on_backpressure_limit {
                self.close(key, CloseCode::POLICY, "backpressure limit");
            } else if pending > 0 {
                // Reading pauses until the queue drains (an echo of a peer that never reads).
                self.conns[key].flags |= OVER;
            }
            return SendStatus::Dropped;
        }
        let frame_len = payload.len() as u64 + frame::header_len(payload.len() as u64) as u64;
        if !self.env.memory.fits(frame_len) {
            self.counts.budget_refusals += 1;
            self.requeued(key, before);
            return SendStatus::Dropped;
        }
        if payload.len() >= self.cfg.direct_write_min
            && s.inflight == 0
            // Blocked: the bytes wait their turn. Read-paused: the drain that resumes reading
            // runs in the backend's flush (`on_written`), which must see the queue.
            && s.flags & (BLOCKED | READ_PAUSED) == 0
        {
            Self::write_now(self.write, &mut self.out_pool, s, Some((op, payload)));
        } else {
            Self::out_buf(&mut self.out_pool, s);
            if s.proto.send_frame(op, true, payload, &mut s.out).is_err() {
                return SendStatus::Closed;
            }
        }
        let status = status_of(s);
        self.requeued(key, before);
        self.mark_dirty(key);
        status
    }

    /// Writes what is queued, then (with `frame`) the frame's header and payload, with one
    /// `sendmsg` straight from the caller's memory, and queues only what the socket did not
    /// take: a large echo then costs no copy into the send queue. Nothing of the connection may
    /// be in flight (a completion backend's send), so the bytes keep their order. A short
    /// write marks the connection blocked; any failure (EAGAIN, a reset) writes nothing here
    /// and leaves it to the backend's flush, which meets the same condition and handles it as
    /// for any queued bytes.
    fn write_now(
        write: WriteNow,
        out_pool: &mut SendPool,
        s: &mut Slot<D>,
        frame: Option<(OpCode, &[u8])>,
    ) {
        let mut h = [0u8; frame::MAX_HEADER_LEN];
        let (hn, payload) = match frame {
            Some((op, payload)) => {
                (frame::encode(true, 0, op, payload.len() as u64, None, &mut h), payload)
            }
            None => (0, &[][..]),
        };
        let queued = &s.out[s.out_pos as usize..];
        let total = queued.len() + hn + payload.len();
        let mut n = write(s.fd, &[queued, &h[..hn], payload]);
        if n > 0 && n < total {
            s.flags |= BLOCKED;
        }
        let q = n.min(queued.len());
        s.out_pos += q as u32;
        n -= q;
        if s.out_pos as usize == s.out.len() {
            s.out.clear();
            s.out_pos = 0;
        }
        if frame.is_none() {
            // Nothing was added.
        } else if n < hn {
            Self::out_buf(out_pool, s);
            s.out.extend_from_slice(&h[n..hn]);
            s.out.extend_from_slice(payload);
        } else if n - hn < payload.len() {
            Self::out_buf(out_pool, s);
            s.out.extend_from_slice(&payload[n - hn..]);
        }
        if s.out.is_empty() {
            recycle(out_pool, std::mem::take(&mut s.out));
        }
    }

    /// Starts the close handshake. `code` must be one that may go on the wire (the API
    /// checks); anything else is sent as 1000.
    pub(crate) fn close(&mut self, key: usize, code: CloseCode, reason: &str) {
        let now = self.now;
        let s = &mut self.conns[key];
        if s.flags & DEAD != 0 {
            return;
        }
        let before = pending_of(s);
        Self::out_buf(&mut self.out_pool, s);
        s.proto.close(now, code, reason, &mut s.out, &self.env.limits);
        self.requeued(key, before);
        self.mark_dirty(key);
        self.note_close(key);
        self.arm(key);
    }

    /// Starts the close clock the first time the protocol leaves Open (or the handshake):
    /// from here the connection has `close_timeout` to be gone, whatever it still holds.
    fn note_close(&mut self, key: usize) {
        let s = &mut self.conns[key];
        if s.flags & CLOSING == 0 && matches!(s.proto.state(), State::Closing | State::Closed) {
            s.flags |= CLOSING;
            s.since = self.now;
            self.arm(key);
        }
    }

    /// The next instant something is due for this connection.
    fn deadline_of(&self, key: usize) -> Option<Instant> {
        let s = &self.conns[key];
        if s.flags & DEAD != 0 {
            return None;
        }
        if s.flags & CLOSING != 0 {
            return Some(s.since + self.env.limits.close_timeout);
        }
        let mut d = s.proto.deadline();
        if s.proto.state() == State::Open {
            let mut consider = |t: Instant| d = Some(d.map_or(t, |x| x.min(t)));
            if let Some(idle) = self.cfg.idle_timeout {
                consider(s.since + idle);
            }
            if let Some(p) = self.cfg.auto_ping {
                let n = if s.flags & PINGED != 0 { 2 } else { 1 };
                consider(s.since + p * n);
            }
        }
        d
    }

    /// Makes sure a wheel entry fires no later than the connection's next deadline.
    fn arm(&mut self, key: usize) {
        let Some(d) = self.deadline_of(key) else { return };
        let tick = self.wheel.tick_for(d);
        let s = &self.conns[key];
        if s.timer_at == NO_TIMER || tick < s.timer_at {
            let at = self.wheel.insert(d, (key as u32, self.gens[key]));
            self.conns[key].timer_at = at;
        }
    }

    /// Marks a connection for removal; the backend drops its socket and calls `remove`.
    /// `reset`: the backend closes the socket with a reset (SO_LINGER 0), so the kernel keeps
    /// nothing of it either (a forced close; the peer's window may be zero).
    fn kill(&mut self, key: usize, reset: bool) {
        let s = &mut self.conns[key];
        if s.flags & DEAD == 0 {
            s.flags |= DEAD;
            if reset {
                s.flags |= RESET;
            }
            self.dead.push(key as u32);
        }
    }
}

/// Bytes a connection has waiting for its socket: queued plus in flight.
fn pending_of<D>(s: &Slot<D>) -> usize {
    s.out.len() - s.out_pos as usize + s.inflight as usize
}

fn status_of<D>(s: &Slot<D>) -> SendStatus {
    if s.flags & BLOCKED != 0 {
        SendStatus::Backpressure
    } else {
        SendStatus::Sent
    }
}

fn cfg_conns(cfg: &Config) -> usize {
    cfg.max_connections.min(1 << 20)
}

/// What a caught panic said, for the log.
fn panic_message(p: &(dyn std::any::Any + Send)) -> &str {
    p.downcast_ref::<&str>()
        .copied()
        .or_else(|| p.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

impl<H: Handler> Core<H> {
    /// A core whose clock starts at `now`; `write` is the backend's hook for writes at once.
    pub(crate) fn new(
        now: Instant,
        worker: usize,
        cfg: Arc<Config>,
        handle: ServerHandle,
        handler: H,
        write: WriteNow,
    ) -> Self {
        let mut env = Env::new(cfg.limits);
        env.memory.limit = cfg.worker_memory_budget;
        // Half the cache for assembly buffers (kept up to 1 MiB each), half for send buffers.
        const KEEP: usize = 1 << 20;
        env.pool = crate::proto::BufPool::new(cfg.buffer_cache / 2 / KEEP, KEEP);
        let send_cache = cfg.buffer_cache / 2;
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
                gens: Vec::new(),
                retired: 0,
                now,
                out_pool: SendPool::new(send_cache),
                dirty: Vec::new(),
                shut: Vec::new(),
                dead: Vec::new(),
                wheel,
                shutting_down: false,
                counts: Counts::default(),
                panic_logged: false,
                write,
            },
            handler,
            expired: Vec::new(),
        }
    }

    /// Whether another connection may be accepted.
    pub(crate) fn has_room(&self) -> bool {
        !self.state.shutting_down && self.state.connection_count() < self.state.cfg.max_connections
    }

    /// Connections held (handshaking, open or closing); 0 when a stopping worker may exit.
    pub(crate) fn len(&self) -> usize {
        self.state.connection_count()
    }

    /// Publishes this turn's figures for [`ServerHandle::stats`] (the backend adds its own).
    pub(crate) fn publish_stats(&self, stats: &WorkerStats) {
        let st = &self.state;
        let c = &st.counts;
        let put = |a: &std::sync::atomic::AtomicUsize, v: usize| a.store(v, Ordering::Relaxed);
        put(&stats.connections, st.connection_count());
        put(&stats.memory_in_use, st.env.memory.used());
        put(&stats.handshake_timeouts, c.handshake_timeouts);
        put(&stats.idle_timeouts, c.idle_timeouts);
        put(&stats.close_timeouts, c.close_timeouts);
        put(&stats.handler_panics, c.handler_panics);
        put(&stats.sends_dropped, c.sends_dropped);
        put(&stats.budget_refusals, c.budget_refusals);
        put(&stats.protocol_errors, c.protocol_errors);
        put(&stats.bad_handshakes, c.bad_handshakes);
    }

    /// A connection arrived on socket `fd` (the backend keeps owning it); returns its key.
    pub(crate) fn accept(&mut self, peer: SocketAddr, fd: RawFd) -> usize {
        let st = &mut self.state;
        let slot = Slot {
            flags: 0,
            proto: Connection::new_server(st.now, &st.env.limits),
            out: Vec::new(),
            out_pos: 0,
            inflight: 0,
            since: st.now,
            timer_at: NO_TIMER,
            fd,
            peer: Peer::from(peer),
            data: H::Data::default(),
        };
        let key = st.conns.insert(slot);
        if st.gens.len() <= key {
            st.gens.resize(key + 1, 0);
        }
        st.arm(key);
        key
    }

    /// Whether the backend should read from this connection now.
    pub(crate) fn wants_read(&self, key: usize) -> bool {
        self.state.conns.get(key).is_some_and(|s| s.flags & (READ_PAUSED | DEAD) == 0)
    }

    /// Runs a handler callback, catching a panic: it is counted and logged (the first on this
    /// worker in full, the rest at debug level), and, for a connection's callback, that
    /// connection is closed with 1011 while every other one is served on.
    fn guarded<R>(
        &mut self,
        key: Option<usize>,
        what: &str,
        f: impl FnOnce(&mut H, &mut CoreState<H::Data>) -> R,
    ) -> Option<R> {
        let (handler, state) = (&mut self.handler, &mut self.state);
        match catch_unwind(AssertUnwindSafe(|| f(handler, state))) {
            Ok(r) => Some(r),
            Err(p) => {
                self.panicked(what, &*p);
                if let Some(key) = key {
                    if self.state.conns.contains(key) {
                        self.state.close(key, CloseCode::INTERNAL_ERROR, "");
                    }
                }
                None
            }
        }
    }

    fn panicked(&mut self, what: &str, p: &(dyn std::any::Any + Send)) {
        let st = &mut self.state;
        st.counts.handler_panics += 1;
        let msg = panic_message(p);
        if st.panic_logged {
            log::debug!("worker {}: handler panicked in {what}: {msg}", st.worker);
        } else {
            st.panic_logged = true;
            log::error!(
                "worker {}: handler panicked in {what}: {msg} (caught: that connection gets \
                 1011, the worker serves on; further panics are counted in stats)",
                st.worker
            );
        }
    }

    /// Bytes arrived for `key`. They are parsed (and unmasked) in place.
    pub(crate) fn on_data(&mut self, key: usize, data: &mut [u8]) -> After {
        let now = self.state.now;
        let Some(s) = self.state.conns.get_mut(key) else { return After::StopReading };
        if s.flags & DEAD != 0 {
            return After::StopReading;
        }
        if s.flags & LINGER != 0 {
            // Discard until EOF; the close deadline does not move, however much arrives.
            return After::Continue;
        }
        if s.flags & CLOSING == 0 {
            s.since = now;
        }
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
            if matches!(s.proto.state(), State::Closed) || s.flags & DEAD != 0 {
                break;
            }
            let before = pending_of(s);
            CoreState::<H::Data>::out_buf(&mut st.out_pool, s);
            let r = s.proto.read(&mut data[pos..], &mut s.out, &mut st.env);
            st.requeued(key, before);
            match r {
                Ok(r) => {
                    pos += r.consumed;
                    let Some(ev) = r.event else { break };
                    self.dispatch(key, ev);
                }
                Err(e) => {
                    let s = &st.conns[key];
                    log::debug!("worker {}: protocol error from {}: {e}", st.worker, s.peer.addr());
                    if e == ProtocolError::OverBudget {
                        st.counts.budget_refusals += 1;
                    } else {
                        st.counts.protocol_errors += 1;
                    }
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
        let mut panic: Option<(&str, Box<dyn std::any::Any + Send>)> = None;
        CoreState::<H::Data>::out_buf(&mut st.out_pool, s);
        let before = pending_of(s);
        let res = s.proto.handshake(data, &mut s.out, &st.env, |req, upgrade| {
            if !upgrade {
                return match catch_unwind(AssertUnwindSafe(|| handler.on_http(req))) {
                    Ok(Some(r)) => Decision::Respond {
                        status: r.status,
                        content_type: r.content_type,
                        headers: r.headers,
                        body: r.body,
                    },
                    Ok(None) => Decision::Reject { status: 400 },
                    Err(p) => {
                        panic = Some(("on_http", p));
                        Decision::Reject { status: 500 }
                    }
                };
            }
            match catch_unwind(AssertUnwindSafe(|| handler.on_upgrade(req, peer))) {
                Ok(Upgrade::Accept { protocol, headers, data }) => {
                    user = Some(data);
                    Decision::Accept { protocol, headers }
                }
                Ok(Upgrade::Reject(status)) => Decision::Reject { status },
                Err(p) => {
                    panic = Some(("on_upgrade", p));
                    Decision::Reject { status: 500 }
                }
            }
        });
        st.requeued(key, before);
        st.mark_dirty(key);
        if let Some((what, p)) = panic {
            self.panicked(what, &*p);
            self.state.counts.bad_handshakes += 1;
            return None;
        }
        let st = &mut self.state;
        match res {
            Ok(HandshakeStatus::Accepted { consumed }) => {
                let s = &mut st.conns[key];
                if let Some(d) = user {
                    s.data = d;
                }
                s.flags |= OPENED;
                st.arm(key);
                self.guarded(Some(key), "on_open", |h, core| h.on_open(&mut Conn { core, key }));
                Some(consumed)
            }
            Ok(HandshakeStatus::Partial) => None,
            Ok(HandshakeStatus::Rejected { status: 500 }) if user.is_some() => {
                log::warn!(
                    "worker {}: on_upgrade confirmed a subprotocol {peer} did not offer; \
                     answered 500",
                    st.worker
                );
                st.counts.bad_handshakes += 1;
                None
            }
            Ok(HandshakeStatus::Rejected { .. } | HandshakeStatus::Responded) => None,
            Err(e) => {
                log::debug!("worker {}: bad handshake from {peer}: {e}", st.worker);
                st.counts.bad_handshakes += 1;
                None
            }
        }
    }

    fn dispatch(&mut self, key: usize, ev: Event<'_>) {
        match ev {
            Event::Text(t) => {
                self.guarded(Some(key), "on_message", |h, core| {
                    h.on_message(&mut Conn { core, key }, Message::Text(&t))
                });
                if let Cow::Owned(s) = t {
                    self.state.env.pool.put(s.into_bytes());
                }
            }
            Event::Binary(b) => {
                self.guarded(Some(key), "on_message", |h, core| {
                    h.on_message(&mut Conn { core, key }, Message::Binary(&b))
                });
                if let Cow::Owned(v) = b {
                    self.state.env.pool.put(v);
                }
            }
            Event::Ping(p) => {
                self.guarded(Some(key), "on_ping", |h, core| {
                    h.on_ping(&mut Conn { core, key }, p.as_bytes())
                });
            }
            Event::Pong(p) => {
                self.guarded(Some(key), "on_pong", |h, core| {
                    h.on_pong(&mut Conn { core, key }, p.as_bytes())
                });
            }
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
            self.guarded(None, "on_close", |h, core| {
                h.on_close(&mut Conn { core, key }, code, reason)
            });
        }
    }

    /// After input: pause reading under backpressure, start the clock and the shutdown of
    /// closed ones.
    fn after_input(&mut self, key: usize) -> After {
        let st = &mut self.state;
        st.mark_dirty(key);
        st.note_close(key);
        let s = &mut st.conns[key];
        if s.flags & DEAD != 0 {
            return After::StopReading;
        }
        if s.proto.state() == State::Closed {
            if s.out.len() == s.out_pos as usize && s.inflight == 0 {
                self.begin_linger(key);
                return After::Continue;
            }
            return After::StopReading;
        }
        // Only an open connection pauses: once our close is sent, input adds nothing to the
        // queue (no pongs, no echoes), and reading on is how the peer's close is seen.
        if s.proto.state() == State::Open
            && (pending_of(s) > st.cfg.max_backpressure || s.flags & OVER != 0)
        {
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
            st.shut.push(key as u32);
            st.arm(key);
        }
    }

    /// The peer hung up (EOF) or the socket failed. The connection is dead before `on_close`
    /// runs, so sends from it fail (`Closed`) and touch no socket.
    pub(crate) fn on_hangup(&mut self, key: usize) {
        if self.state.conns.get(key).is_none() {
            return;
        }
        self.state.kill(key, false);
        self.notify_close(key, CloseCode::ABNORMAL, "");
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
        st.env.memory.queued = st.env.memory.queued.saturating_sub(n);
        if (s.out_pos as usize) < s.out.len() {
            if blocked {
                s.flags |= BLOCKED;
            }
            return false;
        }
        // Everything went out: give the buffer back.
        s.out_pos = 0;
        recycle(&mut st.out_pool, std::mem::take(&mut s.out));
        if s.inflight != 0 {
            return false;
        }
        let was_blocked = s.flags & BLOCKED != 0;
        let was_paused = s.flags & READ_PAUSED != 0;
        s.flags &= !(BLOCKED | READ_PAUSED | OVER);
        if s.proto.state() == State::Closed {
            self.begin_linger(key);
            return false;
        }
        if was_blocked && s.flags & (OPENED | NOTIFIED | DEAD) == OPENED {
            self.guarded(Some(key), "on_drain", |h, core| h.on_drain(&mut Conn { core, key }));
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
        let before = pending_of(s);
        let pos = pos + n;
        if pos < buf.len() && s.flags & DEAD == 0 {
            s.inflight = (buf.len() - pos) as u32;
            s.flags |= BLOCKED;
            st.requeued(key, before);
            return Some((buf, pos));
        }
        s.inflight = 0;
        st.requeued(key, before);
        let s = &mut st.conns[key];
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

    /// Whether a dead connection must be closed with a reset (it was killed at a deadline or
    /// by shutdown: nothing it still holds may stay in the kernel).
    pub(crate) fn must_reset(&self, key: usize) -> bool {
        self.state.conns.get(key).is_some_and(|s| s.flags & RESET != 0)
    }

    /// Frees a dead connection's slot and bumps its key's generation, so ids of the departed
    /// connection never name the next one. A key whose generations are used up is retired.
    pub(crate) fn remove(&mut self, key: usize) {
        let st = &mut self.state;
        match st.conns.get(key) {
            Some(s) if s.flags & RETIRED == 0 => {}
            _ => return,
        }
        let Some(mut s) = st.conns.try_remove(key) else { return };
        st.env.memory.queued = st.env.memory.queued.saturating_sub(pending_of(&s));
        s.proto.release(&mut st.env);
        let gen = &mut st.gens[key];
        *gen = gen.wrapping_add(1);
        if *gen == RETIRED_GEN {
            // Hold the key for good with a tombstone (slab reuses the last freed key first).
            let tomb = Slot {
                flags: DEAD | RETIRED,
                proto: Connection::new_open(Role::Server, 0),
                out: Vec::new(),
                out_pos: 0,
                inflight: 0,
                timer_at: NO_TIMER,
                fd: -1,
                since: st.now,
                peer: s.peer,
                data: H::Data::default(),
            };
            let entry = st.conns.vacant_entry();
            debug_assert_eq!(entry.key(), key);
            if entry.key() == key {
                entry.insert(tomb);
                st.retired += 1;
            }
        }
    }

    /// Sets the loop's clock for this turn.
    pub(crate) fn set_now(&mut self, now: Instant) {
        self.state.now = now;
    }

    /// The loop's clock for this turn.
    pub(crate) fn now(&self) -> Instant {
        self.state.now
    }

    /// When the next timer is due.
    pub(crate) fn next_timer(&self) -> Option<Instant> {
        self.state.wheel.next_expiry()
    }

    /// Runs due timers: handshake and close deadlines, idle timeouts, auto-pings.
    pub(crate) fn expire_timers(&mut self) {
        let now = self.state.now;
        let mut expired = std::mem::take(&mut self.expired);
        self.state.wheel.expire(now, &mut expired);
        for (tick, (key, gen)) in expired.drain(..) {
            let key = key as usize;
            match self.state.conns.get_mut(key) {
                Some(s) if self.state.gens[key] == gen && s.timer_at == tick => {
                    s.timer_at = NO_TIMER
                }
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
        let close_timeout = self.state.env.limits.close_timeout;
        let s = &mut self.state.conns[key];
        if s.flags & DEAD != 0 {
            return;
        }
        if s.flags & CLOSING != 0 {
            if now >= s.since + close_timeout {
                // The close did not complete in time: whatever is queued, the peer is not
                // taking it. Gone, with a reset.
                self.state.counts.close_timeouts += 1;
                self.state.kill(key, true);
                self.notify_close(key, CloseCode::ABNORMAL, "close timed out");
            }
            return;
        }
        match s.proto.state() {
            State::Handshake => {
                if s.proto.handle_timeout(now) {
                    self.state.counts.handshake_timeouts += 1;
                    self.state.kill(key, true);
                }
            }
            State::Open => {
                if let Some(idle) = cfg.idle_timeout {
                    if now >= s.since + idle {
                        self.state.counts.idle_timeouts += 1;
                        self.state.close(key, CloseCode::GOING_AWAY, "idle timeout");
                        return;
                    }
                }
                if let Some(p) = cfg.auto_ping {
                    if s.flags & PINGED != 0 && now >= s.since + p * 2 {
                        self.state.counts.idle_timeouts += 1;
                        self.state.close(key, CloseCode::GOING_AWAY, "ping timeout");
                    } else if s.flags & PINGED == 0 && now >= s.since + p {
                        s.flags |= PINGED;
                        self.state.send(key, OpCode::Ping, b"");
                    }
                }
            }
            // Closing and Closed always carry `CLOSING` (see `note_close`).
            State::Closing | State::Closed => {}
        }
    }

    /// Starts a graceful shutdown: handshakes are dropped, open connections get close 1001.
    pub(crate) fn begin_shutdown(&mut self) {
        self.state.shutting_down = true;
        let keys: Vec<usize> = self.state.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            let s = &self.state.conns[key];
            if s.flags & DEAD != 0 {
                continue;
            }
            match s.proto.state() {
                State::Handshake => self.state.kill(key, true),
                State::Open => self.state.close(key, CloseCode::GOING_AWAY, "server shutdown"),
                _ => {}
            }
        }
    }

    /// Drops every remaining connection (end of a graceful shutdown).
    pub(crate) fn kill_all(&mut self) {
        let keys: Vec<usize> = self.state.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            if self.state.conns[key].flags & DEAD != 0 {
                continue;
            }
            self.state.kill(key, true);
            self.notify_close(key, CloseCode::ABNORMAL, "server shutdown");
        }
    }

    /// A value posted from another thread.
    pub(crate) fn on_post(&mut self, post: &Post) {
        self.guarded(None, "on_post", |h, core| h.on_post(&mut Ctx { core }, post));
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

/// Emptied send buffers kept for reuse, up to a byte limit (half of `Config::buffer_cache`);
/// buffers over 256 KiB are always freed.
#[derive(Debug)]
struct SendPool {
    bufs: Vec<Vec<u8>>,
    bytes: usize,
    limit: usize,
}

impl SendPool {
    fn new(limit: usize) -> Self {
        Self { bufs: Vec::new(), bytes: 0, limit }
    }

    fn take(&mut self) -> Option<Vec<u8>> {
        let b = self.bufs.pop()?;
        self.bytes -= b.capacity();
        Some(b)
    }
}

/// Gives an emptied send buffer back to the worker's pool, or frees it when the pool is full.
fn recycle(pool: &mut SendPool, mut buf: Vec<u8>) {
    let cap = buf.capacity();
    if cap > 0 && cap <= (256 << 10) && pool.bytes + cap <= pool.limit {
        buf.clear();
        pool.bytes += cap;
        pool.bufs.push(buf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An idle connection's user-space footprint: the slot (protocol state included) plus its
    /// slab tag, held to 208 bytes (plus 4 for its key's generation); the slab's capacity is
    /// reserved up front (untouched pages cost nothing), so the slot size is what a connection
    /// costs.
    #[test]
    fn idle_slot_is_small() {
        let slot = std::mem::size_of::<Slot<()>>();
        let conn = std::mem::size_of::<Connection>();
        eprintln!("Slot<()> = {slot} bytes, Connection = {conn} bytes");
        assert!(slot <= 208, "Slot<()> is {slot} bytes");
    }
}

/// The test backend and fake clock the core's tests (and, with the `testing` feature, the
/// fuzz targets) drive it with.
#[cfg(any(test, feature = "testing"))]
#[path = "core_harness.rs"]
pub(crate) mod testing;

#[cfg(test)]
#[path = "core_tests.rs"]
mod harness;
