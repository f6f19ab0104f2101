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
//!   out each message another process published as `ServerHandle::publish` does (one
//!   command per worker that may hold a subscriber, the frame built once per worker), but
//!   bounded: a worker behind by [`INBOUND_BACKLOG`] commands is skipped, and so is every
//!   worker once [`INBOUND_BYTES`] of broker messages wait for some worker
//!   (`Stats::cluster_inbound_drops`, one per worker skipped).
//!
//! Against a Redis Cluster (`redis.rs`) "one connection" is one per master: each channel is
//! sent to the master of its hash slot (`slots.rs`), always on the same connection, which
//! is what keeps the order. The Redis broker also runs a small reader thread per subscribe
//! connection (the sync client waits on one socket at a time); the bridge sees none of it.
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
mod slots;

use std::collections::{HashSet, VecDeque};
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
/// Commands waiting in a worker's channel past which a message from the broker is not handed
/// to it (dropped for its subscribers, counted in `Stats::cluster_inbound_drops`).
const INBOUND_BACKLOG: usize = 4096;
/// Bytes of broker messages handed to the workers and not yet taken by all of them, past
/// which a message is handed to none; each counts its payload and [`INBOUND_ENTRY`].
const INBOUND_BYTES: usize = 64 << 20;
const INBOUND_ENTRY: usize = 64;
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
        // The connection is "back" once the broker took a batch on it: against a cluster,
        // the node first reached may be up while the one a batch goes to is not.
        let mut confirmed = false;
        let mut conn = match broker.publisher() {
            Ok(c) => c,
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
                    if !confirmed {
                        backoff.up("publish", stats);
                        confirmed = true;
                    }
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

/// The broker messages handed to the workers and not yet taken by all of them: their shared
/// payloads, oldest first (a worker drops its reference once it has fanned the message out).
#[derive(Debug, Default)]
struct Inbound {
    held: VecDeque<Arc<[u8]>>,
    bytes: usize,
}

impl Inbound {
    /// Lets go of the oldest payloads every worker has taken. Only from the front, so a
    /// worker behind keeps what came after its oldest message counted: this errs towards
    /// dropping early, never towards holding more than [`INBOUND_BYTES`].
    fn prune(&mut self) {
        while self.held.front().is_some_and(|p| Arc::strong_count(p) == 1) {
            if let Some(p) = self.held.pop_front() {
                self.bytes -= p.len() + INBOUND_ENTRY;
            }
        }
    }

    /// Fans a broker message out to the workers, bounded (see the module's docs).
    fn deliver(
        &mut self,
        handle: &ServerHandle,
        topic: &[u8],
        op: OpCode,
        payload: &[u8],
        stats: &WorkerStats,
    ) {
        self.prune();
        let room = INBOUND_BYTES.saturating_sub(self.bytes + INBOUND_ENTRY);
        let (shared, skipped) = handle.publish_inbound(topic, op, payload, INBOUND_BACKLOG, room);
        if let Some(p) = shared {
            self.bytes += p.len() + INBOUND_ENTRY;
            self.held.push_back(p);
        }
        if skipped > 0 {
            stats.cluster_inbound_drops.fetch_add(skipped, Ordering::Relaxed);
        }
    }
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
    let mut inbound = Inbound::default();
    while !stop.load(Ordering::Acquire) {
        let result = broker.subscriber().and_then(|mut sub| {
            // A fresh connection holds nothing: every edge so far is covered by subscribing
            // what is live now.
            while edges.try_recv().is_ok() {}
            let mut held = HashSet::new();
            for topic in registry.live_topics() {
                reconcile(&mut sub, &mut held, &registry, topic)?;
            }
            // Back once every live topic is subscribed again (against a cluster, the node
            // first reached may be up while a topic's master is not).
            backoff.up("subscribe", &stats);
            while !stop.load(Ordering::Acquire) {
                loop {
                    match edges.try_recv() {
                        Ok(topic) => reconcile(&mut sub, &mut held, &registry, topic)?,
                        Err(TryRecvError::Empty) => break,
                        Err(TryRecvError::Disconnected) => return Ok(()),
                    }
                }
                let Some((channel, env)) = sub.next(POLL)? else {
                    inbound.prune();
                    continue;
                };
                let Some(topic) = channel.strip_prefix(PREFIX) else { continue };
                if let Some((op, payload)) = open_envelope(origin, &env) {
                    inbound.deliver(handle, topic, op, payload, &stats);
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

    #[derive(Debug)]
    struct NoWake;
    impl crate::server::handle::Wake for NoWake {
        fn wake(&self) -> io::Result<()> {
            Ok(())
        }
    }

    /// A handle on two workers that never run (their channels only fill), each holding a
    /// subscriber of `t`.
    #[allow(clippy::type_complexity)]
    fn stalled_workers() -> (
        ServerHandle,
        Vec<Receiver<crate::server::handle::Command>>,
        Vec<crate::server::topics::Topics>,
    ) {
        use crate::server::handle::{HandleInner, WorkerLink};
        let registry = Arc::new(Registry::new(2));
        let (mut links, mut rxs) = (Vec::new(), Vec::new());
        for _ in 0..2 {
            let (tx, rx) = crossbeam_channel::unbounded();
            links.push(WorkerLink {
                tx,
                waker: Arc::new(NoWake),
                stats: Arc::new(WorkerStats::default()),
            });
            rxs.push(rx);
        }
        let topics: Vec<_> = (0..2)
            .map(|w| {
                let mut t = crate::server::topics::Topics::new(w, Arc::clone(&registry));
                t.subscribe(1, b"t");
                t
            })
            .collect();
        let handle = ServerHandle {
            inner: Arc::new(HandleInner {
                workers: links,
                local_addr: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
                stopping: AtomicBool::new(false),
                topics: registry,
                max_topic_len: 256,
                tls: crate::server::tls::TlsState::new(None),
                cluster: None,
            }),
        };
        (handle, rxs, topics)
    }

    #[test]
    fn inbound_messages_are_bounded_per_worker_by_count() {
        let (handle, rxs, _topics) = stalled_workers();
        let stats = WorkerStats::default();
        let mut inbound = Inbound::default();
        for _ in 0..INBOUND_BACKLOG + 10 {
            inbound.deliver(&handle, b"t", OpCode::Text, b"m", &stats);
        }
        // Each stalled worker took its backlog's worth, then was skipped.
        assert!(rxs.iter().all(|rx| rx.len() == INBOUND_BACKLOG));
        assert_eq!(stats.cluster_inbound_drops.load(Ordering::Relaxed), 2 * 10);
        // Worker 1 catches up: it takes messages again, worker 0 still does not.
        while rxs[1].try_recv().is_ok() {}
        inbound.deliver(&handle, b"t", OpCode::Text, b"m", &stats);
        assert_eq!((rxs[0].len(), rxs[1].len()), (INBOUND_BACKLOG, 1));
        assert_eq!(stats.cluster_inbound_drops.load(Ordering::Relaxed), 2 * 10 + 1);
        // A topic nobody holds reaches no worker and drops nothing.
        inbound.deliver(&handle, b"other", OpCode::Text, b"m", &stats);
        assert_eq!(stats.cluster_inbound_drops.load(Ordering::Relaxed), 2 * 10 + 1);
    }

    #[test]
    fn inbound_messages_are_bounded_by_bytes_and_freed_as_workers_take_them() {
        let (handle, rxs, _topics) = stalled_workers();
        let stats = WorkerStats::default();
        let mut inbound = Inbound::default();
        let big = vec![7u8; INBOUND_BYTES / 4];
        for _ in 0..3 {
            inbound.deliver(&handle, b"t", OpCode::Binary, &big, &stats);
        }
        assert_eq!(stats.cluster_inbound_drops.load(Ordering::Relaxed), 0);
        // The fourth would pass the bound (each also counts its entry): both workers skip it.
        inbound.deliver(&handle, b"t", OpCode::Binary, &big, &stats);
        assert_eq!(stats.cluster_inbound_drops.load(Ordering::Relaxed), 2);
        assert!(inbound.bytes <= INBOUND_BYTES);
        // Worker 0 takes everything: still held by worker 1, nothing freed.
        while rxs[0].try_recv().is_ok() {}
        inbound.prune();
        assert_eq!(inbound.held.len(), 3);
        // Worker 1 too: all freed, and a message goes through again.
        while rxs[1].try_recv().is_ok() {}
        inbound.prune();
        assert_eq!((inbound.held.len(), inbound.bytes), (0, 0));
        inbound.deliver(&handle, b"t", OpCode::Binary, &big, &stats);
        assert_eq!((rxs[0].len(), rxs[1].len()), (1, 1));
        assert_eq!(stats.cluster_inbound_drops.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn origin_ids_differ() {
        assert_ne!(origin_id(), origin_id());
    }
}
