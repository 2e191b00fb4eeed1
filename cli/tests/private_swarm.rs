//! A private swarm of real `corvid` processes on loopback: a seeder whose embedded tracker
//! shares a secret (from a file) with one peer (from the environment). That peer completes
//! with identical data; a peer without the secret, even told the seeder's address
//! directly, gets no peers from the tracker and no byte from the seeder, and gives up
//! with the stall exit code.

mod support;

use std::time::Duration;

use support::{assert_same_tree, corvid, free_port, json_field, json_u64, make_tree, Proc};

const T: Duration = Duration::from_secs(120);

#[test]
fn only_peers_with_the_secret_get_the_release() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/announce");
    let parent = dir.path().join("src");
    let payload = parent.join("payload");
    make_tree(&payload, 2 << 20, 31);
    let torrent = dir.path().join("release.torrent");
    let out = corvid(&["make"])
        .arg(&payload)
        .arg("-o")
        .arg(&torrent)
        .args(["--tracker", &url, "--piece-size", "64K", "--threads", "1"])
        .output()
        .expect("run corvid make");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let secret_file = dir.path().join("secret");
    std::fs::write(&secret_file, "correct horse battery staple\n").expect("write secret");

    let mut seed_cmd = corvid(&["seed"]);
    seed_cmd
        .arg(&torrent)
        .arg(&parent)
        .args(["--listen", "127.0.0.1:0", "--json", "--cores", "1"])
        .args([
            "--hash-threads",
            "1",
            "--tracker-listen",
            &format!("127.0.0.1:{port}"),
        ])
        .arg("--secret-file")
        .arg(&secret_file)
        .env_remove("CORVID_SECRET");
    let mut seeder = Proc::spawn("seeder", &mut seed_cmd);
    let line = seeder.wait_line("\"listening\"", T);
    let seeder_addr = json_field(&line, "peer_addr")
        .unwrap_or_else(|| panic!("no peer_addr in {line}"))
        .to_owned();

    let peer = |name: &str, secret: Option<&str>, extra: &[&str]| {
        let mut cmd = corvid(&["peer"]);
        cmd.arg(&torrent)
            .arg(dir.path().join(name))
            .args(["--listen", "127.0.0.1:0", "--json", "--cores", "1"])
            .args(["--hash-threads", "1"])
            .args(extra);
        match secret {
            Some(s) => cmd.env("CORVID_SECRET", s),
            None => cmd.env_remove("CORVID_SECRET"),
        };
        Proc::spawn(name, &mut cmd)
    };
    let mut insider = peer(
        "insider",
        Some("correct horse battery staple"),
        &["--stall-timeout", "100s", "--linger", "0s"],
    );
    let mut outsider = peer(
        "outsider",
        None,
        &["--stall-timeout", "4s", "--peer", &seeder_addr],
    );

    let (code, lines, err) = insider.wait_exit(T);
    assert_eq!(code, Some(0), "insider\n{}\n{err}", lines.join("\n"));
    let done = lines
        .iter()
        .find(|l| l.contains("\"event\":\"done\""))
        .unwrap_or_else(|| panic!("insider printed no report:\n{}", lines.join("\n")));
    assert_eq!(json_field(done, "complete"), Some("true"), "{done}");
    assert_same_tree(&payload, &dir.path().join("insider").join("payload"));

    let (code, lines, err) = outsider.wait_exit(T);
    assert_eq!(code, Some(5), "outsider\n{}\n{err}", lines.join("\n"));
    let all = lines.join("\n");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("tracker_error") && l.contains("private tracker")),
        "the tracker did not refuse the outsider:\n{all}\n{err}"
    );
    for l in &lines {
        if l.contains("\"event\":\"progress\"") {
            assert_eq!(json_u64(l, "have"), 0, "outsider got a piece: {l}");
            assert_eq!(json_u64(l, "bytes_down"), 0, "outsider got data: {l}");
            assert_eq!(json_u64(l, "peers"), 0, "outsider has peers: {l}");
        }
    }
    seeder.terminate();
    let (code, lines, err) = seeder.wait_exit(T);
    let all = lines.join("\n");
    assert_eq!(code, Some(0), "seeder\n{all}\n{err}");
    // The seeder closed the outsider's direct connection for want of a proof.
    assert!(
        lines
            .iter()
            .any(|l| l.contains("peer_closed") && l.contains("private swarm")),
        "seeder did not refuse the outsider:\n{all}\n{err}"
    );
}
