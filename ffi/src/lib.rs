//! C ABI over the Sockeye engine: `libsockeye.so` / `libsockeye.a`, described by
//! `include/sockeye.h`, which cbindgen generates from the doc comments in this crate
//! (`ffi/gen-header.sh`; CI runs `ffi/check-header.sh`). Never edit the header by hand.
//!
//! What this crate owns: the translation between C and the Rust API — opaque handles, a
//! callback table turned into a [`sockeye::Handler`], error codes. What it must never do:
//! let a panic unwind into C (every `extern "C"` body runs inside `guard`, or forwards to a
//! function whose body does), read a pointer it did not NULL-check, or keep a borrowed pointer
//! past the call that lent it.
//!
//! Where things are: `config` (`sockeye_config`), `server` (`sockeye_server` and its
//! thread-safe functions), `handler` (the callback table and the handler that calls it, with
//! `sockeye_request` and `sockeye_upgrade`), `conn` (`sockeye_conn`), `http`
//! (`sockeye_http_response`, for `on_http`), `worker` (`sockeye_server_post` and
//! `sockeye_worker`), `topics` (pub/sub: the `sockeye_conn_subscribe` / `sockeye_*_publish`
//! family), `types` (what those share: opcodes, per-connection data), `opaque` (the only casts
//! between opaque C pointers and
//! Rust objects), and here the result codes, the panic boundary and the pointer readers.
//!
//! The functions take raw pointers and are declared safe, as in rustls-ffi: they are called
//! from C, where Rust's `unsafe` means nothing, and every doc comment (hence the header) states
//! what each pointer must be and who owns it.
#![allow(non_camel_case_types)]
#![allow(clippy::not_unsafe_ptr_arg_deref)]

use std::ffi::{c_char, c_int};
use std::panic::{catch_unwind, AssertUnwindSafe};

pub mod config;
pub mod conn;
pub mod handler;
pub mod http;
mod opaque;
pub mod server;
pub mod topics;
pub mod types;
pub mod worker;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_topics;

/// What a call returned. `SOCKEYE_OK` is 0; every other value is an error that
/// `sockeye_strerror` describes.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum sockeye_result {
    /// Success.
    SOCKEYE_OK = 0,
    /// A pointer that must not be NULL was NULL.
    SOCKEYE_ERR_NULL = 1,
    /// An argument is out of range: unknown opcode or backend, a close code that may not be
    /// sent, a `sockeye_config` field outside its accepted range, a subprotocol the client did
    /// not offer, a worker index or connection id that names no worker.
    SOCKEYE_ERR_INVALID_ARGUMENT = 2,
    /// The listen address could not be parsed or resolved.
    SOCKEYE_ERR_ADDRESS = 3,
    /// Text (a text message, a close reason, an address) is not valid UTF-8.
    SOCKEYE_ERR_UTF8 = 4,
    /// An I/O error: the address could not be bound (for a reason other than
    /// `SOCKEYE_ERR_ADDRESS_IN_USE`), or a worker failed.
    SOCKEYE_ERR_IO = 5,
    /// The backend asked for (io_uring) is not available on this kernel.
    SOCKEYE_ERR_BACKEND_UNAVAILABLE = 6,
    /// `sockeye_server_run` was already called on this server.
    SOCKEYE_ERR_ALREADY_RUN = 7,
    /// The server has stopped: its workers no longer take commands.
    SOCKEYE_ERR_STOPPED = 8,
    /// A panic inside the library was caught at the C boundary (a bug: please report it).
    SOCKEYE_ERR_PANIC = 9,
    /// The listen address is taken: something already listens on it (and this server's
    /// `share_port` is false, or the listener there does not share its port).
    SOCKEYE_ERR_ADDRESS_IN_USE = 10,
    /// A topic name is longer than the server's `max_topic_len` (see `sockeye_config`).
    SOCKEYE_ERR_TOPIC_TOO_LONG = 11,
    /// The connection is closing or closed: it can no longer subscribe (`on_close`, or after
    /// `sockeye_conn_close`).
    SOCKEYE_ERR_CLOSED = 12,
    /// A message is larger than one send takes (2 GiB).
    SOCKEYE_ERR_MESSAGE_TOO_LARGE = 13,
    /// The TLS certificate or key was refused: a file that cannot be read, no PEM in it, a
    /// key that does not match the certificate, a certificate not valid now; or a TLS reload
    /// on a server that does not serve TLS. The log says which.
    SOCKEYE_ERR_TLS = 14,
}

pub use sockeye_result::*;

/// Returns a NUL-terminated, static, English description of a `sockeye_result` value (any
/// other value gives "unknown error"). The string is never freed and never changes.
#[no_mangle]
pub extern "C" fn sockeye_strerror(code: c_int) -> *const c_char {
    guard(|| strerror(code).as_ptr())
}

/// Every result code with its description: `sockeye_strerror` and the tests read this one table.
const DESCRIPTIONS: [(sockeye_result, &std::ffi::CStr); 15] = [
    (SOCKEYE_OK, c"success"),
    (SOCKEYE_ERR_NULL, c"a required pointer was NULL"),
    (SOCKEYE_ERR_INVALID_ARGUMENT, c"invalid argument"),
    (SOCKEYE_ERR_ADDRESS, c"the address could not be parsed or resolved"),
    (SOCKEYE_ERR_UTF8, c"text is not valid UTF-8"),
    (SOCKEYE_ERR_IO, c"I/O error (bind failed or a worker failed)"),
    (SOCKEYE_ERR_BACKEND_UNAVAILABLE, c"the requested I/O backend is not available on this kernel"),
    (SOCKEYE_ERR_ALREADY_RUN, c"the server was already run"),
    (SOCKEYE_ERR_STOPPED, c"the server has stopped"),
    (SOCKEYE_ERR_PANIC, c"a panic was caught at the C boundary (library bug)"),
    (SOCKEYE_ERR_ADDRESS_IN_USE, c"the address is already in use (something else listens on it)"),
    (SOCKEYE_ERR_TOPIC_TOO_LONG, c"the topic name is longer than max_topic_len"),
    (SOCKEYE_ERR_CLOSED, c"the connection is closing or closed"),
    (SOCKEYE_ERR_MESSAGE_TOO_LARGE, c"the message is larger than one send takes (2 GiB)"),
    (SOCKEYE_ERR_TLS, c"the TLS certificate or key was refused (sockeye_last_error says why)"),
];

fn strerror(code: c_int) -> &'static std::ffi::CStr {
    DESCRIPTIONS
        .iter()
        .find(|(r, _)| *r as c_int == code)
        .map_or(c"unknown error", |(_, text)| text)
}

thread_local! {
    static LAST_ERROR: std::cell::RefCell<std::ffi::CString> =
        std::cell::RefCell::new(std::ffi::CString::default());
}

/// Records why the call now returning an error failed, for `sockeye_last_error`.
pub(crate) fn set_last_error(why: &str) {
    let text = std::ffi::CString::new(why.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = text);
}

/// Why the last call on this thread that returned `SOCKEYE_ERR_TLS` failed (or
/// `SOCKEYE_ERR_INVALID_ARGUMENT` for only one of `tls_cert_file` and `tls_key_file` set), in
/// English (which file, which check), as a NUL-terminated string owned by the library: valid until the next
/// call into the library on this thread, never freed by the caller. Empty when there is
/// nothing to say.
#[no_mangle]
pub extern "C" fn sockeye_last_error() -> *const c_char {
    guard(|| LAST_ERROR.with(|e| e.borrow().as_ptr()))
}

/// Returns the library version ("MAJOR.MINOR.PATCH") as a NUL-terminated static string, never
/// freed by the caller.
#[no_mangle]
pub extern "C" fn sockeye_version() -> *const c_char {
    guard(|| concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast())
}

/// Returns the crypto provider that wss:// runs on in this build of the library, `"ring"` (the
/// default) or `"aws-lc-rs"` (built with the `aws-lc-rs` feature), as a NUL-terminated static
/// string, never freed by the caller.
#[no_mangle]
pub extern "C" fn sockeye_tls_provider() -> *const c_char {
    guard(|| {
        // The engine's word for it (features unify: another crate may have turned it on).
        if sockeye::TlsConfig::PROVIDER == "aws-lc-rs" {
            c"aws-lc-rs".as_ptr()
        } else {
            c"ring".as_ptr()
        }
    })
}

/// The value an `extern "C"` function returns when its body panicked.
pub(crate) trait OnPanic {
    fn on_panic() -> Self;
}

impl OnPanic for sockeye_result {
    fn on_panic() -> Self {
        SOCKEYE_ERR_PANIC
    }
}

impl OnPanic for () {
    fn on_panic() -> Self {}
}

macro_rules! on_panic_zero {
    ($($t:ty),*) => {$(
        impl OnPanic for $t {
            fn on_panic() -> Self {
                0
            }
        }
    )*};
}
on_panic_zero!(u16, u64, usize);

impl OnPanic for bool {
    fn on_panic() -> Self {
        false
    }
}

impl<T> OnPanic for *mut T {
    fn on_panic() -> Self {
        std::ptr::null_mut()
    }
}

impl<T> OnPanic for *const T {
    fn on_panic() -> Self {
        std::ptr::null()
    }
}

/// The panic boundary: runs `f`, and turns a panic into the return type's error value instead
/// of unwinding into C.
pub(crate) fn guard<R: OnPanic>(f: impl FnOnce() -> R) -> R {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| R::on_panic())
}

/// Borrows `len` bytes at `data` for the duration of one call. `len == 0` allows a NULL
/// `data`; otherwise NULL gives `None`.
///
/// # Safety
/// A non-NULL `data` must point to `len` readable bytes that stay unchanged while the returned
/// slice is used.
pub(crate) unsafe fn bytes<'a>(data: *const u8, len: usize) -> Option<&'a [u8]> {
    if len == 0 {
        return Some(&[]);
    }
    if data.is_null() || len > isize::MAX as usize {
        return None;
    }
    // SAFETY: non-NULL and `len` readable bytes, as the caller promises.
    Some(unsafe { std::slice::from_raw_parts(data, len) })
}

/// Reads an optional NUL-terminated UTF-8 string: NULL gives `Ok("")`, a string that is not
/// UTF-8 gives `Err(SOCKEYE_ERR_UTF8)`.
///
/// # Safety
/// A non-NULL `s` must point to a NUL-terminated string that stays unchanged while the returned
/// `&str` is used.
pub(crate) unsafe fn opt_str<'a>(s: *const c_char) -> Result<&'a str, sockeye_result> {
    if s.is_null() {
        return Ok("");
    }
    // SAFETY: non-NULL and NUL-terminated, as the caller promises.
    let c = unsafe { std::ffi::CStr::from_ptr(s) };
    c.to_str().map_err(|_| SOCKEYE_ERR_UTF8)
}
