//! The C ABI driven from Rust, as C would drive it: NULL arguments, bad configuration, the panic
//! boundary, and a real server run on one thread, reached from another through connection ids.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::ptr::{null, null_mut};
use std::sync::mpsc;
use std::time::Duration;

use tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tungstenite::{Message as WsMessage, WebSocket};

use crate::config::*;
use crate::conn::*;
use crate::handler::*;
use crate::http::*;
use crate::server::*;
use crate::types::*;
use crate::worker::*;
use crate::*;

fn config(port: u16) -> sockeye_config {
    let mut c = std::mem::MaybeUninit::<sockeye_config>::uninit();
    assert_eq!(sockeye_config_default(c.as_mut_ptr()), SOCKEYE_OK);
    // SAFETY: sockeye_config_default returned OK, so it initialised the struct.
    let mut c = unsafe { c.assume_init() };
    c.port = port;
    c.workers = 2;
    c
}

fn new_server(
    cfg: &sockeye_config,
    cb: &sockeye_callbacks,
    user: *mut c_void,
) -> Result<*mut sockeye_server, sockeye_result> {
    let mut out = null_mut();
    match sockeye_server_new(cfg, cb, user, &mut out) {
        SOCKEYE_OK => Ok(out),
        e => Err(e),
    }
}

#[test]
fn the_tls_provider_is_the_engines() {
    // SAFETY: sockeye_tls_provider returns a static NUL-terminated string.
    let p = unsafe { CStr::from_ptr(sockeye_tls_provider()) };
    assert_eq!(p.to_str().unwrap(), sockeye::TlsConfig::PROVIDER);
    assert!(["ring", "aws-lc-rs"].contains(&sockeye::TlsConfig::PROVIDER));
    // CI's `unit` and `ring` stages say which provider the library must have.
    if let Ok(want) = std::env::var("SOCKEYE_EXPECT_PROVIDER") {
        assert_eq!(p.to_str().unwrap(), want);
    }
}

#[test]
fn strerror_covers_every_code() {
    // Every variant of the enum (the highest is SOCKEYE_ERR_MESSAGE_TOO_LARGE) has its own text.
    let mut seen = std::collections::HashSet::new();
    for code in 0..=SOCKEYE_ERR_MESSAGE_TOO_LARGE as c_int {
        // SAFETY: sockeye_strerror returns a static NUL-terminated string.
        let s = unsafe { CStr::from_ptr(sockeye_strerror(code)) }.to_str().unwrap();
        assert!(!s.is_empty() && s != "unknown error", "code {code}");
        assert!(seen.insert(s), "code {code} shares its text");
    }
    // SAFETY: as above.
    let s = unsafe { CStr::from_ptr(sockeye_strerror(-1)) };
    assert_eq!(s.to_str().unwrap(), "unknown error");
    // SAFETY: sockeye_version returns a static NUL-terminated string.
    let v = unsafe { CStr::from_ptr(sockeye_version()) };
    assert_eq!(v.to_str().unwrap(), env!("CARGO_PKG_VERSION"));
}

#[test]
fn defaults_match_the_engine() {
    let c = config(9001);
    let e = sockeye::Config::default();
    assert_eq!(c.max_message_size, e.limits.max_message_size);
    assert_eq!(u64::from(c.handshake_timeout_ms), e.limits.handshake_timeout.as_millis() as u64);
    assert_eq!(c.idle_timeout_ms != 0, e.idle_timeout.is_some());
    assert_eq!(c.max_backpressure, e.max_backpressure);
    assert_eq!(c.max_connections, e.max_connections);
    assert_eq!(c.worker_memory_budget, e.worker_memory_budget);
    assert_eq!(c.share_port, e.share_port);
    assert_eq!(c.buffer_cache, e.buffer_cache);
    assert!(!c.share_port);
    assert_eq!(c.backend, SOCKEYE_BACKEND_AUTO);
    // SAFETY: the default address is a static NUL-terminated string.
    let address = unsafe { CStr::from_ptr(c.address) };
    assert_eq!(address.to_str().unwrap(), "127.0.0.1");
    assert_eq!(c.backlog, e.backlog);
    assert_eq!(c.read_buffer_size, e.read_buffer_size);
    assert_eq!(u128::from(c.timer_tick_ms), e.timer_tick.as_millis());
    assert_eq!(c.uring_entries, e.uring_entries);
    assert_eq!(c.uring_buffers, e.uring_buffers);
    assert_eq!(c.uring_buffer_size, e.uring_buffer_size);
    assert_eq!(c.direct_write_min, e.direct_write_min);
    assert_eq!(c.uring_send_zc_threshold, e.uring_send_zc_threshold);
}

/// Every tuning field of the C struct reaches the engine's `Config` (a field left out of the
/// translation would silently keep its default).
#[test]
fn tuning_fields_reach_the_engine() {
    let mut c = config(0);
    c.backlog = 17;
    c.read_buffer_size = 8 << 10;
    c.timer_tick_ms = 7;
    c.uring_entries = 64;
    c.uring_buffers = 16;
    c.uring_buffer_size = 4 << 10;
    c.direct_write_min = usize::MAX;
    c.uring_send_zc_threshold = 1 << 20;
    // SAFETY: the address is a static NUL-terminated string, the other pointers NULL.
    let e = unsafe { c.engine_config() }.expect("valid configuration");
    assert_eq!(e.backlog, 17);
    assert_eq!(e.read_buffer_size, 8 << 10);
    assert_eq!(e.timer_tick, std::time::Duration::from_millis(7));
    assert_eq!(e.uring_entries, 64);
    assert_eq!(e.uring_buffers, 16);
    assert_eq!(e.uring_buffer_size, 4 << 10);
    assert_eq!(e.direct_write_min, usize::MAX);
    assert_eq!(e.uring_send_zc_threshold, 1 << 20);
}

#[test]
fn panics_become_error_codes() {
    assert_eq!(guard(|| -> sockeye_result { panic!("boom") }), SOCKEYE_ERR_PANIC);
    assert_eq!(guard(|| -> sockeye_send_status { panic!("boom") }), SOCKEYE_SEND_ERROR);
    assert!(guard(|| -> *const c_char { panic!("boom") }).is_null());
    assert_eq!(guard(|| -> u64 { panic!("boom") }), 0);
}

#[test]
fn null_pointers_are_refused() {
    assert_eq!(sockeye_config_default(null_mut()), SOCKEYE_ERR_NULL);
    let cfg = config(0);
    let mut out = null_mut();
    assert_eq!(sockeye_server_new(null(), null(), null_mut(), &mut out), SOCKEYE_ERR_NULL);
    assert_eq!(sockeye_server_new(&cfg, null(), null_mut(), null_mut()), SOCKEYE_ERR_NULL);
    assert!(out.is_null(), "out written on error");
    assert_eq!(sockeye_server_run(null_mut()), SOCKEYE_ERR_NULL);
    assert_eq!(sockeye_server_stop(null_mut()), SOCKEYE_ERR_NULL);
    assert_eq!(sockeye_server_local_port(null()), 0);
    assert_eq!(sockeye_server_worker_count(null()), 0);
    assert_eq!(
        sockeye_server_send(null_mut(), 0, SOCKEYE_OPCODE_TEXT, null(), 0),
        SOCKEYE_ERR_NULL
    );
    assert_eq!(sockeye_server_close_conn(null_mut(), 0, 1000, null()), SOCKEYE_ERR_NULL);
    sockeye_server_free(null_mut());

    let c: *mut sockeye_conn = null_mut();
    assert_eq!(sockeye_conn_send(c, SOCKEYE_OPCODE_TEXT, b"x".as_ptr(), 1), SOCKEYE_SEND_ERROR);
    assert_eq!(sockeye_conn_send_text(c, c"x".as_ptr(), 1), SOCKEYE_SEND_ERROR);
    assert_eq!(sockeye_conn_send_binary(c, null(), 0), SOCKEYE_SEND_ERROR);
    assert_eq!(sockeye_conn_ping(c, null(), 0), SOCKEYE_SEND_ERROR);
    assert_eq!(sockeye_conn_close(c, 1000, null()), SOCKEYE_ERR_NULL);
    assert_eq!(sockeye_conn_buffered_amount(c), 0);
    assert_eq!(sockeye_conn_id(c), 0);
    sockeye_conn_set_user_data(c, std::ptr::dangling_mut::<c_void>());
    assert!(sockeye_conn_user_data(c).is_null());

    assert!(sockeye_request_path(null(), null_mut()).is_null());
    assert!(sockeye_request_query(null(), null_mut()).is_null());
    assert!(sockeye_request_header(null(), c"host".as_ptr(), null_mut()).is_null());
    sockeye_upgrade_set_user_data(null_mut(), null_mut());
    assert_eq!(sockeye_upgrade_set_protocol(null_mut(), c"chat".as_ptr()), SOCKEYE_ERR_NULL);
}

#[test]
fn bad_configuration_is_refused() {
    let cb = sockeye_callbacks::default();
    let mut c = config(0);
    c.address = c"not an address".as_ptr();
    assert_eq!(new_server(&c, &cb, null_mut()), Err(SOCKEYE_ERR_ADDRESS));
    c.address = null();
    assert_eq!(new_server(&c, &cb, null_mut()), Err(SOCKEYE_ERR_NULL));
    let mut c = config(0);
    c.backend = 7;
    assert_eq!(new_server(&c, &cb, null_mut()), Err(SOCKEYE_ERR_INVALID_ARGUMENT));
    // Every field the engine's `Config::validate` refuses, through the C struct.
    let bad: &[fn(&mut sockeye_config)] = &[
        |c| c.handshake_timeout_ms = 0,
        |c| c.close_timeout_ms = 0,
        |c| c.idle_timeout_ms = 604_800_001,
        |c| c.max_connections = 0,
        |c| c.max_connections = (1 << 20) + 1,
        |c| c.workers = 4097,
        |c| c.max_message_size = 0,
        |c| c.max_frame_size = 0,
        |c| c.max_fragments = 0,
        |c| c.max_handshake_bytes = 511,
        |c| c.max_handshake_bytes = usize::MAX,
        |c| c.max_backpressure = 0,
        |c| c.worker_memory_budget = 0,
        |c| c.backlog = 0,
        |c| c.read_buffer_size = 4095,
        |c| c.timer_tick_ms = 0,
        |c| c.timer_tick_ms = 10_001,
        |c| c.uring_entries = 1000,
        |c| c.uring_entries = 32 << 10,
        |c| c.uring_buffers = 3,
        |c| c.uring_buffer_size = 1023,
        |c| {
            c.uring_buffers = 1 << 15;
            c.uring_buffer_size = 64 << 10; // a 2 GiB ring
        },
    ];
    for (i, set) in bad.iter().enumerate() {
        let mut c = config(0);
        set(&mut c);
        assert_eq!(new_server(&c, &cb, null_mut()), Err(SOCKEYE_ERR_INVALID_ARGUMENT), "case {i}");
    }
    let mut c = config(0);
    c.address = c"127.0.0.1:0".as_ptr(); // "host:port" wins over `port`
    c.port = 1;
    let s = new_server(&c, &cb, null_mut()).expect("server");
    assert_ne!(sockeye_server_local_port(s), 1);
    assert_eq!(sockeye_server_worker_count(s), 2);
    sockeye_server_free(s); // never run: closed at once
}

/// What the test's callbacks tell the test thread.
enum Event {
    Open(u64, *mut c_void),
    Close(u64, u16, String),
}

// SAFETY: the pointer is only compared, never dereferenced.
unsafe impl Send for Event {}

struct App {
    events: std::sync::Mutex<mpsc::Sender<Event>>,
}

unsafe extern "C" fn on_upgrade(
    _: *mut c_void,
    req: *const sockeye_request,
    up: *mut sockeye_upgrade,
) -> u16 {
    let mut len = 0;
    let path = sockeye_request_path(req, &mut len);
    // SAFETY: a NUL-terminated string of `len` bytes, valid during this callback.
    let path = unsafe { CStr::from_ptr(path) }.to_str().unwrap();
    assert_eq!(path.len(), len);
    if path != "/t" {
        return 404;
    }
    assert!(!sockeye_request_header(req, c"HOST".as_ptr(), null_mut()).is_null());
    assert!(sockeye_request_header(req, c"x-absent".as_ptr(), null_mut()).is_null());
    assert_eq!(
        sockeye_upgrade_set_protocol(up, c"not-offered".as_ptr()),
        SOCKEYE_ERR_INVALID_ARGUMENT
    );
    sockeye_upgrade_set_user_data(up, 0x5eed as *mut c_void);
    SOCKEYE_UPGRADE_ACCEPT
}

unsafe extern "C" fn on_open(user: *mut c_void, conn: *mut sockeye_conn) {
    // SAFETY: `user` is the `App` the test gave sockeye_server_new, alive while it runs.
    let app = unsafe { &*user.cast::<App>() };
    let ev = Event::Open(sockeye_conn_id(conn), sockeye_conn_user_data(conn));
    app.events.lock().unwrap().send(ev).unwrap();
}

unsafe extern "C" fn on_message(
    _: *mut c_void,
    conn: *mut sockeye_conn,
    op: sockeye_opcode,
    data: *const u8,
    len: usize,
) {
    assert_eq!(sockeye_conn_send(conn, 9, data, len), SOCKEYE_SEND_ERROR);
    assert_eq!(
        sockeye_conn_send(conn, SOCKEYE_OPCODE_TEXT, [0xffu8].as_ptr(), 1),
        SOCKEYE_SEND_ERROR
    );
    assert_eq!(sockeye_conn_close(conn, 1005, null()), SOCKEYE_ERR_INVALID_ARGUMENT);
    assert_eq!(sockeye_conn_send(conn, op, data, len), SOCKEYE_SEND_SENT);
}

unsafe extern "C" fn on_close(
    user: *mut c_void,
    conn: *mut sockeye_conn,
    code: u16,
    reason: *const c_char,
    len: usize,
) {
    // SAFETY: `user` is the `App`, alive while the server runs.
    let app = unsafe { &*user.cast::<App>() };
    // SAFETY: `len` bytes of UTF-8 followed by a NUL, valid during this callback.
    let r = unsafe { CStr::from_ptr(reason) }.to_str().unwrap().to_owned();
    assert_eq!(r.len(), len);
    assert_eq!(sockeye_conn_send_text(conn, c"late".as_ptr(), 4), SOCKEYE_SEND_CLOSED);
    app.events.lock().unwrap().send(Event::Close(sockeye_conn_id(conn), code, r)).unwrap();
}

fn recv(rx: &mpsc::Receiver<Event>) -> Event {
    rx.recv_timeout(Duration::from_secs(10)).expect("an event from the server")
}

fn read_msg<S: std::io::Read + std::io::Write>(ws: &mut WebSocket<S>) -> WsMessage {
    loop {
        match ws.read().expect("read") {
            WsMessage::Ping(_) | WsMessage::Pong(_) => continue,
            m => return m,
        }
    }
}

#[test]
fn a_server_runs_and_is_reached_from_another_thread() {
    let (tx, rx) = mpsc::channel();
    let app = Box::new(App { events: std::sync::Mutex::new(tx) });
    let cb = sockeye_callbacks {
        on_upgrade: Some(on_upgrade),
        on_open: Some(on_open),
        on_message: Some(on_message),
        on_drain: None,
        on_close: Some(on_close),
        ..sockeye_callbacks::default()
    };
    let mut cfg = config(0);
    cfg.backend = SOCKEYE_BACKEND_EPOLL;
    let user = std::ptr::from_ref(&*app).cast_mut().cast::<c_void>();
    let server = new_server(&cfg, &cb, user).expect("server");
    let port = sockeye_server_local_port(server);
    let addr = server as usize;
    let runner = std::thread::spawn(move || sockeye_server_run(addr as *mut sockeye_server));

    let (mut ws, _) = tungstenite::connect(format!("ws://127.0.0.1:{port}/t")).expect("handshake");
    let Event::Open(id, data) = recv(&rx) else { panic!("expected open") };
    assert_eq!(data as usize, 0x5eed, "user data from on_upgrade");

    ws.send(WsMessage::text("hi")).unwrap();
    assert_eq!(read_msg(&mut ws), WsMessage::text("hi"));

    // From this thread, by id.
    assert_eq!(
        sockeye_server_send(server, id, SOCKEYE_OPCODE_TEXT, b"pushed".as_ptr(), 6),
        SOCKEYE_OK
    );
    assert_eq!(read_msg(&mut ws), WsMessage::text("pushed"));
    assert_eq!(
        sockeye_server_send(server, id, SOCKEYE_OPCODE_BINARY, [1u8, 2].as_ptr(), 2),
        SOCKEYE_OK
    );
    assert_eq!(read_msg(&mut ws), WsMessage::binary(vec![1u8, 2]));
    assert_eq!(
        sockeye_server_send(server, id, SOCKEYE_OPCODE_TEXT, [0xffu8].as_ptr(), 1),
        SOCKEYE_ERR_UTF8
    );
    assert_eq!(sockeye_server_send(server, id, 3, null(), 0), SOCKEYE_ERR_INVALID_ARGUMENT);
    assert_eq!(
        sockeye_server_send(server, 99 << 48, SOCKEYE_OPCODE_TEXT, null(), 0),
        SOCKEYE_ERR_INVALID_ARGUMENT
    );
    assert_eq!(sockeye_server_close_conn(server, id, 999, null()), SOCKEYE_ERR_INVALID_ARGUMENT);

    assert_eq!(sockeye_server_close_conn(server, id, 4000, c"bye".as_ptr()), SOCKEYE_OK);
    match read_msg(&mut ws) {
        WsMessage::Close(Some(f)) => {
            assert_eq!(f.code, WsCloseCode::from(4000));
            assert_eq!(f.reason.as_str(), "bye");
        }
        m => panic!("expected a close frame, got {m:?}"),
    }
    let _ = ws.flush(); // tungstenite answers the close
    let Event::Close(cid, code, reason) = recv(&rx) else { panic!("expected close") };
    assert_eq!((cid, code), (id, 4000));
    assert!(reason.is_empty() || reason == "bye", "{reason:?}");
    drop(ws);
    // A stale id is ignored, not an error.
    assert_eq!(sockeye_server_send(server, id, SOCKEYE_OPCODE_TEXT, null(), 0), SOCKEYE_OK);

    // A wrong path is refused with the status on_upgrade chose.
    match tungstenite::connect(format!("ws://127.0.0.1:{port}/other")) {
        Err(tungstenite::Error::Http(r)) => assert_eq!(r.status(), 404),
        other => panic!("expected 404, got {other:?}"),
    }

    // Every worker's counters; a worker that does not exist is an error.
    let mut st = sockeye_stats::default();
    for w in 0..sockeye_server_worker_count(server) {
        assert_eq!(sockeye_server_stats(server, w, &mut st), SOCKEYE_OK);
    }
    assert_eq!(sockeye_server_stats(server, 2, &mut st), SOCKEYE_ERR_INVALID_ARGUMENT);
    assert_eq!(sockeye_server_stats(server, 0, null_mut()), SOCKEYE_ERR_NULL);
    assert_eq!(sockeye_server_stats(null(), 0, &mut st), SOCKEYE_ERR_NULL);

    assert_eq!(sockeye_server_stop(server), SOCKEYE_OK);
    assert_eq!(runner.join().unwrap(), SOCKEYE_OK);
    assert_eq!(sockeye_server_run(server), SOCKEYE_ERR_ALREADY_RUN);
    assert_eq!(
        sockeye_server_send(server, id, SOCKEYE_OPCODE_TEXT, null(), 0),
        SOCKEYE_ERR_STOPPED
    );
    sockeye_server_free(server);
    drop(app);
}

#[test]
fn freeing_a_running_server_stops_it() {
    let cb = sockeye_callbacks::default();
    let mut cfg = config(0);
    cfg.shutdown_timeout_ms = 200;
    let server = new_server(&cfg, &cb, null_mut()).expect("server");
    let port = sockeye_server_local_port(server);
    let addr = server as usize;
    let runner = std::thread::spawn(move || sockeye_server_run(addr as *mut sockeye_server));
    // A completed handshake proves the workers run (the listener alone answers before).
    let (_ws, _) = tungstenite::connect(format!("ws://127.0.0.1:{port}/")).expect("handshake");
    sockeye_server_free(server);
    assert_eq!(runner.join().unwrap(), SOCKEYE_OK);
}

#[test]
fn a_second_server_on_the_same_port_is_refused() {
    let cb = sockeye_callbacks::default();
    let first = new_server(&config(0), &cb, null_mut()).expect("first server");
    let port = sockeye_server_local_port(first);
    assert_eq!(new_server(&config(port), &cb, null_mut()), Err(SOCKEYE_ERR_ADDRESS_IN_USE));
    sockeye_server_free(first);

    // With share_port on both, both build; one without it still finds the port taken.

    let mut c = config(0);
    c.share_port = true;
    let a = new_server(&c, &cb, null_mut()).expect("a sharing server");
    c.port = sockeye_server_local_port(a);
    let b = new_server(&c, &cb, null_mut()).expect("a second sharing server");
    assert_eq!(sockeye_server_local_port(b), c.port);
    assert_eq!(new_server(&config(c.port), &cb, null_mut()), Err(SOCKEYE_ERR_ADDRESS_IN_USE));
    sockeye_server_free(b);
    sockeye_server_free(a);
}

/// `sockeye_stats` carries every field of the engine's `Stats`: the first thirteen in the
/// engine's order of the time, the ones the engine added later appended (the C struct only
/// ever grows at its end, so its ABI order differs from the engine's declaration order).
#[test]
fn stats_struct_matches_the_engine() {
    const C_ORDER: [&str; 27] = [
        "connections",
        "buffers_total",
        "buffers_in_kernel",
        "buffer_shortages",
        "memory_in_use",
        "handshake_timeouts",
        "idle_timeouts",
        "close_timeouts",
        "handler_panics",
        "sends_dropped",
        "budget_refusals",
        "protocol_errors",
        "bad_handshakes",
        // Pub/sub.
        "messages_in",
        "messages_out",
        "deliveries",
        "publish_drops",
        "backpressure_closes",
        "subscriptions",
        // TLS.
        "tls_handshakes",
        "tls_errors",
        // Cluster bridge.
        "cluster_published",
        "cluster_received",
        "cluster_queue_drops",
        "cluster_lost",
        "cluster_reconnects",
        "cluster_inbound_drops",
    ];
    let mut names: Vec<&str> = sockeye::Stats::default().fields().map(|(n, _)| n).collect();
    assert_eq!(std::mem::size_of::<sockeye_stats>(), C_ORDER.len() * std::mem::size_of::<usize>());
    let mut c = C_ORDER.to_vec();
    names.sort_unstable();
    c.sort_unstable();
    assert_eq!(names, c, "a field of the engine's Stats is missing from sockeye_stats");
}

// ----------------------------------------------------------------------------------------------
// What a C host reaches from a callback: the peer, the worker, the server, posts to a worker,
// control frames, plain HTTP, every offered subprotocol.
// ----------------------------------------------------------------------------------------------

/// What the parity test's callbacks report.
#[derive(Debug)]
enum Seen {
    Opened { id: u64, peer: String, worker: usize, server_matches: bool },
    Posted { worker: usize, status: sockeye_send_status },
    NotRun,
}

// SAFETY: plain data.
unsafe impl Send for Seen {}

struct Parity {
    events: std::sync::Mutex<mpsc::Sender<Seen>>,
    /// The server pointer, set before the server runs.
    server: std::sync::atomic::AtomicPtr<sockeye_server>,
}

fn parity(user: *mut c_void) -> &'static Parity {
    // SAFETY: `user` is the `Parity` the test gave sockeye_server_new; it outlives the server.
    unsafe { &*user.cast::<Parity>() }
}

fn cstr<'a>(p: *const c_char) -> &'a str {
    assert!(!p.is_null());
    // SAFETY: NUL-terminated strings from the library, valid during the callback.
    unsafe { CStr::from_ptr(p) }.to_str().unwrap()
}

unsafe extern "C" fn p_upgrade(
    _: *mut c_void,
    req: *const sockeye_request,
    up: *mut sockeye_upgrade,
) -> u16 {
    // Two headers, "one, two" and "three": every item, in order.
    let n = sockeye_request_protocol_count(req);
    let mut len = 0;
    let offered: Vec<&str> =
        (0..n).map(|i| cstr(sockeye_request_protocol(req, i, &mut len))).collect();
    assert!(sockeye_request_protocol(req, n, null_mut()).is_null());
    if offered == ["one", "two", "three"] {
        assert_eq!(len, "three".len());
        // (tungstenite, the client here, accepts an answer from its first header only.)
        assert_eq!(sockeye_upgrade_set_protocol(up, c"two".as_ptr()), SOCKEYE_OK);
    } else {
        assert_eq!(n, 0, "{offered:?}");
    }
    SOCKEYE_UPGRADE_ACCEPT
}

unsafe extern "C" fn p_open(user: *mut c_void, conn: *mut sockeye_conn) {
    let mut buf = [0 as c_char; SOCKEYE_PEER_ADDR_MAX];
    let mut len = 0;
    assert_eq!(sockeye_conn_peer_addr(conn, buf.as_mut_ptr(), buf.len(), &mut len), SOCKEYE_OK);
    let peer = cstr(buf.as_ptr()).to_owned();
    assert_eq!(peer.len(), len);
    let mut tiny = [0 as c_char; 4];
    assert_eq!(
        sockeye_conn_peer_addr(conn, tiny.as_mut_ptr(), tiny.len(), null_mut()),
        SOCKEYE_ERR_INVALID_ARGUMENT
    );
    let p = parity(user);
    let ev = Seen::Opened {
        id: sockeye_conn_id(conn),
        peer,
        worker: sockeye_conn_worker(conn),
        server_matches: sockeye_conn_server(conn)
            == p.server.load(std::sync::atomic::Ordering::Acquire),
    };
    p.events.lock().unwrap().send(ev).unwrap();
}

/// # Safety
/// `data` holds `len` readable bytes.
unsafe fn p_control(tag: &str, conn: *mut sockeye_conn, data: *const u8, len: usize) {
    // SAFETY: `len` payload bytes, valid during the callback.
    let payload = unsafe { std::slice::from_raw_parts(data, len) };
    let text = format!("{tag}:{}", std::str::from_utf8(payload).unwrap());
    sockeye_conn_send_text(conn, text.as_ptr().cast(), text.len());
}

unsafe extern "C" fn p_ping(_: *mut c_void, conn: *mut sockeye_conn, data: *const u8, len: usize) {
    // SAFETY: forwarded as received.
    unsafe { p_control("ping", conn, data, len) }
}

unsafe extern "C" fn p_pong(_: *mut c_void, conn: *mut sockeye_conn, data: *const u8, len: usize) {
    // SAFETY: forwarded as received.
    unsafe { p_control("pong", conn, data, len) }
}

/// The posted callback: sends "posted" to the connection whose id `arg` boxes, from the
/// worker it runs on, and frees `arg` either way.
unsafe extern "C" fn p_posted(user: *mut c_void, worker: *mut sockeye_worker, arg: *mut c_void) {
    // SAFETY: `arg` is the Box<u64> the test posted; this is its one call.
    let id = *unsafe { Box::from_raw(arg.cast::<u64>()) };
    let ev = if worker.is_null() {
        Seen::NotRun
    } else {
        assert_eq!(
            sockeye_worker_server(worker),
            parity(user).server.load(std::sync::atomic::Ordering::Acquire)
        );
        let status = sockeye_worker_send(worker, id, SOCKEYE_OPCODE_TEXT, b"posted".as_ptr(), 6);
        assert_eq!(sockeye_worker_send(worker, id, 9, null(), 0), SOCKEYE_SEND_ERROR);
        Seen::Posted { worker: sockeye_worker_index(worker), status }
    };
    parity(user).events.lock().unwrap().send(ev).unwrap();
}

unsafe extern "C" fn p_message(
    _: *mut c_void,
    conn: *mut sockeye_conn,
    _op: sockeye_opcode,
    data: *const u8,
    len: usize,
) {
    // SAFETY: `len` bytes, valid during the callback.
    let msg = unsafe { std::slice::from_raw_parts(data, len) };
    // "post W": post to worker W a callback that sends to this connection.
    if let Some(w) = msg.strip_prefix(b"post ") {
        let w: usize = std::str::from_utf8(w).unwrap().parse().unwrap();
        let arg = Box::into_raw(Box::new(sockeye_conn_id(conn))).cast::<c_void>();
        let rc = sockeye_server_post(sockeye_conn_server(conn), w, Some(p_posted), arg);
        assert_eq!(rc, SOCKEYE_OK);
    }
}

unsafe extern "C" fn p_http(
    _: *mut c_void,
    req: *const sockeye_request,
    resp: *mut sockeye_http_response,
) -> u16 {
    if cstr(sockeye_request_path(req, null_mut())) != "/status" {
        return 0;
    }
    assert_eq!(sockeye_request_protocol_count(req), 0);
    assert_eq!(
        sockeye_http_response_set_body(resp, c"text/plain".as_ptr(), b"up".as_ptr(), 2),
        SOCKEYE_OK
    );
    assert_eq!(
        sockeye_http_response_add_header(resp, c"Cache-Control".as_ptr(), c"no-store".as_ptr()),
        SOCKEYE_OK
    );
    assert_eq!(sockeye_http_response_add_header(resp, null(), c"x".as_ptr()), SOCKEYE_ERR_NULL);
    200
}

fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn recv_seen(rx: &mpsc::Receiver<Seen>) -> Seen {
    rx.recv_timeout(Duration::from_secs(10)).expect("an event from the server")
}

#[test]
fn a_callback_reaches_peer_worker_server_posts_and_http() {
    use tungstenite::client::IntoClientRequest;
    let (tx, rx) = mpsc::channel();
    let app = Box::new(Parity {
        events: std::sync::Mutex::new(tx),
        server: std::sync::atomic::AtomicPtr::new(null_mut()),
    });
    let cb = sockeye_callbacks {
        on_upgrade: Some(p_upgrade),
        on_open: Some(p_open),
        on_message: Some(p_message),
        on_ping: Some(p_ping),
        on_pong: Some(p_pong),
        on_http: Some(p_http),
        ..sockeye_callbacks::default()
    };
    let cfg = config(0); // 2 workers
    let user = std::ptr::from_ref(&*app).cast_mut().cast::<c_void>();
    let server = new_server(&cfg, &cb, user).expect("server");
    app.server.store(server, std::sync::atomic::Ordering::Release);
    let port = sockeye_server_local_port(server);
    let addr = server as usize;
    let runner = std::thread::spawn(move || sockeye_server_run(addr as *mut sockeye_server));

    // Every offered subprotocol, over two headers.
    let mut req = format!("ws://127.0.0.1:{port}/").into_client_request().unwrap();
    req.headers_mut().append("Sec-WebSocket-Protocol", "one, two".parse().unwrap());
    req.headers_mut().append("Sec-WebSocket-Protocol", "three".parse().unwrap());
    let (mut ws, resp) = tungstenite::connect(req).expect("handshake");
    assert_eq!(resp.headers()["Sec-WebSocket-Protocol"], "two");
    let Seen::Opened { id, peer, worker, server_matches } = recv_seen(&rx) else {
        panic!("expected open")
    };
    let local = match ws.get_ref() {
        tungstenite::stream::MaybeTlsStream::Plain(s) => s.local_addr().unwrap(),
        _ => unreachable!("plain ws://"),
    };
    assert_eq!(peer, local.to_string(), "the peer is the client's address");
    assert_eq!(worker, (id >> 52) as usize, "the worker is in the id's top 12 bits");
    assert!(worker < 2);
    assert!(server_matches, "sockeye_conn_server gives the caller's pointer");
    assert_ne!(id, 0);

    // Control frames reach C.
    ws.send(WsMessage::Ping(b"p1".to_vec().into())).unwrap();
    assert_eq!(read_msg(&mut ws), WsMessage::text("ping:p1"));
    ws.send(WsMessage::Pong(b"p2".to_vec().into())).unwrap();
    assert_eq!(read_msg(&mut ws), WsMessage::text("pong:p2"));

    // A post to each worker: on the connection's own, the send is queued there (SENT); on the
    // other, it is forwarded to the connection's worker.
    for w in 0..2 {
        ws.send(WsMessage::text(format!("post {w}"))).unwrap();
        let Seen::Posted { worker: ran_on, status } = recv_seen(&rx) else { panic!("posted") };
        assert_eq!(ran_on, w, "the callback ran on the worker it was posted to");
        let expect = if w == worker { SOCKEYE_SEND_SENT } else { SOCKEYE_SEND_FORWARDED };
        assert_eq!(status, expect, "worker {w}, connection on {worker}");
        assert_eq!(read_msg(&mut ws), WsMessage::text("posted"));
    }
    let arg = Box::into_raw(Box::new(0u64)).cast::<c_void>();
    assert_eq!(sockeye_server_post(server, 2, Some(p_posted), arg), SOCKEYE_ERR_INVALID_ARGUMENT);
    assert_eq!(sockeye_server_post(server, 0, None, arg), SOCKEYE_ERR_NULL);
    assert_eq!(sockeye_server_post(null_mut(), 0, Some(p_posted), arg), SOCKEYE_ERR_NULL);
    // SAFETY: refused three times, so still ours.
    drop(unsafe { Box::from_raw(arg.cast::<u64>()) });

    // Plain HTTP, answered by on_http with its header; declined paths get 400.
    let ok = http_get(port, "/status");
    assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
    assert!(ok.contains("\r\nCache-Control: no-store\r\n") && ok.ends_with("\r\n\r\nup"), "{ok}");
    assert!(http_get(port, "/other").starts_with("HTTP/1.1 400 "));

    drop(ws);
    assert_eq!(sockeye_server_stop(server), SOCKEYE_OK);
    assert_eq!(runner.join().unwrap(), SOCKEYE_OK);
    // Refused once stopped: not called, the argument stays ours.
    let arg = Box::into_raw(Box::new(0u64)).cast::<c_void>();
    assert_eq!(sockeye_server_post(server, 0, Some(p_posted), arg), SOCKEYE_ERR_STOPPED);
    // SAFETY: refused, so still ours.
    drop(unsafe { Box::from_raw(arg.cast::<u64>()) });
    assert!(rx.try_recv().is_err(), "a refused post ran");
    sockeye_server_free(server);
    drop(app);
}

/// A post that never gets to run (the server is freed first) is still called, once, with a
/// NULL worker, so its argument can be freed.
#[test]
fn a_post_that_cannot_run_is_called_with_a_null_worker() {
    let (tx, rx) = mpsc::channel();
    let app = Box::new(Parity {
        events: std::sync::Mutex::new(tx),
        server: std::sync::atomic::AtomicPtr::new(null_mut()),
    });
    let cb = sockeye_callbacks::default();
    let user = std::ptr::from_ref(&*app).cast_mut().cast::<c_void>();
    let server = new_server(&config(0), &cb, user).expect("server");
    let arg = Box::into_raw(Box::new(7u64)).cast::<c_void>();
    assert_eq!(sockeye_server_post(server, 1, Some(p_posted), arg), SOCKEYE_OK);
    assert!(rx.try_recv().is_err(), "nothing runs before the server does");
    sockeye_server_free(server); // never run: the queued post is discarded
    assert!(matches!(recv_seen(&rx), Seen::NotRun));
    assert!(rx.try_recv().is_err(), "called exactly once");
    drop(app);
}
