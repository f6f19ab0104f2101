//! Heap held by permessage-deflate contexts, counted by a global allocator: what a
//! connection with context takeover keeps per direction, at each window size, for flate2 on
//! zlib-rs (the engine's) and miniz_oxide (which has one window size, 15), and what an idle
//! connection that negotiated compression without context takeover holds.
//!
//! Run with `cargo bench -p sockeye-benches --bench deflate_mem`. It prints a table and times
//! nothing.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use miniz_oxide::deflate::core::{create_comp_flags_from_zip_params, CompressorOxide};
use miniz_oxide::inflate::stream::InflateState;
use miniz_oxide::DataFormat;
use sockeye::proto::{Connection, DeflateConfig, Env, Limits, OpCode, PerMessageDeflate, Role};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is passed straight to the system allocator; the counter only adds up
// the sizes it was asked for.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size(), Ordering::Relaxed);
        // SAFETY: forwarded with the caller's layout, whose contract the caller upholds.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        // SAFETY: `p` came from `alloc` above with this layout.
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Heap bytes `make` leaves allocated in what it returns.
fn held<T>(make: impl FnOnce() -> T) -> (usize, T) {
    let before = LIVE.load(Ordering::Relaxed);
    let t = make();
    (LIVE.load(Ordering::Relaxed) - before, t)
}

fn main() {
    let msg: Vec<u8> = (0..4096u32).flat_map(|i| format!("{{\"i\":{i}}}").into_bytes()).collect();
    println!("| context | window bits | heap after one 4 KiB-ish message |");
    println!("|---|---|---|");
    for bits in 9..=15u8 {
        for level in [1u32, 6] {
            let (n, c) = held(|| {
                let mut c = Compress::new_with_window_bits(Compression::new(level), false, bits);
                let mut out = Vec::with_capacity(msg.len() * 2);
                c.compress_vec(&msg, &mut out, FlushCompress::Sync).unwrap();
                drop(out);
                c
            });
            println!("| flate2/zlib-rs compressor, level {level} | {bits} | {n} |");
            drop(c);
        }
        let mut c = Compress::new_with_window_bits(Compression::new(1), false, bits);
        let mut z = Vec::with_capacity(msg.len() * 2);
        c.compress_vec(&msg, &mut z, FlushCompress::Sync).unwrap();
        let (n, d) = held(|| {
            let mut d = Decompress::new_with_window_bits(false, bits);
            let mut out = Vec::with_capacity(msg.len() + 1);
            d.decompress_vec(&z, &mut out, FlushDecompress::None).unwrap();
            drop(out);
            d
        });
        println!("| flate2/zlib-rs inflater | {bits} | {n} |");
        drop(d);
    }
    let (n, c) = held(|| CompressorOxide::new(create_comp_flags_from_zip_params(1, 0, 0)));
    println!("| miniz_oxide compressor (any level) | 15 only | {n} |");
    drop(c);
    let (n, d) = held(|| InflateState::new_boxed(DataFormat::Raw));
    println!("| miniz_oxide inflater | 15 only | {n} |");
    drop(d);

    // A connection that negotiated compression without context takeover, after a message
    // each way: it holds only its boxed state; the worker holds the shared contexts.
    let p = PerMessageDeflate {
        server_no_context_takeover: true,
        client_no_context_takeover: true,
        ..PerMessageDeflate::default()
    };
    let mut env = Env::new(Limits::default());
    env.deflate = DeflateConfig { enabled: true, min_size: 0, ..DeflateConfig::default() };
    let mut cenv = Env::new(Limits::default());
    cenv.deflate = env.deflate;
    let mut client = Connection::new_open(Role::Client, 1);
    client.set_deflate(Some(p));
    let mut wire = Vec::new();
    client.send_message(OpCode::Binary, &msg, &mut wire, &mut cenv).unwrap();
    let (n, mut server) = held(|| {
        let mut s = Connection::new_open(Role::Server, 0);
        s.set_deflate(Some(p));
        s
    });
    println!("| idle connection, compression without takeover (state box) | - | {n} |");
    let before = LIVE.load(Ordering::Relaxed);
    let mut out = Vec::new();
    server.send_message(OpCode::Binary, &msg, &mut out, &mut env).unwrap();
    let r = server.read(&mut wire, &mut out, &mut env).unwrap();
    drop(r);
    drop(out);
    let after = LIVE.load(Ordering::Relaxed);
    println!(
        "| worker's shared contexts after one message each way (1 compressor, 1 inflater) | 15 | {} |",
        after - before
    );
    println!(
        "| the same idle connection after those messages | - | {} (holds contexts: {:?}) |",
        std::mem::size_of_val(&server) + n,
        server.holds_deflate_contexts()
    );
}
