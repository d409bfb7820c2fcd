//! Process signals. Kubernetes sends SIGTERM to stop a pod (then SIGKILL after
//! `terminationGracePeriodSeconds`); a developer presses Ctrl-C (SIGINT). The first
//! signal starts the graceful drain; a second one exits at once.

use tokio_util::sync::CancellationToken;

/// Waits for SIGTERM or SIGINT.
pub async fn signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Cancels `token` on the first signal and exits the process (status 130) on the second.
pub fn spawn_handler(token: CancellationToken) {
    tokio::spawn(async move {
        signal().await;
        tracing::info!("signal received; draining (send it again to exit now)");
        token.cancel();
        signal().await;
        tracing::warn!("second signal; exiting now");
        std::process::exit(130);
    });
}
