//! Out of file descriptors: with RLIMIT_NOFILE lowered so that `accept` fails with EMFILE and
//! more clients waiting than fds, the workers must back off (no busy loop on a listener that
//! stays readable), and serve again once fds are free.
//!
//! Its own test binary: it lowers the limit for the whole process.

mod common;

use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};

use common::{assert_echo, backend_name, open_fds, start_echo, CpuProbe};
use socket2::{Domain, Socket, Type};

fn nofile() -> libc::rlimit {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one rlimit through a valid pointer to a local.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    assert_eq!(rc, 0, "getrlimit: {}", std::io::Error::last_os_error());
    lim
}

fn set_nofile(lim: libc::rlimit) {
    // SAFETY: setrlimit reads one rlimit through a valid pointer to a local.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    assert_eq!(rc, 0, "setrlimit: {}", std::io::Error::last_os_error());
}

/// Puts the original limit back, even if the test fails.
struct Restore(libc::rlimit);

impl Drop for Restore {
    fn drop(&mut self) {
        set_nofile(self.0);
    }
}

/// The lowest limit that leaves exactly `n` free descriptor numbers under it (a new fd takes
/// the lowest free number; open ones above the limit stay usable).
fn limit_with_room(n: usize) -> i32 {
    let fds = open_fds();
    let (mut limit, mut free) = (0i32, 0usize);
    while free < n {
        if fds.binary_search(&limit).is_err() {
            free += 1;
        }
        limit += 1;
    }
    limit
}

#[test]
fn emfile_backs_off_without_spinning_and_recovers() {
    const CLIENTS: usize = 40;
    const ROOM: usize = 4;

    // How many fds a running server needs for itself (listeners, polls, wakers, rings).
    let before = open_fds().len();
    let probe = start_echo(|b| b);
    assert_echo(probe.addr);
    probe.wait_idle(Duration::from_secs(5));
    let own = open_fds().len() - before;
    drop(probe);

    // Client sockets are made before the limit drops: this process is the client too.
    let clients: Vec<Socket> = (0..CLIENTS)
        .map(|_| Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket"))
        .collect();
    // The limit is lowered before the server starts: io_uring reads RLIMIT_NOFILE when an
    // accept is prepared, so a multishot accept armed earlier would keep the old limit.
    // Room: the server's own fds, the two stat files of the CPU probe, and ROOM connections.
    let limit = limit_with_room(own + 2 + ROOM);
    let original = nofile();
    let _restore = Restore(original);
    set_nofile(libc::rlimit { rlim_cur: limit as libc::rlim_t, rlim_max: original.rlim_max });

    let srv = start_echo(|b| b);
    let addr: SocketAddr = srv.addr;
    assert!(
        common::wait_until(Duration::from_secs(5), || common::worker_threads() == 2),
        "[{}] workers did not start",
        backend_name()
    );
    let mut cpu = CpuProbe::workers();
    assert_eq!(cpu.threads(), 2, "[{}] sockeye worker threads", backend_name());

    for c in &clients {
        c.connect(&addr.into()).expect("connect (the backlog takes it)");
    }
    // Let the workers accept what they can and run into EMFILE.
    thread::sleep(Duration::from_millis(300));
    let held = srv.connections();
    eprintln!("[{}] server needs {own} fds of its own; holds {held} connections", backend_name());
    assert!(
        held <= ROOM,
        "[{}] server holds {held} connections with room for {ROOM} fds",
        backend_name()
    );
    assert!(held < CLIENTS, "[{}] EMFILE never happened ({held} accepted)", backend_name());

    let cpu0 = cpu.total();
    let t0 = Instant::now();
    thread::sleep(Duration::from_secs(2));
    let used = cpu.total().saturating_sub(cpu0);
    let over = t0.elapsed();
    eprintln!("[{}] workers used {used:?} over {over:?} at EMFILE", backend_name());
    assert!(
        used < Duration::from_millis(500),
        "[{}] workers used {used:?} in {over:?}: busy loop on EMFILE?",
        backend_name()
    );

    // Free this process's client fds; the server must accept again (the limit stays low).
    drop(clients);
    let t1 = Instant::now();
    assert_echo(addr);
    let took = t1.elapsed();
    assert!(took < Duration::from_secs(3), "[{}] served again only after {took:?}", backend_name());
    srv.wait_idle(Duration::from_secs(5));
}
