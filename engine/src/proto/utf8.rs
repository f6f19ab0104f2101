//! UTF-8 validation of text messages, whole or chunk by chunk across reads and fragments.
//!
//! This module owns the rule of RFC 6455 §8.1: a text message that is not valid UTF-8 fails
//! the connection (close code 1007), and it fails *fast*: [`Utf8Validator::feed`] rejects the
//! chunk in which the input stops being a prefix of any valid UTF-8 text, not the end of the
//! message. So `F4 90`, `E0 80`, `ED A0` or `C0` at the end of a chunk are errors at once, while
//! `E2 82` is carried until the next chunk completes (or breaks) it.
//!
//! The bulk of each chunk goes to `simdutf8` once. At most three bytes of an unfinished
//! character are carried between chunks, in the validator itself: nothing here allocates.

/// Invalid UTF-8 was seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Utf8Error;

impl std::fmt::Display for Utf8Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("invalid UTF-8")
    }
}

impl std::error::Error for Utf8Error {}

/// Validates a text message chunk by chunk, failing as soon as a sequence is invalid.
///
/// Feed every chunk of the message in order, then call [`finish`](Self::finish). After an
/// error the message is invalid whatever follows; the validator is reset, ready for the next
/// message.
#[derive(Debug, Default, Clone)]
pub struct Utf8Validator {
    /// The first bytes of a character the last chunk ended inside; `carry[..carry_len]`.
    carry: [u8; 3],
    carry_len: u8,
}

impl Utf8Validator {
    /// A validator at the start of a message.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds the next chunk of the message.
    ///
    /// Returns `Err` as soon as the bytes fed so far cannot begin any valid UTF-8 text.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<(), Utf8Error> {
        let r = self.feed_inner(chunk);
        if r.is_err() {
            self.reset();
        }
        r
    }

    fn feed_inner(&mut self, mut chunk: &[u8]) -> Result<(), Utf8Error> {
        if self.carry_len > 0 {
            chunk = self.complete_carry(chunk)?;
            if self.carry_len > 0 {
                // The whole chunk went into the carried character, which is still unfinished.
                return Ok(());
            }
        }
        let split = incomplete_tail_start(chunk);
        let (body, tail) = chunk.split_at(split);
        if simdutf8::basic::from_utf8(body).is_err() {
            return Err(Utf8Error);
        }
        if !tail.is_empty() {
            check_prefix(tail)?;
            self.keep(tail);
        }
        Ok(())
    }

    /// Completes the carried character with the first bytes of `chunk` and returns the rest of
    /// `chunk`. Leaves the character carried if `chunk` is too short to finish it.
    fn complete_carry<'c>(&mut self, chunk: &'c [u8]) -> Result<&'c [u8], Utf8Error> {
        let have = usize::from(self.carry_len);
        let mut seq = [0u8; 4];
        // Copy all three slots (fixed size, no `memcpy` call); `have` says which count.
        seq[..3].copy_from_slice(&self.carry);
        // The carry passed `check_prefix`, so its first byte is a lead byte of a 2-4 byte
        // sequence and `have` is less than that length.
        let need = sequence_len(seq[0]).saturating_sub(have);
        let take = need.min(chunk.len());
        let (more, rest) = chunk.split_at(take);
        seq[have..have + take].copy_from_slice(more);
        let seq = &seq[..have + take];
        if take == need {
            if core::str::from_utf8(seq).is_err() {
                return Err(Utf8Error);
            }
            self.carry_len = 0;
        } else {
            check_prefix(seq)?;
            self.keep(seq);
        }
        Ok(rest)
    }

    /// Carries `seq`, the 1 to 3 bytes of an unfinished character, to the next chunk.
    #[inline]
    fn keep(&mut self, seq: &[u8]) {
        for (slot, &b) in self.carry.iter_mut().zip(seq) {
            *slot = b;
        }
        // At most 3: every caller passed `check_prefix` on a sequence with no whole character.
        self.carry_len = seq.len().min(3) as u8;
    }

    /// Ends the message: an unfinished character at the end is an error. Resets the validator
    /// either way.
    pub fn finish(&mut self) -> Result<(), Utf8Error> {
        let complete = self.carry_len == 0;
        self.reset();
        if complete {
            Ok(())
        } else {
            Err(Utf8Error)
        }
    }

    /// Forgets any carried bytes: the validator is at the start of a message again.
    pub fn reset(&mut self) {
        self.carry_len = 0;
    }
}

/// Validates a whole buffer.
#[inline]
pub fn validate(buf: &[u8]) -> Result<&str, Utf8Error> {
    simdutf8::basic::from_utf8(buf).map_err(|_| Utf8Error)
}

/// How long a sequence starting with `b` claims to be. Continuation bytes and bytes that can
/// start nothing count as 1, so the caller leaves them to the full validator.
#[inline]
fn sequence_len(b: u8) -> usize {
    match b {
        0xc0..=0xdf => 2,
        0xe0..=0xef => 3,
        0xf0..=0xf7 => 4,
        _ => 1,
    }
}

/// Where the character that `chunk` ends inside begins, or `chunk.len()` if it ends on a
/// character boundary (as far as its last three bytes tell: anything else is an error the full
/// validator finds).
#[inline]
fn incomplete_tail_start(chunk: &[u8]) -> usize {
    let len = chunk.len();
    for back in 1..=len.min(3) {
        let i = len - back;
        let b = chunk[i];
        if b & 0xc0 != 0x80 {
            // The last byte that is not a continuation: the character starts here.
            return if sequence_len(b) > back { i } else { len };
        }
    }
    len
}

/// `seq` (1 to 3 bytes, no whole character) must be the start of some valid character.
#[inline]
fn check_prefix(seq: &[u8]) -> Result<(), Utf8Error> {
    match simdutf8::compat::from_utf8(seq) {
        // Unreachable for an unfinished character; a finished one is fine too.
        Ok(_) => Ok(()),
        // `error_len() == None` means only "the input ended too soon": a valid prefix.
        Err(e) if e.error_len().is_none() => Ok(()),
        Err(_) => Err(Utf8Error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn samples() -> Vec<Vec<u8>> {
        let mut v: Vec<Vec<u8>> = [
            "",
            "a",
            "hello, world",
            "é",
            "ü",
            "€",
            "𝄞",
            "😀",
            "κόσμε",
            "Ελληνικά και 中文 and emoji 🎉🚀 mixed",
            "日本語のテキスト",
            "\u{7f}\u{80}\u{7ff}\u{800}\u{ffff}\u{10000}\u{10ffff}",
            "\u{d7ff}\u{e000}\u{fffd}",
            "a€b𝄞cé",
        ]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect();
        let invalid: &[&[u8]] = &[
            b"\x80",
            b"\xbf",
            b"a\x80b",
            b"\xc0\x80",
            b"\xc1\xbf",
            b"\xe0\x80\x80",
            b"\xe0\x9f\xbf",
            b"\xf0\x80\x80\x80",
            b"\xf0\x8f\xbf\xbf",
            b"\xed\xa0\x80",
            b"\xed\xbf\xbf",
            b"\xf4\x90\x80\x80",
            b"\xf5\x80\x80\x80",
            b"\xf8\x88\x80\x80\x80",
            b"\xff",
            b"\xfe",
            b"\xc3",
            b"\xe2\x82",
            b"\xf0\x9f\x98",
            b"ok \xe2\x82",
            b"\xe2\x82a",
            b"\xf0\x9f\x98a",
            b"\xc3\xa9\x80",
            b"\xf4\x90",
            b"\xe0\x80",
            b"\xed\xa0",
            b"\xc0",
            b"abc\xf4\x8f\xbf\xbf\xf4\x90",
            b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited",
        ];
        v.extend(invalid.iter().map(|b| b.to_vec()));
        // Something long enough for simdutf8's vector paths, with the error late.
        let mut long = "Ελληνικά 中文 🎉 ascii ".repeat(20).into_bytes();
        v.push(long.clone());
        long.extend_from_slice(b"\xed\xa0\x80 tail");
        v.push(long);
        v
    }

    /// Feeds `chunks`, then finishes; returns the overall verdict.
    fn run(chunks: &[&[u8]]) -> Result<(), Utf8Error> {
        let mut v = Utf8Validator::new();
        for c in chunks {
            v.feed(c)?;
        }
        v.finish()
    }

    fn std_ok(b: &[u8]) -> bool {
        std::str::from_utf8(b).is_ok()
    }

    #[test]
    fn validate_agrees_with_std() {
        for s in samples() {
            assert_eq!(validate(&s).is_ok(), std_ok(&s), "{s:x?}");
        }
    }

    #[test]
    fn every_split_point() {
        for s in samples() {
            for at in 0..=s.len() {
                let (a, b) = s.split_at(at);
                assert_eq!(run(&[a, b]).is_ok(), std_ok(&s), "{s:x?} at {at}");
            }
        }
    }

    #[test]
    fn every_pair_of_split_points() {
        for s in samples().into_iter().filter(|s| s.len() <= 64) {
            for i in 0..=s.len() {
                for j in i..=s.len() {
                    let r = run(&[&s[..i], &s[i..j], &s[j..]]);
                    assert_eq!(r.is_ok(), std_ok(&s), "{s:x?} at {i},{j}");
                }
            }
        }
    }

    #[test]
    fn byte_by_byte() {
        for s in samples() {
            let chunks: Vec<&[u8]> = s.chunks(1).collect();
            assert_eq!(run(&chunks).is_ok(), std_ok(&s), "{s:x?}");
        }
    }

    /// The length of the shortest prefix of `s` that no valid text starts with, if any.
    fn first_bad_prefix(s: &[u8]) -> Option<usize> {
        (1..=s.len()).find(|&n| match std::str::from_utf8(&s[..n]) {
            Ok(_) => false,
            Err(e) => e.error_len().is_some(),
        })
    }

    #[test]
    fn fails_fast_in_the_chunk_that_breaks() {
        for s in samples() {
            let Some(bad) = first_bad_prefix(&s) else {
                continue;
            };
            for at in 0..=s.len() {
                let mut v = Utf8Validator::new();
                let (a, b) = s.split_at(at);
                let first = v.feed(a);
                if at >= bad {
                    assert_eq!(first, Err(Utf8Error), "{s:x?} at {at}: first chunk");
                } else {
                    assert_eq!(first, Ok(()), "{s:x?} at {at}: first chunk");
                    assert_eq!(v.feed(b), Err(Utf8Error), "{s:x?} at {at}: second chunk");
                }
            }
            // Byte by byte: the byte that makes the prefix invalid is the one rejected.
            let mut v = Utf8Validator::new();
            for (i, byte) in s.iter().enumerate() {
                let r = v.feed(std::slice::from_ref(byte));
                assert_eq!(r.is_err(), i + 1 == bad, "{s:x?} byte {i}");
                if r.is_err() {
                    break;
                }
            }
        }
    }

    #[test]
    fn already_invalid_tails_fail_at_once() {
        for tail in
            [&b"\xf4\x90"[..], b"\xe0\x80", b"\xed\xa0", b"\xc0", b"\xc1", b"\xf5", b"\xf0\x80"]
        {
            let mut chunk = b"some text ".to_vec();
            chunk.extend_from_slice(tail);
            assert_eq!(Utf8Validator::new().feed(&chunk), Err(Utf8Error), "{tail:x?}");
            // Also when the bad tail continues a carried lead byte.
            let mut v = Utf8Validator::new();
            assert_eq!(v.feed(&tail[..1]), if tail.len() > 1 { Ok(()) } else { Err(Utf8Error) });
            if tail.len() > 1 {
                assert_eq!(v.feed(&tail[1..]), Err(Utf8Error), "{tail:x?}");
            }
        }
    }

    #[test]
    fn carries_valid_unfinished_characters() {
        let mut v = Utf8Validator::new();
        assert_eq!(v.feed(b"abc \xf0"), Ok(()));
        assert_eq!(v.feed(b"\x9f"), Ok(()));
        assert_eq!(v.feed(b""), Ok(()));
        assert_eq!(v.feed(b"\x98"), Ok(()));
        assert_eq!(v.feed(b"\x80 done"), Ok(()));
        assert_eq!(v.finish(), Ok(()));
        // Truncated at message end.
        assert_eq!(v.feed(b"\xe2\x82"), Ok(()));
        assert_eq!(v.finish(), Err(Utf8Error));
        // `finish` reset the validator.
        assert_eq!(v.finish(), Ok(()));
    }

    #[test]
    fn reset_forgets_the_carry() {
        let mut v = Utf8Validator::new();
        assert_eq!(v.feed(b"\xe2"), Ok(()));
        v.reset();
        assert_eq!(v.feed(b"plain"), Ok(()));
        assert_eq!(v.finish(), Ok(()));
    }

    #[test]
    fn error_resets() {
        let mut v = Utf8Validator::new();
        assert_eq!(v.feed(b"\xe2\x82"), Ok(()));
        assert_eq!(v.feed(b"x"), Err(Utf8Error));
        assert_eq!(v.feed(b"fresh"), Ok(()));
        assert_eq!(v.finish(), Ok(()));
    }

    /// Random bytes biased towards UTF-8: mostly whole characters, sometimes raw bytes.
    fn utf8ish() -> impl Strategy<Value = Vec<u8>> {
        let piece = prop_oneof![
            8 => any::<char>().prop_map(|c| c.to_string().into_bytes()),
            1 => any::<u8>().prop_map(|b| vec![b]),
        ];
        prop::collection::vec(piece, 0..200).prop_map(|v| v.concat())
    }

    proptest! {
        #[test]
        fn random_chunking_agrees_with_std(
            bytes in prop_oneof![utf8ish(), prop::collection::vec(any::<u8>(), 0..300)],
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
        ) {
            let mut points: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
            points.sort_unstable();
            let mut chunks = Vec::new();
            let mut from = 0;
            for p in points {
                chunks.push(&bytes[from..p]);
                from = p;
            }
            chunks.push(&bytes[from..]);
            prop_assert_eq!(run(&chunks).is_ok(), std_ok(&bytes));
            prop_assert_eq!(validate(&bytes).is_ok(), std_ok(&bytes));
        }
    }
}
