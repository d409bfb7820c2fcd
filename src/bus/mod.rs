//! The bus carries each room's messages and presence between replicas and keeps each
//! room's history. Two implementations behind one enum (no dynamic dispatch):
//! [`memory::MemoryBus`] for a single node and [`redis::RedisBus`] (fred) for many.
//!
//! The bus assigns each message its room offset ([`MsgId`]) atomically with the publish,
//! so every replica sees one order per room, and the sender's own copy comes back
//! through the bus too: one path, one order.

pub mod memory;
pub mod redis;

use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::protocol::{MsgId, User};

/// A bus failure; reaches clients only as the `unavailable` error code.
#[derive(Debug, thiserror::Error)]
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

/// What travels on a room's channel (JSON). Message envelopes get their `id` from the bus
/// at publish time; the history keeps them without it (the entry id is the id).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "k")]
pub enum Envelope {
    #[serde(rename = "m")]
    Message {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        #[serde(rename = "u")]
        from: User,
        #[serde(rename = "t")]
        text: String,
        /// Publish time, Unix microseconds.
        ts: u64,
        #[serde(rename = "n")]
        node: String,
        #[serde(rename = "c")]
        conn: String,
        /// W3C `traceparent` of the sending span, when tracing is exported.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tp: Option<String>,
    },
    #[serde(rename = "p")]
    Presence {
        #[serde(rename = "e")]
        event: PresenceEvent,
        #[serde(rename = "u")]
        user: User,
        #[serde(rename = "n")]
        node: String,
        #[serde(rename = "c")]
        conn: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PresenceEvent {
    Join,
    Leave,
}

impl PresenceEvent {
    pub fn as_str(self) -> &'static str {
        match self {
            PresenceEvent::Join => "join",
            PresenceEvent::Leave => "leave",
        }
    }
}

/// One local membership as the bus records it for presence.
#[derive(Debug, Clone)]
pub struct MemberRef {
    pub node: Arc<str>,
    pub conn: Arc<str>,
    pub user: User,
}

impl MemberRef {
    /// The presence field: `node|conn`, so a dead node's entries can be found.
    pub fn field(&self) -> String {
        format!("{}|{}", self.node, self.conn)
    }

    pub fn presence(&self, event: PresenceEvent) -> String {
        serde_json::to_string(&Envelope::Presence {
            event,
            user: self.user.clone(),
            node: self.node.to_string(),
            conn: self.conn.to_string(),
        })
        .unwrap_or_default()
    }
}

/// A message (or presence event) received from the bus for one room.
#[derive(Debug)]
pub struct Incoming {
    pub room: Arc<str>,
    pub payload: Bytes,
}

/// The answer to a join: who is there, where the room's log stands, and the replay.
#[derive(Debug, Default)]
pub struct JoinInfo {
    pub members: Vec<User>,
    /// The newest message id in the room (`0-0` if none).
    pub head: MsgId,
    /// `None` without `since`; otherwise whether every message after `since` is replayed.
    pub recovered: Option<bool>,
    /// History entries after `since`: (id, envelope without id).
    pub replay: Vec<(MsgId, Bytes)>,
}

/// An event from the bus to the hub's receive loop.
#[derive(Debug)]
pub enum BusEvent {
    Message(Incoming),
    /// The subscriber connection was re-established: subscriptions are gone and messages
    /// may have been missed in between.
    Reconnected,
    /// The receive loop fell behind and `n` messages were dropped.
    Lagged(u64),
    Closed,
}

/// The bus, memory or Redis.
#[derive(Clone)]
pub enum Bus {
    Memory(memory::MemoryBus),
    Redis(redis::RedisBus),
}

/// The receiving half of the bus, owned by the hub's receive loop.
pub enum BusReceiver {
    Memory(tokio::sync::mpsc::Receiver<Incoming>),
    Redis(redis::RedisReceiver),
}

impl BusReceiver {
    pub async fn next(&mut self) -> BusEvent {
        match self {
            BusReceiver::Memory(rx) => match rx.recv().await {
                Some(m) => BusEvent::Message(m),
                None => BusEvent::Closed,
            },
            BusReceiver::Redis(rx) => rx.next().await,
        }
    }
}

impl Bus {
    pub fn is_redis(&self) -> bool {
        matches!(self, Bus::Redis(_))
    }

    /// Whether the bus can carry messages now.
    pub fn is_connected(&self) -> bool {
        match self {
            Bus::Memory(_) => true,
            Bus::Redis(b) => b.is_connected(),
        }
    }

    /// Publishes a message envelope (serialised without id); returns its room offset.
    pub async fn publish(&self, room: &str, envelope: String) -> Result<MsgId, BusError> {
        match self {
            Bus::Memory(b) => b.publish(room, envelope).await,
            Bus::Redis(b) => b.publish(room, envelope).await,
        }
    }

    pub async fn subscribe(&self, room: &str) -> Result<(), BusError> {
        match self {
            Bus::Memory(_) => Ok(()),
            Bus::Redis(b) => b.subscribe(room).await,
        }
    }

    pub async fn unsubscribe(&self, room: &str) -> Result<(), BusError> {
        match self {
            Bus::Memory(_) => Ok(()),
            Bus::Redis(b) => b.unsubscribe(room).await,
        }
    }

    /// Records the member's presence, announces it, and reads members and history.
    pub async fn join(
        &self,
        room: &str,
        member: &MemberRef,
        since: Option<MsgId>,
    ) -> Result<JoinInfo, BusError> {
        match self {
            Bus::Memory(b) => b.join(room, member, since).await,
            Bus::Redis(b) => b.join(room, member, since).await,
        }
    }

    /// Removes the member's presence and announces the leave. `last_local` tells that
    /// this node has no other member in the room.
    pub async fn leave(
        &self,
        room: &str,
        member: &MemberRef,
        last_local: bool,
    ) -> Result<(), BusError> {
        match self {
            Bus::Memory(b) => b.leave(room, member).await,
            Bus::Redis(b) => b.leave(room, member, last_local).await,
        }
    }

    /// Messages after `since` still in the room's history, and whether that is all of
    /// them (false when the history no longer reaches back that far).
    pub async fn catch_up(
        &self,
        room: &str,
        since: MsgId,
    ) -> Result<(bool, Vec<(MsgId, Bytes)>), BusError> {
        match self {
            Bus::Memory(_) => Ok((true, Vec::new())),
            Bus::Redis(b) => b.catch_up(room, since).await,
        }
    }
}

/// Microseconds since the Unix epoch.
pub fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}
