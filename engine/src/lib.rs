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
//!
//! # Where to start
//!
//! - [`Server::builder`] and its [`ServerBuilder`]: the listen address, the worker count, every
//!   limit and timeout (each setter states its default; [`Config`] and [`Limits`] explain
//!   them), then the handler factory and [`ServerBuilder::build`].
//! - [`Handler`]: the application, one instance per worker thread; its callbacks, in the order
//!   a connection meets them, with what each may do.
//! - [`Conn`] in a callback (send, close, user data), [`Ctx`] for the worker's other
//!   connections, [`ServerHandle`] from any thread (sends by [`ConnId`], posts, shutdown,
//!   [`Stats`]).
//! - [`SendStatus`]: what became of a send, and how a producer waits for
//!   [`Handler::on_drain`].
//!
//! # Examples
//!
//! Each is a whole program in `engine/examples/` (`cargo run --example NAME -- --addr
//! 127.0.0.1:9001`), built by CI and run against a real client by `engine/tests/examples.rs`:
//!
//! | example | what it shows |
//! |---|---|
//! | `echo.rs` | the smallest server: every message back to its sender |
//! | `rooms.rs` | per-connection data, rooms by path and query, subprotocol choice, rejection with 400/403/404, fan-out across workers with `post_all` and a [`Ctx`], plain HTTP with a header |
//! | `push.rs` | a thread outside the workers pushing to connections through a [`ServerHandle`] |
//! | `pubsub.rs` | topics: rooms where every line is published to every subscriber on every worker, and a ticker publishing from a thread through [`ServerHandle::publish`] |
//! | `backpressure.rs` | a producer that stops at [`SendStatus::Backpressure`] and resumes in `on_drain` |
//! | `shutdown.rs` | Ctrl-C starts a graceful shutdown, a second Ctrl-C exits; what is async-signal-safe |
//! | `demo.rs` | all of it together: `/echo`, `/chat` rooms on pub/sub with a browser page, `/stats` pushed from a thread, `/metrics` |
//!
//! The C API (`include/sockeye.h`, crate `sockeye-ffi`) has the same shape; see
//! `docs/c-api.md` and `examples/c/`.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]
// `unsafe` only where the design names it, each module allowing it by name: the SIMD kernels
// (proto/mask.rs), io_uring's memory lent to the kernel (io/uring.rs) and the backends' two
// raw socket calls (io/sys.rs). A new unsafe block anywhere else does not compile.
#![deny(unsafe_code)]
#![warn(missing_docs)]

#[cfg(feature = "cluster")]
mod cluster;
mod error;

/// The README's Rust examples, compiled as doc-tests so the front door stays true.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeExamples;
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
pub use proto::{DeflateConfig, DeflateMemory, PerMessageDeflate};
pub use server::tls::TlsConfig;
pub use server::{
    Backend, Config, ConfigError, Conn, ConnId, Ctx, Handler, HttpResponse, InvalidCloseCode,
    Message, NoHandler, Post, SendStatus, Server, ServerBuilder, ServerHandle, Stats, TopicError,
    Upgrade,
};
