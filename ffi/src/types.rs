//! What the callback side (`handler.rs`), the connection API (`conn.rs`) and the server API
//! (`server.rs`) share: message opcodes and the engine's per-connection data.

use std::ffi::c_void;

use sockeye::Message;

use crate::{sockeye_result, SOCKEYE_ERR_INVALID_ARGUMENT, SOCKEYE_ERR_UTF8};

/// A message opcode: one of the `SOCKEYE_OPCODE_*` values.
pub type sockeye_opcode = u32;
/// A text message: the payload is UTF-8 (checked on receipt; checked again on send).
pub const SOCKEYE_OPCODE_TEXT: sockeye_opcode = 1;
/// A binary message.
pub const SOCKEYE_OPCODE_BINARY: sockeye_opcode = 2;

/// Reads `payload` as a message of `opcode`, as the send functions take it. Errors:
/// `SOCKEYE_ERR_INVALID_ARGUMENT` for an opcode that is neither `SOCKEYE_OPCODE_TEXT` nor
/// `SOCKEYE_OPCODE_BINARY`, `SOCKEYE_ERR_UTF8` for text that is not UTF-8.
pub(crate) fn message(
    opcode: sockeye_opcode,
    payload: &[u8],
) -> Result<Message<'_>, sockeye_result> {
    match opcode {
        SOCKEYE_OPCODE_TEXT => {
            std::str::from_utf8(payload).map(Message::Text).map_err(|_| SOCKEYE_ERR_UTF8)
        }
        SOCKEYE_OPCODE_BINARY => Ok(Message::Binary(payload)),
        _ => Err(SOCKEYE_ERR_INVALID_ARGUMENT),
    }
}

/// A message as `on_message` hands it to C: its opcode and its payload bytes.
pub(crate) fn opcode_and_bytes(msg: Message<'_>) -> (sockeye_opcode, &[u8]) {
    match msg {
        Message::Text(t) => (SOCKEYE_OPCODE_TEXT, t.as_bytes()),
        Message::Binary(b) => (SOCKEYE_OPCODE_BINARY, b),
    }
}

/// Per-connection data kept by the engine: the C program's `void *` (NULL until set by
/// `sockeye_upgrade_set_user_data` or `sockeye_conn_set_user_data`).
#[derive(Debug)]
pub(crate) struct ConnData {
    pub(crate) user: *mut c_void,
}

impl Default for ConnData {
    fn default() -> Self {
        Self { user: std::ptr::null_mut() }
    }
}
