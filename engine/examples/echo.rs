//! The smallest Sockeye server: every message comes back to its sender, text as text, binary
//! as binary, on any path.
//!
//! ```sh
//! cargo run --example echo -- --addr 127.0.0.1:9001
//! ```
//!
//! Then, from another terminal, any WebSocket client: `websocat ws://127.0.0.1:9001/`, or a
//! browser console's `new WebSocket("ws://127.0.0.1:9001/")`. Ctrl-C ends it at once (see
//! `examples/shutdown.rs` for a graceful stop).

use sockeye::{Conn, Handler, Message, Server};

/// One per worker thread (the factory given to `handler` makes it there). No per-connection
/// data: `type Data = ()`.
struct Echo;

impl Handler for Echo {
    type Data = ();

    // The only callback without a default: a whole message arrived. `msg` borrows the
    // worker's read buffer (no copy was made); `send` copies it into the connection's send
    // queue, and everything sent during this loop turn leaves in one write.
    fn on_message(&mut self, conn: &mut Conn<'_, ()>, msg: Message<'_>) {
        conn.send(msg);
    }
}

fn main() -> Result<(), sockeye::Error> {
    let addr = addr_arg("127.0.0.1:9001");
    let server = Server::builder()
        .listen(addr.as_str()) // port 0 picks a free port; local_addr() says which
        .handler(|| Echo)
        .build()?;
    println!("listening on ws://{}/", server.local_addr());
    server.run() // blocks until a shutdown (none here: Ctrl-C kills the process)
}

/// `--addr ADDR` from the command line, or `default`.
fn addr_arg(default: &str) -> String {
    let mut args = std::env::args().skip(1);
    let mut addr = default.to_string();
    while let Some(a) = args.next() {
        match (a.as_str(), args.next()) {
            ("--addr", Some(v)) => addr = v,
            _ => {
                eprintln!("usage: echo [--addr HOST:PORT]   (default {default})");
                std::process::exit(2);
            }
        }
    }
    addr
}
