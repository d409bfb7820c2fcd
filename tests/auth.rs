//! jwt mode end to end (`auth.mode = "jwt"`), on a real gateway with real WebSocket
//! clients; tokens are made by `jwt-simple`, a JWT library independent of the one that
//! verifies them. The token binds who a user is (`sub`, `name`: the name in `join` is
//! ignored) and which rooms they may join and send to; nothing but `auth` is accepted
//! before a valid token; the token's expiry is announced (`expiring`), a refresh extends
//! it, and without one the connection closes with 4002.

mod common;
mod ops_common;

use std::time::{SystemTime, UNIX_EPOCH};

use common::*;
use jwt_simple::prelude::{self as js, MACLike};
use ops_common::*;
use serde::{Deserialize, Serialize};

const SECRET: &str = "integration-secret-of-32-bytes!!";

#[derive(Serialize, Deserialize, Default)]
struct Extra {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rooms: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    publish: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    room: Option<String>,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// A connection token for `sub`, valid for `ttl_s` seconds.
fn token(
    sub: &str,
    name: &str,
    ttl_s: u64,
    rooms: Option<&[&str]>,
    publish: Option<&[&str]>,
) -> String {
    token_with(
        SECRET,
        sub,
        ttl_s,
        Extra {
            name: Some(name.into()),
            rooms: rooms.map(|r| r.iter().map(|s| s.to_string()).collect()),
            publish: publish.map(|r| r.iter().map(|s| s.to_string()).collect()),
            room: None,
        },
    )
}

fn token_with(secret: &str, sub: &str, ttl_s: u64, extra: Extra) -> String {
    let claims =
        js::Claims::with_custom_claims(extra, js::Duration::from_secs(ttl_s)).with_subject(sub);
    js::HS256Key::from_bytes(secret.as_bytes())
        .authenticate(claims)
        .expect("sign")
}

fn jwt_mode(cfg: &mut roomcast::Config) {
    cfg.auth.mode = roomcast::config::AuthMode::Jwt;
    cfg.auth.jwt.secret = Some(SECRET.into());
    cfg.auth.jwt.leeway = Duration::ZERO;
    cfg.auth.timeout = Duration::from_secs(1);
    cfg.auth.refresh_notice = Duration::from_secs(2);
}

async fn start() -> Cluster {
    Cluster::start(Bus::Memory, 1, jwt_mode).await
}

/// A token in the query is answered by `welcome`; the user is who the token says, whatever
/// name `join` carries, and the color derives from the id.
#[tokio::test(flavor = "multi_thread")]
async fn query_token_is_welcomed_and_the_name_cannot_be_spoofed() {
    let cluster = start().await;
    let url = format!(
        "{}?token={}",
        cluster.node(0).ws_url,
        token("u-1", "Alice", 60, None, None)
    );
    let mut alice = Client::connect(&url).await;
    let joined = alice.join("general", "Mallory").await;
    assert_eq!(joined["you"]["name"], "Alice", "{joined}");
    assert_eq!(joined["you"]["id"], "u-1", "{joined}");
    let sent = alice.send("general", "hi").await;
    let msg = alice.next_message().await;
    assert_eq!(msg["from"]["id"], "u-1", "{msg} after {sent}");
    assert_eq!(msg["from"]["name"], "Alice");
}

/// Before a valid token nothing but `auth` is accepted; `auth` is answered by `welcome`.
#[tokio::test(flavor = "multi_thread")]
async fn frames_before_auth_are_refused_then_auth_frame_welcomes() {
    let cluster = start().await;
    let mut c = Client::connect_unwelcomed(&cluster.node(0).ws_url).await;
    c.send_json(json!({"type":"join","room":"general","name":"x","ref":"j"}))
        .await;
    let err = c.expect_error("unauthorized").await;
    assert_eq!(err["ref"], "j");
    c.send_json(json!({"type":"auth","token": token("u-2", "Bob", 60, None, None)}))
        .await;
    c.expect("welcome").await;
    let joined = c.join("general", "ignored").await;
    assert_eq!(joined["you"]["name"], "Bob");
}

/// Without a valid token within `auth.timeout` the connection closes with 4001; a bad
/// token is refused with its reason (never echoing the token) and counted.
#[tokio::test(flavor = "multi_thread")]
async fn bad_tokens_are_refused_with_their_reason_and_no_token_closes_4001() {
    let cluster = start().await;
    let node = cluster.node(0);
    let before = metric(
        &node.admin_url,
        "roomcast_refused_total",
        &[("reason", "unauthorized")],
    )
    .await;
    let mut c = Client::connect_unwelcomed(&node.ws_url).await;
    let forged = token_with(
        "another-secret-of-32-bytes-long!",
        "u-3",
        60,
        Extra {
            name: Some("Eve".into()),
            ..Extra::default()
        },
    );
    c.send_json(json!({"type":"auth","token": forged})).await;
    let err = c.expect_error("unauthorized").await;
    let message = err["message"].as_str().unwrap_or_default();
    assert!(message.contains("signature"), "{err}");
    assert!(!message.contains(&forged), "the token was echoed: {err}");
    let closed = c.wait_closed(Duration::from_secs(10)).await;
    assert_eq!(
        closed.close.map(|(code, _)| code),
        Some(4001),
        "{:?}",
        closed.skipped
    );
    let after = metric(
        &node.admin_url,
        "roomcast_refused_total",
        &[("reason", "unauthorized")],
    )
    .await;
    assert!(after > before, "refusal not counted: {before} -> {after}");

    // An expired token in the query: the reason, then 4001 at once.
    let mut claims = js::Claims::with_custom_claims(
        Extra {
            name: Some("Old".into()),
            ..Extra::default()
        },
        js::Duration::from_secs(60),
    )
    .with_subject("u-4");
    claims.expires_at = Some(js::UnixTimeStamp::from_secs(now() - 120));
    let expired = js::HS256Key::from_bytes(SECRET.as_bytes())
        .authenticate(claims)
        .expect("sign");
    let mut c = Client::connect_unwelcomed(&format!("{}?token={expired}", node.ws_url)).await;
    let err = c.expect_error("unauthorized").await;
    assert!(
        err["message"]
            .as_str()
            .unwrap_or_default()
            .contains("expired"),
        "{err}"
    );
    let closed = c.wait_closed(Duration::from_secs(10)).await;
    assert_eq!(closed.close.map(|(code, _)| code), Some(4001));
}

/// `rooms` limits joins (`forbidden`); a room token grants that one room, to its own `sub`
/// only; `publish` limits sends.
#[tokio::test(flavor = "multi_thread")]
async fn rooms_and_publish_claims_limit_what_a_user_may_do_and_room_tokens_grant_one_room() {
    let cluster = start().await;
    let t = token(
        "u-5",
        "Carol",
        60,
        Some(&["team-*", "lobby"]),
        Some(&["team-*"]),
    );
    let mut c = Client::connect(&format!("{}?token={t}", cluster.node(0).ws_url)).await;
    c.join("team-a", "x").await;
    c.join("lobby", "x").await;
    let refused = c.try_join("secret", "x").await;
    assert_eq!(refused["code"], "forbidden", "{refused}");

    let grant = |sub: &str, room: &str| {
        token_with(
            SECRET,
            sub,
            60,
            Extra {
                room: Some(room.into()),
                ..Extra::default()
            },
        )
    };
    let other_user = c
        .try_join_frame(json!({"type":"join","room":"secret","token": grant("u-6", "secret")}))
        .await;
    assert_eq!(other_user["code"], "unauthorized", "{other_user}");
    let other_room = c
        .try_join_frame(json!({"type":"join","room":"secret","token": grant("u-5", "vault")}))
        .await;
    assert_eq!(other_room["code"], "unauthorized", "{other_room}");
    let joined = c
        .try_join_frame(json!({"type":"join","room":"secret","token": grant("u-5", "secret")}))
        .await;
    assert_eq!(joined["type"], "joined", "{joined}");

    c.send("team-a", "allowed").await;
    let refused = c.try_send("lobby", "not allowed").await;
    assert_eq!(refused["code"], "forbidden", "{refused}");
}

/// `expiring` arrives before `exp`; a refresh for another `sub` is refused; a refresh for
/// the same `sub` extends the connection (`refreshed`), and a connection that does not
/// refresh closes with 4002 at `exp`.
#[tokio::test(flavor = "multi_thread")]
async fn expiring_refresh_extends_and_no_refresh_closes_4002() {
    let cluster = start().await;
    let url = |t: String| format!("{}?token={t}", cluster.node(0).ws_url);
    let mut keeps = Client::connect(&url(token("u-7", "Dan", 4, None, None))).await;
    let mut lapses = Client::connect(&url(token("u-8", "Erin", 4, None, None))).await;

    let notice = keeps.next_of_type("expiring").await;
    let in_ms = notice["in_ms"].as_u64().expect("in_ms");
    assert!(in_ms <= 4_000, "{notice}");
    keeps
        .send_json(
            json!({"type":"refresh","token": token("u-9", "Mallory", 60, None, None),"ref":"r1"}),
        )
        .await;
    let err = keeps.expect_error("unauthorized").await;
    assert_eq!(err["ref"], "r1");
    keeps
        .send_json(
            json!({"type":"refresh","token": token("u-7", "Dan", 60, None, None),"ref":"r2"}),
        )
        .await;
    let refreshed = keeps.next_of_type("refreshed").await;
    assert!(
        refreshed["exp"].as_u64().unwrap_or(0) > now() + 30,
        "{refreshed}"
    );

    let closed = lapses.wait_closed(Duration::from_secs(15)).await;
    assert_eq!(
        closed.close,
        Some((4002, "token expired".to_string())),
        "{:?}",
        closed.skipped
    );
    // The refreshed connection outlived the first token.
    keeps.join("general", "x").await;
}

/// In jwt mode a user with several connections in a room is one member: two tabs of one
/// user on two replicas are listed once, announced once when the first joins and once
/// when the last leaves.
#[tokio::test(flavor = "multi_thread")]
async fn two_tabs_of_one_user_on_two_replicas_are_one_member() {
    let cluster = Cluster::start(Bus::Redis, 2, jwt_mode).await;
    let url = |i: usize, t: String| format!("{}?token={t}", cluster.node(i).ws_url);
    let mut observer = Client::connect(&url(0, token("u-obs", "Olga", 60, None, None))).await;
    observer.join("team", "x").await;

    let mut tab1 = Client::connect(&url(0, token("u-a", "Alice", 60, None, None))).await;
    tab1.join("team", "x").await;
    let join = observer.wait_presence("team", "join", "Alice").await;
    assert_eq!(join["user"]["id"], "u-a", "{join}");

    let mut tab2 = Client::connect(&url(1, token("u-a", "Alice", 60, None, None))).await;
    let joined = tab2.join("team", "x").await;
    let members = joined["members"].as_array().expect("members");
    assert_eq!(members.len(), 2, "Alice once, Olga once: {joined}");
    observer.assert_silent(Duration::from_millis(500)).await;

    tab1.leave("team").await;
    observer.assert_silent(Duration::from_millis(500)).await;
    tab2.close().await;
    let leave = observer.wait_presence("team", "leave", "Alice").await;
    assert_eq!(leave["user"]["id"], "u-a", "{leave}");
}

/// When the replica holding one of a user's connections dies, the user stays a member as
/// long as another connection remains (no leave is announced); the leave comes with the
/// last connection.
#[tokio::test(flavor = "multi_thread")]
async fn a_dead_replica_does_not_remove_a_user_still_connected_elsewhere() {
    let redis = RedisServer::start().await;
    let mut cfg = node_config(Some(&redis), "survivor");
    jwt_mode(&mut cfg);
    let survivor = Node::start(cfg).await;
    let mut doomed = ProcessNode::start(
        Some(&redis),
        "doomed",
        &[
            ("ROOMCAST_PRESENCE__TTL", "2s"),
            ("ROOMCAST_PRESENCE__REFRESH", "300ms"),
            ("ROOMCAST_AUTH__MODE", "jwt"),
            ("ROOMCAST_AUTH__JWT__SECRET", SECRET),
        ],
    )
    .await;
    let room = "mortality";
    let with = |url: &str, t: String| format!("{url}?token={t}");
    let mut watcher = Client::connect(&with(
        &survivor.ws_url,
        token("u-w", "Watcher", 60, None, None),
    ))
    .await;
    watcher.join(room, "x").await;
    let mut on_doomed =
        Client::connect(&with(&doomed.ws_url, token("u-v", "Vic", 60, None, None))).await;
    on_doomed.join(room, "x").await;
    watcher.wait_presence(room, "join", "Vic").await;
    let mut on_survivor =
        Client::connect(&with(&survivor.ws_url, token("u-v", "Vic", 60, None, None))).await;
    on_survivor.join(room, "x").await;

    doomed.kill().await;
    // Reaping takes presence.ttl + presence.refresh (2.3 s here); Vic stays.
    watcher.assert_silent(Duration::from_secs(5)).await;
    let mut late = Client::connect(&with(
        &survivor.ws_url,
        token("u-l", "Late", 60, None, None),
    ))
    .await;
    let joined = late.join(room, "x").await;
    let names: Vec<&str> = joined["members"]
        .as_array()
        .expect("members")
        .iter()
        .filter_map(|m| m["name"].as_str())
        .collect();
    assert!(names.contains(&"Vic"), "{joined}");
    watcher.wait_presence(room, "join", "Late").await;

    on_survivor.close().await;
    watcher.wait_presence(room, "leave", "Vic").await;
    drop(on_doomed);
}

/// `roomcast probe --token` (or `--mint`, with the configured secret) checks a jwt-mode
/// gateway end to end, as the Helm test does; without a token the probe fails.
#[tokio::test(flavor = "multi_thread")]
async fn probe_with_a_token_passes_on_a_jwt_gateway_and_fails_without() {
    let cluster = start().await;
    let url = cluster.node(0).ws_url.clone();
    let t = token("probe", "Probe", 60, None, None);
    let ok = run_binary(
        &["probe", "--url", &url, "--token", &t],
        &[],
        Duration::from_secs(30),
    )
    .await;
    let stdout = String::from_utf8_lossy(&ok.stdout);
    let stderr = String::from_utf8_lossy(&ok.stderr);
    assert_eq!(ok.status.code(), Some(0), "{stdout}{stderr}");
    assert!(
        !stdout.contains(&t) && !stderr.contains(&t),
        "the token was printed"
    );
    // What the Helm test does in a container without a shell: mint with the secret.
    let minted = run_binary(
        &["probe", "--url", &url, "--mint"],
        &[("ROOMCAST_AUTH__JWT__SECRET", SECRET)],
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(
        minted.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&minted.stderr)
    );
    let refused = run_binary(
        &["probe", "--url", &url, "--timeout", "3s"],
        &[],
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(
        refused.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
}

/// Tokens never reach the logs: a replica logging at `debug` (the connection span, the
/// refusal with its reason) shows neither a good nor a refused token, from the query or an
/// `auth` frame.
#[tokio::test(flavor = "multi_thread")]
async fn tokens_never_appear_in_the_logs() {
    let node = ProcessNode::start(
        None,
        "logger",
        &[
            ("ROOMCAST_AUTH__MODE", "jwt"),
            ("ROOMCAST_AUTH__JWT__SECRET", SECRET),
            ("ROOMCAST_LOG__LEVEL", "debug"),
        ],
    )
    .await;
    let good = token("u-log", "Logan", 60, None, None);
    let forged = token_with(
        "another-secret-of-32-bytes-long!",
        "u-log",
        60,
        Extra {
            name: Some("Logan".into()),
            ..Extra::default()
        },
    );
    let mut c = Client::connect(&format!("{}?token={good}", node.ws_url)).await;
    c.join("general", "x").await;
    c.send_json(json!({"type":"refresh","token": forged})).await;
    c.expect_error("unauthorized").await;
    let mut refused = Client::connect_unwelcomed(&format!("{}?token={forged}", node.ws_url)).await;
    refused.expect_error("unauthorized").await;
    c.close().await;
    // The refusals are logged (at debug) before this returns; wait for one to be sure the
    // log was written at all.
    node.logs()
        .wait_for("a token refusal", Duration::from_secs(10), |l| {
            l.contains("token refused")
        })
        .await;
    for line in node.logs().lines() {
        assert!(
            !line.contains(&good) && !line.contains(&forged),
            "a token in the log: {line}"
        );
    }
}

/// A token's `exp` is any number its signer chose. One near `u64::MAX` seconds (the
/// expiry in milliseconds overflowed: a panic in a debug build, an instant close in a
/// release one) is a token that does not expire in practice: the user is welcomed and
/// chats, and the gateway still serves everyone.
#[tokio::test(flavor = "multi_thread")]
async fn a_token_expiring_at_the_end_of_time_is_welcomed_without_overflow() {
    // With a leeway, as in production: the leeway is added to the expiry.
    let cluster = Cluster::start(Bus::Memory, 1, |cfg| {
        jwt_mode(cfg);
        cfg.auth.jwt.leeway = Duration::from_secs(5);
    })
    .await;
    let node = cluster.node(0);
    let claims = serde_json::json!({"sub": "u-far", "name": "Far", "exp": u64::MAX - 1});
    let far = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()).expect("key"),
    )
    .expect("sign");
    let mut far_user = Client::connect(&format!("{}?token={far}", node.ws_url)).await;
    far_user.join("general", "Far").await;
    far_user.send("general", "still here").await;
    far_user.discard_pending();
    tokio::time::sleep(Duration::from_secs(1)).await;
    far_user.send("general", "and still here").await;
    let mut other = Client::connect(&format!(
        "{}?token={}",
        node.ws_url,
        token("u-2", "Bob", 60, None, None)
    ))
    .await;
    other.join("general", "Bob").await;
    other.send("general", "hello").await;
}
