//! The server side of the RFC 6455 opening handshake (§4.2): parse and validate the client's
//! HTTP/1.1 Upgrade request, compute `Sec-WebSocket-Accept`, write the 101 or the 4xx response.
//!
//! This module owns what a valid upgrade request is and which HTTP status each invalid one gets
//! ([`HandshakeError::status`] is the one mapping). It is sans-IO and zero copy: a [`Request`]
//! borrows every string from the caller's read buffer, and responses are appended to a `Vec`
//! the caller owns. It never reads a socket, never allocates while parsing, and never panics on
//! input: every byte sequence yields [`Parsed::Partial`], [`Parsed::Complete`] or an error.
//!
//! Status codes chosen for bad requests:
//!
//! | what                                               | status |
//! |----------------------------------------------------|--------|
//! | head larger than `max_head`, more than 64 headers  | 431    |
//! | method other than `GET`                            | 405 (+ `Allow: GET`) |
//! | `Sec-WebSocket-Version` present but not `13`       | 426 (+ `Sec-WebSocket-Version: 13`, `Upgrade: websocket`) |
//! | everything else (syntax, HTTP/1.0, no Host, no `Upgrade: websocket` (a plain GET), no `Connection: Upgrade`, no version, bad key, a body) | 400 |
//!
//! A plain GET without `Upgrade: websocket` gets 400 rather than 426: the endpoint speaks
//! nothing but WebSocket, and a 400 whose body says so is the clearest answer to a client that
//! did not ask to upgrade. 405 is used for other methods because RFC 9110 §15.5.6 defines it for
//! exactly that case, and its mandatory `Allow` header tells the client what would have worked.
//!
//! The parser re-reads the head from the start on every call; callers that feed it a byte at a
//! time pay O(n²) in the head size, which `max_head` bounds.
//!
//! ```
//! use sockeye::proto::handshake::{
//!     accept_key, parse_request, write_accept, write_error, Parsed, DEFAULT_MAX_HEAD,
//! };
//!
//! let read: &[u8] = b"GET /chat?room=1 HTTP/1.1\r\nHost: example.com\r\n\
//!     Upgrade: websocket\r\nConnection: Upgrade\r\n\
//!     Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
//! let mut out = Vec::new();
//! match parse_request(read, DEFAULT_MAX_HEAD) {
//!     Ok(Parsed::Complete(req, consumed)) => {
//!         assert_eq!((req.path(), req.query()), ("/chat", Some("room=1")));
//!         write_accept(&accept_key(req.key().as_bytes()), None, &[], &mut out);
//!         // Frames the client sent right behind its request start at read[consumed..].
//!         assert_eq!(consumed, read.len());
//!     }
//!     Ok(Parsed::Partial) => { /* read more, then parse the whole buffer again */ }
//!     Err(e) => write_error(&e, &mut out), // then close the connection
//! }
//! assert!(out.starts_with(b"HTTP/1.1 101 Switching Protocols\r\n"));
//! ```

use std::fmt;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use sha1::{Digest, Sha1};

/// Default limit on the size of the request head (request line + headers + blank line).
pub const DEFAULT_MAX_HEAD: usize = 8192;

/// Most headers a request may carry; one more is answered with 431.
pub const MAX_HEADERS: usize = 64;

/// The GUID RFC 6455 §1.3 appends to the client's key.
const WS_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// A validated WebSocket upgrade request, borrowing from the read buffer.
///
/// Only [`parse_request`] builds one, and only for a request that passed every check of
/// RFC 6455 §4.2.1: the getters below cannot fail.
#[derive(Clone)]
pub struct Request<'a> {
    method: &'a str,
    target: &'a str,
    path: &'a str,
    query: Option<&'a str>,
    host: Option<&'a str>,
    origin: Option<&'a str>,
    key: &'a str,
    headers: [httparse::Header<'a>; MAX_HEADERS],
    num_headers: usize,
    deflate: Option<crate::proto::PerMessageDeflate>,
}

impl<'a> Request<'a> {
    /// The permessage-deflate parameters the 101 will carry if the request is accepted as it
    /// is: `Some` when the server enables compression and the client offered something it
    /// can honour. A handler that wants this connection uncompressed says so when it
    /// accepts (`Upgrade::without_compression` in the server API).
    pub fn permessage_deflate(&self) -> Option<crate::proto::PerMessageDeflate> {
        self.deflate
    }

    pub(crate) fn set_permessage_deflate(&mut self, d: Option<crate::proto::PerMessageDeflate>) {
        self.deflate = d;
    }

    /// The request method (always `GET` from [`parse_request`]).
    pub fn method(&self) -> &'a str {
        self.method
    }

    /// The path of the request target, without the query. For an absolute-form target
    /// (`ws://host/chat`), the path after the authority (`/` when empty).
    pub fn path(&self) -> &'a str {
        self.path
    }

    /// What follows the first `?` of the request target, if there is one.
    pub fn query(&self) -> Option<&'a str> {
        self.query
    }

    /// The request target exactly as sent.
    pub fn target(&self) -> &'a str {
        self.target
    }

    /// The value of the first header called `name` (ASCII case-insensitive).
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        self.headers().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v)
    }

    /// Every header, in the order sent.
    pub fn headers(&self) -> impl Iterator<Item = (&'a str, &'a [u8])> + '_ {
        self.headers[..self.num_headers].iter().map(|h| (h.name, h.value))
    }

    /// The `Host` header. [`parse_request`] refuses a request without exactly one, so this is
    /// `None` only for a request from [`parse_http`].
    pub fn host(&self) -> Option<&'a str> {
        self.host
    }

    /// The `Origin` header (browsers always send it), checked to be printable ASCII.
    pub fn origin(&self) -> Option<&'a str> {
        self.origin
    }

    /// The `Sec-WebSocket-Key` header, trimmed; it decodes to 16 bytes. Feed it to
    /// [`accept_key`]. Empty for a request from [`parse_http`].
    pub fn key(&self) -> &'a str {
        self.key
    }

    /// Every subprotocol the client offers, in order: all `Sec-WebSocket-Protocol` headers,
    /// comma-split, trimmed, empty items skipped. Each item is an HTTP token.
    pub fn protocols(&self) -> impl Iterator<Item = &'a str> + '_ {
        self.list("sec-websocket-protocol")
    }

    /// Every extension offer, raw with its parameters (`permessage-deflate; client_max_window_bits`),
    /// trimmed, over all `Sec-WebSocket-Extensions` headers. Commas inside quoted strings do not
    /// split.
    pub fn extensions(&self) -> impl Iterator<Item = &'a str> + '_ {
        self.list("sec-websocket-extensions")
    }

    fn list(&self, name: &'static str) -> impl Iterator<Item = &'a str> + '_ {
        self.headers()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| ListItems::new(v))
            // Parsing checked these values are ASCII, so this never drops anything.
            .filter_map(|item| std::str::from_utf8(item).ok())
    }
}

impl fmt::Debug for Request<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct Headers<'r, 'a>(&'r Request<'a>);
        impl fmt::Debug for Headers<'_, '_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_list()
                    .entries(
                        self.0.headers().map(|(n, v)| (n, String::from_utf8_lossy(v).into_owned())),
                    )
                    .finish()
            }
        }
        f.debug_struct("Request")
            .field("method", &self.method)
            .field("target", &self.target)
            .field("host", &self.host)
            .field("key", &self.key)
            .field("headers", &Headers(self))
            .finish()
    }
}

/// The outcome of [`parse_request`] on the bytes read so far.
#[derive(Debug)]
// The big variant is a fixed header table; boxing it would cost an allocation per handshake.
#[allow(clippy::large_enum_variant)]
pub enum Parsed<'a> {
    /// The head is not complete yet: read more and call again with the whole buffer.
    Partial,
    /// A valid upgrade request, and how many bytes of the buffer its head took. Bytes after
    /// that (frames the client pipelined) are not part of it.
    Complete(Request<'a>, usize),
}

/// Why an upgrade request was refused. [`HandshakeError::status`] says which HTTP status goes
/// back; [`write_error`] writes the whole response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The head is not valid HTTP/1.1 syntax, or a header's value is malformed; the reason says
    /// which.
    Malformed(&'static str),
    /// The method is not `GET`.
    MethodNotAllowed,
    /// The HTTP version is not 1.1 (HTTP/1.0 cannot upgrade; 2.0 is not HTTP/1 syntax).
    BadVersion,
    /// No `Host` header.
    MissingHost,
    /// More than one `Host` header, or an empty or non-ASCII one.
    BadHost,
    /// No `Upgrade` header with the `websocket` token: a plain HTTP request.
    NotUpgrade,
    /// No `Connection` header with the `Upgrade` token.
    MissingConnectionUpgrade,
    /// No `Sec-WebSocket-Version` header.
    MissingVersion,
    /// A `Sec-WebSocket-Version` other than 13.
    UnsupportedVersion,
    /// `Sec-WebSocket-Key` missing, repeated, or not the base64 of exactly 16 bytes.
    BadKey,
    /// The request has a body (`Content-Length` > 0 or any `Transfer-Encoding`).
    HasBody,
    /// The head is longer than the configured limit.
    HeadTooLarge,
    /// More than [`MAX_HEADERS`] headers.
    TooManyHeaders,
}

impl HandshakeError {
    /// The HTTP status this error is answered with: the one mapping from errors to the wire.
    pub fn status(&self) -> u16 {
        use HandshakeError::*;
        match self {
            HeadTooLarge | TooManyHeaders => 431,
            MethodNotAllowed => 405,
            UnsupportedVersion => 426,
            Malformed(_)
            | BadVersion
            | MissingHost
            | BadHost
            | NotUpgrade
            | MissingConnectionUpgrade
            | MissingVersion
            | BadKey
            | HasBody => 400,
        }
    }

    /// Whether the request was a well-formed HTTP/1.1 GET that simply did not ask to upgrade
    /// (no `Upgrade: websocket`): one the application may answer as plain HTTP through
    /// [`parse_http`] and [`write_response`] instead of the 400 from [`write_error`].
    pub fn is_plain_http(&self) -> bool {
        matches!(self, HandshakeError::NotUpgrade)
    }
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use HandshakeError::*;
        let s = match self {
            Malformed(why) => return write!(f, "malformed request: {why}"),
            MethodNotAllowed => "method is not GET",
            BadVersion => "HTTP version is not 1.1",
            MissingHost => "missing Host header",
            BadHost => "invalid or repeated Host header",
            NotUpgrade => "not a WebSocket upgrade request (no `Upgrade: websocket`)",
            MissingConnectionUpgrade => "missing `Connection: Upgrade`",
            MissingVersion => "missing Sec-WebSocket-Version",
            UnsupportedVersion => "unsupported Sec-WebSocket-Version (only 13 is)",
            BadKey => "missing, repeated or invalid Sec-WebSocket-Key",
            HasBody => "upgrade request has a body",
            HeadTooLarge => "request head too large",
            TooManyHeaders => "too many headers",
        };
        f.write_str(s)
    }
}

impl std::error::Error for HandshakeError {}

/// Parses and validates a WebSocket upgrade request at the start of `buf`.
///
/// `buf` is everything read so far; call again with the longer buffer after
/// [`Parsed::Partial`]. At most `max_head` bytes are ever examined: a head that has not ended by
/// then is [`HandshakeError::HeadTooLarge`], whether or not more of it has arrived.
pub fn parse_request(buf: &[u8], max_head: usize) -> Result<Parsed<'_>, HandshakeError> {
    let Some(head) = parse_head(buf, max_head)? else {
        return Ok(Parsed::Partial);
    };
    if head.version != 1 {
        return Err(HandshakeError::BadVersion);
    }
    if head.method != "GET" {
        return Err(HandshakeError::MethodNotAllowed);
    }
    let (path, query) = split_target(head.target)?;
    let fields = scan_headers(&head.headers[..head.num_headers])?;
    Ok(Parsed::Complete(
        Request {
            method: head.method,
            target: head.target,
            path,
            query,
            host: Some(fields.host),
            origin: fields.origin,
            key: fields.key,
            headers: head.headers,
            num_headers: head.num_headers,
            deflate: None,
        },
        head.consumed,
    ))
}

/// Parses any syntactically valid HTTP/1.x request head, without the WebSocket checks.
///
/// For answering a plain HTTP request (one [`parse_request`] refused with an error whose
/// [`HandshakeError::is_plain_http`] is true) with [`write_response`]. Limits and syntax are
/// enforced exactly as in [`parse_request`]; nothing else is. In the [`Request`] it returns,
/// [`Request::key`] is empty, [`Request::host`] and [`Request::origin`] are `None` unless
/// present once as printable ASCII, and the protocol and extension lists skip non-ASCII items.
pub fn parse_http(buf: &[u8], max_head: usize) -> Result<Parsed<'_>, HandshakeError> {
    let Some(head) = parse_head(buf, max_head)? else {
        return Ok(Parsed::Partial);
    };
    let (path, query) = split_target(head.target)?;
    let headers = &head.headers[..head.num_headers];
    let single_ascii = |name: &str| {
        let mut found = headers.iter().filter(|h| h.name.eq_ignore_ascii_case(name));
        match (found.next(), found.next()) {
            (Some(h), None) => {
                let v = trim(h.value);
                (!v.is_empty() && v.iter().all(u8::is_ascii_graphic)).then(|| ascii(v))
            }
            _ => None,
        }
    };
    let (host, origin) = (single_ascii("host"), single_ascii("origin"));
    Ok(Parsed::Complete(
        Request {
            method: head.method,
            target: head.target,
            path,
            query,
            host,
            origin,
            key: "",
            headers: head.headers,
            num_headers: head.num_headers,
            deflate: None,
        },
        head.consumed,
    ))
}

/// A syntactically valid request head, before any WebSocket check.
struct Head<'a> {
    method: &'a str,
    target: &'a str,
    /// Minor version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    version: u8,
    headers: [httparse::Header<'a>; MAX_HEADERS],
    num_headers: usize,
    consumed: usize,
}

#[cfg(test)]
thread_local! {
    /// Heads parsed on this thread (tests count re-parses).
    pub(crate) static PARSES: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Runs httparse over at most `max_head` bytes of `buf`; `None` while the head is incomplete.
fn parse_head(buf: &[u8], max_head: usize) -> Result<Option<Head<'_>>, HandshakeError> {
    #[cfg(test)]
    PARSES.with(|p| p.set(p.get() + 1));
    let window = &buf[..buf.len().min(max_head)];
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    // httparse borrows the header table only while parsing; the headers themselves borrow
    // `buf`, so the table moves into the result afterwards without copying a byte of input.
    let (status, method, target, version, num_headers) = {
        let mut req = httparse::Request::new(&mut headers);
        let status = req.parse(window);
        (status, req.method, req.path, req.version, req.headers.len())
    };
    let consumed = match status {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > max_head => {
            return Err(HandshakeError::HeadTooLarge)
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(from_httparse(e)),
    };
    // httparse fills all three before it can return Complete.
    let (Some(method), Some(target), Some(version)) = (method, target, version) else {
        return Err(HandshakeError::Malformed("incomplete request line"));
    };
    Ok(Some(Head { method, target, version, headers, num_headers, consumed }))
}

fn from_httparse(e: httparse::Error) -> HandshakeError {
    use httparse::Error as E;
    match e {
        E::TooManyHeaders => HandshakeError::TooManyHeaders,
        E::Version => HandshakeError::BadVersion,
        E::HeaderName => HandshakeError::Malformed("invalid header name"),
        E::HeaderValue => HandshakeError::Malformed("invalid header value"),
        E::NewLine => HandshakeError::Malformed("invalid line ending"),
        E::Token => HandshakeError::Malformed("invalid request line"),
        _ => HandshakeError::Malformed("invalid HTTP syntax"),
    }
}

/// Splits an origin-form (`/p?q`) or absolute-form (`ws://h/p?q`) target into path and query.
fn split_target(target: &str) -> Result<(&str, Option<&str>), HandshakeError> {
    let rest = if target.starts_with('/') {
        target
    } else {
        let bad = HandshakeError::Malformed("request target is neither a path nor an absolute URI");
        let (scheme, after) = target.split_once("://").ok_or(bad)?;
        let mut chars = scheme.bytes();
        let scheme_ok = chars.next().is_some_and(|b| b.is_ascii_alphabetic())
            && chars.all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b));
        if !scheme_ok {
            return Err(bad);
        }
        let end = after.find(['/', '?', '#']).unwrap_or(after.len());
        &after[end..]
    };
    let (path, query) = match rest.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (rest, None),
    };
    Ok((if path.is_empty() { "/" } else { path }, query))
}

/// What [`scan_headers`] extracts from a valid request.
struct Fields<'a> {
    host: &'a str,
    origin: Option<&'a str>,
    key: &'a str,
}

/// One pass over the headers: every §4.2.1 check, returning the values [`Request`] keeps.
fn scan_headers<'a>(headers: &[httparse::Header<'a>]) -> Result<Fields<'a>, HandshakeError> {
    let mut host: Option<&'a [u8]> = None;
    let mut hosts = 0u32;
    let mut origin: Option<&'a [u8]> = None;
    let mut key: Option<&'a [u8]> = None;
    let mut keys = 0u32;
    let mut version: Option<&'a [u8]> = None;
    let mut versions = 0u32;
    let mut upgrade = false;
    let mut connection = false;
    let mut body = false;

    for h in headers {
        let name = h.name;
        let value = trim(h.value);
        if name.eq_ignore_ascii_case("host") {
            hosts += 1;
            host = Some(value);
        } else if name.eq_ignore_ascii_case("upgrade") {
            upgrade |= header_has_token(value, "websocket");
        } else if name.eq_ignore_ascii_case("connection") {
            connection |= header_has_token(value, "upgrade");
        } else if name.eq_ignore_ascii_case("sec-websocket-key") {
            keys += 1;
            key = Some(value);
        } else if name.eq_ignore_ascii_case("sec-websocket-version") {
            versions += 1;
            version = Some(value);
        } else if name.eq_ignore_ascii_case("sec-websocket-protocol") {
            if !ListItems::new(value).all(is_token) {
                return Err(HandshakeError::Malformed("invalid Sec-WebSocket-Protocol"));
            }
        } else if name.eq_ignore_ascii_case("sec-websocket-extensions") {
            if !value.iter().all(|&b| is_field_char(b)) {
                return Err(HandshakeError::Malformed("invalid Sec-WebSocket-Extensions"));
            }
        } else if name.eq_ignore_ascii_case("origin") {
            if origin.is_some() {
                return Err(HandshakeError::Malformed("repeated Origin"));
            }
            if !value.iter().all(|&b| b.is_ascii_graphic()) {
                return Err(HandshakeError::Malformed("invalid Origin"));
            }
            origin = Some(value);
        } else if name.eq_ignore_ascii_case("content-length") {
            if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
                return Err(HandshakeError::Malformed("invalid Content-Length"));
            }
            body |= value.iter().any(|&b| b != b'0');
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            body = true;
        }
    }

    let host = match (host, hosts) {
        (None, _) => return Err(HandshakeError::MissingHost),
        (Some(h), 1) if !h.is_empty() && h.iter().all(|b| b.is_ascii_graphic()) => ascii(h),
        _ => return Err(HandshakeError::BadHost),
    };
    if body {
        return Err(HandshakeError::HasBody);
    }
    if !upgrade {
        return Err(HandshakeError::NotUpgrade);
    }
    if !connection {
        return Err(HandshakeError::MissingConnectionUpgrade);
    }
    match (version, versions) {
        (None, _) => return Err(HandshakeError::MissingVersion),
        (Some(b"13"), 1) => {}
        (Some(_), 1) => return Err(HandshakeError::UnsupportedVersion),
        _ => return Err(HandshakeError::Malformed("repeated Sec-WebSocket-Version")),
    }
    let key = match (key, keys) {
        (Some(k), 1) if is_valid_key(k) => ascii(k),
        _ => return Err(HandshakeError::BadKey),
    };
    Ok(Fields { host, origin: origin.map(ascii), key })
}

/// A `Sec-WebSocket-Key` must be canonical padded base64 of exactly 16 bytes (24 characters).
fn is_valid_key(key: &[u8]) -> bool {
    let mut out = [0u8; 18];
    key.len() == 24 && matches!(BASE64.decode_slice(key, &mut out), Ok(16))
}

/// `bytes` as `&str`; callers have checked they are ASCII (empty on the impossible failure).
fn ascii(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).unwrap_or_default()
}

/// Strips optional whitespace (SP, HTAB) from both ends.
fn trim(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

/// RFC 9110 tchar.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A non-empty RFC 9110 token.
fn is_token(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(|&b| is_tchar(b))
}

/// Printable ASCII, space or tab: what we accept in structured WebSocket header values.
fn is_field_char(b: u8) -> bool {
    b == b'\t' || (b' '..=b'~').contains(&b)
}

/// The items of an HTTP comma-separated list, trimmed, empty ones skipped. A comma inside a
/// quoted string (with `\` escapes) does not split.
struct ListItems<'a> {
    rest: &'a [u8],
}

impl<'a> ListItems<'a> {
    fn new(value: &'a [u8]) -> Self {
        Self { rest: value }
    }
}

impl<'a> Iterator for ListItems<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        while !self.rest.is_empty() {
            let mut quoted = false;
            let mut escaped = false;
            let mut end = self.rest.len();
            for (i, &b) in self.rest.iter().enumerate() {
                if escaped {
                    escaped = false;
                } else if quoted && b == b'\\' {
                    escaped = true;
                } else if b == b'"' {
                    quoted = !quoted;
                } else if b == b',' && !quoted {
                    end = i;
                    break;
                }
            }
            let item = trim(&self.rest[..end]);
            self.rest = self.rest.get(end + 1..).unwrap_or_default();
            if !item.is_empty() {
                return Some(item);
            }
        }
        None
    }
}

/// Whether the comma-separated header `value` contains `token` (trimmed, ASCII
/// case-insensitive), as in `Connection: keep-alive, Upgrade`.
pub fn header_has_token(value: &[u8], token: &str) -> bool {
    value.split(|&b| b == b',').any(|item| trim(item).eq_ignore_ascii_case(token.as_bytes()))
}

/// `Sec-WebSocket-Accept` for a client key: base64(SHA-1(key + GUID)) (RFC 6455 §4.2.2).
pub fn accept_key(key: &[u8]) -> [u8; 28] {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(WS_GUID);
    let digest = sha.finalize();
    let mut out = [0u8; 28];
    // 20 bytes always encode to exactly 28 padded characters, so this cannot fail.
    let written = BASE64.encode_slice(digest, &mut out);
    debug_assert_eq!(written, Ok(28));
    out
}

/// Headers the engine writes itself in a 101; extra headers with these names are skipped.
const ACCEPT_OWNED: &[&str] = &[
    "upgrade",
    "connection",
    "sec-websocket-accept",
    "sec-websocket-protocol",
    "sec-websocket-extensions",
    "content-length",
    "transfer-encoding",
];

/// Appends a `101 Switching Protocols` response to `out`.
///
/// `protocol` is the subprotocol picked from [`Request::protocols`]; it is written only if it
/// is an HTTP token. `extra_headers` follow; a header whose name is not a token, whose value
/// holds CR, LF or NUL, or whose name is one of those this function writes itself (including
/// `Sec-WebSocket-Extensions`, which only the negotiation may answer: see
/// [`write_accept_with_extensions`]) is skipped, so a buggy handler cannot inject headers.
pub fn write_accept(
    accept: &[u8; 28],
    protocol: Option<&str>,
    extra_headers: &[(&str, &str)],
    out: &mut Vec<u8>,
) {
    write_accept_with_extensions(accept, protocol, None, extra_headers, out);
}

/// [`write_accept`] with the negotiated `Sec-WebSocket-Extensions` value (for example
/// [`super::extensions::PerMessageDeflate`]'s), written when it is `Some` and safe (no CR,
/// LF or NUL).
pub fn write_accept_with_extensions(
    accept: &[u8; 28],
    protocol: Option<&str>,
    extensions: Option<&str>,
    extra_headers: &[(&str, &str)],
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Accept: ",
    );
    out.extend_from_slice(accept);
    out.extend_from_slice(b"\r\n");
    if let Some(p) = protocol.filter(|p| is_token(p.as_bytes())) {
        push_header(out, "Sec-WebSocket-Protocol", p);
    }
    if let Some(e) = extensions.filter(|e| !e.is_empty() && is_safe_value(e)) {
        push_header(out, "Sec-WebSocket-Extensions", e);
    }
    push_extra(out, extra_headers, ACCEPT_OWNED, &[]);
    out.extend_from_slice(b"\r\n");
}

/// Headers every rejection carries; extra headers with these names are skipped.
const REJECT_OWNED: &[&str] =
    &["connection", "content-type", "content-length", "transfer-encoding"];

/// Appends a complete HTTP/1.1 error response with the given status to `out`.
///
/// It carries `Connection: close`, a `text/plain` body holding the reason phrase, and then
/// `extra_headers` (filtered as in [`write_accept`]). A 426 adds `Sec-WebSocket-Version: 13`
/// and `Upgrade: websocket`, a 405 adds `Allow: GET`; extra headers with those names are then
/// skipped. A status outside 200..=599 (an interim or nonsensical code) is written as 500.
pub fn write_reject(status: u16, extra_headers: &[(&str, &str)], out: &mut Vec<u8>) {
    let status = push_status_line(status, out);
    let reason = reason_phrase(status);
    out.extend_from_slice(b"Content-Type: text/plain\r\nContent-Length: ");
    push_decimal(out, reason.len());
    out.extend_from_slice(b"\r\n");
    let auto = push_status_headers(status, out);
    push_extra(out, extra_headers, REJECT_OWNED, auto);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(reason.as_bytes());
}

/// Appends the response for a failed handshake: [`write_reject`] with [`HandshakeError::status`].
pub fn write_error(err: &HandshakeError, out: &mut Vec<u8>) {
    write_reject(err.status(), &[], out);
}

/// Appends a complete plain HTTP/1.1 response (for a request from [`parse_http`]) to `out`.
///
/// Status handling and the 405/426 headers are those of [`write_reject`]; it carries
/// `Connection: close`, `Content-Type` (left out if empty or holding CR, LF or NUL),
/// `Content-Length` and `body`. A 204 or 304 gets neither length nor body.
pub fn write_response(status: u16, content_type: &str, body: &[u8], out: &mut Vec<u8>) {
    write_response_with(status, content_type, &[], body, out);
}

/// Headers every plain response carries (or, for Content-Length, leaves out on purpose);
/// extra headers with these names are skipped.
const RESPONSE_OWNED: &[&str] =
    &["connection", "content-type", "content-length", "transfer-encoding"];

/// [`write_response`] with `extra_headers` after the engine's own (`Cache-Control`,
/// `Location`, `Set-Cookie`, ...), filtered as in [`write_accept`]: a name that is not a token,
/// a value holding CR, LF or NUL, and the headers the engine writes itself (`Connection`,
/// `Content-Type`, `Content-Length`, `Transfer-Encoding`, and the 405/426 ones) are skipped.
pub fn write_response_with(
    status: u16,
    content_type: &str,
    extra_headers: &[(&str, &str)],
    body: &[u8],
    out: &mut Vec<u8>,
) {
    let status = push_status_line(status, out);
    if !content_type.is_empty() && is_safe_value(content_type) {
        push_header(out, "Content-Type", content_type);
    }
    let body = if matches!(status, 204 | 304) {
        &[][..]
    } else {
        out.extend_from_slice(b"Content-Length: ");
        push_decimal(out, body.len());
        out.extend_from_slice(b"\r\n");
        body
    };
    let auto = push_status_headers(status, out);
    push_extra(out, extra_headers, RESPONSE_OWNED, auto);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

/// Writes the status line and `Connection: close`; returns the status actually written
/// (anything outside 200..=599 becomes 500).
fn push_status_line(status: u16, out: &mut Vec<u8>) -> u16 {
    let status = if (200..=599).contains(&status) { status } else { 500 };
    out.extend_from_slice(b"HTTP/1.1 ");
    push_decimal(out, usize::from(status));
    out.push(b' ');
    out.extend_from_slice(reason_phrase(status).as_bytes());
    out.extend_from_slice(b"\r\nConnection: close\r\n");
    status
}

/// Writes the headers a status requires (426: the version we speak; 405: the method we allow)
/// and returns their lowercase names.
fn push_status_headers(status: u16, out: &mut Vec<u8>) -> &'static [&'static str] {
    match status {
        426 => {
            out.extend_from_slice(b"Sec-WebSocket-Version: 13\r\nUpgrade: websocket\r\n");
            &["sec-websocket-version", "upgrade"]
        }
        405 => {
            out.extend_from_slice(b"Allow: GET\r\n");
            &["allow"]
        }
        _ => &[],
    }
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

/// A header value that cannot end its line early: no CR, LF or NUL.
fn is_safe_value(value: &str) -> bool {
    !value.bytes().any(|b| matches!(b, b'\r' | b'\n' | 0))
}

fn push_extra(out: &mut Vec<u8>, extra: &[(&str, &str)], owned: &[&str], auto: &[&str]) {
    for &(name, value) in extra {
        let taken = owned.iter().chain(auto).any(|o| o.eq_ignore_ascii_case(name));
        if is_token(name.as_bytes()) && is_safe_value(value) && !taken {
            push_header(out, name, value);
        }
    }
}

fn push_header(out: &mut Vec<u8>, name: &str, value: &str) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
}

fn push_decimal(out: &mut Vec<u8>, mut n: usize) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// RFC 6455 §1.3's sample handshake.
    const RFC_REQUEST: &[u8] = b"GET /chat HTTP/1.1\r\n\
        Host: server.example.com\r\n\
        Upgrade: websocket\r\n\
        Connection: Upgrade\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Origin: http://example.com\r\n\
        Sec-WebSocket-Protocol: chat, superchat\r\n\
        Sec-WebSocket-Version: 13\r\n\
        \r\n";

    /// A valid request with `extra` header lines (each ending in CRLF) appended.
    fn request_with(extra: &str) -> Vec<u8> {
        let mut r = RFC_REQUEST[..RFC_REQUEST.len() - 2].to_vec();
        r.extend_from_slice(extra.as_bytes());
        r.extend_from_slice(b"\r\n");
        r
    }

    /// A request built from a request line and header lines.
    fn build(line: &str, headers: &[&str]) -> Vec<u8> {
        let mut r = format!("{line}\r\n");
        for h in headers {
            r.push_str(h);
            r.push_str("\r\n");
        }
        r.push_str("\r\n");
        r.into_bytes()
    }

    const GOOD: &[&str] = &[
        "Host: h",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
    ];

    /// GOOD with the header at `skip` replaced by `with` (or removed if `with` is empty).
    fn good_but(skip: usize, with: &str) -> Vec<u8> {
        let mut hs: Vec<&str> = GOOD.to_vec();
        if with.is_empty() {
            hs.remove(skip);
        } else {
            hs[skip] = with;
        }
        build("GET / HTTP/1.1", &hs)
    }

    fn complete(buf: &[u8]) -> (Request<'_>, usize) {
        match parse_request(buf, DEFAULT_MAX_HEAD) {
            Ok(Parsed::Complete(r, n)) => (r, n),
            other => panic!("expected Complete, got {other:?}"),
        }
    }

    fn err(buf: &[u8]) -> HandshakeError {
        match parse_request(buf, DEFAULT_MAX_HEAD) {
            Err(e) => e,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[test]
    fn rfc_sample_is_accepted() {
        let (r, n) = complete(RFC_REQUEST);
        assert_eq!(n, RFC_REQUEST.len());
        assert_eq!(r.method(), "GET");
        assert_eq!(r.path(), "/chat");
        assert_eq!(r.target(), "/chat");
        assert_eq!(r.query(), None);
        assert_eq!(r.host(), Some("server.example.com"));
        assert_eq!(r.origin(), Some("http://example.com"));
        assert_eq!(r.key(), "dGhlIHNhbXBsZSBub25jZQ==");
        assert_eq!(r.protocols().collect::<Vec<_>>(), ["chat", "superchat"]);
        assert_eq!(r.extensions().count(), 0);
        assert_eq!(r.headers().count(), 7);
        assert_eq!(r.header("upgrade"), Some(&b"websocket"[..]));
        assert_eq!(&accept_key(r.key().as_bytes()), b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert!(format!("{r:?}").contains("server.example.com"));
    }

    #[test]
    fn every_prefix_is_partial() {
        for k in 0..RFC_REQUEST.len() {
            assert!(
                matches!(parse_request(&RFC_REQUEST[..k], DEFAULT_MAX_HEAD), Ok(Parsed::Partial)),
                "prefix {k}"
            );
        }
    }

    #[test]
    fn pipelined_bytes_are_not_consumed() {
        let mut buf = RFC_REQUEST.to_vec();
        buf.extend_from_slice(&[0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58]);
        let (_, n) = complete(&buf);
        assert_eq!(n, RFC_REQUEST.len());
        // Even when the trailing bytes look like another request.
        let mut buf = RFC_REQUEST.to_vec();
        buf.extend_from_slice(RFC_REQUEST);
        assert_eq!(complete(&buf).1, RFC_REQUEST.len());
    }

    #[test]
    fn header_names_are_case_insensitive() {
        let buf = build(
            "GET / HTTP/1.1",
            &[
                "HOST: h",
                "upgrade: WebSocket",
                "CONNECTION: upgrade",
                "sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==",
                "SEC-WEBSOCKET-VERSION: 13",
                "sec-WEBSOCKET-protocol: a",
            ],
        );
        let (r, _) = complete(&buf);
        assert_eq!(r.header("Sec-WebSocket-Key"), Some(&b"dGhlIHNhbXBsZSBub25jZQ=="[..]));
        assert_eq!(r.protocols().collect::<Vec<_>>(), ["a"]);
    }

    #[test]
    fn connection_and_upgrade_are_token_lists() {
        complete(&good_but(2, "Connection: keep-alive, Upgrade"));
        complete(&good_but(2, "Connection: keep-alive,upgrade ,close"));
        complete(&good_but(1, "Upgrade: h2c, websocket"));
        // The token may sit in any occurrence of the header.
        complete(&request_with("Connection: keep-alive\r\n"));
        let buf = build(
            "GET / HTTP/1.1",
            &[
                "Host: h",
                "Upgrade: websocket",
                "Connection: keep-alive",
                "Connection: Upgrade",
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
                "Sec-WebSocket-Version: 13",
            ],
        );
        complete(&buf);
        assert_eq!(
            err(&good_but(2, "Connection: Upgraded")),
            HandshakeError::MissingConnectionUpgrade
        );
        assert_eq!(err(&good_but(1, "Upgrade: websockets")), HandshakeError::NotUpgrade);
    }

    #[test]
    fn protocols_merge_and_extensions_split() {
        let buf = request_with(
            "Sec-WebSocket-Protocol: ,v2 , \r\n\
             Sec-WebSocket-Protocol: v3\r\n\
             Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits, x-foo\r\n\
             Sec-WebSocket-Extensions: x-q; a=\"1,2\"\r\n",
        );
        let (r, _) = complete(&buf);
        assert_eq!(r.protocols().collect::<Vec<_>>(), ["chat", "superchat", "v2", "v3"]);
        assert_eq!(
            r.extensions().collect::<Vec<_>>(),
            ["permessage-deflate; client_max_window_bits", "x-foo", "x-q; a=\"1,2\""]
        );
        assert_eq!(
            err(&request_with("Sec-WebSocket-Protocol: a b\r\n")).status(),
            400,
            "a protocol must be a token"
        );
    }

    #[test]
    fn target_is_split() {
        let split = |target: &str| {
            let buf = build(&format!("GET {target} HTTP/1.1"), GOOD);
            let (r, _) = complete(&buf);
            assert_eq!(r.target(), target);
            (r.path().to_owned(), r.query().map(str::to_owned))
        };
        let owned = |p: &str, q: Option<&str>| (p.to_owned(), q.map(str::to_owned));
        assert_eq!(split("/a/b?x=1&y=2"), owned("/a/b", Some("x=1&y=2")));
        assert_eq!(split("/?"), owned("/", Some("")));
        assert_eq!(split("/a?b?c"), owned("/a", Some("b?c")));
        assert_eq!(split("ws://example.com:80/chat?q"), owned("/chat", Some("q")));
        assert_eq!(split("http://example.com"), owned("/", None));
        assert_eq!(err(&build("GET * HTTP/1.1", GOOD)).status(), 400);
        assert_eq!(err(&build("GET example.com:80 HTTP/1.1", GOOD)).status(), 400);
        assert_eq!(err(&build("GET 1ws://x/ HTTP/1.1", GOOD)).status(), 400);
    }

    #[test]
    fn rejections_have_their_status() {
        use HandshakeError::*;
        let cases: Vec<(Vec<u8>, HandshakeError, u16)> = vec![
            (build("POST / HTTP/1.1", GOOD), MethodNotAllowed, 405),
            (build("get / HTTP/1.1", GOOD), MethodNotAllowed, 405),
            (build("GET / HTTP/1.0", GOOD), BadVersion, 400),
            (build("GET / HTTP/2.0", GOOD), BadVersion, 400),
            (build("GET / HTTP/1.1 x", GOOD), Malformed("invalid line ending"), 400),
            (b"GET /\r\n\r\n".to_vec(), Malformed("invalid request line"), 400),
            (good_but(0, ""), MissingHost, 400),
            (good_but(0, "Host:"), BadHost, 400),
            (request_with("Host: other\r\n"), BadHost, 400),
            (good_but(1, ""), NotUpgrade, 400),
            (good_but(2, ""), MissingConnectionUpgrade, 400),
            (good_but(3, ""), BadKey, 400),
            (good_but(4, ""), MissingVersion, 400),
            (good_but(4, "Sec-WebSocket-Version: 8"), UnsupportedVersion, 426),
            (good_but(4, "Sec-WebSocket-Version: 13, 8"), UnsupportedVersion, 426),
            (
                request_with("Sec-WebSocket-Version: 13\r\n"),
                Malformed("repeated Sec-WebSocket-Version"),
                400,
            ),
            (request_with("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"), BadKey, 400),
            (good_but(3, "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ"), BadKey, 400),
            // 16 bytes' worth of base64 characters, but one is not in the alphabet.
            (good_but(3, "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25j*Q=="), BadKey, 400),
            // Valid base64 of 15 and 17 bytes.
            (good_but(3, "Sec-WebSocket-Key: MDEyMzQ1Njc4OWFiY2Rl"), BadKey, 400),
            (good_but(3, "Sec-WebSocket-Key: MDEyMzQ1Njc4OWFiY2RlZmc="), BadKey, 400),
            (request_with("Content-Length: 5\r\n"), HasBody, 400),
            (request_with("Transfer-Encoding: chunked\r\n"), HasBody, 400),
            (request_with("Content-Length: x\r\n"), Malformed("invalid Content-Length"), 400),
            (request_with("Origin: http://b.example\r\n"), Malformed("repeated Origin"), 400),
            (request_with("Bad Name: x\r\n"), Malformed("invalid header name"), 400),
        ];
        for (buf, want, status) in cases {
            let got = err(&buf);
            assert_eq!(got, want, "{}", String::from_utf8_lossy(&buf));
            assert_eq!(got.status(), status);
            assert!(!got.to_string().is_empty());
        }
        // A zero-length body is no body.
        complete(&request_with("Content-Length: 0\r\n"));
    }

    #[test]
    fn head_too_large() {
        let max = RFC_REQUEST.len() - 1;
        // Complete, but one byte over.
        assert_eq!(parse_request(RFC_REQUEST, max).err(), Some(HandshakeError::HeadTooLarge));
        // Exactly at the limit is fine.
        assert!(matches!(parse_request(RFC_REQUEST, max + 1), Ok(Parsed::Complete(_, _))));
        // Partial: the limit is reached without the end of the head.
        let mut long = b"GET / HTTP/1.1\r\nX-Pad: ".to_vec();
        long.resize(DEFAULT_MAX_HEAD, b'a');
        assert!(matches!(parse_request(&long, DEFAULT_MAX_HEAD), Ok(Parsed::Partial)));
        long.push(b'a');
        let e = parse_request(&long, DEFAULT_MAX_HEAD).err();
        assert_eq!(e, Some(HandshakeError::HeadTooLarge));
        assert_eq!(HandshakeError::HeadTooLarge.status(), 431);
    }

    #[test]
    fn too_many_headers() {
        let mut hs: Vec<String> = GOOD.iter().map(|s| s.to_string()).collect();
        hs.extend((0..MAX_HEADERS - GOOD.len()).map(|i| format!("X-{i}: v")));
        let refs: Vec<&str> = hs.iter().map(String::as_str).collect();
        assert_eq!(complete(&build("GET / HTTP/1.1", &refs)).0.headers().count(), MAX_HEADERS);
        hs.push("X-last: v".into());
        let refs: Vec<&str> = hs.iter().map(String::as_str).collect();
        let e = err(&build("GET / HTTP/1.1", &refs));
        assert_eq!((e, e.status()), (HandshakeError::TooManyHeaders, 431));
    }

    #[test]
    fn token_lists() {
        assert!(header_has_token(b"keep-alive, Upgrade", "upgrade"));
        assert!(header_has_token(b"\tUPGRADE\t", "upgrade"));
        assert!(!header_has_token(b"upgrade2", "upgrade"));
        assert!(!header_has_token(b"", "upgrade"));
    }

    #[test]
    fn accept_response_bytes() {
        let mut out = Vec::new();
        let accept = accept_key(b"dGhlIHNhbXBsZSBub25jZQ==");
        write_accept_with_extensions(
            &accept,
            Some("chat"),
            Some("permessage-deflate"),
            // Only the negotiation answers extensions: a handler's header is dropped.
            &[("Sec-WebSocket-Extensions", "x-evil"), ("X-Ok", "1")],
            &mut out,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 101 Switching Protocols\r\n\
             Upgrade: websocket\r\n\
             Connection: Upgrade\r\n\
             Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\
             Sec-WebSocket-Protocol: chat\r\n\
             Sec-WebSocket-Extensions: permessage-deflate\r\n\
             X-Ok: 1\r\n\
             \r\n"
        );
        let mut out = Vec::new();
        write_accept(&accept, None, &[], &mut out);
        assert!(out.ends_with(b"xOo=\r\n\r\n"));
    }

    #[test]
    fn no_header_injection() {
        let accept = accept_key(b"dGhlIHNhbXBsZSBub25jZQ==");
        let mut out = Vec::new();
        write_accept(
            &accept,
            Some("chat\r\nX-Evil: 1"),
            &[
                ("X-A", "1\r\nX-Evil: 1"),
                ("X-Evil: 1\r\nX-B", "2"),
                ("X-C\n", "3"),
                ("", "4"),
                ("Connection", "close"),
                ("X-Ok", "fine"),
            ],
            &mut out,
        );
        let s = String::from_utf8(out).unwrap();
        assert!(!s.contains("Evil") && !s.contains("chat") && !s.contains("close"), "{s}");
        assert!(s.ends_with("X-Ok: fine\r\n\r\n"));
        let mut out = Vec::new();
        write_reject(403, &[("X-A", "a\rb"), ("Content-Length", "0"), ("X-Ok", "1")], &mut out);
        let s = String::from_utf8(out).unwrap();
        assert_eq!(s.matches("Content-Length").count(), 1);
        assert!(!s.contains("X-A") && s.contains("X-Ok: 1\r\n"), "{s}");
    }

    #[test]
    fn reject_response_bytes() {
        let mut out = Vec::new();
        write_error(&HandshakeError::UnsupportedVersion, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 426 Upgrade Required\r\n\
             Connection: close\r\n\
             Content-Type: text/plain\r\n\
             Content-Length: 16\r\n\
             Sec-WebSocket-Version: 13\r\n\
             Upgrade: websocket\r\n\
             \r\n\
             Upgrade Required"
        );
        let mut out = Vec::new();
        write_reject(405, &[("Allow", "POST")], &mut out);
        let s = String::from_utf8(out).unwrap();
        assert!(s.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"));
        assert!(s.contains("Allow: GET\r\n") && !s.contains("POST"));
        let mut out = Vec::new();
        write_reject(418, &[], &mut out);
        assert!(out.starts_with(b"HTTP/1.1 418 Error\r\n") && out.ends_with(b"\r\n\r\nError"));
        let mut out = Vec::new();
        write_reject(101, &[], &mut out);
        assert!(out.starts_with(b"HTTP/1.1 500 Internal Server Error\r\n"));
        for e in [HandshakeError::HeadTooLarge, HandshakeError::BadKey] {
            let mut out = Vec::new();
            write_error(&e, &mut out);
            let s = String::from_utf8(out).unwrap();
            let (head, body) = s.split_once("\r\n\r\n").unwrap();
            assert!(head.starts_with(&format!("HTTP/1.1 {} ", e.status())));
            assert!(format!("{head}\r\n").contains(&format!("Content-Length: {}\r\n", body.len())));
        }
    }

    #[test]
    fn plain_http_requests() {
        let plain = build("GET /health?x HTTP/1.1", &["Host: h", "Accept: */*"]);
        let e = err(&plain);
        assert!(e.is_plain_http() && e.status() == 400);
        let Ok(Parsed::Complete(r, n)) = parse_http(&plain, DEFAULT_MAX_HEAD) else {
            panic!("plain GET should parse as HTTP");
        };
        assert_eq!(
            (r.path(), r.query(), r.host(), r.key(), n),
            ("/health", Some("x"), Some("h"), "", plain.len())
        );
        assert_eq!(r.header("accept"), Some(&b"*/*"[..]));
        // Only NotUpgrade is plain HTTP.
        assert!(!err(&good_but(2, "")).is_plain_http());
        assert!(!err(&build("POST / HTTP/1.1", GOOD)).is_plain_http());
        // parse_http keeps the limits and the syntax rules, and nothing else.
        let no_host = build("DELETE / HTTP/1.0", &["Host: a", "Host: b"]);
        let Ok(Parsed::Complete(r, _)) = parse_http(&no_host, DEFAULT_MAX_HEAD) else {
            panic!("syntax is fine");
        };
        assert_eq!((r.method(), r.host()), ("DELETE", None));
        assert!(matches!(parse_http(&plain[..10], DEFAULT_MAX_HEAD), Ok(Parsed::Partial)));
        assert_eq!(parse_http(&plain, 10).err(), Some(HandshakeError::HeadTooLarge));
        assert_eq!(
            parse_http(b"GET / HTTP/1.1\r\nA B: c\r\n\r\n", 99).err().map(|e| e.status()),
            Some(400)
        );
    }

    #[test]
    fn plain_response_bytes() {
        let mut out = Vec::new();
        write_response(200, "text/html", b"<p>hi</p>", &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Type: text/html\r\n\
             Content-Length: 9\r\n\r\n<p>hi</p>"
        );
        let mut out = Vec::new();
        write_response(204, "text/plain\r\nX-Evil: 1", b"dropped", &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n"
        );
        let mut out = Vec::new();
        write_response(426, "", b"", &mut out);
        let s = String::from_utf8(out).unwrap();
        assert!(s.contains("Sec-WebSocket-Version: 13\r\n") && s.contains("Content-Length: 0\r\n"));
    }

    #[test]
    fn plain_response_extra_headers() {
        let mut out = Vec::new();
        let extra = [
            ("Cache-Control", "no-store"),
            ("content-length", "5"),
            ("Connection", "keep-alive"),
            ("Content-Type", "text/evil"),
            ("Transfer-Encoding", "chunked"),
            ("X-Split", "a\r\nInjected: 1"),
            ("Bad Name", "x"),
            ("Location", "/elsewhere"),
        ];
        write_response_with(302, "text/plain", &extra, b"moved", &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 302 Found\r\nConnection: close\r\nContent-Type: text/plain\r\n\
             Content-Length: 5\r\nCache-Control: no-store\r\nLocation: /elsewhere\r\n\r\nmoved"
        );
        // The headers a status requires are the engine's too.
        let mut out = Vec::new();
        write_response_with(405, "", &[("Allow", "POST"), ("X-A", "b")], b"", &mut out);
        let s = String::from_utf8(out).unwrap();
        assert!(s.contains("Allow: GET\r\n") && !s.contains("POST") && s.contains("X-A: b\r\n"));
    }

    /// A valid request plus a random split point sequence.
    fn valid_request() -> impl Strategy<Value = Vec<u8>> {
        (
            "/[a-z0-9/]{0,20}(\\?[a-z=&]{0,10})?",
            proptest::collection::vec(("X-[A-Za-z]{1,8}", "[ -~]{0,30}"), 0..8),
            any::<[u8; 16]>(),
        )
            .prop_map(|(path, extra, key)| {
                let key = BASE64.encode(key);
                let mut r = format!(
                    "GET {path} HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\
                     Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n"
                );
                for (n, v) in extra {
                    r.push_str(&format!("{n}: {v}\r\n"));
                }
                r.push_str("\r\n");
                r.into_bytes()
            })
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..600),
            max in 0usize..700,
        ) {
            match parse_request(&bytes, max) {
                Ok(Parsed::Complete(r, n)) => {
                    prop_assert!(n <= bytes.len() && n <= max);
                    let mut out = Vec::new();
                    write_accept(&accept_key(r.key().as_bytes()), r.protocols().next(), &[], &mut out);
                }
                Ok(Parsed::Partial) => prop_assert!(bytes.len() <= max),
                Err(e) => {
                    let mut out = Vec::new();
                    write_error(&e, &mut out);
                }
            }
        }

        #[test]
        fn mutated_requests_never_panic(
            req in valid_request(),
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        ) {
            let mut req = req;
            for (i, b) in edits {
                let i = i.index(req.len());
                req[i] = b;
            }
            let _ = parse_request(&req, DEFAULT_MAX_HEAD);
        }

        #[test]
        fn split_valid_request(
            req in valid_request(),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..6),
            tail in proptest::collection::vec(any::<u8>(), 0..16),
        ) {
            let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(req.len())).collect();
            cuts.sort_unstable();
            for c in cuts {
                prop_assert!(matches!(parse_request(&req[..c], DEFAULT_MAX_HEAD), Ok(Parsed::Partial)));
            }
            let mut buf = req.clone();
            buf.extend_from_slice(&tail);
            match parse_request(&buf, DEFAULT_MAX_HEAD) {
                Ok(Parsed::Complete(r, n)) => {
                    prop_assert_eq!(n, req.len());
                    prop_assert_eq!(r.host(), Some("h"));
                }
                other => prop_assert!(false, "expected Complete, got {:?}", other),
            }
        }
    }
}
