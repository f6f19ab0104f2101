//! The handle other threads hold: what they may ask a worker ([`Command`]), how they wake it
//! ([`Wake`]), and the counters each worker publishes ([`Stats`]). A leaf of the server layer:
//! the core and the backends use it; it uses neither.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use crossbeam_channel::Sender;

use crate::proto::{CloseCode, OpCode};

use super::api::{ConnId, Message, Post, TopicError};
use super::topics::Registry;

/// Something another thread asks a worker to do.
#[derive(Debug)]
pub(crate) enum Command {
    Shutdown,
    Post(Post),
    Send(ConnId, OpCode, Vec<u8>),
    Close(ConnId, CloseCode, String),
    /// A message published to a topic: one per worker that may hold a subscriber, however
    /// many subscribers it holds; the payload is shared by every worker it is sent to.
    Publish(Arc<[u8]>, OpCode, Arc<[u8]>),
}

/// A publish's topic and payload, shared by the workers it is sent to.
type SharedPublish = (Arc<[u8]>, Arc<[u8]>);

/// Wakes a worker's event loop from another thread.
pub(crate) trait Wake: Send + Sync + std::fmt::Debug {
    fn wake(&self) -> io::Result<()>;
}

#[derive(Debug)]
pub(crate) struct WorkerLink {
    pub(crate) tx: Sender<Command>,
    pub(crate) waker: Arc<dyn Wake>,
    pub(crate) stats: Arc<WorkerStats>,
}

/// Declares the per-worker counters once: the atomics a worker publishes into at the end of
/// every loop turn (relaxed: cheap to write, good enough for a monitoring thread or a test)
/// and the public snapshot [`Stats`] read from them.
macro_rules! worker_stats {
    ($($(#[$doc:meta])* $name:ident,)*) => {
        #[derive(Debug, Default)]
        pub(crate) struct WorkerStats {
            $(pub(crate) $name: AtomicUsize,)*
        }

        /// A snapshot of one worker's counters. Counters (`*_total` in the demo's `/metrics`)
        /// only grow; `connections`, `memory_in_use`, `buffers_total` and `buffers_in_kernel`
        /// are gauges.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
        #[non_exhaustive]
        pub struct Stats {
            $($(#[$doc])* pub $name: usize,)*
        }

        impl WorkerStats {
            pub(crate) fn snapshot(&self) -> Stats {
                Stats { $($name: self.$name.load(Ordering::Relaxed),)* }
            }
        }

        impl Stats {
            /// Every field by name, in declaration order (for exporters such as `/metrics`).
            pub fn fields(&self) -> impl Iterator<Item = (&'static str, usize)> {
                [$((stringify!($name), self.$name),)*].into_iter()
            }
        }
    };
}

worker_stats! {
    /// Connections the worker holds (handshaking, open or closing).
    connections,
    /// io_uring: buffers in the provided-buffer ring (0 on epoll).
    buffers_total,
    /// io_uring: buffers lent to the kernel; at rest it equals `buffers_total` (none held by
    /// the engine, none leaked).
    buffers_in_kernel,
    /// io_uring: times a receive found the ring empty (ENOBUFS) and was re-armed.
    buffer_shortages,
    /// Bytes of send queues and message-assembly buffers the worker holds now (what
    /// `Config::worker_memory_budget` bounds).
    memory_in_use,
    /// Connections dropped because their handshake did not complete within
    /// `handshake_timeout`.
    handshake_timeouts,
    /// Connections closed (1001) by `idle_timeout` or an unanswered auto-ping.
    idle_timeouts,
    /// Connections force-closed (reset) because their close did not complete within
    /// `close_timeout` of being sent or received, whatever was still queued.
    close_timeouts,
    /// Handler callbacks that panicked (caught; the connection was closed with 1011).
    handler_panics,
    /// Data sends refused because the connection's queue would pass `max_backpressure`.
    sends_dropped,
    /// Sends and incoming messages refused because the worker's memory budget was reached
    /// (an incoming message refused closes its connection with 1009).
    budget_refusals,
    /// Connections closed for a protocol violation by the peer (1002, 1007, 1009).
    protocol_errors,
    /// Handshake requests answered with an HTTP error (4xx, or 500 for a handler's mistake).
    bad_handshakes,
    /// Data messages received (text and binary, whole).
    messages_in,
    /// Data messages queued to connections: sends, and published messages once per
    /// subscriber reached.
    messages_out,
    /// Published messages queued to a subscriber of this worker (one per subscriber reached).
    deliveries,
    /// Published messages dropped for a subscriber whose queue was over `max_backpressure`.
    publish_drops,
    /// Connections closed with 1008 because their queue was over `max_backpressure` (with
    /// `close_on_backpressure_limit` on).
    backpressure_closes,
    /// Topic subscriptions the worker holds now (a gauge).
    subscriptions,
    /// TLS handshakes completed.
    tls_handshakes,
    /// TLS connections that failed (bad records, failed handshakes, alerts, plaintext on
    /// the TLS port); each is dropped, and only the first per worker is logged.
    tls_errors,
    /// Cluster bridge (`Config::cluster_url`; this and the next five are server-wide figures,
    /// counted on worker 0's `Stats` and 0 on the others, so that sums over workers stay
    /// right): published messages the broker took (one per publish, however many processes
    /// subscribe).
    cluster_published,
    /// Cluster bridge: messages from other processes fanned out to this server's subscribers
    /// (one per message, however many subscribers it reached; see `deliveries` for those).
    cluster_received,
    /// Cluster bridge: publishes not handed to the broker because the bridge's queue was full
    /// (a broker slower than the publishers); local subscribers got them.
    cluster_queue_drops,
    /// Cluster bridge: publishes that could not be sent because the broker was unreachable
    /// (queued while it was down, or in a batch whose send failed); local subscribers got
    /// them.
    cluster_lost,
    /// Cluster bridge: connections to the broker made again after one was lost or refused
    /// (each reconnect re-subscribes every topic a local connection holds).
    cluster_reconnects,
    /// Cluster bridge: messages from other processes not handed to a worker, one per worker
    /// skipped, because that worker was behind (its command backlog at the bridge's bound, or
    /// the bridge's bytes of messages not yet taken by every worker at theirs); its
    /// subscribers missed them.
    cluster_inbound_drops,
}

#[derive(Debug)]
pub(crate) struct HandleInner {
    pub(crate) workers: Vec<WorkerLink>,
    pub(crate) local_addr: SocketAddr,
    pub(crate) stopping: AtomicBool,
    pub(crate) topics: Arc<Registry>,
    pub(crate) max_topic_len: usize,
    pub(crate) tls: super::tls::TlsState,
    /// The cluster bridge's queue, when `Config::cluster_url` is set.
    #[cfg(feature = "cluster")]
    pub(crate) cluster: Option<crate::cluster::Link>,
}

/// Controls a running server from any thread: shutdown, sends to a connection, posts to every
/// worker, counters. `Send + Sync`, cheap to clone; get one from [`crate::Server::handle`]
/// before [`crate::Server::run`] takes the server, or from [`crate::Conn::handle`] in a
/// callback.
///
/// Every call is a message to a worker's command channel plus a wake-up: it never blocks and
/// never waits for the worker (a send is done in the worker's next loop turn). None of it is
/// async-signal-safe: call it from a thread, not from a signal handler (see
/// `examples/shutdown.rs`).
///
/// ```no_run
/// use std::time::Duration;
/// use sockeye::{Conn, ConnId, Handler, Message, Server};
///
/// struct Echo;
/// impl Handler for Echo {
///     type Data = ();
///     fn on_message(&mut self, conn: &mut Conn<'_, ()>, msg: Message<'_>) {
///         conn.send(msg);
///     }
/// }
///
/// let server = Server::builder().listen("127.0.0.1:0").handler(|| Echo).build()?;
/// let handle = server.handle();
/// let runner = std::thread::spawn(move || server.run());
///
/// // From any thread: a send by id (ids come from `Conn::id` in a callback), counters, and
/// // the graceful stop, after which `run` returns.
/// let some_id: ConnId = ConnId::from_u64(0); // names no connection: ignored
/// handle.send_text(some_id, "hello");
/// let open: usize = handle.stats().iter().map(|s| s.connections).sum();
/// println!("{open} connections on {} workers", handle.workers());
/// std::thread::sleep(Duration::from_secs(1));
/// handle.shutdown();
/// runner.join().expect("the server thread")?;
/// # Ok::<(), sockeye::Error>(())
/// ```
///
/// `examples/push.rs` is a whole program that pushes from its own thread.
#[derive(Debug, Clone)]
pub struct ServerHandle {
    pub(crate) inner: Arc<HandleInner>,
}

impl ServerHandle {
    fn command(&self, worker: usize, cmd: Command) -> bool {
        let Some(w) = self.inner.workers.get(worker) else { return false };
        if w.tx.send(cmd).is_err() {
            return false;
        }
        if let Err(e) = w.waker.wake() {
            log::warn!("waking worker {worker}: {e}");
        }
        true
    }

    /// Starts a graceful shutdown: workers stop accepting, send close 1001 to every connection,
    /// wait for the close handshakes up to the shutdown timeout, and return from
    /// [`crate::Server::run`].
    pub fn shutdown(&self) {
        if self.inner.stopping.swap(true, Ordering::AcqRel) {
            return;
        }
        for i in 0..self.inner.workers.len() {
            self.command(i, Command::Shutdown);
        }
    }

    /// Whether a shutdown was asked for.
    pub fn is_shutting_down(&self) -> bool {
        self.inner.stopping.load(Ordering::Acquire)
    }

    /// The address the server listens on (with the port resolved when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// Number of workers.
    pub fn workers(&self) -> usize {
        self.inner.workers.len()
    }

    /// Each worker's counters, as of its last loop turn.
    pub fn stats(&self) -> Vec<Stats> {
        self.inner.workers.iter().map(|w| w.stats.snapshot()).collect()
    }

    /// Hands `post` to every worker's [`crate::Handler::on_post`]. Returns how many workers took it.
    pub fn post_all(&self, post: Post) -> usize {
        (0..self.inner.workers.len())
            .filter(|&i| self.command(i, Command::Post(post.clone())))
            .count()
    }

    /// Hands `post` to one worker's [`crate::Handler::on_post`].
    pub fn post(&self, worker: usize, post: Post) -> bool {
        self.command(worker, Command::Post(post))
    }

    /// Sends a text message to a connection on any worker. Returns false if its worker is gone;
    /// a connection that closed meanwhile is skipped silently.
    pub fn send_text(&self, id: ConnId, text: &str) -> bool {
        self.command(id.worker(), Command::Send(id, OpCode::Text, text.as_bytes().to_vec()))
    }

    /// Sends a binary message to a connection on any worker.
    pub fn send_binary(&self, id: ConnId, data: &[u8]) -> bool {
        self.command(id.worker(), Command::Send(id, OpCode::Binary, data.to_vec()))
    }

    /// Publishes a message to every subscriber of `topic`, on every worker, from any thread.
    /// The payload is copied once and shared by the workers it is sent to: one command per
    /// worker that may hold a subscriber, none to the others (a topic nobody holds costs a
    /// hash and an atomic load). Messages published from one thread to one topic reach each
    /// subscriber in the order they were published.
    ///
    /// ```no_run
    /// # fn f(handle: &sockeye::ServerHandle) -> Result<(), sockeye::TopicError> {
    /// handle.publish("prices", "EURUSD 1.0842")?;
    /// # Ok(()) }
    /// ```
    pub fn publish<'m>(
        &self,
        topic: impl AsRef<[u8]>,
        msg: impl Into<Message<'m>>,
    ) -> Result<(), TopicError> {
        let topic = topic.as_ref();
        let msg = msg.into();
        self.publish_local(topic, msg)?;
        self.publish_remote(topic, msg.opcode(), msg.as_bytes());
        Ok(())
    }

    /// Replaces the TLS certificate and key of a server built with [`crate::Config::tls`]:
    /// handshakes that start from now on use the new ones; connections already open keep
    /// theirs. The new configuration is checked as `build` checks it, and refused whole.
    ///
    /// # Errors
    ///
    /// [`crate::Error::Tls`]: the server does not serve TLS, or the certificate or key was
    /// refused (the text says why); the old ones stay in force.
    pub fn reload_tls(&self, tls: &crate::TlsConfig) -> Result<(), crate::Error> {
        if self.inner.tls.current().is_none() {
            return Err(crate::Error::Tls("this server does not serve TLS".into()));
        }
        self.inner.tls.replace(tls.build().map_err(crate::Error::Tls)?);
        Ok(())
    }

    /// Publishes to the subscribers of `topic` in this process only, as
    /// [`ServerHandle::publish`] does without a cluster: with `Config::cluster_url` set, the
    /// message does not go to the broker (for what is about this process, such as its own
    /// stats).
    pub fn publish_local<'m>(
        &self,
        topic: impl AsRef<[u8]>,
        msg: impl Into<Message<'m>>,
    ) -> Result<(), TopicError> {
        let topic = topic.as_ref();
        let msg = msg.into();
        self.check_topic(topic)?;
        if msg.as_bytes().len() > super::core::MAX_SEND {
            return Err(TopicError::TooLarge);
        }
        self.publish_others(usize::MAX, topic, msg.opcode(), msg.as_bytes());
        Ok(())
    }

    /// Hands a publish to the cluster bridge (when `Config::cluster_url` is set), for the other
    /// processes: never waits (a full queue drops it, counted in `Stats::cluster_queue_drops`).
    /// Every publish goes, whatever this process holds: whether another process has a
    /// subscriber is known only to the broker.
    #[inline]
    pub(crate) fn publish_remote(&self, topic: &[u8], op: OpCode, payload: &[u8]) {
        #[cfg(feature = "cluster")]
        if let Some(link) = &self.inner.cluster {
            link.offer(topic, op, payload, &self.inner.workers[0].stats);
        }
        #[cfg(not(feature = "cluster"))]
        let _ = (topic, op, payload);
    }

    /// Subscribers of `topic` over all workers. Each worker's part is exact as of its last
    /// subscribe or unsubscribe; the sum is read without stopping the workers.
    pub fn subscriber_count(&self, topic: impl AsRef<[u8]>) -> usize {
        self.inner.topics.count(topic.as_ref())
    }

    pub(crate) fn check_topic(&self, topic: &[u8]) -> Result<(), TopicError> {
        let max = self.inner.max_topic_len;
        if topic.len() > max {
            return Err(TopicError::TooLong { len: topic.len(), max });
        }
        Ok(())
    }

    /// Sends a publish to the workers but `me` that may hold a subscriber of `topic`; topic
    /// and payload are copied once, at the first such worker, and shared by all of them.
    pub(crate) fn publish_others(&self, me: usize, topic: &[u8], op: OpCode, payload: &[u8]) {
        let mut shared: Option<SharedPublish> = None;
        for w in self.inner.topics.route(topic).others(me) {
            let (t, p) = shared.get_or_insert_with(|| (topic.into(), payload.into()));
            self.command(w, Command::Publish(Arc::clone(t), op, Arc::clone(p)));
        }
    }

    /// Sends a message from the cluster broker to the workers that may hold a subscriber of
    /// `topic`, as `publish_others` does, but never to a worker whose command channel already
    /// holds `backlog` commands, nor to any when the payload is over `room` bytes: those
    /// workers are skipped (their subscribers miss it). The channels stay unbounded (a
    /// handle's sends and posts never fail); the bound is their length, read, never waited
    /// on. Returns the payload as the workers share it (`None` if none took it) and how many
    /// were skipped.
    #[cfg(feature = "cluster")]
    pub(crate) fn publish_inbound(
        &self,
        topic: &[u8],
        op: OpCode,
        payload: &[u8],
        backlog: usize,
        room: usize,
    ) -> (Option<Arc<[u8]>>, usize) {
        let mut shared: Option<SharedPublish> = None;
        let mut skipped = 0;
        for w in self.inner.topics.route(topic).others(usize::MAX) {
            let Some(link) = self.inner.workers.get(w) else { continue };
            if payload.len() > room || link.tx.len() >= backlog {
                skipped += 1;
                continue;
            }
            let (t, p) = shared.get_or_insert_with(|| (topic.into(), payload.into()));
            self.command(w, Command::Publish(Arc::clone(t), op, Arc::clone(p)));
        }
        (shared.map(|(_, p)| p), skipped)
    }

    /// Starts the close handshake of a connection on any worker. Returns false if `code` may
    /// not go on the wire (see [`crate::Conn::close`]: nothing is sent) or the worker is gone.
    pub fn close(&self, id: ConnId, code: CloseCode, reason: &str) -> bool {
        code.is_valid_on_wire()
            && self.command(id.worker(), Command::Close(id, code, reason.to_owned()))
    }
}
