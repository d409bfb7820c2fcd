//! A real WebSocket client (tokio-tungstenite) speaking protocol v1, with helpers that read
//! like the protocol (`join`, `send`, `expect("presence")`), and a raw WebSocket that does the
//! upgrade by hand and never answers pings (a dead client).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use roomcast_protocol::MsgId;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// How long a client waits for a frame it expects before failing the test.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(10);

/// What the server sent next.
#[derive(Debug)]
pub enum Incoming {
    /// A text frame, parsed as JSON.
    Json(Value),
    /// A close frame: `(code, reason)`, `None` when it had no payload.
    Close(Option<(u16, String)>),
    /// The connection ended without a close frame (EOF, reset, protocol error).
    Ended(String),
}

/// How a connection ended, from [`Client::wait_closed`].
#[derive(Debug)]
pub struct Closed {
    /// The close frame `(code, reason)`; `None` when the connection ended without one.
    pub close: Option<(u16, String)>,
    /// Text frames read (and skipped) before the end.
    pub skipped: Vec<Value>,
}

/// A protocol v1 client. Frames read while waiting for a specific reply (for example the
/// sender's own `message` that arrives before its `ack`) are kept in order and returned by
/// later reads, so nothing is lost.
pub struct Client {
    ws: WebSocketStream<TcpStream>,
    pending: VecDeque<Value>,
    /// The `welcome` frame read on connect.
    pub welcome: Value,
    /// Pings received so far (answered automatically while reading).
    pub pings: u64,
    label: String,
    next_ref: u64,
}

impl Client {
    /// Connects to `ws_url` (`ws://HOST:PORT/ws`) and reads the `welcome`.
    pub async fn connect(ws_url: &str) -> Client {
        let stream = TcpStream::connect(host_port(ws_url))
            .await
            .unwrap_or_else(|e| panic!("connect to {ws_url}: {e}"));
        Client::handshake(ws_url, stream).await
    }

    /// Connects without reading a `welcome` (jwt mode: it answers the token, which may
    /// come later as an `auth` frame, or never).
    pub async fn connect_unwelcomed(ws_url: &str) -> Client {
        let stream = TcpStream::connect(host_port(ws_url))
            .await
            .unwrap_or_else(|e| panic!("connect to {ws_url}: {e}"));
        Client::upgrade(ws_url, stream).await
    }

    /// Connects with a small kernel receive buffer (set before connecting), so a client
    /// that stops reading makes the server's writes back up quickly.
    pub async fn connect_with_recv_buffer(ws_url: &str, bytes: u32) -> Client {
        let addr = tokio::net::lookup_host(host_port(ws_url))
            .await
            .expect("resolve")
            .next()
            .expect("an address");
        let socket = TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(bytes).expect("SO_RCVBUF");
        let stream = socket
            .connect(addr)
            .await
            .unwrap_or_else(|e| panic!("connect to {ws_url}: {e}"));
        Client::handshake(ws_url, stream).await
    }

    async fn handshake(ws_url: &str, stream: TcpStream) -> Client {
        let mut client = Client::upgrade(ws_url, stream).await;
        let welcome = client.expect("welcome").await;
        assert!(
            welcome["node"].is_string(),
            "welcome without node: {welcome}"
        );
        assert!(
            welcome["conn"].is_string(),
            "welcome without conn: {welcome}"
        );
        client.welcome = welcome;
        client
    }

    async fn upgrade(ws_url: &str, stream: TcpStream) -> Client {
        let config = WebSocketConfig::default()
            .max_message_size(Some(64 << 20))
            .max_frame_size(Some(64 << 20));
        let (ws, _response) = tokio::time::timeout(
            FRAME_TIMEOUT,
            tokio_tungstenite::client_async_with_config(ws_url, stream, Some(config)),
        )
        .await
        .unwrap_or_else(|_| panic!("WebSocket upgrade to {ws_url} timed out"))
        .unwrap_or_else(|e| panic!("WebSocket upgrade to {ws_url} failed: {e}"));
        Client {
            ws,
            pending: VecDeque::new(),
            welcome: Value::Null,
            pings: 0,
            label: ws_url.to_string(),
            next_ref: 0,
        }
    }

    /// The node id from the `welcome`.
    pub fn node_id(&self) -> &str {
        self.welcome["node"].as_str().unwrap_or_default()
    }

    fn new_ref(&mut self) -> String {
        self.next_ref += 1;
        format!("r{}", self.next_ref)
    }

    // ---- sending -------------------------------------------------------------------------

    /// Sends one JSON value as a text frame.
    pub async fn send_json(&mut self, v: Value) {
        self.send_text(&v.to_string()).await;
    }

    /// Sends a raw text frame.
    pub async fn send_text(&mut self, text: &str) {
        let label = self.label.clone();
        self.ws
            .send(Message::text(text.to_string()))
            .await
            .unwrap_or_else(|e| panic!("{label}: sending a text frame failed: {e}"));
    }

    /// Sends a text frame, reporting (not panicking on) a failure, e.g. after the server closed.
    pub async fn try_send_text(&mut self, text: &str) -> Result<(), String> {
        self.ws
            .send(Message::text(text.to_string()))
            .await
            .map_err(|e| e.to_string())
    }

    /// Sends a binary frame.
    pub async fn send_binary(&mut self, bytes: &[u8]) {
        let label = self.label.clone();
        self.ws
            .send(Message::binary(bytes.to_vec()))
            .await
            .unwrap_or_else(|e| panic!("{label}: sending a binary frame failed: {e}"));
    }

    // ---- reading -------------------------------------------------------------------------

    /// Reads the next frame from the socket (not from the pending buffer), answering and
    /// counting pings; `None` when nothing arrived within `wait`.
    pub async fn read_incoming(&mut self, wait: Duration) -> Option<Incoming> {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let next = match tokio::time::timeout(left, self.ws.next()).await {
                Err(_) => return None,
                Ok(next) => next,
            };
            match next {
                None => return Some(Incoming::Ended("stream ended".into())),
                Some(Err(e)) => return Some(Incoming::Ended(e.to_string())),
                Some(Ok(Message::Text(text))) => {
                    let v = serde_json::from_str(text.as_str()).unwrap_or_else(|e| {
                        panic!(
                            "{}: server sent a text frame that is not JSON ({e}): {text}",
                            self.label
                        )
                    });
                    return Some(Incoming::Json(v));
                }
                Some(Ok(Message::Binary(b))) => panic!(
                    "{}: server sent a binary frame ({} bytes); protocol v1 is text only",
                    self.label,
                    b.len()
                ),
                Some(Ok(Message::Ping(_))) => self.pings += 1,
                Some(Ok(Message::Pong(_))) | Some(Ok(Message::Frame(_))) => {}
                Some(Ok(Message::Close(frame))) => {
                    return Some(Incoming::Close(
                        frame.map(|f| (u16::from(f.code), f.reason.to_string())),
                    ));
                }
            }
        }
    }

    /// The next JSON frame within `wait`, `None` if none came. Panics if the connection ends.
    pub async fn try_next_json(&mut self, wait: Duration) -> Option<Value> {
        if let Some(v) = self.pending.pop_front() {
            return Some(v);
        }
        match self.read_incoming(wait).await {
            None => None,
            Some(Incoming::Json(v)) => Some(v),
            Some(other) => panic!("{}: connection ended while reading: {other:?}", self.label),
        }
    }

    /// The next JSON frame (waiting up to [`FRAME_TIMEOUT`]).
    pub async fn next_json(&mut self) -> Value {
        match self.try_next_json(FRAME_TIMEOUT).await {
            Some(v) => v,
            None => panic!("{}: no frame arrived within {FRAME_TIMEOUT:?}", self.label),
        }
    }

    /// The next frame, which must be of type `ty` (nothing is skipped).
    pub async fn expect(&mut self, ty: &str) -> Value {
        let v = self.next_json().await;
        assert_eq!(
            v["type"], ty,
            "{}: expected a `{ty}` frame, got {v}",
            self.label
        );
        v
    }

    /// The next frame of type `ty`, skipping (dropping) frames of other types.
    pub async fn next_of_type(&mut self, ty: &str) -> Value {
        let deadline = Instant::now() + FRAME_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.try_next_json(left).await {
                Some(v) if v["type"] == ty => return v,
                Some(_) => {}
                None => panic!("{}: no `{ty}` frame within {FRAME_TIMEOUT:?}", self.label),
            }
        }
    }

    /// Skips frames until a `presence` `event` (`join`/`leave`) about `name` in `room`.
    pub async fn wait_presence(&mut self, room: &str, event: &str, name: &str) -> Value {
        loop {
            let v = self.next_of_type("presence").await;
            if v["room"] == room && v["event"] == event && v["user"]["name"] == name {
                return v;
            }
        }
    }

    /// The next `message`, skipping `presence` and `ack` frames; any other frame fails.
    pub async fn next_message(&mut self) -> Value {
        loop {
            let v = self.next_json().await;
            match v["type"].as_str() {
                Some("message") => return v,
                Some("presence") | Some("ack") => {}
                _ => panic!("{}: expected a `message`, got {v}", self.label),
            }
        }
    }

    /// Reads messages (see [`Client::next_message`]) up to and including the one whose text
    /// is `last`, and returns them all.
    pub async fn messages_until(&mut self, last: &str) -> Vec<Value> {
        let mut out = Vec::new();
        loop {
            let m = self.next_message().await;
            let done = m["text"] == last;
            out.push(m);
            if done {
                return out;
            }
        }
    }

    /// The next frame must be an `error` with `code`; returns it.
    pub async fn expect_error(&mut self, code: &str) -> Value {
        let v = self.expect("error").await;
        assert_eq!(v["code"], code, "{}: wrong error code in {v}", self.label);
        assert!(
            v["message"].is_string(),
            "{}: error without message: {v}",
            self.label
        );
        v
    }

    /// Fails if any frame (pending or new) arrives within `wait`. Pings are fine.
    pub async fn assert_silent(&mut self, wait: Duration) {
        if let Some(v) = self.pending.pop_front() {
            panic!("{}: expected silence, but got {v}", self.label);
        }
        if let Some(incoming) = self.read_incoming(wait).await {
            panic!("{}: expected silence, but got {incoming:?}", self.label);
        }
    }

    /// Drops every frame read but not yet returned.
    pub fn discard_pending(&mut self) {
        self.pending.clear();
    }

    /// Reads until the server closes; returns the close frame `(code, reason)`, skipping
    /// text frames. Fails if the connection ends without a close frame.
    pub async fn expect_close(&mut self) -> (u16, String) {
        let closed = self.wait_closed(FRAME_TIMEOUT).await;
        match closed.close {
            Some(close) => close,
            None => panic!("{}: connection ended without a close frame", self.label),
        }
    }

    /// Reads until the connection ends (close frame, EOF or reset), skipping text frames;
    /// panics if it is still open after `wait` of silence.
    pub async fn wait_closed(&mut self, wait: Duration) -> Closed {
        let mut skipped: Vec<Value> = self.pending.drain(..).collect();
        loop {
            match self.read_incoming(wait).await {
                None => panic!(
                    "{}: connection still open, nothing arrived for {wait:?} (read {} frames)",
                    self.label,
                    skipped.len()
                ),
                Some(Incoming::Json(v)) => skipped.push(v),
                Some(Incoming::Close(close)) => return Closed { close, skipped },
                Some(Incoming::Ended(_)) => {
                    return Closed {
                        close: None,
                        skipped,
                    };
                }
            }
        }
    }

    /// Reads until `n` pings in total have arrived (answering them); text frames are kept.
    pub async fn count_pings(&mut self, n: u64) {
        let deadline = Instant::now() + FRAME_TIMEOUT + Duration::from_secs(n);
        while self.pings < n {
            assert!(
                Instant::now() < deadline,
                "{}: only {} of {n} pings arrived",
                self.label,
                self.pings
            );
            // Pings are counted inside `read_incoming`; poll in short slices to see them.
            match self.read_incoming(Duration::from_millis(50)).await {
                None => {}
                Some(Incoming::Json(v)) => self.pending.push_back(v),
                Some(other) => panic!(
                    "{}: connection ended after {} pings: {other:?}",
                    self.label, self.pings
                ),
            }
        }
    }

    /// Closes the connection cleanly (close frame 1000) and waits for the server's answer.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
        let deadline = Instant::now() + FRAME_TIMEOUT;
        while Instant::now() < deadline {
            match self.read_incoming(FRAME_TIMEOUT).await {
                Some(Incoming::Json(_)) => {}
                _ => return,
            }
        }
    }

    /// Reads socket frames until one satisfies `is_reply` or is an `error` echoing `reference`;
    /// other frames are kept for later reads. Panics if the connection ends.
    async fn await_reply(&mut self, reference: &str, is_reply: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + FRAME_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.read_incoming(left).await {
                None => panic!(
                    "{}: no answer to the frame with ref {reference} within {FRAME_TIMEOUT:?}",
                    self.label
                ),
                Some(Incoming::Json(v)) => {
                    if is_reply(&v) || (v["type"] == "error" && v["ref"] == reference) {
                        return v;
                    }
                    self.pending.push_back(v);
                }
                Some(other) => panic!(
                    "{}: connection ended while waiting for the answer to {reference}: {other:?}",
                    self.label
                ),
            }
        }
    }

    // ---- protocol operations -------------------------------------------------------------

    /// Sends `join` and returns the answer: `joined` for that room, or the `error`.
    pub async fn try_join_frame(&mut self, mut frame: Value) -> Value {
        let reference = self.new_ref();
        frame["type"] = json!("join");
        frame["ref"] = json!(reference);
        let room = frame["room"].clone();
        self.send_json(frame).await;
        self.await_reply(&reference, |v| v["type"] == "joined" && v["room"] == room)
            .await
    }

    /// Joins `room` as `name`; returns the answer (`joined` or `error`).
    pub async fn try_join(&mut self, room: &str, name: &str) -> Value {
        self.try_join_frame(json!({"room": room, "name": name}))
            .await
    }

    /// Joins `room` as `name`; returns `joined` (panics on an error).
    pub async fn join(&mut self, room: &str, name: &str) -> Value {
        self.label = name.to_string();
        let v = self.try_join(room, name).await;
        assert_eq!(v["type"], "joined", "{name}: join {room} refused: {v}");
        v
    }

    /// Joins `room` as `name` resuming after the message id `since`; returns `joined`.
    pub async fn join_since(&mut self, room: &str, name: &str, since: &str) -> Value {
        self.label = name.to_string();
        let v = self
            .try_join_frame(json!({"room": room, "name": name, "since": since}))
            .await;
        assert_eq!(
            v["type"], "joined",
            "{name}: join {room} since {since} refused: {v}"
        );
        v
    }

    /// Leaves `room`; returns the answer (`left` or `error`).
    pub async fn try_leave(&mut self, room: &str) -> Value {
        let reference = self.new_ref();
        self.send_json(json!({"type": "leave", "room": room, "ref": reference}))
            .await;
        let room = json!(room);
        self.await_reply(&reference, |v| v["type"] == "left" && v["room"] == room)
            .await
    }

    /// Leaves `room`; returns `left`.
    pub async fn leave(&mut self, room: &str) -> Value {
        let v = self.try_leave(room).await;
        assert_eq!(
            v["type"], "left",
            "{}: leave {room} refused: {v}",
            self.label
        );
        v
    }

    /// Sends `text` to `room`; returns the answer (`ack` or `error`), keeping other frames
    /// (such as the own `message`) for later reads.
    pub async fn try_send(&mut self, room: &str, text: &str) -> Value {
        let reference = self.new_ref();
        self.send_json(json!({"type": "send", "room": room, "text": text, "ref": reference}))
            .await;
        let r = json!(reference);
        self.await_reply(&reference, |v| v["type"] == "ack" && v["ref"] == r)
            .await
    }

    /// Sends a `send` frame (`room`, `text` and whatever else it holds, such as `idem`);
    /// returns the answer (`ack` or `error`), keeping other frames for later reads.
    pub async fn try_send_frame(&mut self, mut frame: Value) -> Value {
        let reference = self.new_ref();
        frame["type"] = json!("send");
        frame["ref"] = json!(reference);
        self.send_json(frame).await;
        let r = json!(reference);
        self.await_reply(&reference, |v| {
            (v["type"] == "ack" || v["type"] == "error") && v["ref"] == r
        })
        .await
    }

    /// Sends `text` to `room` and returns the `ack` (panics on an error).
    pub async fn send(&mut self, room: &str, text: &str) -> Value {
        let v = self.try_send(room, text).await;
        assert_eq!(
            v["type"], "ack",
            "{}: send to {room} refused: {v}",
            self.label
        );
        assert!(v["id"].is_string(), "{}: ack without id: {v}", self.label);
        v
    }

    /// Sends every text without waiting, then collects the acks; returns the acked ids in
    /// send order. Other frames are kept for later reads.
    pub async fn send_many(&mut self, room: &str, texts: &[String]) -> Vec<String> {
        let mut refs = Vec::with_capacity(texts.len());
        for text in texts {
            let reference = self.new_ref();
            self.send_json(json!({"type": "send", "room": room, "text": text, "ref": reference}))
                .await;
            refs.push(reference);
        }
        let mut ids: HashMap<String, String> = HashMap::new();
        while ids.len() < refs.len() {
            match self.read_incoming(FRAME_TIMEOUT).await {
                None => panic!(
                    "{}: {} of {} acks, then nothing for {FRAME_TIMEOUT:?}",
                    self.label,
                    ids.len(),
                    refs.len()
                ),
                Some(Incoming::Json(v)) if v["type"] == "ack" => {
                    let r = v["ref"].as_str().unwrap_or_default().to_string();
                    let id = v["id"].as_str().expect("ack id").to_string();
                    ids.insert(r, id);
                }
                Some(Incoming::Json(v)) if v["type"] == "error" => {
                    panic!("{}: a send was refused: {v}", self.label)
                }
                Some(Incoming::Json(v)) => self.pending.push_back(v),
                Some(other) => panic!(
                    "{}: connection ended during send_many: {other:?}",
                    self.label
                ),
            }
        }
        refs.iter().map(|r| ids[r].clone()).collect()
    }
}

/// After a bus outage: retries sends from `a` (both in `room`) until one reaches `b`, then
/// checks that messages flow both ways again. Sends refused as `unavailable` are retried.
pub async fn chat_restored(a: &mut Client, b: &mut Client, room: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut k = 0;
    'outer: loop {
        assert!(std::time::Instant::now() < deadline, "chat never came back");
        k += 1;
        let answer = a.try_send(room, &format!("probe{k}")).await;
        if answer["type"] != "ack" {
            assert_eq!(answer["code"], "unavailable", "{answer}");
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        while let Some(v) = b.try_next_json(Duration::from_millis(500)).await {
            if v["type"] == "message" && v["text"].as_str().is_some_and(|t| t.starts_with("probe"))
            {
                break 'outer;
            }
        }
    }
    a.discard_pending();
    let ack = a.send(room, "we are back").await;
    let m = b.messages_until("we are back").await;
    assert_eq!(id_of(m.last().expect("message")), id_of(&ack));
    let ack = b.send(room, "indeed").await;
    let m = a.messages_until("indeed").await;
    assert_eq!(id_of(m.last().expect("message")), id_of(&ack));
}

/// `HOST:PORT` of a `ws://HOST:PORT/PATH` url.
fn host_port(ws_url: &str) -> String {
    let rest = ws_url
        .strip_prefix("ws://")
        .unwrap_or_else(|| panic!("expected a ws:// url, got {ws_url}"));
    rest.split('/').next().unwrap_or(rest).to_string()
}

/// A message id `"<ms>-<seq>"`, comparable (`ms` first, then `seq`).
pub fn parse_id(id: &str) -> MsgId {
    id.parse()
        .unwrap_or_else(|e| panic!("message id {id:?}: {e}"))
}

/// The `id` of a `message` or `ack` frame.
pub fn id_of(v: &Value) -> String {
    v["id"]
        .as_str()
        .unwrap_or_else(|| panic!("frame without id: {v}"))
        .to_string()
}

/// The `text` of a `message` frame.
pub fn text_of(v: &Value) -> String {
    v["text"]
        .as_str()
        .unwrap_or_else(|| panic!("frame without text: {v}"))
        .to_string()
}

/// Asserts that ids are strictly increasing (`ms` first, then `seq`).
pub fn assert_strictly_increasing(ids: &[String]) {
    for pair in ids.windows(2) {
        assert!(
            parse_id(&pair[0]) < parse_id(&pair[1]),
            "ids not strictly increasing: {} then {}",
            pair[0],
            pair[1]
        );
    }
}

/// A WebSocket whose upgrade was done by hand over plain TCP and which never answers pings
/// or sends anything: a dead client as the server sees it.
pub struct RawWs {
    stream: TcpStream,
    buf: Vec<u8>,
}

/// Sends a WebSocket upgrade request by hand on `ws_url` and reads the response head.
/// Returns the stream, the head (status line and headers) and any bytes after it.
pub async fn upgrade_by_hand(ws_url: &str) -> (TcpStream, String, Vec<u8>) {
    upgrade_by_hand_with(ws_url, &[]).await
}

/// [`upgrade_by_hand`] with extra request headers (`Origin`, `X-Forwarded-For`, ...).
pub async fn upgrade_by_hand_with(
    ws_url: &str,
    headers: &[(&str, &str)],
) -> (TcpStream, String, Vec<u8>) {
    let host = host_port(ws_url);
    let path = ws_url
        .strip_prefix("ws://")
        .and_then(|r| r.find('/').map(|i| r[i..].to_string()))
        .unwrap_or_else(|| "/".into());
    let mut stream = TcpStream::connect(&host).await.expect("connect");
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("write upgrade");
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 1024];
        let n = tokio::time::timeout(FRAME_TIMEOUT, stream.read(&mut chunk))
            .await
            .expect("upgrade response timed out")
            .expect("read upgrade response");
        assert!(n > 0, "connection closed during the upgrade");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    (stream, head, buf[head_end..].to_vec())
}

/// Opcodes of the frames a [`RawWs`] reads.
pub mod opcode {
    pub const TEXT: u8 = 0x1;
    pub const BINARY: u8 = 0x2;
    pub const CLOSE: u8 = 0x8;
    pub const PING: u8 = 0x9;
    pub const PONG: u8 = 0xA;
}

impl RawWs {
    /// Opens a TCP connection and performs the WebSocket upgrade handshake by hand.
    pub async fn connect(ws_url: &str) -> RawWs {
        let (stream, head, rest) = upgrade_by_hand(ws_url).await;
        assert!(head.starts_with("HTTP/1.1 101"), "upgrade refused: {head}");
        RawWs { stream, buf: rest }
    }

    /// Reads one frame `(opcode, payload)`; `None` on EOF or reset. Panics after `wait`.
    pub async fn read_frame(&mut self, wait: Duration) -> Option<(u8, Vec<u8>)> {
        let deadline = Instant::now() + wait;
        loop {
            if let Some((frame, used)) = parse_frame(&self.buf) {
                self.buf.drain(..used);
                return Some(frame);
            }
            let mut chunk = [0u8; 4096];
            let left = deadline.saturating_duration_since(Instant::now());
            let n = match tokio::time::timeout(left, self.stream.read(&mut chunk)).await {
                Err(_) => panic!("raw WebSocket: no frame within {wait:?}"),
                Ok(Err(_)) | Ok(Ok(0)) => return None,
                Ok(Ok(n)) => n,
            };
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// Parses one unmasked server frame from `buf`: `((opcode, payload), bytes used)`.
fn parse_frame(buf: &[u8]) -> Option<((u8, Vec<u8>), usize)> {
    if buf.len() < 2 {
        return None;
    }
    let op = buf[0] & 0x0F;
    let masked = buf[1] & 0x80 != 0;
    let (len, mut at) = match buf[1] & 0x7F {
        126 => (
            u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?) as usize,
            4,
        ),
        127 => (
            u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?) as usize,
            10,
        ),
        n => (n as usize, 2),
    };
    let mask = if masked {
        let m: [u8; 4] = buf.get(at..at + 4)?.try_into().ok()?;
        at += 4;
        Some(m)
    } else {
        None
    };
    let mut payload = buf.get(at..at + len)?.to_vec();
    if let Some(m) = mask {
        payload
            .iter_mut()
            .enumerate()
            .for_each(|(i, b)| *b ^= m[i % 4]);
    }
    Some(((op, payload), at + len))
}
