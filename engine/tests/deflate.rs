//! permessage-deflate over real sockets, on whichever backend `SOCKEYE_BACKEND` picks: the
//! 101 answers an offer, compressed echoes both ways (the client side is `proto::Connection`
//! in the client role with the negotiated parameters), a handler that refuses compression
//! gets an uncompressed connection, and a published message reaches compressed and plain
//! subscribers alike.

mod common;

use std::io::Read;

use common::{backend_name, start, RawClient, ACCEPT, REQUEST};
use sockeye::proto::conn::Event;
use sockeye::proto::{Connection, Env, OpCode, PerMessageDeflate, Role};
use sockeye::{Conn, DeflateConfig, Handler, Message, Request, Upgrade};

/// Echoes on any path; `/plain` is accepted without compression; on `/sub` the connection
/// subscribes to `t` and every text it sends is published to `t`, itself included.
struct Echo;

impl Handler for Echo {
    type Data = bool;
    fn on_upgrade(&mut self, req: &Request<'_>, _peer: std::net::SocketAddr) -> Upgrade<bool> {
        let sub = req.path() == "/sub";
        let up = Upgrade::accept(sub);
        if req.path() == "/plain" {
            up.without_compression()
        } else {
            up
        }
    }
    fn on_open(&mut self, conn: &mut Conn<'_, bool>) {
        if *conn.data() {
            conn.subscribe("t").expect("subscribe");
            conn.send_text("subscribed");
        }
    }
    fn on_message(&mut self, conn: &mut Conn<'_, bool>, msg: Message<'_>) {
        if *conn.data() {
            conn.publish_including_self("t", msg).expect("publish");
        } else {
            conn.send(msg);
        }
    }
}

const OFFER: &str = "permessage-deflate; client_max_window_bits";

/// Opens a connection to `path` offering permessage-deflate; returns the client, the
/// response head, and a client-role protocol state with whatever was negotiated.
fn open(addr: std::net::SocketAddr, path: &str) -> (RawClient, String, Connection) {
    let mut c = RawClient::connect(addr);
    let req = REQUEST
        .replace("GET /echo", &format!("GET {path}"))
        .replace("\r\n\r\n", &format!("\r\nSec-WebSocket-Extensions: {OFFER}\r\n\r\n"));
    c.send_raw(req.as_bytes());
    let (status, head) = c.read_http_head();
    assert_eq!(status, 101, "[{}] {head}", backend_name());
    assert!(head.contains(ACCEPT), "[{}] {head}", backend_name());
    let ext = head.lines().find_map(|l| {
        l.to_ascii_lowercase()
            .strip_prefix("sec-websocket-extensions:")
            .map(|v| v.trim().to_owned())
    });
    let mut proto = Connection::new_open(Role::Client, 7);
    if let Some(v) = &ext {
        proto.set_deflate(Some(parse_answer(v)));
    }
    (c, head, proto)
}

/// The server's answer as parameters (the client side of RFC 7692's negotiation).
fn parse_answer(v: &str) -> PerMessageDeflate {
    let mut p = PerMessageDeflate {
        server_no_context_takeover: false,
        client_no_context_takeover: false,
        server_max_window_bits: 15,
        client_max_window_bits: 15,
    };
    let mut parts = v.split(';').map(str::trim);
    assert_eq!(parts.next(), Some("permessage-deflate"), "answer {v:?}");
    for param in parts {
        let (k, val) = param.split_once('=').map_or((param, None), |(k, v)| (k, Some(v)));
        let bits = || val.expect("a value").trim_matches('"').parse::<u8>().expect("bits");
        match k {
            "server_no_context_takeover" => p.server_no_context_takeover = true,
            "client_no_context_takeover" => p.client_no_context_takeover = true,
            "server_max_window_bits" => p.server_max_window_bits = bits(),
            "client_max_window_bits" => p.client_max_window_bits = bits(),
            other => panic!("unknown parameter {other:?} in {v:?}"),
        }
    }
    p
}

/// Sends one text message through the client's protocol state (compressed when negotiated
/// and long enough).
fn send_text(c: &mut RawClient, proto: &mut Connection, env: &mut Env, text: &str) {
    let mut out = Vec::new();
    proto.send_message(OpCode::Text, text.as_bytes(), &mut out, env).expect("send");
    c.send_raw(&out);
}

/// Reads until one whole text message arrives; returns it and whether its first frame had
/// RSV1 (compressed).
fn read_text(
    c: &mut RawClient,
    proto: &mut Connection,
    env: &mut Env,
    buf: &mut Vec<u8>,
) -> (String, bool) {
    loop {
        let rsv1 = buf.first().is_some_and(|b| b & 0x40 != 0);
        let mut pos = 0;
        let mut out = Vec::new();
        while pos < buf.len() {
            let r = proto.read(&mut buf[pos..], &mut out, env).expect("a valid server frame");
            pos += r.consumed;
            match r.event {
                Some(Event::Text(t)) => {
                    let t = t.into_owned();
                    buf.drain(..pos);
                    return (t, rsv1);
                }
                Some(_) => {}
                None => break,
            }
        }
        buf.drain(..pos);
        let mut chunk = [0u8; 65536];
        let n = c.stream.read(&mut chunk).expect("read");
        assert!(n > 0, "[{}] the server closed", backend_name());
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn json_like(n: usize) -> String {
    let mut s = String::new();
    let mut i = 0;
    while s.len() < n {
        s.push_str(&format!("{{\"id\":{i},\"user\":\"u{}\",\"text\":\"hello there\"}},", i % 17));
        i += 1;
    }
    s.truncate(n);
    s
}

fn server() -> common::TestServer {
    start(|b| b.deflate(DeflateConfig { enabled: true, ..DeflateConfig::default() }), || Echo)
}

#[test]
fn negotiated_compression_round_trips_and_small_messages_stay_plain() {
    let srv = server();
    let (mut c, head, mut proto) = open(srv.addr, "/echo");
    assert!(
        head.to_ascii_lowercase().contains("sec-websocket-extensions: permessage-deflate"),
        "[{}] no permessage-deflate in\n{head}",
        backend_name()
    );
    let mut env = Env::default();
    let mut buf = Vec::new();
    for n in [10, 600, 5000, 200_000] {
        let text = json_like(n);
        send_text(&mut c, &mut proto, &mut env, &text);
        let (echo, rsv1) = read_text(&mut c, &mut proto, &mut env, &mut buf);
        assert!(echo == text, "[{}] echo of {n} bytes differs", backend_name());
        // The server compresses messages of at least `min_size` (512) bytes.
        assert_eq!(rsv1, n >= 512, "[{}] {n} bytes: RSV1 {rsv1}", backend_name());
    }
}

#[test]
fn a_handler_may_refuse_compression() {
    let srv = server();
    let (mut c, head, mut proto) = open(srv.addr, "/plain");
    assert!(
        !head.to_ascii_lowercase().contains("sec-websocket-extensions"),
        "[{}] refused, yet answered:\n{head}",
        backend_name()
    );
    let mut env = Env::default();
    let mut buf = Vec::new();
    let text = json_like(4000);
    send_text(&mut c, &mut proto, &mut env, &text);
    let (echo, rsv1) = read_text(&mut c, &mut proto, &mut env, &mut buf);
    assert!(echo == text && !rsv1, "[{}] uncompressed echo expected", backend_name());
}

#[test]
fn a_publish_reaches_compressed_and_plain_subscribers() {
    let srv = server();
    let mut env = Env::default();
    // One subscriber that negotiated compression, one that did not offer it.
    let (mut a, _, mut pa) = open(srv.addr, "/sub");
    let mut b = RawClient::connect(srv.addr);
    b.send_raw(REQUEST.replace("GET /echo", "GET /sub").as_bytes());
    assert_eq!(b.read_http_head().0, 101);
    let mut pb = Connection::new_open(Role::Client, 9);
    let (mut ba, mut bb) = (Vec::new(), Vec::new());
    assert_eq!(read_text(&mut a, &mut pa, &mut env, &mut ba).0, "subscribed");
    assert_eq!(read_text(&mut b, &mut pb, &mut env, &mut bb).0, "subscribed");
    let text = json_like(3000);
    send_text(&mut a, &mut pa, &mut env, &text);
    let (got_a, rsv_a) = read_text(&mut a, &mut pa, &mut env, &mut ba);
    let (got_b, rsv_b) = read_text(&mut b, &mut pb, &mut env, &mut bb);
    assert!(got_a == text && got_b == text, "[{}] a publish differs", backend_name());
    assert!(rsv_a && !rsv_b, "[{}] RSV1: compressed {rsv_a}, plain {rsv_b}", backend_name());
}
