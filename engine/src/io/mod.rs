//! I/O backends: they move bytes between sockets and the worker core, nothing else.
//!
//! The boundary is socket events — a connection arrived, bytes arrived, the peer hung up, bytes
//! were taken — not fd readiness, so a completion-based backend fits it as well as a
//! readiness-based one. The loop turn itself (commands, timers, the stop and its deadline,
//! accept backoff, the next wake-up, stats, when to exit) is not a backend's: it is held once
//! in `server::worker`, which drives a backend through its `Driver` impl.
//!
//! Every backend provides:
//! - a `Prep` made on the building thread from the worker's listener and command receiver
//!   (`Prep::new`), with a waker other threads use (`Prep::waker`, a `Wake`);
//! - `Prep::run(core, cfg, stats)` on the worker thread: it builds its loop around a
//!   `server::worker::Worker` and hands it to `server::worker::run`;
//! - the `Driver` methods: `wait` (block for events until a timeout, set the core's clock with
//!   `Core::set_now`, feed every event to the core: `accept`, `on_data`, `on_hangup`,
//!   `on_written` or `take_out`/`on_send_done`), `settle` (write what `take_dirty` names, shut
//!   what `take_shut` names, drop what `take_dead` names, resetting those `must_reset` names,
//!   then `Core::remove`), `resume_accepting`, `stop_accepting`, `publish_stats` (its own figures, into
//!   `Worker::stats`);
//! - the core's `WriteNow` hook (`sys::write_now`) for the direct write of large sends;
//! - a probe saying whether this kernel can run it (`resolve` asks it).
//!
//! Backends import the worker layer (`server::{api, config, core, handle, worker}`), never
//! `server/mod.rs`, which builds the workers through this module and spawns them.

pub(crate) mod epoll;
pub(crate) mod sys;
#[allow(unsafe_code)] // memory lent to the kernel: see the module's docs
pub(crate) mod uring;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::Receiver;
use socket2::{Domain, Protocol, Socket, Type};

use crate::error::Error;

/// A turn that delivered published messages to this many subscribers first takes what other
/// sockets received meanwhile (`gather` in each backend), so that those messages join the
/// turn's writes: one system call, against at least this many writes it can fill further.
/// An echo or a small room never pays it.
pub(crate) const GATHER_MIN_DELIVERIES: usize = 64;
use crate::server::api::Handler;
use crate::server::config::{Backend, Config};
use crate::server::core::Core;
use crate::server::handle::{Command, ServerHandle, Wake, WorkerStats};

/// Applies `SOCKEYE_BACKEND` and resolves `Auto` to a backend this kernel supports.
pub(crate) fn resolve(asked: Backend) -> Result<Backend, Error> {
    let asked = match std::env::var("SOCKEYE_BACKEND") {
        Ok(v) if !v.is_empty() => {
            v.parse().map_err(|e: String| Error::Backend(format!("SOCKEYE_BACKEND: {e}")))?
        }
        _ => asked,
    };
    match asked {
        Backend::Epoll => Ok(Backend::Epoll),
        Backend::Auto => match uring::probe() {
            Ok(()) => Ok(Backend::IoUring),
            Err(why) => {
                log::info!("io_uring unavailable ({why}); using epoll");
                Ok(Backend::Epoll)
            }
        },
        Backend::IoUring => uring::probe()
            .map(|()| Backend::IoUring)
            .map_err(|why| Error::Backend(format!("io_uring backend unavailable: {why}"))),
    }
}

/// Says which address a bind failed on; "in use" is its own error.
fn bind_error(addr: SocketAddr, e: io::Error) -> Error {
    if e.kind() == io::ErrorKind::AddrInUse {
        Error::AddrInUse(addr)
    } else {
        Error::Io(io::Error::new(e.kind(), format!("binding {addr}: {e}")))
    }
}

/// Checks that nothing listens on `addr` by binding a socket of our own there without
/// SO_REUSEPORT (Linux lets no such socket bind where any socket listens, SO_REUSEADDR or
/// not), and returns the address with port 0 resolved to a port no socket uses. The probe is
/// closed on return; the workers' SO_REUSEPORT group then binds the address. What binds it in
/// between wins the race; the probe is a check, not a lock.
pub(crate) fn claim_port(addr: SocketAddr) -> Result<SocketAddr, Error> {
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // A given port may hold TIME_WAIT leftovers of an earlier server: they do not count. For
    // port 0, without it, the kernel picks a port nothing is bound to at all.
    sock.set_reuse_address(addr.port() != 0)?;
    if addr.is_ipv6() {
        sock.set_only_v6(false)?;
    }
    sock.bind(&addr.into()).map_err(|e| bind_error(addr, e))?;
    sock.local_addr()?.as_socket().ok_or_else(|| {
        Error::Io(io::Error::other(format!("{addr}: the probe socket has no IP address")))
    })
}

/// A non-blocking listener with SO_REUSEPORT, so every worker can bind the same address.
pub(crate) fn bind_listener(
    addr: SocketAddr,
    backlog: i32,
) -> Result<std::net::TcpListener, Error> {
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    sock.set_reuse_address(true)?;
    sock.set_reuse_port(true)?;
    if addr.is_ipv6() {
        sock.set_only_v6(false)?;
    }
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into()).map_err(|e| bind_error(addr, e))?;
    sock.listen(backlog).map_err(|e| bind_error(addr, e))?;
    Ok(sock.into())
}

/// Most listening sockets one worker has: plain and TLS.
pub(crate) const MAX_LISTENERS: usize = 2;

/// A worker made on the building thread, run on its own.
#[derive(Debug)]
pub(crate) enum WorkerPrep {
    Epoll(epoll::Prep),
    IoUring(uring::Prep),
}

impl WorkerPrep {
    /// `listeners`: the worker's listening sockets, each with whether it speaks TLS (at most
    /// [`MAX_LISTENERS`]).
    pub(crate) fn new(
        backend: Backend,
        listeners: Vec<(std::net::TcpListener, bool)>,
        rx: Receiver<Command>,
    ) -> io::Result<Self> {
        debug_assert!(listeners.len() <= MAX_LISTENERS);
        match backend {
            Backend::Epoll | Backend::Auto => {
                Ok(WorkerPrep::Epoll(epoll::Prep::new(listeners, rx)?))
            }
            Backend::IoUring => Ok(WorkerPrep::IoUring(uring::Prep::new(listeners, rx)?)),
        }
    }

    pub(crate) fn waker(&self) -> Arc<dyn Wake> {
        match self {
            WorkerPrep::Epoll(p) => p.waker(),
            WorkerPrep::IoUring(p) => p.waker(),
        }
    }

    pub(crate) fn run<H: Handler>(
        self,
        index: usize,
        cfg: Arc<Config>,
        handle: ServerHandle,
        handler: H,
        stats: Arc<WorkerStats>,
    ) -> io::Result<()> {
        let core =
            Core::new(Instant::now(), index, Arc::clone(&cfg), handle, handler, sys::write_now);
        match self {
            WorkerPrep::Epoll(p) => p.run(core, &cfg, stats),
            WorkerPrep::IoUring(p) => p.run(core, &cfg, stats),
        }
    }
}

/// What the backends' loop tests share: a handler that does nothing, and a worker core for it.
#[cfg(test)]
pub(crate) mod test_support {
    use std::sync::Arc;
    use std::time::Instant;

    use crate::server::api::Handler;
    use crate::server::config::Config;
    use crate::server::core::Core;

    pub(crate) struct Nop;
    impl Handler for Nop {
        type Data = ();
        fn on_message(&mut self, _: &mut crate::Conn<'_, ()>, _: crate::Message<'_>) {}
    }

    /// Worker 0's core of a one-worker server with the default configuration.
    pub(crate) fn core() -> (Core<Nop>, Arc<Config>) {
        let server = crate::Server::builder()
            .listen("127.0.0.1:0")
            .workers(1)
            .handler(|| Nop)
            .build()
            .expect("server");
        let cfg = Arc::new(Config::default());
        let core = Core::new(
            Instant::now(),
            0,
            Arc::clone(&cfg),
            server.handle(),
            Nop,
            super::sys::write_now,
        );
        (core, cfg)
    }
}
