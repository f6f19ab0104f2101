//! The engine: configuration, workers, the handle to control them from any thread.
//!
//! A [`Server`] owns N workers. Each worker is a thread with its own event loop, its own
//! SO_REUSEPORT listener and its own slab of connections; workers share nothing on the hot path
//! and hear from other threads only through a channel plus a waker (shutdown, cross-thread
//! sends, posts).

pub(crate) mod api;
pub(crate) mod config;
pub(crate) mod core;
pub(crate) mod handle;
pub(crate) mod outq;
pub(crate) mod timer;
pub(crate) mod tls;
pub(crate) mod topics;
pub(crate) mod worker;

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use crate::error::Error;
use crate::io as backend;
use crate::proto::Limits;
use topics::Registry;

pub(crate) use handle::{HandleInner, WorkerLink, WorkerStats};
pub use handle::{ServerHandle, Stats};

pub use api::{
    Conn, ConnId, Ctx, Handler, HttpResponse, InvalidCloseCode, Message, Post, SendStatus,
    TopicError, Upgrade,
};
pub use config::{Backend, Config, ConfigError};

/// Builds a [`Server`]: [`Server::builder`], then setters, then [`ServerBuilder::handler`] and
/// [`ServerBuilder::build`].
///
/// Every limit and timeout has a setter named after its field. Each setter states its default;
/// the whole story of each (what it bounds, the accepted range, why the default) is on the
/// field of the same name in [`Config`], or in [`Limits`] for the protocol limits
/// (`max_message_size`, `max_frame_size`, `max_fragments`, `max_handshake_bytes`,
/// `handshake_timeout`, `close_timeout`). [`ServerBuilder::build`] checks every value
/// ([`Config::validate`]) and names the field it refuses. A setter not called keeps the
/// default.
///
/// ```no_run
/// use std::time::Duration;
/// use sockeye::{Conn, Handler, Message, Server};
///
/// struct Echo;
/// impl Handler for Echo {
///     type Data = ();
///     fn on_message(&mut self, conn: &mut Conn<'_, ()>, msg: Message<'_>) {
///         conn.send(msg);
///     }
/// }
///
/// let server = Server::builder()
///     .listen("0.0.0.0:9001")
///     .workers(4)
///     .max_message_size(1 << 20) // 1 MiB instead of 16
///     .idle_timeout(Some(Duration::from_secs(60)))
///     .auto_ping(Some(Duration::from_secs(20)))
///     .handler(|| Echo)
///     .build()?;
/// assert_eq!(server.config().workers, 4);
/// server.run()?;
/// # Ok::<(), sockeye::Error>(())
/// ```
#[derive(Debug)]
pub struct ServerBuilder<F = ()> {
    config: Config,
    /// Why the last [`ServerBuilder::listen`] address was refused; `build` reports it.
    bad_addr: Option<String>,
    /// The same for [`ServerBuilder::listen_tls`].
    bad_tls_addr: Option<String>,
    factory: F,
}

macro_rules! setter {
    ($(#[$doc:meta])* $name:ident: $ty:ty => $($field:ident).+) => {
        $(#[$doc])*
        pub fn $name(mut self, v: $ty) -> Self {
            self.config.$($field).+ = v;
            self
        }
    };
}

impl<F> ServerBuilder<F> {
    /// Sets the listen address (e.g. `"127.0.0.1:9001"`; port 0 picks a free one). A name is
    /// resolved now, and the first address it gives is used.
    ///
    /// # Panics
    /// Never; an address that cannot be parsed or resolved (`"127.0.0.1"` without a port,
    /// port 99999, an unknown host) makes [`ServerBuilder::build`] fail with
    /// [`Error::Address`], naming it. The last call wins.
    pub fn listen(mut self, addr: impl std::net::ToSocketAddrs + std::fmt::Debug) -> Self {
        match addr.to_socket_addrs().map(|mut i| i.next()) {
            Ok(Some(a)) => {
                self.config.addr = a;
                self.bad_addr = None;
                self.bad_tls_addr = None;
            }
            Ok(None) => {
                self.bad_addr = Some(format!("listen address {addr:?}: resolves to nothing"))
            }
            Err(e) => self.bad_addr = Some(format!("listen address {addr:?}: {e}")),
        }
        self
    }
    setter!(/// Worker threads (0, the default: one per core). See [`Config::workers`].
        workers: usize => workers);
    setter!(/// The I/O backend (default [`Backend::Auto`]). See [`Config::backend`].
        backend: Backend => backend);
    setter!(/// Largest message accepted, close 1009 above it (default 16 MiB). See
        /// [`Limits::max_message_size`].
        max_message_size: u64 => limits.max_message_size);
    setter!(/// Largest frame accepted, close 1009 above it (default 16 MiB). See
        /// [`Limits::max_frame_size`].
        max_frame_size: u64 => limits.max_frame_size);
    setter!(/// Most fragments per message, close 1009 above it (default 131072). See
        /// [`Limits::max_fragments`].
        max_fragments: u32 => limits.max_fragments);
    setter!(/// Largest handshake request head, HTTP 431 above it (default 8192 bytes). See
        /// [`Limits::max_handshake_bytes`].
        max_handshake_bytes: usize => limits.max_handshake_bytes);
    setter!(/// Time a client has to send its whole handshake request (default 10 s). See
        /// [`Limits::handshake_timeout`].
        handshake_timeout: std::time::Duration => limits.handshake_timeout);
    setter!(/// Time the peer has to answer our close frame (default 5 s). See
        /// [`Limits::close_timeout`].
        close_timeout: std::time::Duration => limits.close_timeout);
    setter!(/// Close connections silent for this long (`None`: never; default 120 s). See
        /// [`Config::idle_timeout`].
        idle_timeout: Option<std::time::Duration> => idle_timeout);
    setter!(/// Ping connections silent for this long; close them if still silent after as long
        /// again (default `None`: off). See [`Config::auto_ping`].
        auto_ping: Option<std::time::Duration> => auto_ping);
    setter!(/// Bytes a connection may have queued before data sends are dropped (default 16 MiB).
        /// See [`Config::max_backpressure`].
        max_backpressure: usize => max_backpressure);
    setter!(/// Close a connection (1008) when one of its sends is dropped (default false). See
        /// [`Config::close_on_backpressure_limit`].
        close_on_backpressure_limit: bool => close_on_backpressure_limit);
    setter!(/// permessage-deflate preferences (default off). See [`Config::deflate`].
        deflate: crate::proto::DeflateConfig => deflate);

    /// Serves wss:// at `addr` too, besides plain ws:// at [`ServerBuilder::listen`]'s
    /// address (with [`ServerBuilder::tls`]; see [`Config::tls_addr`]). Resolved as `listen`
    /// resolves its address, and refused the same way.
    pub fn listen_tls(mut self, addr: impl std::net::ToSocketAddrs + std::fmt::Debug) -> Self {
        match addr.to_socket_addrs().map(|mut i| i.next()) {
            Ok(Some(a)) => {
                self.config.tls_addr = Some(a);
                self.bad_tls_addr = None;
            }
            Ok(None) => {
                self.bad_tls_addr =
                    Some(format!("TLS listen address {addr:?}: resolves to nothing"))
            }
            Err(e) => self.bad_tls_addr = Some(format!("TLS listen address {addr:?}: {e}")),
        }
        self
    }

    /// Serves wss://: the listener speaks TLS with this certificate and key (or, with
    /// [`ServerBuilder::listen_tls`], a second listener does). See [`Config::tls`].
    pub fn tls(mut self, tls: crate::TlsConfig) -> Self {
        self.config.tls = Some(tls);
        self
    }
    setter!(/// Longest topic name, in bytes (default 256). See [`Config::max_topic_len`].
        max_topic_len: usize => max_topic_len);
    setter!(/// Connections per worker (default 1048576). See [`Config::max_connections`].
        max_connections: usize => max_connections);
    setter!(/// Bytes of send queues and assembly buffers one worker may hold in all (default
        /// 256 MiB). See [`Config::worker_memory_budget`].
        worker_memory_budget: usize => worker_memory_budget);
    setter!(/// Bytes of freed send and assembly buffers one worker keeps for reuse (default
        /// 16 MiB). See [`Config::buffer_cache`].
        buffer_cache: usize => buffer_cache);
    setter!(/// Let other sockets join this server's SO_REUSEPORT group (default off: the port is
        /// ours). See [`Config::share_port`].
        share_port: bool => share_port);
    setter!(/// Submission queue entries per worker, io_uring (default 1024). See
        /// [`Config::uring_entries`].
        uring_entries: u32 => uring_entries);
    setter!(/// How long a graceful shutdown waits for close handshakes (default 5 s). See
        /// [`Config::shutdown_timeout`].
        shutdown_timeout: std::time::Duration => shutdown_timeout);
    setter!(/// Granularity of the timer wheel (default 250 ms). See [`Config::timer_tick`].
        timer_tick: std::time::Duration => timer_tick);
    setter!(/// Listen backlog of each worker's listener (default 4096). See
        /// [`Config::backlog`].
        backlog: i32 => backlog);
    setter!(/// Size of each worker's read buffer, epoll (default 256 KiB). See
        /// [`Config::read_buffer_size`].
        read_buffer_size: usize => read_buffer_size);
    setter!(/// Buffers in each worker's provided-buffer ring, io_uring (default 0: 4 where the
        /// kernel consumes them incrementally, else 128). See [`Config::uring_buffers`].
        uring_buffers: u16 => uring_buffers);
    setter!(/// Size of each provided buffer, io_uring (default 0: 192 KiB where buffers are
        /// consumed incrementally, else 64 KiB). See [`Config::uring_buffer_size`].
        uring_buffer_size: usize => uring_buffer_size);
    setter!(/// Data sends of at least this many bytes are written at once, without a copy
        /// into the send queue (`usize::MAX`: never; default 32 KiB). See
        /// [`Config::direct_write_min`].
        direct_write_min: usize => direct_write_min);
    setter!(/// The Redis server of the cluster bridge, `redis://host:port` (default `None`: no
        /// bridge; needs the `cluster` feature). See [`Config::cluster_url`].
        cluster_url: Option<String> => cluster_url);
    setter!(/// Sends of at least this many bytes use SEND_ZC (io_uring; `usize::MAX`, the
        /// default: never). See [`Config::uring_send_zc_threshold`].
        uring_send_zc_threshold: usize => uring_send_zc_threshold);

    /// Replaces all protocol limits at once.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.config.limits = limits;
        self
    }

    /// Replaces the whole configuration, its address included (a refused
    /// [`ServerBuilder::listen`] before it is forgotten).
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self.bad_addr = None;
        self
    }

    /// Sets the handler factory, called once on each worker thread.
    pub fn handler<G, H>(self, factory: G) -> ServerBuilder<G>
    where
        G: Fn() -> H + Send + Sync + 'static,
        H: Handler,
    {
        ServerBuilder {
            config: self.config,
            bad_addr: self.bad_addr,
            bad_tls_addr: self.bad_tls_addr,
            factory,
        }
    }
}

impl<G, H> ServerBuilder<G>
where
    G: Fn() -> H + Send + Sync + 'static,
    H: Handler,
{
    /// Checks the configuration, binds the listeners and prepares the workers. Errors:
    /// - [`Error::Address`]: the [`ServerBuilder::listen`] address could not be parsed or
    ///   resolved (the message names it);
    /// - [`Error::Config`]: a setting is out of range ([`Config::validate`] names the field);
    /// - [`Error::AddrInUse`]: something already listens on the address (unless
    ///   [`Config::share_port`] allows joining it);
    /// - [`Error::Backend`]: the backend asked for is not available on this kernel;
    /// - [`Error::Io`]: any other failure binding the address or setting up a worker.
    ///
    /// `Error` converts into `std::io::Error` (`?` in a `main` returning `io::Result`).
    pub fn build(self) -> Result<Server<H>, Error> {
        if let Some(why) = self.bad_addr.or(self.bad_tls_addr) {
            return Err(Error::Address(why));
        }
        let mut config = self.config;
        config.validate()?;
        let tls = match &config.tls {
            Some(t) => {
                let built = t.build().map_err(Error::Tls)?;
                let p = crate::TlsConfig::PROVIDER;
                match backend::sys::ktls_probe() {
                    Ok(()) => {
                        log::info!(
                            "TLS: rustls on {p} in the workers (this kernel has kTLS; unused)"
                        )
                    }
                    Err(e) => log::info!(
                        "TLS: rustls on {p} in the workers (no kTLS here: TCP_ULP tls: {e})"
                    ),
                }
                Some(built)
            }
            None => None,
        };
        config.backend = backend::resolve(config.backend)?;
        let n = config.worker_count();
        // What `Server::config` reports: the count in force, not the 0 that asked for it.
        config.workers = n;
        let mut preps = Vec::with_capacity(n);
        let mut links = Vec::with_capacity(n);
        // Unless sharing was asked for, make sure the port is ours: nothing may listen there
        // (and port 0 becomes a port nothing uses). The workers then form their own group.
        let mut addr =
            if config.share_port { config.addr } else { backend::claim_port(config.addr)? };
        let mut tls_addr = match config.tls_addr {
            Some(a) if !config.share_port => Some(backend::claim_port(a)?),
            a => a,
        };
        // Without a TLS address of its own, the one listener speaks TLS when TLS is set.
        let main_secure = config.tls.is_some() && tls_addr.is_none();
        for i in 0..n {
            let listener = backend::bind_listener(addr, config.backlog)?;
            if i == 0 {
                addr = listener.local_addr()?;
            }
            let mut listeners = vec![(listener, main_secure)];
            if let Some(a) = tls_addr {
                let l = backend::bind_listener(a, config.backlog)?;
                if i == 0 {
                    tls_addr = Some(l.local_addr()?);
                }
                listeners.push((l, true));
            }
            let (tx, rx) = crossbeam_channel::unbounded();
            let prep = backend::WorkerPrep::new(config.backend, listeners, rx)?;
            let stats = Arc::new(WorkerStats::default());
            links.push(WorkerLink { tx, waker: prep.waker(), stats: Arc::clone(&stats) });
            preps.push((prep, stats));
        }
        config.addr = addr;
        config.tls_addr = tls_addr;
        // The cluster bridge: its queue (in the handle, for every publisher) and the news of
        // topics whose first subscriber came or last one left (from the registry).
        #[cfg(feature = "cluster")]
        let (bridge, link, edges) = match &config.cluster_url {
            Some(url) => {
                let (bridge, link, edges) = crate::cluster::Bridge::new(url)
                    .map_err(|e| Error::Io(std::io::Error::other(e)))?;
                (Some(bridge), Some(link), Some(edges))
            }
            None => (None, None, None),
        };
        #[cfg(not(feature = "cluster"))]
        let edges = None;
        let handle = ServerHandle {
            inner: Arc::new(HandleInner {
                workers: links,
                local_addr: addr,
                stopping: AtomicBool::new(false),
                topics: Arc::new(Registry::with_edges(n, edges)),
                max_topic_len: config.max_topic_len,
                tls: tls::TlsState::new(tls),
                #[cfg(feature = "cluster")]
                cluster: link,
            }),
        };
        Ok(Server {
            config: Arc::new(config),
            preps,
            factory: Arc::new(self.factory),
            handle,
            #[cfg(feature = "cluster")]
            bridge,
        })
    }
}

/// A built server, ready to [`Server::run`].
pub struct Server<H: Handler> {
    config: Arc<Config>,
    preps: Vec<(backend::WorkerPrep, Arc<WorkerStats>)>,
    factory: Arc<dyn Fn() -> H + Send + Sync>,
    handle: ServerHandle,
    /// The cluster bridge, started by `run` (`Config::cluster_url`).
    #[cfg(feature = "cluster")]
    bridge: Option<crate::cluster::Bridge>,
}

impl<H: Handler> std::fmt::Debug for Server<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").field("config", &self.config).finish()
    }
}

impl Server<NoHandler> {
    /// Starts building a server.
    pub fn builder() -> ServerBuilder<()> {
        ServerBuilder { config: Config::default(), bad_addr: None, bad_tls_addr: None, factory: () }
    }
}

/// Placeholder handler type naming [`Server::builder`]; never instantiated.
#[derive(Debug)]
pub struct NoHandler;

impl Handler for NoHandler {
    type Data = ();
    fn on_message(&mut self, _: &mut Conn<'_, ()>, _: Message<'_>) {}
}

impl<H: Handler> Server<H> {
    /// A handle for other threads.
    pub fn handle(&self) -> ServerHandle {
        self.handle.clone()
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.config.addr
    }

    /// The configuration in force: the worker count resolved (never 0: a `workers(0)` server
    /// reports how many cores it took), the backend resolved (never [`Backend::Auto`]), and
    /// the listen address with its port resolved when 0 was asked for.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Runs the workers until a graceful shutdown completes. Blocks the calling thread.
    /// Errors: a worker failed ([`Error::Io`]) or panicked ([`Error::WorkerPanicked`]); the
    /// other workers are then stopped.
    pub fn run(self) -> Result<(), Error> {
        // The bridge first: a publish from a worker's first callback finds it running.
        #[cfg(feature = "cluster")]
        let bridge = match self.bridge {
            Some(b) => Some(b.start(self.handle.clone())?),
            None => None,
        };
        let mut threads = Vec::with_capacity(self.preps.len());
        for (i, (prep, stats)) in self.preps.into_iter().enumerate() {
            let cfg = Arc::clone(&self.config);
            let factory = Arc::clone(&self.factory);
            let handle = self.handle.clone();
            let t = std::thread::Builder::new().name(format!("sockeye-{i}")).spawn(move || {
                let handler = factory();
                prep.run(i, cfg, handle, handler, stats)
            })?;
            threads.push(t);
        }
        let mut result = Ok(());
        for t in threads {
            match t.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    log::error!("worker failed: {e}");
                    self.handle.shutdown();
                    result = result.and(Err(Error::Io(e)));
                }
                Err(_) => {
                    self.handle.shutdown();
                    result = result.and(Err(Error::WorkerPanicked));
                }
            }
        }
        #[cfg(feature = "cluster")]
        if let Some(b) = bridge {
            b.stop();
        }
        result
    }
}
