//! The demo server: `/echo` echoes, `/chat` relays every text line to everyone on `/chat` across
//! all workers, `/` serves a browser chat client, `/metrics` the engine's per-worker counters
//! (Prometheus text format). `--chaos` adds `/panic`, whose handler panics on every message
//! (fault injection, tests/faults/). Embedded defaults; `--help` for options.
//!
//! ```sh
//! cargo run --release --example demo
//! ```

use std::collections::HashSet;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use sockeye::{
    Backend, CloseCode, Conn, ConnId, Ctx, Handler, HttpResponse, Message, Post, Request, Server,
    ServerHandle, Upgrade,
};

const PAGE: &str = include_str!("demo.html");

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Route {
    #[default]
    Echo,
    Chat,
    /// `--chaos` only: every message makes the handler panic.
    Panic,
}

/// A chat line on its way to every worker.
struct ChatLine(String);

/// One per worker: knows which of this worker's connections are in the chat.
struct Demo {
    chat: HashSet<ConnId>,
    /// The server's handle, set once `build()` returned (for `/metrics`).
    server: Arc<OnceLock<ServerHandle>>,
    /// `--chaos`: serve `/panic`.
    chaos: bool,
}

/// The `Stats` fields that are gauges (they go down as well as up); every other field is a
/// counter and is exported as `sockeye_<name>_total`.
const GAUGES: &[&str] = &["connections", "memory_in_use", "buffers_total", "buffers_in_kernel"];

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
        "bad_handshakes" => "Handshake requests answered with an HTTP error.",
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

impl Handler for Demo {
    type Data = Route;

    fn on_upgrade(&mut self, req: &Request<'_>, _peer: SocketAddr) -> Upgrade<Route> {
        match req.path() {
            "/echo" => Upgrade::accept(Route::Echo),
            "/chat" => Upgrade::accept(Route::Chat),
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
        if *conn.data() == Route::Chat {
            self.chat.insert(conn.id());
        }
    }

    fn on_message(&mut self, conn: &mut Conn<'_, Route>, msg: Message<'_>) {
        match (*conn.data(), msg) {
            (Route::Echo, m) => {
                conn.send(m);
            }
            (Route::Chat, Message::Text(line)) => {
                conn.handle().post_all(Arc::new(ChatLine(line.to_owned())));
            }
            (Route::Chat, Message::Binary(_)) => {
                let _ = conn.close(CloseCode::UNSUPPORTED, "chat takes text"); // a valid code
            }
            (Route::Panic, _) => panic!("--chaos: /panic panics on every message"),
        }
    }

    fn on_close(&mut self, conn: &mut Conn<'_, Route>, _code: CloseCode, _reason: &str) {
        self.chat.remove(&conn.id());
    }

    fn on_post(&mut self, ctx: &mut Ctx<'_, Route>, post: &Post) {
        if let Some(ChatLine(line)) = post.downcast_ref::<ChatLine>() {
            for &id in &self.chat {
                ctx.send_text(id, line);
            }
        }
    }
}

const HELP: &str = "\
sockeye demo: /echo, /chat and a browser chat page at /

USAGE: demo [--addr ADDR] [--workers N] [--backend auto|epoll|io_uring] [OPTIONS]

GET /metrics serves every worker's counters in the Prometheus text format.

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
                     most bytes a connection may have queued; a send that would pass
                     it is dropped (engine default, 16 MiB: one largest message fits)
  --memory-budget BYTES
                     send queues and assembly buffers one worker may hold (engine default)
  --buffer-cache BYTES
                     freed buffers one worker keeps for reuse (engine default)
  --max-message-size BYTES
                     largest message accepted, close 1009 above it (engine default;
                     a single frame stays capped by the engine's max_frame_size)
  --chaos            fault injection: add /panic, whose handler panics on every
                     message (off by default; for tests/faults/)
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
    let mut uring_buffers = defaults.uring_buffers;
    let mut uring_buffer_size = defaults.uring_buffer_size;
    let mut zc_threshold = defaults.uring_send_zc_threshold;
    let mut direct_write_min = defaults.direct_write_min;
    let mut idle_timeout = Some(Duration::from_secs(300));
    let mut close_timeout = defaults.limits.close_timeout;
    let mut handshake_timeout = defaults.limits.handshake_timeout;
    let mut max_backpressure = defaults.max_backpressure;
    let mut max_message_size = defaults.limits.max_message_size;
    let mut memory_budget = defaults.worker_memory_budget;
    let mut buffer_cache = defaults.buffer_cache;
    let mut chaos = false;
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
            "--uring-buffers" => uring_buffers = number(&value("--uring-buffers")),
            "--uring-buffer-size" => uring_buffer_size = number(&value("--uring-buffer-size")),
            "--direct-write-min" => direct_write_min = number(&value("--direct-write-min")),
            "--zc-threshold" => zc_threshold = number(&value("--zc-threshold")),
            "--idle-timeout" => {
                idle_timeout = Some(seconds(&value("--idle-timeout"))).filter(|d| !d.is_zero())
            }
            "--close-timeout" => close_timeout = seconds(&value("--close-timeout")),
            "--handshake-timeout" => handshake_timeout = seconds(&value("--handshake-timeout")),
            "--max-backpressure" => max_backpressure = number(&value("--max-backpressure")),
            "--max-message-size" => max_message_size = number(&value("--max-message-size")),
            "--memory-budget" => memory_budget = number(&value("--memory-budget")),
            "--buffer-cache" => buffer_cache = number(&value("--buffer-cache")),
            "--chaos" => chaos = true,
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
    let handle_cell = Arc::new(OnceLock::new());
    let cell = Arc::clone(&handle_cell);
    let server = match Server::builder()
        .listen(addr.as_str())
        .workers(workers)
        .backend(backend)
        .max_backpressure(max_backpressure)
        .idle_timeout(idle_timeout)
        .close_timeout(close_timeout)
        .handshake_timeout(handshake_timeout)
        .max_message_size(max_message_size)
        .worker_memory_budget(memory_budget)
        .buffer_cache(buffer_cache)
        .uring_buffers(uring_buffers)
        .uring_buffer_size(uring_buffer_size)
        .uring_send_zc_threshold(zc_threshold)
        .direct_write_min(direct_write_min)
        .handler(move || Demo { chat: HashSet::new(), server: Arc::clone(&cell), chaos })
        .build()
    {
        Ok(s) => s,
        Err(e) => {
            log::error!("cannot start on {addr}: {e}");
            std::process::exit(1)
        }
    };
    let handle = server.handle();
    let _ = handle_cell.set(handle.clone());
    if chaos {
        log::warn!("--chaos: /panic panics on every message");
    }
    if let Err(e) = ctrlc::set_handler(move || {
        log::info!("shutting down");
        handle.shutdown();
    }) {
        log::warn!("no Ctrl-C handler: {e}");
    }
    let cfg = server.config();
    log::info!(
        "listening on ws://{} ({} workers, {:?}): /echo, /chat, and http://{}/ for the chat page",
        server.local_addr(),
        cfg.worker_count(),
        cfg.backend,
        server.local_addr()
    );
    if let Err(e) = server.run() {
        log::error!("{e}");
        std::process::exit(1);
    }
    log::info!("stopped");
}
