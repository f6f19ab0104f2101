//! In-place unmasking (RFC 6455 §5.3). PLACEHOLDER: scalar only until the SIMD kernels land.

/// XORs `buf` in place with `key`, where `buf[i]` uses `key[(phase + i) % 4]`.
pub fn unmask(buf: &mut [u8], key: [u8; 4], phase: usize) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b ^= key[(phase + i) & 3];
    }
}
