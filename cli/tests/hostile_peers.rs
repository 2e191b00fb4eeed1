//! Issue 12, item 4: a hostile host must not be able to take a node's connection slots or
//! its seeder connection. Real `corvid` processes on loopback; the attacker uses raw
//! sockets (from 127.0.0.2 where it must look like another host than the real peers).

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::FromRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use support::rawpeer::{Next, RawPeer};
use support::{assert_same_tree, corvid, json_field, make_torrent, make_tree, start_seeder, Proc};

const T: Duration = Duration::from_secs(120);

/// A TCP connection to `to` from source address `from` (port chosen by the kernel).
fn connect_from(from: Ipv4Addr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let SocketAddr::V4(to) = to else {
        panic!("IPv4 only")
    };
    let sa = |a: SocketAddrV4| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*a.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    let (local, remote) = (sa(SocketAddrV4::new(from, 0)), sa(to));
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: plain socket(2); the descriptor is checked and owned by the TcpStream below
    // (or closed on error).
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a socket we own and have not handed out; it is closed exactly once,
    // by the TcpStream's drop.
    let stream = unsafe { TcpStream::from_raw_fd(fd) };
    // SAFETY: bind(2)/connect(2) on our socket with a sockaddr_in that lives across the
    // call and the length of that type.
    let r = unsafe { libc::bind(fd, (&raw const local).cast(), len) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: as above.
    let r = unsafe { libc::connect(fd, (&raw const remote).cast(), len) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(stream)
}

/// Keeps up to `n` idle connections from 127.0.0.2 open to `target`, reopening the ones
/// the target closes, until dropped: one host trying to hold every connection slot.
struct IdleFlood {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<usize>>,
}

impl IdleFlood {
    /// Returns once all `n` connections are established (accepted or in the target's
    /// accept queue).
    fn start(target: SocketAddr, n: usize) -> IdleFlood {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let (full_tx, full_rx) = mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let mut socks: Vec<TcpStream> = Vec::new();
            let mut opened = 0;
            while !flag.load(Ordering::SeqCst) {
                // Drop the ones the target closed (EOF or reset), open new ones.
                // Whatever the target sends is read and ignored.
                socks.retain(|s| {
                    let mut b = [0u8; 4096];
                    if s.set_nonblocking(true).is_err() {
                        return false;
                    }
                    loop {
                        match (&*s).read(&mut b) {
                            Ok(0) => return false,
                            Ok(_) => {}
                            Err(e) => return e.kind() == ErrorKind::WouldBlock,
                        }
                    }
                });
                while socks.len() < n {
                    match connect_from(Ipv4Addr::new(127, 0, 0, 2), target) {
                        Ok(s) => {
                            socks.push(s);
                            opened += 1;
                        }
                        Err(_) => break,
                    }
                }
                if socks.len() == n {
                    let _ = full_tx.send(());
                }
                // A throttle on how often the attacker looks, not synchronisation.
                std::thread::sleep(Duration::from_millis(50));
            }
            opened
        });
        full_rx
            .recv_timeout(T)
            .expect("the flood could not open its connections");
        IdleFlood {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops the flood; returns how many connections it opened in all.
    fn stop(mut self) -> usize {
        self.stop.store(true, Ordering::SeqCst);
        self.thread
            .take()
            .map_or(0, |t| t.join().expect("flood thread"))
    }
}

impl Drop for IdleFlood {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn make_release(dir: &std::path::Path, seed: u64) -> (std::path::PathBuf, std::path::PathBuf) {
    let parent = dir.join("src");
    make_tree(&parent.join("payload"), 1 << 20, seed);
    let torrent = dir.join("release.torrent");
    make_torrent(
        &parent.join("payload"),
        &torrent,
        "http://127.0.0.1:9/announce",
        "64K",
    );
    (parent, torrent)
}

fn peer(torrent: &std::path::Path, dest: &std::path::Path, extra: &[&str]) -> Proc {
    let mut cmd = corvid(&["peer"]);
    cmd.arg(torrent)
        .arg(dest)
        .args(["--listen", "127.0.0.1:0", "--json", "--cores", "1"])
        .args(["--hash-threads", "1", "--no-announce", "--linger", "0s"])
        .args(extra);
    Proc::spawn("peer", &mut cmd)
}

/// Before the fix, 16 idle sockets held all 16 slots of a seeder with
/// `--max-connections 16` (the extra ones wait in the accept backlog and take each slot
/// that frees), so a real peer never got in and gave up (exit 5). Now one address holds
/// at most a few connections that have not finished their handshake.
#[test]
fn one_host_with_many_idle_sockets_does_not_lock_out_real_peers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (parent, torrent) = make_release(dir.path(), 41);
    let (mut seeder, seeder_addr) = start_seeder(
        &torrent,
        &parent,
        &["--no-tracker", "--no-announce", "--max-connections", "16"],
        T,
    );
    let flood = IdleFlood::start(seeder_addr, 40);
    let addr = seeder_addr.to_string();
    let mut p = peer(
        &torrent,
        &dir.path().join("dl"),
        &["--peer", &addr, "--stall-timeout", "20s"],
    );
    let (code, lines, err) = p.wait_exit(T);
    let opened = flood.stop();
    assert_eq!(code, Some(0), "peer\n{}\n{err}", lines.join("\n"));
    assert!(opened >= 40, "the flood opened only {opened} sockets");
    assert_same_tree(
        &parent.join("payload"),
        &dir.path().join("dl").join("payload"),
    );
    seeder.terminate();
    let (code, lines, err) = seeder.wait_exit(T);
    assert_eq!(code, Some(0), "seeder\n{}\n{err}", lines.join("\n"));
}

/// Before the fix, a stranger claiming the seeder's peer id (read from its handshake) on
/// a connection to a private peer registered that id first, so the peer dropped its real
/// seeder connection as a duplicate ("already connected to this peer") and did not dial
/// it again: the download stalled. An unauthenticated connection now claims no id.
#[test]
fn an_impostor_with_the_seeders_id_does_not_cut_the_seeder_off() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (parent, torrent) = make_release(dir.path(), 42);
    let ih = support::info_hash(&torrent);
    let secret_file = dir.path().join("secret");
    std::fs::write(&secret_file, "s3cret\n").expect("write secret");
    let secret = secret_file.to_str().expect("utf-8 path");
    let (mut seeder, seeder_addr) = start_seeder(
        &torrent,
        &parent,
        &["--no-tracker", "--no-announce", "--secret-file", secret],
        T,
    );
    // The seeder's id, from its handshake (a private node answers one naming its torrent).
    let mut probe = RawPeer::connect(seeder_addr, ih, *b"-XX0001-probeprobe01");
    let seeder_id = probe
        .handshake(Duration::from_secs(20))
        .expect("seeder handshake");
    drop(probe);

    // The peer reaches the seeder through a gate the test opens only once the impostor's
    // claim is in, so the impostor is first, as an attacker would arrange.
    let gate = TcpListener::bind("127.0.0.1:0").expect("bind gate");
    let gate_addr = gate.local_addr().expect("gate addr");
    let (open_tx, open_rx) = mpsc::channel::<()>();
    let gate_thread = std::thread::spawn(move || {
        let (from_peer, _) = gate.accept().expect("peer dials the gate");
        if open_rx.recv().is_err() {
            return;
        }
        let to_seeder = TcpStream::connect(seeder_addr).expect("gate to seeder");
        let (mut a, mut b) = (
            from_peer.try_clone().expect("clone"),
            to_seeder.try_clone().expect("clone"),
        );
        let up = std::thread::spawn(move || {
            let _ = std::io::copy(&mut a, &mut b);
            let _ = b.shutdown(std::net::Shutdown::Write);
        });
        let (mut a, mut b) = (to_seeder, from_peer);
        let _ = std::io::copy(&mut a, &mut b);
        let _ = b.shutdown(std::net::Shutdown::Write);
        let _ = up.join();
    });
    let mut p = {
        let mut cmd = corvid(&["peer"]);
        cmd.arg(&torrent)
            .arg(dir.path().join("dl"))
            .args(["--listen", "127.0.0.1:0", "--json", "--cores", "1"])
            .args(["--hash-threads", "1", "--no-announce", "--linger", "0s"])
            .args(["--stall-timeout", "15s", "--peer", &gate_addr.to_string()])
            .args(["--secret-file", secret]);
        Proc::spawn("peer", &mut cmd)
    };
    let line = p.wait_line("\"listening\"", T);
    let peer_addr: SocketAddr = json_field(&line, "peer_addr")
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no peer_addr in {line}"));
    // The impostor: the seeder's id, from another address.
    let mut imp = RawPeer::connect(peer_addr, ih, seeder_id);
    imp.handshake(Duration::from_secs(20))
        .expect("peer answers the impostor");
    // The peer's extension handshake follows once it has taken the impostor's handshake.
    match imp.next(Duration::from_secs(20)) {
        Next::Msg(_, _) => {}
        other => panic!("peer sent the impostor nothing after its handshake: {other:?}"),
    }
    let _ = imp.stream.write_all(&[0, 0, 0, 0]); // a keep-alive: still here
    open_tx.send(()).expect("open the gate");
    let (code, lines, err) = p.wait_exit(T);
    let all = lines.join("\n");
    assert_eq!(code, Some(0), "peer\n{all}\n{err}");
    assert!(
        !all.contains("already connected to this peer"),
        "the real seeder connection was dropped as a duplicate:\n{all}"
    );
    assert_same_tree(
        &parent.join("payload"),
        &dir.path().join("dl").join("payload"),
    );
    drop(imp);
    seeder.terminate();
    let (code, lines, err) = seeder.wait_exit(T);
    assert_eq!(code, Some(0), "seeder\n{}\n{err}", lines.join("\n"));
    let _ = gate_thread.join();
}
