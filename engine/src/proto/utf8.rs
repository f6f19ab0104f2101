//! Incremental UTF-8 validation. PLACEHOLDER until the real one lands.

/// Invalid UTF-8 was seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Utf8Error;

/// Validates a text message chunk by chunk, failing as soon as a sequence is invalid.
#[derive(Debug, Default, Clone)]
pub struct Utf8Validator {
    carry: [u8; 4],
    carry_len: u8,
}

impl Utf8Validator {
    /// A validator at the start of a message.
    pub fn new() -> Self {
        Self::default()
    }
    /// Feeds the next chunk.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<(), Utf8Error> {
        let mut v: Vec<u8> = self.carry[..self.carry_len as usize].to_vec();
        v.extend_from_slice(chunk);
        match std::str::from_utf8(&v) {
            Ok(_) => {
                self.carry_len = 0;
                Ok(())
            }
            Err(e) if e.error_len().is_none() => {
                let rest = &v[e.valid_up_to()..];
                self.carry[..rest.len()].copy_from_slice(rest);
                self.carry_len = rest.len() as u8;
                Ok(())
            }
            Err(_) => Err(Utf8Error),
        }
    }
    /// Ends the message: an incomplete trailing sequence is an error. Resets the validator.
    pub fn finish(&mut self) -> Result<(), Utf8Error> {
        let ok = self.carry_len == 0;
        self.carry_len = 0;
        if ok { Ok(()) } else { Err(Utf8Error) }
    }
    /// Forgets any carried bytes.
    pub fn reset(&mut self) {
        self.carry_len = 0;
    }
}

/// Validates a whole buffer.
pub fn validate(buf: &[u8]) -> Result<&str, Utf8Error> {
    simdutf8::basic::from_utf8(buf).map_err(|_| Utf8Error)
}
