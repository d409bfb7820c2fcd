//! Behaviour: the Redis bus survives Redis restarting (empty) under live sessions: delivery
//! resumes across replicas, and a resume from before the restart reports the loss.

mod common;

use common::*;

const ROOM: &str = "weather";

async fn alice_and_bob(c: &Cluster) -> (Client, Client) {
    let mut alice = c.client(0).await;
    alice.join(ROOM, "alice").await;
    let mut bob = c.client(1).await;
    bob.join(ROOM, "bob").await;
    alice.wait_presence(ROOM, "join", "bob").await;
    (alice, bob)
}

/// Members on two replicas keep their connections through a Redis restart and chat again
/// once it is back (sends refused as `unavailable` meanwhile are retried).
#[tokio::test(flavor = "multi_thread")]
async fn delivery_continues_after_redis_restart() {
    let mut c = Cluster::start(Bus::Redis, 2, defaults).await;
    let (mut alice, mut bob) = alice_and_bob(&c).await;
    let ack = alice.send(ROOM, "before").await;
    assert_eq!(id_of(&bob.next_message().await), id_of(&ack));

    c.redis_mut().restart().await;

    chat_restored(&mut alice, &mut bob, ROOM).await;
    // And a newcomer on either replica joins and hears the room.
    let mut carol = c.client(1).await;
    carol.join(ROOM, "carol").await;
    let ack = alice.send(ROOM, "welcome carol").await;
    let m = carol.next_message().await;
    assert_eq!(
        (id_of(&m), text_of(&m)),
        (id_of(&ack), "welcome carol".to_string())
    );
}

/// Redis restarted empty: the room's log is gone, so resuming from an id of before the
/// restart says `recovered: false`, then delivers what is left and live messages.
#[tokio::test(flavor = "multi_thread")]
async fn resume_from_before_redis_restart_is_not_recovered() {
    let mut c = Cluster::start(Bus::Redis, 2, defaults).await;
    let (mut alice, mut bob) = alice_and_bob(&c).await;
    bob.send(ROOM, "before").await;
    let cursor = id_of(&alice.next_message().await);

    c.redis_mut().restart().await;
    chat_restored(&mut bob, &mut alice, ROOM).await;
    alice.close().await;

    let mut alice = c.client(1).await;
    let joined = alice.join_since(ROOM, "alice", &cursor).await;
    assert_eq!(
        joined["recovered"], false,
        "the log was lost with Redis: {joined}"
    );
    let live = bob.send(ROOM, "after").await;
    let m = alice.messages_until("after").await;
    assert_eq!(id_of(m.last().expect("a message")), id_of(&live));
    assert!(
        m.iter().all(|m| m["text"] != "before"),
        "a message from before the restart came back: {m:?}"
    );
}

/// A TCP proxy in front of Redis that the test can cut and restore: Redis unreachable for
/// one replica while its data survives (a network partition, not a restart).
struct CuttableProxy {
    url: String,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    conns: std::sync::Arc<tokio::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    _accept: tokio::task::JoinHandle<()>,
}

impl CuttableProxy {
    async fn start(redis_port: u16) -> CuttableProxy {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let conns = std::sync::Arc::new(tokio::sync::Mutex::new(Vec::new()));
        let (c2, n2) = (cut.clone(), conns.clone());
        let accept = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                if c2.load(Ordering::Acquire) {
                    continue; // refused: dropped at once
                }
                let Ok(mut server) =
                    tokio::net::TcpStream::connect(("127.0.0.1", redis_port)).await
                else {
                    continue;
                };
                n2.lock().await.push(tokio::spawn(async move {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }));
            }
        });
        CuttableProxy {
            url: format!("redis://127.0.0.1:{port}"),
            cut,
            conns,
            _accept: accept,
        }
    }

    async fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::Release);
        for conn in self.conns.lock().await.drain(..) {
            conn.abort();
        }
    }

    fn restore(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::Release);
    }
}

/// A member who leaves while its replica cannot reach Redis is still removed from the
/// room's presence (and announced as left) once Redis is reachable again.
#[tokio::test(flavor = "multi_thread")]
async fn leave_during_a_redis_partition_is_applied_after_it_heals() {
    let redis = RedisServer::start().await;
    let proxy = CuttableProxy::start(redis.port).await;
    let mut cfg_a = node_config(Some(&redis), "part-a");
    cfg_a.redis.url = Some(proxy.url.clone());
    let a = Node::start(cfg_a).await;
    let b = Node::start(node_config(Some(&redis), "part-b")).await;

    let mut watcher = Client::connect(&b.ws_url).await;
    watcher.join(ROOM, "watcher").await;
    let mut victim = Client::connect(&a.ws_url).await;
    victim.join(ROOM, "victim").await;
    watcher.wait_presence(ROOM, "join", "victim").await;

    proxy.cut().await;
    // Wait until replica A knows its bus is down.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (status, _) = http_get(&format!("{}/readyz", a.admin_url))
            .await
            .expect("readyz");
        if status == 503 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "replica A never noticed the cut"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    victim.close().await;
    // The leave could not reach Redis: the victim is still listed there.
    let key = format!("roomcast:{{{ROOM}}}:members");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(redis.redis_cmd(&["HLEN", &key]).await.trim(), "2");

    proxy.restore();
    watcher.wait_presence(ROOM, "leave", "victim").await;
    assert_eq!(redis.redis_cmd(&["HLEN", &key]).await.trim(), "1");
    drop(a);
}

/// A receive loop that falls behind (more channel messages arrive at once than
/// `redis.receive_buffer` holds) loses nothing: like after a reconnect it resubscribes
/// and catches up from the room's history, and the member sees every message once, in
/// order. `roomcast_bus_recoveries_total{reason="lagged"}` counts it.
#[tokio::test(flavor = "multi_thread")]
async fn a_receive_loop_that_falls_behind_recovers_every_message() {
    // alice's replica buffers a single message; bob's sends arrive in bursts.
    let c = Cluster::start(Bus::Redis, 2, |cfg: &mut roomcast::Config| {
        if cfg.node.id.as_deref() == Some("node-0") {
            cfg.redis.receive_buffer = 1;
        }
    })
    .await;
    let (mut alice, mut bob) = alice_and_bob(&c).await;
    let mut sent: Vec<String> = Vec::new();
    let mut received: Vec<String> = Vec::new();
    let mut lagged = 0.0;
    for burst in 0..10 {
        let texts: Vec<String> = (0..100).map(|k| format!("b{burst}-{k}")).collect();
        sent.extend(bob.send_many(ROOM, &texts).await);
        let last = texts.last().expect("a burst");
        received.extend(alice.messages_until(last).await.iter().map(id_of));
        lagged = metric_value(
            &c.node(0).admin_url,
            "roomcast_bus_recoveries_total",
            &[("reason", "lagged")],
        )
        .await;
        if lagged >= 1.0 {
            break;
        }
    }
    assert!(lagged >= 1.0, "the receive loop never fell behind");
    assert_eq!(
        received, sent,
        "every message once, in order, across the lag"
    );
    // And the room works as before.
    let ack = bob.send(ROOM, "after").await;
    assert_eq!(id_of(&alice.next_message().await), id_of(&ack));
}

/// A room this replica cannot catch up after its bus reconnects (here: its log was made
/// unreadable) has its members closed with 1013 `resume`, since live messages would move
/// them past what they missed and nothing would replay it; resuming with `since` does.
/// Members of the other rooms stay connected and keep chatting.
#[tokio::test(flavor = "multi_thread")]
async fn members_of_a_room_that_cannot_catch_up_are_closed_to_resume() {
    let c = Cluster::start(Bus::Redis, 1, defaults).await;
    let mut alice = c.client(0).await;
    alice.join("broken", "alice").await;
    let mut bob = c.client(0).await;
    bob.join("fine", "bob").await;
    alice.send("broken", "before").await;
    alice.next_message().await;

    let redis = c.redis();
    redis
        .redis_cmd(&["SET", "roomcast:{broken}:log", "not a stream"])
        .await;
    // Drop the replica's subscriber connection: it reconnects, resubscribes, catches up.
    redis.redis_cmd(&["CLIENT", "KILL", "TYPE", "pubsub"]).await;

    let closed = alice.wait_closed(Duration::from_secs(30)).await;
    assert_eq!(
        closed.close,
        Some((1013, "resume".to_string())),
        "alice's room could not be caught up"
    );
    let ack = bob.send("fine", "still here").await;
    assert_eq!(id_of(&bob.next_message().await), id_of(&ack));
}

/// A frozen Redis (SIGSTOP) keeps its connections open and answers nothing. Once a command
/// has timed out with nothing answered since, the replica says so: `/readyz` is 503
/// `bus_stalled` and sends are refused `unavailable` at once rather than each waiting for
/// its own timeout. When Redis answers again, readiness returns and the members chat.
#[tokio::test(flavor = "multi_thread")]
async fn a_frozen_redis_makes_the_replica_unready_until_it_answers_again() {
    let c = Cluster::start(Bus::Redis, 2, defaults).await;
    let (mut alice, mut bob) = alice_and_bob(&c).await;
    let ack = alice.send(ROOM, "before").await;
    assert_eq!(id_of(&bob.next_message().await), id_of(&ack));
    let admin = c.node(0).admin_url.clone();

    c.redis().freeze();
    let reply = alice.try_send(ROOM, "into the silence").await;
    assert_eq!(reply["code"], "unavailable", "{reply}");
    eventually(Duration::from_secs(15), || async {
        let (status, body) = http_get(&format!("{admin}/readyz"))
            .await
            .map_err(|e| e.to_string())?;
        if status == 503 && body.contains("bus_stalled") {
            Ok(())
        } else {
            Err(format!("{status} {body}"))
        }
    })
    .await;
    // Stalled: refused without waiting on the silent Redis (several in a row would take
    // a command timeout each otherwise; the count is what is checked, not the time).
    let texts: Vec<String> = (0..5).map(|i| format!("refused-{i}")).collect();
    for text in &texts {
        let reply = alice.try_send(ROOM, text).await;
        assert_eq!(reply["code"], "unavailable", "{reply}");
    }

    c.redis().thaw();
    wait_ready(&admin, Duration::from_secs(15)).await;
    chat_restored(&mut alice, &mut bob, ROOM).await;
}
