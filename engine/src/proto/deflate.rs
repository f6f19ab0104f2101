//! permessage-deflate payloads (RFC 7692 §7.2): compress a message, inflate one, bounded by
//! the limits, with per-worker shared contexts or per-connection dedicated ones.
//!
//! This module owns the deflate streams and their lifetimes. It never parses a header, never
//! decides which close code an error gets (see [`super::error`]) and never lets an inflated
//! message grow past `max_message_size`: inflation is incremental, stops at the first byte over
//! the limit, and the output buffer is never allocated past the limit.
//!
//! Which context serves a message:
//!
//! | direction | context takeover | context |
//! |-----------|------------------|---------|
//! | send      | yes              | the connection's own compressor, made on its first compressed message, kept for its life |
//! | send      | no               | the worker's compressor for that window size ([`Contexts`]), reset after every message: one serves every connection |
//! | receive   | yes              | the connection's own inflater, made on its first compressed message, kept for its life |
//! | receive   | no               | an inflater lent by the worker for the one message (even one spread over many reads), reset and given back when it ends |
//!
//! With [`DeflateMemory::Dedicated`] nothing is lent: a connection keeps what it used.
//!
//! Outgoing messages are compressed with a sync flush and lose the final `00 00 ff ff`
//! (§7.2.1); where no context is kept, a message that does not shrink goes out uncompressed
//! instead (a sender may always do that). Incoming ones get the tail back and are inflated as
//! their bytes arrive (§7.2.2).

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use super::conn::{Memory, Role};
use super::error::ProtocolError;
use super::extensions::{DeflateConfig, DeflateMemory, PerMessageDeflate};

/// What a sync flush ends with, removed from outgoing and appended to incoming messages.
pub const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// Most wire bytes a compressed message may take when it may inflate to at most `limit`:
/// deflate's own framing (stored blocks, flushes the sender made) costs a little more than
/// the data, and the real limit is checked on the inflated size.
pub fn max_wire_len(limit: u64) -> u64 {
    limit.saturating_add(limit / 8).saturating_add(64 << 10)
}

/// Inflaters a worker keeps for lending; more are freed when given back.
const MAX_POOLED_INFLATERS: usize = 16;

/// The worker's shared contexts: compressors for connections without server context
/// takeover (one per window size, made when first needed) and a pool of inflaters lent to
/// connections without client context takeover. Lives in [`super::Env`].
#[derive(Debug, Default)]
pub struct Contexts {
    /// Index `bits - 9`: window sizes 9..=15.
    compressors: [Option<Box<Compress>>; 7],
    /// Level of the compressors above (they are made again if it changes).
    level: u8,
    /// Boxed: they move between this pool and a connection's state as they are.
    #[allow(clippy::vec_box)]
    inflaters: Vec<Box<Decompress>>,
}

impl Contexts {
    /// Inflaters waiting to be lent.
    pub fn pooled_inflaters(&self) -> usize {
        self.inflaters.len()
    }

    /// Shared compressors made so far.
    pub fn compressors(&self) -> usize {
        self.compressors.iter().flatten().count()
    }

    fn lend_inflater(&mut self) -> Box<Decompress> {
        let fresh = || Box::new(Decompress::new_with_window_bits(false, 15));
        self.inflaters.pop().unwrap_or_else(fresh)
    }

    fn give_back(&mut self, mut inf: Box<Decompress>) {
        if self.inflaters.len() < MAX_POOLED_INFLATERS {
            inf.reset(false);
            self.inflaters.push(inf);
        }
    }

    fn compressor(&mut self, bits: u8, level: u8) -> &mut Compress {
        if self.level != level {
            self.compressors = Default::default();
            self.level = level;
        }
        let i = usize::from(bits.clamp(9, 15) - 9);
        self.compressors[i].get_or_insert_with(|| new_compressor(bits, level))
    }

    /// Compresses `payload` with the shared compressor for `bits` at `cfg.level` and appends
    /// the frame (RSV1 set, unmasked: server role) to `out`; `false`, with nothing written,
    /// when the message is shorter than `cfg.min_size`, `bits` is outside 9..=15, or the
    /// message would not shrink: send it uncompressed then. Every connection whose
    /// [`super::Connection::shared_send_bits`] is `Some(bits)` may be sent the same frame: this
    /// is how a fan-out compresses a message once for all of them.
    pub fn write_shared_frame(
        &mut self,
        cfg: &DeflateConfig,
        bits: u8,
        op: super::OpCode,
        payload: &[u8],
        out: &mut Vec<u8>,
    ) -> bool {
        if !(9..=15).contains(&bits) || payload.len() < cfg.min_size {
            return false; // no compressor can honour a window of 8 or less
        }
        let c = self.compressor(bits, cfg.level);
        let ok = write_compressed(c, op, payload, None, true, out);
        c.reset();
        ok
    }
}

fn new_compressor(bits: u8, level: u8) -> Box<Compress> {
    let level = Compression::new(u32::from(level.min(9)));
    Box::new(Compress::new_with_window_bits(level, false, bits.clamp(9, 15)))
}

/// How each direction works from this side: which window size and whether the context is
/// kept between messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Directions {
    /// Window bits we compress with; 0: never compress (the peer asked for 8, which the
    /// compressor cannot do).
    send_bits: u8,
    send_takeover: bool,
    /// Window bits of our inflater (at least 9: a larger window inflates any smaller one).
    recv_bits: u8,
    recv_takeover: bool,
}

impl Directions {
    fn new(p: PerMessageDeflate, role: Role) -> Self {
        let (send_nct, send_bits, recv_nct, recv_bits) = match role {
            Role::Server => (
                p.server_no_context_takeover,
                p.server_max_window_bits,
                p.client_no_context_takeover,
                p.client_max_window_bits,
            ),
            Role::Client => (
                p.client_no_context_takeover,
                p.client_max_window_bits,
                p.server_no_context_takeover,
                p.server_max_window_bits,
            ),
        };
        Self {
            send_bits: if (9..=15).contains(&send_bits) { send_bits } else { 0 },
            send_takeover: !send_nct,
            recv_bits: recv_bits.clamp(9, 15),
            recv_takeover: !recv_nct,
        }
    }
}

/// One connection's permessage-deflate state. Boxed in the connection, which pays 8 bytes
/// when it did not negotiate compression.
#[derive(Debug)]
pub(crate) struct DeflateState {
    params: PerMessageDeflate,
    dir: Directions,
    /// The dedicated compressor (send context takeover, or [`DeflateMemory::Dedicated`]).
    /// Boxed, like the inflater: the streams are about 150 bytes each, and a connection
    /// without context takeover holds neither between messages.
    compressor: Option<Box<Compress>>,
    /// The dedicated inflater, or the one lent for the message in progress.
    inflater: Option<Box<Decompress>>,
    /// The inflater is lent by the worker and goes back when the message ends.
    lent: bool,
    /// The peer ended the deflate stream (BFINAL) in this message: what follows in the
    /// message is ignored, and the inflater is reset when it ends.
    ended: bool,
    /// Bytes reserved against the memory budget for the message being inflated.
    reserved: usize,
}

/// Heap held by a flate2/zlib-rs compressor at `bits`, for accounting: 251 008 bytes at 9
/// bits to 380 032 at 15, whatever the level (zlib-rs 0.6.8, measured by the `deflate_mem`
/// bench: a fixed part, hash tables and buffers at memLevel 8, plus 4 bytes per window byte).
pub fn compressor_bytes(bits: u8) -> usize {
    248_960 + (4usize << bits.clamp(9, 15))
}

/// Heap held by a flate2/zlib-rs inflater once it has inflated: 47 552 bytes at every window
/// size (zlib-rs 0.6.8, measured by the `deflate_mem` bench; its window is allocated at the
/// largest size, so `client_max_window_bits` saves the peer memory, not us).
pub fn inflater_bytes(_bits: u8) -> usize {
    47_552
}

impl DeflateState {
    pub(crate) fn new(params: PerMessageDeflate, role: Role) -> Self {
        Self {
            params,
            dir: Directions::new(params, role),
            compressor: None,
            inflater: None,
            lent: false,
            ended: false,
            reserved: 0,
        }
    }

    pub(crate) fn params(&self) -> PerMessageDeflate {
        self.params
    }

    /// Bytes this state holds on the heap (estimated for the contexts).
    pub(crate) fn held(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.compressor.as_ref().map_or(0, |_| compressor_bytes(self.dir.send_bits))
            + self.inflater.as_ref().map_or(0, |_| inflater_bytes(self.dir.recv_bits))
    }

    /// Whether it holds a compression context now.
    pub(crate) fn holds_contexts(&self) -> (bool, bool) {
        (self.compressor.is_some(), self.inflater.is_some())
    }

    /// The window size of the shared compressor whose frames this connection accepts as they
    /// are: `None` when it keeps its own window (or is never sent compressed messages).
    pub(crate) fn shared_send_bits(&self) -> Option<u8> {
        (self.dir.send_bits != 0 && !self.dir.send_takeover).then_some(self.dir.send_bits)
    }

    /// Compresses one message into a frame appended to `out` (masked with `mask` for the
    /// client role). `false`, with nothing written, when the message goes uncompressed: it is
    /// shorter than `min_size`, the peer's window is too small for our compressor, or
    /// (without a kept window) it would not shrink.
    pub(crate) fn write_message(
        &mut self,
        op: super::OpCode,
        payload: &[u8],
        mask: Option<[u8; 4]>,
        cfg: &DeflateConfig,
        shared: &mut Contexts,
        out: &mut Vec<u8>,
    ) -> bool {
        let bits = self.dir.send_bits;
        if bits == 0 || payload.len() < cfg.min_size {
            return false;
        }
        if self.dir.send_takeover || cfg.memory == DeflateMemory::Dedicated {
            let c = self.compressor.get_or_insert_with(|| new_compressor(bits, cfg.level));
            let kept = self.dir.send_takeover;
            let ok = write_compressed(c, op, payload, mask, !kept, out);
            if !ok || !kept {
                // A message sent uncompressed while the window holds it would let the next
                // one refer to bytes the peer never inflated: start afresh instead.
                c.reset();
            }
            ok
        } else {
            let c = shared.compressor(bits, cfg.level);
            let ok = write_compressed(c, op, payload, mask, true, out);
            c.reset();
            ok
        }
    }

    /// Starts inflating a message: makes or borrows the inflater.
    pub(crate) fn begin_message(&mut self, shared: &mut Contexts) {
        self.ended = false;
        if self.inflater.is_none() {
            if self.dir.recv_takeover {
                let bits = self.dir.recv_bits;
                self.inflater = Some(Box::new(Decompress::new_with_window_bits(false, bits)));
            } else {
                self.inflater = Some(shared.lend_inflater());
                self.lent = true;
            }
        }
    }

    /// Inflates the next piece of the message into `out`; see [`inflate`].
    pub(crate) fn inflate(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
        limit: u64,
        memory: &mut Memory,
    ) -> Result<(), ProtocolError> {
        if self.ended {
            return Ok(());
        }
        let Some(inf) = self.inflater.as_mut() else {
            return Err(ProtocolError::InvalidCompressedData);
        };
        self.ended = inflate(inf, input, out, limit, memory, &mut self.reserved)?;
        Ok(())
    }

    /// Ends the message (complete or abandoned): gives back the reservation and, without
    /// context takeover, the inflater.
    pub(crate) fn end_message(
        &mut self,
        cfg_memory: DeflateMemory,
        shared: &mut Contexts,
        memory: &mut Memory,
    ) {
        memory.assembly = memory.assembly.saturating_sub(self.reserved);
        self.reserved = 0;
        let reset = self.ended || !self.dir.recv_takeover;
        self.ended = false;
        if self.lent {
            self.lent = false;
            if cfg_memory == DeflateMemory::Lean {
                if let Some(inf) = self.inflater.take() {
                    shared.give_back(inf);
                }
                return;
            }
            // Dedicated: the lent inflater stays with this connection from now on.
        }
        if reset {
            if let Some(inf) = &mut self.inflater {
                inf.reset(false);
            }
        }
    }

    /// Gives everything back (the connection is going away).
    pub(crate) fn release(&mut self, shared: &mut Contexts, memory: &mut Memory) {
        self.end_message(DeflateMemory::Lean, shared, memory);
        self.compressor = None;
        self.inflater = None;
    }
}

/// Compresses `payload` as one whole message with `c` and appends the frame to `out`: header
/// with RSV1, then the deflate data without its final `00 00 ff ff`. With `must_shrink`, a
/// message that would not get smaller is not written and `false` comes back; `c` then holds
/// it in its window, so the caller resets `c` before compressing another message for the same
/// peer. (Where the window is kept, a message that does not shrink is sent compressed all the
/// same: its bytes are in the window, and the next messages may refer to them.)
pub(crate) fn write_compressed(
    c: &mut Compress,
    op: super::OpCode,
    payload: &[u8],
    mask: Option<[u8; 4]>,
    must_shrink: bool,
    out: &mut Vec<u8>,
) -> bool {
    let hmax = if mask.is_some() { super::frame::MAX_HEADER_LEN } else { 10 };
    let start = out.len();
    out.resize(start + hmax, 0);
    let body = start + hmax;
    if !compress_into(c, payload, out) {
        out.truncate(start);
        return false;
    }
    let clen = out.len() - body;
    if must_shrink && clen >= payload.len() {
        out.truncate(start);
        return false;
    }
    let mut h = [0u8; super::frame::MAX_HEADER_LEN];
    let n = super::frame::encode(true, 0b100, op, clen as u64, mask, &mut h);
    out.copy_within(body.., start + n);
    out.truncate(start + n + clen);
    out[start..start + n].copy_from_slice(&h[..n]);
    if let Some(key) = mask {
        super::mask::unmask(&mut out[start + n..], key, 0);
    }
    true
}

/// Appends the deflate data of one message (sync-flushed, tail removed) to `out`. `false` if
/// the compressor failed (it never should); `out` is then left longer, and the caller
/// truncates.
pub(crate) fn compress_into(c: &mut Compress, payload: &[u8], out: &mut Vec<u8>) -> bool {
    // zlib's compressBound plus room for the sync flush's empty block.
    let bound = payload.len() + (payload.len() >> 12) + (payload.len() >> 14) + 32;
    let mut input = payload;
    loop {
        out.reserve(bound.max(64));
        let before = c.total_in();
        if c.compress_vec(input, out, FlushCompress::Sync).is_err() {
            return false;
        }
        input = &input[(c.total_in() - before) as usize..];
        // Done once all input is in and the flush had room to finish.
        if input.is_empty() && out.len() < out.capacity() {
            break;
        }
    }
    if !out.ends_with(&TAIL) {
        return false;
    }
    out.truncate(out.len() - TAIL.len());
    true
}

/// Inflates `input` into `out`, which never grows past `limit` bytes, nor its capacity past
/// `limit`. Returns whether the deflate stream ended (a block with BFINAL): what follows it
/// in the message is ignored.
///
/// Errors: [`ProtocolError::MessageTooLarge`] as soon as the stream holds one byte more than
/// `limit` allows (the rest is not inflated), [`ProtocolError::OverBudget`] when growing the
/// buffer would take `memory` past its limit (growth is added to `memory.assembly` and to
/// `reserved`, for the caller to give back), [`ProtocolError::InvalidCompressedData`] for a
/// corrupt stream.
pub(crate) fn inflate(
    inf: &mut Decompress,
    mut input: &[u8],
    out: &mut Vec<u8>,
    limit: u64,
    memory: &mut Memory,
    reserved: &mut usize,
) -> Result<bool, ProtocolError> {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let corrupt = |_| ProtocolError::InvalidCompressedData;
    if input.is_empty() {
        // Every call below ends with nothing held back, so there is nothing to drain.
        return Ok(false);
    }
    loop {
        if out.len() >= limit {
            // Full: one byte more of output is one byte too many. Probe with a byte of room.
            let mut probe = [0u8; 1];
            let (in0, out0) = (inf.total_in(), inf.total_out());
            let st = inf.decompress(input, &mut probe, FlushDecompress::None);
            // A byte over the limit came out, even if the data goes bad right after it (the
            // same call may go on to read a corrupt block header): the limit was passed first.
            if inf.total_out() > out0 {
                return Err(ProtocolError::MessageTooLarge);
            }
            let st = st.map_err(corrupt)?;
            let used = (inf.total_in() - in0) as usize;
            input = &input[used..];
            if st == Status::StreamEnd {
                return Ok(true);
            }
            if input.is_empty() || used == 0 {
                return Ok(false);
            }
            continue;
        }
        let allowed = limit - out.len();
        if out.capacity() == out.len() {
            // Grow: a first guess from the input, then doubling, never past the limit.
            let want = if out.capacity() == 0 {
                (input.len().saturating_mul(4)).clamp(256, 64 << 10)
            } else {
                out.capacity()
            };
            let grow = want.min(allowed);
            if !memory.fits(grow as u64) {
                return Err(ProtocolError::OverBudget);
            }
            let cap = out.capacity();
            out.reserve_exact(grow);
            let got = out.capacity() - cap;
            memory.assembly += got;
            *reserved += got;
        }
        let spare = out.capacity() - out.len();
        let (in0, out0) = (inf.total_in(), inf.total_out());
        let (st, window) = if spare <= allowed {
            (inf.decompress_vec(input, out, FlushDecompress::None).map_err(corrupt)?, spare)
        } else {
            // A (pooled) buffer larger than the limit: inflate through a bounded window.
            let mut scratch = [0u8; 4096];
            let n = allowed.min(scratch.len());
            let st = inf.decompress(input, &mut scratch[..n], FlushDecompress::None);
            let st = st.map_err(corrupt)?;
            out.extend_from_slice(&scratch[..(inf.total_out() - out0) as usize]);
            (st, n)
        };
        let used = (inf.total_in() - in0) as usize;
        let made = (inf.total_out() - out0) as usize;
        input = &input[used..];
        if st == Status::StreamEnd {
            return Ok(true);
        }
        // Done when all input is in and the inflater stopped short of the room it had (so it
        // holds nothing back); stuck (no progress at all) means it wants input we do not have.
        if (input.is_empty() && made < window) || (used == 0 && made == 0) {
            return Ok(false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inflate_all(data: &[u8], limit: u64) -> Result<Vec<u8>, ProtocolError> {
        let mut inf = Decompress::new(false);
        let mut out = Vec::new();
        let mut mem = Memory::default();
        let mut reserved = 0;
        let mut input = data.to_vec();
        input.extend_from_slice(&TAIL);
        inflate(&mut inf, &input, &mut out, limit, &mut mem, &mut reserved)?;
        assert!(out.capacity() as u64 <= limit.max(256));
        Ok(out)
    }

    #[test]
    fn rfc_hello() {
        // RFC 7692 §7.2.3.1.
        assert_eq!(
            inflate_all(&[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00], 1 << 20).unwrap(),
            b"Hello"
        );
        let mut c = Compress::new(Compression::default(), false);
        let mut out = Vec::new();
        assert!(compress_into(&mut c, b"Hello", &mut out));
        assert_eq!(out, [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00]);
        // §7.2.3.2: the same compressor, the second "Hello" refers back to the first.
        let mut out = Vec::new();
        assert!(compress_into(&mut c, b"Hello", &mut out));
        assert_eq!(out, [0xf2, 0x00, 0x11, 0x00, 0x00]);
    }

    #[test]
    fn limit_is_exact() {
        let mut c = Compress::new(Compression::default(), false);
        let mut data = Vec::new();
        assert!(compress_into(&mut c, &[b'a'; 1000], &mut data));
        assert_eq!(inflate_all(&data, 1000).unwrap().len(), 1000);
        assert_eq!(inflate_all(&data, 999), Err(ProtocolError::MessageTooLarge));
        assert_eq!(inflate_all(&data, 0), Err(ProtocolError::MessageTooLarge));
    }

    #[test]
    fn over_the_limit_before_corrupt_data() {
        // 1025 bytes of 'x' then a stored block with bad lengths (found by fuzz/inflate): the
        // 1025th byte and the error come out of the same call; the limit was passed first.
        let data = [0xaa, 0xa8, 0x18, 0x05, 0xa3, 0x60, 0x14, 0x8c, 0x58, 0, 0, 0xff, 0xff, 0xff];
        let mut with_tail = data.to_vec();
        with_tail.push(0x35);
        assert_eq!(inflate_all(&with_tail, 1024), Err(ProtocolError::MessageTooLarge));
        assert_eq!(inflate_all(&with_tail, 1025), Err(ProtocolError::InvalidCompressedData));
    }

    #[test]
    fn corrupt_stream() {
        // BTYPE 11 is reserved.
        assert_eq!(
            inflate_all(&[0xff, 0xff, 0xff], 100),
            Err(ProtocolError::InvalidCompressedData)
        );
    }

    #[test]
    fn budget_refuses_growth() {
        let mut c = Compress::new(Compression::default(), false);
        let mut data = Vec::new();
        assert!(compress_into(&mut c, &[b'a'; 100_000], &mut data));
        data.extend_from_slice(&TAIL);
        let mut inf = Decompress::new(false);
        let mut out = Vec::new();
        let mut mem = Memory::new(10_000);
        let mut reserved = 0;
        let r = inflate(&mut inf, &data, &mut out, 1 << 20, &mut mem, &mut reserved);
        assert_eq!(r, Err(ProtocolError::OverBudget));
        assert!(out.capacity() <= 10_000);
        assert_eq!(mem.assembly, reserved);
    }

    #[test]
    fn pooled_buffer_larger_than_the_limit() {
        let mut c = Compress::new(Compression::default(), false);
        let mut data = Vec::new();
        assert!(compress_into(&mut c, &[7u8; 50_000], &mut data));
        data.extend_from_slice(&TAIL);
        for (limit, ok) in [(50_000u64, true), (49_999, false)] {
            let mut inf = Decompress::new(false);
            let mut out = Vec::with_capacity(1 << 20);
            let (mut mem, mut reserved) = (Memory::default(), 0);
            let r = inflate(&mut inf, &data, &mut out, limit, &mut mem, &mut reserved);
            assert_eq!(r.is_ok(), ok, "limit {limit}");
            assert!(out.len() as u64 <= limit);
            assert_eq!(reserved, 0, "no allocation, nothing reserved");
        }
    }
}
