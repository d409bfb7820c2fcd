//! `redis.mode` and its keys as users set them (issue 12): the real binary accepts each
//! mode's settings from the environment, refuses every invalid combination with exit 64
//! naming the key, and never prints the Redis secrets; `redis.username` logs in as that
//! ACL user.

mod common;

use common::*;

/// `roomcast config --check` of an empty file plus `env`.
async fn check(env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let file = std::env::temp_dir().join(format!(
        "roomcast-modes-{}-{:x}.toml",
        std::process::id(),
        rand::random::<u64>()
    ));
    std::fs::write(&file, "").expect("write an empty config file");
    let path = file.to_string_lossy().into_owned();
    let out = run_binary(&["config", "--check", &path], env, Duration::from_secs(30)).await;
    let _ = std::fs::remove_file(&file);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Cluster and sentinel settings given as environment variables (lists comma-separated)
/// pass `config --check` and show up in `roomcast config`.
#[tokio::test(flavor = "multi_thread")]
async fn each_mode_is_accepted_from_the_environment() {
    for env in [
        vec![
            ("ROOMCAST_REDIS__MODE", "cluster"),
            (
                "ROOMCAST_REDIS__NODES",
                "10.0.0.1:6379,redis-1.redis:6380,[::1]:6381",
            ),
            ("ROOMCAST_REDIS__PASSWORD", "s3cret-data"),
            ("ROOMCAST_REDIS__USERNAME", "gateway"),
            ("ROOMCAST_REDIS__TLS", "true"),
            ("ROOMCAST_REDIS__REPLICA_ACKS", "1"),
        ],
        vec![
            ("ROOMCAST_REDIS__MODE", "sentinel"),
            ("ROOMCAST_REDIS__SENTINELS", "s-0:26379,s-1:26379"),
            ("ROOMCAST_REDIS__SENTINEL_MASTER", "mymaster"),
            ("ROOMCAST_REDIS__SENTINEL_PASSWORD", "s3cret-sentinel"),
        ],
        vec![("ROOMCAST_REDIS__URL", "redis://127.0.0.1:6379")],
    ] {
        let (code, _, stderr) = check(&env).await;
        assert_eq!(code, Some(0), "{env:?} refused: {stderr}");
    }

    let out = run_binary(
        &["config"],
        &[
            ("ROOMCAST_REDIS__MODE", "cluster"),
            ("ROOMCAST_REDIS__NODES", "10.0.0.1:6379,10.0.0.2:6379"),
            ("ROOMCAST_REDIS__PASSWORD", "s3cret-data"),
        ],
        Duration::from_secs(30),
    )
    .await;
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains("mode = \"cluster\""), "{shown}");
    assert!(
        shown.contains("\"10.0.0.1:6379\"") && shown.contains("\"10.0.0.2:6379\""),
        "both seeds listed: {shown}"
    );
    assert!(!shown.contains("s3cret"), "a secret was printed: {shown}");

    let out = run_binary(
        &["config"],
        &[
            ("ROOMCAST_REDIS__MODE", "sentinel"),
            ("ROOMCAST_REDIS__SENTINELS", "s-0:26379"),
            ("ROOMCAST_REDIS__SENTINEL_MASTER", "mymaster"),
            ("ROOMCAST_REDIS__SENTINEL_PASSWORD", "s3cret-sentinel"),
        ],
        Duration::from_secs(30),
    )
    .await;
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains("sentinel_master = \"mymaster\""), "{shown}");
    assert!(!shown.contains("s3cret"), "a secret was printed: {shown}");
}

/// Every invalid combination exits 64 and names the key at fault.
#[tokio::test(flavor = "multi_thread")]
async fn invalid_combinations_exit_64_naming_the_key() {
    let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (vec![("ROOMCAST_REDIS__MODE", "sharded")], "redis.mode"),
        (
            vec![
                ("ROOMCAST_REDIS__MODE", "cluster"),
                ("ROOMCAST_REDIS__URL", "redis://127.0.0.1:6379"),
                ("ROOMCAST_REDIS__NODES", "127.0.0.1:7000"),
            ],
            "redis.url",
        ),
        (vec![("ROOMCAST_REDIS__MODE", "cluster")], "redis.nodes"),
        (
            vec![
                ("ROOMCAST_REDIS__MODE", "cluster"),
                ("ROOMCAST_REDIS__NODES", "127.0.0.1"),
            ],
            "redis.nodes",
        ),
        (
            vec![
                ("ROOMCAST_REDIS__MODE", "cluster"),
                ("ROOMCAST_REDIS__NODES", "127.0.0.1:99999"),
            ],
            "redis.nodes",
        ),
        (
            vec![
                ("ROOMCAST_REDIS__MODE", "sentinel"),
                ("ROOMCAST_REDIS__SENTINEL_MASTER", "mymaster"),
            ],
            "redis.sentinels",
        ),
        (
            vec![
                ("ROOMCAST_REDIS__MODE", "sentinel"),
                ("ROOMCAST_REDIS__SENTINELS", "127.0.0.1:26379"),
            ],
            "redis.sentinel_master",
        ),
        (
            vec![
                ("ROOMCAST_REDIS__MODE", "sentinel"),
                ("ROOMCAST_REDIS__SENTINELS", "127.0.0.1:26379"),
                ("ROOMCAST_REDIS__SENTINEL_MASTER", "mymaster"),
                ("ROOMCAST_REDIS__URL", "redis://127.0.0.1:6379"),
            ],
            "redis.url",
        ),
        (
            vec![("ROOMCAST_REDIS__NODES", "127.0.0.1:7000")],
            "redis.nodes",
        ),
        (
            vec![("ROOMCAST_REDIS__SENTINELS", "127.0.0.1:26379")],
            "redis.sentinels",
        ),
        (
            vec![
                ("ROOMCAST_REDIS__URL", "redis://127.0.0.1:6379"),
                ("ROOMCAST_REDIS__TLS_CA_FILE", "/etc/hostname"),
            ],
            "redis.tls_ca_file",
        ),
        (
            vec![
                ("ROOMCAST_REDIS__URL", "redis://127.0.0.1:6379"),
                ("ROOMCAST_REDIS__TLS", "true"),
                ("ROOMCAST_REDIS__TLS_CA_FILE", "/nonexistent/ca.pem"),
            ],
            "redis.tls_ca_file",
        ),
        (
            vec![
                ("ROOMCAST_REDIS__URL", "redis://127.0.0.1:6379"),
                ("ROOMCAST_REDIS__TLS", "true"),
                ("ROOMCAST_REDIS__TLS_CA_FILE", "/etc/hostname"),
            ],
            "redis.tls_ca_file",
        ),
    ];
    for (env, key) in cases {
        let (code, _, stderr) = check(&env).await;
        assert_eq!(code, Some(64), "{env:?} was accepted: {stderr}");
        assert!(
            stderr.contains(key),
            "{env:?}: the error does not name {key}: {stderr}"
        );
    }
}

/// With `redis.username` + `redis.password` the gateway logs in as that ACL user (the
/// default user has no password, so the password alone would be refused): it becomes ready
/// and carries messages; with a wrong password it never becomes ready.
#[tokio::test(flavor = "multi_thread")]
async fn username_and_password_log_in_as_the_acl_user() {
    let redis = RedisServer::start().await;
    let reply = redis
        .redis_cmd(&[
            "ACL",
            "SETUSER",
            "gateway",
            "on",
            ">s3cret-acl",
            "~*",
            "&*",
            "+@all",
        ])
        .await;
    assert_eq!(reply, "OK");

    let mut nodes = Vec::new();
    for i in 0..2 {
        let mut cfg = node_config(Some(&redis), &format!("acl-{i}"));
        cfg.redis.username = Some("gateway".into());
        cfg.redis.password = Some("s3cret-acl".into());
        nodes.push(Node::start(cfg).await);
    }
    let mut a = nodes[0].client().await;
    let mut b = nodes[1].client().await;
    a.join("acl", "alice").await;
    b.join("acl", "bob").await;
    a.send("acl", "as gateway").await;
    assert_eq!(b.next_message().await["text"], "as gateway");
    let clients = redis.redis_cmd(&["CLIENT", "LIST"]).await;
    assert!(
        clients.lines().any(|l| l.contains("user=gateway")),
        "no connection as user gateway: {clients}"
    );

    let mut cfg = node_config(Some(&redis), "acl-wrong");
    cfg.redis.username = Some("gateway".into());
    cfg.redis.password = Some("wrong".into());
    let node = Node::start_unready(cfg).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (status, body) = http_get(&format!("{}/readyz", node.admin_url))
        .await
        .expect("readyz");
    assert_eq!(status, 503, "ready with a wrong password: {body}");
}
