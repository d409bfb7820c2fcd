//! `roomcast api`: a command-line client of the server API (`/api/v1/` on the gateway's
//! client listener, see docs/api.md), for operators and scripts: `publish` a message into
//! a room as the product's backend would, and read a room's `history`.
//!
//! Every request carries `Authorization: Bearer <key>` (`--key` or `ROOMCAST_API_KEY`);
//! the key is never printed, not even in errors (a server message that quotes it is
//! redacted). Refusals are reported from the API's error body
//! (`{"error":{"code":..,"message":..}}`) with a hint for the usual causes: 401 (wrong
//! key), 404 (API off: no `api.keys`), connection refused (wrong `--url`).
//!
//! HTTP is reqwest with rustls on the ring provider (as the JWKS client in `auth`), so
//! `http://` and `https://` gateways both work; redirects are not followed, so the key is
//! never sent anywhere but `--url`.

use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use reqwest::{Method, StatusCode, Url};
use roomcast_protocol::MsgId;
use roomcast_protocol::rules::is_valid_room;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Where the API is looked for without `--url`: a gateway on this machine.
pub const DEFAULT_URL: &str = "http://127.0.0.1:8080";

/// Longest part of a non-JSON error body quoted in an error message.
const QUOTED_BODY_CHARS: usize = 200;

/// `roomcast api`: call the gateway's server API.
#[derive(clap::Args)]
pub struct ApiArgs {
    /// Base URL of the gateway's client listener (the API is under `/api/v1` there); a
    /// path prefix (`https://chat.example.com/roomcast`) is kept.
    #[arg(long, global = true, env = "ROOMCAST_API_URL", default_value = DEFAULT_URL)]
    pub url: String,

    /// API key: one of the gateway's `api.keys` / `api.keys_file`, sent as
    /// `Authorization: Bearer`; required, never printed. Prefer `ROOMCAST_API_KEY`: an
    /// argument is visible to every user of the machine in the process list.
    #[arg(long, global = true, env = "ROOMCAST_API_KEY", hide_env_values = true)]
    pub key: Option<String>,

    /// A file holding the API key, used when no --key / `ROOMCAST_API_KEY` is set: its
    /// first line that is not blank or a `#` comment (the format of the gateway's
    /// `api.keys_file`), e.g. the Secret the Helm chart mounts in the gateway's pods.
    #[arg(
        long,
        global = true,
        env = "ROOMCAST_API_KEY_FILE",
        value_name = "FILE"
    )]
    pub key_file: Option<PathBuf>,

    /// Give up on a request after this long.
    #[arg(long, global = true, default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,

    #[command(subcommand)]
    pub command: ApiCommand,
}

/// Not derived: the key must not show up in a debug print.
impl std::fmt::Debug for ApiArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiArgs")
            .field("url", &self.url)
            .field("key", &self.key.as_ref().map(|_| "<redacted>"))
            .field("key_file", &self.key_file)
            .field("timeout", &self.timeout)
            .field("command", &self.command)
            .finish()
    }
}

/// The calls of `roomcast api`.
#[derive(clap::Subcommand, Debug)]
pub enum ApiCommand {
    /// Publish a message into a room; prints its id (exit 0 also when it was a duplicate
    /// of an earlier publish with the same idempotency key, noted on stderr).
    Publish(PublishArgs),
    /// Print a room's messages, one JSON object per line, oldest first (without a
    /// cursor: the newest --limit).
    History(HistoryArgs),
}

/// `roomcast api publish ROOM TEXT`.
#[derive(clap::Args, Debug)]
pub struct PublishArgs {
    /// Room to publish into.
    pub room: String,
    /// The message text.
    pub text: String,
    /// User id of the sender members see (`from.id`); with --from-name. Without both,
    /// the message is from the gateway's system user.
    #[arg(long, requires = "from_name")]
    pub from_id: Option<String>,
    /// Display name of the sender members see (`from.name`); with --from-id.
    #[arg(long, requires = "from_id")]
    pub from_name: Option<String>,
    /// Publish at most once per key (within the gateway's `api.idempotency_ttl`): a
    /// retry with the same key returns the first message's id.
    #[arg(long)]
    pub idempotency_key: Option<String>,
}

/// `roomcast api history ROOM`.
#[derive(clap::Args, Debug)]
pub struct HistoryArgs {
    /// Room to read.
    pub room: String,
    /// Messages per request (the gateway allows 1 to 1000).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..))]
    pub limit: u32,
    /// Only messages older than this id.
    #[arg(long, value_name = "ID", value_parser = parse_id, conflicts_with = "after")]
    pub before: Option<String>,
    /// Only messages newer than this id.
    #[arg(long, value_name = "ID", value_parser = parse_id)]
    pub after: Option<String>,
    /// Follow the `next` cursors to the end: back to the start of the room's history
    /// (or, with --after, up to its newest message); printed oldest first.
    #[arg(long)]
    pub all: bool,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| e.to_string())
}

/// A message id (`<ms>-<seq>`), checked before anything is sent.
fn parse_id(s: &str) -> Result<String, String> {
    s.parse::<MsgId>()
        .map(|id| id.to_string())
        .map_err(|e| e.to_string())
}

/// Runs one `roomcast api` call. Errors name the request and, for the usual refusals,
/// what to check; they never contain the key.
pub async fn run(args: ApiArgs) -> anyhow::Result<()> {
    let key = match (args.key, &args.key_file) {
        (Some(key), _) => Some(key),
        (None, Some(path)) => Some(read_key_file(path)?),
        (None, None) => None,
    };
    let api = Api::new(&args.url, key.as_deref(), args.timeout)?;
    match args.command {
        ApiCommand::Publish(p) => publish(&api, p).await,
        ApiCommand::History(h) => history(&api, h).await,
    }
}

/// The first key in a keys file: the first line that is not blank or a `#` comment.
/// Errors name the file, never its content.
fn read_key_file(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow!("cannot read the API key file {}: {e}", path.display()))?;
    first_key(&text)
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("no API key in {} (only blank or # lines)", path.display()))
}

fn first_key(text: &str) -> Option<&str> {
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
}

/// The body of `POST /api/v1/rooms/{room}/messages`.
#[derive(Serialize)]
struct PublishBody<'a> {
    text: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    from: Option<Sender<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    idempotency_key: Option<&'a str>,
}

/// `from`: who the message is shown as sent by.
#[derive(Serialize)]
struct Sender<'a> {
    id: &'a str,
    name: &'a str,
}

#[derive(Deserialize)]
struct Published {
    id: String,
    #[serde(default)]
    duplicate: bool,
}

async fn publish(api: &Api, args: PublishArgs) -> anyhow::Result<()> {
    check_room(&args.room)?;
    let body = PublishBody {
        text: &args.text,
        from: args
            .from_id
            .as_deref()
            .zip(args.from_name.as_deref())
            .map(|(id, name)| Sender { id, name }),
        idempotency_key: args.idempotency_key.as_deref(),
    };
    let url = api.room_url(&args.room, "messages");
    let body = serde_json::to_vec(&body).context("encoding the request")?;
    let answer: Published = api.call(Method::POST, url, Some(body)).await?;
    let mut out = std::io::stdout().lock();
    if !ignore_broken_pipe(writeln!(out, "{}", answer.id))? {
        return Ok(());
    }
    if answer.duplicate {
        eprintln!(
            "(duplicate: this idempotency key was used before; nothing new was published, \
             the id is the earlier message's)"
        );
    }
    Ok(())
}

/// Where the next page of history is (the API's `next`, and the cursor of a request).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Cursor {
    /// Older messages than this id.
    Before(String),
    /// Newer messages than this id.
    After(String),
}

/// The answer of `GET /api/v1/rooms/{room}/history`: `messages` oldest first.
#[derive(Deserialize)]
struct HistoryPage {
    #[serde(default)]
    messages: Vec<Message>,
    #[serde(default)]
    next: Option<Cursor>,
}

/// One message as printed: the fields of the API in its order (`id`, `from`, `text`,
/// `ts`; a plain map would sort them), then any the server adds later, so nothing it
/// sends is lost.
#[derive(Debug, Serialize, Deserialize)]
struct Message {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    id: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    from: Option<MessageFrom>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    text: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ts: Option<Value>,
    #[serde(flatten)]
    more: serde_json::Map<String, Value>,
}

/// A message's `from`, in the API's order (`id`, `name`, `color`), then any other field.
#[derive(Debug, Serialize, Deserialize)]
struct MessageFrom {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    id: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    color: Option<Value>,
    #[serde(flatten)]
    more: serde_json::Map<String, Value>,
}

async fn history(api: &Api, args: HistoryArgs) -> anyhow::Result<()> {
    check_room(&args.room)?;
    let mut cursor = match (args.before, args.after) {
        (Some(id), _) => Some(Cursor::Before(id)),
        (None, Some(id)) => Some(Cursor::After(id)),
        (None, None) => None,
    };
    // Pages in reading order: a page reached through `before` is older than every page
    // before it, one reached through `after` newer.
    let mut pages: VecDeque<Vec<Message>> = VecDeque::new();
    let mut first = true;
    loop {
        let url = api.history_url(&args.room, args.limit, cursor.as_ref());
        let page: HistoryPage = api.call(Method::GET, url, None).await?;
        let empty = page.messages.is_empty();
        match (&cursor, first) {
            (Some(Cursor::Before(_)), false) => pages.push_front(page.messages),
            _ => pages.push_back(page.messages),
        }
        first = false;
        if !args.all || empty {
            break;
        }
        match page.next {
            // The same cursor again would loop forever: the server has nothing further.
            Some(next) if Some(&next) != cursor.as_ref() => cursor = Some(next),
            _ => break,
        }
    }
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for message in pages.iter().flatten() {
        let line = serde_json::to_string(message).context("encoding a message")?;
        if !ignore_broken_pipe(writeln!(out, "{line}"))? {
            return Ok(());
        }
    }
    ignore_broken_pipe(out.flush())?;
    Ok(())
}

/// A closed stdout (`roomcast api history ... | head`) ends the output quietly:
/// `Ok(false)` then, `Ok(true)` when the write succeeded.
fn ignore_broken_pipe(result: std::io::Result<()>) -> anyhow::Result<bool> {
    match result {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(anyhow!("writing to stdout: {e}")),
    }
}

/// The room rules of the protocol, checked before connecting. Rooms made only of dots
/// (`.`, `..`) are valid names, but URL paths drop such segments: the API cannot name them.
fn check_room(room: &str) -> anyhow::Result<()> {
    if !is_valid_room(room) {
        bail!("invalid room name {room:?}: 1-64 characters of A-Z a-z 0-9 . _ : -");
    }
    if room.bytes().all(|b| b == b'.') {
        bail!("room {room:?} cannot be named in a URL path, so not through the API");
    }
    Ok(())
}

/// A client of one gateway's API.
struct Api {
    /// `--url`, with its path ending in `/`.
    base: Url,
    /// The bearer key, checked to be a valid header value.
    key: String,
    http: reqwest::Client,
    timeout: Duration,
}

impl Api {
    fn new(url: &str, key: Option<&str>, timeout: Duration) -> anyhow::Result<Api> {
        let mut base = Url::parse(url).map_err(|e| anyhow!("--url {url:?}: {e}"))?;
        let https = match base.scheme() {
            "http" => false,
            "https" => true,
            other => bail!("--url {url}: the scheme must be http or https, not {other}"),
        };
        if base.host_str().is_none_or(str::is_empty) {
            bail!("--url {url}: no host");
        }
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        base.set_query(None);
        base.set_fragment(None);
        let key = key.map(str::trim).filter(|k| !k.is_empty()).context(
            "no API key: set ROOMCAST_API_KEY (or --key) to one of the gateway's api.keys",
        )?;
        // Checked here, so a bad key is reported without echoing it (a header error could).
        if !key.bytes().all(|b| b.is_ascii_graphic()) {
            bail!("the API key (--key / ROOMCAST_API_KEY) must be printable ASCII without spaces");
        }
        Ok(Api {
            base,
            key: key.to_owned(),
            http: http_client(timeout, https)?,
            timeout,
        })
    }

    /// `{base}api/v1/rooms/{room}/{tail}` (room names need no escaping: see
    /// [`check_room`]).
    fn room_url(&self, room: &str, tail: &str) -> Url {
        let mut url = self.base.clone();
        url.set_path(&format!("{}api/v1/rooms/{room}/{tail}", self.base.path()));
        url
    }

    fn history_url(&self, room: &str, limit: u32, cursor: Option<&Cursor>) -> Url {
        let mut url = self.room_url(room, "history");
        {
            let mut query = url.query_pairs_mut();
            query.append_pair("limit", &limit.to_string());
            if let Some(cursor) = cursor {
                let (name, id) = match cursor {
                    Cursor::Before(id) => ("before", id),
                    Cursor::After(id) => ("after", id),
                };
                query.append_pair(name, id);
            }
        }
        url
    }

    /// Sends one request and decodes the JSON answer; any status but 2xx is an error
    /// naming the request, the status, the API's code and message and a hint.
    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        url: Url,
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<T> {
        let what = format!("{method} {url}");
        let mut request = self.http.request(method, url).bearer_auth(&self.key);
        if let Some(body) = body {
            request = request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| self.transport_error(&what, &e))?;
        let status = response.status();
        let location = response
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bytes = response
            .bytes()
            .await
            .map_err(|e| self.transport_error(&what, &e))?;
        if !status.is_success() {
            let message = status_error(&what, status, &bytes, location.as_deref());
            bail!("{}", self.redact(&message));
        }
        serde_json::from_slice(&bytes).map_err(|e| {
            anyhow!(
                "{what}: unexpected answer ({e}): {}",
                self.redact(&quote_body(&bytes))
            )
        })
    }

    fn transport_error(&self, what: &str, e: &reqwest::Error) -> anyhow::Error {
        // reqwest's own text is generic ("error sending request"); the innermost cause
        // names what happened ("Connection refused", "invalid peer certificate: ...").
        let mut cause: &dyn std::error::Error = e;
        while let Some(inner) = cause.source() {
            cause = inner;
        }
        let cause = self.redact(&cause.to_string());
        if e.is_timeout() {
            anyhow!("{what}: no answer within {:?} (--timeout)", self.timeout)
        } else if e.is_connect() {
            anyhow!(
                "{what}: cannot connect to {}: {cause} (is the gateway running there? \
                 set --url or ROOMCAST_API_URL to its client listener)",
                self.base
            )
        } else {
            anyhow!("{what}: {cause}")
        }
    }

    /// The key, should a server or library message quote it, replaced.
    fn redact(&self, text: &str) -> String {
        text.replace(&self.key, "<redacted>")
    }
}

/// The API's error body.
#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    code: String,
    #[serde(default)]
    message: String,
}

/// The error text for a refused request: the status, the API's code and message (or the
/// start of a body that is not the API's), and what to check for the usual causes.
fn status_error(what: &str, status: StatusCode, body: &[u8], location: Option<&str>) -> String {
    let detail = match serde_json::from_slice::<ErrorBody>(body) {
        Ok(ErrorBody { error }) if error.message.is_empty() => format!(": {}", error.code),
        Ok(ErrorBody { error }) => format!(": {}: {}", error.code, error.message),
        Err(_) if body.is_empty() => String::new(),
        Err(_) => format!(": {}", quote_body(body)),
    };
    let hint = match status {
        StatusCode::UNAUTHORIZED => " (the gateway does not accept this API key: check --key, \
             ROOMCAST_API_KEY or --key-file against its api.keys or api.keys_file)"
            .to_owned(),
        StatusCode::NOT_FOUND => " (is the server API enabled on this gateway, with api.keys or \
             api.keys_file, and is --url its client listener?)"
            .to_owned(),
        s if s.is_redirection() => format!(
            " (redirects are not followed, so the key goes nowhere else: set --url to {})",
            location.unwrap_or("the new address")
        ),
        _ => String::new(),
    };
    format!("{what}: HTTP {status}{detail}{hint}")
}

/// The start of a body, on one line, for an error message.
fn quote_body(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(QUOTED_BODY_CHARS)
        .collect();
    format!("{:?}", text.trim())
}

/// The API client: rustls with the ring provider and the platform's roots (as the JWKS
/// client in `auth`), no redirects. For an `http://` URL a platform without usable roots
/// is no reason to fail: TLS is not used.
fn http_client(timeout: Duration, https: bool) -> anyhow::Result<reqwest::Client> {
    let tls = match crate::tls::client_config() {
        Ok(tls) => tls,
        Err(e) if https => return Err(anyhow!("{e} (platform certificates)")),
        Err(_) => crate::tls::no_roots_config().map_err(|e| anyhow!(e))?,
    };
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .connect_timeout(timeout)
        .user_agent(concat!("roomcast-api-cli/", env!("CARGO_PKG_VERSION")))
        .build()
        .context("HTTP client")
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "k-0123456789abcdef";

    fn api(url: &str) -> Api {
        Api::new(url, Some(KEY), Duration::from_secs(1)).unwrap()
    }

    #[test]
    fn urls_keep_a_path_prefix_and_carry_the_cursor() {
        let a = api("http://127.0.0.1:8080");
        assert_eq!(
            a.room_url("lobby", "messages").as_str(),
            "http://127.0.0.1:8080/api/v1/rooms/lobby/messages"
        );
        let a = api("https://chat.example.com/roomcast/?x=1#f");
        assert_eq!(
            a.history_url("team:a", 20, Some(&Cursor::Before("5-1".into())))
                .as_str(),
            "https://chat.example.com/roomcast/api/v1/rooms/team:a/history?limit=20&before=5-1"
        );
        let a = api("http://gw/prefix");
        assert_eq!(
            a.history_url("r", 50, None).as_str(),
            "http://gw/prefix/api/v1/rooms/r/history?limit=50"
        );
        assert_eq!(
            a.history_url("r", 1, Some(&Cursor::After("7-0".into())))
                .as_str(),
            "http://gw/prefix/api/v1/rooms/r/history?limit=1&after=7-0"
        );
    }

    #[test]
    fn bad_urls_and_keys_are_refused_without_echoing_the_key() {
        let t = Duration::from_secs(1);
        assert!(Api::new("ws://gw/ws", Some(KEY), t).is_err());
        assert!(Api::new("gw:8080", Some(KEY), t).is_err());
        let e = Api::new("http://gw", None, t).err().unwrap().to_string();
        assert!(e.contains("ROOMCAST_API_KEY"), "{e}");
        let e = Api::new("http://gw", Some("  "), t)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("no API key"), "{e}");
        let bad = "with space-0123456789";
        let e = Api::new("http://gw", Some(bad), t)
            .err()
            .unwrap()
            .to_string();
        assert!(!e.contains(bad), "{e}");
        // Trailing newline (a key read from a file) is not part of the key.
        assert_eq!(Api::new("http://gw", Some("abc\n"), t).unwrap().key, "abc");
    }

    #[test]
    fn refusals_name_status_code_and_hint() {
        let body = br#"{"error":{"code":"unauthorized","message":"invalid API key"}}"#;
        let e = status_error("GET http://gw/x", StatusCode::UNAUTHORIZED, body, None);
        assert!(
            e.starts_with("GET http://gw/x: HTTP 401 Unauthorized: unauthorized: invalid API key"),
            "{e}"
        );
        assert!(e.contains("ROOMCAST_API_KEY"), "{e}");
        let e = status_error("GET u", StatusCode::NOT_FOUND, b"", None);
        assert!(
            e.contains("HTTP 404 Not Found (is the server API enabled"),
            "{e}"
        );
        let e = status_error(
            "GET u",
            StatusCode::BAD_GATEWAY,
            b"<html>\n bad\n</html>",
            None,
        );
        assert!(
            e.ends_with(r#"HTTP 502 Bad Gateway: "<html>  bad </html>""#),
            "{e}"
        );
        let e = status_error(
            "POST u",
            StatusCode::PERMANENT_REDIRECT,
            b"",
            Some("https://gw/"),
        );
        assert!(e.contains("set --url to https://gw/"), "{e}");
    }

    #[test]
    fn a_key_file_gives_its_first_key() {
        assert_eq!(
            first_key("# api keys\n\n  k-1234567890abcdef \nk2\n"),
            Some("k-1234567890abcdef")
        );
        assert_eq!(first_key("# none\n\n"), None);
        let e = read_key_file(Path::new("/nonexistent/keys"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/keys"), "{e}");
    }

    #[test]
    fn a_server_message_quoting_the_key_is_redacted() {
        let a = api("http://gw");
        assert_eq!(a.redact(&format!("bad key {KEY}")), "bad key <redacted>");
    }

    #[test]
    fn history_pages_and_cursors_decode() {
        let page: HistoryPage = serde_json::from_str(
            r#"{"room":"r","messages":[{"id":"1-0","text":"a"}],"next":{"before":"1-0"}}"#,
        )
        .unwrap();
        assert_eq!(page.messages.len(), 1);
        assert_eq!(page.next, Some(Cursor::Before("1-0".into())));
        let page: HistoryPage =
            serde_json::from_str(r#"{"room":"r","messages":[],"next":null}"#).unwrap();
        assert_eq!(page.next, None);
        let page: HistoryPage =
            serde_json::from_str(r#"{"messages":[],"next":{"after":"9-3"}}"#).unwrap();
        assert_eq!(page.next, Some(Cursor::After("9-3".into())));
    }

    #[test]
    fn messages_print_in_the_api_order_and_keep_unknown_fields() {
        let json = r##"{"ts":5,"text":"hi","reply_to":"1-0","from":{"color":"#abc","name":"A","id":"u"},"id":"2-0"}"##;
        let m: Message = serde_json::from_str(json).unwrap();
        assert_eq!(
            serde_json::to_string(&m).unwrap(),
            r##"{"id":"2-0","from":{"id":"u","name":"A","color":"#abc"},"text":"hi","ts":5,"reply_to":"1-0"}"##
        );
        let m: Message = serde_json::from_str(r#"{"id":"3-0","from":{"name":"B"}}"#).unwrap();
        assert_eq!(
            serde_json::to_string(&m).unwrap(),
            r#"{"id":"3-0","from":{"name":"B"}}"#
        );
    }

    #[test]
    fn publish_body_leaves_out_what_is_not_given() {
        let body = PublishBody {
            text: "hi",
            from: None,
            idempotency_key: None,
        };
        assert_eq!(serde_json::to_string(&body).unwrap(), r#"{"text":"hi"}"#);
        let body = PublishBody {
            text: "hi",
            from: Some(Sender {
                id: "u1",
                name: "Alice",
            }),
            idempotency_key: Some("k1"),
        };
        assert_eq!(
            serde_json::to_string(&body).unwrap(),
            r#"{"text":"hi","from":{"id":"u1","name":"Alice"},"idempotency_key":"k1"}"#
        );
    }

    #[test]
    fn ids_and_rooms_are_checked_before_sending() {
        assert_eq!(parse_id("1732258000000-0").unwrap(), "1732258000000-0");
        assert!(parse_id("yesterday").is_err());
        assert!(check_room("lobby").is_ok());
        assert!(check_room("has space").is_err());
        assert!(check_room("..").is_err());
    }
}
