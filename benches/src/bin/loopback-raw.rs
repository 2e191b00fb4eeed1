//! loopback-raw: raw throughput of the io_uring runtime, mapping -> socket -> mapping, over
//! 127.0.0.1, next to iperf3 on the same machine in the same run (the ratio is the number to
//! read; absolute numbers on a shared 2-core box are noisy).
//!
//! One runtime hosts both ends: core 0 dials its own listener; the sender writes an 8-byte
//! length then the source mapping as 1 MiB spans (`sendmsg`, no copy in user space); the
//! receiver reads the payload with `recvmsg` straight into the destination mapping. Both
//! mappings are files in `--dir` (tmpfs by default, so the disk is not measured), pre-faulted.

use anyhow::{bail, Context};
use clap::Parser;
use corvid_engine::runtime::{
    CloseCause, ConnId, Conns, CoreIo, Direction, RecvIovecs, RecvTarget, Runtime, RuntimeConfig,
    SendBuf, Service,
};
use crossbeam_channel::Sender;
use memmap2::MmapMut;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser)]
struct Args {
    /// Payload size per round, MiB.
    #[arg(long, default_value_t = 1024)]
    mib: usize,
    /// Rounds (the median is reported).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Runtime cores.
    #[arg(long, default_value_t = 2)]
    cores: usize,
    /// Where the two mapped files live.
    #[arg(long, default_value = "/dev/shm")]
    dir: std::path::PathBuf,
    /// Seconds of iperf3 for the baseline (0 skips it).
    #[arg(long, default_value_t = 5)]
    iperf_secs: u32,
}

#[derive(Clone, Copy)]
struct Base(*mut u8);
// SAFETY: only handed to the kernel under the runtime's span contracts; the mapping is kept
// alive by the Arc stored next to it.
unsafe impl Send for Base {}

#[derive(Clone)]
struct Region {
    base: Base,
    len: usize,
    _owner: Arc<MmapMut>,
}

struct Bench {
    src: Region,
    dst: Region,
    done: Sender<()>,
}

enum Conn {
    Recv {
        r: Region,
        total: Option<u64>,
        done: u64,
        target: u64,
    },
    Send {
        r: Region,
        header: bool,
        queued: usize,
    },
}

const SPAN: usize = 1 << 20;

impl Service for Bench {
    type Conn = Conn;
    type Msg = ();
    type Error = String;

    fn on_connected(
        &mut self,
        _: &mut CoreIo<'_, ()>,
        _: ConnId,
        _: SocketAddr,
        d: Direction,
        _: Instant,
    ) -> Option<Conn> {
        Some(match d {
            Direction::Inbound => Conn::Recv {
                r: self.dst.clone(),
                total: None,
                done: 0,
                target: 0,
            },
            Direction::Outbound => Conn::Send {
                r: self.src.clone(),
                header: false,
                queued: 0,
            },
        })
    }
    fn next_recv(&mut self, conn: &mut Conn, iov: &mut RecvIovecs<'_>) -> RecvTarget {
        match conn {
            Conn::Recv {
                r,
                total: Some(total),
                done,
                target,
            } if *done < *total => {
                let want = (*total - *done).min(4 * SPAN as u64) as usize;
                let (mut off, end) = (*done as usize, *done as usize + want);
                while off < end {
                    let n = SPAN.min(end - off);
                    // SAFETY: off+n <= total <= r.len (checked in on_bytes); the mapping is
                    // alive (Arc in this Conn) and written only by this connection.
                    unsafe { iov.push_span(r.base.0.add(off), n) };
                    off += n;
                }
                *target = want as u64;
                RecvTarget::Iovecs
            }
            // Read exactly the header, so the payload goes straight to the mapping.
            Conn::Recv { total: None, .. } => RecvTarget::Buffer { max: 8 },
            _ => RecvTarget::Buffer { max: 0 },
        }
    }
    fn on_bytes(
        &mut self,
        _: &mut CoreIo<'_, ()>,
        _: ConnId,
        conn: &mut Conn,
        b: &[u8],
        _: Instant,
    ) -> Result<usize, String> {
        match conn {
            Conn::Recv {
                r,
                total: total @ None,
                ..
            } => {
                let Some(h) = b.get(..8) else { return Ok(0) };
                let len = u64::from_be_bytes(h.try_into().map_err(|_| "header")?);
                if len > r.len as u64 {
                    return Err(format!("announced {len} bytes, room for {}", r.len));
                }
                *total = Some(len);
                Ok(8)
            }
            _ => Err(format!("unexpected {} bytes", b.len())),
        }
    }
    fn on_recv_done(
        &mut self,
        _: &mut CoreIo<'_, ()>,
        _: ConnId,
        conn: &mut Conn,
        _: Instant,
    ) -> Result<(), String> {
        let Conn::Recv {
            total: Some(total),
            done,
            target,
            ..
        } = conn
        else {
            return Err("not receiving".into());
        };
        *done += *target;
        if *done == *total {
            let _ = self.done.send(());
        }
        Ok(())
    }
    fn next_send(&mut self, conn: &mut Conn, out: &mut SendBuf<'_>, _: std::time::Instant) -> bool {
        let Conn::Send { r, header, queued } = conn else {
            return false;
        };
        if !*header {
            out.push_bytes(&(r.len as u64).to_be_bytes());
            *header = true;
        }
        if *queued == r.len {
            return false;
        }
        let n = (r.len - *queued).min(SPAN);
        // SAFETY: queued+n <= len; mapping alive via the Arc in this Conn, not written meanwhile.
        unsafe { out.push_span(r.base.0.add(*queued), n) };
        *queued += n;
        true
    }
    fn on_mailbox(
        &mut self,
        _: &mut CoreIo<'_, ()>,
        _: &mut Conns<'_, Conn, String>,
        _: (),
        _: Instant,
    ) {
    }
    fn on_closed(&mut self, _: &mut CoreIo<'_, ()>, _: ConnId, _: Conn, _: CloseCause<String>) {}
}

fn mapped(
    dir: &std::path::Path,
    len: usize,
    fill: u8,
) -> anyhow::Result<(tempfile_path::Guard, Region)> {
    let path = dir.join(format!("corvid-loopback-{}-{fill}", std::process::id()));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .with_context(|| format!("create {}", path.display()))?;
    let guard = tempfile_path::Guard(path);
    file.set_len(len as u64)?;
    // SAFETY: a file this process just created and alone uses; never truncated while mapped.
    let mut map = unsafe { MmapMut::map_mut(&file) }?;
    // Pre-fault (and give the source non-trivial content).
    for (i, b) in map.iter_mut().enumerate().step_by(4096) {
        *b = fill ^ (i >> 12) as u8;
    }
    let base = Base(map.as_mut_ptr());
    Ok((
        guard,
        Region {
            base,
            len,
            _owner: Arc::new(map),
        },
    ))
}

mod tempfile_path {
    /// Removes the file when dropped.
    pub struct Guard(pub std::path::PathBuf);
    impl Drop for Guard {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

fn iperf3(secs: u32) -> anyhow::Result<f64> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut server = Command::new("iperf3")
        .args([
            "-s",
            "-1",
            "--forceflush",
            "-B",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("run iperf3 (is it installed?)")?;
    // The server prints "Server listening on PORT" once bound: wait for that line (or EOF).
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(
        server.stdout.take().context("iperf3 stdout")?,
    ));
    if !lines.any(|l| l.map(|l| l.contains("Server listening")).unwrap_or(false)) {
        let _ = server.kill();
        let _ = server.wait();
        bail!("iperf3 server did not start");
    }
    let out = Command::new("iperf3")
        .args([
            "-c",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-t",
            &secs.to_string(),
            "-J",
        ])
        .output()
        .context("run iperf3 client")?;
    let _ = server.kill();
    let _ = server.wait();
    let doc: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("iperf3 -J output is not JSON")?;
    let bps = doc["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("iperf3 -J output lacks end.sum_received.bits_per_second")?;
    Ok(bps / 8.0 / (1024.0 * 1024.0))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let len = args.mib << 20;
    let (_g1, src) = mapped(&args.dir, len, 0x5a)?;
    let (_g2, dst) = mapped(&args.dir, len, 0)?;
    let (done_tx, done_rx) = crossbeam_channel::unbounded();
    let config = RuntimeConfig {
        cores: args.cores,
        listen: Some("127.0.0.1:0".parse()?),
        tick: None,
        send_batch: 8 << 20,
        ..RuntimeConfig::default()
    };
    let rt = Runtime::start(config, |_| Bench {
        src: src.clone(),
        dst: dst.clone(),
        done: done_tx.clone(),
    })?;
    let addr = rt.local_addr().context("no listen address")?;
    let mut rates = Vec::new();
    for round in 0..args.rounds {
        // SAFETY: no transfer is running; the runtime does not touch dst between rounds.
        unsafe { std::ptr::write_bytes(dst.base.0, 0, 1) };
        let t = Instant::now();
        rt.mailbox(0).context("core 0")?.dial(addr)?;
        done_rx
            .recv_timeout(Duration::from_secs(120))
            .context("transfer timed out")?;
        let secs = t.elapsed().as_secs_f64();
        let rate = args.mib as f64 / secs;
        eprintln!(
            "round {round}: {} MiB in {secs:.3}s = {rate:.0} MiB/s",
            args.mib
        );
        rates.push(rate);
    }
    rt.shutdown()?;
    // SAFETY: runtime stopped; both mappings are quiescent.
    let same = unsafe {
        std::slice::from_raw_parts(src.base.0, len) == std::slice::from_raw_parts(dst.base.0, len)
    };
    if !same {
        bail!("received bytes differ from the source");
    }
    rates.sort_by(f64::total_cmp);
    let median = rates[rates.len() / 2];
    println!(
        "corvid loopback-raw: {median:.0} MiB/s (median of {} x {} MiB, {} cores)",
        args.rounds, args.mib, args.cores
    );
    if args.iperf_secs > 0 {
        let ip = iperf3(args.iperf_secs)?;
        println!("iperf3 loopback:     {ip:.0} MiB/s ({} s)", args.iperf_secs);
        println!("ratio corvid/iperf3: {:.2}", median / ip);
    }
    Ok(())
}
