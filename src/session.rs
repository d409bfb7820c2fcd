//! One task per WebSocket connection: the read loop (parse, validate, rate-limit, act)
//! runs in the connection's task; a writer task drains the bounded outbound queue in
//! batches (feed several frames, flush once). Memberships live in a Drop guard that
//! leaves every room, so a disconnect, an early return or a panic cleans up presence
//! and subscriptions alike.

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::task::AtomicWaker;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tracing::{Instrument, debug, info_span, warn};

use crate::bus::{Envelope, MemberRef, now_micros};
use crate::hub::{Member, Out, Release};
use crate::metrics::DisconnectReason;
use crate::protocol::{
    ClientFrame, Encode, ErrorCode, FrameError, MsgId, ServerFrame, User, normalize_name,
    parse_client_frame, validate_room,
};
use crate::server::AppState;
use crate::telemetry;

/// Frames the writer feeds before one flush.
const WRITE_BATCH: usize = 64;
/// How long a close frame may take to go out before the socket is just dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// Window in which `rate_limited` refusals are counted towards a close.
const STRIKE_WINDOW: Duration = Duration::from_secs(10);

/// The control handle of one session: who else (hub, drain, heartbeat) can close it, and
/// why; and when the client was last heard from.
///
/// The close signal is a flag and one waker per waiting task (read loop, writer) rather
/// than a `CancellationToken`: the writer checks it on every wake-up, once per delivered
/// frame, and a token's check takes a mutex (two, with its `Notified`) each time.
#[derive(Debug)]
pub struct SessionCtl {
    reason: OnceLock<DisconnectReason>,
    closed: AtomicBool,
    reader: AtomicWaker,
    writer: AtomicWaker,
    /// Unix ms of the last frame (or pong) received from the client.
    last_seen_ms: AtomicU64,
}

impl Default for SessionCtl {
    fn default() -> Self {
        SessionCtl {
            reason: OnceLock::new(),
            closed: AtomicBool::new(false),
            reader: AtomicWaker::new(),
            writer: AtomicWaker::new(),
            last_seen_ms: AtomicU64::new(now_micros() / 1000),
        }
    }
}

/// Resolves once the session is closed. Each of the session's two tasks has its own
/// waker slot, so each must wait only through its own (`reader_closed`, `writer_closed`).
#[derive(Debug)]
struct Closed<'a> {
    flag: &'a AtomicBool,
    waker: &'a AtomicWaker,
}

impl Future for Closed<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.flag.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        self.waker.register(cx.waker());
        // Checked again after registering: a close in between has woken the old waker.
        if self.flag.load(Ordering::Acquire) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

impl SessionCtl {
    /// Records that the client was heard from.
    pub fn touch(&self) {
        self.last_seen_ms
            .store(now_micros() / 1000, Ordering::Relaxed);
    }

    /// How long the client has been silent, as of `now_ms`.
    pub fn silent_for(&self, now_ms: u64) -> Duration {
        Duration::from_millis(now_ms.saturating_sub(self.last_seen_ms.load(Ordering::Relaxed)))
    }

    /// Closes the session; the first reason given wins.
    pub fn close(&self, reason: DisconnectReason) {
        let _ = self.reason.set(reason);
        self.closed.store(true, Ordering::Release);
        self.reader.wake();
        self.writer.wake();
    }

    /// The read loop's wait for the close.
    fn reader_closed(&self) -> Closed<'_> {
        Closed {
            flag: &self.closed,
            waker: &self.reader,
        }
    }

    /// The writer's wait for the close.
    fn writer_closed(&self) -> Closed<'_> {
        Closed {
            flag: &self.closed,
            waker: &self.writer,
        }
    }

    pub fn reason(&self) -> DisconnectReason {
        self.reason
            .get()
            .copied()
            .unwrap_or(DisconnectReason::Client)
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

/// Runs one session to its end. `permit` holds the connection's slot in
/// `limits.max_connections` until the session is gone.
pub async fn run(
    socket: WebSocket,
    state: AppState,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
) {
    let key = state.next_key();
    let conn: Arc<str> = Arc::from(format!("{:012x}", rand::random::<u64>() >> 16));
    let span = info_span!("connection", node = %state.node(), conn = %conn, %peer);
    async move {
        debug!("connected");
        let ctl = Arc::new(SessionCtl::default());
        let metrics = state.metrics().clone();
        metrics.connections.inc();
        let limits = &state.config().limits;
        let (tx, rx) = mpsc::channel(limits.outbound_queue);
        state.register(key, ctl.clone(), tx.clone());
        let (sink, stream) = socket.split();
        let writer = tokio::spawn(
            write_loop(sink, rx, ctl.clone(), state.clone(), limits.outbound_queue)
                .instrument(tracing::Span::current()),
        );
        let mut session = Session {
            state: state.clone(),
            key,
            conn: conn.clone(),
            tx,
            ctl: ctl.clone(),
            memberships: Memberships {
                rooms: RoomMap::default(),
                state: state.clone(),
                key,
            },
            bucket: TokenBucket::new(limits.messages_per_second, limits.burst),
            strikes: Strikes::default(),
        };
        let welcome = ServerFrame::Welcome {
            node: state.node(),
            conn: &conn,
        }
        .encode();
        session.queue(Out::Frame(Box::new(welcome)));
        let stream = session.read_loop(stream).await;
        // Leave every room (announcing it) before the socket goes away.
        Box::pin(session.memberships.leave_all()).await;
        drop(session);
        // Keep reading (and discarding) until the peer closes: closing a socket with
        // unread input makes the kernel send a reset, which can destroy the frames we
        // just sent (an error explaining the close, the close frame itself).
        let drain_input = async move {
            let mut stream = stream;
            while let Some(Ok(_)) = stream.next().await {}
        };
        let _ = tokio::time::timeout(CLOSE_GRACE * 2, async {
            let _ = tokio::join!(writer, drain_input);
        })
        .await;
        let reason = ctl.reason();
        metrics.disconnect(reason);
        metrics.connections.dec();
        state.unregister(key);
        drop(permit);
        debug!(reason = reason.as_str(), "disconnected");
    }
    .instrument(span)
    .await
}

struct Session {
    state: AppState,
    key: u64,
    conn: Arc<str>,
    tx: mpsc::Sender<Out>,
    ctl: Arc<SessionCtl>,
    memberships: Memberships,
    bucket: TokenBucket,
    strikes: Strikes,
}

impl Session {
    /// Reads and handles frames until the session ends; returns the stream so the
    /// caller can keep draining input while the close goes out.
    async fn read_loop(&mut self, mut stream: SplitStream<WebSocket>) -> SplitStream<WebSocket> {
        // Pings and the silence check come from the node-wide heartbeat task
        // (`server::heartbeat_loop`), so an idle connection holds no timer of its own.
        loop {
            let msg = tokio::select! {
                _ = self.ctl.reader_closed() => return stream,
                msg = stream.next() => msg,
            };
            self.ctl.touch();
            match msg {
                Some(Ok(Message::Text(text))) => {
                    if self.admit(Some(&text)) {
                        self.handle_text(&text).await;
                    }
                }
                Some(Ok(Message::Binary(_))) => {
                    if self.admit(None) {
                        self.send_error(FrameError::new(
                            ErrorCode::BadRequest,
                            "binary frames are not supported; send JSON text frames",
                        ));
                    }
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(_))) | None => {
                    self.ctl.close(DisconnectReason::Client);
                    return stream;
                }
                Some(Err(e)) => {
                    let reason = if is_capacity_error(&e) {
                        DisconnectReason::TooLarge
                    } else {
                        DisconnectReason::Client
                    };
                    debug!(error = %e, "read failed");
                    self.ctl.close(reason);
                    return stream;
                }
            }
        }
    }

    /// Applies the rate limit: refuses the frame with `rate_limited` (echoing its `ref`),
    /// and closes the connection when refusals keep coming.
    fn admit(&mut self, text: Option<&str>) -> bool {
        if self.bucket.take() {
            return true;
        }
        let limits = &self.state.config().limits;
        if self.strikes.add() >= limits.rate_limit_strikes {
            debug!("rate limit exceeded repeatedly; closing");
            self.ctl.close(DisconnectReason::Policy);
            return false;
        }
        let reference = text.and_then(crate::protocol::peek_ref);
        self.send_error(
            FrameError::new(
                ErrorCode::RateLimited,
                format!(
                    "more than {} frames per second; frame dropped",
                    limits.messages_per_second
                ),
            )
            .with_ref(reference.as_deref()),
        );
        false
    }

    async fn handle_text(&mut self, text: &str) {
        let frame = match parse_client_frame(text) {
            Ok(f) => f,
            Err(e) => return self.send_error(e),
        };
        let reference = frame.reference().map(str::to_owned);
        let result = match frame {
            // Boxed: the bus futures are large and only live while a frame is handled,
            // so an idle connection's task stays small.
            ClientFrame::Join {
                room, name, since, ..
            } => Box::pin(self.join(room, &name, since.as_deref())).await,
            ClientFrame::Leave { room, .. } => Box::pin(self.leave(&room)).await,
            ClientFrame::Send { room, text, .. } => {
                Box::pin(self.send(&room, text, reference.as_deref())).await
            }
        };
        if let Err(e) = result {
            self.send_error(e.with_ref(reference.as_deref()));
        }
    }

    async fn join(
        &mut self,
        room: String,
        name: &str,
        since: Option<&str>,
    ) -> Result<(), FrameError> {
        if self.state.is_draining() {
            return Err(FrameError::new(
                ErrorCode::Draining,
                "this node is draining; reconnect to another",
            ));
        }
        validate_room(&room)?;
        let name = normalize_name(name)?;
        if !self.state.is_registered() {
            // The first presence heartbeat has not reached Redis yet (just started).
            return Err(unavailable());
        }
        let since = since.map(|s| s.parse::<MsgId>()).transpose().map_err(|_| {
            FrameError::new(
                ErrorCode::BadRequest,
                "`since` must be a message id like \"1732258000000-0\"",
            )
        })?;
        if self.memberships.rooms.contains_key(&room) {
            return Err(FrameError::new(
                ErrorCode::AlreadyJoined,
                format!("already joined {room}"),
            ));
        }
        let max = self.state.config().limits.max_rooms_per_connection;
        if self.memberships.rooms.len() >= max {
            return Err(FrameError::new(
                ErrorCode::TooManyRooms,
                format!("at most {max} rooms per connection"),
            ));
        }
        let room: Arc<str> = Arc::from(room);
        let span = info_span!("join", room = %room);
        let member = MemberRef {
            node: self.state.node_arc(),
            conn: self.conn.clone(),
            user: User::new(name),
        };
        // Frames for the room are held by the writer until the join is answered.
        self.queue(Out::Hold(Box::new(room.clone())));
        let hub = self.state.hub();
        let local = Member {
            tx: self.tx.clone(),
            ctl: self.ctl.clone(),
            presence: member.clone(),
        };
        if let Err(e) = hub
            .join(&room, self.key, local)
            .instrument(span.clone())
            .await
        {
            warn!(%room, error = %e, "join: subscribe failed");
            self.queue(Out::Abort(Box::new(room)));
            return Err(unavailable());
        }
        self.memberships.rooms.insert(room.clone(), member.clone());
        let info = match hub.bus().join(&room, &member, since).instrument(span).await {
            Ok(info) => info,
            Err(e) => {
                warn!(%room, error = %e, "join: presence/history failed");
                self.memberships.rooms.remove(&room);
                hub.leave(&room, self.key).await;
                self.queue(Out::Abort(Box::new(room)));
                return Err(unavailable());
            }
        };
        let replay = info
            .replay
            .iter()
            .filter_map(|(id, envelope)| encode_replay(&room, *id, envelope))
            .collect();
        let joined = ServerFrame::Joined {
            room: &room,
            you: &member.user,
            members: &info.members,
            offset: info.head,
            recovered: info.recovered,
        }
        .encode();
        self.queue(Out::Release(Box::new(Release {
            room,
            joined,
            replay,
            cursor: info.head,
        })));
        self.state.metrics().joins.inc();
        Ok(())
    }

    async fn leave(&mut self, room: &str) -> Result<(), FrameError> {
        validate_room(room)?;
        let Some((room, member)) = self.memberships.rooms.remove(room) else {
            return Err(not_joined(room));
        };
        Box::pin(self.memberships.leave_one(&room, &member)).await;
        self.queue(Out::Left(Box::new(room)));
        Ok(())
    }

    async fn send(
        &mut self,
        room: &str,
        text: String,
        reference: Option<&str>,
    ) -> Result<(), FrameError> {
        validate_room(room)?;
        let Some(member) = self.memberships.rooms.get(room) else {
            return Err(not_joined(room));
        };
        let max = self.state.config().limits.max_text_bytes;
        if text.len() > max {
            return Err(FrameError::new(
                ErrorCode::TooLarge,
                format!("text is {} bytes; the limit is {max}", text.len()),
            ));
        }
        if text.is_empty() {
            return Err(FrameError::new(
                ErrorCode::BadRequest,
                "text must not be empty",
            ));
        }
        let metrics = self.state.metrics();
        metrics.messages_received.inc();
        let span = info_span!("send", node = %self.state.node(), room = %room);
        let envelope = Envelope::Message {
            id: None,
            from: member.user.clone(),
            text,
            ts: now_micros(),
            node: self.state.node().to_string(),
            conn: self.conn.to_string(),
            tp: telemetry::traceparent(&span),
        };
        let envelope = serde_json::to_string(&envelope)
            .map_err(|_| FrameError::new(ErrorCode::Internal, "could not encode the message"))?;
        match self
            .state
            .hub()
            .bus()
            .publish(room, envelope)
            .instrument(span)
            .await
        {
            Ok(id) => {
                metrics.messages_published.inc();
                let ack = ServerFrame::Ack { reference, id }.encode();
                self.queue(Out::Frame(Box::new(ack)));
                Ok(())
            }
            Err(e) => {
                warn!(%room, error = %e, "publish failed");
                Err(unavailable())
            }
        }
    }

    fn send_error(&self, error: FrameError) {
        self.state.metrics().error(error.code);
        self.queue(Out::Frame(Box::new(error.encode())));
    }

    /// Queues a frame for the writer; a full queue means the client is not reading.
    fn queue(&self, out: Out) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.tx.try_send(out) {
            self.ctl.close(DisconnectReason::SlowConsumer);
        }
    }
}

fn unavailable() -> FrameError {
    FrameError::new(
        ErrorCode::Unavailable,
        "the message bus is unavailable; nothing was done, retry later",
    )
}

fn not_joined(room: &str) -> FrameError {
    FrameError::new(ErrorCode::NotJoined, format!("not joined to {room}"))
}

/// Encodes one history entry as a `message` frame for a replay.
fn encode_replay(room: &str, id: MsgId, envelope: &[u8]) -> Option<(MsgId, Utf8Bytes)> {
    match serde_json::from_slice::<Envelope>(envelope) {
        Ok(Envelope::Message { from, text, ts, .. }) => {
            let frame = ServerFrame::Message {
                room,
                id,
                from: &from,
                text: &text,
                ts: ts / 1000,
            }
            .encode();
            Some((id, frame))
        }
        Ok(Envelope::Presence { .. }) => None,
        Err(e) => {
            warn!(%room, %id, error = %e, "skipping undecodable history entry");
            None
        }
    }
}

fn is_capacity_error(e: &axum::Error) -> bool {
    let text = e.to_string();
    text.contains("Space limit exceeded") || text.contains("too long") || text.contains("capacity")
}

/// A connection's per-room state: at most `limits.max_rooms_per_connection` entries,
/// so a small vector (searched linearly) beats a hash map in memory and speed.
#[derive(Debug)]
struct RoomMap<V>(Vec<(Arc<str>, V)>);

impl<V> Default for RoomMap<V> {
    fn default() -> Self {
        RoomMap(Vec::new())
    }
}

impl<V> RoomMap<V> {
    fn position(&self, room: &str) -> Option<usize> {
        self.0.iter().position(|(r, _)| **r == *room)
    }
    fn contains_key(&self, room: &str) -> bool {
        self.position(room).is_some()
    }
    fn get(&self, room: &str) -> Option<&V> {
        self.position(room).map(|i| &self.0[i].1)
    }
    fn get_mut(&mut self, room: &str) -> Option<&mut V> {
        self.position(room).map(|i| &mut self.0[i].1)
    }
    fn insert(&mut self, room: Arc<str>, value: V) {
        match self.position(&room) {
            Some(i) => self.0[i].1 = value,
            None => self.0.push((room, value)),
        }
    }
    fn remove(&mut self, room: &str) -> Option<(Arc<str>, V)> {
        self.position(room).map(|i| self.0.swap_remove(i))
    }
    fn len(&self) -> usize {
        self.0.len()
    }
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<V> IntoIterator for RoomMap<V> {
    type Item = (Arc<str>, V);
    type IntoIter = std::vec::IntoIter<(Arc<str>, V)>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

/// This session's rooms; dropping it leaves all of them (announced by a spawned task),
/// so nothing is left behind if the session ends early or panics.
struct Memberships {
    rooms: RoomMap<MemberRef>,
    state: AppState,
    key: u64,
}

impl Memberships {
    async fn leave_one(&self, room: &Arc<str>, member: &MemberRef) {
        leave_room(&self.state, self.key, room, member).await;
    }

    async fn leave_all(&mut self) {
        for (room, member) in std::mem::take(&mut self.rooms) {
            leave_room(&self.state, self.key, &room, &member).await;
        }
    }
}

async fn leave_room(state: &AppState, key: u64, room: &Arc<str>, member: &MemberRef) {
    let hub = state.hub();
    let last_local = hub.leave(room, key).await;
    state.metrics().leaves.inc();
    if let Err(e) = hub.bus().leave(room, member, last_local).await {
        warn!(%room, error = %e, "leave: presence update failed; will retry");
        state.defer_leave(room.clone(), member.clone());
    }
}

impl Drop for Memberships {
    fn drop(&mut self) {
        if self.rooms.is_empty() {
            return;
        }
        let rooms = std::mem::take(&mut self.rooms);
        let state = self.state.clone();
        let tracker = state.tracker().clone();
        let key = self.key;
        // Only reached on an early exit or a panic; the normal path awaits leave_all.
        tracker.spawn(async move {
            for (room, member) in rooms {
                leave_room(&state, key, &room, &member).await;
            }
        });
    }
}

/// Per-connection token bucket: `rate` frames per second, at most `burst` at once.
struct TokenBucket {
    tokens: f64,
    rate: f64,
    burst: f64,
    last: Instant,
}

impl TokenBucket {
    fn new(rate: u32, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        TokenBucket {
            tokens: burst,
            rate: f64::from(rate),
            burst,
            last: Instant::now(),
        }
    }

    fn take(&mut self) -> bool {
        let now = Instant::now();
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Counts rate-limit refusals within [`STRIKE_WINDOW`].
#[derive(Default)]
struct Strikes {
    since: Option<Instant>,
    count: u32,
}

impl Strikes {
    fn add(&mut self) -> u32 {
        let now = Instant::now();
        match self.since {
            Some(start) if now.duration_since(start) <= STRIKE_WINDOW => self.count += 1,
            _ => {
                self.since = Some(now);
                self.count = 1;
            }
        }
        self.count
    }
}

/// Per-room state of the writer: whether a join is pending, and the newest id written.
struct RoomCursor {
    held: Option<Vec<Out>>,
    cursor: MsgId,
}

/// Drains the outbound queue in batches until the session ends, then sends the close
/// frame that matches the reason. Unless the client is gone or not reading, frames that
/// were already queued (an error explaining the close, messages before a drain) go out
/// first, within [`CLOSE_GRACE`].
async fn write_loop(
    mut sink: SplitSink<WebSocket, Message>,
    mut rx: mpsc::Receiver<Out>,
    ctl: Arc<SessionCtl>,
    state: AppState,
    max_held: usize,
) {
    let metrics = state.metrics().clone();
    let mut rooms: RoomMap<RoomCursor> = RoomMap::default();
    // Grows with bursts and is trimmed after them: idle connections hold no batch memory.
    let mut frames: VecDeque<(Utf8Bytes, u64)> = VecDeque::new();
    // One close future for the writer's life, polled by every select below.
    let mut cancelled = ctl.writer_closed();
    loop {
        let first = tokio::select! {
            biased;
            _ = &mut cancelled => break,
            out = rx.recv() => out,
        };
        let Some(first) = first else {
            break;
        };
        route(first, &mut rooms, &mut frames, max_held, &ctl);
        for _ in 1..WRITE_BATCH {
            match rx.try_recv() {
                Ok(out) => route(out, &mut rooms, &mut frames, max_held, &ctl),
                Err(_) => break,
            }
        }
        let now = now_micros();
        let mut delivered = 0u64;
        // The whole batch (feeds, then one flush) races the close once; frames not
        // written when the session closes stay in `frames` for the close phase.
        let write = async {
            while let Some((frame, ts_us)) = frames.pop_front() {
                if ts_us > 0 {
                    delivered += 1;
                    if ts_us > 1 {
                        metrics
                            .delivery_latency
                            .observe(now.saturating_sub(ts_us) as f64 / 1e6);
                    }
                }
                sink.feed(to_message(frame)).await?;
            }
            sink.flush().await
        };
        let written = tokio::select! {
            biased;
            _ = &mut cancelled => None,
            r = write => Some(r),
        };
        metrics.messages_delivered.inc_by(delivered);
        match written {
            None => break,
            Some(Err(_)) => {
                ctl.close(DisconnectReason::Client);
                break;
            }
            Some(Ok(())) => {}
        }
        if frames.capacity() > WRITE_BATCH {
            frames.shrink_to(WRITE_BATCH);
        }
    }
    // Boxed: the close phase's futures would otherwise sit in every writer task.
    Box::pin(close_phase(sink, rx, &ctl, rooms, frames)).await;
}

/// Sends what is still queued (unless the client is gone or not reading) and the close
/// frame that matches the reason, within [`CLOSE_GRACE`].
async fn close_phase(
    mut sink: SplitSink<WebSocket, Message>,
    mut rx: mpsc::Receiver<Out>,
    ctl: &SessionCtl,
    mut rooms: RoomMap<RoomCursor>,
    mut frames: VecDeque<(Utf8Bytes, u64)>,
) {
    let reason = ctl.reason();
    let close = match reason {
        DisconnectReason::Client => None,
        DisconnectReason::Drain => Some((1001, "draining")),
        DisconnectReason::SlowConsumer => Some((1008, "slow consumer")),
        DisconnectReason::Policy => Some((1008, "rate limit")),
        DisconnectReason::Heartbeat => Some((1008, "heartbeat timeout")),
        DisconnectReason::TooLarge => Some((1009, "frame too large")),
        DisconnectReason::Error => Some((1011, "internal error")),
    };
    let Some((code, text)) = close else {
        let _ = tokio::time::timeout(CLOSE_GRACE, sink.close()).await;
        return;
    };
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        if !matches!(
            reason,
            DisconnectReason::SlowConsumer | DisconnectReason::Heartbeat
        ) {
            while let Ok(out) = rx.try_recv() {
                route(out, &mut rooms, &mut frames, usize::MAX, ctl);
            }
            for (frame, _) in frames.drain(..) {
                if sink.feed(to_message(frame)).await.is_err() {
                    return;
                }
            }
        }
        let frame = Message::Close(Some(CloseFrame {
            code,
            reason: Utf8Bytes::from_static(text),
        }));
        let _ = sink.send(frame).await;
        let _ = sink.close().await;
    })
    .await;
}

/// An empty frame in the queue stands for a heartbeat ping.
fn to_message(frame: Utf8Bytes) -> Message {
    if frame.is_empty() {
        Message::Ping(bytes::Bytes::new())
    } else {
        Message::Text(frame)
    }
}

/// Applies one queue item to the writer's room state, pushing frames to write
/// (with the publish time for message frames, 0 otherwise).
fn route(
    out: Out,
    rooms: &mut RoomMap<RoomCursor>,
    frames: &mut VecDeque<(Utf8Bytes, u64)>,
    max_held: usize,
    ctl: &SessionCtl,
) {
    match out {
        Out::Frame(frame) => frames.push_back((*frame, 0)),
        Out::Ping => frames.push_back((Utf8Bytes::from_static(""), 0)),
        Out::Room(shared) => {
            let Some(cursor) = rooms.get_mut(&shared.room) else {
                return;
            };
            if let Some(held) = &mut cursor.held {
                if held.len() >= max_held {
                    ctl.close(DisconnectReason::SlowConsumer);
                    return;
                }
                held.push(Out::Room(shared));
                return;
            }
            match shared.id {
                Some(id) if id <= cursor.cursor => {}
                Some(id) => {
                    cursor.cursor = id;
                    frames.push_back((shared.frame.clone(), shared.ts_us));
                }
                None => frames.push_back((shared.frame.clone(), 0)),
            }
        }
        Out::Hold(room) => {
            let room = *room;
            rooms.insert(
                room,
                RoomCursor {
                    held: Some(Vec::new()),
                    cursor: MsgId::ZERO,
                },
            );
        }
        Out::Release(release) => {
            let Release {
                room,
                joined,
                replay,
                cursor,
            } = *release;
            let Some(state) = rooms.get_mut(&room) else {
                return;
            };
            frames.push_back((joined, 0));
            let mut newest = cursor;
            for (id, frame) in replay {
                newest = newest.max(id);
                // 1 marks a delivered message without a live latency sample.
                frames.push_back((frame, 1));
            }
            state.cursor = newest;
            let held = state.held.take().unwrap_or_default();
            for out in held {
                route(out, rooms, frames, max_held, ctl);
            }
        }
        Out::Abort(room) => {
            let room = *room;
            rooms.remove(&room);
        }
        Out::Left(room) => {
            let room = *room;
            rooms.remove(&room);
            frames.push_back((ServerFrame::Left { room: &room }.encode(), 0));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::memory::MemoryBus;
    use crate::bus::{Bus, BusReceiver};
    use crate::config::Config;
    use crate::hub::{self, Hub};
    use crate::metrics::Metrics;
    use tokio_util::sync::CancellationToken;

    #[tokio::test]
    async fn close_wakes_both_waiting_tasks_and_a_later_wait_ends_at_once() {
        let ctl = Arc::new(SessionCtl::default());
        let (c1, c2) = (ctl.clone(), ctl.clone());
        let reader = tokio::spawn(async move { c1.reader_closed().await });
        let writer = tokio::spawn(async move { c2.writer_closed().await });
        tokio::task::yield_now().await;
        assert!(!reader.is_finished() && !writer.is_finished());
        ctl.close(DisconnectReason::Drain);
        tokio::time::timeout(Duration::from_secs(5), async {
            reader.await.expect("reader");
            writer.await.expect("writer");
        })
        .await
        .expect("both tasks saw the close");
        ctl.writer_closed().await;
        assert!(ctl.is_closed());
        assert_eq!(ctl.reason(), DisconnectReason::Drain);
        ctl.close(DisconnectReason::Client);
        assert_eq!(
            ctl.reason(),
            DisconnectReason::Drain,
            "the first reason wins"
        );
    }

    #[tokio::test]
    async fn a_panicking_session_still_leaves_its_rooms() {
        let (bus, rx) = MemoryBus::new(10, Duration::from_secs(60));
        let metrics = Arc::new(Metrics::new(10));
        let node: Arc<str> = Arc::from("n1");
        let hub = Hub::new(node.clone(), Bus::Memory(bus), metrics.clone());
        let stop = CancellationToken::new();
        let receiver = hub::spawn_receiver(hub.clone(), BusReceiver::Memory(rx), stop.clone());
        let state = AppState::new(Config::default(), node.clone(), hub.clone(), metrics);

        let room: Arc<str> = Arc::from("hall");
        let alice = MemberRef {
            node: node.clone(),
            conn: Arc::from("c1"),
            user: User::new("alice".into()),
        };
        let (tx, _queue) = mpsc::channel(16);
        let member = Member {
            tx,
            ctl: Arc::new(SessionCtl::default()),
            presence: alice.clone(),
        };
        hub.join(&room, 1, member).await.expect("join");
        hub.bus().join(&room, &alice, None).await.expect("presence");
        assert_eq!(hub.room_count(), 1);

        let task_state = state.clone();
        let task_room = room.clone();
        let session = tokio::spawn(async move {
            let mut memberships = Memberships {
                rooms: RoomMap::default(),
                state: task_state,
                key: 1,
            };
            memberships.rooms.insert(task_room, alice);
            panic!("a bug in a session task");
        });
        assert!(session.await.expect_err("the task panicked").is_panic());

        // The guard's cleanup runs on the tracker; wait for it.
        state.tracker().close();
        state.tracker().wait().await;
        assert_eq!(hub.room_count(), 0, "the room was left and forgotten");
        let bob = MemberRef {
            node,
            conn: Arc::from("c2"),
            user: User::new("bob".into()),
        };
        let info = hub.bus().join(&room, &bob, None).await.expect("join");
        assert_eq!(info.members, vec![bob.user], "alice's presence is gone");
        stop.cancel();
        let _ = receiver.await;
    }
}
