//! In-place unmasking of frame payloads (RFC 6455 §5.3): `buf[i] ^= key[(phase + i) % 4]`.
//!
//! This module owns the only SIMD in the protocol core. [`unmask`] picks a kernel once per
//! process (AVX-512, AVX2 or SSE2 on x86-64, NEON on aarch64, a word-at-a-time scalar loop
//! elsewhere and under Miri), caches the choice in an atomic, and dispatches on every call.
//! Inputs shorter than [`SMALL`] bytes never reach the dispatcher: a few word XORs inline are
//! cheaper than the call.
//!
//! Every vector kernel has the same shape: the first and last vector of the buffer are loaded
//! before anything is written, the aligned vectors in between are XORed in place, and the two
//! saved vectors are XORed and stored last. Their stores overwrite bytes the aligned loop has
//! already unmasked with the same values, so there is no scalar head or tail loop, and every
//! access stays inside the slice. Buffers shorter than one vector fall to the next narrower
//! kernel.
//!
//! What it must never do: read or write outside the slice it is given, or allocate.
//! [`unmask_reference`] is the byte-at-a-time definition every kernel is tested against.

use std::sync::atomic::{AtomicU8, Ordering};

/// Inputs shorter than this are unmasked inline by [`unmask`], without dispatch.
pub const SMALL: usize = 32;

/// An unmasking implementation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// Portable word-at-a-time loop; available everywhere.
    Scalar,
    /// 16-byte SSE2 vectors (x86-64).
    Sse2,
    /// 32-byte AVX2 vectors (x86-64).
    Avx2,
    /// 64-byte AVX-512F vectors (x86-64).
    Avx512,
    /// 16-byte NEON vectors (aarch64).
    Neon,
}

/// Every kernel, fastest first: the order [`selected_kernel`] tries them in.
const PREFERENCE: [Kernel; 5] =
    [Kernel::Avx512, Kernel::Avx2, Kernel::Neon, Kernel::Sse2, Kernel::Scalar];

/// The cached choice of [`selected_kernel`]; [`UNSET`] until the first call.
static SELECTED: AtomicU8 = AtomicU8::new(UNSET);
const UNSET: u8 = u8::MAX;

impl Kernel {
    fn from_index(i: u8) -> Option<Self> {
        PREFERENCE.get(usize::from(i)).copied()
    }

    fn index(self) -> u8 {
        match self {
            Kernel::Avx512 => 0,
            Kernel::Avx2 => 1,
            Kernel::Neon => 2,
            Kernel::Sse2 => 3,
            Kernel::Scalar => 4,
        }
    }
}

/// Whether this CPU (and build) can run `kernel`. Under Miri only [`Kernel::Scalar`] can.
fn supported(kernel: Kernel) -> bool {
    match kernel {
        Kernel::Scalar => true,
        #[cfg(all(target_arch = "x86_64", not(miri)))]
        Kernel::Sse2 => std::arch::is_x86_feature_detected!("sse2"),
        #[cfg(all(target_arch = "x86_64", not(miri)))]
        Kernel::Avx2 => std::arch::is_x86_feature_detected!("avx2"),
        #[cfg(all(target_arch = "x86_64", not(miri)))]
        Kernel::Avx512 => std::arch::is_x86_feature_detected!("avx512f"),
        #[cfg(all(target_arch = "aarch64", not(miri)))]
        Kernel::Neon => std::arch::is_aarch64_feature_detected!("neon"),
        #[allow(unreachable_patterns)]
        _ => false,
    }
}

/// The kernels this CPU supports, fastest first. Always ends with [`Kernel::Scalar`].
pub fn available_kernels() -> Vec<Kernel> {
    PREFERENCE.into_iter().filter(|&k| supported(k)).collect()
}

/// The kernel [`unmask`] uses on this CPU: detected on the first call, cached after.
#[inline]
pub fn selected_kernel() -> Kernel {
    match Kernel::from_index(SELECTED.load(Ordering::Relaxed)) {
        Some(k) => k,
        None => select(),
    }
}

#[cold]
fn select() -> Kernel {
    let k = PREFERENCE.into_iter().find(|&k| supported(k)).unwrap_or(Kernel::Scalar);
    // Racing first calls all compute the same answer, so a relaxed store is enough.
    SELECTED.store(k.index(), Ordering::Relaxed);
    k
}

/// XORs `buf` in place with `key`, where `buf[i]` uses `key[(phase + i) % 4]`.
///
/// `phase` is the number of payload bytes already unmasked before `buf` (any value; only
/// `phase % 4` matters), so a payload split across reads is unmasked piece by piece by carrying
/// the offset. Works for any length and alignment.
#[inline]
pub fn unmask(buf: &mut [u8], key: [u8; 4], phase: usize) {
    let key = rotate(key, phase);
    if buf.len() < SMALL {
        unmask_scalar(buf, key);
    } else {
        unmask_dispatched(buf, key);
    }
}

/// [`unmask`] on a chosen kernel, for tests and benchmarks.
///
/// Unlike [`unmask`], small inputs go to `kernel` too, so every kernel can be tested at every
/// length.
///
/// # Panics
///
/// If `kernel` is not in [`available_kernels`] on this CPU.
pub fn unmask_with(kernel: Kernel, buf: &mut [u8], key: [u8; 4], phase: usize) {
    assert!(supported(kernel), "unmask kernel {kernel:?} is not available on this CPU");
    run(kernel, buf, rotate(key, phase));
}

/// The byte-at-a-time definition of [`unmask`], which every kernel is tested against.
pub fn unmask_reference(buf: &mut [u8], key: [u8; 4], phase: usize) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b ^= key[(phase.wrapping_add(i)) % 4];
    }
}

#[inline(never)]
fn unmask_dispatched(buf: &mut [u8], key: [u8; 4]) {
    run(selected_kernel(), buf, key);
}

/// Runs `kernel` with a phase-0 `key`. The caller has checked `supported(kernel)`.
#[inline(always)]
fn run(kernel: Kernel, buf: &mut [u8], key: [u8; 4]) {
    match kernel {
        #[cfg(all(target_arch = "x86_64", not(miri)))]
        // SAFETY: `kernel` passed `supported`, which detected the CPU feature this kernel needs.
        Kernel::Avx512 => unsafe { x86::avx512::unmask(buf, key) },
        #[cfg(all(target_arch = "x86_64", not(miri)))]
        // SAFETY: as above, AVX2 was detected.
        Kernel::Avx2 => unsafe { x86::avx2::unmask(buf, key) },
        #[cfg(all(target_arch = "x86_64", not(miri)))]
        // SAFETY: as above, SSE2 was detected.
        Kernel::Sse2 => unsafe { x86::sse2::unmask(buf, key) },
        #[cfg(all(target_arch = "aarch64", not(miri)))]
        // SAFETY: as above, NEON was detected.
        Kernel::Neon => unsafe { arm::neon::unmask(buf, key) },
        #[allow(unreachable_patterns)]
        _ => unmask_scalar(buf, key),
    }
}

/// `key` rotated so that byte 0 of the result applies at offset `phase`.
#[inline(always)]
fn rotate(key: [u8; 4], phase: usize) -> [u8; 4] {
    // `phase % 4 < 4`, so the shift is at most 24 bits.
    let bits = (phase % 4) as u32 * 8;
    u32::from_le_bytes(key).rotate_right(bits).to_le_bytes()
}

/// The portable kernel, also [`unmask`]'s inline path for short buffers: 8-byte words, then at
/// most one 4-byte word and three bytes. Every step is a multiple of 4 bytes until the last, so
/// the key stays at phase 0.
#[inline]
fn unmask_scalar(buf: &mut [u8], key: [u8; 4]) {
    let k4 = u32::from_ne_bytes(key);
    // Both halves are the same, so this is the key twice on either endianness.
    let k8 = u64::from(k4) | (u64::from(k4) << 32);
    let mut words = buf.chunks_exact_mut(8);
    for word in &mut words {
        if let Ok(word) = <&mut [u8; 8]>::try_from(word) {
            *word = (u64::from_ne_bytes(*word) ^ k8).to_ne_bytes();
        }
    }
    let rest = words.into_remainder();
    // `rest` is shorter than 8 bytes: `len & 4` is 4 if a whole 4-byte word is left, else 0.
    let (half, bytes) = rest.split_at_mut(rest.len() & 4);
    if let Ok(half) = <&mut [u8; 4]>::try_from(half) {
        *half = (u32::from_ne_bytes(*half) ^ k4).to_ne_bytes();
    }
    for (b, k) in bytes.iter_mut().zip(key) {
        *b ^= k;
    }
}

/// The body shared by every vector kernel. The enclosing module provides `W` (vector width in
/// bytes), `V` (the vector type), `load`, `store`, `xor`, `splat` and `narrower` (the kernel
/// for buffers shorter than `W`), all under the same target features as `$feature`.
#[cfg(not(miri))]
macro_rules! vector_kernel {
    ($feature:literal) => {
        /// Unmasks `buf` with a phase-0 `key`.
        ///
        /// # Safety
        ///
        /// The CPU must support the target features this function is compiled for.
        #[target_feature(enable = $feature)]
        pub(in crate::proto::mask) unsafe fn unmask(buf: &mut [u8], key: [u8; 4]) {
            let len = buf.len();
            if len < W {
                // SAFETY: `narrower` needs a subset of this function's target features, which
                // our caller guarantees.
                unsafe { narrower(buf, key) };
                return;
            }
            let p = buf.as_mut_ptr();
            // SAFETY: `len >= W`, so `p .. p + W` and `p + len - W .. p + len` lie in `buf`.
            let (head, tail) = unsafe { (load(p), load(p.add(len - W))) };
            // Bytes from `p` to the next `W`-aligned address: less than `W`, so at most `len`.
            let start = p.addr().wrapping_neg() % W;
            let k = splat(crate::proto::mask::rotate(key, start));
            let mut blocks = (len - start) / W;
            // SAFETY: `start <= len`, so `q` is in `buf` or one past its end.
            let mut q = unsafe { p.add(start) };
            while blocks >= 4 {
                // SAFETY: `start + (blocks_done + 4) * W <= len`, so the four vectors at `q`
                // lie in `buf`; `q` ends at most one past its end.
                unsafe {
                    let a = load(q);
                    let b = load(q.add(W));
                    let c = load(q.add(2 * W));
                    let d = load(q.add(3 * W));
                    store(q, xor(a, k));
                    store(q.add(W), xor(b, k));
                    store(q.add(2 * W), xor(c, k));
                    store(q.add(3 * W), xor(d, k));
                    q = q.add(4 * W);
                }
                blocks -= 4;
            }
            while blocks > 0 {
                // SAFETY: as above, for one vector.
                unsafe {
                    store(q, xor(load(q), k));
                    q = q.add(W);
                }
                blocks -= 1;
            }
            // The first `start` and last `(len - start) % W` bytes are not done yet. Store the
            // whole first and last vectors, unmasked from the bytes saved before any store:
            // where they overlap the aligned blocks they write the same values again.
            let k_tail = splat(crate::proto::mask::rotate(key, len - W));
            // SAFETY: the same two in-bounds ranges that were loaded above.
            unsafe {
                store(p, xor(head, splat(key)));
                store(p.add(len - W), xor(tail, k_tail));
            }
        }
    };
}

#[cfg(all(target_arch = "x86_64", not(miri)))]
mod x86 {
    //! The x86-64 kernels: SSE2 (16 B), AVX2 (32 B), AVX-512F (64 B).

    pub(super) mod sse2 {
        //! 16-byte vectors. SSE2 is part of the x86-64 baseline.
        use std::arch::x86_64::{
            __m128i, _mm_loadu_si128, _mm_set1_epi32, _mm_storeu_si128, _mm_xor_si128,
        };

        const W: usize = 16;
        type V = __m128i;

        /// # Safety
        /// `p .. p + W` must be readable.
        #[inline]
        #[target_feature(enable = "sse2")]
        unsafe fn load(p: *const u8) -> V {
            // SAFETY: the caller guarantees `W` readable bytes; `loadu` has no alignment need.
            unsafe { _mm_loadu_si128(p.cast()) }
        }

        /// # Safety
        /// `p .. p + W` must be writable.
        #[inline]
        #[target_feature(enable = "sse2")]
        unsafe fn store(p: *mut u8, v: V) {
            // SAFETY: the caller guarantees `W` writable bytes; `storeu` has no alignment need.
            unsafe { _mm_storeu_si128(p.cast(), v) }
        }

        #[inline]
        #[target_feature(enable = "sse2")]
        fn xor(a: V, b: V) -> V {
            _mm_xor_si128(a, b)
        }

        #[inline]
        #[target_feature(enable = "sse2")]
        fn splat(key: [u8; 4]) -> V {
            _mm_set1_epi32(i32::from_ne_bytes(key))
        }

        /// # Safety
        /// None: the scalar kernel needs no CPU feature.
        #[inline]
        unsafe fn narrower(buf: &mut [u8], key: [u8; 4]) {
            super::super::unmask_scalar(buf, key);
        }

        vector_kernel!("sse2");
    }

    pub(super) mod avx2 {
        //! 32-byte vectors.
        use std::arch::x86_64::{
            __m256i, _mm256_loadu_si256, _mm256_set1_epi32, _mm256_storeu_si256, _mm256_xor_si256,
        };

        const W: usize = 32;
        type V = __m256i;

        /// # Safety
        /// `p .. p + W` must be readable.
        #[inline]
        #[target_feature(enable = "avx2")]
        unsafe fn load(p: *const u8) -> V {
            // SAFETY: the caller guarantees `W` readable bytes; `loadu` has no alignment need.
            unsafe { _mm256_loadu_si256(p.cast()) }
        }

        /// # Safety
        /// `p .. p + W` must be writable.
        #[inline]
        #[target_feature(enable = "avx2")]
        unsafe fn store(p: *mut u8, v: V) {
            // SAFETY: the caller guarantees `W` writable bytes; `storeu` has no alignment need.
            unsafe { _mm256_storeu_si256(p.cast(), v) }
        }

        #[inline]
        #[target_feature(enable = "avx2")]
        fn xor(a: V, b: V) -> V {
            _mm256_xor_si256(a, b)
        }

        #[inline]
        #[target_feature(enable = "avx2")]
        fn splat(key: [u8; 4]) -> V {
            _mm256_set1_epi32(i32::from_ne_bytes(key))
        }

        /// # Safety
        /// The CPU must support SSE2 (implied by AVX2).
        #[inline]
        #[target_feature(enable = "avx2")]
        unsafe fn narrower(buf: &mut [u8], key: [u8; 4]) {
            // SAFETY: AVX2 implies SSE2, and this function runs only with AVX2.
            unsafe { super::sse2::unmask(buf, key) }
        }

        vector_kernel!("avx2");
    }

    // The AVX-512 intrinsics and `target_feature(enable = "avx512f")` are stable since Rust
    // 1.89; the workspace's `rust-version` predates that.
    #[allow(clippy::incompatible_msrv)]
    pub(super) mod avx512 {
        //! 64-byte vectors. Needs only AVX-512F: no masked byte access is used.
        use std::arch::x86_64::{
            __m512i, _mm512_loadu_si512, _mm512_set1_epi32, _mm512_storeu_si512, _mm512_xor_si512,
        };

        const W: usize = 64;
        type V = __m512i;

        /// # Safety
        /// `p .. p + W` must be readable.
        #[inline]
        #[target_feature(enable = "avx512f")]
        unsafe fn load(p: *const u8) -> V {
            // SAFETY: the caller guarantees `W` readable bytes; `loadu` has no alignment need.
            unsafe { _mm512_loadu_si512(p.cast()) }
        }

        /// # Safety
        /// `p .. p + W` must be writable.
        #[inline]
        #[target_feature(enable = "avx512f")]
        unsafe fn store(p: *mut u8, v: V) {
            // SAFETY: the caller guarantees `W` writable bytes; `storeu` has no alignment need.
            unsafe { _mm512_storeu_si512(p.cast(), v) }
        }

        #[inline]
        #[target_feature(enable = "avx512f")]
        fn xor(a: V, b: V) -> V {
            _mm512_xor_si512(a, b)
        }

        #[inline]
        #[target_feature(enable = "avx512f")]
        fn splat(key: [u8; 4]) -> V {
            _mm512_set1_epi32(i32::from_ne_bytes(key))
        }

        /// # Safety
        /// The CPU must support AVX2 (implied by AVX-512F).
        #[inline]
        #[target_feature(enable = "avx512f")]
        unsafe fn narrower(buf: &mut [u8], key: [u8; 4]) {
            // SAFETY: AVX-512F implies AVX2, and this function runs only with AVX-512F.
            unsafe { super::avx2::unmask(buf, key) }
        }

        vector_kernel!("avx512f");
    }
}

#[cfg(all(target_arch = "aarch64", not(miri)))]
mod arm {
    //! The aarch64 kernel.

    pub(super) mod neon {
        //! 16-byte vectors.
        use std::arch::aarch64::{uint8x16_t, veorq_u8, vld1q_u8, vst1q_u8};

        const W: usize = 16;
        type V = uint8x16_t;

        /// # Safety
        /// `p .. p + W` must be readable.
        #[inline]
        #[target_feature(enable = "neon")]
        unsafe fn load(p: *const u8) -> V {
            // SAFETY: the caller guarantees `W` readable bytes; `vld1q_u8` has no alignment
            // need beyond a byte's.
            unsafe { vld1q_u8(p) }
        }

        /// # Safety
        /// `p .. p + W` must be writable.
        #[inline]
        #[target_feature(enable = "neon")]
        unsafe fn store(p: *mut u8, v: V) {
            // SAFETY: the caller guarantees `W` writable bytes.
            unsafe { vst1q_u8(p, v) }
        }

        #[inline]
        #[target_feature(enable = "neon")]
        fn xor(a: V, b: V) -> V {
            veorq_u8(a, b)
        }

        /// The key repeated over a vector, built from memory so the byte order is the same on
        /// either endianness.
        #[inline]
        #[target_feature(enable = "neon")]
        fn splat(key: [u8; 4]) -> V {
            let mut bytes = [0u8; W];
            for (i, b) in bytes.iter_mut().enumerate() {
                *b = key[i % 4];
            }
            // SAFETY: `bytes` is `W` readable bytes.
            unsafe { vld1q_u8(bytes.as_ptr()) }
        }

        /// # Safety
        /// None: the scalar kernel needs no CPU feature.
        #[inline]
        unsafe fn narrower(buf: &mut [u8], key: [u8; 4]) {
            super::super::unmask_scalar(buf, key);
        }

        vector_kernel!("neon");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Deterministic filler so failures reproduce.
    fn pattern(len: usize, seed: u32) -> Vec<u8> {
        let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect()
    }

    const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    #[test]
    fn rfc_example() {
        // RFC 6455 §5.7: a masked "Hello".
        let mut buf = [0x7f, 0x9f, 0x4d, 0x51, 0x58];
        unmask(&mut buf, KEY, 0);
        assert_eq!(&buf, b"Hello");
    }

    #[test]
    fn selected_is_available() {
        let avail = available_kernels();
        assert!(avail.contains(&selected_kernel()));
        assert_eq!(avail.last(), Some(&Kernel::Scalar));
        assert_eq!(avail[0], selected_kernel());
    }

    #[test]
    fn every_kernel_length_alignment_phase() {
        const PAD: usize = 64;
        let kernels = available_kernels();
        for len in 0..=256usize {
            let original = pattern(len + 2 * PAD, len as u32);
            for offset in 0..64 {
                for phase in 0..4 {
                    let mut expected = original.clone();
                    unmask_reference(&mut expected[offset..offset + len], KEY, phase);
                    for &k in &kernels {
                        let mut got = original.clone();
                        unmask_with(k, &mut got[offset..offset + len], KEY, phase);
                        assert!(got == expected, "{k:?} len {len} offset {offset} phase {phase}");
                    }
                    let mut got = original.clone();
                    unmask(&mut got[offset..offset + len], KEY, phase);
                    assert!(got == expected, "dispatched len {len} offset {offset} phase {phase}");
                }
            }
        }
    }

    #[test]
    fn phase_is_taken_mod_4() {
        let original = pattern(100, 7);
        for phase in [4, 5, 1023, usize::MAX - 2, usize::MAX] {
            let mut a = original.clone();
            let mut b = original.clone();
            unmask(&mut a, KEY, phase);
            unmask_reference(&mut b, KEY, phase % 4);
            assert_eq!(a, b, "phase {phase}");
        }
    }

    #[test]
    fn twice_restores() {
        for len in [0, 1, 15, 16, 31, 32, 33, 125, 1000, 4096, 65_537] {
            let original = pattern(len, 3);
            for &k in &available_kernels() {
                let mut buf = original.clone();
                unmask_with(k, &mut buf, KEY, 3);
                unmask_with(k, &mut buf, KEY, 3);
                assert_eq!(buf, original, "{k:?} len {len}");
            }
        }
    }

    #[test]
    fn split_with_carried_phase_equals_whole() {
        let original = pattern(300, 11);
        for phase in 0..4 {
            let mut whole = original.clone();
            unmask(&mut whole, KEY, phase);
            for at in 0..=original.len() {
                let mut parts = original.clone();
                let (a, b) = parts.split_at_mut(at);
                unmask(a, KEY, phase);
                unmask(b, KEY, phase + at);
                assert_eq!(parts, whole, "split at {at} phase {phase}");
            }
        }
    }

    #[test]
    fn unavailable_kernel_panics() {
        let all = [Kernel::Scalar, Kernel::Sse2, Kernel::Avx2, Kernel::Avx512, Kernel::Neon];
        let avail = available_kernels();
        let missing = all.into_iter().find(|k| !avail.contains(k));
        // NEON and the x86 kernels never coexist, so one is always missing.
        let Some(missing) = missing else { panic!("every kernel available?") };
        let r = std::panic::catch_unwind(|| unmask_with(missing, &mut [0u8; 8], KEY, 0));
        assert!(r.is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn kernels_match_reference(
            len in 0usize..=100 * 1024,
            offset in 0usize..64,
            phase in any::<usize>(),
            key in any::<[u8; 4]>(),
            seed in any::<u32>(),
        ) {
            let original = pattern(offset + len, seed);
            let mut expected = original.clone();
            unmask_reference(&mut expected[offset..], key, phase);
            for &k in &available_kernels() {
                let mut got = original.clone();
                unmask_with(k, &mut got[offset..], key, phase);
                prop_assert!(got == expected, "{:?}", k);
            }
            let mut got = original;
            unmask(&mut got[offset..], key, phase);
            prop_assert!(got == expected, "dispatched");
        }
    }
}
