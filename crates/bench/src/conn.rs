//! One simulated user: a task that owns one WebSocket, joins its rooms, publishes what the
//! pacer asks for, measures every delivery and keeps its members' ledgers. With `--resume`
//! it survives closes and errors: it reconnects with jittered backoff to the next URL and
//! re-joins each room with `since` = its cursor. With a join gate (`--join-at-once`) it
//! connects, then waits for the gate before sending its joins. Every frame it receives is
//! counted by type and size.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rand::Rng;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use super::ledger::MemberLedger;
use super::net::{Target, Ws, connect};
use super::stats::Recorder;
use super::wire::{self, Event, FrameKind, Payload, Protocol};

/// What every connection shares.
pub struct Shared {
    pub protocol: Protocol,
    pub targets: Vec<Target>,
    pub room_names: Vec<String>,
    pub rec: Arc<Recorder>,
    pub resume: bool,
    pub size: usize,
    pub name_prefix: String,
    pub connect_timeout: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Bounds concurrent connection attempts (ramp-up).
    pub connect_permits: Arc<Semaphore>,
    /// `--deflate`: offer permessage-deflate and read through [`crate::deflate::Inflate`].
    pub deflate: bool,
    /// `--join-at-once`: the first session of every connection waits until this turns
    /// true before it sends its joins (roomcast protocol; Socket.IO joins are not gated).
    pub join_gate: Option<watch::Receiver<bool>>,
}

/// A publish order from the pacer.
#[derive(Debug, Clone, Copy)]
pub struct SendCmd {
    /// Index into the connection's rooms.
    pub slot: usize,
    pub step: u32,
    /// When the pacer scheduled it (to measure how far behind the publishers are).
    pub scheduled: Instant,
}

/// One connection's fixed plan.
pub struct ConnSpec {
    pub index: usize,
    pub rooms: Vec<MemberLedger>,
    pub first_url: usize,
    pub source: Option<IpAddr>,
    /// Delay before the first connect (ramp-up).
    pub start_delay: Duration,
}

enum End {
    /// The run is over.
    Stopped,
    /// The connection went away; the string says why (close code and reason, or error).
    Closed(String),
}

struct Conn {
    spec: ConnSpec,
    shared: Arc<Shared>,
    cmds: Option<mpsc::UnboundedReceiver<SendCmd>>,
    stop: watch::Receiver<bool>,
    url: usize,
    seq: u64,
    ever_ready: bool,
    /// Whether this connection's first session was counted in `Recorder::sessions`.
    counted_session: bool,
    /// When the last session closed (reset once every room is joined again): the start
    /// of the resume gap.
    closed_at: Option<Instant>,
}

/// Runs one connection until the run stops (or, without `--resume`, until it closes) and
/// returns its members' ledgers.
pub async fn run(
    spec: ConnSpec,
    shared: Arc<Shared>,
    cmds: Option<mpsc::UnboundedReceiver<SendCmd>>,
    stop: watch::Receiver<bool>,
) -> Vec<MemberLedger> {
    let url = spec.first_url;
    let mut c = Conn {
        spec,
        shared,
        cmds,
        stop,
        url,
        seq: 0,
        ever_ready: false,
        counted_session: false,
        closed_at: None,
    };
    c.main().await;
    if !c.ever_ready {
        c.shared.rec.failed.fetch_add(1, Ordering::Relaxed);
    }
    c.spec.rooms
}

impl Conn {
    async fn main(&mut self) {
        let rec = self.shared.rec.clone();
        if !self.wait(self.spec.start_delay).await {
            return;
        }
        let mut attempt: u32 = 0;
        loop {
            if *self.stop.borrow() {
                return;
            }
            let target = &self.shared.targets[self.url];
            let ws = {
                let _permit = self.shared.connect_permits.acquire().await;
                let deflate = self.shared.deflate.then_some(&self.shared.rec.wire);
                connect(
                    target,
                    self.spec.source,
                    self.shared.connect_timeout,
                    deflate,
                )
                .await
            };
            let end = match ws {
                Ok(ws) => {
                    rec.connects.fetch_add(1, Ordering::Relaxed);
                    let (end, joined) = self.session(ws).await;
                    if joined {
                        attempt = 0;
                        if matches!(end, End::Stopped) {
                            rec.open_at_stop.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    end
                }
                Err(e) => {
                    rec.connect_error(format!("{e:#}"));
                    End::Closed("connect error".into())
                }
            };
            match end {
                End::Stopped => return,
                End::Closed(reason) => {
                    if *self.stop.borrow() {
                        return;
                    }
                    if reason != "connect error" {
                        rec.disconnects.fetch_add(1, Ordering::Relaxed);
                        rec.tick(|b| b.disconnects += 1);
                        rec.close(reason);
                        if self.ever_ready {
                            self.closed_at.get_or_insert_with(Instant::now);
                        }
                    }
                    if !self.shared.resume {
                        return;
                    }
                    rec.reconnects.fetch_add(1, Ordering::Relaxed);
                    self.url = (self.url + 1) % self.shared.targets.len();
                    let delay = backoff(self.shared.backoff_min, self.shared.backoff_max, attempt);
                    attempt = attempt.saturating_add(1);
                    if !self.wait(delay).await {
                        return;
                    }
                }
            }
        }
    }

    /// Sleeps unless the run stops first; false when it stopped.
    async fn wait(&mut self, d: Duration) -> bool {
        if d.is_zero() {
            return !*self.stop.borrow();
        }
        tokio::select! {
            _ = tokio::time::sleep(d) => !*self.stop.borrow(),
            _ = stopped(&mut self.stop) => false,
        }
    }

    fn name(&self) -> String {
        format!("{}{}", self.shared.name_prefix, self.spec.index)
    }

    fn join_frames(&self) -> Vec<String> {
        let name = self.name();
        self.spec
            .rooms
            .iter()
            .enumerate()
            .map(|(slot, m)| {
                let since = if self.shared.resume {
                    m.join_offset.and(m.cursor)
                } else {
                    None
                };
                wire::join(
                    self.shared.protocol,
                    &self.shared.room_names[m.room],
                    &name,
                    since,
                    &format!("j{slot}"),
                )
            })
            .collect()
    }

    fn slot_of(&self, room: &str) -> Option<usize> {
        self.spec
            .rooms
            .iter()
            .position(|m| self.shared.room_names[m.room] == room)
    }

    /// One WebSocket session: handshake, joins, then traffic until stop or close.
    /// Returns how it ended and whether every room was joined.
    async fn session(&mut self, mut ws: Ws) -> (End, bool) {
        let shared = self.shared.clone();
        let rec = &shared.rec;
        let protocol = shared.protocol;
        // Orders that queued while we were away are stale.
        if let Some(rx) = self.cmds.as_mut() {
            while rx.try_recv().is_ok() {
                rec.skipped_sends.fetch_add(1, Ordering::Relaxed);
            }
        }
        let mut joined = vec![false; self.spec.rooms.len()];
        let mut pending_joins = self.spec.rooms.len();
        let mut all_joined = false;
        // ref (sequence) -> slot of sends waiting for their ack, and when each was written.
        let mut pending: HashMap<u64, (usize, Instant)> = HashMap::new();
        if !self.counted_session {
            self.counted_session = true;
            rec.sessions.fetch_add(1, Ordering::Relaxed);
        }
        if protocol == Protocol::Roomcast
            && let Some(mut gate) = shared.join_gate.clone()
        {
            // The frames that arrive meanwhile (welcome) wait in the socket.
            let mut stop = self.stop.clone();
            let released = tokio::select! {
                // Opened (or the orchestrator is gone, which stops the run anyway).
                _ = async { gate.wait_for(|open| *open).await.map(|_| ()) } => true,
                _ = stopped(&mut stop) => false,
            };
            if !released {
                let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
                return (End::Stopped, false);
            }
        }
        if protocol == Protocol::Roomcast {
            for f in self.join_frames() {
                if let Err(e) = ws.send(Message::text(f)).await {
                    return (End::Closed(format!("error: {e}")), false);
                }
            }
        }
        let mut cmds = self.cmds.take();
        let mut stop = self.stop.clone();
        // One registration for the whole session, not one per frame.
        let stop_signal = stopped(&mut stop);
        tokio::pin!(stop_signal);
        let end = loop {
            let cmd = async {
                match cmds.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = &mut stop_signal => {
                    let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
                    break End::Stopped;
                }
                cmd = cmd => {
                    let Some(cmd) = cmd else {
                        cmds = None;
                        continue;
                    };
                    if !all_joined || !joined.get(cmd.slot).copied().unwrap_or(false) {
                        rec.skipped_sends.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    rec.send_lag(cmd.scheduled.elapsed().as_micros() as u64);
                    self.seq += 1;
                    let payload = Payload {
                        sent_us: wire::now_us(),
                        step: cmd.step,
                        url: self.url as u32,
                        conn: self.spec.index as u32,
                        seq: self.seq,
                    };
                    let room = &shared.room_names[self.spec.rooms[cmd.slot].room];
                    let frame = wire::send(protocol, room, &payload.render(shared.size), &self.seq.to_string());
                    pending.insert(self.seq, (cmd.slot, Instant::now()));
                    rec.in_flight.fetch_add(1, Ordering::Relaxed);
                    if let Some(s) = rec.steps.get(cmd.step as usize) {
                        s.sent.fetch_add(1, Ordering::Relaxed);
                    }
                    rec.tick(|b| b.sent += 1);
                    if let Err(e) = ws.send(Message::text(frame)).await {
                        break End::Closed(format!("error: {e}"));
                    }
                }
                msg = ws.next() => {
                    let msg = match msg {
                        None => break End::Closed("eof".into()),
                        Some(Err(e)) => break End::Closed(format!("error: {e}")),
                        Some(Ok(m)) => m,
                    };
                    let text = match msg {
                        Message::Text(t) => t,
                        Message::Close(f) => {
                            rec.frame(FrameKind::Other, f.as_ref().map_or(0, |f| 2 + f.reason.len()));
                            break End::Closed(match f {
                                Some(f) => format!("{} {}", u16::from(f.code), f.reason),
                                None => "close".into(),
                            });
                        }
                        other => {
                            rec.frame(FrameKind::Other, other.len());
                            continue;
                        }
                    };
                    let event = match wire::decode(protocol, &text) {
                        Ok(e) => e,
                        Err(e) => break End::Closed(e),
                    };
                    rec.frame(event.kind(), text.len());
                    let reply: Option<Vec<String>> = match event {
                        Event::EioOpen => Some(vec![wire::SIO_CONNECT.to_string()]),
                        Event::EioPing => Some(vec![wire::EIO_PONG.to_string()]),
                        Event::SioConnected => Some(self.join_frames()),
                        Event::Welcome | Event::Other | Event::Members => None,
                        Event::Presence { summary } => {
                            if summary {
                                rec.presence_summary();
                            }
                            None
                        }
                        Event::Joined { room, offset, recovered, members_listed, member_count } => {
                            rec.joined_size(members_listed, member_count);
                            if recovered == Some(false) {
                                rec.tick(|b| b.unrecovered += 1);
                            }
                            if let Some(slot) = self.slot_of(&room) {
                                self.spec.rooms[slot].joined(offset, recovered);
                                if !joined[slot] {
                                    joined[slot] = true;
                                    pending_joins -= 1;
                                }
                                if pending_joins == 0 && !all_joined {
                                    all_joined = true;
                                    if let Some(t) = self.closed_at.take() {
                                        rec.resumed(t.elapsed().as_micros() as u64);
                                    }
                                    if !self.ever_ready {
                                        self.ever_ready = true;
                                        rec.ready.fetch_add(1, Ordering::Relaxed);
                                    }
                                }
                            }
                            None
                        }
                        Event::Message { room, id, text } => {
                            let now = wire::now_us();
                            match Payload::parse(&text) {
                                Some(p) => rec.delivery(
                                    p.step as usize,
                                    now.saturating_sub(p.sent_us),
                                    p.url as usize != self.url,
                                    now,
                                ),
                                None => {
                                    rec.foreign.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                            if let (Some(slot), Some(id)) = (self.slot_of(&room), id) {
                                let m = &mut self.spec.rooms[slot];
                                m.deliver(id);
                                rec.room(m.room).observe(id);
                            }
                            None
                        }
                        Event::Ack { reference, id } => {
                            let slot = reference
                                .and_then(|r| r.parse::<u64>().ok())
                                .and_then(|r| pending.remove(&r));
                            if let Some((slot, written)) = slot {
                                rec.answered(written.elapsed().as_micros() as u64);
                                rec.in_flight.fetch_sub(1, Ordering::Relaxed);
                                rec.acked.fetch_add(1, Ordering::Relaxed);
                                rec.tick(|b| b.acked += 1);
                                if let Some(id) = id {
                                    rec.room(self.spec.rooms[slot].room).ack(id);
                                }
                            }
                            None
                        }
                        Event::Error { code, reference } => {
                            rec.error_code(&code);
                            match reference.as_deref() {
                                Some(r) if r.starts_with('j') => {
                                    rec.join_errors.fetch_add(1, Ordering::Relaxed);
                                }
                                Some(r) => {
                                    if let Ok(seq) = r.parse::<u64>()
                                        && let Some((_, written)) = pending.remove(&seq)
                                    {
                                        rec.answered(written.elapsed().as_micros() as u64);
                                        rec.in_flight.fetch_sub(1, Ordering::Relaxed);
                                        rec.refused(&code);
                                    }
                                }
                                None => {}
                            }
                            None
                        }
                    };
                    let mut failed = None;
                    for f in reply.unwrap_or_default() {
                        if let Err(e) = ws.send(Message::text(f)).await {
                            failed = Some(e);
                            break;
                        }
                    }
                    if let Some(e) = failed {
                        break End::Closed(format!("error: {e}"));
                    }
                }
            }
        };
        self.cmds = cmds;
        let unacked = pending.len() as u64;
        if unacked > 0 {
            rec.in_flight.fetch_sub(unacked, Ordering::Relaxed);
            rec.unacked.fetch_add(unacked, Ordering::Relaxed);
        }
        (end, all_joined)
    }
}

/// Resolves once the run is stopped (or the orchestrator is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Jittered exponential backoff: `min` doubling per attempt up to `max`, each delay
/// randomised by ±50% (like the chat page).
pub fn backoff(min: Duration, max: Duration, attempt: u32) -> Duration {
    let base = min.saturating_mul(1u32 << attempt.min(16)).min(max);
    base.mul_f64(rand::rng().random_range(0.5..1.5))
}
