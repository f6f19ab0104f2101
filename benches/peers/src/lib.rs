//! What the three peer servers share: the command line, the tokio runtime, and the accept loop
//! (bind, `TCP_NODELAY`, one task per connection). Everything WebSocket lives in the binaries,
//! each written the way its library's own examples write it; nothing here touches a frame.

use std::future::Future;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::process::exit;

use tokio::net::{TcpListener, TcpStream};

/// Capacity of the `/chat` broadcast channel. A receiver more than this many messages behind
/// skips the ones it missed (`RecvError::Lagged`) and carries on.
pub const CHAT_CAPACITY: usize = 1024;

/// The path that joins the broadcast room; every other path echoes.
pub const CHAT_PATH: &str = "/chat";

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
        "{bin}: WebSocket echo server on {lib} (any path echoes; {CHAT_PATH} is a broadcast room)

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
