//! One connection: its socket (non-blocking connect, edge-triggered reads and writes), its
//! write buffer, its state, and why it died. What it does with the bytes is in the mode files
//! (`frames.rs` decodes WebSocket frames, `echo.rs`, `raw.rs` and `fanout.rs` check messages).

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Interest, Poll, Token};
use socket2::{Domain, Protocol, Socket, Type};
use sockeye::proto::frame::{self, OpCode, MAX_HEADER_LEN};
use sockeye::proto::mask::unmask;

use super::super::args::{Args, Mode};
use super::ctx::Ctx;
use super::deflate::Pmd;
use super::fanout::FAN_PREFIX;
use super::handshake;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum St {
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

pub(super) struct Conn {
    pub(super) sock: Option<TcpStream>,
    /// wss://: the TLS session over `sock` (what `wbuf` holds is plaintext, sealed at the
    /// flush; what is read is deciphered before the frame parser sees it).
    pub(super) tls: Option<Box<rustls::ClientConnection>>,
    pub(super) st: St,
    /// We started the closing handshake (end of run), as opposed to the server.
    pub(super) we_closed: bool,
    pub(super) wbuf: Vec<u8>,
    pub(super) wpos: usize,
    /// Handshake: response bytes so far; the accept value we expect; the request.
    pub(super) hs: Vec<u8>,
    pub(super) accept: [u8; 28],
    pub(super) request: Vec<u8>,
    pub(super) deadline: Instant,
    /// When `start` began the connect.
    pub(super) started: Instant,
    // Frame parser.
    pub(super) hdr: [u8; MAX_HEADER_LEN],
    pub(super) hdr_len: usize,
    pub(super) in_frame: bool,
    /// Opcode of the current frame when it is a control frame.
    pub(super) ctrl_op: Option<u8>,
    pub(super) fin: bool,
    pub(super) rem: u64,
    pub(super) in_msg: bool,
    pub(super) msg_off: usize,
    pub(super) msg_bad: bool,
    pub(super) ctrl: [u8; 125],
    pub(super) ctrl_len: usize,
    // Echo bookkeeping.
    pub(super) send_seq: u64,
    pub(super) recv_seq: u64,
    /// Send timestamps (ns since the worker's base), indexed by seq % inflight.
    pub(super) ring: Box<[u64]>,
    pub(super) rng: u32,
    // Fanout.
    /// This connection's publisher id; `None` for a subscriber.
    pub(super) pub_id: Option<usize>,
    /// The room it joined (index; 0 with one room): it must receive only that room's
    /// publishers' messages.
    pub(super) room: usize,
    /// Connects to `--peer` instead of `--url`'s server.
    pub(super) on_peer: bool,
    /// The current message comes from a publisher of another room.
    pub(super) msg_foreign: bool,
    /// Per publisher: the next sequence number expected.
    pub(super) next: Box<[u64]>,
    /// The current message's header, as it arrives.
    pub(super) pre: [u8; FAN_PREFIX],
    pub(super) cur_pub: usize,
    pub(super) cur_seq: u64,
    /// Publisher: its own messages received back (the highest seq + 1).
    pub(super) own_acked: u64,
    /// Publisher: when it last got one of its own messages back (ns).
    pub(super) last_ack: u64,
    // permessage-deflate (`deflate.rs`).
    /// What the server's 101 agreed to; `None`: no compression.
    pub(super) pmd: Option<Pmd>,
    /// The inflater: kept when the server keeps its window, else lent for one message.
    pub(super) zi: Option<Box<flate2::Decompress>>,
    /// The current message is compressed (RSV1 on its first frame).
    pub(super) msg_z: bool,
    /// Payload bytes of the current message on the wire.
    pub(super) msg_wire: u64,
    /// The deflate stream of the current message ended (BFINAL).
    pub(super) z_ended: bool,
}

/// Why a connection is being dropped.
#[derive(Debug)]
pub(super) enum Fail {
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

pub(super) fn xorshift(x: &mut u32) -> u32 {
    *x ^= *x << 13;
    *x ^= *x >> 17;
    *x ^= *x << 5;
    *x
}

pub(super) fn splitmix(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Conn {
    pub(super) fn new(ctx: &Ctx, path: &str, host: &str, rng: &mut u64) -> Conn {
        let offer = ctx.z.is_some().then_some(super::deflate::OFFER);
        let (accept, request) = handshake::key_and_request(ctx.ws, path, host, offer, rng);
        // Echo send times (fanout keeps them in `FanShared`).
        let ring = if matches!(ctx.mode, Mode::Echo | Mode::Raw) || ctx.prime {
            ctx.inflight as usize
        } else {
            0
        };
        let wcap = match ctx.mode {
            Mode::Idle if !ctx.prime => 0,
            // Subscribers send pongs and a close frame only (publishers: `make_publisher`).
            Mode::Fanout => 256,
            _ => ctx.inflight as usize * (ctx.size + MAX_HEADER_LEN) + 256,
        };
        Conn {
            sock: None,
            tls: None,
            st: St::Idle,
            we_closed: false,
            wbuf: Vec::with_capacity(wcap),
            wpos: 0,
            hs: Vec::new(),
            accept,
            request,
            deadline: ctx.base,
            started: ctx.base,
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
            room: 0,
            on_peer: false,
            msg_foreign: false,
            next: vec![0; ctx.publishers].into_boxed_slice(),
            pre: [0; FAN_PREFIX],
            cur_pub: 0,
            cur_seq: 0,
            own_acked: 0,
            last_ack: 0,
            pmd: None,
            zi: None,
            msg_z: false,
            msg_wire: 0,
            z_ended: false,
        }
    }

    /// Creates the socket, binds the source address, starts the non-blocking connect and
    /// registers for READABLE | WRITABLE (edge-triggered).
    pub(super) fn start(
        &mut self,
        args: &Args,
        gid: usize,
        poll: &Poll,
        token: usize,
    ) -> Result<(), Fail> {
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
        let addr = match args.peer {
            Some(peer) if self.on_peer => peer,
            _ => args.addr,
        };
        match sock.connect(&addr.into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => return Err(Fail::Io(e)),
        }
        let mut s = TcpStream::from_std(sock.into());
        poll.registry()
            .register(&mut s, Token(token), Interest::READABLE | Interest::WRITABLE)
            .map_err(Fail::Io)?;
        self.sock = Some(s);
        self.tls = match &args.tls {
            Some(cfg) => Some(Box::new(
                rustls::ClientConnection::new(Arc::clone(cfg), crate::tls::server_name(&args.host))
                    .map_err(|e| Fail::Handshake(format!("TLS: {e}")))?,
            )),
            None => None,
        };
        self.st = St::Connecting;
        self.started = Instant::now();
        self.deadline = self.started + Duration::from_secs(15);
        Ok(())
    }

    pub(super) fn compact(&mut self) {
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
    pub(super) fn push_frame(&mut self, op: OpCode, payload: &[u8]) {
        self.compact();
        let key = xorshift(&mut self.rng).to_le_bytes();
        let mut h = [0u8; MAX_HEADER_LEN];
        let n = frame::encode(true, 0, op, payload.len() as u64, Some(key), &mut h);
        self.wbuf.extend_from_slice(&h[..n]);
        let start = self.wbuf.len();
        self.wbuf.extend_from_slice(payload);
        unmask(&mut self.wbuf[start..], key, 0);
    }

    /// Whether anything waits to be written (plaintext, or TLS records).
    pub(super) fn has_output(&self) -> bool {
        self.wpos < self.wbuf.len() || self.tls.as_ref().is_some_and(|t| t.wants_write())
    }

    /// Writes what is pending; Ok when the socket would block (the rest waits for WRITABLE).
    pub(super) fn flush(&mut self) -> Result<(), Fail> {
        let Some(sock) = self.sock.as_mut() else { return Ok(()) };
        if let Some(t) = self.tls.as_mut() {
            if self.wpos < self.wbuf.len() {
                // Sealed into records now (rustls keeps them until the socket takes them).
                t.writer().write_all(&self.wbuf[self.wpos..]).map_err(Fail::Io)?;
                self.wbuf.clear();
                self.wpos = 0;
            }
            while t.wants_write() {
                match t.write_tls(sock) {
                    Ok(0) => return Err(Fail::Io(io::ErrorKind::WriteZero.into())),
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(Fail::Io(e)),
                }
            }
            return Ok(());
        }
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

    /// Reads until the socket is drained (a short read means drained: with edge-triggered
    /// epoll, bytes arriving later raise a new event, so the EAGAIN read is skipped).
    pub(super) fn read_all(&mut self, ctx: &mut Ctx, rbuf: &mut [u8]) -> Result<(), Fail> {
        if self.tls.is_some() {
            return self.read_tls(ctx, rbuf);
        }
        loop {
            let Some(sock) = self.sock.as_mut() else { return Ok(()) };
            let n = match sock.read(rbuf) {
                Ok(0) => return Err(Fail::Eof),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Fail::Io(e)),
            };
            self.take(ctx, &rbuf[..n])?;
            if n < rbuf.len() {
                return Ok(());
            }
        }
    }

    /// Bytes the server sent (deciphered, over TLS), to the handshake or the frame parser.
    fn take(&mut self, ctx: &mut Ctx, data: &[u8]) -> Result<(), Fail> {
        let now = ctx.now_ns();
        match self.st {
            St::Handshake => {
                self.hs.extend_from_slice(data);
                if let Some(head) = self.check_handshake(ctx)? {
                    self.opened(ctx);
                    let hs = std::mem::take(&mut self.hs);
                    self.on_data(ctx, &hs[head..], now)?;
                }
            }
            St::Open | St::Closing | St::CloseSeen => self.on_data(ctx, data, now)?,
            St::Idle | St::Connecting | St::Dead => {}
        }
        Ok(())
    }

    /// wss://: records from the socket until it is drained, their plaintext to [`Conn::take`].
    /// One `read` takes what the socket holds into the first half of `rbuf` (rustls'
    /// `read_tls` on the socket would make one syscall per 4 KiB); rustls takes it from there
    /// and its plaintext comes out into the second half.
    fn read_tls(&mut self, ctx: &mut Ctx, rbuf: &mut [u8]) -> Result<(), Fail> {
        let (cipher, plain) = rbuf.split_at_mut(rbuf.len() / 2);
        loop {
            let Some(sock) = self.sock.as_mut() else { return Ok(()) };
            let n = match sock.read(cipher) {
                Ok(0) => return Err(Fail::Eof),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Fail::Io(e)),
            };
            let mut rd = &cipher[..n];
            while !rd.is_empty() {
                let Some(t) = self.tls.as_mut() else { return Ok(()) };
                t.read_tls(&mut rd).map_err(Fail::Io)?;
                t.process_new_packets().map_err(|e| Fail::Handshake(format!("TLS: {e}")))?;
                loop {
                    let Some(t) = self.tls.as_mut() else { return Ok(()) };
                    match t.reader().read(plain) {
                        Ok(0) => return Err(Fail::Eof), // close_notify
                        Ok(k) => self.take(ctx, &plain[..k])?,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => return Err(Fail::Io(e)),
                    }
                }
            }
            // A short read drained the socket (edge-triggered: later bytes raise a new event).
            if n < cipher.len() {
                return Ok(());
            }
        }
    }

    pub(super) fn opened(&mut self, ctx: &mut Ctx) {
        self.st = St::Open;
        self.request = Vec::new();
        ctx.open += 1;
        ctx.opened += 1;
    }

    /// Handles one readiness event.
    pub(super) fn on_event(
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
        if self.has_output() {
            self.flush()?;
        }
        Ok(())
    }

    /// Drops the connection, counting why.
    pub(super) fn kill(&mut self, ctx: &mut Ctx, why: Fail) {
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
        self.tls = None;
        self.st = St::Dead;
        self.wbuf = Vec::new();
        self.hs = Vec::new();
        self.zi = None;
    }
}
