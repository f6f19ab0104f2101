//! Server configuration: every limit and timeout, with defaults sane for the open internet.

use std::net::SocketAddr;
use std::time::Duration;

use crate::proto::Limits;

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

/// Everything a server can be told. Build one with [`crate::Server::builder`].
#[derive(Debug, Clone)]
pub struct Config {
    /// Address every worker listens on (SO_REUSEPORT).
    pub addr: SocketAddr,
    /// Worker threads; 0 means one per available core.
    pub workers: usize,
    /// The I/O backend.
    pub backend: Backend,
    /// Protocol limits: frame, message and fragment counts, handshake size and timeout, close
    /// timeout.
    pub limits: Limits,
    /// Close (1001) a connection that received nothing for this long. `None` disables it.
    pub idle_timeout: Option<Duration>,
    /// Send a ping after this long without receiving anything; if nothing arrives within
    /// another such interval, close the connection. `None` disables it.
    pub auto_ping: Option<Duration>,
    /// Most bytes a connection may have waiting for its socket. A data send that would take
    /// the queue past it is refused whole ([`crate::SendStatus::Dropped`]); the bound is hard
    /// up to one frame header (at most 14 bytes), and control frames (pings, pongs, the close),
    /// which are never dropped, are bounded instead by reading pausing while the queue is
    /// over the limit. Bytes queued during a loop turn count only once the socket refuses
    /// them: a send that finds the queue too full first offers the queue to the socket.
    /// Default 16 MiB, room for one largest message (`max_message_size`).
    pub max_backpressure: usize,
    /// Close the connection (1008) when a send is dropped over `max_backpressure`.
    pub close_on_backpressure_limit: bool,
    /// Connections per worker; over it the worker stops accepting until one closes.
    pub max_connections: usize,
    /// Bytes of send queues and message-assembly buffers one worker may hold, all its
    /// connections together. Over it, data sends are dropped and an incoming message that
    /// would need assembly closes its connection with 1009; the worker
    /// keeps serving everyone else. Default 256 MiB.
    pub worker_memory_budget: usize,
    /// Let other sockets join this server's SO_REUSEPORT group on the same address (another
    /// process of the same user, for a deliberate hand-over). Off by default: `build` fails
    /// with `AddrInUse` when anything already listens on the address.
    pub share_port: bool,
    /// Listen backlog.
    pub backlog: i32,
    /// Size of each worker's read buffer.
    pub read_buffer_size: usize,
    /// How long a graceful shutdown waits for close handshakes before dropping connections.
    pub shutdown_timeout: Duration,
    /// Granularity of the timer wheel.
    pub timer_tick: Duration,
    /// io_uring: submission queue entries per worker (a power of two; the completion queue
    /// is four times as large). Default 4096.
    pub uring_entries: u32,
    /// io_uring: buffers in each worker's provided-buffer ring (a power of two).
    pub uring_buffers: u16,
    /// io_uring: size of each provided buffer. A frame larger than one buffer is assembled
    /// (copied) across buffers, so this is sized to hold a 16 KiB message whole: at 500 × 16 KiB
    /// echoes 64 KiB buffers took 6.2-6.3 µs of server CPU per message where 16 KiB × 512 took
    /// 7.25 (interleaved runs, benches/README.md); 128 of them keep the ring at 8 MiB. Memory
    /// is virtual until the kernel writes into it: small messages touch one page per buffer.
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
    /// turns it off.
    pub uring_send_zc_threshold: usize,
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
            max_connections: 1 << 20,
            worker_memory_budget: 256 << 20,
            share_port: false,
            backlog: 4096,
            read_buffer_size: 256 << 10,
            shutdown_timeout: Duration::from_secs(5),
            timer_tick: Duration::from_millis(250),
            uring_entries: 4096,
            uring_buffers: 128,
            uring_buffer_size: 64 << 10,
            uring_send_zc_threshold: usize::MAX,
            direct_write_min: 32 << 10,
        }
    }
}

impl Config {
    /// The worker count with 0 resolved to the number of available cores.
    pub fn worker_count(&self) -> usize {
        if self.workers > 0 {
            self.workers
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
    }
}
