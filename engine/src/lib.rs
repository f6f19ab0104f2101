//! Sockeye: a thread-per-core WebSocket (RFC 6455) server engine for Linux.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod proto;
