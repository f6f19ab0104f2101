//! The opening handshake: the upgrade request, and the checks on the server's 101.

use base64::Engine as _;
use sockeye::proto::handshake::accept_key;

use super::conn::{splitmix, Conn, Fail};
use super::ctx::Ctx;
use super::deflate::parse_answer;

/// A fresh random `Sec-WebSocket-Key`: the `Sec-WebSocket-Accept` the server must answer with,
/// and the upgrade request (empty for raw TCP, which still draws the key so that the random
/// stream is the same in every mode).
pub(super) fn key_and_request(
    ws: bool,
    path: &str,
    host: &str,
    extensions: Option<&str>,
    rng: &mut u64,
) -> ([u8; 28], Vec<u8>) {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&splitmix(rng).to_le_bytes());
    key[8..].copy_from_slice(&splitmix(rng).to_le_bytes());
    let key_b64 = base64::engine::general_purpose::STANDARD.encode(key);
    let accept = accept_key(key_b64.as_bytes());
    let request = if ws {
        format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Key: {}\r\nSec-WebSocket-Version: 13\r\n\
                 User-Agent: sockeye-loadgen\r\n{}\r\n",
            path,
            host,
            key_b64,
            extensions.map(|e| format!("Sec-WebSocket-Extensions: {e}\r\n")).unwrap_or_default()
        )
        .into_bytes()
    } else {
        Vec::new()
    };
    (accept, request)
}

impl Conn {
    /// The 101 response: bytes so far in `hs`. Returns the length of the head once it is
    /// complete and valid.
    pub(super) fn check_handshake(&mut self, ctx: &mut Ctx) -> Result<Option<usize>, Fail> {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        let n = match resp.parse(&self.hs) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => {
                if self.hs.len() > 8192 {
                    return Err(Fail::Handshake("response head over 8 KiB".into()));
                }
                return Ok(None);
            }
            Err(e) => return Err(Fail::Handshake(format!("bad HTTP response: {e}"))),
        };
        if resp.code != Some(101) {
            return Err(Fail::Handshake(format!(
                "status {} {}",
                resp.code.unwrap_or(0),
                resp.reason.unwrap_or("")
            )));
        }
        let hv = |name: &str| {
            resp.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value)
        };
        let has_token = |v: Option<&[u8]>, tok: &str| {
            v.is_some_and(|v| {
                v.split(|&b| b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(tok.as_bytes()))
            })
        };
        if !has_token(hv("upgrade"), "websocket") {
            return Err(Fail::Handshake("101 without Upgrade: websocket".into()));
        }
        if !has_token(hv("connection"), "upgrade") {
            return Err(Fail::Handshake("101 without Connection: Upgrade".into()));
        }
        match hv("sec-websocket-accept") {
            Some(v) if v.trim_ascii() == self.accept => {}
            Some(v) => {
                return Err(Fail::Handshake(format!(
                    "wrong Sec-WebSocket-Accept {:?}",
                    String::from_utf8_lossy(v)
                )))
            }
            None => return Err(Fail::Handshake("101 without Sec-WebSocket-Accept".into())),
        }
        let ext =
            resp.headers.iter().filter(|h| h.name.eq_ignore_ascii_case("sec-websocket-extensions"));
        match (ext.count(), hv("sec-websocket-extensions"), ctx.z.as_mut()) {
            (0, _, None) => {}
            (_, Some(_), None) => {
                return Err(Fail::Handshake("server picked an extension we did not offer".into()))
            }
            (1, Some(v), Some(z)) => {
                self.pmd = Some(parse_answer(v).map_err(Fail::Handshake)?);
                if z.answer.is_none() {
                    z.answer = Some(String::from_utf8_lossy(v).into_owned());
                }
            }
            (0, _, Some(_)) => {
                return Err(Fail::Handshake("server declined permessage-deflate".into()))
            }
            _ => return Err(Fail::Handshake("more than one Sec-WebSocket-Extensions".into())),
        }
        if hv("sec-websocket-protocol").is_some() {
            return Err(Fail::Handshake("server picked a subprotocol we did not offer".into()));
        }
        Ok(Some(n))
    }
}
