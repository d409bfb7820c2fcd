//! Rooms: the one owner of room operations on this replica — join (subscribe, presence,
//! replay, undo on failure), leave (including the retry of leaves that could not reach
//! the bus), publish (idempotent with a key), typing indicators, and the server API's
//! reads (history, members, rooms) and control (disconnect a user, remove a user from a
//! room: a control message to every replica, each answering how many connections it
//! affected) — for every caller (WebSocket sessions and the server API).
//!
//! It keeps the local members of each room and ref-counts the room's bus subscription:
//! subscribed when the first local member joins, unsubscribed after the last leaves. A
//! per-room async lock serialises those transitions, so concurrent joins and leaves
//! never strand a member without a subscription or keep a channel with no member.
//!
//! Its receive loop decodes each bus envelope once, encodes the client frame once, and
//! hands the same bytes to every local member ([`Member::deliver`] never waits: a member
//! that cannot keep up closes itself). After a bus reconnect it resubscribes every room
//! and replays what each missed from the history before any newer message.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use bytes::Bytes;
use dashmap::DashMap;
use futures_util::{FutureExt, StreamExt};
use prometheus::IntCounter;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

use crate::bus::{
    Bus, BusError, BusEvent, BusReceiver, Control, Envelope, HistoryPage, HistoryRange, Idem,
    Incoming, MemberRef, MembersPage, PresenceEvent, Published, user_key,
};
use crate::clock;
use crate::config::PresenceConfig;
use crate::metrics::Metrics;
use crate::protocol::{Encode, MsgId, ServerFrame, User};
use crate::telemetry;

/// A local member of a room, as the rooms see it: somewhere to put frames.
pub(crate) trait Member: Send + Sync {
    /// Queues a room frame without waiting. A member that cannot take it (its queue is
    /// full) closes itself as a slow consumer; it never delays the other members.
    fn deliver(&self, frame: Arc<RoomFrame>);
    /// Like [`Member::deliver`], for a frame of a burst (the receive loop is behind): the
    /// member may queue it for a flush task of its own, which writes everything queued
    /// at once and runs on any worker, instead of writing it from the caller now.
    fn deliver_later(&self, frame: Arc<RoomFrame>) {
        self.deliver(frame);
    }
    /// The server API removed the member from `room` (it is no longer a member).
    fn removed(&self, room: &Arc<str>);
}

/// Closes connections for the server API's disconnect: implemented by the sessions layer
/// (which knows every connection, in rooms or not) and handed to [`Rooms::set_closer`].
pub(crate) trait Closer: Send + Sync {
    /// Closes every connection of the user (4003) whose token `sub` is `user`, or whose
    /// local member key is in `members`, telling each `reason` first; returns how many.
    fn close_user(&self, user: &str, members: &HashSet<u64>, reason: Option<&str>) -> u64;
    /// Closes the connections whose local member keys are in `members` with 1013
    /// `resume`: they missed messages this replica could not catch up, and get them by
    /// resuming. Returns how many.
    fn close_to_resume(&self, members: &HashSet<u64>) -> u64;
}

/// What a control request (disconnect, kick) did across the replicas.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ControlOutcome {
    /// Connections closed or removed, summed over the replicas that answered.
    pub(crate) affected: u64,
    /// Replicas that received the request.
    pub(crate) replicas: usize,
    /// Replicas that answered in time.
    pub(crate) answered: usize,
}

/// How long a control request waits for the replicas' answers.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(3);
/// At most one typing indicator per user per room per this interval.
const TYPING_INTERVAL: Duration = Duration::from_secs(1);
/// How many rooms catch up from their history at once after a reconnect or failover.
const CATCH_UP_CONCURRENCY: usize = 16;

/// A message or presence frame for one room, encoded once per replica and shared by
/// every local recipient.
#[derive(Debug)]
pub(crate) struct RoomFrame {
    pub(crate) room: Arc<str>,
    pub(crate) frame: Utf8Bytes,
    /// The message id; `None` for presence.
    pub(crate) id: Option<MsgId>,
    /// Publish time, Unix µs (0 for presence).
    pub(crate) ts_us: u64,
    /// For presence: the room's presence sequence number of the newest event the frame
    /// reflects; a member whose `joined` already reflects it never gets the frame. 0 for
    /// everything else.
    pub(crate) pseq: u64,
    /// The frame compressed for members that agreed on `permessage-deflate`: made by the
    /// first such recipient, shared by the rest (`None` inside: not worth it).
    pub(crate) deflated: OnceLock<Option<Bytes>>,
}

impl RoomFrame {
    /// The frame's `permessage-deflate` payload, compressed once for every recipient;
    /// `None` when compression does not make it smaller.
    pub(crate) fn deflated(&self) -> Option<Bytes> {
        self.deflated
            .get_or_init(|| crate::session::compress(self.frame.as_bytes()))
            .clone()
    }
}

/// A completed join: who is there (the first page of members and the count), where the
/// room's log and presence stand, and the replay (already encoded as `message` frames).
#[derive(Debug)]
pub(crate) struct Joined {
    pub(crate) members: MembersPage,
    /// The room's presence sequence number the member list reflects.
    pub(crate) pseq: u64,
    pub(crate) head: MsgId,
    pub(crate) recovered: Option<bool>,
    pub(crate) replay: Vec<(MsgId, Utf8Bytes)>,
}

/// Why a room operation was refused; nothing was done.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RoomError {
    /// The node is draining: join elsewhere.
    #[error("this node is draining")]
    Draining,
    /// The node's liveness is not recorded yet (just started), or the bus failed.
    #[error("the bus is unavailable")]
    Unavailable,
    /// The server API removed the user from this room; joining again is refused for
    /// this many more milliseconds.
    #[error("removed from the room")]
    Barred { ms: u64 },
}

impl From<BusError> for RoomError {
    fn from(_: BusError) -> Self {
        RoomError::Unavailable
    }
}

struct Local {
    member: Arc<dyn Member>,
    /// Who this is, as presence records it (node, connection, user).
    presence: MemberRef,
}

impl Local {
    fn deliver(&self, frame: Arc<RoomFrame>, later: bool) {
        if later {
            self.member.deliver_later(frame);
        } else {
            self.member.deliver(frame);
        }
    }
}

struct Room {
    members: HashMap<u64, Local>,
    /// `true` while the bus channel is subscribed; the lock serialises transitions.
    subscribed: Arc<tokio::sync::Mutex<bool>>,
    /// Newest message id fanned out; older or equal ids are duplicates and skipped.
    last_id: MsgId,
    /// Until a message is fanned out: the oldest log head a local member joined at, where
    /// a recovery (reconnect, lag) catches up from. `None` before the first join answers.
    join_head: Option<MsgId>,
    counter: IntCounter,
    /// Typing indicators: when each user (by [`user_key`]) last had one published from
    /// this node / relayed to this node's members. Empty unless someone types.
    typing_out: HashMap<String, tokio::time::Instant>,
    typing_in: HashMap<String, tokio::time::Instant>,
    presence: PresenceState,
}

/// What this replica knows of a room's presence from the events it received.
#[derive(Debug, Default)]
struct PresenceState {
    /// The newest presence sequence number seen, and the member count after it.
    seq: u64,
    count: u64,
    /// Joins and leaves not yet told in a summary (a room above
    /// `presence.notify_max_members`).
    joins: u64,
    leaves: u64,
}

/// How presence is told to members: exact notices in small rooms, summaries in large
/// ones (`[presence]` in the configuration).
#[derive(Debug, Clone, Copy)]
struct PresencePolicy {
    members_in_join: usize,
    notify_max_members: u64,
    summary_interval: Duration,
}

/// Whether a typing indicator from `user` may pass now (and records it if so): at most
/// one per [`TYPING_INTERVAL`]. Forgets stale users as the map grows.
fn typing_allowed(seen: &mut HashMap<String, tokio::time::Instant>, user: &str) -> bool {
    let now = tokio::time::Instant::now();
    if seen
        .get(user)
        .is_some_and(|at| now.duration_since(*at) < TYPING_INTERVAL)
    {
        return false;
    }
    if seen.len() >= 256 {
        seen.retain(|_, at| now.duration_since(*at) < TYPING_INTERVAL);
    }
    seen.insert(user.to_string(), now);
    true
}

/// Cheap to clone; all clones share one registry.
#[derive(Clone)]
pub(crate) struct Rooms {
    inner: Arc<Inner>,
}

struct Inner {
    node: Arc<str>,
    bus: Bus,
    rooms: DashMap<Arc<str>, Room>,
    metrics: Arc<Metrics>,
    /// True from a bus reconnect until every room is subscribed again.
    resubscribing: AtomicBool,
    /// Set at the start of a drain: joins are refused from then on.
    draining: AtomicBool,
    /// Leaves whose presence update failed (bus down); retried by [`Rooms::maintain`]
    /// so no departed member stays listed.
    deferred_leaves: Mutex<Vec<(Arc<str>, MemberRef)>>,
    /// The sessions layer's closer, for the server API's disconnect.
    closer: std::sync::OnceLock<Arc<dyn Closer>>,
    /// Control requests of this node awaiting the replicas' answers: request id -> answers.
    pending: DashMap<String, tokio::sync::mpsc::UnboundedSender<u64>>,
    policy: PresencePolicy,
}

impl Rooms {
    pub(crate) fn new(
        node: Arc<str>,
        bus: Bus,
        metrics: Arc<Metrics>,
        presence: &PresenceConfig,
    ) -> Self {
        Rooms {
            inner: Arc::new(Inner {
                node,
                bus,
                rooms: DashMap::new(),
                metrics,
                resubscribing: AtomicBool::new(false),
                draining: AtomicBool::new(false),
                deferred_leaves: Mutex::new(Vec::new()),
                closer: std::sync::OnceLock::new(),
                pending: DashMap::new(),
                policy: PresencePolicy {
                    members_in_join: presence.members_in_join,
                    notify_max_members: presence.notify_max_members,
                    summary_interval: presence.summary_interval,
                },
            }),
        }
    }

    /// Hands the rooms the sessions layer's closer (once, at wiring).
    pub(crate) fn set_closer(&self, closer: Arc<dyn Closer>) {
        let _ = self.inner.closer.set(closer);
    }

    /// Whether local member `key` is (still) in `room`: the server API may have removed it.
    pub(crate) fn is_member(&self, room: &str, key: u64) -> bool {
        self.inner
            .rooms
            .get(room)
            .is_some_and(|r| r.members.contains_key(&key))
    }

    pub(crate) fn node(&self) -> &Arc<str> {
        &self.inner.node
    }

    /// Why this node should get no traffic from the rooms' point of view, if any.
    pub(crate) fn readiness(&self) -> Result<(), &'static str> {
        if !self.inner.bus.is_connected() {
            Err("bus_down")
        } else if self.inner.bus.is_stalled() {
            Err("bus_stalled")
        } else if !self.inner.bus.is_registered() {
            Err("starting")
        } else if self.inner.resubscribing.load(Ordering::Acquire) {
            Err("resubscribing")
        } else {
            Ok(())
        }
    }

    pub(crate) fn bus_connected(&self) -> bool {
        self.inner.bus.is_connected()
    }

    pub(crate) fn bus_kind(&self) -> &'static str {
        self.inner.bus.kind()
    }

    /// Refuses joins from now on (the drain has started).
    pub(crate) fn stop_joins(&self) {
        self.inner.draining.store(true, Ordering::Release);
    }

    pub(crate) fn room_count(&self) -> usize {
        self.inner.rooms.len()
    }

    /// Joins `presence` to `room` as local member `key`: registers the member (its frames
    /// for the room flow from now on), subscribes the room's channel if it is the first
    /// local member, records and announces presence, and reads members and replay.
    /// On failure every step is undone and nothing is left behind.
    /// The room's name as the rooms hold it (the allocation every frame of the room
    /// carries) when a local member is in it, else a new one.
    pub(crate) fn name(&self, room: &str) -> Arc<str> {
        match self.inner.rooms.get(room) {
            Some(entry) => entry.key().clone(),
            None => Arc::from(room),
        }
    }

    pub(crate) async fn join(
        &self,
        room: &Arc<str>,
        key: u64,
        member: Arc<dyn Member>,
        presence: MemberRef,
        since: Option<MsgId>,
        history: usize,
    ) -> Result<Joined, RoomError> {
        if self.inner.draining.load(Ordering::Acquire) {
            return Err(RoomError::Draining);
        }
        if !self.inner.bus.is_registered() {
            // The first presence heartbeat has not reached the bus yet (just started).
            return Err(RoomError::Unavailable);
        }
        if let Err(e) = self.add_local(room, key, member, presence.clone()).await {
            warn!(%room, error = %e, "join: subscribe failed");
            return Err(e.into());
        }
        let page = self.inner.policy.members_in_join;
        let info = match self
            .inner
            .bus
            .join(room, &presence, since, history, page)
            .await
        {
            Ok(info) => info,
            Err(e) => {
                warn!(%room, error = %e, "join: presence/history failed");
                self.remove_local(room, key).await;
                return Err(e.into());
            }
        };
        if let Some(ms) = info.kicked_ms {
            self.remove_local(room, key).await;
            return Err(RoomError::Barred { ms });
        }
        self.inner.metrics.joins.inc();
        if let Some(mut r) = self.inner.rooms.get_mut(&**room)
            && r.last_id == MsgId::ZERO
        {
            r.join_head = Some(r.join_head.map_or(info.head, |h| h.min(info.head)));
        }
        let replay = info
            .replay
            .iter()
            .filter_map(|(id, payload)| replay_frame(room, *id, payload))
            .collect();
        Ok(Joined {
            members: info.members,
            pseq: info.pseq,
            head: info.head,
            recovered: info.recovered,
            replay,
        })
    }

    /// Removes local member `key` from `room` (unsubscribing after the last) and its
    /// presence (announcing the leave). A presence update that cannot reach the bus is
    /// retried by [`Rooms::maintain`] until it does.
    pub(crate) async fn leave(&self, room: &Arc<str>, key: u64, presence: &MemberRef) {
        let last_local = self.remove_local(room, key).await;
        self.inner.metrics.leaves.inc();
        if let Err(e) = self.inner.bus.leave(room, presence, last_local).await {
            warn!(%room, error = %e, "leave: presence update failed; will retry");
            self.defer_leave(room.clone(), presence.clone());
        }
    }

    /// Publishes a message from `from` (on connection `conn`) to `room`; returns its id.
    /// Every member on every replica, the sender included, receives it through the bus.
    /// With `idem`, a key seen within its ttl returns the first id and publishes nothing.
    pub(crate) async fn publish(
        &self,
        room: &str,
        from: &User,
        conn: &str,
        text: String,
        traceparent: Option<String>,
        idem: Option<Idem>,
    ) -> Result<Published, RoomError> {
        let envelope = Envelope::Message {
            from: from.clone(),
            text,
            ts: clock::unix_micros(),
            node: self.inner.node.to_string(),
            conn: conn.to_string(),
            tp: traceparent,
        };
        match self.inner.bus.publish(room, &envelope, idem).await {
            Ok(published) => {
                if published.duplicate {
                    self.inner.metrics.idempotent_duplicates.inc();
                } else {
                    self.inner.metrics.messages_published.inc();
                }
                Ok(published)
            }
            Err(e) => {
                warn!(%room, error = %e, "publish failed");
                Err(e.into())
            }
        }
    }

    /// Relays "`user` is typing" to the room's other members on every replica, unless
    /// this user's last one from this node was under a second ago (then it is dropped).
    pub(crate) async fn typing(
        &self,
        room: &str,
        user: &User,
        conn: &str,
    ) -> Result<(), RoomError> {
        let allowed = match self.inner.rooms.get_mut(room) {
            Some(mut r) => typing_allowed(&mut r.typing_out, user_key(user)),
            None => false,
        };
        if !allowed {
            self.inner.metrics.typing_dropped.inc();
            return Ok(());
        }
        let envelope = Envelope::Typing {
            user: user.clone(),
            node: self.inner.node.to_string(),
            conn: conn.to_string(),
        };
        self.inner.bus.signal(room, &envelope).await.map_err(|e| {
            warn!(%room, error = %e, "typing: publish failed");
            RoomError::from(e)
        })
    }

    /// A page of the room's history as `message` frames' parts, oldest first.
    pub(crate) async fn history(
        &self,
        room: &str,
        range: HistoryRange,
        limit: usize,
    ) -> Result<HistoryPage, RoomError> {
        Ok(self.inner.bus.history(room, range, limit).await?)
    }

    /// A page of the room's members on every replica (one per user) after the cursor
    /// `after`; `limit` defaults to `presence.members_in_join`.
    pub(crate) async fn members(
        &self,
        room: &str,
        after: Option<&str>,
        limit: Option<usize>,
    ) -> Result<MembersPage, RoomError> {
        let limit = limit.unwrap_or(self.inner.policy.members_in_join);
        Ok(self.inner.bus.members(room, after, limit.max(1)).await?)
    }

    /// Counts one member list page served (`roomcast_members_pages_total`).
    pub(crate) fn count_members_page(&self) {
        self.inner.metrics.members_pages.inc();
    }

    /// Every room with members on any replica, with member counts.
    pub(crate) async fn list(&self) -> Result<Vec<(String, usize)>, RoomError> {
        Ok(self.inner.bus.rooms().await?)
    }

    /// Closes every connection of `user` on every replica with 4003.
    pub(crate) async fn disconnect_user(
        &self,
        user: &str,
        reason: Option<String>,
    ) -> Result<ControlOutcome, RoomError> {
        let req = request_id();
        let control = Control::Disconnect {
            user: user.to_string(),
            reason,
            req: req.clone(),
            from: self.inner.node.to_string(),
        };
        self.request(req, control).await
    }

    /// Takes `user` out of `room` on every replica (`left` with reason `removed`) and bars
    /// them from joining it again for `ttl`.
    pub(crate) async fn kick(
        &self,
        room: &str,
        user: &str,
        ttl: Duration,
    ) -> Result<ControlOutcome, RoomError> {
        // The bar first: a rejoin racing the removal is refused.
        self.inner
            .bus
            .bar(room, user, ttl.as_millis() as u64)
            .await?;
        let req = request_id();
        let control = Control::Kick {
            room: room.to_string(),
            user: user.to_string(),
            req: req.clone(),
            from: self.inner.node.to_string(),
        };
        self.request(req, control).await
    }

    /// Publishes a control request and sums the replicas' answers (those that answer
    /// within [`CONTROL_TIMEOUT`]).
    async fn request(&self, req: String, control: Control) -> Result<ControlOutcome, RoomError> {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        self.inner.pending.insert(req.clone(), tx);
        let replicas = match self.inner.bus.control(&control).await {
            Ok(n) => n,
            Err(e) => {
                self.inner.pending.remove(&req);
                warn!(error = %e, "control request failed");
                return Err(e.into());
            }
        };
        let mut outcome = ControlOutcome {
            replicas,
            ..ControlOutcome::default()
        };
        let deadline = tokio::time::Instant::now() + CONTROL_TIMEOUT;
        while outcome.answered < replicas {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(n)) => {
                    outcome.answered += 1;
                    outcome.affected += n;
                }
                Ok(None) | Err(_) => break,
            }
        }
        self.inner.pending.remove(&req);
        if outcome.answered < replicas {
            warn!(
                replicas,
                answered = outcome.answered,
                "not every replica answered a control request in time"
            );
        }
        Ok(outcome)
    }

    /// Acts on a control message from the bus (in a task of its own: removing members
    /// talks to the bus, and the receive loop must not wait for it).
    fn on_control(&self, payload: &[u8]) {
        let control = match Control::decode(payload) {
            Ok(c) => c,
            Err(e) => {
                self.inner.metrics.bus_decode_errors.inc();
                warn!(error = %e, "skipping undecodable control message");
                return;
            }
        };
        match control {
            Control::Done { req, to, n } => {
                if *to == *self.inner.node
                    && let Some(tx) = self.inner.pending.get(&req)
                {
                    let _ = tx.send(n);
                }
            }
            Control::Disconnect {
                user,
                reason,
                req,
                from,
            } => {
                let members = self.local_members_of(None, &user);
                let closed = self
                    .inner
                    .closer
                    .get()
                    .map_or(0, |c| c.close_user(&user, &members, reason.as_deref()));
                if closed > 0 {
                    info!(user = %user, closed, "disconnected by the server API");
                }
                self.answer(req, from, closed);
            }
            Control::Kick {
                room,
                user,
                req,
                from,
            } => {
                let rooms = self.clone();
                tokio::spawn(async move {
                    let room: Arc<str> = Arc::from(room);
                    let removed = rooms.remove_user(&room, &user).await;
                    rooms.answer(req, from, removed);
                });
            }
        }
    }

    /// Tells the requesting node what this one did.
    fn answer(&self, req: String, to: String, n: u64) {
        let rooms = self.clone();
        tokio::spawn(async move {
            let done = Control::Done { req, to, n };
            if let Err(e) = rooms.inner.bus.control(&done).await {
                warn!(error = %e, "could not answer a control request");
            }
        });
    }

    /// Keys of the local members whose user is `user` ([`user_key`]), in `room` or in
    /// any room.
    fn local_members_of(&self, room: Option<&str>, user: &str) -> HashSet<u64> {
        let mut keys = HashSet::new();
        let mut collect = |r: &Room| {
            for (key, local) in &r.members {
                if user_key(&local.presence.user) == user {
                    keys.insert(*key);
                }
            }
        };
        match room {
            Some(room) => {
                if let Some(r) = self.inner.rooms.get(room) {
                    collect(&r);
                }
            }
            None => self.inner.rooms.iter().for_each(|r| collect(&r)),
        }
        keys
    }

    /// Removes this node's members of `room` whose user is `user`: each is told
    /// (`left`, reason `removed`), its presence is removed and the leave announced.
    async fn remove_user(&self, room: &Arc<str>, user: &str) -> u64 {
        let mut removed = 0;
        for key in self.local_members_of(Some(room), user) {
            let local = self.inner.rooms.get(&**room).and_then(|r| {
                r.members
                    .get(&key)
                    .map(|l| (l.member.clone(), l.presence.clone()))
            });
            let Some((member, presence)) = local else {
                continue;
            };
            member.removed(room);
            self.leave(room, key, &presence).await;
            removed += 1;
        }
        if removed > 0 {
            info!(%room, user = %user, removed, "removed from the room by the server API");
        }
        removed
    }

    /// Periodic upkeep (every `presence.refresh`): the bus's liveness, presence restore
    /// and reaping, then the leaves that could not reach the bus before.
    pub(crate) async fn maintain(&self) {
        if !self.inner.bus.is_connected() {
            return;
        }
        let mut restored = None;
        self.inner
            .bus
            .maintain(|| {
                let members = self.memberships();
                restored = Some(members.clone());
                members
            })
            .await;
        if let Some(restored) = restored {
            self.leave_again_if_gone(restored).await;
        }
        self.retry_deferred_leaves().await;
    }

    /// After a presence restore from a snapshot: a member of the snapshot that has left
    /// since may have had its leave recorded before the restore recorded it again, so it
    /// is left again (leaving is idempotent: nothing happens for a member not recorded).
    async fn leave_again_if_gone(&self, restored: Vec<(Arc<str>, MemberRef)>) {
        for (room, member) in restored {
            let field = member.field();
            let here = self
                .inner
                .rooms
                .get(&*room)
                .is_some_and(|r| r.members.values().any(|l| l.presence.field() == field));
            if here {
                continue;
            }
            let last_local = !self.inner.rooms.contains_key(&*room);
            if let Err(e) = self.inner.bus.leave(&room, &member, last_local).await {
                warn!(%room, error = %e, "leave after restore failed; will retry");
                self.defer_leave(room, member);
            }
        }
    }

    /// Unregisters this node from the bus and closes it (end of a drain).
    pub(crate) async fn shutdown(&self) {
        self.inner.bus.shutdown().await;
    }

    /// Registers a local member and makes sure the room's channel is subscribed before
    /// returning, so no message published after this call is missed.
    async fn add_local(
        &self,
        room: &Arc<str>,
        key: u64,
        member: Arc<dyn Member>,
        presence: MemberRef,
    ) -> Result<(), BusError> {
        let subscribed = {
            let mut entry = self
                .inner
                .rooms
                .entry(room.clone())
                .or_insert_with(|| Room {
                    members: HashMap::new(),
                    subscribed: Arc::new(tokio::sync::Mutex::new(false)),
                    last_id: MsgId::ZERO,
                    join_head: None,
                    counter: self.inner.metrics.room_counter(room),
                    typing_out: HashMap::new(),
                    typing_in: HashMap::new(),
                    presence: PresenceState::default(),
                });
            entry.members.insert(key, Local { member, presence });
            entry.subscribed.clone()
        };
        self.inner.metrics.rooms.set(self.inner.rooms.len() as i64);
        let mut is_subscribed = subscribed.lock().await;
        if !*is_subscribed {
            if let Err(e) = self.inner.bus.subscribe(room).await {
                drop(is_subscribed);
                self.remove_local(room, key).await;
                return Err(e);
            }
            *is_subscribed = true;
        }
        Ok(())
    }

    /// Removes a local member. Returns true if it was the room's last local member, in
    /// which case the channel has been unsubscribed when this returns.
    async fn remove_local(&self, room: &Arc<str>, key: u64) -> bool {
        let emptied = {
            let Some(mut entry) = self.inner.rooms.get_mut(&**room) else {
                return false;
            };
            if entry.members.remove(&key).is_none() {
                return false;
            }
            entry.members.is_empty().then(|| entry.subscribed.clone())
        };
        match emptied {
            Some(subscribed) => {
                self.release(room, subscribed).await;
                true
            }
            None => false,
        }
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

    fn defer_leave(&self, room: Arc<str>, member: MemberRef) {
        self.inner
            .deferred_leaves
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push((room, member));
    }

    /// Retries deferred leaves; those that fail again stay queued.
    async fn retry_deferred_leaves(&self) {
        let pending = std::mem::take(
            &mut *self
                .inner
                .deferred_leaves
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        );
        for (room, member) in pending {
            // Whether this node still has members there may have changed meanwhile.
            let last_local = !self.has_local_members(&room);
            if self
                .inner
                .bus
                .leave(&room, &member, last_local)
                .await
                .is_err()
            {
                self.defer_leave(room, member);
            }
        }
    }

    fn has_local_members(&self, room: &str) -> bool {
        self.inner
            .rooms
            .get(room)
            .is_some_and(|r| !r.members.is_empty())
    }

    /// Every local membership (for restoring presence).
    fn memberships(&self) -> Vec<(Arc<str>, MemberRef)> {
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

    /// Spawns the receive loop, which runs until the bus closes or `stop` is cancelled.
    pub(crate) fn spawn_receiver(
        &self,
        rx: BusReceiver,
        stop: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(
            self.clone()
                .run_receiver(rx, stop)
                .instrument(info_span!("bus_receiver")),
        )
    }

    async fn run_receiver(self, mut rx: BusReceiver, stop: CancellationToken) {
        let mut summaries = tokio::time::interval(self.inner.policy.summary_interval);
        summaries.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // An event already waiting means the loop is behind (a join storm's presence,
            // a burst of messages): its frames go to the members' flush tasks, which write
            // what piled up in one system call each, on every worker. Otherwise this task
            // writes each frame at once (one system call, no task wake-up).
            let (event, behind) = match rx.next().now_or_never() {
                Some(event) => {
                    if stop.is_cancelled() {
                        return;
                    }
                    if summaries.tick().now_or_never().is_some() {
                        self.send_summaries();
                    }
                    (event, true)
                }
                None => {
                    let event = tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = summaries.tick() => {
                            self.send_summaries();
                            continue;
                        }
                        e = rx.next() => e,
                    };
                    (event, false)
                }
            };
            match event {
                BusEvent::Message(incoming) => self.fan_out(&incoming, behind),
                BusEvent::Control(payload) => self.on_control(&payload),
                BusEvent::Reconnected => {
                    self.inner.metrics.bus_reconnects.inc();
                    self.recover("reconnect").await;
                }
                BusEvent::Moved => self.recover("moved").await,
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
        self.inner
            .metrics
            .bus_recoveries
            .with_label_values(&[why])
            .inc();
        self.inner.resubscribing.store(true, Ordering::Release);
        let rooms: Vec<Arc<str>> = self.inner.rooms.iter().map(|r| r.key().clone()).collect();
        let mut attempt = 0u32;
        while let Err(e) = self.inner.bus.resubscribe(&rooms).await {
            attempt += 1;
            warn!(error = %e, attempt, "resubscribe failed; retrying");
            tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt.min(10)))).await;
        }
        self.inner.resubscribing.store(false, Ordering::Release);
        let cursors: Vec<(Arc<str>, MsgId)> = self
            .inner
            .rooms
            .iter()
            .filter_map(|r| {
                // A room with nothing fanned out yet catches up from where its first
                // member joined: what was missed may be its first messages.
                let since = if r.last_id == MsgId::ZERO {
                    r.join_head?
                } else {
                    r.last_id
                };
                Some((r.key().clone(), since))
            })
            .collect();
        // The subscriber may reconnect before the command client: wait for both.
        let waited = tokio::time::timeout(Duration::from_secs(10), async {
            while !self.inner.bus.is_connected() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        if waited.is_err() {
            warn!("bus command connection still down; catch-up may fail");
        }
        // Rooms catch up side by side (a few at a time): one shard that cannot answer
        // costs its rooms their retries, not every other room's catch-up after them.
        let bus = &self.inner.bus;
        let mut catch_ups = futures_util::stream::iter(cursors)
            .map(|(room, since)| async move {
                let mut result = bus.catch_up(&room, since).await;
                for attempt in 1..=3u64 {
                    if result.is_ok() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
                    result = bus.catch_up(&room, since).await;
                }
                (room, since, result)
            })
            .buffer_unordered(CATCH_UP_CONCURRENCY);
        let mut replayed = 0usize;
        while let Some((room, since, result)) = catch_ups.next().await {
            match result {
                Ok(catch_up) => {
                    if !catch_up.complete {
                        warn!(%room, %since, "room history lost or trimmed; members may have missed messages");
                    }
                    for (id, payload) in catch_up.entries {
                        if let Some(envelope) = self.decode(&room, &payload) {
                            self.fan_out_envelope(&room, Some(id), envelope, true);
                            replayed += 1;
                        }
                    }
                }
                Err(e) => {
                    // Live messages will move the room past what it missed, and nothing
                    // else replays it: its members get it by resuming with `since`.
                    let members: HashSet<u64> = self
                        .inner
                        .rooms
                        .get(&*room)
                        .map(|r| r.members.keys().copied().collect())
                        .unwrap_or_default();
                    let closed = self
                        .inner
                        .closer
                        .get()
                        .map_or(0, |c| c.close_to_resume(&members));
                    warn!(%room, error = %e, closed, "catch-up failed; its members were closed to resume");
                }
            }
        }
        info!(
            reason = why,
            rooms = self.room_count(),
            replayed,
            "bus subscriptions restored"
        );
    }

    /// `later`: the receive loop is behind; see [`Member::deliver_later`].
    fn fan_out(&self, incoming: &Incoming, later: bool) {
        if let Some(envelope) = self.decode(&incoming.room, &incoming.payload) {
            self.fan_out_envelope(&incoming.room, incoming.id, envelope, later);
        }
    }

    /// Decodes one envelope received from the bus (counted; undecodable ones are logged,
    /// counted and skipped).
    fn decode(&self, room: &str, payload: &[u8]) -> Option<Envelope> {
        let metrics = &self.inner.metrics;
        metrics.bus_messages_received.inc();
        match Envelope::decode(payload) {
            Ok(e) => Some(e),
            Err(e) => {
                metrics.bus_decode_errors.inc();
                warn!(%room, error = %e, "skipping undecodable bus payload");
                None
            }
        }
    }

    /// Encodes the client frame once and hands it to every local member of the room
    /// (`later`: see [`Member::deliver_later`]).
    fn fan_out_envelope(
        &self,
        room_name: &Arc<str>,
        id: Option<MsgId>,
        envelope: Envelope,
        later: bool,
    ) {
        let metrics = &self.inner.metrics;
        let Some(mut room) = self.inner.rooms.get_mut(&**room_name) else {
            return;
        };
        match envelope {
            Envelope::Message {
                from, text, ts, tp, ..
            } => {
                let Some(id) = id else {
                    metrics.bus_decode_errors.inc();
                    warn!(room = %room_name, "skipping bus message without an id");
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
                let shared = Arc::new(RoomFrame {
                    room: room_name.clone(),
                    frame: message_frame(room_name, id, &from, &text, ts, false),
                    id: Some(id),
                    ts_us: ts,
                    pseq: 0,
                    deflated: OnceLock::new(),
                });
                for local in room.members.values() {
                    local.deliver(shared.clone(), later);
                }
            }
            Envelope::Typing { user, conn, .. } => {
                let key = user_key(&user);
                if !typing_allowed(&mut room.typing_in, key) {
                    metrics.typing_dropped.inc();
                    return;
                }
                metrics.typing_relayed.inc();
                let frame = ServerFrame::Typing {
                    room: room_name,
                    user: &user,
                }
                .encode();
                let shared = Arc::new(RoomFrame {
                    room: room_name.clone(),
                    frame,
                    id: None,
                    ts_us: 0,
                    pseq: 0,
                    deflated: OnceLock::new(),
                });
                // Not to the typist: neither the sending connection nor (a user with an
                // id) their other connections.
                for local in room.members.values().filter(|m| {
                    *m.presence.conn != *conn
                        && (user.id.is_none() || m.presence.user.id != user.id)
                }) {
                    local.deliver(shared.clone(), later);
                }
            }
            Envelope::Presence {
                event,
                user,
                conn,
                seq,
                count,
                ..
            } => {
                let state = &mut room.presence;
                if seq > state.seq {
                    state.seq = seq;
                    state.count = count;
                }
                let size = presence_size(event, count);
                if size > self.inner.policy.notify_max_members {
                    // A large room: told in the next summary.
                    match event {
                        PresenceEvent::Join => state.joins += 1,
                        PresenceEvent::Leave => state.leaves += 1,
                    }
                    metrics.presence_summarised.inc();
                    return;
                }
                let frame = ServerFrame::Presence {
                    room: room_name,
                    event: event.as_str(),
                    user: &user,
                    // Envelopes of earlier versions carry no count.
                    member_count: (seq != 0).then_some(count),
                }
                .encode();
                let shared = Arc::new(RoomFrame {
                    room: room_name.clone(),
                    frame,
                    id: None,
                    ts_us: 0,
                    pseq: seq,
                    deflated: OnceLock::new(),
                });
                // A member is not told about its own join or leave.
                for local in room.members.values().filter(|m| *m.presence.conn != *conn) {
                    local.deliver(shared.clone(), later);
                }
            }
        }
    }

    /// Sends each large room that had joins or leaves since its last summary one
    /// `presence` summary (member count, joins, leaves); at most once per
    /// `presence.summary_interval`, as this runs on that interval.
    fn send_summaries(&self) {
        for mut entry in self.inner.rooms.iter_mut() {
            let name = entry.key().clone();
            let room = entry.value_mut();
            let state = &mut room.presence;
            if state.joins == 0 && state.leaves == 0 {
                continue;
            }
            let frame = ServerFrame::PresenceSummary {
                room: &name,
                event: "summary",
                member_count: state.count,
                joins: state.joins,
                leaves: state.leaves,
            }
            .encode();
            let shared = Arc::new(RoomFrame {
                room: name,
                frame,
                id: None,
                ts_us: 0,
                pseq: state.seq,
                deflated: OnceLock::new(),
            });
            state.joins = 0;
            state.leaves = 0;
            for local in room.members.values() {
                local.member.deliver(shared.clone());
            }
            self.inner.metrics.presence_summaries.inc();
        }
    }
}

/// A fresh control request id.
fn request_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// The `message` frame of one message (`replay`: part of a join's replay).
fn message_frame(
    room: &str,
    id: MsgId,
    from: &User,
    text: &str,
    ts_us: u64,
    replay: bool,
) -> Utf8Bytes {
    ServerFrame::Message {
        room,
        id,
        from,
        text,
        ts: ts_us / 1000,
        replay,
    }
    .encode()
}

/// The room's size counting the member a presence event is about: after a join, before
/// a leave. `count` comes from the bus (outside data): a corrupt one saturates instead of
/// overflowing.
pub(crate) fn presence_size(event: PresenceEvent, count: u64) -> u64 {
    match event {
        PresenceEvent::Join => count,
        PresenceEvent::Leave => count.saturating_add(1),
    }
}

/// Encodes one history entry as a `message` frame flagged as a replay.
pub(crate) fn replay_frame(room: &str, id: MsgId, payload: &Bytes) -> Option<(MsgId, Utf8Bytes)> {
    match Envelope::decode(payload) {
        Ok(Envelope::Message { from, text, ts, .. }) => {
            Some((id, message_frame(room, id, &from, &text, ts, true)))
        }
        Ok(Envelope::Presence { .. } | Envelope::Typing { .. }) => None,
        Err(e) => {
            warn!(%room, %id, error = %e, "skipping undecodable history entry");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::memory::MemoryBus;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn a_corrupt_presence_count_from_the_bus_saturates() {
        // A leave's size is the count plus the leaver: a count of u64::MAX (a corrupt or
        // hostile bus value) overflowed (a panic with overflow checks, a wrap to 0 that
        // sent a large room's leave as a notice without).
        assert_eq!(presence_size(PresenceEvent::Leave, u64::MAX), u64::MAX);
        assert_eq!(presence_size(PresenceEvent::Leave, 2), 3);
        assert_eq!(presence_size(PresenceEvent::Join, 2), 2);
    }

    /// A member that counts what it is handed.
    #[derive(Default)]
    struct Inbox(AtomicUsize);

    impl Member for Inbox {
        fn deliver(&self, _frame: Arc<RoomFrame>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }

        fn removed(&self, _room: &Arc<str>) {}
    }

    fn rooms() -> (Rooms, CancellationToken) {
        let (bus, rx) = MemoryBus::new(100, Duration::from_secs(60));
        let rooms = Rooms::new(
            Arc::from("n1"),
            Bus::Memory(bus),
            Arc::new(Metrics::new(10)),
            &PresenceConfig::default(),
        );
        let stop = CancellationToken::new();
        rooms.spawn_receiver(crate::bus::BusReceiver::Memory(rx), stop.clone());
        (rooms, stop)
    }

    fn presence(key: u64) -> MemberRef {
        MemberRef {
            node: Arc::from("n1"),
            conn: Arc::from(format!("c{key}")),
            user: User::new(format!("u{key}")),
        }
    }

    /// The room's state as (local members, subscribed), or `None` when forgotten.
    fn state(rooms: &Rooms, room: &str) -> Option<(usize, bool)> {
        let r = rooms.inner.rooms.get(room)?;
        let subscribed = *r.subscribed.try_lock().expect("no transition in progress");
        Some((r.members.len(), subscribed))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_joins_and_leaves_keep_the_subscription_iff_members_remain() {
        let (rooms, stop) = rooms();
        let room: Arc<str> = Arc::from("hall");
        for round in 0..20u64 {
            // 40 members join at once; the odd ones leave again at once, racing the joins.
            let mut tasks = Vec::new();
            let inboxes: Vec<Arc<Inbox>> = (0..40).map(|_| Arc::default()).collect();
            for (i, inbox) in inboxes.iter().enumerate() {
                let (rooms, room, inbox) = (rooms.clone(), room.clone(), inbox.clone());
                let key = round * 100 + i as u64;
                tasks.push(tokio::spawn(async move {
                    rooms
                        .join(&room, key, inbox, presence(key), None, 0)
                        .await
                        .expect("join");
                    if i % 2 == 1 {
                        rooms.leave(&room, key, &presence(key)).await;
                    }
                }));
            }
            for t in tasks {
                t.await.expect("task");
            }
            assert_eq!(state(&rooms, "hall"), Some((20, true)), "round {round}");

            // One message reaches each remaining member exactly once.
            rooms
                .publish("hall", &User::new("x".into()), "c", "hi".into(), None, None)
                .await
                .expect("publish");
            tokio::time::timeout(Duration::from_secs(5), async {
                while inboxes
                    .iter()
                    .step_by(2)
                    .any(|i| i.0.load(Ordering::Relaxed) == 0)
                {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
            .await
            .expect("the message reached every member");

            // Everyone left concurrently: the room is unsubscribed and forgotten.
            let mut tasks = Vec::new();
            for i in (0..40).step_by(2) {
                let (rooms, room) = (rooms.clone(), room.clone());
                let key = round * 100 + i as u64;
                tasks.push(tokio::spawn(async move {
                    rooms.leave(&room, key, &presence(key)).await;
                }));
            }
            for t in tasks {
                t.await.expect("task");
            }
            assert_eq!(state(&rooms, "hall"), None, "round {round}");
            assert_eq!(rooms.room_count(), 0);
        }
        stop.cancel();
    }

    #[tokio::test]
    async fn joins_are_refused_while_draining_and_nothing_is_left_behind() {
        let (rooms, stop) = rooms();
        rooms.stop_joins();
        let err = rooms
            .join(
                &Arc::from("a"),
                1,
                Arc::new(Inbox::default()),
                presence(1),
                None,
                0,
            )
            .await
            .expect_err("draining");
        assert!(matches!(err, RoomError::Draining));
        assert_eq!(rooms.room_count(), 0);
        stop.cancel();
    }

    #[tokio::test]
    async fn a_join_replays_history_after_since_as_message_frames() {
        let (rooms, stop) = rooms();
        let from = User::new("alice".into());
        let mut ids = Vec::new();
        for text in ["one", "two", "three"] {
            ids.push(
                rooms
                    .publish("a", &from, "c", text.into(), None, None)
                    .await
                    .unwrap()
                    .id,
            );
        }
        let joined = rooms
            .join(
                &Arc::from("a"),
                1,
                Arc::new(Inbox::default()),
                presence(1),
                Some(ids[0]),
                0,
            )
            .await
            .expect("join");
        assert_eq!((joined.head, joined.recovered), (ids[2], Some(true)));
        let replay: Vec<serde_json::Value> = joined
            .replay
            .iter()
            .map(|(_, f)| serde_json::from_str(f.as_str()).unwrap())
            .collect();
        assert_eq!(replay.len(), 2);
        assert_eq!(replay[0]["type"], "message");
        assert_eq!(replay[0]["replay"], true);
        assert_eq!(replay[0]["id"], ids[1].to_string());
        assert_eq!(replay[1]["text"], "three");
        stop.cancel();
    }
}
