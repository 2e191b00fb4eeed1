//! An iovec list consumed front to back across short reads and writes.
//!
//! Sockets may transfer fewer bytes than asked; the remainder is resubmitted by advancing this
//! cursor (whole iovecs are skipped, a partly used one is trimmed in place). The entries point
//! at memory the connection's handler promised to keep alive (see `RecvIovecs::push_span`).

/// Linux's `IOV_MAX`: a single `sendmsg`/`recvmsg` takes at most this many iovecs.
pub const IOV_MAX: usize = 1024;

/// A list of iovecs with a cursor at the first byte not yet transferred.
#[derive(Debug, Default)]
pub struct IoVecs {
    iov: Vec<libc::iovec>,
    first: usize,
}

impl IoVecs {
    /// Forget everything (does not touch the memory the entries point to).
    pub fn clear(&mut self) {
        self.iov.clear();
        self.first = 0;
    }

    /// Append a span; empty spans are skipped.
    pub fn push(&mut self, base: *mut u8, len: usize) {
        if len > 0 {
            self.iov.push(libc::iovec {
                iov_base: base.cast(),
                iov_len: len,
            });
        }
    }

    /// The not yet transferred entries.
    pub fn pending(&self) -> &[libc::iovec] {
        &self.iov[self.first..]
    }

    /// Bytes not yet transferred.
    pub fn remaining(&self) -> usize {
        self.pending().iter().map(|v| v.iov_len).sum()
    }

    /// Whether everything was transferred.
    pub fn is_done(&self) -> bool {
        self.first == self.iov.len()
    }

    /// Record that `n` more bytes were transferred. Returns `false` if `n` exceeds what remained
    /// (a kernel/caller bug the caller must treat as an error; the cursor is then at the end).
    pub fn advance(&mut self, mut n: usize) -> bool {
        while n > 0 {
            let Some(v) = self.iov.get_mut(self.first) else {
                return false;
            };
            if n < v.iov_len {
                // Trim the partly transferred entry in place.
                v.iov_base = v.iov_base.cast::<u8>().wrapping_add(n).cast();
                v.iov_len -= n;
                return true;
            }
            n -= v.iov_len;
            self.first += 1;
        }
        true
    }

    /// Point `msg` at the pending entries (at most [`IOV_MAX`]); the rest goes in a later call.
    /// The msghdr then borrows this list's storage, which must not change until the completion.
    pub fn fill_msghdr(&mut self, msg: &mut libc::msghdr) {
        let pending = &mut self.iov[self.first..];
        // SAFETY: msghdr is plain old data for which all-zero is a valid (empty) value.
        *msg = unsafe { std::mem::zeroed() };
        msg.msg_iov = pending.as_mut_ptr();
        msg.msg_iovlen = pending.len().min(IOV_MAX) as _;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advance_across_and_within_entries() {
        let mut a = [0u8; 10];
        let mut b = [0u8; 5];
        let mut v = IoVecs::default();
        v.push(a.as_mut_ptr(), a.len());
        v.push(b.as_mut_ptr(), 0);
        v.push(b.as_mut_ptr(), b.len());
        assert_eq!(v.pending().len(), 2, "empty span skipped");
        assert_eq!(v.remaining(), 15);
        assert!(v.advance(3));
        assert_eq!(v.remaining(), 12);
        assert_eq!(v.pending()[0].iov_base as usize, a.as_ptr() as usize + 3);
        assert!(v.advance(7));
        assert_eq!(v.pending().len(), 1);
        assert_eq!(v.pending()[0].iov_base as usize, b.as_ptr() as usize);
        assert!(v.advance(4));
        assert!(!v.is_done());
        assert!(!v.advance(2), "overrun reported");
        assert!(v.is_done());
        let mut msg: libc::msghdr = unsafe_zeroed();
        v.clear();
        v.push(a.as_mut_ptr(), 1);
        v.fill_msghdr(&mut msg);
        assert_eq!(msg.msg_iovlen, 1);
    }

    fn unsafe_zeroed() -> libc::msghdr {
        // SAFETY: all-zero is a valid msghdr.
        unsafe { std::mem::zeroed() }
    }
}
