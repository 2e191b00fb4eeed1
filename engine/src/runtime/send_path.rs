//! How uploads leave a core: copied by `sendmsg` from the mapping, spliced from the
//! file's page-cache pages without a copy, or sent zero-copy from the mapping with
//! `SENDMSG_ZC` ([`SendPath`]).
//!
//! The splice path: each connection that uploads gets a pipe (1 MiB where the kernel
//! allows); one send is a linked io_uring chain that writes the protocol bytes into the
//! pipe and splices each block's pages from its file into it, in stream order, then one
//! splice moves the pipe's content into the socket. The sender never touches the
//! payload: the socket's buffers reference the page-cache pages, which the kernel keeps
//! alive (page references) until the stack has released them, so a send completing
//! early can never let a page be reused under it; what the pipe and socket hold is the
//! file's content, which a seeder does not change (the storage's mapping contract) and
//! every receiver checks against the piece hash anyway. A span that is not inside a file
//! registered with [`crate::storage::files`] is written into the pipe (copied) instead.
//!
//! `auto` splices only towards remotes on other hosts. To a socket on this host (loopback,
//! or an address of one of this host's interfaces) the receiver pays for the sender's
//! saved copy: measured by `corvid-bench sendpath` on loopback (s/GiB sender / receiver)
//! copy 0.16 / 0.16, sendfile 0.09 / 0.38. A NIC sends the referenced pages by DMA, so
//! on a real link only the sender's side of that trade remains. A veth pair between two
//! namespaces is not "this host" to `auto` (the remote address is on no interface of the
//! sender's namespace), although its receiver shares the machine.
//!
//! Measured (this 2-core VM, shared with other helpers' builds and benchmarks the whole
//! time, load average 7-19, so only ratios within one run mean much): `corvid-bench link
//! --size 1GiB --runs 3 --methods iperf3,ceiling,corvid --send-path MODE`, two rounds of
//! the four runs (`benches/runs/2026-11-29-vm/link-{,veth-}sendpath-{copy,splice}{,-r2}`),
//! medians, CPU s/GiB, round 1 / round 2:
//!
//! | path, mode | seeder | iperf3 sender, same run | peer |
//! |---|---|---|---|
//! | loopback, copy | 0.43 / 0.34 | 0.12 / 0.22 | 1.57 / 1.14 |
//! | loopback, splice | 0.52 / 0.47 | 0.21 / 0.25 | 2.97 / 1.68 |
//! | veth, copy | 0.40 / 0.54 | 0.13 / 0.30 | 1.30 / 1.35 |
//! | veth, splice | 0.55 / 0.52 | 0.26 / 0.28 | 1.37 / 1.42 |
//!
//! `corvid-bench sendpath` in the same session (`sendpath-splice-session-*.txt`, 256 KiB
//! per call, sender / receiver s/GiB): loopback copy 0.26 / 0.24, sendfile 0.15 / 0.54;
//! veth copy 0.28 / 0.27, sendfile 0.30 / 0.33.
//!
//! Also 4 interleaved pairs of one seeder and one peer, 512 MiB over loopback, seeder CPU
//! s: copy 0.16 / 0.18 / 0.15 / 0.21, splice 0.20 / 0.16 / 0.21 / 0.27. So splicing does
//! not cut the seeder's CPU here: over loopback it costs a fifth to a third more, over veth
//! one round says more and one the same. Why: BitTorrent frames each
//! 16 KiB block with a 13-byte header, so a chain has two steps per block (write the
//! header, splice the block's four or five pages), each an io-wq step of about a
//! microsecond, which is what copying the 16 KiB costs (~2.4 us per block at 0.16
//! s/GiB); on loopback and veth the sender's context also runs the receiver's packet
//! delivery, the same for both paths. Before the rings that splice dropped
//! DEFER_TASKRUN (`event_loop::build_ring`), every step woke the core: 0.88 against 0.42
//! s/GiB. The receiver on the same machine pays more with splice (1.57 -> 2.97 and 1.14 -> 1.68
//! over loopback: it copies out of page-cache pages instead of fresh socket memory), which a
//! NIC would not pass on. Whether splice wins over a NIC, where the sender's copy reads a
//! cold page cache and writes socket memory that the NIC then reads, is not measured;
//! what would cut the per-block steps is one zero-copy `sendmsg` per batch of headers and
//! mapped spans (io_uring `SEND_ZC`), with the header bytes kept until its notification.
//! So the default stays `copy`.
//!
//! The zero-copy path (`zerocopy`): each batch, headers and mapped spans together, goes
//! out in one io_uring `SENDMSG_ZC`; the kernel pins the spans' pages and the batch's
//! memory stays untouched (`send_inflight`) until every notification CQE of it arrived,
//! also when the connection closes meanwhile (the notifications count in flight). The
//! notifications report whether the kernel copied after all (`SendCounters::zc_notifs`).
//! Towards a socket on this host (loopback, veth) it always does: delivery to a local
//! socket copies a zero-copy skb (`skb_copy_ubufs`), in the sender's softirq. Measured
//! here (session 8, `benches/runs/2026-11-29-vm/perf-session8`, 3 interleaved pairs of one
//! seed and one peer, 1 GiB over loopback, CPU s seed / peer): copy 0.36/1.15,
//! 0.35/1.17, 0.67/1.39; zerocopy 0.77/1.42, 0.99/1.76, 0.71/1.60. The seeder's profile:
//! 36% that delivery copy, 19% pinning pages, plus the mapping's faults; so the default
//! stays `copy`. Over a NIC, which takes the pinned pages by DMA, that copy is not made;
//! not measurable on this machine.
//!
//! Probed once at start ([`probe_for`]): for splicing `IORING_OP_SPLICE`,
//! `IOSQE_CQE_SKIP_SUCCESS` and a pipe that can be sized, for zero-copy
//! `IORING_OP_SENDMSG_ZC`; where that fails the runtime falls back to the copy path and
//! says why (`Runtime::send_path_note`).

use std::fmt;
use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

/// Which send path uploads take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SendPath {
    /// `sendmsg` from the mapping: the kernel copies each byte into socket memory.
    #[default]
    Copy,
    /// Splice from the file through a pipe: no copy on the sending host.
    Splice,
    /// Splice towards other hosts, copy towards this host (where the receiver would pay).
    Auto,
    /// io_uring `SENDMSG_ZC` of the whole batch (headers and mapped spans): the socket
    /// references the pages; the batch's memory is kept until the kernel's notification.
    ZeroCopy,
}

impl SendPath {
    /// Whether a connection to `peer` splices under this setting; `local` lists this host's
    /// interface addresses.
    pub fn splices_to(self, peer: IpAddr, local: &[IpAddr]) -> bool {
        match self {
            SendPath::Copy | SendPath::ZeroCopy => false,
            SendPath::Splice => true,
            SendPath::Auto => !is_this_host(peer, local),
        }
    }
}

impl fmt::Display for SendPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SendPath::Copy => "copy",
            SendPath::Splice => "splice",
            SendPath::Auto => "auto",
            SendPath::ZeroCopy => "zerocopy",
        })
    }
}

/// A send path name that is none of `copy`, `splice`, `auto`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown send path {0:?}: expected copy, splice, auto or zerocopy")]
pub struct UnknownSendPath(pub String);

impl FromStr for SendPath {
    type Err = UnknownSendPath;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "copy" => Ok(SendPath::Copy),
            "splice" => Ok(SendPath::Splice),
            "auto" => Ok(SendPath::Auto),
            "zerocopy" => Ok(SendPath::ZeroCopy),
            other => Err(UnknownSendPath(other.to_owned())),
        }
    }
}

/// Whether `ip` is this host: loopback, unspecified, or one of its interface addresses
/// (IPv4-mapped IPv6 compared as IPv4).
pub fn is_this_host(ip: IpAddr, local: &[IpAddr]) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    ip.is_loopback() || ip.is_unspecified() || local.contains(&ip)
}

/// Bytes that left through each path, across every core of a runtime.
#[derive(Debug, Default)]
pub struct SendCounters {
    spliced: AtomicU64,
    copied: AtomicU64,
    zc_sent: AtomicU64,
    zc_notifs: AtomicU64,
    zc_copied: AtomicU64,
}

impl SendCounters {
    /// Bytes moved from a pipe into a socket (the splice path).
    pub fn spliced(&self) -> u64 {
        self.spliced.load(Ordering::Relaxed)
    }

    /// Bytes sent with `sendmsg` (the copy path, and every send without file payload).
    pub fn copied(&self) -> u64 {
        self.copied.load(Ordering::Relaxed)
    }

    /// Bytes sent with `SENDMSG_ZC` (the zero-copy path); not in [`copied`](Self::copied).
    pub fn zc_sent(&self) -> u64 {
        self.zc_sent.load(Ordering::Relaxed)
    }

    /// `(notifications, of which the kernel reported it copied the data)` of zero-copy
    /// sends: on loopback and veth every one is copied at delivery to the local socket.
    pub fn zc_notifs(&self) -> (u64, u64) {
        (
            self.zc_notifs.load(Ordering::Relaxed),
            self.zc_copied.load(Ordering::Relaxed),
        )
    }

    pub(crate) fn add_zc_sent(&self, n: u64) {
        self.zc_sent.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn add_zc_notif(&self, copied: bool) {
        self.zc_notifs.fetch_add(1, Ordering::Relaxed);
        if copied {
            self.zc_copied.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn add_spliced(&self, n: u64) {
        self.spliced.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn add_copied(&self, n: u64) {
        self.copied.fetch_add(n, Ordering::Relaxed);
    }
}

/// The pipe size asked for: the kernel's default `pipe-max-size`, which unprivileged
/// processes may set.
const PIPE_BYTES: usize = 1 << 20;
/// Pipe buffers a batch is planned for before the connection's pipe exists (pages of
/// 4 KiB; the pipe made then is checked for its real size).
pub(crate) const PIPE_SLOTS: usize = PIPE_BYTES / 4096;
/// Below this a connection keeps copying: a pipe this small would cut a send into
/// chains of a block or two, each with its own worker hand-off.
const MIN_PIPE_BYTES: usize = 256 << 10;

/// A connection's pipe: the write end takes the chain's steps, the read end feeds the
/// socket. The write end is non-blocking, so a step that would overfill it fails (and the
/// chain with it) rather than waiting for a drain that is linked behind it.
#[derive(Debug)]
pub(crate) struct Pipe {
    pub(crate) read: OwnedFd,
    pub(crate) write: OwnedFd,
    /// Pipe buffers (one page each) the pipe holds.
    pub(crate) slots: usize,
}

impl Pipe {
    pub(crate) fn new() -> io::Result<Pipe> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: `fds` is a live array of two descriptors for pipe2 to fill.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded, so both are open descriptors that nothing else owns.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let w = write.as_raw_fd();
        // SAFETY: fcntl on a descriptor we own; F_SETFL/F_GETFL take an int.
        unsafe {
            let flags = libc::fcntl(w, libc::F_GETFL);
            if flags < 0 || libc::fcntl(w, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        // Over the per-user pipe budget (pipe-user-pages-soft) this fails with EPERM and the
        // pipe keeps its size; what it ends up with is read back below either way.
        // SAFETY: fcntl on a descriptor we own; F_SETPIPE_SZ takes an int.
        unsafe { libc::fcntl(w, libc::F_SETPIPE_SZ, PIPE_BYTES as libc::c_int) };
        // SAFETY: as above; F_GETPIPE_SZ takes no argument.
        let size = unsafe { libc::fcntl(w, libc::F_GETPIPE_SZ) };
        if size < 0 {
            return Err(io::Error::last_os_error());
        }
        let size = size as usize;
        if size < MIN_PIPE_BYTES {
            return Err(io::Error::other(format!(
                "pipe holds only {size} bytes (per-user pipe limit reached?)"
            )));
        }
        Ok(Pipe {
            read,
            write,
            slots: size / page_size(),
        })
    }
}

/// Pipe buffers a step may take: a spliced span one per page it touches, written bytes at
/// most one per page plus one (a write starts a new buffer after a spliced page).
pub(crate) fn slots_for_span(offset: u64, len: usize) -> usize {
    let page = page_size();
    (offset as usize % page + len).div_ceil(page)
}

pub(crate) fn slots_for_bytes(len: usize) -> usize {
    len.div_ceil(page_size()) + 1
}

fn page_size() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 {
        n as usize
    } else {
        4096
    }
}

/// The send path to use for `asked`, given whether splicing works here (`probe`, only
/// called when it matters), and the note saying why not when it falls back.
pub(crate) fn choose(
    asked: SendPath,
    probe: impl FnOnce(SendPath) -> Result<(), String>,
) -> (SendPath, Option<String>) {
    if asked == SendPath::Copy {
        return (asked, None);
    }
    match probe(asked) {
        Ok(()) => (asked, None),
        Err(why) => (
            SendPath::Copy,
            Some(format!(
                "send path {asked} not available, uploads are copied: {why}"
            )),
        ),
    }
}

/// What `asked` needs from the kernel, probed: [`probe_send_zc`] for zero-copy,
/// [`probe_splice`] for the splicing paths.
pub fn probe_for(asked: SendPath) -> Result<(), String> {
    match asked {
        SendPath::Copy => Ok(()),
        SendPath::ZeroCopy => probe_send_zc(),
        SendPath::Splice | SendPath::Auto => probe_splice(),
    }
}

/// Can io_uring send zero-copy here: `IORING_OP_SENDMSG_ZC` (Linux 6.1) with
/// `IORING_SEND_ZC_REPORT_USAGE` (6.2), tried for real: one byte over a UDP socket
/// connected to itself on 127.0.0.1, whose result and notification must both arrive
/// (a kernel without the flag fails the send with EINVAL). `Err` says why not.
pub fn probe_send_zc() -> Result<(), String> {
    let mut ring = io_uring::IoUring::new(4).map_err(|e| format!("io_uring: {e}"))?;
    let mut probe = io_uring::Probe::new();
    ring.submitter()
        .register_probe(&mut probe)
        .map_err(|e| format!("io_uring probe: {e}"))?;
    if !probe.is_supported(io_uring::opcode::SendMsgZc::CODE) {
        return Err("the kernel's io_uring lacks IORING_OP_SENDMSG_ZC (Linux >= 6.1)".to_owned());
    }
    let sock = std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.connect(s.local_addr()?).map(|()| s))
        .map_err(|e| format!("a loopback UDP socket to probe zero-copy sends: {e}"))?;
    /// What the probe's send points at; leaked if it might still be in flight.
    struct Probe {
        byte: [u8; 1],
        iov: libc::iovec,
        msg: libc::msghdr,
    }
    // SAFETY: iovec and msghdr are plain old data for which all-zero is a valid value.
    let mut p: Box<Probe> = Box::new(unsafe { std::mem::zeroed() });
    p.iov.iov_base = p.byte.as_mut_ptr().cast();
    p.iov.iov_len = 1;
    p.msg.msg_iov = &mut p.iov;
    p.msg.msg_iovlen = 1;
    let entry = crate::runtime::ops::send::sendmsg_zc(sock.as_raw_fd(), &p.msg, 1);
    // SAFETY: the boxed msghdr, iovec and byte stay put until both completions are
    // reaped below; where they may not have been, the box is leaked instead of freed.
    unsafe { ring.submission().push(&entry) }.map_err(|_| "io_uring queue full".to_owned())?;
    let (mut result, mut notified) = (None, false);
    for _ in 0..4 {
        if result.is_some() && notified {
            break;
        }
        if let Err(e) = ring.submit_and_wait(1) {
            Box::leak(p);
            return Err(format!("io_uring_enter: {e}"));
        }
        for cqe in ring.completion() {
            if io_uring::cqueue::notif(cqe.flags()) {
                notified = true;
            } else {
                result = Some(cqe.result());
                notified |= !io_uring::cqueue::more(cqe.flags());
            }
        }
    }
    if result.is_none() || !notified {
        Box::leak(p);
    }
    match result {
        Some(n) if n >= 0 && notified => Ok(()),
        Some(n) if n < 0 => Err(format!(
            "a zero-copy send with usage reports fails (Linux >= 6.2 needed): {}",
            io::Error::from_raw_os_error(-n)
        )),
        _ => Err("a zero-copy send did not complete".to_owned()),
    }
}

/// Can this process splice uploads: does io_uring have `IORING_OP_SPLICE`, and can a pipe
/// of at least 256 KiB be made? `Err` says why not.
pub fn probe_splice() -> Result<(), String> {
    let ring = io_uring::IoUring::new(2).map_err(|e| format!("io_uring: {e}"))?;
    if !ring.params().is_feature_skip_cqe_on_success() {
        // The chain's steps complete silently and a failed one ends it (`data_path`).
        return Err(
            "the kernel's io_uring lacks IOSQE_CQE_SKIP_SUCCESS (Linux >= 5.17)".to_owned(),
        );
    }
    let mut probe = io_uring::Probe::new();
    ring.submitter()
        .register_probe(&mut probe)
        .map_err(|e| format!("io_uring probe: {e}"))?;
    if !probe.is_supported(io_uring::opcode::Splice::CODE)
        || !probe.is_supported(io_uring::opcode::Write::CODE)
    {
        return Err("the kernel's io_uring lacks IORING_OP_SPLICE (Linux >= 5.7)".to_owned());
    }
    Pipe::new()
        .map(drop)
        .map_err(|e| format!("cannot make a pipe to splice through: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn auto_splices_only_to_other_hosts() {
        let local: Vec<IpAddr> = vec![Ipv4Addr::new(10, 0, 0, 5).into()];
        let other: IpAddr = Ipv4Addr::new(10, 0, 0, 6).into();
        for here in [
            IpAddr::from(Ipv4Addr::LOCALHOST),
            Ipv4Addr::new(127, 0, 0, 2).into(),
            Ipv6Addr::LOCALHOST.into(),
            Ipv4Addr::new(10, 0, 0, 5).into(),
            Ipv4Addr::new(10, 0, 0, 5).to_ipv6_mapped().into(),
        ] {
            assert!(
                !SendPath::Auto.splices_to(here, &local),
                "{here} is this host"
            );
            assert!(SendPath::Splice.splices_to(here, &local));
        }
        assert!(SendPath::Auto.splices_to(other, &local));
        assert!(!SendPath::Copy.splices_to(other, &local));
        assert!(!SendPath::ZeroCopy.splices_to(other, &local));
    }

    #[test]
    fn names_parse_strictly() {
        for p in [
            SendPath::Copy,
            SendPath::Splice,
            SendPath::Auto,
            SendPath::ZeroCopy,
        ] {
            assert_eq!(p.to_string().parse::<SendPath>(), Ok(p));
        }
        let err = "zero-copy".parse::<SendPath>().unwrap_err();
        assert!(err.to_string().contains("\"zero-copy\""), "{err}");
    }

    #[test]
    fn slots_cover_every_page_a_step_touches() {
        let page = page_size();
        assert_eq!(slots_for_span(0, 16 << 10), (16 << 10) / page);
        assert_eq!(slots_for_span(1, 16 << 10), (16 << 10) / page + 1);
        assert_eq!(slots_for_span(page as u64 - 1, 2), 2);
        assert_eq!(slots_for_bytes(13), 2);
    }

    #[test]
    fn this_machine_can_splice() {
        probe_splice().expect("splice should work on the dev machine");
        let p = Pipe::new().unwrap();
        assert!(p.slots * page_size() >= MIN_PIPE_BYTES);
    }
}
