//! A coarse hashed timing wheel: one slot per tick, entries re-checked lazily when their slot
//! comes round.
//!
//! Connections do not move in the wheel when their deadline moves later (every message received
//! pushes the idle deadline out): the entry fires, the owner finds the real deadline is later and
//! arms a new entry. So the hot path never touches the wheel, and an idle connection costs one
//! 8-byte entry. Owns no clock: `now` comes in as an argument.

use std::time::{Duration, Instant};

/// Number of slots; with the default 250 ms tick the horizon is about 4 minutes. Deadlines past
/// the horizon sit in the last slot and are re-armed when it fires.
const SLOTS: usize = 1024;

/// An entry: a slab key and the generation of the connection that armed it.
pub(crate) type Entry = (u32, u32);

#[derive(Debug)]
pub(crate) struct Wheel {
    tick: Duration,
    origin: Instant,
    /// The next tick to expire.
    cur: u64,
    slots: Vec<Vec<Entry>>,
    len: usize,
}

impl Wheel {
    pub(crate) fn new(origin: Instant, tick: Duration) -> Self {
        let tick = tick.max(Duration::from_millis(1));
        Self { tick, origin, cur: 0, slots: (0..SLOTS).map(|_| Vec::new()).collect(), len: 0 }
    }

    /// The tick at which an entry for deadline `t` fires (never before `t`).
    pub(crate) fn tick_for(&self, t: Instant) -> u64 {
        let d = t.saturating_duration_since(self.origin);
        let n = d.as_nanos() / self.tick.as_nanos();
        let exact = n * self.tick.as_nanos() == d.as_nanos();
        let k = (n + u128::from(!exact)) as u64;
        k.clamp(self.cur, self.cur + SLOTS as u64 - 1)
    }

    /// Arms an entry for deadline `t`; returns the tick it was placed at.
    pub(crate) fn insert(&mut self, t: Instant, e: Entry) -> u64 {
        let k = self.tick_for(t);
        self.slots[(k % SLOTS as u64) as usize].push(e);
        self.len += 1;
        k
    }

    /// When the next entry fires, if any.
    pub(crate) fn next_expiry(&self) -> Option<Instant> {
        if self.len == 0 {
            return None;
        }
        (0..SLOTS as u64)
            .map(|i| self.cur + i)
            .find(|k| !self.slots[(k % SLOTS as u64) as usize].is_empty())
            .map(|k| self.at(k))
    }

    /// The instant tick `k` starts at (in 64 bits: no wrap after 2^32 ticks, 49.7 days at 1 ms).
    fn at(&self, k: u64) -> Instant {
        let nanos = self.tick.as_nanos().saturating_mul(u128::from(k));
        self.origin + Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// Moves every entry whose tick is at or before `now` into `out`, with its tick.
    pub(crate) fn expire(&mut self, now: Instant, out: &mut Vec<(u64, Entry)>) {
        let upto =
            (now.saturating_duration_since(self.origin).as_nanos() / self.tick.as_nanos()) as u64;
        while self.cur <= upto {
            if self.len == 0 {
                self.cur = upto + 1;
                break;
            }
            let k = self.cur;
            let slot = &mut self.slots[(k % SLOTS as u64) as usize];
            self.len -= slot.len();
            out.extend(slot.drain(..).map(|e| (k, e)));
            self.cur += 1;
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fires_at_or_after_deadline_never_before() {
        let t0 = Instant::now();
        let mut w = Wheel::new(t0, Duration::from_millis(100));
        let k = w.insert(t0 + Duration::from_millis(250), (1, 0));
        assert_eq!(k, 3);
        let mut out = Vec::new();
        w.expire(t0 + Duration::from_millis(299), &mut out);
        assert!(out.is_empty());
        assert_eq!(w.next_expiry(), Some(t0 + Duration::from_millis(300)));
        w.expire(t0 + Duration::from_millis(300), &mut out);
        assert_eq!(out, vec![(3, (1, 0))]);
        assert_eq!(w.len(), 0);
        assert_eq!(w.next_expiry(), None);
    }

    #[test]
    fn far_deadlines_clamp_to_the_horizon_and_past_ones_fire_next() {
        let t0 = Instant::now();
        let mut w = Wheel::new(t0, Duration::from_millis(10));
        let far = w.insert(t0 + Duration::from_secs(3600), (2, 0));
        assert_eq!(far, SLOTS as u64 - 1);
        let mut out = Vec::new();
        w.expire(t0 + Duration::from_millis(50), &mut out);
        assert!(out.is_empty());
        let past = w.insert(t0, (3, 0));
        assert_eq!(past, 6);
        w.expire(t0 + Duration::from_millis(60), &mut out);
        assert_eq!(out, vec![(6, (3, 0))]);
    }

    /// Ticks are 64-bit end to end: past 2^32 ticks (49.7 days at 1 ms) entries still fire
    /// on time and the next expiry is not in the past (a u32 there made the loop spin).
    #[test]
    fn ticks_past_u32_still_fire_on_time() {
        let t0 = Instant::now();
        let mut w = Wheel::new(t0, Duration::from_millis(1));
        let mut out = Vec::new();
        let late = t0 + Duration::from_millis((1u64 << 32) + 5_000);
        w.expire(late, &mut out);
        assert!(out.is_empty());
        let due = late + Duration::from_millis(10);
        let k = w.insert(due, (9, 9));
        assert!(k > u64::from(u32::MAX), "tick {k}");
        let next = w.next_expiry().expect("an entry is armed");
        assert!(next >= due && next <= due + Duration::from_millis(1), "next expiry {next:?}");
        w.expire(due - Duration::from_millis(1), &mut out);
        assert!(out.is_empty(), "fired early");
        w.expire(due, &mut out);
        assert_eq!(out, vec![(k, (9, 9))]);
    }

    #[test]
    fn long_idle_gaps_skip_empty_slots() {
        let t0 = Instant::now();
        let mut w = Wheel::new(t0, Duration::from_millis(1));
        let mut out = Vec::new();
        w.expire(t0 + Duration::from_secs(100_000), &mut out);
        assert!(out.is_empty());
        w.insert(t0 + Duration::from_secs(100_000), (1, 1));
        w.expire(t0 + Duration::from_secs(100_001), &mut out);
        assert_eq!(out.len(), 1);
    }
}
