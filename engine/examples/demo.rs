//! The demo server: `/echo` echoes, `/chat` relays every text line to everyone on `/chat` across
//! all workers, `/` serves a browser chat client. Embedded defaults; `--help` for options.
//!
//! ```sh
//! cargo run --release --example demo
//! ```

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sockeye::{
    Backend, CloseCode, Conn, ConnId, Ctx, Handler, Message, Post, Request, Server, Upgrade,
};

const PAGE: &str = include_str!("demo.html");

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Route {
    #[default]
    Echo,
    Chat,
}

/// A chat line on its way to every worker.
struct ChatLine(String);

/// One per worker: knows which of this worker's connections are in the chat.
#[derive(Default)]
struct Demo {
    chat: HashSet<ConnId>,
}

impl Handler for Demo {
    type Data = Route;

    fn on_upgrade(&mut self, req: &Request<'_>, _peer: SocketAddr) -> Upgrade<Route> {
        match req.path() {
            "/echo" => Upgrade::accept(Route::Echo),
            "/chat" => Upgrade::accept(Route::Chat),
            _ => Upgrade::reject(404),
        }
    }

    fn on_http(&mut self, req: &Request<'_>) -> Option<sockeye::HttpResponse> {
        match req.path() {
            "/" | "/index.html" => {
                Some(sockeye::HttpResponse::new(200, "text/html; charset=utf-8", PAGE))
            }
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

USAGE: demo [--addr ADDR] [--workers N] [--backend auto|epoll|io_uring]

  --addr ADDR        listen address (default 127.0.0.1:9001)
  --workers N        worker threads (default: one per core)
  --backend NAME     I/O backend (default auto; SOCKEYE_BACKEND overrides)
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
    let server = match Server::builder()
        .listen(addr.as_str())
        .workers(workers)
        .backend(backend)
        .max_backpressure(1 << 20)
        .idle_timeout(Some(Duration::from_secs(300)))
        .uring_buffers(uring_buffers)
        .uring_buffer_size(uring_buffer_size)
        .uring_send_zc_threshold(zc_threshold)
        .direct_write_min(direct_write_min)
        .handler(Demo::default)
        .build()
    {
        Ok(s) => s,
        Err(e) => {
            log::error!("cannot start on {addr}: {e}");
            std::process::exit(1)
        }
    };
    let handle = server.handle();
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
