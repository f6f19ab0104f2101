//! Posts to a worker from any thread (`sockeye_server_post`), and `sockeye_worker`: a worker
//! as the posted callback sees it, to send to its connections by id.
//!
//! A post is a `CPost` in the worker's command channel. Its callback runs exactly once: on
//! the worker, or, when the post cannot run there any more (the server stopped first), with a
//! NULL worker from whichever thread drops it, so the C program can always free its argument.

use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use sockeye::{ConnId, Ctx};

use crate::conn::{sockeye_send_status, SOCKEYE_SEND_ERROR};
use crate::opaque::{self, to_opaque, Opaque};
use crate::server::sockeye_server;
use crate::types::{message, sockeye_opcode, ConnData};
use crate::{
    bytes, guard, sockeye_result, SOCKEYE_ERR_INVALID_ARGUMENT, SOCKEYE_ERR_NULL,
    SOCKEYE_ERR_STOPPED, SOCKEYE_OK,
};

/// A worker, seen only inside a posted callback (`sockeye_post_cb`): valid until it returns,
/// on that worker's thread, owned by the library.
#[derive(Debug)]
pub struct sockeye_worker {
    _private: [u8; 0],
}

/// What a `sockeye_worker *` points to: the engine's view of the worker, borrowed for one
/// posted callback.
pub(crate) struct WorkerShim<'c, 'd> {
    ctx: &'c mut Ctx<'d, ConnData>,
    server: *mut sockeye_server,
}

impl Opaque for sockeye_worker {
    type Target<'c, 'd: 'c> = WorkerShim<'c, 'd>;
}

/// A callback posted with `sockeye_server_post`, called exactly once with the `user_data`
/// given to `sockeye_server_new` and the `arg` given to the post. On the worker, `worker` is
/// that worker (valid during the call). If the server stops before the worker could run it,
/// it is called with `worker` NULL instead, on whichever thread discards it (the worker's as
/// it exits, or the one freeing the server): then only free `arg`.
pub type sockeye_post_cb = Option<
    unsafe extern "C" fn(user_data: *mut c_void, worker: *mut sockeye_worker, arg: *mut c_void),
>;

/// A post on its way to a worker.
#[derive(Debug)]
pub(crate) struct CPost {
    cb: unsafe extern "C" fn(*mut c_void, *mut sockeye_worker, *mut c_void),
    user: *mut c_void,
    arg: *mut c_void,
    /// Set once the callback ran (or must never run: the post was refused).
    done: AtomicBool,
}

// SAFETY: the C program hands `arg` over to the worker thread by posting it (documented
// contract of `sockeye_server_post`), and `user` is the server-wide pointer every worker
// thread already receives.
unsafe impl Send for CPost {}
// SAFETY: the pointers are only handed back to C, once (guarded by `done`).
unsafe impl Sync for CPost {}

impl CPost {
    /// Runs the callback on the worker, unless it already ran.
    pub(crate) fn run(&self, ctx: &mut Ctx<'_, ConnData>, server: *mut sockeye_server) {
        if self.done.swap(true, Ordering::AcqRel) {
            return;
        }
        let mut shim = WorkerShim { ctx, server };
        let w = to_opaque::<sockeye_worker>(std::ptr::from_mut(&mut shim));
        // SAFETY: a C callback, given a pointer to a shim that lives until it returns.
        unsafe { (self.cb)(self.user, w, self.arg) };
    }
}

impl Drop for CPost {
    fn drop(&mut self) {
        if !*self.done.get_mut() {
            // SAFETY: the callback's documented "not run" call: NULL worker, the post's `arg`.
            unsafe { (self.cb)(self.user, std::ptr::null_mut(), self.arg) };
        }
    }
}

/// Runs `cb(user_data, worker, arg)` on worker `worker` (0 ≤ `worker` <
/// `sockeye_server_worker_count`), in its next loop turn, after the callbacks already running
/// there: the way to do work on a worker from any thread (a timer, a feed, another worker)
/// and to send to the connections it holds without a copy per connection
/// (`sockeye_worker_send`). Thread-safe, callbacks included.
///
/// Ownership of `arg` passes to the callback on `SOCKEYE_OK`: it is then called exactly once,
/// on the worker, or with a NULL worker if the server stops before it ran (see
/// `sockeye_post_cb`). On any error it is never called and `arg` stays the caller's. Errors:
/// `SOCKEYE_ERR_NULL` (a NULL `server` or `cb`), `SOCKEYE_ERR_INVALID_ARGUMENT` (no such
/// worker), `SOCKEYE_ERR_STOPPED` (the server has stopped).
#[no_mangle]
pub extern "C" fn sockeye_server_post(
    server: *mut sockeye_server,
    worker: usize,
    cb: sockeye_post_cb,
    arg: *mut c_void,
) -> sockeye_result {
    guard(|| {
        // SAFETY: `server` is NULL or from `sockeye_server_new` and not yet freed (documented
        // contract); its `Arc` keeps the object alive and nothing changes it but through locks.
        let Some(obj) = (unsafe { opaque::as_ref(server) }) else {
            return SOCKEYE_ERR_NULL;
        };
        let Some(cb) = cb else { return SOCKEYE_ERR_NULL };
        if worker >= obj.handle.workers() {
            return SOCKEYE_ERR_INVALID_ARGUMENT;
        }
        let post = Arc::new(CPost { cb, user: obj.shared.user, arg, done: AtomicBool::new(false) });
        if obj.handle.post(worker, Arc::clone(&post) as sockeye::Post) {
            SOCKEYE_OK
        } else {
            // Refused: the channel dropped its copy; ours must not call back either.
            post.done.store(true, Ordering::Release);
            SOCKEYE_ERR_STOPPED
        }
    })
}

/// The worker's index (0 if `worker` is NULL).
#[no_mangle]
pub extern "C" fn sockeye_worker_index(worker: *mut sockeye_worker) -> usize {
    guard(|| {
        // SAFETY: `worker` is NULL or the pointer the running posted callback received, used
        // on its thread (documented contract).
        unsafe { opaque::as_mut(worker) }.map_or(0, |w| w.ctx.worker())
    })
}

/// The server the worker belongs to (the pointer `sockeye_server_new` gave; not a new
/// reference). NULL if `worker` is NULL.
#[no_mangle]
pub extern "C" fn sockeye_worker_server(worker: *mut sockeye_worker) -> *mut sockeye_server {
    guard(|| {
        // SAFETY: `worker` is NULL or the pointer the running posted callback received, used
        // on its thread (documented contract).
        unsafe { opaque::as_mut(worker) }.map_or(std::ptr::null_mut(), |w| w.server)
    })
}

/// Sends a message to the connection `conn_id`, as `sockeye_conn_send` would (opcode, UTF-8
/// check, copy, corking). A connection of this worker is queued at once: `SENT`,
/// `BACKPRESSURE`, `DROPPED`, or `CLOSED` when the id names no open connection here. One of
/// another worker is handed to that worker (as `sockeye_server_send` does) and the answer is
/// `SOCKEYE_SEND_FORWARDED` (or `CLOSED` when the id names no worker). `SOCKEYE_SEND_ERROR`
/// for a NULL `worker`, NULL `data` with `len` > 0, an unknown opcode, or text that is not
/// UTF-8.
#[no_mangle]
pub extern "C" fn sockeye_worker_send(
    worker: *mut sockeye_worker,
    conn_id: u64,
    opcode: sockeye_opcode,
    data: *const u8,
    len: usize,
) -> sockeye_send_status {
    guard(|| {
        // SAFETY: `worker` is NULL or the pointer the running posted callback received, used
        // on its thread (documented contract).
        let Some(w) = (unsafe { opaque::as_mut(worker) }) else {
            return SOCKEYE_SEND_ERROR;
        };
        // SAFETY: `data` holds `len` readable bytes (documented contract).
        let Some(payload) = (unsafe { bytes(data, len) }) else {
            return SOCKEYE_SEND_ERROR;
        };
        match message(opcode, payload) {
            Ok(m) => w.ctx.send(ConnId::from_u64(conn_id), m).into(),
            Err(_) => SOCKEYE_SEND_ERROR,
        }
    })
}
