//! The callback table (`sockeye_callbacks`) and the [`sockeye::Handler`] that calls it, plus the
//! objects `on_upgrade` sees only while it runs, `sockeye_request` and `sockeye_upgrade`, with
//! their functions. (`sockeye_conn`, which the connection callbacks see, is in `conn.rs`;
//! `sockeye_http_response`, for `on_http`, in `http.rs`; `sockeye_worker` and posts, for
//! `sockeye_server_post`, in `worker.rs`.)
//!
//! Callbacks into C are plain calls, made on a worker thread; nothing here may keep a pointer
//! it lent to a callback after that callback returned.

use std::cell::RefCell;
use std::ffi::{c_char, c_void, CStr};
use std::net::SocketAddr;
use std::sync::Arc;

use sockeye::{CloseCode, Conn, Ctx, Handler, HttpResponse, Message, Post, Request, Upgrade};

use crate::conn::{sockeye_conn, ConnShim};
use crate::http::{sockeye_http_response, ResponseShim};
use crate::opaque::{self, to_opaque, Opaque};
use crate::server::{sockeye_server, ServerCell};
use crate::types::{opcode_and_bytes, sockeye_opcode, ConnData};
use crate::worker::CPost;
use crate::{
    guard, opt_str, sockeye_result, SOCKEYE_ERR_INVALID_ARGUMENT, SOCKEYE_ERR_NULL, SOCKEYE_OK,
};

/// What `on_upgrade` returns to accept the connection. Any other value rejects it: an HTTP
/// status from 400 to 599 is sent as is (404, 403, 401, 429, ...); anything else becomes 500.
pub const SOCKEYE_UPGRADE_ACCEPT: u16 = 0;

/// An HTTP request, seen only inside `on_upgrade` (a WebSocket upgrade) or `on_http` (a plain
/// GET). The pointer, and every string read from it, is valid only until that callback
/// returns; the library owns them all.
#[derive(Debug)]
pub struct sockeye_request {
    _private: [u8; 0],
}

/// The answer being built for an upgrade request, seen only inside `on_upgrade`: valid only
/// until that callback returns, owned by the library.
#[derive(Debug)]
pub struct sockeye_upgrade {
    _private: [u8; 0],
}

/// Decides an upgrade request. Return `SOCKEYE_UPGRADE_ACCEPT` to accept, or an HTTP status
/// (400..599) to reject. `request` and `upgrade` are valid only during the call.
pub type sockeye_upgrade_cb = Option<
    unsafe extern "C" fn(
        user_data: *mut c_void,
        request: *const sockeye_request,
        upgrade: *mut sockeye_upgrade,
    ) -> u16,
>;

/// Told about a connection: `on_open` (it is open; sending works) and `on_drain` (its send
/// queue, which had backpressure, is empty again). `conn` is valid only during the call.
pub type sockeye_conn_cb =
    Option<unsafe extern "C" fn(user_data: *mut c_void, conn: *mut sockeye_conn)>;

/// A control frame arrived: `on_ping` (the pong is already queued: nothing to answer) or
/// `on_pong`. `data` holds its `len` payload bytes (at most 125; never NULL, not
/// NUL-terminated) and, like `conn`, is valid only during the call.
pub type sockeye_control_cb = Option<
    unsafe extern "C" fn(
        user_data: *mut c_void,
        conn: *mut sockeye_conn,
        data: *const u8,
        len: usize,
    ),
>;

/// Answers a plain HTTP GET (a well-formed request that is not a WebSocket upgrade: a status
/// page, a client page, a health check). Return 0 to decline it (the client gets the default
/// 400 Bad Request), or the status to answer with (200..599; anything else is sent as 500),
/// after setting the content type, body and headers on `response`. The connection closes
/// after the response. `request` and `response` are valid only during the call.
pub type sockeye_http_cb = Option<
    unsafe extern "C" fn(
        user_data: *mut c_void,
        request: *const sockeye_request,
        response: *mut sockeye_http_response,
    ) -> u16,
>;

/// A whole message arrived. `opcode` is `SOCKEYE_OPCODE_TEXT` (then `data` is valid UTF-8) or
/// `SOCKEYE_OPCODE_BINARY`. `data` holds `len` bytes, is not NUL-terminated, and, like `conn`,
/// is valid only during the call: copy what you keep. `data` is never NULL.
pub type sockeye_message_cb = Option<
    unsafe extern "C" fn(
        user_data: *mut c_void,
        conn: *mut sockeye_conn,
        opcode: sockeye_opcode,
        data: *const u8,
        len: usize,
    ),
>;

/// The connection is closed: by the peer's close frame (its code, or 1005 when it had none),
/// by a protocol error (the code we sent: 1002, 1007, 1009, ...), by a timeout or shutdown
/// (1001), or by the socket dying (1006). Called exactly once for every connection that
/// `on_open` saw; the place to free its user data. `reason` holds `reason_len` bytes of UTF-8
/// followed by a NUL; like `conn` it is valid only during the call. Sends fail from here on.
pub type sockeye_close_cb = Option<
    unsafe extern "C" fn(
        user_data: *mut c_void,
        conn: *mut sockeye_conn,
        code: u16,
        reason: *const c_char,
        reason_len: usize,
    ),
>;

/// The callbacks of a server; each may be NULL (then the event is ignored, and a missing
/// `on_upgrade` accepts every request). `sockeye_server_new` copies the table. Every callback
/// runs on a worker thread (several at once when there are several workers), receives the
/// `user_data` given to `sockeye_server_new`, must not block, and must not unwind (no C++
/// exception or longjmp may leave it).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct sockeye_callbacks {
    /// An upgrade request arrived; accept or reject it.
    pub on_upgrade: sockeye_upgrade_cb,
    /// A connection opened.
    pub on_open: sockeye_conn_cb,
    /// A message arrived.
    pub on_message: sockeye_message_cb,
    /// A connection's send queue drained after backpressure.
    pub on_drain: sockeye_conn_cb,
    /// A connection closed.
    pub on_close: sockeye_close_cb,
    /// A ping arrived (already answered).
    pub on_ping: sockeye_control_cb,
    /// A pong arrived.
    pub on_pong: sockeye_control_cb,
    /// A plain HTTP GET arrived (NULL: every one gets 400).
    pub on_http: sockeye_http_cb,
}

/// The callback table, the server-wide user data and the way back to the server; every
/// worker's handler, and the server object, get a copy.
#[derive(Debug, Clone)]
pub(crate) struct Shared {
    pub(crate) cb: sockeye_callbacks,
    pub(crate) user: *mut c_void,
    /// The server, set once `sockeye_server_new` made it (before any callback can run).
    pub(crate) server: Arc<ServerCell>,
}

impl Shared {
    /// The caller's `sockeye_server *`, for `sockeye_conn_server` and `sockeye_worker_server`:
    /// the pointer `sockeye_server_new` handed out (NULL before it did). Valid while callbacks
    /// run, since `sockeye_server_run` holds a reference.
    pub(crate) fn server_ptr(&self) -> *mut sockeye_server {
        self.server.get().map_or(std::ptr::null_mut(), |w| to_opaque::<sockeye_server>(w.as_ptr()))
    }
}

// SAFETY: the C program promises, by the documented contract of `sockeye_server_new`, that
// `user_data` may be used from any worker thread; the rest is plain function pointers.
unsafe impl Send for Shared {}
// SAFETY: as for `Send`: the library only copies the pointer and hands it back to callbacks.
unsafe impl Sync for Shared {}

/// One per worker: calls the C callbacks.
#[derive(Debug)]
pub(crate) struct CHandler {
    pub(crate) shared: Shared,
}

/// What a `sockeye_request *` points to: the engine's request, borrowed for one `on_upgrade`
/// or `on_http`.
pub(crate) struct RequestShim<'r, 'a> {
    req: &'r Request<'a>,
    /// NUL-terminated copies handed to C, freed when the callback has returned.
    strings: RefCell<Vec<Box<[u8]>>>,
}

impl<'r, 'a> RequestShim<'r, 'a> {
    pub(crate) fn new(req: &'r Request<'a>) -> Self {
        Self { req, strings: RefCell::new(Vec::new()) }
    }

    /// Keeps a NUL-terminated copy of `s` until the callback returns, writes its length to
    /// `*len` unless `len` is NULL, and returns a pointer to it.
    pub(crate) fn keep(&self, s: &[u8], len: *mut usize) -> *const c_char {
        let mut v = Vec::with_capacity(s.len() + 1);
        v.extend_from_slice(s);
        v.push(0);
        let b = v.into_boxed_slice();
        let p = b.as_ptr().cast();
        self.strings.borrow_mut().push(b);
        if !len.is_null() {
            // SAFETY: non-NULL, and a writable `size_t` by the accessor's contract.
            unsafe { len.write(s.len()) };
        }
        p
    }
}

impl Opaque for sockeye_request {
    type Target<'r, 'a: 'r> = RequestShim<'r, 'a>;
}

/// What a `sockeye_upgrade *` points to: the answer `on_upgrade` builds, read back when the
/// callback returns.
pub(crate) struct UpgradeShim<'r, 'a> {
    req: &'r Request<'a>,
    /// The new connection's user data (`sockeye_upgrade_set_user_data`).
    user: *mut c_void,
    /// The confirmed subprotocol (`sockeye_upgrade_set_protocol`).
    protocol: Option<String>,
    /// Accept without compression (`sockeye_upgrade_without_compression`).
    no_compress: bool,
}

impl Opaque for sockeye_upgrade {
    type Target<'r, 'a: 'r> = UpgradeShim<'r, 'a>;
}

impl Handler for CHandler {
    type Data = ConnData;

    fn on_upgrade(&mut self, req: &Request<'_>, _peer: SocketAddr) -> Upgrade<ConnData> {
        let Some(cb) = self.shared.cb.on_upgrade else {
            return Upgrade::accept(ConnData::default());
        };
        let shim = RequestShim::new(req);
        let mut up =
            UpgradeShim { req, user: std::ptr::null_mut(), protocol: None, no_compress: false };
        let req_ptr = to_opaque::<sockeye_request>(&shim);
        let up_ptr = to_opaque::<sockeye_upgrade>(std::ptr::from_mut(&mut up));
        // SAFETY: a C function pointer from the table, called with pointers to objects that
        // live on this stack frame until it returns (the documented lifetime).
        let status = unsafe { cb(self.shared.user, req_ptr, up_ptr) };
        if status == SOCKEYE_UPGRADE_ACCEPT {
            Upgrade::Accept {
                protocol: up.protocol,
                headers: Vec::new(),
                data: ConnData { user: up.user },
                compress: !up.no_compress,
            }
        } else if (400..=599).contains(&status) {
            Upgrade::reject(status)
        } else {
            Upgrade::reject(500)
        }
    }

    fn on_open(&mut self, conn: &mut Conn<'_, ConnData>) {
        if let Some(cb) = self.shared.cb.on_open {
            let mut shim = ConnShim { conn, server: self.shared.server_ptr() };
            // SAFETY: a C callback, given a pointer to a shim that lives until it returns.
            unsafe { cb(self.shared.user, shim.as_ptr()) };
        }
    }

    fn on_message(&mut self, conn: &mut Conn<'_, ConnData>, msg: Message<'_>) {
        if let Some(cb) = self.shared.cb.on_message {
            let (op, data) = opcode_and_bytes(msg);
            let mut shim = ConnShim { conn, server: self.shared.server_ptr() };
            // SAFETY: a C callback, given the shim and the payload, both alive until it returns;
            // an empty slice's pointer is dangling but non-NULL and never read.
            unsafe { cb(self.shared.user, shim.as_ptr(), op, data.as_ptr(), data.len()) };
        }
    }

    fn on_ping(&mut self, conn: &mut Conn<'_, ConnData>, payload: &[u8]) {
        if let Some(cb) = self.shared.cb.on_ping {
            let mut shim = ConnShim { conn, server: self.shared.server_ptr() };
            // SAFETY: a C callback, given the shim and the payload, both alive until it returns.
            unsafe { cb(self.shared.user, shim.as_ptr(), payload.as_ptr(), payload.len()) };
        }
    }

    fn on_pong(&mut self, conn: &mut Conn<'_, ConnData>, payload: &[u8]) {
        if let Some(cb) = self.shared.cb.on_pong {
            let mut shim = ConnShim { conn, server: self.shared.server_ptr() };
            // SAFETY: a C callback, given the shim and the payload, both alive until it returns.
            unsafe { cb(self.shared.user, shim.as_ptr(), payload.as_ptr(), payload.len()) };
        }
    }

    fn on_http(&mut self, req: &Request<'_>) -> Option<HttpResponse> {
        let cb = self.shared.cb.on_http?;
        let shim = RequestShim::new(req);
        let mut resp = ResponseShim::default();
        let req_ptr = to_opaque::<sockeye_request>(&shim);
        let resp_ptr = to_opaque::<sockeye_http_response>(std::ptr::from_mut(&mut resp));
        // SAFETY: a C function pointer from the table, called with pointers to objects that
        // live on this stack frame until it returns (the documented lifetime).
        let status = unsafe { cb(self.shared.user, req_ptr, resp_ptr) };
        (status != 0).then(|| resp.into_response(status))
    }

    fn on_post(&mut self, ctx: &mut Ctx<'_, ConnData>, post: &Post) {
        if let Some(p) = post.downcast_ref::<CPost>() {
            p.run(ctx, self.shared.server_ptr());
        }
    }

    fn on_drain(&mut self, conn: &mut Conn<'_, ConnData>) {
        if let Some(cb) = self.shared.cb.on_drain {
            let mut shim = ConnShim { conn, server: self.shared.server_ptr() };
            // SAFETY: a C callback, given a pointer to a shim that lives until it returns.
            unsafe { cb(self.shared.user, shim.as_ptr()) };
        }
    }

    fn on_close(&mut self, conn: &mut Conn<'_, ConnData>, code: CloseCode, reason: &str) {
        if let Some(cb) = self.shared.cb.on_close {
            // A close reason is at most 123 bytes: a NUL-terminated copy fits on the stack.
            let mut buf = [0u8; 128];
            let n = reason.len().min(buf.len() - 1);
            buf[..n].copy_from_slice(&reason.as_bytes()[..n]);
            let mut shim = ConnShim { conn, server: self.shared.server_ptr() };
            // SAFETY: a C callback, given the shim and a NUL-terminated reason of `n` bytes,
            // both alive until it returns.
            unsafe { cb(self.shared.user, shim.as_ptr(), code.0, buf.as_ptr().cast(), n) };
        }
    }
}

/// The path of the request target, without the query ("/chat"). Returns a NUL-terminated
/// string owned by the request, valid until the callback (`on_upgrade` or `on_http`) returns,
/// and writes its length to `*len` unless `len` is NULL. Returns NULL if `req` is NULL.
#[no_mangle]
pub extern "C" fn sockeye_request_path(
    req: *const sockeye_request,
    len: *mut usize,
) -> *const c_char {
    guard(|| {
        // SAFETY: `req` is NULL or the pointer the running callback received, used during
        // that call (documented contract); nothing changes the shim but through its `RefCell`.
        let Some(r) = (unsafe { opaque::as_ref(req) }) else {
            return std::ptr::null();
        };
        r.keep(r.req.path().as_bytes(), len)
    })
}

/// What follows the first '?' of the request target, or NULL when there is none (or `req` is
/// NULL). Same ownership and lifetime as `sockeye_request_path`.
#[no_mangle]
pub extern "C" fn sockeye_request_query(
    req: *const sockeye_request,
    len: *mut usize,
) -> *const c_char {
    guard(|| {
        // SAFETY: `req` is NULL or the pointer the running callback received, used during
        // that call (documented contract); nothing changes the shim but through its `RefCell`.
        let Some(r) = (unsafe { opaque::as_ref(req) }) else {
            return std::ptr::null();
        };
        match r.req.query() {
            Some(q) => r.keep(q.as_bytes(), len),
            None => std::ptr::null(),
        }
    })
}

/// The value of the first header called `name` (a NUL-terminated string, matched ASCII
/// case-insensitively), or NULL when there is none (or `req` or `name` is NULL, or `name` is not
/// UTF-8). The value is a NUL-terminated copy owned by the request, valid until the callback
/// returns; its length goes to `*len` unless `len` is NULL (a value may in theory contain a NUL
/// byte; `*len` is exact).
#[no_mangle]
pub extern "C" fn sockeye_request_header(
    req: *const sockeye_request,
    name: *const c_char,
    len: *mut usize,
) -> *const c_char {
    guard(|| {
        // SAFETY: `req` is NULL or the pointer the running callback received, used during
        // that call (documented contract); nothing changes the shim but through its `RefCell`.
        let Some(r) = (unsafe { opaque::as_ref(req) }) else {
            return std::ptr::null();
        };
        if name.is_null() {
            return std::ptr::null();
        }
        // SAFETY: non-NULL and NUL-terminated (documented contract).
        let Ok(name) = unsafe { CStr::from_ptr(name) }.to_str() else {
            return std::ptr::null();
        };
        match r.req.header(name) {
            Some(v) => r.keep(v, len),
            None => std::ptr::null(),
        }
    })
}

/// How many subprotocols the client offers: every item of every `Sec-WebSocket-Protocol`
/// header (a client may send several headers, each a comma-separated list), in order. 0 when
/// it offers none, in `on_http`, or if `req` is NULL.
#[no_mangle]
pub extern "C" fn sockeye_request_protocol_count(req: *const sockeye_request) -> usize {
    guard(|| {
        // SAFETY: `req` is NULL or the pointer the running callback received, used during
        // that call (documented contract).
        unsafe { opaque::as_ref(req) }.map_or(0, |r| r.req.protocols().count())
    })
}

/// The `index`th subprotocol the client offers (0-based, in the order of
/// `sockeye_request_protocol_count`), or NULL past the end (or if `req` is NULL). Same
/// ownership and lifetime as `sockeye_request_path`; its length goes to `*len` unless `len` is
/// NULL. Pass it to `sockeye_upgrade_set_protocol` to confirm it.
#[no_mangle]
pub extern "C" fn sockeye_request_protocol(
    req: *const sockeye_request,
    index: usize,
    len: *mut usize,
) -> *const c_char {
    guard(|| {
        // SAFETY: `req` is NULL or the pointer the running callback received, used during
        // that call (documented contract); nothing changes the shim but through its `RefCell`.
        let Some(r) = (unsafe { opaque::as_ref(req) }) else {
            return std::ptr::null();
        };
        match r.req.protocols().nth(index) {
            Some(p) => r.keep(p.as_bytes(), len),
            None => std::ptr::null(),
        }
    })
}

/// Sets the new connection's user data: `sockeye_conn_user_data` returns it from `on_open`
/// on. The library never dereferences or frees it; free it in `on_close`, which is called for
/// every connection that opened. (If the handshake fails after an accept, no `on_open` and no
/// `on_close` follow: keep it NULL or keep it owned elsewhere when that matters.) Does nothing
/// if `upgrade` is NULL.
#[no_mangle]
pub extern "C" fn sockeye_upgrade_set_user_data(
    upgrade: *mut sockeye_upgrade,
    conn_user_data: *mut c_void,
) {
    guard(|| {
        // SAFETY: `upgrade` is NULL or the pointer `on_upgrade` received, used during that call
        // (documented contract); `on_upgrade` does not touch `up` until the callback returns.
        if let Some(u) = unsafe { opaque::as_mut(upgrade) } {
            u.user = conn_user_data;
        }
    })
}

/// Whether the 101 would carry permessage-deflate for this request: the server enables it
/// (`sockeye_config.deflate`) and the client offered parameters it can honour. False if
/// `upgrade` is NULL.
#[no_mangle]
pub extern "C" fn sockeye_upgrade_deflate_offered(upgrade: *const sockeye_upgrade) -> bool {
    guard(|| {
        // SAFETY: `upgrade` is NULL or the pointer `on_upgrade` received, used during that call
        // (documented contract).
        unsafe { opaque::as_ref(upgrade) }.is_some_and(|u| u.req.permessage_deflate().is_some())
    })
}

/// Accepts this connection without permessage-deflate, whatever the client offered: the 101
/// carries no `Sec-WebSocket-Extensions`. Does nothing if `upgrade` is NULL.
#[no_mangle]
pub extern "C" fn sockeye_upgrade_without_compression(upgrade: *mut sockeye_upgrade) {
    guard(|| {
        // SAFETY: `upgrade` is NULL or the pointer `on_upgrade` received, used during that call
        // (documented contract); `on_upgrade` does not touch `up` until the callback returns.
        if let Some(u) = unsafe { opaque::as_mut(upgrade) } {
            u.no_compress = true;
        }
    })
}

/// Confirms a subprotocol (sent back in `Sec-WebSocket-Protocol`; a later call replaces an
/// earlier one). `protocol` is a NUL-terminated string, copied; it must be one the client
/// offered, else `SOCKEYE_ERR_INVALID_ARGUMENT`. Returns `SOCKEYE_ERR_NULL` if `upgrade` or
/// `protocol` is NULL, `SOCKEYE_ERR_UTF8` if `protocol` is not UTF-8.
#[no_mangle]
pub extern "C" fn sockeye_upgrade_set_protocol(
    upgrade: *mut sockeye_upgrade,
    protocol: *const c_char,
) -> sockeye_result {
    guard(|| {
        // SAFETY: `upgrade` is NULL or the pointer `on_upgrade` received, used during that call
        // (documented contract); `on_upgrade` does not touch `up` until the callback returns.
        let Some(u) = (unsafe { opaque::as_mut(upgrade) }) else {
            return SOCKEYE_ERR_NULL;
        };
        if protocol.is_null() {
            return SOCKEYE_ERR_NULL;
        }
        // SAFETY: non-NULL and NUL-terminated (documented contract).
        let p = match unsafe { opt_str(protocol) } {
            Ok(p) => p,
            Err(e) => return e,
        };
        if !u.req.protocols().any(|o| o == p) {
            return SOCKEYE_ERR_INVALID_ARGUMENT;
        }
        u.protocol = Some(p.to_owned());
        SOCKEYE_OK
    })
}
