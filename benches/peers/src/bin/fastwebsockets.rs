//! `peer-fastwebsockets`: echo / broadcast server on fastwebsockets, set up as its
//! `examples/echo_server.rs` is: hyper 1's HTTP/1 server with upgrades does the handshake
//! (`fastwebsockets::upgrade::upgrade`), the connection task is `unconstrained`, and a
//! `FragmentCollector` reassembles fragmented messages. auto_close and auto_pong are on, vectored
//! writes (header + payload in one `writev`, no copy) above 1 KiB, a copy into the library's write
//! buffer and a plain `write` below it (the library's defaults, set explicitly).
//!
//! `/chat` needs a read and a broadcast receive at once; `read_frame` is not cancel-safe, so the
//! socket is split (`unstable-split`, as in `examples/echo_server_split.rs`): a reader task
//! publishes text and hands the frames the library obliges us to send (pong, close reply) to the
//! writer task, which also forwards the room's messages.

use fastwebsockets::{
    upgrade, FragmentCollector, FragmentCollectorRead, Frame, OpCode, Payload, WebSocket,
    WebSocketError,
};
use http_body_util::Empty;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use sockeye_peers::{room_name, serve, Member, Rooms, Runtime, CHAT_PATH};
use tokio::net::TcpStream;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;

/// Payloads above this many bytes go out with `writev` (header and payload as two iovecs).
const WRITEV_THRESHOLD: usize = 1024;

fn main() {
    serve("fastwebsockets", Runtime::Current, |_| Rooms::<Bytes>::default(), handle);
}

async fn handle(stream: TcpStream, rooms: Rooms<Bytes>) {
    let io = TokioIo::new(stream);
    let service = service_fn(move |req| upgrade_request(req, rooms.clone()));
    // Errors here are the peer's (bad request, reset): nothing to do but drop the connection.
    let _ = http1::Builder::new().serve_connection(io, service).with_upgrades().await;
}

async fn upgrade_request(
    mut req: Request<Incoming>,
    rooms: Rooms<Bytes>,
) -> Result<Response<Empty<Bytes>>, WebSocketError> {
    let chat = (req.uri().path() == CHAT_PATH).then(|| room_name(req.uri().query()));
    let (response, fut) = upgrade::upgrade(&mut req)?;
    tokio::spawn(async move {
        let Ok(mut ws) = fut.await else { return };
        ws.set_auto_close(true);
        ws.set_auto_pong(true);
        ws.set_writev(true);
        ws.set_writev_threshold(WRITEV_THRESHOLD);
        if let Some(name) = chat {
            chat_loop(ws, rooms.join(name)).await;
        } else {
            let _ = tokio::task::unconstrained(echo_loop(ws)).await;
        }
    });
    Ok(response)
}

async fn echo_loop<S>(ws: WebSocket<S>) -> Result<(), WebSocketError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut ws = FragmentCollector::new(ws);
    loop {
        let frame = ws.read_frame().await?;
        match frame.opcode {
            // The close reply has already been sent by read_frame (auto_close).
            OpCode::Close => return Ok(()),
            OpCode::Text | OpCode::Binary => ws.write_frame(frame).await?,
            _ => {}
        }
    }
}

async fn chat_loop<S>(ws: WebSocket<S>, mut room: Member<Bytes>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (rd, mut wr) = ws.split(tokio::io::split);
    let mut rd = FragmentCollectorRead::new(rd);
    // Frames the reader must send (pongs, the close reply); rare, so a channel is cheap enough.
    let (obliged_tx, mut obliged_rx) = mpsc::unbounded_channel::<Frame<'static>>();

    let reader_room = room.tx.clone();
    let reader = tokio::spawn(async move {
        let mut send_fn = |frame: Frame<'static>| {
            let sent = obliged_tx.send(frame).map_err(|_| WebSocketError::ConnectionClosed);
            std::future::ready(sent)
        };
        loop {
            let Ok(frame) = rd.read_frame(&mut send_fn).await else { return };
            match frame.opcode {
                OpCode::Close => return,
                OpCode::Text => {
                    let line = match frame.payload {
                        Payload::Bytes(b) => b.freeze(),
                        other => Bytes::copy_from_slice(&other),
                    };
                    let _ = reader_room.send(line);
                }
                _ => {}
            }
        }
    });

    loop {
        tokio::select! {
            // `None` once the reader has finished (and every obliged frame has been taken).
            frame = obliged_rx.recv() => {
                let Some(frame) = frame else { break };
                let close = frame.opcode == OpCode::Close;
                if wr.write_frame(frame).await.is_err() || close {
                    break;
                }
            }
            line = room.rx.recv() => match line {
                Ok(line) => {
                    let frame = Frame::text(Payload::Borrowed(&line));
                    if wr.write_frame(frame).await.is_err() {
                        break;
                    }
                }
                Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => break,
            },
        }
    }
    reader.abort();
}
