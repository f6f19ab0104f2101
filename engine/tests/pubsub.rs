//! Pub/sub over real sockets, two workers, on whichever backend `SOCKEYE_BACKEND` picks:
//! subscribers on every worker get every message in per-publisher order (publishers on
//! either worker, and a thread outside the workers); unsubscribing stops delivery and a closed
//! subscriber leaves the index; a subscriber that never reads slows no one and holds no more
//! than its limit.

mod common;

use std::collections::HashMap;
use std::thread;
use std::time::Duration;

use common::{backend_name, start, wait_until, ws_connect, Ws};
use sockeye::{Conn, Handler, Message};
use tungstenite::Message as WsMessage;

/// "sub T" subscribes (answers "subscribed W", W the worker), "unsub T" unsubscribes (answers
/// "unsubscribed"), "pub T REST" publishes REST to T, the sender included.
struct Topics;

impl Handler for Topics {
    type Data = ();
    fn on_message(&mut self, conn: &mut Conn<'_, ()>, msg: Message<'_>) {
        let Message::Text(t) = msg else { return };
        if let Some(topic) = t.strip_prefix("sub ") {
            conn.subscribe(topic).expect("subscribe");
            let w = conn.id().worker();
            conn.send_text(&format!("subscribed {w}"));
        } else if let Some(topic) = t.strip_prefix("unsub ") {
            assert!(conn.unsubscribe(topic));
            conn.send_text("unsubscribed");
        } else if let Some((topic, rest)) = t.strip_prefix("pub ").and_then(|r| r.split_once(' ')) {
            conn.publish_including_self(topic, rest).expect("publish");
        }
    }
}

fn text(ws: &mut Ws) -> String {
    match common::ws_read_data(ws) {
        WsMessage::Text(t) => t.to_string(),
        m => panic!("[{}] expected text, got {m:?}", backend_name()),
    }
}

/// Subscribes a new client to `topic`; returns it and the worker that holds it.
fn subscriber(addr: std::net::SocketAddr, topic: &str) -> (Ws, usize) {
    let mut ws = ws_connect(addr);
    ws.send(WsMessage::text(format!("sub {topic}"))).expect("send");
    let r = text(&mut ws);
    let w = r.strip_prefix("subscribed ").and_then(|w| w.parse().ok()).expect("subscribed W");
    (ws, w)
}

#[test]
fn subscribers_on_every_worker_get_every_message_in_publisher_order() {
    let srv = start(|b| b, || Topics);
    // Enough subscribers that both workers hold some.
    let mut subs = Vec::new();
    let mut on = [0usize; 2];
    while subs.len() < 6 || on.contains(&0) {
        assert!(subs.len() < 64, "[{}] the kernel never spread connections", backend_name());
        let (ws, w) = subscriber(srv.addr, "news");
        on[w] += 1;
        subs.push(ws);
    }
    assert!(
        wait_until(Duration::from_secs(5), || srv.handle.subscriber_count("news") == subs.len()),
        "[{}] subscriber_count says {} of {}",
        backend_name(),
        srv.handle.subscriber_count("news"),
        subs.len()
    );
    // Three publishing clients (wherever they land) and a thread outside the workers.
    const N: usize = 300;
    let mut pubs: Vec<Ws> = (0..3).map(|_| ws_connect(srv.addr)).collect();
    let handle = srv.handle.clone();
    let outside = thread::spawn(move || {
        for i in 0..N {
            handle.publish("news", format!("H {i}").as_str()).expect("publish");
        }
    });
    for i in 0..N {
        for (p, ws) in pubs.iter_mut().enumerate() {
            ws.send(WsMessage::text(format!("pub news P{p} {i}"))).expect("publish");
        }
    }
    outside.join().expect("publisher thread");
    for (s, ws) in subs.iter_mut().enumerate() {
        let mut next: HashMap<String, usize> = HashMap::new();
        for _ in 0..4 * N {
            let m = text(ws);
            let (who, i) = m.split_once(' ').expect("WHO I");
            let i: usize = i.parse().expect("a number");
            let want = next.entry(who.to_owned()).or_insert(0);
            assert_eq!(i, *want, "[{}] subscriber {s}: {who} out of order", backend_name());
            *want += 1;
        }
        assert_eq!(next.len(), 4, "[{}] subscriber {s} heard {next:?}", backend_name());
    }
    let deliveries: usize = srv.handle.stats().iter().map(|s| s.deliveries).sum();
    assert!(deliveries >= 4 * N * subs.len(), "[{}] {deliveries} deliveries", backend_name());
}

#[test]
fn unsubscribe_stops_delivery_and_a_closed_subscriber_leaves_the_index() {
    let srv = start(|b| b, || Topics);
    let (mut a, _) = subscriber(srv.addr, "room");
    let (mut b, _) = subscriber(srv.addr, "room");
    let (mut c, _) = subscriber(srv.addr, "room");
    assert_eq!(srv.handle.subscriber_count("room"), 3);
    b.send(WsMessage::text("unsub room")).expect("send");
    assert_eq!(text(&mut b), "unsubscribed");
    c.close(None).expect("close");
    while c.read().is_ok() {}
    assert!(
        wait_until(Duration::from_secs(5), || srv.handle.subscriber_count("room") == 1),
        "[{}] subscriber_count stays at {}",
        backend_name(),
        srv.handle.subscriber_count("room")
    );
    a.send(WsMessage::text("pub room only-a")).expect("send");
    assert_eq!(text(&mut a), "only-a");
    // b hears nothing more: its next message is the answer to its own request.
    b.send(WsMessage::text("sub other")).expect("send");
    assert!(text(&mut b).starts_with("subscribed"), "[{}] b still got room", backend_name());
    // The gauge is published by each worker at the end of its turn, which may come after the
    // reply reached b: wait for it rather than read it once.
    let subs = || srv.handle.stats().iter().map(|s| s.subscriptions).sum::<usize>();
    assert!(
        wait_until(Duration::from_secs(5), || subs() == 2),
        "[{}] stats count {} subscriptions",
        backend_name(),
        subs()
    );
}

#[test]
fn a_subscriber_that_never_reads_slows_no_one_and_holds_at_most_its_limit() {
    const LIMIT: usize = 256 << 10;
    let srv = start(|b| b.max_backpressure(LIMIT), || Topics);
    // The slow one subscribes, then never reads again (its socket buffers fill, then its
    // queue, then it loses messages).
    let (slow, _) = subscriber(srv.addr, "feed");
    let (mut fast, _) = subscriber(srv.addr, "feed");
    let mut publisher = ws_connect(srv.addr);
    let body = "x".repeat(4000);
    const N: usize = 3000;
    // The reading subscriber keeps up: at most 16 messages (64 KB) in flight to it, so it
    // alone never reaches the limit; the slow one passes it after ~70 messages.
    let got = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = std::sync::Arc::clone(&got);
    let reader = thread::spawn(move || {
        for i in 0..N {
            let m = text(&mut fast);
            assert_eq!(m[..m.find(' ').unwrap()].parse::<usize>().unwrap(), i);
            seen.store(i + 1, std::sync::atomic::Ordering::Release);
        }
        fast
    });
    for i in 0..N {
        let ok = wait_until(Duration::from_secs(10), || {
            i < got.load(std::sync::atomic::Ordering::Acquire) + 16 || reader.is_finished()
        });
        assert!(ok, "[{}] the reading subscriber stalled at {i}", backend_name());
        publisher.send(WsMessage::text(format!("pub feed {i} {body}"))).expect("publish");
        if i % 500 == 0 {
            let mem: usize = srv.handle.stats().iter().map(|s| s.memory_in_use).sum();
            assert!(mem < 4 * LIMIT, "[{}] the server holds {mem} bytes", backend_name());
        }
    }
    let _fast = reader.join().expect("the reading subscriber got every message in order");
    let drops: usize = srv.handle.stats().iter().map(|s| s.publish_drops).sum();
    assert!(drops > 0, "[{}] a subscriber that never reads lost nothing", backend_name());
    let mem: usize = srv.handle.stats().iter().map(|s| s.memory_in_use).sum();
    assert!(mem < 4 * LIMIT, "[{}] the server holds {mem} bytes", backend_name());
    drop(slow);
}
