//! Fuzz target: the opening handshake parser and the responses written from what it returns.
//!
//! Checks, beyond "never panics": a complete head is within `max_head` and the buffer, parses
//! the same alone, and every strict prefix of it is `Partial`; every response we write (101 with
//! the request's own headers echoed as extras, and each error's 4xx) is well-formed HTTP/1.1 of
//! bounded size whose `Content-Length` matches its body; a request refused as plain HTTP parses
//! with `parse_http` and gets a well-formed `write_response`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sockeye::proto::handshake::{
    accept_key, parse_http, parse_request, write_accept, write_error, write_reject, write_response,
    Parsed, DEFAULT_MAX_HEAD, MAX_HEADERS,
};

/// Parses `out` as an HTTP/1.1 response; returns its status and head length.
fn check_response(out: &[u8]) -> (u16, usize) {
    let mut headers = [httparse::EMPTY_HEADER; 2 * MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let head = match resp.parse(out) {
        Ok(httparse::Status::Complete(n)) => n,
        other => panic!("bad response {other:?}: {:?}", String::from_utf8_lossy(out)),
    };
    let code = resp.code.expect("status code");
    if let Some(h) = resp
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
    {
        let len: usize = std::str::from_utf8(h.value)
            .expect("ascii")
            .parse()
            .expect("number");
        assert_eq!(
            head + len,
            out.len(),
            "Content-Length does not match the body"
        );
    } else {
        assert_eq!(head, out.len(), "trailing bytes after a bodyless response");
    }
    (code, head)
}

fuzz_target!(|data: &[u8]| {
    // The first byte picks the limit, so small limits get exercised too.
    let (max, data) = match data.split_first() {
        Some((&b, rest)) if b < 0x10 => (usize::from(b) * 64, rest),
        _ => (DEFAULT_MAX_HEAD, data),
    };
    match parse_request(data, max) {
        Ok(Parsed::Complete(req, n)) => {
            assert!(n <= data.len() && n <= max);
            assert!(n > 0 && data[n - 1] == b'\n');
            match parse_request(&data[..n], max) {
                Ok(Parsed::Complete(_, m)) => assert_eq!(m, n),
                other => panic!("head alone parses differently: {other:?}"),
            }
            for k in [0, n / 2, n - 1] {
                assert!(
                    matches!(parse_request(&data[..k], max), Ok(Parsed::Partial)),
                    "prefix {k}"
                );
            }
            // Exercise every getter.
            let _ = (
                req.method(),
                req.path(),
                req.query(),
                req.target(),
                req.host(),
                req.origin(),
            );
            let _ = (
                req.protocols().count(),
                req.extensions().count(),
                req.header("host"),
            );
            // Echo the request's headers back as extras: the writer must filter what is unsafe.
            let extra: Vec<(&str, &str)> = req
                .headers()
                .filter_map(|(name, v)| Some((name, std::str::from_utf8(v).ok()?)))
                .collect();
            let accept = accept_key(req.key().as_bytes());
            let mut out = Vec::new();
            write_accept(&accept, req.protocols().next(), &extra, &mut out);
            assert!(
                out.len() <= 256 + n,
                "101 response of {} bytes for a {n}-byte head",
                out.len()
            );
            assert_eq!(check_response(&out).0, 101);
            let mut out = Vec::new();
            let status = u16::from_be_bytes([data[0], data[n / 2]]);
            write_reject(status, &extra, &mut out);
            assert!(out.len() <= 512 + n);
            check_response(&out);
        }
        Ok(Parsed::Partial) => assert!(data.len() <= max),
        Err(e) => {
            let mut out = Vec::new();
            write_error(&e, &mut out);
            assert_eq!(check_response(&out).0, e.status());
            assert!(out.len() < 512);
            // The plain-HTTP path: a request refused only for not upgrading parses as HTTP.
            let plain = parse_http(data, max);
            if e.is_plain_http() {
                let Ok(Parsed::Complete(req, n)) = plain else {
                    panic!("plain GET does not parse as HTTP: {plain:?}");
                };
                assert!(n <= data.len() && n <= max && req.key().is_empty());
                let _ = (
                    req.path(),
                    req.query(),
                    req.host(),
                    req.origin(),
                    req.protocols().count(),
                );
                let mut out = Vec::new();
                let body = &data[n..];
                write_response(u16::from(data[0]) * 3, req.target(), body, &mut out);
                assert!(out.len() <= 256 + body.len() + req.target().len());
                check_response(&out);
            }
        }
    }
});
