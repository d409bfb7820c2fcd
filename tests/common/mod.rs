//! Shared harness of the integration tests: real parts only.
//!
//! - [`RedisServer`]: a `redis-server` child per test on a free loopback port (stop/restart it
//!   to inject faults; `redis_cmd`/`numsub` to look inside).
//! - [`RedisCluster`] (masters with replicas, `cluster-enabled` processes: kill a slot's
//!   master, move a slot) and [`RedisSentinel`] (master, replica, three sentinels: kill the
//!   master): real topologies for the cluster and sentinel buses (issue 12).
//! - `backend`: a local HTTP server playing the product's backend for the publish hook.
//! - [`Node`]: `roomcast::run` in-process on port 0; [`ProcessNode`]: the real binary.
//! - [`Cluster`]: one bus (memory or Redis) and its replicas, so a scenario runs on both.
//! - [`Client`]: a tokio-tungstenite WebSocket client speaking protocol v1; [`RawWs`]: a
//!   hand-made upgrade that never answers pings.
//! - [`http_get`], [`wait_ready`], [`metric_value`]: the HTTP side (`/readyz`, `/metrics`).
//!
//! Use it with `#[macro_use] mod common; use common::*;`.
#![allow(dead_code, unused_imports, unused_macros)]

pub mod backend;
mod client;
mod http;
mod node;
mod redis;
pub mod redis_cluster;

pub use client::*;
pub use http::*;
pub use node::*;
pub use redis::*;
pub use redis_cluster::*;

pub use serde_json::{Value, json};
pub use std::time::Duration;

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local addr").port()
}

/// Defines `mod $scenario { on_memory_bus, on_redis_bus, on_cluster_bus }`: three tests
/// running the async function `$scenario(&Cluster)` against a memory-bus node, `$replicas`
/// replicas on one Redis, and `$replicas` replicas on a Redis Cluster (sharded pub/sub),
/// each configured with `node_config` and then `$tweak`.
macro_rules! on_both_buses {
    ($scenario:ident, $replicas:expr) => {
        on_both_buses!($scenario, $replicas, common::defaults);
    };
    ($scenario:ident, $replicas:expr, $tweak:expr) => {
        mod $scenario {
            use super::*;

            #[tokio::test(flavor = "multi_thread")]
            async fn on_memory_bus() {
                let cluster = Cluster::start(Bus::Memory, 1, $tweak).await;
                super::$scenario(&cluster).await;
            }

            #[tokio::test(flavor = "multi_thread")]
            async fn on_redis_bus() {
                let cluster = Cluster::start(Bus::Redis, $replicas, $tweak).await;
                super::$scenario(&cluster).await;
            }

            #[tokio::test(flavor = "multi_thread")]
            async fn on_cluster_bus() {
                let cluster = Cluster::start(Bus::RedisCluster, $replicas, $tweak).await;
                super::$scenario(&cluster).await;
            }
        }
    };
}
