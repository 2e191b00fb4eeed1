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

/// Issue 12, item 1: the relay attack on the private-swarm handshake, against two real
/// members. The attacker has no secret. It connects to member W and reads W's peer id,
/// connects to member V claiming W's id and reads V's challenge, hands V's challenge to W
/// as its own and takes whatever proof W answers with, and hands that proof to V. Before
/// the fix W answered any challenge with its proof over (info-hash, challenge, W's id),
/// exactly what V expected from "W", so V sent have-all, unchoked the attacker and served
/// piece 0. The attacker speaks the keys of both handshake versions (`corvid_nonce` /
/// `corvid_auth` and `corvid_challenge` / `corvid_proof`), so the same attack runs
/// against an old corvid and a new one; it must now get nothing from V but extension
/// handshakes, no proof from either member, and V must close the connection.
#[test]
fn relaying_challenges_between_two_members_gets_an_outsider_nothing() {
    use corvid_engine::bencode::OwnedValue;
    use corvid_engine::wire::id;
    use support::rawpeer::{ext_bytes, Next, RawPeer};

    let dir = tempfile::tempdir().expect("tempdir");
    let parent = dir.path().join("src");
    make_tree(&parent.join("payload"), 1 << 20, 77);
    let torrent = dir.path().join("release.torrent");
    support::make_torrent(
        &parent.join("payload"),
        &torrent,
        "http://127.0.0.1:9/announce",
        "64K",
    );
    let ih = support::info_hash(&torrent);
    let secret_file = dir.path().join("secret");
    std::fs::write(&secret_file, "members only\n").expect("write secret");
    let member = |name: &str| {
        let secret = secret_file.to_str().expect("utf-8 path");
        let (mut p, addr) = support::start_seeder(
            &torrent,
            &parent,
            &["--no-tracker", "--no-announce", "--secret-file", secret],
            T,
        );
        p.name = name.to_string();
        (p, addr)
    };
    let (mut v, v_addr) = member("V");
    let (mut w, w_addr) = member("W");

    let wait = Duration::from_secs(20);
    // 1. W's peer id, from its handshake.
    let mut to_w = RawPeer::connect(w_addr, ih, *b"-XX0001-relayattack1");
    let w_id = to_w.handshake(wait).expect("W's handshake");
    // 2. Claim W's id towards V; V's challenge comes in its extension handshake.
    let mut to_v = RawPeer::connect(v_addr, ih, w_id);
    to_v.handshake(wait).expect("V's handshake");
    let mut from_v = Vec::new();
    let v_nonce = loop {
        match to_v.next(wait) {
            Next::Msg(i, p) => {
                let n = ext_bytes(i, &p, "corvid_challenge").or(ext_bytes(i, &p, "corvid_nonce"));
                from_v.push((i, p));
                if let Some(n) = n {
                    break n;
                }
            }
            other => panic!("V sent no challenge: {other:?}\n{}", v.dump()),
        }
    };
    let challenge = |nonce: &[u8]| {
        let mut d = OwnedValue::dict();
        d.insert("m", OwnedValue::dict());
        d.insert("v", OwnedValue::bytes("corvid 0.1.0"));
        d.insert("corvid_auth_v", OwnedValue::Int(2));
        d.insert("corvid_challenge", OwnedValue::bytes(nonce));
        d.insert("corvid_nonce", OwnedValue::bytes(nonce));
        d
    };
    // 3. V's challenge to W as ours; whatever proof W gives comes back. W answers within
    //    a round trip on loopback if it answers at all, so 3 s of silence after its own
    //    extension handshake is a no (W closes us only at its handshake timeout).
    to_w.send_ext(&challenge(&v_nonce)).expect("send to W");
    let mut w_proof = None;
    let mut w_ext_seen = false;
    loop {
        let t = if w_ext_seen {
            Duration::from_secs(3)
        } else {
            wait
        };
        match to_w.next(t) {
            Next::Msg(i, p) => {
                w_ext_seen |= i == Some(id::EXTENDED);
                w_proof = ext_bytes(i, &p, "corvid_proof").or(ext_bytes(i, &p, "corvid_auth"));
                if w_proof.is_some() {
                    break;
                }
            }
            Next::Closed | Next::TimedOut => break,
        }
    }
    let w_gave = w_proof.clone();
    // 4. Our own challenge to V, then the proof (W's if it gave one; otherwise all the
    //    attacker can do is guess), then ask for piece 0 at once.
    to_v.send_ext(&challenge(&[0x41; 16])).expect("send to V");
    let proof = w_proof.unwrap_or_else(|| vec![0; 20]);
    let mut d = OwnedValue::dict();
    d.insert("m", OwnedValue::dict());
    d.insert("corvid_auth", OwnedValue::bytes(&proof));
    d.insert("corvid_proof", OwnedValue::bytes(&proof));
    to_v.send_ext(&d).expect("send to V");
    let _ = to_v.send(id::INTERESTED, &[]);
    let _ = to_v.request(0, 0, 16 * 1024);
    let end = loop {
        match to_v.next(wait) {
            Next::Msg(i, p) => {
                let got_piece = i == Some(id::PIECE);
                from_v.push((i, p));
                if got_piece {
                    break Next::Msg(Some(id::PIECE), Vec::new());
                }
            }
            other => break other,
        }
    };
    for (i, p) in &from_v {
        assert!(
            *i == Some(id::EXTENDED) || i.is_none(),
            "V sent message {i:?} to the relaying outsider (all: {:?})",
            from_v.iter().map(|m| m.0).collect::<Vec<_>>()
        );
        for key in ["corvid_proof", "corvid_auth"] {
            assert_eq!(ext_bytes(*i, p, key), None, "V sent the outsider its {key}");
        }
    }
    assert_eq!(end, Next::Closed, "V did not close the connection");
    assert_eq!(w_gave, None, "W gave a proof to someone who proved nothing");
    drop((to_v, to_w));
    for (p, closes) in [(&mut v, true), (&mut w, false)] {
        p.terminate();
        let (code, lines, err) = p.wait_exit(T);
        let all = lines.join("\n");
        assert_eq!(code, Some(0), "{}\n{all}\n{err}", p.name);
        if closes {
            assert!(
                lines
                    .iter()
                    .any(|l| l.contains("peer_closed") && l.contains("private swarm")),
                "V did not refuse the outsider as not authorized:\n{all}"
            );
        }
    }
}
