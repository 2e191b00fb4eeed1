//! Interoperability of corvid's torrents with libtorrent and mktorrent, through the real
//! `corvid` binary: torrents corvid makes must load in libtorrent with the same info-hash,
//! files and geometry; torrents others make must read (`info`) and verify in corvid.
//!
//! python3-libtorrent and mktorrent are required: without them these tests fail with a
//! message saying what to install, they never pass silently.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn corvid(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_corvid"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("run corvid")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A Python interpreter that can import libtorrent: `$CORVID_PYTHON`, `python3` on PATH,
/// or the system's `/usr/bin/python3` (pyenv shims often hide Debian's packages).
fn python() -> String {
    let mut candidates = Vec::new();
    if let Ok(p) = std::env::var("CORVID_PYTHON") {
        candidates.push(p);
    }
    candidates.push("python3".into());
    candidates.push("/usr/bin/python3".into());
    for c in &candidates {
        let ok = Command::new(c)
            .args(["-c", "import libtorrent"])
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return c.clone();
        }
    }
    panic!(
        "no python3 with libtorrent found (tried {candidates:?}); \
         install python3-libtorrent (apt-get install python3-libtorrent)"
    );
}

fn require_mktorrent() {
    let ok = Command::new("mktorrent")
        .arg("-h")
        .output()
        .is_ok_and(|o| !o.stdout.is_empty() || !o.stderr.is_empty());
    assert!(
        ok,
        "mktorrent not found; install it (apt-get install mktorrent)"
    );
}

/// What libtorrent sees in a torrent: info-hash, piece length, piece count, files.
#[derive(Debug, PartialEq)]
struct LtView {
    info_hash: String,
    piece_length: u64,
    num_pieces: u64,
    files: Vec<(String, u64)>,
}

const LT_READ: &str = r#"
import sys, libtorrent as lt
ti = lt.torrent_info(sys.argv[1])
fs = ti.files()
print(str(ti.info_hashes().v1))
print(ti.piece_length())
print(ti.num_pieces())
for i in range(fs.num_files()):
    print("%d\t%s" % (fs.file_size(i), fs.file_path(i)))
"#;

fn lt_read(torrent: &Path) -> LtView {
    let o = Command::new(python())
        .args(["-c", LT_READ])
        .arg(torrent)
        .output()
        .expect("run python");
    assert!(
        o.status.success(),
        "libtorrent rejected {}: {}",
        torrent.display(),
        String::from_utf8_lossy(&o.stderr)
    );
    let text = stdout(&o);
    let mut lines = text.lines();
    let info_hash = lines.next().expect("hash line").to_owned();
    let piece_length = lines.next().expect("piece length").parse().expect("int");
    let num_pieces = lines.next().expect("pieces").parse().expect("int");
    let files = lines
        .map(|l| {
            let (size, path) = l.split_once('\t').expect("file line");
            (path.to_owned(), size.parse().expect("size"))
        })
        .collect();
    LtView {
        info_hash,
        piece_length,
        num_pieces,
        files,
    }
}

/// Deterministic pseudo-random bytes (xorshift), so pieces differ from each other.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A payload tree: nested dirs, an empty file, a .git directory.
fn make_tree(dir: &Path) -> PathBuf {
    let p = dir.join("payload");
    std::fs::create_dir_all(p.join("bin/deep/er")).unwrap();
    std::fs::create_dir_all(p.join(".git/refs")).unwrap();
    std::fs::write(p.join(".git/HEAD"), b"ref: refs/heads/main\n").unwrap();
    std::fs::write(p.join("bin/app"), noise(700_000, 1)).unwrap();
    std::fs::write(p.join("bin/deep/er/x.so"), noise(123_457, 2)).unwrap();
    std::fs::write(p.join("README"), b"hello fleet\n").unwrap();
    std::fs::write(p.join("empty.cfg"), b"").unwrap();
    std::fs::write(p.join("Zeta"), noise(40_000, 3)).unwrap();
    p
}

/// The one JSON object `corvid make --json` or `corvid info --json` printed.
fn json_object(text: &str) -> serde_json::Value {
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// (path, size) pairs of the `files` array of corvid's JSON output.
fn json_files(text: &str) -> Vec<(String, u64)> {
    let v = json_object(text);
    let files = v["files"]
        .as_array()
        .unwrap_or_else(|| panic!("files in {text}"));
    files
        .iter()
        .map(|f| {
            let path = f["path"].as_str().unwrap_or_else(|| panic!("path in {f}"));
            let size = f["size"].as_u64().unwrap_or_else(|| panic!("size in {f}"));
            (path.to_owned(), size)
        })
        .collect()
}

/// A top-level field of corvid's JSON output as text: a string's contents, a number's digits.
fn json_field(text: &str, key: &str) -> String {
    match &json_object(text)[key] {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => panic!("{key} in {text}"),
        other => other.to_string(),
    }
}

#[test]
fn corvid_made_multi_file_torrent_loads_in_libtorrent() {
    let t = tempfile::tempdir().unwrap();
    make_tree(t.path());
    let o = corvid(
        &[
            "make",
            "payload",
            "--piece-size",
            "64K",
            "--tracker",
            "http://127.0.0.1:1/announce",
            "--json",
        ],
        t.path(),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let made = stdout(&o);
    let lt = lt_read(&t.path().join("payload.torrent"));
    assert_eq!(lt.info_hash, json_field(&made, "info_hash"));
    assert_eq!(lt.piece_length, 65536);
    let total = 700_000 + 123_457 + 12 + 40_000;
    assert_eq!(lt.num_pieces, (total as u64).div_ceil(65536));
    // Byte order of names: uppercase before lowercase, .git skipped, empty file kept.
    let want: Vec<(String, u64)> = [
        ("payload/README", 12),
        ("payload/Zeta", 40_000),
        ("payload/bin/app", 700_000),
        ("payload/bin/deep/er/x.so", 123_457),
        ("payload/empty.cfg", 0),
    ]
    .iter()
    .map(|(p, s)| (p.to_string(), *s))
    .collect();
    assert_eq!(lt.files, want);
}

#[test]
fn corvid_made_single_file_torrent_loads_in_libtorrent() {
    let t = tempfile::tempdir().unwrap();
    std::fs::write(t.path().join("image.bin"), noise(1_000_001, 9)).unwrap();
    let o = corvid(
        &["make", "image.bin", "-o", "out.torrent", "--json"],
        t.path(),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let made = stdout(&o);
    let lt = lt_read(&t.path().join("out.torrent"));
    assert_eq!(lt.info_hash, json_field(&made, "info_hash"));
    assert_eq!(
        lt.piece_length,
        256 * 1024,
        "auto piece size for a small file"
    );
    assert_eq!(lt.num_pieces, 4);
    assert_eq!(lt.files, vec![("image.bin".to_string(), 1_000_001)]);
}

/// `corvid info` agrees with libtorrent, `verify` passes, then fails naming the piece and
/// the file after one byte of `victim` at `offset` is flipped.
fn check_foreign_torrent(dir: &Path, torrent: &str, data_dir: &Path, victim: &Path, offset: u64) {
    let tpath = dir.join(torrent);
    let lt = lt_read(&tpath);
    let o = corvid(&["info", "--json", torrent], dir);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let info = stdout(&o);
    assert_eq!(json_field(&info, "info_hash"), lt.info_hash, "{torrent}");
    assert_eq!(json_files(&info), lt.files, "{torrent}");
    assert_eq!(
        json_field(&info, "piece_length"),
        lt.piece_length.to_string()
    );
    assert_eq!(json_field(&info, "pieces"), lt.num_pieces.to_string());

    let data = data_dir.to_str().unwrap();
    let o = corvid(&["verify", torrent, data], dir);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}{}",
        stdout(&o),
        String::from_utf8_lossy(&o.stderr)
    );

    let mut bytes = std::fs::read(victim).unwrap();
    bytes[offset as usize] ^= 0x55;
    std::fs::write(victim, &bytes).unwrap();
    // Offset of the victim in the payload stream, to know which piece must fail.
    let victim_rel = victim
        .strip_prefix(data_dir)
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let mut before = 0u64;
    for (p, s) in &lt.files {
        if *p == victim_rel {
            break;
        }
        before += s;
    }
    let piece = (before + offset) / lt.piece_length;
    let o = corvid(&["verify", torrent, data], dir);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains(&format!("bad piece {piece}:")), "{out}");
    assert!(out.contains(&victim_rel), "{out}");
    let o = corvid(&["verify", "--json", torrent, data], dir);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(1));
    assert!(out.contains(&format!("{{\"piece\":{piece},")), "{out}");
    assert!(out.starts_with("{\"ok\":false"), "{out}");
    // Restore for the next caller.
    bytes[offset as usize] ^= 0x55;
    std::fs::write(victim, &bytes).unwrap();
}

#[test]
fn mktorrent_multi_file_reads_and_verifies() {
    require_mktorrent();
    let t = tempfile::tempdir().unwrap();
    let p = make_tree(t.path());
    let o = Command::new("mktorrent")
        .args(["-l", "18", "-o", "mk.torrent", "payload"])
        .current_dir(t.path())
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "mktorrent: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    check_foreign_torrent(
        t.path(),
        "mk.torrent",
        t.path(),
        &p.join("bin/deep/er/x.so"),
        100_000,
    );
}

#[test]
fn mktorrent_single_file_reads_and_verifies() {
    require_mktorrent();
    let t = tempfile::tempdir().unwrap();
    let f = t.path().join("blob.img");
    std::fs::write(&f, noise(900_000, 5)).unwrap();
    let o = Command::new("mktorrent")
        .args(["-l", "18", "-o", "mk1.torrent", "blob.img"])
        .current_dir(t.path())
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "mktorrent: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    check_foreign_torrent(t.path(), "mk1.torrent", t.path(), &f, 600_000);
    // PATH may also name the payload file directly.
    let o = corvid(&["verify", "mk1.torrent", f.to_str().unwrap()], t.path());
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
}

const LT_CREATE: &str = r#"
import sys, os, libtorrent as lt
src, out = sys.argv[1], sys.argv[2]
fs = lt.file_storage()
lt.add_files(fs, src)
ct = lt.create_torrent(fs, 65536, flags=lt.create_torrent.v1_only)
ct.add_tracker("http://127.0.0.1:1/announce")
lt.set_piece_hashes(ct, os.path.dirname(os.path.abspath(src)))
open(out, "wb").write(lt.bencode(ct.generate()))
"#;

#[test]
fn libtorrent_made_torrent_reads_and_verifies() {
    let t = tempfile::tempdir().unwrap();
    let p = make_tree(t.path());
    let o = Command::new(python())
        .args(["-c", LT_CREATE])
        .arg(&p)
        .arg(t.path().join("lt.torrent"))
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "lt create: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    check_foreign_torrent(
        t.path(),
        "lt.torrent",
        t.path(),
        &p.join("bin/app"),
        333_333,
    );
    // PATH may also be the payload directory itself.
    let o = corvid(&["verify", "lt.torrent", p.to_str().unwrap()], t.path());
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
}

/// libtorrent's default (hybrid v1+v2) torrents carry BEP 47 pad files: `info` must still
/// agree on the v1 info-hash, and `verify` must pass the payload (the pads are zeros that
/// exist on no disk) and still catch a changed byte.
#[test]
fn libtorrent_hybrid_torrent_with_pad_files_reads_and_verifies() {
    let t = tempfile::tempdir().unwrap();
    let p = make_tree(t.path());
    let script = LT_CREATE.replace(", flags=lt.create_torrent.v1_only", "");
    let o = Command::new(python())
        .args(["-c", &script])
        .arg(&p)
        .arg(t.path().join("hy.torrent"))
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "lt create: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let lt = lt_read(&t.path().join("hy.torrent"));
    assert!(
        lt.files.iter().any(|(p, _)| p.contains(".pad")),
        "{:?}",
        lt.files
    );
    let o = corvid(&["info", "--json", "hy.torrent"], t.path());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(json_field(&stdout(&o), "info_hash"), lt.info_hash);
    assert_eq!(json_files(&stdout(&o)), lt.files);
    let o = corvid(&["verify", "hy.torrent", "."], t.path());
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!p.join(".pad").exists(), "verify must not create pad files");
    let victim = p.join("bin/app");
    let mut bytes = std::fs::read(&victim).unwrap();
    bytes[1000] ^= 0x55;
    std::fs::write(&victim, &bytes).unwrap();
    let o = corvid(&["verify", "hy.torrent", "."], t.path());
    assert_ne!(
        o.status.code(),
        Some(0),
        "a changed byte must fail verification"
    );
}
