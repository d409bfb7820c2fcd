//! The server API (`/api/v1/`) end to end, on in-process replicas sharing a real Redis, with
//! real WebSocket clients and real HTTP requests: keys (401 with a Bearer challenge, 404
//! when the API is off), publishing (one order with client messages on every replica, in
//! history and in a resume; idempotent across replicas), history cursors, members and rooms,
//! disconnecting a user everywhere (4003), removing a user from a room (`left` with reason
//! `removed`, rejoin barred for `api.kick_ttl`), the per-key rate limit, request validation,
//! the OpenAPI document and the request counter.

#[macro_use]
mod common;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::Instant;

use common::*;
use jwt_simple::prelude::{self as js, MACLike};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The key every API-enabled gateway of these tests accepts.
const KEY: &str = "api-test-key-0123456789abcdef";
/// A second key (the rate limit is per key).
const OTHER_KEY: &str = "api-test-other-key-9876543210";
/// The HS256 secret of the jwt-mode gateways.
const SECRET: &str = "api-integration-secret-32-bytes!";
/// `api.kick_ttl` of these tests.
const KICK_TTL: Duration = Duration::from_secs(2);

/// The API on with [`KEY`] and a short kick bar.
fn api_on(cfg: &mut roomcast::Config) {
    cfg.api.keys = vec![KEY.into()];
    cfg.api.kick_ttl = KICK_TTL;
}

/// [`api_on`] in jwt mode: users have ids.
fn api_on_jwt(cfg: &mut roomcast::Config) {
    api_on(cfg);
    cfg.auth.mode = roomcast::config::AuthMode::Jwt;
    cfg.auth.jwt.secret = Some(SECRET.into());
}

// ---- HTTP ---------------------------------------------------------------------------------

/// An HTTP answer: status, head (status line and headers) and body.
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    /// The body as JSON (panics with the reply when it is not).
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("the body is not JSON ({e}): {self}"))
    }

    /// The first header `name` (case-insensitive).
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// `error.code` of an error body.
    fn error_code(&self) -> String {
        let v = self.json();
        assert!(
            v["error"]["message"].is_string(),
            "an error without a message: {self}"
        );
        v["error"]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("no error.code: {self}"))
            .to_string()
    }

    /// Asserts a 200 and returns the JSON body.
    #[track_caller]
    fn ok(&self) -> Value {
        assert_eq!(self.status, 200, "expected 200: {self}");
        self.json()
    }

    /// Asserts an error with this status and code.
    #[track_caller]
    fn assert_error(&self, status: u16, code: &str, what: &str) {
        assert_eq!(self.status, status, "{what}: {self}");
        assert_eq!(self.error_code(), code, "{what}: {self}");
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HTTP {} {:?} {}", self.status, self.headers, self.body)
    }
}

/// One HTTP/1.1 request over a fresh loopback connection (`Connection: close`).
async fn http(
    base: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Reply {
    let host = base
        .strip_prefix("http://")
        .unwrap_or_else(|| panic!("an http:// url, got {base}"));
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(body) = body {
        request.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    request.push_str("\r\n");
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(body.unwrap_or_default());
    let exchange = async {
        let mut stream = TcpStream::connect(host)
            .await
            .unwrap_or_else(|e| panic!("connect to {host}: {e}"));
        // The server may answer (413) and close before reading a whole large body: what
        // counts is the answer, not whether every byte was written.
        let _ = stream.write_all(&bytes).await;
        let mut raw = Vec::new();
        let mut chunk = [0u8; 16384];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => raw.extend_from_slice(&chunk[..n]),
            }
        }
        raw
    };
    let raw = tokio::time::timeout(Duration::from_secs(15), exchange)
        .await
        .unwrap_or_else(|_| panic!("{method} {path}: no answer within 15 s"));
    parse_reply(&raw).unwrap_or_else(|| panic!("{method} {path}: not an HTTP answer: {raw:?}"))
}

fn parse_reply(raw: &[u8]) -> Option<Reply> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..split]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.to_ascii_lowercase().contains("chunked")
    });
    if chunked {
        body = dechunk(&body)?;
    }
    Some(Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn dechunk(mut body: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let end = body.windows(2).position(|w| w == b"\r\n")?;
        let size = std::str::from_utf8(&body[..end]).ok()?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        body = &body[end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(body.get(..size)?);
        body = body.get(size + 2..)?;
    }
}

/// The API of one gateway, called with one key.
#[derive(Clone)]
struct Api {
    base: String,
    auth: String,
}

impl Api {
    /// The API of `node` with [`KEY`].
    fn of(node: &Node) -> Api {
        Api::with_key(node, KEY)
    }

    fn with_key(node: &Node, key: &str) -> Api {
        Api {
            base: node.http_url.clone(),
            auth: format!("Bearer {key}"),
        }
    }

    /// `METHOD /api/v1{path}` with the key, and a JSON body when given.
    async fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Reply {
        let path = format!("/api/v1{path}");
        match body {
            None => {
                let body = (method != "GET").then_some(&b""[..]);
                http(
                    &self.base,
                    method,
                    &path,
                    &[("Authorization", &self.auth)],
                    body,
                )
                .await
            }
            Some(json) => {
                let text = json.to_string();
                http(
                    &self.base,
                    method,
                    &path,
                    &[
                        ("Authorization", &self.auth),
                        ("Content-Type", "application/json"),
                    ],
                    Some(text.as_bytes()),
                )
                .await
            }
        }
    }

    async fn get(&self, path: &str) -> Reply {
        self.call("GET", path, None).await
    }

    async fn post(&self, path: &str, body: &Value) -> Reply {
        self.call("POST", path, Some(body)).await
    }

    /// `POST` with a raw body and content type.
    async fn post_raw(&self, path: &str, content_type: &str, body: &[u8]) -> Reply {
        http(
            &self.base,
            "POST",
            &format!("/api/v1{path}"),
            &[
                ("Authorization", &self.auth),
                ("Content-Type", content_type),
            ],
            Some(body),
        )
        .await
    }

    async fn delete(&self, path: &str) -> Reply {
        self.call("DELETE", path, None).await
    }

    /// Publishes into `room` (must answer 200); returns `{id, duplicate}`.
    async fn publish(&self, room: &str, body: Value) -> Value {
        let reply = self.post(&format!("/rooms/{room}/messages"), &body).await;
        let v = reply.ok();
        parse_id(v["id"].as_str().unwrap_or_else(|| panic!("no id: {reply}")));
        assert!(v["duplicate"].is_boolean(), "no duplicate flag: {reply}");
        v
    }

    /// Publishes `text` from the system user; returns the id.
    async fn say(&self, room: &str, text: &str) -> String {
        id_of(&self.publish(room, json!({ "text": text })).await)
    }

    /// The whole (≤ 1000 entries) history of `room`, oldest first.
    async fn history(&self, room: &str) -> Vec<Value> {
        let page = self
            .get(&format!("/rooms/{room}/history?limit=1000"))
            .await
            .ok();
        assert!(page["next"].is_null(), "more than one page: {page}");
        page["messages"].as_array().expect("messages").clone()
    }

    /// `GET /rooms/{room}/members`: the members sorted by (id, name).
    async fn members(&self, room: &str) -> Vec<Value> {
        let v = self.get(&format!("/rooms/{room}/members")).await.ok();
        assert_eq!(v["room"], room, "{v}");
        let mut members = v["members"].as_array().expect("members").clone();
        assert_eq!(v["count"], members.len(), "count is not the length: {v}");
        for m in &members {
            assert!(
                m["name"].is_string() && m["color"].is_string(),
                "member without name or color: {v}"
            );
        }
        members.sort_by_key(|m| (m["id"].to_string(), m["name"].to_string()));
        members
    }

    /// `GET /rooms`: room -> member count.
    async fn rooms(&self) -> BTreeMap<String, u64> {
        let v = self.get("/rooms").await.ok();
        v["rooms"]
            .as_array()
            .unwrap_or_else(|| panic!("no rooms list: {v}"))
            .iter()
            .map(|r| {
                (
                    r["room"].as_str().expect("room").to_string(),
                    r["members"].as_u64().expect("members"),
                )
            })
            .collect()
    }
}

/// The names of members (as [`Api::members`] returns them).
fn names(members: &[Value]) -> Vec<String> {
    let mut names: Vec<String> = members
        .iter()
        .map(|m| m["name"].as_str().expect("name").to_string())
        .collect();
    names.sort();
    names
}

/// `(id, text)` of messages (WebSocket frames or history entries).
fn ids_texts(messages: &[Value]) -> Vec<(String, String)> {
    messages.iter().map(|m| (id_of(m), text_of(m))).collect()
}

fn ids(messages: &[Value]) -> Vec<String> {
    messages.iter().map(id_of).collect()
}

// ---- jwt ----------------------------------------------------------------------------------

#[derive(Serialize, Deserialize)]
struct NameClaim {
    name: String,
}

/// A connection token for `sub` named `name`, valid for 10 minutes.
fn token(sub: &str, name: &str) -> String {
    let claims = js::Claims::with_custom_claims(
        NameClaim { name: name.into() },
        js::Duration::from_secs(600),
    )
    .with_subject(sub);
    js::HS256Key::from_bytes(SECRET.as_bytes())
        .authenticate(claims)
        .expect("sign")
}

/// A jwt-mode client of `node` authenticated as `sub`.
async fn connect_as(node: &Node, sub: &str, name: &str) -> Client {
    Client::connect(&format!("{}?token={}", node.ws_url, token(sub, name))).await
}

// ---- 1. keys ------------------------------------------------------------------------------

/// Without a valid `Authorization: Bearer <key>` every endpoint answers 401 `unauthorized`
/// with `WWW-Authenticate: Bearer` (the key presented is never echoed), and nothing is
/// done: a refused publish reaches no member and no history.
#[tokio::test(flavor = "multi_thread")]
async fn requests_without_a_valid_key_are_refused_401_with_a_bearer_challenge() {
    let cluster = Cluster::start(Bus::Redis, 1, api_on).await;
    let node = cluster.node(0);
    let mut member = node.client().await;
    member.join("lobby", "watcher").await;

    let wrong = "wrong-key-0123456789abcdef-xyz";
    let almost = &KEY[..KEY.len() - 1];
    let longer = format!("{KEY}x");
    let presented: [(&str, Option<String>); 6] = [
        ("no Authorization header", None),
        ("a wrong key", Some(format!("Bearer {wrong}"))),
        (
            "the key minus its last character",
            Some(format!("Bearer {almost}")),
        ),
        ("the key plus a character", Some(format!("Bearer {longer}"))),
        ("the key without a scheme", Some(KEY.to_string())),
        ("the key as Basic credentials", Some(format!("Basic {KEY}"))),
    ];
    let publish = json!({"text": "sneaky"}).to_string();
    let requests: [(&str, &str, Option<&[u8]>); 6] = [
        ("GET", "/api/v1/rooms", None),
        (
            "POST",
            "/api/v1/rooms/lobby/messages",
            Some(publish.as_bytes()),
        ),
        ("GET", "/api/v1/rooms/lobby/history", None),
        ("GET", "/api/v1/rooms/lobby/members", None),
        ("DELETE", "/api/v1/rooms/lobby/members/watcher", Some(b"")),
        ("POST", "/api/v1/users/watcher/disconnect", Some(b"")),
    ];
    for (what, auth) in &presented {
        for (method, path, body) in requests {
            let mut headers = vec![("Content-Type", "application/json")];
            if let Some(auth) = auth {
                headers.push(("Authorization", auth.as_str()));
            }
            let reply = http(&node.http_url, method, path, &headers, body).await;
            let ctx = format!("{what}: {method} {path}");
            reply.assert_error(401, "unauthorized", &ctx);
            assert_eq!(
                reply.header("WWW-Authenticate"),
                Some("Bearer"),
                "{ctx}: {reply}"
            );
            if auth.is_some() {
                assert!(!reply.body.contains(wrong), "{ctx}: key echoed: {reply}");
                assert!(!reply.body.contains(almost), "{ctx}: key echoed: {reply}");
            }
        }
    }

    // Nothing happened: no message, no removal, no disconnect.
    member.assert_silent(Duration::from_millis(300)).await;
    let api = Api::of(node);
    assert!(api.history("lobby").await.is_empty());
    assert_eq!(names(&api.members("lobby").await), ["watcher"]);
    // The right key is accepted.
    let id = api.say("lobby", "with the key").await;
    assert_eq!(id_of(&member.next_message().await), id);
}

/// With no keys configured the API is off: every path under `/api/v1/` answers 404 (the
/// endpoints, the OpenAPI document, unknown paths), whatever `Authorization` says.
#[tokio::test(flavor = "multi_thread")]
async fn with_no_keys_the_api_is_off_and_every_path_under_it_answers_404() {
    let cluster = Cluster::start(Bus::Redis, 1, defaults).await;
    let node = cluster.node(0);
    let bearer = format!("Bearer {KEY}");
    let body = json!({"text": "hi"}).to_string();
    for auth in [None, Some(bearer.as_str())] {
        for (method, path, body) in [
            ("GET", "/api/v1/rooms", None),
            ("GET", "/api/v1/openapi.json", None),
            ("GET", "/api/v1/no/such/endpoint", None),
            ("GET", "/api/v1", None),
            (
                "POST",
                "/api/v1/rooms/lobby/messages",
                Some(body.as_bytes()),
            ),
            ("GET", "/api/v1/rooms/lobby/history", None),
            ("POST", "/api/v1/users/u-1/disconnect", Some(&b""[..])),
        ] {
            let mut headers = vec![("Content-Type", "application/json")];
            if let Some(auth) = auth {
                headers.push(("Authorization", auth));
            }
            let reply = http(&node.http_url, method, path, &headers, body).await;
            assert_eq!(reply.status, 404, "{method} {path} with {auth:?}: {reply}");
            assert!(
                !reply.body.contains("\"paths\""),
                "{method} {path}: the document leaked: {reply}"
            );
        }
    }
    // The gateway itself works.
    let mut c = node.client().await;
    c.join("lobby", "x").await;
    c.send("lobby", "still chatting").await;
}

/// With the API on, a path under `/api/v1/` that is no endpoint answers 404 `not_found`.
#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_path_under_the_enabled_api_answers_404_not_found() {
    let cluster = Cluster::start(Bus::Redis, 1, api_on).await;
    let api = Api::of(cluster.node(0));
    for path in ["/no/such/endpoint", "/room", "/users/u-1"] {
        api.get(path).await.assert_error(404, "not_found", path);
    }
}

// ---- 2. publish ---------------------------------------------------------------------------

/// API messages, published through every replica while members on every replica send
/// their own, reach every member in one order identical on every replica, with the ids
/// the API answered; without `from` the sender is the system user, with `from` that user.
/// History holds the same ids, texts, senders and times, and a member resuming after a
/// disconnect (`join` with `since`) gets the same ids.
#[tokio::test(flavor = "multi_thread")]
async fn api_messages_reach_every_replica_in_one_order_with_client_messages_history_and_resume() {
    let cluster = Cluster::start(Bus::Redis, 3, api_on).await;
    let room = "news";
    let mut members = Vec::new();
    for i in 0..3 {
        let mut c = cluster.client(i).await;
        c.join(room, &format!("member{i}")).await;
        members.push(c);
    }
    // Wait until each member saw the others join, so no presence is in flight.
    for (i, m) in members.iter_mut().enumerate() {
        for j in (0..3).filter(|j| *j > i) {
            m.wait_presence(room, "join", &format!("member{j}")).await;
        }
    }

    // Members blast (pipelined) while the API publishes through rotating replicas.
    let senders: Vec<_> = members
        .into_iter()
        .enumerate()
        .map(|(i, mut c)| {
            tokio::spawn(async move {
                let texts: Vec<String> = (0..10).map(|k| format!("c{i}-{k}")).collect();
                let ids = c.send_many(room, &texts).await;
                (c, texts, ids)
            })
        })
        .collect();
    let mut expected: HashMap<String, String> = HashMap::new(); // text -> id
    for k in 0..15 {
        let text = format!("api-{k}");
        let id = Api::of(cluster.node(k)).say(room, &text).await;
        expected.insert(text, id);
    }
    let mut members = Vec::new();
    for task in senders {
        let (c, texts, ids) = task.await.expect("sender");
        expected.extend(texts.into_iter().zip(ids));
        members.push(c);
    }
    let signed = Api::of(cluster.node(1))
        .publish(
            room,
            json!({"text": "signed", "from": {"id": "bot-7", "name": "Newsbot"}}),
        )
        .await;
    assert_eq!(signed["duplicate"], false);
    expected.insert("signed".into(), id_of(&signed));
    let end = Api::of(cluster.node(2)).say(room, "end").await;
    expected.insert("end".into(), end);

    let mut seen = Vec::new();
    for m in members.iter_mut() {
        seen.push(m.messages_until("end").await);
    }
    let order = ids_texts(&seen[0]);
    for (i, s) in seen.iter().enumerate() {
        assert_eq!(
            ids_texts(s),
            order,
            "member{i} (replica {i}) saw another order than member0"
        );
    }
    assert_strictly_increasing(&ids(&seen[0]));
    assert_eq!(
        order.len(),
        expected.len(),
        "missing or extra messages: {order:?}"
    );
    for (id, text) in &order {
        assert_eq!(
            expected.get(text),
            Some(id),
            "{text} arrived with id {id}, but was answered another"
        );
    }
    // Senders: the system user without `from`, the given user with it.
    for m in &seen[0] {
        let text = text_of(m);
        let from = &m["from"];
        if text.starts_with("api-") || text == "end" {
            assert_eq!(from["id"], "system", "{m}");
            assert_eq!(from["name"], "system", "{m}");
            assert!(
                from["color"].as_str().is_some_and(|c| c.starts_with('#')),
                "{m}"
            );
        } else if text == "signed" {
            assert_eq!(from["id"], "bot-7", "{m}");
            assert_eq!(from["name"], "Newsbot", "{m}");
        } else {
            let sender = text[1..].split('-').next().expect("sender");
            assert_eq!(from["name"], format!("member{sender}"), "{m}");
            assert!(
                from.get("id").is_none(),
                "an anonymous sender has no id: {m}"
            );
        }
    }

    // History, read through another replica: the same ids, texts, senders and times.
    let history = Api::of(cluster.node(1)).history(room).await;
    let fields = |m: &Value| (id_of(m), text_of(m), m["from"].clone(), m["ts"].clone());
    assert_eq!(
        history.iter().map(fields).collect::<Vec<_>>(),
        seen[0].iter().map(fields).collect::<Vec<_>>(),
        "history differs from what the members received"
    );

    // member2 disconnects, more is published, and it resumes on another replica from the
    // id of message 20: it gets every later id, the same as the others.
    let cursor = id_of(&seen[0][20]);
    members.pop().expect("member2").close().await;
    let after_api = Api::of(cluster.node(0)).say(room, "after-0").await;
    let after_ws = id_of(&members[0].send(room, "after-1").await);
    let mut resumed = cluster.client(1).await;
    let joined = resumed.join_since(room, "member2", &cursor).await;
    assert_eq!(joined["recovered"], true, "{joined}");
    let replay = resumed.messages_until("after-1").await;
    let mut want: Vec<String> = ids(&seen[0][21..]);
    want.extend([after_api, after_ws]);
    assert_eq!(ids(&replay), want, "the resume replayed other ids");
    for m in members.iter_mut() {
        let got = m.messages_until("after-1").await;
        assert_eq!(ids(&got), want[want.len() - 2..].to_vec());
    }
}

// ---- 3. idempotency -----------------------------------------------------------------------

/// A repeated `idempotency_key` publishes once: the repeat answers the first id with
/// `"duplicate":true`; ten concurrent calls through two replicas publish exactly one
/// message (members and history see it once) and all answer its id; the same key in
/// another room is another message.
#[tokio::test(flavor = "multi_thread")]
async fn a_repeated_idempotency_key_publishes_once_even_concurrently_on_two_replicas() {
    let cluster = Cluster::start(Bus::Redis, 2, api_on).await;
    let room = "orders";
    let mut members = Vec::new();
    for i in 0..2 {
        let mut c = cluster.client(i).await;
        c.join(room, &format!("clerk{i}")).await;
        members.push(c);
    }
    let mut other_room_member = cluster.client(1).await;
    other_room_member.join("orders-eu", "clerk-eu").await;

    let (a, b) = (Api::of(cluster.node(0)), Api::of(cluster.node(1)));
    let body = json!({"text": "order 1 paid", "idempotency_key": "order-1"});
    let first = a.publish(room, body.clone()).await;
    assert_eq!(first["duplicate"], false, "{first}");
    let again = b.publish(room, body.clone()).await;
    assert_eq!(again["id"], first["id"], "a repeat got another id");
    assert_eq!(again["duplicate"], true, "{again}");

    // Ten at once, through both replicas.
    let calls: Vec<_> = (0..10)
        .map(|i| {
            let api = if i % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(async move {
                api.publish(
                    "orders",
                    json!({"text": "order 2 paid", "idempotency_key": "order-2"}),
                )
                .await
            })
        })
        .collect();
    let mut answers = Vec::new();
    for call in calls {
        answers.push(call.await.expect("call"));
    }
    let id2 = answers[0]["id"].clone();
    assert!(answers.iter().all(|v| v["id"] == id2), "{answers:?}");
    let originals = answers.iter().filter(|v| v["duplicate"] == false).count();
    assert_eq!(originals, 1, "exactly one call publishes: {answers:?}");

    // The same key in another room is another message.
    let eu = a.publish("orders-eu", body.clone()).await;
    assert_eq!(eu["duplicate"], false, "{eu}");
    assert_eq!(ids(&b.history("orders-eu").await), [id_of(&eu)]);
    assert_eq!(id_of(&other_room_member.next_message().await), id_of(&eu));

    let end = a.say(room, "end").await;
    let want = vec![
        (id_of(&first), "order 1 paid".to_string()),
        (
            id2.as_str().expect("id").to_string(),
            "order 2 paid".to_string(),
        ),
        (end, "end".to_string()),
    ];
    for m in members.iter_mut() {
        assert_eq!(ids_texts(&m.messages_until("end").await), want);
    }
    assert_eq!(ids_texts(&a.history(room).await), want);
}

// ---- 4. history ---------------------------------------------------------------------------

/// 120 messages (API and client): walking `?limit=25` back from the newest with
/// `before=next.before`, and forward from the first with `after=next.after`, each gives
/// every id exactly once in order, the same ids a member received, until `next` is null.
async fn history_pages_walk_every_message_once_both_ways(c: &Cluster) {
    let room = "archive";
    let mut member = c.client(0).await;
    member.join(room, "reader").await;
    let mut published = Vec::new();
    for k in 0..120 {
        let text = format!("m{k}");
        let id = if k % 4 == 3 {
            id_of(&member.send(room, &text).await)
        } else {
            Api::of(c.node(k)).say(room, &text).await
        };
        published.push(id);
    }
    let received = ids(&member.messages_until("m119").await);
    assert_eq!(received, published);

    let api = Api::of(c.node(1));
    // Backward from the newest.
    let mut walked: Vec<String> = Vec::new();
    let mut query = "limit=25".to_string();
    let mut pages = 0;
    loop {
        pages += 1;
        assert!(pages <= 10, "the backward walk does not end");
        let page = api
            .get(&format!("/rooms/{room}/history?{query}"))
            .await
            .ok();
        assert_eq!(page["room"], room);
        let page_ids = ids(page["messages"].as_array().expect("messages"));
        assert!(page_ids.len() <= 25, "{query}: {} entries", page_ids.len());
        assert_strictly_increasing(&page_ids);
        walked.splice(0..0, page_ids.iter().cloned());
        if page["next"].is_null() {
            break;
        }
        assert_eq!(
            page_ids.len(),
            25,
            "{query}: a short page with a next: {page}"
        );
        assert!(page["next"]["after"].is_null(), "{page}");
        let before = page["next"]["before"].as_str().expect("next.before");
        assert_eq!(before, page_ids[0], "{page}");
        query = format!("limit=25&before={before}");
    }
    assert_eq!(walked, received, "the backward walk differs");
    assert_eq!(pages, 5);

    // Forward from the first id.
    let mut forward = vec![received[0].clone()];
    let mut query = format!("limit=25&after={}", received[0]);
    let mut pages = 0;
    loop {
        pages += 1;
        assert!(pages <= 10, "the forward walk does not end");
        let page = api
            .get(&format!("/rooms/{room}/history?{query}"))
            .await
            .ok();
        let page_ids = ids(page["messages"].as_array().expect("messages"));
        assert!(page_ids.len() <= 25, "{query}: {} entries", page_ids.len());
        forward.extend(page_ids.iter().cloned());
        if page["next"].is_null() {
            break;
        }
        assert_eq!(
            page_ids.len(),
            25,
            "{query}: a short page with a next: {page}"
        );
        assert!(page["next"]["before"].is_null(), "{page}");
        let after = page["next"]["after"].as_str().expect("next.after");
        assert_eq!(after, page_ids[24], "{page}");
        query = format!("limit=25&after={after}");
    }
    assert_eq!(forward, received, "the forward walk differs");

    // A room without messages: an empty page and no next.
    let empty = api.get("/rooms/silence/history?limit=25").await.ok();
    assert_eq!(empty["messages"], json!([]), "{empty}");
    assert!(empty["next"].is_null(), "{empty}");
}
on_both_buses!(history_pages_walk_every_message_once_both_ways, 2, api_on);

/// A cursor that is not a message id, a limit of 0 (or over 1000, or not a number), and
/// `before` with `after` are refused with 400 `bad_request`; a bad room with 400
/// `invalid_room`.
#[tokio::test(flavor = "multi_thread")]
async fn history_refuses_bad_cursors_limits_and_both_directions_with_400() {
    let cluster = Cluster::start(Bus::Redis, 1, api_on).await;
    let api = Api::of(cluster.node(0));
    let id = api.say("archive", "one").await;
    for query in [
        "before=yesterday".to_string(),
        "after=17".to_string(),
        "before=1-x".to_string(),
        "limit=0".to_string(),
        "limit=1001".to_string(),
        "limit=-1".to_string(),
        "limit=ten".to_string(),
        format!("before={id}&after={id}"),
    ] {
        api.get(&format!("/rooms/archive/history?{query}"))
            .await
            .assert_error(400, "bad_request", &query);
    }
    api.get("/rooms/bad!room/history")
        .await
        .assert_error(400, "invalid_room", "bad room");
    // The good ones still work.
    assert_eq!(
        ids(&api.history("archive").await),
        std::slice::from_ref(&id)
    );
    let page = api.get("/rooms/archive/history?limit=1000").await.ok();
    assert_eq!(ids(page["messages"].as_array().expect("messages")), [id]);
}

// ---- 5. members and rooms -----------------------------------------------------------------

/// Anonymous members joined on different replicas are listed by name (no id) in
/// `members`, and `rooms` counts them; after one leaves and one disconnects, both update.
#[tokio::test(flavor = "multi_thread")]
async fn members_and_rooms_list_who_is_connected_on_every_replica() {
    let cluster = Cluster::start(Bus::Redis, 3, api_on).await;
    let mut alice = cluster.client(0).await;
    alice.join("lounge", "alice").await;
    let mut bob = cluster.client(1).await;
    bob.join("lounge", "bob").await;
    let mut carol = cluster.client(2).await;
    carol.join("kitchen", "carol").await;

    for i in 0..3 {
        let api = Api::of(cluster.node(i));
        let lounge = api.members("lounge").await;
        assert_eq!(names(&lounge), ["alice", "bob"], "via replica {i}");
        assert!(
            lounge.iter().all(|m| m.get("id").is_none()),
            "anonymous members have no id: {lounge:?}"
        );
        assert_eq!(names(&api.members("kitchen").await), ["carol"]);
        assert!(api.members("attic").await.is_empty());
        let rooms = api.rooms().await;
        assert_eq!(
            rooms,
            BTreeMap::from([("kitchen".into(), 1), ("lounge".into(), 2)]),
            "via replica {i}"
        );
    }

    bob.leave("lounge").await;
    let api = Api::of(cluster.node(2));
    assert_eq!(names(&api.members("lounge").await), ["alice"]);
    assert_eq!(
        api.rooms().await,
        BTreeMap::from([("kitchen".into(), 1), ("lounge".into(), 1)])
    );

    carol.close().await;
    let api = Api::of(cluster.node(0));
    eventually(Duration::from_secs(10), || {
        let api = api.clone();
        async move {
            let rooms = api.rooms().await;
            let kitchen = api.members("kitchen").await;
            if rooms == BTreeMap::from([("lounge".into(), 1)]) && kitchen.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "after carol left: rooms {rooms:?}, kitchen {kitchen:?}"
                ))
            }
        }
    })
    .await;
}

/// Percent-encodes a query value (everything but ASCII letters and digits).
fn urlencode(v: &str) -> String {
    v.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// `members` pages with `limit` and `after` = the previous page's `next`: every member on
/// every replica exactly once, `count` the room's whole member count on every page, no
/// `next` on the last page; a bad `limit` or `after` is a 400.
#[tokio::test(flavor = "multi_thread")]
async fn members_page_through_every_member_exactly_once() {
    let cluster = Cluster::start(Bus::Redis, 3, api_on).await;
    let mut clients = Vec::new();
    for i in 0..11 {
        let mut c = cluster.client(i).await;
        c.join("hall", &format!("m{i:02}")).await;
        clients.push(c);
    }
    let api = Api::of(cluster.node(1));
    let mut names = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &after {
            Some(a) => format!("/rooms/hall/members?limit=4&after={}", urlencode(a)),
            None => "/rooms/hall/members?limit=4".to_string(),
        };
        let page = api.get(&path).await.ok();
        pages += 1;
        assert_eq!(page["count"], 11, "{page}");
        let members = page["members"].as_array().expect("members");
        assert!(members.len() <= 4, "{page}");
        names.extend(
            members
                .iter()
                .map(|m| m["name"].as_str().expect("name").to_string()),
        );
        match page["next"].as_str() {
            Some(next) => after = Some(next.to_string()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    names.sort();
    let expected: Vec<String> = (0..11).map(|i| format!("m{i:02}")).collect();
    assert_eq!(names, expected, "every member exactly once");
    for bad in ["limit=0", "limit=1001", "after="] {
        let reply = api.get(&format!("/rooms/hall/members?{bad}")).await;
        assert_eq!(reply.status, 400, "{bad}: {reply}");
    }
}

/// In jwt mode members carry their ids and a user is listed (and counted) once however
/// many connections on however many replicas; they leave the list with their last one.
#[tokio::test(flavor = "multi_thread")]
async fn members_in_jwt_mode_are_listed_once_per_user_with_their_ids() {
    let cluster = Cluster::start(Bus::Redis, 2, api_on_jwt).await;
    let mut alice0 = connect_as(cluster.node(0), "u-alice", "Alice").await;
    alice0.join("lounge", "ignored").await;
    let mut alice1 = connect_as(cluster.node(1), "u-alice", "Alice").await;
    alice1.join("lounge", "ignored").await;
    let mut bob = connect_as(cluster.node(1), "u-bob", "Bob").await;
    bob.join("lounge", "ignored").await;

    let api = Api::of(cluster.node(0));
    let members = api.members("lounge").await;
    let who: Vec<(Value, Value)> = members
        .iter()
        .map(|m| (m["id"].clone(), m["name"].clone()))
        .collect();
    assert_eq!(
        who,
        [
            (json!("u-alice"), json!("Alice")),
            (json!("u-bob"), json!("Bob"))
        ]
    );
    assert_eq!(api.rooms().await, BTreeMap::from([("lounge".into(), 2)]));

    alice0.leave("lounge").await;
    let ids_of = |members: &[Value]| -> Vec<String> {
        members
            .iter()
            .map(|m| m["id"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    assert_eq!(ids_of(&api.members("lounge").await), ["u-alice", "u-bob"]);
    alice1.leave("lounge").await;
    assert_eq!(ids_of(&api.members("lounge").await), ["u-bob"]);
    assert_eq!(api.rooms().await, BTreeMap::from([("lounge".into(), 1)]));
}

// ---- 6. disconnect ------------------------------------------------------------------------

/// `POST /users/{id}/disconnect` closes the user's connections on every replica with
/// 4003 `forbidden` and says how many; another user on the same replicas stays connected
/// and still receives messages. An unknown user closes nothing.
#[tokio::test(flavor = "multi_thread")]
async fn disconnect_closes_the_users_connections_on_every_replica_with_4003() {
    let cluster = Cluster::start(Bus::Redis, 2, api_on_jwt).await;
    let mut alices = Vec::new();
    let mut bobs = Vec::new();
    for i in 0..2 {
        let mut a = connect_as(cluster.node(i), "u-alice", "Alice").await;
        a.join("hall", "-").await;
        alices.push(a);
        let mut b = connect_as(cluster.node(i), "u-bob", "Bob").await;
        b.join("hall", "-").await;
        bobs.push(b);
    }
    let api = Api::of(cluster.node(0));
    // No body at all: the body is optional.
    let reply = api
        .call("POST", "/users/u-alice/disconnect", None)
        .await
        .ok();
    assert_eq!(reply["closed"], 2, "{reply}");
    assert_eq!(reply["replicas"], 2, "{reply}");
    assert_eq!(reply["answered"], 2, "{reply}");
    for (i, a) in alices.iter_mut().enumerate() {
        let closed = a.wait_closed(FRAME_TIMEOUT).await;
        assert_eq!(
            closed.close,
            Some((4003, "forbidden".to_string())),
            "alice on replica {i}: {:?}",
            closed.skipped
        );
    }

    let id = Api::of(cluster.node(1)).say("hall", "still here").await;
    for (i, b) in bobs.iter_mut().enumerate() {
        let m = b.next_message().await;
        assert_eq!(
            (id_of(&m), text_of(&m)),
            (id.clone(), "still here".into()),
            "bob {i}"
        );
    }
    let sent = bobs[0].send("hall", "bob talks").await;
    for b in bobs.iter_mut() {
        assert_eq!(id_of(&b.messages_until("bob talks").await[0]), id_of(&sent));
    }

    let nobody = api
        .post("/users/u-nobody/disconnect", &json!({}))
        .await
        .ok();
    assert_eq!(nobody["closed"], 0, "{nobody}");
    assert_eq!(nobody["replicas"], 2, "{nobody}");
}

/// With `{"reason": ..}` each closed connection (in a room or not) first receives an
/// `error` frame with code `forbidden` and the reason as message, then the 4003 close.
#[tokio::test(flavor = "multi_thread")]
async fn a_disconnect_reason_reaches_the_client_as_a_forbidden_error_before_the_close() {
    let cluster = Cluster::start(Bus::Redis, 2, api_on_jwt).await;
    let mut in_room = connect_as(cluster.node(0), "u-mallory", "Mallory").await;
    in_room.join("hall", "-").await;
    let mut roomless = connect_as(cluster.node(1), "u-mallory", "Mallory").await;
    let reply = Api::of(cluster.node(1))
        .post("/users/u-mallory/disconnect", &json!({"reason": "spam"}))
        .await
        .ok();
    assert_eq!(reply["closed"], 2, "{reply}");
    for (what, c) in [("in a room", &mut in_room), ("in no room", &mut roomless)] {
        let closed = c.wait_closed(FRAME_TIMEOUT).await;
        assert_eq!(closed.close, Some((4003, "forbidden".into())), "{what}");
        let last = closed
            .skipped
            .last()
            .unwrap_or_else(|| panic!("{what}: no frame before the close"));
        assert_eq!(last["type"], "error", "{what}: {:?}", closed.skipped);
        assert_eq!(last["code"], "forbidden", "{what}: {last}");
        assert_eq!(last["message"], "spam", "{what}: {last}");
    }
}

/// In anonymous mode the user id of a disconnect is the display name: the connections
/// joined under it close with 4003, others do not.
#[tokio::test(flavor = "multi_thread")]
async fn disconnect_in_anonymous_mode_closes_the_connections_joined_under_that_name() {
    let cluster = Cluster::start(Bus::Redis, 2, api_on).await;
    let mut spammers = Vec::new();
    for i in 0..2 {
        let mut c = cluster.client(i).await;
        c.join("hall", "spammer").await;
        spammers.push(c);
    }
    let mut innocent = cluster.client(1).await;
    innocent.join("hall", "innocent").await;
    let reply = Api::of(cluster.node(1))
        .post("/users/spammer/disconnect", &json!({}))
        .await
        .ok();
    assert_eq!(reply["closed"], 2, "{reply}");
    for c in spammers.iter_mut() {
        assert_eq!(c.expect_close().await, (4003, "forbidden".into()));
    }
    let id = Api::of(cluster.node(0)).say("hall", "calm again").await;
    assert_eq!(id_of(&innocent.next_message().await), id);
}

// ---- 7. removal from a room ---------------------------------------------------------------

/// `DELETE /rooms/{room}/members/{id}` takes the user's connections on every replica out
/// of the room (`left` with reason `removed`; other rooms untouched), other members see
/// the leave, sending there is `not_joined`, and rejoining is `forbidden` until
/// `api.kick_ttl` has passed, then accepted.
#[tokio::test(flavor = "multi_thread")]
async fn removing_a_member_takes_them_out_everywhere_and_bars_rejoining_for_the_kick_ttl() {
    let cluster = Cluster::start(Bus::Redis, 2, api_on_jwt).await;
    let mut alice0 = connect_as(cluster.node(0), "u-alice", "Alice").await;
    alice0.join("hall", "-").await;
    alice0.join("side", "-").await;
    let mut alice1 = connect_as(cluster.node(1), "u-alice", "Alice").await;
    alice1.join("hall", "-").await;
    let mut bob = connect_as(cluster.node(1), "u-bob", "Bob").await;
    bob.join("hall", "-").await;

    let removed_at = Instant::now();
    let reply = Api::of(cluster.node(0))
        .delete("/rooms/hall/members/u-alice")
        .await
        .ok();
    assert_eq!(reply["removed"], 2, "{reply}");
    assert_eq!(reply["replicas"], 2, "{reply}");
    assert_eq!(reply["answered"], 2, "{reply}");
    for (i, a) in [&mut alice0, &mut alice1].into_iter().enumerate() {
        let left = a.next_of_type("left").await;
        assert_eq!(
            left,
            json!({"type": "left", "room": "hall", "reason": "removed"}),
            "alice on replica {i}"
        );
    }
    let presence = bob.wait_presence("hall", "leave", "Alice").await;
    assert_eq!(presence["user"]["id"], "u-alice", "{presence}");

    // Out of the room: sending is not_joined, rejoining (on any replica) is forbidden.
    let refused = alice0.try_send("hall", "let me talk").await;
    assert_eq!(
        (&refused["type"], &refused["code"]),
        (&json!("error"), &json!("not_joined")),
        "{refused}"
    );
    for (i, a) in [&mut alice0, &mut alice1].into_iter().enumerate() {
        let refused = a.try_join("hall", "-").await;
        assert_eq!(
            refused["type"], "error",
            "alice {i} rejoined at once: {refused}"
        );
        assert_eq!(refused["code"], "forbidden", "alice {i}: {refused}");
    }
    // Messages of the room no longer reach her; her other room still does.
    bob.send("hall", "after the removal").await;
    Api::of(cluster.node(1)).say("side", "side marker").await;
    let got = alice0.messages_until("side marker").await;
    assert!(
        got.iter().all(|m| m["room"] == "side"),
        "hall messages after removal: {got:?}"
    );
    alice1.assert_silent(Duration::from_millis(300)).await;

    // After the kick ttl the rejoin is accepted.
    tokio::time::sleep(KICK_TTL.saturating_sub(removed_at.elapsed()) + Duration::from_millis(200))
        .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let answer = alice1.try_join("hall", "-").await;
        if answer["type"] == "joined" {
            break;
        }
        assert_eq!(answer["code"], "forbidden", "{answer}");
        assert!(
            Instant::now() < deadline,
            "still barred long after the kick ttl: {answer}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let sent = bob.send("hall", "welcome back").await;
    assert_eq!(
        id_of(&alice1.messages_until("welcome back").await[0]),
        id_of(&sent)
    );
}

// ---- 8. rate limit ------------------------------------------------------------------------

/// A burst beyond `api.requests_per_second` for one key is refused with 429
/// `rate_limited` and `Retry-After` (and publishes nothing); another key has its own
/// budget.
#[tokio::test(flavor = "multi_thread")]
async fn a_burst_beyond_the_keys_rate_is_refused_429_with_retry_after() {
    let cluster = Cluster::start(Bus::Redis, 1, |cfg: &mut roomcast::Config| {
        api_on(cfg);
        cfg.api.keys.push(OTHER_KEY.into());
        cfg.api.requests_per_second = 5;
    })
    .await;
    let node = cluster.node(0);
    let mut member = node.client().await;
    member.join("busy", "listener").await;

    let api = Api::of(node);
    let burst: Vec<_> = (0..20)
        .map(|k| {
            let api = api.clone();
            tokio::spawn(async move {
                api.post("/rooms/busy/messages", &json!({"text": format!("b{k}")}))
                    .await
            })
        })
        .collect();
    let mut accepted = Vec::new();
    let mut limited = 0;
    for call in burst {
        let reply = call.await.expect("call");
        match reply.status {
            200 => accepted.push(id_of(&reply.json())),
            429 => {
                limited += 1;
                reply.assert_error(429, "rate_limited", "burst");
                let retry = reply
                    .header("Retry-After")
                    .unwrap_or_else(|| panic!("no Retry-After: {reply}"));
                assert!(retry.parse::<u64>().is_ok_and(|s| s >= 1), "{reply}");
            }
            _ => panic!("neither accepted nor limited: {reply}"),
        }
    }
    assert!(
        limited >= 1,
        "20 requests at once with a budget of 5: none refused"
    );

    let other = Api::with_key(node, OTHER_KEY);
    let last = other.say("busy", "other key").await;

    // Exactly the accepted ones were published.
    accepted.sort_by_key(|id| parse_id(id));
    accepted.push(last);
    let got = ids(&member.messages_until("other key").await);
    assert_eq!(got, accepted);
    eventually(Duration::from_secs(10), || {
        let other = other.clone();
        let accepted = accepted.clone();
        async move {
            let reply = other.get("/rooms/busy/history?limit=1000").await;
            if reply.status != 200 {
                return Err(format!("history: {reply}"));
            }
            let got = ids(reply.json()["messages"].as_array().expect("messages"));
            if got == accepted {
                Ok(())
            } else {
                Err(format!("history {got:?} != {accepted:?}"))
            }
        }
    })
    .await;
}

// ---- 9. validation ------------------------------------------------------------------------

/// A body over `api.max_body_bytes` is 413, a text over `limits.max_text_bytes` is 413
/// `too_large`, a bad room 400 `invalid_room`, malformed JSON 400 `bad_request` (and so
/// are an empty text, a bad idempotency key and a bad sender); none publishes anything,
/// while a text at the limit is accepted.
#[tokio::test(flavor = "multi_thread")]
async fn bad_publishes_are_refused_with_413_or_400_and_publish_nothing() {
    let cluster = Cluster::start(Bus::Redis, 1, |cfg: &mut roomcast::Config| {
        api_on(cfg);
        cfg.api.max_body_bytes = 2048;
        cfg.limits.max_text_bytes = 1000;
    })
    .await;
    let node = cluster.node(0);
    let api = Api::of(node);
    let mut member = node.client().await;
    member.join("lobby", "watcher").await;

    let path = "/rooms/lobby/messages";
    // A body over the limit whose text is within it (JSON white space pads it).
    let padded = format!(r#"{{"text": "hi"{}}}"#, " ".repeat(3000));
    api.post_raw(path, "application/json", padded.as_bytes())
        .await
        .assert_error(413, "too_large", "body over max_body_bytes");
    api.post(path, &json!({"text": "x".repeat(1001)}))
        .await
        .assert_error(413, "too_large", "text over max_text_bytes");
    for room in ["bad%20room", "bad!room", &"r".repeat(65)] {
        api.post(&format!("/rooms/{room}/messages"), &json!({"text": "hi"}))
            .await
            .assert_error(400, "invalid_room", room);
    }
    for (what, body) in [
        ("malformed JSON", &br#"{"text": "hi""#[..]),
        ("not JSON", b"text=hi"),
    ] {
        api.post_raw(path, "application/json", body)
            .await
            .assert_error(400, "bad_request", what);
    }
    for (what, body) in [
        ("an empty text", json!({"text": ""})),
        (
            "an empty idempotency key",
            json!({"text": "hi", "idempotency_key": ""}),
        ),
        (
            "a 129-byte idempotency key",
            json!({"text": "hi", "idempotency_key": "k".repeat(129)}),
        ),
        (
            "an empty sender id",
            json!({"text": "hi", "from": {"id": "", "name": "x"}}),
        ),
    ] {
        api.post(path, &body)
            .await
            .assert_error(400, "bad_request", what);
    }
    api.post(
        path,
        &json!({"text": "hi", "from": {"id": "u-1", "name": "   "}}),
    )
    .await
    .assert_error(400, "invalid_name", "a blank sender name");

    // Other endpoints check the room too.
    api.get("/rooms/bad!room/members")
        .await
        .assert_error(400, "invalid_room", "members");
    api.delete("/rooms/bad!room/members/u-1")
        .await
        .assert_error(400, "invalid_room", "kick");

    // Nothing was published; a text at the limit is.
    let at_limit = api.say("lobby", &"y".repeat(1000)).await;
    let m = member.next_message().await;
    assert_eq!(
        id_of(&m),
        at_limit,
        "a refused publish reached the member first: {m}"
    );
    assert_eq!(ids(&api.history("lobby").await), [at_limit]);
}

/// A publish body that is JSON but lacks `text`, has it with the wrong type, or has an
/// unknown field is a bad request: 400 `bad_request`, as the OpenAPI document declares
/// for a bad text (it lists no 422).
#[tokio::test(flavor = "multi_thread")]
async fn a_publish_body_with_missing_wrong_or_unknown_fields_is_400_bad_request() {
    let cluster = Cluster::start(Bus::Redis, 1, api_on).await;
    let api = Api::of(cluster.node(0));
    for (what, body) in [
        ("no text", json!({})),
        ("a number as text", json!({"text": 5})),
        ("an unknown field", json!({"text": "hi", "colour": "red"})),
        ("an array", json!(["hi"])),
    ] {
        api.post("/rooms/lobby/messages", &body)
            .await
            .assert_error(400, "bad_request", what);
    }
    assert!(api.history("lobby").await.is_empty());
}

// ---- 10. OpenAPI --------------------------------------------------------------------------

/// `GET /api/v1/openapi.json` serves an OpenAPI 3.1 JSON document listing every endpoint.
#[tokio::test(flavor = "multi_thread")]
async fn the_openapi_document_is_served_as_3_1_json_listing_every_endpoint() {
    let cluster = Cluster::start(Bus::Redis, 1, api_on).await;
    let reply = Api::of(cluster.node(0)).get("/openapi.json").await;
    let doc = reply.ok();
    assert!(
        reply
            .header("Content-Type")
            .is_some_and(|t| t.starts_with("application/json")),
        "{reply}"
    );
    assert!(
        doc["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1")),
        "openapi: {}",
        doc["openapi"]
    );
    for (method, path) in [
        ("post", "/api/v1/rooms/{room}/messages"),
        ("get", "/api/v1/rooms/{room}/history"),
        ("get", "/api/v1/rooms/{room}/members"),
        ("delete", "/api/v1/rooms/{room}/members/{id}"),
        ("get", "/api/v1/rooms"),
        ("post", "/api/v1/users/{id}/disconnect"),
    ] {
        assert!(
            doc["paths"][path][method].is_object(),
            "{method} {path} missing from {}",
            doc["paths"]
        );
    }
}

// ---- 11. metrics --------------------------------------------------------------------------

/// Each request is counted on the replica that served it, by endpoint and status:
/// `roomcast_api_requests_total{endpoint="publish",status="200"}` and the refusals.
#[tokio::test(flavor = "multi_thread")]
async fn api_requests_are_counted_by_endpoint_and_status_on_the_serving_replica() {
    let cluster = Cluster::start(Bus::Redis, 2, api_on).await;
    let (n0, n1) = (cluster.node(0), cluster.node(1));
    const NAME: &str = "roomcast_api_requests_total";
    let count = |node: &Node, endpoint: &'static str, status: &'static str| {
        let admin = node.admin_url.clone();
        async move { metric_value(&admin, NAME, &[("endpoint", endpoint), ("status", status)]).await }
    };
    let before0 = count(n0, "publish", "200").await;
    let before1 = count(n1, "publish", "200").await;
    let refused_before = count(n1, "publish", "401").await;
    let bad_before = count(n1, "publish", "400").await;
    let history_before = count(n1, "history", "200").await;

    let api = Api::of(n1);
    for k in 0..3 {
        api.say("counted", &format!("c{k}")).await;
    }
    let anonymous = http(
        &n1.http_url,
        "POST",
        "/api/v1/rooms/counted/messages",
        &[("Content-Type", "application/json")],
        Some(br#"{"text":"no key"}"#),
    )
    .await;
    assert_eq!(anonymous.status, 401, "{anonymous}");
    api.post("/rooms/bad!room/messages", &json!({"text": "x"}))
        .await
        .assert_error(400, "invalid_room", "bad room");
    api.history("counted").await;

    assert_eq!(count(n1, "publish", "200").await, before1 + 3.0);
    assert_eq!(count(n1, "publish", "401").await, refused_before + 1.0);
    assert_eq!(count(n1, "publish", "400").await, bad_before + 1.0);
    assert_eq!(count(n1, "history", "200").await, history_before + 1.0);
    assert_eq!(
        count(n0, "publish", "200").await,
        before0,
        "counted on the wrong replica"
    );
}

/// Every error under the enabled API has the API's error body
/// `{"error":{"code":..,"message":..}}`, including those axum's extractors and router
/// produce: a disconnect body over `api.max_body_bytes` (413), a path that is not UTF-8
/// (400), a method the endpoint does not take (405) and `/api/v1/` itself (404).
#[tokio::test(flavor = "multi_thread")]
async fn every_api_error_has_the_json_error_body() {
    let cluster = Cluster::start(Bus::Redis, 1, |cfg: &mut roomcast::Config| {
        api_on(cfg);
        cfg.api.max_body_bytes = 2048;
    })
    .await;
    let api = Api::of(cluster.node(0));
    let padded = format!(r#"{{"reason": "spam"{}}}"#, " ".repeat(3000));
    let cases = [
        (
            "a disconnect body over max_body_bytes",
            api.post_raw(
                "/users/u-1/disconnect",
                "application/json",
                padded.as_bytes(),
            )
            .await,
            413,
        ),
        (
            "a room that is not UTF-8",
            api.get("/rooms/%FF/members").await,
            400,
        ),
        (
            "a user id that is not UTF-8",
            api.delete("/rooms/lobby/members/%FF").await,
            400,
        ),
        (
            "GET on the publish endpoint",
            api.get("/rooms/lobby/messages").await,
            405,
        ),
        ("the API's root /api/v1/", api.get("/").await, 404),
    ];
    let mut wrong = Vec::new();
    for (what, reply, status) in cases {
        let body: Option<Value> = serde_json::from_str(&reply.body).ok();
        let shaped = body
            .as_ref()
            .is_some_and(|v| v["error"]["code"].is_string() && v["error"]["message"].is_string());
        if reply.status != status || !shaped {
            wrong.push(format!(
                "{what}: expected {status} with an error body, got {reply}"
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "errors without the API's error body:\n{}",
        wrong.join("\n")
    );
}
