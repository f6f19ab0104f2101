//! The two socket calls the backends make on behalf of the worker core, by descriptor: the
//! direct write of a large send (the core asks through its `WriteNow` hook, which both
//! backends set to [`write_now`]) and the reset of a connection closed by force.
//!
//! `unsafe` is allowed here because both are raw `libc` calls on a descriptor the backend owns;
//! each block says why its arguments are valid.
#![allow(unsafe_code)]

use std::os::fd::RawFd;

/// One non-blocking `sendmsg` of `parts` on `fd`; the bytes taken, 0 on any error.
pub(crate) fn write_now(fd: RawFd, parts: &[&[u8]; 3]) -> usize {
    let mut iov = [libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; 3];
    let mut cnt = 0;
    for p in parts.iter().filter(|p| !p.is_empty()) {
        iov[cnt] = libc::iovec { iov_base: p.as_ptr() as *mut libc::c_void, iov_len: p.len() };
        cnt += 1;
    }
    if cnt == 0 || fd < 0 {
        return 0;
    }
    // SAFETY: a zeroed msghdr is valid (no name, no control data).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_mut_ptr();
    msg.msg_iovlen = cnt;
    // SAFETY: every iovec points into a slice borrowed for this call, which the kernel only
    // reads; `msg` and `iov` outlive the call. MSG_DONTWAIT: never block, whatever mode the
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
