//! wss://: TLS in the worker, with rustls driven sans-IO.
//!
//! A TLS connection is a [`rustls::server::UnbufferedServerConnection`] beside the WebSocket
//! state, driven by the worker core exactly like `proto::Connection`: the backend hands the
//! core ciphertext (in epoll's worker buffer or io_uring's provided buffers), rustls decrypts
//! each record where it lies, and the plaintext goes to `proto`; a record cut by the end of a
//! read is carried (only its bytes) until the next read completes it. What a turn queued for
//! the connection stays plaintext in its send queue until the backend asks for the bytes
//! (`Core::pending` / `Core::take_out`), when it is sealed into as few records as fit (up to
//! 16 KiB each) in the queue's place. Between messages a connection holds no TLS buffer. No
//! extra thread, no async runtime.
//!
//! The crypto provider is aws-lc-rs (the crate's default `aws-lc-rs` feature), or *ring*
//! without it ([`TlsConfig::PROVIDER`]); `benches/README.md` ("The crypto provider") has the
//! measurements that chose the default.

use std::fmt;
use std::io;
use std::path::Path;
use std::sync::{Arc, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

/// A server's certificate chain and private key, in PEM, and optionally the CA that client
/// certificates must chain to.
///
/// ```no_run
/// use sockeye::{Conn, Handler, Message, Server, TlsConfig};
/// struct Echo;
/// impl Handler for Echo {
///     type Data = ();
///     fn on_message(&mut self, conn: &mut Conn<'_, ()>, msg: Message<'_>) {
///         conn.send(msg);
///     }
/// }
/// let tls = TlsConfig::from_pem_files("cert.pem", "key.pem")?;
/// let server = Server::builder().listen("0.0.0.0:443").tls(tls).handler(|| Echo).build()?;
/// server.run()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct TlsConfig {
    cert_chain_pem: Vec<u8>,
    key_pem: Vec<u8>,
    client_ca_pem: Option<Vec<u8>>,
    client_cert_required: bool,
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key.
        f.debug_struct("TlsConfig")
            .field("cert_chain_pem", &format_args!("{} bytes", self.cert_chain_pem.len()))
            .field("client_ca", &self.client_ca_pem.is_some())
            .field("client_cert_required", &self.client_cert_required)
            .finish_non_exhaustive()
    }
}

impl TlsConfig {
    /// The crypto provider this build's TLS runs on: `"aws-lc-rs"` (the crate's `aws-lc-rs`
    /// feature, on by default) or `"ring"` (built without default features).
    pub const PROVIDER: &'static str =
        if cfg!(feature = "aws-lc-rs") { "aws-lc-rs" } else { "ring" };

    /// A certificate chain (the server's certificate first, then its intermediates) and its
    /// private key (PKCS#8, PKCS#1 or SEC1), both PEM. Checked when the server is built.
    pub fn from_pem(cert_chain: impl Into<Vec<u8>>, key: impl Into<Vec<u8>>) -> Self {
        Self {
            cert_chain_pem: cert_chain.into(),
            key_pem: key.into(),
            client_ca_pem: None,
            client_cert_required: false,
        }
    }

    /// Reads [`TlsConfig::from_pem`]'s two PEM files.
    ///
    /// # Errors
    ///
    /// Either file cannot be read; the error names it.
    pub fn from_pem_files(cert_chain: impl AsRef<Path>, key: impl AsRef<Path>) -> io::Result<Self> {
        let read = |p: &Path| {
            std::fs::read(p)
                .map_err(|e| io::Error::new(e.kind(), format!("reading {}: {e}", p.display())))
        };
        Ok(Self::from_pem(read(cert_chain.as_ref())?, read(key.as_ref())?))
    }

    /// Asks clients for a certificate chaining to one of the CAs in `ca_pem`. With `required`
    /// a client without one fails the handshake; without it, a client may present none, but
    /// one it presents must verify.
    pub fn client_certificates(mut self, ca_pem: impl Into<Vec<u8>>, required: bool) -> Self {
        self.client_ca_pem = Some(ca_pem.into());
        self.client_cert_required = required;
        self
    }

    /// Builds rustls' server configuration: parses the PEM, checks that the certificate is
    /// valid now (an expired or not-yet-valid certificate is refused here, not at the first
    /// handshake) and that the key matches it, and offers ALPN `http/1.1`.
    pub(crate) fn build(&self) -> Result<Arc<ServerConfig>, String> {
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(&self.cert_chain_pem)
                .collect::<Result<_, _>>()
                .map_err(|e| format!("TLS certificate chain: {e}"))?;
        let Some(leaf) = certs.first() else {
            return Err("TLS certificate chain: no CERTIFICATE in the PEM".into());
        };
        check_validity(leaf, UnixTime::now())?;
        let key = PrivateKeyDer::from_pem_slice(&self.key_pem).map_err(|e| match e {
            rustls::pki_types::pem::Error::NoItemsFound => {
                "TLS private key: no PRIVATE KEY in the PEM".to_string()
            }
            e => format!("TLS private key: {e}"),
        })?;
        let provider = Arc::new(provider());
        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?;
        let builder = match &self.client_ca_pem {
            None => builder.with_no_client_auth(),
            Some(pem) => {
                let mut roots = RootCertStore::empty();
                for c in CertificateDer::pem_slice_iter(pem) {
                    let c = c.map_err(|e| format!("TLS client CA: {e}"))?;
                    roots.add(c).map_err(|e| format!("TLS client CA: {e}"))?;
                }
                let v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
                let v = if self.client_cert_required { v } else { v.allow_unauthenticated() };
                builder.with_client_cert_verifier(
                    v.build().map_err(|e| format!("TLS client CA: {e}"))?,
                )
            }
        };
        let mut config =
            builder.with_single_cert(certs, key).map_err(|e| format!("TLS certificate: {e}"))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

/// The rustls crypto provider of this build (see [`TlsConfig::PROVIDER`]).
#[cfg(not(feature = "aws-lc-rs"))]
fn provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// The rustls crypto provider of this build (see [`TlsConfig::PROVIDER`]).
#[cfg(feature = "aws-lc-rs")]
fn provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::aws_lc_rs::default_provider()
}

/// Refuses a certificate that is not valid at `now`. rustls never checks the server's own
/// certificate: without this an expired one would only show as every client's handshake
/// failing.
fn check_validity(leaf: &CertificateDer<'_>, now: UnixTime) -> Result<(), String> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| format!("TLS certificate: not a valid X.509 certificate: {e}"))?;
    let v = cert.validity();
    let now = now.as_secs() as i64;
    if now > v.not_after.timestamp() {
        return Err(format!("TLS certificate expired on {}", v.not_after));
    }
    if now < v.not_before.timestamp() {
        return Err(format!("TLS certificate is not valid before {}", v.not_before));
    }
    Ok(())
}

/// The server's TLS configuration in force, swapped by `ServerHandle::reload_tls`: new
/// handshakes take the one current when they start.
#[derive(Debug, Default)]
pub(crate) struct TlsState {
    current: RwLock<Option<Arc<ServerConfig>>>,
}

impl TlsState {
    pub(crate) fn new(config: Option<Arc<ServerConfig>>) -> Self {
        Self { current: RwLock::new(config) }
    }

    pub(crate) fn current(&self) -> Option<Arc<ServerConfig>> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(crate) fn replace(&self, config: Arc<ServerConfig>) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some(config);
    }
}

/// A TLS record's header: content type, version, length.
const HEADER: usize = 5;

/// The longest record body a peer may send (TLS 1.2's ciphertext limit, 2^14 + 2048): a
/// header that claims more is handed to rustls at once, which refuses it.
const MAX_BODY: usize = (16 << 10) + 2048;

/// Room for a record's header, nonce and tag beyond its plaintext (TLS 1.3 AES-GCM takes 22
/// bytes, TLS 1.2 29), and for a key update rustls may put first.
const RECORD_ROOM: usize = 64;

/// What one step of rustls over received ciphertext came to.
#[derive(Debug)]
pub(crate) enum Step {
    /// A record of application data: its plaintext was appended to the buffer given.
    Plain,
    /// rustls did something (a handshake message, records to send): step again.
    Again,
    /// What was given is used up (what is left of it, an incomplete record, is carried).
    More,
    /// The peer's close_notify: the end of its stream.
    PeerClosed,
    Failed(rustls::Error),
}

/// One TLS connection's state in the worker: rustls' unbuffered connection, which decrypts
/// records where they lie (the backend's buffer) and encrypts into the send queue, so no
/// buffer of its own outlives a record.
pub(crate) struct TlsConn {
    conn: rustls::server::UnbufferedServerConnection,
    /// Ciphertext of a record that straddles reads, with any whole records rustls keeps
    /// while it joins a handshake message across them: the next read completes it. Empty,
    /// without an allocation, between records. At most [`CARRY_MAX`] bytes (then
    /// [`CARRY_MAX_OPEN`]).
    carry: Vec<u8>,
    /// Where the last, incomplete record in `carry` starts. Found from bytes rustls has not
    /// seen: it rewrites the records it keeps (joining their payloads in place), so what
    /// lies before this offset is no longer a sequence of record headers.
    carry_tail: usize,
    /// rustls asked for more than `carry` holds.
    carry_blocked: bool,
    /// Records rustls made (its handshake, tickets, alerts), waiting to be queued. They go
    /// before any plaintext still unsealed in the queue: rustls encrypts that after them.
    emitted: Vec<u8>,
    /// Bytes at the front of the connection's send queue that are already ciphertext; the
    /// rest is plaintext still to be sealed.
    pub(crate) sealed: usize,
    /// The handshake completed (counted once).
    pub(crate) established: bool,
    /// Our close_notify is asked for: the write side may be shut once the queue drains.
    pub(crate) notified: bool,
    /// ...and still to be sealed into the queue.
    close_pending: bool,
    /// The peer's close_notify came in (rustls says so once).
    peer_closed: bool,
}

impl fmt::Debug for TlsConn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConn")
            .field("handshaking", &self.conn.is_handshaking())
            .field("carry", &self.carry.len())
            .field("emitted", &self.emitted.len())
            .field("sealed", &self.sealed)
            .field("notified", &self.notified)
            .finish_non_exhaustive()
    }
}

impl TlsConn {
    pub(crate) fn new(config: Arc<ServerConfig>) -> Result<Self, rustls::Error> {
        Ok(Self {
            conn: rustls::server::UnbufferedServerConnection::new(config)?,
            carry: Vec::new(),
            carry_tail: 0,
            carry_blocked: false,
            emitted: Vec::new(),
            sealed: 0,
            established: false,
            notified: false,
            close_pending: false,
            peer_closed: false,
        })
    }

    /// Capacity of the buffers this connection holds for itself (0 between records).
    #[cfg(test)]
    pub(crate) fn held(&self) -> usize {
        self.carry.capacity() + self.emitted.capacity()
    }

    /// Bytes carried now.
    #[cfg(test)]
    pub(crate) fn carried(&self) -> usize {
        self.carry.len()
    }

    /// Whether the handshake is still under way.
    pub(crate) fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// Whether rustls has records to go out (or our close_notify is to be sealed).
    pub(crate) fn wants_write(&self) -> bool {
        !self.emitted.is_empty() || self.close_pending
    }

    /// Asks for our close_notify after whatever is queued; only once the handshake is done
    /// (returns whether it was asked for).
    pub(crate) fn send_close_notify(&mut self) -> bool {
        self.notified = true;
        self.close_pending = self.established && !self.peer_closed;
        self.close_pending
    }

    /// One step over what arrived: a carried record first, completed from `data[at.pos..]`,
    /// else `data[at.pos..]` itself, decrypted in place. Advances `at.pos` past what it took;
    /// plaintext goes to the end of `plain`.
    pub(crate) fn step(&mut self, data: &mut [u8], at: &mut Cursor, plain: &mut Vec<u8>) -> Step {
        if self.peer_closed {
            return Step::PeerClosed;
        }
        if !self.carry.is_empty() {
            if self.carry_blocked {
                if !self.top_up(data, &mut at.pos) {
                    return self.check_carry(0);
                }
                self.carry_blocked = false;
            }
            let (discard, step) = self.step_in(Input::Carry, plain);
            self.discard_carried(discard);
            if !matches!(step, Step::More) {
                return step;
            }
            self.carry_blocked = true;
            return match self.check_carry(0) {
                Step::More if at.pos < data.len() => Step::Again,
                s => s,
            };
        }
        // Where the incomplete record at the end of `data` starts, found before rustls has
        // touched any of it (the carry is empty, so `at.pos` is where a record starts).
        let tail = *at.tail.get_or_insert_with(|| at.pos + whole_records(&data[at.pos..]));
        // Called again when `data` is used up too: rustls may have more to emit (the rest of
        // a flight) before it asks for input.
        let (discard, step) = self.step_in(Input::Data(&mut data[at.pos..]), plain);
        at.pos += discard;
        if matches!(step, Step::More) && at.pos < data.len() {
            // Checked before the copy: the rest of a read may be large.
            if let Step::Failed(e) = self.check_carry(data.len() - at.pos) {
                return Step::Failed(e);
            }
            self.carry.extend_from_slice(&data[at.pos..]);
            self.carry_tail = tail.max(at.pos) - at.pos;
            self.carry_blocked = true;
            at.pos = data.len();
        }
        step
    }

    /// `More`, or a failure once the carry, with `more` bytes added, would hold more than
    /// any record or handshake message rustls accepts needs: [`CARRY_MAX`] during the
    /// handshake, [`CARRY_MAX_OPEN`] after it (a client's only later handshake message is a
    /// 5-byte KeyUpdate). A peer that sends a message in tiny records, or parks the start of
    /// a record, holds no more than that.
    fn check_carry(&self, more: usize) -> Step {
        let max = if self.established { CARRY_MAX_OPEN } else { CARRY_MAX };
        if self.carry.len() + more > max {
            return Step::Failed(rustls::Error::General(format!(
                "more than {max} bytes of records before a message was whole"
            )));
        }
        Step::More
    }

    /// Moves from `data[*pos..]` what the carried record lacks: the rest of its header
    /// (rustls then checks the header before the body comes), else the rest of its body,
    /// else (rustls keeps whole records while it joins a handshake message) the next
    /// record's header. Whether it got all of that.
    fn top_up(&mut self, data: &[u8], pos: &mut usize) -> bool {
        let mut gap = tail_gap(&self.carry[self.carry_tail..]);
        if gap == 0 {
            // The last record is whole: the next one starts here.
            self.carry_tail = self.carry.len();
            gap = HEADER;
        }
        let take = gap.min(data.len() - *pos);
        self.carry.extend_from_slice(&data[*pos..*pos + take]);
        *pos += take;
        if take < gap {
            return false;
        }
        if tail_gap(&self.carry[self.carry_tail..]) == 0 {
            self.carry_tail = self.carry.len();
        }
        true
    }

    /// Drops the first `n` carried bytes; an emptied carry gives its allocation back.
    fn discard_carried(&mut self, n: usize) {
        if n >= self.carry.len() {
            self.carry = Vec::new();
            self.carry_tail = 0;
        } else {
            self.carry.drain(..n);
            self.carry_tail = self.carry_tail.saturating_sub(n);
        }
    }

    fn step_in(&mut self, input: Input<'_>, plain: &mut Vec<u8>) -> (usize, Step) {
        use rustls::unbuffered::ConnectionState as S;
        let input = match input {
            Input::Carry => &mut self.carry[..],
            Input::Data(d) => d,
        };
        let rustls::unbuffered::UnbufferedStatus { mut discard, state } =
            self.conn.process_tls_records(input);
        let step = match state {
            Err(e) => Step::Failed(e),
            Ok(S::ReadTraffic(mut r)) => {
                let mut step = Step::Plain;
                while let Some(rec) = r.next_record() {
                    match rec {
                        Ok(rec) => {
                            discard += rec.discard;
                            plain.extend_from_slice(rec.payload);
                        }
                        Err(e) => {
                            step = Step::Failed(e);
                            break;
                        }
                    }
                }
                step
            }
            Ok(S::EncodeTlsData(mut e)) => match encode(&mut e, &mut self.emitted) {
                Ok(()) => Step::Again,
                Err(e) => Step::Failed(e),
            },
            Ok(S::TransmitTlsData(t)) => {
                // The records wait in `emitted` for the queue; order is all the wire needs.
                t.done();
                Step::Again
            }
            Ok(S::BlockedHandshake | S::WriteTraffic(_)) => Step::More,
            Ok(S::PeerClosed | S::Closed) => {
                self.peer_closed = true;
                Step::PeerClosed
            }
            // Early data is never enabled (`max_early_data_size` stays 0).
            Ok(_) => Step::Failed(rustls::Error::General("unexpected TLS state".into())),
        };
        (discard, step)
    }

    /// Appends to `out` the records rustls made, then `plain` sealed into as few records as
    /// fit (up to 16 KiB each), then our close_notify if it was asked for. Before the
    /// handshake completes only rustls' own records go; the caller keeps the plaintext.
    pub(crate) fn seal_into(
        &mut self,
        plain: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), rustls::Error> {
        use rustls::unbuffered::ConnectionState as S;
        if !self.emitted.is_empty() {
            out.extend_from_slice(&self.emitted);
            self.emitted = Vec::new();
        }
        if !self.established || (plain.is_empty() && !self.close_pending) {
            return Ok(());
        }
        loop {
            // rustls is always given the bytes it last left (what `carry` holds, an
            // incomplete record at most): it may keep offsets into them.
            let status = self.conn.process_tls_records(&mut self.carry);
            let discard = status.discard;
            let done = match status.state? {
                S::EncodeTlsData(mut e) => encode(&mut e, out).map(|()| false),
                S::TransmitTlsData(t) => {
                    t.done();
                    Ok(false)
                }
                S::PeerClosed => {
                    self.peer_closed = true;
                    Ok(false)
                }
                S::WriteTraffic(mut w) => {
                    let mut r = Ok(true);
                    if !plain.is_empty() {
                        let room = plain.len() + (plain.len() / (16 << 10) + 1) * RECORD_ROOM;
                        r = write_with(out, room, |buf| {
                            w.encrypt(plain, buf).map_err(encrypt_error)
                        })
                        .map(|()| true);
                    }
                    if self.close_pending && r.is_ok() {
                        self.close_pending = false;
                        r = write_with(out, RECORD_ROOM, |buf| {
                            w.queue_close_notify(buf).map_err(encrypt_error)
                        })
                        .map(|()| true);
                    }
                    r
                }
                // Both sides closed: nothing more may be sent.
                S::Closed => {
                    self.close_pending = false;
                    Ok(true)
                }
                _ => Err(rustls::Error::General("unexpected TLS state".into())),
            };
            self.discard_carried(discard);
            if done? {
                return Ok(());
            }
        }
    }

    /// Moves the alert rustls made for its last error to `out`, with anything else it had
    /// made to send.
    pub(crate) fn take_alert(&mut self, out: &mut Vec<u8>) {
        use rustls::unbuffered::ConnectionState as S;
        out.append(&mut self.emitted);
        // Only while rustls holds records to send: that state comes before it would look at
        // the input again (which, after a failure mid-buffer, it may expect to be the buffer
        // it failed in).
        while self.conn.wants_write() {
            let status = self.conn.process_tls_records(&mut []);
            match status.state {
                Ok(S::EncodeTlsData(mut e)) => {
                    if encode(&mut e, out).is_err() {
                        return;
                    }
                }
                _ => return,
            }
        }
    }
}

/// Where [`TlsConn::step_in`] reads: its carried record, or the backend's buffer.
enum Input<'a> {
    Carry,
    Data(&'a mut [u8]),
}

/// Where a step over received ciphertext is: the position in the read, and where the read's
/// last, incomplete record starts (found at the first step over it).
#[derive(Debug, Default)]
pub(crate) struct Cursor {
    pos: usize,
    tail: Option<usize>,
}

/// The most a connection carries between reads during its handshake: a handshake message of
/// the most rustls accepts (64 KiB) in whole records, and a record after it.
pub(crate) const CARRY_MAX: usize = (64 << 10) + 2 * (HEADER + MAX_BODY);

/// The same once the handshake is done: a record, and a few kept for a KeyUpdate.
const CARRY_MAX_OPEN: usize = HEADER + MAX_BODY + 1024;

/// How many bytes of `buf` are whole records (up to a header rustls will refuse, where it
/// stops too).
fn whole_records(buf: &[u8]) -> usize {
    let mut off = 0;
    while let Some(h) = buf.get(off..off + HEADER) {
        let len = usize::from(u16::from_be_bytes([h[3], h[4]]));
        if len > MAX_BODY || buf.len() - off < HEADER + len {
            break;
        }
        off += HEADER + len;
    }
    off
}

/// Bytes still missing from the record that starts `rec`: its header's, else its body's; 0
/// when it is whole (or its header is one rustls will refuse).
fn tail_gap(rec: &[u8]) -> usize {
    let Some(h) = rec.get(..HEADER) else { return HEADER - rec.len() };
    let len = usize::from(u16::from_be_bytes([h[3], h[4]]));
    if len > MAX_BODY {
        return 0;
    }
    (HEADER + len).saturating_sub(rec.len())
}

/// rustls' records for an `EncodeTlsData` state, appended to `out`.
fn encode<D>(
    e: &mut rustls::unbuffered::EncodeTlsData<'_, D>,
    out: &mut Vec<u8>,
) -> Result<(), rustls::Error> {
    use rustls::unbuffered::EncodeError;
    write_with(out, 4096, |buf| match e.encode(buf) {
        Ok(n) => Ok(n),
        Err(EncodeError::InsufficientSize(s)) => Err(Ok(s.required_size)),
        // Nothing left to encode.
        Err(EncodeError::AlreadyEncoded) => Ok(0),
    })
}

fn encrypt_error(e: rustls::unbuffered::EncryptError) -> Result<usize, rustls::Error> {
    match e {
        rustls::unbuffered::EncryptError::InsufficientSize(s) => Ok(s.required_size),
        rustls::unbuffered::EncryptError::EncryptExhausted => {
            Err(rustls::Error::General("the connection's TLS keys are used up".into()))
        }
    }
}

/// Runs `f` on `room` zeroed bytes at the end of `out` and keeps the bytes it says it wrote;
/// when it answers that it needs more (`Err(Ok(size))`), again with that much.
fn write_with(
    out: &mut Vec<u8>,
    mut room: usize,
    mut f: impl FnMut(&mut [u8]) -> Result<usize, Result<usize, rustls::Error>>,
) -> Result<(), rustls::Error> {
    let at = out.len();
    loop {
        out.resize(at + room, 0);
        match f(&mut out[at..]) {
            Ok(n) => {
                out.truncate(at + n);
                return Ok(());
            }
            Err(Ok(need)) if need > room => room = need,
            Err(r) => {
                out.truncate(at);
                return Err(r.err().unwrap_or_else(|| {
                    rustls::Error::General("rustls refused the room it asked for".into())
                }));
            }
        }
    }
}

/// Whether `data`, bytes rustls refused as the start of a connection to a TLS port, are
/// plaintext HTTP (a client that meant `ws://`): it gets a plain 400 that says so.
pub(crate) fn looks_like_http(data: &[u8]) -> bool {
    const METHODS: [&[u8]; 8] =
        [b"GET ", b"POST ", b"HEAD ", b"PUT ", b"OPTIONS ", b"DELETE ", b"PATCH ", b"CONNECT "];
    METHODS.iter().any(|m| data.starts_with(m))
}

/// The answer to plaintext HTTP on a TLS port.
pub(crate) const HTTP_ON_TLS_PORT: &[u8] = b"HTTP/1.1 400 Bad Request\r\n\
Content-Type: text/plain\r\nContent-Length: 47\r\nConnection: close\r\n\r\n\
This port speaks TLS: connect with wss/https.\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plaintext_http_is_recognised() {
        assert!(looks_like_http(b"GET / HTTP/1.1\r\n"));
        assert!(looks_like_http(b"POST /x"));
        assert!(!looks_like_http(&[0x16, 0x03, 0x01, 0x02, 0x00]));
        assert!(!looks_like_http(b"GE"));
        assert!(!looks_like_http(b"GETX"));
    }

    /// The server's config runs on the provider `PROVIDER` names: its AES-256-GCM suite is
    /// that provider's own (the same static), not the other's.
    #[test]
    fn the_config_uses_the_provider_of_this_build() {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
        let cert = params.self_signed(&key).unwrap();
        let config = TlsConfig::from_pem(cert.pem(), key.serialize_pem()).build().unwrap();
        // The provider's AES-256-GCM suite, by address.
        let aes256 = |p: &rustls::crypto::CryptoProvider| {
            p.cipher_suites.iter().find_map(|s| match s {
                rustls::SupportedCipherSuite::Tls13(s)
                    if s.common.suite == rustls::CipherSuite::TLS13_AES_256_GCM_SHA384 =>
                {
                    Some(*s as *const rustls::Tls13CipherSuite)
                }
                _ => None,
            })
        };
        let of = |p: rustls::crypto::CryptoProvider| aes256(&p);
        let ours = aes256(config.crypto_provider());
        assert!(ours.is_some());
        // CI's `unit` and `ring` stages say which provider the build must have.
        if let Ok(want) = std::env::var("SOCKEYE_EXPECT_PROVIDER") {
            assert_eq!(TlsConfig::PROVIDER, want);
        }
        assert_eq!(ours, of(provider()));
        let ring = of(rustls::crypto::ring::default_provider());
        assert_eq!(ours == ring, TlsConfig::PROVIDER == "ring", "{}", TlsConfig::PROVIDER);
        #[cfg(feature = "aws-lc-rs")]
        assert_eq!(ours, of(rustls::crypto::aws_lc_rs::default_provider()));
    }

    /// The carry's bound: a handshake message's worth while handshaking, one record and a
    /// KeyUpdate's worth once established; the rest of a read counts before it is copied.
    #[test]
    fn the_carry_bound_tightens_once_the_handshake_is_done() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let config = TlsConfig::from_pem(cert.pem(), key.serialize_pem()).build().unwrap();
        let mut t = TlsConn::new(config).unwrap();
        let ok = |s: Step| matches!(s, Step::More);
        t.carry = vec![0; CARRY_MAX_OPEN + 1];
        assert!(ok(t.check_carry(0)), "handshaking: a 64 KiB message may be joined");
        assert!(ok(t.check_carry(CARRY_MAX - CARRY_MAX_OPEN - 1)));
        assert!(!ok(t.check_carry(CARRY_MAX - CARRY_MAX_OPEN)), "past CARRY_MAX");
        t.established = true;
        assert!(!ok(t.check_carry(0)), "open: more than a record and a KeyUpdate");
        t.carry = vec![0; HEADER + MAX_BODY];
        assert!(ok(t.check_carry(0)), "open: a whole record's worth waits");
        assert!(!ok(t.check_carry(1025)));
    }

    #[test]
    fn the_400_body_length_is_right() {
        let s = std::str::from_utf8(HTTP_ON_TLS_PORT).unwrap();
        let (head, body) = s.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
    }
}
