//! Protocol errors and the one place where they map to close codes.
//!
//! Every way a peer can break RFC 6455 after the handshake is a [`ProtocolError`]; the close code
//! that goes on the wire for it is decided here and nowhere else (`impl From<&ProtocolError> for
//! CloseCode`).

use std::fmt;

use super::close::CloseCode;

/// A violation of RFC 6455 by the peer, or a configured limit it exceeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProtocolError {
    /// A client frame arrived without the MASK bit.
    UnmaskedFrame,
    /// A server-side decoder saw a masked frame (client role only).
    MaskedFrame,
    /// RSV1, RSV2 or RSV3 set without an extension that defines it; with permessage-deflate,
    /// RSV1 on a control frame or a continuation frame (RFC 7692 §6.1).
    ReservedBitsSet,
    /// Opcode 0x3-0x7 or 0xB-0xF.
    ReservedOpcode(u8),
    /// A control frame with FIN clear.
    FragmentedControl,
    /// A control frame with a payload over 125 bytes.
    ControlTooLong,
    /// A 64-bit payload length with the most significant bit set.
    InvalidLength,
    /// A payload length encoded in more bytes than needed.
    NonMinimalLength,
    /// A continuation frame with no message in progress.
    UnexpectedContinuation,
    /// A new text/binary frame while a fragmented message is in progress.
    ExpectedContinuation,
    /// A close frame with a 1-byte payload.
    CloseLength,
    /// A close frame with a code that is not allowed on the wire.
    InvalidCloseCode(u16),
    /// A text message or close reason that is not valid UTF-8.
    InvalidUtf8,
    /// A frame longer than the configured maximum frame size.
    FrameTooLarge,
    /// A message longer than the configured maximum message size.
    MessageTooLarge,
    /// A message made of more fragments than the configured maximum.
    TooManyFragments,
    /// Data frames after the peer's close frame.
    DataAfterClose,
    /// A message that needs assembling while its owner's memory budget ([`super::Memory`]) is
    /// spent: refused, so one worker's peers cannot take all of its memory together. Closed
    /// with 1009 (too big for now): 1013 (try again later) would say it better, but strict
    /// peers, Autobahn's among them, fail a close frame that carries it.
    OverBudget,
    /// A compressed (RSV1) message whose payload is not a valid deflate stream. RFC 7692
    /// names no close code for it; it is answered as the protocol error it is (1002), the
    /// way RFC 6455 §7.4.1 treats a malformed frame.
    InvalidCompressedData,
}

impl ProtocolError {
    /// The close code RFC 6455 §7.4.1 names for this error.
    pub fn close_code(&self) -> CloseCode {
        CloseCode::from(self)
    }
}

impl From<&ProtocolError> for CloseCode {
    fn from(e: &ProtocolError) -> Self {
        use ProtocolError::*;
        match e {
            InvalidUtf8 => CloseCode::INVALID_PAYLOAD,
            FrameTooLarge | MessageTooLarge | TooManyFragments | OverBudget => CloseCode::TOO_BIG,
            UnmaskedFrame
            | MaskedFrame
            | ReservedBitsSet
            | ReservedOpcode(_)
            | FragmentedControl
            | ControlTooLong
            | InvalidLength
            | NonMinimalLength
            | UnexpectedContinuation
            | ExpectedContinuation
            | CloseLength
            | InvalidCloseCode(_)
            | DataAfterClose
            | InvalidCompressedData => CloseCode::PROTOCOL_ERROR,
        }
    }
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use ProtocolError::*;
        let s = match self {
            UnmaskedFrame => "client frame is not masked",
            MaskedFrame => "server frame is masked",
            ReservedBitsSet => "reserved bits set without a negotiated extension",
            ReservedOpcode(_) => "reserved opcode",
            FragmentedControl => "fragmented control frame",
            ControlTooLong => "control frame payload over 125 bytes",
            InvalidLength => "64-bit payload length with the top bit set",
            NonMinimalLength => "payload length not minimally encoded",
            UnexpectedContinuation => "continuation frame without a message in progress",
            ExpectedContinuation => "new data frame inside a fragmented message",
            CloseLength => "close frame payload of 1 byte",
            InvalidCloseCode(_) => "close code not allowed on the wire",
            InvalidUtf8 => "invalid UTF-8",
            FrameTooLarge => "frame exceeds the maximum frame size",
            MessageTooLarge => "message exceeds the maximum message size",
            TooManyFragments => "message exceeds the maximum fragment count",
            DataAfterClose => "data frame after close",
            OverBudget => "message refused: the memory budget is spent",
            InvalidCompressedData => "compressed message is not a valid deflate stream",
        };
        match self {
            ReservedOpcode(op) => write!(f, "{s} {op:#x}"),
            InvalidCloseCode(c) => write!(f, "{s}: {c}"),
            _ => f.write_str(s),
        }
    }
}

impl std::error::Error for ProtocolError {}
