//! Fanout mode: every connection is in one broadcast room. Publisher `p`'s message `seq` is
//! a text frame `hex4(p) ++ hex12(seq) ++ pattern[(p * 131 + seq) % 251 ..]` (the pattern is
//! the same in every thread), so any receiver can check it byte for byte without having seen
//! it sent; per connection, each publisher's sequence numbers must rise (a gap is `lost`, a
//! step back is an `order` error). Send times go into a shared per-publisher ring of atomics
//! (the subscriber that receives a message may live on another thread). Publishers run closed
//! loop (K of their own messages outstanding) or open loop (`--rate`, paced here). With
//! `--topics N` there are N rooms: publisher `p` is in room `p % N`, and a message reaching a
//! connection of another room is a `wrong_room` error; order and loss are checked per
//! publisher as with one room, so per room.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sockeye::proto::frame::{self, OpCode, MAX_HEADER_LEN};
use sockeye::proto::mask::unmask;

use super::super::args::Mode;
use super::conn::{xorshift, Conn, St};
use super::ctx::Ctx;

/// Bits of a send stamp that hold the send time (ns since `Shared::base`, modulo 2^40 ≈ 18
/// minutes; latencies are taken modulo the same).
const STAMP_TS_BITS: u32 = 40;
const STAMP_TS_MASK: u64 = (1 << STAMP_TS_BITS) - 1;
/// Total stamp slots over all publishers (2^21 × 8 bytes = 16 MiB), at least 2^12 each.
const STAMP_TOTAL_BITS: u32 = 21;

/// Fanout header: 4 hex digits of publisher id, 12 of sequence number.
pub(super) const FAN_PREFIX: usize = 16;

/// Seed of the fanout pattern: every thread must derive the same one.
const FAN_SEED: u64 = 0x5eed_fa40_07c0_ffee;

/// Fanout: what publishers and receivers on different threads share.
#[derive(Debug, Default)]
pub(crate) struct FanShared {
    /// Per publisher: messages queued so far (a message `seq >= sent` was never published).
    pub(crate) sent: Box<[AtomicU64]>,
    /// Per publisher, `1 << bits` send stamps indexed by `seq % (1 << bits)`: the send time
    /// in the low 40 bits, `(seq >> bits) % 2^24` above it (so a slot already reused for a
    /// later message is recognised and the latency is not sampled).
    stamps: Box<[AtomicU64]>,
    bits: u32,
}

impl FanShared {
    pub(crate) fn new(publishers: usize) -> FanShared {
        if publishers == 0 {
            return FanShared::default();
        }
        let log = usize::BITS - (publishers - 1).leading_zeros();
        let bits = STAMP_TOTAL_BITS.saturating_sub(log).max(12);
        FanShared {
            sent: (0..publishers).map(|_| AtomicU64::new(0)).collect(),
            stamps: (0..publishers << bits).map(|_| AtomicU64::new(0)).collect(),
            bits,
        }
    }

    fn stamp(&self, p: usize, seq: u64, now: u64) {
        let mask = (1u64 << self.bits) - 1;
        let v = (now & STAMP_TS_MASK) | (((seq >> self.bits) & 0xff_ffff) << STAMP_TS_BITS);
        self.stamps[(p << self.bits) | (seq & mask) as usize].store(v, Ordering::Relaxed);
        self.sent[p].store(seq + 1, Ordering::Release);
    }

    /// `now` minus the send time of `p`'s message `seq`, if its slot still holds it.
    fn latency(&self, p: usize, seq: u64, now: u64) -> Option<u64> {
        let mask = (1u64 << self.bits) - 1;
        let v = self.stamps[(p << self.bits) | (seq & mask) as usize].load(Ordering::Relaxed);
        ((v >> STAMP_TS_BITS) == (seq >> self.bits) & 0xff_ffff)
            .then(|| now.wrapping_sub(v) & STAMP_TS_MASK)
    }

    /// Messages publisher `p` has queued.
    fn published(&self, p: usize) -> u64 {
        self.sent[p].load(Ordering::Acquire)
    }
}

impl Ctx {
    /// Fanout: text messages of `size` bytes, K outstanding per publisher (closed loop) or
    /// `rate` per second; the pattern comes from a fixed seed so that all threads agree.
    pub(super) fn fanout(
        size: usize,
        inflight: u64,
        rate: f64,
        topics: usize,
        fan: Arc<FanShared>,
    ) -> Ctx {
        let mut seed = FAN_SEED;
        let mut ctx = Ctx::new(Mode::Fanout, true, size, inflight, &mut seed);
        ctx.publishers = fan.sent.len();
        ctx.fan = fan;
        ctx.rate = rate;
        ctx.topics = topics;
        ctx
    }

    /// The header of publisher `p`'s message `seq`.
    #[inline]
    pub(super) fn fan_prefix(p: usize, seq: u64) -> [u8; FAN_PREFIX] {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut h = [0u8; FAN_PREFIX];
        let v = ((p as u64) << 48) | (seq & ((1 << 48) - 1));
        for (i, b) in h.iter_mut().enumerate() {
            *b = HEX[((v >> (60 - 4 * i)) & 15) as usize];
        }
        h
    }

    /// Parses a fanout header: (publisher, seq), or why it cannot be one of ours.
    pub(super) fn parse_fan_prefix(
        &self,
        h: &[u8; FAN_PREFIX],
    ) -> Result<(usize, u64), &'static str> {
        let mut v = 0u64;
        for &b in h {
            let d = match b {
                b'0'..=b'9' => b - b'0',
                b'a'..=b'f' => b - b'a' + 10,
                _ => return Err("message header is not 16 lowercase hex digits"),
            };
            v = (v << 4) | u64::from(d);
        }
        let (p, seq) = ((v >> 48) as usize, v & ((1 << 48) - 1));
        if p >= self.publishers {
            return Err("message from a publisher that does not exist");
        }
        if seq >= self.fan.published(p) {
            return Err("message that was never published");
        }
        Ok((p, seq))
    }

    /// Where publisher `p`'s message `seq` starts in the pattern.
    #[inline]
    pub(super) fn fan_offset(p: usize, seq: u64) -> usize {
        ((p as u64 * 131 + seq) % 251) as usize
    }

    /// Whether `chunk` equals bytes `off..` (past the header) of `p`'s message `seq`.
    #[inline]
    pub(super) fn fan_verify(&self, p: usize, seq: u64, off: usize, chunk: &[u8]) -> bool {
        let b = Self::fan_offset(p, seq) + off - FAN_PREFIX;
        chunk == &self.pattern[b..b + chunk.len()]
    }
}

impl Conn {
    /// Fanout: makes this connection publisher `p`, with room for what it may queue at once
    /// (K messages closed loop; open loop at least 64, what accumulates while the socket
    /// does not take them stays due instead).
    pub(super) fn make_publisher(&mut self, ctx: &Ctx, p: usize) {
        self.pub_id = Some(p);
        let msgs = if ctx.rate > 0.0 { ctx.inflight.max(64) } else { ctx.inflight } as usize;
        self.wbuf = Vec::with_capacity(msgs * (ctx.size + MAX_HEADER_LEN) + 256);
    }

    /// Whether one more fanout message fits in the write buffer without growing it.
    pub(super) fn fan_room(&self, ctx: &Ctx) -> bool {
        self.wbuf.len() - self.wpos + ctx.size + MAX_HEADER_LEN + 128 <= self.wbuf.capacity()
    }

    /// Fanout: appends this publisher's next message, stamped `now`.
    #[inline]
    pub(super) fn queue_fan(&mut self, ctx: &mut Ctx, now: u64) {
        let Some(p) = self.pub_id else { return };
        self.compact();
        let seq = self.send_seq;
        self.send_seq += 1;
        ctx.fan.stamp(p, seq, now);
        ctx.fc.published_total += 1;
        if ctx.measuring {
            ctx.fc.published += 1;
        }
        let key = xorshift(&mut self.rng).to_le_bytes();
        let mut h = [0u8; MAX_HEADER_LEN];
        let n = frame::encode(true, 0, OpCode::Text, ctx.size as u64, Some(key), &mut h);
        self.wbuf.extend_from_slice(&h[..n]);
        let start = self.wbuf.len();
        self.wbuf.extend_from_slice(&Ctx::fan_prefix(p, seq));
        let b = Ctx::fan_offset(p, seq);
        self.wbuf.extend_from_slice(&ctx.pattern[b..b + ctx.size - FAN_PREFIX]);
        unmask(&mut self.wbuf[start..], key, 0);
    }

    /// Fanout, closed loop: tops the publisher up to K messages it has not received back.
    pub(super) fn fan_refill(&mut self, ctx: &mut Ctx, now: u64) {
        if self.pub_id.is_none() || ctx.rate > 0.0 || !ctx.sending || self.st != St::Open {
            return;
        }
        while self.send_seq - self.own_acked < ctx.inflight {
            self.queue_fan(ctx, now);
        }
    }

    /// Fanout: payload bytes of the current message, straight from the read buffer: the
    /// header is gathered (it may arrive in pieces), then the rest is compared in place.
    #[inline]
    pub(super) fn fan_chunk(&mut self, ctx: &mut Ctx, chunk: &[u8]) {
        let mut c = chunk;
        if self.msg_off < FAN_PREFIX {
            let n = (FAN_PREFIX - self.msg_off).min(c.len());
            self.pre[self.msg_off..self.msg_off + n].copy_from_slice(&c[..n]);
            self.msg_off += n;
            c = &c[n..];
            if self.msg_off == FAN_PREFIX {
                match ctx.parse_fan_prefix(&self.pre) {
                    Ok((p, _)) if ctx.pub_room(p) != self.room => {
                        if !self.msg_bad {
                            ctx.note(format!(
                                "message of publisher {p} (room t{}) on a connection of room t{}",
                                ctx.pub_room(p),
                                self.room
                            ));
                        }
                        self.msg_bad = true;
                        self.msg_foreign = true;
                    }
                    Ok((p, seq)) => {
                        self.cur_pub = p;
                        self.cur_seq = seq;
                    }
                    Err(why) => {
                        if !self.msg_bad {
                            ctx.note(format!("{why}: {:?}", String::from_utf8_lossy(&self.pre)));
                        }
                        self.msg_bad = true;
                    }
                }
            }
        }
        if !c.is_empty() {
            if !self.msg_bad && !ctx.fan_verify(self.cur_pub, self.cur_seq, self.msg_off, c) {
                self.msg_bad = true;
            }
            self.msg_off += c.len();
        }
    }

    /// Fanout: a whole message received; checks it and the publisher's sequence.
    pub(super) fn fan_complete(&mut self, ctx: &mut Ctx, now: u64) {
        let (p, seq) = (self.cur_pub, self.cur_seq);
        let ok = !self.msg_bad && self.msg_off == ctx.size;
        let foreign = self.msg_foreign;
        self.msg_off = 0;
        self.msg_bad = false;
        self.msg_foreign = false;
        if foreign {
            ctx.errors.wrong_room += 1;
            return;
        }
        if !ok {
            ctx.errors.mismatch += 1;
            ctx.note("fanout message differs from what was published".into());
            return;
        }
        let expect = self.next[p];
        if seq < expect {
            ctx.errors.order += 1;
            ctx.note(format!("publisher {p}: message {seq} received after message {}", expect - 1));
            return;
        }
        self.next[p] = seq + 1;
        let gap = seq - expect;
        match self.pub_id {
            None => {
                ctx.fc.lost += gap;
                ctx.done += 1;
                if ctx.measuring {
                    ctx.fc.lost_window += gap;
                    ctx.msgs += 1;
                    ctx.bytes += ctx.size as u64;
                    match ctx.fan.latency(p, seq, now) {
                        Some(l) => ctx.hist.record(l),
                        None => ctx.fc.unsampled += 1,
                    }
                }
            }
            Some(me) => {
                ctx.fc.publisher_lost += gap;
                if p == me {
                    self.own_acked = seq + 1;
                    self.last_ack = now;
                    self.fan_refill(ctx, now);
                }
            }
        }
    }
}

/// Fanout, open loop: queues what each publisher of this worker is due (message `seq` is due
/// at `kick + seq / rate`), as far as its write buffer has room, and flushes. Returns how long
/// until the next message is due on a publisher that has room (`None`: none has).
pub(super) fn fan_pace(
    ctx: &mut Ctx,
    conns: &mut [Conn],
    pubs: &[usize],
    kick: u64,
    now: u64,
) -> Option<Duration> {
    let mut next: Option<u64> = None;
    for &i in pubs {
        let c = &mut conns[i];
        if c.st != St::Open {
            continue;
        }
        let due = ((now.saturating_sub(kick)) as f64 * ctx.rate / 1e9) as u64 + 1;
        let before = c.send_seq;
        while c.send_seq < due && c.fan_room(ctx) {
            c.queue_fan(ctx, now);
        }
        if c.send_seq > before {
            if let Err(e) = c.flush() {
                c.kill(ctx, e);
                continue;
            }
        }
        if c.fan_room(ctx) {
            let at = kick + (c.send_seq as f64 * 1e9 / ctx.rate) as u64;
            next = Some(next.map_or(at, |n| n.min(at)));
        }
    }
    next.map(|at| Duration::from_nanos(at.saturating_sub(now)))
}

/// Closed loop: a publisher whose K messages were all dropped would wait forever; after 2 s
/// without any of them back it gets one more.
pub(super) fn unstall(ctx: &mut Ctx, conns: &mut [Conn], pubs: &[usize]) {
    let ns = ctx.now_ns();
    for &i in pubs {
        let c = &mut conns[i];
        if c.st == St::Open && ns.saturating_sub(c.last_ack) > 2_000_000_000 {
            c.last_ack = ns;
            c.queue_fan(ctx, ns);
            ctx.fc.stalls += 1;
            if let Err(e) = c.flush() {
                c.kill(ctx, e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::conn::Fail;
    use super::super::testutil::client_payloads;
    use super::super::Errors;
    use super::*;
    use sockeye::proto::frame::{decode, write_frame};

    /// The text payloads of the masked client frames in `wbuf`, unmasked.
    fn sent_texts(wbuf: &[u8]) -> Vec<Vec<u8>> {
        client_payloads(wbuf)
            .into_iter()
            .map(|(op, p)| {
                assert_eq!(op, OpCode::Text);
                p
            })
            .collect()
    }

    /// A fanout context with `publishers` publishers (closed loop, K = `k`), measuring.
    fn fan_setup(publishers: usize, size: usize, k: u64, rate: f64) -> (Ctx, Vec<Conn>, u64) {
        let mut seed = 11;
        let mut ctx = Ctx::fanout(size, k, rate, 0, Arc::new(FanShared::new(publishers)));
        ctx.measuring = true;
        let pubs = (0..publishers)
            .map(|p| {
                let mut c = Conn::new(&ctx, "/chat", "x", &mut seed);
                c.make_publisher(&ctx, p);
                c.st = St::Open;
                c
            })
            .collect();
        (ctx, pubs, seed)
    }

    fn subscriber(ctx: &Ctx, seed: &mut u64) -> Conn {
        let mut c = Conn::new(ctx, "/chat", "x", seed);
        c.st = St::Open;
        c
    }

    /// Publishes `n` messages per publisher, round robin; returns them in publish order.
    fn publish(ctx: &mut Ctx, pubs: &mut [Conn], n: usize, now: u64) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for _ in 0..n {
            for c in pubs.iter_mut() {
                c.queue_fan(ctx, now);
                out.extend(sent_texts(&c.wbuf));
                c.wbuf.clear();
            }
        }
        out
    }

    /// Server frames relaying `msgs` (every third fragmented in two around a ping).
    fn relay(msgs: &[Vec<u8>]) -> Vec<u8> {
        let mut server = Vec::new();
        for (i, p) in msgs.iter().enumerate() {
            if i % 3 == 1 && p.len() >= 2 {
                let (a, b) = p.split_at(p.len() / 2);
                write_frame(&mut server, OpCode::Text, false, a);
                write_frame(&mut server, OpCode::Ping, true, b"hi");
                write_frame(&mut server, OpCode::Continuation, true, b);
            } else {
                write_frame(&mut server, OpCode::Text, true, p);
            }
        }
        server
    }

    fn fan_feed(ctx: &mut Ctx, c: &mut Conn, bytes: &[u8], split: usize, now: u64) {
        for chunk in bytes.chunks(split) {
            c.on_data(ctx, chunk, now).unwrap_or_else(|e| panic!("{e}"));
        }
    }

    #[test]
    fn fanout_header_and_pattern() {
        let (mut ctx, mut pubs, _) = fan_setup(2, 24, 1, 0.0);
        let m = publish(&mut ctx, &mut pubs, 2, 0);
        assert_eq!(&m[0][..16], b"0000000000000000");
        assert_eq!(&m[1][..16], b"0001000000000000");
        assert_eq!(&m[3][..16], b"0001000000000001");
        for p in &m {
            assert_eq!(p.len(), 24);
            assert!(p.iter().all(|b| (b'!'..=b'~').contains(b)), "printable ASCII");
        }
        // Another thread derives the same bytes.
        let other = Ctx::fanout(24, 1, 0.0, 0, ctx.fan.clone());
        assert_eq!(other.pattern, ctx.pattern);
        assert!(other.fan_verify(1, 1, 16, &m[3][16..]));
        assert!(!other.fan_verify(1, 0, 16, &m[3][16..]), "the pattern depends on seq");
        assert!(!other.fan_verify(0, 1, 16, &m[3][16..]), "and on the publisher");
    }

    #[test]
    fn fanout_verifies_every_split() {
        for size in [16, 17, 20, 300, 70_000] {
            for split in [1, 2, 3, 7, 16, 17, 64, 1000, usize::MAX] {
                let (mut ctx, mut pubs, mut seed) = fan_setup(3, size, 1, 0.0);
                let mut sub = subscriber(&ctx, &mut seed);
                let msgs = publish(&mut ctx, &mut pubs, 4, 5);
                fan_feed(&mut ctx, &mut sub, &relay(&msgs), split, 1005);
                assert_eq!(
                    ctx.errors.total(),
                    0,
                    "size {size} split {split}: {:?}",
                    ctx.first_error
                );
                assert_eq!(ctx.done, 12, "size {size} split {split}");
                assert_eq!(ctx.msgs, 12);
                assert_eq!(ctx.fc.lost, 0);
                assert_eq!(ctx.hist.count(), 12);
                assert_eq!(ctx.hist.max(), 1000, "latency from the publish stamp");
                // Every ping answered, nothing else sent by a subscriber.
                let mut b = &sub.wbuf[..];
                while !b.is_empty() {
                    let (h, n) = decode(b).unwrap().unwrap();
                    assert_eq!(h.opcode, OpCode::Pong);
                    b = &b[n + h.payload_len as usize..];
                }
            }
        }
    }

    #[test]
    fn fanout_gaps_are_lost_not_errors() {
        let (mut ctx, mut pubs, mut seed) = fan_setup(2, 20, 1, 0.0);
        let mut sub = subscriber(&ctx, &mut seed);
        let msgs = publish(&mut ctx, &mut pubs, 5, 0);
        // Drop publisher 0's messages 1 and 2 and publisher 1's message 4 (the last).
        let kept: Vec<_> = msgs
            .iter()
            .enumerate()
            .filter(|(i, _)| ![2, 4, 9].contains(i))
            .map(|x| x.1.clone())
            .collect();
        fan_feed(&mut ctx, &mut sub, &relay(&kept), 5, 1);
        assert_eq!(ctx.errors.total(), 0, "{:?}", ctx.first_error);
        assert_eq!(ctx.fc.lost, 2, "a lost tail is not seen");
        assert_eq!(ctx.fc.lost_window, 2);
        assert_eq!(ctx.done, 7);
        assert_eq!(sub.next[..], [5, 4]);
    }

    #[test]
    fn fanout_topics_check_the_room() {
        let (mut ctx, mut pubs, mut seed) = fan_setup(4, 20, 1, 0.0);
        ctx.topics = 2;
        // Publish order: p0 s0, p1 s0, p2 s0, p3 s0, p0 s1, ...
        let msgs = publish(&mut ctx, &mut pubs, 3, 0);
        let mut sub = subscriber(&ctx, &mut seed);
        sub.room = 1;
        // Room t1 is publishers 1 and 3; publisher 3's message 1 (index 7) is dropped.
        let mine: Vec<_> = msgs
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 4 == 1 || (i % 4 == 3 && *i != 7))
            .map(|x| x.1.clone())
            .collect();
        fan_feed(&mut ctx, &mut sub, &relay(&mine), 7, 1);
        assert_eq!(ctx.errors.total(), 0, "{:?}", ctx.first_error);
        assert_eq!((ctx.done, ctx.fc.lost), (5, 1), "loss is per publisher of the room");
        // Publisher 0's message (room t0): an error of its own kind; order is untouched.
        fan_feed(&mut ctx, &mut sub, &relay(&msgs[4..5]), 7, 1);
        assert_eq!((ctx.errors.wrong_room, ctx.errors.total()), (1, 1));
        assert_eq!(ctx.done, 5);
        assert_eq!(sub.next[..], [0, 3, 0, 3]);
        assert!(ctx.first_error.as_deref().is_some_and(|e| e.contains("room t0")));
    }

    #[test]
    fn fanout_duplicates_and_reordering_are_errors() {
        let (mut ctx, mut pubs, mut seed) = fan_setup(1, 20, 1, 0.0);
        let msgs = publish(&mut ctx, &mut pubs, 3, 0);
        let mut sub = subscriber(&ctx, &mut seed);
        let dup = [msgs[0].clone(), msgs[1].clone(), msgs[1].clone()];
        fan_feed(&mut ctx, &mut sub, &relay(&dup), 64, 1);
        assert_eq!((ctx.errors.order, ctx.errors.total(), ctx.done), (1, 1, 2));
        let mut sub = subscriber(&ctx, &mut seed);
        let swapped = [msgs[0].clone(), msgs[2].clone(), msgs[1].clone()];
        let (done, lost) = (ctx.done, ctx.fc.lost);
        fan_feed(&mut ctx, &mut sub, &relay(&swapped), 3, 1);
        assert_eq!(ctx.errors.order, 2);
        assert_eq!(ctx.done - done, 2);
        assert_eq!(ctx.fc.lost - lost, 1, "the gap before the late message");
    }

    /// Feeds one relayed (possibly altered) message to a fresh subscriber; its error counts.
    fn one(alter: impl Fn(&mut Vec<u8>), op: OpCode) -> Result<Errors, Fail> {
        let (mut ctx, mut pubs, mut seed) = fan_setup(2, 40, 1, 0.0);
        let mut m = publish(&mut ctx, &mut pubs, 2, 0).swap_remove(1);
        alter(&mut m);
        let mut server = Vec::new();
        write_frame(&mut server, op, true, &m);
        let mut sub = subscriber(&ctx, &mut seed);
        for chunk in server.chunks(7) {
            sub.on_data(&mut ctx, chunk, 1)?;
        }
        assert_eq!(ctx.done + ctx.errors.total(), 1);
        Ok(ctx.errors)
    }

    #[test]
    fn fanout_catches_corruption() {
        assert_eq!(one(|_| {}, OpCode::Text).unwrap().total(), 0);
        let mismatch = |alter: &dyn Fn(&mut Vec<u8>), why: &str| {
            let e = one(alter, OpCode::Text).unwrap();
            assert_eq!((e.mismatch, e.total()), (1, 1), "{why}");
        };
        mismatch(&|m| m[39] ^= 1, "last byte");
        mismatch(&|m| m[16] = b'!' + (m[16] - b'!' + 1) % 94, "first pattern byte");
        mismatch(&|m| m[3] = b'2', "publisher 2 does not exist");
        mismatch(&|m| m[15] = b'9', "seq 9 was never published");
        mismatch(&|m| m[10] = b'A', "uppercase hex");
        mismatch(&|m| m[0] = b' ', "not hex");
        mismatch(&|m| m.truncate(39), "short");
        mismatch(&|m| m.truncate(10), "shorter than the header");
        let e = one(|_| {}, OpCode::Binary).unwrap();
        assert_eq!(e.mismatch, 1, "binary instead of text");
        assert!(matches!(one(|m| m.push(b'x'), OpCode::Text), Err(Fail::Protocol(_))));
    }

    #[test]
    fn fanout_closed_loop_publisher() {
        let (mut ctx, mut pubs, _) = fan_setup(2, 20, 2, 0.0);
        ctx.measuring = false;
        let kick: Vec<_> = pubs
            .iter_mut()
            .map(|c| {
                c.fan_refill(&mut ctx, 0);
                let m = sent_texts(&c.wbuf);
                c.wbuf.clear();
                m
            })
            .collect();
        assert_eq!((pubs[0].send_seq, pubs[1].send_seq), (2, 2), "K = 2 each");
        let p0 = &mut pubs[0];
        // Another publisher's message does not release anything.
        fan_feed(&mut ctx, p0, &relay(&kick[1][..1]), 64, 1);
        assert_eq!(p0.send_seq, 2);
        // Its own message 0 back: one more goes out.
        fan_feed(&mut ctx, p0, &relay(&kick[0][..1]), 64, 2);
        assert_eq!(p0.send_seq, 3);
        assert_eq!(sent_texts(&p0.wbuf).len(), 1);
        assert_eq!(ctx.done, 0, "publishers' receptions are not deliveries");
        // Its message 1 dropped, 2 received: 1 is lost, two more go out.
        let own = sent_texts(&p0.wbuf);
        p0.wbuf.clear();
        fan_feed(&mut ctx, p0, &relay(&own), 64, 3);
        assert_eq!(ctx.fc.publisher_lost, 1);
        assert_eq!(p0.own_acked, 3);
        assert_eq!(p0.send_seq, 5);
        assert_eq!(ctx.errors.total(), 0, "{:?}", ctx.first_error);
        assert_eq!(ctx.fc.published_total, 7);
        assert_eq!(ctx.fc.published, 0, "not measuring");
    }

    #[test]
    fn fanout_open_loop_pacing() {
        let (mut ctx, mut pubs, _) = fan_setup(1, 20, 1, 1000.0);
        let p = [0usize];
        // At kick + 10.5 ms, 11 are due (the first at the kick).
        let next = fan_pace(&mut ctx, &mut pubs, &p, 0, 10_500_000);
        assert_eq!(pubs[0].send_seq, 11);
        assert_eq!(next, Some(Duration::from_nanos(500_000)));
        fan_pace(&mut ctx, &mut pubs, &p, 0, 10_600_000);
        assert_eq!(pubs[0].send_seq, 11, "nothing new due");
        // Far behind (no socket drains the buffer): it fills the buffer, never grows it.
        let cap = pubs[0].wbuf.capacity();
        assert_eq!(fan_pace(&mut ctx, &mut pubs, &p, 0, 1_000_000_000), None);
        assert_eq!(pubs[0].wbuf.capacity(), cap);
        assert!(pubs[0].send_seq >= 64 && pubs[0].send_seq < 1001, "{}", pubs[0].send_seq);
        assert_eq!(sent_texts(&pubs[0].wbuf).len() as u64, pubs[0].send_seq);
    }

    #[test]
    fn fanout_stamps() {
        let f = FanShared::new(1);
        assert_eq!(f.bits, 21);
        assert_eq!(FanShared::new(3).bits, 19);
        assert_eq!(FanShared::new(60_000).bits, 12);
        f.stamp(0, 5, 1_000);
        assert_eq!(f.published(0), 6);
        assert_eq!(f.latency(0, 5, 1_750), Some(750));
        // Wrapped clock (2^40 ns): still right.
        let t = (1u64 << 40) - 10;
        f.stamp(0, 6, t);
        assert_eq!(f.latency(0, 6, (1 << 40) + 15), Some(25));
        // The slot reused by seq + 2^21: no sample for the old one.
        f.stamp(0, 5 + (1 << 21), 2_000);
        assert_eq!(f.latency(0, 5, 3_000), None);
        assert_eq!(f.latency(0, 5 + (1 << 21), 3_000), Some(1_000));
    }
}
