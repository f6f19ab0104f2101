//! Frame headers (RFC 6455 §5.2): decode what a peer sends, encode what we send.
//!
//! Decoding looks only at the header bytes and never copies the payload; the caller keeps the
//! payload where it lies and unmasks it in place. Structural rules that hold whatever was
//! negotiated (reserved opcodes, control-frame rules, the 64-bit length's top bit, minimal length
//! encoding) are checked here; rules that depend on role or extensions (MASK, RSV bits) are
//! checked by [`super::conn`].

use super::error::ProtocolError;

/// Largest possible header: 2 + 8 (64-bit length) + 4 (masking key).
pub const MAX_HEADER_LEN: usize = 14;

/// A frame opcode (§5.2, §11.8). Reserved values never get this far: decode rejects them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum OpCode {
    /// 0x0: continuation of a fragmented message.
    Continuation = 0x0,
    /// 0x1: text message (UTF-8).
    Text = 0x1,
    /// 0x2: binary message.
    Binary = 0x2,
    /// 0x8: close.
    Close = 0x8,
    /// 0x9: ping.
    Ping = 0x9,
    /// 0xA: pong.
    Pong = 0xA,
}

impl OpCode {
    /// Parses the low nibble of the first header byte.
    pub fn from_u8(v: u8) -> Result<Self, ProtocolError> {
        Ok(match v {
            0x0 => Self::Continuation,
            0x1 => Self::Text,
            0x2 => Self::Binary,
            0x8 => Self::Close,
            0x9 => Self::Ping,
            0xA => Self::Pong,
            other => return Err(ProtocolError::ReservedOpcode(other)),
        })
    }

    /// Close, ping and pong are control frames.
    #[inline]
    pub fn is_control(self) -> bool {
        (self as u8) & 0x8 != 0
    }
}

/// A decoded frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// FIN: this is the last frame of its message.
    pub fin: bool,
    /// RSV1, RSV2, RSV3 as the high three bits of a nibble (`0b0111_0000 >> 4`): 4 = RSV1.
    pub rsv: u8,
    /// The frame's opcode.
    pub opcode: OpCode,
    /// The masking key, when MASK is set.
    pub mask: Option<[u8; 4]>,
    /// Payload length in bytes.
    pub payload_len: u64,
}

/// Decodes a frame header from the start of `buf`.
///
/// Returns `Ok(None)` when `buf` does not yet hold the whole header, `Ok(Some((header, len)))`
/// with the header's length in bytes when it does, and an error for a header no extension could
/// make legal.
#[inline]
pub fn decode(buf: &[u8]) -> Result<Option<(FrameHeader, usize)>, ProtocolError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let b0 = buf[0];
    let b1 = buf[1];
    let fin = b0 & 0x80 != 0;
    let rsv = (b0 >> 4) & 0x7;
    let opcode = OpCode::from_u8(b0 & 0x0f)?;
    let masked = b1 & 0x80 != 0;
    let len7 = b1 & 0x7f;
    if opcode.is_control() {
        if !fin {
            return Err(ProtocolError::FragmentedControl);
        }
        if len7 > 125 {
            return Err(ProtocolError::ControlTooLong);
        }
    }
    let ext = match len7 {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let header_len = 2 + ext + if masked { 4 } else { 0 };
    if buf.len() < header_len {
        return Ok(None);
    }
    let payload_len = match len7 {
        126 => {
            let v = u16::from_be_bytes([buf[2], buf[3]]) as u64;
            if v < 126 {
                return Err(ProtocolError::NonMinimalLength);
            }
            v
        }
        127 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            let v = u64::from_be_bytes(b);
            if v >> 63 != 0 {
                return Err(ProtocolError::InvalidLength);
            }
            if v <= u16::MAX as u64 {
                return Err(ProtocolError::NonMinimalLength);
            }
            v
        }
        n => n as u64,
    };
    let mask = if masked {
        let k = 2 + ext;
        Some([buf[k], buf[k + 1], buf[k + 2], buf[k + 3]])
    } else {
        None
    };
    Ok(Some((FrameHeader { fin, rsv, opcode, mask, payload_len }, header_len)))
}

/// Encodes a frame header into `out` and returns its length.
///
/// `rsv` uses the same layout as [`FrameHeader::rsv`]. The payload length is always minimally
/// encoded.
#[inline]
pub fn encode(
    fin: bool,
    rsv: u8,
    opcode: OpCode,
    payload_len: u64,
    mask: Option<[u8; 4]>,
    out: &mut [u8; MAX_HEADER_LEN],
) -> usize {
    out[0] = (u8::from(fin) << 7) | ((rsv & 0x7) << 4) | opcode as u8;
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    let mut n = if payload_len < 126 {
        out[1] = mask_bit | payload_len as u8;
        2
    } else if payload_len <= u16::MAX as u64 {
        out[1] = mask_bit | 126;
        out[2..4].copy_from_slice(&(payload_len as u16).to_be_bytes());
        4
    } else {
        out[1] = mask_bit | 127;
        out[2..10].copy_from_slice(&payload_len.to_be_bytes());
        10
    };
    if let Some(k) = mask {
        out[n..n + 4].copy_from_slice(&k);
        n += 4;
    }
    n
}

/// Length of the header [`encode`] writes for an unmasked frame of `payload_len` bytes.
#[inline]
pub fn header_len(payload_len: u64) -> usize {
    if payload_len < 126 {
        2
    } else if payload_len <= u16::MAX as u64 {
        4
    } else {
        10
    }
}

/// Appends a whole unmasked (server) frame to `out`.
pub fn write_frame(out: &mut Vec<u8>, opcode: OpCode, fin: bool, payload: &[u8]) {
    let mut h = [0u8; MAX_HEADER_LEN];
    let n = encode(fin, 0, opcode, payload.len() as u64, None, &mut h);
    out.reserve(n + payload.len());
    out.extend_from_slice(&h[..n]);
    out.extend_from_slice(payload);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn dec(b: &[u8]) -> Result<Option<(FrameHeader, usize)>, ProtocolError> {
        decode(b)
    }

    // RFC 6455 §5.7 examples.
    #[test]
    fn rfc_examples() {
        // A single-frame unmasked text message "Hello".
        let (h, n) = dec(&[0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]).unwrap().unwrap();
        assert_eq!((h.fin, h.opcode, h.payload_len, h.mask, n), (true, OpCode::Text, 5, None, 2));
        // A single-frame masked text message "Hello".
        let (h, n) = dec(&[0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58])
            .unwrap()
            .unwrap();
        assert_eq!(h.mask, Some([0x37, 0xfa, 0x21, 0x3d]));
        assert_eq!((h.payload_len, n), (5, 6));
        // A fragmented unmasked text message: "Hel" then "lo".
        let (h, _) = dec(&[0x01, 0x03, 0x48, 0x65, 0x6c]).unwrap().unwrap();
        assert_eq!((h.fin, h.opcode), (false, OpCode::Text));
        let (h, _) = dec(&[0x80, 0x02, 0x6c, 0x6f]).unwrap().unwrap();
        assert_eq!((h.fin, h.opcode), (true, OpCode::Continuation));
        // Unmasked ping "Hello", masked pong "Hello".
        let (h, _) = dec(&[0x89, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]).unwrap().unwrap();
        assert_eq!(h.opcode, OpCode::Ping);
        let (h, _) = dec(&[0x8a, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58])
            .unwrap()
            .unwrap();
        assert_eq!(h.opcode, OpCode::Pong);
        // 256 bytes binary in a single unmasked frame: 0x82 0x7E 0x0100.
        let (h, n) = dec(&[0x82, 0x7e, 0x01, 0x00]).unwrap().unwrap();
        assert_eq!((h.payload_len, n), (256, 4));
        // 64 KiB binary in a single unmasked frame.
        let (h, n) = dec(&[0x82, 0x7f, 0, 0, 0, 0, 0, 1, 0, 0]).unwrap().unwrap();
        assert_eq!((h.payload_len, n), (65536, 10));
    }

    #[test]
    fn partial_headers() {
        assert_eq!(dec(&[]), Ok(None));
        assert_eq!(dec(&[0x81]), Ok(None));
        assert_eq!(dec(&[0x81, 0x85, 1, 2, 3]), Ok(None));
        assert_eq!(dec(&[0x82, 0x7e, 0x01]), Ok(None));
        assert_eq!(dec(&[0x82, 0xff, 0, 0, 0, 0, 0, 1, 0, 0, 1, 2, 3]), Ok(None));
    }

    #[test]
    fn rejections() {
        for op in [3u8, 4, 5, 6, 7, 0xb, 0xc, 0xd, 0xe, 0xf] {
            assert_eq!(dec(&[0x80 | op, 0x80]), Err(ProtocolError::ReservedOpcode(op)));
        }
        assert_eq!(dec(&[0x09, 0x80]), Err(ProtocolError::FragmentedControl));
        assert_eq!(dec(&[0x88, 0xfe, 0, 126]), Err(ProtocolError::ControlTooLong));
        assert_eq!(dec(&[0x89, 0xfe, 0, 126]), Err(ProtocolError::ControlTooLong));
        assert_eq!(
            dec(&[0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4]),
            Err(ProtocolError::InvalidLength)
        );
        assert_eq!(dec(&[0x82, 0xfe, 0, 125, 1, 2, 3, 4]), Err(ProtocolError::NonMinimalLength));
        assert_eq!(
            dec(&[0x82, 0xff, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 1, 2, 3, 4]),
            Err(ProtocolError::NonMinimalLength)
        );
        // 125-byte control frame is fine.
        assert!(dec(&[0x89, 0xfd, 0, 0, 0, 0]).unwrap().is_some());
    }

    #[test]
    fn rsv_bits_are_reported() {
        let (h, _) = dec(&[0xc1, 0x80, 0, 0, 0, 0]).unwrap().unwrap();
        assert_eq!(h.rsv, 4);
        let (h, _) = dec(&[0x91, 0x80, 0, 0, 0, 0]).unwrap().unwrap();
        assert_eq!(h.rsv, 1);
    }

    fn any_opcode() -> impl Strategy<Value = OpCode> {
        prop_oneof![
            Just(OpCode::Continuation),
            Just(OpCode::Text),
            Just(OpCode::Binary),
            Just(OpCode::Close),
            Just(OpCode::Ping),
            Just(OpCode::Pong),
        ]
    }

    proptest! {
        #[test]
        fn encode_decode_round_trip(
            fin in any::<bool>(),
            rsv in 0u8..8,
            op in any_opcode(),
            len in prop_oneof![0u64..=125, 126u64..=65535, 65536u64..=(u64::MAX >> 1)],
            mask in proptest::option::of(any::<[u8; 4]>()),
        ) {
            let (fin, len) = if op.is_control() { (true, len % 126) } else { (fin, len) };
            let mut h = [0u8; MAX_HEADER_LEN];
            let n = encode(fin, rsv, op, len, mask, &mut h);
            prop_assert_eq!(n, header_len(len) + if mask.is_some() { 4 } else { 0 });
            let (d, m) = decode(&h[..n]).unwrap().unwrap();
            prop_assert_eq!(m, n);
            prop_assert_eq!(d, FrameHeader { fin, rsv, opcode: op, mask, payload_len: len });
            // Every strict prefix is incomplete, never an error.
            for k in 0..n {
                prop_assert_eq!(decode(&h[..k]), Ok(None));
            }
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..20)) {
            if let Ok(Some((h, n))) = decode(&bytes) {
                prop_assert!(n <= bytes.len());
                prop_assert!(h.payload_len >> 63 == 0);
            }
        }
    }
}
