//! `sockeye_conn`: a connection as a callback sees it. The pointer points to a stack object
//! (`ConnShim`) wrapping the engine's `&mut Conn`, so it lives exactly as long as the callback
//! that received it; across threads and across time a connection is named by its `uint64_t` id
//! instead.

use std::ffi::{c_char, c_void};

use sockeye::{CloseCode, Conn, Message, SendStatus};

use crate::opaque::{self, to_opaque, Opaque};
use crate::server::sockeye_server;
use crate::types::{message, sockeye_opcode, ConnData, SOCKEYE_OPCODE_BINARY, SOCKEYE_OPCODE_TEXT};
use crate::{
    bytes, guard, opt_str, sockeye_result, OnPanic, SOCKEYE_ERR_INVALID_ARGUMENT, SOCKEYE_ERR_NULL,
    SOCKEYE_OK,
};

/// A connection, seen only inside a callback (`on_open`, `on_message`, `on_ping`, `on_pong`,
/// `on_drain`, `on_close`). The pointer is valid only until that callback returns and only on
/// the thread that runs it: never store it. To reach the connection later or from another
/// thread, keep `sockeye_conn_id(conn)` and use `sockeye_server_send` /
/// `sockeye_server_close_conn` (and `sockeye_conn_server` to reach the server from here).
#[derive(Debug)]
pub struct sockeye_conn {
    _private: [u8; 0],
}

/// What became of a send.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum sockeye_send_status {
    /// Queued behind nothing: it leaves with this loop turn's write.
    SOCKEYE_SEND_SENT = 0,
    /// Queued behind data the socket has not taken yet; `on_drain` follows when it has.
    SOCKEYE_SEND_BACKPRESSURE = 1,
    /// Not queued: the connection already has more than `max_backpressure` bytes waiting.
    SOCKEYE_SEND_DROPPED = 2,
    /// Not queued: the connection is closing or closed.
    SOCKEYE_SEND_CLOSED = 3,
    /// Not queued: a NULL pointer, an unknown opcode, text that is not UTF-8, or a caught
    /// panic.
    SOCKEYE_SEND_ERROR = 4,
    /// Handed to the worker that holds the connection (another thread), which sends it in its
    /// next loop turn; what becomes of it there is not reported back. Only `sockeye_worker_send`
    /// returns it, for a connection of another worker.
    SOCKEYE_SEND_FORWARDED = 5,
}

pub use sockeye_send_status::*;

impl OnPanic for sockeye_send_status {
    fn on_panic() -> Self {
        SOCKEYE_SEND_ERROR
    }
}

impl From<SendStatus> for sockeye_send_status {
    fn from(s: SendStatus) -> Self {
        match s {
            SendStatus::Sent => SOCKEYE_SEND_SENT,
            SendStatus::Backpressure => SOCKEYE_SEND_BACKPRESSURE,
            SendStatus::Dropped => SOCKEYE_SEND_DROPPED,
            SendStatus::Closed => SOCKEYE_SEND_CLOSED,
            SendStatus::Forwarded => SOCKEYE_SEND_FORWARDED,
        }
    }
}

/// What a `sockeye_conn *` points to: the engine's view of the connection, borrowed for one
/// callback. It lives on the stack frame of the `Handler` method that calls C.
pub(crate) struct ConnShim<'c, 'd> {
    pub(crate) conn: &'c mut Conn<'d, ConnData>,
    /// The caller's server pointer, for `sockeye_conn_server`.
    pub(crate) server: *mut sockeye_server,
}

impl Opaque for sockeye_conn {
    type Target<'c, 'd: 'c> = ConnShim<'c, 'd>;
}

impl ConnShim<'_, '_> {
    /// The pointer a callback receives for this shim; valid while the shim lives.
    pub(crate) fn as_ptr(&mut self) -> *mut sockeye_conn {
        to_opaque(std::ptr::from_mut(self))
    }
}

/// Sends a message of `opcode` (`SOCKEYE_OPCODE_TEXT`, whose payload must be UTF-8, or
/// `SOCKEYE_OPCODE_BINARY`) with the `len` bytes at `data`, which are copied before the call
/// returns (`data` may be NULL when `len` is 0). Corked: what a callback sends leaves in one
/// write per connection after it returns.
#[no_mangle]
pub extern "C" fn sockeye_conn_send(
    conn: *mut sockeye_conn,
    opcode: sockeye_opcode,
    data: *const u8,
    len: usize,
) -> sockeye_send_status {
    guard(|| {
        // SAFETY: `conn` is NULL or the pointer the running callback received, used on its
        // thread (documented contract); the callback's frame leaves the shim alone meanwhile.
        let Some(c) = (unsafe { opaque::as_mut(conn) }) else {
            return SOCKEYE_SEND_ERROR;
        };
        // SAFETY: `data` holds `len` readable bytes (documented contract).
        let Some(payload) = (unsafe { bytes(data, len) }) else {
            return SOCKEYE_SEND_ERROR;
        };
        match message(opcode, payload) {
            Ok(Message::Text(t)) => c.conn.send_text(t).into(),
            Ok(Message::Binary(b)) => c.conn.send_binary(b).into(),
            // An unknown opcode or text that is not UTF-8.
            Err(_) => SOCKEYE_SEND_ERROR,
        }
    })
}

/// Sends a text message: `len` bytes of UTF-8 at `text` (not NUL-terminated; copied). Same as
/// `sockeye_conn_send` with `SOCKEYE_OPCODE_TEXT`.
#[no_mangle]
pub extern "C" fn sockeye_conn_send_text(
    conn: *mut sockeye_conn,
    text: *const c_char,
    len: usize,
) -> sockeye_send_status {
    sockeye_conn_send(conn, SOCKEYE_OPCODE_TEXT, text.cast(), len)
}

/// Sends a binary message: the `len` bytes at `data` (copied). Same as `sockeye_conn_send` with
/// `SOCKEYE_OPCODE_BINARY`.
#[no_mangle]
pub extern "C" fn sockeye_conn_send_binary(
    conn: *mut sockeye_conn,
    data: *const u8,
    len: usize,
) -> sockeye_send_status {
    sockeye_conn_send(conn, SOCKEYE_OPCODE_BINARY, data, len)
}

/// Sends a ping with the `len` bytes at `data` (copied; cut to 125 bytes; `data` may be NULL
/// when `len` is 0). Control frames are never dropped for backpressure.
#[no_mangle]
pub extern "C" fn sockeye_conn_ping(
    conn: *mut sockeye_conn,
    data: *const u8,
    len: usize,
) -> sockeye_send_status {
    guard(|| {
        // SAFETY: `conn` is NULL or the pointer the running callback received, used on its
        // thread (documented contract); the callback's frame leaves the shim alone meanwhile.
        let Some(c) = (unsafe { opaque::as_mut(conn) }) else {
            return SOCKEYE_SEND_ERROR;
        };
        // SAFETY: `data` holds `len` readable bytes (documented contract).
        let Some(payload) = (unsafe { bytes(data, len) }) else {
            return SOCKEYE_SEND_ERROR;
        };
        c.conn.ping(payload).into()
    })
}

/// Starts the close handshake with `code` (1000..1003, 1007..1011 or 3000..4999) and
/// `reason`, a NUL-terminated UTF-8 string (copied; cut to 123 bytes; NULL means none).
/// `on_close` follows once the peer answers or the close timeout passes. Returns
/// `SOCKEYE_ERR_NULL` if `conn` is NULL, `SOCKEYE_ERR_INVALID_ARGUMENT` for a code that may not
/// be sent, `SOCKEYE_ERR_UTF8` for a reason that is not UTF-8.
#[no_mangle]
pub extern "C" fn sockeye_conn_close(
    conn: *mut sockeye_conn,
    code: u16,
    reason: *const c_char,
) -> sockeye_result {
    guard(|| {
        // SAFETY: `conn` is NULL or the pointer the running callback received, used on its
        // thread (documented contract); the callback's frame leaves the shim alone meanwhile.
        let Some(c) = (unsafe { opaque::as_mut(conn) }) else {
            return SOCKEYE_ERR_NULL;
        };
        // SAFETY: `reason` is NULL or NUL-terminated (documented contract).
        match unsafe { opt_str(reason) } {
            // The engine refuses a code that may not be sent, the same rule as in Rust.
            Ok(r) => match c.conn.close(CloseCode(code), r) {
                Ok(()) => SOCKEYE_OK,
                Err(_) => SOCKEYE_ERR_INVALID_ARGUMENT,
            },
            Err(e) => e,
        }
    })
}

/// Bytes queued for this connection and not yet taken by the socket (0 if `conn` is NULL).
#[no_mangle]
pub extern "C" fn sockeye_conn_buffered_amount(conn: *mut sockeye_conn) -> usize {
    guard(|| {
        // SAFETY: `conn` is NULL or the pointer the running callback received, used on its
        // thread (documented contract); the callback's frame leaves the shim alone meanwhile.
        unsafe { opaque::as_mut(conn) }.map_or(0, |c| c.conn.buffered_amount())
    })
}

/// The connection's id: a number valid on any thread for as long as the server lives, for
/// `sockeye_server_send`, `sockeye_server_close_conn` and `sockeye_worker_send`. An id whose
/// connection has closed is ignored by them, and never comes to name another connection (each
/// slot's 32-bit generation is retired rather than wrapped).
///
/// Bit layout (stable within a major version): bits 63..52 hold the index of the worker that
/// holds the connection (`id >> 52`, the same as `sockeye_conn_worker`); bits 51..32 the
/// connection's slot in that worker; bits 31..0 the slot's generation plus one. 0 never names
/// a connection: it is what this returns for a NULL `conn`, and a host may use it as "none".
#[no_mangle]
pub extern "C" fn sockeye_conn_id(conn: *mut sockeye_conn) -> u64 {
    guard(|| {
        // SAFETY: `conn` is NULL or the pointer the running callback received, used on its
        // thread (documented contract); the callback's frame leaves the shim alone meanwhile.
        unsafe { opaque::as_mut(conn) }.map_or(0, |c| c.conn.id().to_u64())
    })
}

/// Sets the connection's user data, returned by `sockeye_conn_user_data` in every later
/// callback for it. The library never dereferences or frees it: the caller owns what it points
/// to (free it in `on_close`). Does nothing if `conn` is NULL.
#[no_mangle]
pub extern "C" fn sockeye_conn_set_user_data(conn: *mut sockeye_conn, user_data: *mut c_void) {
    guard(|| {
        // SAFETY: `conn` is NULL or the pointer the running callback received, used on its
        // thread (documented contract); the callback's frame leaves the shim alone meanwhile.
        if let Some(c) = unsafe { opaque::as_mut(conn) } {
            c.conn.data_mut().user = user_data;
        }
    })
}

/// The connection's user data, as set by `sockeye_upgrade_set_user_data` or
/// `sockeye_conn_set_user_data` (NULL until set, or if `conn` is NULL).
#[no_mangle]
pub extern "C" fn sockeye_conn_user_data(conn: *mut sockeye_conn) -> *mut c_void {
    guard(|| {
        // SAFETY: `conn` is NULL or the pointer the running callback received, used on its
        // thread (documented contract); the callback's frame leaves the shim alone meanwhile.
        unsafe { opaque::as_mut(conn) }.map_or(std::ptr::null_mut(), |c| c.conn.data().user)
    })
}

/// Most bytes `sockeye_conn_peer_addr` writes, its NUL included: a buffer of this size always
/// holds the address.
pub const SOCKEYE_PEER_ADDR_MAX: usize = 64;

/// Writes the peer's address as text, "IP:PORT" ("203.0.113.7:51234") or "\[IPv6\]:PORT"
/// ("\[2001:db8::1\]:443"), NUL-terminated, into the `cap` bytes at `buf`, and its length (without
/// the NUL) into `*len` unless `len` is NULL. `buf` stays the caller's; `SOCKEYE_PEER_ADDR_MAX`
/// bytes always suffice. Returns `SOCKEYE_ERR_NULL` if `conn` or `buf` is NULL,
/// `SOCKEYE_ERR_INVALID_ARGUMENT` if `cap` is too small (then nothing is written).
#[no_mangle]
pub extern "C" fn sockeye_conn_peer_addr(
    conn: *mut sockeye_conn,
    buf: *mut c_char,
    cap: usize,
    len: *mut usize,
) -> sockeye_result {
    guard(|| {
        // SAFETY: `conn` is NULL or the pointer the running callback received, used on its
        // thread (documented contract); the callback's frame leaves the shim alone meanwhile.
        let Some(c) = (unsafe { opaque::as_mut(conn) }) else {
            return SOCKEYE_ERR_NULL;
        };
        if buf.is_null() {
            return SOCKEYE_ERR_NULL;
        }
        let text = c.conn.peer_addr().to_string();
        if text.len() >= cap {
            return SOCKEYE_ERR_INVALID_ARGUMENT;
        }
        // SAFETY: `buf` points to `cap` writable bytes (documented contract), and
        // `text.len() + 1 <= cap`; the source is our own string, which cannot overlap it.
        unsafe {
            std::ptr::copy_nonoverlapping(text.as_ptr(), buf.cast::<u8>(), text.len());
            buf.add(text.len()).write(0);
        }
        if !len.is_null() {
            // SAFETY: non-NULL, and a writable `size_t` by the documented contract.
            unsafe { len.write(text.len()) };
        }
        SOCKEYE_OK
    })
}

/// The index of the worker that holds the connection and runs its callbacks (0 ≤ index <
/// `sockeye_server_worker_count`; 0 if `conn` is NULL). Per-worker state indexed by it needs
/// no lock: a worker runs one callback at a time.
#[no_mangle]
pub extern "C" fn sockeye_conn_worker(conn: *mut sockeye_conn) -> usize {
    guard(|| {
        // SAFETY: `conn` is NULL or the pointer the running callback received, used on its
        // thread (documented contract); the callback's frame leaves the shim alone meanwhile.
        unsafe { opaque::as_mut(conn) }.map_or(0, |c| c.conn.id().worker())
    })
}

/// The server the connection belongs to: the pointer `sockeye_server_new` gave, for the
/// thread-safe `sockeye_server_*` functions (send by id, post to a worker, stats). Not a new
/// reference: never free it here. NULL if `conn` is NULL.
#[no_mangle]
pub extern "C" fn sockeye_conn_server(conn: *mut sockeye_conn) -> *mut sockeye_server {
    guard(|| {
        // SAFETY: `conn` is NULL or the pointer the running callback received, used on its
        // thread (documented contract); the callback's frame leaves the shim alone meanwhile.
        unsafe { opaque::as_mut(conn) }.map_or(std::ptr::null_mut(), |c| c.server)
    })
}
