//! Primitive encodings: big-endian integers, length-prefixed strings and
//! byte strings, counted arrays. The [`Reader`] checks every length and count
//! against the bytes that remain before it reads or reserves anything.

use bytes::BufMut;

use super::ProtocolError;

/// A checked cursor over one frame's bytes.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf, pos: 0 }
    }

    /// Bytes consumed so far.
    pub fn position(&self) -> usize {
        self.pos
    }

    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], ProtocolError> {
        if n > self.remaining() {
            return Err(ProtocolError::Truncated {
                field,
                needed: n,
                available: self.remaining(),
            });
        }
        let bytes = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], ProtocolError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, field)?);
        Ok(out)
    }

    pub fn u8(&mut self, field: &'static str) -> Result<u8, ProtocolError> {
        Ok(self.take(1, field)?[0])
    }

    pub fn u16(&mut self, field: &'static str) -> Result<u16, ProtocolError> {
        self.array(field).map(u16::from_be_bytes)
    }

    pub fn u32(&mut self, field: &'static str) -> Result<u32, ProtocolError> {
        self.array(field).map(u32::from_be_bytes)
    }

    pub fn u64(&mut self, field: &'static str) -> Result<u64, ProtocolError> {
        self.array(field).map(u64::from_be_bytes)
    }

    pub fn i32(&mut self, field: &'static str) -> Result<i32, ProtocolError> {
        self.array(field).map(i32::from_be_bytes)
    }

    pub fn i64(&mut self, field: &'static str) -> Result<i64, ProtocolError> {
        self.array(field).map(i64::from_be_bytes)
    }

    /// A u16 length, then that many bytes of UTF-8.
    pub fn string(&mut self, field: &'static str) -> Result<String, ProtocolError> {
        let len = self.u16(field)? as usize;
        let bytes = self.take(len, field)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| ProtocolError::BadUtf8 { field })
    }

    /// A string of at most `max` bytes; a longer one is refused before it
    /// is copied.
    pub fn string_at_most(
        &mut self,
        field: &'static str,
        max: usize,
    ) -> Result<String, ProtocolError> {
        let at = self.pos;
        let len = self.u16(field)? as usize;
        if len > max {
            return Err(ProtocolError::BadValue {
                field,
                reason: format!("{len} bytes long; at most {max} are allowed"),
            });
        }
        self.pos = at;
        self.string(field)
    }

    /// A u32 length, then that many bytes; returns their range in the frame
    /// so the caller can slice its buffer without copying.
    pub fn bytes_range(
        &mut self,
        field: &'static str,
    ) -> Result<std::ops::Range<usize>, ProtocolError> {
        let len = self.u32(field)? as usize;
        let start = self.pos;
        self.take(len, field)?;
        Ok(start..self.pos)
    }

    /// A u32 element count, checked against the remaining bytes given that
    /// each element takes at least `min_element` bytes.
    pub fn count(
        &mut self,
        field: &'static str,
        min_element: usize,
    ) -> Result<usize, ProtocolError> {
        let count = self.u32(field)? as usize;
        if count.saturating_mul(min_element.max(1)) > self.remaining() {
            return Err(ProtocolError::CountTooLarge {
                field,
                count: count as u64,
                remaining: self.remaining(),
            });
        }
        Ok(count)
    }

    /// Fails if any bytes are left: a request must be exactly its fields.
    pub fn finish(&self) -> Result<(), ProtocolError> {
        if self.remaining() > 0 {
            return Err(ProtocolError::TrailingBytes(self.remaining()));
        }
        Ok(())
    }
}

/// The longest prefix of `s` that fits a u16 length, cut at a character
/// boundary (only error messages can be that long).
fn fit_u16(s: &str) -> &str {
    let mut end = s.len().min(u16::MAX as usize);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Appends a u16-length-prefixed string, cut to fit (see `fit_u16`).
pub fn put_string(buf: &mut impl BufMut, s: &str) {
    let s = fit_u16(s);
    buf.put_u16(s.len() as u16);
    buf.put_slice(s.as_bytes());
}

/// Appends a u32-length-prefixed byte string.
pub fn put_bytes(buf: &mut impl BufMut, b: &[u8]) {
    buf.put_u32(b.len() as u32);
    buf.put_slice(b);
}

/// Bytes `put_string` writes for `s`.
pub fn string_len(s: &str) -> usize {
    2 + fit_u16(s).len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_checked() {
        let mut r = Reader::new(&[0, 5, b'a']);
        assert!(matches!(
            r.string("name"),
            Err(ProtocolError::Truncated {
                field: "name",
                needed: 5,
                ..
            })
        ));
        let mut r = Reader::new(&[0xff, 0xff, 0xff, 0xff, 1, 2]);
        assert!(matches!(
            r.count("items", 1),
            Err(ProtocolError::CountTooLarge { .. })
        ));
        let mut r = Reader::new(&[0xff, 0xff, 0xff, 0xff]);
        assert!(r.bytes_range("batch").is_err());
        let mut r = Reader::new(&[0, 2, 0xc3, 0x28]);
        assert!(matches!(
            r.string("name"),
            Err(ProtocolError::BadUtf8 { .. })
        ));
    }

    #[test]
    fn strings_round_trip_and_long_ones_are_cut_on_a_char_boundary() {
        let mut buf = Vec::new();
        put_string(&mut buf, "héllo");
        assert_eq!(Reader::new(&buf).string("s").unwrap(), "héllo");
        let long = "é".repeat(40_000); // 80,000 bytes
        let mut buf = Vec::new();
        put_string(&mut buf, &long);
        let back = Reader::new(&buf).string("s").unwrap();
        assert_eq!(back.len(), 65_534);
        assert_eq!(string_len(&long), buf.len());
    }
}
