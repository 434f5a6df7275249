//! What every accept loop does when `accept` fails: back off, and log without flooding.
//!
//! `accept` fails with `EMFILE`/`ENFILE` while the process is out of descriptors.
//! The pending connection stays in the backlog, so the socket stays readable and
//! a loop that retries at once spins a core and writes a log line per spin. Each
//! loop instead sleeps [`BACKOFF`] after a failure and logs the first failure of
//! a burst, then at most one summary line per [`LOG_INTERVAL`].

use std::io;
use std::time::Duration;

use tokio::time::Instant;
use tracing::error;

/// How long an accept loop waits after a failed accept before trying again.
pub const BACKOFF: Duration = Duration::from_millis(100);
/// The least time between two log lines about failed accepts on one socket.
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Lets a repeated event be logged once per [`LOG_INTERVAL`], counting the ones not logged.
#[derive(Debug, Default)]
pub struct LogLimit {
    /// When the last line was logged.
    logged_at: Option<Instant>,
    /// Events since that line.
    suppressed: u64,
}

impl LogLimit {
    /// Records one event: `Some(events suppressed since the last line)` when this one should be logged.
    pub fn due(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self
            .logged_at
            .is_some_and(|at| now.saturating_duration_since(at) < LOG_INTERVAL)
        {
            self.suppressed += 1;
            return None;
        }
        self.logged_at = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// Counts one accept loop's failures, logs them within a [`LogLimit`] and backs off.
#[derive(Debug, Default)]
pub struct AcceptErrors(LogLimit);

impl AcceptErrors {
    /// Records a failure on `socket`, logs it if due, then backs off.
    pub async fn failed(&mut self, socket: &str, err: &io::Error) {
        if let Some(suppressed) = self.0.due() {
            error!(
                listener = %socket,
                error = %err,
                suppressed,
                backoff_ms = BACKOFF.as_millis() as u64,
                "accept failed; backing off"
            );
        }
        tokio::time::sleep(BACKOFF).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_burst_of_failures_logs_once_per_interval_and_backs_off_each_time() {
        let mut errors = AcceptErrors::default();
        let err = io::Error::from_raw_os_error(24); // EMFILE
        let start = Instant::now();
        let mut logged = 0;
        // 30 s of back-to-back failures: 300 attempts, one line per 10 s.
        for _ in 0..300 {
            let before = errors.0.logged_at;
            errors.failed("admin", &err).await;
            if errors.0.logged_at != before {
                logged += 1;
            }
        }
        assert_eq!(start.elapsed(), BACKOFF * 300, "every failure backs off");
        assert_eq!(logged, 3);
        assert_eq!(errors.0.suppressed, 99);
    }
}
