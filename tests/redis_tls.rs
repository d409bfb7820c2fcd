//! TLS to Redis (`redis.tls`, `redis.tls_ca_file`; issue 12): a real `redis-server` that
//! speaks only TLS, with a throwaway CA. The gateway trusts it through the CA file and
//! chats; without the CA (the platform's roots do not know it) it never becomes ready.

mod common;

use std::process::Stdio;

use common::*;
use tokio::process::{Child, Command};

/// A throwaway CA and a server certificate for 127.0.0.1, written as PEM files.
struct Certs {
    dir: std::path::PathBuf,
}

impl Certs {
    fn new() -> Certs {
        let dir = std::env::temp_dir().join(format!(
            "roomcast-redis-tls-{}-{:x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir).expect("cert dir");
        let ca_key = rcgen::KeyPair::generate().expect("CA key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "roomcast test CA");
        let ca = ca_params.self_signed(&ca_key).expect("CA certificate");
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = rcgen::KeyPair::generate().expect("server key");
        let params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
                .expect("server params");
        let cert = params.signed_by(&key, &issuer).expect("server certificate");
        std::fs::write(dir.join("ca.crt"), ca.pem()).expect("write ca");
        std::fs::write(dir.join("server.crt"), cert.pem()).expect("write cert");
        std::fs::write(dir.join("server.key"), key.serialize_pem()).expect("write key");
        Certs { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).to_string_lossy().into_owned()
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `redis-server` with TLS only (no plain port) on a free loopback port; killed on drop.
struct TlsRedis {
    port: u16,
    child: Child,
}

impl TlsRedis {
    async fn start(certs: &Certs) -> TlsRedis {
        let port = free_port();
        let child = Command::new("redis-server")
            .args([
                "--port",
                "0",
                "--tls-port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--tls-cert-file",
                &certs.path("server.crt"),
                "--tls-key-file",
                &certs.path("server.key"),
                "--tls-ca-cert-file",
                &certs.path("ca.crt"),
                "--tls-auth-clients",
                "no",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start redis-server (is it installed with TLS support?)");
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server with TLS did not listen on {port}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        TlsRedis { port, child }
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// `redis.tls = true` with `redis.tls_ca_file`: the gateway connects over TLS, becomes
/// ready and carries a message between two clients.
#[tokio::test(flavor = "multi_thread")]
async fn gateway_talks_tls_to_redis_with_the_configured_ca() {
    let certs = Certs::new();
    let redis = TlsRedis::start(&certs).await;
    let mut nodes = Vec::new();
    for i in 0..2 {
        let mut cfg = node_config(None, &format!("tls-{i}"));
        cfg.redis.url = Some(format!("redis://127.0.0.1:{}", redis.port));
        cfg.redis.tls = true;
        cfg.redis.tls_ca_file = Some(certs.path("ca.crt").into());
        nodes.push(Node::start(cfg).await);
    }
    let mut a = nodes[0].client().await;
    let mut b = nodes[1].client().await;
    a.join("secure", "alice").await;
    b.join("secure", "bob").await;
    a.send("secure", "over tls").await;
    let m = b.next_message().await;
    assert_eq!(m["text"], "over tls", "{m}");
}

/// Without the CA file the server's certificate is not trusted: the bus never connects and
/// `/readyz` stays 503.
#[tokio::test(flavor = "multi_thread")]
async fn gateway_refuses_a_redis_certificate_it_cannot_verify() {
    let certs = Certs::new();
    let redis = TlsRedis::start(&certs).await;
    let mut cfg = node_config(None, "tls-untrusted");
    cfg.redis.url = Some(format!("rediss://127.0.0.1:{}", redis.port));
    let node = Node::start_unready(cfg).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (status, body) = http_get(&format!("{}/readyz", node.admin_url))
        .await
        .expect("readyz");
    assert_eq!(status, 503, "ready with an untrusted certificate: {body}");
}
