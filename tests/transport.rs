//! Behaviour of the WebSocket transport (the session reads and writes frames on the TCP
//! socket itself): frames sent together with the upgrade request, fragmented messages
//! with control frames between the fragments, pings answered with their payload, the
//! message size limit across fragments, unmasked frames, the close handshake, and
//! `permessage-deflate` (agreed on offer, large frames compressed both ways, bombs and
//! corrupt data refused, off by config). Each test speaks raw WebSocket framing over
//! TCP, so every byte on the wire is the test's.

#[macro_use]
mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(10);

/// A client frame (masked, as RFC 6455 requires of clients): FIN flag, opcode, payload.
fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    masked_frame(fin, opcode, payload, Some([0x37, 0xfa, 0x21, 0x3d]))
}

fn masked_frame(fin: bool, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
    let bit = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(bit | n as u8),
        n if n <= 0xffff => {
            out.push(bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(m) => {
            out.extend_from_slice(&m);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ m[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

fn upgrade_request(addr: &str, extensions: Option<&str>) -> String {
    let extensions = extensions
        .map(|e| format!("Sec-WebSocket-Extensions: {e}\r\n"))
        .unwrap_or_default();
    format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         {extensions}\r\n"
    )
}

/// The offer Chromium makes.
const BROWSER_OFFER: &str = "permessage-deflate; client_max_window_bits";
/// What the server answers when it agrees.
const AGREED: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

/// A message compressed as `permessage-deflate` sends it: raw DEFLATE, sync-flushed, the
/// `00 00 ff ff` tail removed.
fn deflate(payload: &[u8]) -> Vec<u8> {
    use flate2::{Compress, Compression, FlushCompress};
    let mut c = Compress::new(Compression::default(), false);
    let mut out = Vec::with_capacity(payload.len() + 64);
    c.compress_vec(payload, &mut out, FlushCompress::Sync)
        .expect("compress");
    assert!(out.ends_with(&[0, 0, 0xff, 0xff]), "sync flush tail");
    out.truncate(out.len() - 4);
    out
}

fn inflate(payload: &[u8]) -> Vec<u8> {
    use flate2::{Decompress, FlushDecompress};
    let mut d = Decompress::new(false);
    let mut input = payload.to_vec();
    input.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut out = Vec::with_capacity(1 << 20);
    d.decompress_vec(&input, &mut out, FlushDecompress::Sync)
        .expect("the server's compressed frame inflates");
    assert_eq!(d.total_in() as usize, input.len(), "all of it consumed");
    out
}

/// A raw WebSocket client over TCP.
struct Raw {
    stream: TcpStream,
    buf: Vec<u8>,
    /// The server's `Sec-WebSocket-Extensions` answer.
    agreed: Option<String>,
    /// Compressed (RSV1) server frames seen so far.
    compressed: usize,
}

impl Raw {
    /// Upgrades, sending `first` (already framed) in the same write as the request.
    async fn connect_with(node: &Node, first: &[u8]) -> Raw {
        Raw::upgrade(node, first, None).await
    }

    /// Upgrades offering `extensions`; `first` (already framed) goes in the same write.
    async fn upgrade(node: &Node, first: &[u8], extensions: Option<&str>) -> Raw {
        let mut stream = TcpStream::connect(node.addr).await.expect("connect");
        let mut bytes = upgrade_request(&node.addr.to_string(), extensions).into_bytes();
        bytes.extend_from_slice(first);
        stream.write_all(&bytes).await.expect("write upgrade");
        let mut raw = Raw {
            stream,
            buf: Vec::new(),
            agreed: None,
            compressed: 0,
        };
        let head_end = loop {
            if let Some(i) = raw.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            assert!(raw.fill().await, "connection closed during the upgrade");
        };
        let head = String::from_utf8_lossy(&raw.buf[..head_end]).to_string();
        assert!(head.starts_with("HTTP/1.1 101"), "upgrade refused: {head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
            "RFC 6455's sample key must get its sample accept value: {head}"
        );
        raw.agreed = head.lines().find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("sec-websocket-extensions")
                .then(|| value.trim().to_string())
        });
        raw.buf.drain(..head_end);
        raw
    }

    async fn connect(node: &Node) -> Raw {
        Raw::connect_with(node, &[]).await
    }

    async fn send(&mut self, frame: &[u8]) {
        self.stream.write_all(frame).await.expect("write frame");
    }

    async fn send_text(&mut self, text: &str) {
        self.send(&client_frame(true, opcode::TEXT, text.as_bytes()))
            .await;
    }

    /// Reads more bytes; false on EOF or reset.
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout(WAIT, self.stream.read(&mut chunk)).await {
            Err(_) => panic!("nothing from the server within {WAIT:?}"),
            Ok(Err(_)) | Ok(Ok(0)) => false,
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// The next server frame `(opcode, payload)`, inflated if it came compressed;
    /// `None` when the connection ended. Checks that server frames are final and
    /// unmasked, and that only text frames are compressed, only after agreeing to it.
    async fn frame(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            if self.buf.len() >= 2 {
                let rsv1 = self.buf[0] & 0x40 != 0;
                if rsv1 {
                    assert_eq!(self.agreed.as_deref(), Some(AGREED), "RSV1 only if agreed");
                    assert_eq!(self.buf[0] & 0x0F, opcode::TEXT, "only text is compressed");
                }
                assert_eq!(self.buf[0] & 0xB0, 0x80, "FIN set, no RSV2/RSV3");
                assert_eq!(self.buf[1] & 0x80, 0, "server frames are not masked");
                let (len, at) = match self.buf[1] & 0x7F {
                    126 if self.buf.len() >= 4 => {
                        (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
                    }
                    127 if self.buf.len() >= 10 => {
                        let mut n = [0u8; 8];
                        n.copy_from_slice(&self.buf[2..10]);
                        (u64::from_be_bytes(n) as usize, 10)
                    }
                    126 | 127 => (usize::MAX, 0),
                    n => (n as usize, 2),
                };
                if len != usize::MAX && self.buf.len() >= at + len {
                    let op = self.buf[0] & 0x0F;
                    let mut payload = self.buf[at..at + len].to_vec();
                    self.buf.drain(..at + len);
                    if rsv1 {
                        self.compressed += 1;
                        payload = inflate(&payload);
                    }
                    return Some((op, payload));
                }
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    /// The next text frame as JSON, skipping pings.
    async fn json(&mut self) -> serde_json::Value {
        loop {
            match self.frame().await {
                Some((opcode::TEXT, payload)) => {
                    return serde_json::from_slice(&payload).expect("JSON text frame");
                }
                Some((opcode::PING, _)) => {}
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    /// Reads until the close frame: its `(code, reason)` (`None`: empty payload); then
    /// the server must end the connection.
    async fn close_frame(&mut self) -> Option<(u16, String)> {
        let payload = loop {
            match self.frame().await {
                Some((opcode::CLOSE, payload)) => break payload,
                Some(_) => {}
                None => panic!("connection ended without a close frame"),
            }
        };
        assert!(
            self.frame().await.is_none(),
            "the server ends the connection after its close frame"
        );
        (payload.len() >= 2).then(|| {
            (
                u16::from_be_bytes([payload[0], payload[1]]),
                String::from_utf8_lossy(&payload[2..]).to_string(),
            )
        })
    }
}

/// A member of `hall` on `node`, to show that one client's bad input leaves others be.
async fn bystander(node: &Node) -> Client {
    let mut other = node.client().await;
    other.join("hall", "other").await;
    other
}

/// The bystander still sends and receives.
async fn still_chatting(other: &mut Client) {
    let ack = other.send("hall", "still here").await;
    assert_eq!(id_of(&other.next_message().await), id_of(&ack));
}

/// After a protocol violation: a close frame (no status: the server only refuses to go
/// on) and then the end, or the end at once.
async fn ends_after_violation(raw: &mut Raw, what: &str) {
    match raw.frame().await {
        Some((opcode::CLOSE, _)) => assert!(raw.frame().await.is_none(), "then the end"),
        None => {}
        Some(frame) => panic!("unexpected frame after {what}: {frame:?}"),
    }
}

fn join_frame(room: &str, name: &str) -> String {
    serde_json::json!({"type": "join", "room": room, "name": name}).to_string()
}

async fn node_with(tweak: impl FnOnce(&mut roomcast::Config)) -> Node {
    let mut cfg = node_config(None, "n1");
    tweak(&mut cfg);
    Node::start(cfg).await
}

#[tokio::test]
async fn frames_sent_with_the_upgrade_request_are_read() {
    let node = node_with(|_| {}).await;
    let join = client_frame(true, opcode::TEXT, join_frame("hall", "early").as_bytes());
    let mut raw = Raw::connect_with(&node, &join).await;
    assert_eq!(raw.json().await["type"], "welcome");
    let joined = raw.json().await;
    assert_eq!(
        (&joined["type"], &joined["room"]),
        (&"joined".into(), &"hall".into())
    );
}

#[tokio::test]
async fn a_fragmented_message_with_a_ping_between_its_fragments_is_reassembled() {
    let node = node_with(|_| {}).await;
    let mut raw = Raw::connect(&node).await;
    assert_eq!(raw.json().await["type"], "welcome");
    let text = join_frame("hall", "fragments");
    let (a, rest) = text.as_bytes().split_at(5);
    let (b, c) = rest.split_at(7);
    raw.send(&client_frame(false, opcode::TEXT, a)).await;
    raw.send(&client_frame(false, 0x0, b)).await;
    raw.send(&client_frame(true, opcode::PING, b"between"))
        .await;
    raw.send(&client_frame(true, 0x0, c)).await;
    assert_eq!(
        raw.frame().await,
        Some((opcode::PONG, b"between".to_vec())),
        "the ping is answered at once, with its payload"
    );
    let joined = raw.json().await;
    assert_eq!(joined["type"], "joined", "{joined}");
    assert_eq!(joined["you"]["name"], "fragments");
}

#[tokio::test]
async fn fragments_adding_up_over_the_frame_limit_close_1009_and_others_go_on() {
    let node = node_with(|cfg| {
        cfg.limits.max_text_bytes = 512;
        cfg.limits.max_frame_bytes = 2048;
    })
    .await;
    let mut other = bystander(&node).await;
    let mut raw = Raw::connect(&node).await;
    assert_eq!(raw.json().await["type"], "welcome");
    // Each fragment is under the limit; together they are over it.
    let part = vec![b'z'; 1000];
    raw.send(&client_frame(false, opcode::TEXT, &part)).await;
    raw.send(&client_frame(false, 0x0, &part)).await;
    raw.send(&client_frame(true, 0x0, &part)).await;
    assert_eq!(
        raw.close_frame().await,
        Some((1009, "frame too large".to_string()))
    );
    still_chatting(&mut other).await;
}

#[tokio::test]
async fn an_unmasked_client_frame_ends_the_connection_and_others_go_on() {
    let node = node_with(|_| {}).await;
    let mut other = bystander(&node).await;
    let mut raw = Raw::connect(&node).await;
    assert_eq!(raw.json().await["type"], "welcome");
    raw.send(&masked_frame(true, opcode::TEXT, b"{}", None))
        .await;
    ends_after_violation(&mut raw, "a protocol violation").await;
    still_chatting(&mut other).await;
}

#[tokio::test]
async fn the_clients_close_is_answered_with_its_code_then_the_connection_ends() {
    let node = node_with(|_| {}).await;
    let mut raw = Raw::connect(&node).await;
    assert_eq!(raw.json().await["type"], "welcome");
    raw.send_text(&join_frame("hall", "leaving")).await;
    assert_eq!(raw.json().await["type"], "joined");
    let mut payload = 1000u16.to_be_bytes().to_vec();
    payload.extend_from_slice(b"bye");
    raw.send(&client_frame(true, opcode::CLOSE, &payload)).await;
    assert_eq!(raw.close_frame().await, Some((1000, String::new())));
}

#[tokio::test]
async fn large_server_frames_use_the_longer_length_forms() {
    let node = node_with(|cfg| {
        cfg.limits.max_text_bytes = 60_000;
        cfg.limits.max_frame_bytes = 70_000;
    })
    .await;
    let mut raw = Raw::connect(&node).await;
    assert_eq!(raw.json().await["type"], "welcome");
    raw.send_text(&join_frame("hall", "big")).await;
    assert_eq!(raw.json().await["type"], "joined");
    for len in [200, 50_000] {
        let text = "y".repeat(len);
        let send = serde_json::json!({"type": "send", "room": "hall", "text": text});
        raw.send_text(&send.to_string()).await;
        let mut got = Vec::new();
        while got.len() < 2 {
            got.push(raw.json().await);
        }
        let message = got
            .iter()
            .find(|v| v["type"] == "message")
            .expect("the message comes back");
        assert_eq!(message["text"].as_str().map(str::len), Some(len));
    }
}

/// A client frame with RSV1 set (a compressed message's first frame).
fn compressed_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = client_frame(fin, opcode, payload);
    frame[0] |= 0x40;
    frame
}

/// A node with `n` members in `hall` under long names, so `joined` is large.
async fn crowded_node(n: usize, tweak: impl FnOnce(&mut roomcast::Config)) -> (Node, Vec<Client>) {
    let node = node_with(tweak).await;
    let mut members = Vec::new();
    for i in 0..n {
        let mut c = node.client().await;
        c.join("hall", &format!("a member with a longer name {i:03}"))
            .await;
        members.push(c);
    }
    (node, members)
}

#[tokio::test]
async fn a_browsers_deflate_offer_is_agreed_and_large_frames_arrive_compressed() {
    let (node, mut members) = crowded_node(30, |_| {}).await;
    let mut raw = Raw::upgrade(&node, &[], Some(BROWSER_OFFER)).await;
    assert_eq!(raw.agreed.as_deref(), Some(AGREED));
    assert_eq!(raw.json().await["type"], "welcome");
    assert_eq!(raw.compressed, 0, "a small welcome goes out as it is");
    raw.send_text(&join_frame("hall", "squeezed")).await;
    let joined = raw.json().await;
    assert_eq!(joined["type"], "joined", "{joined}");
    assert_eq!(joined["members"].as_array().map(Vec::len), Some(31));
    assert_eq!(raw.compressed, 1, "joined lists 31 members: compressed");
    // A large message from a member who did not agree: compressed for this member only.
    let text = "the same words again and again ".repeat(30);
    let ack = members[0].send("hall", &text).await;
    let message = loop {
        let frame = raw.json().await;
        if frame["type"] == "message" {
            break frame;
        }
    };
    assert_eq!(
        (&message["id"], &message["text"]),
        (&ack["id"], &text.as_str().into())
    );
    assert_eq!(raw.compressed, 2);
    assert_eq!(members[1].next_message().await["text"], text.as_str());
}

#[tokio::test]
async fn compressed_client_messages_whole_or_fragmented_are_inflated() {
    let node = node_with(|_| {}).await;
    let mut other = bystander(&node).await;
    let mut raw = Raw::upgrade(&node, &[], Some("permessage-deflate")).await;
    assert_eq!(raw.agreed.as_deref(), Some(AGREED));
    assert_eq!(raw.json().await["type"], "welcome");
    let join = deflate(join_frame("hall", "packer").as_bytes());
    raw.send(&compressed_frame(true, opcode::TEXT, &join)).await;
    assert_eq!(raw.json().await["type"], "joined");
    // RSV1 on the first fragment only; a ping between fragments is not compressed.
    let send = serde_json::json!({"type": "send", "room": "hall", "text": "in pieces"});
    let packed = deflate(send.to_string().as_bytes());
    let (a, b) = packed.split_at(packed.len() / 2);
    raw.send(&compressed_frame(false, opcode::TEXT, a)).await;
    raw.send(&client_frame(true, opcode::PING, b"mid")).await;
    raw.send(&client_frame(true, 0x0, b)).await;
    assert_eq!(raw.frame().await, Some((opcode::PONG, b"mid".to_vec())));
    assert_eq!(other.next_message().await["text"], "in pieces");
}

#[tokio::test]
async fn a_compressed_bomb_closes_1009_and_others_go_on() {
    let node = node_with(|_| {}).await;
    let mut other = bystander(&node).await;
    let mut raw = Raw::upgrade(&node, &[], Some(BROWSER_OFFER)).await;
    assert_eq!(raw.json().await["type"], "welcome");
    // 4 MiB of one letter is a few KiB compressed: under the 16 KiB frame limit, far
    // over it once inflated.
    let bomb = deflate(&vec![b'a'; 4 << 20]);
    assert!(bomb.len() < 16 * 1024, "{}", bomb.len());
    raw.send(&compressed_frame(true, opcode::TEXT, &bomb)).await;
    assert_eq!(
        raw.close_frame().await,
        Some((1009, "frame too large".to_string()))
    );
    still_chatting(&mut other).await;
}

#[tokio::test]
async fn corrupt_compressed_data_ends_the_connection_and_others_go_on() {
    let node = node_with(|_| {}).await;
    let mut other = bystander(&node).await;
    let mut raw = Raw::upgrade(&node, &[], Some(BROWSER_OFFER)).await;
    assert_eq!(raw.json().await["type"], "welcome");
    raw.send(&compressed_frame(true, opcode::TEXT, &[0xff; 40]))
        .await;
    ends_after_violation(&mut raw, "corrupt data").await;
    still_chatting(&mut other).await;
}

#[tokio::test]
async fn with_compression_off_an_offer_is_declined_and_rsv1_is_a_protocol_violation() {
    let (node, _members) = crowded_node(30, |cfg| cfg.server.compression = false).await;
    let mut raw = Raw::upgrade(&node, &[], Some(BROWSER_OFFER)).await;
    assert_eq!(raw.agreed, None, "no extension agreed");
    assert_eq!(raw.json().await["type"], "welcome");
    raw.send_text(&join_frame("hall", "plain")).await;
    assert_eq!(
        raw.json().await["members"].as_array().map(Vec::len),
        Some(31)
    );
    assert_eq!(raw.compressed, 0);
    let join = deflate(join_frame("elsewhere", "plain").as_bytes());
    raw.send(&compressed_frame(true, opcode::TEXT, &join)).await;
    ends_after_violation(&mut raw, "RSV1 without agreement").await;
}

#[tokio::test]
async fn an_offer_the_server_cannot_honour_is_declined_and_nothing_is_compressed() {
    let (node, _members) = crowded_node(30, |_| {}).await;
    let mut raw = Raw::upgrade(
        &node,
        &[],
        Some("permessage-deflate; server_max_window_bits=10"),
    )
    .await;
    assert_eq!(raw.agreed, None);
    assert_eq!(raw.json().await["type"], "welcome");
    raw.send_text(&join_frame("hall", "plain")).await;
    assert_eq!(raw.json().await["type"], "joined");
    assert_eq!(raw.compressed, 0);
}
