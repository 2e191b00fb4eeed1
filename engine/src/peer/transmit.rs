//! What goes out, in order: our handshake, haves, end-game cancels, the plan's suggests,
//! requests up to the pipeline target, then one block to upload.

use super::*;

impl PeerConn {
    /// Appends control messages to `out`; returns a block to upload, if one is due. Send
    /// `out`, then the block, then call again until it returns `None` with `out` unchanged.
    pub fn poll_transmit(
        &mut self,
        swarm: &mut Swarm,
        now: Instant,
        out: &mut Vec<u8>,
    ) -> Option<Transmit> {
        if self.state == State::Closed {
            return None;
        }
        if swarm.is_banned(self.key) {
            self.close(CloseReason::Banned);
            return None;
        }
        swarm.observe_time(now);
        let start = out.len();
        if let Some(h) = self.handshake_out.take() {
            h.encode(out);
        }
        if self.state == State::Handshaking {
            self.note_sent(out.len() > start, now);
            return None;
        }
        if !self.authenticated {
            // Private swarm, remote not yet proven: only our extension handshakes go out.
            out.extend_from_slice(&self.queued);
            self.queued.clear();
            self.note_sent(out.len() > start, now);
            return None;
        }
        self.flush_haves(swarm);
        self.update_interest(swarm);
        self.plan_top_up(swarm);
        self.flush_cancels(swarm, now);
        self.fill_requests(swarm, now);
        out.extend_from_slice(&self.queued);
        self.queued.clear();
        self.queued.shrink_to(KEEP_BUFFER);
        if out.len() == start
            && now.saturating_duration_since(self.last_sent) >= self.cfg.keepalive_interval
        {
            Message::KeepAlive.encode(out);
        }
        self.note_sent(out.len() > start, now);
        self.upload(swarm, now)
    }

    /// Haves for pieces verified since our bitfield (each connection follows the swarm's
    /// have log with its own cursor).
    fn flush_haves(&mut self, swarm: &Swarm) {
        while let Some(&p) = swarm.have_log().get(self.have_cursor) {
            self.have_cursor += 1;
            Message::Have(p.get()).encode(&mut self.queued);
            if self.remote_has.get(p.get()) {
                self.useful = self.useful.saturating_sub(1);
            }
        }
    }

    /// End-game: cancel what arrived elsewhere. A block inside a bigger request is given
    /// back on its own (its payload will be dropped); the request itself is cancelled on
    /// the wire once none of its blocks is wanted. This scan over the outstanding requests
    /// runs only in end-game, when the log grows.
    fn flush_cancels(&mut self, swarm: &mut Swarm, now: Instant) {
        while let Some(&b) = swarm.cancel_log().get(self.cancel_cursor) {
            self.cancel_cursor += 1;
            let hit = self.outstanding.iter_mut().find_map(|(&key, o)| {
                covering_bit(key, b)
                    .filter(|bit| o.live & bit != 0)
                    .map(|bit| (key, o, bit))
            });
            if let Some((key, o, bit)) = hit {
                o.live &= !bit;
                self.inflight = self.inflight.saturating_sub(u64::from(b.len));
                swarm.release(b);
                if o.live == 0 {
                    o.sent = now;
                    Message::Cancel {
                        index: key.0.get(),
                        begin: key.1,
                        len: key.2,
                    }
                    .encode(&mut self.queued);
                }
            }
        }
    }

    fn target_inflight(&self) -> u64 {
        if self.snubbed {
            return u64::from(BLOCK_SIZE);
        }
        match self.rate {
            None => self.cfg.initial_inflight,
            Some(r) => ((r * self.cfg.pipeline_time.as_secs_f64()) as u64)
                .clamp(self.cfg.min_inflight, self.cfg.max_inflight),
        }
    }

    /// Requests, up to the pipeline target and the remote's queue.
    fn fill_requests(&mut self, swarm: &mut Swarm, now: Instant) {
        if !self.am_interested || self.peer_choking {
            return;
        }
        let target = self.target_inflight();
        // Blocks one request may cover: end-game duplicates and a snubbed peer's single
        // block stay at 16 KiB.
        let per_req = if self.snubbed || swarm.in_endgame() {
            1
        } else {
            (self.request_size / BLOCK_SIZE).clamp(1, MAX_REQUEST_BLOCKS) as usize
        };
        let by_bytes = target
            .saturating_sub(self.inflight)
            .div_ceil(u64::from(BLOCK_SIZE)) as usize;
        let reqs_left = (self.remote_reqq as usize).saturating_sub(self.outstanding.len());
        let want = by_bytes.min(reqs_left.saturating_mul(per_req));
        // Refill in batches (a sixteenth of the pipeline) so the swarm lock is taken once
        // per many blocks, not once per block; an empty pipeline refills at once.
        let cap = (target.div_ceil(u64::from(BLOCK_SIZE)) as usize)
            .min((self.remote_reqq as usize).saturating_mul(per_req));
        let batch = (cap / 16).max(1);
        let live = self.inflight > 0;
        self.reask_refused(swarm, now);
        let starved_key = (
            swarm.epoch(),
            self.remote_has.count(),
            swarm.in_endgame(),
            self.mask_gen,
        );
        if want == 0 || (want < batch && live) || self.starved == Some(starved_key) {
            return;
        }
        self.pick(swarm, want);
        // Came up short: nothing more to pick until the swarm or the remote changes.
        self.starved = (self.picked.len() < want).then_some(starved_key);
        self.send_requests(swarm, now, per_req, reqs_left);
    }

    /// Fills `picked` with up to `want` blocks the remote may serve us.
    fn pick(&mut self, swarm: &mut Swarm, want: usize) {
        self.picked.clear();
        self.pick_mask();
        let mask = if self.follow == Follow::Free {
            &self.remote_has
        } else {
            &self.mask
        };
        let outstanding = &self.outstanding;
        let picked = &mut self.picked;
        // `already` is asked only in end-game, so its scan stays off the fast path.
        swarm.pick_blocks(
            self.key,
            mask,
            want,
            |b| {
                outstanding
                    .iter()
                    .any(|(&k, o)| covering_bit(k, b).is_some_and(|bit| o.live & bit != 0))
            },
            |b| picked.push(b),
        );
    }

    /// Runs of picked blocks that follow each other in one piece become one request of up
    /// to `per_req` blocks (the picker hands out a piece's free blocks in order, so runs
    /// are the common case); at most `reqs_left` requests, the rest goes back.
    fn send_requests(&mut self, swarm: &mut Swarm, now: Instant, per_req: usize, reqs_left: usize) {
        let mut sent = 0;
        let mut i = 0;
        while i < self.picked.len() {
            let first = self.picked[i];
            let mut len = first.len;
            let mut j = i + 1;
            while j < self.picked.len()
                && j - i < per_req
                && self.picked[j].piece == first.piece
                && self.picked[j].offset == first.offset + len
            {
                len += self.picked[j].len;
                j += 1;
            }
            if sent == reqs_left {
                // Scattered picks needed more requests than the remote queues.
                for &b in &self.picked[i..] {
                    swarm.release(b);
                }
                break;
            }
            sent += 1;
            let key = (first.piece, first.offset, len);
            let o = self.outstanding.entry(key).or_insert(Outstanding {
                live: 0,
                copies: 0,
                sent: now,
            });
            // The swarm never hands us a block we hold live, so the masks are disjoint and
            // no byte is counted in flight twice.
            debug_assert_eq!(o.live, 0);
            o.live |= full_mask((j - i) as u32);
            o.copies = o.copies.saturating_add(1);
            o.sent = now;
            self.inflight += u64::from(len);
            self.stats.requests += 1;
            Message::Request {
                index: first.piece.get(),
                begin: first.offset,
                len,
            }
            .encode(&mut self.queued);
            i = j;
        }
    }

    /// One block to upload, if the remote is unchoked and asked for one.
    fn upload(&mut self, swarm: &mut Swarm, now: Instant) -> Option<Transmit> {
        if self.am_choking {
            return None;
        }
        let block = self.next_upload(swarm)?;
        self.stats.uploaded += u64::from(block.len);
        swarm.record_upload(self.key, block);
        self.last_sent = now;
        self.last_upload = now;
        Some(Transmit::Block {
            header: wire::piece_header(block.piece.get(), block.offset, block.len),
            block,
        })
    }

    /// The next queued request to serve. A seeder's uplink is the swarm's scarcest
    /// resource, so when we have everything we serve first, among the oldest
    /// [`SEEDER_LOOKAHEAD`] requests, the piece that is rarest counting copies we already
    /// sent: the first copy of each piece goes out early and peers pass it on. Leechers
    /// serve in order (the requester asked in its own preferred order).
    fn next_upload(&mut self, swarm: &Swarm) -> Option<BlockRef> {
        if !swarm.is_complete() || self.their_requests.len() < 2 {
            return self.their_requests.pop_front();
        }
        if self.planning(swarm) {
            // A remote on the plan asks for its handed pieces in order: whole pieces
            // reach it (and its peers) soonest when served in that order; except that a
            // piece other followers were refused (they wait for this remote to pass it
            // on) goes first.
            return self
                .their_requests
                .take_min_by(SEEDER_LOOKAHEAD, |b| !swarm.is_awaited(b.piece));
        }
        self.their_requests
            .take_min_by(SEEDER_LOOKAHEAD, |b| swarm.spread(b.piece))
    }

    pub(super) fn note_sent(&mut self, sent: bool, now: Instant) {
        if sent {
            self.last_sent = now;
        }
    }
}
