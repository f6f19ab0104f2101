//! permessage-deflate throughput: compressing and inflating one message without context
//! takeover (the engine's default), with flate2 on zlib-rs (what the engine uses) beside
//! miniz_oxide (flate2's pure-Rust backend, called directly) and libdeflate (libdeflater:
//! whole-message only, no streaming, no context takeover), at 125 B, 1 KiB and 16 KiB, for
//! JSON-like and random payloads; then the same messages through `proto::Connection`
//! (`send_message` on the worker's shared compressor, `read` of a compressed frame).
//!
//! libdeflate's compressor writes one complete stream (last block BFINAL), which RFC 7692
//! §7.2.3.3 allows as a message; its inflater wants a complete stream and an output buffer
//! as large as the message may be, so it is fed the zlib-rs data + `00 00 ff ff` + an empty
//! final stored block, into a buffer of the message's size + 1 (the most favourable case:
//! a server would need one of `max_message_size`).
//!
//! Run with `cargo bench -p sockeye-benches --bench deflate`. The compression ratio of each
//! payload at each level is printed once, before its group.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
// The workspace's flate2, as the engine has it: the zlib-rs backend.
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use libdeflater::{CompressionLvl, Compressor as LdCompressor, Decompressor as LdDecompressor};
use miniz_oxide::deflate::core::{
    compress as mz_compress, create_comp_flags_from_zip_params, CompressorOxide, TDEFLFlush,
};
use miniz_oxide::inflate::stream::{inflate as mz_inflate, InflateState};
use miniz_oxide::{DataFormat, MZFlush};
use sockeye::proto::{Connection, DeflateConfig, Env, Limits, OpCode, PerMessageDeflate, Role};

const TAIL: [u8; 4] = [0, 0, 0xff, 0xff];

/// JSON-like messages of a market feed, `size` bytes (the last one cut to fit).
fn json(size: usize) -> Vec<u8> {
    let mut s = String::from("[");
    let mut i = 0u64;
    while s.len() < size {
        s.push_str(&format!(
            "{{\"type\":\"trade\",\"symbol\":\"BTC-USD\",\"price\":{}.{:02},\"qty\":0.{:04},\
             \"side\":\"{}\",\"ts\":{},\"id\":{}}},",
            43_000 + (i * 37) % 500,
            (i * 13) % 100,
            (i * 7919) % 10_000,
            if i.is_multiple_of(3) { "sell" } else { "buy" },
            1_700_000_000_000u64 + i * 17,
            880_000 + i
        ));
        i += 1;
    }
    s.truncate(size);
    s.into_bytes()
}

/// Incompressible bytes (xorshift64).
fn random(size: usize) -> Vec<u8> {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn zlib_rs_compress(c: &mut Compress, input: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.reserve(input.len() + 64);
    let mut rest = input;
    loop {
        let before = c.total_in();
        c.compress_vec(rest, out, FlushCompress::Sync).unwrap();
        rest = &rest[(c.total_in() - before) as usize..];
        if rest.is_empty() && out.len() < out.capacity() {
            break;
        }
        out.reserve(out.capacity());
    }
    out.truncate(out.len() - 4);
    c.reset();
}

fn miniz_compress(c: &mut CompressorOxide, input: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.resize(input.len() + 64, 0);
    let (_, used, written) = mz_compress(c, input, out, TDEFLFlush::Sync);
    assert_eq!(used, input.len());
    out.truncate(written - 4);
    c.reset();
}

fn zlib_rs_inflate(d: &mut Decompress, input: &[u8], out: &mut Vec<u8>, size: usize) {
    out.clear();
    out.reserve(size + 1);
    d.decompress_vec(input, out, FlushDecompress::None).unwrap();
    d.decompress_vec(&TAIL, out, FlushDecompress::None).unwrap();
    d.reset(false);
}

fn miniz_inflate(d: &mut InflateState, input: &[u8], out: &mut Vec<u8>, size: usize) {
    out.clear();
    out.resize(size + 1, 0);
    let r = mz_inflate(d, input, out, MZFlush::None);
    let n = r.bytes_written;
    let r2 = mz_inflate(d, &TAIL, &mut out[n..], MZFlush::None);
    out.truncate(n + r2.bytes_written);
    d.reset(DataFormat::Raw);
}

fn libdeflate_compress(c: &mut LdCompressor, input: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.resize(c.deflate_compress_bound(input.len()), 0);
    let n = c.deflate_compress(input, out).unwrap();
    out.truncate(n);
}

/// An empty stored block with BFINAL: ends a sync-flushed stream for libdeflate.
const FINAL: [u8; 5] = [0x01, 0x00, 0x00, 0xff, 0xff];

fn libdeflate_inflate(d: &mut LdDecompressor, input: &[u8], out: &mut [u8]) -> usize {
    // `input` ends with the tail and the final block already (appended once, outside).
    d.deflate_decompress(input, out).unwrap()
}

fn bench(c: &mut Criterion) {
    let sizes: [(usize, &str); 3] = [(125, "125B"), (1024, "1KiB"), (16 << 10, "16KiB")];
    for (kind, make) in [("json", json as fn(usize) -> Vec<u8>), ("random", random)] {
        for (size, label) in sizes {
            let data = make(size);
            let mut out = Vec::new();
            for level in [1u32, 6] {
                let mut zc = Compress::new(Compression::new(level), false);
                zlib_rs_compress(&mut zc, &data, &mut out);
                let z = out.len();
                let mut mc =
                    CompressorOxide::new(create_comp_flags_from_zip_params(level as i32, 0, 0));
                miniz_compress(&mut mc, &data, &mut out);
                let m = out.len();
                let mut lc = LdCompressor::new(CompressionLvl::new(level as i32).unwrap());
                libdeflate_compress(&mut lc, &data, &mut out);
                eprintln!(
                    "{kind} {label} level {level}: zlib-rs {z} bytes ({:.1} %), miniz_oxide {m} \
                     bytes ({:.1} %), libdeflate {} bytes ({:.1} %)",
                    100.0 * z as f64 / size as f64,
                    100.0 * m as f64 / size as f64,
                    out.len(),
                    100.0 * out.len() as f64 / size as f64
                );
            }

            let mut g = c.benchmark_group(format!("deflate/compress/{kind}/{label}"));
            g.throughput(Throughput::Bytes(size as u64));
            for level in [1u32, 6] {
                let mut zc = Compress::new(Compression::new(level), false);
                g.bench_function(BenchmarkId::new("zlib-rs", format!("L{level}")), |b| {
                    b.iter(|| zlib_rs_compress(&mut zc, black_box(&data), &mut out))
                });
                let mut mc =
                    CompressorOxide::new(create_comp_flags_from_zip_params(level as i32, 0, 0));
                g.bench_function(BenchmarkId::new("miniz_oxide", format!("L{level}")), |b| {
                    b.iter(|| miniz_compress(&mut mc, black_box(&data), &mut out))
                });
                let mut lc = LdCompressor::new(CompressionLvl::new(level as i32).unwrap());
                g.bench_function(BenchmarkId::new("libdeflate", format!("L{level}")), |b| {
                    b.iter(|| libdeflate_compress(&mut lc, black_box(&data), &mut out))
                });
            }
            // Where the time of a small message goes: the reset alone (what no context
            // takeover pays per message), and compressing without it (context takeover).
            let mut zc = Compress::new(Compression::new(1), false);
            g.bench_function(BenchmarkId::new("zlib-rs", "L1 reset only"), |b| {
                b.iter(|| zc.reset())
            });
            let mut zc = Compress::new(Compression::new(1), false);
            g.bench_function(BenchmarkId::new("zlib-rs", "L1 kept window"), |b| {
                b.iter(|| {
                    out.clear();
                    out.reserve(size + 64);
                    zc.compress_vec(black_box(&data), &mut out, FlushCompress::Sync).unwrap();
                })
            });
            g.finish();

            let mut zc = Compress::new(Compression::new(1), false);
            let mut compressed = Vec::new();
            zlib_rs_compress(&mut zc, &data, &mut compressed);
            let mut g = c.benchmark_group(format!("deflate/inflate/{kind}/{label}"));
            g.throughput(Throughput::Bytes(size as u64));
            let mut zd = Decompress::new(false);
            g.bench_function("zlib-rs", |b| {
                b.iter(|| zlib_rs_inflate(&mut zd, black_box(&compressed), &mut out, size))
            });
            zlib_rs_inflate(&mut zd, &compressed, &mut out, size);
            assert_eq!(out, data);
            let mut md = InflateState::new_boxed(DataFormat::Raw);
            g.bench_function("miniz_oxide", |b| {
                b.iter(|| miniz_inflate(&mut md, black_box(&compressed), &mut out, size))
            });
            miniz_inflate(&mut md, &compressed, &mut out, size);
            assert_eq!(out, data);
            let mut whole = compressed.clone();
            whole.extend_from_slice(&TAIL);
            whole.extend_from_slice(&FINAL);
            let mut ld = LdDecompressor::new();
            let mut lout = vec![0u8; size + 1];
            g.bench_function("libdeflate", |b| {
                b.iter(|| libdeflate_inflate(&mut ld, black_box(&whole), &mut lout))
            });
            let n = libdeflate_inflate(&mut ld, &whole, &mut lout);
            assert_eq!(&lout[..n], &data[..]);
            // And libdeflate's own whole-message output, as zlib-rs would inflate it.
            let mut lc = LdCompressor::new(CompressionLvl::new(1).unwrap());
            let mut ldata = Vec::new();
            libdeflate_compress(&mut lc, &data, &mut ldata);
            zlib_rs_inflate(&mut zd, &ldata, &mut out, size);
            assert_eq!(out, data, "a libdeflate message inflates with zlib-rs");
            g.finish();

            connection(c, kind, label, &data);
        }
    }
}

/// The same messages through the connection: what the engine pays per message, framing and
/// buffer handling included.
fn connection(c: &mut Criterion, kind: &str, label: &str, data: &[u8]) {
    let p = PerMessageDeflate { server_no_context_takeover: true, ..PerMessageDeflate::default() };
    let mut env = Env::new(Limits::default());
    env.deflate = DeflateConfig { enabled: true, min_size: 0, ..DeflateConfig::default() };
    let mut g = c.benchmark_group(format!("deflate/conn/{kind}/{label}"));
    g.throughput(Throughput::Bytes(data.len() as u64));

    let mut server = Connection::new_open(Role::Server, 0);
    server.set_deflate(Some(p));
    let mut out = Vec::with_capacity(data.len() + 64);
    g.bench_function("send_message", |b| {
        b.iter(|| {
            out.clear();
            server.send_message(OpCode::Binary, black_box(data), &mut out, &mut env).unwrap();
        })
    });
    let mut plain = Connection::new_open(Role::Server, 0);
    g.bench_function("send_binary-uncompressed", |b| {
        b.iter(|| {
            out.clear();
            plain.send_binary(black_box(data), &mut out).unwrap();
        })
    });

    // A client-compressed frame, read by the server (unmasked afresh each time: the read
    // unmasks in place).
    let mut client = Connection::new_open(Role::Client, 7);
    client.set_deflate(Some(p));
    let mut cenv = Env::new(Limits::default());
    cenv.deflate = env.deflate;
    let mut wire = Vec::new();
    client.send_message(OpCode::Binary, data, &mut wire, &mut cenv).unwrap();
    let mut buf = wire.clone();
    g.bench_function("read", |b| {
        b.iter(|| {
            buf.copy_from_slice(&wire);
            let r = server.read(&mut buf, &mut out, &mut env).unwrap();
            if let Some(sockeye::proto::Event::Binary(m)) = r.event {
                black_box(m.len());
                env.pool.put(m.into_owned());
            }
        })
    });
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .sample_size(30)
}

criterion_group! { name = benches; config = config(); targets = bench }
criterion_main!(benches);
