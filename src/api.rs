//! The server API (`/api/v1/`) for a product's backend, on the client listener: publish
//! into rooms (idempotent with a key), read history with cursors, list members and rooms,
//! disconnect a user everywhere and remove a user from a room. Every call goes through
//! [`Rooms`], so an API message takes the room's next offset, reaches members on every
//! replica in one order with client messages and lands in the same history.
//!
//! Enabled only when `api.keys` (or `api.keys_file`) names keys: `Authorization: Bearer
//! <key>`, compared in constant time, limited to `api.requests_per_second` per key; with
//! no keys every path under the prefix answers 404. Errors are
//! `{"error":{"code":..,"message":..}}` with the protocol's codes. The OpenAPI 3.1
//! document ([`ApiDoc`], served at `/api/v1/openapi.json`) is derived from the handlers
//! below; docs/api.md is the guide.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::rejection::{BytesRejection, JsonRejection, PathRejection};
use axum::extract::{DefaultBodyLimit, MatchedPath, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use tracing::{Instrument, info, info_span};
use utoipa::{OpenApi, ToSchema};

use crate::bus::{Envelope, HistoryRange, Idem};
use crate::config::{Config, ConfigError};
use crate::metrics::Metrics;
use crate::protocol::{ErrorCode, FrameError, MsgId, User, normalize_name, validate_room};
use crate::rooms::{ControlOutcome, RoomError, Rooms};
use crate::session::limits::TokenBucket;
use crate::session::{check_text, refusal};
use crate::telemetry;

/// The API's path prefix.
pub(crate) const PREFIX: &str = "/api/v1";
/// Longest `idempotency_key` accepted.
const MAX_IDEMPOTENCY_KEY_BYTES: usize = 128;
/// Longest user id accepted in `from.id` and in paths.
const MAX_USER_ID_BYTES: usize = 256;
/// Most history entries one page returns.
const MAX_PAGE: usize = 1000;
/// The id and name of messages published without `from`.
const SYSTEM_USER: &str = "system";

/// The keys the API accepts: `api.keys` plus the lines of `api.keys_file`.
pub(crate) fn load_keys(config: &Config) -> Result<Vec<String>, ConfigError> {
    let mut keys: Vec<String> = config
        .api
        .keys
        .iter()
        .map(|k| k.trim().to_string())
        .collect();
    if let Some(path) = &config.api.keys_file {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Invalid {
            key: "api.keys_file",
            reason: format!("cannot read {}: {e}", path.display()),
        })?;
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if line.len() < 16 {
                return Err(ConfigError::Invalid {
                    key: "api.keys_file",
                    reason: "every key must be at least 16 characters".into(),
                });
            }
            keys.push(line.to_string());
        }
    }
    keys.retain(|k| !k.is_empty());
    Ok(keys)
}

/// Shared by every API request.
#[derive(Clone)]
struct Api {
    inner: Arc<ApiInner>,
}

struct ApiInner {
    rooms: Rooms,
    metrics: Arc<Metrics>,
    config: Config,
    keys: Vec<Vec<u8>>,
    /// One bucket per key (same order as `keys`).
    buckets: Vec<Mutex<TokenBucket>>,
}

/// The API's routes, to be merged into the client router: the endpoints when `keys` is
/// non-empty, else a 404 for everything under the prefix.
pub(crate) fn router(
    rooms: Rooms,
    metrics: Arc<Metrics>,
    config: &Config,
    keys: Vec<String>,
) -> Router {
    if keys.is_empty() {
        return Router::new()
            .route(PREFIX, axum::routing::any(disabled))
            .route(&format!("{PREFIX}/{{*rest}}"), axum::routing::any(disabled));
    }
    let rate = config.api.requests_per_second;
    let api = Api {
        inner: Arc::new(ApiInner {
            rooms,
            metrics,
            buckets: keys
                .iter()
                .map(|_| Mutex::new(TokenBucket::new(rate, rate)))
                .collect(),
            keys: keys.into_iter().map(String::into_bytes).collect(),
            config: config.clone(),
        }),
    };
    let protected = Router::new()
        .route("/rooms", get(list_rooms))
        .route("/rooms/{room}/messages", post(publish))
        .route("/rooms/{room}/history", get(history))
        .route("/rooms/{room}/members", get(members))
        .route("/rooms/{room}/members/{id}", delete(kick))
        .route("/users/{id}/disconnect", post(disconnect))
        .route_layer(middleware::from_fn_with_state(api.clone(), authorize));
    let v1 = Router::new()
        .route("/openapi.json", get(openapi))
        .route("/", axum::routing::any(not_found))
        .merge(protected)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(api.clone(), count))
        .layer(DefaultBodyLimit::max(config.api.max_body_bytes))
        .with_state(api);
    // `nest` does not route the prefix with a trailing slash to the nested fallback.
    Router::new()
        .nest(PREFIX, v1)
        .route(&format!("{PREFIX}/"), axum::routing::any(not_found))
}

/// An API error: the HTTP status and `{"error":{"code":..,"message":..}}`.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

/// The error body.
#[derive(Serialize, ToSchema)]
pub(crate) struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct ErrorDetail {
    /// A protocol error code (`bad_request`, `invalid_room`, `unauthorized`, ...), or
    /// `not_found` for a path the API does not have.
    code: String,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadRequest.as_str(),
            message,
        )
    }
}

impl From<FrameError> for ApiError {
    fn from(e: FrameError) -> Self {
        let status = match e.code {
            ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::Unavailable | ErrorCode::Draining => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorCode::Forbidden => StatusCode::FORBIDDEN,
            ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        };
        ApiError::new(status, e.code.as_str(), e.message)
    }
}

impl From<RoomError> for ApiError {
    fn from(e: RoomError) -> Self {
        refusal(e).into()
    }
}

/// A body or path the extractors refused: 413 `too_large` for a body over
/// `api.max_body_bytes`, 415 for a body that is not `application/json`, else 400
/// `bad_request` (missing, wrong-typed or unknown fields, bad JSON, a path that is not UTF-8).
fn rejection(status: StatusCode, text: String) -> ApiError {
    match status {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(status, ErrorCode::TooLarge.as_str(), text),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => {
            ApiError::new(status, ErrorCode::BadRequest.as_str(), text)
        }
        _ => ApiError::bad_request(text),
    }
}

impl From<JsonRejection> for ApiError {
    fn from(e: JsonRejection) -> Self {
        rejection(e.status(), e.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(e: PathRejection) -> Self {
        rejection(e.status(), e.body_text())
    }
}

impl From<BytesRejection> for ApiError {
    fn from(e: BytesRejection) -> Self {
        rejection(e.status(), e.body_text())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message,
            },
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

type ApiResult<T> = Result<axum::Json<T>, ApiError>;

async fn disabled() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "the server API is disabled on this gateway (api.keys is empty)",
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::BadRequest.as_str(),
        "this endpoint does not take that method; see /api/v1/openapi.json",
    )
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint; see /api/v1/openapi.json",
    )
}

/// Checks the bearer key (constant time, every key compared) and the key's rate limit.
async fn authorize(State(api): State<Api>, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, key)| key.trim());
    let Some(presented) = presented else {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthorized.as_str(),
            "missing `Authorization: Bearer <key>`",
        )
        .into_response();
    };
    let mut matched = None;
    for (i, key) in api.inner.keys.iter().enumerate() {
        if bool::from(key.as_slice().ct_eq(presented.as_bytes())) {
            matched = Some(i);
        }
    }
    let Some(i) = matched else {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthorized.as_str(),
            "the API key is not valid",
        )
        .into_response();
    };
    let allowed = api.inner.buckets[i]
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .take();
    if !allowed {
        return ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::RateLimited.as_str(),
            format!(
                "more than {} requests per second with this key",
                api.inner.config.api.requests_per_second
            ),
        )
        .into_response();
    }
    next.run(request).await
}

/// Counts each request under `roomcast_api_requests_total{endpoint,status}`.
async fn count(State(api): State<Api>, request: Request, next: Next) -> Response {
    let endpoint = endpoint_label(
        request.method(),
        request
            .extensions()
            .get::<MatchedPath>()
            .map(MatchedPath::as_str),
    );
    let response = next.run(request).await;
    api.inner
        .metrics
        .api_requests
        .with_label_values(&[endpoint, response.status().as_str()])
        .inc();
    response
}

/// The endpoint label of a request: a fixed set, whatever the path holds.
fn endpoint_label(method: &axum::http::Method, path: Option<&str>) -> &'static str {
    let path = path
        .and_then(|p| p.strip_prefix(PREFIX))
        .unwrap_or_default();
    match (method.as_str(), path) {
        ("POST", "/rooms/{room}/messages") => "publish",
        ("GET", "/rooms/{room}/history") => "history",
        ("GET", "/rooms/{room}/members") => "members",
        ("DELETE", "/rooms/{room}/members/{id}") => "kick",
        ("GET", "/rooms") => "rooms",
        ("POST", "/users/{id}/disconnect") => "disconnect",
        ("GET", "/openapi.json") => "openapi",
        _ => "other",
    }
}

/// A user as the API shows it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct ApiUser {
    /// The user id (`sub` of the token; `system` for API messages without `from`);
    /// absent for anonymous users.
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    name: String,
    /// The colour clients show the name in.
    color: String,
}

impl From<User> for ApiUser {
    fn from(u: User) -> Self {
        ApiUser {
            id: u.id,
            name: u.name,
            color: u.color,
        }
    }
}

/// Who an API message is from.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Sender {
    id: String,
    name: String,
}

/// `POST /api/v1/rooms/{room}/messages`
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PublishRequest {
    text: String,
    /// The sender as members see it; without it, the system user (`{"id":"system"}`).
    #[serde(default)]
    from: Option<Sender>,
    /// A repeated key for the same room within `api.idempotency_ttl` returns the first
    /// call's id and publishes nothing. At most 128 bytes.
    #[serde(default)]
    idempotency_key: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct PublishResponse {
    /// The message id (the room offset, like `1732258000000-0`).
    id: String,
    /// True when the idempotency key was seen before: `id` is the first call's.
    duplicate: bool,
}

/// Publishes a message into a room, as a member would.
#[utoipa::path(
    post,
    path = "/api/v1/rooms/{room}/messages",
    params(("room" = String, Path, description = "The room")),
    request_body = PublishRequest,
    responses(
        (status = 200, description = "Published (or a duplicate of an earlier call)", body = PublishResponse),
        (status = 400, description = "Bad room, text, sender or key; malformed JSON, missing, wrong-typed or unknown fields", body = ErrorBody),
        (status = 401, description = "Missing or wrong key", body = ErrorBody),
        (status = 413, description = "Body or text too large", body = ErrorBody),
        (status = 415, description = "The body is not `application/json`", body = ErrorBody),
        (status = 429, description = "Rate limit of the key", body = ErrorBody),
        (status = 503, description = "The bus is unavailable; nothing was published", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn publish(
    State(api): State<Api>,
    room: Result<Path<String>, PathRejection>,
    body: Result<axum::Json<serde_json::Value>, JsonRejection>,
) -> ApiResult<PublishResponse> {
    let Path(room) = room?;
    let axum::Json(body) = body?;
    // Through a JSON value: serde would also read a struct from an array.
    if !body.is_object() {
        return Err(ApiError::bad_request("the body must be a JSON object"));
    }
    let body: PublishRequest = serde_json::from_value(body)
        .map_err(|e| ApiError::bad_request(format!("bad body: {e}")))?;
    validate_room(&room)?;
    check_text(&body.text, api.inner.config.limits.max_text_bytes)?;
    let from = match body.from {
        None => User::with_id(SYSTEM_USER.into(), SYSTEM_USER.into()),
        Some(f) => {
            check_user_id(&f.id)?;
            User::with_id(f.id, normalize_name(&f.name)?)
        }
    };
    let idem = match body.idempotency_key {
        None => None,
        Some(key) if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_BYTES => {
            return Err(ApiError::bad_request(format!(
                "`idempotency_key` must be 1 to {MAX_IDEMPOTENCY_KEY_BYTES} bytes"
            )));
        }
        Some(key) => Some(Idem {
            key: format!("a:{key}"),
            ttl_ms: api.inner.config.api.idempotency_ttl.as_millis() as u64,
        }),
    };
    let rooms = &api.inner.rooms;
    let span = info_span!("api_publish", node = %rooms.node(), room = %room);
    let published = rooms
        .publish(
            &room,
            &from,
            "api",
            body.text,
            telemetry::traceparent(&span),
            idem,
        )
        .instrument(span)
        .await?;
    Ok(axum::Json(PublishResponse {
        id: published.id.to_string(),
        duplicate: published.duplicate,
    }))
}

/// The query of `GET /api/v1/rooms/{room}/history`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct HistoryQuery {
    /// Entries per page (1 to 1000; default 50).
    limit: Option<usize>,
    /// Entries older than this id (the `next.before` of the previous page).
    before: Option<String>,
    /// Entries newer than this id (the `next.after` of the previous page; a client's
    /// last seen id resumes from there).
    after: Option<String>,
}

/// One message in history.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ApiMessage {
    id: String,
    from: ApiUser,
    text: String,
    /// Publish time, Unix milliseconds.
    ts: u64,
}

/// Where the next page starts; absent when there is none in that direction.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Cursor {
    #[serde(skip_serializing_if = "Option::is_none")]
    before: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    after: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct HistoryResponse {
    room: String,
    /// Oldest first, in room order.
    messages: Vec<ApiMessage>,
    /// The next page in the direction read (`before` for the newest page and `before`
    /// reads, `after` for `after` reads), or null at the end of the history kept.
    next: Option<Cursor>,
}

/// A page of a room's history: the newest `limit` messages, or those before/after an id.
#[utoipa::path(
    get,
    path = "/api/v1/rooms/{room}/history",
    params(("room" = String, Path, description = "The room"), HistoryQuery),
    responses(
        (status = 200, description = "One page, oldest first", body = HistoryResponse),
        (status = 400, description = "Bad room, cursor or limit", body = ErrorBody),
        (status = 401, description = "Missing or wrong key", body = ErrorBody),
        (status = 503, description = "The bus is unavailable", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn history(
    State(api): State<Api>,
    room: Result<Path<String>, PathRejection>,
    query: Result<Query<HistoryQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<HistoryResponse> {
    let Path(room) = room?;
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    validate_room(&room)?;
    let limit = query.limit.unwrap_or(50);
    if limit == 0 || limit > MAX_PAGE {
        return Err(ApiError::bad_request(format!(
            "`limit` must be 1 to {MAX_PAGE}"
        )));
    }
    let parse = |name: &str, v: &str| {
        v.parse::<MsgId>().map_err(|_| {
            ApiError::bad_request(format!(
                "`{name}` must be a message id like \"1732258000000-0\""
            ))
        })
    };
    let range = match (&query.before, &query.after) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request("give `before` or `after`, not both"));
        }
        (Some(b), None) => HistoryRange::Before(parse("before", b)?),
        (None, Some(a)) => HistoryRange::After(parse("after", a)?),
        (None, None) => HistoryRange::Latest,
    };
    let page = api.inner.rooms.history(&room, range, limit).await?;
    let messages: Vec<ApiMessage> = page
        .entries
        .iter()
        .filter_map(|(id, payload)| match Envelope::decode(payload) {
            Ok(Envelope::Message { from, text, ts, .. }) => Some(ApiMessage {
                id: id.to_string(),
                from: from.into(),
                text,
                ts: ts / 1000,
            }),
            _ => None,
        })
        .collect();
    // Cursors come from the entries read (a skipped undecodable entry still moves them).
    let next = match range {
        _ if !page.more => None,
        HistoryRange::After(_) => page.entries.last().map(|(id, _)| Cursor {
            before: None,
            after: Some(id.to_string()),
        }),
        _ => page.entries.first().map(|(id, _)| Cursor {
            before: Some(id.to_string()),
            after: None,
        }),
    };
    Ok(axum::Json(HistoryResponse {
        room,
        messages,
        next,
    }))
}

/// The query of `GET /api/v1/rooms/{room}/members`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct MembersQuery {
    /// Members per page (1 to 1000; default 1000).
    limit: Option<usize>,
    /// Members after this cursor (the `next` of the previous page).
    after: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct MembersResponse {
    room: String,
    /// One page of the users present on any replica, once per user.
    members: Vec<ApiUser>,
    /// The room's member count (every page's members, once per user).
    count: u64,
    /// Pass as `after` for the next page; null on the last page.
    next: Option<String>,
}

/// Who is in a room, on every replica, one page at a time. Members present for the
/// whole paging appear exactly once.
#[utoipa::path(
    get,
    path = "/api/v1/rooms/{room}/members",
    params(("room" = String, Path, description = "The room"), MembersQuery),
    responses(
        (status = 200, description = "One page of the room's members", body = MembersResponse),
        (status = 400, description = "Bad room, cursor or limit", body = ErrorBody),
        (status = 401, description = "Missing or wrong key", body = ErrorBody),
        (status = 503, description = "The bus is unavailable", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn members(
    State(api): State<Api>,
    room: Result<Path<String>, PathRejection>,
    query: Result<Query<MembersQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<MembersResponse> {
    let Path(room) = room?;
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    validate_room(&room)?;
    let limit = query.limit.unwrap_or(MAX_PAGE);
    if limit == 0 || limit > MAX_PAGE {
        return Err(ApiError::bad_request(format!(
            "`limit` must be 1 to {MAX_PAGE}"
        )));
    }
    if query
        .after
        .as_ref()
        .is_some_and(|a| a.is_empty() || a.len() > crate::protocol::MAX_CURSOR_BYTES)
    {
        return Err(ApiError::bad_request(format!(
            "`after` must be 1 to {} bytes",
            crate::protocol::MAX_CURSOR_BYTES
        )));
    }
    let page = api
        .inner
        .rooms
        .members(&room, query.after.as_deref(), Some(limit))
        .await?;
    api.inner.rooms.count_members_page();
    Ok(axum::Json(MembersResponse {
        room,
        count: page.count,
        next: page.next,
        members: page.members.into_iter().map(ApiUser::from).collect(),
    }))
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct RoomEntry {
    room: String,
    /// Members on every replica, once per user.
    members: usize,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct RoomsResponse {
    /// Rooms with at least one member anywhere, by name.
    rooms: Vec<RoomEntry>,
}

/// Every room with at least one member on any replica.
#[utoipa::path(
    get,
    path = "/api/v1/rooms",
    responses(
        (status = 200, description = "Rooms with members", body = RoomsResponse),
        (status = 401, description = "Missing or wrong key", body = ErrorBody),
        (status = 503, description = "The bus is unavailable", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn list_rooms(State(api): State<Api>) -> ApiResult<RoomsResponse> {
    let rooms = api
        .inner
        .rooms
        .list()
        .await?
        .into_iter()
        .map(|(room, members)| RoomEntry { room, members })
        .collect();
    Ok(axum::Json(RoomsResponse { rooms }))
}

/// `POST /api/v1/users/{id}/disconnect`
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct DisconnectRequest {
    /// Told to each connection (an `error` frame, code `forbidden`) before it closes.
    #[serde(default)]
    reason: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct DisconnectResponse {
    /// Connections closed with 4003, over every replica that answered.
    closed: u64,
    /// Replicas that received the request.
    replicas: usize,
    /// Replicas that answered within 3 s (fewer than `replicas`: the count may be short).
    answered: usize,
}

/// Closes every connection of a user, on every replica, with 4003 `forbidden`.
#[utoipa::path(
    post,
    path = "/api/v1/users/{id}/disconnect",
    params(("id" = String, Path, description = "The user id (the token's `sub`; in anonymous mode, the display name)")),
    request_body(content = DisconnectRequest, description = "Optional"),
    responses(
        (status = 200, description = "How many connections closed", body = DisconnectResponse),
        (status = 400, description = "Bad id or body", body = ErrorBody),
        (status = 401, description = "Missing or wrong key", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "A body that is not `application/json`", body = ErrorBody),
        (status = 503, description = "The bus is unavailable; nobody was disconnected", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn disconnect(
    State(api): State<Api>,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Result<axum::body::Bytes, BytesRejection>,
) -> ApiResult<DisconnectResponse> {
    let Path(id) = id?;
    let body = body?;
    check_user_id(&id)?;
    let request: DisconnectRequest = if body.iter().all(u8::is_ascii_whitespace) {
        DisconnectRequest::default()
    } else {
        let is_json = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        if !is_json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                ErrorCode::BadRequest.as_str(),
                "send the body as Content-Type: application/json",
            ));
        }
        let value: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("bad JSON body: {e}")))?;
        if !value.is_object() {
            return Err(ApiError::bad_request("the body must be a JSON object"));
        }
        serde_json::from_value(value)
            .map_err(|e| ApiError::bad_request(format!("bad body: {e}")))?
    };
    if let Some(reason) = &request.reason
        && reason.len() > 256
    {
        return Err(ApiError::bad_request("`reason` must be at most 256 bytes"));
    }
    let outcome = api.inner.rooms.disconnect_user(&id, request.reason).await?;
    info!(user = %id, closed = outcome.affected, "server API: disconnect");
    Ok(axum::Json(DisconnectResponse {
        closed: outcome.affected,
        replicas: outcome.replicas,
        answered: outcome.answered,
    }))
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct KickResponse {
    /// The user's connections taken out of the room, over every replica that answered.
    removed: u64,
    replicas: usize,
    answered: usize,
}

/// Removes a user from a room on every replica (`left` with reason `removed`) and refuses
/// their rejoin for `api.kick_ttl`.
#[utoipa::path(
    delete,
    path = "/api/v1/rooms/{room}/members/{id}",
    params(
        ("room" = String, Path, description = "The room"),
        ("id" = String, Path, description = "The user id (in anonymous mode, the display name)"),
    ),
    responses(
        (status = 200, description = "How many connections were removed", body = KickResponse),
        (status = 400, description = "Bad room or id", body = ErrorBody),
        (status = 401, description = "Missing or wrong key", body = ErrorBody),
        (status = 503, description = "The bus is unavailable", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn kick(
    State(api): State<Api>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> ApiResult<KickResponse> {
    let Path((room, id)) = path?;
    validate_room(&room)?;
    check_user_id(&id)?;
    let ControlOutcome {
        affected,
        replicas,
        answered,
    } = api
        .inner
        .rooms
        .kick(&room, &id, api.inner.config.api.kick_ttl)
        .await?;
    info!(%room, user = %id, removed = affected, "server API: removed from room");
    Ok(axum::Json(KickResponse {
        removed: affected,
        replicas,
        answered,
    }))
}

fn check_user_id(id: &str) -> Result<(), ApiError> {
    if id.is_empty() || id.len() > MAX_USER_ID_BYTES || id.chars().any(char::is_control) {
        return Err(ApiError::bad_request(format!(
            "a user id must be 1 to {MAX_USER_ID_BYTES} bytes without control characters"
        )));
    }
    Ok(())
}

/// The OpenAPI document of this API.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "roomcast server API",
        description = "Publish into rooms, read history, list members and rooms, disconnect and remove users. See docs/api.md.",
        license(name = "MIT")
    ),
    paths(publish, history, members, list_rooms, disconnect, kick),
    modifiers(&BearerAuth)
)]
pub(crate) struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The OpenAPI 3.1 document, JSON.
async fn openapi() -> Response {
    match ApiDoc::openapi().to_json() {
        Ok(json) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
        Err(e) => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal.as_str(),
            format!("cannot render the OpenAPI document: {e}"),
        )
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_openapi_document_is_3_1_and_lists_every_endpoint() {
        let doc: serde_json::Value =
            serde_json::from_str(&ApiDoc::openapi().to_json().expect("renders")).expect("json");
        assert!(
            doc["openapi"]
                .as_str()
                .is_some_and(|v| v.starts_with("3.1"))
        );
        let paths = doc["paths"].as_object().expect("paths");
        for (method, path) in [
            ("post", "/api/v1/rooms/{room}/messages"),
            ("get", "/api/v1/rooms/{room}/history"),
            ("get", "/api/v1/rooms/{room}/members"),
            ("delete", "/api/v1/rooms/{room}/members/{id}"),
            ("get", "/api/v1/rooms"),
            ("post", "/api/v1/users/{id}/disconnect"),
        ] {
            assert!(paths[path][method].is_object(), "{method} {path} missing");
            assert_ne!(
                endpoint_label(&method.to_uppercase().parse().expect("method"), Some(path)),
                "other",
                "{path} has a metric label"
            );
        }
        assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    }

    #[test]
    fn keys_come_from_the_list_and_the_file() {
        let dir = std::env::temp_dir().join(format!("roomcast-keys-{}", std::process::id()));
        std::fs::write(&dir, "# comment\n\nkey-from-file-0123456789\n").expect("write");
        let mut config = Config::default();
        config.api.keys = vec!["key-from-list-0123456789".into()];
        config.api.keys_file = Some(dir.clone());
        let keys = load_keys(&config).expect("keys");
        assert_eq!(
            keys,
            ["key-from-list-0123456789", "key-from-file-0123456789"]
        );
        std::fs::write(&dir, "short\n").expect("write");
        assert!(load_keys(&config).is_err());
        let _ = std::fs::remove_file(dir);
    }
}
