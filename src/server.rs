//! Wiring of one gateway: shared state, the client router (chat page, `/ws`, health),
//! background tasks (bus receive loop, presence liveness), and the graceful drain.
//!
//! Drain order (Kubernetes sends SIGTERM): readiness false at once -> keep accepting for
//! `drain.propagation_delay` -> refuse upgrades (503) -> close sessions with 1001 in
//! batches spread over `drain.spread` -> wait for them up to `drain.timeout` -> return.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::ListenerExt;
use dashmap::DashMap;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::bus::memory::MemoryBus;
use crate::bus::redis::RedisBus;
use crate::bus::{Bus, BusReceiver, MemberRef};
use crate::config::Config;
use crate::hub::{self, Hub, Out};
use crate::metrics::{DisconnectReason, Metrics};
use crate::session::{self, SessionCtl};
use crate::{admin, web};

/// Why a gateway could not run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("bus: {0}")]
    Bus(#[from] crate::bus::BusError),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// The bound listeners, passed in so tests can bind port 0.
pub struct Listeners {
    pub client: TcpListener,
    pub admin: TcpListener,
}

/// Shared by every request and session; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<StateInner>,
}

struct StateInner {
    config: Config,
    node: Arc<str>,
    hub: Hub,
    metrics: Arc<Metrics>,
    /// Every open session: its control handle and its queue (for heartbeat pings).
    sessions: DashMap<u64, (Arc<SessionCtl>, mpsc::Sender<Out>)>,
    tracker: TaskTracker,
    connection_slots: Arc<Semaphore>,
    draining: AtomicBool,
    accepting: AtomicBool,
    next_key: AtomicU64,
    /// Leaves whose presence update failed (bus down); retried by the liveness loop so no
    /// departed member stays listed.
    deferred_leaves: std::sync::Mutex<Vec<(Arc<str>, MemberRef)>>,
    /// Set once this node's liveness entry is in Redis (always for the memory bus): only
    /// then may members join, or a crash right after start would leave members no
    /// reaper can find.
    registered: AtomicBool,
}

impl AppState {
    /// State for one gateway (its sessions, limits and drain latches).
    pub fn new(config: Config, node: Arc<str>, hub: Hub, metrics: Arc<Metrics>) -> Self {
        let registered = AtomicBool::new(!hub.bus().is_redis());
        AppState {
            inner: Arc::new(StateInner {
                connection_slots: Arc::new(Semaphore::new(config.limits.max_connections)),
                config,
                node,
                hub,
                metrics,
                sessions: DashMap::new(),
                tracker: TaskTracker::new(),
                draining: AtomicBool::new(false),
                accepting: AtomicBool::new(true),
                next_key: AtomicU64::new(1),
                deferred_leaves: std::sync::Mutex::new(Vec::new()),
                registered,
            }),
        }
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }
    pub fn node(&self) -> &str {
        &self.inner.node
    }
    pub fn node_arc(&self) -> Arc<str> {
        self.inner.node.clone()
    }
    pub fn hub(&self) -> &Hub {
        &self.inner.hub
    }
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }
    pub fn tracker(&self) -> &TaskTracker {
        &self.inner.tracker
    }
    pub fn next_key(&self) -> u64 {
        self.inner.next_key.fetch_add(1, Ordering::Relaxed)
    }
    pub fn register(&self, key: u64, ctl: Arc<SessionCtl>, tx: mpsc::Sender<Out>) {
        self.inner.sessions.insert(key, (ctl, tx));
    }
    pub fn unregister(&self, key: u64) {
        self.inner.sessions.remove(&key);
    }
    /// Queues a leave whose presence update failed, for a retry once the bus is back.
    pub fn defer_leave(&self, room: Arc<str>, member: MemberRef) {
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
            let last_local = !self.inner.hub.has_room(&room);
            if self
                .inner
                .hub
                .bus()
                .leave(&room, &member, last_local)
                .await
                .is_err()
            {
                self.defer_leave(room, member);
            }
        }
    }

    /// Whether this node's presence is registered, so members may join.
    pub fn is_registered(&self) -> bool {
        self.inner.registered.load(Ordering::Acquire)
    }

    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::Acquire)
    }

    /// Readiness: `Ok` or the reason the node should get no traffic.
    pub fn readiness(&self) -> Result<(), &'static str> {
        if self.is_draining() {
            Err("draining")
        } else if !self.inner.hub.bus().is_connected() {
            Err("bus_down")
        } else if !self.is_registered() {
            Err("starting")
        } else if !self.inner.hub.all_subscribed() {
            Err("resubscribing")
        } else {
            Ok(())
        }
    }
}

/// Runs one gateway until `shutdown` is cancelled and the drain has finished.
pub async fn run(
    listeners: Listeners,
    config: Config,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    config.validate()?;
    let node: Arc<str> = Arc::from(config.node_id());
    let metrics = Arc::new(Metrics::new(config.metrics.room_label_cap));
    let (bus, receiver) = match &config.redis.url {
        None => {
            let (bus, rx) = MemoryBus::new(config.history.size, config.history.ttl);
            (Bus::Memory(bus), BusReceiver::Memory(rx))
        }
        Some(url) => {
            let (bus, rx) = RedisBus::connect(&config, url, node.clone())?;
            (Bus::Redis(bus), BusReceiver::Redis(rx))
        }
    };
    let hub = Hub::new(node.clone(), bus.clone(), metrics.clone());
    let background = CancellationToken::new();
    let receiver_task = hub::spawn_receiver(hub.clone(), receiver, background.clone());
    let state = AppState::new(config, node.clone(), hub, metrics.clone());
    let liveness_task = tokio::spawn(liveness_loop(state.clone(), background.clone()));
    let heartbeat_task = tokio::spawn(heartbeat_loop(state.clone(), background.clone()));

    let client_addr = listeners.client.local_addr()?;
    let admin_addr = listeners.admin.local_addr()?;
    let servers_stop = CancellationToken::new();
    let client_server = tokio::spawn(serve(
        listeners.client,
        client_router(state.clone()),
        servers_stop.clone(),
    ));
    let admin_server = tokio::spawn(serve(
        listeners.admin,
        admin::router(state.clone()),
        servers_stop.clone(),
    ));
    info!(client = %client_addr, admin = %admin_addr, node = %node, bus = if bus.is_redis() { "redis" } else { "memory" }, "listening");

    shutdown.cancelled().await;
    drain(&state).await;

    servers_stop.cancel();
    background.cancel();
    let _ = client_server.await;
    let _ = admin_server.await;
    let _ = receiver_task.await;
    let _ = liveness_task.await;
    let _ = heartbeat_task.await;
    if let Bus::Redis(redis) = &bus {
        if let Err(e) = redis.deregister().await {
            warn!(error = %e, "could not deregister this node");
        }
        redis.quit().await;
    }
    info!("drained; bye");
    Ok(())
}

async fn serve(listener: TcpListener, router: Router, stop: CancellationToken) {
    // Chat frames are small: without TCP_NODELAY they wait for the peer's delayed ACK.
    let listener = listener.tap_io(|stream| {
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
    });
    let result = axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move { stop.cancelled().await })
    .await;
    if let Err(e) = result {
        warn!(error = %e, "listener failed");
    }
}

fn client_router(state: AppState) -> Router {
    Router::new()
        .route("/", get(web::index))
        .route("/app.js", get(web::app_js))
        .route("/style.css", get(web::style_css))
        .route("/ws", get(ws_upgrade))
        .route("/healthz", get(admin::healthz))
        .route("/readyz", get(admin::readyz))
        .with_state(state)
}

async fn ws_upgrade(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    ws: WebSocketUpgrade,
) -> Response {
    let metrics = state.metrics();
    let refuse = |why: &'static str| {
        metrics
            .connections_total
            .with_label_values(&["rejected"])
            .inc();
        (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            why,
        )
            .into_response()
    };
    if !state.inner.accepting.load(Ordering::Acquire) {
        return refuse("draining");
    }
    let Ok(permit) = state.inner.connection_slots.clone().try_acquire_owned() else {
        return refuse("too many connections");
    };
    metrics
        .connections_total
        .with_label_values(&["accepted"])
        .inc();
    let limits = &state.config().limits;
    let tracker = state.tracker().clone();
    ws.max_frame_size(limits.max_frame_bytes)
        .max_message_size(limits.max_frame_bytes)
        .read_buffer_size(512)
        .write_buffer_size(8 * 1024)
        .on_upgrade(move |socket| tracker.track_future(session::run(socket, state, peer, permit)))
}

/// Keeps this node's presence alive and reaps dead nodes (Redis), or forgets idle rooms
/// (memory); also keeps `roomcast_bus_up` current.
async fn liveness_loop(state: AppState, stop: CancellationToken) {
    let presence = state.config().presence.clone();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut last_refresh: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let bus = state.hub().bus();
        state.metrics().bus_up.set(i64::from(bus.is_connected()));
        if last_refresh.is_some_and(|t| t.elapsed() < presence.refresh) || !bus.is_connected() {
            continue;
        }
        last_refresh = Some(Instant::now());
        state.retry_deferred_leaves().await;
        match bus {
            Bus::Memory(memory) => memory.sweep(),
            Bus::Redis(redis) => {
                let now_ms = crate::bus::now_micros() / 1000;
                let beat = redis
                    .heartbeat(now_ms + presence.ttl.as_millis() as u64)
                    .await;
                if beat.is_ok() {
                    state.inner.registered.store(true, Ordering::Release);
                }
                match beat {
                    Ok(true) => {
                        let members = state.hub().memberships();
                        if !members.is_empty() {
                            info!(
                                members = members.len(),
                                "node was not registered; restoring presence"
                            );
                            if let Err(e) = redis.restore(&members).await {
                                warn!(error = %e, "presence restore failed");
                            }
                        }
                    }
                    Ok(false) => {}
                    Err(e) => warn!(error = %e, "presence heartbeat failed"),
                }
                if let Err(e) = redis.reap(now_ms).await {
                    warn!(error = %e, "reaping dead nodes failed");
                }
            }
        }
    }
}

/// Pings every session each `heartbeat.interval` and closes those that sent nothing (no
/// frame, no pong) for `heartbeat.timeout`. One task for the node instead of a timer per
/// connection.
async fn heartbeat_loop(state: AppState, stop: CancellationToken) {
    let heartbeat = state.config().heartbeat.clone();
    let mut tick = tokio::time::interval(heartbeat.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now_ms = crate::bus::now_micros() / 1000;
        for session in state.inner.sessions.iter() {
            let (ctl, tx) = session.value();
            if ctl.silent_for(now_ms) > heartbeat.timeout {
                ctl.close(DisconnectReason::Heartbeat);
            } else if let Err(mpsc::error::TrySendError::Full(_)) = tx.try_send(Out::Ping) {
                ctl.close(DisconnectReason::SlowConsumer);
            }
        }
    }
}

/// The graceful drain; see the module docs for the order.
async fn drain(state: &AppState) {
    let cfg = state.config().drain.clone();
    state.inner.draining.store(true, Ordering::Release);
    state.metrics().draining.set(1);
    info!(
        propagation_delay = ?cfg.propagation_delay,
        spread = ?cfg.spread,
        timeout = ?cfg.timeout,
        sessions = state.inner.sessions.len(),
        "draining"
    );
    tokio::time::sleep(cfg.propagation_delay).await;
    state.inner.accepting.store(false, Ordering::Release);
    let deadline = tokio::time::Instant::now() + cfg.timeout;

    let sessions: Vec<Arc<SessionCtl>> = state
        .inner
        .sessions
        .iter()
        .map(|s| s.value().0.clone())
        .collect();
    let n = sessions.len();
    if n > 0 {
        let slots = (cfg.spread.as_millis() / 50).max(1) as usize;
        let batches = n.min(slots);
        let interval = cfg.spread / batches as u32;
        for i in 0..batches {
            for ctl in &sessions[i * n / batches..(i + 1) * n / batches] {
                ctl.close(DisconnectReason::Drain);
            }
            if i + 1 < batches
                && tokio::time::timeout_at(deadline, tokio::time::sleep(interval))
                    .await
                    .is_err()
            {
                break;
            }
        }
    }
    // Anything left (late joiners, or the deadline cut the spread short).
    for s in state.inner.sessions.iter() {
        s.value().0.close(DisconnectReason::Drain);
    }
    state.inner.tracker.close();
    if tokio::time::timeout_at(deadline, state.inner.tracker.wait())
        .await
        .is_err()
    {
        warn!(
            left = state.inner.sessions.len(),
            "drain timeout; closing what is left"
        );
        for s in state.inner.sessions.iter() {
            s.value().0.close(DisconnectReason::Drain);
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), state.inner.tracker.wait()).await;
    }
}
