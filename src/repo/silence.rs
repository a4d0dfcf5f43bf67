//! A bound on how long a repository may leave drctl waiting.
//!
//! Each S3 request is bounded (connect, read, a stalled body), and the SDK
//! retries it; but the retries and the requests after them add up, and a
//! silent endpoint held commands for many minutes. So each repository
//! (by URL, shared by every client drctl opens on it) keeps one clock: it
//! starts when a request goes out with none pending and restarts with
//! every answer. Once it passes the bound with a request still waiting,
//! the repository is given up for one more bound (the rest of the
//! command): the next attempt of any request fails at once, naming the
//! silence. A primary
//! that goes silent ends the command; a `[[copy]]` is recorded as behind
//! and the job goes on without it.
//!
//! The bound is `request_timeout` × the SDK's attempts; `wal-fetch`, which
//! PostgreSQL's recovery waits on segment by segment, uses one
//! `request_timeout` (plus the attempt in flight: two at most).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_s3::config::interceptors::{
    BeforeSerializationInterceptorContextRef, BeforeTransmitInterceptorContextRef,
    FinalizerInterceptorContextMut,
};
use aws_sdk_s3::config::{ConfigBag, Intercept, RuntimeComponents};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Requests' worth of `request_timeout` a repository may stay silent
/// (0: the SDK's attempts).
static SILENT_TIMEOUTS: AtomicU32 = AtomicU32::new(0);

/// For commands that must answer sooner than the default bound.
pub fn set_silent_timeouts(n: u32) {
    SILENT_TIMEOUTS.store(n, Ordering::SeqCst);
}

/// The bound for a repository with `request_timeout` and `attempts`.
pub fn bound(request_timeout: Duration, attempts: u32) -> Duration {
    let n = match SILENT_TIMEOUTS.load(Ordering::SeqCst) {
        0 => attempts.max(1),
        n => n,
    };
    request_timeout * n
}

#[derive(Debug, Default)]
struct State {
    pending: usize,
    /// The last answer, or when requests began waiting with none pending.
    since: Option<Instant>,
    /// Given up: when, and the silence it was given up after. It stays
    /// given up for one bound (the rest of a command; the daemon's next job
    /// finds it answering again or gives up anew).
    gave_up: Option<(Instant, Duration)>,
}

#[derive(Debug)]
pub struct Silence {
    url: String,
    bound: Duration,
    state: Arc<Mutex<State>>,
}

static CLOCKS: Mutex<Option<HashMap<String, Arc<Mutex<State>>>>> = Mutex::new(None);

impl Silence {
    /// The clock of repository `url` (one per URL in this process).
    pub fn of(url: &str, bound: Duration) -> Silence {
        let state = CLOCKS
            .lock()
            .unwrap()
            .get_or_insert_default()
            .entry(url.to_string())
            .or_default()
            .clone();
        Silence {
            url: url.to_string(),
            bound,
            state,
        }
    }

    fn refused(&self, silent: Duration) -> BoxError {
        format!(
            "repository {} has not answered for {}s (the bound: request_timeout × attempts = {}s); giving it up for this command",
            self.url,
            silent.as_secs(),
            self.bound.as_secs()
        )
        .into()
    }

    /// Whether the repository is (now) given up.
    fn check(&self, s: &mut State) -> Result<(), BoxError> {
        match s.gave_up {
            Some((at, d)) if at.elapsed() < self.bound => return Err(self.refused(d)),
            Some(_) => {
                s.gave_up = None;
                s.since = Some(Instant::now());
            }
            None => {}
        }
        if let (true, Some(since)) = (s.pending > 0, s.since) {
            let silent = since.elapsed();
            if silent > self.bound {
                s.gave_up = Some((Instant::now(), silent));
                tracing::warn!(repository = %self.url, "no answer for {}s: giving up", silent.as_secs());
                return Err(self.refused(silent));
            }
        }
        Ok(())
    }
}

impl Intercept for Silence {
    fn name(&self) -> &'static str {
        "drctl::silence"
    }

    fn read_before_execution(
        &self,
        _: &BeforeSerializationInterceptorContextRef<'_>,
        _: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let mut s = self.state.lock().unwrap();
        self.check(&mut s)?;
        if s.pending == 0 {
            s.since = Some(Instant::now());
        }
        s.pending += 1;
        Ok(())
    }

    fn read_before_attempt(
        &self,
        _: &BeforeTransmitInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        _: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        self.check(&mut self.state.lock().unwrap())
    }

    fn read_after_transmit(
        &self,
        _: &aws_sdk_s3::config::interceptors::BeforeDeserializationInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        _: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let mut s = self.state.lock().unwrap();
        if s.gave_up.is_none() {
            s.since = Some(Instant::now());
        }
        Ok(())
    }

    fn modify_before_completion(
        &self,
        ctx: &mut FinalizerInterceptorContextMut<'_>,
        _: &RuntimeComponents,
        _: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        // Only a timeout is silence: a request that failed otherwise (its
        // source ended, a refused connection) says nothing of the next one.
        let timed_out = matches!(ctx.output_or_error(), Some(Err(e))
            if e.is_timeout_error() || e.as_connector_error().is_some_and(|c| c.is_timeout()));
        match self.ended(&mut self.state.lock().unwrap(), timed_out) {
            // Its error names the silence, as a refused next attempt would.
            Some(silent) => Err(self.refused(silent)),
            None => Ok(()),
        }
    }
}

impl Silence {
    /// A request is over. If it spent its attempts on a repository that
    /// stayed silent for the whole bound, the next request must not start
    /// a fresh clock: a `[[copy]]` whose upload had just timed out cost
    /// the backup's prune another bound (65 s against 35).
    /// Returns the silence it gave the repository up after, if it did.
    fn ended(&self, s: &mut State, timed_out: bool) -> Option<Duration> {
        s.pending = s.pending.saturating_sub(1);
        if let (true, None, Some(since)) = (timed_out, s.gave_up, s.since) {
            let silent = since.elapsed();
            if silent >= self.bound {
                s.gave_up = Some((Instant::now(), silent));
                tracing::warn!(repository = %self.url, "no answer for {}s: giving up", silent.as_secs());
                return Some(silent);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silence_past_the_bound_gives_the_repository_up_until_the_end() {
        let s = Silence::of("s3://test-silence/x", Duration::from_millis(50));
        let mut st = State {
            pending: 1,
            since: Some(Instant::now()),
            gave_up: None,
        };
        assert!(s.check(&mut st).is_ok());
        std::thread::sleep(Duration::from_millis(80));
        let e = s.check(&mut st).unwrap_err().to_string();
        assert!(
            e.contains("has not answered for") && e.contains("s3://test-silence/x"),
            "{e}"
        );
        // An answer later does not bring it back within this command...
        st.since = Some(Instant::now());
        assert!(s.check(&mut st).is_err());
        // ...but a later one (the daemon's next job) starts afresh.
        std::thread::sleep(Duration::from_millis(60));
        assert!(s.check(&mut st).is_ok());
        // Nothing pending: idle time is not silence.
        let mut idle = State {
            pending: 0,
            since: Some(Instant::now() - Duration::from_secs(3600)),
            gave_up: None,
        };
        assert!(s.check(&mut idle).is_ok());
    }

    #[test]
    fn a_request_that_ended_unanswered_past_the_bound_gives_the_repository_up() {
        let s = Silence::of("s3://test-silence/ended", Duration::from_millis(50));
        // Its last attempt timed out just inside the bound, so no attempt
        // found the bound passed; the request ends past it.
        let mut st = State {
            pending: 1,
            since: Some(Instant::now() - Duration::from_millis(60)),
            gave_up: None,
        };
        assert!(s.ended(&mut st, true).is_some());
        assert_eq!(st.pending, 0);
        // The next request (the prune after the upload) is refused at once.
        assert!(s.check(&mut st).is_err());
        // A request that was answered recently ends without giving up.
        let mut answered = State {
            pending: 1,
            since: Some(Instant::now()),
            gave_up: None,
        };
        s.ended(&mut answered, true);
        assert!(answered.gave_up.is_none() && s.check(&mut answered).is_ok());
        // Nor does one that failed otherwise, however long it ran.
        let mut failed = State {
            pending: 1,
            since: Some(Instant::now() - Duration::from_millis(60)),
            gave_up: None,
        };
        s.ended(&mut failed, false);
        assert!(failed.gave_up.is_none());
    }

    #[test]
    fn wal_fetch_bound_is_one_request_timeout() {
        assert_eq!(bound(Duration::from_secs(60), 6), Duration::from_secs(360));
        set_silent_timeouts(1);
        assert_eq!(bound(Duration::from_secs(60), 6), Duration::from_secs(60));
        set_silent_timeouts(0);
    }
}
