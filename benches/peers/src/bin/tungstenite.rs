//! `peer-tungstenite`: echo / broadcast server on tokio-tungstenite, written the way its
//! README's server example is: `accept_hdr_async` (to read the path), then the `Stream` /
//! `Sink` of `Message`s. tungstenite itself answers pings and the closing handshake.

use futures_util::{SinkExt, StreamExt};
use sockeye_peers::{room_name, serve, Member, Rooms, Runtime, CHAT_PATH};
use tokio::net::TcpStream;
use tokio::sync::broadcast::error::RecvError;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

/// tungstenite's default `read_buffer_size` is 128 KiB, and `FrameCodec::read_in` zero-fills
/// that much before every `read` (snapview/tungstenite-rs#547, open): half the server's time
/// goes to `memset` and a 20-byte echo costs twice the CPU; every idle connection touches the
/// 128 KiB too. 8 KiB measured best or tied among 4/8/16/64/128 KiB at 20 B, 16 KiB and 64 KiB.
/// `--read-buffer 131072` restores the library default.
const READ_BUFFER: usize = 8192;

fn main() {
    serve(
        "tokio-tungstenite",
        Runtime::Current,
        |args| {
            let config = WebSocketConfig::default()
                .read_buffer_size(args.read_buffer.unwrap_or(READ_BUFFER));
            (Rooms::<Utf8Bytes>::default(), config)
        },
        |stream, (rooms, config)| handle(stream, rooms, config),
    );
}

async fn handle(stream: TcpStream, rooms: Rooms<Utf8Bytes>, config: WebSocketConfig) {
    // `Some(room)` for /chat.
    let mut chat = None;
    // The callback's error type is tungstenite's (an HTTP response), not ours.
    #[allow(clippy::result_large_err)]
    let callback = |req: &Request, resp: Response| {
        if req.uri().path() == CHAT_PATH {
            chat = Some(room_name(req.uri().query()));
        }
        Ok(resp)
    };
    let accepted =
        tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(config)).await;
    let Ok(ws) = accepted else {
        return;
    };
    if let Some(name) = chat {
        chat_loop(ws, rooms.join(name)).await;
    } else {
        echo_loop(ws).await;
    }
}

async fn echo_loop(mut ws: WebSocketStream<TcpStream>) {
    // Ends on the peer's close (tungstenite queues the reply and flushes it on the next poll,
    // which then yields `None`), on EOF, or on any error.
    while let Some(Ok(msg)) = ws.next().await {
        if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
            return;
        }
    }
}

async fn chat_loop(mut ws: WebSocketStream<TcpStream>, mut room: Member<Utf8Bytes>) {
    loop {
        // Both branches are cancel-safe: `next` keeps partial frames inside the stream and
        // `recv` loses nothing when dropped.
        tokio::select! {
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(text))) => {
                    let _ = room.tx.send(text);
                }
                Some(Ok(Message::Close(_))) => {
                    // Finish the closing handshake before the room can write again: the next
                    // poll flushes the queued reply and then yields `None`.
                    while let Some(Ok(_)) = ws.next().await {}
                    return;
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return,
            },
            line = room.rx.recv() => match line {
                Ok(text) => {
                    if ws.send(Message::Text(text)).await.is_err() {
                        return;
                    }
                }
                Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return,
            },
        }
    }
}
