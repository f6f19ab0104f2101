//! `peer-tokio-websockets`: echo / broadcast server on tokio-websockets, set up as its
//! `examples/echo_server.rs` is: `ServerBuilder::accept` does the handshake on the raw
//! `TcpStream`, the connection task is `unconstrained`, messages are never split into frames
//! (`frame_size(usize::MAX)`). The library answers pings and the closing handshake itself. Unlike
//! the example, the default 64 MiB message limit is kept (the other servers have one too).

use futures_util::{SinkExt, StreamExt};
use sockeye_peers::{room_name, serve, Member, Rooms, Runtime, CHAT_PATH};
use tokio::net::TcpStream;
use tokio::sync::broadcast::error::RecvError;
use tokio_websockets::{Config, Message, ServerBuilder, WebSocketStream};

fn main() {
    serve("tokio-websockets", Runtime::Current, |_| Rooms::<Message>::default(), handle);
}

async fn handle(stream: TcpStream, rooms: Rooms<Message>) {
    let accepted =
        ServerBuilder::new().config(Config::default().frame_size(usize::MAX)).accept(stream).await;
    let Ok((req, ws)) = accepted else { return };
    if req.uri().path() == CHAT_PATH {
        let member = rooms.join(room_name(req.uri().query()));
        chat_loop(ws, member).await;
    } else {
        tokio::task::unconstrained(echo_loop(ws)).await;
    }
}

async fn echo_loop(mut ws: WebSocketStream<TcpStream>) {
    // Ends after the peer's close (the library sends the reply, then yields `None`), on EOF,
    // or on any error.
    while let Some(Ok(msg)) = ws.next().await {
        if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
            return;
        }
    }
}

async fn chat_loop(mut ws: WebSocketStream<TcpStream>, mut room: Member<Message>) {
    loop {
        // Both branches are cancel-safe: the stream keeps partial frames, `recv` loses nothing.
        tokio::select! {
            msg = ws.next() => match msg {
                Some(Ok(msg)) if msg.is_text() => {
                    let _ = room.tx.send(msg);
                }
                Some(Ok(msg)) if msg.is_close() => {
                    // Finish the closing handshake before the room can write again: the next
                    // poll sends the reply and then yields `None`.
                    while let Some(Ok(_)) = ws.next().await {}
                    return;
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return,
            },
            line = room.rx.recv() => match line {
                Ok(msg) => {
                    if ws.send(msg).await.is_err() {
                        return;
                    }
                }
                Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return,
            },
        }
    }
}
