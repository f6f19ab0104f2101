//! The cluster bridge (feature `cluster`): pub/sub across Sockeye processes through an
//! external broker, Redis first. It owns two threads per server (never one per worker), each
//! with one broker connection:
//!
//! - the **publisher** takes the envelopes workers (and `ServerHandle::publish`) hand it
//!   through a bounded queue and sends them in pipelined batches on one connection, so that
//!   messages of one publisher to one topic reach the broker, and every other process, in the
//!   order they were published;
//! - the **subscriber** holds the broker subscription of every topic some local connection
//!   holds: told of each topic whose server-wide count crosses 0 ([`Registry`]'s edges), it
//!   reads the count then and subscribes or unsubscribes to match (so a quick subscribe,
//!   unsubscribe, subscribe cannot leave it wrong whatever order it hears of them), and fans
//!   out each message another process published exactly like `ServerHandle::publish` does
//!   (one command per worker that may hold a subscriber, the frame built once per worker).
//!
//! What it must never do: make a worker wait. A worker's only contact is a `try_send` into
//! the bounded queue (full: the message is dropped for the other processes and counted in
//! `Stats::cluster_queue_drops`; local subscribers have it already) and an unbounded channel
//! send per topic edge. Broker loss stops neither local delivery nor the workers: the
//! threads reconnect with backoff, the subscriber re-subscribes every live topic, and what
//! could not be sent meanwhile is counted in `Stats::cluster_lost`.
//!
//! The broker is behind [`Broker`]: a few operations that Redis (`redis.rs`) provides and that
//! NATS would too (ARCHITECTURE.md says how).

mod redis;

use std::collections::HashSet;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError, TrySendError};

use crate::proto::OpCode;
use crate::server::topics::Registry;
use crate::server::{ServerHandle, WorkerStats};

/// Envelopes waiting for the publisher: past this many, or past [`QUEUE_BYTES`] of them,
/// publishes are dropped for the broker.
const QUEUE: usize = 64 * 1024;
const QUEUE_BYTES: usize = 64 << 20;
/// Most envelopes sent in one pipelined batch.
const BATCH: usize = 512;
/// Every broker channel is the topic behind this prefix (another application's channels on
/// the same Redis are left alone).
pub(crate) const PREFIX: &[u8] = b"sockeye:";
/// The envelope's version byte.
const VERSION: u8 = 1;
/// Version, opcode, origin id.
const HEADER: usize = 1 + 1 + 8;
/// How long the subscriber waits for a message before it looks at the topic edges again
/// (the delay of a broker subscription behind the local one).
const POLL: Duration = Duration::from_millis(10);
/// How long the publisher waits for work before it looks at the stop flag.
const IDLE: Duration = Duration::from_millis(100);
/// Reconnect backoff: doubles from the first to the last.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Checks that `url` names a broker the bridge can use (the client parses it).
pub(crate) fn check_url(url: &str) -> Result<(), String> {
    redis::Redis::new(url).map(drop)
}

/// One message for the broker: its channel (prefix and topic) then its envelope, in one
/// allocation.
#[derive(Debug)]
pub(crate) struct Outgoing {
    buf: Vec<u8>,
    channel_len: usize,
}

impl Outgoing {
    fn new(topic: &[u8], op: OpCode, origin: u64, payload: &[u8]) -> Self {
        let channel_len = PREFIX.len() + topic.len();
        let mut buf = Vec::with_capacity(channel_len + HEADER + payload.len());
        buf.extend_from_slice(PREFIX);
        buf.extend_from_slice(topic);
        buf.push(VERSION);
        buf.push(if op == OpCode::Binary { 2 } else { 1 });
        buf.extend_from_slice(&origin.to_le_bytes());
        buf.extend_from_slice(payload);
        Self { buf, channel_len }
    }

    /// The broker channel.
    pub(crate) fn channel(&self) -> &[u8] {
        &self.buf[..self.channel_len]
    }

    /// The envelope: version, opcode (1 text, 2 binary), origin id (little-endian), payload.
    pub(crate) fn envelope(&self) -> &[u8] {
        &self.buf[self.channel_len..]
    }
}

/// A message from the broker, taken apart: `None` for one this process published itself or
/// one that is not an envelope of ours.
fn open_envelope(origin: u64, env: &[u8]) -> Option<(OpCode, &[u8])> {
    if env.len() < HEADER || env[0] != VERSION {
        return None;
    }
    let op = match env[1] {
        1 => OpCode::Text,
        2 => OpCode::Binary,
        _ => return None,
    };
    let from = u64::from_le_bytes(env[2..HEADER].try_into().ok()?);
    (from != origin).then_some((op, &env[HEADER..]))
}

/// What every publisher holds (in the server handle): the bridge's queue and this process's
/// origin id.
#[derive(Debug)]
pub(crate) struct Link {
    tx: Sender<Outgoing>,
    origin: u64,
    /// Bytes of the envelopes in the queue (the publisher takes them off as it sends).
    queued: Arc<AtomicUsize>,
}

impl Link {
    /// Queues a publish for the broker, or counts it dropped if the queue is full. Never waits.
    pub(crate) fn offer(&self, topic: &[u8], op: OpCode, payload: &[u8], stats: &WorkerStats) {
        let m = Outgoing::new(topic, op, self.origin, payload);
        let len = m.buf.len();
        if self.queued.fetch_add(len, Ordering::Relaxed) + len > QUEUE_BYTES {
            self.queued.fetch_sub(len, Ordering::Relaxed);
            stats.cluster_queue_drops.fetch_add(1, Ordering::Relaxed);
            return;
        }
        match self.tx.try_send(m) {
            Ok(()) => {}
            Err(e) => {
                self.queued.fetch_sub(len, Ordering::Relaxed);
                // Disconnected: the bridge stopped (the server is stopping), nothing to count.
                if matches!(e, TrySendError::Full(_)) {
                    stats.cluster_queue_drops.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

/// The small interface between the bridge and a broker: a connection to publish on and one to
/// subscribe on, each made again after a loss. Redis implements it; a NATS one would too.
pub(crate) trait Broker: Send + Sync + 'static {
    type Pub: Publisher;
    type Sub: Subscriber;
    /// A new publishing connection (bounded wait).
    fn publisher(&self) -> io::Result<Self::Pub>;
    /// A new subscribing connection (bounded wait), holding no subscription yet.
    fn subscriber(&self) -> io::Result<Self::Sub>;
}

pub(crate) trait Publisher {
    /// Sends every message of `batch`, in order, on this one connection. An error leaves the
    /// connection unusable (the bridge makes a new one).
    fn publish(&mut self, batch: &[Outgoing]) -> io::Result<()>;
}

pub(crate) trait Subscriber {
    fn subscribe(&mut self, channel: &[u8]) -> io::Result<()>;
    fn unsubscribe(&mut self, channel: &[u8]) -> io::Result<()>;
    /// Waits up to about `timeout` for one message: `Ok(Some((channel, envelope)))`,
    /// `Ok(None)` when none came (or the broker said something else).
    fn next(&mut self, timeout: Duration) -> io::Result<Option<(Vec<u8>, Vec<u8>)>>;
}

/// Where the topic registry sends the topics whose count crossed 0.
pub(crate) type EdgeSender = Sender<Box<[u8]>>;

/// A bridge built with its server, started by `Server::run`.
#[derive(Debug)]
pub(crate) struct Bridge {
    broker: Arc<redis::Redis>,
    rx: Receiver<Outgoing>,
    edges: Receiver<Box<[u8]>>,
    origin: u64,
    queued: Arc<AtomicUsize>,
}

/// A started bridge: its threads and the flag that ends them.
#[derive(Debug)]
pub(crate) struct Running {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

/// A random origin id: the process id, the time and the address of a stack value, mixed.
fn origin_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    h.write_u128(now.as_nanos());
    let here = 0u8;
    h.write_usize(std::ptr::addr_of!(here) as usize);
    h.finish()
}

impl Bridge {
    /// The bridge of a new server, its publishers' link, and the sender the topic registry
    /// tells of each topic whose count crossed 0.
    pub(crate) fn new(url: &str) -> Result<(Bridge, Link, EdgeSender), String> {
        let broker = Arc::new(redis::Redis::new(url)?);
        let (tx, rx) = crossbeam_channel::bounded(QUEUE);
        let (edges_tx, edges) = crossbeam_channel::unbounded();
        let origin = origin_id();
        let queued = Arc::new(AtomicUsize::new(0));
        let link = Link { tx, origin, queued: Arc::clone(&queued) };
        Ok((Bridge { broker, rx, edges, origin, queued }, link, edges_tx))
    }

    /// Starts the two threads.
    pub(crate) fn start(self, handle: ServerHandle) -> io::Result<Running> {
        let stop = Arc::new(AtomicBool::new(false));
        let Bridge { broker, rx, edges, origin, queued } = self;
        let stats = Arc::clone(&handle.inner.workers[0].stats);
        let publisher = {
            let (broker, stop, stats) =
                (Arc::clone(&broker), Arc::clone(&stop), Arc::clone(&stats));
            std::thread::Builder::new()
                .name("sockeye-cluster-pub".into())
                .spawn(move || publish_loop(&*broker, &rx, &queued, &stats, &stop))?
        };
        let subscriber = {
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name("sockeye-cluster-sub".into())
                .spawn(move || subscribe_loop(&*broker, &edges, &handle, origin, &stop))?
        };
        Ok(Running { stop, threads: vec![publisher, subscriber] })
    }
}

impl Running {
    /// Ends the threads (within about a backoff step) and waits for them.
    pub(crate) fn stop(self) {
        self.stop.store(true, Ordering::Release);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// Reconnect pacing, with a warning on the first failure of a series only.
#[derive(Debug)]
struct Backoff {
    next: Duration,
    failing: bool,
    ever_up: bool,
}

impl Backoff {
    fn new() -> Self {
        Self { next: BACKOFF_MIN, failing: false, ever_up: false }
    }

    /// A connection was made.
    fn up(&mut self, what: &str, stats: &WorkerStats) {
        if self.ever_up {
            stats.cluster_reconnects.fetch_add(1, Ordering::Relaxed);
            log::info!("cluster: {what} connection to the broker is back");
        }
        self.ever_up = true;
        self.failing = false;
        self.next = BACKOFF_MIN;
    }

    /// A connection failed or was lost: how long to wait before the next try.
    fn down(&mut self, what: &str, e: &io::Error) -> Duration {
        if !self.failing {
            log::warn!("cluster: {what} connection to the broker: {e}; retrying with backoff");
        }
        self.failing = true;
        let d = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        d
    }
}

fn publish_loop(
    broker: &impl Broker,
    rx: &Receiver<Outgoing>,
    queued: &AtomicUsize,
    stats: &WorkerStats,
    stop: &AtomicBool,
) {
    let lost = |n: usize| {
        stats.cluster_lost.fetch_add(n, Ordering::Relaxed);
    };
    // What leaves the queue leaves its byte count.
    let take = |m: Outgoing| {
        queued.fetch_sub(m.buf.len(), Ordering::Relaxed);
        m
    };
    let mut backoff = Backoff::new();
    let mut batch = Vec::with_capacity(BATCH);
    while !stop.load(Ordering::Acquire) {
        let mut conn = match broker.publisher() {
            Ok(c) => {
                backoff.up("publish", stats);
                c
            }
            Err(e) => {
                // Down: what arrives meanwhile is counted lost, not kept (it would be stale,
                // and the queue is for a slow broker, not an absent one).
                let until = Instant::now() + backoff.down("publish", &e);
                while !stop.load(Ordering::Acquire) {
                    let left = until.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    match rx.recv_timeout(left.min(IDLE)) {
                        Ok(m) => {
                            take(m);
                            lost(1)
                        }
                        Err(RecvTimeoutError::Timeout) => {}
                        Err(RecvTimeoutError::Disconnected) => return,
                    }
                }
                continue;
            }
        };
        loop {
            match rx.recv_timeout(IDLE) {
                Ok(m) => batch.push(take(m)),
                Err(RecvTimeoutError::Timeout) if stop.load(Ordering::Acquire) => return,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => return,
            }
            while batch.len() < BATCH {
                match rx.try_recv() {
                    Ok(m) => batch.push(take(m)),
                    Err(_) => break,
                }
            }
            let n = batch.len();
            let sent = conn.publish(&batch);
            batch.clear();
            match sent {
                Ok(()) => {
                    stats.cluster_published.fetch_add(n, Ordering::Relaxed);
                }
                Err(e) => {
                    // Some of the batch may have gone: it is counted lost all the same (the
                    // broker did not confirm it).
                    lost(n);
                    let wait = backoff.down("publish", &e);
                    sleep_unless(stop, wait);
                    break;
                }
            }
        }
    }
}

/// Sleeps `d`, in steps, returning early once `stop` is set.
fn sleep_unless(stop: &AtomicBool, d: Duration) {
    let until = Instant::now() + d;
    while !stop.load(Ordering::Acquire) {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        std::thread::sleep(left.min(IDLE));
    }
}

fn channel_of(topic: &[u8]) -> Vec<u8> {
    [PREFIX, topic].concat()
}

/// Subscribes or unsubscribes `topic` so that the broker holds it exactly while some local
/// connection does (the count read now, not what the edge said).
fn reconcile(
    sub: &mut impl Subscriber,
    held: &mut HashSet<Box<[u8]>>,
    registry: &Registry,
    topic: Box<[u8]>,
) -> io::Result<()> {
    let want = registry.count(&topic) > 0;
    if want && !held.contains(&topic) {
        sub.subscribe(&channel_of(&topic))?;
        held.insert(topic);
    } else if !want && held.contains(&topic) {
        sub.unsubscribe(&channel_of(&topic))?;
        held.remove(&topic);
    }
    Ok(())
}

fn subscribe_loop(
    broker: &impl Broker,
    edges: &Receiver<Box<[u8]>>,
    handle: &ServerHandle,
    origin: u64,
    stop: &AtomicBool,
) {
    let registry = Arc::clone(&handle.inner.topics);
    let stats = Arc::clone(&handle.inner.workers[0].stats);
    let mut backoff = Backoff::new();
    while !stop.load(Ordering::Acquire) {
        let result = broker.subscriber().and_then(|mut sub| {
            backoff.up("subscribe", &stats);
            // A fresh connection holds nothing: every edge so far is covered by subscribing
            // what is live now.
            while edges.try_recv().is_ok() {}
            let mut held = HashSet::new();
            for topic in registry.live_topics() {
                reconcile(&mut sub, &mut held, &registry, topic)?;
            }
            while !stop.load(Ordering::Acquire) {
                loop {
                    match edges.try_recv() {
                        Ok(topic) => reconcile(&mut sub, &mut held, &registry, topic)?,
                        Err(TryRecvError::Empty) => break,
                        Err(TryRecvError::Disconnected) => return Ok(()),
                    }
                }
                let Some((channel, env)) = sub.next(POLL)? else { continue };
                let Some(topic) = channel.strip_prefix(PREFIX) else { continue };
                if let Some((op, payload)) = open_envelope(origin, &env) {
                    handle.publish_others(usize::MAX, topic, op, payload);
                    stats.cluster_received.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(())
        });
        match result {
            Ok(()) => return,
            Err(e) => {
                let wait = backoff.down("subscribe", &e);
                sleep_unless(stop, wait);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_round_trip_and_own_ones_are_skipped() {
        let m = Outgoing::new(b"news", OpCode::Binary, 7, b"\x00\xffpayload");
        assert_eq!(m.channel(), b"sockeye:news");
        assert_eq!(open_envelope(8, m.envelope()), Some((OpCode::Binary, &b"\x00\xffpayload"[..])));
        assert_eq!(open_envelope(7, m.envelope()), None, "our own publish comes back: skipped");
        let t = Outgoing::new(b"t", OpCode::Text, 1, b"");
        assert_eq!(open_envelope(2, t.envelope()), Some((OpCode::Text, &b""[..])));
        assert_eq!(open_envelope(2, b"short"), None);
        assert_eq!(open_envelope(2, &[9; 12]), None, "another version");
    }

    #[test]
    fn a_full_queue_drops_and_counts_never_waits() {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let queued = Arc::new(AtomicUsize::new(0));
        let link = Link { tx, origin: 1, queued: Arc::clone(&queued) };
        let stats = WorkerStats::default();
        link.offer(b"t", OpCode::Text, b"one", &stats);
        link.offer(b"t", OpCode::Text, b"two", &stats);
        assert_eq!(stats.cluster_queue_drops.load(Ordering::Relaxed), 1, "by count");
        let one = rx.try_recv().expect("the first");
        assert_eq!(queued.load(Ordering::Relaxed), one.buf.len(), "the second took nothing");
        queued.fetch_sub(one.buf.len(), Ordering::Relaxed);
        // By bytes: a message that would take the queue past QUEUE_BYTES is dropped whole.
        link.offer(b"t", OpCode::Binary, &vec![0; QUEUE_BYTES], &stats);
        assert_eq!(stats.cluster_queue_drops.load(Ordering::Relaxed), 2, "by bytes");
        assert_eq!(queued.load(Ordering::Relaxed), 0);
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn origin_ids_differ() {
        assert_ne!(origin_id(), origin_id());
    }
}
