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

use super::{Backend, BusError, BusEvent, CatchUp, Incoming, JoinInfo, MemberRef, PresenceEvent};
use crate::clock;
use crate::protocol::{MsgId, User};

/// Capacity of the channel to the receive loop; publishers wait when it is full.
const CHANNEL_CAPACITY: usize = 65_536;

#[derive(Clone)]
pub(crate) struct MemoryBus {
    rooms: Arc<DashMap<Arc<str>, Arc<Mutex<MemRoom>>>>,
    tx: mpsc::Sender<Incoming>,
    history_size: usize,
    history_ttl: Duration,
}

/// The receiving half: the channel the bus publishes into.
pub(crate) struct MemoryReceiver(mpsc::Receiver<Incoming>);

impl MemoryReceiver {
    pub(crate) async fn next(&mut self) -> BusEvent {
        match self.0.recv().await {
            Some(m) => BusEvent::Message(m),
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
    members: BTreeMap<String, User>,
    /// Connections per authenticated user (jwt mode: one member per user).
    users: HashMap<String, usize>,
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
            .send(Incoming {
                room: Arc::from(room),
                id,
                payload,
            })
            .await
            .map_err(|_| BusError::Unavailable("memory bus closed".into()))
    }

    /// Forgets rooms with no members whose history expired (`history.ttl`).
    fn sweep(&self) {
        let ttl = self.history_ttl;
        self.rooms.retain(|_, room| match room.try_lock() {
            Ok(r) => !(r.members.is_empty() && r.touched.is_none_or(|t| t.elapsed() > ttl)),
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

    async fn publish(&self, room: &str, envelope: String) -> Result<MsgId, BusError> {
        let handle = self.room(room);
        // The room lock is held across the send so ids reach the receiver in id order.
        let mut r = handle.lock().await;
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
        Ok(id)
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
    ) -> Result<JoinInfo, BusError> {
        let handle = self.room(room);
        let mut r = handle.lock().await;
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
            let announce = Bytes::from(member.presence(PresenceEvent::Join));
            self.send(room, None, announce).await?;
        }
        let mut info = JoinInfo {
            members: super::one_per_user(r.members.values().cloned()),
            head: r.last,
            ..JoinInfo::default()
        };
        if let Some(since) = since {
            info.recovered = Some(r.reaches(since));
            info.replay = r.after(since);
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
                let announce = Bytes::from(member.presence(PresenceEvent::Leave));
                self.send(room, None, announce).await?;
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
            ids.push(bus.publish("a", message(&i.to_string())).await.unwrap());
        }
        bus.publish("b", message("other")).await.unwrap();
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
            ids.push(bus.publish("a", message(&i.to_string())).await.unwrap());
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

        let info = bus.join("a", &member("c1"), Some(ids[2])).await.unwrap();
        assert_eq!(info.head, ids[4]);
        assert_eq!(info.recovered, Some(true));
        assert_eq!(info.replay.len(), 2);
        let info = bus.join("a", &member("c2"), None).await.unwrap();
        assert_eq!((info.recovered, info.replay.len()), (None, 0));
        assert_eq!(info.members.len(), 2);
    }

    #[tokio::test]
    async fn presence_is_announced_once_and_idle_rooms_are_forgotten() {
        let (bus, mut rx) = MemoryBus::new(3, Duration::from_secs(1));
        let alice = member("c1");
        bus.join("a", &alice, None).await.unwrap();
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
}
