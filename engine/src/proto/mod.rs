//! The sans-IO protocol core: bytes in, events and bytes out.
//!
//! Nothing in here touches a socket, a thread or a clock. Time enters as an argument
//! ([`std::time::Instant`] values passed by the caller), bytes enter as slices the caller owns,
//! and output is written into buffers the caller owns. Everything is tested with byte vectors.
//!
//! Architecture invariant: `proto` never imports `io` or `server`.

pub mod close;
pub mod conn;
pub mod deflate;
pub mod error;
pub mod extensions;
pub mod frame;
pub mod handshake;
#[allow(unsafe_code)] // SIMD kernels, each tested against the scalar one
pub mod mask;
pub mod utf8;

pub use close::CloseCode;

pub use error::ProtocolError;
pub use frame::{FrameHeader, OpCode};

pub use conn::{
    BufPool, Connection, Decision, Env, Event, Limits, Memory, Negotiation, Role, State,
};
pub use extensions::{DeflateConfig, DeflateMemory, PerMessageDeflate};
