//! `roomcast token`: the printed token carries the claims asked for, signed HS256 with
//! the configured secret (checked with `jwt-simple`, independent of the gateway's JWT
//! library), and a missing secret exits 64 naming `auth.jwt.secret`.

use std::process::Command;

use jwt_simple::prelude::*;

const SECRET: &str = "a-secret-of-32-bytes-for-hs256!!";

#[derive(Debug, Serialize, Deserialize)]
struct Extra {
    name: String,
    rooms: Option<Vec<String>>,
    publish: Option<Vec<String>>,
}

fn roomcast() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_roomcast"));
    // Only what the test sets: no ROOMCAST_* from the environment running the tests.
    for (key, _) in std::env::vars() {
        if key.starts_with("ROOMCAST_") {
            cmd.env_remove(key);
        }
    }
    cmd
}

#[test]
fn token_prints_a_verifiable_hs256_token() {
    let out = roomcast()
        .env("ROOMCAST_AUTH__JWT__SECRET", SECRET)
        .args([
            "token", "--sub", "u1", "--name", "Alice", "--rooms", "a,team-*", "--ttl", "10m",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap();
    let token = token.trim();
    let claims = HS256Key::from_bytes(SECRET.as_bytes())
        .verify_token::<Extra>(token, None)
        .unwrap();
    assert_eq!(claims.subject.as_deref(), Some("u1"));
    assert_eq!(claims.custom.name, "Alice");
    assert_eq!(
        claims.custom.rooms,
        Some(vec!["a".to_string(), "team-*".to_string()])
    );
    assert_eq!(claims.custom.publish, None);
    let exp = claims.expires_at.unwrap().as_secs();
    let now = Clock::now_since_epoch().as_secs();
    assert!(
        (now + 590..=now + 600).contains(&exp),
        "ttl 10m: {exp} vs {now}"
    );

    let wrong = HS256Key::from_bytes(b"some-other-secret-of-32-bytes!!!");
    assert!(wrong.verify_token::<Extra>(token, None).is_err());
}

#[test]
fn token_from_a_config_file_secret_file() {
    let dir = std::env::temp_dir().join(format!("roomcast-auth-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("secret"), format!("{SECRET}\n")).unwrap();
    let config = dir.join("roomcast.toml");
    std::fs::write(
        &config,
        format!(
            "[auth.jwt]\nsecret_file = {:?}\n",
            dir.join("secret").display().to_string()
        ),
    )
    .unwrap();
    let out = roomcast()
        .arg("--config")
        .arg(&config)
        .args(["token", "--sub", "u2", "--name", "Bob", "--publish", "a"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap();
    let claims = HS256Key::from_bytes(SECRET.as_bytes())
        .verify_token::<Extra>(token.trim(), None)
        .unwrap();
    assert_eq!(claims.custom.publish, Some(vec!["a".to_string()]));
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn token_without_a_secret_exits_64_naming_the_key() {
    let out = roomcast()
        .args(["token", "--sub", "u1", "--name", "Alice"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("auth.jwt.secret"), "{stderr}");
}
