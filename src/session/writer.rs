//! The session's outbound side: the queue protocol ([`Out`]: frames, hold, release,
//! abort, left, ping) and the frames it produces, written straight to the TCP socket.
//!
//! Every item for the client goes through [`Outbound::push`], which routes it under the
//! session's lock: per room, live frames are held while a join is pending so `joined`,
//! the replay and live messages reach the client in order with no duplicate. A frame
//! that comes out is written at once from the caller (the rooms' fan-out, the read loop)
//! when nothing is pending before it and the socket takes it; otherwise it waits in the
//! bounded pending queue (full: the session closes as a slow consumer, it is never
//! waited for) and a flush task, started only then, writes the queue when the socket
//! becomes writable. Writes happen under the lock, and a partly written frame stays at
//! the head of the queue, so frames never interleave. An idle connection holds no task
//! and no buffer here.
//!
//! When the session closes, [`close`] sends what is still pending (unless the client is
//! gone or not reading) and the close frame of the reason ([`DisconnectReason::info`]).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use bytes::Bytes;
use tokio::net::tcp::OwnedWriteHalf;

use super::Handle;
use super::ctl::SessionCtl;
use super::deflate;
use super::room_map::RoomMap;
use super::transport::{CLOSE, Chunk, PING, TEXT, TEXT_DEFLATED, write_chunks};
use crate::clock;
use crate::metrics::Metrics;
use crate::protocol::{DisconnectReason, Encode, MsgId, ServerFrame};
use crate::rooms::RoomFrame;

/// Frames deferred by [`Outbound::push_later`] are written by the caller once this many
/// (or half the queue) are pending, without waiting for the flush task.
const DEFER_BATCH: usize = 16;

/// How long the close (pending frames and the close frame) may take to go out before
/// the socket is just closed.
pub(super) const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// One item in a session's outbound queue. Kept to 16 bytes (every connection's queue
/// reserves a block of slots): rare items are boxed, and room frames are one shared
/// allocation per message.
#[derive(Debug)]
pub(crate) enum Out {
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
    /// The server API removed the member: write `left` with reason `removed` and drop
    /// the room's later frames.
    Removed(Box<Arc<str>>),
}

/// The answer to a join, queued behind any live frames that arrived meanwhile.
#[derive(Debug)]
pub(crate) struct Release {
    pub(crate) room: Arc<str>,
    pub(crate) joined: Utf8Bytes,
    pub(crate) replay: Vec<(MsgId, Utf8Bytes)>,
    pub(crate) cursor: MsgId,
    /// The room's presence sequence number that `joined` reflects: presence frames at or
    /// below it are already in the member list (or count) and are dropped.
    pub(crate) presence: u64,
}

/// Per-room state of the writer: whether a join is pending, the newest id written and
/// the presence sequence number `joined` reflects.
struct RoomCursor {
    held: Option<Vec<Out>>,
    cursor: MsgId,
    presence: u64,
}

/// The outbound side of one session: its routing state and its pending frames (one
/// lock), and the socket's write half.
pub(super) struct Outbound {
    state: Mutex<State>,
    /// `None` for a detached handle (unit tests): every frame stays pending.
    sock: Option<OwnedWriteHalf>,
    /// The session's own handle, for starting a flush task from a `&self` call.
    me: Weak<Handle>,
    metrics: Arc<Metrics>,
    /// `limits.outbound_queue`: queue items pending at most (and frames held per room
    /// during a join).
    max_queue: usize,
    /// `permessage-deflate` agreed: text frames of at least this many bytes are
    /// compressed (`server.compression_min_bytes`).
    deflate_min: Option<usize>,
}

#[derive(Default)]
struct State {
    rooms: RoomMap<RoomCursor>,
    /// Frames waiting for the socket, oldest first; the head may be partly written.
    pending: VecDeque<Chunk>,
    /// A flush task is running.
    flushing: bool,
    /// The close frame is queued: nothing else goes out.
    finished: bool,
}

impl Outbound {
    pub(super) fn new(
        sock: Option<OwnedWriteHalf>,
        me: Weak<Handle>,
        metrics: Arc<Metrics>,
        max_queue: usize,
        deflate_min: Option<usize>,
    ) -> Self {
        Outbound {
            state: Mutex::new(State::default()),
            sock,
            me,
            metrics,
            max_queue,
            deflate_min,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Routes one queue item and writes or queues what comes out of it (one queue slot
    /// per item, however many frames it releases).
    pub(super) fn push(&self, out: Out, ctl: &SessionCtl) {
        self.push_with(out, ctl, true);
    }

    /// Like [`Outbound::push`], but what comes out is only queued: the flush task (started
    /// if none runs) writes it with everything else queued, in one system call; once
    /// [`DEFER_BATCH`] frames (or half the queue) are pending, the caller writes them. For
    /// bursts, where writing each frame at once would cost one system call per frame on
    /// the caller's one thread.
    pub(super) fn push_later(&self, out: Out, ctl: &SessionCtl) {
        self.push_with(out, ctl, false);
    }

    fn push_with(&self, out: Out, ctl: &SessionCtl, write_now: bool) {
        let mut state = self.lock();
        if state.finished {
            return;
        }
        let mut routed = Routed::default();
        route(out, &mut state.rooms, &mut routed, self.max_queue, ctl);
        let chunk = match routed {
            Routed { first: None, .. } => return,
            Routed {
                first: Some((frame, ts_us)),
                more: None,
            } => {
                self.count(ts_us, None);
                frame_chunk(frame, self.deflate_min)
            }
            Routed {
                first: Some(first),
                more: Some(more),
            } => {
                let now = clock::unix_micros();
                let mut bytes = Vec::new();
                for (frame, ts_us) in std::iter::once(first).chain(more) {
                    self.count(ts_us, Some(now));
                    frame_chunk(frame, self.deflate_min).append_to(&mut bytes);
                }
                Chunk::encoded(bytes)
            }
        };
        self.enqueue(&mut state, chunk, ctl, write_now);
    }

    /// Sends a control frame (a pong) in order with everything else.
    pub(super) fn control(&self, first: u8, payload: Bytes, ctl: &SessionCtl) {
        let mut state = self.lock();
        if !state.finished {
            self.enqueue(&mut state, Chunk::frame(first, payload), ctl, true);
        }
    }

    /// Counts a delivered message and its latency (publish time `ts_us`: 0 = not a
    /// message, 1 = a replayed one, no sample).
    fn count(&self, ts_us: u64, now: Option<u64>) {
        if ts_us == 0 {
            return;
        }
        self.metrics.messages_delivered.inc();
        if ts_us > 1 {
            let now = now.unwrap_or_else(clock::unix_micros);
            self.metrics
                .delivery_latency
                .observe(now.saturating_sub(ts_us) as f64 / 1e6);
        }
    }

    /// Writes `chunk` now if `write_now` and nothing is pending before it, else queues it
    /// (closing the session as a slow consumer when the queue is full) and makes sure a
    /// flush task runs.
    fn enqueue(&self, state: &mut State, mut chunk: Chunk, ctl: &SessionCtl, write_now: bool) {
        if state.pending.len() >= self.max_queue {
            tracing::debug!("outbound queue full: slow consumer");
            ctl.close(DisconnectReason::SlowConsumer);
            return;
        }
        let open = !ctl.is_closed();
        if let (Some(sock), true, true) = (&self.sock, open && write_now, state.pending.is_empty())
        {
            match chunk.write_to(sock) {
                Ok(true) => return,
                Ok(false) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "write failed");
                    ctl.close(DisconnectReason::Client);
                    return;
                }
            }
        }
        state.pending.push_back(chunk);
        if open
            && !write_now
            && state.pending.len() >= self.max_queue.div_ceil(2).min(DEFER_BATCH)
            && let Some(sock) = &self.sock
        {
            // Enough deferred for one write: do not wait for the flush task (the caller
            // may keep this worker busy), or a reading client's queue could fill up.
            if let Err(e) = state.write_pending(sock) {
                tracing::debug!(error = %e, "write failed");
                ctl.close(DisconnectReason::Client);
                return;
            }
            if state.pending.is_empty() {
                return;
            }
        }
        if open
            && !state.flushing
            && self.sock.is_some()
            && let Some(handle) = self.me.upgrade()
        {
            state.flushing = true;
            tokio::spawn(flush(handle));
        }
    }

    /// Closes the outbound side: keeps what is pending (only a partly written frame
    /// when the client is not reading or gone), queues the close frame and writes
    /// within [`CLOSE_GRACE`], then shuts the socket's write side.
    pub(super) async fn close(&self, ctl: &SessionCtl, echo: Option<u16>) {
        let reason = ctl.reason();
        let mut payload = Vec::new();
        match reason.info().close {
            Some((code, text)) => {
                payload.extend_from_slice(&code.to_be_bytes());
                payload.extend_from_slice(text.as_bytes());
            }
            // The client closed: echo its status code (RFC 6455, 5.5.1) if it may be sent.
            None => {
                if let Some(code) = echo.filter(|c| sendable_close_code(*c)) {
                    payload.extend_from_slice(&code.to_be_bytes());
                }
            }
        }
        {
            let mut state = self.lock();
            state.finished = true;
            if matches!(
                reason,
                DisconnectReason::SlowConsumer | DisconnectReason::Heartbeat
            ) {
                let keep = usize::from(state.pending.front().is_some_and(|c| !c.untouched()));
                state.pending.truncate(keep);
            }
            state.rooms = RoomMap::default();
            state
                .pending
                .push_back(Chunk::frame(CLOSE, Bytes::from(payload)));
        }
        let Some(sock) = &self.sock else {
            return;
        };
        let _ = tokio::time::timeout(CLOSE_GRACE, async {
            loop {
                {
                    let mut state = self.lock();
                    if state.write_pending(sock).is_err() || state.pending.is_empty() {
                        return;
                    }
                }
                if sock.writable().await.is_err() {
                    return;
                }
            }
        })
        .await;
        // FIN after the close frame (the write half itself goes with the last handle).
        let _ = socket2::SockRef::from(sock.as_ref()).shutdown(std::net::Shutdown::Write);
    }

    #[cfg(test)]
    pub(super) fn pending(&self) -> Vec<Vec<u8>> {
        let state = self.lock();
        state
            .pending
            .iter()
            .map(|chunk| {
                let mut bytes = Vec::new();
                chunk.append_to(&mut bytes);
                bytes
            })
            .collect()
    }
}

impl State {
    /// Writes pending frames, oldest first, as far as the socket takes them now.
    fn write_pending(&mut self, sock: &OwnedWriteHalf) -> std::io::Result<()> {
        let (first, second) = self.pending.as_mut_slices();
        let mut written = write_chunks(sock, first)?;
        if written == first.len() {
            written += write_chunks(sock, second)?;
        }
        self.pending.drain(..written);
        if self.pending.is_empty() {
            // Nothing kept after a burst: idle connections hold no queue memory.
            self.pending = VecDeque::new();
        }
        Ok(())
    }
}

/// Writes a session's pending frames whenever its socket becomes writable, until none
/// is left or the session closes (the close then writes what remains).
async fn flush(handle: Arc<Handle>) {
    let out = &handle.out;
    let ctl = &handle.ctl;
    let Some(sock) = &out.sock else {
        return;
    };
    let mut closed = ctl.writer_closed();
    loop {
        {
            let mut state = out.lock();
            if ctl.is_closed() {
                state.flushing = false;
                return;
            }
            if let Err(e) = state.write_pending(sock) {
                state.flushing = false;
                drop(state);
                tracing::debug!(error = %e, "write failed");
                ctl.close(DisconnectReason::Client);
                return;
            }
            if state.pending.is_empty() {
                state.flushing = false;
                return;
            }
        }
        tokio::select! {
            biased;
            _ = &mut closed => {}
            writable = sock.writable() => {
                if writable.is_err() {
                    ctl.close(DisconnectReason::Client);
                }
            }
        }
    }
}

/// Where [`route`] puts the frames it lets through, in order (with the publish time of
/// message frames, 0 otherwise).
pub(super) trait Frames {
    fn push_back(&mut self, frame: (Utf8Bytes, u64));

    /// A room's shared frame (which may carry its compressed form for every recipient).
    fn push_room(&mut self, shared: &Arc<RoomFrame>, ts_us: u64) {
        self.push_back((shared.frame.clone(), ts_us));
    }
}

impl Frames for VecDeque<(Utf8Bytes, u64)> {
    fn push_back(&mut self, frame: (Utf8Bytes, u64)) {
        VecDeque::push_back(self, frame);
    }
}

/// One routed frame: the session's own, or a room's shared one.
enum Payload {
    Own(Utf8Bytes),
    Room(Arc<RoomFrame>),
}

/// The frames one queue item let through: usually one, kept without an allocation.
#[derive(Default)]
struct Routed {
    first: Option<(Payload, u64)>,
    more: Option<Vec<(Payload, u64)>>,
}

impl Routed {
    fn add(&mut self, frame: (Payload, u64)) {
        if self.first.is_none() {
            self.first = Some(frame);
        } else {
            self.more.get_or_insert_with(Vec::new).push(frame);
        }
    }
}

impl Frames for Routed {
    fn push_back(&mut self, (frame, ts_us): (Utf8Bytes, u64)) {
        self.add((Payload::Own(frame), ts_us));
    }

    fn push_room(&mut self, shared: &Arc<RoomFrame>, ts_us: u64) {
        self.add((Payload::Room(shared.clone()), ts_us));
    }
}

/// The chunk of one routed frame; an empty frame stands for a heartbeat ping. With
/// `permessage-deflate` agreed (`deflate_min`), a text frame of at least that many
/// bytes goes out compressed when that makes it smaller (a room's frame is compressed
/// once, for all its recipients).
fn frame_chunk(frame: Payload, deflate_min: Option<usize>) -> Chunk {
    let text = match &frame {
        Payload::Own(text) => text,
        Payload::Room(shared) => &shared.frame,
    };
    if text.is_empty() {
        return Chunk::frame(PING, Bytes::new());
    }
    if deflate_min.is_some_and(|min| text.len() >= min) {
        let packed = match &frame {
            Payload::Own(text) => deflate::compress(text.as_bytes()),
            Payload::Room(shared) => shared.deflated(),
        };
        if let Some(packed) = packed {
            return Chunk::frame(TEXT_DEFLATED, packed);
        }
    }
    match frame {
        Payload::Own(text) => Chunk::frame(TEXT, Bytes::from(text)),
        Payload::Room(shared) => Chunk::frame(TEXT, Bytes::from(shared.frame.clone())),
    }
}

/// Close codes an endpoint may put in a close frame (RFC 6455, 7.4).
fn sendable_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// Applies one queue item to the writer's room state, pushing frames to write
/// (with the publish time for message frames, 0 otherwise).
fn route(
    out: Out,
    rooms: &mut RoomMap<RoomCursor>,
    frames: &mut impl Frames,
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
                    frames.push_room(&shared, shared.ts_us);
                }
                None if shared.pseq != 0 && shared.pseq <= cursor.presence => {}
                None => frames.push_room(&shared, 0),
            }
        }
        Out::Hold(room) => {
            let room = *room;
            rooms.insert(
                room,
                RoomCursor {
                    held: Some(Vec::new()),
                    cursor: MsgId::ZERO,
                    presence: 0,
                },
            );
        }
        Out::Release(release) => {
            let Release {
                room,
                joined,
                replay,
                cursor,
                presence,
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
            state.presence = presence;
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
            let left = ServerFrame::Left {
                room: &room,
                reason: None,
            };
            frames.push_back((left.encode(), 0));
        }
        Out::Removed(room) => {
            let room = *room;
            if rooms.remove(&room).is_some() {
                let left = ServerFrame::Left {
                    room: &room,
                    reason: Some("removed"),
                };
                frames.push_back((left.encode(), 0));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room_frame(room: &Arc<str>, id: Option<u64>, text: &'static str) -> Out {
        Out::Room(Arc::new(RoomFrame {
            room: room.clone(),
            frame: Utf8Bytes::from_static(text),
            id: id.map(|ms| MsgId { ms, seq: 0 }),
            ts_us: 0,
            pseq: 0,
            deflated: Default::default(),
        }))
    }

    fn presence_frame(room: &Arc<str>, pseq: u64, text: &'static str) -> Out {
        Out::Room(Arc::new(RoomFrame {
            room: room.clone(),
            frame: Utf8Bytes::from_static(text),
            id: None,
            ts_us: 0,
            pseq,
            deflated: Default::default(),
        }))
    }

    fn release(room: &Arc<str>, cursor: u64, replay: &[(u64, &'static str)]) -> Out {
        Out::Release(Box::new(Release {
            room: room.clone(),
            joined: Utf8Bytes::from_static("joined"),
            replay: replay
                .iter()
                .map(|(ms, t)| (MsgId { ms: *ms, seq: 0 }, Utf8Bytes::from_static(t)))
                .collect(),
            cursor: MsgId { ms: cursor, seq: 0 },
            presence: 5,
        }))
    }

    /// Routes `items` through one writer state; returns the frames to write, in order.
    fn run(items: Vec<Out>, max_held: usize, ctl: &SessionCtl) -> Vec<String> {
        let mut rooms = RoomMap::default();
        let mut frames = VecDeque::new();
        for out in items {
            route(out, &mut rooms, &mut frames, max_held, ctl);
        }
        frames.into_iter().map(|(f, _)| f.to_string()).collect()
    }

    #[test]
    fn queue_items_stay_small() {
        assert!(std::mem::size_of::<Out>() <= 16);
    }

    #[test]
    fn a_join_writes_joined_then_replay_then_held_frames_without_duplicates() {
        let room: Arc<str> = Arc::from("a");
        let ctl = SessionCtl::default();
        let written = run(
            vec![
                Out::Hold(Box::new(room.clone())),
                // Live frames that arrive while the join is pending: 2 is also in the
                // replay, 3 is newer; presence has no id and is always written.
                room_frame(&room, Some(2), "m2-live"),
                room_frame(&room, None, "presence"),
                room_frame(&room, Some(3), "m3"),
                release(&room, 1, &[(2, "m2-replay")]),
                room_frame(&room, Some(3), "m3-again"),
                room_frame(&room, Some(4), "m4"),
            ],
            16,
            &ctl,
        );
        assert_eq!(written, ["joined", "m2-replay", "presence", "m3", "m4"]);
        assert!(!ctl.is_closed());
    }

    #[test]
    fn presence_that_joined_already_reflects_is_dropped_held_or_late() {
        let room: Arc<str> = Arc::from("a");
        let ctl = SessionCtl::default();
        // `release` says `joined` reflects presence up to 5: events 4 and 5 (held while
        // the join was pending, or arriving after it) are in its member list already.
        let written = run(
            vec![
                Out::Hold(Box::new(room.clone())),
                presence_frame(&room, 4, "p4-held"),
                presence_frame(&room, 6, "p6-held"),
                release(&room, 0, &[]),
                presence_frame(&room, 5, "p5-late"),
                presence_frame(&room, 7, "p7"),
            ],
            16,
            &ctl,
        );
        assert_eq!(written, ["joined", "p6-held", "p7"]);
    }

    #[test]
    fn frames_for_rooms_not_joined_or_left_are_dropped() {
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("b"));
        let ctl = SessionCtl::default();
        let written = run(
            vec![
                room_frame(&b, Some(1), "b1"),
                Out::Hold(Box::new(a.clone())),
                release(&a, 0, &[]),
                room_frame(&a, Some(1), "a1"),
                Out::Left(Box::new(a.clone())),
                room_frame(&a, Some(2), "a2"),
                Out::Hold(Box::new(b.clone())),
                room_frame(&b, Some(5), "b5-held"),
                Out::Abort(Box::new(b.clone())),
                Out::Release(Box::new(Release {
                    room: b.clone(),
                    joined: Utf8Bytes::from_static("joined-b"),
                    replay: Vec::new(),
                    cursor: MsgId::ZERO,
                    presence: 0,
                })),
                Out::Ping,
                Out::Frame(Box::new(Utf8Bytes::from_static("ack"))),
            ],
            16,
            &ctl,
        );
        assert_eq!(
            written,
            ["joined", "a1", r#"{"type":"left","room":"a"}"#, "", "ack"]
        );
    }

    #[test]
    fn too_many_held_frames_close_the_session_as_a_slow_consumer() {
        let room: Arc<str> = Arc::from("a");
        let ctl = SessionCtl::default();
        let mut items = vec![Out::Hold(Box::new(room.clone()))];
        items.extend((1..=3).map(|i| room_frame(&room, Some(i), "m")));
        run(items, 2, &ctl);
        assert!(ctl.is_closed());
        assert_eq!(ctl.reason(), DisconnectReason::SlowConsumer);
    }
}

#[cfg(test)]
mod proptests {
    use std::collections::HashMap;
    use std::sync::OnceLock;

    use proptest::prelude::*;

    use super::*;

    const ROOMS: [&str; 3] = ["a", "b", "c"];

    /// One queue item, as the session and the rooms push them (any order: routing must
    /// hold up whatever arrives).
    #[derive(Debug, Clone)]
    enum Op {
        Own(u8),
        Ping,
        Message {
            room: usize,
            id: u64,
        },
        Presence {
            room: usize,
            pseq: u64,
        },
        Hold(usize),
        Release {
            room: usize,
            cursor: u64,
            replay: Vec<u64>,
            presence: u64,
        },
        Abort(usize),
        Left(usize),
        Removed(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        let room = 0..ROOMS.len();
        prop_oneof![
            1 => any::<u8>().prop_map(Op::Own),
            1 => Just(Op::Ping),
            8 => (room.clone(), 0..16u64).prop_map(|(room, id)| Op::Message { room, id }),
            4 => (room.clone(), 0..8u64).prop_map(|(room, pseq)| Op::Presence { room, pseq }),
            3 => room.clone().prop_map(Op::Hold),
            3 => (room.clone(), 0..10u64, prop::collection::vec(0..16u64, 0..4), 0..8u64)
                .prop_map(|(room, cursor, mut replay, presence)| {
                    replay.sort_unstable();
                    Op::Release { room, cursor, replay, presence }
                }),
            1 => room.clone().prop_map(Op::Abort),
            1 => room.clone().prop_map(Op::Left),
            1 => room.prop_map(Op::Removed),
        ]
    }

    fn id(n: u64) -> MsgId {
        // Several ids per millisecond, in the same order as `n`.
        MsgId {
            ms: n / 3,
            seq: n % 3,
        }
    }

    fn left(room: &str, removed: bool) -> String {
        if removed {
            format!(r#"{{"type":"left","room":"{room}","reason":"removed"}}"#)
        } else {
            format!(r#"{{"type":"left","room":"{room}"}}"#)
        }
    }

    /// The queue items of `ops`, one name allocation per room (as `Rooms::name` gives).
    fn items(ops: &[Op], names: &[Arc<str>]) -> Vec<Out> {
        let shared = |room: usize, text: String, id: Option<MsgId>, ts_us: u64, pseq: u64| {
            Out::Room(Arc::new(RoomFrame {
                room: names[room].clone(),
                frame: Utf8Bytes::from(text),
                id,
                ts_us,
                pseq,
                deflated: OnceLock::new(),
            }))
        };
        ops.iter()
            .map(|op| match op.clone() {
                Op::Own(n) => Out::Frame(Box::new(Utf8Bytes::from(format!("own:{n}")))),
                Op::Ping => Out::Ping,
                Op::Message { room, id: n } => {
                    let text = format!("m:{}:{n}", ROOMS[room]);
                    shared(room, text, Some(id(n)), 1000 + n, 0)
                }
                Op::Presence { room, pseq } => {
                    shared(room, format!("p:{}:{pseq}", ROOMS[room]), None, 0, pseq)
                }
                Op::Hold(room) => Out::Hold(Box::new(names[room].clone())),
                Op::Release {
                    room,
                    cursor,
                    replay,
                    presence,
                } => Out::Release(Box::new(Release {
                    room: names[room].clone(),
                    joined: Utf8Bytes::from(format!("joined:{}:{presence}", ROOMS[room])),
                    replay: replay
                        .iter()
                        .map(|&n| (id(n), Utf8Bytes::from(format!("r:{}:{n}", ROOMS[room]))))
                        .collect(),
                    cursor: id(cursor),
                    presence,
                })),
                Op::Abort(room) => Out::Abort(Box::new(names[room].clone())),
                Op::Left(room) => Out::Left(Box::new(names[room].clone())),
                Op::Removed(room) => Out::Removed(Box::new(names[room].clone())),
            })
            .collect()
    }

    /// The writer's routing as the module documents it, written plainly: what it
    /// writes (text, publish time) and whether it closed the session.
    fn model(ops: &[Op], max_held: usize) -> (Vec<(String, u64)>, bool) {
        enum State {
            Held(Vec<Op>),
            Joined { cursor: u64, presence: u64 },
        }
        fn deliver(op: &Op, cursor: &mut u64, presence: u64, out: &mut Vec<(String, u64)>) {
            match *op {
                // A message newer than everything written for the room.
                Op::Message { room, id } if id > *cursor => {
                    *cursor = id;
                    out.push((format!("m:{}:{id}", ROOMS[room]), 1000 + id));
                }
                // Presence that `joined` does not reflect yet (0: not sequenced).
                Op::Presence { room, pseq } if pseq == 0 || pseq > presence => {
                    out.push((format!("p:{}:{pseq}", ROOMS[room]), 0));
                }
                _ => {}
            }
        }
        let mut rooms: HashMap<usize, State> = HashMap::new();
        let mut out = Vec::new();
        let mut closed = false;
        for op in ops {
            match op {
                Op::Own(n) => out.push((format!("own:{n}"), 0)),
                Op::Ping => out.push((String::new(), 0)),
                Op::Message { room, .. } | Op::Presence { room, .. } => match rooms.get_mut(room) {
                    None => {}
                    Some(State::Held(held)) if held.len() >= max_held => closed = true,
                    Some(State::Held(held)) => held.push(op.clone()),
                    Some(State::Joined { cursor, presence }) => {
                        deliver(op, cursor, *presence, &mut out);
                    }
                },
                Op::Hold(room) => {
                    rooms.insert(*room, State::Held(Vec::new()));
                }
                Op::Release {
                    room,
                    cursor,
                    replay,
                    presence,
                } => {
                    let Some(state) = rooms.remove(room) else {
                        continue;
                    };
                    out.push((format!("joined:{}:{presence}", ROOMS[*room]), 0));
                    for n in replay {
                        out.push((format!("r:{}:{n}", ROOMS[*room]), 1));
                    }
                    let mut cursor = replay.iter().copied().fold(*cursor, u64::max);
                    let held = match state {
                        State::Held(held) => held,
                        State::Joined { .. } => Vec::new(),
                    };
                    for op in &held {
                        deliver(op, &mut cursor, *presence, &mut out);
                    }
                    rooms.insert(
                        *room,
                        State::Joined {
                            cursor,
                            presence: *presence,
                        },
                    );
                }
                Op::Abort(room) => {
                    rooms.remove(room);
                }
                Op::Left(room) => {
                    rooms.remove(room);
                    out.push((left(ROOMS[*room], false), 0));
                }
                Op::Removed(room) => {
                    if rooms.remove(room).is_some() {
                        out.push((left(ROOMS[*room], true), 0));
                    }
                }
            }
        }
        (out, closed)
    }

    /// Routes `ops` through one writer state.
    fn route_all(ops: &[Op], max_held: usize) -> (Vec<(String, u64)>, bool) {
        let names: Vec<Arc<str>> = ROOMS.iter().map(|r| Arc::from(*r)).collect();
        let ctl = SessionCtl::default();
        let mut rooms = RoomMap::default();
        let mut frames = VecDeque::new();
        for out in items(ops, &names) {
            route(out, &mut rooms, &mut frames, max_held, &ctl);
        }
        let written = frames
            .into_iter()
            .map(|(f, ts)| (f.to_string(), ts))
            .collect();
        (written, ctl.is_closed())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn routing_writes_what_the_documented_rules_say(
            ops in prop::collection::vec(op(), 0..40),
            max_held in 1..6usize,
        ) {
            prop_assert_eq!(route_all(&ops, max_held), model(&ops, max_held));
        }

        #[test]
        fn a_room_frame_is_written_only_inside_a_join_in_order_without_duplicates(
            ops in prop::collection::vec(op(), 0..40),
        ) {
            let (written, closed) = route_all(&ops, 64);
            prop_assert!(!closed);
            // Per room: the `joined` being answered (its presence) and the newest
            // message id written since.
            let mut open: HashMap<String, (u64, Option<u64>)> = HashMap::new();
            for (text, _) in &written {
                let parts: Vec<&str> = text.split(':').collect();
                match parts.as_slice() {
                    ["joined", room, presence] => {
                        open.insert(room.to_string(), (presence.parse().unwrap(), None));
                    }
                    ["r", room, n] => {
                        let (_, newest) = open.get_mut(*room).expect("replay inside a join");
                        let n: u64 = n.parse().unwrap();
                        *newest = Some(newest.map_or(n, |m| m.max(n)));
                    }
                    ["m", room, n] => {
                        let (_, newest) = open.get_mut(*room).expect("message inside a join");
                        let n: u64 = n.parse().unwrap();
                        prop_assert!(newest.is_none_or(|m| n > m), "{text} repeats or reorders");
                        *newest = Some(n);
                    }
                    ["p", room, pseq] => {
                        let (presence, _) = open.get(*room).expect("presence inside a join");
                        let pseq: u64 = pseq.parse().unwrap();
                        prop_assert!(pseq == 0 || pseq > *presence, "{text}: joined reflects it");
                    }
                    _ if text.starts_with(r#"{"type":"left""#) => {
                        let room = text.split('"').nth(7).expect("left names its room");
                        open.remove(room);
                    }
                    _ => {}
                }
            }
        }
    }
}
