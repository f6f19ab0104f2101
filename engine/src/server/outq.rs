//! A connection's send queue: bytes it owns (its own frames, corked) and frames it shares with
//! other connections (a published message, built once per worker), in the order they were
//! queued. A shared frame is a reference, not a copy: a message published to 10,000
//! subscribers is one buffer that 10,000 queues point at.
//!
//! The owned bytes stay one contiguous buffer (the common case, an echo, is one slice); a
//! shared frame is recorded with the offset in that buffer it goes before, so the queue reads
//! as `bytes[..at0] frame0 bytes[at0..at1] frame1 ... bytes[atN..]`. [`OutQ::slices`] gives
//! that sequence as I/O slices for one `writev` / `sendmsg`, [`OutQ::advance`] consumes what
//! the socket took.

use std::cell::Cell;
use std::io::IoSlice;
use std::rc::Rc;

/// A frame (header and payload) shared by every queue it was published to.
pub(crate) type Frame = Rc<FrameBuf>;

/// A shared frame's bytes. The worker charges its memory budget for them once, when the frame
/// is built; when the last queue lets go of the frame, its length is added to `released`,
/// which the worker takes back off the budget.
#[derive(Debug)]
pub(crate) struct FrameBuf {
    bytes: Box<[u8]>,
    released: Rc<Cell<usize>>,
}

impl FrameBuf {
    pub(crate) fn new(bytes: Vec<u8>, released: &Rc<Cell<usize>>) -> Frame {
        Rc::new(FrameBuf { bytes: bytes.into_boxed_slice(), released: Rc::clone(released) })
    }
}

impl std::ops::Deref for FrameBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

impl Drop for FrameBuf {
    fn drop(&mut self) {
        self.released.set(self.released.get() + self.bytes.len());
    }
}

/// What a queued reference to a shared frame costs the worker's memory budget (the frame's
/// bytes are charged once, see [`FrameBuf`]; `max_backpressure` still counts its full length
/// against each subscriber).
pub(crate) const REF_COST: usize = std::mem::size_of::<(usize, Option<Frame>)>();

/// Owned bytes already sent past which the buffer is compacted although the queue never
/// emptied (a subscriber that is always a little behind).
const COMPACT_AT: usize = 64 << 10;

/// The send queue. Boxed in the slot only while it holds bytes (an idle connection owns none).
#[derive(Debug, Default)]
pub(crate) struct OutQ {
    /// Owned bytes; `pos..` are unsent.
    bytes: Vec<u8>,
    pos: usize,
    /// Shared frames, each sent before `bytes[at..]`; `head..` are unsent, and `off` bytes of
    /// `refs[head]` went out already. A sent frame is let go of at once (`None`).
    refs: Vec<(usize, Option<Frame>)>,
    head: usize,
    off: usize,
    /// Unsent bytes of the shared frames.
    shared: usize,
}

impl OutQ {
    /// Bytes waiting to be sent.
    pub(crate) fn len(&self) -> usize {
        self.bytes.len() - self.pos + self.shared
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// What the queue holds against the worker's memory budget: its unsent owned bytes and
    /// [`REF_COST`] per unsent shared frame.
    pub(crate) fn footprint(&self) -> usize {
        self.bytes.len() - self.pos + (self.refs.len() - self.head) * REF_COST
    }

    /// Capacity held, for the pool's byte limit.
    pub(crate) fn capacity(&self) -> usize {
        self.bytes.capacity() + self.refs.capacity() * REF_COST
    }

    /// The owned buffer, to append frames to.
    pub(crate) fn bytes_mut(&mut self) -> &mut Vec<u8> {
        &mut self.bytes
    }

    /// Queues a shared frame after everything queued so far.
    pub(crate) fn push_frame(&mut self, f: &Frame) {
        self.shared += f.len();
        self.refs.push((self.bytes.len(), Some(Rc::clone(f))));
    }

    /// The unsent bytes when they are one contiguous slice: owned bytes alone, or one shared
    /// frame alone (the common fan-out case), so the backend can use a plain send.
    pub(crate) fn single(&self) -> Option<&[u8]> {
        match &self.refs[self.head..] {
            [] => Some(&self.bytes[self.pos..]),
            [(at, Some(f))] if *at == self.pos && *at == self.bytes.len() => Some(&f[self.off..]),
            _ => None,
        }
    }

    /// Fills `iov` with the unsent bytes in order, as many slices as fit; returns how many.
    pub(crate) fn slices<'a>(&'a self, iov: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        let mut pos = self.pos;
        let mut off = self.off;
        for (at, f) in &self.refs[self.head..] {
            if n == iov.len() {
                return n;
            }
            if *at > pos {
                iov[n] = IoSlice::new(&self.bytes[pos..*at]);
                n += 1;
                pos = *at;
                if n == iov.len() {
                    return n;
                }
            }
            let f: &[u8] = f.as_deref().map_or(&[], |f| &f[..]);
            iov[n] = IoSlice::new(&f[off..]);
            n += 1;
            off = 0;
        }
        if pos < self.bytes.len() && n < iov.len() {
            iov[n] = IoSlice::new(&self.bytes[pos..]);
            n += 1;
        }
        n
    }

    /// The socket took `n` bytes from the front.
    pub(crate) fn advance(&mut self, mut n: usize) {
        debug_assert!(n <= self.len());
        while n > 0 {
            let own_end = self.refs.get(self.head).map_or(self.bytes.len(), |r| r.0);
            if own_end > self.pos {
                let k = n.min(own_end - self.pos);
                self.pos += k;
                n -= k;
                continue;
            }
            let Some((_, f)) = self.refs.get_mut(self.head) else { break };
            let flen = f.as_ref().map_or(0, |f| f.len());
            let k = n.min(flen - self.off);
            self.off += k;
            self.shared -= k;
            n -= k;
            if self.off == flen {
                // Sent: let go of the frame now, not when the queue next empties.
                *f = None;
                self.head += 1;
                self.off = 0;
            }
        }
        if self.is_empty() {
            self.clear();
        } else if (self.pos >= COMPACT_AT && self.pos * 2 >= self.bytes.len())
            || (self.head >= 64 && self.head * 2 >= self.refs.len())
        {
            self.compact();
        }
    }

    /// Drops what was sent and keeps the rest, offsets adjusted.
    fn compact(&mut self) {
        let pos = self.pos;
        self.bytes.drain(..pos);
        self.refs.drain(..self.head);
        for r in &mut self.refs {
            r.0 -= pos;
        }
        self.pos = 0;
        self.head = 0;
    }

    /// Calls `f` with every unsent byte after the first `keep`, in order, in as few slices as
    /// the queue holds them. The first `keep` unsent bytes must be owned ones (a TLS
    /// connection's sealed records), so the tail starts at a frame's first byte if at all.
    pub(crate) fn for_each_tail<'a>(&'a self, keep: usize, mut f: impl FnMut(&'a [u8])) {
        let mut pos = self.pos + keep;
        debug_assert!(pos <= self.bytes.len());
        debug_assert!(
            keep == 0 || (self.off == 0 && self.refs[self.head..].iter().all(|r| r.0 >= pos))
        );
        let mut off = self.off;
        for (at, fr) in &self.refs[self.head..] {
            if *at > pos {
                f(&self.bytes[pos..*at]);
                pos = *at;
            }
            if let Some(fr) = fr {
                f(&fr[off..]);
            }
            off = 0;
        }
        if pos < self.bytes.len() {
            f(&self.bytes[pos..]);
        }
    }

    /// Removes every unsent byte after the first `keep` (see [`OutQ::for_each_tail`]): the
    /// frames among them are let go of.
    pub(crate) fn truncate_unsent(&mut self, keep: usize) {
        let end = self.pos + keep;
        self.bytes.truncate(end);
        self.refs.truncate(self.head);
        self.shared = 0;
        self.off = 0;
        if self.is_empty() {
            self.clear();
        }
    }

    /// When every unsent byte is owned (no shared frame among them), swaps the owned buffer
    /// with `other` (which should be empty) and returns where the unsent bytes start in what
    /// `other` now holds; the queue is left empty, with `other`'s old buffer. `None`, and
    /// nothing changed, otherwise.
    pub(crate) fn swap_owned(&mut self, other: &mut Vec<u8>) -> Option<usize> {
        if self.head != self.refs.len() {
            return None;
        }
        other.clear();
        std::mem::swap(&mut self.bytes, other);
        let pos = self.pos;
        self.clear();
        Some(pos)
    }

    /// Empties the queue, keeping its capacity.
    pub(crate) fn clear(&mut self) {
        self.bytes.clear();
        self.refs.clear();
        self.pos = 0;
        self.head = 0;
        self.off = 0;
        self.shared = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(q: &OutQ) -> Vec<u8> {
        let mut iov = [IoSlice::new(&[]); 64];
        let n = q.slices(&mut iov);
        iov[..n].iter().flat_map(|s| s.iter().copied()).collect()
    }

    fn frame(b: &[u8]) -> Frame {
        FrameBuf::new(b.to_vec(), &Rc::new(Cell::new(0)))
    }

    /// What a TLS connection's queue goes through: its plaintext tail (owned bytes and shared
    /// frames) handed out in order behind the sealed head, then replaced.
    #[test]
    fn the_tail_behind_a_sealed_head_is_handed_out_in_order_and_replaced() {
        let released = Rc::new(Cell::new(0));
        let mut q = OutQ::default();
        q.bytes_mut().extend_from_slice(b"SEALED");
        q.advance(2); // the socket took "SE"
        let keep = q.len(); // "ALED": ciphertext still unsent
        q.bytes_mut().extend_from_slice(b"a");
        let f = FrameBuf::new(b"FRAME".to_vec(), &released);
        q.push_frame(&f);
        drop(f);
        q.bytes_mut().extend_from_slice(b"bc");
        let mut tail = Vec::new();
        q.for_each_tail(keep, |part| tail.push(part.to_vec()));
        assert_eq!(tail, [b"a".to_vec(), b"FRAME".to_vec(), b"bc".to_vec()]);
        q.truncate_unsent(keep);
        assert_eq!(drain(&q), b"ALED");
        assert_eq!(released.get(), 5, "the frame was let go of");
        q.bytes_mut().extend_from_slice(b"++");
        assert_eq!(drain(&q), b"ALED++");
        // With nothing sealed, the whole queue is the tail (a partly sent frame from its rest).
        let mut q = OutQ::default();
        q.push_frame(&frame(b"xyz"));
        q.advance(1);
        let mut tail = Vec::new();
        q.for_each_tail(0, |part| tail.extend_from_slice(part));
        assert_eq!(tail, b"yz");
        q.truncate_unsent(0);
        assert!(q.is_empty());
    }

    /// The owned buffer changes hands whole when it is all the queue holds (a TLS echo's
    /// plaintext, sealed without a copy); with a shared frame queued, nothing changes.
    #[test]
    fn an_owned_only_queue_swaps_its_buffer_out() {
        let mut q = OutQ::default();
        q.bytes_mut().extend_from_slice(b"sent.unsent");
        q.advance(5);
        let mut other = b"old".to_vec();
        assert_eq!(q.swap_owned(&mut other), Some(5));
        assert_eq!(&other[5..], b"unsent");
        assert!(q.is_empty());
        assert_eq!(q.footprint(), 0);
        q.bytes_mut().extend_from_slice(b"ab");
        assert_eq!(drain(&q), b"ab", "the buffer it got back starts empty");

        let mut q = OutQ::default();
        q.bytes_mut().extend_from_slice(b"own");
        q.push_frame(&frame(b"FRAME"));
        let mut other = Vec::new();
        assert_eq!(q.swap_owned(&mut other), None);
        assert!(other.is_empty());
        assert_eq!(drain(&q), b"ownFRAME");
        q.advance(8);
        assert_eq!(q.swap_owned(&mut other), Some(0), "sent frames are no obstacle");
    }

    #[test]
    fn a_frame_reports_its_bytes_when_the_last_queue_lets_go() {
        let released = Rc::new(Cell::new(0));
        let f = FrameBuf::new(vec![1u8; 100], &released);
        let (mut a, mut b) = (OutQ::default(), OutQ::default());
        a.push_frame(&f);
        b.push_frame(&f);
        drop(f);
        a.advance(100);
        assert_eq!(released.get(), 0, "b still holds it");
        b.clear();
        assert_eq!(released.get(), 100);
    }

    #[test]
    fn owned_and_shared_keep_their_order() {
        let mut q = OutQ::default();
        let f = frame(b"FRAME");
        q.bytes_mut().extend_from_slice(b"ab");
        q.push_frame(&f);
        q.push_frame(&f);
        q.bytes_mut().extend_from_slice(b"cd");
        q.push_frame(&f);
        assert_eq!(q.len(), 2 + 5 + 5 + 2 + 5);
        assert_eq!(drain(&q), b"abFRAMEFRAMEcdFRAME");
        assert_eq!(q.footprint(), 4 + 3 * REF_COST);
        assert!(q.single().is_none());
        let mut one = OutQ::default();
        one.push_frame(&f);
        assert_eq!(one.single(), Some(&b"FRAME"[..]));
        one.advance(2);
        assert_eq!(one.single(), Some(&b"AME"[..]));
        drop(one);
        // Every split point gives the same rest.
        let whole = drain(&q);
        for cut in 0..=whole.len() {
            let mut q2 = OutQ::default();
            q2.bytes_mut().extend_from_slice(b"ab");
            q2.push_frame(&f);
            q2.push_frame(&f);
            q2.bytes_mut().extend_from_slice(b"cd");
            q2.push_frame(&f);
            // One byte at a time up to the cut, then the rest at once.
            for _ in 0..cut {
                q2.advance(1);
            }
            assert_eq!(drain(&q2), &whole[cut..], "cut at {cut}");
            assert_eq!(q2.len(), whole.len() - cut);
            let rest = q2.len();
            q2.advance(rest);
            assert!(q2.is_empty() && q2.single() == Some(&[][..]) && q2.footprint() == 0);
        }
        // Sent frames are let go of: only the queue and the test hold `f`... until cleared.
        q.advance(q.len());
        assert_eq!(Rc::strong_count(&f), 1);
    }

    #[test]
    fn slices_stop_at_the_array_and_resume() {
        let mut q = OutQ::default();
        let f = frame(b"xy");
        for i in 0..100u8 {
            q.bytes_mut().push(i);
            q.push_frame(&f);
        }
        let mut expect = Vec::new();
        for i in 0..100u8 {
            expect.push(i);
            expect.extend_from_slice(b"xy");
        }
        let mut got = Vec::new();
        while !q.is_empty() {
            let mut iov = [IoSlice::new(&[]); 7];
            let n = q.slices(&mut iov);
            assert!(n > 0 && n <= 7);
            let taken: usize = iov[..n].iter().map(|s| s.len()).sum();
            got.extend(iov[..n].iter().flat_map(|s| s.iter().copied()));
            q.advance(taken);
        }
        assert_eq!(got, expect);
    }

    #[test]
    fn a_queue_that_never_empties_is_compacted() {
        let mut q = OutQ::default();
        let f = frame(&[7u8; 100]);
        let mut sent = 0usize;
        let mut total = 0usize;
        for _ in 0..10_000 {
            q.bytes_mut().extend_from_slice(&[1u8; 50]);
            q.push_frame(&f);
            total += 150;
            // The socket takes all but a few bytes each time.
            let take = q.len() - 3;
            q.advance(take);
            sent += take;
        }
        assert_eq!(q.len(), total - sent);
        assert!(q.bytes.len() < 2 * COMPACT_AT + 200, "owned bytes grew to {}", q.bytes.len());
        assert!(q.refs.len() < 2000, "refs grew to {}", q.refs.len());
        assert!(Rc::strong_count(&f) < 2000);
    }
}
