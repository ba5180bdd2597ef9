//! The simulated network, at the level a node sees through QUIC: one reliable, ordered stream
//! per clinic↔hub connection, with latency, loss (a retransmission timeout), duplication,
//! reordering (as delay), a bandwidth cap, partitions and reconnects.

use super::*;

impl Sim {
    /// Moves every frame the nodes want to send onto the links; handles closes and logs.
    pub(super) fn pump(&mut self) {
        for i in 0..self.clinics.len() {
            let Some(link) = &self.cstate[i].link else { continue };
            let conn = link.conn;
            loop {
                let now_local = self.clinics[i].clock.local(self.now);
                let Some(frame) =
                    self.clinics[i].node.as_mut().and_then(|n| n.poll_transmit(now_local, conn))
                else {
                    break;
                };
                self.send(i, conn, true, frame);
            }
            loop {
                let now_local = self.hub.clock.local(self.now);
                let Some(frame) =
                    self.hub.node.as_mut().and_then(|n| n.poll_transmit(now_local, conn))
                else {
                    break;
                };
                self.send(i, conn, false, frame);
            }
        }
        let mut closes = Vec::new();
        for who in std::iter::once(Who::Hub).chain((0..self.clinics.len()).map(Who::Clinic)) {
            let site = self.site(who);
            let Some(node) = site.node.as_mut() else { continue };
            node.take_dirty();
            while let Some(out) = node.poll_event() {
                match out {
                    Output::Close { conn, reason, .. } => closes.push((who, conn, reason)),
                    Output::Log { message, .. } if message.starts_with("refused") => {
                        closes.push((who, u64::MAX, message));
                    }
                    Output::Log { .. } => {}
                    // The simulated hub keeps its own ledger (it follows no shared stream),
                    // so it never publishes.
                    Output::Publish { .. } => {}
                }
            }
        }
        for (who, conn, reason) in closes {
            if conn == u64::MAX {
                self.stats.refusals += 1;
                self.note(format!("{who:?} {reason}"));
                continue;
            }
            self.note(format!("{who:?} closes connection {conn}: {reason}"));
            if let Some(i) =
                self.cstate.iter().position(|c| c.link.as_ref().is_some_and(|l| l.conn == conn))
            {
                let at = self.now + self.latency();
                self.schedule(at, Ev::LinkDown { clinic: i, conn });
            }
        }
    }

    pub(super) fn latency(&mut self) -> u64 {
        let f = &self.cfg.faults;
        let (min, mean) = (f.latency_min_ms, f.latency_mean_ms as f64);
        min + exp(&mut self.net, mean)
    }

    pub(super) fn send(&mut self, clinic: usize, conn: u64, to_hub: bool, frame: Vec<u8>) {
        self.stats.frames += 1;
        self.stats.bytes += frame.len() as u64;
        let mut delay = self.latency();
        let f = self.cfg.faults.clone();
        if self.net.chance(f.loss) {
            self.stats.lost += 1;
            delay += 3 * (f.latency_min_ms + f.latency_mean_ms) + 200;
        }
        if self.net.chance(f.duplicate) {
            self.stats.duplicated += 1;
        }
        if self.net.chance(f.reorder) {
            self.stats.reordered += 1;
            delay += f.latency_mean_ms;
        }
        let serialise = (frame.len() as u64 * 1000).checked_div(f.bandwidth).unwrap_or(0);
        let now = self.now;
        let st = &mut self.cstate[clinic];
        let cut = if to_hub { st.cut_up } else { st.cut_down };
        let Some(link) = st.link.as_mut() else { return };
        let (free, last) = if to_hub {
            (&mut link.up_free, &mut link.up_last)
        } else {
            (&mut link.down_free, &mut link.down_last)
        };
        let start = (*free).max(now);
        *free = start + serialise;
        let mut arrival = (start + serialise + delay).max(*last);
        if let Some(until) = cut {
            // A cut this direction: retransmissions get through only if it heals before the
            // connection times out; otherwise the frame is lost with the connection.
            if until <= now + DETECT_MS {
                arrival = arrival.max(until + delay);
            } else {
                return;
            }
        }
        *last = arrival;
        self.schedule(arrival, Ev::Frame { clinic, conn, to_hub, bytes: frame });
    }

    pub(super) fn deliver(&mut self, clinic: usize, conn: u64, to_hub: bool, bytes: Vec<u8>) {
        if self.cstate[clinic].link.as_ref().is_none_or(|l| l.conn != conn) {
            return;
        }
        let who = if to_hub { Who::Hub } else { Who::Clinic(clinic) };
        let now = self.now;
        let site = self.site(who);
        let now_local = site.clock.local(now);
        let Some(node) = site.node.as_mut() else { return };
        let mut splitter = FrameSplitter::new(node.config().frame_max);
        splitter.push(&bytes);
        match splitter.next_frame() {
            Ok(Some(body)) => node.handle_inbound(now_local, conn, prepare(&body, now_local)),
            Ok(None) => {}
            Err(e) => node.handle_stream_error(conn, &e),
        }
        // A complete receipt that matched makes the clinic's set whole again: what was
        // damaged on open has been fetched back, whatever happens to the session afterwards.
        if let Who::Clinic(i) = who {
            if node.in_sync() {
                self.cstate[i].damage_open = false;
            }
        }
        self.fold_new(who);
    }

    pub(super) fn connect(&mut self, i: usize) {
        self.cstate[i].connect_pending = false;
        if self.cstate[i].link.is_some() || self.clinics[i].node.is_none() {
            return;
        }
        let reachable = self.hub.node.is_some()
            && self.cstate[i].cut_up.is_none()
            && self.cstate[i].cut_down.is_none();
        if !reachable {
            let backoff = self.cstate[i].backoff_ms;
            self.cstate[i].backoff_ms = (backoff * 2).clamp(100, 5_000);
            self.cstate[i].connect_pending = true;
            self.schedule(self.now + backoff.max(100), Ev::Connect(i));
            return;
        }
        self.next_conn += 1;
        let conn = self.next_conn;
        let rtt = 2 * self.latency();
        self.stats.sessions += 1;
        let hub_id =
            PeerIdentity { role: Role::Hub, name: "hub".into(), node: self.hub.signer.node_id() };
        let clinic_id = PeerIdentity {
            role: Role::Clinic,
            name: format!("clinic-{i}"),
            node: self.clinics[i].signer.node_id(),
        };
        let t = self.now + rtt;
        self.cstate[i].link = Some(Link {
            conn,
            since: self.now,
            up_free: t,
            down_free: t,
            up_last: t,
            down_last: t,
        });
        let hub_now = self.hub.clock.local(self.now);
        let clinic_now = self.clinics[i].clock.local(self.now);
        if let Some(n) = self.hub.node.as_mut() {
            n.handle_connected(hub_now, conn, clinic_id);
        }
        if let Some(n) = self.clinics[i].node.as_mut() {
            n.handle_connected(clinic_now, conn, hub_id);
        }
    }

    pub(super) fn link_down(&mut self, i: usize, conn: u64) {
        let Some(link) = &self.cstate[i].link else { return };
        if link.conn != conn {
            return;
        }
        // Backoff resets only after a session that lasted; one that fails at once (say, the
        // clinic's disk is full) backs off further instead of reconnecting in a storm.
        let lasted = self.now.saturating_sub(link.since) >= 30_000;
        let backoff = self.cstate[i].backoff_ms;
        self.cstate[i].backoff_ms = if lasted { 100 } else { (backoff * 2).clamp(100, 5_000) };
        self.cstate[i].link = None;
        let hub_now = self.hub.clock.local(self.now);
        let clinic_now = self.clinics[i].clock.local(self.now);
        if let Some(n) = self.hub.node.as_mut() {
            n.handle_disconnected(hub_now, conn);
        }
        if let Some(n) = self.clinics[i].node.as_mut() {
            n.handle_disconnected(clinic_now, conn);
        }
        if !self.cstate[i].connect_pending {
            self.cstate[i].connect_pending = true;
            let backoff = self.cstate[i].backoff_ms.max(100);
            self.schedule(self.now + backoff, Ev::Connect(i));
        }
    }
}
