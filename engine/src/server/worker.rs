//! The loop turn every backend shares, held once.
//!
//! A backend (io/epoll.rs, io/uring.rs) owns its sockets and its way of waiting; everything a
//! turn does beside that lives here: draining the commands other threads sent, starting and
//! ending a graceful stop, backing off accepts after EMFILE, expiring timers, computing when
//! to wake next, publishing the worker's figures, and deciding when the worker is done. A
//! backend implements [`Driver`] (what it must provide: see also io/mod.rs) and calls
//! [`run`]; it reaches the core through its [`Worker`].

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use super::api::Handler;
use super::core::Core;
use super::handle::{Command, WorkerStats};

/// How long accepting pauses after EMFILE/ENFILE/ENOMEM before it is tried again.
pub(crate) const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// A worker's backend-neutral state: the core, the command channel, and the turn's own
/// bookkeeping (stopping, the stop deadline, the accept backoff).
pub(crate) struct Worker<H: Handler> {
    pub(crate) core: Core<H>,
    rx: Receiver<Command>,
    stats: Arc<WorkerStats>,
    shutdown_timeout: Duration,
    stopping: bool,
    stop_deadline: Option<Instant>,
    accept_retry: Option<Instant>,
}

/// What a backend provides to the shared loop.
pub(crate) trait Driver {
    /// The application's handler type.
    type H: Handler;
    /// The backend-neutral state the backend feeds.
    fn worker(&mut self) -> &mut Worker<Self::H>;
    /// Arms what must be armed before the first wait (accepts, the waker).
    fn start(&mut self) {}
    /// Waits for events until `timeout` (`None`: until one arrives), sets the core's clock
    /// (`Core::set_now`), then hands every event to the core. An error ends the worker.
    fn wait(&mut self, timeout: Option<Duration>) -> io::Result<()>;
    /// Does what the core asked for during the turn: writes, shuts, drops; until it is done.
    fn settle(&mut self);
    /// Accepts new connections again (no-op when already accepting, or the listener is gone).
    fn resume_accepting(&mut self);
    /// The worker is stopping: stop accepting for good.
    fn stop_accepting(&mut self);
    /// Publishes the backend's own figures into the worker's counters (the core's are
    /// published by [`run`]).
    fn publish_stats(&mut self) {}
}

impl<H: Handler> std::fmt::Debug for Worker<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("connections", &self.core.len())
            .field("stopping", &self.stopping)
            .field("stop_deadline", &self.stop_deadline)
            .field("accept_retry", &self.accept_retry)
            .finish()
    }
}

impl<H: Handler> Worker<H> {
    pub(crate) fn new(
        core: Core<H>,
        rx: Receiver<Command>,
        stats: Arc<WorkerStats>,
        shutdown_timeout: Duration,
    ) -> Self {
        Self {
            core,
            rx,
            stats,
            shutdown_timeout,
            stopping: false,
            stop_deadline: None,
            accept_retry: None,
        }
    }

    /// The counters this worker publishes into.
    pub(crate) fn stats(&self) -> &WorkerStats {
        &self.stats
    }

    /// Accepting failed for want of resources: pause it for [`ACCEPT_BACKOFF`] instead of
    /// spinning on an accept that keeps failing.
    pub(crate) fn backoff_accepts(&mut self) {
        self.accept_retry = Some(self.core.now() + ACCEPT_BACKOFF);
    }

    /// Whether accepting is paused by a backoff.
    pub(crate) fn accepts_backed_off(&self) -> bool {
        self.accept_retry.is_some()
    }

    /// Whether a graceful stop has begun.
    pub(crate) fn stopping(&self) -> bool {
        self.stopping
    }

    /// When the loop must wake at the latest: the next timer, the end of an accept backoff,
    /// the stop deadline.
    fn next_wake(&self) -> Option<Instant> {
        [self.core.next_timer(), self.accept_retry, self.stop_deadline].into_iter().flatten().min()
    }

    /// Runs what other threads asked for; returns whether this turn began the stop.
    fn drain_commands(&mut self) -> bool {
        let was_stopping = self.stopping;
        while let Ok(cmd) = self.rx.try_recv() {
            match cmd {
                Command::Shutdown => {
                    if !self.stopping {
                        self.stopping = true;
                        self.core.begin_shutdown();
                    }
                }
                Command::Post(p) => self.core.on_post(&p),
                Command::Send(id, op, data) => self.core.send_to(id, op, &data),
                Command::Close(id, code, reason) => self.core.close_id(id, code, &reason),
                Command::Publish(topic, op, payload) => self.core.on_publish(&topic, op, &payload),
            }
        }
        if self.stopping && !was_stopping {
            self.stop_deadline = Some(self.core.now() + self.shutdown_timeout);
            return true;
        }
        false
    }
}

/// Runs a backend's loop until a graceful stop completes (or the backend fails).
pub(crate) fn run<D: Driver>(d: &mut D) -> io::Result<()> {
    d.start();
    loop {
        let timeout = d.worker().next_wake().map(|t| t.saturating_duration_since(Instant::now()));
        d.wait(timeout)?;
        // Commands are drained every turn: a wake-up may coalesce with other events.
        if d.worker().drain_commands() {
            d.stop_accepting();
        }
        let w = d.worker();
        let now = w.core.now();
        if w.accept_retry.is_some_and(|t| now >= t) {
            w.accept_retry = None;
            if !w.stopping {
                d.resume_accepting();
            }
        }
        let w = d.worker();
        w.core.expire_timers();
        if w.stop_deadline.is_some_and(|t| now >= t) {
            w.core.kill_all();
        }
        d.settle();
        let w = d.worker();
        if !w.stopping && w.accept_retry.is_none() && w.core.has_room() {
            d.resume_accepting();
        }
        let w = d.worker();
        w.core.publish_stats(&w.stats);
        d.publish_stats();
        let w = d.worker();
        if w.stopping && w.core.len() == 0 {
            return Ok(());
        }
    }
}
