//! `roomcast api` (the real binary) against an in-process gateway with `api.keys`: a
//! published message reaches a member of the room and comes back from `history` (one JSON
//! object per line, oldest first; `--all` follows the cursors to the start), a repeated
//! idempotency key is reported as a duplicate of the same id, and the refusals exit
//! non-zero with a message that says why: a wrong key (401, the key never echoed), the API
//! switched off (404), nothing listening (connection refused).

mod common;

use std::process::Output;

use common::*;

const KEY: &str = "api-cli-test-key-0123456789abcdef";

/// A memory-bus gateway whose server API accepts `KEY`.
async fn gateway() -> Node {
    let mut cfg = node_config(None, "api-cli");
    cfg.api.keys = vec![KEY.to_string()];
    Node::start(cfg).await
}

/// Runs `roomcast api ARGS` with `--url url` and `key` in `ROOMCAST_API_KEY` (none when
/// `None`), and only those `ROOMCAST_*` variables.
async fn api(url: &str, key: Option<&str>, args: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_roomcast"));
    for (name, _) in std::env::vars() {
        if name.starts_with("ROOMCAST_") {
            cmd.env_remove(name);
        }
    }
    if let Some(key) = key {
        cmd.env("ROOMCAST_API_KEY", key);
    }
    cmd.arg("api").args(args).args(["--url", url]);
    tokio::time::timeout(Duration::from_secs(30), cmd.output())
        .await
        .expect("roomcast api did not finish within 30 s")
        .expect("run roomcast api")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[track_caller]
fn assert_ok(out: &Output) {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status,
        stdout(out),
        stderr(out)
    );
}

/// The lines of `roomcast api history`, each a JSON object.
fn messages(out: &Output) -> Vec<Value> {
    assert_ok(out);
    stdout(out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// Publishes `text` into `room`; returns the printed id.
async fn publish(node: &Node, room: &str, text: &str, extra: &[&str]) -> String {
    let mut args = vec!["publish", room, text];
    args.extend_from_slice(extra);
    let out = api(&node.http_url, Some(KEY), &args).await;
    assert_ok(&out);
    let id = stdout(&out).trim().to_string();
    parse_id(&id);
    id
}

#[tokio::test(flavor = "multi_thread")]
async fn published_message_reaches_the_room_and_its_history() {
    let node = gateway().await;
    let mut member = node.client().await;
    member.join("lobby", "alice").await;

    let id = publish(
        &node,
        "lobby",
        "deploy finished",
        &["--from-id", "ops", "--from-name", "Ops Bot"],
    )
    .await;

    let live = member.next_message().await;
    assert_eq!(id_of(&live), id);
    assert_eq!(text_of(&live), "deploy finished");

    let lines = messages(&api(&node.http_url, Some(KEY), &["history", "lobby"]).await);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["id"], id.as_str());
    assert_eq!(lines[0]["text"], "deploy finished");
    assert_eq!(lines[0]["from"]["name"], "Ops Bot");
    assert_eq!(lines[0]["from"]["id"], "ops");
    assert!(lines[0]["ts"].is_u64(), "{}", lines[0]);
}

#[tokio::test(flavor = "multi_thread")]
async fn repeated_idempotency_key_returns_the_first_id_as_a_duplicate() {
    let node = gateway().await;
    let args = ["publish", "lobby", "once", "--idempotency-key", "job-42"];
    let first = api(&node.http_url, Some(KEY), &args).await;
    assert_ok(&first);
    assert!(!stderr(&first).contains("duplicate"), "{}", stderr(&first));
    let again = api(&node.http_url, Some(KEY), &args).await;
    assert_ok(&again);
    assert_eq!(stdout(&again), stdout(&first));
    assert!(stderr(&again).contains("duplicate"), "{}", stderr(&again));

    let lines = messages(&api(&node.http_url, Some(KEY), &["history", "lobby"]).await);
    assert_eq!(lines.len(), 1, "published once: {lines:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn history_pages_and_all_follows_the_cursors_to_the_start() {
    let node = gateway().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(publish(&node, "logs", &format!("m{i}"), &[]).await);
    }
    let ids_of = |lines: Vec<Value>| -> Vec<String> { lines.iter().map(id_of).collect() };

    let newest = api(
        &node.http_url,
        Some(KEY),
        &["history", "logs", "--limit", "2"],
    )
    .await;
    assert_eq!(ids_of(messages(&newest)), ids[3..]);

    let all = api(
        &node.http_url,
        Some(KEY),
        &["history", "logs", "--limit", "2", "--all"],
    )
    .await;
    assert_eq!(ids_of(messages(&all)), ids, "oldest first, each once");

    let before = api(
        &node.http_url,
        Some(KEY),
        &[
            "history", "logs", "--limit", "2", "--before", &ids[3], "--all",
        ],
    )
    .await;
    assert_eq!(ids_of(messages(&before)), ids[..3]);

    let after = api(
        &node.http_url,
        Some(KEY),
        &[
            "history", "logs", "--limit", "2", "--after", &ids[1], "--all",
        ],
    )
    .await;
    assert_eq!(ids_of(messages(&after)), ids[2..]);
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_key_exits_non_zero_with_401_and_never_echoes_the_key() {
    let node = gateway().await;
    let wrong = "not-the-right-key-fedcba9876543210";
    for args in [&["publish", "lobby", "hi"][..], &["history", "lobby"][..]] {
        let out = api(&node.http_url, Some(wrong), args).await;
        assert!(!out.status.success(), "{args:?} succeeded with a wrong key");
        let err = stderr(&out);
        assert!(
            err.contains("401") && err.to_lowercase().contains("unauthorized"),
            "{err}"
        );
        assert!(
            !err.contains(wrong) && !stdout(&out).contains(wrong),
            "the key was echoed: {err}"
        );
    }
    let history = api(&node.http_url, Some(KEY), &["history", "lobby"]).await;
    assert!(messages(&history).is_empty(), "nothing was published");
}

#[tokio::test(flavor = "multi_thread")]
async fn key_from_a_mounted_keys_file_is_accepted() {
    let node = gateway().await;
    let dir = std::env::temp_dir().join(format!("roomcast-api-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("keys");
    // The format of api.keys_file (the chart's mounted Secret): the first real line counts.
    std::fs::write(
        &file,
        format!("# server API keys\n\n{KEY}\nsome-older-key-0123456789\n"),
    )
    .unwrap();
    let file = file.to_str().unwrap();
    let id = {
        let out = api(
            &node.http_url,
            None,
            &["publish", "lobby", "from a file", "--key-file", file],
        )
        .await;
        assert_ok(&out);
        stdout(&out).trim().to_string()
    };
    let lines = messages(
        &api(
            &node.http_url,
            None,
            &["history", "lobby", "--key-file", file],
        )
        .await,
    );
    assert_eq!(lines.iter().map(id_of).collect::<Vec<_>>(), [id]);
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_key_is_refused_before_any_request() {
    let out = api("http://127.0.0.1:1", None, &["history", "lobby"]).await;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("ROOMCAST_API_KEY"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn api_switched_off_is_reported_as_404() {
    let node = Node::start(node_config(None, "api-off")).await;
    let out = api(&node.http_url, Some(KEY), &["publish", "lobby", "hi"]).await;
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("404") && err.contains("api.keys"), "{err}");
    assert!(!err.contains(KEY), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn nothing_listening_is_reported_as_connection_refused() {
    let url = format!("http://127.0.0.1:{}", free_port());
    let out = api(&url, Some(KEY), &["history", "lobby"]).await;
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("cannot connect") && err.to_lowercase().contains("refused"),
        "{err}"
    );
    assert!(!err.contains(KEY), "{err}");
}
