//! Fuzz target: the worker core (`server::core::Core`) driven through its test backend
//! (`sockeye::testing::Pair`: Unix socket pairs, a fake clock) by a short program of events the
//! input decodes to: clients open (handshake done) or connect raw; send arbitrary bytes, masked
//! frames built from the input (whole, or announcing more than they carry), or the test
//! handler's commands ("boom", "close N", "send N"); stop or start reading; hang up; the clock
//! moves; sends and closes arrive from outside a callback.
//!
//! Checked after every step: no panic (a caught handler panic aside); the memory the core
//! counts never passes its budget by more than one message; its count of queued bytes equals
//! what its send queues hold; a reading client only ever receives well-formed frames and
//! nothing after the server's close. At the end, once every client has hung up and the clock
//! has passed every timeout: no connection is left and the memory count is back to 0.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use sockeye::proto::frame::MAX_HEADER_LEN;
use sockeye::proto::{Limits, OpCode};
use sockeye::testing::{Pair, HANDLER_PANIC};
use sockeye::Config;

const MAX_CLIENTS: usize = 8;
const MAX_MESSAGE: u64 = 64 << 10;
const BUDGET: usize = 256 << 10;
/// Reached by one full send queue plus one message being assembled.
const SMALL_BUDGET: usize = 96 << 10;
const MAX_STEPS: usize = 64;

/// Reads the program: each call takes bytes from the front, 0 once the input is spent.
struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }
    fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (a, b) = self.0.split_at(n.min(self.0.len()));
        self.0 = b;
        a
    }
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A frame as a client writes it: `b0` (FIN, RSV, opcode: anything), `announced` payload
/// length, masked with `key`, carrying `payload` (which may be shorter than announced).
fn masked_frame(b0: u8, announced: u64, key: [u8; 4], payload: &[u8]) -> Vec<u8> {
    let mut out = vec![b0];
    if announced < 126 {
        out.push(0x80 | announced as u8);
    } else if announced <= u64::from(u16::MAX) {
        out.push(0x80 | 126);
        out.extend_from_slice(&(announced as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&announced.to_be_bytes());
    }
    out.extend_from_slice(&key);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    out
}

fn config(flags: u8) -> Config {
    let cfg = Config {
        limits: Limits {
            max_frame_size: MAX_MESSAGE,
            max_message_size: MAX_MESSAGE,
            max_fragments: 64,
            max_handshake_bytes: 1024,
            handshake_timeout: Duration::from_secs(2),
            close_timeout: Duration::from_secs(1),
        },
        max_backpressure: 64 << 10,
        worker_memory_budget: if flags & 64 != 0 { SMALL_BUDGET } else { BUDGET },
        idle_timeout: (flags & 1 != 0).then(|| Duration::from_secs(3)),
        auto_ping: (flags & 2 != 0).then(|| Duration::from_millis(1500)),
        close_on_backpressure_limit: flags & 4 != 0,
        // Small: large sends take the direct-write path too.
        direct_write_min: if flags & 8 != 0 { 1 << 10 } else { 32 << 10 },
        timer_tick: Duration::from_millis(if flags & 16 != 0 { 1 } else { 50 }),
        max_connections: if flags & 32 != 0 { 3 } else { 1 << 10 },
        ..Config::default()
    };
    cfg.validate().expect("a valid fuzz config");
    cfg
}

/// The invariants that hold after every step.
fn check(p: &Pair, budget: usize) {
    let used = p.memory_in_use();
    // Data sends and assembly reservations are checked against the budget; past it go only
    // what is never refused: control frames (pongs, closes) and handshake responses, and a
    // message being echoed (its assembly is given back as it is sent). One message's worth.
    let slack = MAX_MESSAGE as usize + MAX_HEADER_LEN;
    assert!(used <= budget + slack, "memory in use {used} > budget {budget} + {slack}");
    let stats = p.stats();
    assert_eq!(stats.memory_in_use, used);
    assert!(p.len() <= p.clients());
    // Accounting: the core's count of queued bytes is what its queues hold.
    assert_eq!(p.queued_accounted(), p.queued_in_slots(), "queued bytes mis-counted");
}

fuzz_target!(
    init: {
        // No Rust runtime main here: a write to a peer that hung up must be EPIPE, not SIGPIPE.
        // SAFETY: setting a signal's disposition to SIG_IGN, once, before any thread runs.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        }
        // libfuzzer-sys aborts on every panic; the test handler's "boom" panic is caught by the
        // core (and counted), which is what is under test.
        let abort = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let msg = info
                .payload()
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| info.payload().downcast_ref::<&str>().copied());
            if msg != Some(HANDLER_PANIC) {
                abort(info);
            }
        }));
    },
    |data: &[u8]| {
        let mut input = Input(data);
        let flags = input.byte();
        let cfg = config(flags);
        let budget = cfg.worker_memory_budget;
        let mut p = Pair::new(cfg);
        if flags & 128 != 0 {
            // Small kernel buffers: the peer's window shuts after a few KiB, so send queues
            // (and the budget) fill within a few steps.
            p.set_socket_buffers(Some(4 << 10));
        }
        let mut steps = 0;
        while !input.is_empty() && steps < MAX_STEPS {
            steps += 1;
            let op = input.byte();
            let n = p.clients();
            // The client an event is for (none yet: open one).
            let c = if n == 0 { None } else { Some(usize::from(input.byte()) % n) };
            match (op % 12, c) {
                (0, _) | (_, None) => {
                    // A backend accepts only while the core has room.
                    if n < MAX_CLIENTS && p.has_room() {
                        if op & 0x80 != 0 {
                            p.connect();
                        } else {
                            p.open();
                        }
                    }
                }
                (1, Some(c)) => {
                    let len = usize::from(input.byte());
                    let bytes = input.bytes(len);
                    p.send_raw(c, bytes);
                }
                (2, Some(c)) => {
                    // A whole masked frame, any first byte; its payload starts with up to 255 input
                    // bytes, padded.
                    let b0 = input.byte();
                    let len = usize::from(input.u16()) % (MAX_MESSAGE as usize + 512);
                    let key = [input.byte(), input.byte(), input.byte(), input.byte()];
                    let take = usize::from(input.byte()).min(len);
                    let mut payload = input.bytes(take).to_vec();
                    payload.resize(len, b'x');
                    p.send_raw(c, &masked_frame(b0, len as u64, key, &payload));
                }
                (3, Some(c)) => {
                    // A frame announcing up to 1 MiB that carries only part of it: an assembly
                    // reservation (or a 1009) that waits for the rest.
                    let b0 = input.byte();
                    let announced = u64::from(input.u16()) << (input.byte() % 5);
                    let carried = (usize::from(input.u16()) % (32 << 10)).min(announced as usize);
                    p.send_raw(c, &masked_frame(b0, announced, [1, 2, 3, 4], &vec![b'y'; carried]));
                }
                (4, Some(c)) => {
                    // The test handler's commands, as whole text frames.
                    let arg = input.u16();
                    let text = match input.byte() % 4 {
                        0 => "boom".to_string(),
                        1 => format!("close {}", arg % 5000),
                        2 => format!("send {}", usize::from(arg) * 2),
                        _ => "hello".to_string(),
                    };
                    let fin = if input.byte() & 1 == 0 { 0x81 } else { 0x01 };
                    p.send_raw(c, &masked_frame(fin, text.len() as u64, [9, 8, 7, 6], text.as_bytes()));
                }
                (5, Some(c)) => {
                    let on = input.byte() & 1 == 1;
                    p.set_reading(c, on);
                }
                (6, Some(c)) => p.hang_up(c),
                (7, _) => {
                    let ms = u64::from(input.byte()) * 20;
                    p.advance(Duration::from_millis(ms));
                }
                (8, Some(c)) => {
                    let op = match input.byte() % 4 {
                        0 => OpCode::Text,
                        1 => OpCode::Binary,
                        2 => OpCode::Ping,
                        _ => OpCode::Pong,
                    };
                    let len = usize::from(input.u16()) * 2;
                    p.server_send(c, op, len);
                }
                (9, Some(c)) => {
                    let code = input.u16() % 5000;
                    p.server_close(c, code);
                }
                (10, Some(c)) => {
                    // A burst of small frames: pings and binaries, in one write.
                    let count = usize::from(input.byte() % 64) + 1;
                    let ping = input.byte() & 1 == 1;
                    let mut burst = Vec::new();
                    for i in 0..count {
                        let (b0, len) = if ping { (0x89, 125) } else { (0x82, 1000) };
                        burst.extend(masked_frame(b0, len, [i as u8, 0, 0, 1], &vec![b'z'; len as usize]));
                    }
                    p.send_raw(c, &burst);
                }
                (_, Some(_)) => {}
            }
            p.pump();
            check(&p, budget);
        }
        if std::env::var_os("CORE_FUZZ_STATS").is_some() {
            let s = p.stats();
            eprintln!("STATS mem={} conns={} {:?}", p.memory_in_use(), p.len(), s.fields().filter(|f| f.1 > 0).collect::<Vec<_>>());
        }
        // Everyone hangs up; the clock passes every deadline (idle, ping, handshake, close).
        for c in 0..p.clients() {
            p.hang_up(c);
        }
        p.pump();
        check(&p, budget);
        for _ in 0..8 {
            p.advance(Duration::from_secs(2));
            check(&p, budget);
        }
        assert_eq!(p.len(), 0, "connections left after every peer hung up and every timeout");
        assert_eq!(p.memory_in_use(), 0, "memory still counted with no connection");
    }
);
