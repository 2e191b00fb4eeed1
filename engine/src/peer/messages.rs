//! Messages from the remote, by family.

use super::*;

impl PeerConn {
    pub(super) fn remote_gained(&mut self, swarm: &mut Swarm, piece: PieceIndex) {
        if self.remote_has.set(piece.get()) {
            swarm.peer_gained(self.key, piece);
            swarm.note_announcer(piece, self.key);
            if !swarm.have().get(piece.get()) {
                self.useful += 1;
            }
        }
    }

    /// The remote is behind our rack switch (the node's topology says so): count what it
    /// has, and will announce, in the swarm's rack-local availability, so cross-rack
    /// connections leave those pieces to it (see `swarm/pick.rs`). Pieces of a bitfield
    /// already handled move over too. Not for a seeder's connection: the seeder serves
    /// what its plan hands out, not what is asked.
    pub fn mark_local(&mut self, swarm: &mut Swarm) {
        swarm.mark_peer_local(self.key, &self.remote_has);
    }

    pub(super) fn update_interest(&mut self, swarm: &Swarm) {
        if self.useful == 0 && self.am_interested {
            // The running count can undercount (a piece we verified after the handshake
            // but before the remote's bitfield is subtracted without having been added),
            // so before losing interest, count exactly: remote has and we do not.
            self.useful = self
                .remote_has
                .as_bytes()
                .iter()
                .zip(swarm.have().as_bytes())
                .map(|(r, h)| (r & !h).count_ones())
                .sum();
        }
        let want = self.useful > 0 && !swarm.is_complete();
        if want != self.am_interested {
            self.am_interested = want;
            self.queue(if want {
                Message::Interested
            } else {
                Message::NotInterested
            });
        }
    }

    /// One decoded message: checks the order rules, then hands it to its family.
    pub(super) fn on_message(
        &mut self,
        swarm: &mut Swarm,
        m: Message<'_>,
    ) -> Result<(), CloseReason> {
        if !self.authenticated && !matches!(m, Message::KeepAlive | Message::Extended { .. }) {
            return Err(CloseReason::NotAuthorized(
                "message other than an extension handshake before proving the secret",
            ));
        }
        // A bitfield (or have all/none) must precede any have, so availability is never
        // counted twice; other messages may come first (libtorrent sends its extension
        // handshake before its bitfield, BEP 10 allows it; keep-alives, choke state and
        // allowed-fast are harmless).
        let first = !self.seen_first;
        if matches!(
            m,
            Message::Have(_)
                | Message::Bitfield(_)
                | Message::HaveAll
                | Message::HaveNone
                | Message::Piece { .. }
                | Message::Request { .. }
        ) {
            self.seen_first = true;
        }
        match m {
            Message::KeepAlive | Message::Port(_) => Ok(()),
            Message::Choke | Message::Unchoke | Message::Interested | Message::NotInterested => {
                self.on_choke_message(swarm, m);
                Ok(())
            }
            Message::Have(_) | Message::Bitfield(_) | Message::HaveAll | Message::HaveNone => {
                self.on_have_message(swarm, m, first)
            }
            Message::Request { index, begin, len } => self.on_request(swarm, index, begin, len),
            Message::Cancel { index, begin, len } => {
                self.their_requests.cancel(index, begin, len);
                Ok(())
            }
            Message::Piece { index, begin, len } => self.on_piece(swarm, index, begin, len),
            Message::Reject { index, begin, len } => self.on_reject(swarm, index, begin, len),
            Message::Suggest(i) => {
                self.need_fast("suggest piece")?;
                // A planning seeder hands us this piece; other suggestions are advice we
                // do not need (rarest-first already spreads pieces).
                if self.follow != Follow::Free && self.allowed.set(i) {
                    self.mask_gen = self.mask_gen.wrapping_add(1);
                }
                Ok(())
            }
            Message::AllowedFast(_) => self.need_fast("allowed fast"),
            Message::Extended { ext_id, payload } => {
                if !self.extended {
                    return Err(CloseReason::ExtendedNotNegotiated);
                }
                if ext_id == 0 {
                    let h = ExtendedHandshake::decode(payload)?;
                    self.on_ext_handshake(swarm, &h)?;
                } else if ext_id == HOLDER_EXT_ID && self.follow != Follow::Free {
                    self.on_holder(swarm, payload);
                }
                // No other extension is advertised, so other ids are ignored.
                Ok(())
            }
        }
    }

    fn need_fast(&self, what: &'static str) -> Result<(), CloseReason> {
        if self.fast {
            Ok(())
        } else {
            Err(CloseReason::FastNotNegotiated(what))
        }
    }

    /// Choke and interest, either way.
    fn on_choke_message(&mut self, swarm: &mut Swarm, m: Message<'_>) {
        match m {
            Message::Choke => {
                self.peer_choking = true;
                if !self.fast {
                    // BEP 3: a choke discards every pending request.
                    for (key, o) in self.outstanding.drain() {
                        release_mask(swarm, key, o.live);
                    }
                    self.inflight = 0;
                }
            }
            Message::Unchoke => self.peer_choking = false,
            Message::Interested => {
                self.peer_interested = true;
                if self.am_choking
                    && self.may_unchoke(self.last_recv)
                    && swarm.try_unchoke(self.key, self.last_recv)
                {
                    self.am_choking = false;
                    self.last_upload = self.last_recv;
                    self.queue(Message::Unchoke);
                }
            }
            Message::NotInterested => {
                self.peer_interested = false;
                self.choke_remote(swarm);
            }
            _ => unreachable!("on_message routes only choke and interest here"),
        }
    }

    /// What the remote has: have, bitfield, have all, have none.
    fn on_have_message(
        &mut self,
        swarm: &mut Swarm,
        m: Message<'_>,
        first: bool,
    ) -> Result<(), CloseReason> {
        match m {
            Message::Have(i) => {
                let p = self
                    .lengths
                    .piece(i)
                    .ok_or(CloseReason::HaveOutOfRange(i))?;
                self.remote_gained(swarm, p);
            }
            Message::Bitfield(bytes) => {
                // BEP 3 wants it first, but aria2 sends have-none and later a bitfield
                // in place of haves: a late bitfield only adds pieces.
                let bf = Bitfield::from_bytes(bytes, self.lengths.piece_count());
                for p in self.lengths.pieces() {
                    if bf.get(p.get()) {
                        self.remote_gained(swarm, p);
                    }
                }
            }
            Message::HaveAll => {
                self.need_fast("have all")?;
                if !first {
                    return Err(CloseReason::BitfieldNotFirst("have all"));
                }
                for p in self.lengths.pieces() {
                    self.remote_gained(swarm, p);
                }
            }
            Message::HaveNone => {
                self.need_fast("have none")?;
                if !first {
                    return Err(CloseReason::BitfieldNotFirst("have none"));
                }
                return Ok(());
            }
            _ => unreachable!("on_message routes only have messages here"),
        }
        self.update_interest(swarm);
        Ok(())
    }

    /// The remote asks us for a block: queue it, or refuse (choked, queue full, or the
    /// seeding plan sends it elsewhere).
    fn on_request(
        &mut self,
        swarm: &mut Swarm,
        index: u32,
        begin: u32,
        len: u32,
    ) -> Result<(), CloseReason> {
        let max = if self.remote_corvid {
            self.cfg.max_request_corvid
        } else {
            self.cfg.max_request
        };
        let block = self
            .lengths
            .checked_block(index, begin, len, max)
            .ok_or(CloseReason::RequestOutsideTorrent { index, begin, len })?;
        if !swarm.have().get(index) {
            if self.fast {
                self.queue(Message::Reject { index, begin, len });
                return Ok(());
            }
            return Err(CloseReason::RequestForMissingPiece(index));
        }
        if self.am_choking || self.their_requests.len() >= self.cfg.our_reqq as usize {
            // Choked (requests in flight when we choked) or over the queue we
            // advertised: refuse, silently without the fast extension (BEP 3).
            if self.fast {
                self.queue(Message::Reject { index, begin, len });
            }
            return Ok(());
        }
        if self.planning(swarm)
            && !swarm.plan_admit(self.key, block)
            && !self.asked_before(block)
            && swarm.holder_id(block.piece).is_some()
        {
            // Another peer holds (or is getting) this piece: ask it there. A follower
            // asks again only when none of its peers has the piece and it cannot wait
            // for the holder we name, and is then served. A piece with nobody live to
            // name (its holder and its last announcer left, as a peer does once
            // complete) is served at once: a refusal naming nobody would leave the asker
            // only its fallback wait.
            self.refuse_planned(swarm, block);
            return Ok(());
        }
        // Asking is using the slot (`last_recv` is this message).
        self.last_upload = self.last_recv;
        self.their_requests.push_back(block);
        Ok(())
    }

    /// A block's header: decide every covered block's verdict now, so the payload can be
    /// received in as few runs as possible (one, when all of it is ours to write).
    fn on_piece(
        &mut self,
        swarm: &mut Swarm,
        index: u32,
        begin: u32,
        len: u32,
    ) -> Result<(), CloseReason> {
        let unrequested = CloseReason::UnrequestedPiece { index, begin, len };
        let piece = self.lengths.piece(index).ok_or(unrequested.clone())?;
        let key = (piece, begin, len);
        let live = self.take_copy(key).ok_or(unrequested)?;
        let mut write = 0u64;
        for i in 0..blocks_covered(key) {
            if (live >> i) & 1 == 1 {
                let b = covered_block(key, i);
                self.inflight = self.inflight.saturating_sub(u64::from(b.len));
                if swarm.begin_block(self.key, b) == Accept::Write {
                    write |= 1 << i;
                }
            }
        }
        self.start_run(Incoming {
            piece,
            begin,
            len,
            write,
            done: 0,
            run: 0,
        });
        Ok(())
    }

    /// The remote will not serve a request of ours: its blocks go back to the picker; a
    /// planning seeder's refusal means "fetch it from the peers".
    fn on_reject(
        &mut self,
        swarm: &mut Swarm,
        index: u32,
        begin: u32,
        len: u32,
    ) -> Result<(), CloseReason> {
        self.need_fast("reject request")?;
        if self.follow != Follow::Free && self.allowed.clear(index) {
            self.mask_gen = self.mask_gen.wrapping_add(1);
            if let Some(piece) = self.lengths.piece(index) {
                self.refused.push(plan::Refused {
                    piece,
                    at: self.last_recv,
                    holder: None,
                });
            }
        }
        if let Some(piece) = self.lengths.piece(index) {
            let key = (piece, begin, len);
            if let Some(live) = self.take_copy(key) {
                let bytes = release_mask(swarm, key, live);
                self.inflight = self.inflight.saturating_sub(bytes);
            }
        }
        Ok(())
    }

    /// The remote's extension handshake: its client, request size and queue, its part in
    /// the seeding plan, and (private swarms) the next step of the proof.
    fn on_ext_handshake(
        &mut self,
        swarm: &mut Swarm,
        h: &ExtendedHandshake,
    ) -> Result<(), CloseReason> {
        self.remote_corvid = h.v.as_deref().is_some_and(|v| v.starts_with("corvid"));
        self.remote_client = h.v.clone();
        self.request_size = if self.remote_corvid {
            let serves = h.corvid_max_request.unwrap_or(CORVID_MAX_REQUEST);
            let size = self
                .cfg
                .request_size_corvid
                .min(serves)
                .min(MAX_REQUEST_BLOCKS * BLOCK_SIZE);
            (size / BLOCK_SIZE * BLOCK_SIZE).max(BLOCK_SIZE)
        } else {
            BLOCK_SIZE
        };
        // Never shrinks: answers to bigger requests sent before a second
        // extension handshake must still decode.
        self.limits.max_block = self.limits.max_block.max(self.request_size);
        if let Some(q) = h.reqq {
            self.remote_reqq = q.max(1);
        }
        if let Some(&(_, id)) = h.m.iter().find(|(name, _)| name == HOLDER_EXT) {
            // BEP 10: id 0 turns the extension off.
            self.remote_holder_ext = (id != 0).then_some(id);
        }
        if self.cfg.seed_plan {
            self.remote_follows = h.corvid_plan.is_some_and(|p| p >= 1);
            let next = match (self.follow, h.corvid_plan) {
                (Follow::Free, Some(2)) if self.fast => Follow::Assigned,
                (Follow::Assigned, Some(1)) => {
                    // Its plan is over: anything it has not refused.
                    self.allowed = Bitfield::full(self.lengths.piece_count());
                    Follow::Open
                }
                (f, _) => f,
            };
            if next != self.follow {
                swarm.set_peer_origin(self.key, next == Follow::Assigned);
                swarm.set_peer_seed_open(self.key, next == Follow::Open);
                self.follow = next;
                self.mask_gen = self.mask_gen.wrapping_add(1);
            }
        }
        self.on_private_ext_handshake(swarm, h)
    }

    pub(super) fn choke_remote(&mut self, swarm: &mut Swarm) {
        if !self.am_choking {
            self.am_choking = true;
            self.queue(Message::Choke);
            swarm.release_unchoke(self.key);
            while let Some(b) = self.their_requests.pop_front() {
                if self.fast {
                    self.queue(Message::Reject {
                        index: b.piece.get(),
                        begin: b.offset,
                        len: b.len,
                    });
                }
            }
        }
    }

    /// Answers one copy of request `key`: returns the blocks still ours (possibly none)
    /// and forgets the request once every copy is answered; `None` if never requested.
    pub(super) fn take_copy(&mut self, key: ReqKey) -> Option<u64> {
        let o = self.outstanding.get_mut(&key)?;
        let live = std::mem::take(&mut o.live);
        o.copies = o.copies.saturating_sub(1);
        if o.copies == 0 {
            self.outstanding.remove(&key);
        }
        Some(live)
    }
}
