//! Pub/sub: chat rooms and a ticker with the engine's topics. A connection to `/room/NAME`
//! subscribes to the topic `NAME`; every text it sends is published to the room, itself
//! included (`publish_including_self`; `publish` would leave it out, as uWS's `ws.publish`).
//! A thread outside the workers publishes `tick N` to the topic `ticks` every
//! `--interval-ms` (default 1000) through the `ServerHandle`; connect to `/ticks` to hear it.
//! Subscriptions end with the connection; `subscriber_count` is exact per worker and summed
//! over workers from the handle.
//!
//! ```sh
//! cargo run --example pubsub -- --addr 127.0.0.1:9001
//! ```

use std::time::Duration;

use sockeye::{Conn, Handler, Message, Request, Server, Upgrade};

/// Each connection's topic, chosen at the upgrade.
struct Rooms;

impl Handler for Rooms {
    type Data = String;

    fn on_upgrade(&mut self, req: &Request<'_>, _peer: std::net::SocketAddr) -> Upgrade<String> {
        match req.path() {
            "/ticks" => Upgrade::accept("ticks".to_owned()),
            p => match p.strip_prefix("/room/") {
                Some(name)
                    if !name.is_empty()
                        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') =>
                {
                    Upgrade::accept(name.to_owned())
                }
                _ => Upgrade::reject(404),
            },
        }
    }

    fn on_open(&mut self, conn: &mut Conn<'_, String>) {
        let topic = conn.data().clone();
        // A name longer than `max_topic_len` would be an error here, not a panic.
        if conn.subscribe(&topic).is_err() {
            let _ = conn.close(sockeye::CloseCode::POLICY, "bad topic");
            return;
        }
        let n = conn.subscriber_count(&topic);
        conn.send_text(&format!("joined {topic} ({n} here on this worker)"));
    }

    fn on_message(&mut self, conn: &mut Conn<'_, String>, msg: Message<'_>) {
        let topic = conn.data().clone();
        if topic != "ticks" {
            // The frame is built once per worker; every subscriber's queue points at it.
            let _ = conn.publish_including_self(&topic, msg);
        }
    }
}

fn main() -> Result<(), sockeye::Error> {
    let mut addr = "127.0.0.1:9001".to_owned();
    let mut interval = Duration::from_millis(1000);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match (a.as_str(), args.next()) {
            ("--addr", Some(v)) => addr = v,
            ("--interval-ms", Some(v)) => {
                interval = Duration::from_millis(v.parse().unwrap_or(1000))
            }
            _ => {
                eprintln!("usage: pubsub [--addr HOST:PORT] [--interval-ms MS]");
                std::process::exit(2);
            }
        }
    }
    let server = Server::builder().listen(addr.as_str()).handler(|| Rooms).build()?;
    println!("listening on ws://{}/ (/room/NAME, /ticks)", server.local_addr());
    let handle = server.handle();
    std::thread::spawn(move || {
        for n in 0u64.. {
            std::thread::sleep(interval);
            if handle.is_shutting_down() {
                return;
            }
            // From any thread: one command per worker that holds a subscriber, none otherwise.
            let _ = handle.publish("ticks", format!("tick {n}").as_str());
        }
    });
    server.run()
}
