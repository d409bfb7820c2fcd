//! The Redis bus (fred): one command client (auto-pipelined) and one subscriber client.
//!
//! Keys put the room in a hash tag so a room's channel, log and members share one slot:
//! `{prefix}:{room}:ch` (PUBLISH channel), `{prefix}:{room}:log` (bounded stream, the
//! history), `{prefix}:{room}:members` (presence hash `node|conn` -> user JSON).
//! Per node: `{prefix}:nodes` (sorted set of node -> liveness deadline) and
//! `{prefix}:node:{node}:rooms` (rooms where the node has members, for reaping).
//! Per room, for the server API: `{prefix}:{room}:idem:{key}` (idempotency key -> first
//! id, expiring) and `{prefix}:{room}:bar:{user}` (a kicked user's bar, expiring).
//! `{prefix}:ctl` is the control channel every replica subscribes to (disconnect, kick).
//! Each multi-step operation is one Lua script (`lua/*.lua`), so it is atomic and one
//! round trip: publishing is XADD + PEXPIRE + PUBLISH of `"<id> <envelope>"`. A member's
//! presence value is its leave envelope, so a reaper announces the leave verbatim.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fred::clients::SubscriberClient;
use fred::prelude::*;
use fred::types::config::Options;
use fred::types::scripts::Script;
use fred::types::{CustomCommand, Message};
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;

use std::sync::atomic::{AtomicBool, Ordering};

use super::envelope::split_channel_frame;
use super::{
    Backend, BusError, BusEvent, CatchUp, Envelope, HistoryPage, HistoryRange, Idem, Incoming,
    JoinInfo, MemberRef, PresenceEvent, Published,
};
use crate::clock;
use crate::config::Config;
use crate::protocol::{MsgId, User};

const PUBLISH_LUA: &str = include_str!("lua/publish.lua");
const JOIN_LUA: &str = include_str!("lua/join.lua");
const CATCH_UP_LUA: &str = include_str!("lua/catch_up.lua");
const LEAVE_LUA: &str = include_str!("lua/leave.lua");
const REAP_LUA: &str = include_str!("lua/reap.lua");

/// How long a bus command may take before the client is told `unavailable`.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// Messages fred buffers for the receive loop before it counts as lagging.
const BROADCAST_CAPACITY: usize = 1 << 16;

#[derive(Clone)]
pub(crate) struct RedisBus {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    subscriber: SubscriberClient,
    prefix: String,
    node: Arc<str>,
    history_size: usize,
    history_ttl_ms: u64,
    presence_ttl_ms: u64,
    /// Set once this node's liveness entry is in Redis: only then may members join, or
    /// a crash right after start would leave members no reaper can find.
    registered: AtomicBool,
    /// Set once the control channel is subscribed.
    control_subscribed: AtomicBool,
    options: Options,
    publish: Script,
    join: Script,
    catch_up: Script,
    leave: Script,
    reap: Script,
}

/// The receiving half: fred's broadcast of channel messages plus reconnect events.
pub(crate) struct RedisReceiver {
    messages: broadcast::Receiver<Message>,
    reconnects: broadcast::Receiver<fred::types::config::Server>,
    channel_prefix: String,
    control_channel: String,
    /// The first connection is not a reconnect.
    connected_before: bool,
}

impl RedisReceiver {
    pub(crate) async fn next(&mut self) -> BusEvent {
        loop {
            tokio::select! {
                biased;
                r = self.reconnects.recv() => match r {
                    Ok(_) | Err(RecvError::Lagged(_)) => {
                        if std::mem::replace(&mut self.connected_before, true) {
                            return BusEvent::Reconnected;
                        }
                    }
                    Err(RecvError::Closed) => return BusEvent::Closed,
                },
                m = self.messages.recv() => match m {
                    Ok(msg) => {
                        if *msg.channel == *self.control_channel {
                            match msg.value {
                                Value::String(s) => return BusEvent::Control(s.into_inner()),
                                Value::Bytes(b) => return BusEvent::Control(b),
                                _ => continue,
                            }
                        }
                        let Some(room) = msg
                            .channel
                            .strip_prefix(self.channel_prefix.as_str())
                            .and_then(|r| r.strip_suffix("}:ch"))
                        else {
                            continue;
                        };
                        let frame = match msg.value {
                            Value::String(s) => s.into_inner(),
                            Value::Bytes(b) => b,
                            _ => continue,
                        };
                        let Some((id, payload)) = split_channel_frame(frame) else {
                            tracing::warn!(%room, "skipping a channel frame that is neither a message nor presence");
                            continue;
                        };
                        return BusEvent::Message(Incoming { room: Arc::from(room), id, payload });
                    }
                    Err(RecvError::Lagged(n)) => return BusEvent::Lagged(n),
                    Err(RecvError::Closed) => return BusEvent::Closed,
                },
            }
        }
    }
}

impl RedisBus {
    /// Creates the clients and starts connecting in the background (reconnecting forever
    /// with backoff); readiness reports when the bus is up.
    pub(crate) fn connect(
        config: &Config,
        url: &str,
        node: Arc<str>,
    ) -> Result<(Self, RedisReceiver), BusError> {
        let mut redis_config = fred::prelude::Config::from_url(url)?;
        if let Some(password) = &config.redis.password {
            redis_config.password = Some(password.clone());
        }
        // Keep retrying the first connection too: the pod stays unready until Redis is up.
        redis_config.fail_fast = false;
        let mut builder = Builder::from_config(redis_config);
        builder
            .with_performance_config(|p| {
                p.broadcast_channel_capacity = BROADCAST_CAPACITY;
                p.default_command_timeout = Duration::from_secs(5);
            })
            .with_connection_config(|c| {
                c.connection_timeout = Duration::from_secs(2);
                c.internal_command_timeout = Duration::from_secs(2);
            })
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2));
        let client = builder.build()?;
        let subscriber = builder.build_subscriber_client()?;
        let receiver = RedisReceiver {
            messages: subscriber.message_rx(),
            reconnects: subscriber.reconnect_rx(),
            channel_prefix: format!("{}:{{", config.redis.prefix),
            control_channel: control_channel(&config.redis.prefix),
            connected_before: false,
        };
        client.connect();
        subscriber.connect();
        let options = Options {
            fail_fast: true,
            timeout: Some(COMMAND_TIMEOUT),
            max_attempts: Some(1),
            ..Options::default()
        };
        let inner = Inner {
            client,
            subscriber,
            prefix: config.redis.prefix.clone(),
            node,
            history_size: config.history.size,
            history_ttl_ms: config.history.ttl.as_millis() as u64,
            presence_ttl_ms: config.presence.ttl.as_millis() as u64,
            registered: AtomicBool::new(false),
            control_subscribed: AtomicBool::new(false),
            options,
            publish: Script::from_lua(PUBLISH_LUA),
            join: Script::from_lua(JOIN_LUA),
            catch_up: Script::from_lua(CATCH_UP_LUA),
            leave: Script::from_lua(LEAVE_LUA),
            reap: Script::from_lua(REAP_LUA),
        };
        Ok((
            RedisBus {
                inner: Arc::new(inner),
            },
            receiver,
        ))
    }

    fn key(&self, room: &str, suffix: &str) -> String {
        format!("{}:{{{}}}:{}", self.inner.prefix, room, suffix)
    }

    fn node_rooms_key(&self, node: &str) -> String {
        format!("{}:node:{}:rooms", self.inner.prefix, node)
    }

    fn nodes_key(&self) -> String {
        format!("{}:nodes", self.inner.prefix)
    }

    /// Subscribes the control channel once (the subscriber client keeps it across
    /// reconnects, and [`Backend::resubscribe`] repeats it).
    async fn subscribe_control(&self) {
        if self.inner.control_subscribed.load(Ordering::Acquire) {
            return;
        }
        let sub = self.inner.subscriber.with_options(&self.inner.options);
        match sub.subscribe(control_channel(&self.inner.prefix)).await {
            Ok(()) => self.inner.control_subscribed.store(true, Ordering::Release),
            Err(e) => tracing::warn!(error = %e, "subscribing the control channel failed"),
        }
    }

    /// Runs one command (with the bus's timeout) and returns its raw reply.
    async fn command(&self, name: &'static str, args: Vec<Value>) -> Result<Value, BusError> {
        let client = self.inner.client.with_options(&self.inner.options);
        let command = CustomCommand::new_static(name, None, false);
        Ok(client.custom::<Value, Value>(command, args).await?)
    }

    /// Runs a script by SHA, loading it first if Redis does not know it (e.g. after a
    /// restart). Fails fast when Redis is down.
    async fn eval(
        &self,
        script: &Script,
        keys: Vec<String>,
        args: Vec<Value>,
    ) -> Result<Value, BusError> {
        let client = self.inner.client.with_options(&self.inner.options);
        let numkeys = keys.len() as i64;
        let tail = || {
            let mut v: Vec<Value> = Vec::with_capacity(2 + keys.len() + args.len());
            v.push(Value::from(numkeys));
            v.extend(keys.iter().map(|k| Value::from(k.as_str())));
            v.extend(args.iter().cloned());
            v
        };
        let mut with_sha = vec![Value::from(script.sha1().clone())];
        with_sha.extend(tail());
        let evalsha = CustomCommand::new_static("EVALSHA", None, false);
        match client.custom::<Value, Value>(evalsha, with_sha).await {
            Err(e) if e.details().contains("NOSCRIPT") => {
                // Redis lost its script cache (restart): EVAL sends the body and caches it.
                let mut with_body = vec![Value::from(script.lua().cloned().unwrap_or_default())];
                with_body.extend(tail());
                let eval = CustomCommand::new_static("EVAL", None, false);
                Ok(client.custom::<Value, Value>(eval, with_body).await?)
            }
            other => Ok(other?),
        }
    }

    /// Refreshes this node's liveness deadline. Returns true if the node was not
    /// registered (first beat, reaped by a peer, or Redis lost its data), in which case
    /// the caller records its members again.
    async fn heartbeat(&self, deadline_ms: u64) -> Result<bool, BusError> {
        let added: i64 = self
            .inner
            .client
            .with_options(&self.inner.options)
            .zadd(
                self.nodes_key(),
                None,
                None,
                false,
                false,
                (deadline_ms as f64, self.inner.node.to_string()),
            )
            .await?;
        Ok(added == 1)
    }

    /// Records members again after a heartbeat found this node unregistered.
    async fn restore(&self, members: &[(Arc<str>, MemberRef)]) -> Result<(), BusError> {
        let pipeline = self.inner.client.pipeline();
        for (room, member) in members {
            let _: () = pipeline
                .hset(
                    self.key(room, "members"),
                    (member.field(), member.presence(PresenceEvent::Leave)),
                )
                .await?;
            let _: () = pipeline
                .sadd(self.node_rooms_key(&member.node), room.to_string())
                .await?;
            if let Some(id) = &member.user.id {
                let _: () = pipeline
                    .hincrby(self.key(room, "users"), id.as_str(), 1)
                    .await?;
            }
        }
        let _: Vec<Value> = pipeline.all().await?;
        Ok(())
    }

    /// Reaps nodes whose deadline passed; returns how many members were removed.
    async fn reap(&self, now_ms: u64) -> Result<u64, BusError> {
        let dead: Vec<String> = self
            .inner
            .client
            .with_options(&self.inner.options)
            .zrangebyscore(
                self.nodes_key(),
                "-inf",
                now_ms as f64,
                false,
                Some((0, 32)),
            )
            .await?;
        let mut removed = 0;
        for node in dead {
            if node == *self.inner.node {
                continue;
            }
            let n = self
                .eval(
                    &self.inner.reap,
                    vec![self.nodes_key()],
                    vec![
                        Value::from(node.as_str()),
                        Value::from(self.inner.prefix.as_str()),
                    ],
                )
                .await?;
            let n = n.as_i64().unwrap_or(0).max(0) as u64;
            if n > 0 {
                tracing::info!(dead_node = %node, members = n, "reaped members of a dead node");
            }
            removed += n;
        }
        Ok(removed)
    }
}

impl Backend for RedisBus {
    fn is_connected(&self) -> bool {
        self.inner.client.is_connected() && self.inner.subscriber.is_connected()
    }

    fn is_registered(&self) -> bool {
        self.inner.registered.load(Ordering::Acquire)
    }

    async fn publish(
        &self,
        room: &str,
        envelope: String,
        idem: Option<Idem>,
    ) -> Result<Published, BusError> {
        let mut keys = vec![self.key(room, "log")];
        let mut args = vec![
            Value::from(self.inner.history_size as i64),
            Value::from(self.inner.history_ttl_ms as i64),
            Value::from(self.key(room, "ch")),
            Value::from(envelope),
        ];
        if let Some(idem) = idem {
            keys.push(self.key(room, &format!("idem:{}", idem.key)));
            args.push(Value::from(idem.ttl_ms.max(1) as i64));
        }
        let reply = self.eval(&self.inner.publish, keys, args).await?;
        let Value::Array(parts) = reply else {
            return Err(BusError::Protocol("publish: expected an array".into()));
        };
        let (Some(id), Some(duplicate)) = (parts.first(), parts.get(1)) else {
            return Err(BusError::Protocol("publish: expected two parts".into()));
        };
        Ok(Published {
            id: parse_id(id)?,
            duplicate: duplicate.as_i64() == Some(1),
        })
    }

    async fn signal(&self, room: &str, envelope: String) -> Result<(), BusError> {
        self.command(
            "PUBLISH",
            vec![Value::from(self.key(room, "ch")), Value::from(envelope)],
        )
        .await?;
        Ok(())
    }

    async fn control(&self, message: String) -> Result<usize, BusError> {
        let receivers = self
            .command(
                "PUBLISH",
                vec![
                    Value::from(control_channel(&self.inner.prefix)),
                    Value::from(message),
                ],
            )
            .await?;
        Ok(receivers.as_i64().unwrap_or(0).max(0) as usize)
    }

    async fn bar(&self, room: &str, user_key: &str, ttl_ms: u64) -> Result<(), BusError> {
        self.command(
            "SET",
            vec![
                Value::from(self.key(room, &format!("bar:{user_key}"))),
                Value::from("1"),
                Value::from("PX"),
                Value::from(ttl_ms.max(1) as i64),
            ],
        )
        .await?;
        Ok(())
    }

    async fn history(
        &self,
        room: &str,
        range: HistoryRange,
        limit: usize,
    ) -> Result<HistoryPage, BusError> {
        let log = Value::from(self.key(room, "log"));
        let count = [Value::from("COUNT"), Value::from((limit + 1) as i64)];
        let (command, bounds) = match range {
            HistoryRange::Latest => ("XREVRANGE", ["+".to_string(), "-".to_string()]),
            HistoryRange::Before(id) => ("XREVRANGE", [format!("({id}"), "-".to_string()]),
            HistoryRange::After(id) => ("XRANGE", [format!("({id}"), "+".to_string()]),
        };
        let mut args = vec![log];
        args.extend(bounds.into_iter().map(Value::from));
        args.extend(count);
        let mut entries = parse_entries(self.command(command, args).await?)?;
        let more = entries.len() > limit;
        entries.truncate(limit);
        if command == "XREVRANGE" {
            entries.reverse();
        }
        Ok(HistoryPage { entries, more })
    }

    async fn members(&self, room: &str) -> Result<Vec<User>, BusError> {
        let reply = self
            .command("HVALS", vec![Value::from(self.key(room, "members"))])
            .await?;
        Ok(members_of(reply))
    }

    async fn rooms(&self) -> Result<Vec<(String, usize)>, BusError> {
        let nodes = self
            .command(
                "ZRANGE",
                vec![
                    Value::from(self.nodes_key()),
                    Value::from(0),
                    Value::from(-1),
                ],
            )
            .await?;
        let mut names = std::collections::BTreeSet::new();
        for node in strings(nodes) {
            let rooms = self
                .command("SMEMBERS", vec![Value::from(self.node_rooms_key(&node))])
                .await?;
            names.extend(strings(rooms));
        }
        let counts =
            futures_util::future::try_join_all(names.iter().map(|room| self.members(room))).await?;
        Ok(names
            .into_iter()
            .zip(counts)
            .filter(|(_, members)| !members.is_empty())
            .map(|(room, members)| (room, members.len()))
            .collect())
    }

    async fn subscribe(&self, room: &str) -> Result<(), BusError> {
        let sub = self.inner.subscriber.with_options(&self.inner.options);
        sub.subscribe(self.key(room, "ch")).await?;
        Ok(())
    }

    async fn unsubscribe(&self, room: &str) -> Result<(), BusError> {
        // Fails fast like every bus command: a reconnect starts with no subscriptions anyway.
        let sub = self.inner.subscriber.with_options(&self.inner.options);
        sub.unsubscribe(self.key(room, "ch")).await?;
        Ok(())
    }

    async fn resubscribe(&self, rooms: &[Arc<str>]) -> Result<(), BusError> {
        let mut channels: Vec<String> = rooms.iter().map(|r| self.key(r, "ch")).collect();
        channels.push(control_channel(&self.inner.prefix));
        let sub = self.inner.subscriber.with_options(&self.inner.options);
        sub.subscribe(channels).await?;
        Ok(())
    }

    async fn join(
        &self,
        room: &str,
        member: &MemberRef,
        since: Option<MsgId>,
        history: usize,
    ) -> Result<JoinInfo, BusError> {
        let reply = self
            .eval(
                &self.inner.join,
                vec![
                    self.key(room, "members"),
                    self.key(room, "log"),
                    self.node_rooms_key(&member.node),
                    self.key(room, "users"),
                    self.key(room, &format!("bar:{}", super::user_key(&member.user))),
                ],
                vec![
                    Value::from(member.field()),
                    Value::from(member.presence(PresenceEvent::Leave)),
                    Value::from(self.key(room, "ch")),
                    Value::from(member.presence(PresenceEvent::Join)),
                    Value::from(since.map(|s| s.to_string()).unwrap_or_default()),
                    Value::from(self.inner.history_size as i64),
                    Value::from(room),
                    Value::from(member.user.id.as_deref().unwrap_or_default()),
                    Value::from(history.min(self.inner.history_size) as i64),
                ],
            )
            .await?;
        let Value::Array(parts) = reply else {
            return Err(BusError::Protocol("join: expected an array".into()));
        };
        if parts.first().and_then(|v| v.as_i64()) == Some(-2) {
            let left = parts.get(1).and_then(|v| v.as_i64()).unwrap_or(1).max(1);
            return Ok(JoinInfo {
                kicked_ms: Some(left as u64),
                ..JoinInfo::default()
            });
        }
        let mut parts = parts.into_iter();
        let (Some(members), Some(head), Some(recovered), Some(entries)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(BusError::Protocol("join: expected four parts".into()));
        };
        let members = members_of(members);
        let recovered = match recovered.as_i64() {
            Some(-1) | None => None,
            Some(n) => Some(n == 1),
        };
        Ok(JoinInfo {
            members,
            head: parse_id(&head)?,
            recovered,
            replay: parse_entries(entries)?,
            kicked_ms: None,
        })
    }

    async fn leave(
        &self,
        room: &str,
        member: &MemberRef,
        last_local: bool,
    ) -> Result<(), BusError> {
        self.eval(
            &self.inner.leave,
            vec![
                self.key(room, "members"),
                self.node_rooms_key(&member.node),
                self.key(room, "users"),
            ],
            vec![
                Value::from(member.field()),
                Value::from(self.key(room, "ch")),
                Value::from(member.presence(PresenceEvent::Leave)),
                Value::from(room),
                Value::from(if last_local { "1" } else { "0" }),
                Value::from(member.user.id.as_deref().unwrap_or_default()),
            ],
        )
        .await?;
        Ok(())
    }

    async fn catch_up(&self, room: &str, since: MsgId) -> Result<CatchUp, BusError> {
        let reply = self
            .eval(
                &self.inner.catch_up,
                vec![self.key(room, "log")],
                vec![
                    Value::from(since.to_string()),
                    Value::from(self.inner.history_size as i64),
                ],
            )
            .await?;
        let Value::Array(parts) = reply else {
            return Err(BusError::Protocol("catch_up: expected an array".into()));
        };
        let mut parts = parts.into_iter();
        let complete = parts.next().and_then(|v| v.as_i64()) == Some(1);
        let entries = parse_entries(parts.next().unwrap_or(Value::Null))?;
        Ok(CatchUp { complete, entries })
    }

    async fn maintain(&self, memberships: impl FnOnce() -> Vec<(Arc<str>, MemberRef)> + Send) {
        if !self.is_connected() {
            return;
        }
        let now_ms = clock::unix_micros() / 1000;
        self.subscribe_control().await;
        match self.heartbeat(now_ms + self.inner.presence_ttl_ms).await {
            Ok(unregistered) => {
                self.inner.registered.store(true, Ordering::Release);
                let members = if unregistered {
                    memberships()
                } else {
                    Vec::new()
                };
                if !members.is_empty() {
                    tracing::info!(
                        members = members.len(),
                        "node was not registered; restoring presence"
                    );
                    if let Err(e) = self.restore(&members).await {
                        tracing::warn!(error = %e, "presence restore failed");
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "presence heartbeat failed"),
        }
        if let Err(e) = self.reap(now_ms).await {
            tracing::warn!(error = %e, "reaping dead nodes failed");
        }
    }

    async fn shutdown(&self) {
        let unregister: Result<i64, _> = self
            .inner
            .client
            .with_options(&self.inner.options)
            .zrem(self.nodes_key(), self.inner.node.to_string())
            .await;
        if let Err(e) = unregister {
            tracing::warn!(error = %e, "could not deregister this node");
        }
        let _ = self.inner.subscriber.quit().await;
        let _ = self.inner.client.quit().await;
    }
}

/// The control channel every replica subscribes to.
fn control_channel(prefix: &str) -> String {
    format!("{prefix}:ctl")
}

/// The members of a room from its presence values (HVALS), one per user.
fn members_of(values: Value) -> Vec<User> {
    match values {
        Value::Array(values) => super::one_per_user(
            values
                .into_iter()
                .filter_map(|v| v.as_bytes().and_then(member_user)),
        ),
        _ => Vec::new(),
    }
}

/// The strings of an array reply (non-strings skipped).
fn strings(value: Value) -> Vec<String> {
    match value {
        Value::Array(values) => values.into_iter().filter_map(|v| v.as_string()).collect(),
        _ => Vec::new(),
    }
}

/// The user of one presence value: the member's leave envelope (or, as written by
/// earlier versions, the bare user).
fn member_user(value: &[u8]) -> Option<User> {
    match Envelope::decode(value) {
        Ok(Envelope::Presence { user, .. }) => Some(user),
        _ => serde_json::from_slice(value).ok(),
    }
}

fn parse_id(value: &Value) -> Result<MsgId, BusError> {
    value
        .as_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| BusError::Protocol(format!("expected a stream id, got {value:?}")))
}

/// Parses XRANGE output: [[id, [field, value, ...]], ...] -> (id, envelope).
fn parse_entries(value: Value) -> Result<Vec<(MsgId, Bytes)>, BusError> {
    let Value::Array(entries) = value else {
        return Ok(Vec::new());
    };
    let mut out = Vec::with_capacity(entries.len());
    for entry in entries {
        let Value::Array(mut pair) = entry else {
            return Err(BusError::Protocol("stream entry is not an array".into()));
        };
        if pair.len() != 2 {
            return Err(BusError::Protocol("stream entry has no fields".into()));
        }
        let fields = pair.pop().unwrap_or(Value::Null);
        let id = parse_id(&pair[0])?;
        let Value::Array(fields) = fields else {
            return Err(BusError::Protocol("stream fields are not an array".into()));
        };
        let Some(payload) = fields.into_iter().nth(1) else {
            return Err(BusError::Protocol("stream entry has no envelope".into()));
        };
        let payload = match payload {
            Value::String(s) => s.into_inner(),
            Value::Bytes(b) => b,
            other => return Err(BusError::Protocol(format!("unexpected envelope {other:?}"))),
        };
        out.push((id, payload));
    }
    Ok(out)
}
