//! Pub/sub through the C ABI, driven from Rust as C would drive it: NULL and out-of-range
//! arguments, `max_topic_len` through the C config, and a running server whose callbacks
//! subscribe and publish, published to from another thread.

use std::ffi::{c_char, c_void};
use std::net::TcpStream;
use std::ptr::{null, null_mut};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};

use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message as WsMessage, WebSocket};

use crate::config::*;
use crate::conn::*;
use crate::handler::*;
use crate::server::*;
use crate::topics::*;
use crate::types::*;
use crate::*;

const ROOM: &[u8] = b"room";

fn room() -> (*const c_char, usize) {
    (ROOM.as_ptr().cast(), ROOM.len())
}

fn config() -> sockeye_config {
    let mut c = std::mem::MaybeUninit::<sockeye_config>::uninit();
    assert_eq!(sockeye_config_default(c.as_mut_ptr()), SOCKEYE_OK);
    // SAFETY: sockeye_config_default returned OK, so it initialised the struct.
    let mut c = unsafe { c.assume_init() };
    c.port = 0;
    c.workers = 2;
    c.backend = SOCKEYE_BACKEND_EPOLL;
    c
}

fn new_server(
    cfg: &sockeye_config,
    cb: &sockeye_callbacks,
    user: *mut c_void,
) -> *mut sockeye_server {
    let mut out = null_mut();
    assert_eq!(sockeye_server_new(cfg, cb, user, &mut out), SOCKEYE_OK);
    out
}

#[test]
fn max_topic_len_is_in_the_c_config() {
    let c = config();
    assert_eq!(c.max_topic_len, sockeye::Config::default().max_topic_len);
    assert_eq!(c.max_topic_len, 256);
    let cb = sockeye_callbacks::default();
    for bad in [0, 65537, usize::MAX] {
        let mut c = config();
        c.max_topic_len = bad;
        let mut out = null_mut();
        assert_eq!(sockeye_server_new(&c, &cb, null_mut(), &mut out), SOCKEYE_ERR_INVALID_ARGUMENT);
        assert!(out.is_null());
    }
    let mut c = config();
    c.max_topic_len = 65536;
    let s = new_server(&c, &cb, null_mut());
    sockeye_server_free(s);
}

/// `cluster_url`: NULL by default; a string that is not a `redis://` URL is refused; a good
/// one builds (the bridge connects only once the server runs).
#[test]
fn cluster_url_is_in_the_c_config() {
    let c = config();
    assert!(c.cluster_url.is_null());
    let cb = sockeye_callbacks::default();
    for bad in [c"", c"http://127.0.0.1:6379", c"redis://"] {
        let mut c = config();
        c.cluster_url = bad.as_ptr();
        let mut out = null_mut();
        assert_eq!(
            sockeye_server_new(&c, &cb, null_mut(), &mut out),
            SOCKEYE_ERR_INVALID_ARGUMENT,
            "{bad:?}"
        );
        assert!(out.is_null());
    }
    let mut c = config();
    c.cluster_url = c"redis://127.0.0.1:1".as_ptr();
    let s = new_server(&c, &cb, null_mut());
    sockeye_server_free(s);
}

#[test]
fn null_and_bad_arguments_are_refused() {
    let c: *mut sockeye_conn = null_mut();
    let (t, n) = room();
    let d = b"x".as_ptr();
    assert_eq!(sockeye_conn_subscribe(c, t, n), SOCKEYE_ERR_NULL);
    assert!(!sockeye_conn_unsubscribe(c, t, n));
    assert!(!sockeye_conn_is_subscribed(c, t, n));
    assert_eq!(sockeye_conn_subscriber_count(c, t, n), 0);
    assert_eq!(sockeye_conn_publish(c, t, n, SOCKEYE_OPCODE_TEXT, d, 1), SOCKEYE_ERR_NULL);
    assert_eq!(
        sockeye_conn_publish_including_self(c, t, n, SOCKEYE_OPCODE_TEXT, d, 1),
        SOCKEYE_ERR_NULL
    );
    let s: *mut sockeye_server = null_mut();
    assert_eq!(sockeye_server_publish(s, t, n, SOCKEYE_OPCODE_TEXT, d, 1), SOCKEYE_ERR_NULL);
    assert_eq!(sockeye_server_subscriber_count(s, t, n), 0);

    // Against a live (never run) server: every argument check before anything is published.
    let server = new_server(&config(), &sockeye_callbacks::default(), null_mut());
    let p = |topic: *const c_char, tn: usize, op: sockeye_opcode, data: *const u8, len: usize| {
        sockeye_server_publish(server, topic, tn, op, data, len)
    };
    assert_eq!(p(t, n, SOCKEYE_OPCODE_TEXT, d, 1), SOCKEYE_OK, "nobody subscribes: not an error");
    assert_eq!(p(null(), 0, SOCKEYE_OPCODE_BINARY, null(), 0), SOCKEYE_OK, "empty topic and data");
    assert_eq!(p(null(), 1, SOCKEYE_OPCODE_TEXT, d, 1), SOCKEYE_ERR_NULL);
    assert_eq!(p(t, n, SOCKEYE_OPCODE_TEXT, null(), 1), SOCKEYE_ERR_NULL);
    assert_eq!(p(t, n, 0, d, 1), SOCKEYE_ERR_INVALID_ARGUMENT);
    assert_eq!(p(t, n, 9, d, 1), SOCKEYE_ERR_INVALID_ARGUMENT);
    assert_eq!(p(t, n, SOCKEYE_OPCODE_TEXT, [0xffu8].as_ptr(), 1), SOCKEYE_ERR_UTF8);
    let long = [b'a'; 257];
    assert_eq!(p(long.as_ptr().cast(), 257, SOCKEYE_OPCODE_TEXT, d, 1), SOCKEYE_ERR_TOPIC_TOO_LONG);
    assert_eq!(p(long.as_ptr().cast(), 256, SOCKEYE_OPCODE_TEXT, d, 1), SOCKEYE_OK);
    // Lengths no object can have are refused before the pointer is read.
    assert_eq!(p(t, usize::MAX, SOCKEYE_OPCODE_TEXT, d, 1), SOCKEYE_ERR_TOPIC_TOO_LONG);
    assert_eq!(p(t, n, SOCKEYE_OPCODE_BINARY, d, usize::MAX), SOCKEYE_ERR_MESSAGE_TOO_LARGE);
    assert_eq!(sockeye_server_subscriber_count(server, t, n), 0);
    assert_eq!(sockeye_server_subscriber_count(server, null(), 5), 0);
    assert_eq!(sockeye_server_subscriber_count(server, t, usize::MAX), 0);
    assert_eq!(sockeye_server_stop(server), SOCKEYE_OK);
    assert_eq!(p(t, n, SOCKEYE_OPCODE_TEXT, d, 1), SOCKEYE_ERR_STOPPED);
    sockeye_server_free(server);
}

/// What the callbacks report to the test thread.
struct App {
    /// `sockeye_conn_subscribe` results in `on_open`: the room, the room again, a topic over
    /// `max_topic_len` (8 here).
    opened: Mutex<mpsc::Sender<[sockeye_result; 3]>>,
    /// `sockeye_conn_subscribe` in `on_close`: must be `SOCKEYE_ERR_CLOSED`.
    closed: Mutex<mpsc::Sender<sockeye_result>>,
    /// Argument checks made inside `on_message` that failed.
    bad: AtomicUsize,
}

fn app<'a>(user: *mut c_void) -> &'a App {
    // SAFETY: `user` is the `App` the test gave sockeye_server_new, alive while it runs.
    unsafe { &*user.cast::<App>() }
}

unsafe extern "C" fn on_open(user: *mut c_void, conn: *mut sockeye_conn) {
    let (t, n) = room();
    let first = sockeye_conn_subscribe(conn, t, n);
    let again = sockeye_conn_subscribe(conn, t, n);
    let long = sockeye_conn_subscribe(conn, c"nine char".as_ptr(), 9);
    app(user).opened.lock().unwrap().send([first, again, long]).unwrap();
}

fn reply(conn: *mut sockeye_conn, text: &str) {
    assert_eq!(sockeye_conn_send_text(conn, text.as_ptr().cast(), text.len()), SOCKEYE_SEND_SENT);
}

/// "leave": unsubscribe, answer "left"; "count": answer this worker's subscriber count;
/// "others:X": publish X to the others; anything else: publish it to everyone.
unsafe extern "C" fn on_message(
    user: *mut c_void,
    conn: *mut sockeye_conn,
    op: sockeye_opcode,
    data: *const u8,
    len: usize,
) {
    let (t, n) = room();
    // SAFETY: `len` bytes at `data`, valid during this callback.
    let msg = unsafe { std::slice::from_raw_parts(data, len) };
    let nine = b"nine char";
    let ok = sockeye_conn_publish(conn, t, n, 7, data, len) == SOCKEYE_ERR_INVALID_ARGUMENT
        && sockeye_conn_publish(conn, nine.as_ptr().cast(), 9, op, data, len)
            == SOCKEYE_ERR_TOPIC_TOO_LONG
        && sockeye_conn_publish(conn, null(), 1, op, data, len) == SOCKEYE_ERR_NULL
        && sockeye_conn_publish(conn, t, n, SOCKEYE_OPCODE_TEXT, [0xffu8].as_ptr(), 1)
            == SOCKEYE_ERR_UTF8;
    if !ok {
        app(user).bad.fetch_add(1, Ordering::Relaxed);
    }
    match msg {
        b"leave" => {
            let first = sockeye_conn_unsubscribe(conn, t, n);
            let second = sockeye_conn_unsubscribe(conn, t, n);
            let still = sockeye_conn_is_subscribed(conn, t, n);
            reply(conn, &format!("left {first} {second} {still}"));
        }
        b"count" => reply(conn, &sockeye_conn_subscriber_count(conn, t, n).to_string()),
        _ => {
            let r = match msg.strip_prefix(b"others:") {
                Some(rest) => sockeye_conn_publish(conn, t, n, op, rest.as_ptr(), rest.len()),
                None => sockeye_conn_publish_including_self(conn, t, n, op, data, len),
            };
            assert_eq!(r, SOCKEYE_OK);
        }
    }
}

unsafe extern "C" fn on_close(
    user: *mut c_void,
    conn: *mut sockeye_conn,
    _: u16,
    _: *const c_char,
    _: usize,
) {
    let (t, n) = room();
    app(user).closed.lock().unwrap().send(sockeye_conn_subscribe(conn, t, n)).unwrap();
}

type Ws = WebSocket<MaybeTlsStream<TcpStream>>;

fn text(ws: &mut Ws) -> String {
    loop {
        match ws.read().expect("read") {
            WsMessage::Text(t) => return t.as_str().to_owned(),
            WsMessage::Ping(_) | WsMessage::Pong(_) => continue,
            m => panic!("expected text, got {m:?}"),
        }
    }
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Publishes from a thread of its own, as a C program's feed thread would.
fn publish_from_thread(server: *mut sockeye_server, msg: &'static str) -> sockeye_result {
    let addr = server as usize;
    std::thread::spawn(move || {
        let (t, n) = room();
        let s = addr as *mut sockeye_server;
        sockeye_server_publish(s, t, n, SOCKEYE_OPCODE_TEXT, msg.as_ptr(), msg.len())
    })
    .join()
    .unwrap()
}

#[test]
fn callbacks_subscribe_and_publish_and_other_threads_publish() {
    let (open_tx, open_rx) = mpsc::channel();
    let (close_tx, close_rx) = mpsc::channel();
    let app = Box::new(App {
        opened: Mutex::new(open_tx),
        closed: Mutex::new(close_tx),
        bad: AtomicUsize::new(0),
    });
    let cb = sockeye_callbacks {
        on_upgrade: None,
        on_open: Some(on_open),
        on_message: Some(on_message),
        on_drain: None,
        on_close: Some(on_close),
        ..sockeye_callbacks::default()
    };
    let mut cfg = config();
    cfg.max_topic_len = 8;
    let user = std::ptr::from_ref(&*app).cast_mut().cast::<c_void>();
    let server = new_server(&cfg, &cb, user);
    let port = sockeye_server_local_port(server);
    let addr = server as usize;
    let runner = std::thread::spawn(move || sockeye_server_run(addr as *mut sockeye_server));

    let mut ws: Vec<Ws> = (0..3)
        .map(|_| tungstenite::connect(format!("ws://127.0.0.1:{port}/")).expect("handshake").0)
        .collect();
    for _ in 0..3 {
        let r = open_rx.recv_timeout(Duration::from_secs(10)).expect("on_open");
        assert_eq!(r, [SOCKEYE_OK, SOCKEYE_OK, SOCKEYE_ERR_TOPIC_TOO_LONG]);
    }
    let (t, n) = room();
    assert_eq!(sockeye_server_subscriber_count(server, t, n), 3);
    assert_eq!(sockeye_server_subscriber_count(server, c"other".as_ptr(), 5), 0);

    // From another thread: every subscriber, on both workers.
    assert_eq!(publish_from_thread(server, "from a thread"), SOCKEYE_OK);
    for w in &mut ws {
        assert_eq!(text(w), "from a thread");
    }

    // Including the sender.
    ws[0].send(WsMessage::text("hello")).unwrap();
    for w in &mut ws {
        assert_eq!(text(w), "hello");
    }

    // Everyone but the sender: client 1 never sees "x"; its next message is the marker.
    ws[1].send(WsMessage::text("others:x")).unwrap();
    assert_eq!(text(&mut ws[0]), "x");
    assert_eq!(text(&mut ws[2]), "x");
    assert_eq!(publish_from_thread(server, "marker"), SOCKEYE_OK);
    for w in &mut ws {
        assert_eq!(text(w), "marker");
    }

    // This worker's count lies between 1 (the asker) and all 3.
    ws[0].send(WsMessage::text("count")).unwrap();
    let local: usize = text(&mut ws[0]).parse().unwrap();
    assert!((1..=3).contains(&local), "{local}");

    // Unsubscribed: the server-wide count drops, and publishes pass client 2 by.
    ws[2].send(WsMessage::text("leave")).unwrap();
    assert_eq!(text(&mut ws[2]), "left true false false");
    assert_eq!(sockeye_server_subscriber_count(server, t, n), 2);
    assert_eq!(publish_from_thread(server, "after leave"), SOCKEYE_OK);
    assert_eq!(text(&mut ws[0]), "after leave");
    assert_eq!(text(&mut ws[1]), "after leave");
    ws[2].send(WsMessage::text("count")).unwrap();
    let n2: usize = text(&mut ws[2]).parse().unwrap();
    assert!(n2 <= 2, "{n2}");

    // The new counters, summed over the workers (published at the end of each loop turn).
    let sum = |f: fn(&sockeye_stats) -> usize| {
        (0..sockeye_server_worker_count(server))
            .map(|w| {
                let mut st = sockeye_stats::default();
                assert_eq!(sockeye_server_stats(server, w, &mut st), SOCKEYE_OK);
                f(&st)
            })
            .sum::<usize>()
    };
    // 3 + 3 + 2 + 3 + 2 deliveries; messages in: hello, others:x, count, leave, count.
    wait_for("the counters", || {
        sum(|s| s.deliveries) == 13
            && sum(|s| s.messages_in) == 5
            && sum(|s| s.messages_out) == 13 + 3 // the deliveries and the three replies
            && sum(|s| s.subscriptions) == 2
    });
    assert_eq!(sum(|s| s.publish_drops), 0);
    assert_eq!(sum(|s| s.backpressure_closes), 0);
    assert_eq!(app.bad.load(Ordering::Relaxed), 0, "argument checks inside on_message");

    // Subscriptions end with the connection; on_close can no longer subscribe.
    for mut w in ws {
        w.close(None).unwrap();
        while w.read().is_ok() {}
    }
    for _ in 0..3 {
        let r = close_rx.recv_timeout(Duration::from_secs(10)).expect("on_close");
        assert_eq!(r, SOCKEYE_ERR_CLOSED);
    }
    wait_for("no subscriber", || sockeye_server_subscriber_count(server, t, n) == 0);

    assert_eq!(sockeye_server_stop(server), SOCKEYE_OK);
    assert_eq!(runner.join().unwrap(), SOCKEYE_OK);
    assert_eq!(publish_from_thread(server, "late"), SOCKEYE_ERR_STOPPED);
    sockeye_server_free(server);
    drop(app);
}
