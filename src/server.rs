//! Wiring of one gateway: the bus, the rooms, the sessions, the client router (chat
//! page, `/ws`, health), the admin listener, background tasks (bus receive loop,
//! liveness upkeep, node-wide heartbeat), and the graceful drain.
//!
//! The client listener runs its own accept loop (hyper's HTTP/1 server): a connection that
//! has not sent complete request headers within `server.header_timeout` is closed, and
//! request headers are bounded to [`MAX_HEADER_BYTES`]. `/ws` upgrades pass the checks of
//! `edge` (origin 403, per-address limits 429, node limit 503) before they become sessions.
//!
//! Drain order (Kubernetes sends SIGTERM): readiness false at once -> keep accepting for
//! `drain.propagation_delay` -> refuse upgrades (503) -> close sessions with 1001 in
//! batches spread over `drain.spread` -> wait for them up to `drain.timeout` -> return.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, HeaderValue, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::ListenerExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;
use tracing::{debug, info, warn};

use crate::admin::{self, Health};
use crate::auth::Verifier;
use crate::bus::Bus;
use crate::config::{AuthMode, Config};
use crate::edge::{Edge, Refusal};
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
    /// Origin, client address, per-address and node-wide connection limits.
    edge: Arc<Edge>,
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
    let rooms = Rooms::new(node.clone(), bus, metrics.clone(), &config.presence);
    let background = CancellationToken::new();
    let receiver_task = rooms.spawn_receiver(receiver, background.clone());
    let verifier = match config.auth.mode {
        AuthMode::Anonymous => {
            warn!(
                "auth.mode is anonymous: anyone may connect and pick any name (set auth.mode = \"jwt\" in production)"
            );
            None
        }
        AuthMode::Jwt => {
            let verifier = Arc::new(Verifier::from_config(&config.auth).map_err(|e| {
                crate::config::ConfigError::Invalid {
                    key: e.key,
                    reason: e.reason,
                }
            })?);
            let prefetch = verifier.clone();
            tokio::spawn(async move { prefetch.prefetch().await });
            Some(verifier)
        }
    };
    let hook = crate::hooks::PublishHook::from_config(&config, metrics.clone())?;
    let api_keys = crate::api::load_keys(&config)?;
    if !api_keys.is_empty() {
        info!(
            keys = api_keys.len(),
            "server API enabled at {}",
            crate::api::PREFIX
        );
    }
    let api_router = crate::api::router(rooms.clone(), metrics.clone(), &config, api_keys);
    let state = AppState {
        inner: Arc::new(StateInner {
            edge: Arc::new(Edge::new(&config)),
            env: Env::new(config, rooms.clone(), metrics.clone(), verifier, hook),
            draining: AtomicBool::new(false),
            accepting: AtomicBool::new(true),
        }),
    };
    let env = state.inner.env.clone();
    let liveness_task = tokio::spawn(liveness_loop(env.clone(), background.clone()));
    let heartbeat_task = tokio::spawn(heartbeat_loop(env.clone(), background.clone()));
    let deadline_task = env
        .verifier()
        .is_some()
        .then(|| tokio::spawn(deadline_loop(env.clone(), background.clone())));

    let client_addr = listeners.client.local_addr()?;
    let admin_addr = listeners.admin.local_addr()?;
    let servers_stop = CancellationToken::new();
    let client_server = tokio::spawn(serve_client(
        listeners.client,
        client_router(state.clone()).merge(api_router),
        env.clone(),
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
    if let Some(task) = deadline_task {
        let _ = task.await;
    }
    rooms.shutdown().await;
    info!("drained; bye");
    Ok(())
}

/// Request headers larger than this (request line included) are refused (431) and close
/// the connection. Also hyper's read buffer bound (its smallest allowed value is 8 KiB).
pub(crate) const MAX_HEADER_BYTES: usize = 32 * 1024;

/// The client listener: accepts until `stop`, serves each connection with hyper's HTTP/1
/// server (header read timeout, bounded headers, upgrades for `/ws`), then tells open HTTP
/// connections to finish and waits for them. Upgraded WebSockets have left this loop by
/// then; the sessions' tracker waits for those.
async fn serve_client(listener: TcpListener, router: Router, env: Env, stop: CancellationToken) {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(env.config().server.header_timeout)
        .max_header_size(MAX_HEADER_BYTES)
        .max_buf_size(MAX_HEADER_BYTES);
    let builder = Arc::new(builder);
    let connections = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                if !is_connection_error(&e) {
                    // Out of file descriptors and the like: back off as axum::serve does.
                    warn!(error = %e, "accept failed");
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
                continue;
            }
        };
        // Chat frames are small: without TCP_NODELAY they wait for the peer's delayed ACK.
        if let Err(e) = stream.set_nodelay(true) {
            debug!(error = %e, "could not set TCP_NODELAY");
        }
        connections.spawn(serve_connection(
            stream,
            peer,
            router.clone(),
            builder.clone(),
            env.clone(),
            stop.clone(),
        ));
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}

/// One client connection until it closes or is upgraded to a WebSocket.
async fn serve_connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    router: Router,
    builder: Arc<hyper::server::conn::http1::Builder>,
    env: Env,
    stop: CancellationToken,
) {
    // Whether a request arrived: a header timeout after one is an idle keep-alive
    // connection closing, not a stalled request.
    let requested = Arc::new(AtomicBool::new(false));
    let service = {
        let requested = requested.clone();
        hyper::service::service_fn(move |mut request: Request<Incoming>| {
            requested.store(true, Ordering::Relaxed);
            request.extensions_mut().insert(ConnectInfo(peer));
            router.clone().oneshot(request)
        })
    };
    let conn = builder
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        _ = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        if e.is_timeout() && !requested.load(Ordering::Relaxed) {
            env.metrics().refused("header_timeout");
            debug!(%peer, "closed: no complete request headers within server.header_timeout");
        } else {
            debug!(%peer, error = %e, "client connection error");
        }
    }
}

fn is_connection_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}

/// The admin listener (axum's server).
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
        .route("/roomcast-client/{file}", get(web::client_module))
        .route("/ws", get(ws_upgrade))
        .route("/healthz", get(admin::healthz))
        .route("/readyz", get(admin::readyz::<AppState>))
        .with_state(state)
}

/// The query of `/ws`: the connection token in jwt mode (browsers cannot set headers on a
/// WebSocket). Never logged.
#[derive(serde::Deserialize)]
struct WsQuery {
    token: Option<String>,
}

/// The server's half of the WebSocket opening handshake (RFC 6455, 4.2.1): the client's
/// `Sec-WebSocket-Key`, or why the request is not a WebSocket upgrade (400).
fn handshake_key(headers: &HeaderMap) -> Result<&HeaderValue, &'static str> {
    let has_token = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|value| {
            value
                .to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    if !has_token(header::CONNECTION, "upgrade") {
        return Err("Connection header did not include 'upgrade'");
    }
    if !has_token(header::UPGRADE, "websocket") {
        return Err("`Upgrade` header did not include 'websocket'");
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_some_and(|v| v.as_bytes() != b"13")
    {
        return Err("`Sec-WebSocket-Version` header did not include '13'");
    }
    headers
        .get(header::SEC_WEBSOCKET_KEY)
        .ok_or("`Sec-WebSocket-Key` header missing")
}

/// `/ws`: the edge's checks, then the upgrade. The 101 answer is written here and the
/// upgraded connection handed back as the plain TCP stream (the HTTP/1 connection is
/// served by hyper directly on `TokioIo<TcpStream>`, see [`serve_connection`]), so the
/// session reads and writes WebSocket frames on the socket itself.
async fn ws_upgrade(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(query): Query<WsQuery>,
    mut request: axum::extract::Request,
) -> Response {
    let accept = match handshake_key(request.headers()) {
        Ok(key) => session::accept_key(key.as_bytes()),
        Err(why) => return (StatusCode::BAD_REQUEST, why).into_response(),
    };
    if request
        .extensions()
        .get::<hyper::upgrade::OnUpgrade>()
        .is_none()
    {
        return (
            StatusCode::UPGRADE_REQUIRED,
            "WebSocket request couldn't be upgraded since no upgrade state was present",
        )
            .into_response();
    }
    let on_upgrade = hyper::upgrade::on(&mut request);
    let headers = request.headers();
    let env = &state.inner.env;
    let metrics = env.metrics();
    let reject = |status: StatusCode, retry_after: Option<u64>, why: &'static str| {
        metrics
            .connections_total
            .with_label_values(&["rejected"])
            .inc();
        match retry_after {
            Some(secs) => (status, [(header::RETRY_AFTER, secs.to_string())], why).into_response(),
            None => (status, why).into_response(),
        }
    };
    if !state.inner.accepting.load(Ordering::Acquire) {
        return reject(StatusCode::SERVICE_UNAVAILABLE, Some(1), "draining");
    }
    let edge = &state.inner.edge;
    if !edge.origin_allowed(headers) {
        metrics.refused("origin");
        debug!(%peer, origin = ?headers.get(header::ORIGIN), "refused: origin not allowed");
        return reject(StatusCode::FORBIDDEN, None, "origin not allowed");
    }
    let peer = edge.client_addr(peer, headers);
    let slot = match edge.admit(peer.ip()) {
        Ok(slot) => slot,
        Err(Refusal::Full) => {
            return reject(
                StatusCode::SERVICE_UNAVAILABLE,
                Some(1),
                "too many connections",
            );
        }
        Err(Refusal::IpConnections) => {
            metrics.refused("ip_limit");
            return reject(
                StatusCode::TOO_MANY_REQUESTS,
                Some(5),
                "too many connections from this address",
            );
        }
        Err(Refusal::IpRate { retry_after_secs }) => {
            metrics.refused("ip_limit");
            return reject(
                StatusCode::TOO_MANY_REQUESTS,
                Some(retry_after_secs),
                "too many new connections from this address",
            );
        }
    };
    metrics
        .connections_total
        .with_label_values(&["accepted"])
        .inc();
    let Ok(accept) = HeaderValue::try_from(accept) else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let deflate = env.config().server.compression
        && session::negotiate_deflate(
            headers
                .get_all(header::SEC_WEBSOCKET_EXTENSIONS)
                .iter()
                .map(HeaderValue::as_bytes),
        );
    let env = env.clone();
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(e) => {
                debug!(%peer, error = %e, "upgrade failed");
                return;
            }
        };
        let parts = match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => parts,
            Err(_) => {
                warn!(%peer, "upgraded connection is not a TCP stream; closed");
                return;
            }
        };
        // A task of its own (not this one's continuation): the session's task then
        // holds only the session's future, every idle connection pays for its size.
        let tracker = env.sessions().tracker().clone();
        tracker.spawn(session::run(
            parts.io.into_inner(),
            parts.read_buf,
            env,
            peer,
            slot,
            query.token,
            deflate,
        ));
    });
    let mut response = (
        StatusCode::SWITCHING_PROTOCOLS,
        [
            (header::CONNECTION, HeaderValue::from_static("upgrade")),
            (header::UPGRADE, HeaderValue::from_static("websocket")),
            (header::SEC_WEBSOCKET_ACCEPT, accept),
        ],
    )
        .into_response();
    if deflate {
        response.headers_mut().insert(
            header::SEC_WEBSOCKET_EXTENSIONS,
            HeaderValue::from_static(session::DEFLATE_RESPONSE),
        );
    }
    response
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

/// jwt mode: closes sessions without a valid token after `auth.timeout` (4001) or whose
/// token expired (4002), and sends `expiring` before that. One task for the node, ticking
/// every 250 ms, instead of a timer per connection.
async fn deadline_loop(env: Env, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        env.sessions().check_deadlines();
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
    // `drain.timeout` is at most `config::MAX_DURATION`, but `Instant + Duration` panics
    // past the clock's range, and a panic here would skip the drain: such a deadline is
    // "none" in practice, 30 years away (as tokio's own far future), never a panic.
    let now = Instant::now();
    let deadline = now
        .checked_add(cfg.timeout)
        .or_else(|| now.checked_add(Duration::from_secs(30 * 365 * 86_400)))
        .unwrap_or(now);

    let handles = sessions.handles();
    let n = handles.len();
    if n > 0 {
        let slots = usize::try_from(cfg.spread.as_millis() / 50)
            .unwrap_or(usize::MAX)
            .max(1);
        let batches = n.min(slots);
        let interval = cfg.spread / u32::try_from(batches).unwrap_or(u32::MAX);
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
