//! A graceful stop on Ctrl-C, and a forced one on the second Ctrl-C.
//!
//! ```sh
//! cargo run --example shutdown -- --addr 127.0.0.1:9001 --shutdown-timeout 10
//! ```
//!
//! The first Ctrl-C (SIGINT) calls [`ServerHandle::shutdown`]: the workers stop accepting,
//! send close 1001 (going away) to every connection, and wait up to `shutdown_timeout` for
//! the peers to answer; then [`Server::run`] returns and the program prints `stopped` and
//! exits 0. A second Ctrl-C while it waits (a peer that never answers its close, an operator
//! who will not wait) exits at once with status 130, the shell's code for death by SIGINT;
//! the kernel closes the sockets.
//!
//! What is async-signal-safe, plainly: almost nothing. A signal handler may only call the few
//! functions POSIX lists as async-signal-safe (`write(2)` on a pipe, setting an atomic), and
//! none of Sockeye's: [`ServerHandle::shutdown`] sends on channels and writes to the workers'
//! wakers; it must never run inside a signal handler. Nor may `println!`, a lock, an
//! allocation, or `std::process::exit`. That is why this example uses the `ctrlc` crate: its
//! signal handler only writes to a pipe, and the closure given to `ctrlc::set_handler` runs
//! later on an ordinary thread that reads that pipe, where any code is fine. (The same shape
//! by hand: `signal-hook`'s iterator, a self-pipe, or blocking the signals and taking them on
//! a thread with `sigwait`, as `examples/c/echo.c` does.) The closure may run on any thread,
//! so it holds a clone of the handle, which is `Send`.
//!
//! `ctrlc` (without its `termination` feature) catches SIGINT only; SIGTERM keeps its
//! default, an immediate exit.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use sockeye::{Conn, Handler, Message, Server, ServerHandle};

struct Echo;

impl Handler for Echo {
    type Data = ();
    fn on_message(&mut self, conn: &mut Conn<'_, ()>, msg: Message<'_>) {
        conn.send(msg);
    }
}

/// Installs the Ctrl-C behaviour: the first asks `handle` for a graceful shutdown, the second
/// exits.
fn on_ctrl_c(handle: ServerHandle, grace: Duration) -> Result<(), ctrlc::Error> {
    let presses = AtomicUsize::new(0);
    // Runs on ctrlc's own thread, not in the signal handler: printing, the handle and exit
    // are fine here.
    ctrlc::set_handler(move || {
        if presses.fetch_add(1, Ordering::SeqCst) == 0 {
            eprintln!(
                "shutting down: close 1001 sent to everyone, waiting up to {grace:?} for \
                 answers (Ctrl-C again to exit now)"
            );
            handle.shutdown();
        } else {
            eprintln!("forced exit");
            std::process::exit(130);
        }
    })
}

fn main() -> Result<(), sockeye::Error> {
    let mut addr = "127.0.0.1:9001".to_string();
    let mut grace = Duration::from_secs(10);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match (a.as_str(), args.next()) {
            ("--addr", Some(v)) => addr = v,
            ("--shutdown-timeout", Some(v)) => {
                grace = Duration::from_secs(v.parse().unwrap_or(10));
            }
            _ => {
                eprintln!("usage: shutdown [--addr HOST:PORT] [--shutdown-timeout SECS]");
                std::process::exit(2);
            }
        }
    }
    let server =
        Server::builder().listen(addr.as_str()).shutdown_timeout(grace).handler(|| Echo).build()?;
    if let Err(e) = on_ctrl_c(server.handle(), grace) {
        eprintln!("cannot catch Ctrl-C ({e}): it will kill the process at once");
    }
    println!("listening on ws://{}/ (Ctrl-C: graceful stop; twice: exit now)", server.local_addr());
    server.run()?;
    println!("stopped");
    Ok(())
}
