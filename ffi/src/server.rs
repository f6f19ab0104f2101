//! `sockeye_server`: create, run, stop and free a server, and reach its connections from any
//! thread. The C pointer is an `Arc<ServerObj>`: `sockeye_server_run` holds its own reference,
//! so freeing a running server stops it instead of pulling memory from under it.

use std::ffi::{c_char, c_void};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use sockeye::{CloseCode, ConnId, Message, Server, ServerHandle};

use crate::config::sockeye_config;
use crate::handler::{sockeye_callbacks, CHandler, Shared};
use crate::opaque::{self, from_opaque, to_opaque, Opaque};
use crate::types::{message, sockeye_opcode};
use crate::{bytes, guard, opt_str, sockeye_result};
use crate::{
    SOCKEYE_ERR_ADDRESS, SOCKEYE_ERR_ADDRESS_IN_USE, SOCKEYE_ERR_ALREADY_RUN,
    SOCKEYE_ERR_BACKEND_UNAVAILABLE, SOCKEYE_ERR_INVALID_ARGUMENT, SOCKEYE_ERR_IO,
    SOCKEYE_ERR_NULL, SOCKEYE_ERR_STOPPED, SOCKEYE_ERR_TLS, SOCKEYE_OK,
};

/// A server: its listeners are bound by `sockeye_server_new`, its workers run inside
/// `sockeye_server_run`. Created by `sockeye_server_new`, released by `sockeye_server_free`;
/// the caller owns the pointer in between. Functions documented as thread-safe may be called
/// on it from any thread, callbacks included.
#[derive(Debug)]
pub struct sockeye_server {
    _private: [u8; 0],
}

/// What a `sockeye_server *` points to, inside an `Arc`: the caller's pointer holds one
/// reference, a running `sockeye_server_run` another.
pub(crate) struct ServerObj {
    /// Reaches the workers from any thread, before, during and after `run`.
    pub(crate) handle: ServerHandle,
    /// The callbacks and the server-wide user data (for posts).
    pub(crate) shared: Shared,
    /// The built server until `sockeye_server_run` (which runs it) or `sockeye_server_free`
    /// (which drops it) takes it.
    pending: Mutex<Option<Server<CHandler>>>,
    /// Where wss:// is served when it has a listener of its own.
    pub(crate) tls_addr: Option<std::net::SocketAddr>,
}

// The server built on one thread is run on another (the one calling `sockeye_server_run`).
const _: () = {
    const fn send<T: Send>() {}
    send::<Server<CHandler>>();
};

/// Where the handlers find the server object once it exists: set by `sockeye_server_new`
/// right after building, before any worker runs. A `Weak`: the object owns the handlers
/// (through the server it keeps until `run`), so a strong reference would be a cycle.
pub(crate) type ServerCell = OnceLock<Weak<ServerObj>>;

impl Opaque for sockeye_server {
    type Target<'a, 'b: 'a> = ServerObj;
}

/// The one mapping from the engine's errors to result codes.
fn error_code(e: &sockeye::Error) -> sockeye_result {
    match e {
        sockeye::Error::Config(_) => SOCKEYE_ERR_INVALID_ARGUMENT,
        sockeye::Error::Address(_) => SOCKEYE_ERR_ADDRESS,
        sockeye::Error::Tls(why) => {
            crate::set_last_error(why);
            SOCKEYE_ERR_TLS
        }
        sockeye::Error::AddrInUse(_) => SOCKEYE_ERR_ADDRESS_IN_USE,
        sockeye::Error::Backend(_) => SOCKEYE_ERR_BACKEND_UNAVAILABLE,
        sockeye::Error::Io(_) | sockeye::Error::WorkerPanicked => SOCKEYE_ERR_IO,
        // `Error` is non-exhaustive: a kind added later is an I/O failure until mapped here.
        _ => SOCKEYE_ERR_IO,
    }
}

/// Creates a server: checks `config`, binds its listeners (so the port is taken, and known to
/// `sockeye_server_local_port`, when this returns) and prepares its workers, which start in
/// `sockeye_server_run`.
///
/// - `config`: read during the call only (defaults from `sockeye_config_default`).
/// - `callbacks`: copied; NULL means no callbacks (every request accepted, events ignored).
/// - `user_data`: handed to every callback, on every worker thread, untouched: the caller
///   owns it, must keep it valid until `sockeye_server_run` has returned (or the server is
///   freed unrun), and must make it safe to use from several threads at once.
/// - `out`: on `SOCKEYE_OK`, receives the new server, owned by the caller until
///   `sockeye_server_free`; left untouched on error.
///
/// Errors: `SOCKEYE_ERR_NULL`, `SOCKEYE_ERR_INVALID_ARGUMENT` (a config field outside its
/// accepted range), `SOCKEYE_ERR_ADDRESS`, `SOCKEYE_ERR_UTF8`, `SOCKEYE_ERR_ADDRESS_IN_USE`
/// (something already listens on the address; see `share_port`), `SOCKEYE_ERR_IO` (bind
/// failed otherwise), `SOCKEYE_ERR_BACKEND_UNAVAILABLE`.
#[no_mangle]
pub extern "C" fn sockeye_server_new(
    config: *const sockeye_config,
    callbacks: *const sockeye_callbacks,
    user_data: *mut c_void,
    out: *mut *mut sockeye_server,
) -> sockeye_result {
    guard(|| {
        if out.is_null() {
            return SOCKEYE_ERR_NULL;
        }
        // SAFETY: `config` is NULL or points to a readable `sockeye_config` (contract).
        let Some(config) = (unsafe { config.as_ref() }) else {
            return SOCKEYE_ERR_NULL;
        };
        // SAFETY: `callbacks` is NULL or points to a readable `sockeye_callbacks` (contract).
        let cb = unsafe { callbacks.as_ref() }.copied().unwrap_or_default();
        // SAFETY: `config.address` is NULL or NUL-terminated (the struct's contract).
        let cfg = match unsafe { config.engine_config() } {
            Ok(c) => c,
            Err(e) => return e,
        };
        let shared = Shared { cb, user: user_data, server: Arc::new(ServerCell::new()) };
        let for_workers = shared.clone();
        let built = Server::builder()
            .config(cfg)
            .handler(move || CHandler { shared: for_workers.clone() })
            .build();
        let server = match built {
            Ok(s) => s,
            Err(e) => return error_code(&e),
        };
        let obj = Arc::new(ServerObj {
            tls_addr: server.config().tls_addr,
            handle: server.handle(),
            shared: shared.clone(),
            pending: Mutex::new(Some(server)),
        });
        // Set once, here, before `run` can start any worker.
        let _ = shared.server.set(Arc::downgrade(&obj));
        let p = to_opaque::<sockeye_server>(Arc::into_raw(obj));
        // SAFETY: `out` is non-NULL and points to a writable pointer (contract).
        unsafe { out.write(p) };
        SOCKEYE_OK
    })
}

/// Runs the workers on their own threads and blocks until a graceful shutdown
/// (`sockeye_server_stop`, or `sockeye_server_free` from another thread) has completed. Call
/// it once per server, from any one thread. Returns `SOCKEYE_OK` after a clean shutdown,
/// `SOCKEYE_ERR_NULL` if `server` is NULL, `SOCKEYE_ERR_ALREADY_RUN` on a second call,
/// `SOCKEYE_ERR_IO` if a worker failed.
#[no_mangle]
pub extern "C" fn sockeye_server_run(server: *mut sockeye_server) -> sockeye_result {
    guard(|| {
        if server.is_null() {
            return SOCKEYE_ERR_NULL;
        }
        let ptr = from_opaque(server);
        // SAFETY: `ptr` came from `Arc::into_raw` and the caller still holds its reference, so
        // the count is at least 1; taking one more keeps the object alive while we run even if
        // the caller frees it meanwhile.
        let obj = unsafe {
            Arc::increment_strong_count(ptr);
            Arc::from_raw(ptr)
        };
        let taken = obj.pending.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some(srv) = taken else {
            return SOCKEYE_ERR_ALREADY_RUN;
        };
        match srv.run() {
            Ok(()) => SOCKEYE_OK,
            Err(e) => error_code(&e),
        }
    })
}

/// Starts a graceful shutdown: workers stop accepting, send close 1001 to every connection,
/// wait for the close handshakes up to `shutdown_timeout_ms`, and `sockeye_server_run`
/// returns. Thread-safe, callable from any thread (callbacks included) and more than once;
/// not async-signal-safe (from a signal, wake a thread that calls it). Stopping a server
/// before it runs makes `sockeye_server_run` return at once. Returns `SOCKEYE_ERR_NULL` if
/// `server` is NULL, else `SOCKEYE_OK`.
#[no_mangle]
pub extern "C" fn sockeye_server_stop(server: *mut sockeye_server) -> sockeye_result {
    guard(|| {
        // SAFETY: `server` is NULL or from `sockeye_server_new` and not yet freed (documented
        // contract); its `Arc` keeps the object alive and nothing changes it but through locks.
        let Some(obj) = (unsafe { opaque::as_ref(server) }) else {
            return SOCKEYE_ERR_NULL;
        };
        obj.handle.shutdown();
        SOCKEYE_OK
    })
}

/// The port wss:// is served on when `tls_address` was set (the one picked for port 0); 0
/// if `server` is NULL or has no TLS address of its own. Thread-safe.
#[no_mangle]
pub extern "C" fn sockeye_server_local_tls_port(server: *const sockeye_server) -> u16 {
    guard(|| {
        // SAFETY: `server` is NULL or from `sockeye_server_new` and not yet freed (documented
        // contract); its `Arc` keeps the object alive and nothing changes it but through locks.
        unsafe { opaque::as_ref(server) }.and_then(|o| o.tls_addr).map_or(0, |a| a.port())
    })
}

/// Replaces the TLS certificate and key of a server made with `tls_cert_file` and
/// `tls_key_file`: both files are read and checked now, and handshakes that start from now on
/// use them; open connections keep theirs. Thread-safe. Returns `SOCKEYE_OK`;
/// `SOCKEYE_ERR_NULL` for a NULL `server`, `cert_file` or `key_file`; `SOCKEYE_ERR_UTF8` for a
/// path that is not UTF-8; `SOCKEYE_ERR_TLS` when a file cannot be read or is refused, or the
/// server does not serve TLS (the log says why; the certificate in force stays).
#[no_mangle]
pub extern "C" fn sockeye_server_reload_tls(
    server: *mut sockeye_server,
    cert_file: *const c_char,
    key_file: *const c_char,
) -> sockeye_result {
    guard(|| {
        // SAFETY: `server` is NULL or from `sockeye_server_new` and not yet freed (documented
        // contract); its `Arc` keeps the object alive and nothing changes it but through locks.
        let Some(obj) = (unsafe { opaque::as_ref(server) }) else {
            return SOCKEYE_ERR_NULL;
        };
        if cert_file.is_null() || key_file.is_null() {
            return SOCKEYE_ERR_NULL;
        }
        // SAFETY: both non-NULL and NUL-terminated (documented contract).
        let tls = match unsafe { crate::config::tls_files(cert_file, key_file) } {
            Ok(Some(t)) => t,
            Ok(None) => return SOCKEYE_ERR_NULL,
            Err(e) => return e,
        };
        match obj.handle.reload_tls(&tls) {
            Ok(()) => SOCKEYE_OK,
            Err(e) => error_code(&e),
        }
    })
}

/// The port the server listens on (the one picked when port 0 was asked for); 0 if `server`
/// is NULL. Thread-safe.
#[no_mangle]
pub extern "C" fn sockeye_server_local_port(server: *const sockeye_server) -> u16 {
    guard(|| {
        // SAFETY: `server` is NULL or from `sockeye_server_new` and not yet freed (documented
        // contract); its `Arc` keeps the object alive and nothing changes it but through locks.
        unsafe { opaque::as_ref(server) }.map_or(0, |o| o.handle.local_addr().port())
    })
}

/// The number of worker threads (0 resolved to the core count); 0 if `server` is NULL.
/// Thread-safe.
#[no_mangle]
pub extern "C" fn sockeye_server_worker_count(server: *const sockeye_server) -> usize {
    guard(|| {
        // SAFETY: `server` is NULL or from `sockeye_server_new` and not yet freed (documented
        // contract); its `Arc` keeps the object alive and nothing changes it but through locks.
        unsafe { opaque::as_ref(server) }.map_or(0, |o| o.handle.workers())
    })
}

/// One worker's counters, as of its last loop turn (see `sockeye_server_stats`). Counters only
/// grow; `connections`, `memory_in_use`, `buffers_total`, `buffers_in_kernel` and
/// `subscriptions` are gauges. Fields are only ever added at the end.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct sockeye_stats {
    /// Connections the worker holds (handshaking, open or closing).
    pub connections: usize,
    /// io_uring: buffers in the provided-buffer ring (0 on epoll).
    pub buffers_total: usize,
    /// io_uring: buffers lent to the kernel (equals `buffers_total` at rest).
    pub buffers_in_kernel: usize,
    /// io_uring: times a receive found the buffer ring empty.
    pub buffer_shortages: usize,
    /// Bytes of send queues and message-assembly buffers held now (bounded by
    /// `worker_memory_budget`).
    pub memory_in_use: usize,
    /// Connections dropped at the handshake timeout.
    pub handshake_timeouts: usize,
    /// Connections closed (1001) by the idle timeout or an unanswered auto-ping.
    pub idle_timeouts: usize,
    /// Connections reset because their close did not complete within the close timeout.
    pub close_timeouts: usize,
    /// Callbacks that panicked (Rust hosts; caught, the connection closed with 1011).
    pub handler_panics: usize,
    /// Data sends refused over `max_backpressure` (`SOCKEYE_SEND_DROPPED`).
    pub sends_dropped: usize,
    /// Sends and incoming messages refused because the worker's memory budget was spent.
    pub budget_refusals: usize,
    /// Connections closed for a protocol violation by the peer.
    pub protocol_errors: usize,
    /// Handshake requests refused as malformed, or failed by the application (500).
    pub bad_handshakes: usize,
    /// Data messages received (text and binary, whole).
    pub messages_in: usize,
    /// Data messages queued to connections: sends, and published messages once per subscriber
    /// reached.
    pub messages_out: usize,
    /// Published messages queued to a subscriber of this worker (one per subscriber reached).
    pub deliveries: usize,
    /// Published messages dropped for a subscriber whose queue was over `max_backpressure`.
    pub publish_drops: usize,
    /// Connections closed with 1008 because their queue was over `max_backpressure` (with
    /// `close_on_backpressure_limit` set).
    pub backpressure_closes: usize,
    /// Topic subscriptions the worker holds now (a gauge).
    pub subscriptions: usize,
    /// TLS handshakes completed.
    pub tls_handshakes: usize,
    /// TLS connections that failed (bad records, failed handshakes, alerts, plaintext on the
    /// TLS port); each was dropped.
    pub tls_errors: usize,
    /// Cluster bridge (`cluster_url`; this and the next five are server-wide, counted on
    /// worker 0 and 0 on the others): publishes the broker took.
    pub cluster_published: usize,
    /// Cluster bridge: messages from other processes fanned out to this server's subscribers.
    pub cluster_received: usize,
    /// Cluster bridge: publishes not handed to the broker, its queue full (slow broker).
    pub cluster_queue_drops: usize,
    /// Cluster bridge: publishes not sent because the broker was unreachable.
    pub cluster_lost: usize,
    /// Cluster bridge: broker connections made again after a loss (each re-subscribes).
    pub cluster_reconnects: usize,
    /// Cluster bridge: messages from other processes not handed to a worker that was behind
    /// (one per worker skipped); its subscribers missed them.
    pub cluster_inbound_drops: usize,
}

impl From<sockeye::Stats> for sockeye_stats {
    fn from(s: sockeye::Stats) -> Self {
        Self {
            connections: s.connections,
            buffers_total: s.buffers_total,
            buffers_in_kernel: s.buffers_in_kernel,
            buffer_shortages: s.buffer_shortages,
            memory_in_use: s.memory_in_use,
            handshake_timeouts: s.handshake_timeouts,
            idle_timeouts: s.idle_timeouts,
            close_timeouts: s.close_timeouts,
            handler_panics: s.handler_panics,
            sends_dropped: s.sends_dropped,
            budget_refusals: s.budget_refusals,
            protocol_errors: s.protocol_errors,
            bad_handshakes: s.bad_handshakes,
            messages_in: s.messages_in,
            messages_out: s.messages_out,
            deliveries: s.deliveries,
            publish_drops: s.publish_drops,
            backpressure_closes: s.backpressure_closes,
            subscriptions: s.subscriptions,
            tls_handshakes: s.tls_handshakes,
            tls_errors: s.tls_errors,
            cluster_published: s.cluster_published,
            cluster_received: s.cluster_received,
            cluster_queue_drops: s.cluster_queue_drops,
            cluster_lost: s.cluster_lost,
            cluster_reconnects: s.cluster_reconnects,
            cluster_inbound_drops: s.cluster_inbound_drops,
        }
    }
}

/// Fills `*out` with worker `worker`'s counters (0 ≤ `worker` < `sockeye_server_worker_count`).
/// `out` is written only on success and stays owned by the caller. Returns
/// `SOCKEYE_ERR_NULL` for a NULL argument, `SOCKEYE_ERR_INVALID_ARGUMENT` for a worker that
/// does not exist. Thread-safe.
#[no_mangle]
pub extern "C" fn sockeye_server_stats(
    server: *const sockeye_server,
    worker: usize,
    out: *mut sockeye_stats,
) -> sockeye_result {
    guard(|| {
        // SAFETY: `server` is NULL or from `sockeye_server_new` and not yet freed (documented
        // contract); its `Arc` keeps the object alive and nothing changes it but through locks.
        let Some(obj) = (unsafe { opaque::as_ref(server) }) else { return SOCKEYE_ERR_NULL };
        if out.is_null() {
            return SOCKEYE_ERR_NULL;
        }
        let Some(s) = obj.handle.stats().get(worker).copied() else {
            return SOCKEYE_ERR_INVALID_ARGUMENT;
        };
        // SAFETY: `out` is non-NULL and points to writable memory for one `sockeye_stats`
        // (the caller's contract); `write` does not read or drop the old contents.
        unsafe { out.write(s.into()) };
        SOCKEYE_OK
    })
}

/// Reads a connection id from C: `None` when it names a worker this server does not have.
fn conn_id(obj: &ServerObj, id: u64) -> Option<ConnId> {
    let id = ConnId::from_u64(id);
    (id.worker() < obj.handle.workers()).then_some(id)
}

/// Sends a message to the connection `conn_id` (from `sockeye_conn_id`) on whatever worker
/// holds it. Thread-safe: callable from any thread, callbacks included, while the server runs.
/// The `len` bytes at `data` are copied before the call returns (`data` may be NULL when `len`
/// is 0); `opcode` is `SOCKEYE_OPCODE_TEXT` (UTF-8 checked) or `SOCKEYE_OPCODE_BINARY`.
/// The message is queued to the worker and sent on its next loop turn; a connection that has
/// closed meanwhile is skipped silently, and backpressure shows only to the worker (it drops
/// data sends over `max_backpressure`). Returns `SOCKEYE_ERR_STOPPED` once the server has
/// stopped, `SOCKEYE_ERR_NULL` for a NULL `server` (or NULL `data` with `len` > 0),
/// `SOCKEYE_ERR_INVALID_ARGUMENT` for an id naming no worker or an unknown opcode,
/// `SOCKEYE_ERR_UTF8` for text that is not UTF-8.
#[no_mangle]
pub extern "C" fn sockeye_server_send(
    server: *mut sockeye_server,
    conn_id: u64,
    opcode: sockeye_opcode,
    data: *const u8,
    len: usize,
) -> sockeye_result {
    guard(|| {
        // SAFETY: `server` is NULL or from `sockeye_server_new` and not yet freed (documented
        // contract); its `Arc` keeps the object alive and nothing changes it but through locks.
        let Some(obj) = (unsafe { opaque::as_ref(server) }) else {
            return SOCKEYE_ERR_NULL;
        };
        // SAFETY: `data` holds `len` readable bytes (documented contract).
        let Some(payload) = (unsafe { bytes(data, len) }) else {
            return SOCKEYE_ERR_NULL;
        };
        let Some(id) = self::conn_id(obj, conn_id) else {
            return SOCKEYE_ERR_INVALID_ARGUMENT;
        };
        let queued = match message(opcode, payload) {
            Ok(Message::Text(t)) => obj.handle.send_text(id, t),
            Ok(Message::Binary(b)) => obj.handle.send_binary(id, b),
            // `SOCKEYE_ERR_INVALID_ARGUMENT` (unknown opcode) or `SOCKEYE_ERR_UTF8`.
            Err(e) => return e,
        };
        if queued {
            SOCKEYE_OK
        } else {
            SOCKEYE_ERR_STOPPED
        }
    })
}

/// Starts the close handshake of the connection `conn_id` on whatever worker holds it, with
/// `code` (1000..1003, 1007..1011 or 3000..4999) and `reason` (NUL-terminated UTF-8, copied,
/// cut to 123 bytes; NULL means none). Thread-safe, like `sockeye_server_send`, with the same
/// errors plus `SOCKEYE_ERR_INVALID_ARGUMENT` for a code that may not be sent.
#[no_mangle]
pub extern "C" fn sockeye_server_close_conn(
    server: *mut sockeye_server,
    conn_id: u64,
    code: u16,
    reason: *const c_char,
) -> sockeye_result {
    guard(|| {
        // SAFETY: `server` is NULL or from `sockeye_server_new` and not yet freed (documented
        // contract); its `Arc` keeps the object alive and nothing changes it but through locks.
        let Some(obj) = (unsafe { opaque::as_ref(server) }) else {
            return SOCKEYE_ERR_NULL;
        };
        let Some(id) = self::conn_id(obj, conn_id) else {
            return SOCKEYE_ERR_INVALID_ARGUMENT;
        };
        let code = CloseCode(code);
        if !code.is_valid_on_wire() {
            return SOCKEYE_ERR_INVALID_ARGUMENT;
        }
        // SAFETY: `reason` is NULL or NUL-terminated (documented contract).
        let reason = match unsafe { opt_str(reason) } {
            Ok(r) => r,
            Err(e) => return e,
        };
        if obj.handle.close(id, code, reason) {
            SOCKEYE_OK
        } else {
            SOCKEYE_ERR_STOPPED
        }
    })
}

/// Releases the caller's server pointer; NULL is ignored. A server never run is closed at once
/// (its listeners unbound). A server running in `sockeye_server_run` on another thread is
/// asked to stop, as by `sockeye_server_stop`, and its memory goes when `sockeye_server_run`
/// returns. Either way the pointer must not be used again, by any thread, once this is called.
#[no_mangle]
pub extern "C" fn sockeye_server_free(server: *mut sockeye_server) {
    guard(|| {
        if server.is_null() {
            return;
        }
        // SAFETY: `server` came from `Arc::into_raw` in `sockeye_server_new` and this releases
        // the caller's reference, once (documented contract).
        let obj = unsafe { Arc::from_raw(from_opaque(server)) };
        let pending = obj.pending.lock().unwrap_or_else(|e| e.into_inner()).take();
        if pending.is_none() {
            obj.handle.shutdown();
        }
        drop(pending);
    })
}
