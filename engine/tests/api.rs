//! The application-facing API in use, against real sockets: what a handler can reach through
//! `Ctx` (connections of other workers included), and what `HttpResponse` puts on the wire.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;

use common::{backend_name, start, ws_connect, ws_read_data, Ws, IO_TIMEOUT};
use sockeye::{Conn, ConnId, Handler, HttpResponse, Message, Request};
use tungstenite::Message as WsMessage;

/// `id` answers the connection's id; `to ID TEXT` sends TEXT to connection ID through
/// `Ctx::send_text` and answers the `SendStatus` it returned.
struct Relay;

impl Handler for Relay {
    type Data = ();

    fn on_http(&mut self, req: &Request<'_>) -> Option<HttpResponse> {
        (req.path() == "/headers").then(|| {
            HttpResponse::new(200, "text/plain", "hi")
                .with_header("Cache-Control", "no-store")
                .with_header("X-Served-By", "sockeye")
                // The engine owns these: a handler cannot get them on the wire.
                .with_header("Content-Length", "999")
                .with_header("Connection", "keep-alive")
                .with_header("X-Bad", "a\r\nInjected: yes")
        })
    }

    fn on_message(&mut self, conn: &mut Conn<'_, ()>, msg: Message<'_>) {
        let Message::Text(t) = msg else { return };
        if t == "id" {
            let id = conn.id().to_u64().to_string();
            conn.send_text(&id);
        } else if let Some(rest) = t.strip_prefix("to ") {
            let (id, text) = rest.split_once(' ').unwrap_or((rest, ""));
            let id = ConnId::from_u64(id.parse().unwrap_or(0));
            let status = conn.ctx().send_text(id, text);
            conn.send_text(&format!("{status:?}"));
        }
    }
}

fn ask(ws: &mut Ws, what: &str) -> String {
    ws.send(WsMessage::text(what)).expect("send");
    match ws_read_data(ws) {
        WsMessage::Text(t) => t.to_string(),
        other => panic!("[{}] expected text, got {other:?}", backend_name()),
    }
}

/// A `Ctx` send to a connection another worker holds is routed there (`Forwarded`) and
/// arrives; one to a connection of this worker is queued at once (`Sent`); one to an id that
/// names nothing is `Closed` on this worker and `Forwarded` (its fate unknown here) on another.
#[test]
fn ctx_sends_reach_connections_on_other_workers() {
    let srv = start(|b| b, || Relay);
    // Two workers: open connections until two land on different ones.
    let mut clients: Vec<(Ws, ConnId)> = Vec::new();
    let (a, b) = loop {
        assert!(clients.len() < 64, "[{}] 64 connections all on one worker", backend_name());
        let mut ws = ws_connect(srv.addr);
        let id = ConnId::from_u64(ask(&mut ws, "id").parse().expect("an id"));
        clients.push((ws, id));
        let last = clients.len() - 1;
        if let Some(first) = clients.iter().position(|(_, i)| i.worker() != id.worker()) {
            break (first, last);
        }
    };
    let (id_a, id_b) = (clients[a].1, clients[b].1);
    assert_ne!(id_a.worker(), id_b.worker());

    let status = ask(&mut clients[a].0, &format!("to {} across", id_b.to_u64()));
    assert_eq!(status, "Forwarded", "[{}] a send to another worker", backend_name());
    assert_eq!(ws_read_data(&mut clients[b].0), WsMessage::text("across"));

    // To itself, through the Ctx: this worker's connection, queued at once (so the message
    // comes before the status, sent after it).
    let first = ask(&mut clients[a].0, &format!("to {} self", id_a.to_u64()));
    assert_eq!(first, "self");
    assert_eq!(ws_read_data(&mut clients[a].0), WsMessage::text("Sent"), "[{}]", backend_name());
    // And back the other way.
    let status = ask(&mut clients[b].0, &format!("to {} back", id_a.to_u64()));
    assert_eq!(status, "Forwarded");
    assert_eq!(ws_read_data(&mut clients[a].0), WsMessage::text("back"));

    // Ids that name nothing: 0 never names a connection.
    let status = ask(&mut clients[a].0, "to 0 nobody");
    let expect = if id_a.worker() == 0 { "Closed" } else { "Forwarded" };
    assert_eq!(status, expect, "[{}] id 0 from worker {}", backend_name(), id_a.worker());
    // A worker this server does not have.
    let status = ask(&mut clients[a].0, &format!("to {} nobody", 4000u64 << 52 | 1));
    assert_eq!(status, "Closed");
}

/// Headers set on an `HttpResponse` reach the wire, after the engine's own; the ones the
/// engine owns (Content-Length, Connection, ...) and values with CR or LF are left out.
#[test]
fn http_responses_carry_the_handlers_headers() {
    let srv = start(|b| b, || Relay);
    let mut s = TcpStream::connect(srv.addr).expect("connect");
    s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    s.write_all(b"GET /headers HTTP/1.1\r\nHost: x\r\n\r\n").expect("request");
    let mut resp = String::new();
    s.read_to_string(&mut resp).expect("the response, then EOF");
    let (head, body) = resp.split_once("\r\n\r\n").expect("a head");
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    let lines: Vec<&str> = head.lines().collect();
    assert!(lines.contains(&"Cache-Control: no-store"), "{head}");
    assert!(lines.contains(&"X-Served-By: sockeye"), "{head}");
    assert!(lines.contains(&"Content-Length: 2"), "{head}");
    assert!(lines.contains(&"Connection: close"), "{head}");
    assert!(!head.contains("999") && !head.contains("keep-alive"), "{head}");
    assert!(!head.contains("Injected") && !head.contains("X-Bad"), "{head}");
    assert_eq!(body, "hi");
}

/// Answers every message with `Conn::peer_addr` and what `on_upgrade` was told.
struct PeerEcho;

impl Handler for PeerEcho {
    type Data = Option<std::net::SocketAddr>;

    fn on_upgrade(
        &mut self,
        _req: &Request<'_>,
        peer: std::net::SocketAddr,
    ) -> sockeye::Upgrade<Self::Data> {
        sockeye::Upgrade::accept(Some(peer))
    }

    fn on_message(&mut self, conn: &mut Conn<'_, Self::Data>, _msg: Message<'_>) {
        let text = format!("{} {:?}", conn.peer_addr(), conn.data());
        conn.send_text(&text);
    }
}

/// The peer's address reads back whole over IPv4 and IPv6 (the worker keeps an IPv6 one
/// beside the connection's slot), at the upgrade and on an open connection, and a later
/// connection on the same slot gets its own.
#[test]
fn peer_addresses_read_back_over_ipv4_and_ipv6() {
    for listen in ["127.0.0.1:0", "[::1]:0"] {
        let srv = start(|b| b.listen(listen).workers(1), || PeerEcho);
        for _ in 0..2 {
            let mut ws = ws_connect(srv.addr);
            let me = ws.get_ref().local_addr().expect("local address");
            assert_eq!(me.is_ipv6(), listen.starts_with('['));
            assert_eq!(ask(&mut ws, "peer?"), format!("{me} Some({me})"), "[{}]", backend_name());
            ws.close(None).expect("close");
            while ws.read().is_ok() {}
            srv.wait_idle(IO_TIMEOUT);
        }
    }
}
