//! The demo server: `/echo` echoes; `/chat` is a chat room on pub/sub (`?room=NAME`, `chat` by
//! default): every text line is published to the room, the sender included, whichever worker
//! holds each member; `/stats` streams the server's live stats (topic `$stats`, JSON once a
//! second, published by a thread outside the workers); `/` serves a browser chat client that
//! draws them; `/metrics` the engine's per-worker counters (Prometheus text format). `--chaos`
//! adds `/panic`, whose handler panics on every message (fault injection, tests/faults/).
//! Embedded defaults; `--help` for options.
//!
//! ```sh
//! cargo run --release --example demo
//! ```

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt::{self, Write as _};
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use sockeye::{
    Backend, CloseCode, Conn, Handler, HttpResponse, Message, Request, Server, ServerHandle, Stats,
    Upgrade,
};

const PAGE: &str = include_str!("demo.html");

/// The room of a `/chat` request without `?room=`.
const DEFAULT_ROOM: &str = "chat";
/// Longest room name, in bytes.
const MAX_ROOM_LEN: usize = 64;
/// The topic the stats thread publishes to and `/stats` subscribes to. A room name cannot
/// collide with it: `$` is not allowed in one.
const STATS_TOPIC: &str = "$stats";
/// How often the stats thread publishes.
const STATS_PERIOD: Duration = Duration::from_secs(1);

/// A chat room's name, 1..=64 bytes of `[A-Za-z0-9_-]`, held inline (no allocation per line).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct Room {
    len: u8,
    name: [u8; MAX_ROOM_LEN],
}

impl Room {
    /// `None` unless `name` is 1..=64 bytes of `[A-Za-z0-9_-]`.
    fn parse(name: &str) -> Option<Room> {
        let b = name.as_bytes();
        let ok = (1..=MAX_ROOM_LEN).contains(&b.len())
            && b.iter().all(|&c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-');
        if !ok {
            return None;
        }
        let mut room = Room { len: b.len() as u8, name: [0; MAX_ROOM_LEN] };
        room.name[..b.len()].copy_from_slice(b);
        Some(room)
    }

    /// The room's topic: its name.
    fn topic(&self) -> &[u8] {
        &self.name[..usize::from(self.len)]
    }

    /// The room a `/chat` request's query names: `room=NAME`, or [`DEFAULT_ROOM`] without
    /// one; other parameters are ignored. `None` (answered 400) for a bad name or a repeated
    /// `room`.
    fn from_query(query: Option<&str>) -> Option<Room> {
        let mut room = None;
        for pair in query.unwrap_or("").split('&') {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            if key == "room" {
                if room.is_some() {
                    return None;
                }
                room = Some(Room::parse(value)?);
            }
        }
        room.or_else(|| Room::parse(DEFAULT_ROOM))
    }
}

impl fmt::Debug for Room {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Room({})", String::from_utf8_lossy(self.topic()))
    }
}

thread_local! {
    /// The rooms the connections of this thread's worker are in.
    static ROOMS: RefCell<Rooms> = RefCell::new(Rooms::default());
}

/// One worker's room names, each held once however many of its connections are in the room.
#[derive(Default)]
struct Rooms {
    /// By id: the name and how many [`RoomId`]s hold it (0: free, the id is in `free`).
    names: Vec<(Room, u32)>,
    by_name: HashMap<Room, u32>,
    free: Vec<u32>,
}

/// A connection's room: a counted id into its worker thread's [`Rooms`], so that a connection's
/// [`Route`] is 8 bytes (it was 66 with the name inline, and every connection, `/echo` ones
/// too, pays for the largest variant). The last id of a room frees its entry when dropped,
/// whichever way the connection ended. Never leaves the thread that made it (not `Send`).
struct RoomId(u32, PhantomData<Rc<()>>);

impl RoomId {
    fn new(room: Room) -> RoomId {
        ROOMS.with_borrow_mut(|r| {
            if let Some(&id) = r.by_name.get(&room) {
                r.names[id as usize].1 += 1;
                return RoomId(id, PhantomData);
            }
            let id = match r.free.pop() {
                Some(id) => {
                    r.names[id as usize] = (room, 1);
                    id
                }
                None => {
                    r.names.push((room, 1));
                    (r.names.len() - 1) as u32
                }
            };
            r.by_name.insert(room, id);
            RoomId(id, PhantomData)
        })
    }

    fn room(&self) -> Room {
        ROOMS.with_borrow(|r| r.names[self.0 as usize].0)
    }
}

impl Clone for RoomId {
    fn clone(&self) -> Self {
        ROOMS.with_borrow_mut(|r| r.names[self.0 as usize].1 += 1);
        RoomId(self.0, PhantomData)
    }
}

impl Drop for RoomId {
    fn drop(&mut self) {
        // `try_with`: a worker's connections may outlive its thread-locals as the thread exits.
        let _ = ROOMS.try_with(|r| {
            let r = &mut *r.borrow_mut();
            let entry = &mut r.names[self.0 as usize];
            entry.1 -= 1;
            if entry.1 == 0 {
                r.by_name.remove(&entry.0);
                r.free.push(self.0);
            }
        });
    }
}

impl fmt::Debug for RoomId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.room().fmt(f)
    }
}

#[derive(Debug, Default, Clone)]
enum Route {
    #[default]
    Echo,
    Chat(RoomId),
    /// Read-only: the `$stats` stream.
    Stats,
    /// `--chaos` only: every message makes the handler panic.
    Panic,
}

/// One per worker. The chat needs no state of its own: the engine's topics hold the rooms.
struct Demo {
    /// The server's handle, set once `build()` returned (for `/metrics`).
    server: Arc<OnceLock<ServerHandle>>,
    /// `--chaos`: serve `/panic`.
    chaos: bool,
    /// `Config::max_topic_len`: a room longer than it is refused at the upgrade.
    max_topic_len: usize,
}

/// The `Stats` fields that are gauges (they go down as well as up); every other field is a
/// counter and is exported as `sockeye_<name>_total`.
const GAUGES: &[&str] =
    &["connections", "memory_in_use", "buffers_total", "buffers_in_kernel", "subscriptions"];

fn metric_help(name: &str) -> &'static str {
    match name {
        "connections" => "Connections the worker holds (handshaking, open or closing).",
        "buffers_total" => "io_uring: buffers in the provided-buffer ring (0 on epoll).",
        "buffers_in_kernel" => "io_uring: provided buffers lent to the kernel.",
        "buffer_shortages" => "io_uring: receives that found the buffer ring empty.",
        "memory_in_use" => "Bytes of send queues and message-assembly buffers held now.",
        "handshake_timeouts" => "Connections dropped for not completing the handshake in time.",
        "idle_timeouts" => "Connections closed by the idle timeout or an unanswered auto-ping.",
        "close_timeouts" => "Connections reset because their close did not complete in time.",
        "handler_panics" => "Handler callbacks that panicked (connection closed with 1011).",
        "sends_dropped" => "Data sends refused over max_backpressure.",
        "budget_refusals" => "Sends and messages refused over the worker memory budget.",
        "protocol_errors" => "Connections closed for a protocol violation by the peer.",
        "messages_in" => "Data messages received (text and binary, whole).",
        "messages_out" => "Data messages queued: sends, and publishes once per subscriber.",
        "deliveries" => "Published messages queued to a subscriber (one per subscriber).",
        "publish_drops" => "Published messages dropped for a subscriber over max_backpressure.",
        "backpressure_closes" => "Connections closed with 1008 for a queue over max_backpressure.",
        "subscriptions" => "Topic subscriptions the worker holds.",
        "bad_handshakes" => "Handshake requests answered with an HTTP error.",
        "tls_handshakes" => "TLS handshakes completed (wss:// only).",
        "tls_errors" => "TLS connections dropped (failed handshake, bad record, alert, plaintext).",
        "cluster_published" => "Cluster: publishes the broker took (server-wide, worker 0).",
        "cluster_received" => "Cluster: messages from other processes fanned out here.",
        "cluster_queue_drops" => "Cluster: publishes dropped for the broker, its queue full.",
        "cluster_lost" => "Cluster: publishes not sent, the broker unreachable.",
        "cluster_reconnects" => "Cluster: broker connections made again after a loss.",
        "cluster_inbound_drops" => "Cluster: broker messages missed by a worker behind.",
        _ => "A sockeye per-worker counter.",
    }
}

/// Every worker's `Stats` in the Prometheus text exposition format (version 0.0.4): one family
/// per field, one sample per worker labelled `worker="N"`.
fn metrics_text(stats: &[sockeye::Stats]) -> String {
    let mut out = String::new();
    let Some(first) = stats.first() else { return out };
    for (i, (name, _)) in first.fields().enumerate() {
        let gauge = GAUGES.contains(&name);
        let family =
            if gauge { format!("sockeye_{name}") } else { format!("sockeye_{name}_total") };
        let kind = if gauge { "gauge" } else { "counter" };
        let _ = writeln!(out, "# HELP {family} {}", metric_help(name));
        let _ = writeln!(out, "# TYPE {family} {kind}");
        for (w, s) in stats.iter().enumerate() {
            let value = s.fields().nth(i).map_or(0, |(_, v)| v);
            let _ = writeln!(out, "{family}{{worker=\"{w}\"}} {value}");
        }
    }
    out
}

/// The sums over every worker that the stats thread turns into rates.
#[derive(Debug, Clone, Copy, Default)]
struct Totals {
    messages_in: usize,
    messages_out: usize,
    deliveries: usize,
    publish_drops: usize,
}

impl Totals {
    fn of(stats: &[Stats]) -> Self {
        stats.iter().fold(Totals::default(), |t, s| Totals {
            messages_in: t.messages_in + s.messages_in,
            messages_out: t.messages_out + s.messages_out,
            deliveries: t.deliveries + s.deliveries,
            publish_drops: t.publish_drops + s.publish_drops,
        })
    }
}

/// The `$stats` message: a small JSON object. Totals are sums over the workers, `*_per_s`
/// the change since the previous message divided by the seconds between the two snapshots.
/// Everything in it is a number or a fixed name: nothing needs escaping.
fn stats_json(backend: &str, stats: &[Stats], now: Totals, prev: Totals, secs: f64) -> String {
    let rate =
        |a: usize, b: usize| if secs > 0.0 { a.saturating_sub(b) as f64 / secs } else { 0.0 };
    let mut out =
        format!("{{\"backend\":\"{backend}\",\"workers\":{},\"connections\":[", stats.len());
    for (i, s) in stats.iter().enumerate() {
        let _ = write!(out, "{}{}", if i == 0 { "" } else { "," }, s.connections);
    }
    let subscriptions: usize = stats.iter().map(|s| s.subscriptions).sum();
    let _ = write!(
        out,
        "],\"subscriptions\":{subscriptions},\"messages_in\":{},\"messages_out\":{},\
         \"deliveries\":{},\"publish_drops\":{},\"in_per_s\":{:.1},\"out_per_s\":{:.1},\
         \"deliveries_per_s\":{:.1},\"publish_drops_per_s\":{:.1}}}",
        now.messages_in,
        now.messages_out,
        now.deliveries,
        now.publish_drops,
        rate(now.messages_in, prev.messages_in),
        rate(now.messages_out, prev.messages_out),
        rate(now.deliveries, prev.deliveries),
        rate(now.publish_drops, prev.publish_drops),
    );
    out
}

/// The stats thread: once a second publishes [`stats_json`] to [`STATS_TOPIC`] through the
/// handle, like any thread outside the workers may. Ends when `stop` fires or is dropped, or
/// when a shutdown begins.
fn stats_loop(handle: &ServerHandle, backend: &str, stop: &mpsc::Receiver<()>) {
    let mut then = Instant::now();
    let mut prev = Totals::of(&handle.stats());
    let mut next = then + STATS_PERIOD;
    loop {
        match stop.recv_timeout(next.saturating_duration_since(Instant::now())) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
        if handle.is_shutting_down() {
            return;
        }
        let stats = handle.stats();
        let now = Instant::now();
        let totals = Totals::of(&stats);
        let json = stats_json(backend, &stats, totals, prev, (now - then).as_secs_f64());
        // This process's figures: to its own subscribers, not to the cluster's.
        if let Err(e) = handle.publish_local(STATS_TOPIC, json.as_str()) {
            log::warn!("stats thread: cannot publish to {STATS_TOPIC}: {e}; stopping");
            return;
        }
        (prev, then) = (totals, now);
        // Keep a steady beat; after a long stall (a suspended process) start afresh.
        next += STATS_PERIOD;
        if next < now {
            next = now + STATS_PERIOD;
        }
    }
}

impl Handler for Demo {
    type Data = Route;

    fn on_upgrade(&mut self, req: &Request<'_>, _peer: SocketAddr) -> Upgrade<Route> {
        match req.path() {
            "/echo" => Upgrade::accept(Route::Echo),
            "/chat" => match Room::from_query(req.query()) {
                Some(room) if room.topic().len() <= self.max_topic_len => {
                    Upgrade::accept(Route::Chat(RoomId::new(room)))
                }
                _ => Upgrade::reject(400),
            },
            "/stats" => Upgrade::accept(Route::Stats),
            "/panic" if self.chaos => Upgrade::accept(Route::Panic),
            _ => Upgrade::reject(404),
        }
    }

    fn on_http(&mut self, req: &Request<'_>) -> Option<HttpResponse> {
        match req.path() {
            "/" | "/index.html" => Some(HttpResponse::new(200, "text/html; charset=utf-8", PAGE)),
            "/metrics" => Some(match self.server.get() {
                Some(h) => {
                    HttpResponse::new(200, "text/plain; version=0.0.4", metrics_text(&h.stats()))
                }
                None => HttpResponse::new(503, "text/plain", "starting"),
            }),
            _ => None,
        }
    }

    fn on_open(&mut self, conn: &mut Conn<'_, Route>) {
        // A copy (a count up in the room table): `conn` is borrowed again below.
        let subscribed = match conn.data().clone() {
            Route::Chat(room) => conn.subscribe(room.room().topic()),
            Route::Stats => conn.subscribe(STATS_TOPIC),
            Route::Echo | Route::Panic => return,
        };
        // Rooms were checked against max_topic_len at the upgrade: only a `--max-topic-len`
        // too short for `$stats` gets here.
        if let Err(e) = subscribed {
            log::debug!("{:?}: cannot subscribe: {e}", conn.id());
            let _ = conn.close(CloseCode::INTERNAL_ERROR, &format!("cannot subscribe: {e}"));
        }
    }

    fn on_message(&mut self, conn: &mut Conn<'_, Route>, msg: Message<'_>) {
        match (conn.data().clone(), msg) {
            (Route::Echo, m) => {
                conn.send(m);
            }
            (Route::Chat(room), Message::Text(line)) => {
                // To every member on every worker, this connection included; a member whose
                // queue is full loses the line (or is closed, --close-slow-subscribers).
                if let Err(e) = conn.publish_including_self(room.room().topic(), line) {
                    let _ = conn.close(CloseCode::TOO_BIG, &format!("cannot publish: {e}"));
                }
            }
            (Route::Chat(_), Message::Binary(_)) => {
                let _ = conn.close(CloseCode::UNSUPPORTED, "chat takes text"); // a valid code
            }
            (Route::Stats, _) => {
                let _ = conn.close(CloseCode::UNSUPPORTED, "stats is read-only");
            }
            (Route::Panic, _) => panic!("--chaos: /panic panics on every message"),
        }
    }
}

const HELP: &str = "\
sockeye demo: /echo, /chat rooms, /stats and a browser chat page at /

USAGE: demo [--addr ADDR] [--workers N] [--backend auto|epoll|io_uring] [OPTIONS]

/echo echoes every message. /chat?room=NAME joins a chat room (NAME: 1 to 64 of
A-Z a-z 0-9 _ -, else the upgrade is refused with 400; without ?room= the room is
\"chat\"): every text line goes to everyone in the room, the sender included, on
every worker; binary closes with 1003. /stats streams the server's stats as JSON
once a second (topic $stats), which the page at / draws. GET /metrics serves every
worker's counters in the Prometheus text format.

  --addr ADDR        listen address (default 127.0.0.1:9001)
  --workers N        worker threads (default: one per core)
  --backend NAME     I/O backend (default auto; SOCKEYE_BACKEND overrides)
  --idle-timeout SECS
                     close connections silent this long (default 300; 0: never)
  --close-timeout SECS
                     time a peer has to complete the close handshake (engine default)
  --handshake-timeout SECS
                     time a client has to send its handshake (engine default)
  --max-backpressure BYTES
                     most bytes a connection may have queued; a send or published
                     line that would pass it is dropped for that connection (engine
                     default, 16 MiB: one largest message fits)
  --deflate          negotiate permessage-deflate (RFC 7692) with clients that offer it
                     (browsers do): one shared compressor per worker, messages of 512
                     bytes or more compressed, a published line compressed once
  --tls CERT.pem KEY.pem
                     serve wss:// (and the page over https://) with this certificate
                     chain and key; the files are watched, and a changed pair is
                     loaded for new handshakes without a restart
  --tls-addr ADDR    with --tls: serve wss:// on ADDR and plain ws:// on --addr
  --deflate-level N  with --deflate, the zlib level 0..=9 (engine default 1)
  --deflate-client-context-takeover
                     with --deflate, let clients keep their compression window (by
                     default they are asked for client_no_context_takeover, and every
                     incoming message is inflated by an inflater the worker lends for
                     it): better ratios from clients, ~47 KB kept per used connection
  --deflate-client-no-context-takeover
                     the default; kept for the scripts that name it
  --close-slow-subscribers
                     close (1008) a connection over --max-backpressure instead of
                     dropping the message for it: a slow chat or /stats member, and
                     an /echo client that does not read (off by default)
  --max-topic-len BYTES
                     longest topic name (engine default 256); a room longer than it
                     is refused with 400, and under 6 /stats cannot subscribe
  --memory-budget BYTES
                     send queues and assembly buffers one worker may hold (engine default)
  --buffer-cache BYTES
                     freed buffers one worker keeps for reuse (engine default)
  --max-message-size BYTES
                     largest message accepted, close 1009 above it (engine default;
                     a single frame stays capped by the engine's max_frame_size)
  --cluster redis://HOST:PORT
                     pub/sub across processes: every demo started with the same
                     Redis shares its chat rooms (needs the engine's `cluster`
                     feature: cargo run --example demo --features cluster)
  --chaos            fault injection: add /panic, whose handler panics on every
                     message (off by default; for tests/faults/)
  --backlog N        listen backlog of each worker's listener (engine default)
  --read-buffer-size BYTES
                     epoll: each worker's read buffer (engine default)
  --timer-tick MS    granularity of the timer wheel, in milliseconds (engine default)
  --uring-entries N  io_uring: submission queue entries per worker (engine default)
  --uring-buffers N  io_uring: provided buffers per worker (engine default)
  --uring-buffer-size BYTES
                     io_uring: size of each provided buffer (engine default)
  --direct-write-min BYTES
                     sends of at least BYTES skip the send queue (engine default)
  --zc-threshold BYTES
                     io_uring: sends of at least BYTES use SEND_ZC (default: never)
  -h, --help         this text

Logs go to stderr; RUST_LOG=debug for more.";

fn number<T: std::str::FromStr>(s: &str) -> T {
    s.parse().unwrap_or_else(|_| {
        eprintln!("expected a number, got {s:?}");
        std::process::exit(2)
    })
}

/// Seconds, fractions allowed (`0.5`).
fn seconds(s: &str) -> Duration {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Duration::from_secs_f64(v),
        _ => {
            eprintln!("expected seconds, got {s:?}");
            std::process::exit(2)
        }
    }
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let mut addr = "127.0.0.1:9001".to_string();
    let mut workers = 0usize;
    let mut backend = Backend::Auto;
    let defaults = sockeye::Config::default();
    let mut uring_entries = defaults.uring_entries;
    let mut uring_buffers = defaults.uring_buffers;
    let mut uring_buffer_size = defaults.uring_buffer_size;
    let mut zc_threshold = defaults.uring_send_zc_threshold;
    let mut direct_write_min = defaults.direct_write_min;
    let mut backlog = defaults.backlog;
    let mut read_buffer_size = defaults.read_buffer_size;
    let mut timer_tick = defaults.timer_tick;
    let mut idle_timeout = Some(Duration::from_secs(300));
    let mut close_timeout = defaults.limits.close_timeout;
    let mut handshake_timeout = defaults.limits.handshake_timeout;
    let mut max_backpressure = defaults.max_backpressure;
    let mut max_message_size = defaults.limits.max_message_size;
    let mut memory_budget = defaults.worker_memory_budget;
    let mut buffer_cache = defaults.buffer_cache;
    let mut close_slow = defaults.close_on_backpressure_limit;
    let mut deflate = false;
    let mut tls_files: Option<(String, String)> = None;
    let mut tls_addr: Option<String> = None;
    let mut deflate_client_nct = defaults.deflate.client_no_context_takeover;
    let mut deflate_level = defaults.deflate.level;
    let mut max_topic_len = defaults.max_topic_len;
    let mut chaos = false;
    let mut cluster: Option<String> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| {
            args.next().unwrap_or_else(|| {
                eprintln!("{name} needs a value\n\n{HELP}");
                std::process::exit(2)
            })
        };
        match a.as_str() {
            "--addr" => addr = value("--addr"),
            "--workers" => {
                workers = value("--workers").parse().unwrap_or_else(|_| {
                    eprintln!("--workers takes a number");
                    std::process::exit(2)
                })
            }
            "--backend" => {
                backend = value("--backend").parse().unwrap_or_else(|e| {
                    eprintln!("{e}");
                    std::process::exit(2)
                })
            }
            "--uring-entries" => uring_entries = number(&value("--uring-entries")),
            "--uring-buffers" => uring_buffers = number(&value("--uring-buffers")),
            "--uring-buffer-size" => uring_buffer_size = number(&value("--uring-buffer-size")),
            "--backlog" => backlog = number(&value("--backlog")),
            "--read-buffer-size" => read_buffer_size = number(&value("--read-buffer-size")),
            "--timer-tick" => timer_tick = Duration::from_millis(number(&value("--timer-tick"))),
            "--direct-write-min" => direct_write_min = number(&value("--direct-write-min")),
            "--zc-threshold" => zc_threshold = number(&value("--zc-threshold")),
            "--idle-timeout" => {
                idle_timeout = Some(seconds(&value("--idle-timeout"))).filter(|d| !d.is_zero())
            }
            "--close-timeout" => close_timeout = seconds(&value("--close-timeout")),
            "--handshake-timeout" => handshake_timeout = seconds(&value("--handshake-timeout")),
            "--max-backpressure" => max_backpressure = number(&value("--max-backpressure")),
            "--close-slow-subscribers" => close_slow = true,
            "--deflate" => deflate = true,
            "--tls-addr" => tls_addr = Some(value("--tls-addr")),
            "--tls" => {
                let cert = value("--tls");
                tls_files = Some((cert, value("--tls (the key after the certificate)")));
            }
            "--deflate-client-no-context-takeover" => deflate_client_nct = true,
            "--deflate-client-context-takeover" => deflate_client_nct = false,
            "--deflate-level" => deflate_level = number(&value("--deflate-level")),
            "--max-topic-len" => max_topic_len = number(&value("--max-topic-len")),
            "--max-message-size" => max_message_size = number(&value("--max-message-size")),
            "--memory-budget" => memory_budget = number(&value("--memory-budget")),
            "--buffer-cache" => buffer_cache = number(&value("--buffer-cache")),
            "--chaos" => chaos = true,
            "--cluster" => cluster = Some(value("--cluster")),
            "-h" | "--help" => {
                println!("{HELP}");
                return;
            }
            other => {
                eprintln!("unknown argument {other:?}\n\n{HELP}");
                std::process::exit(2)
            }
        }
    }
    let tls = tls_files.as_ref().map(|(c, k)| {
        sockeye::TlsConfig::from_pem_files(c, k).unwrap_or_else(|e| {
            log::error!("--tls: {e}");
            std::process::exit(1)
        })
    });
    let handle_cell = Arc::new(OnceLock::new());
    let cell = Arc::clone(&handle_cell);
    let mut builder = Server::builder();
    if let Some(tls) = tls {
        builder = builder.tls(tls);
    }
    if let Some(a) = &tls_addr {
        builder = builder.listen_tls(a.as_str());
    }
    let server = match builder
        .listen(addr.as_str())
        .workers(workers)
        .backend(backend)
        .max_backpressure(max_backpressure)
        .close_on_backpressure_limit(close_slow)
        .deflate(sockeye::DeflateConfig {
            enabled: deflate,
            client_no_context_takeover: deflate_client_nct,
            level: deflate_level,
            ..defaults.deflate
        })
        .max_topic_len(max_topic_len)
        .idle_timeout(idle_timeout)
        .close_timeout(close_timeout)
        .handshake_timeout(handshake_timeout)
        .max_message_size(max_message_size)
        .worker_memory_budget(memory_budget)
        .buffer_cache(buffer_cache)
        .uring_entries(uring_entries)
        .uring_buffers(uring_buffers)
        .uring_buffer_size(uring_buffer_size)
        .uring_send_zc_threshold(zc_threshold)
        .direct_write_min(direct_write_min)
        .backlog(backlog)
        .read_buffer_size(read_buffer_size)
        .timer_tick(timer_tick)
        .cluster_url(cluster.clone())
        .handler(move || Demo { server: Arc::clone(&cell), chaos, max_topic_len })
        .build()
    {
        Ok(s) => s,
        Err(e) => {
            log::error!("cannot start on {addr}: {e}");
            std::process::exit(1)
        }
    };
    // First thing once the port listens: tests wait for this line to learn the backend.
    let cfg = server.config();
    log::info!(
        "listening on {}://{} ({} workers, {:?}): /echo, /chat, /stats, and {}://{}/ for the chat page",
        if tls_files.is_some() && tls_addr.is_none() { "wss" } else { "ws" },
        server.local_addr(),
        cfg.worker_count(),
        cfg.backend,
        if tls_files.is_some() && tls_addr.is_none() { "https" } else { "http" },
        server.local_addr()
    );
    if let Some(a) = cfg.tls_addr {
        log::info!("and on wss://{a} (https://{a}/ for the chat page)");
    }
    let handle = server.handle();
    let _ = handle_cell.set(handle.clone());
    if let Some((cert, key)) = tls_files {
        watch_certificate(handle.clone(), cert, key);
    }
    if chaos {
        log::warn!("--chaos: /panic panics on every message");
    }
    if let Some(url) = &cluster {
        log::info!("cluster: rooms shared through {url}");
    }
    let backend = match cfg.backend {
        Backend::Epoll => "epoll",
        Backend::IoUring => "io_uring",
        Backend::Auto => "auto", // resolved by build(): not seen
    };
    // The stats thread, outside the workers; dropping `stop_stats` ends it at once.
    let (stop_stats, stop_rx) = mpsc::channel::<()>();
    let stats_thread = if STATS_TOPIC.len() > cfg.max_topic_len {
        log::warn!("--max-topic-len {}: {STATS_TOPIC} does not fit, no stats", cfg.max_topic_len);
        None
    } else {
        let h = handle.clone();
        thread::Builder::new()
            .name("demo-stats".into())
            .spawn(move || stats_loop(&h, backend, &stop_rx))
            .map_err(|e| log::warn!("no stats thread: {e}"))
            .ok()
    };
    if let Err(e) = ctrlc::set_handler(move || {
        log::info!("shutting down");
        handle.shutdown();
    }) {
        log::warn!("no Ctrl-C handler: {e}");
    }
    let result = server.run();
    drop(stop_stats);
    if let Some(t) = stats_thread {
        let _ = t.join();
    }
    if let Err(e) = result {
        log::error!("{e}");
        std::process::exit(1);
    }
    log::info!("stopped");
}

/// Reloads the certificate and key when either file changes (a renewal), checking every two
/// seconds; a pair that does not load is logged and the one in force kept.
fn watch_certificate(handle: ServerHandle, cert: String, key: String) {
    let stamp = |p: &str| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let spawned = thread::Builder::new().name("demo-tls-watch".into()).spawn(move || {
        let mut seen = (stamp(&cert), stamp(&key));
        while !handle.is_shutting_down() {
            thread::sleep(Duration::from_secs(2));
            let now = (stamp(&cert), stamp(&key));
            if now == seen {
                continue;
            }
            seen = now;
            let loaded = sockeye::TlsConfig::from_pem_files(&cert, &key)
                .map_err(|e| e.to_string())
                .and_then(|t| handle.reload_tls(&t).map_err(|e| e.to_string()));
            match loaded {
                Ok(()) => log::info!("--tls: reloaded {cert} and {key} for new handshakes"),
                Err(e) => log::warn!("--tls: not reloaded ({e}); the certificate in force stays"),
            }
        }
    });
    if let Err(e) = spawned {
        log::warn!("--tls: no certificate watcher ({e})");
    }
}
