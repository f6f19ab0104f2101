//! `sockeye_http_response`: the answer `on_http` builds for a plain HTTP GET, with its
//! functions. Like the request it answers, it lives on the stack frame of the `Handler`
//! method that calls C, and is read back when the callback returns.

use std::ffi::c_char;

use sockeye::HttpResponse;

use crate::opaque::{self, Opaque};
use crate::{bytes, guard, opt_str, sockeye_result, SOCKEYE_ERR_NULL, SOCKEYE_OK};

/// The response being built for a plain HTTP request, seen only inside `on_http`: valid only
/// until that callback returns, owned by the library. Its status is what `on_http` returns.
#[derive(Debug)]
pub struct sockeye_http_response {
    _private: [u8; 0],
}

/// What a `sockeye_http_response *` points to.
#[derive(Debug, Default)]
pub(crate) struct ResponseShim {
    content_type: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Opaque for sockeye_http_response {
    type Target<'a, 'b: 'a> = ResponseShim;
}

impl ResponseShim {
    pub(crate) fn into_response(self, status: u16) -> HttpResponse {
        let mut r = HttpResponse::new(status, &self.content_type, self.body);
        r.headers = self.headers;
        r
    }
}

/// Sets the response's `Content-Type` (a NUL-terminated string, copied; NULL or "" sends
/// none) and its body: the `len` bytes at `body`, copied (`body` may be NULL when `len` is 0).
/// A later call replaces both. Returns `SOCKEYE_ERR_NULL` if `response` is NULL (or `body` is
/// NULL with `len` > 0), `SOCKEYE_ERR_UTF8` if `content_type` is not UTF-8.
#[no_mangle]
pub extern "C" fn sockeye_http_response_set_body(
    response: *mut sockeye_http_response,
    content_type: *const c_char,
    body: *const u8,
    len: usize,
) -> sockeye_result {
    guard(|| {
        // SAFETY: `response` is NULL or the pointer `on_http` received, used during that call
        // (documented contract); `on_http` does not touch the shim until the callback returns.
        let Some(r) = (unsafe { opaque::as_mut(response) }) else {
            return SOCKEYE_ERR_NULL;
        };
        // SAFETY: `content_type` is NULL or NUL-terminated (documented contract).
        let ct = match unsafe { opt_str(content_type) } {
            Ok(ct) => ct,
            Err(e) => return e,
        };
        // SAFETY: `body` holds `len` readable bytes (documented contract).
        let Some(body) = (unsafe { bytes(body, len) }) else {
            return SOCKEYE_ERR_NULL;
        };
        r.content_type = ct.to_owned();
        r.body = body.to_vec();
        SOCKEYE_OK
    })
}

/// Adds a response header, `name: value` (NUL-terminated strings, copied), sent after the
/// engine's own. Skipped on the wire rather than refused: a name that is not an HTTP token, a
/// value holding CR or LF, and the headers the engine writes itself (`Connection`,
/// `Content-Type`: use `sockeye_http_response_set_body`, `Content-Length`,
/// `Transfer-Encoding`). Returns `SOCKEYE_ERR_NULL` if an argument is NULL, `SOCKEYE_ERR_UTF8`
/// if one is not UTF-8.
#[no_mangle]
pub extern "C" fn sockeye_http_response_add_header(
    response: *mut sockeye_http_response,
    name: *const c_char,
    value: *const c_char,
) -> sockeye_result {
    guard(|| {
        // SAFETY: `response` is NULL or the pointer `on_http` received, used during that call
        // (documented contract); `on_http` does not touch the shim until the callback returns.
        let Some(r) = (unsafe { opaque::as_mut(response) }) else {
            return SOCKEYE_ERR_NULL;
        };
        if name.is_null() || value.is_null() {
            return SOCKEYE_ERR_NULL;
        }
        // SAFETY: both non-NULL and NUL-terminated (documented contract).
        let (n, v) = match unsafe { (opt_str(name), opt_str(value)) } {
            (Ok(n), Ok(v)) => (n, v),
            (Err(e), _) | (_, Err(e)) => return e,
        };
        r.headers.push((n.to_owned(), v.to_owned()));
        SOCKEYE_OK
    })
}
