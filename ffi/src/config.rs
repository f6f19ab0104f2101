//! `sockeye_config`: every setting of a server as one plain C struct, its defaults, and its
//! translation into [`sockeye::Config`]. It never keeps a pointer from the struct: the address
//! string is read once, in `sockeye_server_new`.

use std::ffi::{c_char, CStr};
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use sockeye::proto::Limits;
use sockeye::{Backend, Config, DeflateConfig, DeflateMemory};

use crate::{
    guard, sockeye_result, SOCKEYE_ERR_ADDRESS, SOCKEYE_ERR_INVALID_ARGUMENT, SOCKEYE_ERR_NULL,
};
use crate::{SOCKEYE_ERR_TLS, SOCKEYE_ERR_UTF8, SOCKEYE_OK};

/// Which I/O backend the workers use: one of the `SOCKEYE_BACKEND_*` values.
pub type sockeye_backend = u32;
/// io_uring when the kernel offers everything the engine needs, else epoll. The environment
/// variable `SOCKEYE_BACKEND=epoll|io_uring` overrides it.
pub const SOCKEYE_BACKEND_AUTO: sockeye_backend = 0;
/// epoll: readiness, then read/write system calls.
pub const SOCKEYE_BACKEND_EPOLL: sockeye_backend = 1;
/// io_uring: completions, provided buffers, batched submissions.
pub const SOCKEYE_BACKEND_IO_URING: sockeye_backend = 2;

/// Every setting of a server. Fill it with `sockeye_config_default`, change what you need,
/// and pass it to `sockeye_server_new`, which copies what it needs: the struct and the
/// `address` string may be freed as soon as `sockeye_server_new` returns.
///
/// Sizes are in bytes, times in milliseconds. Each field says which values it accepts;
/// `sockeye_server_new` refuses any other with `SOCKEYE_ERR_INVALID_ARGUMENT` (the engine's own
/// check, the one a Rust server gets).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct sockeye_config {
    /// Listen address, a NUL-terminated string owned by the caller: an IP address or host name
    /// ("127.0.0.1", "::", "localhost"), used with `port`; or "host:port" ("0.0.0.0:8080",
    /// "\[::1\]:8080"), whose own port then wins over `port`. Default "127.0.0.1" (a static
    /// string).
    pub address: *const c_char,
    /// Listen port, used when `address` has none. 0 picks a free port: ask
    /// `sockeye_server_local_port` which. Default 9001.
    pub port: u16,
    /// Worker threads, each with its own event loop and listener; 0 means one per available
    /// core. Accepted: 0 to 4096. Default 0.
    pub workers: u32,
    /// The I/O backend (`SOCKEYE_BACKEND_*`). Default `SOCKEYE_BACKEND_AUTO`.
    pub backend: sockeye_backend,
    /// Largest message accepted, summed over its fragments (close 1009 above it). Accepted:
    /// at least 1. Default 16 MiB.
    pub max_message_size: u64,
    /// Largest single frame accepted (close 1009 above it). Accepted: at least 1. Default
    /// 16 MiB.
    pub max_frame_size: u64,
    /// Most fragments one message may have (close 1009 above it). Accepted: at least 1.
    /// Default 131072.
    pub max_fragments: u32,
    /// Largest handshake request head (HTTP 431 above it). Accepted: 512 to 1048576 (1 MiB).
    /// Default 8192.
    pub max_handshake_bytes: usize,
    /// Time a client has to send its whole handshake request. Accepted: 1 to 604800000 (7 days).
    /// Default 10000.
    pub handshake_timeout_ms: u32,
    /// Time the peer has to answer our close frame. Accepted: 1 to 604800000 (7 days). Default
    /// 5000.
    pub close_timeout_ms: u32,
    /// Close (1001) a connection that received nothing for this long; 0 turns it off.
    /// Accepted: 0 to 604800000 (7 days). Default 120000.
    pub idle_timeout_ms: u32,
    /// Ping a connection silent for this long, and close it if it stays silent as long again;
    /// 0 turns it off (the default). Accepted: 0 to 604800000 (7 days).
    pub auto_ping_ms: u32,
    /// Bytes a connection may have queued for sending before further data sends are dropped
    /// (`SOCKEYE_SEND_DROPPED`), and published messages skip it (`publish_drops` in
    /// `sockeye_stats`). Accepted: at least 1. Default 16 MiB.
    pub max_backpressure: usize,
    /// Close the connection (1008) when one of its sends, or a message published to it, is
    /// dropped over `max_backpressure` (`backpressure_closes` in `sockeye_stats`). Default
    /// false.
    pub close_on_backpressure_limit: bool,
    /// Connections per worker; over it the worker stops accepting until one closes. Accepted:
    /// 1..1048576. Default 1048576.
    pub max_connections: usize,
    /// How long `sockeye_server_stop` waits for close handshakes before dropping connections.
    /// Accepted: 0 (drop them right after the close frames are sent) to 604800000 (7 days).
    /// Default 5000.
    pub shutdown_timeout_ms: u32,
    /// Bytes of send queues and message-assembly buffers one worker may hold, all its
    /// connections together. Over it, data sends are dropped (`SOCKEYE_SEND_DROPPED`) and an
    /// incoming message that would need assembly closes its connection with 1009; the worker
    /// keeps serving everyone else. Accepted: at least 1. Default 256 MiB.
    pub worker_memory_budget: usize,
    /// Share the port with other servers of the same user (a deliberate hand-over: the kernel
    /// spreads new connections over every server in the group). When false (the default),
    /// `sockeye_server_new` first checks that nothing listens on the address and fails with
    /// `SOCKEYE_ERR_ADDRESS_IN_USE` if anything does; when true, it joins servers already
    /// listening there that share it too. A server with `share_port` false is safe from every
    /// server that checks, not from a program of the same user that sets SO_REUSEPORT itself.
    pub share_port: bool,
    /// Bytes of freed send and message-assembly buffers one worker keeps for reuse (memory
    /// kept warm after a burst; not a limit on peers: that is `worker_memory_budget`). 0 keeps
    /// nothing. Default 16 MiB.
    pub buffer_cache: usize,
    /// Longest topic name, in bytes, that `sockeye_conn_subscribe` and the publish functions
    /// take; a longer one is refused with `SOCKEYE_ERR_TOPIC_TOO_LONG`. Accepted: 1 to 65536.
    /// Default 256.
    pub max_topic_len: usize,
    /// permessage-deflate (RFC 7692): negotiate it with clients that offer it. Default false.
    pub deflate: bool,
    /// Compress with one per-worker compressor reset for every message (no window kept per
    /// connection) even when the client allows more. Default true.
    pub deflate_server_no_context_takeover: bool,
    /// Ask clients to reset their compressor per message, so no inflate window is kept per
    /// idle connection. Default true.
    pub deflate_client_no_context_takeover: bool,
    /// Largest window the server compresses with (2^bits). Accepted: 9 to 15. Default 15.
    pub deflate_server_max_window_bits: u8,
    /// Largest window the server asks clients to compress with. Accepted: 8 to 15. Default 15.
    pub deflate_client_max_window_bits: u8,
    /// zlib level, 0 to 9 (1 fastest). Default 1.
    pub deflate_level: u8,
    /// Keep a connection's compression contexts between messages (dedicated) instead of
    /// lending them per message from the worker (lean, the default: false).
    pub deflate_dedicated: bool,
    /// Messages shorter than this go uncompressed. Default 512.
    pub deflate_min_size: usize,
    /// wss://: a NUL-terminated path to a PEM file with the certificate chain (the server's
    /// certificate first), read once in `sockeye_server_new`. NULL (the default): plain ws://.
    /// Set both or neither of `tls_cert_file` and `tls_key_file` (one alone:
    /// `SOCKEYE_ERR_INVALID_ARGUMENT`, and `sockeye_last_error` says so).
    pub tls_cert_file: *const c_char,
    /// wss://: a NUL-terminated path to the PEM private key of `tls_cert_file`. Default NULL.
    pub tls_key_file: *const c_char,
    /// With the TLS files: a NUL-terminated "host:port" where wss:// is served while
    /// `address` serves plain ws:// (port 0 picks one: `sockeye_server_local_tls_port`).
    /// NULL (the default): `address` itself serves wss://.
    pub tls_address: *const c_char,
    /// Pub/sub across processes: the Redis server of the cluster bridge, a NUL-terminated
    /// `redis://host:port` string owned by the caller (read once, in `sockeye_server_new`), or
    /// NULL (the default) for none. Set, every publish also goes to Redis and every topic a
    /// local connection holds is subscribed there, so that the publishes of other Sockeye
    /// processes on the same Redis reach this one's subscribers (Redis 6 or later; sharded
    /// pub/sub on Redis 7). A string that is not such a URL, or a library built without the
    /// engine's `cluster` feature, is refused with `SOCKEYE_ERR_INVALID_ARGUMENT`.
    pub cluster_url: *const c_char,
    /// Listen backlog of each worker's listener (the kernel caps it at `net.core.somaxconn`).
    /// Accepted: at least 1. Default 4096.
    pub backlog: i32,
    /// epoll: size of each worker's read buffer, which one read fills for all of a turn's
    /// bytes from one connection. Accepted: 4096 to 67108864 (64 MiB). Default 262144.
    pub read_buffer_size: usize,
    /// Granularity of the timer wheel: every timeout fires up to one tick late. Accepted: 1 to
    /// 10000. Default 250.
    pub timer_tick_ms: u32,
    /// io_uring: submission queue entries per worker (the completion queue is four times as
    /// large). Accepted: a power of two from 2 to 16384. Default 1024.
    pub uring_entries: u32,
    /// io_uring: buffers in each worker's provided-buffer ring; 0 (the default) picks 4 where
    /// the kernel consumes them incrementally (6.12+), else 128. Accepted: 0, or a power of two
    /// from 2 to 32768, with `uring_buffers × uring_buffer_size` at most 1 GiB.
    pub uring_buffers: u16,
    /// io_uring: size of each provided buffer; 0 (the default) picks 192 KiB where the kernel
    /// consumes buffers incrementally, else 64 KiB. Accepted: 0, or 1024 to 16777216 (16 MiB).
    pub uring_buffer_size: usize,
    /// Data messages of at least this many bytes are written at once from the sender's memory
    /// when nothing of the connection is in flight; smaller ones are queued and written
    /// together at the end of the loop turn. `SIZE_MAX` queues everything. Default 32768.
    pub direct_write_min: usize,
    /// io_uring: sends of at least this many bytes use SEND_ZC (zero copy). `SIZE_MAX` (the
    /// default) turns it off.
    pub uring_send_zc_threshold: usize,
}

fn ms(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

fn ms_opt(d: Option<Duration>) -> u32 {
    d.map_or(0, ms)
}

impl sockeye_config {
    fn defaults() -> Self {
        let c = Config::default();
        Self {
            address: c"127.0.0.1".as_ptr(),
            port: c.addr.port(),
            workers: 0,
            backend: SOCKEYE_BACKEND_AUTO,
            max_message_size: c.limits.max_message_size,
            max_frame_size: c.limits.max_frame_size,
            max_fragments: c.limits.max_fragments,
            max_handshake_bytes: c.limits.max_handshake_bytes,
            handshake_timeout_ms: ms(c.limits.handshake_timeout),
            close_timeout_ms: ms(c.limits.close_timeout),
            idle_timeout_ms: ms_opt(c.idle_timeout),
            auto_ping_ms: ms_opt(c.auto_ping),
            max_backpressure: c.max_backpressure,
            close_on_backpressure_limit: c.close_on_backpressure_limit,
            max_connections: c.max_connections,
            shutdown_timeout_ms: ms(c.shutdown_timeout),
            worker_memory_budget: c.worker_memory_budget,
            share_port: c.share_port,
            buffer_cache: c.buffer_cache,
            max_topic_len: c.max_topic_len,
            deflate: c.deflate.enabled,
            deflate_server_no_context_takeover: c.deflate.server_no_context_takeover,
            deflate_client_no_context_takeover: c.deflate.client_no_context_takeover,
            deflate_server_max_window_bits: c.deflate.server_max_window_bits,
            deflate_client_max_window_bits: c.deflate.client_max_window_bits,
            deflate_level: c.deflate.level,
            deflate_dedicated: c.deflate.memory == DeflateMemory::Dedicated,
            deflate_min_size: c.deflate.min_size,
            tls_cert_file: std::ptr::null(),
            tls_key_file: std::ptr::null(),
            tls_address: std::ptr::null(),
            cluster_url: std::ptr::null(),
            backlog: c.backlog,
            read_buffer_size: c.read_buffer_size,
            timer_tick_ms: ms(c.timer_tick),
            uring_entries: c.uring_entries,
            uring_buffers: c.uring_buffers,
            uring_buffer_size: c.uring_buffer_size,
            direct_write_min: c.direct_write_min,
            uring_send_zc_threshold: c.uring_send_zc_threshold,
        }
    }

    /// Translates every field into the engine's configuration, and has the engine check it
    /// ([`Config::validate`], the one check a Rust server gets too).
    ///
    /// # Safety
    /// A non-NULL `address` or `cluster_url` must point to a NUL-terminated string.
    pub(crate) unsafe fn engine_config(self) -> Result<Config, sockeye_result> {
        let cluster_url = if self.cluster_url.is_null() {
            None
        } else {
            // SAFETY: non-NULL, and NUL-terminated by this struct's contract.
            let url = unsafe { CStr::from_ptr(self.cluster_url) };
            Some(url.to_str().map_err(|_| SOCKEYE_ERR_UTF8)?.to_owned())
        };
        if self.address.is_null() {
            return Err(SOCKEYE_ERR_NULL);
        }
        // SAFETY: non-NULL, and NUL-terminated by this struct's contract.
        let address =
            unsafe { CStr::from_ptr(self.address) }.to_str().map_err(|_| SOCKEYE_ERR_UTF8)?;
        let addr = resolve(address, self.port).ok_or(SOCKEYE_ERR_ADDRESS)?;
        let backend = match self.backend {
            SOCKEYE_BACKEND_AUTO => Backend::Auto,
            SOCKEYE_BACKEND_EPOLL => Backend::Epoll,
            SOCKEYE_BACKEND_IO_URING => Backend::IoUring,
            _ => return Err(SOCKEYE_ERR_INVALID_ARGUMENT),
        };
        let off = |v: u32| (v > 0).then(|| Duration::from_millis(u64::from(v)));
        let d = Config::default();
        // `..d.limits`: a limit added to the engine later keeps its default until exposed here.
        #[allow(clippy::needless_update)]
        let config = Config {
            addr,
            workers: self.workers as usize,
            backend,
            limits: Limits {
                max_message_size: self.max_message_size,
                max_frame_size: self.max_frame_size,
                max_fragments: self.max_fragments,
                max_handshake_bytes: self.max_handshake_bytes,
                handshake_timeout: Duration::from_millis(u64::from(self.handshake_timeout_ms)),
                close_timeout: Duration::from_millis(u64::from(self.close_timeout_ms)),
                ..d.limits
            },
            idle_timeout: off(self.idle_timeout_ms),
            auto_ping: off(self.auto_ping_ms),
            max_backpressure: self.max_backpressure,
            close_on_backpressure_limit: self.close_on_backpressure_limit,
            max_connections: self.max_connections,
            shutdown_timeout: Duration::from_millis(u64::from(self.shutdown_timeout_ms)),
            worker_memory_budget: self.worker_memory_budget,
            share_port: self.share_port,
            buffer_cache: self.buffer_cache,
            max_topic_len: self.max_topic_len,
            deflate: DeflateConfig {
                enabled: self.deflate,
                server_no_context_takeover: self.deflate_server_no_context_takeover,
                client_no_context_takeover: self.deflate_client_no_context_takeover,
                server_max_window_bits: self.deflate_server_max_window_bits,
                client_max_window_bits: self.deflate_client_max_window_bits,
                level: self.deflate_level,
                memory: if self.deflate_dedicated {
                    DeflateMemory::Dedicated
                } else {
                    DeflateMemory::Lean
                },
                min_size: self.deflate_min_size,
                ..d.deflate
            },
            tls: None,
            cluster_url,
            backlog: self.backlog,
            read_buffer_size: self.read_buffer_size,
            timer_tick: Duration::from_millis(u64::from(self.timer_tick_ms)),
            uring_entries: self.uring_entries,
            uring_buffers: self.uring_buffers,
            uring_buffer_size: self.uring_buffer_size,
            direct_write_min: self.direct_write_min,
            uring_send_zc_threshold: self.uring_send_zc_threshold,
            ..d
        };
        config.validate().map_err(|_| SOCKEYE_ERR_INVALID_ARGUMENT)?;
        let mut config = config;
        // SAFETY: each non-NULL path is NUL-terminated (this struct's contract).
        config.tls = unsafe { tls_files(self.tls_cert_file, self.tls_key_file) }?;
        // SAFETY: as above.
        if let Some(a) = unsafe { path_of(self.tls_address) }? {
            config.tls_addr = Some(resolve(a, 0).ok_or(SOCKEYE_ERR_ADDRESS)?);
            config.validate().map_err(|_| SOCKEYE_ERR_INVALID_ARGUMENT)?;
        }
        Ok(config)
    }
}

/// A NUL-terminated path, or `None` for NULL.
///
/// # Safety
/// A non-NULL `p` must point to a NUL-terminated string.
pub(crate) unsafe fn path_of<'a>(p: *const c_char) -> Result<Option<&'a str>, sockeye_result> {
    if p.is_null() {
        return Ok(None);
    }
    // SAFETY: non-NULL and NUL-terminated (the caller's contract); the string is read during
    // the call that lent it.
    let s = unsafe { CStr::from_ptr(p) }.to_str().map_err(|_| SOCKEYE_ERR_UTF8)?;
    Ok(Some(s))
}

/// The TLS configuration read from a certificate and a key file (both or neither).
///
/// # Safety
/// Each non-NULL pointer must point to a NUL-terminated string.
pub(crate) unsafe fn tls_files(
    cert: *const c_char,
    key: *const c_char,
) -> Result<Option<sockeye::TlsConfig>, sockeye_result> {
    // SAFETY: the caller's contract, passed on.
    let (cert, key) = unsafe { (path_of(cert)?, path_of(key)?) };
    match (cert, key) {
        (None, None) => Ok(None),
        (Some(c), Some(k)) => sockeye::TlsConfig::from_pem_files(c, k).map(Some).map_err(|e| {
            crate::set_last_error(&format!("TLS: {e}"));
            SOCKEYE_ERR_TLS
        }),
        _ => {
            crate::set_last_error("TLS: set both tls_cert_file and tls_key_file, or neither");
            Err(SOCKEYE_ERR_INVALID_ARGUMENT)
        }
    }
}

/// "host:port" as a whole first (an IP address and port), then `address` with `port`, then
/// `address` resolved as "host:port" (a host name with its own port).
fn resolve(address: &str, port: u16) -> Option<SocketAddr> {
    if let Ok(a) = address.parse::<SocketAddr>() {
        return Some(a);
    }
    if let Some(a) = (address, port).to_socket_addrs().ok().and_then(|mut i| i.next()) {
        return Some(a);
    }
    address.to_socket_addrs().ok().and_then(|mut i| i.next())
}

/// Fills `*out` with the defaults (the engine's own, sane for the open internet): address
/// "127.0.0.1", port 9001, one worker per core, automatic backend, 16 MiB messages and frames,
/// 10 s handshake timeout, 5 s close timeout, 120 s idle timeout, no auto-ping, 16 MiB
/// backpressure limit, 1048576 connections per worker, 5 s shutdown timeout, 256 MiB worker
/// memory budget, port not shared, 16 MiB buffer cache, topic names up to 256 bytes. `out` is
/// written, never read, and stays owned by the caller. Returns `SOCKEYE_ERR_NULL` if `out` is
/// NULL.
#[no_mangle]
pub extern "C" fn sockeye_config_default(out: *mut sockeye_config) -> sockeye_result {
    guard(|| {
        if out.is_null() {
            return SOCKEYE_ERR_NULL;
        }
        let c = sockeye_config::defaults();
        // SAFETY: `out` is non-NULL and points to writable memory for one `sockeye_config`
        // (the caller's contract); `write` does not read or drop the old contents.
        unsafe { out.write(c) };
        SOCKEYE_OK
    })
}
