//! The simulated world's nodes: opening a node (and scrubbing what its checkpoint skipped),
//! feeding what it stores into the site's reference projection, crashes, restarts and the
//! trace.

use super::*;

impl Sim {
    pub(super) fn site(&mut self, who: Who) -> &mut Site {
        match who {
            Who::Hub => &mut self.hub,
            Who::Clinic(i) => &mut self.clinics[i],
        }
    }

    pub(super) fn note(&mut self, text: String) {
        let line = format!("{:>10.3}s {text}", self.now as f64 / 1000.0);
        self.trace.push(line);
        if self.trace.len() > 200 {
            self.trace.remove(0);
        }
    }

    /// Feeds newly stored log entries into the site's reference projection and records the
    /// site's acknowledged events (everything stored is durable: appends return after fsync).
    pub(super) fn fold_new(&mut self, who: Who) {
        let now = self.now;
        let checker = &mut self.checker;
        let site = match who {
            Who::Hub => &mut self.hub,
            Who::Clinic(i) => &mut self.clinics[i],
        };
        let Some(node) = &site.node else { return };
        let head = node.ledger().head();
        if site.folded + 1 >= head {
            return;
        }
        for position in site.folded + 1..head {
            match node.ledger().read(position) {
                Ok(event) => {
                    site.reference.apply(&event);
                    checker.acknowledged(who, &event);
                }
                // Damage found when the ledger was opened: reported, never served, re-fetched.
                Err(shikaku_log::LogError::Damaged { .. }) => {}
                Err(e) => checker.violation(
                    now,
                    "acknowledged records read back",
                    format!(
                        "{who:?}: position {position} unreadable right after it was stored: {e}"
                    ),
                ),
            }
        }
        site.folded = head - 1;
    }

    pub(super) fn open(&mut self, who: Who) -> Result<(), String> {
        let site = self.site(who);
        let mut node = Node::open(site.disk.clone(), site.signer.clone(), site.config.clone())
            .map_err(|e| format!("{who:?} failed to reopen its ledger: {e}"))?;
        // The node scrubs what its index checkpoint let open skip before it serves (a real
        // node does it on its ticks), so bit rot since the records were written is found.
        while node.scrub(u64::MAX).map_err(|e| format!("{who:?} failed to scrub: {e}"))? {}

        let replication = match who {
            Who::Hub => Replication::All,
            Who::Clinic(_) => Replication::Insurers(site.config.insurers.clone()),
        };
        site.reference = Projection::new(replication);
        site.folded = 0;
        site.node = Some(node);
        // A sealed world's hub holds the insurers' key store (merged again on every open: a
        // disk that lost it gets it back, as an insurer's re-import would).
        if let (Who::Hub, Some(node), Some(sealed)) = (who, self.hub.node.as_mut(), &self.sealed) {
            node.import_keys(&sealed.keys)
                .map_err(|e| format!("the hub refused the insurers' key store: {e}"))?;
        }
        self.fold_new(who);
        Ok(())
    }

    pub(super) fn crash(&mut self, who: Who) {
        if self.site(who).node.is_none() {
            return;
        }
        self.stats.crashes += 1;
        self.timeline.push((self.now, who, Mark::Crash));
        self.note(format!("{who:?} crashes"));
        let site = self.site(who);
        site.node = None;
        site.disk.crash();
        match who {
            Who::Clinic(i) => {
                if let Some(link) = self.cstate[i].link.take() {
                    let hub_now = self.hub.clock.local(self.now);
                    if let Some(n) = self.hub.node.as_mut() {
                        n.handle_disconnected(hub_now, link.conn);
                    }
                }
            }
            Who::Hub => {
                for i in 0..self.clinics.len() {
                    if let Some(link) = &self.cstate[i].link {
                        let conn = link.conn;
                        self.schedule(self.now + DETECT_MS, Ev::LinkDown { clinic: i, conn });
                    }
                }
            }
        }
        let down = 1_000 + exp(&mut self.disk_rng, self.cfg.faults.downtime_mean_ms as f64);
        let at = if self.healed { self.now + 1_000 } else { self.now + down };
        self.schedule(at, Ev::Restart(who));
    }

    /// Closes and reopens a node's ledger without losing anything (all writes were synced).
    pub(super) fn reopen(&mut self, who: Who) {
        if let Who::Clinic(i) = who {
            if let Some(link) = self.cstate[i].link.take() {
                let hub_now = self.hub.clock.local(self.now);
                if let Some(n) = self.hub.node.as_mut() {
                    n.handle_disconnected(hub_now, link.conn);
                }
            }
        }
        self.site(who).node = None;
        self.restart(who);
    }

    pub(super) fn restart(&mut self, who: Who) {
        if self.site(who).node.is_some() {
            return;
        }
        self.stats.restarts += 1;
        self.note(format!("{who:?} restarts"));
        if let Err(e) = self.open(who) {
            self.checker.violation(self.now, "ledger opens after a crash", e);
            return;
        }
        let node = match who {
            Who::Hub => self.hub.node.as_ref(),
            Who::Clinic(i) => self.clinics[i].node.as_ref(),
        };
        self.checker.after_restart(self.now, who, node);
        if let Who::Clinic(i) = who {
            self.cstate[i].damage_open = self.clinics[i]
                .node
                .as_ref()
                .is_some_and(|n| !n.ledger().recovery().damaged.is_empty());
            self.cstate[i].backoff_ms = 100;
            if !self.cstate[i].connect_pending {
                self.cstate[i].connect_pending = true;
                self.schedule(self.now + 100, Ev::Connect(i));
            }
        }
    }
}
