//! Judging a drill: each check's verdict from what it expected and what the
//! restored database answered, and the RTO/RPO budgets. Pure.

use serde::Serialize;

use crate::policy::Check;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CheckResult {
    pub name: String,
    pub passed: bool,
    /// One line a human reads: what was expected and what came back, or
    /// the error.
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actual: Option<String>,
    /// The check could not be judged (its SQL failed): an error in JUnit,
    /// not a failure.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub errored: bool,
    /// How long the check took.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seconds: Option<f64>,
}

impl CheckResult {
    pub fn pass(name: &str, detail: impl Into<String>) -> CheckResult {
        CheckResult {
            name: name.into(),
            passed: true,
            detail: detail.into(),
            expected: None,
            actual: None,
            errored: false,
            seconds: None,
        }
    }

    pub fn fail(name: &str, detail: impl Into<String>) -> CheckResult {
        CheckResult {
            passed: false,
            ..CheckResult::pass(name, detail)
        }
    }
}

/// What a check expects, in words (`= t`, `>= 1`, `between 1 and 9`).
pub fn expectation(c: &Check) -> String {
    match (&c.expect, c.expect_min, c.expect_max) {
        (Some(e), _, _) => format!("= {e}"),
        (None, Some(lo), Some(hi)) => format!("between {lo} and {hi}"),
        (None, Some(lo), None) => format!(">= {lo}"),
        (None, None, Some(hi)) => format!("<= {hi}"),
        (None, None, None) => "any value".into(),
    }
}

/// Judge a user check from the rows its SQL returned (text fields), or the
/// error it raised.
pub fn judge(c: &Check, answer: Result<Vec<Vec<String>>, String>) -> CheckResult {
    let expected = expectation(c);
    let mut r = CheckResult {
        name: c.name.clone(),
        passed: false,
        detail: String::new(),
        expected: Some(expected.clone()),
        actual: None,
        errored: false,
        seconds: None,
    };
    let rows = match answer {
        Ok(rows) => rows,
        Err(e) => {
            r.detail = format!("error: {e}");
            r.errored = true;
            return r;
        }
    };
    let value = match rows.as_slice() {
        [row] if row.len() == 1 => row[0].clone(),
        _ => {
            let cols = rows.first().map_or(0, Vec::len);
            r.detail = format!(
                "expected a single value, got {} row(s) of {cols} column(s)",
                rows.len()
            );
            return r;
        }
    };
    r.actual = Some(value.clone());
    r.passed = match (&c.expect, c.expect_min, c.expect_max) {
        (Some(e), _, _) => value == *e,
        (None, lo, hi) => match value.trim().parse::<f64>() {
            Ok(v) => lo.is_none_or(|lo| v >= lo) && hi.is_none_or(|hi| v <= hi),
            Err(_) => {
                r.detail = format!("expected a number {expected}, got '{value}'");
                return r;
            }
        },
    };
    r.detail = if r.passed {
        format!("got '{value}'")
    } else {
        format!("expected {expected}, got '{value}'")
    };
    r
}

/// A measured duration against its budget (`None`: no budget, passes).
pub fn budget(name: &str, measured: Option<f64>, max: Option<f64>) -> CheckResult {
    match (measured, max) {
        (None, _) => CheckResult::fail(name, "not measured"),
        (Some(m), None) => CheckResult::pass(name, format!("{m:.1}s (no budget)")),
        (Some(m), Some(max)) => CheckResult {
            name: name.into(),
            passed: m <= max,
            detail: if m <= max {
                format!("{m:.1}s within {max:.0}s")
            } else {
                format!("{m:.1}s exceeds the budget of {max:.0}s")
            },
            expected: Some(format!("<= {max:.0}s")),
            actual: Some(format!("{m:.1}s")),
            errored: false,
            seconds: None,
        },
    }
}

/// PITR: the tables of the base backup at the target. Rows move on after a
/// base backup, so counts are not compared; each table was counted in full
/// (an unreadable heap fails before this). A table missing at the target
/// may have been dropped after the base backup, which the target time
/// allows: it is named, not failed.
pub fn tables_at_target(
    base_id: &str,
    expected: &[crate::repo::manifest::TableCount],
    actual: &[crate::repo::manifest::TableCount],
) -> CheckResult {
    let missing: Vec<String> = expected
        .iter()
        .filter(|t| {
            !actual
                .iter()
                .any(|a| a.schema == t.schema && a.name == t.name)
        })
        .map(|t| format!("{}.{}", t.schema, t.name))
        .collect();
    let rows: i64 = actual.iter().map(|a| a.rows.max(0)).sum();
    let mut detail = format!(
        "{} tables counted in full ({rows} rows); {} of the {} in base backup {base_id} present",
        actual.len(),
        expected.len() - missing.len(),
        expected.len()
    );
    if !missing.is_empty() {
        let shown: Vec<&str> = missing.iter().take(5).map(String::as_str).collect();
        detail.push_str(&format!(
            "; not at the target, dropped after the base backup: {}",
            shown.join(", ")
        ));
    }
    CheckResult::pass("tables and row counts", detail)
}

/// Manifest row counts against the restored database's.
pub fn row_counts(
    expected: &[crate::repo::manifest::TableCount],
    actual: &[crate::repo::manifest::TableCount],
    exact: bool,
) -> CheckResult {
    const NAME: &str = "tables and row counts";
    let mut problems = Vec::new();
    for t in expected {
        match actual
            .iter()
            .find(|a| a.schema == t.schema && a.name == t.name)
        {
            None => problems.push(format!("{}.{} missing", t.schema, t.name)),
            Some(a) if exact && a.rows != t.rows => problems.push(format!(
                "{}.{}: {} rows, backup had {}",
                t.schema, t.name, a.rows, t.rows
            )),
            Some(_) => {}
        }
    }
    if problems.is_empty() {
        CheckResult::pass(
            NAME,
            format!(
                "{} tables present{}",
                expected.len(),
                if exact { ", row counts equal" } else { "" }
            ),
        )
    } else {
        let n = problems.len();
        problems.truncate(5);
        CheckResult {
            name: NAME.into(),
            passed: false,
            detail: format!(
                "{n} of {} tables differ: {}",
                expected.len(),
                problems.join("; ")
            ),
            expected: Some(format!("{} tables as in the backup", expected.len())),
            actual: Some(format!("{n} differ")),
            errored: false,
            seconds: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(expect: Option<&str>, lo: Option<f64>, hi: Option<f64>) -> Check {
        Check {
            name: "c".into(),
            sql: "select 1".into(),
            expect: expect.map(String::from),
            expect_min: lo,
            expect_max: hi,
        }
    }

    fn one(v: &str) -> Result<Vec<Vec<String>>, String> {
        Ok(vec![vec![v.to_string()]])
    }

    #[test]
    fn exact_text_and_numeric_ranges() {
        assert!(judge(&check(Some("t"), None, None), one("t")).passed);
        let r = judge(&check(Some("t"), None, None), one("f"));
        assert!(!r.passed);
        assert_eq!(r.detail, "expected = t, got 'f'");
        assert_eq!(r.actual.as_deref(), Some("f"));
        assert!(judge(&check(None, Some(1.0), None), one("5")).passed);
        assert!(!judge(&check(None, Some(10.0), Some(20.0)), one("5")).passed);
        assert!(judge(&check(None, None, Some(5.0)), one("5")).passed);
        let r = judge(&check(None, Some(1.0), None), one("many"));
        assert!(!r.passed && r.detail.contains("expected a number"));
    }

    #[test]
    fn errors_and_shapes_fail_with_what_happened() {
        let r = judge(
            &check(Some("1"), None, None),
            Err("relation \"x\" does not exist".into()),
        );
        assert!(!r.passed);
        assert_eq!(r.detail, "error: relation \"x\" does not exist");
        let r = judge(
            &check(Some("1"), None, None),
            Ok(vec![vec!["1".into()], vec!["2".into()]]),
        );
        assert!(!r.passed && r.detail.contains("2 row(s)"));
        assert!(!judge(&check(Some("1"), None, None), Ok(vec![])).passed);
    }

    #[test]
    fn budgets() {
        assert!(budget("RTO", Some(5.0), Some(60.0)).passed);
        let r = budget("RTO", Some(61.0), Some(60.0));
        assert!(!r.passed);
        assert_eq!(r.detail, "61.0s exceeds the budget of 60s");
        assert!(budget("RPO", Some(1.0), None).passed);
        assert!(!budget("RPO", None, Some(1.0)).passed);
    }

    #[test]
    fn pitr_tables_dropped_after_the_base_backup_are_named_not_failed() {
        let t = |n: &str, rows| crate::repo::manifest::TableCount {
            schema: "public".into(),
            name: n.into(),
            rows,
        };
        let c = tables_at_target(
            "B1",
            &[t("a", 10), t("gone", 5)],
            &[t("a", 12), t("new", 3)],
        );
        assert!(c.passed);
        assert!(
            c.detail.contains("2 tables counted in full (15 rows)"),
            "{}",
            c.detail
        );
        assert!(
            c.detail.contains("1 of the 2 in base backup B1"),
            "{}",
            c.detail
        );
        assert!(
            c.detail
                .contains("dropped after the base backup: public.gone"),
            "{}",
            c.detail
        );
        let c = tables_at_target("B1", &[t("a", 10)], &[t("a", 0)]);
        assert!(!c.detail.contains("dropped"), "{}", c.detail);
    }

    #[test]
    fn row_counts_name_what_differs() {
        let t = |n: &str, rows| crate::repo::manifest::TableCount {
            schema: "public".into(),
            name: n.into(),
            rows,
        };
        let exp = vec![t("a", 3), t("b", 4)];
        assert!(row_counts(&exp, &[t("a", 3), t("b", 4), t("extra", 1)], true).passed);
        let r = row_counts(&exp, &[t("a", 2)], true);
        assert!(!r.passed);
        assert_eq!(
            r.detail,
            "2 of 2 tables differ: public.a: 2 rows, backup had 3; public.b missing"
        );
        // Estimates are not compared, only presence.
        assert!(row_counts(&exp, &[t("a", 2), t("b", 9)], false).passed);
    }
}
