//! The Redis broker: the `redis` crate's sync client, one connection per bridge thread.
//! Sharded pub/sub (SPUBLISH/SSUBSCRIBE, Redis 7) when `COMMAND INFO SPUBLISH` knows the
//! command, plain PUBLISH/SUBSCRIBE otherwise; the probe runs on every connect, so a server
//! upgraded behind a reconnect is used as it is now.
//!
//! `SOCKEYE_CLUSTER_SHARDED=0` in the environment makes the bridge use plain pub/sub even where
//! sharded is offered (tests/cluster.rs runs both ways on one Redis 7).
//!
//! The subscribe connection speaks RESP3 (Redis 6 or later): pushes (messages, subscription
//! acknowledgements) are told apart from replies by type, so SUBSCRIBE and UNSUBSCRIBE are
//! sent without waiting for a reply and a read timeout lets the bridge look at its topic
//! edges between messages without losing one.

use std::io;
use std::time::Duration;

use redis::{Client, Connection, ProtocolVersion, PushKind, Value};

use super::{Broker, Outgoing, Publisher, Subscriber};

/// Longest wait to connect, or for a write or a reply on the publish connection.
const TIMEOUT: Duration = Duration::from_secs(2);

fn io_err(e: redis::RedisError) -> io::Error {
    if e.is_timeout() {
        io::Error::new(io::ErrorKind::TimedOut, e.to_string())
    } else {
        io::Error::other(e.to_string())
    }
}

#[derive(Debug)]
pub(crate) struct Redis {
    publish: Client,
    subscribe: Client,
}

impl Redis {
    pub(crate) fn new(url: &str) -> Result<Self, String> {
        let publish = Client::open(url).map_err(|e| e.to_string())?;
        let info = publish.get_connection_info().clone();
        let settings = info.redis_settings().clone().set_protocol(ProtocolVersion::RESP3);
        let subscribe =
            Client::open(info.set_redis_settings(settings)).map_err(|e| e.to_string())?;
        Ok(Self { publish, subscribe })
    }
}

fn connect(client: &Client) -> io::Result<(Connection, bool)> {
    let mut c = client.get_connection_with_timeout(TIMEOUT).map_err(io_err)?;
    c.set_write_timeout(Some(TIMEOUT)).map_err(io_err)?;
    c.set_read_timeout(Some(TIMEOUT)).map_err(io_err)?;
    // `COMMAND INFO X` answers one entry per name: nil for a command the server lacks.
    let sharded = match redis::cmd("COMMAND").arg("INFO").arg("SPUBLISH").query::<Value>(&mut c) {
        Ok(Value::Array(v)) => v.first().is_some_and(|e| !matches!(e, Value::Nil)),
        Ok(_) => false,
        Err(e) if e.is_io_error() => return Err(io_err(e)),
        Err(_) => false,
    };
    let plain = std::env::var_os("SOCKEYE_CLUSTER_SHARDED").is_some_and(|v| v == "0");
    Ok((c, sharded && !plain))
}

impl Broker for Redis {
    type Pub = RedisPub;
    type Sub = RedisSub;

    fn publisher(&self) -> io::Result<RedisPub> {
        let (conn, sharded) = connect(&self.publish)?;
        log::info!(
            "cluster: publishing with {}",
            if sharded { "SPUBLISH (sharded)" } else { "PUBLISH" }
        );
        Ok(RedisPub { conn, sharded })
    }

    fn subscriber(&self) -> io::Result<RedisSub> {
        let (conn, sharded) = connect(&self.subscribe)?;
        Ok(RedisSub { conn, sharded, timeout: None })
    }
}

#[allow(missing_debug_implementations)]
pub(crate) struct RedisPub {
    conn: Connection,
    sharded: bool,
}

impl Publisher for RedisPub {
    fn publish(&mut self, batch: &[Outgoing]) -> io::Result<()> {
        let name = if self.sharded { "SPUBLISH" } else { "PUBLISH" };
        let mut p = redis::pipe();
        for m in batch {
            p.cmd(name).arg(m.channel()).arg(m.envelope()).ignore();
        }
        p.query::<()>(&mut self.conn).map_err(io_err)
    }
}

#[allow(missing_debug_implementations)]
pub(crate) struct RedisSub {
    conn: Connection,
    sharded: bool,
    /// The read timeout set now.
    timeout: Option<Duration>,
}

impl RedisSub {
    fn send(&mut self, plain: &str, sharded: &str, channel: &[u8]) -> io::Result<()> {
        let name = if self.sharded { sharded } else { plain };
        // RESP3: the acknowledgement is a push, read (and ignored) by `next`.
        redis::cmd(name).arg(channel).set_no_response(true).exec(&mut self.conn).map_err(io_err)
    }
}

impl Subscriber for RedisSub {
    fn subscribe(&mut self, channel: &[u8]) -> io::Result<()> {
        self.send("SUBSCRIBE", "SSUBSCRIBE", channel)
    }

    fn unsubscribe(&mut self, channel: &[u8]) -> io::Result<()> {
        self.send("UNSUBSCRIBE", "SUNSUBSCRIBE", channel)
    }

    fn next(&mut self, timeout: Duration) -> io::Result<Option<(Vec<u8>, Vec<u8>)>> {
        if self.timeout != Some(timeout) {
            self.conn.set_read_timeout(Some(timeout)).map_err(io_err)?;
            self.timeout = Some(timeout);
        }
        match self.conn.recv_response() {
            Ok(Value::Push { kind: PushKind::Message | PushKind::SMessage, data }) => {
                let mut it = data.into_iter();
                match (it.next(), it.next()) {
                    (Some(Value::BulkString(ch)), Some(Value::BulkString(env))) => {
                        Ok(Some((ch, env)))
                    }
                    _ => Ok(None),
                }
            }
            Ok(Value::ServerError(e)) => {
                Err(io::Error::other(format!("broker refused a subscription: {e:?}")))
            }
            // Subscription acknowledgements and anything else: nothing to deliver.
            Ok(_) => Ok(None),
            Err(e) if e.is_timeout() => Ok(None),
            Err(e) => Err(io_err(e)),
        }
    }
}
