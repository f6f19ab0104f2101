//! Echo mode (and raw mode's messages): message `seq` is `prefix(seq) ++ pattern[seq % 251 ..]`,
//! K in flight per connection; the echo must come back in order, byte for byte, and its round
//! trip is timed from the send stamp in the connection's K-slot ring.

use sockeye::proto::frame::{self, OpCode, MAX_HEADER_LEN};
use sockeye::proto::mask::unmask;

use super::super::args::Mode;
use super::conn::{xorshift, Conn, St};
use super::ctx::Ctx;

impl Ctx {
    #[inline]
    pub(super) fn prefix(&self, seq: u64) -> [u8; 16] {
        let mut p = [0u8; 16];
        if self.text {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            for (i, b) in p.iter_mut().enumerate() {
                *b = HEX[((seq >> (60 - 4 * i)) & 15) as usize];
            }
        } else {
            p[..8].copy_from_slice(&seq.to_le_bytes());
        }
        p
    }

    /// Whether `chunk` equals bytes `off..off + chunk.len()` of message `seq`.
    #[inline]
    pub(super) fn verify(&self, seq: u64, off: usize, chunk: &[u8]) -> bool {
        let p = self.prefix_len;
        let mut off = off;
        let mut c = chunk;
        let mut ok = true;
        if off < p {
            let n = (p - off).min(c.len());
            let pre = self.prefix(seq);
            ok &= c[..n] == pre[off..off + n];
            c = &c[n..];
            off += n;
        }
        if !c.is_empty() {
            let b = self.base(seq) + off - p;
            ok &= c == &self.pattern[b..b + c.len()];
        }
        ok
    }
}

impl Conn {
    /// Appends the next echo message, stamped `now`.
    #[inline]
    pub(super) fn queue_msg(&mut self, ctx: &mut Ctx, now: u64) {
        self.compact();
        let seq = self.send_seq;
        self.send_seq += 1;
        self.ring[(seq % ctx.inflight) as usize] = now;
        if self.pmd.is_some() {
            if self.queue_deflated(ctx, seq) {
                return;
            }
            self.count_plain_sent(ctx);
        }
        let key = xorshift(&mut self.rng).to_le_bytes();
        if ctx.ws {
            let op = if ctx.text { OpCode::Text } else { OpCode::Binary };
            let mut h = [0u8; MAX_HEADER_LEN];
            let n = frame::encode(true, 0, op, ctx.size as u64, Some(key), &mut h);
            self.wbuf.extend_from_slice(&h[..n]);
        }
        let start = self.wbuf.len();
        let p = ctx.prefix_len;
        self.wbuf.extend_from_slice(&ctx.prefix(seq)[..p]);
        let b = ctx.base(seq);
        self.wbuf.extend_from_slice(&ctx.pattern[b..b + ctx.size - p]);
        if ctx.ws {
            unmask(&mut self.wbuf[start..], key, 0);
        }
    }

    /// Message `recv_seq` fully received.
    #[inline]
    pub(super) fn complete(&mut self, ctx: &mut Ctx, now: u64) {
        if ctx.mode == Mode::Fanout {
            self.fan_complete(ctx, now);
            return;
        }
        let seq = self.recv_seq;
        self.recv_seq += 1;
        if self.msg_off != ctx.size {
            self.msg_bad = true;
        }
        if self.msg_bad {
            ctx.errors.mismatch += 1;
            ctx.note(format!("echo of message {seq} differs from what was sent"));
        } else {
            ctx.done += 1;
            if ctx.measuring {
                let sent = self.ring[(seq % ctx.inflight) as usize];
                ctx.hist.record(now.saturating_sub(sent));
                ctx.msgs += 1;
                ctx.bytes += 2 * ctx.size as u64;
            }
        }
        self.msg_off = 0;
        self.msg_bad = false;
        if ctx.sending && self.st == St::Open {
            self.queue_msg(ctx, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::conn::Fail;
    use super::super::testutil::client_payloads;
    use super::*;
    use sockeye::proto::frame::write_frame;

    /// Sends `n` messages, echoes them as server frames (every other one fragmented in two
    /// with a ping in between) and feeds the bytes back in `split`-byte reads.
    fn echo_roundtrip(
        text: bool,
        size: usize,
        n: u64,
        split: usize,
        corrupt: Option<usize>,
    ) -> Ctx {
        let mut seed = 7;
        let mut ctx = Ctx::new(Mode::Echo, text, size, n, &mut seed);
        ctx.sending = false;
        ctx.measuring = true;
        let mut c = Conn::new(&ctx, "/echo", "x", &mut seed);
        c.st = St::Open;
        for _ in 0..n {
            c.queue_msg(&mut ctx, 0);
        }
        let msgs = client_payloads(&c.wbuf);
        assert_eq!(msgs.len() as u64, n);
        c.wbuf.clear();
        let mut server = Vec::new();
        for (i, (op, p)) in msgs.iter().enumerate() {
            assert_eq!(*op, if text { OpCode::Text } else { OpCode::Binary });
            if text {
                assert!(std::str::from_utf8(p).is_ok());
            }
            if i % 2 == 1 && p.len() >= 2 {
                let (a, b) = p.split_at(p.len() / 2);
                write_frame(&mut server, *op, false, a);
                write_frame(&mut server, OpCode::Ping, true, b"hi");
                write_frame(&mut server, OpCode::Continuation, true, b);
            } else {
                write_frame(&mut server, *op, true, p);
            }
        }
        if let Some(at) = corrupt {
            let at = server.len() - 1 - at;
            server[at] ^= 0x20;
        }
        for chunk in server.chunks(split) {
            c.on_data(&mut ctx, chunk, 10).unwrap_or_else(|e| panic!("{e}"));
        }
        // Every ping got a masked pong with the same payload.
        for (op, p) in client_payloads(&c.wbuf) {
            assert_eq!(op, OpCode::Pong);
            assert_eq!(p, b"hi");
        }
        ctx
    }

    #[test]
    fn verifies_every_split() {
        for (text, size) in
            [(false, 1), (false, 8), (false, 20), (true, 5), (true, 300), (false, 70_000)]
        {
            for split in [1, 2, 3, 7, 13, 64, 1000, usize::MAX] {
                let ctx = echo_roundtrip(text, size, 6, split, None);
                assert_eq!(ctx.done, 6, "text {text} size {size} split {split}");
                assert_eq!(ctx.errors.total(), 0);
                assert_eq!(ctx.hist.count(), 6);
            }
        }
    }

    #[test]
    fn catches_a_flipped_byte() {
        for at in [0, 5, 17] {
            let ctx = echo_roundtrip(false, 20, 4, 5, Some(at));
            assert_eq!(ctx.errors.mismatch, 1, "flip at {at}");
            assert_eq!(ctx.done, 3);
        }
    }

    #[test]
    fn rejects_masked_server_frames() {
        let mut seed = 1;
        let mut ctx = Ctx::new(Mode::Echo, false, 4, 1, &mut seed);
        let mut c = Conn::new(&ctx, "/", "x", &mut seed);
        c.st = St::Open;
        c.queue_msg(&mut ctx, 0);
        let masked = c.wbuf.clone();
        assert!(matches!(c.on_data(&mut ctx, &masked, 0), Err(Fail::Protocol(_))));
    }
}
