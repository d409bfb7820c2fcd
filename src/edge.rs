//! The connection edge: what a WebSocket upgrade must pass before it becomes a session.
//!
//! - **Origin** (`server.allowed_origins`): a browser's `Origin` must be the request's own
//!   host (the default), one of the listed origins, or anything when the list holds `"*"`.
//!   Requests without an `Origin` (non-browser clients) pass.
//! - **Client address** (`server.trusted_proxies`): the socket peer, unless the peer is a
//!   trusted proxy; then the right-most `X-Forwarded-For` address that is not itself a
//!   trusted proxy.
//! - **Per-address limits** (`limits.connections_per_ip`, `limits.connects_per_second_per_ip`):
//!   open connections and a token bucket of new ones per client address, plus the node-wide
//!   `limits.max_connections`. An admitted connection holds a [`Slot`] until its session
//!   ends; dropping it gives both back. Idle addresses are forgotten, so the map stays
//!   bounded by the open connections plus the addresses that connected in the last second
//!   or two.
//!
//! The header timeout and header size bound live in the client listener's accept loop
//! (`server`); this module decides, `server` answers (403, 429, 503) and counts.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use axum::http::{HeaderMap, header};
use dashmap::DashMap;
use ipnet::IpNet;
use tokio::sync::Semaphore;
use tracing::warn;

use crate::clock::monotonic_ms;
use crate::config::Config;

/// How often (at most) the per-address map is swept of idle addresses.
const SWEEP_EVERY_MS: u64 = 1000;

/// Why an upgrade is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// `limits.connections_per_ip` connections from this address are open.
    IpConnections,
    /// More than `limits.connects_per_second_per_ip` new connections from this address;
    /// a token is back after this many whole seconds.
    IpRate { retry_after_secs: u64 },
    /// `limits.max_connections` connections are open on this node.
    Full,
}

/// Which origins may open a WebSocket.
enum Origins {
    /// `"*"` listed.
    Any,
    /// The default: the request's own host only.
    OwnHost,
    /// `scheme://host[:port]`, lower-cased, without a trailing slash.
    Listed(Vec<String>),
}

/// One client address: its open connections and its bucket of new ones.
struct PerIp {
    open: usize,
    tokens: f64,
    last_ms: u64,
    /// Shared by every slot of this address (one allocation per address, not per
    /// connection).
    key: Arc<SlotKey>,
}

impl PerIp {
    /// Refills the bucket up to `rate` (one second's worth) and returns the tokens.
    fn refill(&mut self, now_ms: u64, rate: f64) -> f64 {
        let elapsed = now_ms.saturating_sub(self.last_ms) as f64 / 1000.0;
        self.last_ms = now_ms;
        self.tokens = (self.tokens + elapsed * rate).min(rate);
        self.tokens
    }

    /// Nothing open and a full bucket: the entry says nothing the default would not.
    fn idle(&mut self, now_ms: u64, rate: f64) -> bool {
        self.open == 0 && self.refill(now_ms, rate) >= rate
    }
}

/// The edge checks of one gateway; shared by every request.
pub(crate) struct Edge {
    origins: Origins,
    proxies: Vec<IpNet>,
    per_ip: DashMap<IpAddr, PerIp>,
    connections_per_ip: usize,
    rate: f64,
    /// `limits.max_connections`; a held slot has its permit forgotten and added back on drop.
    slots: Semaphore,
    last_sweep_ms: AtomicU64,
}

impl Edge {
    /// Builds the checks from a validated config; logs a warning when every origin is
    /// allowed.
    pub(crate) fn new(config: &Config) -> Edge {
        let listed = &config.server.allowed_origins;
        let origins = if listed.iter().any(|o| o.trim() == "*") {
            warn!(
                "server.allowed_origins contains \"*\": WebSockets may be opened from any web page"
            );
            Origins::Any
        } else if listed.is_empty() {
            Origins::OwnHost
        } else {
            Origins::Listed(
                listed
                    .iter()
                    .map(|o| o.trim().trim_end_matches('/').to_ascii_lowercase())
                    .collect(),
            )
        };
        let proxies = config
            .server
            .trusted_proxies
            .iter()
            .filter_map(|cidr| parse_net(cidr))
            .collect();
        Edge {
            origins,
            proxies,
            per_ip: DashMap::new(),
            connections_per_ip: config.limits.connections_per_ip,
            rate: f64::from(config.limits.connects_per_second_per_ip),
            slots: Semaphore::new(config.limits.max_connections),
            last_sweep_ms: AtomicU64::new(monotonic_ms()),
        }
    }

    /// Whether the request's `Origin` (if any) may open a WebSocket.
    pub(crate) fn origin_allowed(&self, headers: &HeaderMap) -> bool {
        let mut values = headers.get_all(header::ORIGIN).iter();
        let Some(origin) = values.next() else {
            return true;
        };
        if values.next().is_some() {
            return false;
        }
        let Ok(origin) = origin.to_str() else {
            return false;
        };
        match &self.origins {
            Origins::Any => true,
            Origins::Listed(list) => {
                let origin = origin.trim().to_ascii_lowercase();
                list.contains(&origin)
            }
            Origins::OwnHost => {
                let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
                    return false;
                };
                same_host(origin.trim(), host.trim())
            }
        }
    }

    /// The client's address: `peer`, or what a trusted proxy forwarded (port 0: the
    /// client's port is not forwarded).
    pub(crate) fn client_addr(&self, peer: SocketAddr, headers: &HeaderMap) -> SocketAddr {
        let peer_ip = peer.ip().to_canonical();
        if !self.trusted(peer_ip) {
            return SocketAddr::new(peer_ip, peer.port());
        }
        // Right to left over every X-Forwarded-For header, in order.
        let mut client = peer_ip;
        let hops: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .collect();
        for hop in hops.iter().rev() {
            let Some(ip) = parse_hop(hop) else {
                // Garbage: believe no further; the last trusted hop is the client.
                break;
            };
            client = ip;
            if !self.trusted(ip) {
                break;
            }
        }
        if client == peer_ip {
            SocketAddr::new(peer_ip, peer.port())
        } else {
            SocketAddr::new(client, 0)
        }
    }

    fn trusted(&self, ip: IpAddr) -> bool {
        self.proxies.iter().any(|net| net.contains(&ip))
    }

    /// Admits one more connection from `ip`, or says why not. The returned slot holds the
    /// connection's place in the per-address and node-wide counts until it is dropped.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, Refusal> {
        let now = monotonic_ms();
        self.maybe_sweep(now);
        {
            let mut entry = self.per_ip.entry(ip).or_insert_with(|| PerIp {
                open: 0,
                tokens: self.rate,
                last_ms: now,
                key: Arc::new(SlotKey {
                    ip,
                    edge: Arc::downgrade(self),
                }),
            });
            if entry.open >= self.connections_per_ip {
                return Err(Refusal::IpConnections);
            }
            let tokens = entry.refill(now, self.rate);
            if tokens < 1.0 {
                let secs = ((1.0 - tokens) / self.rate).ceil().max(1.0);
                return Err(Refusal::IpRate {
                    retry_after_secs: secs as u64,
                });
            }
            let Ok(permit) = self.slots.try_acquire() else {
                return Err(Refusal::Full);
            };
            permit.forget();
            entry.tokens -= 1.0;
            entry.open += 1;
            Ok(Slot(entry.key.clone()))
        }
    }

    fn release(&self, ip: IpAddr) {
        self.slots.add_permits(1);
        let now = monotonic_ms();
        let rate = self.rate;
        self.per_ip.remove_if_mut(&ip, |_, entry| {
            entry.open = entry.open.saturating_sub(1);
            entry.idle(now, rate)
        });
    }

    /// At most once per `SWEEP_EVERY_MS`: forgets addresses with nothing open and a full
    /// bucket.
    fn maybe_sweep(&self, now: u64) {
        let last = self.last_sweep_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) < SWEEP_EVERY_MS
            || self
                .last_sweep_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let rate = self.rate;
        self.per_ip.retain(|_, entry| !entry.idle(now, rate));
    }

    /// Client addresses currently remembered (open connections or a bucket refilling).
    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.per_ip.len()
    }
}

/// An admitted connection's place in `limits.connections_per_ip` and
/// `limits.max_connections`; given back when dropped (when the session ends). One pointer:
/// every idle session task carries it.
pub(crate) struct Slot(Arc<SlotKey>);

/// What a slot needs to give its places back: the address and its gateway's edge (weak:
/// the map of addresses holds these, and nothing is left to give back once the gateway
/// is gone).
struct SlotKey {
    ip: IpAddr,
    edge: Weak<Edge>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(edge) = self.0.edge.upgrade() {
            edge.release(self.0.ip);
        }
    }
}

/// A CIDR (`10.0.0.0/8`) or a single address (`10.1.2.3`, taken as /32 or /128).
pub(crate) fn parse_net(s: &str) -> Option<IpNet> {
    let s = s.trim();
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from))
}

/// One `X-Forwarded-For` entry: an address, possibly with a port (`1.2.3.4:5`, `[::1]:5`).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    hop.parse::<IpAddr>()
        .or_else(|_| hop.parse::<SocketAddr>().map(|a| a.ip()))
        .ok()
        .map(|ip| ip.to_canonical())
}

/// Whether `origin` (`scheme://host[:port]`) names the same host and port as the `Host`
/// header, a default port (80, 443) written or not.
fn same_host(origin: &str, host: &str) -> bool {
    let Some((scheme, authority)) = origin.split_once("://") else {
        return false;
    };
    if authority.is_empty() || authority.contains(['/', '@']) {
        return false;
    }
    let default_port = match scheme.to_ascii_lowercase().as_str() {
        "http" | "ws" => ":80",
        "https" | "wss" => ":443",
        _ => return authority.eq_ignore_ascii_case(host),
    };
    let strip = |a: &str| -> String {
        let a = a.to_ascii_lowercase();
        match a.strip_suffix(default_port) {
            Some(bare) => bare.to_string(),
            None => a,
        }
    };
    strip(authority) == strip(host)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn edge(origins: &[&str], proxies: &[&str]) -> Arc<Edge> {
        let mut cfg = Config::default();
        cfg.server.allowed_origins = origins.iter().map(|s| s.to_string()).collect();
        cfg.server.trusted_proxies = proxies.iter().map(|s| s.to_string()).collect();
        cfg.limits.connections_per_ip = 2;
        cfg.limits.connects_per_second_per_ip = 3;
        cfg.limits.max_connections = 4;
        Arc::new(Edge::new(&cfg))
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn own_host_is_the_default_origin() {
        let e = edge(&[], &[]);
        assert!(e.origin_allowed(&headers(&[("host", "chat.example:8080")])));
        assert!(e.origin_allowed(&headers(&[
            ("host", "chat.example:8080"),
            ("origin", "http://Chat.Example:8080")
        ])));
        assert!(e.origin_allowed(&headers(&[
            ("host", "chat.example"),
            ("origin", "https://chat.example:443")
        ])));
        assert!(!e.origin_allowed(&headers(&[
            ("host", "chat.example:8080"),
            ("origin", "http://evil.example")
        ])));
        assert!(!e.origin_allowed(&headers(&[
            ("host", "chat.example:8080"),
            ("origin", "http://chat.example:8081")
        ])));
        assert!(!e.origin_allowed(&headers(&[("host", "chat.example"), ("origin", "null")])));
    }

    #[test]
    fn listed_origins_match_exactly_and_star_allows_all() {
        let e = edge(&["https://Chat.example/"], &[]);
        assert!(e.origin_allowed(&headers(&[
            ("host", "internal:8080"),
            ("origin", "https://chat.EXAMPLE")
        ])));
        assert!(!e.origin_allowed(&headers(&[
            ("host", "internal:8080"),
            ("origin", "http://chat.example")
        ])));
        assert!(!e.origin_allowed(&headers(&[
            ("host", "internal:8080"),
            ("origin", "http://internal:8080")
        ])));
        let any = edge(&["https://a.example", "*"], &[]);
        assert!(any.origin_allowed(&headers(&[
            ("host", "x"),
            ("origin", "http://evil.example")
        ])));
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let e = edge(&[], &["10.0.0.0/8", "192.168.1.1"]);
        let peer: SocketAddr = "10.1.2.3:4000".parse().unwrap();
        let h = headers(&[("x-forwarded-for", "203.0.113.9, 198.51.100.7, 10.9.9.9")]);
        assert_eq!(e.client_addr(peer, &h), "198.51.100.7:0".parse().unwrap());
        let h = headers(&[
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-for", "192.168.1.1:99"),
        ]);
        assert_eq!(e.client_addr(peer, &h), "203.0.113.9:0".parse().unwrap());
        // Only proxies: the left-most one is the client.
        let h = headers(&[("x-forwarded-for", "10.5.5.5, 10.6.6.6")]);
        assert_eq!(e.client_addr(peer, &h), "10.5.5.5:0".parse().unwrap());
        // Garbage stops the walk at the last trusted hop.
        let h = headers(&[("x-forwarded-for", "203.0.113.9, junk")]);
        assert_eq!(e.client_addr(peer, &h), peer);
        // No header: the peer.
        assert_eq!(e.client_addr(peer, &HeaderMap::new()), peer);
        // An untrusted peer's header is ignored; IPv4-mapped peers count as IPv4.
        let untrusted: SocketAddr = "[::ffff:203.0.113.5]:7".parse().unwrap();
        let h = headers(&[("x-forwarded-for", "198.51.100.7")]);
        assert_eq!(
            e.client_addr(untrusted, &h),
            "203.0.113.5:7".parse().unwrap()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn per_address_limits_and_release() {
        let e = edge(&[], &[]);
        let a: IpAddr = "203.0.113.1".parse().unwrap();
        let b: IpAddr = "203.0.113.2".parse().unwrap();
        let s1 = e.admit(a).unwrap();
        let s2 = e.admit(a).unwrap();
        assert_eq!(e.admit(a).err(), Some(Refusal::IpConnections));
        drop(s1);
        // One token left of three.
        let s3 = e.admit(a).unwrap();
        drop(s2);
        assert!(matches!(e.admit(a), Err(Refusal::IpRate { .. })));
        let b1 = e.admit(b).unwrap();
        let b2 = e.admit(b).unwrap();
        // Node-wide: 4 slots, 3 held (s3, b1, b2) -> one more, then full.
        let c = e.admit("203.0.113.3".parse().unwrap()).unwrap();
        assert_eq!(
            e.admit("203.0.113.4".parse().unwrap()).err(),
            Some(Refusal::Full)
        );
        drop((s3, b1, b2, c));
        tokio::time::advance(std::time::Duration::from_millis(1100)).await;
        // The bucket refilled; idle addresses are forgotten.
        let again = e.admit(a).unwrap();
        drop(again);
        tokio::time::advance(std::time::Duration::from_millis(1100)).await;
        e.maybe_sweep(monotonic_ms());
        assert_eq!(e.tracked(), 0);
    }

    #[test]
    fn a_slot_is_one_pointer() {
        // Held by every session task for its whole life (see BENCHMARKS.md on task sizes).
        assert_eq!(std::mem::size_of::<Slot>(), std::mem::size_of::<usize>());
    }

    #[test]
    fn cidrs_and_single_addresses_parse() {
        assert!(parse_net("10.0.0.0/8").is_some());
        assert!(parse_net("fd00::/8").is_some());
        assert!(parse_net("192.168.1.1").is_some());
        assert!(parse_net("10.0.0.0/33").is_none());
        assert!(parse_net("proxy.local").is_none());
    }
}
