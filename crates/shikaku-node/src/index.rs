//! Per-namespace indexes a node keeps beside its log: the namespace's events in log-position
//! order (for cursors and prefix fingerprints) and in `(hlc, id)` order (for reconciliation),
//! with a running fingerprint of the whole set.

use shikaku_core::{EventId, Hlc};
use shikaku_protocol::negentropy::{Accumulator, Item};

/// One namespace's events as held by this node.
#[derive(Debug, Clone)]
pub struct NsIndex {
    /// `(log position, item)` in position order.
    by_position: Vec<(u64, Item)>,
    /// Items sorted by `(hlc, id)` (up to `pending`).
    sorted: Vec<Item>,
    /// Items added since `sorted` was last merged.
    pending: Vec<Item>,
    /// Fingerprint of everything held.
    acc: Accumulator,
}

impl Default for NsIndex {
    fn default() -> NsIndex {
        NsIndex::new()
    }
}

impl NsIndex {
    /// An empty index.
    pub const fn new() -> NsIndex {
        NsIndex {
            by_position: Vec::new(),
            sorted: Vec::new(),
            pending: Vec::new(),
            acc: Accumulator::ZERO,
        }
    }

    /// Records an event stored at `position` (positions only grow).
    pub fn add(&mut self, position: u64, hlc: Hlc, id: EventId) {
        debug_assert!(
            position > self.head(),
            "positions only grow ({position} after {})",
            self.head()
        );
        let item = Item { timestamp: hlc.0, id: id.0 };
        self.by_position.push((position, item));
        self.acc.add(&item.id);
        match self.sorted.last() {
            Some(last) if *last >= item || !self.pending.is_empty() => self.pending.push(item),
            _ => self.sorted.push(item),
        }
    }

    /// Events held.
    pub fn len(&self) -> u64 {
        self.acc.count()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.acc.count() == 0
    }

    /// Fingerprint and count of everything held.
    pub fn accumulator(&self) -> Accumulator {
        self.acc
    }

    /// The items sorted by `(hlc, id)`.
    pub fn sorted(&mut self) -> &[Item] {
        if !self.pending.is_empty() {
            self.sorted.append(&mut self.pending);
            self.sorted.sort_unstable();
            self.sorted.dedup();
        }
        &self.sorted
    }

    /// Entries in position order.
    pub fn by_position(&self) -> &[(u64, Item)] {
        &self.by_position
    }

    /// Index of the first entry with a position above `cursor`, and the accumulator of the
    /// entries before it.
    pub fn after_cursor(&self, cursor: u64) -> (usize, Accumulator) {
        let index = self.by_position.partition_point(|(p, _)| *p <= cursor);
        let mut acc = Accumulator::default();
        for (_, item) in &self.by_position[..index] {
            acc.add(&item.id);
        }
        (index, acc)
    }

    /// The last position held.
    pub fn head(&self) -> u64 {
        self.by_position.last().map_or(0, |(p, _)| *p)
    }
}
