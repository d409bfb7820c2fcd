//! The Redis bus (fred): one command client (auto-pipelined) and one subscriber client,
//! against one server (`redis.mode = "standalone"`), a master found through Sentinel
//! (`"sentinel"`) or a Redis Cluster (`"cluster"`).
//!
//! Keys put the room in a hash tag so a room's channel, log and members share one slot:
//! `{prefix}:{room}:ch` (the room's channel), `{prefix}:{room}:log` (bounded stream, the
//! history), `{prefix}:{room}:members` (presence hash `node|conn` -> leave envelope),
//! `{prefix}:{room}:users` (jwt mode: user id -> connections),
//! `{prefix}:{room}:idem:{key}` (idempotency key -> first id, expiring) and
//! `{prefix}:{room}:bar:{user}` (a kicked user's bar, expiring). Every script touches the
//! keys of one room only, so on a cluster it runs on the shard that owns the room.
//! Per node: `{prefix}:nodes` (sorted set of node -> liveness deadline; -1 while being
//! reaped) and `{prefix}:node:{node}:rooms` (rooms where the node has members, for
//! reaping), each written by its own command, never in a script with room keys.
//! `{prefix}:ctl` is the control channel every replica subscribes to (disconnect, kick).
//!
//! On a cluster, channels are shard channels: publishing is SPUBLISH (inside the room's
//! script) and a replica SSUBSCRIBEs a room's channel on the shard that owns the slot;
//! nothing uses classic PUBLISH, which a cluster broadcasts to every node. A watcher
//! reads the slot map every second; when an owner changes (failover, resharding) the
//! rooms are resubscribed on their new owners and caught up from their logs, exactly as
//! after a reconnect.
//!
//! Each multi-step operation is one Lua script (`lua/*.lua`), so it is atomic and one
//! round trip: publishing is XADD + PEXPIRE + PUBLISH of `"<id> <envelope>"`. A member's
//! presence value is its leave envelope, so a reaper announces the leave verbatim. With
//! `redis.replica_acks`, a publish is acknowledged only once that many replicas have it
//! (WAIT), so a failover cannot lose an acknowledged message.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use fred::clients::SubscriberClient;
use fred::interfaces::ClusterInterface as _;
use fred::prelude::*;
use fred::types::config::{Options, ServerConfig};
use fred::types::scripts::Script;
use fred::types::{ClusterHash, CustomCommand, Message};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, watch};

use super::envelope::split_channel_frame;
use super::{
    Backend, BusError, BusEvent, CatchUp, HistoryPage, HistoryRange, Idem, Incoming, JoinInfo,
    MemberRef, MembersPage, PresenceEvent, Published,
};
use crate::clock;
use crate::config::{Config, RedisMode};
use crate::protocol::{MsgId, User};

const PUBLISH_LUA: &str = include_str!("lua/publish.lua");
const JOIN_LUA: &str = include_str!("lua/join.lua");
const CATCH_UP_LUA: &str = include_str!("lua/catch_up.lua");
const LEAVE_LUA: &str = include_str!("lua/leave.lua");
const REAP_ROOM_LUA: &str = include_str!("lua/reap_room.lua");
const RESTORE_LUA: &str = include_str!("lua/restore.lua");
const NODES_LUA: &str = include_str!("lua/nodes.lua");
const MEMBERS_LUA: &str = include_str!("lua/members.lua");

/// How long a bus command may take before the client is told `unavailable`.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// fred's event broadcasts (reconnects, errors, ...) of the command client, which no
/// one reads but which fred allocates up front; the subscriber's channel messages get
/// `redis.receive_buffer`.
const COMMAND_CLIENT_EVENTS: usize = 16;
/// How often the stall prober PINGs Redis while it is not answering.
const PROBE_INTERVAL: Duration = Duration::from_millis(250);
/// How often the topology watcher reads the slot map and the replica counts.
const TOPOLOGY_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub(crate) struct RedisBus {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    subscriber: SubscriberClient,
    /// A Redis Cluster: shard channels (SPUBLISH/SSUBSCRIBE) and the slot watcher.
    cluster: bool,
    prefix: String,
    node: Arc<str>,
    history_size: usize,
    history_ttl_ms: u64,
    presence_ttl_ms: u64,
    /// `redis.replica_acks` and its timeout: WAIT after each publish.
    replica_acks: u32,
    replica_ack_timeout_ms: u64,
    /// Set once this node's liveness entry is in Redis: only then may members join, or
    /// a crash right after start would leave members no reaper can find.
    registered: AtomicBool,
    /// Set once the control channel is subscribed.
    control_subscribed: AtomicBool,
    /// Set by [`Backend::shutdown`]: the clients' tasks end on purpose.
    closing: AtomicBool,
    /// Tells the receive loop that rooms must be resubscribed and caught up (slots
    /// moved, or the subscriber was started again).
    topology: watch::Sender<u64>,
    /// Replicas connected to each master (`host:port`; `""` off a cluster), read by the
    /// topology watcher when `redis.replica_acks` is set: a publish waits for at most
    /// that many, so a master left without replicas (after a failover) still accepts.
    connected_replicas: std::sync::Mutex<std::collections::HashMap<String, u32>>,
    /// With `redis.replica_acks`: one [`AckGate`] per master, so publishes share WAITs.
    ack_gates: std::sync::Mutex<std::collections::HashMap<String, Arc<AckGate>>>,
    /// Restore presence on the next heartbeat too: the heartbeat found this node being
    /// reaped, and the reaper may still remove members restored before it finished.
    restore_again: AtomicBool,
    /// Whether Redis answers commands (see [`Answering`]).
    answering: Answering,
    options: Options,
    publish: Script,
    join: Script,
    catch_up: Script,
    leave: Script,
    reap_room: Script,
    restore: Script,
    members: Script,
    nodes: Script,
}

/// Whether Redis answers: a connection can stay open while Redis answers nothing (a
/// frozen or overloaded server, a network path that drops packets), and each command
/// would then wait its whole [`COMMAND_TIMEOUT`]. A command that timed out with nothing
/// answered since, and no answer for a [`COMMAND_TIMEOUT`], makes the bus *stalled*:
/// readiness is false (`bus_stalled`) and commands fail at once (`unavailable`) instead
/// of queueing behind the silence, while a prober PINGs every [`PROBE_INTERVAL`]; the
/// first answer ends it. On a cluster one shard's silence is not a stall while others
/// answer (its commands time out one by one, as before).
struct Answering {
    start: std::time::Instant,
    /// Milliseconds since `start` of the last answer, and of the last timeout (0: none).
    last_answer_ms: AtomicU64,
    last_timeout_ms: AtomicU64,
}

impl Answering {
    fn new() -> Self {
        Answering {
            start: std::time::Instant::now(),
            last_answer_ms: AtomicU64::new(0),
            last_timeout_ms: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Records what a command's outcome says about Redis answering.
    fn note<T>(&self, result: &Result<T, fred::error::Error>) {
        match result {
            Ok(_) => self.last_answer_ms.store(self.now_ms(), Ordering::Release),
            // An error reply is an answer too.
            Err(e) if e.kind() == &fred::error::ErrorKind::Timeout => {
                self.last_timeout_ms.store(self.now_ms(), Ordering::Release)
            }
            Err(e) if is_reply_error(e) => {
                self.last_answer_ms.store(self.now_ms(), Ordering::Release)
            }
            Err(_) => {}
        }
    }

    /// A command timed out, nothing answered since, and nothing for a whole
    /// [`COMMAND_TIMEOUT`].
    fn stalled(&self) -> bool {
        let answer = self.last_answer_ms.load(Ordering::Acquire);
        let timeout = self.last_timeout_ms.load(Ordering::Acquire);
        timeout > answer
            && self.now_ms().saturating_sub(answer) >= COMMAND_TIMEOUT.as_millis() as u64
    }
}

/// Whether a fred error is Redis's own error reply (so Redis answered), not a local
/// failure (timeout, closed connection, ...).
fn is_reply_error(e: &fred::error::Error) -> bool {
    use fred::error::ErrorKind;
    matches!(
        e.kind(),
        ErrorKind::Unknown
            | ErrorKind::InvalidCommand
            | ErrorKind::InvalidArgument
            | ErrorKind::NotFound
            | ErrorKind::Auth
            | ErrorKind::Cluster
            | ErrorKind::Parse
    )
}

/// PINGs Redis every [`PROBE_INTERVAL`] while the bus is stalled (commands fail at once
/// then, so only this finds out that Redis answers again). Ends with the bus.
async fn probe_while_stalled(inner: std::sync::Weak<Inner>) {
    loop {
        tokio::time::sleep(PROBE_INTERVAL).await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        if inner.closing.load(Ordering::Acquire) {
            return;
        }
        if !inner.answering.stalled() || !inner.client.is_connected() {
            continue;
        }
        let client = inner.client.with_options(&inner.options);
        let ping = CustomCommand::new_static("PING", ClusterHash::Random, false);
        let result = client.custom::<Value, Value>(ping, Vec::new()).await;
        inner.answering.note(&result);
    }
}

/// Shared WAITs of one master (see [`RedisBus::wait_for_replicas`]): publishes take
/// a ticket once their reply has arrived; whoever holds `state` sends one WAIT covering
/// every ticket taken so far, and the publishes it covered take its outcome.
#[derive(Default)]
struct AckGate {
    /// Tickets taken.
    issued: AtomicU64,
    state: tokio::sync::Mutex<AckState>,
}

/// The last WAIT of an [`AckGate`]: the tickets it covered and its outcome.
struct AckState {
    covered: u64,
    outcome: Result<(), BusError>,
}

impl Default for AckState {
    fn default() -> Self {
        AckState {
            covered: 0,
            outcome: Ok(()),
        }
    }
}

/// The receiving half: fred's broadcast of channel messages plus reconnect events, and
/// (on a cluster) slot map changes from the watcher.
pub(crate) struct RedisReceiver {
    messages: broadcast::Receiver<Message>,
    reconnects: broadcast::Receiver<fred::types::config::Server>,
    /// Recovery requests: slot owners changed (the watcher) or the subscriber was started
    /// again (its supervisor); `None` once the bus is gone.
    topology: Option<watch::Receiver<u64>>,
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
                            // A cluster reconnects node by node: one recovery for all.
                            while self.reconnects.try_recv().is_ok() {}
                            return BusEvent::Reconnected;
                        }
                    }
                    Err(RecvError::Closed) => return BusEvent::Closed,
                },
                changed = changed(&mut self.topology), if self.topology.is_some() => {
                    if !changed {
                        // The watcher ended (bus shut down); keep serving messages.
                        self.topology = None;
                        continue;
                    }
                    return BusEvent::Moved;
                }
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

/// Waits for the next change; false when the watcher is gone.
async fn changed(topology: &mut Option<watch::Receiver<u64>>) -> bool {
    match topology {
        Some(rx) => rx.changed().await.is_ok(),
        None => false,
    }
}

/// `host:port` -> fred's server (IPv6 in brackets).
fn server(entry: &str) -> Result<fred::types::config::Server, BusError> {
    let (host, port) = entry
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
        .ok_or_else(|| BusError::Unavailable(format!("{entry:?} is not host:port")))?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    Ok(fred::types::config::Server::new(host, port))
}

/// Every `host:port` of a list.
fn servers(entries: &[String]) -> Result<Vec<fred::types::config::Server>, BusError> {
    entries.iter().map(|e| server(e)).collect()
}

/// fred's configuration for `redis.*`: the mode's servers, credentials and TLS.
fn fred_config(config: &Config) -> Result<fred::prelude::Config, BusError> {
    let r = &config.redis;
    let mut out = match r.mode {
        RedisMode::Standalone => {
            let url = r.url.as_deref().unwrap_or("redis://127.0.0.1:6379");
            fred::prelude::Config::from_url(url)?
        }
        RedisMode::Cluster => fred::prelude::Config {
            server: ServerConfig::Clustered {
                hosts: servers(&r.nodes)?,
                policy: Default::default(),
            },
            ..Default::default()
        },
        RedisMode::Sentinel => fred::prelude::Config {
            server: ServerConfig::Sentinel {
                hosts: servers(&r.sentinels)?,
                service_name: r.sentinel_master.clone().unwrap_or_default(),
                username: None,
                password: r.sentinel_password.clone(),
            },
            ..Default::default()
        },
    };
    if let Some(username) = &r.username {
        out.username = Some(username.clone());
    }
    if let Some(password) = &r.password {
        out.password = Some(password.clone());
    }
    if r.uses_tls() {
        let tls =
            crate::tls::redis_config(r.tls_ca_file.as_deref()).map_err(BusError::Unavailable)?;
        out.tls = Some(fred::types::config::TlsConnector::from(tls).into());
    }
    // Keep retrying the first connection too: the pod stays unready until Redis is up.
    out.fail_fast = false;
    Ok(out)
}

impl RedisBus {
    /// Creates the clients and starts connecting in the background (reconnecting forever
    /// with backoff); readiness reports when the bus is up.
    pub(crate) fn connect(
        config: &Config,
        node: Arc<str>,
    ) -> Result<(Self, RedisReceiver), BusError> {
        let redis_config = fred_config(config)?;
        let cluster = config.redis.mode == RedisMode::Cluster;
        let mut builder = Builder::from_config(redis_config);
        builder
            .with_performance_config(|p| {
                p.broadcast_channel_capacity = COMMAND_CLIENT_EVENTS;
                p.default_command_timeout = Duration::from_secs(5);
            })
            .with_connection_config(|c| {
                c.connection_timeout = Duration::from_secs(2);
                c.internal_command_timeout = Duration::from_secs(2);
            })
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2));
        let client = builder.build()?;
        // Every broadcast slot is allocated when the client is built (at 65,536 the two
        // clients' channels took some 80 MB before the first connection).
        let receive_buffer = config.redis.receive_buffer;
        builder.with_performance_config(|p| p.broadcast_channel_capacity = receive_buffer);
        let subscriber = builder.build_subscriber_client()?;
        let watched = cluster || config.redis.replica_acks > 0;
        let (topology_tx, topology_rx) = watch::channel(0u64);
        let receiver = RedisReceiver {
            messages: subscriber.message_rx(),
            reconnects: subscriber.reconnect_rx(),
            topology: Some(topology_rx),
            channel_prefix: format!("{}:{{", config.redis.prefix),
            control_channel: control_channel(&config.redis.prefix),
            connected_before: false,
        };
        let client_task = client.connect();
        let subscriber_task = subscriber.connect();
        let options = Options {
            fail_fast: true,
            timeout: Some(COMMAND_TIMEOUT),
            // One write, no retry on a new connection (a publish must not run twice).
            // On a cluster a command may also meet ASK while its slot migrates: fred
            // spends an attempt on the redirection, and with none left it ends the
            // client's router for good, so a cluster allows the redirected write.
            max_attempts: Some(if cluster { 3 } else { 1 }),
            ..Options::default()
        };
        let inner = Arc::new(Inner {
            client,
            subscriber,
            cluster,
            prefix: config.redis.prefix.clone(),
            node,
            history_size: config.history.size,
            history_ttl_ms: config.history.ttl.as_millis() as u64,
            presence_ttl_ms: config.presence.ttl.as_millis() as u64,
            replica_acks: config.redis.replica_acks,
            replica_ack_timeout_ms: config.redis.replica_ack_timeout.as_millis().max(1) as u64,
            registered: AtomicBool::new(false),
            control_subscribed: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            topology: topology_tx,
            restore_again: AtomicBool::new(false),
            connected_replicas: Default::default(),
            ack_gates: Default::default(),
            answering: Answering::new(),
            options,
            publish: Script::from_lua(PUBLISH_LUA),
            join: Script::from_lua(JOIN_LUA),
            catch_up: Script::from_lua(CATCH_UP_LUA),
            leave: Script::from_lua(LEAVE_LUA),
            reap_room: Script::from_lua(REAP_ROOM_LUA),
            restore: Script::from_lua(RESTORE_LUA),
            members: Script::from_lua(MEMBERS_LUA),
            nodes: Script::from_lua(NODES_LUA),
        });
        if watched {
            tokio::spawn(watch_topology(Arc::downgrade(&inner)));
        }
        tokio::spawn(probe_while_stalled(Arc::downgrade(&inner)));
        tokio::spawn(supervise(
            Arc::downgrade(&inner),
            Half::Commands,
            client_task,
        ));
        tokio::spawn(supervise(
            Arc::downgrade(&inner),
            Half::Subscriber,
            subscriber_task,
        ));
        Ok((RedisBus { inner }, receiver))
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

    /// The command that publishes to a channel: SPUBLISH on a cluster (the channel's
    /// shard only), PUBLISH otherwise.
    fn publish_command(&self) -> &'static str {
        if self.inner.cluster {
            "SPUBLISH"
        } else {
            "PUBLISH"
        }
    }

    /// Subscribes channels: SSUBSCRIBE on a cluster, one slot at a time (routed to the
    /// slot's owner), SUBSCRIBE otherwise.
    async fn subscribe_channels(&self, channels: Vec<String>) -> Result<(), BusError> {
        let sub = self.inner.subscriber.with_options(&self.inner.options);
        if !self.inner.cluster {
            sub.subscribe(channels).await?;
            return Ok(());
        }
        let mut by_slot: std::collections::BTreeMap<u16, Vec<String>> = Default::default();
        for channel in channels {
            by_slot.entry(slot(&channel)).or_default().push(channel);
        }
        for (_, channels) in by_slot {
            sub.ssubscribe(channels).await?;
        }
        Ok(())
    }

    /// Subscribes the control channel once (the subscriber client keeps it across
    /// reconnects, and [`Backend::resubscribe`] repeats it).
    async fn subscribe_control(&self) {
        if self.inner.control_subscribed.load(Ordering::Acquire) {
            return;
        }
        match self
            .subscribe_channels(vec![control_channel(&self.inner.prefix)])
            .await
        {
            Ok(()) => self.inner.control_subscribed.store(true, Ordering::Release),
            Err(e) => tracing::warn!(error = %e, "subscribing the control channel failed"),
        }
    }

    /// Runs one command on the node owning `key`'s slot (with the bus's timeout) and
    /// returns its raw reply.
    async fn command(
        &self,
        name: &'static str,
        key: &str,
        args: Vec<Value>,
    ) -> Result<Value, BusError> {
        self.fail_if_stalled()?;
        let client = self.inner.client.with_options(&self.inner.options);
        let command = CustomCommand::new_static(name, ClusterHash::Custom(slot(key)), false);
        let result = client.custom::<Value, Value>(command, args).await;
        self.inner.answering.note(&result);
        Ok(result?)
    }

    /// `unavailable` at once while Redis does not answer (see [`Answering`]).
    fn fail_if_stalled(&self) -> Result<(), BusError> {
        if self.inner.answering.stalled() {
            return Err(BusError::Unavailable(
                "Redis is not answering (its last command timed out)".into(),
            ));
        }
        Ok(())
    }

    /// Runs a script by SHA on the node owning its first key's slot, loading it first if
    /// Redis does not know it (e.g. after a restart or a failover). Fails fast when
    /// Redis is down.
    async fn eval(
        &self,
        script: &Script,
        keys: Vec<String>,
        args: Vec<Value>,
    ) -> Result<Value, BusError> {
        let client = self.inner.client.with_options(&self.inner.options);
        let hash = ClusterHash::Custom(keys.first().map(|k| slot(k)).unwrap_or(0));
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
        let evalsha = CustomCommand::new_static("EVALSHA", hash.clone(), false);
        self.fail_if_stalled()?;
        let result = client.custom::<Value, Value>(evalsha, with_sha).await;
        self.inner.answering.note(&result);
        match result {
            Err(e) if e.details().contains("NOSCRIPT") => {
                // Redis lost its script cache (restart, failover): EVAL sends the body
                // and caches it.
                let mut with_body = vec![Value::from(script.lua().cloned().unwrap_or_default())];
                with_body.extend(tail());
                let eval = CustomCommand::new_static("EVAL", hash, false);
                let result = client.custom::<Value, Value>(eval, with_body).await;
                self.inner.answering.note(&result);
                Ok(result?)
            }
            other => Ok(other?),
        }
    }

    /// With `redis.replica_acks`: waits until that many replicas of the node owning
    /// `key` have every write so far; fails (so the sender retries, with its `idem` key
    /// if it has one) when they do not confirm in time.
    ///
    /// WAIT blocks the connection it is sent on (Redis answers nothing else on it until
    /// the WAIT ends), and all commands to a node share one pipelined connection. One
    /// WAIT per publish would queue every command to that node behind the WAITs: with a
    /// replica gone (a new master after a failover starts with none), each one lasts
    /// `redis.replica_ack_timeout` and the node stops answering anything. So publishes
    /// to one master share WAITs ([`AckGate`]): a WAIT sent after a publish's reply
    /// covers that publish, and at most one is in flight per master.
    async fn wait_for_replicas(&self, key: &str) -> Result<(), BusError> {
        if self.inner.replica_acks == 0 {
            return Ok(());
        }
        let master = self.master_of(key);
        let known = self
            .inner
            .connected_replicas
            .lock()
            .ok()
            .and_then(|m| m.get(&master).copied());
        let connected = match known {
            Some(n) => Some(n),
            // A master not counted yet (just promoted, or before the watcher's first
            // round): ask it rather than WAIT for replicas it may not have.
            None => self.replicas_of(key).await.inspect(|&n| {
                if let Ok(mut map) = self.inner.connected_replicas.lock() {
                    map.insert(master.clone(), n);
                }
            }),
        };
        let want = connected.map_or(self.inner.replica_acks, |n| n.min(self.inner.replica_acks));
        if want == 0 {
            return Ok(());
        }
        let gate = {
            let Ok(mut gates) = self.inner.ack_gates.lock() else {
                return Err(BusError::Unavailable("replica ack state poisoned".into()));
            };
            gates.entry(master.clone()).or_default().clone()
        };
        // This publish's reply has arrived: any WAIT sent from now on covers it.
        let ticket = gate.issued.fetch_add(1, Ordering::AcqRel) + 1;
        let mut state = gate.state.lock().await;
        if state.covered >= ticket {
            return state.outcome.clone();
        }
        let covered = gate.issued.load(Ordering::Acquire);
        let outcome = self.wait_now(key, &master, want).await;
        state.covered = covered;
        state.outcome = outcome.clone();
        outcome
    }

    /// The `host:port` of the master owning `key` (`""` off a cluster).
    fn master_of(&self, key: &str) -> String {
        if !self.inner.cluster {
            return String::new();
        }
        self.inner
            .client
            .cached_cluster_state()
            .and_then(|state| {
                state
                    .get_server(slot(key))
                    .map(|s| format!("{}:{}", s.host, s.port))
            })
            .unwrap_or_default()
    }

    /// One WAIT for `want` replicas on the node owning `key` (see
    /// [`RedisBus::wait_for_replicas`]).
    async fn wait_now(&self, key: &str, master: &str, want: u32) -> Result<(), BusError> {
        let acked = self
            .command(
                "WAIT",
                key,
                vec![
                    Value::from(i64::from(want)),
                    Value::from(self.inner.replica_ack_timeout_ms as i64),
                ],
            )
            .await?;
        let acked = acked.as_i64().unwrap_or(0);
        if acked >= i64::from(want) {
            return Ok(());
        }
        // The count may be stale: after a failover the new master's replicas were never
        // counted (it starts with none), or the master lost one. Ask the node that
        // answered WAIT how many it has now: at most those are waited for.
        if let Some(live) = self.replicas_of(key).await {
            if let Ok(mut map) = self.inner.connected_replicas.lock() {
                map.insert(master.to_string(), live);
            }
            let want_now = live.min(self.inner.replica_acks);
            if acked >= i64::from(want_now) {
                return Ok(());
            }
        }
        Err(BusError::Unavailable(format!(
            "{acked} of {want} replicas confirmed the write (redis.replica_acks)"
        )))
    }

    /// How many replicas the master owning `key` has connected now (`ROLE`), if it says.
    async fn replicas_of(&self, key: &str) -> Option<u32> {
        let role = self.command("ROLE", key, Vec::new()).await.ok()?;
        let Value::Array(parts) = role else {
            return None;
        };
        match (parts.first().and_then(Value::as_str), parts.get(2)) {
            (Some(kind), Some(Value::Array(replicas))) if kind == "master" => {
                u32::try_from(replicas.len()).ok()
            }
            _ => None,
        }
    }

    /// SADD or SREM of `room` in `node`'s room set (its own slot, its own command).
    async fn node_rooms(&self, op: &'static str, node: &str, room: &str) -> Result<(), BusError> {
        let set = self.node_rooms_key(node);
        self.command(op, &set, vec![Value::from(set.as_str()), Value::from(room)])
            .await?;
        Ok(())
    }

    /// One operation of `lua/nodes.lua` on the node set.
    async fn nodes_op(&self, op: &'static str, node: &str, ms: i64) -> Result<bool, BusError> {
        let reply = self
            .eval(
                &self.inner.nodes,
                vec![self.nodes_key()],
                vec![Value::from(op), Value::from(node), Value::from(ms)],
            )
            .await?;
        Ok(reply.as_i64() == Some(1))
    }

    /// Records members again after a heartbeat found this node unregistered (or being
    /// reaped); idempotent per member. Returns how many were recorded again.
    async fn restore(&self, members: &[(Arc<str>, MemberRef)]) -> Result<usize, BusError> {
        let mut rooms: Vec<&str> = members.iter().map(|(r, _)| &**r).collect();
        rooms.sort_unstable();
        rooms.dedup();
        if !rooms.is_empty() {
            self.command(
                "SADD",
                &self.node_rooms_key(&self.inner.node),
                std::iter::once(Value::from(self.node_rooms_key(&self.inner.node)))
                    .chain(rooms.iter().map(|r| Value::from(*r)))
                    .collect(),
            )
            .await?;
        }
        let restored = futures_util::future::try_join_all(members.iter().map(|(room, member)| {
            self.eval(
                &self.inner.restore,
                vec![
                    self.key(room, "members"),
                    self.key(room, "users"),
                    self.key(room, "roster"),
                    self.key(room, "names"),
                ],
                vec![
                    Value::from(member.field()),
                    Value::from(member.presence(PresenceEvent::Leave)),
                    Value::from(member.user.id.as_deref().unwrap_or_default()),
                    Value::from(member.roster_key()),
                    Value::from(member.user_json()),
                ],
            )
        }))
        .await?;
        Ok(restored.iter().filter(|v| v.as_i64() == Some(1)).count())
    }

    /// Reaps nodes whose deadline passed, room by room (each room's script on the
    /// room's shard); returns how many members were removed. Safe to run on every
    /// replica at once and to resume after a reaper died: each step is idempotent, and
    /// the node is forgotten only after its last room.
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
            if node == *self.inner.node || !self.nodes_op("claim", &node, now_ms as i64).await? {
                continue;
            }
            let set = self.node_rooms_key(&node);
            let rooms = strings(
                self.command("SMEMBERS", &set, vec![Value::from(set.as_str())])
                    .await?,
            );
            let mut n = 0;
            for room in rooms {
                let reaped = self
                    .eval(
                        &self.inner.reap_room,
                        vec![
                            self.key(&room, "members"),
                            self.key(&room, "users"),
                            self.key(&room, "roster"),
                            self.key(&room, "names"),
                            self.key(&room, "pseq"),
                        ],
                        vec![
                            Value::from(node.as_str()),
                            Value::from(self.key(&room, "ch")),
                            Value::from(self.publish_command()),
                        ],
                    )
                    .await?;
                n += reaped.as_i64().unwrap_or(0).max(0) as u64;
                self.node_rooms("SREM", &node, &room).await?;
            }
            self.nodes_op("done", &node, now_ms as i64).await?;
            if n > 0 {
                tracing::info!(dead_node = %node, members = n, "reaped members of a dead node");
            }
            removed += n;
        }
        Ok(removed)
    }
}

/// The hash slot of a key or channel (its `{...}` tag, if any).
fn slot(key: &str) -> u16 {
    fred::util::redis_keyslot(key.as_bytes())
}

/// The topology watcher, every [`TOPOLOGY_INTERVAL`]: on a cluster it reads the slot
/// map and, when a slot's owner changes, refreshes the clients' routing and tells the
/// receive loop (which resubscribes every room on its owner and catches up); with
/// `redis.replica_acks` it counts each master's connected replicas. Ends with the bus.
async fn watch_topology(inner: std::sync::Weak<Inner>) {
    let mut known: Option<Vec<(i64, i64, String)>> = None;
    loop {
        tokio::time::sleep(TOPOLOGY_INTERVAL).await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        if !inner.client.is_connected() {
            continue;
        }
        let mut masters = vec![String::new()];
        if inner.cluster {
            let client = inner.client.with_options(&inner.options);
            let command = CustomCommand::new_static("CLUSTER", ClusterHash::Random, false);
            let map = match client
                .custom::<Value, Value>(command, vec![Value::from("SLOTS")])
                .await
            {
                Ok(reply) => slot_owners(reply),
                Err(e) => {
                    tracing::debug!(error = %e, "reading the cluster slot map failed");
                    continue;
                }
            };
            if map.is_empty() {
                continue;
            }
            if known.is_none() {
                // The first read compares with the routing the subscriber already uses:
                // a slot may have moved since it subscribed rooms.
                known = inner.subscriber.cached_cluster_state().map(|state| {
                    let mut ranges: Vec<(i64, i64, String)> = state
                        .slots()
                        .iter()
                        .map(|r| {
                            let owner = format!("{}:{}", r.primary.host, r.primary.port);
                            (i64::from(r.start), i64::from(r.end), owner)
                        })
                        .collect();
                    ranges.sort();
                    ranges
                });
            }
            tracing::trace!(node = %inner.node, ?map, "cluster slot map");
            masters = map.iter().map(|(_, _, owner)| owner.clone()).collect();
            masters.sort();
            masters.dedup();
            if known.as_ref() != Some(&map) {
                if known.is_some() {
                    tracing::info!(
                        node = %inner.node,
                        "cluster slot owners changed; resubscribing rooms on their owners"
                    );
                    if let Err(e) = inner.subscriber.sync_cluster().await {
                        tracing::warn!(error = %e, "refreshing the subscriber's slot map failed");
                        continue;
                    }
                    if let Err(e) = inner.client.sync_cluster().await {
                        tracing::warn!(error = %e, "refreshing the command client's slot map failed");
                    }
                    inner.topology.send_modify(|generation| *generation += 1);
                }
                known = Some(map);
            }
        }
        if inner.replica_acks > 0 {
            count_replicas(&inner, &masters).await;
        }
    }
}

/// One of the bus's two fred clients.
#[derive(Debug, Clone, Copy)]
enum Half {
    Commands,
    Subscriber,
}

/// Keeps a fred client's connection task running. The task ends for good when fred's
/// router meets an error it does not recover from (seen on a cluster: an ASK
/// redirection with no attempt left while a slot migrates), which would leave the
/// client timing out every command; it is started again, and after the subscriber's
/// restart every room is resubscribed and caught up. Ends with the bus or its shutdown.
async fn supervise(
    inner: std::sync::Weak<Inner>,
    half: Half,
    mut task: fred::types::ConnectHandle,
) {
    loop {
        let result = task.await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        if inner.closing.load(Ordering::Acquire) {
            return;
        }
        let error = match result {
            Ok(Ok(())) => "ended".to_string(),
            Ok(Err(e)) if e.is_canceled() => return,
            Ok(Err(e)) => e.to_string(),
            Err(e) => e.to_string(),
        };
        tracing::warn!(client = ?half, %error, "a Redis client's connection task stopped; starting it again");
        tokio::time::sleep(Duration::from_millis(200)).await;
        task = match half {
            Half::Commands => inner.client.connect(),
            Half::Subscriber => {
                let task = inner.subscriber.connect();
                inner.control_subscribed.store(false, Ordering::Release);
                inner.topology.send_modify(|generation| *generation += 1);
                task
            }
        };
    }
}

/// Records how many replicas each master has connected (`INFO replication`).
async fn count_replicas(inner: &Inner, masters: &[String]) {
    for master in masters {
        let command = CustomCommand::new_static("INFO", ClusterHash::Random, false);
        let args = vec![Value::from("replication")];
        let reply = if master.is_empty() {
            inner
                .client
                .with_options(&inner.options)
                .custom::<Value, Value>(command, args)
                .await
        } else {
            let Ok(server) = server(master) else {
                continue;
            };
            inner
                .client
                .with_cluster_node(server)
                .custom::<Value, Value>(command, args)
                .await
        };
        let Some(count) = reply.ok().and_then(|v| v.as_string()).and_then(|info| {
            info.lines()
                .find_map(|l| l.trim().strip_prefix("connected_slaves:"))
                .and_then(|n| n.parse::<u32>().ok())
        }) else {
            continue;
        };
        if let Ok(mut map) = inner.connected_replicas.lock() {
            map.insert(master.clone(), count);
        }
    }
}

/// `CLUSTER SLOTS` as sorted (start, end, owner `host:port`) ranges.
fn slot_owners(reply: Value) -> Vec<(i64, i64, String)> {
    let Value::Array(ranges) = reply else {
        return Vec::new();
    };
    let mut out: Vec<(i64, i64, String)> = ranges
        .into_iter()
        .filter_map(|range| {
            let Value::Array(parts) = range else {
                return None;
            };
            let start = parts.first()?.as_i64()?;
            let end = parts.get(1)?.as_i64()?;
            let Some(Value::Array(owner)) = parts.get(2) else {
                return None;
            };
            let host = owner.first()?.as_string()?;
            let port = owner.get(1)?.as_i64()?;
            Some((start, end, format!("{host}:{port}")))
        })
        .collect();
    out.sort();
    out
}

impl Backend for RedisBus {
    fn is_connected(&self) -> bool {
        self.inner.client.is_connected() && self.inner.subscriber.is_connected()
    }

    fn is_registered(&self) -> bool {
        self.inner.registered.load(Ordering::Acquire)
    }

    fn is_stalled(&self) -> bool {
        self.inner.answering.stalled()
    }

    async fn publish(
        &self,
        room: &str,
        envelope: String,
        idem: Option<Idem>,
    ) -> Result<Published, BusError> {
        let log = self.key(room, "log");
        let mut keys = vec![log.clone()];
        let mut args = vec![
            Value::from(self.inner.history_size as i64),
            Value::from(self.inner.history_ttl_ms as i64),
            Value::from(self.key(room, "ch")),
            Value::from(envelope),
            Value::from(self.publish_command()),
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
        let published = Published {
            id: parse_id(id)?,
            duplicate: duplicate.as_i64() == Some(1),
        };
        self.wait_for_replicas(&log).await?;
        Ok(published)
    }

    async fn signal(&self, room: &str, envelope: String) -> Result<(), BusError> {
        let channel = self.key(room, "ch");
        self.command(
            self.publish_command(),
            &channel,
            vec![Value::from(channel.as_str()), Value::from(envelope)],
        )
        .await?;
        Ok(())
    }

    async fn control(&self, message: String) -> Result<usize, BusError> {
        let channel = control_channel(&self.inner.prefix);
        let receivers = self
            .command(
                self.publish_command(),
                &channel,
                vec![Value::from(channel.as_str()), Value::from(message)],
            )
            .await?;
        Ok(receivers.as_i64().unwrap_or(0).max(0) as usize)
    }

    async fn bar(&self, room: &str, user_key: &str, ttl_ms: u64) -> Result<(), BusError> {
        let key = self.key(room, &format!("bar:{user_key}"));
        self.command(
            "SET",
            &key,
            vec![
                Value::from(key.as_str()),
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
        let log = self.key(room, "log");
        let count = [Value::from("COUNT"), Value::from((limit + 1) as i64)];
        let (command, bounds) = match range {
            HistoryRange::Latest => ("XREVRANGE", ["+".to_string(), "-".to_string()]),
            HistoryRange::Before(id) => ("XREVRANGE", [format!("({id}"), "-".to_string()]),
            HistoryRange::After(id) => ("XRANGE", [format!("({id}"), "+".to_string()]),
        };
        let mut args = vec![Value::from(log.as_str())];
        args.extend(bounds.into_iter().map(Value::from));
        args.extend(count);
        let mut entries = parse_entries(self.command(command, &log, args).await?)?;
        let more = entries.len() > limit;
        entries.truncate(limit);
        if command == "XREVRANGE" {
            entries.reverse();
        }
        Ok(HistoryPage { entries, more })
    }

    async fn members(
        &self,
        room: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<MembersPage, BusError> {
        let reply = self
            .eval(
                &self.inner.members,
                vec![self.key(room, "roster"), self.key(room, "names")],
                vec![
                    Value::from(after.unwrap_or_default()),
                    Value::from(limit.max(1) as i64),
                ],
            )
            .await?;
        let Value::Array(parts) = reply else {
            return Err(BusError::Protocol("members: expected an array".into()));
        };
        let mut parts = parts.into_iter();
        let members = roster_users(parts.next().unwrap_or(Value::Null));
        let next = parts
            .next()
            .and_then(|v| v.as_string())
            .filter(|n| !n.is_empty());
        let count = parts.next().and_then(|v| v.as_i64()).unwrap_or(0).max(0) as u64;
        Ok(MembersPage {
            members,
            count,
            next,
        })
    }

    async fn rooms(&self) -> Result<Vec<(String, usize)>, BusError> {
        let nodes_key = self.nodes_key();
        let nodes = self
            .command(
                "ZRANGE",
                &nodes_key,
                vec![
                    Value::from(nodes_key.as_str()),
                    Value::from(0),
                    Value::from(-1),
                ],
            )
            .await?;
        let mut names = std::collections::BTreeSet::new();
        for node in strings(nodes) {
            let set = self.node_rooms_key(&node);
            let rooms = self
                .command("SMEMBERS", &set, vec![Value::from(set.as_str())])
                .await?;
            names.extend(strings(rooms));
        }
        let counts = futures_util::future::try_join_all(names.iter().map(|room| {
            let key = self.key(room, "roster");
            async move {
                self.command("ZCARD", &key, vec![Value::from(key.as_str())])
                    .await
            }
        }))
        .await?;
        Ok(names
            .into_iter()
            .zip(counts)
            .filter_map(|(room, n)| {
                let n = n.as_i64().unwrap_or(0);
                (n > 0).then_some((room, n as usize))
            })
            .collect())
    }

    async fn subscribe(&self, room: &str) -> Result<(), BusError> {
        self.subscribe_channels(vec![self.key(room, "ch")]).await
    }

    async fn unsubscribe(&self, room: &str) -> Result<(), BusError> {
        // Fails fast like every bus command: a reconnect starts with no subscriptions anyway.
        let sub = self.inner.subscriber.with_options(&self.inner.options);
        if self.inner.cluster {
            sub.sunsubscribe(self.key(room, "ch")).await?;
        } else {
            sub.unsubscribe(self.key(room, "ch")).await?;
        }
        Ok(())
    }

    async fn resubscribe(&self, rooms: &[Arc<str>]) -> Result<(), BusError> {
        let mut channels: Vec<String> = rooms.iter().map(|r| self.key(r, "ch")).collect();
        channels.push(control_channel(&self.inner.prefix));
        self.subscribe_channels(channels).await
    }

    async fn join(
        &self,
        room: &str,
        member: &MemberRef,
        since: Option<MsgId>,
        history: usize,
        page: usize,
    ) -> Result<JoinInfo, BusError> {
        // First the node's room set (its own slot), so a reaper finds the member should
        // this node die; a join that then fails leaves only a harmless extra entry.
        self.node_rooms("SADD", &member.node, room).await?;
        let reply = self
            .eval(
                &self.inner.join,
                vec![
                    self.key(room, "members"),
                    self.key(room, "log"),
                    self.key(room, "users"),
                    self.key(room, &format!("bar:{}", super::user_key(&member.user))),
                    self.key(room, "roster"),
                    self.key(room, "names"),
                    self.key(room, "pseq"),
                ],
                vec![
                    Value::from(member.field()),
                    Value::from(member.presence(PresenceEvent::Leave)),
                    Value::from(self.key(room, "ch")),
                    Value::from(member.presence(PresenceEvent::Join)),
                    Value::from(since.map(|s| s.to_string()).unwrap_or_default()),
                    Value::from(self.inner.history_size as i64),
                    Value::from(self.publish_command()),
                    Value::from(member.user.id.as_deref().unwrap_or_default()),
                    Value::from(history.min(self.inner.history_size) as i64),
                    Value::from(member.roster_key()),
                    Value::from(member.user_json()),
                    Value::from(page as i64),
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
            return Err(BusError::Protocol("join: expected seven parts".into()));
        };
        let count = parts.next().and_then(|v| v.as_i64()).unwrap_or(0).max(0) as u64;
        let pseq = parts.next().and_then(|v| v.as_i64()).unwrap_or(0).max(0) as u64;
        let next = parts
            .next()
            .and_then(|v| v.as_string())
            .filter(|n| !n.is_empty());
        let members = MembersPage {
            members: roster_users(members),
            count,
            next,
        };
        let recovered = match recovered.as_i64() {
            Some(-1) | None => None,
            Some(n) => Some(n == 1),
        };
        Ok(JoinInfo {
            members,
            pseq,
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
                self.key(room, "users"),
                self.key(room, "roster"),
                self.key(room, "names"),
                self.key(room, "pseq"),
            ],
            vec![
                Value::from(member.field()),
                Value::from(self.key(room, "ch")),
                Value::from(member.presence(PresenceEvent::Leave)),
                Value::from(self.publish_command()),
                Value::from(member.user.id.as_deref().unwrap_or_default()),
                Value::from(member.roster_key()),
            ],
        )
        .await?;
        if last_local {
            // After the presence is gone: a failure here leaves only an extra entry,
            // which a reaper skips.
            self.node_rooms("SREM", &member.node, room).await?;
        }
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
        let deadline = (now_ms + self.inner.presence_ttl_ms) as i64;
        match self.nodes_op("beat", &self.inner.node, deadline).await {
            Ok(unregistered) => {
                self.inner.registered.store(true, Ordering::Release);
                let again = self
                    .inner
                    .restore_again
                    .swap(unregistered, Ordering::AcqRel);
                let members = if unregistered || again {
                    memberships()
                } else {
                    Vec::new()
                };
                if !members.is_empty() {
                    match self.restore(&members).await {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(
                            members = n,
                            "node was not registered; restored its presence"
                        ),
                        Err(e) => {
                            self.inner.restore_again.store(true, Ordering::Release);
                            tracing::warn!(error = %e, "presence restore failed");
                        }
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
        self.inner.closing.store(true, Ordering::Release);
        let _ = self.inner.subscriber.quit().await;
        let _ = self.inner.client.quit().await;
    }
}

/// The control channel every replica subscribes to.
fn control_channel(prefix: &str) -> String {
    format!("{prefix}:ctl")
}

/// The users of a roster page (the names hash's JSON values; missing ones skipped).
fn roster_users(values: Value) -> Vec<User> {
    match values {
        Value::Array(values) => values
            .into_iter()
            .filter_map(|v| v.as_bytes().and_then(|b| serde_json::from_slice(b).ok()))
            .collect(),
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
