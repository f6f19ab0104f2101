//! Pub/sub topics. Each worker holds its own index, topic → subscribers (its connection
//! keys), touched by its thread alone: no lock on the hot path. What workers share is the
//! [`Registry`]: which workers hold some subscriber of a topic (one bit per worker in a
//! hashed bucket, read with one atomic load, so a publish reaches another worker only when
//! that worker may have a subscriber, and a publish to a topic nobody holds costs a hash and a
//! load), and each topic's server-wide subscriber count.
//!
//! A subscription costs the worker one `u32` in the topic's list and one `(u32, u32)` in the
//! connection's list (plus the vectors' slack); a topic costs its name, its entry and a shared
//! counter while some connection of the worker holds it, and nothing after.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crossbeam_channel::Sender;
use slab::Slab;

/// Buckets of the routing table (a power of two).
const BUCKETS: usize = 4096;

/// What the workers share about topics.
#[derive(Debug)]
pub(crate) struct Registry {
    /// Bit `w` of bucket `hash(topic) % BUCKETS`: worker `w` holds a subscriber of some topic
    /// in that bucket. Workers past 63 have no bit: with more than 64 workers, a publish goes
    /// to every worker (each drops it if it holds no subscriber).
    buckets: Box<[AtomicU64]>,
    wide: bool,
    workers: usize,
    /// Each topic some worker holds: its subscribers over all workers.
    counts: Mutex<HashMap<Box<[u8]>, Arc<AtomicUsize>>>,
    /// Told a topic's name whenever its server-wide count goes 0 → 1 or 1 → 0 (the cluster
    /// bridge, which reads [`Registry::count`] when it gets the name: the name says "look
    /// again", never which way it went, so notifications that cross cannot mislead it).
    /// Unbounded: one message per such edge, and its reader never waits on the broker.
    edges: Option<Sender<Box<[u8]>>>,
}

fn bucket_of(topic: &[u8]) -> usize {
    // A fixed-key hash: every thread must land in the same bucket. Its collisions cost a
    // needless wake-up of a worker, never a wrong delivery.
    let mut h = std::hash::DefaultHasher::new();
    topic.hash(&mut h);
    h.finish() as usize % BUCKETS
}

impl Registry {
    #[cfg(any(test, feature = "testing"))]
    pub(crate) fn new(workers: usize) -> Self {
        Self::with_edges(workers, None)
    }

    /// A registry that sends `edges` each topic whose server-wide count goes 0 → 1 or 1 → 0.
    pub(crate) fn with_edges(workers: usize, edges: Option<Sender<Box<[u8]>>>) -> Self {
        Self {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            wide: workers > 64,
            workers,
            counts: Mutex::new(HashMap::new()),
            edges,
        }
    }

    /// Every topic some connection of the server holds now (the bridge re-subscribes them
    /// after a reconnect).
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    pub(crate) fn live_topics(&self) -> Vec<Box<[u8]>> {
        let counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        counts
            .iter()
            .filter(|(_, c)| c.load(Ordering::Relaxed) > 0)
            .map(|(t, _)| t.clone())
            .collect()
    }

    /// Tells the edge listener, if any, that `topic`'s count crossed 0.
    fn edge(&self, topic: &[u8]) {
        if let Some(tx) = &self.edges {
            // A listener that is gone (the bridge stopped) needs no more news.
            let _ = tx.send(topic.into());
        }
    }

    /// The workers that may hold a subscriber of `topic`, as a bit set (every worker when
    /// there are more than 64).
    pub(crate) fn route(&self, topic: &[u8]) -> Route {
        if self.wide {
            return Route::All(self.workers);
        }
        Route::Mask(self.buckets[bucket_of(topic)].load(Ordering::Acquire))
    }

    /// Subscribers of `topic` over all workers (each worker's figure is exact as of its last
    /// subscribe or unsubscribe).
    pub(crate) fn count(&self, topic: &[u8]) -> usize {
        let counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        counts.get(topic).map_or(0, |c| c.load(Ordering::Relaxed))
    }

    fn counter(&self, topic: &[u8]) -> Arc<AtomicUsize> {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(counts.entry(topic.into()).or_default())
    }

    fn release(&self, topic: &[u8], counter: Arc<AtomicUsize>) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        drop(counter);
        // Under the lock no worker can be taking a new reference: ours was the last but the
        // map's, so no worker holds the topic.
        if counts.get(topic).is_some_and(|c| Arc::strong_count(c) == 1) {
            counts.remove(topic);
        }
    }
}

/// Where a publish must go besides the publishing worker.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Route {
    Mask(u64),
    All(usize),
}

impl Route {
    /// The workers to send to, leaving out `me`.
    pub(crate) fn others(self, me: usize) -> impl Iterator<Item = usize> {
        let (mask, n) = match self {
            Route::Mask(m) => (m, 64),
            Route::All(n) => (u64::MAX, n),
        };
        (0..n).filter(move |&w| w != me && (w >= 64 || mask & (1 << w) != 0))
    }
}

#[derive(Debug)]
struct Topic {
    name: Box<[u8]>,
    /// Subscribed connection keys, in no particular order.
    subs: Vec<u32>,
    /// The server-wide count this worker adds its subscribers to.
    total: Arc<AtomicUsize>,
}

/// One worker's topic index.
#[derive(Debug)]
pub(crate) struct Topics {
    worker: usize,
    registry: Arc<Registry>,
    by_name: HashMap<Box<[u8]>, u32>,
    topics: Slab<Topic>,
    /// Per connection with subscriptions: (topic, index of the connection in its `subs`).
    of_conn: HashMap<u32, Vec<(u32, u32)>>,
    /// Per routing bucket: topics of this worker in it (allocated at the first subscription).
    in_bucket: Vec<u32>,
    /// Subscriptions held, over all topics.
    total: usize,
}

impl Topics {
    pub(crate) fn new(worker: usize, registry: Arc<Registry>) -> Self {
        Self {
            worker,
            registry,
            by_name: HashMap::new(),
            topics: Slab::new(),
            of_conn: HashMap::new(),
            in_bucket: Vec::new(),
            total: 0,
        }
    }

    /// Subscribes connection `key`; returns false if it already was.
    pub(crate) fn subscribe(&mut self, key: u32, topic: &[u8]) -> bool {
        let tid = match self.by_name.get(topic) {
            Some(&t) => t,
            None => self.create(topic),
        };
        let list = self.of_conn.entry(key).or_default();
        if list.iter().any(|&(t, _)| t == tid) {
            return false;
        }
        let t = &mut self.topics[tid as usize];
        list.push((tid, t.subs.len() as u32));
        t.subs.push(key);
        let was = t.total.fetch_add(1, Ordering::Relaxed);
        self.total += 1;
        if was == 0 {
            self.registry.edge(topic);
        }
        true
    }

    fn create(&mut self, topic: &[u8]) -> u32 {
        let total = self.registry.counter(topic);
        let tid = self.topics.insert(Topic { name: topic.into(), subs: Vec::new(), total }) as u32;
        self.by_name.insert(topic.into(), tid);
        if self.worker < 64 {
            if self.in_bucket.is_empty() {
                self.in_bucket = vec![0; BUCKETS];
            }
            let b = bucket_of(topic);
            self.in_bucket[b] += 1;
            if self.in_bucket[b] == 1 {
                self.registry.buckets[b].fetch_or(1 << self.worker, Ordering::AcqRel);
            }
        }
        tid
    }

    /// Unsubscribes connection `key`; returns false if it was not subscribed.
    pub(crate) fn unsubscribe(&mut self, key: u32, topic: &[u8]) -> bool {
        let Some(&tid) = self.by_name.get(topic) else { return false };
        let Some(list) = self.of_conn.get_mut(&key) else { return false };
        let Some(i) = list.iter().position(|&(t, _)| t == tid) else { return false };
        let (_, pos) = list.swap_remove(i);
        if list.is_empty() {
            self.of_conn.remove(&key);
        }
        self.leave(tid, pos);
        true
    }

    /// Takes the subscriber at `pos` out of topic `tid`, dropping the topic when it empties.
    fn leave(&mut self, tid: u32, pos: u32) {
        let t = &mut self.topics[tid as usize];
        t.subs.swap_remove(pos as usize);
        let was = t.total.fetch_sub(1, Ordering::Relaxed);
        self.total -= 1;
        if was == 1 {
            self.registry.edge(&t.name);
        }
        if let Some(&moved) = t.subs.get(pos as usize) {
            // The last subscriber took the freed place: its own list says where it is now.
            if let Some(e) =
                self.of_conn.get_mut(&moved).and_then(|l| l.iter_mut().find(|e| e.0 == tid))
            {
                e.1 = pos;
            }
        }
        if t.subs.is_empty() {
            let t = self.topics.remove(tid as usize);
            self.by_name.remove(&t.name);
            if self.worker < 64 {
                let b = bucket_of(&t.name);
                self.in_bucket[b] -= 1;
                if self.in_bucket[b] == 0 {
                    self.registry.buckets[b].fetch_and(!(1 << self.worker), Ordering::AcqRel);
                }
            }
            self.registry.release(&t.name, t.total);
        }
    }

    /// Ends every subscription of connection `key` (it closed).
    pub(crate) fn remove_conn(&mut self, key: u32) {
        let Some(list) = self.of_conn.remove(&key) else { return };
        for (tid, pos) in list {
            // `leave` keeps every stored position current, and only `key` leaves here.
            debug_assert_eq!(self.topics[tid as usize].subs[pos as usize], key);
            self.leave(tid, pos);
        }
    }

    pub(crate) fn is_subscribed(&self, key: u32, topic: &[u8]) -> bool {
        let Some(&tid) = self.by_name.get(topic) else { return false };
        self.of_conn.get(&key).is_some_and(|l| l.iter().any(|&(t, _)| t == tid))
    }

    /// The topics connection `key` is subscribed to.
    pub(crate) fn topics_of(&self, key: u32) -> impl Iterator<Item = &[u8]> {
        self.of_conn.get(&key).into_iter().flatten().map(|&(t, _)| &*self.topics[t as usize].name)
    }

    /// This worker's subscribers of `topic`.
    pub(crate) fn subscribers(&self, topic: &[u8]) -> &[u32] {
        match self.by_name.get(topic) {
            Some(&t) => &self.topics[t as usize].subs,
            None => &[],
        }
    }

    /// The topic's id in this worker, if some connection of it is subscribed.
    pub(crate) fn id(&self, topic: &[u8]) -> Option<u32> {
        self.by_name.get(topic).copied()
    }

    /// Subscribers of topic `tid` (an id from [`Topics::id`], valid until the topic's last
    /// subscriber leaves).
    pub(crate) fn subs_of(&self, tid: u32) -> &[u32] {
        &self.topics[tid as usize].subs
    }

    /// Subscriptions this worker holds (over all its topics).
    pub(crate) fn subscriptions(&self) -> usize {
        self.total
    }
}

impl Drop for Topics {
    fn drop(&mut self) {
        // A worker that exits (or unwinds) takes its subscribers out of the shared figures.
        let keys: Vec<u32> = self.of_conn.keys().copied().collect();
        for k in keys {
            self.remove_conn(k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscribe_unsubscribe_and_counts() {
        let reg = Arc::new(Registry::new(2));
        let mut a = Topics::new(0, Arc::clone(&reg));
        let mut b = Topics::new(1, Arc::clone(&reg));
        assert!(a.subscribe(1, b"news"));
        assert!(!a.subscribe(1, b"news"));
        assert!(a.subscribe(2, b"news"));
        assert!(b.subscribe(7, b"news"));
        assert!(a.subscribe(1, b"sport"));
        assert_eq!(reg.count(b"news"), 3);
        assert_eq!(reg.count(b"sport"), 1);
        assert_eq!(reg.count(b"none"), 0);
        let mut t: Vec<&[u8]> = a.topics_of(1).collect();
        t.sort();
        assert_eq!(t, [&b"news"[..], b"sport"]);
        assert!(matches!(reg.route(b"news"), Route::Mask(0b11)));
        assert_eq!(reg.route(b"news").others(0).collect::<Vec<_>>(), [1]);
        // Unsubscribing moves the last subscriber into the freed place; both stay right.
        assert!(a.unsubscribe(1, b"news"));
        assert!(!a.unsubscribe(1, b"news"));
        assert_eq!(a.subscribers(b"news"), [2]);
        assert!(a.is_subscribed(2, b"news") && !a.is_subscribed(1, b"news"));
        a.remove_conn(2);
        a.remove_conn(1);
        assert_eq!(a.subscribers(b"news"), &[] as &[u32]);
        assert_eq!(reg.count(b"news"), 1);
        assert_eq!(reg.count(b"sport"), 0);
        // Worker 0 holds nothing now: its bit is gone, the shared entry of `sport` too.
        assert_eq!(reg.route(b"news").others(1).count(), 0);
        assert!(!reg.counts.lock().unwrap().contains_key(&b"sport"[..]));
        drop(b);
        assert_eq!(reg.count(b"news"), 0);
        assert!(reg.counts.lock().unwrap().is_empty());
        assert!(reg.buckets.iter().all(|b| b.load(Ordering::Relaxed) == 0));
    }

    #[test]
    fn many_subscribers_leave_in_any_order() {
        let reg = Arc::new(Registry::new(1));
        let mut a = Topics::new(0, reg);
        for k in 0..1000u32 {
            for t in 0..3u32 {
                a.subscribe(k, format!("t{}", (k + t) % 7).as_bytes());
            }
        }
        let mut order: Vec<u32> = (0..1000).collect();
        // A fixed shuffle.
        let mut x = 0x9e37_79b9u32;
        for i in (1..order.len()).rev() {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            order.swap(i, x as usize % (i + 1));
        }
        for (n, &k) in order.iter().enumerate() {
            if n % 2 == 0 {
                a.remove_conn(k);
            } else {
                for t in 0..3u32 {
                    assert!(a.unsubscribe(k, format!("t{}", (k + t) % 7).as_bytes()));
                }
            }
            // Every list still names each remaining subscriber where it is.
            for (tid, t) in &a.topics {
                for (i, &s) in t.subs.iter().enumerate() {
                    let l = &a.of_conn[&s];
                    assert!(l.contains(&(tid as u32, i as u32)));
                }
            }
        }
        assert_eq!(a.subscriptions(), 0);
        assert!(a.topics.is_empty() && a.by_name.is_empty() && a.of_conn.is_empty());
    }

    #[test]
    fn edges_tell_each_zero_crossing_of_the_server_wide_count() {
        let (tx, rx) = crossbeam_channel::unbounded();
        let reg = Arc::new(Registry::with_edges(2, Some(tx)));
        let mut a = Topics::new(0, Arc::clone(&reg));
        let mut b = Topics::new(1, Arc::clone(&reg));
        let news = || rx.try_iter().collect::<Vec<_>>();
        assert!(a.subscribe(1, b"t"));
        assert_eq!(news(), [Box::from(&b"t"[..])], "0 → 1");
        // More subscribers, on either worker: the count stays above 0, no news.
        assert!(a.subscribe(2, b"t") && b.subscribe(9, b"t"));
        a.remove_conn(1);
        assert!(news().is_empty());
        assert_eq!(reg.live_topics(), [Box::from(&b"t"[..])]);
        a.remove_conn(2);
        assert!(b.unsubscribe(9, b"t"));
        assert_eq!(news(), [Box::from(&b"t"[..])], "1 → 0");
        assert!(reg.live_topics().is_empty());
        // A quick subscribe, unsubscribe, subscribe: three edges; the count says where it
        // ended.
        b.subscribe(9, b"t");
        b.unsubscribe(9, b"t");
        b.subscribe(9, b"t");
        assert_eq!(news().len(), 3);
        assert_eq!(reg.count(b"t"), 1);
    }

    #[test]
    fn wide_servers_route_to_everyone() {
        let reg = Registry::new(100);
        assert_eq!(reg.route(b"x").others(3).count(), 99);
    }
}
