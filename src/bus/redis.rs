//! The Redis bus (fred): one command client (auto-pipelined) and one subscriber client.
//!
//! Keys put the room in a hash tag so a room's channel, log and members share one slot:
//! `{prefix}:{room}:ch` (PUBLISH channel), `{prefix}:{room}:log` (bounded stream, the
//! history), `{prefix}:{room}:members` (presence hash `node|conn` -> user JSON).
//! Per node: `{prefix}:nodes` (sorted set of node -> liveness deadline) and
//! `{prefix}:node:{node}:rooms` (rooms where the node has members, for reaping).
//! Each multi-step operation is one Lua script, so it is atomic and one round trip:
//! publishing is XADD + PEXPIRE + PUBLISH with the assigned id.

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

use super::{BusError, BusEvent, Incoming, JoinInfo, MemberRef};
use crate::config::Config;
use crate::protocol::{MsgId, User};

/// XADD + PEXPIRE + PUBLISH; the published payload is the envelope with `"id"` spliced in.
const PUBLISH_LUA: &str = r#"
local id = redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[1], '*', 'e', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PUBLISH', ARGV[3], '{"id":"' .. id .. '",' .. string.sub(ARGV[4], 2))
return id
"#;

/// Presence add + announce, then members, log head and (with `since`) the replay.
/// Returns {members, head, recovered (-1 = no since, 0, 1), entries}.
const JOIN_LUA: &str = r#"
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('SADD', KEYS[3], ARGV[7])
redis.call('PUBLISH', ARGV[3], ARGV[4])
local members = redis.call('HVALS', KEYS[1])
local head, maxdel = '0-0', '0-0'
local exists = redis.call('EXISTS', KEYS[2]) == 1
if exists then
  local info = redis.call('XINFO', 'STREAM', KEYS[2])
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then head = info[i + 1]
    elseif info[i] == 'max-deleted-entry-id' then maxdel = info[i + 1] end
  end
end
if ARGV[5] == '' then return {members, head, -1, {}} end
local since = ARGV[5]
local recovered = 0
if since == maxdel then recovered = 1
elseif exists and #redis.call('XRANGE', KEYS[2], since, since) == 1 then recovered = 1 end
local entries = {}
if exists then entries = redis.call('XRANGE', KEYS[2], '(' .. since, '+', 'COUNT', ARGV[6]) end
return {members, head, recovered, entries}
"#;

/// Messages after `since`, or {0} when the history no longer reaches back that far.
const CATCH_UP_LUA: &str = r#"
local since = ARGV[1]
if redis.call('EXISTS', KEYS[1]) == 0 then return {0, {}} end
local maxdel = '0-0'
local info = redis.call('XINFO', 'STREAM', KEYS[1])
for i = 1, #info, 2 do
  if info[i] == 'max-deleted-entry-id' then maxdel = info[i + 1] end
end
local ok = 0
if since == maxdel or #redis.call('XRANGE', KEYS[1], since, since) == 1 then ok = 1 end
return {ok, redis.call('XRANGE', KEYS[1], '(' .. since, '+', 'COUNT', ARGV[2])}
"#;

/// Presence remove + announce.
const LEAVE_LUA: &str = r#"
local removed = redis.call('HDEL', KEYS[1], ARGV[1])
if ARGV[5] == '1' then redis.call('SREM', KEYS[2], ARGV[4]) end
if removed == 1 then redis.call('PUBLISH', ARGV[2], ARGV[3]) end
return removed
"#;

/// Removes a dead node (once: ZREM decides which reaper wins) and every member it had,
/// announcing each as left. Returns how many members were removed.
const REAP_LUA: &str = r#"
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
local setkey = ARGV[2] .. ':node:' .. ARGV[1] .. ':rooms'
local pfx = ARGV[1] .. '|'
local n = 0
for _, room in ipairs(redis.call('SMEMBERS', setkey)) do
  local mkey = ARGV[2] .. ':{' .. room .. '}:members'
  local ch = ARGV[2] .. ':{' .. room .. '}:ch'
  local all = redis.call('HGETALL', mkey)
  for i = 1, #all, 2 do
    if string.sub(all[i], 1, #pfx) == pfx then
      redis.call('HDEL', mkey, all[i])
      local conn = string.sub(all[i], #pfx + 1)
      redis.call('PUBLISH', ch, '{"k":"p","e":"leave","u":' .. all[i + 1] .. ',"n":"' .. ARGV[1] .. '","c":"' .. conn .. '"}')
      n = n + 1
    end
  end
end
redis.call('DEL', setkey)
return n
"#;

/// How long a bus command may take before the client is told `unavailable`.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// Messages fred buffers for the receive loop before it counts as lagging.
const BROADCAST_CAPACITY: usize = 1 << 16;

#[derive(Clone)]
pub struct RedisBus {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    subscriber: SubscriberClient,
    prefix: String,
    node: Arc<str>,
    history_size: usize,
    history_ttl_ms: u64,
    options: Options,
    publish: Script,
    join: Script,
    catch_up: Script,
    leave: Script,
    reap: Script,
}

/// The receiving half: fred's broadcast of channel messages plus reconnect events.
pub struct RedisReceiver {
    messages: broadcast::Receiver<Message>,
    reconnects: broadcast::Receiver<fred::types::config::Server>,
    channel_prefix: String,
    /// The first connection is not a reconnect.
    connected_before: bool,
}

impl RedisReceiver {
    pub async fn next(&mut self) -> BusEvent {
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
                        let Some(room) = msg
                            .channel
                            .strip_prefix(self.channel_prefix.as_str())
                            .and_then(|r| r.strip_suffix("}:ch"))
                        else {
                            continue;
                        };
                        let payload = match msg.value {
                            Value::String(s) => s.into_inner(),
                            Value::Bytes(b) => b,
                            _ => continue,
                        };
                        return BusEvent::Message(Incoming { room: Arc::from(room), payload });
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
    pub fn connect(
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

    pub fn is_connected(&self) -> bool {
        self.inner.client.is_connected() && self.inner.subscriber.is_connected()
    }

    /// The command client, for operations outside the bus proper (tests, tools).
    pub fn client(&self) -> &Client {
        &self.inner.client
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

    pub async fn publish(&self, room: &str, envelope: String) -> Result<MsgId, BusError> {
        let reply = self
            .eval(
                &self.inner.publish,
                vec![self.key(room, "log")],
                vec![
                    Value::from(self.inner.history_size as i64),
                    Value::from(self.inner.history_ttl_ms as i64),
                    Value::from(self.key(room, "ch")),
                    Value::from(envelope),
                ],
            )
            .await?;
        parse_id(&reply)
    }

    pub async fn subscribe(&self, room: &str) -> Result<(), BusError> {
        let sub = self.inner.subscriber.with_options(&self.inner.options);
        sub.subscribe(self.key(room, "ch")).await?;
        Ok(())
    }

    pub async fn unsubscribe(&self, room: &str) -> Result<(), BusError> {
        // Fails fast like every bus command: a reconnect starts with no subscriptions anyway.
        let sub = self.inner.subscriber.with_options(&self.inner.options);
        sub.unsubscribe(self.key(room, "ch")).await?;
        Ok(())
    }

    pub async fn join(
        &self,
        room: &str,
        member: &MemberRef,
        since: Option<MsgId>,
    ) -> Result<JoinInfo, BusError> {
        let user_json = serde_json::to_string(&member.user).unwrap_or_default();
        let reply = self
            .eval(
                &self.inner.join,
                vec![
                    self.key(room, "members"),
                    self.key(room, "log"),
                    self.node_rooms_key(&member.node),
                ],
                vec![
                    Value::from(member.field()),
                    Value::from(user_json),
                    Value::from(self.key(room, "ch")),
                    Value::from(member.presence(super::PresenceEvent::Join)),
                    Value::from(since.map(|s| s.to_string()).unwrap_or_default()),
                    Value::from(self.inner.history_size as i64),
                    Value::from(room),
                ],
            )
            .await?;
        let Value::Array(parts) = reply else {
            return Err(BusError::Protocol("join: expected an array".into()));
        };
        let mut parts = parts.into_iter();
        let (Some(members), Some(head), Some(recovered), Some(entries)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(BusError::Protocol("join: expected four parts".into()));
        };
        let members = match members {
            Value::Array(values) => values
                .into_iter()
                .filter_map(|v| {
                    v.as_bytes()
                        .and_then(|b| serde_json::from_slice::<User>(b).ok())
                })
                .collect(),
            _ => Vec::new(),
        };
        let recovered = match recovered.as_i64() {
            Some(-1) | None => None,
            Some(n) => Some(n == 1),
        };
        Ok(JoinInfo {
            members,
            head: parse_id(&head)?,
            recovered,
            replay: parse_entries(entries)?,
        })
    }

    pub async fn leave(
        &self,
        room: &str,
        member: &MemberRef,
        last_local: bool,
    ) -> Result<(), BusError> {
        self.eval(
            &self.inner.leave,
            vec![self.key(room, "members"), self.node_rooms_key(&member.node)],
            vec![
                Value::from(member.field()),
                Value::from(self.key(room, "ch")),
                Value::from(member.presence(super::PresenceEvent::Leave)),
                Value::from(room),
                Value::from(if last_local { "1" } else { "0" }),
            ],
        )
        .await?;
        Ok(())
    }

    /// Messages after `since` still in the room's log, and whether that is everything
    /// after `since` (false when the log was trimmed past it or lost).
    pub async fn catch_up(
        &self,
        room: &str,
        since: MsgId,
    ) -> Result<(bool, Vec<(MsgId, Bytes)>), BusError> {
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
        Ok((complete, entries))
    }

    /// Refreshes this node's liveness deadline. Returns true if the node was not
    /// registered (first beat, reaped by a peer, or Redis lost its data), in which case
    /// the caller re-records its members.
    pub async fn heartbeat(&self, deadline_ms: u64) -> Result<bool, BusError> {
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
    pub async fn restore(&self, members: &[(Arc<str>, MemberRef)]) -> Result<(), BusError> {
        let pipeline = self.inner.client.pipeline();
        for (room, member) in members {
            let user_json = serde_json::to_string(&member.user).unwrap_or_default();
            let _: () = pipeline
                .hset(self.key(room, "members"), (member.field(), user_json))
                .await?;
            let _: () = pipeline
                .sadd(self.node_rooms_key(&member.node), room.to_string())
                .await?;
        }
        let _: Vec<Value> = pipeline.all().await?;
        Ok(())
    }

    /// Reaps nodes whose deadline passed; returns how many members were removed.
    pub async fn reap(&self, now_ms: u64) -> Result<u64, BusError> {
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

    /// Unregisters this node (end of a drain).
    pub async fn deregister(&self) -> Result<(), BusError> {
        let _: i64 = self
            .inner
            .client
            .with_options(&self.inner.options)
            .zrem(self.nodes_key(), self.inner.node.to_string())
            .await?;
        Ok(())
    }

    /// Re-subscribes every given room (after a reconnect).
    pub async fn resubscribe(&self, rooms: &[Arc<str>]) -> Result<(), BusError> {
        if rooms.is_empty() {
            return Ok(());
        }
        let channels: Vec<String> = rooms.iter().map(|r| self.key(r, "ch")).collect();
        let sub = self.inner.subscriber.with_options(&self.inner.options);
        sub.subscribe(channels).await?;
        Ok(())
    }

    pub async fn quit(&self) {
        let _ = self.inner.subscriber.quit().await;
        let _ = self.inner.client.quit().await;
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
