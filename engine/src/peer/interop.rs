//! Interoperability with a stock client: libtorrent (python3-libtorrent, installed by the
//! project's test script) seeds a v1 torrent on 127.0.0.1 and a `PeerConn` driven by a
//! minimal blocking TCP loop downloads it, verifying every piece with SHA-1; then the
//! roles swap and libtorrent downloads from us. The loop here is test scaffolding, not
//! the runtime: it exists to prove the bytes we put on the wire are what real clients
//! speak.

use super::*;
use crate::bencode::OwnedValue;
use crate::swarm::SwarmConfig;
use sha1::{Digest, Sha1};
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};

const PYTHON: &str = "/usr/bin/python3";

const SEED_PY: &str = r#"
import os, sys
import libtorrent as lt
d, size, piece = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
path = os.path.join(d, "payload.bin")
with open(path, "wb") as f:
    f.write(os.urandom(size))
fs = lt.file_storage()
lt.add_files(fs, path)
t = lt.create_torrent(fs, piece, flags=lt.create_torrent.v1_only)
lt.set_piece_hashes(t, d)
ti = lt.torrent_info(t.generate())
ses = lt.session({"listen_interfaces": "127.0.0.1:0", "enable_dht": False,
                  "enable_lsd": False, "enable_upnp": False, "enable_natpmp": False})
h = ses.add_torrent({"ti": ti, "save_path": d, "flags": lt.torrent_flags.seed_mode})
# add_torrent returns before the session thread has started the torrent: the port is
# announced only once it seeds, so our handshake never races the torrent's start.
import time
deadline = time.time() + 30
while time.time() < deadline and h.status().state != lt.torrent_status.seeding:
    time.sleep(0.01)
import threading
def log():
    while True:
        ses.wait_for_alert(100)
        for a in ses.pop_alerts():
            print("LT:", a.message(), file=sys.stderr, flush=True)
if os.environ.get("CORVID_LT_LOG"):
    ses.apply_settings({"alert_mask": lt.alert.category_t.all_categories})
    threading.Thread(target=log, daemon=True).start()
hx = lambda x: x.hex() if isinstance(x, bytes) else str(x)
print(ses.listen_port(), hx(ti.info_hashes().v1), ti.piece_length(), ti.total_size(),
      ",".join(hx(ti.hash_for_piece(i)) for i in range(ti.num_pieces())), flush=True)
sys.stdin.read()
"#;

const LEECH_PY: &str = r#"
import sys, time, hashlib, os
import libtorrent as lt
torrent, d, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
# Default encryption policy on purpose: libtorrent first tries MSE/PE, which corvid does
# not speak, and then retries in plaintext; the test checks that this fallback happens.
ses = lt.session({"listen_interfaces": "127.0.0.1:0", "enable_dht": False,
                  "enable_lsd": False, "enable_upnp": False, "enable_natpmp": False})
h = ses.add_torrent({"ti": lt.torrent_info(torrent), "save_path": d})
h.connect_peer(("127.0.0.1", port))
deadline = time.time() + 30
while time.time() < deadline and not h.status().is_seeding:
    time.sleep(0.05)
s = h.status()
data = open(os.path.join(d, "payload.bin"), "rb").read() if s.is_seeding else b""
print("seeding" if s.is_seeding else "incomplete", hashlib.sha1(data).hexdigest(), flush=True)
"#;

/// Kills the child by its PID when the test ends, pass or fail.
struct Reaper(Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn unhex(s: &str) -> [u8; 20] {
    let mut out = [0u8; 20];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
    }
    out
}

fn python_has_libtorrent() {
    let ok = Command::new(PYTHON)
        .args(["-c", "import libtorrent"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "interop tests need python3-libtorrent (Debian package) for {PYTHON}"
    );
}

/// Drives one connection over a blocking socket until `done` or the deadline. Returns the
/// number of pieces that failed verification.
fn drive(
    stream: &mut TcpStream,
    swarm: &mut Swarm,
    pc: &mut PeerConn,
    storage: &mut [u8],
    hashes: &[[u8; 20]],
    done: impl Fn(&Swarm, &PeerConn) -> bool,
) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    stream
        .set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    let lengths = *swarm.lengths();
    let mut inbox = Vec::new();
    let mut payload: Option<(BlockRef, bool)> = None;
    let mut buf = vec![0u8; 64 * 1024];
    let mut out = Vec::new();
    while Instant::now() < deadline {
        let now = Instant::now();
        if done(swarm, pc) {
            return Ok(());
        }
        pc.handle_tick(swarm, now);
        loop {
            out.clear();
            let t = pc.poll_transmit(swarm, now, &mut out);
            stream.write_all(&out).map_err(|e| e.to_string())?;
            match t {
                None => break,
                Some(Transmit::Block { header, block }) => {
                    stream.write_all(&header).map_err(|e| e.to_string())?;
                    let off =
                        (lengths.piece_offset(block.piece) + u64::from(block.offset)) as usize;
                    stream
                        .write_all(&storage[off..off + block.len as usize])
                        .map_err(|e| e.to_string())?;
                }
            }
        }
        match stream.read(&mut buf) {
            Ok(0) => return Err("remote closed the connection".into()),
            Ok(n) => inbox.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => return Err(e.to_string()),
        }
        loop {
            while let Some(ev) = pc.poll_event() {
                match ev {
                    Event::ReceivePayload { block, discard } => payload = Some((block, discard)),
                    Event::PieceComplete(p) => {
                        let off = lengths.piece_offset(p) as usize;
                        let len = lengths.piece_size(p) as usize;
                        let d: [u8; 20] = Sha1::digest(&storage[off..off + len]).into();
                        swarm.handle_verdict(p, d == hashes[p.as_usize()]);
                    }
                    Event::Close(r) => return Err(format!("closed: {r}")),
                    Event::HandshakeDone { .. } => {}
                }
            }
            if let Some((block, discard)) = payload {
                let len = block.len as usize;
                if inbox.len() < len {
                    break;
                }
                if !discard {
                    let off =
                        (lengths.piece_offset(block.piece) + u64::from(block.offset)) as usize;
                    storage[off..off + len].copy_from_slice(&inbox[..len]);
                }
                inbox.drain(..len);
                payload = None;
                pc.handle_payload_done(swarm, block, Instant::now());
                continue;
            }
            let n = pc
                .handle_bytes(swarm, &inbox, Instant::now())
                .map_err(|r| format!("closed: {r}"))?;
            inbox.drain(..n);
            if n == 0 && payload.is_none() {
                break;
            }
        }
    }
    Err("deadline passed".into())
}

#[test]
fn download_from_libtorrent_then_seed_to_it() {
    python_has_libtorrent();
    let dir = tempfile::tempdir().unwrap();
    let mut child = Reaper(
        Command::new(PYTHON)
            .args([
                "-c",
                SEED_PY,
                dir.path().to_str().unwrap(),
                "300000",
                "32768",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    BufReader::new(child.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let f: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(f.len(), 5, "seed.py printed {line:?}");
    let port: u16 = f[0].parse().unwrap();
    let info_hash = unhex(f[1]);
    let piece_length: u64 = f[2].parse().unwrap();
    let total: u64 = f[3].parse().unwrap();
    let hashes: Vec<[u8; 20]> = f[4].split(',').map(unhex).collect();
    let lengths = Lengths::new(total, piece_length, hashes.len() as u64).unwrap();

    // 1. libtorrent seeds, we download. Under load (the suite's parallel tests on 2 cores)
    // libtorrent now and then closes an incoming connection before it answers the
    // handshake, with no peer or error alert (2-4 runs of 16 run side by side with four
    // busy loops; three dials in a row were all closed): its session log would say why,
    // but logging alerts hides it. A connection closed before its handshake reached us is
    // dialled again after 200 ms, for up to 5 s, as a client would redial; a close after
    // the handshake still fails the test.
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut attempt = 0;
    let (mut swarm, mut pc, storage, stream) = loop {
        attempt += 1;
        let mut swarm = Swarm::new(
            SwarmConfig::default(),
            info_hash,
            lengths,
            Bitfield::new(lengths.piece_count()),
            42,
        );
        let mut stream = TcpStream::connect(addr).unwrap();
        let mut pc = PeerConn::new(
            &PeerConfig::default(),
            &mut swarm,
            addr,
            Role::Initiator,
            *b"-CV0001-interop-test",
            [0; 16],
            Instant::now(),
        )
        .unwrap();
        let mut storage = vec![0u8; total as usize];
        match drive(
            &mut stream,
            &mut swarm,
            &mut pc,
            &mut storage,
            &hashes,
            |s, _| s.is_complete(),
        ) {
            Ok(()) => break (swarm, pc, storage, stream),
            Err(_) if pc.remote_peer_id().is_none() && attempt < 25 => {
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
            Err(e) => {
                std::thread::sleep(Duration::from_millis(500));
                panic!("{e} (attempt {attempt})")
            }
        }
    };
    let payload = std::fs::read(dir.path().join("payload.bin")).unwrap();
    assert!(
        storage == payload,
        "downloaded bytes differ from libtorrent's file"
    );
    assert!(pc
        .remote_client()
        .is_some_and(|v| v.contains("libtorrent") || !v.is_empty()));
    pc.handle_close(&mut swarm);
    drop(stream);
    drop(child);

    // 2. We seed, a fresh libtorrent downloads (it connects to us).
    let mut info = OwnedValue::dict();
    info.insert("length", OwnedValue::Int(total as i64));
    info.insert("name", OwnedValue::bytes("payload.bin"));
    info.insert("piece length", OwnedValue::Int(piece_length as i64));
    info.insert("pieces", OwnedValue::Bytes(hashes.concat()));
    let mut meta = OwnedValue::dict();
    meta.insert("info", info);
    let dir2 = tempfile::tempdir().unwrap();
    let torrent_path = dir2.path().join("t.torrent");
    std::fs::write(&torrent_path, meta.encode()).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let our_port = listener.local_addr().unwrap().port();
    let leech = Reaper(
        Command::new(PYTHON)
            .args([
                "-c",
                LEECH_PY,
                torrent_path.to_str().unwrap(),
                dir2.path().to_str().unwrap(),
                &our_port.to_string(),
            ])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut seed = Swarm::new(
        SwarmConfig::default(),
        info_hash,
        lengths,
        Bitfield::full(lengths.piece_count()),
        43,
    );
    let mut storage = payload.clone();
    let mut uploaded = 0;
    // At most three connections: an encrypted attempt we refuse, then plaintext.
    for _ in 0..3 {
        let (mut stream, remote) = listener.accept().unwrap();
        let mut pc = PeerConn::new(
            &PeerConfig::default(),
            &mut seed,
            remote,
            Role::Responder,
            *b"-CV0001-interop-seed",
            [0; 16],
            Instant::now(),
        )
        .unwrap();
        // Serve until libtorrent has everything (it then closes or says it is a seed).
        let r = drive(
            &mut stream,
            &mut seed,
            &mut pc,
            &mut storage,
            &hashes,
            |_, pc| pc.remote_has().is_full(),
        );
        pc.handle_close(&mut seed);
        uploaded = pc.stats().uploaded;
        match r {
            Err(e) if uploaded == 0 => {
                assert!(e.contains("BitTorrent protocol"), "unexpected failure: {e}")
            }
            _ => break,
        }
    }
    assert!(uploaded >= total, "uploaded {uploaded} of {total}");
    let mut leech = leech;
    let mut line = String::new();
    BufReader::new(leech.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let want: [u8; 20] = Sha1::digest(&payload).into();
    let want_hex: String = want.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(line.trim(), format!("seeding {want_hex}"));
}
