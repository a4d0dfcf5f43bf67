//! The page's pictures as inline SVG, drawn server-side so the page needs
//! no script: the recoverable window with its gaps, the drills' RTO/RPO
//! trend against the budget, and a policy's backup timeline. Pure; the
//! only text drawn is escaped.

use std::fmt::Write;

use jiff::Timestamp;

use super::model::{span_fraction, HistoryItem};
use crate::status::DrillPoint;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const BAR_W: f64 = 240.0;

/// The recoverable ranges (oldest first) on an axis from the oldest start
/// to `now`: green where a restore can land, red for a gap between ranges,
/// grey from the newest point to now (what a disaster now would lose).
/// `continuous` is false for dumps: their window holds only the backups'
/// own points, drawn lighter.
pub fn window_bar(ranges: &[(Timestamp, Timestamp)], now: Timestamp, continuous: bool) -> String {
    let mut out = format!(
        r#"<svg class="window" role="img" viewBox="0 0 {BAR_W} 14" width="{BAR_W}" height="14" xmlns="http://www.w3.org/2000/svg">"#
    );
    let Some(from) = ranges.iter().map(|r| r.0).min() else {
        out.push_str(r##"<rect x="0" y="3" width="240" height="8" fill="#ddd"><title>nothing recoverable</title></rect></svg>"##);
        return out;
    };
    let x = |t: Timestamp| span_fraction(t, from, now) * BAR_W;
    let _ = write!(
        out,
        r##"<rect x="0" y="3" width="{BAR_W}" height="8" fill="#ccc"><title>{}</title></rect>"##,
        esc("no recoverable point after the window's end")
    );
    let fill = if continuous { "#2e7d32" } else { "#81c784" };
    for (i, (a, b)) in ranges.iter().enumerate() {
        if i > 0 {
            let prev = ranges[i - 1].1;
            let _ = write!(
                out,
                r##"<rect class="gap" x="{:.1}" y="0" width="{:.1}" height="14" fill="#c62828"><title>gap {} .. {}</title></rect>"##,
                x(prev),
                (x(*a) - x(prev)).max(2.0),
                prev,
                a
            );
        }
        let _ = write!(
            out,
            r#"<rect class="range" x="{:.1}" y="3" width="{:.1}" height="8" fill="{fill}"><title>{} .. {}</title></rect>"#,
            x(*a),
            (x(*b) - x(*a)).max(1.5),
            a,
            b
        );
    }
    out.push_str("</svg>");
    out
}

const TREND_W: f64 = 120.0;
const TREND_H: f64 = 30.0;

/// One drill measure (RTO or RPO, by `value`) over the last drills, oldest
/// left, against `budget` (a dashed red line): each drill a dot, red when
/// the drill failed or went past the budget.
pub fn trend(
    points: &[DrillPoint],
    value: fn(&DrillPoint) -> Option<f64>,
    budget: Option<f64>,
    what: &str,
) -> String {
    let mut out = format!(
        r#"<svg class="trend" role="img" viewBox="0 0 {TREND_W} {TREND_H}" width="{TREND_W}" height="{TREND_H}" xmlns="http://www.w3.org/2000/svg"><title>{}</title>"#,
        esc(what)
    );
    let values: Vec<Option<f64>> = points.iter().map(value).collect();
    let top = values
        .iter()
        .flatten()
        .copied()
        .chain(budget)
        .fold(0.0f64, f64::max)
        * 1.15;
    if top <= 0.0 || values.iter().all(Option::is_none) {
        out.push_str(
            r##"<text x="2" y="19" font-size="10" fill="#777">no drill measured</text></svg>"##,
        );
        return out;
    }
    let y = |v: f64| TREND_H - 3.0 - (v / top) * (TREND_H - 6.0);
    let step = if points.len() > 1 {
        (TREND_W - 8.0) / (points.len() - 1) as f64
    } else {
        0.0
    };
    let xs = |i: usize| 4.0 + step * i as f64;
    if let Some(b) = budget {
        let _ = write!(
            out,
            r##"<line class="budget" x1="0" x2="{TREND_W}" y1="{0:.1}" y2="{0:.1}" stroke="#c62828" stroke-dasharray="3 2"/>"##,
            y(b)
        );
    }
    let line: Vec<String> = values
        .iter()
        .enumerate()
        .filter_map(|(i, v)| v.map(|v| format!("{:.1},{:.1}", xs(i), y(v))))
        .collect();
    let _ = write!(
        out,
        r##"<polyline points="{}" fill="none" stroke="#1565c0" stroke-width="1.5"/>"##,
        line.join(" ")
    );
    for (i, (p, v)) in points.iter().zip(&values).enumerate() {
        let Some(v) = v else { continue };
        let bad = !p.passed || budget.is_some_and(|b| *v > b);
        let _ = write!(
            out,
            r##"<circle cx="{:.1}" cy="{:.1}" r="2.5" fill="{}"><title>{} {}: {:.1}s</title></circle>"##,
            xs(i),
            y(*v),
            if bad { "#c62828" } else { "#2e7d32" },
            esc(&p.at),
            if p.passed { "passed" } else { "FAILED" },
            v
        );
    }
    out.push_str("</svg>");
    out
}

const LINE_W: f64 = 640.0;

/// A policy's backups on a time axis from the oldest to `now`: a full a
/// tall bar, an incremental a short one, a failure red, a cancelled run
/// grey.
pub fn timeline(items: &[HistoryItem], now: Timestamp) -> String {
    let times: Vec<Option<Timestamp>> = items
        .iter()
        .map(|h| h.started_at.as_deref().and_then(|t| t.parse().ok()))
        .collect();
    let mut out = format!(
        r#"<svg class="timeline" role="img" viewBox="0 0 {LINE_W} 40" width="100%" height="40" preserveAspectRatio="none" xmlns="http://www.w3.org/2000/svg">"#
    );
    let Some(from) = times.iter().flatten().min().copied() else {
        out.push_str(
            r##"<text x="2" y="24" font-size="11" fill="#777">no backup yet</text></svg>"##,
        );
        return out;
    };
    out.push_str(r##"<line x1="0" x2="640" y1="36" y2="36" stroke="#999"/>"##);
    for (h, t) in items.iter().zip(&times) {
        let Some(t) = t else { continue };
        let x = 2.0 + span_fraction(*t, from, now) * (LINE_W - 4.0);
        let (top, colour) = match (h.status.as_str(), h.kind.as_str()) {
            ("failed", _) => (8.0, "#c62828"),
            ("cancelled", _) => (14.0, "#9e9e9e"),
            ("complete", "incremental") => (20.0, "#64b5f6"),
            ("complete", _) => (4.0, "#1565c0"),
            _ => (14.0, "#ffb300"),
        };
        let _ = write!(
            out,
            r#"<rect class="{}" x="{x:.1}" y="{top}" width="3" height="{:.0}" fill="{colour}"><title>{} {} {} {}</title></rect>"#,
            esc(&h.status),
            36.0 - top,
            esc(&h.id),
            esc(&h.kind),
            esc(&h.status),
            esc(h.started_at.as_deref().unwrap_or(""))
        );
    }
    out.push_str("</svg>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn a_gap_is_drawn_between_the_ranges_it_splits() {
        let now = t("2026-12-04T12:00:00Z");
        let bar = window_bar(
            &[
                (t("2026-12-04T00:00:00Z"), t("2026-12-04T04:00:00Z")),
                (t("2026-12-04T06:00:00Z"), t("2026-12-04T11:00:00Z")),
            ],
            now,
            true,
        );
        assert_eq!(bar.matches(r#"class="range""#).count(), 2, "{bar}");
        assert_eq!(bar.matches(r#"class="gap""#).count(), 1, "{bar}");
        // 4h of a 12h axis of 240: the gap starts at x = 80.
        assert!(bar.contains(r#"class="gap" x="80.0""#), "{bar}");
        assert!(window_bar(&[], now, true).contains("nothing recoverable"));
    }

    #[test]
    fn a_drill_past_its_budget_is_red_and_the_budget_is_drawn() {
        let p = |at: &str, passed, rto| DrillPoint {
            at: at.into(),
            passed,
            rto_seconds: Some(rto),
            rpo_seconds: None,
        };
        let pts = [
            p("2026-12-01T00:00:00Z", true, 30.0),
            p("2026-12-02T00:00:00Z", true, 90.0),
            p("2026-12-03T00:00:00Z", false, 40.0),
        ];
        let svg = trend(&pts, |d| d.rto_seconds, Some(60.0), "RTO <&>");
        assert!(svg.contains(r#"class="budget""#), "{svg}");
        assert_eq!(svg.matches("#c62828\"><title>").count(), 2, "{svg}");
        assert!(svg.contains("RTO &lt;&amp;&gt;"), "{svg}");
        let none = trend(&pts, |d| d.rpo_seconds, None, "RPO");
        assert!(none.contains("no drill measured"), "{none}");
    }

    #[test]
    fn the_timeline_tells_fulls_incrementals_and_failures_apart() {
        let h = |id: &str, kind: &str, status: &str, at: &str| HistoryItem {
            id: id.into(),
            kind: kind.into(),
            status: status.into(),
            started_at: Some(at.into()),
            consistent_at: None,
            duration_seconds: None,
            stored_bytes: None,
            parent: None,
            error: None,
        };
        let svg = timeline(
            &[
                h("b3", "incremental", "complete", "2026-12-03T00:00:00Z"),
                h("b2", "full", "failed", "2026-12-02T00:00:00Z"),
                h("b1", "full", "complete", "2026-12-01T00:00:00Z"),
            ],
            t("2026-12-04T00:00:00Z"),
        );
        assert_eq!(svg.matches(r#"class="complete""#).count(), 2, "{svg}");
        assert_eq!(svg.matches(r#"class="failed""#).count(), 1, "{svg}");
        assert!(
            svg.contains(r##"y="20" width="3" height="16" fill="#64b5f6""##),
            "{svg}"
        );
    }
}
