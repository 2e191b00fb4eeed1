//! Property tests for the byte codecs: bencode, the peer wire protocol and the tracker's
//! query and response formats. Each encoder's output must decode back to the value it
//! came from, for arbitrary values, not just the handful in the unit tests. The fuzzers in
//! `engine/fuzz` attack the decoders from the other side (arbitrary bytes in).

use std::net::{IpAddr, SocketAddr};

use corvid_engine::bencode::{self, OwnedValue};
use corvid_engine::tracker::proto::{self, AnnounceRequest, AnnounceResponse, Event, PeerInfo};
use corvid_engine::wire::{
    self, Bitfield, Decoded, ExtendedHandshake, Handshake, Limits, Message, MAX_EXTENDED_LEN,
};
use proptest::collection::{btree_map, btree_set, vec};
use proptest::prelude::*;

fn owned_value() -> impl Strategy<Value = OwnedValue> {
    let leaf = prop_oneof![
        any::<i64>().prop_map(OwnedValue::Int),
        vec(any::<u8>(), 0..24).prop_map(OwnedValue::Bytes),
    ];
    leaf.prop_recursive(6, 64, 6, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..6).prop_map(OwnedValue::List),
            btree_map(vec(any::<u8>(), 0..8), inner, 0..6).prop_map(OwnedValue::Dict),
        ]
    })
}

proptest! {
    #[test]
    fn bencode_round_trip(v in owned_value(), trailing in vec(any::<u8>(), 0..8)) {
        let enc = v.encode();
        let dec = bencode::decode(&enc).expect("encoder output decodes");
        prop_assert_eq!(dec.to_owned_value(), v.clone());
        // decode_prefix finds exactly the value's end whatever follows it.
        let mut longer = enc.clone();
        longer.extend_from_slice(&trailing);
        let (pre, n) = bencode::decode_prefix(&longer).expect("prefix decodes");
        prop_assert_eq!(n, enc.len());
        prop_assert_eq!(pre.to_owned_value(), v);
    }
}

/// A piece count and a bitfield for it whose spare bits are zero, as the wire demands.
fn bitfield() -> impl Strategy<Value = (u32, Vec<u8>)> {
    (0u32..200).prop_flat_map(|pieces| {
        vec(any::<bool>(), pieces as usize).prop_map(move |bits| {
            let mut b = Bitfield::new(pieces);
            for (i, set) in bits.into_iter().enumerate() {
                if set {
                    b.set(i as u32);
                }
            }
            (pieces, b.as_bytes().to_vec())
        })
    })
}

/// Owned stand-ins for the borrowed `Message` kinds, so strategies can produce them.
#[derive(Debug, Clone)]
enum Kind {
    KeepAlive,
    Choke,
    Unchoke,
    Interested,
    NotInterested,
    Have(u32),
    Bitfield,
    Request(u32, u32, u32),
    Piece(u32, u32, u32),
    Cancel(u32, u32, u32),
    Port(u16),
    Suggest(u32),
    HaveAll,
    HaveNone,
    Reject(u32, u32, u32),
    AllowedFast(u32),
    Extended(u8, Vec<u8>),
}

const MAX_BLOCK: u32 = 128 * 1024;

fn kind() -> impl Strategy<Value = Kind> {
    let t = || (any::<u32>(), any::<u32>(), any::<u32>());
    prop_oneof![
        Just(Kind::KeepAlive),
        Just(Kind::Choke),
        Just(Kind::Unchoke),
        Just(Kind::Interested),
        Just(Kind::NotInterested),
        any::<u32>().prop_map(Kind::Have),
        Just(Kind::Bitfield),
        t().prop_map(|(a, b, c)| Kind::Request(a, b, c)),
        (any::<u32>(), any::<u32>(), 0..=MAX_BLOCK).prop_map(|(a, b, c)| Kind::Piece(a, b, c)),
        t().prop_map(|(a, b, c)| Kind::Cancel(a, b, c)),
        any::<u16>().prop_map(Kind::Port),
        any::<u32>().prop_map(Kind::Suggest),
        Just(Kind::HaveAll),
        Just(Kind::HaveNone),
        t().prop_map(|(a, b, c)| Kind::Reject(a, b, c)),
        any::<u32>().prop_map(Kind::AllowedFast),
        (any::<u8>(), vec(any::<u8>(), 0..64)).prop_map(|(i, p)| Kind::Extended(i, p)),
    ]
}

fn message<'a>(k: &'a Kind, bits: &'a [u8]) -> Message<'a> {
    match *k {
        Kind::KeepAlive => Message::KeepAlive,
        Kind::Choke => Message::Choke,
        Kind::Unchoke => Message::Unchoke,
        Kind::Interested => Message::Interested,
        Kind::NotInterested => Message::NotInterested,
        Kind::Have(i) => Message::Have(i),
        Kind::Bitfield => Message::Bitfield(bits),
        Kind::Request(index, begin, len) => Message::Request { index, begin, len },
        Kind::Piece(index, begin, len) => Message::Piece { index, begin, len },
        Kind::Cancel(index, begin, len) => Message::Cancel { index, begin, len },
        Kind::Port(p) => Message::Port(p),
        Kind::Suggest(i) => Message::Suggest(i),
        Kind::HaveAll => Message::HaveAll,
        Kind::HaveNone => Message::HaveNone,
        Kind::Reject(index, begin, len) => Message::Reject { index, begin, len },
        Kind::AllowedFast(i) => Message::AllowedFast(i),
        Kind::Extended(ext_id, ref payload) => Message::Extended { ext_id, payload },
    }
}

proptest! {
    /// Every message kind: encode, then decode from one slice and from two slices split at
    /// every byte, with more messages behind it.
    #[test]
    fn wire_message_round_trip(k in kind(), (pieces, bits) in bitfield(), tail in kind()) {
        let limits = Limits { pieces, max_block: MAX_BLOCK };
        let msg = message(&k, &bits);
        let mut buf = Vec::new();
        msg.encode(&mut buf);
        let frame = buf.len();
        // A piece message is only its header here; its payload is the caller's to move.
        if let Message::Piece { len, .. } = msg {
            prop_assert_eq!(frame, wire::PIECE_HEADER_LEN);
            buf.resize(frame + len as usize, 0xEE);
        }
        let mut after = Vec::new();
        message(&tail, &bits).encode(&mut after);
        buf.extend_from_slice(&after);
        prop_assert_eq!(wire::decode(&buf, &limits), Ok(Decoded::Message(msg, frame)));
        // Any strict prefix of the frame is incomplete, never an error or a message.
        for k in 0..frame {
            prop_assert_eq!(wire::decode(&buf[..k], &limits), Ok(Decoded::Incomplete));
        }
        let mut scratch = Vec::new();
        for k in 0..=buf.len().min(frame + 1) {
            let got = wire::decode_split(&buf[..k], &buf[k..], &mut scratch, &limits);
            prop_assert_eq!(got, Ok(Decoded::Message(msg, frame)), "split at {}", k);
        }
    }

    #[test]
    fn handshake_round_trip(reserved in any::<[u8; 8]>(), info_hash in any::<[u8; 20]>(), peer_id in any::<[u8; 20]>()) {
        let h = Handshake { reserved, info_hash, peer_id };
        let mut buf = Vec::new();
        h.encode(&mut buf);
        prop_assert_eq!(buf.len(), wire::HANDSHAKE_LEN);
        prop_assert_eq!(Handshake::decode(&buf), Ok(Decoded::Message(h, wire::HANDSHAKE_LEN)));
        prop_assert_eq!(Handshake::decode(&buf[..40]), Ok(Decoded::Incomplete));
    }

    #[test]
    fn extended_handshake_round_trip(
        m in btree_map("[a-z_]{1,12}", any::<u8>(), 0..6),
        v in proptest::option::of("[ -~]{0,20}"),
        p in proptest::option::of(any::<u16>()),
        reqq in proptest::option::of(any::<u32>()),
        corvid_max_request in proptest::option::of(any::<u32>()),
        corvid_auth_v in proptest::option::of(any::<u32>()),
        corvid_challenge in proptest::option::of(any::<[u8; 16]>()),
        corvid_proof in proptest::option::of(any::<[u8; 20]>()),
        corvid_plan in proptest::option::of(any::<u32>()),
    ) {
        // The decoder reads `m` in dictionary order, which the encoder writes sorted.
        let h = ExtendedHandshake {
            m: m.into_iter().collect(),
            v,
            p,
            reqq,
            corvid_max_request,
            corvid_auth_v,
            corvid_challenge,
            corvid_proof,
            corvid_v1: false,
            corvid_plan,
        };
        let mut buf = Vec::new();
        h.encode(&mut buf);
        let limits = Limits { pieces: 0, max_block: MAX_BLOCK };
        let Ok(Decoded::Message(Message::Extended { ext_id: 0, payload }, n)) = wire::decode(&buf, &limits) else {
            panic!("extension handshake does not decode as an extended message");
        };
        prop_assert_eq!(n, buf.len());
        prop_assert!(payload.len() as u32 <= MAX_EXTENDED_LEN);
        prop_assert_eq!(ExtendedHandshake::decode(payload), Ok(h));
    }
}

fn ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(IpAddr::from),
        any::<[u8; 16]>().prop_map(IpAddr::from),
    ]
}

fn announce_request() -> impl Strategy<Value = AnnounceRequest> {
    (
        (any::<[u8; 20]>(), any::<[u8; 20]>(), any::<u16>()),
        (any::<u64>(), any::<u64>(), any::<u64>()),
        prop_oneof![
            Just(Event::None),
            Just(Event::Started),
            Just(Event::Completed),
            Just(Event::Stopped)
        ],
        any::<bool>(),
        proptest::option::of(any::<u32>()),
        proptest::option::of(ip()),
        proptest::option::of(any::<[u8; 20]>()),
    )
        .prop_map(
            |(
                (info_hash, peer_id, port),
                (uploaded, downloaded, left),
                event,
                compact,
                numwant,
                ip,
                auth,
            )| {
                AnnounceRequest {
                    info_hash,
                    peer_id,
                    port,
                    uploaded,
                    downloaded,
                    left,
                    event,
                    compact,
                    numwant,
                    ip,
                    auth,
                }
            },
        )
}

proptest! {
    #[test]
    fn announce_query_round_trip(req in announce_request()) {
        let q = proto::announce_query(&req);
        prop_assert_eq!(proto::parse_announce_query(&q), Ok(req.clone()));
        prop_assert_eq!(
            proto::parse_target(&format!("/announce?{q}")),
            Ok(proto::TrackerRequest::Announce(req))
        );
    }

    #[test]
    fn scrape_query_round_trip(hashes in btree_set(any::<[u8; 20]>(), 1..=proto::MAX_SCRAPE_HASHES)) {
        let hashes: Vec<[u8; 20]> = hashes.into_iter().collect();
        let q = proto::scrape_query(&hashes);
        prop_assert_eq!(proto::parse_scrape_query(&q), Ok(hashes));
    }

    /// The dictionary form keeps everything: peer ids, IPv6 peers, their order.
    #[test]
    fn announce_response_round_trip(
        interval in any::<u32>(),
        min_interval in proptest::option::of(any::<u32>()),
        complete in proptest::option::of(0..=i64::MAX as u64),
        incomplete in proptest::option::of(0..=i64::MAX as u64),
        peers in vec((ip(), any::<u16>(), proptest::option::of(any::<[u8; 20]>())), 0..20),
        warning in proptest::option::of("[ -~]{0,30}"),
        tracker_id in proptest::option::of(vec(any::<u8>(), 0..10)),
    ) {
        let resp = AnnounceResponse {
            interval,
            min_interval,
            complete,
            incomplete,
            peers: peers
                .into_iter()
                .map(|(ip, port, peer_id)| PeerInfo { addr: SocketAddr::new(ip, port), peer_id })
                .collect(),
            warning,
            tracker_id,
        };
        let enc = proto::encode_announce_response(&resp, false);
        prop_assert_eq!(proto::parse_announce_response(&enc), Ok(Ok(resp)));
    }
}

#[test]
fn owned_value_strategy_reaches_nesting() {
    // The recursive strategy must actually produce dictionaries inside lists, or the
    // round trip above only ever tests leaves.
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let strat = owned_value();
    let nested = (0..200).any(|_| {
        let v = strat.new_tree(&mut runner).expect("tree").current();
        matches!(v, OwnedValue::List(ref l) if l.iter().any(|x| matches!(x, OwnedValue::Dict(_))))
    });
    assert!(nested);
}
