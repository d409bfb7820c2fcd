//! `roomcast probe`: the end-to-end check of the Helm chart's test pod
//! (`helm/templates/tests/test-probe.yaml`) and of operators: join a room through the
//! client endpoint, send a message, and wait for both the ack and the echo of that message
//! through the bus. Exit 0 means the gateway accepted the WebSocket and the join, and
//! delivered the message.
//!
//! A plain client of protocol v1: frames and room validation come from `roomcast-protocol`,
//! the WebSocket client is tokio-tungstenite, server frames are read with serde_json.

use std::time::Duration;

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use rand::Rng;
use roomcast_protocol::ClientFrame;
use roomcast_protocol::rules::is_valid_room;
use serde::Deserialize;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::http::Uri;

/// The `ref`s of the probe's frames.
const JOIN_REF: &str = "probe-join";
const SEND_REF: &str = "probe-send";

/// `roomcast probe`: join a room, send a message, wait for it to come back.
#[derive(clap::Args, Debug)]
pub struct ProbeArgs {
    /// Gateway WebSocket URL, e.g. `ws://roomcast:8080/ws` (`/ws` is added when there is no path).
    #[arg(long)]
    pub url: String,

    /// Room to join.
    #[arg(long, default_value = "probe")]
    pub room: String,

    /// Give up after this long.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,

    /// A connection token for a gateway in jwt mode (e.g. from `roomcast token`); sent as
    /// the first frame (`auth`), never printed. Also `ROOMCAST_PROBE_TOKEN`.
    #[arg(long, env = "ROOMCAST_PROBE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// Mint the token itself (sub `roomcast-probe`, 5 minutes) with the configured HS256
    /// secret (`auth.jwt.secret` or `secret_file`, from `--config`/env), as `roomcast
    /// token` would: for a container without a shell (the Helm test).
    #[arg(long, conflicts_with = "token")]
    pub mint: bool,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| e.to_string())
}

/// The URL to connect to: `ws://` only (the probe runs next to the gateway, inside the
/// cluster or on the host), `/ws` added when the URL has no path.
fn ws_url(url: &str) -> anyhow::Result<String> {
    let uri: Uri = url.parse().with_context(|| format!("invalid URL {url}"))?;
    match uri.scheme_str() {
        Some("ws") => {}
        Some("wss") => bail!("{url}: wss is not supported by the probe (use ws)"),
        _ => bail!("{url}: the URL must start with ws://"),
    }
    let authority = uri
        .authority()
        .filter(|a| !a.host().is_empty())
        .with_context(|| format!("{url}: no host"))?;
    let path = match uri.path_and_query().map(|p| p.as_str()) {
        None | Some("" | "/") => "/ws",
        Some(p) => p,
    };
    Ok(format!("ws://{authority}{path}"))
}

/// The server frames the probe reads; anything else is skipped.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum ServerFrame {
    Joined {
        room: String,
    },
    Message {
        room: String,
        text: String,
    },
    Ack {
        #[serde(rename = "ref")]
        reference: Option<String>,
    },
    Error {
        code: String,
        #[serde(rename = "ref", default)]
        reference: Option<String>,
    },
    #[serde(other)]
    Other,
}

/// Joins `--room`, sends a message and waits for its ack and its echo. Ok means the gateway
/// accepted the WebSocket, the join, and delivered the message through its bus.
pub async fn probe(args: ProbeArgs) -> anyhow::Result<()> {
    if !is_valid_room(&args.room) {
        bail!("invalid room name {:?}", args.room);
    }
    let url = ws_url(&args.url)?;
    let started = Instant::now();
    let fut = async {
        let (mut ws, _) = tokio_tungstenite::connect_async_with_config(url.as_str(), None, true)
            .await
            // tungstenite's error already names its cause: no chain.
            .map_err(|e| anyhow::anyhow!("connect {url}: {e}"))?;
        if let Some(token) = &args.token {
            let auth = ClientFrame::Auth {
                token: token.clone(),
                reference: Some("probe-auth".into()),
            };
            ws.send(Message::text(auth.to_json())).await?;
        }
        let nonce: u64 = rand::rng().random();
        let text = format!("probe {nonce:016x}");
        let join = ClientFrame::Join {
            room: args.room.clone(),
            name: Some(format!("probe-{:04x}", nonce & 0xffff)),
            since: None,
            token: None,
            history: None,
            reference: Some(JOIN_REF.into()),
        };
        ws.send(Message::text(join.to_json())).await?;
        let mut sent = false;
        let mut acked = false;
        let mut echoed = false;
        while let Some(msg) = ws.next().await {
            let msg = msg.context("connection failed")?;
            let frame = match msg {
                Message::Text(t) => t,
                Message::Close(f) => bail!("gateway closed the connection: {f:?}"),
                _ => continue,
            };
            let frame: ServerFrame =
                serde_json::from_str(&frame).with_context(|| format!("bad frame {frame}"))?;
            match frame {
                ServerFrame::Joined { room } if room == args.room && !sent => {
                    let send = ClientFrame::Send {
                        room: args.room.clone(),
                        text: text.clone(),
                        idem: None,
                        reference: Some(SEND_REF.into()),
                    };
                    ws.send(Message::text(send.to_json())).await?;
                    sent = true;
                }
                ServerFrame::Error { code, reference } => bail!(
                    "gateway refused {}: {code}",
                    reference.as_deref().unwrap_or("a frame")
                ),
                ServerFrame::Ack { reference } if reference.as_deref() == Some(SEND_REF) => {
                    acked = true;
                }
                ServerFrame::Message { room, text: t } if room == args.room && t == text => {
                    echoed = true;
                }
                _ => {}
            }
            if acked && echoed {
                let _ = ws.close(None).await;
                return anyhow::Ok(());
            }
        }
        bail!("connection closed before the message came back")
    };
    match tokio::time::timeout(args.timeout, fut).await {
        Ok(Ok(())) => {
            println!(
                "probe ok: {} room {} round trip {} ms",
                args.url,
                args.room,
                started.elapsed().as_millis()
            );
            Ok(())
        }
        Ok(Err(e)) => Err(e.context(format!("probe {} failed", args.url))),
        Err(_) => bail!(
            "probe {} failed: no echo within {:?}",
            args.url,
            args.timeout
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_get_the_default_path_and_must_be_ws() {
        assert_eq!(ws_url("ws://chat:80").unwrap(), "ws://chat:80/ws");
        assert_eq!(ws_url("ws://chat:80/").unwrap(), "ws://chat:80/ws");
        assert_eq!(ws_url("ws://chat/ws").unwrap(), "ws://chat/ws");
        assert_eq!(
            ws_url("ws://127.0.0.1:8080/custom?x=1").unwrap(),
            "ws://127.0.0.1:8080/custom?x=1"
        );
        assert_eq!(ws_url("ws://[::1]:8080").unwrap(), "ws://[::1]:8080/ws");
        assert!(ws_url("wss://chat/ws").is_err());
        assert!(ws_url("http://chat/ws").is_err());
        assert!(ws_url("chat:8080").is_err());
        assert!(ws_url("not a url").is_err());
    }

    #[test]
    fn reads_the_frames_it_needs_and_skips_the_rest() {
        let f: ServerFrame =
            serde_json::from_str(r#"{"type":"ack","ref":"probe-send","id":"5-1"}"#).unwrap();
        assert!(matches!(f, ServerFrame::Ack { reference: Some(r) } if r == SEND_REF));
        let f: ServerFrame =
            serde_json::from_str(r#"{"type":"welcome","node":"n","conn":"c"}"#).unwrap();
        assert!(matches!(f, ServerFrame::Other));
        let f: ServerFrame =
            serde_json::from_str(r#"{"type":"error","code":"invalid_room","message":"m"}"#)
                .unwrap();
        assert!(
            matches!(f, ServerFrame::Error { code, reference: None } if code == "invalid_room")
        );
    }

    #[tokio::test]
    async fn refuses_an_invalid_room_before_connecting() {
        let args = ProbeArgs {
            url: "ws://127.0.0.1:1/ws".into(),
            room: "has space".into(),
            timeout: Duration::from_secs(1),
            token: None,
            mint: false,
        };
        let e = probe(args).await.unwrap_err();
        assert!(e.to_string().contains("invalid room name"), "{e}");
    }
}
