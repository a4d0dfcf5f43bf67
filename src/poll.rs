//! One bounded wait: poll a condition until it holds, the deadline passes
//! or the command is cancelled. Every wait in drctl has a bound.

use std::future::Future;
use std::time::{Duration, Instant};

/// Why a wait ended without the condition holding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Gave {
    #[error("timed out")]
    Up,
    #[error("cancelled")]
    Cancelled,
}

/// Poll `cond` (every 50 ms at first, backing off to 500 ms) until it is
/// true, `timeout` passes, or cancellation is requested.
pub async fn until<F, Fut>(timeout: Duration, mut cond: F) -> Result<(), Gave>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(50);
    loop {
        if cond().await {
            return Ok(());
        }
        if crate::cancel::requested() {
            return Err(Gave::Cancelled);
        }
        if Instant::now() >= deadline {
            return Err(Gave::Up);
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(500));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn holds_times_out_and_counts() {
        let mut n = 0;
        assert_eq!(
            until(Duration::from_secs(5), || {
                n += 1;
                std::future::ready(n >= 3)
            })
            .await,
            Ok(())
        );
        assert_eq!(n, 3);
        let t0 = Instant::now();
        assert_eq!(
            until(Duration::from_millis(200), || std::future::ready(false)).await,
            Err(Gave::Up)
        );
        assert!(t0.elapsed() >= Duration::from_millis(200));
        assert!(t0.elapsed() < Duration::from_secs(2));
    }
}
