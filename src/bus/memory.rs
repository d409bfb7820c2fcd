//! The in-process bus for a single node (the default with no Redis configured): a
//! per-room counter assigns ids in Redis' `<ms>-<seq>` format, a ring buffer keeps the
//! history, and a bounded channel carries messages to the hub's receive loop, so one
//! node takes the same path as a Redis deployment.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dashmap::DashMap;
use tokio::sync::{Mutex, mpsc};

use super::{BusError, Incoming, JoinInfo, MemberRef, PresenceEvent};
use crate::protocol::{MsgId, User};

/// Capacity of the channel to the hub's receive loop; publishers wait when it is full.
const CHANNEL_CAPACITY: usize = 65_536;

#[derive(Clone)]
pub struct MemoryBus {
    rooms: Arc<DashMap<Arc<str>, Arc<Mutex<MemRoom>>>>,
    tx: mpsc::Sender<Incoming>,
    history_size: usize,
    history_ttl: Duration,
}

#[derive(Default)]
struct MemRoom {
    last: MsgId,
    max_deleted: MsgId,
    log: VecDeque<(MsgId, Bytes)>,
    members: BTreeMap<String, User>,
    touched: Option<Instant>,
}

impl MemoryBus {
    pub fn new(history_size: usize, history_ttl: Duration) -> (Self, mpsc::Receiver<Incoming>) {
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        let bus = MemoryBus {
            rooms: Arc::new(DashMap::new()),
            tx,
            history_size,
            history_ttl,
        };
        (bus, rx)
    }

    fn room(&self, room: &str) -> Arc<Mutex<MemRoom>> {
        if let Some(r) = self.rooms.get(room) {
            return r.clone();
        }
        self.rooms.entry(Arc::from(room)).or_default().clone()
    }

    async fn send(&self, room: &str, payload: String) -> Result<(), BusError> {
        self.tx
            .send(Incoming {
                room: Arc::from(room),
                payload: Bytes::from(payload),
            })
            .await
            .map_err(|_| BusError::Unavailable("memory bus closed".into()))
    }

    pub async fn publish(&self, room: &str, envelope: String) -> Result<MsgId, BusError> {
        let handle = self.room(room);
        // The room lock is held across the send so ids reach the hub in id order.
        let mut r = handle.lock().await;
        let id = r.last.next(super::now_micros() / 1000);
        r.last = id;
        r.touched = Some(Instant::now());
        let stored = Bytes::from(envelope);
        let published = splice_id(&stored, id);
        r.log.push_back((id, stored));
        while r.log.len() > self.history_size {
            if let Some((old, _)) = r.log.pop_front() {
                r.max_deleted = old;
            }
        }
        self.send(room, published).await?;
        Ok(id)
    }

    pub async fn join(
        &self,
        room: &str,
        member: &MemberRef,
        since: Option<MsgId>,
    ) -> Result<JoinInfo, BusError> {
        let handle = self.room(room);
        let mut r = handle.lock().await;
        r.members.insert(member.field(), member.user.clone());
        r.touched = Some(Instant::now());
        self.send(room, member.presence(PresenceEvent::Join))
            .await?;
        let mut info = JoinInfo {
            members: r.members.values().cloned().collect(),
            head: r.last,
            ..JoinInfo::default()
        };
        if let Some(since) = since {
            let recovered = since == r.max_deleted || r.log.iter().any(|(id, _)| *id == since);
            info.recovered = Some(recovered);
            info.replay = r
                .log
                .iter()
                .filter(|(id, _)| *id > since)
                .cloned()
                .collect();
        }
        Ok(info)
    }

    pub async fn leave(&self, room: &str, member: &MemberRef) -> Result<(), BusError> {
        let handle = self.room(room);
        let mut r = handle.lock().await;
        if r.members.remove(&member.field()).is_some() {
            self.send(room, member.presence(PresenceEvent::Leave))
                .await?;
        }
        Ok(())
    }

    /// Forgets rooms with no members whose history expired (`history.ttl`).
    pub fn sweep(&self) {
        let ttl = self.history_ttl;
        self.rooms.retain(|_, room| match room.try_lock() {
            Ok(r) => !(r.members.is_empty() && r.touched.is_none_or(|t| t.elapsed() > ttl)),
            Err(_) => true,
        });
    }
}

/// The published form of a stored envelope: the same JSON object with `"id"` first.
fn splice_id(envelope: &[u8], id: MsgId) -> String {
    let body = std::str::from_utf8(envelope.get(1..).unwrap_or_default()).unwrap_or("}");
    format!("{{\"id\":\"{id}\",{body}")
}
