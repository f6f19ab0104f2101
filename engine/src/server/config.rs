//! Server configuration: every limit and timeout, with defaults sane for the open internet, and
//! the one place that says which values are accepted ([`Config::validate`]). Everything that
//! builds a server (the Rust builder, the C ABI) goes through it; nothing downstream re-checks
//! or silently clamps a value that was refused here.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use crate::proto::{DeflateConfig, Limits};

/// Which I/O backend the workers use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backend {
    /// io_uring when the kernel offers every operation the engine needs, else epoll. The
    /// environment variable `SOCKEYE_BACKEND=epoll|io_uring` overrides it.
    #[default]
    Auto,
    /// epoll through mio: readiness, then read/write system calls.
    Epoll,
    /// io_uring: completions, provided buffers, batched submissions.
    IoUring,
}

impl std::str::FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(Backend::Auto),
            "epoll" => Ok(Backend::Epoll),
            "io_uring" | "iouring" | "uring" => Ok(Backend::IoUring),
            other => Err(format!("unknown backend {other:?} (expected auto, epoll or io_uring)")),
        }
    }
}

/// Everything a server can be told, with its defaults (`Config::default()`, the values each
/// field's documentation states: sane for a server on the open internet). Usually set through
/// the setters of [`crate::ServerBuilder`], which have the same names (the protocol limits
/// without the `limits.` prefix); [`Config::validate`] (run by `build`) says which values are
/// accepted.
///
/// ```
/// use std::time::Duration;
/// use sockeye::Config;
///
/// let c = Config::default();
/// assert_eq!(c.idle_timeout, Some(Duration::from_secs(120)));
/// assert_eq!(c.limits.max_message_size, 16 << 20);
/// // A whole configuration can be handed to the builder at once.
/// let custom = Config { auto_ping: Some(Duration::from_secs(30)), ..Config::default() };
/// assert!(custom.validate().is_ok());
/// ```
#[derive(Debug, Clone)]
pub struct Config {
    /// Address every worker listens on (SO_REUSEPORT). Default `127.0.0.1:9001`.
    pub addr: SocketAddr,
    /// Worker threads; 0 means one per available core. Accepted: 0..=4096. Default 0.
    /// [`crate::Server::config`] reports the resolved count (never 0).
    pub workers: usize,
    /// The I/O backend. Default [`Backend::Auto`]; [`crate::Server::config`] reports the one
    /// picked.
    pub backend: Backend,
    /// Protocol limits: frame, message and fragment counts, handshake size and timeout, close
    /// timeout. Accepted: `max_frame_size`, `max_message_size` and `max_fragments` at least 1;
    /// `max_handshake_bytes` 512..=1 MiB (1048576); `handshake_timeout` and `close_timeout`
    /// 1 ms..=7 days. Default [`Limits::default()`]: 16 MiB frames and messages, 131072
    /// fragments, 8 KiB handshake heads, 10 s handshake timeout, 5 s close timeout (each
    /// field of [`Limits`] says so too).
    pub limits: Limits,
    /// Close (1001) a connection that received nothing for this long. `None` disables it.
    /// Accepted: `None`, or 1 ms..=7 days. Default 120 s.
    pub idle_timeout: Option<Duration>,
    /// Send a ping after this long without receiving anything; if nothing arrives within
    /// another such interval, close the connection. `None` disables it. Accepted: `None`, or
    /// 1 ms..=7 days. Default `None` (off).
    pub auto_ping: Option<Duration>,
    /// Most bytes a connection may have waiting for its socket. A data send that would take
    /// the queue past it is refused whole ([`crate::SendStatus::Dropped`]); the bound is hard
    /// up to one frame header (at most 14 bytes), and control frames (pings, pongs, the close),
    /// which are never dropped, are bounded instead by reading pausing while the queue is
    /// over the limit. Bytes queued during a loop turn count only once the socket refuses
    /// them: a send that finds the queue too full first offers the queue to the socket.
    /// Default 16 MiB, room for one largest message (`max_message_size`). Accepted: at least 1.
    pub max_backpressure: usize,
    /// What happens to a connection whose queue is full (over `max_backpressure`): off (the
    /// default), the message is dropped for that connection alone and counted
    /// (`Stats::sends_dropped` for a send, `Stats::publish_drops` for a published message);
    /// on, the connection is closed with 1008 instead (counted in
    /// `Stats::backpressure_closes`). Either way a slow subscriber never slows the others,
    /// the publisher or the worker.
    pub close_on_backpressure_limit: bool,
    /// permessage-deflate (RFC 7692): off by default. Enabled, an offer a browser makes is
    /// accepted per these preferences (see [`DeflateConfig`] for each one and what it costs);
    /// data messages of at least `min_size` bytes go out compressed to connections that
    /// negotiated it, a published message is compressed once per worker for all subscribers
    /// that share parameters, and `max_message_size` bounds the inflated size.
    pub deflate: DeflateConfig,
    /// wss://: the certificate and key the listener serves TLS with (rustls). `None` (the
    /// default): plain ws://. Checked by `build` (PEM, key matching the certificate, the
    /// certificate valid now); swapped at run time by [`crate::ServerHandle::reload_tls`].
    pub tls: Option<crate::TlsConfig>,
    /// With [`Config::tls`]: a second address where wss:// is served, while `addr` serves
    /// plain ws:// (both on every worker, one server, one set of handlers). `None` (the
    /// default): `addr` itself serves wss://. [`crate::Server::config`] reports it with its
    /// port resolved when 0 was asked for.
    pub tls_addr: Option<SocketAddr>,
    /// Longest topic name ([`crate::Conn::subscribe`], `publish`), in bytes; a longer one is
    /// refused with [`crate::TopicError::TooLong`]. Default 256. Accepted: 1..=65536.
    pub max_topic_len: usize,
    /// Connections per worker; over it the worker stops accepting until one closes. Accepted:
    /// 1..=1048576 (a connection id holds the slot in 20 bits). Default 1048576 (what the
    /// process's file descriptor limit allows is usually the bound that bites first).
    pub max_connections: usize,
    /// Bytes of send queues and message-assembly buffers one worker may hold, all its
    /// connections together. Over it, data sends are dropped and an incoming message that
    /// would need assembly closes its connection with 1009; the worker keeps serving
    /// everyone else. Default 256 MiB. Accepted: at least 1.
    pub worker_memory_budget: usize,
    /// Bytes of freed buffers one worker keeps for reuse: half for send buffers (each at most
    /// 256 KiB), half for message-assembly buffers (each at most 1 MiB). Not a limit on what
    /// a peer can make the worker hold (that is `worker_memory_budget`): memory the worker
    /// keeps warm after a burst, instead of returning it to the allocator. Default 16 MiB;
    /// 0 keeps nothing.
    pub buffer_cache: usize,
    /// Share the port with other servers of the same user: a server with `share_port` on joins
    /// the SO_REUSEPORT group already listening on the address (a deliberate hand-over, e.g. a
    /// new process taking over from an old one), and the kernel spreads new connections over
    /// all of them. Off by default: `build` first checks with a socket of its own, without
    /// SO_REUSEPORT, that nothing listens on the address, and fails with
    /// [`io::ErrorKind::AddrInUse`] if anything does. The kernel cannot make a group refuse
    /// members: a server with `share_port` off is safe from every server that checks (any
    /// Sockeye server without `share_port`, any socket without SO_REUSEPORT), not from a
    /// program of the same user that sets SO_REUSEPORT itself.
    pub share_port: bool,
    /// Listen backlog of each worker's listener (the kernel caps it at
    /// `net.core.somaxconn`). Accepted: at least 1. Default 4096.
    pub backlog: i32,
    /// Size of each worker's read buffer (epoll). Accepted: 4 KiB..=64 MiB. Default 256 KiB.
    pub read_buffer_size: usize,
    /// How long a graceful shutdown waits for close handshakes before dropping connections.
    /// Accepted: 0 (drop them right after the close frames are sent)..=7 days. Default 5 s.
    pub shutdown_timeout: Duration,
    /// Granularity of the timer wheel: every timeout fires up to one tick late. Accepted:
    /// 1 ms..=10 s. Default 250 ms.
    pub timer_tick: Duration,
    /// io_uring: submission queue entries per worker (the completion queue is four times as
    /// large, and the kernel allows at most 65536 of those). A fuller queue is submitted in
    /// the middle of a loop turn, and completions beyond the completion queue wait in the
    /// kernel, so this bounds memory, not what a turn can do: 1024 (64 KiB of submission
    /// entries, 64 KiB of completions) measured level with 4096 (four times that) at 1,000
    /// and 10,000 connections (benches/README.md). Default 1024. Accepted: a power of two in
    /// 2..=16384 (tiny queues are for tests that overflow them).
    pub uring_entries: u32,
    /// io_uring: buffers in each worker's provided-buffer ring. Where the kernel consumes
    /// buffers incrementally (6.12+), each receive takes only the bytes it carries and a
    /// buffer goes back to the worker once full; before 6.12 every receive takes a whole
    /// buffer, so the ring needs one per connection with bytes to read in a loop turn. `0`
    /// (the default) picks 4 buffers in the first case and 128 in the second. Memory is
    /// virtual until the kernel writes into it. Accepted: 0, or a power of two in 2..=32768,
    /// with `uring_buffers × uring_buffer_size` at most 1 GiB.
    pub uring_buffers: u16,
    /// io_uring: size of each provided buffer. A frame that one receive's bytes do not hold
    /// whole is assembled (copied) across receives, and no receive crosses from one buffer
    /// into the next, so a buffer several times the largest common message saves that copy.
    /// `0` (the default) picks 192 KiB where buffers are consumed incrementally (4 × 192 KiB,
    /// a 768 KiB ring: against 8 × 64 KiB it cut the server's CPU per message by 8 % at
    /// 10 × 64 KiB echoes and 14 % at 500 × 16 KiB, and the user-space copy at 64 KiB from 5 %
    /// of the profile to under 2 %; benches/README.md) and 64 KiB where every receive takes a
    /// whole buffer (128 × 64 KiB: at 500 × 16 KiB echoes 64 KiB buffers took 6.2-6.3 µs of
    /// server CPU per message where 16 KiB × 512 took 7.25). Accepted: 0, or 1 KiB..=16 MiB.
    pub uring_buffer_size: usize,
    /// Data messages of at least this many bytes are written at once, straight from the
    /// sender's memory (header and payload in one `sendmsg`), when nothing of the connection
    /// is in flight; only what the socket does not take is copied into the send queue.
    /// Smaller messages are queued and written together at the end of the loop turn (one
    /// system call for all of a turn's echoes). `usize::MAX` queues everything. Default
    /// 32 KiB: at 10 × 64 KiB echoes it saves 5 % (epoll) and 12 % (io_uring) of server CPU per
    /// message; at 16 KiB the saving is within noise on epoll, and on io_uring the direct
    /// writes break up the end-of-turn batch of sends, which cost the pair 13 % throughput
    /// (benches/README.md).
    pub direct_write_min: usize,
    /// io_uring: sends of at least this many bytes use SEND_ZC (zero copy). `usize::MAX`
    /// turns it off. Default `usize::MAX` (off).
    pub uring_send_zc_threshold: usize,
    /// Pub/sub across processes: the Redis server the cluster bridge uses
    /// (`redis://host:port`, optionally `redis://:password@host:port/db`), `None` (the
    /// default) for none. Set, every publish also goes to the broker (once per process), and
    /// each topic some local connection holds is subscribed there, so that publishes of other
    /// Sockeye processes on the same Redis reach this one's subscribers. Needs the crate's
    /// `cluster` feature: without it, a `Some` is refused. Redis 6 or later (the subscribe
    /// connection speaks RESP3); sharded pub/sub (SSUBSCRIBE/SPUBLISH) where the server has
    /// it (Redis 7). ARCHITECTURE.md ("Cluster bridge") tells the whole story.
    pub cluster_url: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 9001)),
            workers: 0,
            backend: Backend::Auto,
            limits: Limits::default(),
            idle_timeout: Some(Duration::from_secs(120)),
            auto_ping: None,
            max_backpressure: 16 << 20,
            close_on_backpressure_limit: false,
            max_topic_len: 256,
            deflate: DeflateConfig::default(),
            tls: None,
            tls_addr: None,
            max_connections: 1 << 20,
            worker_memory_budget: 256 << 20,
            buffer_cache: 16 << 20,
            share_port: false,
            backlog: 4096,
            read_buffer_size: 256 << 10,
            shutdown_timeout: Duration::from_secs(5),
            timer_tick: Duration::from_millis(250),
            uring_entries: 1024,
            uring_buffers: 0,
            uring_buffer_size: 0,
            uring_send_zc_threshold: usize::MAX,
            direct_write_min: 32 << 10,
            cluster_url: None,
        }
    }
}

/// Most workers a server may have.
pub(crate) const MAX_WORKERS: usize = 4096;
/// Most connections per worker: a [`crate::ConnId`] holds the slab key in 20 bits.
pub(crate) const MAX_CONNECTIONS: usize = 1 << 20;
/// Longest timeout accepted: far enough for any use, near enough that no deadline computed
/// from it (`now + timeout`, twice the auto-ping interval) can overflow.
pub(crate) const MAX_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);
/// Longest topic name accepted for `max_topic_len`.
pub(crate) const MAX_TOPIC_LEN: usize = 1 << 16;
const MIN_HANDSHAKE_BYTES: usize = 512;
const MAX_HANDSHAKE_BYTES: usize = 1 << 20;
const MIN_READ_BUFFER: usize = 4 << 10;
const MAX_READ_BUFFER: usize = 64 << 20;
const MIN_TICK: Duration = Duration::from_millis(1);
const MAX_TICK: Duration = Duration::from_secs(10);
const MIN_URING_ENTRIES: u32 = 2;
const MAX_URING_ENTRIES: u32 = 16 << 10;
const MIN_URING_BUFFERS: u16 = 2;
const MAX_URING_BUFFERS: u16 = 1 << 15;
const MIN_URING_BUFFER: usize = 1 << 10;
const MAX_URING_BUFFER: usize = 16 << 20;
const MAX_URING_RING: usize = 1 << 30;
/// Buffers in a ring of [`Config::uring_buffers`] `0` (the default) where the kernel consumes
/// buffers incrementally: each receive takes only the bytes it carries, so a few buffers serve
/// thousands of small receives per loop turn. With [`AUTO_URING_BUFFER_SIZE_INC`] the ring is
/// 768 KiB, resident once a load has cycled through it.
pub(crate) const AUTO_URING_BUFFERS_INC: u16 = 4;
/// Size of each buffer of a ring of [`Config::uring_buffer_size`] `0` consumed incrementally:
/// three 64 KiB messages (eleven of 16 KiB) fit one buffer, so few of them are cut by a
/// buffer's end and copied. 256 KiB measured no better (benches/README.md).
pub(crate) const AUTO_URING_BUFFER_SIZE_INC: usize = 192 << 10;
/// Size of each buffer of a ring of `uring_buffer_size` `0` where every receive takes a
/// whole buffer.
pub(crate) const AUTO_URING_BUFFER_SIZE: usize = 64 << 10;
/// Buffers in a ring of `uring_buffers` `0` on a kernel before 6.12, where every receive takes
/// a whole buffer, however few bytes it carries.
pub(crate) const AUTO_URING_BUFFERS: u16 = 128;

/// A [`Config`] field outside its accepted range: which one, and why. `build` turns it into
/// an [`io::Error`] of kind [`io::ErrorKind::InvalidInput`] with the same message; the C ABI
/// into `SOCKEYE_ERR_INVALID_ARGUMENT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    field: &'static str,
    reason: String,
}

impl ConfigError {
    fn new(field: &'static str, reason: String) -> Self {
        Self { field, reason }
    }

    /// The field's name as in [`Config`] (protocol limits without the `limits.` prefix, as
    /// the builder's setters name them).
    pub fn field(&self) -> &'static str {
        self.field
    }

    /// Why the value was refused, with the value and the accepted range.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration: {} {}", self.field, self.reason)
    }
}

impl std::error::Error for ConfigError {}

impl From<ConfigError> for io::Error {
    fn from(e: ConfigError) -> Self {
        io::Error::new(io::ErrorKind::InvalidInput, e.to_string())
    }
}

/// `Ok` when `lo <= v <= hi`, else an error naming `field`, `v` and the range.
fn in_range<T>(field: &'static str, v: T, lo: T, hi: T) -> Result<(), ConfigError>
where
    T: PartialOrd + fmt::Debug,
{
    if v < lo || v > hi {
        return Err(ConfigError::new(field, format!("= {v:?}: must be in {lo:?}..={hi:?}")));
    }
    Ok(())
}

fn at_least_one<T>(field: &'static str, v: T) -> Result<(), ConfigError>
where
    T: PartialOrd + From<u8> + fmt::Debug,
{
    if v < T::from(1) {
        return Err(ConfigError::new(field, format!("= {v:?}: must be at least 1")));
    }
    Ok(())
}

fn power_of_two<T>(
    field: &'static str,
    v: T,
    lo: T,
    hi: T,
    is_pow2: bool,
) -> Result<(), ConfigError>
where
    T: PartialOrd + fmt::Debug,
{
    if !is_pow2 || v < lo || v > hi {
        return Err(ConfigError::new(
            field,
            format!("= {v:?}: must be a power of two in {lo:?}..={hi:?}"),
        ));
    }
    Ok(())
}

fn timeout(field: &'static str, v: Duration, min: Duration) -> Result<(), ConfigError> {
    in_range(field, v, min, MAX_TIMEOUT)
}

fn optional_timeout(field: &'static str, v: Option<Duration>) -> Result<(), ConfigError> {
    match v {
        None => Ok(()),
        Some(d) if d.is_zero() => Err(ConfigError::new(
            field,
            "= Some(0ns): must be at least 1ms (None turns it off)".to_owned(),
        )),
        Some(d) => timeout(field, d, MIN_TICK),
    }
}

/// A `cluster_url` the bridge can use: the `cluster` feature compiled in, and a `redis://`
/// URL the client accepts.
fn check_cluster_url(url: &str) -> Result<(), ConfigError> {
    if !cfg!(feature = "cluster") {
        return Err(ConfigError::new(
            "cluster_url",
            format!("= {url:?}: this build of sockeye lacks the `cluster` feature"),
        ));
    }
    if !url.starts_with("redis://") {
        return Err(ConfigError::new(
            "cluster_url",
            format!("= {url:?}: must be a redis://host:port URL"),
        ));
    }
    #[cfg(feature = "cluster")]
    if let Err(e) = crate::cluster::check_url(url) {
        return Err(ConfigError::new("cluster_url", format!("= {url:?}: {e}")));
    }
    Ok(())
}

impl Config {
    /// The worker count with 0 resolved to the number of available cores (at most 4096).
    pub fn worker_count(&self) -> usize {
        if self.workers > 0 {
            self.workers
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get()).min(MAX_WORKERS)
        }
    }

    /// Checks every field against its accepted range (each field's documentation says which)
    /// and reports the first one outside it, in declaration order. A value refused here would
    /// break every connection (no connection accepted, every one reset or closed) or the
    /// engine itself (an allocation or a deadline that cannot be computed). `build` calls it
    /// before binding anything.
    pub fn validate(&self) -> Result<(), ConfigError> {
        in_range("workers", self.workers, 0, MAX_WORKERS)?;
        if let Some(a) = self.tls_addr {
            if self.tls.is_none() {
                return Err(ConfigError::new(
                    "tls_addr",
                    format!("= {a}: a TLS address needs a certificate (`tls`)"),
                ));
            }
            if a == self.addr && a.port() != 0 {
                return Err(ConfigError::new(
                    "tls_addr",
                    format!("= {a}: the same address as `addr`; one listener speaks one protocol"),
                ));
            }
        }
        let l = &self.limits;
        at_least_one("max_frame_size", l.max_frame_size)?;
        at_least_one("max_message_size", l.max_message_size)?;
        at_least_one("max_fragments", l.max_fragments)?;
        in_range(
            "max_handshake_bytes",
            l.max_handshake_bytes,
            MIN_HANDSHAKE_BYTES,
            MAX_HANDSHAKE_BYTES,
        )?;
        timeout("handshake_timeout", l.handshake_timeout, MIN_TICK)?;
        timeout("close_timeout", l.close_timeout, MIN_TICK)?;
        optional_timeout("idle_timeout", self.idle_timeout)?;
        optional_timeout("auto_ping", self.auto_ping)?;
        at_least_one("max_backpressure", self.max_backpressure)?;
        in_range("max_connections", self.max_connections, 1, MAX_CONNECTIONS)?;
        in_range("max_topic_len", self.max_topic_len, 1, MAX_TOPIC_LEN)?;
        self.deflate.validate().map_err(|r| ConfigError::new("deflate", r.to_owned()))?;
        at_least_one("worker_memory_budget", self.worker_memory_budget)?;
        in_range("backlog", self.backlog, 1, i32::MAX)?;
        in_range("read_buffer_size", self.read_buffer_size, MIN_READ_BUFFER, MAX_READ_BUFFER)?;
        timeout("shutdown_timeout", self.shutdown_timeout, Duration::ZERO)?;
        in_range("timer_tick", self.timer_tick, MIN_TICK, MAX_TICK)?;
        power_of_two(
            "uring_entries",
            self.uring_entries,
            MIN_URING_ENTRIES,
            MAX_URING_ENTRIES,
            self.uring_entries.is_power_of_two(),
        )?;
        if self.uring_buffers != 0 {
            power_of_two(
                "uring_buffers",
                self.uring_buffers,
                MIN_URING_BUFFERS,
                MAX_URING_BUFFERS,
                self.uring_buffers.is_power_of_two(),
            )?;
        }
        if self.uring_buffer_size != 0 {
            in_range(
                "uring_buffer_size",
                self.uring_buffer_size,
                MIN_URING_BUFFER,
                MAX_URING_BUFFER,
            )?;
        }
        // `0` may mean the larger of the automatic counts and sizes.
        let most = if self.uring_buffers == 0 { AUTO_URING_BUFFERS } else { self.uring_buffers };
        let size = match self.uring_buffer_size {
            0 => AUTO_URING_BUFFER_SIZE.max(AUTO_URING_BUFFER_SIZE_INC),
            n => n,
        };
        let ring = usize::from(most) * size;
        if ring > MAX_URING_RING {
            return Err(ConfigError::new(
                "uring_buffers",
                format!(
                    "× uring_buffer_size = {most} × {size} = {ring} bytes: the ring must hold \
                     at most {MAX_URING_RING} (1 GiB)"
                ),
            ));
        }
        if let Some(url) = &self.cluster_url {
            check_cluster_url(url)?;
        }
        Ok(())
    }
}
