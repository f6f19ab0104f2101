//! Pub/sub in the C ABI: a connection subscribes to topics (`sockeye_conn_subscribe`) and a
//! message published to a topic reaches every subscriber on every worker
//! (`sockeye_conn_publish`, `sockeye_conn_publish_including_self`, `sockeye_server_publish`).
//! Topic names are byte strings of a given length (not NUL-terminated), copied by the engine
//! when it keeps them; nothing here keeps a pointer past the call.
//!
//! What this module must never do: hold a topic or payload pointer after returning, or turn a
//! length that cannot be a slice into a slice.

use std::ffi::c_char;

use sockeye::{Message, TopicError};

use crate::conn::sockeye_conn;
use crate::opaque;
use crate::server::sockeye_server;
use crate::types::{message, sockeye_opcode};
use crate::{
    guard, sockeye_result, SOCKEYE_ERR_CLOSED, SOCKEYE_ERR_INVALID_ARGUMENT,
    SOCKEYE_ERR_MESSAGE_TOO_LARGE, SOCKEYE_ERR_NULL, SOCKEYE_ERR_STOPPED,
    SOCKEYE_ERR_TOPIC_TOO_LONG, SOCKEYE_OK,
};

/// The one mapping from the engine's topic errors to result codes.
fn topic_error(e: TopicError) -> sockeye_result {
    match e {
        TopicError::TooLong { .. } => SOCKEYE_ERR_TOPIC_TOO_LONG,
        TopicError::Closed => SOCKEYE_ERR_CLOSED,
        TopicError::TooLarge => SOCKEYE_ERR_MESSAGE_TOO_LARGE,
        // `TopicError` is non-exhaustive: a kind added later is an invalid argument until
        // mapped here.
        _ => SOCKEYE_ERR_INVALID_ARGUMENT,
    }
}

/// Borrows `len` bytes at `p` for one call, for a topic (`too_long` =
/// `SOCKEYE_ERR_TOPIC_TOO_LONG`) or a payload (`SOCKEYE_ERR_MESSAGE_TOO_LARGE`). `len == 0`
/// allows NULL; otherwise NULL is `SOCKEYE_ERR_NULL`, and a length no object can have (over
/// `isize::MAX`, far over any limit) is `too_long`, refused before `p` is read.
///
/// # Safety
/// A non-NULL `p` must point to `len` readable bytes that stay unchanged while the returned
/// slice is used.
unsafe fn borrow<'a>(
    p: *const u8,
    len: usize,
    too_long: sockeye_result,
) -> Result<&'a [u8], sockeye_result> {
    if len == 0 {
        return Ok(&[]);
    }
    if p.is_null() {
        return Err(SOCKEYE_ERR_NULL);
    }
    if len > isize::MAX as usize {
        return Err(too_long);
    }
    // SAFETY: non-NULL, `len` fits a slice, and `len` readable bytes, as the caller promises.
    Ok(unsafe { std::slice::from_raw_parts(p, len) })
}

/// A topic name: `len` bytes at `topic` (see [`borrow`]).
///
/// # Safety
/// As for [`borrow`].
unsafe fn topic_name<'a>(topic: *const c_char, len: usize) -> Result<&'a [u8], sockeye_result> {
    // SAFETY: the caller's contract, passed on.
    unsafe { borrow(topic.cast(), len, SOCKEYE_ERR_TOPIC_TOO_LONG) }
}

/// A topic and a message of `opcode`, as the publish functions take them: NULL pointers, an
/// unknown opcode (`SOCKEYE_ERR_INVALID_ARGUMENT`) and text that is not UTF-8
/// (`SOCKEYE_ERR_UTF8`) are refused here; the topic's length is the engine's to check.
///
/// # Safety
/// As for [`borrow`], for both `topic` and `data`.
unsafe fn topic_and_message<'a>(
    topic: *const c_char,
    topic_len: usize,
    opcode: sockeye_opcode,
    data: *const u8,
    len: usize,
) -> Result<(&'a [u8], Message<'a>), sockeye_result> {
    // SAFETY: the caller's contract, passed on.
    let topic = unsafe { topic_name(topic, topic_len) }?;
    // SAFETY: the caller's contract, passed on.
    let payload = unsafe { borrow(data, len, SOCKEYE_ERR_MESSAGE_TOO_LARGE) }?;
    Ok((topic, message(opcode, payload)?))
}

/// Subscribes the connection to the topic named by the `topic_len` bytes at `topic` (any bytes,
/// not NUL-terminated; copied; `topic` may be NULL when `topic_len` is 0). Subscribing again
/// to a topic it already has is not an error (`sockeye_conn_is_subscribed` tells the two
/// apart). A subscription ends with `sockeye_conn_unsubscribe` or with the connection, right
/// after its `on_close`. Call it from a callback that received `conn`, typically `on_open`.
///
/// Returns `SOCKEYE_OK`; `SOCKEYE_ERR_NULL` if `conn` is NULL (or `topic` is, with
/// `topic_len` > 0); `SOCKEYE_ERR_TOPIC_TOO_LONG` if `topic_len` is over `max_topic_len`;
/// `SOCKEYE_ERR_CLOSED` if the connection is closing or closed (`on_close`, or after
/// `sockeye_conn_close`).
#[no_mangle]
pub extern "C" fn sockeye_conn_subscribe(
    conn: *mut sockeye_conn,
    topic: *const c_char,
    topic_len: usize,
) -> sockeye_result {
    guard(|| {
        // SAFETY: `conn` is NULL or the pointer the running callback received, used on its
        // thread (documented contract); the callback's frame leaves the shim alone meanwhile.
        let Some(c) = (unsafe { opaque::as_mut(conn) }) else {
            return SOCKEYE_ERR_NULL;
        };
        // SAFETY: `topic` holds `topic_len` readable bytes (documented contract).
        let topic = match unsafe { topic_name(topic, topic_len) } {
            Ok(t) => t,
            Err(e) => return e,
        };
        match c.conn.subscribe(topic) {
            Ok(_) => SOCKEYE_OK,
            Err(e) => topic_error(e),
        }
    })
}

/// What the read-only topic queries share: `f` on the connection and the topic name, or
/// `none` if `conn` is NULL or the name is unreadable (NULL with `topic_len` > 0).
fn with_conn_topic<R>(
    conn: *mut sockeye_conn,
    topic: *const c_char,
    topic_len: usize,
    none: R,
    f: impl FnOnce(&mut crate::conn::ConnShim<'_, '_>, &[u8]) -> R,
) -> R {
    // SAFETY: `conn` is NULL or the pointer the running callback received, used on its
    // thread (documented contract); the callback's frame leaves the shim alone meanwhile.
    let Some(c) = (unsafe { opaque::as_mut(conn) }) else {
        return none;
    };
    // SAFETY: `topic` holds `topic_len` readable bytes (documented contract).
    match unsafe { topic_name(topic, topic_len) } {
        Ok(t) => f(c, t),
        Err(_) => none,
    }
}

/// Unsubscribes the connection from the topic named by the `topic_len` bytes at `topic`
/// (read during the call only). Returns true if it was subscribed; false if it was not, or if
/// `conn` is NULL (or `topic` is, with `topic_len` > 0).
#[no_mangle]
pub extern "C" fn sockeye_conn_unsubscribe(
    conn: *mut sockeye_conn,
    topic: *const c_char,
    topic_len: usize,
) -> bool {
    guard(|| with_conn_topic(conn, topic, topic_len, false, |c, t| c.conn.unsubscribe(t)))
}

/// Whether the connection is subscribed to the topic named by the `topic_len` bytes at
/// `topic` (read during the call only). False if `conn` is NULL (or `topic` is, with
/// `topic_len` > 0).
#[no_mangle]
pub extern "C" fn sockeye_conn_is_subscribed(
    conn: *mut sockeye_conn,
    topic: *const c_char,
    topic_len: usize,
) -> bool {
    guard(|| with_conn_topic(conn, topic, topic_len, false, |c, t| c.conn.is_subscribed(t)))
}

/// Subscribers of the topic named by the `topic_len` bytes at `topic` on the worker that
/// holds `conn` (exact: this worker's own count, as of now); `sockeye_server_subscriber_count`
/// sums every worker. 0 if `conn` is NULL (or `topic` is, with `topic_len` > 0).
#[no_mangle]
pub extern "C" fn sockeye_conn_subscriber_count(
    conn: *mut sockeye_conn,
    topic: *const c_char,
    topic_len: usize,
) -> usize {
    guard(|| with_conn_topic(conn, topic, topic_len, 0, |c, t| c.conn.subscriber_count(t)))
}

/// What the two `sockeye_conn_publish*` functions share; `including_self` picks the engine call.
fn conn_publish(
    conn: *mut sockeye_conn,
    topic: *const c_char,
    topic_len: usize,
    opcode: sockeye_opcode,
    data: *const u8,
    len: usize,
    including_self: bool,
) -> sockeye_result {
    guard(|| {
        // SAFETY: `conn` is NULL or the pointer the running callback received, used on its
        // thread (documented contract); the callback's frame leaves the shim alone meanwhile.
        let Some(c) = (unsafe { opaque::as_mut(conn) }) else {
            return SOCKEYE_ERR_NULL;
        };
        // SAFETY: `topic` and `data` hold `topic_len` and `len` readable bytes (documented
        // contract).
        let (topic, msg) = match unsafe { topic_and_message(topic, topic_len, opcode, data, len) } {
            Ok(v) => v,
            Err(e) => return e,
        };
        let published = if including_self {
            c.conn.publish_including_self(topic, msg)
        } else {
            c.conn.publish(topic, msg)
        };
        match published {
            Ok(()) => SOCKEYE_OK,
            Err(e) => topic_error(e),
        }
    })
}

/// Publishes a message to every subscriber of a topic, on every worker, except `conn` itself
/// (as `ws.publish` in uWebSockets and Bun; `sockeye_conn_publish_including_self` includes
/// it). The topic is the `topic_len` bytes at `topic`; the message is `opcode`
/// (`SOCKEYE_OPCODE_TEXT`, UTF-8 checked, or `SOCKEYE_OPCODE_BINARY`) with the `len` bytes at
/// `data`. Both are copied before the call returns (either pointer may be NULL when its length
/// is 0). The frame is built once per worker and shared by its subscribers; a subscriber whose
/// queue is over `max_backpressure` loses the message (counted in `publish_drops`), or is
/// closed with 1008 when `close_on_backpressure_limit` is set, and never slows the others.
/// Messages one connection publishes to one topic reach every subscriber in order. A topic
/// nobody subscribes to is not an error: the message goes nowhere.
///
/// Returns `SOCKEYE_OK`; `SOCKEYE_ERR_NULL` for a NULL `conn` (or a NULL `topic` or `data`
/// with a length > 0); `SOCKEYE_ERR_INVALID_ARGUMENT` for an unknown opcode;
/// `SOCKEYE_ERR_UTF8` for text that is not UTF-8; `SOCKEYE_ERR_TOPIC_TOO_LONG` for a topic
/// over `max_topic_len`; `SOCKEYE_ERR_MESSAGE_TOO_LARGE` for a message over 2 GiB.
#[no_mangle]
pub extern "C" fn sockeye_conn_publish(
    conn: *mut sockeye_conn,
    topic: *const c_char,
    topic_len: usize,
    opcode: sockeye_opcode,
    data: *const u8,
    len: usize,
) -> sockeye_result {
    conn_publish(conn, topic, topic_len, opcode, data, len, false)
}

/// Same as `sockeye_conn_publish`, but `conn` gets the message too if it is a subscriber of
/// the topic (a chat room that echoes every line to everyone, the sender included).
#[no_mangle]
pub extern "C" fn sockeye_conn_publish_including_self(
    conn: *mut sockeye_conn,
    topic: *const c_char,
    topic_len: usize,
    opcode: sockeye_opcode,
    data: *const u8,
    len: usize,
) -> sockeye_result {
    conn_publish(conn, topic, topic_len, opcode, data, len, true)
}

/// Publishes a message to every subscriber of a topic, on every worker. Thread-safe: callable
/// from any thread, callbacks included, while the server lives (a thread of your own that
/// publishes must be done before `sockeye_server_free`). Topic and message are as for
/// `sockeye_conn_publish` and copied before the call returns (once, whatever the number of
/// workers and subscribers); each worker that holds a subscriber sends the message on its next
/// loop turn. Messages published from one thread to one topic reach each subscriber in the
/// order they were published.
///
/// Returns `SOCKEYE_OK` (also when nobody subscribes: the message goes nowhere);
/// `SOCKEYE_ERR_NULL` for a NULL `server` (or a NULL `topic` or `data` with a length > 0);
/// `SOCKEYE_ERR_INVALID_ARGUMENT` for an unknown opcode; `SOCKEYE_ERR_UTF8` for text that is
/// not UTF-8; `SOCKEYE_ERR_MESSAGE_TOO_LARGE` for a length no buffer can have;
/// `SOCKEYE_ERR_STOPPED` once a shutdown has begun (`sockeye_server_stop`; nothing is
/// published); else `SOCKEYE_ERR_TOPIC_TOO_LONG` for a topic over `max_topic_len`.
#[no_mangle]
pub extern "C" fn sockeye_server_publish(
    server: *mut sockeye_server,
    topic: *const c_char,
    topic_len: usize,
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
        // SAFETY: `topic` and `data` hold `topic_len` and `len` readable bytes (documented
        // contract).
        let (topic, msg) = match unsafe { topic_and_message(topic, topic_len, opcode, data, len) } {
            Ok(v) => v,
            Err(e) => return e,
        };
        if obj.handle.is_shutting_down() {
            return SOCKEYE_ERR_STOPPED;
        }
        match obj.handle.publish(topic, msg) {
            Ok(()) => SOCKEYE_OK,
            Err(e) => topic_error(e),
        }
    })
}

/// Subscribers of the topic named by the `topic_len` bytes at `topic` (read during the call
/// only) over all workers. Thread-safe. Each worker's part is exact as of its last subscribe
/// or unsubscribe; the sum is read without stopping the workers. 0 if `server` is NULL (or
/// `topic` is, with `topic_len` > 0).
#[no_mangle]
pub extern "C" fn sockeye_server_subscriber_count(
    server: *const sockeye_server,
    topic: *const c_char,
    topic_len: usize,
) -> usize {
    guard(|| {
        // SAFETY: `server` is NULL or from `sockeye_server_new` and not yet freed (documented
        // contract); its `Arc` keeps the object alive and nothing changes it but through locks.
        let Some(obj) = (unsafe { opaque::as_ref(server) }) else {
            return 0;
        };
        // SAFETY: `topic` holds `topic_len` readable bytes (documented contract).
        unsafe { topic_name(topic, topic_len) }.map_or(0, |t| obj.handle.subscriber_count(t))
    })
}
