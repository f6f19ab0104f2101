//! Fuzz target: arbitrary bytes as the payload of a compressed (RSV1) client message, read by
//! a server connection that negotiated permessage-deflate, with a small `max_message_size`.
//!
//! The first input byte picks text or binary, whether the client keeps its window (the
//! connection's own inflater, or one lent by the worker), and how many frames the message is
//! cut into; the rest is the deflate data. Checked against flate2 inflating the same bytes
//! (plus `00 00 ff ff`) into a buffer of the limit + 1:
//!
//! * a message comes out only when the reference inflates the data without error to at most
//!   the limit, and it is exactly the reference's bytes (valid UTF-8 for text);
//! * `MessageTooLarge` exactly when the reference makes more than the limit;
//! * `InvalidCompressedData` only when the reference fails within the limit;
//! * `InvalidUtf8` only for text whose inflated bytes (as far as the reference got, within the
//!   limit) hold an invalid sequence, or end inside one;
//! * no other error, no panic; and the heap the reads allocate (counted by a global
//!   allocator) stays under the inflater's fixed size plus twice the limit, whatever the
//!   input inflates to: the output buffer never grows past the limit.
#![no_main]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use libfuzzer_sys::fuzz_target;
use sockeye::proto::conn::{Env, Event, Limits};
use sockeye::proto::frame::{encode, MAX_HEADER_LEN};
use sockeye::proto::mask::unmask;
use sockeye::proto::{Connection, DeflateConfig, OpCode, PerMessageDeflate, ProtocolError, Role};

/// Counts the bytes allocated while `COUNTING` is set (one thread: the fuzzer's).
struct Counting;
static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCATED: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to `System` unchanged; the counter has no effect on memory.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATED.fetch_add(layout.size(), Ordering::Relaxed);
        }
        // SAFETY: the caller's contract for `alloc` is passed on as it is.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` with this layout (every allocation goes there).
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATED.fetch_add(new_size.saturating_sub(layout.size()), Ordering::Relaxed);
        }
        // SAFETY: as for `dealloc`, and the caller's contract for `realloc` is passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const LIMIT: u64 = 1024;
/// What a zlib-rs inflater takes, whatever the data (engine/src/proto/deflate.rs:
/// `inflater_bytes`, 47 552 bytes), with room to spare for its alignment.
const INFLATER: usize = 64 << 10;
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

fuzz_target!(|data: &[u8]| {
    let Some((&mode, payload)) = data.split_first() else { return };
    let text = mode & 1 == 1;
    let client_nct = mode & 2 == 2;
    let frames = 1 + (mode as usize >> 2) % 4;

    let limits = Limits { max_message_size: LIMIT, ..Limits::default() };
    let mut env = Env::new(limits);
    env.deflate = DeflateConfig { enabled: true, ..DeflateConfig::default() };
    let params = PerMessageDeflate {
        client_no_context_takeover: client_nct,
        server_no_context_takeover: true,
        ..PerMessageDeflate::default()
    };
    let mut conn = Connection::new_open(Role::Server, 0);
    conn.set_deflate(Some(params));

    // The message as masked client frames: RSV1 on the first only.
    let key = [0x37, 0xfa, 0x21, 0x3d];
    let mut wire = Vec::with_capacity(payload.len() + frames * MAX_HEADER_LEN);
    let per = payload.len().div_ceil(frames).max(1);
    let mut pieces: Vec<&[u8]> = payload.chunks(per).collect();
    if pieces.is_empty() {
        pieces.push(&[]);
    }
    let n = pieces.len();
    for (i, piece) in pieces.into_iter().enumerate() {
        let op = match (i, text) {
            (0, true) => OpCode::Text,
            (0, false) => OpCode::Binary,
            _ => OpCode::Continuation,
        };
        let rsv = if i == 0 { 0b100 } else { 0 };
        let mut h = [0u8; MAX_HEADER_LEN];
        let hl = encode(i + 1 == n, rsv, op, piece.len() as u64, Some(key), &mut h);
        wire.extend_from_slice(&h[..hl]);
        let at = wire.len();
        wire.extend_from_slice(piece);
        unmask(&mut wire[at..], key, 0);
    }

    let mut out = Vec::new();
    let mut pos = 0;
    ALLOCATED.store(0, Ordering::Relaxed);
    COUNTING.store(true, Ordering::Relaxed);
    let result: Result<Option<Vec<u8>>, ProtocolError> = loop {
        if pos >= wire.len() {
            break Ok(None);
        }
        match conn.read(&mut wire[pos..], &mut out, &mut env) {
            Ok(r) => {
                assert!(r.consumed > 0 || r.event.is_some(), "no progress");
                pos += r.consumed;
                match r.event {
                    Some(Event::Text(m)) => {
                        assert!(text);
                        break Ok(Some(m.as_bytes().to_vec()));
                    }
                    Some(Event::Binary(m)) => {
                        assert!(!text);
                        break Ok(Some(m.to_vec()));
                    }
                    Some(_) => panic!("an event that is not the message"),
                    None => {}
                }
            }
            Err(e) => break Err(e),
        }
    };
    COUNTING.store(false, Ordering::Relaxed);
    let allocated = ALLOCATED.load(Ordering::Relaxed);
    // The message copied out above is counted too: one more limit.
    let bound = INFLATER + 3 * LIMIT as usize;
    assert!(allocated <= bound, "reads allocated {allocated} bytes (bound {bound})");

    // The reference: flate2 (zlib-rs) into a buffer of the limit + 1, never grown.
    let mut inf = flate2::Decompress::new(false);
    let mut input = payload.to_vec();
    input.extend_from_slice(&TAIL);
    let mut reference = Vec::with_capacity(LIMIT as usize + 1);
    let r = inf.decompress_vec(&input, &mut reference, flate2::FlushDecompress::None);
    let ref_len = inf.total_out() as usize;
    let over = ref_len > LIMIT as usize;
    match (&result, r.is_err()) {
        (Ok(Some(m)), false) => {
            assert!(!over && m[..] == reference[..], "message differs from the reference");
            if text {
                assert!(std::str::from_utf8(m).is_ok());
            }
        }
        (Ok(Some(_)), true) => panic!("a message out of data the reference rejects"),
        (Ok(None), _) => panic!("the whole message was read without an event"),
        (Err(ProtocolError::MessageTooLarge), _) => assert!(over, "1009 within the limit"),
        (Err(ProtocolError::InvalidCompressedData), true) => {
            assert!(!over, "1007 where the reference made more than the limit")
        }
        (Err(ProtocolError::InvalidCompressedData), false) => {
            panic!("1007 for data the reference inflates")
        }
        (Err(ProtocolError::InvalidUtf8), failed) => {
            // UTF-8 is checked as the bytes come out (fail-fast), so this may come before
            // the point where the deflate data goes bad or the limit is passed.
            let got = &reference[..reference.len().min(LIMIT as usize)];
            let bad = match std::str::from_utf8(got) {
                Ok(_) => false,
                Err(e) => e.error_len().is_some() || (!failed && !over),
            };
            assert!(text && bad, "1007 (UTF-8) for valid text");
        }
        (Err(e), _) => panic!("unexpected error {e:?}"),
    }
});
