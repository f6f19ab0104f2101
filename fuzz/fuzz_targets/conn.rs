//! Fuzz target: the whole connection state machine, handshake then frames, fed in chunks whose
//! sizes the input chooses. No panic; consumption never exceeds the input; buffers stay within
//! the limits; whatever the machine writes out is bounded by what came in.
#![no_main]

use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use sockeye::proto::conn::{Decision, Env, HandshakeStatus, Limits, State};
use sockeye::proto::Connection;

const REQUEST: &[u8] = b"GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let limits = Limits {
        max_frame_size: 4096,
        max_message_size: 8192,
        max_fragments: 16,
        max_handshake_bytes: 1024,
        ..Limits::default()
    };
    let mut env = Env::new(limits);
    let mut conn = Connection::new_server(Instant::now(), &limits);
    let mut out = Vec::new();
    // Mode bit 0: start with a valid request so the frame layer gets most of the input.
    let mut input = Vec::with_capacity(rest.len() + REQUEST.len());
    if mode & 1 == 1 {
        input.extend_from_slice(REQUEST);
    }
    input.extend_from_slice(rest);
    let chunk = 1 + (mode as usize >> 1) % 64;
    let mut fed = 0usize;
    for piece in input.chunks_mut(chunk) {
        fed += piece.len();
        let mut pos = 0;
        if conn.state() == State::Handshake {
            match conn.handshake(piece, &mut out, &env, |_, upgrade| {
                if upgrade { Decision::accept() } else { Decision::Reject { status: 404 } }
            }) {
                Ok(HandshakeStatus::Accepted { consumed }) => {
                    assert!(consumed <= piece.len());
                    pos = consumed;
                }
                Ok(_) | Err(_) => {}
            }
            // The request head: at most the limit plus the byte that proves it too long, in
            // a Vec whose amortized growth may double its capacity; plus the cold state it
            // lives in, which `buffered` counts too (under 128 bytes: `cold_state_is_small`).
            assert!(conn.buffered() <= 2 * (limits.max_handshake_bytes + 1) + 128);
        }
        while pos < piece.len() && matches!(conn.state(), State::Open | State::Closing) {
            let len = piece.len();
            match conn.read(&mut piece[pos..], &mut out, &mut env) {
                Ok(r) => {
                    assert!(r.consumed <= len - pos);
                    let had_event = r.event.is_some();
                    pos += r.consumed;
                    if !had_event {
                        assert_eq!(pos, len);
                        break;
                    }
                }
                Err(_) => {
                    assert_eq!(conn.state(), State::Closed);
                    break;
                }
            }
        }
        assert!(conn.buffered() <= 64 << 10, "buffers grew to {}", conn.buffered());
        // Output: the handshake response plus at most a pong per 2 input bytes and one close.
        assert!(out.len() <= 4096 + 2 * fed, "wrote {} bytes for {fed} in", out.len());
        if conn.state() == State::Closed {
            break;
        }
    }
    conn.release(&mut env);
});
