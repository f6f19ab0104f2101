//! permessage-deflate (RFC 7692) on the loadgen's side: the offer, the checks on the server's
//! answer, what the loadgen sends compressed, and the inflating verifier for what comes back.
//!
//! * **Offer**: `permessage-deflate; client_max_window_bits`, what Chrome and Firefox send. The
//!   answer must be one permessage-deflate with parameters RFC 7692 §7.1 lets a server send to
//!   that offer (each at most once, window sizes 8..=15), else the handshake fails; so does no
//!   answer at all (a `--deflate` run measures compression or nothing).
//! * **Payloads**: text frames of JSON-like text (market data, chat, presence objects with
//!   varying fields and numbers, [`json_text`]): message `seq` is 16 hex digits of `seq`, then a
//!   window of a 1 MiB generated text starting at a hashed offset of body `seq % M` (M: enough
//!   bodies for 4 MiB of distinct text, 16..=4096), so no two messages in a 32 KiB window share
//!   a body and a server that keeps its window gains only what real JSON repeats (keys, shapes).
//! * **Sending** costs no compression per message: the M bodies are compressed once (on first
//!   use, at the negotiated `client_max_window_bits`, `--deflate-level`, sync flush, the final
//!   `00 00 ff ff` removed), and a message is a stored block carrying the 16-byte prefix
//!   followed by its body's deflate data, RSV1 set. Every body is compressed on its own, so the
//!   frames are valid with and without `client_no_context_takeover` (they never refer to
//!   earlier messages: a client may always do that). The server inflates real deflate data all
//!   the same; the loadgen's core stays free to drive it. A body that would not shrink is sent
//!   uncompressed; so is everything when the server asked for an 8-bit window (zlib cannot
//!   compress with one).
//! * **Receiving**: a frame with RSV1 on the first frame of a data message is inflated as it
//!   arrives, through a 16 KiB buffer per worker, and the output is compared in place with the
//!   message sent, like an uncompressed echo; the tail is added at the end of the message. The
//!   inflater is the connection's (made on its first compressed message) when the server keeps
//!   its window, else one lent from the worker's pool for the one message and reset. Inflated
//!   output past the message sent is a protocol error, so a bad server cannot make the loadgen
//!   inflate without bound.

use std::fmt::Write as _;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use sockeye::proto::frame::{self, OpCode, MAX_HEADER_LEN};
use sockeye::proto::mask::unmask;

use super::conn::{splitmix, xorshift, Conn, Fail};
use super::ctx::Ctx;
use super::ZCounts;

/// What ends a sync flush: removed from what is sent, added to what is received (§7.2.1-2).
pub(super) const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// The offer, as a browser makes it.
pub(super) const OFFER: &str = "permessage-deflate; client_max_window_bits";

/// Bytes of the generated text the bodies start in.
const TEXT_LEN: usize = 1 << 20;

/// Inflaters kept for lending (no context takeover on the server's side).
const MAX_POOLED: usize = 64;

/// The negotiated parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Pmd {
    pub(super) server_nct: bool,
    pub(super) client_nct: bool,
    pub(super) server_bits: u8,
    pub(super) client_bits: u8,
}

/// The server's `Sec-WebSocket-Extensions` answer to [`OFFER`].
pub(super) fn parse_answer(v: &[u8]) -> Result<Pmd, String> {
    let v = std::str::from_utf8(v).map_err(|_| "extension answer is not UTF-8".to_string())?;
    let bad = |why: &str| Err(format!("extension answer {v:?}: {why}"));
    if v.split(',').count() != 1 {
        return bad("more than one extension");
    }
    let mut parts = v.split(';').map(str::trim);
    if !parts.next().is_some_and(|n| n.eq_ignore_ascii_case("permessage-deflate")) {
        return bad("not permessage-deflate");
    }
    let mut p = Pmd { server_nct: false, client_nct: false, server_bits: 15, client_bits: 15 };
    let mut seen = [false; 4];
    for param in parts {
        let (name, value) = match param.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
            None => (param, None),
        };
        let i = match name.to_ascii_lowercase().as_str() {
            "server_no_context_takeover" => 0,
            "client_no_context_takeover" => 1,
            "server_max_window_bits" => 2,
            "client_max_window_bits" => 3,
            _ => return bad("unknown parameter"),
        };
        if std::mem::replace(&mut seen[i], true) {
            return bad("a parameter twice");
        }
        let bits = || -> Option<u8> {
            let v = value?;
            let ok = !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) && !v.starts_with('0');
            let b: u8 = if ok { v.parse().ok()? } else { return None };
            (8..=15).contains(&b).then_some(b)
        };
        match i {
            0 | 1 if value.is_some() => return bad("a value on a flag"),
            0 => p.server_nct = true,
            1 => p.client_nct = true,
            2 => match bits() {
                Some(b) => p.server_bits = b,
                None => return bad("bad window size"),
            },
            _ => match bits() {
                Some(b) => p.client_bits = b,
                None => return bad("bad window size"),
            },
        }
    }
    Ok(p)
}

/// `len` bytes of JSON-like text: an array of objects of a few kinds, with varying fields and
/// numbers (cut at `len`).
pub(super) fn json_text(len: usize, seed: &mut u64) -> Vec<u8> {
    const SYMS: [&str; 8] =
        ["BTC-USD", "ETH-USD", "SOL-USD", "AAPL", "MSFT", "EUR-USD", "XAU", "NVDA"];
    const WORDS: [&str; 16] = [
        "hello", "the", "market", "is", "up", "today", "see", "you", "at", "noon", "ok", "thanks",
        "what", "about", "tomorrow", "great",
    ];
    const STATUS: [&str; 3] = ["online", "away", "offline"];
    let mut s = String::with_capacity(len + 512);
    s.push('[');
    let mut ts: u64 = 1_764_633_600_000 + splitmix(seed) % 1_000_000;
    let mut id: u64 = 40_000_000 + splitmix(seed) % 1_000_000;
    // Prices in cents, one random walk per symbol, as a feed's would move.
    let mut px: [u64; 8] = [6_512_345, 312_277, 14_321, 23_410, 41_290, 10_842, 263_120, 17_755];
    while s.len() < len {
        let r = splitmix(seed);
        ts += r % 97;
        id += 1 + (r >> 40) % 3;
        let si = (r >> 8) as usize % SYMS.len();
        let sym = SYMS[si];
        let n = r >> 16;
        px[si] = (px[si] + (n % 41)).saturating_sub(20).max(100);
        let p = px[si];
        let _ = match r % 5 {
            0 | 1 => write!(
                s,
                r#"{{"type":"trade","id":{id},"sym":"{sym}","px":{}.{:02},"qty":{}.{:04},"side":"{}","ts":{ts}}},"#,
                p / 100,
                p % 100,
                n % 13,
                (n >> 7) % 10_000,
                if n & 1 == 0 { "buy" } else { "sell" }
            ),
            2 => write!(
                s,
                r#"{{"type":"quote","sym":"{sym}","bid":{}.{:02},"ask":{}.{:02},"bsz":{},"asz":{},"ts":{ts}}},"#,
                p / 100,
                p % 100,
                (p + 1 + n % 5) / 100,
                (p + 1 + n % 5) % 100,
                (n >> 3) % 5000,
                (n >> 5) % 5000
            ),
            3 => {
                let _ = write!(
                    s,
                    r#"{{"type":"chat","room":"room-{}","user":{{"id":{},"name":"user{}"}},"text":""#,
                    n % 32,
                    n % 100_000,
                    (n >> 4) % 10_000
                );
                for w in 0..(3 + n % 9) {
                    if w > 0 {
                        s.push(' ');
                    }
                    s.push_str(WORDS[((n >> (w * 4)) % 16) as usize]);
                }
                write!(s, r#"","ts":{ts}}},"#)
            }
            _ => write!(
                s,
                r#"{{"type":"presence","user":"user{}","status":"{}","devices":[{}],"ts":{ts}}},"#,
                n % 10_000,
                STATUS[(n % 3) as usize],
                ["\"web\"", "\"web\",\"ios\"", "\"android\""][((n >> 2) % 3) as usize]
            ),
        };
    }
    s.truncate(len);
    s.into_bytes()
}

/// The precompressed bodies for one window size.
struct Bodies {
    data: Vec<u8>,
    /// Body `k`'s deflate data in `data`; a length of 0: it does not shrink, send it plain.
    spans: Vec<(u32, u32)>,
}

/// A worker's permessage-deflate state (in [`Ctx`]).
pub(super) struct ZCtx {
    level: u32,
    /// Index `client_max_window_bits - 9`.
    sets: [Option<Bodies>; 7],
    /// Boxed: they move between this pool and a connection as they are.
    #[allow(clippy::vec_box)]
    inflaters: Vec<Box<Decompress>>,
    /// Inflate output, compared in place (taken out while in use).
    ibuf: Vec<u8>,
    pub(super) counts: ZCounts,
    /// The first answer seen (for the report).
    pub(super) answer: Option<String>,
}

impl Ctx {
    /// Switches this worker to permessage-deflate: JSON-like text, the bodies it is cut in.
    pub(super) fn enable_deflate(&mut self, level: u32, seed: &mut u64) {
        self.pattern = json_text(TEXT_LEN + self.size, seed);
        self.hashed_bodies = true;
        self.bodies = ((4usize << 20) / self.size.max(1)).clamp(16, 4096) as u64;
        self.z = Some(Box::new(ZCtx {
            level,
            sets: Default::default(),
            inflaters: Vec::new(),
            ibuf: vec![0; 16 << 10],
            counts: ZCounts::default(),
            answer: None,
        }));
    }

    /// Compresses every body for window size `bits`.
    fn make_bodies(&self, bits: u8, level: u32) -> Bodies {
        let mut c = Compress::new_with_window_bits(Compression::new(level), false, bits);
        let body_len = self.size - self.prefix_len;
        let mut data = Vec::with_capacity(self.bodies as usize * (body_len / 2 + 64));
        let mut spans = Vec::with_capacity(self.bodies as usize);
        for k in 0..self.bodies {
            let b = self.base(k);
            let body = &self.pattern[b..b + body_len];
            let start = data.len();
            let mut input = body;
            loop {
                data.reserve(body_len / 2 + 64);
                let before = c.total_in();
                c.compress_vec(input, &mut data, FlushCompress::Sync).expect("deflate");
                input = &input[(c.total_in() - before) as usize..];
                if input.is_empty() && data.len() < data.capacity() {
                    break;
                }
            }
            c.reset();
            assert!(data.ends_with(&TAIL), "sync flush ends with 00 00 ff ff");
            data.truncate(data.len() - TAIL.len());
            let len = data.len() - start;
            if len + 5 + self.prefix_len >= self.size {
                data.truncate(start);
                spans.push((start as u32, 0));
            } else {
                spans.push((start as u32, len as u32));
            }
        }
        Bodies { data, spans }
    }
}

impl Conn {
    /// Appends message `seq` compressed (see the module doc); `false`, with nothing written,
    /// when it goes uncompressed.
    pub(super) fn queue_deflated(&mut self, ctx: &mut Ctx, seq: u64) -> bool {
        let Some(pmd) = self.pmd else { return false };
        let measuring = ctx.measuring;
        if pmd.client_bits < 9 {
            return false;
        }
        let i = usize::from(pmd.client_bits - 9);
        if ctx.z.as_ref().is_some_and(|z| z.sets[i].is_none()) {
            let level = ctx.z.as_ref().map_or(1, |z| z.level);
            let set = ctx.make_bodies(pmd.client_bits, level);
            if let Some(z) = ctx.z.as_mut() {
                z.sets[i] = Some(set);
            }
        }
        let k = (seq % ctx.bodies) as usize;
        let p = ctx.prefix_len;
        let prefix = ctx.prefix(seq);
        let Some(z) = ctx.z.as_mut() else { return false };
        let Some(set) = z.sets[i].as_ref() else { return false };
        let (start, len) = (set.spans[k].0 as usize, set.spans[k].1 as usize);
        if len == 0 {
            return false;
        }
        // A stored block (BFINAL 0) with the prefix, then the body's own deflate data.
        let stored = [0x00, p as u8, 0x00, !(p as u8), 0xff];
        let clen = stored.len() + p + len;
        self.compact();
        let key = xorshift(&mut self.rng).to_le_bytes();
        let mut h = [0u8; MAX_HEADER_LEN];
        let n = frame::encode(true, 0b100, OpCode::Text, clen as u64, Some(key), &mut h);
        self.wbuf.extend_from_slice(&h[..n]);
        let at = self.wbuf.len();
        self.wbuf.extend_from_slice(&stored);
        self.wbuf.extend_from_slice(&prefix[..p]);
        self.wbuf.extend_from_slice(&set.data[start..start + len]);
        unmask(&mut self.wbuf[at..], key, 0);
        if measuring {
            z.counts.sent_msgs += 1;
            z.counts.sent_compressed += 1;
            z.counts.sent_wire += clen as u64;
        }
        true
    }

    /// Counts an uncompressed message sent on a connection that negotiated compression.
    pub(super) fn count_plain_sent(&self, ctx: &mut Ctx) {
        if let (true, Some(_), Some(z)) = (ctx.measuring, self.pmd, ctx.z.as_mut()) {
            z.counts.sent_msgs += 1;
            z.counts.sent_wire += ctx.size as u64;
        }
    }

    /// Inflates the next piece of a compressed echo and compares the output with the message
    /// sent (`msg_bad` on a difference).
    pub(super) fn inflate_chunk(&mut self, ctx: &mut Ctx, input: &[u8]) -> Result<(), Fail> {
        if self.z_ended {
            return Ok(()); // after BFINAL: the rest of the message is ignored (§7.2.2)
        }
        let Some(z) = ctx.z.as_mut() else {
            return Err(Fail::Protocol("compressed frame without permessage-deflate"));
        };
        if self.zi.is_none() {
            let fresh = || Box::new(Decompress::new_with_window_bits(false, 15));
            self.zi = Some(z.inflaters.pop().unwrap_or_else(fresh));
        }
        let mut ibuf = std::mem::take(&mut z.ibuf);
        let Some(inf) = self.zi.as_mut() else { return Ok(()) };
        let mut input = input;
        let res = loop {
            let (i0, o0) = (inf.total_in(), inf.total_out());
            let st = match inf.decompress(input, &mut ibuf, FlushDecompress::None) {
                Ok(st) => st,
                Err(_) => break Err(Fail::Protocol("corrupt deflate data from the server")),
            };
            let used = (inf.total_in() - i0) as usize;
            let made = (inf.total_out() - o0) as usize;
            input = &input[used..];
            if made > 0 {
                if self.msg_off + made > ctx.size {
                    break Err(Fail::Protocol("inflated echo longer than the message sent"));
                }
                if !ctx.verify(self.recv_seq, self.msg_off, &ibuf[..made]) {
                    self.msg_bad = true;
                }
                self.msg_off += made;
            }
            if st == Status::StreamEnd {
                self.z_ended = true;
                break Ok(());
            }
            if (input.is_empty() && made < ibuf.len()) || (used == 0 && made == 0) {
                break Ok(());
            }
        };
        if let Some(z) = ctx.z.as_mut() {
            z.ibuf = ibuf;
        }
        res
    }

    /// The end of a compressed echo: the tail, then the inflater is reset (and lent back)
    /// where the server keeps no window.
    pub(super) fn end_inflate(&mut self, ctx: &mut Ctx) -> Result<(), Fail> {
        self.inflate_chunk(ctx, &TAIL)?;
        let nct = self.pmd.is_some_and(|p| p.server_nct);
        if nct || self.z_ended {
            if let Some(mut inf) = self.zi.take() {
                inf.reset(false);
                match ctx.z.as_mut() {
                    Some(z) if nct && z.inflaters.len() < MAX_POOLED => z.inflaters.push(inf),
                    _ if nct => {}
                    _ => self.zi = Some(inf),
                }
            }
        }
        self.z_ended = false;
        Ok(())
    }

    /// Counts a received message on a connection that negotiated compression.
    pub(super) fn count_received(&self, ctx: &mut Ctx) {
        if let (true, Some(_), Some(z)) = (ctx.measuring, self.pmd, ctx.z.as_mut()) {
            z.counts.recv_msgs += 1;
            z.counts.recv_compressed += u64::from(self.msg_z);
            z.counts.recv_wire += self.msg_wire;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sockeye::proto::frame::{OpCode, MAX_HEADER_LEN};

    #[test]
    fn answers() {
        let p = parse_answer(b"permessage-deflate").unwrap();
        assert_eq!(
            p,
            Pmd { server_nct: false, client_nct: false, server_bits: 15, client_bits: 15 }
        );
        let p = parse_answer(
            b"permessage-deflate; server_no_context_takeover; client_max_window_bits=\"10\"",
        )
        .unwrap();
        assert!(p.server_nct && !p.client_nct && p.client_bits == 10);
        for bad in [
            &b"x-webkit-deflate-frame"[..],
            b"permessage-deflate, permessage-deflate",
            b"permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            b"permessage-deflate; client_max_window_bits=16",
            b"permessage-deflate; client_max_window_bits=09",
            b"permessage-deflate; server_max_window_bits",
            b"permessage-deflate; server_no_context_takeover=1",
            b"permessage-deflate; foo",
        ] {
            assert!(parse_answer(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    /// Deflates `p` as one message (sync flush, tail removed), with or without a kept window.
    fn deflate_msg(c: &mut Compress, p: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(p.len() + 64);
        c.compress_vec(p, &mut out, FlushCompress::Sync).unwrap();
        assert!(out.ends_with(&TAIL));
        out.truncate(out.len() - 4);
        out
    }

    /// Sends `n` messages compressed, checks they inflate to what was meant, echoes them
    /// compressed by a server (in `split`-byte reads, every other one in two frames) and
    /// checks the verifier accepts them all; `corrupt` flips a bit of one inflated byte.
    fn roundtrip(server_nct: bool, size: usize, split: usize, corrupt: bool) -> Ctx {
        use sockeye::proto::frame::{decode, encode};
        let n = 5;
        let mut seed = 11;
        let mut ctx = Ctx::new(super::super::Mode::Echo, true, size, n, &mut seed);
        ctx.enable_deflate(1, &mut seed);
        ctx.sending = false;
        ctx.measuring = true;
        let mut c = Conn::new(&ctx, "/echo", "x", &mut seed);
        c.st = super::super::St::Open;
        c.pmd = Some(Pmd { server_nct, client_nct: false, server_bits: 15, client_bits: 12 });
        for _ in 0..n {
            c.queue_msg(&mut ctx, 0);
        }
        let mut b = &c.wbuf[..];
        let mut msgs = Vec::new();
        while !b.is_empty() {
            let (h, hl) = decode(b).unwrap().unwrap();
            let mut p = b[hl..hl + h.payload_len as usize].to_vec();
            unmask(&mut p, h.mask.unwrap(), 0);
            b = &b[hl + h.payload_len as usize..];
            assert_eq!(h.opcode, OpCode::Text);
            if h.rsv == 4 {
                p.extend_from_slice(&TAIL);
                let mut inf = Decompress::new_with_window_bits(false, 12);
                let mut out = Vec::with_capacity(size + 1);
                inf.decompress_vec(&p, &mut out, FlushDecompress::Sync).unwrap();
                p = out;
            }
            assert_eq!(p.len(), size);
            msgs.push(p);
        }
        assert_eq!(msgs.len() as u64, n);
        c.wbuf.clear();
        let mut comp = Compress::new(Compression::new(6), false);
        let mut server = Vec::new();
        for (i, m) in msgs.iter().enumerate() {
            let mut m = m.clone();
            if corrupt && i == 2 {
                m[size / 2] ^= 1;
            }
            let z = deflate_msg(&mut comp, &m);
            if server_nct {
                comp.reset();
            }
            let mut h = [0u8; MAX_HEADER_LEN];
            if i % 2 == 1 {
                let (a, b) = z.split_at(z.len() / 2);
                let k = encode(false, 0b100, OpCode::Text, a.len() as u64, None, &mut h);
                server.extend_from_slice(&h[..k]);
                server.extend_from_slice(a);
                let k = encode(true, 0, OpCode::Continuation, b.len() as u64, None, &mut h);
                server.extend_from_slice(&h[..k]);
                server.extend_from_slice(b);
            } else {
                let k = encode(true, 0b100, OpCode::Text, z.len() as u64, None, &mut h);
                server.extend_from_slice(&h[..k]);
                server.extend_from_slice(&z);
            }
        }
        for chunk in server.chunks(split) {
            c.on_data(&mut ctx, chunk, 10).unwrap_or_else(|e| panic!("{e}"));
        }
        ctx
    }

    #[test]
    fn compressed_echoes_verify() {
        for nct in [false, true] {
            for size in [16, 100, 1024, 70_000] {
                for split in [1, 7, 1000, usize::MAX] {
                    if size == 70_000 && split == 1 {
                        continue;
                    }
                    let ctx = roundtrip(nct, size, split, false);
                    assert_eq!(ctx.done, 5, "nct {nct} size {size} split {split}");
                    assert_eq!(ctx.errors.total(), 0);
                    let z = ctx.z.as_ref().unwrap().counts;
                    assert_eq!((z.recv_msgs, z.recv_compressed), (5, 5));
                    if size >= 1024 {
                        assert_eq!(z.sent_compressed, 5, "JSON of {size} bytes shrinks");
                    }
                }
            }
        }
    }

    #[test]
    fn compressed_echo_mismatch() {
        let ctx = roundtrip(false, 1024, 100, true);
        assert_eq!((ctx.done, ctx.errors.mismatch), (4, 1));
    }

    #[test]
    fn json_compresses_like_json() {
        let t = json_text(64 << 10, &mut 3);
        assert_eq!(t.len(), 64 << 10);
        assert!(t.is_ascii());
        let mut c = Compress::new(Compression::new(1), false);
        let mut out = Vec::with_capacity(t.len());
        c.compress_vec(&t, &mut out, FlushCompress::Sync).unwrap();
        let ratio = out.len() as f64 / t.len() as f64;
        assert!((0.15..0.5).contains(&ratio), "ratio {ratio}");
    }
}
