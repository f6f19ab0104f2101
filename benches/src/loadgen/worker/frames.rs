//! The server-to-client frame decoder, shared by every WebSocket mode. Frames are decoded as a
//! stream: a partial header is carried in 14 bytes, payload bytes go to the mode's checker
//! straight from the read buffer (nothing is copied or assembled), control frames are
//! gathered (125 bytes at most) and answered: a ping with a pong, a close with a close.

use sockeye::proto::frame::{OpCode, MAX_HEADER_LEN};

use super::super::args::Mode;
use super::conn::{Conn, Fail, St};
use super::ctx::Ctx;

impl Conn {
    /// Feeds bytes that arrived on an open (or closing) connection.
    pub(super) fn on_data(&mut self, ctx: &mut Ctx, data: &[u8], now: u64) -> Result<(), Fail> {
        if !ctx.ws {
            return self.on_raw(ctx, data, now);
        }
        let mut d = data;
        while !d.is_empty() {
            if !self.in_frame {
                let used = if self.hdr_len == 0 {
                    match self.header(ctx, d)? {
                        Some(n) => n,
                        None => {
                            self.hdr[..d.len()].copy_from_slice(d);
                            self.hdr_len = d.len();
                            return Ok(());
                        }
                    }
                } else {
                    let old = self.hdr_len;
                    let take = (MAX_HEADER_LEN - old).min(d.len());
                    let mut tmp = self.hdr;
                    tmp[old..old + take].copy_from_slice(&d[..take]);
                    match self.header(ctx, &tmp[..old + take])? {
                        Some(n) => {
                            self.hdr_len = 0;
                            n - old
                        }
                        None => {
                            self.hdr = tmp;
                            self.hdr_len = old + take;
                            return Ok(());
                        }
                    }
                };
                d = &d[used..];
                if self.rem == 0 {
                    self.in_frame = false;
                    self.frame_end(ctx, now)?;
                }
                continue;
            }
            let n = self.rem.min(d.len() as u64) as usize;
            let (chunk, tail) = d.split_at(n);
            d = tail;
            if self.ctrl_op.is_some() {
                self.ctrl[self.ctrl_len..self.ctrl_len + n].copy_from_slice(chunk);
                self.ctrl_len += n;
            } else if ctx.echoes() && self.msg_z {
                self.inflate_chunk(ctx, chunk)?;
            } else if ctx.echoes() {
                if !ctx.verify(self.recv_seq, self.msg_off, chunk) {
                    self.msg_bad = true;
                }
                self.msg_off += n;
            } else if ctx.mode == Mode::Fanout {
                self.fan_chunk(ctx, chunk);
            }
            self.rem -= n as u64;
            if self.rem == 0 {
                self.in_frame = false;
                self.frame_end(ctx, now)?;
            }
        }
        Ok(())
    }

    /// Decodes a server frame header at the start of `b` and sets up the frame; `None` if the
    /// header is incomplete, else its length.
    pub(super) fn header(&mut self, ctx: &Ctx, b: &[u8]) -> Result<Option<usize>, Fail> {
        if b.len() < 2 {
            return Ok(None);
        }
        let (b0, b1) = (b[0], b[1]);
        if b1 & 0x80 != 0 {
            return Err(Fail::Protocol("server frame is masked"));
        }
        let need = match b1 & 0x7f {
            126 => 4,
            127 => 10,
            _ => 2,
        };
        if b.len() < need {
            return Ok(None);
        }
        let len = match need {
            4 => u64::from(u16::from_be_bytes([b[2], b[3]])),
            10 => u64::from_be_bytes([b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9]]),
            _ => u64::from(b1 & 0x7f),
        };
        let fin = b0 & 0x80 != 0;
        let op = b0 & 0x0f;
        // RSV1: a compressed message, on the first frame of a data message only (RFC 7692 §6).
        let z = b0 & 0x70 == 0x40 && self.pmd.is_some() && (op == 1 || op == 2);
        if b0 & 0x70 != 0 && !z {
            return Err(Fail::Protocol("RSV bits set"));
        }
        self.ctrl_op = None;
        match op {
            0..=2 => {
                if op == 0 && !self.in_msg {
                    return Err(Fail::Protocol("continuation frame without a message"));
                }
                if op != 0 {
                    if self.in_msg {
                        return Err(Fail::Protocol("new data frame inside a fragmented message"));
                    }
                    self.in_msg = true;
                    self.msg_off = 0;
                    self.msg_z = z;
                    self.msg_wire = 0;
                    // Text echoed as binary or the reverse is a mismatch.
                    self.msg_bad = (op == 1) != ctx.text;
                }
                if ctx.echoes() {
                    if self.recv_seq >= self.send_seq {
                        return Err(Fail::Protocol("echo of a message never sent"));
                    }
                    if self.msg_z {
                        // Checked on the inflated bytes; on the wire, deflate's own framing.
                        let wire_max = ctx.size as u64 + ctx.size as u64 / 8 + 1024;
                        if self.msg_wire + len > wire_max {
                            return Err(Fail::Protocol("compressed echo far longer than sent"));
                        }
                    } else if self.msg_off as u64 + len > ctx.size as u64 {
                        return Err(Fail::Protocol("echo longer than the message sent"));
                    }
                }
                self.msg_wire += len;
                if ctx.mode == Mode::Fanout && self.msg_off as u64 + len > ctx.size as u64 {
                    return Err(Fail::Protocol("message longer than --size"));
                }
            }
            8..=10 => {
                if !fin || len > 125 {
                    return Err(Fail::Protocol("fragmented or oversized control frame"));
                }
                self.ctrl_op = Some(op);
                self.ctrl_len = 0;
            }
            _ => return Err(Fail::Protocol("reserved opcode")),
        }
        self.in_frame = true;
        self.fin = fin;
        self.rem = len;
        Ok(Some(need))
    }

    pub(super) fn frame_end(&mut self, ctx: &mut Ctx, now: u64) -> Result<(), Fail> {
        if let Some(op) = self.ctrl_op.take() {
            match op {
                9 if self.st == St::Open => {
                    let p = self.ctrl;
                    self.push_frame(OpCode::Pong, &p[..self.ctrl_len]);
                }
                8 => {
                    if !self.we_closed {
                        ctx.errors.unexpected_close += 1;
                        let code = if self.ctrl_len >= 2 {
                            u16::from_be_bytes([self.ctrl[0], self.ctrl[1]])
                        } else {
                            1005
                        };
                        ctx.note(format!(
                            "server closed: code {code} {:?}",
                            String::from_utf8_lossy(
                                &self.ctrl[self.ctrl_len.min(2)..self.ctrl_len]
                            )
                        ));
                        if self.st == St::Open {
                            let p = self.ctrl;
                            self.push_frame(OpCode::Close, &p[..self.ctrl_len.min(2)]);
                        }
                    }
                    self.st = St::CloseSeen;
                }
                _ => {}
            }
            return Ok(());
        }
        if !self.fin {
            return Ok(());
        }
        self.in_msg = false;
        if ctx.mode == Mode::Idle && !ctx.prime {
            ctx.errors.protocol += 1;
            ctx.note("data message on an idle connection".into());
            return Ok(());
        }
        if self.msg_z {
            self.end_inflate(ctx)?;
        }
        self.count_received(ctx);
        self.complete(ctx, now);
        Ok(())
    }
}
