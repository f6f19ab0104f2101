//! The worker core driven by a test backend and a fake clock (`core_harness.rs`): no
//! network, no threads, no sleeps. Each client is a Unix socket pair plus a client-role
//! `proto::Connection` that speaks the wire format. Time moves only when a test says so
//! (`Pair::advance`).

use std::net::Shutdown;
use std::time::Duration;

use super::testing::{peer, Pair, REQUEST};
use super::*;
use crate::proto::Limits;

fn cfg() -> Config {
    Config::default()
}

/// A big message is queued (the peer's window is shut), then the peer's close arrives: the
/// connection is Closed with bytes still queued, and it must be gone (reset) within
/// `close_timeout` of the close, however long the peer keeps its socket open and unread.
#[test]
fn closed_connection_with_unread_queue_is_reset_at_close_timeout() {
    let mut p = Pair::new(Config { idle_timeout: None, ..cfg() });
    let c = p.open();
    // 1 MiB echo: far more than the socket pair's buffers take.
    p.send_frame(c, OpCode::Binary, &vec![1u8; 1 << 20]);
    p.send_close(c, 1000);
    p.pump();
    assert_eq!(p.len(), 1);
    assert!(p.core.state.env.memory.queued > 0, "the echo is queued");
    let close_timeout = p.core.state.env.limits.close_timeout;
    p.advance(close_timeout - Duration::from_millis(500));
    assert_eq!(p.len(), 1, "gone before its close timeout");
    p.advance(Duration::from_secs(1));
    assert_eq!(p.len(), 0, "a closed connection with an unread queue was kept");
    assert_eq!(p.counts().close_timeouts, 1);
    assert_eq!(p.core.state.env.memory.used(), 0, "its queue was not given back");
    assert_eq!(p.seen().closes, vec![(p.clients[c].key, 1000)]);
}

/// A rejected handshake whose response the peer never reads, and a protocol error while an
/// echo is queued: both Closed with bytes queued, both gone at the close timeout.
#[test]
fn refused_and_failed_connections_are_gone_at_close_timeout_whatever_they_hold() {
    let mut p = Pair::new(Config { idle_timeout: None, ..cfg() });
    // An upgrade to a version we do not speak gets 426; the client reads nothing.
    let bad = p.connect();
    let req = String::from_utf8(REQUEST.to_vec()).unwrap().replace("Version: 13", "Version: 8");
    p.send_raw(bad, req.as_bytes());
    // An open connection whose big echo is queued, then an unmasked frame (1002).
    let c = p.open();
    p.send_frame(c, OpCode::Binary, &vec![2u8; 1 << 20]);
    p.send_raw(c, &[0x82, 0x01, 0xff]);
    p.pump();
    assert_eq!(p.len(), 2);
    assert_eq!(p.counts().protocol_errors, 1);
    assert_eq!(p.counts().bad_handshakes, 1);
    p.advance(p.core.state.env.limits.close_timeout + Duration::from_secs(1));
    assert_eq!(p.len(), 0, "{} connections kept past their close timeout", p.len());
}

/// A close we started, answered by a peer that reads nothing: gone at the close timeout.
#[test]
fn closing_connection_whose_peer_never_answers_is_reset() {
    let mut p = Pair::new(Config { idle_timeout: Some(Duration::from_secs(30)), ..cfg() });
    let c = p.open();
    p.send_frame(c, OpCode::Binary, &vec![3u8; 1 << 20]);
    p.pump();
    // Idle timeout: close 1001 queued behind the unread echo.
    p.advance(Duration::from_secs(31));
    assert_eq!(p.counts().idle_timeouts, 1);
    assert_eq!(p.len(), 1);
    p.advance(p.core.state.env.limits.close_timeout + Duration::from_secs(1));
    assert_eq!(p.len(), 0);
    assert_eq!(p.seen().closes, vec![(p.clients[c].key, 1006)]);
}

/// After a hangup, `on_close` runs with 1006 and a send from it fails without touching the
/// (dead) socket.
#[test]
fn sends_from_on_close_after_a_hangup_fail() {
    let mut p = Pair::new(cfg());
    let c = p.open();
    let _ = p.clients[c].sock.shutdown(Shutdown::Both);
    p.pump();
    assert_eq!(p.seen().closes, vec![(p.clients[c].key, 1006)]);
    assert_eq!(p.seen().send_in_on_close, vec![SendStatus::Closed]);
    assert_eq!(p.len(), 0);
}

/// A panic in `on_message` costs that connection alone: it gets 1011, the panic is counted,
/// and another connection on the same worker keeps echoing.
#[test]
fn a_handler_panic_closes_that_connection_with_1011_and_the_worker_serves_on() {
    let mut p = Pair::new(cfg());
    let a = p.open();
    let b = p.open();
    p.send_frame(a, OpCode::Text, b"boom");
    p.pump();
    assert_eq!(p.counts().handler_panics, 1);
    let evs = p.client_events(a);
    assert_eq!(evs, vec![(OpCode::Close, 1011u16.to_be_bytes().to_vec())]);
    p.send_frame(b, OpCode::Text, b"still here");
    p.pump();
    assert_eq!(p.client_events(b), vec![(OpCode::Text, b"still here".to_vec())]);
}

/// Sends corked in one turn do not count against the limit until the socket refuses them: a
/// burst of small echoes far over a small limit, to a peer that reads, loses nothing.
#[test]
fn a_burst_of_small_echoes_is_not_dropped_by_a_socket_that_takes_it() {
    let mut p = Pair::new(Config { max_backpressure: 4 << 10, ..cfg() });
    let c = p.open();
    let mut burst = Vec::new();
    let mut proto = Connection::new_open(Role::Client, 1);
    for i in 0..64u8 {
        proto.send_frame(OpCode::Binary, true, &[i; 512], &mut burst).unwrap();
    }
    p.send_raw(c, &burst); // 32 KiB of echoes in one read: eight times the limit
    p.pump();
    assert_eq!(p.counts().sends_dropped, 0, "statuses {:?}", p.seen().statuses);
    let evs = p.client_events(c);
    assert_eq!(evs.len(), 64);
    assert!(evs.iter().enumerate().all(|(i, (op, b))| *op == OpCode::Binary && b[0] == i as u8));
}

/// The backpressure limit is hard: to a peer that never reads, nothing accepted takes the
/// queue past the limit (a frame header aside), and the peer's reading is paused.
#[test]
fn backpressure_limit_is_hard_and_pauses_a_peer_that_never_reads() {
    const MAX: usize = 256 << 10;
    let mut p = Pair::new(Config { max_backpressure: MAX, ..cfg() });
    let c = p.open();
    let mut most = 0;
    for i in 0..64 {
        p.send_frame(c, OpCode::Binary, &vec![i as u8; 100 << 10]);
        p.pump();
        most = most.max(p.core.state.buffered_amount(p.clients[c].key));
    }
    assert!(most <= MAX + frame::MAX_HEADER_LEN, "queue reached {most} (limit {MAX})");
    assert!(p.counts().sends_dropped > 0);
    assert!(!p.core.wants_read(p.clients[c].key), "reading was not paused");
    // The peer reads at last: the queue drains and reading resumes.
    for _ in 0..200 {
        p.client_events(c);
        p.pump();
    }
    assert!(p.core.wants_read(p.clients[c].key), "reading did not resume");
}

/// The worker's memory budget: a message that must be assembled while the budget is spent is
/// refused with 1009; the worker serves on and the budget is given back.
#[test]
fn memory_budget_refuses_assembly_with_1009_and_serves_on() {
    let mut p = Pair::new(Config { worker_memory_budget: 1 << 20, ..cfg() });
    let a = p.open();
    // Announce a 2 MiB message but send only its header and a little of it.
    let mut out = Vec::new();
    let mut proto = Connection::new_open(Role::Client, 9);
    proto.send_frame(OpCode::Binary, true, &vec![0u8; 2 << 20], &mut out).unwrap();
    p.send_raw(a, &out[..4096]);
    p.pump();
    assert_eq!(p.counts().budget_refusals, 1);
    assert_eq!(p.client_events(a), vec![(OpCode::Close, 1009u16.to_be_bytes().to_vec())]);
    assert_eq!(p.core.state.env.memory.assembly, 0);
    let b = p.open();
    p.send_frame(b, OpCode::Text, b"fine");
    p.pump();
    assert_eq!(p.client_events(b), vec![(OpCode::Text, b"fine".to_vec())]);
}

/// A stale id must not name a later connection, after more than 2^24 reuses of one slot (the
/// old 24-bit generation wrapped there and handed an attacker a departed user's id).
#[test]
fn a_stale_id_never_names_a_later_connection() {
    let mut p = Pair::new(Config { idle_timeout: None, ..cfg() });
    let key = p.core.accept(peer(), -1, false);
    p.core.state.conns[key].flags |= OPENED;
    let victim = p.core.state.id_of(key);
    let packed = victim.to_u64();
    p.core.remove(key);
    for i in 0..(1u32 << 24) {
        let k = p.core.accept(peer(), -1, false);
        assert_eq!(k, key, "slab reuses the freed slot");
        p.core.remove(k);
        if i % (1 << 20) == 0 {
            // Let the stale timer entries of the departed connections expire.
            p.advance(Duration::from_secs(11));
        }
    }
    let attacker = p.core.accept(peer(), -1, false);
    assert_eq!(attacker, key);
    p.core.state.conns[attacker].flags |= OPENED;
    assert_eq!(p.core.state.key_of(victim), None, "the stale id reached the new connection");
    assert_eq!(p.core.state.key_of(ConnId::from_u64(packed)), None, "nor through to_u64");
    assert_eq!(p.core.state.key_of(p.core.state.id_of(attacker)), Some(attacker));
}

/// A slot whose generations are used up is retired, never reused.
#[test]
fn a_slot_whose_generations_are_used_up_is_retired() {
    let mut p = Pair::new(cfg());
    let key = p.core.accept(peer(), -1, false);
    p.core.state.gens[key] = RETIRED_GEN - 1;
    p.core.remove(key);
    assert_eq!(p.len(), 0, "a tombstone is not a connection");
    let next = p.core.accept(peer(), -1, false);
    assert_ne!(next, key, "the retired key was handed out again");
    assert_eq!(p.len(), 1);
    assert!(p.core.has_room());
}

/// `ConnId::to_u64` keeps all 32 bits of the generation, the 20-bit key and the worker.
#[test]
fn conn_id_round_trips_through_u64() {
    for (w, k, g) in [(0, 0, 0), (4095, (1 << 20) - 1, u32::MAX), (3, 12345, 1 << 31)] {
        let id = ConnId { worker: w, key: k, gen: g };
        assert_eq!(ConnId::from_u64(id.to_u64()), id);
    }
}

/// Timers still fire after the clock has run past 2^32 ticks.
#[test]
fn timers_fire_after_two_to_the_32_ticks() {
    let mut p = Pair::new(Config {
        timer_tick: Duration::from_millis(1),
        idle_timeout: Some(Duration::from_secs(2)),
        ..cfg()
    });
    p.advance(Duration::from_millis((1u64 << 32) + 10));
    let c = p.open();
    let next = p.core.next_timer().expect("an idle deadline is armed");
    assert!(next > p.now, "next wake-up {next:?} is in the past: the loop would spin");
    p.advance(Duration::from_secs(3));
    assert_eq!(p.counts().idle_timeouts, 1);
    assert_eq!(p.client_events(c), vec![(OpCode::Close, 1001u16.to_be_bytes().to_vec())]);
}

/// A head trickled in one byte per read is parsed once it can be complete, not once per byte.
#[test]
fn a_trickled_handshake_opens() {
    let mut p = Pair::new(cfg());
    let c = p.connect();
    for b in REQUEST.chunks(1) {
        p.send_raw(c, b);
        p.pump();
    }
    assert!(p.read_head(c).starts_with("HTTP/1.1 101"));
}

/// The handshake timeout holds a silent client to it, and is counted.
#[test]
fn a_silent_handshake_is_dropped_at_its_timeout() {
    let mut p = Pair::new(cfg());
    let _c = p.connect();
    p.send_raw(0, &REQUEST[..20]);
    p.pump();
    p.advance(p.core.state.env.limits.handshake_timeout + Duration::from_secs(1));
    assert_eq!(p.len(), 0);
    assert_eq!(p.counts().handshake_timeouts, 1);
}

/// `Conn::close` refuses a code that may not go on the wire, and sends nothing for it.
#[test]
fn close_with_a_code_that_may_not_be_sent_is_refused() {
    let mut p = Pair::new(cfg());
    let c = p.open();
    for code in [1005u16, 1006, 999, 1015, 5000] {
        p.send_frame(c, OpCode::Text, format!("close {code}").as_bytes());
    }
    p.pump();
    assert_eq!(p.client_events(c), vec![], "something was sent");
    let refused: Vec<u16> =
        p.seen().close_results.iter().map(|r| r.map_or_else(|e| e.0 .0, |()| 0)).collect();
    assert_eq!(refused, vec![1005, 1006, 999, 1015, 5000]);
    p.send_frame(c, OpCode::Text, b"close 4000");
    p.pump();
    assert_eq!(p.client_events(c), vec![(OpCode::Close, 4000u16.to_be_bytes().to_vec())]);
}

/// The handshake timeout holds to its deadline: not before it, and at it.
/// (Moved from tests/timers.rs `handshake_timeout_closes_silent_sockets`, timed there.)
#[test]
fn handshake_timeout_fires_at_its_deadline_not_before() {
    let mut p = Pair::new(Config {
        limits: Limits { handshake_timeout: Duration::from_millis(300), ..Limits::default() },
        timer_tick: Duration::from_millis(20),
        ..cfg()
    });
    let c = p.connect();
    p.send_raw(c, b"GET /echo HTTP/1.1\r\n");
    p.advance(Duration::from_millis(250));
    assert_eq!(p.len(), 1, "dropped before the handshake timeout");
    p.advance(Duration::from_millis(80));
    assert_eq!(p.len(), 0, "kept past the handshake timeout");
    assert!(p.client_read(c), "the client did not see the socket close");
}

/// Idle timeout: close 1001 at the deadline (not before), then the close handshake ends the
/// connection. Data from the peer moves the deadline. (Moved from tests/timers.rs
/// `idle_timeout_sends_1001_then_closes`.)
#[test]
fn idle_timeout_sends_1001_at_its_deadline_then_closes() {
    let mut p = Pair::new(Config {
        idle_timeout: Some(Duration::from_millis(400)),
        timer_tick: Duration::from_millis(20),
        ..cfg()
    });
    let c = p.open();
    p.advance(Duration::from_millis(300));
    p.send_frame(c, OpCode::Text, b"still here");
    p.pump();
    assert_eq!(p.client_events(c), vec![(OpCode::Text, b"still here".to_vec())]);
    p.advance(Duration::from_millis(300));
    assert_eq!(p.client_events(c), vec![], "closed before the (moved) idle deadline");
    p.advance(Duration::from_millis(150));
    assert_eq!(p.client_events(c), vec![(OpCode::Close, 1001u16.to_be_bytes().to_vec())]);
    assert_eq!(p.counts().idle_timeouts, 1);
    p.answer(c); // the client's close echo
    p.pump();
    // The server shut its side after the handshake; the client closes, the slot is freed.
    assert!(p.client_read(c), "no EOF after the close handshake");
    let _ = p.clients[c].sock.shutdown(Shutdown::Both);
    p.pump();
    assert_eq!(p.len(), 0);
}

/// Auto-ping: a live peer that answers is kept across many intervals; a silent one gets one
/// ping, then close 1001 after a second interval. (Moved from tests/timers.rs
/// `auto_ping_keeps_live_peers_and_drops_silent_ones`.)
#[test]
fn auto_ping_keeps_live_peers_and_drops_silent_ones() {
    let mut p = Pair::new(Config {
        auto_ping: Some(Duration::from_millis(300)),
        idle_timeout: None,
        timer_tick: Duration::from_millis(20),
        ..cfg()
    });
    let live = p.open();
    let silent = p.open();
    let mut pings = 0;
    for _ in 0..20 {
        p.advance(Duration::from_millis(100));
        for (op, payload) in p.client_events(live) {
            assert_eq!(op, OpCode::Ping, "the live peer got {op:?}");
            pings += 1;
            p.send_frame(live, OpCode::Pong, &payload);
        }
    }
    p.pump();
    assert!(pings >= 5, "only {pings} pings in 2 s at a 300 ms interval");
    p.send_frame(live, OpCode::Text, b"hi");
    p.pump();
    assert_eq!(p.client_events(live), vec![(OpCode::Text, b"hi".to_vec())]);
    let evs = p.client_events(silent);
    assert_eq!(evs.first().map(|e| e.0), Some(OpCode::Ping));
    assert_eq!(evs.last(), Some(&(OpCode::Close, 1001u16.to_be_bytes().to_vec())));
    assert_eq!(evs.len(), 2, "{evs:?}");
}

/// A close we start, never answered: the connection is reset at the close timeout, and
/// `on_close` hears 1006. (Moved from tests/timers.rs
/// `close_handshake_timeout_drops_peers_that_never_answer`.)
#[test]
fn close_never_answered_is_reset_at_the_close_timeout() {
    let mut p = Pair::new(Config {
        limits: Limits { close_timeout: Duration::from_millis(300), ..Limits::default() },
        timer_tick: Duration::from_millis(20),
        ..cfg()
    });
    let c = p.open();
    let id = p.core.state.id_of(p.clients[c].key);
    p.core.close_id(id, CloseCode(4000), "bye");
    p.pump();
    assert_eq!(p.client_events(c), vec![(OpCode::Close, 4000u16.to_be_bytes().to_vec())]);
    p.advance(Duration::from_millis(250));
    assert_eq!(p.len(), 1, "reset before the close timeout");
    p.advance(Duration::from_millis(80));
    assert_eq!(p.len(), 0);
    assert_eq!(p.seen().closes, vec![(p.clients[c].key, 1006)]);
    assert_eq!(p.counts().close_timeouts, 1);
}

/// Backpressure then drain: a send behind bytes the socket refused reports `Backpressure`,
/// and `on_drain` follows once the peer has read everything.
#[test]
fn on_drain_follows_backpressure_once_the_peer_reads() {
    let mut p = Pair::new(cfg());
    let c = p.open();
    p.send_frame(c, OpCode::Binary, &vec![1u8; 4 << 20]);
    p.pump();
    p.send_frame(c, OpCode::Text, b"behind");
    p.pump();
    // The 4 MiB echo goes out at once (a direct write) and the socket refuses most of it.
    assert_eq!(p.seen().statuses, vec![SendStatus::Backpressure, SendStatus::Backpressure]);
    assert!(p.seen().drains.is_empty());
    for _ in 0..1000 {
        p.client_read(c);
        p.pump();
        if !p.seen().drains.is_empty() {
            break;
        }
    }
    assert_eq!(p.seen().drains, vec![p.clients[c].key]);
    let evs = p.client_events(c);
    assert_eq!(evs.last(), Some(&(OpCode::Text, b"behind".to_vec())));
}

/// Graceful shutdown in the core: open connections get 1001, handshakes are dropped, and at
/// the deadline what is left is reset with `on_close(1006)`.
#[test]
fn shutdown_closes_open_ones_with_1001_and_resets_the_rest_at_the_deadline() {
    let mut p = Pair::new(cfg());
    let answering = p.open();
    let silent = p.open();
    let _handshaking = p.connect();
    p.pump();
    assert_eq!(p.len(), 3);
    p.core.begin_shutdown();
    p.pump();
    assert!(!p.core.has_room(), "a stopping worker still accepts");
    assert_eq!(p.len(), 2, "the handshaking connection was kept");
    for c in [answering, silent] {
        assert_eq!(p.client_events(c), vec![(OpCode::Close, 1001u16.to_be_bytes().to_vec())]);
    }
    p.answer(answering);
    p.pump();
    p.core.kill_all();
    p.pump();
    assert_eq!(p.len(), 0);
    let key = |c: usize| p.clients[c].key;
    assert_eq!(p.seen().closes, vec![(key(answering), 1001), (key(silent), 1006)]);
}

// ---------------------------------------------------------------------------------------------
// Pub/sub
// ---------------------------------------------------------------------------------------------

/// Opens `n` reading clients subscribed to `topic`.
fn subscribers(p: &mut Pair, n: usize, topic: &str) -> Vec<usize> {
    let cs: Vec<usize> = (0..n).map(|_| p.open()).collect();
    for &c in &cs {
        p.send_frame(c, OpCode::Text, format!("sub {topic}").as_bytes());
    }
    p.pump();
    cs
}

/// Lets non-reading clients `cs` read everything the server has for them: pumps and reads
/// until nothing more arrives; returns each one's text messages.
fn drain_texts(p: &mut Pair, cs: &[usize]) -> Vec<Vec<String>> {
    let mut got = vec![Vec::new(); cs.len()];
    for _ in 0..100_000 {
        p.pump();
        let mut moved = false;
        for (i, &c) in cs.iter().enumerate() {
            let t = texts(p, c);
            moved |= !t.is_empty();
            got[i].extend(t);
        }
        let waiting = cs.iter().any(|&c| p.core.pending_len(p.clients[c].key) != 0);
        if !moved && !waiting {
            return got;
        }
    }
    panic!("the subscribers never got everything");
}

fn texts(p: &mut Pair, c: usize) -> Vec<String> {
    p.client_events(c)
        .into_iter()
        .filter(|(op, _)| *op == OpCode::Text)
        .map(|(_, b)| String::from_utf8(b).unwrap())
        .collect()
}

/// A publish reaches every subscriber but the sender (`publish`), or every one
/// (`publish_including_self`); a non-subscriber gets nothing; the counters say so.
#[test]
fn publish_reaches_every_subscriber_and_leaves_out_the_sender() {
    let mut p = Pair::new(cfg());
    let subs = subscribers(&mut p, 3, "room");
    let other = p.open();
    assert_eq!(p.seen().subscribed, vec![Ok(true); 3]);
    p.send_frame(subs[0], OpCode::Text, b"sub room");
    p.pump();
    assert_eq!(p.seen().subscribed[3], Ok(false), "a second subscribe is a no-op");
    p.send_frame(subs[0], OpCode::Text, b"pub room hello");
    p.pump();
    p.send_frame(other, OpCode::Text, b"puball room to all");
    p.pump();
    assert_eq!(texts(&mut p, subs[0]), ["to all"]);
    for &c in &subs[1..] {
        assert_eq!(texts(&mut p, c), ["hello", "to all"]);
    }
    assert!(texts(&mut p, other).is_empty(), "a non-subscriber got a published message");
    assert_eq!(p.counts().deliveries, 2 + 3);
    assert_eq!(p.core.state.topics.subscribers(b"room").len(), 3);
}

/// The frame is built once: 64 KiB published to subscribers that do not read costs the
/// memory budget one reference per subscriber, not one copy each; and the bytes they are
/// eventually sent are the message, whole.
#[test]
fn a_published_frame_is_shared_not_copied() {
    let mut p = Pair::new(cfg());
    // Small socket buffers: most of each subscriber's copy of the message stays queued.
    p.set_socket_buffers(Some(4096));
    let subs = subscribers(&mut p, 8, "big");
    let publisher = p.open();
    let queued_before = p.core.state.env.memory.queued;
    let msg = format!("pub big {}", "x".repeat(64 << 10));
    p.send_frame(publisher, OpCode::Text, msg.as_bytes());
    p.pump();
    // The subscribers' sockets took some (a socket pair's buffer): what is still queued costs
    // the budget the frame once plus a reference per subscriber, not a copy each.
    let queued = p.core.state.env.memory.queued - queued_before;
    let once = (64 << 10) + 8 * outq_ref_cost() + 100;
    assert!(queued <= once, "8 subscribers hold {queued} bytes of the budget");
    let waiting: usize = subs.iter().map(|&c| p.core.pending_len(p.clients[c].key)).sum();
    assert!(waiting > 8 * 50_000, "the sockets took the message: the test proves nothing");
    let want = "x".repeat(64 << 10);
    for got in drain_texts(&mut p, &subs) {
        assert!(got.len() == 1 && got[0] == want, "a subscriber got {} messages", got.len());
    }
    assert_eq!(p.core.state.env.memory.used(), 0);
}

fn outq_ref_cost() -> usize {
    super::REF_COST
}

/// A small frame is copied into each subscriber's own bytes, a larger one shared: queued
/// (nothing is written before the turn ends), small publishes cost the budget their bytes per
/// subscriber, a large one its bytes once plus a reference each; and small, large and small
/// again, queued in one turn, arrive whole and in order.
#[test]
fn small_published_frames_are_copied_and_keep_their_order_with_shared_ones() {
    let mut p = Pair::new(cfg());
    let subs = subscribers(&mut p, 4, "m");
    let base = p.core.state.env.memory.queued;
    // The longest frame copied and the shortest shared (payloads of 125 and 126 bytes take
    // 2- and 4-byte headers: frames of 127 and 130 bytes around the 128-byte limit).
    let small = "s".repeat(125);
    let large = "L".repeat(126);
    const { assert!(127 <= super::COPY_FRAME_MAX && 130 > super::COPY_FRAME_MAX) };
    p.core.on_publish(b"m", OpCode::Text, small.as_bytes());
    let copied = p.core.state.env.memory.queued - base;
    assert_eq!(copied, 4 * 127, "a small frame is not one copy per subscriber");
    p.core.on_publish(b"m", OpCode::Text, large.as_bytes());
    let shared = p.core.state.env.memory.queued - base - copied;
    assert_eq!(shared, 130 + 4 * outq_ref_cost(), "a larger frame is not shared");
    p.core.on_publish(b"m", OpCode::Text, b"last");
    p.pump();
    for got in drain_texts(&mut p, &subs) {
        assert_eq!(got, [small.as_str(), &large, "last"]);
    }
    assert_eq!(p.core.state.env.memory.used(), 0);
}

/// Unsubscribing stops delivery; a connection that closes leaves the index (its subscriptions
/// are still visible in its `on_close`, gone right after); a too-long name is an error.
#[test]
fn unsubscribe_and_close_end_subscriptions() {
    let mut p = Pair::new(Config { max_topic_len: 8, ..cfg() });
    let subs = subscribers(&mut p, 3, "t");
    p.send_frame(subs[1], OpCode::Text, b"sub u");
    p.send_frame(subs[1], OpCode::Text, b"unsub t");
    p.pump();
    p.send_frame(subs[0], OpCode::Text, b"puball t one");
    p.pump();
    assert_eq!(texts(&mut p, subs[1]), Vec::<String>::new(), "unsubscribed, yet delivered");
    assert_eq!(texts(&mut p, subs[2]), ["one"]);
    p.send_close(subs[2], 1000);
    p.pump();
    assert_eq!(p.seen().topics_at_close, vec![vec![b"t".to_vec()]]);
    assert_eq!(p.core.state.topics.subscribers(b"t").len(), 1);
    p.send_frame(subs[0], OpCode::Text, b"sub 123456789");
    p.send_frame(subs[0], OpCode::Text, b"pub 123456789 x");
    p.pump();
    assert_eq!(
        p.seen().subscribed.last(),
        Some(&Err(crate::TopicError::TooLong { len: 9, max: 8 }))
    );
    assert_eq!(
        p.seen().published.last(),
        Some(&Err(crate::TopicError::TooLong { len: 9, max: 8 }))
    );
    // Everyone leaves: the index is empty, the shared counts too.
    for c in [subs[0], subs[1]] {
        p.hang_up(c);
    }
    p.pump();
    assert_eq!(p.core.state.topics.subscriptions(), 0);
    assert_eq!(p.core.state.handle.subscriber_count("t"), 0);
    assert_eq!(p.core.state.handle.subscriber_count("u"), 0);
}

/// A subscriber that never reads loses what passes its `max_backpressure` (counted), while
/// a reading one gets every message in order and the worker's memory stays bounded.
#[test]
fn a_slow_subscriber_loses_messages_past_its_limit_and_slows_no_one() {
    let max = 64 << 10;
    let mut p = Pair::new(Config { max_backpressure: max, ..cfg() });
    p.set_socket_buffers(Some(4096));
    let subs = subscribers(&mut p, 2, "feed");
    let (slow, fast) = (subs[0], subs[1]);
    let publisher = p.open();
    let mut fast_got = Vec::new();
    for i in 0..400 {
        let msg = format!("pub feed {i:04} {}", "y".repeat(1000));
        p.send_frame(publisher, OpCode::Text, msg.as_bytes());
        fast_got.extend(drain_texts(&mut p, &[fast]).remove(0));
        let held = p.core.state.conns.get(p.clients[slow].key).map_or(0, super::pending_of);
        assert!(held <= max, "the slow subscriber holds {held} bytes, over its limit");
    }
    assert_eq!(fast_got.len(), 400, "the reading subscriber lost messages");
    for (i, m) in fast_got.iter().enumerate() {
        assert!(m.starts_with(&format!("{i:04} ")), "out of order at {i}: {}", &m[..8]);
    }
    let drops = p.counts().publish_drops;
    assert!(drops > 300, "only {drops} drops for a subscriber that never reads");
    assert_eq!(p.counts().deliveries, 400 + (400 - drops));
    // What it did get is in order, with gaps only.
    let got = drain_texts(&mut p, &[slow]).remove(0);
    assert_eq!(got.len(), 400 - drops);
    let seqs: Vec<u32> = got.iter().map(|m| m[..4].parse().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
}

/// With `close_on_backpressure_limit`, the slow subscriber is closed with 1008 instead.
#[test]
fn a_slow_subscriber_is_closed_with_1008_when_the_policy_says_so() {
    let mut p = Pair::new(Config {
        max_backpressure: 16 << 10,
        close_on_backpressure_limit: true,
        ..cfg()
    });
    p.set_socket_buffers(Some(4096));
    let subs = subscribers(&mut p, 2, "feed");
    let publisher = p.open();
    let mut fast = 0;
    for i in 0..100 {
        let msg = format!("pub feed {i:04} {}", "z".repeat(1000));
        p.send_frame(publisher, OpCode::Text, msg.as_bytes());
        fast += drain_texts(&mut p, &[subs[1]])[0].len();
    }
    assert_eq!(p.counts().backpressure_closes, 1);
    assert_eq!(p.counts().publish_drops, 1, "one drop, then the subscriber is closing");
    assert_eq!(fast, 100);
    let mut evs = Vec::new();
    loop {
        p.pump();
        let e = p.client_events(subs[0]);
        if e.is_empty() {
            break;
        }
        evs.extend(e);
    }
    assert_eq!(evs.last().map(|e| e.0), Some(OpCode::Close));
    assert_eq!(evs.last().unwrap().1, 1008u16.to_be_bytes());
}

/// A publish from another worker (the command path) reaches this worker's subscribers; a
/// publish to a topic nobody holds builds nothing and reaches no one.
#[test]
fn publishes_from_elsewhere_reach_local_subscribers() {
    let mut p = Pair::new(cfg());
    let subs = subscribers(&mut p, 2, "x");
    p.core.on_publish(b"x", OpCode::Binary, b"\x01\x02");
    p.core.on_publish(b"nobody", OpCode::Text, b"lost");
    p.pump();
    for &c in &subs {
        let evs = p.client_events(c);
        assert_eq!(evs, vec![(OpCode::Binary, vec![1, 2])]);
    }
    assert_eq!(p.counts().deliveries, 2);
}

/// Owned frames (an echo) and shared frames (a publish) queued in one turn go out in the
/// order they were queued, in one write.
#[test]
fn echoes_and_publishes_keep_their_order() {
    let mut p = Pair::new(cfg());
    let subs = subscribers(&mut p, 1, "o");
    let c = subs[0];
    // One read: echo, publish (to self), echo, publish.
    let mut bytes = Vec::new();
    for m in ["a", "puball o b", "c", "puball o d"] {
        p.clients[c].proto.send_frame(OpCode::Text, true, m.as_bytes(), &mut bytes).unwrap();
    }
    p.send_raw(c, &bytes);
    p.pump();
    assert_eq!(texts(&mut p, c), ["a", "b", "c", "d"]);
}

/// A shared frame counts against the worker's memory budget once: a worker whose budget is
/// spent publishes nothing (counted), and the budget comes back when the queues let go.
#[test]
fn a_published_frame_counts_once_against_the_memory_budget() {
    let mut p = Pair::new(Config { worker_memory_budget: 100 << 10, ..cfg() });
    p.set_socket_buffers(Some(4096));
    let subs = subscribers(&mut p, 4, "b");
    let body = vec![b'y'; 60 << 10];
    // Published from elsewhere (no assembly buffer involved): the first fits (60 KiB once,
    // four references), the second would pass 100 KiB while the first is still queued.
    p.core.on_publish(b"b", OpCode::Text, &body);
    p.pump();
    assert!(p.core.state.env.memory.queued >= 60 << 10, "the frame is not charged");
    p.core.on_publish(b"b", OpCode::Text, &body);
    p.pump();
    assert_eq!(p.counts().deliveries, 4);
    assert_eq!(p.counts().budget_refusals, 1);
    for got in drain_texts(&mut p, &subs) {
        assert_eq!(got.len(), 1);
    }
    assert_eq!(p.core.state.env.memory.used(), 0, "the frame's bytes were not given back");
}

/// A frame that no subscriber takes (every queue full) leaves the budget at once, even on a
/// worker that writes nothing more (its one subscriber never reads).
#[test]
fn a_frame_nobody_takes_leaves_the_budget_at_once() {
    let mut p = Pair::new(Config { max_backpressure: 16 << 10, ..cfg() });
    p.set_socket_buffers(Some(4096));
    let _slow = subscribers(&mut p, 1, "f");
    let body = vec![b'z'; 4000];
    for _ in 0..200 {
        p.core.on_publish(b"f", OpCode::Text, &body);
    }
    assert!(p.counts().publish_drops > 150);
    let used = p.core.state.env.memory.used();
    assert!(used < 40 << 10, "{used} bytes held for a subscriber limited to 16 KiB");
}

/// An IPv6 peer's address lives beside the slot (an IPv4 one inline): both read back whole,
/// and the side entry goes with the slot, a retired key's too, never reaching the key's next
/// connection.
#[test]
fn ipv6_peers_live_in_a_side_map_freed_with_the_slot() {
    use std::net::{Ipv6Addr, SocketAddrV6};
    let mut p = Pair::new(cfg());
    let ip = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 7);
    let v6 = SocketAddr::V6(SocketAddrV6::new(ip, 51234, 3, 9));
    let a = p.core.accept(v6, -1, false);
    let b = p.core.accept(peer(), -1, false);
    assert_eq!(p.core.state.peer_addr(a), v6);
    assert_eq!(p.core.state.peer_addr(b), peer());
    assert_eq!(p.core.state.peers6.len(), 1);
    p.core.remove(a);
    assert!(p.core.state.peers6.is_empty(), "the side entry outlived its slot");
    let c = p.core.accept(peer(), -1, false);
    assert_eq!(c, a, "the slab reuses the freed key");
    assert_eq!(p.core.state.peer_addr(c), peer());
    let d = p.core.accept(v6, -1, false);
    assert_eq!(p.core.state.peer_addr(d), v6);
    p.core.state.gens[d] = RETIRED_GEN - 1;
    p.core.remove(d);
    assert!(p.core.state.peers6.is_empty(), "a tombstone kept the side entry");
    p.core.remove(b);
    p.core.remove(c);
    assert_eq!(p.len(), 0);
}

/// Slots keep times as 32-bit milliseconds and wheel ticks in 32 bits; both wrap 49.7 days
/// into a worker's life (ticks sooner with a 1 ms tick: at the same moment). An idle deadline
/// that straddles the wrap fires on time, neither early nor never, and one counted from a
/// stamp after the wrap too.
#[test]
fn idle_timeouts_keep_time_across_the_32_bit_wrap() {
    for tick in [Duration::from_millis(1), Duration::from_millis(250)] {
        let idle = Duration::from_secs(10);
        let mut p = Pair::new(Config { idle_timeout: Some(idle), timer_tick: tick, ..cfg() });
        // To 3 s before the wrap, holding nothing (an empty wheel skips the gap at once).
        p.advance(Duration::from_millis((1 << 32) - 3_000));
        let c = p.open();
        let key = p.clients[c].key;
        p.advance(Duration::from_secs(2));
        p.send_frame(c, OpCode::Text, b"before the wrap");
        p.pump();
        assert!(p.core.state.conns[key].since > u32::MAX - 1_001, "{tick:?}");
        p.advance(Duration::from_secs(5));
        assert!(p.core.state.stamp() < 5_000, "{tick:?}: the stamp wrapped");
        p.advance(Duration::from_millis(4_500));
        assert_eq!((p.len(), p.counts().idle_timeouts), (1, 0), "{tick:?}: closed early");
        p.advance(Duration::from_millis(1_000));
        assert_eq!(p.counts().idle_timeouts, 1, "{tick:?}: the idle timeout did not fire");
        // A connection whose stamp is from after the wrap.
        let c = p.open();
        let key = p.clients[c].key;
        p.send_frame(c, OpCode::Text, b"after the wrap");
        p.pump();
        assert!(p.core.state.conns[key].since < 20_000, "{tick:?}");
        p.advance(idle - Duration::from_millis(500));
        assert_eq!(p.counts().idle_timeouts, 1, "{tick:?}: closed early after the wrap");
        p.advance(Duration::from_secs(1));
        assert_eq!(p.counts().idle_timeouts, 2, "{tick:?}: no idle timeout after the wrap");
    }
}
