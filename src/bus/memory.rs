//! The in-process bus for a single node (the default with no Redis configured): a
//! per-room counter assigns ids in Redis' `<ms>-<seq>` format, a ring buffer keeps the
//! history, and a bounded channel carries messages to the rooms' receive loop, so one
//! node takes the same path as a Redis deployment.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashMap;
use tokio::sync::{Mutex, mpsc};
use tokio::time::Instant;

use super::{
    Backend, BusError, BusEvent, CatchUp, HistoryPage, HistoryRange, Idem, Incoming, JoinInfo,
    MemberRef, MembersPage, PresenceEvent, Published,
};
use crate::clock;
use crate::protocol::{MsgId, User};

/// Capacity of the channel to the receive loop; publishers wait when it is full.
const CHANNEL_CAPACITY: usize = 65_536;

#[derive(Clone)]
pub(crate) struct MemoryBus {
    rooms: Arc<DashMap<Arc<str>, Arc<Mutex<MemRoom>>>>,
    tx: mpsc::Sender<Item>,
    history_size: usize,
    history_ttl: Duration,
}

/// What travels on the channel: a room's message or presence, or a control message.
#[derive(Debug)]
enum Item {
    Room(Incoming),
    Control(Bytes),
}

/// The receiving half: the channel the bus publishes into.
pub(crate) struct MemoryReceiver(mpsc::Receiver<Item>);

impl MemoryReceiver {
    pub(crate) async fn next(&mut self) -> BusEvent {
        match self.0.recv().await {
            Some(Item::Room(m)) => BusEvent::Message(m),
            Some(Item::Control(c)) => BusEvent::Control(c),
            None => BusEvent::Closed,
        }
    }
}

#[derive(Default)]
struct MemRoom {
    last: MsgId,
    /// The newest id trimmed from the log (`0-0` if none): a cursor equal to it is
    /// still complete, as in Redis' `max-deleted-entry-id`.
    max_deleted: MsgId,
    log: VecDeque<(MsgId, Bytes)>,
    /// Every connection in the room: `node|conn` -> user.
    members: HashMap<String, User>,
    /// Connections per authenticated user (jwt mode: one member per user).
    users: HashMap<String, usize>,
    /// The members as clients see them (one per user), by roster key, in paging order.
    roster: BTreeMap<String, User>,
    /// The room's presence sequence number (0 until the first presence change).
    pseq: u64,
    /// Idempotency keys -> (first id, forgotten at).
    idem: HashMap<String, (MsgId, Instant)>,
    /// Users barred from joining (server API kick) -> until.
    barred: HashMap<String, Instant>,
    touched: Option<Instant>,
}

impl MemRoom {
    /// Whether every message after `since` is still in the log.
    fn reaches(&self, since: MsgId) -> bool {
        since == self.max_deleted || self.log.iter().any(|(id, _)| *id == since)
    }

    fn after(&self, since: MsgId) -> Vec<(MsgId, Bytes)> {
        self.log
            .iter()
            .filter(|(id, _)| *id > since)
            .cloned()
            .collect()
    }

    /// The last `n` entries.
    fn last(&self, n: usize) -> Vec<(MsgId, Bytes)> {
        self.log
            .iter()
            .skip(self.log.len().saturating_sub(n))
            .cloned()
            .collect()
    }

    /// A page of the roster after `after`.
    fn page(&self, after: Option<&str>, limit: usize) -> MembersPage {
        use std::ops::Bound;
        let start = after.map_or(Bound::Unbounded, |a| Bound::Excluded(a.to_string()));
        let mut iter = self
            .roster
            .range::<String, _>((start, Bound::Unbounded))
            .take(limit + 1);
        let mut members = Vec::with_capacity(limit.min(self.roster.len()));
        let mut last = None;
        for (key, user) in iter.by_ref().take(limit) {
            members.push(user.clone());
            last = Some(key);
        }
        let more = iter.next().is_some();
        MembersPage {
            members,
            count: self.roster.len() as u64,
            next: if more { last.cloned() } else { None },
        }
    }

    /// The next presence sequence number (see [`super::first_presence_seq`]).
    fn next_pseq(&mut self) -> u64 {
        self.pseq = (self.pseq + 1).max(super::first_presence_seq());
        self.pseq
    }

    /// Forgets expired idempotency keys and bars.
    fn expire(&mut self, now: Instant) {
        self.idem.retain(|_, (_, until)| *until > now);
        self.barred.retain(|_, until| *until > now);
    }
}

impl MemoryBus {
    pub(crate) fn new(history_size: usize, history_ttl: Duration) -> (Self, MemoryReceiver) {
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        let bus = MemoryBus {
            rooms: Arc::new(DashMap::new()),
            tx,
            history_size,
            history_ttl,
        };
        (bus, MemoryReceiver(rx))
    }

    fn room(&self, room: &str) -> Arc<Mutex<MemRoom>> {
        if let Some(r) = self.rooms.get(room) {
            return r.clone();
        }
        self.rooms.entry(Arc::from(room)).or_default().clone()
    }

    async fn send(&self, room: &str, id: Option<MsgId>, payload: Bytes) -> Result<(), BusError> {
        self.tx
            .send(Item::Room(Incoming {
                room: Arc::from(room),
                id,
                payload,
            }))
            .await
            .map_err(|_| BusError::Unavailable("memory bus closed".into()))
    }

    /// Forgets rooms with no members whose history expired (`history.ttl`).
    fn sweep(&self) {
        let ttl = self.history_ttl;
        let now = Instant::now();
        self.rooms.retain(|_, room| match room.try_lock() {
            Ok(mut r) => {
                r.expire(now);
                !(r.members.is_empty()
                    && r.idem.is_empty()
                    && r.barred.is_empty()
                    && r.touched.is_none_or(|t| t.elapsed() > ttl))
            }
            Err(_) => true,
        });
    }
}

impl Backend for MemoryBus {
    fn is_connected(&self) -> bool {
        true
    }

    fn is_registered(&self) -> bool {
        true
    }

    async fn publish(
        &self,
        room: &str,
        envelope: String,
        idem: Option<Idem>,
    ) -> Result<Published, BusError> {
        let handle = self.room(room);
        // The room lock is held across the send so ids reach the receiver in id order,
        // and makes the idempotency check and the publish one step.
        let mut r = handle.lock().await;
        let now = Instant::now();
        if let Some(idem) = &idem
            && let Some((id, until)) = r.idem.get(&idem.key)
            && *until > now
        {
            return Ok(Published {
                id: *id,
                duplicate: true,
            });
        }
        let id = r.last.next(clock::unix_micros() / 1000);
        r.last = id;
        r.touched = Some(Instant::now());
        let payload = Bytes::from(envelope);
        r.log.push_back((id, payload.clone()));
        while r.log.len() > self.history_size {
            if let Some((old, _)) = r.log.pop_front() {
                r.max_deleted = old;
            }
        }
        self.send(room, Some(id), payload).await?;
        if let Some(idem) = idem {
            if r.idem.len() >= 4096 {
                r.expire(now);
            }
            let until = now + Duration::from_millis(idem.ttl_ms);
            r.idem.insert(idem.key, (id, until));
        }
        Ok(Published {
            id,
            duplicate: false,
        })
    }

    async fn signal(&self, room: &str, envelope: String) -> Result<(), BusError> {
        self.send(room, None, Bytes::from(envelope)).await
    }

    async fn control(&self, message: String) -> Result<usize, BusError> {
        self.tx
            .send(Item::Control(Bytes::from(message)))
            .await
            .map_err(|_| BusError::Unavailable("memory bus closed".into()))?;
        Ok(1)
    }

    async fn bar(&self, room: &str, user_key: &str, ttl_ms: u64) -> Result<(), BusError> {
        let handle = self.room(room);
        let mut r = handle.lock().await;
        let until = Instant::now() + Duration::from_millis(ttl_ms);
        r.barred.insert(user_key.to_string(), until);
        Ok(())
    }

    async fn history(
        &self,
        room: &str,
        range: HistoryRange,
        limit: usize,
    ) -> Result<HistoryPage, BusError> {
        let Some(handle) = self.rooms.get(room).map(|r| r.clone()) else {
            return Ok(HistoryPage::default());
        };
        let r = handle.lock().await;
        let mut entries: Vec<(MsgId, Bytes)> = match range {
            HistoryRange::Latest => r.log.iter().rev().take(limit + 1).cloned().collect(),
            HistoryRange::Before(before) => r
                .log
                .iter()
                .rev()
                .filter(|(id, _)| *id < before)
                .take(limit + 1)
                .cloned()
                .collect(),
            HistoryRange::After(after) => r
                .log
                .iter()
                .filter(|(id, _)| *id > after)
                .take(limit + 1)
                .cloned()
                .collect(),
        };
        let more = entries.len() > limit;
        entries.truncate(limit);
        if !matches!(range, HistoryRange::After(_)) {
            entries.reverse();
        }
        Ok(HistoryPage { entries, more })
    }

    async fn members(
        &self,
        room: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<MembersPage, BusError> {
        let Some(handle) = self.rooms.get(room).map(|r| r.clone()) else {
            return Ok(MembersPage::default());
        };
        let r = handle.lock().await;
        Ok(r.page(after, limit))
    }

    async fn rooms(&self) -> Result<Vec<(String, usize)>, BusError> {
        let handles: Vec<(Arc<str>, Arc<Mutex<MemRoom>>)> = self
            .rooms
            .iter()
            .map(|r| (r.key().clone(), r.value().clone()))
            .collect();
        let mut out = Vec::new();
        for (name, handle) in handles {
            let n = handle.lock().await.roster.len();
            if n > 0 {
                out.push((name.to_string(), n));
            }
        }
        out.sort();
        Ok(out)
    }

    async fn subscribe(&self, _room: &str) -> Result<(), BusError> {
        // Every room's messages reach the one receiver; the rooms layer drops those for
        // rooms without local members.
        Ok(())
    }

    async fn unsubscribe(&self, _room: &str) -> Result<(), BusError> {
        Ok(())
    }

    async fn resubscribe(&self, _rooms: &[Arc<str>]) -> Result<(), BusError> {
        Ok(())
    }

    async fn join(
        &self,
        room: &str,
        member: &MemberRef,
        since: Option<MsgId>,
        history: usize,
        page: usize,
    ) -> Result<JoinInfo, BusError> {
        let handle = self.room(room);
        let mut r = handle.lock().await;
        let now = Instant::now();
        if let Some(until) = r.barred.get(super::user_key(&member.user))
            && *until > now
        {
            return Ok(JoinInfo {
                kicked_ms: Some((*until - now).as_millis() as u64),
                ..JoinInfo::default()
            });
        }
        r.members.insert(member.field(), member.user.clone());
        r.touched = Some(Instant::now());
        // A user's first connection in the room announces the join.
        let first = match &member.user.id {
            Some(id) => {
                let n = r.users.entry(id.clone()).or_default();
                *n += 1;
                *n == 1
            }
            None => true,
        };
        if first {
            r.roster.insert(member.roster_key(), member.user.clone());
            let seq = r.next_pseq();
            let count = r.roster.len() as u64;
            let announce = member.presence_stamped(PresenceEvent::Join, seq, count);
            self.send(room, None, Bytes::from(announce)).await?;
        }
        let mut info = JoinInfo {
            members: r.page(None, page),
            pseq: r.pseq,
            head: r.last,
            ..JoinInfo::default()
        };
        if let Some(since) = since {
            info.recovered = Some(r.reaches(since));
            info.replay = r.after(since);
        } else if history > 0 {
            info.replay = r.last(history);
        }
        Ok(info)
    }

    async fn leave(
        &self,
        room: &str,
        member: &MemberRef,
        _last_local: bool,
    ) -> Result<(), BusError> {
        let handle = self.room(room);
        let mut r = handle.lock().await;
        if r.members.remove(&member.field()).is_some() {
            // A user's last connection in the room announces the leave.
            let last = match &member.user.id {
                Some(id) => match r.users.get_mut(id) {
                    Some(n) if *n > 1 => {
                        *n -= 1;
                        false
                    }
                    _ => {
                        r.users.remove(id);
                        true
                    }
                },
                None => true,
            };
            if last {
                r.roster.remove(&member.roster_key());
                let seq = r.next_pseq();
                let count = r.roster.len() as u64;
                let announce = member.presence_stamped(PresenceEvent::Leave, seq, count);
                self.send(room, None, Bytes::from(announce)).await?;
            }
        }
        Ok(())
    }

    async fn catch_up(&self, room: &str, since: MsgId) -> Result<CatchUp, BusError> {
        let handle = self.room(room);
        let r = handle.lock().await;
        Ok(CatchUp {
            complete: r.reaches(since),
            entries: r.after(since),
        })
    }

    async fn maintain(&self, _memberships: impl FnOnce() -> Vec<(Arc<str>, MemberRef)> + Send) {
        // One node: no liveness to keep and no peers to reap.
        self.sweep();
    }

    async fn shutdown(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::Envelope;

    fn message(text: &str) -> String {
        Envelope::Message {
            from: User::new("alice".into()),
            text: text.into(),
            ts: 1,
            node: "n".into(),
            conn: "c".into(),
            tp: None,
        }
        .encode()
    }

    fn member(conn: &str) -> MemberRef {
        MemberRef {
            node: Arc::from("n"),
            conn: Arc::from(conn),
            user: User::new(conn.into()),
        }
    }

    #[tokio::test]
    async fn ids_increase_per_room_and_arrive_in_order_beside_the_payload() {
        let (bus, mut rx) = MemoryBus::new(10, Duration::from_secs(60));
        let mut ids = Vec::new();
        for i in 0..5 {
            ids.push(
                bus.publish("a", message(&i.to_string()), None)
                    .await
                    .unwrap()
                    .id,
            );
        }
        bus.publish("b", message("other"), None).await.unwrap();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
        for (i, id) in ids.iter().enumerate() {
            let BusEvent::Message(m) = rx.next().await else {
                panic!("expected a message")
            };
            assert_eq!((&*m.room, m.id), ("a", Some(*id)));
            let Ok(Envelope::Message { text, .. }) = Envelope::decode(&m.payload) else {
                panic!("undecodable payload")
            };
            assert_eq!(text, i.to_string());
        }
    }

    #[tokio::test]
    async fn history_keeps_the_last_n_and_says_when_a_cursor_is_too_old() {
        let (bus, _rx) = MemoryBus::new(3, Duration::from_secs(60));
        let mut ids = Vec::new();
        for i in 0..5 {
            ids.push(
                bus.publish("a", message(&i.to_string()), None)
                    .await
                    .unwrap()
                    .id,
            );
        }
        // ids[1] was the newest trimmed entry: everything after it is still there.
        let c = bus.catch_up("a", ids[1]).await.unwrap();
        assert!(c.complete);
        assert_eq!(
            c.entries.iter().map(|e| e.0).collect::<Vec<_>>(),
            ids[2..].to_vec()
        );
        let c = bus.catch_up("a", ids[0]).await.unwrap();
        assert!(!c.complete, "ids[1] is gone");
        let c = bus.catch_up("a", ids[4]).await.unwrap();
        assert!(c.complete && c.entries.is_empty());

        let info = bus
            .join("a", &member("c1"), Some(ids[2]), 0, 100)
            .await
            .unwrap();
        assert_eq!(info.head, ids[4]);
        assert_eq!(info.recovered, Some(true));
        assert_eq!(info.replay.len(), 2);
        let info = bus.join("a", &member("c2"), None, 0, 100).await.unwrap();
        assert_eq!((info.recovered, info.replay.len()), (None, 0));
        assert_eq!(info.members.members.len(), 2);
        assert_eq!(info.members.count, 2);
    }

    #[tokio::test]
    async fn presence_is_announced_once_and_idle_rooms_are_forgotten() {
        let (bus, mut rx) = MemoryBus::new(3, Duration::from_secs(1));
        let alice = member("c1");
        bus.join("a", &alice, None, 0, 100).await.unwrap();
        bus.leave("a", &alice, true).await.unwrap();
        bus.leave("a", &alice, true).await.unwrap();
        for event in ["join", "leave"] {
            let BusEvent::Message(m) = rx.next().await else {
                panic!("expected presence")
            };
            assert_eq!(m.id, None);
            let Ok(Envelope::Presence { event: e, .. }) = Envelope::decode(&m.payload) else {
                panic!("expected presence")
            };
            assert_eq!(e.as_str(), event);
        }
        assert!(
            rx.0.try_recv().is_err(),
            "the second leave announced nothing"
        );
        tokio::time::pause();
        bus.maintain(Vec::new).await;
        assert_eq!(bus.rooms.len(), 1, "history still within its ttl");
        tokio::time::advance(Duration::from_secs(2)).await;
        bus.maintain(Vec::new).await;
        assert_eq!(bus.rooms.len(), 0);
    }

    #[tokio::test]
    async fn an_idempotency_key_publishes_once_and_returns_the_first_id() {
        let (bus, mut rx) = MemoryBus::new(10, Duration::from_secs(60));
        let idem = || {
            Some(Idem {
                key: "api:k1".into(),
                ttl_ms: 60_000,
            })
        };
        let first = bus.publish("a", message("one"), idem()).await.unwrap();
        let again = bus.publish("a", message("one"), idem()).await.unwrap();
        assert!(!first.duplicate && again.duplicate);
        assert_eq!(first.id, again.id);
        // The same key in another room is another message.
        let other = bus.publish("b", message("one"), idem()).await.unwrap();
        assert!(!other.duplicate);
        let mut received = 0;
        while let Ok(Item::Room(_)) = rx.0.try_recv() {
            received += 1;
        }
        assert_eq!(received, 2);
        let page = bus.history("a", HistoryRange::Latest, 10).await.unwrap();
        assert_eq!(page.entries.len(), 1);
    }

    #[tokio::test]
    async fn history_pages_walk_the_room_both_ways_without_gap_or_duplicate() {
        let (bus, _rx) = MemoryBus::new(100, Duration::from_secs(60));
        let mut ids = Vec::new();
        for i in 0..7 {
            ids.push(
                bus.publish("a", message(&i.to_string()), None)
                    .await
                    .unwrap()
                    .id,
            );
        }
        let mut seen: Vec<MsgId> = Vec::new();
        let mut page = bus.history("a", HistoryRange::Latest, 3).await.unwrap();
        loop {
            let mut older: Vec<MsgId> = page.entries.iter().map(|e| e.0).collect();
            older.extend(seen);
            seen = older;
            if !page.more {
                break;
            }
            page = bus
                .history("a", HistoryRange::Before(seen[0]), 3)
                .await
                .unwrap();
        }
        assert_eq!(seen, ids);
        let forward = bus
            .history("a", HistoryRange::After(ids[4]), 3)
            .await
            .unwrap();
        assert_eq!(
            forward.entries.iter().map(|e| e.0).collect::<Vec<_>>(),
            ids[5..].to_vec()
        );
        assert!(!forward.more);
    }

    #[tokio::test]
    async fn a_barred_user_cannot_join_until_the_bar_expires() {
        let (bus, _rx) = MemoryBus::new(10, Duration::from_secs(60));
        tokio::time::pause();
        bus.bar("a", "c1", 5_000).await.unwrap();
        let info = bus.join("a", &member("c1"), None, 0, 100).await.unwrap();
        assert!(info.kicked_ms.is_some_and(|ms| ms > 0 && ms <= 5_000));
        assert!(
            bus.members("a", None, 10).await.unwrap().members.is_empty(),
            "nothing recorded"
        );
        let other = bus.join("a", &member("c2"), None, 0, 100).await.unwrap();
        assert_eq!(other.kicked_ms, None);
        tokio::time::advance(Duration::from_secs(6)).await;
        let info = bus.join("a", &member("c1"), None, 0, 100).await.unwrap();
        assert_eq!(info.kicked_ms, None);
    }

    #[tokio::test]
    async fn members_page_in_roster_order_once_per_user_with_stamped_presence() {
        let (bus, mut rx) = MemoryBus::new(10, Duration::from_secs(60));
        let mut alice = member("c1");
        alice.user.id = Some("alice".into());
        let mut alice2 = member("c2");
        alice2.user = alice.user.clone();
        for m in [&alice, &alice2, &member("c3"), &member("c4"), &member("c5")] {
            bus.join("a", m, None, 0, 2).await.unwrap();
        }
        // alice's second connection announced nothing: 4 joins, numbered in order.
        let mut seqs = Vec::new();
        while let Ok(Item::Room(m)) = rx.0.try_recv() {
            let Ok(Envelope::Presence { seq, count, .. }) = Envelope::decode(&m.payload) else {
                panic!("expected presence")
            };
            seqs.push((seq, count));
        }
        assert_eq!(seqs.iter().map(|s| s.1).collect::<Vec<_>>(), [1, 2, 3, 4]);
        assert!(seqs.windows(2).all(|w| w[0].0 < w[1].0));
        let info = bus.join("a", &member("c6"), None, 0, 2).await.unwrap();
        assert_eq!(info.members.count, 5);
        assert_eq!(info.members.members.len(), 2);
        assert!(info.pseq > seqs[3].0);
        let mut names = Vec::new();
        let mut after = None;
        loop {
            let page = bus.members("a", after.as_deref(), 2).await.unwrap();
            assert_eq!(page.count, 5);
            names.extend(page.members.iter().map(|u| u.name.clone()));
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        names.sort();
        assert_eq!(names, ["c1", "c3", "c4", "c5", "c6"]);
    }
}
