//! Positions in a producer's body: byte offsets of slices borrowed from it, and their lines.

/// Line numbers (from 1) of offsets in a body, asked in increasing order: each byte is
/// counted once, so naming the line of every record stays linear in the body.
pub(crate) struct Lines<'a> {
    body: &'a [u8],
    offset: usize,
    line: usize,
}

impl<'a> Lines<'a> {
    pub(crate) fn new(body: &'a [u8]) -> Self {
        Lines { body, offset: 0, line: 1 }
    }

    /// The line byte `offset` is on.
    pub(crate) fn at(&mut self, offset: usize) -> usize {
        let offset = offset.min(self.body.len());
        if offset < self.offset {
            *self = Lines::new(self.body);
        }
        self.line += self.body[self.offset..offset].iter().filter(|&&b| b == b'\n').count();
        self.offset = offset;
        self.line
    }
}

/// Byte offset in `body` of `part`, a slice borrowed from it (at most `body`'s length).
pub(crate) fn offset_of(body: &[u8], part: &[u8]) -> usize {
    (part.as_ptr() as usize).saturating_sub(body.as_ptr() as usize).min(body.len())
}
