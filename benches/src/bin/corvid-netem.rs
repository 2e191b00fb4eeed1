//! corvid-netem: a userspace packet delayer for the simulated fleet (scripts/fleet) on
//! kernels built without sch_netem (this project's CI kernel among them).
//!
//! scripts/fleet sends every packet its bridge forwards between two hosts to a netfilter
//! queue (iptables `-j NFQUEUE --queue-bypass` in the bridge's namespace, with
//! br_netfilter) and runs one of these in that namespace. Each queued packet is held in
//! the kernel until its verdict; this daemon only learns the packet's id and the bridge
//! ports it came in on and goes out on (metadata copy, no payload), and issues ACCEPT
//! once the sender's upload delay plus the receiver's download delay have passed, taken
//! from `--delays` (lines `PORT UP_MS DOWN_MS`, reloaded on SIGHUP). Loss is not done
//! here: iptables' statistic match drops in the kernel, where its counters show it, and
//! needs no daemon.
//!
//! Failing open, never blackholing: `--queue-bypass` on the rule makes the kernel accept
//! packets when no daemon is bound (it died or was never started); the queue is bound
//! with the fail-open flag, so a full kernel queue accepts instead of dropping; past
//! `--max-held` packets held here, new ones are accepted at once (counted as `overflow`).
//! On SIGTERM/SIGINT every held packet is accepted before exiting.
//!
//! Prints `ready` once bound (scripts/fleet waits for it) and, on exit, one line with the
//! counts: `passed N overflow M`.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io::Write;
use std::os::fd::RawFd;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;

/// Delays every packet of a netfilter queue (see the module docs).
#[derive(Parser)]
#[command(name = "corvid-netem")]
struct Args {
    /// Netfilter queue number (the iptables rule's --queue-num).
    #[arg(long, default_value_t = 0)]
    queue: u16,
    /// Per bridge port delays: lines `PORT UP_MS DOWN_MS` (UP: packets that come in on
    /// PORT, from its host; DOWN: packets that go out on it, to its host). Reloaded on
    /// SIGHUP.
    #[arg(long)]
    delays: Option<PathBuf>,
    /// Delay added to every packet, in milliseconds.
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// Most packets held at once (also the kernel queue's length); past it packets pass
    /// undelayed rather than being dropped.
    #[arg(long, default_value_t = 20_000)]
    max_held: usize,
}

/// Packets waiting for their verdict, ordered by when they fall due; packets due at the
/// same time (one flow, one delay) keep their arrival order.
struct DelayLine<T> {
    cap: usize,
    seq: u64,
    heap: BinaryHeap<Reverse<Held<T>>>,
}

struct Held<T> {
    due: Instant,
    seq: u64,
    item: T,
}

impl<T> PartialEq for Held<T> {
    fn eq(&self, o: &Self) -> bool {
        (self.due, self.seq) == (o.due, o.seq)
    }
}
impl<T> Eq for Held<T> {}
impl<T> PartialOrd for Held<T> {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl<T> Ord for Held<T> {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.due, self.seq).cmp(&(o.due, o.seq))
    }
}

impl<T> DelayLine<T> {
    fn new(cap: usize) -> Self {
        DelayLine {
            cap,
            seq: 0,
            heap: BinaryHeap::new(),
        }
    }

    /// Holds `item` until `due`; gives it back when the line is full.
    fn push(&mut self, due: Instant, item: T) -> Result<(), T> {
        if self.heap.len() >= self.cap {
            return Err(item);
        }
        self.seq += 1;
        self.heap.push(Reverse(Held {
            due,
            seq: self.seq,
            item,
        }));
        Ok(())
    }

    /// The next item whose time has come.
    fn pop_due(&mut self, now: Instant) -> Option<T> {
        match self.heap.peek() {
            Some(Reverse(h)) if h.due <= now => self.heap.pop().map(|Reverse(h)| h.item),
            _ => None,
        }
    }

    /// When the earliest held item falls due.
    fn next_due(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse(h)| h.due)
    }

    fn drain(&mut self) -> impl Iterator<Item = T> + '_ {
        self.heap.drain().map(|Reverse(h)| h.item)
    }
}

/// Upload and download delay by bridge port (interface index).
#[derive(Debug, Default)]
struct Delays {
    by_port: HashMap<u32, (Duration, Duration)>,
}

impl Delays {
    /// Parses `PORT UP_MS DOWN_MS` lines; `index` resolves a port name to its ifindex.
    fn parse(text: &str, index: impl Fn(&str) -> Option<u32>) -> Result<Delays, String> {
        let mut by_port = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.is_empty() {
                continue;
            }
            let bad = || format!("line {}: want `PORT UP_MS DOWN_MS`, got {line:?}", n + 1);
            let [port, up, down] = f[..] else {
                return Err(bad());
            };
            let ms = |v: &str| {
                v.parse::<u64>()
                    .map(Duration::from_millis)
                    .map_err(|_| bad())
            };
            let ix = index(port).ok_or_else(|| format!("line {}: no interface {port:?}", n + 1))?;
            by_port.insert(ix, (ms(up)?, ms(down)?));
        }
        Ok(Delays { by_port })
    }

    /// A packet's delay: its sender's upload plus its receiver's download.
    fn of(&self, physin: u32, physout: u32) -> Duration {
        let up = self.by_port.get(&physin).map_or(Duration::ZERO, |d| d.0);
        let down = self.by_port.get(&physout).map_or(Duration::ZERO, |d| d.1);
        up + down
    }
}

fn if_index(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: a valid NUL-terminated string that outlives the call.
    let ix = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (ix != 0).then_some(ix)
}

fn load(path: &Option<PathBuf>) -> std::io::Result<Delays> {
    let Some(path) = path else {
        return Ok(Delays::default());
    };
    let text = std::fs::read_to_string(path)?;
    Delays::parse(&text, if_index)
        .map_err(|e| std::io::Error::other(format!("{}: {e}", path.display())))
}

static RELOAD: AtomicBool = AtomicBool::new(false);

extern "C" fn on_hup(_: libc::c_int) {
    RELOAD.store(true, Ordering::SeqCst);
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
    let (mut queue, fd) = open_queue(q, u32::try_from(args.max_held).unwrap_or(u32::MAX))?;
    install_handlers()?;
    let base = Duration::from_millis(args.delay_ms);
    let mut delays = load(&args.delays)?;
    println!("corvid-netem: queue {q} ready");
    std::io::stdout().flush()?;

    let mut line: DelayLine<nfq::Message> = DelayLine::new(args.max_held);
    let (mut passed, mut overflow) = (0u64, 0u64);
    while !STOP.load(Ordering::SeqCst) {
        if RELOAD.swap(false, Ordering::SeqCst) {
            // A bad file keeps the delays in force and says why.
            match load(&args.delays) {
                Ok(d) => delays = d,
                Err(e) => eprintln!("corvid-netem: reload: {e}"),
            }
        }
        let now = Instant::now();
        while let Some(msg) = line.pop_due(now) {
            accept(&mut queue, msg)?;
            passed += 1;
        }
        // Wait for a packet, at most until the next verdict is due (and a second at most,
        // a bound on every wait).
        let wait = line
            .next_due()
            .map_or(Duration::from_secs(1), |d| d.saturating_duration_since(now))
            .min(Duration::from_secs(1));
        if poll_in(fd, wait)? {
            overflow += take_packets(&mut queue, &mut line, |m| {
                base + delays.of(m.get_physindev(), m.get_physoutdev())
            })?;
        }
    }
    for msg in line.drain().collect::<Vec<_>>() {
        accept(&mut queue, msg)?;
        passed += 1;
    }
    println!("corvid-netem: queue {q} passed {passed} overflow {overflow}");
    Ok(())
}

/// Binds queue `q` and finds its netlink socket: nfq does not expose it, and waiting
/// needs poll(2) on it (a packet arriving or the next verdict falling due, whichever
/// comes first). It is the one socket that appeared with `open`.
fn open_queue(q: u16, cap: u32) -> std::io::Result<(nfq::Queue, libc::c_int)> {
    let before = socket_fds()?;
    let mut queue = nfq::Queue::open()?;
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
    Ok((queue, fd))
}

/// SIGTERM and SIGINT stop the loop, SIGHUP reloads the delays file.
fn install_handlers() -> std::io::Result<()> {
    let stop = on_signal as extern "C" fn(libc::c_int) as usize;
    let hup = on_hup as extern "C" fn(libc::c_int) as usize;
    for (sig, handler) in [
        (libc::SIGTERM, stop),
        (libc::SIGINT, stop),
        (libc::SIGHUP, hup),
    ] {
        // SAFETY: the handlers only store to an atomic, which is async-signal-safe; no
        // SA_RESTART, so a blocked poll(2) returns EINTR and the loop sees the flag.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = handler;
            libc::sigemptyset(&mut sa.sa_mask);
            if libc::sigaction(sig, &sa, std::ptr::null_mut()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

/// Waits up to `wait` for `fd` to be readable; false on timeout or a signal.
fn poll_in(fd: libc::c_int, wait: Duration) -> std::io::Result<bool> {
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
            return Ok(false);
        }
        return Err(e);
    }
    Ok(r > 0)
}

fn accept(queue: &mut nfq::Queue, mut msg: nfq::Message) -> std::io::Result<()> {
    msg.set_verdict(nfq::Verdict::Accept);
    queue.verdict(msg)
}

/// Takes every waiting packet into the delay line, due after `delay(packet)`; a packet
/// the full line gives back is accepted at once. Returns how many were.
fn take_packets(
    queue: &mut nfq::Queue,
    line: &mut DelayLine<nfq::Message>,
    delay: impl Fn(&nfq::Message) -> Duration,
) -> std::io::Result<u64> {
    let mut overflow = 0;
    loop {
        match queue.recv() {
            Ok(msg) => {
                let d = delay(&msg);
                if let Err(msg) = line.push(Instant::now() + d, msg) {
                    accept(queue, msg)?;
                    overflow += 1;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(overflow),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => return Ok(overflow),
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_fall_due_in_time_order_and_ties_keep_arrival_order() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut l = DelayLine::new(10);
        l.push(t0 + ms(50), 1).unwrap();
        l.push(t0 + ms(20), 2).unwrap();
        l.push(t0 + ms(50), 3).unwrap();
        assert_eq!(l.next_due(), Some(t0 + ms(20)));
        assert_eq!(l.pop_due(t0 + ms(19)), None);
        assert_eq!(l.pop_due(t0 + ms(20)), Some(2));
        assert_eq!(l.pop_due(t0 + ms(49)), None);
        assert_eq!(l.pop_due(t0 + ms(50)), Some(1));
        assert_eq!(l.pop_due(t0 + ms(50)), Some(3));
        assert_eq!(l.next_due(), None);
    }

    #[test]
    fn a_full_line_gives_the_item_back() {
        let t0 = Instant::now();
        let mut l = DelayLine::new(2);
        l.push(t0, 'a').unwrap();
        l.push(t0, 'b').unwrap();
        assert_eq!(l.push(t0, 'c'), Err('c'));
        let mut all: Vec<char> = l.drain().collect();
        all.sort();
        assert_eq!(all, ['a', 'b']);
        assert!(l.push(t0, 'd').is_ok());
    }

    #[test]
    fn delay_is_the_senders_upload_plus_the_receivers_download() {
        let ix = |n: &str| match n {
            "v0" => Some(10),
            "v1" => Some(11),
            _ => None,
        };
        let d = Delays::parse("v0 50 50\n\nv1 5 7\n", ix).unwrap();
        assert_eq!(d.of(10, 11), Duration::from_millis(57));
        assert_eq!(d.of(11, 10), Duration::from_millis(55));
        // A port with no line (or a packet not bridged: index 0) adds nothing.
        assert_eq!(d.of(0, 10), Duration::from_millis(50));
        assert_eq!(d.of(99, 98), Duration::ZERO);
    }

    #[test]
    fn bad_delay_lines_are_errors_naming_the_line() {
        let ix = |_: &str| Some(1);
        assert!(Delays::parse("v0 50", ix).unwrap_err().contains("line 1"));
        assert!(Delays::parse("v0 50 x", ix).unwrap_err().contains("line 1"));
        let none = |_: &str| None;
        assert!(Delays::parse("\nv9 1 1", none)
            .unwrap_err()
            .contains("line 2: no interface"));
    }
}
