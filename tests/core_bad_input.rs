//! Behaviour: every refused frame gets its documented error code (or close code), the
//! offending connection stays usable (unless the protocol closes it), and other clients in
//! the room are unaffected.

#[macro_use]
mod common;

use common::*;

const ROOM: &str = "hall";

/// `alice` (replica 0) and `bob` (replica 1) in `ROOM`, alice aware of bob.
struct Pair {
    alice: Client,
    bob: Client,
}

async fn pair(c: &Cluster) -> Pair {
    let mut alice = c.client(0).await;
    alice.join(ROOM, "alice").await;
    let mut bob = c.client(1).await;
    bob.join(ROOM, "bob").await;
    alice.wait_presence(ROOM, "join", "bob").await;
    Pair { alice, bob }
}

impl Pair {
    /// Both still chat: alice's next frames are her own message then bob's, bob's likewise.
    /// Strict reads: a stray frame caused by the bad input fails here.
    async fn assert_still_chatting(&mut self) {
        let ack = self.alice.send(ROOM, "still here").await;
        for who in [&mut self.alice, &mut self.bob] {
            let m = who.expect("message").await;
            assert_eq!(
                (id_of(&m), text_of(&m)),
                (id_of(&ack), "still here".to_string())
            );
        }
        let ack = self.bob.send(ROOM, "me too").await;
        for who in [&mut self.alice, &mut self.bob] {
            let m = who.expect("message").await;
            assert_eq!(
                (id_of(&m), text_of(&m)),
                (id_of(&ack), "me too".to_string())
            );
        }
    }
}

/// Sends `frame` as raw text from alice, expects error `code`, then both still chat.
async fn refused_text(c: &Cluster, frame: &str, code: &str) -> Value {
    let mut p = pair(c).await;
    p.alice.send_text(frame).await;
    let error = p.alice.expect_error(code).await;
    p.assert_still_chatting().await;
    error
}

/// Sends `frame` (with `"ref":"bad1"` added) from alice, expects error `code` echoing the
/// ref, then both still chat.
async fn refused_json(c: &Cluster, mut frame: Value, code: &str) {
    frame["ref"] = json!("bad1");
    let mut p = pair(c).await;
    p.alice.send_json(frame).await;
    let error = p.alice.expect_error(code).await;
    assert_eq!(
        error["ref"], "bad1",
        "the error does not echo the ref: {error}"
    );
    p.assert_still_chatting().await;
}

async fn non_json_text_is_bad_request(c: &Cluster) {
    refused_text(c, "this is not json {", "bad_request").await;
}
on_both_buses!(non_json_text_is_bad_request, 2);

async fn json_null_is_bad_request(c: &Cluster) {
    refused_text(c, "null", "bad_request").await;
}
on_both_buses!(json_null_is_bad_request, 2);

async fn json_number_is_bad_request(c: &Cluster) {
    refused_text(c, "42", "bad_request").await;
}
on_both_buses!(json_number_is_bad_request, 2);

async fn json_array_is_bad_request(c: &Cluster) {
    refused_text(
        c,
        r#"[{"type":"send","room":"hall","text":"x"}]"#,
        "bad_request",
    )
    .await;
}
on_both_buses!(json_array_is_bad_request, 2);

async fn unknown_type_is_unknown_type(c: &Cluster) {
    refused_json(
        c,
        json!({"type": "shout", "room": ROOM, "text": "hey"}),
        "unknown_type",
    )
    .await;
}
on_both_buses!(unknown_type_is_unknown_type, 2);

async fn missing_field_is_bad_request(c: &Cluster) {
    refused_json(c, json!({"type": "send", "room": ROOM}), "bad_request").await;
}
on_both_buses!(missing_field_is_bad_request, 2);

async fn wrong_typed_field_is_bad_request(c: &Cluster) {
    refused_json(
        c,
        json!({"type": "send", "room": ROOM, "text": 42}),
        "bad_request",
    )
    .await;
}
on_both_buses!(wrong_typed_field_is_bad_request, 2);

async fn invalid_room_is_invalid_room(c: &Cluster) {
    let mut p = pair(c).await;
    let too_long = "r".repeat(65);
    for room in ["", "has space", "slash/room", "émoji", too_long.as_str()] {
        let answer = p.alice.try_join(room, "alice").await;
        assert_eq!(answer["type"], "error", "join {room:?} accepted: {answer}");
        assert_eq!(answer["code"], "invalid_room", "join {room:?}: {answer}");
    }
    let longest = "r".repeat(64);
    let ok = p.alice.try_join(&longest, "alice").await;
    assert_eq!(
        ok["type"], "joined",
        "a 64-character room name is valid: {ok}"
    );
    p.assert_still_chatting().await;
}
on_both_buses!(invalid_room_is_invalid_room, 2);

async fn invalid_name_is_invalid_name(c: &Cluster) {
    let mut p = pair(c).await;
    let too_long = "n".repeat(33);
    for name in ["", "   ", "bell\u{7}name", "new\nline", too_long.as_str()] {
        let answer = p.alice.try_join("names", name).await;
        assert_eq!(
            answer["type"], "error",
            "join as {name:?} accepted: {answer}"
        );
        assert_eq!(answer["code"], "invalid_name", "join as {name:?}: {answer}");
    }
    p.assert_still_chatting().await;
}
on_both_buses!(invalid_name_is_invalid_name, 2);

/// The trimmed display name is what everyone sees; 32 characters is the longest.
async fn display_name_is_trimmed(c: &Cluster) {
    let mut p = pair(c).await;
    let mut carol = c.client(0).await;
    let joined = carol.join(ROOM, "   carol  ").await;
    assert_eq!(joined["you"]["name"], "carol");
    let p1 = p.bob.expect("presence").await;
    assert_eq!(p1["user"]["name"], "carol");
    let mut longest = c.client(1).await;
    let name = "é".repeat(32);
    let joined = longest.join(ROOM, &name).await;
    assert_eq!(joined["you"]["name"], name.as_str());
}
on_both_buses!(display_name_is_trimmed, 2);

async fn send_to_room_not_joined_is_not_joined(c: &Cluster) {
    refused_json(
        c,
        json!({"type": "send", "room": "elsewhere", "text": "hi"}),
        "not_joined",
    )
    .await;
}
on_both_buses!(send_to_room_not_joined_is_not_joined, 2);

async fn leave_room_not_joined_is_not_joined(c: &Cluster) {
    refused_json(
        c,
        json!({"type": "leave", "room": "elsewhere"}),
        "not_joined",
    )
    .await;
}
on_both_buses!(leave_room_not_joined_is_not_joined, 2);

/// Joining twice is refused, membership stays single: one presence, one delivery per
/// message, one entry in `members`.
async fn joining_twice_is_already_joined_with_single_delivery(c: &Cluster) {
    let mut p = pair(c).await;
    let answer = p.alice.try_join(ROOM, "alice").await;
    assert_eq!(answer["code"], "already_joined", "{answer}");
    // Strict reads: a duplicate message or presence would fail here.
    p.assert_still_chatting().await;
    let mut carol = c.client(1).await;
    let joined = carol.join(ROOM, "carol").await;
    let alices = joined["members"]
        .as_array()
        .expect("members")
        .iter()
        .filter(|m| m["name"] == "alice")
        .count();
    assert_eq!(alices, 1, "alice listed {alices} times: {joined}");
}
on_both_buses!(joining_twice_is_already_joined_with_single_delivery, 2);

fn three_rooms(cfg: &mut roomcast::Config) {
    cfg.limits.max_rooms_per_connection = 3;
}

async fn joining_more_rooms_than_allowed_is_too_many_rooms(c: &Cluster) {
    let mut p = pair(c).await;
    p.alice.join("second", "alice").await;
    p.alice.join("third", "alice").await;
    let answer = p.alice.try_join("fourth", "alice").await;
    assert_eq!(answer["code"], "too_many_rooms", "{answer}");
    p.assert_still_chatting().await;
    // Leaving one makes room for another.
    p.alice.leave("third").await;
    p.alice.join("fourth", "alice").await;
}
on_both_buses!(
    joining_more_rooms_than_allowed_is_too_many_rooms,
    2,
    three_rooms
);

fn small_text(cfg: &mut roomcast::Config) {
    cfg.limits.max_text_bytes = 64;
}

/// Text over `max_text_bytes` bytes (counted in bytes, not characters) is `too_large`;
/// exactly the limit is fine.
async fn text_over_the_limit_is_too_large(c: &Cluster) {
    let mut p = pair(c).await;
    for text in ["x".repeat(65), "é".repeat(33)] {
        let answer = p.alice.try_send(ROOM, &text).await;
        assert_eq!(
            answer["code"],
            "too_large",
            "text of {} bytes: {answer}",
            text.len()
        );
    }
    let ok = p.alice.send(ROOM, &"y".repeat(64)).await;
    for who in [&mut p.alice, &mut p.bob] {
        assert_eq!(id_of(&who.expect("message").await), id_of(&ok));
    }
    p.assert_still_chatting().await;
}
on_both_buses!(text_over_the_limit_is_too_large, 2, small_text);

/// Empty text is refused as `too_large` (protocol.md: "or empty text").
async fn empty_text_is_bad_request(c: &Cluster) {
    refused_json(
        c,
        json!({"type": "send", "room": ROOM, "text": ""}),
        "bad_request",
    )
    .await;
}
on_both_buses!(empty_text_is_bad_request, 2);

fn small_frames(cfg: &mut roomcast::Config) {
    cfg.limits.max_text_bytes = 512;
    cfg.limits.max_frame_bytes = 2048;
}

/// A frame over `max_frame_bytes` closes the connection with 1009; the room goes on.
async fn frame_over_the_limit_closes_1009(c: &Cluster) {
    let mut p = pair(c).await;
    let huge = json!({"type": "send", "room": ROOM, "text": "z".repeat(4000)});
    p.alice.send_json(huge).await;
    assert_eq!(
        p.alice.expect_close().await,
        (1009, "frame too large".to_string())
    );

    p.bob.wait_presence(ROOM, "leave", "alice").await;
    let ack = p.bob.send(ROOM, "bob goes on").await;
    assert_eq!(id_of(&p.bob.next_message().await), id_of(&ack));
    let mut again = c.client(0).await;
    again.join(ROOM, "alice").await;
    let ack = again.send(ROOM, "back").await;
    assert_eq!(id_of(&again.next_message().await), id_of(&ack));
    assert_eq!(id_of(&p.bob.next_message().await), id_of(&ack));
}
on_both_buses!(frame_over_the_limit_closes_1009, 2, small_frames);

async fn binary_frame_is_bad_request(c: &Cluster) {
    let mut p = pair(c).await;
    p.alice
        .send_binary(br#"{"type":"send","room":"hall","text":"sneaky"}"#)
        .await;
    p.alice.expect_error("bad_request").await;
    p.assert_still_chatting().await;
}
on_both_buses!(binary_frame_is_bad_request, 2);

fn slow_rate(cfg: &mut roomcast::Config) {
    cfg.limits.messages_per_second = 2;
    cfg.limits.burst = 5;
    cfg.limits.rate_limit_strikes = 1000;
}

/// Frames beyond the burst are refused with `rate_limited` (echoing their ref, not sent);
/// once the bucket refills, sending works again and the room hears it.
async fn flood_over_the_rate_limit_is_rate_limited(c: &Cluster) {
    let mut p = pair(c).await;
    for k in 0..12 {
        p.alice
            .send_json(json!({"type": "send", "room": ROOM, "text": format!("flood{k}"), "ref": format!("f{k}")}))
            .await;
    }
    let (mut acks, mut limited, mut without_ref) = (Vec::new(), 0, Vec::new());
    while acks.len() + limited < 12 {
        let v = p.alice.next_json().await;
        match v["type"].as_str() {
            Some("ack") => acks.push(id_of(&v)),
            Some("error") => {
                assert_eq!(v["code"], "rate_limited", "{v}");
                if !v["ref"].as_str().is_some_and(|r| r.starts_with('f')) {
                    without_ref.push(v.clone());
                }
                limited += 1;
            }
            Some("message") => {}
            _ => panic!("unexpected frame during the flood: {v}"),
        }
    }
    assert!(
        limited >= 1,
        "12 frames at once with burst 5 were all accepted"
    );
    assert!(!acks.is_empty(), "the burst allowance accepted nothing");

    // Bob hears exactly the accepted messages.
    let mut bob_heard = Vec::new();
    for _ in 0..acks.len() {
        bob_heard.push(id_of(&p.bob.next_message().await));
    }
    assert_eq!(
        bob_heard, acks,
        "bob heard other than the accepted messages"
    );

    // The bucket refills at 2 per second: retry until accepted.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut attempt = 0;
    let ack = 'retry: loop {
        assert!(std::time::Instant::now() < deadline, "never accepted again");
        attempt += 1;
        let reference = format!("retry{attempt}");
        p.alice
            .send_json(
                json!({"type": "send", "room": ROOM, "text": "after the flood", "ref": reference}),
            )
            .await;
        loop {
            let v = p.alice.next_json().await;
            match v["type"].as_str() {
                Some("ack") if v["ref"] == reference.as_str() => break 'retry v,
                Some("error") => {
                    assert_eq!(v["code"], "rate_limited", "{v}");
                    if v["ref"] != reference.as_str() {
                        without_ref.push(v.clone());
                    }
                    break;
                }
                _ => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let m = p.bob.next_message().await;
    assert_eq!(
        (id_of(&m), text_of(&m)),
        (id_of(&ack), "after the flood".to_string())
    );
    let reply = p.bob.send(ROOM, "bob is fine").await;
    let heard = p.alice.messages_until("bob is fine").await;
    assert_eq!(id_of(heard.last().expect("a message")), id_of(&reply));
    // "Any frame may carry ref; an error caused by that frame echoes it."
    assert!(
        without_ref.is_empty(),
        "{} rate_limited errors do not echo the refused frame's ref, e.g. {}",
        without_ref.len(),
        without_ref[0]
    );
}
on_both_buses!(flood_over_the_rate_limit_is_rate_limited, 2, slow_rate);

fn strict_rate(cfg: &mut roomcast::Config) {
    cfg.limits.messages_per_second = 1;
    cfg.limits.burst = 2;
    cfg.limits.rate_limit_strikes = 3;
}

/// A client that keeps flooding after `rate_limited` errors is closed with 1008
/// "rate limit"; the room goes on.
async fn continued_flood_closes_1008_rate_limit(c: &Cluster) {
    let mut p = pair(c).await;
    for k in 0..40 {
        let frame = json!({"type": "send", "room": ROOM, "text": format!("flood{k}"), "ref": format!("f{k}")});
        if p.alice.try_send_text(&frame.to_string()).await.is_err() {
            break;
        }
    }
    let closed = p.alice.wait_closed(FRAME_TIMEOUT).await;
    assert_eq!(
        closed.close,
        Some((1008, "rate limit".to_string())),
        "a client flooding on after refusals: {closed:?}"
    );

    p.bob.wait_presence(ROOM, "leave", "alice").await;
    let ack = p.bob.send(ROOM, "bob goes on").await;
    let m = p.bob.next_message().await;
    assert_eq!(id_of(&m), id_of(&ack));

    // The close comes after refusals the client was told about.
    let limited = closed
        .skipped
        .iter()
        .filter(|v| v["type"] == "error" && v["code"] == "rate_limited")
        .count();
    assert!(
        limited >= 1,
        "closed 1008 without any rate_limited error first: {:?}",
        closed.skipped
    );
}
on_both_buses!(continued_flood_closes_1008_rate_limit, 2, strict_rate);

/// With Redis down, a send is refused with `unavailable` (never silently dropped); when
/// Redis is back, the same connections chat again.
#[tokio::test(flavor = "multi_thread")]
async fn send_while_redis_unreachable_is_unavailable() {
    let mut c = Cluster::start(Bus::Redis, 2, defaults).await;
    let mut p = pair(&c).await;
    c.redis_mut().stop().await;

    let reference = "lost1";
    p.alice
        .send_json(json!({"type": "send", "room": ROOM, "text": "into the void", "ref": reference}))
        .await;
    // Not an ack (Redis is gone) and not silence: an `unavailable` error for this frame.
    let answer = loop {
        match p.alice.read_incoming(Duration::from_secs(60)).await {
            Some(Incoming::Json(v)) if v["type"] == "error" || v["type"] == "ack" => break v,
            Some(Incoming::Json(_)) => {}
            other => panic!("no answer to a send while Redis is down: {other:?}"),
        }
    };
    assert_eq!(answer["code"], "unavailable", "{answer}");
    assert_eq!(answer["ref"], reference, "{answer}");

    c.redis_mut().restart().await;
    for node in &c.nodes {
        node.wait_ready().await;
    }
    chat_restored(&mut p.alice, &mut p.bob, ROOM).await;
}

/// A payload on the room channel that is not a valid envelope is skipped: clients get
/// nothing for it and the next real message arrives.
#[tokio::test(flavor = "multi_thread")]
async fn undecodable_bus_payload_is_skipped() {
    let c = Cluster::start(Bus::Redis, 2, defaults).await;
    let mut p = pair(&c).await;
    let channel = format!("roomcast:{{{ROOM}}}:ch");
    for garbage in [
        "garbage-not-json",
        r#"{"unexpected":"shape"}"#,
        "\u{1}\u{2}",
    ] {
        let receivers = c.redis().redis_cmd(&["PUBLISH", &channel, garbage]).await;
        assert_eq!(
            receivers, "2",
            "both replicas should be subscribed to {channel}"
        );
    }
    // Strict reads: any frame caused by the garbage fails here.
    p.assert_still_chatting().await;
    for node in &c.nodes {
        let (status, body) = http_get(&format!("{}/readyz", node.admin_url))
            .await
            .expect("readyz");
        assert_eq!(status, 200, "a replica is unhealthy after garbage: {body}");
    }
}
