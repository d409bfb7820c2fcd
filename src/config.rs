//! Configuration: one typed [`Config`], loaded with the `config` crate in the order
//! defaults < TOML file < environment (`ROOMCAST_` prefix, `__` between nested keys),
//! and validated before any port is bound. Every key is documented in
//! `docs/configuration.md`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Exit status for a configuration error (`EX_USAGE` from sysexits.h).
pub const EXIT_CONFIG: i32 = 64;

/// The longest value any duration key takes: 10 years (`10years`; humantime's year is
/// 365.25 days). Every duration ends up added to a clock: an `Instant` deadline (the
/// drain), a timer's next tick (`heartbeat.interval`, `presence.summary_interval`),
/// milliseconds since an epoch (`presence.ttl`, `auth.timeout`, token expiry with
/// `auth.jwt.leeway`), a Redis expiry (`history.ttl`, `api.kick_ttl`). A duration past
/// the clock's range there panics or wraps around, so a larger value is refused at start,
/// naming its key. Ten years is far beyond any useful setting and keeps `now - leeway`
/// (the JWT library's check) above the Unix epoch.
pub(crate) const MAX_DURATION: Duration = Duration::from_secs(10 * 31_557_600);

/// A configuration problem, naming the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A value failed validation.
    #[error("invalid configuration: {key}: {reason}")]
    Invalid { key: &'static str, reason: String },
    /// The file or environment could not be read or parsed into the typed config.
    #[error("invalid configuration: {0}")]
    Load(#[from] config::ConfigError),
    /// A table or key name in the file that no configuration key has.
    #[error(
        "invalid configuration: {key}: not a configuration key (keys are letters, digits and _)"
    )]
    NotAKey { key: String },
    /// An integer key above the largest integer TOML (and Redis) can carry.
    #[error("invalid configuration: {key}: must be at most {max}", max = i64::MAX)]
    TooLarge { key: String },
}

/// The whole configuration of one replica.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub admin: AdminConfig,
    pub node: NodeConfig,
    pub redis: RedisConfig,
    pub history: HistoryConfig,
    pub presence: PresenceConfig,
    pub limits: Limits,
    pub heartbeat: HeartbeatConfig,
    pub drain: DrainConfig,
    pub log: LogConfig,
    pub otel: OtelConfig,
    pub metrics: MetricsConfig,
    pub auth: AuthConfig,
    pub api: ApiConfig,
    pub hooks: HooksConfig,
}

/// The client listener: chat page, WebSocket, health.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// Origins (`scheme://host[:port]`) allowed to open a WebSocket. Empty: only the
    /// request's own host. `"*"` allows every origin. Requests without an `Origin` header
    /// (non-browser clients) are always allowed.
    pub allowed_origins: Vec<String>,
    /// CIDRs of proxies whose `X-Forwarded-For` is believed for the client address; empty:
    /// the socket's peer address counts.
    pub trusted_proxies: Vec<String>,
    /// A connection that has not sent complete request headers by then is closed.
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// Agree to WebSocket `permessage-deflate` (RFC 7692, no context takeover) when a
    /// client offers it.
    pub compression: bool,
    /// With compression agreed, server frames of at least this many bytes go out
    /// compressed (smaller ones as they are).
    pub compression_min_bytes: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            allowed_origins: Vec::new(),
            trusted_proxies: Vec::new(),
            header_timeout: Duration::from_secs(10),
            compression: true,
            compression_min_bytes: 512,
        }
    }
}

/// Who a connection is: anyone (the demo) or the holder of a signed token.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Anyone may connect and pick a display name (logged as a warning at start).
    #[default]
    Anonymous,
    /// A valid JWT is required before anything else; its claims bind identity and rooms.
    Jwt,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    pub mode: AuthMode,
    pub jwt: JwtConfig,
    /// In jwt mode, a connection without a valid token by then closes with 4001.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// How long before a token's `exp` the server sends `expiring`.
    #[serde(with = "humantime_serde")]
    pub refresh_notice: Duration,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            mode: AuthMode::Anonymous,
            jwt: JwtConfig::default(),
            timeout: Duration::from_secs(5),
            refresh_notice: Duration::from_secs(60),
        }
    }
}

/// Where token signatures are checked against. Several sources may be set at once
/// (key rotation); the algorithm always follows the key, never the token's header.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JwtConfig {
    /// Secret: the HS256 key.
    pub secret: Option<String>,
    /// A file holding the HS256 key (e.g. a mounted Kubernetes Secret); trailing
    /// whitespace is ignored.
    pub secret_file: Option<std::path::PathBuf>,
    /// A PEM public key (RSA: RS256, EC P-256: ES256, Ed25519: EdDSA).
    pub public_key_file: Option<std::path::PathBuf>,
    /// A JWKS document (`http(s)://` or `file://`), cached and refetched on an unknown
    /// `kid` at most once per 30 s.
    pub jwks_url: Option<String>,
    /// Required `iss`, when set.
    pub issuer: Option<String>,
    /// Required `aud`, when set.
    pub audience: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    #[serde(with = "humantime_serde")]
    pub leeway: Duration,
}

impl Default for JwtConfig {
    fn default() -> Self {
        Self {
            secret: None,
            secret_file: None,
            public_key_file: None,
            jwks_url: None,
            issuer: None,
            audience: None,
            leeway: Duration::from_secs(30),
        }
    }
}

/// The server API (`/api/v1/`) for a product's backend; see docs/api.md.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// Bearer keys accepted by the API. Empty (and no `keys_file`): the API is off and
    /// its whole prefix answers 404.
    pub keys: Vec<String>,
    /// A file with one key per line (a mounted Secret); blank lines and `#` comments are
    /// skipped. Its keys count in addition to `keys`.
    pub keys_file: Option<std::path::PathBuf>,
    /// How long an idempotency key (API `idempotency_key`, client `idem`) is remembered.
    #[serde(with = "humantime_serde")]
    pub idempotency_ttl: Duration,
    /// How long a user removed from a room may not join it again.
    #[serde(with = "humantime_serde")]
    pub kick_ttl: Duration,
    /// Requests per second allowed per key (a burst of the same size).
    pub requests_per_second: u32,
    /// Largest request body accepted (413 above).
    pub max_body_bytes: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            keys: Vec::new(),
            keys_file: None,
            idempotency_ttl: Duration::from_secs(600),
            kick_ttl: Duration::from_secs(300),
            requests_per_second: 1000,
            max_body_bytes: 64 * 1024,
        }
    }
}

/// Calls to the product's backend; see docs/api.md.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HooksConfig {
    /// The HMAC-SHA256 key that signs every hook request (`X-Roomcast-Signature`).
    pub secret: Option<String>,
    /// A file holding that key (a mounted Secret); trailing whitespace is ignored.
    pub secret_file: Option<std::path::PathBuf>,
    pub publish: PublishHookConfig,
}

/// What a hook call that fails (timeout, connection error, bad reply) decides.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// The message is refused (`rejected`): nothing unchecked gets through.
    #[default]
    Deny,
    /// The message is published unchecked.
    Allow,
}

/// The publish hook: asked before each client message is published.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PublishHookConfig {
    /// `http(s)://` URL to POST to; unset: no hook.
    pub url: Option<String>,
    /// How long the hook may take before `on_error` decides.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    pub on_error: OnError,
}

impl Default for PublishHookConfig {
    fn default() -> Self {
        Self {
            url: None,
            timeout: Duration::from_secs(1),
            on_error: OnError::Deny,
        }
    }
}

/// The admin listener: metrics and health, apart from client traffic.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    pub listen: SocketAddr,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 9090)),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// This replica's id; `None` means hostname plus a short random suffix.
    pub id: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// How the gateway finds Redis: one server (`redis.url`), a Redis Cluster (seed
    /// `redis.nodes`) or a master watched by Sentinel (`redis.sentinels` +
    /// `redis.sentinel_master`).
    pub mode: RedisMode,
    /// Standalone mode: `redis://` or `rediss://` URL. `None` (and standalone mode)
    /// selects the in-process bus (single node).
    pub url: Option<String>,
    /// Cluster mode: seed nodes, `host:port` (any reachable subset of the cluster).
    pub nodes: Vec<String>,
    /// Sentinel mode: the sentinels, `host:port`.
    pub sentinels: Vec<String>,
    /// Sentinel mode: the name the sentinels monitor the master under.
    pub sentinel_master: Option<String>,
    /// Secret, sentinel mode: the sentinels' own password (`requirepass` of the
    /// sentinels), when they have one; `redis.password` is the data nodes'.
    pub sentinel_password: Option<String>,
    /// ACL user (Redis 6+); every mode. Overrides a user in `url`.
    pub username: Option<String>,
    /// Secret: every mode; overrides the password in `url`.
    pub password: Option<String>,
    /// TLS to every Redis node (and sentinel); `rediss://` URLs imply it.
    pub tls: bool,
    /// PEM file of the CA(s) that sign the Redis servers' certificates; without it the
    /// platform's trust store is used. Needs TLS.
    pub tls_ca_file: Option<PathBuf>,
    /// Replicas that must hold each published message before it is acknowledged
    /// (Redis `WAIT` after the publish); 0 acknowledges once the master has it. Set 1
    /// with a replicated master (cluster or Sentinel) so a failover cannot lose an
    /// acknowledged message.
    pub replica_acks: u32,
    /// How long a publish waits for `replica_acks` replicas before the sender gets
    /// `unavailable` (and retries; with `idem` the retry never duplicates).
    #[serde(with = "humantime_serde")]
    pub replica_ack_timeout: Duration,
    /// Channel messages buffered between the Redis connection and the rooms' receive
    /// loop. Allocated up front; a burst larger than this makes the loop fall behind,
    /// which it recovers from like a reconnect (resubscribe, catch up from history).
    pub receive_buffer: usize,
    /// Prefix of every key and channel, so deployments can share one Redis.
    pub prefix: String,
}

/// How the gateway finds Redis (`redis.mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RedisMode {
    #[default]
    Standalone,
    Cluster,
    Sentinel,
}

impl RedisMode {
    /// The mode as written in the configuration.
    pub fn name(self) -> &'static str {
        match self {
            RedisMode::Standalone => "standalone",
            RedisMode::Cluster => "cluster",
            RedisMode::Sentinel => "sentinel",
        }
    }
}

impl RedisConfig {
    /// Whether a Redis bus is configured (else the in-process bus serves one node).
    pub fn enabled(&self) -> bool {
        self.mode != RedisMode::Standalone || self.url.is_some()
    }

    /// Whether connections use TLS (`redis.tls`, or a `rediss://` URL).
    pub fn uses_tls(&self) -> bool {
        self.tls
            || self
                .url
                .as_deref()
                .is_some_and(|u| u.starts_with("rediss://"))
    }
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            mode: RedisMode::Standalone,
            url: None,
            nodes: Vec::new(),
            sentinels: Vec::new(),
            sentinel_master: None,
            sentinel_password: None,
            username: None,
            password: None,
            tls: false,
            tls_ca_file: None,
            replica_acks: 0,
            replica_ack_timeout: Duration::from_secs(1),
            receive_buffer: 4096,
            prefix: "roomcast".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HistoryConfig {
    /// Messages kept per room for resume.
    pub size: usize,
    /// A room's history expires this long after its last message.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        Self {
            size: 200,
            ttl: Duration::from_secs(24 * 3600),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PresenceConfig {
    /// A replica silent for this long is considered dead and its members are removed.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// How often a replica refreshes its liveness and reaps dead replicas.
    #[serde(with = "humantime_serde")]
    pub refresh: Duration,
    /// At most this many members in a `joined` frame (plus `member_count`); clients page
    /// through the rest with `members` requests. Also the default page size of those.
    pub members_in_join: usize,
    /// Rooms with at most this many members get a `presence` notice for every join and
    /// leave; larger rooms get a summary (member count, joins and leaves) at most once
    /// per `summary_interval`.
    pub notify_max_members: u64,
    /// How often a large room's presence summary may be sent.
    #[serde(with = "humantime_serde")]
    pub summary_interval: Duration,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(20),
            refresh: Duration::from_secs(5),
            members_in_join: 100,
            notify_max_members: 200,
            summary_interval: Duration::from_secs(2),
        }
    }
}

/// Most members one `members` page (or `joined`) may carry.
pub const MAX_MEMBERS_PAGE: usize = roomcast_protocol::MAX_MEMBERS_LIMIT as usize;

/// Per-connection and per-replica limits.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    pub max_text_bytes: usize,
    pub max_frame_bytes: usize,
    pub max_rooms_per_connection: usize,
    pub max_connections: usize,
    /// Sustained frames per second per connection.
    pub messages_per_second: u32,
    /// Token-bucket size: frames allowed in a burst.
    pub burst: u32,
    /// `rate_limited` refusals within 10 s after which the connection is closed.
    pub rate_limit_strikes: u32,
    /// Frames queued for one connection before it counts as a slow consumer.
    pub outbound_queue: usize,
    /// Open WebSocket connections from one client address.
    pub connections_per_ip: usize,
    /// New WebSocket connections per second from one client address.
    pub connects_per_second_per_ip: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_text_bytes: 4096,
            max_frame_bytes: 16 * 1024,
            max_rooms_per_connection: 16,
            max_connections: 50_000,
            messages_per_second: 20,
            burst: 40,
            rate_limit_strikes: 20,
            outbound_queue: 1024,
            connections_per_ip: 1000,
            connects_per_second_per_ip: 50,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HeartbeatConfig {
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for HeartbeatConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(20),
            timeout: Duration::from_secs(60),
        }
    }
}

/// Graceful drain timings; see `docs/operations.md` for how they relate to Kubernetes'
/// `terminationGracePeriodSeconds`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DrainConfig {
    #[serde(with = "humantime_serde")]
    pub propagation_delay: Duration,
    #[serde(with = "humantime_serde")]
    pub spread: Duration,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for DrainConfig {
    fn default() -> Self {
        Self {
            propagation_delay: Duration::ZERO,
            spread: Duration::from_secs(10),
            timeout: Duration::from_secs(25),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A `tracing` filter; `RUST_LOG` overrides it.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OtelConfig {
    /// OTLP/HTTP endpoint; `None` (and no `OTEL_EXPORTER_OTLP_ENDPOINT`) runs no exporter.
    pub endpoint: Option<String>,
    pub service_name: String,
}

impl Default for OtelConfig {
    fn default() -> Self {
        Self {
            endpoint: None,
            service_name: "roomcast".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Rooms that get their own label in `roomcast_room_messages_total`.
    pub room_label_cap: usize,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self { room_label_cap: 50 }
    }
}

impl Config {
    /// Loads defaults, then `file` (if any), then `ROOMCAST_*` environment variables,
    /// and validates the result.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut builder = config::Config::builder();
        if let Some(path) = file {
            if let Ok(text) = std::fs::read_to_string(path) {
                check_file_keys(&text)?;
            }
            builder = builder.add_source(config::File::from(path).format(config::FileFormat::Toml));
        }
        let (env, unknown) = environment_source(std::env::vars());
        for name in unknown {
            eprintln!(
                "roomcast: ignoring {name}: not a configuration key (see docs/configuration.md)"
            );
        }
        builder = builder.add_source(env);
        let mut cfg: Config = builder.build()?.try_deserialize()?;
        if cfg.otel.endpoint.is_none() {
            cfg.otel.endpoint = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
                .ok()
                .filter(|v| !v.is_empty());
        }
        cfg.validate()?;
        cfg.resolve_node_id();
        Ok(cfg)
    }

    /// Checks the values that types alone cannot, naming the first key at fault.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check_integer_range()?;
        for (key, value) in self.durations() {
            if value > MAX_DURATION {
                return Err(invalid(
                    key,
                    format!(
                        "must be at most {} (a longer time overflows the clock)",
                        humantime::format_duration(MAX_DURATION)
                    ),
                ));
            }
        }
        let l = &self.limits;
        let positive: [(&'static str, usize); 5] = [
            ("limits.max_text_bytes", l.max_text_bytes),
            (
                "limits.max_rooms_per_connection",
                l.max_rooms_per_connection,
            ),
            ("limits.max_connections", l.max_connections),
            ("limits.outbound_queue", l.outbound_queue),
            ("history.size", self.history.size),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        if l.max_frame_bytes < 256 {
            return Err(invalid("limits.max_frame_bytes", "must be at least 256"));
        }
        if l.max_frame_bytes < l.max_text_bytes {
            return Err(invalid(
                "limits.max_frame_bytes",
                "must be at least limits.max_text_bytes",
            ));
        }
        if l.messages_per_second == 0 {
            return Err(invalid("limits.messages_per_second", "must be at least 1"));
        }
        if l.burst == 0 {
            return Err(invalid("limits.burst", "must be at least 1"));
        }
        if l.rate_limit_strikes == 0 {
            return Err(invalid("limits.rate_limit_strikes", "must be at least 1"));
        }
        if self.heartbeat.interval.is_zero() {
            return Err(invalid("heartbeat.interval", "must be more than 0"));
        }
        if self.heartbeat.timeout <= self.heartbeat.interval {
            return Err(invalid(
                "heartbeat.timeout",
                "must be longer than heartbeat.interval",
            ));
        }
        if self.presence.refresh.is_zero() {
            return Err(invalid("presence.refresh", "must be more than 0"));
        }
        // Checked: a huge `presence.refresh` from the file is refused, not an overflow.
        if self
            .presence
            .refresh
            .checked_mul(2)
            .is_none_or(|twice| self.presence.ttl <= twice)
        {
            return Err(invalid(
                "presence.ttl",
                "must be more than twice presence.refresh",
            ));
        }
        if !(1..=MAX_MEMBERS_PAGE).contains(&self.presence.members_in_join) {
            return Err(invalid(
                "presence.members_in_join",
                format!("must be 1 to {MAX_MEMBERS_PAGE}"),
            ));
        }
        if self.presence.summary_interval < Duration::from_millis(100) {
            return Err(invalid(
                "presence.summary_interval",
                "must be at least 100ms",
            ));
        }
        if self.drain.spread > self.drain.timeout {
            return Err(invalid(
                "drain.spread",
                "must not be longer than drain.timeout: sessions still open at the deadline are cut",
            ));
        }
        if self.history.ttl < Duration::from_secs(1) {
            return Err(invalid("history.ttl", "must be at least 1s"));
        }
        self.validate_redis()?;
        if let Some(url) = &self.redis.url {
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                return Err(invalid(
                    "redis.url",
                    "must start with redis:// or rediss://",
                ));
            }
            fred::prelude::Config::from_url(url)
                .map_err(|e| invalid("redis.url", e.details().to_string()))?;
        }
        if self.redis.prefix.is_empty()
            || self.redis.prefix.contains(['{', '}', ' '])
            || self.redis.prefix.len() > 64
        {
            return Err(invalid(
                "redis.prefix",
                "must be 1-64 characters without braces or spaces",
            ));
        }
        if let Some(id) = &self.node.id
            && (id.is_empty() || id.len() > 64 || id.contains(['|', ' ', '{', '}', '"', '\\']))
        {
            return Err(invalid(
                "node.id",
                "must be 1-64 characters without '|', braces, quotes, backslashes or spaces",
            ));
        }
        let jwt = &self.auth.jwt;
        if self.auth.mode == AuthMode::Jwt
            && jwt.secret.is_none()
            && jwt.secret_file.is_none()
            && jwt.public_key_file.is_none()
            && jwt.jwks_url.is_none()
        {
            return Err(invalid(
                "auth.jwt",
                "auth.mode = \"jwt\" needs a key: auth.jwt.secret, secret_file, public_key_file or jwks_url",
            ));
        }
        if jwt.secret.as_deref().is_some_and(|s| s.len() < 16) {
            return Err(invalid(
                "auth.jwt.secret",
                "must be at least 16 bytes (it is an HS256 key)",
            ));
        }
        if self.auth.timeout.is_zero() {
            return Err(invalid("auth.timeout", "must be more than 0"));
        }
        if self.limits.connections_per_ip == 0 {
            return Err(invalid("limits.connections_per_ip", "must be at least 1"));
        }
        if self.limits.connects_per_second_per_ip == 0 {
            return Err(invalid(
                "limits.connects_per_second_per_ip",
                "must be at least 1",
            ));
        }
        if self.server.header_timeout.is_zero() {
            return Err(invalid("server.header_timeout", "must be more than 0"));
        }
        if self.server.compression_min_bytes == 0 {
            return Err(invalid(
                "server.compression_min_bytes",
                "must be at least 1",
            ));
        }
        for cidr in &self.server.trusted_proxies {
            let cidr = cidr.trim();
            if cidr.parse::<ipnet::IpNet>().is_err() && cidr.parse::<std::net::IpAddr>().is_err() {
                return Err(invalid(
                    "server.trusted_proxies",
                    format!("{cidr:?} is not a CIDR (like 10.0.0.0/8) or an IP address"),
                ));
            }
        }
        if self.metrics.room_label_cap == 0 {
            return Err(invalid("metrics.room_label_cap", "must be at least 1"));
        }
        if self.otel.service_name.is_empty() {
            return Err(invalid("otel.service_name", "must not be empty"));
        }
        let api = &self.api;
        if api.keys.iter().any(|k| k.trim().len() < 16) {
            return Err(invalid(
                "api.keys",
                "every key must be at least 16 characters (use a random string)",
            ));
        }
        if api.idempotency_ttl < Duration::from_secs(1) {
            return Err(invalid("api.idempotency_ttl", "must be at least 1s"));
        }
        if api.kick_ttl < Duration::from_secs(1) {
            return Err(invalid("api.kick_ttl", "must be at least 1s"));
        }
        if api.requests_per_second == 0 {
            return Err(invalid("api.requests_per_second", "must be at least 1"));
        }
        if api.max_body_bytes < 1024 {
            return Err(invalid("api.max_body_bytes", "must be at least 1024"));
        }
        let hooks = &self.hooks;
        if let Some(url) = &hooks.publish.url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(invalid(
                    "hooks.publish.url",
                    "must start with http:// or https://",
                ));
            }
            if hooks.secret.is_none() && hooks.secret_file.is_none() {
                return Err(invalid(
                    "hooks.secret",
                    "hooks.publish.url needs hooks.secret or hooks.secret_file (requests are signed)",
                ));
            }
        }
        if hooks.secret.is_some() && hooks.secret_file.is_some() {
            return Err(invalid(
                "hooks.secret_file",
                "set hooks.secret or hooks.secret_file, not both",
            ));
        }
        if hooks.secret.as_deref().is_some_and(|s| s.len() < 16) {
            return Err(invalid("hooks.secret", "must be at least 16 bytes"));
        }
        if hooks.publish.timeout.is_zero() {
            return Err(invalid("hooks.publish.timeout", "must be more than 0"));
        }
        Ok(())
    }

    /// Every integer key fits an `i64`: TOML's integers (so `roomcast config` renders a
    /// configuration that loads again) and what reaches Redis as an integer
    /// (`history.size` is a stream's `MAXLEN`). A larger one (`size = "17151391568418628495"`
    /// as a string was accepted: found by the `config` fuzz target) is refused, naming it.
    fn check_integer_range(&self) -> Result<(), ConfigError> {
        let Ok(value) = serde_json::to_value(self) else {
            return Ok(());
        };
        let too_large = |v: &serde_json::Value| v.is_u64() && v.as_i64().is_none();
        for (key, v) in leaves(&value) {
            let items = v
                .as_array()
                .map_or(std::slice::from_ref(v), |a| a.as_slice());
            if items.iter().any(too_large) {
                return Err(ConfigError::TooLarge { key });
            }
        }
        Ok(())
    }

    /// Every duration key with its value, in the order of the keys' documentation; each is
    /// bounded by [`MAX_DURATION`].
    fn durations(&self) -> [(&'static str, Duration); 17] {
        [
            ("server.header_timeout", self.server.header_timeout),
            ("redis.replica_ack_timeout", self.redis.replica_ack_timeout),
            ("history.ttl", self.history.ttl),
            ("presence.ttl", self.presence.ttl),
            ("presence.refresh", self.presence.refresh),
            ("presence.summary_interval", self.presence.summary_interval),
            ("heartbeat.interval", self.heartbeat.interval),
            ("heartbeat.timeout", self.heartbeat.timeout),
            ("drain.propagation_delay", self.drain.propagation_delay),
            ("drain.spread", self.drain.spread),
            ("drain.timeout", self.drain.timeout),
            ("auth.timeout", self.auth.timeout),
            ("auth.refresh_notice", self.auth.refresh_notice),
            ("auth.jwt.leeway", self.auth.jwt.leeway),
            ("api.idempotency_ttl", self.api.idempotency_ttl),
            ("api.kick_ttl", self.api.kick_ttl),
            ("hooks.publish.timeout", self.hooks.publish.timeout),
        ]
    }

    /// The `redis.mode` combinations: each mode's own keys present, the others' absent.
    fn validate_redis(&self) -> Result<(), ConfigError> {
        let r = &self.redis;
        // Each mode's own keys, refused in the other modes.
        let owned: [(&'static str, bool, RedisMode); 5] = [
            ("redis.url", r.url.is_some(), RedisMode::Standalone),
            ("redis.nodes", !r.nodes.is_empty(), RedisMode::Cluster),
            (
                "redis.sentinels",
                !r.sentinels.is_empty(),
                RedisMode::Sentinel,
            ),
            (
                "redis.sentinel_master",
                r.sentinel_master.is_some(),
                RedisMode::Sentinel,
            ),
            (
                "redis.sentinel_password",
                r.sentinel_password.is_some(),
                RedisMode::Sentinel,
            ),
        ];
        for (key, present, mode) in owned {
            if present && r.mode != mode {
                let hint = match r.mode {
                    RedisMode::Standalone => "",
                    RedisMode::Cluster => ": list the seed nodes in redis.nodes",
                    RedisMode::Sentinel => ": list the sentinels in redis.sentinels",
                };
                return Err(invalid(
                    key,
                    format!(
                        "is only used with redis.mode = \"{}\", not \"{}\"{hint}",
                        mode.name(),
                        r.mode.name()
                    ),
                ));
            }
        }
        match r.mode {
            RedisMode::Standalone => {}
            RedisMode::Cluster if r.nodes.is_empty() => {
                return Err(invalid(
                    "redis.nodes",
                    "redis.mode = \"cluster\" needs at least one seed node (host:port)",
                ));
            }
            RedisMode::Cluster => check_host_ports("redis.nodes", &r.nodes)?,
            RedisMode::Sentinel if r.sentinels.is_empty() => {
                return Err(invalid(
                    "redis.sentinels",
                    "redis.mode = \"sentinel\" needs at least one sentinel (host:port)",
                ));
            }
            RedisMode::Sentinel => {
                check_host_ports("redis.sentinels", &r.sentinels)?;
                if r.sentinel_master.as_deref().is_none_or(str::is_empty) {
                    return Err(invalid(
                        "redis.sentinel_master",
                        "redis.mode = \"sentinel\" needs the monitored master's name",
                    ));
                }
            }
        }
        if !(1..=1 << 20).contains(&r.receive_buffer) {
            return Err(invalid("redis.receive_buffer", "must be 1 to 1048576"));
        }
        if r.replica_acks > 0 && r.replica_ack_timeout.is_zero() {
            return Err(invalid(
                "redis.replica_ack_timeout",
                "must be more than 0 when redis.replica_acks is set",
            ));
        }
        if r.username.as_deref().is_some_and(str::is_empty) {
            return Err(invalid("redis.username", "must not be empty when set"));
        }
        if let Some(ca) = &r.tls_ca_file {
            if !r.uses_tls() {
                return Err(invalid(
                    "redis.tls_ca_file",
                    "needs redis.tls = true (or a rediss:// redis.url)",
                ));
            }
            crate::tls::read_ca_file(ca).map_err(|e| invalid("redis.tls_ca_file", e))?;
        }
        Ok(())
    }

    /// This node's id, resolved once: the configured `node.id`, or (when unset) the
    /// hostname plus a short random suffix, stored back so every later reader (logs,
    /// traces, the gateway) sees the same id.
    pub fn resolve_node_id(&mut self) -> &str {
        self.node.id.get_or_insert_with(|| {
            let host = gethostname::gethostname().to_string_lossy().into_owned();
            let host: String = host
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
                .take(48)
                .collect();
            format!("{host}-{:04x}", rand::random::<u16>())
        })
    }

    /// This node's id as resolved by [`Config::load`] / [`Config::resolve_node_id`]
    /// (empty before that).
    pub fn node_id(&self) -> &str {
        self.node.id.as_deref().unwrap_or_default()
    }

    /// The configuration as TOML with secrets redacted (for `roomcast config`).
    pub fn to_redacted_toml(&self) -> String {
        let mut shown = self.clone();
        if shown.redis.password.is_some() {
            shown.redis.password = Some("<redacted>".into());
        }
        if shown.redis.sentinel_password.is_some() {
            shown.redis.sentinel_password = Some("<redacted>".into());
        }
        if shown.auth.jwt.secret.is_some() {
            shown.auth.jwt.secret = Some("<redacted>".into());
        }
        for key in &mut shown.api.keys {
            *key = "<redacted>".into();
        }
        if shown.hooks.secret.is_some() {
            shown.hooks.secret = Some("<redacted>".into());
        }
        if let Some(url) = &shown.redis.url {
            shown.redis.url = Some(redact_url_password(url));
        }
        toml::to_string_pretty(&shown).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

/// A validation failure naming its key.
/// Refuses a configuration file with a table or key name that is not a plain name
/// (letters, digits, `_`), before the `config` crate reads it: that crate takes a name
/// such as `'i[4088888888]'` for a path into an array and allocates that many elements
/// (an abort for lack of memory, found by the `config` fuzz target), and no key of
/// roomcast is named otherwise. Text that is not TOML is left to the `config` crate's
/// own parse error.
pub(crate) fn check_file_keys(text: &str) -> Result<(), ConfigError> {
    fn walk(prefix: &str, table: &toml::Table) -> Result<(), ConfigError> {
        for (name, value) in table {
            let key = if prefix.is_empty() {
                name.clone()
            } else {
                format!("{prefix}.{name}")
            };
            let plain =
                !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !plain {
                return Err(ConfigError::NotAKey {
                    key: format!("{key:?}"),
                });
            }
            match value {
                toml::Value::Table(inner) => walk(&key, inner)?,
                toml::Value::Array(items) => {
                    for item in items {
                        if let toml::Value::Table(inner) = item {
                            walk(&key, inner)?;
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }
    match toml::from_str::<toml::Table>(text) {
        Ok(table) => walk("", &table),
        Err(_) => Ok(()),
    }
}

fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        reason: reason.into(),
    }
}

/// Each entry must be `host:port` (a name or IPv4 address, or `[v6]`, and a port 1-65535).
fn check_host_ports(key: &'static str, entries: &[String]) -> Result<(), ConfigError> {
    for entry in entries {
        let ok = entry.rsplit_once(':').is_some_and(|(host, port)| {
            let host = host
                .strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .unwrap_or(host);
            !host.is_empty()
                && !host.contains([' ', '/', '[', ']'])
                && port.parse::<u16>().is_ok_and(|p| p > 0)
        });
        if !ok {
            return Err(invalid(
                key,
                format!("{entry:?} is not host:port (e.g. redis-0.redis:6379)"),
            ));
        }
    }
    Ok(())
}

/// The `ROOMCAST_*` variables that name configuration keys, and the names of those that
/// do not. Unknown ones are only reported: Kubernetes injects `ROOMCAST_SERVICE_HOST`
/// and the like for a Service of that name, and `ROOMCAST_CONFIG` names the file.
fn environment_source(
    vars: impl Iterator<Item = (String, String)>,
) -> (config::Environment, Vec<String>) {
    let known = known_keys();
    let mut accepted = std::collections::HashMap::new();
    let mut unknown = Vec::new();
    for (name, value) in vars {
        let Some(rest) = name.strip_prefix("ROOMCAST_") else {
            continue;
        };
        let key = rest.to_lowercase().replace("__", ".");
        if known.contains(&key) {
            accepted.insert(name, value);
        } else if key != "config" {
            unknown.push(name);
        }
    }
    unknown.sort();
    let env = config::Environment::with_prefix("ROOMCAST")
        .prefix_separator("_")
        .separator("__")
        .try_parsing(true)
        // List keys take comma-separated values: ROOMCAST_SERVER__ALLOWED_ORIGINS=a,b
        .list_separator(",")
        .with_list_parse_key("server.allowed_origins")
        .with_list_parse_key("server.trusted_proxies")
        .with_list_parse_key("api.keys")
        .with_list_parse_key("redis.nodes")
        .with_list_parse_key("redis.sentinels")
        .source(Some(accepted));
    (env, unknown)
}

/// Every configuration key in dotted form (`redis.url`, `limits.burst`, ...).
fn known_keys() -> std::collections::HashSet<String> {
    match serde_json::to_value(Config::default()) {
        Ok(value) => leaves(&value).into_iter().map(|(key, _)| key).collect(),
        Err(_) => Default::default(),
    }
}

/// The leaves of a configuration as JSON, each with its dotted key (a list is one leaf).
fn leaves(value: &serde_json::Value) -> Vec<(String, &serde_json::Value)> {
    fn walk<'a>(
        prefix: &str,
        value: &'a serde_json::Value,
        out: &mut Vec<(String, &'a serde_json::Value)>,
    ) {
        match value {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, v, out);
                }
            }
            _ => out.push((prefix.to_string(), value)),
        }
    }
    let mut out = Vec::new();
    walk("", value, &mut out);
    out
}

/// Replaces the password part of `scheme://user:password@host` with `<redacted>`.
fn redact_url_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let Some((userinfo, host)) = rest.rsplit_once('@') else {
        return url.to_string();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:<redacted>@{host}"),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_huge_presence_refresh_is_refused_not_an_overflow() {
        // Found while writing the `config` fuzz target: twice this overflowed `Duration` (a panic
        // at start instead of exit 64 naming the key).
        let mut cfg = Config::default();
        cfg.presence.refresh = Duration::from_secs(u64::MAX / 2 + 1);
        cfg.presence.ttl = Duration::MAX;
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("presence.ttl"), "{err}");
        // As written in a file (crates/fuzz/seeds/config/huge-presence-refresh.toml).
        let cfg =
            crate::fuzzing::config_from_toml("[presence]\nrefresh = \"10000000000000000000s\"\n")
                .expect("a huge duration still loads");
        assert!(cfg.validate().is_err());
    }

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().expect("defaults validate");
    }

    #[test]
    fn compression_threshold_must_be_positive() {
        let mut cfg = Config::default();
        assert!(
            cfg.server.compression,
            "permessage-deflate is on by default"
        );
        cfg.server.compression_min_bytes = 0;
        let err = cfg.validate().expect_err("0 refused").to_string();
        assert!(err.contains("server.compression_min_bytes"), "{err}");
    }

    #[test]
    fn an_integer_past_i64_is_refused_naming_its_key() {
        // The config fuzz target's find: accepted, then rendered as a TOML integer that
        // does not load (and sent to Redis as a negative MAXLEN).
        let cfg =
            crate::fuzzing::config_from_toml("[history]\nsize = \"0000017151391568418628495\"")
                .expect("loads");
        let err = cfg.validate().expect_err("refused").to_string();
        assert!(
            err.contains("history.size: must be at most 9223372036854775807"),
            "{err}"
        );
        let mut cfg = Config::default();
        cfg.history.size = i64::MAX as usize;
        cfg.validate().expect("i64::MAX itself is accepted");
        let rendered = cfg.to_redacted_toml();
        crate::fuzzing::config_from_toml(&rendered).expect("and loads again");
    }

    #[test]
    fn a_key_that_is_not_a_plain_name_is_refused_before_loading() {
        // The config fuzz target's find: the config crate reads `i[4088888888]` as an
        // array index and aborted allocating 392 GB.
        for text in [
            "['i[4088888888]']",
            "[server]\n'a[3]' = 1",
            "\"redis.url\" = 'x'",
            "[[x]]\n'b[1]' = 2",
            "'' = 1",
        ] {
            let err = check_file_keys(text).expect_err(text).to_string();
            assert!(err.contains("not a configuration key"), "{text}: {err}");
        }
        check_file_keys("[server]\nlisten = '0.0.0.0:8080'\n[auth.jwt]\nleeway = '5s'")
            .expect("plain keys pass");
        check_file_keys("not toml [").expect("a parse error is left to the config crate");
        let err = crate::fuzzing::config_from_toml("['i[4088888888]']")
            .expect_err("refused")
            .to_string();
        assert!(err.contains("not a configuration key"), "{err}");
    }

    #[test]
    fn invalid_value_names_its_key() {
        let mut cfg = Config::default();
        cfg.limits.max_text_bytes = 0;
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("limits.max_text_bytes"), "{err}");
    }

    #[test]
    fn environment_takes_known_keys_and_reports_the_rest() {
        let vars = [
            ("ROOMCAST_REDIS__URL", "redis://r:6379"),
            ("ROOMCAST_LIMITS__MAX_TEXT_BYTES", "100"),
            ("ROOMCAST_SERVICE_HOST", "10.0.0.1"),
            ("ROOMCAST_PORT", "tcp://10.0.0.1:80"),
            ("ROOMCAST_CONFIG", "/etc/roomcast.toml"),
            ("PATH", "/bin"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        let (env, unknown) = environment_source(vars.into_iter());
        assert_eq!(unknown, vec!["ROOMCAST_PORT", "ROOMCAST_SERVICE_HOST"]);
        let cfg: Config = config::Config::builder()
            .add_source(env)
            .build()
            .and_then(|c| c.try_deserialize())
            .expect("known keys load");
        assert_eq!(cfg.redis.url.as_deref(), Some("redis://r:6379"));
        assert_eq!(cfg.limits.max_text_bytes, 100);
        assert!(known_keys().contains("drain.propagation_delay"));
        assert!(known_keys().contains("auth.jwt.secret"));
        assert!(known_keys().contains("server.allowed_origins"));
    }

    #[test]
    fn list_keys_take_comma_separated_environment_values() {
        let vars = [(
            "ROOMCAST_SERVER__ALLOWED_ORIGINS",
            "https://a.example,https://b.example",
        )]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        let (env, _) = environment_source(vars.into_iter());
        let cfg: Config = config::Config::builder()
            .add_source(env)
            .build()
            .and_then(|c| c.try_deserialize())
            .expect("list loads");
        assert_eq!(
            cfg.server.allowed_origins,
            ["https://a.example", "https://b.example"]
        );
    }

    #[test]
    fn jwt_mode_needs_a_key_and_the_secret_is_redacted() {
        let mut cfg = Config::default();
        cfg.auth.mode = AuthMode::Jwt;
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("auth.jwt"), "{err}");
        cfg.auth.jwt.secret = Some("short".into());
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("auth.jwt.secret"), "{err}");
        cfg.auth.jwt.secret = Some("a-secret-of-32-bytes-for-hs256!!".into());
        cfg.validate().expect("valid");
        assert!(!cfg.to_redacted_toml().contains("a-secret-of-32"));
    }

    #[test]
    fn drain_spread_may_not_exceed_the_timeout() {
        let mut cfg = Config::default();
        cfg.drain.spread = cfg.drain.timeout;
        cfg.validate().expect("equal is fine");
        cfg.drain.spread = cfg.drain.timeout + Duration::from_secs(1);
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("drain.spread"), "{err}");
    }

    #[test]
    fn a_huge_drain_timeout_is_refused_not_an_overflow() {
        // The drain's deadline is `now + drain.timeout`: past the clock's range that
        // panicked at SIGTERM instead of exiting 64 at start.
        let mut cfg = Config::default();
        cfg.drain.timeout = MAX_DURATION;
        cfg.validate().expect("the bound itself is fine");
        for huge in [MAX_DURATION + Duration::from_secs(1), Duration::MAX] {
            cfg.drain.timeout = huge;
            let err = cfg.validate().unwrap_err().to_string();
            assert!(
                err.starts_with("invalid configuration: drain.timeout: must be at most 10years"),
                "{err}"
            );
        }
        // As written in a file: loads (humantime takes it), then is refused.
        let cfg =
            crate::fuzzing::config_from_toml("[drain]\ntimeout = \"10000000000000000000s\"\n")
                .expect("a huge duration still loads");
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("drain.timeout"), "{err}");
    }

    #[test]
    fn every_duration_key_is_bounded_naming_itself() {
        // Found from the serialized defaults, so a duration key added later without a
        // bound fails here: every value that reads as a humantime duration.
        let defaults = serde_json::to_value(Config::default()).unwrap();
        let pointer = |key: &str| format!("/{}", key.replace('.', "/"));
        let mut found: Vec<String> = known_keys()
            .into_iter()
            .filter(|key| {
                defaults
                    .pointer(&pointer(key))
                    .and_then(|v| v.as_str())
                    .is_some_and(|v| humantime::parse_duration(v).is_ok())
            })
            .collect();
        found.sort();
        let mut bounded: Vec<String> = Config::default()
            .durations()
            .iter()
            .map(|(key, _)| key.to_string())
            .collect();
        bounded.sort();
        assert_eq!(found, bounded);
        let too_long = humantime::format_duration(MAX_DURATION + Duration::from_secs(1));
        for key in bounded {
            let mut value = defaults.clone();
            *value.pointer_mut(&pointer(&key)).unwrap() = too_long.to_string().into();
            let cfg: Config = serde_json::from_value(value).unwrap();
            let err = cfg.validate().unwrap_err().to_string();
            assert!(
                err.starts_with(&format!("invalid configuration: {key}: must be at most")),
                "{key}: {err}"
            );
        }
    }

    #[test]
    fn trusted_proxies_must_be_cidrs_or_addresses() {
        let mut cfg = Config::default();
        cfg.server.trusted_proxies =
            vec!["10.0.0.0/8".into(), "fd00::/8".into(), "192.168.1.1".into()];
        cfg.validate().expect("valid");
        cfg.server.trusted_proxies.push("10.0.0.0/33".into());
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("server.trusted_proxies"), "{err}");
    }

    #[test]
    fn node_id_is_resolved_once() {
        let mut cfg = Config::default();
        let first = cfg.resolve_node_id().to_string();
        assert_eq!(cfg.resolve_node_id(), first);
        assert_eq!(cfg.node.id.as_deref(), Some(first.as_str()));
        cfg.node.id = Some("fixed".into());
        assert_eq!(cfg.resolve_node_id(), "fixed");
    }

    #[test]
    fn redacts_password_in_url() {
        assert_eq!(
            redact_url_password("redis://:s3cret@redis:6379/0"),
            "redis://:<redacted>@redis:6379/0"
        );
        assert_eq!(
            redact_url_password("redis://redis:6379"),
            "redis://redis:6379"
        );
        let mut cfg = Config::default();
        cfg.redis.url = Some("redis://u:pw@h:1".into());
        cfg.redis.password = Some("pw2".into());
        let text = cfg.to_redacted_toml();
        assert!(!text.contains("pw"), "{text}");
    }
}
