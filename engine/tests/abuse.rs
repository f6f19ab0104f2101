//! Abusive clients over real sockets: a client that never reads (backpressure), a ping flood,
//! connection churn, resets mid-message, and an idle server's CPU use. Every test here measures
//! the whole process (fds, RSS, CPU time of `sockeye-*` threads), so they run one at a time
//! (`common::serial`).

mod common;

use std::io::{self, Write};
use std::net::TcpStream;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use common::{
    backend_name, fd_count, op, rss_bytes, serial, start_echo, start_probe, worker_cpu, End,
    RawClient,
};
use tungstenite::Message as WsMessage;

const MIB: usize = 1 << 20;

/// Writes `chunk` over and over until `max` bytes went out or a write blocks for `stall`.
/// Returns the bytes written and whether the peer stopped taking them.
fn flood(s: &mut TcpStream, chunk: &[u8], max: usize, stall: Duration) -> (usize, bool) {
    s.set_write_timeout(Some(stall)).expect("write timeout");
    let mut total = 0;
    while total < max {
        let mut off = 0;
        while off < chunk.len() {
            match s.write(&chunk[off..]) {
                Ok(0) => return (total + off, true),
                Ok(n) => off += n,
                Err(e)
                    if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) =>
                {
                    return (total + off, true)
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => panic!("[{}] flood write: {e}", backend_name()),
            }
        }
        total += chunk.len();
    }
    (total, false)
}

/// 64 masked 1 KiB binary messages in one buffer.
fn message_batch() -> Vec<u8> {
    let mut batch = Vec::new();
    for i in 0..64u8 {
        batch.extend(common::masked(op::BINARY, true, &[i; 1024]));
    }
    batch
}

#[test]
fn reader_that_never_reads_hits_max_backpressure() {
    let _serial = serial();
    const MAX_BP: usize = 64 << 10;
    let (srv, rec) = start_probe(MAX_BP, |b| b);
    let mut c = RawClient::open(srv.addr);
    let (sent, blocked) = flood(&mut c.stream, &message_batch(), 256 * MIB, Duration::from_secs(1));
    assert!(blocked, "[{}] the server took {sent} bytes without pausing", backend_name());
    let dropped = rec.dropped.load(Ordering::Relaxed);
    let max_buffered = rec.max_buffered.load(Ordering::Relaxed);
    let messages = rec.messages.load(Ordering::Relaxed);
    eprintln!(
        "[{}] sent {} KiB, {messages} messages read, {dropped} echoes dropped, max buffered {max_buffered}",
        backend_name(),
        sent >> 10
    );
    assert!(dropped > 0, "[{}] no send was dropped over max_backpressure", backend_name());
    // The limit is hard: nothing accepted takes the queue past it (a frame header aside).
    assert!(
        max_buffered <= MAX_BP + common::MAX_FRAME_HEADER,
        "[{}] buffered_amount reached {max_buffered} (limit {MAX_BP})",
        backend_name()
    );
    assert_eq!(
        rec.violations.load(Ordering::Relaxed),
        0,
        "[{}] send statuses contradict buffered_amount",
        backend_name()
    );
    // Pausing one connection does not stall the others.
    common::assert_echo(srv.addr);
    assert!(rec.closes().len() <= 1, "[{}] {:?}", backend_name(), rec.closes());
    assert!(
        !rec.closes().iter().any(|(c, _)| *c == 1000),
        "[{}] the flooder was never closed",
        backend_name()
    );
}

#[test]
fn close_on_backpressure_limit_closes_with_1008() {
    let _serial = serial();
    let (srv, rec) = start_probe(64 << 10, |b| b.close_on_backpressure_limit(true));
    let mut c = RawClient::open(srv.addr);
    // Once closing, the server reads and discards until the peer's close or the close timeout
    // (5 s), so this flood need not block: it stops at 32 MiB.
    let t0 = Instant::now();
    let (sent, _) = flood(&mut c.stream, &message_batch(), 32 * MIB, Duration::from_secs(1));
    eprintln!("[{}] flood: {} KiB in {:?}", backend_name(), sent >> 10, t0.elapsed());
    assert!(rec.dropped.load(Ordering::Relaxed) > 0, "[{}] nothing dropped", backend_name());
    // The client reads at last: the echoes that made it, then close 1008.
    let (code, reason) = c.read_close();
    assert_eq!(code, 1008, "[{}] close code (reason {reason:?})", backend_name());
    c.send_close(1008, "");
    assert_ne!(
        c.wait_end(Duration::from_secs(6)),
        End::TimedOut,
        "[{}] not closed",
        backend_name()
    );
    assert!(
        common::wait_until(Duration::from_secs(6), || !rec.closes().is_empty()),
        "[{}]",
        backend_name()
    );
    assert_eq!(rec.close_codes(), vec![1008], "[{}] on_close", backend_name());
    common::assert_echo(srv.addr);
}

#[test]
fn ping_flood_from_a_non_reader_is_paused_not_queued() {
    let _serial = serial();
    let (srv, rec) = start_probe(MIB, |b| b);
    let mut c = RawClient::open(srv.addr);
    let mut batch = Vec::new();
    for i in 0..100u8 {
        batch.extend(common::masked(op::PING, true, &[i; 125]));
    }
    let rss0 = rss_bytes();
    // At least 10,000 pings (1.3 MB) before the kernel's buffers fill; the cap (400,000 pings,
    // 52 MB) is far beyond what socket buffers hold, so reaching it means nobody paused.
    let (sent, blocked) = flood(&mut c.stream, &batch, 400_000 * 131, Duration::from_secs(1));
    let pings = rec.pings.load(Ordering::Relaxed);
    let rss1 = rss_bytes();
    let growth = rss1.saturating_sub(rss0);
    eprintln!(
        "[{}] {} pings sent, {pings} read by the server, RSS +{} KiB",
        backend_name(),
        sent / 131,
        growth >> 10
    );
    assert!(sent / 131 >= 10_000, "[{}] only {} pings went out", backend_name(), sent / 131);
    assert!(blocked, "[{}] the server read {sent} bytes of pings without pausing", backend_name());
    assert!(growth < 16 * MIB, "[{}] RSS grew by {} KiB", backend_name(), growth >> 10);
    common::assert_echo(srv.addr);
    drop(c);
    srv.wait_idle(Duration::from_secs(8));
}

/// One connect / handshake / echo / close cycle.
fn cycle(addr: std::net::SocketAddr, i: usize) {
    let mut ws = common::ws_connect(addr);
    let m = WsMessage::text(format!("cycle {i}"));
    ws.send(m.clone()).expect("send");
    assert_eq!(common::ws_read_data(&mut ws), m, "[{}] cycle {i}", backend_name());
    common::ws_close(&mut ws);
}

/// `total` cycles over 4 client threads (after a warm-up on the same threads, so their malloc
/// arenas exist before the baseline); checks fds and RSS come back.
fn churn(total: usize) {
    let _serial = serial();
    let srv = start_echo(|b| b);
    let addr = srv.addr;
    const THREADS: usize = 4;
    let start = Arc::new(Barrier::new(THREADS + 1));
    let measured = Arc::new(Barrier::new(THREADS + 1));
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let (start, measured) = (Arc::clone(&start), Arc::clone(&measured));
            thread::spawn(move || {
                for i in 0..50 {
                    cycle(addr, i);
                }
                start.wait();
                measured.wait();
                for i in 0..total / THREADS {
                    cycle(addr, t * total + i);
                }
            })
        })
        .collect();
    start.wait();
    srv.wait_idle(Duration::from_secs(5));
    let (fd0, rss0) = (fd_count(), rss_bytes());
    let t0 = Instant::now();
    measured.wait();
    for t in threads {
        t.join().expect("client thread");
    }
    let took = t0.elapsed();
    srv.wait_idle(Duration::from_secs(10));
    let (fd1, rss1) = (fd_count(), rss_bytes());
    eprintln!(
        "[{}] {total} cycles in {took:?}; fds {fd0} -> {fd1}; RSS {} -> {} KiB",
        backend_name(),
        rss0 >> 10,
        rss1 >> 10
    );
    assert!(fd1 <= fd0 + 3, "[{}] fds {fd0} -> {fd1} after {total} cycles", backend_name());
    assert!(
        rss1 < rss0 + 8 * MIB,
        "[{}] RSS {} -> {} KiB after {total} cycles",
        backend_name(),
        rss0 >> 10,
        rss1 >> 10
    );
    common::assert_echo(addr);
}

#[test]
fn churn_20k_cycles_leaves_no_fds_or_memory() {
    churn(20_000);
}

#[test]
fn resets_mid_message_leave_no_fds() {
    let _serial = serial();
    let (srv, rec) = start_probe(MIB, |b| b);
    let fd0 = fd_count();
    let frame = common::masked(op::BINARY, true, &[0x5a; 1000]);
    for i in 0..200 {
        let mut c = RawClient::open(srv.addr);
        c.send_raw(&frame[..frame.len() / 2]);
        if i % 2 == 0 {
            // RST instead of FIN.
            socket2::SockRef::from(&c.stream).set_linger(Some(Duration::ZERO)).expect("linger");
        }
        drop(c);
    }
    srv.wait_idle(Duration::from_secs(5));
    assert!(
        common::wait_until(Duration::from_secs(5), || rec.closes().len() == 200),
        "[{}]",
        backend_name()
    );
    let codes = rec.close_codes();
    assert!(codes.iter().all(|&c| c == 1006), "[{}] on_close codes {codes:?}", backend_name());
    let fd1 = fd_count();
    assert!(fd1 <= fd0 + 2, "[{}] fds {fd0} -> {fd1} after 200 resets", backend_name());
    common::assert_echo(srv.addr);
}

/// Data and the FIN arriving together (one readiness event) must not hide the EOF: the server
/// must notice the hang-up, call `on_close(1006)` and close its socket, not wait for the idle
/// timeout.
#[test]
fn eof_right_after_data_is_noticed() {
    let _serial = serial();
    let (srv, rec) = start_probe(MIB, |b| b);
    let frame = common::masked(op::BINARY, true, &[0x5a; 1000]);
    for (i, cut) in [frame.len() / 2, frame.len()].into_iter().cycle().take(40).enumerate() {
        let mut c = RawClient::open(srv.addr);
        c.send_raw(&frame[..cut]);
        c.stream.shutdown(std::net::Shutdown::Write).expect("shutdown");
        let end = c.wait_end(Duration::from_secs(3));
        assert_ne!(
            end,
            End::TimedOut,
            "[{}] attempt {i}: {cut} bytes then FIN; the server never noticed the EOF",
            backend_name()
        );
    }
    srv.wait_idle(Duration::from_secs(2));
    assert_eq!(rec.closes().len(), 40, "[{}]", backend_name());
}

#[test]
fn idle_server_uses_no_cpu() {
    let _serial = serial();
    let srv = start_echo(|b| b);
    let conns: Vec<RawClient> = (0..10).map(|_| RawClient::open(srv.addr)).collect();
    assert!(
        common::wait_until(Duration::from_secs(5), || srv.connections() == 10),
        "[{}]",
        backend_name()
    );
    thread::sleep(Duration::from_millis(200));
    assert_eq!(
        common::worker_threads(),
        2,
        "[{}] another server is running in this process",
        backend_name()
    );
    let cpu0 = worker_cpu();
    thread::sleep(Duration::from_secs(2));
    let used = worker_cpu().saturating_sub(cpu0);
    eprintln!("[{}] idle workers used {used:?} over 2 s", backend_name());
    assert!(
        used < Duration::from_millis(50),
        "[{}] idle workers used {used:?} of CPU in 2 s",
        backend_name()
    );
    drop(conns);
}
