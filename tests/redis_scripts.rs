//! The node-liveness and reaping scripts on a real `redis-server` (issue 12): reaping is
//! split into a claim on the node set, one idempotent script per room, and a final `done`,
//! so it is safe on a cluster (no script touches two slots) and when a reaper dies half way
//! or the "dead" node comes back.

mod common;

use common::*;

const NODES_LUA: &str = include_str!("../src/bus/lua/nodes.lua");
const REAP_ROOM_LUA: &str = include_str!("../src/bus/lua/reap_room.lua");
const RESTORE_LUA: &str = include_str!("../src/bus/lua/restore.lua");

async fn nodes(redis: &RedisServer, op: &str, node: &str, ms: &str) -> String {
    redis
        .redis_cmd(&["EVAL", NODES_LUA, "1", "t:nodes", op, node, ms])
        .await
}

/// A leave envelope as the gateway stores it (`u` is the user).
fn envelope(name: &str, id: Option<&str>) -> String {
    let user = match id {
        Some(id) => json!({"name": name, "color": "#000000", "id": id}),
        None => json!({"name": name, "color": "#000000"}),
    };
    json!({"k": "p", "e": "leave", "u": user, "n": "dead", "c": "c1"}).to_string()
}

/// `beat` registers and asks for a restore only when the node was missing; `claim` takes
/// only a node whose deadline passed; a claimed node that beats again is told to restore
/// and is not forgotten by `done`; an unclaimed one is.
#[tokio::test(flavor = "multi_thread")]
async fn claim_beat_and_done_keep_a_returning_node() {
    let redis = RedisServer::start().await;
    assert_eq!(nodes(&redis, "beat", "n1", "1000").await, "1", "first beat");
    assert_eq!(nodes(&redis, "beat", "n1", "2000").await, "0", "later beat");
    assert_eq!(
        nodes(&redis, "claim", "n1", "1500").await,
        "0",
        "deadline 2000 not passed at 1500"
    );
    assert_eq!(
        nodes(&redis, "claim", "n1", "2500").await,
        "1",
        "dead at 2500"
    );
    assert_eq!(redis.redis_cmd(&["ZSCORE", "t:nodes", "n1"]).await, "-1");
    // A second reaper (or one taking over from a crashed one) may claim it again.
    assert_eq!(nodes(&redis, "claim", "n1", "2600").await, "1");
    // The node was only slow: its beat asks it to record its members again...
    assert_eq!(nodes(&redis, "beat", "n1", "9000").await, "1");
    // ...and the reaper's `done` leaves it registered.
    assert_eq!(nodes(&redis, "done", "n1", "2700").await, "0");
    assert_eq!(redis.redis_cmd(&["ZSCORE", "t:nodes", "n1"]).await, "9000");

    assert_eq!(nodes(&redis, "beat", "n2", "1000").await, "1");
    assert_eq!(nodes(&redis, "claim", "n2", "5000").await, "1");
    assert_eq!(nodes(&redis, "done", "n2", "5000").await, "1");
    assert_eq!(redis.redis_cmd(&["ZSCORE", "t:nodes", "n2"]).await, "");
    assert_eq!(nodes(&redis, "claim", "n2", "6000").await, "0", "forgotten");
}

/// `reap_room` removes only the dead node's members, announces each leave once (a user
/// still connected elsewhere only loses a connection, and stays in the roster), and
/// finds nothing the second time.
#[tokio::test(flavor = "multi_thread")]
async fn reap_room_is_idempotent_and_spares_other_nodes() {
    let redis = RedisServer::start().await;
    let (members, users) = ("t:{r}:members", "t:{r}:users");
    let (roster, names, pseq) = ("t:{r}:roster", "t:{r}:names", "t:{r}:pseq");
    for key in ["c:dead|c1", "u:u-shared"] {
        redis.redis_cmd(&["ZADD", roster, "0", key]).await;
        redis.redis_cmd(&["HSET", names, key, "{}"]).await;
    }
    let anon = envelope("anon", None);
    let shared = envelope("shared", Some("u-shared"));
    for (field, value) in [
        ("dead|c1", anon.as_str()),
        ("dead|c2", shared.as_str()),
        ("alive|c9", shared.as_str()),
    ] {
        redis.redis_cmd(&["HSET", members, field, value]).await;
    }
    redis.redis_cmd(&["HSET", users, "u-shared", "2"]).await;
    let reap = || async {
        redis
            .redis_cmd(&[
                "EVAL",
                REAP_ROOM_LUA,
                "5",
                members,
                users,
                roster,
                names,
                pseq,
                "dead",
                "t:{r}:ch",
                "PUBLISH",
            ])
            .await
    };
    assert_eq!(reap().await, "2");
    let left = redis.redis_cmd(&["HKEYS", members]).await;
    assert_eq!(left, "alive|c9");
    assert_eq!(redis.redis_cmd(&["HGET", users, "u-shared"]).await, "1");
    assert_eq!(
        redis.redis_cmd(&["ZRANGE", roster, "0", "-1"]).await,
        "u:u-shared",
        "the anonymous member left the roster; the shared user is still there"
    );
    assert_eq!(redis.redis_cmd(&["HKEYS", names]).await, "u:u-shared");
    let again = reap().await;
    assert_eq!(again, "0", "a second reaper finds nothing");
}

/// `restore` records a member once: restoring twice does not count a user's connection
/// twice (which would keep them listed after they leave).
#[tokio::test(flavor = "multi_thread")]
async fn restore_counts_a_connection_once() {
    let redis = RedisServer::start().await;
    let (members, users) = ("t:{q}:members", "t:{q}:users");
    let (roster, names) = ("t:{q}:roster", "t:{q}:names");
    let value = envelope("bob", Some("u-bob"));
    for expected in ["1", "0"] {
        let restored = redis
            .redis_cmd(&[
                "EVAL",
                RESTORE_LUA,
                "4",
                members,
                users,
                roster,
                names,
                "n1|c1",
                &value,
                "u-bob",
                "u:u-bob",
                r#"{"name":"bob"}"#,
            ])
            .await;
        assert_eq!(restored, expected);
    }
    assert_eq!(redis.redis_cmd(&["HGET", users, "u-bob"]).await, "1");
    assert_eq!(redis.redis_cmd(&["HLEN", members]).await, "1");
    assert_eq!(
        redis.redis_cmd(&["ZRANGE", roster, "0", "-1"]).await,
        "u:u-bob"
    );
    assert_eq!(
        redis.redis_cmd(&["HGET", names, "u:u-bob"]).await,
        r#"{"name":"bob"}"#
    );
}
