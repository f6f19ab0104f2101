//! Close codes and reasons (RFC 6455 §5.5.1, §7.4): validation of what a peer sends, encoding of
//! what we send.
//!
//! This module owns which codes are legal on the wire. It never decides which code an error
//! gets: that mapping lives in [`super::error`].

use std::fmt;

use super::error::ProtocolError;

/// A WebSocket close status code.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CloseCode(pub u16);

impl CloseCode {
    /// 1000: normal closure.
    pub const NORMAL: Self = Self(1000);
    /// 1001: the endpoint is going away (server shutdown).
    pub const GOING_AWAY: Self = Self(1001);
    /// 1002: protocol error.
    pub const PROTOCOL_ERROR: Self = Self(1002);
    /// 1003: a data type the endpoint cannot accept.
    pub const UNSUPPORTED: Self = Self(1003);
    /// 1005: no status code was present (never sent on the wire).
    pub const NO_STATUS: Self = Self(1005);
    /// 1006: the connection closed without a close frame (never sent on the wire).
    pub const ABNORMAL: Self = Self(1006);
    /// 1007: payload data inconsistent with the message type (invalid UTF-8).
    pub const INVALID_PAYLOAD: Self = Self(1007);
    /// 1008: policy violation.
    pub const POLICY: Self = Self(1008);
    /// 1009: message too big.
    pub const TOO_BIG: Self = Self(1009);
    /// 1010: the client expected an extension the server did not negotiate.
    pub const MANDATORY_EXTENSION: Self = Self(1010);
    /// 1011: the server hit an unexpected condition.
    pub const INTERNAL_ERROR: Self = Self(1011);

    /// Whether a peer may send this code in a close frame.
    ///
    /// 1000-1003, 1007-1011 and 3000-4999 are allowed; 0-999, 1004-1006, 1012-2999 (unassigned or
    /// reserved for local use, such as 1015) and 5000+ are not.
    pub fn is_valid_on_wire(self) -> bool {
        matches!(self.0, 1000..=1003 | 1007..=1011 | 3000..=4999)
    }
}

impl fmt::Debug for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CloseCode({})", self.0)
    }
}

impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl From<u16> for CloseCode {
    fn from(v: u16) -> Self {
        Self(v)
    }
}

/// Parses and validates a close frame's payload.
///
/// Returns `None` for an empty payload (no status code, reported as 1005 to the application),
/// else the code and the UTF-8 reason borrowed from `payload`.
pub fn parse_close_payload(payload: &[u8]) -> Result<Option<(CloseCode, &str)>, ProtocolError> {
    match payload.len() {
        0 => Ok(None),
        1 => Err(ProtocolError::CloseLength),
        _ => {
            let code = CloseCode(u16::from_be_bytes([payload[0], payload[1]]));
            if !code.is_valid_on_wire() {
                return Err(ProtocolError::InvalidCloseCode(code.0));
            }
            let reason = simdutf8::basic::from_utf8(&payload[2..])
                .map_err(|_| ProtocolError::InvalidUtf8)?;
            Ok(Some((code, reason)))
        }
    }
}

/// Largest reason that fits in a control frame next to the 2-byte code.
pub const MAX_REASON_LEN: usize = 123;

/// Appends a close payload (code + reason) to `out`.
///
/// A reason longer than [`MAX_REASON_LEN`] bytes is cut at the last character boundary that fits,
/// so the frame stays a legal control frame and the reason stays valid UTF-8.
pub fn encode_close_payload(code: CloseCode, reason: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(&code.0.to_be_bytes());
    out.extend_from_slice(truncate_reason(reason).as_bytes());
}

/// Cuts `reason` to at most [`MAX_REASON_LEN`] bytes on a character boundary.
pub fn truncate_reason(reason: &str) -> &str {
    if reason.len() <= MAX_REASON_LEN {
        return reason;
    }
    let mut end = MAX_REASON_LEN;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_validity_matches_rfc() {
        for c in 0..=u16::MAX {
            let valid = CloseCode(c).is_valid_on_wire();
            let expect = (1000..=1003).contains(&c)
                || (1007..=1011).contains(&c)
                || (3000..=4999).contains(&c);
            assert_eq!(valid, expect, "code {c}");
        }
        for c in [0, 999, 1004, 1005, 1006, 1012, 1015, 2999, 5000, 65535] {
            assert!(!CloseCode(c).is_valid_on_wire(), "{c}");
        }
    }

    #[test]
    fn parse_payloads() {
        assert_eq!(parse_close_payload(&[]), Ok(None));
        assert_eq!(parse_close_payload(&[3]), Err(ProtocolError::CloseLength));
        assert_eq!(parse_close_payload(&[0x03, 0xe8]), Ok(Some((CloseCode::NORMAL, ""))));
        assert_eq!(parse_close_payload(b"\x0f\xa0bye"), Ok(Some((CloseCode(4000), "bye"))));
        assert_eq!(parse_close_payload(&[0x03, 0xed]), Err(ProtocolError::InvalidCloseCode(1005)));
        assert_eq!(parse_close_payload(&[0x03, 0xe8, 0xff]), Err(ProtocolError::InvalidUtf8));
        assert_eq!(
            parse_close_payload(&[0x03, 0xe8, 0xce, 0xba]),
            Ok(Some((CloseCode::NORMAL, "κ")))
        );
    }

    #[test]
    fn encode_truncates_on_char_boundary() {
        let long = "é".repeat(100); // 200 bytes
        let mut out = Vec::new();
        encode_close_payload(CloseCode::GOING_AWAY, &long, &mut out);
        assert!(out.len() <= 125);
        assert_eq!(&out[..2], &[0x03, 0xe9]);
        assert!(std::str::from_utf8(&out[2..]).is_ok());
        assert_eq!(out.len(), 2 + 122);
    }

    #[test]
    fn every_error_maps_to_an_rfc_code() {
        use ProtocolError::*;
        assert_eq!(InvalidUtf8.close_code(), CloseCode(1007));
        assert_eq!(MessageTooLarge.close_code(), CloseCode(1009));
        assert_eq!(FrameTooLarge.close_code(), CloseCode(1009));
        assert_eq!(UnmaskedFrame.close_code(), CloseCode(1002));
        assert_eq!(ReservedOpcode(3).close_code(), CloseCode(1002));
    }
}
