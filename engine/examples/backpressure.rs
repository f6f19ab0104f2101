//! A producer that never outruns its reader: it streams chunks to a connection while the
//! socket takes them, stops when a send reports [`SendStatus::Backpressure`], and goes on in
//! `on_drain`, which the engine calls once that connection's queue is empty again. However
//! slow the reader, the server holds at most about one chunk for it.
//!
//! ```sh
//! cargo run --release --example backpressure -- --addr 127.0.0.1:9001
//! websocat -b 'ws://127.0.0.1:9001/stream?count=1000&size=65536' | pv > /dev/null
//! ```
//!
//! `GET /stream?count=N&size=BYTES` (defaults 1000 and 64 KiB) sends N binary messages of
//! BYTES bytes, each starting with its sequence number (8 bytes, big-endian), then the text
//! `done N paused P` (P: how many times the producer had to wait for `on_drain`) and a close
//! 1000. Compare with a producer that ignores the status: its queue grows until
//! `max_backpressure`, after which sends come back [`SendStatus::Dropped`] and data is lost.
//!
//! Sends are corked: everything sent in one callback leaves in one write, and the status says
//! whether the socket refused bytes. `Sent` means queued behind nothing refused; `Backpressure`
//! means queued, behind bytes the socket refused (stop now: `on_drain` follows); `Dropped`
//! means not queued at all, because it would take the queue past `max_backpressure` (stop, and
//! send that chunk again in `on_drain`).

use sockeye::{Conn, Handler, Message, Request, SendStatus, Server, Upgrade};

/// A connection's stream: where it is, and how often it had to wait.
#[derive(Debug, Default)]
struct Stream {
    next: u64,
    count: u64,
    size: usize,
    paused: u64,
    done: bool,
}

/// One per worker; `chunk` is scratch space reused for every send of this worker.
struct Producer {
    chunk: Vec<u8>,
}

impl Producer {
    /// Sends chunks until the socket pushes back or the stream is done.
    fn pump(&mut self, conn: &mut Conn<'_, Stream>) {
        loop {
            let s = conn.data();
            if s.done {
                return;
            }
            if s.next == s.count {
                let summary = format!("done {} paused {}", s.count, s.paused);
                conn.data_mut().done = true;
                conn.send_text(&summary);
                let _ = conn.close(sockeye::CloseCode::NORMAL, "done");
                return;
            }
            self.chunk.clear();
            self.chunk.extend_from_slice(&s.next.to_be_bytes());
            self.chunk.resize(s.size.max(8), 0xab);
            match conn.send_binary(&self.chunk) {
                SendStatus::Sent => conn.data_mut().next += 1,
                SendStatus::Backpressure => {
                    // Queued, but the socket is full: wait for on_drain.
                    let s = conn.data_mut();
                    s.next += 1;
                    s.paused += 1;
                    return;
                }
                SendStatus::Dropped => {
                    // Not queued: the same chunk again in on_drain.
                    conn.data_mut().paused += 1;
                    return;
                }
                // Closing or closed (the peer left): nothing more to do. (`Forwarded` is for
                // sends through a `Ctx` to another worker's connection, never for `Conn`.)
                SendStatus::Closed | SendStatus::Forwarded => return,
            }
        }
    }
}

/// `count` and `size` from the query, within sane bounds.
fn stream_of(req: &Request<'_>) -> Stream {
    let param = |key: &str, default: u64| {
        req.query()
            .into_iter()
            .flat_map(|q| q.split('&'))
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
            .unwrap_or(default)
    };
    Stream {
        count: param("count", 1000).min(1 << 20),
        size: param("size", 64 << 10).clamp(8, 512 << 10) as usize,
        ..Stream::default()
    }
}

impl Handler for Producer {
    type Data = Stream;

    fn on_upgrade(&mut self, req: &Request<'_>, _peer: std::net::SocketAddr) -> Upgrade<Stream> {
        if req.path() == "/stream" {
            Upgrade::accept(stream_of(req))
        } else {
            Upgrade::reject(404)
        }
    }

    fn on_open(&mut self, conn: &mut Conn<'_, Stream>) {
        self.pump(conn);
    }

    fn on_drain(&mut self, conn: &mut Conn<'_, Stream>) {
        self.pump(conn);
    }

    fn on_message(&mut self, _conn: &mut Conn<'_, Stream>, _msg: Message<'_>) {}
}

fn main() -> Result<(), sockeye::Error> {
    let mut addr = "127.0.0.1:9001".to_string();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match (a.as_str(), args.next()) {
            ("--addr", Some(v)) => addr = v,
            _ => {
                eprintln!("usage: backpressure [--addr HOST:PORT]");
                std::process::exit(2);
            }
        }
    }
    let server = Server::builder()
        .listen(addr.as_str())
        // A producer that waits for on_drain holds about one chunk per connection; 1 MiB
        // (instead of the default 16) is room for the largest chunk a client may ask for.
        .max_backpressure(1 << 20)
        .handler(|| Producer { chunk: Vec::new() })
        .build()?;
    println!("listening on ws://{}/stream", server.local_addr());
    server.run()
}
