//! Webhook notifications (`[notify] webhook_url`): a Slack-compatible JSON
//! body (`text` for Slack, plus `policy`, `event`, `message`, `time` for
//! everything else). A notification never fails the job it reports on: it
//! is retried with backoff under an overall deadline, then logged and
//! dropped, so a dead endpoint cannot stall a backup or the scheduler.

use std::time::Duration;

use jiff::Timestamp;
use serde::Serialize;

use crate::policy::Policy;
use crate::time::parse::rfc3339;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    BackupFailed,
    /// Stopped by a signal (shutdown, an operator): not a failure.
    BackupCancelled,
    BackupSucceeded,
    PruneFailed,
    RpoExceeded,
    DrillFailed,
    ArchiveFailing,
    ArchiveRecovered,
    /// A `[[copy]]` did not receive a backup or WAL the primary holds.
    CopyFailed,
}

impl Event {
    fn title(self) -> &'static str {
        match self {
            Event::BackupFailed => "backup failed",
            Event::BackupCancelled => "backup cancelled",
            Event::BackupSucceeded => "backup succeeded",
            Event::PruneFailed => "prune failed",
            Event::RpoExceeded => "RPO over budget",
            Event::DrillFailed => "restore drill failed",
            Event::ArchiveFailing => "WAL archiving failing",
            Event::ArchiveRecovered => "WAL archiving recovered",
            Event::CopyFailed => "copy failed",
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Body {
    pub text: String,
    pub policy: String,
    pub event: Event,
    pub message: String,
    pub time: String,
}

pub fn body(policy: &str, event: Event, message: &str, at: Timestamp) -> Body {
    Body {
        text: format!("drctl: {policy}: {}: {message}", event.title()),
        policy: policy.to_string(),
        event,
        message: message.to_string(),
        time: rfc3339(at),
    }
}

/// Per attempt, and for all attempts together.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
const DEADLINE: Duration = Duration::from_secs(20);

/// Send `event` if the policy has a webhook (and, for successes, asked for
/// them). Never returns an error: failures are logged.
pub async fn send(policy: &Policy, event: Event, message: &str) {
    let Some(url) = policy.notify.webhook_url.as_deref() else {
        return;
    };
    if event == Event::BackupSucceeded && !policy.notify.on_success {
        return;
    }
    let b = body(&policy.name, event, message, Timestamp::now());
    match tokio::time::timeout(DEADLINE, post(url, &b)).await {
        Ok(Ok(())) => tracing::info!(policy = %policy.name, event = ?event, "notification sent"),
        Ok(Err(e)) => {
            tracing::warn!(policy = %policy.name, event = ?event, "notification not delivered: {e}")
        }
        Err(_) => tracing::warn!(
            policy = %policy.name, event = ?event,
            "notification not delivered within {}s", DEADLINE.as_secs()
        ),
    }
}

async fn post(url: &str, b: &Body) -> Result<(), String> {
    let client = reqwest::Client::builder()
        .timeout(ATTEMPT_TIMEOUT)
        .build()
        .map_err(|e| e.to_string())?;
    let mut delay = Duration::from_millis(250);
    let mut last = String::new();
    for attempt in 1..=4 {
        match client.post(url).json(b).send().await {
            Ok(r) if r.status().is_success() => return Ok(()),
            // A 4xx other than 429 will not get better by retrying.
            Ok(r) if r.status().is_client_error() && r.status().as_u16() != 429 => {
                return Err(format!("the webhook answered {}", r.status()));
            }
            Ok(r) => last = format!("the webhook answered {}", r.status()),
            // Without the URL: it may carry a token.
            Err(e) => last = e.without_url().to_string(),
        }
        if attempt < 4 {
            tokio::time::sleep(delay).await;
            delay *= 2;
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slack_text_and_fields() {
        let b = body(
            "orders",
            Event::BackupFailed,
            "pg_dump failed: connection refused",
            "2026-11-22T02:00:05Z".parse().unwrap(),
        );
        let v = serde_json::to_value(&b).unwrap();
        assert_eq!(
            v["text"],
            "drctl: orders: backup failed: pg_dump failed: connection refused"
        );
        assert_eq!(v["event"], "backup_failed");
        assert_eq!(v["time"], "2026-11-22T02:00:05Z");
        assert_eq!(v["policy"], "orders");
    }
}
