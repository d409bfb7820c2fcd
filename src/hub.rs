//! The hub: this replica's registry of rooms and their local members.
//!
//! It ref-counts rooms and asks the bus to subscribe when the first local member joins
//! and to unsubscribe after the last leaves; a per-room async lock serialises those
//! transitions so concurrent joins and leaves never strand a member without a
//! subscription or keep a channel with no member. Its receive loop decodes each bus
//! envelope once, encodes the client frame once, and hands the same bytes to every
//! local member's bounded queue; a member whose queue is full is closed as a slow
//! consumer and never delays the others.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::ws::Utf8Bytes;
use dashmap::DashMap;
use prometheus::IntCounter;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info_span, warn};

use crate::bus::{Bus, BusError, BusEvent, BusReceiver, Envelope, Incoming, MemberRef};
use crate::metrics::{DisconnectReason, Metrics};
use crate::protocol::{Encode, MsgId, ServerFrame};
use crate::session::SessionCtl;
use crate::telemetry;

/// One item in a session's outbound queue. Kept to 16 bytes (every connection's queue
/// reserves a block of slots): rare items are boxed, and room frames are one shared
/// allocation per message.
#[derive(Debug)]
pub enum Out {
    /// A frame not tied to a room (welcome, ack, error); boxed to keep slots small.
    Frame(Box<Utf8Bytes>),
    /// A heartbeat ping.
    Ping,
    /// A room frame, shared by every local recipient.
    Room(Arc<RoomFrame>),
    /// Start of a join: hold this room's frames until [`Out::Release`].
    Hold(Box<Arc<str>>),
    /// End of a join: write `joined`, the replay, then held frames newer than `cursor`.
    Release(Box<Release>),
    /// A join failed: forget the held room.
    Abort(Box<Arc<str>>),
    /// The room was left: write `left` and drop the room's later frames.
    Left(Box<Arc<str>>),
}

/// A message or presence frame for one room, encoded once per replica.
#[derive(Debug)]
pub struct RoomFrame {
    pub room: Arc<str>,
    pub frame: Utf8Bytes,
    /// The message id; `None` for presence.
    pub id: Option<MsgId>,
    /// Publish time, Unix µs (0 for presence).
    pub ts_us: u64,
}

/// The answer to a join, queued behind any live frames that arrived meanwhile.
#[derive(Debug)]
pub struct Release {
    pub room: Arc<str>,
    pub joined: Utf8Bytes,
    pub replay: Vec<(MsgId, Utf8Bytes)>,
    pub cursor: MsgId,
}

/// A local member of a room: where its frames go and how to close it.
#[derive(Clone)]
pub struct Member {
    pub tx: mpsc::Sender<Out>,
    pub ctl: Arc<SessionCtl>,
    /// Who this is, as presence records it (node, connection, user).
    pub presence: MemberRef,
}

struct Room {
    members: HashMap<u64, Member>,
    /// `true` while the bus channel is subscribed; the lock serialises transitions.
    subscribed: Arc<tokio::sync::Mutex<bool>>,
    /// Newest message id fanned out; older or equal ids are duplicates and skipped.
    last_id: MsgId,
    counter: IntCounter,
}

/// Cheap to clone; all clones share one registry.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

struct Inner {
    node: Arc<str>,
    bus: Bus,
    rooms: DashMap<Arc<str>, Room>,
    metrics: Arc<Metrics>,
    /// True from a bus reconnect until every room is subscribed again.
    resubscribing: AtomicBool,
}

impl Hub {
    pub fn new(node: Arc<str>, bus: Bus, metrics: Arc<Metrics>) -> Self {
        Hub {
            inner: Arc::new(Inner {
                node,
                bus,
                rooms: DashMap::new(),
                metrics,
                resubscribing: AtomicBool::new(false),
            }),
        }
    }

    pub fn bus(&self) -> &Bus {
        &self.inner.bus
    }

    /// Whether every room with local members is subscribed (false during a resubscribe).
    pub fn all_subscribed(&self) -> bool {
        !self.inner.resubscribing.load(Ordering::Acquire)
    }

    /// Whether this node has local members in `room`.
    pub fn has_room(&self, room: &str) -> bool {
        self.inner
            .rooms
            .get(room)
            .is_some_and(|r| !r.members.is_empty())
    }

    pub fn room_count(&self) -> usize {
        self.inner.rooms.len()
    }

    /// Registers `member` in `room` and makes sure the room's channel is subscribed
    /// before returning, so no message published after this call is missed.
    pub async fn join(&self, room: &Arc<str>, key: u64, member: Member) -> Result<(), BusError> {
        let subscribed = {
            let mut entry = self
                .inner
                .rooms
                .entry(room.clone())
                .or_insert_with(|| Room {
                    members: HashMap::new(),
                    subscribed: Arc::new(tokio::sync::Mutex::new(false)),
                    last_id: MsgId::ZERO,
                    counter: self.inner.metrics.room_counter(room),
                });
            entry.members.insert(key, member);
            entry.subscribed.clone()
        };
        self.inner.metrics.rooms.set(self.inner.rooms.len() as i64);
        let mut is_subscribed = subscribed.lock().await;
        if !*is_subscribed {
            if let Err(e) = self.inner.bus.subscribe(room).await {
                drop(is_subscribed);
                self.leave(room, key).await;
                return Err(e);
            }
            *is_subscribed = true;
        }
        Ok(())
    }

    /// Removes a member. Returns true if it was the room's last local member, in which
    /// case the channel has been unsubscribed when this returns.
    pub async fn leave(&self, room: &Arc<str>, key: u64) -> bool {
        let emptied = self.remove_member(room, key);
        match emptied {
            Some(subscribed) => {
                self.release(room, subscribed).await;
                true
            }
            None => false,
        }
    }

    /// Removes a member without awaiting; returns the room's lock if it became empty.
    fn remove_member(&self, room: &str, key: u64) -> Option<Arc<tokio::sync::Mutex<bool>>> {
        let mut entry = self.inner.rooms.get_mut(room)?;
        entry.members.remove(&key)?;
        entry.members.is_empty().then(|| entry.subscribed.clone())
    }

    /// Unsubscribes an emptied room unless someone joined meanwhile, then forgets it.
    async fn release(&self, room: &Arc<str>, subscribed: Arc<tokio::sync::Mutex<bool>>) {
        let mut is_subscribed = subscribed.lock().await;
        let still_empty = self
            .inner
            .rooms
            .get(room)
            .is_none_or(|r| r.members.is_empty());
        if !still_empty {
            return;
        }
        if *is_subscribed {
            if let Err(e) = self.inner.bus.unsubscribe(room).await {
                warn!(%room, error = %e, "unsubscribe failed");
            }
            *is_subscribed = false;
        }
        self.inner.rooms.remove_if(room, |_, r| {
            r.members.is_empty() && Arc::ptr_eq(&r.subscribed, &subscribed)
        });
        self.inner.metrics.rooms.set(self.inner.rooms.len() as i64);
    }

    /// Every local membership (for restoring presence).
    pub fn memberships(&self) -> Vec<(Arc<str>, MemberRef)> {
        self.inner
            .rooms
            .iter()
            .flat_map(|r| {
                let room = r.key().clone();
                r.members
                    .values()
                    .map(|m| (room.clone(), m.presence.clone()))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Rooms with local members (for resubscribe).
    pub fn rooms(&self) -> Vec<Arc<str>> {
        self.inner.rooms.iter().map(|r| r.key().clone()).collect()
    }

    /// Runs until the bus closes or `stop` is cancelled: fans messages out and recovers
    /// after bus reconnects.
    pub async fn run_receiver(self, mut rx: BusReceiver, stop: CancellationToken) {
        loop {
            let event = tokio::select! {
                _ = stop.cancelled() => return,
                e = rx.next() => e,
            };
            match event {
                BusEvent::Message(incoming) => self.fan_out(&incoming),
                BusEvent::Reconnected => {
                    self.inner.metrics.bus_reconnects.inc();
                    self.recover("reconnect").await;
                }
                BusEvent::Lagged(n) => {
                    warn!(
                        dropped = n,
                        "bus receive loop lagged; catching up from history"
                    );
                    self.recover("lagged").await;
                }
                BusEvent::Closed => return,
            }
        }
    }

    /// After a reconnect or lag: subscribe every room again, then replay what each room
    /// missed from its history (duplicates are skipped by id), before any newer message:
    /// the loop handles no live message until the catch-up is done.
    async fn recover(&self, why: &'static str) {
        let Bus::Redis(redis) = &self.inner.bus else {
            return;
        };
        self.inner.resubscribing.store(true, Ordering::Release);
        let rooms = self.rooms();
        let mut attempt = 0u32;
        while let Err(e) = redis.resubscribe(&rooms).await {
            attempt += 1;
            warn!(error = %e, attempt, "resubscribe failed; retrying");
            tokio::time::sleep(std::time::Duration::from_millis(
                200 * u64::from(attempt.min(10)),
            ))
            .await;
        }
        self.inner.resubscribing.store(false, Ordering::Release);
        let cursors: Vec<(Arc<str>, MsgId)> = self
            .inner
            .rooms
            .iter()
            .filter(|r| r.last_id != MsgId::ZERO)
            .map(|r| (r.key().clone(), r.last_id))
            .collect();
        // The subscriber may reconnect before the command client: wait for both.
        let waited = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            while !self.inner.bus.is_connected() {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        })
        .await;
        if waited.is_err() {
            warn!("bus command connection still down; catch-up may fail");
        }
        let mut replayed = 0usize;
        for (room, since) in cursors {
            let mut result = self.inner.bus.catch_up(&room, since).await;
            for attempt in 1..=3u64 {
                if result.is_ok() {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100 * attempt)).await;
                result = self.inner.bus.catch_up(&room, since).await;
            }
            match result {
                Ok((complete, entries)) => {
                    if !complete {
                        warn!(%room, %since, "room history lost or trimmed; members may have missed messages");
                    }
                    for (id, stored) in entries {
                        // History entries carry no id in the envelope: the entry id is it.
                        if let Some(mut envelope) = self.decode(&room, &stored) {
                            if let Envelope::Message { id: slot, .. } = &mut envelope {
                                *slot = Some(id.to_string());
                            }
                            self.fan_out_envelope(&room, envelope);
                            replayed += 1;
                        }
                    }
                }
                Err(e) => warn!(%room, error = %e, "catch-up failed"),
            }
        }
        tracing::info!(
            reason = why,
            rooms = self.room_count(),
            replayed,
            "bus subscriptions restored"
        );
    }

    /// Decodes one envelope, encodes the client frame once, and queues it for every
    /// local member of the room.
    fn fan_out(&self, incoming: &Incoming) {
        if let Some(envelope) = self.decode(&incoming.room, &incoming.payload) {
            self.fan_out_envelope(&incoming.room, envelope);
        }
    }

    /// Decodes one envelope received from the bus (counted; undecodable ones are logged,
    /// counted and skipped).
    fn decode(&self, room: &str, payload: &[u8]) -> Option<Envelope> {
        let metrics = &self.inner.metrics;
        metrics.bus_messages_received.inc();
        match serde_json::from_slice(payload) {
            Ok(e) => Some(e),
            Err(e) => {
                metrics.bus_decode_errors.inc();
                warn!(%room, error = %e, "skipping undecodable bus payload");
                None
            }
        }
    }

    /// Encodes the client frame once and queues it for every local member of the room.
    fn fan_out_envelope(&self, room_name: &Arc<str>, envelope: Envelope) {
        let metrics = &self.inner.metrics;
        let Some(mut room) = self.inner.rooms.get_mut(&**room_name) else {
            return;
        };
        match envelope {
            Envelope::Message {
                id,
                from,
                text,
                ts,
                tp,
                ..
            } => {
                let Some(id) = id.as_deref().and_then(|s| s.parse::<MsgId>().ok()) else {
                    metrics.bus_decode_errors.inc();
                    warn!(room = %room_name, "skipping bus message without a valid id");
                    return;
                };
                if id <= room.last_id {
                    return;
                }
                room.last_id = id;
                room.counter.inc();
                let span = tp.as_deref().map(|tp| {
                    let span = info_span!("fan_out", node = %self.inner.node, room = %room_name, id = %id, members = room.members.len());
                    telemetry::set_remote_parent(&span, tp);
                    span
                });
                let _entered = span.as_ref().map(|s| s.enter());
                let frame = ServerFrame::Message {
                    room: room_name,
                    id,
                    from: &from,
                    text: &text,
                    ts: ts / 1000,
                }
                .encode();
                let shared = Arc::new(RoomFrame {
                    room: room_name.clone(),
                    frame,
                    id: Some(id),
                    ts_us: ts,
                });
                for member in room.members.values() {
                    deliver(member, Out::Room(shared.clone()));
                }
            }
            Envelope::Presence {
                event, user, conn, ..
            } => {
                let frame = ServerFrame::Presence {
                    room: room_name,
                    event: event.as_str(),
                    user: &user,
                }
                .encode();
                let shared = Arc::new(RoomFrame {
                    room: room_name.clone(),
                    frame,
                    id: None,
                    ts_us: 0,
                });
                for member in room.members.values().filter(|m| *m.presence.conn != *conn) {
                    deliver(member, Out::Room(shared.clone()));
                }
            }
        }
    }
}

/// Queues a frame without waiting; a full queue closes the member as a slow consumer.
fn deliver(member: &Member, out: Out) {
    match member.tx.try_send(out) {
        Ok(()) => {}
        Err(mpsc::error::TrySendError::Full(_)) => {
            debug!(conn = %member.presence.conn, "outbound queue full: slow consumer");
            member.ctl.close(DisconnectReason::SlowConsumer);
        }
        Err(mpsc::error::TrySendError::Closed(_)) => {}
    }
}

/// Spawns the receive loop on the current runtime.
pub fn spawn_receiver(
    hub: Hub,
    rx: BusReceiver,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(
        hub.run_receiver(rx, stop)
            .instrument(info_span!("bus_receiver")),
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn queue_items_stay_small() {
        assert!(std::mem::size_of::<super::Out>() <= 16);
    }
}
