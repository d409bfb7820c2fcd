//! The publish hook (`hooks.publish`): before a client message is published, the gateway
//! asks the product's backend whether to publish it as it is, publish a rewritten text, or
//! refuse it (moderation, spam filters, link rewriting).
//!
//! One signed HTTP POST per message: a JSON body (`room`, `user`, `text`, `conn`) and an
//! `X-Roomcast-Signature: sha256=<hex HMAC-SHA256 of the body>` header made with
//! `hooks.secret`, so the backend can tell the call came from this gateway. The whole call
//! is bounded by `hooks.publish.timeout`; a call that fails (timeout, connection error,
//! non-2xx, a reply it cannot read) never fails the send: `hooks.publish.on_error`
//! decides, either refusing the message (`deny`, the default: nothing unchecked gets
//! through) or publishing it unchecked (`allow`). The request and reply are documented in
//! `docs/api.md`; every call is counted in `roomcast_hook_requests_total{result}` and timed
//! in `roomcast_hook_duration_seconds`.
//!
//! One [`reqwest::Client`] is built at start, so connections to the backend are pooled
//! and kept alive across messages. The secret and the message text are never logged.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use prometheus::IntCounter;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::config::{Config, ConfigError, OnError};
use crate::metrics::Metrics;
use crate::protocol::User;

/// Largest reply body read from the backend; a longer one is an error.
const MAX_REPLY_BYTES: usize = 64 * 1024;
/// Longest deny `reason` passed on to the client; a longer one is cut (at a character
/// boundary).
const MAX_REASON_BYTES: usize = 256;
/// The client's reason when a deny reply carries none.
const DEFAULT_DENY_REASON: &str = "denied by the publish hook";
/// The client's reason when the hook failed and `on_error = "deny"`.
const UNAVAILABLE_REASON: &str = "the publish hook is unavailable";
/// At most one warning per this interval about failing calls; the ones in between are
/// counted and reported with the next warning (a backend outage at thousands of messages
/// per second must not flood the log).
const WARN_INTERVAL: Duration = Duration::from_secs(1);
/// Header carrying the request signature.
pub(crate) const SIGNATURE_HEADER: &str = "X-Roomcast-Signature";

/// What the publish hook decided about one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Publish the text as the client sent it.
    Allow,
    /// Publish this text instead (never empty, never equal to the original).
    Rewrite(String),
    /// Refuse the message (`rejected`) with this reason for the client.
    Deny(String),
}

/// The configured publish hook: where to POST, how to sign, how long to wait and what a
/// failure decides.
pub(crate) struct PublishHook {
    /// Pooled, kept-alive connections to the backend; built once.
    client: reqwest::Client,
    url: reqwest::Url,
    /// The URL as logged: without a password, should it carry one.
    log_url: String,
    /// HMAC-SHA256 already keyed with the secret; cloned per request.
    mac: Hmac<Sha256>,
    /// The bound on the whole call (connect, request, reply).
    timeout: Duration,
    on_error: OnError,
    /// A rewritten text longer than `limits.max_text_bytes` is a bad reply.
    max_text_bytes: usize,
    metrics: Arc<Metrics>,
    results: Results,
    warnings: WarnBudget,
}

/// `roomcast_hook_requests_total` by result, looked up once.
struct Results {
    allow: IntCounter,
    rewrite: IntCounter,
    deny: IntCounter,
    error: IntCounter,
}

/// Why a call produced no verdict; logged (never sent to the client).
#[derive(Debug, thiserror::Error)]
enum HookError {
    #[error("no complete answer within {0:?} (hooks.publish.timeout)")]
    Timeout(Duration),
    #[error("request failed: {0}")]
    Request(String),
    #[error("answered HTTP {0}")]
    Status(u16),
    #[error("reply body larger than {MAX_REPLY_BYTES} bytes")]
    TooLarge,
    #[error("bad reply: {0}")]
    BadReply(String),
}

/// The request body.
#[derive(Serialize)]
struct HookRequest<'a> {
    room: &'a str,
    user: HookUser<'a>,
    text: &'a str,
    conn: &'a str,
}

#[derive(Serialize)]
struct HookUser<'a> {
    /// The token's `sub`; `null` for anonymous users.
    id: Option<&'a str>,
    name: &'a str,
}

/// The reply body; unknown fields are ignored (room for later additions).
#[derive(Deserialize)]
struct HookReply {
    action: String,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    reason: Option<String>,
}

impl PublishHook {
    /// The publish hook of `config`; `None` when `hooks.publish.url` is unset. Reads the
    /// signing key from `hooks.secret` or `hooks.secret_file` (trailing whitespace
    /// trimmed) and builds the HTTP client.
    pub(crate) fn from_config(
        config: &Config,
        metrics: Arc<Metrics>,
    ) -> Result<Option<PublishHook>, ConfigError> {
        let hooks = &config.hooks;
        let Some(url) = hooks.publish.url.as_deref() else {
            return Ok(None);
        };
        let url = reqwest::Url::parse(url)
            .map_err(|e| invalid("hooks.publish.url", format!("not a URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(invalid(
                "hooks.publish.url",
                "must start with http:// or https://",
            ));
        }
        let secret = match (&hooks.secret, &hooks.secret_file) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "hooks.secret_file",
                    "set hooks.secret or hooks.secret_file, not both",
                ));
            }
            (Some(secret), None) => secret.as_bytes().to_vec(),
            (None, Some(path)) => read_secret_file(path)?,
            (None, None) => {
                return Err(invalid(
                    "hooks.secret",
                    "hooks.publish.url needs hooks.secret or hooks.secret_file (requests are signed)",
                ));
            }
        };
        let mac = Hmac::<Sha256>::new_from_slice(&secret)
            .map_err(|e| invalid("hooks.secret", e.to_string()))?;
        let timeout = hooks.publish.timeout;
        let client = http_client(timeout).map_err(|e| invalid("hooks.publish.url", e))?;
        let log_url = {
            let mut shown = url.clone();
            if shown.password().is_some() {
                // Cannot fail: the URL has a host, since it has a password.
                let _ = shown.set_password(Some("redacted"));
            }
            shown.to_string()
        };
        let counter = |result: &str| metrics.hook_results.with_label_values(&[result]);
        let results = Results {
            allow: counter("allow"),
            rewrite: counter("rewrite"),
            deny: counter("deny"),
            error: counter("error"),
        };
        Ok(Some(PublishHook {
            client,
            url,
            log_url,
            mac,
            timeout,
            on_error: hooks.publish.on_error,
            max_text_bytes: config.limits.max_text_bytes,
            metrics,
            results,
            warnings: WarnBudget::default(),
        }))
    }

    /// Asks the backend about one client message. Never fails: an error or a timeout
    /// becomes `hooks.publish.on_error`'s verdict (`Deny` with "the publish hook is
    /// unavailable", or `Allow`). Counted by result and timed.
    pub(crate) async fn check(&self, room: &str, user: &User, text: &str, conn: &str) -> Verdict {
        let started = Instant::now();
        let outcome = tokio::time::timeout(self.timeout, self.call(room, user, text, conn))
            .await
            .unwrap_or(Err(HookError::Timeout(self.timeout)));
        self.metrics
            .hook_duration
            .observe(started.elapsed().as_secs_f64());
        match outcome {
            Ok(verdict) => {
                match &verdict {
                    Verdict::Allow => self.results.allow.inc(),
                    Verdict::Rewrite(_) => self.results.rewrite.inc(),
                    Verdict::Deny(_) => self.results.deny.inc(),
                }
                debug!(room, verdict = verdict.label(), "publish hook answered");
                verdict
            }
            Err(e) => {
                self.results.error.inc();
                self.warn_failure(room, &e);
                match self.on_error {
                    OnError::Deny => Verdict::Deny(UNAVAILABLE_REASON.to_owned()),
                    OnError::Allow => Verdict::Allow,
                }
            }
        }
    }

    /// One POST and its reply, unbounded in time (the caller bounds it).
    async fn call(
        &self,
        room: &str,
        user: &User,
        text: &str,
        conn: &str,
    ) -> Result<Verdict, HookError> {
        let body = request_body(room, user, text, conn);
        let signature = sign(self.mac.clone(), &body);
        let mut response = self
            .client
            .post(self.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(SIGNATURE_HEADER, signature)
            .body(body)
            .send()
            .await
            .map_err(|e| HookError::Request(error_chain(&e.without_url())))?;
        let status = response.status();
        if !status.is_success() {
            return Err(HookError::Status(status.as_u16()));
        }
        if response
            .content_length()
            .is_some_and(|n| n > MAX_REPLY_BYTES as u64)
        {
            return Err(HookError::TooLarge);
        }
        let mut reply = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| HookError::Request(error_chain(&e.without_url())))?
        {
            if reply.len() + chunk.len() > MAX_REPLY_BYTES {
                return Err(HookError::TooLarge);
            }
            reply.extend_from_slice(&chunk);
        }
        parse_reply(&reply, text, self.max_text_bytes)
    }

    /// Logs a failed call at warn (the URL and why, never the text), at most once per
    /// [`WARN_INTERVAL`]; the failures in between are logged at debug and counted.
    fn warn_failure(&self, room: &str, e: &HookError) {
        let on_error = match self.on_error {
            OnError::Deny => "deny",
            OnError::Allow => "allow",
        };
        match self.warnings.take() {
            Some(suppressed) => warn!(
                url = %self.log_url,
                room,
                on_error,
                suppressed,
                "publish hook failed: {e}; hooks.publish.on_error decides"
            ),
            None => debug!(url = %self.log_url, room, on_error, "publish hook failed: {e}"),
        }
    }
}

impl Verdict {
    fn label(&self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Rewrite(_) => "rewrite",
            Verdict::Deny(_) => "deny",
        }
    }
}

/// Rate limit of the failure warnings: one per [`WARN_INTERVAL`].
#[derive(Default)]
struct WarnBudget {
    /// When the last warning was logged, and failures not warned about since.
    state: Mutex<(Option<Instant>, u64)>,
}

impl WarnBudget {
    /// `Some(failures suppressed since the last warning)` when a warning may be logged
    /// now; `None` (and one more suppressed) otherwise.
    fn take(&self) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        if state
            .0
            .is_some_and(|last| now.saturating_duration_since(last) < WARN_INTERVAL)
        {
            state.1 += 1;
            return None;
        }
        state.0 = Some(now);
        Some(std::mem::take(&mut state.1))
    }
}

/// The exact bytes POSTed (and signed).
fn request_body(room: &str, user: &User, text: &str, conn: &str) -> Vec<u8> {
    let request = HookRequest {
        room,
        user: HookUser {
            id: user.id.as_deref(),
            name: &user.name,
        },
        text,
        conn,
    };
    // Serialising strings into a Vec cannot fail; an empty body would only make the
    // backend answer with an error, which on_error handles.
    serde_json::to_vec(&request).unwrap_or_default()
}

/// `sha256=<lowercase hex HMAC-SHA256 of body>`, with `mac` already keyed.
fn sign(mut mac: Hmac<Sha256>, body: &[u8]) -> String {
    use std::fmt::Write as _;
    mac.update(body);
    let tag = mac.finalize().into_bytes();
    let mut out = String::with_capacity(7 + tag.len() * 2);
    out.push_str("sha256=");
    for byte in tag.iter() {
        // Writing to a String cannot fail.
        let _ = write!(out, "{byte:02x}");
    }
    out
}

/// The verdict of a 2xx reply body about the message `original`.
fn parse_reply(body: &[u8], original: &str, max_text_bytes: usize) -> Result<Verdict, HookError> {
    let reply: HookReply =
        serde_json::from_slice(body).map_err(|e| HookError::BadReply(e.to_string()))?;
    match reply.action.as_str() {
        "allow" => match reply.text {
            None => Ok(Verdict::Allow),
            Some(text) if text == original => Ok(Verdict::Allow),
            Some(text) if text.is_empty() => {
                Err(HookError::BadReply("rewritten text is empty".into()))
            }
            Some(text) if text.len() > max_text_bytes => Err(HookError::BadReply(format!(
                "rewritten text is {} bytes; limits.max_text_bytes is {max_text_bytes}",
                text.len()
            ))),
            Some(text) => Ok(Verdict::Rewrite(text)),
        },
        "deny" => {
            let reason = reply
                .reason
                .as_deref()
                .map(str::trim)
                .filter(|r| !r.is_empty())
                .unwrap_or(DEFAULT_DENY_REASON);
            Ok(Verdict::Deny(truncate(reason, MAX_REASON_BYTES).to_owned()))
        }
        other => Err(HookError::BadReply(format!(
            "unknown action {:?} (expected \"allow\" or \"deny\")",
            truncate(other, 32)
        ))),
    }
}

/// The longest prefix of `s` of at most `max` bytes that ends at a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// An error with its sources (reqwest's own message is often just "error sending
/// request"; the cause, such as "Connection refused", is further down).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}

fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        reason: reason.into(),
    }
}

/// The signing key from `hooks.secret_file`, trailing whitespace trimmed.
fn read_secret_file(path: &std::path::Path) -> Result<Vec<u8>, ConfigError> {
    const KEY: &str = "hooks.secret_file";
    let mut bytes = std::fs::read(path)
        .map_err(|e| invalid(KEY, format!("cannot read {}: {e}", path.display())))?;
    while bytes.last().is_some_and(u8::is_ascii_whitespace) {
        bytes.pop();
    }
    if bytes.len() < 16 {
        return Err(invalid(KEY, "the key must be at least 16 bytes"));
    }
    Ok(bytes)
}

/// The hook's HTTP client: rustls with the ring provider and the platform's roots (as
/// for JWKS in `auth`), no redirects (a signed request goes where it was configured to go,
/// and a 3xx is an error), connections pooled and kept alive. The whole call is bounded by
/// the caller; the connect timeout only stops a connect from outliving it.
fn http_client(timeout: Duration) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .tls_backend_preconfigured(crate::tls::client_config()?)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .pool_idle_timeout(Duration::from_secs(60))
        .tcp_nodelay(true)
        .user_agent(concat!("roomcast/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("HTTP client: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::path::PathBuf;
    use std::sync::atomic::{AtomicU64, Ordering};

    const SECRET: &str = "hook-secret-of-at-least-16-bytes";

    fn keyed(key: &[u8]) -> Hmac<Sha256> {
        Hmac::<Sha256>::new_from_slice(key).unwrap()
    }

    fn config(url: Option<String>, on_error: OnError) -> Config {
        let mut cfg = Config::default();
        cfg.hooks.secret = Some(SECRET.into());
        cfg.hooks.publish.url = url;
        cfg.hooks.publish.on_error = on_error;
        cfg.hooks.publish.timeout = Duration::from_millis(300);
        cfg
    }

    fn hook(cfg: &Config) -> PublishHook {
        PublishHook::from_config(cfg, Arc::new(Metrics::new(10)))
            .unwrap()
            .expect("a hook")
    }

    fn tempdir() -> PathBuf {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "roomcast-hooks-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn signature_is_sha256_prefixed_lowercase_hex_hmac() {
        // RFC 4231, test case 2.
        assert_eq!(
            sign(keyed(b"Jefe"), b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // The keyed MAC is reused: each clone signs from scratch.
        let mac = keyed(b"Jefe");
        assert_eq!(
            sign(mac.clone(), b"what do ya want for nothing?"),
            sign(mac, b"what do ya want for nothing?")
        );
    }

    #[test]
    fn request_body_has_room_user_text_and_conn() {
        let anonymous = User::new("Alice".into());
        let body: serde_json::Value =
            serde_json::from_slice(&request_body("lobby", &anonymous, "hi \"x\"", "c-1")).unwrap();
        assert_eq!(
            body,
            serde_json::json!({
                "room": "lobby",
                "user": {"id": null, "name": "Alice"},
                "text": "hi \"x\"",
                "conn": "c-1"
            })
        );
        let known = User {
            id: Some("u-7".into()),
            ..User::new("Bob".into())
        };
        let body: serde_json::Value =
            serde_json::from_slice(&request_body("r", &known, "t", "c")).unwrap();
        assert_eq!(
            body["user"],
            serde_json::json!({"id": "u-7", "name": "Bob"})
        );
    }

    fn parse(body: &str) -> Result<Verdict, HookError> {
        parse_reply(body.as_bytes(), "original", 20)
    }

    #[test]
    fn replies_map_to_verdicts() {
        assert_eq!(parse(r#"{"action":"allow"}"#).unwrap(), Verdict::Allow);
        assert_eq!(
            parse(r#"{"action":"allow","text":null,"extra":1}"#).unwrap(),
            Verdict::Allow,
            "unknown fields are ignored"
        );
        assert_eq!(
            parse(r#"{"action":"allow","text":"original"}"#).unwrap(),
            Verdict::Allow,
            "the same text is no rewrite"
        );
        assert_eq!(
            parse(r#"{"action":"allow","text":"new"}"#).unwrap(),
            Verdict::Rewrite("new".into())
        );
        assert_eq!(
            parse(r#"{"action":"deny","reason":"no links"}"#).unwrap(),
            Verdict::Deny("no links".into())
        );
        for default in [
            r#"{"action":"deny"}"#,
            r#"{"action":"deny","reason":null}"#,
            r#"{"action":"deny","reason":"  "}"#,
        ] {
            assert_eq!(
                parse(default).unwrap(),
                Verdict::Deny(DEFAULT_DENY_REASON.into()),
                "{default}"
            );
        }
    }

    #[test]
    fn long_reasons_are_cut_at_a_character_boundary() {
        let reason = "é".repeat(MAX_REASON_BYTES); // 2 bytes each
        let reply = serde_json::json!({"action": "deny", "reason": format!("x{reason}")});
        let Verdict::Deny(got) = parse(&reply.to_string()).unwrap() else {
            panic!("not a deny");
        };
        assert_eq!(got.len(), MAX_REASON_BYTES - 1);
        assert!(got.starts_with('x'));
    }

    #[test]
    fn malformed_replies_are_errors() {
        for bad in [
            "",
            "not json",
            "[]",
            "{}",
            r#"{"action":"publish"}"#,
            r#"{"action":"ALLOW"}"#,
            r#"{"action":1}"#,
            r#"{"action":"allow","text":5}"#,
            r#"{"action":"allow","text":""}"#,
            r#"{"action":"allow","text":"longer than twenty bytes"}"#,
            r#"{"action":"deny","reason":["x"]}"#,
        ] {
            assert!(
                matches!(parse(bad), Err(HookError::BadReply(_))),
                "{bad:?} should be a bad reply"
            );
        }
    }

    #[test]
    fn no_url_is_no_hook() {
        let cfg = config(None, OnError::Deny);
        assert!(
            PublishHook::from_config(&cfg, Arc::new(Metrics::new(10)))
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn secret_file_is_trimmed_and_checked() {
        let dir = tempdir();
        let url = Some("http://127.0.0.1:9/hook".to_string());
        let file = |content: &str| {
            let path = dir.join("secret");
            std::fs::write(&path, content).unwrap();
            let mut cfg = config(url.clone(), OnError::Deny);
            cfg.hooks.secret = None;
            cfg.hooks.secret_file = Some(path);
            cfg
        };
        let hook = hook(&file(&format!("{SECRET}\n\n")));
        assert_eq!(
            sign(hook.mac.clone(), b"body"),
            sign(keyed(SECRET.as_bytes()), b"body"),
            "trailing whitespace of secret_file trimmed"
        );
        let key_of = |cfg: &Config| match PublishHook::from_config(cfg, Arc::new(Metrics::new(10)))
        {
            Err(ConfigError::Invalid { key, .. }) => key,
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("accepted"),
        };
        assert_eq!(key_of(&file("short\n")), "hooks.secret_file");
        let mut missing = file(SECRET);
        missing.hooks.secret_file = Some(dir.join("missing"));
        assert_eq!(key_of(&missing), "hooks.secret_file");
        let mut both = file(SECRET);
        both.hooks.secret = Some(SECRET.into());
        assert_eq!(key_of(&both), "hooks.secret_file");
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn a_password_in_the_url_is_not_logged() {
        let cfg = config(
            Some("https://hook:s3cret@backend.example/moderate".into()),
            OnError::Deny,
        );
        let hook = hook(&cfg);
        assert!(!hook.log_url.contains("s3cret"), "{}", hook.log_url);
        assert_eq!(hook.url.password(), Some("s3cret"), "still sent");
    }

    #[tokio::test]
    async fn unreachable_backend_gives_on_errors_verdict_and_counts_errors() {
        // A port that was free a moment ago: connection refused.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = Some(format!("http://127.0.0.1:{port}/hook"));
        let user = User::new("Alice".into());
        let deny = hook(&config(url.clone(), OnError::Deny));
        assert_eq!(
            deny.check("r", &user, "t", "c").await,
            Verdict::Deny(UNAVAILABLE_REASON.into())
        );
        assert_eq!(deny.results.error.get(), 1);
        assert_eq!(deny.metrics.hook_duration.get_sample_count(), 1);
        let allow = hook(&config(url, OnError::Allow));
        assert_eq!(allow.check("r", &user, "t", "c").await, Verdict::Allow);
        assert_eq!(allow.results.error.get(), 1);
        assert_eq!(allow.results.allow.get(), 0, "an error is not an allow");
    }

    #[tokio::test]
    async fn a_backend_that_never_answers_times_out() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // Accepts and reads, never answers.
        let server = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        let hook = hook(&config(Some(format!("http://{addr}/")), OnError::Deny));
        let started = Instant::now();
        let verdict = hook.check("r", &User::new("Alice".into()), "t", "c").await;
        assert_eq!(verdict, Verdict::Deny(UNAVAILABLE_REASON.into()));
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(300) && waited < Duration::from_secs(5),
            "{waited:?}"
        );
        assert_eq!(hook.results.error.get(), 1);
        server.abort();
    }

    #[test]
    fn warnings_are_limited_to_one_per_interval() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(async {
            let budget = WarnBudget::default();
            assert_eq!(budget.take(), Some(0));
            assert_eq!(budget.take(), None);
            assert_eq!(budget.take(), None);
            tokio::time::advance(WARN_INTERVAL).await;
            assert_eq!(budget.take(), Some(2), "the suppressed ones are reported");
            assert_eq!(budget.take(), None);
        });
    }
}
