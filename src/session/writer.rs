//! The session's writer and its outbound queue protocol. Everything for the client goes
//! through one bounded queue of [`Out`] items; the writer task drains it in batches
//! (feed several frames, flush once) and, per room, holds live frames while a join is
//! pending so `joined`, the replay and live messages reach the client in order, with no
//! duplicate. When the session closes it sends what is still queued and the close frame
//! of the reason ([`DisconnectReason::info`]).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::SinkExt;
use futures_util::stream::SplitSink;
use tokio::sync::mpsc;

use super::Handle;
use super::ctl::SessionCtl;
use super::room_map::RoomMap;
use crate::clock;
use crate::metrics::Metrics;
use crate::protocol::{DisconnectReason, Encode, MsgId, ServerFrame};
use crate::rooms::RoomFrame;

/// Frames the writer feeds before one flush.
const WRITE_BATCH: usize = 64;
/// How long a close frame may take to go out before the socket is just dropped.
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

/// Drains the outbound queue in batches until the session ends, then sends the close
/// frame that matches the reason. Unless the client is gone or not reading, frames that
/// were already queued (an error explaining the close, messages before a drain) go out
/// first, within [`CLOSE_GRACE`].
pub(super) async fn write_loop(
    mut sink: SplitSink<WebSocket, Message>,
    mut rx: mpsc::Receiver<Out>,
    handle: Arc<Handle>,
    metrics: Arc<Metrics>,
    max_held: usize,
) {
    let ctl = &handle.ctl;
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
        route(first, &mut rooms, &mut frames, max_held, ctl);
        for _ in 1..WRITE_BATCH {
            match rx.try_recv() {
                Ok(out) => route(out, &mut rooms, &mut frames, max_held, ctl),
                Err(_) => break,
            }
        }
        let now = clock::unix_micros();
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
    Box::pin(close_phase(sink, rx, ctl, rooms, frames)).await;
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
    let Some((code, text)) = reason.info().close else {
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
                None if shared.pseq != 0 && shared.pseq <= cursor.presence => {}
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
        }))
    }

    fn presence_frame(room: &Arc<str>, pseq: u64, text: &'static str) -> Out {
        Out::Room(Arc::new(RoomFrame {
            room: room.clone(),
            frame: Utf8Bytes::from_static(text),
            id: None,
            ts_us: 0,
            pseq,
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
