//! A minimal HTTP/1.1 GET over a raw loopback TCP connection (for `/healthz`, `/readyz`,
//! `/metrics`), and readiness / metric helpers built on it.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `GET url` (`http://HOST:PORT/PATH`) and returns the status and the body.
pub async fn http_get(url: &str) -> std::io::Result<(u16, String)> {
    let rest = url
        .strip_prefix("http://")
        .unwrap_or_else(|| panic!("http_get needs an http:// url, got {url}"));
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let request = async {
        let mut stream = TcpStream::connect(host).await?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        stream.write_all(req.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        Ok::<_, std::io::Error>(raw)
    };
    let raw = tokio::time::timeout(Duration::from_secs(10), request)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "http_get timed out"))??;
    parse_response(&raw)
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "bad HTTP response"))
}

fn parse_response(raw: &[u8]) -> Option<(u16, String)> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..split]).ok()?;
    let body = &raw[split + 4..];
    let status: u16 = head.split_whitespace().nth(1)?.parse().ok()?;
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_vec()
    };
    Some((status, String::from_utf8_lossy(&body).into_owned()))
}

fn dechunk(mut body: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = body.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&body[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(body.get(..size)?);
        body = body.get(size + 2..)?;
    }
}

/// Polls `GET {base_url}/readyz` until it answers 200 (panics after `timeout`).
pub async fn wait_ready(base_url: &str, timeout: Duration) {
    let url = format!("{base_url}/readyz");
    let deadline = Instant::now() + timeout;
    loop {
        let last = http_get(&url).await;
        if matches!(last, Ok((200, _))) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{url} not ready within {timeout:?}; last answer: {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The value of one Prometheus sample from `GET {admin_url}/metrics`: the metric `name` with
/// every label in `labels` (other labels allowed). Absent samples read as 0.
pub async fn metric_value(admin_url: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    sample_value(&metrics_text(admin_url).await, name, labels).unwrap_or(0.0)
}

/// `GET {admin_url}/metrics`, which must answer 200; the body.
pub async fn metrics_text(admin_url: &str) -> String {
    let (status, body) = http_get(&format!("{admin_url}/metrics"))
        .await
        .expect("GET /metrics");
    assert_eq!(
        status, 200,
        "GET {admin_url}/metrics answered {status}: {body}"
    );
    body
}

/// Finds a sample in a Prometheus text exposition (see [`metric_value`]).
pub fn sample_value(exposition: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, label_text) = match series.find('{') {
                Some(i) => (&series[..i], &series[i..]),
                None => (series, ""),
            };
            if metric != name {
                return None;
            }
            let all = labels
                .iter()
                .all(|(k, v)| label_text.contains(&format!("{k}=\"{v}\"")));
            if all { value.trim().parse().ok() } else { None }
        })
}

/// Polls `probe` every 50 ms until it answers `Ok(value)`; after `timeout`, panics with
/// the last `Err` (which should describe what was seen and what was expected).
pub async fn eventually<T, F, Fut>(timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = std::time::Instant::now() + timeout;
    loop {
        match probe().await {
            Ok(value) => return value,
            Err(last) => assert!(
                std::time::Instant::now() < deadline,
                "{last} (waited {timeout:?})"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
