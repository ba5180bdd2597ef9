//! Projection snapshots: the fold's state as bytes, so a node that restarts loads it instead
//! of replaying every event. A snapshot records the log position it covers and the state's
//! [`Projection::digest`]; decoding recomputes the digest and refuses the snapshot unless it
//! matches, so a damaged or tampered snapshot can never change an answer. Format: see
//! `protocol/LOG-FORMAT.md` ("Projection snapshot"). No IO here: bytes in, bytes out.

use super::*;

const MAGIC: [u8; 8] = *b"SHKKPRJ\0";
/// 2: the state digest of `shikaku/projection/v2`. A version-1 snapshot is refused and, being
/// derived, rebuilt from the log.
const VERSION: u16 = 2;

/// Why a snapshot was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// Not a snapshot, or a version this build does not read.
    #[error("not a version-{VERSION} projection snapshot")]
    Format,
    /// The bytes end early or hold an impossible value.
    #[error("projection snapshot is malformed at byte {0}")]
    Malformed(usize),
    /// The decoded state does not have the digest the snapshot claims.
    #[error("projection snapshot digest mismatch")]
    Digest,
}

struct Writer(Vec<u8>);

impl Writer {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, v: &[u8]) {
        self.0.extend_from_slice(v);
    }
    fn blob(&mut self, v: &[u8]) {
        self.u32(v.len() as u32);
        self.bytes(v);
    }
    fn markers(&mut self, list: &[Marker]) {
        self.u32(list.len() as u32);
        for m in list {
            self.u64(m.hlc.0);
            self.u32(m.event);
            self.u8(m.flag);
            self.u32(m.date.0 as u32);
        }
    }
    fn query(&mut self, query: &CheckQuery) {
        match query {
            CheckQuery::Card(card) => {
                self.u8(0);
                self.bytes(&card.0);
            }
            CheckQuery::Member(member) => {
                self.u8(1);
                self.blob(CompactKey::new(member).as_slice());
            }
        }
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], SnapshotError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or(SnapshotError::Malformed(self.at))?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }
    fn u8(&mut self) -> Result<u8, SnapshotError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, SnapshotError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, SnapshotError> {
        let mut w = [0u8; 8];
        w.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(w))
    }
    fn array32(&mut self) -> Result<[u8; 32], SnapshotError> {
        let mut w = [0u8; 32];
        w.copy_from_slice(self.take(32)?);
        Ok(w)
    }
    fn count(&mut self, limit: usize) -> Result<usize, SnapshotError> {
        let n = self.u32()? as usize;
        if n > limit {
            return Err(SnapshotError::Malformed(self.at));
        }
        Ok(n)
    }
    fn blob(&mut self) -> Result<&'a [u8], SnapshotError> {
        let n = self.count(4096)?;
        self.take(n)
    }
    fn markers(&mut self, events: usize) -> Result<Vec<Marker>, SnapshotError> {
        let n = self.count(events)?;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let hlc = Hlc(self.u64()?);
            let event = self.u32()?;
            if event as usize >= events {
                return Err(SnapshotError::Malformed(self.at));
            }
            out.push(Marker { hlc, event, flag: self.u8()?, date: Date(self.u32()? as i32) });
        }
        Ok(out)
    }
    fn query(&mut self) -> Result<CheckQuery, SnapshotError> {
        match self.u8()? {
            0 => Ok(CheckQuery::Card(CardToken(self.array32()?))),
            1 => {
                let at = self.at;
                decode_compact_key(self.blob()?)
                    .map(CheckQuery::Member)
                    .ok_or(SnapshotError::Malformed(at))
            }
            _ => Err(SnapshotError::Malformed(self.at)),
        }
    }
}

const END_REASONS: [EndReason; 6] = [
    EndReason::JobChange,
    EndReason::Retirement,
    EndReason::MoveOutOfMunicipality,
    EndReason::Age75,
    EndReason::Death,
    EndReason::Other,
];
const CODES: [AnswerCode; 7] = [
    AnswerCode::Valid,
    AnswerCode::Invalid,
    AnswerCode::InvalidNewerExists,
    AnswerCode::NoMatch,
    AnswerCode::MultipleMatches,
    AnswerCode::PendingSuccessor,
    AnswerCode::Unknown,
];
const LINK_STATES: [LinkState; 3] = [LinkState::Linked, LinkState::Unlinked, LinkState::Revoked];

fn index_of<T: PartialEq>(all: &[T], value: &T) -> u8 {
    all.iter().position(|v| v == value).unwrap_or(0) as u8
}

fn pick<T: Copy>(all: &[T], index: u8, at: usize) -> Result<T, SnapshotError> {
    all.get(usize::from(index)).copied().ok_or(SnapshotError::Malformed(at))
}

impl Projection {
    /// Encodes the projection together with the log `position` it covers.
    pub fn encode_snapshot(&self, position: u64) -> Vec<u8> {
        let mut w = Writer(Vec::with_capacity(self.ids.len() * 64 + 1024));
        w.bytes(&MAGIC);
        w.bytes(&VERSION.to_le_bytes());
        w.u64(position);
        w.bytes(&self.digest());
        match &self.replication {
            Replication::All => w.u8(0),
            Replication::Insurers(set) => {
                w.u8(1);
                w.u32(set.len() as u32);
                for insurer in set {
                    w.u32(insurer.value());
                }
            }
        }
        w.u32(self.ids.len() as u32);
        for id in &self.ids {
            w.bytes(&id.0);
        }
        w.u32(self.members.len() as u32);
        for member in &self.members {
            w.blob(&member.key);
            w.u32(member.facts.len() as u32);
            for fact in &member.facts {
                w.u64(fact.hlc.0);
                w.u32(fact.event);
                match fact.kind {
                    FactKind::Registered { birth, insured } => {
                        w.u8(0);
                        w.u32(birth.0 as u32);
                        w.u32(insured);
                    }
                    FactKind::Started { start, copay } => {
                        w.u8(1);
                        w.u32(start.0 as u32);
                        w.u32(u32::from(copay));
                    }
                    FactKind::Ended { loss, reason } => {
                        w.u8(2);
                        w.u32(loss.0 as u32);
                        w.u32(u32::from(index_of(&END_REASONS, &reason)));
                    }
                    FactKind::Copay { effective, copay } => {
                        w.u8(3);
                        w.u32(effective.0 as u32);
                        w.u32(u32::from(copay));
                    }
                    FactKind::Limit { effective, category } => {
                        w.u8(4);
                        w.u32(effective.0 as u32);
                        w.u32(u32::from_le_bytes([category[0], category[1], category[2], 0]));
                    }
                    FactKind::Demographics => {
                        w.u8(5);
                        w.u32(0);
                        w.u32(0);
                    }
                    FactKind::Link { card, state } => {
                        w.u8(6);
                        w.u32(card);
                        w.u32(u32::from(index_of(&LINK_STATES, &state)));
                    }
                    FactKind::Consent(given) => {
                        w.u8(7);
                        w.u32(u32::from(given));
                        w.u32(0);
                    }
                }
            }
        }
        w.u32(self.cards.len() as u32);
        for card in &self.cards {
            w.bytes(&card.token.0);
            w.u32(card.links.len() as u32);
            for link in &card.links {
                w.u64(link.hlc.0);
                w.u32(link.event);
                w.u32(link.member);
                w.u8(index_of(&LINK_STATES, &link.state));
            }
        }
        let mut voids: Vec<(&EventId, &Vec<Marker>)> = self.voids.iter().collect();
        voids.sort_by_key(|(target, _)| **target);
        w.u32(voids.len() as u32);
        for (target, list) in voids {
            w.bytes(&target.0);
            w.markers(list);
        }
        w.u32(self.declarations.len() as u32);
        for (query, list) in &self.declarations {
            w.query(query);
            w.markers(list);
        }
        let mut resolutions: Vec<(&EventId, &Vec<Marker>)> = self.resolutions.iter().collect();
        resolutions.sort_by_key(|(target, _)| **target);
        w.u32(resolutions.len() as u32);
        for (target, list) in resolutions {
            w.bytes(&target.0);
            w.markers(list);
        }
        let mut checks: Vec<(&EventId, &CheckInfo)> = self.checks.iter().collect();
        checks.sort_by_key(|(id, _)| **id);
        w.u32(checks.len() as u32);
        for (id, info) in checks {
            w.bytes(&id.0);
            w.u64(info.hlc.0);
            w.u8(index_of(&CODES, &info.code));
        }
        let mut deciders: Vec<(&EventId, &Vec<EventId>)> = self.checks_by_decider.iter().collect();
        deciders.sort_by_key(|(id, _)| **id);
        w.u32(deciders.len() as u32);
        for (decider, users) in deciders {
            w.bytes(&decider.0);
            w.u32(users.len() as u32);
            for user in users {
                w.bytes(&user.0);
            }
        }
        // A checksum of the whole encoding catches changes that do not alter the state's
        // meaning (unused bits), which the state digest alone would not see.
        let sum = blake3::hash(&w.0);
        w.bytes(sum.as_bytes());
        w.0
    }

    /// Decodes a snapshot; returns the projection and the log position it covers. The state's
    /// digest is recomputed and must equal the one recorded.
    pub fn decode_snapshot(bytes: &[u8]) -> Result<(Projection, u64), SnapshotError> {
        let Some(body_len) = bytes.len().checked_sub(32) else {
            return Err(SnapshotError::Format);
        };
        let (bytes, sum) = bytes.split_at(body_len);
        if blake3::hash(bytes).as_bytes() != sum {
            return Err(SnapshotError::Digest);
        }
        let mut r = Reader { bytes, at: 0 };
        if r.take(8).ok() != Some(&MAGIC[..]) || r.take(2).ok() != Some(&VERSION.to_le_bytes()[..])
        {
            return Err(SnapshotError::Format);
        }
        let position = r.u64()?;
        let digest = r.array32()?;
        let replication = match r.u8()? {
            0 => Replication::All,
            1 => {
                let n = r.count(100_000)?;
                let mut set = BTreeSet::new();
                for _ in 0..n {
                    let at = r.at;
                    set.insert(
                        InsurerNumber::new(r.u32()?).map_err(|_| SnapshotError::Malformed(at))?,
                    );
                }
                Replication::Insurers(set)
            }
            _ => return Err(SnapshotError::Malformed(r.at)),
        };
        let limit = bytes.len();
        let mut p = Projection::new(replication);
        let n = r.count(limit / 32)?;
        p.ids.reserve_exact(n);
        for _ in 0..n {
            p.ids.push(EventId(r.array32()?));
        }
        let events = p.ids.len();
        let members = r.count(limit / 8)?;
        let mut pending_links: Vec<(usize, usize)> = Vec::new();
        for m in 0..members {
            let key: Box<[u8]> = r.blob()?.into();
            if decode_compact_key(&key).is_none() {
                return Err(SnapshotError::Malformed(r.at));
            }
            let n = r.count(events)?;
            let mut facts = Vec::with_capacity(n);
            for _ in 0..n {
                let at = r.at;
                let hlc = Hlc(r.u64()?);
                let event = r.u32()?;
                let tag = r.u8()?;
                let a = r.u32()?;
                let b = r.u32()?;
                if event as usize >= events {
                    return Err(SnapshotError::Malformed(at));
                }
                let kind = match tag {
                    0 => FactKind::Registered { birth: Date(a as i32), insured: b },
                    1 => FactKind::Started { start: Date(a as i32), copay: b as u8 },
                    2 => FactKind::Ended {
                        loss: Date(a as i32),
                        reason: pick(&END_REASONS, b as u8, at)?,
                    },
                    3 => FactKind::Copay { effective: Date(a as i32), copay: b as u8 },
                    4 => {
                        let c = b.to_le_bytes();
                        FactKind::Limit { effective: Date(a as i32), category: [c[0], c[1], c[2]] }
                    }
                    5 => FactKind::Demographics,
                    6 => {
                        pending_links.push((m, a as usize));
                        FactKind::Link { card: a, state: pick(&LINK_STATES, b as u8, at)? }
                    }
                    7 => FactKind::Consent(a == 1),
                    _ => return Err(SnapshotError::Malformed(at)),
                };
                facts.push(Fact { hlc, event, kind });
            }
            p.members.push(MemberState { key, facts });
        }
        for member in &p.members {
            for fact in &member.facts {
                if let FactKind::Registered { insured, .. } = fact.kind {
                    if insured != NO_MEMBER
                        && insured != SEALED_INSURED
                        && insured as usize >= p.members.len()
                    {
                        return Err(SnapshotError::Malformed(r.at));
                    }
                }
            }
        }
        let cards = r.count(limit / 32)?;
        for _ in 0..cards {
            let token = CardToken(r.array32()?);
            let n = r.count(events)?;
            let mut links = Vec::with_capacity(n);
            for _ in 0..n {
                let at = r.at;
                let hlc = Hlc(r.u64()?);
                let event = r.u32()?;
                let member = r.u32()?;
                let state = pick(&LINK_STATES, r.u8()?, at)?;
                if event as usize >= events || member as usize >= p.members.len() {
                    return Err(SnapshotError::Malformed(at));
                }
                links.push(LinkFact { hlc, event, member, state });
            }
            p.cards.push(CardState { token, links });
        }
        if pending_links.iter().any(|&(_, card)| card >= p.cards.len()) {
            return Err(SnapshotError::Malformed(r.at));
        }
        for _ in 0..r.count(events)? {
            let target = EventId(r.array32()?);
            let list = r.markers(events)?;
            p.voids.insert(target, list);
        }
        for _ in 0..r.count(events)? {
            let query = r.query()?;
            let list = r.markers(events)?;
            p.declarations.insert(query, list);
        }
        for _ in 0..r.count(events)? {
            let target = EventId(r.array32()?);
            let list = r.markers(events)?;
            p.resolutions.insert(target, list);
        }
        for _ in 0..r.count(events)? {
            let id = EventId(r.array32()?);
            let hlc = Hlc(r.u64()?);
            let at = r.at;
            let code = pick(&CODES, r.u8()?, at)?;
            p.checks.insert(id, CheckInfo { hlc, code });
        }
        for _ in 0..r.count(events)? {
            let decider = EventId(r.array32()?);
            let n = r.count(events)?;
            let mut users = Vec::with_capacity(n);
            for _ in 0..n {
                users.push(EventId(r.array32()?));
            }
            p.checks_by_decider.insert(decider, users);
        }
        if r.at != bytes.len() {
            return Err(SnapshotError::Malformed(r.at));
        }
        // Rebuild the derived lookup tables.
        for (index, member) in p.members.iter().enumerate() {
            let members = &p.members;
            p.member_table.insert_unique(hash_bytes(&member.key), index as u32, |&m| {
                hash_bytes(&members[m as usize].key)
            });
        }
        for (index, card) in p.cards.iter().enumerate() {
            let cards = &p.cards;
            p.card_table.insert_unique(hash_bytes(&card.token.0), index as u32, |&c| {
                hash_bytes(&cards[c as usize].token.0)
            });
        }
        if !p.voids.is_empty() {
            p.void_filter = vec![0; VOID_FILTER_WORDS];
            for target in p.voids.keys() {
                let bit = void_filter_bit(target);
                p.void_filter[bit / 64] |= 1 << (bit % 64);
            }
        }
        if p.digest() != digest {
            return Err(SnapshotError::Digest);
        }
        Ok((p, position))
    }
}
