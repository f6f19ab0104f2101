//! The one error type for building and running a server, and its one mapping to
//! `std::io::Error` (for hosts whose `main` returns `io::Result`). The C ABI maps it once more,
//! to its result codes, in ffi/src/server.rs.

use std::fmt;
use std::io;
use std::net::SocketAddr;

use crate::server::config::ConfigError;

/// Why a server could not be built, or stopped with a failure.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// A setting is outside its accepted range ([`crate::Config::validate`]).
    Config(ConfigError),
    /// The listen address could not be parsed or resolved; the text names it.
    Address(String),
    /// Something already listens on this address (and sharing it was not asked for: see
    /// [`crate::Config::share_port`]).
    AddrInUse(SocketAddr),
    /// The I/O backend asked for is not available on this kernel, or `SOCKEYE_BACKEND` names
    /// none; the text says which and why.
    Backend(String),
    /// Binding the address or setting up or running a worker failed.
    Io(io::Error),
    /// The TLS certificate or key was refused (unreadable PEM, a key that does not match, an
    /// expired certificate); the text says which and why.
    Tls(String),
    /// A worker thread panicked outside the handler callbacks (which are caught): an engine
    /// bug; the other workers were stopped.
    WorkerPanicked,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Config(e) => e.fmt(f),
            Error::Address(why) | Error::Tls(why) => f.write_str(why),
            Error::AddrInUse(a) => write!(
                f,
                "{a}: address already in use (another socket listens on it; servers that mean \
                 to share a port all set share_port)"
            ),
            Error::Backend(why) => f.write_str(why),
            Error::Io(e) => e.fmt(f),
            Error::WorkerPanicked => f.write_str("a worker thread panicked"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Config(e) => Some(e),
            Error::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl Error {
    /// The `io::ErrorKind` this error becomes as an `io::Error`.
    pub fn kind(&self) -> io::ErrorKind {
        match self {
            Error::Config(_) | Error::Address(_) | Error::Tls(_) => io::ErrorKind::InvalidInput,
            Error::AddrInUse(_) => io::ErrorKind::AddrInUse,
            Error::Backend(_) => io::ErrorKind::Unsupported,
            Error::Io(e) => e.kind(),
            Error::WorkerPanicked => io::ErrorKind::Other,
        }
    }
}

impl From<ConfigError> for Error {
    fn from(e: ConfigError) -> Self {
        Error::Config(e)
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Error::Io(e)
    }
}

impl From<Error> for io::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Io(e) => e,
            other => io::Error::new(other.kind(), other.to_string()),
        }
    }
}
