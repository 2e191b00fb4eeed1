//! Scenario `sendpath`: what sending from the page cache costs the CPU, per way of sending,
//! over loopback; the measurement behind the seeder's zero-copy question (issue 14, "Cut").
//!
//! One sender thread sends the payload (mapped, warm in page cache) over a loopback TCP
//! connection to a receiver thread that reads it into a 256 KiB buffer, 256 KiB per call:
//! - `copy`: `send` from the mapping (what corvid's seeder does today, through io_uring
//!   `sendmsg`): the kernel copies each byte into socket buffers;
//! - `sendfile`: the socket's buffers reference the page-cache pages (the "splice from the
//!   file" option), no copy on the sending side;
//! - `zerocopy`: `send(MSG_ZEROCOPY)` from the mapping (the option io_uring `SEND_ZC`
//!   offers too), completions drained from the error queue; the report counts how many
//!   completions say the kernel copied after all (`SO_EE_CODE_ZEROCOPY_COPIED`).
//!
//! Reported per GiB: each thread's CPU (`CLOCK_THREAD_CPUTIME_ID`) and the process's
//! (`getrusage`, which also catches softirq work charged to us). On loopback the packet's
//! receive processing runs in the sender's context, and data sent with `MSG_ZEROCOPY` to a
//! local socket is copied when it is delivered (the kernel's msg_zerocopy notes), so
//! loopback is where `zerocopy` cannot win and `sendfile` can.
//!
//! Measured (`benches/runs/2026-11-28-vm/sendpath-2144.txt`, 1 GiB, median of 3, CPU s/GiB
//! sender / receiver / process): loopback copy 0.23 / 0.21 / 0.43, sendfile 0.15 / 0.42 /
//! 0.59, zerocopy 0.29 / 0.34 / 0.64 with every completion flagged copied; veth copy 0.27 /
//! 0.25 / 0.52, sendfile 0.17 / 0.45 / 0.63, zerocopy 0.36 / 0.37 / 0.73, every completion
//! copied. So on both paths this machine has, `MSG_ZEROCOPY` (and io_uring `SEND_ZC`, the
//! same mechanism) is copied at delivery and costs more at both ends; sendfile takes a
//! third off the sender but the receiver, now reading page-cache pages instead of fresh
//! socket memory, pays more than that back. Neither wins here, so the seeder keeps its
//! `sendmsg` from the mapping; on a NIC (sender and receiver on different hosts) the
//! sender-side figure is the one that counts, and sendfile/splice is the option to try.
//! Rerun on 2026-11-29 beside the seeder's splice path (`sendpath-splice-session-*.txt`,
//! shared machine): loopback copy 0.26 / 0.24, sendfile 0.15 / 0.54, zerocopy 0.33 / 0.35;
//! veth copy 0.28 / 0.27, sendfile 0.30 / 0.33, zerocopy 0.40 / 0.58 (sender / receiver).
//! The seeder's splice path itself is measured with `corvid-bench link --send-path`.

use crate::payload;
use crate::units::{self, fmt_bytes};
use anyhow::{bail, Context, Result};
use clap::Args;
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub const METHODS: &[&str] = &["copy", "sendfile", "zerocopy"];
const CHUNK: usize = 256 << 10;
/// From linux/errqueue.h (the libc crate lacks them).
const SO_EE_ORIGIN_ZEROCOPY: u8 = 5;
const SO_EE_CODE_ZEROCOPY_COPIED: u8 = 1;

#[derive(Args, Debug)]
pub struct SendpathArgs {
    /// Payload size.
    #[arg(long, default_value = "1GiB", value_parser = units::parse_size)]
    pub size: u64,
    /// Runs per method (the report shows the median).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Cache directory for the generated payload.
    #[arg(long, default_value = "target/bench-data")]
    pub dir: PathBuf,
    /// Sender and receiver threads in two namespaces joined by a veth pair (root).
    #[arg(long)]
    pub veth: bool,
}

/// Moves the calling thread into network namespace `name` (setns affects one thread).
fn enter_netns(name: &str) -> Result<()> {
    let f = std::fs::File::open(format!("/var/run/netns/{name}"))
        .with_context(|| format!("opening netns {name}"))?;
    // SAFETY: setns on a namespace descriptor we hold open; it changes only this thread.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(last_err("setns"));
    }
    Ok(())
}

/// Where the two threads run: this namespace over loopback, or the two ends of a veth.
struct Ends<'a> {
    veth: Option<&'a crate::link::Veth>,
}

/// CPU seconds of one run.
#[derive(Debug, Clone, Copy, Default)]
struct Cost {
    wall_s: f64,
    sender_s: f64,
    receiver_s: f64,
    process_s: f64,
    /// `zerocopy`: completions, and how many of them the kernel served by copying.
    notifications: u64,
    copied: u64,
}

fn thread_cpu() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the valid, exclusively borrowed `ts`.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

fn process_cpu() -> f64 {
    // SAFETY: rusage is plain data; getrusage fills it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid, exclusively borrowed rusage.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn last_err(what: &str) -> anyhow::Error {
    anyhow::anyhow!("{what}: {}", std::io::Error::last_os_error())
}

/// Drains `MSG_ZEROCOPY` completions from the error queue; returns (notifications, copied).
/// Each notification covers the send calls `ee_info..=ee_data`.
fn drain_zerocopy(fd: i32) -> Result<(u64, u64)> {
    let (mut n, mut copied) = (0u64, 0u64);
    loop {
        let mut control = [0u8; 256];
        // SAFETY: msghdr is plain data; the fields set below point at live buffers.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = control.len();
        // SAFETY: `msg` describes `control`, valid for the call; no data iovecs.
        let rc = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_ERRQUEUE | libc::MSG_DONTWAIT) };
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::WouldBlock {
                return Ok((n, copied));
            }
            bail!("recvmsg(MSG_ERRQUEUE): {e}");
        }
        // SAFETY: CMSG_FIRSTHDR/NXTHDR walk the control buffer the kernel just filled,
        // within msg_controllen; the payload is a sock_extended_err for IP(V6)_RECVERR.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                let ee = libc::CMSG_DATA(c) as *const libc::sock_extended_err;
                let ee = std::ptr::read_unaligned(ee);
                if ee.ee_origin == SO_EE_ORIGIN_ZEROCOPY {
                    let calls = u64::from(ee.ee_data.wrapping_sub(ee.ee_info)) + 1;
                    n += calls;
                    if ee.ee_code & SO_EE_CODE_ZEROCOPY_COPIED != 0 {
                        copied += calls;
                    }
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
        }
    }
}

fn send_all(method: &str, sock: &TcpStream, map: &[u8], file: &std::fs::File) -> Result<Cost> {
    let fd = sock.as_raw_fd();
    let mut cost = Cost::default();
    let mut calls = 0u64;
    if method == "zerocopy" {
        let one: libc::c_int = 1;
        // SAFETY: setsockopt reads one c_int from a live local.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_ZEROCOPY,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(last_err("setsockopt(SO_ZEROCOPY)"));
        }
    }
    let t0 = thread_cpu();
    let mut off = 0usize;
    while off < map.len() {
        let len = CHUNK.min(map.len() - off);
        let rc = match method {
            // SAFETY: the range is inside the live mapping, read only.
            "copy" => unsafe { libc::send(fd, map[off..].as_ptr().cast(), len, 0) },
            "sendfile" => {
                let mut o = off as libc::off_t;
                // SAFETY: sendfile between two descriptors we own; `o` is a live local.
                unsafe { libc::sendfile(fd, file.as_raw_fd(), &mut o, len) }
            }
            _ => {
                // SAFETY: as for copy; the mapping outlives every notification (drained
                // below before this function returns).
                let rc =
                    unsafe { libc::send(fd, map[off..].as_ptr().cast(), len, libc::MSG_ZEROCOPY) };
                if rc < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOBUFS) {
                    // Too many completions outstanding: collect them and retry.
                    let (n, c) = drain_zerocopy(fd)?;
                    cost.notifications += n;
                    cost.copied += c;
                    std::thread::yield_now();
                    continue;
                }
                if rc > 0 {
                    calls += 1;
                    if calls.is_multiple_of(64) {
                        let (n, c) = drain_zerocopy(fd)?;
                        cost.notifications += n;
                        cost.copied += c;
                    }
                }
                rc
            }
        };
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            bail!("{method}: send at {off}: {e}");
        }
        off += rc as usize;
    }
    if method == "zerocopy" {
        // Every send's pages are released before the mapping may go.
        let deadline = Instant::now() + Duration::from_secs(30);
        while cost.notifications < calls {
            let (n, c) = drain_zerocopy(fd)?;
            cost.notifications += n;
            cost.copied += c;
            if Instant::now() > deadline {
                bail!(
                    "zerocopy: {} of {calls} completions within 30 s",
                    cost.notifications
                );
            }
            if n == 0 {
                let mut p = libc::pollfd {
                    fd,
                    events: 0,
                    revents: 0,
                };
                // SAFETY: poll on one live pollfd; POLLERR is always reported.
                unsafe { libc::poll(&mut p, 1, 100) };
            }
        }
    }
    cost.sender_s = thread_cpu() - t0;
    Ok(cost)
}

fn one_run(method: &str, p: &payload::Payload, ends: &Ends) -> Result<Cost> {
    let file = std::fs::File::open(&p.path).with_context(|| format!("{}", p.path.display()))?;
    // SAFETY: the payload belongs to the harness, which does not write it while mapped.
    let map = unsafe { memmap2::Mmap::map(&file) }.context("mapping the payload")?;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let rx_ns = ends.veth.map(|v| v.b.clone());
    let bind_ip = if ends.veth.is_some() {
        crate::link::Veth::RECEIVER_IP
    } else {
        "127.0.0.1"
    };
    let size = p.size;
    let receiver = std::thread::spawn(move || -> Result<(f64, u64)> {
        if let Some(ns) = rx_ns {
            enter_netns(&ns)?;
        }
        let l = TcpListener::bind((bind_ip, 0))?;
        let _ = ready_tx.send(l.local_addr()?);
        let (mut s, _) = l.accept()?;
        let t0 = thread_cpu();
        let mut buf = vec![0u8; CHUNK];
        let mut got = 0u64;
        while got < size {
            let n = s.read(&mut buf)?;
            if n == 0 {
                break;
            }
            got += n as u64;
        }
        Ok((thread_cpu() - t0, got))
    });
    let tx_ns = ends.veth.map(|v| v.a.clone());
    let Ok(addr) = ready_rx.recv_timeout(Duration::from_secs(10)) else {
        let e = receiver.join();
        bail!("receiver did not start: {e:?}");
    };
    let (w0, p0) = (Instant::now(), process_cpu());
    // The sender runs on a thread of its own too, so the namespace switch stays on it.
    let sender = std::thread::scope(|s| {
        s.spawn(|| -> Result<Cost> {
            if let Some(ns) = &tx_ns {
                enter_netns(ns)?;
            }
            let sock = TcpStream::connect(addr)?;
            send_all(method, &sock, &map, &file)
        })
        .join()
    });
    let mut cost = sender.map_err(|_| anyhow::anyhow!("sender thread panicked"))??;
    let (recv_s, got) = receiver
        .join()
        .map_err(|_| anyhow::anyhow!("receiver thread panicked"))??;
    cost.wall_s = w0.elapsed().as_secs_f64();
    cost.process_s = process_cpu() - p0;
    cost.receiver_s = recv_s;
    if got != size {
        bail!("{method}: receiver got {got} of {size} bytes");
    }
    Ok(cost)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub fn run(a: SendpathArgs) -> Result<()> {
    let p = payload::ensure(&a.dir, a.size)?;
    let gib = a.size as f64 / crate::cpu::GIB;
    let veth = if a.veth {
        Some(crate::link::Veth::up()?)
    } else {
        None
    };
    let ends = Ends {
        veth: veth.as_ref(),
    };
    println!(
        "sendpath: {} over {}, {} run(s) per method, {} KiB per call",
        fmt_bytes(a.size),
        if a.veth { "veth" } else { "loopback" },
        a.runs,
        CHUNK >> 10
    );
    println!(
        "{:<10} {:>8} {:>12} {:>14} {:>14} {:>16}",
        "method", "MB/s", "sender s/GiB", "receiver s/GiB", "process s/GiB", "zc copied/notif"
    );
    for m in METHODS {
        let mut runs = Vec::new();
        for _ in 0..a.runs.max(1) {
            payload::warm(&p)?;
            runs.push(one_run(m, &p, &ends)?);
        }
        let med = |f: fn(&Cost) -> f64| median(runs.iter().map(f).collect());
        let last = runs.last().copied().unwrap_or_default();
        println!(
            "{:<10} {:>8.0} {:>12.3} {:>14.3} {:>14.3} {:>16}",
            m,
            a.size as f64 / med(|c| c.wall_s) / 1e6,
            med(|c| c.sender_s) / gib,
            med(|c| c.receiver_s) / gib,
            med(|c| c.process_s) / gib,
            if *m == "zerocopy" {
                format!("{}/{}", last.copied, last.notifications)
            } else {
                "-".into()
            }
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_method_moves_every_byte() {
        let dir = std::env::temp_dir().join(format!("corvid-sendpath-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = payload::ensure(&dir, 4 << 20).unwrap();
        let ends = Ends { veth: None };
        let got: Vec<Result<Cost>> = METHODS.iter().map(|m| one_run(m, &p, &ends)).collect();
        let _ = std::fs::remove_dir_all(&dir);
        for (m, c) in METHODS.iter().zip(got) {
            let c = c.unwrap_or_else(|e| panic!("{m}: {e:#}"));
            assert!(c.sender_s > 0.0 && c.wall_s > 0.0, "{m}: {c:?}");
            if *m == "zerocopy" {
                assert!(c.notifications > 0, "{c:?}");
            }
        }
    }
}
