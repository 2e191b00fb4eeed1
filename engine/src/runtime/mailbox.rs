//! The cross-core mailbox: a crossbeam channel plus an eventfd doorbell.
//!
//! Each core keeps an 8-byte read of its eventfd outstanding on its ring (see `ops::eventfd`).
//! A sender pushes the message into the channel first and then writes to the eventfd, so by
//! the time the ring's read completes the message is visible; the core then drains the
//! channel. Messages carry work that must run on the owning core: dial a peer, shut down,
//! or the service's own message (the node sends `NodeMsg::Poll`: "the swarm changed,
//! poll every connection", and `NodeMsg::CloseDuplicate` when another core kept a second
//! connection to the same peer; haves and verdicts themselves reach the connections through
//! the shared swarm, not through the mailbox).

use crossbeam_channel::{Receiver, Sender};
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;

/// A message for a core.
#[derive(Debug)]
pub enum Envelope<M> {
    /// Open an outbound connection to this address (the service's `on_connected` follows).
    Dial(SocketAddr),
    /// An application message, handed to the service's `on_mailbox`.
    User(M),
    /// Stop: cancel everything, close every connection, return the service.
    Shutdown,
}

/// The core this mailbox belonged to has stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("core {core} has stopped; message not delivered")]
pub struct MailboxClosed {
    /// Index of the stopped core.
    pub core: usize,
}

/// The sending side of a core's mailbox; cheap to clone, usable from any thread.
#[derive(Debug)]
pub struct Mailbox<M> {
    core: usize,
    tx: Sender<Envelope<M>>,
    bell: Arc<OwnedFd>,
}

impl<M> Clone for Mailbox<M> {
    fn clone(&self) -> Self {
        Mailbox {
            core: self.core,
            tx: self.tx.clone(),
            bell: self.bell.clone(),
        }
    }
}

impl<M> Mailbox<M> {
    /// Deliver an application message to the core's service.
    pub fn send(&self, msg: M) -> Result<(), MailboxClosed> {
        self.post(Envelope::User(msg))
    }

    /// Ask the core to open a connection to `addr`.
    pub fn dial(&self, addr: SocketAddr) -> Result<(), MailboxClosed> {
        self.post(Envelope::Dial(addr))
    }

    /// Which core this mailbox reaches.
    pub fn core(&self) -> usize {
        self.core
    }

    /// Enqueue, then ring the doorbell (in that order, so the woken core sees the message).
    pub fn post(&self, msg: Envelope<M>) -> Result<(), MailboxClosed> {
        self.tx
            .send(msg)
            .map_err(|_| MailboxClosed { core: self.core })?;
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live local to an eventfd we own. A failure can only be
        // EAGAIN when the counter is near u64::MAX, i.e. the core is already being woken.
        let _ = unsafe { libc::write(self.bell.as_raw_fd(), (&one as *const u64).cast(), 8) };
        Ok(())
    }
}

/// The receiving side, owned by the core.
#[derive(Debug)]
pub struct Inbox<M> {
    rx: Receiver<Envelope<M>>,
    bell: Arc<OwnedFd>,
}

impl<M> Inbox<M> {
    /// The eventfd the core keeps a read outstanding on.
    pub fn eventfd(&self) -> RawFd {
        self.bell.as_raw_fd()
    }

    /// The next queued message, if any.
    pub fn try_recv(&self) -> Option<Envelope<M>> {
        self.rx.try_recv().ok()
    }
}

/// A connected mailbox/inbox pair for core `core`.
pub fn mailbox<M>(core: usize) -> io::Result<(Mailbox<M>, Inbox<M>)> {
    // SAFETY: eventfd has no memory arguments; the result is checked before use.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by eventfd and is owned by nobody else.
    let bell = Arc::new(unsafe { OwnedFd::from_raw_fd(fd) });
    let (tx, rx) = crossbeam_channel::unbounded();
    Ok((
        Mailbox {
            core,
            tx,
            bell: bell.clone(),
        },
        Inbox { rx, bell },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn post_queues_then_rings() {
        let (tx, rx) = mailbox::<u32>(3).unwrap();
        tx.send(7).unwrap();
        tx.dial("127.0.0.1:1".parse().unwrap()).unwrap();
        let mut counter = 0u64;
        // SAFETY: reads 8 bytes into a live local from our eventfd.
        let n = unsafe { libc::read(rx.eventfd(), (&mut counter as *mut u64).cast(), 8) };
        assert_eq!((n, counter), (8, 2), "one doorbell ring per message");
        assert!(matches!(rx.try_recv(), Some(Envelope::User(7))));
        assert!(matches!(rx.try_recv(), Some(Envelope::Dial(_))));
        assert!(rx.try_recv().is_none());
        drop(rx);
        assert_eq!(tx.send(1), Err(MailboxClosed { core: 3 }));
    }
}
