//! Loss and duplicate accounting. Every room keeps the set of message ids (room offsets) that
//! were published to it, learnt from acks and deliveries. Every member keeps its join offset,
//! its cursor (the last id it received) and how many distinct messages after its join it got.
//! At the end a member's expected count is the number of room ids after its join offset;
//! what is missing is lost, what came twice (or went backwards) is duplicated. With
//! `--resume` members also keep the ids they received, so a loss can be split into
//! acknowledged messages (a broken promise) and messages whose sender never got an ack
//! (its connection broke, or Redis died, with the send in flight).

use std::collections::BTreeSet;
use std::ops::Bound;

use roomcast_protocol::MsgId;

/// Ids published to one room during the run.
#[derive(Default, Debug)]
pub struct RoomLedger {
    pub ids: BTreeSet<MsgId>,
    /// Ids the publisher got an `ack` for.
    pub acked: BTreeSet<MsgId>,
}

impl RoomLedger {
    /// Records an id seen in an ack or a delivery.
    pub fn observe(&mut self, id: MsgId) {
        self.ids.insert(id);
    }

    /// Records an id from an `ack`.
    pub fn ack(&mut self, id: MsgId) {
        self.ids.insert(id);
        self.acked.insert(id);
    }

    /// Number of ids strictly after `offset`.
    pub fn count_after(&self, offset: MsgId) -> u64 {
        self.ids
            .range((Bound::Excluded(offset), Bound::Unbounded))
            .count() as u64
    }

    /// The newest id published to the room.
    pub fn newest(&self) -> Option<MsgId> {
        self.ids.last().copied()
    }
}

/// Most holes a dense-id member remembers (beyond this, gaps are only counted at the end).
const MAX_HOLES: usize = 100_000;

/// One member's (connection, room) view of its room.
#[derive(Debug, Clone)]
pub struct MemberLedger {
    /// Index of the room.
    pub room: usize,
    /// Whether this member publishes.
    pub publisher: bool,
    /// Offset from the first `joined`: the member expects every id after it.
    pub join_offset: Option<MsgId>,
    /// Id of the last message received (the resume cursor).
    pub cursor: Option<MsgId>,
    /// Distinct messages received with an id after the join offset.
    pub received: u64,
    /// Messages received again, or with an id not after the cursor (roomcast ids never go
    /// backwards for one member).
    pub duplicated: u64,
    /// Dense ids only (the Socket.IO peer): messages that arrived after a later id, but once.
    pub reordered: u64,
    /// Resumes answered with `recovered: false`.
    pub unrecovered: u64,
    /// Whether the ids are a dense per-room counter (the Socket.IO peer), which may arrive
    /// out of order across its processes: then holes are remembered to tell a late arrival
    /// from a duplicate.
    dense: bool,
    holes: BTreeSet<u64>,
    /// Every id received after the join offset, when tracked ([`MemberLedger::track_ids`]).
    seen: Option<BTreeSet<MsgId>>,
}

impl MemberLedger {
    pub fn new(room: usize, publisher: bool, dense: bool) -> Self {
        MemberLedger {
            room,
            publisher,
            join_offset: None,
            cursor: None,
            received: 0,
            duplicated: 0,
            reordered: 0,
            unrecovered: 0,
            dense,
            holes: BTreeSet::new(),
            seen: None,
        }
    }

    /// Keeps the ids received, so [`MemberLedger::lost_acked`] can tell which were lost.
    pub fn track_ids(mut self) -> Self {
        self.seen = Some(BTreeSet::new());
        self
    }

    /// Applies a `joined` answer. The first one fixes the join offset.
    pub fn joined(&mut self, offset: Option<MsgId>, recovered: Option<bool>) {
        if self.join_offset.is_none() {
            let offset = offset.unwrap_or_default();
            self.join_offset = Some(offset);
            if self.cursor.is_none() {
                self.cursor = Some(offset);
            }
        }
        if recovered == Some(false) {
            self.unrecovered += 1;
        }
    }

    /// Applies a delivery. Returns false when the delivery predates the join (ignored).
    pub fn deliver(&mut self, id: MsgId) -> bool {
        let Some(offset) = self.join_offset else {
            // A message before our `joined` answer: the server sends `joined` first, so this
            // only happens with the Socket.IO peer racing its own join; not expected of us.
            return false;
        };
        if id <= offset {
            return false;
        }
        match self.cursor {
            Some(cursor) if id <= cursor => {
                if self.dense && self.holes.remove(&id.ms) {
                    self.reordered += 1;
                    self.received += 1;
                } else {
                    self.duplicated += 1;
                }
            }
            cursor => {
                if self.dense {
                    let from = cursor.map_or(offset.ms, |c| c.ms) + 1;
                    for missing in from..id.ms {
                        if self.holes.len() >= MAX_HOLES {
                            break;
                        }
                        self.holes.insert(missing);
                    }
                }
                self.received += 1;
                self.cursor = Some(id);
            }
        }
        if let Some(seen) = self.seen.as_mut() {
            seen.insert(id);
        }
        true
    }

    /// Of the messages lost ([`MemberLedger::lost`]), those whose publisher got an `ack`;
    /// `None` when ids are not tracked.
    pub fn lost_acked(&self, room: &RoomLedger) -> Option<u64> {
        let seen = self.seen.as_ref()?;
        let Some(offset) = self.join_offset else {
            return Some(0);
        };
        Some(
            room.acked
                .range((Bound::Excluded(offset), Bound::Unbounded))
                .filter(|id| !seen.contains(id))
                .count() as u64,
        )
    }

    /// Messages of the room this member should have received but did not.
    pub fn lost(&self, room: &RoomLedger) -> u64 {
        match self.join_offset {
            Some(offset) => room.count_after(offset).saturating_sub(self.received),
            None => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(ms: u64, seq: u64) -> MsgId {
        MsgId { ms, seq }
    }

    #[test]
    fn counts_gaps_and_duplicates_after_the_join() {
        let mut room = RoomLedger::default();
        for i in 1..=5 {
            room.observe(id(100, i));
        }
        let mut m = MemberLedger::new(0, false, false);
        m.joined(Some(id(100, 2)), None);
        assert!(!m.deliver(id(100, 2)), "before the join: ignored");
        assert!(m.deliver(id(100, 3)));
        assert!(m.deliver(id(100, 3)));
        assert!(m.deliver(id(100, 5)));
        assert_eq!(m.duplicated, 1);
        assert_eq!(m.lost(&room), 1, "id 100-4 never arrived");
    }

    #[test]
    fn dense_ids_tolerate_reordering_but_not_duplicates() {
        let mut room = RoomLedger::default();
        for i in 1..=4 {
            room.observe(id(i, 0));
        }
        let mut m = MemberLedger::new(0, false, true);
        m.joined(Some(id(0, 0)), None);
        m.deliver(id(2, 0));
        m.deliver(id(1, 0));
        m.deliver(id(1, 0));
        m.deliver(id(4, 0));
        assert_eq!(m.reordered, 1);
        assert_eq!(m.duplicated, 1);
        assert_eq!(m.lost(&room), 1);
    }

    #[test]
    fn lost_messages_are_split_by_ack() {
        let mut room = RoomLedger::default();
        room.ack(id(1, 0));
        room.ack(id(2, 0));
        room.observe(id(3, 0));
        room.ack(id(4, 0));
        let mut m = MemberLedger::new(0, false, false).track_ids();
        m.joined(Some(id(0, 0)), None);
        m.deliver(id(1, 0));
        m.deliver(id(4, 0));
        assert_eq!(m.lost(&room), 2);
        assert_eq!(m.lost_acked(&room), Some(1), "2-0 was acked, 3-0 was not");
        let untracked = MemberLedger::new(0, false, false);
        assert_eq!(untracked.lost_acked(&room), None);
    }

    #[test]
    fn unrecovered_resume_is_counted() {
        let mut m = MemberLedger::new(0, false, false);
        m.joined(Some(id(0, 0)), None);
        m.joined(Some(id(5, 0)), Some(false));
        assert_eq!(m.join_offset, Some(id(0, 0)));
        assert_eq!(m.unrecovered, 1);
    }
}
