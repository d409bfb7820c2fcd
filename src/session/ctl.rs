//! The control side of one session: who else (rooms, drain, heartbeat) can close it and
//! why, and when the client was last heard from (on the monotonic clock).
//!
//! The close signal is a flag and one waker per waiting task (read loop, writer) rather
//! than a `CancellationToken`: the writer checks it on every wake-up, once per delivered
//! frame, and a token's check takes a mutex (two, with its `Notified`) each time.

use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::task::AtomicWaker;

use crate::clock;
use crate::protocol::DisconnectReason;

#[derive(Debug)]
pub(crate) struct SessionCtl {
    reason: OnceLock<DisconnectReason>,
    closed: AtomicBool,
    reader: AtomicWaker,
    writer: AtomicWaker,
    /// [`clock::monotonic_ms`] of the last frame (or pong) received from the client.
    last_seen_ms: AtomicU64,
    /// jwt mode: [`clock::monotonic_ms`] at which the session closes (no token yet: the
    /// end of `auth.timeout`; authenticated: the token's `exp`); 0 = never.
    deadline_ms: AtomicU64,
    /// jwt mode: when to send `expiring` (0 = not due, or sent).
    notice_ms: AtomicU64,
    /// jwt mode: a valid token was presented (the deadline is its `exp`).
    authenticated: AtomicBool,
}

impl Default for SessionCtl {
    fn default() -> Self {
        SessionCtl {
            reason: OnceLock::new(),
            closed: AtomicBool::new(false),
            reader: AtomicWaker::new(),
            writer: AtomicWaker::new(),
            last_seen_ms: AtomicU64::new(clock::monotonic_ms()),
            deadline_ms: AtomicU64::new(0),
            notice_ms: AtomicU64::new(0),
            authenticated: AtomicBool::new(false),
        }
    }
}

/// Resolves once the session is closed. Each of the session's two tasks has its own
/// waker slot, so each must wait only through its own (`reader_closed`, `writer_closed`).
#[derive(Debug)]
pub(super) struct Closed<'a> {
    flag: &'a AtomicBool,
    waker: &'a AtomicWaker,
}

impl Future for Closed<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.flag.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        self.waker.register(cx.waker());
        // Checked again after registering: a close in between has woken the old waker.
        if self.flag.load(Ordering::Acquire) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

impl SessionCtl {
    /// Records that the client was heard from.
    pub(super) fn touch(&self) {
        self.last_seen_ms
            .store(clock::monotonic_ms(), Ordering::Relaxed);
    }

    /// How long the client has been silent, as of `now_ms` ([`clock::monotonic_ms`]).
    pub(super) fn silent_for(&self, now_ms: u64) -> Duration {
        Duration::from_millis(now_ms.saturating_sub(self.last_seen_ms.load(Ordering::Relaxed)))
    }

    /// Sets when the session must have authenticated (jwt mode).
    pub(super) fn set_auth_deadline(&self, deadline_ms: u64) {
        self.deadline_ms.store(deadline_ms, Ordering::Relaxed);
    }

    /// Records a valid token: the session closes at `expires_ms` and is told `expiring` at
    /// `notice_ms` (all [`clock::monotonic_ms`]).
    pub(super) fn set_token_expiry(&self, expires_ms: u64, notice_ms: u64) {
        self.authenticated.store(true, Ordering::Release);
        self.notice_ms.store(notice_ms.max(1), Ordering::Relaxed);
        self.deadline_ms.store(expires_ms.max(1), Ordering::Relaxed);
    }

    pub(super) fn is_authenticated(&self) -> bool {
        self.authenticated.load(Ordering::Acquire)
    }

    /// What is due at `now_ms`: the close (with its reason) or the `expiring` notice
    /// (with the time left); the notice is reported once.
    pub(super) fn due(&self, now_ms: u64) -> Due {
        let deadline = self.deadline_ms.load(Ordering::Relaxed);
        if deadline == 0 {
            return Due::Nothing;
        }
        if now_ms >= deadline {
            return Due::Close(if self.is_authenticated() {
                DisconnectReason::TokenExpired
            } else {
                DisconnectReason::Unauthorized
            });
        }
        let notice = self.notice_ms.load(Ordering::Relaxed);
        if notice != 0
            && now_ms >= notice
            && self
                .notice_ms
                .compare_exchange(notice, 0, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Due::Notice {
                in_ms: deadline - now_ms,
            };
        }
        Due::Nothing
    }

    /// Closes the session; the first reason given wins.
    pub(crate) fn close(&self, reason: DisconnectReason) {
        let _ = self.reason.set(reason);
        self.closed.store(true, Ordering::Release);
        self.reader.wake();
        self.writer.wake();
    }

    /// The read loop's wait for the close.
    pub(super) fn reader_closed(&self) -> Closed<'_> {
        Closed {
            flag: &self.closed,
            waker: &self.reader,
        }
    }

    /// The writer's wait for the close.
    pub(super) fn writer_closed(&self) -> Closed<'_> {
        Closed {
            flag: &self.closed,
            waker: &self.writer,
        }
    }

    pub(crate) fn reason(&self) -> DisconnectReason {
        self.reason
            .get()
            .copied()
            .unwrap_or(DisconnectReason::Client)
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

/// What a session's token deadline asks for now.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Due {
    Nothing,
    Notice { in_ms: u64 },
    Close(DisconnectReason),
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[tokio::test]
    async fn close_wakes_both_waiting_tasks_and_a_later_wait_ends_at_once() {
        let ctl = Arc::new(SessionCtl::default());
        let (c1, c2) = (ctl.clone(), ctl.clone());
        let reader = tokio::spawn(async move { c1.reader_closed().await });
        let writer = tokio::spawn(async move { c2.writer_closed().await });
        tokio::task::yield_now().await;
        assert!(!reader.is_finished() && !writer.is_finished());
        ctl.close(DisconnectReason::Drain);
        tokio::time::timeout(Duration::from_secs(5), async {
            reader.await.expect("reader");
            writer.await.expect("writer");
        })
        .await
        .expect("both tasks saw the close");
        ctl.writer_closed().await;
        assert!(ctl.is_closed());
        assert_eq!(ctl.reason(), DisconnectReason::Drain);
        ctl.close(DisconnectReason::Client);
        assert_eq!(
            ctl.reason(),
            DisconnectReason::Drain,
            "the first reason wins"
        );
    }

    #[test]
    fn deadlines_close_unauthenticated_then_notice_once_then_expire() {
        let ctl = SessionCtl::default();
        assert_eq!(ctl.due(u64::MAX), Due::Nothing, "anonymous: no deadline");
        ctl.set_auth_deadline(1_000);
        assert_eq!(ctl.due(999), Due::Nothing);
        assert_eq!(ctl.due(1_000), Due::Close(DisconnectReason::Unauthorized));
        ctl.set_token_expiry(10_000, 9_000);
        assert_eq!(ctl.due(8_999), Due::Nothing);
        assert_eq!(ctl.due(9_500), Due::Notice { in_ms: 500 });
        assert_eq!(ctl.due(9_600), Due::Nothing, "the notice is sent once");
        assert_eq!(ctl.due(10_000), Due::Close(DisconnectReason::TokenExpired));
        // A refresh moves both again.
        ctl.set_token_expiry(20_000, 19_000);
        assert_eq!(ctl.due(10_000), Due::Nothing);
        assert_eq!(ctl.due(19_000), Due::Notice { in_ms: 1_000 });
    }
}
