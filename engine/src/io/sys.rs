//! The two socket calls the backends make on behalf of the worker core, by descriptor: the
//! direct write of a large send (the core asks through its `WriteNow` hook, which both
//! backends set to [`write_now`]) and the reset of a connection closed by force.
//!
//! `unsafe` is allowed here because both are raw `libc` calls on a descriptor the backend owns;
//! each block says why its arguments are valid.
#![allow(unsafe_code)]

use std::io::IoSlice;
use std::os::fd::RawFd;

/// One non-blocking `sendmsg` of `parts`, in order, on `fd`; the bytes taken, 0 on any error.
pub(crate) fn write_now(fd: RawFd, parts: &[IoSlice<'_>]) -> usize {
    if parts.is_empty() || fd < 0 {
        return 0;
    }
    // SAFETY: a zeroed msghdr is valid (no name, no control data).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    // `IoSlice` is guaranteed ABI-compatible with `iovec` on Unix; the kernel only reads
    // through the pointer (the cast to *mut is what the C struct's field type asks for).
    msg.msg_iov = parts.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = parts.len();
    // SAFETY: every iovec points into a slice borrowed for this call, which the kernel only
    // reads; `msg` and `parts` outlive the call. MSG_DONTWAIT: never block, whatever mode the
    // socket is in; MSG_NOSIGNAL: a closed peer is an error here, not SIGPIPE.
    let r = unsafe { libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
    if r < 0 {
        0
    } else {
        r as usize
    }
}

/// Makes the socket's close a reset (SO_LINGER on, 0 s): nothing unsent is kept in the kernel.
/// Called on a descriptor the caller still owns, just before it closes it.
pub(crate) fn reset_on_close(fd: RawFd) {
    if fd < 0 {
        return;
    }
    let l = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: passes a pointer to a valid `linger` and its size; the kernel only reads it.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
}
