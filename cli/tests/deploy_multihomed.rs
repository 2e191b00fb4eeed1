//! Multi-homed hosts on the simulated fleet: every host has a management network (eth0,
//! where sshd listens) and a data network (eth1, `scripts/fleet up --data-net`), and
//! `corvid deploy --peer-network` runs the swarm on the data one. Also the flag's bad
//! input, refused before any host is contacted.
//!
//! Needs root (namespaces, sshd): without it the fleet test FAILS with a message, never
//! passes silently. The fleet guard takes the namespaces down, pass or fail.

mod support;

use std::path::Path;

use support::fleet::Fleet;

const DATA_NET: &str = "10.98.0.0/16";

/// Bytes received and sent on `dev` in host `i`'s namespace (`/proc/net/dev` is the
/// reading process's network namespace).
fn counters(fleet: &Fleet, i: usize, dev: &str) -> (u64, u64) {
    let table = fleet.ok(&["exec", &i.to_string(), "cat", "/proc/net/dev"]);
    let line = table
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix(&format!("{dev}:"))
                .map(str::to_string)
        })
        .unwrap_or_else(|| panic!("no {dev} on h{i}:\n{table}"));
    let f: Vec<u64> = line
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect();
    (f[0], f[8])
}

/// `corvid deploy` on h0 to `hosts`, `--json`, as the fleet's root over its ssh config.
fn deploy(
    fleet: &Fleet,
    hosts: &str,
    src: &Path,
    tag: &str,
    extra: &[&str],
) -> (std::process::Output, Vec<String>) {
    let disk = fleet.ok(&["disk"]).trim().to_string();
    let cfg = fleet.ok(&["ssh-config"]).trim().to_string();
    let dest = format!("{disk}/app");
    let remote = format!("{disk}/bin/corvid");
    let src = src.display().to_string();
    let mut args = vec![
        "deploy",
        "--hosts",
        hosts,
        "--src",
        &src,
        "--dest",
        &dest,
        "--tag",
        tag,
        "--remote-corvid",
        &remote,
        "--ssh-option",
        "-F",
        "--ssh-option",
        &cfg,
        "--stall-timeout",
        "30s",
        "--threads",
        "1",
        "--linger",
        "1s",
        "--json",
    ];
    args.extend_from_slice(extra);
    let out = fleet.corvid(0, &args).output().expect("run corvid deploy");
    let lines = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    (out, lines)
}

fn host_line<'a>(lines: &'a [String], host: &str) -> &'a str {
    let tag = format!("\"host\":\"{host}\"");
    lines
        .iter()
        .find(|l| l.contains("\"event\":\"host\"") && l.contains(&tag))
        .unwrap_or_else(|| panic!("no line for {host}: {lines:?}"))
}

#[test]
fn payload_crosses_the_data_network_and_a_host_without_one_fails_alone() {
    let fleet = Fleet::up("mh", 3, &["--data-net"]);
    let tmp = tempfile::tempdir().unwrap();
    // First a small release, so corvid is installed (over ssh, the management network)
    // before anything is counted.
    let small = tmp.path().join("small");
    std::fs::create_dir_all(&small).unwrap();
    std::fs::write(small.join("x"), b"installs corvid").unwrap();
    let (out, lines) = deploy(&fleet, "h1,h2,h3", &small, "v0", &[]);
    assert!(
        out.status.success(),
        "v0: {}\n{lines:?}",
        String::from_utf8_lossy(&out.stderr)
    );

    // h3 loses its data address: it has nowhere to listen in the network.
    fleet.ok(&["exec", "3", "ip", "addr", "flush", "dev", "eth1"]);
    let payload = 16u64 << 20;
    let src = tmp.path().join("v1");
    support::make_tree(&src, payload as usize, 42);
    let total: u64 = walk_len(&src);
    let before: Vec<[(u64, u64); 2]> = (0..=2)
        .map(|i| [counters(&fleet, i, "eth0"), counters(&fleet, i, "eth1")])
        .collect();
    let (out, lines) = deploy(
        &fleet,
        "h1,h2,h3",
        &src,
        "v1",
        &["--peer-network", DATA_NET],
    );
    let after: Vec<[(u64, u64); 2]> = (0..=2)
        .map(|i| [counters(&fleet, i, "eth0"), counters(&fleet, i, "eth1")])
        .collect();
    assert_eq!(
        out.status.code(),
        Some(8),
        "h3 fails, the others deploy: {}\n{lines:?}",
        String::from_utf8_lossy(&out.stderr)
    );
    let h3 = host_line(&lines, "h3");
    assert!(
        h3.contains("\"result\":\"failed\"")
            && h3.contains(&format!("--listen-network {DATA_NET}"))
            && h3.contains("no address of this host is in that network"),
        "{h3}"
    );
    for i in 1..=2 {
        let l = host_line(&lines, &format!("h{i}"));
        assert!(l.contains("\"result\":\"deployed\""), "{l}");
        let [(eth0_rx, _), (eth1_rx, _)] = after[i];
        let [(eth0_rx0, _), (eth1_rx0, _)] = before[i];
        let (mgmt, data) = (eth0_rx - eth0_rx0, eth1_rx - eth1_rx0);
        // The whole payload came in over the data network; the management network
        // carried the ssh sessions (commands, the torrent, JSON lines) and nothing like
        // the payload.
        assert!(
            data >= total,
            "h{i}: {data} bytes in on eth1, payload {total}"
        );
        assert!(
            mgmt < total / 8,
            "h{i}: {mgmt} bytes in on eth0 (management), payload {total}"
        );
    }
    // The seeder on h0 sent on the data network only.
    let (sent_mgmt, sent_data) = (
        after[0][0].1 - before[0][0].1,
        after[0][1].1 - before[0][1].1,
    );
    assert!(sent_data >= total / 2, "h0 sent {sent_data} on eth1");
    assert!(sent_mgmt < total / 8, "h0 sent {sent_mgmt} on eth0");
    // The trees are the release.
    let disk = fleet.ok(&["disk"]).trim().to_string();
    let hosts = Path::new(&disk).parent().unwrap().join("hosts");
    for i in 1..=2 {
        support::assert_same_tree(&src, &hosts.join(format!("h{i}/app/releases/v1")));
    }
}

fn walk_len(root: &Path) -> u64 {
    std::fs::read_dir(root)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            if m.is_dir() {
                walk_len(&e.path())
            } else {
                m.len()
            }
        })
        .sum()
}

#[test]
fn a_bad_peer_network_is_refused_before_any_host() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("x"), b"x").unwrap();
    let src = tmp.path().display().to_string();
    let run = |net: &str| {
        // `nohost.invalid` is never contacted: the deploy stops before any ssh.
        support::corvid(&[
            "deploy",
            "--hosts",
            "nohost.invalid",
            "--src",
            &src,
            "--dest",
            "/srv/app",
            "--tag",
            "v1",
            "--peer-network",
            net,
        ])
        .output()
        .unwrap()
    };
    for (net, says) in [
        ("10.98.0/16", "not an IPv4 or IPv6 address"),
        ("10.98.0.0", "not a network in CIDR notation"),
        ("10.98.0.0/40", "prefix length"),
        ("10.98.1.0/16", "did you mean 10.98.0.0/16"),
        // TEST-NET-3: no interface of this machine is in it.
        ("203.0.113.0/24", "this machine has no address in it"),
    ] {
        let out = run(net);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{net}: {err}");
        assert!(err.contains(says), "{net}: {err}");
        assert!(!err.contains("ssh"), "{net}: a host was contacted: {err}");
    }
    // The peer's own flag, the same parser.
    let out = support::corvid(&["peer", "--listen-network", "10.98.0.0/99", "x.torrent"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("prefix length"), "{err}");
}
