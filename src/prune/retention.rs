//! Which backups a retention policy keeps: restic's semantics, as a pure
//! function of the backups, the rules, the policy's time zone and nothing
//! else.
//!
//! Newest first: `keep_last` keeps the N newest; each bucket rule (hourly,
//! daily, weekly, monthly, yearly) keeps the newest backup of each of the N
//! most recent buckets that have one; `keep_within` keeps everything within
//! that duration of the newest backup (of the newest backup, not of now, as
//! restic does: a policy whose backups stopped does not eat its last ones).
//! A backup kept by any rule stays. On top, and whatever the rules say, the
//! newest backup and pinned ones are always kept.

use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};
use serde::Serialize;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rules {
    pub last: u32,
    pub hourly: u32,
    pub daily: u32,
    pub weekly: u32,
    pub monthly: u32,
    pub yearly: u32,
    pub within: Option<SignedDuration>,
}

impl Rules {
    pub fn from_policy(r: &crate::policy::Retention) -> Rules {
        Rules {
            last: r.keep_last.unwrap_or(0),
            hourly: r.keep_hourly.unwrap_or(0),
            daily: r.keep_daily.unwrap_or(0),
            weekly: r.keep_weekly.unwrap_or(0),
            monthly: r.keep_monthly.unwrap_or(0),
            yearly: r.keep_yearly.unwrap_or(0),
            within: r
                .keep_within
                .as_deref()
                .and_then(|w| crate::time::parse::parse_duration(w).ok()),
        }
    }

    /// No rule at all: prune keeps everything rather than guess.
    pub fn is_empty(&self) -> bool {
        *self
            == Rules {
                within: None,
                ..Rules::default()
            }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub id: String,
    pub at: Timestamp,
    pub pinned: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub id: String,
    pub keep: bool,
    /// The rules that keep it; empty for a backup no rule keeps.
    pub reasons: Vec<String>,
}

type BucketKey = (i32, i32, i32, i32);

#[derive(Clone, Copy)]
enum Bucket {
    Hourly,
    Daily,
    Weekly,
    Monthly,
    Yearly,
}

impl Bucket {
    fn key(self, at: Timestamp, tz: &TimeZone) -> BucketKey {
        let z = at.to_zoned(tz.clone());
        let (y, mo, d, h) = (
            z.year() as i32,
            z.month() as i32,
            z.day() as i32,
            z.hour() as i32,
        );
        match self {
            Bucket::Hourly => (y, mo, d, h),
            Bucket::Daily => (y, mo, d, 0),
            Bucket::Weekly => {
                let w = z.date().iso_week_date();
                (w.year() as i32, w.week() as i32, 0, 0)
            }
            Bucket::Monthly => (y, mo, 0, 0),
            Bucket::Yearly => (y, 0, 0, 0),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Bucket::Hourly => "hourly",
            Bucket::Daily => "daily",
            Bucket::Weekly => "weekly",
            Bucket::Monthly => "monthly",
            Bucket::Yearly => "yearly",
        }
    }
}

/// Decide keep or delete for each item. The result is newest first; ties in
/// time are broken by id so the answer does not depend on input order.
/// `decide`, except that with no rules at all every item is kept (restic
/// refuses to forget without a policy; drctl keeps everything and says so).
impl Item {
    /// A committed backup as retention sees it.
    pub fn of(m: &crate::repo::manifest::Manifest, pinned: bool) -> Item {
        Item {
            id: m.id.clone(),
            at: m.consistent_at,
            pinned,
        }
    }
}

pub fn decide_or_keep(items: &[Item], rules: &Rules, tz: &TimeZone) -> Vec<Decision> {
    if !rules.is_empty() {
        return decide(items, rules, tz);
    }
    let mut sorted: Vec<&Item> = items.iter().collect();
    sorted.sort_by(|a, b| (b.at, &b.id).cmp(&(a.at, &a.id)));
    sorted
        .into_iter()
        .map(|i| Decision {
            id: i.id.clone(),
            keep: true,
            reasons: vec!["no retention rules".into()],
        })
        .collect()
}

pub fn decide(items: &[Item], rules: &Rules, tz: &TimeZone) -> Vec<Decision> {
    let mut sorted: Vec<&Item> = items.iter().collect();
    sorted.sort_by(|a, b| (b.at, &b.id).cmp(&(a.at, &a.id)));
    let newest = sorted.first().map(|i| i.at);
    // (rule, buckets still to keep, bucket of the last backup it kept)
    let mut buckets: Vec<(Bucket, u32, Option<BucketKey>)> = [
        (Bucket::Hourly, rules.hourly),
        (Bucket::Daily, rules.daily),
        (Bucket::Weekly, rules.weekly),
        (Bucket::Monthly, rules.monthly),
        (Bucket::Yearly, rules.yearly),
    ]
    .into_iter()
    .map(|(b, n)| (b, n, None))
    .collect();
    let mut out = Vec::with_capacity(sorted.len());
    for (nr, item) in sorted.iter().enumerate() {
        let mut reasons = Vec::new();
        if nr == 0 {
            reasons.push("newest".to_string());
        }
        if item.pinned {
            reasons.push("pinned".to_string());
        }
        if (nr as u64) < rules.last as u64 {
            reasons.push("last".to_string());
        }
        for (bucket, left, last) in buckets.iter_mut() {
            if *left == 0 {
                continue;
            }
            let key = bucket.key(item.at, tz);
            if *last != Some(key) {
                *last = Some(key);
                *left -= 1;
                reasons.push(bucket.name().to_string());
            }
        }
        if let (Some(w), Some(newest)) = (rules.within, newest) {
            if item.at >= newest - w {
                reasons.push("within".to_string());
            }
        }
        out.push(Decision {
            id: item.id.clone(),
            keep: !reasons.is_empty(),
            reasons,
        });
    }
    out
}

/// Keep every ancestor of a kept incremental: a full goes only with the
/// last backup that needs it. `parents` maps an incremental to its parent.
/// Returns the ids this kept that were to be deleted.
pub fn keep_ancestors(
    decisions: &mut [Decision],
    parents: &std::collections::HashMap<String, String>,
) -> Vec<String> {
    let mut newly = Vec::new();
    // Newest first, so each parent is named after its newest kept child.
    let kept: Vec<String> = decisions
        .iter()
        .filter(|d| d.keep)
        .map(|d| d.id.clone())
        .collect();
    for child in kept {
        let mut at = child.clone();
        let mut hops = 0;
        while let Some(p) = parents.get(&at) {
            hops += 1;
            if hops > parents.len() {
                break;
            }
            if let Some(d) = decisions.iter_mut().find(|d| &d.id == p) {
                if !d.keep {
                    d.keep = true;
                    d.reasons = vec![format!("parent of {at}")];
                    newly.push(d.id.clone());
                }
            }
            at = p.clone();
        }
    }
    newly
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_kept_incremental_keeps_its_whole_chain() {
        // f <- i1 <- i2, then a new full g: keep_last = 1 keeps g only;
        // keep_last = 2 keeps g and i2, and so i1 and f.
        let items = vec![
            item("f", "2026-11-20T01:00:00Z"),
            item("i1", "2026-11-20T02:00:00Z"),
            item("i2", "2026-11-20T03:00:00Z"),
            item("g", "2026-11-20T04:00:00Z"),
        ];
        let parents: std::collections::HashMap<String, String> = [("i1", "f"), ("i2", "i1")]
            .map(|(a, b)| (a.into(), b.into()))
            .into();
        let mut d = decide(
            &items,
            &Rules {
                last: 1,
                ..Rules::default()
            },
            &TimeZone::UTC,
        );
        assert!(keep_ancestors(&mut d, &parents).is_empty());
        assert_eq!(kept(&d), ["g"]);
        let mut d = decide(
            &items,
            &Rules {
                last: 2,
                ..Rules::default()
            },
            &TimeZone::UTC,
        );
        assert_eq!(keep_ancestors(&mut d, &parents), ["i1", "f"]);
        assert_eq!(kept(&d), ["g", "i2", "i1", "f"]);
        let f = d.iter().find(|d| d.id == "f").unwrap();
        assert_eq!(f.reasons, ["parent of i1"]);
    }

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn item(id: &str, t: &str) -> Item {
        Item {
            id: id.into(),
            at: at(t),
            pinned: false,
        }
    }

    fn kept(d: &[Decision]) -> Vec<&str> {
        d.iter().filter(|d| d.keep).map(|d| d.id.as_str()).collect()
    }

    #[test]
    fn daily_keeps_the_newest_of_each_day() {
        let items = vec![
            item("a", "2026-11-20T01:00:00Z"),
            item("b", "2026-11-20T23:00:00Z"),
            item("c", "2026-11-21T05:00:00Z"),
            item("d", "2026-11-22T05:00:00Z"),
            item("e", "2026-11-22T06:00:00Z"),
        ];
        let rules = Rules {
            daily: 2,
            ..Rules::default()
        };
        let d = decide(&items, &rules, &TimeZone::UTC);
        assert_eq!(kept(&d), ["e", "c"]);
        assert_eq!(d[0].reasons, ["newest", "daily"]);
        assert!(d.iter().find(|d| d.id == "d").unwrap().reasons.is_empty());
    }

    #[test]
    fn without_rules_everything_is_kept_newest_first() {
        let items = vec![
            item("b", "2026-11-21T05:00:00Z"),
            item("a", "2026-11-20T01:00:00Z"),
            item("c", "2026-11-22T05:00:00Z"),
        ];
        let d = decide_or_keep(&items, &Rules::default(), &TimeZone::UTC);
        assert_eq!(kept(&d), ["c", "b", "a"]);
        assert!(d.iter().all(|d| d.reasons == ["no retention rules"]));
        // With a rule it is retention's verdict.
        let last = Rules {
            last: 1,
            ..Rules::default()
        };
        let d = decide_or_keep(&items, &last, &TimeZone::UTC);
        assert_eq!(kept(&d), ["c"]);
    }

    #[test]
    fn buckets_follow_the_policy_time_zone() {
        // 23:30 UTC on the 20th is already the 21st in Berlin.
        let items = vec![
            item("a", "2026-11-20T22:30:00Z"),
            item("b", "2026-11-20T23:30:00Z"),
        ];
        let rules = Rules {
            daily: 5,
            ..Rules::default()
        };
        assert_eq!(kept(&decide(&items, &rules, &TimeZone::UTC)), ["b"]);
        let berlin = TimeZone::get("Europe/Berlin").unwrap();
        assert_eq!(kept(&decide(&items, &rules, &berlin)), ["b", "a"]);
    }

    /// Hand-checked against restic's rule (buckets are local wall-clock
    /// hours/days, newest first) across Berlin's 2026 DST changes: the
    /// repeated hour at fall-back is one bucket, the skipped hour at
    /// spring-forward is none, and days break at local midnight.
    #[test]
    fn dst_changes_table() {
        let berlin = TimeZone::get("Europe/Berlin").unwrap();
        let r = |hourly, daily| Rules {
            hourly,
            daily,
            ..Rules::default()
        };
        #[allow(clippy::type_complexity)]
        let cases: &[(&str, Rules, &[(&str, &str)], &[&str], &[&str])] = &[
            (
                // 25 Oct: 02:00-02:59 happens twice (CEST, then CET).
                "fall back, hourly",
                r(3, 0),
                &[
                    ("a", "2026-10-25T00:10:00Z"), // 02:10 CEST
                    ("b", "2026-10-25T00:40:00Z"), // 02:40 CEST
                    ("c", "2026-10-25T01:10:00Z"), // 02:10 CET
                    ("d", "2026-10-25T01:40:00Z"), // 02:40 CET
                    ("e", "2026-10-25T02:10:00Z"), // 03:10 CET
                ],
                &["e", "d"],
                &["e", "d", "b"],
            ),
            (
                // 29 Mar: 02:00-02:59 does not exist.
                "spring forward, hourly",
                r(3, 0),
                &[
                    ("a", "2026-03-29T00:20:00Z"), // 01:20 CET
                    ("b", "2026-03-29T00:50:00Z"), // 01:50 CET
                    ("c", "2026-03-29T01:10:00Z"), // 03:10 CEST
                    ("d", "2026-03-29T01:40:00Z"), // 03:40 CEST
                    ("e", "2026-03-29T02:05:00Z"), // 04:05 CEST
                ],
                &["e", "d", "b"],
                &["e", "d", "b"],
            ),
            (
                // Local midnight moves from 22:00Z to 23:00Z across the change.
                "fall back, daily",
                r(0, 2),
                &[
                    ("a", "2026-10-24T22:30:00Z"), // 25 Oct 00:30 CEST
                    ("b", "2026-10-25T22:30:00Z"), // 25 Oct 23:30 CET
                    ("c", "2026-10-25T23:30:00Z"), // 26 Oct 00:30 CET
                ],
                &["c", "b"],
                &["c", "a"],
            ),
            (
                "spring forward, daily",
                r(0, 3),
                &[
                    ("a", "2026-03-28T22:30:00Z"), // 28 Mar 23:30 CET
                    ("b", "2026-03-28T23:30:00Z"), // 29 Mar 00:30 CET
                    ("c", "2026-03-29T21:30:00Z"), // 29 Mar 23:30 CEST
                    ("d", "2026-03-29T22:30:00Z"), // 30 Mar 00:30 CEST
                ],
                &["d", "c", "a"],
                &["d", "b"],
            ),
        ];
        for (name, rules, backups, in_berlin, in_utc) in cases {
            let items: Vec<Item> = backups.iter().map(|(id, t)| item(id, t)).collect();
            assert_eq!(
                kept(&decide(&items, rules, &berlin)),
                *in_berlin,
                "{name} (Berlin)"
            );
            assert_eq!(
                kept(&decide(&items, rules, &TimeZone::UTC)),
                *in_utc,
                "{name} (UTC)"
            );
        }
    }

    #[test]
    fn within_counts_from_the_newest_backup_and_pins_always_stay() {
        let mut items = vec![
            item("old", "2026-01-01T00:00:00Z"),
            item("mid", "2026-11-20T12:00:00Z"),
            item("new", "2026-11-22T00:00:00Z"),
        ];
        let rules = Rules {
            within: Some(SignedDuration::from_hours(48)),
            ..Rules::default()
        };
        assert_eq!(
            kept(&decide(&items, &rules, &TimeZone::UTC)),
            ["new", "mid"]
        );
        items[0].pinned = true;
        let d = decide(&items, &rules, &TimeZone::UTC);
        assert_eq!(d[2].reasons, ["pinned"]);
    }

    #[test]
    fn weekly_uses_iso_weeks() {
        // Sunday 2026-11-22 and Monday 2026-11-23 are in different ISO weeks.
        let items = vec![
            item("sun", "2026-11-22T10:00:00Z"),
            item("sat", "2026-11-21T10:00:00Z"),
            item("mon", "2026-11-23T10:00:00Z"),
        ];
        let rules = Rules {
            weekly: 2,
            ..Rules::default()
        };
        assert_eq!(
            kept(&decide(&items, &rules, &TimeZone::UTC)),
            ["mon", "sun"]
        );
    }

    fn arb_items() -> impl Strategy<Value = Vec<Item>> {
        prop::collection::vec((0i64..90 * 86400, any::<bool>()), 0..40).prop_map(|v| {
            v.into_iter()
                .enumerate()
                .map(|(i, (secs, pinned))| Item {
                    id: format!("b{i:03}"),
                    at: at("2026-01-01T00:00:00Z")
                        + SignedDuration::from_secs(secs * 37 % (90 * 86400)),
                    pinned: pinned && i % 5 == 0,
                })
                .collect()
        })
    }

    fn arb_rules() -> impl Strategy<Value = Rules> {
        (
            0u32..5,
            0u32..5,
            0u32..5,
            0u32..3,
            0u32..3,
            0u32..2,
            prop::option::of(0i64..200),
        )
            .prop_map(
                |(last, hourly, daily, weekly, monthly, yearly, within)| Rules {
                    last,
                    hourly,
                    daily,
                    weekly,
                    monthly,
                    yearly,
                    within: within.map(SignedDuration::from_hours),
                },
            )
    }

    proptest! {
        /// Whatever the rules, no kept backup's parent is deleted.
        #[test]
        fn no_kept_backup_loses_a_parent(
            n in 1usize..30,
            fulls in proptest::collection::vec(any::<bool>(), 30),
            last in 0u32..5,
            daily in 0u32..5,
        ) {
            let items: Vec<Item> = (0..n)
                .map(|i| Item {
                    id: format!("b{i:02}"),
                    at: Timestamp::from_second(1_800_000_000 + i as i64 * 5000).unwrap(),
                    pinned: false,
                })
                .collect();
            let mut parents = std::collections::HashMap::new();
            for (i, full) in fulls.iter().enumerate().take(n).skip(1) {
                if !full {
                    parents.insert(format!("b{i:02}"), format!("b{:02}", i - 1));
                }
            }
            let rules = Rules { last, daily, ..Rules::default() };
            let mut d = decide_or_keep(&items, &rules, &TimeZone::UTC);
            keep_ancestors(&mut d, &parents);
            for x in d.iter().filter(|x| x.keep) {
                if let Some(p) = parents.get(&x.id) {
                    prop_assert!(d.iter().any(|y| &y.id == p && y.keep), "{} kept without {}", x.id, p);
                }
            }
        }

        #[test]
        fn invariants(items in arb_items(), rules in arb_rules()) {
            let d = decide(&items, &rules, &TimeZone::UTC);
            prop_assert_eq!(d.len(), items.len());
            for x in &d {
                // Kept exactly when some rule says why.
                prop_assert_eq!(x.keep, !x.reasons.is_empty());
            }
            if let Some(first) = d.first() {
                prop_assert!(first.keep, "the newest is always kept");
            }
            for i in items.iter().filter(|i| i.pinned) {
                prop_assert!(d.iter().any(|x| x.id == i.id && x.keep));
            }
            // keep_last keeps the N newest.
            for x in d.iter().take(rules.last as usize) {
                prop_assert!(x.keep);
            }
            // A bucket rule never keeps more than its count, one per bucket.
            let daily: Vec<&Decision> = d.iter().filter(|x| x.reasons.iter().any(|r| r == "daily")).collect();
            prop_assert!(daily.len() <= rules.daily as usize);
            let mut days: Vec<_> = daily.iter().map(|x| {
                let i = items.iter().find(|i| i.id == x.id).unwrap();
                i.at.to_zoned(TimeZone::UTC).date()
            }).collect();
            let n = days.len();
            days.dedup();
            prop_assert_eq!(days.len(), n);
        }

        #[test]
        fn idempotent(items in arb_items(), rules in arb_rules()) {
            // Pruning what a prune kept deletes nothing more.
            let d = decide(&items, &rules, &TimeZone::UTC);
            let kept: Vec<Item> = items
                .iter()
                .filter(|i| d.iter().any(|x| x.id == i.id && x.keep))
                .cloned()
                .collect();
            let again = decide(&kept, &rules, &TimeZone::UTC);
            prop_assert!(again.iter().all(|x| x.keep), "{:?}", again);
            prop_assert!(items.is_empty() || !kept.is_empty(), "kept set never empty");
        }

        #[test]
        fn input_order_does_not_matter(items in arb_items(), rules in arb_rules()) {
            let mut rev = items.clone();
            rev.reverse();
            prop_assert_eq!(decide(&items, &rules, &TimeZone::UTC), decide(&rev, &rules, &TimeZone::UTC));
        }

        #[test]
        fn more_generous_rules_never_delete_more(items in arb_items(), rules in arb_rules(), bump in 0usize..6) {
            let mut more = rules.clone();
            match bump {
                0 => more.last += 2,
                1 => more.hourly += 2,
                2 => more.daily += 2,
                3 => more.weekly += 1,
                4 => more.monthly += 1,
                _ => more.within = Some(rules.within.unwrap_or_default() + SignedDuration::from_hours(24)),
            }
            let a = decide(&items, &rules, &TimeZone::UTC);
            let b = decide(&items, &more, &TimeZone::UTC);
            for (x, y) in a.iter().zip(&b) {
                prop_assert!(!x.keep || y.keep, "{} kept by {:?} but not by {:?}", x.id, rules, more);
            }
        }
    }
}
