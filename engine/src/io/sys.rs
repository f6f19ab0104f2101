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

/// Whether this kernel offers kTLS: asks for the "tls" upper-layer protocol on a fresh,
/// unconnected TCP socket. Without the module the kernel answers ENOENT; with it, ENOTCONN
/// (the ULP attaches only to a connected socket) or success. Sockeye does not use kTLS (rustls
/// encrypts in the worker); the answer is logged when a TLS server is built.
pub(crate) fn ktls_probe() -> Result<(), std::io::Error> {
    // SAFETY: plain socket creation; the result is checked and closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let name = b"tls";
    // SAFETY: passes a pointer to 3 readable bytes and their length; the kernel only reads.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_ULP,
            name.as_ptr().cast(),
            name.len() as libc::socklen_t,
        )
    };
    let err = std::io::Error::last_os_error();
    // SAFETY: `fd` is ours and closed once.
    unsafe { libc::close(fd) };
    match (r, err.raw_os_error()) {
        (0, _) | (_, Some(libc::ENOTCONN)) => Ok(()),
        _ => Err(err),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_ktls_probe_answers_without_panicking() {
        // Either answer is fine; this kernel's is printed for the README's claim.
        eprintln!("kTLS probe: {:?}", super::ktls_probe());
    }
}
