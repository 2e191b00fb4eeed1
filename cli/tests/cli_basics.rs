//! The `corvid` binary's contract: make -> info -> verify round trip, exit codes, one-line
//! errors on bad input, refusal of unsafe torrents, and help text with examples.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn corvid(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_corvid"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("run corvid")
}

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// An error is exactly one line starting with `corvid: error: ` and the given exit code.
fn assert_one_line_error(o: &Output, code: i32, mentions: &str) {
    let e = err(o);
    assert_eq!(o.status.code(), Some(code), "stderr: {e}");
    assert!(e.starts_with("corvid: error: "), "{e:?}");
    assert_eq!(e.trim_end().lines().count(), 1, "{e:?}");
    assert!(e.contains(mentions), "{e:?} should mention {mentions:?}");
}

fn tree(dir: &Path) {
    std::fs::create_dir_all(dir.join("rel/lib")).unwrap();
    let data: Vec<u8> = (0..200_000u32).map(|i| (i * 31 % 251) as u8).collect();
    std::fs::write(dir.join("rel/lib/a.so"), &data).unwrap();
    std::fs::write(dir.join("rel/VERSION"), b"42\n").unwrap();
}

#[test]
fn round_trip_make_info_verify() {
    let t = tempfile::tempdir().unwrap();
    tree(t.path());
    let o = corvid(
        &[
            "make",
            "rel",
            "--piece-size",
            "16K",
            "--tracker",
            "http://127.0.0.1:1/a",
        ],
        t.path(),
    );
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    let made = out(&o);
    assert!(made.contains("info-hash "), "{made}");
    assert!(t.path().join("rel.torrent").is_file());
    // No temporary file left beside the output.
    let leftovers: Vec<_> = std::fs::read_dir(t.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty());

    let o = corvid(&["info", "rel.torrent"], t.path());
    assert_eq!(o.status.code(), Some(0));
    let info = out(&o);
    let hash = made
        .split("info-hash ")
        .nth(1)
        .unwrap()
        .lines()
        .next()
        .unwrap();
    assert!(info.contains(hash), "{info}");
    assert!(info.contains("rel/lib/a.so"), "{info}");
    assert!(info.contains("http://127.0.0.1:1/a"), "{info}");
    assert!(info.contains("pieces:       13 x 16.0 KiB"), "{info}");

    let o = corvid(&["verify", "rel.torrent", "."], t.path());
    assert_eq!(o.status.code(), Some(0), "{}{}", out(&o), err(&o));
    assert!(out(&o).starts_with("ok: all 13 pieces"));

    // Damage piece 5 (bytes 81920..98304 of the stream; VERSION's 3 bytes come first).
    let p = t.path().join("rel/lib/a.so");
    let mut bytes = std::fs::read(&p).unwrap();
    bytes[90_000] ^= 1;
    std::fs::write(&p, &bytes).unwrap();
    let o = corvid(&["verify", "rel.torrent", "."], t.path());
    assert_eq!(o.status.code(), Some(1));
    assert!(
        out(&o).contains("bad piece 5: ./rel/lib/a.so"),
        "{}",
        out(&o)
    );

    // A missing file: exit 1, named as missing.
    std::fs::remove_file(t.path().join("rel/VERSION")).unwrap();
    let o = corvid(&["verify", "--json", "rel.torrent", "rel"], t.path());
    assert_eq!(o.status.code(), Some(1));
    assert!(out(&o).contains("\"problem\":\"missing\""), "{}", out(&o));
    assert!(out(&o).contains("rel/VERSION"), "{}", out(&o));
}

#[test]
fn make_refuses_to_overwrite_without_force() {
    let t = tempfile::tempdir().unwrap();
    tree(t.path());
    let o = corvid(&["make", "rel", "-o", "x.torrent"], t.path());
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    let first = std::fs::read(t.path().join("x.torrent")).unwrap();
    std::fs::write(t.path().join("x.torrent"), b"keep me").unwrap();
    let o = corvid(&["make", "rel", "-o", "x.torrent"], t.path());
    assert_one_line_error(&o, 4, "--force");
    assert_eq!(
        std::fs::read(t.path().join("x.torrent")).unwrap(),
        b"keep me"
    );
    let o = corvid(
        &[
            "make",
            "rel",
            "-o",
            "x.torrent",
            "--force",
            "--name",
            "renamed",
        ],
        t.path(),
    );
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    let second = std::fs::read(t.path().join("x.torrent")).unwrap();
    assert_ne!(second, first);
    let o = corvid(&["info", "--json", "x.torrent"], t.path());
    assert!(out(&o).starts_with("{\"name\":\"renamed\""), "{}", out(&o));
}

#[test]
fn bad_input_gives_one_line_and_exit_3() {
    let t = tempfile::tempdir().unwrap();
    tree(t.path());
    std::fs::write(t.path().join("garbage.torrent"), b"this is not bencode").unwrap();
    let o = corvid(&["info", "garbage.torrent"], t.path());
    assert_one_line_error(&o, 3, "garbage.torrent");

    let o = corvid(&["make", "rel", "--piece-size", "16K"], t.path());
    assert_eq!(o.status.code(), Some(0));
    let good = std::fs::read(t.path().join("rel.torrent")).unwrap();
    for cut in [1, good.len() / 2, good.len() - 1] {
        std::fs::write(t.path().join("cut.torrent"), &good[..cut]).unwrap();
        let o = corvid(&["verify", "cut.torrent", "."], t.path());
        assert_one_line_error(&o, 3, "cut.torrent");
    }
    let o = corvid(&["info", "does-not-exist.torrent"], t.path());
    assert_one_line_error(&o, 3, "does-not-exist.torrent");
    let o = corvid(&["make", "no/such/dir"], t.path());
    assert_one_line_error(&o, 3, "no/such/dir");
    let o = corvid(&["make", "rel", "--piece-size", "3M"], t.path());
    assert_one_line_error(&o, 3, "power of two");
    let o = corvid(&["verify", "rel.torrent", "nowhere"], t.path());
    assert_one_line_error(&o, 3, "payload not found");
}

#[test]
fn unsafe_path_torrent_is_rejected() {
    let t = tempfile::tempdir().unwrap();
    let mut v = b"d4:infod5:filesld6:lengthi1e4:pathl2:..6:passwdeee4:name3:top12:piece lengthi16384e6:pieces20:".to_vec();
    v.extend([0u8; 20]);
    v.extend_from_slice(b"ee");
    std::fs::write(t.path().join("evil.torrent"), &v).unwrap();
    let o = corvid(&["info", "evil.torrent"], t.path());
    assert_one_line_error(&o, 3, "top/../passwd");
    let o = corvid(&["verify", "evil.torrent", "."], t.path());
    assert_one_line_error(&o, 3, "unsafe");
}

#[test]
fn symlink_in_tree_is_refused() {
    let t = tempfile::tempdir().unwrap();
    tree(t.path());
    std::os::unix::fs::symlink("/etc/hostname", t.path().join("rel/lib/link")).unwrap();
    let o = corvid(&["make", "rel"], t.path());
    assert_one_line_error(&o, 3, "symbolic link");
    assert!(!t.path().join("rel.torrent").exists());
}

#[test]
fn usage_errors_exit_2() {
    let t = tempfile::tempdir().unwrap();
    let o = corvid(&["make"], t.path());
    assert_eq!(o.status.code(), Some(2));
    let o = corvid(&["frobnicate"], t.path());
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn help_has_examples_and_exit_codes() {
    let t = tempfile::tempdir().unwrap();
    let top = out(&corvid(&["--help"], t.path()));
    assert!(
        top.contains("Examples:") && top.contains("Exit codes:"),
        "{top}"
    );
    assert!(top.contains("3  input error"), "{top}");
    for (cmd, example) in [
        ("make", "corvid make ./release-42"),
        ("verify", "corvid verify release-42.torrent"),
        ("info", "corvid info release-42.torrent"),
    ] {
        let h = out(&corvid(&[cmd, "--help"], t.path()));
        assert!(h.contains(example), "{cmd} --help lacks an example: {h}");
    }
}

#[test]
fn broken_pipe_is_not_an_error() {
    let t = tempfile::tempdir().unwrap();
    tree(t.path());
    assert!(corvid(&["make", "rel"], t.path()).status.success());
    // A reader that closes at once; the info output is small, so make it a long file list.
    for i in 0..3000 {
        std::fs::write(t.path().join(format!("rel/f{i:05}")), b"x").unwrap();
    }
    assert!(corvid(&["make", "rel", "-o", "big.torrent"], t.path())
        .status
        .success());
    let mut child = Command::new(env!("CARGO_BIN_EXE_corvid"))
        .args(["info", "big.torrent"])
        .current_dir(t.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    assert!(o.stderr.is_empty(), "{}", err(&o));
}

/// An `ssh` first on PATH that records in a file that it ran (and fails): returns that
/// PATH and the file, which must not exist after a refused deploy.
fn ssh_that_records(dir: &Path) -> (String, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let bin = dir.join("bin");
    std::fs::create_dir(&bin).unwrap();
    let ran = dir.join("ssh-ran");
    std::fs::write(
        bin.join("ssh"),
        format!("#!/bin/sh\necho \"$@\" >> '{}'\nexit 255\n", ran.display()),
    )
    .unwrap();
    std::fs::set_permissions(bin.join("ssh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    (path, ran)
}

#[test]
fn deploy_refuses_a_host_that_is_not_a_host_before_running_ssh() {
    let d = tempfile::tempdir().unwrap();
    tree(d.path());
    let (path, ran) = ssh_that_records(d.path());
    for hosts in ["web1,a$(id>/tmp/x)b", "x;reboot", "web1:22,h|nc", "`id`@h"] {
        let o = Command::new(env!("CARGO_BIN_EXE_corvid"))
            .args(["deploy", "--hosts", hosts, "--src", "rel"])
            .args(["--dest", "/srv/app", "--tag", "v1"])
            .current_dir(d.path())
            .env("PATH", &path)
            .output()
            .unwrap();
        assert_one_line_error(&o, 2, "is not a host");
        assert!(!ran.exists(), "ssh ran for {hosts:?}");
    }
}

#[test]
fn deploy_refuses_a_dest_that_is_not_utf8_before_running_ssh() {
    use std::os::unix::ffi::OsStrExt;
    let d = tempfile::tempdir().unwrap();
    tree(d.path());
    let (path, ran) = ssh_that_records(d.path());
    // Sent lossily this would become `/srv/app\u{fffd}`: another directory.
    let dest = std::ffi::OsStr::from_bytes(b"/srv/app\xff");
    let o = Command::new(env!("CARGO_BIN_EXE_corvid"))
        .args(["deploy", "--hosts", "web1", "--src", "rel", "--tag", "v1"])
        .arg("--dest")
        .arg(dest)
        .current_dir(d.path())
        .env("PATH", &path)
        .output()
        .unwrap();
    assert_one_line_error(&o, 2, "is not valid UTF-8");
    assert!(!ran.exists(), "ssh ran for a non-UTF-8 --dest");
}

/// A bencoded string.
fn bstr(b: &[u8]) -> Vec<u8> {
    [format!("{}:", b.len()).as_bytes(), b].concat()
}

#[test]
fn info_escapes_terminal_control_sequences_from_a_hostile_torrent() {
    let d = tempfile::tempdir().unwrap();
    // Name, directory, file, comment, creator and tracker all carry escape sequences:
    // retitle the terminal, clear it, recolour, a C1 CSI, and a bidi override.
    let name = b"rel\x1b]0;owned\x07ease";
    let dir = b"lib\x1b[2J";
    let file = "a\u{9b}31m\u{202e}txt.exe".as_bytes();
    let mut info = b"d5:filesld6:lengthi3e4:pathl".to_vec();
    info.extend(bstr(dir));
    info.extend(bstr(file));
    info.extend(b"eee4:name");
    info.extend(bstr(name));
    info.extend(b"12:piece lengthi16384e6:pieces20:");
    info.extend([7u8; 20]);
    info.extend(b"e");
    let mut t = b"d8:announce".to_vec();
    t.extend(bstr(b"http://x/\x1b[8mhidden"));
    t.extend(b"7:comment");
    t.extend(bstr(b"hi\x1b[1A\x1b[2Kok"));
    t.extend(b"10:created by");
    t.extend(bstr(b"me\rforged"));
    t.extend(b"4:info");
    t.extend(info);
    t.extend(b"e");
    std::fs::write(d.path().join("evil.torrent"), &t).unwrap();

    let o = corvid(&["info", "evil.torrent"], d.path());
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    let text = out(&o);
    for c in ['\x1b', '\x07', '\r', '\u{9b}', '\u{202e}'] {
        assert!(!text.contains(c), "{c:?} reached the terminal: {text:?}");
    }
    for shown in [
        "rel\\x1b]0;owned\\x07ease",
        "lib\\x1b[2J/a\\x9b31m\\u{202e}txt.exe",
        "hi\\x1b[1A\\x1b[2Kok",
        "me\\x0dforged",
        "http://x/\\x1b[8mhidden",
    ] {
        assert!(text.contains(shown), "{shown:?} not in {text}");
    }
    // JSON stays JSON, and carries the exact strings.
    let o = corvid(&["info", "evil.torrent", "--json"], d.path());
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    let json = out(&o);
    assert!(!json.contains('\x1b'), "{json:?}");
    let check = Command::new("python3")
        .args([
            "-c",
            "import json,sys; o=json.load(sys.stdin); \
             sys.stdout.write(o['name']+'|'+o['files'][0]['path']+'|'+o['comment'])",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(json.as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(check.status.success(), "not JSON: {json}");
    assert_eq!(
        String::from_utf8(check.stdout).unwrap(),
        "rel\x1b]0;owned\x07ease|rel\x1b]0;owned\x07ease/lib\x1b[2J/a\u{9b}31m\u{202e}txt.exe|hi\x1b[1A\x1b[2Kok"
    );
}

#[test]
fn peer_refuses_two_torrent_files_that_are_one_file_on_disk() {
    // On a case-insensitive filesystem `A` and `a` are one file; a hard link is the same
    // situation on any filesystem. Mapping both and sizing the second shrank the first
    // under its mapping: the process died of SIGBUS when it checked the data.
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("rel");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("A"), vec![1u8; 300_000]).unwrap();
    std::fs::write(src.join("a"), vec![2u8; 1000]).unwrap();
    let o = corvid(&["make", "rel", "-o", "t.torrent", "--json"], d.path());
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    let dest = d.path().join("dest/rel");
    std::fs::create_dir_all(&dest).unwrap();
    std::fs::write(dest.join("A"), vec![1u8; 300_000]).unwrap();
    std::fs::hard_link(dest.join("A"), dest.join("a")).unwrap();
    let o = corvid(
        &[
            "peer",
            "t.torrent",
            "dest",
            "--no-announce",
            "--peer",
            "127.0.0.1:9",
            "--stall-timeout",
            "5s",
            "--linger",
            "0",
            "--cores",
            "1",
            "--hash-threads",
            "1",
        ],
        d.path(),
    );
    assert_one_line_error(&o, 4, "are one file on disk");
    assert_eq!(std::fs::metadata(dest.join("A")).unwrap().len(), 300_000);
}

/// `make`, `info` and `verify --json` print one object each, with the fields and order
/// scripts have read since before these lines went through serde.
#[test]
fn json_outputs_keep_their_shape() {
    let t = tempfile::tempdir().unwrap();
    tree(t.path());
    let hash = "9608292c5aab695085e0fb0ef6b74e26114c5ac7";
    let o = corvid(&["make", "rel", "-o", "t.torrent", "--json"], t.path());
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    assert_eq!(
        out(&o),
        format!(
            r#"{{"output":"t.torrent","name":"rel","info_hash":"{hash}","total_size":200003,"piece_length":262144,"pieces":1,"files":2,"trackers":[]}}"#
        ) + "\n"
    );
    let o = corvid(&["info", "--json", "t.torrent"], t.path());
    let info = out(&o);
    let (head, date) = info
        .rsplit_once(",\"creation_date\":")
        .unwrap_or_else(|| panic!("no creation_date: {info}"));
    assert!(
        date.trim_end().trim_end_matches('}').parse::<i64>().is_ok(),
        "{info}"
    );
    assert_eq!(
        head,
        format!(
            r#"{{"name":"rel","info_hash":"{hash}","total_size":200003,"piece_length":262144,"pieces":1,"multi_file":true,"private":false,"files":[{{"path":"rel/VERSION","size":3}},{{"path":"rel/lib/a.so","size":200000}}],"trackers":[],"comment":null,"created_by":"corvid {}""#,
            env!("CARGO_PKG_VERSION")
        )
    );
    let o = corvid(&["verify", "--json", "t.torrent", "rel"], t.path());
    assert_eq!(
        out(&o),
        format!(
            r#"{{"ok":true,"info_hash":"{hash}","pieces":1,"hashed":true,"bad_pieces":[],"bad_files":[]}}"#
        ) + "\n"
    );
    std::fs::write(t.path().join("rel/VERSION"), b"43\n").unwrap();
    let o = corvid(&["verify", "--json", "t.torrent", "rel"], t.path());
    assert_eq!(
        out(&o),
        format!(
            r#"{{"ok":false,"info_hash":"{hash}","pieces":1,"hashed":true,"bad_pieces":[{{"piece":0,"files":["rel/VERSION","rel/lib/a.so"]}}],"bad_files":[{{"path":"rel/VERSION","bad_pieces":1,"problem":"hash mismatch"}},{{"path":"rel/lib/a.so","bad_pieces":1,"problem":"hash mismatch"}}]}}"#
        ) + "\n"
    );
}
