//! Raw mode: the echo messages over plain TCP (against `rawecho`), with no framing at all:
//! the bytes that come back are matched against the messages in flight as one stream.

use super::conn::{Conn, Fail};
use super::ctx::Ctx;

impl Conn {
    pub(super) fn on_raw(&mut self, ctx: &mut Ctx, data: &[u8], now: u64) -> Result<(), Fail> {
        let mut d = data;
        while !d.is_empty() {
            if self.recv_seq >= self.send_seq {
                return Err(Fail::Protocol("more bytes echoed than sent"));
            }
            let n = (ctx.size - self.msg_off).min(d.len());
            if !ctx.verify(self.recv_seq, self.msg_off, &d[..n]) {
                self.msg_bad = true;
            }
            self.msg_off += n;
            d = &d[n..];
            if self.msg_off == ctx.size {
                self.complete(ctx, now);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::super::args::Mode;
    use super::super::conn::St;
    use super::*;

    #[test]
    fn raw_stream() {
        let mut seed = 3;
        let mut ctx = Ctx::new(Mode::Raw, false, 33, 4, &mut seed);
        ctx.sending = false;
        let mut c = Conn::new(&ctx, "/", "x", &mut seed);
        c.st = St::Open;
        for _ in 0..4 {
            c.queue_msg(&mut ctx, 0);
        }
        let bytes = c.wbuf.clone();
        assert_eq!(bytes.len(), 4 * 33);
        for ch in bytes.chunks(10) {
            c.on_data(&mut ctx, ch, 1).unwrap_or_else(|e| panic!("{e}"));
        }
        assert_eq!(ctx.done, 4);
        assert!(matches!(c.on_data(&mut ctx, b"x", 1), Err(Fail::Protocol(_))));
    }
}
