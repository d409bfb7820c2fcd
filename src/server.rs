//! Wiring of one gateway: the bus, the rooms, the sessions, the client router (chat
//! page, `/ws`, health), the admin listener, background tasks (bus receive loop,
//! liveness upkeep, node-wide heartbeat), and the graceful drain.
//!
//! Drain order (Kubernetes sends SIGTERM): readiness false at once -> keep accepting for
//! `drain.propagation_delay` -> refuse upgrades (503) -> close sessions with 1001 in
//! batches spread over `drain.spread` -> wait for them up to `drain.timeout` -> return.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::admin::{self, Health};
use crate::bus::Bus;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::protocol::DisconnectReason;
use crate::rooms::Rooms;
use crate::session::{self, Env};
use crate::web;

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
    /// Chat page, `/ws`, `/healthz`, `/readyz`.
    pub client: TcpListener,
    /// `/metrics`, `/healthz`, `/readyz`.
    pub admin: TcpListener,
}

/// Shared by every request; cheap to clone.
#[derive(Clone)]
struct AppState {
    inner: Arc<StateInner>,
}

struct StateInner {
    env: Env,
    connection_slots: Arc<Semaphore>,
    /// Set when the drain starts: readiness turns false.
    draining: AtomicBool,
    /// Cleared after `drain.propagation_delay`: upgrades are refused from then on.
    accepting: AtomicBool,
}

impl Health for AppState {
    fn readiness(&self) -> Result<(), &'static str> {
        if self.inner.draining.load(Ordering::Acquire) {
            Err("draining")
        } else {
            self.inner.env.rooms().readiness()
        }
    }

    fn metrics_text(&self) -> String {
        self.inner.env.metrics().render()
    }
}

/// Runs one gateway until `shutdown` is cancelled and the drain has finished.
pub async fn run(
    listeners: Listeners,
    mut config: Config,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    config.validate()?;
    let node: Arc<str> = Arc::from(config.resolve_node_id());
    let metrics = Arc::new(Metrics::new(config.metrics.room_label_cap));
    let (bus, receiver) = Bus::connect(&config, node.clone())?;
    let rooms = Rooms::new(node.clone(), bus, metrics.clone());
    let background = CancellationToken::new();
    let receiver_task = rooms.spawn_receiver(receiver, background.clone());
    let state = AppState {
        inner: Arc::new(StateInner {
            connection_slots: Arc::new(Semaphore::new(config.limits.max_connections)),
            env: Env::new(config, rooms.clone(), metrics.clone()),
            draining: AtomicBool::new(false),
            accepting: AtomicBool::new(true),
        }),
    };
    let env = state.inner.env.clone();
    let liveness_task = tokio::spawn(liveness_loop(env.clone(), background.clone()));
    let heartbeat_task = tokio::spawn(heartbeat_loop(env.clone(), background.clone()));

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
    info!(client = %client_addr, admin = %admin_addr, node = %node, bus = rooms.bus_kind(), "listening");

    shutdown.cancelled().await;
    drain(&state).await;

    servers_stop.cancel();
    background.cancel();
    let _ = client_server.await;
    let _ = admin_server.await;
    let _ = receiver_task.await;
    let _ = liveness_task.await;
    let _ = heartbeat_task.await;
    rooms.shutdown().await;
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
        .route("/readyz", get(admin::readyz::<AppState>))
        .with_state(state)
}

async fn ws_upgrade(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    ws: WebSocketUpgrade,
) -> Response {
    let env = &state.inner.env;
    let metrics = env.metrics();
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
    let limits = &env.config().limits;
    let tracker = env.sessions().tracker().clone();
    let env = env.clone();
    ws.max_frame_size(limits.max_frame_bytes)
        .max_message_size(limits.max_frame_bytes)
        .read_buffer_size(512)
        .write_buffer_size(8 * 1024)
        .on_upgrade(move |socket| tracker.track_future(session::run(socket, env, peer, permit)))
}

/// Keeps `roomcast_bus_up` current and, every `presence.refresh` while the bus is up,
/// runs the rooms' upkeep (liveness, presence restore, reaping, deferred leaves).
async fn liveness_loop(env: Env, stop: CancellationToken) {
    let refresh = env.config().presence.refresh;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut last_refresh: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let connected = env.rooms().bus_connected();
        env.metrics().bus_up.set(i64::from(connected));
        if last_refresh.is_some_and(|t| t.elapsed() < refresh) || !connected {
            continue;
        }
        last_refresh = Some(Instant::now());
        env.rooms().maintain().await;
    }
}

/// Pings every session each `heartbeat.interval` and closes those that sent nothing for
/// `heartbeat.timeout`. One task for the node instead of a timer per connection.
async fn heartbeat_loop(env: Env, stop: CancellationToken) {
    let heartbeat = env.config().heartbeat.clone();
    let mut tick = tokio::time::interval(heartbeat.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        env.sessions().heartbeat(heartbeat.timeout);
    }
}

/// The graceful drain; see the module docs for the order.
async fn drain(state: &AppState) {
    let env = &state.inner.env;
    let sessions = env.sessions();
    let cfg = env.config().drain.clone();
    state.inner.draining.store(true, Ordering::Release);
    env.rooms().stop_joins();
    env.metrics().draining.set(1);
    info!(
        propagation_delay = ?cfg.propagation_delay,
        spread = ?cfg.spread,
        timeout = ?cfg.timeout,
        sessions = sessions.len(),
        "draining"
    );
    tokio::time::sleep(cfg.propagation_delay).await;
    state.inner.accepting.store(false, Ordering::Release);
    let deadline = Instant::now() + cfg.timeout;

    let handles = sessions.handles();
    let n = handles.len();
    if n > 0 {
        let slots = (cfg.spread.as_millis() / 50).max(1) as usize;
        let batches = n.min(slots);
        let interval = cfg.spread / batches as u32;
        for i in 0..batches {
            for handle in &handles[i * n / batches..(i + 1) * n / batches] {
                handle.close(DisconnectReason::Drain);
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
    sessions.close_all(DisconnectReason::Drain);
    let tracker = sessions.tracker();
    tracker.close();
    if tokio::time::timeout_at(deadline, tracker.wait())
        .await
        .is_err()
    {
        warn!(left = sessions.len(), "drain timeout; closing what is left");
        sessions.close_all(DisconnectReason::Drain);
        let _ = tokio::time::timeout(Duration::from_secs(1), tracker.wait()).await;
    }
}
