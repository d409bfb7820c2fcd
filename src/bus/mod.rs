//! The bus carries each room's messages and presence between replicas and keeps each
//! room's history; it also owns node liveness (heartbeat, reaping the members of dead
//! nodes), recovery after a reconnect (resubscribe, catch up) and its own shutdown.
//! Nothing outside this module asks which bus is running.
//!
//! The bus assigns each message its room offset ([`MsgId`]) atomically with the publish,
//! so every replica sees one order per room, and the sender's own copy comes back
//! through the bus too: one path, one order.
//!
//! # Adding a bus
//! Implement [`Backend`] in a new file (see [`memory`] and [`redis`]; the contract is
//! on each method), add a variant to [`Bus`] and [`BusReceiver`], and a branch to
//! [`Bus::connect`] choosing it from the configuration. Enum dispatch keeps every call
//! static (no boxed futures, no vtable) on the publish and fan-out paths.

pub(crate) mod envelope;
pub(crate) mod memory;
pub(crate) mod redis;

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;

pub(crate) use envelope::{Control, Envelope, PresenceEvent};

use crate::config::Config;
use crate::protocol::{MsgId, User};

/// A bus failure; reaches clients only as the `unavailable` error code.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BusError {
    #[error("bus unavailable: {0}")]
    Unavailable(String),
    #[error("unexpected reply from the bus: {0}")]
    Protocol(String),
}

impl From<fred::error::Error> for BusError {
    fn from(e: fred::error::Error) -> Self {
        BusError::Unavailable(e.to_string())
    }
}

/// One local membership as the bus records it for presence.
#[derive(Debug, Clone)]
pub(crate) struct MemberRef {
    pub(crate) node: Arc<str>,
    pub(crate) conn: Arc<str>,
    pub(crate) user: User,
}

impl MemberRef {
    /// The presence field: `node|conn`, so a dead node's entries can be found.
    pub(crate) fn field(&self) -> String {
        format!("{}|{}", self.node, self.conn)
    }

    /// The presence envelope announcing `event` for this member (not yet stamped with
    /// the room's presence sequence number and count: the bus does that).
    pub(crate) fn presence(&self, event: PresenceEvent) -> String {
        self.presence_stamped(event, 0, 0)
    }

    /// The presence envelope announcing `event`, stamped with the room's presence
    /// sequence number and member count after the event.
    pub(crate) fn presence_stamped(&self, event: PresenceEvent, seq: u64, count: u64) -> String {
        Envelope::Presence {
            event,
            user: self.user.clone(),
            node: self.node.to_string(),
            conn: self.conn.to_string(),
            seq,
            count,
        }
        .encode()
    }

    /// The member's key in the room's roster, which lists each member once as clients
    /// see them (one per authenticated user however many connections it has, one per
    /// connection for anonymous users) in the order members are paged: `u:<user id>` or
    /// `c:<node|conn>`.
    pub(crate) fn roster_key(&self) -> String {
        match &self.user.id {
            Some(id) => format!("u:{id}"),
            None => format!("c:{}", self.field()),
        }
    }

    /// The user as the roster stores it (JSON).
    pub(crate) fn user_json(&self) -> String {
        // Strings only: serialising cannot fail.
        serde_json::to_string(&self.user).unwrap_or_default()
    }
}

/// The first presence sequence number of a room the bus knows nothing about: the
/// current time in microseconds, so numbers keep increasing when a room that emptied
/// (and forgot its counter) fills again, as long as a room sees fewer than one presence
/// change per microsecond.
pub(crate) fn first_presence_seq() -> u64 {
    crate::clock::unix_micros()
}

/// One page of a room's members, in roster order.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct MembersPage {
    pub(crate) members: Vec<User>,
    /// The room's member count (one per user).
    pub(crate) count: u64,
    /// The cursor to pass as `after` for the next page; `None` on the last page.
    pub(crate) next: Option<String>,
}

/// The key a user is known by to the server API's disconnect and kick: the user id, or
/// (anonymous users have none) the display name.
pub(crate) fn user_key(user: &User) -> &str {
    user.id.as_deref().unwrap_or(&user.name)
}

/// An idempotency key (already scoped by the caller: `a:` for the server API, shared by
/// every API key so a retry after a key rotation still matches; per user for clients)
/// and how long the bus remembers it.
#[derive(Debug, Clone)]
pub(crate) struct Idem {
    pub(crate) key: String,
    pub(crate) ttl_ms: u64,
}

/// The outcome of a publish: the message's id, and whether it is the id of an earlier
/// publish with the same idempotency key (then nothing was published).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Published {
    pub(crate) id: MsgId,
    pub(crate) duplicate: bool,
}

/// Which part of a room's history to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HistoryRange {
    /// The newest entries.
    Latest,
    /// Entries older than the id.
    Before(MsgId),
    /// Entries newer than the id.
    After(MsgId),
}

/// One page of a room's history, oldest first.
#[derive(Debug, Default)]
pub(crate) struct HistoryPage {
    pub(crate) entries: Vec<(MsgId, Bytes)>,
    /// Whether more entries lie beyond the page in the direction read.
    pub(crate) more: bool,
}

/// A message (with its id) or presence event (no id) received for one room.
#[derive(Debug)]
pub(crate) struct Incoming {
    pub(crate) room: Arc<str>,
    pub(crate) id: Option<MsgId>,
    pub(crate) payload: Bytes,
}

/// The answer to a join: who is there (the first page of the roster), where the room's
/// log and presence stand, and the replay.
#[derive(Debug, Default)]
pub(crate) struct JoinInfo {
    pub(crate) members: MembersPage,
    /// The room's presence sequence number at the join: every presence event up to it is
    /// reflected in `members`, every later one is not.
    pub(crate) pseq: u64,
    /// The newest message id in the room (`0-0` if none).
    pub(crate) head: MsgId,
    /// `None` without `since`; otherwise whether every message after `since` is replayed.
    pub(crate) recovered: Option<bool>,
    /// History entries after `since`, or the last `history` ones: (id, envelope).
    pub(crate) replay: Vec<(MsgId, Bytes)>,
    /// The user was removed from the room by the server API and may not join for this
    /// many more milliseconds; nothing was recorded.
    pub(crate) kicked_ms: Option<u64>,
}

/// Messages after a cursor still in a room's history.
#[derive(Debug, Default)]
pub(crate) struct CatchUp {
    /// False when the history no longer reaches back to the cursor (trimmed or lost).
    pub(crate) complete: bool,
    pub(crate) entries: Vec<(MsgId, Bytes)>,
}

/// An event from the bus to the rooms' receive loop.
#[derive(Debug)]
pub(crate) enum BusEvent {
    Message(Incoming),
    /// A control message for every replica ([`Control`], still encoded).
    Control(Bytes),
    /// The subscriber connection was re-established: subscriptions are gone and messages
    /// may have been missed in between.
    Reconnected,
    /// Rooms moved between servers (a cluster failover or resharding): subscriptions on
    /// the old owners are gone and messages may have been missed in between.
    Moved,
    /// The receive loop fell behind and `n` messages were dropped.
    Lagged(u64),
    Closed,
}

/// What every bus implements. Each operation either happens completely or fails with a
/// [`BusError`] (the Redis bus runs each multi-step one as a single script).
pub(crate) trait Backend {
    /// Whether the bus can carry messages now.
    fn is_connected(&self) -> bool;
    /// Whether this node's liveness is recorded, so its members' presence can be reaped
    /// if it dies; joins wait for it.
    fn is_registered(&self) -> bool;
    /// Whether the bus is connected but not answering (its commands fail at once meanwhile).
    fn is_stalled(&self) -> bool {
        false
    }
    /// Appends the envelope to the room's history and publishes it with the id assigned
    /// atomically with the append; returns the id. With `idem`, a key already recorded
    /// for the room returns the recorded id and publishes nothing; the check, the publish
    /// and recording the key are one atomic step.
    fn publish(
        &self,
        room: &str,
        envelope: String,
        idem: Option<Idem>,
    ) -> impl Future<Output = Result<Published, BusError>> + Send;
    /// Publishes an envelope to the room's members on every replica without storing it
    /// or giving it an id (typing indicators).
    fn signal(
        &self,
        room: &str,
        envelope: String,
    ) -> impl Future<Output = Result<(), BusError>> + Send;
    /// Publishes a control message to every replica; returns how many receive it.
    fn control(&self, message: String) -> impl Future<Output = Result<usize, BusError>> + Send;
    /// Bars `user_key` ([`user_key`]) from joining `room` for `ttl_ms`.
    fn bar(
        &self,
        room: &str,
        user_key: &str,
        ttl_ms: u64,
    ) -> impl Future<Output = Result<(), BusError>> + Send;
    /// A page of the room's history (at most `limit` entries), oldest first.
    fn history(
        &self,
        room: &str,
        range: HistoryRange,
        limit: usize,
    ) -> impl Future<Output = Result<HistoryPage, BusError>> + Send;
    /// A page of at most `limit` of the room's members on every replica (one per user),
    /// after the cursor `after` (`None`: from the start). Members present for the whole
    /// paging appear exactly once; members who join or leave meanwhile may or may not.
    fn members(
        &self,
        room: &str,
        after: Option<&str>,
        limit: usize,
    ) -> impl Future<Output = Result<MembersPage, BusError>> + Send;
    /// Every room with members on any replica, with its member count (one per user).
    fn rooms(&self) -> impl Future<Output = Result<Vec<(String, usize)>, BusError>> + Send;
    /// Starts receiving the room's messages; done when this returns.
    fn subscribe(&self, room: &str) -> impl Future<Output = Result<(), BusError>> + Send;
    fn unsubscribe(&self, room: &str) -> impl Future<Output = Result<(), BusError>> + Send;
    /// Subscribes every given room again (after a reconnect or lag).
    fn resubscribe(&self, rooms: &[Arc<str>]) -> impl Future<Output = Result<(), BusError>> + Send;
    /// Unless the member's user is barred from the room ([`JoinInfo::kicked_ms`]):
    /// records the member's presence, announces it (stamped with the room's next
    /// presence sequence number and member count), and reads the first `page` members,
    /// the member count and the replay (after `since`, or else the last `history`
    /// entries), all in one atomic step with the announcement.
    fn join(
        &self,
        room: &str,
        member: &MemberRef,
        since: Option<MsgId>,
        history: usize,
        page: usize,
    ) -> impl Future<Output = Result<JoinInfo, BusError>> + Send;
    /// Removes the member's presence and announces the leave. `last_local` tells that
    /// this node has no other member in the room.
    fn leave(
        &self,
        room: &str,
        member: &MemberRef,
        last_local: bool,
    ) -> impl Future<Output = Result<(), BusError>> + Send;
    /// Messages after `since` still in the room's history.
    fn catch_up(
        &self,
        room: &str,
        since: MsgId,
    ) -> impl Future<Output = Result<CatchUp, BusError>> + Send;
    /// Periodic upkeep, every `presence.refresh`: keep this node's liveness, restore its
    /// presence if the bus lost it (`memberships` lists every local membership), reap
    /// dead nodes, forget idle rooms.
    fn maintain(
        &self,
        memberships: impl FnOnce() -> Vec<(Arc<str>, MemberRef)> + Send,
    ) -> impl Future<Output = ()> + Send;
    /// Unregisters this node and closes connections (end of a drain).
    fn shutdown(&self) -> impl Future<Output = ()> + Send;
}

/// The bus of this replica; cheap to clone.
#[derive(Clone)]
pub(crate) enum Bus {
    Memory(memory::MemoryBus),
    Redis(redis::RedisBus),
}

/// The receiving half of the bus, owned by the rooms' receive loop.
pub(crate) enum BusReceiver {
    Memory(memory::MemoryReceiver),
    Redis(redis::RedisReceiver),
}

macro_rules! each {
    ($bus:expr, $b:ident => $call:expr) => {
        match $bus {
            Bus::Memory($b) => $call,
            Bus::Redis($b) => $call,
        }
    };
}

impl BusReceiver {
    pub(crate) async fn next(&mut self) -> BusEvent {
        match self {
            BusReceiver::Memory(rx) => rx.next().await,
            BusReceiver::Redis(rx) => rx.next().await,
        }
    }
}

impl Bus {
    /// The bus the configuration asks for: Redis (a server, Sentinel or a cluster, by
    /// `redis.mode`) when configured, else in-process. The Redis bus connects (and
    /// reconnects) in the background.
    pub(crate) fn connect(config: &Config, node: Arc<str>) -> Result<(Bus, BusReceiver), BusError> {
        Ok(if config.redis.enabled() {
            let (bus, rx) = redis::RedisBus::connect(config, node)?;
            (Bus::Redis(bus), BusReceiver::Redis(rx))
        } else {
            let (bus, rx) = memory::MemoryBus::new(config.history.size, config.history.ttl);
            (Bus::Memory(bus), BusReceiver::Memory(rx))
        })
    }

    /// The bus's name, for logs.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Bus::Memory(_) => "memory",
            Bus::Redis(_) => "redis",
        }
    }

    pub(crate) fn is_connected(&self) -> bool {
        each!(self, b => b.is_connected())
    }

    pub(crate) fn is_registered(&self) -> bool {
        each!(self, b => b.is_registered())
    }

    pub(crate) fn is_stalled(&self) -> bool {
        each!(self, b => b.is_stalled())
    }

    pub(crate) async fn publish(
        &self,
        room: &str,
        envelope: &Envelope,
        idem: Option<Idem>,
    ) -> Result<Published, BusError> {
        let envelope = envelope.encode();
        each!(self, b => b.publish(room, envelope, idem).await)
    }

    pub(crate) async fn signal(&self, room: &str, envelope: &Envelope) -> Result<(), BusError> {
        let envelope = envelope.encode();
        each!(self, b => b.signal(room, envelope).await)
    }

    pub(crate) async fn control(&self, message: &Control) -> Result<usize, BusError> {
        let message = message.encode();
        each!(self, b => b.control(message).await)
    }

    pub(crate) async fn bar(
        &self,
        room: &str,
        user_key: &str,
        ttl_ms: u64,
    ) -> Result<(), BusError> {
        each!(self, b => b.bar(room, user_key, ttl_ms).await)
    }

    pub(crate) async fn history(
        &self,
        room: &str,
        range: HistoryRange,
        limit: usize,
    ) -> Result<HistoryPage, BusError> {
        each!(self, b => b.history(room, range, limit).await)
    }

    pub(crate) async fn members(
        &self,
        room: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<MembersPage, BusError> {
        each!(self, b => b.members(room, after, limit).await)
    }

    pub(crate) async fn rooms(&self) -> Result<Vec<(String, usize)>, BusError> {
        each!(self, b => b.rooms().await)
    }

    pub(crate) async fn subscribe(&self, room: &str) -> Result<(), BusError> {
        each!(self, b => b.subscribe(room).await)
    }

    pub(crate) async fn unsubscribe(&self, room: &str) -> Result<(), BusError> {
        each!(self, b => b.unsubscribe(room).await)
    }

    pub(crate) async fn resubscribe(&self, rooms: &[Arc<str>]) -> Result<(), BusError> {
        each!(self, b => b.resubscribe(rooms).await)
    }

    pub(crate) async fn join(
        &self,
        room: &str,
        member: &MemberRef,
        since: Option<MsgId>,
        history: usize,
        page: usize,
    ) -> Result<JoinInfo, BusError> {
        each!(self, b => b.join(room, member, since, history, page).await)
    }

    pub(crate) async fn leave(
        &self,
        room: &str,
        member: &MemberRef,
        last_local: bool,
    ) -> Result<(), BusError> {
        each!(self, b => b.leave(room, member, last_local).await)
    }

    pub(crate) async fn catch_up(&self, room: &str, since: MsgId) -> Result<CatchUp, BusError> {
        each!(self, b => b.catch_up(room, since).await)
    }

    pub(crate) async fn maintain(
        &self,
        memberships: impl FnOnce() -> Vec<(Arc<str>, MemberRef)> + Send,
    ) {
        each!(self, b => b.maintain(memberships).await)
    }

    pub(crate) async fn shutdown(&self) {
        each!(self, b => b.shutdown().await)
    }
}
