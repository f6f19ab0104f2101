//! C ABI over the Sockeye engine.
//!
//! This crate is a skeleton until the C ABI issue lands: it exposes only the version, so that
//! the library, its header and the packaging can be built and checked end to end.

/// Returns the library version as a NUL-terminated static string (never freed by the caller).
#[no_mangle]
pub extern "C" fn sockeye_version() -> *const std::ffi::c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}
