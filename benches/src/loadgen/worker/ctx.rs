//! `Ctx`: what one worker's connections share and update: the message pattern, the clock,
//! the counters, the latency histogram.

use std::sync::Arc;
use std::time::Instant;

use super::super::args::Mode;
use super::super::hist::Histogram;
use super::conn::splitmix;
use super::fanout::FanShared;
use super::{Errors, FanCounts};

/// Worker-wide state the per-connection code needs (kept apart from the connection vector so
/// both can be borrowed at once).
pub(super) struct Ctx {
    pub(super) mode: Mode,
    pub(super) ws: bool,
    pub(super) text: bool,
    pub(super) size: usize,
    pub(super) inflight: u64,
    /// `size + 251` bytes: message `seq` uses `pattern[seq % 251 ..][.. size - prefix_len]`
    /// (with `--deflate`: 1 MiB + `size` of JSON-like text, see [`Ctx::base`]).
    pub(super) pattern: Vec<u8>,
    /// Distinct message bodies: 251, or with `--deflate` as many as `deflate.rs` picks.
    pub(super) bodies: u64,
    /// Body `k` starts at a hashed offset into the 1 MiB pattern (`--deflate`), else at `k`.
    pub(super) hashed_bodies: bool,
    /// permessage-deflate: the loadgen's precompressed bodies, inflaters, counters.
    pub(super) z: Option<Box<super::deflate::ZCtx>>,
    /// Idle `--prime`: one echo per connection before the hold.
    pub(super) prime: bool,
    pub(super) prefix_len: usize,
    pub(super) base: Instant,
    pub(super) measuring: bool,
    pub(super) sending: bool,
    pub(super) hist: Histogram,
    pub(super) msgs: u64,
    pub(super) bytes: u64,
    /// Verified echoes over the whole run (progress line).
    pub(super) done: u64,
    pub(super) errors: Errors,
    pub(super) first_error: Option<String>,
    pub(super) open: u64,
    pub(super) opened: u64,
    pub(super) clean_closes: u64,
    // Fanout.
    pub(super) fan: Arc<FanShared>,
    pub(super) publishers: usize,
    /// Messages/s per publisher; 0 = closed loop.
    pub(super) rate: f64,
    /// Rooms: publisher `p` publishes to room `p % topics`; 0 = one room.
    pub(super) topics: usize,
    pub(super) fc: FanCounts,
}

impl Ctx {
    pub(super) fn new(mode: Mode, text: bool, size: usize, inflight: u64, seed: &mut u64) -> Ctx {
        let pattern: Vec<u8> = (0..size + 251)
            .map(|_| {
                let r = splitmix(seed);
                if text {
                    b'!' + (r % 94) as u8
                } else {
                    r as u8
                }
            })
            .collect();
        Ctx {
            mode,
            ws: mode != Mode::Raw,
            text,
            size,
            inflight,
            pattern,
            prefix_len: size.min(if text { 16 } else { 8 }),
            bodies: 251,
            hashed_bodies: false,
            z: None,
            prime: false,
            base: Instant::now(),
            measuring: false,
            sending: mode != Mode::Idle,
            hist: Histogram::new(),
            msgs: 0,
            bytes: 0,
            done: 0,
            errors: Errors::default(),
            first_error: None,
            open: 0,
            opened: 0,
            clean_closes: 0,
            fan: Arc::new(FanShared::default()),
            publishers: 0,
            rate: 0.0,
            topics: 0,
            fc: FanCounts::default(),
        }
    }

    /// Whether data messages from the server are echoes to verify (echo mode; idle `--prime`).
    #[inline]
    pub(super) fn echoes(&self) -> bool {
        self.mode == Mode::Echo || self.prime
    }

    /// Where message `seq`'s body starts in `pattern`.
    #[inline]
    pub(super) fn base(&self, seq: u64) -> usize {
        let k = seq % self.bodies;
        if self.hashed_bodies {
            (k.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 44) as usize // 20 bits: 0..1 MiB
        } else {
            k as usize
        }
    }

    /// Fanout: the room publisher `p` publishes to.
    #[inline]
    pub(super) fn pub_room(&self, p: usize) -> usize {
        if self.topics == 0 {
            0
        } else {
            p % self.topics
        }
    }

    pub(super) fn note(&mut self, what: String) {
        if self.first_error.is_none() {
            self.first_error = Some(what);
        }
    }

    #[inline]
    pub(super) fn now_ns(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }
}
