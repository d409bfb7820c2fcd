//! Behaviour: the connection edge. A WebSocket upgrade from a foreign `Origin` is refused
//! with 403 before the upgrade (own host, listed origins and no `Origin` pass); per client
//! address at most `limits.connections_per_ip` connections are open and at most
//! `limits.connects_per_second_per_ip` new ones a second are accepted (429 with
//! `Retry-After`), and a closed connection gives its place back; a connection that stalls
//! in the middle of its request headers is closed after `server.header_timeout`; a trusted
//! proxy's `X-Forwarded-For` names the client (each forwarded address has its own quota)
//! while an untrusted peer's is ignored. Every refusal is counted in
//! `roomcast_refused_total{reason}`.

mod common;

use std::net::SocketAddr;
use std::time::Instant;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A node on the memory bus with `tweak` applied after the (generous) test defaults.
async fn node(tweak: impl FnOnce(&mut roomcast::Config)) -> Node {
    let mut cfg = node_config(None, "edge");
    tweak(&mut cfg);
    Node::start(cfg).await
}

/// A WebSocket upgrade request by hand on `/ws` with `Host: addr` and `headers`; returns
/// the status, the response head and the still open stream (the session, when 101).
async fn upgrade(addr: SocketAddr, headers: &[(&str, &str)]) -> (u16, String, TcpStream) {
    let (stream, head, _) = upgrade_by_hand_with(&format!("ws://{addr}/ws"), headers).await;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head}"));
    (status, head, stream)
}

async fn refused(node: &Node, reason: &str) -> f64 {
    metric_value(
        &node.admin_url,
        "roomcast_refused_total",
        &[("reason", reason)],
    )
    .await
}

async fn rejected(node: &Node) -> f64 {
    metric_value(
        &node.admin_url,
        "roomcast_connections_total",
        &[("result", "rejected")],
    )
    .await
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn foreign_origin_is_refused_403_before_the_upgrade_and_counted() {
    let node = node(|_| {}).await;
    for reason in [
        "unauthorized",
        "expired",
        "forbidden",
        "origin",
        "ip_limit",
        "header_timeout",
    ] {
        assert_eq!(refused(&node, reason).await, 0.0, "{reason} exported as 0");
    }
    let rejected_before = rejected(&node).await;
    let (status, head, _stream) = upgrade(node.addr, &[("Origin", "http://evil.example")]).await;
    assert_eq!(status, 403, "{head}");
    assert!(
        !head.to_ascii_lowercase().contains("upgrade: websocket"),
        "{head}"
    );
    assert_eq!(refused(&node, "origin").await, 1.0);
    assert_eq!(rejected(&node).await, rejected_before + 1.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn own_host_origin_and_no_origin_are_accepted() {
    let node = node(|_| {}).await;
    let own = format!("http://{}", node.addr);
    let (status, head, _own) = upgrade(node.addr, &[("Origin", &own)]).await;
    assert_eq!(status, 101, "own host origin: {head}");
    // A real client without an Origin header (non-browser).
    let mut client = node.client().await;
    client.join("lobby", "ann").await;
    assert_eq!(refused(&node, "origin").await, 0.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_listed_origin_is_accepted_and_others_refused() {
    let node = node(|cfg| {
        cfg.server.allowed_origins = vec!["https://chat.example".into()];
    })
    .await;
    let (status, head, _listed) = upgrade(node.addr, &[("Origin", "https://Chat.Example")]).await;
    assert_eq!(status, 101, "listed origin: {head}");
    let (status, head, _) = upgrade(node.addr, &[("Origin", "http://evil.example")]).await;
    assert_eq!(status, 403, "unlisted origin: {head}");
    assert_eq!(refused(&node, "origin").await, 1.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn per_ip_cap_refuses_the_next_connection_429_until_one_closes() {
    const N: usize = 3;
    let node = node(|cfg| cfg.limits.connections_per_ip = N).await;
    let mut open = Vec::new();
    for i in 0..N {
        let (status, head, stream) = upgrade(node.addr, &[]).await;
        assert_eq!(status, 101, "connection {i}: {head}");
        open.push(stream);
    }
    let (status, head, _) = upgrade(node.addr, &[]).await;
    assert_eq!(status, 429, "connection {}: {head}", N + 1);
    assert!(header(&head, "retry-after").is_some(), "{head}");
    assert_eq!(refused(&node, "ip_limit").await, 1.0);
    // A real client is refused as well.
    let err = tokio_tungstenite::connect_async(node.ws_url.as_str())
        .await
        .expect_err("over the per-address cap");
    assert!(err.to_string().contains("429"), "{err}");

    drop(open.pop());
    // The session ends when it sees the close; then its place is free again.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, head, stream) = upgrade(node.addr, &[]).await;
        if status == 101 {
            open.push(stream);
            break;
        }
        assert_eq!(status, 429, "{head}");
        assert!(
            Instant::now() < deadline,
            "no place free 10 s after a close: {head}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // And the cap holds again.
    let (status, head, _) = upgrade(node.addr, &[]).await;
    assert_eq!(status, 429, "{head}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_burst_above_the_connect_rate_gets_429() {
    let node = node(|cfg| cfg.limits.connects_per_second_per_ip = 5).await;
    let mut statuses = Vec::new();
    let mut retry_after = None;
    let mut open = Vec::new();
    for _ in 0..20 {
        let (status, head, stream) = upgrade(node.addr, &[]).await;
        if status == 429 {
            retry_after = header(&head, "retry-after").map(str::to_string);
        }
        statuses.push(status);
        open.push(stream);
    }
    let accepted = statuses.iter().filter(|s| **s == 101).count();
    let limited = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!(accepted + limited, 20, "{statuses:?}");
    assert!(
        limited >= 1,
        "a burst of 20 above 5/s must be limited: {statuses:?}"
    );
    assert!(accepted >= 5, "the first 5 fit the bucket: {statuses:?}");
    let secs: u64 = retry_after.expect("Retry-After").parse().expect("seconds");
    assert!(secs >= 1);
    assert_eq!(refused(&node, "ip_limit").await, limited as f64);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_request_is_closed_after_the_header_timeout_and_counted() {
    let node = node(|cfg| cfg.server.header_timeout = Duration::from_secs(1)).await;
    let mut stalled = TcpStream::connect(node.addr).await.expect("connect");
    stalled.write_all(b"GET /ws HTT").await.expect("write half");
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    // Closed (EOF or reset; hyper may answer 408 first) well before this bound.
    let closed = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match stalled.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "still open after {:?}", started.elapsed());
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "closed too early ({:?}) to be the timeout",
        started.elapsed()
    );
    eventually(Duration::from_secs(5), || async {
        match refused(&node, "header_timeout").await {
            1.0 => Ok(()),
            n => Err(format!(
                "roomcast_refused_total{{reason=\"header_timeout\"}} is {n}, want 1"
            )),
        }
    })
    .await;
    // Complete requests are served as before.
    let (status, head, _ws) = upgrade(node.addr, &[]).await;
    assert_eq!(status, 101, "{head}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trusted_proxys_forwarded_for_names_the_client_and_an_untrusted_ones_is_ignored() {
    // Behind a trusted proxy (the test's own 127.0.0.1): each forwarded address has its
    // own quota of 2.
    let trusted = node(|cfg| {
        cfg.server.trusted_proxies = vec!["127.0.0.0/8".into()];
        cfg.limits.connections_per_ip = 2;
    })
    .await;
    let mut open = Vec::new();
    for client in ["203.0.113.1", "203.0.113.2"] {
        let xff = format!("{client}, 127.0.0.1");
        for i in 0..2 {
            let (status, head, stream) = upgrade(trusted.addr, &[("X-Forwarded-For", &xff)]).await;
            assert_eq!(status, 101, "{client} connection {i}: {head}");
            open.push(stream);
        }
        let (status, head, _) = upgrade(trusted.addr, &[("X-Forwarded-For", &xff)]).await;
        assert_eq!(status, 429, "{client} third connection: {head}");
    }
    assert_eq!(refused(&trusted, "ip_limit").await, 2.0);

    // An untrusted peer: X-Forwarded-For is ignored, every connection counts for 127.0.0.1.
    let untrusted = node(|cfg| cfg.limits.connections_per_ip = 2).await;
    let mut open = Vec::new();
    for client in ["203.0.113.1", "203.0.113.2"] {
        let (status, head, stream) = upgrade(untrusted.addr, &[("X-Forwarded-For", client)]).await;
        assert_eq!(status, 101, "{client}: {head}");
        open.push(stream);
    }
    let (status, head, _) = upgrade(untrusted.addr, &[("X-Forwarded-For", "203.0.113.3")]).await;
    assert_eq!(
        status, 429,
        "a third address forged by an untrusted peer: {head}"
    );
    assert_eq!(refused(&untrusted, "ip_limit").await, 1.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn request_headers_over_32_kib_are_refused() {
    let node = node(|_| {}).await;
    // Under the bound: served.
    let pad = "p".repeat(16 * 1024);
    let (status, head, _ws) = upgrade(node.addr, &[("X-Pad", &pad)]).await;
    assert_eq!(status, 101, "16 KiB of headers: {head}");
    let mut stream = TcpStream::connect(node.addr).await.expect("connect");
    let big = "a".repeat(40 * 1024);
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: {}\r\nX-Big: {big}\r\n\r\n",
        node.addr
    );
    // The server may close before reading everything: a failed write is fine.
    let _ = stream.write_all(request.as_bytes()).await;
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
        .await
        .expect("connection closed");
    let head = String::from_utf8_lossy(&response);
    assert!(
        head.is_empty() || head.starts_with("HTTP/1.1 431"),
        "40 KiB of headers must not be served: {head}"
    );
}
