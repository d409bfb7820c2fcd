//! One task per WebSocket connection: the read loop (parse, validate, rate-limit, act)
//! runs in the connection's task, reading frames straight from the TCP socket
//! ([`transport`]); what goes to the client is routed and written by [`writer`], from
//! whichever task produces it (a flush task runs only while the socket would block). Room operations go to [`Rooms`]; the session keeps only what is
//! per connection: its memberships (in a Drop guard that leaves every room, so a
//! disconnect, an early return or a panic cleans up presence and subscriptions alike),
//! its limits, and its control handle.
//!
//! [`Sessions`] is the one registry of this node's sessions: the drain closes them and
//! the node-wide heartbeat pings them through it; the rooms hold the same handles as
//! their members.

mod ctl;
mod deflate;
pub(crate) mod limits;
mod room_map;
mod transport;
mod writer;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashMap;
use tokio::net::TcpStream;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info_span};

use self::ctl::{Due, SessionCtl};
pub(crate) use self::deflate::{
    RESPONSE as DEFLATE_RESPONSE, compress, negotiate as negotiate_deflate,
};
use self::limits::{Strikes, TokenBucket};
use self::room_map::RoomMap;
pub(crate) use self::transport::accept_key;
use self::transport::{Incoming, PONG, ReadError, Reader};
pub(crate) use self::writer::Out;
use self::writer::{CLOSE_GRACE, Outbound, Release};
use crate::auth::{self, AuthError, Verifier};
use crate::bus::{Idem, MemberRef};
use crate::clock;
use crate::config::Config;
use crate::hooks::{PublishHook, Verdict};
use crate::metrics::Metrics;
use crate::protocol::{
    ClientFrame, DisconnectReason, Encode, ErrorCode, FrameError, MsgId, ServerFrame, User,
    normalize_name, parse_client_frame, peek_ref, validate_room,
};
use crate::rooms::{Closer, Member, RoomError, RoomFrame, Rooms};
use crate::telemetry;

/// What every session of this node shares; cheap to clone.
#[derive(Clone)]
pub(crate) struct Env {
    inner: Arc<EnvInner>,
}

struct EnvInner {
    config: Config,
    rooms: Rooms,
    metrics: Arc<Metrics>,
    sessions: Sessions,
    /// jwt mode: checks tokens; `None` in anonymous mode.
    verifier: Option<Arc<Verifier>>,
    /// `hooks.publish.url`: asked before each client message is published.
    hook: Option<PublishHook>,
}

impl Env {
    /// The sessions' shared state; also hands the rooms the closer the server API's
    /// disconnect uses.
    pub(crate) fn new(
        config: Config,
        rooms: Rooms,
        metrics: Arc<Metrics>,
        verifier: Option<Arc<Verifier>>,
        hook: Option<PublishHook>,
    ) -> Self {
        let inner = Arc::new(EnvInner {
            config,
            rooms,
            metrics,
            sessions: Sessions::default(),
            verifier,
            hook,
        });
        inner
            .rooms
            .set_closer(Arc::new(SessionCloser(Arc::downgrade(&inner))));
        Env { inner }
    }

    pub(crate) fn verifier(&self) -> Option<&Arc<Verifier>> {
        self.inner.verifier.as_ref()
    }

    pub(crate) fn config(&self) -> &Config {
        &self.inner.config
    }

    pub(crate) fn rooms(&self) -> &Rooms {
        &self.inner.rooms
    }

    pub(crate) fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    pub(crate) fn sessions(&self) -> &Sessions {
        &self.inner.sessions
    }
}

/// Closes sessions for the server API's disconnect; holds the sessions weakly (the rooms
/// hold it, and the sessions' environment holds the rooms).
struct SessionCloser(std::sync::Weak<EnvInner>);

impl Closer for SessionCloser {
    fn close_user(
        &self,
        user: &str,
        members: &std::collections::HashSet<u64>,
        reason: Option<&str>,
    ) -> u64 {
        let Some(env) = self.0.upgrade() else {
            return 0;
        };
        let mut closed = 0;
        for session in env.sessions.open.iter() {
            let handle = session.value();
            let matches = members.contains(session.key())
                || handle.user_id.get().is_some_and(|id| **id == *user);
            if matches && !handle.ctl.is_closed() {
                let message = reason.unwrap_or("disconnected by the server");
                let error = FrameError::new(ErrorCode::Forbidden, message);
                handle.push(Out::Frame(Box::new(error.encode())));
                handle.close(DisconnectReason::Forbidden);
                closed += 1;
            }
        }
        closed
    }

    fn close_to_resume(&self, members: &std::collections::HashSet<u64>) -> u64 {
        let Some(env) = self.0.upgrade() else {
            return 0;
        };
        let mut closed = 0;
        for key in members {
            if let Some(session) = env.sessions.open.get(key)
                && !session.ctl.is_closed()
            {
                session.close(DisconnectReason::Resync);
                closed += 1;
            }
        }
        closed
    }
}

/// One session as others see it: its outbound side and its control handle.
pub(crate) struct Handle {
    out: Outbound,
    pub(super) ctl: SessionCtl,
    /// jwt mode: the token's `sub` once authenticated (it never changes afterwards).
    user_id: std::sync::OnceLock<Box<str>>,
}

impl Handle {
    /// A handle writing to `sock` (`None`: detached, for unit tests: frames stay pending).
    /// `deflate_min`: `permessage-deflate` was agreed, text frames of at least that many
    /// bytes go out compressed.
    fn new(
        sock: Option<tokio::net::tcp::OwnedWriteHalf>,
        metrics: Arc<Metrics>,
        queue: usize,
        deflate_min: Option<usize>,
    ) -> Arc<Self> {
        Arc::new_cyclic(|me| Handle {
            out: Outbound::new(sock, me.clone(), metrics, queue, deflate_min),
            ctl: SessionCtl::default(),
            user_id: std::sync::OnceLock::new(),
        })
    }

    /// Routes an item to the client: written at once when the socket takes it, else
    /// queued; a full queue means the client is not reading, and closes the session as
    /// a slow consumer.
    fn push(&self, out: Out) {
        self.out.push(out, &self.ctl);
    }

    pub(crate) fn close(&self, reason: DisconnectReason) {
        self.ctl.close(reason);
    }
}

impl Member for Handle {
    fn deliver(&self, frame: Arc<RoomFrame>) {
        self.push(Out::Room(frame));
    }

    fn deliver_later(&self, frame: Arc<RoomFrame>) {
        self.out.push_later(Out::Room(frame), &self.ctl);
    }

    fn removed(&self, room: &Arc<str>) {
        self.push(Out::Removed(Box::new(room.clone())));
    }
}

/// The registry of this node's open sessions.
#[derive(Default)]
pub(crate) struct Sessions {
    open: DashMap<u64, Arc<Handle>>,
    next_key: AtomicU64,
    /// Every session task, so the drain can wait for them.
    tracker: TaskTracker,
}

impl Sessions {
    fn register(&self, handle: Arc<Handle>) -> u64 {
        let key = self.next_key.fetch_add(1, Ordering::Relaxed) + 1;
        self.open.insert(key, handle);
        key
    }

    fn unregister(&self, key: u64) {
        self.open.remove(&key);
    }

    pub(crate) fn len(&self) -> usize {
        self.open.len()
    }

    pub(crate) fn tracker(&self) -> &TaskTracker {
        &self.tracker
    }

    /// Every open session's handle (for closing them in batches).
    pub(crate) fn handles(&self) -> Vec<Arc<Handle>> {
        self.open.iter().map(|s| s.value().clone()).collect()
    }

    pub(crate) fn close_all(&self, reason: DisconnectReason) {
        for s in self.open.iter() {
            s.value().close(reason);
        }
    }

    /// One round of token deadlines (jwt mode): closes sessions that did not authenticate
    /// within `auth.timeout` (4001) or whose token expired (4002), and sends `expiring`
    /// once when a token nears its `exp`.
    pub(crate) fn check_deadlines(&self) {
        let now_ms = clock::monotonic_ms();
        for session in self.open.iter() {
            let handle = session.value();
            match handle.ctl.due(now_ms) {
                Due::Nothing => {}
                Due::Close(reason) => handle.close(reason),
                Due::Notice { in_ms } => {
                    let frame = ServerFrame::Expiring { in_ms }.encode();
                    handle.push(Out::Frame(Box::new(frame)));
                }
            }
        }
    }

    /// One heartbeat round: closes sessions that sent nothing (no frame, no pong) for
    /// `timeout` and pings the others.
    pub(crate) fn heartbeat(&self, timeout: Duration) {
        let now_ms = clock::monotonic_ms();
        for session in self.open.iter() {
            let handle = session.value();
            if handle.ctl.silent_for(now_ms) > timeout {
                handle.close(DisconnectReason::Heartbeat);
            } else {
                handle.push(Out::Ping);
            }
        }
    }
}

/// Runs one session to its end. `slot` holds the connection's places (in
/// `limits.max_connections` and the per-address limits) until the session is gone.
///
/// A plain function returning the session's future (not an `async fn` wrapping another
/// future): the arguments are then stored once, inside the task, not twice. Every idle
/// connection pays for this task's size.
pub(crate) fn run(
    stream: TcpStream,
    // Bytes the HTTP server read past the upgrade request (the client's first frames).
    early: Bytes,
    env: Env,
    peer: SocketAddr,
    slot: impl Send + 'static,
    // jwt mode: the token from `?token=` on `/ws`, if any.
    token: Option<String>,
    // `permessage-deflate` was agreed in the handshake.
    deflate: bool,
) -> impl std::future::Future<Output = ()> + Send {
    let conn: Arc<str> = Arc::from(format!("{:012x}", rand::random::<u64>() >> 16));
    let span = info_span!("connection", node = %env.rooms().node(), conn = %conn, %peer);
    async move {
        debug!("connected");
        let metrics = env.metrics().clone();
        metrics.connections.inc();
        let limits = &env.config().limits;
        let (read, write) = stream.into_split();
        let reader = Reader::new(read, early, limits.max_frame_bytes, deflate);
        let deflate_min = deflate.then_some(env.config().server.compression_min_bytes);
        let handle = Handle::new(
            Some(write),
            metrics.clone(),
            limits.outbound_queue,
            deflate_min,
        );
        let key = env.sessions().register(handle.clone());
        let mut session = Session {
            env: env.clone(),
            identity: None,
            key,
            conn: conn.clone(),
            handle: handle.clone(),
            memberships: Memberships {
                rooms: RoomMap::default(),
                env: env.clone(),
                key,
            },
            bucket: TokenBucket::new(limits.messages_per_second, limits.burst),
            strikes: Strikes::default(),
        };
        match (env.verifier(), token) {
            (None, _) => session.welcome(),
            (Some(_), Some(token)) => {
                if let Err(e) = Box::pin(session.authenticate(&token)).await {
                    session.send_error(e);
                    handle.close(DisconnectReason::Unauthorized);
                }
            }
            // The token must come as the first frames, within `auth.timeout`.
            (Some(_), None) => handle.ctl.set_auth_deadline(
                clock::monotonic_ms() + env.config().auth.timeout.as_millis() as u64,
            ),
        }
        let (mut reader, echo) = session.read_loop(reader).await;
        // Leave every room (announcing it) while the close goes out; both boxed: an
        // idle connection's task need not hold their futures.
        tokio::join!(
            Box::pin(session.memberships.leave_all()),
            Box::pin(handle.out.close(&handle.ctl, echo)),
        );
        drop(session);
        // Keep reading (and discarding) until the peer closes: closing a socket with
        // unread input makes the kernel send a reset, which can destroy the frames we
        // just sent (an error explaining the close, the close frame itself).
        let _ = tokio::time::timeout(CLOSE_GRACE * 2, async {
            while reader.next().await.is_ok() {}
        })
        .await;
        let reason = handle.ctl.reason();
        metrics.disconnect(reason);
        metrics.connections.dec();
        env.sessions().unregister(key);
        drop(slot);
        debug!(reason = reason.as_str(), "disconnected");
    }
    .instrument(span)
}

/// Who an authenticated (jwt mode) session is, from its token's claims.
struct Identity {
    sub: String,
    /// As others see this user: `id` = `sub`, `name` from the token.
    user: User,
    /// Room patterns the user may join (`None`: all).
    rooms: Option<Vec<String>>,
    /// Room patterns the user may send to (`None`: every joined room).
    publish: Option<Vec<String>>,
}

struct Session {
    env: Env,
    /// jwt mode, once authenticated; always `None` in anonymous mode. Boxed: every idle
    /// connection's task holds this field.
    identity: Option<Box<Identity>>,
    key: u64,
    conn: Arc<str>,
    handle: Arc<Handle>,
    memberships: Memberships,
    bucket: TokenBucket,
    strikes: Strikes,
}

impl Session {
    /// Reads and handles frames until the session ends; returns the reader so the
    /// caller can keep draining input while the close goes out, and the status code of
    /// the client's close frame, if it sent one.
    async fn read_loop(&mut self, mut reader: Reader) -> (Reader, Option<u16>) {
        // Pings and the silence check come from the node-wide heartbeat task
        // ([`Sessions::heartbeat`]), so an idle connection holds no timer of its own.
        loop {
            let msg = tokio::select! {
                _ = self.handle.ctl.reader_closed() => return (reader, None),
                msg = reader.next() => msg,
            };
            self.handle.ctl.touch();
            match msg {
                Ok(Incoming::Text(text)) => {
                    if self.admit(Some(&text)) {
                        self.handle_text(&text).await;
                    }
                }
                Ok(Incoming::Binary) => {
                    if self.admit(None) {
                        self.send_error(FrameError::new(
                            ErrorCode::BadRequest,
                            "binary frames are not supported; send JSON text frames",
                        ));
                    }
                }
                Ok(Incoming::Ping(payload)) => {
                    self.handle.out.control(PONG, payload, &self.handle.ctl);
                }
                Ok(Incoming::Pong) => {}
                Ok(Incoming::Close(code)) => {
                    self.handle.close(DisconnectReason::Client);
                    return (reader, code);
                }
                Err(e) => {
                    let reason = match e {
                        ReadError::TooLarge(_) => DisconnectReason::TooLarge,
                        _ => DisconnectReason::Client,
                    };
                    debug!(error = %e, "read failed");
                    self.handle.close(reason);
                    return (reader, None);
                }
            }
        }
    }

    /// Applies the rate limit: refuses the frame with `rate_limited` (echoing its `ref`),
    /// and closes the connection when refusals keep coming.
    fn admit(&mut self, text: Option<&str>) -> bool {
        if self.bucket.take() {
            return true;
        }
        let limits = &self.env.config().limits;
        if self.strikes.add() >= limits.rate_limit_strikes {
            debug!("rate limit exceeded repeatedly; closing");
            self.handle.close(DisconnectReason::Policy);
            return false;
        }
        let reference = text.and_then(peek_ref);
        self.send_error(
            FrameError::new(
                ErrorCode::RateLimited,
                format!(
                    "more than {} frames per second; frame dropped",
                    limits.messages_per_second
                ),
            )
            .with_ref(reference.as_deref()),
        );
        false
    }

    async fn handle_text(&mut self, text: &str) {
        let frame = match parse_client_frame(text) {
            Ok(f) => f,
            Err(e) => return self.send_error(e),
        };
        let reference = frame.reference().map(str::to_owned);
        let result = match frame {
            // jwt mode: nothing but `auth` before a valid token.
            ClientFrame::Auth { token, .. } if self.awaits_token() => {
                Box::pin(self.authenticate(&token)).await
            }
            _ if self.awaits_token() => Err(FrameError::new(
                ErrorCode::Unauthorized,
                "authenticate first: send {\"type\":\"auth\",\"token\":\"<jwt>\"}",
            )),
            ClientFrame::Auth { .. } if self.identity.is_some() => Err(FrameError::new(
                ErrorCode::BadRequest,
                "already authenticated; send `refresh` with a new token",
            )),
            ClientFrame::Refresh { token, .. } if self.identity.is_some() => {
                Box::pin(self.refresh(&token, reference.as_deref())).await
            }
            ClientFrame::Ping { .. } => {
                let pong = ServerFrame::Pong {
                    reference: reference.as_deref(),
                }
                .encode();
                self.handle.push(Out::Frame(Box::new(pong)));
                Ok(())
            }
            ClientFrame::Auth { .. } | ClientFrame::Refresh { .. } => Err(FrameError::new(
                ErrorCode::BadRequest,
                "auth.mode is anonymous on this gateway: no token is needed",
            )),
            // Boxed: the bus futures are large and only live while a frame is handled,
            // so an idle connection's task stays small.
            ClientFrame::Join {
                room,
                name,
                since,
                token,
                history,
                ..
            } => {
                let asked = JoinAsk {
                    name: name.as_deref(),
                    since: since.as_deref(),
                    room_token: token.as_deref(),
                    history: history.unwrap_or(0) as usize,
                };
                Box::pin(self.join(room, asked)).await
            }
            ClientFrame::Leave { room, .. } => Box::pin(self.leave(&room)).await,
            ClientFrame::Typing { room, .. } => Box::pin(self.typing(&room)).await,
            ClientFrame::Members {
                room, after, limit, ..
            } => Box::pin(self.members(&room, after.as_deref(), limit, reference.as_deref())).await,
            ClientFrame::Send {
                room, text, idem, ..
            } => Box::pin(self.send(&room, text, idem, reference.as_deref())).await,
        };
        if let Err(e) = result {
            self.send_error(e.with_ref(reference.as_deref()));
        }
    }

    /// jwt mode and no valid token yet.
    fn awaits_token(&self) -> bool {
        self.env.verifier().is_some() && self.identity.is_none()
    }

    /// Counts a refused token and turns it into the client's `unauthorized` error (the
    /// message says why, never the token).
    fn token_refused(&self, e: AuthError) -> FrameError {
        self.env.metrics().refused(e.metric_label());
        debug!(reason = %e, "token refused");
        FrameError::new(ErrorCode::Unauthorized, e.to_string())
    }

    /// Verifies a connection token (jwt mode; a refusal is counted and explained).
    async fn verify(&self, token: &str) -> Result<auth::Claims, FrameError> {
        let Some(verifier) = self.env.verifier() else {
            return Err(FrameError::new(
                ErrorCode::BadRequest,
                "auth.mode is anonymous on this gateway: no token is needed",
            ));
        };
        verifier
            .verify(token)
            .await
            .map_err(|e| self.token_refused(e))
    }

    /// jwt mode: checks the connection token; on success the session knows who it is,
    /// closes at the token's `exp` unless refreshed, and is welcomed.
    async fn authenticate(&mut self, token: &str) -> Result<(), FrameError> {
        let claims = self.verify(token).await?;
        self.set_expiry(claims.exp);
        let _ = self.handle.user_id.set(claims.sub.clone().into_boxed_str());
        self.identity = Some(Box::new(Identity {
            user: User::with_id(claims.sub.clone(), claims.name),
            sub: claims.sub,
            rooms: claims.rooms,
            publish: claims.publish,
        }));
        self.welcome();
        Ok(())
    }

    /// jwt mode: a new token for the same `sub` moves the expiry (and the permissions).
    async fn refresh(&mut self, token: &str, reference: Option<&str>) -> Result<(), FrameError> {
        let claims = self.verify(token).await?;
        let Some(identity) = self.identity.as_mut() else {
            return Ok(());
        };
        if claims.sub != identity.sub {
            self.env.metrics().refused("unauthorized");
            return Err(FrameError::new(
                ErrorCode::Unauthorized,
                "the new token is for another user (`sub` differs)",
            ));
        }
        identity.rooms = claims.rooms;
        identity.publish = claims.publish;
        self.set_expiry(claims.exp);
        let frame = ServerFrame::Refreshed {
            reference,
            exp: claims.exp.unwrap_or(0),
        }
        .encode();
        self.handle.push(Out::Frame(Box::new(frame)));
        Ok(())
    }

    /// Sets the session's close at the token's `exp` (plus the leeway it was accepted
    /// with) and the `expiring` notice `auth.refresh_notice` before it.
    fn set_expiry(&self, exp: Option<u64>) {
        let auth = &self.env.config().auth;
        let Some(exp) = exp else {
            self.handle.ctl.set_token_expiry(u64::MAX, u64::MAX);
            return;
        };
        let now_unix_ms = clock::unix_micros() / 1000;
        // `exp` is the token's (signed, but any number): saturate rather than overflow.
        let leeway_ms = u64::try_from(auth.jwt.leeway.as_millis()).unwrap_or(u64::MAX);
        let left_ms = exp
            .saturating_mul(1000)
            .saturating_add(leeway_ms)
            .saturating_sub(now_unix_ms);
        let now = clock::monotonic_ms();
        let expires = now.saturating_add(left_ms);
        let notice = expires.saturating_sub(auth.refresh_notice.as_millis() as u64);
        self.handle.ctl.set_token_expiry(expires, notice.max(now));
    }

    fn welcome(&self) {
        let welcome = ServerFrame::Welcome {
            node: self.env.rooms().node(),
            conn: &self.conn,
        }
        .encode();
        self.handle.push(Out::Frame(Box::new(welcome)));
    }

    async fn join(&mut self, room: String, asked: JoinAsk<'_>) -> Result<(), FrameError> {
        let JoinAsk {
            name,
            since,
            room_token,
            history,
        } = asked;
        validate_room(&room)?;
        let user = match &self.identity {
            // jwt mode: the token names the user; the room must be allowed by the
            // connection token or granted by a room token.
            Some(identity) => {
                if !auth::allows(identity.rooms.as_deref(), &room) {
                    match (room_token, self.env.verifier()) {
                        (Some(token), Some(verifier)) => {
                            verifier
                                .verify_room_token(token, &identity.sub, &room)
                                .await
                                .map_err(|e| self.token_refused(e))?;
                        }
                        _ => {
                            self.env.metrics().refused("forbidden");
                            return Err(FrameError::new(
                                ErrorCode::Forbidden,
                                format!("your token does not allow room {room}"),
                            ));
                        }
                    }
                }
                identity.user.clone()
            }
            None => {
                let name = name.ok_or_else(|| {
                    FrameError::new(ErrorCode::BadRequest, "missing field `name`")
                })?;
                User::new(normalize_name(name)?)
            }
        };
        let since = since.map(|s| s.parse::<MsgId>()).transpose().map_err(|_| {
            FrameError::new(
                ErrorCode::BadRequest,
                "`since` must be a message id like \"1732258000000-0\"",
            )
        })?;
        self.forget_if_removed(&room);
        if self.memberships.rooms.contains_key(&room) {
            return Err(FrameError::new(
                ErrorCode::AlreadyJoined,
                format!("already joined {room}"),
            ));
        }
        let max = self.env.config().limits.max_rooms_per_connection;
        if self.memberships.rooms.len() >= max {
            return Err(FrameError::new(
                ErrorCode::TooManyRooms,
                format!("at most {max} rooms per connection"),
            ));
        }
        // The rooms' own allocation of the name when the room is here already, so the
        // writer matches the room's frames by pointer (see `RoomMap`).
        let room: Arc<str> = self.env.rooms().name(&room);
        let member = MemberRef {
            node: self.env.rooms().node().clone(),
            conn: self.conn.clone(),
            user,
        };
        // Frames for the room are held by the writer until the join is answered.
        self.handle.push(Out::Hold(Box::new(room.clone())));
        let joined = self
            .env
            .rooms()
            .join(
                &room,
                self.key,
                self.handle.clone(),
                member.clone(),
                since,
                history.min(self.env.config().history.size),
            )
            .instrument(info_span!("join", room = %room))
            .await;
        let joined = match joined {
            Ok(joined) => joined,
            Err(e) => {
                self.handle.push(Out::Abort(Box::new(room)));
                return Err(refusal(e));
            }
        };
        let frame = ServerFrame::Joined {
            room: &room,
            you: &member.user,
            members: &joined.members.members,
            member_count: joined.members.count,
            members_next: joined.members.next.as_deref(),
            offset: joined.head,
            recovered: joined.recovered,
        }
        .encode();
        self.memberships.rooms.insert(room.clone(), member);
        self.handle.push(Out::Release(Box::new(Release {
            room,
            joined: frame,
            replay: joined.replay,
            cursor: joined.head,
            presence: joined.pseq,
        })));
        Ok(())
    }

    /// Forgets a membership the server API ended (the rooms no longer list this session
    /// there): the session then acts as if it had left.
    fn forget_if_removed(&mut self, room: &str) {
        if self.memberships.rooms.contains_key(room) && !self.env.rooms().is_member(room, self.key)
        {
            self.memberships.rooms.remove(room);
        }
    }

    async fn leave(&mut self, room: &str) -> Result<(), FrameError> {
        validate_room(room)?;
        self.forget_if_removed(room);
        let Some((room, member)) = self.memberships.rooms.remove(room) else {
            return Err(not_joined(room));
        };
        Box::pin(self.env.rooms().leave(&room, self.key, &member)).await;
        self.handle.push(Out::Left(Box::new(room)));
        Ok(())
    }

    /// The membership of a room this session may send to (or type in).
    fn sender_in(&mut self, room: &str, what: &str) -> Result<User, FrameError> {
        validate_room(room)?;
        self.forget_if_removed(room);
        let Some(member) = self.memberships.rooms.get(room) else {
            return Err(not_joined(room));
        };
        if let Some(identity) = &self.identity
            && !auth::allows(identity.publish.as_deref(), room)
        {
            self.env.metrics().refused("forbidden");
            return Err(FrameError::new(
                ErrorCode::Forbidden,
                format!("your token does not allow {what} {room}"),
            ));
        }
        Ok(member.user.clone())
    }

    async fn send(
        &mut self,
        room: &str,
        text: String,
        idem: Option<String>,
        reference: Option<&str>,
    ) -> Result<(), FrameError> {
        let user = self.sender_in(room, "sending to")?;
        check_text(&text, self.env.config().limits.max_text_bytes)?;
        self.env.metrics().messages_received.inc();
        // An idempotency key is the sender's own: scoped by user id, or (anonymous) by
        // name, so two users' keys never collide.
        let idem = idem.map(|key| Idem {
            key: match &user.id {
                Some(id) => format!("u:{}:{id}:{key}", id.len()),
                None => format!("n:{}:{}:{key}", user.name.len(), user.name),
            },
            ttl_ms: self.env.config().api.idempotency_ttl.as_millis() as u64,
        });
        let text = match &self.env.inner.hook {
            None => text,
            Some(hook) => match hook.check(room, &user, &text, &self.conn).await {
                Verdict::Allow => text,
                Verdict::Rewrite(new) => {
                    check_text(&new, self.env.config().limits.max_text_bytes).map_err(|e| {
                        FrameError::new(
                            ErrorCode::Rejected,
                            format!("the publish hook's rewrite is invalid: {}", e.message),
                        )
                    })?;
                    new
                }
                Verdict::Deny(reason) => {
                    return Err(FrameError::new(ErrorCode::Rejected, reason));
                }
            },
        };
        let rooms = self.env.rooms();
        let span = info_span!("send", node = %rooms.node(), room = %room);
        let published = rooms
            .publish(
                room,
                &user,
                &self.conn,
                text,
                telemetry::traceparent(&span),
                idem,
            )
            .instrument(span)
            .await
            .map_err(refusal)?;
        let ack = ServerFrame::Ack {
            reference,
            id: published.id,
            duplicate: published.duplicate,
        }
        .encode();
        self.handle.push(Out::Frame(Box::new(ack)));
        Ok(())
    }

    /// Relays "typing" to the room's other members (throttled to one a second per user;
    /// extra ones are dropped without an error).
    async fn typing(&mut self, room: &str) -> Result<(), FrameError> {
        let user = self.sender_in(room, "typing in")?;
        self.env
            .rooms()
            .typing(room, &user, &self.conn)
            .await
            .map_err(refusal)
    }

    /// A page of a joined room's members (every replica's), after the cursor `after`.
    async fn members(
        &mut self,
        room: &str,
        after: Option<&str>,
        limit: Option<u32>,
        reference: Option<&str>,
    ) -> Result<(), FrameError> {
        validate_room(room)?;
        self.forget_if_removed(room);
        if !self.memberships.rooms.contains_key(room) {
            return Err(not_joined(room));
        }
        let page = self
            .env
            .rooms()
            .members(room, after, limit.map(|l| l as usize))
            .await
            .map_err(refusal)?;
        self.env.metrics().members_pages.inc();
        let frame = ServerFrame::Members {
            room,
            members: &page.members,
            member_count: page.count,
            next: page.next.as_deref(),
            reference,
        }
        .encode();
        self.handle.push(Out::Frame(Box::new(frame)));
        Ok(())
    }

    fn send_error(&self, error: FrameError) {
        self.env.metrics().error(error.code);
        self.handle.push(Out::Frame(Box::new(error.encode())));
    }
}

/// What a `join` asked for besides the room.
struct JoinAsk<'a> {
    name: Option<&'a str>,
    since: Option<&'a str>,
    room_token: Option<&'a str>,
    history: usize,
}

/// A message text's limits: not empty, at most `max` bytes.
pub(crate) fn check_text(text: &str, max: usize) -> Result<(), FrameError> {
    if text.len() > max {
        return Err(FrameError::new(
            ErrorCode::TooLarge,
            format!("text is {} bytes; the limit is {max}", text.len()),
        ));
    }
    if text.is_empty() {
        return Err(FrameError::new(
            ErrorCode::BadRequest,
            "text must not be empty",
        ));
    }
    Ok(())
}

/// What the client is told when the rooms refuse an operation.
pub(crate) fn refusal(e: RoomError) -> FrameError {
    match e {
        RoomError::Barred { ms } => FrameError::new(
            ErrorCode::Forbidden,
            format!(
                "you were removed from this room; you may join again in {} s",
                ms.div_ceil(1000)
            ),
        ),
        RoomError::Draining => FrameError::new(
            ErrorCode::Draining,
            "this node is draining; reconnect to another",
        ),
        RoomError::Unavailable => FrameError::new(
            ErrorCode::Unavailable,
            "the message bus is unavailable; nothing was done, retry later",
        ),
    }
}

fn not_joined(room: &str) -> FrameError {
    FrameError::new(ErrorCode::NotJoined, format!("not joined to {room}"))
}

/// This session's rooms; dropping it leaves all of them (announced by a spawned task),
/// so nothing is left behind if the session ends early or panics.
struct Memberships {
    rooms: RoomMap<MemberRef>,
    env: Env,
    key: u64,
}

impl Memberships {
    async fn leave_all(&mut self) {
        for (room, member) in std::mem::take(&mut self.rooms) {
            self.env.rooms().leave(&room, self.key, &member).await;
        }
    }
}

impl Drop for Memberships {
    fn drop(&mut self) {
        if self.rooms.is_empty() {
            return;
        }
        let rooms = std::mem::take(&mut self.rooms);
        let env = self.env.clone();
        let key = self.key;
        // Only reached on an early exit or a panic; the normal path awaits leave_all.
        self.env.sessions().tracker().spawn(async move {
            for (room, member) in rooms {
                env.rooms().leave(&room, key, &member).await;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::Bus;
    use tokio_util::sync::CancellationToken;

    fn env() -> (Env, CancellationToken) {
        let config = Config::default();
        let node: Arc<str> = Arc::from("n1");
        let (bus, rx) = Bus::connect(&config, node.clone()).expect("memory bus");
        let metrics = Arc::new(Metrics::new(10));
        let rooms = Rooms::new(node, bus, metrics.clone(), &config.presence);
        let stop = CancellationToken::new();
        rooms.spawn_receiver(rx, stop.clone());
        (Env::new(config, rooms, metrics, None, None), stop)
    }

    /// A detached handle: what it would write stays pending, for the test to read.
    fn handle(queue: usize) -> Arc<Handle> {
        Handle::new(None, Arc::new(Metrics::new(10)), queue, None)
    }

    fn member(conn: &str, name: &str) -> MemberRef {
        MemberRef {
            node: Arc::from("n1"),
            conn: Arc::from(conn),
            user: User::new(name.into()),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn heartbeat_closes_only_sessions_silent_past_the_timeout() {
        let sessions = Sessions::default();
        let quiet = handle(4);
        let chatty = handle(4);
        sessions.register(quiet.clone());
        sessions.register(chatty.clone());
        let timeout = Duration::from_secs(60);
        tokio::time::advance(Duration::from_secs(59)).await;
        chatty.ctl.touch();
        sessions.heartbeat(timeout);
        assert!(!quiet.ctl.is_closed() && !chatty.ctl.is_closed());
        assert_eq!(chatty.out.pending(), [vec![0x89, 0]], "a ping frame");
        tokio::time::advance(Duration::from_secs(2)).await;
        sessions.heartbeat(timeout);
        assert_eq!(
            (quiet.ctl.is_closed(), quiet.ctl.reason()),
            (true, DisconnectReason::Heartbeat)
        );
        assert!(!chatty.ctl.is_closed(), "heard from 2 s ago");
    }

    /// A room frame for `room` with `text` as its whole payload.
    fn room_frame(room: &Arc<str>, text: &'static str) -> Arc<RoomFrame> {
        Arc::new(RoomFrame {
            room: room.clone(),
            frame: axum::extract::ws::Utf8Bytes::from_static(text),
            id: None,
            ts_us: 0,
            pseq: 0,
            deflated: Default::default(),
        })
    }

    /// A handle writing to a real loopback socket, joined to `hall` (its `joined` frame
    /// is "J"); the client's end of the socket.
    async fn joined_on_a_socket(queue: usize) -> (Arc<Handle>, Arc<str>, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let (server, _) = accepted.expect("accept");
        let (_read, write) = server.into_split();
        let h = Handle::new(Some(write), Arc::new(Metrics::new(10)), queue, None);
        let room: Arc<str> = Arc::from("hall");
        h.push(Out::Hold(Box::new(room.clone())));
        h.push(Out::Release(Box::new(Release {
            room: room.clone(),
            joined: axum::extract::ws::Utf8Bytes::from_static("J"),
            replay: Vec::new(),
            cursor: crate::protocol::MsgId::ZERO,
            presence: 0,
        })));
        (h, room, client.expect("connect"))
    }

    /// Reads `n` text frames of one byte each from the client's end: their payloads.
    async fn one_byte_frames(client: &mut TcpStream, n: usize) -> Vec<u8> {
        use tokio::io::AsyncReadExt;
        let mut got = Vec::new();
        while got.len() < n * 3 {
            let mut buf = [0u8; 64];
            let read = tokio::time::timeout(Duration::from_secs(5), client.read(&mut buf))
                .await
                .expect("every frame arrives")
                .expect("read");
            assert!(read > 0, "connection open");
            got.extend_from_slice(&buf[..read]);
        }
        got.chunks(3).map(|f| f[2]).collect()
    }

    #[tokio::test]
    async fn frames_of_a_burst_are_queued_then_written_together_in_order() {
        let (h, room, mut client) = joined_on_a_socket(16).await;
        // Written at once: nothing pending.
        assert!(h.out.pending().is_empty());
        for text in ["a", "b", "c"] {
            Member::deliver_later(&*h, room_frame(&room, text));
        }
        // Queued, not written: this (single-threaded) runtime has not run the flush yet.
        assert_eq!(h.out.pending().len(), 3);
        // A frame written at once by someone else goes behind them, not before.
        Member::deliver(&*h, room_frame(&room, "d"));
        assert_eq!(h.out.pending().len(), 4);
        assert_eq!(one_byte_frames(&mut client, 5).await, b"Jabcd");
        assert!(h.out.pending().is_empty());
    }

    #[tokio::test]
    async fn a_long_burst_is_written_by_its_caller_before_the_queue_fills() {
        // A queue of 4: deferred frames are written once 2 are pending.
        let (h, room, mut client) = joined_on_a_socket(4).await;
        const TEXTS: [&str; 10] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];
        for text in TEXTS {
            Member::deliver_later(&*h, room_frame(&room, text));
            assert!(h.out.pending().len() < 2, "written by the caller at 2");
        }
        assert!(
            !h.ctl.is_closed(),
            "a reading client is not a slow consumer"
        );
        assert_eq!(one_byte_frames(&mut client, 11).await, b"J0123456789");
    }

    #[tokio::test]
    async fn a_full_queue_closes_the_session_as_a_slow_consumer() {
        let sessions = Sessions::default();
        let h = handle(1);
        sessions.register(h.clone());
        sessions.heartbeat(Duration::from_secs(60));
        assert!(!h.ctl.is_closed());
        sessions.heartbeat(Duration::from_secs(60));
        assert_eq!(h.ctl.reason(), DisconnectReason::SlowConsumer);
    }

    #[tokio::test]
    async fn a_panicking_session_still_leaves_its_rooms() {
        let (env, stop) = env();
        let room: Arc<str> = Arc::from("hall");
        let alice = member("c1", "alice");
        let h = handle(16);
        env.rooms()
            .join(&room, 1, h, alice.clone(), None, 0)
            .await
            .expect("join");
        assert_eq!(env.rooms().room_count(), 1);

        let task_env = env.clone();
        let task_room = room.clone();
        let session = tokio::spawn(async move {
            let mut memberships = Memberships {
                rooms: RoomMap::default(),
                env: task_env,
                key: 1,
            };
            memberships.rooms.insert(task_room, alice);
            panic!("a bug in a session task");
        });
        assert!(session.await.expect_err("the task panicked").is_panic());

        // The guard's cleanup runs on the tracker; wait for it.
        env.sessions().tracker().close();
        env.sessions().tracker().wait().await;
        assert_eq!(
            env.rooms().room_count(),
            0,
            "the room was left and forgotten"
        );
        let h2 = handle(16);
        let bob = member("c2", "bob");
        let joined = env
            .rooms()
            .join(&room, 2, h2, bob.clone(), None, 0)
            .await
            .expect("join");
        assert_eq!(
            joined.members.members,
            vec![bob.user],
            "alice's presence is gone"
        );
        stop.cancel();
    }
}
