//! Pushing from outside the workers: a thread of the application (a market-data feed, a job
//! queue, a timer) sends to connections through a [`ServerHandle`], the one part of the server
//! that is `Send + Clone` and callable from any thread.
//!
//! ```sh
//! cargo run --example push -- --addr 127.0.0.1:9001 --interval-ms 1000
//! websocat ws://127.0.0.1:9001/        # prints "tick 1", "tick 2", ... once a second
//! ```
//!
//! Every connection is a subscriber: `on_open` adds its [`ConnId`] to a set shared with the
//! ticker thread, `on_close` removes it. The ticker sends `tick N` to each id with
//! [`ServerHandle::send_text`], which copies the message into the command channel of the worker
//! that holds the connection and wakes it; the worker sends it in its next loop turn. An id
//! whose connection closed meanwhile is skipped by the worker, so the ticker needs no lock
//! around the send itself. The ticker stops when the server shuts down.
//!
//! One copy per connection is fine for a few thousand subscribers. For more, post one value
//! per worker (`ServerHandle::post_all`) and let each worker's `on_post` send it to the
//! connections it holds, as `examples/rooms.rs` does, or publish to a topic the connections
//! subscribed to (`ServerHandle::publish`: the engine's pub/sub builds the frame once per
//! worker).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sockeye::{CloseCode, Conn, ConnId, Handler, Message, Server, ServerHandle};

type Subscribers = Arc<Mutex<HashSet<ConnId>>>;

/// One per worker, all sharing the subscriber set.
struct Feed {
    subscribers: Subscribers,
}

impl Handler for Feed {
    type Data = ();

    fn on_open(&mut self, conn: &mut Conn<'_, ()>) {
        self.subscribers.lock().unwrap_or_else(|e| e.into_inner()).insert(conn.id());
    }

    fn on_message(&mut self, _conn: &mut Conn<'_, ()>, _msg: Message<'_>) {}

    fn on_close(&mut self, conn: &mut Conn<'_, ()>, _code: CloseCode, _reason: &str) {
        self.subscribers.lock().unwrap_or_else(|e| e.into_inner()).remove(&conn.id());
    }
}

/// The thread outside the workers: every `interval`, `tick N` to every subscriber.
fn ticker(handle: ServerHandle, subscribers: Subscribers, interval: Duration) {
    let mut n = 0u64;
    while !handle.is_shutting_down() {
        std::thread::sleep(interval);
        n += 1;
        let text = format!("tick {n}");
        // Copy the ids out: the lock is not held while sending (a send never blocks, but
        // workers' on_open/on_close wait for this lock).
        let ids: Vec<ConnId> =
            subscribers.lock().unwrap_or_else(|e| e.into_inner()).iter().copied().collect();
        for id in ids {
            // False only when the worker is gone (the server stopped).
            if !handle.send_text(id, &text) {
                return;
            }
        }
    }
}

fn main() -> Result<(), sockeye::Error> {
    let mut addr = "127.0.0.1:9001".to_string();
    let mut interval = Duration::from_secs(1);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match (a.as_str(), args.next()) {
            ("--addr", Some(v)) => addr = v,
            ("--interval-ms", Some(v)) => {
                interval = Duration::from_millis(v.parse().unwrap_or(1000).max(1))
            }
            _ => {
                eprintln!("usage: push [--addr HOST:PORT] [--interval-ms MS]");
                std::process::exit(2);
            }
        }
    }
    let subscribers = Subscribers::default();
    let subs = Arc::clone(&subscribers);
    let server = Server::builder()
        .listen(addr.as_str())
        .handler(move || Feed { subscribers: Arc::clone(&subs) })
        .build()?;
    // The handle exists before `run` (which takes the server and blocks): hand it out first.
    let handle = server.handle();
    let feed = std::thread::spawn(move || ticker(handle, subscribers, interval));
    println!("listening on ws://{}/", server.local_addr());
    let result = server.run();
    let _ = feed.join();
    result
}
