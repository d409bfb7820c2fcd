//! Per-connection rate limiting: a token bucket for frames and the count of refusals
//! that ends a flooding connection. Measured on tokio's monotonic clock.

use std::time::Duration;

use tokio::time::Instant;

/// Window in which `rate_limited` refusals are counted towards a close.
pub(super) const STRIKE_WINDOW: Duration = Duration::from_secs(10);

/// `rate` frames per second, at most `burst` at once.
pub(crate) struct TokenBucket {
    tokens: f64,
    rate: f64,
    burst: f64,
    last: Instant,
}

impl TokenBucket {
    pub(crate) fn new(rate: u32, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        TokenBucket {
            tokens: burst,
            rate: f64::from(rate),
            burst,
            last: Instant::now(),
        }
    }

    /// Takes one token if there is one.
    pub(crate) fn take(&mut self) -> bool {
        let now = Instant::now();
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Counts rate-limit refusals within [`STRIKE_WINDOW`].
#[derive(Default)]
pub(super) struct Strikes {
    since: Option<Instant>,
    count: u32,
}

impl Strikes {
    /// Counts one refusal; returns the count in the current window.
    pub(super) fn add(&mut self) -> u32 {
        let now = Instant::now();
        match self.since {
            Some(start) if now.duration_since(start) <= STRIKE_WINDOW => self.count += 1,
            _ => {
                self.since = Some(now);
                self.count = 1;
            }
        }
        self.count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn bucket_allows_a_burst_then_the_rate() {
        let mut bucket = TokenBucket::new(2, 3);
        assert!((0..3).all(|_| bucket.take()));
        assert!(!bucket.take());
        tokio::time::advance(Duration::from_millis(500)).await;
        assert!(bucket.take(), "one token per 500 ms");
        assert!(!bucket.take());
    }

    #[tokio::test(start_paused = true)]
    async fn strikes_count_within_the_window_only() {
        let mut strikes = Strikes::default();
        assert_eq!((strikes.add(), strikes.add()), (1, 2));
        tokio::time::advance(STRIKE_WINDOW + Duration::from_millis(1)).await;
        assert_eq!(strikes.add(), 1);
    }
}
