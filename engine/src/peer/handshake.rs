//! Handshakes: the BitTorrent one, our extension handshake, and the private-swarm proof.

use super::*;

impl PeerConn {
    pub(super) fn on_handshake(
        &mut self,
        swarm: &mut Swarm,
        h: Handshake,
    ) -> Result<(), CloseReason> {
        if h.info_hash != swarm.info_hash() {
            return Err(self.close(CloseReason::WrongInfoHash(h.info_hash)));
        }
        if h.peer_id == self.our_peer_id {
            return Err(self.close(CloseReason::SelfConnection));
        }
        self.remote_id = Some(h.peer_id);
        swarm.set_peer_id(self.key, h.peer_id);
        self.fast = h.supports_fast();
        self.extended = h.supports_extended();
        self.state = State::Open;
        // Planning needs rejects (fast extension) and the extension handshake to say so.
        self.plan_offered = self.cfg.seed_plan && self.fast && self.extended && swarm.is_complete();
        if let Some(auth) = self.auth.as_mut() {
            // Private: only our challenge goes out; what we have waits for the proof.
            if !self.extended {
                return Err(self.close(CloseReason::NotAuthorized(
                    "remote does not speak the extension protocol, so cannot prove the secret",
                )));
            }
            auth.handle_remote_id(h.peer_id);
            let nonce = auth.our_nonce();
            if self.handshake_out.is_none() && auth.role() == Role::Responder {
                self.handshake_out = Some(Handshake::ours(swarm.info_hash(), self.our_peer_id));
            }
            let mut ext = self.our_ext_handshake();
            ext.corvid_challenge = Some(nonce);
            ext.encode(&mut self.queued);
        } else {
            self.send_have(swarm);
            if self.extended {
                self.our_ext_handshake().encode(&mut self.queued);
            }
        }
        if self.auth.is_none() {
            self.handshake_done();
        }
        Ok(())
    }

    /// Tells the runtime who the remote is: at its BitTorrent handshake in a public swarm,
    /// only once it proved the secret in a private one (so a stranger claiming a member's
    /// peer id cannot take that id's place in the node's table of connected peers).
    pub(super) fn handshake_done(&mut self) {
        if let Some(peer_id) = self.remote_id {
            self.events.push_back(Event::HandshakeDone {
                peer_id,
                fast: self.fast,
                extended: self.extended,
            });
        }
    }

    /// Our view of what we have, as the first message after the handshakes: a snapshot
    /// plus every later verdict from the log.
    pub(super) fn send_have(&mut self, swarm: &Swarm) {
        let have = swarm.have();
        if self.fast && have.count() == 0 {
            self.queue(Message::HaveNone);
        } else if self.fast && have.is_full() {
            self.queue(Message::HaveAll);
        } else if have.count() > 0 {
            Message::Bitfield(have.as_bytes()).encode(&mut self.queued);
        }
        self.have_cursor = swarm.have_log().len();
    }

    pub(super) fn our_ext_handshake(&self) -> ExtendedHandshake {
        ExtendedHandshake {
            m: if self.cfg.seed_plan {
                vec![(HOLDER_EXT.to_owned(), HOLDER_EXT_ID)]
            } else {
                Vec::new()
            },
            v: Some(self.cfg.client.clone()),
            p: self.cfg.listen_port,
            reqq: Some(self.cfg.our_reqq),
            corvid_max_request: Some(self.cfg.max_request_corvid),
            corvid_auth_v: self.auth.as_ref().map(|_| PEER_AUTH_VERSION),
            corvid_challenge: None,
            corvid_proof: None,
            corvid_v1: false,
            corvid_plan: self
                .cfg
                .seed_plan
                .then_some(if self.plan_offered && !self.plan_open {
                    2
                } else {
                    1
                }),
        }
    }

    /// Private swarms: one step of the peer handshake ([`PeerAuth`]). A proof we owe goes
    /// out in an extension handshake of its own, queued before our bitfield, so the remote
    /// sees it before anything else of ours.
    pub(super) fn on_private_ext_handshake(
        &mut self,
        swarm: &mut Swarm,
        h: &ExtendedHandshake,
    ) -> Result<(), CloseReason> {
        let Some(auth) = self.auth.as_mut() else {
            return Ok(());
        };
        if self.authenticated {
            return Ok(());
        }
        let step = auth
            .handle(&AuthFields {
                version: h.corvid_auth_v,
                challenge: h.corvid_challenge,
                proof: h.corvid_proof,
                legacy: h.corvid_v1,
            })
            .map_err(CloseReason::NotAuthorized)?;
        if let Some(proof) = step.send_proof {
            let mut ext = self.our_ext_handshake();
            ext.corvid_proof = Some(proof);
            ext.encode(&mut self.queued);
        }
        if step.authenticated {
            self.authenticated = true;
            self.send_have(swarm);
            self.handshake_done();
        }
        Ok(())
    }
}
