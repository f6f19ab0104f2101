//! One loadgen event loop: a mio `Poll`, a vector of connections indexed by token, one shared
//! read buffer, no allocation once the connections are set up.
//!
//! Every connection parses what the server sends as a stream: frame headers are decoded as
//! they arrive, payload bytes are compared against the expected message in place, straight
//! from the read buffer, so nothing is ever copied or assembled. Each mode's messages carry a
//! sequence number and a shifting pseudo-random pattern, so lost, duplicated, reordered,
//! truncated or corrupted messages are all caught.
//!
//! This file is the thread: connect and handshake every connection, wait for the start, run
//! the mode, close. The rest, one job per file:
//!
//! * `conn.rs`: one connection's socket, write buffer and state; reading, writing, dying.
//! * `handshake.rs`: the upgrade request and the checks on the server's 101.
//! * `frames.rs`: the server-frame decoder every WebSocket mode shares (pings, closes).
//! * `ctx.rs`: the worker-wide state the connections update (pattern, counters, histogram).
//! * `echo.rs`, `raw.rs`, `idle.rs`, `fanout.rs`: what each mode sends and checks.
//! * `results.rs`: the counters and the result handed back to the main thread.

mod conn;
mod ctx;
mod deflate;
mod echo;
mod fanout;
mod frames;
mod handshake;
mod idle;
mod raw;
mod results;

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use mio::{Events, Poll};
use sockeye::proto::frame::OpCode;

use super::args::{Args, Mode};
use conn::{Conn, Fail, St};
use ctx::Ctx;
pub(crate) use fanout::FanShared;
pub(crate) use results::{Errors, FanCounts, Progress, WorkerResult, ZCounts};

/// What the workers and the main thread share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) progress: Vec<Progress>,
    /// Set by the main thread once every worker is ready: the start of the warmup.
    pub(crate) t0: OnceLock<Instant>,
    /// Idle mode: the main thread's signal to close everything.
    pub(crate) stop: AtomicBool,
    /// The one clock origin of every worker (fanout latencies cross threads).
    pub(crate) base: Instant,
    /// Fanout: send counters and stamps per publisher (empty otherwise).
    pub(crate) fan: Arc<FanShared>,
}

/// The event loop's own parts: the poll, its event list, the one read buffer, and where the
/// progress line's counters go.
struct Loop<'a> {
    poll: Poll,
    events: Events,
    rbuf: Vec<u8>,
    progress: &'a Progress,
}

impl Loop<'_> {
    /// Publishes the counters for the progress line.
    fn publish(&self, ctx: &Ctx) {
        self.progress.msgs.store(ctx.done, Ordering::Relaxed);
        self.progress.open.store(ctx.open, Ordering::Relaxed);
        self.progress.errors.store(ctx.errors.total(), Ordering::Relaxed);
        self.progress.published.store(ctx.fc.published_total, Ordering::Relaxed);
    }

    /// Waits up to `timeout` and handles every event.
    fn events(&mut self, ctx: &mut Ctx, conns: &mut [Conn], timeout: Duration) {
        if let Err(e) = self.poll.poll(&mut self.events, Some(timeout)) {
            if e.kind() != io::ErrorKind::Interrupted {
                panic!("epoll_wait: {e}");
            }
        }
        for ev in self.events.iter() {
            let c = &mut conns[ev.token().0];
            if let Err(e) = c.on_event(ctx, ev, &mut self.rbuf) {
                c.kill(ctx, e);
            }
        }
    }

    /// One turn of the loop once everything is connected: events, then progress.
    fn turn(&mut self, ctx: &mut Ctx, conns: &mut [Conn], timeout: Duration) {
        self.events(ctx, conns, timeout);
        self.publish(ctx);
    }
}

/// One event-loop thread driving `n` connections; connection `k` of this worker is global
/// connection `idx + k * threads` (for the source-address rotation). In fanout mode the worker
/// also drives publishers `idx, idx + threads, ...` (after its `n` subscribers).
pub(crate) fn run(args: Arc<Args>, shared: Arc<Shared>, idx: usize, n: usize) -> WorkerResult {
    let mut lp = Loop {
        poll: Poll::new().expect("epoll_create"),
        events: Events::with_capacity(1024),
        rbuf: vec![0u8; 256 << 10],
        progress: &shared.progress[idx],
    };
    let mut seed = {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_usize(idx);
        h.finish()
    };
    let mut ctx = if args.mode == Mode::Fanout {
        Ctx::fanout(args.size, args.inflight as u64, args.rate, args.topics, shared.fan.clone())
    } else {
        Ctx::new(args.mode, args.text, args.size, args.inflight as u64, &mut seed)
    };
    ctx.base = shared.base;
    if args.deflate {
        ctx.enable_deflate(args.deflate_level, &mut seed);
    }
    ctx.prime = args.prime;
    // Subscriber k of this worker is global connection idx + k * threads; with topics it joins
    // room (idx + k * threads) % topics, publisher p room p % topics.
    let mut conns: Vec<Conn> = (0..n)
        .map(|k| {
            let gid = idx + k * args.threads;
            let room = args.room(gid);
            let mut c = Conn::new(&ctx, &args.room_path(room), &args.host, &mut seed);
            c.room = room;
            c.on_peer = args.on_peer(gid);
            c
        })
        .collect();
    // Fanout publishers of this worker: indices into `conns`.
    let mut pubs = Vec::new();
    for p in (idx..args.publishers).step_by(args.threads) {
        let room = args.room(p);
        let mut c = Conn::new(&ctx, &args.room_path(room), &args.host, &mut seed);
        c.room = room;
        c.make_publisher(&ctx, p);
        pubs.push(conns.len());
        conns.push(c);
    }

    connect_all(&mut lp, &args, &mut ctx, &mut conns, idx);
    lp.publish(&ctx);
    lp.progress.ready.store(true, Ordering::Release);
    let t0 = loop {
        if let Some(t) = shared.t0.get() {
            break *t;
        }
        std::thread::sleep(Duration::from_millis(1));
    };

    let (window, open_at_end) = if args.mode == Mode::Idle {
        idle::hold(&mut lp, &mut ctx, &mut conns, &shared.stop);
        (Duration::ZERO, ctx.open)
    } else {
        let window = measure(&mut lp, &args, &mut ctx, &mut conns, &pubs, t0);
        ctx.measuring = false;
        ctx.sending = false;
        (window, ctx.open)
    };

    if ctx.ws {
        close_all(&mut lp, &mut ctx, &mut conns);
    }
    drop(conns);
    lp.publish(&ctx);
    WorkerResult {
        hist: ctx.hist,
        msgs: ctx.msgs,
        bytes: ctx.bytes,
        window,
        errors: ctx.errors,
        opened: ctx.opened,
        open_at_end,
        clean_closes: ctx.clean_closes,
        first_error: ctx.first_error,
        fan: FanCounts { delivered_total: ctx.done, ..ctx.fc },
        z: ctx.z.as_ref().map(|z| z.counts).unwrap_or_default(),
        deflate_answer: ctx.z.as_mut().and_then(|z| z.answer.take()),
    }
}

/// Connects and handshakes every connection, at most `--connect-concurrency / threads` at a
/// time, each within its deadline.
fn connect_all(lp: &mut Loop<'_>, args: &Args, ctx: &mut Ctx, conns: &mut [Conn], idx: usize) {
    let total = conns.len();
    let cap = (args.connect_concurrency / args.threads).max(1);
    let mut next = 0usize;
    let mut last_sweep = Instant::now();
    loop {
        let pending =
            conns.iter().filter(|c| matches!(c.st, St::Connecting | St::Handshake)).count();
        let mut pending = pending;
        while pending < cap && next < total {
            let gid = match conns[next].pub_id {
                None => idx + next * args.threads,
                Some(p) => args.connections + p,
            };
            if let Err(e) = conns[next].start(args, gid, &lp.poll, next) {
                conns[next].kill(ctx, e);
            } else {
                pending += 1;
            }
            next += 1;
        }
        if pending == 0 && next == total {
            break;
        }
        lp.events(ctx, conns, Duration::from_millis(50));
        let now = Instant::now();
        if now - last_sweep > Duration::from_millis(100) {
            last_sweep = now;
            for c in conns.iter_mut() {
                if matches!(c.st, St::Connecting | St::Handshake) && now > c.deadline {
                    c.kill(ctx, Fail::Io(io::ErrorKind::TimedOut.into()));
                }
            }
        }
        lp.publish(ctx);
    }
}

/// Echo, raw and fanout: the kick (K messages on every open connection; fanout: on every
/// publisher, closed loop, while open loop paces them from here on), the warmup, then the
/// measured window. Returns the window as this worker saw it.
fn measure(
    lp: &mut Loop<'_>,
    args: &Args,
    ctx: &mut Ctx,
    conns: &mut [Conn],
    pubs: &[usize],
    t0: Instant,
) -> Duration {
    let t_warm = t0 + Duration::from_secs_f64(args.warmup);
    let t_end = t_warm + Duration::from_secs_f64(args.duration);
    let kick = ctx.now_ns();
    let mut seed = kick ^ 0x5eed_c4a2;
    let fanout = args.mode == Mode::Fanout;
    for c in conns.iter_mut().filter(|c| c.st == St::Open) {
        if fanout {
            c.last_ack = kick;
            c.fan_refill(ctx, kick);
        } else if !args.churn {
            for _ in 0..args.inflight {
                c.queue_msg(ctx, kick);
            }
        }
        if let Err(e) = c.flush() {
            c.kill(ctx, e);
        }
    }
    let mut win_start: Option<Instant> = None;
    let mut last_sweep = Instant::now();
    loop {
        let now = Instant::now();
        if win_start.is_none() && now >= t_warm {
            ctx.hist.clear();
            ctx.msgs = 0;
            ctx.bytes = 0;
            ctx.measuring = true;
            win_start = Some(now);
        }
        if now >= t_end {
            return win_start.map_or(Duration::ZERO, |w| now - w);
        }
        let next = if win_start.is_none() { t_warm } else { t_end };
        let mut timeout = (next - now).min(Duration::from_millis(100));
        if fanout && ctx.rate > 0.0 {
            let ns = ctx.now_ns();
            if let Some(t) = fanout::fan_pace(ctx, conns, pubs, kick, ns) {
                timeout = timeout.min(t);
            }
        } else if fanout && now - last_sweep >= Duration::from_millis(100) {
            last_sweep = now;
            fanout::unstall(ctx, conns, pubs);
        }
        lp.turn(ctx, conns, timeout);
        if args.churn {
            churn(lp, args, ctx, conns, &mut seed);
        }
    }
}

/// `--churn`: every connection that opened is counted (its connect-to-101 time into the
/// histogram), reset (SO_LINGER 0: no TIME_WAIT left behind to exhaust the ports) and replaced
/// by a new one in its slot; one that failed is replaced too.
fn churn(lp: &mut Loop<'_>, args: &Args, ctx: &mut Ctx, conns: &mut [Conn], seed: &mut u64) {
    let now = Instant::now();
    for (k, c) in conns.iter_mut().enumerate() {
        match c.st {
            St::Open => {
                if ctx.measuring {
                    ctx.msgs += 1;
                    ctx.hist.record((now - c.started).as_nanos() as u64);
                }
                if let Some(s) = c.sock.as_ref() {
                    let _ = socket2::SockRef::from(s).set_linger(Some(Duration::ZERO));
                }
                ctx.open -= 1;
            }
            St::Dead => {}
            _ => continue,
        }
        let room = c.room;
        *c = Conn::new(ctx, &args.room_path(room), &args.host, seed);
        c.room = room;
        if let Err(e) = c.start(args, k, &lp.poll, k) {
            c.kill(ctx, e);
        }
    }
}

/// A close frame on every open WebSocket, then up to 3 s for the answers.
fn close_all(lp: &mut Loop<'_>, ctx: &mut Ctx, conns: &mut [Conn]) {
    let deadline = Instant::now() + Duration::from_secs(3);
    for c in conns.iter_mut().filter(|c| c.st == St::Open) {
        c.push_frame(OpCode::Close, &1000u16.to_be_bytes());
        c.st = St::Closing;
        c.we_closed = true;
        if let Err(e) = c.flush() {
            c.kill(ctx, e);
        }
    }
    loop {
        let left = conns.iter().filter(|c| matches!(c.st, St::Closing | St::CloseSeen)).count();
        let now = Instant::now();
        if left == 0 || now >= deadline {
            break;
        }
        lp.turn(ctx, conns, (deadline - now).min(Duration::from_millis(100)));
    }
    for c in conns.iter_mut().filter(|c| matches!(c.st, St::Closing | St::CloseSeen)) {
        if c.st == St::Closing {
            ctx.errors.close_timeout += 1;
            ctx.note("no close frame from the server within 3 s".into());
        } else if c.we_closed {
            // Close frame answered; the TCP close is late but the handshake is done.
            ctx.clean_closes += 1;
        }
        c.sock = None;
        c.tls = None;
        c.st = St::Dead;
    }
}

#[cfg(test)]
mod testutil {
    use sockeye::proto::frame::{decode, OpCode};
    use sockeye::proto::mask::unmask;

    /// The payloads of the masked client frames in `wbuf`, unmasked.
    pub(super) fn client_payloads(wbuf: &[u8]) -> Vec<(OpCode, Vec<u8>)> {
        let mut out = Vec::new();
        let mut b = wbuf;
        while !b.is_empty() {
            let (h, n) = decode(b).expect("valid frame").expect("whole header");
            let key = h.mask.expect("client frames are masked");
            let len = h.payload_len as usize;
            let mut p = b[n..n + len].to_vec();
            unmask(&mut p, key, 0);
            out.push((h.opcode, p));
            b = &b[n + len..];
        }
        out
    }
}
