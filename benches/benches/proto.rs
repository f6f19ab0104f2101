//! Micro-benchmarks of the protocol core's hot paths, each beside the same job done by another
//! WebSocket library where that library exposes it: unmasking, UTF-8 validation, frame header
//! decoding and the upgrade handshake.
//!
//! Run with `cargo bench -p sockeye-benches --bench proto`. Comparisons live in the same
//! criterion group so they are measured side by side, in one run, on the same buffers.

use std::hint::black_box;
use std::io::Cursor;
use std::time::Duration;

use criterion::measurement::WallTime;
use criterion::{
    criterion_group, criterion_main, Bencher, BenchmarkGroup, BenchmarkId, Criterion, Throughput,
};
use sockeye::proto::{frame, handshake, mask, utf8};

const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

fn unmask(c: &mut Criterion) {
    let sizes: [(usize, &str); 5] =
        [(16, "16B"), (125, "125B"), (1024, "1KiB"), (16 * 1024, "16KiB"), (1024 * 1024, "1MiB")];
    for (size, label) in sizes {
        let mut g = c.benchmark_group(format!("unmask/{label}"));
        g.throughput(Throughput::Bytes(size as u64));
        // Small payloads are unmasked in turn from SLOTS buffers back to back, as the frames of
        // one read would be: unmasking one buffer over and over would time the store-to-load
        // forwarding between iterations instead.
        let slots = if size <= 1024 { SLOTS } else { 1 };
        let mut pool: Vec<u8> = (0..size * slots).map(|i| i as u8).collect();
        let p = &mut pool;
        bench_slots(&mut g, "sockeye", p, size, |buf| mask::unmask(buf, black_box(KEY), 0));
        for kernel in mask::available_kernels() {
            let name = format!("sockeye-{kernel:?}").to_lowercase();
            bench_slots(&mut g, &name, p, size, |buf| {
                mask::unmask_with(kernel, buf, black_box(KEY), 0)
            });
        }
        bench_slots(&mut g, "fastwebsockets", p, size, |buf| {
            fastwebsockets::unmask(buf, black_box(KEY))
        });
        // tungstenite 0.27 keeps `apply_mask` in a private module: nothing to compare with.
        g.finish();
    }
}

/// How many small buffers [`unmask`] cycles through; a power of two so `%` is a mask.
const SLOTS: usize = 16;

/// Times `f` on the `size`-byte slots of `pool` in turn.
fn bench_slots(
    g: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    pool: &mut [u8],
    size: usize,
    f: impl Fn(&mut [u8]),
) {
    let wrap = pool.len() / size - 1;
    let mut i = 0;
    g.bench_function(name, |b| {
        iter(b, || {
            let at = i * size;
            i = (i + 1) & wrap;
            f(black_box(&mut pool[at..at + size]))
        })
    });
}

/// About `len` bytes of text cycling through `pieces`.
fn text(pieces: &[&str], len: usize) -> Vec<u8> {
    let mut s = String::with_capacity(len + 64);
    'fill: loop {
        for p in pieces {
            if s.len() + p.len() > len {
                break 'fill;
            }
            s.push_str(p);
        }
    }
    s.into_bytes()
}

fn utf8_validation(c: &mut Criterion) {
    let ascii =
        text(&["The quick brown fox jumps over the lazy dog. ", "0123456789 {}[]\n"], 65536);
    let non_ascii = text(
        &[
            "Γειά σου κόσμε, ",
            "διαφανής ",
            "你好，世界。",
            "日本語のテキスト ",
            "🎉🚀😀 ",
            "ünïcödé ",
        ],
        65536,
    );
    for (name, data) in [("ascii", &ascii), ("non_ascii", &non_ascii)] {
        let mut g = c.benchmark_group(format!("utf8/{name}"));
        g.throughput(Throughput::Bytes(data.len() as u64));
        g.bench_function("sockeye-validator", |b| {
            iter(b, || {
                let mut v = utf8::Utf8Validator::new();
                let fed = v.feed(black_box(data));
                (fed, v.finish())
            })
        });
        // The same bytes as sixteen 4 KiB reads, which split characters at arbitrary points.
        g.bench_function("sockeye-validator-4KiB-chunks", |b| {
            iter(b, || {
                let mut v = utf8::Utf8Validator::new();
                for chunk in black_box(data).chunks(4096) {
                    if v.feed(chunk).is_err() {
                        break;
                    }
                }
                v.finish()
            })
        });
        g.bench_function("std", |b| iter(b, || std::str::from_utf8(black_box(data)).is_ok()));
        g.finish();
    }
}

fn frame_decode(c: &mut Criterion) {
    // A masked 5-byte text frame: 2-byte header + key.
    let short: &[u8] = &[0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d];
    // A masked 1 MiB binary frame: 2 bytes + 64-bit length + key.
    let long: &[u8] = &[0x82, 0xff, 0, 0, 0, 0, 0, 0x10, 0, 0, 0x37, 0xfa, 0x21, 0x3d];
    let mut g = c.benchmark_group("frame_decode");
    // The cost of the measuring loop itself, to read the rows below against.
    g.bench_function("harness-floor", |b| iter(b, || black_box(short).len()));
    for (name, hdr) in [("2B+mask", short), ("64bit+mask", long)] {
        g.bench_with_input(BenchmarkId::new("sockeye", name), hdr, |b, hdr| {
            iter(b, || frame::decode(black_box(hdr)))
        });
        g.bench_with_input(BenchmarkId::new("tungstenite", name), hdr, |b, hdr| {
            iter(b, || {
                let mut cur = Cursor::new(black_box(hdr));
                tungstenite::protocol::frame::FrameHeader::parse(&mut cur).ok().flatten()
            })
        });
    }
    g.finish();
}

/// What a browser sends: 17 headers, about 600 bytes.
const BROWSER_REQUEST: &[u8] = b"GET /chat?room=lobby HTTP/1.1\r\n\
    Host: server.example.com\r\n\
    User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n\
    Accept: */*\r\n\
    Accept-Language: en-US,en;q=0.5\r\n\
    Accept-Encoding: gzip, deflate, br\r\n\
    Sec-WebSocket-Version: 13\r\n\
    Origin: https://server.example.com\r\n\
    Sec-WebSocket-Extensions: permessage-deflate\r\n\
    Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
    Connection: keep-alive, Upgrade\r\n\
    Sec-Fetch-Dest: empty\r\n\
    Sec-Fetch-Mode: websocket\r\n\
    Sec-Fetch-Site: same-origin\r\n\
    Pragma: no-cache\r\n\
    Cache-Control: no-cache\r\n\
    Upgrade: websocket\r\n\r\n";

/// What a minimal client sends: the request of RFC 6455 §1.3, 6 headers.
const MINIMAL_REQUEST: &[u8] = b"GET /chat HTTP/1.1\r\n\
    Host: server.example.com\r\n\
    Upgrade: websocket\r\n\
    Connection: Upgrade\r\n\
    Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
    Origin: http://example.com\r\n\
    Sec-WebSocket-Version: 13\r\n\r\n";

fn handshake_bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("handshake");
    g.bench_function("accept_key", |b| {
        iter(b, || handshake::accept_key(black_box(b"dGhlIHNhbXBsZSBub25jZQ==")))
    });
    for (name, request) in [("browser", BROWSER_REQUEST), ("minimal", MINIMAL_REQUEST)] {
        // The floor: httparse alone, which `parse_request` runs before validating.
        g.bench_with_input(BenchmarkId::new("httparse-only", name), request, |b, r| {
            iter(b, || {
                let mut headers = [httparse::EMPTY_HEADER; handshake::MAX_HEADERS];
                let mut req = httparse::Request::new(&mut headers);
                req.parse(black_box(r)).is_ok_and(|s| s.is_complete())
            })
        });
        g.bench_with_input(BenchmarkId::new("parse_request", name), request, |b, r| {
            iter(b, || {
                matches!(
                    handshake::parse_request(black_box(r), 8192),
                    Ok(handshake::Parsed::Complete(..))
                )
            })
        });
        g.bench_with_input(BenchmarkId::new("parse+accept", name), request, |b, r| {
            iter(b, || match handshake::parse_request(black_box(r), 8192) {
                Ok(handshake::Parsed::Complete(req, _)) => {
                    Some(handshake::accept_key(req.key().as_bytes()))
                }
                _ => None,
            })
        });
    }
    g.finish();
}

/// `b.iter(f)`, with `f`'s output kept alive by `std::hint::black_box`. Criterion 0.5's own
/// `black_box` (without its nightly feature) is a volatile read of the output, byte by byte for
/// a struct: ~20 loads per iteration that would swamp a nanosecond-scale routine.
fn iter<O>(b: &mut Bencher<'_>, mut f: impl FnMut() -> O) {
    b.iter(|| {
        black_box(f());
    })
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30)
}

criterion_group! {
    name = benches;
    config = config();
    targets = unmask, utf8_validation, frame_decode, handshake_bench
}
criterion_main!(benches);
