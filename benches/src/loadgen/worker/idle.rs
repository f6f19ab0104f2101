//! Idle mode: every connection handshaken, then held open with nothing sent until the main
//! thread says stop (it samples the server's memory meanwhile). A data message from the
//! server on an idle connection is a protocol error (`frames.rs`); pings are answered. With
//! `--prime`, each connection first sends one message and verifies its echo.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::conn::{Conn, St};
use super::ctx::Ctx;
use super::Loop;

/// Runs the loop until `stop`.
pub(super) fn hold(lp: &mut Loop<'_>, ctx: &mut Ctx, conns: &mut [Conn], stop: &AtomicBool) {
    if ctx.prime {
        // One echo per connection first (`--prime`); `complete` sends nothing more.
        let now = ctx.now_ns();
        for c in conns.iter_mut().filter(|c| c.st == St::Open) {
            c.queue_msg(ctx, now);
            if let Err(e) = c.flush() {
                c.kill(ctx, e);
            }
        }
    }
    while !stop.load(Ordering::Acquire) {
        lp.turn(ctx, conns, Duration::from_millis(100));
    }
}
