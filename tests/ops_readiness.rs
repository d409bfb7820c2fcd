//! Behaviour: `/readyz` (admin and client port) is 503 with a reason until the bus connects,
//! while Redis is down (`bus_down`) and from the start of a drain (`draining`), and 200
//! otherwise; `/healthz` stays 200 throughout. During `drain.propagation_delay` upgrades are
//! still accepted; after it they are refused with 503.

mod common;
mod ops_common;

use std::time::Instant;

use common::*;
use ops_common::*;

const REASONS: [&str; 4] = ["bus_down", "resubscribing", "draining", "starting"];

/// Both ports answer `/readyz` alike (200 or 503 with a documented reason) and `/healthz` 200.
async fn both_ports(node: &Node) -> [(u16, Value); 2] {
    let mut answers = Vec::new();
    for base in [&node.admin_url, &node.http_url] {
        assert_healthy(base).await;
        let answer = readyz(base).await;
        match answer.0 {
            200 => assert_ready(&answer, base),
            _ => {
                let reason = unready_reason(&answer);
                assert!(REASONS.contains(&reason.as_str()), "{base}: {answer:?}");
            }
        }
        answers.push(answer);
    }
    answers.try_into().expect("two answers")
}

/// A node whose Redis is not running yet is unready (503, reason `starting` or `bus_down`)
/// but healthy; once Redis starts on that port, it turns ready and serves.
#[tokio::test(flavor = "multi_thread")]
async fn readyz_is_503_until_the_bus_connects_then_200() {
    // Reserve a Redis port, then stop it: nothing listens there yet.
    let mut redis = RedisServer::start().await;
    redis.stop().await;
    let node = Node::start_unready(node_config(Some(&redis), "late-bus")).await;

    // Unready for as long as there is no Redis (sampled over a second).
    for _ in 0..5 {
        for answer in both_ports(&node).await {
            let reason = unready_reason(&answer);
            assert!(
                reason == "starting" || reason == "bus_down",
                "before the bus connects: {answer:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    redis.restart().await;
    wait_readyz(&node.admin_url, READY_TIMEOUT, "200", |a| a.0 == 200).await;
    for answer in both_ports(&node).await {
        assert_eq!(answer.0, 200, "{answer:?}");
    }
    let mut alice = node.client().await;
    alice.join("hall", "alice").await;
    let ack = alice.send("hall", "hello").await;
    assert_eq!(id_of(&alice.next_message().await), id_of(&ack));
}

/// Redis goes down under a ready node: `/readyz` turns 503 `bus_down` (healthz stays 200),
/// and 200 again once Redis is back.
#[tokio::test(flavor = "multi_thread")]
async fn readyz_is_503_bus_down_while_redis_is_down_and_200_after() {
    let mut c = Cluster::start(Bus::Redis, 1, defaults).await;
    let mut alice = c.client(0).await;
    alice.join("hall", "alice").await;
    for answer in both_ports(c.node(0)).await {
        assert_eq!(answer.0, 200, "{answer:?}");
    }

    c.redis_mut().stop().await;
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let [admin, client] = both_ports(c.node(0)).await;
        if admin.0 == 503 && client.0 == 503 {
            assert_eq!(unready_reason(&admin), "bus_down", "{admin:?}");
            assert_eq!(unready_reason(&client), "bus_down", "{client:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still {admin:?} / {client:?} with Redis down"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // It stays unready while Redis is down.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for answer in both_ports(c.node(0)).await {
        assert_eq!(unready_reason(&answer), "bus_down", "{answer:?}");
    }

    c.redis_mut().restart().await;
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let [admin, client] = both_ports(c.node(0)).await;
        if admin.0 == 200 && client.0 == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not ready after Redis came back: {admin:?} / {client:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ack = alice.send("hall", "back").await;
    let m = alice.messages_until("back").await;
    assert_eq!(id_of(m.last().expect("a message")), id_of(&ack));
}

fn slow_propagation(cfg: &mut roomcast::Config) {
    cfg.drain.propagation_delay = Duration::from_secs(2);
    // With two sessions the closes are 2 s apart: upgrades meet the 503 for that long
    // before the drain ends and the listener goes away.
    cfg.drain.spread = Duration::from_secs(4);
    cfg.drain.timeout = Duration::from_secs(10);
}

/// From the moment shutdown starts `/readyz` is 503 `draining` on both ports (healthz 200,
/// `roomcast_draining` 1) while open sessions stay and new upgrades still succeed during
/// `drain.propagation_delay`; after it upgrades get 503, and every session is closed 1001.
#[tokio::test(flavor = "multi_thread")]
async fn readyz_is_503_draining_from_shutdown_while_upgrades_succeed_during_the_delay() {
    let mut c = Cluster::start(Bus::Memory, 1, slow_propagation).await;
    let node = c.nodes.pop().expect("a node");
    let mut early = node.client().await;
    early.join("hall", "early").await;
    for answer in both_ports(&node).await {
        assert_eq!(answer.0, 200, "{answer:?}");
    }
    assert_eq!(metric(&node.admin_url, "roomcast_draining", &[]).await, 0.0);

    node.shutdown_token().cancel();
    let first_unready = wait_readyz(&node.admin_url, Duration::from_secs(10), "503", |a| {
        a.0 != 200
    })
    .await;
    assert_eq!(
        unready_reason(&first_unready),
        "draining",
        "{first_unready:?}"
    );
    for answer in both_ports(&node).await {
        assert_eq!(unready_reason(&answer), "draining", "{answer:?}");
    }
    assert_eq!(metric(&node.admin_url, "roomcast_draining", &[]).await, 1.0);

    // Still within the propagation delay: the open session is untouched and a new upgrade
    // is accepted (the load balancer may still send traffic).
    early.assert_silent(Duration::from_millis(100)).await;
    let mut late = node.client().await;

    // After the delay, upgrades are refused with 503.
    let deadline = Instant::now() + Duration::from_secs(12);
    loop {
        let (status, head) = upgrade_status(&node.ws_url).await;
        if status == 503 {
            break;
        }
        assert_eq!(
            status, 101,
            "unexpected answer to an upgrade while draining: {head}"
        );
        assert!(
            Instant::now() < deadline,
            "upgrades still accepted long after the propagation delay"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    for client in [&mut early, &mut late] {
        let closed = client.wait_closed(Duration::from_secs(15)).await;
        assert_eq!(
            closed.close,
            Some((1001, "draining".to_string())),
            "{closed:?}"
        );
    }
    tokio::time::timeout(Duration::from_secs(30), node.shutdown())
        .await
        .expect("run returns after the drain")
        .expect("run returns Ok");
}
