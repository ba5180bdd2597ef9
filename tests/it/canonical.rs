//! An independent encoder of schema-1 canonical bytes, written from `protocol/EVENTS.md`
//! ("The canonical bytes, byte by byte") alone — no rkyv — and checked against every golden
//! vector: if the specification left a layout detail out or got one wrong, this fails.

use shikaku_core::{CheckQuery, Event, EventBody, MemberKey, Namespace, Relationship};

/// An archived value as EVENTS.md describes it.
enum Node {
    /// A little-endian scalar or byte array: its bytes and alignment.
    Bytes(Vec<u8>, usize),
    /// A string: 8 bytes inline (≤ 8 bytes of text) or out of line.
    Str(String),
    /// A `Vec` of 32-byte ids (the only vectors in schema 1): 8 bytes, elements out of line.
    Ids(Vec<[u8; 32]>),
    /// A `Vec<u8>` (schema 2's ciphertexts): 8 bytes, the bytes out of line.
    Blob(Vec<u8>),
    /// Fields laid out in order, C-style.
    Struct(Vec<Node>),
    /// A tag byte, then the variant's fields as a struct starting with that byte; the enum's
    /// size and alignment come from the table in EVENTS.md.
    Enum { tag: u8, fields: Vec<Node>, size: usize, align: usize },
}

fn align_up(n: usize, align: usize) -> usize {
    n.div_ceil(align) * align
}

impl Node {
    fn align(&self) -> usize {
        match self {
            Node::Bytes(_, align) => *align,
            Node::Str(_) | Node::Ids(_) | Node::Blob(_) => 4,
            Node::Struct(fields) => fields.iter().map(Node::align).max().unwrap_or(1),
            Node::Enum { align, .. } => *align,
        }
    }

    /// Offsets of fields laid out from offset `start` (the tag byte of an enum takes 1).
    fn offsets(fields: &[Node], start: usize) -> (Vec<usize>, usize) {
        let mut at = start;
        let mut out = Vec::new();
        for f in fields {
            at = align_up(at, f.align());
            out.push(at);
            at += f.size();
        }
        (out, at)
    }

    fn size(&self) -> usize {
        match self {
            Node::Bytes(bytes, _) => bytes.len(),
            Node::Str(_) | Node::Ids(_) | Node::Blob(_) => 8,
            Node::Struct(fields) => align_up(Node::offsets(fields, 0).1, self.align()),
            Node::Enum { size, .. } => *size,
        }
    }

    /// Writes this value's out-of-line data (depth first, fields in order) and returns where
    /// each string or vector went.
    fn write_out_of_line(&self, buf: &mut Vec<u8>, places: &mut Vec<usize>) {
        match self {
            Node::Bytes(..) => {}
            Node::Str(s) => {
                if s.len() > 8 {
                    places.push(buf.len());
                    buf.extend_from_slice(s.as_bytes());
                }
            }
            Node::Ids(ids) => {
                // Elements align to 1: no padding; an empty vector points at the current end.
                places.push(buf.len());
                for id in ids {
                    buf.extend_from_slice(id);
                }
            }
            Node::Blob(bytes) => {
                places.push(buf.len());
                buf.extend_from_slice(bytes);
            }
            Node::Struct(fields) | Node::Enum { fields, .. } => {
                for f in fields {
                    f.write_out_of_line(buf, places);
                }
            }
        }
    }

    /// Writes the inline part at `at`, taking out-of-line places in the same order.
    fn write_inline(&self, buf: &mut [u8], at: usize, places: &mut std::slice::Iter<'_, usize>) {
        match self {
            Node::Bytes(bytes, _) => buf[at..at + bytes.len()].copy_from_slice(bytes),
            Node::Str(s) if s.len() <= 8 => {
                buf[at..at + 8].fill(0xFF);
                buf[at..at + s.len()].copy_from_slice(s.as_bytes());
            }
            Node::Str(s) => {
                let len = s.len() as u32;
                let word = (len & 0x3F) | 0x80 | ((len & !0x3F) << 2);
                let target = *places.next().unwrap() as i64;
                buf[at..at + 4].copy_from_slice(&word.to_le_bytes());
                buf[at + 4..at + 8].copy_from_slice(&((target - at as i64) as i32).to_le_bytes());
            }
            Node::Blob(bytes) => {
                let target = *places.next().unwrap() as i64;
                buf[at..at + 4].copy_from_slice(&((target - at as i64) as i32).to_le_bytes());
                buf[at + 4..at + 8].copy_from_slice(&(bytes.len() as u32).to_le_bytes());
            }
            Node::Ids(ids) => {
                let target = *places.next().unwrap() as i64;
                buf[at..at + 4].copy_from_slice(&((target - at as i64) as i32).to_le_bytes());
                buf[at + 4..at + 8].copy_from_slice(&(ids.len() as u32).to_le_bytes());
            }
            Node::Struct(fields) => {
                let (offsets, _) = Node::offsets(fields, 0);
                for (f, o) in fields.iter().zip(offsets) {
                    f.write_inline(buf, at + o, places);
                }
            }
            Node::Enum { tag, fields, .. } => {
                buf[at] = *tag;
                let (offsets, _) = Node::offsets(fields, 1);
                for (f, o) in fields.iter().zip(offsets) {
                    f.write_inline(buf, at + o, places);
                }
            }
        }
    }
}

fn u8n(v: u8) -> Node {
    Node::Bytes(vec![v], 1)
}
fn u32n(v: u32) -> Node {
    Node::Bytes(v.to_le_bytes().to_vec(), 4)
}
fn i32n(v: i32) -> Node {
    Node::Bytes(v.to_le_bytes().to_vec(), 4)
}
fn u64n(v: u64) -> Node {
    Node::Bytes(v.to_le_bytes().to_vec(), 8)
}
fn arr(v: &[u8; 32]) -> Node {
    Node::Bytes(v.to_vec(), 1)
}
fn unit(tag: u8) -> Node {
    Node::Enum { tag, fields: vec![], size: 1, align: 1 }
}

fn key(k: &MemberKey) -> Node {
    Node::Struct(vec![
        u32n(k.insurer.value()),
        Node::Str(k.symbol.clone()),
        Node::Str(k.number.clone()),
        u8n(k.branch),
    ])
}

/// `CheckQuery`: 36 bytes, align 4 (EVENTS.md's enum table).
fn query(q: &CheckQuery) -> Node {
    let (tag, field) = match q {
        CheckQuery::Card(card) => (0, arr(&card.0)),
        CheckQuery::Member(m) => (1, key(m)),
    };
    Node::Enum { tag, fields: vec![field], size: 36, align: 4 }
}

fn person(p: &shikaku_core::Person) -> Node {
    Node::Struct(vec![
        Node::Str(p.name.clone()),
        Node::Str(p.kana.clone()),
        unit(p.sex as u8),
        i32n(p.birth_date.0),
        Node::Str(p.address.clone()),
        u32n(p.municipality),
    ])
}

/// `Sealed` (schema 2): the 24-byte nonce, then the ciphertext as a `Vec<u8>`.
fn sealed(s: &shikaku_core::seal::Sealed) -> Node {
    Node::Struct(vec![Node::Bytes(s.nonce.to_vec(), 1), Node::Blob(s.ciphertext.clone())])
}

fn body(b: &EventBody) -> Node {
    use EventBody::*;
    let (tag, fields) = match b {
        MemberRegistered { member, person: who, relationship } => {
            let relationship = match relationship {
                Relationship::Insured => Node::Enum { tag: 0, fields: vec![], size: 28, align: 4 },
                Relationship::Dependant { insured } => {
                    Node::Enum { tag: 1, fields: vec![key(insured)], size: 28, align: 4 }
                }
            };
            (0, vec![key(member), person(who), relationship])
        }
        CoverageStarted { member, start, copay_tenths, elderly_certificate } => (
            1,
            vec![
                key(member),
                i32n(start.0),
                u8n(*copay_tenths),
                u8n(u8::from(*elderly_certificate)),
            ],
        ),
        CoverageEnded { member, loss_date, reason } => {
            (2, vec![key(member), i32n(loss_date.0), unit(*reason as u8)])
        }
        CopayRatioSet { member, effective, copay_tenths } => {
            (3, vec![key(member), i32n(effective.0), u8n(*copay_tenths)])
        }
        LimitCategorySet { member, effective, category } => {
            (4, vec![key(member), i32n(effective.0), Node::Str(category.clone())])
        }
        DemographicsChanged { member, effective, person: who } => {
            (5, vec![key(member), i32n(effective.0), person(who)])
        }
        CardLinked { card, member } => (6, vec![arr(&card.0), key(member)]),
        CardUnlinked { card, member } => (7, vec![arr(&card.0), key(member)]),
        WrongPersonLinkageRevoked { card, member, reason } => {
            (8, vec![arr(&card.0), key(member), Node::Str(reason.clone())])
        }
        EventVoided { subject, target, reason } => {
            (9, vec![query(subject), arr(&target.0), Node::Str(reason.clone())])
        }
        EventSuperseded { subject, target, replacement } => {
            (10, vec![query(subject), arr(&target.0), arr(&replacement.0)])
        }
        CheckPerformed {
            query: q,
            service_date,
            mode,
            knowledge,
            hub_position,
            code,
            answer_hash,
            decided_by,
        } => (
            11,
            vec![
                query(q),
                i32n(service_date.0),
                unit(*mode as u8),
                u64n(knowledge.0),
                u64n(*hub_position),
                unit(*code as u8),
                arr(&answer_hash.0),
                Node::Ids(decided_by.iter().map(|id| id.0).collect()),
            ],
        ),
        SelfDeclarationRecorded { query: q, declared_insurer, declared_start } => {
            let option = match declared_insurer {
                None => Node::Enum { tag: 0, fields: vec![], size: 8, align: 4 },
                Some(i) => Node::Enum { tag: 1, fields: vec![u32n(i.value())], size: 8, align: 4 },
            };
            (12, vec![query(q), option, i32n(declared_start.0)])
        }
        SelfDeclarationResolved { query: q, declaration, outcome } => {
            (13, vec![query(q), arr(&declaration.0), unit(*outcome as u8)])
        }
        ConsentGiven { member } => (14, vec![key(member)]),
        ConsentWithdrawn { member } => (15, vec![key(member)]),
        MemberSealed { member, sealed: s } => (16, vec![key(member), sealed(s)]),
        DemographicsSealed { member, effective, sealed: s } => {
            (17, vec![key(member), i32n(effective.0), sealed(s)])
        }
        MemberErased { member, key_tags, reason } => {
            (18, vec![key(member), Node::Ids(key_tags.clone()), Node::Str(reason.clone())])
        }
    };
    Node::Enum { tag, fields, size: 112, align: 8 }
}

/// The canonical bytes of `event`, as EVENTS.md specifies them.
pub fn encode(event: &Event) -> Vec<u8> {
    let namespace = match event.namespace {
        Namespace::Insurer(i) => {
            Node::Enum { tag: 0, fields: vec![u32n(i.value())], size: 36, align: 4 }
        }
        Namespace::Clinic(node) => {
            Node::Enum { tag: 1, fields: vec![arr(&node.0)], size: 36, align: 4 }
        }
    };
    let root = Node::Struct(vec![
        namespace,
        arr(&event.origin.0),
        u64n(event.origin_seq),
        u64n(event.hlc.0),
        arr(&event.author.0),
        body(&event.body),
    ]);
    let mut buf = Vec::new();
    let mut places = Vec::new();
    root.write_out_of_line(&mut buf, &mut places);
    let at = align_up(buf.len(), root.align());
    buf.resize(at + root.size(), 0);
    root.write_inline(&mut buf, at, &mut places.iter());
    buf
}

#[test]
fn an_encoder_written_from_the_specification_reproduces_every_golden_vector() {
    // Proves issue 12 item 4: EVENTS.md says enough to produce the canonical bytes of all 16
    // event types without rkyv — strings inline and out of line (below and above 64 bytes),
    // empty and non-empty vectors, options, variants with fields, both namespaces.
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../protocol/vectors/events-v1.json"
    ))
    .unwrap();
    let vectors: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    let mut types = std::collections::BTreeSet::new();
    for v in &vectors {
        let line = v["jsonl"].as_str().unwrap();
        let event = shikaku_cli::jsonl::decode(line, None).unwrap();
        let ours = shikaku_core::hex::encode(&encode(event.event()));
        assert_eq!(ours, v["canonical_hex"].as_str().unwrap(), "vector {}", v["name"]);
        types.insert(event.event().body.type_name());
        // The id is blake3(u16 LE schema version ‖ canonical bytes).
        let mut h = blake3::Hasher::new();
        h.update(&1u16.to_le_bytes());
        h.update(&encode(event.event()));
        assert_eq!(shikaku_core::hex::encode(h.finalize().as_bytes()), v["id"].as_str().unwrap());
    }
    assert_eq!(types.len(), 16, "every event type has a vector: {types:?}");
}

/// The answer hash recomputed from an answer's JSON form (protocol/API.md) by the rules of
/// EVENTS.md, "The answer hash" — no use of `Answer::hash`.
fn answer_hash_by_hand(a: &serde_json::Value) -> String {
    const CODES: [&str; 7] = [
        "valid",
        "invalid",
        "invalid_newer_exists",
        "no_match",
        "multiple_matches",
        "pending_successor",
        "unknown",
    ];
    const REASONS: [&str; 6] =
        ["job_change", "retirement", "move_out_of_municipality", "age75", "death", "other"];
    const KINDS: [&str; 5] = [
        "overlapping_coverage",
        "competing_ends",
        "competing_values",
        "competing_corrections",
        "multiple_members",
    ];
    let day = |v: &serde_json::Value| -> [u8; 4] {
        v.as_str().unwrap().parse::<shikaku_core::Date>().unwrap().0.to_le_bytes()
    };
    let text = |out: &mut Vec<u8>, s: &str| {
        out.extend_from_slice(&(s.len() as u16).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    };
    let hex32 = |out: &mut Vec<u8>, v: &serde_json::Value| {
        out.extend_from_slice(&shikaku_core::hex::decode_array::<32>(v.as_str().unwrap()).unwrap())
    };
    let ids = |out: &mut Vec<u8>, v: &serde_json::Value| {
        let list = v.as_array().unwrap();
        out.extend_from_slice(&(list.len() as u32).to_le_bytes());
        for id in list {
            hex32(out, id);
        }
    };
    let index = |table: &[&str], v: &serde_json::Value| {
        table.iter().position(|t| *t == v.as_str().unwrap()).unwrap() as u8
    };
    let mut out = b"shikaku/answer/v2".to_vec();
    out.push(index(&CODES, &a["code"]));
    out.extend_from_slice(&day(&a["service_date"]));
    match (a["query"].get("card"), a["query"].get("member")) {
        (Some(card), _) => {
            out.push(0);
            hex32(&mut out, card);
        }
        (_, Some(member)) => {
            out.push(1);
            text(&mut out, member.as_str().unwrap());
        }
        _ => panic!("query"),
    }
    for field in ["member"] {
        match a[field].as_str() {
            None => out.push(0),
            Some(key) => {
                out.push(1);
                text(&mut out, key);
            }
        }
    }
    match a["coverage"].as_object() {
        None => out.push(0),
        Some(c) => {
            out.push(1);
            out.extend_from_slice(&day(&c["start"]));
            match c["end"].as_str() {
                None => out.push(0),
                Some(_) => {
                    out.push(1);
                    out.extend_from_slice(&day(&c["end"]));
                }
            }
        }
    }
    out.push(if a["end_reason"].is_null() { 0xFF } else { index(&REASONS, &a["end_reason"]) });
    out.push(a["copay_tenths"].as_u64().unwrap_or(0) as u8);
    match a["limit_category"].as_str() {
        None => out.push(0),
        Some(c) => {
            out.push(1);
            text(&mut out, c);
        }
    }
    out.push(u8::from(a["limit_category_withheld"].as_bool().unwrap()));
    match a["successor"].as_str() {
        None => out.push(0),
        Some(key) => {
            out.push(1);
            text(&mut out, key);
        }
    }
    match a["declaration"].as_str() {
        None => out.push(0),
        Some(_) => {
            out.push(1);
            hex32(&mut out, &a["declaration"]);
        }
    }
    ids(&mut out, &a["decided_by"]);
    let conflicts = a["conflicts"].as_array().unwrap();
    out.extend_from_slice(&(conflicts.len() as u32).to_le_bytes());
    for c in conflicts {
        let kind = index(&KINDS, &c["kind"]);
        out.push(kind);
        match kind {
            0 | 1 => {
                text(&mut out, c["member"].as_str().unwrap());
                ids(&mut out, &c["events"]);
            }
            2 => {
                text(&mut out, c["member"].as_str().unwrap());
                text(&mut out, c["field"].as_str().unwrap());
                ids(&mut out, &c["events"]);
            }
            3 => {
                hex32(&mut out, &c["target"]);
                ids(&mut out, &c["events"]);
            }
            _ => {
                hex32(&mut out, &c["card"]);
                let members = c["members"].as_array().unwrap();
                out.extend_from_slice(&(members.len() as u32).to_le_bytes());
                for m in members {
                    text(&mut out, m.as_str().unwrap());
                }
            }
        }
    }
    out.extend_from_slice(&a["knowledge"]["as_of"].as_u64().unwrap().to_le_bytes());
    shikaku_core::hex::encode(blake3::hash(&out).as_bytes())
}

#[test]
fn an_answer_hash_can_be_recomputed_by_hand_from_the_answer() {
    // Proves issue 12 item 5 for the answer hash: from the JSON answer and EVENTS.md alone, the
    // hash a check record carries is recomputed — for answers with coverage ends, copay, a
    // withheld limit, successors, declarations and conflicts (the scenario stories).
    use crate::story::{card, d, employer_a, employer_b, member, person, Story};
    let (a, b) = (employer_a(), employer_b());
    let mut s = Story::new();
    s.on("2025-04-01");
    let old = member(a, "1", 0);
    let new = member(b, "2", 0);
    s.enroll(&old, person("佐藤 花子", "1980-01-01"), None, "2020-04-01", 3);
    s.insurer(
        a,
        EventBody::LimitCategorySet {
            member: old.clone(),
            effective: d("2020-04-01"),
            category: "A03".into(),
        },
    );
    s.link(card("c"), &old);
    s.on("2025-06-01");
    s.insurer(
        a,
        EventBody::CoverageEnded {
            member: old.clone(),
            loss_date: d("2025-05-16"),
            reason: shikaku_core::EndReason::JobChange,
        },
    );
    s.enroll(&new, person("佐藤 花子", "1980-01-01"), None, "2025-05-16", 3);
    s.link(card("c"), &new);
    let twice = member(a, "9", 0);
    s.enroll(&twice, person("高橋 誠", "1970-01-01"), None, "2024-01-01", 3);
    s.enroll(&twice, person("高橋 誠", "1970-01-01"), None, "2024-06-01", 2);
    let mut checked = 0;
    for (query, day) in [
        (CheckQuery::Member(old.clone()), "2025-05-01"),
        (CheckQuery::Member(old.clone()), "2025-05-20"),
        (CheckQuery::Card(card("c")), "2025-05-20"),
        (CheckQuery::Member(twice.clone()), "2024-07-01"),
        (CheckQuery::Member(member(a, "404", 0)), "2024-07-01"),
    ] {
        let answer = s.answer(&query, day, None);
        let json = serde_json::to_value(&answer).unwrap();
        assert_eq!(answer_hash_by_hand(&json), answer.hash().to_string(), "{json}");
        checked += 1;
    }
    assert_eq!(checked, 5);
}

/// A member key's compact bytes (LOG-FORMAT.md, "Projection digest").
fn compact(k: &MemberKey) -> Vec<u8> {
    let mut out = k.insurer.value().to_le_bytes().to_vec();
    out.push(k.branch);
    out.push(k.symbol.len() as u8);
    out.extend_from_slice(k.symbol.as_bytes());
    out.extend_from_slice(k.number.as_bytes());
    out
}

/// The projection digest of a set of events, computed by the rules of LOG-FORMAT.md alone.
fn digest_by_hand(events: &[shikaku_core::SignedEvent]) -> [u8; 32] {
    use std::collections::{BTreeMap, BTreeSet};
    type Marker = (u64, [u8; 32], u8, i32);
    /// (hlc, id, prefix, tag, a, b)
    type Fact = (u64, [u8; 32], Vec<u8>, u8, i64, i64);
    /// (hlc, id, member key, state)
    type Link = (u64, [u8; 32], Vec<u8>, u8);
    let mut members: BTreeMap<Vec<u8>, Vec<Fact>> = BTreeMap::new();
    let mut cards: BTreeMap<[u8; 32], Vec<Link>> = BTreeMap::new();
    let mut voids: BTreeMap<[u8; 32], Vec<Marker>> = BTreeMap::new();
    let mut declarations: BTreeMap<CheckQuery, Vec<Marker>> = BTreeMap::new();
    let mut resolutions: BTreeMap<[u8; 32], Vec<Marker>> = BTreeMap::new();
    let mut checks: BTreeMap<[u8; 32], (u64, u8)> = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for e in events {
        if !seen.insert(e.id()) {
            continue;
        }
        let (hlc, id) = (e.event().hlc.0, e.id().0);
        let mut fact = |m: &MemberKey, prefix: Vec<u8>, tag: u8, a: i64, b: i64| {
            members.entry(compact(m)).or_default().push((hlc, id, prefix, tag, a, b));
        };
        use EventBody::*;
        match &e.event().body {
            MemberRegistered { member, person, relationship } => {
                let (prefix, dependant) = match relationship {
                    Relationship::Insured => (vec![], 0),
                    Relationship::Dependant { insured } => {
                        members.entry(compact(insured)).or_default();
                        (compact(insured), 1)
                    }
                };
                members.entry(compact(member)).or_default().push((
                    hlc,
                    id,
                    prefix,
                    0,
                    i64::from(person.birth_date.0),
                    dependant,
                ));
            }
            CoverageStarted { member, start, copay_tenths, .. } => {
                fact(member, vec![], 1, i64::from(start.0), i64::from(*copay_tenths))
            }
            CoverageEnded { member, loss_date, reason } => {
                fact(member, vec![], 2, i64::from(loss_date.0), *reason as i64)
            }
            CopayRatioSet { member, effective, copay_tenths } => {
                fact(member, vec![], 3, i64::from(effective.0), i64::from(*copay_tenths))
            }
            LimitCategorySet { member, effective, category } => {
                let b = category.as_bytes();
                fact(
                    member,
                    vec![],
                    4,
                    i64::from(effective.0),
                    i64::from(u32::from_le_bytes([b[0], b[1], b[2], 0])),
                )
            }
            DemographicsChanged { member, .. }
            | DemographicsSealed { member, .. }
            | MemberErased { member, .. } => fact(member, vec![], 5, 0, 0),
            // Sealed: birth date and relationship unknown until opened (EVENTS.md v2).
            MemberSealed { member, .. } => fact(member, vec![], 0, i64::from(i32::MIN), 2),
            CardLinked { card, member }
            | CardUnlinked { card, member }
            | WrongPersonLinkageRevoked { card, member, .. } => {
                let state = match &e.event().body {
                    CardLinked { .. } => 0,
                    CardUnlinked { .. } => 1,
                    _ => 2,
                };
                fact(member, card.0.to_vec(), 6, state, 0);
                cards.entry(card.0).or_default().push((hlc, id, compact(member), state as u8));
            }
            ConsentGiven { member } => fact(member, vec![], 7, 1, 0),
            ConsentWithdrawn { member } => fact(member, vec![], 7, 0, 0),
            EventVoided { target, .. } => voids.entry(target.0).or_default().push((hlc, id, 0, 0)),
            EventSuperseded { target, .. } => {
                voids.entry(target.0).or_default().push((hlc, id, 1, 0))
            }
            SelfDeclarationRecorded { query, declared_start, .. } => {
                declarations.entry(query.clone()).or_default().push((hlc, id, 0, declared_start.0))
            }
            SelfDeclarationResolved { declaration, outcome, .. } => {
                resolutions.entry(declaration.0).or_default().push((
                    hlc,
                    id,
                    u8::from(*outcome == shikaku_core::DeclarationOutcome::Confirmed),
                    0,
                ))
            }
            CheckPerformed { code, .. } => {
                checks.insert(id, (hlc, *code as u8));
            }
        }
    }
    let mut h = blake3::Hasher::new();
    h.update(b"shikaku/projection/v2");
    for (key, mut facts) in members {
        facts.sort_by_key(|f| (f.0, f.1));
        h.update(&(key.len() as u32).to_le_bytes());
        h.update(&key);
        h.update(&(facts.len() as u32).to_le_bytes());
        for (hlc, id, prefix, tag, a, b) in facts {
            h.update(&hlc.to_le_bytes());
            h.update(&id);
            h.update(&prefix);
            h.update(&[tag]);
            h.update(&a.to_le_bytes());
            h.update(&b.to_le_bytes());
        }
    }
    for (token, mut links) in cards {
        links.sort_by_key(|l| (l.0, l.1));
        h.update(&token);
        for (hlc, id, key, state) in links {
            h.update(&hlc.to_le_bytes());
            h.update(&id);
            h.update(&key);
            h.update(&[state]);
        }
    }
    let markers = |h: &mut blake3::Hasher, mut list: Vec<Marker>| {
        list.sort_by_key(|m| (m.0, m.1));
        for (hlc, id, flag, day) in list {
            h.update(&hlc.to_le_bytes());
            h.update(&id);
            h.update(&[flag]);
            h.update(&day.to_le_bytes());
        }
    };
    for (target, list) in voids {
        h.update(b"void");
        h.update(&target);
        markers(&mut h, list);
    }
    for (query, list) in declarations {
        h.update(b"declaration");
        match &query {
            CheckQuery::Card(card) => {
                h.update(&[0]);
                h.update(&card.0);
            }
            CheckQuery::Member(m) => {
                let key = compact(m);
                h.update(&[1]);
                h.update(&(key.len() as u32).to_le_bytes());
                h.update(&key);
            }
        }
        markers(&mut h, list);
    }
    for (declaration, list) in resolutions {
        h.update(b"resolution");
        h.update(&declaration);
        markers(&mut h, list);
    }
    for (check, (hlc, code)) in checks {
        h.update(b"check");
        h.update(&check);
        h.update(&hlc.to_le_bytes());
        h.update(&[code]);
    }
    *h.finalize().as_bytes()
}

#[test]
fn a_projection_digest_can_be_recomputed_by_hand_from_the_events() {
    // Proves issue 12 item 5 for the projection digest: from the events and LOG-FORMAT.md
    // alone, `ledger digest`'s number is recomputed — over a generated world (every insurer
    // event type the generator writes), the golden vectors (every event type, voids,
    // declarations, resolutions, checks) and both together, in any order.
    let g = shikaku_gen::generate(&shikaku_gen::GenConfig::new(300, 12)).unwrap();
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../protocol/vectors/events-v1.json"
    ))
    .unwrap();
    let vectors: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    let golden: Vec<shikaku_core::SignedEvent> = vectors
        .iter()
        .map(|v| shikaku_cli::jsonl::decode(v["jsonl"].as_str().unwrap(), None).unwrap())
        .collect();
    let mut both: Vec<_> = golden.iter().chain(&g.events).cloned().collect();
    both.reverse();
    for events in [&g.events, &golden, &both] {
        let mut p = shikaku_core::Projection::new(shikaku_core::Replication::All);
        for e in events.iter() {
            p.apply(e);
        }
        assert_eq!(digest_by_hand(events), p.digest());
    }
}

#[test]
fn the_same_encoder_reproduces_every_schema_2_vector() {
    // EVENTS.md "Schema version 2": the sealed variants' layout (tags 16–18, `Sealed` as nonce
    // then a byte vector) and the id over schema version 2, from the specification alone.
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../protocol/vectors/events-v2.json"
    ))
    .unwrap();
    let vectors: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    let mut types = std::collections::BTreeSet::new();
    for v in &vectors {
        let event = shikaku_cli::jsonl::decode(v["jsonl"].as_str().unwrap(), None).unwrap();
        assert_eq!(event.schema_version(), 2);
        let ours = shikaku_core::hex::encode(&encode(event.event()));
        assert_eq!(ours, v["canonical_hex"].as_str().unwrap(), "vector {}", v["name"]);
        types.insert(event.event().body.type_name());
        let mut h = blake3::Hasher::new();
        h.update(&2u16.to_le_bytes());
        h.update(&encode(event.event()));
        assert_eq!(shikaku_core::hex::encode(h.finalize().as_bytes()), v["id"].as_str().unwrap());
    }
    assert_eq!(types.len(), 17, "{types:?}");
}

#[test]
fn the_same_encoder_reproduces_every_schema_3_vector() {
    // EVENTS.md "Schema version 3": the inner event's bytes followed by the operator's 8
    // bytes, and the id over schema version 3, from the specification alone.
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../protocol/vectors/events-v3.json"
    ))
    .unwrap();
    let vectors: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    assert!(!vectors.is_empty());
    for v in &vectors {
        let line: serde_json::Value = serde_json::from_str(v["jsonl"].as_str().unwrap()).unwrap();
        let event = shikaku_cli::jsonl::decode(v["jsonl"].as_str().unwrap(), None).unwrap();
        assert_eq!(event.schema_version(), 3);
        let mut ours = encode(event.event());
        ours.extend(shikaku_core::hex::decode(line["operator"].as_str().unwrap()).unwrap());
        assert_eq!(shikaku_core::hex::encode(&ours), v["canonical_hex"].as_str().unwrap());
        let mut h = blake3::Hasher::new();
        h.update(&3u16.to_le_bytes());
        h.update(&ours);
        assert_eq!(shikaku_core::hex::encode(h.finalize().as_bytes()), v["id"].as_str().unwrap());
    }
}
