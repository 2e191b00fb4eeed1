//! A hand-driven BitTorrent connection over a real socket, for tests that play a hostile
//! peer: it sends exactly the bytes a test asks for and reports every message it gets, so
//! an attack can be replayed step by step against real `corvid` processes.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use corvid_engine::bencode::{self, OwnedValue};
use corvid_engine::wire::id;

/// What the next read brought.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// One message: its id and payload (`id` None for a keep-alive).
    Msg(Option<u8>, Vec<u8>),
    /// The remote closed the connection (EOF or reset).
    Closed,
    /// Nothing complete arrived before the deadline.
    TimedOut,
}

pub struct RawPeer {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

/// Reserved bytes announcing the extension protocol (BEP 10) and the fast extension.
pub const RESERVED: [u8; 8] = [0, 0, 0, 0, 0, 0x10, 0, 0x04];

impl RawPeer {
    /// Connects and sends a handshake for `info_hash` claiming `peer_id`; does not wait
    /// for the remote's.
    pub fn connect(addr: SocketAddr, info_hash: [u8; 20], peer_id: [u8; 20]) -> RawPeer {
        let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        stream.set_nodelay(true).expect("nodelay");
        let mut hs = Vec::with_capacity(68);
        hs.extend_from_slice(b"\x13BitTorrent protocol");
        hs.extend_from_slice(&RESERVED);
        hs.extend_from_slice(&info_hash);
        hs.extend_from_slice(&peer_id);
        stream.write_all(&hs).expect("send handshake");
        RawPeer {
            stream,
            buf: Vec::new(),
        }
    }

    /// Reads until `n` bytes are buffered; false if the remote closed or the deadline
    /// passed first.
    fn fill(&mut self, n: usize, deadline: Instant) -> Result<(), Next> {
        let mut chunk = [0u8; 65536];
        while self.buf.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Next::TimedOut);
            }
            self.stream
                .set_read_timeout(Some(left))
                .expect("set read timeout");
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(Next::Closed),
                Ok(k) => self.buf.extend_from_slice(&chunk[..k]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Err(Next::TimedOut)
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return Err(Next::Closed),
            }
        }
        Ok(())
    }

    /// The remote's handshake: its peer id, or why none came.
    pub fn handshake(&mut self, timeout: Duration) -> Result<[u8; 20], Next> {
        self.fill(68, Instant::now() + timeout)?;
        assert_eq!(
            &self.buf[..20],
            b"\x13BitTorrent protocol",
            "not a handshake"
        );
        let mut id = [0u8; 20];
        id.copy_from_slice(&self.buf[48..68]);
        self.buf.drain(..68);
        Ok(id)
    }

    /// The next message, waiting at most `timeout`.
    pub fn next(&mut self, timeout: Duration) -> Next {
        let deadline = Instant::now() + timeout;
        if let Err(n) = self.fill(4, deadline) {
            return n;
        }
        let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
        assert!(len <= 1 << 21, "message of {len} bytes");
        if let Err(n) = self.fill(4 + len, deadline) {
            return n;
        }
        let msg: Vec<u8> = self.buf.drain(..4 + len).skip(4).collect();
        match msg.split_first() {
            None => Next::Msg(None, Vec::new()),
            Some((&i, rest)) => Next::Msg(Some(i), rest.to_vec()),
        }
    }

    /// Sends one message: `id` and payload.
    pub fn send(&mut self, msg_id: u8, payload: &[u8]) -> std::io::Result<()> {
        let mut m = Vec::with_capacity(5 + payload.len());
        m.extend_from_slice(&(payload.len() as u32 + 1).to_be_bytes());
        m.push(msg_id);
        m.extend_from_slice(payload);
        self.stream.write_all(&m)
    }

    /// Sends a BEP 10 extension handshake (extended id 0) with the given dictionary.
    pub fn send_ext(&mut self, dict: &OwnedValue) -> std::io::Result<()> {
        let mut p = vec![0u8];
        dict.encode_into(&mut p);
        self.send(id::EXTENDED, &p)
    }

    /// Sends `request` for (index, begin, len).
    pub fn request(&mut self, index: u32, begin: u32, len: u32) -> std::io::Result<()> {
        let mut p = Vec::with_capacity(12);
        for x in [index, begin, len] {
            p.extend_from_slice(&x.to_be_bytes());
        }
        self.send(id::REQUEST, &p)
    }
}

/// The bytes under `key` in an extension handshake payload (ext id byte first), if the
/// message is one and has them.
pub fn ext_bytes(msg_id: Option<u8>, payload: &[u8], key: &str) -> Option<Vec<u8>> {
    if msg_id != Some(id::EXTENDED) || payload.first() != Some(&0) {
        return None;
    }
    let v = bencode::decode(&payload[1..]).ok()?;
    v.as_dict()?
        .get(key.as_bytes())?
        .as_bytes()
        .map(|b| b.to_vec())
}
