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

mod build_examples;

/// The demo, built with the `cluster` feature into this test's target directory and profile.
fn demo_path() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        build_examples::build_examples(&["--example", "demo", "--features", "cluster"]).join("demo")
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
    /// More arguments (a cluster node's).
    extra: Vec<String>,
}

impl RedisServer {
    fn start(bin: &Path) -> Self {
        Self::start_as(bin, false)
    }

    fn start_as(bin: &Path, plain: bool) -> Self {
        let mut r = RedisServer {
            child: None,
            bin: bin.to_owned(),
            port: free_port(),
            plain,
            extra: Vec::new(),
        };
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
            .args(&self.extra)
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
        Self::start_at(&redis.url(), redis.plain)
    }

    fn start_at(url: &str, plain: bool) -> Self {
        let mut child = Command::new(demo_path())
            .args(["--addr", "127.0.0.1:0", "--workers", "2", "--cluster", url])
            .env("RUST_LOG", "info")
            .env("SOCKEYE_CLUSTER_SHARDED", if plain { "0" } else { "1" })
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

// ---------------------------------------------------------------------------------------------
// A Redis Cluster: three masters, no replicas.

/// Three cluster-enabled redis-servers made one cluster (slots 0-5460, 5461-10922,
/// 10923-16383, as `redis-cli --cluster create` splits them), their node files in a
/// directory of their own. Killed (and the directory removed) when dropped.
struct RedisCluster {
    nodes: Vec<RedisServer>,
    dir: PathBuf,
}

fn text_of(v: &redis::Value) -> String {
    redis::from_redis_value_ref(v).unwrap_or_default()
}

impl RedisCluster {
    fn start(bin: &Path) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "sockeye-cluster-test-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).expect("a directory for the node files");
        let nodes: Vec<RedisServer> = (0..3)
            .map(|_| {
                let port = free_port();
                let conf = dir.join(format!("nodes-{port}.conf"));
                let mut r = RedisServer {
                    child: None,
                    bin: bin.to_owned(),
                    port,
                    plain: false,
                    extra: [
                        "--cluster-enabled",
                        "yes",
                        "--cluster-node-timeout",
                        "2000",
                        "--cluster-config-file",
                        conf.to_str().expect("a UTF-8 temp path"),
                        "--dir",
                        dir.to_str().expect("a UTF-8 temp path"),
                    ]
                    .map(String::from)
                    .to_vec(),
                };
                r.restart();
                r
            })
            .collect();
        // What `redis-cli --cluster create` does, without its waits: slots, distinct config
        // epochs, then every node meets the first.
        for (i, n) in nodes.iter().enumerate() {
            let (first, last) = [(0, 5460), (5461, 10922), (10923, 16383)][i];
            let (first, last) = (first.to_string(), last.to_string());
            assert!(n.query(&["CLUSTER", "ADDSLOTSRANGE", &first, &last]).is_some());
            assert!(n.query(&["CLUSTER", "SET-CONFIG-EPOCH", &(i + 1).to_string()]).is_some());
        }
        for n in &nodes[1..] {
            let port = nodes[0].port.to_string();
            assert!(n.query(&["CLUSTER", "MEET", "127.0.0.1", &port]).is_some());
        }
        let c = RedisCluster { nodes, dir };
        c.wait_ok();
        c
    }

    /// Waits until every node says the cluster is up and knows all three.
    fn wait_ok(&self) {
        let ok = wait_until(Duration::from_secs(20), || {
            self.nodes.iter().all(|n| {
                let info = n.query(&["CLUSTER", "INFO"]).map(|v| text_of(&v)).unwrap_or_default();
                info.contains("cluster_state:ok") && info.contains("cluster_known_nodes:3")
            })
        });
        assert!(ok, "the cluster did not come up");
    }

    fn id(&self, node: usize) -> String {
        text_of(&self.nodes[node].query(&["CLUSTER", "MYID"]).expect("CLUSTER MYID"))
    }

    fn slot(&self, channel: &str) -> u16 {
        let v = self.nodes[0].query(&["CLUSTER", "KEYSLOT", channel]).expect("KEYSLOT");
        redis::from_redis_value_ref(&v).expect("a slot")
    }

    /// The node serving `slot` now, as node 0 sees it.
    fn owner(&self, slot: u16) -> usize {
        let Some(redis::Value::Array(ranges)) = self.nodes[0].query(&["CLUSTER", "SLOTS"]) else {
            panic!("CLUSTER SLOTS")
        };
        for r in ranges {
            let redis::Value::Array(r) = r else { continue };
            let first: u16 = redis::from_redis_value_ref(&r[0]).expect("first");
            let last: u16 = redis::from_redis_value_ref(&r[1]).expect("last");
            let redis::Value::Array(master) = &r[2] else { continue };
            let port: u16 = redis::from_redis_value_ref(&master[1]).expect("port");
            if (first..=last).contains(&slot) {
                return self.nodes.iter().position(|n| n.port == port).expect("a node of ours");
            }
        }
        panic!("no node serves slot {slot}")
    }

    /// A room (`sockeye:` + name is its channel) served by `node`.
    fn room_on(&self, node: usize) -> String {
        (0..)
            .map(|i| format!("room{i}"))
            .find(|r| self.owner(self.slot(&format!("sockeye:{r}"))) == node)
            .expect("a room")
    }

    /// Moves `slot` from its master to `to`, as `redis-cli --cluster reshard` does (a shard
    /// channel holds no key to migrate): importing, migrating, then the new owner on all.
    fn migrate(&self, slot: u16, to: usize) {
        let from = self.owner(slot);
        let s = slot.to_string();
        let (from_id, to_id) = (self.id(from), self.id(to));
        assert!(self.nodes[to].query(&["CLUSTER", "SETSLOT", &s, "IMPORTING", &from_id]).is_some());
        assert!(self.nodes[from].query(&["CLUSTER", "SETSLOT", &s, "MIGRATING", &to_id]).is_some());
        for n in [to, from] {
            assert!(self.nodes[n].query(&["CLUSTER", "SETSLOT", &s, "NODE", &to_id]).is_some());
        }
        for n in (0..3).filter(|&n| n != to && n != from) {
            let _ = self.nodes[n].query(&["CLUSTER", "SETSLOT", &s, "NODE", &to_id]);
        }
        assert!(wait_until(Duration::from_secs(10), || self.owner(slot) == to));
    }

    /// Subscriber connections of shard channel `channel` on `node`.
    fn numsub(&self, node: usize, channel: &str) -> i64 {
        self.nodes[node].numsub(channel)
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

macro_rules! need_redis_7 {
    ($bin:expr) => {{
        let probe = RedisServer::start($bin);
        if !probe.sharded() {
            eprintln!("SKIPPED: this redis-server has no sharded pub/sub (Redis < 7)");
            return;
        }
    }};
}

/// Sends `lines` lines `tag-I` from `from`, reading its own echo of each; returns how many
/// of them `to` got (in order) before a read timed out. Lines of another tag (one that came
/// later than a read waited, in an earlier round) are skipped.
fn cross(from: &mut Ws, to: &mut Ws, tag: &str, lines: usize) -> usize {
    for i in 0..lines {
        from.send(WsMessage::text(format!("{tag}-{i}"))).expect("send");
        assert_eq!(read_text(from), format!("{tag}-{i}"), "local delivery");
    }
    to.get_ref().set_read_timeout(Some(Duration::from_millis(500))).expect("timeout");
    let (mut got, mut next) = (0, 0);
    while let Ok(m) = to.read() {
        let WsMessage::Text(t) = m else { continue };
        let (p, i) = t.rsplit_once('-').expect("P-I");
        if p != tag {
            continue;
        }
        let i: usize = i.parse().expect("index");
        assert!(i >= next, "{tag}: out of order, {i} after {}", next - 1);
        (got, next) = (got + 1, i + 1);
        if next == lines {
            break;
        }
    }
    to.get_ref().set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    got
}

#[test]
fn a_redis_cluster_gets_each_topic_on_its_slots_master_in_order() {
    let bin = need_redis!();
    need_redis_7!(&bin);
    let cluster = RedisCluster::start(&bin);
    // The slot function the bridge uses agrees with the server's (its unit tests compare it
    // with known slots; here the cluster answers for these channels).
    assert_eq!(cluster.slot("foo"), 12182);
    let rooms: Vec<String> = (0..3).map(|n| cluster.room_on(n)).collect();
    // Three processes, each told of a different node: every node is a fine seed.
    let demos: Vec<Demo> = (0..3).map(|n| Demo::start_at(&cluster.nodes[n].url(), false)).collect();
    // Per room, one member per process; the member on process 0 and on process 1 publish.
    let mut members = Vec::new();
    for (r, room) in rooms.iter().enumerate() {
        for (d, demo) in demos.iter().enumerate() {
            members.push((r, d, demo.join(room)));
        }
    }
    for (n, room) in rooms.iter().enumerate() {
        let ch = format!("sockeye:{room}");
        assert!(
            wait_until(Duration::from_secs(10), || cluster.numsub(n, &ch) == 3),
            "{ch} is subscribed once per process on the master of its slot (node {n}): {}",
            cluster.numsub(n, &ch)
        );
        for other in (0..3).filter(|&o| o != n) {
            assert_eq!(cluster.numsub(other, &ch), 0, "{ch} on node {other}");
        }
    }
    const LINES: usize = 100;
    let threads: Vec<_> = members
        .into_iter()
        .map(|(r, d, mut ws)| {
            std::thread::spawn(move || {
                if d < 2 {
                    for i in 0..LINES {
                        ws.send(WsMessage::text(format!("r{r}p{d}-{i}"))).expect("send");
                    }
                }
                (r, read_in_order(&mut ws, 2 * LINES))
            })
        })
        .collect();
    for t in threads {
        let (r, got) = t.join().expect("a member");
        assert_eq!(got.len(), 2, "room {r}: lines from both publishers: {got:?}");
        assert!(got.values().all(|&n| n == LINES), "room {r}: {got:?}");
        assert!(got.keys().all(|p| p.starts_with(&format!("r{r}p"))), "room {r}: {got:?}");
    }
    // Process 0 and 1 each got the other's lines of every room, process 2 both publishers'.
    for (d, demo) in demos.iter().enumerate() {
        let m = demo.metrics();
        let want = if d < 2 { 3 * LINES } else { 2 * 3 * LINES };
        assert_eq!(m["cluster_received"], want as u64, "process {d}: {m:?}");
        assert_eq!(m["cluster_lost"] + m["cluster_queue_drops"] + m["cluster_inbound_drops"], 0);
    }
}

#[test]
fn a_slot_migration_and_a_master_restart_resubscribe_on_the_new_owner() {
    let bin = need_redis!();
    need_redis_7!(&bin);
    let mut cluster = RedisCluster::start(&bin);
    let (x, y) = (cluster.room_on(1), cluster.room_on(2));
    let (cx, cy) = (format!("sockeye:{x}"), format!("sockeye:{y}"));
    // Both processes are told of node 0, which stays up.
    let mut a = Demo::start_at(&cluster.nodes[0].url(), false);
    let mut b = Demo::start_at(&cluster.nodes[0].url(), false);
    let (mut ax, mut bx, mut ay, mut by) = (a.join(&x), b.join(&x), a.join(&y), b.join(&y));
    assert!(wait_until(Duration::from_secs(10), || {
        cluster.numsub(1, &cx) == 2 && cluster.numsub(2, &cy) == 2
    }));
    assert_eq!(cross(&mut ax, &mut bx, "x0", 20), 20);
    assert_eq!(cross(&mut by, &mut ay, "y0", 20), 20);

    // Room x's slot moves from node 1 to node 0: node 1 drops the channel (a `sunsubscribe`
    // push), each bridge subscribes it again on node 0, and publishes follow the MOVED.
    cluster.migrate(cluster.slot(&cx), 0);
    assert!(
        wait_until(Duration::from_secs(10), || cluster.numsub(0, &cx) == 2),
        "both bridges re-subscribe {cx} on its new master: {} on node 0, {} on node 1",
        cluster.numsub(0, &cx),
        cluster.numsub(1, &cx)
    );
    assert_eq!(cluster.numsub(1, &cx), 0);
    assert_eq!(cross(&mut ax, &mut bx, "x1", 20), 20, "every line after the migration crosses");
    assert_eq!(cross(&mut by, &mut ay, "y1", 20), 20, "the other room never stopped");
    let lost_before = a.metrics()["cluster_lost"];

    // Node 2 (room y's master) dies: local delivery goes on, what a publishes to y is lost
    // (counted); restarted with its node file, it serves its slots again and both bridges
    // subscribe y there again.
    cluster.nodes[2].kill();
    for i in 0..20 {
        ay.send(WsMessage::text(format!("down-{i}"))).expect("send");
        assert_eq!(read_text(&mut ay), format!("down-{i}"), "local delivery while down");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        wait_until(Duration::from_secs(10), || a.metrics()["cluster_lost"] > lost_before),
        "publishes to a lost master are counted lost: {:?}",
        a.metrics()
    );
    cluster.nodes[2].restart();
    cluster.wait_ok();
    assert!(
        wait_until(Duration::from_secs(20), || cluster.numsub(2, &cy) == 2),
        "both bridges re-subscribe {cy} after its master's restart: {}",
        cluster.numsub(2, &cy)
    );
    // A line sent while the publisher's bridge was still finding its way back may be lost;
    // from one crossing on, all do.
    let mut crossed = false;
    for round in 0..20 {
        let tag = format!("y2r{round}");
        let got = cross(&mut ay, &mut by, &tag, 10);
        if got == 10 {
            crossed = true;
            break;
        }
    }
    assert!(crossed, "lines cross again after the master's restart");
    assert_eq!(cross(&mut bx, &mut ax, "x2", 20), 20, "and in the migrated room");
    assert!(a.alive() && b.alive(), "no crash");
    let (ma, mb) = (a.metrics(), b.metrics());
    assert!(ma["cluster_reconnects"] >= 1 && mb["cluster_reconnects"] >= 1, "{ma:?} {mb:?}");
}
