//! Connecting: target URLs (roomcast `/ws` or the Socket.IO endpoint), source address ranges
//! for large connection counts (each 127.0.0.x gives its own ephemeral port range), and the
//! WebSocket handshake with small per-connection buffers (offering permessage-deflate with
//! `--deflate`, see [`crate::deflate`]).

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::header::SEC_WEBSOCKET_EXTENSIONS;
use tokio_tungstenite::tungstenite::http::{HeaderValue, Uri};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use super::deflate::{self, Inflate, WireCounters};
use super::wire::Protocol;

/// A WebSocket connection of the bench.
pub type Ws = WebSocketStream<Stream>;

/// The socket under a connection's WebSocket: the TCP stream itself, or (`--deflate`) the
/// TCP stream behind the permessage-deflate shim. Without `--deflate` every call goes
/// straight to the TCP stream.
#[derive(Debug)]
pub enum Stream {
    Plain(TcpStream),
    Deflate(Box<Inflate<TcpStream>>),
}

impl Stream {
    /// Whether the server accepted permessage-deflate on this connection.
    pub fn deflate(&self) -> bool {
        matches!(self, Stream::Deflate(s) if s.negotiated())
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Deflate(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Deflate(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Deflate(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Deflate(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Deflate(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Deflate(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

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
/// With `deflate` (`--deflate`), the handshake offers permessage-deflate, the connection
/// reads through the [`Inflate`] shim, and the counters learn whether the server agreed
/// and, later, what came over the wire.
pub async fn connect(
    target: &Target,
    source: Option<IpAddr>,
    timeout: Duration,
    deflate: Option<&Arc<WireCounters>>,
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
        let Some(counters) = deflate else {
            let (ws, _) = tokio_tungstenite::client_async_with_config(
                target.url.as_str(),
                Stream::Plain(tcp),
                Some(ws_config()),
            )
            .await?;
            return anyhow::Ok(ws);
        };
        let mut request = target.url.as_str().into_client_request()?;
        request.headers_mut().insert(
            SEC_WEBSOCKET_EXTENSIONS,
            HeaderValue::from_static(deflate::OFFER),
        );
        let shim = Inflate::new(tcp, counters.clone());
        let (ws, response) = tokio_tungstenite::client_async_with_config(
            request,
            Stream::Deflate(Box::new(shim)),
            Some(ws_config()),
        )
        .await?;
        // tungstenite does not look at the answer's extensions; the shim read them too
        // (before the first frame), with the same test.
        let agreed = response
            .headers()
            .get_all(SEC_WEBSOCKET_EXTENSIONS)
            .iter()
            .any(|v| v.to_str().is_ok_and(deflate::agrees));
        if agreed != ws.get_ref().deflate() {
            bail!("the shim and tungstenite read the handshake answer's extensions differently");
        }
        counters.handshake(agreed);
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
    use futures_util::{SinkExt, StreamExt};
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

    /// A one-connection WebSocket server on loopback that accepts permessage-deflate when
    /// `agree` and the client offered it, then writes `raw` (frames) as they are and
    /// returns the first message it receives and whether the client offered deflate.
    // tungstenite's handshake callback type returns a whole HTTP response as its error.
    #[allow(clippy::result_large_err)]
    async fn server(
        agree: bool,
        raw: Vec<u8>,
    ) -> (Target, tokio::task::JoinHandle<(bool, String)>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut offered = false;
            let mut ws = tokio_tungstenite::accept_hdr_async(tcp, |req: &Request, mut resp: Response| {
                offered = req
                    .headers()
                    .get(SEC_WEBSOCKET_EXTENSIONS)
                    .is_some_and(|v| v == deflate::OFFER);
                if agree && offered {
                    resp.headers_mut().insert(
                        SEC_WEBSOCKET_EXTENSIONS,
                        HeaderValue::from_static(
                            "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
                        ),
                    );
                }
                Ok(resp)
            })
            .await
            .unwrap();
            ws.get_mut().write_all(&raw).await.unwrap();
            let got = match ws.next().await {
                Some(Ok(Message::Text(t))) => t.to_string(),
                other => format!("{other:?}"),
            };
            (offered, got)
        });
        let target = Target {
            url: format!("ws://{addr}/ws"),
            addr,
        };
        (target, task)
    }

    /// `00 00 ff ff`-stripped raw DEFLATE of `text` in a final text frame with RSV1.
    fn compressed_text(text: &str) -> Vec<u8> {
        use flate2::{Compress, Compression, FlushCompress};
        let mut c = Compress::new(Compression::default(), false);
        let mut payload = Vec::with_capacity(text.len() + 64);
        c.compress_vec(text.as_bytes(), &mut payload, FlushCompress::Sync)
            .unwrap();
        assert!(payload.ends_with(&[0, 0, 0xff, 0xff]));
        payload.truncate(payload.len() - 4);
        let (h, n) = deflate::frame_header(1, true, payload.len());
        [&h[..n], &payload].concat()
    }

    #[tokio::test]
    async fn connects_with_deflate_and_reads_compressed_frames() {
        let big =
            r#"{"type":"joined","room":"r","members":["bench-1","bench-2","bench-3"]}"#.repeat(30);
        let raw = [
            deflate::frame_header(1, false, 18).0[..2].to_vec(),
            br#"{"type":"welcome"}"#.to_vec(),
            compressed_text(&big),
        ]
        .concat();
        let (target, task) = server(true, raw.clone()).await;
        let counters = Arc::new(WireCounters::default());
        let mut ws = connect(&target, None, Duration::from_secs(5), Some(&counters))
            .await
            .unwrap();
        assert!(ws.get_ref().deflate());
        let next = |m: Option<Result<Message, _>>| match m {
            Some(Ok(Message::Text(t))) => t.to_string(),
            other => panic!("{other:?}"),
        };
        assert_eq!(next(ws.next().await), r#"{"type":"welcome"}"#);
        assert_eq!(next(ws.next().await), big);
        ws.send(Message::text("hello")).await.unwrap();
        assert_eq!(task.await.unwrap(), (true, "hello".to_string()));
        let c = counters.snapshot();
        assert!(c.negotiated());
        assert_eq!(c.wire_bytes, raw.len() as u64);
        assert_eq!(c.first_frame_wire_bytes, 20);
        assert_eq!((c.frames, c.compressed_frames), (2, 1));
        assert_eq!(c.decoded_bytes, big.len() as u64);
    }

    #[tokio::test]
    async fn connects_without_deflate_when_refused_or_not_asked() {
        // Offered, refused: frames pass through as they are.
        let raw = [
            deflate::frame_header(1, false, 2).0[..2].to_vec(),
            b"{}".to_vec(),
        ]
        .concat();
        let (target, task) = server(false, raw.clone()).await;
        let counters = Arc::new(WireCounters::default());
        let mut ws = connect(&target, None, Duration::from_secs(5), Some(&counters))
            .await
            .unwrap();
        assert!(!ws.get_ref().deflate());
        assert!(matches!(ws.next().await, Some(Ok(Message::Text(t))) if t.as_str() == "{}"));
        ws.send(Message::text("a")).await.unwrap();
        assert_eq!(task.await.unwrap(), (true, "a".to_string()));
        let c = counters.snapshot();
        assert_eq!((c.handshakes_agreed, c.handshakes_refused), (0, 1));
        assert_eq!(c.wire_bytes, 4);
        // Not offered (no --deflate): the plain TCP stream, no extension header.
        let (target, task) = server(true, raw).await;
        let mut ws = connect(&target, None, Duration::from_secs(5), None)
            .await
            .unwrap();
        assert!(matches!(ws.get_ref(), Stream::Plain(_)));
        assert!(matches!(ws.next().await, Some(Ok(Message::Text(t))) if t.as_str() == "{}"));
        ws.send(Message::text("b")).await.unwrap();
        assert_eq!(task.await.unwrap(), (false, "b".to_string()));
    }

    #[test]
    fn parses_source_ranges() {
        let ips = parse_source_ips("127.0.0.1-127.0.0.3,127.0.0.9").unwrap();
        assert_eq!(ips.len(), 4);
        assert_eq!(ips[2], "127.0.0.3".parse::<IpAddr>().unwrap());
        assert!(parse_source_ips("127.0.0.3-127.0.0.1").is_err());
    }
}
