//! `Sec-WebSocket-Extensions` offers (RFC 6455 §9.1) and the permessage-deflate answer
//! (RFC 7692 §5, §7.1).
//!
//! This module owns the extension header grammar and the choice of the one permessage-deflate
//! configuration a server answers with. It never compresses anything (that is
//! [`super::deflate`]), never writes a frame, and never answers with a parameter the chosen
//! offer did not allow: every answer it builds is one RFC 7692 lets a server send back to that
//! offer.
//!
//! What is refused, and how:
//!
//! | what                                                              | outcome |
//! |-------------------------------------------------------------------|---------|
//! | the header breaks the RFC 6455 §9.1 grammar anywhere (an empty or non-token name, `;;`, `a=`, an unterminated quoted string, a quoted value that is not a token once unescaped) | 400 ([`HandshakeError::Malformed`]), RFC 6455 §4.2.1 |
//! | a permessage-deflate offer with an unknown parameter, a repeated parameter, a value where none is defined, a missing value, or a window size that is not a decimal 8..=15 without leading zeros | that offer is declined and the next one is tried (RFC 7692 §5.1) |
//! | no acceptable permessage-deflate offer                            | accepted without compression |
//!
//! RFC 7692 §5.1 says a server *declines* an offer with a duplicate parameter or an invalid value;
//! only a header that does not parse at all fails the handshake. Extension names and parameter
//! names are matched ASCII case-insensitively (like HTTP parameter names); values are digits, so
//! case does not arise for them.
//!
//! ```
//! use sockeye::proto::extensions::{negotiate, DeflateConfig, PerMessageDeflate};
//!
//! let cfg = DeflateConfig { enabled: true, ..DeflateConfig::default() };
//! // A browser's offer: a window for the server of at most 2^10, and the client accepts
//! // a limit on its own window.
//! let offers = ["permessage-deflate; server_max_window_bits=10; client_max_window_bits"];
//! let answer = negotiate(&cfg, offers).unwrap().unwrap();
//! assert_eq!(answer.server_max_window_bits, 10);
//! assert_eq!(
//!     answer.to_string(),
//!     "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
//!      server_max_window_bits=10"
//! );
//! ```

use std::borrow::Cow;
use std::fmt;

use super::handshake::HandshakeError;

/// The registered name of the extension (RFC 7692 §7).
pub const PERMESSAGE_DEFLATE: &str = "permessage-deflate";

/// How long per-connection compression contexts live when no context takeover needs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeflateMemory {
    /// A connection holds a context only while a message needs it, unless context takeover
    /// makes it keep one: an idle connection without context takeover holds none. Contexts
    /// are lent by the worker's [`super::Env`] and given back when the message ends.
    #[default]
    Lean,
    /// A connection keeps every context it used for as long as it lives (reset between
    /// messages where there is no context takeover): nothing is lent, at the price of
    /// memory on idle connections.
    Dedicated,
}

/// The server's permessage-deflate preferences. The default is disabled; with `enabled` set,
/// the defaults favour many connections: the server keeps no compression window between
/// messages (one compressor per worker serves every connection) and asks clients not to keep
/// theirs (so it keeps no inflater per idle connection either; Bun's default too).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeflateConfig {
    /// Negotiate permessage-deflate at all.
    pub enabled: bool,
    /// Answer `server_no_context_takeover` even when the client did not ask for it: outgoing
    /// messages are compressed by a per-worker compressor reset for every message, instead of
    /// a dedicated one per connection that keeps its window (about 300 KiB per connection at
    /// 15 window bits, but better compression of similar messages). A client's request for it
    /// is honoured either way.
    pub server_no_context_takeover: bool,
    /// Largest LZ77 window the server compresses with, as a power of two. Accepted: 9..=15 (the
    /// zlib-rs compressor cannot do 8). A client's `server_max_window_bits` lowers it.
    pub server_max_window_bits: u8,
    /// Ask clients not to keep their compression window between messages
    /// (`client_no_context_takeover`): the server then needs no inflate window per idle
    /// connection (an inflater is lent for each message). Default true: with it off, a
    /// connection that received one compressed message keeps a ~47 KB inflater, ~20 KB of it
    /// resident (10,000 idle connections: 20,370 against 372 bytes each, benches/README.md),
    /// for a better compression ratio of what clients send.
    pub client_no_context_takeover: bool,
    /// Largest LZ77 window the server asks clients to compress with (`client_max_window_bits`),
    /// which bounds the inflate window kept per connection. Accepted: 8..=15. Only a client
    /// that offers `client_max_window_bits` can be asked; the others use up to 15.
    pub client_max_window_bits: u8,
    /// Outgoing messages shorter than this many bytes are sent uncompressed. Default 512:
    /// without context takeover every compressed message pays a compressor reset (zlib-rs
    /// clears a 64 Ki-entry hash table, ~3.4 µs), which is most of the 4.7-8 µs a 125-byte
    /// JSON message costs to compress, for 21 % saved; at 1 KiB the same ~6 µs saves 72 %
    /// (benches/README.md, permessage-deflate).
    pub min_size: usize,
    /// zlib compression level, 0..=9 (1 fastest, 9 smallest, 0 stores). Default 1: 16 KiB of
    /// JSON compresses in ~34-40 µs to 22 %, against ~190-250 µs to 15 % at level 6.
    pub level: u8,
    /// How long contexts live; see [`DeflateMemory`].
    pub memory: DeflateMemory,
}

impl Default for DeflateConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            server_no_context_takeover: true,
            server_max_window_bits: 15,
            client_no_context_takeover: true,
            client_max_window_bits: 15,
            min_size: 512,
            level: 1,
            memory: DeflateMemory::Lean,
        }
    }
}

impl DeflateConfig {
    /// Checks every field's range; the error names the field and the accepted values.
    /// [`negotiate`] never panics on a config that fails this: it clamps.
    pub fn validate(&self) -> Result<(), &'static str> {
        if !(9..=15).contains(&self.server_max_window_bits) {
            return Err("server_max_window_bits must be in 9..=15");
        }
        if !(8..=15).contains(&self.client_max_window_bits) {
            return Err("client_max_window_bits must be in 8..=15");
        }
        if self.level > 9 {
            return Err("level must be in 0..=9");
        }
        Ok(())
    }
}

/// The negotiated permessage-deflate parameters: exactly what the 101 response says
/// ([`fmt::Display`] writes its `Sec-WebSocket-Extensions` value).
///
/// A window size of 15 that the response does not mention is written as 15 here. A
/// `server_max_window_bits` of 8 is honoured by never compressing outgoing messages (a
/// sender may always send a message uncompressed); incoming ones are still inflated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PerMessageDeflate {
    /// The server resets its compressor for every message.
    pub server_no_context_takeover: bool,
    /// The client resets its compressor for every message.
    pub client_no_context_takeover: bool,
    /// The server compresses with a window of at most 2^this bytes (8..=15).
    pub server_max_window_bits: u8,
    /// The client compresses with a window of at most 2^this bytes (8..=15). Below 15 only
    /// when the client offered `client_max_window_bits`.
    pub client_max_window_bits: u8,
}

impl Default for PerMessageDeflate {
    /// Plain `permessage-deflate`: both sides keep their windows, 15 bits each.
    fn default() -> Self {
        Self {
            server_no_context_takeover: false,
            client_no_context_takeover: false,
            server_max_window_bits: 15,
            client_max_window_bits: 15,
        }
    }
}

impl fmt::Display for PerMessageDeflate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(PERMESSAGE_DEFLATE)?;
        if self.server_no_context_takeover {
            f.write_str("; server_no_context_takeover")?;
        }
        if self.client_no_context_takeover {
            f.write_str("; client_no_context_takeover")?;
        }
        if self.server_max_window_bits < 15 {
            write!(f, "; server_max_window_bits={}", self.server_max_window_bits)?;
        }
        if self.client_max_window_bits < 15 {
            write!(f, "; client_max_window_bits={}", self.client_max_window_bits)?;
        }
        Ok(())
    }
}

/// One extension offer (one comma-separated item of `Sec-WebSocket-Extensions`), checked
/// against the RFC 6455 §9.1 grammar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offer<'a> {
    name: &'a str,
    /// Everything after the name: `; p1; p2=v ...`, already checked.
    params: &'a str,
}

impl<'a> Offer<'a> {
    /// Parses one list item, such as `permessage-deflate; client_max_window_bits`, with
    /// optional whitespace around `;` and `=`.
    pub fn parse(item: &'a str) -> Result<Self, HandshakeError> {
        let item = item.trim_matches([' ', '\t']);
        let end = item.find(|c: char| !is_tchar(c as u32)).unwrap_or(item.len());
        if end == 0 {
            return Err(HandshakeError::Malformed("extension name is not a token"));
        }
        let (name, params) = item.split_at(end);
        let mut rest = params;
        while next_param(&mut rest)?.is_some() {}
        Ok(Self { name, params })
    }

    /// The extension's name, as sent.
    pub fn name(&self) -> &'a str {
        self.name
    }

    /// Its parameters in order: names as sent, values unquoted and unescaped.
    pub fn params(&self) -> impl Iterator<Item = (&'a str, Option<Cow<'a, str>>)> {
        let mut rest = self.params;
        // Checked by `parse`: iterating again cannot fail.
        std::iter::from_fn(move || next_param(&mut rest).ok().flatten())
    }
}

/// RFC 9110 tchar.
fn is_tchar(c: u32) -> bool {
    u8::try_from(c).is_ok_and(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn is_token(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| is_tchar(c as u32))
}

fn skip_ows(s: &str) -> &str {
    s.trim_start_matches([' ', '\t'])
}

fn split_token(s: &str) -> (&str, &str) {
    let end = s.find(|c: char| !is_tchar(c as u32)).unwrap_or(s.len());
    s.split_at(end)
}

/// Takes `; name[=value]` off the front of `rest`; `None` at the end.
#[allow(clippy::type_complexity)]
fn next_param<'a>(
    rest: &mut &'a str,
) -> Result<Option<(&'a str, Option<Cow<'a, str>>)>, HandshakeError> {
    let bad = HandshakeError::Malformed;
    let s = skip_ows(rest);
    if s.is_empty() {
        *rest = s;
        return Ok(None);
    }
    let Some(s) = s.strip_prefix(';') else {
        return Err(bad("extension parameters must be separated by ';'"));
    };
    let (name, s) = split_token(skip_ows(s));
    if name.is_empty() {
        return Err(bad("extension parameter name is not a token"));
    }
    let s = skip_ows(s);
    let Some(s) = s.strip_prefix('=') else {
        *rest = s;
        return Ok(Some((name, None)));
    };
    let s = skip_ows(s);
    let (value, s) = if let Some(q) = s.strip_prefix('"') {
        quoted(q)?
    } else {
        let (v, s) = split_token(s);
        (Cow::Borrowed(v), s)
    };
    // RFC 6455 §9.1: a quoted value, unescaped, must still be a token.
    if !is_token(&value) {
        return Err(bad("extension parameter value is not a token"));
    }
    *rest = s;
    Ok(Some((name, Some(value))))
}

/// The inside of a quoted string whose opening quote is already taken: the unescaped value
/// and what follows the closing quote.
fn quoted(s: &str) -> Result<(Cow<'_, str>, &str), HandshakeError> {
    let mut owned: Option<String> = None;
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => {
                let value = match owned {
                    Some(o) => Cow::Owned(o),
                    None => Cow::Borrowed(&s[..i]),
                };
                return Ok((value, &s[i + 1..]));
            }
            '\\' => {
                let Some((_, e)) = chars.next() else { break };
                owned.get_or_insert_with(|| s[..i].to_owned()).push(e);
            }
            c => {
                if let Some(o) = &mut owned {
                    o.push(c);
                }
            }
        }
    }
    Err(HandshakeError::Malformed("unterminated quoted string in Sec-WebSocket-Extensions"))
}

/// Chooses the permessage-deflate answer to `offers` (every item of every
/// `Sec-WebSocket-Extensions` header, in order: [`super::handshake::Request::extensions`]).
///
/// Every offer is parsed, also those after the chosen one: a header that breaks the grammar
/// anywhere is a 400. The first permessage-deflate offer that can be accepted wins; offers of
/// other extensions are ignored. `Ok(None)` when compression is disabled in `cfg` or no offer
/// is acceptable.
pub fn negotiate<'a>(
    cfg: &DeflateConfig,
    offers: impl IntoIterator<Item = &'a str>,
) -> Result<Option<PerMessageDeflate>, HandshakeError> {
    let mut chosen = None;
    for item in offers {
        let offer = Offer::parse(item)?;
        if cfg.enabled && chosen.is_none() && offer.name().eq_ignore_ascii_case(PERMESSAGE_DEFLATE)
        {
            chosen = accept(cfg, &offer);
        }
    }
    Ok(chosen)
}

/// The answer to one permessage-deflate offer, or `None` to decline it (RFC 7692 §5.1).
pub fn accept(cfg: &DeflateConfig, offer: &Offer<'_>) -> Option<PerMessageDeflate> {
    const SNCT: u8 = 1;
    const CNCT: u8 = 2;
    const SMWB: u8 = 4;
    const CMWB: u8 = 8;
    let mut seen = 0u8;
    let mut server_no_context_takeover = false;
    let mut client_no_context_takeover = false;
    let mut server_bits: Option<u8> = None;
    // `Some(None)`: offered without a value.
    let mut client_bits: Option<Option<u8>> = None;
    for (name, value) in offer.params() {
        let is = |n: &str| name.eq_ignore_ascii_case(n);
        let bit = if is("server_no_context_takeover") {
            SNCT
        } else if is("client_no_context_takeover") {
            CNCT
        } else if is("server_max_window_bits") {
            SMWB
        } else if is("client_max_window_bits") {
            CMWB
        } else {
            return None; // not defined for an offer
        };
        if seen & bit != 0 {
            return None; // the same parameter twice
        }
        seen |= bit;
        match bit {
            SNCT | CNCT if value.is_some() => return None, // these have no value
            SNCT => server_no_context_takeover = true,
            CNCT => client_no_context_takeover = true,
            SMWB => server_bits = Some(window_bits(value.as_deref()?)?),
            _ => {
                client_bits = Some(match value {
                    None => None,
                    Some(v) => Some(window_bits(&v)?),
                })
            }
        }
    }
    // A config that fails `validate` is clamped, never trusted.
    let our_server = cfg.server_max_window_bits.clamp(9, 15);
    let our_client = cfg.client_max_window_bits.clamp(8, 15);
    Some(PerMessageDeflate {
        // §7.1.1.1: a request for it must be answered with it; the server may add it.
        server_no_context_takeover: server_no_context_takeover || cfg.server_no_context_takeover,
        // §7.1.1.2: the server may add it; an offered one is echoed (the client said it
        // will not keep its window anyway).
        client_no_context_takeover: client_no_context_takeover || cfg.client_no_context_takeover,
        // §7.1.2.1: the same or a smaller value than offered; may be sent unasked.
        server_max_window_bits: server_bits.map_or(our_server, |b| b.min(our_server)),
        // §7.1.2.2: only if offered; then no larger than an offered value.
        client_max_window_bits: match client_bits {
            None => 15,
            Some(offered) => offered.unwrap_or(15).min(our_client),
        },
    })
}

/// A window-size value: a decimal integer in 8..=15 without leading zeros (RFC 7692 §7.1.2).
fn window_bits(v: &str) -> Option<u8> {
    if v.starts_with('0') || v.len() > 2 || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse::<u8>().ok().filter(|b| (8..=15).contains(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Context takeover both ways allowed: the answers below show what was offered.
    fn on() -> DeflateConfig {
        DeflateConfig {
            enabled: true,
            server_no_context_takeover: false,
            client_no_context_takeover: false,
            ..DeflateConfig::default()
        }
    }

    #[test]
    fn the_default_answer_keeps_no_window_on_either_side() {
        let cfg = DeflateConfig { enabled: true, ..DeflateConfig::default() };
        let a = negotiate(&cfg, ["permessage-deflate; client_max_window_bits"]).unwrap().unwrap();
        assert_eq!(
            a.to_string(),
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        );
    }

    fn pmd(snct: bool, cnct: bool, sbits: u8, cbits: u8) -> PerMessageDeflate {
        PerMessageDeflate {
            server_no_context_takeover: snct,
            client_no_context_takeover: cnct,
            server_max_window_bits: sbits,
            client_max_window_bits: cbits,
        }
    }

    fn neg(cfg: &DeflateConfig, offers: &[&str]) -> Option<PerMessageDeflate> {
        negotiate(cfg, offers.iter().copied()).expect("well-formed")
    }

    fn malformed(offers: &[&str]) -> HandshakeError {
        negotiate(&on(), offers.iter().copied()).expect_err("malformed")
    }

    #[test]
    fn plain_offer_gets_plain_answer() {
        let got = neg(&on(), &["permessage-deflate"]).unwrap();
        assert_eq!(got, PerMessageDeflate::default());
        assert_eq!(got.to_string(), "permessage-deflate");
    }

    #[test]
    fn disabled_or_not_offered_is_none() {
        assert_eq!(neg(&DeflateConfig::default(), &["permessage-deflate"]), None);
        assert_eq!(neg(&on(), &[]), None);
        assert_eq!(neg(&on(), &["x-webkit-deflate-frame", "foo; bar=1"]), None);
    }

    #[test]
    fn disabled_still_checks_the_grammar() {
        let cfg = DeflateConfig::default();
        assert!(negotiate(&cfg, ["permessage-deflate;"]).is_err());
    }

    #[test]
    fn browser_offer() {
        // What Chrome and Firefox send.
        let got = neg(&on(), &["permessage-deflate; client_max_window_bits"]).unwrap();
        assert_eq!(got, pmd(false, false, 15, 15));
        let cfg = DeflateConfig { client_max_window_bits: 10, ..on() };
        let got = neg(&cfg, &["permessage-deflate; client_max_window_bits"]).unwrap();
        assert_eq!(got, pmd(false, false, 15, 10));
        assert_eq!(got.to_string(), "permessage-deflate; client_max_window_bits=10");
    }

    #[test]
    fn client_window_only_when_offered() {
        // §7.1.2.2: not offered, so not answered, whatever the server would like.
        let cfg = DeflateConfig { client_max_window_bits: 9, ..on() };
        assert_eq!(neg(&cfg, &["permessage-deflate"]).unwrap(), pmd(false, false, 15, 15));
        // Offered with a value: never answered larger.
        let got = neg(&cfg, &["permessage-deflate; client_max_window_bits=12"]).unwrap();
        assert_eq!(got.client_max_window_bits, 9);
        let got = neg(&on(), &["permessage-deflate; client_max_window_bits=12"]).unwrap();
        assert_eq!(got.client_max_window_bits, 12);
        assert_eq!(got.to_string(), "permessage-deflate; client_max_window_bits=12");
        let got = neg(&cfg, &["permessage-deflate; client_max_window_bits=8"]).unwrap();
        assert_eq!(got.client_max_window_bits, 8);
    }

    #[test]
    fn server_window_is_the_smaller() {
        let got = neg(&on(), &["permessage-deflate; server_max_window_bits=10"]).unwrap();
        assert_eq!(got, pmd(false, false, 10, 15));
        assert_eq!(got.to_string(), "permessage-deflate; server_max_window_bits=10");
        let cfg = DeflateConfig { server_max_window_bits: 12, ..on() };
        // Unasked, the server may still announce its own (§7.1.2.1).
        assert_eq!(neg(&cfg, &["permessage-deflate"]).unwrap().server_max_window_bits, 12);
        assert_eq!(
            neg(&cfg, &["permessage-deflate; server_max_window_bits=14"])
                .unwrap()
                .server_max_window_bits,
            12
        );
        // 8 is accepted: the server then sends uncompressed (see PerMessageDeflate).
        let got = neg(&on(), &["permessage-deflate; server_max_window_bits=8"]).unwrap();
        assert_eq!(got.server_max_window_bits, 8);
    }

    #[test]
    fn context_takeover_flags() {
        let got = neg(&on(), &["permessage-deflate; server_no_context_takeover"]).unwrap();
        assert_eq!(got, pmd(true, false, 15, 15));
        let got = neg(&on(), &["permessage-deflate; client_no_context_takeover"]).unwrap();
        assert_eq!(got, pmd(false, true, 15, 15));
        assert_eq!(got.to_string(), "permessage-deflate; client_no_context_takeover");
        // The server's own preferences are added unasked.
        let cfg = DeflateConfig {
            server_no_context_takeover: true,
            client_no_context_takeover: true,
            ..on()
        };
        let got = neg(&cfg, &["permessage-deflate"]).unwrap();
        assert_eq!(got, pmd(true, true, 15, 15));
        assert_eq!(
            got.to_string(),
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        );
    }

    #[test]
    fn everything_at_once() {
        let got = neg(
            &on(),
            &["permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
               server_max_window_bits=9; client_max_window_bits=11"],
        )
        .unwrap();
        assert_eq!(got, pmd(true, true, 9, 11));
        assert_eq!(
            got.to_string(),
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
             server_max_window_bits=9; client_max_window_bits=11"
        );
    }

    #[test]
    fn declined_offers_fall_back_to_the_next() {
        // RFC 7692 §7.1.3's fallback example, with the first offer made unacceptable.
        let cases: &[&str] = &[
            "permessage-deflate; foo", // unknown parameter
            "permessage-deflate; server_max_window_bits=10; server_max_window_bits=10", // twice
            "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
            "permessage-deflate; server_max_window_bits", // value required
            "permessage-deflate; server_max_window_bits=7", // out of range
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=010", // leading zero
            "permessage-deflate; server_max_window_bits=1a",
            "permessage-deflate; client_max_window_bits=0",
            "permessage-deflate; client_max_window_bits=99",
            "permessage-deflate; server_no_context_takeover=1", // no value defined
            "permessage-deflate; client_no_context_takeover=\"x\"",
        ];
        for first in cases {
            assert_eq!(neg(&on(), &[first]), None, "{first} must be declined");
            let got = neg(&on(), &[first, "permessage-deflate; client_no_context_takeover"]);
            assert_eq!(got, Some(pmd(false, true, 15, 15)), "{first} then the fallback");
        }
    }

    #[test]
    fn first_acceptable_offer_wins() {
        let got = neg(
            &on(),
            &[
                "x-unknown",
                "permessage-deflate; server_max_window_bits=10; client_max_window_bits",
                "permessage-deflate; client_max_window_bits",
            ],
        );
        assert_eq!(got, Some(pmd(false, false, 10, 15)));
    }

    #[test]
    fn quoted_values_and_whitespace() {
        let got =
            neg(&on(), &["permessage-deflate ;\tserver_max_window_bits = \"10\" ; x=\"\\a\""]);
        assert_eq!(got, None, "x is unknown");
        let got = neg(&on(), &["permessage-deflate ;\tserver_max_window_bits = \"1\\0\" "]);
        assert_eq!(got, Some(pmd(false, false, 10, 15)));
        let o = Offer::parse("ext; a=\"b\\\"c\"").err();
        assert!(o.is_some(), "an escaped quote is not a token character");
        let o = Offer::parse("ext;a=\"b;c,d\"").err();
        assert!(o.is_some(), "quoted value must be a token once unescaped");
        let o = Offer::parse("  ext ; a ; b=c ; d=\"e\"  ").unwrap();
        assert_eq!(o.name(), "ext");
        let params: Vec<_> = o.params().map(|(n, v)| (n, v.map(Cow::into_owned))).collect();
        assert_eq!(params, [("a", None), ("b", Some("c".into())), ("d", Some("e".into()))]);
    }

    #[test]
    fn names_are_case_insensitive() {
        let got = neg(&on(), &["PerMessage-Deflate; Server_Max_Window_Bits=11"]);
        assert_eq!(got, Some(pmd(false, false, 11, 15)));
        // ...so differently-cased duplicates are duplicates.
        let got = neg(
            &on(),
            &["permessage-deflate; server_max_window_bits=11; SERVER_MAX_WINDOW_BITS=11"],
        );
        assert_eq!(got, None);
    }

    #[test]
    fn malformed_headers_fail_the_handshake() {
        let bad: &[&str] = &[
            ";",
            "permessage-deflate;",
            "permessage-deflate;;",
            "permessage-deflate; =10",
            "permessage-deflate; a=",
            "permessage-deflate; a=\"10",
            "permessage-deflate; a=\"\"",
            "permessage-deflate a",
            "permessage-deflate; a b",
            "permessage-deflate; a=b c",
            "permessage-deflate; a=\"1 0\"",
            "per message-deflate",
            "permessage-deflate; a=@",
            "\"permessage-deflate\"",
        ];
        for b in bad {
            let e = malformed(&[b]);
            assert_eq!(e.status(), 400, "{b}");
            // Also when it comes after an acceptable offer.
            let e = malformed(&["permessage-deflate", b]);
            assert_eq!(e.status(), 400, "{b} after a good offer");
        }
    }

    #[test]
    fn config_validation() {
        assert_eq!(DeflateConfig::default().validate(), Ok(()));
        for bad in [
            DeflateConfig { server_max_window_bits: 8, ..DeflateConfig::default() },
            DeflateConfig { server_max_window_bits: 16, ..DeflateConfig::default() },
            DeflateConfig { client_max_window_bits: 7, ..DeflateConfig::default() },
            DeflateConfig { level: 10, ..DeflateConfig::default() },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
        // An invalid config is clamped by negotiation, never trusted.
        let cfg = DeflateConfig { server_max_window_bits: 3, client_max_window_bits: 200, ..on() };
        let got = neg(&cfg, &["permessage-deflate; client_max_window_bits"]).unwrap();
        assert_eq!((got.server_max_window_bits, got.client_max_window_bits), (9, 15));
    }

    proptest! {
        /// Whatever the header, negotiation never panics, and an answer only ever narrows
        /// what was offered: it re-parses as an offer that is accepted as itself.
        #[test]
        fn answers_are_always_acceptable_offers(
            items in proptest::collection::vec(
                proptest::collection::vec(
                    prop_oneof![
                        Just("server_no_context_takeover".to_string()),
                        Just("client_no_context_takeover".to_string()),
                        (8u8..=15).prop_map(|b| format!("server_max_window_bits={b}")),
                        (8u8..=15).prop_map(|b| format!("client_max_window_bits={b}")),
                        Just("client_max_window_bits".to_string()),
                        "[a-z_]{1,8}(=[0-9a-z]{1,3})?",
                    ],
                    0..4,
                ),
                0..4,
            ),
            sbits in 9u8..=15,
            cbits in 8u8..=15,
            snct in any::<bool>(),
            cnct in any::<bool>(),
        ) {
            let offers: Vec<String> = items
                .iter()
                .map(|ps| {
                    let mut s = PERMESSAGE_DEFLATE.to_string();
                    for p in ps {
                        s.push_str("; ");
                        s.push_str(p);
                    }
                    s
                })
                .collect();
            let cfg = DeflateConfig {
                enabled: true,
                server_no_context_takeover: snct,
                client_no_context_takeover: cnct,
                server_max_window_bits: sbits,
                client_max_window_bits: cbits,
                ..DeflateConfig::default()
            };
            let got = negotiate(&cfg, offers.iter().map(String::as_str)).unwrap();
            if let Some(a) = got {
                let i = offers
                    .iter()
                    .position(|o| accept(&cfg, &Offer::parse(o).unwrap()).is_some())
                    .unwrap();
                let offer = Offer::parse(&offers[i]).unwrap();
                let offered = |n: &str| offer.params().any(|(p, _)| p == n);
                prop_assert!(a.server_max_window_bits <= sbits);
                if !offered("client_max_window_bits") {
                    prop_assert_eq!(a.client_max_window_bits, 15);
                }
                if offered("server_no_context_takeover") {
                    prop_assert!(a.server_no_context_takeover);
                }
                let again = a.to_string();
                let re = Offer::parse(&again).unwrap();
                prop_assert_eq!(re.name(), PERMESSAGE_DEFLATE);
            }
        }

        #[test]
        fn arbitrary_headers_never_panic(s in "[ -~\t]{0,60}") {
            let _ = negotiate(&on(), [s.as_str()]);
        }
    }
}
