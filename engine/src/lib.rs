//! Sockeye: a thread-per-core WebSocket (RFC 6455) server engine for Linux.
//!
//! ```text
//!   socket bytes ──► io backend (epoll | io_uring) ──► worker core ──► proto::Connection
//!                                                       │   ▲            (sans-IO: bytes in,
//!                                          Handler ◄────┘   └── sends    events + bytes out)
//! ```
//!
//! An echo server:
//!
//! ```no_run
//! use sockeye::{Conn, Handler, Message, Server};
//!
//! struct Echo;
//!
//! impl Handler for Echo {
//!     type Data = ();
//!     fn on_message(&mut self, conn: &mut Conn<'_, ()>, msg: Message<'_>) {
//!         conn.send(msg);
//!     }
//! }
//!
//! fn main() -> Result<(), sockeye::Error> {
//!     Server::builder().listen("127.0.0.1:9001").workers(2).handler(|| Echo).build()?.run()
//! }
//! ```
#![cfg_attr(not(test), deny(clippy::unwrap_used))]
// `unsafe` only where the design names it, each module allowing it by name: the SIMD kernels
// (proto/mask.rs), io_uring's memory lent to the kernel (io/uring.rs) and the backends' two
// raw socket calls (io/sys.rs). A new unsafe block anywhere else does not compile.
#![deny(unsafe_code)]
#![warn(missing_docs)]

mod error;
pub(crate) mod io;
pub mod proto;
pub(crate) mod server;

/// The worker core's test backend (socket pairs and a fake clock), for the fuzz targets.
/// Test-only, no stability: compiled only with the `testing` feature (off by default).
#[cfg(any(test, feature = "testing"))]
#[doc(hidden)]
pub mod testing {
    pub use crate::server::core::testing::{
        Client, Pair, Seen, TestHandler, HANDLER_PANIC, MAX_ASKED_SEND, REQUEST,
    };
}

pub use error::Error;
pub use proto::handshake::Request;
pub use proto::{CloseCode, Limits};
pub use server::{
    Backend, Config, ConfigError, Conn, ConnId, Ctx, Handler, HttpResponse, InvalidCloseCode,
    Message, NoHandler, Post, SendStatus, Server, ServerBuilder, ServerHandle, Stats, Upgrade,
};
