//! Chat rooms: what a real application adds to echo.
//!
//! ```sh
//! cargo run --example rooms -- --addr 127.0.0.1:9001 --workers 2
//! # then, e.g. with websocat:
//! websocat --protocol rooms.v2 'ws://127.0.0.1:9001/rooms/lobby?nick=alice'
//! ```
//!
//! - **Rooms by path, who by query**: `ws://HOST/rooms/NAME?nick=NICK`. Every text line a
//!   member sends goes to every member of the room, on every worker, the sender included;
//!   joins and leaves are announced (`* alice joined`).
//! - **Rejection with a status**: another path gets 404; a bad room or nick name, or an offer
//!   of only subprotocols we do not speak, 400; a browser page from another site (an `Origin`
//!   that is not this server's `Host`) 403, the check that keeps other sites' pages from
//!   using a visitor's cookies here.
//! - **Subprotocol choice**: the server speaks `rooms.v2` (each line prefixed with its room,
//!   `[lobby] alice: hi`) and `rooms.v1` (`alice: hi`), and confirms the one it prefers among
//!   those the client offers. A client that offers none gets v1 (and no
//!   `Sec-WebSocket-Protocol` header); one that offers only others gets 400, as it would fail
//!   a connection without the subprotocol it asked for anyway (browsers and tungstenite do).
//! - **Per-connection data**: each connection carries its [`Member`] (room, nick, format), set
//!   in `on_upgrade` and read with `conn.data()`.
//! - **Fan-out across workers by hand**: each worker keeps the members *it* holds (no lock);
//!   a line is posted once to every worker (`ServerHandle::post_all`), and each worker's
//!   `on_post` sends it to its own members through the `Ctx`. The message crosses to each
//!   worker once, not once per member. The engine's pub/sub ([`Conn::subscribe`] and
//!   [`Conn::publish_including_self`], as the demo's `/chat` uses them) does this fan-out for
//!   you, building the frame once per worker; by hand, as here, each member can get its own
//!   format.
//! - **Plain HTTP on the same port**: `GET /` answers a short text page (`on_http`), with a
//!   header of its own.
//!
//! Binary messages are refused with close 1003 (unsupported data).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;

use sockeye::{
    CloseCode, Conn, ConnId, Ctx, Handler, HttpResponse, Message, Post, Request, Server, Upgrade,
};

/// The subprotocols this server speaks, in the order it prefers them.
const PROTOCOLS: &[(&str, Format)] = &[("rooms.v2", Format::V2), ("rooms.v1", Format::V1)];

/// How a member wants its lines.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Format {
    /// `alice: hi` (also for clients that named no subprotocol).
    #[default]
    V1,
    /// `[lobby] alice: hi`.
    V2,
}

/// A connection's own data. (`Handler::Data` must be `Default`, for the slot the engine holds
/// before `on_upgrade` decides; the empty member never reaches a callback.)
#[derive(Debug, Default)]
struct Member {
    room: String,
    nick: String,
    format: Format,
}

/// A line on its way to every worker: posted once, read by each.
struct Line {
    room: String,
    text: String,
}

/// One per worker: the rooms and the members of each that this worker holds.
#[derive(Default)]
struct Rooms {
    rooms: HashMap<String, HashSet<ConnId>>,
}

/// A room or nick name: 1 to 32 of `A-Z a-z 0-9 _ -` (no escaping needed anywhere).
fn valid_name(s: &str) -> bool {
    (1..=32).contains(&s.len())
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The value of `key` in a query string (`a=1&nick=bob`), undecoded.
fn query_param<'q>(query: Option<&'q str>, key: &str) -> Option<&'q str> {
    query?.split('&').find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

/// Whether a browser's `Origin` names this server (scheme stripped, compared with `Host`).
/// Clients that are not browsers send no `Origin`: nothing to check.
fn same_origin(req: &Request<'_>) -> bool {
    let Some(origin) = req.origin() else { return true };
    let authority = origin.split_once("://").map_or(origin, |(_, rest)| rest);
    req.host().is_some_and(|host| host.eq_ignore_ascii_case(authority))
}

/// Posts a line to every worker (this one included).
fn broadcast(conn: &Conn<'_, Member>, text: String) {
    let room = conn.data().room.clone();
    conn.handle().post_all(Arc::new(Line { room, text }));
}

impl Handler for Rooms {
    type Data = Member;

    fn on_upgrade(&mut self, req: &Request<'_>, _peer: SocketAddr) -> Upgrade<Member> {
        let Some(room) = req.path().strip_prefix("/rooms/") else {
            return Upgrade::reject(404);
        };
        let nick = query_param(req.query(), "nick").unwrap_or("");
        if !valid_name(room) || !valid_name(nick) {
            return Upgrade::reject(400);
        }
        if !same_origin(req) {
            return Upgrade::reject(403);
        }
        // Our preference among what the client offered (all its Sec-WebSocket-Protocol
        // headers, comma-split).
        let chosen =
            PROTOCOLS.iter().find(|(name, _)| req.protocols().any(|offered| offered == *name));
        if chosen.is_none() && req.protocols().next().is_some() {
            return Upgrade::reject(400);
        }
        let member = Member {
            room: room.to_owned(),
            nick: nick.to_owned(),
            format: chosen.map_or(Format::V1, |&(_, f)| f),
        };
        match chosen {
            Some((name, _)) => Upgrade::accept(member).with_protocol(*name),
            None => Upgrade::accept(member),
        }
    }

    fn on_http(&mut self, req: &Request<'_>) -> Option<HttpResponse> {
        (req.path() == "/").then(|| {
            HttpResponse::new(
                200,
                "text/plain; charset=utf-8",
                "rooms: connect to ws://HOST/rooms/NAME?nick=NICK (subprotocols rooms.v2, rooms.v1)\n",
            )
            .with_header("Cache-Control", "no-store")
        })
    }

    fn on_open(&mut self, conn: &mut Conn<'_, Member>) {
        let m = conn.data();
        self.rooms.entry(m.room.clone()).or_default().insert(conn.id());
        broadcast(conn, format!("* {} joined", m.nick));
    }

    fn on_message(&mut self, conn: &mut Conn<'_, Member>, msg: Message<'_>) {
        match msg {
            Message::Text(text) => broadcast(conn, format!("{}: {text}", conn.data().nick)),
            Message::Binary(_) => {
                let _ = conn.close(CloseCode::UNSUPPORTED, "rooms take text");
            }
        }
    }

    fn on_close(&mut self, conn: &mut Conn<'_, Member>, _code: CloseCode, _reason: &str) {
        let m = conn.data();
        if let Some(members) = self.rooms.get_mut(&m.room) {
            members.remove(&conn.id());
            if members.is_empty() {
                self.rooms.remove(&m.room);
            }
        }
        // `on_close` follows only an `on_open`, so every member gets its leave.
        broadcast(conn, format!("* {} left", m.nick));
    }

    fn on_post(&mut self, ctx: &mut Ctx<'_, Member>, post: &Post) {
        let Some(line) = post.downcast_ref::<Line>() else { return };
        let Some(members) = self.rooms.get(&line.room) else { return };
        let v2 = format!("[{}] {}", line.room, line.text);
        for &id in members {
            // A member of this worker: `ctx.conn` reaches it, and its data says its format.
            if let Some(mut conn) = ctx.conn(id) {
                let text = if conn.data().format == Format::V2 { &v2 } else { &line.text };
                conn.send_text(text);
            }
        }
    }
}

fn main() -> Result<(), sockeye::Error> {
    let mut addr = "127.0.0.1:9001".to_string();
    let mut workers = 0;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match (a.as_str(), args.next()) {
            ("--addr", Some(v)) => addr = v,
            ("--workers", Some(v)) => workers = v.parse().unwrap_or(0),
            _ => {
                eprintln!("usage: rooms [--addr HOST:PORT] [--workers N]");
                std::process::exit(2);
            }
        }
    }
    let server =
        Server::builder().listen(addr.as_str()).workers(workers).handler(Rooms::default).build()?;
    println!("listening on ws://{}/rooms/NAME?nick=NICK", server.local_addr());
    server.run()
}
