//! corvid-netem: a userspace packet delayer for the simulated fleet (scripts/fleet) on
//! kernels built without sch_netem (this project's CI kernel among them).
//!
//! scripts/fleet sends each host's packets to a netfilter queue (iptables `-j NFQUEUE
//! --queue-bypass` in the host's namespace, on the link's INPUT and OUTPUT) and runs one
//! of these inside that namespace. Every queued packet is held in the kernel until its
//! verdict; this daemon only learns the packet's id (metadata copy, no payload) and issues
//! ACCEPT once `--delay-ms` has passed, in arrival order, which with one fixed delay is
//! also the order the packets fall due. Loss is not done here: iptables' statistic match
//! drops in the kernel, where its counters show it, and works without any daemon.
//!
//! Failing open, never blackholing: `--queue-bypass` on the rule makes the kernel accept
//! packets when no daemon is bound (it died or was never started); the queue is bound
//! with the fail-open flag, so a full kernel queue accepts instead of dropping; past
//! `--max-held` packets held here, new ones are accepted at once (counted as `overflow`).
//! On SIGTERM/SIGINT every held packet is accepted before exiting.
//!
//! Prints `ready` once bound (scripts/fleet waits for it) and, on exit, one line with the
//! counts: `passed N overflow M`.

use std::collections::VecDeque;
use std::io::Write;
use std::os::fd::RawFd;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;

/// Delays every packet of a netfilter queue by a fixed time (see the module docs).
#[derive(Parser)]
#[command(name = "corvid-netem")]
struct Args {
    /// Netfilter queue number (the iptables rule's --queue-num).
    #[arg(long, default_value_t = 0)]
    queue: u16,
    /// Delay given to every packet, in milliseconds.
    #[arg(long)]
    delay_ms: u64,
    /// Most packets held at once (also the kernel queue's length); past it packets pass
    /// undelayed rather than being dropped.
    #[arg(long, default_value_t = 20_000)]
    max_held: usize,
}

/// Packets waiting for their verdict, in the order they fall due. With one fixed delay
/// the arrival order is the due order, so a deque is the time-ordered queue.
struct DelayLine<T> {
    delay: Duration,
    cap: usize,
    held: VecDeque<(Instant, T)>,
}

impl<T> DelayLine<T> {
    fn new(delay: Duration, cap: usize) -> Self {
        DelayLine {
            delay,
            cap,
            held: VecDeque::new(),
        }
    }

    /// Holds `item` until `now + delay`; gives it back when the line is full.
    fn push(&mut self, now: Instant, item: T) -> Result<(), T> {
        if self.held.len() >= self.cap {
            return Err(item);
        }
        // A clock that never runs backwards keeps the deque sorted; `max` guards it anyway.
        let due = self
            .held
            .back()
            .map_or(now + self.delay, |(last, _)| (*last).max(now + self.delay));
        self.held.push_back((due, item));
        Ok(())
    }

    /// The next item whose time has come.
    fn pop_due(&mut self, now: Instant) -> Option<T> {
        match self.held.front() {
            Some((due, _)) if *due <= now => self.held.pop_front().map(|(_, t)| t),
            _ => None,
        }
    }

    /// When the earliest held item falls due.
    fn next_due(&self) -> Option<Instant> {
        self.held.front().map(|(due, _)| *due)
    }

    fn drain(&mut self) -> impl Iterator<Item = T> + '_ {
        self.held.drain(..).map(|(_, t)| t)
    }
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Socket descriptors this process holds now (from /proc/self/fd).
fn socket_fds() -> std::io::Result<Vec<RawFd>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc/self/fd")? {
        let e = e?;
        let Ok(fd) = e.file_name().to_string_lossy().parse::<RawFd>() else {
            continue;
        };
        if let Ok(target) = std::fs::read_link(e.path()) {
            if target.to_string_lossy().starts_with("socket:") {
                out.push(fd);
            }
        }
    }
    Ok(out)
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("corvid-netem: queue {}: {e}", args.queue);
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> std::io::Result<()> {
    let q = args.queue;
    let cap = u32::try_from(args.max_held).unwrap_or(u32::MAX);
    let before = socket_fds()?;
    let mut queue = nfq::Queue::open()?;
    // nfq does not expose its netlink socket, and waiting needs poll(2) on it (a packet
    // arriving or the next verdict falling due, whichever comes first): it is the one
    // socket that appeared with `open`.
    let fd = match socket_fds()?
        .into_iter()
        .filter(|fd| !before.contains(fd))
        .collect::<Vec<_>>()[..]
    {
        [fd] => fd,
        _ => {
            return Err(std::io::Error::other(
                "cannot tell which descriptor is the netfilter queue's socket",
            ))
        }
    };
    queue.bind(q)?;
    // Only the packet id is needed: copy no payload, accept GSO packets whole (fewer and
    // bigger verdicts), keep at most `cap` in the kernel and accept rather than drop past it.
    queue.set_copy_range(q, 0)?;
    queue.set_recv_gso(q, true)?;
    queue.set_queue_max_len(q, cap)?;
    queue.set_fail_open(q, true)?;
    queue.set_nonblocking(true);
    for sig in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe; no
        // SA_RESTART, so a blocked poll(2) returns EINTR and the loop sees the flag.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            if libc::sigaction(sig, &sa, std::ptr::null_mut()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
    }
    println!("corvid-netem: queue {q} delay {} ms ready", args.delay_ms);
    std::io::stdout().flush()?;

    let mut line: DelayLine<nfq::Message> =
        DelayLine::new(Duration::from_millis(args.delay_ms), args.max_held);
    let (mut passed, mut overflow) = (0u64, 0u64);
    while !STOP.load(Ordering::SeqCst) {
        let now = Instant::now();
        while let Some(mut msg) = line.pop_due(now) {
            msg.set_verdict(nfq::Verdict::Accept);
            queue.verdict(msg)?;
            passed += 1;
        }
        // Wait for a packet, at most until the next verdict is due (and a second at most,
        // a bound on every wait).
        let wait = line
            .next_due()
            .map_or(Duration::from_secs(1), |d| d.saturating_duration_since(now))
            .min(Duration::from_secs(1));
        let ms = libc::c_int::try_from(wait.as_micros().div_ceil(1000)).unwrap_or(1000);
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd on the stack for the duration of the call.
        let r = unsafe { libc::poll(&mut pfd, 1, ms) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if r == 0 {
            continue;
        }
        loop {
            match queue.recv() {
                Ok(msg) => {
                    if let Err(mut msg) = line.push(Instant::now(), msg) {
                        msg.set_verdict(nfq::Verdict::Accept);
                        queue.verdict(msg)?;
                        overflow += 1;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => break,
                Err(e) => return Err(e),
            }
        }
    }
    for mut msg in line.drain().collect::<Vec<_>>() {
        msg.set_verdict(nfq::Verdict::Accept);
        queue.verdict(msg)?;
        passed += 1;
    }
    println!("corvid-netem: queue {q} passed {passed} overflow {overflow}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_fall_due_after_the_delay_in_arrival_order() {
        let t0 = Instant::now();
        let mut l = DelayLine::new(Duration::from_millis(50), 10);
        l.push(t0, 1).unwrap();
        l.push(t0 + Duration::from_millis(10), 2).unwrap();
        assert_eq!(l.next_due(), Some(t0 + Duration::from_millis(50)));
        assert_eq!(l.pop_due(t0 + Duration::from_millis(49)), None);
        assert_eq!(l.pop_due(t0 + Duration::from_millis(50)), Some(1));
        assert_eq!(l.pop_due(t0 + Duration::from_millis(55)), None);
        assert_eq!(l.next_due(), Some(t0 + Duration::from_millis(60)));
        assert_eq!(l.pop_due(t0 + Duration::from_millis(60)), Some(2));
        assert_eq!(l.next_due(), None);
    }

    #[test]
    fn a_full_line_gives_the_item_back() {
        let t0 = Instant::now();
        let mut l = DelayLine::new(Duration::from_millis(5), 2);
        l.push(t0, 'a').unwrap();
        l.push(t0, 'b').unwrap();
        assert_eq!(l.push(t0, 'c'), Err('c'));
        assert_eq!(l.drain().collect::<String>(), "ab");
        assert!(l.push(t0, 'd').is_ok());
    }

    #[test]
    fn an_earlier_clock_reading_never_reorders() {
        let t0 = Instant::now();
        let mut l = DelayLine::new(Duration::from_millis(5), 4);
        l.push(t0 + Duration::from_millis(3), 1).unwrap();
        l.push(t0, 2).unwrap();
        assert_eq!(l.pop_due(t0 + Duration::from_millis(8)), Some(1));
        assert_eq!(l.pop_due(t0 + Duration::from_millis(8)), Some(2));
    }
}
