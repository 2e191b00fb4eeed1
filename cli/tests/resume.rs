//! The resume record end to end, with real `corvid` processes: a peer SIGKILLed half-way
//! restarts from the pieces its record vouches for without hashing them, a file changed
//! while the peer was stopped is re-checked (and its bad piece fetched again), a garbage
//! record means a full re-check, and the release layout keeps its record outside the
//! release tree. Every process is synchronised on the JSON lines it prints.

mod support;

use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use corvid_engine::node::resume::{record_path, Record};
use support::release;
use support::{assert_same_tree, corvid, json_field, json_u64, Proc, SlowRelay};

/// Bound on every wait.
const T: Duration = Duration::from_secs(90);
const FILES: usize = 8;
/// Each file is two pieces exactly, so pieces never straddle files and, by pigeonhole,
/// some file is complete as soon as more than half of the pieces are.
const PIECE: u64 = 1 << 20;
const FILE_LEN: usize = 2 << 20;

/// Eight files of 2 MiB in 1 MiB pieces, and where a peer keeps its record of them.
struct Release {
    r: release::Release,
    info_hash: [u8; 20],
}

impl std::ops::Deref for Release {
    type Target = release::Release;
    fn deref(&self) -> &release::Release {
        &self.r
    }
}

impl Release {
    fn new(seed: u64) -> Release {
        let fill = |payload: &Path| {
            std::fs::create_dir_all(payload).unwrap();
            for i in 0..FILES {
                std::fs::write(
                    payload.join(format!("part{i}.bin")),
                    support::pseudo_random(FILE_LEN, seed + i as u64),
                )
                .unwrap();
            }
        };
        let r = release::Release {
            timeout: T,
            stall: "60s",
            ..release::Release::with_payload("http://127.0.0.1:9/announce", "1MiB", fill)
        };
        assert_eq!(r.size, (FILES * FILE_LEN) as u64);
        assert_eq!(r.pieces, r.size / PIECE);
        Release {
            info_hash: r.info_hash(),
            r,
        }
    }

    fn seeder(&self) -> (Proc, SocketAddr) {
        self.r.seeder(&["--no-tracker"])
    }

    /// A peer downloading into `dest` from `from` only (no tracker), writing a record a
    /// second (the default is 10 s), so a kill lands after a recent one.
    fn peer(&self, name: &str, dest: &Path, from: SocketAddr) -> Proc {
        let from = from.to_string();
        let extra = ["--no-announce", "--resume-interval", "1s", "--peer", &from];
        self.r.peer(name, dest, &extra)
    }

    fn record(&self, dest: &Path) -> PathBuf {
        record_path(dest, &self.info_hash, None)
    }

    fn file(&self, dest: &Path, i: usize) -> PathBuf {
        dest.join("payload").join(format!("part{i}.bin"))
    }
}

/// SIGTERM, then the final `done` line; checks exit code 0.
fn finish(p: &mut Proc) -> String {
    p.finish(T)
}

/// Files whose two pieces are both in the record.
fn complete_files(r: &Record) -> Vec<usize> {
    (0..FILES)
        .filter(|&i| r.have.get(2 * i as u32) && r.have.get(2 * i as u32 + 1))
        .collect()
}

/// Runs a peer to completion straight from the seeder and stops it cleanly.
fn download_fully(r: &Release, dest: &Path, seed_addr: SocketAddr) {
    let mut p = r.peer("first", dest, seed_addr);
    p.wait_line("\"event\":\"complete\"", T);
    let done = finish(&mut p);
    assert_eq!(json_field(&done, "complete"), Some("true"), "{done}");
    let rec = Record::load(&r.record(dest), 1 << 20)
        .expect("readable record")
        .expect("a record after a clean stop");
    assert!(rec.have.is_full(), "the final record lists every piece");
}

#[test]
fn killed_peer_resumes_from_its_record_without_rehashing_complete_files() {
    let r = Release::new(61);
    let (mut seeder, seed_addr) = r.seeder();
    // 1 MiB/s through the relay: a piece a second, 16 s for the payload.
    let relay = SlowRelay::start(seed_addr, 1 << 20);
    let dest = r.dest("crashy");
    let mut first = r.peer("crashy-1", &dest, relay.addr);
    let record = r.record(&dest);
    // After each progress report, look at the record: kill once it vouches for a whole
    // file (pigeonhole: at the latest when 9 of 16 pieces are in it).
    let deadline = Instant::now() + T;
    let seen = loop {
        assert!(Instant::now() < deadline, "no record\n{}", first.dump());
        let line = first.wait_line("\"event\":\"progress\"", T);
        assert!(
            json_u64(&line, "have") < r.pieces,
            "finished before it could be killed: {line}\n{}",
            first.dump()
        );
        if let Ok(Some(rec)) = Record::load(&record, 1 << 20) {
            if !complete_files(&rec).is_empty() {
                break rec;
            }
        }
    };
    first.kill();
    drop(relay);
    let complete = complete_files(&seen);
    assert!(
        (seen.have.count() as u64) < r.pieces,
        "the record lists every piece: nothing left to resume"
    );

    let mut second = r.peer("crashy-2", &dest, seed_addr);
    let checked = second.wait_line("\"event\":\"checked\"", T);
    assert_eq!(json_field(&checked, "record"), Some("used"), "{checked}");
    second.wait_line("\"event\":\"complete\"", T);
    let done = finish(&mut second);
    assert_eq!(json_field(&done, "complete"), Some("true"), "{done}");
    assert_same_tree(&r.payload, &dest.join("payload"));
    assert_eq!(json_field(&done, "record"), Some("used"), "{done}");
    let trusted = json_u64(&done, "trusted_pieces");
    let rechecked = json_u64(&done, "rechecked_pieces");
    let have_at_start = json_u64(&checked, "have");
    let fetched = json_u64(&done, "bytes_down");
    // At least the files complete in the record we saw are trusted (a later record can
    // only list more), and not everything was hashed again.
    assert!(
        trusted >= 2 * complete.len() as u64,
        "files {complete:?} were complete in the record, yet only {trusted} pieces trusted: {done}"
    );
    assert!(rechecked < r.pieces, "{done}");
    assert_eq!(
        json_u64(&done, "rechecked_bytes"),
        rechecked * PIECE,
        "{done}"
    );
    // Only what was missing came over the wire again (end-game may fetch a block twice).
    assert!(
        fetched <= r.size - have_at_start * PIECE + PIECE,
        "kept {have_at_start} pieces yet downloaded {fetched} of {} bytes",
        r.size
    );
    assert!(fetched < r.size, "{done}");
    eprintln!(
        "resume after SIGKILL: record listed {} of {} pieces ({} whole files); restart trusted {trusted}, \
         re-hashed {rechecked} ({} bytes), kept {have_at_start}, downloaded {fetched} of {} bytes",
        seen.have.count(),
        r.pieces,
        complete.len(),
        json_u64(&done, "rechecked_bytes"),
        r.size
    );
    finish(&mut seeder);
}

#[test]
fn a_file_changed_while_stopped_is_rechecked_and_repaired() {
    let r = Release::new(71);
    let (mut seeder, seed_addr) = r.seeder();
    let dest = r.dest("edited");
    download_fully(&r, &dest, seed_addr);

    // File 2: one byte flipped in its second piece by an ordinary write (new mtime).
    let f2 = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(r.file(&dest, 2))
        .unwrap();
    let at = PIECE + 12_345;
    let mut b = [0u8; 1];
    f2.read_exact_at(&mut b, at).unwrap();
    f2.write_all_at(&[b[0] ^ 0x5a], at).unwrap();
    drop(f2);
    // File 5: the same, then its old mtime put back (as `cp -p` or `touch -r` would): the
    // ctime, which nothing in user space can set, still tells.
    let p5 = r.file(&dest, 5);
    let old_mtime = std::fs::metadata(&p5).unwrap().modified().unwrap();
    let f5 = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&p5)
        .unwrap();
    f5.read_exact_at(&mut b, 100).unwrap();
    f5.write_all_at(&[!b[0]], 100).unwrap();
    f5.set_modified(old_mtime).unwrap();
    drop(f5);
    assert_eq!(
        std::fs::metadata(&p5).unwrap().modified().unwrap(),
        old_mtime
    );

    let mut second = r.peer("edited-2", &dest, seed_addr);
    let checked = second.wait_line("\"event\":\"checked\"", T);
    assert_eq!(json_field(&checked, "record"), Some("used"), "{checked}");
    // Exactly the four pieces of files 2 and 5 were hashed; two of them failed.
    assert_eq!(json_u64(&checked, "rechecked_pieces"), 4, "{checked}");
    assert_eq!(
        json_u64(&checked, "trusted_pieces"),
        r.pieces - 4,
        "{checked}"
    );
    assert_eq!(json_u64(&checked, "have"), r.pieces - 2, "{checked}");
    second.wait_line("\"event\":\"complete\"", T);
    let done = finish(&mut second);
    assert_eq!(json_field(&done, "complete"), Some("true"), "{done}");
    assert_same_tree(&r.payload, &dest.join("payload"));
    let fetched = json_u64(&done, "bytes_down");
    assert!(
        (2 * PIECE..=3 * PIECE).contains(&fetched),
        "the two bad pieces come again, nothing else: {done}"
    );
    finish(&mut seeder);
}

#[test]
fn a_garbage_record_means_a_full_recheck_then_a_good_record() {
    let r = Release::new(81);
    let (mut seeder, seed_addr) = r.seeder();
    let dest = r.dest("garbage");
    download_fully(&r, &dest, seed_addr);
    let garbage = support::pseudo_random(700, 3);
    std::fs::write(r.record(&dest), &garbage).unwrap();

    let mut second = r.peer("garbage-2", &dest, seed_addr);
    let checked = second.wait_line("\"event\":\"checked\"", T);
    assert_eq!(json_field(&checked, "record"), Some("invalid"), "{checked}");
    assert!(
        json_field(&checked, "reason").is_some_and(|w| w.contains("resume record")),
        "{checked}"
    );
    assert_eq!(json_u64(&checked, "trusted_pieces"), 0, "{checked}");
    assert_eq!(
        json_u64(&checked, "rechecked_pieces"),
        r.pieces,
        "{checked}"
    );
    assert_eq!(json_u64(&checked, "have"), r.pieces, "{checked}");
    second.wait_line("\"event\":\"complete\"", T);
    let done = finish(&mut second);
    assert_eq!(json_field(&done, "complete"), Some("true"), "{done}");
    assert_eq!(json_u64(&done, "bytes_down"), 0, "{done}");
    assert_same_tree(&r.payload, &dest.join("payload"));
    // The garbage was replaced by a good record, which the next start takes at its word:
    // a finished download restarts without hashing anything.
    let rec = Record::load(&r.record(&dest), 1 << 20).unwrap().unwrap();
    assert!(rec.have.is_full());
    let mut third = r.peer("garbage-3", &dest, seed_addr);
    let checked = third.wait_line("\"event\":\"checked\"", T);
    assert_eq!(json_field(&checked, "record"), Some("used"), "{checked}");
    assert_eq!(json_u64(&checked, "trusted_pieces"), r.pieces, "{checked}");
    assert_eq!(json_u64(&checked, "rechecked_pieces"), 0, "{checked}");
    let done = finish(&mut third);
    assert_eq!(json_field(&done, "complete"), Some("true"), "{done}");
    assert_same_tree(&r.payload, &dest.join("payload"));
    finish(&mut seeder);
}

#[test]
fn release_layout_keeps_its_record_outside_the_release() {
    let r = Release::new(91);
    let (mut seeder, seed_addr) = r.seeder();
    let relay = SlowRelay::start(seed_addr, 2 << 20);
    let app = r.dest("app");
    let record = record_path(&app, &r.info_hash, Some("v1"));
    let release_peer = |name: &str, from: SocketAddr| {
        let mut cmd = corvid(&["peer"]);
        cmd.arg(&r.torrent).arg("--release-dest").arg(&app);
        cmd.args(["--tag", "v1", "--linger", "0", "--json"]);
        cmd.args([
            "--listen",
            "127.0.0.1:0",
            "--cores",
            "1",
            "--hash-threads",
            "1",
        ]);
        cmd.args(["--stall-timeout", "60s", "--no-announce"]);
        // A record a second (the default is 10 s), so a kill lands after a recent one.
        cmd.args(["--resume-interval", "1s"]);
        cmd.args(["--peer", &from.to_string()]);
        Proc::spawn(name, &mut cmd)
    };
    let mut first = release_peer("release-1", relay.addr);
    let deadline = Instant::now() + T;
    loop {
        assert!(Instant::now() < deadline, "no record\n{}", first.dump());
        let line = first.wait_line("\"event\":\"progress\"", T);
        assert!(json_u64(&line, "have") < r.pieces, "finished early: {line}");
        if Record::load(&record, 1 << 20).is_ok_and(|r| r.is_some_and(|r| r.have.count() > 0)) {
            break;
        }
    }
    first.kill();
    drop(relay);
    let mut second = release_peer("release-2", seed_addr);
    let checked = second.wait_line("\"event\":\"checked\"", T);
    assert_eq!(json_field(&checked, "record"), Some("used"), "{checked}");
    assert!(json_u64(&checked, "have") > 0, "{checked}");
    let (code, lines, err) = second.wait_exit(T);
    assert_eq!(code, Some(0), "{}\n{err}", lines.join("\n"));
    // The release holds exactly the payload, and the record is gone with the partial
    // directory it described.
    assert_same_tree(&r.payload, &app.join("releases/v1"));
    assert!(!record.exists(), "record left behind at {record:?}");
    assert!(!app.join("releases/v1.partial").exists());
    finish(&mut seeder);
}
