//! `drctl deploy kubernetes`: one CronJob per scheduled policy (and one per
//! scheduled drill), rendered from the policies. Pure: policies in, YAML
//! out; the CLI prints it.
//!
//! Every scalar is written as a JSON string or number, which YAML reads as
//! the same value, so no policy text can break the document.

use std::fmt::Write;

use anyhow::{bail, Result};
use jiff::Timestamp;

use crate::policy::Policy;
use crate::time::schedule::Schedule;

/// Where the rendered jobs find what they need.
#[derive(Debug, Clone)]
pub struct Options {
    pub image: String,
    pub namespace: Option<String>,
    /// Secret with DRCTL_CATALOG, PGPASSWORD, AWS_ACCESS_KEY_ID, … (env).
    pub secret: String,
    /// ConfigMap holding the policy files.
    pub policies: String,
    /// Secret holding `identity.txt`, for drills.
    pub identity: String,
}

/// Longest a job may run: until the next run is due (a backup still going
/// then is late anyway), at least 10 minutes, at most a day.
pub fn deadline_seconds(s: &Schedule, tz: &jiff::tz::TimeZone, now: Timestamp) -> i64 {
    let gap = s
        .next_after(now, tz)
        .and_then(|a| Some((a, s.next_after(a, tz)?)))
        .map(|(a, b)| b.as_second() - a.as_second())
        .unwrap_or(86_400);
    gap.clamp(600, 86_400)
}

/// A Kubernetes object name for `policy`'s `kind` job.
fn name(kind: &str, policy: &str) -> Result<String> {
    let n = format!("drctl-{kind}-{}", policy.to_lowercase().replace('_', "-"));
    // CronJob names become Job names plus an 11-character suffix: 52 at most.
    let ok = n.len() <= 52
        && n.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !n.ends_with('-');
    if !ok {
        bail!("policy {policy}: '{n}' cannot name a CronJob (lowercase letters, digits and '-', at most 52 characters); rename the policy");
    }
    Ok(n)
}

fn q(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

/// The YAML for `policies` (each with a backup schedule; a drill schedule
/// adds a drill job). Kubernetes cron has no seconds field: a schedule with
/// one is refused, naming the policy.
pub fn kubernetes(policies: &[Policy], o: &Options, now: Timestamp) -> Result<String> {
    let mut out = String::new();
    for p in policies {
        let tz = p.backup.timezone.as_deref().unwrap_or("Etc/UTC");
        let jobs = [
            ("backup", p.backup.schedule.as_deref()),
            (
                "drill",
                p.drill.as_ref().and_then(|d| d.schedule.as_deref()),
            ),
        ];
        for (kind, expr) in jobs {
            let Some(expr) = expr else { continue };
            if expr.split_whitespace().count() != 5 {
                bail!(
                    "policy {}: [{kind}] schedule \"{expr}\" has a seconds field, which Kubernetes cron does not take; use 5 fields for a CronJob",
                    p.name
                );
            }
            let schedule =
                Schedule::parse(expr).map_err(|e| anyhow::anyhow!("policy {}: {e}", p.name))?;
            let deadline = deadline_seconds(&schedule, &p.timezone(), now);
            render(&mut out, p, kind, expr, tz, deadline, o)?;
        }
    }
    if out.is_empty() {
        bail!("none of these policies has a schedule: nothing to deploy ([backup] schedule = \"15 2 * * *\")");
    }
    Ok(out)
}

fn render(
    out: &mut String,
    p: &Policy,
    kind: &str,
    expr: &str,
    tz: &str,
    deadline: i64,
    o: &Options,
) -> Result<()> {
    let name = name(kind, &p.name)?;
    let ns = o
        .namespace
        .as_deref()
        .map(|n| format!("\n  namespace: {}", q(n)))
        .unwrap_or_default();
    let labels = format!(
        "app.kubernetes.io/name: drctl\n        app.kubernetes.io/component: {kind}\n        drctl.dev/policy: {}",
        q(&p.name)
    );
    let (identity_env, identity_mount, identity_volume) = if kind == "drill" {
        (
            "\n                - name: DRCTL_IDENTITY\n                  value: /etc/drctl/identity/identity.txt",
            "\n                - name: identity\n                  mountPath: /etc/drctl/identity\n                  readOnly: true",
            format!(
                "\n            - name: identity\n              secret:\n                secretName: {}\n                defaultMode: 0400",
                q(&o.identity)
            ),
        )
    } else {
        ("", "", String::new())
    };
    writeln!(
        out,
        r#"---
# drctl deploy kubernetes: {kind} of policy {policy} ({method}), "{expr}" in {tz}.
# Secret {secret}: DRCTL_CATALOG (postgres://…), PGPASSWORD, AWS_ACCESS_KEY_ID,
# AWS_SECRET_ACCESS_KEY. ConfigMap {policies}: the policy files.
apiVersion: batch/v1
kind: CronJob
metadata:
  name: {name}{ns}
  labels:
    {labels_top}
spec:
  schedule: {schedule}
  timeZone: {tzq}
  concurrencyPolicy: Forbid
  startingDeadlineSeconds: 3600
  successfulJobsHistoryLimit: 3
  failedJobsHistoryLimit: 5
  jobTemplate:
    spec:
      backoffLimit: 0
      activeDeadlineSeconds: {deadline}
      template:
        metadata:
          labels:
            {labels_pod}
        spec:
          restartPolicy: Never
          automountServiceAccountToken: false
          securityContext:
            runAsNonRoot: true
            runAsUser: 10001
            runAsGroup: 10001
            fsGroup: 10001
            seccompProfile:
              type: RuntimeDefault
          containers:
            - name: drctl
              image: {image}
              args: [{kindq}, {policyq}]
              env:
                - name: DRCTL_POLICIES
                  value: /etc/drctl/policies
                - name: DRCTL_STATE_DIR
                  value: /tmp/drctl
                - name: DRCTL_LOG_FORMAT
                  value: json{identity_env}
              envFrom:
                - secretRef:
                    name: {secretq}
              securityContext:
                allowPrivilegeEscalation: false
                readOnlyRootFilesystem: true
                capabilities:
                  drop: ["ALL"]
              volumeMounts:
                - name: policies
                  mountPath: /etc/drctl/policies
                  readOnly: true
                - name: tmp
                  mountPath: /tmp{identity_mount}
              resources:
                requests:
                  cpu: 500m
                  memory: 256Mi
                limits:
                  memory: 1Gi
          volumes:
            - name: policies
              configMap:
                name: {policiesq}
            - name: tmp
              emptyDir: {{}}{identity_volume}"#,
        policy = p.name,
        method = p.backup.method.as_str(),
        secret = o.secret,
        policies = o.policies,
        labels_top = labels.replace("\n        ", "\n    "),
        labels_pod = labels.replace("\n        ", "\n            "),
        schedule = q(expr),
        tzq = q(tz),
        image = q(&o.image),
        kindq = q(kind),
        policyq = q(&p.name),
        secretq = q(&o.secret),
        policiesq = q(&o.policies),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(name: &str, schedule: &str, drill: &str) -> Policy {
        crate::policy::parse(
            std::path::Path::new(&format!("{name}.toml")),
            &format!(
                "[source]\nkind = \"postgres\"\nurl = \"postgres://u@h/db\"\n[backup]\nmethod = \"dump\"\nschedule = \"{schedule}\"\ntimezone = \"Europe/Berlin\"\n[repository]\nurl = \"s3://b/p\"\n[encryption]\nrecipients = [\"age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p\"]\n{drill}"
            ),
        )
        .unwrap()
    }

    fn opts() -> Options {
        Options {
            image: "ghcr.io/drctl/drctl:0.1.0".into(),
            namespace: Some("backups".into()),
            secret: "drctl-secrets".into(),
            policies: "drctl-policies".into(),
            identity: "drctl-identity".into(),
        }
    }

    #[test]
    fn a_job_per_schedule_with_its_deadline_and_no_secret_inline() {
        let now: Timestamp = "2026-12-03T00:00:00Z".parse().unwrap();
        let ps = [
            policy(
                "orders",
                "15 2 * * *",
                "[drill]\nschedule = \"0 6 * * 1\"\n",
            ),
            policy("billing_db", "0 */4 * * *", ""),
        ];
        let y = kubernetes(&ps, &opts(), now).unwrap();
        assert_eq!(y.matches("kind: CronJob").count(), 3, "{y}");
        assert!(y.contains("name: drctl-backup-orders"));
        assert!(y.contains("name: drctl-drill-orders"));
        assert!(y.contains("name: drctl-backup-billing-db"));
        assert!(y.contains("args: [\"backup\", \"billing_db\"]"));
        assert!(y.contains("timeZone: \"Europe/Berlin\""));
        // Daily: a day; every 4 hours: 4 hours; weekly: capped at a day.
        assert_eq!(y.matches("activeDeadlineSeconds: 86400").count(), 2, "{y}");
        assert!(y.contains("activeDeadlineSeconds: 14400"));
        assert!(!y.contains(":latest"));
        assert_eq!(y.matches("readOnlyRootFilesystem: true").count(), 3);
        assert_eq!(y.matches("DRCTL_IDENTITY").count(), 1);
    }

    #[test]
    fn what_kubernetes_cannot_run_is_refused_naming_the_policy() {
        let now = Timestamp::now();
        let secs = policy("fast", "*/10 * * * * *", "");
        let e = kubernetes(&[secs], &opts(), now).unwrap_err().to_string();
        assert!(
            e.contains("policy fast") && e.contains("seconds field"),
            "{e}"
        );
        let long = policy(&"x".repeat(50), "0 2 * * *", "");
        let e = kubernetes(&[long], &opts(), now).unwrap_err().to_string();
        assert!(e.contains("cannot name a CronJob"), "{e}");
    }
}
