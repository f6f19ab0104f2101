//! Pub/sub across Sockeye processes (feature `cluster`): a real `redis-server` on a loopback
//! port the test picks, and two or three demo processes (`examples/demo.rs --cluster`, built
//! by this test with the feature on) whose `/chat` rooms are topics. Clients (tungstenite) on
//! different processes all receive every line, in each publisher's order; killing
//! redis-server mid-run leaves local delivery going, the bridges reconnect and re-subscribe,
//! and what could not be sent is counted; a room everyone left is unsubscribed at the broker.
//!
//! Skipped, with a message saying so, only where `redis-server` is not installed
//! (tests/run-all.sh installs it). The backend is the one `SOCKEYE_BACKEND` names, inherited
//! by each demo.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tungstenite::{Message as WsMessage, WebSocket};

type Ws = WebSocket<TcpStream>;

const IO_TIMEOUT: Duration = Duration::from_secs(20);

fn redis_server() -> Option<PathBuf> {
    let out = Command::new("sh").args(["-c", "command -v redis-server"]).output().ok()?;
    let p = String::from_utf8(out.stdout).ok()?;
    let p = p.trim();
    (!p.is_empty()).then(|| PathBuf::from(p))
}

macro_rules! need_redis {
    () => {
        match redis_server() {
            Some(p) => p,
            None => {
                eprintln!(
                    "SKIPPED: redis-server is not installed (apt-get install redis-server; \
                     tests/run-all.sh does)"
                );
                return;
            }
        }
    };
}

/// The demo, built with the `cluster` feature into this test's target directory and profile.
fn demo_path() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let exe = std::env::current_exe().expect("the test's own path");
        let profile_dir = exe.parent().and_then(Path::parent).expect("target/<profile>");
        let profile = profile_dir.file_name().and_then(|n| n.to_str()).expect("profile name");
        let target_dir = profile_dir.parent().expect("the target directory");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| env!("CARGO").to_string());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--quiet", "--example", "demo", "--features", "cluster"])
            .arg("--manifest-path")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
            .arg("--target-dir")
            .arg(target_dir);
        match profile {
            "debug" => {}
            "release" => {
                cmd.arg("--release");
            }
            other => {
                cmd.args(["--profile", other]);
            }
        }
        let status = cmd.status().expect("run cargo build --example demo");
        assert!(status.success(), "cargo build --example demo --features cluster: {status}");
        profile_dir.join("examples").join("demo")
    })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// A redis-server of our own: no persistence, loopback only. Killed when dropped.
struct RedisServer {
    child: Option<Child>,
    bin: PathBuf,
    port: u16,
    /// The bridges are told to use plain pub/sub (`SOCKEYE_CLUSTER_SHARDED=0`).
    plain: bool,
}

impl RedisServer {
    fn start(bin: &Path) -> Self {
        Self::start_as(bin, false)
    }

    fn start_as(bin: &Path, plain: bool) -> Self {
        let mut r = RedisServer { child: None, bin: bin.to_owned(), port: free_port(), plain };
        r.restart();
        r
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts it (again, on the same port) and waits until it answers.
    fn restart(&mut self) {
        assert!(self.child.is_none());
        let child = Command::new(&self.bin)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        let t0 = Instant::now();
        while self.query(&["PING"]).is_none() {
            assert!(t0.elapsed() < Duration::from_secs(10), "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// One command, its reply (`None` if the server does not answer).
    fn query(&self, args: &[&str]) -> Option<redis::Value> {
        let client = redis::Client::open(self.url()).ok()?;
        let mut c = client.get_connection_with_timeout(Duration::from_secs(1)).ok()?;
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query(&mut c).ok()
    }

    fn sharded(&self) -> bool {
        !self.plain
            && matches!(self.query(&["COMMAND", "INFO", "SPUBLISH"]),
            Some(redis::Value::Array(v)) if v.first().is_some_and(|e| *e != redis::Value::Nil))
    }

    /// The channels with subscribers (`PUBSUB SHARDCHANNELS` where sharded pub/sub is used,
    /// `PUBSUB CHANNELS` otherwise).
    fn channels(&self) -> Vec<String> {
        let sub = if self.sharded() { "SHARDCHANNELS" } else { "CHANNELS" };
        match self.query(&["PUBSUB", sub, "sockeye:*"]) {
            Some(redis::Value::Array(v)) => {
                let mut names: Vec<String> =
                    v.iter().filter_map(|x| redis::from_redis_value_ref(x).ok()).collect();
                names.sort();
                names
            }
            _ => Vec::new(),
        }
    }

    /// Subscriber connections of `channel` at the broker (one per process holding it).
    fn numsub(&self, channel: &str) -> i64 {
        let sub = if self.sharded() { "SHARDNUMSUB" } else { "NUMSUB" };
        match self.query(&["PUBSUB", sub, channel]) {
            Some(redis::Value::Array(v)) if v.len() == 2 => {
                redis::from_redis_value_ref(&v[1]).unwrap_or(0)
            }
            _ => 0,
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A demo process with `--cluster`; killed when dropped.
struct Demo {
    child: Child,
    addr: SocketAddr,
}

impl Demo {
    fn start(redis: &RedisServer) -> Self {
        let mut child = Command::new(demo_path())
            .args(["--addr", "127.0.0.1:0", "--workers", "2", "--cluster", &redis.url()])
            .env("RUST_LOG", "info")
            .env("SOCKEYE_CLUSTER_SHARDED", if redis.plain { "0" } else { "1" })
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the demo");
        let mut lines = BufReader::new(child.stderr.take().expect("stderr"));
        let mut line = String::new();
        let addr = loop {
            line.clear();
            assert!(lines.read_line(&mut line).expect("demo log") > 0, "the demo exited");
            if let Some(rest) = line.split("listening on ws://").nth(1) {
                break rest.split([' ', '/']).next().expect("addr").parse().expect("addr");
            }
        };
        // Keep draining its log (and show it with the test's output).
        std::thread::spawn(move || {
            for l in lines.lines().map_while(Result::ok) {
                eprintln!("[demo {addr}] {l}");
            }
        });
        Demo { child, addr }
    }

    fn join(&self, room: &str) -> Ws {
        let s = TcpStream::connect(self.addr).expect("connect");
        s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
        s.set_write_timeout(Some(IO_TIMEOUT)).expect("timeout");
        let url = format!("ws://{}/chat?room={room}", self.addr);
        tungstenite::client::client(url, s).expect("handshake").0
    }

    /// `/metrics`, summed over workers: name (without `sockeye_` and `_total`) → value.
    fn metrics(&self) -> HashMap<String, u64> {
        let mut s = TcpStream::connect(self.addr).expect("connect");
        s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").expect("get");
        let mut body = String::new();
        let _ = s.read_to_string(&mut body);
        let mut m = HashMap::new();
        for l in body.lines().filter(|l| l.starts_with("sockeye_")) {
            let (name, value) = l.split_once(' ').expect("sample");
            let name = name.split('{').next().expect("name");
            let name = name.trim_start_matches("sockeye_").trim_end_matches("_total");
            *m.entry(name.to_string()).or_default() += value.parse::<u64>().unwrap_or(0);
        }
        m
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    cond()
}

fn read_text(ws: &mut Ws) -> String {
    loop {
        match ws.read().expect("read") {
            WsMessage::Text(t) => return t.to_string(),
            WsMessage::Close(c) => panic!("expected text, got close {c:?}"),
            _ => {}
        }
    }
}

/// Reads `n` lines of the form `P-I` and checks that each publisher `P`'s `I`s come in order
/// 0, 1, 2...; returns how many lines came from each publisher.
fn read_in_order(ws: &mut Ws, n: usize) -> HashMap<String, usize> {
    let mut next: HashMap<String, usize> = HashMap::new();
    for _ in 0..n {
        let line = read_text(ws);
        let (p, i) = line.rsplit_once('-').expect("P-I");
        let i: usize = i.parse().expect("index");
        let want = next.entry(p.to_string()).or_default();
        assert_eq!(i, *want, "publisher {p}: line {i} where {want} was next");
        *want += 1;
    }
    next
}

#[test]
fn clients_on_three_processes_get_every_line_in_publisher_order() {
    let bin = need_redis!();
    every_line_in_order(&RedisServer::start(&bin));
}

#[test]
fn plain_pub_sub_where_sharded_is_not_used() {
    let bin = need_redis!();
    let redis = RedisServer::start_as(&bin, true);
    every_line_in_order(&redis);
    // Plain channels, not shard channels, carried it.
    assert!(matches!(redis.query(&["PUBSUB", "SHARDCHANNELS"]),
        Some(redis::Value::Array(v)) if v.is_empty()));
}

#[test]
fn sharded_pub_sub_where_the_server_has_it() {
    let bin = need_redis!();
    let redis = RedisServer::start(&bin);
    if !redis.sharded() {
        eprintln!("SKIPPED: this redis-server has no sharded pub/sub (Redis < 7)");
        return;
    }
    let a = Demo::start(&redis);
    let _w = a.join("shard");
    assert!(wait_until(Duration::from_secs(10), || redis.numsub("sockeye:shard") == 1));
    assert!(
        matches!(redis.query(&["PUBSUB", "CHANNELS"]),
        Some(redis::Value::Array(v)) if v.is_empty()),
        "no plain channel: sharded only"
    );
}

fn every_line_in_order(redis: &RedisServer) {
    let demos: Vec<Demo> = (0..3).map(|_| Demo::start(redis)).collect();
    // Two members per process: the first of each publishes.
    let mut members: Vec<(usize, Ws)> =
        (0..6).map(|i| (i % 3, demos[i % 3].join("order"))).collect();
    assert!(
        wait_until(Duration::from_secs(10), || redis.numsub("sockeye:order") == 3),
        "each process subscribes the room at the broker once: {}",
        redis.numsub("sockeye:order")
    );
    const LINES: usize = 200;
    let threads: Vec<_> = members
        .drain(..)
        .enumerate()
        .map(|(k, (server, mut ws))| {
            std::thread::spawn(move || {
                if k < 3 {
                    for i in 0..LINES {
                        ws.send(WsMessage::text(format!("s{server}-{i}"))).expect("send");
                    }
                }
                read_in_order(&mut ws, 3 * LINES)
            })
        })
        .collect();
    for t in threads {
        let got = t.join().expect("a member");
        assert_eq!(got.len(), 3, "lines from every publisher: {got:?}");
        assert!(got.values().all(|&n| n == LINES), "{got:?}");
    }
    // Each process saw the others' lines through the broker, and its own never came back.
    for d in &demos {
        let m = d.metrics();
        assert_eq!(m["cluster_received"], 2 * LINES as u64, "{m:?}");
        assert!(m["cluster_published"] >= LINES as u64, "{m:?}");
        assert_eq!(m["cluster_lost"] + m["cluster_queue_drops"], 0, "{m:?}");
    }
}

#[test]
fn a_room_everyone_left_is_unsubscribed_at_the_broker() {
    let bin = need_redis!();
    left_everywhere(&RedisServer::start(&bin));
}

#[test]
fn a_room_everyone_left_is_unsubscribed_at_the_broker_plain() {
    let bin = need_redis!();
    left_everywhere(&RedisServer::start_as(&bin, true));
}

fn left_everywhere(redis: &RedisServer) {
    let a = Demo::start(redis);
    let b = Demo::start(redis);
    let mut ws = vec![a.join("left"), a.join("left"), b.join("left"), b.join("stays")];
    assert!(wait_until(Duration::from_secs(10), || {
        redis.channels() == ["sockeye:left", "sockeye:stays"] && redis.numsub("sockeye:left") == 2
    }));
    // Quick leave and join again on `a`, then leave: the bridge follows the count, not the
    // order it heard of the changes in.
    for _ in 0..5 {
        let mut extra = a.join("churn");
        extra.close(None).expect("close");
        let _ = extra.read();
    }
    for w in ws.iter_mut().take(3) {
        w.close(None).expect("close");
        while w.read().is_ok() {}
    }
    assert!(
        wait_until(Duration::from_secs(10), || redis.channels() == ["sockeye:stays"]),
        "left everywhere: unsubscribed at the broker; still there: {:?}",
        redis.channels()
    );
    drop(ws);
    assert!(wait_until(Duration::from_secs(10), || redis.channels().is_empty()));
}

#[test]
fn broker_loss_keeps_local_delivery_and_the_bridge_resubscribes() {
    let bin = need_redis!();
    let mut redis = RedisServer::start(&bin);
    let mut a = Demo::start(&redis);
    let mut b = Demo::start(&redis);
    let mut pa = a.join("loss");
    let mut ra = a.join("loss");
    let mut rb = b.join("loss");
    assert!(wait_until(Duration::from_secs(10), || redis.numsub("sockeye:loss") == 2));
    // Up: both processes get the line.
    pa.send(WsMessage::text("up-0")).expect("send");
    for w in [&mut pa, &mut ra, &mut rb] {
        assert_eq!(read_text(w), "up-0");
    }

    redis.kill();
    // Down: local members get every line at once; the other process gets none of them.
    for i in 0..50 {
        pa.send(WsMessage::text(format!("down-{i}"))).expect("send");
        for w in [&mut pa, &mut ra] {
            assert_eq!(read_text(w), format!("down-{i}"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        wait_until(Duration::from_secs(10), || a.metrics()["cluster_lost"] > 0),
        "what could not be sent is counted: {:?}",
        a.metrics()
    );

    redis.restart();
    assert!(
        wait_until(Duration::from_secs(15), || redis.numsub("sockeye:loss") == 2),
        "both bridges re-subscribe the room after the restart"
    );
    // The publish connection may find out about the loss only now: lines until one crosses.
    let mut crossed = false;
    for i in 0..200 {
        pa.send(WsMessage::text(format!("back-{i}"))).expect("send");
        for w in [&mut pa, &mut ra] {
            assert_eq!(read_text(w), format!("back-{i}"));
        }
        rb.get_ref().set_read_timeout(Some(Duration::from_millis(50))).expect("timeout");
        match rb.read() {
            Ok(WsMessage::Text(t)) => {
                assert!(t.starts_with("back-"), "no line sent while down arrives late: {t}");
                crossed = true;
                break;
            }
            Ok(m) => panic!("unexpected {m:?}"),
            Err(_) => {}
        }
    }
    assert!(crossed, "lines cross again after the broker is back");
    assert!(a.alive() && b.alive(), "no crash");
    let (ma, mb) = (a.metrics(), b.metrics());
    assert!(ma["cluster_reconnects"] >= 1 && mb["cluster_reconnects"] >= 1, "{ma:?} {mb:?}");
}
