//! Bounds-checked big-endian reads over a [`Bytes`] buffer.
//!
//! Every read checks the remaining length first, so no input can make the decoder panic or read
//! out of bounds; byte strings are returned as zero-copy slices of the input.

use bytes::Bytes;

use super::DecodeError;

pub(crate) struct Reader {
    buf: Bytes,
    pos: usize,
}

impl Reader {
    pub(crate) fn new(buf: Bytes) -> Self {
        Reader { buf, pos: 0 }
    }

    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    fn take<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let end = self
            .pos
            .checked_add(N)
            .ok_or(DecodeError::Truncated { at: self.pos })?;
        let slice = self
            .buf
            .get(self.pos..end)
            .ok_or(DecodeError::Truncated { at: self.pos })?;
        let mut out = [0u8; N];
        out.copy_from_slice(slice);
        self.pos = end;
        Ok(out)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take::<1>()?[0])
    }

    pub(crate) fn i16(&mut self) -> Result<i16, DecodeError> {
        Ok(i16::from_be_bytes(self.take()?))
    }

    pub(crate) fn i32(&mut self) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.take()?))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.take()?))
    }

    pub(crate) fn i64(&mut self) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(self.take()?))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.take()?))
    }

    /// `n` bytes as a slice sharing the input's allocation.
    pub(crate) fn bytes(&mut self, n: usize) -> Result<Bytes, DecodeError> {
        let end = self
            .pos
            .checked_add(n)
            .ok_or(DecodeError::Truncated { at: self.pos })?;
        if end > self.buf.len() {
            return Err(DecodeError::Truncated { at: self.pos });
        }
        let out = self.buf.slice(self.pos..end);
        self.pos = end;
        Ok(out)
    }

    /// A length-prefixed (`Int32`) byte string; negative lengths are rejected.
    pub(crate) fn counted_bytes(&mut self) -> Result<Bytes, DecodeError> {
        let at = self.pos;
        let len = self.i32()?;
        let len = usize::try_from(len).map_err(|_| DecodeError::NegativeLength { at })?;
        self.bytes(len)
    }

    /// A NUL-terminated string, decoded lossily: names are in the server encoding, which is
    /// UTF-8 in every sane deployment, and a bad byte must not stop replication.
    pub(crate) fn cstr(&mut self) -> Result<String, DecodeError> {
        let rest = self
            .buf
            .get(self.pos..)
            .ok_or(DecodeError::Truncated { at: self.pos })?;
        let nul = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or(DecodeError::Unterminated { at: self.pos })?;
        let s = String::from_utf8_lossy(&rest[..nul]).into_owned();
        self.pos += nul + 1;
        Ok(s)
    }

    pub(crate) fn finish(&self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            extra => Err(DecodeError::TrailingBytes { extra }),
        }
    }
}
