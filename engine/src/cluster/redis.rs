//! The Redis broker: the `redis` crate's sync client. Sharded pub/sub (SPUBLISH/SSUBSCRIBE,
//! Redis 7) when `COMMAND INFO SPUBLISH` knows the command, plain PUBLISH/SUBSCRIBE otherwise;
//! the probe runs on every connect, so a server upgraded behind a reconnect is used as it is
//! now.
//!
//! **Redis Cluster.** With sharded pub/sub, the first connection also asks `INFO cluster`:
//! where it says `cluster_enabled:1`, `CLUSTER SLOTS` gives the slot map, and a shard channel
//! is sent to the master serving its hash slot ([`super::slots`]): the publisher holds one
//! pipelined connection per master it publishes to, the subscriber one subscribe connection
//! per master that serves a live topic. A channel always maps to one connection, which keeps
//! each publisher's order per topic. MOVED (and ASK, which Redis does not send for shard
//! channels, which stay on the source until a migration completes, and which is taken as
//! MOVED) updates the slot and sends again there, and the `sunsubscribe` push a master sends
//! when it gives a slot away re-subscribes the channel where the refreshed map says. A master
//! that cannot be reached is a broker loss: the bridge starts over with backoff and a fresh
//! map (with Redis's default `cluster-require-full-coverage yes`, the cluster refuses every
//! command anyway while a slot has no master). Plain pub/sub on a cluster needs none of this:
//! Redis broadcasts it to every node, so one connection to the seed node does.
//!
//! `SOCKEYE_CLUSTER_SHARDED=0` in the environment makes the bridge use plain pub/sub even where
//! sharded is offered (tests/cluster.rs runs both ways on one Redis 7).
//!
//! The subscribe connections speak RESP3 (Redis 6 or later): pushes (messages, subscription
//! acknowledgements) are told apart from replies by type, so SUBSCRIBE and UNSUBSCRIBE are
//! sent without waiting for a reply. Each subscribe connection has a reader thread of its own
//! (the sync client cannot wait on several sockets at once): it sends the (un)subscriptions
//! the subscriber thread queues for it and passes what the node says back through one bounded
//! channel, which the subscriber thread reads with a timeout so that it can look at its topic
//! edges between messages.

use std::collections::HashMap;
use std::io;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use redis::{
    Client, Connection, ConnectionAddr, ConnectionInfo, ConnectionLike, ProtocolVersion, PushKind,
    ServerError, ServerErrorKind, Value,
};

use super::slots::{self, Node, SlotMap};
use super::{Broker, Outgoing, Publisher, Subscriber};

/// Longest wait to connect, or for a write or a reply on a publish connection.
const TIMEOUT: Duration = Duration::from_secs(2);
/// How long a node's reader waits for a message before it looks for (un)subscriptions to
/// send (the delay they may add to a broker subscription).
const NODE_POLL: Duration = Duration::from_millis(5);
/// What the node readers hold for the subscriber thread: past this a reader waits, and Redis
/// keeps the rest in its output buffer for that connection.
const EVENTS: usize = 4096;
/// Re-subscriptions after redirects, per second, past which the subscriber starts over (two
/// nodes that disagree about a slot would otherwise send a channel back and forth).
const REDIRECTS_PER_S: u32 = 4096;

fn io_err(e: redis::RedisError) -> io::Error {
    if e.is_timeout() {
        io::Error::new(io::ErrorKind::TimedOut, e.to_string())
    } else {
        io::Error::other(e.to_string())
    }
}

fn refused(what: &str, e: &ServerError) -> io::Error {
    io::Error::other(format!("broker refused {what}: {} {}", e.code(), e.details().unwrap_or("")))
}

#[derive(Debug)]
pub(crate) struct Redis {
    /// The URL's connection, RESP2 (publishing, asking for the map).
    publish: ConnectionInfo,
    /// The same, RESP3 (subscribing).
    subscribe: ConnectionInfo,
}

impl Redis {
    pub(crate) fn new(url: &str) -> Result<Self, String> {
        let publish = Client::open(url).map_err(|e| e.to_string())?.get_connection_info().clone();
        let settings = publish.redis_settings().clone().set_protocol(ProtocolVersion::RESP3);
        let subscribe = publish.clone().set_redis_settings(settings);
        Ok(Self { publish, subscribe })
    }
}

/// The node a connection's address names (a Unix socket: its path and port 0; it is never a
/// cluster node).
fn node_of(info: &ConnectionInfo) -> Node {
    match info.addr() {
        ConnectionAddr::Tcp(host, port) | ConnectionAddr::TcpTls { host, port, .. } => {
            (host.clone(), *port)
        }
        other => (other.to_string(), 0),
    }
}

/// `base` with its address replaced by `node`'s (TLS settings kept).
fn info_for(base: &ConnectionInfo, node: &Node) -> ConnectionInfo {
    let (host, port) = node.clone();
    let addr = match base.addr().clone() {
        ConnectionAddr::TcpTls { insecure, tls_params, .. } => {
            ConnectionAddr::TcpTls { host, port, insecure, tls_params }
        }
        _ => ConnectionAddr::Tcp(host, port),
    };
    base.clone().set_addr(addr)
}

fn connect(info: &ConnectionInfo) -> io::Result<Connection> {
    let c = Client::open(info.clone())
        .map_err(io_err)?
        .get_connection_with_timeout(TIMEOUT)
        .map_err(io_err)?;
    c.set_write_timeout(Some(TIMEOUT)).map_err(io_err)?;
    c.set_read_timeout(Some(TIMEOUT)).map_err(io_err)?;
    Ok(c)
}

/// What the server behind a connection is.
#[derive(Debug)]
struct Topology {
    /// SPUBLISH/SSUBSCRIBE (else PUBLISH/SUBSCRIBE).
    sharded: bool,
    /// A Redis Cluster, channels routed by slot (sharded only); else every slot is the seed's.
    cluster: bool,
    map: SlotMap,
}

impl Topology {
    /// The node serving `channel`.
    fn owner(&self, channel: &[u8]) -> io::Result<usize> {
        let slot = slots::slot(channel);
        self.map.owner(slot).ok_or_else(|| {
            io::Error::other(format!("the cluster has no master for slot {slot} now"))
        })
    }
}

/// A reply's text (a bulk, simple or RESP3 verbatim string).
fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        _ => None,
    }
}

/// Asks the server what it is. `asked` is the node the connection goes to.
fn discover(c: &mut Connection, asked: &Node) -> io::Result<Topology> {
    // `COMMAND INFO X` answers one entry per name: nil for a command the server lacks.
    let sharded = match redis::cmd("COMMAND").arg("INFO").arg("SPUBLISH").query::<Value>(c) {
        Ok(Value::Array(v)) => v.first().is_some_and(|e| !matches!(e, Value::Nil)),
        Ok(_) => false,
        Err(e) if e.is_io_error() => return Err(io_err(e)),
        Err(_) => false,
    };
    let plain = std::env::var_os("SOCKEYE_CLUSTER_SHARDED").is_some_and(|v| v == "0");
    let sharded = sharded && !plain;
    let single =
        |sharded| Topology { sharded, cluster: false, map: SlotMap::single(asked.clone()) };
    if !sharded {
        return Ok(single(false));
    }
    let info = match redis::cmd("INFO").arg("cluster").query::<Value>(c) {
        Ok(v) => text(&v).unwrap_or_default(),
        Err(e) if e.is_io_error() => return Err(io_err(e)),
        Err(_) => String::new(),
    };
    if !info.lines().any(|l| l.trim() == "cluster_enabled:1") {
        return Ok(single(true));
    }
    let mut map = SlotMap::empty();
    read_slots(c, asked, &mut map)?;
    Ok(Topology { sharded: true, cluster: true, map })
}

/// Fills `map`'s slots from `CLUSTER SLOTS` (each range's master), keeping the numbers of the
/// nodes it knows.
fn read_slots(c: &mut Connection, asked: &Node, map: &mut SlotMap) -> io::Result<()> {
    let reply = redis::cmd("CLUSTER").arg("SLOTS").query::<Value>(c).map_err(io_err)?;
    let Value::Array(ranges) = reply else {
        return Err(io::Error::other("CLUSTER SLOTS: not an array"));
    };
    map.clear();
    for r in ranges {
        let Value::Array(r) = r else { continue };
        let (Some(Value::Int(first)), Some(Value::Int(last)), Some(Value::Array(master))) =
            (r.first(), r.get(1), r.get(2))
        else {
            continue;
        };
        let host = master.first().and_then(text).unwrap_or_default();
        let Some(&Value::Int(port)) = master.get(1) else { continue };
        // An empty (or unknown, `?`) endpoint: the node that answered.
        let host = if host.is_empty() || host == "?" { asked.0.clone() } else { host };
        let (Ok(first), Ok(last), Ok(port)) =
            (u16::try_from(*first), u16::try_from(*last), u16::try_from(port))
        else {
            continue;
        };
        map.assign(first, last, (host, port));
    }
    Ok(())
}

impl Broker for Redis {
    type Pub = RedisPub;
    type Sub = RedisSub;

    fn publisher(&self) -> io::Result<RedisPub> {
        let seed = node_of(&self.publish);
        let mut c = connect(&self.publish)?;
        let topo = discover(&mut c, &seed)?;
        log::info!(
            "cluster: publishing with {}{}",
            if topo.sharded { "SPUBLISH (sharded)" } else { "PUBLISH" },
            if topo.cluster {
                format!(", slot-routed over the {} masters of a Redis Cluster", topo.map.serving())
            } else {
                String::new()
            }
        );
        let mut conns = HashMap::new();
        if let Some(i) = topo.map.nodes().iter().position(|n| *n == seed) {
            conns.insert(i, c);
        }
        Ok(RedisPub { base: self.publish.clone(), topo, conns })
    }

    fn subscriber(&self) -> io::Result<RedisSub> {
        let seed = node_of(&self.subscribe);
        let mut c = connect(&self.subscribe)?;
        let topo = discover(&mut c, &seed)?;
        let (events_tx, events) = crossbeam_channel::bounded(EVENTS);
        let mut sub = RedisSub {
            base: self.subscribe.clone(),
            seed,
            topo,
            links: HashMap::new(),
            held: HashMap::new(),
            per_node: HashMap::new(),
            unsubscribing: HashMap::new(),
            events_tx,
            events,
            redirects: (Instant::now(), 0),
        };
        if !sub.topo.cluster {
            // One server: its connection is the one subscribe connection, held from now on.
            sub.spawn_reader(0, c)?;
        }
        Ok(sub)
    }
}

#[allow(missing_debug_implementations)]
pub(crate) struct RedisPub {
    base: ConnectionInfo,
    topo: Topology,
    /// By node number: the connections made so far (one per master published to).
    conns: HashMap<usize, Connection>,
}

impl RedisPub {
    /// Sends `msgs` (asking first for those marked, after an ASK) to node `i` in one pipeline;
    /// the reply to each.
    fn send(&mut self, i: usize, msgs: &[(&Outgoing, bool)]) -> io::Result<Vec<Value>> {
        let name = if self.topo.sharded { "SPUBLISH" } else { "PUBLISH" };
        let mut p = redis::pipe();
        let mut asking = Vec::new();
        for (m, ask) in msgs {
            if *ask {
                asking.push(p.len());
                p.cmd("ASKING");
            }
            p.cmd(name).arg(m.channel()).arg(m.envelope());
        }
        let conn = match self.conns.entry(i) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                let info = if self.topo.cluster {
                    info_for(&self.base, self.topo.map.node(i))
                } else {
                    self.base.clone()
                };
                let (host, port) = self.topo.map.node(i);
                v.insert(
                    connect(&info)
                        .map_err(|e| io::Error::new(e.kind(), format!("{host}:{port}: {e}")))?,
                )
            }
        };
        let n = p.len();
        let mut replies = match conn.req_packed_commands(&p.get_packed_pipeline(), 0, n) {
            Ok(r) => r,
            Err(e) => {
                self.conns.remove(&i);
                return Err(io_err(e));
            }
        };
        for k in asking.into_iter().rev() {
            replies.remove(k);
        }
        Ok(replies)
    }
}

impl Publisher for RedisPub {
    fn publish(&mut self, batch: &[Outgoing]) -> io::Result<()> {
        if !self.topo.cluster {
            let all: Vec<_> = batch.iter().map(|m| (m, false)).collect();
            return match self.send(0, &all)?.into_iter().find_map(|r| match r {
                Value::ServerError(e) => Some(e),
                _ => None,
            }) {
                Some(e) => Err(refused("a publish", &e)),
                None => Ok(()),
            };
        }
        // Each master's share of the batch, in batch order: a topic's messages all go to one.
        let mut shares: Vec<(usize, Vec<(&Outgoing, bool)>)> = Vec::new();
        for m in batch {
            let i = self.topo.owner(m.channel())?;
            match shares.iter_mut().find(|(n, _)| *n == i) {
                Some((_, v)) => v.push((m, false)),
                None => shares.push((i, vec![(m, false)])),
            }
        }
        // Redirected: sent once more, to the node named, after every share (a topic's
        // messages that went before it were all taken by the old node).
        let mut again: Vec<(usize, Vec<(&Outgoing, bool)>)> = Vec::new();
        for (i, share) in &shares {
            let replies = self.send(*i, share)?;
            for ((m, _), r) in share.iter().zip(replies) {
                let Value::ServerError(e) = r else { continue };
                let ask = match e.kind() {
                    Some(ServerErrorKind::Moved) => false,
                    Some(ServerErrorKind::Ask) => true,
                    _ => return Err(refused("a publish", &e)),
                };
                let at = self.topo.map.node(*i).clone();
                let (slot, to) = slots::parse_redirect(e.details().unwrap_or(""), &at)
                    .ok_or_else(|| refused("a publish", &e))?;
                let j = if ask {
                    self.topo.map.node_index(to)
                } else {
                    self.topo.map.assign(slot, slot, to);
                    self.topo.map.owner(slot).unwrap_or(*i)
                };
                match again.iter_mut().find(|(n, _)| *n == j) {
                    Some((_, v)) => v.push((m, ask)),
                    None => again.push((j, vec![(m, ask)])),
                }
            }
        }
        for (j, share) in &again {
            if let Some(Value::ServerError(e)) =
                self.send(*j, share)?.into_iter().find(|r| matches!(r, Value::ServerError(_)))
            {
                return Err(refused("a redirected publish", &e));
            }
        }
        Ok(())
    }
}

/// What a node's reader is asked to send.
#[derive(Debug)]
enum NodeCmd {
    Subscribe(Vec<u8>),
    Unsubscribe(Vec<u8>),
}

/// What a node's reader passes on, with the node's number.
#[derive(Debug)]
enum Event {
    Message(Vec<u8>, Vec<u8>),
    /// An unsubscribe push: the answer to ours, or the node giving the channel's slot away.
    Unsubscribed(usize, Vec<u8>),
    /// An error reply (to a subscription: nothing else is sent on these connections).
    Refused(usize, ServerError),
    /// The connection failed; the reader has ended.
    Lost(usize, io::Error),
}

/// Runs on a node's reader thread until the connection fails or the subscriber is dropped.
fn read_node(
    mut conn: Connection,
    i: usize,
    sharded: bool,
    cmds: &Receiver<NodeCmd>,
    events: &Sender<Event>,
) {
    let (sub, unsub) =
        if sharded { ("SSUBSCRIBE", "SUNSUBSCRIBE") } else { ("SUBSCRIBE", "UNSUBSCRIBE") };
    if let Err(e) = conn.set_read_timeout(Some(NODE_POLL)) {
        let _ = events.send(Event::Lost(i, io_err(e)));
        return;
    }
    loop {
        loop {
            let (name, channel) = match cmds.try_recv() {
                Ok(NodeCmd::Subscribe(c)) => (sub, c),
                Ok(NodeCmd::Unsubscribe(c)) => (unsub, c),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => return,
            };
            // RESP3: the acknowledgement is a push, read below.
            if let Err(e) = redis::cmd(name).arg(channel).set_no_response(true).exec(&mut conn) {
                let _ = events.send(Event::Lost(i, io_err(e)));
                return;
            }
        }
        let event = match conn.recv_response() {
            Ok(Value::Push { kind: PushKind::Message | PushKind::SMessage, data }) => {
                let mut it = data.into_iter();
                match (it.next(), it.next()) {
                    (Some(Value::BulkString(ch)), Some(Value::BulkString(env))) => {
                        Event::Message(ch, env)
                    }
                    _ => continue,
                }
            }
            Ok(Value::Push { kind: PushKind::Unsubscribe | PushKind::SUnsubscribe, data }) => {
                match data.into_iter().next() {
                    Some(Value::BulkString(ch)) => Event::Unsubscribed(i, ch),
                    _ => continue,
                }
            }
            Ok(Value::ServerError(e)) => Event::Refused(i, e),
            // Subscription acknowledgements and anything else: nothing to pass on.
            Ok(_) => continue,
            Err(e) if e.is_timeout() => continue,
            Err(e) => {
                let _ = events.send(Event::Lost(i, io_err(e)));
                return;
            }
        };
        if events.send(event).is_err() {
            return;
        }
    }
}

#[allow(missing_debug_implementations)]
pub(crate) struct RedisSub {
    base: ConnectionInfo,
    seed: Node,
    topo: Topology,
    /// By node number: the queue of its reader (dropping it ends the reader and closes the
    /// connection).
    links: HashMap<usize, Sender<NodeCmd>>,
    /// Each channel subscribed, and the node it is subscribed on.
    held: HashMap<Vec<u8>, usize>,
    /// Channels held per node (a cluster node's connection is closed when it holds none).
    per_node: HashMap<usize, usize>,
    /// Acknowledgements of our own unsubscribes still to come, per node and channel.
    unsubscribing: HashMap<(usize, Vec<u8>), u32>,
    events_tx: Sender<Event>,
    events: Receiver<Event>,
    /// Since when, and how many, re-subscriptions after a redirect.
    redirects: (Instant, u32),
}

impl RedisSub {
    fn spawn_reader(&mut self, i: usize, conn: Connection) -> io::Result<()> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let events = self.events_tx.clone();
        let sharded = self.topo.sharded;
        std::thread::Builder::new()
            .name("sockeye-cluster-node".into())
            .spawn(move || read_node(conn, i, sharded, &rx, &events))?;
        self.links.insert(i, tx);
        Ok(())
    }

    /// Node `i`'s reader queue, connecting to it first if need be.
    fn link(&mut self, i: usize) -> io::Result<&Sender<NodeCmd>> {
        if !self.links.contains_key(&i) {
            let node = self.topo.map.node(i).clone();
            let conn = connect(&info_for(&self.base, &node))
                .map_err(|e| io::Error::new(e.kind(), format!("{}:{}: {e}", node.0, node.1)))?;
            self.spawn_reader(i, conn)?;
            log::debug!("cluster: subscribe connection to {}:{}", node.0, node.1);
        }
        Ok(&self.links[&i])
    }

    fn tell(&mut self, i: usize, cmd: NodeCmd) -> io::Result<()> {
        self.link(i)?
            .send(cmd)
            .map_err(|_| io::Error::other("a subscribe connection's reader has ended"))
    }

    /// Forgets that `channel` is held on a node (it was unsubscribed or dropped there); a
    /// cluster node left holding nothing has its connection closed.
    fn forget(&mut self, channel: &[u8]) -> Option<usize> {
        let i = self.held.remove(channel)?;
        let n = self.per_node.entry(i).or_default();
        *n = n.saturating_sub(1);
        if *n == 0 && self.topo.cluster {
            self.per_node.remove(&i);
            self.links.remove(&i);
            self.unsubscribing.retain(|(node, _), _| *node != i);
        }
        Some(i)
    }

    /// Counts a re-subscription after a redirect; an error past [`REDIRECTS_PER_S`].
    fn redirected(&mut self) -> io::Result<()> {
        if self.redirects.0.elapsed() > Duration::from_secs(1) {
            self.redirects = (Instant::now(), 0);
        }
        self.redirects.1 += 1;
        if self.redirects.1 > REDIRECTS_PER_S {
            return Err(io::Error::other("the cluster's nodes keep redirecting subscriptions"));
        }
        Ok(())
    }

    /// Reads the slot map again: from node `first` if given (the one that knows what changed),
    /// else from any node it knows, the seed last.
    fn refresh(&mut self, first: Option<usize>) -> io::Result<()> {
        let mut asks: Vec<Node> =
            first.map(|i| self.topo.map.node(i).clone()).into_iter().collect();
        asks.extend(self.topo.map.nodes().iter().cloned());
        asks.push(self.seed.clone());
        let mut last = io::Error::other("no node to ask for the slot map");
        for node in asks {
            let result = connect(&info_for(&self.base, &node))
                .and_then(|mut c| read_slots(&mut c, &node, &mut self.topo.map));
            match result {
                Ok(()) => return Ok(()),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// A node said a channel is no longer subscribed there.
    fn dropped(&mut self, i: usize, channel: Vec<u8>) -> io::Result<()> {
        let key = (i, channel);
        if let Some(n) = self.unsubscribing.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                self.unsubscribing.remove(&key);
            }
            return Ok(());
        }
        let channel = key.1;
        if self.held.get(&channel) != Some(&i) {
            return Ok(());
        }
        // Not asked for: the node gave the channel's slot away (a migration). Subscribe where
        // the map now says.
        self.redirected()?;
        log::info!(
            "cluster: {} left node {}:{} (its slot moved); subscribing it again",
            String::from_utf8_lossy(&channel),
            self.topo.map.node(i).0,
            self.topo.map.node(i).1
        );
        self.forget(&channel);
        if self.topo.cluster {
            self.refresh(Some(i))?;
        }
        self.subscribe(&channel)
    }

    /// A node refused a subscription: MOVED (or ASK) sends the slot's channels it was to hold
    /// to the node named; anything else is an error.
    fn refused(&mut self, i: usize, e: &ServerError) -> io::Result<()> {
        if !matches!(e.kind(), Some(ServerErrorKind::Moved | ServerErrorKind::Ask))
            || !self.topo.cluster
        {
            return Err(refused("a subscription", e));
        }
        let at = self.topo.map.node(i).clone();
        let (slot, to) = slots::parse_redirect(e.details().unwrap_or(""), &at)
            .ok_or_else(|| refused("a subscription", e))?;
        self.topo.map.assign(slot, slot, to);
        let moving: Vec<Vec<u8>> = self
            .held
            .iter()
            .filter(|(c, &n)| n == i && slots::slot(c) == slot)
            .map(|(c, _)| c.clone())
            .collect();
        for c in moving {
            self.redirected()?;
            self.forget(&c);
            self.subscribe(&c)?;
        }
        Ok(())
    }
}

impl Subscriber for RedisSub {
    fn subscribe(&mut self, channel: &[u8]) -> io::Result<()> {
        let i = self.topo.owner(channel)?;
        if self.held.get(channel) == Some(&i) {
            return Ok(());
        }
        self.tell(i, NodeCmd::Subscribe(channel.to_vec()))?;
        // (Held elsewhere only if the bridge subscribed twice, which it does not.)
        self.forget(channel);
        self.held.insert(channel.to_vec(), i);
        *self.per_node.entry(i).or_default() += 1;
        Ok(())
    }

    fn unsubscribe(&mut self, channel: &[u8]) -> io::Result<()> {
        let Some(&i) = self.held.get(channel) else { return Ok(()) };
        self.tell(i, NodeCmd::Unsubscribe(channel.to_vec()))?;
        *self.unsubscribing.entry((i, channel.to_vec())).or_default() += 1;
        self.forget(channel);
        Ok(())
    }

    fn next(&mut self, timeout: Duration) -> io::Result<Option<(Vec<u8>, Vec<u8>)>> {
        match self.events.recv_timeout(timeout) {
            Ok(Event::Message(channel, env)) => Ok(Some((channel, env))),
            Ok(Event::Unsubscribed(i, channel)) => self.dropped(i, channel).map(|()| None),
            Ok(Event::Refused(i, e)) => self.refused(i, &e).map(|()| None),
            Ok(Event::Lost(i, e)) => {
                let (host, port) = self.topo.map.node(i);
                Err(io::Error::new(e.kind(), format!("{host}:{port}: {e}")))
            }
            // (Never disconnected: this holds a sender.)
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => Ok(None),
        }
    }
}
