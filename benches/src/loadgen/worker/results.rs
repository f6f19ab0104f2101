//! What a worker reports: the live counters behind the progress line, the error counters, and
//! the result it hands back at the end.

use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::Duration;

use super::super::hist::Histogram;

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
    /// Fanout with topics: a message from a publisher of another room.
    pub(crate) wrong_room: u64,
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
            + self.wrong_room
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
        self.wrong_room += o.wrong_room;
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
    /// `--deflate`: the counters, and the first permessage-deflate answer seen.
    pub(crate) z: ZCounts,
    pub(crate) deflate_answer: Option<String>,
}

/// permessage-deflate counters over the measured window (`--deflate`).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct ZCounts {
    /// Messages sent on connections that negotiated compression, of them compressed, and
    /// their payload bytes on the wire.
    pub(crate) sent_msgs: u64,
    pub(crate) sent_compressed: u64,
    pub(crate) sent_wire: u64,
    /// The same for the echoes received.
    pub(crate) recv_msgs: u64,
    pub(crate) recv_compressed: u64,
    pub(crate) recv_wire: u64,
}

impl ZCounts {
    pub(crate) fn add(&mut self, o: &ZCounts) {
        self.sent_msgs += o.sent_msgs;
        self.sent_compressed += o.sent_compressed;
        self.sent_wire += o.sent_wire;
        self.recv_msgs += o.recv_msgs;
        self.recv_compressed += o.recv_compressed;
        self.recv_wire += o.recv_wire;
    }
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
