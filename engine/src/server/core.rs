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
use std::cell::Cell;
use std::collections::HashMap;
use std::io::IoSlice;
use std::net::{SocketAddr, SocketAddrV6};
use std::os::fd::RawFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use slab::Slab;

use crate::proto::conn::{Event, HandshakeStatus};
use crate::proto::frame;
use crate::proto::{CloseCode, Connection, Decision, Env, OpCode, ProtocolError, Role, State};

use super::api::{Conn, ConnId, Ctx, Handler, Message, Post, SendStatus, TopicError, Upgrade};
use super::config::Config;
use super::handle::{ServerHandle, WorkerStats};
pub(crate) use super::outq::OutQ;
use super::outq::{Frame, FrameBuf, REF_COST};
use super::timer::Wheel;
use super::tls::{self, Step, TlsConn};
use super::topics::Topics;

/// The backend's hook for a write at once: one non-blocking write of `parts`, in order, to the
/// socket the backend lent as `fd`; returns the bytes taken (0 on any error, which the
/// backend's next flush meets and handles). Both backends use `io::sys::write_now`.
pub(crate) type WriteNow = fn(RawFd, &[IoSlice<'_>]) -> usize;

/// Most slices one write offers (the rest of a long queue goes in the next).
pub(crate) const WRITE_SLICES: usize = 64;

/// A published frame up to this long is copied into each subscriber's own bytes instead of
/// being queued by reference: a reference costs about as much (an `Rc` count, `REF_COST` =
/// 16 B in the queue, 16 B of iovec the kernel copies and walks), and copied frames leave
/// with the rest of the turn's output as one contiguous slice. Measured on fanout-10k-4x8
/// (epoll, 3-4 rounds each, benches/README.md): +27 % deliveries/s (medians) at 20 B, +5 % at
/// 100 B; at 512 B copying halved them (the deep queues of lagging subscribers then move and
/// reallocate far more bytes than references).
pub(crate) const COPY_FRAME_MAX: usize = 128;

/// A key's generation after its last use: the key is retired, never handed out again, so an
/// old [`ConnId`] can never come to name a new connection (after 2^32 - 1 uses of one slot).
const RETIRED_GEN: u32 = u32::MAX;

/// A worker's TLS scratch buffers keep at most this much capacity between uses.
const TLS_SCRATCH_KEEP: usize = 1 << 20;

/// Largest payload one send accepts: send queues count bytes in u32.
pub(crate) const MAX_SEND: usize = 1 << 31;

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
const SUBSCRIBED: u16 = 4096; // may hold topic subscriptions (the index has an entry)
const TLS: u16 = 8192; // speaks TLS: its state is `CoreState::tls[key]`
const ARMED: u16 = 16384; // a wheel entry is armed for it: `timer_at` holds its tick
const PEER_V6: u16 = 32768; // an IPv6 peer: its address is `CoreState::peers6[key]`

/// Whether wheel tick `a` comes before tick `b`, both given by their low 32 bits. Right while
/// they are less than 2^31 ticks apart: an armed entry's tick lies within the wheel's horizon
/// (1024 ticks) of the tick being expired, and so does any tick it is compared with.
fn tick_before(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

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
    pub(crate) messages_in: usize,
    pub(crate) messages_out: usize,
    pub(crate) deliveries: usize,
    pub(crate) publish_drops: usize,
    pub(crate) backpressure_closes: usize,
    pub(crate) tls_handshakes: usize,
    pub(crate) tls_errors: usize,
}

/// One connection's state in the worker. Its generation lives in `CoreState::gens`, which
/// outlives the slot. Besides the protocol state and the user data it is 32 bytes, all of
/// them paid by every idle connection: times are 32-bit stamps, the peer an IPv4 address and
/// port inline (an IPv6 peer's address lives in a side map).
#[derive(Debug)]
pub(crate) struct Slot<D> {
    proto: Connection,
    /// Bytes waiting for the socket (owned, and frames shared with other subscribers); `None`
    /// whenever it is empty (an idle connection owns no buffer).
    out: Option<Box<OutQ>>,
    /// Bytes handed to the kernel in a send that has not completed (completion backends). What
    /// they count against the memory budget is the flight's own [`OutQ::footprint`], given
    /// back in `on_send_done` (which the backend calls for every flight, a dead connection's
    /// too, before the slot is removed).
    inflight: u32,
    /// The low 32 bits of the armed wheel entry's tick; meaningful only under `ARMED`.
    timer_at: u32,
    /// The socket, for the direct write of large sends (owned by the backend, which drops
    /// the slot before or as it closes the socket).
    fd: RawFd,
    /// Until a close: the last time bytes arrived (coarse: the loop turn's clock). From the
    /// close on (`CLOSING`): when the close was sent or received; it never moves again. A
    /// [`CoreState::stamp`]; [`CoreState::instant_of`] turns it back into an instant.
    since: u32,
    /// The peer's IPv4 address (zero for an IPv6 peer, `PEER_V6`).
    ip4: [u8; 4],
    /// The peer's port, either family.
    port: u16,
    flags: u16,
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
    /// The instant the worker's clock started: the origin of its stamps and of the wheel.
    epoch: Instant,
    /// `now` as a stamp: milliseconds since `epoch`, rounded up, in 64 bits.
    now_ms: u64,
    /// IPv6 peers' addresses by key (`PEER_V6` in their flags), removed with the slot. Kept
    /// beside the slab, not in the slot: IPv4 peers, inline, pay nothing for it.
    peers6: HashMap<u32, SocketAddrV6>,
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
    /// This worker's topic index.
    pub(crate) topics: Topics,
    /// Subscribers to close after a fan-out (over `max_backpressure`, closing policy).
    to_close: Vec<u32>,
    /// Bytes of shared frames every queue let go of, to take off the memory budget.
    released: Rc<Cell<usize>>,
    /// TLS connections' state by key (`TLS` in their flags); empty on a plain server. Kept
    /// beside the slab, not in the slot: a plain connection pays nothing for it.
    tls: Vec<Option<Box<TlsConn>>>,
    /// Plaintext of a received record, for the core (one per worker).
    tls_buf: Vec<u8>,
    /// Plaintext a TLS connection's queue held, while it is sealed (one per worker).
    tls_plain: Vec<u8>,
    /// Whether a TLS error was logged on this worker (the first is; the rest are counted).
    tls_logged: bool,
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

    pub(crate) fn permessage_deflate(&self, key: usize) -> Option<crate::proto::PerMessageDeflate> {
        self.conns[key].proto.deflate()
    }

    pub(crate) fn peer_addr(&self, key: usize) -> SocketAddr {
        let s = &self.conns[key];
        if s.flags & PEER_V6 != 0 {
            if let Some(a) = self.peers6.get(&(key as u32)) {
                return SocketAddr::V6(*a);
            }
        }
        SocketAddr::from((s.ip4, s.port))
    }

    /// Milliseconds since the worker's epoch for `t`, rounded up (so a deadline counted
    /// from a stamp is never earlier than one counted from `t`).
    fn ms_of(epoch: Instant, t: Instant) -> u64 {
        let d = t.saturating_duration_since(epoch);
        let ms = d.as_millis() + u128::from(!d.subsec_nanos().is_multiple_of(1_000_000));
        u64::try_from(ms).unwrap_or(u64::MAX)
    }

    /// This loop turn's clock as a slot keeps it: the low 32 bits of `now_ms`. The stamps
    /// wrap after 49.7 days, which no stamp that is read can reach: one is read only while
    /// a deadline counts from it (at most 2 x `MAX_TIMEOUT`, 14 days, checked again at
    /// least once per wheel horizon, under 3 hours) or just after it was set.
    fn stamp(&self) -> u32 {
        self.now_ms as u32
    }

    /// The instant a stamp stands for: the latest at or before `now` with those low 32 bits.
    fn instant_of(&self, stamp: u32) -> Instant {
        let age = u64::from(self.stamp().wrapping_sub(stamp));
        self.epoch + Duration::from_millis(self.now_ms.saturating_sub(age))
    }

    pub(crate) fn buffered_amount(&self, key: usize) -> usize {
        pending_of(&self.conns[key])
    }

    fn mark_dirty(&mut self, key: usize) {
        let s = &mut self.conns[key];
        let tls_out =
            || self.tls.get(key).and_then(|t| t.as_ref()).is_some_and(|t| t.wants_write());
        if s.flags & DIRTY == 0
            && (s.out.as_ref().is_some_and(|q| !q.is_empty()) || (s.flags & TLS != 0 && tls_out()))
        {
            s.flags |= DIRTY;
            self.dirty.push(key as u32);
        }
    }

    /// The connection's send queue, taken from the pool if it has none.
    fn out_q<'s>(out_pool: &mut SendPool, out: &'s mut Option<Box<OutQ>>) -> &'s mut OutQ {
        out.get_or_insert_with(|| out_pool.take())
    }

    /// Gives an empty send queue back to the pool: an idle connection owns no buffer.
    fn tidy(out_pool: &mut SendPool, s: &mut Slot<D>) {
        if s.out.as_ref().is_some_and(|q| q.is_empty()) {
            if let Some(q) = s.out.take() {
                out_pool.recycle(q);
            }
        }
    }

    /// Brings the worker's count of queued bytes up to date after `key`'s queue changed from
    /// a footprint of `before` bytes, and hands back its queue if it is empty.
    fn requeued(&mut self, key: usize, before: usize) {
        self.settle_frames();
        let s = &mut self.conns[key];
        Self::tidy(&mut self.out_pool, s);
        let after = footprint_of(s);
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
        let before = footprint_of(s);
        if op.is_control() {
            let payload = &payload[..payload.len().min(125)];
            let out = Self::out_q(&mut self.out_pool, &mut s.out).bytes_mut();
            if s.proto.send_frame(op, true, payload, out).is_err() {
                self.requeued(key, before);
                return SendStatus::Closed;
            }
            let status = status_of(s);
            self.requeued(key, before);
            self.mark_dirty(key);
            return status;
        }
        let pending = Self::offer_corked(self.write, &mut self.out_pool, s, payload.len(), max);
        if payload.len() > MAX_SEND || pending.saturating_add(payload.len()) > max {
            self.counts.sends_dropped += 1;
            self.requeued(key, before);
            if self.cfg.close_on_backpressure_limit {
                self.counts.backpressure_closes += 1;
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
        let compressed = s.proto.deflate().is_some();
        if compressed {
            // Compressed (when it is worth it) into the queue: the frame differs from the
            // payload, so there is nothing to write straight from the sender's memory.
            let out = Self::out_q(&mut self.out_pool, &mut s.out).bytes_mut();
            if s.proto.send_message(op, payload, out, &mut self.env).is_err() {
                self.requeued(key, before);
                return SendStatus::Closed;
            }
        } else if payload.len() >= self.cfg.direct_write_min
            && s.inflight == 0
            // TLS: bytes reach the socket only sealed, at the flush.
            && s.flags & TLS == 0
            // Blocked: the bytes wait their turn. Read-paused: the drain that resumes reading
            // runs in the backend's flush (`on_written`), which must see the queue.
            && s.flags & (BLOCKED | READ_PAUSED) == 0
        {
            Self::write_now(self.write, &mut self.out_pool, s, Some((op, payload)));
        } else {
            let out = Self::out_q(&mut self.out_pool, &mut s.out).bytes_mut();
            if s.proto.send_frame(op, true, payload, out).is_err() {
                self.requeued(key, before);
                return SendStatus::Closed;
            }
        }
        self.counts.messages_out += 1;
        let status = status_of(&self.conns[key]);
        self.requeued(key, before);
        self.mark_dirty(key);
        status
    }

    /// Queues a shared frame (a published message) for `key`, under the same hard
    /// `max_backpressure` bound as a send: past it the frame is dropped for this subscriber
    /// (counted in `publish_drops`), or the subscriber is closed with 1008 when the server is
    /// configured to close at the limit. Returns whether it was queued; `close` collects the
    /// subscribers to close (after the fan-out loop).
    fn deliver(&mut self, key: usize, f: &Frame, close: &mut Vec<u32>) -> bool {
        let max = self.cfg.max_backpressure;
        let s = &mut self.conns[key];
        if !s.proto.can_send() || s.flags & DEAD != 0 {
            return false;
        }
        let (before, was) = (footprint_of(s), pending_of(s));
        let pending = Self::offer_corked(self.write, &mut self.out_pool, s, f.len(), max);
        if pending != was {
            self.requeued(key, before);
        }
        let s = &mut self.conns[key];
        if pending.saturating_add(f.len()) > max {
            self.counts.publish_drops += 1;
            if self.cfg.close_on_backpressure_limit {
                close.push(key as u32);
            }
            return false;
        }
        // A small frame is copied into the subscriber's own bytes (see `COPY_FRAME_MAX`).
        let copy = f.len() <= COPY_FRAME_MAX;
        let cost = if copy { f.len() } else { REF_COST };
        if !self.env.memory.fits(cost as u64) {
            self.counts.budget_refusals += 1;
            return false;
        }
        let q = Self::out_q(&mut self.out_pool, &mut s.out);
        if copy {
            q.bytes_mut().extend_from_slice(f);
        } else {
            q.push_frame(f);
        }
        self.env.memory.queued += cost;
        if s.flags & DIRTY == 0 {
            s.flags |= DIRTY;
            self.dirty.push(key as u32);
        }
        true
    }

    /// Subscribes an open connection to `topic`.
    pub(crate) fn subscribe(&mut self, key: usize, topic: &[u8]) -> Result<bool, TopicError> {
        self.handle.check_topic(topic)?;
        let s = &mut self.conns[key];
        if s.flags & (OPENED | NOTIFIED | DEAD) != OPENED || !s.proto.can_send() {
            return Err(TopicError::Closed);
        }
        s.flags |= SUBSCRIBED;
        Ok(self.topics.subscribe(key as u32, topic))
    }

    pub(crate) fn unsubscribe(&mut self, key: usize, topic: &[u8]) -> bool {
        self.conns[key].flags & SUBSCRIBED != 0 && self.topics.unsubscribe(key as u32, topic)
    }

    pub(crate) fn is_subscribed(&self, key: usize, topic: &[u8]) -> bool {
        self.conns[key].flags & SUBSCRIBED != 0 && self.topics.is_subscribed(key as u32, topic)
    }

    pub(crate) fn topics_of(&self, key: usize) -> impl Iterator<Item = &[u8]> {
        let any = self.conns[key].flags & SUBSCRIBED != 0;
        self.topics.topics_of(key as u32).filter(move |_| any)
    }

    /// Makes a shared frame of `bytes`, charging its length to the memory budget once.
    fn charge_frame(&mut self, bytes: Vec<u8>) -> Frame {
        self.env.memory.queued += bytes.len();
        FrameBuf::new(bytes, &self.released)
    }

    /// Takes the bytes of shared frames no queue holds any more off the memory budget.
    fn settle_frames(&mut self) {
        let r = self.released.take();
        if r > 0 {
            self.env.memory.queued = self.env.memory.queued.saturating_sub(r);
        }
    }

    /// Ends every subscription of a connection (it closed, or its slot is freed).
    fn drop_subscriptions(&mut self, key: usize) {
        if let Some(s) = self.conns.get_mut(key) {
            if s.flags & SUBSCRIBED != 0 {
                s.flags &= !SUBSCRIBED;
                self.topics.remove_conn(key as u32);
            }
        }
    }

    /// Publishes to this worker's subscribers of `topic` (but `exclude`) and sends the
    /// message on to every other worker that may hold one.
    pub(crate) fn publish(
        &mut self,
        topic: &[u8],
        msg: Message<'_>,
        exclude: Option<usize>,
    ) -> Result<(), TopicError> {
        self.handle.check_topic(topic)?;
        let payload = msg.as_bytes();
        if payload.len() > MAX_SEND {
            return Err(TopicError::TooLarge);
        }
        self.publish_local(topic, msg.opcode(), payload, exclude);
        self.handle.publish_others(self.worker as usize, topic, msg.opcode(), payload);
        self.handle.publish_remote(topic, msg.opcode(), payload);
        Ok(())
    }

    /// Fans a message out to this worker's subscribers of `topic`: the frame is built once
    /// and every subscriber's queue points at it. Returns the subscribers reached.
    pub(crate) fn publish_local(
        &mut self,
        topic: &[u8],
        op: OpCode,
        payload: &[u8],
        exclude: Option<usize>,
    ) -> usize {
        let Some(tid) = self.topics.id(topic) else { return 0 };
        // By index, not by lending the list out: nothing below subscribes or unsubscribes
        // (closes at the limit wait until the end), and a panic cannot leave it lent.
        let n = self.topics.subs_of(tid).len();
        if !(0..n).any(|i| Some(self.topics.subs_of(tid)[i] as usize) != exclude) {
            return 0;
        }
        // The frame is charged to the budget once (each subscriber's reference costs
        // `REF_COST` more): a worker over its budget publishes nothing.
        let frame_len = payload.len() as u64 + frame::MAX_HEADER_LEN as u64;
        if !self.env.memory.fits(frame_len) {
            self.counts.budget_refusals += 1;
            return 0;
        }
        let mut reached = 0;
        // Built at the first subscriber that needs it: the plain frame, and one compressed
        // frame per window size among subscribers that negotiated compression without
        // server context takeover (`None` inside: the message does not compress).
        let mut plain: Option<Frame> = None;
        let mut packed: [Option<Option<Frame>>; 16] = Default::default();
        let mut close = std::mem::take(&mut self.to_close);
        for i in 0..n {
            let key = self.topics.subs_of(tid)[i] as usize;
            if Some(key) == exclude {
                continue;
            }
            let proto = &self.conns[key].proto;
            let shared = match (proto.deflate(), proto.shared_send_bits()) {
                (None, _) => None,
                (Some(_), Some(bits)) => {
                    let slot = &mut packed[usize::from(bits & 15)];
                    if slot.is_none() {
                        let mut v = Vec::new();
                        let cfg = &self.cfg.deflate;
                        let ok =
                            self.env.contexts.write_shared_frame(cfg, bits, op, payload, &mut v);
                        *slot = Some(ok.then(|| self.charge_frame(v)));
                    }
                    slot.clone().flatten()
                }
                (Some(_), None) => {
                    // A window of its own (server context takeover): compressed for it
                    // alone, by its own compressor.
                    let drops = self.counts.sends_dropped;
                    match self.send(key, op, payload) {
                        SendStatus::Sent | SendStatus::Backpressure => {
                            reached += 1;
                            self.counts.messages_out -= 1; // counted with `reached` below
                        }
                        SendStatus::Dropped if self.counts.sends_dropped > drops => {
                            // A publish drop, not a send's (the policy is the same).
                            self.counts.sends_dropped = drops;
                            self.counts.publish_drops += 1;
                        }
                        SendStatus::Dropped | SendStatus::Closed | SendStatus::Forwarded => {}
                    }
                    continue;
                }
            };
            let f = match shared {
                Some(f) => f,
                None => match &plain {
                    Some(f) => f.clone(),
                    None => {
                        let f = self.charge_frame(build_frame(op, payload));
                        plain.insert(f).clone()
                    }
                },
            };
            if self.deliver(key, &f, &mut close) {
                reached += 1;
            }
        }
        self.counts.deliveries += reached;
        self.counts.messages_out += reached;
        // A frame no subscriber took (all full, or all closing) is let go of here: its bytes
        // come off the budget now, not at this worker's next write (which a worker whose
        // only subscribers never read may not have).
        drop((plain, packed));
        self.settle_frames();
        for k in close.drain(..) {
            self.counts.backpressure_closes += 1;
            self.close(k as usize, CloseCode::POLICY, "backpressure limit");
        }
        self.to_close = close;
        reached
    }

    /// Before `extra` more bytes are judged against `max`: when they would pass it and
    /// everything queued is only corked (the socket never refused it, nothing is in flight),
    /// the socket is offered the queue first, so a burst within one turn is not dropped for a
    /// peer that reads. Returns the bytes still waiting. The caller accounts the change.
    fn offer_corked(
        write: WriteNow,
        out_pool: &mut SendPool,
        s: &mut Slot<D>,
        extra: usize,
        max: usize,
    ) -> usize {
        let pending = pending_of(s);
        if pending.saturating_add(extra) > max
            && pending > 0
            && s.inflight == 0
            && s.flags & (BLOCKED | READ_PAUSED | TLS) == 0
        {
            Self::write_now(write, out_pool, s, None);
            return pending_of(s);
        }
        pending
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
        let mut iov = [IoSlice::new(&[]); WRITE_SLICES];
        let mut cnt = 0;
        let queued = s.out.as_ref().map_or(0, |q| q.len());
        if let Some(q) = &s.out {
            cnt = q.slices(&mut iov[..WRITE_SLICES - 2]);
        }
        let offered: usize = iov[..cnt].iter().map(|v| v.len()).sum();
        let whole = offered == queued;
        if whole {
            // The new frame goes right behind the queue, in the same call; if the queue is
            // longer than one call's slices, the frame is queued behind it instead.
            for part in [&h[..hn], payload] {
                if !part.is_empty() {
                    iov[cnt] = IoSlice::new(part);
                    cnt += 1;
                }
            }
        }
        let total: usize = iov[..cnt].iter().map(|v| v.len()).sum();
        let mut n = if cnt == 0 { 0 } else { write(s.fd, &iov[..cnt]) };
        if n > 0 && n < total {
            s.flags |= BLOCKED;
        }
        let q = n.min(queued);
        if let Some(out) = &mut s.out {
            out.advance(q);
        }
        n -= q;
        if frame.is_none() {
            // Nothing was added.
        } else if !whole || n < hn {
            let out = Self::out_q(out_pool, &mut s.out).bytes_mut();
            out.extend_from_slice(&h[n.min(hn)..hn]);
            out.extend_from_slice(payload);
        } else if n - hn < payload.len() {
            Self::out_q(out_pool, &mut s.out).bytes_mut().extend_from_slice(&payload[n - hn..]);
        }
        Self::tidy(out_pool, s);
    }

    /// Gives a just-accepted connection its TLS state, under the configuration in force now
    /// (a reload reaches new connections only).
    fn start_tls(&mut self, key: usize) {
        let made = match self.handle.inner.tls.current() {
            Some(c) => TlsConn::new(c).map_err(|e| e.to_string()),
            None => Err("no TLS configuration".to_string()),
        };
        match made {
            Ok(t) => {
                if self.tls.len() <= key {
                    self.tls.resize_with(key + 1, || None);
                }
                self.tls[key] = Some(Box::new(t));
                self.conns[key].flags |= TLS;
            }
            Err(e) => {
                log::warn!("worker {}: starting TLS: {e}", self.worker);
                self.counts.tls_errors += 1;
                self.kill(key, false);
            }
        }
    }

    /// A TLS connection failed (a bad record, a failed handshake, an alert from the peer): its
    /// alert, if rustls made one, or a plain 400 if it spoke HTTP to the TLS port, goes out
    /// with one non-blocking write, and the connection is dropped. Counted; the first on this
    /// worker is logged.
    fn tls_failed(&mut self, key: usize, e: &rustls::Error, http: bool) {
        self.counts.tls_errors += 1;
        let peer = self.peer_addr(key);
        let what = if http {
            "plaintext HTTP on the TLS port (answered 400)".to_string()
        } else {
            e.to_string()
        };
        if self.tls_logged {
            log::debug!("worker {}: TLS error from {peer}: {what}", self.worker);
        } else {
            self.tls_logged = true;
            log::warn!(
                "worker {}: TLS error from {peer}: {what} (that connection is dropped; further \
                 TLS errors are counted in stats)",
                self.worker
            );
        }
        let mut alert = Vec::new();
        if http {
            alert.extend_from_slice(tls::HTTP_ON_TLS_PORT);
        } else if let Some(t) = self.tls.get_mut(key).and_then(|t| t.as_mut()) {
            t.take_alert(&mut alert);
        }
        let s = &mut self.conns[key];
        // Only when nothing is queued or in flight: the alert must not cut into a record.
        if !alert.is_empty() && s.inflight == 0 && s.out.as_ref().is_none_or(|q| q.is_empty()) {
            (self.write)(s.fd, &[IoSlice::new(&alert)]);
        }
        self.kill(key, false);
    }

    /// Seals a TLS connection's plaintext into records: everything queued after its sealed
    /// part is encrypted by rustls (records of up to 16 KiB across message boundaries) into
    /// the queue in its place, after whatever records rustls itself had to send.
    fn seal(&mut self, key: usize) {
        let Some(s) = self.conns.get_mut(key) else { return };
        if s.flags & (TLS | DEAD) != TLS {
            return;
        }
        let Some(t) = self.tls.get_mut(key).and_then(|t| t.as_mut()) else { return };
        let queued = s.out.as_ref().map_or(0, |q| q.len());
        if queued <= t.sealed && !t.wants_write() {
            return;
        }
        let before = footprint_of(s);
        let q = Self::out_q(&mut self.out_pool, &mut s.out);
        // The plaintext leaves the queue: the whole owned buffer when that is all it holds
        // (an echo: no copy), else copied out.
        let mut plain = std::mem::take(&mut self.tls_plain);
        plain.clear();
        let mut from = 0;
        if queued > t.sealed {
            // Only with nothing sealed ahead of it: sealed records stay in the queue.
            let swapped = if t.sealed == 0 { q.swap_owned(&mut plain) } else { None };
            match swapped {
                Some(pos) => from = pos,
                None => {
                    q.for_each_tail(t.sealed, |part| plain.extend_from_slice(part));
                    q.truncate_unsent(t.sealed);
                }
            }
        }
        let plain_len = plain.len() - from;
        let established = t.established;
        let sealed = t.seal_into(if established { &plain[from..] } else { &[] }, q.bytes_mut());
        t.sealed = q.len();
        if !established && plain_len > 0 {
            // Not yet sealable: it stays plaintext after rustls' records.
            q.bytes_mut().extend_from_slice(&plain[from..]);
        }
        if plain.capacity() <= TLS_SCRATCH_KEEP {
            self.tls_plain = plain;
        }
        self.requeued(key, before);
        if let Err(e) = sealed {
            log::debug!("worker {}: sealing TLS records: {e}", self.worker);
            self.counts.tls_errors += 1;
            self.kill(key, false);
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
        let before = footprint_of(s);
        let out = Self::out_q(&mut self.out_pool, &mut s.out).bytes_mut();
        s.proto.close(now, code, reason, out, &self.env.limits);
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
            s.since = self.now_ms as u32;
            self.arm(key);
        }
    }

    /// The next instant something is due for this connection.
    fn deadline_of(&self, key: usize) -> Option<Instant> {
        let s = &self.conns[key];
        if s.flags & DEAD != 0 {
            return None;
        }
        let since = self.instant_of(s.since);
        if s.flags & CLOSING != 0 {
            return Some(since + self.env.limits.close_timeout);
        }
        let mut d = s.proto.deadline();
        if s.proto.state() == State::Open {
            let mut consider = |t: Instant| d = Some(d.map_or(t, |x| x.min(t)));
            if let Some(idle) = self.cfg.idle_timeout {
                consider(since + idle);
            }
            if let Some(p) = self.cfg.auto_ping {
                let n = if s.flags & PINGED != 0 { 2 } else { 1 };
                consider(since + p * n);
            }
        }
        d
    }

    /// Makes sure a wheel entry fires no later than the connection's next deadline.
    fn arm(&mut self, key: usize) {
        let Some(d) = self.deadline_of(key) else { return };
        let tick = self.wheel.tick_for(d) as u32;
        let s = &self.conns[key];
        if s.flags & ARMED == 0 || tick_before(tick, s.timer_at) {
            let at = self.wheel.insert(d, (key as u32, self.gens[key]));
            let s = &mut self.conns[key];
            s.timer_at = at as u32;
            s.flags |= ARMED;
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

/// A server frame (unmasked, final) of `payload`.
fn build_frame(op: OpCode, payload: &[u8]) -> Vec<u8> {
    let mut h = [0u8; frame::MAX_HEADER_LEN];
    let hn = frame::encode(true, 0, op, payload.len() as u64, None, &mut h);
    let mut v = Vec::with_capacity(hn + payload.len());
    v.extend_from_slice(&h[..hn]);
    v.extend_from_slice(payload);
    v
}

/// Bytes a connection has waiting for its socket: queued plus in flight.
fn pending_of<D>(s: &Slot<D>) -> usize {
    s.out.as_ref().map_or(0, |q| q.len()) + s.inflight as usize
}

/// What a connection's queued and in-flight bytes count against the worker's memory budget.
fn footprint_of<D>(s: &Slot<D>) -> usize {
    s.out.as_ref().map_or(0, |q| q.footprint())
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
        env.deflate = cfg.deflate;
        // Half the cache for assembly buffers (kept up to 1 MiB each), half for send buffers.
        const KEEP: usize = 1 << 20;
        env.pool = crate::proto::BufPool::new(cfg.buffer_cache / 2 / KEEP, KEEP);
        let send_cache = cfg.buffer_cache / 2;
        let wheel = Wheel::new(now, cfg.timer_tick);
        debug_assert!(
            2 * super::config::MAX_TIMEOUT.as_millis() + 1024 * cfg.timer_tick.as_millis()
                < 1 << 31,
            "slot stamps (32-bit milliseconds) must outlast every deadline"
        );
        let topics = Topics::new(worker, Arc::clone(&handle.inner.topics));
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
                epoch: now,
                now_ms: 0,
                peers6: HashMap::new(),
                out_pool: SendPool::new(send_cache),
                dirty: Vec::new(),
                shut: Vec::new(),
                dead: Vec::new(),
                wheel,
                shutting_down: false,
                counts: Counts::default(),
                panic_logged: false,
                write,
                topics,
                to_close: Vec::new(),
                released: Rc::new(Cell::new(0)),
                tls: Vec::new(),
                tls_buf: Vec::new(),
                tls_plain: Vec::new(),
                tls_logged: false,
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
        put(&stats.messages_in, c.messages_in);
        put(&stats.messages_out, c.messages_out);
        put(&stats.deliveries, c.deliveries);
        put(&stats.publish_drops, c.publish_drops);
        put(&stats.backpressure_closes, c.backpressure_closes);
        put(&stats.subscriptions, st.topics.subscriptions());
        put(&stats.tls_handshakes, c.tls_handshakes);
        put(&stats.tls_errors, c.tls_errors);
    }

    /// A connection arrived on socket `fd` (the backend keeps owning it), on a TLS listener
    /// when `secure`; returns its key.
    pub(crate) fn accept(&mut self, peer: SocketAddr, fd: RawFd, secure: bool) -> usize {
        let st = &mut self.state;
        let (ip4, v6) = match peer {
            SocketAddr::V4(a) => (a.ip().octets(), None),
            SocketAddr::V6(a) => ([0; 4], Some(a)),
        };
        let slot = Slot {
            flags: if v6.is_some() { PEER_V6 } else { 0 },
            proto: Connection::new_server(st.now, &st.env.limits),
            out: None,
            inflight: 0,
            since: st.stamp(),
            timer_at: 0,
            fd,
            ip4,
            port: peer.port(),
            data: H::Data::default(),
        };
        let key = st.conns.insert(slot);
        if let Some(a) = v6 {
            st.peers6.insert(key as u32, a);
        }
        if st.gens.len() <= key {
            st.gens.resize(key + 1, 0);
        }
        if secure {
            st.start_tls(key);
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

    /// Bytes arrived for `key`. They are parsed (and unmasked) in place; a TLS connection's
    /// are deciphered first.
    pub(crate) fn on_data(&mut self, key: usize, data: &mut [u8]) -> After {
        if self.state.conns.get(key).is_some_and(|s| s.flags & TLS != 0) {
            return self.on_tls_data(key, data);
        }
        self.on_plaintext(key, data)
    }

    /// Ciphertext arrived for a TLS connection: rustls decrypts its records where they lie,
    /// and the plaintext of each goes through [`Core::on_plaintext`] as if it had been read
    /// so. A record cut by the end of `data` is carried until the next read completes it.
    /// What rustls has to send (its handshake, alerts) marks the connection for the flush.
    fn on_tls_data(&mut self, key: usize, data: &mut [u8]) -> After {
        let mut buf = std::mem::take(&mut self.state.tls_buf);
        let mut after = After::Continue;
        let mut at = tls::Cursor::default();
        let mut first = true;
        loop {
            let st = &mut self.state;
            match st.conns.get(key) {
                Some(s) if s.flags & (DEAD | LINGER) == 0 => {}
                Some(s) if s.flags & LINGER != 0 => break, // discarding until EOF
                _ => {
                    after = After::StopReading;
                    break;
                }
            }
            let Some(t) = st.tls.get_mut(key).and_then(|t| t.as_mut()) else { break };
            let fresh = first && !t.established;
            first = false;
            buf.clear();
            let step = t.step(data, &mut at, &mut buf);
            if !t.established && !t.is_handshaking() {
                t.established = true;
                st.counts.tls_handshakes += 1;
            }
            match step {
                Step::Again => {}
                Step::More => break,
                Step::Plain => {
                    // The whole turn's plaintext is handled, paused or not (as a plain
                    // connection's read buffer is): nothing is held back.
                    if !buf.is_empty() && self.on_plaintext(key, &mut buf) == After::StopReading {
                        after = After::StopReading;
                    }
                }
                Step::PeerClosed => {
                    // close_notify: the peer's end of the stream, as an EOF.
                    self.on_hangup(key);
                    after = After::StopReading;
                    break;
                }
                Step::Failed(e) => {
                    let http = fresh && tls::looks_like_http(data);
                    self.state.tls_failed(key, &e, http);
                    after = After::StopReading;
                    break;
                }
            }
        }
        if buf.capacity() <= TLS_SCRATCH_KEEP {
            self.state.tls_buf = buf;
        }
        if self.state.conns.get(key).is_some_and(|s| s.flags & DEAD == 0) {
            self.state.mark_dirty(key);
        }
        after
    }

    /// Plaintext arrived for `key` (a plain connection's bytes, or a TLS connection's
    /// deciphered ones). They are parsed (and unmasked) in place.
    fn on_plaintext(&mut self, key: usize, data: &mut [u8]) -> After {
        let now = self.state.stamp();
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
            let before = footprint_of(s);
            let out = CoreState::<H::Data>::out_q(&mut st.out_pool, &mut s.out).bytes_mut();
            let r = s.proto.read(&mut data[pos..], out, &mut st.env);
            st.requeued(key, before);
            match r {
                Ok(r) => {
                    pos += r.consumed;
                    let Some(ev) = r.event else { break };
                    self.dispatch(key, ev);
                }
                Err(e) => {
                    log::debug!(
                        "worker {}: protocol error from {}: {e}",
                        st.worker,
                        st.peer_addr(key)
                    );
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
        let peer = st.peer_addr(key);
        let s = &mut st.conns[key];
        let handler = &mut self.handler;
        let mut user: Option<H::Data> = None;
        let mut panic: Option<(&str, Box<dyn std::any::Any + Send>)> = None;
        let before = footprint_of(s);
        let out = CoreState::<H::Data>::out_q(&mut st.out_pool, &mut s.out).bytes_mut();
        let res = s.proto.handshake_negotiate(data, out, &st.env, |req, n| {
            if !n.is_upgrade() {
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
                Ok(Upgrade::Accept { protocol, headers, data, compress }) => {
                    if !compress {
                        n.decline_deflate();
                    }
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
                self.state.counts.messages_in += 1;
                self.guarded(Some(key), "on_message", |h, core| {
                    h.on_message(&mut Conn { core, key }, Message::Text(&t))
                });
                if let Cow::Owned(s) = t {
                    self.state.env.pool.put(s.into_bytes());
                }
            }
            Event::Binary(b) => {
                self.state.counts.messages_in += 1;
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
            // Subscriptions end with the connection; `on_close` could still see its own.
            self.state.drop_subscriptions(key);
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
            if pending_of(s) == 0 {
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
        if s.flags & (TLS | LINGER | DEAD) == TLS {
            if let Some(t) = st.tls.get_mut(key).and_then(|t| t.as_mut()) {
                // The TLS stream ends with our close_notify: the write side is shut only once
                // it has gone out (`on_written` comes back here). Not before the handshake
                // completed: then it is shut at once.
                if !t.notified && t.send_close_notify() {
                    st.mark_dirty(key);
                    return;
                }
            }
        }
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

    /// Bytes waiting for this connection's socket: fills `iov` with them in order (as many
    /// slices as fit) and returns how many slices it filled; 0 when nothing waits.
    pub(crate) fn pending<'a>(&'a mut self, key: usize, iov: &mut [IoSlice<'a>]) -> usize {
        self.state.seal(key);
        match self.state.conns.get(key) {
            Some(Slot { flags, out: Some(q), .. }) if flags & DEAD == 0 => q.slices(iov),
            _ => 0,
        }
    }

    /// How many bytes wait for this connection's socket (not counting any in flight). Only the
    /// test harness asks.
    #[cfg(any(test, feature = "testing"))]
    pub(crate) fn pending_len(&self, key: usize) -> usize {
        match self.state.conns.get(key) {
            Some(Slot { flags, out: Some(q), .. }) if flags & DEAD == 0 => q.len(),
            _ => 0,
        }
    }

    /// The socket took `n` bytes of [`Core::pending`]; `blocked` if it refused the rest.
    /// Returns whether the backend should resume reading (a paused connection drained).
    pub(crate) fn on_written(&mut self, key: usize, n: usize, blocked: bool) -> bool {
        let st = &mut self.state;
        let Some(s) = st.conns.get_mut(key) else { return false };
        if s.flags & TLS != 0 {
            if let Some(t) = st.tls.get_mut(key).and_then(|t| t.as_mut()) {
                t.sealed = t.sealed.saturating_sub(n);
            }
        }
        if let Some(q) = &mut s.out {
            let before = q.footprint();
            q.advance(n);
            st.env.memory.queued = st.env.memory.queued.saturating_sub(before - q.footprint());
            // Frames the advance let go of, if it was their last queue.
            let r = st.released.take();
            st.env.memory.queued = st.env.memory.queued.saturating_sub(r);
            if !q.is_empty() {
                if blocked {
                    s.flags |= BLOCKED;
                }
                return false;
            }
        }
        // Everything went out: give the queue back.
        CoreState::<H::Data>::tidy(&mut st.out_pool, s);
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

    /// Takes the queue for a send the kernel owns until its completion (completion backends).
    pub(crate) fn take_out(&mut self, key: usize) -> Option<Box<OutQ>> {
        self.state.seal(key);
        let s = self.state.conns.get_mut(key)?;
        if s.flags & DEAD != 0 || s.inflight != 0 || s.out.as_ref().is_none_or(|q| q.is_empty()) {
            return None;
        }
        let q = s.out.take()?;
        s.inflight = q.len() as u32;
        if let Some(t) = self.state.tls.get_mut(key).and_then(|t| t.as_mut()) {
            t.sealed = 0; // the whole queue left, sealed
        }
        Some(q)
    }

    /// A send from [`Core::take_out`] completed with `n` bytes written. Returns the queue to
    /// send again when bytes remain (they go before anything queued since), or `None` when it
    /// all went out; `resume` is set when a paused connection should read again.
    pub(crate) fn on_send_done(
        &mut self,
        key: usize,
        mut q: Box<OutQ>,
        n: usize,
        resume: &mut bool,
    ) -> Option<Box<OutQ>> {
        let st = &mut self.state;
        let s = st.conns.get_mut(key)?;
        let before = q.footprint();
        q.advance(n.min(q.len()));
        if !q.is_empty() && s.flags & DEAD == 0 {
            s.inflight = q.len() as u32;
            s.flags |= BLOCKED;
            st.env.memory.queued = st.env.memory.queued.saturating_sub(before - q.footprint());
            return Some(q);
        }
        s.inflight = 0;
        st.env.memory.queued = st.env.memory.queued.saturating_sub(before);
        st.out_pool.recycle(q);
        st.settle_frames();
        let s = &mut st.conns[key];
        if s.flags & DEAD != 0 {
            return None;
        }
        if s.out.as_ref().is_some_and(|q| !q.is_empty()) {
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

    /// Deliveries of published messages so far (a running count).
    pub(crate) fn deliveries(&self) -> usize {
        self.state.counts.deliveries
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
        st.drop_subscriptions(key);
        if let Some(t) = st.tls.get_mut(key) {
            *t = None;
        }
        let Some(mut s) = st.conns.try_remove(key) else { return };
        if s.flags & PEER_V6 != 0 {
            st.peers6.remove(&(key as u32));
        }
        st.env.memory.queued = st.env.memory.queued.saturating_sub(footprint_of(&s));
        if let Some(q) = s.out.take() {
            st.out_pool.recycle(q);
        }
        st.settle_frames();
        s.proto.release(&mut st.env);
        let gen = &mut st.gens[key];
        *gen = gen.wrapping_add(1);
        if *gen == RETIRED_GEN {
            // Hold the key for good with a tombstone (slab reuses the last freed key first).
            let tomb = Slot {
                flags: DEAD | RETIRED,
                proto: Connection::new_open(Role::Server, 0),
                out: None,
                inflight: 0,
                timer_at: 0,
                fd: -1,
                since: st.stamp(),
                ip4: [0; 4],
                port: 0,
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
        self.state.now_ms = CoreState::<H::Data>::ms_of(self.state.epoch, now);
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
                Some(s)
                    if self.state.gens[key] == gen
                        && s.flags & ARMED != 0
                        && s.timer_at == tick as u32 =>
                {
                    s.flags &= !ARMED
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
        let Some(s) = self.state.conns.get(key) else { return };
        let since = self.state.instant_of(s.since);
        let s = &mut self.state.conns[key];
        if s.flags & DEAD != 0 {
            return;
        }
        if s.flags & CLOSING != 0 {
            if now >= since + close_timeout {
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
                    if now >= since + idle {
                        self.state.counts.idle_timeouts += 1;
                        self.state.close(key, CloseCode::GOING_AWAY, "idle timeout");
                        return;
                    }
                }
                if let Some(p) = cfg.auto_ping {
                    if s.flags & PINGED != 0 && now >= since + p * 2 {
                        self.state.counts.idle_timeouts += 1;
                        self.state.close(key, CloseCode::GOING_AWAY, "ping timeout");
                    } else if s.flags & PINGED == 0 && now >= since + p {
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

    /// A message published on another worker or thread.
    pub(crate) fn on_publish(&mut self, topic: &[u8], op: OpCode, payload: &[u8]) {
        self.state.publish_local(topic, op, payload, None);
    }

    /// A close requested from another thread.
    pub(crate) fn close_id(&mut self, id: ConnId, code: CloseCode, reason: &str) {
        if let Some(key) = self.state.key_of(id) {
            self.state.close(key, code, reason);
        }
    }
}

/// Emptied send queues kept for reuse, up to a byte limit (half of `Config::buffer_cache`);
/// queues holding over 256 KiB are always freed.
#[derive(Debug)]
struct SendPool {
    /// Boxed as the slots hold them, so a queue moves in and out without reallocating.
    #[allow(clippy::vec_box)]
    bufs: Vec<Box<OutQ>>,
    bytes: usize,
    limit: usize,
}

impl SendPool {
    fn new(limit: usize) -> Self {
        Self { bufs: Vec::new(), bytes: 0, limit }
    }

    fn take(&mut self) -> Box<OutQ> {
        match self.bufs.pop() {
            Some(q) => {
                self.bytes -= q.capacity() + std::mem::size_of::<OutQ>();
                q
            }
            None => Box::default(),
        }
    }

    /// Takes an emptied queue back, or frees it when the pool is full.
    fn recycle(&mut self, mut q: Box<OutQ>) {
        let cap = q.capacity() + std::mem::size_of::<OutQ>();
        if cap <= (256 << 10) && self.bytes + cap <= self.limit {
            q.clear();
            self.bytes += cap;
            self.bufs.push(q);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An idle connection's user-space footprint: the slot (protocol state included) plus its
    /// slab tag (plus 4 for its key's generation); the slab's capacity is reserved up front
    /// (untouched pages cost nothing), so the slot size is what a connection costs. The
    /// worker's part, beside the protocol state (`proto::Connection`, bounded in its own
    /// test), is held to 32 bytes; an 8-byte user datum (the demo's `Route`) adds 8.
    #[test]
    fn idle_slot_is_small() {
        use std::mem::size_of;
        let slot = size_of::<Slot<()>>();
        let conn = size_of::<Connection>();
        // Laid out as slab's own `Entry` (a vacant slot holds the next free key).
        #[allow(dead_code)]
        enum Entry<T> {
            Vacant(usize),
            Occupied(T),
        }
        let entry = size_of::<Entry<Slot<()>>>();
        eprintln!("Slot<()> = {slot} bytes (slab entry {entry}), Connection = {conn} bytes");
        assert!(slot - conn <= 32, "Slot<()> is {slot} bytes, {} beside Connection", slot - conn);
        assert!(size_of::<Slot<u64>>() - conn <= 40, "Slot<u64> beside Connection");
        // With the protocol state's own bound (56): an idle connection stays well under the
        // 160 bytes per connection issue 15 asks of RSS.
        assert!(slot <= 88, "Slot<()> is {slot} bytes");
        assert!(entry <= 88, "the slab entry is {entry} bytes");
    }

    #[test]
    fn tick_before_holds_across_the_u32_wrap() {
        assert!(tick_before(1, 2));
        assert!(!tick_before(2, 2));
        assert!(!tick_before(3, 2));
        assert!(tick_before(u32::MAX - 5, 3), "a tick just before the wrap");
        assert!(!tick_before(3, u32::MAX - 5), "a tick just after the wrap");
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

#[cfg(test)]
#[path = "tls_tests.rs"]
mod tls_harness;
