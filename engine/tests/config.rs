//! What `ServerBuilder::build` refuses before binding anything: an unparsable listen address,
//! any setting outside its documented range (the one `Config::validate`), and a port something
//! else already listens on unless both sides opted into sharing it.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use sockeye::{Config, Conn, Handler, Message, Server, ServerBuilder};

struct Nop;

impl Handler for Nop {
    type Data = ();
    fn on_message(&mut self, _: &mut Conn<'_, ()>, _: Message<'_>) {}
}

/// One worker on a free port: cheap to build, and binds nothing anyone else uses.
fn base() -> ServerBuilder<()> {
    Server::builder().listen("127.0.0.1:0").workers(1)
}

fn build(b: ServerBuilder<()>) -> Result<Server<Nop>, sockeye::Error> {
    b.handler(|| Nop).build()
}

#[track_caller]
fn refused(b: ServerBuilder<()>, kind: io::ErrorKind, names: &str) {
    match build(b) {
        Ok(s) => panic!("built a server on {} where {names:?} should be refused", s.local_addr()),
        Err(e) => {
            assert_eq!(e.kind(), kind, "{names}: {e}");
            assert!(e.to_string().contains(names), "the error does not name {names:?}: {e}");
        }
    }
}

#[test]
fn unparsable_listen_address_fails_build() {
    for bad in ["not-an-address", "127.0.0.1", "127.0.0.1:99999", "[::1]"] {
        refused(Server::builder().listen(bad).workers(1), io::ErrorKind::InvalidInput, bad);
    }
    // The last call wins, either way.
    let s = build(Server::builder().listen("nope").listen("127.0.0.1:0").workers(1))
        .expect("a good address after a bad one");
    assert_ne!(s.local_addr().port(), 0);
    refused(
        Server::builder().listen("127.0.0.1:0").listen("nope").workers(1),
        io::ErrorKind::InvalidInput,
        "nope",
    );
    // A whole configuration brings its own address.
    let cfg = Config { addr: SocketAddr::from(([127, 0, 0, 1], 0)), ..Config::default() };
    build(Server::builder().listen("nope").config(cfg).workers(1)).expect("config's address");
}

type Set = fn(ServerBuilder<()>) -> ServerBuilder<()>;

/// Every setting that would break every connection (or the engine), with the field the error
/// must name.
const BAD: &[(&str, Set)] = &[
    ("max_connections", |b| b.max_connections(0)),
    ("max_connections", |b| b.max_connections((1 << 20) + 1)),
    ("workers", |b| b.workers(4097)),
    ("uring_buffer_size", |b| b.uring_buffer_size(100)),
    ("uring_buffer_size", |b| b.uring_buffer_size(usize::MAX)),
    // 0 (automatic) may mean 128 buffers: 128 × 16 MiB is over the 1 GiB limit.
    ("uring_buffers", |b| b.uring_buffers(0).uring_buffer_size(16 << 20)),
    ("uring_buffers", |b| b.uring_buffers(1)),
    ("uring_buffers", |b| b.uring_buffers(100)),
    ("uring_buffers", |b| b.uring_buffers(u16::MAX)),
    ("uring_buffers", |b| b.uring_buffers(1 << 15).uring_buffer_size(1 << 20)),
    ("uring_entries", |b| b.uring_entries(0)),
    ("uring_entries", |b| b.uring_entries(1000)),
    ("uring_entries", |b| b.uring_entries(1 << 20)),
    ("backlog", |b| b.backlog(0)),
    ("backlog", |b| b.backlog(-1)),
    ("read_buffer_size", |b| b.read_buffer_size(0)),
    ("read_buffer_size", |b| b.read_buffer_size(100)),
    ("read_buffer_size", |b| b.read_buffer_size(usize::MAX)),
    ("max_frame_size", |b| b.max_frame_size(0)),
    ("max_message_size", |b| b.max_message_size(0)),
    ("max_fragments", |b| b.max_fragments(0)),
    ("max_handshake_bytes", |b| b.max_handshake_bytes(0)),
    ("max_handshake_bytes", |b| b.max_handshake_bytes(511)),
    ("max_handshake_bytes", |b| b.max_handshake_bytes((1 << 20) + 1)),
    ("max_handshake_bytes", |b| b.max_handshake_bytes(usize::MAX)),
    ("handshake_timeout", |b| b.handshake_timeout(Duration::ZERO)),
    ("handshake_timeout", |b| b.handshake_timeout(Duration::MAX)),
    ("close_timeout", |b| b.close_timeout(Duration::ZERO)),
    ("close_timeout", |b| b.close_timeout(Duration::MAX)),
    ("shutdown_timeout", |b| b.shutdown_timeout(Duration::MAX)),
    ("idle_timeout", |b| b.idle_timeout(Some(Duration::ZERO))),
    ("idle_timeout", |b| b.idle_timeout(Some(Duration::MAX))),
    ("auto_ping", |b| b.auto_ping(Some(Duration::ZERO))),
    ("auto_ping", |b| b.auto_ping(Some(Duration::MAX))),
    ("timer_tick", |b| b.timer_tick(Duration::ZERO)),
    ("timer_tick", |b| b.timer_tick(Duration::from_micros(999))),
    ("timer_tick", |b| b.timer_tick(Duration::from_secs(11))),
    ("worker_memory_budget", |b| b.worker_memory_budget(0)),
    ("max_backpressure", |b| b.max_backpressure(0)),
];

/// The edges of every range, which must still build.
const GOOD: &[Set] = &[
    |b| b.max_connections(1),
    |b| b.max_connections(1 << 20),
    |b| b.workers(0),
    |b| b.uring_buffer_size(1024).uring_buffers(2),
    |b| b.uring_buffer_size(0).uring_buffers(2),
    |b| b.uring_buffers(0).uring_buffer_size(8 << 20),
    |b| b.uring_buffers(1 << 15).uring_buffer_size(32 << 10),
    |b| b.uring_entries(2),
    |b| b.uring_entries(16384),
    |b| b.read_buffer_size(4096),
    |b| b.max_frame_size(1).max_message_size(1).max_fragments(1),
    |b| b.max_frame_size(u64::MAX).max_message_size(u64::MAX),
    |b| b.max_handshake_bytes(512),
    |b| b.max_handshake_bytes(1 << 20),
    |b| b.handshake_timeout(Duration::from_millis(1)).close_timeout(Duration::from_millis(1)),
    |b| b.shutdown_timeout(Duration::ZERO),
    |b| b.idle_timeout(None).auto_ping(None),
    |b| b.idle_timeout(Some(Duration::from_millis(1))).auto_ping(Some(Duration::from_millis(1))),
    |b| b.timer_tick(Duration::from_millis(1)),
    |b| b.timer_tick(Duration::from_secs(10)),
    |b| b.worker_memory_budget(1).max_backpressure(1),
];

#[test]
fn settings_that_break_every_connection_are_refused() {
    for (i, (field, set)) in BAD.iter().enumerate() {
        match build(set(base())) {
            Ok(_) => panic!("case {i}: built a server with a bad {field}"),
            Err(e) => {
                assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "case {i} ({field}): {e}");
                assert!(e.to_string().contains(field), "case {i}: {e:?} does not name {field}");
            }
        }
    }
    for (i, set) in GOOD.iter().enumerate() {
        if let Err(e) = build(set(base())) {
            panic!("case {i}: a setting at the edge of its range was refused: {e}");
        }
    }
}

#[test]
fn validate_names_the_field() {
    assert_eq!(Config::default().validate(), Ok(()));
    let bad = Config { max_connections: 0, ..Config::default() };
    let e = bad.validate().expect_err("max_connections 0");
    assert_eq!(e.field(), "max_connections");
    let io: io::Error = e.clone().into();
    assert_eq!(io.kind(), io::ErrorKind::InvalidInput);
    assert_eq!(io.to_string(), e.to_string());
    // The first bad field (in declaration order) is the one reported.
    let two = Config { workers: 5000, max_connections: 0, ..Config::default() };
    assert_eq!(two.validate().expect_err("two bad fields").field(), "workers");
}

#[test]
fn a_second_server_on_the_same_port_fails_with_addr_in_use() {
    let first = build(base().workers(2)).expect("the first server");
    let addr = first.local_addr();
    refused(Server::builder().listen(addr).workers(2), io::ErrorKind::AddrInUse, &addr.to_string());
    // One worker or many: the port is taken either way.
    refused(Server::builder().listen(addr).workers(1), io::ErrorKind::AddrInUse, "in use");
    drop(first);
    // Freed with the server: it can be taken again.
    build(Server::builder().listen(addr).workers(2)).expect("the port once freed");
}

#[test]
fn anything_listening_takes_the_port() {
    let plain = TcpListener::bind("127.0.0.1:0").expect("a plain listener");
    let addr = plain.local_addr().expect("its address");
    refused(Server::builder().listen(addr).workers(1), io::ErrorKind::AddrInUse, "in use");
    // A socket without SO_REUSEPORT cannot be joined, sharing or not.
    refused(
        Server::builder().listen(addr).workers(1).share_port(true),
        io::ErrorKind::AddrInUse,
        "in use",
    );
}

#[test]
fn servers_that_share_the_port_both_build() {
    let first = build(base().workers(2).share_port(true)).expect("the first server");
    let addr = first.local_addr();
    let second = build(Server::builder().listen(addr).workers(2).share_port(true))
        .expect("a second server sharing the port");
    assert_eq!(second.local_addr(), addr);
    // A third that did not ask to share still finds the port taken.
    refused(Server::builder().listen(addr).workers(1), io::ErrorKind::AddrInUse, "in use");
}

/// `Server::config` reports what is in force: a `workers(0)` server says how many workers it
/// started (one per core), not 0; the backend is resolved; the port asked as 0 is the bound one.
#[test]
fn server_config_reports_the_resolved_worker_count() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()).min(4096);
    let s = build(Server::builder().listen("127.0.0.1:0").workers(0)).expect("workers(0)");
    assert_eq!(s.config().workers, cores, "workers(0) resolves to one per core");
    assert_eq!(s.config().worker_count(), cores);
    assert_eq!(s.handle().workers(), cores);
    assert_ne!(s.config().backend, sockeye::Backend::Auto, "the backend is resolved");
    assert_eq!(s.config().addr, s.local_addr());
    assert_ne!(s.local_addr().port(), 0);
    let two = build(base().workers(2)).expect("workers(2)");
    assert_eq!(two.config().workers, 2);
}

/// The defaults are the ones the rendered docs of `Config`, `Limits` and the builder's setters
/// state (a change here must change those docs too).
#[test]
fn defaults_are_the_documented_ones() {
    let c = Config::default();
    assert_eq!(c.addr, SocketAddr::from(([127, 0, 0, 1], 9001)));
    assert_eq!(c.workers, 0);
    assert_eq!(c.backend, sockeye::Backend::Auto);
    let l = c.limits;
    assert_eq!(l, sockeye::Limits::default());
    assert_eq!(l.max_frame_size, 16 << 20);
    assert_eq!(l.max_message_size, 16 << 20);
    assert_eq!(l.max_fragments, 131_072);
    assert_eq!(l.max_handshake_bytes, 8192);
    assert_eq!(l.handshake_timeout, Duration::from_secs(10));
    assert_eq!(l.close_timeout, Duration::from_secs(5));
    assert_eq!(c.idle_timeout, Some(Duration::from_secs(120)));
    assert_eq!(c.auto_ping, None);
    assert_eq!(c.max_backpressure, 16 << 20);
    assert!(!c.close_on_backpressure_limit);
    assert_eq!(c.max_topic_len, 256);
    assert_eq!(c.max_connections, 1 << 20);
    assert_eq!(c.worker_memory_budget, 256 << 20);
    assert_eq!(c.buffer_cache, 16 << 20);
    assert!(!c.share_port);
    assert_eq!(c.backlog, 4096);
    assert_eq!(c.read_buffer_size, 256 << 10);
    assert_eq!(c.shutdown_timeout, Duration::from_secs(5));
    assert_eq!(c.timer_tick, Duration::from_millis(250));
    assert_eq!(c.uring_entries, 1024);
    assert_eq!(c.uring_buffers, 0);
    assert_eq!(c.uring_buffer_size, 0, "automatic");
    assert_eq!(c.direct_write_min, 32 << 10);
    assert_eq!(c.uring_send_zc_threshold, usize::MAX);
}

/// `cluster_url`: `None` by default; a `redis://` URL needs the `cluster` feature (refused
/// without it, naming the field); anything else is refused either way.
#[test]
fn cluster_url_needs_the_feature_and_a_redis_url() {
    assert_eq!(Config::default().cluster_url, None);
    let ok = Config { cluster_url: Some("redis://127.0.0.1:6379".into()), ..Config::default() };
    let r = ok.validate();
    if cfg!(feature = "cluster") {
        r.expect("a redis:// URL with the feature");
    } else {
        let e = r.expect_err("no feature, no cluster_url");
        assert_eq!(e.field(), "cluster_url");
        assert!(e.reason().contains("`cluster` feature"), "{e}");
    }
    for bad in ["http://127.0.0.1:6379", "127.0.0.1:6379", ""] {
        let c = Config { cluster_url: Some(bad.into()), ..Config::default() };
        assert_eq!(c.validate().expect_err(bad).field(), "cluster_url", "{bad:?}");
    }
}
