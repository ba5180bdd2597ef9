//! The time-ordered event queue and what each event does (frames, connects, publications,
//! checks, crashes, restarts, partitions, clock jumps, bit flips, full disks, ticks, healing).

use super::*;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Ev {
    Frame { clinic: usize, conn: u64, to_hub: bool, bytes: Vec<u8> },
    Connect(usize),
    LinkDown { clinic: usize, conn: u64 },
    Publish(usize),
    Check(usize),
    Crash(Who),
    Restart(Who),
    PartitionStart { clinic: usize, up: bool, down: bool, until: u64 },
    PartitionEnd { clinic: usize },
    ClockJump { who: Who, by_ms: i64 },
    BitFlip(usize),
    Tick,
    Heal,
    Burst(usize),
    DiskFull { clinic: usize, full: bool },
}

impl Sim {
    pub(super) fn schedule(&mut self, at: u64, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse((at, self.seq, ev)));
    }

    pub(super) fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Frame { clinic, conn, to_hub, bytes } => self.deliver(clinic, conn, to_hub, bytes),
            Ev::Connect(i) => self.connect(i),
            Ev::LinkDown { clinic, conn } => self.link_down(clinic, conn),
            Ev::DiskFull { clinic, full } => {
                if full && self.healed {
                    return;
                }
                let mut config = self.cfg.faults.clinic_disk.clone();
                if self.healed {
                    config = FaultConfig::default();
                }
                // Full: no file may grow (writes inside preallocated segments still land).
                config.capacity_bytes = full.then_some(0);
                self.clinics[clinic].disk.set_config(config);
                self.stats.disk_full += u64::from(full);
                self.note(format!(
                    "clinic {clinic}: disk {}",
                    if full { "full" } else { "has room again" }
                ));
            }
            Ev::Burst(n) => {
                // The next `n` unpublished events (in record-time order) go out now.
                let mut taken = Vec::new();
                for batch in self.batches.iter_mut().skip(1) {
                    if taken.len() >= n {
                        break;
                    }
                    let k = (n - taken.len()).min(batch.len());
                    taken.extend(batch.drain(..k));
                }
                self.note(format!("burst: the insurer publishes {} changes at once", taken.len()));
                self.batches.push(taken);
                let b = self.batches.len() - 1;
                self.handle(Ev::Publish(b));
            }
            Ev::Publish(b) => {
                let events = std::mem::take(&mut self.batches[b]);
                let local = self.hub.clock.local(self.now);
                let Some(hub) = self.hub.node.as_mut() else {
                    // The hub is down: the insurer retries a minute later.
                    self.batches[b] = events;
                    self.schedule(self.now + 60_000, Ev::Publish(b));
                    return;
                };
                match hub.import(local, &events) {
                    Ok(_) => self.stats.published += events.len() as u64,
                    Err(e) => self.checker.violation(
                        self.now,
                        "the hub stores published events",
                        e.to_string(),
                    ),
                }
                self.fold_new(Who::Hub);
            }
            Ev::Check(i) => {
                if !self.healed {
                    let mean = DAY_MS / self.cfg.checks_per_day.max(0.001);
                    let next = self.now + 1 + exp(&mut self.work, mean);
                    self.schedule(next, Ev::Check(i));
                }
                if self.clinics[i].node.is_some() {
                    self.check(i);
                }
            }
            Ev::Crash(who) => {
                if !self.healed {
                    self.crash(who);
                    let rate = self.cfg.faults.crashes_per_day;
                    if rate > 0.0 {
                        let next = self.now + 1 + exp(&mut self.disk_rng, DAY_MS / rate);
                        self.schedule(next, Ev::Crash(who));
                    }
                }
            }
            Ev::Restart(who) => self.restart(who),
            Ev::PartitionStart { clinic, up, down, until } => {
                if self.healed {
                    return;
                }
                self.stats.partitions += 1;
                self.timeline.push((
                    self.now,
                    Who::Clinic(clinic),
                    Mark::Partition { until_ms: until },
                ));
                self.note(format!(
                    "clinic {clinic} partitioned (up {up}, down {down}) for {} s",
                    (until - self.now) / 1000
                ));
                // Cuts add up: a random partition inside a scripted one (or a shorter one
                // inside a longer) must not end the longer one early. Random faults come on
                // top of a scenario's script, never instead of it.
                let st = &mut self.cstate[clinic];
                if up {
                    st.cut_up = Some(st.cut_up.map_or(until, |u| u.max(until)));
                }
                if down {
                    st.cut_down = Some(st.cut_down.map_or(until, |u| u.max(until)));
                }
                st.partitioned_since.get_or_insert(self.now);
                if until > self.now + DETECT_MS {
                    if let Some(link) = &st.link {
                        let conn = link.conn;
                        self.schedule(self.now + DETECT_MS, Ev::LinkDown { clinic, conn });
                    }
                }
                self.schedule(until, Ev::PartitionEnd { clinic });
            }
            Ev::PartitionEnd { clinic } => {
                let st = &mut self.cstate[clinic];
                let now = self.now;
                if st.cut_up.is_some_and(|u| u <= now) {
                    st.cut_up = None;
                }
                if st.cut_down.is_some_and(|u| u <= now) {
                    st.cut_down = None;
                }
                if st.cut_up.is_none() && st.cut_down.is_none() {
                    st.partitioned_since = None;
                }
            }
            Ev::ClockJump { who, by_ms } => {
                self.stats.clock_jumps += 1;
                self.site(who).clock.jumps_ms += by_ms;
            }
            Ev::BitFlip(i) => {
                if self.healed || self.clinics[i].node.is_none() {
                    return;
                }
                self.stats.bit_flips += 1;
                let names: Vec<String> =
                    match shikaku_log::storage::Directory::list(&self.clinics[i].disk) {
                        Ok(n) => n.into_iter().filter(|n| n.starts_with("segment-")).collect(),
                        Err(_) => Vec::new(),
                    };
                if !names.is_empty() {
                    let name = names[self.disk_rng.below(names.len() as u64) as usize].clone();
                    let len =
                        self.clinics[i].disk.durable_image(&name).map_or(0, |d| d.len() as u64);
                    if len > 0 {
                        let offset = self.disk_rng.below(len);
                        let bit = self.disk_rng.below(8) as u8;
                        self.clinics[i].disk.flip_bit(&name, offset, bit);
                        self.note(format!("clinic {i}: bit flip in {name} at {offset}; a scrub reopens the ledger"));
                        // A scrub (or the next restart) finds it: the node reopens its ledger,
                        // reports the damaged range and re-fetches it from the hub.
                        self.reopen(Who::Clinic(i));
                    }
                }
                let rate = self.cfg.faults.bit_flips_per_day;
                let next = self.now + 1 + exp(&mut self.disk_rng, DAY_MS / rate.max(1e-9));
                self.schedule(next, Ev::BitFlip(i));
            }
            Ev::Tick => {
                for who in std::iter::once(Who::Hub).chain((0..self.clinics.len()).map(Who::Clinic))
                {
                    let now = self.now;
                    let site = self.site(who);
                    let local = site.clock.local(now);
                    if let Some(n) = site.node.as_mut() {
                        n.handle_tick(local);
                    }
                }
                self.schedule(self.now + TICK_MS, Ev::Tick);
            }
            Ev::Heal => {
                self.healed = true;
                self.note("faults healed: liveness phase".into());
                for i in 0..self.clinics.len() {
                    let st = &mut self.cstate[i];
                    st.cut_up = None;
                    st.cut_down = None;
                    st.partitioned_since = None;
                    self.clinics[i].disk.set_config(FaultConfig::default());
                    if self.clinics[i].node.is_none() {
                        self.schedule(self.now + 1, Ev::Restart(Who::Clinic(i)));
                    } else if self.cstate[i].link.is_none() && !self.cstate[i].connect_pending {
                        self.cstate[i].connect_pending = true;
                        self.schedule(self.now + 1, Ev::Connect(i));
                    }
                }
                if self.hub.node.is_none() {
                    self.schedule(self.now + 1, Ev::Restart(Who::Hub));
                }
                self.cfg.faults.loss = 0.0;
                self.cfg.faults.duplicate = 0.0;
                self.cfg.faults.reorder = 0.0;
            }
        }
    }
}
