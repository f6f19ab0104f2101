//! The server of the subscription-memory benchmark: a connection to `/?n=K&topics=T`
//! subscribes on open to K topics out of T (`t0` .. `t{T-1}`, connection i taking
//! `(i*K + j) % T` for j in 0..K) and then stays idle. Run it with `loadgen idle` against
//! `/?n=0` and `/?n=10` over the same number of connections: the difference in RSS per
//! connection, divided by K, is what one subscription costs (benches/README.md).
//!
//! ```sh
//! subserver --addr 127.0.0.1:9400 [--backend epoll|io_uring]
//! ```

use std::sync::atomic::{AtomicUsize, Ordering};

use sockeye::{Backend, Conn, Handler, Message, Request, Server, Upgrade};

static NEXT: AtomicUsize = AtomicUsize::new(0);

struct Subs;

impl Handler for Subs {
    type Data = (usize, usize);

    fn on_upgrade(
        &mut self,
        req: &Request<'_>,
        _peer: std::net::SocketAddr,
    ) -> Upgrade<(usize, usize)> {
        let mut n = 0;
        let mut t = 1000;
        for kv in req.query().unwrap_or("").split('&') {
            match kv.split_once('=') {
                Some(("n", v)) => n = v.parse().unwrap_or(0),
                Some(("topics", v)) => t = v.parse().unwrap_or(1000).max(1),
                _ => {}
            }
        }
        Upgrade::accept((n, t))
    }

    fn on_open(&mut self, conn: &mut Conn<'_, (usize, usize)>) {
        let (n, t) = *conn.data();
        let i = NEXT.fetch_add(1, Ordering::Relaxed);
        for j in 0..n {
            let topic = format!("t{}", (i * n + j) % t);
            if conn.subscribe(topic).is_err() {
                return;
            }
        }
    }

    fn on_message(&mut self, _conn: &mut Conn<'_, (usize, usize)>, _msg: Message<'_>) {}
}

fn main() -> Result<(), sockeye::Error> {
    let mut addr = "127.0.0.1:9400".to_owned();
    let mut backend = Backend::Auto;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--addr" => addr = args.next().expect("--addr ADDR"),
            "--backend" => backend = args.next().expect("--backend B").parse().expect("backend"),
            other => panic!("unknown argument {other}"),
        }
    }
    let server = Server::builder()
        .listen(addr.as_str())
        .workers(1)
        .backend(backend)
        .idle_timeout(None)
        .handler(|| Subs)
        .build()?;
    eprintln!("subserver on ws://{} ({:?})", server.local_addr(), server.config().backend);
    server.run()
}
