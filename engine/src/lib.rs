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
//! fn main() -> std::io::Result<()> {
//!     Server::builder().listen("127.0.0.1:9001").workers(2).handler(|| Echo).build()?.run()
//! }
//! ```
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub(crate) mod io;
pub mod proto;
pub(crate) mod server;

pub use proto::handshake::Request;
pub use proto::CloseCode;
pub use server::{
    Backend, Config, ConfigError, Conn, ConnId, Ctx, Handler, HttpResponse, InvalidCloseCode,
    Message, NoHandler, Post, SendStatus, Server, ServerBuilder, ServerHandle, Stats, Upgrade,
};
