//! Private swarms: proof of a shared secret, for peers and for the tracker.
//!
//! A secret never crosses the wire. Peer handshake, version 2 (extension handshake keys
//! `corvid_auth_v` = 2, `corvid_challenge`, `corvid_proof`):
//! - both sides put a fresh random nonce (chosen by the caller; this module has no
//!   randomness) in their first BEP 10 extension handshake;
//! - the side that dialled (the initiator) proves first, as soon as it has the responder's
//!   nonce; the responder checks that proof before it sends its own, and closes without
//!   one if the check fails; the initiator then checks the responder's;
//! - a proof is `HMAC-SHA1(secret, "corvid-peer-auth-v2" || role || info_hash ||
//!   initiator_nonce || responder_nonce || initiator_id || responder_id)`, `role` being
//!   `I` or `R` for whoever made it ([`Transcript`]).
//!
//! Why this shape: version 1 proved `HMAC(info_hash || their_nonce || our_id)` to anyone
//! who asked, before the asker proved anything, so an outsider could relay one member's
//! challenge to another member and hand the answer back (issue 12). Now a proof covers
//! both nonces, both peer ids and the prover's role, so it verifies on no other
//! connection and in no other direction; and no node proves anything to a remote that has
//! not proved first or that it did not dial itself, so an outsider who connects to members
//! gets no proof to relay at all.
//!
//! What this does not stop: an attacker on the network path, or one a member dials (a
//! hostile `--peer` or tracker entry), can forward a whole connection between two
//! members: after the handshake the stream is neither encrypted nor authenticated, so it
//! can then read what flows (the release) and inject messages. Off-path attackers without
//! the secret, which connect to members, cannot get in.
//!
//! The tracker checks `HMAC-SHA1(secret, info_hash || peer_id)` per announce; that one is
//! replayable by whoever can read the traffic, but only to re-announce the same peer id.
//! Verification compares in constant time (`hmac`'s `verify_slice`).

use std::fmt;
use std::sync::Arc;

use hmac::{Hmac, Mac};
use sha1::Sha1;

/// Bytes of the per-connection nonce (`corvid_challenge`).
pub const NONCE_LEN: usize = 16;
/// Bytes of a proof (`corvid_proof`, tracker `auth`): one SHA-1 output.
pub const PROOF_LEN: usize = 20;
/// The peer handshake version this build speaks (`corvid_auth_v`).
pub const PEER_AUTH_VERSION: u32 = 2;
/// What every version 2 peer proof starts with, so it can never equal an announce proof
/// or a proof of another version.
const PEER_AUTH_TAG: &[u8] = b"corvid-peer-auth-v2";

/// Which end of a connection a side is: the one that dialled, or the one that accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Initiator,
    Responder,
}

impl Role {
    fn tag(self) -> u8 {
        match self {
            Role::Initiator => b'I',
            Role::Responder => b'R',
        }
    }
}

/// Everything of one connection a peer proof is bound to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transcript {
    pub info_hash: [u8; 20],
    pub initiator_nonce: [u8; NONCE_LEN],
    pub responder_nonce: [u8; NONCE_LEN],
    pub initiator_id: [u8; 20],
    pub responder_id: [u8; 20],
}

/// The shared secret of a private swarm. Cheap to clone; `Debug` never prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<[u8]>);

/// Why a secret was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("the secret is empty")]
    Empty,
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

type HmacSha1 = Hmac<Sha1>;

impl Secret {
    /// An empty secret would make every proof computable by anyone, so it is refused.
    pub fn new(bytes: &[u8]) -> Result<Self, SecretError> {
        if bytes.is_empty() {
            return Err(SecretError::Empty);
        }
        Ok(Secret(Arc::from(bytes)))
    }

    /// The secret's bytes, for handing it on to a process that must hold it (deploy writes
    /// it to a 0600 file on each host). Never for printing or logging.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    fn mac(&self, parts: &[&[u8]]) -> HmacSha1 {
        // HMAC takes keys of any length (long ones are hashed first), so this cannot fail.
        let mut mac = <HmacSha1 as Mac>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC accepts keys of every length"));
        for p in parts {
            mac.update(p);
        }
        mac
    }

    fn peer_mac(&self, by: Role, t: &Transcript) -> HmacSha1 {
        self.mac(&[
            PEER_AUTH_TAG,
            &[by.tag()],
            &t.info_hash,
            &t.initiator_nonce,
            &t.responder_nonce,
            &t.initiator_id,
            &t.responder_id,
        ])
    }

    /// The proof the side in role `by` sends on the connection `t` describes.
    pub fn peer_proof(&self, by: Role, t: &Transcript) -> [u8; PROOF_LEN] {
        self.peer_mac(by, t).finalize().into_bytes().into()
    }

    /// Whether `proof` is what the side in role `by` must send on connection `t`.
    pub fn verify_peer_proof(&self, by: Role, t: &Transcript, proof: &[u8]) -> bool {
        self.peer_mac(by, t).verify_slice(proof).is_ok()
    }

    /// The `auth` an announce (or scrape) for `info_hash` by `peer_id` carries.
    pub fn announce_proof(&self, info_hash: &[u8; 20], peer_id: &[u8; 20]) -> [u8; PROOF_LEN] {
        self.mac(&[info_hash, peer_id])
            .finalize()
            .into_bytes()
            .into()
    }

    /// Whether `proof` is the right announce `auth` for `info_hash` and `peer_id`.
    pub fn verify_announce(&self, info_hash: &[u8; 20], peer_id: &[u8; 20], proof: &[u8]) -> bool {
        self.mac(&[info_hash, peer_id]).verify_slice(proof).is_ok()
    }
}

/// What the remote's extension handshake said about private-swarm authentication.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AuthFields {
    /// `corvid_auth_v`.
    pub version: Option<u32>,
    /// `corvid_challenge`.
    pub challenge: Option<[u8; NONCE_LEN]>,
    /// `corvid_proof`.
    pub proof: Option<[u8; PROOF_LEN]>,
    /// The message carried version 1's keys (`corvid_nonce`, `corvid_auth`).
    pub legacy: bool,
}

/// What to do after an extension handshake went through [`PeerAuth::handle`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthStep {
    /// Send this proof (in an extension handshake of its own) before anything else.
    pub send_proof: Option<[u8; PROOF_LEN]>,
    /// The remote proved the secret: the connection may carry the torrent.
    pub authenticated: bool,
}

/// One connection's side of the version 2 peer handshake (see the module docs), sans-IO:
/// fed the remote's peer id and its extension handshakes, it says which proof to send and
/// when the remote has proved the secret. Every refusal is a reason for
/// `CloseReason::NotAuthorized`.
#[derive(Debug, Clone)]
pub struct PeerAuth {
    secret: Secret,
    role: Role,
    info_hash: [u8; 20],
    our_id: [u8; 20],
    our_nonce: [u8; NONCE_LEN],
    remote_id: Option<[u8; 20]>,
    their_nonce: Option<[u8; NONCE_LEN]>,
    proof_sent: bool,
    authenticated: bool,
}

impl PeerAuth {
    /// `our_nonce` must be fresh random bytes for this connection.
    pub fn new(
        secret: Secret,
        role: Role,
        info_hash: [u8; 20],
        our_id: [u8; 20],
        our_nonce: [u8; NONCE_LEN],
    ) -> Self {
        PeerAuth {
            secret,
            role,
            info_hash,
            our_id,
            our_nonce,
            remote_id: None,
            their_nonce: None,
            proof_sent: false,
            authenticated: false,
        }
    }

    pub fn role(&self) -> Role {
        self.role
    }

    /// Our challenge, for our first extension handshake.
    pub fn our_nonce(&self) -> [u8; NONCE_LEN] {
        self.our_nonce
    }

    pub fn is_authenticated(&self) -> bool {
        self.authenticated
    }

    /// The remote's peer id, from its BitTorrent handshake (before any extension
    /// handshake).
    pub fn handle_remote_id(&mut self, id: [u8; 20]) {
        self.remote_id = Some(id);
    }

    /// The connection as the two sides see it, once both nonces and ids are known.
    fn transcript(&self) -> Option<Transcript> {
        let (their_nonce, remote_id) = (self.their_nonce?, self.remote_id?);
        Some(match self.role {
            Role::Initiator => Transcript {
                info_hash: self.info_hash,
                initiator_nonce: self.our_nonce,
                responder_nonce: their_nonce,
                initiator_id: self.our_id,
                responder_id: remote_id,
            },
            Role::Responder => Transcript {
                info_hash: self.info_hash,
                initiator_nonce: their_nonce,
                responder_nonce: self.our_nonce,
                initiator_id: remote_id,
                responder_id: self.our_id,
            },
        })
    }

    /// The remote's next extension handshake (every one until it is authenticated).
    pub fn handle(&mut self, f: &AuthFields) -> Result<AuthStep, &'static str> {
        let mut step = AuthStep {
            send_proof: None,
            authenticated: self.authenticated,
        };
        if self.authenticated {
            return Ok(step);
        }
        match f.version {
            Some(PEER_AUTH_VERSION) => {}
            Some(_) => return Err("the remote speaks another private-swarm handshake version"),
            None if f.legacy => return Err(
                "the remote speaks the old private-swarm handshake (v1, corvid_nonce): upgrade it",
            ),
            None => {
                return Err(
                    "extension handshake carries no challenge or proof (not a private peer?)",
                )
            }
        }
        if self.remote_id.is_none() {
            return Err("extension handshake before the BitTorrent handshake");
        }
        if let Some(n) = f.challenge {
            match self.their_nonce {
                None if n == self.our_nonce => {
                    return Err("the remote echoed our own challenge");
                }
                None => self.their_nonce = Some(n),
                Some(old) if old == n => {}
                Some(_) => return Err("the remote changed its challenge"),
            }
        }
        // The initiator proves as soon as it knows the responder's nonce.
        if self.role == Role::Initiator && !self.proof_sent {
            if let Some(t) = self.transcript() {
                step.send_proof = Some(self.secret.peer_proof(Role::Initiator, &t));
                self.proof_sent = true;
            }
        }
        if let Some(proof) = f.proof {
            let Some(t) = self.transcript() else {
                return Err("proof sent before any challenge");
            };
            if self.role == Role::Initiator && !self.proof_sent {
                return Err("the responder proved before we did");
            }
            let theirs = match self.role {
                Role::Initiator => Role::Responder,
                Role::Responder => Role::Initiator,
            };
            if !self.secret.verify_peer_proof(theirs, &t, &proof) {
                return Err("wrong proof of the swarm secret");
            }
            // The responder proves only now, to a remote that proved first.
            if self.role == Role::Responder {
                step.send_proof = Some(self.secret.peer_proof(Role::Responder, &t));
                self.proof_sent = true;
            }
            self.authenticated = true;
            step.authenticated = true;
        }
        Ok(step)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_secret_is_refused() {
        assert_eq!(Secret::new(b""), Err(SecretError::Empty));
    }

    #[test]
    fn debug_does_not_print_the_secret() {
        let s = Secret::new(b"hunter2").unwrap();
        assert!(!format!("{s:?}").contains("hunter2"));
    }

    #[test]
    fn hmac_sha1_matches_rfc2202_case_2() {
        // RFC 2202 test case 2: key "Jefe", data "what do ya want for nothing?".
        let s = Secret::new(b"Jefe").unwrap();
        let mac = s.mac(&[b"what do ya want ", b"for nothing?"]).finalize();
        let hex: String = mac
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(hex, "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79");
    }

    fn transcript() -> Transcript {
        Transcript {
            info_hash: [1; 20],
            initiator_nonce: [2; 16],
            responder_nonce: [3; 16],
            initiator_id: [4; 20],
            responder_id: [5; 20],
        }
    }

    #[test]
    fn peer_proof_is_bound_to_every_part_of_the_transcript_and_the_role() {
        let s = Secret::new(b"s3cret").unwrap();
        let t = transcript();
        let p = s.peer_proof(Role::Initiator, &t);
        assert!(s.verify_peer_proof(Role::Initiator, &t, &p));
        assert!(
            !s.verify_peer_proof(Role::Responder, &t, &p),
            "other direction"
        );
        let swapped = Transcript {
            initiator_nonce: t.responder_nonce,
            responder_nonce: t.initiator_nonce,
            ..t
        };
        assert!(
            !s.verify_peer_proof(Role::Initiator, &swapped, &p),
            "swapped nonces"
        );
        let changes: [fn(&mut Transcript); 5] = [
            |t| t.info_hash[0] ^= 1,
            |t| t.initiator_nonce[15] ^= 1,
            |t| t.responder_nonce[0] ^= 1,
            |t| t.initiator_id[7] ^= 1,
            |t| t.responder_id[19] ^= 1,
        ];
        for (i, change) in changes.iter().enumerate() {
            let mut other = t;
            change(&mut other);
            assert!(
                !s.verify_peer_proof(Role::Initiator, &other, &p),
                "field {i}"
            );
        }
        assert!(
            !s.verify_peer_proof(Role::Initiator, &t, &p[..19]),
            "truncated"
        );
        let other = Secret::new(b"s3cret!").unwrap();
        assert!(!other.verify_peer_proof(Role::Initiator, &t, &p));
        // Not an announce proof either (a different message shape and the version tag).
        assert_ne!(p, s.announce_proof(&t.info_hash, &t.initiator_id));
    }

    fn fields(challenge: Option<[u8; 16]>, proof: Option<[u8; 20]>) -> AuthFields {
        AuthFields {
            version: Some(PEER_AUTH_VERSION),
            challenge,
            proof,
            legacy: false,
        }
    }

    /// An initiator and a responder with their ids known, as after the BT handshakes.
    fn pair(secret_i: &[u8], secret_r: &[u8]) -> (PeerAuth, PeerAuth) {
        let ih = [9; 20];
        let mut i = PeerAuth::new(
            Secret::new(secret_i).unwrap(),
            Role::Initiator,
            ih,
            [1; 20],
            [11; 16],
        );
        let mut r = PeerAuth::new(
            Secret::new(secret_r).unwrap(),
            Role::Responder,
            ih,
            [2; 20],
            [22; 16],
        );
        i.handle_remote_id([2; 20]);
        r.handle_remote_id([1; 20]);
        (i, r)
    }

    #[test]
    fn initiator_proves_first_and_responder_answers_only_a_good_proof() {
        let (mut i, mut r) = pair(b"k", b"k");
        // Challenges cross; only the initiator proves on learning the other's nonce.
        let si = i.handle(&fields(Some(r.our_nonce()), None)).unwrap();
        let sr = r.handle(&fields(Some(i.our_nonce()), None)).unwrap();
        assert_eq!(
            sr,
            AuthStep {
                send_proof: None,
                authenticated: false
            }
        );
        let pi = si.send_proof.expect("initiator proves");
        assert!(!si.authenticated);
        let sr = r.handle(&fields(None, Some(pi))).unwrap();
        assert!(sr.authenticated && r.is_authenticated());
        let pr = sr.send_proof.expect("responder proves after checking");
        let si = i.handle(&fields(None, Some(pr))).unwrap();
        assert_eq!(
            si,
            AuthStep {
                send_proof: None,
                authenticated: true
            }
        );
    }

    #[test]
    fn responder_given_a_bad_proof_closes_without_proving() {
        let (mut i, mut r) = pair(b"k", b"not k");
        let pi = i
            .handle(&fields(Some(r.our_nonce()), None))
            .unwrap()
            .send_proof
            .unwrap();
        r.handle(&fields(Some(i.our_nonce()), None)).unwrap();
        assert_eq!(
            r.handle(&fields(None, Some(pi))),
            Err("wrong proof of the swarm secret")
        );
        assert!(!r.is_authenticated());
    }

    #[test]
    fn a_proof_in_the_wrong_role_or_from_another_connection_is_refused() {
        let (mut i, mut r) = pair(b"k", b"k");
        i.handle(&fields(Some(r.our_nonce()), None)).unwrap();
        r.handle(&fields(Some(i.our_nonce()), None)).unwrap();
        let s = Secret::new(b"k").unwrap();
        let t = r.transcript().unwrap();
        // The responder's own proof reflected back at it (the other direction).
        let reflected = s.peer_proof(Role::Responder, &t);
        assert_eq!(
            r.clone().handle(&fields(None, Some(reflected))),
            Err("wrong proof of the swarm secret")
        );
        // The initiator's proof for the same peers with the nonces swapped.
        let swapped = Transcript {
            initiator_nonce: t.responder_nonce,
            responder_nonce: t.initiator_nonce,
            ..t
        };
        let p = s.peer_proof(Role::Initiator, &swapped);
        assert_eq!(
            r.clone().handle(&fields(None, Some(p))),
            Err("wrong proof of the swarm secret")
        );
        // A good initiator proof from an earlier connection (another responder nonce).
        let earlier = Transcript {
            responder_nonce: [99; 16],
            ..t
        };
        let p = s.peer_proof(Role::Initiator, &earlier);
        assert_eq!(
            r.handle(&fields(None, Some(p))),
            Err("wrong proof of the swarm secret")
        );
    }

    #[test]
    fn handshake_misuse_is_refused_with_a_reason() {
        let (mut i, mut r) = pair(b"k", b"k");
        let legacy = AuthFields {
            legacy: true,
            ..AuthFields::default()
        };
        assert!(r.clone().handle(&legacy).unwrap_err().contains("v1"));
        let v3 = AuthFields {
            version: Some(3),
            ..fields(Some([5; 16]), None)
        };
        assert!(r.clone().handle(&v3).is_err());
        assert!(r.clone().handle(&AuthFields::default()).is_err());
        // A proof before any challenge, and a responder that proves first.
        assert_eq!(
            r.clone().handle(&fields(None, Some([0; 20]))),
            Err("proof sent before any challenge")
        );
        let mut fresh = PeerAuth::new(
            Secret::new(b"k").unwrap(),
            Role::Initiator,
            [9; 20],
            [1; 20],
            [11; 16],
        );
        fresh.handle_remote_id([2; 20]);
        assert!(fresh.clone().handle(&fields(None, Some([0; 20]))).is_err());
        // Our own challenge echoed back, and a challenge that changes.
        assert!(r
            .clone()
            .handle(&fields(Some(r.our_nonce()), None))
            .is_err());
        r.handle(&fields(Some(i.our_nonce()), None)).unwrap();
        assert_eq!(
            r.handle(&fields(Some([77; 16]), None)),
            Err("the remote changed its challenge")
        );
        // No extension handshake counts before the BitTorrent handshake named the remote.
        let mut early = PeerAuth::new(
            Secret::new(b"k").unwrap(),
            Role::Responder,
            [9; 20],
            [2; 20],
            [22; 16],
        );
        assert!(early.handle(&fields(Some([5; 16]), None)).is_err());
        let _ = i.handle(&fields(Some([22; 16]), None)).unwrap();
    }

    #[test]
    fn announce_proof_checks() {
        let s = Secret::new(b"s3cret").unwrap();
        let p = s.announce_proof(&[1; 20], &[2; 20]);
        assert!(s.verify_announce(&[1; 20], &[2; 20], &p));
        assert!(!s.verify_announce(&[1; 20], &[3; 20], &p));
        assert!(!s.verify_announce(&[1; 20], &[2; 20], b""));
    }
}
