//! Fuzz target: frame header decoding, and encode -> decode round trips of what decodes.
//!
//! Decoding rejects every non-minimal length, so a decoded header must re-encode to exactly the
//! bytes it came from.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sockeye::proto::frame::{decode, encode, write_frame, MAX_HEADER_LEN};

fuzz_target!(|data: &[u8]| {
    match decode(data) {
        Ok(Some((h, n))) => {
            assert!(n >= 2 && n <= data.len() && n <= MAX_HEADER_LEN);
            assert_eq!(h.payload_len >> 63, 0);
            let mut buf = [0u8; MAX_HEADER_LEN];
            let m = encode(h.fin, h.rsv, h.opcode, h.payload_len, h.mask, &mut buf);
            assert_eq!(&buf[..m], &data[..n], "re-encoding differs");
            assert_eq!(decode(&buf[..m]), Ok(Some((h, m))));
            // A whole unmasked frame carrying the rest of the input decodes to its own header.
            let payload = &data[n..];
            if !h.opcode.is_control() || payload.len() <= 125 {
                let mut out = Vec::new();
                write_frame(&mut out, h.opcode, h.fin || h.opcode.is_control(), payload);
                let (h2, m2) = decode(&out).expect("own frame is valid").expect("complete");
                assert_eq!(h2.payload_len, payload.len() as u64);
                assert_eq!(m2 + payload.len(), out.len());
                assert_eq!((h2.opcode, h2.mask), (h.opcode, None));
            }
        }
        Ok(None) => assert!(data.len() < MAX_HEADER_LEN),
        Err(_) => {}
    }
});
