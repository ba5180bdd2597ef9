//! The clinic ↔ hub session's messages and their byte encoding (protocol version 1), exactly as
//! `protocol/SPEC.md` specifies them, plus the sans-IO frame splitter.
//!
//! A session is one QUIC bidirectional stream carrying frames: `u32 LE body length ‖ body`,
//! body = `u8 message type ‖ payload`. Every length and count is checked against the limits
//! below before anything is allocated; malformed input is a typed [`WireError`], never a panic.

use shikaku_core::event::{EventId, NodeId, Signature};
use shikaku_core::{InsurerNumber, Namespace};

/// Protocol version carried in `Hello` and `Welcome`.
pub const PROTOCOL_VERSION: u16 = 2;
/// The oldest protocol version still spoken (version 1: no key store messages).
pub const PROTOCOL_VERSION_MIN: u16 = 1;
/// ALPN identifier of this protocol version.
pub const ALPN: &[u8] = b"shikaku/1";
/// Largest frame body either side may ever send (a peer may ask for less in its handshake).
pub const FRAME_BYTES_MAX: u32 = 4 * 1024 * 1024;
/// Smallest frame limit a peer may ask for.
pub const FRAME_BYTES_FLOOR: u32 = 64 * 1024;
/// Events per `Events` frame.
pub const EVENTS_PER_FRAME_MAX: usize = 8192;
/// Ids per `Fetch` frame.
pub const FETCH_IDS_MAX: usize = 16_384;
/// Namespaces per `Hello` / `Welcome`.
pub const NAMESPACES_MAX: usize = 4096;
/// Member keys per `Hello` prefetch list.
pub const PREFETCH_MAX: usize = 4096;
/// Refusals per `Ack`.
pub const REFUSALS_MAX: usize = 8192;
/// Bytes of a text field (names, member keys, error messages).
pub const TEXT_BYTES_MAX: usize = 1024;
/// Most key store items in one `Keys` frame (and erasure orders in one `KeysFrom`).
pub const KEY_ITEMS_PER_FRAME_MAX: usize = 8192;
/// Largest key store item, in bytes.
pub const KEY_ITEM_BYTES_MAX: usize = shikaku_core::keystore::ITEM_BYTES_MAX;
/// Bytes of one event on the wire (`u16` schema version ‖ canonical bytes ‖ 64-byte signature).
pub const EVENT_WIRE_BYTES_MAX: usize = 2 + shikaku_core::event::EVENT_BYTES_MAX + 64;
/// Domain separation of receipt signatures.
pub const RECEIPT_CONTEXT: &[u8] = b"shikaku/receipt/v1";

/// A peer's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// A clinic or pharmacy node.
    Clinic,
    /// An insurer's hub.
    Hub,
}

impl Role {
    fn code(self) -> u8 {
        match self {
            Role::Clinic => 1,
            Role::Hub => 2,
        }
    }

    fn from_code(code: u8) -> Result<Role, WireError> {
        match code {
            1 => Ok(Role::Clinic),
            2 => Ok(Role::Hub),
            other => Err(WireError::BadRole(other)),
        }
    }

    /// `clinic` or `hub`.
    pub fn name(self) -> &'static str {
        match self {
            Role::Clinic => "clinic",
            Role::Hub => "hub",
        }
    }
}

/// Why a namespace asked for in `Hello` was not granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RefusalReason {
    /// Another clinic's namespace: clinics never see each other's patients.
    OtherClinic,
    /// An insurer this hub does not serve.
    NotServed,
    /// The event is in a namespace the sender may not write.
    NotWritable,
    /// The event's author or origin is not the sending node.
    WrongAuthor,
    /// The event failed decoding, validation or its signature.
    Invalid,
}

impl RefusalReason {
    /// Wire code.
    pub fn code(self) -> u8 {
        match self {
            RefusalReason::OtherClinic => 1,
            RefusalReason::NotServed => 2,
            RefusalReason::NotWritable => 3,
            RefusalReason::WrongAuthor => 4,
            RefusalReason::Invalid => 5,
        }
    }

    fn from_code(code: u8) -> Result<RefusalReason, WireError> {
        Ok(match code {
            1 => RefusalReason::OtherClinic,
            2 => RefusalReason::NotServed,
            3 => RefusalReason::NotWritable,
            4 => RefusalReason::WrongAuthor,
            5 => RefusalReason::Invalid,
            other => return Err(WireError::BadCode { what: "refusal reason", code: other }),
        })
    }

    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            RefusalReason::OtherClinic => "other_clinic",
            RefusalReason::NotServed => "not_served",
            RefusalReason::NotWritable => "not_writable",
            RefusalReason::WrongAuthor => "wrong_author",
            RefusalReason::Invalid => "invalid",
        }
    }
}

/// A namespace asked for in `Hello` (besides the clinic's own, which is implied).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subscription {
    /// The namespace.
    pub namespace: Namespace,
    /// A cursor for this namespace alone, when it differs from the session cursor (a new
    /// subscription: 0; events held without a receipt: `u64::MAX`, "unknown").
    pub cursor: Option<u64>,
}

/// The hub's signed statement of what it had sent to a clinic over every namespace of the
/// session (the clinic's own and those granted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Receipt {
    /// The hub that signs (from its certificate; not sent on the wire).
    pub hub: NodeId,
    /// The clinic it was sent to (from its certificate; not sent on the wire).
    pub clinic: NodeId,
    /// [`scope_digest`] of the namespaces covered.
    pub scope: [u8; 16],
    /// Hub log position: every event of those namespaces at or below it has been sent (or was
    /// already held by the clinic, by its cursor).
    pub position: u64,
    /// Events of those namespaces at or below `position`.
    pub count: u64,
    /// Negentropy fingerprint of those events' `(hlc, id)` items.
    pub fingerprint: [u8; 16],
    /// Whether `position` covered everything the hub held in them when signed (the clinic then
    /// compares its whole set with `count` and `fingerprint`).
    pub complete: bool,
    /// Hub physical time when signed, Unix ms.
    pub issued_ms: u64,
    /// ed25519 by the hub's node key over [`Receipt::signed_bytes`].
    pub signature: Signature,
}

impl Receipt {
    /// The bytes the signature covers: `"shikaku/receipt/v1"` ‖ hub ‖ clinic ‖ the wire fields
    /// before the signature.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(RECEIPT_CONTEXT.len() + 128);
        out.extend_from_slice(RECEIPT_CONTEXT);
        out.extend_from_slice(&self.hub.0);
        out.extend_from_slice(&self.clinic.0);
        self.encode_unsigned(&mut out);
        out
    }

    fn encode_unsigned(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.scope);
        out.extend_from_slice(&self.position.to_le_bytes());
        out.extend_from_slice(&self.count.to_le_bytes());
        out.extend_from_slice(&self.fingerprint);
        out.push(u8::from(self.complete));
        out.extend_from_slice(&self.issued_ms.to_le_bytes());
    }

    /// Encodes the wire fields (everything but `hub` and `clinic`).
    pub fn encode(&self, out: &mut Vec<u8>) {
        self.encode_unsigned(out);
        out.extend_from_slice(&self.signature.0);
    }

    /// Decodes the wire fields; `hub` and `clinic` are left zero for the receiver to fill in
    /// from the certificates before verifying.
    pub fn decode(reader: &mut Reader<'_>) -> Result<Receipt, WireError> {
        Ok(Receipt {
            hub: NodeId([0; 32]),
            clinic: NodeId([0; 32]),
            scope: reader.array("receipt scope")?,
            position: reader.u64("receipt position")?,
            count: reader.u64("receipt count")?,
            fingerprint: reader.array("receipt fingerprint")?,
            complete: reader.bool("receipt complete")?,
            issued_ms: reader.u64("receipt time")?,
            signature: Signature(reader.array("receipt signature")?),
        })
    }
}

/// The digest naming a set of namespaces in a receipt: the first 16 bytes of blake3 over their
/// encodings, sorted and de-duplicated.
pub fn scope_digest(namespaces: &[Namespace]) -> [u8; 16] {
    let sorted = scope_order(namespaces);
    let mut bytes = Vec::with_capacity(sorted.len() * 33);
    for ns in &sorted {
        put_namespace(&mut bytes, ns);
    }
    let mut out = [0u8; 16];
    out.copy_from_slice(&blake3::hash(&bytes).as_bytes()[..16]);
    out
}

/// A session's namespaces in the order the scope digest reads them (and the clinic's receipt
/// file stores them): de-duplicated, by tag, then insurer number, then node id.
pub fn scope_order(namespaces: &[Namespace]) -> Vec<Namespace> {
    let mut sorted = namespaces.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    sorted
}

/// One refused event in an `Ack`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Index of the event in the `Events` frame it came in.
    pub index: u32,
    /// Why.
    pub reason: RefusalReason,
    /// Details (the typed error's message).
    pub detail: String,
}

/// Error codes of `Error` frames, also used as QUIC stream reset / connection close codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// A frame could not be decoded.
    Malformed,
    /// A frame was larger than the limit.
    TooLarge,
    /// A message arrived in a state where it is not allowed.
    Unexpected,
    /// The handshake was refused (version, identity, role).
    Handshake,
    /// A limit other than the frame size was exceeded.
    Limit,
    /// The node is shutting down.
    Shutdown,
    /// The node failed internally (storage).
    Internal,
}

impl ErrorCode {
    /// Wire code.
    pub fn code(self) -> u16 {
        match self {
            ErrorCode::Malformed => 1,
            ErrorCode::TooLarge => 2,
            ErrorCode::Unexpected => 3,
            ErrorCode::Handshake => 4,
            ErrorCode::Limit => 5,
            ErrorCode::Shutdown => 6,
            ErrorCode::Internal => 7,
        }
    }

    /// From a wire code; `None` for codes this version does not know.
    pub fn from_code(code: u16) -> Option<ErrorCode> {
        Some(match code {
            1 => ErrorCode::Malformed,
            2 => ErrorCode::TooLarge,
            3 => ErrorCode::Unexpected,
            4 => ErrorCode::Handshake,
            5 => ErrorCode::Limit,
            6 => ErrorCode::Shutdown,
            7 => ErrorCode::Internal,
            _ => return None,
        })
    }
}

/// The first frame (0x01), clinic → hub: who I am and what I want.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// Protocol version the clinic speaks.
    pub version: u16,
    /// Sender's role (must match its certificate, which also names its node).
    pub role: Role,
    /// Largest frame body the sender accepts.
    pub frame_max: u32,
    /// Session cursor: hub log position up to which the clinic holds every event of its
    /// namespaces (from its last receipt); 0 = none.
    pub cursor: u64,
    /// Namespaces asked for besides the clinic's own.
    pub subscriptions: Vec<Subscription>,
    /// Members of insurers not subscribed whose events the clinic wants (appointments).
    pub prefetch: Vec<String>,
}

/// The handshake answer (0x02), hub → clinic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    /// Protocol version the hub speaks.
    pub version: u16,
    /// Largest frame body the hub accepts.
    pub frame_max: u32,
    /// One verdict per subscription of the `Hello`, in order: `None` granted, else why not.
    pub verdicts: Vec<Option<RefusalReason>>,
    /// Highest origin sequence of the clinic's own events that the hub holds (0 = none).
    pub own_seq: u64,
}

/// The hub's acknowledgement (0x05) that the clinic's events of one `Events` frame are durable
/// (or refused).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    /// Highest origin sequence of the clinic's events now held by the hub.
    pub own_seq: u64,
    /// Events newly stored.
    pub stored: u32,
    /// Events refused.
    pub refused: Vec<Refusal>,
}

/// A message of protocol version 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// 0x01, clinic → hub, first frame: who I am and what I want.
    Hello(Hello),
    /// 0x02, hub → clinic: the handshake answer.
    Welcome(Welcome),
    /// 0x03, both ways: signed events, each as `u16 schema ‖ canonical ‖ signature`.
    Events {
        /// The events' wire bytes.
        events: Vec<Vec<u8>>,
    },
    /// 0x04, hub → clinic: a completeness receipt.
    Receipt(Receipt),
    /// 0x05, hub → clinic: the clinic's events of one `Events` frame are durable (or refused).
    Ack(Ack),
    /// 0x06, clinic → hub: a Negentropy v1 message for one namespace (the clinic initiates).
    Reconcile {
        /// The namespace.
        namespace: Namespace,
        /// The Negentropy message.
        message: Vec<u8>,
    },
    /// 0x07, hub → clinic: the Negentropy answer.
    ReconcileReply {
        /// The namespace.
        namespace: Namespace,
        /// The Negentropy message.
        message: Vec<u8>,
    },
    /// 0x08, clinic → hub: send me these events of a namespace.
    Fetch {
        /// The namespace.
        namespace: Namespace,
        /// Event ids.
        ids: Vec<EventId>,
    },
    /// 0x0A, clinic → hub (protocol 2): send me the key store items after `since` of store
    /// `store`; here are the erasure orders I hold (the erased set is merged both ways).
    KeysFrom {
        /// The hub key store the clinic last received from (zeros: none).
        store: [u8; 16],
        /// The last item number received from it.
        since: u64,
        /// Erasure orders held by the clinic (event wire forms).
        erasures: Vec<Vec<u8>>,
    },
    /// 0x0B, hub → clinic (protocol 2): key store items (KEYSTORE.md) for the clinic's granted
    /// insurers, in item order.
    Keys {
        /// The hub's key store identity.
        store: [u8; 16],
        /// The number of the last item included (or the `since` asked for, when none).
        last: u64,
        /// Whether more items follow (ask again from `last`).
        more: bool,
        /// Encoded items.
        items: Vec<Vec<u8>>,
    },
    /// 0x09, either way, last frame before the stream closes: what went wrong.
    Error {
        /// Error code (see [`ErrorCode`]).
        code: u16,
        /// Human-readable detail.
        message: String,
    },
}

impl Message {
    /// The message type byte.
    pub fn type_code(&self) -> u8 {
        match self {
            Message::Hello(Hello { .. }) => 0x01,
            Message::Welcome(Welcome { .. }) => 0x02,
            Message::Events { .. } => 0x03,
            Message::Receipt(_) => 0x04,
            Message::Ack(Ack { .. }) => 0x05,
            Message::Reconcile { .. } => 0x06,
            Message::ReconcileReply { .. } => 0x07,
            Message::Fetch { .. } => 0x08,
            Message::Error { .. } => 0x09,
            Message::KeysFrom { .. } => 0x0A,
            Message::Keys { .. } => 0x0B,
        }
    }

    /// A short name for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Message::Hello(Hello { .. }) => "Hello",
            Message::Welcome(Welcome { .. }) => "Welcome",
            Message::Events { .. } => "Events",
            Message::Receipt(_) => "Receipt",
            Message::Ack(Ack { .. }) => "Ack",
            Message::Reconcile { .. } => "Reconcile",
            Message::ReconcileReply { .. } => "ReconcileReply",
            Message::Fetch { .. } => "Fetch",
            Message::Error { .. } => "Error",
            Message::KeysFrom { .. } => "KeysFrom",
            Message::Keys { .. } => "Keys",
        }
    }

    /// The whole frame: `u32 LE body length ‖ type ‖ payload`.
    pub fn to_frame(&self) -> Vec<u8> {
        let mut out = vec![0, 0, 0, 0, self.type_code()];
        match self {
            Message::Hello(Hello { version, role, frame_max, cursor, subscriptions, prefetch }) => {
                out.extend_from_slice(&version.to_le_bytes());
                out.push(role.code());
                out.extend_from_slice(&frame_max.to_le_bytes());
                out.extend_from_slice(&cursor.to_le_bytes());
                put_count(&mut out, subscriptions.len());
                for s in subscriptions {
                    put_namespace(&mut out, &s.namespace);
                }
                let overrides: Vec<(usize, u64)> = subscriptions
                    .iter()
                    .enumerate()
                    .filter_map(|(i, s)| s.cursor.map(|c| (i, c)))
                    .collect();
                put_count(&mut out, overrides.len());
                for (index, cursor) in overrides {
                    put_count(&mut out, index);
                    out.extend_from_slice(&cursor.to_le_bytes());
                }
                put_count(&mut out, prefetch.len());
                for key in prefetch {
                    put_text(&mut out, key);
                }
            }
            Message::Welcome(Welcome { version, frame_max, verdicts, own_seq }) => {
                out.extend_from_slice(&version.to_le_bytes());
                out.extend_from_slice(&frame_max.to_le_bytes());
                put_count(&mut out, verdicts.len());
                let refused: Vec<(usize, RefusalReason)> =
                    verdicts.iter().enumerate().filter_map(|(i, v)| v.map(|r| (i, r))).collect();
                put_count(&mut out, refused.len());
                for (index, reason) in refused {
                    put_count(&mut out, index);
                    out.push(reason.code());
                }
                out.extend_from_slice(&own_seq.to_le_bytes());
            }
            Message::Events { events } => {
                put_count(&mut out, events.len());
                for e in events {
                    put_bytes(&mut out, e);
                }
            }
            Message::Receipt(receipt) => receipt.encode(&mut out),
            Message::Ack(Ack { own_seq, stored, refused }) => {
                out.extend_from_slice(&own_seq.to_le_bytes());
                out.extend_from_slice(&stored.to_le_bytes());
                put_count(&mut out, refused.len());
                for r in refused {
                    out.extend_from_slice(&r.index.to_le_bytes());
                    out.push(r.reason.code());
                    put_text(&mut out, &r.detail);
                }
            }
            Message::Reconcile { namespace, message }
            | Message::ReconcileReply { namespace, message } => {
                put_namespace(&mut out, namespace);
                put_bytes(&mut out, message);
            }
            Message::Fetch { namespace, ids } => {
                put_namespace(&mut out, namespace);
                put_count(&mut out, ids.len());
                for id in ids {
                    out.extend_from_slice(&id.0);
                }
            }
            Message::Error { code, message } => {
                out.extend_from_slice(&code.to_le_bytes());
                put_text(&mut out, message);
            }
            Message::KeysFrom { store, since, erasures } => {
                out.extend_from_slice(store);
                out.extend_from_slice(&since.to_le_bytes());
                put_count(&mut out, erasures.len());
                for e in erasures {
                    put_bytes(&mut out, e);
                }
            }
            Message::Keys { store, last, more, items } => {
                out.extend_from_slice(store);
                out.extend_from_slice(&last.to_le_bytes());
                out.push(u8::from(*more));
                put_count(&mut out, items.len());
                for item in items {
                    put_bytes(&mut out, item);
                }
            }
        }
        let body = u32::try_from(out.len() - 4).unwrap_or(u32::MAX);
        out[..4].copy_from_slice(&body.to_le_bytes());
        out
    }

    /// Decodes a frame body (without its length prefix).
    pub fn decode(body: &[u8]) -> Result<Message, WireError> {
        let mut r = Reader::new(body);
        let kind = r.u8("message type")?;
        let message = match kind {
            0x01 => {
                let version = r.u16("version")?;
                let role = Role::from_code(r.u8("role")?)?;
                let frame_max = r.u32("frame limit")?;
                let cursor = r.u64("cursor")?;
                let n = r.count("subscriptions", NAMESPACES_MAX)?;
                let mut subscriptions = Vec::with_capacity(n);
                for _ in 0..n {
                    subscriptions.push(Subscription { namespace: r.namespace()?, cursor: None });
                }
                let overrides = r.count("cursor overrides", n)?;
                let mut next = 0;
                for _ in 0..overrides {
                    let index = r.u32("override index")? as usize;
                    let cursor = r.u64("override cursor")?;
                    // Strictly ascending indexes: one encoding per message.
                    match subscriptions.get_mut(index) {
                        Some(s) if index >= next => s.cursor = Some(cursor),
                        _ => return Err(WireError::BadIndex { what: "cursor override", index }),
                    }
                    next = index + 1;
                }
                let n = r.count("prefetch members", PREFETCH_MAX)?;
                let mut prefetch = Vec::with_capacity(n);
                for _ in 0..n {
                    prefetch.push(r.text("prefetch member")?);
                }
                Message::Hello(Hello { version, role, frame_max, cursor, subscriptions, prefetch })
            }
            0x02 => {
                let version = r.u16("version")?;
                let frame_max = r.u32("frame limit")?;
                let n = r.u32("subscriptions answered")? as usize;
                if n > NAMESPACES_MAX {
                    return Err(WireError::TooMany {
                        what: "subscriptions answered",
                        count: n as u64,
                        max: NAMESPACES_MAX,
                    });
                }
                let mut verdicts = vec![None; n];
                let refused = r.count("refusals", n)?;
                let mut next = 0;
                for _ in 0..refused {
                    let index = r.u32("refused index")? as usize;
                    let reason = RefusalReason::from_code(r.u8("refusal reason")?)?;
                    match verdicts.get_mut(index) {
                        Some(slot) if index >= next => *slot = Some(reason),
                        _ => {
                            return Err(WireError::BadIndex { what: "refused subscription", index })
                        }
                    }
                    next = index + 1;
                }
                let own_seq = r.u64("own sequence")?;
                Message::Welcome(Welcome { version, frame_max, verdicts, own_seq })
            }
            0x03 => {
                let n = r.count("events", EVENTS_PER_FRAME_MAX)?;
                let mut events = Vec::with_capacity(n);
                for _ in 0..n {
                    events.push(r.bytes("event", EVENT_WIRE_BYTES_MAX)?.to_vec());
                }
                Message::Events { events }
            }
            0x04 => Message::Receipt(Receipt::decode(&mut r)?),
            0x05 => {
                let own_seq = r.u64("own sequence")?;
                let stored = r.u32("stored")?;
                let n = r.count("refusals", REFUSALS_MAX)?;
                let mut refused = Vec::with_capacity(n);
                for _ in 0..n {
                    refused.push(Refusal {
                        index: r.u32("refusal index")?,
                        reason: RefusalReason::from_code(r.u8("refusal reason")?)?,
                        detail: r.text("refusal detail")?,
                    });
                }
                Message::Ack(Ack { own_seq, stored, refused })
            }
            0x06 | 0x07 => {
                let namespace = r.namespace()?;
                let message = r.bytes("negentropy message", FRAME_BYTES_MAX as usize)?.to_vec();
                if kind == 0x06 {
                    Message::Reconcile { namespace, message }
                } else {
                    Message::ReconcileReply { namespace, message }
                }
            }
            0x08 => {
                let namespace = r.namespace()?;
                let n = r.count("fetch ids", FETCH_IDS_MAX)?;
                let mut ids = Vec::with_capacity(n);
                for _ in 0..n {
                    ids.push(EventId(r.array("event id")?));
                }
                Message::Fetch { namespace, ids }
            }
            0x09 => {
                Message::Error { code: r.u16("error code")?, message: r.text("error message")? }
            }
            0x0A => {
                let store = r.array("key store id")?;
                let since = r.u64("key store position")?;
                let n = r.count("erasure orders", KEY_ITEMS_PER_FRAME_MAX)?;
                let mut erasures = Vec::with_capacity(n);
                for _ in 0..n {
                    erasures.push(r.bytes("erasure order", EVENT_WIRE_BYTES_MAX)?.to_vec());
                }
                Message::KeysFrom { store, since, erasures }
            }
            0x0B => {
                let store = r.array("key store id")?;
                let last = r.u64("key store position")?;
                let more = r.bool("more keys")?;
                let n = r.count("key items", KEY_ITEMS_PER_FRAME_MAX)?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(r.bytes("key item", KEY_ITEM_BYTES_MAX)?.to_vec());
                }
                Message::Keys { store, last, more, items }
            }
            other => return Err(WireError::UnknownMessage(other)),
        };
        if r.remaining() != 0 {
            return Err(WireError::TrailingBytes { message: message.name(), bytes: r.remaining() });
        }
        Ok(message)
    }
}

/// Whether `name` is a valid node name (the `<name>` of a certificate identity, SPEC.md):
/// 1–63 characters of `a-z`, `0-9` and `-`.
pub fn is_valid_node_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Encodes a namespace: tag `1` ‖ u32 LE insurer number, or tag `2` ‖ 32-byte clinic node id.
pub fn put_namespace(out: &mut Vec<u8>, ns: &Namespace) {
    match ns {
        Namespace::Insurer(insurer) => {
            out.push(1);
            out.extend_from_slice(&insurer.value().to_le_bytes());
        }
        Namespace::Clinic(node) => {
            out.push(2);
            out.extend_from_slice(&node.0);
        }
    }
}

fn put_count(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(&u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes());
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_count(out, bytes.len());
    out.extend_from_slice(bytes);
}

fn put_text(out: &mut Vec<u8>, text: &str) {
    // Text longer than the limit is cut at a character boundary, never sent over-long.
    let mut end = text.len().min(TEXT_BYTES_MAX);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let bytes = &text.as_bytes()[..end];
    out.extend_from_slice(&u16::try_from(bytes.len()).unwrap_or(0).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// Why bytes are not a valid frame or message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// The frame ends inside a field.
    #[error("frame ends inside {0}")]
    Truncated(&'static str),
    /// Bytes left after the message.
    #[error("{bytes} unexpected bytes after a {message} message")]
    TrailingBytes {
        /// The message.
        message: &'static str,
        /// How many.
        bytes: usize,
    },
    /// An unknown message type.
    #[error("unknown message type {0:#04x}")]
    UnknownMessage(u8),
    /// A frame body over the limit.
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    FrameTooLarge {
        /// Announced length.
        len: u64,
        /// The limit.
        max: u32,
    },
    /// An empty frame body.
    #[error("empty frame")]
    EmptyFrame,
    /// A count or length over its limit.
    #[error("{what}: {count} exceeds the limit of {max}")]
    TooMany {
        /// Which field.
        what: &'static str,
        /// Announced.
        count: u64,
        /// The limit.
        max: usize,
    },
    /// An index that names no element, or is not above the previous one.
    #[error("{what} index {index} is out of range or not ascending")]
    BadIndex {
        /// Which field.
        what: &'static str,
        /// The index.
        index: usize,
    },
    /// An unknown role code.
    #[error("unknown role code {0}")]
    BadRole(u8),
    /// An unknown namespace tag.
    #[error("unknown namespace tag {0}")]
    BadNamespaceTag(u8),
    /// An insurer number that fails its check digit.
    #[error("namespace insurer number {0} is not valid")]
    BadInsurer(u32),
    /// An unknown code in an enumerated field.
    #[error("unknown {what} code {code}")]
    BadCode {
        /// Which field.
        what: &'static str,
        /// The code.
        code: u8,
    },
    /// Text that is not UTF-8.
    #[error("{0} is not UTF-8")]
    BadUtf8(&'static str),
}

impl WireError {
    /// The error code an `Error` frame for this carries.
    pub fn code(&self) -> ErrorCode {
        match self {
            WireError::FrameTooLarge { .. } => ErrorCode::TooLarge,
            WireError::TooMany { .. } => ErrorCode::Limit,
            _ => ErrorCode::Malformed,
        }
    }
}

/// A bounds-checked little-endian reader.
#[derive(Debug)]
pub struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Reads `bytes` from the start.
    pub fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { bytes }
    }

    /// Bytes not yet read.
    pub fn remaining(&self) -> usize {
        self.bytes.len()
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], WireError> {
        if self.bytes.len() < n {
            return Err(WireError::Truncated(what));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    /// A fixed-size array.
    pub fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], WireError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    /// A byte.
    pub fn u8(&mut self, what: &'static str) -> Result<u8, WireError> {
        Ok(self.array::<1>(what)?[0])
    }

    /// A boolean byte (0 or 1).
    pub fn bool(&mut self, what: &'static str) -> Result<bool, WireError> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            code => Err(WireError::BadCode { what, code }),
        }
    }

    /// A u16 LE.
    pub fn u16(&mut self, what: &'static str) -> Result<u16, WireError> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }

    /// A u32 LE.
    pub fn u32(&mut self, what: &'static str) -> Result<u32, WireError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    /// A u64 LE.
    pub fn u64(&mut self, what: &'static str) -> Result<u64, WireError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A u32 count, refused above `max` (and above what the remaining bytes could hold).
    fn count(&mut self, what: &'static str, max: usize) -> Result<usize, WireError> {
        let n = self.u32(what)?;
        let n_usize = usize::try_from(n).unwrap_or(usize::MAX);
        if n_usize > max {
            return Err(WireError::TooMany { what, count: u64::from(n), max });
        }
        if n_usize > self.remaining() {
            return Err(WireError::Truncated(what));
        }
        Ok(n_usize)
    }

    /// u32 length ‖ bytes, refused above `max`.
    fn bytes(&mut self, what: &'static str, max: usize) -> Result<&'a [u8], WireError> {
        let n = self.count(what, max)?;
        self.take(n, what)
    }

    /// u16 length ‖ UTF-8.
    fn text(&mut self, what: &'static str) -> Result<String, WireError> {
        let n = usize::from(self.u16(what)?);
        if n > TEXT_BYTES_MAX {
            return Err(WireError::TooMany { what, count: n as u64, max: TEXT_BYTES_MAX });
        }
        let bytes = self.take(n, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| WireError::BadUtf8(what))
    }

    /// A namespace.
    pub fn namespace(&mut self) -> Result<Namespace, WireError> {
        match self.u8("namespace tag")? {
            1 => {
                let value = self.u32("insurer number")?;
                InsurerNumber::new(value)
                    .map(Namespace::Insurer)
                    .map_err(|_| WireError::BadInsurer(value))
            }
            2 => Ok(Namespace::Clinic(NodeId(self.array("clinic node id")?))),
            other => Err(WireError::BadNamespaceTag(other)),
        }
    }
}

/// Splits a byte stream into frame bodies, refusing any frame over `max` before buffering it.
#[derive(Debug)]
pub struct FrameSplitter {
    buf: Vec<u8>,
    max: u32,
}

impl FrameSplitter {
    /// A splitter accepting frame bodies up to `max` bytes (at most [`FRAME_BYTES_MAX`]).
    pub fn new(max: u32) -> FrameSplitter {
        FrameSplitter { buf: Vec::new(), max: max.min(FRAME_BYTES_MAX) }
    }

    /// Appends bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete frame body, if any. An oversized announced length is an error as soon
    /// as its four bytes arrive.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, WireError> {
        if self.buf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_le_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]);
        if len > self.max {
            return Err(WireError::FrameTooLarge { len: u64::from(len), max: self.max });
        }
        if len == 0 {
            return Err(WireError::EmptyFrame);
        }
        let total = 4 + len as usize;
        if self.buf.len() < total {
            return Ok(None);
        }
        let body = self.buf[4..total].to_vec();
        self.buf.drain(..total);
        Ok(Some(body))
    }

    /// Bytes buffered but not yet returned.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }
}

/// Encodes a signed event for the wire: `u16 LE schema version ‖ canonical bytes ‖ signature`.
pub fn event_to_wire(schema_version: u16, canonical: &[u8], signature: &Signature) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + canonical.len() + 64);
    out.extend_from_slice(&schema_version.to_le_bytes());
    out.extend_from_slice(canonical);
    out.extend_from_slice(&signature.0);
    out
}

/// Splits an event's wire bytes into schema version, canonical bytes and signature.
pub fn event_from_wire(bytes: &[u8]) -> Result<(u16, &[u8], Signature), WireError> {
    if bytes.len() < 2 + 1 + 64 {
        return Err(WireError::Truncated("event"));
    }
    let version = u16::from_le_bytes([bytes[0], bytes[1]]);
    let (canonical, signature) = bytes[2..].split_at(bytes.len() - 2 - 64);
    let mut sig = [0u8; 64];
    sig.copy_from_slice(signature);
    Ok((version, canonical, Signature(sig)))
}
