//! Command-line parsing for `loadgen` (hand-rolled: no dependency for a dozen flags).

use std::net::{SocketAddr, ToSocketAddrs};

pub(crate) const HELP: &str = "\
loadgen: end-to-end load generator for Sockeye (and any RFC 6455 echo server)

USAGE: loadgen <echo|raw|idle|fanout> [FLAGS]

Modes:
  echo     WebSocket echo round trips, K in flight per connection, every byte verified
  raw      the same on plain TCP (against rawecho: the ceiling)
  idle     N handshaken idle connections: server RSS per connection
  fanout   broadcast room (e.g. the demo's /chat): P publishers send text messages, N
           subscribers (and the publishers) receive and verify every one of them

Common:
  --url URL            ws://HOST:PORT/PATH (echo, idle, fanout) or tcp://HOST:PORT (raw)
                       (default ws://127.0.0.1:9002/echo; /chat for fanout)
  --connections N      connections (default 100); fanout: subscribers (publishers extra)
  --threads N          loadgen event-loop threads (default 1)
  --duration SECS      measured window (default 5)
  --warmup SECS        traffic before the window, not measured (default 1)
  --json PATH          write machine-readable results to PATH
  --quiet              no progress lines, no table (errors still go to stderr)
  --server-pid PID     sample the server's /proc/PID/stat (CPU) and /proc/PID/status (RSS)
  --server-cpu N       also sample /proc/stat cpuN (the core the server is pinned to)
  --loadgen-cpu N      also sample /proc/stat cpuN for the loadgen's own core
  --connect-concurrency N  connects/handshakes in flight at once (default 256)
  --src-addrs N        rotate source addresses 127.0.0.1..127.0.0.N when the target is
                       loopback (default 250 in idle and fanout modes, otherwise 0 =
                       don't bind)

echo / raw / fanout:
  --size BYTES         payload bytes per message (default 20; fanout: at least 16)
  --inflight K         messages in flight per connection (default 1); fanout: per
                       publisher, closed loop only
  --text               send text frames (ASCII payload) instead of binary (echo only;
                       fanout always sends text)

echo / idle:
  --churn              handshake rate: every connection is reset as soon as its upgrade
                       completes and replaced by a new one (no messages); messages/s are
                       handshakes/s (TCP + TLS for wss:// + HTTP upgrade), latency is
                       connect-to-101. TLS sessions are never resumed: full handshakes
  --deflate            offer permessage-deflate as a browser does
                       (`permessage-deflate; client_max_window_bits`) and fail the
                       handshake if the server declines; echo: text frames of JSON-like
                       text, sent compressed (RSV1, per the negotiated parameters), echoes
                       inflated and verified byte for byte
  --deflate-level N    zlib level of what the loadgen sends (default 1)

wss://:
  --ca FILE            trust this CA certificate (PEM) for wss:// URLs; without it the
                       server's certificate is not verified (benchmarks on loopback only),
                       its handshake signature still is
  --no-verify          check neither the certificate nor the handshake signature (as h2load
                       and wrk do): a full handshake then costs the loadgen two P-256
                       verifications less, so `--churn` measures the server, not the client

fanout:
  --publishers P       publisher connections, besides the N subscribers (default 1)
  --rate R             messages/s per publisher (open loop); 0 = closed loop: each
                       publisher keeps K messages that it has not received back yet
                       outstanding (default 0)
  --topics N           N rooms instead of one (default 0: one room, the URL as given):
                       subscriber i and publisher p join PATH?room=t{i % N} / t{p % N}
                       (&room= when the URL has a query); every receiver checks that each
                       message comes from a publisher of its own room (else a wrong_room
                       error), and order and loss per publisher as usual
  --peer HOST:PORT     cross-process fan-out (Sockeye's cluster bridge): every
                       --peer-every'th subscriber (global index i with i % M == M - 1)
                       connects to this second server, same path; publishers stay on
                       --url's server (default: none)
  --peer-every M       which subscribers go to --peer (default 2: every second one;
                       1: all of them, so every delivery crosses the broker)
  A room must hold only this run's connections: a message from anyone else is an error.

idle:
  --hold SECS          keep the connections open this long after they are all up (default 5)
  --settle SECS        wait this long after the last handshake before sampling RSS (default 2)
  --prime              first send one --size message on every connection and wait for its
                       echo (within the settle), so that the server holds what a used
                       connection keeps (e.g. a compression context), then hold them idle
";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Echo,
    Raw,
    Idle,
    Fanout,
}

impl Mode {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Mode::Echo => "echo",
            Mode::Raw => "raw",
            Mode::Idle => "idle",
            Mode::Fanout => "fanout",
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Args {
    pub(crate) mode: Mode,
    pub(crate) url: String,
    pub(crate) addr: SocketAddr,
    pub(crate) host: String,
    pub(crate) path: String,
    pub(crate) connections: usize,
    pub(crate) threads: usize,
    pub(crate) duration: f64,
    pub(crate) warmup: f64,
    pub(crate) json: Option<String>,
    pub(crate) quiet: bool,
    pub(crate) server_pid: Option<u32>,
    pub(crate) server_cpu: Option<usize>,
    pub(crate) loadgen_cpu: Option<usize>,
    pub(crate) connect_concurrency: usize,
    pub(crate) src_addrs: u8,
    pub(crate) size: usize,
    pub(crate) inflight: usize,
    pub(crate) text: bool,
    pub(crate) hold: f64,
    pub(crate) settle: f64,
    /// Fanout: publisher connections (on top of `connections` subscribers).
    pub(crate) publishers: usize,
    /// Fanout: messages/s per publisher; 0 = closed loop.
    pub(crate) rate: f64,
    /// Fanout: rooms (`?room=t{i % topics}`); 0 = one room, the URL's path as given.
    pub(crate) topics: usize,
    /// Offer permessage-deflate (echo: send compressed JSON-like text, inflate the echoes).
    pub(crate) deflate: bool,
    /// echo --churn: connections are closed as soon as they open and replaced; the rate is
    /// of handshakes (TCP connect + TLS + upgrade), the latency each one's.
    pub(crate) churn: bool,
    /// zlib level of the loadgen's own compression.
    pub(crate) deflate_level: u32,
    /// wss://: the client configuration every connection's TLS session is made from.
    pub(crate) tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    /// Idle: one echo per connection before the hold.
    pub(crate) prime: bool,
    /// Fanout: a second server for some subscribers (cross-process fan-out).
    pub(crate) peer: Option<SocketAddr>,
    /// Fanout: subscriber `i` goes to `peer` when `i % peer_every == peer_every - 1`.
    pub(crate) peer_every: usize,
}

fn fail(msg: &str) -> ! {
    eprintln!("loadgen: {msg}\n\n{HELP}");
    std::process::exit(2)
}

fn num<T: std::str::FromStr>(name: &str, v: &str) -> T {
    v.parse().unwrap_or_else(|_| fail(&format!("{name}: not a number: {v:?}")))
}

impl Args {
    /// Whether subscriber `gid` connects to `--peer`.
    pub(crate) fn on_peer(&self, gid: usize) -> bool {
        self.peer.is_some() && gid % self.peer_every == self.peer_every - 1
    }

    pub(crate) fn parse() -> Args {
        let mut it = std::env::args().skip(1);
        let mut mode = None;
        let mut url = None;
        let mut a = Args {
            mode: Mode::Echo,
            url: String::new(),
            addr: SocketAddr::from(([127, 0, 0, 1], 9002)),
            host: String::new(),
            path: String::new(),
            connections: 100,
            threads: 1,
            duration: 5.0,
            warmup: 1.0,
            json: None,
            quiet: false,
            server_pid: None,
            server_cpu: None,
            loadgen_cpu: None,
            connect_concurrency: 256,
            src_addrs: 0,
            size: 20,
            inflight: 1,
            text: false,
            hold: 5.0,
            settle: 2.0,
            publishers: 1,
            rate: 0.0,
            topics: 0,
            deflate: false,
            churn: false,
            deflate_level: 1,
            tls: None,
            prime: false,
            peer: None,
            peer_every: 2,
        };
        let mut ca: Option<String> = None;
        let mut verify = true;
        let mut src_addrs: Option<u8> = None;
        while let Some(flag) = it.next() {
            let mut val = || it.next().unwrap_or_else(|| fail(&format!("{flag} needs a value")));
            match flag.as_str() {
                "echo" | "raw" | "idle" | "fanout" if mode.is_none() => {
                    mode = Some(match flag.as_str() {
                        "echo" => Mode::Echo,
                        "raw" => Mode::Raw,
                        "idle" => Mode::Idle,
                        _ => Mode::Fanout,
                    })
                }
                "--mode" => {
                    let v = val();
                    mode = Some(match v.as_str() {
                        "echo" => Mode::Echo,
                        "raw" => Mode::Raw,
                        "idle" => Mode::Idle,
                        "fanout" => Mode::Fanout,
                        _ => fail(&format!("unknown mode {v:?}")),
                    })
                }
                "--url" => url = Some(val()),
                "--connections" | "-c" => a.connections = num("--connections", &val()),
                "--threads" | "-t" => a.threads = num("--threads", &val()),
                "--duration" | "-d" => a.duration = num("--duration", &val()),
                "--warmup" => a.warmup = num("--warmup", &val()),
                "--json" => a.json = Some(val()),
                "--quiet" | "-q" => a.quiet = true,
                "--server-pid" => a.server_pid = Some(num("--server-pid", &val())),
                "--server-cpu" => a.server_cpu = Some(num("--server-cpu", &val())),
                "--loadgen-cpu" => a.loadgen_cpu = Some(num("--loadgen-cpu", &val())),
                "--connect-concurrency" => {
                    a.connect_concurrency = num("--connect-concurrency", &val())
                }
                "--src-addrs" => src_addrs = Some(num("--src-addrs", &val())),
                "--size" | "-s" => a.size = num("--size", &val()),
                "--inflight" | "-k" => a.inflight = num("--inflight", &val()),
                "--text" => a.text = true,
                "--hold" => a.hold = num("--hold", &val()),
                "--settle" => a.settle = num("--settle", &val()),
                "--publishers" | "-p" => a.publishers = num("--publishers", &val()),
                "--rate" => a.rate = num("--rate", &val()),
                "--topics" => a.topics = num("--topics", &val()),
                "--deflate" => a.deflate = true,
                "--churn" => a.churn = true,
                "--ca" => ca = Some(val()),
                "--no-verify" => verify = false,
                "--prime" => a.prime = true,
                "--deflate-level" => a.deflate_level = num("--deflate-level", &val()),
                "--peer" => {
                    let v = val();
                    a.peer = Some(
                        v.to_socket_addrs()
                            .ok()
                            .and_then(|mut i| i.find(|x| x.is_ipv4()))
                            .unwrap_or_else(|| fail(&format!("--peer: cannot resolve {v:?}"))),
                    )
                }
                "--peer-every" => a.peer_every = num("--peer-every", &val()),
                "-h" | "--help" => {
                    println!("{HELP}");
                    std::process::exit(0)
                }
                other => fail(&format!("unknown argument {other:?}")),
            }
        }
        a.mode = mode.unwrap_or(Mode::Echo);
        let default_url = match a.mode {
            Mode::Raw => "tcp://127.0.0.1:9002",
            Mode::Fanout => "ws://127.0.0.1:9002/chat",
            _ => "ws://127.0.0.1:9002/echo",
        };
        a.url = url.unwrap_or_else(|| default_url.to_string());
        let rest = a
            .url
            .strip_prefix("ws://")
            .or_else(|| a.url.strip_prefix("tcp://"))
            .unwrap_or(&a.url)
            .to_string();
        let rest = match a.url.strip_prefix("wss://") {
            Some(r) => {
                if !verify && ca.is_some() {
                    fail("--no-verify and --ca: choose one");
                }
                a.tls = Some(super::tls::client_config(ca.as_deref(), verify));
                r.to_string()
            }
            None => rest,
        };
        let (hostport, path) = match rest.find('/') {
            Some(i) => (rest[..i].to_string(), rest[i..].to_string()),
            None => (rest.clone(), "/".to_string()),
        };
        a.addr = hostport
            .to_socket_addrs()
            .ok()
            .and_then(|mut i| i.find(|x| x.is_ipv4()))
            .unwrap_or_else(|| fail(&format!("cannot resolve {hostport:?} (IPv4 HOST:PORT)")));
        a.host = hostport;
        a.path = path;
        if a.connections == 0 || a.threads == 0 || a.inflight == 0 || a.size == 0 {
            fail("--connections, --threads, --inflight and --size must be at least 1");
        }
        if a.peer_every == 0 {
            fail("--peer-every must be at least 1");
        }
        if a.peer.is_some() && a.mode != Mode::Fanout {
            fail("--peer is for fanout mode");
        }
        if a.text && a.mode == Mode::Raw {
            fail("--text makes no sense in raw mode");
        }
        if a.mode == Mode::Fanout {
            // The header is 4 hex digits of publisher id and 12 of sequence number.
            if a.size < 16 {
                fail("fanout: --size must be at least 16 (the publisher id + seq header)");
            }
            if a.publishers == 0 || a.publishers > 0xffff {
                fail("fanout: --publishers must be 1..=65535");
            }
            if !(a.rate >= 0.0 && a.rate.is_finite()) {
                fail("fanout: --rate must be >= 0");
            }
            if a.topics > a.total_connections() {
                fail("fanout: --topics must not exceed the connections");
            }
            a.text = true;
        } else {
            if a.topics > 0 {
                fail("--topics is for the fanout mode");
            }
            a.publishers = 0;
            a.rate = 0.0;
        }
        if a.churn && a.mode != Mode::Echo {
            fail("--churn is for the echo mode");
        }
        if a.deflate {
            if !matches!(a.mode, Mode::Echo | Mode::Idle) {
                fail("--deflate is for the echo and idle modes");
            }
            if a.deflate_level > 9 {
                fail("--deflate-level must be 0..=9");
            }
            // JSON-like text: the prefix is hex.
            a.text = true;
        }
        if a.prime && a.mode != Mode::Idle {
            fail("--prime is for the idle mode");
        }
        a.threads = a.threads.min(a.connections);
        let loopback = matches!(a.addr, SocketAddr::V4(v) if v.ip().is_loopback());
        a.src_addrs = if !loopback {
            0
        } else {
            src_addrs
                .unwrap_or(if matches!(a.mode, Mode::Idle | Mode::Fanout) { 250 } else { 0 })
                .min(254)
        };
        a
    }

    /// Every connection the run opens: the subscribers plus, in fanout mode, the publishers.
    pub(crate) fn total_connections(&self) -> usize {
        self.connections + self.publishers
    }

    /// Fanout: the room of subscriber `i` (its global index) or of publisher `i`: `i % topics`
    /// (so publisher p serves the room of subscribers p, p + N, ...); always 0 with one room.
    pub(crate) fn room(&self, i: usize) -> usize {
        if self.topics == 0 {
            0
        } else {
            i % self.topics
        }
    }

    /// The request path of a connection in `room`: the URL's path, plus `room=t{room}` as a
    /// query parameter when there are topics.
    pub(crate) fn room_path(&self, room: usize) -> String {
        if self.topics == 0 {
            return self.path.clone();
        }
        let sep = if self.path.contains('?') { '&' } else { '?' };
        format!("{}{sep}room=t{room}", self.path)
    }
}
