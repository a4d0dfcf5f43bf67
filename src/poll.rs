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

/// The pacing of one bounded wait: each `next` sleeps (20 ms at first,
/// backing off to `max_pause`) and fails once the deadline has passed or
/// cancellation was requested. The loop around it keeps its own state and
/// borrows, so every wait in drctl, simple or not, goes through here.
pub struct Poll {
    deadline: Instant,
    pause: Duration,
    max_pause: Duration,
    cancellable: bool,
}

impl Poll {
    pub fn new(timeout: Duration) -> Poll {
        Poll::paced(timeout, Duration::from_millis(500))
    }

    /// Backing off to `max_pause` (at least 20 ms) between tries.
    pub fn paced(timeout: Duration, max_pause: Duration) -> Poll {
        Poll {
            deadline: Instant::now() + timeout,
            pause: Duration::from_millis(20).min(max_pause),
            max_pause: max_pause.max(Duration::from_millis(20)),
            cancellable: true,
        }
    }

    /// A fixed `pause` between tries (remote APIs polled at their pace).
    pub fn every(timeout: Duration, pause: Duration) -> Poll {
        Poll {
            pause,
            ..Poll::paced(timeout, pause)
        }
    }

    /// Cleanup waits run to their deadline even after a cancel request.
    pub fn through_cancel(self) -> Poll {
        Poll {
            cancellable: false,
            ..self
        }
    }

    fn check(&mut self) -> Result<Duration, Gave> {
        if self.cancellable && crate::cancel::requested() {
            return Err(Gave::Cancelled);
        }
        let now = Instant::now();
        if now >= self.deadline {
            return Err(Gave::Up);
        }
        let pause = self.pause.min(self.deadline - now);
        self.pause = (self.pause * 2).min(self.max_pause);
        Ok(pause)
    }

    /// Wait before the next try.
    pub async fn next(&mut self) -> Result<(), Gave> {
        tokio::time::sleep(self.check()?).await;
        Ok(())
    }

    /// `next` for code outside the runtime (Drop, blocking threads).
    pub fn next_blocking(&mut self) -> Result<(), Gave> {
        std::thread::sleep(self.check()?);
        Ok(())
    }
}

/// Poll `cond` until it is true, `timeout` passes, or cancellation is
/// requested.
pub async fn until<F, Fut>(timeout: Duration, mut cond: F) -> Result<(), Gave>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let mut poll = Poll::new(timeout);
    loop {
        if cond().await {
            return Ok(());
        }
        poll.next().await?;
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

    #[test]
    fn pauses_back_off_to_their_bound_and_never_pass_the_deadline() {
        let mut p = Poll::paced(Duration::from_secs(60), Duration::from_millis(100));
        let pauses: Vec<u128> = (0..5).map(|_| p.check().unwrap().as_millis()).collect();
        assert_eq!(pauses, [20, 40, 80, 100, 100]);
        let mut p = Poll::every(Duration::from_secs(60), Duration::from_secs(15));
        assert_eq!(p.check().unwrap(), Duration::from_secs(15));
        assert_eq!(p.check().unwrap(), Duration::from_secs(15));
        let mut p = Poll::new(Duration::from_millis(30));
        assert!(p.check().unwrap() <= Duration::from_millis(30));
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(p.next_blocking(), Err(Gave::Up));
    }
}
