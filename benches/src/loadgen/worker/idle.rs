//! Idle mode: every connection handshaken, then held open with nothing sent until the main
//! thread says stop (it samples the server's memory meanwhile). A data message from the
//! server on an idle connection is a protocol error (`frames.rs`); pings are answered.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::conn::Conn;
use super::ctx::Ctx;
use super::Loop;

/// Runs the loop until `stop`.
pub(super) fn hold(lp: &mut Loop<'_>, ctx: &mut Ctx, conns: &mut [Conn], stop: &AtomicBool) {
    while !stop.load(Ordering::Acquire) {
        lp.turn(ctx, conns, Duration::from_millis(100));
    }
}
