//! The tracker server and client over real loopback sockets: two peers find each other,
//! `stopped` removes, scrape counts, and hostile connections neither crash nor wedge it;
//! a flood of announces expires, per-address caps hold, entries belong to the address
//! that made them and `ip=` is only a claim (a second client is 127.0.0.2).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use corvid_engine::tracker::{
    announce, proto, scrape, AnnounceRequest, AnnounceResponse, Event, ScrapeEntry, TrackerConfig,
    TrackerError, TrackerServer, TrackerStats,
};

const TIMEOUT: Duration = Duration::from_secs(5);
const HASH: [u8; 20] = *b"corvid-test-hash-\x00\xff\x25";

fn start(cfg: TrackerConfig) -> (TrackerServer, String) {
    let server = TrackerServer::bind("127.0.0.1:0".parse().unwrap(), cfg).expect("bind tracker");
    let url = format!("http://{}/announce", server.local_addr());
    (server, url)
}

fn peer(id: u8, port: u16, left: u64) -> AnnounceRequest {
    AnnounceRequest::new(HASH, [id; 20], port, left)
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Sends raw bytes, then reads until the server closes or `wait` passes; returns what was
/// read and whether the server closed the connection within `wait`.
fn raw_exchange(server: SocketAddr, bytes: &[u8], wait: Duration) -> (Vec<u8>, bool) {
    let mut s = TcpStream::connect(server).expect("connect");
    // The server may close before reading everything; a failed write is fine here.
    let _ = s.write_all(bytes);
    let deadline = Instant::now() + wait;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            return (out, false);
        };
        s.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        match s.read(&mut buf) {
            Ok(0) => return (out, true),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            // A reset also means the server closed the connection.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return (out, true),
            Err(_) => return (out, false),
        }
    }
}

fn assert_good_announce_still_works(url: &str) {
    let r = announce(url, &peer(200, 9200, 1), TIMEOUT).expect("server still answers");
    assert!(r.interval > 0);
}

#[test]
fn two_peers_see_each_other_and_stopped_removes() {
    let (server, url) = start(TrackerConfig::default());
    let a = announce(&url, &peer(1, 7001, 100), TIMEOUT).unwrap();
    assert!(a.peers.is_empty(), "first peer sees nobody: {:?}", a.peers);
    assert_eq!(a.interval, 30);

    let b = announce(&url, &peer(2, 7002, 100), TIMEOUT).unwrap();
    assert_eq!(b.peers.len(), 1);
    assert_eq!(b.peers[0].addr, addr(7001));
    assert_eq!((b.complete, b.incomplete), (Some(0), Some(2)));

    let mut regular = peer(1, 7001, 100);
    regular.event = Event::None;
    let a = announce(&url, &regular, TIMEOUT).unwrap();
    assert_eq!(a.peers.len(), 1);
    assert_eq!(a.peers[0].addr, addr(7002));

    // Non-compact answer carries peer ids.
    let mut dict = peer(1, 7001, 100);
    dict.compact = false;
    dict.event = Event::None;
    let a = announce(&url, &dict, TIMEOUT).unwrap();
    assert_eq!(a.peers.len(), 1);
    assert_eq!(a.peers[0].peer_id, Some([2; 20]));

    let mut stop = peer(2, 7002, 100);
    stop.event = Event::Stopped;
    announce(&url, &stop, TIMEOUT).unwrap();
    let a = announce(&url, &regular, TIMEOUT).unwrap();
    assert!(a.peers.is_empty(), "stopped peer is gone: {:?}", a.peers);

    let stats = server.stats();
    assert_eq!(stats.announces, 6);
    assert_eq!(stats.peers, 1);
    server.shutdown();
}

#[test]
fn scrape_counts_and_failures_are_errors() {
    let (server, url) = start(TrackerConfig::default());
    announce(&url, &peer(1, 7001, 0), TIMEOUT).unwrap();
    announce(&url, &peer(2, 7002, 10), TIMEOUT).unwrap();
    let mut done = peer(2, 7002, 0);
    done.event = Event::Completed;
    announce(&url, &done, TIMEOUT).unwrap();
    announce(&url, &peer(3, 7003, 10), TIMEOUT).unwrap();

    let other = [9u8; 20];
    let mut got = scrape(&url, &[HASH, other], TIMEOUT).unwrap();
    got.sort_by_key(|e| e.0);
    let mut want = vec![
        (
            HASH,
            ScrapeEntry {
                complete: 2,
                incomplete: 1,
                downloaded: 1,
            },
        ),
        (other, ScrapeEntry::default()),
    ];
    want.sort_by_key(|e| e.0);
    assert_eq!(got, want);

    // A tracker refusal surfaces with its reason.
    let mut bad = peer(4, 0, 10);
    bad.event = Event::Started;
    match announce(&url, &bad, TIMEOUT) {
        Err(TrackerError::Failure { reason, .. }) => assert!(reason.contains("port 0"), "{reason}"),
        other => panic!("expected failure, got {other:?}"),
    }
    assert_eq!(server.stats().scrapes, 1);
    assert_eq!(server.stats().failures, 1);
}

#[test]
fn allow_list_refuses_other_hashes() {
    let cfg = TrackerConfig {
        allowed: Some([[5u8; 20]].into_iter().collect()),
        ..TrackerConfig::default()
    };
    let (_server, url) = start(cfg);
    let err = announce(&url, &peer(1, 7001, 1), TIMEOUT).unwrap_err();
    assert!(
        matches!(&err, TrackerError::Failure { reason, .. } if reason.contains("not allowed")),
        "{err}"
    );
    let mut ok = peer(1, 7001, 1);
    ok.info_hash = [5u8; 20];
    announce(&url, &ok, TIMEOUT).unwrap();
}

#[test]
fn garbage_gets_rejected_and_server_survives() {
    let cfg = TrackerConfig {
        request_timeout: Duration::from_millis(500),
        ..TrackerConfig::default()
    };
    let (server, url) = start(cfg);
    let sa = server.local_addr();
    // Generous bound for a loaded CI machine; the server's own deadline is 500 ms.
    let wait = Duration::from_secs(5);

    // Random bytes: 400 with a failure body, then closed.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let random: Vec<u8> = (0..3000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    let (out, closed) = raw_exchange(sa, &random, wait);
    assert!(closed, "random bytes: connection closed");
    assert!(
        out.starts_with(b"HTTP/1.0 400 "),
        "{}",
        String::from_utf8_lossy(&out)
    );
    assert!(out.windows(14).any(|w| w == b"failure reason"));

    // A request line over 8 KiB.
    let mut long = b"GET /announce?".to_vec();
    long.extend(std::iter::repeat_n(b'a', 9000));
    long.extend_from_slice(b" HTTP/1.0\r\n\r\n");
    let (out, closed) = raw_exchange(sa, &long, wait);
    assert!(closed);
    assert!(
        out.starts_with(b"HTTP/1.0 414 "),
        "{}",
        String::from_utf8_lossy(&out)
    );

    // Header flood.
    let mut flood = b"GET /announce HTTP/1.0\r\n".to_vec();
    for i in 0..1000 {
        flood.extend_from_slice(format!("X-Flood-{i}: yes\r\n").as_bytes());
    }
    let (out, closed) = raw_exchange(sa, &flood, wait);
    assert!(closed);
    assert!(
        out.starts_with(b"HTTP/1.0 4"),
        "{}",
        String::from_utf8_lossy(&out)
    );

    // Bad parameters: 200 with a failure reason, as trackers do.
    let (out, closed) = raw_exchange(
        sa,
        b"GET /announce?info_hash=%zz&port=1 HTTP/1.0\r\n\r\n",
        wait,
    );
    assert!(closed);
    assert!(out.starts_with(b"HTTP/1.0 200 "));
    assert!(out.ends_with(b"e"));
    assert!(out.windows(14).any(|w| w == b"failure reason"));

    // Half a request, then idle (slowloris): closed by the server's deadline.
    let started = Instant::now();
    let (out, closed) = raw_exchange(sa, b"GET /announce?info_hash=", wait);
    assert!(closed, "idle half request is closed within the timeout");
    assert!(out.is_empty());
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "closed by the deadline"
    );

    assert_good_announce_still_works(&url);
    let stats = server.stats();
    assert!(stats.bad_requests >= 3, "{stats:?}");
    assert!(stats.timeouts >= 1, "{stats:?}");
}

#[test]
fn many_idle_connections_do_not_lock_out_a_good_client() {
    let cfg = TrackerConfig {
        request_timeout: Duration::from_secs(30),
        max_connections: 8,
        ..TrackerConfig::default()
    };
    let (server, url) = start(cfg);
    // More idle half-requests than the server keeps; they all stay open on our side.
    let idle: Vec<TcpStream> = (0..20)
        .map(|_| {
            let mut s = TcpStream::connect(server.local_addr()).unwrap();
            s.write_all(b"GET /annou").unwrap();
            s
        })
        .collect();
    // Even though every slot was taken by an idle client, the newcomer evicts the oldest.
    assert_good_announce_still_works(&url);
    drop(idle);
    server.shutdown();
}

#[test]
fn client_errors_are_clear() {
    let e = announce("https://example.invalid/announce", &peer(1, 1, 1), TIMEOUT).unwrap_err();
    assert!(
        e.to_string().contains("https trackers are not supported"),
        "{e}"
    );

    // Nothing listening: a connection error naming the URL.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let url = format!("http://127.0.0.1:{port}/announce");
    let e = announce(&url, &peer(1, 1, 1), TIMEOUT).unwrap_err();
    assert!(e.to_string().contains(&url), "{e}");

    // A server that accepts and never answers: timeout.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/announce", silent.local_addr().unwrap());
    let started = Instant::now();
    let e = announce(&url, &peer(1, 1, 1), Duration::from_millis(300)).unwrap_err();
    assert!(matches!(e, TrackerError::Timeout(_)), "{e:?}");
    assert!(started.elapsed() < Duration::from_secs(3));

    // A server that answers too much: refused at the limit.
    let big = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/announce", big.local_addr().unwrap());
    let t = std::thread::spawn(move || {
        let (mut s, _) = big.accept().unwrap();
        // Read the request first, so closing does not reset the connection early.
        let mut req = Vec::new();
        let mut b = [0u8; 1024];
        while !req.ends_with(b"\r\n\r\n") {
            match s.read(&mut b) {
                Ok(0) | Err(_) => return,
                Ok(n) => req.extend_from_slice(&b[..n]),
            }
        }
        let _ = s.write_all(b"HTTP/1.0 200 OK\r\n\r\n");
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..40 {
            if s.write_all(&chunk).is_err() {
                break;
            }
        }
    });
    let e = announce(&url, &peer(1, 1, 1), TIMEOUT).unwrap_err();
    assert!(matches!(e, TrackerError::ResponseTooLarge { .. }), "{e:?}");
    t.join().unwrap();
}

#[test]
fn many_concurrent_clients_are_all_answered() {
    let (server, url) = start(TrackerConfig::default());
    let threads: Vec<_> = (0..32u8)
        .map(|id| {
            let url = url.clone();
            std::thread::spawn(move || {
                for round in 0..5 {
                    let mut r = peer(id, 10_000 + u16::from(id), 10);
                    if round > 0 {
                        r.event = Event::None;
                    }
                    announce(&url, &r, TIMEOUT).expect("concurrent announce");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client thread");
    }
    // Everyone is registered; a newcomer asking for all gets all 32.
    let mut last = peer(99, 9999, 10);
    last.numwant = Some(200);
    let r = announce(&url, &last, TIMEOUT).unwrap();
    assert_eq!(r.peers.len(), 32);
    assert_eq!(r.incomplete, Some(33));
    assert_eq!(server.stats().announces, 32 * 5 + 1);
}

#[test]
fn private_tracker_refuses_announces_and_scrapes_without_the_right_auth() {
    use corvid_engine::peer::auth::Secret;
    use corvid_engine::tracker::proto::{scrape_query, scrape_query_with_auth};
    let secret = Secret::new(b"fleet secret").unwrap();
    let wrong = Secret::new(b"guess").unwrap();
    let (server, url) = start(TrackerConfig {
        secret: Some(secret.clone()),
        ..TrackerConfig::default()
    });
    let refused = |r: Result<_, TrackerError>| match r {
        Err(TrackerError::Failure { reason, .. }) => {
            assert!(reason.contains("private"), "{reason}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    };
    // No auth, a wrong secret's auth, and a right secret's auth for another peer id.
    refused(announce(&url, &peer(1, 7001, 10), TIMEOUT));
    let mut bad = peer(2, 7002, 10);
    bad.auth = Some(wrong.announce_proof(&HASH, &[2; 20]));
    refused(announce(&url, &bad, TIMEOUT));
    let mut stolen = peer(3, 7003, 10);
    stolen.auth = Some(secret.announce_proof(&HASH, &[4; 20]));
    refused(announce(&url, &stolen, TIMEOUT));

    let authed = |id: u8, port: u16| {
        let mut r = peer(id, port, 10);
        r.auth = Some(secret.announce_proof(&HASH, &[id; 20]));
        r
    };
    let a = announce(&url, &authed(5, 7005), TIMEOUT).unwrap();
    assert!(
        a.peers.is_empty(),
        "refused peers were recorded: {:?}",
        a.peers
    );
    let b = announce(&url, &authed(6, 7006), TIMEOUT).unwrap();
    assert_eq!(
        b.peers.iter().map(|p| p.addr).collect::<Vec<_>>(),
        [addr(7005)]
    );
    let a = announce(&url, &authed(5, 7005), TIMEOUT).unwrap();
    assert_eq!(
        a.peers.iter().map(|p| p.addr).collect::<Vec<_>>(),
        [addr(7006)]
    );

    // Scrape: refused without auth (through the stock client), answered with it.
    match scrape(&url, &[HASH], TIMEOUT) {
        Err(TrackerError::Failure { reason, .. }) => {
            assert!(reason.contains("private"), "{reason}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    let scrape_with = |q: String| {
        let req = format!("GET /scrape?{q} HTTP/1.0\r\n\r\n");
        let (resp, _) = raw_exchange(server.local_addr(), req.as_bytes(), TIMEOUT);
        String::from_utf8_lossy(&resp).into_owned()
    };
    let ok = scrape_with(scrape_query_with_auth(
        &HASH,
        &[5; 20],
        &secret.announce_proof(&HASH, &[5; 20]),
    ));
    assert!(ok.contains("10:incompletei2e"), "{ok}");
    let no = scrape_with(scrape_query_with_auth(
        &HASH,
        &[5; 20],
        &wrong.announce_proof(&HASH, &[5; 20]),
    ));
    assert!(
        no.contains("failure reason") && !no.contains("incomplete"),
        "{no}"
    );
    let two = scrape_with(format!(
        "{}&{}",
        scrape_query(&[[1; 20]]),
        scrape_query_with_auth(&HASH, &[5; 20], &secret.announce_proof(&HASH, &[5; 20]))
    ));
    assert!(two.contains("failure reason"), "{two}");
    assert_eq!(server.stats().failures, 6);
}

// ---- Issue 12, item 3: a public tracker under a flood of announces. ----

/// Sends one announce over a socket bound to source address `from` (every 127.0.0.0/8
/// address is this host's on loopback, so 127.0.0.2 is a second client) and returns the
/// tracker's answer: the response, or its failure reason.
fn announce_from(
    from: Ipv4Addr,
    server: SocketAddr,
    req: &AnnounceRequest,
) -> Result<AnnounceResponse, String> {
    let target = format!("/announce?{}", proto::announce_query(req));
    let mut s = connect_from(from, server);
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s.write_all(format!("GET {target} HTTP/1.0\r\n\r\n").as_bytes())
        .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).expect("tracker answers and closes");
    let body_at = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP head")
        + 4;
    proto::parse_announce_response(&out[body_at..]).expect("a bencoded answer")
}

/// A TCP connection to `server` from source address `from`: std has no bind-before-
/// connect, so the socket is made with libc.
fn connect_from(from: Ipv4Addr, server: SocketAddr) -> TcpStream {
    use std::os::fd::FromRawFd;
    let SocketAddr::V4(to) = server else {
        panic!("IPv4 tracker expected: {server}")
    };
    let sin = |ip: Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: plain socket(2) call; the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` is a socket we just created and own alone; the TcpStream takes over
    // closing it, also when an assertion below fails.
    let stream = unsafe { TcpStream::from_raw_fd(fd) };
    let local = sin(from, 0);
    // SAFETY: `local` is a valid sockaddr_in of `len` bytes that outlives the call.
    let rc = unsafe { libc::bind(fd, std::ptr::addr_of!(local).cast(), len) };
    assert_eq!(rc, 0, "bind {from}: {}", std::io::Error::last_os_error());
    let remote = sin(*to.ip(), to.port());
    // SAFETY: as for bind; a blocking connect to loopback.
    let rc = unsafe { libc::connect(fd, std::ptr::addr_of!(remote).cast(), len) };
    assert_eq!(
        rc,
        0,
        "connect {server}: {}",
        std::io::Error::last_os_error()
    );
    stream
}

const A: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
const B: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

/// Waits, bounded, until the tracker's gauges say `done`; polls the stats, since the
/// server publishes no event for an expiry pass.
fn wait_for_stats(server: &TrackerServer, what: &str, done: impl Fn(&TrackerStats) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = server.stats();
        if done(&s) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "gave up waiting for {what}: {s:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The reported attack: 10,000 announces with random info-hashes and `event=completed`
/// from brand-new peers. Before the fix those swarms never expired, and once their peers
/// had, a new torrent still got "tracker is full: too many torrents" until restart.
#[test]
fn completed_flood_of_random_hashes_expires_and_new_torrents_get_in() {
    const FLOOD: usize = 10_000;
    let cfg = TrackerConfig {
        // Peers expire after two intervals: 2 s keeps the test short.
        interval: Duration::from_secs(1),
        max_torrents: FLOOD,
        // The per-IP caps would stop this flood from one address early (tested below);
        // here the attacker is taken to have enough addresses, so expiry must hold alone.
        max_peers_per_ip: FLOOD,
        max_swarms_per_ip: FLOOD,
        ..TrackerConfig::default()
    };
    let (server, url) = start(cfg);
    let started = Instant::now();
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let url = url.clone();
            std::thread::spawn(move || {
                let mut x = 0x9e37_79b9_7f4a_7c15 ^ (t + 1).wrapping_mul(0x2545_f491_4f6c_dd1d);
                for _ in 0..FLOOD / 4 {
                    let mut hash = [0u8; 20];
                    for b in &mut hash {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        *b = (x >> 24) as u8;
                    }
                    let mut r = AnnounceRequest::new(hash, [t as u8; 20], 6881, 0);
                    r.event = Event::Completed;
                    announce(&url, &r, TIMEOUT).expect("flood announce accepted");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("flood thread");
    }
    let flood_time = started.elapsed();
    let after_flood = server.stats();
    eprintln!("flood: {FLOOD} announces in {flood_time:?}; then {after_flood:?}");
    assert_eq!(after_flood.announces, FLOOD as u64);
    assert!(after_flood.torrents > 0, "{after_flood:?}");

    // Every flood peer expires two intervals after its announce; their swarms must go too.
    wait_for_stats(&server, "the flood's swarms to expire", |s| {
        s.peers == 0 && s.torrents == 0
    });
    let fresh = AnnounceRequest::new([0x5a; 20], [9; 20], 7000, 10);
    let r = announce(&url, &fresh, TIMEOUT).expect("a new torrent is accepted");
    assert_eq!(r.incomplete, Some(1));
    server.shutdown();
}

#[test]
fn per_ip_caps_hold_over_real_sockets() {
    let cfg = TrackerConfig {
        max_peers_per_ip: 3,
        max_swarms_per_ip: 2,
        ..TrackerConfig::default()
    };
    let (server, _url) = start(cfg);
    let sa = server.local_addr();
    let in_swarm =
        |h: u8, id: u8| AnnounceRequest::new([h; 20], [id; 20], 7000 + u16::from(id), 10);
    for id in 1..=3 {
        announce_from(A, sa, &in_swarm(1, id)).expect("within the cap");
    }
    let refused = announce_from(A, sa, &in_swarm(1, 4)).unwrap_err();
    assert!(
        refused.contains("too many peers from your address"),
        "{refused}"
    );
    // The cap is per address: another source still joins that swarm.
    let r = announce_from(B, sa, &in_swarm(1, 4)).expect("another address");
    assert_eq!(r.peers.len(), 3);

    announce_from(A, sa, &in_swarm(2, 1)).expect("second swarm");
    for h in 3..40 {
        let refused = announce_from(A, sa, &in_swarm(h, 1)).unwrap_err();
        assert!(
            refused.contains("too many swarms from your address"),
            "{refused}"
        );
    }
    assert_eq!(server.stats().torrents, 2, "refused swarms hold no slot");
    announce_from(B, sa, &in_swarm(3, 1)).expect("another address, another swarm");

    // Leaving a swarm gives the slot back.
    let mut stop = in_swarm(2, 1);
    stop.event = Event::Stopped;
    announce_from(A, sa, &stop).unwrap();
    announce_from(A, sa, &in_swarm(4, 1)).expect("slot given back");
    server.shutdown();
}

/// A peer's id is public (dictionary responses show it); another address using it must
/// not remove the peer (`stopped`) or redirect it (a regular announce with its own port).
#[test]
fn spoofed_stopped_from_another_address_cannot_remove_a_peer() {
    let (server, _url) = start(TrackerConfig::default());
    let sa = server.local_addr();
    announce_from(A, sa, &peer(1, 7001, 100)).unwrap();
    let mut dict = peer(2, 7002, 100);
    dict.compact = false;
    let seen = announce_from(A, sa, &dict).unwrap();
    let victim = seen.peers[0].peer_id.expect("dictionary peers carry ids");
    assert_eq!(victim, [1; 20]);

    let mut spoof = AnnounceRequest::new(HASH, victim, 6666, 100);
    spoof.event = Event::Stopped;
    let refused = announce_from(B, sa, &spoof).unwrap_err();
    assert!(refused.contains("another address"), "{refused}");
    spoof.event = Event::None;
    let refused = announce_from(B, sa, &spoof).unwrap_err();
    assert!(refused.contains("another address"), "{refused}");

    let mut again = peer(2, 7002, 100);
    again.event = Event::None;
    let r = announce_from(A, sa, &again).unwrap();
    let got: Vec<SocketAddr> = r.peers.iter().map(|p| p.addr).collect();
    assert_eq!(got, [addr(7001)], "the victim is still there, unmoved");
    assert_eq!(server.stats().peers, 2);

    // Its own address can still stop it.
    let mut stop = peer(1, 7001, 100);
    stop.event = Event::Stopped;
    announce_from(A, sa, &stop).unwrap();
    assert_eq!(server.stats().peers, 1);
    server.shutdown();
}

/// `ip=` is a claim; by default it is not recorded, from loopback neither (a local
/// reverse proxy would make every client loopback). With `trust_ip_param` it is.
#[test]
fn ip_param_is_ignored_unless_the_operator_trusts_it() {
    for trust in [false, true] {
        let (server, url) = start(TrackerConfig {
            trust_ip_param: trust,
            ..TrackerConfig::default()
        });
        let mut claim = peer(1, 7001, 100);
        claim.ip = Some("192.0.2.7".parse().unwrap());
        announce(&url, &claim, TIMEOUT).unwrap();
        let r = announce(&url, &peer(2, 7002, 100), TIMEOUT).unwrap();
        let got: Vec<SocketAddr> = r.peers.iter().map(|p| p.addr).collect();
        let want: SocketAddr = if trust {
            "192.0.2.7:7001".parse().unwrap()
        } else {
            addr(7001)
        };
        assert_eq!(got, [want], "trust_ip_param: {trust}");
        server.shutdown();
    }
}

// ---- Issue 11: racks. ----

/// A racked tracker over real sockets, with clients as stock ones talk to it (plain
/// HTTP/1.0 GETs, compact and dictionary answers): rack a is 127.0.0.1 and the seeder's
/// 127.0.0.3, rack b is 127.0.0.2, four leechers each. A rack-b newcomer gets the seeder,
/// its four rack mates and two of rack a (a third of four, rounded up), where a tracker
/// without the topology hands out all nine; the answers keep their usual shape.
#[test]
fn racked_tracker_prefers_the_askers_rack_in_both_answer_forms() {
    let topology = corvid_engine::tracker::Topology::parse(
        "127.0.0.1 rack=a\n127.0.0.3 rack=a\n127.0.0.2 rack=b\n",
        "test",
    )
    .unwrap();
    let cfg = TrackerConfig {
        topology: Some(std::sync::Arc::new(topology)),
        ..TrackerConfig::default()
    };
    let (server, _) = start(cfg);
    let (plain, _) = start(TrackerConfig::default());
    const C: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);
    for s in [&server, &plain] {
        let to = s.local_addr();
        announce_from(C, to, &peer(50, 6881, 0)).unwrap();
        for i in 1..=4u8 {
            announce_from(A, to, &peer(i, 7000 + u16::from(i), 10)).unwrap();
            announce_from(B, to, &peer(10 + i, 8000 + u16::from(i), 10)).unwrap();
        }
    }
    let newcomer = peer(19, 8009, 10);
    let all = announce_from(B, plain.local_addr(), &newcomer).unwrap();
    assert_eq!(all.peers.len(), 9);

    let got = announce_from(B, server.local_addr(), &newcomer).unwrap();
    let addrs: Vec<SocketAddr> = got.peers.iter().map(|p| p.addr).collect();
    assert_eq!(addrs.len(), 7, "{addrs:?}");
    assert_eq!(addrs[0], SocketAddr::from((C, 6881)), "the seeder first");
    let rack_b = addrs.iter().filter(|a| a.ip() == B).count();
    assert_eq!(rack_b, 4, "{addrs:?}");
    assert_eq!((got.complete, got.incomplete), (Some(1), Some(9)));

    // The raw answers: BEP 23's 6 bytes a peer in `peers`, and BEP 3's list of
    // dictionaries with `peer id` when asked with compact=0.
    let mut again = newcomer.clone();
    again.event = Event::None;
    for compact in [true, false] {
        again.compact = compact;
        let target = format!("/announce?{}", proto::announce_query(&again));
        let mut s = connect_from(B, server.local_addr());
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        s.write_all(format!("GET {target} HTTP/1.0\r\n\r\n").as_bytes())
            .unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).unwrap();
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("HTTP/1.0 200 OK\r\n"), "{text}");
        if compact {
            assert!(text.contains("5:peers42:"), "7 compact peers: {text}");
        } else {
            assert!(text.contains("5:peersld2:ip9:127.0.0."), "{text}");
            assert_eq!(text.matches("7:peer id20:").count(), 7, "{text}");
        }
    }
    server.shutdown();
    plain.shutdown();
}
