//! `rawecho`: a tiny single-threaded epoll (mio) TCP echo server, the physical ceiling that
//! `loadgen raw` measures against: what one core does with read + write per message and no
//! protocol at all.
//!
//! ```sh
//! rawecho --addr 127.0.0.1:9100
//! ```
//!
//! Bytes are read into one shared 256 KiB buffer and written straight back; only when the
//! socket would block is the rest copied into that connection's pending buffer, and the
//! connection is not read again until it drains (backpressure).

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

const LISTENER: Token = Token(usize::MAX);

struct Conn {
    sock: TcpStream,
    pending: Vec<u8>,
    pos: usize,
}

enum Step {
    Ok,
    Close,
}

/// Writes `pending[pos..]`; Ok(true) when all of it is gone.
fn drain(c: &mut Conn) -> io::Result<bool> {
    while c.pos < c.pending.len() {
        match c.sock.write(&c.pending[c.pos..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => c.pos += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    c.pending.clear();
    c.pos = 0;
    Ok(true)
}

fn service(c: &mut Conn, buf: &mut [u8]) -> io::Result<Step> {
    if !drain(c)? {
        return Ok(Step::Ok);
    }
    loop {
        let n = match c.sock.read(buf) {
            Ok(0) => return Ok(Step::Close),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Step::Ok),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let mut off = 0;
        while off < n {
            match c.sock.write(&buf[off..n]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(w) => off += w,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    c.pending.extend_from_slice(&buf[off..n]);
                    return Ok(Step::Ok);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        // A short read drained the socket (edge-triggered: later bytes raise a new event).
        if n < buf.len() {
            return Ok(Step::Ok);
        }
    }
}

fn main() -> io::Result<()> {
    let mut addr: SocketAddr = ([127, 0, 0, 1], 9100).into();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--addr" => {
                let v = args.next().unwrap_or_default();
                addr = v.parse().unwrap_or_else(|_| {
                    eprintln!("rawecho: bad --addr {v:?}");
                    std::process::exit(2)
                });
            }
            "-h" | "--help" => {
                println!("rawecho: single-threaded epoll TCP echo server\n\nUSAGE: rawecho [--addr 127.0.0.1:9100]");
                return Ok(());
            }
            other => {
                eprintln!("rawecho: unknown argument {other:?}");
                std::process::exit(2)
            }
        }
    }
    let mut poll = Poll::new()?;
    let mut listener = TcpListener::bind(addr)?;
    poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
    eprintln!("rawecho listening on {}", listener.local_addr()?);
    let mut conns: slab::Slab<Conn> = slab::Slab::new();
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; 256 << 10];
    loop {
        if let Err(e) = poll.poll(&mut events, Some(Duration::from_secs(1))) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        for ev in events.iter() {
            if ev.token() == LISTENER {
                loop {
                    match listener.accept() {
                        Ok((mut sock, _)) => {
                            let _ = sock.set_nodelay(true);
                            let key = conns.vacant_key();
                            poll.registry().register(
                                &mut sock,
                                Token(key),
                                Interest::READABLE | Interest::WRITABLE,
                            )?;
                            conns.insert(Conn { sock, pending: Vec::new(), pos: 0 });
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => {
                            eprintln!("rawecho: accept: {e}");
                            break;
                        }
                    }
                }
                continue;
            }
            let key = ev.token().0;
            let Some(c) = conns.get_mut(key) else { continue };
            match service(c, &mut buf) {
                Ok(Step::Ok) => {}
                Ok(Step::Close) | Err(_) => {
                    conns.remove(key);
                }
            }
        }
    }
}
