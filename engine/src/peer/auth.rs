//! Private swarms: proof of a shared secret, for peers and for the tracker.
//!
//! A secret never crosses the wire. Peers each send a fresh random nonce (chosen by the
//! caller; this module has no randomness) in their BEP 10 extension handshake, then prove
//! knowledge of the secret with `HMAC-SHA1(secret, info_hash || their_nonce ||
//! our_peer_id)`: the remote's nonce makes a captured proof useless on any other connection,
//! and our peer id binds it to the identity we claimed in the BitTorrent handshake. The
//! tracker checks `HMAC-SHA1(secret, info_hash || peer_id)` per announce; that one is
//! replayable by whoever can read the traffic, but only to re-announce the same peer id.
//! Verification compares in constant time (`hmac`'s `verify_slice`).

use std::fmt;
use std::sync::Arc;

use hmac::{Hmac, Mac};
use sha1::Sha1;

/// Bytes of the per-connection nonce (`corvid_nonce`).
pub const NONCE_LEN: usize = 16;
/// Bytes of a proof (`corvid_auth`, tracker `auth`): one SHA-1 output.
pub const PROOF_LEN: usize = 20;

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

    /// Our proof to a peer that sent `their_nonce`.
    pub fn peer_proof(
        &self,
        info_hash: &[u8; 20],
        their_nonce: &[u8; NONCE_LEN],
        our_peer_id: &[u8; 20],
    ) -> [u8; PROOF_LEN] {
        self.mac(&[info_hash, their_nonce, our_peer_id])
            .finalize()
            .into_bytes()
            .into()
    }

    /// Whether `proof` is the remote's proof for the nonce we sent it.
    pub fn verify_peer_proof(
        &self,
        info_hash: &[u8; 20],
        our_nonce: &[u8; NONCE_LEN],
        remote_peer_id: &[u8; 20],
        proof: &[u8],
    ) -> bool {
        self.mac(&[info_hash, our_nonce, remote_peer_id])
            .verify_slice(proof)
            .is_ok()
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

    #[test]
    fn peer_proof_depends_on_nonce_peer_and_secret() {
        let s = Secret::new(b"s3cret").unwrap();
        let ih = [1u8; 20];
        let (n1, n2) = ([2u8; 16], [3u8; 16]);
        let id = [4u8; 20];
        let p = s.peer_proof(&ih, &n1, &id);
        assert!(s.verify_peer_proof(&ih, &n1, &id, &p));
        assert!(
            !s.verify_peer_proof(&ih, &n2, &id, &p),
            "replayed on another nonce"
        );
        assert!(
            !s.verify_peer_proof(&ih, &n1, &[5u8; 20], &p),
            "other peer id"
        );
        assert!(!s.verify_peer_proof(&ih, &n1, &id, &p[..19]), "truncated");
        let other = Secret::new(b"s3cret!").unwrap();
        assert!(!other.verify_peer_proof(&ih, &n1, &id, &p));
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
