//! Connecting: target URLs (roomcast `/ws` or the Socket.IO endpoint), source address ranges
//! for large connection counts (each 127.0.0.x gives its own ephemeral port range), and the
//! WebSocket handshake with small per-connection buffers.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::http::Uri;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use super::wire::Protocol;

/// A WebSocket connection of the bench.
pub type Ws = WebSocketStream<TcpStream>;

/// One target, resolved once.
#[derive(Clone, Debug)]
pub struct Target {
    /// The URL to request, e.g. `ws://127.0.0.1:8080/ws`.
    pub url: String,
    pub addr: SocketAddr,
}

impl Target {
    /// Resolves `url`, adding the protocol's default path when the URL has none.
    pub async fn resolve(url: &str, protocol: Protocol) -> anyhow::Result<Target> {
        let uri: Uri = url.parse().with_context(|| format!("invalid URL {url}"))?;
        match uri.scheme_str() {
            Some("ws") => {}
            Some("wss") => bail!("{url}: wss is not supported by the bench (use ws on loopback)"),
            _ => bail!("{url}: the URL must start with ws://"),
        }
        let host = uri
            .host()
            .with_context(|| format!("{url}: no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(80);
        let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let path = match (protocol, path) {
            (Protocol::Roomcast, "" | "/") => "/ws",
            (Protocol::Socketio, "" | "/") => "/socket.io/?EIO=4&transport=websocket",
            (_, p) => p,
        };
        let authority = uri.authority().map(|a| a.as_str()).unwrap_or(&host);
        let addr = tokio::net::lookup_host((host.as_str(), port))
            .await
            .with_context(|| format!("{url}: cannot resolve {host}"))?
            .next()
            .with_context(|| format!("{url}: {host} has no address"))?;
        Ok(Target {
            url: format!("ws://{authority}{path}"),
            addr,
        })
    }
}

/// Parses `127.0.0.1-127.0.0.20` or `127.0.0.1,127.0.0.2` (or a single address).
pub fn parse_source_ips(s: &str) -> anyhow::Result<Vec<IpAddr>> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if let Some((a, b)) = part.split_once('-') {
            let a: Ipv4Addr = a
                .trim()
                .parse()
                .with_context(|| format!("bad address {a}"))?;
            let b: Ipv4Addr = b
                .trim()
                .parse()
                .with_context(|| format!("bad address {b}"))?;
            let (a, b) = (u32::from(a), u32::from(b));
            if b < a || b - a > 65_535 {
                bail!("bad address range {part}");
            }
            out.extend((a..=b).map(|x| IpAddr::V4(Ipv4Addr::from(x))));
        } else {
            out.push(
                part.parse()
                    .with_context(|| format!("bad address {part}"))?,
            );
        }
    }
    if out.is_empty() {
        bail!("no source address in {s:?}");
    }
    Ok(out)
}

/// Source addresses chosen automatically: for loopback targets, one 127.0.0.x per
/// 16,000 connections (an address has about 28,000 ephemeral ports); otherwise none (the
/// kernel chooses).
pub fn auto_source_ips(targets: &[Target], connections: usize) -> Vec<IpAddr> {
    let all_loopback_v4 = targets
        .iter()
        .all(|t| matches!(t.addr.ip(), IpAddr::V4(ip) if ip.is_loopback()));
    let per_target = connections.div_ceil(targets.len().max(1));
    if !all_loopback_v4 || per_target <= 16_000 {
        return Vec::new();
    }
    let n = per_target.div_ceil(16_000) as u32;
    (1..=n)
        .map(|i| IpAddr::V4(Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 0, 0, 0)) + i)))
        .collect()
}

fn ws_config() -> WebSocketConfig {
    // Small buffers: the bench holds tens of thousands of connections; frames are small.
    // Messages up to 64 MiB: a `joined` that lists every member of a room of 100,000 is
    // several MiB (servers from before issue 13 list them all).
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_message_size(Some(64 << 20))
        .max_frame_size(Some(64 << 20))
}

/// Opens a TCP connection (from `source` when given) and performs the WebSocket handshake.
pub async fn connect(
    target: &Target,
    source: Option<IpAddr>,
    timeout: Duration,
) -> anyhow::Result<Ws> {
    let fut = async {
        let tcp = match source {
            None => TcpStream::connect(target.addr).await?,
            Some(ip) => {
                let socket = if ip.is_ipv4() {
                    TcpSocket::new_v4()?
                } else {
                    TcpSocket::new_v6()?
                };
                socket
                    .bind(SocketAddr::new(ip, 0))
                    .with_context(|| format!("bind {ip}"))?;
                socket.connect(target.addr).await?
            }
        };
        tcp.set_nodelay(true)?;
        let (ws, _) = tokio_tungstenite::client_async_with_config(
            target.url.as_str(),
            tcp,
            Some(ws_config()),
        )
        .await?;
        anyhow::Ok(ws)
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r.with_context(|| format!("connect {}", target.url)),
        Err(_) => bail!("connect {}: timed out after {timeout:?}", target.url),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_source_ranges() {
        let ips = parse_source_ips("127.0.0.1-127.0.0.3,127.0.0.9").unwrap();
        assert_eq!(ips.len(), 4);
        assert_eq!(ips[2], "127.0.0.3".parse::<IpAddr>().unwrap());
        assert!(parse_source_ips("127.0.0.3-127.0.0.1").is_err());
    }
}
