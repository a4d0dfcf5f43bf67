//! Error kinds that decide the exit code.
//!
//! Everything is an `anyhow::Error`; a [`UsageError`] anywhere in the chain
//! means the user (or a policy file) asked for something invalid: exit 2.
//! Anything else is a failed operation: exit 1.

use std::fmt;

/// Bad input: a flag, a policy key, a time that cannot be resolved. Exit 2.
#[derive(Debug)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// Build an `anyhow::Error` that exits 2.
pub fn usage(msg: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(UsageError(msg.into()))
}

/// Another run of the policy holds its lock or lease: the message names
/// the holder. Exit 1; the daemon records such a slot as skipped.
#[derive(Debug)]
pub struct Busy(pub String);

impl fmt::Display for Busy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Busy {}

pub fn busy(msg: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Busy(msg.into()))
}

/// Whether another run holding the policy is what `err` came to.
pub fn is_busy(err: &anyhow::Error) -> bool {
    err.chain().any(|e| e.is::<Busy>())
}

/// Exit code for an error chain: 2 when any link is a usage error, else 1.
/// The AWS SDK's "no credentials" error is a dozen lines of provider
/// chain; `text` (an AWS error with its sources) as one line saying so and
/// where drctl looked, or None when it is another error.
pub fn aws_credentials(text: &str) -> Option<String> {
    let missing = text.contains("no credentials found")
        || text.contains("the credential provider was not enabled")
        || text.contains("CredentialsNotLoaded");
    missing.then(|| {
        "no AWS credentials found (drctl looked in AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, \
         AWS_PROFILE in ~/.aws/credentials and ~/.aws/config, a web identity token, \
         the ECS container and the EC2 instance metadata); set AWS_ACCESS_KEY_ID and \
         AWS_SECRET_ACCESS_KEY in drctl's environment, or AWS_PROFILE"
            .to_string()
    })
}

pub fn exit_code(err: &anyhow::Error) -> i32 {
    if err.chain().any(|e| e.is::<UsageError>()) {
        2
    } else {
        1
    }
}

/// A result told about something that may explain it: appended to an
/// error (keeping its exit code), logged as a warning beside a success.
pub fn noted<T>(r: anyhow::Result<T>, note: Option<String>) -> anyhow::Result<T> {
    match (r, note) {
        (r, None) => r,
        (Ok(v), Some(note)) => {
            tracing::warn!("{note}");
            Ok(v)
        }
        (Err(e), Some(note)) if exit_code(&e) == 2 => Err(usage(format!("{e:#}; {note}"))),
        (Err(e), Some(note)) => Err(anyhow::anyhow!("{e:#}; {note}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_is_found_under_context_and_exits_1() {
        let e = busy("policy p is busy: backup by pid 7").context("slot 02:00");
        assert!(is_busy(&e));
        assert_eq!(exit_code(&e), 1);
        assert!(!is_busy(&anyhow::anyhow!(
            "policy p is busy: said in text only"
        )));
    }

    #[test]
    fn usage_errors_exit_2_even_with_context() {
        let e = usage("bad flag").context("restore failed");
        assert_eq!(exit_code(&e), 2);
        assert_eq!(exit_code(&anyhow::anyhow!("io")), 1);
    }

    #[test]
    fn a_note_keeps_the_exit_code_and_follows_the_message() {
        let e =
            noted::<()>(Err(usage("bad time")), Some("backup x is corrupt".into())).unwrap_err();
        assert_eq!(exit_code(&e), 2);
        assert_eq!(format!("{e:#}"), "bad time; backup x is corrupt");
        let e = noted::<()>(Err(anyhow::anyhow!("io")), Some("n".into())).unwrap_err();
        assert_eq!(exit_code(&e), 1);
        assert_eq!(noted(Ok(3), Some("n".into())).unwrap(), 3);
    }
}
