//! The epoll backend, through mio: edge-triggered readiness, then read/write system calls.
//!
//! One loop per worker. Each connection is registered once, readable and writable, edge
//! triggered, so steady traffic costs no epoll_ctl calls. Reads go into the worker's one read
//! buffer and are handed to the core in place; writes happen at the end of the loop turn, one
//! write per connection with bytes queued (corking).

use std::io::{self, IoSlice, Read, Write};
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};

use crate::server::api::Handler;
use crate::server::config::Config;
use crate::server::core::{After, Core, WRITE_SLICES};
use crate::server::handle::{Command, Wake, WorkerStats};
use crate::server::worker::{self, Driver, Worker, ACCEPT_BACKOFF};

const WAKER: Token = Token(0);
/// Listener `i` is `Token(FIRST_LISTENER + i)`.
const FIRST_LISTENER: usize = 1;
const FIRST_CONN: usize = FIRST_LISTENER + super::MAX_LISTENERS;

#[derive(Debug)]
struct MioWake(Waker);

impl Wake for MioWake {
    fn wake(&self) -> io::Result<()> {
        self.0.wake()
    }
}

/// A worker's poll, waker and listener, made on the building thread.
#[derive(Debug)]
pub(crate) struct Prep {
    poll: Poll,
    waker: Arc<MioWake>,
    listeners: Vec<(std::net::TcpListener, bool)>,
    rx: Receiver<Command>,
}

impl Prep {
    /// `listeners`: each with whether it speaks TLS.
    pub(crate) fn new(
        listeners: Vec<(std::net::TcpListener, bool)>,
        rx: Receiver<Command>,
    ) -> io::Result<Self> {
        let poll = Poll::new()?;
        let waker = Arc::new(MioWake(Waker::new(poll.registry(), WAKER)?));
        Ok(Self { poll, waker, listeners, rx })
    }

    pub(crate) fn waker(&self) -> Arc<dyn Wake> {
        self.waker.clone()
    }

    pub(crate) fn run<H: Handler>(
        self,
        core: Core<H>,
        cfg: &Config,
        stats: Arc<WorkerStats>,
    ) -> io::Result<()> {
        let mut l = self.into_loop(core, cfg, stats)?;
        worker::run(&mut l)
    }

    fn into_loop<H: Handler>(
        self,
        core: Core<H>,
        cfg: &Config,
        stats: Arc<WorkerStats>,
    ) -> io::Result<Loop<H>> {
        let mut listeners = Vec::with_capacity(self.listeners.len());
        for (i, (l, secure)) in self.listeners.into_iter().enumerate() {
            let mut sock = TcpListener::from_std(l);
            self.poll.registry().register(
                &mut sock,
                Token(FIRST_LISTENER + i),
                Interest::READABLE,
            )?;
            listeners.push(Listening { sock: Some(sock), secure, registered: true });
        }
        Ok(Loop {
            poll: self.poll,
            events: Events::with_capacity(1024),
            listeners,
            socks: Vec::new(),
            rbuf: vec![0u8; cfg.read_buffer_size.max(4096)],
            w: Worker::new(core, self.rx, stats, cfg.shutdown_timeout),
            scratch: Vec::new(),
            turn_deliveries: 0,
            woken: false,
            rewake: false,
        })
    }
}

/// One of a worker's listening sockets.
struct Listening {
    /// `None` once the worker stops accepting for good.
    sock: Option<TcpListener>,
    /// Whether the connections it accepts speak TLS.
    secure: bool,
    /// Whether it is registered (it is not while full or backing off).
    registered: bool,
}

struct Loop<H: Handler> {
    poll: Poll,
    events: Events,
    listeners: Vec<Listening>,
    socks: Vec<Option<TcpStream>>,
    rbuf: Vec<u8>,
    w: Worker<H>,
    scratch: Vec<u32>,
    /// The core's delivery count when this turn's events were first handled.
    turn_deliveries: usize,
    /// A wake-up event was handled (reset by `gather` to see whether it took one).
    woken: bool,
    /// The gather took a wake-up: the next wait must not block (the commands it announced
    /// are read after the wait).
    rewake: bool,
}

impl<H: Handler> Driver for Loop<H> {
    type H = H;

    fn worker(&mut self) -> &mut Worker<H> {
        &mut self.w
    }

    fn wait(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        let timeout = if std::mem::take(&mut self.rewake) { Some(Duration::ZERO) } else { timeout };
        if let Err(e) = self.poll.poll(&mut self.events, timeout) {
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
        self.w.core.set_now(Instant::now());
        self.turn_deliveries = self.w.core.deliveries();
        self.handle_events();
        Ok(())
    }

    fn settle(&mut self) {
        Loop::settle(self);
    }

    fn resume_accepting(&mut self) {
        self.resume_listening();
    }

    fn stop_accepting(&mut self) {
        self.stop_listening();
        for l in &mut self.listeners {
            l.sock = None;
        }
    }
}

impl<H: Handler> Loop<H> {
    /// Before a fan-out's writes go out, takes the sockets that became ready meanwhile
    /// (`epoll_wait` without waiting) and handles them, so that messages other publishers
    /// sent during this turn join its writes instead of costing every subscriber another
    /// write in the next turn. Made only when this turn delivered to at least
    /// [`super::GATHER_MIN_DELIVERIES`] subscribers.
    fn gather(&mut self) {
        if self.w.core.deliveries().wrapping_sub(self.turn_deliveries)
            < super::GATHER_MIN_DELIVERIES
        {
            return;
        }
        self.turn_deliveries = self.w.core.deliveries();
        if let Err(e) = self.poll.poll(&mut self.events, Some(Duration::ZERO)) {
            if e.kind() != io::ErrorKind::Interrupted {
                log::warn!("epoll_wait: {e}");
            }
            return;
        }
        self.woken = false;
        self.handle_events();
        self.rewake |= self.woken;
    }

    fn handle_events(&mut self) {
        let events = std::mem::replace(&mut self.events, Events::with_capacity(0));
        for ev in events.iter() {
            match ev.token() {
                // Commands were read before this turn's gather: a wake-up it took must not
                // leave one waiting for the next wait (`rewake`).
                WAKER => self.woken = true,
                Token(t) if t < FIRST_CONN => self.accept_all(t - FIRST_LISTENER),
                Token(t) => {
                    let key = t - FIRST_CONN;
                    if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                        self.read_conn(key, ev.is_read_closed() || ev.is_error());
                    }
                    if ev.is_writable() {
                        self.flush(key);
                    }
                }
            }
        }
        self.events = events;
    }

    /// Writes what handlers queued, shuts closed connections, drops dead ones; repeats until
    /// nothing is left to do (a write can resume reading, which can queue more).
    fn settle(&mut self) {
        self.gather();
        loop {
            let mut work = std::mem::take(&mut self.scratch);
            self.w.core.take_dirty(&mut work);
            let had_dirty = !work.is_empty();
            for &k in &work {
                self.flush(k as usize);
            }
            work.clear();
            self.w.core.take_shut(&mut work);
            let had_shut = !work.is_empty();
            for &k in &work {
                let k = k as usize;
                if let Some(Some(s)) = self.socks.get(k) {
                    let _ = s.shutdown(Shutdown::Write);
                }
                self.read_conn(k, true);
            }
            work.clear();
            self.w.core.take_dead(&mut work);
            let had_dead = !work.is_empty();
            for &k in &work {
                let k = k as usize;
                if let Some(mut s) = self.socks.get_mut(k).and_then(Option::take) {
                    if self.w.core.must_reset(k) {
                        super::sys::reset_on_close(s.as_raw_fd());
                    }
                    let _ = self.poll.registry().deregister(&mut s);
                }
                self.w.core.remove(k);
            }
            work.clear();
            self.scratch = work;
            if !had_dirty && !had_shut && !had_dead {
                break;
            }
        }
    }

    fn stop_listening(&mut self) {
        for l in &mut self.listeners {
            if l.registered {
                if let Some(s) = l.sock.as_mut() {
                    let _ = self.poll.registry().deregister(s);
                }
                l.registered = false;
            }
        }
    }

    fn resume_listening(&mut self) {
        for i in 0..self.listeners.len() {
            let l = &mut self.listeners[i];
            if l.registered {
                continue;
            }
            let Some(s) = l.sock.as_mut() else { continue };
            let token = Token(FIRST_LISTENER + i);
            if self.poll.registry().register(s, token, Interest::READABLE).is_ok() {
                l.registered = true;
                // Edge triggered: connections may already wait in the backlog.
                self.accept_all(i);
            }
        }
    }

    fn accept_all(&mut self, which: usize) {
        loop {
            if !self.w.core.has_room() {
                self.stop_listening();
                return;
            }
            let Some(l) = self.listeners.get(which) else { return };
            let secure = l.secure;
            let Some(listener) = l.sock.as_ref() else { return };
            match listener.accept() {
                Ok((mut sock, peer)) => {
                    let _ = sock.set_nodelay(true);
                    let key = self.w.core.accept(peer, sock.as_raw_fd(), secure);
                    let token = Token(key + FIRST_CONN);
                    if let Err(e) = self.poll.registry().register(
                        &mut sock,
                        token,
                        Interest::READABLE | Interest::WRITABLE,
                    ) {
                        log::warn!("registering a connection: {e}");
                        self.w.core.remove(key);
                        continue;
                    }
                    if self.socks.len() <= key {
                        self.socks.resize_with(key + 1, || None);
                    }
                    self.socks[key] = Some(sock);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => {}
                Err(e) => {
                    // EMFILE, ENFILE, ENOBUFS, ENOMEM: stop polling the listener for a moment
                    // instead of spinning on an accept that keeps failing.
                    log::warn!("accept: {e}; pausing accepts for {ACCEPT_BACKOFF:?}");
                    self.stop_listening();
                    self.w.backoff_accepts();
                    return;
                }
            }
        }
    }

    /// Reads until the socket is drained. A short read ends it early (the socket is empty)
    /// unless `drain`: the peer hung up (its EOF may sit behind the data, with no further edge
    /// to report it) or the call resumes a connection whose edges were consumed while paused.
    fn read_conn(&mut self, key: usize, drain: bool) {
        loop {
            if !self.w.core.wants_read(key) {
                return;
            }
            let Some(Some(sock)) = self.socks.get_mut(key) else { return };
            match sock.read(&mut self.rbuf) {
                Ok(0) => {
                    self.w.core.on_hangup(key);
                    return;
                }
                Ok(n) => {
                    let full = n == self.rbuf.len();
                    if self.w.core.on_data(key, &mut self.rbuf[..n]) == After::StopReading
                        || (!full && !drain)
                    {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.w.core.on_hangup(key);
                    return;
                }
            }
        }
    }

    fn flush(&mut self, key: usize) {
        loop {
            let Some(Some(sock)) = self.socks.get_mut(key) else { return };
            let mut iov = [IoSlice::new(&[]); WRITE_SLICES];
            let n = self.w.core.pending(key, &mut iov);
            let r = match n {
                0 => return,
                1 => sock.write(&iov[0]),
                _ => sock.write_vectored(&iov[..n]),
            };
            match r {
                Ok(n) => {
                    if self.w.core.on_written(key, n, false) {
                        self.read_conn(key, true);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.w.core.on_written(key, 0, true);
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.w.core.on_write_error(key);
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::io::test_support::core;

    /// A wake-up (another thread queued a command) that the gather of a fan-out turn takes,
    /// after the turn read its commands, still ends the next wait at once; edge-triggered,
    /// the waker reports no second event, so the command would wait for unrelated I/O.
    #[test]
    fn a_wake_up_the_gather_takes_still_ends_the_next_wait() {
        let (core, cfg) = core();
        let (_tx, rx) = crossbeam_channel::unbounded();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let prep = Prep::new(vec![(listener, false)], rx).expect("prep");
        let waker = prep.waker();
        let mut l = prep.into_loop(core, &cfg, Arc::new(WorkerStats::default())).expect("loop");
        // This turn fanned out to enough subscribers to gather.
        l.turn_deliveries = l.w.core.deliveries().wrapping_sub(crate::io::GATHER_MIN_DELIVERIES);
        waker.wake().expect("wake");
        Driver::settle(&mut l);
        assert!(l.rewake, "the gather did not take the wake-up: the test proves nothing");
        let t = Instant::now();
        Driver::wait(&mut l, Some(Duration::from_secs(2))).expect("wait");
        assert!(t.elapsed() < Duration::from_secs(1), "the wait slept over a wake-up");
    }
}
