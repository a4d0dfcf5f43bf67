//! JUnit XML for CI systems: one `<testsuite>` per drilled policy, one
//! `<testcase>` per check (restore, RTO and RPO included) with its time, a
//! `<failure>` carrying the expected and actual values, or an `<error>`
//! when a check could not be judged (its SQL failed). Pure.

use std::fmt::Write;

use super::Report;

fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // XML 1.0 cannot carry most control characters at all.
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => out.push('?'),
            c => out.push(c),
        }
    }
    out
}

/// (failures, errors) among `r`'s checks.
fn counts(r: &Report) -> (usize, usize) {
    let bad = r.checks.iter().filter(|c| !c.passed);
    let errors = bad.clone().filter(|c| c.errored).count();
    (bad.count() - errors, errors)
}

pub fn render(reports: &[Report]) -> String {
    let tests: usize = reports.iter().map(|r| r.checks.len()).sum();
    let failures: usize = reports.iter().map(|r| counts(r).0).sum();
    let errors: usize = reports.iter().map(|r| counts(r).1).sum();
    let time: f64 = reports.iter().map(|r| r.duration_seconds).sum();
    let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        x,
        "<testsuites name=\"drctl drill\" tests=\"{tests}\" failures=\"{failures}\" errors=\"{errors}\" time=\"{time:.3}\">"
    );
    for r in reports {
        let (f, e) = counts(r);
        let _ = writeln!(
            x,
            "  <testsuite name=\"drill {}\" tests=\"{}\" failures=\"{f}\" errors=\"{e}\" time=\"{:.3}\" timestamp=\"{}\">",
            esc(&r.policy),
            r.checks.len(),
            r.duration_seconds,
            esc(&r.started_at)
        );
        let _ = writeln!(x, "    <properties>");
        for (k, v) in [
            ("repository", r.repository.clone()),
            ("backup_id", r.backup_id.clone().unwrap_or_default()),
            ("target_time", r.target_time.clone().unwrap_or_default()),
            (
                "rto_seconds",
                r.rto_seconds.map(|v| format!("{v:.3}")).unwrap_or_default(),
            ),
            (
                "rpo_seconds",
                r.rpo_seconds.map(|v| format!("{v:.3}")).unwrap_or_default(),
            ),
        ] {
            let _ = writeln!(x, "      <property name=\"{k}\" value=\"{}\"/>", esc(&v));
        }
        let _ = writeln!(x, "    </properties>");
        for c in &r.checks {
            let _ = write!(
                x,
                "    <testcase classname=\"drctl.drill.{}\" name=\"{}\" time=\"{:.3}\"",
                esc(&r.policy),
                esc(&c.name),
                c.seconds.unwrap_or(0.0)
            );
            if c.passed {
                let _ = writeln!(x, "/>");
                continue;
            }
            let mut body = c.detail.clone();
            if let Some(e) = &c.expected {
                body.push_str(&format!("\nexpected: {e}"));
            }
            if let Some(a) = &c.actual {
                body.push_str(&format!("\nactual: {a}"));
            }
            let tag = if c.errored { "error" } else { "failure" };
            let _ = writeln!(
                x,
                ">\n      <{tag} message=\"{}\" type=\"drill\">{}</{tag}>\n    </testcase>",
                esc(&c.detail),
                esc(&body)
            );
        }
        let _ = writeln!(x, "  </testsuite>");
    }
    x.push_str("</testsuites>\n");
    x
}

#[cfg(test)]
mod tests {
    use super::super::check::CheckResult;
    use super::*;

    #[test]
    fn suites_cases_and_failures_with_expected_and_actual() {
        let mut bad = CheckResult::fail("orders <positive>", "expected = t, got 'f'");
        bad.expected = Some("= t".into());
        bad.actual = Some("f".into());
        let mut broken = CheckResult::fail("orders sql", "error: relation \"x\" does not exist");
        broken.errored = true;
        let r = Report {
            policy: "orders".into(),
            repository: "offsite".into(),
            passed: false,
            backup_id: Some("20261122T101500Z-3f9a".into()),
            target_time: Some("2026-11-22T10:15:00Z".into()),
            started_at: "2026-11-22T11:00:00Z".into(),
            rto_seconds: Some(4.25),
            rpo_seconds: Some(2700.0),
            last_commit_at: None,
            duration_seconds: 6.5,
            checks: vec![CheckResult::pass("restore", "ok"), bad, broken],
            error: None,
            scratch: None,
        };
        let x = render(&[r]);
        assert!(
            x.contains("<testsuites name=\"drctl drill\" tests=\"3\" failures=\"1\" errors=\"1\"")
        );
        assert!(
            x.contains("<testsuite name=\"drill orders\" tests=\"3\" failures=\"1\" errors=\"1\"")
        );
        assert!(x.contains(
            "<testcase classname=\"drctl.drill.orders\" name=\"restore\" time=\"0.000\"/>"
        ));
        assert!(x.contains("<error message=\"error: relation &quot;x&quot; does not exist\""));
        assert!(x.contains("<property name=\"repository\" value=\"offsite\"/>"));
        assert!(x.contains("name=\"orders &lt;positive&gt;\" time=\"0.000\">"));
        assert!(x.contains("message=\"expected = t, got &apos;f&apos;\""));
        assert!(x.contains("expected: = t\nactual: f</failure>"));
        assert!(x.contains("<property name=\"rto_seconds\" value=\"4.250\"/>"));
    }
}
