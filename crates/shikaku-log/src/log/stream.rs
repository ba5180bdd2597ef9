//! The eventstore-style API: streams named after whom events are about, reads and optimistic
//! appends per stream, and catch-up subscriptions.

use super::*;

impl<D: Directory> Log<D> {
    /// The events of one stream, in log order.
    pub fn read_stream(&self, stream: &str) -> Result<Vec<SignedEvent>, LogError> {
        let mut out = Vec::new();
        let tag = stream_tag(stream);
        let start = self.stream_base.partition_point(|entry| *entry < (tag, 0));
        let base =
            self.stream_base[start..].iter().take_while(|(t, _)| *t == tag).map(|(_, seq)| seq);
        for &seq in base.chain(self.stream_tail.get(&tag).into_iter().flatten()) {
            let event = self.read(seq)?;
            if stream_of(&event) == stream {
                out.push(event);
            }
        }
        Ok(out)
    }

    /// The number of events in a stream (its version).
    pub fn stream_version(&self, stream: &str) -> Result<u64, LogError> {
        Ok(self.read_stream(stream)?.len() as u64)
    }

    /// Appends events to one stream if it is at the expected version (optimistic
    /// concurrency): a stale writer gets [`LogError::WrongExpectedVersion`], never a silent
    /// overwrite. Returns the stream's new version.
    pub fn append_to_stream(
        &mut self,
        stream: &str,
        expected: ExpectedVersion,
        events: &[SignedEvent],
    ) -> Result<u64, LogError> {
        for event in events {
            let actual = stream_of(event);
            if actual != stream {
                return Err(LogError::EventOutsideStream {
                    stream: stream.to_owned(),
                    actual,
                    event: event.id(),
                });
            }
        }
        let current = self.stream_version(stream)?;
        let ok = match expected {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => current == 0,
            ExpectedVersion::Exact(version) => current == version,
        };
        if !ok {
            return Err(LogError::WrongExpectedVersion {
                stream: stream.to_owned(),
                expected,
                current,
            });
        }
        let outcome = self.append(events)?;
        Ok(current + outcome.new as u64)
    }
}

/// The stream an event belongs to: its member key, else its card, else its clinic.
pub fn stream_of(signed: &SignedEvent) -> String {
    let mut out = String::new();
    write_stream(&mut out, signed);
    out
}

/// The stream of everything about the card or member a query names (the stream its check
/// records and the member's facts go to).
pub fn stream_of_query(query: &shikaku_core::CheckQuery) -> String {
    match query {
        shikaku_core::CheckQuery::Member(member) => format!("member:{member}"),
        shikaku_core::CheckQuery::Card(card) => format!("card:{card}"),
    }
}

/// Writes the stream name of an event into `out` (cleared first), without allocating when
/// `out` has room.
pub(super) fn write_stream(out: &mut String, signed: &SignedEvent) {
    use std::fmt::Write as _;
    out.clear();
    let _ = match signed.event().body.subject() {
        CheckQueryRef::Member(member) => write!(out, "member:{member}"),
        CheckQueryRef::Card(card) => write!(out, "card:{card}"),
    };
}

/// The stream tag stored in each record header: FNV-1a (32 bit) of the stream name. Tags
/// only narrow the search; streams are always confirmed by decoding the event.
pub(super) fn stream_tag(stream: &str) -> u32 {
    stream
        .bytes()
        .fold(0x811c_9dc5u32, |hash, byte| (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193))
}

/// A catch-up subscription: reads history from a position, then keeps up with new appends
/// ("live") — the runtime wakes it when the log's head moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subscription {
    next: u64,
}

/// One poll of a subscription.
#[derive(Debug)]
pub struct SubscriptionBatch {
    /// Events read, with their positions.
    pub events: Vec<(u64, SignedEvent)>,
    /// True when the subscription has caught up with the head (it is now live).
    pub live: bool,
}

impl Subscription {
    /// Starts at `position` (1 = the beginning).
    pub fn from(position: u64) -> Subscription {
        Subscription { next: position.max(1) }
    }

    /// The next position it will read.
    pub fn position(&self) -> u64 {
        self.next
    }

    /// Reads up to `max` events.
    pub fn poll<D: Directory>(
        &mut self,
        log: &Log<D>,
        max: usize,
    ) -> Result<SubscriptionBatch, LogError> {
        let events = log.read_from(self.next, max)?;
        if let Some((seq, _)) = events.last() {
            self.next = seq + 1;
        } else {
            self.next = self.next.max(log.head());
        }
        if events.len() < max {
            self.next = log.head();
        }
        Ok(SubscriptionBatch { live: self.next >= log.head(), events })
    }
}
