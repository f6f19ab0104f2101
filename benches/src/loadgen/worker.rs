//! One loadgen event loop: a mio `Poll`, a vector of connections indexed by token, one shared
//! read buffer, no allocation once the connections are set up.
//!
//! Every connection parses what the server sends as a stream: frame headers are decoded as
//! they arrive (a partial header is carried in 14 bytes), payload bytes are compared against
//! the expected message in place, straight from the read buffer, so nothing is ever copied or
//! assembled. Each payload is `prefix(seq) ++ pattern[seq % 251 ..]`: a per-message sequence
//! number then a shifting pseudo-random pattern, so lost, duplicated, reordered, truncated or
//! corrupted messages are all caught. The server must echo in order (RFC 6455 over one TCP
//! stream leaves it no other choice for an echo).
//!
//! Fanout mode: every connection is in one broadcast room. Publisher `p`'s message `seq` is
//! a text frame `hex4(p) ++ hex12(seq) ++ pattern[(p * 131 + seq) % 251 ..]` (the pattern is
//! the same in every thread), so any receiver can check it byte for byte without having seen
//! it sent; per connection, each publisher's sequence numbers must rise (a gap is `lost`, a
//! step back is an `order` error). Send times go into a shared per-publisher ring of atomics
//! (the subscriber that receives a message may live on another thread).

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use socket2::{Domain, Protocol, Socket, Type};
use sockeye::proto::frame::{self, OpCode, MAX_HEADER_LEN};
use sockeye::proto::handshake::accept_key;
use sockeye::proto::mask::unmask;

use super::args::{Args, Mode};
use super::hist::Histogram;

/// Live counters a worker publishes for the progress line (plain stores, once per loop turn).
#[derive(Debug, Default)]
pub(crate) struct Progress {
    pub(crate) msgs: AtomicU64,
    pub(crate) open: AtomicU64,
    pub(crate) errors: AtomicU64,
    /// Fanout: messages published (whole run).
    pub(crate) published: AtomicU64,
    pub(crate) ready: AtomicBool,
}

/// Bits of a send stamp that hold the send time (ns since `Shared::base`, modulo 2^40 ≈ 18
/// minutes; latencies are taken modulo the same).
const STAMP_TS_BITS: u32 = 40;
const STAMP_TS_MASK: u64 = (1 << STAMP_TS_BITS) - 1;
/// Total stamp slots over all publishers (2^21 × 8 bytes = 16 MiB), at least 2^12 each.
const STAMP_TOTAL_BITS: u32 = 21;

/// Fanout: what publishers and receivers on different threads share.
#[derive(Debug, Default)]
pub(crate) struct FanShared {
    /// Per publisher: messages queued so far (a message `seq >= sent` was never published).
    pub(crate) sent: Box<[AtomicU64]>,
    /// Per publisher, `1 << bits` send stamps indexed by `seq % (1 << bits)`: the send time
    /// in the low 40 bits, `(seq >> bits) % 2^24` above it (so a slot already reused for a
    /// later message is recognised and the latency is not sampled).
    stamps: Box<[AtomicU64]>,
    bits: u32,
}

impl FanShared {
    pub(crate) fn new(publishers: usize) -> FanShared {
        if publishers == 0 {
            return FanShared::default();
        }
        let log = usize::BITS - (publishers - 1).leading_zeros();
        let bits = STAMP_TOTAL_BITS.saturating_sub(log).max(12);
        FanShared {
            sent: (0..publishers).map(|_| AtomicU64::new(0)).collect(),
            stamps: (0..publishers << bits).map(|_| AtomicU64::new(0)).collect(),
            bits,
        }
    }

    fn stamp(&self, p: usize, seq: u64, now: u64) {
        let mask = (1u64 << self.bits) - 1;
        let v = (now & STAMP_TS_MASK) | (((seq >> self.bits) & 0xff_ffff) << STAMP_TS_BITS);
        self.stamps[(p << self.bits) | (seq & mask) as usize].store(v, Ordering::Relaxed);
        self.sent[p].store(seq + 1, Ordering::Release);
    }

    /// `now` minus the send time of `p`'s message `seq`, if its slot still holds it.
    fn latency(&self, p: usize, seq: u64, now: u64) -> Option<u64> {
        let mask = (1u64 << self.bits) - 1;
        let v = self.stamps[(p << self.bits) | (seq & mask) as usize].load(Ordering::Relaxed);
        ((v >> STAMP_TS_BITS) == (seq >> self.bits) & 0xff_ffff)
            .then(|| now.wrapping_sub(v) & STAMP_TS_MASK)
    }

    /// Messages publisher `p` has queued.
    fn published(&self, p: usize) -> u64 {
        self.sent[p].load(Ordering::Acquire)
    }
}

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

/// Error counters (whole run, warmup included).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Errors {
    /// connect() failed or timed out.
    pub(crate) connect: u64,
    /// Bad or missing 101 response / Sec-WebSocket-Accept.
    pub(crate) handshake: u64,
    /// Read/write errors (reset, ...) on an established connection.
    pub(crate) io: u64,
    /// Messages whose bytes differ from what was sent.
    pub(crate) mismatch: u64,
    /// Frames that break RFC 6455 for a client (masked, RSV bits, bad opcode, wrong length,
    /// unsolicited data messages).
    pub(crate) protocol: u64,
    /// The server closed (close frame or EOF) before we asked it to.
    pub(crate) unexpected_close: u64,
    /// Our closing handshake got no answer in time.
    pub(crate) close_timeout: u64,
    /// Fanout: a publisher's message received twice or after a later one of the same
    /// publisher (a gap is not an error: it is counted as lost).
    pub(crate) order: u64,
}

impl Errors {
    pub(crate) fn total(&self) -> u64 {
        self.connect
            + self.handshake
            + self.io
            + self.mismatch
            + self.protocol
            + self.unexpected_close
            + self.close_timeout
            + self.order
    }
    pub(crate) fn add(&mut self, o: &Errors) {
        self.connect += o.connect;
        self.handshake += o.handshake;
        self.io += o.io;
        self.mismatch += o.mismatch;
        self.protocol += o.protocol;
        self.unexpected_close += o.unexpected_close;
        self.close_timeout += o.close_timeout;
        self.order += o.order;
    }
}

/// What a worker hands back.
#[derive(Debug)]
pub(crate) struct WorkerResult {
    pub(crate) hist: Histogram,
    /// Echoes completed and verified inside the measured window.
    pub(crate) msgs: u64,
    /// Payload bytes of those, both directions.
    pub(crate) bytes: u64,
    /// The measured window as this worker saw it.
    pub(crate) window: Duration,
    pub(crate) errors: Errors,
    /// Connections that completed their handshake.
    pub(crate) opened: u64,
    /// Connections still open when the window (or the hold) ended.
    pub(crate) open_at_end: u64,
    /// Closing handshakes completed (close frame answered, then EOF).
    pub(crate) clean_closes: u64,
    pub(crate) first_error: Option<String>,
    pub(crate) fan: FanCounts,
}

/// Fanout counters a worker hands back (`WorkerResult::msgs` = deliveries to subscribers in
/// the window, `hist` = publish-to-subscriber latency).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct FanCounts {
    /// Messages published inside the window.
    pub(crate) published: u64,
    /// Messages published over the whole run.
    pub(crate) published_total: u64,
    /// Deliveries to subscribers over the whole run (warmup and close included).
    pub(crate) delivered_total: u64,
    /// Sequence gaps seen by subscribers, whole run and inside the window (a gap is seen
    /// when the next message of that publisher arrives, which may be after the window; a
    /// message dropped at the very end, with none after it, is not seen).
    pub(crate) lost: u64,
    pub(crate) lost_window: u64,
    /// Sequence gaps seen by publisher connections (they are in the room too), whole run.
    pub(crate) publisher_lost: u64,
    /// Deliveries whose send stamp had already been reused (no latency sample).
    pub(crate) unsampled: u64,
    /// Closed loop: a publisher that got none of its K messages back for 2 s and was sent
    /// one more so that it does not stall for good.
    pub(crate) stalls: u64,
}

impl FanCounts {
    pub(crate) fn add(&mut self, o: &FanCounts) {
        self.published += o.published;
        self.published_total += o.published_total;
        self.delivered_total += o.delivered_total;
        self.lost += o.lost;
        self.lost_window += o.lost_window;
        self.publisher_lost += o.publisher_lost;
        self.unsampled += o.unsampled;
        self.stalls += o.stalls;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum St {
    /// Not started yet (waiting for a connect slot).
    Idle,
    Connecting,
    Handshake,
    Open,
    /// We sent our close frame; waiting for the server's, then EOF.
    Closing,
    /// The server's close frame arrived; waiting for EOF.
    CloseSeen,
    Dead,
}

struct Conn {
    sock: Option<TcpStream>,
    st: St,
    /// We started the closing handshake (end of run), as opposed to the server.
    we_closed: bool,
    wbuf: Vec<u8>,
    wpos: usize,
    /// Handshake: response bytes so far; the accept value we expect; the request.
    hs: Vec<u8>,
    accept: [u8; 28],
    request: Vec<u8>,
    deadline: Instant,
    // Frame parser.
    hdr: [u8; MAX_HEADER_LEN],
    hdr_len: usize,
    in_frame: bool,
    /// Opcode of the current frame when it is a control frame.
    ctrl_op: Option<u8>,
    fin: bool,
    rem: u64,
    in_msg: bool,
    msg_off: usize,
    msg_bad: bool,
    ctrl: [u8; 125],
    ctrl_len: usize,
    // Echo bookkeeping.
    send_seq: u64,
    recv_seq: u64,
    /// Send timestamps (ns since the worker's base), indexed by seq % inflight.
    ring: Box<[u64]>,
    rng: u32,
    // Fanout.
    /// This connection's publisher id; `None` for a subscriber.
    pub_id: Option<usize>,
    /// Per publisher: the next sequence number expected.
    next: Box<[u64]>,
    /// The current message's header, as it arrives.
    pre: [u8; FAN_PREFIX],
    cur_pub: usize,
    cur_seq: u64,
    /// Publisher: its own messages received back (the highest seq + 1).
    own_acked: u64,
    /// Publisher: when it last got one of its own messages back (ns).
    last_ack: u64,
}

/// Fanout header: 4 hex digits of publisher id, 12 of sequence number.
const FAN_PREFIX: usize = 16;
/// Seed of the fanout pattern: every thread must derive the same one.
const FAN_SEED: u64 = 0x5eed_fa40_07c0_ffee;

/// Worker-wide state the per-connection code needs (kept apart from the connection vector so
/// both can be borrowed at once).
struct Ctx {
    mode: Mode,
    ws: bool,
    text: bool,
    size: usize,
    inflight: u64,
    /// `size + 251` bytes: message `seq` uses `pattern[seq % 251 ..][.. size - prefix_len]`.
    pattern: Vec<u8>,
    prefix_len: usize,
    base: Instant,
    measuring: bool,
    sending: bool,
    hist: Histogram,
    msgs: u64,
    bytes: u64,
    /// Verified echoes over the whole run (progress line).
    done: u64,
    errors: Errors,
    first_error: Option<String>,
    open: u64,
    opened: u64,
    clean_closes: u64,
    // Fanout.
    fan: Arc<FanShared>,
    publishers: usize,
    /// Messages/s per publisher; 0 = closed loop.
    rate: f64,
    fc: FanCounts,
}

impl Ctx {
    fn new(mode: Mode, text: bool, size: usize, inflight: u64, seed: &mut u64) -> Ctx {
        let pattern: Vec<u8> = (0..size + 251)
            .map(|_| {
                let r = splitmix(seed);
                if text {
                    b'!' + (r % 94) as u8
                } else {
                    r as u8
                }
            })
            .collect();
        Ctx {
            mode,
            ws: mode != Mode::Raw,
            text,
            size,
            inflight,
            pattern,
            prefix_len: size.min(if text { 16 } else { 8 }),
            base: Instant::now(),
            measuring: false,
            sending: mode != Mode::Idle,
            hist: Histogram::new(),
            msgs: 0,
            bytes: 0,
            done: 0,
            errors: Errors::default(),
            first_error: None,
            open: 0,
            opened: 0,
            clean_closes: 0,
            fan: Arc::new(FanShared::default()),
            publishers: 0,
            rate: 0.0,
            fc: FanCounts::default(),
        }
    }

    /// Fanout: text messages of `size` bytes, K outstanding per publisher (closed loop) or
    /// `rate` per second; the pattern comes from a fixed seed so that all threads agree.
    fn fanout(size: usize, inflight: u64, rate: f64, fan: Arc<FanShared>) -> Ctx {
        let mut seed = FAN_SEED;
        let mut ctx = Ctx::new(Mode::Fanout, true, size, inflight, &mut seed);
        ctx.publishers = fan.sent.len();
        ctx.fan = fan;
        ctx.rate = rate;
        ctx
    }

    /// The header of publisher `p`'s message `seq`.
    #[inline]
    fn fan_prefix(p: usize, seq: u64) -> [u8; FAN_PREFIX] {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut h = [0u8; FAN_PREFIX];
        let v = ((p as u64) << 48) | (seq & ((1 << 48) - 1));
        for (i, b) in h.iter_mut().enumerate() {
            *b = HEX[((v >> (60 - 4 * i)) & 15) as usize];
        }
        h
    }

    /// Parses a fanout header: (publisher, seq), or why it cannot be one of ours.
    fn parse_fan_prefix(&self, h: &[u8; FAN_PREFIX]) -> Result<(usize, u64), &'static str> {
        let mut v = 0u64;
        for &b in h {
            let d = match b {
                b'0'..=b'9' => b - b'0',
                b'a'..=b'f' => b - b'a' + 10,
                _ => return Err("message header is not 16 lowercase hex digits"),
            };
            v = (v << 4) | u64::from(d);
        }
        let (p, seq) = ((v >> 48) as usize, v & ((1 << 48) - 1));
        if p >= self.publishers {
            return Err("message from a publisher that does not exist");
        }
        if seq >= self.fan.published(p) {
            return Err("message that was never published");
        }
        Ok((p, seq))
    }

    /// Where publisher `p`'s message `seq` starts in the pattern.
    #[inline]
    fn fan_offset(p: usize, seq: u64) -> usize {
        ((p as u64 * 131 + seq) % 251) as usize
    }

    /// Whether `chunk` equals bytes `off..` (past the header) of `p`'s message `seq`.
    #[inline]
    fn fan_verify(&self, p: usize, seq: u64, off: usize, chunk: &[u8]) -> bool {
        let b = Self::fan_offset(p, seq) + off - FAN_PREFIX;
        chunk == &self.pattern[b..b + chunk.len()]
    }

    #[inline]
    fn prefix(&self, seq: u64) -> [u8; 16] {
        let mut p = [0u8; 16];
        if self.text {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            for (i, b) in p.iter_mut().enumerate() {
                *b = HEX[((seq >> (60 - 4 * i)) & 15) as usize];
            }
        } else {
            p[..8].copy_from_slice(&seq.to_le_bytes());
        }
        p
    }

    /// Whether `chunk` equals bytes `off..off + chunk.len()` of message `seq`.
    #[inline]
    fn verify(&self, seq: u64, off: usize, chunk: &[u8]) -> bool {
        let p = self.prefix_len;
        let mut off = off;
        let mut c = chunk;
        let mut ok = true;
        if off < p {
            let n = (p - off).min(c.len());
            let pre = self.prefix(seq);
            ok &= c[..n] == pre[off..off + n];
            c = &c[n..];
            off += n;
        }
        if !c.is_empty() {
            let b = (seq % 251) as usize + off - p;
            ok &= c == &self.pattern[b..b + c.len()];
        }
        ok
    }

    fn note(&mut self, what: String) {
        if self.first_error.is_none() {
            self.first_error = Some(what);
        }
    }

    #[inline]
    fn now_ns(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }
}

/// Why a connection is being dropped.
#[derive(Debug)]
enum Fail {
    Io(io::Error),
    Protocol(&'static str),
    Handshake(String),
    Eof,
}

impl std::fmt::Display for Fail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fail::Io(e) => write!(f, "{e}"),
            Fail::Protocol(p) => f.write_str(p),
            Fail::Handshake(h) => f.write_str(h),
            Fail::Eof => f.write_str("EOF"),
        }
    }
}

fn xorshift(x: &mut u32) -> u32 {
    *x ^= *x << 13;
    *x ^= *x >> 17;
    *x ^= *x << 5;
    *x
}

fn splitmix(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Conn {
    fn new(ctx: &Ctx, path: &str, host: &str, rng: &mut u64) -> Conn {
        let mut key = [0u8; 16];
        key[..8].copy_from_slice(&splitmix(rng).to_le_bytes());
        key[8..].copy_from_slice(&splitmix(rng).to_le_bytes());
        let key_b64 = base64::engine::general_purpose::STANDARD.encode(key);
        let accept = accept_key(key_b64.as_bytes());
        let request = if ctx.ws {
            format!(
                "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Key: {}\r\nSec-WebSocket-Version: 13\r\n\
                 User-Agent: sockeye-loadgen\r\n\r\n",
                path, host, key_b64
            )
            .into_bytes()
        } else {
            Vec::new()
        };
        // Echo send times (fanout keeps them in `FanShared`).
        let ring =
            if matches!(ctx.mode, Mode::Echo | Mode::Raw) { ctx.inflight as usize } else { 0 };
        let wcap = match ctx.mode {
            Mode::Idle => 0,
            // Subscribers send pongs and a close frame only (publishers: `make_publisher`).
            Mode::Fanout => 256,
            _ => ctx.inflight as usize * (ctx.size + MAX_HEADER_LEN) + 256,
        };
        Conn {
            sock: None,
            st: St::Idle,
            we_closed: false,
            wbuf: Vec::with_capacity(wcap),
            wpos: 0,
            hs: Vec::new(),
            accept,
            request,
            deadline: ctx.base,
            hdr: [0; MAX_HEADER_LEN],
            hdr_len: 0,
            in_frame: false,
            ctrl_op: None,
            fin: false,
            rem: 0,
            in_msg: false,
            msg_off: 0,
            msg_bad: false,
            ctrl: [0; 125],
            ctrl_len: 0,
            send_seq: 0,
            recv_seq: 0,
            ring: vec![0; ring].into_boxed_slice(),
            rng: (splitmix(rng) as u32) | 1,
            pub_id: None,
            next: vec![0; ctx.publishers].into_boxed_slice(),
            pre: [0; FAN_PREFIX],
            cur_pub: 0,
            cur_seq: 0,
            own_acked: 0,
            last_ack: 0,
        }
    }

    /// Fanout: makes this connection publisher `p`, with room for what it may queue at once
    /// (K messages closed loop; open loop at least 64, what accumulates while the socket
    /// does not take them stays due instead).
    fn make_publisher(&mut self, ctx: &Ctx, p: usize) {
        self.pub_id = Some(p);
        let msgs = if ctx.rate > 0.0 { ctx.inflight.max(64) } else { ctx.inflight } as usize;
        self.wbuf = Vec::with_capacity(msgs * (ctx.size + MAX_HEADER_LEN) + 256);
    }

    /// Whether one more fanout message fits in the write buffer without growing it.
    fn fan_room(&self, ctx: &Ctx) -> bool {
        self.wbuf.len() - self.wpos + ctx.size + MAX_HEADER_LEN + 128 <= self.wbuf.capacity()
    }

    /// Creates the socket, binds the source address, starts the non-blocking connect and
    /// registers for READABLE | WRITABLE (edge-triggered).
    fn start(&mut self, args: &Args, gid: usize, poll: &Poll, token: usize) -> Result<(), Fail> {
        let sock = Socket::new(Domain::IPV4, Type::STREAM.nonblocking(), Some(Protocol::TCP))
            .map_err(Fail::Io)?;
        sock.set_tcp_nodelay(true).map_err(Fail::Io)?;
        if args.src_addrs > 0 {
            let one: libc::c_int = 1;
            // SAFETY: a valid socket fd, a pointer to a live c_int and its size. Failure is
            // harmless (the kernel then picks the port at bind time), so the result is ignored.
            unsafe {
                libc::setsockopt(
                    std::os::fd::AsRawFd::as_raw_fd(&sock),
                    libc::IPPROTO_IP,
                    libc::IP_BIND_ADDRESS_NO_PORT,
                    (&one as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
            let ip = Ipv4Addr::new(127, 0, 0, 1 + (gid % usize::from(args.src_addrs)) as u8);
            sock.bind(&SocketAddr::new(IpAddr::V4(ip), 0).into()).map_err(Fail::Io)?;
        }
        match sock.connect(&args.addr.into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => return Err(Fail::Io(e)),
        }
        let mut s = TcpStream::from_std(sock.into());
        poll.registry()
            .register(&mut s, Token(token), Interest::READABLE | Interest::WRITABLE)
            .map_err(Fail::Io)?;
        self.sock = Some(s);
        self.st = St::Connecting;
        self.deadline = Instant::now() + Duration::from_secs(15);
        Ok(())
    }

    fn compact(&mut self) {
        if self.wpos > 0 {
            if self.wpos == self.wbuf.len() {
                self.wbuf.clear();
            } else {
                self.wbuf.copy_within(self.wpos.., 0);
                self.wbuf.truncate(self.wbuf.len() - self.wpos);
            }
            self.wpos = 0;
        }
    }

    /// Appends one masked client frame.
    fn push_frame(&mut self, op: OpCode, payload: &[u8]) {
        self.compact();
        let key = xorshift(&mut self.rng).to_le_bytes();
        let mut h = [0u8; MAX_HEADER_LEN];
        let n = frame::encode(true, 0, op, payload.len() as u64, Some(key), &mut h);
        self.wbuf.extend_from_slice(&h[..n]);
        let start = self.wbuf.len();
        self.wbuf.extend_from_slice(payload);
        unmask(&mut self.wbuf[start..], key, 0);
    }

    /// Appends the next echo message, stamped `now`.
    #[inline]
    fn queue_msg(&mut self, ctx: &Ctx, now: u64) {
        self.compact();
        let seq = self.send_seq;
        self.send_seq += 1;
        self.ring[(seq % ctx.inflight) as usize] = now;
        let key = xorshift(&mut self.rng).to_le_bytes();
        if ctx.ws {
            let op = if ctx.text { OpCode::Text } else { OpCode::Binary };
            let mut h = [0u8; MAX_HEADER_LEN];
            let n = frame::encode(true, 0, op, ctx.size as u64, Some(key), &mut h);
            self.wbuf.extend_from_slice(&h[..n]);
        }
        let start = self.wbuf.len();
        let p = ctx.prefix_len;
        self.wbuf.extend_from_slice(&ctx.prefix(seq)[..p]);
        let b = (seq % 251) as usize;
        self.wbuf.extend_from_slice(&ctx.pattern[b..b + ctx.size - p]);
        if ctx.ws {
            unmask(&mut self.wbuf[start..], key, 0);
        }
    }

    /// Fanout: appends this publisher's next message, stamped `now`.
    #[inline]
    fn queue_fan(&mut self, ctx: &mut Ctx, now: u64) {
        let Some(p) = self.pub_id else { return };
        self.compact();
        let seq = self.send_seq;
        self.send_seq += 1;
        ctx.fan.stamp(p, seq, now);
        ctx.fc.published_total += 1;
        if ctx.measuring {
            ctx.fc.published += 1;
        }
        let key = xorshift(&mut self.rng).to_le_bytes();
        let mut h = [0u8; MAX_HEADER_LEN];
        let n = frame::encode(true, 0, OpCode::Text, ctx.size as u64, Some(key), &mut h);
        self.wbuf.extend_from_slice(&h[..n]);
        let start = self.wbuf.len();
        self.wbuf.extend_from_slice(&Ctx::fan_prefix(p, seq));
        let b = Ctx::fan_offset(p, seq);
        self.wbuf.extend_from_slice(&ctx.pattern[b..b + ctx.size - FAN_PREFIX]);
        unmask(&mut self.wbuf[start..], key, 0);
    }

    /// Fanout, closed loop: tops the publisher up to K messages it has not received back.
    fn fan_refill(&mut self, ctx: &mut Ctx, now: u64) {
        if self.pub_id.is_none() || ctx.rate > 0.0 || !ctx.sending || self.st != St::Open {
            return;
        }
        while self.send_seq - self.own_acked < ctx.inflight {
            self.queue_fan(ctx, now);
        }
    }

    /// Writes what is pending; Ok when the socket would block (the rest waits for WRITABLE).
    fn flush(&mut self) -> Result<(), Fail> {
        let Some(sock) = self.sock.as_mut() else { return Ok(()) };
        while self.wpos < self.wbuf.len() {
            match sock.write(&self.wbuf[self.wpos..]) {
                Ok(0) => return Err(Fail::Io(io::ErrorKind::WriteZero.into())),
                Ok(n) => self.wpos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Fail::Io(e)),
            }
        }
        self.wbuf.clear();
        self.wpos = 0;
        Ok(())
    }

    /// The 101 response: bytes so far in `hs`. Returns the length of the head once it is
    /// complete and valid.
    fn check_handshake(&self) -> Result<Option<usize>, Fail> {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        let n = match resp.parse(&self.hs) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => {
                if self.hs.len() > 8192 {
                    return Err(Fail::Handshake("response head over 8 KiB".into()));
                }
                return Ok(None);
            }
            Err(e) => return Err(Fail::Handshake(format!("bad HTTP response: {e}"))),
        };
        if resp.code != Some(101) {
            return Err(Fail::Handshake(format!(
                "status {} {}",
                resp.code.unwrap_or(0),
                resp.reason.unwrap_or("")
            )));
        }
        let hv = |name: &str| {
            resp.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value)
        };
        let has_token = |v: Option<&[u8]>, tok: &str| {
            v.is_some_and(|v| {
                v.split(|&b| b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(tok.as_bytes()))
            })
        };
        if !has_token(hv("upgrade"), "websocket") {
            return Err(Fail::Handshake("101 without Upgrade: websocket".into()));
        }
        if !has_token(hv("connection"), "upgrade") {
            return Err(Fail::Handshake("101 without Connection: Upgrade".into()));
        }
        match hv("sec-websocket-accept") {
            Some(v) if v.trim_ascii() == self.accept => {}
            Some(v) => {
                return Err(Fail::Handshake(format!(
                    "wrong Sec-WebSocket-Accept {:?}",
                    String::from_utf8_lossy(v)
                )))
            }
            None => return Err(Fail::Handshake("101 without Sec-WebSocket-Accept".into())),
        }
        if hv("sec-websocket-extensions").is_some() {
            return Err(Fail::Handshake("server picked an extension we did not offer".into()));
        }
        if hv("sec-websocket-protocol").is_some() {
            return Err(Fail::Handshake("server picked a subprotocol we did not offer".into()));
        }
        Ok(Some(n))
    }

    /// Feeds bytes that arrived on an open (or closing) connection.
    fn on_data(&mut self, ctx: &mut Ctx, data: &[u8], now: u64) -> Result<(), Fail> {
        if !ctx.ws {
            return self.on_raw(ctx, data, now);
        }
        let mut d = data;
        while !d.is_empty() {
            if !self.in_frame {
                let used = if self.hdr_len == 0 {
                    match self.header(ctx, d)? {
                        Some(n) => n,
                        None => {
                            self.hdr[..d.len()].copy_from_slice(d);
                            self.hdr_len = d.len();
                            return Ok(());
                        }
                    }
                } else {
                    let old = self.hdr_len;
                    let take = (MAX_HEADER_LEN - old).min(d.len());
                    let mut tmp = self.hdr;
                    tmp[old..old + take].copy_from_slice(&d[..take]);
                    match self.header(ctx, &tmp[..old + take])? {
                        Some(n) => {
                            self.hdr_len = 0;
                            n - old
                        }
                        None => {
                            self.hdr = tmp;
                            self.hdr_len = old + take;
                            return Ok(());
                        }
                    }
                };
                d = &d[used..];
                if self.rem == 0 {
                    self.in_frame = false;
                    self.frame_end(ctx, now)?;
                }
                continue;
            }
            let n = self.rem.min(d.len() as u64) as usize;
            let (chunk, tail) = d.split_at(n);
            d = tail;
            if self.ctrl_op.is_some() {
                self.ctrl[self.ctrl_len..self.ctrl_len + n].copy_from_slice(chunk);
                self.ctrl_len += n;
            } else if ctx.mode == Mode::Echo {
                if !ctx.verify(self.recv_seq, self.msg_off, chunk) {
                    self.msg_bad = true;
                }
                self.msg_off += n;
            } else if ctx.mode == Mode::Fanout {
                self.fan_chunk(ctx, chunk);
            }
            self.rem -= n as u64;
            if self.rem == 0 {
                self.in_frame = false;
                self.frame_end(ctx, now)?;
            }
        }
        Ok(())
    }

    /// Decodes a server frame header at the start of `b` and sets up the frame; `None` if the
    /// header is incomplete, else its length.
    fn header(&mut self, ctx: &Ctx, b: &[u8]) -> Result<Option<usize>, Fail> {
        if b.len() < 2 {
            return Ok(None);
        }
        let (b0, b1) = (b[0], b[1]);
        if b1 & 0x80 != 0 {
            return Err(Fail::Protocol("server frame is masked"));
        }
        let need = match b1 & 0x7f {
            126 => 4,
            127 => 10,
            _ => 2,
        };
        if b.len() < need {
            return Ok(None);
        }
        let len = match need {
            4 => u64::from(u16::from_be_bytes([b[2], b[3]])),
            10 => u64::from_be_bytes([b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9]]),
            _ => u64::from(b1 & 0x7f),
        };
        if b0 & 0x70 != 0 {
            return Err(Fail::Protocol("RSV bits set"));
        }
        let fin = b0 & 0x80 != 0;
        let op = b0 & 0x0f;
        self.ctrl_op = None;
        match op {
            0..=2 => {
                if op == 0 && !self.in_msg {
                    return Err(Fail::Protocol("continuation frame without a message"));
                }
                if op != 0 {
                    if self.in_msg {
                        return Err(Fail::Protocol("new data frame inside a fragmented message"));
                    }
                    self.in_msg = true;
                    self.msg_off = 0;
                    // Text echoed as binary or the reverse is a mismatch.
                    self.msg_bad = (op == 1) != ctx.text;
                }
                if ctx.mode == Mode::Echo {
                    if self.recv_seq >= self.send_seq {
                        return Err(Fail::Protocol("echo of a message never sent"));
                    }
                    if self.msg_off as u64 + len > ctx.size as u64 {
                        return Err(Fail::Protocol("echo longer than the message sent"));
                    }
                }
                if ctx.mode == Mode::Fanout && self.msg_off as u64 + len > ctx.size as u64 {
                    return Err(Fail::Protocol("message longer than --size"));
                }
            }
            8..=10 => {
                if !fin || len > 125 {
                    return Err(Fail::Protocol("fragmented or oversized control frame"));
                }
                self.ctrl_op = Some(op);
                self.ctrl_len = 0;
            }
            _ => return Err(Fail::Protocol("reserved opcode")),
        }
        self.in_frame = true;
        self.fin = fin;
        self.rem = len;
        Ok(Some(need))
    }

    fn frame_end(&mut self, ctx: &mut Ctx, now: u64) -> Result<(), Fail> {
        if let Some(op) = self.ctrl_op.take() {
            match op {
                9 if self.st == St::Open => {
                    let p = self.ctrl;
                    self.push_frame(OpCode::Pong, &p[..self.ctrl_len]);
                }
                8 => {
                    if !self.we_closed {
                        ctx.errors.unexpected_close += 1;
                        let code = if self.ctrl_len >= 2 {
                            u16::from_be_bytes([self.ctrl[0], self.ctrl[1]])
                        } else {
                            1005
                        };
                        ctx.note(format!(
                            "server closed: code {code} {:?}",
                            String::from_utf8_lossy(
                                &self.ctrl[self.ctrl_len.min(2)..self.ctrl_len]
                            )
                        ));
                        if self.st == St::Open {
                            let p = self.ctrl;
                            self.push_frame(OpCode::Close, &p[..self.ctrl_len.min(2)]);
                        }
                    }
                    self.st = St::CloseSeen;
                }
                _ => {}
            }
            return Ok(());
        }
        if !self.fin {
            return Ok(());
        }
        self.in_msg = false;
        if ctx.mode == Mode::Idle {
            ctx.errors.protocol += 1;
            ctx.note("data message on an idle connection".into());
            return Ok(());
        }
        self.complete(ctx, now);
        Ok(())
    }

    /// Fanout: payload bytes of the current message, straight from the read buffer: the
    /// header is gathered (it may arrive in pieces), then the rest is compared in place.
    #[inline]
    fn fan_chunk(&mut self, ctx: &mut Ctx, chunk: &[u8]) {
        let mut c = chunk;
        if self.msg_off < FAN_PREFIX {
            let n = (FAN_PREFIX - self.msg_off).min(c.len());
            self.pre[self.msg_off..self.msg_off + n].copy_from_slice(&c[..n]);
            self.msg_off += n;
            c = &c[n..];
            if self.msg_off == FAN_PREFIX {
                match ctx.parse_fan_prefix(&self.pre) {
                    Ok((p, seq)) => {
                        self.cur_pub = p;
                        self.cur_seq = seq;
                    }
                    Err(why) => {
                        if !self.msg_bad {
                            ctx.note(format!("{why}: {:?}", String::from_utf8_lossy(&self.pre)));
                        }
                        self.msg_bad = true;
                    }
                }
            }
        }
        if !c.is_empty() {
            if !self.msg_bad && !ctx.fan_verify(self.cur_pub, self.cur_seq, self.msg_off, c) {
                self.msg_bad = true;
            }
            self.msg_off += c.len();
        }
    }

    /// Fanout: a whole message received; checks it and the publisher's sequence.
    fn fan_complete(&mut self, ctx: &mut Ctx, now: u64) {
        let (p, seq) = (self.cur_pub, self.cur_seq);
        let ok = !self.msg_bad && self.msg_off == ctx.size;
        self.msg_off = 0;
        self.msg_bad = false;
        if !ok {
            ctx.errors.mismatch += 1;
            ctx.note("fanout message differs from what was published".into());
            return;
        }
        let expect = self.next[p];
        if seq < expect {
            ctx.errors.order += 1;
            ctx.note(format!("publisher {p}: message {seq} received after message {}", expect - 1));
            return;
        }
        self.next[p] = seq + 1;
        let gap = seq - expect;
        match self.pub_id {
            None => {
                ctx.fc.lost += gap;
                ctx.done += 1;
                if ctx.measuring {
                    ctx.fc.lost_window += gap;
                    ctx.msgs += 1;
                    ctx.bytes += ctx.size as u64;
                    match ctx.fan.latency(p, seq, now) {
                        Some(l) => ctx.hist.record(l),
                        None => ctx.fc.unsampled += 1,
                    }
                }
            }
            Some(me) => {
                ctx.fc.publisher_lost += gap;
                if p == me {
                    self.own_acked = seq + 1;
                    self.last_ack = now;
                    self.fan_refill(ctx, now);
                }
            }
        }
    }

    /// Message `recv_seq` fully received.
    #[inline]
    fn complete(&mut self, ctx: &mut Ctx, now: u64) {
        if ctx.mode == Mode::Fanout {
            self.fan_complete(ctx, now);
            return;
        }
        let seq = self.recv_seq;
        self.recv_seq += 1;
        if self.msg_off != ctx.size {
            self.msg_bad = true;
        }
        if self.msg_bad {
            ctx.errors.mismatch += 1;
            ctx.note(format!("echo of message {seq} differs from what was sent"));
        } else {
            ctx.done += 1;
            if ctx.measuring {
                let sent = self.ring[(seq % ctx.inflight) as usize];
                ctx.hist.record(now.saturating_sub(sent));
                ctx.msgs += 1;
                ctx.bytes += 2 * ctx.size as u64;
            }
        }
        self.msg_off = 0;
        self.msg_bad = false;
        if ctx.sending && self.st == St::Open {
            self.queue_msg(ctx, now);
        }
    }

    fn on_raw(&mut self, ctx: &mut Ctx, data: &[u8], now: u64) -> Result<(), Fail> {
        let mut d = data;
        while !d.is_empty() {
            if self.recv_seq >= self.send_seq {
                return Err(Fail::Protocol("more bytes echoed than sent"));
            }
            let n = (ctx.size - self.msg_off).min(d.len());
            if !ctx.verify(self.recv_seq, self.msg_off, &d[..n]) {
                self.msg_bad = true;
            }
            self.msg_off += n;
            d = &d[n..];
            if self.msg_off == ctx.size {
                self.complete(ctx, now);
            }
        }
        Ok(())
    }

    /// Reads until the socket is drained (a short read means drained: with edge-triggered
    /// epoll, bytes arriving later raise a new event, so the EAGAIN read is skipped).
    fn read_all(&mut self, ctx: &mut Ctx, rbuf: &mut [u8]) -> Result<(), Fail> {
        loop {
            let Some(sock) = self.sock.as_mut() else { return Ok(()) };
            let n = match sock.read(rbuf) {
                Ok(0) => return Err(Fail::Eof),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Fail::Io(e)),
            };
            let now = ctx.now_ns();
            match self.st {
                St::Handshake => {
                    self.hs.extend_from_slice(&rbuf[..n]);
                    if let Some(head) = self.check_handshake()? {
                        self.opened(ctx);
                        let hs = std::mem::take(&mut self.hs);
                        self.on_data(ctx, &hs[head..], now)?;
                    }
                }
                St::Open | St::Closing | St::CloseSeen => self.on_data(ctx, &rbuf[..n], now)?,
                St::Idle | St::Connecting | St::Dead => {}
            }
            if n < rbuf.len() {
                return Ok(());
            }
        }
    }

    fn opened(&mut self, ctx: &mut Ctx) {
        self.st = St::Open;
        self.request = Vec::new();
        ctx.open += 1;
        ctx.opened += 1;
    }

    /// Handles one readiness event.
    fn on_event(
        &mut self,
        ctx: &mut Ctx,
        ev: &mio::event::Event,
        rbuf: &mut [u8],
    ) -> Result<(), Fail> {
        if self.st == St::Connecting {
            let Some(sock) = self.sock.as_mut() else { return Ok(()) };
            if let Some(e) = sock.take_error().map_err(Fail::Io)? {
                return Err(Fail::Io(e));
            }
            match sock.peer_addr() {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return Ok(()),
                Err(e) => return Err(Fail::Io(e)),
            }
            if ctx.ws {
                self.st = St::Handshake;
                self.hs = Vec::with_capacity(512);
                let req = std::mem::take(&mut self.request);
                self.wbuf.extend_from_slice(&req);
            } else {
                self.opened(ctx);
            }
        }
        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
            self.read_all(ctx, rbuf)?;
        }
        if self.wpos < self.wbuf.len() {
            self.flush()?;
        }
        Ok(())
    }

    /// Drops the connection, counting why.
    fn kill(&mut self, ctx: &mut Ctx, why: Fail) {
        let was_open = matches!(self.st, St::Open | St::Closing | St::CloseSeen);
        match (&why, self.st) {
            (Fail::Eof, St::CloseSeen) => {
                if self.we_closed {
                    ctx.clean_closes += 1;
                }
            }
            (_, St::Idle | St::Connecting) => {
                ctx.errors.connect += 1;
                ctx.note(format!("connect: {why}"));
            }
            (_, St::Handshake) | (Fail::Handshake(_), _) => {
                ctx.errors.handshake += 1;
                ctx.note(format!("handshake: {why}"));
            }
            (Fail::Eof, St::Closing) => {
                ctx.errors.unexpected_close += 1;
                ctx.note("EOF before the server answered our close frame".into());
            }
            (Fail::Eof, _) => {
                ctx.errors.unexpected_close += 1;
                ctx.note("server closed the TCP connection without a close frame".into());
            }
            (Fail::Io(e), _) => {
                ctx.errors.io += 1;
                ctx.note(format!("I/O error: {e}"));
            }
            (Fail::Protocol(p), _) => {
                ctx.errors.protocol += 1;
                ctx.note(format!("protocol: {p}"));
            }
        }
        if was_open {
            ctx.open -= 1;
        }
        self.sock = None;
        self.st = St::Dead;
        self.wbuf = Vec::new();
        self.hs = Vec::new();
    }
}

/// Fanout, open loop: queues what each publisher of this worker is due (message `seq` is due
/// at `kick + seq / rate`), as far as its write buffer has room, and flushes. Returns how long
/// until the next message is due on a publisher that has room (`None`: none has).
fn fan_pace(
    ctx: &mut Ctx,
    conns: &mut [Conn],
    pubs: &[usize],
    kick: u64,
    now: u64,
) -> Option<Duration> {
    let mut next: Option<u64> = None;
    for &i in pubs {
        let c = &mut conns[i];
        if c.st != St::Open {
            continue;
        }
        let due = ((now.saturating_sub(kick)) as f64 * ctx.rate / 1e9) as u64 + 1;
        let before = c.send_seq;
        while c.send_seq < due && c.fan_room(ctx) {
            c.queue_fan(ctx, now);
        }
        if c.send_seq > before {
            if let Err(e) = c.flush() {
                c.kill(ctx, e);
                continue;
            }
        }
        if c.fan_room(ctx) {
            let at = kick + (c.send_seq as f64 * 1e9 / ctx.rate) as u64;
            next = Some(next.map_or(at, |n| n.min(at)));
        }
    }
    next.map(|at| Duration::from_nanos(at.saturating_sub(now)))
}

/// One event-loop thread driving `n` connections; connection `k` of this worker is global
/// connection `idx + k * threads` (for the source-address rotation). In fanout mode the worker
/// also drives publishers `idx, idx + threads, ...` (after its `n` subscribers).
pub(crate) fn run(args: Arc<Args>, shared: Arc<Shared>, idx: usize, n: usize) -> WorkerResult {
    let poll = Poll::new().expect("epoll_create");
    let mut poll = poll;
    let mut events = Events::with_capacity(1024);
    let mut rbuf = vec![0u8; 256 << 10];
    let mut seed = {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_usize(idx);
        h.finish()
    };
    let mut ctx = if args.mode == Mode::Fanout {
        Ctx::fanout(args.size, args.inflight as u64, args.rate, shared.fan.clone())
    } else {
        Ctx::new(args.mode, args.text, args.size, args.inflight as u64, &mut seed)
    };
    ctx.base = shared.base;
    let mut conns: Vec<Conn> =
        (0..n).map(|_| Conn::new(&ctx, &args.path, &args.host, &mut seed)).collect();
    // Fanout publishers of this worker: indices into `conns`.
    let mut pubs = Vec::new();
    for p in (idx..args.publishers).step_by(args.threads) {
        let mut c = Conn::new(&ctx, &args.path, &args.host, &mut seed);
        c.make_publisher(&ctx, p);
        pubs.push(conns.len());
        conns.push(c);
    }
    let total = conns.len();
    let progress = &shared.progress[idx];
    let publish = |ctx: &Ctx| {
        progress.msgs.store(ctx.done, Ordering::Relaxed);
        progress.open.store(ctx.open, Ordering::Relaxed);
        progress.errors.store(ctx.errors.total(), Ordering::Relaxed);
        progress.published.store(ctx.fc.published_total, Ordering::Relaxed);
    };

    // Connect and handshake, at most `cap` at a time.
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
            if let Err(e) = conns[next].start(&args, gid, &poll, next) {
                conns[next].kill(&mut ctx, e);
            } else {
                pending += 1;
            }
            next += 1;
        }
        if pending == 0 && next == total {
            break;
        }
        if let Err(e) = poll.poll(&mut events, Some(Duration::from_millis(50))) {
            if e.kind() != io::ErrorKind::Interrupted {
                panic!("epoll_wait: {e}");
            }
        }
        for ev in events.iter() {
            let c = &mut conns[ev.token().0];
            if let Err(e) = c.on_event(&mut ctx, ev, &mut rbuf) {
                c.kill(&mut ctx, e);
            }
        }
        let now = Instant::now();
        if now - last_sweep > Duration::from_millis(100) {
            last_sweep = now;
            for c in conns.iter_mut() {
                if matches!(c.st, St::Connecting | St::Handshake) && now > c.deadline {
                    c.kill(&mut ctx, Fail::Io(io::ErrorKind::TimedOut.into()));
                }
            }
        }
        publish(&ctx);
    }
    publish(&ctx);
    progress.ready.store(true, Ordering::Release);
    let t0 = loop {
        if let Some(t) = shared.t0.get() {
            break *t;
        }
        std::thread::sleep(Duration::from_millis(1));
    };

    let mut window = Duration::ZERO;
    let open_at_end;
    let mut turn = |poll: &mut Poll, ctx: &mut Ctx, conns: &mut [Conn], timeout: Duration| {
        if let Err(e) = poll.poll(&mut events, Some(timeout)) {
            if e.kind() != io::ErrorKind::Interrupted {
                panic!("epoll_wait: {e}");
            }
        }
        for ev in events.iter() {
            let c = &mut conns[ev.token().0];
            if let Err(e) = c.on_event(ctx, ev, &mut rbuf) {
                c.kill(ctx, e);
            }
        }
        publish(ctx);
    };

    if args.mode == Mode::Idle {
        while !shared.stop.load(Ordering::Acquire) {
            turn(&mut poll, &mut ctx, &mut conns, Duration::from_millis(100));
        }
        open_at_end = ctx.open;
    } else {
        let t_warm = t0 + Duration::from_secs_f64(args.warmup);
        let t_end = t_warm + Duration::from_secs_f64(args.duration);
        // Kick: K messages on every open connection (fanout: on every publisher, closed
        // loop; open loop paces them from here on).
        let kick = ctx.now_ns();
        let fanout = args.mode == Mode::Fanout;
        for c in conns.iter_mut().filter(|c| c.st == St::Open) {
            if fanout {
                c.last_ack = kick;
                c.fan_refill(&mut ctx, kick);
            } else {
                for _ in 0..args.inflight {
                    c.queue_msg(&ctx, kick);
                }
            }
            if let Err(e) = c.flush() {
                c.kill(&mut ctx, e);
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
                window = win_start.map_or(Duration::ZERO, |w| now - w);
                break;
            }
            let next = if win_start.is_none() { t_warm } else { t_end };
            let mut timeout = (next - now).min(Duration::from_millis(100));
            if fanout && ctx.rate > 0.0 {
                let ns = ctx.now_ns();
                if let Some(t) = fan_pace(&mut ctx, &mut conns, &pubs, kick, ns) {
                    timeout = timeout.min(t);
                }
            } else if fanout && now - last_sweep >= Duration::from_millis(100) {
                // Closed loop: a publisher whose K messages were all dropped would wait
                // forever; after 2 s without any of them back it gets one more.
                last_sweep = now;
                let ns = ctx.now_ns();
                for &i in &pubs {
                    let c = &mut conns[i];
                    if c.st == St::Open && ns.saturating_sub(c.last_ack) > 2_000_000_000 {
                        c.last_ack = ns;
                        c.queue_fan(&mut ctx, ns);
                        ctx.fc.stalls += 1;
                        if let Err(e) = c.flush() {
                            c.kill(&mut ctx, e);
                        }
                    }
                }
            }
            turn(&mut poll, &mut ctx, &mut conns, timeout);
        }
        ctx.measuring = false;
        ctx.sending = false;
        open_at_end = ctx.open;
    }

    // Close: a close frame on every open WebSocket, then wait for the answers.
    if ctx.ws {
        let deadline = Instant::now() + Duration::from_secs(3);
        for c in conns.iter_mut().filter(|c| c.st == St::Open) {
            c.push_frame(OpCode::Close, &1000u16.to_be_bytes());
            c.st = St::Closing;
            c.we_closed = true;
            if let Err(e) = c.flush() {
                c.kill(&mut ctx, e);
            }
        }
        loop {
            let left = conns.iter().filter(|c| matches!(c.st, St::Closing | St::CloseSeen)).count();
            let now = Instant::now();
            if left == 0 || now >= deadline {
                break;
            }
            turn(&mut poll, &mut ctx, &mut conns, (deadline - now).min(Duration::from_millis(100)));
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
            c.st = St::Dead;
        }
    }
    drop(conns);
    publish(&ctx);
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sockeye::proto::frame::{decode, write_frame};

    /// The payloads of the masked client frames in `wbuf`, unmasked.
    fn client_payloads(wbuf: &[u8]) -> Vec<(OpCode, Vec<u8>)> {
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

    /// Sends `n` messages, echoes them as server frames (every other one fragmented in two
    /// with a ping in between) and feeds the bytes back in `split`-byte reads.
    fn echo_roundtrip(
        text: bool,
        size: usize,
        n: u64,
        split: usize,
        corrupt: Option<usize>,
    ) -> Ctx {
        let mut seed = 7;
        let mut ctx = Ctx::new(Mode::Echo, text, size, n, &mut seed);
        ctx.sending = false;
        ctx.measuring = true;
        let mut c = Conn::new(&ctx, "/echo", "x", &mut seed);
        c.st = St::Open;
        for _ in 0..n {
            c.queue_msg(&ctx, 0);
        }
        let msgs = client_payloads(&c.wbuf);
        assert_eq!(msgs.len() as u64, n);
        c.wbuf.clear();
        let mut server = Vec::new();
        for (i, (op, p)) in msgs.iter().enumerate() {
            assert_eq!(*op, if text { OpCode::Text } else { OpCode::Binary });
            if text {
                assert!(std::str::from_utf8(p).is_ok());
            }
            if i % 2 == 1 && p.len() >= 2 {
                let (a, b) = p.split_at(p.len() / 2);
                write_frame(&mut server, *op, false, a);
                write_frame(&mut server, OpCode::Ping, true, b"hi");
                write_frame(&mut server, OpCode::Continuation, true, b);
            } else {
                write_frame(&mut server, *op, true, p);
            }
        }
        if let Some(at) = corrupt {
            let at = server.len() - 1 - at;
            server[at] ^= 0x20;
        }
        for chunk in server.chunks(split) {
            c.on_data(&mut ctx, chunk, 10).unwrap_or_else(|e| panic!("{e}"));
        }
        // Every ping got a masked pong with the same payload.
        for (op, p) in client_payloads(&c.wbuf) {
            assert_eq!(op, OpCode::Pong);
            assert_eq!(p, b"hi");
        }
        ctx
    }

    #[test]
    fn verifies_every_split() {
        for (text, size) in
            [(false, 1), (false, 8), (false, 20), (true, 5), (true, 300), (false, 70_000)]
        {
            for split in [1, 2, 3, 7, 13, 64, 1000, usize::MAX] {
                let ctx = echo_roundtrip(text, size, 6, split, None);
                assert_eq!(ctx.done, 6, "text {text} size {size} split {split}");
                assert_eq!(ctx.errors.total(), 0);
                assert_eq!(ctx.hist.count(), 6);
            }
        }
    }

    #[test]
    fn catches_a_flipped_byte() {
        for at in [0, 5, 17] {
            let ctx = echo_roundtrip(false, 20, 4, 5, Some(at));
            assert_eq!(ctx.errors.mismatch, 1, "flip at {at}");
            assert_eq!(ctx.done, 3);
        }
    }

    #[test]
    fn rejects_masked_server_frames() {
        let mut seed = 1;
        let mut ctx = Ctx::new(Mode::Echo, false, 4, 1, &mut seed);
        let mut c = Conn::new(&ctx, "/", "x", &mut seed);
        c.st = St::Open;
        c.queue_msg(&ctx, 0);
        let masked = c.wbuf.clone();
        assert!(matches!(c.on_data(&mut ctx, &masked, 0), Err(Fail::Protocol(_))));
    }

    #[test]
    fn raw_stream() {
        let mut seed = 3;
        let mut ctx = Ctx::new(Mode::Raw, false, 33, 4, &mut seed);
        ctx.sending = false;
        let mut c = Conn::new(&ctx, "/", "x", &mut seed);
        c.st = St::Open;
        for _ in 0..4 {
            c.queue_msg(&ctx, 0);
        }
        let bytes = c.wbuf.clone();
        assert_eq!(bytes.len(), 4 * 33);
        for ch in bytes.chunks(10) {
            c.on_data(&mut ctx, ch, 1).unwrap_or_else(|e| panic!("{e}"));
        }
        assert_eq!(ctx.done, 4);
        assert!(matches!(c.on_data(&mut ctx, b"x", 1), Err(Fail::Protocol(_))));
    }

    // Fanout.

    /// The text payloads of the masked client frames in `wbuf`, unmasked.
    fn sent_texts(wbuf: &[u8]) -> Vec<Vec<u8>> {
        client_payloads(wbuf)
            .into_iter()
            .map(|(op, p)| {
                assert_eq!(op, OpCode::Text);
                p
            })
            .collect()
    }

    /// A fanout context with `publishers` publishers (closed loop, K = `k`), measuring.
    fn fan_setup(publishers: usize, size: usize, k: u64, rate: f64) -> (Ctx, Vec<Conn>, u64) {
        let mut seed = 11;
        let mut ctx = Ctx::fanout(size, k, rate, Arc::new(FanShared::new(publishers)));
        ctx.measuring = true;
        let pubs = (0..publishers)
            .map(|p| {
                let mut c = Conn::new(&ctx, "/chat", "x", &mut seed);
                c.make_publisher(&ctx, p);
                c.st = St::Open;
                c
            })
            .collect();
        (ctx, pubs, seed)
    }

    fn subscriber(ctx: &Ctx, seed: &mut u64) -> Conn {
        let mut c = Conn::new(ctx, "/chat", "x", seed);
        c.st = St::Open;
        c
    }

    /// Publishes `n` messages per publisher, round robin; returns them in publish order.
    fn publish(ctx: &mut Ctx, pubs: &mut [Conn], n: usize, now: u64) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for _ in 0..n {
            for c in pubs.iter_mut() {
                c.queue_fan(ctx, now);
                out.extend(sent_texts(&c.wbuf));
                c.wbuf.clear();
            }
        }
        out
    }

    /// Server frames relaying `msgs` (every third fragmented in two around a ping).
    fn relay(msgs: &[Vec<u8>]) -> Vec<u8> {
        let mut server = Vec::new();
        for (i, p) in msgs.iter().enumerate() {
            if i % 3 == 1 && p.len() >= 2 {
                let (a, b) = p.split_at(p.len() / 2);
                write_frame(&mut server, OpCode::Text, false, a);
                write_frame(&mut server, OpCode::Ping, true, b"hi");
                write_frame(&mut server, OpCode::Continuation, true, b);
            } else {
                write_frame(&mut server, OpCode::Text, true, p);
            }
        }
        server
    }

    fn fan_feed(ctx: &mut Ctx, c: &mut Conn, bytes: &[u8], split: usize, now: u64) {
        for chunk in bytes.chunks(split) {
            c.on_data(ctx, chunk, now).unwrap_or_else(|e| panic!("{e}"));
        }
    }

    #[test]
    fn fanout_header_and_pattern() {
        let (mut ctx, mut pubs, _) = fan_setup(2, 24, 1, 0.0);
        let m = publish(&mut ctx, &mut pubs, 2, 0);
        assert_eq!(&m[0][..16], b"0000000000000000");
        assert_eq!(&m[1][..16], b"0001000000000000");
        assert_eq!(&m[3][..16], b"0001000000000001");
        for p in &m {
            assert_eq!(p.len(), 24);
            assert!(p.iter().all(|b| (b'!'..=b'~').contains(b)), "printable ASCII");
        }
        // Another thread derives the same bytes.
        let other = Ctx::fanout(24, 1, 0.0, ctx.fan.clone());
        assert_eq!(other.pattern, ctx.pattern);
        assert!(other.fan_verify(1, 1, 16, &m[3][16..]));
        assert!(!other.fan_verify(1, 0, 16, &m[3][16..]), "the pattern depends on seq");
        assert!(!other.fan_verify(0, 1, 16, &m[3][16..]), "and on the publisher");
    }

    #[test]
    fn fanout_verifies_every_split() {
        for size in [16, 17, 20, 300, 70_000] {
            for split in [1, 2, 3, 7, 16, 17, 64, 1000, usize::MAX] {
                let (mut ctx, mut pubs, mut seed) = fan_setup(3, size, 1, 0.0);
                let mut sub = subscriber(&ctx, &mut seed);
                let msgs = publish(&mut ctx, &mut pubs, 4, 5);
                fan_feed(&mut ctx, &mut sub, &relay(&msgs), split, 1005);
                assert_eq!(
                    ctx.errors.total(),
                    0,
                    "size {size} split {split}: {:?}",
                    ctx.first_error
                );
                assert_eq!(ctx.done, 12, "size {size} split {split}");
                assert_eq!(ctx.msgs, 12);
                assert_eq!(ctx.fc.lost, 0);
                assert_eq!(ctx.hist.count(), 12);
                assert_eq!(ctx.hist.max(), 1000, "latency from the publish stamp");
                // Every ping answered, nothing else sent by a subscriber.
                let mut b = &sub.wbuf[..];
                while !b.is_empty() {
                    let (h, n) = decode(b).unwrap().unwrap();
                    assert_eq!(h.opcode, OpCode::Pong);
                    b = &b[n + h.payload_len as usize..];
                }
            }
        }
    }

    #[test]
    fn fanout_gaps_are_lost_not_errors() {
        let (mut ctx, mut pubs, mut seed) = fan_setup(2, 20, 1, 0.0);
        let mut sub = subscriber(&ctx, &mut seed);
        let msgs = publish(&mut ctx, &mut pubs, 5, 0);
        // Drop publisher 0's messages 1 and 2 and publisher 1's message 4 (the last).
        let kept: Vec<_> = msgs
            .iter()
            .enumerate()
            .filter(|(i, _)| ![2, 4, 9].contains(i))
            .map(|x| x.1.clone())
            .collect();
        fan_feed(&mut ctx, &mut sub, &relay(&kept), 5, 1);
        assert_eq!(ctx.errors.total(), 0, "{:?}", ctx.first_error);
        assert_eq!(ctx.fc.lost, 2, "a lost tail is not seen");
        assert_eq!(ctx.fc.lost_window, 2);
        assert_eq!(ctx.done, 7);
        assert_eq!(sub.next[..], [5, 4]);
    }

    #[test]
    fn fanout_duplicates_and_reordering_are_errors() {
        let (mut ctx, mut pubs, mut seed) = fan_setup(1, 20, 1, 0.0);
        let msgs = publish(&mut ctx, &mut pubs, 3, 0);
        let mut sub = subscriber(&ctx, &mut seed);
        let dup = [msgs[0].clone(), msgs[1].clone(), msgs[1].clone()];
        fan_feed(&mut ctx, &mut sub, &relay(&dup), 64, 1);
        assert_eq!((ctx.errors.order, ctx.errors.total(), ctx.done), (1, 1, 2));
        let mut sub = subscriber(&ctx, &mut seed);
        let swapped = [msgs[0].clone(), msgs[2].clone(), msgs[1].clone()];
        let (done, lost) = (ctx.done, ctx.fc.lost);
        fan_feed(&mut ctx, &mut sub, &relay(&swapped), 3, 1);
        assert_eq!(ctx.errors.order, 2);
        assert_eq!(ctx.done - done, 2);
        assert_eq!(ctx.fc.lost - lost, 1, "the gap before the late message");
    }

    /// Feeds one relayed (possibly altered) message to a fresh subscriber; its error counts.
    fn one(alter: impl Fn(&mut Vec<u8>), op: OpCode) -> Result<Errors, Fail> {
        let (mut ctx, mut pubs, mut seed) = fan_setup(2, 40, 1, 0.0);
        let mut m = publish(&mut ctx, &mut pubs, 2, 0).swap_remove(1);
        alter(&mut m);
        let mut server = Vec::new();
        write_frame(&mut server, op, true, &m);
        let mut sub = subscriber(&ctx, &mut seed);
        for chunk in server.chunks(7) {
            sub.on_data(&mut ctx, chunk, 1)?;
        }
        assert_eq!(ctx.done + ctx.errors.total(), 1);
        Ok(ctx.errors)
    }

    #[test]
    fn fanout_catches_corruption() {
        assert_eq!(one(|_| {}, OpCode::Text).unwrap().total(), 0);
        let mismatch = |alter: &dyn Fn(&mut Vec<u8>), why: &str| {
            let e = one(alter, OpCode::Text).unwrap();
            assert_eq!((e.mismatch, e.total()), (1, 1), "{why}");
        };
        mismatch(&|m| m[39] ^= 1, "last byte");
        mismatch(&|m| m[16] = b'!' + (m[16] - b'!' + 1) % 94, "first pattern byte");
        mismatch(&|m| m[3] = b'2', "publisher 2 does not exist");
        mismatch(&|m| m[15] = b'9', "seq 9 was never published");
        mismatch(&|m| m[10] = b'A', "uppercase hex");
        mismatch(&|m| m[0] = b' ', "not hex");
        mismatch(&|m| m.truncate(39), "short");
        mismatch(&|m| m.truncate(10), "shorter than the header");
        let e = one(|_| {}, OpCode::Binary).unwrap();
        assert_eq!(e.mismatch, 1, "binary instead of text");
        assert!(matches!(one(|m| m.push(b'x'), OpCode::Text), Err(Fail::Protocol(_))));
    }

    #[test]
    fn fanout_closed_loop_publisher() {
        let (mut ctx, mut pubs, _) = fan_setup(2, 20, 2, 0.0);
        ctx.measuring = false;
        let kick: Vec<_> = pubs
            .iter_mut()
            .map(|c| {
                c.fan_refill(&mut ctx, 0);
                let m = sent_texts(&c.wbuf);
                c.wbuf.clear();
                m
            })
            .collect();
        assert_eq!((pubs[0].send_seq, pubs[1].send_seq), (2, 2), "K = 2 each");
        let p0 = &mut pubs[0];
        // Another publisher's message does not release anything.
        fan_feed(&mut ctx, p0, &relay(&kick[1][..1]), 64, 1);
        assert_eq!(p0.send_seq, 2);
        // Its own message 0 back: one more goes out.
        fan_feed(&mut ctx, p0, &relay(&kick[0][..1]), 64, 2);
        assert_eq!(p0.send_seq, 3);
        assert_eq!(sent_texts(&p0.wbuf).len(), 1);
        assert_eq!(ctx.done, 0, "publishers' receptions are not deliveries");
        // Its message 1 dropped, 2 received: 1 is lost, two more go out.
        let own = sent_texts(&p0.wbuf);
        p0.wbuf.clear();
        fan_feed(&mut ctx, p0, &relay(&own), 64, 3);
        assert_eq!(ctx.fc.publisher_lost, 1);
        assert_eq!(p0.own_acked, 3);
        assert_eq!(p0.send_seq, 5);
        assert_eq!(ctx.errors.total(), 0, "{:?}", ctx.first_error);
        assert_eq!(ctx.fc.published_total, 7);
        assert_eq!(ctx.fc.published, 0, "not measuring");
    }

    #[test]
    fn fanout_open_loop_pacing() {
        let (mut ctx, mut pubs, _) = fan_setup(1, 20, 1, 1000.0);
        let p = [0usize];
        // At kick + 10.5 ms, 11 are due (the first at the kick).
        let next = fan_pace(&mut ctx, &mut pubs, &p, 0, 10_500_000);
        assert_eq!(pubs[0].send_seq, 11);
        assert_eq!(next, Some(Duration::from_nanos(500_000)));
        fan_pace(&mut ctx, &mut pubs, &p, 0, 10_600_000);
        assert_eq!(pubs[0].send_seq, 11, "nothing new due");
        // Far behind (no socket drains the buffer): it fills the buffer, never grows it.
        let cap = pubs[0].wbuf.capacity();
        assert_eq!(fan_pace(&mut ctx, &mut pubs, &p, 0, 1_000_000_000), None);
        assert_eq!(pubs[0].wbuf.capacity(), cap);
        assert!(pubs[0].send_seq >= 64 && pubs[0].send_seq < 1001, "{}", pubs[0].send_seq);
        assert_eq!(sent_texts(&pubs[0].wbuf).len() as u64, pubs[0].send_seq);
    }

    #[test]
    fn fanout_stamps() {
        let f = FanShared::new(1);
        assert_eq!(f.bits, 21);
        assert_eq!(FanShared::new(3).bits, 19);
        assert_eq!(FanShared::new(60_000).bits, 12);
        f.stamp(0, 5, 1_000);
        assert_eq!(f.published(0), 6);
        assert_eq!(f.latency(0, 5, 1_750), Some(750));
        // Wrapped clock (2^40 ns): still right.
        let t = (1u64 << 40) - 10;
        f.stamp(0, 6, t);
        assert_eq!(f.latency(0, 6, (1 << 40) + 15), Some(25));
        // The slot reused by seq + 2^21: no sample for the old one.
        f.stamp(0, 5 + (1 << 21), 2_000);
        assert_eq!(f.latency(0, 5, 3_000), None);
        assert_eq!(f.latency(0, 5 + (1 << 21), 3_000), Some(1_000));
    }
}
