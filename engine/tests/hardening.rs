//! Faults found by the hardening review, reproduced over real sockets on whichever backend
//! `SOCKEYE_BACKEND` picks (CI runs this file on both). Policy details live in the core's own
//! tests (server/core_tests.rs, on a fake clock); these prove the same over TCP.

mod common;

use std::time::Duration;

use common::{backend_name, op, serial, start, start_echo, RawClient};
use sockeye::{Conn, Handler, Message};

fn total(srv: &common::TestServer, f: impl Fn(&sockeye::Stats) -> usize) -> usize {
    srv.handle.stats().iter().map(f).sum()
}

/// The review's reproduction: idle and close timeouts of 1 s, a client that writes an 8 MiB
/// frame and close(1000), then never reads. Its echo stays queued behind a zero window; the
/// connection used to stay forever. It must be gone about a second after the close.
#[test]
fn big_message_and_close_never_read_is_released_at_the_close_timeout() {
    let _serial = serial();
    let srv = start_echo(|b| {
        b.idle_timeout(Some(Duration::from_secs(1))).close_timeout(Duration::from_secs(1))
    });
    let mut c = RawClient::open(srv.addr);
    let _ = socket2::SockRef::from(&c.stream).set_recv_buffer_size(4096);
    c.send_frame(op::BINARY, true, &vec![0x5a; 8 << 20]);
    c.send_close(1000, "");
    assert!(
        common::wait_until(Duration::from_secs(1), || srv.connections() == 1),
        "[{}] the connection never opened",
        backend_name()
    );
    let gone = common::wait_until(Duration::from_secs(6), || srv.connections() == 0);
    assert!(gone, "[{}] still held: {:?}", backend_name(), srv.handle.stats());
    assert_eq!(total(&srv, |s| s.close_timeouts), 1, "[{}]", backend_name());
    assert_eq!(total(&srv, |s| s.memory_in_use), 0, "[{}] queue not given back", backend_name());
    common::assert_echo(srv.addr);
    drop(c);
}

/// Echoes, but panics on the text "boom" (an `unwrap()` on client input, say).
#[derive(Debug, Default)]
struct Fragile;

impl Handler for Fragile {
    type Data = ();
    fn on_message(&mut self, conn: &mut Conn<'_, ()>, msg: Message<'_>) {
        let n: u32 = match msg {
            Message::Text("boom") => "not a number".parse().unwrap(),
            _ => 0,
        };
        let _ = n;
        conn.send(msg);
    }
}

/// A panic in a handler costs that connection alone: it gets 1011, the panic is counted, and
/// the other connections on the same worker (one worker here) keep being served.
#[test]
fn a_handler_panic_closes_that_connection_with_1011_and_the_worker_serves_on() {
    let _serial = serial();
    let srv = start(|b| b.workers(1), || Fragile);
    let mut other = common::ws_connect(srv.addr);
    for i in 0..3 {
        let mut c = RawClient::open(srv.addr);
        c.send_frame(op::TEXT, true, b"boom");
        let (code, _) = c.read_close();
        assert_eq!(code, 1011, "[{}] panic {i}", backend_name());
        other.send(tungstenite::Message::text(format!("still there {i}"))).expect("send");
        assert_eq!(
            common::ws_read_data(&mut other),
            tungstenite::Message::text(format!("still there {i}")),
            "[{}]",
            backend_name()
        );
    }
    assert!(
        common::wait_until(Duration::from_secs(2), || total(&srv, |s| s.handler_panics) == 3),
        "[{}] {:?}",
        backend_name(),
        srv.handle.stats()
    );
    common::assert_echo(srv.addr);
}

/// Opens a connection that must echo `tag` (its own bytes, nobody else's), then ends our side
/// of the stream: the server closes its socket, and its FIN must come within 2 s.
fn echo_then_half_close(addr: std::net::SocketAddr, tag: &str) {
    let mut c = RawClient::open(addr);
    c.send_frame(op::TEXT, true, tag.as_bytes());
    let f = c.expect_frame();
    assert_eq!(f.payload, tag.as_bytes(), "[{}] {tag}: another's echo", backend_name());
    c.stream.shutdown(std::net::Shutdown::Write).expect("shutdown");
    let end = c.wait_end(Duration::from_secs(2));
    assert_ne!(end, common::End::TimedOut, "[{}] {tag}: never closed", backend_name());
}

/// A connection the server closes reaches its client as the end of the stream at once, and
/// the connection that takes its place (its slot, and on io_uring its place in the ring's
/// registered file table) gets its own echoes and nobody else's, while an older connection on
/// the same worker keeps getting exactly its own. On io_uring a socket left in the file table
/// would outlive its close (no FIN, the client waits); a stale slot would aim one client's
/// bytes at another.
#[test]
fn a_closed_connections_place_goes_to_the_next_one_and_nothing_crosses() {
    let _serial = serial();
    let srv = start_echo(|b| b.workers(1));
    let mut old = RawClient::open(srv.addr);
    for i in 0..60 {
        echo_then_half_close(srv.addr, &format!("conn {i}"));
        let theirs = format!("old {i}");
        old.send_frame(op::TEXT, true, theirs.as_bytes());
        let f = old.expect_frame();
        assert_eq!(f.payload, theirs.as_bytes(), "[{}] after close {i}", backend_name());
    }
    assert!(
        common::wait_until(Duration::from_secs(2), || srv.connections() == 1),
        "[{}] {} connections left",
        backend_name(),
        srv.connections()
    );
}

/// The same in a burst: 16 clients at once open, echo, close and open again, against one
/// worker whose io_uring submission queue holds 2 entries, so that a turn's accepts, closes
/// and file-table updates are submitted mid-turn, and a key freed in a turn goes to an accept
/// of the same turn. Every client gets its own echo and its FIN.
#[test]
fn closes_and_accepts_in_one_burst_keep_every_client_to_its_own_bytes() {
    let _serial = serial();
    let srv = start_echo(|b| b.workers(1).uring_entries(2));
    let addr = srv.addr;
    let clients: Vec<_> = (0..16)
        .map(|t| {
            std::thread::spawn(move || {
                for i in 0..20 {
                    echo_then_half_close(addr, &format!("client {t} round {i}"));
                }
            })
        })
        .collect();
    for c in clients {
        c.join().expect("a client failed");
    }
    assert!(
        common::wait_until(Duration::from_secs(2), || srv.connections() == 0),
        "[{}] {} connections left",
        backend_name(),
        srv.connections()
    );
}
