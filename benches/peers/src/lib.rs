//! What the three peer servers share: the command line, the tokio runtime, the accept loop
//! (bind, `TCP_NODELAY`, one task per connection) and the `/chat` rooms (a broadcast channel
//! per `?room=` name). Everything WebSocket lives in the binaries, each written the way its
//! library's own examples write it; nothing here touches a frame.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::process::exit;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;

/// Capacity of each `/chat` room's broadcast channel. A receiver more than this many messages
/// behind skips the ones it missed (`RecvError::Lagged`) and carries on.
pub const CHAT_CAPACITY: usize = 1024;

/// The path that joins a broadcast room; every other path echoes.
pub const CHAT_PATH: &str = "/chat";

/// The room a `/chat` connection joins when its query names none.
pub const DEFAULT_ROOM: &str = "chat";

/// The room named by `room=NAME` in a request's query string (the first one; the name is
/// taken as it is, not percent-decoded), or [`DEFAULT_ROOM`] when there is none or it is empty.
pub fn room_name(query: Option<&str>) -> String {
    query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|kv| kv.strip_prefix("room="))
        .filter(|name| !name.is_empty())
        .unwrap_or(DEFAULT_ROOM)
        .to_string()
}

/// The `/chat` rooms by name, each a `tokio::sync::broadcast` channel of [`CHAT_CAPACITY`],
/// made on the first join and dropped when its last member leaves. The map is locked only to
/// join and to leave; a message goes through the room's own channel.
#[derive(Debug)]
pub struct Rooms<T> {
    map: Arc<Mutex<HashMap<String, broadcast::Sender<T>>>>,
}

impl<T> Clone for Rooms<T> {
    fn clone(&self) -> Self {
        Rooms { map: Arc::clone(&self.map) }
    }
}

impl<T: Clone> Default for Rooms<T> {
    fn default() -> Self {
        Rooms { map: Arc::default() }
    }
}

impl<T: Clone> Rooms<T> {
    /// Joins room `name`: a sender to publish to everyone in it (the caller included) and a
    /// receiver of what anyone publishes from now on.
    pub fn join(&self, name: String) -> Member<T> {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        let tx = map.entry(name.clone()).or_insert_with(|| broadcast::channel(CHAT_CAPACITY).0);
        let (tx, rx) = (tx.clone(), tx.subscribe());
        Member { tx, rx, name, rooms: self.clone() }
    }

    /// Rooms that have members now.
    pub fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// Whether no room has a member.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One connection's place in a room; leaving (drop) removes the room once nobody is in it.
#[derive(Debug)]
pub struct Member<T: Clone> {
    /// Publishes to the room (every member, this one included, receives it).
    pub tx: broadcast::Sender<T>,
    /// What the room's members publish.
    pub rx: broadcast::Receiver<T>,
    name: String,
    rooms: Rooms<T>,
}

impl<T: Clone> Drop for Member<T> {
    fn drop(&mut self) {
        let mut map = self.rooms.map.lock().unwrap_or_else(PoisonError::into_inner);
        // Our receiver goes first (swapped for one of a channel of its own), under the lock
        // that joins subscribe under: no receiver left means nobody is in the room.
        drop(std::mem::replace(&mut self.rx, broadcast::channel(1).1));
        if self.tx.receiver_count() == 0 {
            map.remove(&self.name);
        }
    }
}

/// Which tokio scheduler runs the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    /// `new_current_thread`: accept loop and every connection on the calling thread.
    Current,
    /// `new_multi_thread` with `threads` workers.
    Multi,
}

impl Runtime {
    fn name(self) -> &'static str {
        match self {
            Runtime::Current => "current",
            Runtime::Multi => "multi",
        }
    }
}

/// The parsed command line.
#[derive(Debug, Clone)]
pub struct Args {
    /// `--addr HOST:PORT`
    pub addr: SocketAddr,
    /// `--runtime current|multi`
    pub runtime: Runtime,
    /// `--threads N` (multi only); defaults to `available_parallelism`, which honours the CPU
    /// affinity mask (`taskset -c 0` gives 1).
    pub threads: usize,
    /// `--read-buffer BYTES`, accepted only by `peer-tungstenite` (its `read_buffer_size`).
    pub read_buffer: Option<usize>,
}

/// The library whose `--read-buffer` flag exists.
const TUNGSTENITE: &str = "tokio-tungstenite";

fn usage(bin: &str, lib: &str, default_rt: Runtime) -> String {
    format!(
        "{bin}: WebSocket echo server on {lib} (any path echoes; {CHAT_PATH}?room=NAME joins broadcast
room NAME, default {DEFAULT_ROOM}: every text message goes to the whole room, sender included)

usage: {bin} [--addr HOST:PORT] [--runtime current|multi] [--threads N]{}
  --addr HOST:PORT     listen address (default 127.0.0.1:9400)
  --runtime R          tokio scheduler: current or multi (default {})
  --threads N          worker threads for --runtime multi (default: available parallelism)
{}",
        if lib == TUNGSTENITE { " [--read-buffer BYTES]" } else { "" },
        default_rt.name(),
        if lib == TUNGSTENITE {
            "  --read-buffer BYTES  tungstenite's read_buffer_size (default 8192; the library's is
                       131072, which memsets that much before every read)
"
        } else {
            ""
        }
    )
}

/// Parses `std::env::args`; prints usage and exits on `--help` or on a bad flag.
pub fn parse_args(lib: &str, default_rt: Runtime) -> Args {
    let mut argv = std::env::args();
    let bin = argv.next().unwrap_or_else(|| "peer".into());
    let fail = |msg: String| -> ! {
        eprint!("{bin}: {msg}\n\n{}", usage(&bin, lib, default_rt));
        exit(2)
    };
    let mut args = Args {
        addr: SocketAddr::from(([127, 0, 0, 1], 9400)),
        runtime: default_rt,
        threads: 0,
        read_buffer: None,
    };
    while let Some(flag) = argv.next() {
        if flag == "-h" || flag == "--help" {
            print!("{}", usage(&bin, lib, default_rt));
            exit(0);
        }
        let Some(value) = argv.next() else {
            fail(format!("{flag}: missing value or unknown flag"))
        };
        match flag.as_str() {
            "--addr" => {
                args.addr = value.parse().unwrap_or_else(|e| fail(format!("--addr {value}: {e}")))
            }
            "--runtime" => {
                args.runtime = match value.as_str() {
                    "current" => Runtime::Current,
                    "multi" => Runtime::Multi,
                    _ => fail(format!("--runtime {value}: expected current or multi")),
                }
            }
            "--threads" => {
                args.threads = match value.parse::<usize>() {
                    Ok(n) if n > 0 => n,
                    _ => fail(format!("--threads {value}: expected a positive integer")),
                }
            }
            "--read-buffer" if lib == TUNGSTENITE => {
                args.read_buffer = match value.parse::<usize>() {
                    Ok(n) if n > 0 => Some(n),
                    _ => fail(format!("--read-buffer {value}: expected a positive integer")),
                }
            }
            _ => fail(format!("unknown flag {flag}")),
        }
    }
    if args.threads == 0 {
        args.threads = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
    }
    args
}

/// Parses the command line, builds the runtime, binds, prints the `listening on` line, and
/// spawns `handler(stream, state.clone())` for every accepted connection (with `TCP_NODELAY`
/// set). Never returns unless binding fails.
pub fn serve<S, F, Fut>(
    lib: &str,
    default_rt: Runtime,
    make_state: impl FnOnce(&Args) -> S,
    handler: F,
) where
    S: Clone + Send + 'static,
    F: Fn(TcpStream, S) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let args = parse_args(lib, default_rt);
    let state = make_state(&args);
    let rt = match args.runtime {
        Runtime::Current => tokio::runtime::Builder::new_current_thread().enable_io().build(),
        Runtime::Multi => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_io()
            .build(),
    }
    .unwrap_or_else(|e| {
        eprintln!("runtime: {e}");
        exit(1)
    });
    let result: std::io::Result<()> = rt.block_on(async move {
        let listener = TcpListener::bind(args.addr).await?;
        eprintln!(
            "listening on ws://{} ({lib}, {} runtime)",
            listener.local_addr()?,
            args.runtime.name()
        );
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _peer)) => stream,
                // EMFILE, ECONNABORTED, ...: report and keep accepting. The pause blocks the
                // thread (the runtime has no timer driver) but only on this error path.
                Err(e) => {
                    eprintln!("accept: {e}");
                    std::thread::sleep(std::time::Duration::from_millis(10));
                    continue;
                }
            };
            if let Err(e) = stream.set_nodelay(true) {
                eprintln!("TCP_NODELAY: {e}");
            }
            tokio::spawn(handler(stream, state.clone()));
        }
    });
    if let Err(e) = result {
        eprintln!("{}: {e}", args.addr);
        exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_names() {
        assert_eq!(room_name(None), "chat");
        assert_eq!(room_name(Some("")), "chat");
        assert_eq!(room_name(Some("room=t3")), "t3");
        assert_eq!(room_name(Some("x=1&room=t15&room=t2")), "t15");
        assert_eq!(room_name(Some("room=")), "chat");
        assert_eq!(room_name(Some("broom=a")), "chat");
    }

    #[test]
    fn rooms_are_separate_and_go_when_empty() {
        let rooms = Rooms::<u32>::default();
        let mut a = rooms.join("t0".into());
        let mut b = rooms.join("t0".into());
        let mut c = rooms.join("t1".into());
        assert_eq!(rooms.len(), 2);
        a.tx.send(7).unwrap();
        assert_eq!((a.rx.try_recv(), b.rx.try_recv()), (Ok(7), Ok(7)), "sender included");
        assert!(c.rx.try_recv().is_err(), "another room hears nothing");
        drop(c);
        assert_eq!(rooms.len(), 1);
        drop(a);
        assert_eq!(rooms.len(), 1, "b is still in t0");
        drop(b);
        assert!(rooms.is_empty());
    }
}
